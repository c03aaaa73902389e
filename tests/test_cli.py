"""What ``run.py`` says on the command line: its help, "did you mean", sweep tags and summary."""

import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import ROOT, TINY, run_py
from tests.run_folders import write_run
from trpo.io.run_folder import RunFolder
from trpo.cli import GROUPS, check_override_keys, options


def test_help_lists_every_group_option_with_a_description_the_main_keys_and_launchers():
    result = run_py("--help", timeout=60)
    assert result.returncode == 0
    text = result.stdout
    assert "schema/" not in text
    lines = [line.strip().removeprefix("* ") for line in text.splitlines()]
    for group in GROUPS:
        for option in options(group):
            described = [line for line in lines if line.split(" ", 1)[0] == option]
            assert described and len(described[0].split()) > 1, f"{group}={option} undescribed"
    for key in ("seed=0", "total_steps=", "steps_per_iteration=2048", "critic.epochs=20",
                "eval_every=10", "checkpoint_every=10"):
        assert f"  {key}" in text
    assert "Exact TRPO (Schulman et al. 2015)" in text  # not cut at "et al."
    assert "  logger.writers=[wandb]" in text and "  logger.wandb.mode=offline" in text
    described = {line.split("=", 1)[0]: line.split(None, 1)[1] for line in lines
                 if line.startswith(("eval_", "critic."))}
    assert len({described[k] for k in ("eval_every", "eval_episodes")}) == 2
    assert len({described[f"critic.{k}"] for k in ("lr", "epochs", "minibatch_size")}) == 3
    for launcher in ("parallel", "slurm", "basic", "submitit_local"):
        assert f"  {launcher} " in text
    assert "python -m experiments STUDY" in text


@pytest.mark.parametrize("argv, says", [
    (["solver.maxkl=0.02"], "error: solver.maxkl is not a setting of solver=trpo; did you mean "
                            "solver.max_kl"),
    (["+solver.maxkl=0.02"], "did you mean solver.max_kl"),
    (["solver=npg", "solver.step_sise=0.1"], "solver=npg; did you mean solver.step_size"),
    (["-m", "solver=trpo,npg", "solver.step_size=0.1"], "solver.step_size is not a setting of "
                                                        "solver=trpo"),
    (["seeed=1"], "error: seeed is not a setting of the top level; did you mean seed?"),
    (["critic.lrr=1"], "error: critic.lrr is not a setting of critic; did you mean critic.lr"),
])
def test_a_misspelt_key_gets_a_suggestion_from_the_schema(argv, says):
    assert says in check_override_keys(argv)


@pytest.mark.parametrize("argv", [["solver.max_kl=0.02"], ["+env.kwargs.frame_skip=2"],
                                  ["solver=npg", "solver.step_size=0.1"], ["env=walker"],
                                  ["hydra.run.dir=/tmp/x", "seed=3"], ["-m", "seed=0,1"],
                                  ["network.policy_hidden=[32,32]"]])
def test_keys_the_schemas_have_pass(argv):
    assert check_override_keys(argv) is None


@pytest.mark.parametrize("override", ["solver.maxkl=0.02", "+solver.maxkl=0.02"])
def test_following_a_hint_or_not_a_misspelt_key_ends_in_one_line_and_no_folder(tmp_path,
                                                                               override):
    result = run_py(override, f"hydra.run.dir={tmp_path / 'run'}", timeout=60)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "did you mean solver.max_kl" in line
    assert not (tmp_path / "run").exists()


def test_a_key_added_past_the_command_line_check_is_refused_by_the_schema(compose_config):
    from trpo.config import ConfigError, validate_config

    with pytest.raises(ConfigError, match=r"solver.maxkl=.*TRPOConfig has no such setting; "
                                          r"did you mean solver.max_kl"):
        validate_config(compose_config(["+solver.maxkl=0.02"]))


