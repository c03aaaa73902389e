"""The MuJoCo backend: Gymnasium's MuJoCo tasks with their physics stepped as one batch.

MuJoCo's :class:`mujoco.batch.Batch` steps every copy's simulation in one C call, on threads,
from state rows that hold the constraint solver's warm start too, so the physics is Gymnasium's
bit for bit. Observations, rewards and terminations are then computed for all copies at once in
NumPy, term by term as Gymnasium's v5 tasks compute them (:data:`TASKS`), from the task's own
parameters (a Gymnasium env of the task is built with the run's kwargs and read). Resets run
that Gymnasium env itself (its reset noise, its random stream) and copy its state into the
batch. A run's rows equal the Gymnasium backend's: ``tests/test_mujoco_backend.py``.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space
from mujoco.batch import Batch
from omegaconf import DictConfig

from trpo.config import EnvConfig, VectorMode, require
from trpo.envs import gymnasium as gymnasium_backend
from trpo.envs.backend import Backend
from trpo.envs.gymnasium import episode_limit, make_env
from trpo.envs.state import env_state, set_env_state

log = logging.getLogger("trpo")

INTEGRATION = mujoco.mjtState.mjSTATE_INTEGRATION


class Task:
    """How a v5 locomotion task scores a step, for every copy at once.

    ``env`` is an unwrapped Gymnasium env of the task, whose parameters (``_ctrl_cost_weight``,
    ``_healthy_z_range``, ...) are the run's. Arrays are ``(copies, ...)``. Each expression keeps
    Gymnasium's order of operations and dtypes (the control cost is summed in the action's
    float32), so the numbers are the same to the last bit.
    """

    # Whether the task reads what a step derives from the state (Ant-v5: its main body's
    # position as the step leaves it, one substep behind, and the contact forces), not only the
    # root's coordinates in qpos.
    reads_derived = False
    position_size = 1  # x alone, or x and y
    excluded_positions = 1  # qpos entries left out of the observation by default
    clip_velocity = False  # Hopper and Walker2d clip the observed velocities to ±10

    def __init__(self, env):
        self.env = env
        self.dt = env.dt

    def observe(self, qpos: np.ndarray, qvel: np.ndarray, contact: Optional[np.ndarray]
                ) -> np.ndarray:
        position = qpos[:, self.excluded_positions:] if (
            self.env._exclude_current_positions_from_observation) else qpos
        velocity = np.clip(qvel, -10, 10) if self.clip_velocity else qvel
        return np.concatenate((position, velocity), axis=1)

    def forward_reward(self, x_velocity: np.ndarray) -> np.ndarray:
        return self.env._forward_reward_weight * x_velocity

    def control_cost(self, actions: np.ndarray) -> np.ndarray:
        return self.env._ctrl_cost_weight * np.sum(np.square(actions), axis=1)

    def healthy(self, qpos: np.ndarray, qvel: np.ndarray) -> np.ndarray:
        return np.ones(len(qpos), bool)

    def reward(self, x_velocity, actions, healthy, contact
               ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The step's reward, and its terms under the names of Gymnasium's ``info`` (costs
        negative, as it reports them)."""
        forward, control = self.forward_reward(x_velocity), self.control_cost(actions)
        return forward - control, {"reward_forward": forward, "reward_ctrl": -control}

    def terminated(self, healthy: np.ndarray) -> np.ndarray:
        return np.zeros(len(healthy), bool)


class HealthyTask(Task):
    """A task that pays for staying healthy and may end when it is not."""

    def reward(self, x_velocity, actions, healthy, contact):
        forward, survive = self.forward_reward(x_velocity), healthy * self.env._healthy_reward
        control = self.control_cost(actions)
        return (forward + survive) - control, {"reward_forward": forward, "reward_ctrl": -control,
                                               "reward_survive": survive}

    def terminated(self, healthy: np.ndarray) -> np.ndarray:
        return ~healthy & bool(self.env._terminate_when_unhealthy)


class Hopper(HealthyTask):
    clip_velocity = True

    def healthy(self, qpos, qvel):
        env = self.env
        state = np.concatenate((qpos, qvel), axis=1)[:, 2:]
        (low, high), (z_low, z_high), (a_low, a_high) = (
            env._healthy_state_range, env._healthy_z_range, env._healthy_angle_range)
        z, angle = qpos[:, 1], qpos[:, 2]
        return (np.all((low < state) & (state < high), axis=1) & (z_low < z) & (z < z_high)
                & (a_low < angle) & (angle < a_high))


class Walker2d(HealthyTask):
    clip_velocity = True

    def healthy(self, qpos, qvel):
        (z_low, z_high), (a_low, a_high) = self.env._healthy_z_range, self.env._healthy_angle_range
        z, angle = qpos[:, 1], qpos[:, 2]
        return (z_low < z) & (z < z_high) & (a_low < angle) & (angle < a_high)


