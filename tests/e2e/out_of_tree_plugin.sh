#!/usr/bin/env bash
# An out-of-tree plugin built against the *installed* SDK (find_package(Lego)) loads like an in-tree one.
# Usage: out_of_tree_plugin.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build=$1 src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
cmake -S "$src/examples/pooled_image" -B "$work/plugin" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DLego_DIR="$work/prefix/lib/cmake/Lego" >/dev/null
cmake --build "$work/plugin" >/dev/null
out=$("$work/prefix/bin/lego" plugins --json --plugin-dir "$work/plugin")
echo "$out"
echo "$out" | grep -q '"modality": "pooled"' || { echo "FAIL: pooled plugin not listed"; exit 1; }
echo "$out" | python3 -c '
import json, sys
records = {r["modality"]: r for r in json.load(sys.stdin) if r["modality"]}
for name, tokens in (("pooled", 16), ("image", 576)):
    r = records.get(name)
    assert r and r["state"] == "loaded" and r["tokens"] == tokens, f"{name}: {r}"
print("out-of-tree plugin loaded next to the installed image plugin")
'
