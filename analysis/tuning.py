"""A tuning's report: ``tuning.md`` with its search space, sampler, pruner, budget and best trial,
and two figures from the study (the optimisation history, the parameters' importances).

Written into the sweep folder by the ``tune`` sweeper when a tuning ends (``trpo.tuning``), and
again by ``python -m analysis.tuning SWEEP_DIR``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from analysis.figures import PALETTE, STYLE, save_figure
from trpo.scores import FINAL_WINDOW
from trpo.tuning import (JOURNAL, TRIAL_SEED_BASE, Tuning, TuningSettings, best_overrides,
                         import_optuna, trial_folder)


def write_summary(study, tuning: Tuning, settings: TuningSettings, sweep_dir: Path) -> Path:
    """Write ``tuning.md``, ``history.png``/``.pdf`` and ``importances.png``/``.pdf`` (the
    latter once two trials have completed) into ``sweep_dir``; returns the page's path."""
    optuna = import_optuna()
    state = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    complete = sorted((t for t in trials if t.state == state.COMPLETE), key=lambda t: -t.value)
    counts = {name: sum(t.state == s for t in trials)
              for name, s in (("completed", state.COMPLETE), ("pruned", state.PRUNED),
                              ("failed", state.FAIL), ("running", state.RUNNING))}
    diverged = sum(_diverged(sweep_dir / trial_folder(t.number)) for t in trials
                   if t.state == state.PRUNED)
    base = " ".join(tuning.base_overrides)
    lines = [f"# Tuning: {base or 'the defaults'}", "",
             f"`python run.py -m hydra/sweeper=tune {base} hydra.sweeper.trials={settings.trials}"
             f" hydra.sweep.dir={sweep_dir}` (the study: `{sweep_dir / JOURNAL}`, "
             f"`{settings.study}`).", "",
             "| budget | |", "|---|---|",
             f"| trials | {settings.trials}, {settings.parallel} at a time |",
             f"| steps per trial | {tuning.total_steps:,} |",
             f"| environment steps in all | at most {settings.trials * tuning.total_steps:,}; "
             f"{steps_trained(trials, tuning.total_steps):,} trained (a pruned trial "
             "up to the evaluation that stopped it) |",
             f"| seeds | {TRIAL_SEED_BASE} + the trial's number |",
             f"| objective | the trial's final score: mean evaluation return over its last "
             f"{FINAL_WINDOW:.0%} of steps |",
             f"| sampler | Optuna's TPE, multivariate, constant liar; {settings.startup_trials}"
             f" random trials first; seed {settings.sampler_seed} |",
             f"| pruner | {_pruner_text(tuning.pruner)} |", "",
             "| searched | values | scale |", "|---|---|---|",
             *(f"| `{p.key}` | {_values_text(p)} | "
               f"{'choices' if p.choices is not None else 'log' if p.log else 'linear'} |"
               for p in tuning.space), "",
             "Trials: " + ", ".join(f"{n} {name}" for name, n in counts.items() if n)
             + (f" ({diverged} of the pruned diverged: non-finite values)" if diverged else "")
             + ".", ""]
    if complete:
        best = complete[0]
        params = " ".join(best_overrides(best.params))
        lines += [f"**Best**: trial {best.number} (`{trial_folder(best.number)}`), final score "
                  f"{best.value:.1f}. To train it on a reported seed: "
                  f"`python run.py {base} {params} seed=0`.", "",
                  "| trial | final score | " + " | ".join(f"`{p.key}`" for p in tuning.space)
                  + " |", "|---|---|" + "---|" * len(tuning.space),
                  *(f"| {t.number} | {t.value:.1f} | "
                    + " | ".join(_shown(t.params.get(p.key)) for p in tuning.space) + " |"
                    for t in complete[:10]), "",
                  "The ten best completed trials. ![history](history.png)", ""]
        _plot_history(trials, state, sweep_dir)
        if len(complete) >= 2:
            importances = optuna.importance.get_param_importances(study)
            _plot_importances(importances, sweep_dir)
            lines += ["![importances](importances.png)", "",
                      "Importance: Optuna's default evaluator (PED-ANOVA in Optuna 5.1), over "
                      "the completed trials, normalised to sum to 1.", ""]
    page = sweep_dir / "tuning.md"
    page.write_text("\n".join(lines))
    return page


def steps_trained(trials, total_steps: int) -> int:
    """The environment steps a tuning's trials have trained: a completed one its budget, any
    other up to its last evaluation reported to the study."""
    complete = import_optuna().trial.TrialState.COMPLETE
    return sum(total_steps if t.state == complete else max(t.intermediate_values, default=0)
               for t in trials)


def _diverged(run_dir: Path) -> bool:
    from trpo.io.run_folder import RunFolder

    return run_dir.is_dir() and RunFolder(run_dir).state() == "failed"


def _pruner_text(spec: dict[str, Any]) -> str:
    if spec["name"] == "none":
        return "none: every trial runs to its end"
    return ("Optuna's median rule: a trial whose evaluation is below the median of the "
            "evaluations at that step of the trials finished before its batch was launched "
            f"stops, once {spec['startup_trials']} trials have finished and after its first "
            f"{spec['warmup_steps']:,} steps")


def _values_text(parameter) -> str:
    if parameter.choices is not None:
        return ", ".join(map(_shown, parameter.choices))
    return f"{_shown(parameter.low)} to {_shown(parameter.high)}" + (
        ", integers" if parameter.integer else "")


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _plot_history(trials, state, out: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(3.4, 2.4))
        done = [t for t in trials if t.state == state.COMPLETE]
        pruned = [t for t in trials if t.state == state.PRUNED and t.intermediate_values]
        ax.scatter([t.number for t in done], [t.value for t in done], s=12, color=PALETTE[0],
                   label="completed: final score", zorder=3)
        if pruned:
            ax.scatter([t.number for t in pruned],
                       [t.intermediate_values[max(t.intermediate_values)] for t in pruned], s=12,
                       marker="x", color=PALETTE[3], label="pruned: last evaluation", zorder=3)
        if done:
            order = sorted(done, key=lambda t: t.number)
            ax.step([t.number for t in order], np.maximum.accumulate([t.value for t in order]),
                    where="post", color=PALETTE[0], linewidth=1.0, label="best so far")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("trial")
        ax.set_ylabel("return")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
        save_figure(fig, out, "history")


def _plot_importances(importances: dict[str, float], out: Path) -> None:
    import matplotlib.pyplot as plt

    names = list(importances)[::-1]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(3.4, 0.35 * len(names) + 0.8))
        ax.barh(names, [importances[n] for n in names], color=PALETTE[0])
        ax.set_xlabel("importance (Optuna's PED-ANOVA, normalised)")
        ax.set_xlim(0, max(1.0, max(importances.values(), default=1.0)))
        save_figure(fig, out, "importances")


def main(argv=None) -> int:
    """``python -m analysis.tuning SWEEP_DIR``: write the tuning's report again."""
    from trpo.tuning import reopen

    parser = argparse.ArgumentParser(prog="python -m analysis.tuning", description=__doc__)
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    if not (args.sweep_dir / JOURNAL).is_file():
        parser.error(f"{args.sweep_dir} holds no {JOURNAL}: not a tuning's sweep folder")
    study, tuning, settings = reopen(args.sweep_dir)
    print(write_summary(study, tuning, settings, args.sweep_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
