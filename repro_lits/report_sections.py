"""The text of the reproducibility report: its sections as document blocks, and number formatting.

Written for a reader who did not run the experiment. Every table states what its
numbers are, every test states its null hypothesis, and absent or incomplete
results are named.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from repro_lits.report_document import Block, BulletList, Code, Figure, Heading, Paragraph, Table
from repro_lits.stats import CLASS_NAMES, PAIRWISE_TESTS, ClassSummary, SetupComparison, finished_runs

if TYPE_CHECKING:
    from repro_lits.report import ReportData

#: Label of every published figure, so that a reader cannot mistake it for a result of this experiment.
PUBLISHED_LABEL = "published study (2 GPUs, LiTS, 1201 epochs, batch size 4)"
THIS_LABEL = "this experiment"

#: Shorter form of :data:`PUBLISHED_LABEL` for table cells.
PUBLISHED_CELL = "published (GPU, LiTS, 1201 epochs)"

#: Significance level of the plain-words reading of p-values in the findings. Tables report the p-values unchanged.
ALPHA = 0.05

#: How many test volumes per setup and class the per-volume spread section lists.
TOP_VOLUMES = 5

#: The study's per-class IoU definition, stated when the run records do not carry their own rule.
STUDY_IOU_RULE = (
    "Per test volume and class, IoU = |P ∩ G| / |P ∪ G| with P the argmax prediction; a class whose union "
    "is empty in a volume is skipped, and a class's test IoU is the mean over the volumes where it was not "
    "skipped. The mean IoU is the mean of the three class IoUs."
)

_TEST_NAMES = {
    "brown-forsythe": "Brown-Forsythe",
    "fligner-killeen": "Fligner-Killeen",
    "kruskal-wallis": "Kruskal-Wallis",
}


def compose_report(data: ReportData, figure_paths: dict[str, Path]) -> list[Block]:
    """Assemble the report's sections in reading order; ``figure_paths`` maps iou, disagreement, published to PNGs."""
    blocks: list[Block] = [Heading(1, f"Reproducibility report: experiment {data.results.name}")]
    blocks += _introduction(data)
    blocks += _missing_section(data)
    blocks += _findings(data)
    blocks += _experiment_section(data)
    blocks += _environment_section(data)
    blocks += _iou_section(data, figure_paths["iou"])
    blocks += _tests_section(data.comparisons)
    blocks += _identity_section(data)
    blocks += _disagreement_section(data, figure_paths["disagreement"])
    blocks += _volume_section(data)
    blocks += _published_section(data, figure_paths["published"])
    blocks += _rules_section(data)
    return blocks


# --- Formatting -------------------------------------------------------------------------------


