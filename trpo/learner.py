"""Learners: what the training loop (:mod:`trpo.loop`) drives, one iteration at a time.

A learner holds one algorithm's state (environments, networks, solver, critic, normalisers) and
does one iteration of it; the loop keeps the counters, the history, the checkpoints and the
stop rules. :class:`Learner` is the protocol; :class:`OnPolicyLearner` is this framework's, built
from the config's four groups; a solver option may name another (``solver.learner``: the
sb3-contrib baseline, :mod:`experiments.sb3_baseline`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Optional, Protocol

import numpy as np
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from trpo.config import VectorMode
from trpo.critic import ValueFitter, explained_variance
from trpo.envs import cores_for_this_run, make_vector_env
from trpo.io.checkpoint import nonfinite_entries
from trpo.io.run_folder import Row
from trpo.networks import ValueNetwork, build_policy
from trpo.normalization import ObservationNormalizer, RewardScaler, normalizer_shift_kl
from trpo.rollout import RolloutCollector, evaluate
from trpo.seeding import (global_rng_state, seed_everything, set_global_rng_state, stream_seed,
                          stream_seeds)
from trpo.solvers import PolicyBatch

log = logging.getLogger("trpo")

# The parts of an on-policy learner's state that are learnt: each must be finite to be saved or
# resumed.
LEARNT_STATE = ("policy", "value", "solver", "critic", "obs_normalizer", "reward_scaler")


class TrainingError(RuntimeError):
    """Training cannot go on (repeated non-finite updates, a diverged value network)."""


class Learner(Protocol):
    """One algorithm's state and its iteration, as :class:`trpo.loop.TrainingLoop` drives it."""

    def iterate(self, iteration: int, total_iterations: int) -> Row:
        """Train iteration ``iteration`` (1-based) of ``total_iterations``; the row's metrics.
        Evaluates when ``iteration`` is a multiple of ``eval_every`` or the last
        (``eval_return_mean``, else ``None``); ``update_nonfinite`` is 1.0 when the update was
        rejected for non-finite values. Raises :class:`TrainingError` if it cannot go on."""

    def state_dict(self) -> dict[str, Any]:
        """Everything that decides the next iterations, as plain data (a checkpoint's part)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on from a checkpoint (which also holds the loop's ``iteration``); raises if it does
        not fit this learner's networks and environments."""

    def nonfinite_state(self, state: dict[str, Any]) -> list[str]:
        """The learnt tensors of ``state`` holding a NaN or an infinity."""

    def agent(self) -> dict[str, Any]:
        """What acting needs (``agent.pt``): ``policy`` and ``value`` weights in this
        framework's format, ``obs_normalizer`` statistics."""

    def close(self) -> None:
        """Release environments and worker processes."""


def make_learner(cfg: DictConfig) -> Learner:
    """The learner ``solver.learner`` names (the sb3-contrib baseline's), else
    :class:`OnPolicyLearner`."""
    if cfg.solver.get("learner"):
        return get_class(cfg.solver.learner)(cfg)
    return OnPolicyLearner(cfg)


