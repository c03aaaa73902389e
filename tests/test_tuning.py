"""Tuning (``-m hydra/sweeper=tune``, trpo.tuning): trials are run folders with their own seeds,
the budget counts each trial once across a resume, a pruned trial stops with its checkpoint, and
bad input is one line before anything is written."""

import json
import math

import optuna
import pandas as pd
import pytest

from experiments.status import planned_runs
from tests.conftest import TINY, run_py
from trpo import tuning
from trpo.config import compose
from trpo.io.run_folder import RunFolder
from trpo.train import train

# A tiny run, less what the search space draws (critic.epochs).
BASE = ["env=cartpole", *(o for o in TINY if not o.startswith("critic.epochs="))]
TINY_KEYS = [o.split("=", 1)[0] for o in TINY]  # left out of a tiny run's folder name


def settings(**changes):
    values = dict(trials=3, parallel=2, pruner="median", startup_trials=2, warmup=0.0,
                  sampler_seed=0, study="tune")
    return tuning.TuningSettings(**{**values, **changes})


def launch_in_process(sweep_dir, launched, interrupt=()):
    """A launcher that trains each trial here, as a joblib or SLURM job would elsewhere; the
    trials in ``interrupt`` train half their steps and are left as a killed run leaves them."""

    def launch(jobs, initial_job_idx):
        for overrides in jobs:
            subdir = next(o.split("=", 1)[1] for o in overrides
                          if o.startswith("hydra.sweep.subdir="))
            run = [o for o in overrides if not o.startswith("hydra.")]
            number = int(subdir.removeprefix("trial_"))
            launched.append(number)
            if number in interrupt:
                train(compose([*run, "total_steps=128"]), sweep_dir / subdir)
                RunFolder(sweep_dir / subdir).write_status("running", iteration=1)
            else:
                train(compose(run), sweep_dir / subdir)

    return launch


def test_a_tuning_runs_its_budget_as_trials_with_seeds_of_their_own(tmp_path):
    launched = []
    unpruned = settings(pruner="none")
    study = tuning.drive(tuning.plan(BASE, unpruned), unpruned, tmp_path,
                         launch_in_process(tmp_path, launched))
    assert launched == [0, 1, 2]
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    for trial in study.trials:
        folder = RunFolder(tmp_path / f"trial_{trial.number:04d}")
        config = folder.read_config()
        assert config["seed"] == 1000 + trial.number
        assert folder.state() == "completed"
        for key, value in trial.params.items():  # the run trained with the trial's values
            assert config[key] == value
        rows = pd.read_csv(folder.path / "progress.csv")
        assert trial.value == pytest.approx(rows["eval_return_mean"].iloc[-1])


def test_a_stopped_tuning_resumes_its_running_trial_under_its_number(tmp_path):
    launched = []
    unpruned = settings(pruner="none")
    plan = tuning.plan(BASE, unpruned)
    first = tuning.drive(plan, unpruned, tmp_path,
                         launch_in_process(tmp_path, launched, interrupt={1}))
    assert [t.state.name for t in first.trials] == ["COMPLETE", "RUNNING"]
    params = first.trials[1].params
    study = tuning.drive(plan, unpruned, tmp_path, launch_in_process(tmp_path, launched))
    assert launched == [0, 1, 1, 2]  # trial 1 again, then one new trial: three in all
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert study.trials[1].params == params
    rows = pd.read_csv(tmp_path / "trial_0001" / "progress.csv")
    assert rows["iteration"].tolist() == [1, 2]  # resumed from its checkpoint


def a_trial(tmp_path, extra=(), startup_trials=2, finished=()):
    """A study in ``tmp_path`` with the ``finished`` trials (Optuna's FrozenTrial) and then one
    trial asked, and that trial's run config."""
    chosen = settings(trials=1 + len(finished), parallel=1, startup_trials=startup_trials)
    plan = tuning.plan([*BASE, *extra], chosen)
    study = tuning.open_study(tmp_path, chosen, plan)
    for trial in finished:
        study.add_trial(trial)
    [(number, params)] = tuning.next_batch(study, plan.space, chosen)
    overrides = tuning.trial_overrides(plan.base_overrides, number, params,
                                       tmp_path / tuning.JOURNAL, "tune")
    return study, number, compose([o for o in overrides if not o.startswith("hydra.")])


