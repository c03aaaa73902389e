"""Rollouts: exact episode ends across vectorised envs, returns bookkeeping, normalisation."""

import numpy as np
import pytest
import torch
from torch import nn

import tests.toy_envs  # noqa: F401  (registers Counter-v0)
from tests.conftest import network_config
from trpo.config import EnvConfig
from trpo.envs import make_vector_env
from trpo.networks import build_policy
from trpo.normalization import (ObservationNormalizer, RewardScaler, RunningMeanStd,
                                normalizer_shift_kl)
from trpo.rollout import NonFiniteError, RolloutCollector, evaluate


class FirstCoordinate(nn.Module):
    """V(s) = s[0]: the step count of the Counter env, so a value names the observation."""

    def forward(self, obs):
        return obs[:, 0]


def collect(env_id, num_envs=2, steps=7):
    envs = make_vector_env(EnvConfig(id=env_id), num_envs)
    policy = build_policy(envs.single_observation_space, envs.single_action_space,
                          network_config(policy_hidden=[4]))
    collector = RolloutCollector(envs, policy, FirstCoordinate(),
                                 ObservationNormalizer((2,), enabled=False),
                                 RewardScaler(num_envs, 0.99, enabled=False), steps, seed=0,
                                 env_id=env_id)
    return collector, collector.collect()


