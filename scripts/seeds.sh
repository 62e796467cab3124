#!/usr/bin/env bash
# Runs the whole chain once per seed, then summarises every run of the experiment (mean +- std over seeds).
#   bash scripts/seeds.sh 0 1 2 [-- extra kedro run arguments, e.g. --env cityscapes27 --params "a.b=1"]
# A --params among the extra arguments is merged with each run's seed.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do seeds+=("$1"); shift; done
[ $# -gt 0 ] && shift
[ ${#seeds[@]} -gt 0 ] || { echo "usage: bash scripts/seeds.sh SEED [SEED ...] [-- kedro run args]" >&2; exit 2; }
args=() params=""
while [ $# -gt 0 ]; do
  case "$1" in
    --params) params=",$2"; shift 2 ;;
    --params=*) params=",${1#--params=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
for seed in "${seeds[@]}"; do
  .venv/bin/kedro run "${args[@]}" --params "seed=$seed$params"
done
comparison=()
for ((i = 0; i < ${#args[@]}; i++)); do  # the summary keeps only the environment of the runs
  case "${args[$i]}" in
    --env) comparison+=(--env "${args[$((i + 1))]}") ;;
    --env=*) comparison+=("${args[$i]}") ;;
  esac
done
.venv/bin/kedro run --pipelines comparison "${comparison[@]}"
cat data/08_reporting/runs_summary.md
