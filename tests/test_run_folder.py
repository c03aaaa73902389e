"""The run folder can be trusted: nothing of the user's is deleted, one process trains in a
folder, resuming proves the history, checkpoints hold finite loadable state, and bad input is
refused before anything is written. Each test reproduces a defect found by trying to break the
project."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import tests.toy_envs  # noqa: F401  (registers NaNReward-v0)
from tests.conftest import ROOT, TINY, run_py, without_timing
from tests.run_folders import strict_json
from trpo.io.checkpoint import read_checkpoint, write_checkpoint_file
from trpo.config import EnvConfig, VectorMode
from trpo.io.run_folder import CHECKPOINT, RunFolder, RunFolderBusy
from trpo.train import TrainingError, train

CARTPOLE = ["env=cartpole", *TINY, "checkpoint_every=2", "eval_every=2"]


def files_of(folder):
    """Every file below ``folder`` with its bytes (``run.lock`` aside: each process that takes
    the lock writes its PID there)."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "run.lock"}


# ------------------------------------------------------------------ never delete what is not ours


def test_a_bad_value_leaves_an_existing_folder_and_its_files_alone(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "thesis.tex").write_text("keep")
    result = run_py("solver.max_kl=-1", f"hydra.run.dir={folder}", timeout=120)
    assert result.returncode == 2
    assert files_of(folder) == {folder.joinpath("thesis.tex").relative_to(folder): b"keep"}


def test_a_bad_value_with_the_current_folder_as_run_dir_deletes_nothing(tmp_path):
    """``hydra.run.dir=.`` in a checkout: the checkout, .git included, stays."""
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tmp_path / "notes.md").write_text("mine")
    before = files_of(tmp_path)
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "advantage.lam=2",
                             "hydra.run.dir=."], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert files_of(tmp_path) == before


@pytest.mark.parametrize("files", [
    # another tool's rows and status, under the names a run uses
    {"progress.csv": "step,loss\n1,0.5\n", "status.json": '{"state": "done"}'},
    # another Hydra app's record of its own run
    {".hydra/config.yaml": "lr: 0.1\n", ".hydra/hydra.yaml": "hydra: {}\n",
     ".hydra/overrides.yaml": "[]\n"},
    # a folder of the user's
    {"notes.md": "mine"},
])
def test_a_folder_holding_files_this_framework_did_not_write_is_refused_untouched(tmp_path,
                                                                                   files):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    before = files_of(tmp_path)
    result = run_py(*CARTPOLE, f"hydra.run.dir={tmp_path}", timeout=120)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "holds files this framework did not write" in line
    assert files_of(tmp_path) == before and not (tmp_path / "run.lock").exists()


@pytest.mark.parametrize("link", ["run.lock", ".hydra", "run.log", "progress.csv",
                                  ".hydra/config.yaml"])
def test_a_run_folder_with_a_symlink_is_refused_and_nothing_outside_is_written(tmp_path, link):
    run_dir, outside = tmp_path / "run", tmp_path / "outside"
    (run_dir / ".hydra").mkdir(parents=True)
    outside.mkdir()
    if link == ".hydra":
        (run_dir / ".hydra").rmdir()
    (run_dir / link).symlink_to(outside / "target")  # dangling: a write would create it
    result = run_py(*CARTPOLE, f"hydra.run.dir={run_dir}", timeout=120)
    assert result.returncode == 2
    assert "did not write" in result.stderr and link in result.stderr
    assert list(outside.iterdir()) == []


def test_an_empty_run_dir_is_refused_when_the_current_folder_holds_files(tmp_path):
    """``hydra.run.dir=`` (empty) is the current folder: from a checkout, the checkout."""
    (tmp_path / "notes.md").write_text("mine")
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), *CARTPOLE, "hydra.run.dir="],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert files_of(tmp_path) == {Path("notes.md"): b"mine"}


def test_a_refused_resume_leaves_the_folder_as_it_was(tmp_path):
    """A changed config is refused; with progress.csv gone, the checkpoints still stay."""
    args = [*CARTPOLE, f"hydra.run.dir={tmp_path}"]
    assert run_py(*args).returncode == 0
    (tmp_path / "progress.csv").unlink()
    before = files_of(tmp_path)
    result = run_py(*args, "solver.max_kl=0.02", timeout=120)
    assert result.returncode == 2
    assert "solver.max_kl" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert files_of(tmp_path) == before


