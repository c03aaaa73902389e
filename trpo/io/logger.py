"""Metric logging: one small writer interface, with CSV, W&B, TensorBoard and console back ends.

A row is a flat mapping from metric name to a number, or ``None`` for "not measured in this
iteration" (written as an empty CSV cell and left out of the W&B step). ``progress.csv``'s
format belongs to :class:`trpo.io.run_folder.ProgressFile`; its columns are fixed by the first row.
"""

from __future__ import annotations

import logging
import math
import re
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Mapping, Optional

from trpo.config import LoggerConfig, WandbMode
from trpo.io.run_folder import ProgressFile, RunFolder

log = logging.getLogger("trpo")

Row = Mapping[str, Optional[float]]

# The TensorBoard event files' folder in a run folder.
TENSORBOARD = "tensorboard"


class MetricWriter(ABC):
    """A destination for one row of metrics per iteration."""

    @abstractmethod
    def write(self, row: Row) -> None:
        """Record one iteration's row."""

    def close(self, status: str = "completed") -> None:
        """Flush and release; ``status`` is how the run ended: ``completed``, ``interrupted``
        or ``failed``."""


class CSVWriter(MetricWriter):
    """``progress.csv``, a line per iteration, flushed at once (synced with each checkpoint).

    An existing file (a resumed run's, rewritten from its checkpoint) is appended to under its
    own header.
    """

    def __init__(self, progress: ProgressFile):
        self.progress = progress

    def write(self, row: Row) -> None:
        dropped = self.progress.append(row)
        if dropped:
            log.warning("%s: dropping columns not in its header: %s", self.progress.path, dropped)

    def close(self, status: str = "completed") -> None:
        self.progress.close()


class WandbWriter(MetricWriter):
    """A W&B run whose x-axis is ``env_steps``; finished on close, also after an error.

    ``resume_id`` continues that run. Online, W&B appends to it. Offline, each process writes
    its own ``wandb/offline-run-<time>-<id>`` folder, all under the run's one id and marked as
    resuming it (wandb >= 0.30), so that ``wandb sync <run dir>/wandb`` uploads them, in order
    of start time, as one W&B run.
    """

    # Seconds to wait for W&B to start before training goes on without it.
    INIT_TIMEOUT_S = 60

    def __init__(self, cfg: LoggerConfig, run_dir: Path, run_name: str,
                 config: dict[str, Any], resume_id: Optional[str] = None):
        import wandb

        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=cfg.group, name=run_name,
            tags=list(cfg.tags), config=config, dir=str(run_dir), mode=cfg.mode.value,
            id=resume_id, resume="allow" if resume_id else None,
            # A joblib worker runs several jobs in one process: never continue a leftover run.
            reinit="finish_previous",
            settings=wandb.Settings(quiet=True, silent=not cfg.wandb_messages, console="off",
                                    init_timeout=self.INIT_TIMEOUT_S))
        self.run.define_metric("env_steps")
        self.run.define_metric("*", step_metric="env_steps")

    def write(self, row: Row) -> None:
        self.run.log({k: v for k, v in row.items() if v is not None})

    def close(self, status: str = "completed") -> None:
        self.run.summary["run_status"] = status
        self.run.finish(exit_code=1 if status == "failed" else 0)


class TensorBoardWriter(MetricWriter):
    """TensorBoard scalars in ``log_dir``: one per key of each row (``env_steps`` excepted, which
    is their step), the keys W&B gets.

    ``history`` is the rows the run folder holds (a resumed run's, rewritten from its
    checkpoint). Events a run wrote past them (before it was killed) are purged from
    TensorBoard's view (``purge_step``), so a resumed run shows each step once; a folder without
    events yet (TensorBoard turned on when resuming, a reused run) gets ``history`` first.
    """

    EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d+)\.")

    def __init__(self, log_dir: Path, history: list[Row] = ()):
        from torch.utils.tensorboard import SummaryWriter

        log_dir = Path(log_dir)
        started = [int(m.group(1)) for f in (log_dir.glob("events.out.tfevents.*")
                                             if log_dir.is_dir() else ())
                   if (m := self.EVENT_FILE.match(f.name))]
        if started:
            # TensorBoard reads event files in name order, which starts with the second the
            # file was made: this process's must sort after the ones before it (a wait only
            # for a run resumed within a second, as in tests).
            time.sleep(min(max(0.0, max(started) + 1 - time.time()), 1.0))
        last_step = int(history[-1]["env_steps"]) if history else 0
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=last_step + 1)
        if history and not started:
            for row in history:
                self._add(row)
            self.writer.flush()

    def _add(self, row: Row) -> None:
        step = int(row["env_steps"])
        for key, value in row.items():
            if value is not None and key != "env_steps":
                self.writer.add_scalar(key, value, global_step=step)

    def write(self, row: Row) -> None:
        self._add(row)
        self.writer.flush()

    def close(self, status: str = "completed") -> None:
        self.writer.close()


