"""``repro-lits verify`` and ``repro-lits env``: replay a recorded run, and describe this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from repro_lits.cli.common import configure_logging, user_errors
from repro_lits.envcheck import EnvironmentDifference, check_deterministic_setup
from repro_lits.verify import EXIT_REPLAY_FAILED, ReplayError, VerifyResult, verify_run


@user_errors
def verify(
    record: Annotated[str, typer.Argument(
        help="Path to a run's record.json or run folder, or a run id such as deterministic-000 under RESULTS/*/runs/.",
        metavar="RECORD_OR_RUN_ID",
        show_default=False,
    )],
    results: Annotated[Path, typer.Option(
        "--results", help="Results folder to look run ids up in; its .cache subfolder contains the prepared datasets.",
    )] = Path("results"),
    data: Annotated[Path | None, typer.Option(
        "--data", help="Raw dataset folder, or prepared dataset folder (with manifest.json), to replay on. "
                       "Default: the record's data source; synthetic data is generated again.",
    )] = None,
    epochs: Annotated[int | None, typer.Option(
        "--epochs", help="Replay only the first K epochs and compare the weight hash the record stores for epoch K.",
        min=1,
    )] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="PyTorch intra-op threads of the replay. Default: the recorded count.", min=1,
    )] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", help="Keep the replayed run in OUTPUT/<run_id>. Default: a temporary folder, deleted afterwards.",
    )] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    """Replay a recorded run from its record and check that it gives the same weights and predictions.

    Exit status: 0 identical, 1 different, 2 invalid input (or a dataset other
    than the run's), 3 the replay itself failed.

    Example: repro-lits verify results/smoke/runs/deterministic-000
    """
    configure_logging(verbose)
    try:
        result = verify_run(record, results_dir=results, data_dir=data, epochs=epochs, threads=threads,
                            output_dir=output, progress=None if as_json else _print_progress)
    except ReplayError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_REPLAY_FAILED) from None

    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(format_result(result))
    raise typer.Exit(result.exit_code)


@user_errors
def env(
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the checks and the fingerprint as one JSON object.",
    )] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    """Print the environment fingerprint that runs record, and whether this machine can run the deterministic setup.

    The check applies the deterministic setup in a fresh process and trains a
    tiny U-Net twice there (a few seconds). Exit status: 0 ready, 1 not ready.
    """
    configure_logging(verbose)
    report = check_deterministic_setup()
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        lines = [f"deterministic setup: {'ready' if report.ready else 'NOT ready'} on {report.device}"]
        labels = {True: "ok  ", False: "FAIL", None: "n/a "}
        lines += [f"  {labels[check.ok]} {check.name}: {check.detail}" for check in report.checks]
        lines.append("environment fingerprint (as a run records it, after the deterministic setup):")
        lines += _format_facts(report.environment)
        typer.echo("\n".join(lines))
    raise typer.Exit(0 if report.ready else 1)


def _print_progress(event: dict[str, Any]) -> None:
    if event.get("event") == "epoch":
        typer.echo(f"replay epoch {event['epoch']}/{event['epochs']}: loss {event['loss']:.6g}", err=True)


def format_result(result: VerifyResult) -> str:
    """Return the verification result as text: hashes, verdict and, when different, the diagnosis."""
    lines = [
        f"run {result.run_id} (setup {result.setup}, recorded on {result.device_recorded}): {result.record_path}",
        f"replayed {result.epochs_compared} of {result.epochs_recorded} epochs on {result.device_replayed}",
        _hash_line("weights", result.weights_recorded, result.weights_replayed),
    ]
    if result.predictions_recorded is not None:
        lines.append(_hash_line("predictions", result.predictions_recorded, result.predictions_replayed))
    lines.append(f"verdict: {result.verdict}")

    if not result.identical:
        lines += _format_diagnosis(result)
    elif result.environment:
        lines.append("environment differences that did not change the result:")
        lines += _format_causes(result.environment)
    if result.notes:
        lines.append("notes:")
        lines += [f"  - {note}" for note in result.notes]
    if result.replay_dir is not None:
        lines.append(f"replayed run kept in {result.replay_dir}")
    return "\n".join(lines)


def _hash_line(label: str, recorded: str | None, replayed: str | None) -> str:
    state = "equal" if recorded == replayed else "DIFFERENT"
    return f"{label + ':':13} recorded {str(recorded)[:16]}  replayed {str(replayed)[:16]}  {state}"


def _format_diagnosis(result: VerifyResult) -> list[str]:
    lines = []
    if result.first_differing_epoch is not None:
        lines.append(f"first epoch whose weight hash differs: {result.first_differing_epoch}")
    tensor = result.first_differing_tensor
    if tensor is not None:
        shape = "x".join(str(n) for n in tensor.shape)
        if tensor.max_abs_difference is None:
            lines.append(f"first differing tensor: {tensor.name} ({shape}): "
                         "missing on one side, or another shape or dtype")
        else:
            lines.append(f"first differing tensor: {tensor.name} ({shape}), "
                         f"max abs difference {tensor.max_abs_difference:.6g}")
    elif result.tensors_compared:
        lines.append("first differing tensor: none, every tensor is bitwise equal")
    if result.relative_l2 is not None:
        lines.append(f"relative L2 distance of the weights: {result.relative_l2:.6g}")
    if result.differing_voxels is not None and result.predictions_recorded != result.predictions_replayed:
        differing = {case: count for case, count in result.differing_voxels.items() if count != 0}
        total = sum(count for count in differing.values() if count is not None)
        cases = len(result.differing_voxels)
        lines.append(f"predictions: {total} voxels differ, in {len(differing)} of {cases} test cases")
    lines += _format_iou(result)

    if result.environment:
        lines.append("environment differences, most likely cause first (ranking rule: repro_lits.envcheck):")
        lines += _format_causes(result.environment)
    else:
        lines.append("environment differences: none recorded")
    return lines


def _format_causes(differences: list[EnvironmentDifference]) -> list[str]:
    """Group ranked differences by cause, keeping the rank order: the cause and its reason, then its keys."""
    causes: dict[str, list[EnvironmentDifference]] = {}
    for difference in differences:
        causes.setdefault(difference.cause, []).append(difference)
    lines = []
    for rank, (cause, members) in enumerate(causes.items(), start=1):
        lines.append(f"  {rank}. {cause} (score {members[0].score}): {members[0].reason}")
        lines += [f"       {difference.describe()}" for difference in members]
    return lines


def _format_iou(result: VerifyResult) -> list[str]:
    classes = ("background", "liver", "tumor", "mean")
    lines = ["test IoU               " + "".join(f"{name:>12}" for name in classes)]
    rows = (
        (f"recorded (epoch {result.epochs_recorded})", result.test_iou_recorded),
        (f"replayed (epoch {result.epochs_compared})", result.test_iou_replayed),
    )
    for label, iou in rows:
        values = iou or {}
        lines.append(f"  {label:21}" + "".join(f"{_number(values.get(name)):>12}" for name in classes))
    return lines


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.6f}"


def _format_facts(environment: dict[str, Any], prefix: str = "") -> list[str]:
    """Flatten the fingerprint to ``key: value`` lines; lists of long strings get one line per item."""
    lines = []
    for key, value in environment.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            lines += _format_facts(value, prefix=f"{name}.")
        elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
            for index, item in enumerate(value):
                lines += _format_facts(item if isinstance(item, dict) else {"": item}, prefix=f"{name}.{index}.")
        elif isinstance(value, list) and any(" " in str(item) for item in value):
            lines.append(f"  {name}:")
            lines += [f"    {item}" for item in value]
        elif isinstance(value, list):
            lines.append(f"  {name}: {' '.join(str(item) for item in value)}")
        else:
            lines.append(f"  {name}: {value}")
    return lines
