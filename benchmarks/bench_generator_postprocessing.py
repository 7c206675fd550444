"""Time the torch lesion generator and post-processings against plain SciPy in the same run.

    make bench                       # one [32, 512, 512] volume (the paper's slab), CPU
    make bench ARGS="--batch 8"      # a training batch
Prints seconds per call (median of --repeats) and the ratio scipy / torch: NormNet's lesion generator
and post-processing, and the cycle-GAN method's lesion extraction on the volume's --depth slices.
On a machine with CUDA the torch versions also run on the GPU.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from benchmarks.reference import extract_lesions_reference, postprocess_reference, synthesize_reference
from lightning_normnet.config import load_config
from lightning_normnet.difference_postprocessing import extract_lesions
from lightning_normnet.lesions import synthesize
from lightning_normnet.postprocessing import postprocess


def chest_slab(depth: int, size: int, seed: int = 0):
    """Two elliptic lungs with vessel-like bright noise: realistic lung fraction and intensities."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:depth, :size, :size]
    lung = np.zeros((depth, size, size), bool)
    for cx in (0.3, 0.7):
        lung |= ((x - cx * size) / (0.17 * size)) ** 2 + ((y - 0.5 * size) / (0.33 * size)) ** 2 <= 1
    lung = np.broadcast_to(lung, (depth, size, size)).copy()
    healthy = (rng.random(lung.shape) ** 8 * lung).astype(np.float32)
    return healthy, lung


def timed(fn, repeats: int, sync=lambda: None) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = load_config("normnet")
    healthy, lung = chest_slab(args.depth, args.size)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; volume {args.batch} x {list(healthy.shape)}, repeats {args.repeats}")

    rng = np.random.default_rng(0)
    t_ref = timed(lambda: [synthesize_reference(healthy, lung, 1.0, cfg.lesions, rng) for _ in range(args.batch)],
                  args.repeats)
    print(f"lesion generator  scipy (per volume, loop):  {t_ref:8.3f} s")
    for device in devices:
        h = torch.from_numpy(healthy)[None, None].repeat(args.batch, 1, 1, 1, 1).to(device)
        m = torch.from_numpy(lung)[None, None].repeat(args.batch, 1, 1, 1, 1).to(device)
        generator = torch.Generator(device=device).manual_seed(0)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        t = timed(lambda: synthesize(h, m, 1.0, cfg.lesions, generator), args.repeats, sync)
        print(f"lesion generator  torch {device.type:4s} (batched):     {t:8.3f} s   scipy/torch = {t_ref / t:6.1f}x")

    vote = np.random.default_rng(1).random(healthy.shape) < 0.9
    t_ref = timed(lambda: [postprocess_reference(healthy, lung, vote, cfg.postprocessing)
                           for _ in range(args.batch)], args.repeats)
    print(f"post-processing   scipy (per volume, loop):  {t_ref:8.3f} s")
    for device in devices:
        args_t = [torch.from_numpy(a)[None, None].repeat(args.batch, 1, 1, 1, 1).to(device)
                  for a in (healthy, lung, vote)]
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        t = timed(lambda: postprocess(*args_t, cfg.postprocessing), args.repeats, sync)
        print(f"post-processing   torch {device.type:4s} (batched):     {t:8.3f} s   scipy/torch = {t_ref / t:6.1f}x")

    infected = (healthy + 0.5 * (np.random.default_rng(2).random(healthy.shape) < 0.02)).astype(np.float32)
    synthetic = (0.9 * healthy).astype(np.float32)
    t_ref = timed(lambda: [extract_lesions_reference(infected, synthetic, lung) for _ in range(args.batch)],
                  args.repeats)
    print(f"cycle-GAN lesions scipy (per slice, loop):   {t_ref:8.3f} s")
    for device in devices:
        slices = [torch.from_numpy(a)[:, None].repeat(args.batch, 1, 1, 1).to(device)
                  for a in (infected, synthetic, lung)]
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        t = timed(lambda: extract_lesions(*slices), args.repeats, sync)
        print(f"cycle-GAN lesions torch {device.type:4s} (batched):     {t:8.3f} s   scipy/torch = {t_ref / t:6.1f}x")


if __name__ == "__main__":
    main()
