"""From loaded runs to final scores, curves on a common step grid, and the tables."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import stats
from analysis.load import CHOICE_GROUPS, OTHER_CHOICES, Run, group_label
from trpo import scores
from trpo.config import is_result_neutral
from trpo.scores import FINAL_WINDOW

log = logging.getLogger("analysis")

# Fewer seeds than this and a table or figure says its intervals are provisional: Agarwal et al.
# (2021) show bootstrap CIs over 3 runs or fewer under-cover, and Henderson et al. (2018) ask
# for at least 5 runs per setting.
MIN_SEEDS = 5
# Points of the common step grid on which seeds are aggregated.
GRID_POINTS = 100
# Solver options that are reference baselines: a pairwise comparison reads P(line > baseline).
BASELINES = ("sb3_trpo",)


def final_score(progress: pd.DataFrame, metric: str = "eval_return_mean",
                window: float = FINAL_WINDOW) -> float:
    """A run's final score on ``metric`` (:func:`trpo.scores.final_score`): the mean over the
    rows in the last ``window`` of its environment steps, else its last logged value."""
    return scores.final_score(progress["env_steps"].to_numpy(float),
                              progress[metric].to_numpy(float), window)


def evaluations(progress: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The steps at which ``metric`` was measured (a number logged) and its values there."""
    logged = progress.dropna(subset=[metric])
    return logged["env_steps"].to_numpy(float), logged[metric].to_numpy(float)


def step_grid(runs: list[Run], metric: str, points: int = GRID_POINTS) -> np.ndarray:
    """Steps from the first step at which any of ``runs`` measured ``metric`` to the last one:
    ``points`` evenly spaced, and every step at which one of them was measured; empty if none
    ever was."""
    measured = [evaluations(run.progress, metric)[0] for run in runs]
    steps = np.unique(np.concatenate(measured)) if measured else np.array([])
    if steps.size == 0:
        return steps
    return np.union1d(np.linspace(steps[0], steps[-1], points), steps)


def curve_on_grid(progress: pd.DataFrame, metric: str, grid: np.ndarray) -> np.ndarray:
    """``metric`` linearly interpolated at ``grid`` between the steps where it was measured;
    NaN before the first of them and after the last (a curve is never carried backward or
    forward beyond what was measured)."""
    steps, values = evaluations(progress, metric)
    if steps.size == 0:
        return np.full(grid.shape, np.nan)
    curve = np.interp(grid, steps, values)
    curve[(grid < steps[0]) | (grid > steps[-1])] = np.nan
    return curve


@dataclass
class Group:
    """The runs of one line in one env panel."""

    env: str
    label: str
    keys: dict  # group key -> value
    runs: list[Run]

    @property
    def seeds(self) -> int:
        return len(self.runs)


def make_groups(runs: list[Run], keys: list[str]) -> list[Group]:
    """Runs split by env and by the values of ``keys``, in a stable order; a seed counts once.

    Of two or more runs with the same task, group and seed, the first by path is used and each
    other one is left out with a warning naming both paths. Rather than an error, because a
    run reached twice is one measurement, not two seeds: a copy another study made of it
    (``reuse_from``), a sweep launched again into a second folder, or two analysed folders that
    hold the same runs. Pooling it would narrow the intervals falsely, and stopping would make a
    parent folder of several studies impossible to analyse. The rule does not depend on the
    order in which folders are given. Where the two differ in a config value that changes
    results, the warning names it: a ``--group-by`` that includes it draws them apart.
    """
    groups: dict[tuple, Group] = {}
    first: dict[tuple, Run] = {}
    for run in sorted(runs, key=lambda r: str(r.path)):
        label = group_label(run, keys)
        seed = (run.env, label, run.seed)
        if seed in first:
            warn_duplicate(first[seed], run)
            continue
        first[seed] = run
        group = groups.setdefault((run.env, label), Group(
            run.env, label, {k: run.config.get(k) for k in keys}, []))
        group.runs.append(run)
    return sorted(groups.values(), key=lambda g: (g.env, g.label))


