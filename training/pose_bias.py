"""Measure pose-attribute bias in students: `python -m training.pose_bias --teacher T --student NAME=PATH ... --out DIR`.

The stage-2 experiment of docs/pose_bias.md. Its "real" set ties skin tone to yaw (`python -m training.synthetic
--yaw-corr 0.9 --yaw-corr-attr skin_tone`): heads turned right are darker. A student that learns this from the
discriminator darkens a face when the camera turns right, although its latent is fixed. The measure:

    drift(yaw) = mean over latents of [skin luminance(student) - skin luminance(teacher)] at that yaw,

with skin luminance the mean Rec. 601 luma (0-1) of the central patch of the image (cheeks, nose, eyes at every
yaw of the experiment) and the teacher rendering the same (w, camera). Subtracting the teacher removes what
turning the head does to shading anyway; a student without bias keeps drift flat across yaw. Reported: drift per
yaw, its least-squares slope (luma per 10 deg of yaw) and, for reference, the same slope in the real sets
themselves (biased minus unbiased set, binned by yaw), so the students' bias can be read against the data's.

Writes DIR/pose_bias.json, DIR/pose_bias.png (drift against yaw) and DIR/pose_bias_samples.png (fixed latents:
teacher, then each student, across yaw) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from editkit import cameras
from editkit.checkpoints import load_generator, named_model
from editkit.errors import EditkitError, one_line
from editkit.evaluation import to_uint8
from editkit.images import load_image
from editkit.io import atomic_write, check_outputs
from training.distill.data import read_labels

YAWS = tuple(np.linspace(-35.0, 35.0, 8))
PATCH = (0.35, 0.65)  # central patch, as a fraction of the image side
LUMA = torch.tensor([0.299, 0.587, 0.114])


def skin_luma(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, R, R) in [-1, 1] -> (N,) mean luma of the central patch, in [0, 1]."""
    r = images.shape[-1]
    lo, hi = round(PATCH[0] * r), round(PATCH[1] * r)
    patch = (images[:, :, lo:hi, lo:hi].clamp(-1, 1) + 1) / 2
    return torch.einsum("nchw,c->n", patch, LUMA) / (hi - lo) ** 2


def slope_per_10deg(yaw: np.ndarray, value: np.ndarray) -> float:
    return float(np.polyfit(yaw, value, 1)[0] * 10)


@torch.no_grad()
def render_sweep(models: dict, n: int, seed: int) -> dict:
    """Images of n latents x YAWS for every model: {name: (n, len(YAWS), 3, R, R)}; w from the first model's
    mapping (the teacher's, shared by its students), conditioned on the frontal camera."""
    teacher = next(iter(models.values()))
    z = torch.randn(n, teacher.z_dim, generator=torch.Generator().manual_seed(seed))
    ws = teacher.mapping(z, cameras.frontal_label().float().expand(n, -1))
    images = {name: [] for name in models}
    for yaw in tqdm(YAWS, desc="rendering yaw sweep"):
        label = cameras.make_label(float(yaw), 0.0).float().expand(n, -1)
        for name, G in models.items():
            images[name].append(G.synthesis(ws, label, noise_mode="const")["image"])
    return {name: torch.stack(views, 1) for name, views in images.items()}


