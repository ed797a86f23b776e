"""The study's (mlf-core) preprocessing: fit the slice axis, downscale by block means, crop a cube around the liver.

Everything happens in the source file's array index order (X, Y, Z), with the
slice axis last, and on raw HU (no intensity normalisation). Steps:

1. The slice axis is padded to ``slice_count`` slices, half before and half
   after (the odd one after), with the image's minimum and label 0; a longer
   volume is cut to its central ``slice_count`` slices.
2. Every axis is downscaled by ``downscale`` with a block mean, image and label
   alike. An axis whose length is not a multiple of the factor is padded with
   0 at its high end first, as scikit-image's ``downscale_local_mean`` does
   (cval 0). The label mean is rounded half to even (``np.rint``) and clipped
   to 0..2.
3. The liver centre along each axis is the floored midpoint of the first and
   last index whose slab contains a label >= 1.
4. A ``cube_size``^3 cube from centre - cube_size/2 to centre + cube_size/2 is
   cut out. Where it runs past the volume, image and label are filled with 0.

Difference from the study: the study sliced ``[centre - 64 : centre + 64]``
directly. A centre closer than 64 voxels to the low end gave a negative start
index, which Python reads as counting from the end, so the cube came out
empty or wrong. Here the part of the cube below index 0 is zero-filled like
the part past the high end, so the liver stays centred. Cases where this
happened are marked in the manifest (``padding.low`` > 0).

Memory: the volume is never materialised as float64 or padded as a whole. The
slice-axis fit and the block means run on chunks of output slices in
float32, so a read needs the source array plus the downscaled output. For
integer HU and a power-of-two factor the float32 block sums are exact, so the
result equals a float64 computation cast to float32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from repro_lits.errors import UserInputError

#: Float32 elements per working chunk of the downscale (about 16 MB).
CHUNK_ELEMENTS = 4 * 1024 * 1024


@dataclass(frozen=True)
class MlfCoreParams:
    """Parameters of the mlf-core preprocessing; the study used 512, 2 and 128."""

    slice_count: int = 512
    downscale: int = 2
    cube_size: int = 128

    def __post_init__(self) -> None:
        for name in ("slice_count", "downscale", "cube_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserInputError(f"mlf-core {name} = {value!r}; expected a positive integer")

    def to_dict(self) -> dict:
        return {"mode": "mlf-core", **asdict(self)}


@dataclass
class PreparedCase:
    """Preprocessing output: ``image`` (C, C, C) float32, ``label`` (C, C, C) uint8, and ``info`` on the steps taken."""

    image: np.ndarray
    label: np.ndarray
    info: dict


def slice_window(slices: int, slice_count: int) -> tuple[int, int, int]:
    """Map the slice axis onto ``slice_count`` slices.

    Returns ``(first_source_slice, pad_before, kept_slices)``: output slice
    ``pad_before + k`` is source slice ``first_source_slice + k`` for
    ``k < kept_slices``; the other output slices are padding.
    """
    if slices <= slice_count:
        return 0, (slice_count - slices) // 2, slices
    return (slices - slice_count) // 2, 0, slice_count


def downscale_fit(volume: np.ndarray, *, slice_count: int, factor: int, pad_value: float) -> np.ndarray:
    """Fit the slice axis to ``slice_count`` (padding with ``pad_value``) and block-mean downscale by ``factor``.

    Args:
        volume: (X, Y, Z) any real dtype.

    Returns:
        (ceil(X/f), ceil(Y/f), ceil(slice_count/f)) float32.
    """
    nx, ny, nz = volume.shape
    first, pad_before, kept = slice_window(nz, slice_count)
    out_shape = (-(-nx // factor), -(-ny // factor), -(-slice_count // factor))
    padded_x, padded_y = out_shape[0] * factor, out_shape[1] * factor
    result = np.empty(out_shape, dtype=np.float32)
    block = min(out_shape[2], max(1, CHUNK_ELEMENTS // (padded_x * padded_y * factor)))  # output slices per chunk
    # Match the source's memory order (NIfTI data is Fortran-ordered), so that copying a slab is sequential.
    order = "F" if volume.flags.f_contiguous and not volume.flags.c_contiguous else "C"
    chunk = np.zeros((padded_x, padded_y, block * factor), dtype=np.float32, order=order)

    for out_start in range(0, out_shape[2], block):
        out_stop = min(out_start + block, out_shape[2])
        width = (out_stop - out_start) * factor
        work = chunk[:, :, :width]
        work[:nx, :ny, :] = pad_value
        work[nx:, :, :] = 0.0  # high-end remainder of X and Y: cval 0
        work[:, ny:, :] = 0.0
        # Output slices p in [out_start*f, out_stop*f) of the fitted axis; source slice = p - pad_before + first.
        fitted_start = out_start * factor
        lo = max(fitted_start, pad_before)
        hi = min(fitted_start + width, pad_before + kept)
        if hi > lo:
            work[:nx, :ny, lo - fitted_start : hi - fitted_start] = volume[:, :, lo - pad_before + first : hi - pad_before + first]
        past_end = max(slice_count, fitted_start) - fitted_start
        if past_end < width:
            work[:, :, past_end:] = 0.0  # slice_count not a multiple of the factor: cval 0
        result[:, :, out_start:out_stop] = block_mean(work, factor)
    return result


def block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor``^3 blocks of a float32 (X, Y, Z) array whose axes are multiples of ``factor``.

    Sums strided views one axis at a time, outermost in memory first (several
    times faster than a reshape to six axes and ``mean``), then divides by
    ``factor**3``.
    """
    total = volume
    for axis in sorted(range(3), key=lambda a: -volume.strides[a]):  # outermost axis first: contiguous views
        index = [slice(None)] * 3
        index[axis] = slice(0, None, factor)
        summed = total[tuple(index)].copy(order="K")
        for offset in range(1, factor):
            index[axis] = slice(offset, None, factor)
            summed += total[tuple(index)]
        total = summed
    total /= np.float32(factor**3)
    return total