def test_a_sweep_tags_each_line_with_its_job_and_ends_with_a_summary(tmp_path):
    overrides = [o for o in TINY if not o.startswith("logger.writers")]
    result = run_py("-m", "env=cartpole", "seed=0,1", *overrides, "logger.writers=[wandb]",
                    "solver._target_=tests.toy_solvers.PoisonedTRPO,trpo.solvers.TRPO",
                    "max_rejected_updates=1", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode != 0  # a job failed
    output = result.stdout + result.stderr
    assert "[#1 cartpole trpo s0] iter    1" in output and "[#3 cartpole trpo s1]" in output
    assert "wandb:" not in output  # W&B's own lines are off unless logger.wandb.messages=true
    summary = result.stderr[result.stderr.index(f"sweep {tmp_path}: 4 runs"):].splitlines()
    assert summary[0] == f"sweep {tmp_path}: 4 runs, 2 failed, 2 completed"
    poisoned = "solver._target_=tests.toy_solvers.PoisonedTRPO"
    assert [(line.split()[:2], line.split()[-2:]) for line in summary[2:6]] == [
        (["0", "failed"], ["seed=0", poisoned]),
        (["1", "completed"], ["seed=0", "solver._target_=trpo.solvers.TRPO"]),
        (["2", "failed"], ["seed=1", poisoned]),
        (["3", "completed"], ["seed=1", "solver._target_=trpo.solvers.TRPO"])]
    assert summary[7] == f"analyse it: python -m analysis {tmp_path} --out {tmp_path}/analysis"


def test_the_sweep_summary_sorts_jobs_as_numbers_and_scores_runs_as_the_analysis(tmp_path):
    """Before: runs sorted as text (0, 1, 10, 11, 2), named by job number only, scored by
    their last evaluation."""
    from analysis.report import final_score
    from trpo.cli import sweep_summary

    for job in range(12):
        returns = [10.0 * i + job for i in range(20)]  # last 10%: 180 + job; last: 190 + job
        folder = write_run(tmp_path, str(job), seed=job % 3, returns=returns)
        (folder / ".hydra" / "overrides.yaml").write_text(
            f"- env=hopper\n- seed={job % 3}\n- solver.max_kl={0.01 * (1 + job // 3)}\n")
    lines = sweep_summary(tmp_path).splitlines()
    assert [line.split()[0] for line in lines[2:14]] == [str(job) for job in range(12)]
    for job, line in enumerate(lines[2:14]):
        rows = pd.DataFrame(RunFolder(tmp_path / str(job)).progress.read().rows)
        assert line.split()[2] == f"{final_score(rows):.1f}" == f"{180.0 + job:.1f}"
        assert line.split()[3:] == [f"seed={job % 3}", f"solver.max_kl={0.01 * (1 + job // 3)}"]
    assert "env=hopper" not in "\n".join(lines[2:14])  # shared by every run: not repeated


@pytest.mark.parametrize("args, line", [
    (["env=hoper"], "error: env=hoper is not an option of env; did you mean env=hopper? "
                    "(options: ant, cartpole,"),
    (["solver=ppo"], "error: solver=ppo is not an option of solver (options: kl_penalty, npg,"),
    (["seed=abc"], "error: seed=abc is not allowed: Value 'abc' of type 'str' could not be "
                   "converted to Integer"),
    (["logger.wandb.mode=of"], "error: logger.wandb.mode=of is not allowed: Invalid value 'of', "
                               "expected one of [online, offline]"),
    (["-m", "seed=0,x"], "error: seed=x is not allowed"),
])
def test_a_wrong_option_type_or_enum_value_is_one_line_exit_2_and_nothing_written(tmp_path,
                                                                                 args, line):
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    [printed] = result.stderr.strip().splitlines()
    assert printed.startswith(line)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("subdir, shared", [
    ("shared", "('shared': env=cartpole seed=0; env=cartpole seed=1)"),
    ("${env.id}", "('CartPole-v1': env=cartpole seed=0; env=cartpole seed=1)"),
])
def test_two_jobs_of_a_sweep_given_one_folder_are_refused_before_anything_is_written(
        tmp_path, subdir, shared):
    """Before: one job was 'skipped', the sweep said '1 runs, 1 completed', exit 0, and a seed
    never trained."""
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", "env=cartpole",
                             "seed=0,1", f"hydra.sweep.subdir={subdir}",
                             f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    [printed] = result.stderr.strip().splitlines()
    assert printed == (f"error: hydra.sweep.subdir={subdir} gives 2 jobs one folder {shared}, "
                       "so only one would train; make it differ per job: ${hydra.job.num} or "
                       "${hydra:job.override_dirname}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("subdir", ["${hydra.job.num}", "${hydra:job.override_dirname}",
                                    "s${seed}"])
def test_a_sweep_whose_jobs_have_folders_of_their_own_passes_the_check(subdir):
    from trpo.cli import check_sweep_folders

    assert check_sweep_folders(["-m", "env=cartpole", "seed=0,1",
                                f"hydra.sweep.subdir={subdir}"]) is None
