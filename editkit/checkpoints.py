"""Load and save networks safely.

Three sources, one result (eval-mode `torch.nn.Module`s):

- our format: `name.safetensors` (tensors, keys prefixed by network name: `G.`, `D.`) beside `name.json`
  (`{"format": "editkit", "version": 1, "networks": {name: {"class", "init_kwargs", "attributes"}},
  "provenance": {...}}`); only classes on an allow-list can be built from a config;
- official EG3D `.pkl` files, read by a restricted unpickler that runs no code from the file;
- names in the model registry `checkpoints/registry.json`, checked against their sha256.

docs/checkpoints.md describes the formats and the safe-loading design.
"""

import datetime
import hashlib
import io
import json
import os
import pickle
import shlex
import subprocess
import sys
import types
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from editkit.errors import CheckpointError, OutputExistsError, UnsafePickleError
from editkit.io import atomic_write, output_group

FORMAT = "editkit"
VERSION = 1
# Plain attributes that change behaviour but are not constructor arguments or tensors.
SAVED_ATTRIBUTES = ("neural_rendering_resolution", "rendering_kwargs", "mix_caps")
# Buffers that EG3D's training loop registers after construction, so a freshly built network lacks them.
LATE_BUFFERS = ("dataset_label_std",)
REPO_ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------------------------
# Networks that may be built from a config: nothing else is ever imported or constructed by name.


def official_classes() -> dict:
    """Official EG3D dotted class names ('training.triplane.TriPlaneGenerator', ...) -> our port classes."""
    from editkit.models import eg3d

    return dict(eg3d.OFFICIAL_CLASSES)


def class_path(cls) -> str:
    """The dotted name a config uses for one of our classes."""
    return f"{cls.__module__}.{cls.__qualname__}"


def buildable_classes() -> dict:
    """The allow-list: dotted name -> class, for every network a config may name (the port and the student)."""
    from editkit.models.student import Student

    return {class_path(cls): cls for cls in [*official_classes().values(), Student]}


def build_module(class_name: str, init_kwargs: dict, attributes: dict | None = None, source="config"):
    """Construct an allow-listed network from its config entry (weights are loaded separately)."""
    allowed = buildable_classes()
    if class_name not in allowed:
        raise CheckpointError(f"{source}: class '{class_name}' is not one editkit can build "
                              f"(allowed: {', '.join(sorted(allowed))})")
    try:
        module = allowed[class_name](**init_kwargs)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{source}: init_kwargs do not fit {class_name} ({e})") from None
    for name, value in (attributes or {}).items():
        if name not in SAVED_ATTRIBUTES:
            raise CheckpointError(f"{source}: unknown attribute '{name}' for {class_name} "
                                  f"(known: {', '.join(SAVED_ATTRIBUTES)})")
        try:
            setattr(module, name, value)
        except ValueError as e:  # a value the network's setter refuses (EG3DError is one)
            raise CheckpointError(f"{source}: {e}") from None
    return module


def load_state(module, state: dict, source: str) -> None:
    """Load `state` into `module` strictly, with a one-line error naming what does not match."""
    for name in LATE_BUFFERS:
        if name in state and not hasattr(module, name):
            module.register_buffer(name, torch.zeros_like(state[name]))
    expected = module.state_dict()
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{label}: {', '.join(keys[:3])}{more}")
    if problems:
        raise CheckpointError(f"{source}: weights do not fit {type(module).__name__}: {'; '.join(problems)}; "
                              "the file was written for another configuration (convert or save it again)")
    module.load_state_dict(state, strict=True)


def to_plain(value):
    """JSON-friendly copy of a config value: numpy scalars -> Python numbers, tuples -> lists, dict keys kept."""
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------------------------------------------------------
# Our format: safetensors + JSON.


def config_path(path) -> Path:
    """The JSON config that sits beside a `.safetensors` file."""
    return Path(path).with_suffix(".json")


