"""The report: tables, figures and documents written from a small real results folder."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rich.console import Console

from repro_lits.report import build_report, terminal_table
from repro_lits.report_sections import PUBLISHED_LABEL


@pytest.fixture(scope="module")
def report(shared_study_results):
    figures = shared_study_results.parent / "figures"
    return build_report(results_dir=shared_study_results, figures_dir=figures, resamples=500)


@pytest.fixture(scope="module")
def results_dir(report, shared_study_results):
    """The shared results folder after the report was built into it."""
    return shared_study_results


def test_report_writes_every_file(report, results_dir):
    folder = results_dir / "tiny"
    for name in ("summary.parquet", "variance_tests.parquet", "pairs.parquet", "report.md", "report.html"):
        assert (folder / name).is_file(), name
    for stem in ("iou_boxplots", "disagreement", "published_iou_boxplots"):
        assert (results_dir.parent / "figures" / f"{stem}.png").is_file(), stem
        svg = (results_dir.parent / "figures" / f"{stem}.svg").read_text(encoding="utf-8")
        assert "<svg" in svg


def test_boxplot_png_resolution(report, results_dir):
    with Image.open(results_dir.parent / "figures" / "iou_boxplots.png") as image:
        dpi = image.info["dpi"]
        width, height = image.size
    assert dpi[0] == pytest.approx(200, abs=0.5)
    assert width >= 2000
    assert height >= 900


def test_summary_table_values(report, results_dir):
    summary = pd.read_parquet(results_dir / "tiny" / "summary.parquet")
    ours = summary[summary["source"] == "this experiment"].set_index(["setup", "class_name"])
    assert ours.loc[("random", "liver"), "std"] == pytest.approx(np.std([0.80, 0.82, 0.86], ddof=1))
    assert ours.loc[("deterministic", "liver"), "std"] == 0.0
    assert ours.loc[("seed", "liver"), "n"] == 2
    published = summary[summary["source"] == PUBLISHED_LABEL]
    assert set(published["setup"]) == {"random", "seed", "deterministic"}


def test_variance_tests_table(report, results_dir):
    tests = pd.read_parquet(results_dir / "tiny" / "variance_tests.parquet")
    ours = tests[tests["source"] == "this experiment"]
    overall = ours[(ours["scope"] == "overall") & (ours["class_name"] == "liver")]
    assert set(overall["test"]) == {"brown-forsythe", "fligner-killeen", "kruskal-wallis"}
    assert (overall["setups"] == "random vs seed vs deterministic").all()
    pairwise = ours[(ours["scope"] == "pairwise") & (ours["class_name"] == "liver")]
    assert len(pairwise) == 6


def test_verdicts_agree_with_hashes(report, results_dir):
    runs = report.data.results.runs
    markdown = (results_dir / "tiny" / "report.md").read_text(encoding="utf-8")
    for setup, group in runs.groupby("setup"):
        identical = group["weights_sha256"].nunique() == 1 and group["predictions_sha256"].nunique() == 1
        expected = "bitwise reproducible: yes" if identical else "bitwise reproducible: no"
        verdict = next(r.verdict for r in report.data.identity if r.setup == setup)
        assert verdict.startswith(expected), setup
        assert verdict in markdown
    assert {r.setup: r.reproducible for r in report.data.identity} == {
        "random": False, "seed": False, "deterministic": True,
    }


def test_markdown_sections_and_links(report, results_dir):
    markdown = (results_dir / "tiny" / "report.md").read_text(encoding="utf-8")
    for heading in ("## Findings", "## Experiment and config", "## Environment", "## Test IoU per setup",
                    "## Do the setups differ?", "## Bitwise identity", "## Disagreement between trained models",
                    "## Test volumes that vary most", "## Comparison with the published study",
                    "## Rules for empty classes and incomplete results"):
        assert heading in markdown, heading
    assert "## Missing or incomplete results" not in markdown
    assert "](../../figures/iou_boxplots.png)" in markdown
    assert "a class absent from both prediction and ground truth" in markdown
    assert "nan" not in markdown.lower().replace("mean", "")


def test_html_is_self_contained(report, results_dir):
    html = (results_dir / "tiny" / "report.html").read_text(encoding="utf-8")
    assert html.count('src="data:image/png;base64,') == 3
    assert 'src="../' not in html
    assert "<table>" in html


def test_partial_results_named(study_results, tmp_path, builder):
    shutil.rmtree(study_results / "tiny" / "runs" / "random-000")
    shutil.rmtree(study_results / "tiny" / "runs" / "random-001")
    shutil.rmtree(study_results / "tiny" / "runs" / "random-002")
    shutil.rmtree(study_results / "tiny" / "runs" / "seed-001")
    builder.write_run(study_results / "tiny", setup="seed", run_index=5, iou=builder.iou(0.9, 0.1, None),
                      predictions=builder.base_predictions(), weights=builder.base_weights(), status="failed")
    outputs = build_report(results_dir=study_results, figures_dir=tmp_path / "figures", resamples=200)

    assert outputs.data.missing[:2] == [
        "setup random: no finished runs",
        "setup seed: only one finished run, so it has no spread, tests or pairs",
    ]
    assert "run seed-005 has status failed: training diverged" in outputs.data.missing
    markdown = outputs.markdown.read_text(encoding="utf-8")
    assert "## Missing or incomplete results" in markdown
    assert "too few runs" in markdown
    assert (tmp_path / "figures" / "iou_boxplots.png").is_file()


def test_single_run_report(tmp_path, builder):
    builder.write_run(tmp_path / "results" / "one", setup="deterministic", run_index=0,
                      iou=builder.iou(0.9, 0.8, None), predictions=builder.base_predictions(),
                      weights=builder.base_weights())
    outputs = build_report(results_dir=tmp_path / "results", figures_dir=tmp_path / "figures", resamples=200)
    summaries = {s.class_name: s for s in outputs.data.summaries}
    assert summaries["liver"].n == 1
    assert summaries["tumor"].note == "class absent in every run"
    assert outputs.data.pairs == []
    assert pd.read_parquet(outputs.tables[2]).empty
    assert "bitwise reproducible: cannot tell" in outputs.markdown.read_text(encoding="utf-8")


def test_terminal_table(report):
    console = Console(width=160, record=True)
    console.print(terminal_table(report.data))
    text = console.export_text()
    assert "0.8267 ± 0.0306" in text
    assert "cannot tell" not in text
    lines = [line for line in text.splitlines() if "deterministic" in line]
    assert "yes" in lines[0]