def test_a_trial_below_the_finished_trials_is_pruned_and_not_launched_again(tmp_path):
    # A finished trial far above anything CartPole gives, at the steps this run evaluates.
    high = optuna.trial.create_trial(params={}, distributions={}, value=1e9,
                                     intermediate_values={128: 1e9, 256: 1e9})
    study, number, cfg = a_trial(tmp_path, ["total_steps=384"], startup_trials=1,
                                 finished=[high])
    assert math.isnan(train(cfg, tmp_path / "trial_0001"))
    folder = RunFolder(tmp_path / "trial_0001")
    assert folder.state() == "pruned" and folder.read_status()["iteration"] == 1
    assert folder.has_checkpoint()
    assert list(study.trials[1].intermediate_values) == [128]
    # The driver stopped before telling the study: a new driver settles it, launching nothing.
    launched = []
    plan = tuning.plan([*BASE, "total_steps=384"], settings(trials=2, startup_trials=1))
    tuning.drive(plan, settings(trials=2, startup_trials=1), tmp_path,
                 launch_in_process(tmp_path, launched))
    assert launched == []
    assert study.trials[1].state == optuna.trial.TrialState.PRUNED


def test_a_trial_is_pruned_only_against_trials_finished_before_its_batch(tmp_path):
    study, number, _ = a_trial(tmp_path, startup_trials=1)
    reporter = tuning.TrialReporter(str(tmp_path / tuning.JOURNAL), "tune", number)
    # a trial of the same batch that finished first, far above: not a peer of this one
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1e9,
                                              intermediate_values={128: 1e9}))
    assert reporter.report(128, 10.0) is False
    low = optuna.trial.create_trial(params={}, distributions={}, value=1.0,
                                    intermediate_values={128: 1.0})
    (tmp_path / "later").mkdir()
    study, number, _ = a_trial(tmp_path / "later", startup_trials=1, finished=[low])
    reporter = tuning.TrialReporter(str(tmp_path / "later" / tuning.JOURNAL), "tune", number)
    assert reporter.report(128, 0.5) is True  # below the one finished before its batch


def test_a_step_reported_again_by_a_resumed_run_is_not_sent_twice(tmp_path):
    study, number, _ = a_trial(tmp_path)
    reporter = tuning.TrialReporter(str(tmp_path / tuning.JOURNAL), "tune", number)
    assert reporter.report(128, 10.0) is False  # the median pruner needs finished trials
    assert reporter.report(128, 10.0) is False
    assert study.trials[0].intermediate_values == {128: 10.0}


def test_a_resumed_tuning_draws_new_values(tmp_path):
    unpruned = settings(pruner="none", parallel=1)
    plan = tuning.plan(BASE, unpruned)
    first = tuning.drive(plan, settings(pruner="none", parallel=1, trials=1), tmp_path,
                         launch_in_process(tmp_path, []))
    study = tuning.drive(plan, settings(pruner="none", parallel=1, trials=2), tmp_path,
                         launch_in_process(tmp_path, []))
    assert study.trials[1].params != first.trials[0].params


def test_a_trial_reports_each_evaluation_but_the_last_to_its_study(tmp_path):
    study, number, cfg = a_trial(tmp_path, ["total_steps=384"])
    train(cfg, tmp_path / "trial_0000")
    rows = pd.read_csv(tmp_path / "trial_0000" / "progress.csv")
    assert study.trials[0].intermediate_values == dict(zip(rows["env_steps"][:2],
                                                           rows["eval_return_mean"][:2]))


