"""Hyperparameter tuning with Optuna, each trial a run like any other.

``python run.py -m hydra/sweeper=tune solver=trpo env=cartpole hydra.sweeper.trials=20`` tunes
the solver's search space (``conf/search_space/<solver>.yaml``, :mod:`trpo.search_space`) for
the configuration the other overrides give. The sweeper (``conf/hydra/sweeper/tune.yaml``, the
plug-in in ``hydra_plugins/trpo_tuning``) asks the study for a batch of trials, launches them
through the configured Hydra launcher (joblib's processes, SLURM's jobs) and tells the study
each one's outcome. The study lives in ``optuna.journal`` in the sweep folder, a file that every
process shares with no database server (Optuna's ``JournalFileBackend``, over NFS too).

A trial is a run in ``<sweep dir>/trial_<number>`` with seed ``1000 + number``, so tuning
seeds never meet the seeds results are reported on (0-9; the screens' 100-102). It reports each
evaluation to the study (:class:`TrialReporter`) and stops, with status ``pruned``, when the
study's pruner says so; its objective is its final score (:func:`trpo.scores.final_score`).

The same command resumes a stopped tuning (``hydra.sweep.dir`` as before): a trial that was
running starts again under its own number from its folder's checkpoint, so no trial is counted
twice. One process drives a study at a time (``tuning.lock``).
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from trpo.config import ConfigError, require
from trpo.search_space import Parameter

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("trpo")

# Trial n trains with seed 1000 + n: disjoint from the seeds of every reported study.
TRIAL_SEED_BASE = 1000
JOURNAL = "optuna.journal"
DRIVER_LOCK = "tuning.lock"
PRUNERS = ("median", "none")
INSTALL_HINT = "tuning needs Optuna: pip install 'trpo-lab[tune]'"


@dataclass(frozen=True)
class TuningSettings:
    """The sweeper's settings (``hydra.sweeper.*``, conf/hydra/sweeper/tune.yaml)."""

    trials: int  # the budget: trials run to their end or pruned, each of total_steps steps
    parallel: int  # trials launched at once, one job each
    pruner: str  # median (Optuna's MedianPruner) or none
    startup_trials: int  # trials sampled at random before TPE, and finished before any is pruned
    warmup: float  # share of a trial's steps before it may be pruned
    sampler_seed: int
    study: str

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad setting (``hydra.sweeper.trials``)."""
        try:
            for name in ("trials", "parallel"):
                value = getattr(self, name)
                require(isinstance(value, int) and value >= 1, name, "must be an integer of at "
                        "least 1", value)
            require(isinstance(self.startup_trials, int) and self.startup_trials >= 0,
                    "startup_trials", "must be an integer of at least 0", self.startup_trials)
            require(self.pruner in PRUNERS, "pruner", f"must be one of {', '.join(PRUNERS)}",
                    self.pruner)
            require(0.0 <= self.warmup < 1.0, "warmup", "must be in [0, 1)", self.warmup)
            require(bool(self.study) and "/" not in self.study, "study",
                    "must be a name without /", self.study)
        except ConfigError as error:
            raise error.under("hydra.sweeper") from None


def import_optuna():
    """Optuna, quiet but for warnings; a one-line :class:`ConfigError` if it is missing."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("hydra/sweeper", INSTALL_HINT, "tune") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def journal_storage(path: Path):
    optuna = import_optuna()
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def make_pruner(spec: dict[str, Any]):
    """The pruner a study's ``pruner`` attribute describes; the driver and each trial's run build
    it alike, so a trial decides as the study would."""
    optuna = import_optuna()
    if spec["name"] == "none":
        return optuna.pruners.NopPruner()
    return batch_median_pruner(spec["startup_trials"], spec["warmup_steps"])


# A trial's user attribute: the number of the first trial of the batch it was launched in.
BATCH_START = "batch_start"


