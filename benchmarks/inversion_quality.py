"""Inversion quality on held-out demo-world photos with ground truth: camera error, reconstruction, novel views.

    python benchmarks/inversion_quality.py [--n 20] [--seed 606] [--steps N] [--out results.json [--force]]
        [--student demo-student] [--with-teacher [--teacher demo-teacher]] [--threads 1] [--keep-photos DIR]

Photos: `n` heads from the demo world's own sampler (`sample_params`: identity, FFHQ-like expressions, appearance,
light) at FFHQ-like poses (`sample_poses`: yaw ~ N(0, 18), pitch ~ N(0, 7) degrees), one numpy generator seeded
with `--seed` (606 by default: no training or evaluation set of the project uses it; the heads are continuous
draws, so none is a training head), rendered by `HeadRenderer` at the generator's resolution and written as PNG
files into a temporary folder (`--keep-photos DIR`: into DIR, kept, e.g. for `editkit invert DIR` and the edit
report's `--photos`).

Each generator inverts them the way `editkit invert` does (`load_image`, then `editkit.inversion.invert_photos`
with default `Settings`, `--steps` aside, batches of 4). Per photo:

* camera error of the landmark (PnP) estimate and of the refined camera against the true one: yaw and pitch
  differences and the angle between the camera rotations (`cameras.rotation_angle_deg`), degrees;
* reconstruction PSNR and LPIPS-Alex against the aligned crop, over its valid pixels (what the inversion reports);
* novel views: the generator's image of the latent at yaw -30 and +30, pitch 0 (the views `editkit invert` puts
  in compare.png) against the renderer's image of the same head at the same cameras: PSNR and LPIPS-Alex;
* the aligned crop's deviation from the renderer's own framing (scale, roll, and how far the crop's corners lie
  from the photo's corners, in pixels): the aligner should return nearly the identity on these renders.

Prints one Markdown table per generator (per photo, then median and mean) and writes every number to `--out`.
Photos where no face is found are listed and left out.
"""

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from editkit import cameras, checkpoints  # noqa: E402
from editkit.errors import EditkitError, FaceError, one_line  # noqa: E402
from editkit.faces import prepare_face  # noqa: E402
from editkit.faces.align import apply, scale_of  # noqa: E402
from editkit.images import load_image  # noqa: E402
from editkit.inversion import VIEW_YAWS, Settings, generator_kind, invert_photos, to_tensor  # noqa: E402
from editkit.io import atomic_write, check_outputs  # noqa: E402
from editkit.latents import model_record  # noqa: E402
from editkit.metrics.image import ImageMetrics  # noqa: E402
from training.synthetic.dataset import PITCH_STD, YAW_STD, sample_poses  # noqa: E402
from training.synthetic.head_model import PARAM_NAMES, sample_params  # noqa: E402
from training.synthetic.render import HeadRenderer  # noqa: E402

NOVEL_YAWS = (-30.0, 30.0)  # both among editkit.inversion.VIEW_YAWS, at pitch 0
CAMERA_TARGET = 3.0         # degrees, refined camera (issue 6)


def held_out_photos(n: int, seed: int, resolution: int, folder: Path) -> list[dict]:
    """Render n held-out heads as PNG photos into `folder`; per photo its path, truth and novel-view renders."""
    rng = np.random.default_rng(seed)
    params = sample_params(rng, n)
    yaws, pitches = sample_poses(rng, n)
    renderer = HeadRenderer(resolution)
    photos = []
    try:
        for i, (p, yaw, pitch) in enumerate(tqdm(list(zip(params, yaws, pitches)), desc="render", unit="head")):
            path = folder / f"heldout_{i:02d}.png"
            Image.fromarray(as_uint8(renderer.render(p, cameras.make_label(yaw, pitch)[0].numpy()))).save(path)
            views = [as_uint8(renderer.render(p, cameras.make_label(y, 0.0)[0].numpy())) for y in NOVEL_YAWS]
            photos.append({"path": path, "yaw": float(yaw), "pitch": float(pitch), "params": p, "views": views})
    finally:
        renderer.release()
    return photos


