"""Advantage estimators against hand-computed values and a naive second implementation."""

import numpy as np
import pytest

from trpo.advantages import GAE, generalized_advantages, monte_carlo, td

pytestmark = pytest.mark.unit


def naive_gae(rewards, values, next_values, terminated, episode_end, gamma, lam):
    """The definition, term by term: A_t = Σ_k (γλ)^k δ_{t+k} up to the episode's (or batch's) end."""
    steps, num_envs = rewards.shape
    advantages = np.zeros((steps, num_envs))
    for i in range(num_envs):
        for t in range(steps):
            for u in range(t, steps):
                delta = (rewards[u, i] + gamma * (1 - terminated[u, i]) * next_values[u, i]
                         - values[u, i])
                advantages[t, i] += (gamma * lam) ** (u - t) * delta
                if episode_end[u, i]:
                    break
    return advantages


def naive_reward_to_go(rewards, next_values, terminated, episode_end, gamma):
    """Discounted sum of rewards to the episode's end, plus γ^n V(s') where it was cut short."""
    steps, num_envs = rewards.shape
    returns = np.zeros((steps, num_envs))
    for i in range(num_envs):
        for t in range(steps):
            for u in range(t, steps):
                returns[t, i] += gamma ** (u - t) * rewards[u, i]
                if episode_end[u, i] or u == steps - 1:
                    if not terminated[u, i]:
                        returns[t, i] += gamma ** (u - t + 1) * next_values[u, i]
                    break
    return returns


def column(*values):
    return np.array(values, dtype=float)[:, None]


# One episode of three steps, γ = 0.9, λ = 0.5; δ_t = r_t + γ(1 − term_t)V' − V.
REWARDS, VALUES, NEXT_VALUES = column(1, 2, 3), column(0.5, 1.0, 1.5), column(1.0, 1.5, 2.0)


def test_terminated_episode_by_hand():
    # δ = [1 + .9·1 − .5, 2 + .9·1.5 − 1, 3 − 1.5] = [1.4, 2.35, 1.5]; γλ = 0.45
    adv, ret = generalized_advantages(REWARDS, VALUES, NEXT_VALUES, column(0, 0, 1),
                                      column(0, 0, 1), gamma=0.9, lam=0.5)
    np.testing.assert_allclose(adv[:, 0], [1.4 + 0.45 * 3.025, 2.35 + 0.45 * 1.5, 1.5])
    np.testing.assert_allclose(ret, adv + VALUES)


def test_truncated_episode_bootstraps_from_final_value_by_hand():
    # Truncated at t=2: δ_2 = 3 + .9·2.0 − 1.5 = 3.3
    adv, _ = generalized_advantages(REWARDS, VALUES, NEXT_VALUES, column(0, 0, 0),
                                    column(0, 0, 1), gamma=0.9, lam=0.5)
    np.testing.assert_allclose(adv[:, 0], [1.4 + 0.45 * 3.835, 2.35 + 0.45 * 3.3, 3.3])


def test_no_advantage_crosses_an_episode_end_by_hand():
    # The episode ends (terminates) at t=0; t=1 starts a new one. A_0 = δ_0 = 1 − 0.5.
    adv, _ = generalized_advantages(column(1, 2), column(0.5, 1.0), column(7.0, 1.5),
                                    column(1, 0), column(1, 0), gamma=0.9, lam=1.0)
    np.testing.assert_allclose(adv[:, 0], [0.5, 2 + 0.9 * 1.5 - 1.0])


def random_batch(seed, steps=12, num_envs=3, end_prob=0.25):
    """A batch with terminations and truncations at random places in each of several envs.

    As in a real rollout, the next value inside an episode is the value of the next step; at an
    episode end (and after the last step) it is V of a final observation, unrelated to the next
    step's value (a reset observation).
    """
    rng = np.random.default_rng(seed)
    ended = rng.random((steps, num_envs)) < end_prob
    terminated = ended & (rng.random((steps, num_envs)) < 0.5)
    values = rng.normal(size=(steps, num_envs))
    next_values = rng.normal(size=(steps, num_envs))
    inside = ~ended[:-1]
    next_values[:-1][inside] = values[1:][inside]
    return rng.normal(size=(steps, num_envs)), values, next_values, terminated, ended


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("gamma", [0.5, 0.99, 1.0])
@pytest.mark.parametrize("lam", [0.0, 0.5, 0.97, 1.0])
def test_gae_matches_naive_implementation(seed, gamma, lam):
    batch = random_batch(seed)
    adv, ret = GAE(gamma=gamma, lam=lam, normalize=True)(*batch)
    np.testing.assert_allclose(adv, naive_gae(*batch, gamma, lam), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ret, adv + batch[1])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("gamma", [0.9, 0.99])
def test_td_is_the_one_step_residual_and_gae_lambda_zero(seed, gamma):
    rewards, values, next_values, terminated, ended = batch = random_batch(seed)
    adv, _ = td(gamma=gamma, normalize=True)(*batch)
    np.testing.assert_allclose(adv, rewards + gamma * (1 - terminated) * next_values - values)
    np.testing.assert_allclose(adv, GAE(gamma=gamma, lam=0.0, normalize=True)(*batch)[0])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("gamma", [0.9, 0.99, 1.0])
def test_monte_carlo_is_reward_to_go_minus_value_and_gae_lambda_one(seed, gamma):
    rewards, values, next_values, terminated, ended = batch = random_batch(seed)
    adv, ret = monte_carlo(gamma=gamma, normalize=True)(*batch)
    expected = naive_reward_to_go(rewards, next_values, terminated, ended, gamma)
    np.testing.assert_allclose(ret, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(adv, expected - values, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(adv, GAE(gamma=gamma, lam=1.0, normalize=True)(*batch)[0])


def test_envs_are_independent():
    """Each column is the estimate of its own environment alone."""
    batch = random_batch(0, num_envs=4)
    adv, _ = GAE(gamma=0.99, lam=0.95, normalize=True)(*batch)
    for i in range(4):
        alone = [a[:, i:i + 1] for a in batch]
        np.testing.assert_allclose(adv[:, i:i + 1], GAE(gamma=0.99, lam=0.95, normalize=True)(*alone)[0])
