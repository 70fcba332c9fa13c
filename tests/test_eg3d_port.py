"""The EG3D port against NVlabs' official code: tests/data/eg3d_reference_*.npz hold what the official classes
computed for tiny configurations (written by tools/make_eg3d_reference.py, which documents the file layout)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from editkit.models.eg3d import (OFFICIAL_CLASSES, DualDiscriminator, EG3DError, TriPlaneGenerator, blur,
                                 filtered_resizing)
from editkit.models.eg3d.configs import ffhq512_discriminator_kwargs, ffhq512_kwargs

DATA = Path(__file__).parent / "data"
ATOL = 1e-4
CASES = sorted(p.stem.removeprefix("eg3d_reference_") for p in DATA.glob("eg3d_reference_*.npz")
               if not p.stem.endswith("_keys"))
G_CASES = [c for c in CASES if c.startswith("g")]
D_CASES = [c for c in CASES if c.startswith("d")]


def load(name):
    return dict(np.load(DATA / f"eg3d_reference_{name}.npz"))


def checksums(tensor):
    t = tensor.detach().double()
    return [t.sum().item(), t.abs().sum().item()]


def build(ref):
    """Our port of a reference network: built under the official seed, small tensors loaded from the file."""
    torch.manual_seed(int(ref["init_seed"]))
    net = OFFICIAL_CLASSES[str(ref["class"])](**json.loads(str(ref["init_kwargs"])))
    state = net.state_dict()
    assert [[k, list(v.shape)] for k, v in state.items()] == json.loads(str(ref["state_keys"]))
    np.testing.assert_allclose([checksums(v) for v in state.values()], ref["init_sums"], rtol=1e-7,
                               err_msg="seeded initial weights differ from the official ones")
    state.update({k.removeprefix("state:"): torch.from_numpy(v) for k, v in ref.items() if k.startswith("state:")})
    net.load_state_dict(state, strict=True)
    return net


def stored(ref, name, ours: torch.Tensor) -> tuple[np.ndarray, np.ndarray, bool]:
    """(reference values, the same entries of ours, whether that is all of it): stored whole or subsampled."""
    if name in ref:
        return ref[name], ours.detach().numpy(), True
    sub, stride = ref[f"{name}_sub"], int(ref[f"{name}_stride"])
    index = tuple(slice(None, None, stride) if got != kept else slice(None)
                  for got, kept in zip(ours.shape, sub.shape))
    return sub, ours.detach()[index].numpy(), False


def assert_matches(ref, name, ours, atol=ATOL):
    """`ours` equals the reference `name` within atol (where stored subsampled: the kept entries and the sums)."""
    ours = ours.detach()
    expected, got, whole = stored(ref, name, ours)
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol, err_msg=name)
    if whole:
        return
    expected = ref[f"{name}_sums"]
    np.testing.assert_allclose(checksums(ours), expected, rtol=0, atol=1e-5 * expected[1] + atol,
                               err_msg=f"{name} (sums)")


def render(net, ref, opts):
    """Call the generator as the reference script called the official one: (ws, outputs, features)."""
    net.train(opts["train"])
    net.renderer.points_per_chunk = 5000  # several chunks: must not change anything
    captured = {}
    net.superresolution.register_forward_pre_hook(lambda module, args: captured.update(features=args[1].clone()))
    z, c = torch.from_numpy(ref["z"]), torch.from_numpy(ref["c"])
    torch.manual_seed(int(ref["seed"]))
    with torch.set_grad_enabled(bool(opts.get("grad"))):
        ws = net.mapping(z, c, truncation_psi=opts["psi"], truncation_cutoff=opts["cutoff"])
        if opts.get("grad"):
            ws = ws.detach().requires_grad_()
        out = net.synthesis(ws, c, neural_rendering_resolution=opts["nr"], noise_mode=opts["noise_mode"])
    return ws, out, captured["features"]


def assert_depth_matches(ref, out, min_opacity=1e-5):
    """Depth is sum(w t) / sum(w) over a ray's samples. Where a ray's opacity sum(w) is near float32 rounding (the
    g8x_white case renders a nearly empty volume, sigma bias -14: opacities ~1e-7), that ratio is rounding noise
    and its value depends on how the CPU's kernels sum; compare depth only where it is defined."""
    if (out["image_opacity"] >= min_opacity).all():
        assert_matches(ref, "image_depth", out["image_depth"])
        return
    expected, got, _ = stored(ref, "image_depth", out["image_depth"])
    _, opacity, _ = stored(ref, "image_depth", out["image_opacity"])
    defined = opacity >= min_opacity
    np.testing.assert_allclose(got[defined], expected[defined], rtol=0, atol=ATOL, err_msg="image_depth")


