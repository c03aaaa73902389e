"""The numbers of two short default runs, stored: a change meant to make training faster without
changing what it computes (an exact change) must leave them as they are.

Exactness holds on one machine only. Another CPU's kernels round differently (torch's matrix
products take other SIMD paths), and over three iterations that moved the rows here by up to
3e-5 relative and ended one conjugate-gradient solve an iteration early. So the rows are stored
per machine, in ``tests/stored/<machine>/`` with ``machine.json`` saying what it was (the CPU,
the instruction set torch uses, the versions of the numerical packages):

* on a machine that stored rows, they must match to 1e-7 relative: the exact check;
* on any other, the rows of each stored machine must match in the columns that the rounding
  moves least, to 1e-3 relative: far above what another CPU moved them (3e-5), far below what a
  change to the algorithm moves.

``python -m tests.test_stored_rows`` stores this machine's rows (run it before an exact change,
with the code from before it).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import warnings
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import without_timing
from trpo.config import compose
from trpo.io.provenance import cpu_name
from trpo.train import train

STORED = Path(__file__).parent / "stored"
# The default config, on Gymnasium's environments (the exact backend), for three iterations
# with an evaluation after the last; one with every default, one with the categorical policy.
# When a default changes on purpose, the rows of the run it changes are stored again on this
# machine and the other machines' rows of that run are removed (they held the old default).
RUNS = {
    "hopper_default": ["env=hopper", "env.backend=gymnasium", "total_steps=6144",
                       "eval_every=3", "logger.writers=[]"],
    "cartpole_default": ["env=cartpole", "total_steps=6144", "eval_every=3",
                         "logger.writers=[]"],
}
# Compared across machines: what any change to the algorithm moves, and rounding barely does
# (not cg_residual, cg_iterations or kl_obs_stats, which another CPU moved by 4% to 27%).
ACROSS_MACHINES = ["iteration", "env_steps", "return_mean", "eval_return_mean", "kl",
                   "episodes", "episode_length_mean", "expected_improvement",
                   "actual_improvement", "step_norm", "entropy", "value_loss"]


def this_machine() -> dict[str, str]:
    """What decides the rounding of a run: the CPU, torch's instruction set, the packages."""
    import gymnasium
    import mujoco
    import numpy
    import torch

    return {"cpu": cpu_name(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "numpy": numpy.__version__,
            "mujoco": mujoco.__version__, "gymnasium": gymnasium.__version__}


def machine_folder(machine: dict[str, str]) -> Path:
    key = hashlib.sha256(json.dumps(machine, sort_keys=True).encode()).hexdigest()[:12]
    return STORED / key


def stored_machines(name: str) -> list[Path]:
    """The machines that stored the rows of run ``name``."""
    return sorted(path.parent for path in STORED.glob("*/machine.json")
                  if (path.parent / f"{name}.csv").exists())


def rows(overrides: list[str], folder: Path) -> pd.DataFrame:
    train(compose(overrides), folder)
    return without_timing(pd.read_csv(folder / "progress.csv"))


WARNED: list[str] = []


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_default_run_computes_the_stored_rows(name, tmp_path):
    assert stored_machines(name), f"no stored {name} in {STORED}: python -m tests.test_stored_rows"
    computed = rows(RUNS[name], tmp_path)
    here = machine_folder(this_machine())
    if here in stored_machines(name):
        stored = pd.read_csv(here / f"{name}.csv")
        # Every stored column, exactly; a column added since (a new diagnostic) is not a change
        # of results, and one that is gone fails here.
        pd.testing.assert_frame_equal(computed[stored.columns], stored, check_exact=False,
                                      rtol=1e-7, atol=0)
        return
    if not WARNED:  # once per test run: what it means and what to do, not a machine dump
        WARNED.append(name)
        warnings.warn(f"this CPU ({this_machine()['cpu']}) has no stored rows: runs are compared "
                      "with other machines' to 1e-3, not bit for bit. Nothing is wrong; before "
                      "a change meant to leave results exact, `python -m tests.test_stored_rows` "
                      "stores this machine's rows.")
    for machine in stored_machines(name):
        stored = pd.read_csv(machine / f"{name}.csv")
        pd.testing.assert_frame_equal(computed[ACROSS_MACHINES], stored[ACROSS_MACHINES],
                                      check_exact=False, rtol=1e-3, atol=0,
                                      obj=f"rows stored on {machine.name}")


if __name__ == "__main__":  # python -m tests.test_stored_rows: store this machine's rows
    machine = this_machine()
    folder = machine_folder(machine)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "machine.json").write_text(json.dumps(machine, indent=2) + "\n")
    for name, overrides in RUNS.items():
        with tempfile.TemporaryDirectory() as scratch:
            rows(overrides, Path(scratch)).to_csv(folder / f"{name}.csv", index=False)
        print(f"wrote {folder / name}.csv", file=sys.stderr)
