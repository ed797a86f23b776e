"""Synthetic abdominal CT phantoms written as a LiTS-layout NIfTI dataset.

Each case is an int16 volume in Hounsfield units (HU) and a uint8 label
(0 background, 1 liver, 2 tumor), both (X, Y, Z) with a RAS+ affine. Array
axis 0 runs from the patient's right to left, axis 1 from posterior to
anterior and axis 2 from inferior to superior. Case ``i`` of seed ``s`` depends
only on ``(s, i)`` and :class:`PhantomParams`, so a larger dataset of the same
seed starts with the same cases.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from repro_lits.data.nifti import write_nifti_gz
from repro_lits.errors import UserInputError

logger = logging.getLogger(__name__)

#: File written next to the volumes: the generator's arguments and the SHA-256 of every file.
SYNTH_INFO_FILE = "synth.json"

#: Version of the drawing code. Bump it when a change alters the output for the same parameters,
#: so that cached synthetic datasets are written again.
GENERATOR_VERSION = 2

#: Largest number of tumors in one phantom.
MAX_TUMORS = 3

Range = tuple[float, float]


@dataclass(frozen=True)
class PhantomParams:
    """Appearance of the phantoms. Every ``(low, high)`` pair is a uniform range drawn once per case.

    Lengths are in mm and intensities in HU. The defaults give volumes of
    96-128 voxels in-plane at about 2.6-3.4 mm and 52-64 slices at 2.5-3.5 mm,
    so that after the ``cpu`` preset's 2x downscale the liver (about 14-19 cm
    wide) spans 20-32 voxels of a 32^3 cube. The default dataset of the presets
    is 30 cases, 24 MB at gzip level 1, written in about 4 s of CPU time
    (measured on one core of an AMD EPYC).

    Tumors: 0 to 3 per case, large ones of radius 20-35 mm and, beside them in
    some cases, small ones of radius 3-8 mm, all 90-130 HU from the liver.
    NOTE: how hard the tumor class is with these defaults depends on the model
    and its training budget; this module's tests do not measure it.
    """

    # Grid: in-plane matrix size (voxels), slice count and slice spacing (mm).
    matrix_size: tuple[int, int] = (96, 128)
    slice_count: tuple[int, int] = (52, 64)
    slice_spacing: Range = (2.5, 3.5)
    # Body ellipse: lateral semi-axis (mm), AP/lateral ratio, field of view / body width.
    body_semi_axis: Range = (135.0, 170.0)
    body_aspect: Range = (0.68, 0.80)
    field_of_view_margin: Range = (1.08, 1.25)
    subcutaneous_fat: Range = (8.0, 28.0)
    muscle_wall: Range = (7.0, 14.0)
    # Liver: semi-axes (lateral, AP, cranio-caudal) in mm and the left-lobe taper (0: none).
    liver_semi_axes: tuple[Range, Range, Range] = ((70.0, 95.0), (55.0, 78.0), (60.0, 85.0))
    liver_taper: Range = (0.2, 0.45)
    # Amplitude of the smooth boundary irregularity, as a fraction of the radius.
    liver_irregularity: Range = (0.06, 0.14)
    # Large tumors: probabilities of 0, 1, 2 and 3; radius (mm); |contrast| to the liver (HU).
    tumor_count_probabilities: tuple[float, ...] = (0.15, 0.35, 0.30, 0.20)
    tumor_radius: Range = (20.0, 35.0)
    tumor_contrast: Range = (90.0, 130.0)
    # Small tumors added to cases that have a large one: probabilities of 0, 1 and 2; radius (mm).
    small_tumor_count_probabilities: tuple[float, ...] = (0.5, 0.35, 0.15)
    small_tumor_radius: Range = (3.0, 8.0)
    # Probability that a tumor is darker than the liver (hypodense); otherwise hyperdense.
    hypodense_probability: float = 0.7
    # Hepatic vessels: how many tubes, their radius (mm) and |contrast| to the liver (HU).
    vessel_count: tuple[int, int] = (2, 5)
    vessel_radius: Range = (2.0, 4.5)
    vessel_contrast: Range = (20.0, 35.0)
    # Tissue intensities in HU.
    liver_hu: Range = (90.0, 130.0)
    spleen_offset_hu: Range = (-10.0, 20.0)
    muscle_hu: Range = (40.0, 60.0)
    fat_hu: Range = (-120.0, -80.0)
    bowel_hu: Range = (15.0, 45.0)
    kidney_hu: Range = (140.0, 220.0)
    aorta_hu: Range = (120.0, 250.0)
    cortical_bone_hu: Range = (600.0, 1000.0)
    cancellous_bone_hu: Range = (150.0, 300.0)
    # Scanner: in-plane blur (Gaussian sigma, mm) and noise standard deviation (HU).
    blur_sigma: Range = (0.8, 1.8)
    noise_sigma: Range = (5.0, 12.0)
    # gzip level of the written files (1 fastest, 9 smallest).
    compresslevel: int = 1

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))

    def digest(self) -> str:
        """SHA-256 (hex) of the parameters, to tell whether a written dataset used them."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class Phantom:
    """One synthetic case: ``image`` (X, Y, Z) int16 HU, ``label`` (X, Y, Z) uint8, ``affine`` (4, 4) RAS+ mm."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    tumors: int
    info: dict = field(default_factory=dict)


def _uniform(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


class _Grid:
    """Voxel-centre coordinates in mm along each axis, origin at the volume centre."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]):
        self.shape = shape
        self.spacing = spacing
        self.axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]

    def box(self, centre, radius) -> tuple[tuple[slice, ...], list[np.ndarray]]:
        """Return the index slices of the box centre +- radius (mm) and the broadcastable offsets (mm) of its voxels."""
        slices = []
        offsets = []
        for axis, (coords, c, r) in enumerate(zip(self.axes, centre, radius)):
            lo = int(np.searchsorted(coords, c - r))
            hi = int(np.searchsorted(coords, c + r, side="right"))
            slices.append(slice(lo, max(lo, hi)))
            shape = [1, 1, 1]
            shape[axis] = -1
            offsets.append((coords[lo:max(lo, hi)] - np.float32(c)).reshape(shape))
        return tuple(slices), offsets