@pytest.mark.parametrize("case", G_CASES)
def test_generator_matches_official(case):
    ref = load(case)
    opts = json.loads(str(ref["options"]))
    net = build(ref)
    ws, out, features = render(net, ref, opts)
    np.testing.assert_array_equal(torch.rand(4).numpy(), ref["rng_after"],
                                  err_msg="the port drew from torch's generator differently")
    assert_matches(ref, "ws", ws)
    assert_matches(ref, "image", out["image"])
    assert_depth_matches(ref, out)
    assert_matches(ref, "features", features)
    # image_raw is the RGB of the feature image. The official 2X/4X upsamplers, at their native input size, add
    # into it in place; the port does not, so there image_raw differs from the official return value.
    assert_matches(ref, "features_rgb", out["image_raw"])
    in_place = (type(net.superresolution).__name__ in ("SuperresolutionHybrid2X", "SuperresolutionHybrid4X")
                and opts["nr"] == net.superresolution.input_resolution)
    if not in_place:
        assert_matches(ref, "image_raw", out["image_raw"])
    if opts.get("grad"):
        (out["image"].square().mean() + out["image_raw"].mean() + out["image_depth"].mean()).backward()
        assert_matches(ref, "ws_grad", ws.grad, atol=1e-3 * np.abs(ref["ws_grad_sub"]).max())
    if opts.get("sample"):
        points, directions = torch.from_numpy(ref["sample_points"]), torch.from_numpy(ref["sample_directions"])
        with torch.no_grad():
            density = net.sample_mixed(points, directions, ws, noise_mode="const")
        assert_matches(ref, "sample_sigma", density["sigma"])
        assert_matches(ref, "sample_rgb", density["rgb"])


def test_backward_works_where_official_adds_in_place():
    ref = load("g2x_random")  # 2X upsampler at its native input size: official backward fails here
    net = build(ref)
    ws = net.mapping(torch.from_numpy(ref["z"]), torch.from_numpy(ref["c"])).detach().requires_grad_()
    out = net.synthesis(ws, torch.from_numpy(ref["c"]), neural_rendering_resolution=32)
    assert ((out["image_opacity"] >= 0) & (out["image_opacity"] <= 1)).all()
    (out["image"].mean() + out["image_raw"].mean() + out["image_depth"].mean()).backward()
    assert torch.isfinite(ws.grad).all() and ws.grad.abs().sum() > 0
    for prefix in ("backbone.synthesis.b4.", "backbone.synthesis.b256.", "decoder.", "superresolution.block0.",
                   "superresolution.block1."):
        noiseless = prefix.startswith("superresolution.")  # the upsampler runs with noise_mode='none'
        grads = [p.grad for name, p in net.named_parameters()
                 if name.startswith(prefix) and not (noiseless and name.endswith("noise_strength"))]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), prefix
        assert sum(g.abs().sum() for g in grads) > 0, prefix


def test_masked_depth_loss_has_finite_gradients_on_empty_rays():
    """Rays that miss everything (total opacity exactly 0) give upstream's depth, without NaN gradients."""
    ref = load("g2x_random")
    net = build(ref)
    with torch.no_grad():  # a density bias of -1e4 empties every ray
        net.decoder.net[-1].bias[0] = -1e4
    ws = net.mapping(torch.from_numpy(ref["z"]), torch.from_numpy(ref["c"])).detach().requires_grad_()
    out = net.synthesis(ws, torch.from_numpy(ref["c"]), neural_rendering_resolution=16)
    depth = out["image_depth"]
    assert torch.isfinite(depth).all() and (depth >= net.rendering_kwargs["ray_end"]).all()
    assert out["image_opacity"].shape == depth.shape and (out["image_opacity"] == 0).all()
    mask = torch.zeros_like(depth)
    mask[..., :4, :4] = 1
    (depth * mask).sum().backward()
    assert torch.isfinite(ws.grad).all()


@pytest.mark.parametrize("case", D_CASES)
def test_discriminator_matches_official(case):
    ref = load(case)
    net = build(ref).eval()
    images = {"image": torch.from_numpy(ref["image"]), "image_raw": torch.from_numpy(ref["image_raw"])}
    c = torch.from_numpy(ref["c"])
    torch.manual_seed(int(ref["seed"]))
    with torch.no_grad():
        assert_matches(ref, "logits", net(images, c))
    np.testing.assert_array_equal(torch.rand(4).numpy(), ref["rng_after"])
    np.testing.assert_array_equal(c.numpy(), ref["c"])  # upstream adds the label noise into the caller's c
    if "filter_input" in ref:
        small = torch.from_numpy(ref["filter_input"])
        for mode in ("antialiased", "classic", "none", 0.3):
            for size in (6, 20):
                assert_matches(ref, f"resized_{mode}_{size}", filtered_resizing(small, size, net.resample_filter, mode))
        for sigma in (0.2, 1.0, 2.5):
            assert_matches(ref, f"blurred_{sigma}", blur(small, sigma))


