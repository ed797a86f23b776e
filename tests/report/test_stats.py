"""Statistics over run tables, checked against scipy and hand-computed values."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from repro_lits import stats


def runs_table(values: dict[str, list[float | None]], column: str = "iou_liver") -> pd.DataFrame:
    rows = []
    for setup, setup_values in values.items():
        for index, value in enumerate(setup_values):
            rows.append({"setup": setup, "run_id": f"{setup}-{index:03d}", "run_index": index,
                         "status": "finished", column: np.nan if value is None else value})
    return pd.DataFrame(rows)


# --- describe ---------------------------------------------------------------------------------


def test_describe_hand_computed():
    summary = stats.describe(np.array([0.80, 0.82, 0.86]), setup="random", class_name="liver")
    # Hand computation: mean 2.48 / 3; squared deviations sum to 0.0018666...; divided by n - 1 = 2.
    assert summary.n == 3
    assert summary.mean == pytest.approx(0.8266666667)
    assert summary.std == pytest.approx(np.sqrt(0.0018666667 / 2))
    assert summary.minimum == pytest.approx(0.80)
    assert summary.maximum == pytest.approx(0.86)
    assert summary.range == pytest.approx(0.06)
    assert summary.median == pytest.approx(0.82)
    # Linear interpolation: 25th percentile 0.81, 75th percentile 0.84.
    assert summary.iqr == pytest.approx(0.03)
    assert summary.cv == pytest.approx(np.sqrt(0.0018666667 / 2) / 0.8266666667)
    assert summary.note == ""


def test_describe_matches_numpy_and_scipy():
    values = np.random.default_rng(3).uniform(0.3, 0.6, size=10)
    summary = stats.describe(values, setup="seed", class_name="tumor")
    assert summary.std == pytest.approx(np.std(values, ddof=1))
    assert summary.iqr == pytest.approx(scipy_stats.iqr(values))
    assert summary.cv == pytest.approx(scipy_stats.variation(values, ddof=1))


def test_describe_zero_variance():
    summary = stats.describe(np.full(10, 0.8197547197341919), setup="deterministic", class_name="liver")
    assert summary.std == 0.0
    assert summary.iqr == 0.0
    assert summary.range == 0.0
    assert summary.cv == 0.0
    assert (summary.std_ci_low, summary.std_ci_high) == (0.0, 0.0)
    assert "all 10 runs identical" in summary.note


def test_describe_single_run():
    summary = stats.describe(np.array([0.81]), setup="seed", class_name="liver")
    assert summary.n == 1
    assert summary.mean == pytest.approx(0.81)
    assert summary.std is None
    assert summary.cv is None
    assert summary.std_ci_low is None
    assert "too few runs" in summary.note


def test_describe_missing_class_values():
    summary = stats.describe(np.array([0.4, np.nan, 0.5]), setup="seed", class_name="tumor")
    assert summary.n == 2
    assert summary.n_missing == 1
    assert summary.mean == pytest.approx(0.45)
    assert summary.std == pytest.approx(np.std([0.4, 0.5], ddof=1))
    assert "1 of 3 runs have no value" in summary.note


def test_describe_class_absent_everywhere():
    summary = stats.describe(np.array([np.nan, np.nan]), setup="seed", class_name="tumor")
    assert summary.n == 0
    assert summary.n_missing == 2
    assert summary.mean is None
    assert summary.note == "class absent in every run"


def test_describe_zero_mean_has_no_cv():
    summary = stats.describe(np.array([0.0, 0.0, 0.0]), setup="seed", class_name="tumor")
    assert summary.cv is None
    assert "coefficient of variation undefined" in summary.note


def test_summarize_runs_orders_setups_and_skips_failed():
    table = runs_table({"deterministic": [0.82, 0.82], "random": [0.80, 0.86]}, column="iou_liver")
    table.loc[len(table)] = {"setup": "random", "run_id": "random-009", "run_index": 9, "status": "failed",
                             "iou_liver": 0.1}
    summaries = stats.summarize_runs(table, classes=("liver",), resamples=200)
    assert [s.setup for s in summaries] == ["random", "deterministic"]
    assert summaries[0].n == 2
    assert summaries[0].minimum == pytest.approx(0.80)


# --- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_ci_agrees_with_scipy_percentile():
    values = np.random.default_rng(7).normal(0.8, 0.02, size=10)
    ours = stats.bootstrap_std_ci(values, resamples=20_000, seed=1)
    reference = scipy_stats.bootstrap(
        (values,), lambda sample: np.std(sample, ddof=1), n_resamples=20_000, method="percentile",
        rng=np.random.default_rng(2),
    ).confidence_interval
    # Two independent Monte Carlo estimates of the same quantiles agree to a few percent.
    assert ours[0] == pytest.approx(reference.low, rel=0.05)
    assert ours[1] == pytest.approx(reference.high, rel=0.05)
    assert ours[0] < np.std(values, ddof=1) < ours[1]


def test_bootstrap_ci_is_seeded():
    values = np.array([0.1, 0.4, 0.2, 0.9])
    assert stats.bootstrap_std_ci(values, resamples=500, seed=5) == stats.bootstrap_std_ci(values, resamples=500, seed=5)
    assert stats.bootstrap_std_ci(values, resamples=500, seed=5) != stats.bootstrap_std_ci(values, resamples=500, seed=6)


def test_bootstrap_ci_degenerate_inputs():
    assert stats.bootstrap_std_ci(np.array([0.5])) is None
    assert stats.bootstrap_std_ci(np.array([0.5, 0.5, 0.5])) == (0.0, 0.0)
    with pytest.raises(ValueError, match="resamples = 0"):
        stats.bootstrap_std_ci(np.array([0.1, 0.2]), resamples=0)


# --- tests across setups ----------------------------------------------------------------------


def test_brown_forsythe_hand_computed():
    # |x - median|: group 1 -> 1, 0, 2 (mean 1); group 2 -> 2, 0, 4 (mean 2); grand mean 1.5.
    # Between: 3 * 0.25 + 3 * 0.25 = 1.5 on 1 df; within: 2 + 8 = 10 on 4 df; F = 1.5 / 2.5.
    outcome = stats.brown_forsythe([np.array([1.0, 2.0, 4.0]), np.array([2.0, 4.0, 8.0])])
    assert outcome.statistic == pytest.approx(0.6)
    assert outcome.pvalue == pytest.approx(scipy_stats.f.sf(0.6, 1, 4))


@pytest.mark.filterwarnings("error")
def test_tests_match_scipy():
    rng = np.random.default_rng(11)
    groups = [rng.normal(0.8, 0.01, 10), rng.normal(0.8, 0.03, 9), rng.normal(0.82, 0.02, 10)]
    expected = {
        "brown-forsythe": scipy_stats.levene(*groups, center="median"),
        "fligner-killeen": scipy_stats.fligner(*groups),
        "kruskal-wallis": scipy_stats.kruskal(*groups),
    }
    for name, test in stats.SETUP_TESTS.items():
        outcome = test(groups)
        assert outcome.statistic == pytest.approx(expected[name].statistic), name
        assert outcome.pvalue == pytest.approx(expected[name].pvalue), name


@pytest.mark.filterwarnings("error")
def test_tests_with_one_zero_variance_group_are_defined():
    groups = [np.full(10, 0.82), np.array([0.80, 0.82, 0.86, 0.81, 0.83])]
    outcome = stats.brown_forsythe(groups)
    assert outcome.pvalue == pytest.approx(scipy_stats.levene(*groups, center="median").pvalue)
    outcome = stats.fligner_killeen(groups)
    assert outcome.pvalue == pytest.approx(scipy_stats.fligner(*groups).pvalue)


@pytest.mark.filterwarnings("error")
def test_tests_all_groups_zero_variance():
    groups = [np.full(5, 0.82), np.full(4, 0.80)]
    for test in (stats.brown_forsythe, stats.fligner_killeen):
        outcome = test(groups)
        assert outcome.statistic is None
        assert outcome.pvalue is None
        assert "identical" in outcome.note
    # Kruskal-Wallis is defined here: the two groups differ in location.
    kruskal = stats.kruskal_wallis(groups)
    assert kruskal.pvalue == pytest.approx(scipy_stats.kruskal(*groups).pvalue)


@pytest.mark.filterwarnings("error")
def test_kruskal_all_values_equal_not_defined():
    outcome = stats.kruskal_wallis([np.full(3, 0.5), np.full(4, 0.5)])
    assert outcome.pvalue is None
    assert "same value" in outcome.note


@pytest.mark.filterwarnings("error")
def test_brown_forsythe_two_runs_per_group_not_defined():
    outcome = stats.brown_forsythe([np.array([0.1, 0.3]), np.array([0.5, 0.9])])
    assert outcome.pvalue is None
    assert "constant inside every group" in outcome.note


def test_holm_hand_computed():
    # Sorted 0.01, 0.03, 0.04 -> 3 * 0.01, 2 * 0.03, max(0.06, 1 * 0.04).
    assert stats.holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm_adjust([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert stats.holm_adjust([]).size == 0


@pytest.mark.filterwarnings("error")
def test_compare_setups_overall_and_pairwise():
    values = {"random": [0.80, 0.82, 0.86, 0.79], "seed": [0.81, 0.83, 0.815], "deterministic": [0.82] * 3}
    comparisons = stats.compare_setups(runs_table(values), classes=("liver",))
    by_key = {(c.test, c.scope, c.setups): c for c in comparisons}
    groups = [np.array(v) for v in values.values()]

    overall = by_key[("brown-forsythe", "overall", ("random", "seed", "deterministic"))]
    assert overall.pvalue == pytest.approx(scipy_stats.levene(*groups, center="median").pvalue)
    assert overall.pvalue_holm is None

    pairwise = [c for c in comparisons if c.test == "fligner-killeen" and c.scope == "pairwise"]
    assert [c.setups for c in pairwise] == [("random", "seed"), ("random", "deterministic"),
                                            ("seed", "deterministic")]
    raw = [scipy_stats.fligner(groups[a], groups[b]).pvalue for a, b in ((0, 1), (0, 2), (1, 2))]
    assert [c.pvalue for c in pairwise] == pytest.approx(raw)
    assert [c.pvalue_holm for c in pairwise] == pytest.approx(stats.holm_adjust(raw))


@pytest.mark.filterwarnings("error")
def test_compare_setups_single_run_setup_left_out():
    comparisons = stats.compare_setups(
        runs_table({"random": [0.80, 0.84, 0.81], "seed": [0.82], "deterministic": [0.82, 0.82]}),
        classes=("liver",),
    )
    overall = [c for c in comparisons if c.scope == "overall"]
    assert all(c.setups == ("random", "deterministic") for c in overall)
    assert all("too few runs, left out: seed (n = 1)" in c.note for c in overall)
    assert not any("seed" in c.setups for c in comparisons if c.scope == "pairwise")


@pytest.mark.filterwarnings("error")
def test_compare_setups_one_usable_setup_not_run():
    comparisons = stats.compare_setups(runs_table({"random": [0.8, 0.9], "seed": [0.7]}), classes=("liver",))
    overall = [c for c in comparisons if c.scope == "overall"]
    assert len(overall) == 3
    assert all(c.pvalue is None and "fewer than two setups" in c.note for c in overall)
    assert [c for c in comparisons if c.scope == "pairwise"] == []


@pytest.mark.filterwarnings("error")
def test_compare_setups_ignores_missing_class_values():
    table = runs_table({"random": [0.4, None, 0.5, 0.45], "seed": [0.42, 0.43, 0.41]}, column="iou_tumor")
    comparisons = stats.compare_setups(table, classes=("tumor",))
    kruskal = next(c for c in comparisons if c.test == "kruskal-wallis")
    assert kruskal.pvalue == pytest.approx(scipy_stats.kruskal([0.4, 0.5, 0.45], [0.42, 0.43, 0.41]).pvalue)


# --- bitwise identity -------------------------------------------------------------------------


def hashes_table(weights: dict[str, list[str]], predictions: dict[str, list[str]]) -> pd.DataFrame:
    rows = []
    for setup in weights:
        for index, (w, p) in enumerate(zip(weights[setup], predictions[setup], strict=True)):
            rows.append({"setup": setup, "run_id": f"{setup}-{index}", "status": "finished",
                         "weights_sha256": w, "predictions_sha256": p})
    return pd.DataFrame(rows)


def test_bitwise_identity_verdicts():
    table = hashes_table(
        {"random": ["a", "b", "a", "c"], "seed": ["s", "s"], "deterministic": ["d", "d", "d"]},
        {"random": ["p", "q", "p", "r"], "seed": ["x", "y"], "deterministic": ["e", "e", "e"]},
    )
    results = {r.setup: r for r in stats.bitwise_identity(table)}

    assert results["random"].distinct_weights == 3
    assert results["random"].distinct_predictions == 3
    assert results["random"].largest_identical_group == 2
    assert results["random"].reproducible is False
    assert results["random"].verdict.startswith("bitwise reproducible: no")

    assert results["seed"].distinct_weights == 1
    assert results["seed"].distinct_predictions == 2
    assert results["seed"].largest_identical_group == 1
    assert results["seed"].reproducible is False

    assert results["deterministic"].largest_identical_group == 3
    assert results["deterministic"].reproducible is True
    assert results["deterministic"].verdict.startswith("bitwise reproducible: yes")


def test_bitwise_identity_single_run():
    result = stats.bitwise_identity(hashes_table({"seed": ["s"]}, {"seed": ["p"]}))[0]
    assert result.reproducible is None
    assert "cannot tell" in result.verdict
    assert "too few runs" in result.verdict


# --- churn and weight distance ----------------------------------------------------------------


def test_prediction_churn_hand_computed():
    first = np.zeros((2, 2, 2), dtype=np.uint8)
    second = np.zeros((2, 2, 2), dtype=np.uint8)
    first[0, 0, :] = 1      # liver in both runs at (0, 0, 0); only in the first at (0, 0, 1)
    second[0, 0, 0] = 1
    second[1, 1, 1] = 2     # tumor only in the second run
    churn = stats.prediction_churn(first, second)
    assert churn.voxels == 8
    assert churn.differing == 2
    assert churn.liver_union == 3
    assert churn.liver_differing == 2
    assert churn.fraction == pytest.approx(2 / 8)
    assert churn.liver_fraction == pytest.approx(2 / 3)


def test_prediction_churn_identical_and_empty_liver():
    labels = np.zeros((3, 3, 3), dtype=np.uint8)
    churn = stats.prediction_churn(labels, labels.copy())
    assert churn.fraction == 0.0
    assert churn.liver_fraction is None


def test_prediction_churn_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        stats.prediction_churn(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


def test_relative_weight_distance_hand_computed():
    # ||a - b|| = 5, mean norm (5 + 10) / 2 = 7.5.
    assert stats.relative_weight_distance(np.array([3.0, 4.0]), np.array([6.0, 8.0])) == pytest.approx(5 / 7.5)
    assert stats.relative_weight_distance(np.array([3.0, 4.0]), np.array([0.0, 0.0])) == pytest.approx(2.0)
    assert stats.relative_weight_distance(np.array([3.0, 4.0]), np.array([3.0, 4.0])) == 0.0
    assert stats.relative_weight_distance(np.zeros(2), np.zeros(2)) is None


# --- per-volume spread ------------------------------------------------------------------------


def test_volume_spread_ranks_cases():
    volumes = pd.DataFrame({
        "run_id": ["r0", "r1", "r2", "r0", "r1", "r2"],
        "setup": ["random"] * 6,
        "case": ["17", "17", "17", "64", "64", "64"],
        "iou_background": [0.9] * 6,
        "iou_liver": [0.80, 0.82, 0.84, 0.5, 0.7, 0.9],
        "iou_tumor": [0.3, np.nan, 0.5, np.nan, np.nan, np.nan],
    })
    spread = stats.volume_spread(volumes)
    liver = spread[spread["class_name"] == "liver"]
    assert liver["case"].tolist() == ["64", "17"]
    assert liver["std"].tolist() == pytest.approx([0.2, 0.02])
    assert liver["range"].tolist() == pytest.approx([0.4, 0.04])
    tumor = spread[spread["class_name"] == "tumor"]
    assert tumor["case"].tolist() == ["17"]
    assert tumor["n"].tolist() == [2]
    background = spread[spread["class_name"] == "background"]
    assert background["std"].tolist() == [0.0, 0.0]


def test_ordered_setups_study_order_first():
    assert stats.ordered_setups(["zeta", "deterministic", "random", "alpha", "seed"]) == [
        "random", "seed", "deterministic", "alpha", "zeta",
    ]


def test_brown_forsythe_scipy_docstring_example():
    # Reference value from the example of scipy.stats.levene (scipy 1.17), whose default centre is the median.
    a = [8.88, 9.12, 9.04, 8.98, 9.00, 9.08, 9.01, 8.85, 9.06, 8.99]
    b = [8.88, 8.95, 9.29, 9.44, 9.15, 9.58, 8.36, 9.18, 8.67, 9.05]
    c = [8.95, 9.12, 8.95, 8.85, 9.03, 8.84, 9.07, 8.98, 8.86, 8.98]
    outcome = stats.brown_forsythe([np.array(a), np.array(b), np.array(c)])
    assert outcome.pvalue == pytest.approx(0.002431505967249681)
