"""How far a study has got: ``python -m experiments STUDY --status``.

Lists every run the study's sweep makes, by the folder it gets, as completed, copied from
another study (``reuse_from``), part-way (with its iterations) or not started, and estimates the
training time left from the study's own finished runs. Nothing is started or changed.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from analysis.load import load_runs
from trpo.run_folder import RunFolder


@dataclass
class RunState:
    """One planned run: its folder name, what state it is in and how much of it is done."""

    name: str
    state: str  # completed, copied, part-way, not started
    done: float  # fraction of its steps logged, 0 to 1
    wall_s: Optional[float]  # training time so far (progress.csv); None if not started


def planned_run_names(conf_dir: Path, study: str, overrides: list[str],
                      excluded_keys: tuple[str, ...]) -> list[str]:
    """The folder names the study's sweep gives its runs (Hydra's ``override_dirname`` of each
    job, without ``excluded_keys``), in the order it launches them."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            hydra_overrides = [o for o in overrides if o.startswith(("hydra.", "hydra/"))]
            cfg = compose(config_name="config", return_hydra_config=True,
                          overrides=[f"experiment={study}", *hydra_overrides])
            params = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.params or {}).items()]
    finally:
        GlobalHydra.instance().clear()
    task = [o for o in overrides if not o.startswith(("hydra.", "hydra/"))]
    parsed = OverridesParser.create().parse_overrides([*params, *task])
    # The basic sweeper's own expansion (what it launches), so the names cannot drift from it;
    # a private module of Hydra's, checked end to end by tests/test_run.py.
    [jobs] = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [",".join(sorted(o for o in job if o.split("=", 1)[0].lstrip("+~")
                            not in excluded_keys)) for job in jobs]


def study_status(sweep_dir: Path, names: list[str]) -> list[RunState]:
    """The state of each planned run below ``sweep_dir``."""
    loaded = {run.path.name: run for run in load_runs([sweep_dir], include_incomplete=True).runs
              } if sweep_dir.is_dir() else {}
    states = []
    for name in names:
        run = loaded.get(name)
        if run is None:
            states.append(RunState(name, "not started", 0.0, None))
            continue
        budget = run.config.get("total_steps")
        reached = float(run.progress["env_steps"].iloc[-1])
        done = min(reached / float(budget), 1.0) if budget else 0.0
        if run.complete and run.status == "completed":
            state = "copied" if "reused_from" in RunFolder(run.path).read_status() else "completed"
        else:
            state = "part-way"
        states.append(RunState(name, state, done, float(run.progress["wall_s"].iloc[-1])))
    return states


def remaining_hours(states: list[RunState]) -> Optional[float]:
    """Training hours left, from the median training time of the study's runs trained here to
    the end (two side by side on this project's machine); None before one has finished."""
    trained = [s.wall_s for s in states if s.state == "completed" and s.wall_s]
    if not trained:
        return None
    per_run = statistics.median(trained)
    return sum((1 - s.done) * per_run for s in states if s.state in ("part-way", "not started")
               ) / 3600


def format_status(study: str, sweep_dir: Path, states: list[RunState]) -> str:
    counts = {state: sum(s.state == state for s in states)
              for state in ("completed", "copied", "part-way", "not started")}
    lines = [f"{study}: {len(states)} runs in {sweep_dir}: "
             + ", ".join(f"{n} {state}" for state, n in counts.items())]
    width = max(len(s.name) for s in states)
    for s in states:
        detail = f"{s.done:5.0%}" if s.state == "part-way" else ""
        lines.append(f"  {s.name:<{width}}  {s.state:<11} {detail}".rstrip())
    hours = remaining_hours(states)
    if counts["part-way"] + counts["not started"] == 0:
        lines.append("every run has finished")
    elif hours is None:
        lines.append("time left: no estimate until one of its runs has finished here")
    else:
        jobs = os.cpu_count() or 1
        lines.append(f"time left: about {hours:.1f} run-hours of training, {hours / jobs:.1f} "
                     f"hours with {jobs} runs side by side (from the median training time of "
                     "its finished runs; runs another study has already trained are copied "
                     "and take less)")
    return "\n".join(lines)