def is_missing(value: object) -> bool:
    """True for ``None`` and float NaN."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_number(value: float | None, digits: int = 4) -> str:
    """Format a float with fixed decimals; "-" for a missing value."""
    return "-" if is_missing(value) else f"{value:.{digits}f}"


def format_pvalue(value: float | None) -> str:
    """Format a p-value with four decimals, or in scientific notation below 0.0001; "-" when not defined."""
    if is_missing(value):
        return "-"
    return f"{value:.1e}" if value < 1e-4 else f"{value:.4f}"


def format_percent(value: float | None) -> str:
    """Format a fraction as a percentage with three significant digits; "-" for a missing value."""
    return "-" if is_missing(value) else f"{100.0 * value:.3g} %"


def plural(count: int, noun: str) -> str:
    """Return the count with the noun in the matching number, such as ``"1 run"`` or ``"3 runs"``."""
    return f"{count} {noun if count == 1 else noun + 's'}"


def format_mean_std(summary: ClassSummary | None) -> str:
    """Format ``mean ± std`` with four decimals; "-" for no values and "(n = 1)" for a single run."""
    if summary is None or summary.mean is None:
        return "-"
    if summary.std is None:
        return f"{summary.mean:.4f} (n = 1)"
    return f"{summary.mean:.4f} ± {summary.std:.4f}"


# --- Sections ---------------------------------------------------------------------------------


def _introduction(data: ReportData) -> list[Block]:
    runs = data.results.runs
    finished = finished_runs(runs)
    created = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        Paragraph(
            f"This report compares the test IoU of {len(finished)} finished training runs "
            f"({len(runs)} recorded) of the experiment `{data.results.name}` across the setups "
            "random (nothing seeded), seed (every generator seeded) and deterministic (seeded, and "
            "PyTorch restricted to deterministic algorithms). It asks how much the IoU varies in "
            "each setup, whether the setups differ, which setups reproduce bit for bit, and how "
            "different the trained models are even where their IoU looks alike."
        ),
        Paragraph(f"Read from {data.results.source} in `{data.results.folder}`; written {created}."),
    ]


def _missing_section(data: ReportData) -> list[Block]:
    if not data.missing:
        return []
    return [
        Heading(2, "Missing or incomplete results"),
        Paragraph("The statistics below cover only what was recorded. Missing:"),
        BulletList(tuple(data.missing)),
    ]


def _findings(data: ReportData) -> list[Block]:
    summaries = {(s.setup, s.class_name): s for s in data.summaries}
    items = []
    for result in data.identity:
        liver = format_mean_std(summaries.get((result.setup, "liver")))
        tumor = format_mean_std(summaries.get((result.setup, "tumor")))
        items.append(
            f"**{result.setup}** ({plural(result.runs, 'run')}): liver IoU {liver}, tumor IoU {tumor} (mean ± std); "
            f"{result.verdict}."
        )
    for comparison in data.comparisons:
        if comparison.scope == "overall" and comparison.test in PAIRWISE_TESTS and comparison.class_name in (
            "liver", "tumor"
        ):
            items.append(f"{comparison.class_name}: {_read_test(comparison)}")
    return [Heading(2, "Findings"), BulletList(tuple(items))]


def _read_test(comparison: SetupComparison) -> str:
    name = _TEST_NAMES[comparison.test]
    if comparison.pvalue is None:
        return f"{name} test {comparison.note}."
    verdict = "evidence" if comparison.pvalue < ALPHA else "no evidence"
    return (
        f"{name} test across {', '.join(comparison.setups)}: p = {format_pvalue(comparison.pvalue)}, "
        f"{verdict} at the {ALPHA:g} level that the variances differ."
    )


def _experiment_section(data: ReportData) -> list[Block]:
    runs = data.results.runs
    blocks: list[Block] = [Heading(2, "Experiment and config")]
    facts = [f"experiment: `{data.results.name}`"]
    for column, label in (("config_hash", "config hash"), ("dataset_fingerprint", "dataset fingerprint")):
        if column in runs.columns:
            values = sorted({str(v) for v in runs[column].dropna()})
            facts.append(f"{label}: " + (", ".join(f"`{v}`" for v in values) or "-"))
    if "epochs" in runs.columns and not runs.empty:
        facts.append("epochs recorded per run: " + ", ".join(str(v) for v in sorted(set(runs["epochs"].dropna()))))
    blocks.append(BulletList(tuple(facts)))
    if data.results.config is not None:
        blocks.append(Paragraph("The resolved config of the runs (every key, after defaults and overrides):"))
        blocks.append(Code(json.dumps(data.results.config, indent=2, sort_keys=True), "json",
                           summary="Resolved config (JSON)"))
    else:
        blocks.append(Paragraph("No run record could be read, so the config is not shown."))
    return blocks


def _environment_section(data: ReportData) -> list[Block]:
    runs = data.results.runs
    rows = []
    for column, label in _ENVIRONMENT_COLUMNS:
        if column in runs.columns:
            values = sorted({str(v) for v in runs[column].dropna()})
            rows.append((label, ", ".join(values) or "-"))
    blocks: list[Block] = [
        Heading(2, "Environment"),
        Paragraph("Values that differ between runs are all listed, so one value per row means every run agreed."),
        Table(("property", "values over all runs"), tuple(rows)),
    ]
    environment = data.results.environment
    if environment is not None:
        facts = tuple((key, value) for key, value in flatten_scalars(environment) if key not in _LONG_FACTS)
        blocks.append(Table(("fact", "value"), facts, caption="Environment recorded by the first finished run"))
        blocks.append(Code(json.dumps(environment, indent=2, sort_keys=True, default=str), "json",
                           summary="Full environment record (JSON)"))
    return blocks


_ENVIRONMENT_COLUMNS = (
    ("device", "device"), ("torch_version", "PyTorch"), ("threads", "intra-op threads"),
    ("interop_threads", "inter-op threads"), ("hostname", "host"), ("package_version", "repro-lits"),
    ("git_commit", "git commit"),
)

#: Environment facts too long for the facts table; they stay in the folded JSON.
_LONG_FACTS = ("torch.config",)


def flatten_scalars(values: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Flatten nested dicts to ``("a.b", "value")`` pairs of their scalar leaves; lists and empty dicts are left out."""
    pairs = []
    for key in sorted(values):
        value = values[key]
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            pairs.extend(flatten_scalars(value, prefix=f"{name}."))
        elif not isinstance(value, (list, tuple)):
            pairs.append((name, "-" if value is None else str(value)))
    return pairs


