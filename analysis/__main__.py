"""``python -m analysis DIR [DIR ...] --out OUT [--videos]``: figures and tables from run
folders, and with ``--videos`` a video of each group's best run (:mod:`analysis.videos`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from analysis.figures import (plot_aggregate, plot_curves, plot_sensitivity, save_figure,
                              swept_numeric_keys)
from analysis.load import detect_group_keys, drop_unmeasured, load_runs, task_references
from analysis.report import (MIN_SEEDS, aggregate_markdown, aggregate_scores,
                             diagnostics_markdown, diagnostics_table, few_seeds, final_table,
                             make_groups, write_tables)
from analysis.stats import BOOTSTRAP_REPS
from analysis.videos import write_videos

log = logging.getLogger("analysis")


class UsageError(Exception):
    """A bad command-line argument: one line."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print its usage too: one line is enough
        raise UsageError(message)


def whole_number(text: str) -> int:
    """``text`` as a whole number of at least 1 (``--reps``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    """The arguments; raises :class:`UsageError` for bad ones."""
    parser = Parser(
        prog="python -m analysis",
        description="Learning curves, IQM tables with bootstrap CIs and aggregate statistics "
                    "from Hydra run and multirun folders.")
    parser.add_argument("dirs", nargs="+", type=Path,
                        help="run or multirun folders (searched recursively)")
    parser.add_argument("--out", type=Path, required=True, help="folder for figures and tables")
    parser.add_argument("--group-by", default=None,
                        help="comma-separated config keys that name a line (default: the keys "
                             "that differ between runs, seed aside), e.g. solver,advantage")
    parser.add_argument("--metric", default="eval_return_mean",
                        help="progress.csv column to plot and score (default: %(default)s)")
    parser.add_argument("--include-incomplete", action="store_true",
                        help="use runs that have not logged their whole budget (running, or "
                             "interrupted), with their actual length (default: skip them, "
                             "with a warning)")
    parser.add_argument("--videos", action="store_true",
                        help="also play one deterministic episode of each group's best run (by "
                             "final score) and write OUT/videos/<task>_<label>.mp4 and a strip "
                             "of its frames, <task>_<label>_frames.png; a video that cannot be "
                             "made here is a warning saying what to install (default: off, it "
                             "costs an episode per group)")
    parser.add_argument("--allow-module", action="append", default=[], metavar="MODULE",
                        help="with --videos, import MODULE for a task named MODULE:Id (tasks "
                             "are made only from modules you name)")
    parser.add_argument("--reps", type=whole_number, default=BOOTSTRAP_REPS,
                        help="bootstrap resamples, at least 1 (default: %(default)s)")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        raise UsageError(f"not a folder: {', '.join(missing)}")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} is a file, not a folder")
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    report = load_runs(args.dirs, include_incomplete=args.include_incomplete)
    columns = sorted({c for run in report.runs for c in run.progress.columns})
    if report.runs and args.metric not in columns:
        print(f"error: --metric {args.metric} is not a progress.csv column; columns: "
              f"{', '.join(columns)}", file=sys.stderr)
        return 2
    drop_unmeasured(report, args.metric)
    for path, why in report.skipped:
        log.warning("skipped %s: %s", path, why)
    for path, why in report.incomplete_used:
        log.warning("using incomplete run %s (%s)", path, why)
    if not report.runs:
        where = ", ".join(str(d) for d in args.dirs)
        print(f"error: no usable runs below {where} (a run is a folder with .hydra/config.yaml "
              f"and progress.csv; {len(report.skipped)} skipped)", file=sys.stderr)
        return 1
    runs = report.runs
    keys = args.group_by.split(",") if args.group_by else detect_group_keys(runs)
    unknown = [k for k in keys if not any(k in run.config for run in runs)]
    if unknown:
        print(f"error: --group-by {','.join(unknown)} is not a config key of these runs",
              file=sys.stderr)
        return 2
    groups = make_groups(runs, keys)
    runs = [run for group in groups for run in group.runs]  # each seed once
    seed_counts = {(g.env, g.label): g.seeds for g in groups}
    if len(set(seed_counts.values())) > 1:
        log.warning("groups have different seed counts: %s", ", ".join(
            f"{env}/{label}: {n}" for (env, label), n in sorted(seed_counts.items())))
    few = {f"{env}/{label}": n for (env, label), n in sorted(seed_counts.items())
           if n < MIN_SEEDS}
    if few:
        log.warning("fewer than %d seeds: %s; the intervals are provisional", MIN_SEEDS,
                    few_seeds(few, len(seed_counts)))
    log.info("%d runs in %d envs; lines by %s", len(runs), len({r.env for r in runs}),
             ", ".join(keys) or "(nothing differs: one line per env)")

    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"error: --out {args.out} cannot be made: {error.strerror or error}",
              file=sys.stderr)
        return 2
    table = final_table(groups, args.metric, reps=args.reps)
    write_tables(table, runs, args.metric, args.out, args.dirs)
    (args.out / "diagnostics.md").write_text(diagnostics_markdown(diagnostics_table(groups)))
    # Two or more line keys: a panel per value of the first, so no panel holds every line.
    panel_key = keys[0] if len(keys) >= 2 else None
    save_figure(plot_curves(groups, args.metric, reps=args.reps, panel_key=panel_key), args.out,
                "curves")
    for key in swept_numeric_keys(table, keys):
        save_figure(plot_sensitivity(table, key, keys, args.metric), args.out,
                    f"sensitivity_{key}")
    references = task_references(runs)
    aggregate = aggregate_scores(groups, args.metric, references, reps=args.reps)
    if aggregate.envs:  # none when no env has every line: nothing to aggregate
        (args.out / "aggregate.md").write_text(aggregate_markdown(aggregate, args.metric))
        save_figure(plot_aggregate(groups, args.metric, references, reps=args.reps,
                                   scores=aggregate), args.out, "aggregate")
    if args.videos:
        write_videos(groups, args.metric, args.out, args.allow_module)
    print((args.out / "final.md").read_text())
    print(f"wrote {', '.join(sorted(p.name for p in args.out.iterdir()))} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
