#!/usr/bin/env bash
# Runs the generation benchmarks (with and without the KV cache) and the memory report, then plots them.
#
#   bash scripts/bench.sh [--quick] [--threads N] [--models random,real,seq2seq] [--max-uncached-real N]
#
# Builds bench_generation and memory_report in Release (build dir: $KVCACHE_BUILD_DIR, default build-bench),
# writes bench/results/*.json, prints one line per benchmark case as it starts and as it ends, then runs
# scripts/plot_bench.py, which writes bench/plots/*.png and prints the fitted slopes and the speedups.
# --quick finishes in under 2 minutes on 2 cores (fewer and shorter cases); the full run takes ~15 minutes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${KVCACHE_BUILD_DIR:-$ROOT/build-bench}"
RESULTS="$ROOT/bench/results"
PLOTS="$ROOT/bench/plots"
QUICK=0
THREADS=0
MODELS="random,real,seq2seq"
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --threads) THREADS="$2"; shift ;;
    --models) MODELS="$2"; shift ;;
    --max-uncached-real) EXTRA+=("--max-uncached-real=$2"); shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# matplotlib from Debian's python3-matplotlib: prefer a python3 that can import it.
PYTHON=""
for p in python3 /usr/bin/python3; do
  if command -v "$p" >/dev/null && "$p" -c 'import matplotlib, numpy' 2>/dev/null; then PYTHON="$p"; break; fi
done
if [[ -z "$PYTHON" ]]; then
  echo "bench.sh: no python3 with matplotlib and numpy; apt-get install python3-matplotlib python3-numpy" >&2
  exit 1
fi

START=$(date +%s)
elapsed() { echo "$(( $(date +%s) - START ))s"; }
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average $(cut -d' ' -f1-3 /proc/loadavg)"
if awk '{ exit !($1 > 0.5) }' /proc/loadavg; then
  echo "   warning: the machine is busy; the kernels wait at a barrier for a core another process holds, so"
  echo "   timings will be noisy and slow. Re-run when 'uptime' shows a load below ~0.3 for trustworthy numbers."
fi

echo "== building bench_generation and memory_report (Release) in $BUILD [$(elapsed)]"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVCACHE_BUILD_BENCH=ON >/dev/null
cmake --build "$BUILD" --target bench_generation memory_report -j2 | grep -v '^\[' || true
mkdir -p "$RESULTS" "$PLOTS"
SUFFIX=""; [[ $QUICK == 1 ]] && SUFFIX="_quick"

echo "== KV-cache memory report [$(elapsed)]"
"$BUILD/bench/memory_report" --random --json "$RESULTS/memory_random.json" | tail -n +3 | awk 'NR==1 || /8192|allocated ==/'
if [[ ",$MODELS," == *",real,"* ]]; then
  if "$BUILD/bench/memory_report" --json "$RESULTS/memory_real.json" > "$RESULTS/memory_real.txt"; then
    head -3 "$RESULTS/memory_real.txt" | head -1; awk 'NR==3 || /8192|allocated ==/' "$RESULTS/memory_real.txt"
  else
    echo "   (real model: see $RESULTS/memory_real.txt)"
  fi
fi

ARGS=(--models="$MODELS" --threads="$THREADS")
[[ $QUICK == 1 ]] && ARGS+=(--quick)
ARGS+=("${EXTRA[@]+"${EXTRA[@]}"}")
TOTAL=$("$BUILD/bench/bench_generation" "${ARGS[@]}" --benchmark_list_tests=true | wc -l)
OUT="$RESULTS/generation$SUFFIX.json"
echo "== bench_generation: $TOTAL cases -> $OUT [$(elapsed)]"
# Google Benchmark prints a case when it ends; bench_generation prints "running <case>" when one starts.
# Repeated cases print mean/median/stddev/cv/min: show the min (what the plots use).
done_cases=0
stdbuf -oL -eL "$BUILD/bench/bench_generation" "${ARGS[@]}" --benchmark_out="$OUT" --benchmark_out_format=json 2>&1 |
  while IFS= read -r line; do
    case "$line" in
      running\ *) printf '  [%d/%d] %-40s ... ' "$((done_cases + 1))" "$TOTAL" "${line#running }" ;;
      BM_*_mean*|BM_*_median*|BM_*_stddev*|BM_*_cv*) ;;
      BM_*) done_cases=$((done_cases + 1)); read -r _ t unit _ <<<"$line"
            kind="one run"; [[ "$line" == *_min* ]] && kind="best of 3"
            printf '%s %s (%s)  [%s]\n' "$t" "$unit" "$kind" "$(elapsed)" ;;
      *rror*|*skipping*) echo "  $line" ;;
    esac
  done
[[ ${PIPESTATUS[0]} == 0 ]] || { echo "bench.sh: bench_generation failed" >&2; exit 1; }

echo "== plots [$(elapsed)]"
PLOT_ARGS=(--generation "$OUT" --memory "$RESULTS/memory_random.json" --out "$PLOTS")
[[ -f "$RESULTS/memory_real.json" ]] && PLOT_ARGS+=(--memory "$RESULTS/memory_real.json")
[[ $QUICK == 1 ]] && PLOT_ARGS+=(--suffix _quick)
"$PYTHON" "$ROOT/scripts/plot_bench.py" "${PLOT_ARGS[@]}" | tee "$RESULTS/summary$SUFFIX.txt"
echo "== done in $(elapsed); load average now $(cut -d' ' -f1-3 /proc/loadavg)"
