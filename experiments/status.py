"""How far a study has got: ``python -m experiments STUDY --status``.

Lists every run the study's sweep makes, by the folder it gets, as completed, copied from
another study (``reuse_from``), part-way (running, or interrupted and waiting to be resumed, with
the share of its steps done), failed (with its error), stale (its folder holds a run of another
config, as after a default changed: the sweep refuses it), to be copied (not started, but a
finished run with its config is below the reuse folder) or not started, and estimates the time
left to train from the study's own finished runs. Nothing is started or changed. Run folders
are read through :mod:`trpo.io.run_folder` alone (no torch, no trainer).
"""

from __future__ import annotations

import os
import statistics
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


@dataclass
class RunState:
    """One planned run: its folder name, what state it is in and how much of it is done."""

    name: str
    state: str  # one of STATES
    done: float  # fraction of its steps logged, 0 to 1
    wall_s: Optional[float]  # training time so far (progress.csv); None if not started
    detail: str = ""  # a failed run's error; the folder a run to be copied comes from


@dataclass
class PlannedRun:
    """A run the study's sweep launches: the folder name it gets and the job's overrides."""

    name: str
    overrides: list[str]


def planned_runs(study: str, overrides: list[str],
                 excluded_keys: tuple[str, ...]) -> list[PlannedRun]:
    """The runs the study's sweep launches, in order, each named by its folder (Hydra's
    ``override_dirname`` of the job, without ``excluded_keys`` or the keys the sweep's own
    ``exclude_keys`` override names, followed by what its ``hydra.sweep.subdir`` override adds,
    as a tuned line's ``,tuned_trial=7``)."""
    hydra_overrides = [o for o in overrides if o.startswith(("hydra.", "hydra/"))]
    cfg = compose([f"experiment={study}", *hydra_overrides], return_hydra_config=True)
    params = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.params or {}).items()]
    task = [o for o in overrides if not o.startswith(("hydra.", "hydra/"))]
    parsed = OverridesParser.create().parse_overrides([*params, *task])
    own = {o.key_or_group: o.value()
           for o in OverridesParser.create().parse_overrides(hydra_overrides)}
    excluded_keys = tuple(own.get(EXCLUDED_FROM_NAMES, excluded_keys))
    suffix = own.get("hydra.sweep.subdir", DIRNAME).removeprefix(DIRNAME)
    # The basic sweeper's own expansion (what it launches), so the names cannot drift from it;
    # a private module of Hydra's, checked end to end by tests/test_run.py.
    [jobs] = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [PlannedRun(",".join(sorted(o for o in job if o.split("=", 1)[0].lstrip("+~")
                                       not in excluded_keys)) + suffix, list(job))
            for job in jobs]


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
        changed = config_changes(saved, compose([f"experiment={study}", *run.overrides]))
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
        trains_the_same = twin_test(compose([f"experiment={study}", *run.overrides]))
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
    return RunState(name, state, done, last.get("wall_s"), detail)


def seconds_per_step(folders: Iterable[RunFolder]) -> Optional[float]:
    """Training seconds per environment step over the runs or trials among ``folders`` that
    finished here (completed or pruned, not copied), from their last rows; None if none did."""
    wall = steps = 0.0
    for folder in folders:
        if folder.state() not in ("completed", "pruned") or "reused_from" in folder.read_status():
            continue
        rows = folder.progress.read().rows
        if rows and rows[-1].get("wall_s") and rows[-1].get("env_steps"):
            wall, steps = wall + rows[-1]["wall_s"], steps + rows[-1]["env_steps"]
    return wall / steps if steps else None


def remaining_hours(states: list[RunState], per_run_s: Optional[float] = None,
                    later_runs: int = 0) -> Optional[float]:
    """Training hours left to the runs: each one's share left times the median training time
    of the study's runs trained here to the end, or ``per_run_s`` before one has; ``later_runs``
    (runs planned once the tunings end) count whole. None with neither to go by."""
    trained = [s.wall_s for s in states if s.state == "completed" and s.wall_s]
    per_run = statistics.median(trained) if trained else per_run_s
    if per_run is None:
        return None
    return (sum(1 - s.done for s in states if s.state not in ("completed", "copied",
                                                            "to be copied"))
            + later_runs) * per_run / 3600


def time_left(states: list[RunState], per_run_s: Optional[float] = None, later_runs: int = 0,
              tuning_hours: float = 0.0) -> str:
    """The line that ends ``--status``: nothing left, or the hours of training left (the
    tunings' and the runs') and what they are estimated from."""
    counts = {state: sum(s.state == state for s in states) for state in STATES}
    finished = all(s.state in ("completed", "copied") for s in states)
    if finished and not later_runs and not tuning_hours:
        return "every run has finished"
    if (all(s.state in ("completed", "copied", "to be copied") for s in states)
            and not later_runs and not tuning_hours):
        return (f"nothing left to train: the study's command copies the "
                f"{counts['to be copied']} runs to be copied")
    hours = remaining_hours(states, per_run_s, later_runs)
    if hours is None:
        return "time left: no estimate until one of its runs or trials has finished here"
    jobs = os.cpu_count() or 1
    total = hours + tuning_hours
    parts = f" ({tuning_hours:.1f} of tuning, {hours:.1f} of runs)" if tuning_hours else ""
    return (f"time left: about {total:.1f} run-hours of training{parts}, {total / jobs:.1f} "
            f"hours with {jobs} runs side by side (from the median training time of its "
            "finished runs, or before one has finished the training time per step of its "
            "tunings' trials; runs another study has already trained are copied and take less)")


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
