"""Pipelines: one per stage, and `__default__` chaining them all (but `predict`, which needs a folder of yours)."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

from unseg.pipelines.primaps import create_picie_primaps_pipeline

# registered, but not part of __default__
ON_DEMAND = ("predict",)


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    # PiCIE + PriMaPs-EM: its own name, so `primaps` runs without PiCIE
    pipelines["picie_primaps"] = create_picie_primaps_pipeline()
    pipelines["__default__"] = sum((p for name, p in pipelines.items() if name not in ON_DEMAND), Pipeline([]))
    return pipelines