# ----------------------------------------------------------------------------- one process


def test_a_second_process_on_a_busy_folder_exits_2_naming_the_holder(tmp_path):
    holder = RunFolder(tmp_path)
    holder.lock.acquire()  # this test process holds it
    (tmp_path / "keep").write_text("")
    result = run_py(*CARTPOLE, f"hydra.run.dir={tmp_path}", timeout=120)
    holder.lock.release()
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in line and str(tmp_path) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep", "run.lock"]


def test_a_sweep_skips_a_run_that_another_process_trains_and_says_so(tmp_path):
    (tmp_path / "0").mkdir(parents=True)
    holder = RunFolder(tmp_path / "0")
    holder.lock.acquire()
    result = run_py("-m", "env=cartpole", "seed=0,1", *TINY, "hydra/launcher=basic",
                    f"hydra.sweep.dir={tmp_path}")
    holder.lock.release()
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"skipped: {tmp_path / '0'} is in use by pid {os.getpid()}" in result.stderr
    assert not (tmp_path / "0" / "progress.csv").exists()
    assert RunFolder(tmp_path / "1").state() == "completed"


def test_the_lock_goes_with_the_process_that_held_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; "
                               "from trpo.io.run_folder import RunFolder; "
                               f"RunFolder({str(tmp_path)!r}).lock.acquire(); "
                               "print('held', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    folder = RunFolder(tmp_path)
    with pytest.raises(RunFolderBusy, match=f"pid {holder.pid}"):
        folder.lock.acquire()
    holder.kill()
    holder.wait()
    folder.lock.acquire()  # free once the holder is gone, even after kill -9
    folder.lock.release()


def test_a_running_record_without_its_process_reads_as_interrupted(tmp_path):
    folder = RunFolder(tmp_path)
    folder.write_status("running")
    assert folder.state() == "interrupted"
    folder.lock.acquire()
    assert folder.state() == "running"
    folder.lock.release()


# --------------------------------------------------------------------- resume proves history


def damage_cut(path):
    path.write_bytes(path.read_bytes()[:-25])


def damage_empty(path):
    path.write_text("")


def damage_delete(path):
    path.unlink()


def damage_drop_rows(path):
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2] + lines[4:]))


def damage_duplicate_rows(path):
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines + lines[1:3]))


def damage_garbage_rows(path):
    with open(path, "a") as file:
        file.write("5,640,1.0,garbage written after the last checkpoint\nnot,a,row\n")


def damage_binary(path):
    path.write_bytes(os.urandom(3000))


@pytest.mark.parametrize("damage", [damage_cut, damage_empty, damage_delete, damage_drop_rows,
                                    damage_duplicate_rows, damage_garbage_rows, damage_binary],
                         ids=lambda f: f.__name__.removeprefix("damage_"))
def test_a_resumed_run_has_the_rows_of_an_uninterrupted_one_whatever_happened_to_the_file(
        compose_config, tmp_path, damage):
    train(compose_config([*CARTPOLE, "total_steps=1024"]), tmp_path / "whole")
    train(compose_config([*CARTPOLE, "total_steps=512"]), tmp_path / "pieces")
    damage(tmp_path / "pieces" / "progress.csv")
    train(compose_config([*CARTPOLE, "total_steps=1024"]), tmp_path / "pieces")
    assert ((tmp_path / "whole" / "progress.csv").read_text().splitlines()[0]
            == (tmp_path / "pieces" / "progress.csv").read_text().splitlines()[0])
    whole, pieces = (without_timing(pd.read_csv(tmp_path / d / "progress.csv"))
                     for d in ("whole", "pieces"))
    assert whole["iteration"].tolist() == list(range(1, 9))
    pd.testing.assert_frame_equal(whole, pieces)


def forget_history(run_dir):
    """Make the run's checkpoints look like ones written before checkpoints kept histories."""
    for path, state in RunFolder(run_dir).read_checkpoints():
        del state["history"]
        write_checkpoint_file(path, run_dir / "replaced", state)
        (run_dir / "replaced").unlink()


def test_a_checkpoint_without_a_history_is_refused_in_one_line_touching_nothing(tmp_path):
    args = [*CARTPOLE, f"hydra.run.dir={tmp_path}"]
    assert run_py(*args).returncode == 0
    forget_history(tmp_path)
    before = files_of(tmp_path)
    result = run_py(*args, "total_steps=512", timeout=120)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "carries no history" in line and "resume=false" in line
    assert files_of(tmp_path) == before


