#!/usr/bin/env python3
"""PyTorch gloo all-reduce on loopback: the reference for src/comm/bench-allreduce.ts.

N processes all-reduce a float32 tensor of S elements; prints one JSON line with the median ms
per all-reduce (per iteration, the slowest rank) and bus bandwidth 2(N-1)/N * 4S bytes / time.
The first result is checked against the exact sum. Any PyTorch with gloo: bench/allreduce-vs-gloo.sh
runs it with PyTorch 2.13 CPU from bench/torch-venv.sh.

usage: gloo_allreduce.py --workers N --floats S [--iterations K] [--warmup W]
"""
import argparse
import json
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

CHECK_SLICE = 1 << 22


def bench_value(rank, start, end):
    # Same integer-valued data as bench-allreduce-rank.ts: sums are exact in float32. In int32
    # (index * 7 + rank * 13 < 2^31 below 300M elements), in place: one int32 temporary of the
    # range, not int64 ones (at 86M floats on 8 ranks those exhausted 24 GiB).
    values = torch.arange(start, end, dtype=torch.int32)
    values.mul_(7).add_(rank * 13).remainder_(1001).sub_(500)
    return values.to(torch.float32)


def check(buffer, workers, rank):
    """The exact sum, built a slice at a time (a whole-length expected tensor is 4 bytes a float more)."""
    for start in range(0, buffer.numel(), CHECK_SLICE):
        end = min(start + CHECK_SLICE, buffer.numel())
        expected = bench_value(0, start, end)
        for r in range(1, workers):
            expected.add_(bench_value(r, start, end))
        if not torch.equal(buffer[start:end], expected):
            raise SystemExit(f"rank {rank}: wrong all-reduce result")


def run_rank(rank, workers, floats, iterations, warmup, port, results):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=workers)
    original = bench_value(rank, 0, floats)
    buffer = torch.empty_like(original)
    millis = []
    for iteration in range(warmup + iterations):
        buffer.copy_(original)
        dist.barrier()
        started = time.perf_counter()
        dist.all_reduce(buffer)
        elapsed = (time.perf_counter() - started) * 1000
        if iteration == 0:
            check(buffer, workers, rank)
        if iteration >= warmup:
            millis.append(elapsed)
    results[rank] = millis
    dist.destroy_process_group()


def free_port():
    # Ask the kernel for an ephemeral port rather than picking one (fixed high ports collide).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--floats", type=int, default=5_000_000)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(run_rank, args=(args.workers, args.floats, args.iterations, args.warmup, free_port(), results), nprocs=args.workers)
        per_rank = [results[r] for r in range(args.workers)]
    slowest = [max(rank[i] for rank in per_rank) for i in range(args.iterations)]
    ms = statistics.median(slowest)
    bus_bytes = 2 * (args.workers - 1) / args.workers * 4 * args.floats
    print(json.dumps({"workers": args.workers, "floats": args.floats, "msPerAllreduce": ms, "busGBps": bus_bytes / (ms / 1000) / 1e9}))


if __name__ == "__main__":
    main()
