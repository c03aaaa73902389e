"""Checks of a run's environments that need Gymnasium: the id is registered and imports, the
task builds with its keyword arguments and has spaces the policies take, and the backend runs
it. :func:`check_envs` runs after the schema's checks (:func:`trpo.config.validate_config`)
and before anything is built or written; each failure is one :class:`ConfigError` line.
"""

from __future__ import annotations

import importlib
import re

from omegaconf import DictConfig

from trpo.config import ConfigError, EnvConfig, require
from trpo.envs import BACKENDS
from trpo.envs.gymnasium import make_env


def check_envs(cfg: DictConfig) -> None:
    """Check ``cfg.env`` and its backend (``cfg`` is the whole run config)."""
    backend = str(cfg.env.backend)
    require(backend in BACKENDS, "env.backend", f"must be one of {', '.join(BACKENDS)}",
            backend)
    try:
        check_env_id(cfg.env.id)
        check_env_spaces(cfg.env)
    except ConfigError as error:
        raise error.under("env") from None
    BACKENDS[backend].check(cfg)


def check_env_id(env_id: str) -> None:
    """Check that ``env_id`` is registered with Gymnasium and its module imports (a Box2D
    task without Box2D fails here), without building the environment."""
    import gymnasium
    from gymnasium.envs.registration import load_env_creator

    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError("id", f"module '{module}' cannot be imported ({error})", env_id)
    if name not in gymnasium.registry:
        hint = ", e.g. Hopper-v5, Walker2d-v5, CartPole-v1 (or module:Id)"
        raise ConfigError("id", f"must be a registered Gymnasium id{hint}", env_id)
    entry_point = gymnasium.registry[name].entry_point
    if isinstance(entry_point, str):
        try:
            load_env_creator(entry_point)
        except (ImportError, gymnasium.error.DependencyNotInstalled) as error:
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigError("id", f"its module cannot be imported here ({first})", env_id)


def check_env_spaces(cfg: "EnvConfig") -> None:
    """Build one copy of the task to check its keyword arguments and its spaces (a Box
    observation; a Box or Discrete action), and close it."""
    import gymnasium

    try:
        env = make_env(cfg)
    except TypeError as error:  # an argument the task does not take
        unexpected = re.search(r"unexpected keyword argument '\w+'", str(error))
        why = unexpected.group(0) if unexpected else str(error).splitlines()[0]
        raise ConfigError("kwargs", f"{cfg.id} does not accept them ({why})", dict(cfg.kwargs))
    except gymnasium.error.Error as error:
        raise ConfigError("id", f"cannot be made here ({str(error).splitlines()[0]})", cfg.id)
    except Exception as error:  # a setting the task takes, with a value it cannot run with
        first = str(error).splitlines()[0] if str(error) else ""
        key, value = ("kwargs", dict(cfg.kwargs)) if cfg.kwargs else ("id", cfg.id)
        raise ConfigError(key, f"{cfg.id} cannot be made with them ({type(error).__name__}: "
                          f"{first})", value)
    try:
        obs, act = env.observation_space, env.action_space
        if cfg.kwargs:
            check_kwargs_run(env, cfg)
    finally:
        env.close()
    require(isinstance(obs, gymnasium.spaces.Box), "id",
            f"must have a Box observation space (a vector of numbers), not {obs}", cfg.id)
    require(isinstance(act, (gymnasium.spaces.Box, gymnasium.spaces.Discrete)), "id",
            f"must have a Box or Discrete action space, not {act}", cfg.id)


def check_kwargs_run(env: "gymnasium.Env", cfg: "EnvConfig") -> None:
    """Reset ``env`` and take one step, so a keyword argument the task accepts but cannot run
    with (``ctrl_cost_weight=abc`` fails only at the first step; ``reset_noise_scale=nan``
    gives NaN observations) is refused now rather than part-way into the run."""
    import numpy as np

    try:
        first, _ = env.reset(seed=0)
        env.action_space.seed(0)
        after, reward, *_ = env.step(env.action_space.sample())
    except Exception as error:
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise ConfigError("kwargs", f"{cfg.id} cannot run with them ({type(error).__name__}: "
                          f"{first_line})", dict(cfg.kwargs))
    finite = np.isfinite(np.asarray(first, dtype=float)).all() and np.isfinite(
        np.asarray(after, dtype=float)).all() and np.isfinite(float(reward))
    require(finite, "kwargs", f"{cfg.id} gives non-finite observations or rewards with them",
            dict(cfg.kwargs))
