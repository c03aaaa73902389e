"""The run folder: every file a run reads or writes, owned by this module alone.

A run folder holds

* ``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``: the config it was trained with,
  written once the folder is locked and the config is known to be valid;
* ``progress.csv``: one row per iteration, rewritten from the checkpoint's history on resume;
* ``status.json``: ``running``, ``completed``, ``interrupted`` or ``failed``, with details;
* ``checkpoint.ckpt`` and ``checkpoint.prev.ckpt`` (format: :mod:`trpo.io.checkpoint`);
* ``agent.pt``: the trained policy with its observation statistics;
* ``run.lock``: held with ``flock`` by the one process training in the folder;
* ``wandb/``: the W&B run (offline by default); ``tensorboard/`` with ``logger.writers=[tensorboard]``.

Training (:mod:`trpo.train`), the analysis and the studies read and write these files only
through :class:`RunFolder`, so there is one reader of each format.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional

from omegaconf import DictConfig, OmegaConf

from trpo.config import flatten
from trpo.io.atomic import atomic_write, is_storage_error, json_safe
from trpo.io.provenance import code_version

CHECKPOINT = "checkpoint.ckpt"
PREVIOUS = "checkpoint.prev.ckpt"
PROGRESS = "progress.csv"
STATUS = "status.json"
AGENT = "agent.pt"
LOCK = "run.lock"
HYDRA = ".hydra"

# Every name a run writes in its folder (its own and its W&B, TensorBoard and Hydra log files).
OWN_NAMES = (CHECKPOINT, PREVIOUS, PROGRESS, STATUS, AGENT, LOCK, HYDRA, "wandb", "tensorboard",
             "run.log")

# Statuses a run records; ``interrupted`` is also what a ``running`` record becomes once no
# process holds the folder's lock (the process was killed before it could say so).
STATUSES = ("running", "completed", "interrupted", "failed", "pruned")

Row = Mapping[str, Optional[float]]


class RunLogHandler(logging.FileHandler):
    """``run.log``'s handler (``hydra.job_logging`` in ``conf/config.yaml``): a line the storage
    refuses (a full disk) is dropped without Python's "--- Logging error ---" traceback; the
    run's next checked write reports the disk in one line and stops it."""

    def handleError(self, record: logging.LogRecord) -> None:
        if is_storage_error(sys.exc_info()[1]):
            return
        super().handleError(record)


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock. ``str(error)`` is one line."""


class HistoryError(RuntimeError):
    """``progress.csv`` cannot be proven to hold a checkpoint's iterations. One line."""


# ------------------------------------------------------------------------------- progress.csv


@dataclass
class ProgressRead:
    """What :meth:`ProgressFile.read` found: the well-formed rows and what was wrong."""

    rows: list[dict[str, Optional[float]]]
    header: list[str]
    problems: list[str] = field(default_factory=list)

    def iterations(self) -> list[int]:
        return [int(row["iteration"]) for row in self.rows]


