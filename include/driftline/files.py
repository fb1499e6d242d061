"""Files that are whole or absent: write to a temporary file beside the target, fsync, rename.

A reader never sees a torn run file, report or ``stack.json``: a crash leaves the old file or
the new one. Files holding secrets are created 0600 before a byte is written.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: str | bytes, *, mode: int = 0o644) -> Path:
    """Replace ``path`` with ``data`` in one step (same directory, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


def write_json(path: Path, value: Any, *, mode: int = 0o644) -> Path:
    """``value`` as indented JSON, written atomically."""
    return write_atomic(path, json.dumps(value, indent=2, default=str) + "\n", mode=mode)
