"""Writes that a crash cannot leave half done: a synced temporary file renamed over the target."""

from __future__ import annotations

import errno
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
    try:
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException as error:  # a full disk, a signal: no half-written file stays behind
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and not error.filename:  # say which file (fsync does not)
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise
    if previous is not None and path.exists():
        os.replace(path, previous)
    os.replace(tmp, path)
    fsync_dir(path.parent)


# What writing to a folder raises when the storage, not the run, is at fault: full, over quota,
# read-only, a file-size limit, a failing device.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO})


def is_storage_error(error: BaseException) -> bool:
    """Whether ``error`` says the storage cannot take a write (see :data:`STORAGE_ERRNOS`)."""
    return isinstance(error, OSError) and error.errno in STORAGE_ERRNOS


def json_safe(value: Any) -> Any:
    """``value`` with NaN and ±inf as ``None``, so that the JSON written is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
