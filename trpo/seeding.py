"""Random streams of a run, each derived from the run's seed with ``numpy.random.SeedSequence``.

Every role (the training environments, the evaluation episodes, the policy's sampling, ...)
draws from its own stream, keyed by the seed, the role and, where a role is used again and
again, an index (the iteration of an evaluation). SeedSequence hashes the key, so no two runs,
roles or indices share a stream: seed 1's first training environment is not seed 0's second,
as it would be with ``seed + i``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

# The roles' keys; a new role takes a new number, so existing streams stay as they are.
ROLES = {
    "global": 0,         # Python's, NumPy's and torch's global generators (policy sampling)
    "train_envs": 1,     # resets of the training environments (one seed per environment)
    "action_space": 2,   # the training environments' action-space generator
    "evaluation": 3,     # resets of the evaluation episodes, one key per iteration
    "critic": 4,         # the value fit's minibatch order
    "solver": 5,         # solver randomness (minibatches of a subsampled Fisher product)
    "watch": 6,          # resets of the episodes ``python -m trpo.evaluate`` plays
    "agent": 7,          # a loaded agent's stochastic actions (:class:`trpo.agent.Agent`)
    "sb3": 8,            # the sb3-contrib baseline's seed (sb3 seeds its generators and envs)
}


def stream_seeds(seed: int, role: str, count: int, *index: int) -> list[int]:
    """``count`` 32-bit seeds for ``role`` (and ``index``) of the run seeded ``seed``."""
    sequence = np.random.SeedSequence(seed, spawn_key=(ROLES[role], *index))
    return [int(s) for s in sequence.generate_state(count, np.uint32)]


def stream_seed(seed: int, role: str, *index: int) -> int:
    """One 32-bit seed for ``role`` (and ``index``) of the run seeded ``seed``."""
    return stream_seeds(seed, role, 1, *index)[0]


def global_rng_state() -> dict[str, Any]:
    """Python's, NumPy's and torch's global generators."""
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def set_global_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators from the run's seed (the
    environments are seeded on reset, by their own streams)."""
    global_seed = stream_seed(seed, "global")
    random.seed(global_seed)
    np.random.seed(global_seed)
    torch.manual_seed(global_seed)
