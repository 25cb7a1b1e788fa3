#!/usr/bin/env bash
# Decode speed with one and two threads, on a quiet machine and with the second core kept busy by another program
# (a shell loop pinned to core 1) — the situation a user's laptop or a shared server is in most of the time.
#
#   bash scripts/busy-core.sh [ROUNDS] [BINARY ...]
#
# Each BINARY is an example_simple (default: build/examples/example_simple); several binaries (e.g. a copy built
# from an older commit, then the current one) alternate run by run, so a drifting machine affects each alike.
# Prints one line per run: condition, threads, binary, decode tokens/s after the prompt.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${1:-3}
shift || true
binaries=("$@")
[ ${#binaries[@]} -eq 0 ] && binaries=(build/examples/example_simple)
for b in "${binaries[@]}"; do
    [ -x "$b" ] || { echo "busy-core.sh: $b is not an executable (build it: cmake --build build --target example_simple)" >&2; exit 2; }
done
if [ "$(nproc)" -lt 2 ]; then
    echo "busy-core.sh: needs at least 2 cores (this machine has $(nproc))" >&2
    exit 2
fi

busy_pid=
stop_busy() { [ -n "$busy_pid" ] && kill "$busy_pid" 2>/dev/null && wait "$busy_pid" 2>/dev/null; busy_pid=; }
trap stop_busy EXIT

decode_rate() {  # binary threads -> tokens/s after the prompt, from example_simple's "with cache" line
    "$1" --no-uncached --threads "$2" -n 64 --seed 1 "Tell me about the sea." 2>&1 |
        sed -n 's/^with cache:.*then \([0-9.]*\) tokens\/s.*/\1/p'
}

printf '%-6s %-7s %-40s %s\n' condition threads binary tokens/s
for condition in quiet busy; do
    if [ "$condition" = busy ]; then
        taskset -c 1 sh -c 'while :; do :; done' &
        busy_pid=$!
        sleep 0.5
    fi
    for ((r = 0; r < rounds; ++r)); do
        for threads in 1 2; do
            for b in "${binaries[@]}"; do
                printf '%-9s %-7s %-40s %s\n' "$condition" "$threads" "$b" "$(decode_rate "$b" "$threads")"
            done
        done
    done
    stop_busy
done
