"""``python -m experiments STUDY [override ...]``: run a study's sweep, then its analysis.

A study is ``conf/experiment/STUDY.yaml``. Its runs go to ``multirun/STUDY/``, one folder per
run named by its overrides (``env=hopper,seed=0,solver=trpo``), and its figures and tables to
``results/STUDY/``; neither is tracked, so a study leaves the clone as it was.
``--update-results`` writes them to the committed ``experiments/results/STUDY/`` instead and
refreshes the study's section of RESULTS.md. The run folder is fixed, so running the same
command again resumes every unfinished run from its last checkpoint and skips the finished
ones: a long study spans sessions. A study may list further sweeps into the same folder
(``also_sweep``: mujoco_suite's sb3-contrib baseline over 5 seeds), run in turn after its own.
Extra arguments are Hydra overrides for every sweep (``hydra/launcher=slurm``,
``total_steps=200000``, ...); overrides that change what runs compute get folders of their own.
A run whose config was already trained to the end in another study below ``multirun/`` is
copied from there rather than trained again (``reuse_from``; ``--no-reuse`` trains everything).
A study that lists tunings (``tune_first``: tuned_solver_comparison) runs them first, each under
the study's ``tune_budget``, and then a sweep of each one's best configuration
(experiments/tuned.py); a tuning not started here whose folder is below ``reuse_from``
(``<study>_tuning/<name>``, as committed) is copied first, and goes on from there.
``--analyse-only DIR`` skips the sweep and analyses runs that are already there; ``--status``
gives each tuning's trials so far, then lists the study's runs (its tuned lines' once its
tunings have ended) as finished, copied, part-way, to be copied or not started, with the
training time left.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from analysis.__main__ import main as analyse
from analysis.stats import BOOTSTRAP_REPS
from trpo.config import CONF_DIR, result_neutral_keys
from experiments.status import (DIRNAME, EXCLUDED_FROM_NAMES, format_status, mark_runs_to_copy,
                                mark_stale_runs, planned_budget, planned_runs, study_status,
                                time_left, UnnamedRuns)
from experiments.tuned import (copy_tunings, for_sweeps, line_before_tuning, tune_commands,
                               tuned_sweeps, tuning_pace, tuning_root, tuning_status, tunings)
from experiments.tuned import write_report as write_tuning_report

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
RESULTS_PAGE = ROOT / "RESULTS.md"
# Run folders named by their overrides rather than by job number, so that the same run lands in
# the same folder (and resumes there) whatever else the sweep holds. Keys that do not change what
# a run computes stay out of the name, as does the study's own name.
NOT_IN_RUN_NAMES = ("experiment", *result_neutral_keys())
# What run.py exits with when SIGINT or SIGTERM stopped it.
INTERRUPTED = (130, 143)
SWEEP_LAYOUT = (f"hydra.sweep.subdir={DIRNAME}",
                f"{EXCLUDED_FROM_NAMES}=[{','.join(NOT_IN_RUN_NAMES)}]")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=STUDIES)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the sweep")
    parser.add_argument("--sweep-dir", type=Path, metavar="DIR",
                        help="where the runs go (default: multirun/STUDY)")
    parser.add_argument("--no-reuse", action="store_true",
                        help="train every run, even one another study below the sweep folder's "
                             "parent has already trained with the same config")
    parser.add_argument("--analyse-only", type=Path, metavar="DIR",
                        help="analyse the runs below DIR instead of running the sweep")
    parser.add_argument("--status", action="store_true",
                        help="list the study's runs and how far each has got, with an estimate "
                             "of the training time left; starts nothing")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="where the figures and tables go (default: results/STUDY, not "
                             "tracked)")
    parser.add_argument("--update-results", action="store_true",
                        help="write the figures and tables to the committed "
                             "experiments/results/STUDY and refresh the study's section of "
                             "RESULTS.md (what a maintainer commits)")
    parser.add_argument("--reps", type=int, default=BOOTSTRAP_REPS,
                        help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--videos", action="store_true",
                        help="also record each group's best seed (analysis --videos); with "
                             "--update-results the study's RESULTS.md section then shows a strip "
                             "of its frames")
    args = parser.parse_args(argv)
    if args.update_results and args.out:
        parser.error("--update-results writes to experiments/results/STUDY: leave out --out")

    if args.status:
        try:
            print(study_status_text(args.study, args.overrides, args.sweep_dir, args.no_reuse))
        except UnnamedRuns as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0
    sweep_status = 0
    if args.analyse_only:
        sweep_dir = args.analyse_only
    else:
        sweep_dir = (args.sweep_dir or ROOT / "multirun" / args.study).resolve()
        reuse = [] if args.no_reuse else [f"reuse_from={sweep_dir.parent}"]
        sweeps = study_sweeps(args.study, for_sweeps(args.overrides))
        if not args.no_reuse:
            copy_tunings(args.study, sweep_dir, reuse_root(sweep_dir, args.overrides))
        for command in tune_commands(args.study, sweep_dir, args.overrides):
            print("tuning:", " ".join(command), flush=True)
            sweep_status = run_sweep(command)
            if sweep_status:
                print(f"the tuning exited with {sweep_status}; the same command resumes it",
                      file=sys.stderr)
                sweeps = []  # the tuned lines wait for their tunings, the study for both
                break
        if sweeps and tunings(args.study):
            try:
                sweeps += [[*tuned, *for_sweeps(args.overrides)]
                           for tuned in tuned_sweeps(args.study, sweep_dir, NOT_IN_RUN_NAMES)]
            except RuntimeError as error:
                print(f"{error}; the tuned lines wait for it", file=sys.stderr)
                sweep_status = sweep_status or 1
        for overrides in sweeps:
            # a sweep that names its folders its own way (a tuned line's) keeps its way
            layout = [o for o in SWEEP_LAYOUT if not any(
                o.split("=", 1)[0] == own.split("=", 1)[0] for own in overrides)]
            command = [sys.executable, str(ROOT / "run.py"), "-m", f"experiment={args.study}",
                       f"hydra.sweep.dir={sweep_dir}", *layout, *reuse, *overrides]
            print("running:", " ".join(command), flush=True)
            status = run_sweep(command)
            sweep_status = sweep_status or status
            if status in INTERRUPTED:  # asked to stop: the next sweep waits for the next call
                print(f"the sweep was interrupted ({status}); analysing the runs that finished. "
                      "The same command resumes the study", file=sys.stderr)
                break
            if status:
                print(f"the sweep exited with {status} (a run failed); going on, then analysing "
                      "the runs that finished", file=sys.stderr)
    if not args.analyse_only and not sweep_dir.is_dir():  # stopped before its first sweep
        print(f"no runs in {sweep_dir} yet: nothing to analyse", file=sys.stderr)
        return sweep_status or 1
    committed = ROOT / "experiments" / "results"  # what RESULTS.md shows
    out = args.out or (committed if args.update_results else ROOT / "results") / args.study
    status = analyse([str(sweep_dir), "--out", str(out), "--reps", str(args.reps),
                      *(["--videos"] if args.videos else [])])
    write_tuning_report(args.study, sweep_dir, out)
    if status == 0 and args.update_results and refresh_results_page(RESULTS_PAGE, args.study, out):
        print(f"updated the {args.study} section of {RESULTS_PAGE.name}")
    return sweep_status or status


def study_status_text(study: str, overrides: list[str], sweep_dir: Path | None,
                      no_reuse: bool) -> str:
    """What ``--status`` prints: a line per tuning, the runs of the study's sweeps (its tuned
    lines' once its tunings have ended, counted before) and the training time left."""
    sweep_dir = (sweep_dir or ROOT / "multirun" / study).resolve()
    reuse = None if no_reuse else reuse_root(sweep_dir, overrides)
    user = for_sweeps(overrides)
    sweeps, later = study_sweeps(study, user), []
    if tunings(study):
        try:
            sweeps += [[*line, *user]
                       for line in tuned_sweeps(study, sweep_dir, NOT_IN_RUN_NAMES, reuse)]
        except RuntimeError:  # the tuned lines' runs, planned once their values are known
            later = [run for name in tunings(study) for run in
                     planned_runs(study, [*line_before_tuning(study, name), *user], ())]
    runs = [run for sweep in sweeps for run in planned_runs(study, sweep, NOT_IN_RUN_NAMES)]
    states = study_status(sweep_dir, [run.name for run in runs])
    mark_stale_runs(states, runs, study, sweep_dir)
    if reuse is not None:
        mark_runs_to_copy(states, runs, study, reuse)
    lines = []
    tuning_lines = tuning_status(study, sweep_dir, reuse)
    if tuning_lines:  # the tunings come first; their best configurations' sweeps after
        lines += [f"{study}: {len(tuning_lines)} tunings, in {tuning_root(sweep_dir)}",
                  *tuning_lines]
    lines.append(format_status(study, sweep_dir, states))
    if later:
        lines.append(f"  and {len(later)} runs of the tuned lines, planned once the tunings end")
    for state, run in zip(states, runs):
        if state.budget is None:
            state.budget = planned_budget(study, run.overrides)
    pace = tuning_pace(study, sweep_dir, reuse) if tunings(study) else None
    lines.append(time_left(states, pace.step_s if pace else None,
                           sum(planned_budget(study, run.overrides) for run in later),
                           pace.hours_left if pace else 0.0))
    return "\n".join(lines)


