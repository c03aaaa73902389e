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
from typing import Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from analysis.load import CONFIG_ERRORS, run_budget
from trpo.config import compose, config_changes, twin_test
from trpo.io.run_folder import RunFolder, find_run_folders

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
    ``override_dirname`` of the job, without ``excluded_keys``)."""
    hydra_overrides = [o for o in overrides if o.startswith(("hydra.", "hydra/"))]
    cfg = compose([f"experiment={study}", *hydra_overrides], return_hydra_config=True)
    params = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.params or {}).items()]
    task = [o for o in overrides if not o.startswith(("hydra.", "hydra/"))]
    parsed = OverridesParser.create().parse_overrides([*params, *task])
    # The basic sweeper's own expansion (what it launches), so the names cannot drift from it;
    # a private module of Hydra's, checked end to end by tests/test_run.py.
    [jobs] = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [PlannedRun(",".join(sorted(o for o in job if o.split("=", 1)[0].lstrip("+~")
                                       not in excluded_keys)), list(job)) for job in jobs]


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


def remaining_hours(states: list[RunState]) -> Optional[float]:
    """Training hours left, from the median training time of the study's runs trained here to
    the end (two side by side on this project's machine); None before one has finished."""
    trained = [s.wall_s for s in states if s.state == "completed" and s.wall_s]
    if not trained:
        return None
    per_run = statistics.median(trained)
    return sum((1 - s.done) * per_run for s in states
               if s.state not in ("completed", "copied", "to be copied")) / 3600


def format_status(study: str, sweep_dir: Path, states: list[RunState]) -> str:
    """A summary line, a line per run (part-way and failed ones with the share of steps done,
    failed ones with their error) and the time left."""
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
    hours = remaining_hours(states)
    if all(s.state in ("completed", "copied") for s in states):
        lines.append("every run has finished")
    elif all(s.state in ("completed", "copied", "to be copied") for s in states):
        lines.append(f"nothing left to train: the study's command copies the "
                     f"{counts['to be copied']} runs to be copied")
    elif hours is None:
        lines.append("time left: no estimate until one of its runs has finished here")
    else:
        jobs = os.cpu_count() or 1
        lines.append(f"time left: about {hours:.1f} run-hours of training, {hours / jobs:.1f} "
                     f"hours with {jobs} runs side by side (from the median training time of "
                     "its finished runs; runs another study has already trained are copied "
                     "and take less)")
    return "\n".join(lines)
