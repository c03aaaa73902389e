"""The Gymnasium backend: Gymnasium's own environments, stepped in this process (or split over
worker processes), whose state can be saved, so a run resumes exactly."""

from __future__ import annotations

import multiprocessing
from functools import partial
from typing import Any, Optional, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import batch_space
from omegaconf import DictConfig

from trpo.config import EnvConfig, VectorMode
from trpo.envs.backend import Backend
from trpo.envs.state import env_state, set_env_state


def make_env(cfg: EnvConfig, **make_kwargs) -> gym.Env:
    """One copy of ``cfg.id`` with its keyword arguments and time limit, as training makes it;
    ``make_kwargs`` go to ``gymnasium.make`` too (``render_mode="rgb_array"``)."""
    return gym.make(cfg.id, **gym_kwargs(cfg), **make_kwargs)


def gym_kwargs(cfg: EnvConfig) -> dict:
    kwargs = dict(cfg.kwargs)
    if cfg.max_episode_steps is not None:
        kwargs["max_episode_steps"] = cfg.max_episode_steps
    return kwargs


def env_makers(cfg: EnvConfig, count: int) -> list:
    """``count`` functions that each make one copy of the task (:func:`make_env`)."""
    return [partial(make_env, cfg) for _ in range(count)]


def episode_limit(cfg: EnvConfig) -> int:
    """The time limit of ``cfg``'s episodes, as :func:`make_env` sets it: ``max_episode_steps``,
    else ``kwargs.max_episode_steps``, else the id's registered one."""
    limit = gym_kwargs(cfg).get("max_episode_steps")
    return int(gym.spec(cfg.id).max_episode_steps if limit is None else limit)


def make(cfg: EnvConfig, num_envs: int, mode: VectorMode, workers: int) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``cfg.id``: ``sync`` steps them in this process, or, with
    ``workers`` > 1, split over that many worker processes (:class:`WorkerVectorEnv`: the same
    transitions, on more cores); ``async`` steps each copy in a process of its own. Worker
    processes are started by ``forkserver``, which also works inside joblib's loky workers."""
    if mode is VectorMode["async"]:
        return AsyncVectorEnv(env_makers(cfg, num_envs), autoreset_mode=AutoresetMode.SAME_STEP,
                              context="forkserver")
    if workers > 1:
        return WorkerVectorEnv(cfg, num_envs, workers)
    return SameStepSyncVectorEnv(env_makers(cfg, num_envs))


def check(cfg: DictConfig) -> None:
    """Gymnasium runs every task that :func:`trpo.envs.checks.check_envs` accepts."""


BACKEND = Backend(name="gymnasium", make=make, check=check, threaded=False, snapshots=True,
                  summary="Gymnasium's environments in this process (resumes exactly)")


class SameStepSyncVectorEnv(SyncVectorEnv):
    """Gymnasium's SyncVectorEnv with SAME_STEP autoreset, whose step leaves out the merging of
    the copies' info dicts: the same transitions, about a tenth faster on 8 Hopper-v5 copies
    (README, Speed: the rollout's exact trims). ``info`` holds ``final_obs`` and the reward's
    terms (``reward_terms``: the task's ``reward_*`` info keys, an array of the copies each)."""

    def __init__(self, env_fns: Sequence):
        super().__init__(env_fns, autoreset_mode=AutoresetMode.SAME_STEP)
        self.term_names: Optional[list[str]] = None  # the task's reward_* info keys, at step 1

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
        terms: dict[str, np.ndarray] = {}
        for i, env in enumerate(self.envs):
            obs, rewards[i], terminated[i], truncated[i], info = env.step(actions[i])
            if i == 0:
                if self.term_names is None:
                    self.term_names = [key for key in info if key.startswith("reward_")]
                terms = {key: np.zeros(n) for key in self.term_names}
            for key, values in terms.items():
                values[i] = info.get(key, 0.0)
            if terminated[i] or truncated[i]:
                final_obs[i] = obs
                obs, _ = env.reset()
            observations[i] = obs
        self._autoreset_envs = terminated | truncated
        return observations, rewards, terminated, truncated, {"final_obs": final_obs,
                                                              "reward_terms": terms}


def _worker(pipe, cfg: EnvConfig, count: int) -> None:
    """A worker process's loop: a SyncVectorEnv of ``count`` copies, driven through ``pipe``."""
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
                pipe.send((obs, rewards, terminated, truncated, final, info["reward_terms"]))
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
    ``step(actions)`` with SAME_STEP autoreset, ``info["final_obs"]`` and
    ``info["reward_terms"]``, and ``close``.
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
        names = dict.fromkeys(key for answer in answers for key in answer[5])
        terms = {key: np.concatenate([a[5].get(key, np.zeros(share))
                                      for a, share in zip(answers, self.shares)])
                 for key in names}
        return obs, rewards, terminated, truncated, {"final_obs": final_obs,
                                                     "reward_terms": terms}

    def env_states(self) -> list[dict[str, Any]]:
        """Each sub-environment's state (:func:`trpo.envs.state.env_state`), in order."""
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
