"""A run's lifecycle: ``train(cfg, run_dir) -> final return``.

In order: the config is checked, and the run folder (one that holds files this framework did
not write is refused): nothing is built or written before they pass; the run folder is locked,
so one process trains in it; the resume policy (:mod:`trpo.io.resume`) picks the checkpoint to
go on from; ``status.json`` says ``running`` and the config is recorded; the
:class:`trpo.loop.TrainingLoop` trains the run's :class:`trpo.learner.Learner`. The run ends
``completed``, ``failed`` (with the error), ``pruned`` (a tuning trial its study stopped,
:mod:`trpo.tuning`) or ``interrupted``: SIGINT or SIGTERM stop it at the end of the iteration
under way, with a checkpoint (a second signal stops it at once, its last checkpoint kept), and
:class:`RunInterrupted` says how to resume. Started again in the same folder, a run resumes
from its last checkpoint; ``resume=false`` starts afresh in a new folder beside it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shlex
import signal
import threading
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from trpo.config import ConfigError, validate_config
from trpo.envs.checks import check_envs
from trpo.io.atomic import is_storage_error
from trpo.io.logger import RunContext, check_writers, make_logger
from trpo.io.resume import plan_start
from trpo.io.run_folder import RunFolder
from trpo.learner import TrainingError, make_learner  # noqa: F401  (TrainingError re-exported)
from trpo.loop import StopRequested, TrainingLoop, TrialPruned
from trpo.scores import FINAL_WINDOW, final_score_of_rows
from trpo.tuning import reporter_for

log = logging.getLogger("trpo")


class RunInterrupted(Exception):
    """The run stopped on a signal, its state checkpointed; ``str(error)`` is one line saying
    where it stopped and the command that resumes it. ``signal`` is the signal's number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signal = signum


class StorageFull(Exception):
    """The run folder's storage refused a write (full, read-only, over quota); the run stopped
    and its folder can resume from its last checkpoint. ``str(error)`` is one line."""


