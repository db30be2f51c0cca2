#!/usr/bin/env python3
"""The whole LEGO-7B on a CPU: memory, encode and decode times of `lego infer` on an image, a video and a sound.

What it does (one run, one table):
  1. a 32000-piece sentencepiece tokenizer (word-level, made here: LLaMA's cannot be downloaded) and
     `lego init-model --config configs/models/lego-7b.ini --dtype bf16`: every released shape (Vicuna-7B,
     CLIP ViT-L/14-336 + projector, EVA ViT-g/14 + BLIP-2 Q-Former + video Q-Former, ImageBind-huge audio +
     audio Q-Former), random weights, streamed to disk; its time and peak RSS;
  2. `lego quantize --to int8` and `--to int4` (group 32) of that model; times and peak RSS;
  3. media rendered by `lego synth` from the same model config (an image, a video, a sound);
  4. for each of bf16, int8, int4: one `lego infer --dtype bf16 --json` with all three media in one prompt
     (the released order: sound, video, image), greedy, --new-tokens generated with --ignore-eos; its peak
     RSS (the kernel's maxrss of that process: mapped weight pages count), encode time (all three media),
     prefill time and tokens, decode ms/token.

Peak RSS is measured per process with wait4(); the machine's RAM is printed beside it. The models are cached
under --work (default ~/.cache/lego/whole-model) and reused; `--clean` deletes them at the end.

    python bench/whole_model.py [--work DIR] [--formats bf16,int8,int4] [--frames 64] [--new-tokens 16]
                                [--threads 0] [--lego build/bin/lego] [--json-out FILE] [--clean]

Time, disk and memory on 2 cores (an AVX2 EPYC, 23.5 GiB): init-model 2 min (peak RSS 0.95 GiB), each quantize
2.5 min; each infer 7 to 8 min, dominated by EVA ViT-g on the video's 64 frames (~290 s; --frames reads fewer)
and the prefill of 657 prompt tokens (576 image + 64 video + 8 sound tokens and the text; 100-130 s); peak RSS
16.1 / 10.5 / 7.5 GiB for bf16 / int8 / int4. Disk: 16.5 GB (bf16) + 10.4 GB (int8) + 7.1 GB (int4).
Needs: lego built, the Python package sentencepiece.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "models" / "lego-7b.ini"
VOCAB = 32000
PROMPT = "<sound> <video> <image> Describe what you hear, what happens in the video and where the main object of the picture is."


def fail(message: str) -> None:
    print(f"whole_model.py: {message}", file=sys.stderr)
    sys.exit(1)


def run(cmd, log: Path):
    """Runs cmd, its output into `log`; returns (seconds, peak RSS in GiB, stdout). Fails on a non-zero exit."""
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=out, text=True)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        fail(f"{' '.join(map(str, cmd))} exited with {code}; see {log}:\n{log.read_text()[-2000:]}")
    return seconds, usage.ru_maxrss / 2**20, stdout


def make_tokenizer(work: Path) -> Path:
    """A word-level sentencepiece model with exactly 32000 pieces (<unk>=0, <s>=1, </s>=2), as LLaMA's has."""
    out = work / "tokenizer.model"
    if out.exists():
        return out
    try:
        import sentencepiece as spm
    except ImportError:
        fail("the Python package sentencepiece is needed (scripts/setup.sh installs it into lego's environment)")
    corpus = work / "words.txt"
    corpus.write_text("\n".join(f"w{i}x" for i in range(VOCAB - 3)) + "\n")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(work / "tokenizer"), vocab_size=VOCAB,
                                   model_type="word", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
                                   num_threads=1)
    corpus.unlink()
    (work / "tokenizer.vocab").unlink()
    return out


def set_video_frames(ini: Path, frames: int) -> None:
    lines, section, done = ini.read_text().splitlines(), "", False
    out = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("["):
            if section == "video" and not done:
                out.append(f"frames = {frames}")
                done = True
            section = stripped.strip("[]")
        elif section == "video" and stripped.split("=")[0].strip() == "frames":
            if not done:
                out.append(f"frames = {frames}")
                done = True
            continue
        out.append(line)
    if section == "video" and not done:
        out.append(f"frames = {frames}")
    ini.write_text("\n".join(out) + "\n")


