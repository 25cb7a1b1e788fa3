#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) in build-fuzz/ and runs each for a fixed time.
#   scripts/run-fuzz.sh                        # every target, FUZZ_SECONDS each (default 30: ~2.5 min in all)
#   scripts/run-fuzz.sh --all --minutes 10     # every target for 10 minutes (a longer local run)
#   scripts/run-fuzz.sh tokenizer_fuzz --seconds 120
# Targets: gguf_fuzz (GGUF structure), safetensors_fuzz (safetensors + encoder-decoder config JSON),
# cache_file_fuzz (cache-file reader), tokenizer_fuzz (encode/decode round trips; also SmolLM2's tokenizer when
# the model is in models/), gguf_semantic_fuzz (hostile metadata values in a valid model, then a forward pass).
# Env: FUZZ_SECONDS, FUZZ_BUILD_DIR (default build-fuzz), FUZZ_JOBS (build parallelism, default 2).
# Each target's corpus grows in $FUZZ_BUILD_DIR/fuzz-corpus/<target>; a crashing input is written to
# $FUZZ_BUILD_DIR/fuzz-artifacts/<target>-crash-<hash> and the script exits non-zero after running the rest.
# Reproduce one with: build-fuzz/tests/fuzz/<target> build-fuzz/fuzz-artifacts/<target>-crash-<hash>
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${FUZZ_SECONDS:-30}"
build="${FUZZ_BUILD_DIR:-$root/build-fuzz}"
jobs="${FUZZ_JOBS:-2}"
all_targets=(gguf_fuzz safetensors_fuzz cache_file_fuzz tokenizer_fuzz gguf_semantic_fuzz)
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --all) targets=("${all_targets[@]}") ;;
    --minutes) seconds=$(( ${2:?--minutes needs a number} * 60 )); shift ;;
    --seconds) seconds="${2:?--seconds needs a number}"; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *_fuzz) targets+=("$1") ;;
    *) echo "run-fuzz: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")
case "$seconds" in ''|*[!0-9]*) echo "run-fuzz: seconds must be a whole number, got '$seconds'" >&2; exit 2 ;; esac

if ! command -v clang++ >/dev/null 2>&1; then
  echo "run-fuzz: clang++ not found; installing clang" >&2
  if [ "$(id -u)" -eq 0 ]; then apt-get install -y clang; else sudo apt-get install -y clang; fi
fi

# -O1 -g1 as libFuzzer's documentation builds (line tables are enough for the sanitizers' reports): half the
# build time of -O2 -g.
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
  -DKVCACHE_BUILD_FUZZ=ON -DKVCACHE_BUILD_TESTS=OFF -DKVCACHE_BUILD_BENCH=OFF -DKVCACHE_BUILD_EXAMPLES=OFF \
  -DKVCACHE_BUILD_KB=OFF -DKVCACHE_INSTALL=OFF -DKVCACHE_WERROR=OFF >/dev/null
cmake --build "$build" --target "${targets[@]}" -j "$jobs"

artifacts="$build/fuzz-artifacts"
mkdir -p "$artifacts"

# Seeds (regenerated each run; the fuzzer only reads them): valid inputs each target's format starts from.
seed_dir() {
  local dir="$build/fuzz-seeds/$1"
  rm -rf "$dir" && mkdir -p "$dir"
  case "$1" in
    gguf_fuzz) cp "$root"/tests/fixtures/gguf/*.gguf "$dir/" ;;
    safetensors_fuzz)  # first byte: 0 safetensors image, 1 config JSON, 2 (u16 length) JSON + image
      python3 - "$root/tests/fixtures/seq2seq" "$dir" <<'PY'
import pathlib, struct, sys
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for st in sorted(src.glob("*.safetensors")):
    image = st.read_bytes()
    config = st.with_name(st.name.replace(".safetensors", ".config.json")).read_bytes()
    (dst / (st.stem + ".0")).write_bytes(b"\0" + image[:60000])
    (dst / (st.stem + ".1")).write_bytes(b"\1" + config)
    (dst / (st.stem + ".2")).write_bytes(b"\2" + struct.pack("<H", len(config)) + config + image[:60000])
PY
      ;;
    tokenizer_fuzz)
      printf 'Hello world, the thing <|im_start|>user\n<tool> caf\xc3\xa9 \xe2\x96\x81ab\xff\xfe' > "$dir/mixed"
      head -c 3000 "$root/README.md" > "$dir/readme" ;;
    *) printf '\0' > "$dir/empty" ;;
  esac
  echo "$dir"
}

max_len() {
  case "$1" in
    gguf_fuzz|safetensors_fuzz) echo 65536 ;;
    gguf_semantic_fuzz) echo 512 ;;
    tokenizer_fuzz) echo 1024 ;;
    *) echo 4096 ;;
  esac
}

model="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
failed=()
for target in "${targets[@]}"; do
  corpus="$build/fuzz-corpus/$target"
  mkdir -p "$corpus"
  seeds="$(seed_dir "$target")"
  extra=()
  [ "$target" = gguf_fuzz ] && extra+=(-dict="$root/tests/fuzz/gguf.dict")
  echo "run-fuzz: $target for ${seconds}s (corpus $corpus)"
  # The first directory receives new inputs; the second only seeds. A crash, leak, sanitizer report or a
  # >10 s input makes libFuzzer exit non-zero.
  if ! KVCACHE_FUZZ_MODEL="$( [ -f "$model" ] && [ "$target" = tokenizer_fuzz ] && echo "$model" || true)" \
      "$build/tests/fuzz/$target" -max_len="$(max_len "$target")" -max_total_time="$seconds" -timeout=10 \
      -rss_limit_mb=2048 -artifact_prefix="$artifacts/$target-" -print_final_stats=1 "${extra[@]}" \
      "$corpus" "$seeds"; then
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "run-fuzz: FAILED: ${failed[*]} (inputs in $artifacts)" >&2
  exit 1
fi
echo "run-fuzz: no crash in ${seconds}s per target (${targets[*]})"
