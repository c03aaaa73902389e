"""Analysis: statistics against hand-computed values and rliable, grouping, final scores, tables,
figures and robustness, on run folders written here with known numbers."""

import json
import random
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from analysis import stats
from analysis.__main__ import main
from analysis.figures import (plot_aggregate, plot_curves, plot_sensitivity,
                              swept_numeric_keys)
from analysis.load import Run, detect_group_keys, load_runs, task_references
from analysis.report import (aggregate_scores, curve_on_grid, diagnostics_markdown,
                             diagnostics_table, final_score, final_table, make_groups,
                             max_of_mean_curve, step_grid)
from tests.run_folders import sweep, trust_region_sweep, write_run
from trpo import scores
from trpo.io.run_folder import RunFolder

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------- statistics

# rliable 1.2.0's numbers for small fixed score matrices, with their provenance (versions,
# resamples, seed): written by tests/rliable_reference.py, run once in a throwaway venv where
# rliable imports (pandas < 3); rliable is not installed with this project.
RLIABLE = json.loads((Path(__file__).with_name("rliable_reference.json")).read_text())
X, Y, Z = (np.array(RLIABLE["inputs"][k]) for k in ("X", "Y", "Z"))
TAUS, CURVES = RLIABLE["inputs"]["taus"], np.array(RLIABLE["inputs"]["curves"])
# Bootstrap intervals differ from rliable's by Monte-Carlo error and because the resampling
# differs (rliable draws with numpy's global RandomState, analysis.stats with a seeded
# Generator), so they are compared at 20,000 resamples within these tolerances, about twice
# the largest gap measured over five seeds (0.005, 0.017, 0, 0.025): the IQM's on scores of
# about 1; the probability of improvement's, whose values step by 1/105 (X, Y) and 1/60
# (Y, Z), so two steps; the profile's, one run of X's 21; the curve band's, whose IQM of 6
# runs takes values about 0.025 apart, on bands 0.6 to 2.5 wide.
REPS = 20_000
TOLERANCE = {"iqm": 0.01, "poi": 0.03, "profile": 1 / 21 + 1e-9, "curve": 0.05}


def naive_iqm(scores):
    """Drop the lowest and highest quarter (rounded down) of the pooled scores, one by one."""
    values = sorted(np.ravel(scores).tolist())
    for _ in range(int(0.25 * len(values))):
        values.pop(0)
        values.pop(-1)
    return sum(values) / len(values)


def test_iqm_by_hand():
    assert stats.interquartile_mean(np.arange(1, 9)) == 4.5  # mean of 3, 4, 5, 6
    assert stats.interquartile_mean([1, 2, 3, 4, 100]) == 3.0  # one cut from each end
    assert stats.interquartile_mean([1, 2, 30]) == 11.0  # fewer than 4: the mean


@pytest.mark.parametrize("shape", [(3, 1), (5, 2), (10, 3), (7, 4)])
def test_iqm_matches_naive_trimming(shape):
    scores = np.random.default_rng(sum(shape)).normal(size=shape)
    assert stats.interquartile_mean(scores) == pytest.approx(naive_iqm(scores))


def test_iqm_along_runs_matches_the_pooled_version_per_point():
    curves = np.random.default_rng(0).normal(size=(6, 5))
    np.testing.assert_allclose(stats.iqm_along_runs(curves),
                               [stats.interquartile_mean(curves[:, j]) for j in range(5)])


def test_rliable_reference_was_made_by_rliable_as_it_says():
    provenance = RLIABLE["provenance"]
    assert provenance["rliable"] == "1.2.0" and provenance["reps"] == REPS
    assert (Path(__file__).parent / Path(provenance["script"]).name).exists()


def test_point_estimates_match_rliable_exactly():
    reference = RLIABLE
    for name, scores in (("x", X), ("y", Y)):
        assert stats.interquartile_mean(scores) == pytest.approx(
            reference["aggregate_iqm"][name], rel=1e-12)
        assert stats.mean(scores) == pytest.approx(reference["aggregate_mean"][name], rel=1e-12)
    for pair, (a, b) in {"x_y": (X, Y), "y_x": (Y, X), "y_z": (Y, Z), "x_x": (X, X)}.items():
        assert stats.probability_of_improvement(a, b) == pytest.approx(
            reference["probability_of_improvement"][pair], rel=1e-12)
    np.testing.assert_allclose(stats.performance_profile(X, TAUS),
                               reference["performance_profile"]["x"], rtol=1e-12)
    iqm, _, _ = stats.curve_iqm_ci(CURVES, reps=10)
    np.testing.assert_allclose(iqm, reference["curve_iqm"], rtol=1e-12)


def test_bootstrap_intervals_match_rliable_within_the_stated_tolerance():
    for name, scores in (("x", X), ("y", Y)):
        np.testing.assert_allclose(
            stats.stratified_bootstrap_ci(stats.interquartile_mean, scores, reps=REPS),
            RLIABLE["iqm_ci"][name], atol=TOLERANCE["iqm"])
    for pair, (a, b) in {"x_y": (X, Y), "y_z": (Y, Z)}.items():
        np.testing.assert_allclose(
            stats.stratified_bootstrap_ci(stats.probability_of_improvement, a, b, reps=REPS),
            RLIABLE["probability_of_improvement_ci"][pair], atol=TOLERANCE["poi"])
    np.testing.assert_allclose(stats.performance_profile_ci(X, TAUS, reps=REPS),
                               RLIABLE["performance_profile_ci"]["x"],
                               atol=TOLERANCE["profile"])
    _, low, high = stats.curve_iqm_ci(CURVES, reps=REPS)
    np.testing.assert_allclose([low, high], RLIABLE["curve_iqm_ci"], atol=TOLERANCE["curve"])


def naive_probability_of_improvement(x, y):
    """Every pair of runs, task by task: a win counts 1, a tie ½."""
    x, y = np.asarray(x).tolist(), np.asarray(y).tolist()
    per_task = []
    for task in range(len(x[0])):
        wins = sum(1.0 if a[task] > b[task] else 0.5 if a[task] == b[task] else 0.0
                   for a in x for b in y)
        per_task.append(wins / (len(x) * len(y)))
    return sum(per_task) / len(per_task)


def naive_performance_profile(scores, taus):
    """For each τ, the share of each task's runs above it, averaged over tasks."""
    scores = np.asarray(scores).tolist()
    tasks = range(len(scores[0]))
    return [sum(sum(run[t] > tau for run in scores) / len(scores) for t in tasks) / len(tasks)
            for tau in taus]