def as_uint8(render: dict) -> np.ndarray:
    """The renderer's image (H, W, 3) in [0, 1] as uint8, as the dataset writer saves it."""
    return np.round(render["image"] * 255).astype(np.uint8)


def crop_deviation(matrix: np.ndarray, resolution: int) -> dict:
    """How far the aligner's photo-to-crop similarity is from the identity: scale, roll (degrees), and the largest
    distance (crop pixels) between a corner of the crop and the same corner of the photo."""
    m = np.asarray(matrix, np.float64)
    corners = np.array([[0, 0], [resolution, 0], [resolution, resolution], [0, resolution]], np.float64)
    return {"scale": scale_of(m), "roll": math.degrees(math.atan2(m[1, 0], m[0, 0])),
            "corner_px": float(np.linalg.norm(apply(m, corners) - corners, axis=1).max())}


def detectable(photos: list[dict], resolution: int) -> tuple[list[dict], dict]:
    """(photos whose face the front end finds, {photo name: one-line reason} for the others)."""
    kept, failed = [], {}
    for photo in photos:
        try:
            prepare_face(load_image(photo["path"]), resolution, source=photo["path"].name)
            kept.append(photo)
        except FaceError as e:
            failed[photo["path"].name] = one_line(e)
    return kept, failed


def camera_errors(label: torch.Tensor, photo: dict) -> dict:
    """Yaw and pitch differences (estimate - truth) and the rotation angle to the true camera, degrees."""
    truth = cameras.make_label(photo["yaw"], photo["pitch"])
    yaw, pitch = (float(v) for v in cameras.label_to_yaw_pitch(label.reshape(1, 25)))
    return {"yaw": yaw, "pitch": pitch, "yaw_error": yaw - photo["yaw"], "pitch_error": pitch - photo["pitch"],
            "angle": float(cameras.rotation_angle_deg(label.reshape(1, 25), truth)[0])}


def measure(G, photos: list[dict], settings: Settings, metrics: ImageMetrics, seed: int) -> tuple[list[dict], dict]:
    """Invert the photos through G as `editkit invert` does; per-photo rows and timings."""
    torch.manual_seed(seed)  # the teacher's ray sampling is random
    start = time.perf_counter()
    results = invert_photos([(p["path"].name, load_image(p["path"])) for p in photos], G, settings)
    seconds = time.perf_counter() - start
    rows = []
    for photo, result in zip(photos, results):
        record = result.record
        generated = to_tensor([result.views[VIEW_YAWS.index(y)] for y in NOVEL_YAWS])
        novel = metrics(generated, to_tensor(photo["views"]))
        rows.append({
            "photo": result.source, "true_yaw": photo["yaw"], "true_pitch": photo["pitch"],
            "pnp": camera_errors(result.alignment.label, photo),
            "refined": camera_errors(torch.tensor(record["camera"]["label"]), photo),
            "reconstruction": {"psnr": record["losses"]["psnr"], "lpips": record["losses"]["lpips"]},
            "novel_views": {f"{y:+.0f}": {"psnr": float(novel["psnr"][i]), "lpips": float(novel["lpips"][i])}
                            for i, y in enumerate(NOVEL_YAWS)},
            "crop": crop_deviation(result.alignment.matrix, G.img_resolution),
            "params": dict(zip(PARAM_NAMES, map(float, photo["params"]))),
        })
    timings = {"total_s": seconds, "per_step_s": statistics.median(r.record["timings"]["per_step"] for r in results),
               "batch_size": results[0].record["timings"]["batch_size"]}
    return rows, timings


