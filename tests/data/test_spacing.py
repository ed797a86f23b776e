"""Spacing mode: RAS+ reorientation, isotropic resampling, HU window, crop."""

from __future__ import annotations

import numpy as np
import pytest

from repro_lits.data.spacing import SpacingParams, preprocess_spacing, resample_axis, to_canonical
from repro_lits.errors import UserInputError


def phantom(shape=(20, 16, 10)):
    rng = np.random.default_rng(0)
    image = rng.integers(-300, 400, size=shape).astype(np.int16)
    label = np.zeros(shape, dtype=np.uint8)
    label[4:12, 3:10, 2:7] = 1
    label[6:8, 5:7, 3:5] = 2
    return image, label


def test_flipped_storage_gives_same_output():
    image, label = phantom()
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    flipped = affine.copy()
    flipped[:3, 0] *= -1
    flipped[0, 3] = (image.shape[0] - 1) * 1.5
    params = SpacingParams(spacing_mm=1.5, hu_window=(-200.0, 300.0), cube_size=12)
    plain = preprocess_spacing(image, label, affine, params)
    mirrored = preprocess_spacing(np.flip(image, 0), np.flip(label, 0), flipped, params)
    np.testing.assert_array_equal(plain.label, mirrored.label)
    np.testing.assert_allclose(plain.image, mirrored.image)


def test_las_volume_reoriented_to_ras():
    image, _ = phantom()
    las = np.diag([-2.0, 2.0, 2.0, 1.0])
    canonical, affine = to_canonical(image, las)
    np.testing.assert_array_equal(canonical, image[::-1])
    assert affine[0, 0] == 2.0


def test_resample_axis_linear_and_nearest():
    volume = np.arange(5, dtype=np.float32).reshape(5, 1, 1) * 10
    half = resample_axis(volume, 0, 0.5, linear=True)
    np.testing.assert_allclose(half[:, 0, 0], [0, 5, 10, 15, 20, 25, 30, 35, 40])
    double = resample_axis(volume.astype(np.uint8), 0, 2.0, linear=False)
    assert double.dtype == np.uint8
    np.testing.assert_array_equal(double[:, 0, 0], [0, 20, 40])


def test_output_isotropic_window_and_range():
    image, label = phantom()
    params = SpacingParams(spacing_mm=3.0, hu_window=(-100.0, 100.0), cube_size=8)
    result = preprocess_spacing(image, label, np.diag([1.5, 1.5, 3.0, 1.0]), params)
    assert result.info["resampled_shape"] == [10, 8, 10]
    assert result.image.dtype == np.float32
    assert result.image.shape == (8, 8, 8)
    assert 0.0 <= result.image.min()
    assert result.image.max() <= 1.0
    assert set(np.unique(result.label)) <= {0, 1, 2}
    assert (result.label == 1).any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"spacing_mm": 0.0}, "spacing_mm", id="spacing"),
        pytest.param({"hu_window": (100.0, -100.0)}, "hu_window", id="window"),
        pytest.param({"cube_size": 0}, "cube_size", id="cube"),
    ],
)
def test_spacing_params_validated(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        SpacingParams(**kwargs)
