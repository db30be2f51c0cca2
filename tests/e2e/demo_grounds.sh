#!/usr/bin/env bash
# The demo's full schedule (scripts/demo.sh --retrain: synth, stages 0-2, eval) and the issue's bar on
# SynthGround's test split: REC Acc@0.5 >= 0.6, temporal R@1@0.5 >= 0.5, sound localisation Acc@0.5 >= 0.5.
# Labelled slow (about 15-20 minutes on 2 cores).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
"$root/scripts/demo.sh" --retrain
python3 - "$root/demo-out" <<'PY'
import json, sys
out = sys.argv[1]
bars = [("rec", "acc@0.5", 0.6), ("temporal", "r1@0.5", 0.5), ("sound-loc", "acc@0.5", 0.5)]
failed = False
for task, metric, bar in bars:
    r = json.load(open(f"{out}/eval-{task}.json"))
    got, chance = r["metrics"][metric], r["chance"][metric]
    ok = got >= bar
    failed |= not ok
    print(f"{task}: {metric} {got:.3f} (chance {chance:.3f}, bar {bar}) {'ok' if ok else 'BELOW THE BAR'}")
sys.exit(1 if failed else 0)
PY
