"""The fixed train/test split stored in every prepared dataset's manifest."""

from __future__ import annotations

import numpy as np

from repro_lits.data.layouts import natural_key
from repro_lits.errors import DataError

#: The study's 13 test volumes of the LiTS training release (the other 118 are its training set).
LITS_STUDY_TEST_CASES = ("17", "64", "27", "114", "74", "45", "61", "38", "106", "100", "117", "51", "62")

#: Case ids of the LiTS training release: volume-0 ... volume-130.
LITS_CASE_IDS = frozenset(str(i) for i in range(131))


def make_split(
    layout_kind: str,
    all_case_ids: list[str],
    usable_case_ids: list[str],
    *,
    test_fraction: float,
    split_seed: int,
) -> dict:
    """Split the usable cases into train and test ids.

    The 131-volume LiTS release gets the study's 13 test volumes (minus any that
    were skipped as invalid). Any other dataset gets ``round(test_fraction * n)``
    test cases, at least one, drawn with ``numpy.random.default_rng(split_seed)``
    from the case ids in natural order.

    Returns:
        ``{"rule": ..., "train": [...], "test": [...]}`` with ids in natural order.

    Raises:
        DataError: fewer than two usable cases.
    """
    usable = sorted(usable_case_ids, key=natural_key)
    if len(usable) < 2:
        raise DataError(
            f"{len(usable)} usable case(s); expected at least 2 (one for training and one for testing)"
        )
    if layout_kind == "lits" and set(all_case_ids) == LITS_CASE_IDS:
        test = [c for c in LITS_STUDY_TEST_CASES if c in set(usable)]
        rule = "study: the 13 LiTS test volumes of the published study"
    else:
        count = min(len(usable) - 1, max(1, int(round(test_fraction * len(usable)))))
        rng = np.random.default_rng(split_seed)
        chosen = rng.choice(len(usable), size=count, replace=False)
        test = [usable[i] for i in sorted(chosen)]
        rule = f"seeded: {count} of {len(usable)} cases, test_fraction {test_fraction}, split_seed {split_seed}"
    test_set = set(test)
    return {
        "rule": rule,
        "train": [c for c in usable if c not in test_set],
        "test": sorted(test, key=natural_key),
    }
