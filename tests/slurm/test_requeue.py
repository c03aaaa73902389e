"""Preemption and time-outs on a real SLURM cluster: a requeued job resumes from its run's
checkpoint and its ``progress.csv`` ends up with the rows of an uninterrupted run."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.slurm.helpers import LONG_RUN_ITERATIONS as ITERATIONS
from tests.slurm.helpers import data_rows, read_status, without_timing

pytestmark = pytest.mark.slurm


def kept_lines(final: str, snapshot: str) -> int:
    """How many leading lines of ``snapshot`` (header included) ``final`` still holds, byte for
    byte: a run that resumed keeps its rows up to its checkpoint, timings and all, where one
    that started over would rewrite them."""
    kept = 0
    for before, after in zip(snapshot.splitlines(), final.splitlines()):
        if before != after:
            break
        kept += 1
    return kept


def check_exact(run_dir, reference_dir) -> None:
    assert read_status(run_dir).get("status") == "completed", read_status(run_dir)
    assert read_status(reference_dir).get("status") == "completed", read_status(reference_dir)
    run, reference = (pd.read_csv(d / "progress.csv") for d in (run_dir, reference_dir))
    assert run["iteration"].tolist() == list(range(1, ITERATIONS + 1))
    pd.testing.assert_frame_equal(without_timing(run), without_timing(reference))


def check_resumed(snapshots, final_progress: str) -> None:
    """Each time the job waited to start again, its run was part-way with a checkpoint, and the
    rows logged up to then are still in the final file."""
    assert snapshots, "the job never waited in the queue after a requeue"
    for snapshot in snapshots:
        rows = len(snapshot.progress.splitlines()) - 1
        assert 0 < rows < ITERATIONS, f"requeued with {rows} of {ITERATIONS} rows logged"
        assert kept_lines(final_progress, snapshot.progress) >= 2, (
            "the rows logged before the requeue were rewritten: the run started over instead "
            "of resuming from its checkpoint")


def test_the_reference_run_was_not_interrupted(slurm, interruptions):
    reference_dir, job = interruptions.reference
    assert slurm.restarts(job) == 0, interruptions.requeued.log(job)
    assert data_rows(reference_dir) == ITERATIONS


def test_a_preempted_job_resumes_from_its_checkpoint_and_logs_the_uninterrupted_rows(
        slurm, interruptions):
    run_dir, job = interruptions.preempted
    reference_dir, _ = interruptions.reference
    # The sweep command waited for the requeued job: when it exited every run had finished.
    assert interruptions.requeued.returncode == 0, interruptions.requeued.describe()
    assert interruptions.at_exit[run_dir] == ("completed", ITERATIONS)
    assert interruptions.at_exit[reference_dir] == ("completed", ITERATIONS)
    assert 0 < interruptions.preempted_at_rows < ITERATIONS
    assert slurm.restarts(job) >= 1
    assert "DUE TO JOB REQUEUE" in interruptions.requeued.log(job, "err")
    check_resumed(interruptions.snapshots[job], (run_dir / "progress.csv").read_text())
    check_exact(run_dir, reference_dir)


def test_a_job_past_its_time_limit_is_requeued_by_submitit_and_logs_the_uninterrupted_rows(
        slurm, interruptions):
    run_dir, job = interruptions.timed_out
    reference_dir, _ = interruptions.reference
    assert interruptions.timed.returncode == 0, interruptions.timed.describe()
    assert interruptions.at_exit[run_dir] == ("completed", ITERATIONS)
    assert interruptions.held in (None, "continued"), (
        f"the job's task, stopped until SLURM's warning, was let go: {interruptions.held}")
    log = interruptions.timed.log(job)
    # Each time, submitit's USR2 handler called the launcher's checkpoint() and requeued the job
    # (the rest of what it logs may be cut short by the SIGTERM that the requeue sends).
    warnings = [line for line in log.splitlines() if line.startswith("submitit WARNING")
                and "Caught signal SIGUSR2" in line and "this job is timed-out" in line]
    assert len(warnings) == slurm.restarts(job) >= 1, log[-3000:]
    check_resumed(interruptions.snapshots[job], (run_dir / "progress.csv").read_text())
    check_exact(run_dir, reference_dir)


def test_a_requeued_run_waits_marked_interrupted(interruptions):
    """While a requeued job waits to start again its run is not running (its process has
    ended) and has not failed (it will resume): ``status.json`` says ``interrupted``."""
    seen = {job: [snapshot.status.get("status") for snapshot in snapshots]
            for job, snapshots in interruptions.snapshots.items()}
    assert all(seen.values()), seen
    assert all(status == "interrupted" for statuses in seen.values() for status in statuses), (
        f"status.json while each requeued job waited: {seen}")
