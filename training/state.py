"""Resumable training state: numbered checkpoints in a run folder, written atomically, the last few kept.

A state is a dict of tensors, numbers, strings and nested dicts/lists (model and optimiser state dicts, RNG
states as tensors), saved with torch.save and read back with ``weights_only=True``, so loading a run folder never
executes code. If the newest file is damaged (a machine died mid-copy, a disk filled up) the previous one is used.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from editkit.io import atomic_write

PATTERN = re.compile(r"state-(\d{8})\.pt$")


def state_files(run_dir) -> list[Path]:
    """The run's state files, newest (highest step) first."""
    run_dir = Path(run_dir)
    found = [(int(m.group(1)), p) for p in run_dir.glob("state-*.pt") if (m := PATTERN.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def save_state(run_dir, step: int, state: dict, keep: int = 2) -> Path:
    """Write `state` as run_dir/state-<step>.pt and delete all but the newest `keep` files."""
    path = Path(run_dir) / f"state-{step:08d}.pt"
    atomic_write(path, lambda tmp: torch.save(state, tmp), force=True)
    for old in state_files(run_dir)[keep:]:
        old.unlink(missing_ok=True)
    return path


def load_latest_state(run_dir, log=print) -> dict | None:
    """The newest readable state of the run (None for a new run); unreadable files are reported and skipped."""
    for path in state_files(run_dir):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or corrupted file: fall back to the previous one
            log(f"skipping unreadable training state {path.name}: {type(e).__name__}: {str(e).splitlines()[0]}")
    return None
