"""Data parallel training on c10d's Gloo backend, 2 local CPU ranks (issue 10): `lego train --nproc 2` ends
with the parameters of one process trained on the same global batches (with and without gradient
accumulation, media of every modality in the batches), a 2-rank run killed with SIGKILL and resumed equals
an uninterrupted one, torchrun's environment (one node with two ranks, and two nodes on 127.0.0.1) gives
the same parameters, and a rank that dies makes the other exit with one clear line instead of hanging."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import safetensors.torch
import torch
from safetensors.numpy import load_file

from conftest import lego_bin
from test_training import exact_params, run_lego, stage_config, tiny  # noqa: F401  (tiny is a fixture)

ALL_TASKS = "{d}/synth/train-rec.json {d}/synth/train-caption.json {d}/synth/train-temporal.json " \
            "{d}/synth/train-sound_localization.json"


def params(model_dir):
    return load_file(str(model_dir / "model.safetensors"))


def worst_difference(a_dir, b_dir):
    a, b = params(a_dir), params(b_dir)
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)


def one_thread_env():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def train_nproc(cfg, n=2, *extra, check=True):
    proc = subprocess.run([str(lego_bin()), "train", "--config", str(cfg), "--threads", "1", "--nproc", str(n), *extra],
                          capture_output=True, text=True, env=one_thread_env(), timeout=900)
    if check and proc.returncode != 0:
        pytest.fail(f"lego train --nproc {n} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def reference(tiny):
    """One process, global batch 8, 12 steps on every task (image, video, sound media). At lr 2e-5 (the
    released stages' LLM rate): the ranks' gradients equal one process's to about 1e-6 relative, but Adam
    divides each gradient by its own running scale, so a gradient that is zero up to rounding (a key bias
    under softmax, a modality absent from most batches) moves its parameter by about lr either way. The
    parameters' difference is therefore bounded by a small multiple of lr, not by the gradients' rounding."""
    keys = {"data.train": ALL_TASKS.format(d=tiny), "train.batch_size": 8, "train.max_steps": 12,
            "train.save_every": 100, "train.log_every": 4, "optim.lr": 2e-5}
    run_lego("train", "--config", stage_config(tiny, "dp-one", **keys))
    return keys


def test_two_ranks_end_with_the_parameters_of_one_process_on_the_same_global_batch(tiny, reference):
    keys = dict(reference, **{"train.batch_size": 4})
    proc = train_nproc(stage_config(tiny, "dp-two", **keys))
    assert "data parallel over 2 ranks" in proc.stderr
    worst = worst_difference(tiny / "dp-one" / "model", tiny / "dp-two" / "model")
    print("max abs difference, 2 ranks vs 1:", worst)
    assert worst <= 1e-5
    # The loss logged is the global batch's, as one process logs it.
    one = [m["loss"] for m in metrics_of(tiny / "dp-one")]
    two = [m["loss"] for m in metrics_of(tiny / "dp-two")]
    assert np.allclose(one, two, rtol=1e-5), (one, two)


def metrics_of(out):
    import json
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_gradient_accumulation_over_two_ranks_matches_one_process(tiny, reference):
    # 2 ranks x batch 2 x 2 micro-steps = the global batch 8 of the reference, in two halves: the same
    # examples, so the same parameters up to rounding.
    keys = dict(reference, **{"train.batch_size": 4, "train.grad_accum": 2})
    run_lego("train", "--config", stage_config(tiny, "acc-one", **keys))
    keys2 = dict(keys, **{"train.batch_size": 2})
    train_nproc(stage_config(tiny, "acc-two", **keys2))
    worst = worst_difference(tiny / "acc-one" / "model", tiny / "acc-two" / "model")
    print("max abs difference with accumulation:", worst)
    assert worst <= 1e-5


def test_small_buckets_and_activation_checkpointing_change_nothing(tiny, reference):
    # 1 MB buckets: several all-reduces started from the autograd hooks during the backward pass, which
    # with activation checkpointing run inside each layer's recomputation.
    keys = dict(reference, **{"train.batch_size": 4, "train.bucket_mb": 1, "train.activation_checkpointing": "true"})
    proc = train_nproc(stage_config(tiny, "dp-buckets", **keys))
    assert "1 gradient bucket" not in proc.stderr
    assert worst_difference(tiny / "dp-one" / "model", tiny / "dp-buckets" / "model") <= 1e-5


@pytest.fixture(scope="module")
def unreached_one(tiny):
    keys = {"train.batch_size": 8, "train.max_steps": 4, "train.save_every": 100, "optim.weight_decay": 0.1}
    run_lego("train", "--config", stage_config(tiny, "unreached-one", **keys))
    return keys


@pytest.mark.parametrize("zero", [0, 2])
def test_parameters_no_rank_reaches_stay_as_one_process_leaves_them(tiny, unreached_one, zero):
    # REC rows only: the video and sound branches get no gradient on any rank. One process leaves them
    # alone (AdamW skips a tensor without a gradient, weight decay included); so must two ranks, whose
    # gradient sums would otherwise hand them zeros to decay (ZeRO 2: each owner its own).
    keys = dict(unreached_one, **{"train.batch_size": 4, "train.zero_stage": zero})
    train_nproc(stage_config(tiny, f"unreached-two-{zero}", **keys))
    start, one = params(tiny / "init"), params(tiny / "unreached-one" / "model")
    two = params(tiny / f"unreached-two-{zero}" / "model")
    untouched = [k for k in start if np.array_equal(start[k], one[k])]
    trained = [k for k in start if not np.array_equal(start[k], one[k])]
    assert len(untouched) >= 20 and len(trained) >= 20, (len(untouched), len(trained))
    moved = [k for k in untouched if not np.array_equal(start[k], two[k])]
    assert not moved, f"{len(moved)} tensors that no rank's batch reaches changed, e.g. {moved[:3]}"
    assert worst_difference(tiny / "unreached-one" / "model", tiny / f"unreached-two-{zero}" / "model") <= 1e-3


def kill_nproc_at_checkpoint(cfg, out, step):
    """Starts `lego train --nproc 2` and SIGKILLs the launcher (its ranks die with it) once the checkpoint of
    `step` is complete."""
    proc = subprocess.Popen([str(lego_bin()), "train", "--config", str(cfg), "--threads", "1", "--nproc", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=one_thread_env())
    state = out / "checkpoints" / f"step-{step:08d}" / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and not state.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists(), "the run ended before it was killed"


def test_a_killed_two_rank_run_resumes_to_the_parameters_of_an_uninterrupted_one(tiny):
    keys = {"train.batch_size": 4, "train.max_steps": 20, "train.save_every": 5, "train.keep_checkpoints": 5,
            "train.log_every": 5}
    train_nproc(stage_config(tiny, "dp-straight", **keys))
    cfg = stage_config(tiny, "dp-killed", **keys)
    kill_nproc_at_checkpoint(cfg, tiny / "dp-killed", 10)
    resumed = train_nproc(cfg, 2, "--resume")
    assert "resuming from" in resumed.stderr
    worst = worst_difference(tiny / "dp-straight" / "model", tiny / "dp-killed" / "model")
    print("max abs difference after a 2-rank resume:", worst)
    assert worst <= 1e-6


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank, world, port, **more):
    return dict(one_thread_env(), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **more)


@pytest.mark.parametrize("how", ["dies", "hangs"])
def test_a_rank_that_dies_or_hangs_ends_the_other_with_one_clear_line(tiny, how):
    # SIGKILL: the peer's socket closes and rank 0 learns it at once. SIGSTOP: the peer stays connected but
    # silent, and rank 0 gives up after train.dist_timeout_s.
    timeout = 10
    keys = {"train.batch_size": 4, "train.max_steps": 1000, "train.save_every": 0, "train.log_every": 1,
            "train.dist_timeout_s": timeout}
    cfg = stage_config(tiny, f"dp-{how}", **keys)
    port = free_port()
    cmd = [str(lego_bin()), "train", "--config", str(cfg), "--threads", "1"]
    ranks = [subprocess.Popen(cmd, env=rank_env(r, 2, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    metrics = tiny / f"dp-{how}" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    ranks[1].send_signal(signal.SIGKILL if how == "dies" else signal.SIGSTOP)
    stopped_at = time.time()
    try:
        _, err = ranks[0].communicate(timeout=timeout + 60)
    except subprocess.TimeoutExpired:
        ranks[0].kill()
        pytest.fail(f"rank 0 still runs {timeout + 60} s after rank 1 {how}")
    finally:
        ranks[1].kill()
        ranks[1].wait()
    took = time.time() - stopped_at
    last = err.strip().splitlines()[-1]
    print(f"rank 0 exited {took:.1f} s after rank 1 {how}: {last}")
    assert ranks[0].returncode != 0
    assert last.startswith("lego train: error (io): rank 0 of 2: ") and "failed" in last, err
    if how == "hangs":
        assert took >= timeout * 0.8, "rank 0 gave up before its timeout"


def torchrun():
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


def test_torchrun_one_node_and_two_nodes_give_the_parameters_of_nproc(tiny, reference):
    keys = dict(reference, **{"train.batch_size": 4})
    # One node, two ranks (torchrun's agent serves the store).
    cfg = stage_config(tiny, "tr-one-node", **keys)
    port = free_port()
    proc = subprocess.run([*torchrun(), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port",
                           str(port), "--no-python", str(lego_bin()), "train", "--config", str(cfg), "--threads", "1"],
                          capture_output=True, text=True, env=one_thread_env(), timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert worst_difference(tiny / "dp-one" / "model", tiny / "tr-one-node" / "model") <= 1e-5
    # Two nodes of one rank each, both on 127.0.0.1 with their own node rank.
    cfg = stage_config(tiny, "tr-two-nodes", **keys)
    port = free_port()
    nodes = [subprocess.Popen([*torchrun(), "--nnodes", "2", "--node-rank", str(n), "--nproc-per-node", "1",
                               "--master-addr", "127.0.0.1", "--master-port", str(port), "--no-python",
                               str(lego_bin()), "train", "--config", str(cfg), "--threads", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=one_thread_env())
             for n in range(2)]
    for node in nodes:
        _, err = node.communicate(timeout=900)
        assert node.returncode == 0, err
    assert worst_difference(tiny / "dp-one" / "model", tiny / "tr-two-nodes" / "model") <= 1e-5


def test_slurm_variables_start_the_same_run(tiny, reference):
    # What srun sets for 2 tasks on one node (no Slurm here): the ranks meet on the node list's first host.
    keys = dict(reference, **{"train.batch_size": 4})
    cfg = stage_config(tiny, "slurm", **keys)
    port = free_port()
    env = lambda r: dict(one_thread_env(), SLURM_PROCID=str(r), SLURM_NTASKS="2", SLURM_LOCALID=str(r),
                         SLURM_NTASKS_PER_NODE="2", SLURM_JOB_NODELIST="localhost", MASTER_PORT=str(port))
    ranks = [subprocess.Popen([str(lego_bin()), "train", "--config", str(cfg), "--threads", "1"], env=env(r),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    for r in ranks:
        _, err = r.communicate(timeout=900)
        assert r.returncode == 0, err
    assert worst_difference(tiny / "dp-one" / "model", tiny / "slurm" / "model") <= 1e-5


def test_nproc_refuses_bad_counts_and_nesting(tiny):
    cfg = stage_config(tiny, "dp-bad", **{"train.max_steps": 1})
    proc = run_lego("train", "--config", cfg, "--nproc", "0", check=False)
    assert proc.returncode != 0 and "--nproc must be in [1, 1024]" in proc.stderr
    proc = subprocess.run([str(lego_bin()), "train", "--config", str(cfg), "--nproc", "2"], capture_output=True,
                          text=True, env=rank_env(0, 2, free_port()))
    assert proc.returncode != 0 and "already a rank" in proc.stderr
    proc = subprocess.run([str(lego_bin()), "train", "--config", str(cfg)], capture_output=True, text=True,
                          env=dict(os.environ, WORLD_SIZE="2", RANK="5", MASTER_ADDR="127.0.0.1"))
    assert proc.returncode != 0 and "RANK='5'" in proc.stderr


@pytest.mark.parametrize("zero", [1, 2])
def test_sharded_optimizer_state_and_gradients_equal_plain_data_parallel(tiny, reference, zero):
    # ZeRO 1: each rank keeps and steps the AdamW state of its own tensors and sends them to the others;
    # ZeRO 2: also each gradient bucket is summed on its owner only (clipping sums the norm over ranks).
    keys = dict(reference, **{"train.batch_size": 4, "train.zero_stage": zero})
    proc = train_nproc(stage_config(tiny, f"zero{zero}", **keys))
    assert f"ZeRO stage {zero}" in proc.stderr
    assert "ZeRO: each rank owns whole tensors, " in proc.stderr, proc.stderr
    # The memory line: ZeRO 2 holds its own gradients and at most two of the others' buckets in flight.
    assert ("of other ranks' in flight" in proc.stderr) == (zero == 2), proc.stderr
    worst = worst_difference(tiny / "dp-one" / "model", tiny / f"zero{zero}" / "model")
    print(f"max abs difference, ZeRO {zero} vs one process:", worst)
    assert worst <= 1e-5
    # Each rank's part of the optimizer state is in the checkpoint, and the parameters make a model.
    ckpt = tiny / f"zero{zero}" / "checkpoints" / "step-00000012"
    assert sorted(p.name for p in ckpt.glob("optimizer*")) == ["optimizer-rank-0.pt", "optimizer-rank-1.pt"]
    out = run_lego("consolidate", "--config", tiny / f"zero{zero}.ini", "--out", tiny / f"zero{zero}-model")
    assert "step-00000012" in out.stdout
    assert worst_difference(tiny / f"zero{zero}" / "model", tiny / f"zero{zero}-model") == 0


def test_a_killed_zero2_run_resumes_to_the_parameters_of_an_uninterrupted_one(tiny):
    keys = {"train.batch_size": 4, "train.max_steps": 20, "train.save_every": 5, "train.keep_checkpoints": 5,
            "train.log_every": 5, "train.zero_stage": 2}
    train_nproc(stage_config(tiny, "z-straight", **keys))
    cfg = stage_config(tiny, "z-killed", **keys)
    kill_nproc_at_checkpoint(cfg, tiny / "z-killed", 10)
    # Its optimizer state is in two parts: a run that keeps it whole refuses the checkpoint.
    refused = train_nproc(cfg, 2, "--resume", "--set", "train.zero_stage=0", check=False)
    assert refused.returncode != 0 and "sharded over 2 ranks (train.zero_stage 2)" in refused.stderr
    resumed = train_nproc(cfg, 2, "--resume")
    assert "resuming from" in resumed.stderr
    worst = worst_difference(tiny / "z-straight" / "model", tiny / "z-killed" / "model")
    print("max abs difference after a ZeRO-2 resume:", worst)
    assert worst <= 1e-6


def test_consolidate_names_what_is_missing(tiny):
    cfg = stage_config(tiny, "never-trained", **{"train.max_steps": 1})
    proc = run_lego("consolidate", "--config", cfg, "--out", tiny / "nt-model", check=False)
    assert proc.returncode != 0 and "no complete checkpoint" in proc.stderr
    half = tiny / "half-ckpt"
    half.mkdir()
    (half / "state.json").write_text("{}")
    proc = run_lego("consolidate", "--config", cfg, "--checkpoint", half, "--out", tiny / "nt-model", check=False)
    assert proc.returncode != 0 and "not a complete checkpoint" in proc.stderr
    assert not (tiny / "nt-model").exists()


def test_bf16_over_two_ranks_sums_like_one_process_shards_and_resumes_exactly(tiny):
    # train.precision = bf16: bf16 gradients summed in bf16, fp32 masters stepped by their owners (ZeRO 2),
    # which send the rounded bf16 tensors to the others; a checkpoint gathers the owners' masters.
    keys = {"train.batch_size": 4, "train.max_steps": 20, "train.save_every": 5, "train.keep_checkpoints": 5,
            "train.log_every": 5, "train.precision": "bf16", "optim.lr": 2e-4}
    run_lego("train", "--config", stage_config(tiny, "bf16-one", **dict(keys, **{
        "train.batch_size": 8, "train.dump_gradients": tiny / "bf16-one.safetensors"})))
    train_nproc(stage_config(tiny, "bf16-dp", **dict(keys, **{"train.dump_gradients": tiny / "bf16-dp.safetensors"})))
    z2 = dict(keys, **{"train.zero_stage": 2})
    proc = train_nproc(stage_config(tiny, "bf16-z2", **z2))
    assert "fp32 master weights" in proc.stderr, proc.stderr

    # The first step's gradient: the two ranks' bf16 halves summed in bf16 against one process's backward
    # pass over the whole batch, as the relative L2 distance over all tensors: bf16's rounding (measured
    # 5e-3; a tensor whose gradient is a cancelling sum, as a norm's bias, differs by more on its own),
    # where a rank that kept its own half would be 0.5 off.
    g1, g2 = (safetensors.torch.load_file(str(tiny / f"bf16-{n}.safetensors")) for n in ("one", "dp"))
    grads = [k for k in g1 if k.startswith("grad.")]
    assert grads and set(grads) == {k for k in g2 if k.startswith("grad.")}
    assert all(g2[k].dtype == torch.bfloat16 for k in grads)
    rel = (sum((g2[k].double() - g1[k].double()).pow(2).sum() for k in grads).sqrt() /
           sum(g1[k].double().pow(2).sum() for k in grads).sqrt()).item()
    loss_rel = abs(g2["loss"].item() - g1["loss"].item()) / g1["loss"].item()
    one, dp, zero2 = (exact_params(tiny / n / "model") for n in ("bf16-one", "bf16-dp", "bf16-z2"))

    def worst(a, b):
        return max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"bf16 first step, 2 ranks vs one process: gradients {rel:.2e} (relative L2), loss {loss_rel:.1e}; "
          f"after 20 steps, max abs difference: 2 ranks vs one process {worst(one, dp):.2e}, "
          f"ZeRO 2 vs plain {worst(dp, zero2):.2e}")
    assert rel <= 2e-2 and loss_rel <= 1e-3
    # Adam turns rounding-sized differences of a gradient into steps of about lr either way, so after 20
    # steps the parameters agree to a few lr (20 lr bounds it; opposite steps throughout would be 40 lr).
    assert worst(one, dp) <= 20 * keys["optim.lr"]
    assert worst(dp, zero2) <= 20 * keys["optim.lr"]

    cfg = stage_config(tiny, "bf16-z2-killed", **z2)
    kill_nproc_at_checkpoint(cfg, tiny / "bf16-z2-killed", 10)
    ckpt = tiny / "bf16-z2-killed" / "checkpoints" / "step-00000010" / "trainable.safetensors"
    assert {v.dtype for v in safetensors.torch.load_file(str(ckpt)).values()} == {torch.float32}
    assert "resuming from" in train_nproc(cfg, 2, "--resume").stderr
    assert worst(zero2, exact_params(tiny / "bf16-z2-killed" / "model")) == 0
    # A model made of the checkpoint is the one the run wrote (its trained tensors: the fp32 masters).
    run_lego("consolidate", "--config", tiny / "bf16-z2.ini", "--out", tiny / "bf16-z2-consolidated")
    written = safetensors.torch.load_file(str(tiny / "bf16-z2" / "model" / "model.safetensors"))
    made = safetensors.torch.load_file(str(tiny / "bf16-z2-consolidated" / "model.safetensors"))
    assert {k: v.dtype for k, v in made.items()} == {k: v.dtype for k, v in written.items()}
    assert all(torch.equal(made[k], written[k]) for k in written)
