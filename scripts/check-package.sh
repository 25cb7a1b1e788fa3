#!/usr/bin/env bash
# Proves the packaging: installs kvcache into a prefix and builds tests/consumer against it with
# find_package, then builds the same consumer with add_subdirectory; runs both.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cmake -S "$root" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVCACHE_BUILD_TESTS=OFF \
  -DKVCACHE_BUILD_BENCH=OFF -DKVCACHE_BUILD_EXAMPLES=OFF -DKVCACHE_INSTALL=ON -DCMAKE_INSTALL_PREFIX="$work/prefix"
cmake --build "$work/build" -j "$(nproc)"
cmake --install "$work/build"
cmake -S "$root/tests/consumer" -B "$work/consumer" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix"
cmake --build "$work/consumer"
"$work/consumer/consumer"
cmake -S "$root/tests/add-subdirectory" -B "$work/subdir" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$work/subdir" --target consumer -j "$(nproc)"
"$work/subdir/consumer"
echo "package: find_package and add_subdirectory consumers built and ran"
