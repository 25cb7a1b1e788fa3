#!/usr/bin/env bash
# kvcache-perplexity's command line (ctest runs this with the built binary): --help exits 0; sizes out of range
# (0, -1 taken as 2^64 - 1, negative threads that meant "all cores") are refused with a short message and a
# non-zero status, not a 309-digit bound or a silent "all"; a malformed model file is "error: ..." and status 1.
set -uo pipefail
ppl="$1"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# expect_refused DESCRIPTION ARGS...: status 1..127, a message on stderr of at most 400 characters
expect_refused() {
    local what="$1"; shift
    local status err
    "$ppl" "$@" >"$tmp/out" 2>"$tmp/err"; status=$?
    err="$(cat "$tmp/err")"
    if [ "$status" -eq 0 ] || [ "$status" -ge 128 ]; then fail "$what: status $status (want a clean non-zero exit)"; fi
    if [ -z "$err" ]; then fail "$what: no message"; fi
    if [ "${#err}" -gt 400 ]; then fail "$what: a ${#err}-character message"; fi
    echo "ok: $what -> $(echo "$err" | tail -1 | cut -c1-120)"
}

printf 'hello world. %.0s' $(seq 1 50) >"$tmp/text.txt"
"$ppl" --help >/dev/null || fail "--help exits $?"
expect_refused "--ctx 0 (printed DBL_MAX's 309 digits)" "$tmp/text.txt" --ctx 0
expect_refused "--batch 0" "$tmp/text.txt" --batch 0
expect_refused "--threads -1 (was: all cores)" "$tmp/text.txt" --threads -1
expect_refused "--tokens -1 (was: 2^64 - 1, all)" "$tmp/text.txt" --tokens -1
expect_refused "--chunks -1" "$tmp/text.txt" --chunks -1
expect_refused "--sinks 2^64 - 1" "$tmp/text.txt" --sinks 18446744073709551615 --window 8
expect_refused "--evict-block 0" "$tmp/text.txt" --window 8 --evict-block 0
expect_refused "--ctx 2^64 - 1" "$tmp/text.txt" --ctx 18446744073709551615
expect_refused "an unknown option" "$tmp/text.txt" --bogus
expect_refused "a missing text file" "$tmp/none.txt"
printf 'GGUF\003\000\000\000' >"$tmp/truncated.gguf"
expect_refused "a truncated model file" "$tmp/text.txt" -m "$tmp/truncated.gguf"
grep -q "^error: " "$tmp/err" || fail "a truncated model file: no 'error:' line"
[ "$failures" -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "all command-line checks passed"
