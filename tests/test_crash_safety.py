"""Crash safety: checkpoints, exact resume after kill -9, corrupt files, NaNs, failing sweeps,
bad input and environment faults, each met as a user meets it."""

import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch

import tests.toy_envs  # noqa: F401  (registers Counter-v0)
from tests.conftest import ROOT, TINY, run_py, without_timing
from trpo.envs.state import env_state, set_env_state
from trpo.io.checkpoint import CheckpointError, read_checkpoint
from trpo.io.provenance import cpu_name
from trpo.config import ConfigError
from trpo.io.run_folder import CHECKPOINT, PREVIOUS, RunFolder
from trpo.train import TrainingError, train


def save_checkpoint(run_dir, state):
    RunFolder(run_dir).save_checkpoint(state)


def newest_readable_checkpoint(run_dir):
    """The newest checkpoint of ``run_dir`` that passes its checksum, as a resumed run tries."""
    return next((state for _, state in RunFolder(run_dir).read_checkpoints()
                 if isinstance(state, dict)), None)

# --------------------------------------------------------------------------- checkpoint files


def test_checkpoint_round_trips_numpy_torch_and_python_values(tmp_path):
    state = {"a": np.arange(5, dtype=np.float32), "b": torch.ones(3), "c": (1, 2.5, None),
             "d": {"e": np.int64(7), "f": [np.zeros((2, 2))], "g": "text"},
             "rng": np.random.default_rng(3).bit_generator.state}
    save_checkpoint(tmp_path, state)
    loaded = read_checkpoint(tmp_path / CHECKPOINT)
    np.testing.assert_array_equal(loaded["a"], state["a"])
    assert loaded["a"].dtype == np.float32 and torch.equal(loaded["b"], state["b"])
    assert loaded["c"] == (1, 2.5, None) and loaded["d"]["e"] == 7
    assert loaded["rng"] == state["rng"]


def test_a_new_checkpoint_keeps_the_previous_one(tmp_path):
    save_checkpoint(tmp_path, {"iteration": 1})
    save_checkpoint(tmp_path, {"iteration": 2})
    assert read_checkpoint(tmp_path / CHECKPOINT)["iteration"] == 2
    assert read_checkpoint(tmp_path / PREVIOUS)["iteration"] == 1
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_a_damaged_checkpoint_is_reported_by_path_and_the_previous_one_used(tmp_path, caplog,
                                                                             damage):
    save_checkpoint(tmp_path, {"iteration": 1, "weights": torch.randn(1000)})
    save_checkpoint(tmp_path, {"iteration": 2, "weights": torch.randn(1000)})
    path = tmp_path / CHECKPOINT
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:len(data) // 2])
    else:
        path.write_bytes(data[:2000] + bytes(b ^ 0xFF for b in data[2000:2100]) + data[2100:])
    (_, first), (_, second) = RunFolder(tmp_path).read_checkpoints()
    assert isinstance(first, CheckpointError) and str(path) in str(first)
    assert "checksum" in str(first) and second["iteration"] == 1


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    """Even with a valid checksum, loading is weights_only: no object is rebuilt from the file."""
    import hashlib

    payload = io.BytesIO()
    torch.save({"evil": RunsCode()}, payload, pickle_module=pickle)
    data = payload.getvalue()
    (tmp_path / CHECKPOINT).write_bytes(hashlib.sha256(data).hexdigest().encode() + b"\n" + data)
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        read_checkpoint(tmp_path / CHECKPOINT)


# ---------------------------------------------------------------------------- environments


# Ant-v5 and Humanoid-v5 read positions derived from the state before they step: before, a
# restored one's first reward differed.
@pytest.mark.parametrize("env_id", ["Hopper-v5", "Ant-v5", "Humanoid-v5", "CartPole-v1",
                                    "Counter-v0"])
