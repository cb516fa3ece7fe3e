"""Thresholds, phrase extraction and pixel boxes on hand-built logits with the shipped vocabulary."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from grounding.errors import InvalidThresholdError
from grounding.postprocess import (
    best_phrase_scores,
    boxes_to_pixels,
    check_threshold,
    detections_from_logits,
    detections_from_probs,
    merge_detections,
)
from grounding.results import Detections
from grounding.text import tokenize_caption

LOW, HIGH = -6.0, 3.0  # sigmoid 0.0025 / 0.95


def logits_for(tokens, winners: list[dict[int, float]], width: int = 256) -> torch.Tensor:
    """[Q, 256] logits: LOW on the caption's tokens except the given {token index: logit}, -inf past it."""
    logits = torch.full((len(winners), width), -math.inf)
    logits[:, : len(tokens)] = LOW
    for query, wins in enumerate(winners):
        for index, value in wins.items():
            logits[query, index] = value
    return logits


def test_best_phrase_scores_say_where_each_phrase_would_get_a_box(tokenizer):
    (tokens,) = tokenize_caption("a cat . a remote control . dog", tokenizer)
    # [CLS] a cat . a remote control . dog [SEP]: cat=2, remote=5, dog=8; no query is labelled "dog"
    logits = logits_for(tokens, [{5: HIGH, 6: 2.0}, {2: 1.0}, {2: -1.0}, {3: 2.5}])  # query 3: "." then cat
    probs = logits[:, : len(tokens)].sigmoid()
    scores = best_phrase_scores(probs, tokens)
    cat = max(torch.sigmoid(torch.tensor(1.0)).item(), torch.sigmoid(torch.tensor(2.5)).item())
    assert scores == pytest.approx([cat, torch.sigmoid(torch.tensor(HIGH)).item(), 0.0], rel=1e-6)
    # Labels: query 3 passes on "." alone, so its label is its best phrase whole ("a cat").
    for box_threshold, expected in ((0.93, ["remote control"]), (0.9, ["remote control", "a cat"]),
                                    (0.5, ["remote control", "a cat", "cat"])):
        boxed = detections_from_probs(probs, torch.rand(4, 4), tokens, (100, 100), box_threshold, 0.25).phrases
        assert boxed == expected
        # A phrase gets a box exactly when its best score is above the box threshold.
        assert [score > box_threshold for score in scores] == [len(expected) > 1, True, False]


def test_remote_control_tokens_win(tokenizer):
    (tokens,) = tokenize_caption("a cat . a remote control .", tokenizer)
    # [CLS] a cat . a remote control . [SEP] -> "remote"=5, "control"=6
    logits = logits_for(tokens, [{5: HIGH, 6: 2.0}, {2: 1.0}, {}])
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.1, 0.1], [0.5, 0.5, 1.0, 1.0]])
    det = detections_from_logits(logits, boxes, tokens, (1200, 800), box_threshold=0.35, text_threshold=0.25)
    assert det.phrases == ["remote control", "cat"]
    np.testing.assert_allclose(det.scores, torch.sigmoid(torch.tensor([HIGH, 1.0])).numpy(), rtol=1e-6)
    np.testing.assert_allclose(det.boxes, [[480, 240, 720, 560], [240, 160, 360, 240]], atol=1e-4)
    assert det.boxes.dtype == np.float32 and det.scores.dtype == np.float32


def test_label_is_words_above_text_threshold_within_the_best_phrase(tokenizer):
    (tokens,) = tokenize_caption("a cat . a remote control . glassoil . oil", tokenizer)
    # indices: 1 a, 2 cat, 3 ., 4 a, 5 remote, 6 control, 7 ., 8 glass, 9 ##oi, 10 ##l, 11 ., 12 oil, 13 ., 14 [SEP]
    assert tokens.input_ids[8:11] == (3221, 10448, 2140)
    winners = [
        {6: HIGH},  # only "control" passes -> "control"
        {5: HIGH, 2: 2.0},  # "cat" passes too but belongs to another phrase: no merged "remote cat"
        {9: HIGH},  # a lone continuation piece selects its whole word: "glassoil", never "##oi"
        {5: 0.0},  # box passes 0.35 via sigmoid(0)=0.5 but text_threshold 0.6 is not met: whole phrase
        {3: HIGH, 2: -1.0},  # a "." has the best score; the best PHRASE token decides: "a cat" (none passes)
        {12: HIGH, 8: 2.0},  # "oil" and "glass..." in different phrases: no "glass oil"
    ]
    probs = torch.sigmoid(logits_for(tokens, winners)[:, : len(tokens)])
    boxes = torch.full((len(winners), 4), 0.5)
    det = detections_from_probs(probs, boxes, tokens, (100, 100), box_threshold=0.35, text_threshold=0.6)
    by_score = sorted(zip(probs.max(-1).values.tolist(), range(len(winners))), key=lambda pair: -pair[0])
    labels = {query: phrase for (_, query), phrase in zip(by_score, det.phrases)}
    assert labels == {0: "control", 1: "remote", 2: "glassoil", 3: "a remote control", 4: "a cat", 5: "oil"}
    assert all("##" not in p and p for p in det.phrases)


