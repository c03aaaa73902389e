"""Which code computed a run: the git commit of this checkout, the versions that set the numbers and
the CPU (another CPU's kernels round differently, so a run is exact on one CPU only).

Recorded in every ``status.json`` and checkpoint. Resuming a run, or copying a finished twin
(``reuse_from``), trusts that the code computes what it computed when the run was trained; when
the recorded code differs from the code now running, :func:`code_differences` names what changed
so the trainer can say so.
"""

from __future__ import annotations

import functools
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

# The packages whose versions change what a run computes.
PACKAGES = ("torch", "numpy", "gymnasium", "mujoco")
_CHECKOUT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> Optional[str]:
    """``git args`` run in this package's checkout; ``None`` if git or the checkout is missing."""
    if shutil.which("git") is None:
        return None
    try:
        done = subprocess.run(["git", *args], cwd=_CHECKOUT, capture_output=True, text=True,
                              timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what :mod:`platform` knows of it."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


@functools.cache
def code_version() -> dict[str, Any]:
    """``commit`` (``None`` outside a git checkout), ``dirty`` (tracked files edited since that
    commit), the Python and package versions, and the ``cpu``."""
    commit = _git("rev-parse", "HEAD")
    edited = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"commit": commit, "dirty": bool(edited) if commit else None,
            "python": platform.python_version(), **versions, "cpu": cpu_name()}


def code_differences(recorded: Optional[dict[str, Any]]) -> list[str]:
    """What differs between a recorded :func:`code_version` and the running one, as
    ``"key: recorded → now"``; unknown on either side is not a difference."""
    if not recorded:
        return []
    now = code_version()
    return [f"{key}: {recorded[key]} → {now[key]}" for key in now
            if recorded.get(key) is not None and now[key] is not None
            and recorded[key] != now[key]]
