#!/usr/bin/env python3
"""Why the demo's model does not ground yet (issue 9): two measurements, each against its baseline.

localise: how fast the demo's image tower (configs/models/tiny-ground.ini, lego's own init) learns to locate
    the one object of single-object SynthGround images when it is trained for that alone, with a direct L1
    loss on the four box numbers: the tower's patch features at its feature layer go through one
    attention-pooling layer (four learnt queries, then an MLP: the kind of read-out an LLM's attention can
    learn). No LLM and no words: an upper bound on what `lego train` can reach in as many steps, where the
    LLM must also learn the read-out through digit tokens. Acc@0.5 and mIoU on 200 test images, with the
    chance of answering a training box drawn at random.

dependence: whether a trained model uses its media at all. `lego train` at lr 0 over N rows of a data file,
    once as they are and once with each row's media taken from the next row: the mean training loss of
    each (lego's own template and masking). Equal losses mean the model ignores its media.

    python bench/grounding_probe.py localise [--steps 2000] [--lr 1e-3] [--threads 1]
    python bench/grounding_probe.py dependence MODEL_DIR DATA.json [--rows 96] [--masking human_turns]
"""
import argparse
import configparser
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import ROOT, build_python_model  # noqa: E402

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def pixel_reader(model_dir: Path):
    """The image plugin's preprocessing as released: pad to a square with the mean colour, then CLIP's."""
    from transformers import CLIPImageProcessor

    ini = configparser.ConfigParser()
    ini.read(model_dir / "model.ini")
    size = ini["image"].getint("image_size")
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                   image_mean=list(MEAN), image_std=list(STD))
    fill = tuple(int(x * 255) for x in MEAN)

    def read(path: Path) -> torch.Tensor:
        img = Image.open(path).convert("RGB")
        w, h = img.size
        side = max(w, h)
        square = Image.new("RGB", (side, side), fill)
        square.paste(img, ((side - w) // 2, (side - h) // 2))
        return torch.from_numpy(processor(square, return_tensors="np")["pixel_values"][0])

    return read


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area = lambda x: (x[:, 2] - x[:, 0]).clamp(min=0) * (x[:, 3] - x[:, 1]).clamp(min=0)
    return inter / (area(a) + area(b) - inter).clamp_min(1e-9)


class AttentionHead(torch.nn.Module):
    def __init__(self, width: int, queries: int = 4):
        super().__init__()
        self.queries = torch.nn.Parameter(torch.randn(1, queries, width) / width ** 0.5)
        self.attention = torch.nn.MultiheadAttention(width, 4, batch_first=True)
        self.out = torch.nn.Sequential(torch.nn.Linear(queries * width, 128), torch.nn.GELU(), torch.nn.Linear(128, 4))

    def forward(self, patches):
        pooled, _ = self.attention(self.queries.expand(patches.shape[0], -1, -1), patches, patches)
        return self.out(pooled.flatten(1))


def localise(args):
    lego = args.lego
    with tempfile.TemporaryDirectory(prefix="lego-probe-") as tmp:
        tmp = Path(tmp)
        config = ROOT / "configs/models/tiny-ground.ini"
        counts = []
        for split in ("train", "val", "test"):
            for task in ("rec", "caption", "temporal", "sound_localization"):
                n = {"train.rec": args.train_rows, "test.rec": 200}.get(f"{split}.{task}", 0)
                counts += ["--count", f"{split}.{task}={n}"]
        subprocess.run([str(lego), "synth", "--config", str(config), "--out", str(tmp / "synth"), "--seed", "11",
                        "--max-objects", "1", *counts], check=True, capture_output=True)
        subprocess.run([str(lego), "init-model", "--config", str(config), "--out", str(tmp / "init"), "--seed", "7"],
                       check=True, capture_output=True)
        read = pixel_reader(tmp / "init")

        def load(split):
            rows = json.loads((tmp / f"synth/{split}-rec.json").read_text())
            x = torch.stack([read(tmp / "synth" / r["image"]) for r in rows])
            y = torch.tensor([json.loads(r["conversations"][1]["value"]) for r in rows])
            return x, y

        x_train, y_train = load("train")
        x_test, y_test = load("test")
        # Chance: a training box drawn at random for each test image (as lego eval's chance does).
        g = torch.Generator().manual_seed(0)
        draws = [box_iou(y_train[torch.randint(len(y_train), (len(y_test),), generator=g)], y_test) for _ in range(20)]
        chance_acc = float(torch.stack([(d >= 0.5).float().mean() for d in draws]).mean())
        chance_miou = float(torch.stack([d.mean() for d in draws]).mean())
        print(f"single-object SynthGround, {len(y_train)} training / {len(y_test)} test images; the demo's image "
              f"tower from lego init-model, trained with a direct L1 box loss, batch 16, AdamW lr {args.lr}, "
              f"{args.threads} thread(s); chance: Acc@0.5 {chance_acc:.3f}, mIoU {chance_miou:.3f}")
        torch.manual_seed(0)
        _, clip, _, _ = build_python_model(tmp / "init")
        head = AttentionHead(clip.config.hidden_size)
        params = [*clip.parameters(), *head.parameters()]
        optim = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

        def predict(x):
            return head(clip(pixel_values=x).last_hidden_state[:, 1:]).sigmoid()

        t0 = time.perf_counter()
        for step in range(1, args.steps + 1):
            idx = torch.randint(len(x_train), (16,))
            loss = F.l1_loss(predict(x_train[idx]), y_train[idx])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            if step % args.every == 0 or step == args.steps:
                with torch.no_grad():
                    iou = box_iou(predict(x_test), y_test)
                print(f"step {step:>5}: Acc@0.5 {(iou >= 0.5).float().mean():.3f}, "
                      f"mIoU {iou.mean():.3f}, train L1 {loss.item():.4f}, {time.perf_counter() - t0:.0f} s",
                      flush=True)


def dependence(args):
    """lego train itself at lr 0 (nothing changes) over the rows, once as they are and once with every row's
    media moved to the next row: the mean training loss of each, lego's own template and masking."""
    model_dir = args.model.resolve()
    rows = json.loads(args.data.read_text())[:args.rows]
    media_keys = sorted({k for r in rows for k in r if k not in ("id", "conversations")})
    if len(rows) < 2 or not media_keys:
        raise SystemExit(f"{args.data}: fewer than two rows with media")
    shifted = [dict(r, **{k: rows[(i + 1) % len(rows)][k] for k in media_keys if k in rows[(i + 1) % len(rows)]})
               for i, r in enumerate(rows)]
    results = {}
    with tempfile.TemporaryDirectory(prefix="lego-probe-") as tmp:
        tmp = Path(tmp)
        for name, data in (("own media", rows), ("next row's media", shifted)):
            file = tmp / f"{len(results)}.json"
            file.write_text(json.dumps(data))
            # Media paths stay relative to the data file's folder.
            folders = "".join(f"{k}_folder = {args.data.parent.resolve()}\n" for k in media_keys)
            stage = tmp / f"{len(results)}.ini"
            stage.write_text(f"""[model]
dir = {model_dir}
[data]
train = {file}
{folders}masking = {args.masking}
[train]
out = {tmp / f"run{len(results)}"}
epochs = 1
batch_size = {args.batch}
log_every = 1
save_every = 0
seed = 1
[optim]
lr = 0
warmup_ratio = 0
schedule = constant
[stage]
name = probe
train = adapter llm
""")
            proc = subprocess.run([str(args.lego), "train", "--config", str(stage), "--threads", str(args.threads)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"lego train failed: {proc.stderr.strip()}")
            losses = [json.loads(line)["loss"] for line in (tmp / f"run{len(results)}/metrics.jsonl").read_text().splitlines()
                      if line.strip()]
            results[name] = sum(losses) / len(losses)
    own, other = results["own media"], results["next row's media"]
    print(f"{model_dir}: mean training loss (lego train at lr 0, {args.masking} masking) on {len(rows)} rows of "
          f"{args.data.name}: own media {own:.4f}, next row's media {other:.4f}, difference {other - own:+.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lego", type=Path, default=Path(os.environ.get("LEGO_BIN", ROOT / "build/bin/lego")))
    sub = ap.add_subparsers(dest="what", required=True)
    loc = sub.add_parser("localise", help="the image tower's localisation speed with a direct box loss")
    loc.add_argument("--steps", type=int, default=2000)
    loc.add_argument("--every", type=int, default=250)
    loc.add_argument("--lr", type=float, default=1e-3)
    loc.add_argument("--train-rows", type=int, default=6000)
    dep = sub.add_parser("dependence", help="answer loss with each row's own image and with another")
    dep.add_argument("model", type=Path)
    dep.add_argument("data", type=Path)
    dep.add_argument("--rows", type=int, default=96)
    dep.add_argument("--batch", type=int, default=16)
    dep.add_argument("--masking", default="human_turns")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    localise(args) if args.what == "localise" else dependence(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
