#!/usr/bin/env bash
# The main job: installs what is missing, builds lego, makes a tiny random model (LLM + image branch),
# generates text from it, and asks it about an image with grounding output (JSON and a rendered image).
# Output lands in demo-out/. A random model writes random text: the point is the whole path working.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${LEGO_BUILD_DIR:-$root/build}
venv=${LEGO_VENV:-$HOME/.cache/lego/venv}
out=$root/demo-out
"$root/scripts/build.sh"
lego=$build/bin/lego
mkdir -p "$out"
rm -rf "$out/tiny"
echo "== plugins"
"$lego" plugins
echo "== init-model (tokenizer trained on configs/corpus/tiny.txt, random weights)"
"$lego" init-model --config "$root/configs/models/tiny.ini" --out "$out/tiny" --seed 7
echo "== generate: greedy"
"$lego" generate --model "$out/tiny" --prompt "The dog on the right" --max-new-tokens 24
echo "== generate: sampled (temperature 0.8, top-p 0.9, seed 1), as JSON"
"$lego" generate --model "$out/tiny" --prompt "Where does the sound come from?" --max-new-tokens 24 \
  --temperature 0.8 --top-p 0.9 --seed 1 --json
echo "== infer: an image question through the LEGO template, with grounding fields"
"$venv/bin/python" - "$out/scene.png" <<'PY'
import sys
from PIL import Image, ImageDraw
img = Image.new("RGB", (640, 400), (90, 140, 200))
d = ImageDraw.Draw(img)
d.rectangle((0, 300, 640, 400), fill=(70, 160, 70))
d.ellipse((420, 230, 520, 330), fill=(220, 40, 40))
img.save(sys.argv[1])
PY
"$lego" infer --model "$out/tiny" --image "$out/scene.png" --prompt "Where is the red ball?" \
  --max-new-tokens 24 --json --render "$out/scene-answer.png"
echo "wrote $out/scene-answer.png"
