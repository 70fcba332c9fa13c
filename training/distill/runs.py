"""The run folder of a distillation run: its options, checkpoints, JSONL log and sample grids.

    RUN_DIR/run.json                    options of the run (a resumed run must be started with the same ones)
    RUN_DIR/checkpoints/state-<step>.pt the last two training states (training/state.py: torch.save of tensors
                                        and plain data, read back with weights_only=True)
    RUN_DIR/log.jsonl                   one JSON record per log interval and per checkpoint
    RUN_DIR/samples/step-<step>.png     teacher | student across yaw, one row per fixed latent
    RUN_DIR/student.safetensors/.json   the exported student (editkit format, with provenance)

Checkpoints are written atomically (temporary file + rename), so a kill leaves the previous ones intact; the
loader still falls back to the older of the two if the newest cannot be read (a damaged copy, a full disk).
"""

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from editkit.errors import EditkitError
from editkit.io import atomic_write
from training.state import load_latest_state, save_state

CHECKPOINT_FORMAT = "editkit-distill"
CHECKPOINT_VERSION = 1
CHECKPOINT_KEYS = ("format", "version", "step", "elapsed_s", "config", "student", "student_ema", "D", "opt_g",
                   "opt_d")


class RunError(EditkitError):
    """A run folder does not belong to this run, or none of its checkpoints can be read."""


class RunFolder:
    """Reads and writes the files of one run folder (only the main process writes)."""

    def __init__(self, path):
        self.path = Path(path)
        self.config_path = self.path / "run.json"
        self.checkpoint_dir = self.path / "checkpoints"
        self.log_path = self.path / "log.jsonl"
        self.sample_dir = self.path / "samples"
        self.export_path = self.path / "student.safetensors"

    def check_config(self, config: dict, may_change) -> None:
        """Refuse a folder written by another run or by other options (options in `may_change` excepted)."""
        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"{self.path}: exists and is not a folder")
        if not self.config_path.is_file():
            if self.path.is_dir() and any(self.path.iterdir()):
                raise RunError(f"{self.path}: not empty and not a distillation run (no run.json); "
                               "choose a new --out folder")
            return
        try:
            saved = json.loads(self.config_path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise RunError(f"{self.config_path}: not valid JSON ({e})") from None
        for key in sorted(set(saved) | set(config)):
            if key not in saved and not config.get(key):
                continue  # an option newer than the run, left off: the run was trained without it
            if key not in may_change and saved.get(key) != config.get(key):
                raise RunError(f"{self.path} holds a run started with {key}={saved.get(key)!r}, this command has "
                               f"{key}={config.get(key)!r}; resume with the same options or use another --out")

    def write_config(self, config: dict) -> None:
        text = json.dumps(config, indent=2) + "\n"
        atomic_write(self.config_path, lambda tmp: tmp.write_text(text), force=True)

    # ---------------------------------------------------------------------------------------------- checkpoints

    def save_checkpoint(self, state: dict) -> None:
        """Write `state` as checkpoints/state-<step>.pt (atomically; the newest two are kept)."""
        save_state(self.checkpoint_dir, state["step"], {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                                                        **state})

    def load_checkpoint(self, log=print):
        """The newest readable checkpoint (a dict; unreadable ones are reported and skipped), None if none
        (training.state.StateError if there are checkpoints but none can be read)."""
        state = load_latest_state(self.checkpoint_dir, log=log)
        if state is not None and (not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT
                                  or state.get("version") != CHECKPOINT_VERSION
                                  or any(k not in state for k in CHECKPOINT_KEYS)):
            raise RunError(f"{self.checkpoint_dir}: the newest readable checkpoint is not a distillation state "
                           f"(version {CHECKPOINT_VERSION})")
        return state

    # ------------------------------------------------------------------------------------------- log, samples

    def truncate_log(self, step: int) -> None:
        """Drop log records after `step` (written by a run that was killed before its next checkpoint)."""
        if not self.log_path.is_file():
            return
        kept = []
        for line in self.log_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut by a kill
                continue
            if record.get("step", 0) <= step:
                kept.append(line)
        text = "".join(line + "\n" for line in kept)
        atomic_write(self.log_path, lambda tmp: tmp.write_text(text), force=True)

    def log(self, record: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_log(self) -> list:
        """All records of log.jsonl."""
        if not self.log_path.is_file():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def save_samples(self, step: int, grid: np.ndarray) -> None:
        """Write an (H, W, 3) uint8 grid as samples/step-<step>.png."""
        path = self.sample_dir / f"step-{step:08d}.png"
        atomic_write(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"), force=True)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) images in [-1, 1] -> (N, H, W, 3) uint8."""
    images = (images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5
    return images.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def image_grid(rows: list, gap: int = 8) -> np.ndarray:
    """Tile rows of (N, H, W, 3) uint8 image groups: each row is a list of groups shown side by side with a white
    gap between groups (e.g. [teacher views, student views])."""
    height = rows[0][0].shape[1]
    lines = []
    for groups in rows:
        parts = []
        for i, group in enumerate(groups):
            if i:
                parts.append(np.full((height, gap, 3), 255, np.uint8))
            parts.append(np.concatenate(list(group), axis=1))
        lines.append(np.concatenate(parts, axis=1))
    return np.concatenate(lines, axis=0)
