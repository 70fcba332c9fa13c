"""Latent directions: the `Direction` record, its files, validation of published files, and W+ layer algebra.

A direction file is a float32 `.npy` of shape (1, w_dim) (a W direction, applied to every layer) or
(1, num_ws, w_dim) (a W+ direction), with a JSON sidecar of the same stem: `{"attribute", "method", "model",
"model_sha256", "data", "accuracy", "layers", ...}`. Published files of shape (w_dim,), (num_ws, w_dim),
(1, w_dim) or (1, num_ws, w_dim) load too; their sidecar is optional. A file is read with
`np.load(allow_pickle=False)` after checking its magic bytes, so a pickle (e.g. a `torch.save` file renamed to
`.npy`) is refused before anything in it is read, let alone run.

Strength units: editkit's own directions have unit norm per edited layer, so `w + 1.0 * d` moves every edited
layer's w by 1 (the sidecar's `data.projection_std` says how far the samples spread along the direction).
Published directions keep the scale they came with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from editkit.errors import EditkitError
from editkit.io import atomic_write, check_outputs, output_group

NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


class DirectionError(EditkitError):
    """A direction file is missing, malformed or does not fit the generator."""


@dataclass
class Direction:
    """A latent direction: `vector` (1, w_dim) for W or (num_ws, w_dim) for W+, float32, plus its metadata."""

    vector: np.ndarray
    attribute: str
    method: str
    model: str | None = None
    model_sha256: str | None = None
    layers: list[int] | None = None
    accuracy: float | None = None
    data: dict = field(default_factory=dict)

    @property
    def w_dim(self) -> int:
        return self.vector.shape[-1]

    def metadata(self) -> dict:
        """The JSON sidecar's content."""
        return {"attribute": self.attribute, "method": self.method, "model": self.model,
                "model_sha256": self.model_sha256, "layers": self.layers, "accuracy": self.accuracy,
                "shape": list(self.file_array().shape), "data": self.data}

    def file_array(self) -> np.ndarray:
        """The array as stored: (1, w_dim) or (1, num_ws, w_dim)."""
        return self.vector if len(self.vector) == 1 else self.vector[None]


def sidecar_path(path) -> Path:
    """The JSON beside a direction `.npy`."""
    return Path(path).with_suffix(".json")


def direction_outputs(path) -> list[Path]:
    """[the .npy, its JSON sidecar] a direction saved as `path` writes (a clear error unless it ends in .npy)."""
    path = Path(path)
    if path.suffix != ".npy":
        raise DirectionError(f"{path}: direction files end in .npy")
    return [path, sidecar_path(path)]


def save_direction(path, direction: Direction, force: bool = False) -> Path:
    """Write `direction` as `path` (.npy) and its JSON sidecar, both or neither; refuses to overwrite unless force."""
    path = Path(path)
    check_outputs(direction_outputs(path), force)
    array = np.ascontiguousarray(direction.file_array(), dtype=np.float32)
    text = json.dumps(direction.metadata(), indent=2) + "\n"

    def write_npy(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)

    with output_group():
        atomic_write(path, write_npy, force=True)
        atomic_write(sidecar_path(path), lambda tmp: tmp.write_text(text), force=True)
    return path


def read_npy(path) -> np.ndarray:
    """A plain numeric array from an `.npy` file; pickles and zip archives are refused unread."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC))
            if head != NPY_MAGIC:
                if head.startswith(ZIP_MAGIC):
                    kind = "a zip archive (a torch.save file or .npz?)"
                elif head[:1] == b"\x80":
                    kind = "a Python pickle (a torch or pickle file?)"
                else:
                    kind = "not a NumPy .npy file (no .npy header: a pickle or another format)"
                raise DirectionError(f"{path}: is {kind}, refused without reading it; editkit only reads plain .npy "
                                     "arrays (convert it yourself with code you trust: np.save(path, array))")
            f.seek(0)
            array = np.load(f, allow_pickle=False)
    except OSError as e:
        raise DirectionError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:  # object arrays, truncated data
        raise DirectionError(f"{path}: not a readable numeric .npy array ({e})") from None
    return array


def validate_vector(array: np.ndarray, source, num_ws: int | None = None, w_dim: int | None = None) -> np.ndarray:
    """Check a published-format array and return it as (1, w_dim) or (num_ws, w_dim) float32."""
    if not np.issubdtype(array.dtype, np.floating):
        raise DirectionError(f"{source}: dtype {array.dtype} is not a float type (expected float32)")
    shape = array.shape
    if array.ndim == 1:
        vector = array[None]
    elif array.ndim == 2:
        vector = array
    elif array.ndim == 3 and shape[0] == 1:
        vector = array[0]
    else:
        vector = None
    if vector is None or vector.shape[0] < 1 or vector.shape[1] < 2:
        raise DirectionError(f"{source}: shape {shape} is not a direction (expected (w_dim,), (1, w_dim), "
                             "(num_ws, w_dim) or (1, num_ws, w_dim))")
    if w_dim is not None and vector.shape[1] != w_dim:
        raise DirectionError(f"{source}: shape {shape} has w_dim {vector.shape[1]}, the generator's is {w_dim}")
    if num_ws is not None and vector.shape[0] not in (1, num_ws):
        raise DirectionError(f"{source}: shape {shape} has {vector.shape[0]} layers, the generator has {num_ws}")
    vector = vector.astype(np.float32)
    if not np.isfinite(vector).all():
        raise DirectionError(f"{source}: holds NaN or infinite values")
    if not np.any(vector):
        raise DirectionError(f"{source}: is all zeros")
    return vector


def _read_sidecar(path: Path) -> dict:
    side = sidecar_path(path)
    if not side.is_file():
        return {}
    try:
        meta = json.loads(side.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DirectionError(f"{side}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DirectionError(f"{side}: expected a JSON object")
    return meta


def load_direction(path, num_ws: int | None = None, w_dim: int | None = None) -> Direction:
    """Read a direction file (ours or published), validated against the generator's num_ws/w_dim when given."""
    path = Path(path)
    if not path.is_file():
        raise DirectionError(f"{path}: no such direction file")
    vector = validate_vector(read_npy(path), path, num_ws, w_dim)
    meta = _read_sidecar(path)
    layers = meta.get("layers")
    return Direction(vector, attribute=str(meta.get("attribute") or path.stem),
                     method=str(meta.get("method") or "imported"), model=meta.get("model"),
                     model_sha256=meta.get("model_sha256"), layers=list(layers) if layers else None,
                     accuracy=meta.get("accuracy"), data=meta.get("data") or {"source": path.name})


