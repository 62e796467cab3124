"""The PriMaPs pipeline (mask proposals and PriMaPs-EM), and the PiCIE + PriMaPs-EM combination."""

from unseg.pipelines.primaps.pipeline import create_picie_primaps_pipeline, create_pipeline

__all__ = ["create_picie_primaps_pipeline", "create_pipeline"]