def batch_median_pruner(startup_trials: int, warmup_steps: int):
    """Optuna's median rule (``MedianPruner``) over the trials that had finished when the
    trial's batch was launched (those numbered below its :data:`BATCH_START`), not those that
    finish while it runs: a stopped and resumed tuning then prunes as one run straight through.
    A trial stops at an evaluation below the median of those trials' evaluations at the same
    step, once ``startup_trials`` of them have finished and from ``warmup_steps`` steps on."""
    optuna = import_optuna()

    class BatchMedianPruner(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            step = trial.last_step
            if step is None or step < warmup_steps:
                return False
            before = trial.user_attrs.get(BATCH_START, trial.number)
            finished = [t for t in study.get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if t.number < before]
            if not finished or len(finished) < startup_trials:
                return False
            score = trial.intermediate_values[step]
            if math.isnan(score):
                return True
            peers = [t.intermediate_values[step] for t in finished
                     if step in t.intermediate_values]
            peers = [value for value in peers if not math.isnan(value)]
            return bool(peers) and score < statistics.median(peers)

    return BatchMedianPruner()


# ------------------------------------------------------------------------------- the driver


@dataclass(frozen=True)
class Tuning:
    """What a study tunes, recorded in it at creation; a resumed tuning must tune the same."""

    base_overrides: tuple[str, ...]  # the run's overrides, the same for every trial
    space: tuple[Parameter, ...]
    total_steps: int
    pruner: dict[str, Any]
    config: dict[str, Any] = field(compare=False, default_factory=dict)  # base_overrides', resolved

    def record(self) -> dict[str, Any]:
        return {"base_overrides": list(self.base_overrides),
                "space": [asdict(p) for p in self.space], "total_steps": self.total_steps,
                "pruner": self.pruner, "config": self.config}

    def differences(self, recorded: dict[str, Any]) -> list[str]:
        """What a recorded tuning tunes otherwise: the space, steps, pruner, or a config key
        that changes results (other overrides that leave results alone may differ)."""
        from omegaconf import OmegaConf

        from trpo.config import config_changes

        wanted = _jsonable(self.record())
        changed = [k for k in ("space", "total_steps", "pruner") if recorded.get(k) != wanted[k]]
        return changed + config_changes(recorded.get("config", {}),
                                        OmegaConf.create(self.config))


def plan(base: Sequence[str], settings: TuningSettings) -> Tuning:
    """What ``-m hydra/sweeper=tune BASE`` tunes, checked before anything is written; raises
    :class:`ConfigError` (one line) for a bad setting, override or search space."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from trpo import search_space
    from trpo.config import GROUP_SCHEMAS, compose, validate_config

    settings.validate()
    import_optuna()
    for override in OverridesParser.create().parse_overrides(list(base)):
        key, value = override.key_or_group, override.input_line.split("=", 1)[-1]
        if override.is_sweep_override():
            raise ConfigError(key, "a tuning tunes one configuration: give one value (or tune "
                              "each in a sweep folder of its own)", value)
        if key == "seed":
            raise ConfigError(key, f"is set per trial ({TRIAL_SEED_BASE} + the trial's number); "
                              "leave it out", value)
    cfg = compose(list(base))
    validate_config(cfg)
    solver = next(name for name, schema in GROUP_SCHEMAS["solver"].items()
                  if OmegaConf.get_type(cfg.solver) is schema)
    space = search_space.load(solver)
    given = dict(o.lstrip("+").split("=", 1) for o in base)
    for parameter in space:
        if parameter.key in given:
            raise ConfigError(parameter.key, f"is searched (conf/search_space/{solver}.yaml): "
                              "leave it out of the overrides", given[parameter.key])
    search_space.check(space, list(base))
    pruner = {"name": settings.pruner, "startup_trials": settings.startup_trials,
              "warmup_steps": int(settings.warmup * cfg.total_steps)}
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return Tuning(tuple(base), tuple(space), int(cfg.total_steps), pruner, config)


def drive(tuning: Tuning, settings: TuningSettings, sweep_dir: Path, launch) -> "optuna.Study":
    """Run the tuning in ``sweep_dir`` to its budget: batches of trials from :func:`next_batch`
    through ``launch`` (a Hydra launcher's), each one's outcome told to the study. Stops early,
    its running trials left to resume, if a trial was interrupted. Returns the study."""
    from trpo.io.run_folder import RunFolderBusy, RunLock

    sweep_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(sweep_dir / DRIVER_LOCK)
    try:
        lock.acquire()
    except RunFolderBusy:
        raise ConfigError("hydra.sweep.dir", f"is being tuned by {lock.holder()}: one process "
                          "drives a study", str(sweep_dir)) from None
    try:
        study = open_study(sweep_dir, settings, tuning)
        log.info("tuning %s: %d trials of %s steps into %s (to resume, the same command with "
                 "hydra.sweep.dir=%s)", " ".join(tuning.base_overrides) or "the defaults",
                 settings.trials, f"{tuning.total_steps:,}", sweep_dir, sweep_dir)
        settle_ended_trials(study, sweep_dir)
        job = 0
        while batch := next_batch(study, tuning.space, settings):
            try:
                launch([trial_overrides(tuning.base_overrides, number, params,
                                        sweep_dir / JOURNAL, settings.study)
                        for number, params in batch], initial_job_idx=job)
            except (Exception, SystemExit) as error:  # a job that exited: its folder says how
                log.warning("a job of this batch ended with %s: %s", type(error).__name__,
                            str(error).splitlines()[0] if str(error) else "")
            job += len(batch)
            outcomes = [record_outcome(study, number, sweep_dir / trial_folder(number))
                        for number, _ in batch]
            log.info("%s", progress_line(study, settings))
            if "interrupted" in outcomes:
                log.warning("a trial was interrupted: the same command (hydra.sweep.dir=%s) "
                            "resumes it from its checkpoint", sweep_dir)
                break
        return study
    finally:
        lock.release()


def settle_ended_trials(study: "optuna.Study", sweep_dir: Path) -> None:
    """Tell the study the outcome of each trial it has as running whose run has ended
    (completed, pruned, failed: a driver stopped before it could tell), so that only the
    trials cut mid-way are launched again."""
    import optuna

    from trpo.io.run_folder import RunFolder

    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        run_dir = sweep_dir / trial_folder(trial.number)
        if run_dir.is_dir() and RunFolder(run_dir).state() in ("completed", "pruned", "failed"):
            record_outcome(study, trial.number, run_dir)


def progress_line(study: "optuna.Study", settings: TuningSettings) -> str:
    """``tuning: 6 of 20 trials (4 completed, 2 pruned); best 487.3 (trial 3)``."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    state = optuna.trial.TrialState
    states = {name: sum(t.state == s for t in trials) for name, s in
              (("completed", state.COMPLETE), ("pruned", state.PRUNED), ("failed", state.FAIL))}
    done = ", ".join(f"{n} {name}" for name, n in states.items() if n)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value, default=None)
    return (f"tuning: {counted(study)} of {settings.trials} trials ({done or 'none done'})"
            + (f"; best {best.value:.1f} (trial {best.number})" if best else ""))


def open_study(sweep_dir: Path, settings: TuningSettings, tuning: Tuning) -> "optuna.Study":
    """The study in ``sweep_dir``'s journal, created if new; raises :class:`ConfigError` if it
    exists and tunes something else (:meth:`Tuning.differences`)."""
    optuna = import_optuna()
    storage = journal_storage(sweep_dir / JOURNAL)
    study = optuna.create_study(study_name=settings.study, storage=storage,
                                pruner=make_pruner(tuning.pruner), direction="maximize",
                                load_if_exists=True)
    recorded = study.user_attrs.get("tuning")
    if recorded is None:
        study.set_user_attr("tuning", _jsonable(tuning.record()))
    elif changed := tuning.differences(recorded):
        shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4
                                          else "")
        raise ConfigError("hydra.sweep.dir", f"holds a study that tunes another {shown} "
                          f"({sweep_dir / JOURNAL}); resume it with its own overrides, or tune "
                          "into a new folder", str(sweep_dir))
    study.set_user_attr("settings", asdict(settings))  # the latest (a resumed tuning's budget)
    return study


