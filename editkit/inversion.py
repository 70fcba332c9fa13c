"""W+ inversion: the latent (and a camera correction, and optionally a tuned generator) that reproduces a photo.

Works through any generator with the teacher's interface (`mapping`, `w_avg`, `num_ws`, `w_dim`,
`img_resolution`, `synthesis(ws, c, noise_mode='const')['image']` in [-1, 1]): the distilled student by default,
the EG3D teacher for comparison. The recipe (docs/inversion.md), after EG3D's projector and PTI:

* start every layer's w at `w_avg`; optimise one shared offset plus per-layer offsets (W+), both in units of the
  generator's w spread, with a penalty on the per-layer offsets that keeps the latent near W;
* Adam with a learning rate that ramps up over the first 5% of steps and down (cosine) over the last 25%;
* loss: LPIPS (AlexNet by default: on a CPU, VGG costs more than the student itself) + mean squared error, only
  where the aligned crop shows the photo; an optional identity loss as a callable;
* optional camera refinement: a yaw/pitch correction in degrees, optimised from a quarter of the way in;
* optional pivotal tuning (PTI): fine-tune a copy of the generator around the found latent.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from editkit import cameras, checkpoints
from editkit.errors import EditkitError
from editkit.faces import prepare_face
from editkit.io import atomic_write, check_outputs, output_group, staged
from editkit.latents import LATENT, LATENT_JSON, write_latent
from editkit.metrics.image import psnr
from editkit.perceptual import LPIPS

LOSS_RESOLUTION = 256  # LPIPS sees at most 256 px, as in EG3D's projector
W_SPREAD_SAMPLES = 2000


@dataclass
class Settings:
    """Inversion settings; the defaults are the CLI's (docs/inversion.md has the measurements behind them)."""

    steps: int = 200
    lr: float = 0.05               # Adam step, in units of the generator's per-dimension w spread
    lr_rampup: float = 0.05        # fraction of steps over which the learning rate ramps up
    lr_rampdown: float = 0.25      # fraction of steps over which it ramps down
    lpips: str = "alex"            # LPIPS backbone: 'alex' or 'vgg'
    lpips_weight: float = 1.0
    mse_weight: float = 1.0        # mean squared error on images in [-1, 1]
    delta_weight: float = 1e-3     # penalty on the per-layer W+ offsets (pulls the latent towards W)
    shared_weight: float = 0.0     # penalty on the shared offset (pulls the latent towards w_avg; 0: free, as EG3D's)
    identity_weight: float = 0.0   # weight of the `identity` callable given to `invert`, if any
    refine_camera: bool = True
    camera_lr: float = 0.5         # degrees per Adam step
    camera_start: float = 0.25     # fraction of steps before the camera may move
    camera_weight: float = 1e-5    # penalty on the squared correction in degrees (docs/inversion.md: sweep)
    pti: bool = False
    pti_steps: int = 100
    pti_lr: float = 3e-4


@dataclass
class InversionResult:
    """What an inversion found, for a batch of N targets."""

    ws: torch.Tensor                 # (N, num_ws, w_dim) float32, W+
    label: torch.Tensor              # (N, 25) the camera after refinement
    initial_label: torch.Tensor      # (N, 25) the camera given
    image: torch.Tensor              # (N, 3, R, R) reconstruction in [-1, 1] (by the tuned generator with PTI)
    losses: dict                     # per target: {'lpips', 'mse', 'psnr'} lists, and the same '..._before_pti'
    history: np.ndarray              # (steps, N) total W+ loss per step
    timings: dict                    # seconds: 'w_plus', 'per_step', 'pti', 'total'
    settings: Settings
    generator: torch.nn.Module | None = None  # the PTI-tuned copy, when settings.pti

    def yaw_pitch(self, initial: bool = False) -> list[tuple[float, float]]:
        """Yaw and pitch in degrees of each target's camera (refined, or as given)."""
        yaw, pitch = cameras.label_to_yaw_pitch(self.initial_label if initial else self.label)
        return [(float(y), float(p)) for y, p in zip(yaw, pitch)]

    def summary(self, index: int = 0) -> dict:
        """The JSON-ready record of one target: camera, losses, timings, settings."""
        (yaw, pitch), (yaw0, pitch0) = self.yaw_pitch()[index], self.yaw_pitch(initial=True)[index]
        return {
            "camera": {"label": cameras.to_json(self.label[index]), "yaw": yaw, "pitch": pitch,
                       "initial_label": cameras.to_json(self.initial_label[index]), "initial_yaw": yaw0,
                       "initial_pitch": pitch0, "refined": self.settings.refine_camera},
            "losses": {k: v[index] for k, v in self.losses.items()},
            "timings": dict(self.timings),
            "settings": asdict(self.settings),
        }


