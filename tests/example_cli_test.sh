#!/usr/bin/env bash
# example_simple's and example_decoder_speed's command lines (ctest runs this with the built binaries): --help
# exits 0; numbers out of range (2^64 - 1 and -1 tokens, 300 digits, negative threads, NaN and infinite
# temperatures, an unknown chat format) are refused with a short message and a non-zero status instead of being
# wrapped or taken as "all cores"; a malformed model file ends with "error: ..." and status 1, not an abort;
# with the model present, a temperature of 1e-45 (1/T infinite: the sampler crashed) generates.
set -uo pipefail
simple="$1"
speed="$2"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="${KVCACHE_MODEL:-$root/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# expect_refused DESCRIPTION BINARY ARGS...: status 1..127, a message on stderr of at most 400 characters
expect_refused() {
    local what="$1" bin="$2"; shift 2
    local status err
    "$bin" "$@" >"$tmp/out" 2>"$tmp/err"; status=$?
    err="$(cat "$tmp/err")"
    if [ "$status" -eq 0 ] || [ "$status" -ge 128 ]; then fail "$what: status $status (want a clean non-zero exit)"; fi
    if [ -z "$err" ]; then fail "$what: no message"; fi
    if [ "${#err}" -gt 400 ]; then fail "$what: a ${#err}-character message"; fi
    echo "ok: $what -> $(echo "$err" | head -1 | cut -c1-120)"
}

"$simple" --help >/dev/null || fail "example_simple --help exits $?"
"$speed" --help >/dev/null || fail "example_decoder_speed --help exits $?"
expect_refused "--max-tokens 2^64 - 1" "$simple" -n 18446744073709551615
expect_refused "--max-tokens -1" "$simple" -n -1
expect_refused "--max-tokens 1e300" "$simple" -n 1e300
expect_refused "--max-tokens of 300 digits" "$simple" -n "1$(printf '0%.0s' $(seq 1 299))"
expect_refused "--threads -1 (was: all cores)" "$simple" --threads -1
expect_refused "--temperature nan" "$simple" -t nan
expect_refused "--temperature inf" "$simple" -t inf
expect_refused "--temperature -1" "$simple" -t -1
expect_refused "--top-p 0" "$simple" --top-p 0
expect_refused "--top-k -5" "$simple" --top-k -5
expect_refused "--chat-format jinja" "$simple" --chat-format jinja
expect_refused "example_decoder_speed --threads -1" "$speed" --threads -1
expect_refused "example_decoder_speed --generate 2^64 - 1" "$speed" --generate 18446744073709551615

printf 'GGUF\003\000\000\000' >"$tmp/truncated.gguf"
expect_refused "a truncated model file (example_simple)" "$simple" -m "$tmp/truncated.gguf"
expect_refused "a truncated model file (example_decoder_speed)" "$speed" -m "$tmp/truncated.gguf" --no-bandwidth
grep -q "^error: " "$tmp/err" || fail "a truncated model file: no 'error:' line"
mkfifo "$tmp/fifo.gguf"
expect_refused "a FIFO as the model (must not block)" timeout 20 "$simple" -m "$tmp/fifo.gguf"

if [ -f "$model" ]; then
    if "$simple" -m "$model" -t 1e-45 -n 2 --threads 1 --no-uncached "hi" >"$tmp/out" 2>"$tmp/err"; then
        echo "ok: temperature 1e-45 generates"
    else
        fail "temperature 1e-45: status $? ($(tail -1 "$tmp/err"))"
    fi
else
    echo "skip: no model at $model for the generation check"
fi

[ "$failures" -eq 0 ] && echo "all example command-line checks passed"
exit "$failures"