def test_box_threshold_is_strict_and_detections_sorted(tokenizer):
    (tokens,) = tokenize_caption("cat . dog", tokenizer)
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.1, 0.0, 0.0], [0.0, 0.2, 0.0, 0.9, 0.0, 0.0], [0.0, 0.6, 0.0, 0.0, 0.0, 0.0]])
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.5]] * 3)
    det = detections_from_probs(probs, boxes, tokens, (10, 10), box_threshold=0.5, text_threshold=0.25)
    assert det.phrases == ["dog", "cat"]
    np.testing.assert_allclose(det.scores, [0.9, 0.6])
    none = detections_from_probs(probs, boxes, tokens, (10, 10), box_threshold=0.95, text_threshold=0.25)
    assert len(none) == 0 and none.boxes.shape == (0, 4)
    everything = detections_from_probs(probs, boxes, tokens, (10, 10), box_threshold=0.0, text_threshold=0.0)
    assert len(everything) == 3


def test_numpy_thresholds_are_numbers():
    assert check_threshold(np.float32(0.25), "box_threshold") == pytest.approx(0.25)
    assert check_threshold(1, "box_threshold") == 1.0


def test_boxes_are_clipped_to_the_original_image():
    boxes = torch.tensor([[0.05, 0.5, 0.3, 0.2], [0.9, 0.95, 0.4, 0.3]])
    pixels = boxes_to_pixels(boxes, (640, 480))
    np.testing.assert_allclose(pixels.numpy(), [[0, 192, 128, 288], [448, 384, 640, 480]], atol=1e-4)


@pytest.mark.parametrize("value", [-0.1, 1.01, float("nan"), "0.3", None, True])
def test_bad_thresholds_are_typed_errors(tokenizer, value):
    with pytest.raises(InvalidThresholdError, match="between 0 and 1"):
        check_threshold(value, "box_threshold")
    (tokens,) = tokenize_caption("cat", tokenizer)
    with pytest.raises(InvalidThresholdError, match="text_threshold"):
        detections_from_probs(torch.zeros(1, 4), torch.zeros(1, 4), tokens, (5, 5), 0.3, value)


def test_merge_detections_sorts_by_score():
    a = Detections(np.ones((2, 4), np.float32), np.array([0.9, 0.4], np.float32), ["cat", "dog"])
    b = Detections(np.zeros((1, 4), np.float32), np.array([0.6], np.float32), ["bird"])
    merged = merge_detections([a, Detections.empty(), b])
    assert merged.phrases == ["cat", "bird", "dog"]
    np.testing.assert_allclose(merged.scores, [0.9, 0.6, 0.4])
    assert merged.boxes[1].tolist() == [0, 0, 0, 0]
    assert len(merge_detections([Detections.empty()])) == 0


def test_agrees_with_transformers_post_processing_where_it_should(tokenizer):
    """Same kept queries, scores and boxes as transformers; same labels for single-phrase hits;
    our label differs where transformers merges phrases ("glass oil")."""
    from transformers import GroundingDinoProcessor
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    (tokens,) = tokenize_caption("a cat . a remote control . glass . oil", tokenizer)
    # indices: 1 a, 2 cat, 3 ., 4 a, 5 remote, 6 control, 7 ., 8 glass, 9 ., 10 oil, 11 ., 12 [SEP]
    generator = torch.Generator().manual_seed(0)
    queries = 50
    logits = logits_for(tokens, [{} for _ in range(queries)])
    logits[3:, 1 : len(tokens) - 1] = torch.rand(queries - 3, len(tokens) - 2, generator=generator) * 5 - 4.5
    logits[:, [3, 7, 9, 11]] = LOW  # separators silent, so transformers' labels contain no "."
    logits[0, [5, 6]] = HIGH  # remote control
    logits[1, 2] = HIGH  # cat (+ "a" low)
    logits[1, 1] = LOW
    logits[2, [8, 10]] = torch.tensor([HIGH, 2.5])  # transformers: "glass oil"; we: "glass"
    boxes = torch.rand(queries, 4, generator=generator) * 0.3 + 0.35  # well inside: clipping is a no-op
    size = (1200, 800)  # (W, H)

    ours = detections_from_logits(logits, boxes, tokens, size, box_threshold=0.35, text_threshold=0.25)
    processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil(), tokenizer=tokenizer)
    outputs = SimpleNamespace(logits=logits[None], pred_boxes=boxes[None])
    (theirs,) = processor.post_process_grounded_object_detection(
        outputs,
        torch.tensor([tokens.input_ids]),
        threshold=0.35,
        text_threshold=0.25,
        target_sizes=[(size[1], size[0])],
    )
    order = torch.argsort(theirs["scores"], descending=True, stable=True)
    np.testing.assert_allclose(ours.scores, theirs["scores"][order].numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours.boxes, theirs["boxes"][order].numpy(), atol=1e-3)
    their_labels = [theirs["text_labels"][i] for i in order.tolist()]
    assert len(ours) == len(their_labels) >= 3
    assert their_labels[:3] == ["remote control", "cat", "glass oil"]
    assert ours.phrases[:3] == ["remote control", "cat", "glass"]
    scores = torch.sigmoid(logits).max(-1).values
    kept = [q for q in torch.argsort(scores, descending=True, stable=True).tolist() if scores[q] > 0.35]
    single, merged = 0, 0
    for query, mine, theirs_label in zip(kept, ours.phrases, their_labels):
        passing = torch.sigmoid(logits[query, : len(tokens)]) > 0.25
        phrases_hit = {tokens.token_phrase[i] for i in passing.nonzero().flatten().tolist()} - {-1}
        if len(phrases_hit) == 1:  # one phrase passes: both give the same label
            assert mine == theirs_label
            single += 1
        else:  # transformers merges phrases; ours stays inside the best one
            assert any(set(mine.split()) <= set(words) for words in tokens.phrase_words)
            merged += 1
    assert single >= 10 and merged >= 10
