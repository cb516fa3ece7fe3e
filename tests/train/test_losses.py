"""Token focal loss, box losses and the full criterion on hand-made cases with known answers."""
import math
from types import SimpleNamespace

import pytest
import torch

from grounding.train.losses import GroundingCriterion, box_losses, token_focal_loss

NEG_INF = float("-inf")


def _focal(p: float, positive: bool) -> float:
    """Sigmoid focal loss of one query-token pair with probability p (alpha 0.25, gamma 2)."""
    return 0.25 * (1 - p) ** 2 * -math.log(p) if positive else 0.75 * p**2 * -math.log(1 - p)


def test_token_focal_loss_known_values_and_padding_excluded():
    logits = torch.tensor([[[0.0, 0.0, NEG_INF]]])  # one query, two real tokens, one padding token
    targets = torch.tensor([[[1.0, 0.0, 0.0]]])
    valid = torch.isfinite(logits)
    loss = token_focal_loss(logits, targets, valid, num_boxes=2.0)
    assert loss.item() == pytest.approx((_focal(0.5, True) + _focal(0.5, False)) / 2, rel=1e-5)


def test_token_focal_loss_gradient_is_finite_with_padding():
    logits = torch.tensor([[[2.0, -1.0, NEG_INF, NEG_INF]]], requires_grad=True)
    loss = token_focal_loss(logits, torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]), torch.isfinite(logits.detach()), 1.0)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 0, 2:].abs().sum() == 0


@pytest.mark.parametrize(
    "pred, target, l1, giou",
    [
        ([0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], 0.0, 0.0),
        ([0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2], 0.1, 2 / 3),  # IoU 1/3, hull = union
        ([0.1, 0.1, 0.2, 0.2], [0.5, 0.1, 0.2, 0.2], 0.4, 4 / 3),  # disjoint: GIoU = 0 - (0.12-0.08)/0.12
    ],
)
def test_box_losses_known_values(pred, target, l1, giou):
    loss_l1, loss_giou = box_losses(torch.tensor([pred]), torch.tensor([target]), num_boxes=1.0)
    assert loss_l1.item() == pytest.approx(l1, abs=1e-6)
    assert loss_giou.item() == pytest.approx(giou, abs=1e-6)


def _stage(logits: list[list[float]], boxes: list[list[float]]) -> dict[str, torch.Tensor]:
    return {"pred_logits": torch.tensor([logits]), "pred_boxes": torch.tensor([boxes])}


def test_criterion_matches_then_sums_weighted_losses_over_all_stages():
    # One target: phrase on token 1, box B. Query 1 predicts B exactly; query 0 is elsewhere.
    box = [0.5, 0.5, 0.2, 0.2]
    logits = [[0.0, -2.0, 0.0, NEG_INF], [0.0, 2.0, 0.0, NEG_INF]]
    boxes = [[0.1, 0.1, 0.2, 0.2], box]
    final = _stage(logits, boxes)
    outputs = SimpleNamespace(**final, aux_outputs=[_stage(logits, boxes)], enc_outputs=_stage(logits, boxes))
    positive_map = torch.tensor([[False, True, False, False]])
    targets = [{"boxes": torch.tensor([box]), "positive_map": positive_map}]

    losses = GroundingCriterion()(outputs, targets)

    p = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # negatives at p=0.5: query 0 tokens 0 and 2, query 1 tokens 0 and 2 -> 4 in total
    expected_cls = 4 * _focal(0.5, False) + _focal(p(-2.0), False) + _focal(p(2.0), True)
    for suffix in ("", "_0", "_enc"):
        assert losses[f"loss_cls{suffix}"].item() == pytest.approx(expected_cls, rel=1e-5)
        assert losses[f"loss_bbox{suffix}"].item() == pytest.approx(0.0, abs=1e-6)
        assert losses[f"loss_giou{suffix}"].item() == pytest.approx(0.0, abs=1e-6)
    assert losses["loss"].item() == pytest.approx(3 * 2.0 * expected_cls, rel=1e-5)


def test_criterion_box_losses_normalised_by_number_of_boxes_and_backpropagate():
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2]]], requires_grad=True)
    logits = torch.zeros(1, 2, 4, requires_grad=True)
    outputs = {"pred_logits": logits, "pred_boxes": boxes, "aux_outputs": [], "enc_outputs": None}
    targets = [
        {
            "boxes": torch.tensor([[0.6, 0.5, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2]]),
            "positive_map": torch.tensor([[False, True, False, False], [False, False, True, False]]),
        }
    ]
    losses = GroundingCriterion()(outputs, targets)
    assert set(losses) == {"loss", "loss_cls", "loss_bbox", "loss_giou"}
    assert losses["loss_bbox"].item() == pytest.approx(0.1 / 2, abs=1e-6)
    assert losses["loss_giou"].item() == pytest.approx((2 / 3) / 2, abs=1e-6)
    losses["loss"].backward()
    assert boxes.grad.abs().sum() > 0 and logits.grad.abs().sum() > 0


def test_criterion_without_targets_pushes_every_token_down():
    logits = torch.tensor([[[1.0, -1.0, NEG_INF]]], requires_grad=True)
    outputs = {"pred_logits": logits, "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2]]]), "aux_outputs": [], "enc_outputs": {}}
    targets = [{"boxes": torch.zeros(0, 4), "positive_map": torch.zeros(0, 3, dtype=torch.bool)}]
    losses = GroundingCriterion()(outputs, targets)
    p = 1 / (1 + math.exp(-1.0))
    assert losses["loss_cls"].item() == pytest.approx(_focal(p, False) + _focal(1 - p, False), rel=1e-5)
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == 0
    losses["loss"].backward()
    assert (logits.grad[0, 0, :2] > 0).all()
