"""EG3D's upsamplers: the raw feature image -> the final RGB image, through two StyleGAN2 synthesis blocks.

Official names, arguments and state-dict keys. As upstream, the blocks hard-code their widths and `w_dim=512`
(`channel_base`, `channel_max`, `num_fp16_res` and `conv_clamp` are accepted and ignored), the last w drives
every layer, and `sr_num_fp16_res > 0` turns on `conv_clamp=256` (the port still computes in float32).
Unlike upstream, the input feature image is never modified in place (docs/teacher_port.md).
"""

import torch
import torch.nn.functional as F

from editkit.models.eg3d.layers import EG3DError, SynthesisBlock, SynthesisBlockNoUp, record_init_kwargs, setup_filter


class _Superresolution(torch.nn.Module):
    """Resize the features to `input_resolution` if needed, then block0 and block1 (subclasses set the shape)."""

    img_resolution = input_resolution = 0
    block0_class = SynthesisBlock
    widths = (128, 64)  # output channels of block0 and block1
    has_filter_buffer = True  # the official 8XDC registers no `resample_filter`
    resize_smaller_only = False  # 4X resizes only inputs smaller than 128

    def __init__(self, channels, img_resolution, sr_num_fp16_res, sr_antialias, num_fp16_res=4, conv_clamp=None,
                 channel_base=None, channel_max=None, **block_kwargs):
        super().__init__()
        if img_resolution != self.img_resolution:
            raise EG3DError(f"{type(self).__name__} makes {self.img_resolution} px images, not {img_resolution}")
        use_fp16 = sr_num_fp16_res > 0
        self.sr_antialias = sr_antialias
        block_res = self.input_resolution * (1 if self.block0_class is SynthesisBlockNoUp else 2)
        common = dict(w_dim=512, img_channels=3, use_fp16=use_fp16, conv_clamp=256 if use_fp16 else None)
        self.block0 = self.block0_class(channels, self.widths[0], resolution=block_res, is_last=False, **common,
                                        **block_kwargs)
        self.block1 = SynthesisBlock(self.widths[0], self.widths[1], resolution=img_resolution, is_last=True,
                                     **common, **block_kwargs)
        if self.has_filter_buffer:
            self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))

    def forward(self, rgb, x, ws, **block_kwargs):
        """The final image (N, 3, img_resolution, img_resolution) from the raw RGB, the features and ws."""
        ws = ws[:, -1:, :].repeat(1, 3, 1)
        size = x.shape[-1]
        if size < self.input_resolution or (size != self.input_resolution and not self.resize_smaller_only):
            resize = dict(size=(self.input_resolution, self.input_resolution), mode="bilinear",
                          align_corners=False, antialias=self.sr_antialias)
            x, rgb = F.interpolate(x, **resize), F.interpolate(rgb, **resize)
        x, rgb = self.block0(x, rgb, ws, **block_kwargs)
        x, rgb = self.block1(x, rgb, ws, **block_kwargs)
        return rgb


@record_init_kwargs
class SuperresolutionHybrid2X(_Superresolution):
    """64 -> 128 px: a same-size block at 64, then an upsampling block to 128."""

    img_resolution, input_resolution, block0_class = 128, 64, SynthesisBlockNoUp


@record_init_kwargs
class SuperresolutionHybrid4X(_Superresolution):
    """128 -> 256 px: a same-size block at 128, then an upsampling block to 256."""

    img_resolution, input_resolution, block0_class = 256, 128, SynthesisBlockNoUp
    resize_smaller_only = True


@record_init_kwargs
class SuperresolutionHybrid8X(_Superresolution):
    """128 -> 512 px: upsampling blocks to 256 (128 channels) and 512 (64 channels)."""

    img_resolution, input_resolution = 512, 128


@record_init_kwargs
class SuperresolutionHybrid8XDC(_Superresolution):
    """128 -> 512 px, double width: upsampling blocks to 256 (256 channels) and 512 (128 channels); FFHQ 512."""

    img_resolution, input_resolution, widths = 512, 128, (256, 128)
    has_filter_buffer = False


# Dotted names as EG3D configs spell them (rendering_kwargs['superresolution_module']).
SUPERRESOLUTION_CLASSES = {f"training.superresolution.{cls.__name__}": cls for cls in (
    SuperresolutionHybrid2X, SuperresolutionHybrid4X, SuperresolutionHybrid8X, SuperresolutionHybrid8XDC)}
