#!/usr/bin/env bash
# Run the whole study on the default data: 3 setups x 10 runs of the cpu experiment, then the report.
#
# Idempotent: finished runs are skipped, so a second call resumes an interrupted
# study, or only rebuilds the tables and the report when every run exists.
# Usage: ./run_all.sh [extra options of `repro-lits run`, e.g. --jobs 2]
# Environment: EXPERIMENT (default cpu), RESULTS (default results/), FIGURES (default figures/).
set -euo pipefail

cd "$(dirname "$0")"
experiment="${EXPERIMENT:-cpu}"
results="${RESULTS:-results}"
figures="${FIGURES:-figures}"

# A failed run makes `repro-lits run` exit with status 1; the report still covers the finished runs.
status=0
repro-lits run --setup all --runs 10 --experiment "$experiment" --results "$results" "$@" || status=$?
if [ "$status" -ne 0 ] && [ "$status" -ne 1 ]; then
    exit "$status"
fi

repro-lits report --results "$results" --experiment "$experiment" --figures "$figures"
exit "$status"