def _irregular_blob(grid: _Grid, rng, centre, radii, irregularity: float, taper: float = 0.0):
    """Mask of a smooth irregular ellipsoid, as (box slices, bool mask of the box)."""
    reach = [r * (1.0 + 3 * irregularity) for r in radii]
    box, (dx, dy, dz) = grid.box(centre, reach)
    u = dx / np.float32(radii[0])
    v = dy / np.float32(radii[1])
    w = dz / np.float32(radii[2])
    if taper:
        # Thinner towards the patient's left (positive x), like the left liver lobe.
        squeeze = 1.0 - taper * np.clip((u + 1.0) / 2.0, 0.0, 1.0)
        v = v / squeeze
        w = w / squeeze
    radius = np.sqrt(u * u + v * v + w * w)
    boundary = np.ones_like(radius)
    for _ in range(4):
        direction = rng.normal(size=3)
        direction *= rng.uniform(1.5, 3.0) / np.linalg.norm(direction)
        phase = rng.uniform(0, 2 * np.pi)
        boundary = boundary + np.float32(irregularity / 2) * np.cos(
            direction[0] * u + direction[1] * v + direction[2] * w + phase
        )
    return box, radius < boundary


def _body_masks(grid: _Grid, rng, p: PhantomParams, a: float, b: float):
    """Masks (X, Y, Z) of the body, of its inside below the fat layer, and of the abdominal cavity."""
    x = grid.axes[0][:, None, None]
    y = grid.axes[1][None, :, None]
    z_fraction = (grid.axes[2] / max(float(np.abs(grid.axes[2]).max()), 1.0))[None, None, :]
    scale = 1.0 + 0.04 * np.sin(np.pi * z_fraction + rng.uniform(0, np.pi))
    back = np.where(y < 0, np.float32(0.9), np.float32(1.0))  # flatter back
    fat = _uniform(rng, p.subcutaneous_fat)
    wall = _uniform(rng, p.muscle_wall)

    def inside(shrink: float) -> np.ndarray:
        return (x / (scale * (a - shrink))) ** 2 + (y / (scale * back * (b - shrink))) ** 2 < 1.0

    return inside(0.0), inside(fat), inside(fat + wall)


