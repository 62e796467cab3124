"""The ingestion pipeline."""

from unseg.pipelines.ingestion.pipeline import create_pipeline

__all__ = ["create_pipeline"]
