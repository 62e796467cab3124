"""The PiCIE pipeline."""

from unseg.pipelines.picie.pipeline import create_pipeline

__all__ = ["create_pipeline"]
