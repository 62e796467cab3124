"""Kedro pipelines: thin nodes over unseg.core."""
