#!/usr/bin/env python3
"""Training throughput of `lego train` against the same model trained by a PyTorch Python loop (issue 9).

Two grounding models (LLaMA + CLIP-style image tower + MLP projector), random weights from `lego init-model`:
the demo's configs/models/tiny-ground.ini and bench/train-100m.ini (the same with a ~100M-parameter LLaMA).
The data is an image REC set made here with PIL: every row asks for the box of the red ball in its own
PNG file (all drawn alike) with the same words, so that every batch has the same tokens. lego trains the
encoder, the projector and the LLM (CPU, AdamW, constant lr, clipping at 1.0) and writes tokens/s per
logged interval to metrics.jsonl; the first interval is warm-up and is left out. Its first batch
(`train.dump_gradients`) is replayed in Python: HF CLIPVisionModel (its layers up to the feature layer) +
the projector + HF LlamaForCausalLM, loaded from the same model.safetensors, whose first-step loss and
gradients are checked against lego's before the same number of steps is timed (forward, backward, clipping,
torch.optim.AdamW). Each precision is timed on both sides: fp32, and bf16 as `train.precision = bf16` runs
it (DeepSpeed's bf16 mode: the modules in bf16, AdamW on fp32 master copies, which the Python loop keeps
as a training script would: the gradients copied into fp32 beside them, clipped there, and each copy
rounded back into its module after the step). --runs alternates lego and Python runs and keeps the best of each, so that other load
on the machine hits both sides alike. Both use the same thread count (`lego train --threads`, and
OMP_NUM_THREADS for a lego whose train has no --threads). Tokens are those of the batch's attention mask,
media included, as lego counts them.

    python bench/train_throughput.py [--threads 2] [--runs 2] [--quick] [--models tiny 100m]
                                     [--precisions fp32 bf16] [--lego build/bin/lego]
"""
import argparse
import configparser
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name: (model config, batch size)
    "tiny": (ROOT / "configs/models/tiny-ground.ini", 8),
    "100m": (ROOT / "bench/train-100m.ini", 4),
}
CLIP_PREFIX = "model.vision_tower.vision_tower."
PROJECTOR_PREFIX = "model.mm_vision_projector."
QUESTION = "<image>\nOutput the coordinate of the red ball."
ANSWER = "[0.562, 0.312, 0.812, 0.562]"
LR = 2e-5


def make_data(dst: Path, rows: int) -> Path:
    """`rows` REC rows, each with its own PNG (a sky, a lawn and a red ball, the same in every file)."""
    images = dst / "images"
    images.mkdir(parents=True)
    img = Image.new("RGB", (96, 80), (90, 140, 200))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 56, 96, 80), fill=(70, 160, 70))
    d.ellipse((54, 10, 78, 34), fill=(220, 40, 40))
    data = []
    for i in range(rows):
        img.save(images / f"{i:04d}.png")
        data.append({"id": f"rec-{i}", "image": f"{i:04d}.png",
                     "conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": ANSWER}]})
    path = dst / "train.json"
    path.write_text(json.dumps(data))
    return path


def write_stage(path: Path, model_dir: Path, data: Path, out: Path, batch: int, warmup: int, steps: int,
                precision: str):
    path.write_text(f"""[model]
dir = {model_dir}

[data]
train = {data}
image_folder = {data.parent / "images"}

[train]
out = {out}
batch_size = {batch}
max_steps = {warmup + steps}
log_every = {warmup}
save_every = 0
keep_checkpoints = 1
precision = {precision}
dump_gradients = {out.parent / "first-step.safetensors"}

[optim]
lr = {LR}
schedule = constant
warmup_ratio = 0
max_grad_norm = 1.0

[stage]
name = bench
train = encoder adapter llm
""")


def prepare(lego: Path, work: Path, config: Path, batch: int, warmup: int, steps: int, precision: str):
    """init-model and the data; returns (model dir, the stage config)."""
    model_dir = work / "model"
    subprocess.run([str(lego), "init-model", "--config", str(config), "--out", str(model_dir), "--seed", "1"],
                   check=True, capture_output=True)
    data = make_data(work / "data", batch * (warmup + steps))
    stage = work / "stage.ini"
    write_stage(stage, model_dir, data, work / "run", batch, warmup, steps, precision)
    return model_dir, stage


