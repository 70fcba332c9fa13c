"""Accuracy and speed of the face front end on demo-world renders with known cameras (and on real photos).

    python benchmarks/faces.py [--n 20] [--resolutions 128 256 512] [--seed 0] [--photos PHOTO ...]

Renders `n` random heads (identity, expression, appearance and light from `sample_params`) at yaw spread evenly
over -35..35 degrees and pitch ~ N(0, 7) clipped to +-15, at each resolution, and reports:

* detector hit rates: MTCNN alone, dlib HOG alone (upsampled once below 512 px), and the default chain;
* camera error (geodesic angle between the estimated and the true camera rotation, degrees; and yaw/pitch errors)
  on the true landmarks without alignment (the landmark model's own limit), and of the whole front end:
  detection, dlib landmarks, alignment, camera; each for `estimate_camera` (pose and head shape fitted together)
  and for PnP against the mean head alone (its starting point);
* wall time of `prepare_face` per image.

`--photos` adds real photos: faces found by each detector and the estimated yaw/pitch (no truth to compare);
`--figure PATH` also writes a picture of them: each photo with its landmarks and crop square, and the aligned crop.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from editkit import cameras  # noqa: E402
from editkit.errors import FaceError  # noqa: E402
from editkit.faces import estimate_camera, prepare_face  # noqa: E402
from editkit.faces.camera import solve_pose, yaw_pitch_from_forward  # noqa: E402
from editkit.faces.detect import detect_hog, detect_mtcnn  # noqa: E402
from editkit.images import load_image  # noqa: E402
from training.synthetic.head_model import sample_params  # noqa: E402
from training.synthetic.render import HeadRenderer  # noqa: E402


def angle(a, b) -> float:
    return float(cameras.rotation_angle_deg(a[None], b[None]))


def mean_head_camera(landmarks, resolution: int):
    """The label of PnP against the mean head only (estimate_camera's start)."""
    rotation, _ = solve_pose(landmarks, resolution)
    return cameras.make_label(*yaw_pitch_from_forward(rotation[2]))[0]


def stats(values) -> str:
    v = np.asarray(values)
    return f"median {np.median(v):5.2f}  mean {v.mean():5.2f}  p90 {np.percentile(v, 90):5.2f}  max {v.max():5.2f}"


def synthetic(n: int, resolution: int, seed: int):
    rng = np.random.default_rng(seed)
    params = sample_params(rng, n)
    yaws = np.linspace(-35, 35, n)
    pitches = np.clip(rng.normal(0, 7, n), -15, 15)
    renderer = HeadRenderer(resolution)
    hits = {"mtcnn": 0, "hog": 0, "chain": 0}
    true_fit, true_mean, full, full_mean, yaw_err, pitch_err, seconds = [], [], [], [], [], [], []
    for p, yaw, pitch in zip(params, yaws, pitches):
        label = cameras.make_label(yaw, pitch)[0]
        out = renderer.render(p, label.numpy())
        image = np.round(out["image"] * 255).astype(np.uint8)
        hits["mtcnn"] += bool(detect_mtcnn(image))
        hits["hog"] += bool(detect_hog(image))
        true_fit.append(angle(estimate_camera(out["landmarks2d"], resolution), label))
        true_mean.append(angle(mean_head_camera(out["landmarks2d"], resolution), label))
        start = time.perf_counter()
        try:
            face = prepare_face(image, resolution)
        except FaceError:
            continue
        seconds.append(time.perf_counter() - start)
        hits["chain"] += 1
        full.append(angle(face.label, label))
        full_mean.append(angle(mean_head_camera(face.landmarks, resolution), label))
        yaw_err.append(abs(face.yaw_pitch[0] - yaw))
        pitch_err.append(abs(face.yaw_pitch[1] - pitch))
    renderer.release()
    print(f"\n{resolution} px, {n} renders, yaw -35..35, pitch ~ N(0, 7) clipped to 15, seed {seed}")
    print("  faces found: " + ", ".join(f"{k} {v}/{n}" for k, v in hits.items()))
    print(f"  true landmarks, no alignment: pose + shape fit {stats(true_fit)}")
    print(f"                                mean-head PnP    {stats(true_mean)}")
    print(f"  full front end (detect, dlib, align, camera): fit  {stats(full)}")
    print(f"                                mean-head PnP    {stats(full_mean)}")
    print(f"    |yaw error| {stats(yaw_err)}")
    print(f"    |pitch error| {stats(pitch_err)}")
    print(f"  prepare_face wall time: median {statistics.median(seconds) * 1e3:.0f} ms")


def figure_row(image, face, size=256) -> np.ndarray:
    """The photo (landmarks in green, the crop square in red) beside its aligned crop, both `size` px tall."""
    import cv2

    inverse = cv2.invertAffineTransform(face.matrix)
    r = len(face.image)
    square = np.array([[0, 0], [r, 0], [r, r], [0, r]], np.float64) @ inverse[:, :2].T + inverse[:, 2]
    scale = size / image.shape[0]
    shown = cv2.resize(image, (round(image.shape[1] * scale), size), interpolation=cv2.INTER_AREA)
    cv2.polylines(shown, [np.round(square * scale).astype(np.int32)], True, (255, 0, 0), 2)
    for x, y in face.photo_landmarks * scale:
        cv2.circle(shown, (int(x), int(y)), 1, (0, 255, 0), -1)
    crop = cv2.resize(face.image, (size, size), interpolation=cv2.INTER_AREA)
    return np.concatenate([shown, crop], 1)


def photos(paths, figure=None):
    print("\nreal photos (no ground truth)")
    rows = []
    for path in paths:
        image = load_image(path)
        found = f"MTCNN {len(detect_mtcnn(image))}, HOG {len(detect_hog(image))}"
        try:
            face = prepare_face(image, 256, source=str(path))
            yaw, pitch = face.yaw_pitch
            print(f"  {Path(path).name:28} {found}: {face.face.detector}, yaw {yaw:+6.1f}, pitch {pitch:+6.1f}")
            rows.append(figure_row(image, face))
        except FaceError as e:
            print(f"  {Path(path).name:28} {found}: {e}")
    if figure and rows:
        from PIL import Image

        pad = max(r.shape[1] for r in rows)
        rows = [np.pad(r, ((0, 0), (0, pad - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
        columns = [np.concatenate(rows[i::2]) for i in range(min(2, len(rows)))]
        height = max(c.shape[0] for c in columns)
        columns = [np.pad(c, ((0, height - c.shape[0]), (0, 0), (0, 0)), constant_values=255) for c in columns]
        Image.fromarray(np.concatenate(columns, 1)).save(figure)
        print(f"wrote {figure}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--resolutions", type=int, nargs="*", default=[128, 256, 512],
                        help="render sizes (none: skip the renders)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--photos", nargs="*", default=[], help="real photos to run the front end on")
    parser.add_argument("--figure", help="write a picture of the photos' alignment here (PNG)")
    args = parser.parse_args()
    for resolution in args.resolutions:
        synthetic(args.n, resolution, args.seed)
    if args.photos:
        photos(args.photos, args.figure)


if __name__ == "__main__":
    main()
