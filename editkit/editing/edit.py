"""`editkit edit`: move a latent along directions and render it from new viewpoints.

Input: a latent written by `editkit invert`, `editkit edit` or the web demo (`latent.npy` + `latent.json`, the
format of `editkit.latents`), or the folder holding it. Output folder:

- `edit.png`: the edited face at (yaw, pitch);
- `latent.npy` + `latent.json`: the edited latent (same format, so the folder can be edited again);
- `orbit.mp4` + `orbit.gif` with `--orbit`: a yaw/pitch orbit (EG3D's elliptical video path);
- `grid.png` with `--grid`: rows scale every strength by -1, -0.5, 0, 0.5, 1; columns are yaw -30, -15, 0, 15, 30.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from editkit import cameras, checkpoints
from editkit.editing import registry
from editkit.editing.directions import Direction, apply_edits, load_direction, parse_layers, project_out, restrict
from editkit.editing.render import grid, render_images, save_gif, save_mp4, save_png
from editkit.errors import EditkitError
from editkit.io import check_outputs, output_group, remove_replaced
from editkit.latents import LATENT, LATENT_JSON, LatentError, camera_record, check_fits, check_model, latent_paths, \
    read_latent, write_latent

GRID_FACTORS = (-1.0, -0.5, 0.0, 0.5, 1.0)
GRID_YAWS = (-30.0, -15.0, 0.0, 15.0, 30.0)
ORBIT_YAW, ORBIT_PITCH, ORBIT_FPS = 30.0, 10.0, 24


@dataclass
class EditSpec:
    """One requested edit: a shipped direction by attribute name, or a direction file, and its strength."""

    attribute: str | None = None
    file: Path | None = None
    strength: float = 1.0

    def describe(self) -> dict:
        return {"attribute": self.attribute, "file": None if self.file is None else str(self.file),
                "strength": self.strength}


def generator_name(meta: dict, choice: str | None) -> str:
    """The model to render with: the latent's own (default), its registered 'teacher' or 'student', or a name/path."""
    model = meta["model"]["name"]
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
    paths = {"png": out / "edit.png", "latent": out / LATENT, "meta": out / LATENT_JSON}
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
    check_outputs(paths.values(), force)
    if not specs:
        raise EditkitError("nothing to edit: give --attr NAME or --direction FILE.npy (with --strength)")
    ws, meta = read_latent(source)
    check_model(meta, source)
    name = generator_name(meta, generator)
    G = checkpoints.load_generator(name)
    check_fits(ws, source, name, G)
    layer_list = None if layers is None else parse_layers(layers, G.num_ws)
    edits = resolve_edits(specs, meta["model"]["name"], G.num_ws, G.w_dim, layer_list, keep)
    yaw = float(meta["camera"]["yaw"] if yaw is None else yaw)
    pitch = float(meta["camera"]["pitch"] if pitch is None else pitch)
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

    # everything is rendered: write the files (all of them or none)
    record = {**meta, "camera": camera_record(yaw, pitch), "rendered_with": name,
              "edited_from": str(latent_paths(source)[0]), "edits": [s.describe() for s in specs],
              "layers": layer_list, "keep": list(keep), "render_ms": round(render_ms, 1)}

    with output_group():
        save_png(paths["png"], image, force=force)
        write_latent(out, edited, record, force=force)
        if orbit:
            save_mp4(paths["mp4"], video, ORBIT_FPS, force=force)
            save_gif(paths["gif"], video, ORBIT_FPS, force=force)
        if want_grid:
            save_png(paths["grid"], grid(tiles, len(GRID_FACTORS), len(GRID_YAWS)), force=force)
    if force:  # an orbit or grid of an earlier edit into this folder would not show this edit
        remove_replaced(out, [p.name for p in output_paths(out, True, True).values()], paths.values())
    return {**paths, "render_ms": render_ms}
