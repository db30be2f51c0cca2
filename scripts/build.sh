#!/usr/bin/env bash
# Runs setup, then configures and builds lego into build/ (LEGO_BUILD_DIR). Extra arguments go to CMake.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/setup.sh"
venv=${LEGO_VENV:-$HOME/.cache/lego/venv}
build=${LEGO_BUILD_DIR:-$root/build}
torch_dir=${LEGO_TORCH_DIR:-${Torch_DIR:-$("$venv/bin/python" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "share/cmake/Torch"))')}}
# ccache: paths relative to the clone, so a fresh clone in another folder hits the same cache.
export CCACHE_BASEDIR=$root CCACHE_NOHASHDIR=1
# The Python module is built against the venv's interpreter and torch (LEGO_WITH_PYTHON=OFF to leave it out).
cmake -S "$root" -B "$build" -G Ninja -DTorch_DIR="$torch_dir" -DCMAKE_BUILD_TYPE=Release \
  -DLEGO_WITH_PYTHON=ON -DPython3_EXECUTABLE="$venv/bin/python" "$@" >/dev/null
cmake --build "$build"