def test_a_row_with_new_columns_widens_the_header_and_keeps_every_row(tmp_path):
    """A run resumed by code that logs a new column: the earlier rows get it empty."""
    folder = RunFolder(tmp_path)
    folder.progress.rewrite([{"iteration": 1, "kl": 0.5}, {"iteration": 2, "kl": 0.25}])
    folder.progress.append({"iteration": 3, "kl": 0.125, "reward_ctrl": -1.5})
    folder.progress.append({"iteration": 4, "kl": 0.0625, "reward_ctrl": -0.75})
    folder.progress.close()
    assert (tmp_path / "progress.csv").read_text().splitlines() == [
        "iteration,kl,reward_ctrl", "1,0.5,", "2,0.25,", "3,0.125,-1.5", "4,0.0625,-0.75"]
    read = folder.progress.read()
    assert not read.problems and [row["reward_ctrl"] for row in read.rows] == [
        None, None, -1.5, -0.75]


def test_rows_are_made_durable_before_the_checkpoint_that_covers_them(tmp_path, monkeypatch):
    """The order of the fsync calls themselves: progress.csv's before the checkpoint's."""
    folder = RunFolder(tmp_path)
    folder.progress.append({"iteration": 1, "env_steps": 8})
    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")).name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    folder.save_checkpoint({"iteration": 1})
    files = [name for name in synced if name != tmp_path.name]  # the folder's own sync aside
    assert files[:2] == ["progress.csv", f"{CHECKPOINT}.tmp"]


def test_reuse_copies_only_a_run_whose_history_proves_complete(compose_config, tmp_path):
    base = [*CARTPOLE, "checkpoint_every=1"]
    train(compose_config([*base, "name=first"]), tmp_path / "done" / "run")
    rows = (tmp_path / "done" / "run" / "progress.csv").read_text()
    # A finished twin whose progress.csv was emptied: its checkpoint's history is whole.
    (tmp_path / "done" / "run" / "progress.csv").write_text("")
    train(compose_config([*base, f"reuse_from={tmp_path / 'done'}"]), tmp_path / "copy")
    assert RunFolder(tmp_path / "copy").read_status()["reused_from"] == str(
        tmp_path / "done" / "run")
    assert (tmp_path / "copy" / "progress.csv").read_text() == rows
    # A twin whose checkpoint carries no history is not copied.
    forget_history(tmp_path / "done" / "run")
    (tmp_path / "done" / "run" / "progress.csv").write_text(rows.splitlines(True)[0])
    train(compose_config([*base, f"reuse_from={tmp_path / 'done'}"]), tmp_path / "trained")
    assert "reused_from" not in RunFolder(tmp_path / "trained").read_status()
    assert len(pd.read_csv(tmp_path / "trained" / "progress.csv")) == 2


def test_reuse_reads_no_checkpoint_of_a_run_whose_recorded_config_differs(
        compose_config, tmp_path, monkeypatch):
    base = [*CARTPOLE, "checkpoint_every=1"]
    train(compose_config([*base, "seed=1"]), tmp_path / "done" / "other_seed")
    train(compose_config(base), tmp_path / "done" / "twin")
    opened = []
    read = RunFolder.read_checkpoints
    monkeypatch.setattr(RunFolder, "read_checkpoints",
                        lambda self: (opened.append(self.path.name), read(self))[1])
    train(compose_config([*base, f"reuse_from={tmp_path / 'done'}"]), tmp_path / "copy")
    assert RunFolder(tmp_path / "copy").read_status()["reused_from"] == str(
        tmp_path / "done" / "twin")
    assert "other_seed" not in opened


# ------------------------------------------------------------- checkpoints hold finite state


