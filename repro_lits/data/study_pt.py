"""Read the study's preprocessed cubes (``img_N.pt``, ``lab_N.pt``: NumPy arrays saved with ``torch.save``) without running code.

A ``.pt`` file is a pickle, and unpickling can call any importable function.
This reader allows only the four globals that a pickled NumPy array needs:
``numpy`` array reconstruction, ``ndarray``, ``dtype`` and ``_codecs.encode``
(the byte payload of protocol 2). Every other global and every persistent id
(a torch tensor) is rejected before anything is called.
Both the zip container (torch >= 1.6) and the older sequence of pickles are read.
"""

from __future__ import annotations

import codecs
import io
import pickle
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from repro_lits.errors import DataError

#: NumPy's array reconstruction function, as its own pickles reference it.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]

#: (module, name) pairs an array pickle may reference; numpy 2 moved ``numpy.core`` to ``numpy._core``.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}

#: The first pickle of the legacy (pre-zip) torch format is this magic number.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild NumPy arrays; any other global raises ``pickle.UnpicklingError``."""

    def find_class(self, module: str, name: str):
        found = ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed; only NumPy arrays can be read")
        return found

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("the file contains torch tensors or storages; only NumPy arrays can be read")


#: Errors a malformed pickle raises while loading, besides ``pickle.UnpicklingError``.
MALFORMED_PICKLE_ERRORS = (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError)


@contextmanager
def _pickle_errors_as_data_errors(path: Path):
    try:
        yield
    except pickle.UnpicklingError as err:
        raise DataError(f"{path}: rejected: {err}; expected a NumPy array saved with torch.save") from err
    except MALFORMED_PICKLE_ERRORS as err:
        raise DataError(
            f"{path}: unreadable pickle ({type(err).__name__}: {err}); expected a NumPy array saved with torch.save"
        ) from err


def _load_zip_object(data: bytes, path: Path):
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(names) != 1:
            raise DataError(f"{path}: zip without a single data.pkl; expected a torch.save file")
        payload = archive.read(names[0])
    with _pickle_errors_as_data_errors(path):
        return ArrayOnlyUnpickler(io.BytesIO(payload)).load()


def _load_legacy_object(data: bytes, path: Path):
    """Read the legacy format: magic number, protocol version, system info, then the object, as separate pickles."""
    stream = io.BytesIO(data)
    with _pickle_errors_as_data_errors(path):
        magic = ArrayOnlyUnpickler(stream).load()
        if magic != LEGACY_MAGIC:
            raise DataError(
                f"{path}: not a torch.save file (no zip container, wrong magic number); "
                "expected img_N.pt or lab_N.pt from the study"
            )
        ArrayOnlyUnpickler(stream).load()
        ArrayOnlyUnpickler(stream).load()
        return ArrayOnlyUnpickler(stream).load()


def read_study_array(path: Path) -> np.ndarray:
    """Read one NumPy array from a study ``.pt`` file without executing code from the file.

    Returns:
        the stored array with its stored dtype and shape.

    Raises:
        DataError: the file is missing, not a torch.save file, references anything
            besides NumPy array reconstruction, or does not hold one numeric array.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected a study cube (.pt)")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the file ({err.strerror}); expected a readable study cube (.pt)") from err
    if zipfile.is_zipfile(io.BytesIO(data)):
        value = _load_zip_object(data, path)
    else:
        value = _load_legacy_object(data, path)

    if not isinstance(value, np.ndarray):
        raise DataError(f"{path}: contains {type(value).__name__}; expected a NumPy array")
    if value.dtype.kind not in "iuf":
        raise DataError(f"{path}: array dtype {value.dtype}; expected a numeric (integer or float) array")
    return value


def load_study_case(case) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one study case (``img_N.pt``, ``lab_N.pt``).

    Returns:
        image (X, Y, Z) float32 HU and label (X, Y, Z) uint8 0..2, both already
        preprocessed by the study.

    Raises:
        CaseError: listing every problem found in the case.
    """
    from repro_lits.data.volume import CaseError, check_label_values, missing_partner_problem

    problems: list[str] = []
    if case.image is None or case.label is None:
        raise CaseError(case.case_id, [missing_partner_problem(case)])
    arrays = {}
    for role, path in (("image", case.image), ("label", case.label)):
        try:
            value = read_study_array(path)
        except DataError as err:
            problems.append(str(err))
            continue
        if value.ndim != 3:
            problems.append(f"{path}: shape {value.shape}; expected a 3-D cube (X, Y, Z)")
            continue
        arrays[role] = value
    if "image" in arrays and "label" in arrays and arrays["image"].shape != arrays["label"].shape:
        problems.append(
            f"{case.label}: shape {arrays['label'].shape} does not match the image shape {arrays['image'].shape}; "
            "expected equal shapes"
        )
    image = arrays.get("image")
    label = None
    if image is not None:
        image = image.astype(np.float32, copy=False)
        non_finite = int((~np.isfinite(image)).sum())
        if non_finite:
            problems.append(f"{case.image}: {non_finite} NaN or Inf voxels; expected finite HU values")
    if "label" in arrays:
        label = check_label_values(arrays["label"], case.label, problems)
        if label is not None and not (label >= 1).any():
            problems.append(f"{case.label}: no liver voxel (no label >= 1); expected a liver in the cube")
    if problems:
        raise CaseError(case.case_id, problems)
    return image, label  # type: ignore[return-value]
