"""EG3D's dual discriminator: a StyleGAN2 ResNet discriminator over the final image concatenated with the raw
image resized to match, conditioned on the camera label. Official arguments and state-dict keys.

Also the image filters EG3D's training uses around it: `filtered_resizing` (raw images and real images to the
neural rendering size) and `blur` (the discriminator's fading blur).
"""

import math

import torch
import torch.nn.functional as F

from editkit.models.eg3d.layers import (Conv2dLayer, EG3DError, FullyConnectedLayer, MappingNetwork, downsample2d,
                                        filter2d, record_init_kwargs, setup_filter, upsample2d)


def filtered_resizing(image, size, f, filter_mode="antialiased"):
    """Resize `image` to `size` x `size`: 'antialiased', 'classic' (FIR up, bilinear, FIR down), 'none' (plain
    bilinear), or a float in (0, 1) blending plain (1 - x) and antialiased (x) resizing."""
    bilinear = dict(size=(size, size), mode="bilinear", align_corners=False)
    if filter_mode == "antialiased":
        return F.interpolate(image, antialias=True, **bilinear)
    if filter_mode == "classic":
        image = upsample2d(image, f, up=2)
        image = F.interpolate(image, size=(size * 2 + 2, size * 2 + 2), mode="bilinear", align_corners=False)
        return downsample2d(image, f, down=2, flip_filter=True, padding=-1)
    if filter_mode == "none":
        return F.interpolate(image, **bilinear)
    if isinstance(filter_mode, float) and 0 < filter_mode < 1:
        filtered = F.interpolate(image, antialias=True, **bilinear)
        aliased = F.interpolate(image, antialias=False, **bilinear)
        return (1 - filter_mode) * aliased + filter_mode * filtered
    raise EG3DError(f"filter_mode must be 'antialiased', 'classic', 'none' or a float in (0, 1), got {filter_mode!r}")


def blur(image, sigma):
    """Gaussian-like blur of EG3D's training loop (taps 2^-(x/sigma)^2 for |x| <= 3 sigma); identity if too small."""
    radius = math.floor(sigma * 3)
    if radius <= 0:
        return image
    f = torch.arange(-radius, radius + 1, device=image.device).div(sigma).square().neg().exp2()
    return filter2d(image, f / f.sum())


class DiscriminatorBlock(torch.nn.Module):
    """One resolution: (fromrgb,) conv0, conv1 with 2x downsampling, and a 1x1 skip for 'resnet'."""

    def __init__(self, in_channels, tmp_channels, out_channels, resolution, img_channels, first_layer_idx,
                 architecture="resnet", activation="lrelu", resample_filter=(1, 3, 3, 1), conv_clamp=None,
                 use_fp16=False, fp16_channels_last=False, freeze_layers=0):
        if in_channels not in (0, tmp_channels):
            raise EG3DError(f"DiscriminatorBlock in_channels must be 0 or {tmp_channels}, got {in_channels}")
        if architecture not in ("orig", "skip", "resnet"):
            raise EG3DError(f"architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16  # accepted for compatibility; the port computes in float32
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_layers = 0

        def layer(*args, **kwargs):  # Freeze-D: the first `freeze_layers` layers keep their weights as buffers
            trainable = first_layer_idx + self.num_layers >= freeze_layers
            self.num_layers += 1
            return Conv2dLayer(*args, activation=kwargs.pop("activation", activation), trainable=trainable, **kwargs)

        if in_channels == 0 or architecture == "skip":
            self.fromrgb = layer(img_channels, tmp_channels, kernel_size=1, conv_clamp=conv_clamp)
        self.conv0 = layer(tmp_channels, tmp_channels, kernel_size=3, conv_clamp=conv_clamp)
        self.conv1 = layer(tmp_channels, out_channels, kernel_size=3, down=2, resample_filter=resample_filter,
                           conv_clamp=conv_clamp)
        if architecture == "resnet":
            self.skip = layer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                              resample_filter=resample_filter, activation="linear")

    def forward(self, x, img, force_fp32=False):
        if self.in_channels == 0 or self.architecture == "skip":
            y = self.fromrgb(img)
            x = y if x is None else x + y
            img = downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
            return y + x, img
        return self.conv1(self.conv0(x)), img

    def extra_repr(self):
        return f"resolution={self.resolution}, architecture={self.architecture}"


class MinibatchStdLayer(torch.nn.Module):
    """Append the mean standard deviation over groups of `group_size` samples as `num_channels` channels."""

    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x):
        n, c, h, w = x.shape
        g = n if self.group_size is None else min(self.group_size, n)
        if n % g:
            raise EG3DError(f"batch size {n} must be a multiple of the minibatch-std group size {g}")
        f = self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1)
        return torch.cat([x, y.repeat(g, 1, h, w)], dim=1)

    def extra_repr(self):
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(torch.nn.Module):
    """The 4x4 head: minibatch std, conv, fc, out; projected onto the mapped camera label if conditioned."""

    def __init__(self, in_channels, cmap_dim, resolution, img_channels, architecture="resnet", mbstd_group_size=4,
                 mbstd_num_channels=1, activation="lrelu", conv_clamp=None):
        super().__init__()
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x, img, cmap, force_fp32=False):
        if self.architecture == "skip":
            x = x + self.fromrgb(img)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.out(self.fc(self.conv(x).flatten(1)))
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x

    def extra_repr(self):
        return f"resolution={self.resolution}, architecture={self.architecture}"


@record_init_kwargs
class DualDiscriminator(torch.nn.Module):
    """Logits (N, 1) for {'image': (N, 3, R, R), 'image_raw': (N, 3, r, r)} and camera labels c (N, c_dim)."""

    def __init__(self, c_dim, img_resolution, img_channels, architecture="resnet", channel_base=32768,
                 channel_max=512, num_fp16_res=4, conv_clamp=256, cmap_dim=None, disc_c_noise=0, block_kwargs=None,
                 mapping_kwargs=None, epilogue_kwargs=None):
        super().__init__()
        img_channels *= 2
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(math.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(self.img_resolution_log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        if cmap_dim is None:
            cmap_dim = channels[4]
        if c_dim == 0:
            cmap_dim = 0
        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(channels[res] if res < img_resolution else 0, channels[res], channels[res // 2],
                                       resolution=res, first_layer_idx=layer_idx, use_fp16=res >= fp16_resolution,
                                       **(block_kwargs or {}), **common)
            setattr(self, f"b{res}", block)
            layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **(mapping_kwargs or {}))
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, **(epilogue_kwargs or {}),
                                        **common)
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))
        self.disc_c_noise = disc_c_noise

    def forward(self, img, c, update_emas=False, **block_kwargs):
        image_raw = filtered_resizing(img["image_raw"], size=img["image"].shape[-1], f=self.resample_filter)
        x, img = None, torch.cat([img["image"], image_raw], 1)
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, **block_kwargs)
        cmap = None
        if self.c_dim > 0:
            if self.disc_c_noise > 0:  # upstream adds this in place, into the caller's c
                c = c + torch.randn_like(c) * c.std(0) * self.disc_c_noise
            cmap = self.mapping(None, c)
        return self.b4(x, img, cmap)

    def extra_repr(self):
        return f"c_dim={self.c_dim}, img_resolution={self.img_resolution}, img_channels={self.img_channels}"
