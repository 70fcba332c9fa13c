"""Measure a demo-world teacher against the world's ground truth: `python -m training.teacher_report MODEL --out DIR`.

Writes DIR/teacher_report.json (the model card's numbers) and DIR/teacher_samples.png (ground truth beside the
fit, several held-out heads x yaw):
- image PSNR and LPIPS (VGG) at the output size, and depth error inside the head mask (scene units), for held-out
  heads at yaw -35..35 deg (pitch 0);
- how often dlib's HOG detector finds a face in renders of random latents at yaw -30, 0 and 30 deg, for the
  teacher and for the ground truth at the same latents.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from editkit import cameras
from editkit.checkpoints import load_generator
from editkit.io import atomic_write
from training.fit_teacher import EVAL_SEED, GroundTruth, evaluation_set
from training.synthetic.latent import LATENT_SIZE

YAWS = (-35.0, -17.5, 0.0, 17.5, 35.0)
DETECTION_YAWS = (-30.0, 0.0, 30.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def face_found(detector, image: np.ndarray) -> bool:
    return len(detector(image, 1)) > 0  # one upsampling: HOG misses most faces at 128 px without it


@torch.no_grad()
def render(G, z: torch.Tensor, labels: torch.Tensor, batch: int = 8) -> dict:
    out = {"image": [], "image_depth": []}
    for i in range(0, len(z), batch):
        ws = G.mapping(z[i:i + batch], labels[i:i + batch])
        result = G.synthesis(ws, labels[i:i + batch], noise_mode="const")
        for key in out:
            out[key].append(result[key])
    return {key: torch.cat(value) for key, value in out.items()}


def fidelity(G, truth, heads: int, seed: int = EVAL_SEED) -> tuple[dict, dict]:
    """PSNR, LPIPS and depth error on held-out heads x YAWS; also returns the renders for the sample sheet."""
    from editkit.perceptual import LPIPS

    data = evaluation_set(truth, heads, YAWS, seed)
    out = render(G, data["z"], data["labels"])
    mse = ((out["image"].clamp(-1, 1) - data["image"]) / 2).pow(2).mean((1, 2, 3))
    psnr = -10 * torch.log10(mse)
    lpips = LPIPS("vgg")
    with torch.no_grad():
        lp = torch.cat([lpips(out["image"][i:i + 16], data["image"][i:i + 16]) for i in range(0, len(mse), 16)])
    inside = data["inside"]
    depth_error = ((out["image_depth"] - data["depth"]).abs() * inside).sum((1, 2, 3)) / inside.sum((1, 2, 3))
    per_yaw = {f"{yaw:+.1f}": {"psnr": round(float(psnr[k::len(YAWS)].mean()), 2),
                               "lpips": round(float(lp[k::len(YAWS)].mean()), 4),
                               "depth_error": round(float(depth_error[k::len(YAWS)].mean()), 4)}
               for k, yaw in enumerate(YAWS)}
    metrics = {"heads": heads, "yaws": list(YAWS), "psnr": round(float(psnr.mean()), 2),
               "lpips_vgg": round(float(lp.mean()), 4), "depth_error": round(float(depth_error.mean()), 4),
               "per_yaw": per_yaw}
    return metrics, {"truth": data["image"], "fit": out["image"]}


def detection_rates(G, truth, n: int, seed: int) -> dict:
    """Share of teacher renders (and ground-truth renders) of n random latents where dlib finds a face."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    z = torch.randn(n, LATENT_SIZE, generator=torch.Generator().manual_seed(seed))
    rates = {}
    for yaw in tqdm(DETECTION_YAWS, desc="dlib detection"):
        labels = cameras.make_label(torch.full((n,), yaw, dtype=torch.float64), 0.0).float()
        fit = to_uint8(render(G, z, labels)["image"])
        real = to_uint8(truth(z, labels)["image"])
        rates[f"{yaw:+.0f}"] = {"teacher": float(np.mean([face_found(detector, im) for im in fit])),
                                "ground_truth": float(np.mean([face_found(detector, im) for im in real]))}
    rates["teacher_mean"] = float(np.mean([r["teacher"] for r in rates.values()]))
    return rates


def sample_sheet(images: dict, heads: int, rows: int = 6) -> np.ndarray:
    """Rows of heads; per row, for each yaw, ground truth then fit."""
    truth, fit = to_uint8(images["truth"]), to_uint8(images["fit"])
    n_yaw = len(YAWS)
    lines = []
    for h in range(min(rows, heads)):
        tiles = []
        for k in range(n_yaw):
            tiles += [truth[h * n_yaw + k], fit[h * n_yaw + k], np.full((truth.shape[1], 4, 3), 255, np.uint8)]
        lines.append(np.concatenate(tiles[:-1], 1))
    return np.concatenate(lines, 0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.teacher_report", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="registry name or .safetensors path of a demo-world teacher")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--heads", type=int, default=32, help="held-out heads for the fidelity numbers")
    parser.add_argument("--detections", type=int, default=100, help="random latents per yaw for dlib")
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help="held-out heads seed (default: the fit's)")
    args = parser.parse_args(argv)
    G = load_generator(args.model).eval()
    truth = GroundTruth(G.img_resolution, G.neural_rendering_resolution)
    metrics, images = fidelity(G, truth, args.heads, args.seed)
    metrics["dlib_detection"] = detection_rates(G, truth, args.detections, seed=4321)
    text = json.dumps(metrics, indent=2) + "\n"
    atomic_write(args.out / "teacher_report.json", lambda tmp: tmp.write_text(text), force=True)
    sheet = sample_sheet(images, args.heads)
    atomic_write(args.out / "teacher_samples.png", lambda tmp: Image.fromarray(sheet).save(tmp, format="png"),
                 force=True)
    print(text)
    print(f"wrote {args.out / 'teacher_report.json'} and {args.out / 'teacher_samples.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