def _disc(grid: _Grid, cx: float, cy: float, radius: float) -> np.ndarray:
    """In-plane disc mask (X, Y, 1) at (cx, cy) mm, the same on every slice."""
    x = grid.axes[0][:, None, None]
    y = grid.axes[1][None, :, None]
    return (x - cx) ** 2 + (y - cy) ** 2 < radius * radius


def _draw_skeleton(image, grid, rng, p, a, b, liver_top):
    spine_y = -b * 0.62
    body_radius = rng.uniform(17.0, 22.0)
    cortical = _uniform(rng, p.cortical_bone_hu)
    image[np.broadcast_to(_disc(grid, 0.0, spine_y, body_radius), image.shape)] = cortical
    image[np.broadcast_to(_disc(grid, 0.0, spine_y, body_radius - 3.0), image.shape)] = _uniform(
        rng, p.cancellous_bone_hu
    )
    image[np.broadcast_to(_disc(grid, 0.0, spine_y - body_radius - 14.0, 12.0), image.shape)] = cortical
    image[np.broadcast_to(_disc(grid, 0.0, spine_y - body_radius - 12.0, 7.0), image.shape)] = 15.0

    # Rib cross-sections along the inner body outline, in the slices above a level 9-13 cm below the liver top.
    rib_slices = grid.axes[2] > liver_top - rng.uniform(90.0, 130.0)
    for angle in np.linspace(0.15 * np.pi, 1.85 * np.pi, int(rng.integers(10, 15))):
        angle += rng.uniform(-0.08, 0.08)
        cx = 0.9 * a * np.cos(angle + np.pi / 2)
        cy = 0.88 * b * np.sin(angle + np.pi / 2)
        if cy < spine_y + 10:
            continue
        rib = _disc(grid, cx, cy, rng.uniform(4.0, 6.5)) & rib_slices[None, None, :]
        image[rib] = cortical


def _draw_organs(image, grid, rng, p, a, b, cavity, liver_hu):
    spine_y = -b * 0.62
    muscle = _uniform(rng, p.muscle_hu)
    for side in (-1.0, 1.0):  # psoas muscles beside the spine
        image[np.broadcast_to(_disc(grid, side * 35.0, spine_y + 5.0, 16.0), image.shape) & cavity] = muscle
    aorta = _disc(grid, rng.uniform(-5.0, 15.0), spine_y + 32.0, rng.uniform(10.0, 13.0))
    image[np.broadcast_to(aorta, image.shape) & cavity] = _uniform(rng, p.aorta_hu)

    z_span = float(grid.axes[2][-1] - grid.axes[2][0])
    kidney_hu = _uniform(rng, p.kidney_hu)
    for side in (-1.0, 1.0):
        centre = (side * a * 0.42, spine_y + 20.0, rng.uniform(-0.3, 0.0) * z_span)
        box, mask = _irregular_blob(grid, rng, centre, (30.0, 22.0, 50.0), 0.05)
        image[box][mask & cavity[box]] = kidney_hu

    spleen_centre = (a * rng.uniform(0.45, 0.6), -b * rng.uniform(0.1, 0.35), rng.uniform(0.05, 0.3) * z_span)
    spleen_radii = (rng.uniform(35.0, 50.0), rng.uniform(28.0, 38.0), rng.uniform(40.0, 60.0))
    box, mask = _irregular_blob(grid, rng, spleen_centre, spleen_radii, 0.1)
    image[box][mask & cavity[box]] = liver_hu + _uniform(rng, p.spleen_offset_hu)

    # Bowel gas pockets in the lower and left abdomen.
    for _ in range(int(rng.integers(3, 9))):
        centre = (a * rng.uniform(-0.3, 0.6), b * rng.uniform(-0.2, 0.6), rng.uniform(-0.5, 0.1) * z_span)
        radii = tuple(rng.uniform(6.0, 18.0, size=3))
        box, mask = _irregular_blob(grid, rng, centre, radii, 0.1)
        image[box][mask & cavity[box]] = rng.uniform(-950.0, -850.0)