def test_truncation_bootstraps_from_the_final_observation_not_the_reset_one():
    """Counter-v0 is cut by a 3-step time limit: the final observation has k=3, the reset k=0."""
    _, rollout = collect("Counter-v0")
    # k seen by the policy: 0,1,2,0,1,2,0 (each env); the episode ends at t = 2 and 5, truncated.
    np.testing.assert_array_equal(rollout.obs[:, 0, 0], [0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(rollout.episode_end[:, 0], [0, 0, 1, 0, 0, 1, 0])
    assert not rollout.terminated.any()
    np.testing.assert_array_equal(rollout.values[:, 0], [0, 1, 2, 0, 1, 2, 0])
    # V(s') is V of the true next observation: k+1, also at the ends (3, not the reset's 0).
    np.testing.assert_array_equal(rollout.next_values[:, 0], [1, 2, 3, 1, 2, 3, 1])
    np.testing.assert_array_equal(rollout.next_values, np.repeat(rollout.next_values[:, :1], 2, 1))


def test_termination_is_recorded_and_the_next_episode_starts_fresh():
    """CounterTerminating-v0 terminates at k=2 (its time limit, 5, is never reached)."""
    _, rollout = collect("CounterTerminating-v0", steps=6)
    np.testing.assert_array_equal(rollout.terminated[:, 1], [0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(rollout.episode_end, rollout.terminated)
    np.testing.assert_array_equal(rollout.next_values[:, 1], [1, 2, 1, 2, 1, 2])


def test_episode_returns_count_only_finished_episodes_and_carry_over_iterations():
    collector, first = collect("Counter-v0", num_envs=2, steps=4)
    # Steps 0..3: one episode of 3 steps finished in each env; one step of the next carried over.
    assert first.episode_returns == [3.0, 3.0] and first.episode_lengths == [3, 3]
    second = collector.collect()  # steps 4..7: the carried episode ends at step 5
    assert second.episode_returns == [3.0, 3.0]
    assert collector.total_steps == 16


def test_rollout_end_bootstraps_from_the_next_observation():
    _, rollout = collect("Counter-v0", steps=2)
    np.testing.assert_array_equal(rollout.next_values[-1], [2, 2])
    assert not rollout.episode_end[-1].any()


def test_non_finite_reward_stops_with_env_step_and_value():
    with pytest.raises(NonFiniteError, match=r"NaNReward-v0 .*non-finite reward \(nan\) at "
                                             r"environment step 4"):
        collect("NaNReward-v0", num_envs=2, steps=5)


def test_evaluation_runs_one_deterministic_episode_per_env():
    envs = make_vector_env(EnvConfig(id="CartPole-v1"), 3)
    policy = build_policy(envs.single_observation_space, envs.single_action_space,
                          network_config())
    normalizer = ObservationNormalizer((4,))
    first = evaluate(envs, policy, normalizer, seeds=[5, 6, 7])
    again = evaluate(envs, policy, normalizer, seeds=[5, 6, 7])
    assert first.shape == (3,) and (first >= 1).all()
    np.testing.assert_array_equal(first, again)


# ------------------------------------------------------------------------------ normalisation


def test_running_mean_std_matches_numpy_over_batches():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(1000, 4))
    stats = RunningMeanStd((4,))
    for chunk in np.array_split(data, 7):
        stats.update(chunk)
    np.testing.assert_allclose(stats.mean, data.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats.var, data.var(0), rtol=1e-4)


def test_observation_normaliser_freezes_without_update_and_round_trips_its_state():
    normalizer = ObservationNormalizer((2,), clip=5.0)
    batch = np.array([[0.0, 10.0], [2.0, 30.0]])
    normalizer(batch, update=True)
    frozen = normalizer.state_dict()
    out = normalizer(np.array([[1.0, 20.0]]))
    np.testing.assert_allclose(out, [[0.0, 0.0]], atol=1e-3)
    np.testing.assert_allclose(normalizer(np.array([[1e6, -1e6]])), [[5.0, -5.0]])
    restored = ObservationNormalizer((2,), clip=5.0)
    restored.load_state_dict(frozen)
    np.testing.assert_array_equal(restored(batch), normalizer(batch))


class LinearGaussian(nn.Module):
    """π(·|x) = N(2x, 0.5²) on one-dimensional observations and actions."""

    def forward(self, obs):
        return torch.distributions.Independent(torch.distributions.Normal(2 * obs, 0.5), 1)


def test_the_kl_that_new_statistics_alone_cause_by_hand():
    before = ObservationNormalizer((1,))  # mean 0, var 1: x stays x
    after = before.frozen_copy()
    raw = np.array([[1.0], [3.0]])
    assert normalizer_shift_kl(LinearGaussian(), before, after, raw) == 0.0
    after.load_state_dict({"mean": np.array([1.0]), "var": np.array([4.0]), "count": 10.0})
    # Normalised: before [1, 3], after [(1-1)/2, (3-1)/2] = [0, 1]; the means 2x differ by
    # [2, 4]; KL of equal-variance Gaussians (Δμ)²/(2σ²) = [8, 32], mean 20.
    assert normalizer_shift_kl(LinearGaussian(), before, after, raw) == pytest.approx(20.0)
    # Updating the live normaliser leaves the frozen copy as it was.
    after(np.array([[100.0]]), update=True)
    assert before.stats.mean[0] == 0.0
    off = ObservationNormalizer((1,), enabled=False)
    assert normalizer_shift_kl(LinearGaussian(), off, off, raw) == 0.0


def test_reward_scaler_divides_by_the_std_of_discounted_returns_by_hand():
    scaler = RewardScaler(num_envs=2, gamma=0.9)
    rewards = np.array([1.0, 3.0])
    first = scaler(rewards, np.array([False, True]))
    # Returns so far: [1, 3]; the second env's episode ended, so its return restarts.
    np.testing.assert_allclose(first, rewards / np.std([1.0, 3.0]), rtol=1e-3)
    second = scaler(rewards, np.array([False, False]))
    # Returns now: [1·0.9 + 1, 0 + 3] = [1.9, 3].
    np.testing.assert_allclose(second, rewards / np.std([1.0, 3.0, 1.9, 3.0]), rtol=1e-3)
    off = RewardScaler(num_envs=1, gamma=0.5, enabled=False)
    assert off(np.array([3.0]), np.array([False]))[0] == 3.0


def test_policy_sampling_is_seeded():
    torch.manual_seed(1)
    _, a = collect("Counter-v0")
    torch.manual_seed(1)
    _, b = collect("Counter-v0")
    np.testing.assert_array_equal(a.actions, b.actions)


# ------------------------------------------------------------------------ worker processes


@pytest.mark.parametrize("env_id", ["Hopper-v5", "CartPole-v1"])
def test_the_lean_sync_vector_env_steps_gymnasiums_sync_vector_env_transitions(env_id):
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    from trpo.envs.gymnasium import SameStepSyncVectorEnv, env_makers

    cfg = EnvConfig(id=env_id, max_episode_steps=15)  # truncations as well as terminations
    ours = make_vector_env(cfg, 4)
    theirs = SyncVectorEnv(env_makers(cfg, 4), autoreset_mode=AutoresetMode.SAME_STEP)
    assert isinstance(ours, SameStepSyncVectorEnv)
    np.testing.assert_array_equal(ours.reset(seed=[1, 2, 3, 4])[0],
                                  theirs.reset(seed=[1, 2, 3, 4])[0])
    theirs.action_space.seed(0)
    ends = 0
    for _ in range(100):
        actions = theirs.action_space.sample()
        expected, got = theirs.step(actions), ours.step(actions)
        for a, b in zip(expected[:4], got[:4]):
            np.testing.assert_array_equal(a, b)
            assert a.dtype == b.dtype
        for i in np.flatnonzero(expected[2] | expected[3]):
            np.testing.assert_array_equal(expected[4]["final_obs"][i], got[4]["final_obs"][i])
            ends += 1
        # The reward's terms: Gymnasium's info, the final step's for a copy that ended.
        info, ended = expected[4], expected[2] | expected[3]
        final = info.get("final_info", {})
        names = sorted(k for k in {**info, **final} if k.startswith("reward_"))
        assert sorted(got[4]["reward_terms"]) == names
        for name in names:
            truth = [final[name][i] if ended[i] else info[name][i] for i in range(4)]
            np.testing.assert_array_equal(got[4]["reward_terms"][name], truth)
    assert ends >= 20


@pytest.mark.parametrize("env_id, workers", [("Hopper-v5", 2),
                                             ("tests.toy_envs:CounterTerminating-v0", 3)])
def test_worker_processes_step_the_same_transitions_as_one_sync_vector_env(env_id, workers):
    from trpo.envs.gymnasium import WorkerVectorEnv

    cfg = EnvConfig(id=env_id)
    sync, split = make_vector_env(cfg, 5), make_vector_env(cfg, 5, workers=workers)
    assert isinstance(split, WorkerVectorEnv) and len(split.processes) == workers
    try:
        seeds = [11, 12, 13, 14, 15]
        np.testing.assert_array_equal(sync.reset(seed=seeds)[0], split.reset(seed=seeds)[0])
        sync.action_space.seed(3)
        ended = 0
        for _ in range(60):
            actions = sync.action_space.sample()
            expected, got = sync.step(actions), split.step(actions)
            for a, b in zip(expected[:4], got[:4]):
                np.testing.assert_array_equal(a, b)
            terms, their_terms = expected[4]["reward_terms"], got[4]["reward_terms"]
            assert terms.keys() == their_terms.keys()
            for name in terms:
                np.testing.assert_array_equal(terms[name], their_terms[name])
            for i in np.flatnonzero(expected[2] | expected[3]):
                np.testing.assert_array_equal(expected[4]["final_obs"][i], got[4]["final_obs"][i])
                ended += 1
        assert ended > 0 or env_id == "Hopper-v5"  # Hopper's random episodes may outlast 60 steps
    finally:
        sync.close()
        split.close()


def test_environment_states_move_between_worker_processes_and_one_process():
    from trpo.envs.state import set_vector_env_state, vector_env_state

    cfg = EnvConfig(id="Hopper-v5")
    split, sync = make_vector_env(cfg, 4, workers=2), make_vector_env(cfg, 4)
    try:
        split.reset(seed=[1, 2, 3, 4])
        actions = np.random.default_rng(0).uniform(-1, 1, (30, 4, 3)).astype(np.float32)
        for a in actions[:10]:
            split.step(a)
        state = vector_env_state(split)
        set_vector_env_state(sync, state)
        for a in actions[10:]:
            np.testing.assert_array_equal(split.step(a)[0], sync.step(a)[0])
    finally:
        split.close()
        sync.close()


def test_a_worker_that_cannot_make_its_environment_says_why():
    from gymnasium.error import NameNotFound

    # Registered in this process only (by importing tests.toy_envs), so unknown in the worker.
    envs = make_vector_env(EnvConfig(id="CounterTerminating-v0"), 2, workers=2)
    try:
        with pytest.raises(NameNotFound, match="CounterTerminating"):
            envs.reset(seed=[1, 2])
    finally:
        envs.close()


class Zero(nn.Module):
    """V(s) = 0."""

    def forward(self, obs):
        return torch.zeros(obs.shape[0])


@pytest.mark.parametrize("backend", ["gymnasium", "mujoco"])
def test_a_rollouts_reward_terms_add_up_to_its_rewards_and_its_falls_are_counted(backend):
    """Hopper-v5 pays 1 for every healthy step and nothing at the step it falls, so over a
    rollout its healthy term sums to the steps less the falls; the terms add up to the rewards."""
    envs = make_vector_env(EnvConfig(id="Hopper-v5", backend=backend, max_episode_steps=20), 3,
                           workers=1)
    policy = build_policy(envs.single_observation_space, envs.single_action_space,
                          network_config(policy_hidden=[4]))
    collector = RolloutCollector(envs, policy, Zero(), ObservationNormalizer((11,), enabled=False),
                                 RewardScaler(3, 0.99, enabled=False), 100, seed=0,
                                 env_id="Hopper-v5")
    rollout = collector.collect()
    envs.close()
    terms = rollout.reward_terms
    assert set(terms) == {"reward_forward", "reward_ctrl", "reward_survive"}
    assert 0 < rollout.terminations < len(rollout.episode_returns)  # falls and time limits
    assert terms["reward_survive"] == rollout.rewards.size - rollout.terminations
    assert terms["reward_ctrl"] < 0
    assert sum(terms.values()) == pytest.approx(rollout.rewards.sum(), rel=1e-12)
