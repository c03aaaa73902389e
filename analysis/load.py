"""Reading runs from Hydra run and multirun folders, with no network.

A run is a folder that :mod:`trpo.io.run_folder` owns: ``.hydra/config.yaml`` (the config),
``progress.csv`` (one row per iteration) and ``status.json``. Every file is read through
:class:`trpo.io.run_folder.RunFolder`, the one reader of each format. Groups are detected from the
config values that differ between runs.

A run's task is the environment it trained on, its ``env.id`` (``Hopper-v5``), whatever the env
option it was composed from is called: ``env=hopper env.id=InvertedPendulum-v5`` is an
InvertedPendulum-v5 run. Its reference returns (``env.random_return``, ``env.reference_return``)
are those of the option, so they count only where the run's id is the option's own id.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import pandas as pd
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from trpo.config import CONF_DIR, is_result_neutral
from trpo.io.run_folder import RunFolder, find_run_folders

log = logging.getLogger("analysis")

# Hydra's group choices worth naming a line by, in order of priority when two keys split the
# runs the same way.
CHOICE_GROUPS = ("ablation", "solver", "advantage", "network")
# Group choices that never name a line: the env is the task (its panel), the logger changes no
# result, and an experiment's choice is the values it sets, which are keys of their own.
OTHER_CHOICES = ("env", "logger", "experiment")
# The env options, one YAML each, whose ``id`` says which environment an option stands for.
ENV_OPTIONS = CONF_DIR / "env"

References = tuple[Optional[float], Optional[float]]  # (random return, reference return)


@dataclass
class Run:
    """One training run: where it is, what it was configured with and what it logged."""

    path: Path
    config: dict[str, Any]  # flattened resolved config, plus the group choices
    progress: pd.DataFrame
    status: str  # RunFolder.state(): completed, running, interrupted or unknown
    complete: bool  # it logged up to its total_steps
    # Its env option's (random, reference) returns; (None, None) if it has none or they are
    # another env's (its env.id is not its option's id).
    references: References = (None, None)

    @property
    def env(self) -> str:
        """The task: the environment id it trained on (``Hopper-v5``), not the option name."""
        return str(self.config["env.id"])

    @property
    def seed(self) -> int:
        return int(self.config["seed"])


@dataclass
class LoadReport:
    """Runs that were loaded and, by path, the ones that were skipped or used incomplete."""

    runs: list[Run] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    incomplete_used: list[tuple[Path, str]] = field(default_factory=list)


class Skip(Exception):
    """Why a run is not used: one line."""


# What reading a config that is not well-formed YAML, or not a config, can raise.
CONFIG_ERRORS = (OSError, ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError,
                 OmegaConfBaseException)


def load_runs(roots: Iterable[Path], include_incomplete: bool = False) -> LoadReport:
    """Load every run below ``roots``; one that cannot be read is skipped, never an abort.

    Skipped, with the reason: runs that failed, runs whose config cannot be read (not YAML,
    no ``env.id``), runs with no well-formed ``progress.csv`` row or whose iterations repeat or
    go backwards, and, unless ``include_incomplete``, runs that have not logged their whole
    budget (running, or interrupted and waiting to be resumed). With ``include_incomplete``
    those are used with their actual length. What :meth:`trpo.io.run_folder.ProgressFile.read`
    found wrong with a ``progress.csv`` it could read (a line cut by a crash, a garbled line)
    is logged as a warning naming the run.
    """
    report = LoadReport()
    foreign: dict[tuple[str, str], list[Path]] = {}  # (env.id, why) -> runs
    for folder in find_run_folders(roots):
        try:
            run, foreign_why = read_run(folder)
        except Skip as why:
            report.skipped.append((folder.path, str(why)))
            continue
        if foreign_why:
            foreign.setdefault((run.env, foreign_why), []).append(run.path)
        if not run.complete:
            total, reached = run_budget(run.config), int(run.progress["env_steps"].iloc[-1])
            why = (f"{run.status}: logged {reached:,} of {total:,} steps" if total else
                   f"{run.status}: no total_steps in its config")
            if not include_incomplete:
                report.skipped.append((run.path, why + " (--include-incomplete uses it)"))
                continue
            report.incomplete_used.append((run.path, why))
        report.runs.append(run)
    for (env_id, why), paths in sorted(foreign.items()):
        log.warning("%d run(s) of %s %s: the reference returns in their config (env."
                    "random_return, env.reference_return) are that env's and are not used for "
                    "them (%s%s)", len(paths), env_id, why, paths[0],
                    f" and {len(paths) - 1} more" if len(paths) > 1 else "")
    return report


def read_run(folder: RunFolder) -> tuple[Run, Optional[str]]:
    """The run in ``folder``, and why its reference returns were dropped (see
    :func:`run_references`); raises :class:`Skip` saying why it cannot be used."""
    state = folder.state()
    if state == "failed":
        error = folder.read_status().get("error")
        raise Skip("failed" + (f" ({error})" if error else ""))
    try:
        config = folder.read_config()
    except CONFIG_ERRORS as error:
        raise Skip(f"its .hydra config cannot be read ({type(error).__name__}: "
                   f"{' '.join(str(error).split())[:200]})") from None
    for key in ("env.id", "seed"):
        if config.get(key) is None:
            raise Skip(f"its config has no {key}")
    read = folder.progress.read()
    if not read.rows or "env_steps" not in read.header:
        raise Skip("; ".join(read.problems) or "progress.csv has no env_steps column")
    iterations = read.iterations()
    if any(b <= a for a, b in zip(iterations, iterations[1:])):
        raise Skip("its progress.csv repeats iterations or goes back (which row holds a "
                   "step's numbers is unclear)")
    for problem in read.problems:
        log.warning("%s: %s (the rows that are whole are used)", folder.path, problem)
    progress = pd.DataFrame(read.rows, columns=read.header).astype(float)
    if progress["env_steps"].isna().any():
        raise Skip("progress.csv has rows without env_steps")
    total = run_budget(config)
    complete = total is not None and progress["env_steps"].iloc[-1] >= total
    references, foreign_why = run_references(config)
    return Run(folder.path, config, progress, state, complete, references), foreign_why


def drop_unmeasured(report: LoadReport, metric: str) -> None:
    """Move the runs that cannot be scored on ``metric`` from ``report.runs`` to
    ``report.skipped``: no such column, every value empty or NaN, or an infinite value (which no
    task returns, and which would make every statistic of its group infinite or NaN)."""
    kept = []
    for run in report.runs:
        if metric not in run.progress:
            report.skipped.append((run.path, f"its progress.csv has no {metric} column"))
            continue
        values = run.progress[metric]
        infinite = np.isinf(values.to_numpy(dtype=float))
        if not values.notna().any():
            report.skipped.append((run.path, f"it never logged {metric} as a number (every "
                                             "value is empty or NaN)"))
        elif infinite.any():
            step = int(run.progress["env_steps"].to_numpy()[infinite.argmax()])
            report.skipped.append((run.path, f"it logged {metric}={values[infinite].iloc[0]} "
                                             f"at {step:,} steps, which no task returns"))
        else:
            kept.append(run)
    report.runs = kept


@functools.cache
def env_option(option: str) -> dict[str, Any]:
    """Env option ``option`` as ``conf/env/<option>.yaml`` states it; empty if there is no such
    option here."""
    try:
        return dict(OmegaConf.to_container(OmegaConf.load(ENV_OPTIONS / f"{option}.yaml")))
    except (OSError, ValueError):
        return {}


def option_env_id(option: str) -> Optional[str]:
    """The ``id`` of env option ``option``; ``None`` if there is no such option here."""
    env_id = env_option(option).get("id")
    return None if env_id is None else str(env_id)


def run_references(config: dict[str, Any]) -> tuple[References, Optional[str]]:
    """The run's (random, reference) returns, and why they were dropped (``None`` if they were
    not): they are its env option's, so they hold only where its ``env.id`` is the option's id.
    A run trained before its option stated them takes the option's, for the same task."""
    references = (config.get("env.random_return"), config.get("env.reference_return"))
    option = config.get("env")
    if references == (None, None):
        stated = env_option(str(option)) if option is not None else {}
        if stated.get("id") is not None and str(stated["id"]) == str(config.get("env.id")):
            return (stated.get("random_return"), stated.get("reference_return")), None
        return references, None
    expected = option_env_id(str(option)) if option is not None else None
    if expected is not None and expected == str(config["env.id"]):
        return references, None
    if option is None:
        why = "name no env option (no .hydra/hydra.yaml), so whose returns they carry is unknown"
    elif expected is None:
        why = (f"were composed from env option {option!r}, which is not in {ENV_OPTIONS}, so "
               "whose returns they carry is unknown")
    else:
        why = f"were composed from env option {option!r} ({expected})"
    return (None, None), why


