"""The local SLURM cluster of ``tests/slurm/cluster.sh`` and sweeps submitted to it, as the
tests marked ``slurm`` use them. Every wait here is bounded."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import pytest

from tests.conftest import ROOT

SCRIPT = Path(__file__).with_name("cluster.sh")
# Limits for the sweeps' jobs: below the test cluster's MaxTime (30 min), far above their runs.
TIME_LIMIT = ["hydra.launcher.timeout_min=10"]
# The run that is preempted, timed out and run uninterrupted, with a checkpoint after every
# iteration: 25 s on a quiet AMD EPYC core, 50-90 s with the other two beside it. The timed-out one
# is held until its time limit's warning (the `interruptions` fixture), so it need not outlast it.
LONG_RUN_ITERATIONS = 112
LONG_RUN = ["env=hopper", "seed=0", f"total_steps={LONG_RUN_ITERATIONS * 2048}",
            "checkpoint_every=1", "eval_episodes=2", "logger.writers=[]"]
# Columns that measure time or memory: they differ between two runs of the same config.
TIMING = ("wall_s", "steps_per_s", "rss_mb")


def without_timing(progress: pd.DataFrame) -> pd.DataFrame:
    return progress.drop(columns=[c for c in progress.columns
                                  if c.startswith("time_") or c in TIMING])


def read_status(run_dir: Path) -> dict[str, Any]:
    """``status.json``'s record; empty if there is none or it cannot be read."""
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def data_rows(run_dir: Path) -> int:
    """Lines of ``progress.csv`` below its header (0 if there is none)."""
    try:
        return max(len((run_dir / "progress.csv").read_text().splitlines()) - 1, 0)
    except OSError:
        return 0