class StopSignals:
    """While active, SIGINT and SIGTERM ask the run to stop at its next safe point; a second
    one stops it at once (``KeyboardInterrupt``). Only in the main thread, where Python runs
    signal handlers; the previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def requested(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        log.warning("%s received: stopping at the end of this iteration, with a checkpoint "
                    "(send it again to stop at once)", signal.Signals(signum).name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def fresh_run_dir(run_dir: Path) -> Path:
    """A new folder beside ``run_dir`` for ``resume=false``: ``<name>_restart<n>``."""
    number = 1
    while (candidate := run_dir.with_name(f"{run_dir.name}_restart{number}")).exists():
        number += 1
    candidate.mkdir(parents=True)
    return candidate


def train(cfg: DictConfig, run_dir: str | Path, run_name: Optional[str] = None, *,
          hydra_config: Optional[DictConfig] = None, overrides: Optional[list[str]] = None,
          resume_command: Optional[str] = None, console_tag: Optional[str] = None) -> float:
    """Train one agent as ``cfg`` says, logging every iteration into ``run_dir``.

    ``hydra_config`` and ``overrides`` (from ``run.py``) are recorded in ``.hydra/`` with the
    config; ``resume_command`` is what an interrupted run tells the user to run again;
    ``console_tag`` starts each console line (a sweep's job, ``[#3 hopper trpo s1]``).

    Raises, before anything is built or written: :class:`trpo.config.ConfigError` for a bad
    value, or a checkpoint written with another config; :class:`trpo.io.run_folder.RunFolderBusy`
    if another process trains in ``run_dir``; :class:`trpo.io.checkpoint.CheckpointError` if
    checkpoints exist but none is usable. While training: :class:`RunInterrupted` on SIGINT or
    SIGTERM, :class:`StorageFull` when the folder's storage refuses a write,
    :class:`TrainingError` and the errors of environments. Returns the last
    evaluation's mean return.
    """
    validate_config(cfg)
    check_envs(cfg)
    check_writers(cfg.logger)
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    if folder.lock.is_held():  # a run trains there: say so, whatever else the folder holds
        raise folder.lock.busy()
    unproven = folder.unproven()
    if unproven:
        shown = ", ".join(unproven[:4]) + (", ..." if len(unproven) > 4 else "")
        raise ConfigError("hydra.run.dir", f"it holds files this framework did not write "
                          f"({shown}), which a run would replace; use a new or empty folder "
                          "(nothing was changed)", str(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    if folder.has_run() and not cfg.resume:
        folder = RunFolder(fresh_run_dir(run_dir))
        log.info("resume=false: starting afresh in %s", folder.path)
    was_empty = not any(folder.path.iterdir())
    try:
        folder.lock.acquire()
    except OSError as error:
        if is_storage_error(error):
            raise StorageFull(storage_message(folder, error, None, resume_command)) from None
        raise
    loop = None
    try:
        plan = plan_start(cfg, folder)
        loop = TrainingLoop(cfg, folder, make_learner(cfg))
        return _train(cfg, folder, loop, plan, run_name or f"{cfg.env.id}-s{cfg.seed}",
                      hydra_config, overrides, resume_command, console_tag)
    except OSError as error:
        if is_storage_error(error):
            raise StorageFull(storage_message(folder, error, loop, resume_command)) from None
        raise
    finally:
        if loop is not None:
            loop.close()
        with contextlib.suppress(OSError):  # rows a full disk refused were reported already
            folder.progress.close()
        folder.lock.release()
        if was_empty and not folder.has_run():  # it failed before it started: leave no trace
            folder.lock.path.unlink(missing_ok=True)


def storage_message(folder: RunFolder, error: OSError, loop: Optional[TrainingLoop],
                    resume_command: Optional[str]) -> str:
    """One line: which write the storage refused, where the run stopped, how to resume."""
    if loop is None or not loop.checkpointed_at:
        where = "before its first checkpoint"
    else:
        where = (f"at iteration {loop.iteration}; the checkpoint of iteration "
                 f"{loop.checkpointed_at} is kept")
    return (f"error: {folder.path} cannot be written ({error.strerror}: "
            f"{error.filename or 'a file of the run'}); the run stopped {where}; once there "
            f"is room, resume: {resume_command or 'run the same command again'}")


def _train(cfg, folder, loop, plan, run_name, hydra_config, overrides, resume_command,
           console_tag):
    started = loop.resume(plan)
    if started and plan.reused_from is None:
        log.info("resuming %s from iteration %d (%d environment steps)", folder.path,
                 loop.iteration, loop.iteration * cfg.steps_per_iteration)
    elif not started and (folder.path / "progress.csv").exists():
        log.warning("%s: replacing the rows of a run that stopped before its first checkpoint",
                    folder.progress.path)
        folder.progress.rewrite([])
    # Where a reused run came from stays in its status when it is started again.
    provenance = ({"reused_from": str(plan.reused_from)} if plan.reused_from is not None
                  else {k: v for k, v in folder.read_status().items() if k == "reused_from"})
    # The status first: it is what proves the folder this framework's (RunFolder.unproven).
    folder.write_status("running", total_steps=cfg.total_steps, iteration=loop.iteration,
                        **provenance, **cluster_job())
    folder.write_config(cfg, hydra_config, overrides)
    logger = make_logger(RunContext(cfg.logger, folder, run_name,
                                    OmegaConf.to_container(cfg, resolve=True), cfg.total_steps,
                                    console_tag), loop.logger_state)
    loop.logger_state = logger.state_dict()
    if plan.reused_from is not None:
        logger.replay(loop.history)
    stop = StopSignals()
    reporter = reporter_for(cfg.trial)
    try:
        with stop:  # also over the completion: a first signal there lets the run complete
            final_return = loop.run(logger, stop.requested,
                                    reporter.report if reporter is not None else None)
            logger.close("completed")
            folder.save_agent(loop.agent())
            folder.write_status("completed", final_eval_return=final_return,
                                iteration=loop.iteration, **provenance, **cluster_job())
        log.info("%s", closing_line(folder.path, loop.history))
    except TrialPruned as pruned:
        _record_end(logger, folder, "pruned", iteration=loop.iteration, **provenance)
        log.info("%s: %s by its study's pruner (trial %d); the checkpoint is kept", folder.path,
                 pruned, cfg.trial.number)
        return math.nan
    except (StopRequested, KeyboardInterrupt, SystemExit) as stop_error:
        signum = stop.received or (signal.SIGINT if isinstance(stop_error, KeyboardInterrupt)
                                   else None)  # None: an exit asked for (a cluster's requeue)
        how = (f"stopped after iteration {loop.iteration}" if isinstance(
            stop_error, StopRequested) else f"stopped during iteration {loop.iteration}")
        _record_end(logger, folder, "interrupted", iteration=loop.iteration,
                    checkpoint_iteration=loop.checkpointed_at,
                    signal=signal.Signals(signum).name if signum else "exit", **provenance)
        message = (f"interrupted: {how}; the checkpoint of iteration {loop.checkpointed_at} "
                   f"is kept in {folder.path}" if loop.checkpointed_at else
                   f"interrupted: {how}, before the first checkpoint")
        message += f"; to resume: {resume_command or 'run the same command again'}"
        if signum is None:
            log.warning("%s", message)
            raise  # a cluster's requeue (submitit) exits through here
        raise RunInterrupted(message, signum) from None
    except BaseException as error:
        if is_storage_error(error):  # the storage's fault: the run can resume once it has room
            _record_end(logger, folder, "interrupted", iteration=loop.iteration,
                        checkpoint_iteration=loop.checkpointed_at, **provenance)
        else:
            _record_end(logger, folder, "failed", iteration=loop.iteration,
                        error=f"{type(error).__name__}: {error}", **provenance)
        raise
    return final_return


def closing_line(run_dir: Path, history: list[dict[str, Any]]) -> str:
    """What a finished run prints last: its final score as the analysis computes it, where its
    folder and agent are, and the command that watches the agent."""
    shown = os.path.relpath(run_dir) if run_dir.is_relative_to(Path.cwd()) else str(run_dir)
    score = final_score_of_rows(history)
    return (f"finished: final score {score:.1f} (mean evaluation return over the last "
            f"{FINAL_WINDOW:.0%} of steps); run folder {shown}, agent {shown}/agent.pt; watch "
            f"it: python -m trpo.evaluate {shlex.quote(shown)} --video {shlex.quote(shown)}.mp4")


def _record_end(logger, folder: RunFolder, status: str, **details) -> None:
    """Close the logger and record ``status`` where that still works (a full disk may refuse
    even this); the original error is what the caller raises."""
    for record in (lambda: logger.close(status),
                   lambda: folder.write_status(status, **details, **cluster_job())):
        try:
            record()
        except Exception as secondary:
            # On a full disk this fails too; a "running" record whose lock is free already
            # reads as interrupted, so only other failures are worth a line.
            if not is_storage_error(secondary):
                log.error("while recording that the run %s: %s", status, secondary)


def cluster_job() -> dict[str, Any]:
    """The SLURM job this process runs in, if any: ``slurm_job_id`` as squeue and submitit's
    folders name it (``<array id>_<task>`` for a job array's task, whose own SLURM_JOB_ID is
    another number) and ``slurm_restart_count`` (how often it was requeued)."""
    env = os.environ
    if "SLURM_JOB_ID" not in env:
        return {}
    job = (f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
           if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env
           else env["SLURM_JOB_ID"])
    return {"slurm_job_id": job, "slurm_restart_count": int(env.get("SLURM_RESTART_COUNT") or 0)}