def task_references(runs: list[Run]) -> dict[str, References]:
    """Per task, the (random, reference) returns its runs agree on; ``(None, None)`` where some
    run has none (or other values)."""
    found: dict[str, set] = {}
    for run in runs:
        found.setdefault(run.env, set()).add(run.references)
    return {env: next(iter(refs)) if len(refs) == 1 else (None, None)
            for env, refs in found.items()}


def run_budget(config: dict[str, Any]) -> Optional[int]:
    """Steps a run would log if it finished: total_steps rounded up to whole iterations."""
    total, per_iteration = config.get("total_steps"), config.get("steps_per_iteration")
    if total is None:
        return None
    if not per_iteration:
        return int(total)
    return math.ceil(int(total) / int(per_iteration)) * int(per_iteration)


def detect_group_keys(runs: list[Run]) -> list[str]:
    """The config keys whose values tell the compared lines apart.

    Group choices come first (``ablation``, ``solver``, ``advantage``, ``network``), then the
    other keys in order. A key qualifies if it is not the seed, the env, the logger or
    experiment choice, an env setting other than ``env.backend``, or a result-neutral setting
    (:func:`trpo.io.run_folder.is_result_neutral`: logging, the run's name, ``reuse_from``, ...),
    and it takes different values among runs that
    share the task (``env.id``) and every key chosen before it: so env-specific values (an
    env-derived ``total_steps``) never qualify, nor do values that follow from a choice (a
    solver's ``_target_``, the settings an ablation option sets), while a sub-key swept within
    one choice (``solver.max_kl``) does.
    """
    keys = sorted({k for run in runs for k in run.config})
    ordered = [k for k in CHOICE_GROUPS if k in keys] + [k for k in keys if k not in CHOICE_GROUPS]
    chosen: list[str] = []
    for key in ordered:
        if (key in ("seed", *OTHER_CHOICES) or is_result_neutral(key)
                or (key.startswith("env.") and key != "env.backend")):
            continue
        if _varies_within(runs, key, ["env.id", *chosen]):
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
