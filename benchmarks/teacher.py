"""Time the EG3D teacher port on this machine: seconds per image and peak memory, one subprocess per config.

    .venv/bin/python benchmarks/teacher.py                      # ffhq512 and the small demo configs
    .venv/bin/python benchmarks/teacher.py --configs demo128 --runs 5
    .venv/bin/python benchmarks/teacher.py --eg3d-src /tmp/eg3d_src/eg3d   # also the official code, same configs

Random weights (seed 0), batch 1, `torch.no_grad()`, frontal camera; one warm-up render, then `--runs` timed
renders (mapping + synthesis). Peak RSS is the worker's `ru_maxrss`, so configurations do not mix.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from editkit.cameras import make_label
from editkit.models.eg3d import TriPlaneGenerator
from editkit.models.eg3d.configs import FFHQ512_NEURAL_RENDERING_RESOLUTION, ffhq512_kwargs, rendering_kwargs


def demo128_kwargs(samples):
    """128 px through the 2X upsampler from 64 px, narrow backbone (channel_base 2048, channel_max 32)."""
    kwargs = ffhq512_kwargs()
    kwargs.update(img_resolution=128, channel_base=2048, channel_max=32, sr_kwargs=dict(
        channel_base=2048, channel_max=32, fused_modconv_default="inference_only"), rendering_kwargs=rendering_kwargs(
            128, "training.superresolution.SuperresolutionHybrid2X", depth_resolution=samples,
            depth_resolution_importance=samples))
    return kwargs


# name -> (TriPlaneGenerator kwargs, neural rendering resolution)
CONFIGS = {
    "ffhq512": (ffhq512_kwargs(), FFHQ512_NEURAL_RENDERING_RESOLUTION),
    "demo128": (demo128_kwargs(48), 64),
    "demo128-12": (demo128_kwargs(12), 64),
}


def worker(name, runs, eg3d_src):
    """Build one configuration, render, print {'times': [...], 'rss_gb': ...} as JSON."""
    kwargs, resolution = CONFIGS[name]
    generator_class = TriPlaneGenerator
    if eg3d_src:
        sys.path.insert(0, eg3d_src)
        from training.triplane import TriPlaneGenerator as generator_class
    torch.manual_seed(0)
    G = generator_class(**kwargs).eval()
    z, c = torch.randn(1, G.z_dim), make_label(0, 0)
    times = []
    with torch.no_grad():
        for _ in range(runs + 1):
            start = time.perf_counter()
            G.synthesis(G.mapping(z, c), c, neural_rendering_resolution=resolution)
            times.append(time.perf_counter() - start)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    params = sum(p.numel() for p in G.parameters())
    print(json.dumps({"times": times[1:], "rss_gb": rss_gb, "params": params}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--runs", type=int, default=3, help="timed renders per configuration (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--eg3d-src", help="also time the official classes from this eg3d/ folder")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        return worker(args.worker, args.runs, args.eg3d_src)
    print(f"torch {torch.__version__}, {args.threads} threads, batch 1, {args.runs} runs after a warm-up\n")
    print("| code | config | output | neural rendering | samples per ray | parameters | s/image median | min | max "
          "| peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    for name in args.configs:
        for code in ["port"] + (["official"] if args.eg3d_src else []):
            command = [sys.executable, __file__, "--worker", name, "--runs", str(args.runs), "--threads",
                       str(args.threads)] + (["--eg3d-src", args.eg3d_src] if code == "official" else [])
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode:
                sys.exit(f"{code} {name} failed:\n{done.stderr}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            kwargs, resolution = CONFIGS[name]
            rk, times = kwargs["rendering_kwargs"], result["times"]
            print(f"| {code} | {name} | {kwargs['img_resolution']} px | {resolution} px | "
                  f"{rk['depth_resolution']}+{rk['depth_resolution_importance']} | {result['params'] / 1e6:.1f}M | "
                  f"{statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} | {result['rss_gb']:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
