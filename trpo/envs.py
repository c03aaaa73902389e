"""Vectorised Gymnasium environments for training and evaluation."""

from __future__ import annotations

import multiprocessing
from functools import partial
from typing import Any, Optional, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from gymnasium.vector.utils import batch_space

from trpo.config import EnvConfig, VectorMode


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
                    workers: int = 1) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``cfg.id``, stepped as one batch.

    Autoreset is SAME_STEP: a sub-environment whose episode ends at a step is reset within that
    step, its true final observation is returned in ``info["final_obs"]``, and every step is a
    real transition. ``sync`` steps the copies in this process, or, with ``workers`` > 1, split
    over that many worker processes (:class:`WorkerVectorEnv`: the same transitions, on more
    cores); ``async`` steps each copy in a process of its own. Worker processes are started by
    ``forkserver``, which also works inside joblib's loky workers.
    """
    if mode is VectorMode["async"]:
        return AsyncVectorEnv(env_makers(cfg, num_envs), autoreset_mode=AutoresetMode.SAME_STEP,
                              context="forkserver")
    if workers > 1:
        return WorkerVectorEnv(cfg, num_envs, workers)
    return SyncVectorEnv(env_makers(cfg, num_envs), autoreset_mode=AutoresetMode.SAME_STEP)


def _worker(pipe, cfg: EnvConfig, count: int) -> None:
    """A worker process's loop: a SyncVectorEnv of ``count`` copies, driven through ``pipe``."""
    from trpo.checkpoint import env_state, set_env_state

    try:
        envs = SyncVectorEnv(env_makers(cfg, count), autoreset_mode=AutoresetMode.SAME_STEP)
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


def action_clipper(space: gym.Space):
    """A function from policy samples to valid environment actions.

    Gaussian samples are clipped to a Box's bounds (the policy's log-probability stays that of
    the unclipped sample, as in SB3 and OpenAI baselines); discrete actions pass through.
    """
    if isinstance(space, gym.spaces.Box):
        low, high = space.low, space.high
        return lambda actions: np.clip(actions, low, high)
    return lambda actions: actions
