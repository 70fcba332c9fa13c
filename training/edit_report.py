"""Measure edit directions on the demo world: `python -m training.edit_report --model M [--student S] --out DIR`.

Moving a latent along a direction should change its own attribute and little else. On the demo world the truth is
known for the generator's own samples (every z decodes to head parameters, `training.synthetic.latent.params_from_z`),
but not for edited latents, so the edits are measured with probes calibrated on that truth:

1. Probes. Samples z ~ N(0, I) (untruncated: the labels belong to z; a share --emphasis of them made to show one
   of the rare expressions among the measured directions, eyes closed, brow raise, jaw open, which the world's
   own frequencies almost never show) are rendered at yaw -30, 0 or 30 deg; their features are the pooled
   activations of a frozen pretrained AlexNet (the LPIPS backbone of editkit.perceptual);
   one ridge regression per head parameter (and per derived attribute: smile, eyes_closed) maps features to the
   parameter in standard deviations over the world's own distribution, the unit of the directions' w-fit
   expectation (closed form, penalty chosen per parameter by leave-one-out error on the training part).
   The held-out R^2 says how visible each attribute is in the model's images at all; probes fitted the same way on
   the world's own renders of the same samples say how visible it is in the truth (the most a model can reach).
   The landmark scores (editkit.attributes) are calibrated on the same samples: on the frontal probe images where
   dlib finds a face, the slope of each measured score against its true attribute, in the world's renders and in
   each model's; the world's slope times a direction's w-fit expectation is the landmark change per unit strength
   that a model drawing the promised change would show.
2. Edits. M fixed latents (w from the mapping, frontal camera, truncation psi as in `editkit eval`) are moved along
   each direction with strengths s and rendered at yaw 0 and +-30 deg. Per direction and yaw: the probes' change of
   the own attribute per unit strength (slope through the unedited render, in the probes' unit), the largest slope
   among the other attributes whose probes see them (R^2 >= --min-r2; the parts of the own attribute, e.g. smile_l
   for smile, excluded), and the distance that the predicted identity parameters (visible id00..id39, the own one
   excluded) move, against the distance between different heads. Where dlib's HOG detector finds faces: the dlib
   descriptor distance to the unedited render (same person < 0.6), the landmark score's slope (editkit.attributes;
   with its standard error over the latents) and the change of the camera estimated from the landmarks
   (editkit.faces; the edit keeps the camera, so any change is the estimator reacting to the edit), with how many
   images had a face.

3. Inverted photos (--photos): the same measures on the latents `editkit invert` made of photos, where no truth
   is known: the probes and dlib's landmark scores read the edited renders.

Writes DIR/edit_report.json (every number), DIR/edit_grid.png (rows: directions, columns: strengths; one latent at
yaw 0; model then student side by side; with --photos also DIR/photo_grid.png, the first photo) and prints Markdown
tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm import tqdm

from editkit import attributes, cameras
from editkit.checkpoints import load_generator, named_model
from editkit.editing import registry
from editkit.editing.directions import Direction, DirectionError, apply_edits, load_direction
from editkit.editing.render import render_images
from editkit.editing.supervised import map_latents, sample_latents
from editkit.errors import EditkitError, one_line
from editkit.io import atomic_write, check_outputs, output_group
from editkit.latents import LATENT, LatentError, check_fits, check_model, read_latent
from editkit.metrics import identity
from training.make_directions import DERIVED, PARTS, world_labels
from training.synthetic.head_model import PARAM_NAMES
from training.synthetic.latent import LATENT_SIZE, RARE_EXPRESSIONS, emphasise_rare_expressions, params_from_z

PROBE_YAWS = (-30.0, 0.0, 30.0)
EDIT_YAWS = (0.0, -30.0, 30.0)  # the first is the table's
TARGETS = tuple(PARAM_NAMES) + tuple(DERIVED)
IDENTITY = tuple(name for name in PARAM_NAMES if name.startswith("id"))
POOL = 4  # every AlexNet layer is averaged down to POOL x POOL cells
FEATURE_SIZE = 128  # images are resized to this side before AlexNet
SAME_PERSON = 0.6  # dlib's descriptor threshold


# --------------------------------------------------------------------------------------------------------- probes


class AlexFeatures:
    """Frozen AlexNet features of uint8 images (N, H, W, 3): the five ReLU outputs, each average-pooled to
    POOL x POOL and flattened, concatenated ((N, 1152 * POOL^2) float32)."""

    def __init__(self, weights=None):
        from editkit.perceptual import LPIPS

        self.model = LPIPS("alex", weights).model

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch: int = 32) -> np.ndarray:
        out = []
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start:start + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
            if x.shape[-1] != FEATURE_SIZE:
                x = F.interpolate(x, size=(FEATURE_SIZE, FEATURE_SIZE), mode="bilinear", antialias=True)
            layers = self.model.net(self.model.scaling_layer(x))
            out.append(torch.cat([F.adaptive_avg_pool2d(h, POOL).flatten(1) for h in layers], 1))
        return torch.cat(out).numpy()


@dataclass
class Ridge:
    """Ridge regressions from scaled features to standardised targets, one penalty per target.

    Each feature is divided by its standard deviation, but never by less than the median one: a unit that fires in
    one or two training images would otherwise be blown up into a feature that tells those images apart, which
    leave-one-out cannot see and held-out images pay for."""

    x_mean: np.ndarray
    x_scale: np.ndarray
    y_mean: np.ndarray
    y_scale: np.ndarray
    coef: np.ndarray       # (D, T)
    penalty: np.ndarray    # (T,)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, grid: int = 21) -> "Ridge":
        """Fit x (N, D) -> y (N, T); each target's penalty (from a log grid) minimises the leave-one-out error."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        x_mean, x_scale = x.mean(0), x.std(0)
        x_scale = np.maximum(x_scale, np.median(x_scale[x_scale > 0]) if np.any(x_scale > 0) else 1.0)
        y_mean, y_scale = y.mean(0), y.std(0)
        y_scale = np.where(y_scale > 0, y_scale, 1.0)  # a constant target: predicted as its constant
        xs, ys = (x - x_mean) / x_scale, (y - y_mean) / y_scale
        u, s, vt = np.linalg.svd(xs, full_matrices=False)
        uty = u.T @ ys
        penalties = s[0] ** 2 * np.logspace(-8, 2, grid)  # from barely any shrinkage to predicting the mean
        loo = []
        for lam in penalties:
            shrink = s ** 2 / (s ** 2 + lam)
            fitted = u @ (shrink[:, None] * uty)
            leverage = (u ** 2) @ shrink + 1 / len(x)  # + 1/N: the intercept
            loo.append((((ys - fitted) / (1 - leverage)[:, None]) ** 2).mean(0))
        best = penalties[np.argmin(loo, 0)]
        coef = vt.T @ ((s[:, None] / (s[:, None] ** 2 + best[None])) * uty)
        return cls(x_mean, x_scale, y_mean, y_scale, coef, best)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, T) predictions in the targets' units."""
        return self.y_mean + ((np.asarray(x, np.float64) - self.x_mean) / self.x_scale) @ self.coef * self.y_scale

    def r2(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(T,) coefficient of determination on (x, y); NaN for a target constant in y."""
        y = np.asarray(y, np.float64)  # in its own units: a constant y gives a total of exactly 0
        residual = ((y - self.predict(x)) ** 2).sum(0)
        total = ((y - y.mean(0)) ** 2).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, 1 - residual / total, np.nan)


def world_targets(z: np.ndarray) -> np.ndarray:
    """(N, len(TARGETS)) ground truth of latents z in standard deviations over the world's own distribution (the
    unit of the directions' w-fit expectation; the probe samples' emphasis does not change it): every head
    parameter, then the derived attributes."""
    params = params_from_z(z)
    return np.stack([world_labels(name, params)[0] for name in TARGETS], 1) / target_scale()


@lru_cache(maxsize=1)
def target_scale() -> np.ndarray:
    """(len(TARGETS),) standard deviations of the targets over the world's own distribution (z ~ N(0, I));
    1 for a target that never varies."""
    params = params_from_z(np.random.default_rng(0).standard_normal((20000, LATENT_SIZE)))
    std = np.array([world_labels(name, params)[0].std() for name in TARGETS])
    return np.where(std > 0, std, 1.0)


def probe_samples(G, n: int, seed: int, emphasis: float, rare: list) -> tuple[np.ndarray, np.ndarray]:
    """(z, ws) of the probes: z ~ N(0, I) (psi 1: the labels belong to z), a share `emphasis` of them made to show
    one of the `rare` expressions, so that a probe can learn what they look like (2% of the world's heads close
    their eyes fully: 12 of 600 probe images)."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, LATENT_SIZE, generator=generator)
    if rare and emphasis > 0:
        z = emphasise_rare_expressions(z, emphasis, generator, rare)
    return z.numpy(), map_latents(G, z)


