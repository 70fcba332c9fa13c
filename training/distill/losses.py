"""Losses of the distillation trainer: reconstruction (L1 + LPIPS), non-saturating GAN loss, R1.

The discriminator is EG3D's DualDiscriminator, which reads a pair {'image', 'image_raw'} (the teacher's final
image and its low-resolution volume render). A convolutional student has no raw render, so every image the
discriminator sees (student, teacher render or real photo) is paired with a downsampled copy of itself, exactly
as EG3D's own training loop pairs its real images: nothing in the pair tells the sources apart.
"""

import torch
import torch.nn.functional as F

from editkit.errors import EditkitError
from editkit.models.eg3d import filtered_resizing


def discriminator_inputs(image: torch.Tensor, raw_resolution: int, resample_filter: torch.Tensor) -> dict:
    """{'image': image, 'image_raw': image downsampled (antialiased) to raw_resolution} for the DualDiscriminator."""
    return {"image": image, "image_raw": filtered_resizing(image, raw_resolution, resample_filter)}


class ReconstructionLoss(torch.nn.Module):
    """l1_weight * mean |x - y| + lpips_weight * LPIPS(x, y), LPIPS on images resized to at most `lpips_resolution`.

    Returns (loss, {'l1': ..., 'lpips': ...}) with the parts detached for logging.
    """

    def __init__(self, l1_weight=1.0, lpips_weight=1.0, lpips_net="vgg", lpips_resolution=256):
        super().__init__()
        self.l1_weight = l1_weight
        self.lpips_weight = lpips_weight
        self.lpips_resolution = lpips_resolution
        self.lpips = None
        if lpips_weight > 0:
            from editkit.perceptual import LPIPS

            try:
                self.lpips = LPIPS(lpips_net)
            except EditkitError as e:
                raise type(e)(f"{e}; or train without the perceptual loss: --lpips-weight 0") from None

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        l1 = (x - y).abs().mean()
        parts = {"l1": l1.detach()}
        loss = self.l1_weight * l1
        if self.lpips is not None:
            if x.shape[-1] > self.lpips_resolution:
                size = (self.lpips_resolution, self.lpips_resolution)
                x = F.interpolate(x, size=size, mode="area")
                y = F.interpolate(y, size=size, mode="area")
            lpips = self.lpips(x, y).mean()
            parts["lpips"] = lpips.detach()
            loss = loss + self.lpips_weight * lpips
        return loss, parts


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: mean softplus(-D(fake))."""
    return F.softplus(-fake_logits).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator loss: mean softplus(D(fake)) + mean softplus(-D(real))."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of |d D(real) / d real|^2 (R1; `real_images` must require grad)."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real_images, create_graph=True)
    return grad.square().sum(dim=[1, 2, 3]).mean()


def change_loss(fake: torch.Tensor, target: torch.Tensor, c: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean L1 between the student's and the teacher's image change within each pair (batch item i and i + n/2,
    see `data.edit_pairs`), each pair's L1 times its weight if given (`data.balancing_weights`); pairs whose
    cameras differ (stage 2 gave one a real image's camera) are left out, and a batch without a usable pair gives 0
    (so stage 2's logged mean, with real-ratio 0.5, is about half the term)."""
    half = len(fake) // 2
    same = (c[:half] == c[half:2 * half]).all(1)
    change = fake[:half] - fake[half:2 * half]
    true_change = target[:half] - target[half:2 * half]
    per_pair = (change - true_change).abs().flatten(1).mean(1)
    if weights is not None:
        per_pair = per_pair * weights.to(per_pair)
    return per_pair[same].mean() if same.any() else fake.sum() * 0
