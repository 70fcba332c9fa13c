"""Fit a small EG3D TriPlaneGenerator to the demo world on a CPU: `python -m training.fit_teacher --run DIR`.

The fit is supervised. Each step draws latents z and cameras, renders the heads that z decodes to
(`training.synthetic.latent.params_from_z`) with the demo world's renderer, and pulls the generator's image, raw
(volume-rendered) image, depth and opacity towards those renders (L1 + LPIPS on the image, L1 on the raw image,
masked L1 on depth, L1 between each ray's opacity and the head's pixel coverage, EG3D's density smoothness term).
The network is EG3D's TriPlaneGenerator (official class and arguments, plus 128 px tri-planes and a learned plane
offset, both editkit options off for official weights), so everything that works on official weights works on it.

Choices (measured on this 2-core CPU, see docs/demo_teacher.md and ../shared/NOTES.md section 5):
- mapping lr multiplier 1 instead of EG3D's 0.01: with 0.01 the per-head variation is barely learned;
- camera conditioning zeroed (`c_gen_conditioning_zero`): the head must not depend on the view;
- 128 px tri-planes instead of 256: 1.7x faster steps, no visible loss at 128 px output;
- the opacity term: without it the first fit painted the white background with white fog filling the volume
  (16 dB after 800 steps, no hair, no features, outline fixed across yaw);
- LPIPS on the image: the only loss term that brought out eyes, nose and lips in earlier attempts;
- a learned plane offset (`TriPlaneGenerator(plane_offset=True)`, its own learning rate): the backbone alone
  learned no facial features in 1844 steps; with the offset dlib finds faces in most renders after 200 steps;
- for expressions (the offset is the same for every head, and the teacher drew one face for every latent): a plane
  basis mixed by w - w_avg (`--config basis`, its own `basis_lr`); a feature-weighted image term
  (`feature_weight`: L1 inside blobs around the chin, brow, eye, nose and mouth landmarks, a few percent of the
  pixels otherwise); expression pairs (`pair_weight`: batches of heads repeated with new expression latents, the
  teacher's change within each pair against the truth's); `pair_emphasis`: re-drawn heads of the pairs show a rare
  expression (blink, brow raise...) that the world's own frequencies almost never put in a batch;
- `eye_weight`: the image and pair terms again within blobs around the eyes only (`EYE_LANDMARKS`): a blink
  changes ~2% of the image, and after every change above the teacher still drew it faintly (eye response 0.29);
  weight 4 raised that by only 0.01-0.02 in 900 steps (40-minute A/B), weight 32 by 0.016 in 535 steps (the
  teacher draws no per-head eye detail for a blink to change, docs/demo_teacher.md), so it stays off;
- for that eye detail: a detail basis (`--config basis-wide-detail`: 32 full-resolution tensors in boxes around the
  eyes and brows on each plane, mixed by a small MLP of w) fitted alone (`--train detail`, the rest of the teacher
  frozen) with the upper face's rare expressions in the pairs (`--emphasise upper-face`): the blink's response
  went 0.26 -> 0.50 and the brow raise's 0.13 -> 0.25 in 40 minutes (docs/demo_teacher.md); `--train detail-sr`
  fits the upsampler with it (50 minutes on: +0.04 dB and blink 0.53 against the basis alone's 0.50);
- `raw_eye_weight`: the raw (volume-rendered) image and its pair change again within the eye blobs: the truth's
  64 px image still shows the whites and a closed lid, the teacher's raw colours were the same open and closed;
  weight 8 gained nothing in 376 steps (A/B, docs/demo_teacher.md: the teacher barely follows gaze and iris
  colour, so it draws no whites for a lid to cover), so it stays off;
- `outline_weight`: L1 within OUTLINE_PIXELS of the head's outline, where most of the squared error is;
- `mse_weight`: a squared-error image term beside the L1 ones. Where the fit cannot tell where an edge lies, L1
  draws the likelier side and squared error the average, which is what PSNR rewards (the outline holds ~70% of the
  squared error): weight 4 led the same fit without it by +0.29 dB after ~790 steps (52-minute A/B, 2026-12-05),
  weight 16 led weight 4 by a further ~0.1 dB (docs/demo_teacher.md);
- once the head is formed, no density smoothness and the opacity term weighted 3x (`--density-reg 0
  --opacity-weight 3`): the smoothness term keeps a soft shell around the head, drawn ~3% too large in area
  (40-minute A/B: +0.12 dB, heads 1.020 instead of 1.028 of their true size; over 2586 steps the PSNR gain
  shrank to +0.04 dB on held-out heads, the smaller heads and a closer expression response stayed);
- an EMA copy of the weights is evaluated and exported, averaged over ~100 steps (`ema_beta` 0.99): at 0.998 (~500
  steps, the old default) the average lagged the weights late in a fine-tune, 0.22 dB below them, and a fresh
  average gained +0.4 dB on held-out heads (docs/demo_teacher.md); the evaluation also measures how well the
  teacher follows its expression latents (`expression_response`).
- lower learning rates once the curve flattens (a run resumed with `--lr`, `--offset-lr`, `--basis-lr`,
  `--ema-beta` or `--mse-weight`, kept in its settings.json for later resumes; each invocation's values are logged
  and exported):
  1e-3 -> 3e-4 gained 0.28 dB in 450 steps where 1e-3 gained ~0.1.
- `low_res_steps`: a fit from scratch renders its volume at `low_res` (32) px for its first steps: 1.5x faster steps
  (the backbone and upsampler do not shrink), 0.1-0.35 dB ahead over the first 20 minutes of a new fit (measured
  with 400 steps); off by default, as a fine-tune of a fitted teacher has nothing to gain from it.
A run stops after `--minutes`, saving its state; the same command continues it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from editkit import cameras
from editkit.checkpoints import load_generator, resolve_checkpoint, save_model, sha256_file
from editkit.errors import EditkitError, one_line
from editkit.io import atomic_write
from editkit.metrics.image import psnr
from editkit.models.eg3d import TriPlaneGenerator
from editkit.models.eg3d.configs import rendering_kwargs
from training.state import load_latest_state, save_state, state_files
from training.synthetic.latent import (APPEARANCE, BLINK, GAZE, LATENT_SIZE, SMILE, SPARSE,
                                       emphasise_rare_expressions, params_from_z)

DEMO = dict(img_resolution=128, neural_rendering_resolution=64, triplane_resolution=128, channel_base=4096,
            channel_max=32, samples=12, plane_offset=False, plane_basis=0, plane_basis_resolution=64)
CONFIGS = {
    # the first demo teacher (no plane offset: no facial features after 1844 steps)
    "demo": DEMO,
    # the shipped teacher: the same network with a learned plane offset (docs/demo_teacher.md)
    "offset": {**DEMO, "plane_offset": True},
    # the offset plus 16 tri-plane tensors at 64 px mixed by a linear layer of w (docs/demo_teacher.md)
    "basis": {**DEMO, "plane_offset": True, "plane_basis": 16},
    # a wider backbone: 128 channels up to 64 px, 64 at 128 px (+17% per step, docs/demo_teacher.md)
    "wide": {**DEMO, "channel_base": 8192, "channel_max": 128},
    # the basis teacher with that backbone; --init-from a 'basis' teacher widens it, keeping what it draws
    "basis-wide": {**DEMO, "plane_offset": True, "plane_basis": 16, "channel_base": 8192, "channel_max": 128},
    # basis-wide with 48 basis tensors (--init-from a 16-tensor teacher adds 32 at zero): flat, not adopted
    # (docs/demo_teacher.md, "What is missing")
    "basis48-wide": {**DEMO, "plane_offset": True, "plane_basis": 48, "channel_base": 8192, "channel_max": 128},
    # basis-wide with per-head detail at the planes' full resolution in boxes around the eyes and brows (all heads'
    # eye and brow landmarks, blinking and raised, fall inside with >= 6 texels to spare; docs/demo_teacher.md)
    "basis-wide-detail": {**DEMO, "plane_offset": True, "plane_basis": 16, "channel_base": 8192, "channel_max": 128,
                          "detail_basis": 32, "detail_windows": [[56, 38, 26, 52], [76, 38, 24, 52], [38, 76, 52, 24]]},
    # a few seconds per step: for tests
    "tiny": dict(img_resolution=128, neural_rendering_resolution=16, triplane_resolution=32, channel_base=256,
                 channel_max=16, samples=6, plane_offset=True, plane_basis=4, plane_basis_resolution=16),
    "tiny-detail": dict(img_resolution=128, neural_rendering_resolution=16, triplane_resolution=32, channel_base=256,
                        channel_max=16, samples=6, plane_offset=True, plane_basis=4, plane_basis_resolution=16,
                        detail_basis=3, detail_windows=[[12, 8, 6, 14], [18, 8, 6, 14], [8, 18, 14, 6]]),
}
DEFAULTS = dict(config="offset", batch=4, lr=1e-3, offset_lr=5e-3, basis_lr=5e-3, detail_lr=5e-3, train="all",
                emphasise="all", seed=0, lpips="vgg", lpips_weight=0.3, lpips_after=600, raw_weight=1.0,
                depth_weight=1.0, opacity_weight=1.0, density_reg=0.25, ema_beta=0.99, yaw_range=50.0, pitch_std=8.0,
                feature_weight=4.0, pair_weight=0.0, pair_emphasis=0.0, outline_weight=0.0, eye_weight=0.0,
                mse_weight=0.0, raw_eye_weight=0.0, low_res_steps=0, low_res=32)
INIT_RECORD = "init_from.json"  # the teacher a run started from (--init-from), for the export's provenance
# the settings that may change when a run resumes
ADJUSTABLE = ("lr", "offset_lr", "basis_lr", "detail_lr", "ema_beta", "mse_weight", "raw_eye_weight")
EVAL_SEED, EVAL_HEADS, EVAL_YAWS = 1234, 12, (-35.0, -17.5, 0.0, 17.5, 35.0)
# chin, brows, nose, eyes and mouth of the 68-point scheme (not the sides of the jaw line); with blobs of 0.04 x the
# image size they weight 18% of the image and hold ~80% of what smiling or opening the jaw changes (measured)
FEATURE_LANDMARKS = [*range(5, 12), *range(17, 68)]
FEATURE_SIGMA = 0.04
# both eyes with their lids (68-point scheme): closing them changes ~2% of the image (380 px at 128 px, measured)
EYE_LANDMARKS = list(range(36, 48))
# the head's outline: pixels within this many of the mask's edge; 13% of the image, 73% of the shipped teacher's
# squared error (measured on the evaluation heads, 2026-12-03)
OUTLINE_PIXELS = 2
# expression latents probed by the evaluation: (name, latent index), each moved from EXPRESSION_LOW to _HIGH; the
# gaze (left-right) says whether the teacher draws where each head's irises sit, what a blink covers
EXPRESSION_PROBES = (("smile", SMILE), ("jaw_open", SPARSE), ("eyes_closed", BLINK), ("brow_raise", SPARSE + 1),
                     ("gaze", GAZE))
EXPRESSION_LOW, EXPRESSION_HIGH = -2.0, 2.5
EXPRESSION_LATENTS = slice(SMILE, APPEARANCE)  # smile, blink, the sparse units, gaze
# the rare expressions of the eyes and brows (`--emphasise upper-face`: what the detail basis draws)
UPPER_FACE = ("eyes_closed", "brow_raise", "brow_down", "eye_wide", "eye_squint")


def teacher_kwargs(config: dict) -> dict:
    """TriPlaneGenerator arguments for one of CONFIGS (EG3D's FFHQ recipe, shrunk)."""
    rendering = rendering_kwargs(
        image_resolution=config["img_resolution"],
        superresolution_module="training.superresolution.SuperresolutionHybrid2X",
        c_gen_conditioning_zero=True, white_back=True,
        depth_resolution=config["samples"], depth_resolution_importance=config["samples"])
    return dict(z_dim=LATENT_SIZE, c_dim=25, w_dim=512, img_resolution=config["img_resolution"], img_channels=3,
                sr_num_fp16_res=0, mapping_kwargs=dict(num_layers=2, lr_multiplier=1.0),
                rendering_kwargs=rendering, triplane_resolution=config["triplane_resolution"],
                plane_offset=config["plane_offset"], plane_basis=config["plane_basis"],
                plane_basis_resolution=config["plane_basis_resolution"],
                detail_basis=config.get("detail_basis", 0), detail_windows=config.get("detail_windows"),
                sr_kwargs=dict(channel_base=config["channel_base"], channel_max=config["channel_max"],
                               fused_modconv_default="inference_only"),
                channel_base=config["channel_base"], channel_max=config["channel_max"],
                fused_modconv_default="inference_only", num_fp16_res=0, conv_clamp=None)


def build_teacher(config: dict) -> TriPlaneGenerator:
    G = TriPlaneGenerator(**teacher_kwargs(config))
    G.neural_rendering_resolution = config["neural_rendering_resolution"]
    return G


def sample_cameras(generator: torch.Generator, n: int, yaw_range: float, pitch_std: float) -> torch.Tensor:
    """(n, 25) labels: yaw uniform in +-yaw_range (wider than the evaluation), pitch normal, clipped at 2.5 std."""
    yaw = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * yaw_range
    pitch = torch.randn(n, generator=generator, dtype=torch.float64).clamp(-2.5, 2.5) * pitch_std
    return cameras.make_label(yaw, pitch).float()


def rendering_resolution(settings: dict, config: dict, step: int) -> int:
    """The volume render's size at `step`: `low_res` for the first `low_res_steps`, then the config's."""
    return settings["low_res"] if step < settings["low_res_steps"] else config["neural_rendering_resolution"]


def sample_batch(generator: torch.Generator, settings: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents and cameras of one step. With `pair_weight`, the second half of the batch repeats the first half's
    heads and cameras with their expression latents drawn anew: pairs that differ only in expression. With
    `pair_emphasis` p, each re-drawn head shows, with probability p, one of RARE_EXPRESSIONS (2% of the world's heads
    close their eyes fully: a batch of 4 shows it once in ~13 steps, and the teacher learned to draw none)."""
    n = settings["batch"]
    z = torch.randn(n, LATENT_SIZE, generator=generator)
    labels = sample_cameras(generator, n, settings["yaw_range"], settings["pitch_std"])
    if settings["pair_weight"] > 0:
        half = n // 2
        z[half:2 * half] = z[:half]
        z[half:2 * half, EXPRESSION_LATENTS] = torch.randn(half, APPEARANCE - SMILE, generator=generator)
        labels[half:2 * half] = labels[:half]
        if settings["pair_emphasis"] > 0:
            names = UPPER_FACE if settings["emphasise"] == "upper-face" else None
            z[half:2 * half] = emphasise_rare_expressions(z[half:2 * half], settings["pair_emphasis"], generator,
                                                          names)
    return z, labels


def outline_map(mask: torch.Tensor, pixels: int = OUTLINE_PIXELS) -> torch.Tensor:
    """(N, 1, R, R) 1 where a (N, 1, R, R) 0/1 mask changes within `pixels` (its dilation minus its erosion)."""
    size = 2 * pixels + 1
    return F.max_pool2d(mask, size, 1, pixels) + F.max_pool2d(-mask, size, 1, pixels)


def feature_map(landmarks: torch.Tensor, resolution: int, indices=FEATURE_LANDMARKS) -> torch.Tensor:
    """(N, 1, R, R) in [0, 1]: the largest Gaussian blob over the landmarks `indices` (of (N, 68, 2) pixels)."""
    centres = torch.arange(resolution, dtype=torch.float32) + 0.5
    points = landmarks[:, indices].float()
    dx = (centres[None, None, :] - points[..., :1]) ** 2  # (N, L, R) along x
    dy = (centres[None, None, :] - points[..., 1:]) ** 2  # (N, L, R) along y
    sigma2 = 2 * (FEATURE_SIGMA * resolution) ** 2
    blobs = torch.exp(-(dy[..., :, None] + dx[..., None, :]) / sigma2)  # (N, L, R, R)
    return blobs.amax(1, keepdim=True)


class GroundTruth:
    """Renders the heads of latents z at labels: image and facial-feature weights at the output size; raw image,
    depth, mask at the neural rendering size (box-filtered), all as torch tensors in EG3D's ranges."""

    def __init__(self, resolution: int, neural_resolution: int):
        from training.synthetic.render import HeadRenderer  # needs EGL: import only when rendering

        self.renderer = HeadRenderer(resolution)
        self.resolution, self.neural_resolution = resolution, neural_resolution

    def __call__(self, z: torch.Tensor, labels: torch.Tensor, neural_resolution: int | None = None) -> dict:
        """The truth of latents z at labels; raw image, depth and mask at `neural_resolution` (default: the
        constructor's)."""
        factor = self.resolution // (neural_resolution or self.neural_resolution)
        out = self.renderer.render_batch(params_from_z(z.numpy()), labels.double().numpy())
        image = torch.from_numpy(out["image"]).permute(0, 3, 1, 2) * 2 - 1
        mask = torch.from_numpy(out["mask"])[:, None]
        depth = torch.from_numpy(out["depth"])[:, None]
        coverage = F.avg_pool2d(mask, factor)
        landmarks = torch.from_numpy(out["landmarks2d"])
        return {"image": image, "image_raw": F.avg_pool2d(image, factor),
                "features": feature_map(landmarks, image.shape[-1]),
                "eyes": feature_map(landmarks, image.shape[-1], EYE_LANDMARKS),
                "outline": outline_map(mask),
                "depth": F.avg_pool2d(depth * mask, factor) / coverage.clamp_min(1e-6),
                "coverage": coverage, "inside": coverage > 0.999}


def density_smoothness(G, planes: torch.Tensor, generator: torch.Generator, points: int = 1000) -> torch.Tensor:
    """EG3D's density regulariser: L1 between densities at random points and at points moved by p_dist."""
    opts = G.rendering_kwargs
    coords = torch.rand(len(planes), points, 3, generator=generator) * 2 - 1
    moved = coords + torch.randn(coords.shape, generator=generator) * opts["density_reg_p_dist"]
    both = torch.cat([coords, moved], 1).to(planes.device)
    sigma = G.renderer.run_model(planes, G.decoder, both, torch.zeros_like(both), opts)["sigma"]
    return (sigma[:, :points] - sigma[:, points:]).abs().mean()


def weighted_l1(error: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of (N, C, H, W) absolute errors under (N, 1, H, W) pixel weights (per channel; 0 without weight)."""
    return (error * weights).sum() / (weights.sum() * error.shape[1]).clamp_min(1)


def pair_change_error(images: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Absolute error of the change within each expression pair (first half against second, see sample_batch)."""
    half = len(images) // 2
    return ((images[:half] - images[half:2 * half]) - (truth[:half] - truth[half:2 * half])).abs()


def pair_weights(weights: torch.Tensor) -> torch.Tensor:
    """Pixel weights of each pair's change: where either member's weight is."""
    half = len(weights) // 2
    return torch.maximum(weights[:half], weights[half:2 * half])


def image_and_pair_l1(error: torch.Tensor, pair_error: torch.Tensor | None, weights: torch.Tensor) -> torch.Tensor:
    """weighted_l1 of the images' error and, when pairs are fitted, of their change's error, under the same blobs."""
    loss = weighted_l1(error, weights)
    return loss if pair_error is None else loss + weighted_l1(pair_error, pair_weights(weights))


def fit_losses(G, lpips, truth: dict, z, labels, settings: dict, generator: torch.Generator, step: int) -> dict:
    """The loss terms of one step; 'total' is their weighted sum. LPIPS joins after `lpips_after` steps."""
    ws = G.mapping(z, labels, update_emas=settings["train"] == "all")  # the detail modes keep w_avg, the basis' centre
    out = G.synthesis(ws, labels, cache_backbone=True)
    inside = truth["inside"]
    error = (out["image"] - truth["image"]).abs()
    raw_error = (out["image_raw"] - truth["image_raw"]).abs()
    features = truth["features"]
    terms = {"image": error.mean(),
             "features": weighted_l1(error, features),
             "raw": raw_error.mean(),
             "depth": weighted_l1((out["image_depth"] - truth["depth"]).abs(), inside),
             "opacity": (out["image_opacity"] - truth["coverage"]).abs().mean()}
    total = (terms["image"] + settings["feature_weight"] * terms["features"] + settings["raw_weight"] * terms["raw"]
             + settings["depth_weight"] * terms["depth"] + settings["opacity_weight"] * terms["opacity"])
    if settings["outline_weight"] > 0:  # squared error is mostly at the outline: see OUTLINE_PIXELS
        terms["outline"] = weighted_l1(error, truth["outline"])
        total = total + settings["outline_weight"] * terms["outline"]
    if settings["mse_weight"] > 0:  # the average where an edge is uncertain, as PSNR rewards (see mse_weight)
        terms["mse"] = error.square().mean()
        total = total + settings["mse_weight"] * terms["mse"]
    if lpips is not None and step >= settings["lpips_after"]:
        terms["lpips"] = lpips(out["image"], truth["image"]).mean()
        total = total + settings["lpips_weight"] * terms["lpips"]
    pair_error = None
    if settings["pair_weight"] > 0:  # the expression change within each pair (sample_batch), around the features
        pair_error = pair_change_error(out["image"], truth["image"])
        terms["pairs"] = weighted_l1(pair_error, pair_weights(features))
        total = total + settings["pair_weight"] * terms["pairs"]
    if settings["eye_weight"] > 0:  # the eyes again, image and pair change: blinks are small and were not learned
        terms["eyes"] = image_and_pair_l1(error, pair_error, truth["eyes"])
        total = total + settings["eye_weight"] * terms["eyes"]
    if settings["raw_eye_weight"] > 0:  # the eyes in the volume's own colours, open and closed (see raw_eye_weight)
        raw_eyes = F.adaptive_avg_pool2d(truth["eyes"], out["image_raw"].shape[-1])
        raw_pair_error = None if pair_error is None else pair_change_error(out["image_raw"], truth["image_raw"])
        terms["raw_eyes"] = image_and_pair_l1(raw_error, raw_pair_error, raw_eyes)
        total = total + settings["raw_eye_weight"] * terms["raw_eyes"]
    if settings["density_reg"] > 0:
        terms["density"] = density_smoothness(G, G._last_planes, generator)
        total = total + settings["density_reg"] * terms["density"]
    G._last_planes = None
    terms["total"] = total
    return terms


def evaluation_set(truth: GroundTruth, heads: int = EVAL_HEADS, yaws=EVAL_YAWS, seed: int = EVAL_SEED,
                   device="cpu", probe_heads: int = 4) -> dict:
    """Held-out heads (their own seed) at fixed yaws, pitch 0, with their ground truth; and, for the expression
    probes, the first `probe_heads` of them seen from the front with each probed latent low, then high."""
    base = torch.randn(heads, LATENT_SIZE, generator=torch.Generator().manual_seed(seed))
    z = base.repeat_interleave(len(yaws), 0)
    labels = cameras.make_label(torch.tensor(yaws * heads, dtype=torch.float64), 0.0).float()
    probe_base = base[:probe_heads]
    probe_z = probe_base.repeat(len(EXPRESSION_PROBES) * 2, 1).view(len(EXPRESSION_PROBES), 2, len(probe_base), -1)
    for k, (_, index) in enumerate(EXPRESSION_PROBES):
        probe_z[k, 0, :, index], probe_z[k, 1, :, index] = EXPRESSION_LOW, EXPRESSION_HIGH
    probe_z = probe_z.flatten(0, 2)
    probe_labels = cameras.make_label(torch.zeros(len(probe_z), dtype=torch.float64), 0.0).float()
    data = {"z": z, "labels": labels, **truth(z, labels),
            "probe_z": probe_z, "probe_labels": probe_labels, "probe_image": truth(probe_z, probe_labels)["image"]}
    return to_device(data, device)


def to_device(tensors: dict, device) -> dict:
    return {k: v.to(device) for k, v in tensors.items()}


def expression_response(images: torch.Tensor, truth: torch.Tensor) -> dict:
    """Per probed expression latent: mean over heads of the cosine between the generator's image change (low to
    high) and the ground truth's (1: follows the expression; 0: ignores it), and the ratio of their sizes."""
    shape = (len(EXPRESSION_PROBES), 2, -1, images[0].numel())
    change, true_change = (x.reshape(shape).diff(dim=1)[:, 0] for x in (images, truth))
    cosine = F.cosine_similarity(change, true_change, dim=-1).mean(1)
    size = (change.norm(dim=-1) / true_change.norm(dim=-1).clamp_min(1e-8)).mean(1)
    return {name: {"cosine": round(float(cosine[k]), 3), "size": round(float(size[k]), 3)}
            for k, (name, _) in enumerate(EXPRESSION_PROBES)}


@torch.no_grad()
def render(G, z: torch.Tensor, labels: torch.Tensor, batch: int = 10) -> dict:
    """{"image"} and, when G renders them, {"image_depth", "image_opacity"} for latents z at labels, in batches."""
    out = {}
    for i in range(0, len(z), batch):
        ws = G.mapping(z[i:i + batch], labels[i:i + batch])
        result = G.synthesis(ws, labels[i:i + batch], noise_mode="const")
        for key in ("image", "image_depth", "image_opacity"):
            if key in result:
                out.setdefault(key, []).append(result[key])
    return {key: torch.cat(value) for key, value in out.items()}


@contextmanager
def evaluation_ray_offsets():
    """Inside: the volume renderer's random ray offsets are drawn from EVAL_SEED; the global generator is left as
    it was. Two evaluations of the same weights give the same numbers, and the fit's own draws do not change."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(EVAL_SEED)
        yield


@torch.no_grad()
def probe_images(G, data: dict) -> torch.Tensor:
    """G's images of the expression probes; each (probe, low/high) group is rendered with the same random ray
    offsets, so that the volume renderer's sampling noise does not count as an expression change."""
    groups = len(EXPRESSION_PROBES) * 2
    z, labels = data["probe_z"].view(groups, -1, LATENT_SIZE), data["probe_labels"].view(groups, -1, 25)
    images = []
    for group in range(groups):
        with evaluation_ray_offsets():
            images.append(render(G, z[group], labels[group], batch=len(z[group]))["image"])
    return torch.cat(images).clamp(-1, 1)


def silhouette(out: dict, data: dict) -> dict:
    """Where most of the error is: the (N,) PSNR within OUTLINE_PIXELS of the true outline, and, for generators that
    render opacity, the (N,) size of the drawn head against the truth's (summed opacity over summed coverage at the
    neural rendering size; 1: the right size)."""
    measures = {"outline_psnr": psnr(out["image"], data["image"], data["outline"])}
    if "image_opacity" in out:
        measures["silhouette_size"] = out["image_opacity"].sum((1, 2, 3)) / data["coverage"].sum((1, 2, 3))
    return measures


@torch.no_grad()
def evaluate(G, data: dict) -> dict:
    """PSNR (dB) of the image at the output size, mean depth error inside the head (scene units), the outline's
    PSNR and the head's size (`silhouette`), and how the image follows the probed expression latents
    (`expression_response`); repeatable (`evaluation_ray_offsets`)."""
    G.eval()
    with evaluation_ray_offsets():
        out = render(G, data["z"], data["labels"])
    inside = data["inside"]
    depth_error = float(((out["image_depth"] - data["depth"]).abs() * inside).sum()) / max(int(inside.sum()), 1)
    return {"psnr": float(psnr(out["image"], data["image"]).mean()), "depth_error": depth_error,
            **{key: float(value.mean()) for key, value in silhouette(out, data).items()},
            "expression_response": expression_response(probe_images(G, data), data["probe_image"])}


def update_ema(G_ema, G, beta: float) -> None:
    with torch.no_grad():
        for p_ema, p in zip(G_ema.parameters(), G.parameters()):
            p_ema.lerp_(p, 1 - beta)
        for b_ema, b in zip(G_ema.buffers(), G.buffers()):
            b_ema.copy_(b)


PLANE_EXTRAS = ("plane_offset", "plane_basis", "plane_basis_weights.weight", "plane_basis_weights.bias")
DETAIL_BASIS = tuple(f"detail_basis.{k}" for k in range(3))


def is_plane_extra(key: str) -> bool:
    """True for the tensors of editkit's plane options (offset, basis, detail), which --init-from may lack."""
    return key in PLANE_EXTRAS or key.startswith("detail_")


# what each `--train` choice fits (name prefixes; None: everything)
TRAINED = {"all": None, "detail": ("detail_",), "detail-sr": ("detail_", "superresolution.")}


def trainable(G, settings: dict):
    """Freeze what `train` leaves alone: with 'detail', everything but the detail basis and its mixing MLP (the
    planes outside its boxes and the rest of the teacher stay exactly as they were); 'detail-sr' also fits the
    upsampler (the 64 px render's features are drawn into 128 px eyes there)."""
    prefixes = TRAINED[settings["train"]]
    if prefixes is not None:
        for name, parameter in G.named_parameters():
            parameter.requires_grad_(name.startswith(prefixes))
    return G


def param_groups(G, settings: dict) -> list:
    """Adam groups: the trainable network, then the free tri-plane tensors where G has them: the offset
    (`offset_lr`), the plane basis (`basis_lr`) and the detail basis (`detail_lr`); their mixing layers learn with
    the network."""
    named = {name: p for name, p in G.named_parameters() if p.requires_grad}
    groups = [{"params": [], "lr": settings["lr"]}]
    for names, rate in ((("plane_offset",), "offset_lr"), (("plane_basis",), "basis_lr"), (DETAIL_BASIS, "detail_lr")):
        tensors = [named.pop(name) for name in names if name in named]
        if tensors:
            groups.append({"params": tensors, "lr": settings[rate]})
    groups[0]["params"] = list(named.values())
    return groups


def init_weights(G, source) -> None:
    """Copy a saved teacher's weights into G. Plane offset and basis the source lacks keep G's initial values (zero
    tensors: the renders do not change). Where G's backbone is wider (e.g. config 'basis-wide' from a 'basis'
    teacher) the source's channels are copied into the first ones and G computes what the source did (`widen`)."""
    target, state = G.state_dict(), source.state_dict()
    unexpected = [key for key in state if key not in target]
    missing = [key for key in target if key not in state and not is_plane_extra(key)]
    narrower = [key for key, value in state.items()
                if key in target and not widens(key, value.shape, target[key].shape)]
    if missing or unexpected or narrower:
        raise EditkitError(f"--init-from: its network does not match this config (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}, other shapes {narrower[:3]})")
    with torch.no_grad():
        for key, value in state.items():
            widen(target[key], value, key)


def widens(key: str, small: torch.Size, large: torch.Size) -> bool:
    """True if a tensor of shape `small` fits into `large` as `widen` does it (equal, or more channels)."""
    grows = key.startswith("backbone.synthesis.") or key in PLANE_EXTRAS
    return small == large or (grows and len(small) == len(large) and all(a <= b for a, b in zip(small, large)))


def widen(target: torch.Tensor, value: torch.Tensor, key: str) -> None:
    """Write `value` into the leading block of `target` (in place) so that the wider network computes the same.
    New output channels keep their fresh initial values; new input channels of a convolution get zero weights,
    so they do not reach the old outputs (demodulation divides by the weights' norm, which zeros leave alone).
    ToRGB layers do not demodulate and scale their styles by 1 / sqrt(in_channels): their copied weights are
    scaled back. New plane-basis tensors start at zero (G's initial value), so their mixing rows change nothing."""
    if target.shape == value.shape:
        target.copy_(value)
        return
    if key.endswith("torgb.weight"):
        value = value * math.sqrt(target.shape[1] / value.shape[1])
    target[tuple(slice(0, n) for n in value.shape)] = value
    if target.dim() == 4 and target.shape[1] > value.shape[1]:  # (out, in, k, k): new inputs
        target[:value.shape[0], value.shape[1]:] = 0


def run(run_dir: Path, settings: dict, minutes: float | None = None, max_steps: int | None = None,
        checkpoint_minutes: float = 10, eval_minutes: float = 20, log_every: int = 10, threads: int | None = None,
        eval_heads: int = EVAL_HEADS, init_from: Path | None = None, device: str = "cpu") -> dict:
    """Fit (or continue fitting) until `minutes` of wall time or `max_steps` in all; returns the last evaluation.

    `init_from`: a saved teacher (.safetensors) to start a new run from (e.g. the shipped one on a new machine).
    `device`: where the network trains ('cuda' on a GPU machine); the ground truth is rendered on the CPU (EGL) and
    random numbers come from CPU generators, so a run can move between devices and resume.
    """
    if threads:
        torch.set_num_threads(threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = CONFIGS[settings["config"]]
    torch.manual_seed(settings["seed"])  # initial weights; then the backbone's noise inputs
    G = trainable(build_teacher(config).train(), settings)
    if init_from is not None and not state_files(run_dir):  # a resumed run has its weights already
        init_weights(G, load_generator(init_from))
        source = resolve_checkpoint(init_from)
        record = json.dumps({"path": str(init_from), "sha256": sha256_file(source)}, indent=2) + "\n"
        atomic_write(run_dir / INIT_RECORD, lambda tmp: tmp.write_text(record))
    G.to(device)
    G_ema = copy.deepcopy(G).eval()
    opt = torch.optim.Adam(param_groups(G, settings), betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(settings["seed"])
    step, elapsed = 0, 0.0
    state = load_latest_state(run_dir)
    if state is not None:
        G.load_state_dict(state["G"])  # load_state_dict copies into the tensors on `device`
        G_ema.load_state_dict(state["G_ema"])
        opt.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        if "torch_rng" in state:  # absent in the states of the first demo run
            torch.set_rng_state(state["torch_rng"])
        step, elapsed = state["step"], state["elapsed"]
        print(f"resuming {run_dir} at step {step} ({elapsed / 60:.1f} min fitted)")
    for group, new in zip(opt.param_groups, param_groups(G, settings)):  # a resumed run may lower them
        group["lr"] = new["lr"]

    def save():
        save_state(run_dir, step, {"G": G.state_dict(), "G_ema": G_ema.state_dict(),
                                   "optimizer": opt.state_dict(), "generator": generator.get_state(),
                                   "torch_rng": torch.get_rng_state(), "step": step, "elapsed": elapsed,
                                   "settings": json.dumps(settings)})

    def log(record):
        with (run_dir / "log.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    truth = GroundTruth(config["img_resolution"], config["neural_rendering_resolution"])
    eval_data = evaluation_set(truth, eval_heads, device=device)
    lpips = None
    if settings["lpips"] != "none":
        from editkit.perceptual import LPIPS
        lpips = LPIPS(settings["lpips"]).to(device)
    if step == 0:  # where a run starts (from scratch or from --init-from)
        log({"step": 0, "minutes": 0.0, "eval": evaluate(G_ema, eval_data)})
    log({"step": step, "rates": {key: settings[key] for key in ADJUSTABLE}})  # each invocation's
    start = last_save = last_eval = time.time()
    bar = tqdm(desc="fit teacher", unit="step", initial=step, total=max_steps, mininterval=30)
    while (minutes is None or time.time() - start < minutes * 60) and (max_steps is None or step < max_steps):
        t0 = time.time()
        z, labels = sample_batch(generator, settings)
        G.neural_rendering_resolution = rendering_resolution(settings, config, step)
        target = to_device(truth(z, labels, G.neural_rendering_resolution), device)  # rendered on the CPU
        terms = fit_losses(G, lpips, target, z.to(device), labels.to(device), settings, generator, step)
        opt.zero_grad(set_to_none=True)
        terms["total"].backward()
        opt.step()
        step += 1
        update_ema(G_ema, G, min(settings["ema_beta"], (1 + step) / (10 + step)))
        elapsed += time.time() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{terms['total'].detach().item():.3f}", refresh=False)
        if step % log_every == 0:
            log({"step": step, "minutes": round(elapsed / 60, 2), "sec_per_step": round(time.time() - t0, 3),
                 "resolution": G.neural_rendering_resolution, **{k: round(v.item(), 5) for k, v in terms.items()}})
        if time.time() - last_eval >= eval_minutes * 60:
            log({"step": step, "minutes": round(elapsed / 60, 2), "eval": evaluate(G_ema, eval_data)})
            last_eval = time.time()
        if time.time() - last_save >= checkpoint_minutes * 60:
            save()
            last_save = time.time()
    bar.close()
    save()
    result = evaluate(G_ema, eval_data)
    log({"step": step, "minutes": round(elapsed / 60, 2), "eval": result})
    print(f"step {step}, {elapsed / 60:.1f} min fitted: PSNR {result['psnr']:.2f} dB, "
          f"depth error {result['depth_error']:.4f}, expression response {result['expression_response']}")
    return result


def rate_changes(records: list, last_step: int) -> list:
    """The ADJUSTABLE settings from the step each came into force: the first invocation's, then each resume that
    changed them. An invocation that trained no step is superseded by the next one, one at the last step counts
    for nothing; keys added since a run began read as their defaults."""
    changes = []
    for record in records:
        if "rates" not in record or record["step"] >= last_step:
            continue
        if changes and changes[-1]["from_step"] == record["step"]:
            changes.pop()
        rates = {key: record["rates"].get(key, DEFAULTS[key]) for key in ADJUSTABLE}
        if not changes or any(changes[-1][key] != value for key, value in rates.items()):
            changes.append({"from_step": record["step"], **rates})
    return changes


@torch.no_grad()
def mix_caps(G, settings: dict, samples: int = 10000, batch: int = 500) -> dict | None:
    """{basis: the largest norm of its per-head mix} over `samples` latents drawn as the run's steps draw them
    (`sample_batch`, seeded by the run's seed), for TriPlaneGenerator.mix_caps; None for a teacher without bases.
    Measured uncapped: G's own caps are cleared first."""
    bases = [name for name in TriPlaneGenerator.MIXED_BASES if getattr(G, name) is not None]
    if not bases:
        return None
    G.mix_caps, caps = None, dict.fromkeys(bases, 0.0)
    generator = torch.Generator().manual_seed(settings["seed"])
    drawn_as = {**DEFAULTS, **settings, "batch": batch}
    for _ in range(0, samples, batch):
        z, labels = sample_batch(generator, drawn_as)
        ws = G.mapping(z, labels.float())
        for name in bases:
            caps[name] = max(caps[name], float(G.mix(name, ws).norm(dim=1).max()))
    return caps


def export(run_dir: Path, out: Path, force: bool = False, half: bool = False) -> Path:
    """Save the run's EMA generator as an editkit checkpoint (safetensors + JSON with provenance; `half`: float16
    tensors, as `save_model`), its per-head mixes capped where the fit's latents took them (`mix_caps`)."""
    state = load_latest_state(run_dir)
    if state is None:
        raise SystemExit(f"{run_dir}: no training state to export")
    settings = json.loads(state["settings"])
    G = build_teacher(CONFIGS[settings["config"]])
    G.load_state_dict(state["G_ema"])
    G.mix_caps = mix_caps(G, settings)
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in records if "eval" in r]
    provenance = {"recipe": "training.fit_teacher", "settings": settings, "steps": state["step"],
                  "fit_minutes": round(state["elapsed"] / 60, 1),
                  "rates": rate_changes(records, state["step"]),
                  "data": "demo world (training/synthetic), rendered on the fly; latents z ~ N(0, I), "
                          f"seed {settings['seed']}; evaluation heads from seed {EVAL_SEED}",
                  "metrics": evals[-1] if evals else {}}
    if (run_dir / INIT_RECORD).is_file():
        provenance["init_from"] = json.loads((run_dir / INIT_RECORD).read_text())
    return save_model(out, {"G": G}, provenance=provenance, overwrite=force, half=half)


def settings_for(run_dir: Path, overrides: dict) -> dict:
    """The run's settings: saved ones for an existing run (only the ADJUSTABLE ones may change, and changed ones are
    saved so that the next plain resume keeps them; keys added since it started take their defaults), else
    defaults + overrides."""
    path = run_dir / "settings.json"
    if path.exists():
        settings = {**DEFAULTS, **json.loads(path.read_text())}
        changed = {k: v for k, v in overrides.items()
                   if k not in ADJUSTABLE and v is not None and v != settings.get(k)}
        if changed:
            raise SystemExit(f"{run_dir} was started with other settings ({changed} differ); use a new --run")
        rates = {k: overrides[k] for k in ADJUSTABLE if overrides.get(k) is not None}
        if all(settings[k] == v for k, v in rates.items()):
            return settings
        settings.update(rates)
    else:
        settings = {**DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
        if settings["config"] not in CONFIGS:
            raise SystemExit(f"unknown --config {settings['config']!r}; known: {', '.join(CONFIGS)}")
        for key, known in (("train", tuple(TRAINED)), ("emphasise", ("all", "upper-face"))):
            if settings[key] not in known:
                raise SystemExit(f"unknown --{key} {settings[key]!r}; known: {', '.join(known)}")
        if settings["train"] != "all" and not CONFIGS[settings["config"]].get("detail_basis"):
            raise SystemExit(f"--train {settings['train']} needs a config with a detail basis, "
                             f"not {settings['config']!r}")
        size = CONFIGS[settings["config"]]["img_resolution"]
        if settings["low_res_steps"] and (settings["low_res"] <= 0 or size % settings["low_res"]):
            raise SystemExit(f"--low-res {settings['low_res']} must divide the output size ({size} px)")
    text = json.dumps(settings, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text), force=True)  # a kill mid-write leaves the old file
    return settings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.fit_teacher", description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="run folder (state, log); reused to continue")
    parser.add_argument("--minutes", type=float, default=100, help="wall-time budget of this invocation")
    parser.add_argument("--max-steps", type=int, default=None, help="stop at this step count (over all invocations)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--checkpoint-minutes", type=float, default=10)
    parser.add_argument("--eval-minutes", type=float, default=20)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the ground truth is rendered on the CPU)")
    parser.add_argument("--init-from", type=Path, default=None, help="start a new run from a saved teacher")
    parser.add_argument("--export", type=Path, default=None, metavar="OUT.safetensors",
                        help="instead of fitting, save the run's EMA generator here")
    parser.add_argument("--force", action="store_true", help="let --export overwrite")
    parser.add_argument("--half", action="store_true", help="--export float16 weights (half the file)")
    for key, value in DEFAULTS.items():
        when = "new runs, or changed for this and later resumes" if key in ADJUSTABLE else "new runs"
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None,
                            help=f"({when}; default {value})")
    args = parser.parse_args(argv)
    try:
        if args.export:
            print(f"wrote {export(args.run, args.export, args.force, args.half)}")
            return 0
        settings = settings_for(args.run, {k: getattr(args, k) for k in DEFAULTS})
        run(args.run, settings, args.minutes, args.max_steps, args.checkpoint_minutes, args.eval_minutes,
            threads=args.threads, init_from=args.init_from, device=args.device)
    except EditkitError as e:  # unreadable states, bad weights, an existing export
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
