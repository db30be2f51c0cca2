#!/usr/bin/env python3
"""What the Python bindings cost (issue 11's benchmark; not a test).

1. Per request: the same request (the tiny model, one picture, greedy, N new tokens) answered R times by
   `lego.Model.generate` and by the C++ API (bench/request_bench: Pipeline::answer, the call the binding
   makes), each after warm-up runs, in alternating rounds; medians compared. Goal: Python within 5 %.
2. `import lego` beyond `import torch`, in fresh interpreters, median of several. Goal: < 0.5 s.

    python bench/python_overhead.py [--build build] [--work DIR] [--runs 30] [--rounds 3] [--new-tokens 8]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lego(build, *args):
    subprocess.run([str(build / "bin" / "lego"), *map(str, args)], check=True, capture_output=True, text=True)


def make_model(build, work):
    if not (work / "model" / "model.ini").exists():
        lego(build, "init-model", "--config", ROOT / "configs/models/tiny-ground.ini", "--out", work / "model",
             "--seed", 3)
    if not (work / "synth" / "train-rec.json").exists():
        counts = {f"{s}.{t}": (2 if (s, t) == ("train", "rec") else 0) for s in ("train", "val", "test")
                  for t in ("rec", "caption", "temporal", "sound_localization")}
        args = [a for k, v in counts.items() for a in ("--count", f"{k}={v}")]
        lego(build, "synth", "--config", ROOT / "configs/models/tiny-ground.ini", "--out", work / "synth",
             "--seed", 5, *args)
    row = json.loads((work / "synth" / "train-rec.json").read_text())[0]
    return work / "model", work / "synth" / row["image"]


def import_times(build, n):
    code = ("import time; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); import lego; "
            "t2 = time.perf_counter(); print(t1 - t0, t2 - t1)")
    env = dict(os.environ, PYTHONPATH=str(build / "python"))
    torch_s, lego_s = [], []
    for _ in range(n):
        out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
        a, b = map(float, out.stdout.split())
        torch_s.append(a)
        lego_s.append(b)
    return statistics.median(torch_s), statistics.median(lego_s)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", type=Path, default=ROOT / "build")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--runs", type=int, default=30, help="timed requests per round and side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--imports", type=int, default=7)
    args = ap.parse_args()
    build = args.build.resolve()
    sys.path.insert(0, str(build / "python"))
    import torch

    import lego as lg

    work = args.work or Path(tempfile.mkdtemp(prefix="lego-pybench-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir, image = make_model(build, work)
    prompt = "Output the coordinate of the red circle."
    warmup = 3
    model = lg.Model.load(model_dir)
    py_ms, cpp_ms = [], []
    for _ in range(args.rounds):
        out = subprocess.run([str(build / "bin" / "request_bench"), "--model", str(model_dir), "--prompt", prompt,
                              "--media", f"image={image}", "--max-new-tokens", str(args.new_tokens),
                              "--runs", str(args.runs + warmup)], check=True, capture_output=True, text=True)
        cpp_ms += json.loads(out.stdout)["ms"][warmup:]
        for i in range(args.runs + warmup):
            t0 = time.perf_counter()
            r = model.generate(prompt, {"image": image}, max_new_tokens=args.new_tokens)
            if i >= warmup:
                py_ms.append((time.perf_counter() - t0) * 1e3)
    torch_s, lego_s = import_times(build, args.imports)
    py, cpp = statistics.median(py_ms), statistics.median(cpp_ms)
    print(f"lego Python bindings, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds x {args.runs} requests ({r.generated_tokens} new tokens, one picture)")
    print()
    print("| measure | C++ API | Python | ratio | goal |")
    print("|---|---|---|---|---|")
    print(f"| request, median ms | {cpp:.2f} | {py:.2f} | {py / cpp:.3f} | <= 1.05 |")
    print(f"| request, mean ms | {statistics.mean(cpp_ms):.2f} | {statistics.mean(py_ms):.2f} | "
          f"{statistics.mean(py_ms) / statistics.mean(cpp_ms):.3f} | |")
    print(f"| import, median s (fresh interpreter) | import torch {torch_s:.3f} | import lego after it "
          f"{lego_s:.3f} | | < 0.5 s |")


if __name__ == "__main__":
    main()