def lr_schedule(t: float, rampup: float, rampdown: float) -> float:
    """Learning-rate factor at progress t in [0, 1): cosine ramp up, then cosine ramp down to 0."""
    up = min(1.0, t / rampup) if rampup > 0 else 1.0
    down = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    return (0.5 - 0.5 * math.cos(math.pi * up)) * (0.5 - 0.5 * math.cos(math.pi * down))


@torch.no_grad()
def w_spread(G, samples: int = W_SPREAD_SAMPLES, seed: int = 0) -> float:
    """Root-mean-square distance per dimension of mapped latents from `w_avg` (frontal conditioning camera)."""
    z = torch.randn(samples, G.z_dim, generator=torch.Generator().manual_seed(seed))
    c = cameras.frontal_label().expand(samples, 25).to(G.w_avg.device)
    w = G.mapping(z.to(G.w_avg.device), c)[:, 0]
    return float((w - G.w_avg).pow(2).mean().sqrt())


def to_loss_resolution(image: torch.Tensor) -> torch.Tensor:
    """Area-downsample images larger than LOSS_RESOLUTION."""
    if image.shape[-1] > LOSS_RESOLUTION:
        return F.adaptive_avg_pool2d(image, (LOSS_RESOLUTION, LOSS_RESOLUTION))
    return image


class Objective:
    """Per-target losses of rendered images against fixed targets, ignoring the pixels outside `mask`."""

    def __init__(self, target, mask, perceptual, settings, identity=None):
        self.target, self.mask, self.perceptual, self.s, self.identity = target, mask, perceptual, settings, identity

    def __call__(self, image: torch.Tensor) -> dict:
        # outside the photo the target takes the rendered value: no loss there, for MSE and (nearly) for LPIPS
        target = self.mask * self.target + (1 - self.mask) * image.detach()
        terms = {"lpips": self.perceptual(to_loss_resolution(image), to_loss_resolution(target)),
                 "mse": (image - target).pow(2).flatten(1).mean(1)}
        total = self.s.lpips_weight * terms["lpips"] + self.s.mse_weight * terms["mse"]
        if self.identity is not None and self.s.identity_weight > 0:
            terms["identity"] = self.identity(image, target)
            total = total + self.s.identity_weight * terms["identity"]
        terms["total"] = total
        return terms

    @torch.no_grad()
    def report(self, image: torch.Tensor) -> dict:
        """Per-target lists: LPIPS, MSE and PSNR (dB) over the photo's pixels."""
        terms = self(image)
        return {"lpips": terms["lpips"].tolist(), "mse": terms["mse"].tolist(),
                "psnr": psnr(image, self.target, self.mask).tolist()}


@contextmanager
def frozen(module):
    """Inside, the module's parameters need no gradient (their flags are restored afterwards)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def render(G, ws: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """G's image for ws and cameras, with constant noise (deterministic)."""
    return G.synthesis(ws, label.to(ws.dtype), noise_mode="const")["image"]


