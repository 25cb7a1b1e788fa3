#!/usr/bin/env bash
# Builds the libFuzzer target for the GGUF reader (clang, ASan + UBSan) in build-fuzz/ and runs it for a fixed time.
#   scripts/run-fuzz.sh                 # 60 s
#   FUZZ_SECONDS=600 scripts/run-fuzz.sh
# Env: FUZZ_SECONDS (default 60), FUZZ_BUILD_DIR (default build-fuzz), FUZZ_JOBS (build parallelism, default 2).
# The corpus grows in $FUZZ_BUILD_DIR/fuzz-corpus/gguf (seeded from tests/fixtures/gguf/*.gguf); a crashing input is
# written to $FUZZ_BUILD_DIR/fuzz-artifacts/ and the script exits non-zero. Reproduce one with:
#   build-fuzz/tests/fuzz/gguf_fuzz build-fuzz/fuzz-artifacts/crash-<hash>
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${FUZZ_SECONDS:-60}"
build="${FUZZ_BUILD_DIR:-$root/build-fuzz}"
jobs="${FUZZ_JOBS:-2}"

if ! command -v clang++ >/dev/null 2>&1; then
  echo "run-fuzz: clang++ not found; installing clang" >&2
  if [ "$(id -u)" -eq 0 ]; then apt-get install -y clang; else sudo apt-get install -y clang; fi
fi

CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DKVCACHE_BUILD_FUZZ=ON -DKVCACHE_BUILD_TESTS=OFF -DKVCACHE_BUILD_BENCH=OFF -DKVCACHE_BUILD_EXAMPLES=OFF \
  -DKVCACHE_INSTALL=OFF -DKVCACHE_WERROR=OFF >/dev/null
cmake --build "$build" --target gguf_fuzz -j "$jobs"

corpus="$build/fuzz-corpus/gguf"
seeds="$build/fuzz-seeds/gguf"
artifacts="$build/fuzz-artifacts"
mkdir -p "$corpus" "$seeds" "$artifacts"
cp "$root"/tests/fixtures/gguf/*.gguf "$seeds/"

echo "run-fuzz: gguf_fuzz for ${seconds}s (corpus $corpus)"
# The first directory receives new inputs; the second only seeds. A crash, leak, sanitizer report or a
# >10 s input makes libFuzzer exit non-zero, and so this script.
"$build/tests/fuzz/gguf_fuzz" -max_len=65536 -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
  -dict="$root/tests/fuzz/gguf.dict" -artifact_prefix="$artifacts/" -print_final_stats=1 \
  "$corpus" "$seeds"
echo "run-fuzz: no crash in ${seconds}s"
