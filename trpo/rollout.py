"""Collecting on-policy experience from vectorised environments, and deterministic evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field
import logging
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from trpo.envs import action_clipper
from trpo.envs.state import set_vector_env_state, vector_env_state
from trpo.normalization import ObservationNormalizer, RewardScaler
from trpo.seeding import stream_seed, stream_seeds

log = logging.getLogger("trpo")


class NonFiniteError(RuntimeError):
    """An environment returned NaN or ±inf in an observation or a reward."""


@dataclass
class Rollout:
    """One iteration's experience: T steps of N environments, arrays of shape ``[T, N, ...]``."""

    obs: np.ndarray  # normalised observations the policy saw, float32
    raw_obs: np.ndarray  # the same observations as the environments returned them
    actions: np.ndarray  # sampled (unclipped) actions
    rewards: np.ndarray  # rewards used for learning (scaled if reward scaling is on), float64
    terminated: np.ndarray  # bool: the episode reached a terminal state at this step
    episode_end: np.ndarray  # bool: the episode ended at this step (terminated or truncated)
    values: np.ndarray  # V(s_t)
    next_values: np.ndarray  # V of the true next observation (the final one at an episode end)
    # Undiscounted raw-reward returns and lengths of the episodes that finished in this rollout.
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    # Each reward term the environments report (``reward_ctrl``, ``reward_survive``, ...: the
    # names of Gymnasium's info, costs negative), summed over the rollout's T·N steps.
    reward_terms: dict[str, float] = field(default_factory=dict)

    @property
    def terminations(self) -> int:
        """How many of the finished episodes ended by termination (the rest at the time limit)."""
        return int(np.count_nonzero(self.terminated))

    @classmethod
    def empty(cls, steps: int, envs: gym.vector.VectorEnv) -> "Rollout":
        n, obs_shape = envs.num_envs, envs.single_observation_space.shape
        space = envs.single_action_space
        actions = (np.zeros((steps, n, *space.shape), np.float32)
                   if isinstance(space, gym.spaces.Box) else np.zeros((steps, n), np.int64))
        return cls(obs=np.zeros((steps, n, *obs_shape), np.float32),
                   raw_obs=np.zeros((steps, n, *obs_shape)), actions=actions,
                   rewards=np.zeros((steps, n)), terminated=np.zeros((steps, n), bool),
                   episode_end=np.zeros((steps, n), bool), values=np.zeros((steps, n)),
                   next_values=np.zeros((steps, n)))


