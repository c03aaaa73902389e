"""env.backend=envpool steps the same tasks as Gymnasium, with Gymnasium's episode semantics.

EnvPool re-implements the MuJoCo tasks in C++ with its own copy of MuJoCo and its own random
generators, so the two backends cannot be compared episode for episode from random starts.
With the reset noise off, both start every episode in the same state, and the same actions must
then give the same observations (within 1e-6), rewards (within 1e-5: EnvPool returns float32),
terminations, truncations and final observations, across many episodes and time limits. Over
tens of steps the two simulators' rounding differences stay near 1e-12; they grow where the
dynamics are chaotic, so the episodes here are short. Ant-v5 is not among the tasks: its first
step already differs by 5e-8 and the difference reaches 1e-3 within five steps.
"""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pandas as pd
import pytest

from trpo.config import ConfigError, EnvConfig
from trpo.envs import make_vector_env
from trpo.envs.envpool import ENVPOOL_TASKS

from tests.conftest import TINY
from trpo.train import train

# A dependency on Linux (pyproject.toml), so missing there is a failure, not a skip.
envpool = (importlib.import_module("envpool") if sys.platform == "linux"
           else pytest.importorskip("envpool"))


def both(cfg: EnvConfig, num_envs: int, threads: int = 1):
    return (make_vector_env(cfg, num_envs, workers=threads, backend="envpool"),
            make_vector_env(cfg, num_envs, backend="gymnasium"))


