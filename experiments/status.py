"""How far a study has got: ``python -m experiments STUDY --status``.

Lists every run the study's sweep makes, by the folder it gets, as completed, copied from
another study (``reuse_from``), part-way (running, or interrupted and waiting to be resumed, with
the share of its steps done), failed (with its error), stale (its folder holds a run of another
config, as after a default changed: the sweep refuses it), to be copied (not started, but a
finished run with its config is below the reuse folder) or not started, and estimates the time
left to train from the training time per step of the study's own finished runs (before one has
finished, of its tunings' trials). Nothing is started or changed. Run folders are read through
:mod:`trpo.io.run_folder` alone (no torch, no trainer).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from analysis.load import CONFIG_ERRORS, run_budget
from trpo.config import compose, config_changes, twin_test
from trpo.io.run_folder import RunFolder, find_run_folders

# The key of Hydra's that names the keys a run folder's name leaves out.
EXCLUDED_FROM_NAMES = "hydra.job.config.override_dirname.exclude_keys"
DIRNAME = "${hydra:job.override_dirname}"  # a run folder's name, as sweeps set it

# What a planned run can be, in the order the summary counts them. Part-way runs are running
# or interrupted (the study's command resumes them from their last checkpoint).
STATES = ("completed", "copied", "running", "interrupted", "failed", "unknown", "stale",
          "to be copied", "not started")
PART_WAY = ("running", "interrupted")


class UnnamedRuns(ValueError):
    """A sweep whose run folders are not named by their overrides: --status cannot find them."""


@dataclass
class RunState:
    """One planned run: its folder name, what state it is in and how much of it is done."""

    name: str
    state: str  # one of STATES
    done: float  # fraction of its steps logged, 0 to 1
    wall_s: Optional[float]  # training time so far (progress.csv); None if not started
    detail: str = ""  # a failed run's error; the folder a run to be copied comes from
    budget: Optional[int] = None  # steps it trains in all; None until known


@dataclass
class PlannedRun:
    """A run the study's sweep launches: the folder name it gets and the job's overrides."""

    name: str
    overrides: list[str]


def planned_runs(study: str, overrides: list[str],
                 excluded_keys: tuple[str, ...]) -> list[PlannedRun]:
    """The runs the study's sweep launches, in order, each named by its folder: Hydra's
    ``override_dirname`` of the job without ``excluded_keys`` (without the keys of the sweep's
    own ``exclude_keys`` override instead, where it has one), then what the sweep's own
    ``hydra.sweep.subdir`` override adds after it (a tuned line's ``,tuned_trial=7``). Raises
    :class:`UnnamedRuns` for a subdir that does not start with the override_dirname."""
    hydra_overrides = [o for o in overrides if o.startswith(("hydra.", "hydra/"))]
    cfg = compose([f"experiment={study}", *hydra_overrides], return_hydra_config=True)
    params = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.params or {}).items()]
    task = [o for o in overrides if not o.startswith(("hydra.", "hydra/"))]
    parsed = OverridesParser.create().parse_overrides([*params, *task])
    sweep_settings = {o.key_or_group: o.value()
                      for o in OverridesParser.create().parse_overrides(hydra_overrides)}
    excluded_keys = tuple(sweep_settings.get(EXCLUDED_FROM_NAMES, excluded_keys))
    subdir = sweep_settings.get("hydra.sweep.subdir", DIRNAME)
    if not subdir.startswith(DIRNAME):
        raise UnnamedRuns(f"hydra.sweep.subdir={subdir!r}: --status names a study's runs by "
                         f"{DIRNAME}, and this sweep's folders are named otherwise")
    # The basic sweeper's own expansion (what it launches), so the names cannot drift from it;
    # a private module of Hydra's, checked end to end by tests/test_run.py.
    [jobs] = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [PlannedRun(",".join(sorted(o for o in job if o.split("=", 1)[0].lstrip("+~")
                                       not in excluded_keys)) + subdir.removeprefix(DIRNAME),
                       list(job))
            for job in jobs]


@functools.lru_cache(maxsize=None)
def planned_config(study: str, overrides: tuple[str, ...]):
    """The config of a planned run of the study, composed once per process: ``--status``
    reads it for the stale check, the copy check and the budget."""
    return compose([f"experiment={study}", *overrides])


def planned_budget(study: str, overrides: list[str]) -> int:
    """The steps a planned run trains: its config's, composed without its seed (which does
    not change them), so that a line's seeds compose once."""
    config = planned_config(study, tuple(o for o in overrides if not o.startswith("seed=")))
    return run_budget({"total_steps": config.total_steps,
                       "steps_per_iteration": config.steps_per_iteration})