def probe_views(n: int) -> torch.Tensor:
    """(n, 25) camera labels of the probe samples: yaw cycling through PROBE_YAWS, pitch 0."""
    return cameras.make_label(np.resize(PROBE_YAWS, n).tolist(), 0.0).float()


def fit_probes(images: np.ndarray, z: np.ndarray, n_train: int, features: AlexFeatures) -> tuple[Ridge, dict]:
    """Probes fitted on the features of the first n_train images (uint8, of samples z), with the held-out R^2 on
    the others."""
    x, y = features(images), world_targets(z)
    probe = Ridge.fit(x[:n_train], y[:n_train])
    r2 = probe.r2(x[n_train:], y[n_train:])
    return probe, {name: None if np.isnan(v) else round(float(v), 3) for name, v in zip(TARGETS, r2)}


def model_probe_images(G, ws: np.ndarray) -> np.ndarray:
    """G's renders of the probe samples' ws at the probe views."""
    return render_images(G, torch.from_numpy(ws), probe_views(len(ws)), desc="rendering probe samples")


def truth_probe_images(z: np.ndarray, resolution: int, batch: int = 50) -> np.ndarray:
    """The demo world's own renders of the probe samples, at the same views: what a probe fitted on them sees is
    the most that it can see in a model's renders."""
    from training.synthetic.render import HeadRenderer  # needs EGL: import only when rendering

    renderer, labels = HeadRenderer(resolution), probe_views(len(z)).double().numpy()
    images = [renderer.render_batch(params_from_z(z[i:i + batch]), labels[i:i + batch])["image"]
              for i in range(0, len(z), batch)]
    return (np.clip(np.concatenate(images), 0, 1) * 255).round().astype(np.uint8)


