"""The checkpoint file format: checksummed, atomic, and loaded without running code.

A checkpoint file is one line with the SHA-256 of the rest, then a ``torch.save`` payload that
holds only tensors and plain Python values, read back with ``torch.load(weights_only=True)``.
It is written to a temporary file, fsynced and renamed over the newest checkpoint, whose
previous version is kept until then: a crash at any moment leaves at least one complete
checkpoint. A truncated or garbled file fails its checksum and is reported by path. Where the
files live, and which is tried first, is :class:`trpo.io.run_folder.RunFolder`'s business; what
a checkpoint holds is the training loop's (:mod:`trpo.loop`).
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trpo.io.atomic import atomic_write

log = logging.getLogger("trpo")


class CheckpointError(RuntimeError):
    """No usable checkpoint could be read."""


# ------------------------------------------------------------- plain data for weights_only


def to_plain(value: Any) -> Any:
    """NumPy arrays and scalars as tensors and Python numbers, recursively (``weights_only``
    loading accepts tensors, containers and primitives, not NumPy objects)."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value)).clone()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(v) for v in value)
    return value


def from_plain(value: Any) -> Any:
    """The inverse of :func:`to_plain`."""
    if isinstance(value, dict):
        if set(value) == {"__ndarray__"}:
            return value["__ndarray__"].numpy()
        return {k: from_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(from_plain(v) for v in value)
    return value


# --------------------------------------------------------------------------------- files


def write_checkpoint_file(path: Path, previous: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically as ``path``; the file it replaces becomes ``previous``."""
    buffer = io.BytesIO()
    torch.save(to_plain(state), buffer)
    payload = buffer.getvalue()
    atomic_write(path, hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload, previous)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """One checkpoint file, checked against its checksum; raises ``CheckpointError``."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read ({error})") from error
    digest, _, payload = data.partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(f"{path}: truncated or corrupted (checksum mismatch)")
    try:
        return from_plain(torch.load(io.BytesIO(payload), weights_only=True))
    except Exception as error:  # a file that passed its checksum but is not ours
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "Unsupported global" in line),
                      lines[0] if lines else type(error).__name__)
        raise CheckpointError(f"{path}: not a checkpoint of this project ({reason})") from error


def nonfinite_entries(tree: Any, prefix: str = "") -> list[str]:
    """The names (``value.0.weight``) of the floating-point tensors and arrays in ``tree`` that
    hold a NaN or an infinity."""
    if isinstance(tree, dict):
        return [name for key, value in tree.items()
                for name in nonfinite_entries(value, f"{prefix}{key}.")]
    if isinstance(tree, (list, tuple)):
        return [name for i, value in enumerate(tree)
                for name in nonfinite_entries(value, f"{prefix}{i}.")]
    if isinstance(tree, torch.Tensor) and tree.is_floating_point():
        return [] if bool(torch.isfinite(tree).all()) else [prefix.rstrip(".")]
    if isinstance(tree, np.ndarray) and np.issubdtype(tree.dtype, np.floating):
        return [] if bool(np.isfinite(tree).all()) else [prefix.rstrip(".")]
    return []
