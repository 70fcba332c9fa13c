"""Resumable training state: numbered checkpoints in a run folder, written atomically, the last few kept.

A state is a dict of tensors, numbers, strings and nested dicts/lists (model and optimiser state dicts, RNG
states as tensors), saved with torch.save and read back with ``weights_only=True``, so loading a run folder never
executes code. Files are written under a temporary name and renamed, so a kill -9 mid-save leaves the previous
states whole; if the newest file is damaged anyway (a machine died mid-copy, a disk filled up) the previous one is
used, and a run whose states are all unreadable stops with an error instead of silently starting over.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from editkit.errors import EditkitError
from editkit.io import atomic_write

PATTERN = re.compile(r"state-(\d{8})\.pt$")


class StateError(EditkitError):
    """A run folder holds training states, but none of them can be read."""


def state_files(run_dir) -> list[Path]:
    """The run's state files, newest (highest step) first."""
    run_dir = Path(run_dir)
    found = [(int(m.group(1)), p) for p in run_dir.glob("state-*.pt") if (m := PATTERN.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_state(run_dir, step: int, state: dict, keep: int = 2) -> Path:
    """Write `state` as run_dir/state-<step>.pt and delete all but the newest `keep` files, and the temporary file
    a killed save left behind (only one process writes a run's states)."""
    path = Path(run_dir) / f"state-{step:08d}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp), force=True)
    for old in state_files(run_dir)[keep:] + list(Path(run_dir).glob(".state-*.tmp")):
        old.unlink(missing_ok=True)
    return path


def load_latest_state(run_dir, log=print) -> dict | None:
    """The newest readable state of the run (None for a new run); unreadable files are reported and skipped.

    A StateError if there are states and none can be read: starting over would quietly throw the run away.
    """
    files = state_files(run_dir)
    for path in files:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or corrupted file: fall back to the previous one
            log(f"skipping unreadable training state {path.name}: {type(e).__name__}: {str(e).splitlines()[0]}")
    if files:
        raise StateError(f"{run_dir}: none of its {len(files)} training state(s) can be read; move them away to "
                         "start the run over")
    return None
