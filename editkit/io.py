"""Writing outputs safely: whole files or none, no overwriting without --force, clear errors for unwritable folders.

    check_outputs([out / "a.png", out / "b.json"], force)   # before the slow work: exists? writable?
    with output_group():                                     # both files appear at the end, or neither does
        atomic_write(out / "a.png", lambda tmp: image.save(tmp, format="PNG"), force=force)
        atomic_write(out / "b.json", lambda tmp: tmp.write_text(text), force=force)

A file is written under a temporary name in its own folder and renamed into place (`os.replace`, atomic on one
file system), so an error or a kill -9 mid-write never leaves a half-written output; at worst a hidden
`.<name>.<random>.tmp` stays behind after a kill. Inside `output_group()` the renames wait until the block ends.
A forced rerun into the same folder removes what the earlier run wrote there and this one did not
(`remove_replaced`), so no output of an older run is left beside the new ones.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from pathlib import Path
from typing import Callable

from editkit.errors import OutputError, OutputExistsError

_pending: ContextVar[list | None] = ContextVar("editkit_pending_outputs", default=None)


def _remove(tmp: Path) -> None:
    with suppress(OSError):  # already gone, or its folder never existed
        tmp.unlink()


def _cannot_write(path, error: OSError) -> OutputError:
    reason = error.strerror or " ".join(str(error).split())
    return OutputError(f"cannot write {path}: {reason}; choose another output folder (or free some disk space)")


def atomic_write(path, writer: Callable[[Path], None], force: bool = False) -> Path:
    """Write `path` through `writer(temp_path)`, then move it into place in one step.

    An existing `path` is refused unless `force` is true. A writer that fails leaves no temporary file and the old
    `path` untouched; an OSError (read-only folder, full disk) becomes a one-line `OutputError`.
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; use --force (force=True) to overwrite it")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    pending = _pending.get()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(tmp)
        if pending is None:
            os.replace(tmp, path)
        else:
            pending.append((tmp, path))
    except BaseException as e:
        _remove(tmp)
        if isinstance(e, OSError):
            raise _cannot_write(path, e) from None
        raise
    return path


@contextmanager
def output_group():
    """Files written by `atomic_write` inside the block appear together when it ends; if it fails, none appear.

    Nested groups join the outermost one.
    """
    if _pending.get() is not None:
        yield
        return
    pending = []
    token = _pending.set(pending)
    try:
        yield
        for tmp, path in pending:
            try:
                os.replace(tmp, path)
            except OSError as e:
                raise _cannot_write(path, e) from None
    finally:
        _pending.reset(token)
        for tmp, _ in pending:  # left only if the block or a rename failed
            _remove(tmp)


def staged(path) -> Path:
    """Where the content of `path` is right now: its temporary file while an output group holds it back."""
    path = Path(path)
    return next((tmp for tmp, target in reversed(_pending.get() or []) if target == path), path)


def check_writable(folder) -> None:
    """A one-line `OutputError` unless files can be created in `folder` (created later if it does not exist yet)."""
    folder = Path(folder)
    try:
        probe = folder
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise OutputError(f"cannot write into {folder}: {probe} is a file, not a folder; choose another "
                              "output folder")
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise OutputError(f"cannot write into {folder}: {e.strerror or e}; choose another output folder") from None


def check_outputs(paths, force: bool = False) -> None:
    """Before the slow work: refuse existing outputs unless `force`, and folders that cannot be written into."""
    paths = [Path(p) for p in paths]
    existing = next((p for p in paths if p.exists()), None)
    if existing is not None and not force:
        raise OutputExistsError(f"{existing} already exists; use --force to overwrite it")
    for folder in dict.fromkeys(p.parent for p in paths):
        check_writable(folder)


def remove_replaced(folder, previous, written) -> list[Path]:
    """After a forced rerun into `folder`: delete the earlier run's files (`previous`: names relative to `folder`)
    that this run did not write again (`written`: paths). Names reaching outside `folder` are ignored; returns the
    files removed."""
    folder = Path(folder).resolve()
    kept = {Path(p).resolve() for p in written}
    removed = []
    for name in previous:
        path = (folder / name).resolve()
        if folder in path.parents and path not in kept and path.is_file():
            _remove(path)
            removed.append(path)
    return removed
