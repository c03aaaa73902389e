"""Fixtures for the tests marked ``slurm``: a real single-node cluster (``cluster.sh``) and the
sweeps the tests check, each submitted once per session with the project's
``hydra/launcher=slurm`` preset. Only the partition and the time limits are overridden."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from tests.slurm.helpers import (LONG_RUN, TIME_LIMIT, Cluster, Sweep, data_rows, read_status,
                                 process_state, slurm_launcher)

PREEMPT_AFTER_ROWS = 3  # scontrol requeue once the run has logged this many iterations
SCENARIO_TIMEOUT_S = 1200
# SLURM warns the timed-out job 20-50 s after it starts (see `interruptions`): a held task that has
# had no warning after this long is let go, and the time-out test fails on `Interruptions.held`.
HOLD_LIMIT_S = 90


@pytest.fixture(scope="session")
def slurm() -> Cluster:
    """The cluster of ``tests/slurm/cluster.sh``, started if it is not up (and then stopped at
    the end). With ``-m slurm`` and no cluster to be had, the tests fail with the reason."""
    cluster = Cluster.bring_up()
    yield cluster
    if cluster.started_here:
        cluster.stop()


@pytest.fixture(scope="session")
def sweep_of_six(slurm, tmp_path_factory) -> Sweep:
    """2 envs × 3 seeds × 20,000 steps, W&B off."""
    sweep = Sweep(slurm, tmp_path_factory.mktemp("sweep") / "runs",
                  ["env=hopper,walker", "seed=0,1,2", "total_steps=20000",
                   "logger.writers=[]", *slurm_launcher(slurm), *TIME_LIMIT])
    try:
        sweep.wait(timeout=900)
        yield sweep
    finally:
        sweep.stop()


def continue_process(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


@dataclass
class Snapshot:
    """A run folder as it was while its job waited to start again after a requeue."""

    progress: str  # progress.csv's text
    status: dict


@dataclass
class Interruptions:
    """Three runs of ``LONG_RUN``: ``reference`` uninterrupted, ``preempted`` requeued with
    ``scontrol requeue`` part-way, ``timed_out`` with a 1-minute time limit."""

    requeued: Sweep  # preempted (job 0) and reference (job 1), 10-minute limit
    timed: Sweep  # timed_out, 1-minute limit
    preempted_at_rows: int = 0
    # Per job id: what the run folder held each time the job waited after a requeue.
    snapshots: dict[str, list[Snapshot]] = field(default_factory=dict)
    # Per run folder: (status, progress rows) the moment its sweep command exited.
    at_exit: dict[Path, tuple[str, int]] = field(default_factory=dict)
    # How the timed-out job's held task was let go: "continued" (by SLURM, which continues a
    # stopped task before it signals it), "ended", "too long"; None if it was never held (its
    # warning came first).
    held: Optional[str] = None

    @property
    def preempted(self) -> tuple[Path, str]:
        return self.requeued.dir / "0", self.requeued.job_ids()[0]

    @property
    def reference(self) -> tuple[Path, str]:
        return self.requeued.dir / "1", self.requeued.job_ids()[1]

    @property
    def timed_out(self) -> tuple[Path, str]:
        return self.timed.dir / "0", self.timed.job_ids()[0]


@pytest.fixture(scope="session")
def interruptions(slurm, tmp_path_factory) -> Interruptions:
    """Submit the three runs of :class:`Interruptions` together and watch them to the end.

    The timed-out run has ``timeout_min=1`` and ``signal_delay_s=10``: slurmctld looks at time
    limits every 30 s and sends the warning (USR2) up to 30 s early, so it arrives 20-50 s after
    the job starts; submitit's handler calls the launcher's checkpoint() and requeues the job,
    which resumes from the run's last checkpoint. A run that finished before the warning would
    test nothing (on a quiet AMD EPYC core the run takes 25 s): once it has logged a row, its task
    is stopped (SIGSTOP) and left stopped until SLURM continues it to deliver the warning, so that
    the warning finds it part-way on any machine. The preempted run is requeued with ``scontrol
    requeue`` once it has logged ``PREEMPT_AFTER_ROWS`` rows. SLURM holds a requeued job for the
    credential lifetime (10 s on the test cluster, 120 s by default); the other jobs run
    meanwhile, so the node is seldom idle.
    """
    root = tmp_path_factory.mktemp("interruptions")
    timed = Sweep(slurm, root / "timed", [*LONG_RUN, "name=timed_out", *slurm_launcher(slurm),
                                          "hydra.launcher.timeout_min=1",
                                          "hydra.launcher.signal_delay_s=10"])
    requeued, held_pid = None, None
    try:
        timed.wait_submitted(jobs=1)
        requeued = Sweep(slurm, root / "requeued", [*LONG_RUN, "name=preempted,reference",
                                                    *slurm_launcher(slurm), *TIME_LIMIT])
        requeued.wait_submitted(jobs=2)
        scenario = Interruptions(requeued, timed)
        preempted_dir, preempted_id = scenario.preempted
        timed_dir, timed_id = scenario.timed_out
        watched = {preempted_id: preempted_dir, timed_id: timed_dir}
        scenario.snapshots = {job: [] for job in watched}
        last_state = dict.fromkeys(watched)
        held_since = 0.0
        deadline = time.monotonic() + SCENARIO_TIMEOUT_S
        while True:
            # Whether each command had exited before this look at the runs.
            exited = [sweep for sweep in (requeued, timed) if sweep.poll() is not None]
            if time.monotonic() > deadline:
                pytest.fail(f"the interruption sweeps did not finish in {SCENARIO_TIMEOUT_S} s"
                            f"\n{requeued.describe()}\n{timed.describe()}", pytrace=False)
            for job, run_dir in watched.items():
                state = slurm.state(job)
                # Waiting again after having run: the requeued job's processes have ended.
                if state == "PENDING" and last_state[job] not in (None, "PENDING"):
                    progress = run_dir / "progress.csv"
                    scenario.snapshots[job].append(Snapshot(
                        progress.read_text() if progress.exists() else "", read_status(run_dir)))
                last_state[job] = state
                if (job == preempted_id and not scenario.preempted_at_rows and state == "RUNNING"
                        and data_rows(run_dir) >= PREEMPT_AFTER_ROWS):
                    scenario.preempted_at_rows = data_rows(run_dir)
                    result = slurm.slurm("scontrol", "requeue", job)
                    assert result.returncode == 0, result.stderr
                if (job == timed_id and held_since == 0.0 and state == "RUNNING"
                        and data_rows(run_dir) >= 1 and "SIGUSR2" not in timed.log(job)):
                    held_pid = slurm.task_pid(job)
                    if held_pid is not None:
                        os.kill(held_pid, signal.SIGSTOP)
                        held_since = time.monotonic()
            if held_pid is not None:
                held_state = process_state(held_pid)
                if held_state is None:
                    scenario.held = "ended"
                elif held_state != "T":
                    scenario.held = "continued"
                elif time.monotonic() - held_since > HOLD_LIMIT_S:
                    scenario.held = "too long"
                    continue_process(held_pid)
                if scenario.held:
                    held_pid = None
            for sweep in exited:
                for run_dir in sorted(p for p in sweep.dir.iterdir() if p.name.isdigit()):
                    scenario.at_exit.setdefault(run_dir, (read_status(run_dir).get("status"),
                                                          data_rows(run_dir)))
            if len(exited) == 2:
                break
            time.sleep(0.5)
        yield scenario
    finally:
        if held_pid is not None:
            continue_process(held_pid)
        for sweep in (requeued, timed):
            if sweep is not None:
                sweep.stop()
