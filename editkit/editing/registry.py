"""Shipped directions: `checkpoints/directions/registry.json` names the direction files made for registered models.

Format: `{"directions": [{"model", "attribute", "file", "sha256", "description"}, ...]}`, with `file` relative to
the registry's folder (`<model>/<attribute>.npy`, its JSON sidecar beside it). A direction fitted on one model also
serves the models that share its w space: a student's registry entry names its teacher (`"teacher": name`).
"""

from __future__ import annotations

import json
from pathlib import Path

from editkit import checkpoints
from editkit.editing.directions import Direction, DirectionError, load_direction, save_direction, sidecar_path
from editkit.io import atomic_write, output_group, staged

REGISTRY = "registry.json"


def directions_dir() -> Path:
    """The folder of shipped directions: `directions/` inside the checkpoints folder."""
    return checkpoints.checkpoints_dir() / "directions"


def read_directions_registry(folder=None) -> list[dict]:
    """The registry's entries (empty when the folder has no registry yet)."""
    path = Path(folder or directions_dir()) / REGISTRY
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())["directions"]
        if not isinstance(entries, list) or not all(isinstance(e, dict) and {"model", "attribute", "file"} <= set(e)
                                                    for e in entries):
            raise TypeError("entries need model, attribute and file")
    except (ValueError, KeyError, TypeError) as e:
        raise DirectionError(f"{path}: not a valid directions registry ({e}); expected "
                             "{\"directions\": [{\"model\", \"attribute\", \"file\", \"sha256\"}, ...]}") from None
    return entries


def related_models(model: str) -> list[str]:
    """`model` and the registered models sharing its w space (its teacher, or the students of it)."""
    try:
        models = checkpoints.read_registry()
    except checkpoints.CheckpointError:
        return [model]
    related = [model]
    teacher = models.get(model, {}).get("teacher")
    if teacher:
        related.append(teacher)
    related += [name for name, entry in models.items() if entry.get("teacher") == model]
    return related


def find_shipped(attribute: str, model: str, num_ws: int | None = None, w_dim: int | None = None) -> Direction:
    """The shipped direction for `attribute` made for `model` or a model sharing its w space (sha256-checked)."""
    folder = directions_dir()
    entries = read_directions_registry(folder)
    models = related_models(model)
    for name in models:
        for entry in entries:
            if entry["model"] == name and entry["attribute"] == attribute:
                path = folder / entry["file"]
                if not path.is_file():
                    raise DirectionError(f"{path}: registered direction file is missing")
                if entry.get("sha256") and checkpoints.sha256_file(path) != entry["sha256"]:
                    raise DirectionError(f"{path}: sha256 does not match the directions registry; "
                                         "the file is damaged or was replaced")
                return load_direction(path, num_ws, w_dim)
    known = sorted({e["attribute"] for e in entries if e["model"] in models})
    raise DirectionError(f"no shipped direction '{attribute}' for model '{model}' (shipped: "
                         f"{', '.join(known) or 'none'}); pass one with --direction FILE.npy or make one with "
                         "`editkit directions fit`")


def shipped_directions(model: str, num_ws: int | None = None, w_dim: int | None = None) -> list[Direction]:
    """Every shipped direction for `model` or a model sharing its w space (one per attribute, sha256-checked)."""
    related = related_models(model)
    attributes = dict.fromkeys(e["attribute"] for e in read_directions_registry() if e["model"] in related)
    return [find_shipped(attribute, model, num_ws, w_dim) for attribute in attributes]


def register_direction(direction: Direction, model: str, description: str = "", force: bool = False,
                       folder=None) -> Path:
    """Save `direction` as `<folder>/<model>/<attribute>.npy` and add (or, with force, replace) its registry entry."""
    folder = Path(folder or directions_dir())
    entries = read_directions_registry(folder)
    others = [e for e in entries if (e["model"], e["attribute"]) != (model, direction.attribute)]
    if len(others) != len(entries) and not force:
        raise DirectionError(f"{folder / REGISTRY}: already lists '{direction.attribute}' for '{model}'; "
                             "use --force to replace it")
    relative = f"{model}/{direction.attribute}.npy"
    with output_group():  # the direction files and the registry entry appear together
        path = save_direction(folder / relative, direction, force=force)
        entry = {"model": model, "attribute": direction.attribute, "file": relative,
                 "sha256": checkpoints.sha256_file(staged(path)), "description": description}
        text = json.dumps({"directions": others + [entry]}, indent=2) + "\n"
        atomic_write(folder / REGISTRY, lambda tmp: tmp.write_text(text), force=True)
    return path


def describe(entry: dict, folder=None) -> dict:
    """A registry entry merged with its sidecar (method, accuracy, layers) for listing."""
    meta_path = sidecar_path(Path(folder or directions_dir()) / entry["file"])
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        meta = {}
    return {**meta, **entry}
