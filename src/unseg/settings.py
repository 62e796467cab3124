"""Project settings (https://docs.kedro.org/en/stable/configure/configuration_basics/)."""

import os

from omegaconf.resolvers import oc

from unseg.hooks import MlflowTagsHook, RunChecksHook, TrackedSession
from unseg.lock import RunLockHook

# No run ever tries the network: kedro-telemetry is also switched off by the project's .telemetry file.
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
# OpenMP threads that spin between parallel regions slow the DataLoader workers and faiss on small CPUs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # an environment overrides single keys of a parameters block instead of replacing the whole block
    "merge_strategy": {"parameters": "soft"},
    "config_patterns": {"mlflow": ["mlflow*", "mlflow*/**"]},
    # conf/base/mlflow.yml reads MLFLOW_TRACKING_URI with a default
    "custom_resolvers": {"oc.env": oc.env},
}

# RunChecksHook: every parameter and the tracking store checked as the run starts, before any work
HOOKS = (RunChecksHook(), MlflowTagsHook())
# records a run stopped by Ctrl-C as KILLED in MLflow (Kedro calls no hook for a KeyboardInterrupt)
SESSION_CLASS = TrackedSession
# one `kedro run` per project at a time (data/.kedro-run.lock; unseg/lock.py)
HOOKS = (*HOOKS, RunLockHook())
# Under torchrun (python -m unseg run, docs/distributed.md) rank 0 alone checks, locks and tracks the run: the other
# processes run no project hook and no kedro-mlflow (one MLflow run; unseg.runner.DistributedRunner saves once).
if int(os.environ.get("RANK", "0")) > 0:
    HOOKS = ()
    DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow", "kedro-mlflow", "kedro-viz", "kedro-telemetry")
