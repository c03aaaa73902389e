"""The logging back ends as a resumed run meets them: W&B offline, TensorBoard."""

import subprocess
import sys

import pytest

from tests.conftest import TINY
from trpo.config import LoggerConfig, WandbMode
from trpo.logger import WandbWriter
from trpo.run_folder import RunFolder
from trpo.train import train

WITHOUT_LOGGER_MODE = [o for o in TINY if not o.startswith("logger.mode")]


def checkpoint_state(run_dir):
    return next(state for _, state in RunFolder(run_dir).read_checkpoints()
                if isinstance(state, dict))


@pytest.mark.parametrize("resume_id", [None, "resumeme1"])
def test_an_offline_wandb_run_takes_the_id_of_the_run_it_resumes(tmp_path, resume_id):
    cfg = LoggerConfig(mode=WandbMode.offline, group="tests")
    writer = WandbWriter(cfg, tmp_path, "name", {}, resume_id=resume_id)
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
    base = ["env=cartpole", *WITHOUT_LOGGER_MODE, "logger.mode=offline"]
    train(compose_config(base), tmp_path)
    train(compose_config([*base, "total_steps=512"]), tmp_path)  # resumes at iteration 2
    run_id = checkpoint_state(tmp_path)["wandb_id"]
    folders = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(folders) == 2
    assert all(f.name.endswith(f"-{run_id}") and (f / f"run-{run_id}.wandb").exists()
               for f in folders)
    sync = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run",
                           str(tmp_path / "wandb")], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert sync.returncode == 0, sync.stderr[-2000:]
    assert "Would sync 2 run(s)" in sync.stdout + sync.stderr
