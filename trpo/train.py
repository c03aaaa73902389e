"""The training loop shared by every solver and estimator: ``train(cfg, run_dir) -> final return``.

A run checkpoints every ``checkpoint_every`` iterations and at the end. Started again in the same
run directory it resumes from its last checkpoint, and ``progress.csv`` ends up with exactly the
rows of an uninterrupted run (timing columns aside); ``resume=false`` starts afresh in a new
directory next to it instead.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from trpo.checkpoint import (CHECKPOINT, CheckpointError, global_rng_state,
                             load_latest_checkpoint, read_checkpoint, save_checkpoint,
                             set_global_rng_state, set_vector_env_state, vector_env_state)
from trpo.config import ConfigError, VectorMode, flatten, validate_config
from trpo.critic import ValueFitter, explained_variance
from trpo.envs import make_vector_env
from trpo.logger import make_logger, read_progress, truncate_progress
from trpo.networks import ValueNetwork, build_policy
from trpo.normalization import ObservationNormalizer, RewardScaler, normalizer_shift_kl
from trpo.provenance import code_differences, code_version
from trpo.rollout import RolloutCollector, evaluate
from trpo.solvers import PolicyBatch

log = logging.getLogger("trpo")

# Evaluation environments are seeded apart from the training ones.
EVAL_SEED_OFFSET = 1_000_000
# Keys that may change between a run and its resumption: they do not change what is computed.
RESUMABLE_CHANGES = ("total_steps", "logger.", "resume", "checkpoint_every", "torch_threads",
                     "max_rejected_updates", "critic.background", "name", "reuse_from")


class TrainingError(RuntimeError):
    """Training cannot go on (repeated non-finite updates)."""


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
    """Record the run's state in ``status.json`` (``running``, ``completed`` or ``failed``) with
    the code running it (:func:`trpo.provenance.code_version`).

    Written to a temporary file and renamed, so a reader never sees half a file.
    """
    tmp = run_dir / "status.json.tmp"
    record = {"status": status, **details, "code": code_version()}
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, run_dir / "status.json")


def read_status(run_dir: Path) -> dict[str, Any]:
    """``status.json``'s record; empty if there is none or it cannot be read."""
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


