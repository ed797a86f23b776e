"""Check a raw dataset without preprocessing it: every problem as one line naming the file, the fault and the expectation."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from repro_lits.data.layouts import detect_layout
from repro_lits.data.study_pt import load_study_case
from repro_lits.data.volume import CaseError, load_case

logger = logging.getLogger(__name__)


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`: the layout, how many cases were read, and the lines to show."""

    root: Path
    layout: str
    cases: int
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_dataset(path: Path) -> CheckReport:
    """Read every case of a dataset folder and collect all problems and warnings.

    Raises:
        DataError: the folder is missing or contains no known layout (a single problem that stops the check).
    """
    layout = detect_layout(Path(path))
    report = CheckReport(root=layout.root, layout=layout.kind, cases=len(layout.cases), problems=list(layout.problems))
    for case in layout.cases:
        try:
            if layout.kind == "study-pt":
                load_study_case(case)
            else:
                volume = load_case(case)
                report.warnings.extend(volume.warnings)
        except CaseError as err:
            report.problems.extend(err.problems)
        logger.debug("checked case %s", case.case_id)
    return report
