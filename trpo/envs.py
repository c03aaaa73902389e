"""Vectorised environments for training and evaluation: Gymnasium's, or EnvPool's."""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
from functools import partial
from typing import Any, Optional, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import batch_space

from trpo.config import ConfigError, EnvBackend, EnvConfig, VectorMode

log = logging.getLogger("trpo")

# The tasks env.backend=envpool takes: those tests/test_envpool.py shows to be Gymnasium's tasks.
ENVPOOL_TASKS = ("Hopper-v5", "Walker2d-v5", "HalfCheetah-v5", "Swimmer-v5")


def make_env(cfg: EnvConfig, **make_kwargs) -> gym.Env:
    """One copy of ``cfg.id`` with its keyword arguments and time limit, as training makes it;
    ``make_kwargs`` go to ``gymnasium.make`` too (``render_mode="rgb_array"``)."""
    return gym.make(cfg.id, **_make_kwargs(cfg), **make_kwargs)


def _make_kwargs(cfg: EnvConfig) -> dict:
    kwargs = dict(cfg.kwargs)
    if cfg.max_episode_steps is not None:
        kwargs["max_episode_steps"] = cfg.max_episode_steps
    return kwargs


def env_makers(cfg: EnvConfig, count: int) -> list:
    """``count`` functions that each make one copy of the task (:func:`make_env`)."""
    return [partial(make_env, cfg) for _ in range(count)]


