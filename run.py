"""Train one agent per Hydra job: ``python run.py [group=option ...] [key=value ...]`` (-m sweeps)."""

import os
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from trpo.checkpoint import CheckpointError
from trpo.config import ConfigError
from trpo.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    choices = hydra_cfg.runtime.choices
    run_name = f"{choices['env']}-{choices['solver']}-{choices['advantage']}-s{cfg.seed}"
    try:
        return train(cfg, run_dir, run_name)
    except ConfigError as error:
        # Nothing ran: leave no run directory behind, and say what is wrong in one line.
        if not (run_dir / "progress.csv").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except CheckpointError as error:
        # The run directory holds checkpoints, none of them usable: leave everything as it is.
        print(f"error: {error}; progress.csv was left as it is (resume=false starts afresh "
              "beside this run)", file=sys.stderr)
        raise SystemExit(1) from None


def check_output_dir(argv: list[str]) -> None:
    """Fail in one line, before Hydra starts, if an output folder given on the command line
    cannot be written (Hydra itself would fail with a traceback)."""
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value and "${" not in value:
            target = Path(value)
            try:
                target.mkdir(parents=True, exist_ok=True)
                probe = target / f".write-test-{os.getpid()}"
                probe.write_text("")
                probe.unlink()
            except OSError as error:
                print(f"error: {key}={value} cannot be written: {error.strerror or error}",
                      file=sys.stderr)
                raise SystemExit(2) from None


if __name__ == "__main__":
    check_output_dir(sys.argv[1:])
    main()
