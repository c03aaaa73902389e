"""The training loop: counters, history, wall clock, checkpoint cadence and the stop rules.

A :class:`TrainingLoop` drives a :class:`trpo.learner.Learner` one iteration at a time and keeps
what every learner shares: the iteration, the training time, the last evaluation, the updates
rejected in a row, the metric history (one row per iteration) and the logger's resume state. Its
checkpoints carry the history, so that a resumed run's ``progress.csv`` is rewritten to exactly
the rows of an uninterrupted one. Which checkpoint to resume from is :mod:`trpo.io.resume`'s
decision; locking, status and signals are :mod:`trpo.train`'s.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Optional

from omegaconf import DictConfig, OmegaConf

from trpo.io.checkpoint import CheckpointError
from trpo.io.logger import MetricLogger
from trpo.io.provenance import code_differences, code_version
from trpo.io.resume import StartPlan, proven_history
from trpo.io.run_folder import HistoryError, RunFolder
from trpo.learner import Learner, TrainingError

log = logging.getLogger("trpo")


class StopRequested(Exception):
    """A stop was asked for (SIGINT, SIGTERM) and the run stopped at a safe point, checkpointed."""


class TrialPruned(Exception):
    """A tuning trial's study pruned it at an evaluation; the run stopped there, checkpointed."""


