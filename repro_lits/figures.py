"""Report figures: IoU box plots per setup and class, and the disagreement between runs per setup.

Figures are drawn with matplotlib's Agg backend (no display needed) and seaborn, and
saved as PNG (200 dpi) and SVG.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from repro_lits.stats import CLASS_NAMES, finished_runs, iou_column, ordered_setups  # noqa: E402

logger = logging.getLogger(__name__)

#: Fixed colour per class (Okabe-Ito palette, readable with colour-vision deficiencies).
CLASS_COLOURS = {"background": "#999999", "liver": "#D55E00", "tumor": "#0072B2"}

#: Colours of the two churn measures in the disagreement figure.
CHURN_COLOURS = {"all voxels": "#009E73", "liver union": "#CC79A7"}

PNG_DPI = 200


def long_iou_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Reshape the finished runs to one row per run and class: setup, run_id, class_name, iou (NaN rows dropped)."""
    finished = finished_runs(runs)
    rows = [
        (setup, run_id, class_name, value)
        for class_name in CLASS_NAMES
        for setup, run_id, value in zip(finished["setup"], finished["run_id"], finished[iou_column(class_name)],
                                        strict=True)
        if pd.notna(value)
    ]
    return pd.DataFrame(rows, columns=["setup", "run_id", "class_name", "iou"])


def draw_iou_boxplots(runs: pd.DataFrame, stem: Path, *, title: str) -> list[Path]:
    """Draw test IoU per setup (x) and class (box colour), with a tumor zoom panel; save ``stem``.png and .svg.

    Each run is drawn as a point over its box without jitter, so runs with identical IoU
    overlap and read as a single point. Returns the written paths.
    """
    table = long_iou_table(runs)
    setups = ordered_setups(finished_runs(runs)["setup"].tolist())
    counts = finished_runs(runs)["setup"].value_counts()
    labels = [f"{setup}\n(n = {counts.get(setup, 0)})" for setup in setups]
    classes = [name for name in CLASS_NAMES if name in set(table["class_name"])]

    figure, (main_axes, zoom_axes) = plt.subplots(
        1, 2, figsize=(11, 4.8), gridspec_kw={"width_ratios": [3, 1.4]}, constrained_layout=True
    )
    if table.empty:
        _draw_empty(main_axes, "no finished runs with test IoU")
    else:
        _draw_boxes_and_points(main_axes, table, setups, classes, hue="class_name", palette=CLASS_COLOURS)
        main_axes.set_ylabel("test IoU")
        figure.legend(*_class_legend(classes), title="class", loc="outside lower center", ncols=len(classes))
    main_axes.set_xticks(range(len(setups)), labels)
    main_axes.set_xlabel("setup")
    main_axes.set_title("all classes")

    tumor = table[table["class_name"] == "tumor"]
    if tumor.empty:
        _draw_empty(zoom_axes, "no tumor IoU recorded")
    else:
        _draw_boxes_and_points(zoom_axes, tumor, setups, ["tumor"], hue="class_name", palette=CLASS_COLOURS)
        zoom_axes.set_ylabel("test IoU (tumor)")
    zoom_axes.set_xticks(range(len(setups)), labels)
    zoom_axes.set_xlabel("setup")
    zoom_axes.set_title("tumor, zoomed")

    figure.suptitle(title)
    return _save(figure, stem)


