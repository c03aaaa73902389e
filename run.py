"""Train one agent per Hydra job: ``python run.py [group=option ...] [key=value ...]`` (-m sweeps)."""

import math
import os
import re
import shlex
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from trpo.checkpoint import CheckpointError
from trpo.config import ConfigError, TrainConfig
from trpo.run_folder import RunFolder, RunFolderBusy
from trpo.train import RunInterrupted, train

# When this command started (shared with the sweep's worker processes): a run folder made
# since then, and still empty, is one this command made; only such a folder is ever removed.
INVOCATION_START = "TRPO_INVOCATION_START"


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    choices = hydra_cfg.runtime.choices
    run_name = f"{choices['env']}-{choices['solver']}-{choices['advantage']}-s{cfg.seed}"
    overrides = list(hydra_cfg.overrides.task)
    resume_command = shlex.join(["python", "run.py", *overrides, f"hydra.run.dir={run_dir}"])
    try:
        return train(cfg, run_dir, run_name, hydra_config=hydra_cfg, overrides=overrides,
                     resume_command=resume_command)
    except ConfigError as error:
        # Nothing ran: remove the folder only if this command made it and it is still empty.
        since = float(os.environ.get(INVOCATION_START, time.time()))
        RunFolder(run_dir).remove_if_made_since(since)
        fail(f"error: {error}", 2)
    except RunFolderBusy as error:
        if hydra_cfg.mode is RunMode.MULTIRUN:  # a study started twice: leave the run to its holder
            print(f"skipped: {error}", file=sys.stderr, flush=True)
            return math.nan
        fail(f"error: {error}", 2)
    except CheckpointError as error:
        # The run folder holds checkpoints, none of them usable: everything stays as it is.
        fail(f"error: {error}; progress.csv was left as it is (resume=false starts afresh "
             "beside this run)", 1)
    except RunInterrupted as error:
        fail(str(error), 128 + error.signal)


def fail(message: str, code: int) -> None:
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(code)


def check_output_dirs(argv: list[str]) -> None:
    """Fail in one line, before Hydra starts, if an output folder given on the command line
    cannot be made or written (Hydra itself would fail with a traceback). Nothing is created:
    the nearest folder that exists is checked."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    wanted = [arg for arg in argv if arg.split("=", 1)[0] in ("hydra.run.dir", "hydra.sweep.dir")]
    try:
        parsed = OverridesParser.create().parse_overrides(wanted)
    except Exception as error:  # Hydra's parser names the bad override
        fail(f"error: {str(error).splitlines()[0]}", 2)
    for override in parsed:
        value = str(override.value())
        for name in re.findall(r"\$\{([^}:]*)[}:]", value):
            if not (name in ("now", "hydra") or name.startswith("oc.")
                    or name.split(".")[0] in TrainConfig.__dataclass_fields__):
                fail(f"error: {override.key_or_group}={value}: ${{{name}}} is neither a config "
                     "key (name, seed, env.id, ...) nor a resolver (now, hydra, oc.env)", 2)
        if "${" in value:
            continue  # a folder known only once Hydra resolves it
        target = Path(value).absolute()
        existing = next(p for p in (target, *target.parents) if p.exists())
        problem = None
        if not existing.is_dir():
            problem = "Not a directory"
        elif not os.access(existing, os.W_OK | os.X_OK):
            problem = "Permission denied"
        if problem:
            fail(f"error: {override.key_or_group}={value} cannot be written: {problem}", 2)


if __name__ == "__main__":
    check_output_dirs(sys.argv[1:])
    os.environ.setdefault(INVOCATION_START, repr(time.time()))
    try:
        main()
    except KeyboardInterrupt:  # the sweep's own process; its jobs stop at a checkpoint
        fail("interrupted: run the same command again to resume every unfinished run", 130)
