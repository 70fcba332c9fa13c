"""FID and KID against a folder of real images, with torch-fidelity's InceptionV3 (the TF-FID network, ported).

Nothing is downloaded. The Inception weights are torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``
(95 MB, https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth,
converted from TensorFlow's 2015-12-05 Inception; Apache-2.0), looked for at ``$EDITKIT_FID_WEIGHTS``, then
``$EDITKIT_CACHE/weights-inception-2015-12-05-6726825d.pth`` (default cache ``~/.cache/editkit``), then torch hub's
``<torch.hub.get_dir()>/checkpoints/`` where torch-fidelity itself would save it. The file is read with
``torch.load(weights_only=True)``; torch-fidelity then gets a copy written by us, because it would unpickle the
given file without restrictions. Both folders are searched for .png/.jpg/.jpeg files (one size per folder).
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

from editkit.errors import CheckpointError, EditkitError, one_line
from editkit.weights import cache_dir

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{WEIGHTS_FILE}"
ENV = "EDITKIT_FID_WEIGHTS"
EXTENSIONS = (".png", ".jpg", ".jpeg")
NETWORK = "InceptionV3 2015-12-05 pool3 (torch-fidelity)"


def candidate_paths() -> list[Path]:
    """Where the Inception weights are looked for, in order."""
    import torch

    paths = [Path(os.environ[ENV]).expanduser()] if os.environ.get(ENV) else []
    return paths + [cache_dir() / WEIGHTS_FILE, Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE]


def inception_weights_path() -> Path:
    """The local Inception weights file; a clear error naming the places looked at and the file to fetch."""
    paths = candidate_paths()
    for path in paths:
        if path.is_file():
            return path
    raise CheckpointError(f"FID/KID need the Inception weights {WEIGHTS_FILE}, not found (looked at: "
                          f"{', '.join(map(str, paths))}); download {WEIGHTS_URL} where the internet is reachable "
                          f"and put it at {paths[-2]} (or set {ENV})")


def image_files(folder) -> list[Path]:
    """The images in ``folder`` (recursively)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EditkitError(f"{folder}: no such folder of images")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS)


def check_ready(real_dir) -> Path:
    """Fail early, with a clear error, unless torch-fidelity, the Inception weights and >= 2 real images are there;
    returns the weights path."""
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise EditkitError("FID/KID need torch-fidelity: pip install torch-fidelity") from None
    if len(image_files(real_dir)) < 2:
        raise EditkitError(f"{real_dir}: FID/KID need at least 2 real images (.png/.jpg/.jpeg)")
    return inception_weights_path()


def fid_kid(generated_dir, real_dir, weights=None, kid_subset_size: int = 1000) -> dict:
    """FID and KID (mean, std) between two image folders; the result names the network and the sample counts."""
    import torch

    path = Path(weights) if weights else check_ready(real_dir)
    counts = {name: len(image_files(folder)) for name, folder in (("generated", generated_dir), ("real", real_dir))}
    if min(counts.values()) < 2:
        raise EditkitError(f"FID/KID need at least 2 images in each folder, found {counts}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable Inception state dict ({one_line(e)[:200]})") \
            from None
    import torch_fidelity

    with tempfile.TemporaryDirectory() as tmp:
        checked = Path(tmp) / WEIGHTS_FILE
        torch.save(state, checked)
        try:
            result = torch_fidelity.calculate_metrics(
                input1=str(generated_dir), input2=str(real_dir), fid=True, kid=True,
                kid_subset_size=min(kid_subset_size, *counts.values()), feature_extractor_weights_path=str(checked),
                cuda=torch.cuda.is_available(), cache=False, verbose=False)
        except RuntimeError as e:  # load_state_dict: the file holds another network
            raise CheckpointError(f"{path}: does not fit torch-fidelity's InceptionV3 "
                                  f"({str(e).splitlines()[0]})") from None
    return {"fid": float(result["frechet_inception_distance"]),
            "kid_mean": float(result["kernel_inception_distance_mean"]),
            "kid_std": float(result["kernel_inception_distance_std"]),
            "network": f"{NETWORK}: {path.name}", "n_generated": counts["generated"], "n_real": counts["real"]}
