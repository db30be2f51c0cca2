#!/usr/bin/env python3
"""`lego serve` under load: --clients requests at once against the same requests one by one.

Makes the tiny grounding model (configs/models/tiny-ground.ini, random weights) and a little SynthGround media
unless --model and --media are given, starts `lego serve --max-batch --clients`, and sends --clients chat
requests with mixed media (image, video, sound), each sampled with its own seed and a short answer
(--max-tokens): first one by one, then all at once from as many threads. Every concurrent reply must equal its
one-by-one reply (same seed), and none may be lost. Prints, for each of --repeat runs, the wall time of both
phases, the concurrent run's tokens/s and p50/p99 latency and its speed-up; then the scheduler's median time
by stage and the median speed-up.

    python bench/serve_load.py [--clients 64] [--max-tokens 16] [--max-batch 16] [--threads 2] [--repeat 1]
                               [--lego build/bin/lego]
"""
import argparse
import base64
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = {"image": "Where is the red ball?", "video": "When does the ball move?", "sound": "Where is the sound?"}


def run(lego, *args):
    subprocess.run([lego, *map(str, args)], check=True, capture_output=True, text=True)


def make_model(lego, d: Path):
    cfg = ROOT / "configs/models/tiny-ground.ini"
    run(lego, "init-model", "--config", cfg, "--out", d / "model", "--seed", 3)
    counts = {f"{s}.{t}": 0 for s in ("train", "val", "test") for t in ("rec", "caption", "temporal", "sound_localization")}
    counts.update({"train.rec": 1, "train.temporal": 1, "train.sound_localization": 1})
    run(lego, "synth", "--config", cfg, "--out", d / "synth", "--seed", 5,
        *[a for k, v in counts.items() for a in ("--count", f"{k}={v}")])
    media = {}
    for task, key in (("rec", "image"), ("temporal", "video"), ("sound_localization", "sound")):
        rows = json.loads((d / "synth" / f"train-{task}.json").read_text())
        media[key] = d / "synth" / rows[0][key]
    return d / "model", media


def part(path: Path):
    data = base64.b64encode(path.read_bytes()).decode()
    if path.suffix == ".wav":
        return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".mp4": "video/mp4"}[path.suffix]
    kind = "image_url" if mime.startswith("image/") else "video_url"
    return {"type": kind, kind: {"url": f"data:{mime};base64,{data}"}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of the server")
    ap.add_argument("--repeat", type=int, default=1, help="runs of both phases on the same server (a shared VM's timings vary)")
    ap.add_argument("--model", type=Path)
    ap.add_argument("--media", nargs=3, type=Path, metavar=("IMAGE", "VIDEO", "SOUND"))
    ap.add_argument("--lego", default=str(ROOT / "build/bin/lego"))
    a = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if a.model:
            model, media = a.model, dict(zip(("image", "video", "sound"), a.media))
        else:
            model, media = make_model(a.lego, Path(tmp))
        parts = {k: part(p) for k, p in media.items()}
        proc = subprocess.Popen([a.lego, "serve", "--model", str(model), "--port", "0", "--threads", str(a.threads),
                                 "--max-batch", str(a.max_batch), "--max-queue", str(a.clients * 2)],
                                stderr=subprocess.PIPE, text=True)
        url = None
        for line in proc.stderr:
            m = re.search(r"on (http://[\d.]+:\d+)/", line)
            if m:
                url = m.group(1)
                break
        if url is None:
            sys.exit(f"lego serve did not start ({proc.wait()})")
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
        kinds = ["image", "video", "sound"]
        requests = [{"model": "lego", "temperature": 0.8, "seed": i, "max_tokens": a.max_tokens, "stop": ["@@"],
                     "messages": [{"role": "user", "content": [parts[kinds[i % 3]], {"type": "text", "text": QUESTIONS[kinds[i % 3]]}]}]}
                    for i in range(a.clients)]

        def send(body):
            t0 = time.perf_counter()
            req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=600) as r:
                reply = json.loads(r.read())
            return reply["choices"][0]["message"]["content"], reply["usage"]["completion_tokens"], time.perf_counter() - t0

        def busy():
            with urllib.request.urlopen(url + "/metrics", timeout=60) as r:
                text = r.read().decode()
            return {m.group(1): float(m.group(2)) for m in re.finditer(r'lego_busy_seconds_total\{stage="(\w+)"\} ([\d.]+)', text)}

        runs = []
        try:
            send(requests[0])  # warm-up
            for _ in range(a.repeat):
                b0 = busy()
                t0 = time.perf_counter()
                alone = [send(r) for r in requests]
                t_alone = time.perf_counter() - t0
                b1 = busy()
                t0 = time.perf_counter()
                with ThreadPoolExecutor(a.clients) as pool:
                    together = list(pool.map(send, requests))
                t_together = time.perf_counter() - t0
                b2 = busy()
                runs.append((alone, t_alone, together, t_together, b0, b1, b2))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)

    print(f"lego serve, {a.clients} requests (mixed image/video/sound, sampled, <= {a.max_tokens} tokens), "
          f"max batch {a.max_batch}, {a.threads} threads, {a.repeat} run(s)")
    print(f"| run | one by one s | {a.clients} at once s | tokens/s at once | p50 s | p99 s | speed-up |")
    print(f"|---|---|---|---|---|---|---|")
    mismatches = 0
    for i, (alone, t_alone, together, t_together, b0, b1, b2) in enumerate(runs):
        mismatches += sum(x[0] != y[0] for x, y in zip(alone, together))
        lat = sorted(x[2] for x in together)
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
        tokens = sum(x[1] for x in together)
        print(f"| {i + 1} | {t_alone:.2f} | {t_together:.2f} | {tokens / t_together:.1f} | {p(0.5):.3f} | {p(0.99):.3f} | "
              f"{t_alone / t_together:.2f}x |")
    for name, at in (("one by one", 5), (f"{a.clients} at once", 6)):
        stage = {k: statistics.median(r[at][k] - r[at - 1][k] for r in runs) for k in ("prepare", "prefill", "decode")}
        print(f"scheduler time, {name} (median): " + ", ".join(f"{k} {v:.2f} s" for k, v in stage.items()))
    ups = sorted(r[1] / r[3] for r in runs)
    print(f"speed-up (requests/s): median {statistics.median(ups):.2f}x, range {ups[0]:.2f}-{ups[-1]:.2f}x over {len(ups)} run(s) "
          f"(goal >= 3x); replies differing from one by one: {mismatches} of {a.clients * len(runs)}")
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
