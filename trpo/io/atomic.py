"""Writes that a crash cannot leave half done: a synced temporary file renamed over the target."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Optional


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, previous: Optional[Path] = None) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and a rename, so a crash
    leaves the old file or the new one; with ``previous``, the file replaced is kept there."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    if previous is not None and path.exists():
        os.replace(path, previous)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def json_safe(value: Any) -> Any:
    """``value`` with NaN and ±inf as ``None``, so that the JSON written is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
