"""Statistics over the run tables: per-setup summaries, tests across setups, bitwise identity, volume spread.

Every function is pure: it takes the tables (pandas DataFrames with the columns
of ``runs.parquet`` and ``volumes.parquet``) or plain arrays and returns named
results. Nothing here reads files. Values of a class that is absent from a run
(NaN in the tables) are left out of that class's statistics and counted as
missing.

Degenerate inputs are reported in words, never as NaN values or scipy warnings.
A group whose values are all identical has a standard deviation of exactly 0.
A group with fewer than two runs is "too few runs". A test whose statistic has
a zero denominator is "not defined", with the reason.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

logger = logging.getLogger(__name__)

#: Segmentation classes in label order (0 background, 1 liver, 2 tumor).
CLASS_NAMES = ("background", "liver", "tumor")

#: Classes summarised per setup: the three classes and their mean IoU.
SUMMARY_CLASSES = (*CLASS_NAMES, "mean")

#: Setups in the order the study drew them; other setup names follow, sorted.
SETUP_ORDER = ("random", "seed", "deterministic")

#: Default number of bootstrap resamples for the confidence interval of the standard deviation.
BOOTSTRAP_RESAMPLES = 10_000

#: Default seed of the bootstrap's random generator, so that a report is reproducible.
BOOTSTRAP_SEED = 0

#: Values closer than this are treated as equal when deciding whether a test statistic has a zero
#: denominator. IoU values lie in [0, 1], so this is far below any real difference between runs.
EQUALITY_TOLERANCE = 1e-12

TOO_FEW_RUNS = "too few runs"


@dataclass(frozen=True)
class ClassSummary:
    """Descriptive statistics of one class's test IoU over the finished runs of one setup.

    Float fields are ``None`` where the statistic is undefined, and ``note`` then states why.
    ``std`` uses ddof 1. ``cv`` is ``std / mean``. ``std_ci_low`` and ``std_ci_high`` bound
    the 95 % percentile-bootstrap confidence interval of ``std``.
    """

    setup: str
    class_name: str
    n: int
    n_missing: int
    mean: float | None
    std: float | None
    minimum: float | None
    maximum: float | None
    range: float | None
    median: float | None
    iqr: float | None
    cv: float | None
    std_ci_low: float | None
    std_ci_high: float | None
    note: str


@dataclass(frozen=True)
class TestOutcome:
    """Statistic and p-value of one test, or ``None`` for both with the reason in ``note``."""

    statistic: float | None
    pvalue: float | None
    note: str = ""


@dataclass(frozen=True)
class SetupComparison:
    """One test across setups for one class.

    ``scope`` is ``"overall"`` (every setup with at least two runs) or ``"pairwise"`` (two setups).
    ``pvalue_holm`` is the Holm-adjusted p-value within the family of pairwise tests of the same
    test and class. It is ``None`` for overall tests and for tests that are not defined.
    """

    test: str
    class_name: str
    scope: str
    setups: tuple[str, ...]
    statistic: float | None
    pvalue: float | None
    pvalue_holm: float | None
    note: str


@dataclass(frozen=True)
class BitwiseIdentity:
    """Hash comparison of the finished runs of one setup.

    ``largest_identical_group`` counts the runs that share the most common pair of
    (weights hash, predictions hash). ``reproducible`` is ``None`` when fewer than two runs finished.
    """

    setup: str
    runs: int
    distinct_weights: int
    distinct_predictions: int
    largest_identical_group: int
    reproducible: bool | None
    verdict: str


@dataclass(frozen=True)
class Churn:
    """Voxel counts behind the prediction churn of two runs; fractions are ``None`` for empty sets."""

    voxels: int
    differing: int
    liver_union: int
    liver_differing: int

    @property
    def fraction(self) -> float | None:
        """Fraction of all voxels whose predicted class differs."""
        return self.differing / self.voxels if self.voxels else None

    @property
    def liver_fraction(self) -> float | None:
        """Fraction of the voxels predicted as liver or tumor by either run whose class differs."""
        return self.liver_differing / self.liver_union if self.liver_union else None

    def __add__(self, other: Churn) -> Churn:
        return Churn(
            voxels=self.voxels + other.voxels,
            differing=self.differing + other.differing,
            liver_union=self.liver_union + other.liver_union,
            liver_differing=self.liver_differing + other.liver_differing,
        )


def ordered_setups(setups: Sequence[str]) -> list[str]:
    """Sort setup names into the study's order (random, seed, deterministic), then others alphabetically."""
    unique = list(dict.fromkeys(setups))
    known = [name for name in SETUP_ORDER if name in unique]
    return known + sorted(name for name in unique if name not in SETUP_ORDER)