def reopen(sweep_dir: Path) -> tuple["optuna.Study", Tuning, TuningSettings]:
    """A tuning's study in ``sweep_dir`` with what it tunes and its latest settings."""
    optuna = import_optuna()
    storage = journal_storage(sweep_dir / JOURNAL)
    [summary] = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    record = study.user_attrs["tuning"]
    tuning = Tuning(tuple(record["base_overrides"]),
                    tuple(Parameter(**{**p, "choices": tuple(p["choices"]) if p["choices"]
                                       is not None else None}) for p in record["space"]),
                    record["total_steps"], record["pruner"], record.get("config", {}))
    return study, tuning, TuningSettings(**study.user_attrs["settings"])


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value))


def counted(study: "optuna.Study") -> int:
    """Trials that count against the budget: finished, pruned or failed."""
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.FAIL)
    return sum(t.state in done for t in study.get_trials(deepcopy=False))


def next_batch(study: "optuna.Study", space: Sequence[Parameter], settings: TuningSettings
               ) -> list[tuple[int, dict[str, Any]]]:
    """Up to ``settings.parallel`` trials to launch, as (number, parameters): those left running
    by a stopped tuning (their runs resume) as a batch of their own, else new ones while the
    budget allows.

    Trial n's values are drawn by a TPE sampler seeded with ``sampler_seed + n`` from the trials
    before it, and it is pruned against the trials finished before its batch
    (:func:`batch_median_pruner`); so a tuning stopped and resumed, in any session, asks for and
    prunes the same trials as one run straight through."""
    import optuna

    running = [t for t in study.get_trials(deepcopy=False)
               if t.state == optuna.trial.TrialState.RUNNING]
    if running:
        return [(t.number, dict(t.params)) for t in running[:settings.parallel]]
    batch: list[tuple[int, dict[str, Any]]] = []
    while len(batch) < settings.parallel and counted(study) + len(batch) < settings.trials:
        number = len(study.trials)
        study.sampler = optuna.samplers.TPESampler(
            n_startup_trials=settings.startup_trials, seed=settings.sampler_seed + number,
            multivariate=True, constant_liar=True)
        trial = study.ask()
        trial.set_user_attr(BATCH_START, batch[0][0] if batch else trial.number)
        batch.append((trial.number, {p.key: p.suggest(trial) for p in space}))
    return batch


