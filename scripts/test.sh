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
[ -n "${KVCACHE_SANITIZE:-}" ] && build_type=RelWithDebInfo
jobs="$(nproc)"
# shellcheck disable=SC2086
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="$build_type" -DKVCACHE_WERROR=ON \
  -DKVCACHE_SANITIZE="${KVCACHE_SANITIZE:-}" ${CMAKE_ARGS:-}
cmake --build "$build" -j "$jobs"
# ctest runs one test per core at once, so each test gets one OpenMP thread by default: two tests with two
# threads each on two cores make every barrier wait for a descheduled thread (10-40x slower). Tests that
# check thread-count invariance ask for their thread counts explicitly.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# shellcheck disable=SC2086
ctest --test-dir "$build" --output-on-failure -j "$jobs" ${CTEST_ARGS:-}
