"""Shared fixtures and helpers: composing the project's Hydra config as ``run.py`` does, running
``run.py`` as a user does, and comparing runs."""

import functools
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from trpo.config import CONF_DIR, compose  # noqa: F401  (CONF_DIR: for the tests)

ROOT = Path(__file__).resolve().parents[1]

# One intra-op thread per test process, as every run takes (torch_threads=1): pytest-xdist runs a
# process per core, and more torch threads than cores wait on each other (a value fit of 0.04 s
# took 10 s beside a busy core).
torch.set_num_threads(1)

# Overrides that make a run finish in about a second: small batches, one critic epoch, one
# evaluation episode, no W&B.
TINY = ["total_steps=256", "steps_per_iteration=128", "num_envs=2", "eval_every=1",
        "eval_episodes=1", "critic.epochs=1", "logger.writers=[]"]


@pytest.fixture
def compose_config():
    """``compose_config(overrides)`` returns the composed config for ``overrides``."""

    yield compose
    GlobalHydra.instance().clear()


def run_py(*args, timeout=300):
    """``python run.py args`` in the checkout, as a user runs it; the finished process."""
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def without_timing(progress: pd.DataFrame) -> pd.DataFrame:
    """The columns that measure time or memory differ between two runs of the same command."""
    machine = [c for c in progress.columns
               if c.startswith("time_") or c in ("wall_s", "steps_per_s", "rss_mb")]
    return progress.drop(columns=machine)


@functools.cache
def _option_values(group: str, option: str) -> dict:
    # The option's own values, not a task's tuned ones (the default task, Hopper-v5, has them).
    return OmegaConf.to_container(compose([f"{group}={option}", "env.tuned=null"])[group],
                                  resolve=True)


def option_values(group: str, option: str, **overrides) -> dict:
    """The values of ``conf/<group>/<option>.yaml`` (the project's one statement of them), with
    ``overrides``; ``_target_`` left out."""
    values = {k: v for k, v in _option_values(group, option).items() if k != "_target_"}
    return {**values, **overrides}


def solver_kwargs(option: str, **overrides) -> dict:
    """Keyword arguments that build the ``solver=<option>`` solver as the config does (seed 0)."""
    return {**option_values("solver", option), "seed": 0, **overrides}


def network_config(option: str = "mlp64", **overrides):
    """The ``network=<option>`` config as a :class:`trpo.config.NetworkConfig`."""
    from trpo.config import Activation, Init, NetworkConfig

    values = option_values("network", option, **overrides)
    values["activation"] = Activation(getattr(values["activation"], "value",
                                              values["activation"]))
    values["init"] = Init(getattr(values["init"], "value", values["init"]))
    return NetworkConfig(**values)