# (name in the summary, how to read it from a row, format); errors are summarised as absolute values
COLUMNS = {
    "pnp_angle": (lambda r: r["pnp"]["angle"], "{:.1f}"),
    "pnp_abs_yaw_error": (lambda r: abs(r["pnp"]["yaw_error"]), "{:.1f}"),
    "pnp_abs_pitch_error": (lambda r: abs(r["pnp"]["pitch_error"]), "{:.1f}"),
    "refined_angle": (lambda r: r["refined"]["angle"], "{:.1f}"),
    "refined_abs_yaw_error": (lambda r: abs(r["refined"]["yaw_error"]), "{:.1f}"),
    "refined_abs_pitch_error": (lambda r: abs(r["refined"]["pitch_error"]), "{:.1f}"),
    "reconstruction_psnr": (lambda r: r["reconstruction"]["psnr"], "{:.1f}"),
    "reconstruction_lpips": (lambda r: r["reconstruction"]["lpips"], "{:.3f}"),
    **{f"view{y:+.0f}_{m}": ((lambda r, k=f"{y:+.0f}", m=m: r["novel_views"][k][m]), fmt)
       for y in NOVEL_YAWS for m, fmt in (("psnr", "{:.1f}"), ("lpips", "{:.3f}"))},
    "crop_corner_px": (lambda r: r["crop"]["corner_px"], "{:.1f}"),
}


def summarise(rows: list[dict]) -> dict:
    """{column: {'median', 'mean'}} over the photos, and the share of refined cameras within CAMERA_TARGET."""
    out = {name: {"median": statistics.median(read(r) for r in rows), "mean": statistics.fmean(read(r) for r in rows)}
           for name, (read, _) in COLUMNS.items()}
    out["refined_within_target"] = sum(r["refined"]["angle"] <= CAMERA_TARGET for r in rows) / len(rows)
    return out


def markdown(rows: list[dict], summary: dict) -> str:
    """The per-photo table with median and mean rows."""
    def cell(values, fmt, sep=" / "):
        return sep.join(fmt.format(v) for v in values)

    def pair(prefix):
        return cell([summary[f"{prefix}_psnr"][k] for k in ("median", "mean")], "{:.1f}") + " dB, " + \
            cell([summary[f"{prefix}_lpips"][k] for k in ("median", "mean")], "{:.3f}")

    views = " | ".join(f"yaw {y:+.0f}: PSNR, LPIPS" for y in NOVEL_YAWS)
    lines = [f"| photo | truth yaw / pitch | PnP yaw / pitch (angle err) | refined yaw / pitch (angle err) | "
             f"reconstruction PSNR, LPIPS | {views} | crop corner px |",
             "|---|---|---|---|---|" + "---|" * len(NOVEL_YAWS) + "---|"]
    for r in rows:
        cams = [f"{r[k]['yaw']:+.1f} / {r[k]['pitch']:+.1f} ({r[k]['angle']:.1f})" for k in ("pnp", "refined")]
        novel = [f"{v['psnr']:.1f} dB, {v['lpips']:.3f}" for v in r["novel_views"].values()]
        lines.append(f"| {r['photo']} | {r['true_yaw']:+.1f} / {r['true_pitch']:+.1f} | {' | '.join(cams)} | "
                     f"{r['reconstruction']['psnr']:.1f} dB, {r['reconstruction']['lpips']:.3f} | "
                     f"{' | '.join(novel)} | {r['crop']['corner_px']:.1f} |")
    for stat in ("median", "mean"):
        s = {k: v[stat] for k, v in summary.items() if isinstance(v, dict)}
        cams = [f"\\|yaw\\| {s[f'{k}_abs_yaw_error']:.1f}, \\|pitch\\| {s[f'{k}_abs_pitch_error']:.1f} "
                f"({s[f'{k}_angle']:.1f})" for k in ("pnp", "refined")]
        novel = [f"{s[f'view{y:+.0f}_psnr']:.1f} dB, {s[f'view{y:+.0f}_lpips']:.3f}" for y in NOVEL_YAWS]
        lines.append(f"| **{stat}** (errors) | | {' | '.join(cams)} | {s['reconstruction_psnr']:.1f} dB, "
                     f"{s['reconstruction_lpips']:.3f} | {' | '.join(novel)} | {s['crop_corner_px']:.1f} |")
    lines.append(f"\nrefined camera within {CAMERA_TARGET:g} deg of the truth: "
                 f"{summary['refined_within_target']:.0%} of {len(rows)} photos\n")
    return "\n".join(lines)


