"""Pipelines: one per stage, and `__default__` chaining them all (but `predict`, which needs a folder of yours).

Registered by name here rather than found by `kedro.framework.project.find_pipelines`: under `--pipelines X`, Kedro 1.x
asks it for X alone and it imports `unseg.pipelines.X`, so a pipeline without a folder of its own (`picie_primaps`)
could not be run by name.
"""

from kedro.pipeline import Pipeline

from unseg.pipelines import comparison, evaluation, features, ingestion, picie, predict, primaps

# registered, but not part of __default__
ON_DEMAND = ("predict",)


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {
        "ingestion": ingestion.create_pipeline(),
        "features": features.create_pipeline(),
        "picie": picie.create_pipeline(),
        "primaps": primaps.create_pipeline(),
        # PiCIE + PriMaPs-EM: its own name, so `primaps` runs without PiCIE
        "picie_primaps": primaps.create_picie_primaps_pipeline(),
        "evaluation": evaluation.create_pipeline(),
        "comparison": comparison.create_pipeline(),
        "predict": predict.create_pipeline(),
    }
    pipelines["__default__"] = sum((p for name, p in pipelines.items() if name not in ON_DEMAND), Pipeline([]))
    return pipelines
