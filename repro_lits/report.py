"""Build the reproducibility report of one experiment: statistics tables, figures, report.md, report.html.

``build_report`` reads the experiment's runs (tables or run records) and computes the
statistics of :mod:`repro_lits.stats` and :mod:`repro_lits.pairs` for the experiment and
for the published study. It writes ``summary.parquet``, ``variance_tests.parquet``,
``pairs.parquet``, ``report.md`` and ``report.html`` into the experiment folder, and the
figures ``iou_boxplots``, ``disagreement`` and ``published_iou_boxplots`` (PNG and SVG)
into the figures folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table as RichTable

from repro_lits import figures
from repro_lits.errors import UserInputError
from repro_lits.pairs import RunPair, compare_pairs, pairs_table
from repro_lits.report_document import render_html, render_markdown
from repro_lits.report_inputs import ExperimentResults, load_experiment_results, load_published_runs
from repro_lits.report_sections import (
    PUBLISHED_LABEL,
    THIS_LABEL,
    compose_report,
    format_mean_std,
    format_percent,
)
from repro_lits.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    SETUP_ORDER,
    BitwiseIdentity,
    ClassSummary,
    SetupComparison,
    bitwise_identity,
    compare_setups,
    finished_runs,
    ordered_setups,
    results_table,
    summarize_runs,
    volume_spread,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportData:
    """Everything the report states about one experiment, computed from its runs.

    ``missing`` lists, one sentence each, what is absent or incomplete (setups without runs,
    single runs, failed runs, unreadable records, missing files).
    """

    results: ExperimentResults
    summaries: list[ClassSummary]
    comparisons: list[SetupComparison]
    identity: list[BitwiseIdentity]
    pairs: list[RunPair]
    spread: pd.DataFrame
    published_summaries: list[ClassSummary]
    published_comparisons: list[SetupComparison]
    missing: list[str]
    resamples: int
    seed: int

    @property
    def setups(self) -> list[str]:
        """Setups with at least one finished run, in the study's order."""
        return ordered_setups(finished_runs(self.results.runs)["setup"].tolist())


@dataclass(frozen=True)
class ReportOutputs:
    """Paths written by :func:`build_report`, and the data behind them."""

    data: ReportData
    markdown: Path
    html: Path
    tables: list[Path]
    figures: list[Path] = field(default_factory=list)


