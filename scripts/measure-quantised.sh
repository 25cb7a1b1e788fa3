#!/usr/bin/env bash
# The measurements of docs/quantised-caches.md: perplexity of SmolLM2 per cache type at ctx 2048, sinks vs a plain
# window over a text 4x longer than the cache, and decode attention per element type at context 8192.
# Results go to bench/results/quantised/ (JSON); scripts/plot_quantised.py turns them into the table and plot.
#
# Usage: scripts/measure-quantised.sh [BUILD_DIR]   (env: CHUNKS=3 THREADS=2 CACHE=512 TYPES="f32 f16 ...")
set -euo pipefail
build=${1:-build}
out=bench/results/quantised
chunks=${CHUNKS:-3}
threads=${THREADS:-2}
cache=${CACHE:-512}
mkdir -p "$out"
text=$build/perplexity/genesis-kjv.txt
[ -f "$text" ] || scripts/fetch-perplexity-text.sh "$text"
ppl=$build/apps/perplexity/kvcache-perplexity

# 1. decode attention per element type at context 8192 (one layer of SmolLM2's shape per call, cold caches)
"$build"/bench/bench_attention --attn_cold_mib=512 \
  --benchmark_filter='BM_DecodeAttention/.*/context:(8192|16384)/threads:[12]$' \
  --benchmark_format=json --benchmark_out="$out/attention.json" --benchmark_out_format=json >/dev/null

# 2. perplexity per cache type, ctx 2048, the same chunks (the first CHUNKS) of the same text; then K/V mixes
for t in ${TYPES:-f32 f16 q8_0 q4_0 q4_0h}; do
  "$ppl" "$text" --ctx 2048 --cache-type "$t" --chunks "$chunks" --threads "$threads" --batch 512 --json \
    > "$out/ppl_$t.json"
done
for kv in q8_0:q4_0 q4_0h:q4_0; do
  k=${kv%:*} v=${kv#*:}
  "$ppl" "$text" --ctx 2048 --cache-type-k "$k" --cache-type-v "$v" --chunks "$chunks" --threads "$threads" \
    --batch 512 --json > "$out/ppl_k-${k}_v-${v}.json"
done

# 3. a text 4x longer than the cache, streamed: sinks + window against a plain window of the same size
"$ppl" "$text" --ctx 64 --sinks 4 --window $((cache - 4)) --evict-block 32 --threads "$threads" --json \
  --tokens $((4 * cache)) > "$out/stream_sinks.json"
"$ppl" "$text" --ctx 64 --sinks 0 --window "$cache" --evict-block 32 --threads "$threads" --json \
  --tokens $((4 * cache)) > "$out/stream_window.json"
echo "results in $out"