def run_sweep(command: list[str]) -> int:
    """Run one sweep (``run.py -m``) to its end in a process group of its own, and its exit code.

    SIGINT or SIGTERM sent to this command goes to the whole group once, the sweep's job
    processes included, so every run stops at its next checkpoint and none is left training on
    its own (before, a signal to this command alone killed run.py and orphaned its workers)."""
    process = subprocess.Popen(command, cwd=ROOT, start_new_session=True)

    def forward(signum, frame):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return process.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def reuse_root(sweep_dir: Path, overrides: list[str]) -> Path:
    """Where the study's runs look for finished twins to copy: the user's ``reuse_from=``
    (relative to the repository, where the sweep runs), else the sweep folder's parent."""
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("reuse_from=")]
    return ROOT / given[-1] if given else sweep_dir.parent


def study_sweeps(study: str, overrides: list[str]) -> list[list[str]]:
    """The overrides of each sweep the study runs: its own sweep's, then each of its
    ``also_sweep`` with its own overrides first; ``overrides`` come last in every one."""
    extra = OmegaConf.load(CONF_DIR / "experiment" / f"{study}.yaml").get("also_sweep", [])
    return [[*own, *overrides] for own in [[], *extra]]


def study_block(study: str, out: Path) -> str:
    """What ``RESULTS.md`` shows of a study: its curves, the final score against a swept
    setting where there is one, its final tables, its aggregate across envs and its training
    diagnostics (the last two where the analysis wrote them)."""
    folder = out.relative_to(ROOT).as_posix()
    figures = [f"![{study}: learning curves]({folder}/curves.png)"]
    figures += [f"![{study}: final score against {path.stem.removeprefix('sensitivity_')}]"
                f"({folder}/{path.name})" for path in sorted(out.glob("sensitivity_*.png"))]
    figures += [f"![{study}: {path.stem.removesuffix('_frames')}, the best seed's final policy]"
                f"({folder}/videos/{path.name})"
                for path in sorted(out.glob("videos/*_frames.png"))]
    tables = [table for table in (table_text(out / "tuning.md"),
                                  (out / "final.md").read_text().strip()) if table]
    aggregate, diagnostics = (table_text(out / name) for name in ("aggregate.md", "diagnostics.md"))
    if aggregate:
        figures.append(f"![{study}: across tasks]({folder}/aggregate.png)")
    tables += [table for table in (aggregate, diagnostics) if table]
    return "\n\n".join([*figures, *tables]) + "\n"


def table_text(path: Path) -> str:
    """The table the analysis wrote to ``path``; empty if it wrote none (results from before
    it wrote that file, or nothing to show)."""
    return path.read_text().strip() if path.exists() else ""


def block_markers(study: str) -> tuple[str, str]:
    return (f"<!-- begin {study}: written by python -m experiments {study} -->",
            f"<!-- end {study} -->")


def refresh_results_page(page: Path, study: str, out: Path) -> bool:
    """Replace the study's block in ``page`` (between its markers) with its current outputs.

    The prose around the blocks is written by hand; the numbers inside them only ever come from
    ``experiments/results/``. Returns whether the page has a block for the study.
    """
    begin, end = block_markers(study)
    if not page.exists() or begin not in page.read_text():
        return False
    text = page.read_text()
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    page.write_text(f"{head}{begin}\n{study_block(study, out)}{end}{tail}")
    return True


if __name__ == "__main__":
    sys.exit(main())