def process_state(pid: int) -> Optional[str]:
    """The state letter of ``/proc/<pid>/stat`` (R running, S sleeping, T stopped, ...);
    ``None`` if the process has ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} does not exist)"


def slurm_launcher(cluster: "Cluster") -> list[str]:
    """The project's SLURM preset, on the cluster's default partition."""
    return ["hydra/launcher=slurm", f"hydra.launcher.partition={cluster.partition}"]


@dataclass
class Cluster:
    """A running cluster: its ``slurm.conf``, default partition, and whether this session
    started it (and so stops it at the end)."""

    conf: str
    partition: str
    started_here: bool

    @classmethod
    def bring_up(cls) -> "Cluster":
        """The cluster ``cluster.sh`` manages, started if it is not up; fails the test (with
        the script's output) if it cannot be."""
        status = subprocess.run([str(SCRIPT), "status"], capture_output=True, text=True,
                                timeout=60)
        started_here = status.returncode != 0
        result = status
        if started_here:
            # Installing slurm-wlm on a fresh machine takes a few minutes.
            try:
                result = subprocess.run([str(SCRIPT), "start"], capture_output=True, text=True,
                                        timeout=900)
            except subprocess.TimeoutExpired as error:
                pytest.fail(f"tests/slurm/cluster.sh start did not finish in 900 s: {error}",
                            pytrace=False)
            if result.returncode != 0:
                pytest.fail("-m slurm needs a SLURM cluster and tests/slurm/cluster.sh start "
                            f"failed (exit {result.returncode}):\n{result.stdout}{result.stderr}",
                            pytrace=False)
        found = re.search(r"export SLURM_CONF=(\S+)", result.stdout)
        if not found:
            pytest.fail(f"cluster.sh did not say which SLURM_CONF to use:\n{result.stdout}",
                        pytrace=False)
        cluster = cls(found.group(1), "", started_here)
        default = [p for p in cluster.slurm("sinfo", "-h", "-o", "%P").stdout.split()
                   if p.endswith("*")]
        if not default:
            pytest.fail("the cluster has no default partition (sinfo -o %P)", pytrace=False)
        cluster.partition = default[0].rstrip("*")
        return cluster

    def stop(self) -> None:
        subprocess.run([str(SCRIPT), "stop"], capture_output=True, text=True, timeout=180)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": self.conf}

    def slurm(self, *command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A SLURM client command (squeue, scontrol, ...) against this cluster."""
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env=self.env)

    def state(self, job_id: str) -> Optional[str]:
        """The job's state as squeue names it (PENDING, RUNNING, COMPLETING, COMPLETED, ...);
        ``None`` if squeue does not know it."""
        out = self.slurm("squeue", "-h", "-r", "--states=all", "-j", job_id, "-o", "%T").stdout
        return out.split()[0] if out.split() else None

    def restarts(self, job_id: str) -> int:
        """How many times SLURM has started the job again (``scontrol show job``'s Restarts)."""
        out = self.slurm("scontrol", "show", "job", job_id).stdout
        found = re.search(r"\bRestarts=(\d+)", out)
        assert found, f"scontrol show job {job_id}: {out}"
        return int(found.group(1))

    def task_pid(self, job_id: str) -> Optional[int]:
        """The process of the job's task (step 0, task 0: submitit's ``_submit`` under srun),
        from ``scontrol listpids``; ``None`` while it has none."""
        out = self.slurm("scontrol", "listpids", job_id).stdout
        for line in out.splitlines()[1:]:
            pid, _, step, local_id, *_ = line.split() + [""] * 4
            if step == "0" and local_id == "0":
                return int(pid)
        return None

    def queue(self) -> str:
        """squeue with each job's state and the reason it waits, for failure messages."""
        return self.slurm("squeue", "-r", "--states=all",
                          "-o", "%.12i %.10P %.12j %.11T %.9M %.9l %R").stdout

    def cancel(self, job_ids) -> None:
        if job_ids:
            self.slurm("scancel", *job_ids)


class Sweep:
    """A command that submits a Hydra sweep to the cluster (``python run.py -m ...``), running
    in the background with its output in ``<sweep dir>.out`` and ``.err``."""

    def __init__(self, cluster: Cluster, sweep_dir: Path, args: list[str],
                 command: Optional[list[str]] = None):
        self.cluster, self.dir = cluster, Path(sweep_dir)
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        self.stdout_path = self.dir.with_name(self.dir.name + ".out")
        self.stderr_path = self.dir.with_name(self.dir.name + ".err")
        command = command or [sys.executable, "run.py", "-m", f"hydra.sweep.dir={self.dir}"]
        self.command = [*command, *args]
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=cluster.env,
                                            stdout=out, stderr=err)
        self.returncode: Optional[int] = None
        self._job_ids: dict[int, str] = {}

    def job_ids(self) -> dict[int, str]:
        """SLURM job id of each Hydra job number, from submitit's folders (``<array>_<task>``
        for an array, a plain id for a single job); the array task is the Hydra job number."""
        if not self._job_ids:
            folder = self.dir / ".submitit"
            names = [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
            tasks = {int(m.group(2)): name for name in names
                     if (m := re.fullmatch(r"(\d+)_(\d+)", name))}
            singles = [name for name in names if re.fullmatch(r"\d+", name)
                       and any((folder / name).glob("*_submitted.pkl"))]
            self._job_ids = tasks or ({0: singles[0]} if len(singles) == 1 else {})
        return self._job_ids

    def wait_submitted(self, jobs: int, timeout: float = 120) -> dict[int, str]:
        deadline = time.monotonic() + timeout
        while len(self.job_ids()) < jobs:
            self._job_ids = {}
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the sweep did not submit {jobs} jobs in {timeout:.0f} s\n"
                            + self.describe(), pytrace=False)
            time.sleep(0.5)
        return self.job_ids()

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            self.returncode = self.process.poll()
        return self.returncode

    def wait(self, timeout: float) -> int:
        """The command's exit code; fails the test (with squeue and the logs) if it runs for
        longer than ``timeout`` seconds."""
        try:
            self.returncode = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the sweep did not finish in {timeout:.0f} s\n" + self.describe(),
                        pytrace=False)
        return self.returncode

    def stop(self) -> None:
        """End the command if it still runs and cancel its jobs."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._job_ids = {}
        self.cluster.cancel(list(self.job_ids().values()))

    def log(self, job_id: str, stream: str = "out") -> str:
        """A job's submitit log (``stream`` "out" or "err"): every start of the job appends."""
        path = self.dir / ".submitit" / job_id / f"{job_id}_0_log.{stream}"
        return path.read_text(errors="replace") if path.exists() else ""

    def describe(self) -> str:
        return (f"command: {' '.join(self.command)}\nexit code: {self.process.poll()}\n"
                f"squeue:\n{self.cluster.queue()}\n"
                f"stderr (last lines):\n{tail(self.stderr_path)}\n"
                f"stdout (last lines):\n{tail(self.stdout_path, 15)}")