def liver_centre(label: np.ndarray) -> tuple[int, int, int]:
    """Floored midpoint of the first and last index along each axis whose slab contains a label >= 1.

    Raises:
        ValueError: the label has no voxel >= 1.
    """
    mask = label >= 1
    centre = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=others))
        if present.size == 0:
            raise ValueError("label has no voxel >= 1, so the liver centre is undefined")
        centre.append(int((present[0] + present[-1]) // 2))
    return tuple(centre)  # type: ignore[return-value]


def crop_cube(volume: np.ndarray, centre, size: int, fill: float = 0) -> tuple[np.ndarray, dict]:
    """Cut a ``size``^3 cube starting at ``centre - size // 2``; parts outside the volume are ``fill``.

    Returns the cube and ``{"start": [...], "low": [...], "high": [...]}``: the
    cube's first index per axis and how many fill voxels it has at each end.
    """
    cube = np.full((size, size, size), fill, dtype=volume.dtype)
    source = []
    target = []
    low = []
    high = []
    starts = []
    for c, n in zip(centre, volume.shape):
        start = int(c) - size // 2
        stop = start + size
        src_lo, src_hi = max(start, 0), min(stop, n)
        source.append(slice(src_lo, max(src_lo, src_hi)))
        target.append(slice(src_lo - start, src_lo - start + max(0, src_hi - src_lo)))
        low.append(src_lo - start)
        high.append(stop - max(src_hi, src_lo))
        starts.append(start)
    cube[tuple(target)] = volume[tuple(source)]
    return cube, {"start": starts, "low": low, "high": high}


def preprocess_mlf_core(image: np.ndarray, label: np.ndarray, params: MlfCoreParams) -> PreparedCase:
    """Run the mlf-core preprocessing on one case.

    Args:
        image: (X, Y, Z) HU, int16 or float32, slice axis last.
        label: (X, Y, Z) uint8 0..2 on the same grid, with at least one voxel >= 1.

    Returns:
        cubes of shape (cube_size,)*3, image float32 HU and label uint8.
    """
    if image.shape != label.shape or image.ndim != 3:
        raise ValueError(f"image shape {image.shape} and label shape {label.shape}; expected equal 3-D shapes")
    pad_value = float(image.min())
    small_image = downscale_fit(image, slice_count=params.slice_count, factor=params.downscale, pad_value=pad_value)
    small_label = downscale_fit(label, slice_count=params.slice_count, factor=params.downscale, pad_value=0.0)
    small_label = np.clip(np.rint(small_label), 0, 2).astype(np.uint8)

    centre = liver_centre(small_label)
    image_cube, placement = crop_cube(small_image, centre, params.cube_size, fill=0.0)
    label_cube, _ = crop_cube(small_label, centre, params.cube_size, fill=0)

    first, pad_before, kept = slice_window(image.shape[2], params.slice_count)
    info = {
        "source_shape": list(image.shape),
        "slice_axis": {
            "first_source_slice": first,
            "pad_before": pad_before,
            "pad_after": params.slice_count - pad_before - kept,
            "pad_value": pad_value,
        },
        "downscaled_shape": list(small_image.shape),
        "centre": list(centre),
        "padding": placement,
        "padded": bool(any(placement["low"]) or any(placement["high"])),
    }
    return PreparedCase(image_cube, label_cube, info)
