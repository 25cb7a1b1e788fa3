#!/usr/bin/env bash
# example_seq2seq's command line (ctest runs this with the built binary): --help exits 0; numbers that do not
# fit (token ids above 2^31, -1 for an unsigned count, a 300-digit number) are refused with a short message
# and a non-zero status instead of being wrapped; the bundled model answers "four hundred and twelve" with 412.
set -uo pipefail
bin="$1"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fixture="$root/tests/fixtures/seq2seq/post_norm_relu"
failures=0
err_file="$(mktemp)"
trap 'rm -f "$err_file"' EXIT
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# expect_refused DESCRIPTION ARGS...: non-zero status, a message on stderr, no answer on stdout, no crash
expect_refused() {
    local what="$1"; shift
    local out err status
    out="$("$bin" "$@" 2>"$err_file")"; status=$?
    err="$(cat "$err_file")"
    if [ "$status" -eq 0 ] || [ "$status" -ge 128 ]; then fail "$what: status $status (want a clean non-zero exit)"; fi
    if [ -z "$err" ]; then fail "$what: no message"; fi
    if [ -n "$out" ]; then fail "$what: printed an answer: $out"; fi
    if [ "${#err}" -gt 400 ]; then fail "$what: a ${#err}-character message"; fi
    echo "ok: $what -> $(echo "$err" | head -1)"
}

"$bin" --help >/dev/null || fail "--help exits $?"
expect_refused "token id 2^32 + 5 (was wrapped to 5)" --config "$fixture.config.json" --weights "$fixture.safetensors" --ids 4294967301
expect_refused "token id -1" --config "$fixture.config.json" --weights "$fixture.safetensors" --ids 5 -1
expect_refused "token id past the vocabulary" --config "$fixture.config.json" --weights "$fixture.safetensors" --ids 5 32
expect_refused "--max-new -1 (was 2^64 - 1)" --config "$fixture.config.json" --weights "$fixture.safetensors" --ids 5 --max-new -1
expect_refused "--max-new 0" --ids 5 --config "$fixture.config.json" --weights "$fixture.safetensors" --max-new 0
expect_refused "--max-new beyond max_positions" --config "$fixture.config.json" --weights "$fixture.safetensors" --ids 5 --max-new 1000
expect_refused "a 300-digit --repeat" --repeat "$(printf '9%.0s' $(seq 300))" "one"
expect_refused "--threads -1" --threads -1 "one"
expect_refused "octal-looking --seed" --seed 0x10 "one"
expect_refused "--temperature nan" --temperature nan "one"
expect_refused "a word outside the vocabulary" "fourty two"
expect_refused "a control token typed as text" "<eos>"
expect_refused "no text" 
expect_refused "missing weights" --weights /nonexistent.safetensors "one"

answer="$("$bin" "four hundred and twelve" --repeat 3 2>/dev/null)" || fail "four hundred and twelve: status $?"
[ "$answer" = "412" ] || fail "four hundred and twelve -> '$answer', want 412"
ids="$("$bin" --config "$fixture.config.json" --weights "$fixture.safetensors" --ids 5 9 12 7 --repeat 2 2>/dev/null)" \
    || fail "--ids on a fixture: status $?"
[ -n "$ids" ] || fail "--ids printed nothing"
echo "four hundred and twelve -> $answer; fixture ids 5 9 12 7 -> $ids"
exit $(( failures > 0 ))