def git_commit() -> str | None:
    """The commit of the editkit checkout, or None when installed outside a git work tree."""
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def make_provenance(**fields) -> dict:
    """Provenance for a saved checkpoint: command, git commit, data, metrics, creation time, plus `fields`."""
    base = {"command": shlex.join(sys.argv), "git_commit": git_commit(), "data": None, "metrics": {},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    return {**base, **fields}


def network_config(module, name: str) -> dict:
    """The config entry that rebuilds `module`: allow-listed class, init kwargs, saved attributes."""
    cls_name = class_path(type(module))
    if cls_name not in buildable_classes():
        raise CheckpointError(f"cannot save network '{name}': {cls_name} is not on the allow-list of buildable "
                              "classes (editkit.checkpoints.buildable_classes)")
    init_kwargs = getattr(module, "init_kwargs", None)
    if not isinstance(init_kwargs, dict):
        raise CheckpointError(f"cannot save network '{name}': {cls_name} has no init_kwargs dict "
                              "(the keyword arguments it was built with)")
    attributes = {k: to_plain(getattr(module, k)) for k in SAVED_ATTRIBUTES if hasattr(module, k)}
    return {"class": cls_name, "init_kwargs": to_plain(init_kwargs), "attributes": attributes}


def save_model(path, modules: dict, provenance: dict | None = None, overwrite: bool = False,
               half: bool = False) -> Path:
    """Write `modules` ({name: network}) to `path` (.safetensors) and its JSON config, each atomically.

    `half`: store floating-point tensors as float16, half the file; loading casts them back to the networks'
    float32 (the demo teacher's renders then differ from its float32 weights' by 70 dB PSNR, measured)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: weights must be written to a .safetensors file")
    for out in (path, config_path(path)):
        if out.exists() and not overwrite:
            raise OutputExistsError(f"{out} already exists; use --force (overwrite=True) to replace it")
    if not modules:
        raise CheckpointError(f"{path}: nothing to save (no networks given)")
    tensors, networks, storages = {}, {}, set()
    for name, module in modules.items():
        if not name.isidentifier():
            raise CheckpointError(f"{path}: network name '{name}' must be a Python identifier (G, G_ema, D)")
        networks[name] = network_config(module, name)
        for key, tensor in module.state_dict().items():
            tensor = tensor.detach().cpu().contiguous()
            if tensor.untyped_storage().data_ptr() in storages:  # safetensors refuses shared memory
                tensor = tensor.clone()
            storages.add(tensor.untyped_storage().data_ptr())
            if half and tensor.is_floating_point():
                tensor = to_half(tensor, f"{path}: {name}.{key}")
            tensors[f"{name}.{key}"] = tensor
    provenance = {**(provenance or {}), **({"stored_as": "float16"} if half else {})}
    config = {"format": FORMAT, "version": VERSION, "networks": networks, "provenance": make_provenance(**provenance)}
    try:
        text = json.dumps(config, indent=2) + "\n"
    except TypeError as e:
        raise CheckpointError(f"{path}: config is not JSON-serialisable ({e})") from None
    # serialised in memory and written as any new file (safetensors' save_file creates its files 0600 whatever the
    # umask: a model saved for a shared folder or a demo server would be unreadable)
    weights = save(tensors, metadata={"format": "pt"})
    with output_group():  # weights and config appear together
        atomic_write(path, lambda tmp: tmp.write_bytes(weights), force=True)
        atomic_write(config_path(path), lambda tmp: tmp.write_text(text), force=True)
    return path


def to_half(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """`tensor` as float16; a value beyond float16's range (65504) is an error, not a silent inf."""
    small = tensor.half()
    if (torch.isfinite(tensor) & ~torch.isfinite(small)).any():
        raise CheckpointError(f"{name}: values beyond float16's range ({float(tensor.abs().max()):.3g}); "
                              "save it without half precision")
    return small


def read_config(path) -> dict:
    """Read and check the JSON config beside a `.safetensors` file."""
    path, cfg_path = Path(path), config_path(path)
    if not cfg_path.is_file():
        raise CheckpointError(f"{path}: its config {cfg_path.name} is missing; keep the .json written with the "
                              "weights beside them (or convert/save the model again)")
    try:
        config = json.loads(cfg_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path}: not an editkit checkpoint config (expected \"format\": \"{FORMAT}\")")
    if config.get("version") != VERSION:
        raise CheckpointError(f"{cfg_path}: config version {config.get('version')} is not supported "
                              f"(this editkit reads version {VERSION}); upgrade editkit")
    networks = config.get("networks")
    if not isinstance(networks, dict) or not networks or not all(
            isinstance(e, dict) and isinstance(e.get("class"), str) and isinstance(e.get("init_kwargs"), dict)
            for e in networks.values()):
        raise CheckpointError(f"{cfg_path}: \"networks\" must map names to {{\"class\", \"init_kwargs\"}} entries")
    return config


def read_tensors(path) -> dict:
    """All tensors of a `.safetensors` file, on the CPU."""
    try:
        return load_file(str(path), device="cpu")
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a valid safetensors file ({e}); the file is truncated or corrupt, "
                              "download or convert it again") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None