def warn_duplicate(kept: Run, dropped: Run) -> None:
    """Say that ``dropped`` is left out as a duplicate of ``kept``, and what differs."""
    differ = [k for k in sorted(set(kept.config) | set(dropped.config))
              if kept.config.get(k) != dropped.config.get(k) and k not in OTHER_CHOICES
              and not is_result_neutral(k)]
    log.warning("duplicate run left out: %s has the task, group and seed of %s (%s, seed %s); "
                "a seed counts once per group, so the first by path is used%s", dropped.path,
                kept.path, kept.env, kept.seed,
                f"; they differ in {', '.join(differ)} (--group-by with it draws them apart)"
                if differ else "")


def max_of_mean_curve(runs: list[Run], metric: str) -> float:
    """The highest value over training of the across-seed mean of ``metric``.

    Only steps at which every run logged the metric count (the runs of one group share their
    evaluation schedule). This is the protocol of Tianshou's MuJoCo benchmark ("the maximum over
    training of the mean over seeds"), reported beside it for comparison; it is optimistic next
    to a final score. NaN if the runs never logged at a common step.
    """
    columns = [run.progress.dropna(subset=[metric]).set_index("env_steps")[metric]
               for run in runs]
    mean_curve = pd.concat(columns, axis=1, join="inner").mean(axis=1)
    return float(mean_curve.max()) if not mean_curve.empty else math.nan


def final_table(groups: list[Group], metric: str,
                reps: int = stats.BOOTSTRAP_REPS) -> pd.DataFrame:
    """One row per env × group: keys, ``seeds``, ``iqm`` with its 95% CI, ``mean``, ``std``
    (sample std over seeds of the final scores) and ``max_mean_curve``."""
    rows = []
    for group in groups:
        scores = np.array([final_score(run.progress, metric) for run in group.runs])
        scores = scores[~np.isnan(scores)]
        if scores.size == 0:
            log.warning("%s / %s: no run logged %s; left out of the tables", group.env,
                        group.label, metric)
            continue
        column = scores[:, None]
        low, high = stats.stratified_bootstrap_ci(stats.interquartile_mean, column, reps=reps)
        rows.append({"env": group.env, **group.keys, "group": group.label,
                     "seeds": int(scores.size), "iqm": stats.interquartile_mean(column),
                     "iqm_lo": low, "iqm_hi": high, "mean": stats.mean(column),
                     "std": float(scores.std(ddof=1)) if scores.size > 1 else math.nan,
                     "max_mean_curve": max_of_mean_curve(group.runs, metric)})
    return pd.DataFrame(rows)


@dataclass
class Aggregate:
    """Final scores across envs: per line a ``[runs, envs]`` matrix of normalised scores, its IQM
    with a 95% CI, and for each pair of lines P(a > b) with a 95% CI."""

    envs: list[str]
    how: str  # how the scores were normalised, for a caption
    matrices: dict[str, np.ndarray]
    iqm: dict[str, tuple[float, float, float]]  # label -> (IQM, low, high)
    improvement: dict[tuple[str, str], tuple[float, float, float]]  # (a, b) -> (P, low, high)


