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
echo "== infer: a video question (spans come back in seconds) and an image + sound question (sound localisation)"
"$venv/bin/python" - "$out/clip.mp4" "$out/bell.wav" <<'PY'
import sys
import numpy as np
import av
with av.open(sys.argv[1], "w") as c:
    s = c.add_stream("libx264", rate=10)
    s.width, s.height, s.pix_fmt = 160, 96, "yuv420p"
    for i in range(40):
        img = np.full((96, 160, 3), (90, 140, 200), np.uint8)
        img[50:80, (i * 4) % 140:(i * 4) % 140 + 20] = (220, 40, 40)
        for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
with av.open(sys.argv[2], "w") as c:
    s = c.add_stream("pcm_s16le", rate=16000, layout="mono")
    t = np.arange(3 * 16000) / 16000
    x = (0.3 * np.sin(2 * np.pi * 880 * t) * np.exp(-3 * (t % 1)) * 32767).astype(np.int16)
    f = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="s16", layout="mono")
    f.sample_rate = 16000
    for p in s.encode(f):
        c.mux(p)
    for p in s.encode():
        c.mux(p)
PY
"$lego" probe --in "$out/clip.mp4" --frames 8
"$lego" infer --model "$out/tiny" --video "$out/clip.mp4" --prompt "When does the red box cross the middle?" \
  --max-new-tokens 16 --json --render "$out/clip-answer.png"
"$lego" infer --model "$out/tiny" --image "$out/scene.png" --sound "$out/bell.wav" \
  --prompt "Where does the sound come from?" --max-new-tokens 16 --json
echo "wrote $out/clip-answer.png"
