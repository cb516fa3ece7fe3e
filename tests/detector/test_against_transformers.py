"""The whole detector (resize, normalise, model, post-processing) against transformers' processor + model
on the same tiny random weights."""
import numpy as np
import torch

from grounding.detector import GroundingDetector
from grounding.text import load_tokenizer
from grounding.config import tiny
from grounding.keymap import as_transformers_port
from tests.fixtures.dino import load_hf_reference, random_model

PROMPT = "a cat . a remote control ."


def test_detect_matches_transformers_end_to_end(photo, tmp_path):
    from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor

    model = random_model(as_transformers_port(tiny()), seed=4)
    with torch.no_grad():  # soften the random logits so that scores spread over (0, 1) and phrases vary
        model.transformer.decoder.norm.weight.mul_(0.05)  # the logits are normed decoder output . text
        model.transformer.decoder.norm.bias.mul_(0.05)
    hf_model, info = load_hf_reference(model, tmp_path / "hf")
    assert not info["missing_keys"] and not info["unexpected_keys"]
    size = {"shortest_edge": 96, "longest_edge": 160}
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(size=size),
                                       tokenizer=load_tokenizer())
    inputs = processor(images=photo, text=PROMPT, return_tensors="pt")
    with torch.inference_mode():
        outputs = hf_model(**inputs)
    scores = outputs.logits[0].sigmoid().max(-1).values.sort(descending=True).values
    # A box threshold halfway into the widest gap of the top scores: no score sits near it.
    gaps = scores[:-1] - scores[1:]
    cut = 4 + int(gaps[4 : len(scores) // 2].argmax())  # at least 5 boxes
    threshold = float(scores[cut] + scores[cut + 1]) / 2
    (theirs,) = processor.post_process_grounded_object_detection(
        outputs, inputs["input_ids"], threshold=threshold, text_threshold=0.25, target_sizes=[(160, 240)]
    )

    detector = GroundingDetector(model, device="cpu", shortest_side=96, longest_side=160)
    ours = detector.detect(photo, PROMPT, box_threshold=threshold, text_threshold=0.25)

    order = torch.argsort(theirs["scores"], descending=True, stable=True)
    assert len(ours) == len(order) == cut + 1
    np.testing.assert_allclose(ours.scores, theirs["scores"][order].numpy(), atol=1e-4)
    their_boxes = theirs["boxes"][order].clamp(min=0)  # transformers does not clip to the image; we do
    their_boxes = torch.minimum(their_boxes, torch.tensor([240.0, 160.0, 240.0, 160.0])).numpy()
    np.testing.assert_allclose(ours.boxes, their_boxes, atol=0.05)  # pixels
    for mine, label in zip(ours.phrases, [theirs["text_labels"][i] for i in order.tolist()]):
        # Their label holds every passing token of the caption ("." and [SEP] included); ours the words of
        # the best phrase among them.
        assert set(mine.split()) <= set(label.replace(".", " ").split())
