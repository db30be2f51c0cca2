#!/usr/bin/env bash
# Builds (installing what is missing), then runs the GoogleTest suites (ctest) and the pytest suites.
# Prints each runner's summary; exits non-zero if anything failed. Slow tests: ctest -L slow.
#
#   scripts/test.sh             the default build (build/, Release): fast, what every change runs
#   scripts/test.sh --sanitize  the same suites in build-asan/ with ASan + UBSan (gcc, RelWithDebInfo)
#   scripts/test.sh --fuzz      the fuzz targets' smoke runs in build-fuzz/ (clang, libFuzzer):
#                               LEGO_FUZZ_SECONDS (default 60) per target; scripts/fuzz.sh runs longer
# docs/testing.md says what each finds and how to read a failure.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${LEGO_VENV:-$HOME/.cache/lego/venv}
mode=default
case "${1:-}" in
  "") ;;
  --sanitize) mode=sanitize ;;
  --fuzz) mode=fuzz ;;
  *) echo "usage: scripts/test.sh [--sanitize | --fuzz]" >&2; exit 2 ;;
esac

# libtorch, FFmpeg and OpenCV are not instrumented and keep one-time allocations to exit, which
# LeakSanitizer would report as leaks; everything else ASan and UBSan find fails the run.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

if [ $mode = fuzz ]; then
  build=${LEGO_FUZZ_BUILD_DIR:-$root/build-fuzz}
  LEGO_FUZZ_SECONDS=${LEGO_FUZZ_SECONDS:-60} "$root/scripts/fuzz.sh" --build-only || { echo "test: build failed"; exit 1; }
  echo "== fuzz smoke runs (${LEGO_FUZZ_SECONDS:-60} s each; logs and findings in $build/fuzz)"
  if (cd "$build" && ctest -L fuzz --output-on-failure -j2); then echo "test: fuzz smoke runs found nothing"; exit 0; fi
  echo "test: FAILED (a fuzz target found something: see $build/fuzz/artifacts)"
  exit 1
fi

if [ $mode = sanitize ]; then
  build=${LEGO_ASAN_BUILD_DIR:-$root/build-asan}
  # -O1 as ASan advises, line tables only: stacks name file and line, and the build is much lighter.
  LEGO_BUILD_DIR=$build "$root/scripts/build.sh" -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1" \
    -DLEGO_SANITIZE=address,undefined -DLEGO_BUILD_BENCH=OFF -DLEGO_WITH_PYTHON=OFF || { echo "test: build failed"; exit 1; }
else
  build=${LEGO_BUILD_DIR:-$root/build}
  "$root/scripts/build.sh" || { echo "test: build failed"; exit 1; }
fi

status=0
echo "== ctest"
(cd "$build" && ctest --output-on-failure -LE slow -j2) || status=1
echo "== pytest"
LEGO_BIN=$build/bin/lego "$venv/bin/python" -m pytest -q -p no:cacheprovider "$root/tests/parity" || status=1
if [ -d "$build/python/lego" ]; then
  # The Python API, imported from the build tree (an ASan build has no Python module: python is not instrumented).
  echo "== pytest (Python API)"
  # test_pointcloud.py is ctest's PointcloudPluginOutOfTree, already run above.
  LEGO_BUILD_DIR=$build LEGO_BIN=$build/bin/lego PYTHONPATH=$build/python "$venv/bin/python" -m pytest -q \
    -p no:cacheprovider --ignore="$root/tests/python/test_pointcloud.py" "$root/tests/python" || status=1
fi
if [ $status -ne 0 ]; then echo "test: FAILED"; else echo "test: all suites passed"; fi
exit $status
