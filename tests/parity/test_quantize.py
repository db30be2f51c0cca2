"""lego quantize and the quantised model directory: the layout docs/formats.md gives (checked against an
independent NumPy decoding of the blocks), generation through it, and a clear error for every bad
request or damaged file. The accuracy bar on trained weights is in test_training.py
(test_int8_keeps_the_greedy_answers_of_the_trained_model)."""
import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import run_lego


def decode_blocks(blocks: np.ndarray, bits: int, group: int, cols: int) -> np.ndarray:
    """The float32 matrix that a [rows, blocks * bytes] uint8 tensor encodes, read as docs/formats.md says."""
    rows = blocks.shape[0]
    per = 2 + (group // 2 if bits == 4 else group)
    nblocks = blocks.shape[1] // per
    b = blocks.reshape(rows, nblocks, per)
    scale = b[:, :, :2].copy().view("<f2").astype(np.float32)  # [rows, nblocks, 1]
    v = b[:, :, 2:]
    if bits == 8:
        q = v.view(np.int8).astype(np.float32)
    else:
        sub = v.reshape(rows, nblocks, group // 32, 16)
        lo = (sub & 0x0F).astype(np.int8) - 8
        hi = (sub >> 4).astype(np.int8) - 8
        q = np.concatenate([lo, hi], axis=3).reshape(rows, nblocks, group).astype(np.float32)
    return (q * scale).reshape(rows, nblocks * group)[:, :cols]


@pytest.fixture(scope="module")
def quantised(hf_and_lego, tmp_path_factory):
    _, _, dense = hf_and_lego
    out = tmp_path_factory.mktemp("quant")
    dirs = {}
    for to, group in (("int8", 32), ("int4", 64)):
        d = out / f"{to}-{group}"
        proc = run_lego("quantize", "--model", dense, "--to", to, "--group", group, "--out", d)
        assert "quantised" in proc.stdout
        dirs[to] = d
    return dense, dirs


@pytest.mark.parametrize("to,bits,group", [("int8", 8, 32), ("int4", 4, 64)])
def test_blocks_follow_the_documented_layout(quantised, to, bits, group):
    dense_dir, dirs = quantised
    dense = load_file(dense_dir / "model.safetensors")
    q = load_file(dirs[to] / "model.safetensors")
    ini = (dirs[to] / "model.ini").read_text()
    assert f"\nweight_format = {to}\n" in ini and f"\nweight_group = {group}\n" in ini, ini
    a = "model.layers.1.self_attn."
    qkv = np.concatenate([dense[a + "q_proj.weight"], dense[a + "k_proj.weight"], dense[a + "v_proj.weight"]])
    gate_up = np.concatenate([dense["model.layers.0.mlp.gate_proj.weight"], dense["model.layers.0.mlp.up_proj.weight"]])
    cases = [(a + "qkv_proj.qweight", qkv, bits), ("model.layers.0.mlp.gate_up_proj.qweight", gate_up, bits),
             # intermediate 176 is not a multiple of 64: zero columns pad the last group
             ("model.layers.0.mlp.down_proj.qweight", dense["model.layers.0.mlp.down_proj.weight"], bits),
             ("lm_head.qweight", dense["lm_head.weight"], 8)]  # the head is int8 in every format
    for name, w, b in cases:
        blocks = q[name]
        assert blocks.dtype == np.uint8, name
        got = decode_blocks(blocks, b, group, w.shape[1])
        assert got.shape == w.shape, name
        # Within one step of each block's scale (int4's clamp at 7 may cost a whole step), plus fp16 rounding.
        err = np.abs(got - w)
        bound = np.abs(w).max() / (127 if b == 8 else 8)
        assert err.max() <= bound * 1.01, (name, err.max(), bound)
        assert np.sqrt((err ** 2).mean()) < bound / 2, name
    for name in dense:
        if "_proj." not in name and not name.startswith("lm_head"):
            np.testing.assert_array_equal(q[name], dense[name], err_msg=name)  # norms, embeddings: unchanged
    assert not any(n.endswith("q_proj.weight") or n == "lm_head.weight" for n in q)


def generate(model, ids, n, *extra):
    proc = run_lego("generate", "--model", model, "--prompt-ids", ",".join(map(str, ids)), "--max-new-tokens", n,
                    "--ignore-eos", "--json", *extra)
    return json.loads(proc.stdout.splitlines()[0])


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_quantised_models_generate(quantised, tmp_path, dtype):
    dense, dirs = quantised
    prompt = [1, 17, 42, 99, 250, 7]
    for to, d in dirs.items():
        out = generate(d, prompt, 12, "--dtype", dtype)
        assert len(out["token_ids"]) == 12, to
        # Stepwise logits go through the decoding kernels; they are finite and near the dense model's.
        run_lego("generate", "--model", d, "--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens", 1,
                 "--dump-logits", tmp_path / f"{to}.safetensors", "--dump-all-logits", "--dtype", dtype)
    run_lego("generate", "--model", dense, "--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens", 1,
             "--dump-logits", tmp_path / "dense.safetensors", "--dump-all-logits", "--dtype", dtype)
    want = load_file(tmp_path / "dense.safetensors")["logits"]
    assert want.shape == (len(prompt), 521)
    errors = {}
    for to in dirs:
        got = load_file(tmp_path / f"{to}.safetensors")["logits"]
        assert np.isfinite(got).all()
        errors[to] = float(np.sqrt(((got - want) ** 2).mean() / (want ** 2).mean()))
    print(dtype, errors)
    assert errors["int8"] < 0.05
    assert errors["int4"] < 0.6
    assert errors["int4"] > 2 * errors["int8"]


def test_bad_requests_are_refused_in_one_line(quantised, tmp_path):
    dense, dirs = quantised
    cases = [
        (("quantize", "--model", dense, "--to", "int3", "--out", tmp_path / "a"), "--to 'int3'"),
        (("quantize", "--model", dense, "--to", "int8", "--group", 48, "--out", tmp_path / "b"), "group 48"),
        (("quantize", "--model", dense, "--to", "int8", "--out", dense), "model directory itself"),
        (("quantize", "--model", dirs["int8"], "--to", "int4", "--out", tmp_path / "c"), "already int8"),
        (("quantize", "--model", tmp_path / "missing", "--to", "int8", "--out", tmp_path / "d"), "not found"),
    ]
    for args, words in cases:
        proc = run_lego(*args, check=False)
        assert proc.returncode != 0, args
        assert words in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_a_non_finite_weight_is_named(hf_and_lego, tmp_path):
    _, _, dense = hf_and_lego
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in dense.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    tensors = load_file(dense / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"][3, 5] = np.nan
    save_file(tensors, broken / "model.safetensors")
    proc = run_lego("quantize", "--model", broken, "--to", "int8", "--out", tmp_path / "q", check=False)
    assert proc.returncode != 0
    assert "model.layers.1.mlp.up_proj.weight" in proc.stderr and "non-finite" in proc.stderr, proc.stderr
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("damage", ["float", "short", "missing"])
def test_damaged_quantised_files_are_refused(quantised, tmp_path, damage):
    _, dirs = quantised
    d = tmp_path / damage
    d.mkdir()
    for f in dirs["int8"].iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    tensors = load_file(dirs["int8"] / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.qweight"
    if damage == "float":
        tensors[name] = tensors[name].astype(np.float32)
    elif damage == "short":
        tensors[name] = tensors[name][:, :-34]
    else:
        del tensors[name]
    save_file(tensors, d / "model.safetensors")
    proc = run_lego("generate", "--model", d, "--prompt-ids", "1,2,3", "--max-new-tokens", 2, check=False)
    assert proc.returncode != 0
    assert name in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
