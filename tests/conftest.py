"""Shared fixtures: a tiny EG3D teacher (G, G_ema, D) and the same networks as an official-layout pickle."""

import copy

import numpy as np
import pytest
import torch
from official_pickle import write_official_pickle

TINY_RENDERING = dict(
    image_resolution=128, disparity_space_sampling=False, clamp_mode="softplus",
    superresolution_module="training.superresolution.SuperresolutionHybrid2X", c_gen_conditioning_zero=False,
    gpc_reg_prob=0.5, c_scale=1.0, superresolution_noise_mode="none", density_reg=0.25, density_reg_p_dist=0.004,
    reg_type="l1", decoder_lr_mul=1.0, sr_antialias=True, depth_resolution=6, depth_resolution_importance=6,
    ray_start=2.25, ray_end=3.3, box_warp=1, avg_camera_radius=2.7, avg_camera_pivot=[0, 0, 0.2])
# Official keyword arguments (as EG3D's train.py passes them), shrunk: 128 px output, 16 channels.
TINY_G_KWARGS = dict(
    z_dim=16, w_dim=512, c_dim=25, img_resolution=128, img_channels=3, sr_num_fp16_res=0,
    mapping_kwargs=dict(num_layers=2), rendering_kwargs=TINY_RENDERING,
    sr_kwargs=dict(channel_base=1024, channel_max=16, fused_modconv_default="inference_only"),
    channel_base=1024, channel_max=16, fused_modconv_default="inference_only", num_fp16_res=0, conv_clamp=None)
TINY_D_KWARGS = dict(
    c_dim=25, img_resolution=128, img_channels=3, channel_base=1024, channel_max=16, num_fp16_res=0,
    conv_clamp=None, disc_c_noise=0.0, block_kwargs=dict(freeze_layers=0), mapping_kwargs={},
    epilogue_kwargs=dict(mbstd_group_size=4))
NEURAL_RENDERING_RESOLUTION = 16  # differs from the class default (64), as in FFHQ models (128)
# A numpy scalar too: official files may hold them (pickled via numpy's `scalar` and `dtype` globals).
TRAINING_SET_KWARGS = dict(class_name="training.dataset.ImageFolderDataset", path="ffhq.zip", resolution=128,
                           random_seed=np.int64(7))


def _perturbed(module, seed):
    """Give every parameter and buffer distinct random values, so a copying mistake cannot go unseen."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point() and not name.endswith("resample_filter"):
                tensor.add_(0.05 * torch.randn(tensor.shape, generator=gen))
    return module


@pytest.fixture(scope="session")
def tiny_eg3d():
    """{"G", "G_ema", "D"}: tiny port networks as EG3D's training loop builds them (plus dataset_label_std)."""
    from editkit.models.eg3d import DualDiscriminator, TriPlaneGenerator

    torch.manual_seed(0)
    G = TriPlaneGenerator(**copy.deepcopy(TINY_G_KWARGS))
    if "dataset_label_std" not in G.state_dict():
        G.register_buffer("dataset_label_std", torch.zeros(25))
    G.neural_rendering_resolution = NEURAL_RENDERING_RESOLUTION
    G_ema = _perturbed(copy.deepcopy(G), 2).eval()
    D = DualDiscriminator(**copy.deepcopy(TINY_D_KWARGS))
    return {"G": _perturbed(G, 1).eval(), "G_ema": G_ema, "D": _perturbed(D, 3).eval()}


@pytest.fixture(scope="session")
def official_pkl(tiny_eg3d, tmp_path_factory):
    """(path, sentinel): the tiny networks as an official EG3D snapshot whose module_src would create sentinel."""
    folder = tmp_path_factory.mktemp("official")
    sentinel = folder / "module_src_ran"
    kwargs = {"G": TINY_G_KWARGS, "G_ema": TINY_G_KWARGS, "D": TINY_D_KWARGS}
    path = write_official_pickle(folder / "tiny-eg3d.pkl", tiny_eg3d, kwargs, TRAINING_SET_KWARGS,
                                 module_src=f"import os\nos.system('touch {sentinel}')\n")
    return path, sentinel


def _render(G, seed=0):
    """G's outputs for a fixed latent and frontal camera, with torch's generator seeded before the call."""
    from editkit.cameras import frontal_label

    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)
    with torch.no_grad():
        return G(z, frontal_label())


@pytest.fixture(scope="session")
def render():
    """The function render(G, seed=0) -> G's output dict, reproducible for a seed."""
    return _render


@pytest.fixture(scope="session")
def reference_render(tiny_eg3d):
    """What the source G_ema renders for seed 0: any loaded copy must match it exactly."""
    return _render(tiny_eg3d["G_ema"])
