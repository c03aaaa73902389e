"""``hydra/sweeper=tune``: Optuna's trials launched as runs through Hydra's launcher.

The work is :mod:`trpo.tuning`'s; this class is what Hydra instantiates from
``conf/hydra/sweeper/tune.yaml``. Hydra imports this module in every process it starts, so it
imports the analysis only when a tuning ends.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, List

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.singleton import Singleton
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from trpo import tuning
from trpo.config import ConfigError

log = logging.getLogger("trpo")


class TuneSweeper(Sweeper):
    def __init__(self, trials: int, parallel: int, pruner: str, startup_trials: int,
                 warmup: float, sampler_seed: int, study: str):
        self.settings = tuning.TuningSettings(
            trials=trials, parallel=parallel, pruner=pruner, startup_trials=startup_trials,
            warmup=warmup, sampler_seed=sampler_seed, study=study)
        self.config = self.launcher = self.hydra_context = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        from analysis.tuning import write_summary

        parsed = OverridesParser.create().parse_overrides(arguments)
        base = [override.input_line for override in parsed]
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        try:
            # plan() composes the config as a Hydra app of its own, which would rename this
            # app's jobs (their log file): Hydra's singletons are put back after it.
            running_app = Singleton.get_state()
            try:
                plan = tuning.plan(base, self.settings)
            finally:
                Singleton.set_state(running_app)
            study = tuning.drive(plan, self.settings, sweep_dir, self.launcher.launch)
        except ConfigError as error:  # a folder that tunes another configuration, or is busy
            from trpo.cli import SweepSummary

            SweepSummary.sweep_dir = None  # nothing ran: the one line is all there is to say
            print(f"error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        log.info("wrote %s", write_summary(study, plan, self.settings, sweep_dir))
        if tuning.counted(study) < self.settings.trials:
            print(f"the tuning stopped at {tuning.counted(study)} of {self.settings.trials} "
                  f"trials; to resume it, the same command with hydra.sweep.dir={sweep_dir}",
                  file=sys.stderr, flush=True)
            raise SystemExit(1)
        return study
