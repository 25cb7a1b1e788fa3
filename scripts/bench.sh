#!/usr/bin/env bash
# Runs the generation benchmarks (with and without the KV cache) and the memory report, then plots them.
#
#   bash scripts/bench.sh [--quick] [--threads N] [--models random,real,seq2seq] [--max-uncached-real N]
#
# Installs what it needs from Debian's packages if missing (compiler, CMake, Google Benchmark,
# python3-matplotlib), fetches the default model if absent, builds bench_generation and memory_report in
# Release ($KVCACHE_BUILD_DIR, default build-bench), prints a line per benchmark case as it starts and ends,
# writes bench/results/*.json and summary*.txt, and plots to bench/plots/*.png (scripts/plot_bench.py).
# --quick: fewer and shorter cases, ~1 minute on 2 cores after the first build; the full run takes ~20 minutes.
# Run it on a quiet machine: every matmul ends in a barrier, so a core taken by another process slows every step.
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
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

START=$(date +%s)
elapsed() { echo "$(( $(date +%s) - START ))s"; }

# ---- what a fresh Debian 12 clone lacks: the build tools, the libraries, matplotlib (Debian's package) ----
need=(build-essential cmake ninja-build libeigen3-dev xtensor-dev libfmt-dev nlohmann-json3-dev catch2
      libbenchmark-dev python3-matplotlib python3-numpy)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  sudo_cmd=""; [[ "$(id -u)" -eq 0 ]] || sudo_cmd="sudo"
  echo "== installing ${missing[*]} (apt)"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# matplotlib lives in Debian's python3; a python3 earlier on PATH (pyenv, venv) may not have it.
PYTHON=""
for p in python3 /usr/bin/python3; do
  if command -v "$p" >/dev/null && "$p" -c 'import matplotlib, numpy' 2>/dev/null; then PYTHON="$p"; break; fi
done
[[ -n "$PYTHON" ]] || { echo "bench.sh: no python3 can import matplotlib and numpy (apt-get install python3-matplotlib)" >&2; exit 1; }
if [[ ",$MODELS," == *",real,"* && -z "${KVCACHE_MODEL:-}" ]]; then
  bash "$ROOT/scripts/fetch-model.sh" || { echo "   cannot fetch the model: running without it"; MODELS="${MODELS//real/}"; }
fi

cpu_name="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "== machine: $(nproc) cores ($cpu_name), load average $load_start"
if awk '{ exit !($1 > 0.5) }' /proc/loadavg; then
  echo "   warning: the machine is busy. The kernels wait at a barrier for a core another process holds, so"
  echo "   timings will be slow and noisy; re-run when 'uptime' shows a load below ~0.3 for numbers to quote."
fi

echo "== building bench_generation and memory_report (Release) in $BUILD [$(elapsed)]"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVCACHE_BUILD_BENCH=ON >/dev/null
cmake --build "$BUILD" --target bench_generation memory_report -j2 | grep -Ev '^\[[0-9]+/[0-9]+\]' || true
mkdir -p "$RESULTS" "$PLOTS"
SUFFIX=""; [[ $QUICK == 1 ]] && SUFFIX="_quick"

echo "== KV-cache memory report [$(elapsed)]"
"$BUILD/bench/memory_report" --random --json "$RESULTS/memory_random$SUFFIX.json" > "$RESULTS/memory_random$SUFFIX.txt"
awk 'NR==1 || NR==3 || /  8192 |formula for every/' "$RESULTS/memory_random$SUFFIX.txt"
MEMORY_ARGS=(--memory "$RESULTS/memory_random$SUFFIX.json")
if [[ ",$MODELS," == *",real,"* ]]; then
  if "$BUILD/bench/memory_report" --json "$RESULTS/memory_real$SUFFIX.json" > "$RESULTS/memory_real$SUFFIX.txt"; then
    awk 'NR==1 || /  8192 |formula for every/' "$RESULTS/memory_real$SUFFIX.txt"
    MEMORY_ARGS+=(--memory "$RESULTS/memory_real$SUFFIX.json")
  else
    echo "   (real model: see $RESULTS/memory_real$SUFFIX.txt)"
  fi
fi

