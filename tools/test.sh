#!/usr/bin/env bash
# Installs what it needs, then runs the test suite on CPU (8 simulated devices).
# Extra arguments go to pytest, e.g. tools/test.sh -k partitioning.
set -euo pipefail
source "$(dirname "$0")/venv.sh" all,test,reference
"$(dirname "$0")/browser.sh"  # headless chromium for the playground test
"$(dirname "$0")/promtool.sh"  # promtool for the Prometheus rule tests
cd "$REPO_ROOT"
# Two workers by default (LLMOS_TEST_WORKERS=0 runs in one process): most tests are
# bound by XLA compilation, which is single-threaded. A file's tests stay on one
# worker, so module-scoped fixtures (trained runs, servers) are built once.
# Files go out slowest first (tests/conftest.py orders them by
# tests/file_durations.json); xdist's own reordering, by number of tests per
# file, would leave the few-test end-to-end files, the slowest, to the end.
WORKERS="${LLMOS_TEST_WORKERS:-2}"
PARALLEL=()
if [ "$WORKERS" != "0" ]; then
  PARALLEL=(-n "$WORKERS" --dist loadfile --no-loadscope-reorder)
fi
set +e
python -m pytest tests "${PARALLEL[@]}" "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  # pytest's "no tests collected" (e.g. a -k filter that matches nothing) is not a failure.
  echo "[llmos] pytest collected no tests (exit 5)" >&2
  exit 0
fi
exit "$status"