def aggregate_scores(groups: list[Group], metric: str, references: dict[str, tuple],
                     reps: int = stats.BOOTSTRAP_REPS) -> Aggregate:
    """The lines' final scores across the envs every line has, normalised per env by the env
    config's (random, reference) returns when every env has them, else by the min and max final
    score over the runs compared in that env.

    Where a line has different seed counts across envs, its first runs (by seed) up to the
    smallest count are used, so its matrix is rectangular. Pairs read P(a > b) with ``b`` the
    line of a reference baseline (its runs' solver is one of :data:`BASELINES`) where one of the
    two is, else in label order.
    """
    raw = {(g.env, g.label): np.array([final_score(r.progress, metric)
                                       for r in sorted(g.runs, key=lambda r: r.seed)])
           for g in groups}
    baselines = {g.label for g in groups
                 if any(run.config.get("solver") in BASELINES for run in g.runs)}
    labels = sorted({g.label for g in groups}, key=lambda label: (label in baselines, label))
    envs = sorted(set.intersection(*({g.env for g in groups if g.label == label}
                                     for label in labels))) if labels else []
    left_out = sorted({g.env for g in groups} - set(envs))
    if left_out:
        log.warning("the aggregate covers %s, the envs every line has (not %s)",
                    ", ".join(envs) or "no env", ", ".join(left_out))
    use_references = all(references.get(env, (None, None))[0] is not None and
                         references[env][1] is not None for env in envs)
    bounds = {}
    for env in envs:
        if use_references:
            bounds[env] = references[env]
        else:
            values = np.concatenate([v for (e, _), v in raw.items() if e == env])
            low, high = np.nanmin(values), np.nanmax(values)
            bounds[env] = (low, high) if high > low else (low, low + 1.0)
    how = ("normalised per env as (R − random) / (reference − random), the fixed returns of "
           "each env option (conf/env/: D4RL's where published)" if use_references
           else "min-max normalised per env over the runs compared")
    matrices = {}
    for label in labels:
        columns = [raw[(env, label)] for env in envs]
        if columns:
            runs = min(len(c) for c in columns)
            matrices[label] = np.stack([stats.normalize(c[:runs], *bounds[env])
                                        for c, env in zip(columns, envs)], axis=1)
    iqm = {label: (stats.interquartile_mean(m),
                   *stats.stratified_bootstrap_ci(stats.interquartile_mean, m, reps=reps))
           for label, m in matrices.items()}
    names = list(matrices)
    improvement = {(a, b): (stats.probability_of_improvement(matrices[a], matrices[b]),
                            *stats.stratified_bootstrap_ci(stats.probability_of_improvement,
                                                           matrices[a], matrices[b], reps=reps))
                   for i, a in enumerate(names) for b in names[i + 1:]}
    return Aggregate(envs, how, matrices, iqm, improvement)


def small_sample_note(seeds: dict[str, int]) -> str:
    """A sentence naming the groups with fewer than :data:`MIN_SEEDS` seeds (``seeds``: label
    to count), or ``""`` if none has."""
    few = {label: n for label, n in seeds.items() if n < MIN_SEEDS}
    if not few:
        return ""
    return (f"Few seeds: {few_seeds(few, len(seeds))}. With fewer than {MIN_SEEDS} runs a bootstrap interval shows "
            "which runs were drawn more than how uncertain the result is (an interval like "
            "[0.00, 0.00] means every resample agreed); read these as provisional.")


def few_seeds(few: dict[str, int], groups: int) -> str:
    """``few`` (label to seed count) named, or summarised when it is long: "npg (n=2)", or
    "21 of 25 groups have 3 seeds (Ant-v5/none, ...)"."""
    if len(few) <= 4:
        return ", ".join(f"{label} (n={n})" for label, n in few.items())
    counts = sorted(set(few.values()))
    have = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return (f"{len(few)} of {groups} groups have {have} seeds "
            f"({', '.join(list(few)[:2])}, ...)")


def aggregate_markdown(aggregate: Aggregate, metric: str) -> str:
    """The aggregate's numbers: each line's IQM of normalised final scores, and each pair's
    probability of improvement, with 95% CIs."""
    if not aggregate.matrices:
        return ""
    lines = [f"| across {', '.join(aggregate.envs)} | IQM of normalised score [95% CI] | runs |",
             "|---|---|---|"]
    lines += [f"| {label} | {value:.2f} [{low:.2f}, {high:.2f}] | "
              f"{aggregate.matrices[label].shape[0]} per env |"
              for label, (value, low, high) in aggregate.iqm.items()]
    if aggregate.improvement:
        lines += ["", "| comparison | probability of improvement [95% CI] |", "|---|---|"]
        lines += [f"| P({a} > {b}) | {value:.2f} [{low:.2f}, {high:.2f}] |"
                  for (a, b), (value, low, high) in aggregate.improvement.items()]
    lines += ["", f"Final {metric} {aggregate.how}; probability of improvement: the chance that "
              "a run of the first line beats a run of the second on an env, averaged over envs "
              "(Agarwal et al. 2021); 95% stratified-bootstrap CIs."]
    note = small_sample_note({label: m.shape[0] for label, m in aggregate.matrices.items()})
    lines += ["", note] if note else []
    return "\n".join(lines) + "\n"


