#!/usr/bin/env bash
# Runs the whole chain once per seed, then summarises every run of the experiment (mean +- std over seeds).
#   bash scripts/seeds.sh 0 1 2 [-- extra kedro run arguments, e.g. --env cityscapes27]
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do seeds+=("$1"); shift; done
[ $# -gt 0 ] && shift
[ ${#seeds[@]} -gt 0 ] || { echo "usage: bash scripts/seeds.sh SEED [SEED ...] [-- kedro run args]" >&2; exit 2; }
for seed in "${seeds[@]}"; do
  .venv/bin/kedro run --params "seed=$seed" "$@"
done
.venv/bin/kedro run --pipelines comparison "$@"
cat data/08_reporting/runs_summary.md
