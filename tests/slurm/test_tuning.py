"""A tuning on the SLURM cluster: each batch's trials run as SLURM jobs at once, and every job
reports its evaluations to the one study in the sweep folder's journal file."""

from __future__ import annotations

import pytest

from tests.conftest import TINY
from tests.slurm.helpers import TIME_LIMIT, Sweep, read_status, slurm_launcher
from trpo import tuning

pytestmark = pytest.mark.slurm

# A tiny CartPole run of four iterations, an evaluation after each, less what the space draws.
TRIAL = ["env=cartpole", *(o for o in TINY if not o.startswith(("critic.epochs=",
                                                                  "total_steps="))),
         "total_steps=512"]


def test_two_slurm_workers_share_one_study_through_its_journal(slurm, tmp_path):
    sweep = Sweep(slurm, tmp_path / "tuning",
                  ["hydra/sweeper=tune", *TRIAL, "hydra.sweeper.trials=4",
                   "hydra.sweeper.parallel=2", "hydra.sweeper.startup_trials=2",
                   *slurm_launcher(slurm), "hydra.launcher.cpus_per_task=1", *TIME_LIMIT])
    try:
        assert sweep.wait(timeout=900) == 0, sweep.describe()
    finally:
        sweep.stop()
    study, _, settings = tuning.reopen(sweep.dir)
    assert settings.trials == 4 and len(study.trials) == 4
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    jobs = {}
    for trial in study.trials:
        status = read_status(sweep.dir / tuning.trial_folder(trial.number))
        jobs[trial.number] = status.get("slurm_job_id")
        assert status.get("status") in ("completed", "pruned"), status
        # what the job's run reported reached the study: its evaluations, at their steps
        assert set(trial.intermediate_values) <= {128, 256, 384}
        assert trial.intermediate_values, trial
    assert None not in jobs.values() and len(set(jobs.values())) == 4, jobs
    # two at a time: each batch was one SLURM array of two tasks
    assert jobs[0].split("_")[0] == jobs[1].split("_")[0] != jobs[2].split("_")[0], jobs
    assert (sweep.dir / "tuning.md").exists()