def _draw_liver(image, label, grid, rng, small_rng, p, a, b, cavity, liver_hu):
    """Draw the liver, its vessels and tumors; return (liver top z in mm, tumor count)."""
    z_half = float(grid.axes[2][-1])
    radii = tuple(_uniform(rng, r) for r in p.liver_semi_axes)
    cz_low = -z_half + radii[2] * 0.8
    cz_high = z_half - radii[2] * 0.8
    cz = rng.uniform(min(cz_low, cz_high), max(cz_low, cz_high)) if cz_low != cz_high else 0.0
    centre = (-a * rng.uniform(0.22, 0.38), b * rng.uniform(-0.05, 0.2), cz)
    box, blob = _irregular_blob(
        grid, rng, centre, radii, _uniform(rng, p.liver_irregularity), taper=_uniform(rng, p.liver_taper)
    )
    liver = np.zeros(grid.shape, dtype=bool)
    liver[box] = blob
    liver &= cavity
    liver_texture = ndimage.zoom(
        rng.normal(0.0, 6.0, size=tuple(max(2, n // 8) for n in grid.shape)).astype(np.float32),
        [n / max(2, n // 8) for n in grid.shape],
        order=1,
        grid_mode=True,
        mode="nearest",
    )[: grid.shape[0], : grid.shape[1], : grid.shape[2]]
    image[liver] = liver_hu + liver_texture[liver]
    label[liver] = 1

    liver_voxels = np.argwhere(liver)
    if len(liver_voxels) == 0:
        return centre[2] + radii[2], 0
    coordinates = lambda index: tuple(float(grid.axes[k][index[k]]) for k in range(3))  # noqa: E731

    for _ in range(int(rng.integers(p.vessel_count[0], p.vessel_count[1] + 1))):
        start = np.array(coordinates(liver_voxels[rng.integers(len(liver_voxels))]))
        end = np.array(coordinates(liver_voxels[rng.integers(len(liver_voxels))]))
        radius = _uniform(rng, p.vessel_radius)
        half = (end - start) / 2
        box, (dx, dy, dz) = grid.box(tuple(start + half), tuple(np.abs(half) + radius))
        direction = (end - start) / max(float(np.linalg.norm(end - start)), 1e-3)
        along = np.clip(
            (dx + half[0]) * direction[0] + (dy + half[1]) * direction[1] + (dz + half[2]) * direction[2],
            0.0,
            float(np.linalg.norm(end - start)),
        )
        distance2 = (
            (dx + half[0] - along * direction[0]) ** 2
            + (dy + half[1] - along * direction[1]) ** 2
            + (dz + half[2] - along * direction[2]) ** 2
        )
        vessel = (distance2 < radius * radius) & liver[box]
        sign = 1.0 if rng.random() < 0.5 else -1.0
        image[box][vessel] = liver_hu + sign * _uniform(rng, p.vessel_contrast)

    count = int(rng.choice(len(p.tumor_count_probabilities), p=np.asarray(p.tumor_count_probabilities)))
    for _ in range(count):
        centre_t = coordinates(liver_voxels[rng.integers(len(liver_voxels))])
        radius = _uniform(rng, p.tumor_radius)
        stretch = rng.uniform(0.8, 1.2, size=3)
        box, blob = _irregular_blob(grid, rng, centre_t, tuple(radius * stretch), 0.12)
        tumor = blob & liver[box]
        darker = rng.random() < p.hypodense_probability
        contrast = _uniform(rng, p.tumor_contrast) * (-1.0 if darker else 1.0)
        image[box][tumor] = liver_hu + contrast + rng.normal(0.0, 4.0, size=int(tumor.sum()))
        label[box][tumor] = 2

    # Small tumors (a few mm) are drawn from their own random stream, so they leave the
    # large tumors and the rest of the phantom as they were. They join only a case that
    # already has a tumor and never raise its count above the maximum of 3.
    small_count = 0
    if count:
        probabilities = np.asarray(p.small_tumor_count_probabilities)
        small_count = min(int(small_rng.choice(len(probabilities), p=probabilities)), MAX_TUMORS - count)
    for _ in range(small_count):
        centre_t = coordinates(liver_voxels[small_rng.integers(len(liver_voxels))])
        radius = _uniform(small_rng, p.small_tumor_radius)
        box, blob = _irregular_blob(grid, small_rng, centre_t, (radius, radius, radius), 0.1)
        tumor = blob & liver[box]
        darker = small_rng.random() < p.hypodense_probability
        contrast = _uniform(small_rng, p.tumor_contrast) * (-1.0 if darker else 1.0)
        image[box][tumor] = liver_hu + contrast
        label[box][tumor] = 2
    return centre[2] + radii[2], count + small_count


def make_phantom(case_index: int, seed: int, params: PhantomParams | None = None) -> Phantom:
    """Generate one phantom; the result depends only on ``(seed, case_index)`` and ``params``."""
    p = params or PhantomParams()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(case_index)]))

    a = _uniform(rng, p.body_semi_axis)
    b = a * _uniform(rng, p.body_aspect)
    field_of_view = 2.0 * a * _uniform(rng, p.field_of_view_margin)
    matrix = int(rng.integers(p.matrix_size[0], p.matrix_size[1] + 1))
    slices = int(rng.integers(p.slice_count[0], p.slice_count[1] + 1))
    spacing = (field_of_view / matrix, field_of_view / matrix, _uniform(rng, p.slice_spacing))
    grid = _Grid((matrix, matrix, slices), spacing)

    image = np.full(grid.shape, -1000.0, dtype=np.float32)
    label = np.zeros(grid.shape, dtype=np.uint8)
    body, below_fat, cavity = _body_masks(grid, rng, p, a, b)
    image[body] = _uniform(rng, p.fat_hu)
    image[below_fat] = _uniform(rng, p.muscle_hu)

    # Abdominal cavity: bowel loops mixed with mesenteric fat, from coarse noise.
    coarse = rng.normal(size=tuple(max(2, n // 6) for n in grid.shape)).astype(np.float32)
    mixture = ndimage.zoom(coarse, [n / c for n, c in zip(grid.shape, coarse.shape)], order=1, grid_mode=True, mode="nearest")
    mixture = mixture[: grid.shape[0], : grid.shape[1], : grid.shape[2]]
    bowel = _uniform(rng, p.bowel_hu)
    fat = _uniform(rng, p.fat_hu)
    image[cavity] = np.where(mixture[cavity] > 0.4, np.float32(fat), np.float32(bowel))

    liver_hu = _uniform(rng, p.liver_hu)
    _draw_organs(image, grid, rng, p, a, b, cavity, liver_hu)
    small_rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(case_index), 1]))
    liver_top, tumors = _draw_liver(image, label, grid, rng, small_rng, p, a, b, cavity, liver_hu)
    _draw_skeleton(image, grid, rng, p, a, b, liver_top)

    blur_mm = _uniform(rng, p.blur_sigma)
    image = ndimage.gaussian_filter(image, sigma=(blur_mm / spacing[0], blur_mm / spacing[1], 0.4), mode="nearest")
    noise = rng.standard_normal(size=grid.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0.6, 0.6, 0.0))
    noise *= np.float32(_uniform(rng, p.noise_sigma) / max(float(noise.std()), 1e-6))
    image += noise
    hu = np.clip(np.rint(image), -1024, 3071).astype(np.int16)

    affine = np.diag([spacing[0], spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(grid.shape, spacing)]
    info = {"shape": list(grid.shape), "spacing_mm": [round(s, 6) for s in spacing], "tumors": tumors}
    return Phantom(image=hu, label=label, affine=affine, tumors=tumors, info=info)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def synthesize_dataset(
    out: Path, *, cases: int = 30, seed: int = 0, params: PhantomParams | None = None
) -> dict:
    """Write ``cases`` phantoms as ``volume-N.nii.gz`` (int16 HU) and ``segmentation-N.nii.gz`` (uint8) into ``out``.

    Also writes ``synth.json`` with the arguments, the parameters and the
    SHA-256 of every file. The same arguments give byte-identical files (with
    the same zlib build). Returns the content of ``synth.json``.

    Raises:
        UserInputError: ``cases`` is below 2 or ``out`` is a file.
    """
    if cases < 2:
        raise UserInputError(f"--cases {cases}: expected at least 2 cases (one training and one test case)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out}: exists and is not a folder; expected a folder for the dataset")
    if out.is_dir() and any(out.iterdir()) and not (out / SYNTH_INFO_FILE).is_file():
        # Phantoms are named like LiTS volumes, so writing into a real dataset folder would overwrite scans.
        raise UserInputError(
            f"{out}: folder is not empty and has no {SYNTH_INFO_FILE}; expected an empty folder or earlier "
            "synthetic phantoms; choose another --out"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserInputError(f"{out}: cannot create the folder ({err.strerror}); expected a writable path") from err
    params = params or PhantomParams()

    files: dict[str, str] = {}
    summary = []
    for index in range(cases):
        phantom = make_phantom(index, seed, params)
        for name, array in ((f"volume-{index}.nii.gz", phantom.image), (f"segmentation-{index}.nii.gz", phantom.label)):
            write_nifti_gz(out / name, array, phantom.affine, compresslevel=params.compresslevel)
            files[name] = _sha256_file(out / name)
        summary.append({"case": str(index), **phantom.info})
        logger.debug("phantom %d: %s", index, phantom.info)

    info = {
        "generator": "repro-lits synthetic phantoms",
        "generator_version": GENERATOR_VERSION,
        "cases": cases,
        "seed": seed,
        "params": params.to_dict(),
        "params_sha256": params.digest(),
        "volumes": summary,
        "sha256": files,
    }
    tmp = out / f".{SYNTH_INFO_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / SYNTH_INFO_FILE)
    logger.info("wrote %d synthetic cases to %s", cases, out)
    return info


def synthetic_dataset_is_current(folder: Path, *, cases: int, seed: int, params: PhantomParams) -> bool:
    """Check whether ``folder`` contains a complete dataset written with these arguments and parameters."""
    info_path = Path(folder) / SYNTH_INFO_FILE
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    recorded = (info.get("cases"), info.get("seed"), info.get("params_sha256"), info.get("generator_version"))
    if recorded != (cases, seed, params.digest(), GENERATOR_VERSION):
        return False
    return all((Path(folder) / name).is_file() for name in info.get("sha256", {}))


def replace_folder(tmp: Path, final: Path) -> None:
    """Move a finished folder into place, replacing an outdated one."""
    if final.exists():
        stale = final.with_name(f".{final.name}.stale-{os.getpid()}")
        os.replace(final, stale)
        os.replace(tmp, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(tmp, final)
