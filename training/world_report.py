"""Measure demo-world generators against the world's ground truth: `python -m training.world_report MODEL... --out DIR`.

Every generator whose latent is the world's z (the demo teacher, and its students, which share its mapping) is
compared with the renderer's image of the head that z decodes to, at the same camera. Writes DIR/world_report.json
(the model cards' numbers), DIR/samples.png (per held-out head and yaw: ground truth, then each model) and
DIR/expressions.png (per expression probe and head: the ground truth low and high, then each model's):
- image PSNR and LPIPS (VGG) at the output size for held-out heads at yaw -35..35 deg (pitch 0), the PSNR within
  2 px of the head's outline (where most of the error is), and, for models that render depth and opacity (the
  teacher), the depth error inside the head mask (scene units) and the drawn head's size against the truth's;
- whether expressions show: for the smile, jaw-open, blink, brow-raise and gaze latents, the cosine between the model's
  and the truth's image change from low to high on 8 of those heads seen from the front
  (`fit_teacher.expression_response`);
- how often dlib's HOG detector finds a face in renders of random latents at yaw -30, 0 and 30 deg, for each model
  and for the ground truth at the same latents.
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
from editkit.io import atomic_write, check_outputs
from editkit.metrics.image import psnr
from training.fit_teacher import (EVAL_SEED, EXPRESSION_PROBES, GroundTruth, evaluation_set, expression_response,
                                  probe_images, render, silhouette)
from training.synthetic.latent import LATENT_SIZE

YAWS = (-35.0, -17.5, 0.0, 17.5, 35.0)
DETECTION_YAWS = (-30.0, 0.0, 30.0)


def face_found(detector, image: np.ndarray) -> bool:
    return len(detector(image, 1)) > 0  # one upsampling: HOG misses most faces at 128 px without it


def per_yaw(values: torch.Tensor, digits: int) -> dict:
    return {f"{yaw:+.1f}": round(float(values[k::len(YAWS)].mean()), digits) for k, yaw in enumerate(YAWS)}


def fidelity(G, data: dict, lpips) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """PSNR, LPIPS, the outline's PSNR (and depth error, head size), expression response against the ground truth
    in data; also returns the images and the expression probes' images."""
    out = render(G, data["z"], data["labels"])
    image_psnr = psnr(out["image"], data["image"])
    with torch.no_grad():
        lp = torch.cat([lpips(out["image"][i:i + 16], data["image"][i:i + 16])
                        for i in range(0, len(image_psnr), 16)])
    metrics = {"psnr": round(float(image_psnr.mean()), 2), "lpips_vgg": round(float(lp.mean()), 4),
               "psnr_per_yaw": per_yaw(image_psnr, 2), "lpips_per_yaw": per_yaw(lp, 4)}
    for name, values in silhouette(out, data).items():  # where most of the error is
        metrics[name], metrics[f"{name}_per_yaw"] = round(float(values.mean()), 3), per_yaw(values, 3)
    if "image_depth" in out:
        inside = data["inside"]
        error = ((out["image_depth"] - data["depth"]).abs() * inside).sum((1, 2, 3)) / inside.sum((1, 2, 3))
        metrics.update(depth_error=round(float(error.mean()), 4), depth_error_per_yaw=per_yaw(error, 4))
    probes = probe_images(G, data)
    metrics["expression_response"] = expression_response(probes, data["probe_image"])
    return metrics, out["image"], probes


