"""Latency of one edit: from a cached latent, move it along a direction and render one view, in milliseconds.

    .venv/bin/python benchmarks/edit_latency.py --model demo-student             # a registered model
    .venv/bin/python benchmarks/edit_latency.py --model random:tiny --runs 20     # random weights, fit_teacher configs
    .venv/bin/python benchmarks/edit_latency.py --model M --latent out/latent.npy --direction d.npy

Timed per run: `w + strength * d` (editkit.editing.apply_edits) and the generator's synthesis at yaw 30, pitch -10,
converted to a uint8 image (editkit.editing.render.render_images), batch 1, `torch.no_grad()`. The latent is read
(or, without --latent, mapped from seed 0) once before timing; a few warm-up runs are not counted. Target for the
demo student: a median under 50 ms at 128 px on the project's 2-core CPU. Prints a markdown table row.
"""

import argparse
import statistics
import time

import numpy as np
import torch

from editkit import cameras
from editkit.editing.directions import Direction, apply_edits, load_direction
from editkit.editing.render import render_images


def load(model: str):
    """A generator by registry name or path, or 'random:<config>' for fit_teacher's configs with random weights."""
    if model.startswith("random:"):
        from training.fit_teacher import CONFIGS, build_teacher

        torch.manual_seed(0)
        return build_teacher(CONFIGS[model.split(":", 1)[1]]).eval()
    from editkit.checkpoints import load_generator

    return load_generator(model)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:tiny", help="name, path, or random:demo / random:tiny")
    parser.add_argument("--latent", help="latent .npy (1, num_ws, w_dim) (default: mapped from seed 0)")
    parser.add_argument("--direction", help="direction .npy (default: a random unit direction in W)")
    parser.add_argument("--strength", type=float, default=1.5)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    G = load(args.model)
    with torch.no_grad():
        if args.latent:
            from editkit.latents import read_latent

            ws, _ = read_latent(args.latent)
        else:
            z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0))
            ws = G.mapping(z, cameras.frontal_label())
    if args.direction:
        direction = load_direction(args.direction, G.num_ws, G.w_dim)
    else:
        vector = np.random.default_rng(0).standard_normal((1, G.w_dim)).astype(np.float32)
        direction = Direction(vector / np.linalg.norm(vector), "random", "random")
    label = cameras.make_label(30.0, -10.0)
    times = []
    for i in range(args.warmup + args.runs):
        start = time.perf_counter()
        image = render_images(G, apply_edits(ws, [(direction, args.strength)]), label)
        if i >= args.warmup:
            times.append(1000 * (time.perf_counter() - start))
    print(f"torch {torch.__version__}, {args.threads} threads, batch 1, {args.runs} runs after {args.warmup} warm-up\n")
    print("| model | output | median ms | min | max |\n|---|---|---|---|---|")
    print(f"| {args.model} | {image.shape[1]} px | {statistics.median(times):.1f} | {min(times):.1f} | "
          f"{max(times):.1f} |")


if __name__ == "__main__":
    main()
