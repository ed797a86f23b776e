"""mlf-core preprocessing against a direct float64 implementation of the study's steps."""

from __future__ import annotations

import numpy as np
import pytest

from repro_lits.data.mlf_core import (
    MlfCoreParams,
    crop_cube,
    downscale_fit,
    liver_centre,
    preprocess_mlf_core,
    slice_window,
)
from repro_lits.errors import UserInputError


def reference_mlf_core(image, label, slice_count, factor, cube):
    """The study's steps written plainly in float64, with zero-fill on both ends of the crop."""
    image = image.astype(np.float64)
    label = label.astype(np.float64)
    z = image.shape[2]
    if z <= slice_count:
        before = (slice_count - z) // 2
        after = slice_count - z - before
        image = np.pad(image, ((0, 0), (0, 0), (before, after)), constant_values=image.min())
        label = np.pad(label, ((0, 0), (0, 0), (before, after)), constant_values=0)
    else:
        start = (z - slice_count) // 2
        image = image[:, :, start : start + slice_count]
        label = label[:, :, start : start + slice_count]

    def local_mean(volume):
        pad = [(0, (-n) % factor) for n in volume.shape]
        volume = np.pad(volume, pad, constant_values=0.0)
        out = np.zeros([n // factor for n in volume.shape])
        for i in range(out.shape[0]):
            for j in range(out.shape[1]):
                for k in range(out.shape[2]):
                    out[i, j, k] = volume[i * factor:(i + 1) * factor, j * factor:(j + 1) * factor, k * factor:(k + 1) * factor].mean()
        return out

    image = local_mean(image)
    label = np.clip(np.round(local_mean(label)), 0, 2)
    centre = []
    for axis in range(3):
        slabs = [np.take(label, i, axis=axis).max() >= 1 for i in range(label.shape[axis])]
        first = slabs.index(True)
        last = len(slabs) - 1 - slabs[::-1].index(True)
        centre.append((first + last) // 2)
    image_cube = np.zeros((cube,) * 3)
    label_cube = np.zeros((cube,) * 3)
    for i in range(cube):
        for j in range(cube):
            for k in range(cube):
                x, y, w = centre[0] - cube // 2 + i, centre[1] - cube // 2 + j, centre[2] - cube // 2 + k
                if 0 <= x < image.shape[0] and 0 <= y < image.shape[1] and 0 <= w < image.shape[2]:
                    image_cube[i, j, k] = image[x, y, w]
                    label_cube[i, j, k] = label[x, y, w]
    return image_cube.astype(np.float32), label_cube.astype(np.uint8), centre


def random_case(shape, liver_box, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(-1024, 1500, size=shape).astype(np.int16)
    label = np.zeros(shape, dtype=np.uint8)
    label[liver_box] = 1
    inner = tuple(slice(s.start + 1, s.start + 3) for s in liver_box)
    label[inner] = 2
    return image, label


CASES = [
    pytest.param((12, 10, 7), (slice(2, 9), slice(3, 8), slice(1, 5)), 16, 2, 8, id="pad-slices-odd-in-plane"),
    pytest.param((10, 12, 30), (slice(1, 6), slice(4, 10), slice(8, 25)), 16, 2, 8, id="cut-slices"),
    pytest.param((16, 16, 16), (slice(0, 3), slice(0, 4), slice(0, 3)), 16, 2, 8, id="liver-at-low-edge"),
    pytest.param((16, 16, 16), (slice(12, 16), slice(13, 16), slice(10, 16)), 16, 2, 8, id="liver-at-high-edge"),
    pytest.param((9, 11, 13), (slice(2, 7), slice(2, 9), slice(3, 10)), 15, 3, 6, id="factor-3-odd-count"),
    pytest.param((8, 8, 8), (slice(2, 6), slice(2, 6), slice(2, 6)), 8, 2, 12, id="cube-larger-than-volume"),
]


@pytest.mark.parametrize(("shape", "liver_box", "slice_count", "factor", "cube"), CASES)
def test_mlf_core_matches_reference(shape, liver_box, slice_count, factor, cube):
    image, label = random_case(shape, liver_box, seed=sum(shape))
    expected_image, expected_label, expected_centre = reference_mlf_core(image, label, slice_count, factor, cube)
    result = preprocess_mlf_core(image, label, MlfCoreParams(slice_count=slice_count, downscale=factor, cube_size=cube))
    assert result.image.dtype == np.float32
    assert result.label.dtype == np.uint8
    assert result.image.shape == (cube,) * 3
    assert result.info["centre"] == expected_centre
    np.testing.assert_array_equal(result.label, expected_label)
    np.testing.assert_allclose(result.image, expected_image, rtol=1e-6, atol=1e-4)
    if factor == 2:
        np.testing.assert_array_equal(result.image, expected_image)


def test_low_edge_crop_keeps_liver_centred():
    image, label = random_case((16, 16, 16), (slice(0, 3), slice(0, 4), slice(0, 3)), seed=1)
    result = preprocess_mlf_core(image, label, MlfCoreParams(slice_count=16, downscale=2, cube_size=8))
    small_label = np.clip(np.rint(downscale_fit(label, slice_count=16, factor=2, pad_value=0)), 0, 2)
    assert result.info["centre"] == [0, 0, 0]
    assert result.info["padding"]["low"] == [4, 4, 4]
    assert result.info["padded"] is True
    # Every liver voxel of the downscaled volume is inside the cube.
    assert (result.label >= 1).sum() == (small_label >= 1).sum() > 0
    # The liver sits at the cube centre, not at its edge as a cube shifted inwards would have it.
    assert result.label[4, 4, 4] >= 1
    assert (result.image[:4] == 0).all()


def test_slice_window_pads_half_before_and_odd_after():
    assert slice_window(7, 16) == (0, 4, 7)
    assert slice_window(16, 16) == (0, 0, 16)
    assert slice_window(21, 16) == (2, 0, 16)


def test_slice_padding_uses_image_minimum():
    image = np.full((4, 4, 2), 100, dtype=np.int16)
    image[0, 0, 0] = -50
    out = downscale_fit(image, slice_count=6, factor=2, pad_value=float(image.min()))
    assert out.shape == (2, 2, 3)
    assert out[1, 1, 0] == -50.0  # padded slices only
    assert out[1, 1, 1] == 100.0


def test_label_block_means_rounded_half_to_even():
    label = np.zeros((4, 2, 2), dtype=np.uint8)
    label[0:2].flat[:4] = 1  # block 0: mean 0.5 rounds to 0
    label[2:4] = 1
    label[2:4].flat[:4] = 2  # block 1: mean 1.5 rounds to 2
    label[0, 0, 0] = 2  # block 0 becomes 4/8 + 1/8 = 0.625, rounds to 1
    image = np.zeros(label.shape, dtype=np.int16)
    result = preprocess_mlf_core(image, label, MlfCoreParams(slice_count=2, downscale=2, cube_size=4))
    assert result.info["centre"] == [0, 0, 0]
    assert result.label[2:, 2, 2].tolist() == [1, 2]
    label[0, 0, 0] = 1  # block 0 back to mean 0.5
    small = np.rint(downscale_fit(label, slice_count=2, factor=2, pad_value=0))
    assert small[:, 0, 0].tolist() == [0.0, 2.0]


def test_liver_centre_floor_midpoint():
    label = np.zeros((10, 10, 10), dtype=np.uint8)
    label[2, 3, 4] = 1
    label[5, 8, 4] = 2
    assert liver_centre(label) == (3, 5, 4)


def test_liver_centre_empty_raises():
    with pytest.raises(ValueError, match="no voxel >= 1"):
        liver_centre(np.zeros((3, 3, 3), dtype=np.uint8))


def test_crop_cube_reports_padding():
    volume = np.arange(5 * 5 * 5, dtype=np.float32).reshape(5, 5, 5)
    cube, placement = crop_cube(volume, (0, 2, 4), 4)
    assert placement == {"start": [-2, 0, 2], "low": [2, 0, 0], "high": [0, 0, 1]}
    np.testing.assert_array_equal(cube[2:, :, :3], volume[0:2, 0:4, 2:5])
    assert (cube[:2] == 0).all()
    assert (cube[:, :, 3] == 0).all()


@pytest.mark.parametrize("field", ["slice_count", "downscale", "cube_size"])
def test_params_reject_non_positive(field):
    with pytest.raises(UserInputError, match=field):
        MlfCoreParams(**{field: 0})


def test_fortran_ordered_input_same_result():
    # NIfTI data is stored Fortran-ordered; the chunked downscale follows the source's memory order.
    image, label = random_case((14, 12, 9), (slice(2, 9), slice(3, 8), slice(1, 5)), seed=5)
    params = MlfCoreParams(slice_count=16, downscale=2, cube_size=8)
    c_order = preprocess_mlf_core(image, label, params)
    f_order = preprocess_mlf_core(np.asfortranarray(image), np.asfortranarray(label), params)
    np.testing.assert_array_equal(c_order.image, f_order.image)
    np.testing.assert_array_equal(c_order.label, f_order.label)
