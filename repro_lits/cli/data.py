"""``repro-lits data``: synthesise, check and prepare CT datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from repro_lits.cli.common import configure_logging, user_errors
from repro_lits.config import DEFAULTS, load_experiment
from repro_lits.data.prepare import prepare_with_settings
from repro_lits.data.synth import SYNTH_INFO_FILE, synthesize_dataset
from repro_lits.data.validate import check_dataset

app = typer.Typer(help="Synthesise, check and prepare CT datasets.", no_args_is_help=True)

#: Exit status of ``check`` when the dataset has problems.
EXIT_INVALID = 1


@app.command("synth")
@user_errors
def synth_command(
    out: Annotated[Path, typer.Option("--out", help="Folder to write volume-N.nii.gz and segmentation-N.nii.gz into.")],
    cases: Annotated[int, typer.Option("--cases", help="Number of phantoms (at least 2).")] = 30,
    seed: Annotated[int, typer.Option("--seed", help="Seed; the same seed and count give byte-identical files.")] = 0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also log debug detail for every case.")] = False,
) -> None:
    """Write synthetic abdominal CT phantoms as a LiTS-layout NIfTI dataset.

    Example: repro-lits data synth --out data/synthetic --cases 30 --seed 0
    """
    configure_logging(verbose)
    info = synthesize_dataset(out, cases=cases, seed=seed)
    tumors = sum(v["tumors"] for v in info["volumes"])
    typer.echo(
        f"wrote {cases} cases ({tumors} tumors) to {out}; SHA-256 of every file in {out / SYNTH_INFO_FILE}"
    )


@app.command("check")
@user_errors
def check_command(
    path: Annotated[Path, typer.Argument(help="Raw dataset folder (LiTS, Decathlon Task03, nnU-Net v2 or study .pt cubes).")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also log debug detail for every case.")] = False,
) -> None:
    """Check every case of a dataset; print one line per problem and exit with status 1 if there is any.

    Example: repro-lits data check /data/LiTS
    """
    configure_logging(verbose)
    report = check_dataset(path)
    for problem in report.problems:
        typer.echo(problem)
    for warning in report.warnings:
        typer.echo(f"warning: {warning}")
    typer.echo(
        f"{report.layout} layout, {report.cases} cases: {len(report.problems)} problems, {len(report.warnings)} warnings",
        err=True,
    )
    if report.problems:
        raise typer.Exit(EXIT_INVALID)


@app.command("prepare")
@user_errors
def prepare_command(
    src: Annotated[Path, typer.Option("--src", help="Raw dataset folder (LiTS, Decathlon Task03, nnU-Net v2 or study .pt cubes).")],
    out: Annotated[Path, typer.Option("--out", help="Cache folder for manifest.json, images/ and labels/.")],
    experiment: Annotated[
        Optional[str], typer.Option("--experiment", help="Take the preprocessing settings from this preset or TOML file.")
    ] = None,
    mode: Annotated[Optional[str], typer.Option("--mode", help="mlf-core (the study's) or spacing.")] = None,
    slice_count: Annotated[Optional[int], typer.Option("--slice-count", help="mlf-core: slices the slice axis is padded or cut to (study: 512).")] = None,
    downscale: Annotated[Optional[int], typer.Option("--downscale", help="mlf-core: block-mean downscale factor (study: 2).")] = None,
    cube_size: Annotated[Optional[int], typer.Option("--cube-size", help="Edge of the cube cut around the liver, in voxels (study: 128).")] = None,
    spacing_mm: Annotated[Optional[float], typer.Option("--spacing-mm", help="spacing: isotropic voxel size in mm.")] = None,
    hu_window: Annotated[
        Optional[tuple[float, float]], typer.Option("--hu-window", help="spacing: HU range LOW HIGH scaled to [0, 1].")
    ] = None,
    test_fraction: Annotated[Optional[float], typer.Option("--test-fraction", help="Share of cases in the test split, for datasets other than LiTS-131.")] = None,
    split_seed: Annotated[Optional[int], typer.Option("--split-seed", help="Seed of the test split for datasets other than LiTS-131.")] = None,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Leave out cases with problems and list them, instead of stopping.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also log debug detail for every case.")] = False,
) -> None:
    """Check and preprocess a dataset into a cache folder; unchanged cases are not recomputed.

    Settings come from --experiment (default: the built-in defaults, which are
    the study's), and each option given overrides one of them.

    Example: repro-lits data prepare --src data/synthetic --out .cache/prepared --experiment cpu
    """
    configure_logging(verbose)
    data = dict(load_experiment(experiment).data if experiment else DEFAULTS["data"])
    options_given = {
        "mode": mode, "slice_count": slice_count, "downscale": downscale, "cube_size": cube_size,
        "spacing_mm": spacing_mm, "hu_window": hu_window, "test_fraction": test_fraction, "split_seed": split_seed,
    }
    data.update({key: value for key, value in options_given.items() if value is not None})
    result = prepare_with_settings(src, out, data, skip_invalid=skip_invalid)
    for case_id, problems in result.skipped.items():
        for problem in problems:
            typer.echo(f"skipped case {case_id}: {problem}")
    split = result.manifest["split"]
    typer.echo(
        f"prepared {len(result.manifest['cases'])} cases into {out} ({len(result.computed)} computed, "
        f"{len(result.reused)} unchanged, {len(result.skipped)} skipped); "
        f"split {len(split['train'])} train / {len(split['test'])} test; fingerprint {result.manifest['fingerprint']}"
    )
