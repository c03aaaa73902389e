"""The checkpoint file format: checksummed, atomic, and loaded without running code.

A checkpoint file is one line with the SHA-256 of the rest, then a ``torch.save`` payload that
holds only tensors and plain Python values, read back with ``torch.load(weights_only=True)``.
It is written to a temporary file, fsynced and renamed over the newest checkpoint, whose
previous version is kept until then: a crash at any moment leaves at least one complete
checkpoint. A truncated or garbled file fails its checksum and is reported by path. Where the
files live, and which is tried first, is :class:`trpo.run_folder.RunFolder`'s business.

Environments are saved through :func:`vector_env_state`: for each sub-environment the plain-data
attributes of every wrapper and of the environment itself (CartPole's ``state``, TimeLimit's
step count, ...), its random generator and, for MuJoCo, the simulator's full integration state,
so a resumed run steps exactly as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch

log = logging.getLogger("trpo")

class CheckpointError(RuntimeError):
    """No usable checkpoint could be read."""


# ------------------------------------------------------------- plain data for weights_only


def to_plain(value: Any) -> Any:
    """NumPy arrays and scalars as tensors and Python numbers, recursively (``weights_only``
    loading accepts tensors, containers and primitives, not NumPy objects)."""
    if isinstance(value, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value)).clone()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(v) for v in value)
    return value


def from_plain(value: Any) -> Any:
    """The inverse of :func:`to_plain`."""
    if isinstance(value, dict):
        if set(value) == {"__ndarray__"}:
            return value["__ndarray__"].numpy()
        return {k: from_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(from_plain(v) for v in value)
    return value


_PLAIN = (bool, int, float, str, type(None), np.ndarray, np.generic)


def _plain_attributes(obj: Any) -> dict[str, Any]:
    """The attributes of ``obj`` that are plain data (numbers, strings, arrays, tuples of them)."""
    def plain(v):
        if isinstance(v, np.ndarray):
            return v.dtype != object
        if isinstance(v, (list, tuple)):
            return all(plain(x) for x in v)
        return isinstance(v, _PLAIN)
    return {k: v for k, v in vars(obj).items() if plain(v)}


# ---------------------------------------------------------------------- environment state


def env_state(env: gym.Env) -> dict[str, Any]:
    """Everything that decides what ``env`` does next, as plain data."""
    layers = []
    layer = env
    while True:
        layers.append(_plain_attributes(layer))
        if not hasattr(layer, "env"):
            break
        layer = layer.env
    unwrapped = env.unwrapped
    state: dict[str, Any] = {"layers": layers,
                             "np_random": unwrapped.np_random.bit_generator.state}
    if hasattr(unwrapped, "model") and hasattr(unwrapped, "data"):  # MuJoCo
        import mujoco

        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        physics = np.empty(mujoco.mj_stateSize(unwrapped.model, spec))
        mujoco.mj_getState(unwrapped.model, unwrapped.data, physics, spec)
        state["mujoco"] = physics
    return state


def set_env_state(env: gym.Env, state: dict[str, Any]) -> None:
    """Put ``env`` back in the state :func:`env_state` recorded."""
    layer = env
    for attributes in state["layers"]:
        for name, value in attributes.items():
            setattr(layer, name, value)
        layer = getattr(layer, "env", None)
    unwrapped = env.unwrapped
    unwrapped.np_random.bit_generator.state = state["np_random"]
    if "mujoco" in state:
        import mujoco

        mujoco.mj_setState(unwrapped.model, unwrapped.data, state["mujoco"],
                           mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(unwrapped.model, unwrapped.data)


def vector_env_state(envs: gym.vector.VectorEnv) -> Optional[dict[str, Any]]:
    """The state of every sub-environment of a vector env whose environments can be read (a
    SyncVectorEnv, or one with ``env_states()``, :class:`trpo.envs.WorkerVectorEnv`), in
    order, so that either kind restores the other's; ``None`` for others (AsyncVectorEnv,
    :class:`trpo.envs.EnvPoolVectorEnv`)."""
    if isinstance(envs, gym.vector.SyncVectorEnv):
        states = [env_state(env) for env in envs.envs]
    elif hasattr(envs, "env_states"):
        states = envs.env_states()
    else:
        return None
    return {"envs": states, "action_space": envs.action_space.np_random.bit_generator.state}


def set_vector_env_state(envs: gym.vector.VectorEnv, state: dict[str, Any]) -> None:
    if isinstance(envs, gym.vector.SyncVectorEnv):
        for env, env_saved in zip(envs.envs, state["envs"], strict=True):
            set_env_state(env, env_saved)
    else:
        if len(state["envs"]) != envs.num_envs:
            raise ValueError(f"{len(state['envs'])} saved environments for {envs.num_envs}")
        envs.set_env_states(state["envs"])
    envs.action_space.np_random.bit_generator.state = state["action_space"]


def global_rng_state() -> dict[str, Any]:
    """Python's, NumPy's and torch's global generators."""
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state()}


def set_global_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


# --------------------------------------------------------------------------------- files


def write_checkpoint_file(path: Path, previous: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically as ``path``; the file it replaces becomes ``previous``."""
    from trpo.run_folder import atomic_write

    buffer = io.BytesIO()
    torch.save(to_plain(state), buffer)
    payload = buffer.getvalue()
    atomic_write(path, hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload, previous)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """One checkpoint file, checked against its checksum; raises ``CheckpointError``."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read ({error})") from error
    digest, _, payload = data.partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(f"{path}: truncated or corrupted (checksum mismatch)")
    try:
        return from_plain(torch.load(io.BytesIO(payload), weights_only=True))
    except Exception as error:  # a file that passed its checksum but is not ours
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if "Unsupported global" in line),
                      lines[0] if lines else type(error).__name__)
        raise CheckpointError(f"{path}: not a checkpoint of this project ({reason})") from error


def nonfinite_entries(tree: Any, prefix: str = "") -> list[str]:
    """The names (``value.0.weight``) of the floating-point tensors and arrays in ``tree`` that
    hold a NaN or an infinity."""
    if isinstance(tree, dict):
        return [name for key, value in tree.items()
                for name in nonfinite_entries(value, f"{prefix}{key}.")]
    if isinstance(tree, (list, tuple)):
        return [name for i, value in enumerate(tree)
                for name in nonfinite_entries(value, f"{prefix}{i}.")]
    if isinstance(tree, torch.Tensor) and tree.is_floating_point():
        return [] if bool(torch.isfinite(tree).all()) else [prefix.rstrip(".")]
    if isinstance(tree, np.ndarray) and np.issubdtype(tree.dtype, np.floating):
        return [] if bool(np.isfinite(tree).all()) else [prefix.rstrip(".")]
    return []