class HalfCheetah(Task):
    pass


class Swimmer(Task):
    position_size = 2
    excluded_positions = 2


class Ant(HealthyTask):
    reads_derived = True
    position_size = 2
    excluded_positions = 2

    def contact_forces(self, cfrc_ext: np.ndarray) -> np.ndarray:
        low, high = self.env._contact_force_range
        return np.clip(cfrc_ext, low, high)

    def observe(self, qpos, qvel, contact):
        observation = super().observe(qpos, qvel, None)
        if not self.env._include_cfrc_ext_in_observation:
            return observation
        return np.concatenate((observation, contact[:, 1:].reshape(len(contact), -1)), axis=1)

    def healthy(self, qpos, qvel):
        state = np.concatenate((qpos, qvel), axis=1)
        z_low, z_high = self.env._healthy_z_range
        return np.isfinite(state).all(axis=1) & (z_low <= state[:, 2]) & (state[:, 2] <= z_high)

    def reward(self, x_velocity, actions, healthy, contact):
        forward, survive = self.forward_reward(x_velocity), healthy * self.env._healthy_reward
        control = self.control_cost(actions)
        contact_cost = self.env._contact_cost_weight * np.sum(
            np.square(contact).reshape(len(contact), -1), axis=1)
        return (forward + survive) - (control + contact_cost), {
            "reward_forward": forward, "reward_ctrl": -control, "reward_contact": -contact_cost,
            "reward_survive": survive}


# The tasks env.backend=mujoco steps, each shown equal to Gymnasium's by
# tests/test_mujoco_backend.py; other ids run on Gymnasium.
TASKS: dict[str, type[Task]] = {"Hopper-v5": Hopper, "Walker2d-v5": Walker2d,
                                 "HalfCheetah-v5": HalfCheetah, "Swimmer-v5": Swimmer,
                                 "Ant-v5": Ant}


def make(cfg: EnvConfig, num_envs: int, mode: VectorMode, workers: int) -> gym.vector.VectorEnv:
    if cfg.id not in TASKS:
        log.info("env.backend=mujoco steps %s only; %s runs on Gymnasium's backend",
                 ", ".join(TASKS), cfg.id)
        return gymnasium_backend.make(cfg, num_envs, mode, 1)
    return MuJoCoBatchVectorEnv(cfg, num_envs, workers)


def check(run_cfg: DictConfig) -> None:
    """The batch steps in this process, on threads of its own: ``vector_mode`` must be sync."""
    mode = getattr(run_cfg.vector_mode, "value", run_cfg.vector_mode)
    require(mode == "sync", "vector_mode",
            "must be sync with env.backend=mujoco (the batch has threads of its own); "
            "env.backend=gymnasium steps async", mode)


BACKEND = Backend(name="mujoco", make=make, check=check, threaded=True, snapshots=True,
                  summary="Gymnasium's MuJoCo tasks, physics stepped as one batch on threads, "
                          "the same numbers (resumes exactly)",
                  tasks=tuple(TASKS))


class MuJoCoBatchVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` copies of a :data:`TASKS` task, their physics stepped by one
    :class:`mujoco.batch.Batch` on ``threads`` threads: Gymnasium's transitions, SAME_STEP
    autoreset with the true final observation in ``info["final_obs"]`` and the reward's terms
    in ``info["reward_terms"]``. Its state can be read and restored (:meth:`env_states`), so a
    run resumes exactly."""

    def __init__(self, cfg: EnvConfig, num_envs: int, threads: int):
        # One Gymnasium env per copy: it resets the copy (its noise, its random stream).
        self.envs = [make_env(cfg) for _ in range(num_envs)]
        first = self.envs[0]
        self.sim = first.unwrapped
        self.task = TASKS[cfg.id](self.sim)
        self.num_envs = num_envs
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = {**first.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        self.time_limit = episode_limit(cfg)
        model = self.sim.model
        self.threads = max(1, min(threads, num_envs))
        self.batch = None  # made at the first reset: its threads start then (see _start)
        # Where a task that reads derived quantities finds them after a step, a copy each.
        self.datas = ([mujoco.MjData(model) for _ in range(num_envs)]
                      if self.task.reads_derived else [])
        self.elapsed = np.zeros(num_envs, np.int64)
        # The rewarded position at the end of the last step (or reset), per copy.
        self.position = np.zeros((num_envs, self.task.position_size))
        self.closed = False

    def _start(self) -> None:
        """Make the batch, whose threads start with it: at the first reset rather than when the
        env is built, so that a process forked in between (the value-fit worker) copies no
        thread. One MjData per copy (persistent): a checkpoint and Ant-v5 read the derived
        quantities a step leaves, which only such a batch keeps."""
        if self.batch is None:
            self.batch = Batch(self.sim.model, nsim=self.num_envs, nthread=self.threads,
                               persistent=True)
            self.qpos, self.qvel, self.ctrl = (self.batch.bind(name)
                                               for name in ("qpos", "qvel", "ctrl"))
            log.info("the MuJoCo batch steps %d %s environments on %d thread%s", self.num_envs,
                     self.sim.spec.id, self.threads, "s" if self.threads > 1 else "")

    # --------------------------------------------------------------------------- resets

    def _reset_copy(self, i: int, seed: Optional[int] = None) -> np.ndarray:
        """Reset copy ``i`` through its Gymnasium env and load that state into the batch."""
        obs, _ = self.envs[i].reset(seed=seed)
        self._load_copy(i, elapsed=0)
        return obs

    def _load_copy(self, i: int, elapsed: int) -> None:
        """Copy ``i``'s Gymnasium env, as it stands, into the batch."""
        data = self.envs[i].unwrapped.data
        row = np.empty(mujoco.mj_stateSize(self.sim.model, INTEGRATION))
        mujoco.mj_getState(self.sim.model, data, row, INTEGRATION)
        self.batch.state[i] = row
        self.elapsed[i] = elapsed
        self.position[i] = self._position_of(data)

    def _position_of(self, data: mujoco.MjData) -> np.ndarray:
        if self.task.reads_derived:
            return data.xpos[self.sim._main_body, :self.task.position_size]
        return data.qpos[:self.task.position_size]

    def reset(self, *, seed: Optional[Sequence[int]] = None, options=None):
        self._start()
        seeds = list(seed) if seed is not None else [None] * self.num_envs
        return np.stack([self._reset_copy(i, s) for i, s in enumerate(seeds)]), {}

    # ---------------------------------------------------------------------------- steps

    def step(self, actions):
        actions = np.asarray(actions)
        before = self.position.copy()
        self.ctrl[:] = actions
        self.batch.step(nstep=self.sim.frame_skip)
        qpos, qvel = self.qpos, self.qvel
        contact = None
        if self.task.reads_derived:  # Ant-v5: what Gymnasium's step leaves in its MjData
            cfrc_ext = np.empty((self.num_envs, *self.sim.data.cfrc_ext.shape))
            for i, data in enumerate(self.datas):
                self.batch.get_data(i, data)
                mujoco.mj_rnePostConstraint(self.sim.model, data)
                self.position[i] = self._position_of(data)
                cfrc_ext[i] = data.cfrc_ext
            contact = self.task.contact_forces(cfrc_ext)
        else:
            self.position[:] = qpos[:, :self.task.position_size]
        x_velocity = ((self.position - before) / self.task.dt)[:, 0]
        observations = self.task.observe(qpos, qvel, contact)
        healthy = self.task.healthy(qpos, qvel)
        rewards, terms = self.task.reward(x_velocity, actions, healthy, contact)
        terminated = self.task.terminated(healthy)
        self.elapsed += 1
        truncated = self.elapsed >= self.time_limit
        final_obs = np.empty(self.num_envs, dtype=object)
        for i in np.flatnonzero(terminated | truncated):
            final_obs[i] = observations[i].copy()
            observations[i] = self._reset_copy(i)
        return observations, rewards, terminated, truncated, {"final_obs": final_obs,
                                                              "reward_terms": terms}

    # ---------------------------------------------------------------------------- state

    def env_states(self) -> list[dict[str, Any]]:
        """Each copy's state in the Gymnasium backend's format (:func:`trpo.envs.state.env_state`
        of its Gymnasium env, brought up to the batch's step), so that either backend resumes the
        other's checkpoints."""
        states = []
        for i, env in enumerate(self.envs):
            data = env.unwrapped.data
            self.batch.get_data(i, data)  # the whole MjData, as Gymnasium's step leaves it
            mujoco.mj_rnePostConstraint(self.sim.model, data)
            time_limit(env)._elapsed_steps = int(self.elapsed[i])
            states.append(env_state(env))
        return states

    def set_env_states(self, states: list[dict[str, Any]]) -> None:
        if len(states) != self.num_envs:
            raise ValueError(f"{len(states)} saved environments for {self.num_envs}")
        self._start()
        for i, (env, state) in enumerate(zip(self.envs, states)):
            set_env_state(env, state)
            self._load_copy(i, int(time_limit(env)._elapsed_steps))

    def close(self, **kwargs) -> None:
        if self.closed:
            return
        self.closed = True
        for env in self.envs:
            env.close()


def time_limit(env: gym.Env) -> gym.wrappers.TimeLimit:
    """The TimeLimit wrapper of ``env`` (``gymnasium.make`` adds one to every MuJoCo task)."""
    layer = env
    while not isinstance(layer, gym.wrappers.TimeLimit):
        layer = layer.env
    return layer
