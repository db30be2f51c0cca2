#!/usr/bin/env python3
"""Image branch benchmark (issue 3): preprocessing speed of lego against HF (expand2square +
CLIPImageProcessor) on the same images in the same run, and encode latency of the tiny and the real-size
(CLIP ViT-L/14-336 + MLP projector, random weights) tower on the CPU.

    python bench/image_preprocess.py [--threads 1] [--runs 3] [--images 40]
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

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def expand2square(img, fill):
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), fill)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def make_images(dst: Path, n: int, kind: str):
    """Photo-like images (smooth gradients, blobs, mild noise) or pure noise (the decoders' worst case),
    of common camera and web sizes, half JPEG (quality 90) and half PNG."""
    rng = np.random.default_rng(0)
    sizes = [(640, 480), (1280, 720), (480, 640), (1024, 1024), (800, 533), (336, 336), (1920, 1080), (500, 375)]
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        if kind == "noise":
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        else:
            y, x = np.mgrid[0:h, 0:w].astype(np.float32)
            base = np.stack([x / w * 200, y / h * 180, (x + y) / (w + h) * 160], -1)
            for _ in range(6):
                cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(20, max(w, h) / 3)
                blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))[..., None]
                base = base * (1 - blob) + rng.uniform(0, 255, 3) * blob
            img = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        ext = "jpg" if i % 2 == 0 else "png"
        Image.fromarray(img).save(dst / f"{i:03d}.{ext}", quality=90)


def bench_bin(args):
    return Path(os.environ.get("LEGO_BUILD_DIR", ROOT / "build")) / "bin" / "image_bench"


def run_bench(args, *cmd):
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    out = subprocess.run([str(bench_bin(args)), *map(str, cmd)], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--skip-real", action="store_true", help="skip the real-size encode (slow on 2 cores)")
    args = ap.parse_args()
    import torch
    from transformers import CLIPImageProcessor

    torch.set_num_threads(args.threads)
    processor = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                   image_mean=list(MEAN), image_std=list(STD))
    fill = tuple(int(x * 255) for x in MEAN)
    for kind in ("photo-like", "noise"):
        with tempfile.TemporaryDirectory(prefix="lego-img-bench-") as tmp:
            make_images(Path(tmp), args.images, kind)
            files = sorted(Path(tmp).iterdir())
            hf_times = []
            for r in range(args.runs + 1):
                t0 = time.perf_counter()
                for f in files:
                    processor(expand2square(Image.open(f).convert("RGB"), fill), return_tensors="np")
                if r > 0:
                    hf_times.append(time.perf_counter() - t0)
            ours = run_bench(args, "preprocess", tmp, args.runs)
        hf_rate = len(files) / statistics.median(hf_times)
        our_rate = ours["items"] / statistics.median(ours["seconds"])
        print(f"preprocessing, {kind} ({len(files)} images 336x336..1920x1080, jpg+png, {args.threads} thread(s), "
              f"median of {args.runs}): lego {our_rate:.1f} images/s (decoding {ours['decode_share'] * 100:.0f}% of it), "
              f"HF {hf_rate:.1f} images/s, speed-up {our_rate / hf_rate:.2f}x (goal >= 3x)")
    tiny = run_bench(args, "encode", "tiny", args.runs)
    print(f"encode, tiny tower (336 px, width 32, 3 layers): {statistics.median(tiny['seconds']) * 1000:.1f} ms/image")
    if not args.skip_real:
        real = run_bench(args, "encode", "real", max(1, args.runs - 1))
        print(f"encode, real-size tower (CLIP ViT-L/14-336 + MLP2x projector, fp32): "
              f"{statistics.median(real['seconds']):.2f} s/image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
