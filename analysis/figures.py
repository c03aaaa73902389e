"""Paper figures: learning curves per env and aggregate statistics across envs.

Vector PDF with embedded TrueType fonts plus a 200-dpi PNG; 8-pt text at 7 in (two-column text
width); the Okabe-Ito colour-blind-safe palette, with one colour per group fixed across every
panel and figure; legends outside the data.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

import pandas as pd  # noqa: E402

from analysis import stats  # noqa: E402
from analysis.load import CHOICE_GROUPS, values_label  # noqa: E402
from analysis.report import (METRIC_LABELS, MIN_SEEDS, Aggregate, Group,  # noqa: E402
                             aggregate_scores, curve_on_grid, evaluations, in_a_sentence, step_grid)

log = logging.getLogger("analysis")
# fontTools reports each font it subsets for a PDF at INFO; under Hydra's logging that is a
# screenful per figure.
logging.getLogger("fontTools").setLevel(logging.WARNING)

# Okabe & Ito (2008), "Color Universal Design": distinguishable with every colour-vision type.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000"]
LINESTYLES = ["-", "--", ":", "-."]

STYLE = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7,
    "ytick.labelsize": 7, "legend.fontsize": 7, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.5,
    "lines.linewidth": 1.4, "pdf.fonttype": 42, "ps.fonttype": 42, "savefig.dpi": 200,
    "figure.dpi": 100,
}

FULL_WIDTH_IN = 7.0
# Characters of a pairwise label ("P(trpo > npg)") that fit beside the IQM panel at 7 pt.
PAIR_LABEL_FITS = 28


def colours(labels: list[str]) -> dict[str, tuple[str, str]]:
    """A fixed (colour, line style) per group label, by sorted label, the same in every figure.

    Styles differ as well as colours, so identical curves stay visible (a dashed line over a
    solid one) and the figure survives greyscale printing.
    """
    ordered = sorted(set(labels))
    return {label: (PALETTE[i % len(PALETTE)], LINESTYLES[i % len(LINESTYLES)])
            for i, label in enumerate(ordered)}


def _steps(value: float, _position=None) -> str:
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    return f"{value / 1e3:g}k" if value >= 1e3 else f"{value:g}"


def _seeds_text(counts: list[int]) -> str:
    low, high = min(counts), max(counts)
    return f"n={low}" if low == high else f"n={low}–{high}"


def save_figure(fig: plt.Figure, out: Path, name: str) -> None:
    """``out/name.pdf`` (vector) and ``out/name.png``; closes the figure."""
    # No creation date, so regenerating a committed figure from the same runs changes nothing.
    fig.savefig(out / f"{name}.pdf", bbox_inches="tight", metadata={"CreationDate": None})
    fig.savefig(out / f"{name}.png", bbox_inches="tight")
    plt.close(fig)


def plot_curves(groups: list[Group], metric: str, reps: int = stats.BOOTSTRAP_REPS,
                panel_key: Optional[str] = None) -> plt.Figure:
    """One panel per env, one IQM line with its 95% bootstrap band per group.

    A line runs from the group's first evaluation to its last; at each step it uses the runs
    measured around it (:func:`analysis.report.curve_on_grid`), never a run's first evaluation
    carried back or its last carried forward. A group none of whose runs was measured twice is
    drawn as points, with a warning.

    With ``panel_key`` (one of the group keys) there is a panel per env and value of that key,
    and the lines are the values of the other keys, styled alike in every panel: eight lines
    of solver × δ become two panels of four.
    """
    def panel_of(group: Group) -> tuple[str, str]:
        if panel_key is None:
            return group.env, group.env
        return group.env, f"{group.env}, {values_label({panel_key: group.keys[panel_key]})}"

    def line_of(group: Group) -> str:
        if panel_key is None:
            return group.label
        return values_label({k: v for k, v in group.keys.items() if k != panel_key}) or "runs"

    panels = sorted({panel_of(g) for g in groups})
    style = colours([line_of(g) for g in groups])
    seed_counts = {label: [g.seeds for g in groups if line_of(g) == label] for label in style}
    columns = min(len(panels), 3)
    rows = int(np.ceil(len(panels) / columns))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(rows, columns, squeeze=False,
                                 figsize=(FULL_WIDTH_IN, 2.1 * rows + 0.5))
        for ax, panel in zip(axes.flat, panels):
            for group in (g for g in groups if panel_of(g) == panel):
                grid = step_grid(group.runs, metric)
                if grid.size == 0:
                    continue
                curves = np.array([curve_on_grid(run.progress, metric, grid)
                                   for run in group.runs])
                iqm, low, high = stats.curve_iqm_ci(curves, reps=reps)
                colour, linestyle = style[line_of(group)]
                if max(len(evaluations(run.progress, metric)[0]) for run in group.runs) < 2:
                    # No run was measured twice: points with their intervals, no line.
                    log.warning("%s / %s: each run measured %s at one step only, so its curve "
                                "is a point per step (evaluate more often: eval_every)",
                                group.env, group.label, metric)
                    at = ~np.isnan(iqm)
                    ax.errorbar(grid[at], iqm[at], yerr=[iqm[at] - low[at], high[at] - iqm[at]],
                                color=colour, linestyle="none", marker="o", markersize=3,
                                capsize=2, elinewidth=0.8)
                    continue
                ax.plot(grid, iqm, color=colour, linestyle=linestyle)
                ax.fill_between(grid, low, high, color=colour, alpha=0.2, linewidth=0)
            ax.set_title(panel[1])
            ax.set_xlabel("Environment steps")
            ax.xaxis.set_major_formatter(FuncFormatter(_steps))
            ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        handles = [plt.Line2D([], [], color=c, linestyle=ls, linewidth=2) for c, ls in
                   style.values()]
        labels = [f"{label} ({_seeds_text(seed_counts[label])})" for label in style]
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4),
                   frameon=False, bbox_to_anchor=(0.5, 1.0))
        fig.text(0.5, -0.02, "Lines: interquartile mean over seeds; bands: 95% stratified-"
                 "bootstrap confidence intervals; n = seeds.", ha="center", va="top", fontsize=7)
        fig.tight_layout()
    return fig


def plot_aggregate(groups: list[Group], metric: str, references: dict[str, tuple],
                   reps: int = stats.BOOTSTRAP_REPS,
                   scores: Optional[Aggregate] = None) -> plt.Figure:
    """IQM across envs, probability of improvement and performance profiles, with 95% CIs
    (``scores``, or :func:`analysis.report.aggregate_scores` of ``groups``)."""
    scores = scores or aggregate_scores(groups, metric, references, reps=reps)
    matrices, envs = scores.matrices, scores.envs
    labels = list(matrices)
    style = colours([g.label for g in groups])
    pairs = list(scores.improvement)
    pair_labels = [f"P({a} > {b})" for a, b in pairs]
    with plt.rc_context(STYLE):
        # Up to four lines with short names: the three panels side by side. Otherwise the
        # pairwise panel's labels would run into the IQM panel.
        if len(pairs) <= 6 and max(map(len, pair_labels), default=0) <= PAIR_LABEL_FITS:
            fig, (ax_iqm, ax_poi, ax_profile) = plt.subplots(
                1, 3, figsize=(FULL_WIDTH_IN, 2.4), gridspec_kw={"width_ratios": [1, 1.2, 1.3]})
        else:  # the pairwise panel gets the full width and a row per pair
            pairs_height = 0.14 * len(pairs) + 0.4
            fig = plt.figure(figsize=(FULL_WIDTH_IN, 2.6 + pairs_height))
            grid = fig.add_gridspec(2, 2, height_ratios=[2.2, pairs_height],
                                    width_ratios=[1, 1.3])
            ax_iqm, ax_profile = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
            ax_poi = fig.add_subplot(grid[1, :])
        for y, label in enumerate(labels):
            iqm, low, high = scores.iqm[label]
            colour = style[label][0]
            ax_iqm.plot([low, high], [y, y], color=colour, linewidth=6, alpha=0.35,
                        solid_capstyle="butt")
            ax_iqm.plot([iqm], [y], "|", color=colour, markersize=12, markeredgewidth=2)
        ax_iqm.set_yticks(range(len(labels)), labels)
        ax_iqm.set_ylim(-0.7, len(labels) - 0.3)
        ax_iqm.set_xlabel("IQM of normalised score")
        ax_iqm.set_title(f"IQM across {len(envs)} envs" if len(envs) > 1 else f"IQM on {envs[0]}")

        for y, (a, b) in enumerate(pairs):
            probability, low, high = scores.improvement[(a, b)]
            ax_poi.plot([low, high], [y, y], color=style[a][0], linewidth=6, alpha=0.35,
                        solid_capstyle="butt")
            ax_poi.plot([probability], [y], "|", color=style[a][0], markersize=12,
                        markeredgewidth=2)
        ax_poi.axvline(0.5, color="grey", linewidth=0.8, linestyle="--")
        ax_poi.set_yticks(range(len(pairs)), pair_labels)
        ax_poi.set_ylim(-0.7, max(len(pairs), 1) - 0.3)
        ax_poi.set_xlim(0, 1)
        ax_poi.set_xlabel("Probability of improvement")
        ax_poi.set_title("Pairwise comparison")

        if matrices:
            every = np.concatenate([m.ravel() for m in matrices.values()])
            margin = 0.05 * max(every.max() - every.min(), 1e-3)
            thresholds = np.linspace(every.min() - margin, every.max() + margin, 101)
        for label in labels:
            profile = stats.performance_profile(matrices[label], thresholds)
            low, high = stats.performance_profile_ci(matrices[label], thresholds, reps=reps)
            colour, linestyle = style[label]
            ax_profile.plot(thresholds, profile, color=colour, linestyle=linestyle,
                            label=label)
            ax_profile.fill_between(thresholds, low, high, color=colour, alpha=0.2,
                                    linewidth=0)
        ax_profile.set_xlabel("Normalised score τ")
        ax_profile.set_ylabel("Fraction of runs > τ")
        ax_profile.set_title("Performance profile")
        ax_profile.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
        counts = {label: m.shape[0] for label, m in matrices.items()}
        runs_text = (f"{next(iter(counts.values()))} seeds per line"
                     if len(set(counts.values())) == 1 else
                     ", ".join(f"{label}: {n} seeds" for label, n in counts.items()))
        few = min(counts.values(), default=MIN_SEEDS) < MIN_SEEDS
        caption = caption_lines([f"Final {metric} {scores.how}", "95% stratified-bootstrap CIs",
                                 runs_text + (f" (fewer than {MIN_SEEDS}: the intervals are "
                                              "provisional)" if few else "")])
        fig.text(0.5, -0.02, caption + ".", ha="center", va="top", fontsize=7)
        fig.tight_layout()
    return fig


def caption_lines(parts: list[str], width: int = 130) -> str:
    """``parts`` joined by "; ", a new line started only between parts, so that a caption never
    breaks inside a parenthesis as matplotlib's own wrapping did."""
    lines = [parts[0]]
    for part in parts[1:]:
        if len(lines[-1]) + 2 + len(part) > width:
            lines[-1] += ";"
            lines.append(part)
        else:
            lines[-1] += "; " + part
    return "\n".join(lines)


