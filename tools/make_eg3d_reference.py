"""Write tests/data/eg3d_reference_*.npz: what NVlabs' official EG3D code computes for tiny configurations.

    git -C /work/.mirror/NVlabs+eg3d/repo archive HEAD eg3d | tar -x -C /tmp/eg3d_src
    .venv/bin/python tools/make_eg3d_reference.py --eg3d-src /tmp/eg3d_src/eg3d

The official classes are imported from --eg3d-src (nothing of them is copied here; besides torch and numpy they
need scipy, requests and pillow, and on a CPU they fall back to their pure-PyTorch ops). Every case builds an
official network under `torch.manual_seed(init_seed)`, perturbs its small tensors (biases, noise strengths,
w_avg, small weights) so that none keeps a trivial value, and calls it with fixed inputs under
`torch.manual_seed(seed)`. The upsamplers hard-code widths of 64-256 channels and w_dim=512, so storing whole
state dicts would take megabytes: a file keeps the small tensors and, for the large ones, checksums of the
seeded initial values, which the port reproduces (tests/test_eg3d_port.py checks that first).

Keys of a file: class, init_kwargs and options (JSON), init_seed, seed, state_keys (JSON [[key, shape], ...] in
official order), init_sums (float64 [sum, sum of |x|] per key, as constructed), state:<key> (tensors of at most
SMALL elements, after perturbation), the inputs, the outputs, and rng_after (torch.rand(4) drawn after the call:
the port must leave torch's generator in the same state). Large outputs are stored subsampled (`<name>_sub`,
every `stride`-th pixel) beside float64 [sum, sum of |x|] of the whole tensor (`<name>_sums`).
"""

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

from editkit.cameras import make_label
from editkit.models.eg3d.configs import ffhq512_discriminator_kwargs, ffhq512_kwargs, rendering_kwargs

SMALL = 1024
OUT = Path(__file__).resolve().parent.parent / "tests" / "data"


def tiny_generator(sr_module, img_resolution, sr_num_fp16_res=0, **render):
    """Official train.py keyword arguments, shrunk: 16-d z, backbone channels <= 16, 6 + 6 samples per ray."""
    return dict(
        z_dim=16, c_dim=25, w_dim=512, img_resolution=img_resolution, img_channels=3, sr_num_fp16_res=sr_num_fp16_res,
        mapping_kwargs=dict(num_layers=2),
        rendering_kwargs=rendering_kwargs(img_resolution, f"training.superresolution.{sr_module}",
                                          depth_resolution=6, depth_resolution_importance=6, **render),
        sr_kwargs=dict(channel_base=1024, channel_max=16, fused_modconv_default="inference_only"),
        channel_base=1024, channel_max=16, fused_modconv_default="inference_only", num_fp16_res=0, conv_clamp=None)


def tiny_discriminator(**overrides):
    kwargs = dict(c_dim=25, img_resolution=32, img_channels=3, channel_base=1024, channel_max=16, num_fp16_res=4,
                  conv_clamp=256, disc_c_noise=0.1, block_kwargs=dict(freeze_layers=2), mapping_kwargs={},
                  epilogue_kwargs=dict(mbstd_group_size=2))
    kwargs.update(overrides)
    return kwargs


# name -> (class, init kwargs, call options). Generator options: batch, neural rendering resolution, truncation,
# noise mode, train mode (train = not fused modulated convs), ws gradient, density queries (sample_mixed).
G, D = "training.triplane.TriPlaneGenerator", "training.dual_discriminator.DualDiscriminator"
CASES = {
    # 2X at its native 64 px input: the official upsampler adds into image_raw in place (the port does not).
    "g2x_random": (G, tiny_generator("SuperresolutionHybrid2X", 128),
                   dict(batch=2, nr=64, psi=0.7, cutoff=None, noise_mode="random", train=False)),
    "g2x_train": (G, tiny_generator("SuperresolutionHybrid2X", 128, disparity_space_sampling=True, density_noise=0.2,
                                    superresolution_noise_mode="random"),
                  dict(batch=2, nr=32, psi=1, cutoff=None, noise_mode="random", train=True, grad=True)),
    "g4x_const": (G, tiny_generator("SuperresolutionHybrid4X", 256, ray_start="auto", ray_end="auto"),
                  dict(batch=2, nr=32, psi=0.5, cutoff=4, noise_mode="const", train=False, sample=True)),
    # sigma_bias: shifts the decoder's density output so that some rays stay empty (white, depth clamped)
    "g8x_white": (G, tiny_generator("SuperresolutionHybrid8X", 512, white_back=True),
                  dict(batch=1, nr=16, psi=1, cutoff=None, noise_mode="random", train=False, sigma_bias=-14)),
    "g8xdc_fp16": (G, tiny_generator("SuperresolutionHybrid8XDC", 512, sr_num_fp16_res=4, density_noise=0.3),
                   dict(batch=1, nr=32, psi=1, cutoff=None, noise_mode="const", train=False)),
    "d_resnet": (D, tiny_discriminator(), dict(batch=4, raw=16, filters=True)),
    "d_skip": (D, tiny_discriminator(architecture="skip", mapping_kwargs=dict(num_layers=2), disc_c_noise=0,
                                     block_kwargs={}), dict(batch=2, raw=8)),
}


