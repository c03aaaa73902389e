"""Vectorised Gymnasium environments for training and evaluation."""

from __future__ import annotations

from functools import partial

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from trpo.config import EnvConfig, VectorMode


def make_env(cfg: EnvConfig, **make_kwargs) -> gym.Env:
    """One copy of ``cfg.id`` with its keyword arguments and time limit, as training makes it;
    ``make_kwargs`` go to ``gymnasium.make`` too (``render_mode="rgb_array"``)."""
    return gym.make(cfg.id, **_make_kwargs(cfg), **make_kwargs)


def _make_kwargs(cfg: EnvConfig) -> dict:
    kwargs = dict(cfg.kwargs)
    if cfg.max_episode_steps is not None:
        kwargs["max_episode_steps"] = cfg.max_episode_steps
    return kwargs


def make_vector_env(cfg: EnvConfig, num_envs: int, mode: VectorMode = VectorMode.sync,
                    ) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``cfg.id``, stepped as one batch.

    Autoreset is SAME_STEP: a sub-environment whose episode ends at a step is reset within that
    step, its true final observation is returned in ``info["final_obs"]``, and every step is a
    real transition. ``async`` steps the copies in worker processes started by ``forkserver``,
    which also works inside joblib's loky workers.
    """
    env_fns = [partial(gym.make, cfg.id, **_make_kwargs(cfg)) for _ in range(num_envs)]
    if mode is VectorMode["async"]:
        return AsyncVectorEnv(env_fns, autoreset_mode=AutoresetMode.SAME_STEP,
                              context="forkserver")
    return SyncVectorEnv(env_fns, autoreset_mode=AutoresetMode.SAME_STEP)


def action_clipper(space: gym.Space):
    """A function from policy samples to valid environment actions.

    Gaussian samples are clipped to a Box's bounds (the policy's log-probability stays that of
    the unclipped sample, as in SB3 and OpenAI baselines); discrete actions pass through.
    """
    if isinstance(space, gym.spaces.Box):
        low, high = space.low, space.high
        return lambda actions: np.clip(actions, low, high)
    return lambda actions: actions