# How tables and figures name progress.csv's columns.
METRIC_LABELS = {
    "eval_return_mean": "Evaluation return",
    "return_mean": "Training episode return",
    "kl": "KL(π_old ‖ π_new)",
    "kl_share": "KL per update / δ",
    "kl_obs_stats": "KL from new observation statistics",
    "update_accepted": "Updates accepted (%)",
    "linesearch_backtracks": "Line-search backtracks per update",
    "entropy": "Policy entropy (nats)",
    "episode_length_mean": "Episode length",
    "terminated_fraction": "Episodes ended by termination (%)",
    "reward_ctrl": "Control reward per step (−cost)",
    "reward_survive": "Healthy reward per step",
    "reward_contact": "Contact reward per step (−cost)",
    "reward_forward": "Forward reward per step",
    "explained_variance": "Explained variance of V",
    "value_loss": "Value loss (MSE)",
    "steps_per_s": "Environment steps per second",
}
# The training signals of the diagnostics table: (progress.csv column, whether it is averaged
# over the final score's window rather than over the whole run).
DIAGNOSTICS = (("kl", False), ("kl_share", False), ("update_accepted", False),
               ("linesearch_backtracks", False),
               ("entropy", True),
               ("episode_length_mean", True), ("terminated_fraction", True),
               ("reward_ctrl", True), ("reward_contact", True), ("reward_survive", True),
               ("explained_variance", True),
               ("value_loss", True))


def run_diagnostic(progress: pd.DataFrame, column: str, final_window: bool) -> float:
    """``column``'s mean over the run's final score's window (``final_window``,
    :func:`final_score`) or over all its logged rows; NaN if the run never logged it.

    ``kl`` over the whole run is the mean over accepted updates: a rejected one restores the
    policy and logs 0, which would mix the rejections into the step size. ``kl_share`` is not
    logged but derived: the mean over accepted updates of ``kl / trust_region``, the step's KL
    as a share of the δ it was allowed (TRPO and natural PG; a share near 1 is where TRPO's
    line search can shrink a step).
    """
    if column == "kl_share":
        if "trust_region" not in progress or "kl" not in progress:
            return math.nan
        progress = progress.assign(kl_share=progress["kl"] / progress["trust_region"])
    if column not in progress or progress[column].isna().all():
        return math.nan
    if final_window:
        return final_score(progress, column)
    if column in ("kl", "kl_share") and "update_accepted" in progress:
        accepted = progress[progress["update_accepted"] == 1]
        return float(accepted[column].mean()) if not accepted.empty else math.nan
    return float(progress[column].mean())


def diagnostics_table(groups: list[Group]) -> pd.DataFrame:
    """One row per env × group: ``seeds`` (the group's runs) and, for each column of
    :data:`DIAGNOSTICS`, over the runs that logged it (``<column>_runs`` of them) the mean of
    their :func:`run_diagnostic` (``<column>``) and the lowest and highest (``<column>_lo``,
    ``<column>_hi``)."""
    rows = []
    for group in groups:
        row = {"env": group.env, **group.keys, "group": group.label, "seeds": group.seeds}
        for column, final_window in DIAGNOSTICS:
            values = np.array([run_diagnostic(run.progress, column, final_window)
                               for run in group.runs])
            values = values[~np.isnan(values)]  # an inf is kept: a diverged run shows as one
            row[f"{column}_runs"] = int(values.size)
            row[column], row[f"{column}_lo"], row[f"{column}_hi"] = (
                (values.mean(), values.min(), values.max()) if values.size else (math.nan,) * 3)
        rows.append(row)
    return pd.DataFrame(rows)


