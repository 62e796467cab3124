"""Prints the mutation score of each module mutmut has results for (read from mutants/**/*.meta).

Run by scripts/mutation.sh after `mutmut run`; a mutant counts as killed when a test failed on it or it made the
tests time out. `--survivors` also lists the surviving mutants' names (inspect one with `mutmut show NAME`);
`--pending` lists only the names of those not killed yet (survived or never checked), which
`scripts/mutation.sh --survivors` re-runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

KILLED = {1: "killed", 3: "killed", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout"}
NOT_RUN = {None: "not checked", 2: "interrupted", 34: "skipped"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--survivors", action="store_true", help="list every mutant that survived")
    parser.add_argument("--pending", action="store_true",
                        help="only list the mutants not killed yet (survived or never checked), one a line")
    parser.add_argument("--min-score", type=float, default=80.0, help="score every module must reach (percent)")
    args = parser.parse_args()
    metas = sorted(Path("mutants").rglob("*.py.meta"))
    if not metas:
        sys.stderr.write("no mutmut results under ./mutants: run scripts/mutation.sh first\n")
        return 2
    if args.pending:
        for meta in metas:
            codes = json.loads(meta.read_text())["exit_code_by_key"]
            sys.stdout.writelines(f"{name}\n" for name, c in sorted(codes.items()) if c not in KILLED)
        return 0
    rows, failing = [], 0
    for meta in metas:
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        counts = Counter("killed" if c in KILLED else NOT_RUN.get(c, "survived") for c in codes.values())
        checked = counts["killed"] + counts["survived"]
        module = str(meta.relative_to("mutants/src")).removesuffix(".meta")
        if checked == 0:
            rows.append(f"{module:<34} {len(codes):>6} {'':>7} {'':>9} {'not run':>7}")
            continue
        score = 100.0 * counts["killed"] / checked
        failing += score < args.min_score
        rows.append(f"{module:<34} {len(codes):>6} {counts['killed']:>7} {counts['survived']:>9} {score:>6.1f}%")
        if args.survivors:
            rows += [f"    {name}" for name, c in sorted(codes.items()) if c not in KILLED and c not in NOT_RUN]
    sys.stdout.write(f"{'module':<34} {'mutants':>6} {'killed':>7} {'survived':>9} {'score':>7}\n")
    sys.stdout.write("\n".join(rows) + "\n")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
