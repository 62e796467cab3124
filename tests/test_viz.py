"""`kedro viz build` works offline on the project and shows every registered pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kedro.framework.project import configure_project, pipelines

pytestmark = pytest.mark.integration


def test_viz_build_lists_every_pipeline(project_copy: Path) -> None:
    subprocess.run([sys.executable, "-m", "kedro", "viz", "build"], cwd=project_copy, check=True,
                   capture_output=True, timeout=300)
    main = json.loads((project_copy / "build/api/main").read_text())
    configure_project("unseg")
    assert {p["id"] for p in main["pipelines"]} == set(pipelines)
    tasks = [n["name"] for n in main["nodes"] if n["type"] == "task"]
    assert len(tasks) == len(pipelines["__default__"].nodes)
    assert {"build_image_index", "prepare_images", "extract_features", "compare_methods"} <= set(tasks)
