#!/usr/bin/env bash
# The CAG benchmark: synthetic knowledge bases of about 2k, 4k and 7k SmolLM2 tokens (seeded), each evaluated
# with kvcache-cag in the three modes (cag, rag, none) on the same questions, then one plot.
#   bash scripts/cag-bench.sh [OUT_DIR]      (default: $TMPDIR/kvcache-cag-bench)
# Knobs (environment): BUILD_DIR=build, QUESTIONS=8 (per size), NONE_QUESTIONS=3 (none is the slow mode:
# it prefills the whole knowledge per question), THREADS=1 (on a shared machine two OpenMP threads wait on
# each other at every barrier), SIZES="2000 4000 7000", SEED=1.
# The knowledge caches are prefilled once per size (a fresh cache directory each run; not in per-answer time).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-${TMPDIR:-/tmp}/kvcache-cag-bench}"
build="${BUILD_DIR:-$root/build}"
cag="$build/apps/cag/kvcache-cag"
[ -x "$cag" ] || { echo "build kvcache-cag first: cmake --build $build --target kvcache-cag" >&2; exit 1; }
mkdir -p "$out"
# matplotlib lives in Debian's python3; a python3 earlier on PATH (pyenv, venv) may not have it.
PYTHON=python3
python3 -c 'import matplotlib' 2>/dev/null || PYTHON=/usr/bin/python3
results=()
for tokens in ${SIZES:-2000 4000 7000}; do
  dir="$out/kb$tokens"
  python3 "$root/scripts/make_synthetic_kb.py" --seed "${SEED:-1}" --tokens "$tokens" \
    --questions "${QUESTIONS:-8}" --out "$dir"
  rm -f "$dir/kb.sqlite"
  rm -rf "$dir/caches"
  "$cag" --db "$dir/kb.sqlite" ingest "$dir/docs" | tail -1
  "$cag" --db "$dir/kb.sqlite" --cache-dir "$dir/caches" --threads "${THREADS:-1}" eval "$dir/qa.jsonl" \
    --modes cag,rag,none --none-limit "${NONE_QUESTIONS:-3}" --json "$out/results_$tokens.json" \
    | tee "$out/table_$tokens.txt"
  results+=("$out/results_$tokens.json")
done
"$PYTHON" "$root/scripts/plot_cag.py" --out "$out/cag.png" "${results[@]}"
