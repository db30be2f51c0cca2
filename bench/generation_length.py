#!/usr/bin/env python3
"""Cost of a decode step as the answer grows: the first hundred tokens against the last hundred.

A tiny random model (configs/models/tiny.ini, text sections only, with room for the answer) samples --new-tokens tokens past
EOS with `lego generate --json`; `timings.step_ms` holds the wall time of every step. With text decoding
and stop-string search that are incremental the step time stays flat; re-decoding the whole answer at
every step makes the last steps slower. Reported: mean ms/token of the first and last --window steps,
median over --runs runs.

    python bench/generation_length.py [--new-tokens 2000] [--runs 3] [--threads 1] [--lego build/bin/lego]
"""
import argparse
import configparser
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def text_only_config(dst: Path) -> Path:
    """tiny.ini's [llm] and [tokenizer] sections alone, so that no modality plugin is needed."""
    src = configparser.ConfigParser(interpolation=None)
    src.read(ROOT / "configs/models/tiny.ini")
    out = configparser.ConfigParser(interpolation=None)
    out["llm"] = dict(src["llm"])
    out["tokenizer"] = dict(src["tokenizer"])
    out["tokenizer"]["corpus"] = str((ROOT / "configs/models" / src["tokenizer"]["corpus"]).resolve())
    path = dst / "tiny-text.ini"
    with open(path, "w") as f:
        out.write(f)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=2000)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stop", action="append", default=[], help="stop string to search for (repeatable)")
    ap.add_argument("--lego", type=Path, default=Path(os.environ.get("LEGO_BIN", ROOT / "build/bin/lego")))
    args = ap.parse_args()
    if args.new_tokens < 2 * args.window:
        ap.error("--new-tokens must be at least twice --window")

    with tempfile.TemporaryDirectory(prefix="lego-genlen-") as tmp:
        model = Path(tmp) / "tiny"
        subprocess.run([str(args.lego), "init-model", "--config", str(text_only_config(Path(tmp))),
                        "--out", str(model), "--set", f"llm.max_position={args.new_tokens + 96}"],
                       check=True, capture_output=True)
        cmd = [str(args.lego), "generate", "--model", str(model), "--prompt", "The dog", "--json",
               "--ignore-eos", "--max-new-tokens", str(args.new_tokens), "--temperature", "1", "--seed", "1",
               "--threads", str(args.threads)]
        for s in args.stop:
            cmd += ["--stop", s]
        first, last, total, text_bytes = [], [], [], 0
        for _ in range(args.runs):
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.splitlines()[0])
            steps = r["timings"]["step_ms"]
            if len(steps) != args.new_tokens:
                sys.exit(f"expected {args.new_tokens} steps, got {len(steps)} ({r['finish_reason']})")
            # The last step has no forward pass after it; leave it out of the last window.
            first.append(statistics.mean(steps[:args.window]))
            last.append(statistics.mean(steps[-args.window - 1:-1]))
            total.append(r["timings"]["decode_ms"])
            text_bytes = len(r["text"].encode())

    f, l = statistics.median(first), statistics.median(last)
    print(f"{args.new_tokens} tokens ({text_bytes} bytes of text), {args.threads} thread(s), "
          f"median of {args.runs} runs")
    print(f"ms/token: first {args.window} {f:.3f}   last {args.window} {l:.3f}   ratio last/first {l / f:.2f}   "
          f"total decode {statistics.median(total):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