def draw_disagreement(pairs: pd.DataFrame, setups: Sequence[str], stem: Path, *, title: str) -> list[Path]:
    """Draw the prediction churn (percent of voxels) and the relative weight distance of run pairs per setup.

    ``pairs`` has the columns of ``pairs.parquet`` (setup, churn, liver_churn, weight_distance).
    Setups without a pair are labelled "no pairs". Saves ``stem``.png and .svg and returns the paths.
    """
    setups = list(setups)
    pair_counts = pairs["setup"].value_counts() if not pairs.empty else pd.Series(dtype=int)
    labels = [f"{setup}\n({_count_pairs(int(pair_counts.get(setup, 0)))})" for setup in setups]

    churn_rows = []
    for column, measure in (("churn", "all voxels"), ("liver_churn", "liver union")):
        if column in pairs.columns:
            for setup, value in zip(pairs["setup"], pairs[column], strict=True):
                if pd.notna(value):
                    churn_rows.append((setup, measure, 100.0 * value))
    churn = pd.DataFrame(churn_rows, columns=["setup", "measure", "percent"])
    distance = pd.DataFrame(
        {"setup": pairs.get("setup", pd.Series(dtype=str)), "weight_distance": pairs.get("weight_distance")}
    ).dropna()

    figure, (churn_axes, distance_axes) = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
    if churn.empty:
        _draw_empty(churn_axes, "no pair of runs with predictions")
    else:
        measures = [m for m in CHURN_COLOURS if m in set(churn["measure"])]
        _draw_boxes_and_points(churn_axes, churn.rename(columns={"percent": "value"}), setups, measures,
                               hue="measure", palette=CHURN_COLOURS, y="value")
        figure.legend(*_class_legend(measures), title="voxels compared", loc="outside lower center",
                      ncols=len(measures))
        churn_axes.set_ylabel("voxels with a different class (%)")
    churn_axes.set_xticks(range(len(setups)), labels)
    churn_axes.set_xlabel("setup")
    churn_axes.set_title("prediction churn between two runs")

    if distance.empty:
        _draw_empty(distance_axes, "no pair of runs with weights")
    else:
        _boxplot(data=distance, x="setup", y="weight_distance", order=setups, color="#E69F00",
                 showfliers=False, width=0.5, ax=distance_axes)
        sns.stripplot(data=distance, x="setup", y="weight_distance", order=setups, color="black", size=4,
                      jitter=False, ax=distance_axes)
        distance_axes.set_ylabel("||a - b|| / mean(||a||, ||b||)")
    distance_axes.set_xticks(range(len(setups)), labels)
    distance_axes.set_xlabel("setup")
    distance_axes.set_title("relative L2 distance of final weights")

    figure.suptitle(title)
    return _save(figure, stem)


def _boxplot(**kwargs) -> None:
    """Call ``seaborn.boxplot`` without the deprecation warning that seaborn 0.13 triggers in matplotlib 3.11.

    NOTE: seaborn 0.13.2 passes ``vert=`` to ``Axes.bxp``, which matplotlib 3.11 deprecates; the
    filter only hides that message and can go once seaborn passes ``orientation=``.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="vert: bool was deprecated", category=DeprecationWarning)
        sns.boxplot(**kwargs)


def _draw_boxes_and_points(axes, table: pd.DataFrame, setups: Sequence[str], hues: Sequence[str], *,
                           hue: str, palette: dict[str, str], y: str = "iou") -> None:
    _boxplot(data=table, x="setup", y=y, hue=hue, order=setups, hue_order=hues, palette=palette,
             showfliers=False, width=0.75, boxprops={"alpha": 0.55}, ax=axes, legend=False)
    sns.stripplot(data=table, x="setup", y=y, hue=hue, order=setups, hue_order=hues, palette=palette,
                  dodge=True, jitter=False, size=5, linewidth=0.8, edgecolor="black", ax=axes, legend=False)


def _count_pairs(count: int) -> str:
    if count == 0:
        return "no pairs"
    if count == 1:
        return "1 pair"
    return f"{count} pairs"


def _class_legend(names: Sequence[str]) -> tuple[list, list[str]]:
    palette = {**CLASS_COLOURS, **CHURN_COLOURS}
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=palette[name], alpha=0.8) for name in names]
    return handles, list(names)


def _draw_empty(axes, message: str) -> None:
    axes.text(0.5, 0.5, message, ha="center", va="center", transform=axes.transAxes)
    axes.set_yticks([])


def _save(figure, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    figure.savefig(paths[0], dpi=PNG_DPI)
    figure.savefig(paths[1])
    plt.close(figure)
    logger.info("wrote %s and %s", paths[0], paths[1])
    return paths
