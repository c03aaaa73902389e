"""Each run's final score beside its peak: ``python -m analysis.peaks DIR [DIR ...]``.

The peak score (:func:`trpo.scores.peak_score`) is the best final score a run would have had,
stopped at one of its evaluations: where a line's final scores fall short, it says whether its
runs never got higher (a plateau) or got there and fell back (late collapse). Prints, per run,
the final score, the peak and where it ends, and the first evaluation at or above ``--above``;
then per line the IQMs of both and how many runs peak at or above it. Writes nothing.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Optional

from analysis.load import detect_group_keys, load_runs
from analysis.report import evaluations, final_score, make_groups
from analysis.stats import interquartile_mean
from trpo import scores

METRIC = "eval_return_mean"


def first_at_or_above(steps, values, level: float) -> Optional[float]:
    """The steps of the first evaluation at or above ``level``; None if none reaches it."""
    return next((float(s) for s, v in zip(steps, values) if v >= level), None)


def peak_tables(dirs: list[Path], above: float, group_by: Optional[list[str]] = None) -> str:
    """The two tables :mod:`analysis.peaks` prints, as markdown; ValueError if ``dirs`` hold
    no finished run."""
    runs = load_runs(dirs).runs
    if not runs:
        raise ValueError(f"no finished run below {', '.join(map(str, dirs))}")
    groups = make_groups(runs, group_by if group_by is not None else detect_group_keys(runs))
    per_run = ["| env | line | seed | final score | peak score | peak ends at (steps) | "
               f"first evaluation ≥ {above:g} (steps) |", "|---|---|---|---|---|---|---|"]
    per_line = [f"| env | line | runs | IQM of final scores | IQM of peak scores | "
                f"runs peaking ≥ {above:g} |", "|---|---|---|---|---|---|"]
    for group in groups:
        finals, peaks = [], []
        for run in sorted(group.runs, key=lambda r: r.seed):
            final = final_score(run.progress, METRIC)
            peak, at = scores.peak_score(run.progress["env_steps"].to_numpy(float),
                                         run.progress[METRIC].to_numpy(float))
            first = first_at_or_above(*evaluations(run.progress, METRIC), above)
            finals.append(final)
            peaks.append(peak)
            per_run.append(f"| {group.env} | {group.label} | {run.seed} | {final:.0f} | "
                           f"{peak:.0f} | {at:,.0f} | "
                           + (f"{first:,.0f} |" if first is not None else "never |"))
        reached = sum(p >= above for p in peaks if not math.isnan(p))
        per_line.append(f"| {group.env} | {group.label} | {len(finals)} | "
                        f"{interquartile_mean(finals):.0f} | {interquartile_mean(peaks):.0f} | "
                        f"{reached} of {len(peaks)} |")
    note = ("Final score: the mean evaluation return over a run's last 10% of steps. Peak "
            "score: the highest such mean over any stretch of 10% of its steps (the final "
            "score's, had the run stopped there).")
    return "\n".join([*per_run, "", *per_line, "", note]) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.peaks", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="folders of run folders")
    parser.add_argument("--above", type=float, required=True,
                        help="a score to count runs and first evaluations against")
    parser.add_argument("--group-by", default=None,
                        help="comma-separated config keys for the lines (default: the keys "
                             "that vary, as the analysis)")
    args = parser.parse_args(argv)
    missing = [str(d) for d in args.dirs if not d.is_dir()]
    if missing:
        parser.exit(2, f"error: no such folder: {', '.join(missing)}\n")
    group_by = args.group_by.split(",") if args.group_by else None
    try:
        sys.stdout.write(peak_tables(args.dirs, args.above, group_by))
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