@pytest.mark.parametrize("spoil", ["missing key", "wrong shape", "non-finite"])
def test_a_checkpoint_that_does_not_fit_or_is_not_finite_falls_back_to_the_previous_one(
        compose_config, tmp_path, caplog, spoil):
    train(compose_config([*CARTPOLE, "total_steps=1024"]), tmp_path / "whole")
    train(compose_config([*CARTPOLE, "total_steps=512"]), tmp_path / "run")
    state = read_checkpoint(tmp_path / "run" / CHECKPOINT)
    if spoil == "missing key":
        del state["value"]
    elif spoil == "wrong shape":
        state["policy"] = {k: torch.zeros(3, 3) for k in state["policy"]}
    else:
        state["value"] = {k: torch.full_like(v, float("nan")) for k, v in state["value"].items()}
    write_checkpoint_file(tmp_path / "run" / CHECKPOINT, tmp_path / "run" / "replaced", state)
    (tmp_path / "run" / "replaced").unlink()  # the file it replaced: not a run's
    train(compose_config([*CARTPOLE, "total_steps=1024"]), tmp_path / "run")
    assert f"{tmp_path / 'run' / CHECKPOINT}: does not fit this run" in caplog.text
    whole, resumed = (without_timing(pd.read_csv(tmp_path / d / "progress.csv"))
                      for d in ("whole", "run"))
    pd.testing.assert_frame_equal(whole, resumed)  # from the previous checkpoint, exactly


def test_a_diverged_value_network_stops_the_run_and_the_checkpoint_called_intact_is(
        compose_config, tmp_path, monkeypatch):
    from trpo.critic import ValueFitter

    real_fit = ValueFitter._fit
    fits = []

    def fit_that_diverges(self, obs, targets):
        real_fit(self, obs, targets)
        fits.append(1)
        if len(fits) >= 3:
            with torch.no_grad():
                for parameter in self.value.parameters():
                    parameter.fill_(float("nan"))

    monkeypatch.setattr(ValueFitter, "_fit", fit_that_diverges)
    cfg = compose_config([*CARTPOLE, "total_steps=1024", "checkpoint_every=2"])
    with pytest.raises(TrainingError, match=r"the checkpoint of iteration 2 .* is intact"):
        train(cfg, tmp_path)
    state = read_checkpoint(tmp_path / CHECKPOINT)
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for part in ("policy", "value")
               for v in state[part].values())
    assert strict_json(tmp_path / "status.json")["status"] == "failed"


# ------------------------------------------------------------------------- evaluation faults


def test_a_non_finite_evaluation_fails_the_run_and_status_json_stays_valid_json(
        compose_config, tmp_path, monkeypatch):
    import trpo.learner

    real_make = trpo.learner.make_vector_env
    made = []

    def make(cfg, num_envs, mode=VectorMode.sync, workers=None, backend=None):
        made.append(num_envs)
        if len(made) == 2:  # the learner builds the training envs first, then evaluation's
            cfg = EnvConfig(id="NaNReward-v0")
        return real_make(cfg, num_envs, mode, workers, backend)

    monkeypatch.setattr(trpo.learner, "make_vector_env", make)
    with pytest.raises(Exception, match="non-finite evaluation reward"):
        train(compose_config([*CARTPOLE, "env.id=Counter-v0"]), tmp_path)
    status = strict_json(tmp_path / "status.json")
    assert status["status"] == "failed" and "NonFiniteError" in status["error"]


def test_status_json_writes_nan_as_null(tmp_path):
    RunFolder(tmp_path).write_status("completed", final_eval_return=float("nan"))
    assert strict_json(tmp_path / "status.json")["final_eval_return"] is None


# ---------------------------------------------------------------------------------- stopping


# ----------------------------------------------------------------------------- bad input


def test_a_box2d_task_without_box2d_exits_2_in_one_line(tmp_path):
    try:
        import Box2D  # noqa: F401
        installed = True
    except ImportError:
        installed = False
    result = run_py("env.id=LunarLander-v3", f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    if installed:
        assert result.returncode == 0
        return
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "LunarLander-v3" in line and "Box2D is not installed" in line
    assert not (tmp_path / "run").exists()


def test_an_output_path_with_an_unknown_interpolation_exits_2_in_one_line(tmp_path):
    result = run_py(f"hydra.run.dir={tmp_path}/${{oops}}", timeout=120)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "${oops} is neither a config key" in line
    assert list(tmp_path.iterdir()) == []


def test_a_quoted_output_path_is_the_folder_it_names_and_nothing_else_is_made(tmp_path):
    (tmp_path / "cwd").mkdir()
    target = tmp_path / "with space"
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "env=cartpole", *TINY,
                             f'hydra.run.dir="{target}"'], cwd=tmp_path / "cwd",
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert RunFolder(target).state() == "completed"
    assert list((tmp_path / "cwd").iterdir()) == []


# --------------------------------------------------------------------------------- seeds


