"""Running statistics for observation normalisation and reward scaling (as SB3's VecNormalize)."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.distributions import kl_divergence


class RunningMeanStd:
    """Mean and variance of a stream of arrays, merged batch by batch (Chan et al. 1979)."""

    def __init__(self, shape: tuple[int, ...] = ()):
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        # A tiny prior count keeps the first merge well defined, as in OpenAI baselines.
        self.count = 1e-4

    def update(self, batch: np.ndarray) -> None:
        """Merge ``batch`` (``[B, *shape]``) into the statistics."""
        batch = np.asarray(batch, dtype=np.float64)
        batch_count = batch.shape[0]
        # batch.mean(axis=0) and batch.var(axis=0), spelled out as NumPy computes them (the same
        # numbers, without their argument handling: this runs at every environment step).
        batch_mean = np.add.reduce(batch, axis=0) / batch_count
        deviation = batch - batch_mean
        batch_var = np.add.reduce(deviation * deviation, axis=0) / batch_count
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        self.var = (self.var * self.count + batch_var * batch_count
                    + delta**2 * self.count * batch_count / total) / total
        self.count = total

    def state_dict(self) -> dict:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.mean = np.array(state["mean"], dtype=np.float64)
        self.var = np.array(state["var"], dtype=np.float64)
        self.count = float(state["count"])


class ObservationNormalizer:
    """``clip((obs - mean) / sqrt(var + eps), ±clip)`` with running statistics.

    Training calls :meth:`__call__` with ``update=True``; evaluation uses the frozen statistics.
    Disabled, it passes observations through as float32.
    """

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, enabled: bool = True,
                 epsilon: float = 1e-8):
        self.stats = RunningMeanStd(shape)
        self.clip, self.enabled, self.epsilon = clip, enabled, epsilon

    def __call__(self, obs: np.ndarray, update: bool = False) -> np.ndarray:
        if not self.enabled:
            return np.asarray(obs, dtype=np.float32)
        if update:
            self.stats.update(obs)
        scaled = (obs - self.stats.mean) / np.sqrt(self.stats.var + self.epsilon)
        return np.clip(scaled, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict:
        return self.stats.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state)

    def frozen_copy(self) -> "ObservationNormalizer":
        """A copy whose statistics stay as they are now."""
        return copy.deepcopy(self)


def normalizer_shift_kl(policy: nn.Module, before: ObservationNormalizer,
                        after: ObservationNormalizer, raw_obs: np.ndarray) -> float:
    """Mean over ``raw_obs`` (``[B, obs_dim]``, as the environments returned them) of
    KL(π(·|before(s)) ‖ π(·|after(s))).

    How far the running statistics alone moved the policy's behaviour, with its parameters
    fixed: a change that no trust region bounds, to be read beside the update's KL (0 without
    normalisation).
    """
    if not after.enabled:
        return 0.0
    with torch.no_grad():
        return float(kl_divergence(policy(torch.from_numpy(before(raw_obs))),
                                   policy(torch.from_numpy(after(raw_obs)))).mean())


class RewardScaler:
    """Divide rewards by the running std of the discounted return (Engstrom et al. 2020, SB3).

    ``returns`` keeps one discounted return per environment, reset where an episode ends.
    Disabled, rewards pass through unchanged.
    """

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, enabled: bool = True,
                 epsilon: float = 1e-8):
        self.stats = RunningMeanStd(())
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.gamma, self.clip, self.enabled, self.epsilon = gamma, clip, enabled, epsilon

    def __call__(self, rewards: np.ndarray, episode_end: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return rewards
        self.returns = self.returns * self.gamma + rewards
        self.stats.update(self.returns)
        self.returns[episode_end] = 0.0
        return np.clip(rewards / np.sqrt(self.stats.var + self.epsilon), -self.clip, self.clip)

    def state_dict(self) -> dict:
        return {"stats": self.stats.state_dict(), "returns": self.returns.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state["stats"])
        self.returns = np.array(state["returns"], dtype=np.float64)
