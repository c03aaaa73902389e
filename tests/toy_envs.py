"""Tiny environments with known dynamics, registered on import (``tests.toy_envs:Counter-v0``)."""

import time
from pathlib import Path

import gymnasium as gym
import numpy as np


class CounterEnv(gym.Env):
    """Observation ``[k, episode]``: k counts the steps of the episode, from 0 at reset.

    Reward 1 per step. The episode terminates when k reaches ``terminate_at`` (if given); a
    TimeLimit truncates it earlier or later. ``episode`` counts resets, so a reset observation is
    never equal to a final one.
    """

    metadata = {"render_modes": []}

    def __init__(self, terminate_at=None):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.terminate_at, self.k, self.episode = terminate_at, 0, -1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.k, self.episode = 0, self.episode + 1
        return self._obs(), {}

    def step(self, action):
        self.k += 1
        terminated = self.terminate_at is not None and self.k >= self.terminate_at
        return self._obs(), 1.0, terminated, False, {}

    def _obs(self):
        return np.array([self.k, 100 + self.episode], dtype=np.float32)


class NaNRewardEnv(CounterEnv):
    """A CounterEnv whose second step of every episode has a NaN reward."""

    def step(self, action):
        obs, _, terminated, truncated, info = super().step(action)
        return obs, float("nan") if self.k == 2 else 1.0, terminated, truncated, info


class BuggyResetEnv(CounterEnv):
    """A CounterEnv whose reset raises: a task that fails as a run starts."""

    def reset(self, *, seed=None, options=None):
        raise RuntimeError("this environment cannot reset")


class SlowMakeEnv(CounterEnv):
    """A CounterEnv that, when made, creates the file ``marker`` and then waits ``seconds``: a
    window in which a test knows the run has started but not yet begun training."""

    def __init__(self, marker, seconds=30.0):
        super().__init__()
        Path(marker).touch()
        time.sleep(seconds)


gym.register("Counter-v0", entry_point=CounterEnv, max_episode_steps=3)
gym.register("BuggyReset-v0", entry_point=BuggyResetEnv, max_episode_steps=3)
gym.register("CounterTerminating-v0", entry_point=CounterEnv, max_episode_steps=5,
             kwargs={"terminate_at": 2})
gym.register("NaNReward-v0", entry_point=NaNRewardEnv, max_episode_steps=10)
gym.register("SlowMake-v0", entry_point=SlowMakeEnv, max_episode_steps=3)