def resident_memory_mb() -> float:
    """This process's resident memory now, in MiB (Linux ``/proc``; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return math.nan


def fit_in_background(cfg: DictConfig) -> bool:
    """``critic.background``, with null resolved: a worker process when this run may use two
    cores or more."""
    if cfg.critic.background is not None:
        return bool(cfg.critic.background)
    return cores_for_this_run() >= 2


class OnPolicyLearner:
    """This framework's learner: a rollout, advantages, the solver's policy update, the value
    fit (in a worker process when there is a spare core) and the evaluation, per iteration."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.envs = self.eval_envs = self.critic = None
        try:
            self._build(cfg)
        except BaseException:  # a task that fails at its first reset: end what was started
            self.close()
            raise

    def _build(self, cfg: DictConfig) -> None:
        torch.set_num_threads(cfg.torch_threads)
        seed_everything(cfg.seed)
        self.envs = make_vector_env(cfg.env, cfg.num_envs, cfg.vector_mode, cfg.env_workers)
        self.eval_envs = make_vector_env(cfg.env, cfg.eval_episodes, VectorMode.sync)
        obs_space, action_space = (self.envs.single_observation_space,
                                   self.envs.single_action_space)
        self.policy = build_policy(obs_space, action_space, cfg.network)
        self.value = ValueNetwork(int(np.prod(obs_space.shape)), cfg.network,
                                  normalize_targets=cfg.critic.normalize_targets)
        self.obs_normalizer = ObservationNormalizer(obs_space.shape, cfg.obs_clip,
                                                    cfg.normalize_obs)
        self.estimator = instantiate(cfg.advantage)
        self.reward_scaler = RewardScaler(cfg.num_envs, self.estimator.gamma,
                                          enabled=cfg.normalize_reward)
        self.solver = instantiate(cfg.solver, policy=self.policy,
                                  seed=stream_seed(cfg.seed, "solver"))
        self.critic = ValueFitter(self.value, cfg.critic.lr, cfg.critic.epochs,
                                  cfg.critic.minibatch_size, seed=stream_seed(cfg.seed, "critic"),
                                  background=fit_in_background(cfg))
        self.collector = RolloutCollector(self.envs, self.policy, self.value, self.obs_normalizer,
                                          self.reward_scaler,
                                          cfg.steps_per_iteration // cfg.num_envs, cfg.seed,
                                          cfg.env.id)

    def close(self) -> None:
        """End the value-fit worker and the environments (those built, if building failed)."""
        try:
            if self.critic is not None:
                self.critic.close()
        finally:
            for envs in (self.envs, self.eval_envs):
                if envs is not None:
                    envs.close()

    def state_dict(self) -> dict[str, Any]:
        self.critic.wait()  # a background fit's weights, before the value network is read
        return {
            "policy": self.policy.state_dict(), "value": self.value.state_dict(),
            "solver": self.solver.state_dict(), "critic": self.critic.state_dict(),
            "obs_normalizer": self.obs_normalizer.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict(),
            "collector": self.collector.state_dict(),
            "rng": global_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.value.load_state_dict(state["value"])
        self.solver.load_state_dict(state["solver"])
        self.critic.load_state_dict(state["critic"])
        self.obs_normalizer.load_state_dict(state["obs_normalizer"])
        self.reward_scaler.load_state_dict(state["reward_scaler"])
        self.collector.load_state_dict(state["collector"], int(state["iteration"]))
        set_global_rng_state(state["rng"])

    def nonfinite_state(self, state: dict[str, Any]) -> list[str]:
        return [name for part in LEARNT_STATE
                for name in nonfinite_entries(state[part], part + ".")]

    def iterate(self, iteration: int, total_iterations: int) -> Row:
        """Collect, estimate, start the value fit, update the policy, evaluate; the row's data."""
        cfg = self.cfg
        iteration_start = tick = time.perf_counter()
        stats_before = self.obs_normalizer.frozen_copy()
        rollout = self.collector.collect(before_values=self.critic.wait)
        rollout_s = time.perf_counter() - tick
        if nonfinite_entries(self.value.state_dict()):
            raise TrainingError(f"the value network became non-finite in the fit before "
                                f"iteration {iteration}")

        tick = time.perf_counter()
        advantages, returns = self.estimator(rollout.rewards, rollout.values,
                                             rollout.next_values, rollout.terminated,
                                             rollout.episode_end)
        advantages = advantages.ravel()
        if self.estimator.normalize:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        advantage_s = time.perf_counter() - tick

        # The policy before its update, on this rollout's states, with the statistics from
        # before and after the rollout.
        kl_obs_stats = normalizer_shift_kl(self.policy, stats_before, self.obs_normalizer,
                                           rollout.raw_obs.reshape(rollout.rewards.size, -1))

        samples = advantages.shape[0]
        obs = torch.from_numpy(rollout.obs.reshape(samples, -1))
        # The value fit needs only this rollout's returns, and the policy update does not read
        # the value net: a fit in the background starts here and runs beside the update.
        self.critic.fit(obs, torch.from_numpy(returns.ravel()).float())

        tick = time.perf_counter()
        actions = torch.from_numpy(rollout.actions.reshape(samples, *rollout.actions.shape[2:]))
        batch = PolicyBatch.from_policy(self.policy, obs, actions,
                                        torch.from_numpy(advantages).float())
        progress = (iteration - 1) / max(total_iterations - 1, 1)  # 0 first, 1 last
        metrics = self.solver.update(batch, progress)
        policy_s = time.perf_counter() - tick

        eval_return, eval_s = None, 0.0
        if iteration % cfg.eval_every == 0 or iteration == total_iterations:
            tick = time.perf_counter()
            seeds = stream_seeds(cfg.seed, "evaluation", cfg.eval_episodes, iteration)
            eval_returns = evaluate(self.eval_envs, self.policy, self.obs_normalizer, seeds,
                                    cfg.env.id)
            eval_return, eval_s = float(eval_returns.mean()), time.perf_counter() - tick

        iteration_s = time.perf_counter() - iteration_start
        solver_timings = {k: metrics.pop(k) for k in list(metrics) if k.startswith("time_")}
        episodes = rollout.episode_returns
        return {
            "return_mean": float(np.mean(episodes)) if episodes else None,
            "eval_return_mean": eval_return,
            "kl": metrics.pop("kl"),
            "kl_obs_stats": kl_obs_stats,
            "episodes": len(episodes),
            "episode_length_mean": float(np.mean(rollout.episode_lengths)) if episodes else None,
            # Of the episodes that ended, the fraction that terminated (a fall, for the
            # locomotion tasks) rather than reached the time limit.
            "terminated_fraction": rollout.terminations / len(episodes) if episodes else None,
            # The reward's terms per environment step, as the task reports them (costs negative).
            **{name: total / rollout.rewards.size for name, total in rollout.reward_terms.items()},
            **metrics,
            # How well the value net fitted last iteration predicts this batch's targets.
            "value_loss": float(np.mean((rollout.values - returns) ** 2)),
            "explained_variance": explained_variance(rollout.values.ravel(), returns.ravel()),
            "steps_per_s": cfg.steps_per_iteration / iteration_s,
            "rss_mb": resident_memory_mb(),
            "time_rollout_s": rollout_s,
            "time_advantage_s": advantage_s,
            "time_policy_s": policy_s,
            **solver_timings,
            # The latest finished value fit (in the background: last iteration's, which ran
            # during this iteration's rollout).
            "time_value_s": self.critic.last_fit_s,
            "time_eval_s": eval_s,
        }

    def agent(self) -> dict[str, Any]:
        self.critic.wait()
        return {"policy": self.policy.state_dict(), "value": self.value.state_dict(),
                "obs_normalizer": {k: torch.as_tensor(v) for k, v in
                                   self.obs_normalizer.state_dict().items()}}
