"""`editkit edit`: move a latent along directions and render it from new viewpoints.

Input: a latent written by `editkit invert` (`latent.npy`, (1, num_ws, w_dim) float32 W+, and `latent.json` with
at least `model`, `model_sha256`, `camera`, `yaw`, `pitch`), or the folder holding it. Output folder:

- `edit.png`: the edited face at (yaw, pitch);
- `latent.npy` + `latent.json`: the edited latent (same format, so the folder can be edited again);
- `orbit.mp4` + `orbit.gif` with `--orbit`: a yaw/pitch orbit (EG3D's elliptical video path);
- `grid.png` with `--grid`: rows scale every strength by -1, -0.5, 0, 0.5, 1; columns are yaw -30, -15, 0, 15, 30.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from editkit import cameras, checkpoints
from editkit.editing import registry
from editkit.editing.directions import (Direction, DirectionError, apply_edits, load_direction, parse_layers,
                                        project_out, read_npy, restrict)
from editkit.editing.render import grid, render_images, save_gif, save_mp4, save_png
from editkit.errors import EditkitError, OutputExistsError
from editkit.io import atomic_write

LATENT = "latent.npy"
GRID_FACTORS = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_YAWS = (-30.0, -15.0, 0.0, 15.0, 30.0)
ORBIT_YAW, ORBIT_PITCH, ORBIT_FPS = 30.0, 10.0, 24


class LatentError(EditkitError):
    """A latent file is missing, malformed, or was made with another model."""


@dataclass
class EditSpec:
    """One requested edit: a shipped direction by attribute name, or a direction file, and its strength."""

    attribute: str | None = None
    file: Path | None = None
    strength: float = 1.0

    def describe(self) -> dict:
        return {"attribute": self.attribute, "file": None if self.file is None else str(self.file),
                "strength": self.strength}


def latent_paths(path) -> tuple[Path, Path]:
    """(latent .npy, its .json) for a latent file or a folder holding `latent.npy`."""
    path = Path(path)
    npy = path / LATENT if path.is_dir() else path
    if not npy.is_file():
        raise LatentError(f"{npy}: no such latent file (expected {LATENT} from `editkit invert`, or its folder)")
    return npy, npy.with_suffix(".json")


def read_latent(path) -> tuple[torch.Tensor, dict]:
    """(ws (1, num_ws, w_dim) float32 tensor, metadata) of a latent file or folder."""
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
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), str):
        raise LatentError(f"{meta_path}: does not name the model the latent belongs to (\"model\")")
    return torch.from_numpy(ws), meta


def model_sha256(name_or_path) -> str:
    """sha256 of a model's weights file (registry names are checked against the registry on the way)."""
    return checkpoints.sha256_file(checkpoints.resolve_checkpoint(name_or_path))


def generator_name(meta: dict, choice: str | None) -> str:
    """The model to render with: the latent's own (default), its registered 'teacher' or 'student', or a name/path."""
    model = meta["model"]
    if choice is None:
        return model
    if choice not in ("teacher", "student"):
        return choice
    models = checkpoints.read_registry()
    entry = models.get(model, {})
    if entry.get("kind") == choice:
        return model
    if choice == "teacher" and entry.get("teacher"):
        return entry["teacher"]
    students = [name for name, e in models.items() if e.get("kind") == "student" and e.get("teacher") == model]
    if choice == "student" and students:
        return students[0]
    raise LatentError(f"no registered {choice} shares the w space of '{model}'; pass a model name or path "
                      "to --generator")


def check_model(meta: dict, source) -> None:
    """Refuse a latent whose model file changed since it was made (its recorded sha256 differs)."""
    recorded = meta.get("model_sha256")
    if recorded and model_sha256(meta["model"]) != recorded:
        raise LatentError(f"{source}: was made with another version of model '{meta['model']}' (sha256 "
                          f"{recorded[:12]}...); invert the photo again with the current model")


