"""Environment state as plain data, so that a resumed run steps exactly as an uninterrupted one.

For each sub-environment: the plain-data attributes of every wrapper and of the environment
itself (CartPole's ``state``, TimeLimit's step count, ...), its random generator and, for MuJoCo,
the simulator's full integration state. A vector env whose environments can be read is a
SyncVectorEnv or one with ``env_states()``/``set_env_states()``; a backend whose environments
cannot be read (subprocesses, ``vector_mode=async``) has no state to save.
"""

from __future__ import annotations

from typing import Any, Optional

import gymnasium as gym
import numpy as np

_PLAIN = (bool, int, float, str, type(None), np.ndarray, np.generic)

# MuJoCo's positions, frames and forces derived from the state, which a task may read before it
# steps (Ant-v5 reads its torso's position, Humanoid-v5 its centre of mass). After
# mj_step they describe the state before the last substep, so mj_forward on a restored state
# would not give them back: they are saved beside it.
MUJOCO_DERIVED = ("xpos", "xquat", "xmat", "xipos", "ximat", "xanchor", "xaxis", "geom_xpos",
                  "geom_xmat", "site_xpos", "site_xmat", "subtree_com", "cinert", "cdof", "cvel",
                  "cacc", "cfrc_int", "cfrc_ext")


def _plain_attributes(obj: Any) -> dict[str, Any]:
    """The attributes of ``obj`` that are plain data (numbers, strings, arrays, tuples of them)."""
    def plain(v):
        if isinstance(v, np.ndarray):
            return v.dtype != object
        if isinstance(v, (list, tuple)):
            return all(plain(x) for x in v)
        return isinstance(v, _PLAIN)
    return {k: v for k, v in vars(obj).items() if plain(v)}


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
        state["mujoco_derived"] = {name: getattr(unwrapped.data, name).copy()
                                   for name in MUJOCO_DERIVED}
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
        for name, value in state.get("mujoco_derived", {}).items():
            getattr(unwrapped.data, name)[...] = value


def vector_env_state(envs: gym.vector.VectorEnv) -> Optional[dict[str, Any]]:
    """The state of every sub-environment of a vector env whose environments can be read (a
    SyncVectorEnv, or one with ``env_states()``, :class:`trpo.envs.WorkerVectorEnv`), in
    order, so that either kind restores the other's; ``None`` for others (AsyncVectorEnv,
    :class:`trpo.envs.mujoco_batch.MuJoCoBatchVectorEnv`)."""
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
