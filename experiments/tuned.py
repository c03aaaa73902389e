"""A study's tunings (``tune_first`` and ``tune_budget`` in ``conf/experiment/STUDY.yaml``).

Before the study's sweep, each entry (``[solver=trpo, env=hopper]``) is tuned with
``hydra/sweeper=tune`` under the one budget into ``multirun/<study>_tuning/<solver>-<env>/``
(beside the study's folder, so that its trials are not analysed as the study's runs). After it,
each entry's best configuration is swept over the study's seeds as ``ablation=tuned``, beside
the defaults (``ablation=none``) of the study's own sweep. The study's results get a
``tuning.md`` (what was tuned, with which budget, and what each tuning found) and each tuning's
own report and figures under ``tuning/<solver>-<env>/``.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import OmegaConf

from experiments.status import DIRNAME, EXCLUDED_FROM_NAMES, trained_here
from trpo.config import CONF_DIR, compose
from trpo.io.run_folder import find_run_folders
from trpo.tuning import JOURNAL, best_overrides, counted, reopen

ROOT = Path(__file__).resolve().parents[1]


def study_config(study: str):
    return OmegaConf.load(CONF_DIR / "experiment" / f"{study}.yaml")


def tunings(study: str) -> dict[str, list[str]]:
    """Each tuning of the study by name (``trpo-hopper``): its overrides."""
    return {"-".join(o.split("=", 1)[1] for o in entry): list(entry)
            for entry in study_config(study).get("tune_first", [])}


def tuning_root(sweep_dir: Path) -> Path:
    return sweep_dir.with_name(f"{sweep_dir.name}_tuning")


def for_sweeps(overrides: list[str]) -> list[str]:
    """The user's overrides that reach the study's sweeps: not the tune sweeper's settings."""
    return [o for o in overrides
            if not o.startswith("hydra.sweeper.") or o.startswith("hydra.sweeper.params.")]


def tune_commands(study: str, sweep_dir: Path, overrides: list[str]) -> list[list[str]]:
    """``run.py -m hydra/sweeper=tune`` for each tuning; the user's overrides (a launcher, the
    budget's ``hydra.sweeper.trials``, ...) come last, but for ``seed``, ``reuse_from`` (a
    trial's seed is its own) and the basic sweeper's ``hydra.sweeper.params``."""
    budget = list(study_config(study).get("tune_budget", []))
    passed = [o for o in overrides
              if not o.startswith(("reuse_from=", "seed=", "hydra.sweeper.params."))]
    return [[sys.executable, str(ROOT / "run.py"), "-m", "hydra/sweeper=tune", *entry, *budget,
             f"hydra.sweep.dir={tuning_root(sweep_dir) / name}", *passed]
            for name, entry in tunings(study).items()]


def tunings_to_copy(study: str, sweep_dir: Path, reuse_root: Path) -> dict[str, Path]:
    """Each tuning not started in ``sweep_dir`` whose folder (journal and trials) is under
    ``reuse_root`` (``experiments/runs/<study>_tuning/<name>``, as committed): where it is."""
    found = {}
    for name in tunings(study):
        source = tuning_root(reuse_root / study) / name
        target = tuning_root(sweep_dir) / name
        if ((source / JOURNAL).is_file() and not (target / JOURNAL).is_file()
                and source.resolve() != target.resolve()):
            found[name] = source
    return found