class ConsoleWriter(MetricWriter):
    """A progress line every ``every`` iterations: steps, returns, KL, speed and time left.

    Speed and time left use the run's average rate so far, evaluations included.
    """

    def __init__(self, total_steps: int, every: int = 1, tag: Optional[str] = None):
        self.total_steps, self.every, self.tag = total_steps, every, tag

    def write(self, row: Row) -> None:
        iteration, steps = int(row["iteration"]), int(row["env_steps"])
        if iteration % self.every and steps < self.total_steps:
            return
        rate = steps / row["wall_s"] if row["wall_s"] else math.nan
        left = max(self.total_steps - steps, 0) / rate if rate > 0 else math.nan
        parts = [f"iter {iteration:4d}", f"steps {steps:>9,}/{self.total_steps:,}",
                 f"return {_fmt(row.get('return_mean'))}"]
        if row.get("eval_return_mean") is not None:
            parts.append(f"eval {_fmt(row['eval_return_mean'])}")
        parts += [f"kl {_fmt(row.get('kl'), '.4f')}", f"{_fmt(rate, ',.0f')} steps/s",
                  f"left {left / 60:.1f} min"]
        log.info("%s%s", f"{self.tag} " if self.tag else "", " | ".join(parts))


def _fmt(value: Optional[float], spec: str = ".1f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(
        value, spec)


class MetricLogger(MetricWriter):
    """Sends each row to every writer; closes them all, each even if another fails."""

    def __init__(self, writers: list[MetricWriter]):
        self.writers = writers

    @property
    def wandb_id(self) -> Optional[str]:
        """The W&B run's id, to resume it after a restart; ``None`` without W&B."""
        runs = [w.run.id for w in self.writers if isinstance(w, WandbWriter)]
        return runs[0] if runs else None

    def write(self, row: Row) -> None:
        for writer in self.writers:
            writer.write(row)

    def replay(self, rows: list[Row]) -> None:
        """Send rows that ``progress.csv`` already holds to W&B: the history of a reused run."""
        for writer in self.writers:
            if isinstance(writer, WandbWriter):
                for row in rows:
                    writer.write(row)

    def close(self, status: str = "completed") -> None:
        errors = []
        for writer in self.writers:
            try:
                writer.close(status)
            except Exception as error:  # close the others before reporting
                errors.append(error)
        if errors:
            raise errors[0]


def make_logger(cfg: LoggerConfig, folder: RunFolder, run_name: str, config: dict[str, Any],
                total_steps: int, resume_id: Optional[str] = None,
                console_tag: Optional[str] = None) -> MetricLogger:
    """``progress.csv`` and the console always; W&B unless ``logger.mode=disabled``;
    TensorBoard (``<run dir>/tensorboard/``) with ``logger.tensorboard=true``.

    If W&B cannot start (no network, no login), training goes on with the local log and a
    warning; ``wandb sync`` can upload an offline run later. Called once a resumed run's
    ``progress.csv`` holds its checkpoint's rows: TensorBoard goes on after them.
    """
    writers: list[MetricWriter] = []
    if cfg.mode is not WandbMode.disabled:
        try:
            writers.append(WandbWriter(cfg, folder.path, run_name, config, resume_id))
        except Exception as error:
            log.warning("W&B (%s) could not start, training goes on with progress.csv only: "
                        "%s: %s", cfg.mode.value, type(error).__name__,
                        str(error).splitlines()[0] if str(error) else "")
    if cfg.tensorboard:
        writers.append(TensorBoardWriter(folder.path / TENSORBOARD, folder.progress.read().rows))
    writers += [CSVWriter(folder.progress), ConsoleWriter(total_steps, cfg.console_every,
                                                          console_tag)]
    return MetricLogger(writers)
