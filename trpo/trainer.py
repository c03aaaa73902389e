"""The training loop shared by every solver and estimator.

A :class:`Trainer` holds one run's environments, networks, solver, critic and counters, and
the metric history (one row per iteration) that its checkpoints carry, so that a resumed run's
``progress.csv`` can be rewritten to exactly the rows of an uninterrupted one. Which
checkpoint to resume from is :mod:`trpo.io.resume`'s decision; locking, status and signals are
:mod:`trpo.train`'s.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from typing import Any, Callable, Optional

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from trpo.io.checkpoint import nonfinite_entries
from trpo.config import VectorMode
from trpo.critic import ValueFitter, explained_variance
from trpo.envs import cores_for_this_run, make_vector_env
from trpo.io.logger import MetricWriter
from trpo.networks import ValueNetwork, build_policy
from trpo.normalization import ObservationNormalizer, RewardScaler, normalizer_shift_kl
from trpo.io.provenance import code_version
from trpo.rollout import RolloutCollector, evaluate
from trpo.io.run_folder import RunFolder
from trpo.seeding import global_rng_state, set_global_rng_state, stream_seed, stream_seeds
from trpo.solvers import PolicyBatch

log = logging.getLogger("trpo")

# The parts of a checkpoint that are learnt state: each must be finite to be saved or resumed.
LEARNT_STATE = ("policy", "value", "solver", "critic", "obs_normalizer", "reward_scaler")


class TrainingError(RuntimeError):
    """Training cannot go on (repeated non-finite updates, a diverged value network)."""


class StopRequested(Exception):
    """A stop was asked for (SIGINT, SIGTERM) and the run stopped at a safe point, checkpointed."""


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators from the run's seed (the
    environments are seeded on reset, :mod:`trpo.seeding`)."""
    global_seed = stream_seed(seed, "global")
    random.seed(global_seed)
    np.random.seed(global_seed)
    torch.manual_seed(global_seed)


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


