"""What an environment backend is: one row of :data:`trpo.envs.BACKENDS`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import gymnasium as gym
from omegaconf import DictConfig

from trpo.config import EnvConfig, VectorMode


@dataclass(frozen=True)
class Backend:
    """How one backend steps a task's copies as one batch.

    ``make(cfg, num_envs, mode, workers)`` builds the vector env: SAME_STEP autoreset, the true
    final observation in ``info["final_obs"]``, Gymnasium's spaces, and the terms of the reward
    that the task reports (Gymnasium's ``reward_*`` info keys: ``reward_ctrl``, ...) as arrays
    of the copies in ``info["reward_terms"]`` (async mode leaves them out).

    ``check(run_cfg)`` raises :class:`trpo.config.ConfigError` (one line, naming the key) if the
    backend cannot run the config's task as asked; it runs before anything is built or written.
    ``threaded``: its ``workers`` default to the cores this run may use (else to 1, this
    process).
    ``snapshots``: its environments' state can be saved, so a run resumes exactly.
    """

    name: str
    make: Callable[[EnvConfig, int, VectorMode, int], gym.vector.VectorEnv]
    check: Callable[[DictConfig], None]
    threaded: bool
    snapshots: bool
    summary: str  # one line for --help and errors
    tasks: Optional[tuple[str, ...]] = None  # the ids it takes; None: every Gymnasium id
