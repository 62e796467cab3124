"""One `kedro run` per project at a time (unseg.lock): a second run stops at once naming the first; a lock left by a
dead run is taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from unseg import settings
from unseg.lock import LOCK_FILE, ProjectLockedError, RunLock, RunLockHook

HOLD = """
import sys, time
from pathlib import Path
from unseg.lock import RunLock
RunLock(Path(sys.argv[1])).acquire({"pipelines": ["held"]})
print("locked", flush=True)
time.sleep(60)
"""


def start_hook(project: Path) -> RunLockHook:
    hook = RunLockHook()
    hook.after_context_created(SimpleNamespace(project_path=project))
    hook.before_pipeline_run({"pipeline_names": ["ingestion"], "session_id": "s1"})
    return hook


def test_second_run_is_refused_naming_the_first_and_runs_after_it_ends(tmp_path: Path) -> None:
    first = start_hook(tmp_path)
    record = json.loads((tmp_path / "data" / LOCK_FILE).read_text())
    assert record["pid"] == os.getpid() and record["pipelines"] == ["ingestion"]
    with pytest.raises(ProjectLockedError) as info:
        start_hook(tmp_path)
    message = str(info.value)
    assert f"pid {os.getpid()}" in message and f"started {record['started']}" in message
    assert str(tmp_path / "data" / LOCK_FILE) in message
    first.after_pipeline_run()
    second = start_hook(tmp_path)  # the first run ended: the next one goes
    second.on_pipeline_error()  # a failed run gives the lock back too
    start_hook(tmp_path).after_pipeline_run()


def test_lock_held_by_another_process_then_taken_over_when_it_dies(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "data" / LOCK_FILE
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        for line in holder.stdout:  # (importing unseg may log first)
            if line.strip() == "locked":
                break
        with pytest.raises(ProjectLockedError, match=rf"pid {holder.pid} on .*, started 20"):
            RunLock(path).acquire()
    finally:
        holder.kill()  # a run killed without cleaning up: its record stays in the file
        holder.wait()
    assert json.loads(path.read_text())["pid"] == holder.pid
    lock = RunLock(path)
    with caplog.at_level("WARNING", logger="unseg.lock"):
        lock.acquire()
    assert f"left by pid {holder.pid}" in caplog.text
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()
    assert path.read_text() == ""  # kept (never deleted), empty between runs


def test_hook_is_registered_and_runs_before_the_other_hooks_start_a_run(tmp_path: Path) -> None:
    """Registered in settings.HOOKS; through Kedro's hook manager it runs before a hook registered later (pluggy
    calls those first), so a refused run stops before kedro-mlflow's before_pipeline_run opens an MLflow run."""
    from kedro.framework.hooks import hook_impl
    from kedro.framework.hooks.manager import _create_hook_manager

    assert sum(isinstance(hook, RunLockHook) for hook in settings.HOOKS) == 1
    called: list[str] = []

    class StartsMlflow:
        @hook_impl
        def before_pipeline_run(self) -> None:
            called.append("mlflow")

    manager = _create_hook_manager()
    lock_hook = RunLockHook()
    manager.register(lock_hook)
    manager.register(StartsMlflow())
    manager.hook.after_context_created(context=SimpleNamespace(project_path=tmp_path))
    holder = RunLock(tmp_path / "data" / LOCK_FILE)
    holder.acquire()
    with pytest.raises(ProjectLockedError):
        manager.hook.before_pipeline_run(run_params={}, pipeline=None, catalog=None)
    assert called == []
    holder.release()
    manager.hook.before_pipeline_run(run_params={}, pipeline=None, catalog=None)
    assert called == ["mlflow"] and lock_hook._lock is not None and lock_hook._lock.held
    manager.hook.after_pipeline_run(run_params={}, run_result={}, pipeline=None, catalog=None)
    assert not lock_hook._lock.held
