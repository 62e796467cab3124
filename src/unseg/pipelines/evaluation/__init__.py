"""The evaluation pipeline."""

from unseg.pipelines.evaluation.pipeline import create_pipeline

__all__ = ["create_pipeline"]
