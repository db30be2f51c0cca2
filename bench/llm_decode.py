#!/usr/bin/env python3
"""Decode speed and memory of lego's LLaMA host against HF transformers, in one run (issue 2's benchmark).

A ~110M-parameter random LLaMA (12 layers, hidden 768, 12 heads, MLP 2048, vocab 32000) is saved by
transformers and imported with `lego import`. Both decode the same 128-token prompt greedily for 128 new
tokens in fp32 on the CPU with the same thread count. Reported: ms per decoded token (median of --runs),
their ratio, prefill tokens/s, and lego's peak resident memory against weight bytes + KV cache.

    python bench/llm_decode.py [--threads 2] [--runs 3] [--lego build/bin/lego]
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

import torch

ROOT = Path(__file__).resolve().parents[1]
VOCAB, HIDDEN, LAYERS, HEADS, MLP = 32000, 768, 12, 12, 2048


def make_tokenizer(dst: Path) -> Path:
    """A word-level sentencepiece model with exactly VOCAB pieces (the text itself does not matter here)."""
    import sentencepiece as spm

    words = [f"w{i}x" for i in range(VOCAB - 3)]
    corpus = dst / "words.txt"
    corpus.write_text("\n".join(words) + "\n")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(dst / "tokenizer"), vocab_size=VOCAB,
                                   model_type="word", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   minloglevel=2, num_threads=1)
    return dst / "tokenizer.model"


def make_models(work: Path, lego: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=512,
                      rms_norm_eps=1e-5, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    hf_dir = work / "hf"
    model.save_pretrained(hf_dir)
    tok = make_tokenizer(work)
    (hf_dir / "tokenizer.model").write_bytes(tok.read_bytes())
    subprocess.run([str(lego), "import", "--from", "hf-llama", "--in", str(hf_dir), "--out", str(work / "lego")],
                   check=True, capture_output=True)
    return model, work / "lego"


def time_hf(model, ids, new_tokens):
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
    return time.perf_counter() - t0, out[0, ids.shape[1]:].tolist()


def run_lego(lego, model_dir, ids, new_tokens, threads):
    proc = subprocess.run([str(lego), "generate", "--model", str(model_dir), "--prompt-ids", ",".join(map(str, ids)),
                           "--max-new-tokens", str(new_tokens), "--ignore-eos", "--json", "--threads", str(threads)],
                          check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.splitlines()[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--lego", type=Path, default=Path(os.environ.get("LEGO_BIN", ROOT / "build/bin/lego")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n_new, n_prompt = args.new_tokens, args.prompt_tokens

    with tempfile.TemporaryDirectory(prefix="lego-bench-") as tmp:
        model, lego_dir = make_models(Path(tmp), args.lego)
        gen = torch.Generator().manual_seed(1)
        prompt = [1] + torch.randint(3, VOCAB, (n_prompt - 1,), generator=gen).tolist()
        ids = torch.tensor([prompt])
        n_params = sum(p.numel() for p in model.parameters())

        time_hf(model, ids, 4)  # warm-up
        hf_full, hf_prefill, hf_tokens = [], [], None
        lego_decode, lego_prefill, lego_rss, lego_tokens = [], [], [], None
        for _ in range(args.runs):
            t1, _ = time_hf(model, ids, 1)
            tn, hf_tokens = time_hf(model, ids, n_new)
            hf_prefill.append(t1)
            hf_full.append((tn - t1) / (n_new - 1))
            r = run_lego(args.lego, lego_dir, prompt, n_new, args.threads)
            lego_tokens = r["token_ids"]
            steps = r["timings"]["generated_tokens"]
            lego_decode.append(r["timings"]["decode_ms"] / 1000 / (steps - 1))
            lego_prefill.append(r["timings"]["prefill_ms"] / 1000)
            lego_rss.append(r["timings"]["peak_rss_bytes"])

    hf_ms = statistics.median(hf_full) * 1000
    lego_ms = statistics.median(lego_decode) * 1000
    weight_bytes = n_params * 4
    kv_bytes = 2 * LAYERS * (n_prompt + n_new) * HIDDEN * 4
    rss = max(lego_rss)
    print(f"model: {n_params / 1e6:.1f}M parameters, fp32, {args.threads} threads, prompt {n_prompt}, new {n_new}, "
          f"median of {args.runs} runs, torch {torch.__version__}")
    print(f"greedy tokens identical: {hf_tokens == lego_tokens}")
    print(f"decode ms/token:  lego {lego_ms:7.2f}   HF generate {hf_ms:7.2f}   ratio lego/HF {lego_ms / hf_ms:.3f}"
          f"   (goal <= 0.7)")
    print(f"prefill tokens/s: lego {n_prompt / statistics.median(lego_prefill):7.0f}   "
          f"HF (generate, 1 token) {n_prompt / statistics.median(hf_prefill):7.0f}")
    print(f"lego peak RSS {rss / 2**20:.0f} MiB; weights {weight_bytes / 2**20:.0f} MiB + KV cache "
          f"{kv_bytes / 2**20:.1f} MiB = {(weight_bytes + kv_bytes) / 2**20:.0f} MiB; "
          f"ratio {rss / (weight_bytes + kv_bytes):.2f} (goal <= 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
