"""A trained agent, loaded from its run folder: ``trpo.load_agent(run_dir).act(obs)``.

A finished run has ``agent.pt``; an unfinished one (running, interrupted, failed) has
checkpoints. :func:`load_agent` takes whichever of them is the latest iteration (``agent.pt``
on a tie), so a run that finished and was then extended with more ``total_steps`` gives its
newest policy. Both files are read through :class:`trpo.io.run_folder.RunFolder`.

The agent acts as the trained policy did in training's evaluations: observations are
normalised with the statistics frozen at that iteration, and actions are clipped to the
action space.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, Sequence

import gymnasium as gym
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.distributions import Categorical

from trpo.config import NetworkConfig
from trpo.envs import action_clipper, make_env
from trpo.networks import build_policy
from trpo.normalization import ObservationNormalizer
from trpo.io.run_folder import AGENT, RunFolder
from trpo.seeding import stream_seed
from trpo.video import INSTALL_OSMESA

# What a policy needs from an agent.pt or a checkpoint.
REQUIRED = ("policy", "obs_normalizer", "config", "iteration")


class AgentLoadError(RuntimeError):
    """No agent can be loaded from a folder. ``str(error)`` is one line saying why."""


class TaskError(AgentLoadError):
    """The agent loads, but its task cannot be made here (a package or library is missing)."""


class UntrustedModuleError(AgentLoadError):
    """The run's task is ``module:Id``, so making it would import ``module``: code named by the
    run folder, which may come from anyone. Refused unless the user names the module."""


def check_env_module(path: Path, env_id: str, allow_modules: Sequence[str]) -> None:
    """Raise :class:`UntrustedModuleError` if ``env_id`` (``module:Id``) would import a module
    that ``allow_modules`` does not name."""
    module = env_id.rpartition(":")[0]
    if module and module not in allow_modules:
        raise UntrustedModuleError(
            f"{path}: its task {env_id!r} would import module {module!r}, code named by the run "
            f"folder; if you trust it, name it: --allow-module {module} "
            f"(load_agent(..., allow_modules=[{module!r}]))")


@dataclass
class SavedPolicy:
    """A policy as a run folder holds it: in ``agent.pt`` or in a checkpoint."""

    path: Path  # the file it was read from
    iteration: int  # the policy update it is the result of
    policy: dict[str, Any]  # the policy's state dict
    obs_normalizer: dict[str, Any]  # mean, var, count (tensors or arrays)
    config: dict[str, Any]  # the resolved config it was trained with

    @property
    def is_final(self) -> bool:
        """Whether it is ``agent.pt``, written when the run completed."""
        return self.path.name == AGENT


def _saved_policy(path: Path, contents: Any) -> SavedPolicy:
    if not isinstance(contents, dict) or any(k not in contents for k in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(contents, dict) or k not in contents]
        raise ValueError(f"not a trpo-lab agent (no {', '.join(missing)})")
    return SavedPolicy(path, int(contents["iteration"]), contents["policy"],
                       dict(contents["obs_normalizer"]), dict(contents["config"]))


def newest_policy(folder: RunFolder) -> tuple[SavedPolicy, list[str]]:
    """The latest policy ``folder`` holds (``agent.pt`` or the newest readable checkpoint,
    whichever has the higher iteration) and the problems met with files that could not be
    used; raises :class:`AgentLoadError` if there is none.

    (A reader of the run folder's formats: it belongs in :class:`RunFolder` once that module
    takes it.)
    """
    if not folder.path.exists():
        raise AgentLoadError(f"no such folder: {folder.path}")
    if not folder.path.is_dir():
        raise AgentLoadError(f"not a folder: {folder.path}")
    candidates: list[SavedPolicy] = []
    problems: list[str] = []
    if folder.agent_path.exists():
        try:
            candidates.append(_saved_policy(folder.agent_path, folder.read_agent()))
        except Exception as error:  # a file of another tool: a pickle, a zip, garbage
            problems.append(f"{folder.agent_path.name}: {_first_line(error)}")
    for path, state in folder.read_checkpoints():
        if isinstance(state, Exception):
            problems.append(str(state).replace(f"{path}: ", f"{path.name}: ", 1))
            continue
        try:
            candidates.append(_saved_policy(path, state))
        except ValueError as error:
            problems.append(f"{path.name}: {error}")
            continue
        break  # the newest readable checkpoint is the one to take
    if candidates:
        return max(candidates, key=lambda c: (c.iteration, c.is_final)), problems
    if problems:
        raise AgentLoadError(f"{folder.path} has no usable agent: {'; '.join(problems)}")
    if folder.read_status() or folder.has_config():  # a run of ours, not yet checkpointed
        raise AgentLoadError(f"{folder.path} has no agent.pt or checkpoint yet: the run "
                             "has not reached its first checkpoint")
    raise AgentLoadError(f"{folder.path} is not a trpo-lab run folder (no agent.pt, "
                         "checkpoint.ckpt or status.json)")


def _network_config(saved: dict[str, Any]) -> NetworkConfig:
    """The saved ``network`` section as a :class:`NetworkConfig` (enums restored); keys this
    version does not know are left out."""
    known = {f.name for f in fields(NetworkConfig)}
    values = {k: v for k, v in saved.items() if k in known}
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(NetworkConfig), values))


class Agent:
    """A trained policy that acts on raw observations.

    ``config`` is the config it was trained with (read-only), ``iteration`` the policy update
    it is the result of and ``env_steps`` the environment steps trained by then; ``source`` is
    the file it was loaded from.
    """

    def __init__(self, saved: SavedPolicy, observation_space: gym.Space,
                 action_space: gym.Space, seed: Optional[int] = None):
        self.source = saved.path
        self.iteration = saved.iteration
        self.config: DictConfig = OmegaConf.create(saved.config)
        OmegaConf.set_readonly(self.config, True)
        self.env_steps = self.iteration * int(self.config.steps_per_iteration)
        self.observation_space, self.action_space = observation_space, action_space
        self.policy = build_policy(self.observation_space, self.action_space,
                                   _network_config(saved.config["network"]))
        self.policy.load_state_dict(saved.policy)
        self.policy.eval()
        self.obs_normalizer = ObservationNormalizer(
            self.observation_space.shape, float(self.config.obs_clip),
            bool(self.config.normalize_obs))
        self.obs_normalizer.load_state_dict(  # agent.pt holds tensors, a checkpoint arrays
            {k: v.numpy() if isinstance(v, torch.Tensor) else v
             for k, v in saved.obs_normalizer.items()})
        self._to_env_action = action_clipper(self.action_space)
        self._generator = torch.Generator()
        self.seed(seed)

    def __repr__(self) -> str:
        return (f"Agent({self.config.env.id}, iteration {self.iteration}, "
                f"from {str(self.source)!r})")

    def seed(self, seed: Optional[int]) -> None:
        """Seed the generator stochastic actions are drawn from (``None``: from the OS)."""
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(stream_seed(seed, "agent"))

    def make_env(self, **make_kwargs) -> gym.Env:
        """A new copy of the task the agent was trained on (its keyword arguments and time
        limit); ``make_kwargs`` go to ``gymnasium.make`` (``render_mode="rgb_array"``)."""
        return make_env(self.config.env, **make_kwargs)

    def act(self, obs: np.ndarray, deterministic: bool = True) -> np.ndarray:
        """Actions for raw observations, as the environment returns them.

        ``obs`` is one observation (shape ``observation_space.shape``) or a batch
        (``[B, *shape]``); the action is one (a Box action, or an integer for a Discrete
        space) or a batch of them. ``deterministic``: the policy's mode (the Gaussian mean,
        the most likely discrete action), as training's evaluations; otherwise a sample.
        Box actions are clipped to the action space, as in training.
        """
        obs = np.asarray(obs)
        shape = self.observation_space.shape
        single = obs.shape == shape
        if not single and obs.shape[1:] != shape:
            raise ValueError(f"expected an observation of shape {shape} or a batch of shape "
                             f"(B, {', '.join(map(str, shape))}), got {obs.shape}")
        batch = obs[None] if single else obs
        with torch.inference_mode():
            dist = self.policy(torch.from_numpy(self.obs_normalizer(batch)))
            actions = self.policy.mode(dist) if deterministic else self._sample(dist)
        actions = self._to_env_action(actions.numpy())
        return actions[0] if single else actions

    def _sample(self, dist) -> torch.Tensor:
        if isinstance(dist, Categorical):
            return torch.multinomial(dist.probs, 1, generator=self._generator).squeeze(-1)
        normal = dist.base_dist  # Independent(Normal): the diagonal Gaussian policy
        noise = torch.randn(normal.loc.shape, generator=self._generator)
        return normal.loc + normal.scale * noise


def load_agent(run_dir: str | Path, seed: Optional[int] = None,
               allow_modules: Sequence[str] = ()) -> Agent:
    """The agent of the run in ``run_dir``: from ``agent.pt`` if the run finished, else from
    its newest usable checkpoint (whichever is the later iteration).

    ``seed`` seeds the agent's stochastic actions. A task named ``module:Id`` imports
    ``module``: it is made only if ``allow_modules`` names it. Raises :class:`AgentLoadError`
    (one line) if the folder holds no usable agent.
    """
    saved, _ = newest_policy(RunFolder(run_dir))
    return build_agent(saved, seed, allow_modules)


def build_agent(saved: SavedPolicy, seed: Optional[int] = None,
                allow_modules: Sequence[str] = ()) -> Agent:
    """:class:`Agent` of ``saved``; raises :class:`UntrustedModuleError` if its task would
    import a module ``allow_modules`` does not name, :class:`TaskError` if its task cannot be
    made here, :class:`AgentLoadError` if its weights do not fit the networks its config
    describes."""
    env_cfg = OmegaConf.create(saved.config["env"])
    check_env_module(saved.path, str(env_cfg.id), allow_modules)
    try:
        with make_env(env_cfg) as env:
            spaces = env.observation_space, env.action_space
    except Exception as error:  # not registered, a missing package, an OpenGL that fails
        hint = ""
        if os.environ.get("MUJOCO_GL"):  # MuJoCo loads its OpenGL on import when it is set
            hint = (f"; MUJOCO_GL={os.environ['MUJOCO_GL']} is set: unset it, or install what it "
                    f"needs ({INSTALL_OSMESA})")
        raise TaskError(f"{saved.path}: its task {env_cfg.id!r} cannot be made here "
                        f"({type(error).__name__}: {_first_line(error)}){hint}") from None
    try:
        return Agent(saved, *spaces, seed)
    except Exception as error:  # wrong keys or shapes: a file of another version or tool
        raise AgentLoadError(f"{saved.path}: cannot be loaded ({type(error).__name__}: "
                             f"{_first_line(error)})") from error


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
