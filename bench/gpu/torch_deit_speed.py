"""PyTorch's forward+backward speed on timm's DeiT models, the peer of bench/model_speed.ts in
bench/gpu-check.sh: the same batch, the same rule (summed cross entropy, gradients of every
parameter, the median of timed passes after warm-up passes).

usage: torch_deit_speed.py --models deit_tiny_patch16_224,... --batch B [--seconds S]
                           [--precisions fp32,tf32] [--config VITCONFIG_JSON] [--device cuda|cpu]

A model is a timm name, or LABEL=TIMM_NAME to report it under vit-dist's name.
fp32: strict float32 (TF32 off for matmuls and cuDNN); tf32: TF32 allowed (PyTorch's fast fp32
mode on NVIDIA GPUs). --config replaces the named timm model's architecture by a vit-dist VitConfig
(the --cpu-test mode's tiny model). Prints a readable line per measurement, then one JSON line
each for scripts.
"""
import argparse
import json
import statistics
import time

import timm
import torch
import torch.nn.functional as F

WARMUP_ITERATIONS = 3  # cuDNN and cuBLAS pick their algorithms on the first passes
MIN_TIMED_ITERATIONS = 5


def set_precision(precision):
    allow = {"fp32": False, "tf32": True}[precision]
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
    torch.set_float32_matmul_precision("high" if allow else "highest")


def timm_kwargs(config):
    """timm.create_model keyword arguments for a vit-dist VitConfig (the same architecture)."""
    return {
        "img_size": config["imageSize"], "patch_size": config["patchSize"], "in_chans": config["inChannels"],
        "num_classes": config["numClasses"], "embed_dim": config["embedDim"], "depth": config["depth"],
        "num_heads": config["numHeads"], "mlp_ratio": config["mlpRatio"],
    }


def measure(name, batch, seconds, device, config):
    model = timm.create_model(name, **(timm_kwargs(config) if config else {})).to(device).train()
    size, channels = model.patch_embed.img_size[0], model.patch_embed.proj.in_channels
    images = torch.randn(batch, channels, size, size, device=device)
    labels = torch.arange(batch, device=device) % model.num_classes
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels, reduction="sum").backward()

    for _ in range(WARMUP_ITERATIONS):
        step()
    sync()
    times = []
    start = time.perf_counter()
    while len(times) < MIN_TIMED_ITERATIONS or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - t0) * 1000)
    del model, images, labels
    if device == "cuda":
        torch.cuda.empty_cache()
    return statistics.median(times), len(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=3)
    parser.add_argument("--precisions", default="fp32,tf32")
    parser.add_argument("--config", help="a vit-dist VitConfig (JSON) replacing the timm model's architecture")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    config = json.loads(args.config) if args.config else None
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    torch.manual_seed(0)
    if args.device == "cpu":
        torch.set_num_threads(1)  # as a vit-dist worker computes, and the CPU test shares its cores
    for spec in args.models.split(","):
        label, _, name = spec.rpartition("=")
        label = label or name
        for precision in args.precisions.split(","):
            set_precision(precision)
            ms, iterations = measure(name, args.batch, args.seconds, args.device, config)
            ips = args.batch * 1000 / ms
            print(f"torch {torch.__version__} {label} ({name}) {precision} batch {args.batch} on {gpu}: {ips:.1f} images/s ({ms:.1f} ms per pass, median of {iterations})", flush=True)
            print(json.dumps({"model": label, "timmModel": name, "precision": precision, "batch": args.batch, "msPerStep": ms, "imagesPerSec": ips,
                              "iterations": iterations, "device": gpu, "torch": torch.__version__, "timm": timm.__version__}), flush=True)


if __name__ == "__main__":
    main()
