"""Tests of the focal loss against values computed by hand."""

import math

import pytest
import torch

from repro_lits.loss import FocalLoss


def test_two_voxels_match_hand_computation():
    # Voxel a: probabilities (0.7, 0.2, 0.1), true class 0; voxel b: (0.1, 0.3, 0.6), true class 2.
    probabilities = torch.tensor([[0.7, 0.1], [0.2, 0.3], [0.1, 0.6]]).reshape(1, 3, 2)
    target = torch.tensor([[0, 2]])

    # By hand: alpha = (0.2, 1.0, 2.5) / 3.7; the one-hot target clamped to [5e-6, 0.99999];
    # p_t = sum(clamped one-hot * p) + 1e-5; loss = mean of -alpha_t (1 - p_t)^2 log(p_t).
    p_a = 0.99999 * 0.7 + 5e-6 * 0.2 + 5e-6 * 0.1 + 1e-5  # 0.7000045
    p_b = 5e-6 * 0.1 + 5e-6 * 0.3 + 0.99999 * 0.6 + 1e-5  # 0.600006
    loss_a = -(0.2 / 3.7) * (1 - p_a) ** 2 * math.log(p_a)
    loss_b = -(2.5 / 3.7) * (1 - p_b) ** 2 * math.log(p_b)
    expected = (loss_a + loss_b) / 2

    loss = FocalLoss([0.2, 1.0, 2.5], gamma=2.0)(probabilities, target)
    assert expected == pytest.approx(0.0284783730, rel=1e-8)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_weights_are_normalised():
    probabilities = torch.full((1, 3, 4), 1 / 3)
    target = torch.tensor([[0, 1, 2, 1]])
    scaled = FocalLoss([2.0, 10.0, 25.0])(probabilities, target)
    plain = FocalLoss([0.2, 1.0, 2.5])(probabilities, target)
    assert scaled.item() == pytest.approx(plain.item(), rel=1e-6)


def test_confident_correct_prediction_costs_little():
    target = torch.tensor([[[0, 1], [2, 1]]])
    probabilities = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 0.98 + 0.02 / 3
    wrong = torch.roll(probabilities, shifts=1, dims=1)
    loss = FocalLoss([0.2, 1.0, 2.5])
    assert loss(probabilities, target).item() < 1e-5
    assert loss(wrong, target).item() > 0.5


def test_gradient_flows_to_probabilities():
    logits = torch.randn(1, 3, 2, 2, 2, generator=torch.Generator().manual_seed(0), requires_grad=True)
    target = torch.tensor([[[[0, 1], [2, 1]], [[0, 0], [1, 2]]]])
    FocalLoss([0.2, 1.0, 2.5])(torch.softmax(logits, dim=1), target).backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_mismatched_shapes_rejected():
    with pytest.raises(ValueError, match="target shape"):
        FocalLoss([0.2, 1.0, 2.5])(torch.full((1, 3, 4), 1 / 3), torch.zeros(1, 5, dtype=torch.long))


def test_invalid_weights_rejected():
    with pytest.raises(ValueError, match="class_weights"):
        FocalLoss([0.0, 0.0, 0.0])