def load_model(path, names=None, device="cpu") -> dict:
    """Build the networks of an editkit checkpoint (all, or those in `names`) and load their weights strictly.

    Returns {name: module} in eval mode on `device`.
    """
    path = Path(path)
    config = read_config(path)
    tensors = read_tensors(path)
    networks = {}
    for name, entry in config["networks"].items():
        prefix = f"{name}."
        state = {k[len(prefix):]: tensors.pop(k) for k in [k for k in tensors if k.startswith(prefix)]}
        if names is None or name in names:
            module = build_module(entry["class"], entry["init_kwargs"], entry.get("attributes"), source=path)
            load_state(module, state, source=f"{path} [{name}]")
            networks[name] = module.to(device).eval()
    if tensors:
        raise CheckpointError(f"{path}: tensors that belong to no network in the config: "
                              f"{', '.join(sorted(tensors)[:3])}; the .json does not match the weights")
    return networks


# ---------------------------------------------------------------------------------------------------------------
# Official EG3D pickles, read without running anything from the file.


class PickledObject:
    """Inert stand-in for an object pickled by reference (OSGDecoder, renderer, torch.nn.Softplus, ...)."""

    module = class_name = ""
    args = ()
    state = None

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


@dataclass
class PersistentObject:
    """Inert record of an EG3D persistent object: its class name and `__dict__` (its pickled source is never run)."""

    class_name: str
    state: dict
    source_sha256: str


def _persistent_object(meta):
    """Stand-in for `torch_utils.persistence._reconstruct_persistent_obj`: keep the data, skip `module_src`."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise CheckpointError("malformed persistent object (expected meta type 'class' with a state dict)")
    src = str(meta.get("module_src", "")).encode()
    return PersistentObject(str(meta.get("class_name")), meta["state"], hashlib.sha256(src).hexdigest())


def _load_storage(data):
    """Stand-in for `torch.storage._load_from_bytes`: the nested blob goes through torch's weights-only loader."""
    if not isinstance(data, bytes):
        raise CheckpointError("malformed tensor storage (expected bytes)")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafePickleError(f"refusing a tensor storage blob ({str(e).splitlines()[0]})") from None