class RolloutCollector:
    """Steps N environments with the current policy and keeps episodes going across iterations.

    Actions of all N environments come from one batched forward pass per step. Values are
    computed after the rollout in one pass over all T·N observations, plus one pass over the
    observations that bootstrap: the final observations of episodes that ended and the
    observation after the last step.

    The environments are reset with seeds drawn from the run's ``seed`` (one stream per
    environment, :mod:`trpo.seeding`). :meth:`state_dict` holds everything that decides the
    next rollout, the environments' own state included.
    """

    def __init__(self, envs: gym.vector.VectorEnv, policy: nn.Module, value: nn.Module,
                 obs_normalizer: ObservationNormalizer, reward_scaler: RewardScaler,
                 steps_per_env: int, seed: int, env_id: str):
        self.envs, self.policy, self.value = envs, policy, value
        self.obs_normalizer, self.reward_scaler = obs_normalizer, reward_scaler
        self.steps_per_env, self.env_id = steps_per_env, env_id
        self.to_env_action = action_clipper(envs.single_action_space)
        self.seed = seed
        envs.action_space.seed(stream_seed(seed, "action_space"))
        self.obs, _ = envs.reset(seed=stream_seeds(seed, "train_envs", envs.num_envs))
        check_finite(self.obs, "observation", env_id, 0)
        self.running_returns = np.zeros(envs.num_envs)
        self.running_lengths = np.zeros(envs.num_envs, np.int64)
        self.total_steps = 0

    def collect(self, before_values: Callable[[], None] = lambda: None) -> Rollout:
        """One rollout; ``before_values`` runs after the last step, before V is evaluated (the
        trainer waits there for a value fit running in the background)."""
        rollout = Rollout.empty(self.steps_per_env, self.envs)
        bootstrap_obs, bootstrap_at = [], []
        step_terms: list[dict[str, np.ndarray]] = []  # each step's reward terms, summed at the end
        for t in range(self.steps_per_env):
            obs = self.obs_normalizer(self.obs, update=True)
            with torch.inference_mode():
                actions = self.policy.sample(torch.from_numpy(obs)).numpy()
            next_obs, rewards, terminated, truncated, info = self.envs.step(
                self.to_env_action(actions))
            self.total_steps += self.envs.num_envs
            check_finite(next_obs, "observation", self.env_id, self.total_steps)
            check_finite(rewards, "reward", self.env_id, self.total_steps)
            ended = terminated | truncated
            rollout.obs[t], rollout.raw_obs[t], rollout.actions[t] = obs, self.obs, actions
            rollout.rewards[t] = self.reward_scaler(rewards, ended)
            rollout.terminated[t], rollout.episode_end[t] = terminated, ended
            self.running_returns += rewards
            self.running_lengths += 1
            if "reward_terms" in info:
                step_terms.append(info["reward_terms"])
            for i in np.flatnonzero(ended):
                final_obs = info["final_obs"][i]
                check_finite(final_obs, "final observation", self.env_id, self.total_steps)
                bootstrap_obs.append(self.obs_normalizer(final_obs[None])[0])
                bootstrap_at.append((t, i))
                rollout.episode_returns.append(float(self.running_returns[i]))
                rollout.episode_lengths.append(int(self.running_lengths[i]))
                self.running_returns[i], self.running_lengths[i] = 0.0, 0
            self.obs = next_obs
        rollout.reward_terms = {
            name: float(np.stack([terms[name] for terms in step_terms], dtype=np.float64).sum())
            for name in (step_terms[0] if step_terms else ())}
        before_values()
        self._compute_values(rollout, bootstrap_obs, bootstrap_at)
        return rollout

    def _compute_values(self, rollout: Rollout, bootstrap_obs: list, bootstrap_at: list) -> None:
        steps, n = rollout.rewards.shape
        last_obs = self.obs_normalizer(self.obs)
        with torch.inference_mode():
            values = self.value(torch.from_numpy(rollout.obs.reshape(steps * n, -1)))
            rollout.values[:] = values.double().numpy().reshape(steps, n)
            rollout.next_values[:-1] = rollout.values[1:]
            rollout.next_values[-1] = self.value(torch.from_numpy(last_obs)).double().numpy()
            if bootstrap_obs:
                final_values = self.value(torch.from_numpy(np.stack(bootstrap_obs)))
                t_index, env_index = zip(*bootstrap_at)
                rollout.next_values[list(t_index), list(env_index)] = final_values.double().numpy()

    def state_dict(self) -> dict[str, Any]:
        """The current observations, the episodes under way and the environments' own state
        (``None`` where they cannot be read: ``vector_mode=async``, or a backend without
        snapshots, :attr:`trpo.envs.backend.Backend.snapshots`)."""
        return {"obs": self.obs, "running_returns": self.running_returns,
                "running_lengths": self.running_lengths, "total_steps": self.total_steps,
                "envs": vector_env_state(self.envs)}

    def load_state_dict(self, state: dict[str, Any], iteration: int) -> None:
        """Go on from :meth:`state_dict`; without the environments' state, start new episodes
        (seeded by ``iteration``) and say so."""
        self.total_steps = int(state["total_steps"])
        if state["envs"] is None:
            log.warning("environment states were not saved (vector_mode=async, or a backend "
                        "that cannot save them): the resumed run starts new episodes and will "
                        "not match an uninterrupted one")
            self.obs, _ = self.envs.reset(
                seed=stream_seeds(self.seed, "train_envs", self.envs.num_envs, iteration))
            self.running_returns = np.zeros(self.envs.num_envs)
            self.running_lengths = np.zeros(self.envs.num_envs, np.int64)
            return
        set_vector_env_state(self.envs, state["envs"])
        self.obs = state["obs"]
        self.running_returns = state["running_returns"]
        self.running_lengths = state["running_lengths"]


def check_finite(array: np.ndarray, what: str, env_id: str, step: int) -> None:
    """Raise :class:`NonFiniteError` naming the env, the step and the value if ``array`` holds
    a NaN or an infinity."""
    if not np.isfinite(array).all():
        bad = np.asarray(array)[~np.isfinite(array)].ravel()[0]
        raise NonFiniteError(f"{env_id} returned a non-finite {what} ({bad}) at "
                             f"environment step {step}")


def evaluate(envs: gym.vector.VectorEnv, policy: nn.Module, obs_normalizer: ObservationNormalizer,
             seeds: Sequence[int], env_id: str = "the environment") -> np.ndarray:
    """Undiscounted returns of one deterministic episode in each of ``envs``' sub-environments,
    reset with ``seeds`` (one per sub-environment).

    Actions are the policy's mode (the Gaussian mean, the most likely discrete action);
    observations are normalised with the training statistics, frozen. A non-finite observation
    or reward raises :class:`NonFiniteError`, as in training.
    """
    to_env_action = action_clipper(envs.single_action_space)
    obs, _ = envs.reset(seed=list(seeds))
    check_finite(obs, "evaluation observation", env_id, 0)
    returns = np.zeros(envs.num_envs)
    done = np.zeros(envs.num_envs, bool)
    steps = 0
    while not done.all():
        with torch.inference_mode():
            actions = policy.mode(policy(torch.from_numpy(obs_normalizer(obs)))).numpy()
        obs, rewards, terminated, truncated, _ = envs.step(to_env_action(actions))
        steps += 1
        live = ~done
        check_finite(obs[live], "evaluation observation", env_id, steps)
        check_finite(rewards[live], "evaluation reward", env_id, steps)
        returns += np.where(done, 0.0, rewards)
        done |= terminated | truncated
    return returns