def landmark_response(attribute: str, landmarks: list, labels: np.ndarray) -> dict:
    """How the attribute's landmark score follows its true value: least-squares slope of the score against the
    labels (in standard deviations), their correlation, and the number of images with a face (landmarks[i] is
    None where dlib found none)."""
    found = [i for i, points in enumerate(landmarks) if points is not None]
    result = {"faces": len(found)}
    x = labels[found]
    if len(found) < 3 or x.std() == 0:
        return result
    y = attributes.score(attribute, np.stack([landmarks[i] for i in found]))
    result.update(slope_per_std=round(float(np.polyfit(x, y, 1)[0]), 4),
                  r=round(float(np.corrcoef(x, y)[0, 1]), 3))
    return result


def landmark_calibration(images: np.ndarray, z: np.ndarray, names: list) -> dict:
    """{attribute: landmark_response} over the frontal probe images (the edit table's view) of samples z, for the
    named attributes (with landmark scores): what a landmark score sees of the true attribute."""
    frontal = np.resize(PROBE_YAWS, len(z)) == 0
    landmarks = [attributes.detect_landmarks(image) for image in tqdm(images[frontal], desc="landmarks")]
    truth = world_targets(z[frontal])
    return {name: landmark_response(name, landmarks, truth[:, TARGETS.index(name)]) for name in names}


# ---------------------------------------------------------------------------------------------------------- edits


def family(attribute: str) -> set:
    """The attribute and the head parameters it is made of (smile: smile_l, smile_r)."""
    return {attribute, *PARTS.get(attribute, ())}


def slope(strengths: np.ndarray, change: np.ndarray) -> np.ndarray:
    """Least-squares slope through the origin of change (M, S, ...) against strengths (S,), per latent."""
    s = strengths.reshape(1, -1, *([1] * (change.ndim - 2)))
    return (s * change).sum(1) / (s ** 2).sum()


def mean_or_none(values, digits: int = 3):
    values = [v for v in values if v is not None and np.isfinite(v)]
    return round(float(np.mean(values)), digits) if values else None


def between_heads(vectors: list) -> float | None:
    """Mean distance between the vectors of different latents (None entries skipped)."""
    pairs = identity.between_people(vectors, measure=lambda a, b: np.linalg.norm(a - b))
    return float(np.mean(pairs)) if pairs else None


