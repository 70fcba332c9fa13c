"""EG3D's generator: a StyleGAN2 backbone makes three 32-channel feature planes, a small MLP decodes features
sampled from them into colour and density, a volume renderer makes a raw feature image, and an upsampler turns
it into the final image.

Official constructor arguments, methods and state-dict keys (`TriPlaneGenerator(**G_kwargs)` of an EG3D config
loads official weights with `load_state_dict(strict=True)`), and, for the same weights, inputs and
`torch.manual_seed`, the same outputs. See docs/teacher_port.md for the two deliberate differences.
"""

import torch
import torch.nn.functional as F

from editkit.models.eg3d.layers import (EG3DError, FullyConnectedLayer, Generator, Softplus, check_shape,
                                        record_init_kwargs)
from editkit.models.eg3d.renderer import ImportanceRenderer, RaySampler
from editkit.models.eg3d.superresolution import SUPERRESOLUTION_CLASSES

PLANE_CHANNELS = 32


class OSGDecoder(torch.nn.Module):
    """Tri-plane features (mean over the planes) -> density sigma and `decoder_output_dim` colour features."""

    def __init__(self, n_features, options):
        super().__init__()
        self.hidden_dim = 64
        lr_mul = options["decoder_lr_mul"]
        self.net = torch.nn.Sequential(
            FullyConnectedLayer(n_features, self.hidden_dim, lr_multiplier=lr_mul),
            Softplus(),
            FullyConnectedLayer(self.hidden_dim, 1 + options["decoder_output_dim"], lr_multiplier=lr_mul))

    def forward(self, sampled_features, ray_directions):
        """{'rgb': (N, M, out), 'sigma': (N, M, 1)} for features (N, n_planes, M, C); directions are unused."""
        # the renderer's features are a transposed view of (N, n_planes, C, M): average in that layout
        x = sampled_features.transpose(2, 3).mean(1).transpose(1, 2)
        n, m, c = x.shape
        x = self.net(x.reshape(n * m, c)).view(n, m, -1)
        rgb = torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001  # MipNeRF's widened sigmoid
        return {"rgb": rgb, "sigma": x[..., 0:1]}


