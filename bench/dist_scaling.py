#!/usr/bin/env python3
"""Data parallel scaling of `lego train` on the CPU (issue 10): tokens/s of 2 ranks x 1 thread (`lego train
--nproc 2`, Gloo over loopback) against 1 rank x 1 thread, the same per-rank batch, on the demo's tiny model
(configs/models/tiny-ground.ini) and the REC data of bench/train_throughput.py. Tokens/s is lego's own
metrics.jsonl figure (every rank's tokens of the logged interval, over its wall time), the first interval
(warm-up) left out. Each round runs the three forms below back to back; the scaling is the median over the
rounds of each round's ratio, since this VM's speed changes between spells of minutes (the best of each
form over all rounds would compare one spell with another). Goal: >= 1.8x.

Beside it, the machine's own ceiling: two independent 1-rank runs at the same time (no communication at
all), their tokens/s added. On a machine whose two cores share memory bandwidth and caches this is below 2x,
and no data parallel run can beat it.

    python bench/dist_scaling.py [--runs 5] [--steps 60] [--batch 8] [--precision fp32]
                                 [--set KEY=VALUE ...] [--lego build/bin/lego]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import ROOT, prepare  # noqa: E402

WARMUP = 5


def start(lego: Path, stage: Path, ranks: int, out: Path, overrides=()):
    subprocess.run(["rm", "-rf", str(out)], check=True)
    cmd = [str(lego), "train", "--config", str(stage), "--threads", "1", "--set", f"train.out={out}"]
    for kv in overrides:
        cmd += ["--set", kv]
    if ranks > 1:
        cmd += ["--nproc", str(ranks)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def tokens_per_s(proc, out: Path, steps: int) -> float:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"lego train failed: {err.strip()}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    timed = records[1:]
    if len(timed) * WARMUP != steps:
        raise SystemExit(f"metrics.jsonl: {len(records)} records, expected {1 + steps // WARMUP}")
    # Each record's tokens/s covers WARMUP steps; weight by time: total tokens / total seconds.
    tokens = [r["tokens_per_s"] for r in timed]
    seconds = [1 / t for t in tokens]  # per unit of tokens; every interval has the same token count
    return len(tokens) / sum(seconds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="rounds")
    ap.add_argument("--steps", type=int, default=60, help="timed steps (a multiple of 5), after 5 of warm-up")
    ap.add_argument("--batch", type=int, default=8, help="examples per rank per step")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="train.precision of both runs")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a stage setting for every run, passed to `lego train --set` (e.g. train.bucket_mb=4)")
    ap.add_argument("--lego", type=Path, default=Path(os.environ.get("LEGO_BIN", ROOT / "build/bin/lego")))
    args = ap.parse_args()
    if args.steps % WARMUP or args.steps <= 0 or args.runs < 1:
        ap.error(f"--steps must be a positive multiple of {WARMUP}, --runs at least 1")
    with tempfile.TemporaryDirectory(prefix="lego-bench-dist-") as tmp:
        work = Path(tmp)
        # Data for the 2-rank run's global batch; the 1-rank run reads the same rows.
        _, stage = prepare(args.lego, work, ROOT / "configs/models/tiny-ground.ini", args.batch * 2, WARMUP, args.steps,
                           args.precision)
        text = stage.read_text()
        per_rank = stage.with_name("per-rank.ini")
        per_rank.write_text(text.replace(f"batch_size = {args.batch * 2}", f"batch_size = {args.batch}")
                            .replace(f"dump_gradients = {work / 'first-step.safetensors'}\n", ""))
        one, two, apart = [], [], []
        print("round   1 rank  2 ranks  scaling  apart (ceiling)")
        for r in range(args.runs):
            one.append(tokens_per_s(start(args.lego, per_rank, 1, work / "one", args.set), work / "one", args.steps))
            two.append(tokens_per_s(start(args.lego, per_rank, 2, work / "two", args.set), work / "two", args.steps))
            a, b = start(args.lego, per_rank, 1, work / "a", args.set), start(args.lego, per_rank, 1, work / "b", args.set)
            apart.append(tokens_per_s(a, work / "a", args.steps) + tokens_per_s(b, work / "b", args.steps))
            print(f"{r + 1:5d} {one[-1]:8.0f} {two[-1]:8.0f} {two[-1] / one[-1]:7.2f}x {apart[-1]:6.0f} "
                  f"({apart[-1] / one[-1]:.2f}x)", flush=True)
    load = os.getloadavg()
    scaling = statistics.median(t / o for t, o in zip(two, one))
    ceiling = statistics.median(a / o for a, o in zip(apart, one))
    print(f"lego train, tiny model (configs/models/tiny-ground.ini), batch {args.batch} per rank, {args.steps} timed "
          f"steps, {args.precision}{''.join(' --set ' + kv for kv in args.set)}, 1 thread per rank, Gloo over loopback; "
          f"{args.runs} round(s); load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"1 rank : {statistics.median(one):8.0f} tok/s (median)")
    print(f"2 ranks: {statistics.median(two):8.0f} tok/s (median)")
    print(f"scaling: {scaling:.2f}x, the median of the rounds' ratios (goal >= 1.8x)")
    print(f"ceiling: two independent 1-rank runs at once, no communication: {ceiling:.2f}x; data parallel reaches "
          f"{scaling / ceiling * 100:.0f} % of it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
