#!/usr/bin/env bash
# Builds the multi-threaded tests with ThreadSanitizer and runs them; any data race fails the run.
# The library's threads are std::threads (the pool in detail/thread_pool.hpp), so the kernels' parallel paths
# are instrumented too. Environment knobs (all optional):
#   BUILD_DIR=build-tsan      where to build
#   TSAN_TESTS="a_test b_test" which test executables (default: the store, the scheduler, the pool and its
#                             governor, matmul)
#   CMAKE_ARGS="..."          extra arguments for cmake
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
build="${BUILD_DIR:-build-tsan}"
tests="${TSAN_TESTS:-cache_store_test scheduler_threads_test thread_pool_test helper_governor_test matmul_test matmul_int8_test}"
jobs="$(nproc)"
# -O1 -g1 (line tables): ThreadSanitizer's reports keep file:line; half the build time of -O2 -g. Warnings are
# enforced by the Release build; GCC's flow-sensitive ones differ at -O1 and under instrumentation.
# shellcheck disable=SC2086
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVCACHE_WERROR=OFF -DKVCACHE_SANITIZE=thread \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
  -DKVCACHE_BUILD_BENCH=OFF -DKVCACHE_BUILD_EXAMPLES=OFF ${CMAKE_ARGS:-}
# shellcheck disable=SC2086
cmake --build "$build" -j "$jobs" --target $tests
# halt_on_error: the first race fails the test with its report; second_deadlock_stack: full lock-order reports.
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
regex="^($(echo "$tests" | tr ' ' '|'))\$"
ctest --test-dir "$build" --output-on-failure -R "$regex"