class Trainer:
    """Everything one run holds: environments, networks, solver, critic, counters, history."""

    def __init__(self, cfg: DictConfig, folder: RunFolder):
        self.cfg, self.folder = cfg, folder
        torch.set_num_threads(cfg.torch_threads)
        seed_everything(cfg.seed)
        self.envs = make_vector_env(cfg.env, cfg.num_envs, cfg.vector_mode, cfg.env_workers)
        self.eval_envs = make_vector_env(cfg.env, cfg.eval_episodes, VectorMode.sync,
                                         backend="gymnasium")
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
        self.start_counters()

    def start_counters(self) -> None:
        """The counters and history of a run that has not trained yet (a checkpoint's load
        replaces them)."""
        self.iteration = 0
        self.wall_s = 0.0  # training time before this process (a resumed run goes on from it)
        self.final_return = math.nan
        self.rejected_in_a_row = 0
        self.wandb_id: Optional[str] = None
        self.history: list[dict[str, Any]] = []  # the rows of iterations 1..iteration
        self.checkpointed_at = 0  # iteration of the last checkpoint written or loaded

    def close(self) -> None:
        try:
            self.critic.close()
        finally:
            self.envs.close()
            self.eval_envs.close()

    # -------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        self.critic.wait()  # a background fit's weights, before the value network is read
        return {
            "config": OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True),
            "iteration": self.iteration, "wall_s": self.wall_s,
            "final_return": self.final_return, "rejected_in_a_row": self.rejected_in_a_row,
            "wandb_id": self.wandb_id, "code": code_version(), "history": self.history,
            "policy": self.policy.state_dict(), "value": self.value.state_dict(),
            "solver": self.solver.state_dict(), "critic": self.critic.state_dict(),
            "obs_normalizer": self.obs_normalizer.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict(),
            "collector": self.collector.state_dict(),
            "rng": global_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on from ``state``; raises (``KeyError``, ``RuntimeError``, ``ValueError``, ...)
        if it does not fit this run's networks and environments."""
        self.policy.load_state_dict(state["policy"])
        self.value.load_state_dict(state["value"])
        self.solver.load_state_dict(state["solver"])
        self.critic.load_state_dict(state["critic"])
        self.obs_normalizer.load_state_dict(state["obs_normalizer"])
        self.reward_scaler.load_state_dict(state["reward_scaler"])
        self.iteration = int(state["iteration"])
        collector = dict(state["collector"])
        collector.setdefault("envs", state.get("envs"))  # where checkpoints before 2026-12 kept it
        self.collector.load_state_dict(collector, self.iteration)
        set_global_rng_state(state["rng"])
        self.wall_s = float(state["wall_s"])
        self.checkpointed_at = self.iteration
        self.final_return = float(state["final_return"])
        self.rejected_in_a_row = int(state["rejected_in_a_row"])
        self.wandb_id = state["wandb_id"]
        self.history = [dict(row) for row in state.get("history", [])]

    def checkpoint(self) -> None:
        """Save a checkpoint of this iteration; raises :class:`TrainingError` instead if the
        learnt state is no longer finite (the last checkpoint then stays the last good one)."""
        state = self.state_dict()
        bad = self.nonfinite_state(state)
        if bad:
            raise TrainingError(
                f"non-finite values in {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} at "
                f"iteration {self.iteration}; {self.last_checkpoint_note()}")
        self.folder.save_checkpoint(state)
        self.checkpointed_at = self.iteration

    def nonfinite_state(self, state: Optional[dict[str, Any]] = None) -> list[str]:
        """The learnt tensors (of ``state``, or of the run now) holding a NaN or an infinity."""
        state = state or self.state_dict()
        return [name for part in LEARNT_STATE for name in nonfinite_entries(state[part], part + ".")]

    def last_checkpoint_note(self) -> str:
        """Which checkpoint a resumed run would start from (each one saved was finite)."""
        if not self.checkpointed_at:
            return "no checkpoint was written yet"
        return f"the checkpoint of iteration {self.checkpointed_at} in {self.folder.path} is intact"

    # ---------------------------------------------------------------------------- training

    @property
    def total_iterations(self) -> int:
        """Iterations in the whole run: total_steps in whole batches, rounded up."""
        return math.ceil(self.cfg.total_steps / self.cfg.steps_per_iteration)

    def run(self, logger: MetricWriter, stop_requested: Callable[[], bool] = lambda: False
            ) -> float:
        """Train to the end; returns the last evaluation's mean return.

        ``stop_requested`` is asked after each iteration (a safe point); if it says yes, the
        run checkpoints and raises :class:`StopRequested`.
        """
        cfg = self.cfg
        iterations = self.total_iterations
        start = time.perf_counter() - self.wall_s
        while self.iteration < iterations:
            self.iteration += 1
            row = self.train_iteration(is_last=self.iteration == iterations)
            self.wall_s = time.perf_counter() - start
            row = {"iteration": self.iteration,
                   "env_steps": self.iteration * cfg.steps_per_iteration,
                   "wall_s": self.wall_s, **row}
            self.history.append(row)
            logger.write(row)
            if self.iteration % cfg.checkpoint_every == 0 or self.iteration == iterations:
                self.checkpoint()
            if self.rejected_in_a_row >= cfg.max_rejected_updates:
                raise TrainingError(
                    f"{self.rejected_in_a_row} policy updates in a row were rejected for "
                    f"non-finite values (iterations {self.iteration - self.rejected_in_a_row + 1}"
                    f"–{self.iteration}); {self.last_checkpoint_note()}")
            if stop_requested() and self.iteration < iterations:
                if self.checkpointed_at != self.iteration:
                    self.checkpoint()
                raise StopRequested(f"stopped after iteration {self.iteration}")
        return self.final_return

    def train_iteration(self, is_last: bool) -> dict[str, Optional[float]]:
        """Collect, estimate, update the policy, start the value fit, evaluate; the row's data."""
        cfg = self.cfg
        iteration_start = tick = time.perf_counter()
        stats_before = self.obs_normalizer.frozen_copy()
        rollout = self.collector.collect(before_values=self.critic.wait)
        rollout_s = time.perf_counter() - tick
        if nonfinite_entries(self.value.state_dict()):
            raise TrainingError(f"the value network became non-finite in the fit before "
                                f"iteration {self.iteration}; {self.last_checkpoint_note()}")

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

        tick = time.perf_counter()
        samples = advantages.shape[0]
        obs = torch.from_numpy(rollout.obs.reshape(samples, -1))
        actions = torch.from_numpy(rollout.actions.reshape(samples, *rollout.actions.shape[2:]))
        batch = PolicyBatch.from_policy(self.policy, obs, actions,
                                        torch.from_numpy(advantages).float())
        progress = (self.iteration - 1) / max(self.total_iterations - 1, 1)  # 0 first, 1 last
        metrics = self.solver.update(batch, progress)
        policy_s = time.perf_counter() - tick
        self.rejected_in_a_row = self.rejected_in_a_row + 1 if metrics["update_nonfinite"] else 0

        self.critic.fit(obs, torch.from_numpy(returns.ravel()).float())

        eval_return, eval_s = None, 0.0
        if self.iteration % cfg.eval_every == 0 or is_last:
            tick = time.perf_counter()
            seeds = stream_seeds(cfg.seed, "evaluation", cfg.eval_episodes, self.iteration)
            eval_returns = evaluate(self.eval_envs, self.policy, self.obs_normalizer, seeds,
                                    cfg.env.id)
            eval_return, eval_s = float(eval_returns.mean()), time.perf_counter() - tick
            self.final_return = eval_return

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
        """What acting needs: the policy and value weights, the observation statistics and the
        config (``agent.pt``)."""
        self.critic.wait()
        return {"policy": self.policy.state_dict(), "value": self.value.state_dict(),
                "obs_normalizer": {k: torch.as_tensor(v) for k, v in
                                   self.obs_normalizer.state_dict().items()},
                "config": OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True),
                "iteration": self.iteration}
