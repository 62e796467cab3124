"""The predict pipeline."""

from unseg.pipelines.predict.pipeline import create_pipeline

__all__ = ["create_pipeline"]
