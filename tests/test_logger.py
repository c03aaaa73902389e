"""The logging back ends as a resumed run meets them: W&B offline, TensorBoard."""

import importlib.util
import re
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import TINY
from trpo.io import logger as logger_module
from trpo.config import ConfigError
from trpo.io.logger import RunContext, WandbWriter, check_writers
from trpo.io.run_folder import RunFolder
from trpo.train import train

WITHOUT_WRITERS = [o for o in TINY if not o.startswith("logger.writers")]


def checkpoint_state(run_dir):
    return next(state for _, state in RunFolder(run_dir).read_checkpoints()
                if isinstance(state, dict))


@pytest.mark.parametrize("resume_id", [None, "resumeme1"])
def test_an_offline_wandb_run_takes_the_id_of_the_run_it_resumes(compose_config, tmp_path,
                                                                 resume_id):
    cfg = compose_config(["logger.wandb.group=tests"]).logger
    run = RunContext(cfg, RunFolder(tmp_path), "name", {}, total_steps=1)
    writer = WandbWriter.open(run, {"run_id": resume_id} if resume_id else {})
    try:
        assert writer.run.settings.resume == ("allow" if resume_id else None)
        assert resume_id is None or writer.run.id == resume_id
    finally:
        writer.close()


def test_a_resumed_offline_run_writes_its_wandb_files_under_one_run_id(compose_config, tmp_path):
    """Each process writes an offline-run folder of its own; both carry the checkpoint's W&B id,
    and ``wandb sync <run dir>/wandb`` (the README's command) picks up both, which wandb syncs
    in order of start time as one run. That the server then shows one run is wandb's part,
    which needs a server to check."""
    base = ["env=cartpole", *WITHOUT_WRITERS, "logger.writers=[wandb]"]
    train(compose_config(base), tmp_path)
    train(compose_config([*base, "total_steps=512"]), tmp_path)  # resumes at iteration 2
    run_id = checkpoint_state(tmp_path)["logger"]["wandb"]["run_id"]
    folders = sorted((tmp_path / "wandb").glob("offline-run-*"))
    # offline-run-<time>-<id>, with "-1" after it if the second started within the same second
    assert len(folders) == 2 and all(f"-{run_id}" in f.name for f in folders)
    assert all([p.name for p in f.glob("*.wandb")] == [f"run-{run_id}.wandb"] for f in folders)
    sync = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run",
                           str(tmp_path / "wandb")], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert sync.returncode == 0, sync.stderr[-2000:]
    assert "Would sync 2 run(s)" in sync.stdout + sync.stderr


# ------------------------------------------------------------------------------- TensorBoard


def tensorboard_scalars(log_dir):
    """``{tag: [(step, value), ...]}`` as TensorBoard shows them (purged events left out)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def assert_tensorboard_matches_progress(run_dir):
    """TensorBoard holds each measured cell of progress.csv once, at its row's env_steps: the
    keys W&B gets (every column but env_steps, the x-axis)."""
    progress = pd.read_csv(run_dir / "progress.csv")
    scalars = tensorboard_scalars(run_dir / "tensorboard")
    assert set(scalars) == {c for c in progress.columns
                            if c != "env_steps" and progress[c].notna().any()}
    for key, points in scalars.items():
        measured = progress[progress[key].notna()]
        assert [step for step, _ in points] == measured["env_steps"].tolist(), key
        assert [value for _, value in points] == pytest.approx(
            measured[key].tolist(), rel=1e-6, nan_ok=True), key


def test_tensorboard_gets_every_metric_at_its_env_steps(compose_config, tmp_path):
    train(compose_config(["env=cartpole", *WITHOUT_WRITERS, "total_steps=384", "eval_every=2",
                          "logger.writers=[tensorboard]"]), tmp_path)
    assert_tensorboard_matches_progress(tmp_path)
    eval_steps = [step for step, _ in tensorboard_scalars(tmp_path / "tensorboard")[
        "eval_return_mean"]]
    assert eval_steps == [256, 384]  # not measured at the first iteration: no point there


def test_a_resumed_run_shows_each_step_once_in_tensorboard(compose_config, tmp_path,
                                                           monkeypatch):
    """The first attempt writes iterations 3 and 4 to TensorBoard past its checkpoint of
    iteration 2, then fails; the resumed run writes them again, and TensorBoard shows the
    second attempt's only."""
    real_write = logger_module.CSVWriter.write

    def write(self, row):
        if row["iteration"] == 4:
            raise OSError("No space left on device")
        real_write(self, row)

    cfg = compose_config(["env=cartpole", *WITHOUT_WRITERS, "total_steps=768",
                          "checkpoint_every=2", "logger.writers=[tensorboard]"])
    with monkeypatch.context() as patch:
        patch.setattr(logger_module.CSVWriter, "write", write)
        with pytest.raises(OSError, match="No space left"):
            train(cfg, tmp_path)
    first = tensorboard_scalars(tmp_path / "tensorboard")["wall_s"]
    assert [step for step, _ in first] == [128, 256, 384, 512]
    train(cfg, tmp_path)
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert_tensorboard_matches_progress(tmp_path)  # 128, ..., 768, each once
    resumed = tensorboard_scalars(tmp_path / "tensorboard")["wall_s"]
    assert resumed[:2] == first[:2] and resumed[2:4] != first[2:4]


def test_tensorboard_turned_on_when_resuming_starts_with_the_rows_before(compose_config,
                                                                          tmp_path):
    train(compose_config(["env=cartpole", *TINY]), tmp_path)
    assert not (tmp_path / "tensorboard").exists()
    train(compose_config(["env=cartpole", *WITHOUT_WRITERS, "total_steps=512",
                          "logger.writers=[tensorboard]"]), tmp_path)
    assert_tensorboard_matches_progress(tmp_path)  # iterations 1-4


def test_tensorboard_without_its_package_fails_when_the_config_is_checked(compose_config,
                                                                          monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real_find_spec(
                            name, *a))
    message = ("logger.writers=['tensorboard'] is not allowed: tensorboard needs the "
               "tensorboard package: pip install -e '.[tensorboard]'")
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_writers(compose_config(["env=cartpole", *WITHOUT_WRITERS,
                                      "logger.writers=[tensorboard]"]).logger)
