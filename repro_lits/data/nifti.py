"""Read and write NIfTI volumes: one-line errors for unreadable files, no float64 copies, reproducible gzip bytes.

Arrays keep the file's array index order, (X, Y, Z) for a 3-D volume. Affines
map voxel indices to millimetres in the file's world space (RAS+ for NIfTI).
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from repro_lits.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

#: ``sizeof_hdr`` of a NIfTI-1 and a NIfTI-2 header, the first 4 bytes of an uncompressed file.
NIFTI_HEADER_SIZES = (348, 540)

#: Read errors of a truncated or corrupt file: gzip stream ended early, bad deflate data, short buffer.
READ_ERRORS = (EOFError, OSError, zlib.error, ValueError)


def _looks_like_nifti(head: bytes) -> bool:
    if len(head) < 4:
        return False
    return any(int.from_bytes(head[:4], order) in NIFTI_HEADER_SIZES for order in ("little", "big"))


def open_nifti(path: Path) -> nib.Nifti1Image | nib.Nifti2Image:
    """Open a NIfTI-1 or NIfTI-2 file (``.nii`` or ``.nii.gz``) and read its header only.

    Raises:
        DataError: the file is missing, is not NIfTI, or its compression does not match its name.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected a NIfTI file (.nii or .nii.gz)")
    try:
        with open(path, "rb") as stream:
            head = stream.read(4)
    except OSError as err:
        raise DataError(f"{path}: cannot read the file ({err.strerror}); expected a readable NIfTI file") from err

    gzipped_name = path.name.endswith(".gz")
    if gzipped_name and head[:2] != GZIP_MAGIC:
        if _looks_like_nifti(head):
            raise DataError(
                f"{path}: named .nii.gz but is an uncompressed NIfTI file; expected gzip data; rename it to .nii"
            )
        raise DataError(f"{path}: not a NIfTI file (no gzip header); expected a gzip-compressed NIfTI image")
    if not gzipped_name and head[:2] == GZIP_MAGIC:
        raise DataError(f"{path}: named .nii but is gzip-compressed; expected raw NIfTI bytes; rename it to .nii.gz")
    if not gzipped_name and not _looks_like_nifti(head):
        raise DataError(f"{path}: not a NIfTI file (header size field is not 348 or 540); expected a NIfTI image")

    try:
        image = nib.load(path)
    except (ImageFileError, HeaderDataError, *READ_ERRORS) as err:
        raise DataError(f"{path}: not a readable NIfTI file ({err}); expected a NIfTI-1 or NIfTI-2 image") from err
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{path}: read as {type(image).__name__}; expected a NIfTI-1 or NIfTI-2 image")
    return image


def volume_shape(image: nib.Nifti1Image, path: Path) -> tuple[int, int, int]:
    """Return the 3-D shape (X, Y, Z), dropping trailing axes of length 1.

    Raises:
        DataError: the image is not 3-D, or has a fourth axis with more than one volume.
    """
    shape = tuple(int(n) for n in image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise DataError(
            f"{path}: shape {shape} is not a 3-D volume; expected (X, Y, Z) or (X, Y, Z, 1)"
        )
    if min(shape) < 1:
        raise DataError(f"{path}: shape {shape} has an empty axis; expected at least one voxel along every axis")
    return shape  # type: ignore[return-value]


def read_array(image: nib.Nifti1Image, path: Path) -> np.ndarray:
    """Read the voxel array (X, Y, Z) in its stored dtype, or float32 where the header scales it.

    Integer and float32 data without scaling come back in their on-disk dtype
    (int16 for CT), so a read needs about one copy of the file's data and never
    a float64 volume. Scaled data is converted to float32 before the slope and
    intercept are applied. A float64 file is converted to float32.

    Raises:
        DataError: the data is truncated or corrupt, or the shape is not 3-D.
    """
    shape = volume_shape(image, path)
    dtype = image.get_data_dtype()
    if dtype.kind not in "iuf":
        raise DataError(f"{path}: voxel type {dtype}; expected integer or real (float) voxels, one value per voxel")
    proxy = image.dataobj
    try:
        raw = np.asanyarray(proxy.get_unscaled())
    except READ_ERRORS as err:
        raise DataError(
            f"{path}: cannot read the voxel data ({type(err).__name__}: {err}); "
            "expected a complete file; the file may be truncated, download or copy it again"
        ) from err
    except MemoryError as err:
        size_gib = np.prod(shape, dtype=np.float64) * dtype.itemsize / 2**30
        raise DataError(
            f"{path}: header shape {shape} needs {size_gib:.3g} GiB, more memory than is free; "
            "expected a CT volume; the header may be corrupt"
        ) from err
    raw = raw.reshape(shape)

    slope = float(proxy.slope) if proxy.slope is not None else 1.0
    inter = float(proxy.inter) if proxy.inter is not None else 0.0
    scaled = np.isfinite(slope) and np.isfinite(inter) and (slope, inter) != (1.0, 0.0) and slope != 0.0
    if not scaled:
        if raw.dtype == np.float64 or raw.dtype.kind not in "iuf":
            return raw.astype(np.float32)
        return raw
    values = raw.astype(np.float32)
    values *= np.float32(slope)
    values += np.float32(inter)
    return values


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths in mm along the three array axes (column norms of the affine)."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))  # type: ignore[return-value]


def nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """Encode a 3-D array and its affine as uncompressed NIfTI-1 bytes (sform and qform code 1, mm units)."""
    image = nib.Nifti1Image(array, affine)
    header = image.header
    header.set_data_dtype(array.dtype)
    header.set_xyzt_units("mm", "sec")
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    return image.to_bytes()


def write_nifti_gz(path: Path, array: np.ndarray, affine: np.ndarray, *, compresslevel: int = 6) -> None:
    """Write ``array`` as a ``.nii.gz`` whose bytes depend only on the array, the affine and zlib.

    The gzip header carries no file name and a modification time of 0, so two
    writes of the same data give identical files with the same zlib build. The
    file is written to a temporary name in the same folder, then renamed.
    """
    path = Path(path)
    payload = nifti_bytes(array, affine)
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=compresslevel, mtime=0) as stream:
        stream.write(payload)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)
