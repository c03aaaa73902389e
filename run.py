"""Train one agent per Hydra job: ``python run.py [group=option ...] [key=value ...]`` (-m sweeps)."""

import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

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


if __name__ == "__main__":
    main()
