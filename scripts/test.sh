#!/usr/bin/env bash
# Builds (installing what is missing), then runs the GoogleTest suites (ctest) and the pytest suites.
# Prints each runner's summary; exits non-zero if anything failed. Slow tests: ctest -L slow.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${LEGO_VENV:-$HOME/.cache/lego/venv}
build=${LEGO_BUILD_DIR:-$root/build}
"$root/scripts/build.sh" || { echo "test: build failed"; exit 1; }

status=0
echo "== ctest"
(cd "$build" && ctest --output-on-failure -LE slow -j2) || status=1
echo "== pytest"
LEGO_BIN=$build/bin/lego "$venv/bin/python" -m pytest -q -p no:cacheprovider "$root/tests/parity" || status=1
if [ $status -ne 0 ]; then echo "test: FAILED"; else echo "test: all suites passed"; fi
exit $status
