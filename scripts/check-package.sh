#!/usr/bin/env bash
# Proves the packaging the way users meet it:
#   1. installs kvcache's libraries, headers, CMake package and pkg-config files into a fresh prefix — from the
#      main build ($BUILD_DIR, default build/, as scripts/test.sh leaves it) when there is one, else from a
#      library-only build of its own;
#   2. find_package: tests/consumer (the core; the core header-only; the opt-in Eigen/xtensor views; kvcache::kb
#      with SQLite) built and run; its targets pass no instruction-set flags, and still get the library's kernels;
#   3. pkg-config: the same core consumer and the kb one built with `pkg-config --cflags --libs`; the versions
#      agree with project(VERSION);
#   4. a file compiled with only -I<prefix>/include (no -mavx2) is told at build time that it gets the scalar
#      path, and KVCACHE_ALLOW_SCALAR silences that (x86-64 only);
#   5. add_subdirectory: tests/add-subdirectory configured with no build type (it fails if kvcache changed any
#      of its cache variables), built and run — without -march flags, so it must show the message of 4.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
jobs="$(nproc)"
prefix="$work/prefix"
build="${BUILD_DIR:-$root/build}"
[[ "$build" = /* ]] || build="$root/$build"
scalar_message="kvcache: compiled without AVX2/FMA"
step() { echo; echo "check-package: $*"; }
fail() { echo "check-package: FAILED: $*" >&2; exit 1; }

# ---- 1. install ----
if [ -f "$build/CMakeCache.txt" ] && grep -q '^KVCACHE_INSTALL:BOOL=ON' "$build/CMakeCache.txt"; then
  step "installing from the existing build $build"
else
  step "no configured build at $build: a library-only build of its own"
  build="$work/build"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVCACHE_BUILD_TESTS=OFF \
    -DKVCACHE_BUILD_BENCH=OFF -DKVCACHE_BUILD_EXAMPLES=OFF -DKVCACHE_BUILD_APPS=OFF -DKVCACHE_INSTALL=ON
fi
# Only the libraries (up to date after scripts/test.sh: nothing to do) and only their install component.
cmake --build "$build" -j "$jobs" --target kvcache kvcache_model kvcache_kb
cmake --install "$build" --prefix "$prefix" --component Development >/dev/null
version="$(sed -n 's/^project(kvcache VERSION \([0-9.]*\).*/\1/p' "$root/CMakeLists.txt")"
targets_file="$(find "$prefix" -name kvcacheTargets.cmake)"
if grep -q -- '-mavx512f' "$targets_file"; then kernels=avx512
elif grep -q -- '-mavx2' "$targets_file"; then kernels=avx2
else kernels=scalar; fi
echo "check-package: kvcache $version installed; consumers should get the $kernels kernels"

expect_output() {  # program output, then the strings it must contain
  local out="$1"; shift
  echo "$out"
  for want in "$@"; do [[ "$out" == *"$want"* ]] || fail "expected '$want' in: $out"; done
}

# ---- 2. find_package ----
step "find_package consumer (tests/consumer)"
cmake -S "$root/tests/consumer" -B "$work/consumer" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$work/consumer" -j "$jobs" 2>&1 | tee "$work/consumer.log"
if [ "$kernels" != scalar ] && grep -q "$scalar_message" "$work/consumer.log"; then
  fail "the find_package consumer was compiled without the library's instruction-set flags"
fi
for program in consumer consumer_header_only; do
  expect_output "$("$work/consumer/$program")" "kvcache $version:" "kernels: $kernels"
done
expect_output "$("$work/consumer/consumer_views")" ": ok"
expect_output "$("$work/consumer/consumer_kb" "$work/kb.sqlite")" ": ok"

# ---- 3. pkg-config ----
step "pkg-config consumers"
PKG_CONFIG_PATH="$(dirname "$(find "$prefix" -name kvcache.pc)")"
export PKG_CONFIG_PATH
for pc in kvcache kvcache-model kvcache-kb; do
  [ "$(pkg-config --modversion "$pc")" = "$version" ] || fail "pkg-config $pc: version $(pkg-config --modversion "$pc"), not $version"
done
echo "pkg-config --cflags --libs kvcache: $(pkg-config --cflags --libs kvcache)"
# shellcheck disable=SC2046
g++ -std=c++20 -O2 "$root/tests/consumer/main.cpp" -o "$work/pc_consumer" $(pkg-config --cflags --libs kvcache) \
  2>&1 | tee "$work/pc.log"
if [ "$kernels" != scalar ] && grep -q "$scalar_message" "$work/pc.log"; then
  fail "pkg-config --cflags kvcache lacks the library's instruction-set flags"
fi
expect_output "$("$work/pc_consumer")" "kvcache $version:" "kernels: $kernels"
# shellcheck disable=SC2046
g++ -std=c++20 -O2 "$root/tests/consumer/kb.cpp" -o "$work/pc_kb" $(pkg-config --cflags --libs kvcache-kb)
expect_output "$("$work/pc_kb" "$work/pc_kb.sqlite")" ": ok"

# ---- 4. no instruction-set flags: a message, not a silent scalar path ----
if [ "$(uname -m)" = x86_64 ]; then
  step "a consumer compiled without -mavx2 is told so"
  probe() {  # extra flags; prints the compiler's messages
    echo '#include <kvcache/attention/attention.hpp>' |
      g++ -std=c++20 -fsyntax-only -I"$prefix/include" "$@" -x c++ - 2>&1
  }
  expect_output "$(probe)" "$scalar_message" "KVCACHE_ALLOW_SCALAR"
  [[ "$(probe -DKVCACHE_ALLOW_SCALAR)" != *"$scalar_message"* ]] || fail "KVCACHE_ALLOW_SCALAR does not silence it"
  [[ "$(probe -mavx2 -mfma -mf16c)" != *"$scalar_message"* ]] || fail "the message appears with -mavx2 -mfma"
  echo "check-package: the message appears without the flags, not with them or with KVCACHE_ALLOW_SCALAR"
fi

# ---- 5. add_subdirectory ----
step "add_subdirectory consumer (tests/add-subdirectory), no build type of its own"
cmake -S "$root/tests/add-subdirectory" -B "$work/subdir" -G Ninja | grep "add_subdirectory(kvcache)"
grep -q '^CMAKE_BUILD_TYPE:STRING=$' "$work/subdir/CMakeCache.txt" || fail "the parent's empty CMAKE_BUILD_TYPE changed"
cmake --build "$work/subdir" --target consumer consumer_views -j "$jobs" 2>&1 | tee "$work/subdir.log" |
  grep -v '^\[' || true
if [ "$(uname -m)" = x86_64 ]; then
  grep -q "$scalar_message" "$work/subdir.log" || fail "no scalar-path message for a consumer without -mavx2"
  expect_output "$("$work/subdir/consumer")" "kvcache $version:" "kernels: scalar"
else
  "$work/subdir/consumer"
fi
expect_output "$("$work/subdir/consumer_views")" ": ok"
echo
echo "check-package: installed package (CMake and pkg-config), header-only core, views, kb and add_subdirectory: all built and ran"