def has_train_threads(lego: Path) -> bool:
    usage = subprocess.run([str(lego), "train", "--help"], capture_output=True, text=True).stdout
    return "--threads" in usage


def run_lego(lego: Path, work: Path, stage: Path, warmup: int, steps: int, threads: int):
    """One `lego train` from scratch; returns (first-step dump, tokens/s over the timed intervals)."""
    for old in (work / "run", work / "first-step.safetensors"):
        subprocess.run(["rm", "-rf", str(old)], check=True)
    # OMP_NUM_THREADS too, for a lego whose `train` predates --threads (libtorch starts with that many).
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    flags = ["--threads", str(threads)] if has_train_threads(lego) else []
    proc = subprocess.run([str(lego), "train", "--config", str(stage), *flags], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"lego train failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    records = [json.loads(line) for line in (work / "run/metrics.jsonl").read_text().splitlines() if line.strip()]
    timed = records[1:]  # the first interval is warm-up
    if len(timed) * warmup != steps:
        raise SystemExit(f"metrics.jsonl: {len(records)} records, expected {1 + steps // warmup}")
    dump = load_file(str(work / "first-step.safetensors"))
    tokens_per_interval = int(dump["batch.valid"].sum()) * warmup
    seconds = sum(tokens_per_interval / r["tokens_per_s"] for r in timed)
    return dump, tokens_per_interval * len(timed) / seconds


def build_python_model(model_dir: Path):
    """HF CLIPVisionModel (cut after the feature layer) + projector + HF LlamaForCausalLM with lego's weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    ini = configparser.ConfigParser()
    ini.read(model_dir / "model.ini")
    llm, image = ini["llm"], ini["image"]
    if image.get("projector", "mlp2x_gelu") != "mlp2x_gelu":
        raise SystemExit(f"{model_dir}/model.ini: projector {image['projector']} (this benchmark composes mlp2x_gelu)")
    hidden = llm.getint("hidden_size")
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=llm.getint("vocab_size"), hidden_size=hidden, intermediate_size=llm.getint("intermediate_size"),
        num_hidden_layers=llm.getint("num_layers"), num_attention_heads=llm.getint("num_heads"),
        num_key_value_heads=llm.getint("num_kv_heads"), head_dim=llm.getint("head_dim"),
        rms_norm_eps=llm.getfloat("rms_norm_eps"), rope_theta=llm.getfloat("rope_theta"),
        max_position_embeddings=llm.getint("max_position"), tie_word_embeddings=False, attention_bias=False,
        attn_implementation="sdpa"))
    layers = image.getint("layers")
    feature_layer = image.getint("feature_layer", -2)
    keep = feature_layer if feature_layer > 0 else layers + 1 + feature_layer  # hidden_states[k] = after k layers
    width = image.getint("width")
    clip = CLIPVisionModel(CLIPVisionConfig(
        image_size=image.getint("image_size"), patch_size=image.getint("patch_size"), hidden_size=width,
        num_hidden_layers=layers, num_attention_heads=image.getint("heads"), intermediate_size=image.getint("mlp_dim"),
        attn_implementation="sdpa"))
    projector = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden))

    weights = load_file(str(model_dir / "model.safetensors"))
    llama.load_state_dict({k: v for k, v in weights.items() if k.startswith(("model.layers.", "model.embed_tokens",
                                                                             "model.norm.", "lm_head."))}, strict=True)
    clip.load_state_dict({k[len(CLIP_PREFIX):]: v for k, v in weights.items() if k.startswith(CLIP_PREFIX)},
                         strict=True)
    projector.load_state_dict({k[len(PROJECTOR_PREFIX):]: v for k, v in weights.items()
                               if k.startswith(PROJECTOR_PREFIX)}, strict=True)
    # What the feature layer does not need is never computed (as lego does): the later layers and the
    # pooled output's post_layernorm (an unused parameter, so left out of the optimizer).
    clip.vision_model.encoder.layers = clip.vision_model.encoder.layers[:keep]
    added = ini["tokenizer"]["added_tokens"].split()
    patch_id = llm.getint("vocab_size") - len(added) + added.index("<im_patch>")
    return llama, clip, projector, patch_id


class PythonStep:
    """One optimizer step of the composed model in plain PyTorch, as a training script would write it."""

    def __init__(self, llama, clip, projector, patch_id, dump, pixels, dtype):
        self.llama, self.clip, self.projector = (m.to(dtype).train() for m in (llama, clip, projector))
        pixels = pixels.to(dtype)
        self.ids_in = dump["batch.ids"]
        self.ids, self.labels, self.valid = dump["batch.ids"], dump["batch.labels"], dump["batch.valid"].long()
        self.media = self.ids == patch_id
        per_row = self.media.sum(1)
        if not bool((per_row == per_row[0]).all()) or int(per_row[0]) == 0:
            raise SystemExit(f"batch.ids: <im_patch> counts per row {per_row.tolist()} (one image per row expected)")
        self.ids = self.ids.masked_fill(self.media, 0)
        self.pixels = pixels.expand(self.ids.shape[0], *pixels.shape).contiguous()
        post = {id(p) for p in clip.vision_model.post_layernorm.parameters()}
        params = [p for p in [*llama.parameters(), *clip.parameters(), *projector.parameters()] if id(p) not in post]
        self.params = params
        # bf16: AdamW steps fp32 copies; fp32: the parameters themselves.
        self.masters = [p if p.dtype == torch.float32 else p.detach().float().clone() for p in params]
        self.optim = torch.optim.AdamW([{"params": [p for p in self.masters if p.dim() >= 2], "weight_decay": 0.0},
                                        {"params": [p for p in self.masters if p.dim() < 2], "weight_decay": 0.0}],
                                       lr=LR, betas=(0.9, 0.999), eps=1e-8)

    def loss(self):
        feats = self.projector(self.clip(pixel_values=self.pixels).last_hidden_state[:, 1:])
        embeds = self.llama.model.embed_tokens(self.ids)
        embeds = embeds.masked_scatter(self.media.unsqueeze(-1), feats.to(embeds.dtype))
        logits = self.llama(inputs_embeds=embeds, attention_mask=self.valid).logits
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                                 self.labels[:, 1:].reshape(-1), ignore_index=-100)

    def zero_grad(self):
        for p in (*self.params, *self.masters):
            p.grad = None

    def step(self):
        self.zero_grad()
        loss = self.loss()
        loss.backward()
        with torch.no_grad():
            for p, m in zip(self.params, self.masters):
                if m is not p and p.grad is not None:
                    m.grad, p.grad = p.grad.float(), None
        torch.nn.utils.clip_grad_norm_(self.masters, 1.0)
        self.optim.step()
        with torch.no_grad():
            for p, m in zip(self.params, self.masters):
                if m is not p:
                    p.copy_(m)
        return loss.item()


def check_first_step(step: PythonStep, dump, named):
    """The first step's loss and gradients (before clipping) against lego's dump: the same model and batch."""
    step.zero_grad()
    loss = step.loss()
    loss.backward()
    worst, diff_squares, squares = 0.0, 0.0, 0.0
    for name, p in named:
        ref = dump.get("grad." + name)
        if ref is None or p.grad is None:
            raise SystemExit(f"gradient of {name}: missing on the {'lego' if ref is None else 'Python'} side")
        # Relative to the tensor's largest gradient; below 1e-6 a gradient counts as zero (a CLIP key bias's
        # is zero up to rounding: softmax ignores it).
        worst = max(worst, float((p.grad.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6)))
        # Over all tensors at once: in bf16 a gradient that is a cancelling sum (a norm's bias) differs
        # between any two bf16 computations by much of its own size, but little against the whole.
        diff_squares += float((p.grad.double() - ref.double()).pow(2).sum())
        squares += float(ref.double().pow(2).sum())
    step.zero_grad()
    return abs(loss.item() - float(dump["loss"])), worst, (diff_squares / squares) ** 0.5


def python_side(model_dir: Path, dump, lego: Path, image: Path, threads: int, dtype):
    """The composed model on lego's first batch, checked against lego's first step."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    llama, clip, projector, patch_id = build_python_model(model_dir)
    with tempfile.TemporaryDirectory(prefix="lego-bench-enc-") as tmp:
        subprocess.run([str(lego), "encode", "--model", str(model_dir), "--modality", "image", "--in", str(image),
                        "--out", f"{tmp}/enc.safetensors"], check=True, capture_output=True)
        pixels = load_file(f"{tmp}/enc.safetensors")["input"]
    step = PythonStep(llama, clip, projector, patch_id, dump, pixels, dtype)
    named = [*llama.named_parameters()]
    named += [(CLIP_PREFIX + n, p) for n, p in clip.named_parameters() if "post_layernorm" not in n]
    named += [(PROJECTOR_PREFIX + n, p) for n, p in projector.named_parameters()]
    return step, check_first_step(step, dump, named)


def time_python(step: PythonStep, warmup: int, steps: int):
    for _ in range(warmup):
        step.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step.step()
    return int(step.valid.sum()) * steps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["tiny", "100m"])
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    ap.add_argument("--runs", type=int, help="lego and Python runs, alternated; the best of each is shown "
                                             "(default 2, with --quick 1)")
    ap.add_argument("--quick", action="store_true", help="a few steps, one run (a smoke run, noisy numbers)")
    ap.add_argument("--lego", type=Path, default=Path(os.environ.get("LEGO_BIN", ROOT / "build/bin/lego")))
    args = ap.parse_args()
    if args.runs is None:
        args.runs = 1 if args.quick else 2
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    plan = {"tiny": (2, 4), "100m": (1, 2)} if args.quick else {"tiny": (5, 60), "100m": (2, 6)}  # warm-up, timed

    rows = []
    with tempfile.TemporaryDirectory(prefix="lego-bench-train-") as tmp:
        for name, precision in [(n, p) for n in args.models for p in args.precisions]:
            config, batch = MODELS[name]
            warmup, steps = plan[name]
            work = Path(tmp) / f"{name}-{precision}"
            work.mkdir()
            model_dir, stage = prepare(args.lego, work, config, batch, warmup, steps, precision)
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            lego_tps, py_tps, step, check = [], [], None, None
            for _ in range(args.runs):  # alternated, so that a change in the machine's load hits both sides
                dump, tps = run_lego(args.lego, work, stage, warmup, steps, args.threads)
                lego_tps.append(tps)
                if step is None:
                    step, check = python_side(model_dir, dump, args.lego, work / "data/images/0000.png", args.threads,
                                              dtype)
                elif not torch.equal(dump["batch.ids"], step.ids_in):
                    raise SystemExit("lego's first batch changed between runs")
                py_tps.append(time_python(step, warmup, steps))
            n_params = sum(p.numel() for p in step.params)
            rows.append((name, precision, n_params, batch, dump["batch.ids"].shape[1], args.threads, steps,
                         max(lego_tps), max(py_tps), *check))
            del step

    load = os.getloadavg()
    print(f"CPU training, encoder + projector + LLM trained, AdamW lr {LR} constant, clip 1.0; torch "
          f"{torch.__version__}; best of {args.runs} alternated run(s) per side; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'model':<6} {'prec':<4} {'params':>7} {'batch':>5} {'seq':>4} {'threads':>7} {'steps':>5} {'lego tok/s':>10} "
          f"{'PyTorch tok/s':>13} {'ratio':>6}  first step vs lego: |loss diff|, worst |grad diff| / max |grad|, "
          f"|grad diff| / |grad| over all")
    goals = {"tiny": 1.2, "100m": 1.0}
    fp32_lego = {row[0]: row[7] for row in rows if row[1] == "fp32"}  # lego's fp32 tokens/s per model
    for name, precision, n, batch, seq, threads, steps, lego_tps, py_tps, loss_diff, grad_diff, grad_l2 in rows:
        versus = f", {lego_tps / fp32_lego[name]:.2f}x lego fp32" if precision != "fp32" and name in fp32_lego else ""
        print(f"{name:<6} {precision:<4} {n / 1e6:6.1f}M {batch:>5} {seq:>4} {threads:>7} {steps:>5} {lego_tps:>10.0f} "
              f"{py_tps:>13.0f} {lego_tps / py_tps:>6.2f}  {loss_diff:.1e}, {grad_diff:.1e}, {grad_l2:.1e}   "
              f"(goal >= {goals[name]}{versus})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
