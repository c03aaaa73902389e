"""Sweeps and studies on a real SLURM cluster with the project's ``hydra/launcher=slurm``."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, TINY
from tests.slurm.helpers import TIME_LIMIT, Sweep, data_rows, read_status, slurm_launcher

pytestmark = pytest.mark.slurm


def overrides(run_dir) -> list[str]:
    return yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())


def test_a_sweep_of_six_runs_completes_with_one_folder_and_progress_file_each(sweep_of_six):
    assert sweep_of_six.returncode == 0, sweep_of_six.describe()
    runs = sorted(p for p in sweep_of_six.dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in runs] == [str(n) for n in range(6)]
    combinations = set()
    for run in runs:
        chosen = dict(o.split("=", 1) for o in overrides(run))
        combinations.add((chosen["env"], chosen["seed"]))
        assert read_status(run).get("status") == "completed", read_status(run)
        progress = pd.read_csv(run / "progress.csv")
        assert progress["env_steps"].tolist() == [2048 * i for i in range(1, 11)]
        assert (run / "agent.pt").exists()
    assert combinations == {(env, str(seed)) for env in ("hopper", "walker") for seed in range(3)}
    assert len(sweep_of_six.job_ids()) == 6  # one SLURM array task per run


def test_status_json_names_the_slurm_job_and_its_restarts(sweep_of_six, interruptions):
    """``slurm_job_id`` as squeue and submitit's folders name it (``<array>_<task>``), and
    ``slurm_restart_count`` (SLURM_RESTART_COUNT): which job's logs to read, and whether it was
    requeued."""
    recorded = {n: read_status(sweep_of_six.dir / str(n)) for n in range(6)}
    assert {n: (r.get("slurm_job_id"), r.get("slurm_restart_count"))
            for n, r in recorded.items()} == {
        n: (job, 0) for n, job in sweep_of_six.job_ids().items()}
    for run_dir, job in (interruptions.preempted, interruptions.timed_out):
        status = read_status(run_dir)
        assert status.get("slurm_job_id") == job, status
        assert status.get("slurm_restart_count", 0) >= 1, status
    run_dir, job = interruptions.reference
    assert (read_status(run_dir).get("slurm_job_id"),
            read_status(run_dir).get("slurm_restart_count")) == (job, 0)


def test_a_failed_job_leaves_the_others_running_and_the_analysis_skips_it(slurm, tmp_path):
    """A poisoned solver's NaN updates stop its run after max_rejected_updates; the other jobs
    finish, the sweep exits non-zero, and the analysis names the failed runs and leaves them
    out."""
    sweep = Sweep(slurm, tmp_path / "runs",
                  ["env=cartpole", "seed=0,1",
                   "solver._target_=trpo.solvers.TRPO,tests.toy_solvers.PoisonedTRPO",
                   "max_rejected_updates=2", *TINY, *slurm_launcher(slurm), *TIME_LIMIT])
    try:
        assert sweep.wait(timeout=600) != 0, sweep.describe()
    finally:
        sweep.stop()
    statuses = {}
    for n in range(4):
        run_dir = sweep.dir / str(n)
        poisoned = "solver._target_=tests.toy_solvers.PoisonedTRPO" in overrides(run_dir)
        statuses[n] = (poisoned, read_status(run_dir).get("status"))
    assert statuses == {0: (False, "completed"), 1: (True, "failed"),
                        2: (False, "completed"), 3: (True, "failed")}
    assert "TrainingError" in read_status(sweep.dir / "1").get("error", "")
    assert data_rows(sweep.dir / "0") == data_rows(sweep.dir / "2") == 2

    analysis = subprocess.run([sys.executable, "-m", "analysis", str(sweep.dir),
                               "--out", str(tmp_path / "out"), "--reps", "50"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert analysis.returncode == 0, analysis.stderr[-3000:]
    skipped = [line for line in analysis.stderr.splitlines() if "skipped" in line]
    assert [n for n in range(4) if any(f"{sweep.dir / str(n)}:" in line for line in skipped)
            ] == [1, 3], analysis.stderr[-3000:]
    assert "(n=2)" in (tmp_path / "out" / "final.md").read_text()


def test_a_study_runs_on_the_cluster_and_is_analysed(slurm, tmp_path):
    """``python -m experiments quickstart hydra/launcher=slurm`` with a tiny budget: one solver,
    two seeds on both of its envs."""
    args = ["quickstart", "hydra.sweeper.params.solver=trpo", "hydra.sweeper.params.seed='0,1'",
            *TINY, *slurm_launcher(slurm), *TIME_LIMIT,
            "--sweep-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
            "--reps", "50"]
    study = Sweep(slurm, tmp_path / "runs", args, command=[sys.executable, "-m", "experiments"])
    try:
        assert study.wait(timeout=600) == 0, study.describe()
    finally:
        study.stop()
    runs = sorted(p.parent for p in (tmp_path / "runs").glob("*/status.json"))
    assert len(runs) == 4 and len(study.job_ids()) == 4
    assert all(read_status(run).get("status") == "completed" for run in runs)
    final = (tmp_path / "out" / "final.md").read_text()
    assert "Hopper-v5" in final and "Walker2d-v5" in final and "(n=2)" in final
    assert (tmp_path / "out" / "curves.png").exists()