class ProgressFile:
    """``progress.csv``: a header from the first row, then one line per iteration.

    A cell is a number, or empty for "not measured in this iteration" (``None``).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file: Optional[io.TextIOWrapper] = None
        self._writer: Optional[csv.DictWriter] = None

    # Writing ----------------------------------------------------------------------------

    def rewrite(self, rows: list[Row]) -> None:
        """Replace the file with ``rows`` atomically (synced, renamed); no rows, no file."""
        self.close()
        if not rows:
            self.path.unlink(missing_ok=True)
            return
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=list(rows[0]), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(_cells(row))
        atomic_write(self.path, text.getvalue().encode())

    def append(self, row: Row) -> None:
        """Add one row under the file's header (written from this row if there is none). A row
        with columns the header lacks (a run resumed by code that logs more) widens the header
        once: the file is rewritten with them, empty in the earlier rows."""
        if self._file is None:
            header = self._header()
            self._file = open(self.path, "a" if header else "w", newline="")
            if header:
                self._writer = csv.DictWriter(self._file, fieldnames=header,
                                              extrasaction="ignore")
        if self._writer is None:
            self._writer = csv.DictWriter(self._file, fieldnames=list(row), extrasaction="ignore")
            self._writer.writeheader()
        new = [key for key in row if key not in self._writer.fieldnames]
        if new:
            self._widen([*self._writer.fieldnames, *new])
        self._writer.writerow(_cells(row))
        self._file.flush()

    def _widen(self, header: list[str]) -> None:
        """Rewrite the file under ``header``, a longer one, and go on appending under it."""
        self.close()
        with open(self.path, newline="") as file:
            lines = list(csv.reader(file))[1:]
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(header)
        for cells in lines:
            writer.writerow(cells + [""] * (len(header) - len(cells)))
        atomic_write(self.path, text.getvalue().encode())
        self._file = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=header, extrasaction="ignore")

    def sync(self) -> None:
        """Make the rows written so far durable (called before each checkpoint)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self._writer = None

    def _header(self) -> Optional[list[str]]:
        try:
            with open(self.path, newline="") as file:
                return next(csv.reader(file), None)
        except FileNotFoundError:
            return None

    # Reading ----------------------------------------------------------------------------

    def read(self) -> ProgressRead:
        """The rows whose every cell is a number or empty and whose iteration is a whole number;
        the others (a line cut by a crash, garbage) are left out and named in ``problems``, as
        are repeated or missing iterations."""
        try:
            with open(self.path, newline="", errors="replace") as file:
                lines = list(csv.reader(line.replace("\0", "") for line in file))
        except FileNotFoundError:
            return ProgressRead([], [], ["there is no progress.csv"])
        except (OSError, csv.Error) as error:
            return ProgressRead([], [], [f"progress.csv cannot be read ({error})"])
        if not lines:
            return ProgressRead([], [], ["progress.csv is empty"])
        header, body = lines[0], lines[1:]
        if not header or header[0] != "iteration":
            return ProgressRead([], header, ["progress.csv has no header starting with "
                                             "'iteration'"])
        rows, bad = [], []
        for number, cells in enumerate(body, start=2):
            row = _parse(header, cells)
            if row is None:
                bad.append(number)
            else:
                rows.append(row)
        problems = []
        if bad:
            cut = bad == [len(body) + 1]
            problems.append("its last line was cut short" if cut else
                            f"{len(bad)} malformed line(s) (line {', '.join(map(str, bad[:5]))}"
                            f"{', ...' if len(bad) > 5 else ''})")
        iterations = [int(row["iteration"]) for row in rows]
        if iterations != list(range(1, len(iterations) + 1)):
            problems.append("its iterations are not 1, 2, 3, ... in order (some are missing "
                            "or repeated)")
        return ProgressRead(rows, header, problems)


def _cells(row: Row) -> dict[str, Any]:
    return {k: "" if v is None else v for k, v in row.items()}


def _parse(header: list[str], cells: list[str]) -> Optional[dict[str, Optional[float]]]:
    """One line as numbers (empty cells ``None``); ``None`` if it is not a well-formed row."""
    if len(cells) != len(header):
        return None
    row: dict[str, Optional[float]] = {}
    for key, cell in zip(header, cells):
        if cell == "":
            row[key] = None
            continue
        try:  # an integer stays one, so a row rewritten from this reads as it was written
            row[key] = int(cell) if cell.lstrip("-").isdigit() else float(cell)
        except ValueError:
            return None
    if row["iteration"] is None or row["iteration"] < 1:
        return None
    return row


# ------------------------------------------------------------------------------------- lock


class RunLock:
    """An exclusive ``flock`` on ``run.lock``; the OS releases it when the process dies.

    The holder writes its PID and host into the file, so a second process can say who has it.
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd: Optional[int] = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise self.busy() from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        os.fsync(fd)
        self._fd = fd

    def busy(self) -> RunFolderBusy:
        """The error saying which process holds the lock."""
        return RunFolderBusy(f"{self.path.parent} is in use by {self.holder()}: one process "
                             "per run folder (wait for it to finish, or stop it)")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def holder(self) -> str:
        """``pid N on host H (since T)`` as the holder wrote it."""
        try:
            record = json.loads(self.path.read_text())
            return f"pid {record['pid']} on host {record['host']} (since {record['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def is_held(self) -> bool:
        """Whether some process (this one included) holds the lock now."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)  # also releases the shared lock taken to test