def data_slope(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Yaw (deg) and skin luma of every image of an EG3D dataset folder."""
    yaw, luma = [], []
    for filename, label in tqdm(read_labels(folder), desc=f"reading {folder.name}"):
        image = torch.from_numpy(load_image(folder / filename)).permute(2, 0, 1)[None].float() / 127.5 - 1
        luma.append(float(skin_luma(image)[0]))
        yaw.append(float(cameras.label_to_yaw_pitch(torch.tensor(label))[0]))
    return np.array(yaw), np.array(luma)


def real_bias(biased: Path, unbiased: Path, limit: float = 35.0) -> dict:
    """Slope of skin luma against yaw in the biased set minus that in the unbiased one (|yaw| <= limit)."""
    slopes = {}
    for name, folder in (("biased", biased), ("unbiased", unbiased)):
        yaw, luma = data_slope(folder)
        keep = np.abs(yaw) <= limit
        slopes[name] = slope_per_10deg(yaw[keep], luma[keep])
    return {"slope_biased": round(slopes["biased"], 4), "slope_unbiased": round(slopes["unbiased"], 4),
            "slope_bias": round(slopes["biased"] - slopes["unbiased"], 4)}


def measure(images: dict) -> dict:
    """Drift per yaw and its slope for every model but the first (the teacher)."""
    names = list(images)
    teacher = torch.stack([skin_luma(images[names[0]][:, k]) for k in range(len(YAWS))], 1)
    result = {}
    for name in names[1:]:
        student = torch.stack([skin_luma(images[name][:, k]) for k in range(len(YAWS))], 1)
        drift = (student - teacher).numpy()  # (n, yaws)
        per_latent = [slope_per_10deg(np.array(YAWS), row) for row in drift]
        result[name] = {"drift": [round(float(d), 4) for d in drift.mean(0)],
                        "slope": round(slope_per_10deg(np.array(YAWS), drift.mean(0)), 4),
                        "slope_std_over_latents": round(float(np.std(per_latent)), 4)}
    return result


def plot(result: dict, reference: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, row in result.items():
        ax.plot(YAWS, row["drift"], marker="o", label=f"{name} (slope {row['slope']:+.3f} / 10 deg)")
    if reference:
        ax.plot(YAWS, [reference["slope_bias"] * y / 10 for y in YAWS], "k--",
                label=f"bias of the real set (slope {reference['slope_bias']:+.3f})")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("yaw (deg)")
    ax.set_ylabel("skin luma, student - teacher")
    ax.set_title("Pose-attribute drift for fixed latents")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), force=True)
    plt.close(fig)


def sample_sheet(images: dict, latents: int = 2) -> np.ndarray:
    """For each of the first latents: one row per model (teacher first), one column per yaw."""
    rows = []
    for i in range(latents):
        for views in images.values():
            rows.append(np.concatenate(list(to_uint8(views[i])), 1))
        rows.append(np.full((6, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], 0)


def markdown(result: dict, reference: dict | None) -> str:
    lines = ["| model | " + " | ".join(f"{y:+.0f}" for y in YAWS) + " | slope per 10 deg |",
             "|---" * (len(YAWS) + 2) + "|"]
    for name, row in result.items():
        lines.append(f"| {name} | " + " | ".join(f"{d:+.3f}" for d in row["drift"])
                     + f" | {row['slope']:+.4f} (latent std {row['slope_std_over_latents']:.4f}) |")
    if reference:
        lines.append("| real set bias (biased - unbiased) | " + " | ".join("" for _ in YAWS)
                     + f" | {reference['slope_bias']:+.4f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.pose_bias", description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", required=True, help="the students' teacher (registry name or file)")
    parser.add_argument("--student", action="append", required=True, metavar="[LABEL=]MODEL",
                        help="a student to measure (repeat); LABEL names it in the table")
    parser.add_argument("--real", nargs=2, type=Path, metavar=("BIASED", "UNBIASED"),
                        help="dataset folders: the bias of the real set, for reference")
    parser.add_argument("--n", type=int, default=64, help="latents")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--force", action="store_true", help="overwrite an existing report in --out")
    args = parser.parse_args(argv)
    try:
        check_outputs([args.out / name for name in ("pose_bias.json", "pose_bias.png", "pose_bias_samples.png")],
                      args.force)
        models = {"teacher": load_generator(args.teacher).eval()}
        models.update({label: load_generator(model).eval() for label, model in map(named_model, args.student)})
        images = render_sweep(models, args.n, args.seed)
        result = measure(images)
        reference = real_bias(*args.real) if args.real else None
        report = {"measure": "skin luma of the central patch, student minus teacher (0-1)", "yaws": list(YAWS),
                  "latents": args.n, "seed": args.seed, "students": result, "real_set": reference}
        args.out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(report, indent=2) + "\n"
        atomic_write(args.out / "pose_bias.json", lambda tmp: tmp.write_text(text), force=True)
        plot(result, reference, args.out / "pose_bias.png")
        sheet = sample_sheet(images)
        atomic_write(args.out / "pose_bias_samples.png",
                     lambda tmp: Image.fromarray(sheet).save(tmp, format="png"), force=True)
    except EditkitError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    print(markdown(result, reference))
    print(f"wrote {args.out / 'pose_bias.json'}, pose_bias.png and pose_bias_samples.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