class Trainer:
    """Everything one run holds: environments, networks, solver, critic, counters."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, run_dir
        torch.set_num_threads(cfg.torch_threads)
        seed_everything(cfg.seed)
        self.envs = make_vector_env(cfg.env, cfg.num_envs, cfg.vector_mode)
        self.eval_envs = make_vector_env(cfg.env, cfg.eval_episodes, VectorMode.sync)
        obs_space, action_space = (self.envs.single_observation_space,
                                   self.envs.single_action_space)
        self.policy = build_policy(obs_space, action_space, cfg.network)
        self.value = ValueNetwork(int(np.prod(obs_space.shape)), cfg.network)
        self.obs_normalizer = ObservationNormalizer(obs_space.shape, cfg.obs_clip,
                                                    cfg.normalize_obs)
        self.estimator = instantiate(cfg.advantage)
        self.reward_scaler = RewardScaler(cfg.num_envs, self.estimator.gamma,
                                          enabled=cfg.normalize_reward)
        self.solver = instantiate(cfg.solver, policy=self.policy)
        self.critic = ValueFitter(self.value, cfg.critic.lr, cfg.critic.epochs,
                                  cfg.critic.minibatch_size, seed=cfg.seed,
                                  background=cfg.critic.background)
        self.collector = RolloutCollector(self.envs, self.policy, self.value, self.obs_normalizer,
                                          self.reward_scaler,
                                          cfg.steps_per_iteration // cfg.num_envs, cfg.seed,
                                          cfg.env.id)
        self.iteration = 0
        self.wall_s = 0.0  # training time before this process (a resumed run goes on from it)
        self.final_return = math.nan
        self.rejected_in_a_row = 0
        self.wandb_id: Optional[str] = None
        self.checkpointed_at = 0  # iteration of the last checkpoint written or loaded

    def close(self) -> None:
        self.critic.wait()
        self.envs.close()
        self.eval_envs.close()

    # -------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        collector = self.collector
        return {
            "config": OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True),
            "iteration": self.iteration, "wall_s": self.wall_s,
            "final_return": self.final_return, "rejected_in_a_row": self.rejected_in_a_row,
            "wandb_id": self.wandb_id, "code": code_version(),
            "policy": self.policy.state_dict(), "value": self.value.state_dict(),
            "solver": self.solver.state_dict(), "critic": self.critic.state_dict(),
            "obs_normalizer": self.obs_normalizer.state_dict(),
            "reward_scaler": self.reward_scaler.state_dict(),
            "collector": {"obs": collector.obs, "running_returns": collector.running_returns,
                          "running_lengths": collector.running_lengths,
                          "total_steps": collector.total_steps},
            "envs": vector_env_state(self.envs),
            "rng": global_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration, self.wall_s = int(state["iteration"]), float(state["wall_s"])
        self.checkpointed_at = self.iteration
        self.final_return = float(state["final_return"])
        self.rejected_in_a_row = int(state["rejected_in_a_row"])
        self.wandb_id = state["wandb_id"]
        self.policy.load_state_dict(state["policy"])
        self.value.load_state_dict(state["value"])
        self.solver.load_state_dict(state["solver"])
        self.critic.load_state_dict(state["critic"])
        self.obs_normalizer.load_state_dict(state["obs_normalizer"])
        self.reward_scaler.load_state_dict(state["reward_scaler"])
        collector = state["collector"]
        self.collector.obs = collector["obs"]
        self.collector.running_returns = collector["running_returns"]
        self.collector.running_lengths = collector["running_lengths"]
        self.collector.total_steps = int(collector["total_steps"])
        if state["envs"] is not None:  # saved by a sync run; vector_mode cannot change
            set_vector_env_state(self.envs, state["envs"])
        else:
            log.warning("environment states were not saved (vector_mode=async): the resumed "
                        "run starts new episodes and will not match an uninterrupted one")
            self.collector.obs, _ = self.envs.reset(seed=self.cfg.seed + self.iteration)
            self.collector.running_returns[:] = 0
            self.collector.running_lengths[:] = 0
        set_global_rng_state(state["rng"])

    def checkpoint(self) -> None:
        save_checkpoint(self.run_dir, self.state_dict())
        self.checkpointed_at = self.iteration

    # ---------------------------------------------------------------------------- training

    @property
    def total_iterations(self) -> int:
        """Iterations in the whole run: total_steps in whole batches, rounded up."""
        return math.ceil(self.cfg.total_steps / self.cfg.steps_per_iteration)

    def run(self, logger) -> float:
        cfg = self.cfg
        iterations = self.total_iterations
        start = time.perf_counter() - self.wall_s
        while self.iteration < iterations:
            self.iteration += 1
            row = self.train_iteration(is_last=self.iteration == iterations)
            self.wall_s = time.perf_counter() - start
            logger.write({"iteration": self.iteration,
                          "env_steps": self.iteration * cfg.steps_per_iteration,
                          "wall_s": self.wall_s, **row})
            if self.iteration % cfg.checkpoint_every == 0 or self.iteration == iterations:
                self.checkpoint()
            if self.rejected_in_a_row >= cfg.max_rejected_updates:
                saved = (f"the checkpoint of iteration {self.checkpointed_at} in {self.run_dir} "
                         "is intact" if self.checkpointed_at else "no checkpoint was written yet")
                raise TrainingError(
                    f"{self.rejected_in_a_row} policy updates in a row were rejected for "
                    f"non-finite values (iterations {self.iteration - self.rejected_in_a_row + 1}"
                    f"–{self.iteration}); {saved}")
        return self.final_return

    def train_iteration(self, is_last: bool) -> dict[str, Optional[float]]:
        """Collect, estimate, update the policy, start the value fit, evaluate; the row's data."""
        cfg = self.cfg
        iteration_start = tick = time.perf_counter()
        stats_before = self.obs_normalizer.frozen_copy()
        rollout = self.collector.collect(before_values=self.critic.wait)
        rollout_s = time.perf_counter() - tick

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
            eval_returns = evaluate(self.eval_envs, self.policy, self.obs_normalizer,
                                    cfg.seed + EVAL_SEED_OFFSET + self.iteration)
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

    def save_agent(self) -> None:
        """``agent.pt``: what evaluation needs, the policy with its observation statistics."""
        self.critic.wait()
        torch.save({"policy": self.policy.state_dict(), "value": self.value.state_dict(),
                    "obs_normalizer": {k: torch.as_tensor(v) for k, v in
                                       self.obs_normalizer.state_dict().items()}},
                   self.run_dir / "agent.pt")


def _config_changes(saved: dict, current: DictConfig) -> list[str]:
    """The keys whose values differ between a checkpoint's config and ``current``."""
    before = flatten(saved)
    after = flatten(OmegaConf.to_container(current, resolve=True, enum_to_str=True))
    resumable = RESUMABLE_CHANGES
    if after.get("solver.max_kl_final") is not None:  # δ's schedule is spread over total_steps
        resumable = tuple(key for key in RESUMABLE_CHANGES if key != "total_steps")
    return sorted(k for k in set(before) | set(after)
                  if before.get(k) != after.get(k) and not k.startswith(resumable))


def find_finished_twin(search_root: Path, cfg: DictConfig,
                       run_dir: Path) -> Optional[tuple[Path, dict[str, Any]]]:
    """A completed run below ``search_root`` (other than ``run_dir``) whose config computes what
    ``cfg`` asks for, with its final checkpoint; ``None`` if there is none."""
    run_dir = run_dir.resolve()
    for status_file in sorted(search_root.glob("**/status.json")):
        source = status_file.parent
        if source.resolve() == run_dir:
            continue
        if read_status(source).get("status") != "completed":
            continue
        try:
            checkpoint = read_checkpoint(source / CHECKPOINT)
        except CheckpointError:
            continue  # damaged: not one to copy
        saved = checkpoint["config"]
        if saved.get("total_steps") == cfg.total_steps and not _config_changes(saved, cfg):
            return source, checkpoint
    return None


