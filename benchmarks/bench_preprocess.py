"""Benchmark the mlf-core preprocessing against a straightforward implementation of the study's algorithm.

Both run on the same LiTS-sized volume (512 x 512 x 400 int16 HU with a
uint8 label, written as uncompressed ``.nii`` like the LiTS release), each in
a fresh Python process, one after the other. The script reports wall time and
peak resident memory of each process, and checks that the two produce
identical image and label cubes.

The straightforward implementation reads with ``get_fdata()`` (float64) and
pads the slice axis with ``np.pad``. It downscales with a float64 block mean,
zero-padding the high end as scikit-image's ``downscale_local_mean`` does. It
finds the liver centre with a Python loop over slabs and crops with zero-fill
at both ends, so that its output is comparable (the study's low-edge bug fixed).

Usage::

    python benchmarks/bench_preprocess.py [--slices 400] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

SLICE_COUNT, FACTOR, CUBE = 512, 2, 128


def write_volume(folder: Path, slices: int) -> tuple[Path, Path]:
    """Write a noisy int16 volume with an ellipsoid liver and a tumor, slab by slab."""
    shape = (512, 512, slices)
    rng = np.random.default_rng(0)
    image = np.empty(shape, dtype=np.int16)
    label = np.zeros(shape, dtype=np.uint8)
    x = (np.arange(512)[:, None] - 180) / 110.0
    y = (np.arange(512)[None, :] - 280) / 90.0
    for z in range(slices):
        image[:, :, z] = rng.normal(40, 30, size=(512, 512)).astype(np.int16)
        zz = (z - slices * 0.6) / (slices * 0.25)
        liver = x * x + y * y + zz * zz < 1.0
        image[:, :, z][liver] += 60
        label[:, :, z][liver] = 1
        tumor = (x - 0.3) ** 2 + (y + 0.2) ** 2 + zz * zz < 0.04
        label[:, :, z][tumor & liver] = 2
    affine = np.diag([0.78, 0.78, 1.0, 1.0])
    paths = folder / "volume-0.nii", folder / "segmentation-0.nii"
    nib.save(nib.Nifti1Image(image, affine), paths[0])
    nib.save(nib.Nifti1Image(label, affine), paths[1])
    return paths


def straightforward(image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(image_path).get_fdata()  # float64
    label = nib.load(label_path).get_fdata()
    z = image.shape[2]
    if z <= SLICE_COUNT:
        before = (SLICE_COUNT - z) // 2
        pads = ((0, 0), (0, 0), (before, SLICE_COUNT - z - before))
        image = np.pad(image, pads, constant_values=image.min())
        label = np.pad(label, pads, constant_values=0)
    else:
        start = (z - SLICE_COUNT) // 2
        image, label = image[:, :, start : start + SLICE_COUNT], label[:, :, start : start + SLICE_COUNT]

    def local_mean(volume):
        volume = np.pad(volume, [(0, (-n) % FACTOR) for n in volume.shape])
        shape = [n // FACTOR for n in volume.shape]
        return volume.reshape(shape[0], FACTOR, shape[1], FACTOR, shape[2], FACTOR).mean(axis=(1, 3, 5))

    image = local_mean(image)
    label = np.clip(np.round(local_mean(label)), 0, 2)
    centre = []
    for axis in range(3):
        slab = [slice(None)] * 3
        present = []
        for i in range(label.shape[axis]):
            slab[axis] = i
            present.append(bool((label[tuple(slab)] >= 1).any()))
        first = present.index(True)
        last = len(present) - 1 - present[::-1].index(True)
        centre.append((first + last) // 2)
    image_cube = np.zeros((CUBE,) * 3)
    label_cube = np.zeros((CUBE,) * 3)
    src, dst = [], []
    for c, n in zip(centre, image.shape):
        start = c - CUBE // 2
        lo, hi = max(start, 0), min(start + CUBE, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    image_cube[tuple(dst)] = image[tuple(src)]
    label_cube[tuple(dst)] = label[tuple(src)]
    return image_cube.astype(np.float32), label_cube.astype(np.uint8)


def repro_lits(image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
    from repro_lits.data.layouts import CaseFiles
    from repro_lits.data.mlf_core import MlfCoreParams, preprocess_mlf_core
    from repro_lits.data.volume import load_case

    volume = load_case(CaseFiles("0", image_path, label_path))
    result = preprocess_mlf_core(volume.image, volume.label, MlfCoreParams(SLICE_COUNT, FACTOR, CUBE))
    return result.image, result.label


def run_one(variant: str, image_path: Path, label_path: Path, out: Path) -> None:
    """Child process: run one variant, save its cubes, print timing and peak memory as JSON."""
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    function = {"straightforward": straightforward, "repro-lits": repro_lits}[variant]
    start = time.perf_counter()
    image, label = function(image_path, label_path)
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    np.savez(out, image=image, label=label)
    print(json.dumps({"variant": variant, "seconds": seconds, "peak_rss_mb": peak_kb / 1024,
                      "peak_above_start_mb": (peak_kb - baseline_kb) / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=400, help="slices of the 512 x 512 test volume")
    parser.add_argument("--work-dir", type=Path, default=None, help="folder for the test volume (default: a temporary one)")
    parser.add_argument("--run", nargs=4, metavar=("VARIANT", "IMAGE", "LABEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        variant, image, label, out = args.run
        run_one(variant, Path(image), Path(label), Path(out))
        return

    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        folder = Path(tmp)
        image_path, label_path = write_volume(folder, args.slices)
        int16_mb = image_path.stat().st_size / 2**20
        results = {}
        for variant in ("straightforward", "repro-lits"):
            out = folder / f"{variant}.npz"
            completed = subprocess.run(
                [sys.executable, __file__, "--run", variant, str(image_path), str(label_path), str(out)],
                check=True, capture_output=True, text=True,
            )
            results[variant] = json.loads(completed.stdout.strip().splitlines()[-1])
        slow = np.load(folder / "straightforward.npz")
        fast = np.load(folder / "repro-lits.npz")
        identical = bool(np.array_equal(slow["image"], fast["image"]) and np.array_equal(slow["label"], fast["label"]))

    base, ours = results["straightforward"], results["repro-lits"]
    print(f"volume: 512 x 512 x {args.slices} int16 (.nii, {int16_mb:.0f} MiB) + uint8 label; "
          f"slice_count {SLICE_COUNT}, downscale {FACTOR}, cube {CUBE}")
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"numpy {np.__version__}, nibabel {nib.__version__}")
    print("| implementation | wall time (s) | peak RSS (MiB) | peak RSS above start (MiB) |")
    print("|---|---|---|---|")
    for name, row in (("straightforward (float64)", base), ("repro-lits mlf-core", ours)):
        print(f"| {name} | {row['seconds']:.2f} | {row['peak_rss_mb']:.0f} | {row['peak_above_start_mb']:.0f} |")
    print(f"speed-up: {base['seconds'] / ours['seconds']:.1f}x; "
          f"memory ratio (above start): {base['peak_above_start_mb'] / max(ours['peak_above_start_mb'], 1):.1f}x; "
          f"identical outputs: {identical}")


if __name__ == "__main__":
    main()