def naive_stratified_bootstrap_ci(statistic, *score_sets, reps, seed=0):
    """Python's random module, one draw at a time: per array and task, as many runs as it has."""
    rng = random.Random(seed)
    estimates = []
    for _ in range(reps):
        resampled = []
        for scores in score_sets:
            runs, tasks = np.shape(scores)
            columns = [[scores[rng.randrange(runs)][t] for _ in range(runs)] for t in range(tasks)]
            resampled.append(np.array(columns).T)
        estimates.append(statistic(*resampled))
    return tuple(np.percentile(estimates, [2.5, 97.5]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_statistics_match_a_naive_second_implementation(seed):
    rng = np.random.default_rng(seed)
    # Whole numbers, so that ties occur between runs and with the thresholds.
    x, y = rng.integers(0, 6, size=(5, 3)), rng.integers(0, 6, size=(4, 3))
    assert stats.probability_of_improvement(x, y) == pytest.approx(
        naive_probability_of_improvement(x, y))
    taus = np.arange(-1, 7)
    np.testing.assert_allclose(stats.performance_profile(x, taus),
                               naive_performance_profile(x, taus))
    np.testing.assert_allclose(
        stats.stratified_bootstrap_ci(stats.interquartile_mean, X, reps=4000, seed=seed),
        naive_stratified_bootstrap_ci(stats.interquartile_mean, X, reps=4000, seed=seed),
        atol=0.02)  # Monte-Carlo error at 4,000 resamples: about 0.005 here


def test_probability_of_improvement_by_hand():
    assert stats.probability_of_improvement([[1], [3]], [[2], [2]]) == 0.5
    assert stats.probability_of_improvement([[2]], [[2]]) == 0.5  # a tie counts ½
    # Task 1: 3 of 4 pairs won; task 2: all won; averaged over tasks.
    x, y = [[2, 5], [4, 6]], [[1, 0], [3, 1]]
    assert stats.probability_of_improvement(x, y) == pytest.approx((3 / 4 + 1) / 2)


def test_performance_profile_by_hand():
    scores = np.array([[0.1, 0.5], [0.6, 0.9]])
    np.testing.assert_allclose(stats.performance_profile(scores, [0.0, 0.55, 1.0]),
                               [1.0, (0.5 + 0.5) / 2, 0.0])


def test_bootstrap_interval_is_seeded_contains_the_estimate_and_collapses_on_constants():
    a = stats.stratified_bootstrap_ci(stats.interquartile_mean, X, reps=500, seed=3)
    assert a == stats.stratified_bootstrap_ci(stats.interquartile_mean, X, reps=500, seed=3)
    assert a[0] <= stats.interquartile_mean(X) <= a[1]
    assert stats.stratified_bootstrap_ci(stats.interquartile_mean, np.full((4, 2), 7.0),
                                         reps=50) == (7.0, 7.0)


@pytest.mark.parametrize("statistic, score_sets", [
    (stats.interquartile_mean, (X,)), (stats.mean, (Y,)),
    (stats.probability_of_improvement, (X, Y)), (stats.probability_of_improvement, (Y, Z))])
def test_a_chunk_of_resamples_at_once_gives_the_interval_of_one_at_a_time(statistic, score_sets):
    """A statistic the bootstrap does not know is evaluated resample by resample on the same
    draws: the same interval, to rounding."""
    def one_at_a_time(*resampled):
        return statistic(*resampled)

    np.testing.assert_allclose(
        stats.stratified_bootstrap_ci(statistic, *score_sets, reps=5000, seed=4),
        stats.stratified_bootstrap_ci(one_at_a_time, *score_sets, reps=5000, seed=4), rtol=1e-12)


def test_with_the_default_resamples_an_interval_end_does_not_move_with_the_seed():
    ends = np.array([stats.stratified_bootstrap_ci(stats.interquartile_mean, X, seed=seed)
                     for seed in range(3)])
    assert np.ptp(ends, axis=0).max() < 0.005
    ends = np.array([stats.performance_profile_ci(X, TAUS, seed=seed) for seed in range(3)])
    assert np.ptp(ends, axis=0).max() < 0.01


def test_bootstrap_resamples_within_each_task():
    """Stratified: a resample never mixes tasks, so task-constant scores keep every task mean."""
    scores = np.tile([0.0, 10.0], (5, 1))  # task 0 always 0, task 1 always 10
    assert stats.stratified_bootstrap_ci(stats.mean, scores, reps=100) == (5.0, 5.0)


def test_normalize():
    np.testing.assert_allclose(stats.normalize([-20, 1607, 3234.3], -20.0, 3234.3),
                               [0, 0.5, 1], atol=1e-3)


# ---------------------------------------------------------------------------- run folders


def test_final_score_window_and_fallback():
    progress = pd.DataFrame({"env_steps": np.arange(100, 1100, 100),
                             "eval_return_mean": [np.nan, 1, np.nan, 2, np.nan, 3, np.nan, 4,
                                                  np.nan, 5]})
    assert final_score(progress) == 5.0  # last 10%: steps ≥ 900, evaluated at 1000 only
    assert final_score(progress, window=0.3) == 4.5  # steps ≥ 700: 800 and 1000
    progress.loc[9, "eval_return_mean"] = np.nan
    assert final_score(progress) == 4.0  # nothing evaluated in the window: the last one
    assert np.isnan(final_score(progress.assign(eval_return_mean=np.nan)))


def naive_peak_score(env_steps, values, window=0.1):
    """Every stretch of window·(last steps) ending at each row, written out row by row."""
    width = window * env_steps[-1]
    best = final_score(pd.DataFrame({"env_steps": env_steps, "eval_return_mean": values}),
                       window=window)
    for i, end in enumerate(env_steps):
        if np.isnan(values[i]) or end < width:
            continue
        inside = [v for s, v in zip(env_steps, values) if end - width <= s <= end
                  and not np.isnan(v)]
        best = max(best, sum(inside) / len(inside))
    return best


@pytest.mark.unit
def test_peak_score_by_hand_and_against_a_naive_version():
    steps = np.arange(100, 1100, 100, dtype=float)
    values = np.array([np.nan, 1, np.nan, 6, np.nan, 8, np.nan, 4, np.nan, 2])
    # window 0.1 = 100 steps: the stretch ending at 600 holds the evaluations at 500? none, 600: 8
    assert scores.peak_score(steps, values) == (8.0, 600.0)
    # window 0.3 = 300 steps: ending at 600, steps 300-600 hold 6 and 8
    assert scores.peak_score(steps, values, window=0.3) == (7.0, 600.0)
    rising = np.array([np.nan, 1, np.nan, 2, np.nan, 3, np.nan, 4, np.nan, 5])
    assert scores.peak_score(steps, rising) == (5.0, 1000.0)  # a run still rising peaks at its end
    assert all(np.isnan(scores.peak_score(steps, np.full(10, np.nan))))
    generator = np.random.default_rng(0)
    for _ in range(50):
        noisy = generator.normal(size=10).round(2)
        noisy[generator.random(10) < 0.4] = np.nan
        if np.isnan(noisy).all():
            continue
        for window in (0.1, 0.25, 0.5):
            assert scores.peak_score(steps, noisy, window)[0] == pytest.approx(
                naive_peak_score(steps, noisy, window))


def test_peaks_prints_each_runs_final_and_peak_score_and_counts_the_runs_above(tmp_path,
                                                                               capsys):
    from analysis import peaks

    write_run(tmp_path, "s0", seed=0, returns=[1, 9, 9, 2])  # peaked, fell back
    write_run(tmp_path, "s1", seed=1, returns=[1, 2, 3, 4])  # still rising at its end
    assert peaks.main([str(tmp_path), "--above", "5"]) == 0
    out = capsys.readouterr().out
    assert "| Hopper-v5 | trpo | 0 | 2 | 9 | 200 | 200 |" in out  # the first of equal peaks
    assert "| Hopper-v5 | trpo | 1 | 4 | 4 | 400 | never |" in out
    assert "| Hopper-v5 | trpo | 2 | 3 | 6 | 1 of 2 |" in out
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "nothing", tmp_path / "empty"):
        with pytest.raises(SystemExit) as stop:
            peaks.main([str(folder), "--above", "5"])
        assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: no finished run below {folder}"


def test_loading_resolves_interpolations_and_reads_choices(tmp_path):
    write_run(tmp_path, "a")
    (run,) = load_runs([tmp_path]).runs
    assert run.config["total_steps"] == 300 and run.complete
    assert (run.env, run.config["env"], run.config["solver"], run.seed) == (
        "Hopper-v5", "hopper", "trpo", 0)
    assert run.references == (0.0, 100.0)


def test_a_run_trained_before_its_option_stated_reference_returns_takes_the_options(tmp_path):
    """Before, the MuJoCo suite's Swimmer runs (trained before swimmer.yaml gave its bounds)
    turned the whole aggregate to min-max normalisation."""
    none = {"env.random_return": None, "env.reference_return": None}
    write_run(tmp_path, "old", extra=none)
    write_run(tmp_path, "other_task", extra=none, env_id="InvertedPendulum-v5")
    runs = {run.path.name: run for run in load_runs([tmp_path]).runs}
    assert runs["old"].references == (-20.272305, 3234.3)  # conf/env/hopper.yaml's
    assert runs["other_task"].references == (None, None)  # not the option's task


def test_a_run_is_filed_under_its_env_id_not_its_option_name(tmp_path, caplog):
    """``env=hopper env.id=InvertedPendulum-v5`` trains InvertedPendulum: before, such runs were
    pooled with the Hopper runs as hopper, and normalised by Hopper's reference returns."""
    sweep(tmp_path / "hopper", envs=("hopper",), solvers=("trpo",))
    for seed in (0, 1, 2):
        write_run(tmp_path / "pendulum", str(seed), env="hopper", env_id="InvertedPendulum-v5",
                  seed=seed, returns=[500.0, 900.0 + seed])
    runs = load_runs([tmp_path]).runs
    groups = make_groups(runs, detect_group_keys(runs))
    assert [(g.env, g.label, g.seeds) for g in groups] == [("Hopper-v5", "trpo", 3),
                                                           ("InvertedPendulum-v5", "trpo", 3)]
    references = task_references(runs)
    assert references == {"Hopper-v5": (0.0, 100.0), "InvertedPendulum-v5": (None, None)}
    assert ("3 run(s) of InvertedPendulum-v5 were composed from env option 'hopper' "
            "(Hopper-v5)") in caplog.text
    fig = plot_aggregate(groups, "eval_return_mean", references, reps=20)
    assert "min-max normalised" in " ".join(t.get_text() for t in fig.texts)
    assert main([str(tmp_path), "--out", str(tmp_path / "out"), "--reps", "20"]) == 0
    final = pd.read_csv(tmp_path / "out" / "final.csv")
    assert final[["env", "seeds", "iqm"]].values.tolist() == [["Hopper-v5", 3, 11.0],
                                                               ["InvertedPendulum-v5", 3, 901.0]]
    assert set(pd.read_csv(tmp_path / "out" / "runs.csv")["env"]) == {"Hopper-v5",
                                                                      "InvertedPendulum-v5"}


@pytest.mark.parametrize("variants, expected", [
    ({"solver": ["trpo", "npg"]}, ["solver"]),
    ({"solver": ["trpo", "npg"], "advantage.lam": [0.9, 0.97]}, ["solver", "advantage.lam"]),
    ({"solver.max_kl": [0.001, 0.01, 0.05]}, ["solver.max_kl"]),
])
def test_group_keys_are_the_values_that_differ_seed_and_env_aside(tmp_path, variants, expected):
    import itertools

    names = list(variants)
    n = 0
    for env in ("hopper", "walker"):
        for values in itertools.product(*variants.values()):
            setting = dict(zip(names, values))
            solver = setting.pop("solver", "trpo")
            for seed in (0, 1):
                # total_steps differs by env, as it does through env.default_steps
                write_run(tmp_path, str(n), env, solver, seed, extra=setting,
                          returns=[1.0] * (3 if env == "hopper" else 4))
                n += 1
    assert detect_group_keys(load_runs([tmp_path]).runs) == expected


def test_runs_on_the_mujoco_batch_and_on_gymnasium_are_one_line(tmp_path):
    """The two backends step the same transitions: their runs are seeds of one config."""
    for seed in (0, 1):
        write_run(tmp_path, f"gymnasium{seed}", seed=seed, extra={"env.backend": "gymnasium"})
    for seed in (2, 3):
        write_run(tmp_path, f"mujoco{seed}", seed=seed, extra={"env.backend": "mujoco"})
    runs = load_runs([tmp_path]).runs
    assert len(runs) == 4  # no run is taken for another's duplicate
    assert detect_group_keys(runs) == []


def test_a_swept_sub_key_within_two_solvers_is_its_own_key(tmp_path):
    n = 0
    for solver in ("trpo", "npg"):
        for max_kl in (0.01, 0.05):
            write_run(tmp_path, str(n), solver=solver, extra={"solver.max_kl": max_kl})
            n += 1
    assert detect_group_keys(load_runs([tmp_path]).runs) == ["solver", "solver.max_kl"]


def test_an_ablation_choice_names_the_lines_not_the_settings_it_changes(tmp_path):
    """conf/ablation options set several keys; the choice alone tells the lines apart."""
    settings = {"none": {}, "no_reward_norm": {"normalize_reward": False},
                "previous_defaults": {"normalize_reward": False, "advantage.lam": 0.97}}
    for n, (option, values) in enumerate(settings.items()):
        write_run(tmp_path, str(n), extra={"normalize_reward": True, **values},
                  choices={"ablation": option})
    runs = load_runs([tmp_path]).runs
    assert detect_group_keys(runs) == ["ablation"]
    assert sorted(g.label for g in make_groups(runs, ["ablation"])) == sorted(settings)


def test_final_table_matches_a_recomputation_from_progress_files(tmp_path):
    sweep(tmp_path)
    runs = load_runs([tmp_path]).runs
    table = final_table(make_groups(runs, ["solver"]), "eval_return_mean", reps=200)
    assert len(table) == 4 and set(table["seeds"]) == {3}
    for row in table.itertuples():
        finals = []
        for run in runs:
            if (run.env, run.config["solver"]) == (row.env, row.solver):
                progress = pd.read_csv(run.path / "progress.csv")
                last_tenth = progress["env_steps"] >= 0.9 * progress["env_steps"].max()
                finals.append(progress.loc[last_tenth, "eval_return_mean"].mean())
        assert row.mean == pytest.approx(np.mean(finals))
        assert row.std == pytest.approx(np.std(finals, ddof=1))
        assert row.iqm == pytest.approx(np.mean(finals))  # 3 seeds: nothing is trimmed
        assert row.iqm_lo <= row.iqm <= row.iqm_hi


def test_a_run_reached_twice_counts_once_and_the_warning_names_both(tmp_path, caplog):
    """Before, a copy of a run (another study's reuse_from, a second folder) pooled with it as
    an extra seed: n=4 from three seeds, and a narrower interval."""
    sweep(tmp_path / "a", envs=("hopper",), solvers=("trpo",))
    shutil.copytree(tmp_path / "a" / "multi" / "0", tmp_path / "b" / "copy")
    assert main([str(tmp_path / "b"), str(tmp_path / "a"), "--out", str(tmp_path / "out"),
                 "--reps", "20"]) == 0
    assert "(n=3)" in (tmp_path / "out" / "final.md").read_text()
    kept, dropped = tmp_path / "a" / "multi" / "0", tmp_path / "b" / "copy"
    assert (f"duplicate run left out: {dropped} has the task, group and seed of {kept} "
            "(Hopper-v5, seed 0); a seed counts once per group, so the first by path is used"
            ) in caplog.text
    assert len(pd.read_csv(tmp_path / "out" / "runs.csv").groupby("run")) == 3


def test_a_duplicate_that_differs_in_a_key_left_out_of_the_grouping_names_it(tmp_path, caplog):
    for n, max_kl in enumerate((0.01, 0.05)):
        write_run(tmp_path, str(n), extra={"solver.max_kl": max_kl})
    groups = make_groups(load_runs([tmp_path]).runs, ["solver"])
    assert [g.seeds for g in groups] == [1]
    assert "they differ in solver.max_kl (--group-by with it draws them apart)" in caplog.text
    assert [g.seeds for g in make_groups(load_runs([tmp_path]).runs,
                                         ["solver", "solver.max_kl"])] == [1, 1]


def test_diagnostics_average_over_the_run_or_the_final_window_by_hand():
    def run(seed, kl, entropy, solver="trpo", **more):
        columns = {"env_steps": [100, 500, 1000], "eval_return_mean": [1.0, 2.0, 3.0],
                   "kl": kl, "entropy": entropy, **more}
        return Run(path=Path(f"{solver}{seed}"), status="completed", complete=True,
                   config={"env.id": "Hopper-v5", "seed": seed, "solver": solver},
                   progress=pd.DataFrame(columns))

    # KL over the run's accepted updates: 0.02, and 0.045 (the rejected update logged 0);
    # entropy over the last 10% (step 1000 only): 1 and 3; episode length, the share of
    # episodes that terminated and the control term logged by one run.
    # KL per update / δ over accepted updates: (0.5 + 0.5 + 0.75) / 3 and (0.8 + 1.0) / 2.
    runs = [run(0, [0.01, 0.02, 0.03], [9.0, 5.0, 1.0], episode_length_mean=[2.0, 4.0, 8.0],
                terminated_fraction=[1.0, 1.0, 0.25], reward_ctrl=[-2.0, -1.0, -0.5],
                update_accepted=[1.0, 1.0, 1.0], linesearch_backtracks=[0.0, 2.0, 0.0],
                trust_region=[0.02, 0.04, 0.04]),
            run(1, [0.04, 0.0, 0.05], [9.0, 5.0, 3.0], update_accepted=[1.0, 0.0, 1.0],
                trust_region=[0.05, 0.05, 0.05]),
            run(0, [0.1, 0.1, 0.1], [1.0, 1.0, float("inf")], solver="npg")]
    table = diagnostics_table(make_groups(runs, ["solver"])).set_index("group")
    trpo = table.loc["trpo"]
    assert trpo.seeds == 2 and trpo.kl_runs == 2 and trpo.episode_length_mean_runs == 1
    assert (trpo.kl, trpo.kl_lo, trpo.kl_hi) == pytest.approx((0.0325, 0.02, 0.045))
    assert (trpo.entropy, trpo.entropy_lo, trpo.entropy_hi) == (2.0, 1.0, 3.0)
    assert trpo.update_accepted == pytest.approx(5 / 6)
    assert (trpo.kl_share, trpo.kl_share_lo, trpo.kl_share_hi) == pytest.approx(
        ((1.75 / 3 + 0.9) / 2, 1.75 / 3, 0.9))
    assert trpo.episode_length_mean == 8.0 and np.isnan(trpo.value_loss)
    markdown = diagnostics_markdown(table.reset_index())
    head, _, npg_row, trpo_row = markdown.splitlines()[:4]
    assert head == ("| env | group | seeds | KL(π_old ‖ π_new) | KL per update / δ | "
                    "Updates accepted (%) | "
                    "Line-search backtracks per update | Policy entropy (nats) | Episode length | "
                    "Episodes ended by termination (%) | Control reward per step (−cost) |")
    # no value loss: never logged; backtracks over the whole run: 2 in 3 updates
    assert trpo_row == ("| Hopper-v5 | trpo | 2 | 0.0325 (0.02 to 0.045) | "
                        "0.742 (0.583 to 0.9) | 83.3 (66.7 to 100) | "
                        "0.667 (one run) | 2 (1 to 3) | 8 (one run) | 25 (one run) | "
                        "-0.5 (one run) |")
    assert npg_row == ("| Hopper-v5 | npg | 1 | 0.1 (one run) | – | – | – | inf (one run) | – | – "
                       "| – |")
    assert markdown.splitlines()[-1] == (
        "Training diagnostics: the mean over seeds (lowest to highest run) of each run's average "
        "of KL(π_old ‖ π_new), KL per update / δ, updates accepted (%) and line-search "
        "backtracks per update over "
        "its whole training, and of policy entropy (nats), episode length, episodes ended by "
        "termination (%) and control reward per step (−cost) over its last 10% of environment "
        "steps (the final score's window). KL per update and its share of TRPO's δ are over "
        "accepted updates. Natural PG "
        "has no line search and logs 0 backtracks.")
    assert diagnostics_markdown(diagnostics_table([])) == ""


def test_max_of_mean_curve_uses_common_steps_only():
    def run(steps, values):
        return Run(path=Path("."), config={"env": "hopper", "seed": 0}, status="completed",
                   progress=pd.DataFrame({"env_steps": steps, "eval_return_mean": values}),
                   complete=True)

    a = run([100, 200, 300], [1.0, 5.0, 2.0])
    b = run([100, 200, 300], [3.0, 1.0, 6.0])
    assert max_of_mean_curve([a, b], "eval_return_mean") == 4.0  # means 2, 3, 4
    c = run([100, 300], [3.0, 6.0])  # no value at 200: that step no longer counts
    assert max_of_mean_curve([a, c], "eval_return_mean") == 4.0  # means 2, 4
    empty = run([100], [float("nan")])
    assert np.isnan(max_of_mean_curve([a, empty], "eval_return_mean"))


def test_command_writes_every_output_with_the_right_contents(tmp_path, capsys):
    sweep(tmp_path / "runs")
    out = tmp_path / "out"
    assert main([str(tmp_path / "runs"), "--out", str(out), "--reps", "200"]) == 0
    assert {p.name for p in out.iterdir()} == {
        "curves.pdf", "curves.png", "aggregate.pdf", "aggregate.png", "aggregate.md",
        "diagnostics.md", "final.csv", "final.md", "final.tex", "runs.csv"}
    # Every npg run (20-22) beats every trpo run (10-12) on both envs.
    assert "| P(npg > trpo) | 1.00 [1.00, 1.00] |" in (out / "aggregate.md").read_text()
    final = pd.read_csv(out / "final.csv")
    assert list(final.columns) == ["env", "solver", "seeds", "iqm", "iqm_lo", "iqm_hi", "mean",
                                   "std", "max_mean_curve"]
    assert final.set_index(["env", "solver"]).loc[("Walker2d-v5", "npg"), "iqm"] == pytest.approx(21)
    markdown = (out / "final.md").read_text()
    assert "| npg | **21.00 [20.00, 22.00] (n=3)** | **21.00 [20.00, 22.00] (n=3)** |" in markdown
    assert "| trpo | 11.00 [10.00, 12.00] (n=3) | 11.00 [10.00, 12.00] (n=3) |" in markdown
    assert markdown.count("**") == 4  # one bold cell per env
    # seeds 0, 1, 2 end at 20, 21, 22: mean 21, std 1; the mean curve peaks at its end
    assert "| Hopper-v5 | Walker2d-v5 |" in markdown  # tasks by id, not option name
    assert "| Walker2d-v5 | npg | 21.00 [20.00, 22.00] | 21.00 ± 1.00 | 21.00 | 3 |" in markdown
    assert r"\textbf{" in (out / "final.tex").read_text()
    tidy = pd.read_csv(out / "runs.csv")
    assert len(tidy) == 12 * 10 and {"run", "env", "solver", "seed", "solver._target_"} <= set(
        tidy.columns)
    assert "solver.max_kl" not in tidy and "ablation" not in tidy  # the same in every run
    assert set(tidy["run"]) == {f"runs/multi/{n}" for n in range(12)}  # no machine paths


def test_curve_figure_has_a_panel_per_env_a_line_per_group_and_labels(tmp_path):
    sweep(tmp_path)
    groups = make_groups(load_runs([tmp_path]).runs, ["solver"])
    fig = plot_curves(groups, "eval_return_mean", reps=100)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["Hopper-v5", "Walker2d-v5"]
    for ax in panels:
        assert len(ax.get_lines()) == 2
        assert ax.get_xlabel() == "Environment steps"
        assert ax.get_ylabel() == "Evaluation return"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["npg (n=3)", "trpo (n=3)"]
    colours = {ax.get_lines()[0].get_color() for ax in panels}
    assert len(colours) == 1  # the same group has the same colour in every panel


def test_curve_figure_with_a_panel_key_has_a_panel_per_value_and_lines_styled_alike(tmp_path):
    trust_region_sweep(tmp_path)
    groups = make_groups(load_runs([tmp_path]).runs, ["solver", "solver.max_kl"])
    fig = plot_curves(groups, "eval_return_mean", reps=50, panel_key="solver")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["Hopper-v5, npg", "Hopper-v5, trpo"]
    assert all(len(ax.get_lines()) == 3 for ax in panels)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [f"solver.max_kl={k} (n=3)" for k in (0.001, 0.01, 0.1)]
    npg, trpo = ([(line.get_color(), line.get_linestyle()) for line in ax.get_lines()]
                 for ax in panels)
    assert npg == trpo  # δ = 0.001 looks the same in both panels
    # The final point of each line is its group's IQM: 1000·(index of δ) + 100·(npg) + 1.
    np.testing.assert_allclose([line.get_ydata()[-1] for line in panels[0].get_lines()],
                               [101, 1101, 2101])


def test_a_curve_starts_at_its_first_evaluation_not_at_the_first_training_row(tmp_path):
    """Evaluated every third iteration: before, the line and its band began at step 100 with
    the first evaluation (step 300) carried back to it."""
    for seed in range(3):
        write_run(tmp_path, str(seed), seed=seed, returns=[10.0 * (k + seed) for k in range(9)],
                  every=3)
    (group,) = make_groups(load_runs([tmp_path]).runs, [])
    (line,) = plot_curves([group], "eval_return_mean", reps=50).axes[0].get_lines()
    assert line.get_xdata()[0] == 300 and line.get_xdata()[-1] == 900
    assert line.get_ydata()[0] == pytest.approx(30.0)  # seeds 0-2 at 300: 20, 30, 40


def test_each_step_of_a_curve_uses_only_the_runs_measured_around_it(tmp_path):
    """Runs that start and stop evaluating at different steps: a run counts from its first
    evaluation to its last and nowhere else."""
    write_run(tmp_path, "early", seed=0, returns=[1.0, 2.0, 3.0, 4.0, None, None])
    write_run(tmp_path, "late", seed=1, returns=[None, None, 30.0, 40.0, 50.0, 60.0])
    runs = load_runs([tmp_path]).runs
    grid = step_grid(runs, "eval_return_mean", points=6)
    assert grid.tolist() == [100, 200, 300, 400, 500, 600]
    curves = np.array([curve_on_grid(r.progress, "eval_return_mean", grid) for r in runs])
    np.testing.assert_array_equal(curves, [[1, 2, 3, 4, np.nan, np.nan],
                                           [np.nan, np.nan, 30, 40, 50, 60]])
    iqm, low, high = stats.curve_iqm_ci(curves, reps=200)
    np.testing.assert_allclose(iqm, [1, 2, 16.5, 22, 50, 60])  # two runs: their mean
    assert (low[[0, 1, 4, 5]] == iqm[[0, 1, 4, 5]]).all()  # one run measured: no spread
    assert low[2] == 3 and high[2] == 30  # both measured: the band spans them


def test_curve_iqm_with_gaps_matches_a_per_point_computation():
    rng = np.random.default_rng(4)
    curves = rng.normal(size=(7, 12))
    curves[:3, :4] = np.nan  # three runs start late
    curves[5:, 9:] = np.nan  # two stop early
    curves[:, 6] = np.nan  # a step no run was measured at
    iqm, low, high = stats.curve_iqm_ci(curves, reps=100)
    for j in range(12):
        measured = curves[~np.isnan(curves[:, j]), j]
        if measured.size == 0:
            assert np.isnan([iqm[j], low[j], high[j]]).all()
        else:
            assert iqm[j] == pytest.approx(naive_iqm(measured))
            assert low[j] <= iqm[j] <= high[j]
    full = rng.normal(size=(5, 4))  # no gaps: the same as one bootstrap of whole curves
    rows = np.random.default_rng(0).integers(0, 5, size=(100, 5))
    expected = np.percentile(stats.iqm_along_runs(full[rows]), [2.5, 97.5], axis=0)
    np.testing.assert_allclose(stats.curve_iqm_ci(full, reps=100)[1:], expected)


def test_a_group_measured_once_per_run_is_drawn_as_points_with_a_warning(tmp_path, caplog):
    """One evaluation per run (at the end): before, a flat line with a band from the first
    training row to the end."""
    for seed in range(3):
        write_run(tmp_path, str(seed), seed=seed, returns=[0.0] * 9 + [float(seed)], every=100)
    (group,) = make_groups(load_runs([tmp_path]).runs, [])
    ax = plot_curves([group], "eval_return_mean", reps=50).axes[0]
    assert not any(isinstance(c, PolyCollection) for c in ax.collections)  # no band
    (point, *_) = ax.get_lines()
    assert point.get_xdata().tolist() == [1000] and point.get_ydata().tolist() == [1.0]
    assert "each run measured eval_return_mean at one step only" in caplog.text


@pytest.mark.parametrize("solvers, full_width", [(("trpo", "npg"), False),
                                                 (("shrinking_trust_region", "small_trust_region"),
                                                  True)])
def test_long_group_names_move_the_pairwise_panel_below_the_others(tmp_path, solvers,
                                                                     full_width):
    sweep(tmp_path, solvers=solvers)
    groups = make_groups(load_runs([tmp_path]).runs, ["solver"])
    fig = plot_aggregate(groups, "eval_return_mean",
                         {"Hopper-v5": (0.0, 100.0), "Walker2d-v5": (0.0, 100.0)}, reps=50)
    iqm, *_ = (ax for ax in fig.axes if ax.get_title().startswith("IQM"))
    pairwise, = (ax for ax in fig.axes if ax.get_title() == "Pairwise comparison")
    below = pairwise.get_position().y1 < iqm.get_position().y0
    assert below == full_width


def test_the_aggregate_compares_against_the_baseline_over_the_envs_every_line_has(tmp_path):
    sweep(tmp_path, envs=("hopper", "walker"), solvers=("trpo", "sb3_trpo"))
    sweep(tmp_path / "more", envs=("cartpole",), solvers=("trpo",))  # trpo alone
    groups = make_groups(load_runs([tmp_path]).runs, ["solver"])
    aggregate = aggregate_scores(groups, "eval_return_mean", {}, reps=50)
    assert aggregate.envs == ["Hopper-v5", "Walker2d-v5"]
    # trpo's runs end at 10-12, the baseline's at 20-22: P(trpo > sb3_trpo) is 0, read so.
    assert list(aggregate.improvement) == [("trpo", "sb3_trpo")]
    assert aggregate.improvement[("trpo", "sb3_trpo")] == (0.0, 0.0, 0.0)
    assert {label: m.shape for label, m in aggregate.matrices.items()} == {
        "trpo": (3, 2), "sb3_trpo": (3, 2)}


def test_command_writes_no_aggregate_when_no_env_has_every_line(tmp_path):
    sweep(tmp_path / "runs", envs=("hopper",), solvers=("trpo",))
    sweep(tmp_path / "runs" / "more", envs=("walker",), solvers=("npg",))
    out = tmp_path / "out"
    assert main([str(tmp_path / "runs"), "--out", str(out), "--reps", "50"]) == 0
    assert {p.name for p in out.iterdir()} == {
        "curves.pdf", "curves.png", "diagnostics.md", "final.csv", "final.md", "final.tex",
        "runs.csv"}


def test_aggregate_figure_uses_reference_scores_and_has_three_panels(tmp_path):
    sweep(tmp_path)
    groups = make_groups(load_runs([tmp_path]).runs, ["solver"])
    fig = plot_aggregate(groups, "eval_return_mean",
                         {"Hopper-v5": (0.0, 100.0), "Walker2d-v5": (0.0, 100.0)}, reps=100)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["IQM across 2 envs", "Pairwise comparison", "Performance profile"]
    assert "D4RL" in " ".join(t.get_text() for t in fig.texts)
    iqm_ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert iqm_ticks == ["npg", "trpo"]


# ------------------------------------------------------------------------------ robustness


def test_failed_incomplete_truncated_and_empty_runs_are_reported_by_path(tmp_path, caplog):
    sweep(tmp_path, envs=("hopper",), solvers=("trpo",))
    write_run(tmp_path, "failed", status="failed")
    write_run(tmp_path, "short", total_steps=1000, status="running")
    (write_run(tmp_path, "no_progress") / "progress.csv").unlink()
    cut = write_run(tmp_path, "cut", seed=7)
    with open(cut / "progress.csv", "a") as file:
        file.write("4,400,3")  # a crash in the middle of a line
    report = load_runs([tmp_path])
    skipped = {path.name: why for path, why in report.skipped}
    assert set(skipped) == {"failed", "short", "no_progress"}
    assert "failed" in skipped["failed"] and "300 of 1,000" in skipped["short"]
    cut_run = next(r for r in report.runs if r.path.name == "cut")
    assert len(cut_run.progress) == 3
    assert "cut short" in caplog.text and str(cut) in caplog.text
    with_incomplete = load_runs([tmp_path], include_incomplete=True)
    assert any(p.name == "short" for p, _ in with_incomplete.incomplete_used)


def test_progress_is_read_as_trpo_run_folder_reads_it(tmp_path, caplog):
    """One reader of progress.csv: a garbled line in the middle is left out and named, where
    analysis.load's own reader read it as a row of NaN (a second iteration 2)."""
    run = write_run(tmp_path, "a", returns=[1.0, 2.0, 3.0, 4.0])
    lines = (run / "progress.csv").read_text().splitlines()
    lines.insert(3, "2,200,oops,1.0,2.0,0.01")
    (run / "progress.csv").write_text("\n".join(lines) + "\n")
    (loaded,) = load_runs([tmp_path]).runs
    assert loaded.progress["iteration"].tolist() == RunFolder(run).progress.read().iterations()
    assert loaded.progress["iteration"].tolist() == [1, 2, 3, 4]
    assert "malformed line(s) (line 4)" in caplog.text and str(run) in caplog.text


def test_an_interrupted_run_is_incomplete_not_failed_and_the_flag_uses_it(tmp_path, caplog):
    """A run killed while running (its record says running, no process holds its lock) and
    one stopped by a signal are both interrupted: skipped as incomplete, used with the flag."""
    sweep(tmp_path, envs=("hopper",), solvers=("trpo",), seeds=(0, 1))
    write_run(tmp_path, "killed", seed=2, total_steps=1000, status="running")
    write_run(tmp_path, "stopped", seed=3, total_steps=1000, status="interrupted")
    skipped = {path.name: why for path, why in load_runs([tmp_path]).skipped}
    assert skipped == {name: "interrupted: logged 300 of 1,000 steps (--include-incomplete "
                             "uses it)" for name in ("killed", "stopped")}
    report = load_runs([tmp_path], include_incomplete=True)
    assert sorted(r.status for r in report.runs if not r.complete) == ["interrupted"] * 2
    assert main([str(tmp_path), "--out", str(tmp_path / "out"), "--reps", "50",
                 "--include-incomplete"]) == 0
    assert "using incomplete run" in caplog.text and "(n=4)" in (tmp_path / "out" / "final.md"
                                                                 ).read_text()


def test_an_unreadable_run_is_skipped_by_name_and_the_rest_analysed(tmp_path, caplog):
    """A config that is not YAML, progress.csv of binary garbage (NUL bytes), a garbled tail
    and repeated iterations: before, the first two aborted the whole analysis."""
    sweep(tmp_path, envs=("hopper",), solvers=("trpo",))
    ten = [float(k) for k in range(10)]  # as long as the sweep's runs
    bad_yaml = write_run(tmp_path, "bad_yaml", seed=3, returns=ten)
    (bad_yaml / ".hydra" / "config.yaml").write_text("env: {id: Hopper-v5\nseed: [0\n")
    garbage = write_run(tmp_path, "garbage", seed=4, returns=ten)
    (garbage / "progress.csv").write_bytes(bytes(range(256)) * 8)
    tail = write_run(tmp_path, "garbled_tail", seed=5, returns=ten)
    with open(tail / "progress.csv", "ab") as file:
        file.write(b"\x00\xff\xfe garbage\n" + bytes(range(1, 256)) + b"\n")
    repeated = write_run(tmp_path, "repeated", seed=6, returns=ten)
    text = (repeated / "progress.csv").read_text()
    (repeated / "progress.csv").write_text(text + text.split("\n", 1)[1])  # rows again
    assert main([str(tmp_path), "--out", str(tmp_path / "out"), "--reps", "20"]) == 0
    assert "(n=4)" in (tmp_path / "out" / "final.md").read_text()  # 3 seeds + the garbled tail
    assert f"skipped {bad_yaml}: its .hydra config cannot be read (" in caplog.text
    assert f"skipped {garbage}: progress.csv has no header starting with 'iteration'" in (
        caplog.text)
    assert any(m.startswith(f"{tail}: ") and "malformed line(s) (line 12," in m and
               m.endswith("(the rows that are whole are used)") for m in caplog.messages)
    assert f"skipped {repeated}: its progress.csv repeats iterations" in caplog.text


@pytest.mark.parametrize("value", ["nan", ""])
def test_a_run_whose_evaluations_are_all_nan_is_skipped(tmp_path, caplog, capsys, value):
    """Before: KeyError: ['group'] once no run of a group had a number to score."""
    sweep(tmp_path / "ok", envs=("hopper",), solvers=("trpo",))
    bad = write_run(tmp_path / "nan", "run", seed=3, returns=[float(k) for k in range(10)])
    progress = RunFolder(bad).progress
    progress.rewrite([{**row, "eval_return_mean": None if value == "" else float(value)}
                      for row in progress.read().rows])
    assert main([str(tmp_path), "--out", str(tmp_path / "out"), "--reps", "20"]) == 0
    assert (f"skipped {bad}: it never logged eval_return_mean as a number (every value is "
            "empty or NaN)") in caplog.text
    assert main([str(tmp_path / "nan"), "--out", str(tmp_path / "out2")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no usable runs below")


def test_a_run_with_an_infinite_evaluation_is_skipped_by_name_without_warnings(tmp_path, caplog):
    """Before: the table said `inf [500, nan]` for its group, with numpy's RuntimeWarnings."""
    sweep(tmp_path, envs=("hopper",), solvers=("trpo",))
    bad = write_run(tmp_path, "inf", seed=3, returns=[1.0, float("inf"), 3.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main([str(tmp_path), "--out", str(tmp_path / "out"), "--reps", "20"]) == 0
    assert (f"skipped {bad}: it logged eval_return_mean=inf at 200 steps, which no task "
            "returns") in caplog.text
    table = (tmp_path / "out" / "final.md").read_text()
    assert "(n=3)" in table and "inf" not in table and "nan" not in table


def test_a_symlinked_run_folder_is_analysed_and_a_link_loop_ends(tmp_path):
    """Before: a run folder linked into the analysed folder was dropped without a word."""
    sweep(tmp_path / "elsewhere", envs=("hopper",), solvers=("trpo",), seeds=(0, 1))
    linked = write_run(tmp_path / "elsewhere", "single", seed=7)
    (tmp_path / "gathered").mkdir()
    (tmp_path / "gathered" / "multi").symlink_to(tmp_path / "elsewhere" / "multi")
    (tmp_path / "gathered" / "seed7").symlink_to(linked)
    (tmp_path / "gathered" / "loop").symlink_to(tmp_path / "gathered")
    report = load_runs([tmp_path / "gathered"])
    assert sorted(run.seed for run in report.runs) == [0, 1, 7]


@pytest.mark.parametrize("arguments, message", [
    (["--reps", "0"], "argument --reps: must be at least 1, got 0"),
    (["--reps", "-5"], "argument --reps: must be at least 1, got -5"),
    (["--reps", "2.5"], "argument --reps: must be a whole number, got '2.5'"),
    (["--reps", "many"], "argument --reps: must be a whole number, got 'many'"),
    (["--out", "{file}"], "--out {file} is a file, not a folder"),
    (["--out", "{file}/sub"], "--out {file}/sub cannot be made: Not a directory"),
    ([], "the following arguments are required: --out"),
    (["--out", "o", "--colour", "red"], "unrecognized arguments: --colour red"),
])
def test_bad_arguments_give_one_line_and_exit_2(tmp_path, capsys, arguments, message):
    write_run(tmp_path, "runs/a")
    (tmp_path / "a_file").write_text("")
    file = str(tmp_path / "a_file")
    arguments = [a.format(file=file) for a in arguments]
    if "--out" not in arguments and arguments:
        arguments += ["--out", str(tmp_path / "out")]
    assert main([str(tmp_path / "runs"), *arguments]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {message.format(file=file)}"]


def test_an_empty_folder_exits_with_one_clear_line(tmp_path, capsys):
    assert main([str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no usable runs below")
    assert not (tmp_path / "out").exists()


def test_bad_metric_and_group_key_are_named(tmp_path, capsys):
    write_run(tmp_path, "a")
    assert main([str(tmp_path), "--out", str(tmp_path / "o"), "--metric", "nope"]) == 2
    assert "--metric nope" in capsys.readouterr().err
    assert main([str(tmp_path), "--out", str(tmp_path / "o"), "--group-by", "solvr"]) == 2
    assert "--group-by solvr" in capsys.readouterr().err


def test_different_seed_counts_are_warned_about(tmp_path, caplog):
    sweep(tmp_path / "a", envs=("hopper",), solvers=("trpo",), seeds=(0, 1, 2))
    sweep(tmp_path / "b", envs=("hopper",), solvers=("npg",), seeds=(0, 1))
    assert main([str(tmp_path), "--out", str(tmp_path / "out"), "--reps", "50"]) == 0
    assert "different seed counts" in caplog.text


def test_a_swept_number_gets_a_final_score_figure_with_a_point_per_value(tmp_path):
    trust_region_sweep(tmp_path / "runs")
    runs = load_runs([tmp_path / "runs"]).runs
    keys = detect_group_keys(runs)
    table = final_table(make_groups(runs, keys), "eval_return_mean", reps=100)
    assert swept_numeric_keys(table, keys) == ["solver.max_kl"]
    fig = plot_sensitivity(table, "solver.max_kl", keys, "eval_return_mean")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "solver.max_kl"
    lines = {c.get_label(): c.lines[0].get_ydata() for c in ax.containers}
    assert sorted(lines) == ["npg", "trpo"]
    np.testing.assert_allclose(lines["trpo"], [1, 1001, 2001])  # seeds 0, 1, 2: mean + 1
    np.testing.assert_allclose(lines["npg"], [101, 1101, 2101])

    assert main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--reps", "50"]) == 0
    assert {"sensitivity_solver.max_kl.png", "sensitivity_solver.max_kl.pdf"} <= {
        p.name for p in (tmp_path / "out").iterdir()}


def test_a_sweep_of_one_number_alone_draws_one_line_and_no_legend(tmp_path):
    trust_region_sweep(tmp_path, solvers=("trpo",))
    runs = load_runs([tmp_path]).runs
    keys = detect_group_keys(runs)
    table = final_table(make_groups(runs, keys), "eval_return_mean", reps=50)
    fig = plot_sensitivity(table, "solver.max_kl", keys, "eval_return_mean")
    assert keys == ["solver.max_kl"] and len(fig.axes[0].containers) == 1
    assert fig.legends == []


def test_two_values_or_a_choice_make_no_final_score_figure(tmp_path):
    trust_region_sweep(tmp_path, max_kls=(0.01, 0.05))
    runs = load_runs([tmp_path]).runs
    keys = detect_group_keys(runs)
    table = final_table(make_groups(runs, keys), "eval_return_mean", reps=50)
    assert keys == ["solver", "solver.max_kl"] and swept_numeric_keys(table, keys) == []


def test_a_study_leaves_the_committed_results_alone_unless_asked_to_update_them(tmp_path,
                                                                               monkeypatch):
    """Before, every study rewrote experiments/results/ and RESULTS.md."""
    import experiments.__main__ as entry

    sweep(tmp_path / "runs")
    monkeypatch.setattr(entry, "ROOT", tmp_path)
    begin, end = entry.block_markers("quickstart")
    page = f"# Results\n{begin}\n| committed |\n{end}\n"
    (tmp_path / "RESULTS.md").write_text(page)
    monkeypatch.setattr(entry, "RESULTS_PAGE", tmp_path / "RESULTS.md")
    assert entry.main(["quickstart", "--analyse-only", str(tmp_path / "runs"),
                       "--reps", "50"]) == 0
    assert (tmp_path / "results" / "quickstart" / "final.md").exists()
    assert not (tmp_path / "experiments").exists()
    assert (tmp_path / "RESULTS.md").read_text() == page
    assert entry.main(["quickstart", "--analyse-only", str(tmp_path / "runs"),
                       "--reps", "50", "--update-results"]) == 0
    assert (tmp_path / "experiments" / "results" / "quickstart" / "final.md").exists()
    assert "| committed |" not in (tmp_path / "RESULTS.md").read_text()


def test_results_page_blocks_are_replaced_and_the_prose_kept(tmp_path, monkeypatch):
    import experiments.__main__ as entry

    monkeypatch.setattr(entry, "ROOT", tmp_path)
    out = tmp_path / "experiments" / "results" / "quickstart"
    out.mkdir(parents=True)
    (out / "final.md").write_text("| new table |\n")
    begin, end = entry.block_markers("quickstart")
    page = tmp_path / "RESULTS.md"
    page.write_text(f"# Results\nprose before\n{begin}\n| old table |\n{end}\nprose after\n")
    assert entry.refresh_results_page(page, "quickstart", out)
    assert page.read_text() == (
        f"# Results\nprose before\n{begin}\n![quickstart: learning curves]"
        f"(experiments/results/quickstart/curves.png)\n\n| new table |\n{end}\nprose after\n")
    assert not entry.refresh_results_page(page, "solver_comparison", out)  # no block: untouched
    (out / "sensitivity_solver.max_kl.png").write_bytes(b"")  # a swept setting's figure
    assert entry.refresh_results_page(page, "quickstart", out)
    assert ("![quickstart: final score against solver.max_kl](experiments/results/quickstart/"
            "sensitivity_solver.max_kl.png)\n\n| new table |") in page.read_text()
    (out / "videos").mkdir()  # what --videos writes: the page shows each strip of frames
    (out / "videos" / "Hopper-v5_trpo_frames.png").write_bytes(b"")
    assert entry.refresh_results_page(page, "quickstart", out)
    assert ("![quickstart: Hopper-v5_trpo, the best seed's final policy](experiments/results/"
            "quickstart/videos/Hopper-v5_trpo_frames.png)\n\n| new table |") in page.read_text()
    (out / "aggregate.md").write_text("| across |\n")  # the aggregate, then the diagnostics
    (out / "diagnostics.md").write_text("| diagnostics |\n")
    assert entry.refresh_results_page(page, "quickstart", out)
    assert (f"| new table |\n\n| across |\n\n| diagnostics |\n{end}") in page.read_text()


def test_results_page_shows_each_study_as_its_committed_outputs_say():
    """RESULTS.md's generated blocks match experiments/results/ (rerun the study's command with
    ``--update-results``, or ``python -m experiments STUDY --analyse-only DIR --update-results``,
    after new runs)."""
    import experiments.__main__ as entry

    text = entry.RESULTS_PAGE.read_text()
    shown = [study for study in entry.STUDIES if entry.block_markers(study)[0] in text]
    assert shown, "RESULTS.md shows no study"
    for study in shown:
        begin, end = entry.block_markers(study)
        block = text.split(begin, 1)[1].split(end, 1)[0]
        out = entry.ROOT / "experiments" / "results" / study
        assert block == "\n" + entry.study_block(study, out), study


def test_study_status_names_each_planned_run_and_estimates_the_time_left(tmp_path):
    """Each state RunFolder.state() tells apart; before, a failed run was listed as not
    started and a killed one as part-way like a live one."""
    from experiments.status import format_status, remaining_hours, study_status, time_left

    sweep = tmp_path / "sweep"
    write_run(sweep, "seed=0", returns=[1.0] * 10)  # finished: 10 iterations, wall_s 9
    write_run(sweep, "seed=1", returns=[1.0] * 10)
    RunFolder(sweep / "seed=1").write_status("completed", reused_from="elsewhere")
    write_run(sweep, "seed=2", returns=[1.0] * 3, total_steps=1000, status="running")
    write_run(sweep, "seed=3", returns=[1.0] * 4, total_steps=1000, status="running")
    write_run(sweep, "seed=4", returns=[1.0] * 2, total_steps=1000, status=None)
    RunFolder(sweep / "seed=4").write_status("failed", error="TrainingError: non-finite loss")
    live = RunFolder(sweep / "seed=2")
    live.lock.acquire()  # a process is training it now
    try:
        states = study_status(sweep, [f"seed={n}" for n in range(6)])
    finally:
        live.lock.release()
    assert [(s.name, s.state, s.done) for s in states] == [
        ("seed=0", "completed", 1.0), ("seed=1", "copied", 1.0), ("seed=2", "running", 0.3),
        ("seed=3", "interrupted", 0.4), ("seed=4", "failed", 0.2),
        ("seed=5", "not started", 0.0)]
    states[5].budget = 1000  # --status composes a run not started for its budget
    # 9 s per 1,000 steps of the finished run (the copied one is not timed); 70%, 60% and 80%
    # of one run and one whole run are left
    assert remaining_hours(states) * 3600 == pytest.approx(9 * (0.7 + 0.6 + 0.8 + 1))
    # the runs' own pace wins over one from elsewhere; runs planned later add their steps
    assert remaining_hours(states, step_s=1.0, later_steps=2000) * 3600 == pytest.approx(
        9 * (0.7 + 0.6 + 0.8 + 1 + 2))
    waiting = [s for s in states if s.state != "completed"]
    assert remaining_hours(waiting) is None
    assert remaining_hours(waiting, step_s=0.1) * 3600 == pytest.approx(0.1 * 3100)
    assert time_left(waiting).endswith("no estimate until one of its runs or trials has "
                                       "finished here")
    assert time_left(waiting, step_s=3.6, later_steps=2000, tuning_hours=1.0).startswith(
        "time left: about 6.1 run-hours of training (1.0 of tuning, 5.1 of runs), ")
    assert ", and its tunings' trials, none of which has finished" in time_left(
        waiting, step_s=3.6, tuning_hours=None)
    finished = states[:2]
    assert time_left(finished) == "every run has finished"
    assert time_left(finished, tuning_hours=None).startswith("time left: about 0.0 run-hours")
    text = format_status("study", sweep, states)
    assert text.splitlines()[0].endswith(
        "1 completed, 1 copied, 2 part-way (1 running, 1 interrupted), 1 failed, 1 not started")
    assert "seed=2  running       30%" in text
    assert "seed=3  interrupted   40%" in text
    assert "seed=4  failed        20%  TrainingError: non-finite loss" in text
    assert study_status(tmp_path / "nothing", ["seed=0"])[0].state == "not started"


def test_study_status_lists_an_unreadable_run_instead_of_stopping(tmp_path):
    """Before, --status went through load_runs, which a config that is not YAML stopped."""
    from experiments.status import study_status

    bad = write_run(tmp_path, "seed=0", returns=[1.0] * 3, total_steps=1000, status="running")
    (bad / ".hydra" / "config.yaml").write_text("seed: [0\n")
    (bad / "progress.csv").write_bytes(bytes(range(256)))
    (state,) = study_status(tmp_path, ["seed=0"])
    assert (state.state, state.done, state.wall_s) == ("interrupted", 0.0, None)


def test_study_status_imports_neither_torch_nor_the_trainer(tmp_path):
    """``--status`` reads run folders through trpo.io.run_folder alone: it starts at once."""
    write_run(tmp_path / "sweep", "env=hopper,seed=0,solver=trpo")
    code = ("import sys; from experiments.__main__ import main; "
            f"main(['quickstart', '--status', '--sweep-dir', {str(tmp_path / 'sweep')!r}]); "
            "bad = [m for m in ('torch', 'trpo.learner', 'trpo.train') if m in sys.modules]; "
            "assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 stale" in done.stdout  # a finished run, of another config than the quickstart's


def test_tables_and_the_console_say_when_a_group_has_fewer_than_five_seeds(tmp_path, caplog):
    """Before: two seeds gave `P(npg > trpo) = 0.00 [0.00, 0.00]` with no word on sample
    size."""
    sweep(tmp_path / "few", envs=("hopper", "walker"), seeds=(0, 1))
    assert main([str(tmp_path / "few"), "--out", str(tmp_path / "out"), "--reps", "20"]) == 0
    for name in ("final.md", "aggregate.md"):
        text = (tmp_path / "out" / name).read_text()
        assert "Few seeds: " in text and "(n=2)" in text and "provisional" in text, name
    assert "fewer than 5 seeds: Hopper-v5/npg (n=2), Hopper-v5/trpo (n=2), " in caplog.text
    sweep(tmp_path / "enough", envs=("hopper",), seeds=tuple(range(5)))
    assert main([str(tmp_path / "enough"), "--out", str(tmp_path / "out5"), "--reps", "20"]) == 0
    assert "Few seeds" not in (tmp_path / "out5" / "final.md").read_text()


def test_a_caption_breaks_only_between_its_parts():
    from analysis.figures import caption_lines

    parts = ["Final return normalised per env by (random, reference) returns", "95% CIs",
             "npg: 2 seeds, trpo: 2 seeds (fewer than 5: the intervals are provisional)"]
    lines = caption_lines(parts, width=80).splitlines()
    assert lines == [parts[0] + "; " + parts[1] + ";", parts[2]]
    assert all(line.count("(") == line.count(")") for line in lines)