# ------------------------------------------------------------------------------- the folder


class RunFolder:
    """One run's folder and every file in it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.progress = ProgressFile(self.path / PROGRESS)
        self.lock = RunLock(self.path / LOCK)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # What is there ----------------------------------------------------------------------

    @property
    def checkpoint_paths(self) -> list[Path]:
        """The checkpoints to try, newest first."""
        return [self.path / CHECKPOINT, self.path / PREVIOUS]

    @property
    def agent_path(self) -> Path:
        return self.path / AGENT

    def has_run(self) -> bool:
        """Whether a run has written here: a checkpoint, progress.csv or status.json."""
        return any(p.exists() for p in (*self.checkpoint_paths, self.path / PROGRESS,
                                        self.path / STATUS))

    def unproven(self) -> list[str]:
        """What in the folder this framework cannot prove it wrote: a name no run writes, a
        symbolic link (a run writes none, and writing through one could reach outside the
        folder), or run files (rows, checkpoints, ``.hydra/``) beside no ``status.json`` of a
        run (a run records its status before anything else). Empty for a missing or empty
        folder."""
        try:
            names = sorted(p.name for p in self.path.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return []
        foreign = [n for n in names if n.removesuffix(".tmp") not in OWN_NAMES]
        hydra = self.path / HYDRA
        inside = sorted(hydra.iterdir()) if hydra.is_dir() and not hydra.is_symlink() else []
        foreign += [str(p.relative_to(self.path)) for p in
                    [self.path / n for n in names] + inside if p.is_symlink()]
        record = self.read_status()
        ours = record.get("status") in STATUSES and isinstance(record.get("code"), dict)
        if not ours:
            foreign += [n for n in names if n in (STATUS, PROGRESS, CHECKPOINT, PREVIOUS, AGENT,
                                                   HYDRA)]
        return sorted(set(foreign))

    def has_checkpoint(self) -> bool:
        return any(p.exists() for p in self.checkpoint_paths)

    # status.json ------------------------------------------------------------------------

    def write_status(self, status: str, **details: Any) -> None:
        """Record the run's state with the code running it; valid JSON (NaN as null), written
        atomically, so a reader never sees half a file."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        record = json_safe({"status": status, **details, "code": code_version(),
                             "updated": time.strftime("%Y-%m-%d %H:%M:%S")})
        atomic_write(self.path / STATUS,
                      (json.dumps(record, indent=2, allow_nan=False) + "\n").encode())

    def update_status(self, **changes: Any) -> None:
        """Rewrite a ``running`` record with ``changes`` (the iteration a run has reached), its
        other details kept; nothing if the record says otherwise or there is none."""
        record = self.read_status()
        if record.get("status") == "running":
            details = {k: v for k, v in record.items() if k not in ("status", "code", "updated")}
            self.write_status("running", **{**details, **changes})

    def read_status(self) -> dict[str, Any]:
        """``status.json``'s record; empty if there is none or it cannot be read."""
        try:
            record = json.loads((self.path / STATUS).read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def state(self) -> str:
        """``completed``, ``running``, ``interrupted``, ``failed``, ``pruned`` (a tuning trial its
        study stopped), or ``unknown`` (no readable status). A ``running`` record whose process
        is gone (the lock is free) is ``interrupted``: it was killed before it could record
        that, and can resume."""
        status = self.read_status().get("status")
        if status not in STATUSES:
            return "unknown"
        if status == "running" and not self.lock.is_held():
            return "interrupted"
        return status

    # Checkpoints and the agent -----------------------------------------------------------

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Write ``state`` as the newest checkpoint, keeping the one before it; progress.csv
        is synced first, so the rows a checkpoint covers are on disk before it is."""
        # The checkpoint format needs torch; imported here, so that reading a folder's rows and
        # status (the analysis, --status) does not.
        from trpo.io.checkpoint import write_checkpoint_file

        self.progress.sync()
        write_checkpoint_file(self.path / CHECKPOINT, self.path / PREVIOUS, state)

    def read_checkpoints(self) -> Iterator[tuple[Path, dict[str, Any] | Exception]]:
        """Each existing checkpoint, newest first, as its contents or the
        :class:`trpo.io.checkpoint.CheckpointError` saying why it cannot be read (a failed
        checksum, a file of another kind)."""
        from trpo.io.checkpoint import CheckpointError, read_checkpoint  # torch, as above

        for path in self.checkpoint_paths:
            if path.exists():
                try:
                    yield path, read_checkpoint(path)
                except CheckpointError as error:
                    yield path, error

    def save_agent(self, agent: dict[str, Any]) -> None:
        """``agent.pt``: what acting needs (policy weights, observation statistics, config)."""
        import torch

        buffer = io.BytesIO()
        torch.save(agent, buffer)
        atomic_write(self.agent_path, buffer.getvalue())

    def read_agent(self) -> dict[str, Any]:
        """``agent.pt`` loaded weights-only (no code runs); raises ``FileNotFoundError``."""
        import torch

        return torch.load(self.agent_path, weights_only=True)

    # The config -------------------------------------------------------------------------

    def write_config(self, config: DictConfig, hydra_config: Optional[DictConfig] = None,
                     overrides: Optional[list[str]] = None) -> None:
        """``.hydra/``: the config (with its interpolations, as Hydra saves it), Hydra's own
        config (group choices, the run folder) and the command-line overrides."""
        folder = self.path / HYDRA
        folder.mkdir(exist_ok=True)
        files = {"config.yaml": config}
        if hydra_config is not None:
            files["hydra.yaml"] = OmegaConf.create({"hydra": hydra_config})
        if overrides is not None:
            files["overrides.yaml"] = OmegaConf.create(list(overrides))
        for name, content in files.items():
            atomic_write(folder / name, OmegaConf.to_yaml(content).encode())

    def has_config(self) -> bool:
        return (self.path / HYDRA / "config.yaml").exists()

    def read_resolved_config(self) -> dict[str, Any]:
        """The config the run trained with, resolved, as nested dicts (the form a checkpoint
        holds); raises on an unreadable file."""
        return OmegaConf.to_container(OmegaConf.load(self.path / HYDRA / "config.yaml"),
                                      resolve=True)

    def read_config(self) -> dict[str, Any]:
        """The resolved config, flattened (``solver.max_kl``), plus the Hydra group choices as
        ``env``, ``solver``, ... (the option names, ``hopper``); raises on an unreadable file."""
        config = flatten(self.read_resolved_config())
        choices = self.read_choices()
        for group, choice in choices.items():
            if choice is not None and "/" not in group and not group.startswith("hydra"):
                config.setdefault(group, choice)
        return config

    def read_choices(self) -> dict[str, Optional[str]]:
        """Hydra's group choices (``{"env": "hopper", "solver": "trpo", ...}``); empty without
        ``.hydra/hydra.yaml``."""
        hydra_file = self.path / HYDRA / "hydra.yaml"
        if not hydra_file.exists():
            return {}
        runtime = OmegaConf.load(hydra_file).hydra.get("runtime", {})
        return OmegaConf.to_container(runtime.get("choices", {}), resolve=False)

    # Clean-up ---------------------------------------------------------------------------

    def remove_if_made_since(self, since: float) -> None:
        """Remove the folder if it is empty and was made at or after ``since`` (a
        ``time.time()``): a folder this invocation made and nothing has used. Anything else,
        its parents included, stays."""
        try:
            if not any(self.path.iterdir()) and self.path.stat().st_ctime >= since:
                self.path.rmdir()
        except OSError:
            pass


def find_run_folders(roots: Iterable[str | Path]) -> list[RunFolder]:
    """Every run folder below ``roots`` (or a root itself): a folder with ``.hydra/config.yaml``
    or ``status.json``, by its resolved path, sorted. Symlinked folders are followed (runs
    gathered from several sweeps by links are found), each real folder once, so a link loop
    ends."""
    found, seen = set(), set()
    for root in map(Path, roots):
        for folder, subfolders, files in os.walk(root, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:
                subfolders.clear()
                continue
            seen.add(real)
            if STATUS in files or Path(folder, HYDRA, "config.yaml").is_file():
                found.add(Path(real))
    return [RunFolder(path) for path in sorted(found)]