def analyse(
    results: ExperimentResults, *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> ReportData:
    """Compute every statistic of the report for an experiment and for the published study."""
    runs = results.runs
    published = load_published_runs()
    pairs = compare_pairs(runs)
    return ReportData(
        results=results,
        summaries=summarize_runs(runs, resamples=resamples, seed=seed),
        comparisons=compare_setups(runs),
        identity=bitwise_identity(runs),
        pairs=pairs,
        spread=volume_spread(results.volumes, runs),
        published_summaries=summarize_runs(published, resamples=resamples, seed=seed),
        published_comparisons=compare_setups(published),
        missing=describe_missing(results, pairs),
        resamples=resamples,
        seed=seed,
    )


def describe_missing(results: ExperimentResults, pairs: list[RunPair]) -> list[str]:
    """List in sentences what the results lack for a complete three-setup comparison."""
    runs = results.runs
    finished = finished_runs(runs)
    counts = finished["setup"].value_counts()
    missing = []
    for setup in SETUP_ORDER:
        if counts.get(setup, 0) == 0:
            missing.append(f"setup {setup}: no finished runs")
        elif counts[setup] == 1:
            missing.append(f"setup {setup}: only one finished run, so it has no spread, tests or pairs")
    if "status" in runs.columns:
        for row in runs[runs["status"] != "finished"].itertuples():
            error = getattr(row, "error", None)
            reason = f": {error}" if isinstance(error, str) and error else ""
            missing.append(f"run {row.run_id} has status {row.status}{reason}")
    missing.extend(f"unreadable run record skipped: {path}" for path in results.skipped_records)
    missing.extend(f"pair {pair.run_a} and {pair.run_b}: {pair.note}" for pair in pairs if "missing" in pair.note)
    if results.volumes.empty and not finished.empty:
        missing.append("no per-volume results, so the per-volume spread is empty")
    return missing


def write_tables(data: ReportData) -> list[Path]:
    """Write summary.parquet, variance_tests.parquet and pairs.parquet into the experiment folder.

    The summary and test tables contain this experiment's rows and the published study's rows,
    distinguished by the ``source`` column.
    """
    folder = data.results.folder
    summary = pd.concat(
        [
            results_table(data.summaries).assign(source=THIS_LABEL),
            results_table(data.published_summaries).assign(source=PUBLISHED_LABEL),
        ],
        ignore_index=True,
    )
    tests = pd.concat(
        [
            results_table(data.comparisons).assign(source=THIS_LABEL),
            results_table(data.published_comparisons).assign(source=PUBLISHED_LABEL),
        ],
        ignore_index=True,
    )
    paths = [folder / "summary.parquet", folder / "variance_tests.parquet", folder / "pairs.parquet"]
    for table, path in zip((summary, tests, pairs_table(data.pairs)), paths, strict=True):
        table.to_parquet(path, index=False)
    return paths


def build_report(
    *,
    results_dir: Path,
    experiment: str | None = None,
    figures_dir: Path,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> ReportOutputs:
    """Analyse one experiment's runs and write its tables, figures, report.md and report.html.

    Raises:
        UserInputError: the results folder is missing or empty, the experiment is not found, its
            runs have several config hashes, or the figures folder or report files cannot be written.
    """
    results = load_experiment_results(Path(results_dir), experiment)
    logger.info("reporting experiment %s from %s", results.name, results.source)
    figures_dir = Path(figures_dir)
    try:
        figures_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserInputError(
            f"--figures {figures_dir}: cannot create the folder ({err.strerror}); expected a writable folder path"
        ) from err
    data = analyse(results, resamples=resamples, seed=seed)
    tables = write_tables(data)

    figure_paths = {
        "iou": figures.draw_iou_boxplots(
            results.runs, figures_dir / "iou_boxplots", title=f"Test IoU per setup, experiment {results.name}"
        ),
        "disagreement": figures.draw_disagreement(
            pairs_table(data.pairs), data.setups, figures_dir / "disagreement",
            title=f"Disagreement between runs of the same setup, experiment {results.name}",
        ),
        "published": figures.draw_iou_boxplots(
            load_published_runs(), figures_dir / "published_iou_boxplots",
            title=f"Test IoU per setup, {PUBLISHED_LABEL}",
        ),
    }

    blocks = compose_report(data, {name: paths[0] for name, paths in figure_paths.items()})
    markdown_path = results.folder / "report.md"
    html_path = results.folder / "report.html"
    try:
        markdown_path.write_text(render_markdown(blocks, document_dir=results.folder), encoding="utf-8")
        html_path.write_text(
            render_html(blocks, title=f"Reproducibility report: {results.name}"), encoding="utf-8"
        )
    except OSError as err:
        raise UserInputError(
            f"{err.filename}: cannot write the report ({err.strerror}); expected a writable file path; "
            "remove or rename what is there"
        ) from err
    logger.info("wrote %s and %s", markdown_path, html_path)
    return ReportOutputs(
        data=data, markdown=markdown_path, html=html_path, tables=tables,
        figures=[path for paths in figure_paths.values() for path in paths],
    )


def terminal_table(data: ReportData) -> RichTable:
    """Return a compact rich table: per setup the runs, liver and tumor IoU, bitwise verdict and median churn."""
    table = RichTable(title=f"experiment {data.results.name}")
    for column in ("setup", "runs", "liver IoU", "tumor IoU", "mean IoU", "weight hashes", "bitwise", "median churn"):
        table.add_column(column, justify="left" if column in ("setup", "bitwise") else "right", no_wrap=True)

    summaries = {(s.setup, s.class_name): s for s in data.summaries}
    identity = {result.setup: result for result in data.identity}
    runs = data.results.runs
    for setup in data.setups:
        failed = int((runs["setup"] == setup).sum()) - identity[setup].runs
        runs_text = f"{identity[setup].runs}" + (f" (+{failed} failed)" if failed else "")
        churns = [p.churn for p in data.pairs if p.setup == setup and p.churn is not None]
        verdict = {True: "yes", False: "no", None: "cannot tell"}[identity[setup].reproducible]
        table.add_row(
            setup,
            runs_text,
            format_mean_std(summaries.get((setup, "liver"))),
            format_mean_std(summaries.get((setup, "tumor"))),
            format_mean_std(summaries.get((setup, "mean"))),
            str(identity[setup].distinct_weights),
            verdict,
            format_percent(float(np.median(churns))) if churns else "-",
        )
    return table
