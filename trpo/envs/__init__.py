"""Vectorised environments for training and evaluation, one backend per module.

:data:`BACKENDS` is the table of backends (``env.backend``); a new backend is a module with a
:class:`trpo.envs.backend.Backend` and a row here. Every backend steps its copies of a task as
one batch with SAME_STEP autoreset: a sub-environment whose episode ends at a step is reset
within that step, its true final observation is returned in ``info["final_obs"]``, and every
step is a real transition.
"""

from __future__ import annotations

import os
from typing import Optional

import gymnasium as gym
import numpy as np

from trpo.config import EnvConfig, VectorMode
from trpo.envs import gymnasium as gymnasium_backend
from trpo.envs import mujoco_batch as mujoco_backend
from trpo.envs.backend import Backend
from trpo.envs.gymnasium import env_makers, episode_limit, make_env  # noqa: F401  (the API)

BACKENDS: dict[str, Backend] = {"gymnasium": gymnasium_backend.BACKEND,
                                 "mujoco": mujoco_backend.BACKEND}


def backend_of(cfg: EnvConfig) -> Backend:
    """The row of :data:`BACKENDS` that ``cfg.backend`` names (checked by
    :func:`trpo.envs.checks.check_envs` before a run starts)."""
    return BACKENDS[str(cfg.backend)]


def make_vector_env(cfg: EnvConfig, num_envs: int, mode: VectorMode = VectorMode.sync,
                    workers: Optional[int] = None,
                    backend: Optional[str] = None) -> gym.vector.VectorEnv:
    """``num_envs`` copies of ``cfg.id``, stepped as one batch by ``backend`` (``cfg.backend``
    unless given) on ``workers`` threads or processes (``None``: the cores this run may use
    for a threaded backend, :func:`cores_for_this_run`; 1, this process, otherwise)."""
    chosen = BACKENDS[backend] if backend is not None else backend_of(cfg)
    if workers is None:
        workers = cores_for_this_run() if chosen.threaded else 1
    return chosen.make(cfg, num_envs, VectorMode(getattr(mode, "value", mode)), workers)


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


def action_clipper(space: gym.Space):
    """A function from policy samples to valid environment actions.

    Gaussian samples are clipped to a Box's bounds (the policy's log-probability stays that of
    the unclipped sample, as in SB3 and OpenAI baselines); discrete actions pass through.
    """
    if isinstance(space, gym.spaces.Box):
        low, high = space.low, space.high
        return lambda actions: np.clip(actions, low, high)
    return lambda actions: actions