def test_run_py_tunes_through_its_launcher_into_trial_folders_a_run_would_resume(tmp_path):
    result = run_py("-m", "hydra/sweeper=tune", *BASE, "hydra.sweeper.trials=2",
                    f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    for trial in ("trial_0000", "trial_0001"):
        folder = RunFolder(tmp_path / trial)
        assert folder.state() == "completed"
        assert folder.unproven() == []  # its log is run.log, as any run's: it resumes there
        assert (folder.path / "run.log").exists()
    assert "Trials: 2 completed." in (tmp_path / "tuning.md").read_text()


def test_bad_tuning_input_is_one_line_exit_2_and_writes_nothing(tmp_path):
    result = run_py("-m", "hydra/sweeper=tune", "env=cartpole", "hydra.sweeper.trials=0",
                    f"hydra.sweep.dir={tmp_path / 'tuning'}")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: hydra.sweeper.trials=0 is not allowed: must be an "
                                     "integer of at least 1")
    assert not (tmp_path / "tuning").exists()


@pytest.mark.parametrize("argument, message", [
    ("hydra.sweeper.pruner=mean", "error: hydra.sweeper.pruner='mean' is not allowed: must be "
                                  "one of median, none"),
    ("hydra.sweeper.trails=3", "error: hydra.sweeper.trails is not a setting of the tune "
                               "sweeper (settings: parallel, pruner, sampler_seed, "
                               "startup_trials, study, trials, warmup)"),
    ("solver.max_kl=0.02", "error: solver.max_kl='0.02' is not allowed: is searched "
                           "(conf/search_space/trpo.yaml): leave it out of the overrides"),
    ("env=cartpole,pendulum", "error: env='cartpole,pendulum' is not allowed: a tuning tunes "
                              "one configuration: give one value (or tune each in a sweep "
                              "folder of its own)"),
])
def test_each_bad_tuning_input_is_named_before_hydra_starts(argument, message):
    from trpo.cli import check_tuning

    assert check_tuning(["-m", "hydra/sweeper=tune", "env=cartpole", argument]) == message


def test_a_search_space_entry_the_run_lacks_is_one_line(monkeypatch):
    from trpo import search_space

    real = search_space.load
    monkeypatch.setattr(search_space, "load", lambda solver: [
        *real(solver), search_space.parameter("solver.max_kll", {"low": 0.1, "high": 0.2})])
    with pytest.raises(tuning.ConfigError, match=r"^search_space.params.solver.max_kll="
                                                 r".* is not a setting of this run"):
        tuning.plan(BASE, settings())


def test_the_journal_records_what_is_tuned_and_the_report_is_written(tmp_path):
    from analysis.tuning import write_summary

    plan = tuning.plan(BASE, settings(trials=2))
    study = tuning.drive(plan, settings(trials=2), tmp_path, launch_in_process(tmp_path, []))
    other = tuning.plan([*BASE, "critic.minibatch_size=32"], settings(trials=3))
    with pytest.raises(tuning.ConfigError, match="holds a study that tunes another "
                                                 r"critic.minibatch_size \("):
        tuning.open_study(tmp_path, settings(trials=3), other)
    # an override that leaves results alone may change between sessions; the budget may grow
    quiet = tuning.plan([*BASE, "checkpoint_every=3"], settings(trials=3))
    tuning.open_study(tmp_path, settings(trials=3), quiet)
    tuning.open_study(tmp_path, settings(trials=2), plan)
    again, recorded, recorded_settings = tuning.reopen(tmp_path)
    assert recorded == plan and recorded_settings == settings(trials=2)
    page = write_summary(again, recorded, recorded_settings, tmp_path).read_text()
    best = max(study.trials, key=lambda t: t.value)
    assert f"**Best**: trial {best.number}" in page
    assert " ".join(tuning.best_overrides(best.params)) in page
    assert "| trials | 2, 2 at a time |" in page
    assert "| environment steps in all | at most 512; 512 trained " in page
    assert (tmp_path / "history.png").exists() and (tmp_path / "importances.png").exists()
    assert json.loads(json.dumps(study.user_attrs["tuning"]))["total_steps"] == 256


