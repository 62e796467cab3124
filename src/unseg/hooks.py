"""Project hooks and the run's session.

- `RunChecksHook`: as a run starts, before any work, checks every parameter (`unseg.params`) and that the MLflow
  tracking store opens, so that a typo or an unusable store stops the run at once with an error that names it.
- `MlflowTagsHook`: tags each MLflow run with what a researcher filters by (data set, backbone, seed, methods) and
  names it after them, so runs tell themselves apart in the MLflow UI's lists and chart legends.
- `TrackedSession`: records a run stopped by Ctrl-C as KILLED (MLflow would record it FINISHED); under torchrun every
  process takes rank 0's session id (one save version).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow
from kedro.config import MissingConfigException
from kedro.framework.context import KedroContext
from kedro.framework.hooks import hook_impl
from kedro.framework.session import KedroSession
from kedro.pipeline import Pipeline
from mlflow.entities import RunStatus

logger = logging.getLogger(__name__)

SQLITE_TIMEOUT_S = 5.0  # the tracking check waits at most this long for a database another run holds


# ------------------------------------------------------------------------------------------------- run checks
def tracking_uri(context: KedroContext) -> str:
    """The tracking URI kedro-mlflow will use: conf/<env>/mlflow.yml server.mlflow_tracking_uri (which reads
    MLFLOW_TRACKING_URI), else MLFLOW_TRACKING_URI, else kedro-mlflow's default `mlruns`."""
    try:
        conf = context.config_loader["mlflow"]
    except MissingConfigException:
        conf = {}
    uri = (conf.get("server") or {}).get("mlflow_tracking_uri")
    return str(uri or os.environ.get("MLFLOW_TRACKING_URI", "mlruns"))


