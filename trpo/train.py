"""The training loop shared by every solver and estimator: ``train(cfg, run_dir) -> final return``."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from trpo.config import VectorMode, validate_config
from trpo.critic import ValueFitter, explained_variance
from trpo.envs import make_vector_env
from trpo.logger import make_logger
from trpo.networks import ValueNetwork, build_policy
from trpo.normalization import ObservationNormalizer, RewardScaler
from trpo.rollout import RolloutCollector, evaluate
from trpo.solvers import PolicyBatch

log = logging.getLogger("trpo")

# Evaluation environments are seeded apart from the training ones.
EVAL_SEED_OFFSET = 1_000_000


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (environments are seeded on reset)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resident_memory_mb() -> float:
    """This process's resident memory now, in MiB (Linux ``/proc``; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return math.nan


def write_status(run_dir: Path, status: str, **details) -> None:
    """Record the run's state in ``status.json`` (``running``, ``completed`` or ``failed``).

    Written to a temporary file and renamed, so a reader never sees half a file.
    """
    tmp = run_dir / "status.json.tmp"
    tmp.write_text(json.dumps({"status": status, **details}, indent=2) + "\n")
    os.replace(tmp, run_dir / "status.json")


def train(cfg: DictConfig, run_dir: str | Path, run_name: Optional[str] = None) -> float:
    """Train one agent as ``cfg`` says, logging every iteration into ``run_dir``.

    Raises :class:`trpo.config.ConfigError` before any environment is built if a value is out
    of range. Returns the last evaluation's mean return.
    """
    validate_config(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_name = run_name or f"{cfg.env.id}-s{cfg.seed}"
    torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)

    with contextlib.ExitStack() as cleanup:
        envs = make_vector_env(cfg.env, cfg.num_envs, cfg.vector_mode)
        cleanup.callback(envs.close)
        eval_envs = make_vector_env(cfg.env, cfg.eval_episodes, VectorMode.sync)
        cleanup.callback(eval_envs.close)

        obs_space, action_space = envs.single_observation_space, envs.single_action_space
        policy = build_policy(obs_space, action_space, cfg.network)
        value = ValueNetwork(int(np.prod(obs_space.shape)), cfg.network)
        obs_normalizer = ObservationNormalizer(obs_space.shape, cfg.obs_clip, cfg.normalize_obs)
        estimator = instantiate(cfg.advantage)
        reward_scaler = RewardScaler(cfg.num_envs, estimator.gamma, enabled=cfg.normalize_reward)
        solver = instantiate(cfg.solver, policy=policy)
        critic = ValueFitter(value, cfg.critic.lr, cfg.critic.epochs, cfg.critic.minibatch_size,
                             seed=cfg.seed, background=cfg.critic.background)
        collector = RolloutCollector(envs, policy, value, obs_normalizer, reward_scaler,
                                     cfg.steps_per_iteration // cfg.num_envs, cfg.seed, cfg.env.id)

        logger = make_logger(cfg.logger, run_dir, run_name,
                             OmegaConf.to_container(cfg, resolve=True), cfg.total_steps)
        write_status(run_dir, "running", total_steps=cfg.total_steps)
        try:
            final_return = _train_loop(cfg, collector, estimator, solver, critic, policy,
                                       obs_normalizer, eval_envs, logger)
            critic.wait()
        except BaseException as error:
            logger.close(failed=True)
            write_status(run_dir, "failed", error=f"{type(error).__name__}: {error}")
            raise
        logger.close()
        torch.save({"policy": policy.state_dict(), "value": value.state_dict(),
                    "obs_normalizer": {k: torch.as_tensor(v) for k, v in
                                       obs_normalizer.state_dict().items()}},
                   run_dir / "agent.pt")
        write_status(run_dir, "completed", final_eval_return=final_return)
    return final_return


def _train_loop(cfg, collector, estimator, solver, critic, policy, obs_normalizer, eval_envs,
                logger) -> float:
    iterations = math.ceil(cfg.total_steps / cfg.steps_per_iteration)
    start = time.perf_counter()
    final_return = math.nan
    for iteration in range(1, iterations + 1):
        iteration_start = tick = time.perf_counter()
        rollout = collector.collect(before_values=critic.wait)
        rollout_s = time.perf_counter() - tick

        tick = time.perf_counter()
        advantages, returns = estimator(rollout.rewards, rollout.values, rollout.next_values,
                                        rollout.terminated, rollout.episode_end)
        advantages = advantages.ravel()
        if estimator.normalize:
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        advantage_s = time.perf_counter() - tick

        tick = time.perf_counter()
        obs = torch.from_numpy(rollout.obs.reshape(advantages.shape[0], -1))
        actions = torch.from_numpy(rollout.actions.reshape(advantages.shape[0],
                                                           *rollout.actions.shape[2:]))
        batch = PolicyBatch.from_policy(policy, obs, actions,
                                        torch.from_numpy(advantages).float())
        metrics = solver.update(batch)
        policy_s = time.perf_counter() - tick

        critic.fit(obs, torch.from_numpy(returns.ravel()).float())

        eval_return, eval_s = None, 0.0
        if iteration % cfg.eval_every == 0 or iteration == iterations:
            tick = time.perf_counter()
            eval_returns = evaluate(eval_envs, policy, obs_normalizer,
                                    cfg.seed + EVAL_SEED_OFFSET + iteration)
            eval_return, eval_s = float(eval_returns.mean()), time.perf_counter() - tick
            final_return = eval_return

        iteration_s = time.perf_counter() - iteration_start
        solver_timings = {k: metrics.pop(k) for k in list(metrics) if k.startswith("time_")}
        episodes = rollout.episode_returns
        logger.write({
            "iteration": iteration,
            "env_steps": iteration * cfg.steps_per_iteration,
            "wall_s": time.perf_counter() - start,
            "return_mean": float(np.mean(episodes)) if episodes else None,
            "eval_return_mean": eval_return,
            "kl": metrics.pop("kl"),
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
            "time_value_s": critic.last_fit_s,
            "time_eval_s": eval_s,
        })
    return final_return
