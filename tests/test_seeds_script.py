"""scripts/seeds.sh: one `kedro run` per seed (extra arguments passed on, --params merged with the seed), then the
comparison pipeline in the same environment. A stand-in `kedro` records the calls."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_seeds_script_runs_each_seed_then_the_comparison(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts/seeds.sh", tmp_path / "scripts/seeds.sh")
    fake = tmp_path / ".venv/bin/kedro"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/usr/bin/env bash\necho "$*" >> calls.txt\nmkdir -p data/08_reporting\n'
                    'echo "| summary |" > data/08_reporting/runs_summary.md\n')
    fake.chmod(0o755)
    done = subprocess.run(["bash", "scripts/seeds.sh", "1", "2", "--", "--env", "cityscapes27", "--pipelines",
                           "ingestion,picie", "--params", "picie.train.epochs=2"], cwd=tmp_path, check=True,
                          capture_output=True, text=True)
    assert (tmp_path / "calls.txt").read_text().splitlines() == [
        "run --env cityscapes27 --pipelines ingestion,picie --params seed=1,picie.train.epochs=2",
        "run --env cityscapes27 --pipelines ingestion,picie --params seed=2,picie.train.epochs=2",
        "run --pipelines comparison --env cityscapes27",
    ]
    assert done.stdout == "| summary |\n"


def test_seeds_script_needs_a_seed(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(ROOT / "scripts/seeds.sh")], capture_output=True, text=True)
    assert done.returncode == 2 and "usage:" in done.stderr
