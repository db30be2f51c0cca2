#!/usr/bin/env python3
"""CPU decode speed, memory and quantization accuracy of lego against llama.cpp and HF transformers on a 7B LLaMA.

What it measures (one run, one table): a random LLaMA checkpoint of the 7B shape (vocab 32000, hidden 4096,
MLP 11008, 32 layers, 32 heads, 32 kv heads; `--quick`: a ~1.1B shape with 22 layers, hidden 2048, MLP 5632,
32 heads, 4 kv heads) is written in bf16 in the HF format, imported with `lego import` and quantized with
`lego quantize` (int8 and int4, group 32), and converted to GGUF with llama.cpp's own converter and
`llama-quantize` (BF16, Q8_0, Q4_K_M). With the same thread count, a 32-token prompt and N generated tokens:

  * lego bf16 / int8 / int4: `lego generate --dtype bf16 --json` (median of --runs): decode ms/token
    (decode_ms / (generated_tokens - 1)), prefill ms, peak RSS;
  * llama.cpp BF16 / Q8_0 / Q4_K_M: `llama-bench -p 32 -n N -r 1 -o json`, --runs times (median), each run
    right after one of lego's on the same format, so that both sample the same spells of a shared machine
    (before each run, the other engine's model file is dropped from the page cache, and lego runs once
    untimed, as llama-bench does);
  * HF transformers `generate` in bf16 (greedy, ms/token = (t(N) - t(1)) / (N - 1), N = --hf-new-tokens).

Accuracy against bf16 (same weights): lego bf16 greedily continues a 32-token prompt for 256 tokens (the
reference); teacher-forced on prompt + reference, the logits of the 256 positions from lego int8 / int4 and from
llama.cpp BF16 / Q8_0 / Q4_K_M (through the `llama_cpp` Python package of the same sdist) are compared with lego
bf16's: max |Δlogit|, RMS Δlogit and greedy agreement (argmax == the reference's next token).

llama.cpp comes from the llama-cpp-python sdist (pinned below, `--llama-cpp-version`), whose vendor/llama.cpp is
built once with CMake into ~/.cache/lego/llama.cpp-<version>/. Models are cached under --work (default
~/.cache/lego/bench-7b, or bench-1b with --quick) and reused by later runs; the HF directory is deleted when the
disk gets tight once both converters and the HF timing are done (it is regenerated, bit for bit, when needed).

    python bench/llm_decode_7b.py [--quick] [--threads 2] [--runs 3] [--new-tokens 64] [--hf-new-tokens 16]
                                  [--skip-hf] [--work DIR] [--json-out FILE] [--lego build/bin/lego]
                                  [--requantize] [--prepare-only]

Needs: lego with `lego quantize` and `lego generate --dump-all-logits`, CMake + a C++ compiler, the Python
packages torch, transformers, safetensors, sentencepiece, numpy, diskcache (for llama_cpp) and network access to
PyPI for the first `pip download`. The run stops with a message at the first thing it cannot do.

Time, disk and memory on 2 cores (first run; later runs skip the build, the checkpoints and the conversions):
  * llama.cpp build: ~20 min, once for both shapes (~0.3 GB under ~/.cache/lego/llama.cpp-<version>).
  * --quick (1.1B): ~30 min, ~10 GB under --work (HF 2.2 + GGUF 2.2 / 1.2 / 0.7 + lego 2.2 / 1.2 / 0.8), ~3 GB RAM.
  * default (7B): on a 2-core AVX2 EPYC the models took ~50 min (Q4_K_M 20 of them); on 2 Zen 4 cores the
    models took 14 min (HF checkpoint 3 min, then `--prepare-only`: convert 1.5, import 0.5, Q8_0 0.7, Q4_K_M 6,
    lego int8 2.8, int4 2.5) and the timings with the accuracy 17 min (8.5 of them the alternating timings, which
    read each model from the disk again per run; HF adds 1.5); ~50 GB under --work at the peak (HF 13.5 + GGUF
    BF16 13.5 + lego bf16 13.5, then
    Q8_0 7 + Q4_K_M 4 + lego int8 8 + int4 5 with the HF directory deleted when space runs short; remove the
    --quick cache first if the disk has less than ~55 GB free); ~16 GB of RAM (nothing holds the model in fp32).
The lego bf16 rows of the accuracy table and the HF row take the longest (7B: 256 greedy tokens, then 287 one-token
steps per lego model; HF bf16 without AVX512-BF16 decodes at seconds per token).
"""
import argparse
import functools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP_PY_VERSION = "0.3.36"  # llama-cpp-python sdist whose vendored llama.cpp this was checked with
CACHE = Path.home() / ".cache" / "lego"
PROMPT_TOKENS = 32
REF_TOKENS = 256
SEED = 0
SHAPES = {
    "7b": dict(vocab=32000, hidden=4096, mlp=11008, layers=32, heads=32, kv_heads=32, layers_per_shard=4),
    "1b": dict(vocab=32000, hidden=2048, mlp=5632, layers=22, heads=32, kv_heads=4, layers_per_shard=6),
}
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")
LEGO_VARIANTS = ("bf16", "int8", "int4")
GGUF_VARIANTS = {"bf16": "BF16", "int8": "Q8_0", "int4": "Q4_K_M"}  # lego column -> llama.cpp type
GROUP = 32

PHASES = {}  # phase name -> seconds


