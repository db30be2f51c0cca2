"""Shared fixtures of the parity suite: the lego binary, a sentencepiece tokenizer trained here, and a tiny
random HF LLaMA saved by transformers. Everything is made at test time; nothing is downloaded."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADDED_TOKENS = ["<im_patch>", "<im_start>", "<im_end>", "<vi_patch>", "<vi_start>", "<vi_end>",
                "<so_patch>", "<so_start>", "<so_end>"]


def lego_bin() -> Path:
    path = Path(os.environ.get("LEGO_BIN", ROOT / "build" / "bin" / "lego"))
    if not path.exists():
        pytest.fail(f"lego binary not found at {path}: build first or set LEGO_BIN")
    return path


def run_lego(*args, check=True):
    proc = subprocess.run([str(lego_bin()), *map(str, args)], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"lego {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory) -> Path:
    """A LLaMA-style BPE tokenizer trained by the Python sentencepiece package."""
    import sentencepiece as spm

    out = tmp_path_factory.mktemp("sp")
    spm.SentencePieceTrainer.train(
        input=str(ROOT / "configs" / "corpus" / "tiny.txt"), model_prefix=str(out / "tokenizer"),
        vocab_size=512, model_type="bpe", character_coverage=1.0, split_digits=True, byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1,
        minloglevel=2)
    return out / "tokenizer.model"


def hf_tokenizer(model_file: Path):
    """The slow HF LlamaTokenizer with LEGO's added tokens, as the original code builds it."""
    from transformers import LlamaTokenizer

    tok = LlamaTokenizer(vocab_file=str(model_file), legacy=True)
    tok.add_tokens(ADDED_TOKENS, special_tokens=True)
    return tok


def save_hf_llama(dst: Path, sp_file: Path, seed: int = 0, max_position_embeddings: int = 256, **save_kwargs):
    """A tiny random LlamaForCausalLM (GQA, 2 layers) saved with transformers, plus its tokenizer."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=512 + len(ADDED_TOKENS), hidden_size=64, intermediate_size=176,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=max_position_embeddings, rms_norm_eps=1e-5, rope_theta=10000.0,
                      tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    # Give the norms non-trivial weights so that they are really tested.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    model.save_pretrained(dst, **save_kwargs)
    shutil.copy(sp_file, dst / "tokenizer.model")
    first = 512
    (dst / "added_tokens.json").write_text(json.dumps({t: first + i for i, t in enumerate(ADDED_TOKENS)}))
    return model


@pytest.fixture(scope="session")
def hf_and_lego(tmp_path_factory, sp_model):
    """(HF model, HF dir, lego model dir) for a tiny LLaMA imported with `lego import --from hf-llama`."""
    base = tmp_path_factory.mktemp("llama")
    hf_dir = base / "hf"
    model = save_hf_llama(hf_dir, sp_model)
    ours = base / "lego"
    run_lego("import", "--from", "hf-llama", "--in", hf_dir, "--out", ours)
    return model, hf_dir, ours
