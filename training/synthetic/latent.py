"""The demo teacher's latent space: every z decodes to one head, so each sample's attributes are known exactly.

EG3D's mapping network first rescales z to unit second moment; ``params_from_z`` applies the same rescaling, then
reads one number per head parameter (LATENT_SIZE in all), each roughly N(0, 1):

* identity: the 40 shape coefficients themselves (clipped to +-2.5, as ``sample_params``);
* expressions, appearance and light: u = Phi(z) (uniform on [0, 1]) mapped to the frequencies and ranges of
  ``sample_params`` (about half the heads smile, a third open the mouth, a few blink...), with ramps instead of
  jumps so that nearby latents give nearby heads.

So ``G.mapping(z, c)`` of the demo teacher and ``HeadRenderer.render(params_from_z(z)[i], label)`` describe the
same head, and a direction fitted to these parameters is fitted to ground truth.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import betaincinv, ndtr

from training.synthetic.head_model import EXPRESSION_UNITS, HeadParams

# (unit, share of heads that show it, largest value) for expression units that are mostly off
SPARSE_UNITS = (("jaw_open", 0.35, 0.45), ("brow_raise", 0.2, 0.8), ("brow_down", 0.1, 0.6),
                ("mouth_funnel", 0.05, 0.6), ("mouth_pucker", 0.05, 0.6), ("frown", 0.08, 0.6),
                ("eye_wide", 0.1, 0.6), ("eye_squint", 0.15, 0.6), ("cheek_puff", 0.03, 0.5))
BLINK_SHARE = 0.05  # share of heads that blink (fully closed eyes in 2%)
IDENTITY = HeadParams.identity.stop
# latent layout: identity, smile + its left/right asymmetries, blink, the sparse units, gaze x/y, 7 appearance, 5 light
SMILE = IDENTITY
BLINK = SMILE + 3
SPARSE = BLINK + 1
GAZE = SPARSE + len(SPARSE_UNITS)
APPEARANCE = GAZE + 2
LIGHTING = APPEARANCE + len(HeadParams.APPEARANCE)
LATENT_SIZE = LIGHTING + len(HeadParams.LIGHTING)
# attribute -> (latent, share of heads that show it) of the expressions that are mostly off: blink and the sparse units
RARE_EXPRESSIONS = {"eyes_closed": (BLINK, BLINK_SHARE),
                    **{name: (SPARSE + k, share) for k, (name, share, _) in enumerate(SPARSE_UNITS)}}


def normalize_latent(z: np.ndarray) -> np.ndarray:
    """z / rms(z) per row, as EG3D's mapping network does (normalize_2nd_moment, eps 1e-8)."""
    z = np.asarray(z, np.float64)
    return z / np.sqrt(np.mean(z ** 2, axis=-1, keepdims=True) + 1e-8)


def _ramp(u: np.ndarray, share: float) -> np.ndarray:
    """0 for the lowest (1 - share) of u, then rising linearly to 1 at u = 1."""
    return np.clip((u - (1 - share)) / share, 0, 1)


def params_from_z(z) -> np.ndarray:
    """(N, HeadParams.SIZE) float32 head parameters for latents z (N, LATENT_SIZE) (or one latent (LATENT_SIZE,))."""
    z = np.asarray(z, np.float64)
    single = z.ndim == 1
    z = normalize_latent(z[None] if single else z)
    if z.shape[-1] != LATENT_SIZE:
        raise ValueError(f"demo-world latents have {LATENT_SIZE} numbers, got shape {z.shape}")
    u = ndtr(z)
    n = len(z)
    p = np.zeros((n, HeadParams.SIZE))
    p[:, HeadParams.identity] = np.clip(z[:, :IDENTITY], -2.5, 2.5)

    e = np.zeros((n, len(EXPRESSION_UNITS)))
    units = {name: i for i, name in enumerate(EXPRESSION_UNITS)}
    smile = _ramp(u[:, SMILE], 0.5)
    side_weight = np.minimum(smile * 5, 1)
    e[:, units["smile_l"]] = np.clip(smile + 0.08 * z[:, SMILE + 1] * side_weight, 0, 1)
    e[:, units["smile_r"]] = np.clip(smile + 0.08 * z[:, SMILE + 2] * side_weight, 0, 1)
    e[:, units["blink_l"]] = e[:, units["blink_r"]] = np.clip((u[:, BLINK] - (1 - BLINK_SHARE)) / 0.03, 0, 1)
    for k, (name, share, high) in enumerate(SPARSE_UNITS):
        e[:, units[name]] = high * _ramp(u[:, SPARSE + k], share)
    gaze_x, gaze_y = 0.25 * z[:, GAZE], 0.25 * z[:, GAZE + 1]
    e[:, units["gaze_left"]], e[:, units["gaze_right"]] = np.clip(gaze_x, 0, 1), np.clip(-gaze_x, 0, 1)
    e[:, units["gaze_up"]], e[:, units["gaze_down"]] = np.clip(gaze_y, 0, 1), np.clip(-gaze_y, 0, 1)
    p[:, HeadParams.expression] = e

    a = u[:, APPEARANCE:LIGHTING]
    tone = betaincinv(1.0, 2.2, a[:, 0])
    p[:, HeadParams.appearance] = np.stack([
        tone,                                                   # skin_tone
        a[:, 1],                                                # skin_red
        a[:, 2],                                                # lip_tint
        betaincinv(4.0, 2.0, a[:, 3]),                          # brow_density
        tone + (1 - tone) * betaincinv(1.2, 0.8, a[:, 4]),      # hair_color
        _ramp(a[:, 5], 0.85),                                   # hair_length (15% shaved)
        0.8 * tone + (1 - 0.8 * tone) * betaincinv(0.8, 0.8, a[:, 6]),  # iris_color
    ], 1)
    light = u[:, LIGHTING:]
    p[:, HeadParams.lighting] = np.stack([
        0.7 * z[:, LIGHTING],           # light_azimuth (rad)
        -0.2 + 1.1 * light[:, 1],       # light_elevation (rad)
        0.8 + 0.6 * light[:, 2],        # light_intensity
        0.12 + 0.28 * light[:, 3],      # ambient
        light[:, 4],                    # light_warmth
    ], 1)
    p = p.astype(np.float32)
    return p[0] if single else p


def emphasise_rare_expressions(z: torch.Tensor, probability: float, generator: torch.Generator,
                               names=None) -> torch.Tensor:
    """z with, in each row picked with `probability`, one of the RARE_EXPRESSIONS `names` (default all) set so that
    the world shows that expression: u = Phi(z / rms(z)) (what `params_from_z` reads) uniform over the top `share`.
    Without emphasis a rare expression hardly occurs in a sample (2% of the heads close their eyes fully)."""
    rare = [RARE_EXPRESSIONS[name] for name in (RARE_EXPRESSIONS if names is None else names)]
    n = len(z)
    picked = torch.rand(n, generator=generator) < probability
    unit = torch.randint(len(rare), (n,), generator=generator)
    latent = torch.tensor([index for index, _ in rare])[unit]
    share = torch.tensor([share for _, share in rare])[unit]
    target = torch.special.ndtri(1 - share * torch.rand(n, generator=generator).clamp_min(1e-3))
    # z_k / rms(z) = t  <=>  z_k = t * sqrt(S / (n - t^2)), S the sum of the other squares
    others = z.pow(2).sum(1) - z[torch.arange(n), latent].pow(2)
    value = target * (others / (z.shape[1] - target ** 2)).sqrt()
    z = z.clone()
    z[picked, latent[picked]] = value[picked]
    return z