def _tracking_problem(uri: str, project_path: Path) -> str | None:
    """Why the local store at `uri` cannot be used, or None (also for remote stores, which are not checked)."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = uri.removeprefix("sqlite:///").split("?", 1)[0]
        if not uri.startswith("sqlite:///") or path in ("", ":memory:"):
            return None  # an in-memory database
        db = Path(path)  # relative to the working directory, as SQLAlchemy reads it
        try:
            db.parent.mkdir(parents=True, exist_ok=True)  # as mlflow does
        except OSError as err:
            return f"its folder {db.parent} cannot be created ({err.__class__.__name__}: {err})"
        if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.R_OK | os.W_OK)):
            return f"{db if db.exists() else db.parent} is not writable"
        try:
            with sqlite3.connect(db, timeout=SQLITE_TIMEOUT_S) as conn:
                conn.execute("PRAGMA schema_version").fetchone()  # reads the header: fails on a non-database file
            conn.close()
        except sqlite3.OperationalError as err:
            if "locked" in str(err):
                return None  # another run is writing: mlflow waits for it
            return f"sqlite cannot open {db} ({err})"
        except sqlite3.DatabaseError as err:
            return f"{db} is not an sqlite database ({err})"
        return None
    if parsed.scheme in ("", "file"):  # a local folder (kedro-mlflow resolves relative ones against the project)
        folder = Path(parsed.path if parsed.scheme == "file" else uri)
        folder = folder if folder.is_absolute() else project_path / folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            return f"its folder {folder} cannot be created ({err.__class__.__name__}: {err})"
        if not os.access(folder, os.W_OK):
            return f"{folder} is not writable"
    return None


def check_tracking_store(uri: str, project_path: Path) -> None:
    """Checks in a moment that a local MLflow tracking store (sqlite:///..., a folder) can be opened and written;
    mlflow itself retries an sqlite store that cannot be opened for about 100 s before it fails without naming it.
    Remote stores (http, databricks, ...) are left to mlflow.

    Raises:
        ValueError: the store cannot be used; the message names the URI, the problem and how to choose another.
    """
    problem = _tracking_problem(uri, project_path)
    if problem:
        raise ValueError(f"MLflow tracking store {uri!r} cannot be used: {problem}. Set MLFLOW_TRACKING_URI to a "
                         "writable location (default sqlite:///mlflow.db in the project folder; conf/base/mlflow.yml "
                         "server.mlflow_tracking_uri); nothing was run")


class RunChecksHook:
    """Stops a run before any work (before kedro-mlflow opens the tracking store, before any node) when a parameter
    is unknown, missing or invalid (`unseg.params.validate_parameters`), or the tracking store cannot be used."""

    @hook_impl(tryfirst=True)  # pluggy runs it before kedro-mlflow's after_context_created, which opens the store
    def after_context_created(self, context: KedroContext) -> None:
        from unseg.params import validate_parameters  # imports torch: not at settings time (OMP_WAIT_POLICY first)

        validate_parameters(context.params)
        if mlflow.active_run() is None:  # else kedro-mlflow logs into that run, wherever it lives
            check_tracking_store(tracking_uri(context), Path(context.project_path))


# --------------------------------------------------------------------------------------------- ending a run
def end_open_runs(error: BaseException, keep: str | None = None) -> None:
    """Ends the MLflow runs a stopped pipeline left open (the innermost first, down to the run `keep` that was
    active before the session): KILLED for KeyboardInterrupt (Ctrl-C), FAILED for anything else."""
    status = RunStatus.to_string(RunStatus.KILLED if isinstance(error, KeyboardInterrupt) else RunStatus.FAILED)
    ended: set[str] = set()  # kedro-mlflow reopens its run before every node: the stack may hold it more than once
    while (run := mlflow.active_run()) is not None and run.info.run_id != keep:
        if run.info.run_id not in ended:
            logger.warning("MLflow run %s ended as %s (%s)", run.info.run_id, status, error.__class__.__name__)
            ended.add(run.info.run_id)
        mlflow.end_run(status)


class TrackedSession(KedroSession):
    """A KedroSession whose run, when stopped by an exception that no Kedro hook sees, ends its MLflow run with the
    right status.

    Kedro calls `on_pipeline_error` (where kedro-mlflow ends the run as FAILED) only for an `Exception`: after a
    KeyboardInterrupt (Ctrl-C) or SystemExit the run stayed open and MLflow's exit handler recorded it FINISHED, as if
    complete. It is now KILLED (Ctrl-C) or FAILED. An Exception raised in a hook after the pipeline (where no
    `on_pipeline_error` is called either) gives FAILED too. A run that was active before the session (an
    orchestrator's) is left open, as kedro-mlflow leaves it.
    """

    @classmethod
    def create(cls, *args: Any, **kwargs: Any) -> TrackedSession:
        """A session; in a torch.distributed group every process takes rank 0's session id, so that all save and
        load the same versions (unseg.runner.DistributedRunner)."""
        from unseg.core.distributed import broadcast_object, is_distributed  # imports torch: not at settings time

        session = super().create(*args, **kwargs)
        if is_distributed():
            session.session_id = broadcast_object(session.session_id)
            session._store["session_id"] = session.session_id
        return session  # type: ignore[return-value]

    def run(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        before = mlflow.active_run()
        try:
            return super().run(*args, **kwargs)
        except BaseException as error:
            end_open_runs(error, keep=before.info.run_id if before is not None else None)
            raise


# ------------------------------------------------------------------------------------------------------ tags
def run_tags(params: dict[str, Any], pipeline: Pipeline, env: str | None) -> dict[str, str]:
    """Tags of one run: data set source and root name, backbone, seed, env and the evaluated methods."""
    dataset, features = params.get("dataset", {}), params.get("features", {})
    scored = sorted(n.namespace for n in pipeline.nodes if n.name.endswith(".score") and n.namespace)
    return {
        "dataset": str(dataset.get("source")),
        "dataset_root": str(dataset.get("root")),
        "backbone": str(features.get("backbone")),
        "seed": str(params.get("seed")),
        "env": str(env),
        "methods": ",".join(scored),
    }


def run_name(pipeline_name: str, tags: dict[str, str]) -> str:
    """e.g. "__default__ synthetic efficientnet_lite0 seed 0"."""
    return f"{pipeline_name} {tags['dataset']} {tags['backbone']} seed {tags['seed']}"


class MlflowTagsHook:
    """Sets run tags once the kedro-mlflow run is active (it starts in before_pipeline_run), and the run name when
    kedro-mlflow gave it the default one (the pipeline's name; conf/base/mlflow.yml tracking.run.name: null)."""

    def __init__(self) -> None:
        self._tags: dict[str, str] | None = None
        self._pipeline_name = "__default__"

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        self._params, self._env = context.params, context.env

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Pipeline) -> None:
        self._tags = run_tags(self._params, pipeline, self._env)
        names = run_params.get("pipeline_name") or run_params.get("pipeline_names") or ["__default__"]
        self._pipeline_name = "+".join([names] if isinstance(names, str) else names)  # kedro-mlflow's default name

    @hook_impl
    def before_node_run(self) -> None:
        run = mlflow.active_run()
        if self._tags and run is not None:
            mlflow.set_tags(self._tags)
            if run.info.run_name == self._pipeline_name:
                mlflow.set_tag("mlflow.runName", run_name(self._pipeline_name, self._tags))
            self._tags = None