def official_classes(src):
    """{dotted name: class} and the official filter functions, imported from an EG3D checkout."""
    sys.path.insert(0, str(src))
    from torch_utils.ops import upfirdn2d
    from training.dual_discriminator import DualDiscriminator, filtered_resizing
    from training.triplane import TriPlaneGenerator
    return {G: TriPlaneGenerator, D: DualDiscriminator}, filtered_resizing, upfirdn2d


def checksums(tensor):
    t = tensor.detach().double()
    return np.array([t.sum().item(), t.abs().sum().item()])


def keep(out, name, tensor, max_size=32, dims=2):
    """Store `tensor` whole if its last `dims` sizes are at most `max_size`, else every stride-th entry along
    them plus checksums of the whole."""
    tensor = tensor.detach()
    stride = max(1, tensor.shape[-1] // max_size)
    if stride == 1:
        out[name] = tensor.numpy()
        return
    index = (Ellipsis,) + (slice(None, None, stride),) * dims
    out[f"{name}_sub"] = tensor[index].numpy()
    out[f"{name}_stride"] = np.array(stride)
    out[f"{name}_sums"] = checksums(tensor)


def build(cls, kwargs, init_seed, out, sigma_bias=0):
    """The official network, seeded and with perturbed small tensors; records keys, init checksums, small tensors."""
    torch.manual_seed(init_seed)
    net = cls(**copy.deepcopy(kwargs))
    state = net.state_dict()
    out["state_keys"] = json.dumps([[k, list(v.shape)] for k, v in state.items()])
    out["init_sums"] = np.stack([checksums(v) for v in state.values()])
    gen = torch.Generator().manual_seed(init_seed + 1)
    with torch.no_grad():
        for key, tensor in state.items():
            if tensor.numel() <= SMALL:
                if tensor.is_floating_point() and not key.endswith("resample_filter"):
                    tensor.add_(0.2 * torch.randn(tensor.shape, generator=gen))
                if key == "decoder.net.2.bias":
                    tensor[0] += sigma_bias
                out[f"state:{key}"] = tensor.numpy().copy()
    return net


def generator_case(net, opts, out):
    n = opts["batch"]
    z = torch.randn(n, net.z_dim, generator=torch.Generator().manual_seed(3))
    c = make_label(torch.linspace(-25, 25, n), torch.linspace(8, -8, n))
    out.update(z=z.numpy(), c=c.numpy())
    net.train(opts["train"])
    captured = {}
    net.superresolution.register_forward_pre_hook(lambda module, args: captured.update(features=args[1].clone()))
    torch.manual_seed(int(out["seed"]))
    with torch.set_grad_enabled(bool(opts.get("grad"))):
        ws = net.mapping(z, c, truncation_psi=opts["psi"], truncation_cutoff=opts["cutoff"])
        if opts.get("grad"):
            ws = ws.detach().requires_grad_()
        result = net.synthesis(ws, c, neural_rendering_resolution=opts["nr"], noise_mode=opts["noise_mode"])
    out["rng_after"] = torch.rand(4).numpy()
    keep(out, "ws", ws, max_size=64, dims=1)
    for name in ("image", "image_raw", "image_depth"):
        keep(out, name, result[name])
    keep(out, "features", captured["features"], max_size=8)
    keep(out, "features_rgb", captured["features"][:, :3])
    if opts.get("grad"):
        loss = result["image"].square().mean() + result["image_raw"].mean() + result["image_depth"].mean()
        loss.backward()
        keep(out, "ws_grad", ws.grad, max_size=64, dims=1)
    if opts.get("sample"):
        points = torch.rand(n, 64, 3, generator=torch.Generator().manual_seed(4)) - 0.5
        directions = torch.nn.functional.normalize(torch.randn(n, 64, 3, generator=torch.Generator().manual_seed(5)),
                                                   dim=-1)
        with torch.no_grad():
            density = net.sample_mixed(points, directions, ws.detach(), noise_mode="const")
        out.update(sample_points=points.numpy(), sample_directions=directions.numpy(),
                   sample_sigma=density["sigma"].numpy(), sample_rgb=density["rgb"].numpy())


def discriminator_case(net, opts, out, filtered_resizing, upfirdn2d):
    n, res = opts["batch"], net.img_resolution
    gen = torch.Generator().manual_seed(6)
    image = torch.randn(n, 3, res, res, generator=gen)
    image_raw = torch.randn(n, 3, opts["raw"], opts["raw"], generator=gen)
    c = make_label(torch.linspace(-30, 30, n), torch.linspace(-10, 10, n))
    out.update(image=image.numpy(), image_raw=image_raw.numpy(), c=c.numpy())
    torch.manual_seed(int(out["seed"]))
    with torch.no_grad():
        out["logits"] = net({"image": image, "image_raw": image_raw}, c.clone()).numpy()
    out["rng_after"] = torch.rand(4).numpy()
    if opts.get("filters"):
        small = image_raw[:1, :, :12, :12]
        out["filter_input"] = small.numpy()
        for mode in ("antialiased", "classic", "none", 0.3):
            for size in (6, 20):
                out[f"resized_{mode}_{size}"] = filtered_resizing(small, size, net.resample_filter, mode).numpy()
        for sigma in (0.2, 1.0, 2.5):  # the discriminator blur of EG3D's training loss
            radius = np.floor(sigma * 3)
            taps = torch.arange(-radius, radius + 1).div(sigma).square().neg().exp2()
            out[f"blurred_{sigma}"] = (upfirdn2d.filter2d(small, taps / taps.sum()) if radius > 0 else small).numpy()


def ffhq512_keys(classes):
    """Key lists, shapes, parameter counts and init checksums of the full-size FFHQ 512 networks."""
    out = {}
    for prefix, name, kwargs in (("G", G, ffhq512_kwargs()), ("D", D, ffhq512_discriminator_kwargs())):
        torch.manual_seed(0)
        net = classes[name](**kwargs)
        out[f"{prefix}_init_kwargs"] = json.dumps(kwargs)
        out[f"{prefix}_state_keys"] = json.dumps([[k, list(v.shape)] for k, v in net.state_dict().items()])
        out[f"{prefix}_init_sums"] = np.stack([checksums(v) for v in net.state_dict().values()])
        out[f"{prefix}_num_params"] = np.array(sum(p.numel() for p in net.parameters()))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eg3d-src", required=True, type=Path, help="the official eg3d/ folder (with training/)")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (default: tests/data)")
    args = parser.parse_args()
    if not (args.eg3d_src / "training" / "triplane.py").is_file():
        parser.error(f"{args.eg3d_src} is not EG3D's eg3d/ folder (no training/triplane.py)")
    torch.set_num_threads(1)  # deterministic reductions
    classes, filtered_resizing, upfirdn2d = official_classes(args.eg3d_src)
    args.out.mkdir(parents=True, exist_ok=True)
    for index, (case, (class_name, kwargs, opts)) in enumerate(CASES.items()):
        out = dict(init_seed=np.array(100 + index), seed=np.array(200 + index))
        out.update({"class": class_name, "init_kwargs": json.dumps(kwargs), "options": json.dumps(opts)})
        net = build(classes[class_name], kwargs, int(out["init_seed"]), out, opts.get("sigma_bias", 0))
        if class_name == G:
            generator_case(net, opts, out)
        else:
            discriminator_case(net, opts, out, filtered_resizing, upfirdn2d)
        path = args.out / f"eg3d_reference_{case}.npz"
        np.savez_compressed(path, **out)
        print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")
    path = args.out / "eg3d_reference_ffhq512_keys.npz"
    np.savez_compressed(path, **ffhq512_keys(classes))
    print(f"{path}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