def resolve_edits(specs: list[EditSpec], model: str, num_ws: int, w_dim: int, layers=None,
                  keep=()) -> list[tuple[Direction, float]]:
    """[(Direction, strength)] for the requested edits, restricted to `layers`, with `keep` directions projected out."""
    def find(attribute=None, file=None):
        if file is not None:
            return load_direction(file, num_ws, w_dim)
        return registry.find_shipped(attribute, model, num_ws, w_dim)

    conditions = [find(file=name) if str(name).endswith(".npy") else find(attribute=name) for name in keep]
    edits = []
    for spec in specs:
        direction = project_out(find(spec.attribute, spec.file), conditions, num_ws)
        if layers is not None:
            direction = restrict(direction, layers, num_ws)
        edits.append((direction, spec.strength))
    return edits


def output_paths(out: Path, orbit: bool, want_grid: bool) -> dict:
    """{kind: path} of every file the edit writes."""
    paths = {"png": out / "edit.png", "latent": out / LATENT, "meta": out / "latent.json"}
    if orbit:
        paths.update(mp4=out / "orbit.mp4", gif=out / "orbit.gif")
    if want_grid:
        paths["grid"] = out / "grid.png"
    return paths


def run_edit(source, specs: list[EditSpec], out, yaw=None, pitch=None, orbit=False, want_grid=False, layers=None,
             keep=(), generator=None, frames=48, force=False) -> dict:
    """Edit the latent at `source`, render and write the outputs; returns {kind: path} plus timings."""
    out = Path(out)
    paths = output_paths(out, orbit, want_grid)
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not force:
        raise OutputExistsError(f"{existing[0]} already exists; use --force to overwrite it")
    if not specs:
        raise EditkitError("nothing to edit: give --attr NAME or --direction FILE.npy (with --strength)")
    ws, meta = read_latent(source)
    check_model(meta, source)
    name = generator_name(meta, generator)
    G = checkpoints.load_generator(name)
    if ws.shape[1:] != (G.num_ws, G.w_dim):
        raise LatentError(f"{source}: latent shape {tuple(ws.shape)} does not fit '{name}' "
                          f"(num_ws {G.num_ws}, w_dim {G.w_dim})")
    layer_list = None if layers is None else parse_layers(layers, G.num_ws)
    edits = resolve_edits(specs, meta["model"], G.num_ws, G.w_dim, layer_list, keep)
    yaw = float(meta.get("yaw", 0.0) if yaw is None else yaw)
    pitch = float(meta.get("pitch", 0.0) if pitch is None else pitch)
    label = cameras.make_label(yaw, pitch)

    start = time.perf_counter()
    edited = apply_edits(ws, edits)
    image = render_images(G, edited, label)[0]
    render_ms = 1000 * (time.perf_counter() - start)
    if orbit:
        video = render_images(G, edited.expand(frames, -1, -1), cameras.orbit(frames, ORBIT_YAW, ORBIT_PITCH),
                              desc="orbit")
    if want_grid:
        rows = torch.cat([apply_edits(ws, [(d, s * f) for d, s in edits]) for f in GRID_FACTORS])
        labels = cameras.make_label(list(GRID_YAWS) * len(GRID_FACTORS), pitch)
        tiles = render_images(G, rows.repeat_interleave(len(GRID_YAWS), 0), labels, desc="grid")

    # everything is rendered: write the files (each atomically)
    record = {**meta, "camera": cameras.to_json(label), "yaw": yaw, "pitch": pitch, "generator": name,
              "edited_from": str(latent_paths(source)[0]), "edits": [s.describe() for s in specs],
              "layers": layer_list, "keep": list(keep), "render_ms": round(render_ms, 1)}

    def write_latent(tmp):
        with open(tmp, "wb") as f:
            np.save(f, edited.numpy().astype(np.float32), allow_pickle=False)

    save_png(paths["png"], image, force=force)
    atomic_write(paths["latent"], write_latent, force=force)
    atomic_write(paths["meta"], lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"), force=force)
    if orbit:
        save_mp4(paths["mp4"], video, ORBIT_FPS, force=force)
        save_gif(paths["gif"], video, ORBIT_FPS, force=force)
    if want_grid:
        save_png(paths["grid"], grid(tiles, len(GRID_FACTORS), len(GRID_YAWS)), force=force)
    return {**paths, "render_ms": render_ms}
