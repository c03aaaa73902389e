"""sb3-contrib's TRPO as a reference baseline, trained and scored by this framework's protocol.

``python run.py solver=sb3_trpo env=hopper seed=0`` (needs the ``bench`` extra) trains
sb3-contrib's TRPO with rl-baselines3-zoo's MuJoCo settings (``conf/solver/sb3_trpo.yaml``) in a
run folder like any other: the lock, ``.hydra/``, ``status.json``, checkpoints and
``progress.csv`` with the interface's columns, through :mod:`trpo.train`. So the analysis draws it
as a line (``sb3_trpo``) in the same figures and tables, with the same statistics.

It is evaluated as this framework's runs are: every ``eval_every`` iterations and after the
last, ``eval_episodes`` deterministic episodes (the Gaussian mean) on environments of their own,
seeded as a TRPO run of the same seed seeds them, with the observation statistics frozen.

sb3-contrib's own loop does the work: :class:`SB3Learner` calls its ``collect_rollouts`` and
``train`` once per iteration, as ``learn`` does, on the run's ``num_envs`` environments (the zoo
steps 2 × 1,024: ``num_envs=2``, as the mujoco_suite study sets). Checkpoints hold the networks,
the critic's optimiser, the normalisation statistics and the counters, not the environments: a
resumed baseline starts new episodes (with a warning) and does not match an uninterrupted one.
Checkpoints and ``agent.pt`` also hold the policy in this framework's format
(:meth:`SB3Learner.agent`), so ``trpo.load_agent``, ``python -m trpo.evaluate`` and the
analysis's videos take a baseline run as any other.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from trpo.io.checkpoint import nonfinite_entries
from trpo.config import Activation, Init, VectorMode
from trpo.critic import explained_variance
from trpo.envs import env_makers, make_vector_env
from trpo.rollout import evaluate
from trpo.seeding import global_rng_state, set_global_rng_state, stream_seed, stream_seeds
from trpo.learner import resident_memory_mb
from trpo.networks import ACTIVATIONS

log = logging.getLogger("trpo")

def per_sample(values: torch.Tensor) -> torch.Tensor:
    """A distribution's per-dimension values (a diagonal Gaussian's, ``[B, dims]``) summed to one
    per sample; a Categorical's (``[B]``) as they are."""
    return values.sum(-1) if values.dim() > 1 else values


def make_model(cfg: DictConfig, seed: int):
    """sb3-contrib's TRPO for a ``solver=sb3_trpo`` config, on ``cfg.num_envs`` copies of the
    task in sb3's ``VecNormalize`` (with the run's normalisation settings): the one place the
    baseline's settings become sb3-contrib's arguments (the baseline and the benchmark build it
    here)."""
    from sb3_contrib import TRPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor, VecNormalize

    solver, network = cfg.solver, cfg.network
    envs = VecNormalize(VecMonitor(DummyVecEnv(env_makers(cfg.env, cfg.num_envs))),
                        norm_obs=cfg.normalize_obs, norm_reward=cfg.normalize_reward,
                        clip_obs=cfg.obs_clip, gamma=cfg.advantage.gamma)
    return TRPO(
        "MlpPolicy", envs, n_steps=cfg.steps_per_iteration // cfg.num_envs,
        batch_size=cfg.critic.minibatch_size, n_critic_updates=cfg.critic.epochs,
        learning_rate=cfg.critic.lr, gamma=cfg.advantage.gamma,
        gae_lambda=cfg.advantage.lam, normalize_advantage=cfg.advantage.normalize,
        cg_max_steps=solver.cg_max_steps, cg_damping=solver.cg_damping,
        target_kl=solver.target_kl,
        line_search_shrinking_factor=solver.line_search_shrinking_factor,
        line_search_max_iter=solver.line_search_max_iter,
        sub_sampling_factor=solver.sub_sampling_factor,
        # Every episode of an iteration is kept for its row (the default keeps 100).
        stats_window_size=cfg.steps_per_iteration,
        policy_kwargs={"net_arch": {"pi": list(network.policy_hidden),
                                    "vf": list(network.value_hidden)},
                       "activation_fn": ACTIVATIONS[Activation(network.activation)],
                       "log_std_init": network.log_std_init,
                       "ortho_init": Init(network.init) is Init.orthogonal},
        seed=seed, device="cpu", verbose=0)


