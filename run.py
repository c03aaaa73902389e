"""Train one agent per Hydra job: ``python run.py [group=option ...] [key=value ...]`` (-m sweeps)."""

import math
import os
import shlex
import signal
import sys
import time
from pathlib import Path


def stop_on_signal(signum: int, frame) -> None:
    """SIGINT or SIGTERM before a run holds its folder: while the imports and checks run,
    nothing has been written, so the command ends at once in one line; once the job has started,
    a ``KeyboardInterrupt`` unwinds it (``main`` removes a folder it left empty). A run replaces
    this handler with its own while it trains (``trpo.train.StopSignals``)."""
    if not JOB_STARTED:
        os.write(2, b"interrupted before the run started: nothing was written\n")
        os._exit(128 + signum)
    global RECEIVED
    RECEIVED = signum
    raise KeyboardInterrupt


JOB_STARTED, RECEIVED = False, signal.SIGINT
if __name__ == "__main__":  # the command itself, not a sweep's worker importing this module
    signal.signal(signal.SIGINT, stop_on_signal)
    signal.signal(signal.SIGTERM, stop_on_signal)

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from trpo.io.checkpoint import CheckpointError
from trpo.cli import job_tag, preflight, print_sweep_summary
from trpo.config import ConfigError
from trpo.io.run_folder import RunFolder, RunFolderBusy
from trpo.train import RunInterrupted, StorageFull, train

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
    sweep = hydra_cfg.mode is RunMode.MULTIRUN
    tag = job_tag(choices, cfg.seed, hydra_cfg.job.num) if sweep else None
    try:
        return train(cfg, run_dir, run_name, hydra_config=hydra_cfg, overrides=overrides,
                     resume_command=resume_command, console_tag=tag)
    except ConfigError as error:
        remove_if_unused(run_dir)
        fail(f"error: {error}", 2)
    except RunFolderBusy as error:
        if sweep:  # a study started twice: leave the run to its holder
            print(f"skipped: {error}", file=sys.stderr, flush=True)
            return math.nan
        fail(f"error: {error}", 2)
    except CheckpointError as error:
        # The run folder holds checkpoints, none of them usable: everything stays as it is.
        fail(f"error: {error}; progress.csv was left as it is (resume=false starts afresh "
             "beside this run)", 1)
    except RunInterrupted as error:
        fail(str(error), 128 + error.signal)
    except KeyboardInterrupt:  # a signal before the run's own handlers took over
        remove_if_unused(run_dir)
        if sweep:
            raise
        fail("interrupted before training started: run the same command again to start it",
             128 + RECEIVED)
    except StorageFull as error:  # the folder stays resumable; nothing half-written is left
        remove_if_unused(run_dir)
        fail(str(error), 1)
    except Exception as error:
        remove_if_unused(run_dir)  # a run that failed before it started (an env that cannot be made)
        if sweep or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # a sweep's launcher records the job as failed; HYDRA_FULL_ERROR shows it all
        first = str(error).splitlines()[0] if str(error) else ""
        fail(f"error: {type(error).__name__}: {first} (HYDRA_FULL_ERROR=1 shows the traceback)",
             1)


def remove_if_unused(run_dir: Path) -> None:
    """Remove the run folder only if this command made it and it is still empty."""
    RunFolder(run_dir).remove_if_made_since(float(os.environ.get(INVOCATION_START, time.time())))


def fail(message: str, code: int) -> None:
    print(message, file=sys.stderr, flush=True)
    raise SystemExit(code)


if __name__ == "__main__":
    preflight(sys.argv[1:])  # --help, a misspelt key, an output folder that cannot be written
    os.environ.setdefault(INVOCATION_START, repr(time.time()))
    JOB_STARTED = True
    try:
        main()
    except KeyboardInterrupt:  # the sweep's own process; its jobs stop at a checkpoint
        fail("interrupted: run the same command again to resume every unfinished run",
             128 + RECEIVED)
    finally:
        print_sweep_summary()
        # The work is done or reported; a signal now would only break the exit's clean-up.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