# --------------------------------------------------------------------------------------------------- layer algebra


def parse_layers(text: str, num_ws: int | None = None) -> list[int]:
    """'0-7' or '0,1,4-6' -> sorted layer indices, checked against num_ws when given."""
    layers = set()
    try:
        for part in str(text).split(","):
            lo, _, hi = part.strip().partition("-")
            first, last = int(lo), int(hi or lo)
            if first > last:
                raise ValueError
            layers.update(range(first, last + 1))
    except ValueError:
        raise DirectionError(f"layers '{text}': expected indices and ranges like 0-7 or 0,2,4-6") from None
    if num_ws is not None and (min(layers) < 0 or max(layers) >= num_ws):
        raise DirectionError(f"layers '{text}': the generator has layers 0-{num_ws - 1}")
    return sorted(layers)


def format_layers(layers) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the form `parse_layers` reads); 'all' for None."""
    if not layers:
        return "all"
    runs, start = [], layers[0]
    for prev, cur in zip(layers, list(layers[1:]) + [None]):
        if cur != prev + 1:
            runs.append(f"{start}-{prev}" if prev != start else str(start))
            start = cur
    return ",".join(runs)


def expand(vector: np.ndarray, num_ws: int) -> np.ndarray:
    """A (1, w_dim) or (num_ws, w_dim) vector as (num_ws, w_dim)."""
    if len(vector) not in (1, num_ws):
        raise DirectionError(f"direction has {len(vector)} layers, the generator has {num_ws}")
    return np.broadcast_to(vector, (num_ws, vector.shape[-1])).copy()


def restrict(direction: Direction, layers: list[int], num_ws: int) -> Direction:
    """The direction acting only on `layers` (zero elsewhere), as a W+ direction."""
    vector = np.zeros((num_ws, direction.w_dim), np.float32)
    vector[layers] = expand(direction.vector, num_ws)[layers]
    if not np.any(vector):
        raise DirectionError(f"direction '{direction.attribute}' is zero on layers {layers}")
    return replace(direction, vector=vector, layers=list(layers))


def project_out(direction: Direction, conditions: list[Direction], num_ws: int) -> Direction:
    """Conditional direction: remove, layer by layer, the span of `conditions` from `direction`, keeping its norm.

    Moving along the result leaves every layer's projection on every condition direction unchanged, so the
    attributes they stand for stay put (InterFaceGAN's conditional manipulation); layers the direction leaves alone
    stay untouched, so a layer restriction survives.
    """
    if not conditions:
        return direction
    rows = 1 if len(direction.vector) == 1 and all(len(c.vector) == 1 for c in conditions) else num_ws
    d = expand(direction.vector, rows).astype(np.float64)
    others = np.stack([expand(c.vector, rows) for c in conditions], -1).astype(np.float64)  # (rows, w_dim, k)
    kept = d.copy()
    for layer in range(rows):
        columns = others[layer][:, np.linalg.norm(others[layer], axis=0) > 0]
        if columns.size:
            basis, _ = np.linalg.qr(columns)
            kept[layer] -= basis @ (basis.T @ d[layer])
    names = [c.attribute for c in conditions]
    if np.linalg.norm(kept) < 1e-3 * np.linalg.norm(d):
        raise DirectionError(f"direction '{direction.attribute}' lies in the span of {', '.join(names)}: "
                             "nothing left to edit")
    kept *= np.linalg.norm(d) / np.linalg.norm(kept)
    return replace(direction, vector=kept.astype(np.float32), data={**direction.data, "conditioned_on": names})


def apply_edits(ws, edits):
    """ws (N, num_ws, w_dim) tensor moved by sum(strength * direction) over `edits` [(Direction, strength)]."""
    import torch

    num_ws, w_dim = ws.shape[1], ws.shape[2]
    delta = np.zeros((num_ws, w_dim), np.float32)
    for direction, strength in edits:
        if direction.w_dim != w_dim:
            raise DirectionError(f"direction '{direction.attribute}' has w_dim {direction.w_dim}, "
                                 f"the generator's is {w_dim}")
        delta += float(strength) * expand(direction.vector, num_ws)
    return ws + torch.from_numpy(delta).to(ws)
