"""The EnvPool backend: EnvPool's C++ MuJoCo tasks on threads of its own, with Gymnasium's
semantics; its environments' state cannot be saved, so a resumed run starts new episodes."""

from __future__ import annotations

import logging
import os
import re
from functools import partial
from typing import Optional, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from omegaconf import DictConfig

from trpo.config import ConfigError, EnvConfig, VectorMode, require
from trpo.envs.backend import Backend
from trpo.envs.gymnasium import episode_limit, make_env

log = logging.getLogger("trpo")

# The tasks env.backend=envpool takes: those tests/test_envpool.py shows to be Gymnasium's tasks.
ENVPOOL_TASKS = ("Hopper-v5", "Walker2d-v5", "HalfCheetah-v5", "Swimmer-v5")


def make(cfg: EnvConfig, num_envs: int, mode: VectorMode, workers: int) -> gym.vector.VectorEnv:
    return EnvPoolVectorEnv(cfg, num_envs, min(workers, num_envs))


def check(run_cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` unless EnvPool imports and runs the task with its kwargs, in
    sync mode (EnvPool has threads of its own)."""
    mode = getattr(run_cfg.vector_mode, "value", run_cfg.vector_mode)
    require(mode == "sync", "vector_mode",
            "must be sync with env.backend=envpool (EnvPool has threads of its own)", mode)
    try:
        check_envpool_task(run_cfg.env)
    except ConfigError as error:
        raise error.under("env") from None


def envpool_kwargs(cfg: EnvConfig) -> dict:
    """EnvPool's settings for ``cfg``: its kwargs, and a time limit one step past Gymnasium's
    (:class:`EnvPoolVectorEnv` ends episodes at Gymnasium's limit itself)."""
    return {**cfg.kwargs, "max_episode_steps": episode_limit(cfg) + 1}


def check_envpool_task(cfg: EnvConfig) -> None:
    """Raise :class:`ConfigError` unless EnvPool imports and runs ``cfg``'s task with its kwargs."""
    if cfg.id not in ENVPOOL_TASKS:
        raise ConfigError("backend", f"envpool takes only {', '.join(ENVPOOL_TASKS)} (the tasks "
                          f"tested against Gymnasium's); {cfg.id} needs backend=gymnasium",
                          "envpool")
    try:
        import envpool
    except ImportError as error:
        raise ConfigError("backend", f"envpool cannot be imported here ({error}); "
                          "pip install envpool, or use backend=gymnasium", "envpool")
    try:
        envpool.make_spec(cfg.id, **envpool_kwargs(cfg))
    except TypeError as error:
        unexpected = re.search(r"unexpected keyword argument '\w+'", str(error))
        if unexpected is None:  # a setting it takes, with a value of the wrong type
            defaults = envpool.make_spec(cfg.id).config._asdict()
            wanted = [f"{key} as {type(defaults[key]).__name__} (default {defaults[key]!r})"
                      for key, value in cfg.kwargs.items() if key in defaults
                      and type(value) is not type(defaults[key])]
            raise ConfigError("kwargs", f"EnvPool's {cfg.id} takes "
                              f"{', '.join(wanted) or 'other types'}", dict(cfg.kwargs))
        internal = {"num_envs", "batch_size", "num_threads", "max_num_players", "seed",
                    "thread_affinity_offset", "base_path", "env_seed", "gym_reset_return_info",
                    "max_episode_steps", "reward_threshold", "gymnasium_v5_render_camera"}
        settings = [name for name in envpool.make_spec(cfg.id).config._fields
                    if name not in internal]
        raise ConfigError("kwargs", f"EnvPool's {cfg.id} does not take them "
                          f"({unexpected.group(0)}); its settings: {', '.join(settings)}",
                          dict(cfg.kwargs))


def _first_core(threads: int) -> int:
    """EnvPool's ``thread_affinity_offset``: pin thread i to core ``first + i`` when the threads
    are as many as this process's cores (numbered ``first, first + 1, ...``), else -1, unpinned.
    Unpinned, two threads on two cores were measured to share one core about half the time
    (RESULTS.md, After the speed work); one thread is left unpinned, so parallel jobs spread
    out."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if threads > 1 and cores and cores == list(range(cores[0], cores[0] + threads)):
        return cores[0]
    return -1


class EnvPoolVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` copies of a MuJoCo task in EnvPool, stepped by ``threads`` C++ threads, with
    Gymnasium's semantics: SAME_STEP autoreset with ``info["final_obs"]``, and Gymnasium's
    ``TimeLimit``, so that an episode ending at its limit in a terminal state is both
    terminated and truncated (EnvPool's own limit would call it truncated only, and training
    would bootstrap from a terminal state).

    EnvPool seeds its environments when it makes them, so a seeded :meth:`reset` makes them
    again. Results do not depend on ``threads`` (each environment has its own generator).
    Their state cannot be read: :func:`trpo.envs.state.vector_env_state` is ``None``.
    """

    def __init__(self, cfg: EnvConfig, num_envs: int, threads: int):
        import envpool

        kwargs = envpool_kwargs(cfg)
        self.make_pool = partial(envpool.make_gymnasium, cfg.id, num_envs=num_envs,
                                 num_threads=threads, thread_affinity_offset=_first_core(threads),
                                 **kwargs)
        self.pool = None  # made by the first reset, with its seeds
        self.num_envs, self.limit = num_envs, episode_limit(cfg)
        reference = make_env(cfg)  # Gymnasium's spaces (EnvPool's are float64 throughout)
        self.single_observation_space = reference.observation_space
        self.single_action_space = reference.action_space
        reference.close()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}
        self.elapsed = np.zeros(num_envs, np.int64)
        log.info("EnvPool steps %d %s environments on %d thread%s", num_envs, cfg.id, threads,
                 "" if threads == 1 else "s")

    def reset(self, *, seed: Optional[Sequence[int]] = None, options=None):
        if options:
            raise ValueError(f"EnvPoolVectorEnv.reset takes no options ({options})")
        if seed is not None or self.pool is None:
            self.close()  # first: a pool's threads stop only when it is freed, and slow others
            self.pool = self.make_pool(**({} if seed is None else
                                          {"env_seed": [int(s) & 0x7FFFFFFF for s in seed]}))
        obs, _ = self.pool.reset()
        self.elapsed[:] = 0
        return obs, {}

    def step(self, actions):
        obs, rewards, terminated, _, _ = self.pool.step(np.asarray(actions, np.float64))
        obs = obs.copy()  # EnvPool's buffer, which the resets below would overwrite
        self.elapsed += 1
        truncated = self.elapsed >= self.limit
        ended = np.flatnonzero(terminated | truncated)
        final_obs = np.empty(self.num_envs, dtype=object)
        if len(ended):
            for i in ended:
                final_obs[i] = obs[i].copy()
            obs[ended] = self.pool.reset(ended)[0]
            self.elapsed[ended] = 0
        return (obs, rewards.astype(np.float64), terminated.astype(bool), truncated,
                {"final_obs": final_obs})

    def close(self, **kwargs) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None




BACKEND = Backend(name="envpool", make=make, check=check, threaded=True, snapshots=False,
                  summary="EnvPool's C++ MuJoCo tasks on threads of its own (a resumed run "
                          "starts new episodes)", tasks=ENVPOOL_TASKS)
