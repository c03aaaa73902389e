"""Metric logging: one small writer interface, with CSV, console, W&B and TensorBoard back ends.

A row is a flat mapping from metric name to a number, or ``None`` for "not measured in this
iteration" (written as an empty CSV cell and left out of the W&B step). ``progress.csv``'s
format belongs to :class:`trpo.io.run_folder.ProgressFile`; its columns are fixed by the first row.

``progress.csv`` and the console are always written; ``logger.writers`` names the others. A new
back end is one :class:`MetricWriter` subclass with a ``name``: it is then a writer that
``logger.writers`` may list. A writer that must find its own output again after a restart (W&B's
run id) returns it from :meth:`MetricWriter.state_dict`; checkpoints keep it, and the writer gets
it back when the run resumes.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

from trpo.config import ConfigError, LoggerConfig
from trpo.io.run_folder import ProgressFile, Row, RunFolder

log = logging.getLogger("trpo")

# The TensorBoard event files' folder in a run folder.
TENSORBOARD = "tensorboard"


@dataclass
class RunContext:
    """What a writer may need to open: the logger settings, the run folder, the run's name for
    display, its resolved config, its budget and the console tag."""

    cfg: LoggerConfig
    folder: RunFolder
    run_name: str
    config: dict[str, Any]
    total_steps: int
    console_tag: Optional[str] = None


class MetricWriter(ABC):
    """A destination for one row of metrics per iteration.

    A subclass with a ``name`` is an optional writer, listed in ``logger.writers`` by that name
    and opened by :meth:`open`; :data:`WRITERS` holds them.
    """

    name: ClassVar[Optional[str]] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.name is not None:
            WRITERS[cls.name] = cls

    @classmethod
    def check(cls) -> None:
        """Raise :class:`ConfigError` if this writer cannot run here (a missing package)."""

    @classmethod
    def open(cls, run: RunContext, state: dict[str, Any]) -> "MetricWriter":
        """The writer for ``run``; ``state`` is what its :meth:`state_dict` returned before a
        restart (empty on a fresh start)."""
        raise NotImplementedError

    @abstractmethod
    def write(self, row: Row) -> None:
        """Record one iteration's row."""

    def replay(self, rows: list[Row]) -> None:
        """Receive rows that ``progress.csv`` already holds (a reused run's history); only a
        writer that cannot read them from the run folder itself needs them."""

    def state_dict(self) -> dict[str, Any]:
        """What this writer needs to go on after a restart (plain data); empty if nothing."""
        return {}

    def close(self, status: str = "completed") -> None:
        """Flush and release; ``status`` is how the run ended: ``completed``, ``interrupted``
        or ``failed``."""


# The optional writers by name, filled by MetricWriter's subclasses as they are defined.
WRITERS: dict[str, type[MetricWriter]] = {}


class CSVWriter(MetricWriter):
    """``progress.csv``, a line per iteration, flushed at once (synced with each checkpoint).

    An existing file (a resumed run's, rewritten from its checkpoint) is appended to under its
    own header, widened by any column the run logs that it lacks.
    """

    def __init__(self, progress: ProgressFile):
        self.progress = progress

    def write(self, row: Row) -> None:
        self.progress.append(row)

    def close(self, status: str = "completed") -> None:
        self.progress.close()


