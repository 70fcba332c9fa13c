"""The student: a pose-conditioned convolutional generator distilled from an EG3D teacher.

It keeps the teacher's interface (`mapping`, `synthesis(ws, c)`, `z_dim`, `w_dim`, `num_ws`, `w_avg`, ...) and owns
a copy of the teacher's mapping network, so a latent found or edited with one renders in the other. The image
comes from a StyleGAN2 synthesis network at the output resolution (no tri-planes, no volume rendering, no
upsampler); the camera enters as per-layer offsets to the styles. docs/student.md gives the reasons and timings.
"""

import torch

from editkit.models.eg3d.layers import (EG3DError, FullyConnectedLayer, MappingNetwork, SynthesisNetwork, check_shape,
                                        record_init_kwargs)

LABEL_DIM = 25  # EG3D camera label: flattened 4x4 cam2world + normalised 3x3 intrinsics
# Channels at resolution r are min(channel_base / r, channel_max); `from_teacher(width=w)` sets channel_base so that
# the output resolution gets 32 * w channels (doubling per halving of resolution, up to channel_max).
CHANNELS_AT_OUTPUT = 32
DEFAULT_WIDTH = 0.5  # 16 channels at the output resolution: >= 20x faster than the ffhq512 teacher on a CPU
MIN_CHANNEL_MAX = 128  # low-resolution layers cost little: never narrower than this, even for a narrow teacher


class PoseEncoder(torch.nn.Module):
    """Camera labels (N, 25) -> style offsets (N, num_layers, w_dim), one per synthesis layer.

    An MLP embeds the label; a linear head, zero at initialisation, gives every layer its own offset, so a new
    student starts as a plain (pose-independent) StyleGAN2 synthesis network and learns how pose moves each layer.
    """

    def __init__(self, w_dim, num_layers, features=256, depth=2):
        super().__init__()
        self.w_dim = w_dim
        self.num_layers = num_layers
        sizes = [LABEL_DIM] + [features] * depth
        self.net = torch.nn.Sequential(*[FullyConnectedLayer(a, b, activation="lrelu")
                                         for a, b in zip(sizes[:-1], sizes[1:])])
        self.head = FullyConnectedLayer(sizes[-1], num_layers * w_dim)
        with torch.no_grad():
            self.head.weight.zero_()

    def forward(self, c):
        return self.head(self.net(c.to(torch.float32))).view(-1, self.num_layers, self.w_dim)


