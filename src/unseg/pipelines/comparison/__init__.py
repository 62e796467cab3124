"""The comparison pipeline."""

from unseg.pipelines.comparison.pipeline import create_pipeline

__all__ = ["create_pipeline"]
