#!/usr/bin/env bash
# The main job: installs what is missing, builds lego, writes the SynthGround benchmark, trains the tiny
# grounding model through the stages (0: everything, since its tiny encoders have no pretrained weights;
# 1: adapters and new tokens; 2: adapters and LLM, stage 1's data mixed back in), evaluates it on the test
# split (chance beside every number) and answers an image, a video and an image + sound question with
# their grounding drawn. Everything lands in demo-out/. The trained model is cached under
# ~/.cache/lego/demo/KEY (KEY: the configs, templates and seed), so a second run answers at once;
# --retrain trains again.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${LEGO_BUILD_DIR:-$root/build}
out=$root/demo-out
work=$out/work
retrain=0
for arg in "$@"; do
  case $arg in
    --retrain) retrain=1 ;;
    *) echo "usage: scripts/demo.sh [--retrain]" >&2; exit 2 ;;
  esac
done
"$root/scripts/build.sh"
lego=$build/bin/lego
seed=7
model_config=$root/configs/models/tiny-ground.ini
key=$(cat "$model_config" "$root"/configs/train/tiny-stage*.ini "$root"/configs/templates/*.txt \
  "$root/configs/corpus/synthground.txt" | sha256sum | cut -c1-16)-seed$seed
cache=${LEGO_CACHE_DIR:-$HOME/.cache/lego}/demo/$key
mkdir -p "$out"
echo "== plugins"
"$lego" plugins
if [ $retrain = 1 ] || [ ! -f "$cache/model/model.safetensors" ]; then
  start=$(date +%s)
  rm -rf "$work"
  mkdir -p "$work"
  echo "== synth: SynthGround (small): images, videos and sounds with their questions and grounded answers"
  "$lego" synth --config "$model_config" --out "$work/synth" --seed $seed --size small
  echo "== init-model: the tiny grounding model (tokenizer trained on configs/corpus/synthground.txt, random weights)"
  "$lego" init-model --config "$model_config" --out "$work/init" --seed $seed
  echo "== stage 0: the tiny encoders have no pretrained weights (the real model starts from CLIP, EVA and"
  echo "   ImageBind), so this stage trains everything on every task"
  "$lego" train --config "$root/configs/train/tiny-stage0.ini"
  echo "== stage 1: adapters and the added tokens' embeddings, on the captions"
  "$lego" train --config "$root/configs/train/tiny-stage1.ini"
  echo "== stage 2: adapters and LLM on the grounding tasks, stage 1's data mixed back in (alpha = 0.1)"
  "$lego" train --config "$root/configs/train/tiny-stage2.ini"
  echo "trained in $(( $(date +%s) - start )) s"
  # The cache: the final model and the test split it is scored on.
  rm -rf "$cache.partial"
  mkdir -p "$cache.partial/synth/media"
  cp -r "$work/stage2/model" "$cache.partial/model"
  cp "$work"/synth/test-*.json "$cache.partial/synth/"
  cp -r "$work/synth/media/test" "$cache.partial/synth/media/test"
  for s in 0 1 2; do cp "$work/stage$s/loss.png" "$out/loss-stage$s.png"; done
  rm -rf "$cache"
  mv "$cache.partial" "$cache"
else
  echo "== using the trained model cached in $cache (scripts/demo.sh --retrain trains again)"
fi
model=$cache/model
synth=$cache/synth
echo "== eval on SynthGround's test split (chance: answers drawn from the split's own references)"
for task in rec temporal sound-loc caption; do
  file=$synth/test-${task/sound-loc/sound_localization}.json
  "$lego" eval --model "$model" --task $task --data "$file" --max-new-tokens 48 --report "$out/eval-$task.json" >/dev/null
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
for task in ["rec", "temporal", "sound-loc", "caption"]:
    r = json.load(open(f"{out}/eval-{task}.json"))
    cells = ", ".join(f"{k} {v:.3f} (chance {r['chance'][k]:.3f})" for k, v in sorted(r["metrics"].items()))
    print(f"{task:10s} n={r['samples']}: {cells}")
PY
echo "== infer: one test image, video and image + sound, answered with their grounding drawn"
first() {  # the first row of a test file: its media paths and its question, without placeholders
  python3 - "$synth/$1" <<'PY'
import json, re, sys
row = json.load(open(sys.argv[1]))[0]
q = re.sub(r"<[a-z]+>\n?", "", row["conversations"][0]["value"]).strip()
media = " ".join(f"--media {k}={sys.argv[1].rsplit('/', 1)[0]}/{v}" for k, v in row.items() if k not in ("id", "conversations"))
print(media)
print(q)
print(row["conversations"][1]["value"])
PY
}
ask() {  # ask TEST_FILE NAME: answers the file's first question, writes NAME.json and NAME.png
  mapfile -t row < <(first "$1")
  echo "-- question: ${row[1]}   (reference answer: ${row[2]})"
  # shellcheck disable=SC2086
  "$lego" infer --model "$model" ${row[0]} --prompt "${row[1]}" --max-new-tokens 48 --json \
    --render "$out/$2.png" | tee "$out/$2.json"
  echo "wrote $out/$2.png"
}
ask test-rec.json image-answer
ask test-temporal.json video-answer
ask test-sound_localization.json sound-answer