ARGS=(--models="$MODELS" --threads="$THREADS")
[[ $QUICK == 1 ]] && ARGS+=(--quick)
ARGS+=("${EXTRA[@]+"${EXTRA[@]}"}")
TOTAL=$("$BUILD/bench/bench_generation" "${ARGS[@]}" --benchmark_list_tests=true | wc -l)
OUT="$RESULTS/generation$SUFFIX.json"
echo "== bench_generation: $TOTAL cases -> $OUT [$(elapsed)]"
# CPU time the whole machine spent (jiffies in user, nice, system, irq, softirq) against the benchmark's own:
# the difference is what other processes took while it ran, reported next to the numbers.
busy() { awk '/^cpu /{ print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
busy_before=$(busy); bench_start=$(date +%s.%N)
# Google Benchmark prints a case when it ends; bench_generation prints "running <case>" when one starts.
# Repeated cases print mean/median/stddev/cv/min: show the min (what the plots use).
done_cases=0
bench_cpu="$RESULTS/.bench_cpu"
status=0
( TIMEFORMAT='benchcpu %U %S'
  time stdbuf -oL -eL "$BUILD/bench/bench_generation" "${ARGS[@]}" --benchmark_out="$OUT" --benchmark_out_format=json
) 2>&1 |
  while IFS= read -r line; do
    case "$line" in
      running\ *) printf '  [%d/%d] %-34s ... ' "$((done_cases + 1))" "$TOTAL" "${line#running }" ;;
      BM_*_mean*|BM_*_median*|BM_*_stddev*|BM_*_cv*) ;;
      BM_*) done_cases=$((done_cases + 1)); read -r _ t unit _ <<<"$line"
            kind="1 run"; [[ "$line" == *_min* ]] && kind="best of 3"
            [[ "$line" == *ERROR* ]] && { t="error:"; unit="${line#*ERROR OCCURRED: }"; kind=""; }
            printf '%8s %-3s %-9s [%s]\n' "$t" "$unit" "$kind" "$(elapsed)" ;;
      benchcpu\ *) echo "${line#benchcpu }" > "$bench_cpu" ;;
      *rror*|*skipping*|*arning*) echo "  $line" ;;
    esac
  done || status=$?
[[ $status == 0 ]] || { echo "bench.sh: bench_generation failed (exit $status)" >&2; exit 1; }
others="?"
if [[ -s "$bench_cpu" ]]; then
  others=$(awk -v b0="$busy_before" -v b1="$(busy)" -v t0="$bench_start" -v t1="$(date +%s.%N)" \
               -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ((b1 - b0) / hz - $1 - $2) / (t1 - t0) }' "$bench_cpu")
  rm -f "$bench_cpu"
fi
load_end="$(cut -d' ' -f1-3 /proc/loadavg)"
threads_used=$THREADS; [[ $THREADS == 0 ]] && threads_used=$(nproc)
NOTE="$(nproc) cores ($cpu_name), $threads_used threads; load $load_start at start; other processes used $others cores on average during the run; $(date -u +%Y-%m-%d)"
echo "== $NOTE"

# ---- batched decode (issue 11): aggregate tokens/s with 1-16 sequences, admission latency; SmolLM2 only ----
BATCHED_ARGS=()
if [[ ",$MODELS," == *",real,"* ]]; then
  BATCHED_OUT="$RESULTS/batched$SUFFIX.json"
  echo "== bench_batched -> $BATCHED_OUT [$(elapsed)]"
  cmake --build "$BUILD" --target bench_batched -j2 | grep -Ev '^\[[0-9]+/[0-9]+\]' || true
  QUICK_ARG=(); [[ $QUICK == 1 ]] && QUICK_ARG=(--quick)
  # Repetitions: medians of 3 are what docs/batching.md quotes (the machine is shared and noisy).
  REPS=3; [[ $QUICK == 1 ]] && REPS=1
  "$BUILD/bench/bench_batched" --threads="$THREADS" "${QUICK_ARG[@]+"${QUICK_ARG[@]}"}" \
    --benchmark_repetitions=$REPS --benchmark_out="$BATCHED_OUT" --benchmark_out_format=json | grep -E '^BM_' || true
  BATCHED_ARGS=(--batched "$BATCHED_OUT" --batched-out "$ROOT/docs/images")
fi

echo "== bench_matmul --quick (int8 product vs the vpdpbusd peak) -> $RESULTS/matmul$SUFFIX.json [$(elapsed)]"
cmake --build "$BUILD" --target bench_matmul -j2 >/dev/null &&
  "$BUILD/bench/bench_matmul" --quick --benchmark_out="$RESULTS/matmul$SUFFIX.json" --benchmark_out_format=json |
  grep -E '^BM_' || echo "   bench_matmul failed (exit $?)"

echo "== plots [$(elapsed)]"
PLOT_ARGS=(--generation "$OUT" "${MEMORY_ARGS[@]}" "${BATCHED_ARGS[@]+"${BATCHED_ARGS[@]}"}" --out "$PLOTS" --note "$NOTE")
[[ $QUICK == 1 ]] && PLOT_ARGS+=(--suffix _quick)
"$PYTHON" "$ROOT/scripts/plot_bench.py" "${PLOT_ARGS[@]}" | tee "$RESULTS/summary$SUFFIX.txt"
echo "== done in $(elapsed); load average now $load_end"
