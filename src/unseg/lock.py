"""One `kedro run` per project at a time: a lock file in the project's data folder, held for the whole run.

Two runs started together in one project write the same store folders (the same staging folders, the same Kedro
versions) and break each other. `RunLockHook` takes the lock before any other `before_pipeline_run` hook (so a refused
run starts no MLflow run and touches nothing) and gives it back when the run ends or fails. A second run stops at once
with `ProjectLockedError`, naming the holder's pid, start time and command.

The lock is an advisory `flock` on `data/.kedro-run.lock`, so the operating system releases it when its process dies
(killed, Ctrl-C, out of memory): a lock file left by a dead run names a pid that no longer holds it, and the next run
takes it over (logged). The file is never deleted (deleting a lock file another process has open but not yet locked
would let two runs hold "the" lock); between runs it is empty. Where `flock` is unavailable (Windows, some network
file systems) the lock falls back to the pid in the file: a live pid other than ours refuses the run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from kedro.framework.context import KedroContext
from kedro.framework.hooks import hook_impl

from unseg.core.store import pid_alive

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

LOCK_FILE = ".kedro-run.lock"
_READ_TRIES = 20  # a holder writes its record right after locking: wait up to 20 x 25 ms for it


class ProjectLockedError(RuntimeError):
    """Another run of this project holds its lock."""


class RunLock:
    """The project's run lock at `path` (see the module docstring).

    Args:
        path: the lock file, e.g. <project>/data/.kedro-run.lock (its folder is created).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, about: dict[str, Any] | None = None) -> None:
        """Takes the lock and records who holds it (pid, host, start time, command, and `about`).

        Raises:
            ProjectLockedError: another live process holds it; the message names it.
        """
        if self._fd is not None:
            self.release()  # a run of this process that ended without the after/error hook (Ctrl-C in a notebook)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            previous = self._lock(fd)
        except BaseException:
            os.close(fd)
            raise
        if previous and previous.get("pid") != os.getpid():
            logger.warning("Taking over the run lock %s left by pid %s (started %s), which no longer runs",
                           self.path, previous.get("pid"), previous.get("started"))
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.now().astimezone().isoformat(timespec="seconds"),
                  "command": " ".join(sys.argv), **(about or {})}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        logger.debug("Run lock %s taken: %s", self.path, record)

    def _lock(self, fd: int) -> dict[str, Any] | None:
        """Locks `fd`; returns the record a dead holder left, raises when a live one holds it."""
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return _read(fd)
            except BlockingIOError:
                holder = None
                for _ in range(_READ_TRIES):
                    holder = _read(fd)
                    if holder:
                        break
                    time.sleep(0.025)
                raise ProjectLockedError(self._message(holder)) from None
            except OSError as err:  # no flock on this file system: the pid check below
                logger.warning("Run lock %s: flock unavailable (%s); falling back to the pid in the file",
                               self.path, err)
        holder = _read(fd)
        if holder and holder.get("pid") != os.getpid() and holder.get("host") in (None, socket.gethostname()) \
                and pid_alive(int(holder.get("pid", 0))):
            raise ProjectLockedError(self._message(holder))
        return holder

    def _message(self, holder: dict[str, Any] | None) -> str:
        who = ("a run that is just starting" if not holder else
               f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')} "
               f"({holder.get('command')!r})")
        return (f"another kedro run of this project is running: {who} holds the lock {self.path}. Two runs at once "
                "write the same stores and break each other; wait for it to finish or stop it (a lock left by a run "
                "that died is taken over by the next run).")

    def release(self) -> None:
        """Empties the lock file and gives the lock back (a no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError as err:  # pragma: no cover - closing releases it anyway
            logger.debug("Run lock %s: %s while releasing", self.path, err)
        finally:
            os.close(fd)


def _read(fd: int) -> dict[str, Any] | None:
    """The record in the lock file, or None when it is empty or unreadable."""
    try:
        size = os.fstat(fd).st_size
        data = json.loads(os.pread(fd, size, 0).decode()) if size else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class RunLockHook:
    """Holds the project's `RunLock` (<project>/data/.kedro-run.lock) from before the pipeline runs to its end."""

    def __init__(self) -> None:
        self._lock: RunLock | None = None

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        path = Path(context.project_path) / "data" / LOCK_FILE
        if self._lock is None or self._lock.path != path:
            if self._lock is not None:
                self._lock.release()
            self._lock = RunLock(path)

    @hook_impl(tryfirst=True)  # before kedro-mlflow's hook starts an MLflow run: a refused run leaves nothing
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        if self._lock is None:
            return
        names = run_params.get("pipeline_names") or run_params.get("pipeline_name") or ["__default__"]
        self._lock.acquire({"pipelines": names, "session_id": run_params.get("session_id")})

    @hook_impl
    def after_pipeline_run(self) -> None:
        if self._lock is not None:
            self._lock.release()

    @hook_impl
    def on_pipeline_error(self) -> None:
        if self._lock is not None:
            self._lock.release()