def _rebuild_tensor(storage, offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """`torch._utils._rebuild_tensor_v2` for storages only, without backward hooks."""
    if not isinstance(storage, torch.storage.TypedStorage) or backward_hooks:
        raise CheckpointError("malformed tensor (expected a storage and no backward hooks)")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, OrderedDict(), metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    """`torch._utils._rebuild_parameter` for tensors only, without backward hooks."""
    if not isinstance(data, torch.Tensor) or backward_hooks:
        raise CheckpointError("malformed parameter (expected a tensor and no backward hooks)")
    return torch.nn.Parameter(data, requires_grad=requires_grad)


def _numpy_scalar():
    core = getattr(np, "_core", None) or np.core
    return core.multiarray.scalar


SAFE_GLOBALS = {
    "torch_utils.persistence._reconstruct_persistent_obj": _persistent_object,
    "torch.storage._load_from_bytes": _load_storage,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "collections.OrderedDict": OrderedDict,
    "dnnlib.util.EasyDict": dict,
    "numpy.dtype": np.dtype,
    "numpy.core.multiarray.scalar": _numpy_scalar(),
    "numpy._core.multiarray.scalar": _numpy_scalar(),
}


def _pickled_by_reference(module: str, name: str) -> bool:
    """Classes that official files pickle by reference and that we replace by inert `PickledObject`s."""
    return (module.startswith("torch.nn.modules.") or (module, name) == ("training.triplane", "OSGDecoder")
            or module == "training.volumetric_rendering" or module.startswith("training.volumetric_rendering."))


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals; everything else raises `UnsafePickleError`."""

    def find_class(self, module, name):
        dotted = f"{module}.{name}"
        if dotted in SAFE_GLOBALS:
            found = SAFE_GLOBALS[dotted]
            # A fresh wrapper per use: a BUILD opcode aimed at it cannot alter our (or torch's) functions.
            return (lambda *args: found(*args)) if isinstance(found, types.FunctionType) else found
        if _pickled_by_reference(module, name):
            return type(name, (PickledObject,), {"module": module, "class_name": name})
        raise UnsafePickleError(f"refusing global '{dotted}': it is not part of an EG3D network pickle; "
                                "nothing was run (do not open this file with plain pickle)")

    def persistent_load(self, pid):
        raise UnsafePickleError(f"refusing persistent id {pid!r}: EG3D pickles have none")


def safe_unpickle(path):
    """Unpickle an official EG3D file into plain data and inert records, running no code from it."""
    path = Path(path)
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # TypedStorage deprecation, once per tensor
            return SafeUnpickler(f).load()
    except CheckpointError as e:
        raise type(e)(f"{path}: {e}") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    except Exception as e:  # truncated or foreign data: pickle raises many types
        reason = (str(e).splitlines() or [""])[0]
        raise CheckpointError(f"{path}: not a readable EG3D pickle ({type(e).__name__}: {reason})") from None


def _flatten(obj, prefix: str, out: dict, source) -> dict:
    """Collect parameters and persistent buffers of a pickled module tree under official state-dict keys."""
    state = obj.state if isinstance(obj, (PersistentObject, PickledObject)) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: '{prefix.rstrip('.')}' is not a pickled network module")
    non_persistent = state.get("_non_persistent_buffers_set") or set()
    for name, tensor in (state.get("_parameters") or {}).items():
        if tensor is not None:
            out[prefix + name] = tensor.detach()
    for name, tensor in (state.get("_buffers") or {}).items():
        if tensor is not None and name not in non_persistent:
            out[prefix + name] = tensor
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _flatten(child, f"{prefix}{name}.", out, source)
    return out


def _port_class(class_name: str, source):
    """Our port of a pickled network class (pickles store the bare name, e.g. 'TriPlaneGenerator')."""
    matches = [cls for dotted, cls in official_classes().items() if dotted.rsplit(".", 1)[-1] == class_name]
    if len(matches) != 1:
        raise CheckpointError(f"{source}: network class '{class_name}' is not one editkit can load "
                              f"(known: {', '.join(sorted(official_classes()))})")
    return matches[0]


def network_from_record(record, source, key: str):
    """Build our port of one pickled network (G, G_ema or D) and load its tensors strictly."""
    if not isinstance(record, PersistentObject):
        raise CheckpointError(f"{source}: '{key}' is not an EG3D network")
    cls = _port_class(record.class_name, source)
    if record.state.get("_init_args"):
        raise CheckpointError(f"{source}: '{key}' was built with positional arguments; editkit needs keywords")
    init_kwargs = to_plain(record.state.get("_init_kwargs") or {})
    attributes = {k: to_plain(record.state[k]) for k in SAVED_ATTRIBUTES if k in record.state}
    module = build_module(class_path(cls), init_kwargs, attributes, source=source)
    load_state(module, _flatten(record, "", {}, source), source=f"{source} [{key}]")
    return module.eval()


def read_official_records(path) -> dict:
    """{name: record} for the networks (G, G_ema, D) and `training_set_kwargs` of an official EG3D pickle."""
    data = safe_unpickle(path)
    names = ("G", "G_ema", "D")
    if not isinstance(data, dict) or not any(data.get(k) is not None for k in names):
        raise CheckpointError(f"{path}: not an EG3D network pickle (expected a dict with G, G_ema or D)")
    records = {k: data[k] for k in names if data.get(k) is not None}
    return {**records, "training_set_kwargs": to_plain(data.get("training_set_kwargs") or {})}


@dataclass
class OfficialPickle:
    """The networks of an official EG3D pickle, rebuilt as our port classes (None where absent)."""

    G: torch.nn.Module | None = None
    G_ema: torch.nn.Module | None = None
    D: torch.nn.Module | None = None
    training_set_kwargs: dict = field(default_factory=dict)

    def networks(self) -> dict:
        """{name: module} for the networks present, in the order G_ema, G, D."""
        found = {"G_ema": self.G_ema, "G": self.G, "D": self.D}
        return {k: v for k, v in found.items() if v is not None}


def load_official_pickle(path) -> OfficialPickle:
    """Read an official EG3D `.pkl` safely and rebuild its G, G_ema and D as our port classes."""
    records = read_official_records(path)
    training_set_kwargs = records.pop("training_set_kwargs")
    nets = {k: network_from_record(record, path, k) for k, record in records.items()}
    return OfficialPickle(**nets, training_set_kwargs=training_set_kwargs)


# ---------------------------------------------------------------------------------------------------------------
# The model registry and the loaders everyone uses.


def find_checkpoints_dir() -> Path | None:
    """$EDITKIT_CHECKPOINTS, else checkpoints/ beside the package, else ./checkpoints (None if none exists)."""
    if os.environ.get("EDITKIT_CHECKPOINTS"):
        return Path(os.environ["EDITKIT_CHECKPOINTS"])
    for folder in (REPO_ROOT / "checkpoints", Path.cwd() / "checkpoints"):
        if (folder / "registry.json").is_file():
            return folder
    return None


def checkpoints_dir() -> Path:
    """The folder that holds registry.json and the registered weights."""
    folder = find_checkpoints_dir()
    if folder is not None:
        return folder
    raise CheckpointError("no checkpoints folder found (looked beside the editkit package and in ./checkpoints); "
                          "set EDITKIT_CHECKPOINTS to the folder that holds registry.json")


def read_registry(folder=None) -> dict:
    """The registry's models: {name: {"file", "sha256", "kind", "card", "description"}}."""
    reg_path = Path(folder or checkpoints_dir()) / "registry.json"
    try:
        models = json.loads(reg_path.read_text())["models"]
    except FileNotFoundError:
        raise CheckpointError(f"{reg_path}: model registry not found; set EDITKIT_CHECKPOINTS") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{reg_path}: not a valid registry ({type(e).__name__}: {e}); "
                              "expected {\"models\": {...}}") from None
    if not isinstance(models, dict):
        raise CheckpointError(f"{reg_path}: \"models\" must be an object")
    return models


