#!/usr/bin/env bash
# Builds kvcache and runs all its tests: installs what a fresh Debian 12 machine lacks, fetches the default
# model, configures, builds and runs ctest. Environment knobs (all optional):
#   BUILD_DIR=build          where to build
#   KVCACHE_SANITIZE=...     e.g. address,undefined (then a RelWithDebInfo build)
#   CMAKE_ARGS="..."         extra arguments for cmake
#   CTEST_ARGS="..."         extra arguments for ctest (e.g. -R attention)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/install-deps.sh
bash scripts/install-python-deps.sh
bash scripts/fetch-model.sh
build="${BUILD_DIR:-build}"
build_type=Release
sanitize_flags=()
if [ -n "${KVCACHE_SANITIZE:-}" ]; then
  # -O1 with line tables only (-g1): the sanitizers' reports keep file:line, and the build takes half the
  # time of -O2 -g (an ASan+UBSan build of the tests was ~37 of CI's 73 minutes on 2 cores).
  build_type=RelWithDebInfo
  # Warnings are enforced by the Release build (KVCACHE_WERROR); GCC's flow-sensitive warnings differ at -O1
  # and under instrumentation, so here they are reported but do not stop the sanitizers' run.
  sanitize_flags=(-DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG"
                  -DKVCACHE_WERROR=OFF)
fi
jobs="$(nproc)"
# shellcheck disable=SC2086
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="$build_type" -DKVCACHE_WERROR=ON \
  -DKVCACHE_SANITIZE="${KVCACHE_SANITIZE:-}" "${sanitize_flags[@]}" ${CMAKE_ARGS:-}
cmake --build "$build" -j "$jobs"
# ctest runs one test per core at once, so each test gets one thread by default (threads = 0 means
# KVCACHE_THREADS): no barrier waits for a descheduled thread any more (the pool's caller never waits for a
# helper that has not started), but two-thread tests side by side would only share the same two cores.
# Tests that check thread-count invariance ask for their thread counts explicitly.
export KVCACHE_THREADS="${KVCACHE_THREADS:-1}"
# shellcheck disable=SC2086
ctest --test-dir "$build" --output-on-failure -j "$jobs" ${CTEST_ARGS:-}
