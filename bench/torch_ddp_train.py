"""PyTorch DDP training the model of a vit-dist recipe, the peer of bench/train-vs-ddp.sh.

usage: torch_ddp_train.py --recipe RECIPE_JSON --config CONFIG_JSON --steps S [--ranks 2] [--warmup-steps 10]

RECIPE_JSON is the recipe file (its data.path, globalBatch, optimizer, schedule, clipNorm and seed are
used); CONFIG_JSON is vit-dist's VitConfig of its model. The model is test/fixtures/reference_vit.py's
ViT (timm's architecture, held equal to vit-dist's by the logit cross-check), trained as a PyTorch user
would write it: torch.multiprocessing starts the ranks, gloo over loopback, one thread per rank,
DistributedDataParallel, each rank's share of the global batch in one forward/backward pass, AdamW
(decoupled decay scaled by the learning rate, on the matrices only, as vit-dist's decay mask), global
norm clipping, linear warmup then cosine as the recipe's schedule. Fashion-MNIST comes from the same idx
files vit-dist reads, decoded once into memory, normalized as the recipe's pipeline does.

Rank 0 prints one line per step with the wall time at the step's end, then one JSON line (the last)
with images/s over the steady-state window: the steps after --warmup-steps, timed from the end of step
`warmup-steps` to the end of the last step, the same rule bench/train-vs-ddp.sh applies to vit-dist's
metrics.jsonl.
"""
import argparse
import gzip
import json
import math
import os
import socket
import struct
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures"))
from reference_vit import VisionTransformer  # noqa: E402

NO_DECAY_NAMES = {"cls_token", "dist_token", "pos_embed"}  # as src/train/weight-decay.ts
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.286, 0.353  # as src/data/fashion-mnist.ts


def read_idx(path):
    """An idx file (gzipped or not) as a uint8 tensor of its dimensions."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(raw[4 + 4 * ndim :]), dtype=torch.uint8).reshape(dims)


def find(directory, stem):
    for name in (stem, stem + ".gz"):
        if os.path.exists(os.path.join(directory, name)):
            return os.path.join(directory, name)
    raise FileNotFoundError(f"no {stem}[.gz] in {directory}")


def lr_at(step, recipe, steps_per_epoch):
    """The recipe's schedule at optimizer step `step` (0-based): linear warmup, then cosine to minLr."""
    base = recipe["optimizer"]["lr"]
    schedule = recipe["schedule"]
    warmup = schedule["warmupSteps"] or 0
    total = recipe["steps"] or recipe["epochs"] * steps_per_epoch
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return schedule["minLr"] + 0.5 * (base - schedule["minLr"]) * (1 + math.cos(math.pi * progress))


def init_weights(model):
    """Truncated normal (std 0.02) for every matrix and token, zero biases: vit-dist's init."""
    for name, p in model.named_parameters():
        if name.endswith(".bias"):
            nn.init.zeros_(p)
        elif "norm" not in name:
            nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)


def run(rank, args, port):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=args.ranks)
    recipe = json.load(open(args.recipe))
    config = json.loads(args.config)
    data_dir = recipe["data"]["path"]
    images = read_idx(find(data_dir, "train-images-idx3-ubyte"))
    labels = read_idx(find(data_dir, "train-labels-idx1-ubyte")).long()
    images = ((images.float() / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD).unsqueeze(1)  # [N, 1, 28, 28]

    torch.manual_seed(recipe["seed"])
    model = VisionTransformer(config)
    init_weights(model)
    model = nn.parallel.DistributedDataParallel(model)
    decay = [p for n, p in model.module.named_parameters() if p.ndim >= 2 and n not in NO_DECAY_NAMES]
    no_decay = [p for n, p in model.module.named_parameters() if not (p.ndim >= 2 and n not in NO_DECAY_NAMES)]
    opt = recipe["optimizer"]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt["weightDecay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=opt["lr"], betas=(opt["beta1"], opt["beta2"]), eps=opt["eps"],
    )
    global_batch = recipe["globalBatch"]
    per_rank = global_batch // args.ranks
    steps_per_epoch = len(images) // global_batch
    generator = torch.Generator().manual_seed(recipe["seed"])
    order = torch.randperm(len(images), generator=generator)

    ends = []
    for step in range(args.steps):
        start = (step % steps_per_epoch) * global_batch + rank * per_rank
        batch = order[start : start + per_rank]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, recipe, steps_per_epoch)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe["clipNorm"])
        optimizer.step()
        ends.append(time.perf_counter())
        if rank == 0:
            print(f"step {step + 1}/{args.steps} loss {loss.item():.4f} t {ends[-1] - ends[0]:.3f}s", flush=True)
    if rank == 0:
        window = args.steps - args.warmup_steps
        seconds = ends[-1] - ends[args.warmup_steps - 1]
        ips = window * global_batch / seconds
        print(f"torch {torch.__version__} DDP, {args.ranks} ranks x 1 thread: {ips:.1f} images/s over steps {args.warmup_steps + 1}-{args.steps}")
        print(json.dumps({"imagesPerSec": ips, "windowSteps": window, "windowSeconds": seconds, "ranks": args.ranks, "torch": torch.__version__}))
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--warmup-steps", type=int, default=10)
    args = parser.parse_args()
    if not 0 < args.warmup_steps < args.steps:
        parser.error(f"--warmup-steps must be in [1, --steps), got {args.warmup_steps}")
    with socket.socket() as probe:  # a free loopback port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(run, args=(args, port), nprocs=args.ranks, join=True)


if __name__ == "__main__":
    main()