def trial_overrides(base: Sequence[str], number: int, params: dict[str, Any], journal: Path,
                    study: str) -> list[str]:
    """A trial's run: the base overrides, its parameters, its seed, folder and study link."""
    return [*base, *best_overrides(params),
            f"seed={TRIAL_SEED_BASE + number}", f"hydra.sweep.subdir={trial_folder(number)}",
            f"trial.storage={_override_value(str(journal))}",
            f"trial.study={_override_value(study)}", f"trial.number={number}"]


def best_overrides(params: dict[str, Any]) -> list[str]:
    """A trial's parameters as overrides that give back its values exactly."""
    return [f"{key}={_override_value(value)}" for key, value in params.items()]


def trial_folder(number: int) -> str:
    return f"trial_{number:04d}"


def _override_value(value: Any) -> str:
    """A value as Hydra's override grammar reads it back unchanged."""
    if value is None:
        return "null"
    if isinstance(value, str):
        if "'" in value or "\\" in value:
            raise ConfigError("search_space", "a value with a quote or a backslash cannot be "
                              "passed to a trial", value)
        return f"'{value}'"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def record_outcome(study: "optuna.Study", number: int, run_dir: Path) -> str:
    """Tell the study how trial ``number`` ended, read from its run folder: ``completed`` (its
    final score), ``pruned``, ``diverged`` (non-finite values: pruned, as rl-baselines3-zoo
    counts them), ``failed`` (also a folder with no readable status); or ``interrupted``, which
    leaves it running, to be resumed."""
    import optuna

    from trpo.io.run_folder import RunFolder
    from trpo.scores import final_score_of_rows

    folder = RunFolder(run_dir)
    state = folder.state() if run_dir.is_dir() else "failed"
    if state == "unknown":  # no readable status: the run never started, or cannot say how
        state = "failed"
    if state == "completed":
        score = final_score_of_rows(folder.progress.read().rows)
        if math.isfinite(score):
            study.tell(number, score)
            return "completed"
        state = "failed"
    if state == "pruned":
        study.tell(number, state=optuna.trial.TrialState.PRUNED)
        return "pruned"
    if state == "failed":
        error = str(folder.read_status().get("error", "")) if run_dir.is_dir() else ""
        if error.startswith("TrainingError") and "non-finite" in error:
            study.tell(number, state=optuna.trial.TrialState.PRUNED)
            return "diverged"
        study.tell(number, state=optuna.trial.TrialState.FAIL)
        return "failed"
    return "interrupted"


# ------------------------------------------------------------------------------ a trial's run


class TrialReporter:
    """A trial's run's link to its study: :meth:`report` records an evaluation as the trial's
    intermediate value at its step, and says whether the study's pruner stops the trial."""

    def __init__(self, storage: str, study: str, number: int):
        optuna = import_optuna()
        journal = journal_storage(Path(storage))
        self.study = optuna.load_study(study_name=study, storage=journal)
        self.study.pruner = make_pruner(self.study.user_attrs["tuning"]["pruner"])
        study_id = journal.get_study_id_from_name(study)
        self.storage = journal
        self.trial_id = journal.get_trial_id_from_study_id_trial_number(study_id, number)
        self.trial = optuna.trial.Trial(self.study, self.trial_id)

    def report(self, step: int, value: float) -> bool:
        """Record ``value`` at ``step`` (once: a resumed run's repeated step is not sent again);
        True if the trial should stop here."""
        if not math.isfinite(value):
            return False  # a failed evaluation is the run's own error to raise
        reported = self.storage.get_trial(self.trial_id).intermediate_values
        if step not in reported:
            self.trial.report(value, step)
        return self.trial.should_prune()


def reporter_for(trial_cfg) -> Optional[TrialReporter]:
    """The run's :class:`TrialReporter` if it is a tuning trial (``trial.*`` set), else None."""
    if trial_cfg.number is None:
        return None
    return TrialReporter(trial_cfg.storage, trial_cfg.study, int(trial_cfg.number))
