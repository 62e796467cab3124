#!/usr/bin/env bash
# Mutation testing of the method cores with mutmut (configured in pyproject.toml, [tool.mutmut]); not run in CI: a
# full run takes about 70 minutes on 2 cores. Prints the score per module (killed / checked mutants) at the end.
#
#   bash scripts/mutation.sh                      every configured module, from scratch
#   bash scripts/mutation.sh core/picie/loss.py   one or more modules (their mutants re-run, other results kept)
#   bash scripts/mutation.sh --survivors          re-run only the mutants not killed so far (survived or unchecked)
#   bash scripts/mutation.sh --survivors core/picie/train.py   the same, of these modules only
#
# Inspect a survivor with `.venv/bin/mutmut show NAME`; docs/testing.md lists the ones that are equivalent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export KEDRO_DISABLE_TELEMETRY=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
patterns=()
module_prefix() {  # core/picie/train.py -> unseg.core.picie.train.
    local module=${1#src/}; module=${module#unseg/}; module=${module%.py}
    echo "unseg.${module//\//.}."
}
if [ "${1:-}" = "--survivors" ]; then
    shift
    mapfile -t patterns < <(.venv/bin/python scripts/mutation_score.py --pending)
    if [ $# -gt 0 ]; then
        prefixes=(); for module in "$@"; do prefixes+=("$(module_prefix "$module")"); done
        mapfile -t patterns < <(printf '%s\n' "${patterns[@]}" | grep -F "${prefixes[@]/#/-e}" || true)
    fi
    [ ${#patterns[@]} -gt 0 ] || { echo "no survivors to re-run"; exit 0; }
elif [ $# -gt 0 ]; then
    for module in "$@"; do patterns+=("$(module_prefix "$module")*"); done
else
    rm -rf mutants
fi
mkdir -p mutants
echo "mutmut run: progress in mutants/mutmut.log"
# its own session, so that worker processes mutmut leaves behind (seen: hundreds, holding GBs) are ended with it
setsid .venv/bin/mutmut run "${patterns[@]}" > mutants/mutmut.log 2>&1 &
session=$!
status=0
wait "$session" || status=$?
pkill -s "$session" 2>/dev/null || true
[ "$status" -eq 0 ] || { tail -n 30 mutants/mutmut.log; exit 1; }
.venv/bin/python scripts/mutation_score.py