def check_inputs(G, target, label, mask):
    """Targets (N, 3, R, R) at the generator's resolution, labels (N, 25), mask (N, 1, R, R)."""
    r = G.img_resolution
    if target.ndim != 4 or target.shape[1:] != (3, r, r):
        raise EditkitError(f"targets must be (N, 3, {r}, {r}) for this generator, got {tuple(target.shape)}; align "
                           f"photos at the model's resolution ({r} px)")
    if label.shape != (len(target), 25):
        raise EditkitError(f"need one 25-float camera label per target, got labels of shape {tuple(label.shape)}")
    if mask.shape != (len(target), 1, r, r):
        raise EditkitError(f"mask must be (N, 1, {r}, {r}), got {tuple(mask.shape)}")


def camera_from_offsets(yaw0, pitch0, focal, offsets):
    """(N, 25) labels at yaw0 + offsets[:, 0], pitch0 + offsets[:, 1] (degrees) on EG3D's camera sphere."""
    labels = [cameras.make_label(y + o[0], p + o[1], focal=float(f)) for y, p, f, o in zip(yaw0, pitch0, focal,
                                                                                           offsets)]
    return torch.cat(labels)


def invert(G, target: torch.Tensor, label: torch.Tensor, settings: Settings | None = None,
           mask: torch.Tensor | None = None, identity: Callable | None = None, perceptual=None,
           progress: bool = True, before_step: Callable[[int], None] | None = None) -> InversionResult:
    """Invert targets (N, 3, R, R) in [-1, 1] seen from cameras `label` (N, 25) through generator G.

    `mask` (N, 1, R, R) marks the pixels that count (1; e.g. the aligned crop's `valid`). `identity(image,
    target) -> (N,)` is an optional extra loss (weighted by settings.identity_weight). `perceptual` is an
    `editkit.perceptual.LPIPS` to reuse across calls (default: built for settings.lpips). `before_step(step)` is
    called before every W+ step; an exception it raises ends the inversion (the web demo stops one whose user left).
    """
    s = settings or Settings()
    device = G.w_avg.device
    target = torch.as_tensor(target, dtype=torch.float32).to(device)
    label = torch.as_tensor(label, dtype=torch.float32).to(device).reshape(-1, 25)
    mask = torch.ones_like(target[:, :1]) if mask is None else torch.as_tensor(mask, dtype=torch.float32).to(device)
    check_inputs(G, target, label, mask)
    if s.steps < 1:
        raise EditkitError(f"steps must be at least 1, got {s.steps}")
    if perceptual is None:
        perceptual = LPIPS(s.lpips)
    objective = Objective(target, mask, perceptual.to(device), s, identity)
    n = len(target)
    start = time.perf_counter()

    spread = w_spread(G)
    shared = torch.zeros(n, 1, G.w_dim, device=device, requires_grad=True)
    deltas = torch.zeros(n, G.num_ws, G.w_dim, device=device, requires_grad=True)
    yaw0, pitch0 = cameras.label_to_yaw_pitch(label)
    focal = label[:, 16].tolist()
    offsets = torch.zeros(n, 2, dtype=torch.float64, device=device, requires_grad=s.refine_camera)
    groups = [{"params": [shared, deltas], "base_lr": s.lr}]
    if s.refine_camera:
        groups.append({"params": [offsets], "base_lr": s.camera_lr})
    optimizer = torch.optim.Adam(groups, betas=(0.9, 0.999))
    camera_step = int(s.camera_start * s.steps)

    def current():
        ws = G.w_avg + spread * (shared + deltas)
        c = camera_from_offsets(yaw0, pitch0, focal, offsets) if s.refine_camera else label
        return ws, c

    history = np.zeros((s.steps, n), np.float32)
    with frozen(G):
        bar = tqdm(range(s.steps), desc="invert", unit="step", disable=not progress, leave=False)
        for step in bar:
            if before_step is not None:
                before_step(step)
            factor = lr_schedule(step / s.steps, s.lr_rampup, s.lr_rampdown)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            if s.refine_camera and step < camera_step:
                optimizer.param_groups[1]["lr"] = 0.0
            ws, c = current()
            terms = objective(render(G, ws, c))
            loss = terms["total"].sum() + s.delta_weight * deltas.pow(2).sum() + s.shared_weight * shared.pow(2).sum()
            if s.refine_camera:
                loss = loss + s.camera_weight * offsets.pow(2).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history[step] = terms["total"].detach().cpu().numpy()
            bar.set_postfix(loss=f"{history[step].mean():.4f}")
        with torch.no_grad():
            ws, c = current()
            ws, c = ws.detach(), c.detach().float()
            image = render(G, ws, c)
    w_plus_time = time.perf_counter() - start
    losses = objective.report(image)
    timings = {"w_plus": w_plus_time, "per_step": w_plus_time / s.steps, "pti": 0.0}

    tuned = None
    if s.pti:
        losses = {**losses, **{f"{k}_before_pti": v for k, v in losses.items()}}
        pti_start = time.perf_counter()
        tuned = pivotal_tuning(G, ws, c, objective, s, progress)
        timings["pti"] = time.perf_counter() - pti_start
        with torch.no_grad():
            image = render(tuned, ws, c)
        losses.update(objective.report(image))
    timings["total"] = time.perf_counter() - start
    return InversionResult(ws.float().cpu(), c.cpu(), label.cpu(), image.detach().cpu(), losses, history, timings, s,
                           tuned)