@record_init_kwargs
class Student(torch.nn.Module):
    """z and camera label c (25 floats) -> {'image': (N, img_channels, R, R)}, in the teacher's w space.

    `num_ws` is the teacher's: `synthesis` takes the teacher's ws (N, num_ws, w_dim). Synthesis layer i uses
    ws[:, min(i, num_ws - 1)], i.e. the same w as the teacher's backbone layer at the same resolution, and the last
    w beyond it (as the teacher's upsampler does). Build one from a teacher with `Student.from_teacher`.
    """

    def __init__(self, z_dim, c_dim, w_dim, img_resolution, num_ws, img_channels=3, mapping_kwargs=None,
                 c_scale=1.0, c_gen_conditioning_zero=False, channel_base=8192, channel_max=512,
                 pose_features=256, pose_layers=2, fused_modconv_default="inference_only"):
        super().__init__()
        if channel_base < img_resolution:
            raise EG3DError(f"channel_base {channel_base} leaves no channels at {img_resolution} px "
                            f"(need channel_base >= img_resolution)")
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.num_ws = num_ws
        self.c_scale = c_scale
        self.c_gen_conditioning_zero = c_gen_conditioning_zero
        self.mapping_network = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=num_ws,
                                              **(mapping_kwargs or {}))
        # No noise inputs: noise is fixed in image space, so it would not follow the head when the camera moves.
        self.synthesis_network = SynthesisNetwork(
            w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels, channel_base=channel_base,
            channel_max=channel_max, num_fp16_res=0, conv_clamp=None, use_noise=False,
            fused_modconv_default=fused_modconv_default)
        layers = self.synthesis_network.num_ws
        self.pose_encoder = PoseEncoder(w_dim, layers, features=pose_features, depth=pose_layers)
        self.ws_index = [min(i, num_ws - 1) for i in range(layers)]

    @property
    def w_avg(self):
        return self.mapping_network.w_avg

    def channels(self) -> dict:
        """{resolution: feature channels} of the synthesis network."""
        net = self.synthesis_network
        return {res: getattr(net, f"b{res}").conv1.out_channels for res in net.block_resolutions}

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        """ws (N, num_ws, w_dim) for latents z (N, z_dim) and conditioning labels c (N, 25), as the teacher."""
        if self.c_gen_conditioning_zero:
            c = torch.zeros_like(c)
        return self.mapping_network(z, c * self.c_scale, truncation_psi=truncation_psi,
                                    truncation_cutoff=truncation_cutoff, update_emas=update_emas)

    def synthesis(self, ws, c, **synthesis_kwargs):
        """Render ws (N, num_ws, w_dim) from cameras c (N, 25): {'image': (N, img_channels, R, R)}.

        `synthesis_kwargs` go to the StyleGAN2 layers (`noise_mode` is accepted and has no effect).
        """
        check_shape(ws, [None, self.num_ws, self.w_dim], "ws")
        check_shape(c, [ws.shape[0], LABEL_DIM], "c (camera label)")
        styles = ws[:, self.ws_index] + self.pose_encoder(c)
        return {"image": self.synthesis_network(styles, **synthesis_kwargs)}

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False, **synthesis_kwargs):
        """mapping(z, c) then synthesis(ws, c)."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, c, **synthesis_kwargs)

    @staticmethod
    def config_from_teacher(G, width=DEFAULT_WIDTH, img_resolution=None, **kwargs) -> dict:
        """Constructor arguments of a student for teacher `G` (a TriPlaneGenerator): its z/c/w dims, num_ws,
        mapping configuration and camera-conditioning options.

        `width` sets the channels of the high-resolution layers: 32 * width at the output resolution, doubling
        per halving of resolution up to `channel_max`, by default the teacher backbone's widest (512 for FFHQ
        models), at least MIN_CHANNEL_MAX. So the cheap low-resolution layers are as wide as the teacher's and
        can start from its weights. `kwargs` override any argument (e.g. `channel_max`).
        """
        if not CHANNELS_AT_OUTPUT * width >= 1:
            raise EG3DError(f"width must be at least 1/{CHANNELS_AT_OUTPUT} (one output channel), got {width}")
        img_resolution = img_resolution or G.img_resolution
        config = dict(
            z_dim=G.z_dim, c_dim=G.c_dim, w_dim=G.w_dim, num_ws=G.num_ws, img_channels=G.img_channels,
            img_resolution=img_resolution,
            mapping_kwargs=dict(G.init_kwargs.get("mapping_kwargs") or {}),
            c_scale=G.rendering_kwargs.get("c_scale", 0),
            c_gen_conditioning_zero=G.rendering_kwargs["c_gen_conditioning_zero"],
            channel_base=int(round(CHANNELS_AT_OUTPUT * width * img_resolution)),
            channel_max=max(G.backbone.synthesis.b4.conv1.out_channels, MIN_CHANNEL_MAX))
        return {**config, **kwargs}

    @classmethod
    def from_teacher(cls, G, width=DEFAULT_WIDTH, img_resolution=None, copy_weights=True, **kwargs):
        """A student for teacher `G` (see `config_from_teacher`), on the teacher's device. With `copy_weights`, it
        starts with a copy of the teacher's mapping network (the same w space) and of the teacher's backbone
        layers wherever their shapes fit; otherwise all its weights are random (only the configuration comes
        from the teacher)."""
        student = cls(**cls.config_from_teacher(G, width, img_resolution, **kwargs)).to(G.w_avg.device)
        if copy_weights:
            student.mapping_network.load_state_dict(G.backbone.mapping.state_dict())
            student.copy_backbone_layers(G.backbone.synthesis)
        return student

    def copy_backbone_layers(self, teacher_synthesis) -> list:
        """Copy the teacher backbone's constant and conv layers whose shapes fit (not ToRGB: the teacher's
        outputs are tri-plane features). Returns the names of the layers copied."""
        copied = []
        with torch.no_grad():
            for res in self.synthesis_network.block_resolutions:
                own, theirs = getattr(self.synthesis_network, f"b{res}"), getattr(teacher_synthesis, f"b{res}", None)
                if theirs is None:
                    break
                if hasattr(own, "const") and own.const.shape == theirs.const.shape:
                    own.const.copy_(theirs.const)
                    copied.append(f"b{res}.const")
                for name in ("conv0", "conv1"):
                    layer, source = getattr(own, name, None), getattr(theirs, name, None)
                    if layer is None or source is None or layer.weight.shape != source.weight.shape:
                        continue
                    wanted = layer.state_dict()
                    layer.load_state_dict({k: v for k, v in source.state_dict().items() if k in wanted})
                    copied.append(f"b{res}.{name}")
        return copied
