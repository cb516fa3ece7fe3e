"""Hungarian matcher on hand-made cases with known assignments and costs."""
import math

import pytest
import torch

from grounding.train.matcher import HungarianMatcher, focal_token_cost

NEG_INF = float("-inf")


def _positive_map(spans: list[tuple[int, int]], width: int = 8) -> torch.Tensor:
    positive_map = torch.zeros(len(spans), width, dtype=torch.bool)
    for row, (start, end) in enumerate(spans):
        positive_map[row, start:end] = True
    return positive_map


def test_focal_token_cost_is_mean_focal_difference_over_phrase_tokens():
    p1, p2 = 0.5, 0.9  # probabilities of the query on the phrase's two tokens
    logits = torch.tensor([[NEG_INF, math.log(p1 / (1 - p1)), math.log(p2 / (1 - p2)), NEG_INF]])
    cost = focal_token_cost(logits, _positive_map([(1, 3)], width=4))

    def difference(p: float) -> float:
        return 0.25 * (1 - p) ** 2 * -math.log(p) - 0.75 * p**2 * -math.log(1 - p)

    assert cost.shape == (1, 1)
    assert cost.item() == pytest.approx((difference(p1) + difference(p2)) / 2, rel=1e-4)


def test_confident_query_costs_less_than_unsure_one():
    logits = torch.tensor([[0.0, 4.0, 4.0, 0.0], [0.0, -4.0, -4.0, 0.0]])
    cost = focal_token_cost(logits, _positive_map([(1, 3)], width=4))
    assert cost[0, 0] < 0 < cost[1, 0]


def test_boxes_decide_when_logits_are_equal():
    targets = [{"boxes": torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.3, 0.2]]), "positive_map": _positive_map([(1, 2), (3, 4)])}]
    pred_boxes = torch.tensor([[[0.7, 0.7, 0.3, 0.2], [0.5, 0.5, 0.5, 0.5], [0.21, 0.2, 0.1, 0.1]]])
    pred_logits = torch.zeros(1, 3, 8)
    (query_idx, target_idx), = HungarianMatcher()(pred_logits, pred_boxes, targets)
    assert query_idx.tolist() == [0, 2]
    assert target_idx.tolist() == [1, 0]


def test_tokens_decide_when_boxes_are_equal():
    box = [0.5, 0.5, 0.2, 0.2]
    targets = [{"boxes": torch.tensor([box, box]), "positive_map": _positive_map([(1, 3), (4, 5)])}]
    pred_boxes = torch.tensor([[box, box]])
    pred_logits = torch.full((1, 2, 8), -5.0)
    pred_logits[0, 0, 4] = 5.0  # query 0 reads phrase 1
    pred_logits[0, 1, 1:3] = 5.0  # query 1 reads phrase 0
    (query_idx, target_idx), = HungarianMatcher()(pred_logits, pred_boxes, targets)
    assert query_idx.tolist() == [0, 1]
    assert target_idx.tolist() == [1, 0]


def test_cost_matrix_weights_l1_and_giou():
    matcher = HungarianMatcher(class_weight=0.0)
    target = {"boxes": torch.tensor([[0.6, 0.5, 0.2, 0.2]]), "positive_map": _positive_map([(1, 2)])}
    # xyxy [0.4,0.4,0.6,0.6] vs [0.5,0.4,0.7,0.6]: IoU 1/3, hull = union -> GIoU 1/3; L1 = 0.1
    cost = matcher.cost_matrix(torch.zeros(1, 8), torch.tensor([[0.5, 0.5, 0.2, 0.2]]), target)
    assert cost.item() == pytest.approx(5.0 * 0.1 - 2.0 / 3, abs=1e-5)


def test_each_image_matched_on_its_own_and_empty_targets_allowed():
    targets = [
        {"boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]]), "positive_map": _positive_map([(1, 2)])},
        {"boxes": torch.zeros(0, 4), "positive_map": torch.zeros(0, 8, dtype=torch.bool)},
    ]
    pred_boxes = torch.tensor([[0.8, 0.8, 0.1, 0.1], [0.3, 0.3, 0.2, 0.2], [0.5, 0.5, 0.4, 0.4]]).expand(2, 3, 4)
    matches = HungarianMatcher()(torch.zeros(2, 3, 8), pred_boxes, targets)
    assert [m[0].tolist() for m in matches] == [[1], []]
    assert [m[1].tolist() for m in matches] == [[0], []]
