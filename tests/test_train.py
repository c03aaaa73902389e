"""A run's lifecycle (trpo.train, trpo.loop): signals stop it cleanly and resumably, a bad
value is refused before the folder is touched, the stop rules, and the cluster job it records."""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, TINY, run_py, without_timing
from tests.run_folders import strict_json
from trpo.config import ConfigError
from trpo.io.run_folder import RunFolder
from trpo.train import RunInterrupted, train

CARTPOLE = ["env=cartpole", *TINY, "checkpoint_every=2", "eval_every=2"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_run_cleanly_and_the_printed_command_resumes_it_exactly(tmp_path,
                                                                                  signum):
    # With the value fit's worker process, and the signal sent to the whole process group, as
    # Ctrl-C in a terminal sends it: the worker ignores it and the run stops as it would alone.
    args = ["env=hopper", "total_steps=15360", "steps_per_iteration=512", "num_envs=2",
            "eval_every=4", "eval_episodes=1", "critic.epochs=2", "checkpoint_every=5",
            "logger.writers=[]", "critic.background=true"]
    assert run_py(*args, f"hydra.run.dir={tmp_path / 'whole'}").returncode == 0
    stopped = tmp_path / "stopped"
    process = subprocess.Popen([sys.executable, "run.py", *args, f"hydra.run.dir={stopped}"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # part-way, between two checkpoints
        progress = stopped / "progress.csv"
        if progress.exists() and len(progress.read_text().splitlines()) >= 8:
            break
        time.sleep(0.02)
    os.killpg(process.pid, signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted: stopped after iteration ") and "to resume: " in last
    status = strict_json(stopped / "status.json")
    assert status["status"] == "interrupted" and status["signal"] == signal.Signals(signum).name
    assert status["checkpoint_iteration"] == status["iteration"]
    assert RunFolder(stopped).state() == "interrupted"

    command = shlex.split(last.split("to resume: ", 1)[1])
    assert command[:2] == ["python", "run.py"]
    resumed = subprocess.run([sys.executable, *command[1:]], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole, pieces = (without_timing(pd.read_csv(tmp_path / d / "progress.csv"))
                     for d in ("whole", "stopped"))
    pd.testing.assert_frame_equal(whole, pieces)


def test_a_stopped_run_finishes_its_wandb_run_as_interrupted(compose_config, tmp_path,
                                                             monkeypatch):
    import trpo.io.logger
    import trpo.learner

    closed = []
    monkeypatch.setattr(trpo.io.logger.WandbWriter, "close",
                        lambda self, status="completed": (closed.append(status),
                                                          self.run.finish()))
    real_iteration = trpo.learner.OnPolicyLearner.iterate

    def iteration_then_signal(self, iteration, total_iterations):
        row = real_iteration(self, iteration, total_iterations)
        if iteration == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return row

    monkeypatch.setattr(trpo.learner.OnPolicyLearner, "iterate", iteration_then_signal)
    overrides = [o for o in CARTPOLE if not o.startswith("logger.writers")]
    cfg = compose_config([*overrides, "logger.writers=[wandb]", "total_steps=1024"])
    with pytest.raises(RunInterrupted, match="stopped after iteration 2") as stop:
        train(cfg, tmp_path)
    assert stop.value.signal == signal.SIGTERM and closed == ["interrupted"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back


def test_a_config_error_raises_before_the_folder_is_touched(compose_config, tmp_path):
    with pytest.raises(ConfigError):
        train(compose_config([*CARTPOLE, "advantage.lam=3"]), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_zero_gradient_updates_do_not_count_towards_max_rejected_updates(compose_config,
                                                                        tmp_path):
    cfg = compose_config([*CARTPOLE, "total_steps=768", "max_rejected_updates=1",
                          "solver._target_=tests.toy_solvers.ZeroAdvantageTRPO"])
    train(cfg, tmp_path)
    progress = pd.read_csv(tmp_path / "progress.csv")
    assert progress["zero_gradient"].tolist() == [1.0] * 6
    assert progress["update_nonfinite"].tolist() == [0.0] * 6


def test_status_names_the_slurm_job_of_an_array_task_and_its_restarts(monkeypatch):
    from trpo.train import cluster_job

    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                 "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(name, raising=False)
    assert cluster_job() == {}
    monkeypatch.setenv("SLURM_JOB_ID", "105")
    assert cluster_job() == {"slurm_job_id": "105", "slurm_restart_count": 0}
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "104")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert cluster_job() == {"slurm_job_id": "104_0", "slurm_restart_count": 2}


def test_a_task_that_fails_at_its_first_reset_ends_the_run_at_once_in_one_line(tmp_path):
    """The value fit's worker process has started when the environments are first reset: it is
    ended with them, so the process exits instead of waiting for the worker."""
    run_dir = tmp_path / "run"
    started = time.time()
    result = run_py("env=cartpole", "env.id=tests.toy_envs:BuggyReset-v0", *TINY,
                    "critic.background=true", f"hydra.run.dir={run_dir}", timeout=120)
    assert time.time() - started < 60
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: RuntimeError: this environment cannot reset")
    assert not run_dir.exists()  # made by this command, left empty: removed


def test_a_resume_with_fewer_total_steps_than_trained_is_refused_touching_nothing(tmp_path):
    # 500 steps train 4 whole iterations of 128 (512 steps); the same command again is a
    # finished run, not a shrinking one (a bug once refused every rerun of a finished study).
    args = [*CARTPOLE, "total_steps=500", f"hydra.run.dir={tmp_path}"]
    assert run_py(*args).returncode == 0
    again = run_py(*args, timeout=120)
    assert again.returncode == 0, again.stderr
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
              and p.name != "run.lock"}
    result = run_py(*CARTPOLE, "total_steps=384", f"hydra.run.dir={tmp_path}", timeout=120)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: total_steps=384 is not allowed: must be at least 385: the "
                           f"run in {tmp_path} has trained 4 iterations of 128 steps")
    assert before == {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()
                      and p.name != "run.lock"}


@pytest.mark.parametrize("overrides, message", [
    (["env.id=tests.toy_envs:NaNReward-v0"],
     "error: NonFiniteError: tests.toy_envs:NaNReward-v0 returned a non-finite reward"),
    (["solver._target_=tests.toy_solvers.PoisonedTRPO", "max_rejected_updates=2"],
     "error: TrainingError: 2 policy updates in a row were rejected"),
])
def test_a_run_that_cannot_go_on_ends_in_one_line_exit_1_recorded_failed(tmp_path, overrides,
                                                                         message):
    result = run_py("env=cartpole", *TINY, "total_steps=512", *overrides,
                    f"hydra.run.dir={tmp_path}", timeout=120)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(message) and "Traceback" not in result.stdout + result.stderr
    assert strict_json(tmp_path / "status.json")["status"] == "failed"


def test_status_json_says_the_iteration_of_the_last_checkpoint_during_a_run(compose_config,
                                                                           tmp_path,
                                                                           monkeypatch):
    import trpo.learner

    seen = []
    real_iteration = trpo.learner.OnPolicyLearner.iterate

    def iteration_then_look(self, iteration, total_iterations):
        seen.append(strict_json(tmp_path / "status.json"))
        return real_iteration(self, iteration, total_iterations)

    monkeypatch.setattr(trpo.learner.OnPolicyLearner, "iterate", iteration_then_look)
    train(compose_config([*CARTPOLE, "total_steps=768", "checkpoint_every=2"]), tmp_path)
    assert [(s["status"], s["iteration"]) for s in seen] == [
        ("running", 0), ("running", 0), ("running", 2), ("running", 2), ("running", 4),
        ("running", 4)]
    assert seen[-1]["total_steps"] == 768


def test_a_finished_run_ends_with_its_final_score_folder_and_agent(compose_config, tmp_path,
                                                                   caplog):
    """Before, a run that finished printed nothing after its last iteration."""
    from analysis.report import final_score

    caplog.set_level("INFO", logger="trpo")
    train(compose_config([*CARTPOLE, "total_steps=1280"]), tmp_path)
    last = caplog.records[-1].getMessage()
    score = final_score(pd.read_csv(tmp_path / "progress.csv"))
    assert last.startswith(f"finished: final score {score:.1f} (mean evaluation return over "
                           "the last 10% of steps); ")
    assert f"agent {tmp_path}/agent.pt" in last and (tmp_path / "agent.pt").exists()
    assert last.endswith(f"python -m trpo.evaluate {tmp_path} --video {tmp_path}.mp4")


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size)``: a tmpfs of ``size`` (``"300k"``) mounted on a new folder, the way a
    disk fills; unmounted afterwards. Needs root (CI runs as root)."""
    mounts = []

    def mount(size: str, options: str = "") -> Path:
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}{options}", "tmpfs",
                               str(point)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


FILLING = ["env=cartpole", "total_steps=2560", "steps_per_iteration=128", "num_envs=2",
           "eval_every=1", "eval_episodes=1", "critic.epochs=1", "logger.writers=[]",
           "checkpoint_every=1"]


def test_a_full_disk_stops_the_run_in_one_line_leaving_a_folder_that_resumes(small_disk):
    """Before: a traceback-free but unhelpful `OSError: [Errno 28]`, `*.tmp` files left behind,
    and Python's "--- Logging error ---" tracebacks from run.log."""
    disk = small_disk("300k")
    run_dir = disk / "run"
    result = run_py(*FILLING, f"hydra.run.dir={run_dir}", timeout=120)
    assert result.returncode == 1
    [line] = [x for x in result.stderr.splitlines() if "] - iter" not in x]
    assert re.fullmatch(
        rf"error: {run_dir} cannot be written \(No space left on device: {run_dir}/"
        r"checkpoint\.ckpt\); the run stopped at iteration \d+; the checkpoint of iteration "
        r"\d+ is kept; once there is room, resume: python run\.py .*", line), line
    assert not list(run_dir.rglob("*.tmp"))
    folder = RunFolder(run_dir)
    assert folder.read_status()["status"] == "interrupted" and folder.state() == "interrupted"

    subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
    resumed = run_py(*FILLING, f"hydra.run.dir={run_dir}", timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert folder.state() == "completed"
    assert folder.progress.read().iterations() == list(range(1, 21))


def test_a_disk_full_at_the_start_leaves_no_folder_and_a_read_only_one_is_refused(small_disk):
    full = small_disk("4k") / "run"
    result = run_py(*FILLING, f"hydra.run.dir={full}", timeout=120)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {full} cannot be written (No space left on device: ")
    assert not full.exists()

    read_only = small_disk("1m", ",ro") / "run"
    result = run_py(*FILLING, f"hydra.run.dir={read_only}", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: hydra.run.dir={read_only} cannot be written: "
                                     "Read-only file system")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_before_training_ends_the_command_in_one_line_leaving_no_folder(tmp_path,
                                                                                 signum):
    """Before: a KeyboardInterrupt traceback and exit -2 while the imports ran, exit -15 and a
    folder holding only run.lock for a SIGTERM as the run started."""
    marker, run_dir = tmp_path / "made", tmp_path / "run"
    command = [sys.executable, "run.py", "env.id=tests.toy_envs:SlowMake-v0",
               f"+env.kwargs.marker={marker}", "logger.writers=[]", f"hydra.run.dir={run_dir}"]
    # While the imports and checks run: nothing is written yet.
    early = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    time.sleep(0.4)  # past Python's start (the handler is set first), before the imports end
    early.send_signal(signum)
    _, stderr = early.communicate(timeout=60)
    assert early.returncode == 128 + signum
    assert stderr.strip() == "interrupted before the run started: nothing was written"
    # In the job, making the task, before the run's own handlers take over.
    started = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + 60
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.02)
    started.send_signal(signum)
    _, stderr = started.communicate(timeout=60)
    assert started.returncode == 128 + signum
    assert stderr.strip() == ("interrupted before training started: run the same command "
                              "again to start it")
    assert not run_dir.exists()


def test_a_signal_while_a_finished_run_saves_its_agent_lets_it_complete(compose_config, tmp_path,
                                                                         monkeypatch):
    """Before: a SIGINT just after the last iteration gave exit 130, -2 or an atexit traceback,
    and no agent.pt."""
    save_agent = RunFolder.save_agent

    def interrupted_save(folder, agent):
        os.kill(os.getpid(), signal.SIGINT)
        save_agent(folder, agent)

    monkeypatch.setattr(RunFolder, "save_agent", interrupted_save)
    train(compose_config(["env=cartpole", *TINY]), tmp_path)
    folder = RunFolder(tmp_path)
    assert folder.state() == "completed" and folder.agent_path.exists()