def test_an_environment_state_restores_its_future_exactly(env_id):
    env = gym.make(env_id)
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(5):
        env.step(env.action_space.sample())
    saved = env_state(env)
    actions = [env.action_space.sample() for _ in range(40)]

    def future():
        out = []
        for action in actions:
            obs, reward, terminated, truncated, _ = env.step(action)
            out.append((obs.tolist(), reward, terminated, truncated))
            if terminated or truncated:
                env.reset()
        return out

    first = future()
    set_env_state(env, saved)
    assert future() == first


# ----------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("env, fit, extra", [
    ("cartpole", "foreground", []), ("hopper", "foreground", []), ("hopper", "background", []),
    # the value targets' running statistics are resumed too, through a background fit
    ("hopper", "background", ["critic.normalize_targets=true"])])
def test_resuming_gives_the_rows_of_an_uninterrupted_run(compose_config, tmp_path, env, fit,
                                                         extra):
    base = [f"env={env}", *TINY, "checkpoint_every=2", "eval_every=2", "critic.epochs=2",
            "solver=kl_penalty" if env == "cartpole" else "solver=trpo",
            f"critic.background={fit == 'background'}", *extra]
    train(compose_config([*base, "total_steps=1024"]), tmp_path / "whole")
    # A run stopped after 4 iterations, then asked to go on to the full budget.
    train(compose_config([*base, "total_steps=512"]), tmp_path / "pieces")
    with open(tmp_path / "pieces" / "progress.csv", "a") as file:
        file.write("5,640,1.0,garbage written after the last checkpoint\n")
    train(compose_config([*base, "total_steps=1024"]), tmp_path / "pieces")
    whole, pieces = (without_timing(pd.read_csv(tmp_path / d / "progress.csv"))
                     for d in ("whole", "pieces"))
    assert whole["iteration"].tolist() == list(range(1, 9))
    pd.testing.assert_frame_equal(whole, pieces)


def test_resuming_draws_the_fvp_subsets_an_uninterrupted_run_draws(compose_config, tmp_path):
    """The solver's generator is checkpointed: after a resume the subsets go on as they would."""
    base = ["env=hopper", *TINY, "checkpoint_every=2", "eval_every=2", "critic.epochs=2",
            "solver=trpo", "solver.fvp_subsample=4"]
    train(compose_config([*base, "total_steps=1024"]), tmp_path / "whole")
    train(compose_config([*base, "total_steps=512"]), tmp_path / "pieces")
    train(compose_config([*base, "total_steps=1024"]), tmp_path / "pieces")
    whole, pieces = (without_timing(pd.read_csv(tmp_path / d / "progress.csv"))
                     for d in ("whole", "pieces"))
    assert whole["iteration"].tolist() == list(range(1, 9))
    pd.testing.assert_frame_equal(whole, pieces)