def swept_numeric_keys(table: pd.DataFrame, keys: list[str]) -> list[str]:
    """The line keys that are numbers taking at least three values in one env (a swept setting
    such as ``solver.max_kl``), for which a final score against the value makes a figure."""
    swept = []
    for key in keys:
        if key in CHOICE_GROUPS or key not in table:
            continue
        column = table[key]
        numeric = (pd.api.types.is_numeric_dtype(column)
                   and not pd.api.types.is_bool_dtype(column))
        if numeric and table.groupby("env")[key].nunique().max() >= 3:
            swept.append(key)
    return swept


def plot_sensitivity(table: pd.DataFrame, key: str, keys: list[str], metric: str
                     ) -> plt.Figure:
    """Final score against the swept setting ``key``: one panel per env, one line per value of
    the other line keys, each point the IQM over seeds with its 95% bootstrap CI (from
    :func:`analysis.report.final_table`). A log axis when the values span a decade or more."""
    others = [k for k in keys if k != key]

    table = table.assign(line=[values_label({k: row[k] for k in others})
                               for _, row in table.iterrows()])
    envs = sorted(table["env"].unique())
    style = colours(list(table["line"]))
    values = np.sort(table[key].unique())
    log_axis = values.min() > 0 and values.max() / values.min() >= 10
    # Lines are drawn side by side around each value so their intervals do not hide each other.
    offsets = {label: i - (len(style) - 1) / 2 for i, label in enumerate(style)}
    columns = min(len(envs), 3)
    rows = int(np.ceil(len(envs) / columns))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(rows, columns, squeeze=False,
                                 figsize=(min(FULL_WIDTH_IN, 3.4 * columns), 2.3 * rows + 0.5))
        for ax, env in zip(axes.flat, envs):
            for label, points in table[table["env"] == env].groupby("line"):
                points = points.sort_values(key)
                x = points[key].to_numpy(float)
                x = x * 1.06 ** offsets[label] if log_axis else x + 0.01 * offsets[label] * (
                    values.max() - values.min())
                iqm, low, high = (points[c].to_numpy(float) for c in ("iqm", "iqm_lo", "iqm_hi"))
                colour, linestyle = style[label]
                ax.errorbar(x, iqm, yerr=[iqm - low, high - iqm],
                            color=colour, linestyle=linestyle, marker="o", markersize=3,
                            capsize=2, elinewidth=0.8, label=label)
            if log_axis:
                ax.set_xscale("log")
            ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.minorticks_off()
            ax.set_title(env)
            ax.set_xlabel(key)
            ax.set_ylabel(f"Final {in_a_sentence(METRIC_LABELS.get(metric, metric))}")
        for ax in list(axes.flat)[len(envs):]:
            ax.set_visible(False)
        seeds = _seeds_text(list(table["seeds"]))
        if others:  # with no other line key there is one line, and nothing to tell apart
            handles = [plt.Line2D([], [], color=c, linestyle=ls, marker="o", markersize=3)
                       for c, ls in style.values()]
            fig.legend(handles, list(style), loc="lower center", ncol=min(len(style), 4),
                       frameon=False, bbox_to_anchor=(0.5, 1.0))
        fig.text(0.5, -0.02, f"Points: interquartile mean over seeds ({seeds}) of each run's "
                 "final score; bars: 95% stratified-bootstrap confidence intervals.",
                 ha="center", va="top", fontsize=7, wrap=True)
        fig.tight_layout()
    return fig
