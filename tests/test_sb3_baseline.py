"""The sb3-contrib baseline (``solver=sb3_trpo``, experiments/sb3_baseline.py): a run folder the
analysis reads like any other, scored by this framework's evaluation protocol, reproducible,
resumable, with an agent that ``trpo.load_agent`` replays."""

import logging
import subprocess
import sys

import pandas as pd
import pytest

import numpy as np

from analysis.load import detect_group_keys, group_label, load_runs
from tests.conftest import ROOT, run_py, without_timing
from trpo.agent import load_agent
from trpo.config import ConfigError, validate_config
from trpo.evaluate import play_episode
from trpo.seeding import stream_seeds
from trpo.train import train

# Two iterations of 2 envs × 128 steps on Pendulum-v1, each evaluated on 2 episodes.
SMALL = ["env=pendulum", "total_steps=512", "steps_per_iteration=256", "num_envs=2",
         "eval_every=1", "eval_episodes=2", "critic.epochs=1", "logger.writers=[]"]


def test_the_baseline_writes_a_run_folder_the_analysis_draws_beside_trpo(tmp_path):
    for solver in ("sb3_trpo", "trpo"):
        result = run_py(f"solver={solver}", *SMALL, f"hydra.run.dir={tmp_path / solver}")
        assert result.returncode == 0, result.stderr[-3000:]
    baseline = tmp_path / "sb3_trpo"
    assert (baseline / ".hydra" / "config.yaml").exists()
    assert '"status": "completed"' in (baseline / "status.json").read_text()
    ours = pd.read_csv(tmp_path / "trpo" / "progress.csv")
    theirs = pd.read_csv(baseline / "progress.csv")
    # The columns the analysis and the console read, with the same meaning.
    shared = ["iteration", "env_steps", "wall_s", "return_mean", "eval_return_mean", "kl",
              "episodes", "episode_length_mean", "entropy", "value_loss",
              "explained_variance", "update_accepted"]
    assert set(shared) <= set(theirs.columns) and set(shared) <= set(ours.columns)
    assert list(theirs["env_steps"]) == list(ours["env_steps"]) == [256, 512]
    assert theirs["eval_return_mean"].notna().all()
    # Pendulum's episodes are 200 steps: 2 envs × 128 steps finish none in the first iteration.
    assert theirs["episode_length_mean"].isna().tolist() == [True, False]
    assert theirs["episode_length_mean"].iloc[-1] == 200
    runs = load_runs([tmp_path]).runs
    keys = detect_group_keys(runs)
    assert keys == ["solver"]
    assert sorted(group_label(run, keys) for run in runs) == ["sb3_trpo", "trpo"]


def test_the_same_seed_gives_the_same_rows_and_the_agent_replays_the_last_evaluation(
        compose_config, tmp_path):
    cfg = compose_config(["solver=sb3_trpo", *SMALL])
    final = train(cfg, tmp_path / "first")
    train(cfg, tmp_path / "second")
    first = pd.read_csv(tmp_path / "first" / "progress.csv")
    pd.testing.assert_frame_equal(without_timing(first),
                                  without_timing(pd.read_csv(tmp_path / "second" / "progress.csv")))
    agent = load_agent(tmp_path / "first")  # agent.pt, in this framework's policy format
    assert agent.source.name == "agent.pt" and agent.iteration == 2
    seeds = stream_seeds(cfg.seed, "evaluation", cfg.eval_episodes, agent.iteration)
    with agent.make_env() as task:
        returns = [play_episode(agent, task, seed)[0] for seed in seeds]
    # To 1e-6, as tests/test_agent.py says why: training evaluates the episodes as one batch.
    assert np.mean(returns) == pytest.approx(final, rel=1e-6)


def test_the_baseline_resumes_from_its_checkpoint_with_new_episodes(compose_config, tmp_path,
                                                                     caplog):
    longer = ["solver=sb3_trpo", *SMALL, "total_steps=1024"]
    train(compose_config(longer), tmp_path / "uninterrupted")
    uninterrupted = pd.read_csv(tmp_path / "uninterrupted" / "progress.csv")
    train(compose_config(["solver=sb3_trpo", *SMALL]), tmp_path / "resumed")
    rows = pd.read_csv(tmp_path / "resumed" / "progress.csv")
    with caplog.at_level(logging.WARNING, logger="trpo"):
        train(compose_config(longer), tmp_path / "resumed")
    assert "does not save its environments" in caplog.text
    resumed = pd.read_csv(tmp_path / "resumed" / "progress.csv")
    assert list(resumed["iteration"]) == [1, 2, 3, 4]
    pd.testing.assert_frame_equal(without_timing(resumed.iloc[:2]), without_timing(rows))
    # Iteration 3's entropy is the Gaussian's after update 2 (its σ alone): the policy resumed.
    assert resumed["entropy"].iloc[2] == uninterrupted["entropy"].iloc[2]
    # New episodes: iteration 3 does not replay the first iteration's starts.
    assert resumed["return_mean"].iloc[2] != uninterrupted["return_mean"].iloc[2]


@pytest.mark.parametrize("override, key", [
    ("advantage=td", "advantage"),
    ("vector_mode=async", "vector_mode"), ("env_workers=2", "vector_mode"),
    ("solver.line_search_shrinking_factor=1.5", "solver.line_search_shrinking_factor")])
def test_settings_the_baseline_cannot_run_are_refused_in_one_line(compose_config, override, key):
    with pytest.raises(ConfigError) as error:
        validate_config(compose_config(["solver=sb3_trpo", override]))
    assert error.value.key == key and "\n" not in str(error.value)
    if key != "solver.line_search_shrinking_factor":
        assert "sb3_trpo" in str(error.value)


def test_the_suite_plans_ten_trpo_seeds_and_five_baseline_seeds_per_task(tmp_path):
    status = subprocess.run(
        [sys.executable, "-m", "experiments", "mujoco_suite", "hydra.sweeper.params.env=pendulum",
         "--status", "--sweep-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr[-3000:]
    names = [line.split()[0] for line in status.stdout.splitlines()[1:-1]]
    assert names == ([f"env=pendulum,seed={s}" for s in range(10)]
                     + [f"env=pendulum,num_envs=2,seed={s},solver=sb3_trpo" for s in range(5)])
