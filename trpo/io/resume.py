"""The resume policy: which checkpoint a run goes on from, which config keys may change, and
when a finished run elsewhere may be copied instead of trained again.

A checkpoint carries the run's metric history (every row up to its iteration), so resuming
rewrites ``progress.csv`` from it: whatever happened to the file (a cut line, rows deleted,
duplicated or garbled, the file emptied), the resumed run ends with exactly the rows of an
uninterrupted one. A checkpoint without a history (a format from before 2026-12) is refused,
touching nothing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig

from trpo.config import ConfigError, config_changes, twin_test
from trpo.io.checkpoint import CheckpointError
from trpo.io.run_folder import HistoryError, RunFolder, find_run_folders

log = logging.getLogger("trpo")


def proven_history(checkpoint: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of iterations 1..N of the run that wrote ``checkpoint`` (N its iteration), from
    the history it carries; raises :class:`HistoryError` if it does not hold each of them."""
    iteration = int(checkpoint["iteration"])
    history = checkpoint.get("history")
    if history is None:
        raise HistoryError("the checkpoint carries no history of its rows (a format from before "
                           "2026-12); resume=false starts afresh beside it")
    if [int(row["iteration"]) for row in history] != list(range(1, iteration + 1)):
        raise HistoryError(f"the checkpoint's history does not hold iterations 1-{iteration}")
    return [dict(row) for row in history]


@dataclass
class Candidate:
    """A checkpoint that passed its checksum: its file, its contents, the run that wrote it."""

    path: Path
    state: dict[str, Any]
    folder: RunFolder


@dataclass
class StartPlan:
    """How a run starts: from nothing, or from the first of ``candidates`` that loads."""

    candidates: list[Candidate] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # checkpoints that could not be read
    reused_from: Optional[Path] = None  # a finished twin whose checkpoint was copied here


def plan_start(cfg: DictConfig, folder: RunFolder) -> StartPlan:
    """Decide how the run in ``folder`` starts, before anything is built or written.

    Raises :class:`trpo.config.ConfigError` if the newest readable checkpoint was written with
    a config that differs in a key that may not change, and :class:`CheckpointError` if
    checkpoints exist but none can be read.
    """
    plan = StartPlan()
    for path, state in folder.read_checkpoints():
        if isinstance(state, Exception):
            plan.problems.append(str(state))
        else:
            plan.candidates.append(Candidate(path, state, folder))
    if folder.has_checkpoint() and not plan.candidates:
        raise CheckpointError("no usable checkpoint: " + "; ".join(plan.problems))
    if plan.candidates:
        newest = plan.candidates[0].state
        changed = config_changes(newest["config"], cfg)
        if changed:
            raise ConfigError("resume", f"the config differs from the checkpoint's in "
                              f"{', '.join(changed)}; resume=false starts afresh in a new "
                              "directory", True)
        # A run trains total_steps in whole iterations, rounded up (TrainingLoop); rows past
        # that would be more than the config says.
        iterations = math.ceil(cfg.total_steps / cfg.steps_per_iteration)
        trained = int(newest["iteration"])
        if trained > iterations:
            raise ConfigError("total_steps", f"must be at least "
                              f"{(trained - 1) * cfg.steps_per_iteration + 1:,}: the run in "
                              f"{folder.path} has trained {trained} iterations of "
                              f"{cfg.steps_per_iteration:,} steps; resume=false starts afresh "
                              "in a new directory", cfg.total_steps)
        return plan
    if cfg.reuse_from is not None and cfg.resume:  # resume=false asks for a run of its own
        twin = find_finished_twin(Path(cfg.reuse_from), cfg, folder)
        if twin is not None:
            source, path, checkpoint = twin
            plan.candidates.append(Candidate(path, checkpoint, source))
            plan.reused_from = source.path
    return plan


def find_finished_twin(search_root: Path, cfg: DictConfig, folder: RunFolder
                       ) -> Optional[tuple[RunFolder, Path, dict[str, Any]]]:
    """A completed run below ``search_root`` (other than ``folder``) whose config computes
    what ``cfg`` asks for, with the same total_steps, whose final checkpoint proves its whole
    history: the run, the checkpoint's path and contents; ``None`` if there is none."""
    here = folder.path.resolve()
    iterations = -(-cfg.total_steps // cfg.steps_per_iteration)
    trains_the_same = twin_test(cfg)
    for source in find_run_folders([search_root]):
        if source.path == here or source.state() != "completed":
            continue
        try:  # the recorded config first: reading every checkpoint of a large tree takes minutes
            if not trains_the_same(source.read_resolved_config()):
                continue
        except Exception:
            pass  # no readable record: the checkpoint's own config decides
        path, checkpoint = next(source.read_checkpoints(), (None, None))
        if not isinstance(checkpoint, dict):
            continue  # damaged, or none: not one to copy
        saved = checkpoint["config"]
        if not trains_the_same(saved):
            continue
        if int(checkpoint["iteration"]) != iterations:
            continue
        try:
            proven_history(checkpoint)
        except HistoryError as error:
            log.warning("not reusing %s: %s", source.path, error)
            continue
        log.info("reusing %s: it was trained with this config (reuse_from=%s)", source.path,
                 search_root)
        return source, path, checkpoint
