"""Find the cases of a raw dataset folder and detect its layout.

Layouts:

- ``lits``: ``volume-N.nii[.gz]`` and ``segmentation-N.nii[.gz]`` anywhere
  below the folder (the LiTS release splits them over two batch folders);
  case id ``"N"``.
- ``msd``: Medical Segmentation Decathlon Task03_Liver, ``imagesTr/liver_N.nii.gz``,
  ``labelsTr/liver_N.nii.gz`` and ``dataset.json``; case id ``"liver_N"``.
- ``nnunet``: nnU-Net v2 raw, ``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``
  and ``dataset.json``; case id ``"CASE"``.
- ``study-pt``: the study's preprocessed cubes ``img_N.pt`` and ``lab_N.pt``; case id ``"N"``.

Files whose name starts with ``._`` (macOS resource forks in the Decathlon
archive) or ``.`` are ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from repro_lits.errors import DataError

LITS_IMAGE = re.compile(r"^volume-(\d+)\.nii(\.gz)?$")
LITS_LABEL = re.compile(r"^segmentation-(\d+)\.nii(\.gz)?$")
STUDY_IMAGE = re.compile(r"^img_(\d+)\.pt$")
STUDY_LABEL = re.compile(r"^lab_(\d+)\.pt$")
NNUNET_CHANNEL = re.compile(r"^(.+)_(\d{4})$")

LAYOUTS = ("lits", "msd", "nnunet", "study-pt")


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case; ``image`` or ``label`` is ``None`` when that file is missing."""

    case_id: str
    image: Path | None
    label: Path | None


@dataclass(frozen=True)
class DatasetLayout:
    """A detected dataset: its layout name, its cases in natural order, and dataset-level problems.

    ``problems`` lists what concerns no single case (duplicate files, a missing or
    invalid ``dataset.json``, extra image channels). A case with a missing image
    or label is listed with ``None`` in its place and rejected when loaded.
    """

    kind: str
    root: Path
    cases: tuple[CaseFiles, ...]
    problems: tuple[str, ...] = field(default=())

    def case(self, case_id: str) -> CaseFiles:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise KeyError(case_id)


def natural_key(text: str) -> tuple:
    """Sort key that orders ``liver_2`` before ``liver_10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def _visible_files(folder: Path, pattern: str) -> list[Path]:
    return sorted(p for p in folder.glob(pattern) if p.is_file() and not p.name.startswith("."))


def _pair(images: dict[str, Path], labels: dict[str, Path]) -> tuple[CaseFiles, ...]:
    """Pair image and label files by case id; a missing partner is ``None`` and reported when the case is loaded."""
    case_ids = sorted(set(images) | set(labels), key=natural_key)
    return tuple(CaseFiles(case_id, images.get(case_id), labels.get(case_id)) for case_id in case_ids)


def _collect(paths: list[Path], pattern: re.Pattern, problems: list[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in paths:
        match = pattern.match(path.name)
        if not match:
            continue
        case_id = str(int(match.group(1)))
        if case_id in found:
            problems.append(f"{path}: duplicate of {found[case_id]}; expected one file per case {case_id}")
            continue
        found[case_id] = path
    return found


def _detect_lits(root: Path) -> DatasetLayout | None:
    files = sorted(p for p in root.rglob("*.nii*") if p.is_file() and not p.name.startswith("."))
    problems: list[str] = []
    images = _collect(files, LITS_IMAGE, problems)
    labels = _collect(files, LITS_LABEL, problems)
    if not images and not labels:
        return None
    return DatasetLayout("lits", root, _pair(images, labels), tuple(problems))


def _detect_study_pt(root: Path) -> DatasetLayout | None:
    files = _visible_files(root, "*.pt")
    problems: list[str] = []
    images = _collect(files, STUDY_IMAGE, problems)
    labels = _collect(files, STUDY_LABEL, problems)
    if not images and not labels:
        return None
    return DatasetLayout("study-pt", root, _pair(images, labels), tuple(problems))


def _read_dataset_json(root: Path, problems: list[str]) -> dict:
    path = root / "dataset.json"
    if not path.is_file():
        problems.append(f"{path}: file not found; expected the dataset description next to imagesTr/")
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        problems.append(f"{path}: invalid JSON ({err}); expected the dataset description")
        return {}
    if not isinstance(value, dict):
        problems.append(f"{path}: top-level value is not an object; expected the dataset description")
        return {}
    return value


def _strip_ending(name: str, ending: str) -> str | None:
    return name[: -len(ending)] if name.endswith(ending) else None


def _detect_image_folders(root: Path) -> DatasetLayout | None:
    images_dir = root / "imagesTr"
    labels_dir = root / "labelsTr"
    if not images_dir.is_dir():
        return None
    problems: list[str] = []
    description = _read_dataset_json(root, problems)
    if not labels_dir.is_dir():
        problems.append(f"{labels_dir}: folder not found; expected the label files next to imagesTr/")
    ending = description.get("file_ending", ".nii.gz") if isinstance(description.get("file_ending"), str) else ".nii.gz"

    image_files = [p for p in _visible_files(images_dir, "*") if p.name.endswith((".nii", ".nii.gz"))]
    label_files = [p for p in _visible_files(labels_dir, "*") if p.name.endswith((".nii", ".nii.gz"))] if labels_dir.is_dir() else []
    stems = {p: (_strip_ending(p.name, ".nii.gz") or _strip_ending(p.name, ".nii")) for p in image_files}
    nnunet = bool(stems) and all(NNUNET_CHANNEL.match(stem or "") for stem in stems.values())

    images: dict[str, Path] = {}
    if nnunet:
        for path, stem in stems.items():
            match = NNUNET_CHANNEL.match(stem or "")
            case_id, channel = match.group(1), match.group(2)  # type: ignore[union-attr]
            if channel != "0000":
                problems.append(f"{path}: channel {channel}; expected a single CT channel (_0000) per case")
                continue
            images[case_id] = path
        if not any(p.name.endswith(ending) for p in image_files):
            problems.append(f"{images_dir}: no file ends with {ending!r}; expected the file_ending of dataset.json")
    else:
        images = {stem: path for path, stem in stems.items() if stem}
    labels = {(_strip_ending(p.name, ".nii.gz") or _strip_ending(p.name, ".nii")): p for p in label_files}
    return DatasetLayout("nnunet" if nnunet else "msd", root, _pair(images, labels), tuple(problems))  # type: ignore[arg-type]


def detect_layout(root: Path) -> DatasetLayout:
    """Detect the layout of ``root`` and list its cases.

    Raises:
        DataError: ``root`` is not a folder, or contains none of the known layouts.
    """
    root = Path(root)
    if root.is_file():
        raise DataError(f"{root}: is a file; expected a dataset folder (LiTS, Decathlon, nnU-Net v2 or study .pt)")
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; expected a dataset folder (LiTS, Decathlon, nnU-Net v2 or study .pt)")
    for detect in (_detect_image_folders, _detect_study_pt, _detect_lits):
        layout = detect(root)
        if layout is not None:
            if not layout.cases:
                raise DataError(f"{root}: {layout.kind} layout without any case; expected image and label files")
            return layout
    raise DataError(
        f"{root}: no dataset found; expected volume-N.nii[.gz] + segmentation-N.nii[.gz] (LiTS), "
        "imagesTr/ + labelsTr/ + dataset.json (Decathlon or nnU-Net v2), or img_N.pt + lab_N.pt (study cubes)"
    )
