"""Small file helpers shared by the writers of weights, latents and images."""

import os
import uuid
from pathlib import Path
from typing import Callable

from editkit.errors import OutputExistsError


def atomic_write(path, writer: Callable[[Path], None], force: bool = False) -> Path:
    """Write `path` through `writer(temp_path)`, then move it into place in one step.

    The temporary file sits in the same folder, so `os.replace` is atomic and a crash never leaves a half-written
    `path`. An existing `path` is refused unless `force` is true.
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; use --force (force=True) to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
