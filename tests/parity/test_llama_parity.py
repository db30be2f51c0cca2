"""lego's LLaMA host against HF transformers on the same tiny random checkpoint (issue 2's parity checks)."""
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from conftest import ADDED_TOKENS, hf_tokenizer, run_lego, save_hf_llama

PROMPTS = ["The dog on the right is sleeping next to a blue ball.",
           "Where is the bell?"]


def generate_json(model_dir, prompts, *extra):
    args = ["generate", "--model", model_dir, "--json", *extra]
    for p in prompts:
        args += ["--prompt", p]
    out = run_lego(*args).stdout.strip().splitlines()
    return [json.loads(line) for line in out]


def left_pad(rows, pad=0):
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, longest - len(r):] = torch.tensor(r)
        mask[i, longest - len(r):] = 1
    return ids, mask


def test_logits_match_hf_on_a_padded_batch(hf_and_lego, tmp_path):
    model, _, ours = hf_and_lego
    dump = tmp_path / "logits.safetensors"
    results = generate_json(ours, PROMPTS, "--max-new-tokens", "0", "--dump-logits", dump)
    rows = [r["prompt_token_ids"] for r in results]
    assert len(rows[0]) != len(rows[1]), "the batch must need padding"
    ids, mask = left_pad(rows)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits[:, -1].numpy()
    got = load_file(str(dump))["logits"]
    assert got.shape == ref.shape
    diff = np.abs(got - ref).max()
    print(f"padded batch logits: max abs diff {diff:.3e}")
    assert diff <= 1e-4


def test_greedy_tokens_match_hf_generate(hf_and_lego):
    model, _, ours = hf_and_lego
    (ours_out,) = generate_json(ours, PROMPTS[:1], "--max-new-tokens", "32", "--ignore-eos")
    ids = torch.tensor([ours_out["prompt_token_ids"]])
    with torch.no_grad():
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    ref_new = ref[0, ids.shape[1]:].tolist()
    assert len(ref_new) == 32
    assert ours_out["token_ids"] == ref_new


def test_batched_greedy_matches_hf_generate_with_left_padding(hf_and_lego):
    model, _, ours = hf_and_lego
    outs = generate_json(ours, PROMPTS, "--max-new-tokens", "16", "--ignore-eos")
    ids, mask = left_pad([o["prompt_token_ids"] for o in outs])
    with torch.no_grad():
        ref = model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    for row, o in enumerate(outs):
        assert o["token_ids"] == ref[row, ids.shape[1]:].tolist(), f"row {row}"


@pytest.mark.parametrize("variant", ["bin", "sharded"])
def test_import_reads_bin_and_sharded_checkpoints(tmp_path, sp_model, variant):
    hf_dir = tmp_path / "hf"
    kwargs = {"safe_serialization": False} if variant == "bin" else {"max_shard_size": "100KB"}
    model = save_hf_llama(hf_dir, sp_model, seed=3, **kwargs)
    names = {p.name for p in hf_dir.iterdir()}
    assert ("pytorch_model.bin" in names) if variant == "bin" else ("model.safetensors.index.json" in names)
    out = tmp_path / "lego"
    run_lego("import", "--from", "hf-llama", "--in", hf_dir, "--out", out)
    dump = tmp_path / "logits.safetensors"
    (res,) = generate_json(out, PROMPTS[:1], "--max-new-tokens", "0", "--dump-logits", dump)
    ids = torch.tensor([res["prompt_token_ids"]])
    with torch.no_grad():
        ref = model(input_ids=ids).logits[:, -1].numpy()
    assert np.abs(load_file(str(dump))["logits"] - ref).max() <= 1e-4


def tokenizer_strings():
    """200 strings: fixed hard cases, then seeded random mixes of words, unicode, digits, whitespace,
    grounding text and LEGO's special tokens."""
    fixed = ["", " ", "  ", "\n", "\t\t", "hello", " hello", "hello ", "hello  world", "a\nb\n\nc",
             "[0.128, 0.565, 0.204, 0.720]", "{0.14, 0.32}", "The dog [0.655, 0.402, 0.998, 0.951] sleeps.",
             "at {0.05, 0.20} and {0.71, 0.93}", "1234567890", "3.14159", "x=42;y=-7", "<im_start>",
             "<im_start><im_patch><im_patch><im_end>", "<image>\nWhat is this?", " <vi_start> video <vi_end> ",
             "<so_start><so_patch>x<so_end>", "Über café naïve", "東京 and 北京", "😀😀 smile", "ʕ•ᴥ•ʔ",
             "tabs\tand\nnewlines\r\n", "###", "### Human: hi\n### Assistant:", "<im_patch", "im_patch>",
             "<<im_end>>", "UPPER lower MiXeD", "e-mail: a@b.c", "/path/to/file.mp4", "     leading",
             "trailing     ", "mid    dle", "ﬁ ligature", "\u00a0nbsp", "zero\u200bwidth"]
    rng = np.random.default_rng(1234)
    words = ["the", "dog", "sound", "video", "picture", " ", "  ", "\n", "[", "]", "{", "}", ",", "0.", "123",
             "9", "é", "ß", "中", "😀", "box", "span", "###", "Human:", "Assistant:", *ADDED_TOKENS]
    out = list(fixed)
    while len(out) < 200:
        n = int(rng.integers(1, 14))
        parts = [words[int(i)] for i in rng.integers(0, len(words), n)]
        seps = ["", " "]
        out.append("".join(p + seps[int(rng.integers(0, 2))] for p in parts))
    return out


def test_token_ids_match_hf_llama_tokenizer(hf_and_lego, tmp_path):
    _, hf_dir, ours = hf_and_lego
    strings = tokenizer_strings()
    assert len(strings) == 200
    src = tmp_path / "strings.jsonl"
    src.write_text("".join(json.dumps(s) + "\n" for s in strings))
    got = [json.loads(line) for line in run_lego("tokenize", "--model", ours, "--in", src).stdout.splitlines()]
    tok = hf_tokenizer(hf_dir / "tokenizer.model")
    mismatches = [(s, g, tok.encode(s)) for s, g in zip(strings, got) if g != tok.encode(s)]
    assert len(got) == 200
    assert not mismatches, f"{len(mismatches)} strings differ, first: {mismatches[:3]}"
