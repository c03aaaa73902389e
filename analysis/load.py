"""Reading runs from Hydra run and multirun folders, with no network.

A run is a folder with ``.hydra/config.yaml`` (the resolved config) and, once it has started,
``progress.csv`` (one row per iteration) and ``status.json`` (``running``, ``completed`` or
``failed``). Groups are detected from the config values that differ between runs.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd
from omegaconf import OmegaConf

from trpo.config import flatten

log = logging.getLogger("analysis")

# Hydra's group choices worth naming a line by, in order of priority when two keys split the
# runs the same way.
CHOICE_GROUPS = ("ablation", "solver", "advantage", "network")
# Keys that never define a group: the seed varies within a group, logging changes no result.
IGNORED_KEYS = ("seed", "logger.", "name")


class NoRunsError(RuntimeError):
    """No usable run was found below the given folders."""


@dataclass
class Run:
    """One training run: where it is, what it was configured with and what it logged."""

    path: Path
    config: dict[str, Any]  # flattened resolved config, plus the group choices
    progress: pd.DataFrame
    status: str  # completed, running, failed, or unknown (no status.json)
    complete: bool  # it logged up to its total_steps

    @property
    def env(self) -> str:
        return str(self.config["env"])

    @property
    def seed(self) -> int:
        return int(self.config["seed"])


@dataclass
class LoadReport:
    """Runs that were loaded and, by path, the ones that were skipped or used incomplete."""

    runs: list[Run] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    incomplete_used: list[tuple[Path, str]] = field(default_factory=list)


def find_run_dirs(roots: Iterable[Path]) -> list[Path]:
    """Every folder below ``roots`` (or a root itself) holding ``.hydra/config.yaml``."""
    found = set()
    for root in roots:
        root = Path(root)
        if (root / ".hydra" / "config.yaml").exists():
            found.add(root.resolve())
        found.update(p.parent.parent.resolve() for p in root.rglob(".hydra/config.yaml"))
    return sorted(found)


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's flattened resolved config; ``env``, ``solver``... are the Hydra group choices."""
    # Hydra saves the config with its interpolations (total_steps: ${env.default_steps}).
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    config = flatten(OmegaConf.to_container(saved, resolve=True))
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    choices = {}
    if hydra_file.exists():
        runtime = OmegaConf.load(hydra_file).hydra.get("runtime", {})
        choices = OmegaConf.to_container(runtime.get("choices", {}), resolve=False)
    for group in ("env", *CHOICE_GROUPS):
        choice = choices.get(group) or config.get(f"{group}.id") or config.get(f"{group}._target_")
        if choice is not None:  # a group left unchosen (ablation: null) is not a key
            config[group] = choice
    return config


def read_progress(path: Path) -> tuple[pd.DataFrame, Optional[str]]:
    """``progress.csv`` as a frame, dropping a last line cut short by a crash (with a note)."""
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    if not rows:
        return pd.DataFrame(), "progress.csv is empty"
    header, body = rows[0], rows[1:]
    note = None
    if body and len(body[-1]) != len(header):
        body, note = body[:-1], "its last progress.csv line was cut short and is ignored"
    frame = pd.DataFrame(body, columns=header).replace("", math.nan)
    return frame.apply(pd.to_numeric, errors="coerce"), note


def run_status(run_dir: Path) -> str:
    """``status.json``'s status (running, completed, failed); ``unknown`` if it cannot be read.
    (:func:`trpo.train.read_status` returns the whole record.)"""
    try:
        return str(json.loads((run_dir / "status.json").read_text())["status"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def load_runs(roots: Iterable[Path], include_incomplete: bool = False) -> LoadReport:
    """Load every run below ``roots``.

    Skipped, with the reason: runs marked failed, runs with no or an empty ``progress.csv``,
    and, unless ``include_incomplete``, runs that have not logged their whole budget (still
    going, or stopped). With ``include_incomplete`` those are used with their actual length.
    """
    report = LoadReport()
    for run_dir in find_run_dirs(roots):
        status = run_status(run_dir)
        if status == "failed":
            report.skipped.append((run_dir, "marked failed in status.json"))
            continue
        if not (run_dir / "progress.csv").exists():
            report.skipped.append((run_dir, "no progress.csv"))
            continue
        progress, note = read_progress(run_dir / "progress.csv")
        if progress.empty or "env_steps" not in progress:
            report.skipped.append((run_dir, note or "progress.csv has no rows"))
            continue
        config = read_config(run_dir)
        total = _budget(config)
        reached = int(progress["env_steps"].iloc[-1])
        complete = total is not None and reached >= total
        if note:
            log.warning("%s: %s", run_dir, note)
        if not complete:
            why = (f"{status}: logged {reached:,} of {total:,} steps" if total else
                   f"{status}: no total_steps in its config")
            if not include_incomplete:
                report.skipped.append((run_dir, why + " (--include-incomplete uses it)"))
                continue
            report.incomplete_used.append((run_dir, why))
        report.runs.append(Run(run_dir, config, progress, status, complete))
    return report


def _budget(config: dict[str, Any]) -> Optional[int]:
    """Steps the run would log if it finished: total_steps rounded up to whole iterations."""
    total, per_iteration = config.get("total_steps"), config.get("steps_per_iteration")
    if total is None:
        return None
    if not per_iteration:
        return int(total)
    return math.ceil(int(total) / int(per_iteration)) * int(per_iteration)


def detect_group_keys(runs: list[Run]) -> list[str]:
    """The config keys whose values tell the compared lines apart.

    Group choices come first (``ablation``, ``solver``, ``advantage``, ``network``), then the
    other keys in order. A key qualifies if it is not the seed or a logging setting and it takes
    different values among runs that share the env and every key chosen before it: so
    env-specific values (``env.id``, an env-derived ``total_steps``) never qualify, nor do
    values that follow from a choice (a solver's ``_target_``, the settings an ablation
    option sets), while a sub-key swept within one choice (``solver.max_kl``) does.
    """
    keys = sorted({k for run in runs for k in run.config})
    ordered = [k for k in CHOICE_GROUPS if k in keys] + [k for k in keys if k not in CHOICE_GROUPS]
    chosen: list[str] = []
    for key in ordered:
        if key == "env" or key.startswith(IGNORED_KEYS) or key.startswith("env."):
            continue
        if _varies_within(runs, key, ["env", *chosen]):
            chosen.append(key)
    return chosen


def _varies_within(runs: list[Run], key: str, by: list[str]) -> bool:
    """Whether ``key`` takes two values among runs that agree on every key of ``by``."""
    values: dict[tuple, set] = {}
    for run in runs:
        values.setdefault(tuple(run.config.get(k) for k in by), set()).add(run.config.get(key))
    return any(len(v) > 1 for v in values.values())


def group_label(run: Run, keys: list[str]) -> str:
    """The line's name: ``trpo``, ``trpo, gae`` or ``solver.max_kl=0.05``."""
    if not keys:
        return str(run.config.get("solver", "runs"))
    return values_label({key: run.config.get(key) for key in keys})


def values_label(values: dict) -> str:
    """``key=value`` for each item, joined by commas; a choice group's option alone (``trpo``)."""
    return ", ".join(str(value) if key in CHOICE_GROUPS else f"{key}={value}"
                     for key, value in values.items())
