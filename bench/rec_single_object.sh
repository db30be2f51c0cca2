#!/usr/bin/env bash
# How far the demo's tiny model (configs/models/tiny-ground.ini) gets at locating one object: SynthGround
# scenes of a single object (lego synth --max-objects 1), REC rows only, every part trained (stage 0's
# "encoder adapter llm"), then lego eval on 200 test rows with chance beside it. Not a test: about 15
# minutes on 2 cores. Usage: bench/rec_single_object.sh [STEPS] [LR] [THREADS] (2000, 1e-3, 2).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lego=${LEGO_BIN:-$root/build/bin/lego}
steps=${1:-2000} lr=${2:-1e-3} threads=${3:-2}
work=$(mktemp -d /tmp/lego-rec1.XXXXXX)
trap 'rm -rf "$work"' EXIT
counts=()
for s in train val test; do
  for t in rec caption temporal sound_localization; do
    n=0
    [ "$s.$t" = train.rec ] && n=6000
    [ "$s.$t" = test.rec ] && n=200
    counts+=(--count "$s.$t=$n")
  done
done
"$lego" synth --config "$root/configs/models/tiny-ground.ini" --out "$work/synth" --seed 11 --max-objects 1 "${counts[@]}" >/dev/null
"$lego" init-model --config "$root/configs/models/tiny-ground.ini" --out "$work/init" --seed 7 >/dev/null
cat > "$work/stage.ini" <<INI
[model]
dir = $work/init
[data]
train = $work/synth/train-rec.json
masking = human_turns
max_length = 512
[train]
out = $work/out
epochs = 1000
max_steps = $steps
batch_size = 16
save_every = 100000
log_every = 100
seed = 7
[optim]
lr = $lr
weight_decay = 0
warmup_ratio = 0.03
[stage]
name = rec1
train = encoder adapter llm
INI
start=$(date +%s)
"$lego" train --threads "$threads" --config "$work/stage.ini" 2>&1 | tail -n 3
echo "trained $steps steps in $(( $(date +%s) - start )) s"
"$lego" eval --threads "$threads" --model "$work/out/model" --task rec --data "$work/synth/test-rec.json" \
  --max-new-tokens 32 --report "$work/report.json" >/dev/null
python3 - "$work/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("single-object REC, n=%d: " % r["samples"] + ", ".join(
    f"{k} {v:.3f} (chance {r['chance'][k]:.3f})" for k, v in sorted(r["metrics"].items())))
PY
