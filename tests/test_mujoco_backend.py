"""env.backend=mujoco gives Gymnasium's transitions bit for bit, so a run's rows are the same on
either backend, and either backend resumes the other's checkpoints."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from tests.conftest import TINY, without_timing
from trpo.config import EnvConfig
from trpo.envs import make_vector_env
from trpo.envs.mujoco_batch import TASKS
from trpo.envs.state import set_vector_env_state, vector_env_state
from trpo.train import train

ENV_OPTIONS = {"Hopper-v5": "hopper", "Walker2d-v5": "walker", "HalfCheetah-v5": "halfcheetah",
               "Swimmer-v5": "swimmer", "Ant-v5": "ant"}


def policy_like_actions(space, steps: int, num_envs: int, seed: int = 0) -> np.ndarray:
    """Gaussian samples clipped to the bounds, float32, as the collector passes them."""
    rng = np.random.default_rng(seed)
    samples = rng.normal(0.0, 1.0, (steps, num_envs, *space.shape)).astype(np.float32)
    return np.clip(samples, space.low, space.high)


def assert_same_steps(ours, theirs, actions) -> int:
    """Step both vector envs with ``actions``; every output must be equal to the last bit, the
    reward's terms included. Returns the number of episode ends."""
    ends = 0
    for t, action in enumerate(actions):
        mine, gym_step = ours.step(action), theirs.step(action)
        for name, a, b in zip(("observation", "reward", "terminated", "truncated"), mine,
                              gym_step):
            assert a.dtype == b.dtype and np.array_equal(a, b), f"{name} differs at step {t}"
        terms, their_terms = mine[4]["reward_terms"], gym_step[4]["reward_terms"]
        assert terms.keys() == their_terms.keys(), t
        for name in terms:
            assert np.array_equal(terms[name], their_terms[name]), f"{name} differs at step {t}"
        ended = gym_step[2] | gym_step[3]
        for i in np.flatnonzero(ended):
            assert np.array_equal(mine[4]["final_obs"][i], gym_step[4]["final_obs"][i]), t
        ends += int(ended.sum())
    return ends


@pytest.mark.parametrize("env_id, kwargs", [(env_id, {}) for env_id in TASKS] + [
    ("Hopper-v5", {"ctrl_cost_weight": 0.01, "healthy_reward": 2.0, "frame_skip": 2,
                   "exclude_current_positions_from_observation": False}),
    ("Walker2d-v5", {"terminate_when_unhealthy": False, "forward_reward_weight": 0.5}),
    ("Ant-v5", {"include_cfrc_ext_in_observation": False, "contact_cost_weight": 0.01,
                "healthy_z_range": [0.3, 0.9]})])
def test_each_task_steps_exactly_as_gymnasium_with_episode_ends(env_id, kwargs):
    cfg = EnvConfig(id=env_id, kwargs=kwargs, max_episode_steps=60)
    ours = make_vector_env(cfg, 4, workers=2, backend="mujoco")
    theirs = make_vector_env(cfg, 4, backend="gymnasium")
    assert ours.single_observation_space == theirs.single_observation_space
    obs_ours, _ = ours.reset(seed=[3, 4, 5, 6])
    obs_theirs, _ = theirs.reset(seed=[3, 4, 5, 6])
    assert np.array_equal(obs_ours, obs_theirs)
    ends = assert_same_steps(ours, theirs,
                             policy_like_actions(theirs.single_action_space, 200, 4))
    assert ends >= 8  # time limits at least, and falls on the tasks that end
    ours.close(), theirs.close()


@pytest.mark.parametrize("saved_on, resumed_on", [("mujoco", "mujoco"), ("gymnasium", "mujoco"),
                                                  ("mujoco", "gymnasium")])
@pytest.mark.parametrize("env_id", ["Hopper-v5", "Ant-v5"])
def test_either_backend_restores_the_others_state_exactly(env_id, saved_on, resumed_on):
    cfg = EnvConfig(id=env_id, max_episode_steps=80)
    first = make_vector_env(cfg, 3, workers=1, backend=saved_on)
    first.reset(seed=[0, 1, 2])
    actions = policy_like_actions(first.single_action_space, 160, 3, seed=1)
    for action in actions[:50]:
        first.step(action)
    saved = vector_env_state(first)
    later = make_vector_env(cfg, 3, workers=2, backend=resumed_on)
    later.reset(seed=[7, 8, 9])
    set_vector_env_state(later, saved)
    assert assert_same_steps(later, first, actions[50:]) >= 3
    first.close(), later.close()