def pivotal_tuning(G, ws: torch.Tensor, label: torch.Tensor, objective: Objective, settings: Settings,
                   progress: bool = True):
    """A copy of G fine-tuned so that the pivot latents `ws` render the targets (PTI); G itself is untouched."""
    tuned = copy.deepcopy(G).requires_grad_(True)
    optimizer = torch.optim.Adam(tuned.parameters(), lr=settings.pti_lr)
    bar = tqdm(range(settings.pti_steps), desc="pti", unit="step", disable=not progress, leave=False)
    for _ in bar:
        loss = objective(render(tuned, ws, label))["total"].sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item() / len(ws):.4f}")
    return tuned.requires_grad_(False).eval()


# --------------------------------------------------------------------------------------------------- photos

VIEW_YAWS = (-30.0, 0.0, 30.0)  # the novel views of compare.png (pitch 0)
OUTPUT_FILES = ("aligned.png", "reconstruction.png", "compare.png", LATENT, LATENT_JSON)
PTI_FILE = "pti_generator.safetensors"


def output_files(folder, pti: bool = False) -> list[Path]:
    """The files a photo's inversion writes into `folder` (with PTI also the tuned generator and its config)."""
    names = OUTPUT_FILES + ((PTI_FILE, PTI_FILE.replace(".safetensors", ".json")) if pti else ())
    return [Path(folder) / name for name in names]


def generator_kind(G) -> str:
    """'teacher' for the EG3D tri-plane generator, 'student' for the convolutional one, else the class name."""
    name = type(G).__name__
    return {"TriPlaneGenerator": "teacher", "Student": "student"}.get(name, name)


def to_tensor(images) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def render_views(G, ws: torch.Tensor, yaws=VIEW_YAWS, pitch: float = 0.0) -> np.ndarray:
    """uint8 (len(yaws), R, R, 3) renders of one latent (1, num_ws, w_dim) from the given yaws."""
    labels = cameras.make_label(torch.tensor(yaws, dtype=torch.float64), pitch).to(ws.device)
    return to_uint8(render(G, ws.expand(len(yaws), -1, -1), labels))