def detection_rates(models: dict, truth, n: int, seed: int) -> dict:
    """Share of renders of n random latents in which dlib finds a face, per yaw, for each model and the truth."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    z = torch.randn(n, LATENT_SIZE, generator=torch.Generator().manual_seed(seed))
    rates = {name: {} for name in ["ground_truth", *models]}
    for yaw in tqdm(DETECTION_YAWS, desc="dlib detection"):
        labels = cameras.make_label(torch.full((n,), yaw, dtype=torch.float64), 0.0).float()
        images = {"ground_truth": truth(z, labels)["image"]}
        images.update({name: render(G, z, labels)["image"] for name, G in models.items()})
        for name, batch in images.items():
            rates[name][f"{yaw:+.0f}"] = float(np.mean([face_found(detector, im) for im in to_uint8(batch)]))
    for row in rates.values():
        row["mean"] = round(float(np.mean(list(row.values()))), 3)
    return rates


def sample_sheet(truth: torch.Tensor, fits: list, heads: int, rows: int = 4) -> np.ndarray:
    """Rows of heads; per row, for each yaw: ground truth, then each model's image."""
    columns = [to_uint8(truth)] + [to_uint8(images) for images in fits]
    size = columns[0].shape[1]
    gap = np.full((size, 4, 3), 255, np.uint8)
    lines = []
    for h in range(min(rows, heads)):
        tiles = []
        for k in range(len(YAWS)):
            tiles += [column[h * len(YAWS) + k] for column in columns] + [gap]
        lines.append(np.concatenate(tiles[:-1], 1))
    return np.concatenate(lines, 0)


def expression_sheet(truth: torch.Tensor, models: list, heads: int = 4) -> np.ndarray:
    """Rows of probes x heads; per row: the ground truth with the probed latent low and high, then each model's."""
    shape = (len(EXPRESSION_PROBES), 2, -1, *truth.shape[1:])  # probe, low/high, head
    columns = [to_uint8(images.reshape(-1, *truth.shape[1:])).reshape(*shape[:3], *truth.shape[2:], 3)
               for images in (truth, *models)]
    size = truth.shape[-1]
    gap = np.full((size, 4, 3), 255, np.uint8)
    rows = []
    for probe in range(len(EXPRESSION_PROBES)):
        for head in range(min(heads, columns[0].shape[2])):
            tiles = []
            for column in columns:
                tiles += [column[probe, 0, head], column[probe, 1, head], gap]
            rows.append(np.concatenate(tiles[:-1], 1))
    return np.concatenate(rows, 0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.world_report", description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="+", metavar="[LABEL=]MODEL",
                        help="registry names or .safetensors paths of demo-world generators (teacher, students)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--heads", type=int, default=32, help="held-out heads for the fidelity numbers")
    parser.add_argument("--detections", type=int, default=100, help="random latents per yaw for dlib")
    parser.add_argument("--seed", type=int, default=EVAL_SEED, help="held-out heads seed (default: the fit's)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing report in --out")
    args = parser.parse_args(argv)
    from editkit.perceptual import LPIPS

    paths = {name: args.out / name for name in ("world_report.json", "samples.png", "expressions.png")}
    try:
        check_outputs(paths.values(), args.force)
        models = {label: load_generator(model).eval() for label, model in map(named_model, args.models)}
        first = next(iter(models.values()))
        neural = next((G.neural_rendering_resolution for G in models.values()
                       if hasattr(G, "neural_rendering_resolution")), first.img_resolution)  # the depth maps' size
        truth = GroundTruth(first.img_resolution, neural)
        data = evaluation_set(truth, args.heads, YAWS, args.seed, probe_heads=8)
        lpips = LPIPS("vgg")
        report, fits, probes = {"heads": args.heads, "yaws": list(YAWS), "seed": args.seed, "models": {}}, [], []
        for name, G in tqdm(models.items(), desc="fidelity"):
            report["models"][name], images, probe = fidelity(G, data, lpips)
            fits.append(images)
            probes.append(probe)
        report["dlib_detection"] = detection_rates(models, truth, args.detections, seed=4321)
    except EditkitError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2) + "\n"
    atomic_write(paths["world_report.json"], lambda tmp: tmp.write_text(text), force=args.force)
    for name, sheet in (("samples.png", sample_sheet(data["image"], fits, args.heads)),
                        ("expressions.png", expression_sheet(data["probe_image"], probes))):
        atomic_write(paths[name], lambda tmp: Image.fromarray(sheet).save(tmp, format="png"), force=args.force)
    print(text)
    print(f"wrote {', '.join(map(str, paths.values()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