def _summary_rows(summaries: Sequence[ClassSummary]) -> tuple[tuple[str, ...], ...]:
    rows = []
    for s in summaries:
        ci = "-" if s.std_ci_low is None else f"{s.std_ci_low:.4f} to {s.std_ci_high:.4f}"
        rows.append((
            s.setup, s.class_name, str(s.n), format_number(s.mean), format_number(s.std), ci,
            format_number(s.minimum), format_number(s.maximum), format_number(s.range), format_number(s.median),
            format_number(s.iqr), format_number(s.cv, 3), s.note or "",
        ))
    return tuple(rows)


_SUMMARY_COLUMNS = (
    "setup", "class", "n", "mean", "std", "95 % CI of std", "min", "max", "range", "median", "IQR", "CV", "note",
)


def _iou_section(data: ReportData, figure_path: Path) -> list[Block]:
    return [
        Heading(2, "Test IoU per setup"),
        Paragraph(
            "Statistics of the test IoU over the finished runs of each setup. std is the sample standard "
            "deviation (ddof 1); CV = std / mean; IQR = 75th minus 25th percentile (linear interpolation). "
            f"The 95 % confidence interval of std is a percentile bootstrap with {data.resamples} resamples "
            f"(NumPy default_rng, seed {data.seed}); with ten runs it is wide and tends to sit low."
        ),
        Table(_SUMMARY_COLUMNS, _summary_rows(data.summaries)),
        Figure(
            figure_path,
            "Test IoU per setup and class; each point is one run, drawn without jitter so that identical "
            "runs overlap as one point. Right: the tumor class on its own scale.",
        ),
    ]


def _tests_table(comparisons: Sequence[SetupComparison], *, scope: str, caption: str) -> Table:
    """Tabulate the tests of one scope; pairwise tables add the Holm-adjusted p-value."""
    selected = [c for c in comparisons if c.scope == scope]
    columns = ["test", "class", "setups", "statistic", "p-value"]
    if scope == "pairwise":
        columns.append("Holm p-value")
    columns.append("note")
    rows = []
    for c in selected:
        row = [_TEST_NAMES[c.test], c.class_name, " vs ".join(c.setups) or "-", format_number(c.statistic, 3),
               format_pvalue(c.pvalue)]
        if scope == "pairwise":
            row.append(format_pvalue(c.pvalue_holm))
        row.append(c.note)
        rows.append(tuple(row))
    return Table(tuple(columns), tuple(rows), caption=caption)


def _tests_section(comparisons: Sequence[SetupComparison]) -> list[Block]:
    return [
        Heading(2, "Do the setups differ?"),
        Paragraph(
            "Brown-Forsythe (Levene's test centred on the median) and Fligner-Killeen test the null hypothesis "
            "that all compared setups have the same IoU variance; both stay valid for the skewed, bounded "
            "distributions of IoU. Kruskal-Wallis tests the null hypothesis that the setups share the same "
            "median IoU. Overall tests use every setup with at least two runs. Pairwise p-values are "
            "Holm-adjusted within each test and class. A test is not defined when its statistic would "
            "divide by zero, as when every compared setup's runs are identical."
        ),
        _tests_table(comparisons, scope="overall", caption="Across all setups with at least two runs"),
        _tests_table(comparisons, scope="pairwise", caption="Pairs of setups (Holm-adjusted per test and class)"),
    ]


def _identity_section(data: ReportData) -> list[Block]:
    rows = tuple(
        (r.setup, str(r.runs), str(r.distinct_weights), str(r.distinct_predictions),
         str(r.largest_identical_group), r.verdict)
        for r in data.identity
    )
    return [
        Heading(2, "Bitwise identity"),
        Paragraph(
            "Runs are compared by the SHA-256 of their final weights file and of their test predictions. "
            "A setup is bitwise reproducible when at least two runs finished and all share both hashes."
        ),
        Table(("setup", "runs", "distinct weight hashes", "distinct prediction hashes",
               "largest identical group", "verdict"), rows),
    ]