def load(name: str, kind: str):
    """The generator `name`, checked to be a `kind` ('student' or 'teacher')."""
    G = checkpoints.load_generator(name)
    if generator_kind(G) != kind:
        raise EditkitError(f"{name} holds a {generator_kind(G)} ({type(G).__name__}), not a {kind}")
    return G


def run(args) -> dict:
    if args.n < 1 or (args.steps is not None and args.steps < 1) or args.threads < 1:
        raise EditkitError("--n, --steps and --threads must be at least 1")
    if args.out:
        check_outputs([args.out], args.force)  # before the slow part
    if args.keep_photos is not None:
        if args.keep_photos.exists() and (not args.keep_photos.is_dir() or any(args.keep_photos.iterdir())):
            raise EditkitError(f"--keep-photos {args.keep_photos} must be a new or empty folder")
        args.keep_photos.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    models = {"student": args.student} | ({"teacher": args.teacher} if args.with_teacher else {})
    generators = {kind: load(name, kind) for kind, name in models.items()}
    resolution = {G.img_resolution for G in generators.values()}
    if len(resolution) > 1:
        raise EditkitError(f"the student and the teacher render at different resolutions ({sorted(resolution)}); "
                           "compare models of one resolution")
    resolution = resolution.pop()
    settings = Settings() if args.steps is None else Settings(steps=args.steps)
    metrics = ImageMetrics("alex")
    report = {"photos": {"n": args.n, "seed": args.seed, "resolution": resolution,
                         "heads": "training.synthetic.head_model.sample_params (numpy default_rng(seed))",
                         "poses": f"training.synthetic.dataset.sample_poses: yaw ~ N(0, {YAW_STD}), "
                                  f"pitch ~ N(0, {PITCH_STD}) deg, same generator after the heads",
                         "novel_views": {"yaw": list(NOVEL_YAWS), "pitch": 0.0}},
              "settings": asdict(settings), "lpips": metrics.name, "threads": args.threads,
              "camera_target_deg": CAMERA_TARGET, "generators": {}}
    keep = args.keep_photos
    with tempfile.TemporaryDirectory(prefix="inversion_quality_") if keep is None else nullcontext(keep) as folder:
        photos, failed = detectable(held_out_photos(args.n, args.seed, resolution, Path(folder)), resolution)
        report["photos"]["no_face"] = failed
        for name, reason in failed.items():
            print(f"left out {name}: {reason}")
        if not photos:
            raise EditkitError(f"no face found in any of the {args.n} renders; nothing to invert")
        for kind, G in generators.items():
            rows, timings = measure(G, photos, settings, metrics, args.seed)
            summary = summarise(rows)
            report["generators"][kind] = {"model": model_record(models[kind]), "timings": timings,
                                          "summary": summary, "photos": rows}
            print(f"\n### {kind}: {models[kind]}, {len(rows)} photos, {settings.steps} steps, "
                  f"{timings['per_step_s']:.3f} s per step (batch {timings['batch_size']}, {args.threads} "
                  f"thread(s)), {timings['total_s']:.0f} s in all\n")
            print(markdown(rows, summary))
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="held-out photos (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=606, help="seed of heads and poses (default: %(default)s)")
    parser.add_argument("--steps", type=int, help="inversion steps (default: editkit.inversion.Settings)")
    parser.add_argument("--out", type=Path, help="write every number here (JSON)")
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    parser.add_argument("--student", default="demo-student", help="student model (default: %(default)s)")
    parser.add_argument("--teacher", default="demo-teacher", help="teacher model (default: %(default)s)")
    parser.add_argument("--with-teacher", action="store_true", help="also invert through the teacher (~10x slower)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--keep-photos", type=Path, metavar="DIR",
                        help="write the held-out photos into DIR (a new or empty folder) and keep them")
    args = parser.parse_args(argv)
    try:
        report = run(args)
        if args.out:
            text = json.dumps(report, indent=1) + "\n"
            atomic_write(args.out, lambda tmp: tmp.write_text(text), force=args.force)
            print(f"\nwrote {args.out}")
    except EditkitError as e:
        print(f"inversion_quality: error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