def diagnostics_markdown(table: pd.DataFrame) -> str:
    """The diagnostics as ``mean (lowest to highest run)`` cells, a row per env × group and a
    column per training signal that some run logged; ``n=k`` where only k of the group's runs
    logged it, ``–`` where none did. Empty if no run logged any."""
    columns = [(c, final_window) for c, final_window in DIAGNOSTICS
               if c in table and table[f"{c}_runs"].any()]
    if table.empty or not columns:
        return ""
    lines = [f"| env | group | seeds | {' | '.join(METRIC_LABELS[c] for c, _ in columns)} |",
             "|---|---|---|" + "---|" * len(columns)]
    for _, row in table.sort_values(["env", "group"]).iterrows():
        cells = [_diagnostic_cell(row, c) for c, _ in columns]
        lines.append(f"| {row['env']} | {row['group']} | {row['seeds']} | {' | '.join(cells)} |")
    whole = [in_a_sentence(METRIC_LABELS[c]) for c, final_window in columns if not final_window]
    window = [in_a_sentence(METRIC_LABELS[c]) for c, final_window in columns if final_window]
    spans = ([f"{_and(whole)} over its whole training"] if whole else []) + (
        [f"{_and(window)} over its last {FINAL_WINDOW:.0%} of environment steps (the final "
         "score's window)"] if window else [])
    lines += ["", f"Training diagnostics: the mean over seeds (lowest to highest run) of each "
              f"run's average of {', and of '.join(spans)}. KL per update"
              + (" and its share of TRPO's δ are" if any(c == "kl_share" for c, _ in columns)
                 else " is")
              + " over accepted updates."
              + (" Natural PG has no line search and logs 0 backtracks."
                 if any(c == "linesearch_backtracks" for c, _ in columns) else "")]
    return "\n".join(lines) + "\n"


def _diagnostic_cell(row: pd.Series, column: str) -> str:
    runs = row[f"{column}_runs"]
    if not runs:
        return "–"
    scale = 100.0 if column in ("update_accepted", "terminated_fraction") else 1.0
    value, low, high = (_number(scale * row[f"{column}{end}"]) for end in ("", "_lo", "_hi"))
    if runs == 1:
        return f"{value} (one run)"
    return f"{value} ({low} to {high}{f', n={runs}' if runs < row['seeds'] else ''})"


def in_a_sentence(label: str) -> str:
    """``label`` inside a sentence: its first letter lower case unless it starts an acronym."""
    return label if label[:2].isupper() else label[:1].lower() + label[1:]