class WandbWriter(MetricWriter):
    """A W&B run whose x-axis is ``env_steps``; finished on close, also after an error.

    Its state is the run's id (``run_id``), with which a resumed run continues it. Online, W&B appends to it. Offline, each process writes
    its own ``wandb/offline-run-<time>-<id>`` folder, all under the run's one id and marked as
    resuming it (wandb >= 0.30), so that ``wandb sync <run dir>/wandb`` uploads them, in order
    of start time, as one W&B run.
    """

    # Seconds to wait for W&B to start before training goes on without it.
    INIT_TIMEOUT_S = 60

    name = "wandb"

    def __init__(self, run: RunContext, resume_id: Optional[str] = None):
        import wandb

        cfg = run.cfg.wandb
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=cfg.group, name=run.run_name,
            tags=list(cfg.tags), config=run.config, dir=str(run.folder.path),
            mode=getattr(cfg.mode, "value", cfg.mode),
            id=resume_id, resume="allow" if resume_id else None,
            # A joblib worker runs several jobs in one process: never continue a leftover run.
            reinit="finish_previous",
            settings=wandb.Settings(quiet=True, silent=not cfg.messages, console="off",
                                    init_timeout=self.INIT_TIMEOUT_S))
        self.run.define_metric("env_steps")
        self.run.define_metric("*", step_metric="env_steps")

    @classmethod
    def open(cls, run: RunContext, state: dict[str, Any]) -> "WandbWriter":
        return cls(run, state.get("run_id"))

    def write(self, row: Row) -> None:
        self.run.log({k: v for k, v in row.items() if v is not None})

    def replay(self, rows: list[Row]) -> None:
        for row in rows:
            self.write(row)

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run.id}

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

    name = "tensorboard"
    EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d+)\.")

    @classmethod
    def check(cls) -> None:
        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("logger.writers", "tensorboard needs the tensorboard package: pip "
                              "install -e '.[tensorboard]'", ["tensorboard"])

    @classmethod
    def open(cls, run: RunContext, state: dict[str, Any]) -> "TensorBoardWriter":
        return cls(run.folder.path / TENSORBOARD, run.folder.progress.read().rows)

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


class MetricLogger:
    """Sends each row to every writer; closes them all, each even if another fails."""

    def __init__(self, writers: list[MetricWriter]):
        self.writers = writers

    def write(self, row: Row) -> None:
        for writer in self.writers:
            writer.write(row)

    def replay(self, rows: list[Row]) -> None:
        """Hand rows that ``progress.csv`` already holds to the writers that need them: the
        history of a reused run."""
        for writer in self.writers:
            writer.replay(rows)

    def state_dict(self) -> dict[str, Any]:
        """Each named writer's resume state, by name (a checkpoint's ``logger`` part)."""
        return {writer.name: state for writer in self.writers
                if writer.name is not None and (state := writer.state_dict())}

    def close(self, status: str = "completed") -> None:
        errors = []
        for writer in self.writers:
            try:
                writer.close(status)
            except Exception as error:  # close the others before reporting
                errors.append(error)
        if errors:
            raise errors[0]


def check_writers(cfg: LoggerConfig) -> None:
    """Raise :class:`ConfigError` for a writer ``logger.writers`` names that does not exist, or
    cannot run here; before anything is built or written."""
    for name in cfg.writers:
        if name not in WRITERS:
            raise ConfigError("logger.writers", f"{name} is not a writer; the writers: "
                              f"{', '.join(WRITERS)} (progress.csv and the console are always "
                              "on)", list(cfg.writers))
        WRITERS[name].check()


def make_logger(run: RunContext, state: Optional[dict[str, Any]] = None) -> MetricLogger:
    """``progress.csv`` and the console always, and the writers ``logger.writers`` lists, each
    given its part of ``state`` (:meth:`MetricLogger.state_dict` before a restart).

    A listed writer that cannot start (W&B without network or login) is left out with a
    warning, and training goes on; ``wandb sync`` can upload an offline run later. Called once
    a resumed run's ``progress.csv`` holds its checkpoint's rows: TensorBoard goes on after them.
    """
    state = state or {}
    writers: list[MetricWriter] = []
    for name in run.cfg.writers:
        try:
            writers.append(WRITERS[name].open(run, state.get(name, {})))
        except Exception as error:
            log.warning("%s could not start, training goes on without it: %s: %s", name,
                        type(error).__name__, str(error).splitlines()[0] if str(error) else "")
    writers += [CSVWriter(run.folder.progress),
                ConsoleWriter(run.total_steps, run.cfg.console_every, run.console_tag)]
    return MetricLogger(writers)