def copy_tunings(study: str, sweep_dir: Path, reuse_root: Path) -> None:
    """Copy each tuning :func:`tunings_to_copy` finds into the sweep's tuning folder, where the
    tune command goes on from it: a finished tuning is not run again, a stopped one resumes.
    The journal is copied last, so a copy cut short is made again by the next call."""
    for name, source in tunings_to_copy(study, sweep_dir, reuse_root).items():
        target = tuning_root(sweep_dir) / name
        shutil.copytree(source, target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*.lock", JOURNAL))
        shutil.copy2(source / JOURNAL, target / JOURNAL)
        print(f"tuning {name}: copied from {source}", flush=True)


def tuning_folders(study: str, sweep_dir: Path, reuse_root: Path | None = None
                   ) -> dict[str, Path]:
    """Each tuning's folder by name: in the sweep's tuning folder, or under ``reuse_root`` for
    one the study would copy from there."""
    to_copy = tunings_to_copy(study, sweep_dir, reuse_root) if reuse_root else {}
    return {name: to_copy.get(name, tuning_root(sweep_dir) / name) for name in tunings(study)}


@dataclass
class TuningPace:
    """What the study's tunings have left, timed by the trials that finished here."""

    trials_left: int  # a trial cut mid-way counts whole
    trial_s: Optional[float]  # mean training time of a finished trial; None before one has
    step_s: Optional[float]  # training seconds per environment step of the finished trials

    @property
    def hours_left(self) -> Optional[float]:
        """Run-hours of training the trials left take (a sum, not divided among the cores);
        None if trials are left and none has finished to time them by."""
        if not self.trials_left:
            return 0.0
        return None if self.trial_s is None else self.trials_left * self.trial_s / 3600


def tuning_pace(study: str, sweep_dir: Path, reuse_root: Path | None = None) -> TuningPace:
    """The trials left in the study's tunings, and the mean training time and time per step of
    its trials that finished here (pruned ones included, so that pruning's savings count)."""
    budget = list(study_config(study).get("tune_budget", []))
    timed, left = [], 0
    for name, folder in tuning_folders(study, sweep_dir, reuse_root).items():
        if (folder / JOURNAL).is_file():
            found, _, settings = reopen(folder)
            left += max(settings.trials - counted(found), 0)
            timed += trained_here(find_run_folders([folder]))
        else:
            cfg = compose(["hydra/sweeper=tune", *tunings(study)[name], *budget],
                          return_hydra_config=True)
            left += cfg.hydra.sweeper.trials
    if not timed:
        return TuningPace(left, None, None)
    wall, steps = (sum(column) for column in zip(*timed))
    return TuningPace(left, wall / len(timed), wall / steps)


def tuning_status(study: str, sweep_dir: Path, reuse_root: Path | None = None) -> list[str]:
    """A line per tuning of the study: trials counted against its budget (completed, pruned,
    failed), those running or left running by a stopped tuning, and the best score so far; a
    tuning the study would copy from ``reuse_root`` is counted there."""
    import optuna

    folders = tuning_folders(study, sweep_dir, reuse_root)
    lines = []
    for name, folder in folders.items():
        if not (folder / JOURNAL).is_file():
            lines.append(f"  tuning {name}: not started ({folder})")
            continue
        found, _, settings = reopen(folder)
        states = [t.state for t in found.get_trials(deepcopy=False)]
        count = {state: states.count(state) for state in optuna.trial.TrialState}
        best = (f"; best so far {found.best_value:.0f} (trial {found.best_trial.number})"
                if count[optuna.trial.TrialState.COMPLETE] else "")
        lines.append(f"  tuning {name}: {counted(found)} of {settings.trials} trials "
                     f"({count[optuna.trial.TrialState.COMPLETE]} completed, "
                     f"{count[optuna.trial.TrialState.PRUNED]} pruned, "
                     f"{count[optuna.trial.TrialState.FAIL]} failed), "
                     f"{count[optuna.trial.TrialState.RUNNING]} running or to resume{best}"
                     + (f"; to be copied from {folder}"
                        if folder != tuning_root(sweep_dir) / name else ""))
    return lines


def tuned_sweeps(study: str, sweep_dir: Path, not_in_names: Sequence[str],
                 reuse_root: Path | None = None) -> list[list[str]]:
    """A sweep of each tuning's best configuration over the study's seeds, as
    ``ablation=tuned``, its run folders named by the best trial's number rather than by the
    searched values (``ablation=tuned,env=hopper,seed=0,solver=trpo,tuned_trial=7``; a longer
    tuning whose best changes trains new folders) and without ``not_in_names``; raises
    ``RuntimeError`` naming a tuning that has not started, not used its budget or completed no
    trial. A tuning still to be copied from ``reuse_root`` is read there."""
    sweeps = []
    for name, folder in tuning_folders(study, sweep_dir, reuse_root).items():
        if not (folder / JOURNAL).is_file():
            raise RuntimeError(f"the tuning {name} has not started")
        found, tuning, settings = reopen(folder)
        if counted(found) < settings.trials:
            raise RuntimeError(f"the tuning {name} has run {counted(found)} of its "
                               f"{settings.trials} trials; the same command resumes it")
        if not any(t.state.name == "COMPLETE" for t in found.get_trials(deepcopy=False)):
            raise RuntimeError(f"the tuning {name} has no completed trial to take values from")
        unnamed = [*not_in_names, *(p.key for p in tuning.space)]
        sweeps.append([*line_before_tuning(study, name),
                       *best_overrides(found.best_params),
                       f"{EXCLUDED_FROM_NAMES}=[{','.join(unnamed)}]",
                       # quoted: unquoted, Hydra reads the comma as a sweep
                       f"hydra.sweep.subdir='{DIRNAME},tuned_trial={found.best_trial.number}'"])
    return sweeps


def line_before_tuning(study: str, name: str) -> list[str]:
    """The overrides of a tuning's line but its tuned values: its entry, ``ablation=tuned``
    and the study's seeds."""
    seeds = study_config(study).hydra.sweeper.params.seed
    return [*tunings(study)[name], "ablation=tuned", f"seed={seeds}"]


def write_report(study: str, sweep_dir: Path, out: Path) -> None:
    """``out/tuning.md`` and each tuning's report under ``out/tuning/<name>/``; nothing if the
    study tunes nothing or a tuning has not started."""
    from analysis.tuning import steps_trained, write_summary

    rows, budgets = [], set()
    for name, entry in tunings(study).items():
        folder = tuning_root(sweep_dir) / name
        if not (folder / JOURNAL).is_file():
            return
        found, tuning, settings = reopen(folder)
        write_summary(found, tuning, settings, folder)
        target = out / "tuning" / name
        target.mkdir(parents=True, exist_ok=True)
        for path in folder.iterdir():
            if path.suffix in (".md", ".png", ".pdf"):
                shutil.copy2(path, target / path.name)
        states = [t.state.name for t in found.trials]
        best = found.best_trial if "COMPLETE" in states else None
        budgets.add((settings.trials, tuning.total_steps, settings.pruner,
                     settings.startup_trials, settings.warmup))
        trained = steps_trained(found.trials, tuning.total_steps)
        best_cells = (f"{best.value:.0f} | `{' '.join(best_overrides(best.params))}`"
                      if best else "– | –")
        rows.append(f"| {' '.join(entry)} | {states.count('COMPLETE')} | {states.count('PRUNED')}"
                    f" | {states.count('FAIL')} | {trained:,} | {best_cells} | "
                    f"[report](tuning/{name}/tuning.md) |")
    if not rows:
        return
    trials, steps, pruner, startup, warmup = sorted(budgets)[0]
    same = ("the same for every tuning" if len(budgets) == 1
            else "NOT the same for every tuning: see each report")
    lines = [f"Tuning budget, {same}: {trials} trials × {steps:,} steps each (at most "
             f"{trials * steps:,} steps per solver and task), seeds 1000 + the trial's number; "
             f"Optuna's TPE (multivariate, constant liar, {startup} random trials first), "
             f"{pruner} pruning after {warmup:.0%} of a trial's steps.", "",
             "| tuned | completed | pruned | failed | steps trained | best tuning score | "
             "best values | |", "|---|---|---|---|---|---|---|---|", *rows, "",
             "Tuning score: a trial's final score (its mean evaluation return over its last 10% "
             "of steps) at the tuning's steps, on its own seed. Steps trained: a pruned trial's "
             "up to the evaluation that stopped it."]
    out.mkdir(parents=True, exist_ok=True)
    (out / "tuning.md").write_text("\n".join(lines) + "\n")
