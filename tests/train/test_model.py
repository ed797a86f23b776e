"""Tests of the U-Net: the study's parameter counts, shapes and output probabilities."""

import pytest
import torch

from repro_lits.model import UNet3D, build_model, parameter_counts

# Per-part trainable parameter counts of the study's U-Net at width 32 (mlf-core liver-ct-segmentation).
STUDY_COUNTS = {
    "input_block": 28_704,
    "down1": 174_496,
    "down2": 697_152,
    "middle": 885_504,
    "up1": 442_752,
    "up2": 110_784,
    "output": 99,
    "total": 2_339_491,
}


@pytest.mark.parametrize("part", list(STUDY_COUNTS))
def test_width_32_matches_study_counts(part):
    counts = parameter_counts(UNet3D(width=32))
    assert counts[part] == STUDY_COUNTS[part]


def test_parts_sum_to_total():
    counts = parameter_counts(UNet3D(width=8))
    total = counts.pop("total")
    assert sum(counts.values()) == total


def test_output_is_class_probabilities():
    torch.manual_seed(0)
    model = UNet3D(width=2, dropout=0.0).eval()
    image = torch.randn(2, 1, 8, 12, 16)
    with torch.no_grad():
        probabilities = model(image)
    assert probabilities.shape == (2, 3, 8, 12, 16)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(2, 8, 12, 16), atol=1e-5)
    assert (probabilities >= 0).all()


def test_dropout_placement():
    model = build_model({"width": 4, "dropout": 0.25, "sampling_dropout": 0.001})
    rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout3d)]
    # Two per conv block (6 blocks) at 0.25, one before each of the 2 down- and 2 upsampling steps at 0.001.
    assert sorted(rates) == [0.001] * 4 + [0.25] * 12


def test_invalid_width_rejected():
    with pytest.raises(ValueError, match="width"):
        UNet3D(width=0)
