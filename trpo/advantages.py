"""Advantage estimators: GAE(λ) and its two special cases, one-step TD (λ=0) and Monte-Carlo (λ=1).

All three run through :func:`generalized_advantages`, a pure function on ``[T, N]`` arrays
(T steps of N parallel environments). Episode ends are exact:

* ``next_values[t, i]`` is V of the true next observation of step t, which on the last step of an
  episode is the episode's final observation, never the reset observation of the next episode;
* a terminated step does not bootstrap (its next value is multiplied by 0);
* a truncated step (time limit) and the last step of the batch bootstrap from ``next_values``;
* no advantage flows back across an episode end (terminated or truncated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def generalized_advantages(
    rewards: np.ndarray,
    values: np.ndarray,
    next_values: np.ndarray,
    terminated: np.ndarray,
    episode_end: np.ndarray,
    gamma: float,
    lam: float,
) -> tuple[np.ndarray, np.ndarray]:
    """GAE(γ, λ) of Schulman et al. (2016), eq. 16, with exact episode ends.

    Args:
        rewards: ``[T, N]`` reward of step t in env i.
        values: ``[T, N]`` V(s_t).
        next_values: ``[T, N]`` V(s_{t+1}) of the true next observation (the final observation
            where the episode ended at t).
        terminated: ``[T, N]`` true where the episode reached a terminal state at t.
        episode_end: ``[T, N]`` true where the episode ended at t, terminated or truncated.
        gamma: discount γ in (0, 1].
        lam: λ in [0, 1]; 0 gives the one-step TD residual, 1 the Monte-Carlo return minus V.

    Returns:
        ``(advantages, returns)``, both ``[T, N]``; ``returns = advantages + values`` are the
        value-function targets (the λ-return).
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    bootstrap = 1.0 - np.asarray(terminated, dtype=np.float64)
    carry = gamma * lam * (1.0 - np.asarray(episode_end, dtype=np.float64))
    deltas = rewards + gamma * bootstrap * np.asarray(next_values, dtype=np.float64) - values
    advantages = np.empty_like(deltas)
    running = np.zeros_like(deltas[0])
    for t in range(deltas.shape[0] - 1, -1, -1):
        running = deltas[t] + carry[t] * running
        advantages[t] = running
    return advantages, advantages + values


@dataclass(frozen=True)
class GAE:
    """Generalized advantage estimation; ``advantage=gae``."""

    gamma: float
    lam: float
    # Standardise advantages per batch before the policy update.
    normalize: bool

    def __call__(self, rewards, values, next_values, terminated, episode_end):
        """``(advantages, returns)`` of a ``[T, N]`` batch; see :func:`generalized_advantages`."""
        return generalized_advantages(rewards, values, next_values, terminated, episode_end,
                                      self.gamma, self.lam)


def td(*, gamma: float, normalize: bool) -> GAE:
    """One-step TD residual r + γV(s') − V(s): GAE with λ = 0; ``advantage=td``."""
    return GAE(gamma=gamma, lam=0.0, normalize=normalize)


def monte_carlo(*, gamma: float, normalize: bool) -> GAE:
    """Discounted reward-to-go minus V(s): GAE with λ = 1; ``advantage=mc``.

    The reward-to-go bootstraps from V only where the episode was cut without terminating (a time
    limit, or the end of the batch); a terminated episode's return is the plain sum of rewards.
    """
    return GAE(gamma=gamma, lam=1.0, normalize=normalize)
