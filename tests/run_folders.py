"""Tiny run folders with known numbers, written through :mod:`trpo.io.run_folder` as a run writes them.

Shared by the tests of the analysis, the study status, the run folder and the run's lifecycle
(a helper module, so no test module imports another).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from omegaconf import OmegaConf

from trpo.io.run_folder import RunFolder

ENV_IDS = {"hopper": "Hopper-v5", "walker": "Walker2d-v5", "cartpole": "CartPole-v1",
           "inverted_pendulum": "InvertedPendulum-v5"}


def write_run(root: Path, name: str, env: str = "hopper", solver: str = "trpo", seed: int = 0,
              returns: Sequence[Optional[float]] = (1.0, 2.0, 3.0),
              total_steps: Optional[int] = None, status: Optional[str] = "completed",
              extra: Optional[dict[str, Any]] = None, every: int = 1,
              env_id: Optional[str] = None, choices: Optional[dict[str, Any]] = None) -> Path:
    """A run folder below ``root``: ``.hydra/`` with the config and the group choices (``env``
    is the option's name, ``env_id`` its id, by default the option's own), ``progress.csv``
    with ``returns`` as ``eval_return_mean`` every ``every`` iterations of 100 steps (and at
    the last), and ``status.json`` saying ``status`` (none if ``None``).

    ``extra`` sets config values: ``"solver.max_kl"`` in a section, ``"normalize_reward"`` at
    the top; ``choices`` adds or replaces group choices (``{"ablation": "no_obs_norm"}``).
    """
    path = Path(root) / name
    path.mkdir(parents=True)
    folder = RunFolder(path)
    steps = len(returns) * 100
    config: dict[str, Any] = {
        "env": {"id": env_id or ENV_IDS[env], "default_steps": steps, "random_return": 0.0,
                "reference_return": 100.0},
        "solver": {"_target_": f"trpo.solvers.{solver.upper()}", "max_kl": 0.01},
        "advantage": {"_target_": "trpo.advantages.GAE", "lam": 0.97},
        "seed": seed, "name": "test", "steps_per_iteration": 100,
        "total_steps": "${env.default_steps}" if total_steps is None else total_steps,
        "logger": {"mode": "disabled"}}
    for key, value in (extra or {}).items():
        if "." in key:
            section, field = key.split(".")
            config[section][field] = value
        else:
            config[key] = value
    group_choices = {"env": env, "solver": solver, "advantage": "gae", "network": "mlp64",
                     "logger": "wandb", "ablation": None, "experiment": None, **(choices or {})}
    folder.write_config(OmegaConf.create(config),
                        OmegaConf.create({"runtime": {"choices": group_choices}}), [])
    last = len(returns)
    rows = [{"iteration": i, "env_steps": i * 100, "wall_s": float(i - 1),
             "return_mean": None if r is None else r / 2,
             "eval_return_mean": r if i % every == 0 or i == last else None, "kl": 0.01}
            for i, r in enumerate(returns, start=1)]
    folder.progress.rewrite(rows)
    if status is not None:  # what trpo.train records: the budget while running
        details = {"total_steps": total_steps or steps} if status == "running" else {}
        folder.write_status(status, iteration=last, **details)
    return path


def sweep(root: Path, envs=("hopper", "walker"), solvers=("trpo", "npg"), seeds=(0, 1, 2)
          ) -> None:
    """Returns rising to 10·(solver index + 1) + seed, flat over the last two evaluations."""
    n = 0
    for env in envs:
        for s, solver in enumerate(solvers):
            for seed in seeds:
                top = 10.0 * (s + 1) + seed
                returns = np.linspace(0, top, 10)
                returns[-2:] = top
                write_run(root, f"multi/{n}", env, solver, seed, returns=returns.tolist())
                n += 1


def trust_region_sweep(root: Path, max_kls=(0.001, 0.01, 0.1), solvers=("trpo", "npg")) -> None:
    """Each solver at each max_kl, 3 seeds; final return 1000·(index of max_kl) + 100·(npg)
    + seed, so each point's IQM (3 seeds: their mean) is known."""
    n = 0
    for s, solver in enumerate(solvers):
        for k, max_kl in enumerate(max_kls):
            for seed in range(3):
                write_run(root, str(n), solver=solver, seed=seed,
                          returns=[0.0, 1000.0 * k + 100 * s + seed],
                          extra={"solver.max_kl": max_kl})
                n += 1


def strict_json(path: Path) -> Any:
    """``path``'s JSON, refusing NaN and Infinity (which are not JSON)."""
    def refuse(constant):
        raise ValueError(f"{constant} is not valid JSON")
    return json.loads(Path(path).read_text(), parse_constant=refuse)
