"""``run.py`` end to end, as a user runs it: tiny budgets, real environments, real processes."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT, TINY, run_py, without_timing
from trpo.io.run_folder import RunFolder
from trpo.train import train

INTERFACE_COLUMNS = ["iteration", "env_steps", "wall_s", "return_mean", "eval_return_mean", "kl"]


def test_every_solver_and_estimator_on_cartpole_and_hopper(tmp_path):
    result = run_py("-m", "env=cartpole,hopper", "solver=trpo,npg,kl_penalty",
                    "advantage=td,gae,mc", "hydra/launcher=basic", *TINY,
                    f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p.parent for p in tmp_path.glob("*/progress.csv"))
    assert len(runs) == 18
    for run in runs:
        progress = pd.read_csv(run / "progress.csv")
        assert list(progress.columns[:6]) == INTERFACE_COLUMNS
        assert progress["iteration"].tolist() == [1, 2]
        assert progress["env_steps"].tolist() == [128, 256]
        assert progress["kl"].notna().all() and progress["eval_return_mean"].notna().all()
        # Observations are normalised by default: new statistics move the policy a little.
        assert (progress["kl_obs_stats"] > 0).all()
        assert (run / ".hydra" / "config.yaml").exists() and (run / "agent.pt").exists()


def test_multirun_with_the_default_parallel_launcher_writes_one_directory_per_seed(tmp_path):
    result = run_py("-m", "env=cartpole", "seed=0,1", *TINY, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = (pd.read_csv(tmp_path / str(n) / "progress.csv") for n in (0, 1))
    assert len(first) == len(second) == 2
    assert not first["kl"].equals(second["kl"])  # different seeds, different runs


@pytest.mark.parametrize("overrides", [["env=hopper"], ["env=cartpole", "solver=kl_penalty"]])
def test_the_same_seed_writes_the_same_progress_rows(compose_config, tmp_path, overrides):
    cfg = compose_config([*overrides, *TINY, "total_steps=384", "eval_every=2"])
    train(cfg, tmp_path / "a")
    train(cfg, tmp_path / "b")
    a, b = (without_timing(pd.read_csv(tmp_path / name / "progress.csv")) for name in "ab")
    pd.testing.assert_frame_equal(a, b)
    assert a["eval_return_mean"].isna().tolist() == [True, False, False]


def test_raw_observations_leave_no_kl_to_new_statistics(compose_config, tmp_path):
    train(compose_config(["env=cartpole", *TINY, "normalize_obs=false"]), tmp_path)
    assert (pd.read_csv(tmp_path / "progress.csv")["kl_obs_stats"] == 0).all()


@pytest.mark.parametrize("solver", ["trpo", "npg"])
def test_the_trust_region_shrinks_from_max_kl_at_the_first_update_to_max_kl_final_at_the_last(
        compose_config, tmp_path, solver):
    train(compose_config(["env=cartpole", *TINY, "total_steps=384", f"solver={solver}",
                          "solver.max_kl=0.01", "solver.max_kl_final=0.001"]), tmp_path)
    deltas = pd.read_csv(tmp_path / "progress.csv")["trust_region"].tolist()
    assert deltas == pytest.approx([0.01, 0.0055, 0.001], rel=1e-12)


def test_a_bad_value_exits_with_one_line_and_leaves_no_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    result = run_py("solver.max_kl=-1", f"hydra.run.dir={run_dir}", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: solver.max_kl=-1.0 is not allowed: must be a finite number > 0")
    assert not run_dir.exists()


def test_wandb_offline_run_is_written_under_the_run_directory(tmp_path):
    overrides = [o for o in TINY if not o.startswith("logger.writers")]
    result = run_py("env=cartpole", *overrides, "logger.writers=[wandb]",
                    f"hydra.run.dir={tmp_path}", timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["trpo", "npg", "kl_penalty", "ppo_clip"])
def test_cartpole_reaches_the_maximum_return_with_each_solver(tmp_path, solver):
    result = run_py("env=cartpole", f"solver={solver}", "logger.writers=[]",
                    f"hydra.run.dir={tmp_path}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert pd.read_csv(tmp_path / "progress.csv")["eval_return_mean"].max() == 500.0


@pytest.mark.parametrize("solver", ["ppo_clip", "vpg"])
def test_reference_solvers_train_through_the_same_loop(compose_config, tmp_path, solver):
    cfg = compose_config(["env=pendulum", *TINY, f"solver={solver}"])
    train(cfg, tmp_path)
    progress = pd.read_csv(tmp_path / "progress.csv")
    assert len(progress) == 2 and (progress["kl"] > 0).all()
    assert (progress["update_accepted"] == 1).all()


def test_a_study_run_again_reuses_its_folders_and_leaves_finished_runs_alone(tmp_path):
    """``python -m experiments STUDY`` twice: the second time finds every run finished."""
    command = [sys.executable, "-m", "experiments", "quickstart",
               "hydra.sweeper.params.env=cartpole", "hydra.sweeper.params.solver=trpo",
               "hydra.sweeper.params.seed='0,1'", "total_steps=256", "steps_per_iteration=128",
               "num_envs=2", "hydra/launcher=basic", "logger.writers=[]",
               "--sweep-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
               "--reps", "50"]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert names == [f"env=cartpole,num_envs=2,seed={s},solver=trpo,steps_per_iteration=128,"
                     "total_steps=256" for s in (0, 1)]
    before = {name: (tmp_path / "runs" / name / "progress.csv").read_text() for name in names}
    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()) == names
    for name in names:
        assert (tmp_path / "runs" / name / "progress.csv").read_text() == before[name]
    assert "(n=2)" in (tmp_path / "out" / "final.md").read_text()
    status = subprocess.run([*command, "--status"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert status.returncode == 0, status.stderr[-3000:]
    assert [line.split() for line in status.stdout.splitlines()[1:3]] == [
        [name, "completed"] for name in names]
    assert status.stdout.splitlines()[-1] == "every run has finished"

    # Another study with the same runs (here: the same one in another folder) copies them.
    command[command.index("--sweep-dir") + 1] = str(tmp_path / "again")
    status = subprocess.run([*command, "--status"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert status.returncode == 0, status.stderr[-3000:]
    assert [line.split() for line in status.stdout.splitlines()[1:3]] == [
        [name, "to", "be", "copied", "from", str(tmp_path / "runs" / name)] for name in names]
    assert "0 copied, 0 part-way, 2 to be copied, 0 not started" in status.stdout
    no_reuse = subprocess.run([*command, "--status", "--no-reuse"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert "2 not started" in no_reuse.stdout, no_reuse.stderr[-3000:]
    third = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    for name in names:
        copy = tmp_path / "again" / name
        assert (copy / "progress.csv").read_text() == before[name]  # timings too: not retrained
        assert json.loads((copy / "status.json").read_text())["reused_from"] == str(
            tmp_path / "runs" / name)

    # A run trained before a default changed is stale: the sweep would refuse it, and says so.
    saved = tmp_path / "runs" / names[0] / ".hydra" / "config.yaml"
    before_change = OmegaConf.load(saved)
    before_change.advantage.lam = 0.9
    OmegaConf.save(before_change, saved)
    command[command.index("--sweep-dir") + 1] = str(tmp_path / "runs")
    status = subprocess.run([*command, "--status"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert status.returncode == 0, status.stderr[-3000:]
    assert status.stdout.splitlines()[1].split()[:8] == [
        names[0], "stale", "trained", "with", "other", "values", "of", "advantage.lam;"]
    assert "1 completed, 0 copied, 0 part-way, 1 stale, 0 not started" in status.stdout


@pytest.mark.parametrize("exit_code, sweeps_run", [(130, 1), (143, 1), (1, 2), (0, 2)])
def test_a_study_stops_at_an_interrupted_sweep_and_goes_on_past_a_failed_one(
        tmp_path, monkeypatch, exit_code, sweeps_run):
    """mujoco_suite has two sweeps (its own, then the baseline's): a signal that stopped the
    first leaves the second for the next call; a run that failed does not."""
    import experiments.__main__ as entry

    commands = []
    monkeypatch.setattr(entry, "run_sweep", lambda command: commands.append(command) or exit_code)
    monkeypatch.setattr(entry, "analyse", lambda argv: 0)
    assert entry.main(["mujoco_suite", "--sweep-dir", str(tmp_path), "--out",
                       str(tmp_path / "out")]) == exit_code
    assert len(commands) == sweeps_run
    assert ("solver=sb3_trpo" in commands[-1]) == (sweeps_run == 2)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_a_study_stops_every_process_of_its_sweep_at_a_checkpoint(tmp_path, signum):
    """Before, a signal to ``python -m experiments`` alone killed run.py and left its joblib
    workers training with no one to report to."""
    study = subprocess.Popen(
        [sys.executable, "-m", "experiments", "quickstart", "hydra.sweeper.params.env=cartpole",
         "hydra.sweeper.params.solver=trpo", "hydra.sweeper.params.seed='0,1'",
         "total_steps=1000000", "steps_per_iteration=128", "num_envs=2", "checkpoint_every=1",
         "logger.writers=[]", "--sweep-dir", str(tmp_path / "runs"), "--out",
         str(tmp_path / "out")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)
    deadline = time.time() + 120
    while len({path.parent for path in (tmp_path / "runs").glob("*/checkpoint*.ckpt")}) < 2:
        assert time.time() < deadline and study.poll() is None, "the runs never checkpointed"
        time.sleep(0.2)  # until both runs train
    os.kill(study.pid, signum)  # the study's process alone, as a scheduler or `kill` sends it
    try:
        output = study.communicate(timeout=120)[0]
    finally:  # what would be left training if the signal did not reach them
        for pid in processes_with_files_below(tmp_path):
            os.kill(pid, signal.SIGKILL)
    assert study.returncode in (130, 143), output[-3000:]
    assert processes_with_files_below(tmp_path) == [], "processes of the sweep still running"
    for run in (tmp_path / "runs").glob("*seed=*"):
        assert RunFolder(run).state() == "interrupted", output[-3000:]


def processes_with_files_below(folder: Path) -> list[int]:
    """The processes holding a file below ``folder`` open (a run holds its run.log)."""
    pids = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd).startswith(str(folder)) for fd in fd_dir.iterdir()):
                pids.append(int(fd_dir.parent.name))
    return pids


def test_async_vector_mode_trains(compose_config, tmp_path):
    cfg = compose_config(["env=cartpole", *TINY, "vector_mode=async"])
    train(cfg, tmp_path)
    assert len(pd.read_csv(tmp_path / "progress.csv")) == 2


def test_a_run_that_fails_finishes_its_wandb_run_and_records_the_failure(compose_config,
                                                                         tmp_path):
    """joblib reuses worker processes: a W&B run left open would leak into the next job."""
    import wandb

    import tests.toy_envs  # noqa: F401  (registers NaNReward-v0)
    from trpo.rollout import NonFiniteError

    overrides = [o for o in TINY if not o.startswith("logger.writers")]
    cfg = compose_config(["env=cartpole", "env.id=NaNReward-v0", *overrides,
                          "logger.writers=[wandb]", "num_envs=1", "steps_per_iteration=8"])
    with pytest.raises(NonFiniteError):
        train(cfg, tmp_path)
    assert wandb.run is None
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed" and "non-finite reward" in status["error"]
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))


def test_submitit_local_launcher_runs_the_cluster_path(tmp_path):
    """submitit_local goes through the same submitit code as SLURM, with local processes."""
    result = run_py("-m", "hydra/launcher=submitit_local", "env=cartpole", "seed=0,1", *TINY,
                    f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(len(pd.read_csv(tmp_path / n / "progress.csv")) == 2 for n in ("0", "1"))


def test_slurm_preset_composes_with_the_submitit_slurm_launcher():
    result = run_py("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg",
                    "hydra", "-p", "hydra.launcher", timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SlurmLauncher" in result.stdout and "partition: gpu" in result.stdout
    assert "cpus_per_task: 2" in result.stdout and "max_num_timeout: 20" in result.stdout


def test_background_value_fit_gives_the_same_run_as_the_foreground_one(compose_config,
                                                                         tmp_path):
    base = ["env=hopper", *TINY, "total_steps=512", "critic.epochs=3"]
    train(compose_config([*base, "critic.background=true"]), tmp_path / "background")
    train(compose_config([*base, "critic.background=false"]), tmp_path / "foreground")
    a, b = (without_timing(pd.read_csv(tmp_path / name / "progress.csv"))
            for name in ("background", "foreground"))
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow  # 40 s of fresh processes; the benchmark's own command is the real check
def test_the_speed_benchmark_runs_on_a_tiny_budget(tmp_path):
    """The benchmark's numbers are for the README; here only that it runs and writes its tables."""
    result = subprocess.run([sys.executable, "-m", "experiments.benchmark", "--envs", "hopper",
                             "--solvers", "trpo", "--iterations", "2", "--repeats", "1",
                             "--backends", "gymnasium", "mujoco", "--out",
                             str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    speed = pd.read_csv(tmp_path / "speed.csv")
    assert {f"{what} {backend}" for what in ("raw env", "ours trpo")
            for backend in ("gymnasium", "mujoco")} <= set(speed["what"])
    assert (speed["steps_per_s"] > 0).all() and (speed["peak_mb"] > 0).all()
    breakdown = pd.read_csv(tmp_path / "breakdown_ms.csv")
    assert {"rollout", "policy", "cg", "linesearch", "value"} <= set(breakdown.columns)