@record_init_kwargs
class TriPlaneGenerator(torch.nn.Module):
    """z and camera label c (25 floats) -> {'image', 'image_raw', 'image_depth'}.

    editkit adds arguments to the official ones, all off for official models:
    `triplane_resolution` (official 256, the default; the demo teacher uses 128 px planes, which fit twice as fast
    on a CPU); `plane_offset`: a learned tri-plane tensor added to every head's planes. It carries what all
    heads share (where eyes, nose and mouth are), which a CPU fit learns in minutes while the StyleGAN2 backbone,
    building every position's detail up from a 4x4 constant, needs days (docs/demo_teacher.md);
    `plane_basis` K (with `plane_basis_resolution`): K learned tri-plane tensors, mixed per head by a linear layer
    of w - w_avg (w: the mean over the ws) and upsampled to the planes' size, so that how heads differ in fine
    detail (expressions, features) is learned as directly as the offset; the mix is zero for the average head,
    so the basis carries only how heads differ, the offset what they share.
    `detail_basis` K (with `detail_windows`, one [top, left, height, width] box of texels per plane, and
    `detail_hidden`): K learned tensors the size of those boxes, at the planes' full resolution, mixed per head by a
    small MLP of w (a nonlinear mix, centred at w_avg like the basis) and added inside the boxes: per-head detail
    where the linear basis is too coarse (the demo teacher's eyes and brows, docs/demo_teacher.md).
    `neural_rendering_resolution` (a plain attribute, default 64; FFHQ models use 128) sets the size of the
    volume-rendered image; passing `neural_rendering_resolution` to `synthesis` changes it, as upstream.
    `mix_caps` (a plain attribute, saved like it; None: off): {'plane_basis': norm, 'detail_basis': norm}, the
    largest norm each per-head mix reached over the latents the model was fitted on. A latent whose mix goes further
    (a W+ latent that an inversion pushed far off the mapping's manifold) has its mix scaled back to that norm, so
    that the mixing layers never extrapolate (docs/demo_teacher.md, "Latents off the manifold").
    """

    MIXED_BASES = {"plane_basis": "plane_basis_weights", "detail_basis": "detail_weights"}  # basis: its mixing layers

    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, sr_num_fp16_res=0, mapping_kwargs=None,
                 rendering_kwargs=None, sr_kwargs=None, triplane_resolution=256, plane_offset=False,
                 plane_basis=0, plane_basis_resolution=64, detail_basis=0, detail_windows=None, detail_hidden=256,
                 **synthesis_kwargs):
        super().__init__()
        rendering_kwargs = {} if rendering_kwargs is None else rendering_kwargs
        for key in ("superresolution_module", "sr_antialias"):
            if key not in rendering_kwargs:
                raise EG3DError(f"rendering_kwargs lacks '{key}' (EG3D configs always set it)")
        sr_name = rendering_kwargs["superresolution_module"]
        if sr_name not in SUPERRESOLUTION_CLASSES:
            raise EG3DError(f"unknown superresolution_module '{sr_name}' (known: "
                            f"{', '.join(sorted(SUPERRESOLUTION_CLASSES))})")
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.renderer = ImportanceRenderer()
        self.ray_sampler = RaySampler()
        self.backbone = Generator(z_dim, c_dim, w_dim, img_resolution=triplane_resolution, img_channels=PLANE_CHANNELS * 3,
                                  mapping_kwargs=mapping_kwargs, **synthesis_kwargs)
        self.superresolution = SUPERRESOLUTION_CLASSES[sr_name](
            channels=PLANE_CHANNELS, img_resolution=img_resolution, sr_num_fp16_res=sr_num_fp16_res,
            sr_antialias=rendering_kwargs["sr_antialias"], **(sr_kwargs or {}))
        self.decoder = OSGDecoder(PLANE_CHANNELS, {"decoder_lr_mul": rendering_kwargs.get("decoder_lr_mul", 1),
                                                   "decoder_output_dim": PLANE_CHANNELS})
        self.plane_offset = None
        if plane_offset:
            self.plane_offset = torch.nn.Parameter(
                torch.zeros(1, 3, PLANE_CHANNELS, triplane_resolution, triplane_resolution))
        self.plane_basis = None
        if plane_basis:
            self.plane_basis = torch.nn.Parameter(
                torch.zeros(plane_basis, 3, PLANE_CHANNELS, plane_basis_resolution, plane_basis_resolution))
            self.plane_basis_weights = FullyConnectedLayer(w_dim, plane_basis)
        self.detail_basis = None
        if detail_basis:
            if detail_windows is None or len(detail_windows) != 3 or any(
                    len(box) != 4 or box[0] < 0 or box[1] < 0 or box[0] + box[2] > triplane_resolution
                    or box[1] + box[3] > triplane_resolution for box in detail_windows):
                raise EG3DError(f"detail_windows must be 3 [top, left, height, width] boxes inside the "
                                f"{triplane_resolution} px planes, got {detail_windows}")
            self.detail_windows = [list(box) for box in detail_windows]
            self.detail_basis = torch.nn.ParameterList(
                torch.nn.Parameter(torch.zeros(detail_basis, PLANE_CHANNELS, height, width))
                for _, _, height, width in self.detail_windows)
            self.detail_weights = torch.nn.Sequential(
                FullyConnectedLayer(w_dim, detail_hidden, activation="lrelu"),
                FullyConnectedLayer(detail_hidden, detail_basis))
        self.neural_rendering_resolution = 64
        self.mix_caps = None
        self.rendering_kwargs = rendering_kwargs
        self._last_planes = None

    @property
    def mix_caps(self) -> dict | None:
        return self._mix_caps

    @mix_caps.setter
    def mix_caps(self, caps):
        if caps is not None and not (isinstance(caps, dict) and all(
                key in self.MIXED_BASES and isinstance(value, (int, float)) and not isinstance(value, bool)
                and value > 0 for key, value in caps.items())):
            raise EG3DError(f"mix_caps must be None or {{basis: positive number}} for a basis among "
                            f"{tuple(self.MIXED_BASES)}, got {caps!r}")
        self._mix_caps = None if caps is None else {key: float(value) for key, value in caps.items()}

    @property
    def num_ws(self):
        return self.backbone.mapping.num_ws

    @property
    def w_avg(self):
        return self.backbone.mapping.w_avg

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        """ws (N, num_ws, w_dim) for latents z (N, z_dim) and conditioning camera labels c (N, 25)."""
        if self.rendering_kwargs["c_gen_conditioning_zero"]:
            c = torch.zeros_like(c)
        return self.backbone.mapping(z, c * self.rendering_kwargs.get("c_scale", 0), truncation_psi=truncation_psi,
                                     truncation_cutoff=truncation_cutoff, update_emas=update_emas)

    def planes(self, ws, update_emas=False, **synthesis_kwargs):
        """The tri-planes (N, 3, 32, R, R) for ws (R = triplane_resolution, 256 in official models)."""
        planes = self.backbone.synthesis(ws, update_emas=update_emas, **synthesis_kwargs)
        n, size = len(planes), planes.shape[-2:]
        planes = planes.view(n, 3, PLANE_CHANNELS, *size)
        if self.plane_offset is not None:
            planes = planes + self.plane_offset
        if self.plane_basis is not None:
            mix = self.mix("plane_basis", ws)
            detail = (mix @ self.plane_basis.flatten(1)).view(n * 3, PLANE_CHANNELS, *self.plane_basis.shape[-2:])
            if detail.shape[-2:] != size:
                detail = F.interpolate(detail, size=size, mode="bilinear", align_corners=False)
            planes = planes + detail.view_as(planes)
        if self.detail_basis is not None:
            mix = self.mix("detail_basis", ws)
            planes = planes + torch.stack([
                F.pad((mix @ basis.flatten(1)).view(n, *basis.shape[1:]),
                      (left, size[1] - left - width, top, size[0] - top - height))
                for basis, (top, left, height, width) in zip(self.detail_basis, self.detail_windows)], 1)
        return planes

    def mix(self, basis: str, ws) -> torch.Tensor:
        """(N, K) per-head weights of `basis` ('plane_basis' or 'detail_basis') for ws: its mixing layers' output
        for the mean w minus theirs for w_avg, the norm capped at `mix_caps[basis]` where set."""
        weights = getattr(self, self.MIXED_BASES[basis])
        mix = weights(ws.mean(1)) - weights(self.w_avg[None])
        cap = (self.mix_caps or {}).get(basis)
        if cap is not None:
            mix = mix * (cap / mix.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
        return mix

    def synthesis(self, ws, c, neural_rendering_resolution=None, update_emas=False, cache_backbone=False,
                  use_cached_backbone=False, **synthesis_kwargs):
        """Render ws from cameras c (N, 25): {'image', 'image_raw' (RGB of the features), 'image_depth',
        'image_opacity' (accumulated opacity of each ray; editkit's addition, upstream computes and drops it)}."""
        check_shape(c, [ws.shape[0], 25], "c (camera label)")
        if neural_rendering_resolution is None:
            neural_rendering_resolution = self.neural_rendering_resolution
        else:
            self.neural_rendering_resolution = neural_rendering_resolution
        ray_origins, ray_directions = self.ray_sampler(c[:, :16].view(-1, 4, 4), c[:, 16:25].view(-1, 3, 3),
                                                       neural_rendering_resolution)
        if use_cached_backbone and self._last_planes is not None:
            planes = self._last_planes
        else:
            planes = self.planes(ws, update_emas=update_emas, **synthesis_kwargs)
        if cache_backbone:
            self._last_planes = planes
        features, depth, opacity = self.renderer(planes, self.decoder, ray_origins, ray_directions,
                                                 self.rendering_kwargs)
        n, res = len(ws), neural_rendering_resolution
        feature_image = features.permute(0, 2, 1).reshape(n, features.shape[-1], res, res).contiguous()
        depth_image = depth.permute(0, 2, 1).reshape(n, 1, res, res)
        opacity_image = opacity.permute(0, 2, 1).reshape(n, 1, res, res)
        rgb_image = feature_image[:, :3]
        sr_kwargs = {k: v for k, v in synthesis_kwargs.items() if k != "noise_mode"}
        image = self.superresolution(rgb_image, feature_image, ws,
                                     noise_mode=self.rendering_kwargs["superresolution_noise_mode"], **sr_kwargs)
        return {"image": image, "image_raw": rgb_image, "image_depth": depth_image, "image_opacity": opacity_image}

    def sample(self, coordinates, directions, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False,
               **synthesis_kwargs):
        """{'rgb': (N, M, 32), 'sigma': (N, M, 1)} at points (N, M, 3), for latents z and labels c."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.sample_mixed(coordinates, directions, ws, update_emas=update_emas, **synthesis_kwargs)

    def sample_mixed(self, coordinates, directions, ws, truncation_psi=1, truncation_cutoff=None, update_emas=False,
                     **synthesis_kwargs):
        """Like `sample`, for ws (N, num_ws, w_dim); density is raw sigma (before softplus(sigma - 1))."""
        planes = self.planes(ws, update_emas=update_emas, **synthesis_kwargs)
        return self.renderer.run_model(planes, self.decoder, coordinates, directions, self.rendering_kwargs)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, neural_rendering_resolution=None,
                update_emas=False, cache_backbone=False, use_cached_backbone=False, **synthesis_kwargs):
        """mapping(z, c) then synthesis(ws, c)."""
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, c, update_emas=update_emas, neural_rendering_resolution=neural_rendering_resolution,
                              cache_backbone=cache_backbone, use_cached_backbone=use_cached_backbone,
                              **synthesis_kwargs)
