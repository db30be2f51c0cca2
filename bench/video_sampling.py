#!/usr/bin/env python3
"""Video sampling and fbank benchmark (issue 4), all readers in one run with equal threads.

Media are made here with PyAV (FFmpeg): 60 s of 1280x720 H.264 and 30 s of 1920x1080 HEVC, 30 fps,
keyframe every 2 s. Uniform sampling of 8, 32 and 64 frames (the released index formula) to 224 x 224
RGB, timed for lego's io::VideoReader (bench/av_bench.cpp), torchcodec, PyAV (seek per target) and decord
(the release's reader). The readers come from bench/requirements.txt, which scripts/setup.sh installs; a
reader that fails stops the benchmark. Then fbank of 3 x 2 s clips: lego vs torchaudio.compliance.kaldi.

    python bench/video_sampling.py [--threads 2] [--runs 3] [--short]   (--short: 10 s / 5 s files)
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

ROOT = Path(__file__).resolve().parents[1]


def make_video(path, seconds, w, h, codec, fps=30):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast", "g": str(2 * fps)} if codec == "libx264" else {"preset": "ultrafast", "x265-params": f"keyint={2 * fps}:log-level=none"}
        y, x = np.mgrid[0:h, 0:w]
        for i in range(int(seconds * fps)):
            img = np.stack([(x + 3 * i) % 256, (y + 2 * i) % 256, ((x + y) // 2 + i) % 256], -1).astype(np.uint8)
            for p in s.encode(__import__("av").VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def indices(frames, n):
    return np.arange(0, frames, frames / min(n, frames)).astype(int)


def pyav_sample(path, n, threads):
    """PyAV with a seek to the keyframe before each target, decoding forward to it (lego's strategy)."""
    import av

    with av.open(str(path)) as c:
        st = c.streams.video[0]
        st.thread_type, st.codec_context.thread_count = "AUTO", threads
        total = st.frames
        fps = float(st.average_rate)
        out = []
        for i in indices(total, n):
            target = i / fps
            c.seek(int(target / st.time_base), stream=st, backward=True)
            for f in c.decode(st):
                if f.time is not None and f.time >= target - 0.5 / fps:
                    out.append(f.to_ndarray(format="rgb24", width=224, height=224))
                    break
        return out


def torchcodec_sample(path, n, threads):
    from torchcodec.decoders import VideoDecoder

    d = VideoDecoder(str(path), num_ffmpeg_threads=threads, seek_mode="exact")
    frames = d.get_frames_at(indices(len(d), n).tolist()).data
    import torch
    return torch.nn.functional.interpolate(frames.float(), size=(224, 224), mode="bicubic")


def decord_sample(path, n, threads):
    import decord

    vr = decord.VideoReader(str(path), width=224, height=224, num_threads=threads)
    return vr.get_batch(indices(len(vr), n).tolist()).asnumpy()


def timed(fn, runs):
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def lego_bench(*args):
    exe = Path(os.environ.get("LEGO_BUILD_DIR", ROOT / "build")) / "bin" / "av_bench"
    out = subprocess.run([str(exe), *map(str, args)], check=True, capture_output=True, text=True)
    return statistics.median(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--short", action="store_true")
    ap.add_argument("--media-dir", type=Path, help="keep the made media here and reuse them on later runs")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    scale = 6 if args.short else 1
    with tempfile.TemporaryDirectory(prefix="lego-av-bench-") as tmp:
        media = args.media_dir or Path(tmp)
        media.mkdir(parents=True, exist_ok=True)
        tag = "short" if args.short else "full"
        files = [(media / f"h264_720p_{tag}.mp4", 60 // scale, 1280, 720, "libx264"),
                 (media / f"hevc_1080p_{tag}.mp4", 30 // scale, 1920, 1080, "libx265")]
        for path, seconds, w, h, codec in files:
            if path.exists():
                continue
            t0 = time.perf_counter()
            make_video(path, seconds, w, h, codec)
            print(f"made {path.name}: {seconds} s {w}x{h} {codec} in {time.perf_counter() - t0:.0f} s", flush=True)
        readers = {"torchcodec": torchcodec_sample, "pyav": pyav_sample, "decord": decord_sample}
        print(f"uniform sampling to 224x224, {args.threads} threads, median of {args.runs} (seconds):")
        for path, *_ in files:
            for n in (8, 32, 64):
                row = {"lego": lego_bench("sample", path, n, args.runs, args.threads)}
                for name, fn in readers.items():
                    row[name] = timed(lambda: fn(path, n, args.threads), args.runs)
                fastest = min(v for k, v in row.items() if k != "lego")
                cells = "  ".join(f"{k} {v:.3f}" for k, v in row.items())
                print(f"  {path.name} n={n:2d}: {cells}   lego = {row['lego'] / row['torchcodec']:.2f}x torchcodec's time, "
                      f"{row['lego'] / fastest:.2f}x the fastest reference's", flush=True)
    import torchaudio

    wave = torch.randn(16000 * 10) * 0.1

    def torchaudio_clips():
        for i in range(3):
            clip = wave[int(8 / 3 * i * 16000): int((8 / 3 * i + 2) * 16000)].unsqueeze(0)
            torchaudio.compliance.kaldi.fbank(clip - clip.mean(), htk_compat=True, sample_frequency=16000,
                                              use_energy=False, window_type="hanning", num_mel_bins=128, dither=0.0,
                                              frame_length=25, frame_shift=10)

    ta = timed(torchaudio_clips, max(args.runs, 10))
    ours = lego_bench("fbank", max(args.runs, 10))
    print(f"fbank of 3 x 2 s clips: lego {ours * 1000:.2f} ms, torchaudio {ta * 1000:.2f} ms, "
          f"lego/torchaudio {ours / ta:.2f} (lego includes the pad/crop and normalisation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