@dataclass
class PhotoInversion:
    """One photo's inversion: what `editkit invert` writes, as objects."""

    source: str
    alignment: object            # editkit.faces.Alignment: crop, valid mask, landmarks, camera
    latent: torch.Tensor         # (1, num_ws, w_dim) float32 W+
    reconstruction: np.ndarray   # (R, R, 3) uint8, from the refined camera
    views: np.ndarray            # (3, R, R, 3) uint8 novel views at VIEW_YAWS
    record: dict                 # the contents of latent.json
    generator: torch.nn.Module | None = None  # the PTI-tuned generator, when asked for

    def compare(self) -> np.ndarray:
        """(R, 5 R, 3) uint8: aligned input | reconstruction | the three novel views."""
        return np.concatenate([self.alignment.image, self.reconstruction, *self.views], axis=1)

    def save(self, folder, force: bool = False) -> list:
        """Write the files into `folder`, all of them or none; refuses to overwrite any of them unless `force`."""
        folder = Path(folder)
        check_outputs(output_files(folder, self.generator is not None), force)
        record = dict(self.record)

        def png(array):
            return lambda tmp: Image.fromarray(array).save(tmp, format="PNG")

        images = {"aligned.png": self.alignment.image, "reconstruction.png": self.reconstruction,
                  "compare.png": self.compare()}
        with output_group():
            if self.generator is not None:
                path = checkpoints.save_model(folder / PTI_FILE, {"G": self.generator},
                                              {"data": f"pivotal tuning on {self.source}"}, overwrite=force)
                record["pti_generator"] = {"file": PTI_FILE, "sha256": checkpoints.sha256_file(staged(path))}
            return [atomic_write(folder / name, png(image), force=force) for name, image in images.items()] + \
                write_latent(folder, self.latent, record, force=force) + \
                ([folder / PTI_FILE] if self.generator is not None else [])


def invert_photos(photos, G, settings: Settings | None = None, face_index: int = 0, model: dict | None = None,
                  batch_size: int = 4, progress: bool = True) -> list[PhotoInversion]:
    """Invert the faces of several photos through G: [(source name, RGB uint8 image), ...] -> PhotoInversions.

    Every photo is aligned first (a photo without a usable face raises before any optimisation), then the crops
    are inverted in batches of `batch_size` (one at a time with PTI: each photo gets its own tuned generator).
    `model` ({'name', 'sha256'}) is copied into each record.
    """
    s = settings or Settings()
    start = time.perf_counter()
    faces = [prepare_face(image, G.img_resolution, face_index, source=str(source)) for source, image in photos]
    align_time = (time.perf_counter() - start) / max(len(faces), 1)
    perceptual = LPIPS(s.lpips)
    batch_size = 1 if s.pti else max(1, batch_size)
    results = []
    for first in range(0, len(faces), batch_size):
        batch = faces[first:first + batch_size]
        sources = [str(source) for source, _ in photos[first:first + batch_size]]
        target = to_tensor([f.image for f in batch])
        mask = torch.from_numpy(np.stack([f.valid for f in batch]))[:, None]
        labels = torch.stack([f.label for f in batch])
        result = invert(G, target, labels, s, mask=mask, perceptual=perceptual, progress=progress)
        renderer = result.generator if result.generator is not None else G
        for i, (source, face) in enumerate(zip(sources, batch)):
            latent = result.ws[i:i + 1]
            summary = result.summary(i)
            summary["timings"] = {**summary["timings"], "align": align_time, "batch_size": len(batch)}
            record = {
                "source": source, "model": model, "generator": generator_kind(G),
                "resolution": G.img_resolution,
                "latent": {"file": LATENT, "space": "W+", "shape": list(latent.shape), "dtype": "float32"},
                "face": {"index": face_index, "detector": face.face.detector, "box": face.face.box.tolist(),
                         "score": face.face.score, "landmarks": face.photo_landmarks.tolist(),
                         "crop_matrix": face.matrix.tolist()},
                **summary,
                "views": {"yaw": list(VIEW_YAWS), "pitch": 0.0},
            }
            results.append(PhotoInversion(source, face, latent, to_uint8(result.image[i:i + 1])[0],
                                          render_views(renderer, latent), record, result.generator))
    return results
