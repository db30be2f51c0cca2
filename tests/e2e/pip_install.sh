#!/usr/bin/env bash
# `pip install --no-build-isolation .` builds lego through scikit-build-core against the torch of the
# running Python and installs a package that imports from anywhere: its C++ libraries, plugins and the
# `lego` command inside it. Slow (a whole build, ccache helps): ctest label `slow`.
# Usage: pip_install.sh PYTHON SOURCE_DIR
set -euo pipefail
python=$1 src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export CCACHE_BASEDIR=$src CCACHE_NOHASHDIR=1 CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
"$python" -m pip install -q --no-build-isolation --no-deps --target "$work/site" \
  --config-settings=build-dir="$work/build" "$src"
cd "$work"
PYTHONPATH=$work/site "$python" - "$work/site" <<'PY'
import sys
from pathlib import Path

import lego

site = Path(sys.argv[1])
assert Path(lego.__file__).parent == site / "lego", lego.__file__
loaded = {p["modality"]: p["file"] for p in lego.plugins() if p["loaded"]}
assert {"image", "video", "sound"} <= set(loaded), loaded
assert all(Path(f).is_relative_to(site) for f in loaded.values()), loaded
assert (site / "lego" / "bin" / "lego").exists() and (site / "lego" / "lib" / "cmake" / "Lego").is_dir()
print("pip install: lego", lego.__version__, "imports from", site, "with plugins", sorted(loaded))
PY
"$work/site/lego/bin/lego" plugins | grep -q "loaded   image" || { echo "FAIL: the installed lego command finds no plugins"; exit 1; }