def test_the_steps_trained_count_a_pruned_trial_to_its_last_evaluation():
    from analysis.tuning import steps_trained

    state = optuna.trial.TrialState
    trials = [optuna.trial.create_trial(state=state.COMPLETE, value=1.0),
              optuna.trial.create_trial(state=state.PRUNED, intermediate_values={128: 1.0,
                                                                                   192: 0.5}),
              optuna.trial.create_trial(state=state.RUNNING)]
    assert steps_trained(trials, total_steps=256) == 256 + 192 + 0


def test_a_study_tunes_first_then_sweeps_each_best_configuration_as_tuned(tmp_path,
                                                                          monkeypatch):
    from omegaconf import OmegaConf

    from experiments import tuned

    monkeypatch.setattr(tuned, "study_config", lambda study: OmegaConf.create({
        "tune_first": [["solver=trpo", "env=cartpole"]],
        "tune_budget": ["total_steps=256", "hydra.sweeper.trials=2"],
        "hydra": {"sweeper": {"params": {"seed": "range(3)"}}}}))
    sweep_dir = tmp_path / "multirun" / "study"
    folder = tmp_path / "multirun" / "study_tuning" / "trpo-cartpole"
    [command] = tuned.tune_commands("study", sweep_dir, ["hydra/launcher=slurm", "seed=0,1",
                                                         "reuse_from=x"])
    assert command[2:] == ["-m", "hydra/sweeper=tune", "solver=trpo", "env=cartpole",
                           "total_steps=256", "hydra.sweeper.trials=2",
                           f"hydra.sweep.dir={folder}", "hydra/launcher=slurm"]
    base = [o for o in BASE if not o.startswith("env=")]
    plan = tuning.plan(["solver=trpo", "env=cartpole", *base], settings(trials=2, parallel=1))
    assert tuned.tuning_status("study", sweep_dir) == [
        f"  tuning trpo-cartpole: not started ({folder})"]
    with pytest.raises(RuntimeError, match="the tuning trpo-cartpole has not started"):
        tuned.tuned_sweeps("study", sweep_dir, [])
    pace = tuned.tuning_pace("study", sweep_dir)  # its budget is left, with no trial to time
    assert (pace.trials_left, pace.hours_left, pace.step_s) == (2, None, None)
    assert tuned.line_before_tuning("study", "trpo-cartpole") == [
        "solver=trpo", "env=cartpole", "ablation=tuned", "seed=range(3)"]
    tuning.drive(plan, settings(trials=2, parallel=1), folder,
                 launch_in_process(folder, [], interrupt={1}))
    with pytest.raises(RuntimeError, match="the tuning trpo-cartpole has run 1 of its 2 trials"):
        tuned.tuned_sweeps("study", sweep_dir, [])
    [line] = tuned.tuning_status("study", sweep_dir)
    assert line.startswith("  tuning trpo-cartpole: 1 of 2 trials (1 completed, 0 pruned, 0 "
                           "failed), 1 running or to resume; best so far ")
    # the trial cut mid-way is left, counted as long as the finished one took
    last = RunFolder(folder / "trial_0000").progress.read().rows[-1]
    pace = tuned.tuning_pace("study", sweep_dir)
    assert pace.trials_left == 1
    assert pace.hours_left * 3600 == pytest.approx(last["wall_s"])
    assert pace.step_s == pytest.approx(last["wall_s"] / last["env_steps"])
    study = tuning.drive(plan, settings(trials=2, parallel=1), folder,
                         launch_in_process(folder, []))
    assert tuned.tuning_pace("study", sweep_dir).hours_left == 0
    [sweep] = tuned.tuned_sweeps("study", sweep_dir, ["name"])
    searched = ",".join(p.key for p in plan.space)
    assert sweep == ["solver=trpo", "env=cartpole", "ablation=tuned", "seed=range(3)",
                     *tuning.best_overrides(study.best_params),
                     f"hydra.job.config.override_dirname.exclude_keys=[name,{searched}]",
                     "hydra.sweep.subdir='${hydra:job.override_dirname},tuned_trial="
                     f"{study.best_trial.number}'"]
    # --status plans the tuned line's runs by their folders' names: the searched keys left out,
    # the best trial's number added; the line's sweep runs and makes those folders
    names = [f"ablation=tuned,env=cartpole,seed={n},solver=trpo,"
             f"tuned_trial={study.best_trial.number}" for n in range(3)]
    [sweep] = tuned.tuned_sweeps("study", sweep_dir, ["experiment", *TINY_KEYS])
    assert [run.name for run in planned_runs("tuned_solver_comparison", [*sweep, *TINY],
                                             ())] == names
    done = run_py("-m", "experiment=tuned_solver_comparison", *sweep, *TINY,
                  f"hydra.sweep.dir={tmp_path / 'tuned_line'}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "tuned_line").iterdir() if p.is_dir()) == names
    tuned.write_report("study", sweep_dir, tmp_path / "out")
    table = (tmp_path / "out" / "tuning.md").read_text()
    assert "the same for every tuning: 2 trials × 256 steps each" in table
    assert f"| solver=trpo env=cartpole | 2 | 0 | 0 | 512 | {study.best_value:.0f} |" in table
    assert (tmp_path / "out" / "tuning" / "trpo-cartpole" / "tuning.md").exists()


def test_a_committed_tuning_is_copied_and_goes_on_where_it_stopped(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from experiments import tuned

    monkeypatch.setattr(tuned, "study_config", lambda study: OmegaConf.create({
        "tune_first": [["solver=trpo", "env=cartpole"]],
        "tune_budget": ["total_steps=256", "hydra.sweeper.trials=2"]}))
    committed = tmp_path / "experiments" / "runs"
    source = committed / "study_tuning" / "trpo-cartpole"
    base = [o for o in BASE if not o.startswith("env=")]
    plan = tuning.plan(["solver=trpo", "env=cartpole", *base], settings(trials=2, parallel=1))
    tuning.drive(plan, settings(trials=2, parallel=1), source,
                 launch_in_process(source, [], interrupt={1}))
    journal = (source / tuning.JOURNAL).read_bytes()
    sweep_dir = tmp_path / "multirun" / "study"
    [line] = tuned.tuning_status("study", sweep_dir, committed)
    assert line.startswith("  tuning trpo-cartpole: 1 of 2 trials (1 completed")
    assert line.endswith(f"; to be copied from {source}")

    tuned.copy_tunings("study", sweep_dir, committed)
    target = tmp_path / "multirun" / "study_tuning" / "trpo-cartpole"
    assert not list(target.rglob("*.lock"))
    assert tuned.tunings_to_copy("study", sweep_dir, committed) == {}  # copied once, not again
    launched = []
    study = tuning.drive(plan, settings(trials=2, parallel=1), target,
                         launch_in_process(target, launched))
    assert launched == [1]  # the stopped trial resumes; the finished one is not run again
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
    assert (source / tuning.JOURNAL).read_bytes() == journal  # the committed copy is untouched


def test_a_tuning_stopped_and_resumed_asks_for_and_prunes_the_same_trials_as_one_straight_run(
        tmp_path):
    chosen = settings(trials=6, parallel=2, startup_trials=2)
    plan = tuning.plan([*BASE, "total_steps=384"], chosen)

    def history(study):
        # The interrupted trial's first evaluation is its helper run's last, which a trial does
        # not report (the objective): its intermediate values are compared from 256 steps on.
        return [(t.number, t.state.name, t.params, t.value,
                 {s: v for s, v in t.intermediate_values.items() if t.number != 3 or s > 128})
                for t in study.trials]

    straight = tuning.drive(plan, chosen, tmp_path / "straight",
                            launch_in_process(tmp_path / "straight", []))
    stopped = tmp_path / "stopped"
    launched = []
    tuning.drive(plan, chosen, stopped, launch_in_process(stopped, launched, interrupt={3}))
    resumed = tuning.drive(plan, chosen, stopped, launch_in_process(stopped, launched))
    assert launched == [0, 1, 2, 3, 3, 4, 5]  # trial 3 again, alone, before the next batch
    assert history(resumed) == history(straight)
    assert "PRUNED" in [t.state.name for t in straight.trials]  # the pruner had a say
