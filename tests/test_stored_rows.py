"""The numbers of two short default runs, stored: a change meant to make training faster without
changing what it computes (an exact change) must leave them as they are.

The rows were written by this project's code with
``python -m tests.test_stored_rows`` (which rewrites ``tests/stored/``), and are compared with a
relative tolerance of 1e-7: far above the rounding another CPU's kernels may add over a few
iterations, far below what any change to the algorithm moves.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import CONF_DIR, without_timing
from trpo.train import train

STORED = Path(__file__).parent / "stored"
# The default config, on Gymnasium's environments (the exact backend), for three iterations
# with an evaluation after the last; one with every default, one with the categorical policy.
RUNS = {
    "hopper_default": ["env=hopper", "env.backend=gymnasium", "total_steps=6144",
                       "eval_every=3", "logger.mode=disabled"],
    "cartpole_default": ["env=cartpole", "total_steps=6144", "eval_every=3",
                         "logger.mode=disabled"],
}


def rows(overrides: list[str], folder: Path) -> pd.DataFrame:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    GlobalHydra.instance().clear()
    train(cfg, folder)
    return without_timing(pd.read_csv(folder / "progress.csv"))


@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_default_run_computes_the_stored_rows(name, tmp_path):
    stored = pd.read_csv(STORED / f"{name}.csv")
    pd.testing.assert_frame_equal(rows(RUNS[name], tmp_path), stored, check_exact=False,
                                  rtol=1e-7, atol=0)


if __name__ == "__main__":  # python -m tests.test_stored_rows: store the rows anew
    for name, overrides in RUNS.items():
        with tempfile.TemporaryDirectory() as folder:
            rows(overrides, Path(folder)).to_csv(STORED / f"{name}.csv", index=False)
        print(f"wrote {STORED / name}.csv", file=sys.stderr)
