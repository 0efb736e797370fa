"""PyTorch's forward-plus-backward speed on the model bench/model_speed.ts times, by the same rule.

usage: torch_model_speed.py --config CONFIG_JSON --batch B [--seconds S]

CONFIG_JSON is vit-dist's VitConfig. The model is test/fixtures/reference_vit.py's ViT (timm's
architecture, which the logit cross-check already holds equal to vit-dist's), on one thread as a
vit-dist worker runs. Prints a human-readable line, then one JSON line (the last) for scripts,
naming whether torch has MKL (pip's CPU wheels link it in) and the BLAS libraries the process
actually loaded (Debian's torch takes whatever libblas.so.3 the dynamic linker finds).
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures"))
from reference_vit import VisionTransformer  # noqa: E402

WARMUP_ITERATIONS = 2  # as bench/model_speed.ts
MIN_TIMED_ITERATIONS = 3


def loaded_blas():
    """The BLAS shared objects mapped into this process (Linux)."""
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if "/" in line}
    return sorted(p for p in paths if "blas" in os.path.basename(p).lower()) or ["none found"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=25)
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = json.loads(args.config)
    model = VisionTransformer(config)
    size, channels = config["imageSize"], config["inChannels"]
    images = torch.randn(args.batch, channels, size, size)
    labels = torch.arange(args.batch) % config["numClasses"]

    def step():
        model.zero_grad(set_to_none=True)
        # Summed cross entropy, as lossAndGrad computes it.
        F.cross_entropy(model(images), labels, reduction="sum").backward()

    for _ in range(WARMUP_ITERATIONS):
        step()
    times = []
    start = time.perf_counter()
    while len(times) < MIN_TIMED_ITERATIONS or time.perf_counter() - start < args.seconds:
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1000)
    ms = statistics.median(times)
    ips = args.batch * 1000 / ms
    blas = ", ".join(loaded_blas())
    threads = torch.get_num_threads()
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"torch {torch.__version__} batch {args.batch}: {ips:.1f} images/s (median of {len(times)} passes, {ms:.1f} ms each; peak RSS {peak_rss_mb:.0f} MiB; {threads} thread, BLAS {blas})")
    print(json.dumps({"batch": args.batch, "iterations": len(times), "msPerStep": ms, "imagesPerSec": ips, "peakRssMB": peak_rss_mb, "threads": threads, "mkl": torch.backends.mkl.is_available(), "blas": blas, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