@pytest.mark.parametrize("env_id", list(TASKS))
def test_a_full_iteration_trains_to_the_same_rows_on_either_backend(compose_config, tmp_path,
                                                                    env_id):
    """Two default-sized iterations (8 envs × 256 steps), episode ends inside them."""
    base = [f"env={ENV_OPTIONS[env_id]}", "total_steps=4096", "steps_per_iteration=2048",
            "eval_every=1", "eval_episodes=2", "critic.epochs=1", "logger.writers=[]",
            "env.max_episode_steps=100"]
    for backend in ("gymnasium", "mujoco"):
        train(compose_config([*base, f"env.backend={backend}"]), tmp_path / backend)
    rows = {backend: without_timing(pd.read_csv(tmp_path / backend / "progress.csv"))
            for backend in ("gymnasium", "mujoco")}
    assert (rows["mujoco"]["episodes"] > 0).all()
    pd.testing.assert_frame_equal(rows["gymnasium"], rows["mujoco"], check_exact=True)
    row = rows["mujoco"].iloc[0]
    assert 0 <= row["terminated_fraction"] <= 1 and row["reward_ctrl"] < 0
    if env_id in ("Hopper-v5", "Walker2d-v5"):  # 1 per step, except at the step of a fall
        falls = row["terminated_fraction"] * row["episodes"]
        assert row["reward_survive"] == pytest.approx(1 - falls / 2048, abs=1e-12)


def test_a_run_moves_between_backends_on_resume_with_the_rows_it_would_have_had(compose_config,
                                                                               tmp_path):
    base = ["env=ant", *TINY, "checkpoint_every=2", "eval_every=2", "env.max_episode_steps=50"]
    train(compose_config([*base, "total_steps=1024", "env.backend=gymnasium"]), tmp_path / "whole")
    train(compose_config([*base, "total_steps=512", "env.backend=mujoco"]), tmp_path / "pieces")
    train(compose_config([*base, "total_steps=1024", "env.backend=gymnasium"]),
          tmp_path / "pieces")
    whole, pieces = (without_timing(pd.read_csv(tmp_path / d / "progress.csv"))
                     for d in ("whole", "pieces"))
    assert len(whole) == 8
    pd.testing.assert_frame_equal(whole, pieces, check_exact=True)


def test_a_task_it_does_not_step_runs_on_gymnasium_saying_so(caplog):
    with caplog.at_level(logging.INFO, logger="trpo"):
        envs = make_vector_env(EnvConfig(id="CartPole-v1", backend="mujoco"), 2, workers=2)
    assert type(envs).__name__ == "SameStepSyncVectorEnv"
    [line] = [r.getMessage() for r in caplog.records if "backend=mujoco" in r.getMessage()]
    assert line.endswith("CartPole-v1 runs on Gymnasium's backend")


@pytest.mark.slow  # end to end; test_the_batch_threads_follow_the_launcher checks the rule
def test_the_batch_takes_a_single_runs_cores_and_one_per_job_of_a_parallel_sweep(tmp_path):
    from tests.conftest import run_py
    from trpo.envs import cores_for_this_run

    tiny = ["env=hopper", *TINY]
    single = run_py(*tiny, f"hydra.run.dir={tmp_path / 'single'}")
    assert single.returncode == 0, single.stderr[-2000:]
    cores = min(cores_for_this_run(), 2)  # at most one thread per env (TINY has 2)
    assert f"2 Hopper-v5 environments on {cores} thread" in single.stdout + single.stderr
    sweep = run_py("-m", *tiny, "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert (sweep.stdout + sweep.stderr).count("2 Hopper-v5 environments on 1 thread") == 2


@pytest.mark.parametrize("mode,launcher,slurm,expected", [
    ("RUN", {}, None, 4),
    ("RUN", {}, "3", 3),                                  # a SLURM job: its CPUs per task
    ("MULTIRUN", {"n_jobs": -1}, None, 1),                # joblib: every core, a job each
    ("MULTIRUN", {"n_jobs": 2}, None, 2),
    ("MULTIRUN", {"n_jobs": -2}, None, 1),                # all cores but one: 3 jobs at once
    ("MULTIRUN", {"cpus_per_task": 2}, None, 2),          # submitit, local or on SLURM
    ("MULTIRUN", {}, None, 4),                            # the basic launcher: one at a time
])
def test_the_batch_threads_follow_the_launcher(monkeypatch, mode, launcher, slurm, expected):
    import joblib
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from trpo.envs import cores_for_this_run

    monkeypatch.setattr(joblib, "cpu_count", lambda: 4)
    if slurm is None:
        monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    else:
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", slurm)
    fake = OmegaConf.create({"mode": RunMode[mode], "launcher": launcher})
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: fake))
    assert cores_for_this_run() == expected