def _and(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return " and ".join(filter(None, [", ".join(items[:-1]), items[-1]]))


def _number(value: float) -> str:
    """Three significant digits below 100, whole numbers from 100 up (``0.00705``, ``1.69``,
    ``649``, ``4756``); ``inf`` and ``nan`` as such."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _best(table: pd.DataFrame) -> set[tuple[str, str]]:
    """(env, group) pairs with the highest IQM in their env; every one of them on a tie."""
    top = table.groupby("env")["iqm"].transform("max")
    return set(zip(table.loc[table["iqm"] == top, "env"], table.loc[table["iqm"] == top, "group"]))


def _table_rows(table: pd.DataFrame, bold, missing: str, with_seeds: bool
                ) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The envs, and per group its ``IQM [lo, hi]`` cells, the best per env passed to ``bold``."""
    envs = sorted(table["env"].unique())
    digits = 0 if table["iqm"].abs().max() >= 100 else 2
    best = _best(table)
    rows = []
    for label in sorted(table["group"].unique()):
        cells = []
        for env in envs:
            match = table[(table["env"] == env) & (table["group"] == label)]
            if match.empty:
                cells.append(missing)
                continue
            row = match.iloc[0]
            text = f"{row.iqm:.{digits}f} [{row.iqm_lo:.{digits}f}, {row.iqm_hi:.{digits}f}]"
            if with_seeds:
                text += f" (n={row.seeds})"
            cells.append(bold(text) if (env, label) in best else text)
        rows.append((label, cells))
    return envs, rows


def markdown_table(table: pd.DataFrame, metric: str) -> str:
    """Groups as rows, envs as columns, ``IQM [lo, hi] (n=seeds)`` cells, the best per env bold."""
    envs, rows = _table_rows(table, lambda text: f"**{text}**", "–", with_seeds=True)
    lines = [f"| | {' | '.join(envs)} |", "|---|" + "---|" * len(envs)]
    lines += [f"| {label} | {' | '.join(cells)} |" for label, cells in rows]
    lines.append("")
    lines.append(f"Final {metric}: interquartile mean over seeds of each run's mean over its "
                 f"last {FINAL_WINDOW:.0%} of environment steps, with 95% stratified-bootstrap "
                 "confidence intervals; n = seeds; best IQM per env in bold.")
    note = small_sample_note({f"{row.env}/{row.group}": int(row.seeds)
                              for row in table.itertuples()})
    lines += ["", note] if note else []
    return "\n".join(lines) + "\n"


def protocols_table(table: pd.DataFrame, metric: str) -> str:
    """The same final scores under the protocols that published results use, one row per
    env × group: IQM [CI], mean ± std over seeds, and the maximum of the seed-mean curve."""
    digits = 0 if table["iqm"].abs().max() >= 100 else 2
    lines = ["| env | group | IQM [95% CI] | mean ± std | max of mean curve | seeds |",
             "|---|---|---|---|---|---|"]
    for row in table.sort_values(["env", "group"]).itertuples():
        spread = f" ± {row.std:.{digits}f}" if math.isfinite(row.std) else " (one seed)"
        lines.append(f"| {row.env} | {row.group} | {row.iqm:.{digits}f} [{row.iqm_lo:.{digits}f}, "
                     f"{row.iqm_hi:.{digits}f}] | {row.mean:.{digits}f}{spread} | "
                     f"{row.max_mean_curve:.{digits}f} | {row.seeds} |")
    lines.append("")
    lines.append(f"mean ± std: over seeds of the final {metric} (sample std). Max of mean "
                 "curve: the highest point over training of the mean over seeds (Tianshou's "
                 "protocol; optimistic next to a final score).")
    return "\n".join(lines) + "\n"


def latex_table(table: pd.DataFrame, metric: str) -> str:
    """The same table as :func:`markdown_table` for a paper (booktabs), seeds in the caption."""
    envs, rows = _table_rows(table, lambda text: rf"\textbf{{{text}}}", "--", with_seeds=False)
    seeds = ", ".join(f"{g}: {n}" for g, n in table.groupby("group")["seeds"].max().items())
    lines = [f"% Final {metric}: IQM over seeds [95% stratified-bootstrap CI]; best per env in "
             f"bold; seeds {seeds}.",
             r"\begin{tabular}{l" + "c" * len(envs) + "}", r"\toprule",
             " & ".join(["", *[_tex(e) for e in envs]]) + r" \\", r"\midrule"]
    lines += [" & ".join([_tex(label), *cells]) + r" \\" for label, cells in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    return str(text).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")


def run_name(path: Path, roots: list[Path]) -> str:
    """``path`` as ``<root folder name>/<path below it>`` for the first of ``roots`` above it
    (so tables do not carry this machine's absolute paths), else as it is."""
    for root in roots:
        try:
            return (Path(root.resolve().name) / path.resolve().relative_to(root.resolve())
                    ).as_posix()
        except ValueError:
            continue
    return str(path)


def tidy_runs(runs: list[Run], roots: list[Path] = ()) -> pd.DataFrame:
    """Every logged row of every run, with the run's name (its path from the analysed folder,
    :func:`run_name`) and, as columns, the env (its id), the seed, the group choices and every
    config value that differs between the runs (the others are in each run's
    ``.hydra/config.yaml``)."""
    all_keys = sorted({k for run in runs for k in run.config})
    varying = [k for k in all_keys if len({str(run.config.get(k)) for run in runs}) > 1]
    keys = [k for k in ("seed", *CHOICE_GROUPS) if k in all_keys]
    keys += [k for k in varying if k not in keys and k != "env"]
    frames = []
    for run in runs:
        frame = run.progress.copy()
        frame.insert(0, "run", run_name(run.path, list(roots)))
        frame.insert(1, "env", run.env)
        for key in keys:
            if key not in frame:
                value = run.config.get(key)
                frame[key] = str(value) if isinstance(value, tuple) else value
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def write_tables(table: pd.DataFrame, runs: list[Run], metric: str, out: Path,
                 roots: list[Path] = ()) -> None:
    table.drop(columns=["group"]).to_csv(out / "final.csv", index=False)
    (out / "final.md").write_text(markdown_table(table, metric) + "\n"
                                  + protocols_table(table, metric))
    (out / "final.tex").write_text(latex_table(table, metric))
    # Six significant digits: the logged values carry no more information than that.
    tidy_runs(runs, roots).to_csv(out / "runs.csv", index=False, float_format="%.6g")