def make_vector_env(cfg: EnvConfig, num_envs: int, mode: VectorMode = VectorMode.sync,
                    workers: Optional[int] = None,
                    backend: Optional[EnvBackend] = None) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``cfg.id``, stepped as one batch by ``backend`` (``cfg.backend``
    unless given).

    Autoreset is SAME_STEP: a sub-environment whose episode ends at a step is reset within that
    step, its true final observation is returned in ``info["final_obs"]``, and every step is a
    real transition. With Gymnasium, ``sync`` steps the copies in this process, or, with
    ``workers`` > 1, split over that many worker processes (:class:`WorkerVectorEnv`: the same
    transitions, on more cores); ``async`` steps each copy in a process of its own. Worker
    processes are started by ``forkserver``, which also works inside joblib's loky workers.
    With EnvPool (:class:`EnvPoolVectorEnv`), ``workers`` is its thread count. ``None``: the
    cores this run may use with EnvPool (:func:`cores_for_this_run`), 1 with Gymnasium.
    """
    backend = EnvBackend(getattr(cfg.backend, "value", cfg.backend)) if backend is None \
        else backend
    if backend is EnvBackend.envpool:
        return EnvPoolVectorEnv(cfg, num_envs, min(workers or cores_for_this_run(), num_envs))
    workers = workers or 1
    if mode is VectorMode["async"]:
        return AsyncVectorEnv(env_makers(cfg, num_envs), autoreset_mode=AutoresetMode.SAME_STEP,
                              context="forkserver")
    if workers > 1:
        return WorkerVectorEnv(cfg, num_envs, workers)
    return SameStepSyncVectorEnv(env_makers(cfg, num_envs))


class SameStepSyncVectorEnv(SyncVectorEnv):
    """Gymnasium's SyncVectorEnv with SAME_STEP autoreset, whose step leaves out the merging of
    the copies' info dicts: the same transitions, about a tenth faster on 8 Hopper-v5 copies
    (README, Speed: the rollout's exact trims). ``info`` holds ``final_obs`` alone."""

    def __init__(self, env_fns: Sequence):
        super().__init__(env_fns, autoreset_mode=AutoresetMode.SAME_STEP)

    def reset(self, *, seed=None, options=None):
        if options and "reset_mask" in options:  # would read observations step() keeps apart
            raise ValueError("SameStepSyncVectorEnv resets all its environments at once")
        return super().reset(seed=seed, options=options)

    def step(self, actions):
        n = self.num_envs
        space = self.single_observation_space
        observations = np.empty((n, *space.shape), dtype=space.dtype)
        rewards, terminated, truncated = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
        final_obs = np.empty(n, dtype=object)
        for i, env in enumerate(self.envs):
            obs, rewards[i], terminated[i], truncated[i], _ = env.step(actions[i])
            if terminated[i] or truncated[i]:
                final_obs[i] = obs
                obs, _ = env.reset()
            observations[i] = obs
        self._autoreset_envs = terminated | truncated
        return observations, rewards, terminated, truncated, {"final_obs": final_obs}


def _worker(pipe, cfg: EnvConfig, count: int) -> None:
    """A worker process's loop: a SyncVectorEnv of ``count`` copies, driven through ``pipe``."""
    from trpo.checkpoint import env_state, set_env_state

    try:
        envs = SameStepSyncVectorEnv(env_makers(cfg, count))
    except Exception as error:  # reported at the first command
        envs, failed = None, error
    while True:
        try:
            command, payload = pipe.recv()
        except (EOFError, OSError):  # the main process is gone (killed): so is this one
            return
        if envs is None:
            pipe.send(None if command == "close" else failed)
            if command == "close":
                return
            continue
        try:
            if command == "step":
                obs, rewards, terminated, truncated, info = envs.step(payload)
                ended = np.flatnonzero(terminated | truncated)
                final = {int(i): info["final_obs"][i] for i in ended}
                pipe.send((obs, rewards, terminated, truncated, final))
            elif command == "reset":
                pipe.send(envs.reset(seed=payload)[0])
            elif command == "get_state":
                pipe.send([env_state(env) for env in envs.envs])
            elif command == "set_state":
                for env, state in zip(envs.envs, payload):
                    set_env_state(env, state)
                pipe.send(None)
            elif command == "close":
                envs.close()
                pipe.send(None)
                return
        except Exception as error:  # handed to the main process, which raises it
            pipe.send(error)


class WorkerVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` copies of a task split over ``workers`` processes, each stepping its share
    in turn as a SyncVectorEnv: the same transitions as one SyncVectorEnv of all of them, in the
    same order, with the simulators running on several cores. The environments' state can be
    read and restored (:meth:`env_states`), so a run resumes exactly.

    Implements what training uses of the VectorEnv interface: ``reset(seed=[...])``,
    ``step(actions)`` with SAME_STEP autoreset and ``info["final_obs"]``, and ``close``.
    """

    def __init__(self, cfg: EnvConfig, num_envs: int, workers: int):
        probe = make_env(cfg)
        self.single_observation_space = probe.observation_space
        self.single_action_space = probe.action_space
        self.metadata = {**probe.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        probe.close()
        self.num_envs = num_envs
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.shares = [len(part) for part in np.array_split(np.arange(num_envs),
                                                          min(workers, num_envs))]
        self.bounds = np.cumsum([0, *self.shares])
        context = multiprocessing.get_context("forkserver")
        self.pipes, self.processes = [], []
        for share in self.shares:
            here, there = context.Pipe()
            process = context.Process(target=_worker, args=(there, cfg, share), daemon=True)
            process.start()
            there.close()
            self.pipes.append(here)
            self.processes.append(process)
        self.closed = False

    def _ask(self, command: str, payloads: Sequence[Any]) -> list:
        for pipe, payload in zip(self.pipes, payloads):
            pipe.send((command, payload))
        answers = [pipe.recv() for pipe in self.pipes]
        for answer in answers:
            if isinstance(answer, Exception):
                raise answer
        return answers

    def _split(self, values: Sequence[Any]) -> list:
        return [values[a:b] for a, b in zip(self.bounds[:-1], self.bounds[1:])]

    def reset(self, *, seed: Optional[Sequence[int]] = None, options=None):
        seeds = list(seed) if seed is not None else [None] * self.num_envs
        return np.concatenate(self._ask("reset", self._split(seeds))), {}

    def step(self, actions):
        answers = self._ask("step", self._split(np.asarray(actions)))
        obs, rewards, terminated, truncated = (np.concatenate([a[k] for a in answers])
                                               for k in range(4))
        final_obs = np.empty(self.num_envs, dtype=object)
        for first, answer in zip(self.bounds, answers):
            for i, final in answer[4].items():
                final_obs[first + i] = final
        return obs, rewards, terminated, truncated, {"final_obs": final_obs}

    def env_states(self) -> list[dict[str, Any]]:
        """Each sub-environment's state (:func:`trpo.checkpoint.env_state`), in order."""
        return [state for states in self._ask("get_state", [None] * len(self.pipes))
                for state in states]

    def set_env_states(self, states: list[dict[str, Any]]) -> None:
        self._ask("set_state", self._split(states))

    def close(self, **kwargs) -> None:
        if self.closed:
            return
        self.closed = True
        for pipe in self.pipes:
            try:
                pipe.send(("close", None))
                pipe.recv()
            except (OSError, EOFError):
                pass
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()


def cores_for_this_run() -> int:
    """The cores one run may use: this machine's (its CPU quota and this process's affinity
    respected, as joblib counts them) or the CPUs SLURM gave the job; in a Hydra sweep on the
    joblib launcher, those shared evenly among the jobs it runs at once (``n_jobs``), and on a
    submitit launcher its ``cpus_per_task``."""
    from joblib import cpu_count

    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    cores = int(slurm) if slurm.isdigit() else cpu_count()
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra = HydraConfig.get()
    except (ImportError, ValueError):  # not started by Hydra
        return cores
    if hydra.mode != RunMode.MULTIRUN:
        return cores
    launcher = hydra.launcher
    if "n_jobs" in launcher:
        n_jobs = int(launcher.n_jobs)
        at_once = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)  # joblib's -1: every core
        return max(1, cores // at_once)
    if launcher.get("cpus_per_task"):
        return max(1, min(cores, int(launcher.cpus_per_task)))
    return cores


def _envpool_kwargs(cfg: EnvConfig) -> dict:
    """EnvPool's settings for ``cfg``: its kwargs, and a time limit one step past Gymnasium's
    (:class:`EnvPoolVectorEnv` ends episodes at Gymnasium's limit itself)."""
    return {**cfg.kwargs, "max_episode_steps": episode_limit(cfg) + 1}


def episode_limit(cfg: EnvConfig) -> int:
    """The time limit of ``cfg``'s episodes, as :func:`make_env` sets it: ``max_episode_steps``,
    else ``kwargs.max_episode_steps``, else the id's registered one."""
    limit = _make_kwargs(cfg).get("max_episode_steps")
    return int(gym.spec(cfg.id).max_episode_steps if limit is None else limit)


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
        envpool.make_spec(cfg.id, **_envpool_kwargs(cfg))
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
    Their state cannot be read: :func:`trpo.checkpoint.vector_env_state` is ``None``.
    """

    def __init__(self, cfg: EnvConfig, num_envs: int, threads: int):
        import envpool

        kwargs = _envpool_kwargs(cfg)
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


def action_clipper(space: gym.Space):
    """A function from policy samples to valid environment actions.

    Gaussian samples are clipped to a Box's bounds (the policy's log-probability stays that of
    the unclipped sample, as in SB3 and OpenAI baselines); discrete actions pass through.
    """
    if isinstance(space, gym.spaces.Box):
        low, high = space.low, space.high
        return lambda actions: np.clip(actions, low, high)
    return lambda actions: actions
