"""Write a demo-world dataset in EG3D's layout: N heads x V views, deterministic from a seed.

    python -m training.synthetic --out data/demo128 --heads 1000 --views 4 --seed 0 [--yaw-corr 0.6 [--yaw-corr-attr smile]]

Output folder:

* ``img00000000.png`` ... (image ``head * views + view``), RGB on a white background;
* ``dataset.json``: ``{"labels": [[filename, [25 floats]], ...]}``, EG3D's camera labels (editkit.cameras);
* ``ground_truth.npz``: ``filenames``, ``head`` (index), ``params`` (images x HeadParams.SIZE), ``param_names``,
  ``labels`` (images x 25), ``yaw``/``pitch`` (degrees), ``landmarks2d`` (images x 68 x 2, pixels),
  ``landmarks3d`` (images x 68 x 3, world), with ``--depth`` also ``depth`` and ``mask`` (images x H x W, float16),
  and ``meta`` (JSON: arguments, model file hash).

Identity, appearance and light belong to a head (light is fixed in the world, so the views of a head are
consistent); the camera changes per view. Poses follow an FFHQ-like distribution: yaw ~ N(0, 18 deg) and
pitch ~ N(0, 7 deg), clipped to +-60 and +-25 degrees. ``--yaw-corr r`` (default 0) replaces one attribute of every
image (``--yaw-corr-attr``: the smile, or the skin tone) by one drawn from a latent normal whose correlation with the
image's standardised yaw is r, so smiles grow (or skin darkens) with yaw (r > 0); a stage-2 experiment can then show
how mixing real and teacher images limits such a pose-attribute bias (docs/pose_bias.md). With r = 0 every view
shows the head as it is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.special import ndtr

from editkit import cameras
from editkit.errors import EditkitError, OutputExistsError
from editkit.io import atomic_write
from training.synthetic.head_model import DEFAULT_MODEL_PATH, PARAM_NAMES, HeadModel, HeadParams, sample_params
from training.synthetic.render import HeadRenderer

YAW_STD, YAW_LIMIT = 18.0, 60.0
PITCH_STD, PITCH_LIMIT = 7.0, 25.0


def sample_poses(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """FFHQ-like yaw and pitch in degrees, (n,) each."""
    yaw = np.clip(rng.normal(0, YAW_STD, n), -YAW_LIMIT, YAW_LIMIT)
    pitch = np.clip(rng.normal(0, PITCH_STD, n), -PITCH_LIMIT, PITCH_LIMIT)
    return yaw, pitch


CORRELATED_ATTRIBUTES = ("smile", "skin_tone")


def correlate_with_yaw(params: np.ndarray, yaw: np.ndarray, corr: float, rng: np.random.Generator,
                       attribute: str = "smile") -> np.ndarray:
    """Copy of params (n, SIZE) whose attribute is redrawn per row from a uniform p = Phi(u), u = corr * yaw/YAW_STD
    + sqrt(1 - corr^2) * noise. smile: clip(1.25 p - 0.25, 0, 1) on both sides (about 20% of rows without a smile);
    skin_tone: the inverse CDF of the world's Beta(1, 2.2) at p, so the marginal distribution stays the world's."""
    if attribute not in CORRELATED_ATTRIBUTES:
        raise EditkitError(f"--yaw-corr-attr must be one of {', '.join(CORRELATED_ATTRIBUTES)}, got {attribute!r}")
    p = ndtr(corr * yaw / YAW_STD + math.sqrt(1 - corr ** 2) * rng.standard_normal(len(yaw)))
    out = params.copy()
    if attribute == "smile":
        out[:, HeadParams.index("smile_l")] = out[:, HeadParams.index("smile_r")] = np.clip(1.25 * p - 0.25, 0, 1)
    else:
        out[:, HeadParams.index("skin_tone")] = 1 - (1 - p) ** (1 / 2.2)
    return out


def write_dataset(out: Path, heads: int, views: int, seed: int = 0, resolution: int = 128,
                  yaw_corr: float = 0.0, yaw_corr_attr: str = "smile", depth: bool = False,
                  overwrite: bool = False, model_path: Path = DEFAULT_MODEL_PATH, log=print) -> dict:
    """Render and write the dataset (see the module docstring); returns a summary."""
    if heads < 1 or views < 1 or resolution < 16:
        raise EditkitError(f"need --heads >= 1, --views >= 1 and --resolution >= 16 (got {heads}, {views}, "
                           f"{resolution})")
    if not -1 <= yaw_corr <= 1:
        raise EditkitError(f"--yaw-corr must lie in [-1, 1], got {yaw_corr}")
    out = Path(out)
    if (out / "dataset.json").exists() and not overwrite:
        raise OutputExistsError(f"{out / 'dataset.json'} exists; pass --overwrite to replace the dataset")
    out.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    head_params = sample_params(rng, heads)
    n = heads * views
    head = np.repeat(np.arange(heads), views)
    yaw, pitch = sample_poses(rng, n)
    params = head_params[head]
    if yaw_corr:
        params = correlate_with_yaw(params, yaw, yaw_corr, rng, yaw_corr_attr)
    labels = cameras.make_label(yaw, pitch).numpy()

    renderer = HeadRenderer(resolution, model=HeadModel.load(model_path))
    filenames = [f"img{i:08d}.png" for i in range(n)]
    lm2d, lm3d = np.zeros((n, 68, 2), np.float32), np.zeros((n, 68, 3), np.float32)
    depths = np.zeros((n, resolution, resolution), np.float16) if depth else None
    masks = np.zeros((n, resolution, resolution), np.float16) if depth else None
    start = time.perf_counter()
    for i in range(n):
        o = renderer.render(params[i], labels[i])
        Image.fromarray(np.round(o["image"] * 255).astype(np.uint8)).save(out / filenames[i])
        lm2d[i], lm3d[i] = o["landmarks2d"], o["landmarks3d"]
        if depth:
            depths[i], masks[i] = o["depth"], o["mask"]
        if log and (i + 1) % 500 == 0:
            log(f"{i + 1}/{n} images, {(time.perf_counter() - start) / (i + 1) * 1000:.1f} ms each")
    renderer.release()

    meta = {"heads": heads, "views": views, "seed": seed, "resolution": resolution, "yaw_corr": yaw_corr,
            "yaw_corr_attr": yaw_corr_attr,
            "yaw_std": YAW_STD, "pitch_std": PITCH_STD,
            "model_sha256": hashlib.sha256(Path(model_path).read_bytes()).hexdigest()}
    extra = {"depth": depths, "mask": masks} if depth else {}

    def write_truth(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, filenames=np.array(filenames), head=head, params=params,
                                param_names=np.array(PARAM_NAMES), labels=labels, yaw=yaw.astype(np.float32),
                                pitch=pitch.astype(np.float32), landmarks2d=lm2d, landmarks3d=lm3d,
                                meta=np.array(json.dumps(meta)), **extra)

    # both atomically, the labels last: a folder with dataset.json is complete
    atomic_write(out / "ground_truth.npz", write_truth, force=True)
    text = json.dumps({"labels": [[f, [float(x) for x in c]] for f, c in zip(filenames, labels)]})
    atomic_write(out / "dataset.json", lambda tmp: tmp.write_text(text), force=True)
    attribute = params[:, HeadParams.index("smile_l" if yaw_corr_attr == "smile" else yaw_corr_attr)]
    summary = {"images": n, "seconds": round(time.perf_counter() - start, 1),
               f"corr_yaw_{yaw_corr_attr}": round(float(np.corrcoef(yaw, attribute)[0, 1]), 3)
               if attribute.std() > 0 else 0.0}
    if log:
        log(json.dumps(summary))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--heads", type=int, default=100)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--yaw-corr", type=float, default=0.0,
                        help="correlation of an attribute with yaw, in [-1, 1] (a deliberate pose-attribute bias)")
    parser.add_argument("--yaw-corr-attr", choices=CORRELATED_ATTRIBUTES, default="smile",
                        help="the attribute --yaw-corr correlates with yaw")
    parser.add_argument("--depth", action="store_true", help="also store depth and mask maps in ground_truth.npz")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH, help="head model file")
    args = parser.parse_args(argv)
    try:
        write_dataset(args.out, args.heads, args.views, args.seed, args.resolution, args.yaw_corr,
                      args.yaw_corr_attr, args.depth, args.overwrite, args.model)
    except EditkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