class Faces:
    """dlib's view of an image: 68 landmarks, descriptor and estimated yaw/pitch, or None where no face is found."""

    def __init__(self):
        self.embedder = identity.load_embedder("dlib")

    def __call__(self, image: np.ndarray) -> dict | None:
        from editkit.faces import estimate_camera

        landmarks = attributes.detect_landmarks(image)
        if landmarks is None:
            return None
        yaw, pitch = cameras.label_to_yaw_pitch(estimate_camera(landmarks, image.shape[0]))
        return {"landmarks": landmarks, "descriptor": self.embedder.embed(image, landmarks),
                "yaw": float(yaw), "pitch": float(pitch)}


def face_measures(attribute: str, strengths: np.ndarray, faces: list) -> dict:
    """dlib numbers of one direction at one yaw; faces[m][k]: Faces() of latent m at strengths[k] (0: unedited)."""
    base = int(np.flatnonzero(strengths == 0)[0])
    found = sum(f is not None for row in faces for f in row)
    result = {"faces_found": found, "images": len(faces) * len(strengths)}
    pairs = [(s, row[k], row[base], m) for m, row in enumerate(faces) for k, s in enumerate(strengths)
             if s != 0 and row[k] is not None and row[base] is not None]
    result["pairs_with_faces"] = len(pairs)
    if not pairs:
        return result
    s = np.array([p[0] for p in pairs])
    distance = np.array([np.linalg.norm(a["descriptor"] - b["descriptor"]) for _, a, b, _ in pairs])
    top = np.abs(s) == np.abs(s).max()
    result.update(descriptor_distance_per_unit=round(float(np.mean(distance / np.abs(s))), 4),
                  descriptor_distance_at_max=round(float(distance[top].mean()), 4),
                  same_person_share=round(float(np.mean(distance[top] < SAME_PERSON)), 3),
                  yaw_change_deg=round(float(np.mean([abs(a["yaw"] - b["yaw"]) for _, a, b, _ in pairs])), 2),
                  pitch_change_deg=round(float(np.mean([abs(a["pitch"] - b["pitch"]) for _, a, b, _ in pairs])), 2))
    if attribute in attributes.SCORES:
        change = np.array([attributes.score(attribute, a["landmarks"]) - attributes.score(attribute, b["landmarks"])
                           for _, a, b, _ in pairs])
        result["landmark_score_slope"] = round(float(slope(s, change[None])[0]), 4)  # all pairs as one latent
        latent = np.array([p[3] for p in pairs])
        per_latent = [slope(s[latent == m], change[None, latent == m])[0] for m in np.unique(latent)]
        if len(per_latent) > 1:  # how far the slope would move with other latents
            result["landmark_score_slope_sem"] = round(float(np.std(per_latent, ddof=1) / np.sqrt(len(per_latent))), 4)
    return result


def probe_measures(direction: Direction, strengths: np.ndarray, predicted: np.ndarray, r2: dict,
                   min_r2: float) -> dict:
    """Probe numbers of one direction at one yaw; predicted (M, S, T) in the targets' units, strength 0 included."""
    base = int(np.flatnonzero(strengths == 0)[0])
    change = predicted - predicted[:, base:base + 1]
    slopes = slope(strengths, change)  # (M, T)
    index = {name: i for i, name in enumerate(TARGETS)}
    own = direction.attribute
    visible = [n for n in TARGETS if r2[n] is not None and r2[n] >= min_r2]
    others = {n: float(slopes[:, index[n]].mean()) for n in visible if n not in family(own)}
    largest = max(others, key=lambda n: abs(others[n]), default=None)
    ids = [index[n] for n in IDENTITY if n in visible and n not in family(own)]
    top = np.abs(strengths) == np.abs(strengths).max()
    id_shift = np.linalg.norm(change[:, top][..., ids], axis=-1) if ids else None  # (M, 2)
    return {
        "own_slope": round(float(slopes[:, index[own]].mean()), 3),
        "own_slope_std_over_latents": round(float(slopes[:, index[own]].std()), 3),
        "largest_other": largest, "largest_other_slope": None if largest is None else round(others[largest], 3),
        "other_slopes": {n: round(v, 3) for n, v in others.items()},
        "identity_probes": len(ids),
        "identity_shift_at_max": None if id_shift is None else round(float(id_shift.mean()), 3),
        "identity_between_heads": None if not ids else round(between_heads(list(predicted[:, base][:, ids])), 3),
    }


def render_at(G, ws: torch.Tensor, yaw: float) -> np.ndarray:
    """(N, H, W, 3) uint8 renders of ws (N, num_ws, w_dim) at (yaw, pitch 0)."""
    return render_images(G, ws, cameras.make_label(yaw, 0.0).float().expand(len(ws), -1))