def sha256_file(path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def register_model(name: str, path, kind: str, card: str, description: str, folder=None,
                   teacher: str | None = None) -> dict:
    """Add or replace registry entry `name` for the weights file `path` (inside the checkpoints folder).

    A student names its `teacher` (a registry name): they share one w space, so latents and directions of one
    work with the other."""
    folder = Path(folder or checkpoints_dir())
    path = Path(path)
    if path.resolve().parent != folder.resolve():
        raise CheckpointError(f"{path}: registered weights must sit in {folder}")
    if kind not in ("teacher", "student"):
        raise CheckpointError(f"kind must be 'teacher' or 'student', got {kind!r}")
    models = read_registry(folder)
    if (kind == "student") != (teacher is not None):
        raise CheckpointError("a student entry names its teacher (and only a student does)")
    if teacher is not None and teacher not in models:
        raise CheckpointError(f"teacher '{teacher}' is not registered")
    models[name] = {"file": path.name, "sha256": sha256_file(path), "kind": kind, "card": card,
                    "description": description, **({"teacher": teacher} if teacher else {})}
    text = json.dumps({"models": dict(sorted(models.items()))}, indent=2) + "\n"
    atomic_write(folder / "registry.json", lambda tmp: tmp.write_text(text), force=True)
    return models[name]


def resolve_checkpoint(name_or_path) -> Path:
    """A registry name or a .safetensors/.pkl path -> an existing file (registry files are sha256-checked)."""
    path = Path(name_or_path)
    if path.suffix in (".safetensors", ".pkl"):
        if path.is_file():
            return path
        folder = find_checkpoints_dir()
        if path.parent == Path(".") and folder is not None and (folder / path).is_file():
            return folder / path
        raise CheckpointError(f"{path}: no such file")
    folder = checkpoints_dir()
    models = read_registry(folder)
    if str(name_or_path) not in models:
        known = ", ".join(sorted(models)) or "none yet"
        raise CheckpointError(f"unknown model '{name_or_path}': not a .safetensors/.pkl file and not in "
                              f"{folder / 'registry.json'} (known: {known}); see `editkit models`")
    entry = models[str(name_or_path)]
    path = folder / entry["file"]
    if not path.is_file():
        raise CheckpointError(f"{path}: registry entry '{name_or_path}' points to a missing file")
    actual = sha256_file(path)
    if actual != entry.get("sha256"):
        raise CheckpointError(f"{path}: sha256 {actual[:12]}... does not match the registry "
                              f"({str(entry.get('sha256'))[:12]}...); the file is damaged or was replaced")
    return path


def named_model(spec: str) -> tuple[str, str]:
    """'LABEL=MODEL' -> (LABEL, MODEL), how reports name the models they compare; a bare registry name or path is
    labelled by itself (a path by its file name without the suffix)."""
    label, sep, model = spec.partition("=")
    if not sep:
        return Path(spec).stem, spec
    if not label or not model:
        raise CheckpointError(f"{spec!r}: write a model as LABEL=NAME_OR_PATH or just NAME_OR_PATH")
    return label, model


def load_network(name_or_path, names, device="cpu"):
    """The first network of `names` found in a registry model, an editkit checkpoint or an official pickle.

    Only that network is built; it comes back in eval mode on `device`.
    """
    path = resolve_checkpoint(name_or_path)
    found = read_official_records(path) if path.suffix == ".pkl" else read_config(path)["networks"]
    name = next((n for n in names if n in found), None)
    if name is None:
        present = ", ".join(k for k in found if k != "training_set_kwargs")
        raise CheckpointError(f"{path}: holds no {' or '.join(names)} (it has: {present})")
    if path.suffix == ".pkl":
        module = network_from_record(found[name], path, name)
    else:
        module = load_model(path, names=[name])[name]
    return module.to(device).eval()


def load_generator(name_or_path, device="cpu"):
    """An eval-mode generator (G_ema preferred over G) from a registry name, .safetensors or .pkl."""
    return load_network(name_or_path, ("G_ema", "G"), device)


def load_discriminator(name_or_path, device="cpu"):
    """An eval-mode discriminator D from a registry name, .safetensors or .pkl."""
    return load_network(name_or_path, ("D",), device)
