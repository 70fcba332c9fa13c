"""Image metrics for inversions and teacher/student agreement: MSE, PSNR, SSIM, LPIPS.

Images are (N, 3, H, W) tensors in [-1, 1] (the generators' range); MSE and PSNR are computed on [0, 1], SSIM is
the Gaussian-window SSIM of Wang et al. 2004 (11 x 11, sigma 1.5, K1 0.01, K2 0.03, on [0, 1], averaged over
channels), LPIPS is ``editkit.perceptual.LPIPS`` (offline backbone; its result names the network).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _unit(x: torch.Tensor) -> torch.Tensor:
    return (x.double().clamp(-1, 1) + 1) / 2


def _check(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"image metrics need two (N, C, H, W) batches of one shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")


def mse(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) mean squared error on [0, 1]; with a (N, 1, H, W) `mask` (0/1 or weights), over the masked pixels."""
    _check(x, y)
    error = (_unit(x) - _unit(y)) ** 2
    if mask is None:
        return error.flatten(1).mean(1)
    mask = mask.to(error).expand_as(error)
    return (error * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)


def psnr(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) PSNR in dB on [0, 1] (inf for identical images); with a `mask`, over the masked pixels (`mse`)."""
    return -10 * torch.log10(mse(x, y, mask))


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) structural similarity (1 for identical images); windows lie inside the image (no padding)."""
    _check(x, y)
    x, y = _unit(x), _unit(y)
    channels, g = x.shape[1], _gaussian().to(x)
    rows, cols = g.view(1, 1, -1, 1).expand(channels, 1, -1, 1), g.view(1, 1, 1, -1).expand(channels, 1, 1, -1)

    def blur(t):  # the 11 x 11 Gaussian window as two 1D passes
        return F.conv2d(F.conv2d(t, rows, groups=channels), cols, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x ** 2, blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)


class ImageMetrics:
    """All four metrics with one LPIPS network built once: ``ImageMetrics()(x, y)`` -> {name: (N,) tensor}.

    LPIPS defaults to AlexNet, the lpips authors' advice for a metric (VGG is the usual choice as a loss); it is
    also ~15x cheaper on a CPU."""

    def __init__(self, lpips_net: str = "alex"):
        from editkit.perceptual import LPIPS

        self.lpips = LPIPS(lpips_net)
        self.name = f"LPIPS-{lpips_net} (editkit.perceptual, backbone {self.lpips.weights.name})"

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        with torch.no_grad():
            return {"mse": mse(x, y), "psnr": psnr(x, y), "ssim": ssim(x, y),
                    "lpips": self.lpips(x.float(), y.float()).double()}