def run_folders_by_name(sweep_dir: Path) -> dict[str, RunFolder]:
    """The run folders below ``sweep_dir`` by their folder name (none if it does not exist)."""
    return ({folder.path.name: folder for folder in find_run_folders([sweep_dir])}
            if sweep_dir.is_dir() else {})


def study_status(sweep_dir: Path, names: list[str]) -> list[RunState]:
    """The state of each planned run below ``sweep_dir``, as :meth:`RunFolder.state` says
    (``unknown``: it has a folder but no readable ``status.json``)."""
    folders = run_folders_by_name(sweep_dir)
    return [run_state(name, folders.get(name)) for name in names]


def mark_stale_runs(states: list[RunState], runs: list[PlannedRun], study: str,
                    sweep_dir: Path) -> None:
    """Mark each run whose folder holds a run of another config than the study's sweep asks
    for now (a default changed since it trained) as "stale", naming the keys: the sweep's run
    refuses to resume it, so it trains only once its folder is moved away."""
    folders = run_folders_by_name(sweep_dir)
    for state, run in zip(states, runs):
        folder = folders.get(run.name)
        if folder is None or state.state == "unknown":
            continue
        try:
            saved = folder.read_resolved_config()
        except CONFIG_ERRORS:
            continue
        changed = config_changes(saved, planned_config(study, tuple(run.overrides)))
        if changed:
            state.state, state.done = "stale", 0.0
            state.detail = (f"trained with other values of {', '.join(changed)}; move its "
                            "folder away to train it again")


def mark_runs_to_copy(states: list[RunState], runs: list[PlannedRun], study: str,
                      reuse_root: Path) -> None:
    """Mark each run not started whose config a finished run below ``reuse_root`` trained
    as "to be copied", naming that run: what the study's sweep would copy rather than train
    (the sweep also checks the finished run's checkpoint, which needs torch)."""
    waiting = [(state, run) for state, run in zip(states, runs) if state.state == "not started"]
    if not waiting or not reuse_root.is_dir():
        return
    finished = []
    for folder in find_run_folders([reuse_root]):
        if folder.state() == "completed":
            try:
                finished.append((folder.path, folder.read_resolved_config()))
            except CONFIG_ERRORS:
                continue
    for state, run in waiting:
        trains_the_same = twin_test(planned_config(study, tuple(run.overrides)))
        source = next((path for path, saved in finished if trains_the_same(saved)), None)
        if source is not None:
            state.state, state.detail = "to be copied", f"from {source}"


def run_state(name: str, folder: Optional[RunFolder]) -> RunState:
    """How far the run in ``folder`` (``None``: no folder yet) has got."""
    if folder is None:
        return RunState(name, "not started", 0.0, None)
    rows = folder.progress.read().rows
    last = rows[-1] if rows else {}
    try:
        budget = run_budget(folder.read_config())
    except CONFIG_ERRORS:  # an unreadable config: how far it got is unknown, its state is not
        budget = None
    reached = last.get("env_steps") or 0.0
    done = min(reached / budget, 1.0) if budget else 0.0
    state, record = folder.state(), folder.read_status()
    if state == "completed" and "reused_from" in record:
        state = "copied"
    detail = str(record.get("error", "")) if state == "failed" else ""
    return RunState(name, state, done, last.get("wall_s"), detail, budget)


def trained_here(folders: Iterable[RunFolder]) -> list[tuple[float, float]]:
    """Training seconds and steps of each run or trial among ``folders`` that finished here
    (completed or pruned, not copied from elsewhere), from its last row."""
    timed = []
    for folder in folders:
        if folder.state() not in ("completed", "pruned") or "reused_from" in folder.read_status():
            continue
        rows = folder.progress.read().rows
        if rows and rows[-1].get("wall_s") and rows[-1].get("env_steps"):
            timed.append((float(rows[-1]["wall_s"]), float(rows[-1]["env_steps"])))
    return timed