def test_kill_9_in_the_middle_then_the_same_command_gives_an_uninterrupted_run(tmp_path):
    args = ["env=hopper", "total_steps=7680", "steps_per_iteration=512", "num_envs=2",
            "eval_every=4", "eval_episodes=1", "critic.epochs=2", "checkpoint_every=3",
            "logger.writers=[]", "solver.max_kl_final=0.002",  # δ's schedule resumes too
            "critic.background=true"]  # and the killed run's value-fit worker lets the folder go
    assert run_py(*args, f"hydra.run.dir={tmp_path / 'whole'}").returncode == 0

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "run.py", *args, f"hydra.run.dir={killed}"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it between two checkpoints, after iteration 7
        progress = killed / "progress.csv"
        if progress.exists() and len(progress.read_text().splitlines()) >= 8:
            break
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    rows_at_kill = len(pd.read_csv(killed / "progress.csv"))
    assert 7 <= rows_at_kill < 15, "the run should be killed part-way"

    resumed = run_py(*args, f"hydra.run.dir={killed}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stderr + resumed.stdout
    whole, pieces = (without_timing(pd.read_csv(tmp_path / d / "progress.csv"))
                     for d in ("whole", "killed"))
    pd.testing.assert_frame_equal(whole, pieces)


def test_a_run_trained_elsewhere_with_the_same_config_is_copied_not_retrained(
        compose_config, tmp_path, monkeypatch):
    base = ["env=cartpole", *TINY, "checkpoint_every=1"]
    train(compose_config([*base, "name=first_study"]), tmp_path / "first" / "run")
    trained = (tmp_path / "first" / "run" / "progress.csv").read_text()

    def no_training(self, iteration, total_iterations):
        raise AssertionError("a reused run must not train")

    with monkeypatch.context() as patch:
        patch.setattr("trpo.learner.OnPolicyLearner.iterate", no_training)
        reuse = [*base, "name=second_study", f"reuse_from={tmp_path}"]
        train(compose_config(reuse), tmp_path / "second" / "run")
        assert (tmp_path / "second" / "run" / "progress.csv").read_text() == trained
        status = json.loads((tmp_path / "second" / "run" / "status.json").read_text())
        assert status["reused_from"] == str(tmp_path / "first" / "run")
        train(compose_config(reuse), tmp_path / "second" / "run")  # started again: resumes
        status = json.loads((tmp_path / "second" / "run" / "status.json").read_text())
        assert status["reused_from"] == str(tmp_path / "first" / "run")

    # A config that computes something else (another seed, more steps, resume=false) trains.
    for change in (["seed=1"], ["total_steps=384"], ["resume=false"]):
        run_dir = tmp_path / "other" / "_".join(change)
        train(compose_config([*base, f"reuse_from={tmp_path / 'first'}", *change]), run_dir)
        assert "reused_from" not in json.loads((run_dir / "status.json").read_text())
        assert (run_dir / "progress.csv").read_text() != trained


def test_status_and_checkpoint_record_the_code_that_ran(compose_config, tmp_path):
    train(compose_config(["env=cartpole", *TINY]), tmp_path)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip() or None
    status = json.loads((tmp_path / "status.json").read_text())
    checkpoint = read_checkpoint(tmp_path / CHECKPOINT)
    assert status["code"]["commit"] == checkpoint["code"]["commit"] == head
    assert status["code"]["torch"] == torch.__version__
    assert status["code"]["gymnasium"] == gym.__version__
    assert status["code"]["cpu"] == checkpoint["code"]["cpu"] == cpu_name() != ""


def test_resuming_a_checkpoint_of_other_code_says_what_changed(compose_config, tmp_path,
                                                                caplog):
    caplog.set_level("INFO", logger="trpo")
    overrides = ["env=cartpole", *TINY, "checkpoint_every=1"]
    train(compose_config(overrides), tmp_path)
    caplog.clear()
    train(compose_config([*overrides, "total_steps=384"]), tmp_path)  # the same code
    assert "resuming" in caplog.text and "other code" not in caplog.text

    checkpoint = read_checkpoint(tmp_path / CHECKPOINT)
    checkpoint["code"] = {**checkpoint["code"], "commit": "0" * 40, "torch": "1.0.0",
                          "cpu": "another CPU"}
    save_checkpoint(tmp_path, checkpoint)
    caplog.clear()
    train(compose_config([*overrides, "total_steps=512"]), tmp_path)
    message = next(r.getMessage() for r in caplog.records if "other code" in r.getMessage())
    assert f"commit: {'0' * 40} →" in message and f"torch: 1.0.0 → {torch.__version__}" in message
    assert f"cpu: another CPU → {cpu_name()}" in message


def test_resume_false_starts_afresh_beside_the_existing_run(compose_config, tmp_path):
    cfg = compose_config(["env=cartpole", *TINY])
    train(cfg, tmp_path / "run")
    before = (tmp_path / "run" / "progress.csv").read_text()
    train(compose_config(["env=cartpole", *TINY, "resume=false"]), tmp_path / "run")
    assert (tmp_path / "run" / "progress.csv").read_text() == before
    assert len(pd.read_csv(tmp_path / "run_restart1" / "progress.csv")) == 2


def test_resuming_with_a_different_config_is_refused_in_one_line(compose_config, tmp_path):
    train(compose_config(["env=cartpole", *TINY]), tmp_path)
    with pytest.raises(ConfigError) as error:
        train(compose_config(["env=cartpole", *TINY, "solver.max_kl=0.02"]), tmp_path)
    assert "solver.max_kl" in str(error.value) and "\n" not in str(error.value)


def test_more_steps_on_resume_are_refused_when_the_trust_region_shrinks_over_them(
        compose_config, tmp_path):
    """δ's schedule is spread over total_steps: a longer run would have used other δs so far."""
    scheduled = ["env=cartpole", *TINY, "solver.max_kl_final=0.001"]
    train(compose_config(scheduled), tmp_path)
    with pytest.raises(ConfigError) as error:
        train(compose_config([*scheduled, "total_steps=512"]), tmp_path)
    assert "total_steps" in str(error.value) and "\n" not in str(error.value)


def test_with_no_usable_checkpoint_the_run_stops_and_leaves_progress_alone(compose_config,
                                                                            tmp_path):
    train(compose_config(["env=cartpole", *TINY]), tmp_path)
    before = (tmp_path / "progress.csv").read_bytes()
    for name in (CHECKPOINT, PREVIOUS):
        if (tmp_path / name).exists():
            (tmp_path / name).write_bytes(b"0" * 64 + b"\nnot a checkpoint")
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        train(compose_config(["env=cartpole", *TINY, "total_steps=512"]), tmp_path)
    assert (tmp_path / "progress.csv").read_bytes() == before


# -------------------------------------------------------------------------- non-finite values


def test_nan_updates_are_rejected_counted_and_stop_the_run(compose_config, tmp_path):
    cfg = compose_config(["env=cartpole", *TINY, "total_steps=2048", "checkpoint_every=1",
                          "max_rejected_updates=3",
                          "solver._target_=tests.toy_solvers.PoisonedTRPO"])
    with pytest.raises(TrainingError, match=r"3 policy updates in a row .* iteration 3"):
        train(cfg, tmp_path)
    progress = pd.read_csv(tmp_path / "progress.csv")
    assert progress["update_nonfinite"].tolist() == [1.0, 1.0, 1.0]
    assert progress["update_accepted"].tolist() == [0.0, 0.0, 0.0]
    checkpoint = newest_readable_checkpoint(tmp_path)
    assert checkpoint["iteration"] == 3
    assert all(torch.isfinite(p).all() for p in checkpoint["policy"].values())
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "failed" and "TrainingError" in status["error"]


# ---------------------------------------------------------------------------------- sweeps


def test_a_failing_job_does_not_stop_the_sweep_which_exits_non_zero(tmp_path):
    result = run_py("-m", "env=cartpole",
                    "solver._target_=tests.toy_solvers.PoisonedTRPO,trpo.solvers.TRPO",
                    "max_rejected_updates=1", *TINY, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode != 0
    statuses = {n: json.loads((tmp_path / n / "status.json").read_text())["status"]
                for n in ("0", "1")}
    assert statuses == {"0": "failed", "1": "completed"}
    assert len(pd.read_csv(tmp_path / "1" / "progress.csv")) == 2


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("override, message", [
    ("solver.max_kl=0", "error: solver.max_kl=0.0 is not allowed: must be a finite number > 0"),
    ("advantage.lam=1.5", "error: advantage.lam=1.5 is not allowed: must be in [0, 1]"),
    ("advantage.gamma=0", "error: advantage.gamma=0.0 is not allowed: must be in (0, 1]"),
    ("total_steps=0", "error: total_steps=0 is not allowed: must be a positive integer"),
    ("steps_per_iteration=-8", "error: steps_per_iteration=-8 is not allowed: must be a "
                               "positive integer"),
    ("env.id=NoSuchEnv-v0", "error: env.id='NoSuchEnv-v0' is not allowed: must be a registered "
                            "Gymnasium id, e.g. Hopper-v5, Walker2d-v5, CartPole-v1 (or "
                            "module:Id)"),
    ("reuse_from=/no/such/folder", "error: reuse_from='/no/such/folder' is not allowed: must be "
                                   "an existing folder or null"),
    ("seed=4294967296", "error: seed=4294967296 is not allowed: must be an integer in "
                        "[0, 2**32)"),
    ("+env.kwargs.foo=1", "error: env.kwargs={'foo': 1} is not allowed: Hopper-v5 does not "
                          "accept them (unexpected keyword argument 'foo')"),
    ("env.id=FrozenLake-v1", "error: env.id='FrozenLake-v1' is not allowed: must have a Box "
                             "observation space (a vector of numbers), not Discrete(16)"),
    ("env.id=Blackjack-v1", "error: env.id='Blackjack-v1' is not allowed: must have a Box "
                            "observation space (a vector of numbers), not Tuple(Discrete(32), "
                            "Discrete(11), Discrete(2))"),
])
def test_bad_values_exit_2_with_one_line_and_no_run_directory(tmp_path, override, message):
    run_dir = tmp_path / "run"
    result = run_py(override, f"hydra.run.dir={run_dir}", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [message]
    assert not run_dir.exists()


def test_an_unwritable_output_directory_is_named_in_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run_py(f"hydra.run.dir={blocker / 'run'}", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: hydra.run.dir={blocker / 'run'} cannot be written: Not a directory"]


def test_wandb_online_without_a_login_warns_and_trains_on(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env["WANDB_DIR"] = str(tmp_path)
    overrides = [o for o in TINY if not o.startswith("logger.writers")]
    result = subprocess.run([sys.executable, "run.py", "env=cartpole", *overrides,
                             "logger.writers=[wandb]", "logger.wandb.mode=online", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=180, env=env,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wandb could not start, training goes on without it: UsageError" in (
        result.stderr + result.stdout)
    assert len(pd.read_csv(tmp_path / "run" / "progress.csv")) == 2


def test_unusable_checkpoints_stop_the_command_in_one_line(tmp_path):
    args = ["env=cartpole", *TINY, f"hydra.run.dir={tmp_path}"]
    assert run_py(*args).returncode == 0
    for name in (CHECKPOINT, PREVIOUS):
        if (tmp_path / name).exists():
            (tmp_path / name).write_bytes(b"garbled")
    before = (tmp_path / "progress.csv").read_bytes()
    result = run_py(*args, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: no usable checkpoint: ") and str(tmp_path) in lines[-1]
    assert (tmp_path / "progress.csv").read_bytes() == before


def test_a_full_disk_stops_the_run_clearly_and_keeps_the_last_checkpoint(compose_config,
                                                                         tmp_path, monkeypatch):
    """No space left while writing progress.csv: the run stops with one line saying where, its
    status says interrupted (it resumes once there is room), and the checkpoint written before
    stays loadable. tests/test_train.py fills a real disk."""
    import errno

    from trpo.io import logger as logger_module
    from trpo.train import StorageFull

    real_write = logger_module.CSVWriter.write

    def write(self, row):
        if row["iteration"] >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, row)

    monkeypatch.setattr(logger_module.CSVWriter, "write", write)
    cfg = compose_config(["env=cartpole", *TINY, "total_steps=1024", "checkpoint_every=2"])
    with pytest.raises(StorageFull, match=r"cannot be written \(No space left on device: a file "
                                          r"of the run\); the run stopped at iteration 3; the "
                                          r"checkpoint of iteration 2 is kept"):
        train(cfg, tmp_path)
    assert newest_readable_checkpoint(tmp_path)["iteration"] == 2
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "interrupted"
    assert len(pd.read_csv(tmp_path / "progress.csv")) == 2