def dir_gib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "lego" / "whole-model")
    ap.add_argument("--formats", default="bf16,int8,int4")
    ap.add_argument("--frames", type=int, default=64, help="video frames read (the released model: 64)")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--lego", type=Path, default=ROOT / "build" / "bin" / "lego")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--clean", action="store_true", help="delete the models under --work at the end")
    args = ap.parse_args()
    formats = args.formats.split(",")
    if any(f not in ("bf16", "int8", "int4") for f in formats):
        fail(f"--formats {args.formats}: bf16, int8 and int4 only")
    if not args.lego.exists():
        fail(f"{args.lego} not found; build lego first (scripts/build.sh)")
    args.work.mkdir(parents=True, exist_ok=True)
    logs = args.work / "logs"
    logs.mkdir(exist_ok=True)
    steps = {}

    tokenizer = make_tokenizer(args.work)
    bf16 = args.work / "bf16"
    if not (bf16 / "model.ini").exists():
        print("lego init-model (bf16, streamed) ...", flush=True)
        s, rss, _ = run([args.lego, "init-model", "--config", CONFIG, "--tokenizer", tokenizer, "--dtype", "bf16",
                         "--out", bf16], logs / "init-model.log")
        steps["init-model bf16"] = (s, rss)
    for f in formats:
        if f != "bf16" and not (args.work / f / "model.ini").exists():
            print(f"lego quantize --to {f} ...", flush=True)
            s, rss, _ = run([args.lego, "quantize", "--model", bf16, "--to", f, "--out", args.work / f],
                            logs / f"quantize-{f}.log")
            steps[f"quantize {f}"] = (s, rss)

    synth = args.work / "synth"
    if not synth.exists():
        print("lego synth (media at the released sizes) ...", flush=True)
        run([args.lego, "synth", "--config", CONFIG, "--out", synth, "--seed", "3", "--count", "train.caption=0",
             "--count", "test.caption=1", "--count", "test.temporal=1", "--count", "test.sound_localization=1",
             "--count", "test.rec=0", "--count", "train.rec=0", "--count", "train.temporal=0",
             "--count", "train.sound_localization=0"], logs / "synth.log")
    media = {}
    for suffix in ("wav", "mp4", "png"):
        found = sorted(synth.rglob(f"*.{suffix}"))
        if not found:
            fail(f"lego synth wrote no .{suffix} under {synth}")
        media[suffix] = found[0]

    # Frames read from a video are a reading setting of the model's [video] section, not a weight shape.
    for f in formats:
        set_video_frames(args.work / f / "model.ini", args.frames)

    rows = []
    for f in formats:
        print(f"lego infer {f} (sound + video + image) ...", flush=True)
        cmd = [args.lego, "infer", "--model", args.work / f, "--dtype", "bf16", "--threads", args.threads,
               "--media", f"sound={media['wav']}", "--media", f"video={media['mp4']}", "--media", f"image={media['png']}",
               "--prompt", PROMPT, "--max-new-tokens", args.new_tokens, "--ignore-eos", "--json"]
        s, rss, out = run(cmd, logs / f"infer-{f}.log")
        answer = json.loads(out)
        t = answer["timings"]
        rows.append({"format": f, "model_gib": dir_gib(args.work / f), "peak_rss_gib": rss, "wall_s": s,
                     "encode_s": t["encode_ms"] / 1e3, "prefill_s": t["prefill_ms"] / 1e3,
                     "prompt_tokens": t["prompt_tokens"], "generated_tokens": t["generated_tokens"],
                     "decode_ms_per_token": t["decode_ms"] / max(t["generated_tokens"] - 1, 1),
                     "text": answer["text"]})

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"\nLEGO-7B released shapes, random weights; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {mem:.1f} GiB RAM; lego infer --dtype bf16 (encoders and the rest bf16), "
          f"--threads {args.threads}, {args.frames} video frames, {args.new_tokens} new tokens\n")
    for name, (s, rss) in steps.items():
        print(f"  {name}: {s:.0f} s, peak RSS {rss:.2f} GiB")
    print()
    print("| LLM weights | model on disk | peak RSS | encode (3 media) | prefill | decode |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['format']} | {r['model_gib']:.1f} GiB | {r['peak_rss_gib']:.2f} GiB | {r['encode_s']:.1f} s | "
              f"{r['prefill_s']:.1f} s ({r['prompt_tokens']} tokens) | {r['decode_ms_per_token']:.0f} ms/token |")
    if args.json_out:
        args.json_out.write_text(json.dumps({"steps": steps, "rows": rows}, indent=2) + "\n")
    if args.clean:
        for f in ("bf16", "int8", "int4"):
            shutil.rmtree(args.work / f, ignore_errors=True)


if __name__ == "__main__":
    main()
