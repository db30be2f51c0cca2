#!/usr/bin/env bash
# The main job: installs what is missing, builds lego, makes a tiny random model and generates from it.
# Output lands in demo-out/. (A random model writes random text: the point is the whole path working.)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${LEGO_BUILD_DIR:-$root/build}
out=$root/demo-out
"$root/scripts/build.sh"
lego=$build/bin/lego
rm -rf "$out/tiny"
"$lego" init-model --config "$root/configs/models/tiny.ini" --out "$out/tiny" --seed 7
echo "== greedy"
"$lego" generate --model "$out/tiny" --prompt "The dog on the right" --max-new-tokens 24
echo "== sampled (temperature 0.8, top-p 0.9, seed 1), as JSON"
"$lego" generate --model "$out/tiny" --prompt "Where does the sound come from?" --max-new-tokens 24 \
  --temperature 0.8 --top-p 0.9 --seed 1 --json
