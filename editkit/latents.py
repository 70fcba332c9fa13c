"""The latent file format: `latent.npy` (W+, (1, num_ws, w_dim) float32) with `latent.json` beside it.

`editkit invert`, `editkit edit` and the web demo write it; `editkit edit` and the demo read it. The JSON holds at
least

    "model":  {"name": registry name or path, "file": weights file name, "sha256": of the weights file},
    "camera": {"label": 25 floats (EG3D label), "yaw": degrees, "pitch": degrees},

plus whatever its writer records (losses, timings, face box, edits...).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from editkit import cameras, checkpoints
from editkit.editing.directions import DirectionError, read_npy
from editkit.errors import EditkitError
from editkit.io import atomic_write, output_group

LATENT = "latent.npy"
LATENT_JSON = "latent.json"


class LatentError(EditkitError):
    """A latent file is missing, malformed, or was made with another model."""


def model_record(name_or_path) -> dict:
    """{'name', 'file', 'sha256'} of a registered model name or a weights file."""
    path = checkpoints.resolve_checkpoint(name_or_path)
    return {"name": str(name_or_path), "file": path.name, "sha256": checkpoints.sha256_file(path)}


def camera_record(yaw: float, pitch: float) -> dict:
    """{'label', 'yaw', 'pitch'} of EG3D's default camera at this yaw and pitch (degrees)."""
    return {"label": cameras.to_json(cameras.make_label(yaw, pitch)), "yaw": float(yaw), "pitch": float(pitch)}


def latent_paths(path) -> tuple[Path, Path]:
    """(latent .npy, its .json) for a latent file or a folder holding `latent.npy`."""
    path = Path(path)
    npy = path / LATENT if path.is_dir() else path
    if not npy.is_file():
        raise LatentError(f"{npy}: no such latent file (expected {LATENT} from `editkit invert`, or its folder)")
    return npy, npy.with_suffix(".json")


def read_latent(path) -> tuple[torch.Tensor, dict]:
    """(ws (1, num_ws, w_dim) float32 tensor, metadata) of a latent file or folder, checked for the format above."""
    npy, meta_path = latent_paths(path)
    try:
        ws = read_npy(npy)
    except DirectionError as e:
        raise LatentError(str(e)) from None
    if ws.ndim != 3 or ws.shape[0] != 1 or ws.dtype != np.float32 or not np.isfinite(ws).all():
        raise LatentError(f"{npy}: expected finite float32 W+ of shape (1, num_ws, w_dim), "
                          f"got {ws.dtype} {ws.shape}")
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise LatentError(f"{meta_path}: missing; a latent needs its JSON (model, camera) beside it") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise LatentError(f"{meta_path}: not valid JSON ({e})") from None
    model = meta.get("model") if isinstance(meta, dict) else None
    if not isinstance(model, dict) or not all(isinstance(model.get(k), str) for k in ("name", "sha256")):
        raise LatentError(f"{meta_path}: does not name the model the latent belongs to "
                          "(\"model\": {\"name\", \"sha256\"}); invert the photo again")
    camera = meta.get("camera")
    if not isinstance(camera, dict) or not all(isinstance(camera.get(k), (int, float)) for k in ("yaw", "pitch")):
        raise LatentError(f"{meta_path}: has no camera (\"camera\": {{\"yaw\", \"pitch\"}}); invert the photo again")
    return torch.from_numpy(ws), meta


def check_model(meta: dict, source) -> None:
    """Refuse a latent whose model file changed since it was made (its recorded sha256 differs)."""
    model = meta["model"]
    if model_record(model["name"])["sha256"] != model["sha256"]:
        raise LatentError(f"{source}: was made with another version of model '{model['name']}' (sha256 "
                          f"{model['sha256'][:12]}...); invert the photo again with the current model")


def check_fits(ws: torch.Tensor, source, name: str, G) -> None:
    """Refuse a latent whose (num_ws, w_dim) differs from generator G's (named `name` in the message)."""
    if ws.shape[1:] != (G.num_ws, G.w_dim):
        raise LatentError(f"{source}: latent shape {tuple(ws.shape)} does not fit '{name}' "
                          f"(num_ws {G.num_ws}, w_dim {G.w_dim})")


def write_latent(folder, ws: torch.Tensor, record: dict, force: bool = False) -> list[Path]:
    """Write `latent.npy` and `latent.json` into `folder`, both or neither; no overwrite unless `force`."""
    folder = Path(folder)

    def write_npy(tmp):
        with open(tmp, "wb") as f:
            np.save(f, ws.detach().cpu().numpy().astype(np.float32), allow_pickle=False)

    text = json.dumps(record, indent=2) + "\n"
    with output_group():
        return [atomic_write(folder / LATENT, write_npy, force=force),
                atomic_write(folder / LATENT_JSON, lambda tmp: tmp.write_text(text), force=force)]
