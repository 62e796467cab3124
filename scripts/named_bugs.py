"""Puts each bug named in issue 11 into a copy of the code, one at a time, and runs the tests that should catch it.

    .venv/bin/python scripts/named_bugs.py            # every bug; exit status 1 if one goes unnoticed
    .venv/bin/python scripts/named_bugs.py greedy     # the bugs whose name contains "greedy"

Each bug is a plausible one-line slip (a greedy matching, a swapped pair, a forgotten transform). The copy lives in a
temporary folder and is imported through PYTHONPATH, so the working tree is never touched. Prints, per bug, the
tests that failed on it. docs/testing.md explains how this complements the mutation score (scripts/mutation.sh).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Bug:
    name: str
    path: str  # under src/unseg/
    old: str
    new: str
    tests: tuple[str, ...]


GREEDY = """\
    class_idx, cluster_idx = [], []
    for flat in np.argsort(-hist, axis=None, kind="stable"):  # greedy: the largest free cell first
        k, c = divmod(int(flat), num_clusters)
        if k not in class_idx and c not in cluster_idx:
            class_idx.append(k)
            cluster_idx.append(c)
"""

PICIE_TESTS = ("tests/core/test_picie_views.py", "tests/core/test_picie_loss.py", "tests/core/test_picie_epoch.py",
               "tests/core/test_picie_train.py")

BUGS = (
    Bug("hungarian replaced by greedy matching", "core/metrics.py",
        "    class_idx, cluster_idx = linear_sum_assignment(hist, maximize=True)\n", GREEDY,
        ("tests/core/test_metrics.py", "tests/core/test_evaluate.py")),
    Bug("picie: both views with view 1's photometric parameters", "core/picie/views.py",
        "    x = photometric(base, params, view)\n", "    x = photometric(base, params, 0)\n",
        PICIE_TESTS),
    Bug("picie: labels y1 and y2 swapped in the batch loss", "core/picie/train.py",
        "    y1, y2 = (torch.from_numpy(", "    y2, y1 = (torch.from_numpy(",
        PICIE_TESTS),
    Bug("picie: T not applied to view 2's features", "core/picie/train.py",
        "        f2 = transform_features(ctx.net(x2), sub)\n",
        "        f2 = ctx.net(x2)\n",
        PICIE_TESTS),
    Bug("primaps: principal direction over all cells, not the uncovered ones", "core/primaps/proposals.py",
        "        direction = principal_directions(x, fr, config.solver)\n",
        "        direction = principal_directions(x, torch.ones_like(fr), config.solver)\n",
        ("tests/core/test_primaps_proposals.py",)),
    Bug("kmeans scorer: nearest-neighbour label upsampling instead of bilinear scores", "core/kmeans.py",
        "    return upsampled_scores(features, centroids, metric, size, bias).argmax(1)\n",
        "    labels = upsampled_scores(features, centroids, metric, None, bias).argmax(1)\n"
        "    if size is None:\n        return labels\n"
        "    return F.interpolate(labels[:, None].float(), size=size, mode=\"nearest\")[:, 0].long()\n",
        ("tests/core/test_kmeans.py", "tests/core/test_evaluate.py")),
)


def failing_tests(bug: Bug, workdir: Path) -> list[str]:
    """Applies `bug` to a fresh copy in `workdir` and returns the ids of the tests that failed."""
    if workdir.exists():
        shutil.rmtree(workdir)
    shutil.copytree(ROOT / "src", workdir / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "tests", workdir / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "conf", workdir / "conf", ignore=shutil.ignore_patterns("local"))
    (workdir / "conf" / "local").mkdir(exist_ok=True)
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(ROOT / name, workdir / name)
    target = workdir / "src" / "unseg" / bug.path
    source = target.read_text()
    if source.count(bug.old) != 1:
        raise SystemExit(f"{bug.name}: the line to break is not in src/unseg/{bug.path} exactly once; update BUGS")
    target.write_text(source.replace(bug.old, bug.new))
    env = {**os.environ, "PYTHONPATH": str(workdir / "src"), "KEDRO_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *bug.tests],
                          cwd=workdir, env=env, capture_output=True, text=True)
    return re.findall(r"^FAILED (\S+)", done.stdout, flags=re.MULTILINE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("filter", nargs="?", default="", help="run only the bugs whose name contains this")
    args = parser.parse_args()
    missed = 0
    with tempfile.TemporaryDirectory(prefix="named-bugs-") as tmp:
        for bug in (b for b in BUGS if args.filter in b.name):
            failed = failing_tests(bug, Path(tmp) / "copy")
            missed += not failed
            sys.stdout.write(f"{'caught' if failed else 'MISSED'}: {bug.name}\n")
            sys.stdout.writelines(f"    {test}\n" for test in failed)
            sys.stdout.flush()
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
