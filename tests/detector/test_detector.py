"""GroundingDetector end to end on the tiny random model: shapes, dtypes, phrases, boxes, chunking, errors."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from grounding.errors import InvalidImageError, InvalidPromptError, InvalidThresholdError
from grounding.postprocess import detections_from_logits
from grounding.results import Detections

PROMPT = "a cat . a remote control . glassoil"


def test_detect_end_to_end(detector, photo):
    det = detector.detect(photo, PROMPT, box_threshold=0.0, text_threshold=0.25)
    assert isinstance(det, Detections)
    queries = detector.model.config.num_queries
    assert len(det) == queries  # threshold 0: every query
    assert det.boxes.shape == (queries, 4) and det.boxes.dtype == np.float32
    assert det.scores.shape == (queries,) and det.scores.dtype == np.float32
    assert np.all(np.diff(det.scores) <= 0)
    assert np.all(det.boxes[:, [0, 2]] >= 0) and np.all(det.boxes[:, [0, 2]] <= 240)
    assert np.all(det.boxes[:, [1, 3]] >= 0) and np.all(det.boxes[:, [1, 3]] <= 160)
    assert np.all(det.boxes[:, 2] >= det.boxes[:, 0]) and np.all(det.boxes[:, 3] >= det.boxes[:, 1])
    words = {"a cat": {"a", "cat"}, "a remote control": {"a", "remote", "control"}, "glassoil": {"glassoil"}}
    for phrase in det.phrases:
        assert phrase and any(set(phrase.split()) <= allowed for allowed in words.values())
    strict = detector.detect(photo, PROMPT, box_threshold=0.5, text_threshold=0.25)
    assert len(strict) == int((det.scores > 0.5).sum())


def test_stages_equal_a_direct_model_call(detector, photo):
    """encode_image -> run_text -> filter gives what the model + post-processing give directly."""
    encoding = detector.encode_image(photo)
    assert encoding.image_size == (240, 160) and encoding.input_size == (144, 96)
    assert encoding.nbytes == encoding.features.nbytes > 0
    raw = detector.run_text(encoding, PROMPT)
    (chunk,) = raw.chunks
    assert raw.probs[0].shape == (detector.model.config.num_queries, len(chunk)) and raw.probs[0].dtype == torch.float32
    assert raw.boxes[0].shape == (detector.model.config.num_queries, 4)
    assert raw.nbytes >= raw.probs[0].numel() * 4 + raw.boxes[0].numel() * 4
    assert list(chunk.input_ids) == detector.tokenizer(chunk.caption)["input_ids"]

    from grounding.model.preprocess import preprocess_image

    pixel_values, pixel_mask = preprocess_image(photo, 96, 160)
    input_ids = torch.tensor([chunk.input_ids])
    with torch.inference_mode():
        output = detector.model(input_ids, torch.ones_like(input_ids), pixel_values=pixel_values, pixel_mask=pixel_mask)
    torch.testing.assert_close(raw.probs[0], output.pred_logits[0, :, : len(chunk)].sigmoid())
    torch.testing.assert_close(raw.boxes[0], output.pred_boxes[0])
    direct = detections_from_logits(output.pred_logits[0], output.pred_boxes[0], chunk, (240, 160), 0.3, 0.25)
    staged = detector.filter(raw, 0.3, 0.25)
    assert staged.phrases == direct.phrases
    np.testing.assert_allclose(staged.boxes, direct.boxes, atol=1e-4)


def test_300_class_prompt_runs_per_chunk_and_merges(detector, photo):
    classes = [f"object kind {i} of tableware" for i in range(300)]
    encoding = detector.encode_image(photo)
    raw = detector.run_text(encoding, classes)
    assert len(raw.chunks) > 1 and raw.phrases == classes
    merged = detector.filter(raw, 0.0, 0.25)
    queries = detector.model.config.num_queries
    assert len(merged) == queries * len(raw.chunks)
    assert np.all(np.diff(merged.scores) <= 0)
    chunk_of = {phrase: index for index, chunk in enumerate(raw.chunks) for phrase in chunk.phrases}
    labelled = {chunk_of[p] for p in merged.phrases if p in chunk_of}
    assert len(labelled) > 1  # detections of several chunks in one result
    # A chunk's detections are those of its caption run on its own, with phrases from that chunk.
    for index in (0, len(raw.chunks) - 1):
        chunk = raw.chunks[index]
        alone = detector.run_text(encoding, chunk.caption)
        torch.testing.assert_close(alone.probs[0], raw.probs[index])
        part = detector.filter(alone, 0.0, 0.25)
        assert all(any(set(label.split()) <= set(p.split()) for p in chunk.phrases) for label in part.phrases)
        for phrase, score, box in zip(part.phrases, part.scores, part.boxes):
            same = np.flatnonzero(merged.scores == score)
            assert any(merged.phrases[i] == phrase and np.array_equal(merged.boxes[i], box) for i in same)


@pytest.mark.parametrize("mode", ["RGBA", "L", "CMYK", "I;16", "P", "1"])
def test_image_modes(detector, photo, mode):
    if mode == "I;16":  # 16-bit grayscale, as PNG scans and depth maps come
        image = Image.frombytes("I;16", photo.size, (np.asarray(photo.convert("L")).astype("<u2") * 257).tobytes())
    else:
        image = photo.convert(mode)
    encoding = detector.encode_image(image)
    assert encoding.image_size == (240, 160)
    det = detector.filter(detector.run_text(encoding, "cat"), 0.0, 0.25)
    assert len(det) == detector.model.config.num_queries and set(det.phrases) == {"cat"}


def test_numpy_path_and_exif_rotation(detector, photo, tmp_path):
    assert detector.encode_image(np.asarray(photo)).image_size == (240, 160)
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    photo.save(buffer, format="JPEG", exif=exif)
    path = tmp_path / "rotated.jpg"
    path.write_bytes(buffer.getvalue())
    encoding = detector.encode_image(str(path))
    assert encoding.image_size == (160, 240)  # upright: boxes refer to what the user sees
    det = detector.detect(str(path), "cat", box_threshold=0.0)
    assert det.boxes[:, [0, 2]].max() <= 160 and det.boxes[:, [1, 3]].max() <= 240


def test_bad_input_gives_typed_errors(detector, photo):
    for prompt in ["", " . . ", None, "x" * 100_000]:
        with pytest.raises(InvalidPromptError):
            detector.detect(photo, prompt)
    for threshold in [-0.1, 1.5, float("nan")]:
        with pytest.raises(InvalidThresholdError):
            detector.detect(photo, "cat", box_threshold=threshold)
        with pytest.raises(InvalidThresholdError):
            detector.filter(detector.run_text(detector.encode_image(photo), "cat"), 0.3, threshold)
    for image in [None, "missing.png", b"not an image", np.zeros((0, 3))]:
        with pytest.raises(InvalidImageError):
            detector.detect(image, "cat")
    with pytest.raises(InvalidPromptError, match="tokens long"):
        detector.run_text(detector.encode_image(photo), " ".join(["cat"] * 300))


def test_non_ascii_prompt(detector, photo):
    det = detector.detect(photo, "Café . 北京 . 😀", box_threshold=0.0, text_threshold=0.25)
    assert set(det.phrases) <= {"café", "北京", "😀"} and len(det) == detector.model.config.num_queries


def test_from_pretrained_local_file(tmp_path, photo):
    from grounding.checkpoint import save_checkpoint
    from grounding.detector import GroundingDetector
    from tests.fixtures.dino import tiny_model

    model = tiny_model(seed=1)
    path = save_checkpoint(model, tmp_path / "tiny.pth")
    loaded = GroundingDetector.from_pretrained(path, device="cpu", shortest_side=96, longest_side=160)
    assert loaded.load_report.ok and str(path) in loaded.model_id
    reference = GroundingDetector(model, device="cpu", shortest_side=96, longest_side=160)
    a = loaded.detect(photo, PROMPT, 0.2, 0.25)
    b = reference.detect(photo, PROMPT, 0.2, 0.25)
    assert a.phrases == b.phrases and np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)


def test_resize_defaults_to_the_input_size_the_checkpoint_records(tmp_path, photo):
    from grounding.checkpoint import save_checkpoint
    from grounding.detector import GroundingDetector
    from tests.fixtures.dino import tiny_model

    model = tiny_model(seed=1)
    assert GroundingDetector(model, device="cpu").shortest_side == 800  # the official resize by default
    model.config.input_size = (96, 160)
    loaded = GroundingDetector.from_pretrained(save_checkpoint(model, tmp_path / "tiny.pth"), device="cpu")
    assert (loaded.shortest_side, loaded.longest_side) == (96, 160)
    explicit = GroundingDetector(model, device="cpu", shortest_side=96, longest_side=160)
    a, b = loaded.detect(photo, PROMPT, 0.2, 0.25), explicit.detect(photo, PROMPT, 0.2, 0.25)
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)


def test_chunks_in_one_padded_batch_equal_chunks_one_by_one(detector, photo):
    from grounding.detector import GroundingDetector

    classes = [f"object kind {i} of tableware" for i in range(100)] + ["cat"]  # 3 chunks, the last one short
    encoding = detector.encode_image(photo)
    one_by_one = detector.run_text(encoding, classes)
    batched = GroundingDetector(detector.model, detector.tokenizer, "cpu", chunk_batch_size=4).run_text(
        encoding, classes
    )
    assert len(one_by_one.chunks) == 3 and batched.chunks == one_by_one.chunks
    for a, b in zip(batched.probs, one_by_one.probs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for a, b in zip(batched.boxes, one_by_one.boxes):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