def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Return the rows of a runs table whose status is ``finished`` (all rows if there is no status column)."""
    if "status" not in runs.columns:
        return runs
    return runs[runs["status"] == "finished"]


def iou_column(class_name: str) -> str:
    """Name of the runs-table column with the study-definition test IoU of a class (``"mean"`` included)."""
    return f"iou_{class_name}"


# --- Descriptive statistics -------------------------------------------------------------------


def bootstrap_std_ci(
    values: np.ndarray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
) -> tuple[float, float] | None:
    """Compute a percentile-bootstrap confidence interval of the standard deviation (ddof 1).

    Draws ``resamples`` samples of size n with replacement from ``values`` (1-D float) using
    ``numpy.random.default_rng(seed)``, takes each sample's standard deviation and returns the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of those (the percentile
    interval). With ten runs the interval is wide and tends to sit low, because a resample
    repeats values. Returns ``None`` for fewer than two
    values, and ``(0.0, 0.0)`` when every value is identical.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return None
    if resamples < 1:
        raise ValueError(f"resamples = {resamples}; expected a positive count")
    if np.all(values == values[0]):
        return (0.0, 0.0)

    rng = np.random.default_rng(seed)
    indices = rng.integers(0, values.size, size=(resamples, values.size))
    stds = values[indices].std(axis=1, ddof=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(stds, [tail, 1.0 - tail])
    return (float(low), float(high))


def describe(
    values: np.ndarray,
    *,
    setup: str,
    class_name: str,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> ClassSummary:
    """Summarise one class's IoU values (1-D float, NaN where the class was absent) for one setup.

    The median and the interquartile range use numpy's default linear interpolation
    (Hyndman and Fan type 7, the same as R's default).
    """
    raw = np.asarray(values, dtype=np.float64)
    present = raw[~np.isnan(raw)]
    n = int(present.size)
    n_missing = int(raw.size - n)
    missing_note = f"{n_missing} of {raw.size} runs have no value (class absent)" if n_missing else ""

    if n == 0:
        note = "no runs" if raw.size == 0 else "class absent in every run"
        return ClassSummary(setup, class_name, 0, n_missing, *([None] * 10), note=note)

    mean = float(present.mean())
    location = {
        "mean": mean,
        "minimum": float(present.min()),
        "maximum": float(present.max()),
        "range": float(np.ptp(present)),
        "median": float(np.median(present)),
    }
    if n < 2:
        note = _join_notes(f"{TOO_FEW_RUNS} (n = 1): no spread", missing_note)
        return ClassSummary(
            setup, class_name, n, n_missing, std=None, iqr=None, cv=None,
            std_ci_low=None, std_ci_high=None, note=note, **location,
        )

    identical = bool(np.all(present == present[0]))
    std = 0.0 if identical else float(present.std(ddof=1))
    q1, q3 = np.quantile(present, [0.25, 0.75])
    ci = bootstrap_std_ci(present, resamples=resamples, seed=seed)
    cv = std / mean if mean != 0 else None
    notes = []
    if identical:
        notes.append(f"all {n} runs identical: standard deviation exactly 0")
    if cv is None:
        notes.append("mean is 0: coefficient of variation undefined")
    notes.append(missing_note)
    return ClassSummary(
        setup, class_name, n, n_missing, std=std, iqr=float(q3 - q1), cv=cv,
        std_ci_low=ci[0], std_ci_high=ci[1], note=_join_notes(*notes), **location,
    )


def summarize_runs(
    runs: pd.DataFrame,
    *,
    classes: Sequence[str] = SUMMARY_CLASSES,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> list[ClassSummary]:
    """Describe each class's test IoU for each setup over the finished runs of a runs table."""
    finished = finished_runs(runs)
    summaries = []
    for setup in ordered_setups(finished["setup"].tolist()):
        group = finished[finished["setup"] == setup]
        for class_name in classes:
            values = group[iou_column(class_name)].to_numpy(dtype=np.float64)
            summaries.append(describe(values, setup=setup, class_name=class_name, resamples=resamples, seed=seed))
    return summaries


# --- Tests across setups ----------------------------------------------------------------------


def brown_forsythe(groups: Sequence[np.ndarray]) -> TestOutcome:
    """Test equal variances with the Brown-Forsythe test (Levene's test centred on group medians).

    Null hypothesis: every group has the same variance. The statistic is the one-way ANOVA F of
    the absolute deviations ``|x_ij - median_i|`` (Brown and Forsythe, JASA 69, 1974, 364-367),
    computed by ``scipy.stats.levene(center="median")``. The median centre keeps the test valid
    for the skewed, bounded distributions that IoU values have. The F statistic has a zero
    denominator when the absolute deviations are constant inside every group: for example when
    each group's runs are all identical, or each group has exactly two runs. The test is then
    reported as not defined.
    """
    groups = [np.asarray(g, dtype=np.float64) for g in groups]
    deviations = [np.abs(g - np.median(g)) for g in groups]
    if all(_all_equal(d) for d in deviations):
        if all(_all_equal(g) for g in groups):
            reason = "not defined: the runs of every group are identical (every variance is exactly 0)"
        else:
            reason = (
                "not defined: the absolute deviations from the median are constant inside every group "
                "(as with two runs per group), so the F statistic divides by 0"
            )
        return TestOutcome(None, None, reason)
    result = scipy_stats.levene(*groups, center="median")
    return TestOutcome(float(result.statistic), float(result.pvalue))


def fligner_killeen(groups: Sequence[np.ndarray]) -> TestOutcome:
    """Test equal variances with the Fligner-Killeen test (``scipy.stats.fligner``, median centre).

    Null hypothesis: every group has the same variance. The test ranks the absolute deviations
    from the group medians and needs no normality (Fligner and Killeen, JASA 71, 1976, 210-213;
    Conover, Johnson and Johnson, Technometrics 23, 1981, 351-361). It is not defined when every
    absolute deviation in the pooled sample is the same, because all ranks then tie.
    """
    groups = [np.asarray(g, dtype=np.float64) for g in groups]
    pooled = np.concatenate([np.abs(g - np.median(g)) for g in groups])
    if _all_equal(pooled):
        if all(_all_equal(g) for g in groups):
            reason = "not defined: the runs of every group are identical (every variance is exactly 0)"
        else:
            reason = "not defined: every absolute deviation from the group median is the same, so all ranks tie"
        return TestOutcome(None, None, reason)
    result = scipy_stats.fligner(*groups, center="median")
    return TestOutcome(float(result.statistic), float(result.pvalue))


def kruskal_wallis(groups: Sequence[np.ndarray]) -> TestOutcome:
    """Test equal location with the Kruskal-Wallis H test (``scipy.stats.kruskal``, tie-corrected).

    Null hypothesis: the groups come from distributions with the same median (Kruskal and
    Wallis, JASA 47, 1952, 583-621). It is a rank test, so a group of identical runs poses no
    problem unless every value of every group is the same, when the tie correction is 0 and
    the test is not defined.
    """
    groups = [np.asarray(g, dtype=np.float64) for g in groups]
    if _all_equal(np.concatenate(groups)):
        return TestOutcome(None, None, "not defined: every run of every group has the same value")
    result = scipy_stats.kruskal(*groups)
    return TestOutcome(float(result.statistic), float(result.pvalue))


#: Tests run across setups, by the name used in the tables.
SETUP_TESTS = {
    "brown-forsythe": brown_forsythe,
    "fligner-killeen": fligner_killeen,
    "kruskal-wallis": kruskal_wallis,
}

#: Tests that are also run on every pair of setups, with Holm-adjusted p-values.
PAIRWISE_TESTS = ("brown-forsythe", "fligner-killeen")


def holm_adjust(pvalues: Sequence[float]) -> np.ndarray:
    """Adjust p-values for multiple comparisons with Holm's step-down method.

    Sorted ascending, the i-th smallest of m p-values (i from 1) becomes
    ``min(1, max_{j <= i} (m - j + 1) * p_(j))`` (Holm, Scandinavian Journal of Statistics 6,
    1979, 65-70), as R's ``p.adjust(method = "holm")`` computes it. It controls the family-wise
    error rate under any dependence between the tests.
    Returns the adjusted values (1-D float64) in the input order.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = (m - np.arange(m)) * p[order]
    adjusted_sorted = np.minimum(1.0, np.maximum.accumulate(scaled))
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    return adjusted


def compare_setups(runs: pd.DataFrame, *, classes: Sequence[str] = SUMMARY_CLASSES) -> list[SetupComparison]:
    """Run every test of :data:`SETUP_TESTS` across setups for each class, overall and pairwise.

    Only finished runs with a value for the class enter. A setup with fewer than two such runs is
    left out and named in the note. The pairwise p-values of one test and class form one Holm
    family, which leaves out the tests that are not defined.
    """
    finished = finished_runs(runs)
    setups = ordered_setups(finished["setup"].tolist())
    comparisons: list[SetupComparison] = []
    for class_name in classes:
        groups: dict[str, np.ndarray] = {}
        for setup in setups:
            values = finished.loc[finished["setup"] == setup, iou_column(class_name)].to_numpy(dtype=np.float64)
            groups[setup] = values[~np.isnan(values)]
        comparisons.extend(_compare_groups(groups, class_name))
    return comparisons


def _compare_groups(groups: Mapping[str, np.ndarray], class_name: str) -> list[SetupComparison]:
    usable = {setup: values for setup, values in groups.items() if values.size >= 2}
    excluded = [f"{setup} (n = {values.size})" for setup, values in groups.items() if values.size < 2]
    excluded_note = f"{TOO_FEW_RUNS}, left out: {', '.join(excluded)}" if excluded else ""
    comparisons = []

    for test_name, test in SETUP_TESTS.items():
        if len(usable) < 2:
            outcome = TestOutcome(None, None, "not run: fewer than two setups with at least two runs")
        else:
            outcome = test(list(usable.values()))
        comparisons.append(
            SetupComparison(
                test_name, class_name, "overall", tuple(usable), outcome.statistic, outcome.pvalue, None,
                _join_notes(outcome.note, excluded_note),
            )
        )

    for test_name in PAIRWISE_TESTS:
        pairs = list(itertools.combinations(usable, 2))
        outcomes = [SETUP_TESTS[test_name]([usable[a], usable[b]]) for a, b in pairs]
        defined = [i for i, outcome in enumerate(outcomes) if outcome.pvalue is not None]
        adjusted = holm_adjust([outcomes[i].pvalue for i in defined])
        holm = dict(zip(defined, adjusted.tolist(), strict=True))
        for i, ((a, b), outcome) in enumerate(zip(pairs, outcomes, strict=True)):
            comparisons.append(
                SetupComparison(
                    test_name, class_name, "pairwise", (a, b), outcome.statistic, outcome.pvalue,
                    holm.get(i), outcome.note,
                )
            )
    return comparisons


# --- Bitwise identity -------------------------------------------------------------------------


def bitwise_identity(runs: pd.DataFrame) -> list[BitwiseIdentity]:
    """Compare the weight and prediction hashes of the finished runs within each setup.

    A setup is bitwise reproducible when at least two runs finished and all of them have the same
    weights hash and the same predictions hash.
    """
    finished = finished_runs(runs)
    results = []
    for setup in ordered_setups(finished["setup"].tolist()):
        group = finished[finished["setup"] == setup]
        count = len(group)
        distinct_weights = int(group["weights_sha256"].nunique())
        distinct_predictions = int(group["predictions_sha256"].nunique())
        largest = int(group.groupby(["weights_sha256", "predictions_sha256"]).size().max())

        if count < 2:
            reproducible = None
            verdict = f"bitwise reproducible: cannot tell ({TOO_FEW_RUNS}: {count} finished)"
        elif distinct_weights == 1 and distinct_predictions == 1:
            reproducible = True
            runs_text = "both runs" if count == 2 else f"all {count} runs"
            verdict = f"bitwise reproducible: yes ({runs_text} have identical weights and predictions)"
        else:
            reproducible = False
            verdict = (
                f"bitwise reproducible: no ({count} runs have {distinct_weights} distinct weight "
                f"{'hash' if distinct_weights == 1 else 'hashes'} and {distinct_predictions} distinct prediction "
                f"{'hash' if distinct_predictions == 1 else 'hashes'}; largest identical group {largest})"
            )
        results.append(
            BitwiseIdentity(setup, count, distinct_weights, distinct_predictions, largest, reproducible, verdict)
        )
    return results


# --- Disagreement between two runs ------------------------------------------------------------


def prediction_churn(first: np.ndarray, second: np.ndarray) -> Churn:
    """Count the voxels whose predicted class differs between two label maps of one test volume.

    Both arrays are integer label maps of the same shape, for example (X, Y, Z) uint8 with 0
    background, 1 liver and 2 tumor. The liver union is the set of voxels that either run labels
    as liver or tumor (label >= 1), so the liver churn is not diluted by the background.
    """
    first = np.asarray(first)
    second = np.asarray(second)
    if first.shape != second.shape:
        raise ValueError(f"label maps differ in shape: {first.shape} and {second.shape}; expected equal shapes")
    differs = first != second
    union = (first >= 1) | (second >= 1)
    return Churn(
        voxels=int(differs.size),
        differing=int(np.count_nonzero(differs)),
        liver_union=int(np.count_nonzero(union)),
        liver_differing=int(np.count_nonzero(differs & union)),
    )


def relative_weight_distance(first: np.ndarray, second: np.ndarray) -> float | None:
    """Return ``||a - b|| / ((||a|| + ||b||) / 2)``, the L2 distance of two weight vectors relative to their mean norm.

    Both are 1-D float vectors of the same length (every floating-point tensor of a model,
    flattened in the same order). The value is 0 for identical weights and 2 at most for
    non-zero vectors. Returns ``None`` when both vectors are zero.
    """
    first = np.asarray(first, dtype=np.float64)
    second = np.asarray(second, dtype=np.float64)
    if first.shape != second.shape:
        raise ValueError(f"weight vectors differ in shape: {first.shape} and {second.shape}; expected equal shapes")
    mean_norm = (np.linalg.norm(first) + np.linalg.norm(second)) / 2.0
    if mean_norm == 0:
        return None
    return float(np.linalg.norm(first - second) / mean_norm)


# --- Per-volume spread ------------------------------------------------------------------------


def volume_spread(volumes: pd.DataFrame, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Measure how much each test volume's IoU varies across the runs of each setup.

    ``volumes`` has one row per run and case (columns run_id, setup, case, iou_<class>). When
    ``runs`` is given, only volumes of its finished runs are used. Returns one row per setup,
    case and class with n, mean, std (ddof 1, ``NaN`` for fewer than two values) and range,
    sorted by setup, then class, then std from largest to smallest.
    """
    columns = ["setup", "case", "class_name", "n", "mean", "std", "range"]
    if runs is not None and "status" in runs.columns:
        volumes = volumes[volumes["run_id"].isin(finished_runs(runs)["run_id"])]
    if volumes.empty:
        return pd.DataFrame(columns=columns)

    rows = []
    for (setup, case), group in volumes.groupby(["setup", "case"], sort=False):
        for class_name in CLASS_NAMES:
            values = group[iou_column(class_name)].to_numpy(dtype=np.float64)
            values = values[~np.isnan(values)]
            if values.size == 0:
                continue
            if values.size < 2:
                std = np.nan
            elif np.all(values == values[0]):
                std = 0.0
            else:
                std = float(values.std(ddof=1))
            rows.append((setup, str(case), class_name, int(values.size), float(values.mean()), std,
                         float(np.ptp(values))))

    table = pd.DataFrame(rows, columns=columns)
    setup_rank = {setup: i for i, setup in enumerate(ordered_setups(table["setup"].tolist()))}
    class_rank = {name: i for i, name in enumerate(CLASS_NAMES)}
    table = table.assign(
        _setup=table["setup"].map(setup_rank), _class=table["class_name"].map(class_rank)
    ).sort_values(["_setup", "_class", "std"], ascending=[True, True, False], na_position="last")
    return table.drop(columns=["_setup", "_class"]).reset_index(drop=True)


# --- Tables -----------------------------------------------------------------------------------


def results_table(results: Sequence[object]) -> pd.DataFrame:
    """Turn a list of result dataclasses into a DataFrame, one row each (tuples of setups joined by " vs ")."""
    rows = []
    for result in results:
        row = asdict(result)
        for key, value in row.items():
            if isinstance(value, tuple):
                row[key] = " vs ".join(value)
        rows.append(row)
    return pd.DataFrame(rows)


def _all_equal(values: np.ndarray) -> bool:
    """True when every value lies within :data:`EQUALITY_TOLERANCE` of the first (and for empty arrays)."""
    return values.size == 0 or bool(np.all(np.abs(values - values.flat[0]) <= EQUALITY_TOLERANCE))


def _join_notes(*notes: str) -> str:
    return "; ".join(note for note in notes if note)