def edit_views(G, ws: torch.Tensor, direction: Direction, strengths, yaw: float) -> np.ndarray:
    """(M, S, H, W, 3) uint8 renders of latents ws moved by each strength along the direction."""
    moved = torch.stack([apply_edits(ws, [(direction, float(s))]) for s in strengths], 1)  # (M, S, num_ws, w_dim)
    images = render_at(G, moved.flatten(0, 1), yaw)
    return images.reshape(len(ws), len(strengths), *images.shape[1:])


class Views:
    """Renders of the M latents along the directions at one yaw, with the probes' predictions and dlib's faces; the
    unedited renders (strength 0) are made once and shared by every direction."""

    def __init__(self, G, ws, yaw: float, strengths: np.ndarray, probe: Ridge, features: AlexFeatures, faces: Faces):
        self.G, self.ws, self.yaw, self.strengths = G, ws, yaw, strengths
        self.probe, self.features, self.faces = probe, features, faces
        self.base = int(np.flatnonzero(strengths == 0)[0])
        self.base_images, self.base_predicted, self.base_faces = self.analyse(render_at(G, ws, yaw)[:, None])

    def analyse(self, views: np.ndarray):
        """(views, probe predictions (M, S, T), faces [M][S]) of renders (M, S, H, W, 3)."""
        predicted = self.probe.predict(self.features(views.reshape(-1, *views.shape[2:])))
        return views, predicted.reshape(*views.shape[:2], -1), [[self.faces(image) for image in row] for row in views]

    def along(self, direction: Direction):
        """(views (M, S, H, W, 3), predictions (M, S, T), faces [M][S]) for every strength, 0 included."""
        edited = [s for s in self.strengths if s != 0]
        views, predicted, found = self.analyse(edit_views(self.G, self.ws, direction, edited, self.yaw))
        b = self.base
        return (np.concatenate([views[:, :b], self.base_images, views[:, b:]], 1),
                np.concatenate([predicted[:, :b], self.base_predicted, predicted[:, b:]], 1),
                [row[:b] + base + row[b:] for row, base in zip(found, self.base_faces)])


def measure_model(G, name: str, ws: torch.Tensor, directions: list, strengths: np.ndarray, probe: Ridge,
                  r2: dict, features: AlexFeatures, faces: Faces, min_r2: float) -> tuple[dict, list]:
    """Numbers of one model ({"directions": {attribute: {yaw: ...}}, reference distances}) and its grid rows
    (per direction: latent 0 at every strength, at the first yaw)."""
    result, rows, between = {d.attribute: {} for d in directions}, [], {}
    for yaw in EDIT_YAWS:
        sweep = Views(G, ws, yaw, strengths, probe, features, faces)
        between[f"{yaw:+.0f}"] = between_heads([None if row[0] is None else row[0]["descriptor"]
                                                 for row in sweep.base_faces])
        for direction in tqdm(directions, desc=f"{name}, yaw {yaw:+.0f}"):
            views, predicted, found = sweep.along(direction)
            numbers = probe_measures(direction, strengths, predicted, r2, min_r2)
            numbers.update(face_measures(direction.attribute, strengths, found))
            result[direction.attribute][f"{yaw:+.0f}"] = numbers
            if yaw == EDIT_YAWS[0]:
                rows.append(views[0])
    return {"directions": result, "descriptor_distance_between_heads": between}, rows


# --------------------------------------------------------------------------------------------------------- output


