#!/usr/bin/env python3
"""The floor under data parallel's cost on this machine: how long c10d's Gloo all-reduce of a float32 tensor
takes between two local processes with nothing else running (torch.distributed over loopback, the same
ProcessGroupGloo that `lego train --nproc` uses, one thread each). bench/dist_scaling.py's 2-rank run sums
the tiny model's 1.54 M trained parameters once per step; the default sizes here are a tiny sum (a rank's
bookkeeping: target counts, which parameters a batch reaches), that gradient sum and four times it.

    python bench/gloo_allreduce.py [--sizes 100 1540000 6000000] [--reps 30]

It starts itself twice through torch.multiprocessing and prints, per size, the median and the fastest
all-reduce over --reps timed repetitions (after 5 untimed ones) as rank 0 saw them.
"""
import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_main(rank: int, port: int, sizes, reps: int):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    for n in sizes:
        t = torch.randn(n)
        for _ in range(5):
            dist.all_reduce(t)
        dist.barrier()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            dist.all_reduce(t)
            times.append(time.perf_counter() - t0)
        if rank == 0:
            mb = n * 4 / 2**20
            print(f"{n:>10d} floats ({mb:7.2f} MB): median {statistics.median(times) * 1e3:7.2f} ms, "
                  f"fastest {min(times) * 1e3:7.2f} ms", flush=True)
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1_540_000, 6_000_000], help="floats per sum")
    ap.add_argument("--reps", type=int, default=30, help="timed repetitions per size")
    args = ap.parse_args()
    if args.reps < 1 or any(n < 1 for n in args.sizes):
        ap.error("--reps and every size must be positive")
    print(f"Gloo all-reduce, 2 local processes over loopback, torch {torch.__version__}")
    mp.spawn(rank_main, args=(free_port(), args.sizes, args.reps), nprocs=2, join=True)


if __name__ == "__main__":
    main()