def reuse_finished_twin(cfg: DictConfig, run_dir: Path
                        ) -> Optional[tuple[Path, dict[str, Any]]]:
    """Copy a finished twin's final checkpoint and ``progress.csv`` into ``run_dir`` (which
    holds no checkpoint); the run then resumes at its end. Returns the twin's folder and the
    checkpoint as written here."""
    twin = find_finished_twin(Path(cfg.reuse_from), cfg, run_dir)
    if twin is None:
        return None
    source, checkpoint = twin
    checkpoint["config"] = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    checkpoint["wandb_id"] = None  # a W&B run of its own, to which the history is replayed
    shutil.copyfile(source / "progress.csv", run_dir / "progress.csv")
    save_checkpoint(run_dir, checkpoint)
    log.info("reusing %s: it was trained with this config (reuse_from=%s)", source,
             cfg.reuse_from)
    return source, checkpoint


def fresh_run_dir(run_dir: Path) -> Path:
    """A new directory beside ``run_dir`` for ``resume=false``, with its Hydra config copied."""
    number = 1
    while (candidate := run_dir.with_name(f"{run_dir.name}_restart{number}")).exists():
        number += 1
    candidate.mkdir(parents=True)
    if (run_dir / ".hydra").is_dir():
        shutil.copytree(run_dir / ".hydra", candidate / ".hydra")
    return candidate


def train(cfg: DictConfig, run_dir: str | Path, run_name: Optional[str] = None) -> float:
    """Train one agent as ``cfg`` says, logging every iteration into ``run_dir``.

    Raises :class:`trpo.config.ConfigError` before any environment is built if a value is out
    of range, or if a checkpoint in ``run_dir`` was made with a different config. Returns the
    last evaluation's mean return.
    """
    validate_config(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    has_run = (run_dir / "progress.csv").exists() or any(run_dir.glob("checkpoint*.ckpt"))
    if has_run and not cfg.resume:
        run_dir = fresh_run_dir(run_dir)
        log.info("resume=false: starting afresh in %s", run_dir)
    checkpoint = load_latest_checkpoint(run_dir) if cfg.resume else None
    reused_from = None
    if cfg.resume and checkpoint is None and cfg.reuse_from is not None:
        reused = reuse_finished_twin(cfg, run_dir)
        if reused is not None:
            reused_from, checkpoint = reused
    # Where a reused run came from stays in its status when it is started again.
    provenance = ({"reused_from": str(reused_from)} if reused_from is not None
                  else {k: v for k, v in read_status(run_dir).items() if k == "reused_from"})
    if checkpoint is not None:
        changed = _config_changes(checkpoint["config"], cfg)
        if changed:
            raise ConfigError("resume", f"the config differs from the checkpoint's in "
                              f"{', '.join(changed)}; resume=false starts afresh in a new "
                              "directory", True)
        trained_by = code_differences(checkpoint.get("code"))
        if trained_by:
            log.warning("the checkpoint %s was written by other code (%s): going on assumes the "
                        "change does not alter what the run computes",
                        reused_from or run_dir, "; ".join(trained_by))
    run_name = run_name or f"{cfg.env.id}-s{cfg.seed}"

    trainer = Trainer(cfg, run_dir)
    try:
        if checkpoint is not None:
            trainer.load_state_dict(checkpoint)
            truncate_progress(run_dir / "progress.csv", trainer.iteration)
            log.info("resuming %s from iteration %d (%d environment steps)", run_dir,
                     trainer.iteration, trainer.iteration * cfg.steps_per_iteration)
        elif (run_dir / "progress.csv").exists():
            (run_dir / "progress.csv").unlink()  # rows of a run that never checkpointed
        logger = make_logger(cfg.logger, run_dir, run_name,
                             OmegaConf.to_container(cfg, resolve=True), cfg.total_steps,
                             resume_id=trainer.wandb_id)
        trainer.wandb_id = logger.wandb_id
        if reused_from is not None:
            logger.replay(read_progress(run_dir / "progress.csv"))
        write_status(run_dir, "running", total_steps=cfg.total_steps, **provenance)
        try:
            final_return = trainer.run(logger)
        except BaseException as error:
            # Record the failure where that still works (a full disk may refuse even this),
            # then re-raise the original error.
            reason = f"{type(error).__name__}: {error}"
            for record in (lambda: logger.close(failed=True),
                           lambda: write_status(run_dir, "failed", iteration=trainer.iteration,
                                                error=reason)):
                try:
                    record()
                except Exception as secondary:
                    log.error("while recording the failure: %s", secondary)
            raise
        logger.close()
        trainer.save_agent()
        write_status(run_dir, "completed", final_eval_return=final_return, **provenance)
        return final_return
    finally:
        trainer.close()