def random_actions(space, steps: int, num_envs: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(space.low, space.high, (steps, num_envs, *space.shape))


@pytest.mark.parametrize("env_id,kwargs", [(env_id, {}) for env_id in ENVPOOL_TASKS]
                         + [("Hopper-v5", {"ctrl_cost_weight": 0.1, "healthy_reward": 2.0})])
def test_envpool_gives_gymnasiums_transitions_for_the_same_actions(env_id, kwargs):
    cfg = EnvConfig(id=env_id, kwargs={**kwargs, "reset_noise_scale": 0.0}, max_episode_steps=25)
    pool, gym_envs = both(cfg, num_envs=3)
    spec = envpool.make_spec(env_id)
    for theirs, ours in [(spec.observation_space, gym_envs.single_observation_space),
                         (spec.action_space, gym_envs.single_action_space)]:
        assert theirs.shape == ours.shape
        np.testing.assert_array_equal(theirs.low, ours.low)
        np.testing.assert_array_equal(theirs.high, ours.high)
    obs_pool, _ = pool.reset(seed=[1, 2, 3])
    obs_gym, _ = gym_envs.reset(seed=[1, 2, 3])
    np.testing.assert_allclose(obs_pool, obs_gym, rtol=0, atol=1e-6)
    terminations = truncations = 0
    for action in random_actions(gym_envs.single_action_space, 200, 3):
        o_p, r_p, term_p, trunc_p, info_p = pool.step(action)
        o_g, r_g, term_g, trunc_g, info_g = gym_envs.step(action)
        np.testing.assert_allclose(o_p, o_g, rtol=0, atol=1e-6)
        np.testing.assert_allclose(r_p, r_g, rtol=0, atol=1e-5)
        assert r_p.dtype == np.float64
        np.testing.assert_array_equal(term_p, term_g)
        np.testing.assert_array_equal(trunc_p, trunc_g)
        for i in np.flatnonzero(term_g | trunc_g):
            np.testing.assert_allclose(info_p["final_obs"][i], info_g["final_obs"][i], atol=1e-6)
        terminations += int(term_g.sum())
        truncations += int(trunc_g.sum())
    assert truncations > 0
    assert terminations > 0 or env_id in ("HalfCheetah-v5", "Swimmer-v5")  # they never end


def test_an_episode_ending_in_a_terminal_state_at_its_time_limit_is_terminated_and_truncated():
    """Gymnasium's TimeLimit reports both; EnvPool's own limit would report a truncation alone,
    and training would bootstrap from a terminal state."""
    cfg = EnvConfig(id="Hopper-v5", kwargs={"reset_noise_scale": 0.0})
    actions = random_actions(make_vector_env(cfg, 1).single_action_space, 1000, 1)
    gym_envs = make_vector_env(cfg, 1)
    gym_envs.reset(seed=[0])
    length = next(t + 1 for t, a in enumerate(actions) if gym_envs.step(a)[2][0])
    at_limit = EnvConfig(id="Hopper-v5", kwargs={"reset_noise_scale": 0.0},
                         max_episode_steps=length)
    for envs in both(at_limit, num_envs=1):
        envs.reset(seed=[0])
        flags = [envs.step(a)[2:4] for a in actions[:length]]
        assert [bool(term[0] or trunc[0]) for term, trunc in flags] == [False] * (length - 1) + [True]
        assert bool(flags[-1][0][0]) and bool(flags[-1][1][0])


@pytest.mark.parametrize("env_id", ["Hopper-v5", "HalfCheetah-v5"])
def test_envpool_spreads_its_starts_as_gymnasium_does(env_id):
    """Reset noise: uniform in ±scale on positions (HalfCheetah: normal, std scale, on
    velocities), around the same initial state. 400 starts of each backend."""
    scale = 0.1
    noiseless = make_vector_env(EnvConfig(id=env_id, kwargs={"reset_noise_scale": 0.0}), 1)
    centre = noiseless.reset(seed=[0])[0][0]
    cfg = EnvConfig(id=env_id, kwargs={"reset_noise_scale": scale})
    spreads = []
    for envs in both(cfg, num_envs=400):
        offsets = envs.reset(seed=list(range(400)))[0] - centre
        assert len(np.unique(offsets[:, 0])) == 400  # every environment its own start
        spreads.append(offsets.std(axis=0))
    np.testing.assert_allclose(spreads[0], spreads[1], rtol=0.2)


def test_envpool_results_depend_on_the_seeds_not_on_the_threads():
    cfg = EnvConfig(id="Hopper-v5")
    actions = random_actions(make_vector_env(cfg, 1).single_action_space, 300, 4)

    def observations(threads: int, seeds: list[int]) -> np.ndarray:
        envs = make_vector_env(cfg, 4, workers=threads, backend="envpool")
        seen = [envs.reset(seed=seeds)[0]]
        seen += [envs.step(a)[0] for a in actions]
        envs.close()
        return np.array(seen)

    one_thread = observations(1, [5, 6, 7, 8])
    np.testing.assert_array_equal(one_thread, observations(2, [5, 6, 7, 8]))
    assert not np.array_equal(one_thread[0], observations(1, [9, 6, 7, 8])[0])


@pytest.mark.parametrize("overrides,key", [
    (["env=cartpole"], "env.backend"),
    (["env=ant"], "env.backend"),
    (["env=hopper", "+env.kwargs.healthy_z_range=[0.5,2]"], "env.kwargs"),
])
def test_a_task_or_setting_envpool_does_not_take_is_refused_naming_the_key(compose_config,
                                                                         overrides, key):
    from trpo.envs.checks import check_envs

    with pytest.raises(ConfigError) as error:
        check_envs(compose_config([*overrides, "env.backend=envpool"]))
    assert error.value.key == key
    assert "\n" not in str(error.value)


def test_a_run_on_envpool_trains_and_resumes_with_new_episodes(compose_config, tmp_path, caplog):
    base = ["env=hopper", "env.backend=envpool", *TINY, "checkpoint_every=1"]
    train(compose_config([*base, "total_steps=256"]), tmp_path)
    train(compose_config([*base, "total_steps=384"]), tmp_path)
    progress = pd.read_csv(tmp_path / "progress.csv")
    assert progress["iteration"].tolist() == [1, 2, 3]
    assert progress["eval_return_mean"].notna().all()
    assert "the resumed run starts new episodes" in caplog.text


def test_envpool_with_async_vector_mode_is_refused_in_one_line(compose_config):
    from trpo.envs.checks import check_envs

    with pytest.raises(ConfigError, match="^vector_mode='async' is not allowed: must be sync "
                                          "with env.backend=envpool"):
        check_envs(compose_config(["env=hopper", "env.backend=envpool", "vector_mode=async"]))


@pytest.mark.slow  # end to end; test_envpool_threads_follow_the_launcher checks the rule
def test_envpool_threads_take_a_single_runs_cores_and_one_per_job_of_a_parallel_sweep(tmp_path):
    from tests.conftest import run_py

    tiny = ["env=hopper", "env.backend=envpool", *TINY]
    single = run_py(*tiny, f"hydra.run.dir={tmp_path / 'single'}")
    assert single.returncode == 0, single.stderr[-2000:]
    from trpo.envs import cores_for_this_run

    cores = min(cores_for_this_run(), 2)  # at most one thread per env (TINY has 2)
    assert f"environments on {cores} thread" in single.stdout + single.stderr
    sweep = run_py("-m", *tiny, "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert (sweep.stdout + sweep.stderr).count("environments on 1 thread") == 2


@pytest.mark.parametrize("mode,launcher,slurm,expected", [
    ("RUN", {}, None, 4),
    ("RUN", {}, "3", 3),                                  # a SLURM job: its CPUs per task
    ("MULTIRUN", {"n_jobs": -1}, None, 1),                # joblib: every core, a job each
    ("MULTIRUN", {"n_jobs": 2}, None, 2),
    ("MULTIRUN", {"n_jobs": -2}, None, 1),                # all cores but one: 3 jobs at once
    ("MULTIRUN", {"cpus_per_task": 2}, None, 2),          # submitit, local or on SLURM
    ("MULTIRUN", {}, None, 4),                            # the basic launcher: one at a time
])
def test_envpool_threads_follow_the_launcher(monkeypatch, mode, launcher, slurm, expected):
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