def _disagreement_section(data: ReportData, figure_path: Path) -> list[Block]:
    rows = []
    for setup in data.setups:
        pairs = [p for p in data.pairs if p.setup == setup]
        if not pairs:
            rows.append((setup, "0", "-", "-", "-", "-", "no pairs: fewer than two finished runs"))
            continue
        identical = sum(p.same_weights_hash and p.same_predictions_hash for p in pairs)
        rows.append((
            setup, str(len(pairs)), str(identical),
            _range_text([p.churn for p in pairs], format_percent),
            _range_text([p.liver_churn for p in pairs], format_percent),
            _range_text([p.weight_distance for p in pairs], lambda v: f"{v:.3g}"),
            "",
        ))
    return [
        Heading(2, "Disagreement between trained models"),
        Paragraph(
            "For every pair of finished runs within a setup: the prediction churn is the fraction of all test "
            "voxels whose predicted class differs between the two runs; the liver churn is the same fraction "
            "inside the union of both runs' liver-or-tumor predictions (label >= 1). The weight distance is "
            "||a - b|| / ((||a|| + ||b||) / 2) over all floating-point tensors of the final weights, flattened "
            "in name order: 0 for identical weights. Cells show the median and, in brackets, min to max."
        ),
        Table(("setup", "pairs", "identical pairs", "churn", "liver churn", "weight distance", "note"),
              tuple(rows)),
        Figure(figure_path, "Prediction churn (left) and relative weight distance (right) of each pair of runs."),
    ]


def _range_text(values: Sequence[float | None], formatter) -> str:
    present = [v for v in values if not is_missing(v)]
    if not present:
        return "-"
    return f"{formatter(float(np.median(present)))} ({formatter(min(present))} to {formatter(max(present))})"


def _volume_section(data: ReportData) -> list[Block]:
    spread = data.spread
    blocks: list[Block] = [
        Heading(2, "Test volumes that vary most"),
        Paragraph(
            f"Per setup and class, the {TOP_VOLUMES} test volumes whose IoU has the largest standard deviation "
            "across runs (ddof 1). Volumes without the class in both ground truth and prediction are left out."
        ),
    ]
    if spread.empty:
        blocks.append(Paragraph("No per-volume results were recorded."))
        return blocks
    rows = []
    for (setup, class_name), group in spread.groupby(["setup", "class_name"], sort=False):
        if class_name not in ("liver", "tumor"):
            continue
        for row in group.head(TOP_VOLUMES).itertuples():
            rows.append((setup, class_name, str(row.case), str(row.n), format_number(row.mean),
                         format_number(row.std), format_number(row.range)))
    blocks.append(Table(("setup", "class", "case", "runs", "mean IoU", "std", "range"), tuple(rows)))
    return blocks


def _published_section(data: ReportData, figure_path: Path) -> list[Block]:
    ours = {(s.setup, s.class_name): s for s in data.summaries}
    published = {(s.setup, s.class_name): s for s in data.published_summaries}
    setups = list(dict.fromkeys([s.setup for s in data.published_summaries] + data.setups))
    rows = []
    for setup in setups:
        for class_name in (*CLASS_NAMES, "mean"):
            for label, table in ((THIS_LABEL, ours), (PUBLISHED_CELL, published)):
                s = table.get((setup, class_name))
                if s is None:
                    rows.append((setup, class_name, label, "0", "-", "-", "-", "-", "no runs"))
                    continue
                rows.append((setup, class_name, label, str(s.n), format_number(s.mean), format_number(s.std),
                             format_number(s.minimum), format_number(s.maximum), s.note))
    return [
        Heading(2, "Comparison with the published study"),
        Paragraph(
            f"Rows labelled '{PUBLISHED_CELL}' are not results of this experiment. They are the per-run "
            "test IoUs published by the mlf-core liver-ct-segmentation study (2021), which trained the same "
            "U-Net on the LiTS data with two GPUs (DistributedDataParallel) for 1201 epochs, and are "
            "computed here with the same statistics. Differences in data, hardware, epochs and batch size "
            "mean that only the pattern across setups is comparable, not the IoU values."
        ),
        Table(("setup", "class", "source", "n", "mean", "std", "min", "max", "note"), tuple(rows)),
        Heading(3, "Tests on the published runs"),
        _tests_table(data.published_comparisons, scope="overall", caption=f"Across all setups, {PUBLISHED_LABEL}"),
        Figure(figure_path, f"Test IoU per setup and class, {PUBLISHED_LABEL}."),
    ]


def _rules_section(data: ReportData) -> list[Block]:
    rule = data.results.empty_class_rule
    items = [
        f"IoU rule recorded by the runs: {rule.rstrip('.')}." if rule else f"IoU rule of the study: {STUDY_IOU_RULE}",
        "A run whose IoU for a class is missing (the class was skipped in every test volume) is left out of "
        "that class's statistics and counted as missing in the note column.",
        "A setup with one finished run has no standard deviation, tests or pairs ('too few runs').",
        "A setup whose runs are all identical has a standard deviation of exactly 0 and a bootstrap "
        "interval of 0 to 0; tests that would divide by that zero are reported as not defined.",
        "Only runs with status finished enter the statistics; failed runs are listed under missing results.",
    ]
    return [Heading(2, "Rules for empty classes and incomplete results"), BulletList(tuple(items))]