def grid_image(rows: dict, labels: list, strengths: np.ndarray) -> Image.Image:
    """rows {model: [(S, H, W, 3) per direction]} -> one picture: a row per direction (labelled on the left), for
    each model in turn a column per strength (labelled on top), models separated by a white gap."""
    tile = next(iter(rows.values()))[0].shape[1]
    label_width, header, gap = 80, 28, 8
    lines = []
    for r in range(len(labels)):
        parts = []
        for views in rows.values():
            parts += [np.concatenate(list(views[r]), 1), np.full((tile, gap, 3), 255, np.uint8)]
        lines.append(np.concatenate(parts[:-1], 1))
    body = np.concatenate(lines, 0)
    canvas = Image.new("RGB", (label_width + body.shape[1], header + body.shape[0]), "white")
    canvas.paste(Image.fromarray(body), (label_width, header))
    draw = ImageDraw.Draw(canvas)
    for r, attribute in enumerate(labels):
        draw.text((4, header + r * tile + tile // 2 - 5), attribute, fill="black")
    for k, name in enumerate(rows):
        left = label_width + k * (len(strengths) * tile + gap)
        draw.text((left + 2, 2), name, fill="black")
        for c, s in enumerate(strengths):
            draw.text((left + c * tile + tile // 2 - 8, 15), f"{s:+g}" if s else "0", fill="black")
    return canvas.quantize(256, method=Image.Quantize.MEDIANCUT)  # a 256-colour palette: a third of the size


def fmt(value, digits: int = 2, sign: str = "+") -> str:
    return "n/a" if value is None else f"{value:{sign}.{digits}f}"


def markdown(models: dict, directions: dict) -> str:
    """The table of the yaw-0 numbers (and the pose check over all yaws), one row per model and direction;
    models: report["models"] or report["photos"]["models"]."""
    lines = ["| model | direction | probe R^2 | own change per unit (w-fit expectation) | largest other change | "
             "identity params moved at max (between heads) | dlib faces | dlib distance at max (same person) | "
             "landmark score slope ± s.e. (truth at the w-fit expectation) | camera change (deg) |", "|---" * 10 + "|"]
    first = f"{EDIT_YAWS[0]:+.0f}"
    for name, model in models.items():
        between = model["descriptor_distance_between_heads"][first]
        for attribute, per_yaw in model["directions"].items():
            row = per_yaw[first]
            expected = directions[attribute]["expected_slope"]
            landmark = fmt(row.get("landmark_score_slope"), 3)
            if "landmark_score_slope_sem" in row:
                landmark += f" ± {row['landmark_score_slope_sem']:.3f}"
            if "expected_landmark_slope" in directions[attribute]:
                landmark += f" ({fmt(directions[attribute]['expected_landmark_slope'], 3)})"
            faces = sum(r["faces_found"] for r in per_yaw.values())
            images = sum(r["images"] for r in per_yaw.values())
            pose = {k: mean_or_none([r.get(f"{k}_change_deg") for r in per_yaw.values()]) for k in ("yaw", "pitch")}
            other = ("n/a" if row["largest_other"] is None
                     else f"{row['largest_other']} {fmt(row['largest_other_slope'])}")
            identity = (f"{row['identity_shift_at_max']:.2f} ({row['identity_between_heads']:.2f}, "
                        f"{row['identity_probes']} probes)" if row["identity_probes"] else "n/a (no visible id probe)")
            dlib = ("n/a" if "descriptor_distance_at_max" not in row else
                    f"{row['descriptor_distance_at_max']:.2f} ({row['same_person_share']:.0%}; between heads "
                    f"{fmt(between, sign='')})")
            lines.append(f"| {name} | {attribute} | {fmt(model['probe_r2'][attribute], sign='')} | "
                         f"{fmt(row['own_slope'])} ({fmt(expected)}) | {other} | {identity} | {faces}/{images} | "
                         f"{dlib} | {landmark} | "
                         f"yaw {fmt(pose['yaw'], 1, '')}, pitch {fmt(pose['pitch'], 1, '')} |")
    return "\n".join(lines)


def probe_table(report: dict) -> str:
    """Held-out R^2 of every probe that is not an identity parameter, and the identity parameters' mean, for the
    ground truth's renders and each model's."""
    names = [n for n in TARGETS if n not in IDENTITY]
    models = {"ground truth": {"probe_r2": report["ground_truth_probe_r2"]}, **report["models"]}
    lines = ["| probe | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    lines.append("| id00..id39 (mean) | " + " | ".join(
        fmt(mean_or_none([m["probe_r2"][n] for n in IDENTITY]), sign="") for m in models.values()) + " |")
    lines += [f"| {n} | " + " | ".join(fmt(m["probe_r2"][n], sign="") for m in models.values()) + " |"
              for n in names]
    return "\n".join(lines)


def landmark_table(report: dict) -> str:
    """How each landmark score follows its true attribute in the world's renders and each model's: slope per
    standard deviation (correlation, faces found), frontal probe images."""
    columns = {"ground truth": report["ground_truth_landmark_response"],
               **{name: m["landmark_response"] for name, m in report["models"].items()}}
    lines = ["| landmark score | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for attribute in report["ground_truth_landmark_response"]:
        cells = [columns[c][attribute] for c in columns]
        lines.append(f"| {attribute} | " + " | ".join(
            f"{fmt(c.get('slope_per_std'), 4)} (r {fmt(c.get('r'))}, {c['faces']} faces)" for c in cells) + " |")
    return "\n".join(lines)


def expected_slope(direction: Direction) -> float | None:
    """What the direction's own fit in w promises: the attribute's change per unit strength, in its standard
    deviations (held-out correlation of projection and label over the spread of the projection)."""
    rho, spread = direction.data.get("heldout_correlation"), direction.data.get("projection_std")
    return round(rho / spread, 3) if rho is not None and spread else None


def photo_latents(paths, models: list[str], G) -> tuple[list[str], torch.Tensor]:
    """(names, ws (P, num_ws, w_dim)) of inverted photos: latent files of `editkit invert`, or folders searched for
    them; each must belong to one of `models` (the first is G) or a registered model sharing their w space, in its
    current version."""
    files = []
    for path in map(Path, paths):
        files += sorted(path.rglob(LATENT)) if path.is_dir() else [path]
    if not files:
        raise LatentError(f"no {LATENT} under {', '.join(map(str, paths))}: run `editkit invert PHOTOS --out DIR`")
    allowed = {name for model in models for name in registry.related_models(model)}
    names, ws = [], []
    for file in files:
        w, meta = read_latent(file)
        if meta["model"]["name"] not in allowed:
            raise LatentError(f"{file}: made with '{meta['model']['name']}', which does not share the w space of "
                              f"{', '.join(models)}")
        check_model(meta, file)
        check_fits(w, file, models[0], G)
        names.append(file.parent.name if file.name == LATENT else file.stem)
        ws.append(w)
    return names, torch.cat(ws)


def pick_directions(model: str, names, files, num_ws: int, w_dim: int) -> list:
    """The shipped directions of `model` (or those named), plus direction files; each must name a world attribute."""
    directions = ([registry.find_shipped(n, model, num_ws, w_dim) for n in names] if names
                  else registry.shipped_directions(model, num_ws, w_dim))
    directions += [load_direction(f, num_ws, w_dim) for f in files]
    if not directions:
        raise DirectionError(f"no shipped directions for '{model}'; pass --direction FILE.npy")
    names = [d.attribute for d in directions]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DirectionError(f"more than one direction for {', '.join(twice)}: measure one per attribute at a time")
    for d in directions:
        if d.attribute not in TARGETS:
            raise DirectionError(f"direction '{d.attribute}' is not a demo-world attribute (known: "
                                 f"{', '.join(DERIVED)}, id00..id39 and the other head parameters)")
    return directions


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m training.edit_report", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo-teacher", metavar="[LABEL=]MODEL",
                        help="demo-world generator: registry name or file (default %(default)s)")
    parser.add_argument("--student", metavar="[LABEL=]MODEL",
                        help="also measure this model (a student sharing the model's w space) on the same latents "
                             "and directions")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--attrs", nargs="+", help="only these shipped directions (default: all of the model's)")
    parser.add_argument("--direction", action="append", default=[], type=Path, metavar="FILE.npy",
                        help="also a direction file whose attribute is a demo-world one (repeatable)")
    parser.add_argument("--train", type=int, default=600, help="probe training images (default %(default)s)")
    parser.add_argument("--heldout", type=int, default=200, help="probe held-out images (default %(default)s)")
    parser.add_argument("--latents", type=int, default=12, help="latents edited (default %(default)s)")
    parser.add_argument("--photos", nargs="+", type=Path, metavar="LATENT_OR_DIR",
                        help="also edit these inverted photos (`editkit invert` outputs; folders are searched)")
    parser.add_argument("--strengths", type=float, nargs="+", default=[-2.0, -1.0, 1.0, 2.0],
                        help="edit strengths; 0 is always added (default: -2 -1 1 2)")
    parser.add_argument("--truncation", type=float, default=0.7, help="psi of the edited latents (default 0.7)")
    parser.add_argument("--min-r2", type=float, default=0.25,
                        help="probes below this held-out R^2 are not used for other-attribute and identity changes")
    parser.add_argument("--emphasis", type=float, default=0.5,
                        help="share of probe samples made to show one of the measured rare expressions (eyes closed, "
                             "brow raise, jaw open...), which the world's own frequencies almost never show "
                             "(default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite an existing report in --out")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    paths = {"json": args.out / "edit_report.json", "grid": args.out / "edit_grid.png"}
    if args.photos:
        paths["photo_grid"] = args.out / "photo_grid.png"
    strengths = np.array(sorted({0.0, *args.strengths}))
    try:
        check_outputs(paths.values(), args.force)
        if args.train < 10 or args.heldout < 2 or args.latents < 2 or len(strengths) < 2:
            raise EditkitError("need --train >= 10, --heldout >= 2, --latents >= 2 and a non-zero strength")
        label, model = named_model(args.model)
        models = {label: load_generator(model)}
        model_names = [model]
        if args.student:
            student_label, student = named_model(args.student)
            models[student_label] = load_generator(student)
            model_names.append(student)
        for name, G in models.items():
            if G.z_dim != LATENT_SIZE:
                raise EditkitError(f"{name}: z_dim {G.z_dim} is not the demo world's ({LATENT_SIZE}); edit_report "
                                   "measures demo-world generators only")
        G = models[label]
        directions = pick_directions(model, args.attrs, args.direction, G.num_ws, G.w_dim)
        photo_names, photo_ws = (photo_latents(args.photos, model_names, G) if args.photos
                                 else ([], None))
        features, faces = AlexFeatures(), Faces()
        # the first model's mapping makes every latent (a student shares its teacher's w space)
        rare = [d.attribute for d in directions if d.attribute in RARE_EXPRESSIONS]
        z, probe_ws = probe_samples(G, args.train + args.heldout, args.seed, args.emphasis, rare)
        _, ws = sample_latents(G, args.latents, args.seed + 1, args.truncation)  # seed + 1: not the probes' samples
        ws = torch.from_numpy(ws)
        report = {"settings": {"model": args.model, "student": args.student, "train": args.train,
                               "heldout": args.heldout, "latents": args.latents, "strengths": strengths.tolist(),
                               "truncation_psi": args.truncation,
                               "probe_emphasis": {"share": args.emphasis if rare else 0.0, "expressions": rare},
                               "probe_yaws": list(PROBE_YAWS), "edit_yaws": list(EDIT_YAWS), "min_r2": args.min_r2,
                               "seed": args.seed, "features": f"LPIPS AlexNet ReLU1-5, {POOL}x{POOL} average pool",
                               "identity_network": faces.embedder.name},
                  "directions": {d.attribute: {"method": d.method, "expected_slope": expected_slope(d)}
                                 for d in directions},
                  "models": {}}
        if args.photos:
            report["photos"] = {"latents": photo_names, "models": {}}
        scored = [d.attribute for d in directions if d.attribute in attributes.SCORES]
        truth_images = truth_probe_images(z, G.img_resolution)
        _, report["ground_truth_probe_r2"] = fit_probes(truth_images, z, args.train, features)
        report["ground_truth_landmark_response"] = truth = landmark_calibration(truth_images, z, scored)
        for name, response in truth.items():  # the landmark change a direction promises, by the world's own scale
            entry = report["directions"][name]
            if entry["expected_slope"] is not None and "slope_per_std" in response:
                entry["expected_landmark_slope"] = round(entry["expected_slope"] * response["slope_per_std"], 4)
        grids, photo_grids = {}, {}
        for name, generator in models.items():
            images = model_probe_images(generator, probe_ws)
            probe, r2 = fit_probes(images, z, args.train, features)
            measure = [directions, strengths, probe, r2, features, faces, args.min_r2]
            numbers, grids[name] = measure_model(generator, name, ws, *measure)
            report["models"][name] = {"probe_r2": r2, "landmark_response": landmark_calibration(images, z, scored),
                                      **numbers}
            if args.photos:
                numbers, photo_grids[name] = measure_model(generator, f"{name}, photos", photo_ws, *measure)
                report["photos"]["models"][name] = {"probe_r2": r2, **numbers}
    except EditkitError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2) + "\n"
    labels = [d.attribute for d in directions]
    pictures = {"grid": grid_image(grids, labels, strengths)}
    if args.photos:
        pictures["photo_grid"] = grid_image(photo_grids, labels, strengths)
    with output_group():
        atomic_write(paths["json"], lambda tmp: tmp.write_text(text), force=args.force)
        for kind, picture in pictures.items():
            atomic_write(paths[kind], lambda tmp: picture.save(tmp, format="png", optimize=True), force=args.force)
    print(probe_table(report), end="\n\n")
    if report["ground_truth_landmark_response"]:
        print(landmark_table(report), end="\n\n")
    print(markdown(report["models"], report["directions"]))
    if args.photos:
        print(f"\nInverted photos ({', '.join(photo_names)}):\n")
        print(markdown(report["photos"]["models"], report["directions"]))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