class _ModeOf(nn.Module):
    """An sb3 policy as :func:`trpo.rollout.evaluate` calls a policy: ``mode(policy(obs))``."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor):
        return self.policy.get_distribution(obs)

    @staticmethod
    def mode(distribution) -> torch.Tensor:
        return distribution.mode()


class SB3Learner:
    """A run of sb3-contrib's TRPO as a :class:`trpo.learner.Learner`: :meth:`iterate`,
    ``state_dict`` / ``load_state_dict``, ``nonfinite_state``, ``agent`` and ``close``."""

    def __init__(self, cfg: DictConfig):
        from stable_baselines3.common.logger import Logger

        self.cfg = cfg
        torch.set_num_threads(cfg.torch_threads)
        self.model = make_model(cfg, stream_seed(cfg.seed, "sb3"))
        self.envs = self.model.get_env()
        self.eval_envs = make_vector_env(cfg.env, cfg.eval_episodes, VectorMode.sync)
        self.model.set_logger(Logger(folder=None, output_formats=[]))  # read, never written
        self.callback = None  # sb3's, made when training starts

    def close(self) -> None:
        try:
            self.envs.close()
        finally:
            self.eval_envs.close()

    # -------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        normalizer, agent = self.envs, self.agent()
        return {
            "sb3_policy": self.model.policy.state_dict(),
            "optimizer": self.model.policy.optimizer.state_dict(),
            "normalizer": {"obs_mean": normalizer.obs_rms.mean, "obs_var": normalizer.obs_rms.var,
                           "obs_count": normalizer.obs_rms.count,
                           "return_var": normalizer.ret_rms.var,
                           "return_mean": normalizer.ret_rms.mean,
                           "return_count": normalizer.ret_rms.count},
            "num_timesteps": self.model.num_timesteps, "n_updates": self.model._n_updates,
            "rng": global_rng_state(),
            # What trpo.load_agent reads from a checkpoint (this framework's policy format).
            **{key: agent[key] for key in ("policy", "obs_normalizer")},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on from ``state``; training then starts new episodes (the environments were not
        saved)."""
        self.model.policy.load_state_dict(state["sb3_policy"])
        self.model.policy.optimizer.load_state_dict(state["optimizer"])
        saved = state["normalizer"]
        self.envs.obs_rms.mean, self.envs.obs_rms.var = saved["obs_mean"], saved["obs_var"]
        self.envs.obs_rms.count = saved["obs_count"]
        self.envs.ret_rms.mean, self.envs.ret_rms.var = saved["return_mean"], saved["return_var"]
        self.envs.ret_rms.count = saved["return_count"]
        self.model.num_timesteps = int(state["num_timesteps"])
        self.model._n_updates = int(state["n_updates"])
        set_global_rng_state(state["rng"])

    def nonfinite_state(self, state: dict[str, Any]) -> list[str]:
        return [name for part in ("sb3_policy", "normalizer")
                for name in nonfinite_entries(state[part], part + ".")]

    # ---------------------------------------------------------------------------- training

    def _start(self, iteration: int) -> None:
        """sb3's set-up for ``learn``: it resets the environments, with the seeds sb3 was given
        on a fresh start and, resumed, with seeds of the iteration (new episodes)."""
        fresh = self.model.num_timesteps == 0
        if not fresh:
            log.warning("the sb3-contrib baseline does not save its environments: the resumed "
                        "run starts new episodes and will not match an uninterrupted one")
            self.envs.seed(stream_seed(self.cfg.seed, "sb3", iteration))
        remaining = self.cfg.total_steps - self.model.num_timesteps
        _, self.callback = self.model._setup_learn(remaining, None, reset_num_timesteps=fresh)
        self.callback.on_training_start(locals(), globals())

    def iterate(self, iteration: int, total_iterations: int) -> dict[str, Optional[float]]:
        """sb3's rollout and update (``collect_rollouts``, ``train``), then this framework's
        evaluation; the row's data, in the interface's columns."""
        cfg, model = self.cfg, self.model
        if self.callback is None:
            self._start(iteration)
        iteration_start = tick = time.perf_counter()
        model.collect_rollouts(model.env, self.callback, model.rollout_buffer,
                               n_rollout_steps=model.n_steps)
        rollout_s = time.perf_counter() - tick
        buffer = model.rollout_buffer
        episodes = list(model.ep_info_buffer)
        model.ep_info_buffer.clear()
        with torch.no_grad():
            observations = torch.as_tensor(buffer.observations.reshape(
                buffer.buffer_size * buffer.n_envs, -1))
            old = model.policy.get_distribution(observations).distribution
            entropy = float(per_sample(old.entropy()).mean())

        tick = time.perf_counter()
        model._update_current_progress_remaining(model.num_timesteps, cfg.total_steps)
        model.train()
        policy_s = time.perf_counter() - tick
        metrics = dict(model.logger.name_to_value)
        model.logger.dump()  # clears what train() recorded
        # KL(π_old ‖ π_new) summed over the action's dimensions, as this framework logs it; sb3
        # logs, and bounds by target_kl, KL(π_new ‖ π_old) averaged over them.
        with torch.no_grad():
            new = model.policy.get_distribution(observations).distribution
            kl = float(per_sample(torch.distributions.kl_divergence(old, new)).mean())

        eval_return, eval_s = None, 0.0
        if iteration % cfg.eval_every == 0 or iteration == total_iterations:
            tick = time.perf_counter()
            seeds = stream_seeds(cfg.seed, "evaluation", cfg.eval_episodes, iteration)
            normalise = (lambda obs: self.envs.normalize_obs(obs).astype(np.float32))
            eval_return = float(evaluate(self.eval_envs, _ModeOf(model.policy), normalise,
                                         seeds, cfg.env.id).mean())
            eval_s = time.perf_counter() - tick

        iteration_s = time.perf_counter() - iteration_start
        values, returns = buffer.values.ravel(), buffer.returns.ravel()
        return {
            "return_mean": float(np.mean([e["r"] for e in episodes])) if episodes else None,
            "eval_return_mean": eval_return,
            "kl": kl,
            "episodes": len(episodes),
            "episode_length_mean": (float(np.mean([e["l"] for e in episodes])) if episodes
                                    else None),
            "update_accepted": float(metrics["train/is_line_search_success"]),
            "entropy": entropy,
            # As this framework's rows: the fit before this rollout against its targets.
            "value_loss": float(np.mean((values - returns) ** 2)),
            "explained_variance": explained_variance(values, returns),
            "steps_per_s": cfg.steps_per_iteration / iteration_s,
            "rss_mb": resident_memory_mb(),
            "time_rollout_s": rollout_s,
            "time_policy_s": policy_s,  # the policy step and the critic's fit, as sb3 does both
            "time_eval_s": eval_s,
        }

    def agent(self) -> dict[str, Any]:
        """``agent.pt``: the policy and value networks in this framework's format
        (:class:`trpo.networks.GaussianPolicy`, :class:`trpo.networks.ValueNetwork`: the same
        layers as sb3's MlpPolicy, renamed), the observation statistics and the config."""
        sb3 = self.model.policy.state_dict()

        def layers(prefix: str, hidden: str, out: str) -> dict[str, torch.Tensor]:
            count = len([k for k in sb3 if k.startswith(hidden) and k.endswith(".weight")])
            names = {f"{prefix}.{2 * i}": f"{hidden}.{2 * i}" for i in range(count)}
            names[f"{prefix}.{2 * count}"] = out
            return {f"{ours}.{p}": sb3[f"{theirs}.{p}"].clone() for ours, theirs in names.items()
                    for p in ("weight", "bias")}

        rms = self.envs.obs_rms
        if "log_std" in sb3:  # a Gaussian policy; else a Categorical one over action_net's logits
            policy = {**layers("mean", "mlp_extractor.policy_net", "action_net"),
                      "log_std": sb3["log_std"].clone()}
        else:
            policy = layers("logits", "mlp_extractor.policy_net", "action_net")
        return {"policy": policy,
                "value": layers("net", "mlp_extractor.value_net", "value_net"),
                "obs_normalizer": {"mean": torch.as_tensor(rms.mean),
                                   "var": torch.as_tensor(rms.var),
                                   "count": torch.as_tensor(rms.count)}}