def test_ffhq512_builds_with_the_official_keys_and_weights():
    ref = load("ffhq512_keys")
    for prefix, cls, kwargs in (("G", TriPlaneGenerator, ffhq512_kwargs()),
                                ("D", DualDiscriminator, ffhq512_discriminator_kwargs())):
        assert json.loads(str(ref[f"{prefix}_init_kwargs"])) == kwargs
        torch.manual_seed(0)
        net = cls(**kwargs)
        state = net.state_dict()
        assert [[k, list(v.shape)] for k, v in state.items()] == json.loads(str(ref[f"{prefix}_state_keys"]))
        np.testing.assert_allclose([checksums(v) for v in state.values()], ref[f"{prefix}_init_sums"], rtol=1e-7)
        assert sum(p.numel() for p in net.parameters()) == int(ref[f"{prefix}_num_params"])
    # EG3D's training loop adds dataset_label_std: 177 keys, ~30.7M parameters (docs/teacher_port.md)
    net = TriPlaneGenerator(**ffhq512_kwargs())
    net.register_buffer("dataset_label_std", torch.zeros(25))
    assert len(net.state_dict()) == 177
    assert sum(p.numel() for p in net.parameters()) == 30_662_136
    assert (net.z_dim, net.c_dim, net.w_dim, net.num_ws, net.img_resolution) == (512, 25, 512, 14, 512)
    assert net.w_avg.shape == (512,) and net.neural_rendering_resolution == 64
    assert net.init_kwargs == ffhq512_kwargs()


def test_registry_names_every_official_class():
    assert set(OFFICIAL_CLASSES) == {
        "training.triplane.TriPlaneGenerator", "training.dual_discriminator.DualDiscriminator",
        *(f"training.superresolution.SuperresolutionHybrid{s}" for s in ("2X", "4X", "8X", "8XDC"))}
    sr = OFFICIAL_CLASSES["training.superresolution.SuperresolutionHybrid2X"](
        channels=32, img_resolution=128, sr_num_fp16_res=0, sr_antialias=True, channel_base=1024)
    assert sr.init_kwargs["channel_base"] == 1024 and "resample_filter" in sr.state_dict()


def tiny_kwargs(**rendering):
    ref = load("g2x_random")
    kwargs = json.loads(str(ref["init_kwargs"]))
    kwargs["rendering_kwargs"].update(rendering)
    return kwargs


@pytest.mark.parametrize("change,message", [
    (dict(superresolution_module="training.superresolution.Nope"), "unknown superresolution_module"),
    (dict(superresolution_module="training.superresolution.SuperresolutionHybrid4X"), "makes 256 px images"),
])
def test_bad_configurations_raise_one_line_errors(change, message):
    with pytest.raises(EG3DError, match=message) as info:
        TriPlaneGenerator(**tiny_kwargs(**change))
    assert "\n" not in str(info.value)


def test_bad_inputs_raise_one_line_errors():
    torch.manual_seed(0)
    net = TriPlaneGenerator(**tiny_kwargs(clamp_mode="relu")).eval()
    c = torch.zeros(1, 25)
    with pytest.raises(EG3DError, match=r"z must have shape \(N, 16\), got \(1, 512\)"):
        net.mapping(torch.zeros(1, 512), c)
    with pytest.raises(EG3DError, match="c \\(camera label\\) must have shape"):
        net.mapping(torch.zeros(1, 16), torch.zeros(1, 16))
    ws = net.mapping(torch.zeros(1, 16), c)
    with pytest.raises(EG3DError, match="ws must have shape"):
        net.synthesis(ws[:, :3], c)
    with pytest.raises(EG3DError, match="noise_mode must be"):
        net.synthesis(ws, c, noise_mode="loud")
    with pytest.raises(EG3DError, match="clamp_mode='softplus' only"):
        net.synthesis(ws, c, neural_rendering_resolution=8)
    with pytest.raises(EG3DError, match="filter_mode must be"):
        filtered_resizing(torch.zeros(1, 3, 8, 8), 4, None, "sharp")