class TrainingLoop:
    """One run's loop around its learner, and the checkpoints of both."""

    def __init__(self, cfg: DictConfig, folder: RunFolder, learner: Learner):
        self.cfg, self.folder, self.learner = cfg, folder, learner
        self.iteration = 0
        self.wall_s = 0.0  # training time before this process (a resumed run goes on from it)
        self.final_return = math.nan
        self.rejected_in_a_row = 0
        self.logger_state: dict[str, Any] = {}  # the writers' resume state (W&B's run id)
        self.history: list[dict[str, Any]] = []  # the rows of iterations 1..iteration
        self.checkpointed_at = 0  # iteration of the last checkpoint written or loaded

    @property
    def total_iterations(self) -> int:
        """Iterations in the whole run: total_steps in whole batches, rounded up."""
        return math.ceil(self.cfg.total_steps / self.cfg.steps_per_iteration)

    # -------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        """A checkpoint: the loop's own state beside the learner's."""
        return {
            "config": OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True),
            "iteration": self.iteration, "wall_s": self.wall_s,
            "final_return": self.final_return, "rejected_in_a_row": self.rejected_in_a_row,
            "logger": self.logger_state, "code": code_version(), "history": self.history,
            **self.learner.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on from ``state``; raises (``KeyError``, ``RuntimeError``, ``ValueError``, ...)
        if it does not fit this run's learner."""
        self.learner.load_state_dict(state)
        self.iteration = self.checkpointed_at = int(state["iteration"])
        self.wall_s = float(state["wall_s"])
        self.final_return = float(state["final_return"])
        self.rejected_in_a_row = int(state["rejected_in_a_row"])
        self.logger_state = dict(state["logger"])
        self.history = [dict(row) for row in state["history"]]

    def checkpoint(self) -> None:
        """Save a checkpoint of this iteration; raises :class:`TrainingError` instead if the
        learnt state is no longer finite (the last checkpoint then stays the last good one)."""
        state = self.state_dict()
        bad = self.learner.nonfinite_state(state)
        if bad:
            raise TrainingError(
                f"non-finite values in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} at "
                f"iteration {self.iteration}; {self.last_checkpoint_note()}")
        self.folder.save_checkpoint(state)
        self.checkpointed_at = self.iteration
        self.folder.update_status(iteration=self.iteration)  # how far, for --status and monitors

    def last_checkpoint_note(self) -> str:
        """Which checkpoint a resumed run would start from (each one saved was finite)."""
        if not self.checkpointed_at:
            return "no checkpoint was written yet"
        return f"the checkpoint of iteration {self.checkpointed_at} in {self.folder.path} is intact"

    def resume(self, plan: StartPlan) -> bool:
        """Load the first of ``plan``'s candidates that fits and rewrite ``progress.csv`` with
        its history; whether one was loaded (``False``: a fresh start).

        A candidate that does not fit (wrong keys or shapes, non-finite values, a history that
        cannot be proven) is passed over for the next one, and reported by path once one fits;
        raises :class:`CheckpointError` naming each if none fits, having written nothing.
        """
        problems = list(plan.problems)
        for candidate in plan.candidates:
            try:
                history = proven_history(candidate.state)
                self.load_state_dict(candidate.state)
                bad = self.learner.nonfinite_state(self.state_dict())
                if bad:
                    raise ValueError(f"non-finite values in {', '.join(bad[:3])}")
            except HistoryError as error:
                problems.append(f"{candidate.path}: {error}")
                continue
            except Exception as error:  # a structurally wrong checkpoint: keys, shapes, types
                problems.append(f"{candidate.path}: does not fit this run ({type(error).__name__}"
                                f": {str(error).splitlines()[0] if str(error) else ''})")
                continue
            for problem in problems:
                log.warning("%s", problem)
            self.history = history
            if plan.reused_from is not None:
                self.logger_state = {}  # a W&B run of its own, to which the history is replayed
                self.checkpoint()  # the twin's final state, as this run's own checkpoint
            self.folder.progress.rewrite(history)
            trained_by = code_differences(candidate.state.get("code"))
            if trained_by:
                log.warning("the checkpoint %s was written by other code or on another CPU "
                            "(%s): going on assumes the difference does not alter what the run "
                            "computes", candidate.path, "; ".join(trained_by))
            return True
        if plan.candidates:
            raise CheckpointError("no usable checkpoint: " + "; ".join(problems))
        return False

    # ---------------------------------------------------------------------------- training

    def run(self, logger: MetricLogger, stop_requested: Callable[[], bool] = lambda: False,
            report: Optional[Callable[[int, float], bool]] = None) -> float:
        """Train to the end; returns the last evaluation's mean return.

        ``stop_requested`` is asked after each iteration (a safe point); if it says yes, the
        run checkpoints and raises :class:`StopRequested`. ``report`` (a tuning trial's,
        :class:`trpo.tuning.TrialReporter`) gets each evaluation's step and mean return; if it
        says stop before the last iteration, the run checkpoints and raises :class:`TrialPruned`.
        """
        cfg = self.cfg
        iterations = self.total_iterations
        start = time.perf_counter() - self.wall_s
        while self.iteration < iterations:
            self.iteration += 1
            try:
                metrics = self.learner.iterate(self.iteration, iterations)
            except TrainingError as error:
                raise TrainingError(f"{error}; {self.last_checkpoint_note()}") from None
            self.wall_s = time.perf_counter() - start
            if metrics.get("eval_return_mean") is not None:
                self.final_return = float(metrics["eval_return_mean"])
            self.rejected_in_a_row = (self.rejected_in_a_row + 1
                                      if metrics.get("update_nonfinite") else 0)
            row = {"iteration": self.iteration,
                   "env_steps": self.iteration * cfg.steps_per_iteration,
                   "wall_s": self.wall_s, **metrics}
            self.history.append(row)
            logger.write(row)
            if self.iteration % cfg.checkpoint_every == 0 or self.iteration == iterations:
                self.checkpoint()
            if self.rejected_in_a_row >= cfg.max_rejected_updates:
                raise TrainingError(
                    f"{self.rejected_in_a_row} policy updates in a row were rejected for "
                    f"non-finite values (iterations {self.iteration - self.rejected_in_a_row + 1}"
                    f"–{self.iteration}); {self.last_checkpoint_note()}")
            evaluated = metrics.get("eval_return_mean")
            if (report is not None and evaluated is not None and self.iteration < iterations
                    and report(row["env_steps"], float(evaluated))):
                self._stop(TrialPruned(f"pruned at {row['env_steps']:,} steps"))
            if stop_requested() and self.iteration < iterations:
                self._stop(StopRequested(f"stopped after iteration {self.iteration}"))
        return self.final_return

    def _stop(self, reason: Exception) -> None:
        """Checkpoint this iteration (if not yet) and raise ``reason``."""
        if self.checkpointed_at != self.iteration:
            self.checkpoint()
        raise reason

    def agent(self) -> dict[str, Any]:
        """``agent.pt``: the learner's policy, value weights and observation statistics, with
        the config and the iteration."""
        return {**self.learner.agent(),
                "config": OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True),
                "iteration": self.iteration}

    def close(self) -> None:
        self.learner.close()