def remaining_hours(states: list[RunState], step_s: Optional[float] = None,
                    later_steps: float = 0.0) -> Optional[float]:
    """Run-hours of training left: the steps left to the study's runs (each one's budget, less
    what it has done; ``later_steps`` for runs planned later) times the training time per step
    of its runs finished here, or ``step_s`` before one has finished; None with neither."""
    timed = [(s.wall_s, s.budget) for s in states if s.state == "completed" and s.wall_s
             and s.budget]
    if timed:
        step_s = sum(wall for wall, _ in timed) / sum(steps for _, steps in timed)
    if step_s is None:
        return None
    steps = sum((1 - s.done) * (s.budget or 0) for s in states
                if s.state not in ("completed", "copied", "to be copied"))
    return (steps + later_steps) * step_s / 3600


def time_left(states: list[RunState], step_s: Optional[float] = None, later_steps: float = 0.0,
              tuning_hours: Optional[float] = 0.0) -> str:
    """The line that ends ``--status``: nothing left, or the run-hours of training left and
    what they come from. ``step_s`` is the training time per step to go by before one of the
    runs has finished (its tunings' trials'); ``later_steps`` are those of runs planned later;
    ``tuning_hours`` is the tunings' part, None if trials are left and none has finished."""
    untimed_trials = tuning_hours is None
    if not later_steps and not tuning_hours and not untimed_trials:
        if all(s.state in ("completed", "copied") for s in states):
            return "every run has finished"
        if all(s.state in ("completed", "copied", "to be copied") for s in states):
            to_copy = sum(s.state == "to be copied" for s in states)
            return (f"nothing left to train: the study's command copies the {to_copy} runs to "
                    "be copied")
    hours = remaining_hours(states, step_s, later_steps)
    if hours is None:
        return "time left: no estimate until one of its runs or trials has finished here"
    total = hours + (tuning_hours or 0.0)
    if untimed_trials:
        part = ", and its tunings' trials, none of which has finished to time them by"
    else:
        part = f" ({tuning_hours:.1f} of tuning, {hours:.1f} of runs)" if tuning_hours else ""
    source = "the training time per step of its runs finished here"
    if step_s is not None or tuning_hours:
        source += (", or before one has, of its tunings' trials; the tunings' from the mean "
                   "time of their finished trials")
    jobs = os.cpu_count() or 1
    return (f"time left: about {total:.1f} run-hours of training{part}, {total / jobs:.1f} "
            f"hours with {jobs} runs side by side (from {source}; runs another study has "
            "already trained are copied and take less)")


def format_status(study: str, sweep_dir: Path, states: list[RunState]) -> str:
    """A summary line and a line per run (part-way and failed ones with the share of steps
    done, failed ones with their error)."""
    counts = {state: sum(s.state == state for s in states) for state in STATES}
    part_way = sum(counts[state] for state in PART_WAY)
    summary = [f"{counts['completed']} completed", f"{counts['copied']} copied",
               f"{part_way} part-way" + (f" ({', '.join(f'{counts[s]} {s}' for s in PART_WAY)})"
                                         if part_way else "")]
    summary += [f"{counts[state]} {state}" for state in ("failed", "unknown", "stale",
                                                          "to be copied") if counts[state]]
    summary.append(f"{counts['not started']} not started")
    lines = [f"{study}: {len(states)} runs in {sweep_dir}: " + ", ".join(summary)]
    width, state_width = (max(len(getattr(s, key)) for s in states) for key in ("name", "state"))
    for s in states:
        detail = f"{s.done:5.0%}  " if s.state in (*PART_WAY, "failed", "unknown") else ""
        detail += s.detail if s.state in ("to be copied", "stale") else s.detail[:100]
        lines.append(f"  {s.name:<{width}}  {s.state:<{max(state_width, 11)}} {detail}".rstrip())
    return "\n".join(lines)