class Phase:
    """Times a step, prints its start and end."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.t0 = time.perf_counter()
        log(f"[{self.name}] ...")
        return self

    def __exit__(self, kind, *_):
        dt = time.perf_counter() - self.t0
        if kind is None:
            PHASES[self.name] = PHASES.get(self.name, 0.0) + dt
            log(f"[{self.name}] done in {dt:.1f} s")


def log(msg):
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def fail(msg):
    """Stops the run with a message (everything done so far stays cached under the work directory)."""
    print(f"\nllm_decode_7b: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def run(cmd, what, env=None, capture=True, cwd=None):
    """Runs a command; on failure stops with its output."""
    cmd = [str(c) for c in cmd]
    proc = subprocess.run(cmd, capture_output=capture, text=True, errors="replace", env=env, cwd=cwd)
    if proc.returncode != 0:
        out = ((proc.stdout or "") + (proc.stderr or ""))[-4000:] if capture else "(output above)"
        fail(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{out}")
    return proc


def n_params(s):
    layer = 2 * s["hidden"] * s["hidden"] + 2 * s["hidden"] * (s["hidden"] // s["heads"] * s["kv_heads"]) \
        + 3 * s["hidden"] * s["mlp"] + 2 * s["hidden"]
    return 2 * s["vocab"] * s["hidden"] + s["layers"] * layer + s["hidden"]


# ---------------------------------------------------------------------------------------------------- checkpoint

def make_tokenizer(dst: Path, vocab: int) -> Path:
    """A word-level sentencepiece model with exactly `vocab` pieces (<unk>=0, <s>=1, </s>=2); text is irrelevant."""
    import sentencepiece as spm

    corpus = dst / "words.txt"
    corpus.write_text("\n".join(f"w{i}x" for i in range(vocab - 3)) + "\n")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(dst / "tokenizer"), vocab_size=vocab,
                                   model_type="word", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   minloglevel=2, num_threads=1)
    corpus.unlink()
    (dst / "tokenizer.vocab").unlink()
    return dst / "tokenizer.model"


def hf_tensor_names(s):
    """(name, shape) of every tensor, in file order."""
    h, kv = s["hidden"], s["hidden"] // s["heads"] * s["kv_heads"]
    out = [("model.embed_tokens.weight", (s["vocab"], h))]
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h)),
                (p + "mlp.gate_proj.weight", (s["mlp"], h)), (p + "mlp.up_proj.weight", (s["mlp"], h)),
                (p + "mlp.down_proj.weight", (h, s["mlp"])),
                (p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (s["vocab"], h))]
    return out


def write_hf_metadata(part: Path, s):
    """config.json, generation and tokenizer configs: what transformers and llama.cpp's converter read."""
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": s["vocab"],
              "hidden_size": s["hidden"], "intermediate_size": s["mlp"], "num_hidden_layers": s["layers"],
              "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"], "hidden_act": "silu",
              "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
              "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False, "initializer_range": 0.02,
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "use_cache": True,
              "torch_dtype": "bfloat16"}
    (part / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (part / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "do_sample": False}, indent=2) + "\n")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (part / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (part / "tokenizer_config.json").write_text(json.dumps(
        {**special, "add_bos_token": True, "add_eos_token": False, "add_prefix_space": True, "legacy": True,
         "model_max_length": 2048, "pad_token": None, "clean_up_tokenization_spaces": False,
         "tokenizer_class": "LlamaTokenizer", "sp_model_kwargs": {}}, indent=2) + "\n")


def make_hf_checkpoint(hf_dir: Path, s):
    """Writes a random bf16 LLaMA in the HF layout shard by shard: each tensor is drawn (seeded by its index, so a
    rerun writes the same bytes), cast to bf16 and written; at most one shard is in memory, never the model."""
    import torch
    from safetensors.torch import save_file

    part = hf_dir.with_name(hf_dir.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    write_hf_metadata(part, s)
    make_tokenizer(part, s["vocab"])

    names = hf_tensor_names(s)
    per = s["layers_per_shard"]
    n_shards = (s["layers"] + per - 1) // per

    def shard_of(name):
        m = re.match(r"model\.layers\.(\d+)\.", name)
        if m:
            return int(m.group(1)) // per
        return 0 if name == "model.embed_tokens.weight" else n_shards - 1

    weight_map, total = {}, 0
    for k in range(n_shards):
        fname = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        tensors = {}
        for idx, (name, shape) in enumerate(names):
            if shard_of(name) != k:
                continue
            if len(shape) == 1:
                t = torch.ones(shape, dtype=torch.bfloat16)
            else:
                g = torch.Generator().manual_seed(SEED * 1_000_003 + idx)
                t = torch.empty(shape, dtype=torch.float32).normal_(0.0, 0.02, generator=g).to(torch.bfloat16)
            tensors[name] = t
            weight_map[name] = fname
            total += t.numel() * 2
        save_file(tensors, str(part / fname), metadata={"format": "pt"})
        del tensors
        log(f"  wrote {fname}")
    (part / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    shutil.rmtree(hf_dir, ignore_errors=True)
    part.rename(hf_dir)


def hf_view_of_lego(work: Path, lego_bf16: Path, s):
    """After the HF directory was deleted for space: an HF directory whose model.safetensors links to lego bf16's,
    which holds the same bf16 tensors under the same names (lego import keeps them). None if it does not."""
    from safetensors import safe_open

    weights = lego_bf16 / "model.safetensors"
    if not weights.exists():
        return None
    with safe_open(str(weights), "pt") as f:
        same = set(f.keys()) == {n for n, _ in hf_tensor_names(s)} and all(
            f.get_slice(k).get_dtype() == "BF16" for k in f.keys())
    if not same:
        return None
    view = work / "hf-view"
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir()
    write_hf_metadata(view, s)
    shutil.copyfile(lego_bf16 / "tokenizer.model", view / "tokenizer.model")
    (view / "model.safetensors").symlink_to(weights.resolve())
    return view


# ------------------------------------------------------------------------------------------------------ llama.cpp

def llama_cpp_paths(version):
    base = CACHE / f"llama.cpp-{version}"
    src = base / "src" / f"llama_cpp_python-{version}"
    bindir = base / "build" / "bin"
    return base, src, bindir


def llama_cpp_commit(src: Path):
    """The llama.cpp commit the sdist vendors, from its changelog's newest 'update llama.cpp to ...@HASH' line."""
    for line in (src / "CHANGELOG.md").read_text(errors="replace").splitlines():
        m = re.search(r"llama\.cpp@([0-9a-f]{7,40})", line, re.I)
        if m and "update llama.cpp" in line.lower():
            return m.group(1)[:9]
    return "unknown"


def ensure_llama_cpp(version, python):
    """Downloads the llama-cpp-python sdist and builds llama-bench, llama-quantize and libllama.so (cached)."""
    base, src, bindir = llama_cpp_paths(version)
    wanted = [bindir / "llama-bench", bindir / "llama-quantize", bindir / "libllama.so"]
    if all(p.exists() for p in wanted):
        return src, bindir
    base.mkdir(parents=True, exist_ok=True)
    sdist = base / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.exists():
        log(f"  pip download llama-cpp-python=={version} (sdist)")
        run([python, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-binary", ":all:", "--no-deps",
             "-d", base], "pip download of the llama-cpp-python sdist")
        if not sdist.exists():
            fail(f"pip download did not leave {sdist} (found: {[p.name for p in base.iterdir()]})")
    if not (src / "vendor" / "llama.cpp" / "CMakeLists.txt").exists():
        shutil.rmtree(src, ignore_errors=True)
        with tarfile.open(sdist) as tar:
            tar.extractall(src.parent, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(src.parent)
    build = base / "build"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    cmake_args = ["-S", src / "vendor" / "llama.cpp", "-B", build, *gen, "-DCMAKE_BUILD_TYPE=Release",
                  "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
                  "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF",
                  "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_COMMON=ON",
                  f"-DLLAMA_BUILD_COMMIT={llama_cpp_commit(src)}"]
    log("  cmake " + " ".join(map(str, cmake_args)))
    run(["cmake", *cmake_args], "configuring llama.cpp")
    jobs = str(os.cpu_count() or 2)
    log(f"  cmake --build {build} --target llama-bench llama-quantize llama -j {jobs}")
    run(["cmake", "--build", build, "--target", "llama-bench", "llama-quantize", "llama", "-j", jobs],
        "building llama.cpp")
    missing = [str(p) for p in wanted if not p.exists()]
    if missing:
        fail(f"the llama.cpp build did not produce {missing}")
    return src, bindir


def convert_to_gguf(src: Path, hf_dir: Path, out: Path, name, python):
    conv = src / "vendor" / "llama.cpp"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(conv / "gguf-py"), os.environ.get("PYTHONPATH", "")]))
    tmp = out.with_name(out.name + ".partial")
    run([python, conv / "convert_hf_to_gguf.py", hf_dir, "--outtype", "bf16", "--outfile", tmp, "--model-name", name],
        "llama.cpp's convert_hf_to_gguf.py", env=env)
    tmp.rename(out)


def quantize_gguf(bindir: Path, src_gguf: Path, out: Path, qtype, threads):
    tmp = out.with_name(out.name + ".partial")
    run([bindir / "llama-quantize", src_gguf, tmp, qtype, threads], f"llama-quantize to {qtype}")
    tmp.rename(out)


def evict_from_page_cache(files):
    """Asks the kernel to drop these files' cached pages (posix_fadvise DONTNEED: no privileges needed; pages
    that a running process maps stay)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def llama_bench(bindir: Path, gguf: Path, n_new, threads, runs):
    proc = run([bindir / "llama-bench", "-m", gguf, "-p", PROMPT_TOKENS, "-n", n_new, "-t", threads, "-r", runs,
                "-o", "json"], f"llama-bench on {gguf.name}")
    tests = json.loads(proc.stdout)
    pp = [t for t in tests if t["n_prompt"] == PROMPT_TOKENS and t["n_gen"] == 0]
    tg = [t for t in tests if t["n_prompt"] == 0 and t["n_gen"] == n_new]
    if len(pp) != 1 or len(tg) != 1:
        fail(f"unexpected llama-bench output for {gguf.name}: {proc.stdout[:2000]}")
    return {"ms_per_token": 1000.0 / tg[0]["avg_ts"], "prefill_ms": PROMPT_TOKENS * 1000.0 / pp[0]["avg_ts"],
            "build_commit": tg[0].get("build_commit"), "build_number": tg[0].get("build_number"),
            "cpu_info": tg[0].get("cpu_info"), "backends": tg[0].get("backends"),
            "model_size": tg[0].get("model_size"), "model_type": tg[0].get("model_type")}


def llama_cpp_logits(src: Path, bindir: Path, gguf: Path, tokens, first, threads, out: Path):
    """Logits of every position of `tokens` from llama.cpp, via the sdist's `llama_cpp` package (in a subprocess:
    ggml's and torch's thread pools stay apart), rows `first`.. saved to `out` (.npy)."""
    spec = {"pkg": str(src), "lib": str(bindir), "model": str(gguf), "tokens": tokens, "first": first,
            "threads": threads, "out": str(out)}
    run([sys.executable, Path(__file__).resolve(), "_llama_logits", json.dumps(spec)],
        f"llama_cpp logits of {gguf.name}")
    import numpy as np
    logits = np.load(out)
    out.unlink()
    return logits


def worker_llama_logits(spec):
    os.environ["LLAMA_CPP_LIB_PATH"] = spec["lib"]  # the ctypes loader of llama_cpp/llama_cpp.py reads this
    sys.path.insert(0, spec["pkg"])
    import numpy as np
    from llama_cpp import Llama

    tokens = spec["tokens"]
    n_ctx = max(512, len(tokens))
    llm = Llama(model_path=spec["model"], n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=spec["threads"],
                n_threads_batch=spec["threads"], logits_all=True, verbose=False)
    llm.eval(tokens)
    scores = np.asarray(llm.scores[:len(tokens)], dtype=np.float32)
    np.save(spec["out"], scores[spec["first"]:])
    return 0


# ----------------------------------------------------------------------------------------------------------- lego

def lego_bin(path: Path):
    """The lego binary; waits up to 10 minutes when it is momentarily missing (being rebuilt)."""
    for _ in range(40):
        if path.exists() and os.access(path, os.X_OK):
            return path
        log(f"  {path} is missing (being rebuilt?); waiting")
        time.sleep(15)
    fail(f"no lego binary at {path} (set --lego or LEGO_BIN)")


@functools.lru_cache(maxsize=None)
def source_rev():
    """The source revision, read once: an edit of the work tree during the run is not a rebuild."""
    return subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                          text=True).stdout.strip() or "?"


def lego_info(lego: Path):
    """The source revision (source_rev) and the build time of the lego binary (and of its newest library)."""
    rev = source_rev()
    libs = [lego] + sorted((lego.parent.parent / "lib").glob("liblego*.so"))
    built = max(p.stat().st_mtime for p in libs if p.exists())
    return f"lego {rev}, built {time.strftime('%Y-%m-%d %H:%M', time.localtime(built))}"


def lego_has(lego, args, needle):
    proc = subprocess.run([str(lego), *args], capture_output=True, text=True, errors="replace")
    return proc.returncode == 0 and needle in proc.stdout + proc.stderr, (proc.stdout + proc.stderr).strip()


def lego_generate(lego, model_dir, ids, n_new, threads, extra=()):
    lego = lego_bin(lego)
    proc = run([lego, "generate", "--model", model_dir, "--dtype", "bf16", "--prompt-ids", ",".join(map(str, ids)),
                "--max-new-tokens", n_new, "--ignore-eos", "--json", "--threads", threads, *extra],
               f"lego generate on {model_dir.name}")
    return json.loads(proc.stdout.splitlines()[0])


def lego_quantize(lego, src: Path, out: Path, to):
    lego = lego_bin(lego)
    ok, text = lego_has(lego, ["quantize", "--help"], "--to")
    if not ok:
        fail(f"{lego} cannot quantize: `lego quantize --help` says: {text[:300]!r}.\n"
             f"The int8 and int4 columns need `lego quantize --model DIR --to int8|int4 --group {GROUP} --out DIR`;"
             f" build a lego that has it and run again (what is done so far is cached under {out.parent}).")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    run([lego, "quantize", "--model", src, "--to", to, "--group", GROUP, "--out", tmp], f"lego quantize --to {to}")
    tmp.rename(out)


def lego_all_logits(lego, model_dir, tokens, first, threads, out: Path):
    """Teacher-forced logits of every position of `tokens` (rows `first`..) from `lego generate --dump-all-logits`."""
    import numpy as np
    from safetensors.numpy import load_file

    lego = lego_bin(lego)
    ok, _ = lego_has(lego, ["generate", "--help"], "--dump-all-logits")
    if not ok:
        fail(f"{lego} has no `generate --dump-all-logits` (see `lego generate --help`); the accuracy table needs the"
             f" logits of every prompt position. Build a lego that has it and run again (what is done so far is"
             f" cached under {out.parent}).")
    lego_generate(lego, model_dir, tokens, 1, threads, ["--dump-logits", out, "--dump-all-logits"])
    t = load_file(str(out))["logits"]
    if t.ndim == 3 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2 or t.shape[0] != len(tokens):
        fail(f"{out}: logits of shape {list(t.shape)}, expected [{len(tokens)}, vocab] (or [1, {len(tokens)}, vocab])")
    out.unlink()
    return np.asarray(t[first:], dtype=np.float32)


# ------------------------------------------------------------------------------------------------------------- HF

def time_hf(hf_dir: Path, prompt, n_new, threads, runs):
    spec = {"dir": str(hf_dir), "prompt": prompt, "n": n_new, "threads": threads, "runs": runs}
    proc = run([sys.executable, Path(__file__).resolve(), "_hf_time", json.dumps(spec)], "HF transformers timing")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def worker_hf_time(spec):
    import torch
    from transformers import LlamaForCausalLM

    torch.set_num_threads(spec["threads"])
    model = LlamaForCausalLM.from_pretrained(spec["dir"], dtype=torch.bfloat16, low_cpu_mem_usage=True).eval()
    ids = torch.tensor([spec["prompt"]])

    def gen(n):
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, eos_token_id=None, pad_token_id=0)
        return time.perf_counter() - t0

    gen(2)  # warm-up
    per_token, prefill = [], []
    for _ in range(spec["runs"]):
        t1, tn = gen(1), gen(spec["n"])
        prefill.append(t1 * 1000)
        per_token.append((tn - t1) / (spec["n"] - 1) * 1000)
    print(json.dumps({"ms_per_token": statistics.median(per_token), "prefill_ms": statistics.median(prefill),
                      "runs_ms_per_token": per_token}))
    return 0


# ---------------------------------------------------------------------------------------------------------- report

def cpu_info():
    name, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("?", "", platform.processor()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return name, [f for f in CPU_FLAGS if f in flags], [f for f in CPU_FLAGS if f not in flags]


def compare(logits, ref_logits, ref_next):
    import numpy as np

    d = logits.astype(np.float64) - ref_logits.astype(np.float64)
    return {"max_abs": float(np.abs(d).max()), "rms": float(np.sqrt((d * d).mean())),
            "agreement": float((logits.argmax(-1) == np.asarray(ref_next)).mean())}


def table(rows, header):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows])


def free_bytes(path: Path):
    return shutil.disk_usage(path).free


def dir_bytes(d: Path):
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) if d.exists() else 0


def other_caches(work: Path):
    dirs = [d for d in sorted(work.parent.glob("bench-*")) if d.is_dir() and d != work]
    if not dirs:
        return ""
    return "; other benchmark caches: " + ", ".join(f"{d} ({dir_bytes(d) / 2**30:.1f} GiB)" for d in dirs)


def check_disk_plan(work: Path, est, present, hf_dir: Path):
    """Fails at the start, not hours in, when the models still to write cannot fit: the HF checkpoint, GGUF BF16
    and lego bf16 at once, and at the end everything but the HF checkpoint (deleted when space runs short)."""
    early = sum(est[k] for k in ("hf", "gguf-bf16", "lego-bf16") if not present[k])
    final = sum(v for k, v in est.items() if k != "hf" and not present[k])
    have = free_bytes(work) + dir_bytes(hf_dir)
    need = max(early, final) + (2 << 30)
    if have < need:
        fail(f"not enough disk under {work}: the models still to write need ~{need / 2**30:.1f} GiB, "
             f"{have / 2**30:.1f} GiB is free (counting the HF checkpoint, which may go){other_caches(work)}")


def make_room(work: Path, need: int, what: str, hf_dir: Path, hf_droppable: bool):
    """Ensures `need` bytes (+2 GiB) are free before writing `what`; drops the HF directory when allowed."""
    margin = 2 << 30
    if free_bytes(work) >= need + margin:
        return
    if hf_droppable and hf_dir.exists():
        log(f"  disk: {free_bytes(work) / 2**30:.1f} GiB free, {what} needs ~{need / 2**30:.1f} GiB: "
            f"deleting {hf_dir} (both conversions and the HF timing are done)")
        shutil.rmtree(hf_dir)
    if free_bytes(work) < need + margin:
        fail(f"not enough disk under {work} for {what}: {free_bytes(work) / 2**30:.1f} GiB free, "
             f"~{(need + margin) / 2**30:.1f} GiB needed{other_caches(work)}")


def main():
    if len(sys.argv) > 1 and sys.argv[1] in ("_hf_time", "_llama_logits"):
        worker = worker_hf_time if sys.argv[1] == "_hf_time" else worker_llama_logits
        return worker(json.loads(sys.argv[2]))

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a ~1.1B shape instead of 7B")
    ap.add_argument("--work", type=Path, help="where models are cached (default ~/.cache/lego/bench-7b or bench-1b)")
    ap.add_argument("--lego", type=Path, default=Path(os.environ.get("LEGO_BIN", ROOT / "build/bin/lego")))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--hf-new-tokens", type=int, default=16)
    ap.add_argument("--skip-hf", action="store_true", help="no HF transformers timing")
    ap.add_argument("--requantize", action="store_true",
                    help="redo `lego quantize` instead of reusing the cached int8/int4 models (after a format change)")
    ap.add_argument("--llama-cpp-version", default=LLAMA_CPP_PY_VERSION, help="llama-cpp-python sdist version")
    ap.add_argument("--prepare-only", action="store_true",
                    help="build llama.cpp and make every model (checkpoint, GGUFs, lego imports and quantizations),"
                         " then stop: the slow, CPU-heavy part, which need not run on a quiet machine")
    ap.add_argument("--json-out", type=Path, help="also write the numbers as JSON here")
    args = ap.parse_args()
    if args.prepare_only:
        args.skip_hf = True  # the HF timing is a timing: it belongs to the run that follows
    if args.new_tokens < 2 or args.hf_new_tokens < 2:
        ap.error("--new-tokens and --hf-new-tokens must be at least 2")
    if args.runs < 1 or args.threads < 1:
        ap.error("--runs and --threads must be at least 1")

    t_start = time.perf_counter()
    shape_name = "1b" if args.quick else "7b"
    s = SHAPES[shape_name]
    work = (args.work or CACHE / f"bench-{shape_name}").expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    stamp = work / "shape.json"
    shape_id = {**s, "seed": SEED}
    if stamp.exists() and json.loads(stamp.read_text()) != shape_id:
        fail(f"{work} holds models of another shape ({stamp.read_text().strip()}); use another --work or delete it")
    stamp.write_text(json.dumps(shape_id) + "\n")
    python = sys.executable
    lego = args.lego.resolve()
    threads, P = args.threads, n_params(s)

    import numpy as np
    import torch
    try:
        import diskcache  # noqa: F401  (llama_cpp's Python package imports it)
    except ImportError:
        fail(f"the llama_cpp logits need diskcache: {python} -m pip install diskcache")

    cpu, flags_on, flags_off = cpu_info()
    log(f"model: {shape_name} shape, {P / 1e9:.2f}B parameters; work dir {work}; lego {lego}")
    lego_at_start = lego_info(lego_bin(lego))
    quant_ok, _ = lego_has(lego_bin(lego), ["quantize", "--help"], "--to")
    logits_ok, _ = lego_has(lego, ["generate", "--help"], "--dump-all-logits")
    if not quant_ok or not logits_ok:
        log("  NOTE: this lego lacks " + " and ".join(
            x for x, ok in (("`lego quantize`", quant_ok), ("`generate --dump-all-logits`", logits_ok)) if not ok)
            + ": the run will stop with an error when it gets there (after the bf16 and llama.cpp measurements)")

    hf_dir = work / "hf"
    gguf = {v: work / f"model-{q}.gguf" for v, q in GGUF_VARIANTS.items()}
    lego_dir = {v: work / f"lego-{v}" for v in LEGO_VARIANTS}
    if args.requantize:
        for v in ("int8", "int4"):
            shutil.rmtree(lego_dir[v], ignore_errors=True)
    est = {"hf": 2 * P, "gguf-bf16": 2 * P, "gguf-int8": int(1.07 * P), "gguf-int4": int(0.63 * P),
           "lego-bf16": 2 * P, "lego-int8": int(1.15 * P), "lego-int4": int(0.70 * P)}
    present = {"hf": (hf_dir / "model.safetensors.index.json").exists(),
               **{f"gguf-{v}": gguf[v].exists() for v in GGUF_VARIANTS},
               **{f"lego-{v}": (lego_dir[v] / "model.ini").exists() for v in LEGO_VARIANTS}}
    if present["gguf-bf16"] and present["lego-bf16"]:
        present["hf"] = True  # not needed again: the HF timing reads lego bf16's tensors (hf_view_of_lego)
    check_disk_plan(work, est, present, hf_dir)

    with Phase("llama.cpp sdist + build"):
        src, bindir = ensure_llama_cpp(args.llama_cpp_version, python)
    commit = llama_cpp_commit(src)
    llama_version = f"llama-cpp-python {args.llama_cpp_version} (llama.cpp {commit})"
    log(f"  {llama_version}: {bindir}")

    hf_complete = lambda: (hf_dir / "model.safetensors.index.json").exists()
    hf_for_timing = None
    if not hf_complete() and not args.skip_hf and gguf["bf16"].exists() and (lego_dir["bf16"] / "model.ini").exists():
        hf_for_timing = hf_view_of_lego(work, lego_dir["bf16"], s)  # the HF directory was deleted for space
        if hf_for_timing:
            log(f"  HF timing reads {lego_dir['bf16'] / 'model.safetensors'} through {hf_for_timing} (the same bf16"
                f" tensors under the same names; {hf_dir} was deleted for space)")
    need_hf = not gguf["bf16"].exists() or not (lego_dir["bf16"] / "model.ini").exists() or \
        (not args.skip_hf and hf_for_timing is None)
    if need_hf and not hf_complete():
        make_room(work, est["hf"], "the HF checkpoint", hf_dir, False)
        with Phase("random HF checkpoint (bf16, streamed)"):
            make_hf_checkpoint(hf_dir, s)
    if not gguf["bf16"].exists():
        make_room(work, est["gguf-bf16"], "the BF16 GGUF", hf_dir, False)
        with Phase("convert_hf_to_gguf --outtype bf16"):
            convert_to_gguf(src, hf_dir, gguf["bf16"], f"random-llama-{shape_name}", python)
    if not (lego_dir["bf16"] / "model.ini").exists():
        make_room(work, est["lego-bf16"], "lego import", hf_dir, False)
        with Phase("lego import (bf16)"):
            shutil.rmtree(lego_dir["bf16"], ignore_errors=True)
            run([lego_bin(lego), "import", "--from", "hf-llama", "--in", hf_dir, "--out", lego_dir["bf16"]],
                "lego import")

    gen = torch.Generator().manual_seed(1)
    prompt = [1] + torch.randint(3, s["vocab"], (PROMPT_TOKENS - 1,), generator=gen).tolist()
    results = {"hf": None}
    if not args.skip_hf:
        with Phase(f"HF transformers bf16 timing ({args.hf_new_tokens} tokens x {args.runs})"):
            results["hf"] = time_hf(hf_for_timing or hf_dir, prompt, args.hf_new_tokens, threads, args.runs)
        log(f"  HF bf16: {results['hf']['ms_per_token']:.1f} ms/token, prefill {results['hf']['prefill_ms']:.0f} ms")

    for v in ("int8", "int4"):
        if not gguf[v].exists():
            make_room(work, est[f"gguf-{v}"], f"the {GGUF_VARIANTS[v]} GGUF", hf_dir, True)
            with Phase(f"llama-quantize {GGUF_VARIANTS[v]}"):
                quantize_gguf(bindir, gguf["bf16"], gguf[v], GGUF_VARIANTS[v], threads)

    for v in ("int8", "int4"):
        if (lego_dir[v] / "model.ini").exists():
            log(f"  {lego_dir[v]}: cached (--requantize redoes it)")
        else:
            make_room(work, est[f"lego-{v}"], f"lego quantize --to {v}", hf_dir, True)
            with Phase(f"lego quantize --to {v}"):
                lego_quantize(lego, lego_dir["bf16"], lego_dir[v], v)
    if args.prepare_only:
        log(f"prepared under {work} (" + "; ".join(f"{k} {v:.0f} s" for k, v in PHASES.items())
            + "); run again without --prepare-only for the timings and the accuracy")
        return 0

    lego_t, llama_t = {}, {}

    def time_pair(v):
        """--runs runs of lego and of llama-bench (one repetition each), alternating: the VM's memory has fast
        and slow spells of minutes, and runs taken in two blocks compared one spell with another."""
        dec, pre, rss, l_dec, l_pre = [], [], [], [], []
        q = GGUF_VARIANTS[v]
        for _ in range(args.runs):
            # Each engine starts without the other's file in the page cache: the two bf16 models (13.5 GB
            # each) do not fit a 24 GB machine together, and the pages each run needed were evicted while it
            # ran (a run after the other engine's took 5 s instead of 1.7 for the prompt, and ms/token rose).
            # Like llama-bench, lego then runs once untimed: a bf16 prompt right after the weights came from the
            # disk took 3.5 s.
            evict_from_page_cache([gguf[v]])
            lego_generate(lego, lego_dir[v], prompt, 2, threads)
            r = lego_generate(lego, lego_dir[v], prompt, args.new_tokens, threads)["timings"]
            dec.append(r["decode_ms"] / (r["generated_tokens"] - 1))
            pre.append(r["prefill_ms"])
            rss.append(r["peak_rss_bytes"])
            evict_from_page_cache(sorted(lego_dir[v].glob("*.safetensors")))
            b = llama_bench(bindir, gguf[v], args.new_tokens, threads, 1)
            l_dec.append(b["ms_per_token"])
            l_pre.append(b["prefill_ms"])
        lego_t[v] = {"ms_per_token": statistics.median(dec), "prefill_ms": statistics.median(pre),
                     "peak_rss_bytes": max(rss), "runs_ms_per_token": dec}
        llama_t[v] = {**b, "ms_per_token": statistics.median(l_dec), "prefill_ms": statistics.median(l_pre),
                      "runs_ms_per_token": l_dec}
        log(f"  lego {v}: {lego_t[v]['ms_per_token']:.1f} ms/token, prefill {lego_t[v]['prefill_ms']:.0f} ms, "
            f"peak RSS {max(rss) / 2**30:.2f} GiB (runs: {' '.join(f'{x:.1f}' for x in dec)})")
        log(f"  llama.cpp {q}: {llama_t[v]['ms_per_token']:.1f} ms/token, prefill {llama_t[v]['prefill_ms']:.0f} ms "
            f"(runs: {' '.join(f'{x:.1f}' for x in l_dec)})")

    lego_version = lego_info(lego_bin(lego))
    if lego_version != lego_at_start:
        log(f"  NOTE: lego was rebuilt during this run ({lego_at_start} -> {lego_version})")
    load = os.getloadavg()[0]
    if load > 0.5:
        log(f"  NOTE: load average {load:.2f} before the timings; other work on the CPUs skews them (llama.cpp's"
            f" spinning threads suffer most when a core is taken)")
    for v, q in GGUF_VARIANTS.items():
        with Phase(f"lego {v} and llama-bench {q}, alternating ({args.new_tokens} tokens x {args.runs} each)"):
            time_pair(v)
    lego_after_timing = lego_info(lego_bin(lego))

    # Accuracy, part 1: the reference continuation and llama.cpp's teacher-forced logits.
    acc_dir = work / "accuracy"
    acc_dir.mkdir(exist_ok=True)
    with Phase(f"lego bf16 reference ({REF_TOKENS} greedy tokens)"):
        ref = lego_generate(lego, lego_dir["bf16"], prompt, REF_TOKENS, threads)["token_ids"]
    if len(ref) != REF_TOKENS:
        fail(f"lego bf16 generated {len(ref)} tokens, expected {REF_TOKENS}")
    forced = prompt + ref[:-1]  # position PROMPT_TOKENS - 1 + k predicts ref[k]
    first = PROMPT_TOKENS - 1
    llama_logits = {}
    for v, q in GGUF_VARIANTS.items():
        with Phase(f"llama_cpp logits {q} ({len(forced)} positions)"):
            llama_logits[v] = llama_cpp_logits(src, bindir, gguf[v], forced, first, threads, acc_dir / f"llama-{q}.npy")

    # Accuracy, part 2: lego's teacher-forced logits.
    lego_logits = {}
    for v in LEGO_VARIANTS:
        with Phase(f"lego {v} logits ({len(forced)} positions)"):
            lego_logits[v] = lego_all_logits(lego, lego_dir[v], forced, first, threads,
                                             acc_dir / f"lego-{v}.safetensors")
    refl = lego_logits["bf16"]
    accuracy = {}
    for v in LEGO_VARIANTS:
        accuracy[f"lego {v}"] = compare(lego_logits[v], refl, ref)
    for v, q in GGUF_VARIANTS.items():
        accuracy[f"llama.cpp {q}"] = compare(llama_logits[v], refl, ref)
    ref_rms = float(np.sqrt((refl.astype(np.float64) ** 2).mean()))
    ref_std = float(refl.std(axis=-1).mean())
    top2 = np.sort(refl, axis=-1)[:, -2:]
    ref_margin = float(np.median(top2[:, 1] - top2[:, 0]))

    # Report.
    lego_end = lego_info(lego_bin(lego))
    for when, before, after in (("timings", lego_version, lego_after_timing),
                                ("accuracy runs", lego_after_timing, lego_end)):
        if after != before:
            log(f"  NOTE: lego was rebuilt during the {when} ({before} -> {after}); those rows mix builds")
            lego_version += f", REBUILT during the {when} -> {after.removeprefix('lego ')}"
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    f1 = lambda x: f"{x:.1f}"
    rows = [
        ["lego ms/token"] + [f1(lego_t[v]["ms_per_token"]) for v in LEGO_VARIANTS],
        ["llama.cpp ms/token (BF16 / Q8_0 / Q4_K_M)"] + [f1(llama_t[v]["ms_per_token"]) for v in LEGO_VARIANTS],
        ["ratio lego/llama.cpp"] + [f"{lego_t[v]['ms_per_token'] / llama_t[v]['ms_per_token']:.2f}"
                                    for v in LEGO_VARIANTS],
        [f"lego prefill ms ({PROMPT_TOKENS} tokens)"] + [f1(lego_t[v]["prefill_ms"]) for v in LEGO_VARIANTS],
        [f"llama.cpp prefill ms ({PROMPT_TOKENS} tokens)"] + [f1(llama_t[v]["prefill_ms"]) for v in LEGO_VARIANTS],
        ["lego peak RSS"] + [gib(lego_t[v]["peak_rss_bytes"]) for v in LEGO_VARIANTS],
        [f"HF transformers bf16 ms/token ({args.hf_new_tokens} tokens)"]
        + ([f1(results["hf"]["ms_per_token"]) if results["hf"] else "skipped (--skip-hf)", "- (bf16 only)",
            "- (bf16 only)"]),
    ]
    size_gguf = {v: gguf[v].stat().st_size for v in LEGO_VARIANTS}
    size_lego = {v: sum(p.stat().st_size for p in lego_dir[v].rglob("*") if p.is_file()) for v in LEGO_VARIANTS}
    rows.append(["model size on disk: lego / GGUF"] + [f"{gib(size_lego[v])} / {gib(size_gguf[v])}"
                                                      for v in LEGO_VARIANTS])
    header = (f"LLaMA {shape_name.upper()} shape, random bf16 weights, {P / 1e9:.2f}B parameters: "
              f"vocab {s['vocab']}, hidden {s['hidden']}, MLP {s['mlp']}, {s['layers']} layers, "
              f"{s['heads']} heads / {s['kv_heads']} kv heads\n"
              f"{threads} threads, prompt {PROMPT_TOKENS}, {args.new_tokens} new tokens, median of {args.runs} runs; "
              f"CPU {cpu} ({os.cpu_count()} cpus), flags: {' '.join(flags_on) or '-'} (absent: "
              f"{' '.join(flags_off) or '-'}); torch {torch.__version__}; {llama_version}; lego int8/int4 group "
              f"{GROUP}; {lego_version}; load average before the timings {load:.2f}")
    acc_rows = [[k, f"{a['max_abs']:.4f}", f"{a['rms']:.4f}", f"{a['agreement'] * 100:.1f}%"]
                for k, a in accuracy.items()]
    acc_rows[0][1:3] = ["0 (reference)", "0 (reference)"]
    print()
    print(header)
    print()
    print(table(rows, ["engine", "bf16", "int8", "int4"]))
    print()
    print(f"Accuracy against lego bf16 (same weights): {REF_TOKENS} positions teacher-forced on a "
          f"{PROMPT_TOKENS}-token prompt + lego bf16's greedy continuation; reference logits RMS {ref_rms:.3f}, "
          f"per-position std {ref_std:.3f}, median top-1 margin {ref_margin:.3f}. Agreement: argmax == the "
          f"reference's next token. lego bf16's row is this metric's floor: random weights give flat logits, so exact "
          f"ties and one-ulp near-ties of its bf16 logits flip between the greedy run (batched prefill) and the "
          f"teacher-forced one-token steps.")
    print()
    print(table(acc_rows, ["logits", "max |Δlogit|", "RMS Δlogit", "greedy agreement"]))
    print()
    PHASES["total"] = time.perf_counter() - t_start
    print("phases: " + "; ".join(f"{k} {v:.0f} s" for k, v in PHASES.items()))
    if args.json_out:
        args.json_out.write_text(json.dumps({
            "shape": {**s, "name": shape_name, "params": P}, "threads": threads, "runs": args.runs,
            "prompt_tokens": PROMPT_TOKENS, "new_tokens": args.new_tokens, "hf_new_tokens": args.hf_new_tokens,
            "cpu": cpu, "cpu_flags": flags_on, "load_average": load, "torch": torch.__version__,
            "llama_cpp": llama_version, "lego_build": lego_version,
            "lego": lego_t, "llama_cpp_bench": llama_t, "hf": results["hf"],
            "disk_bytes": {"lego": size_lego, "gguf": size_gguf},
            "accuracy": {"ref_tokens": REF_TOKENS, "ref_logits_rms": ref_rms, "ref_logits_std": ref_std,
                         "ref_top1_margin_median": ref_margin, **accuracy},
            "phases_s": PHASES}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
