#!/usr/bin/env bash
# Builds kvcache-server and starts it on the default model (SmolLM2-135M-Instruct); it prints the URL to open.
# Ctrl-C stops it. Arguments go to the server, e.g.:  bash scripts/run-server.sh --port 9000 --slots 8
# BUILD_DIR=build chooses the build directory.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/install-deps.sh
bash scripts/fetch-model.sh
build="${BUILD_DIR:-build}"
[ -f "$build/CMakeCache.txt" ] || cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" --target kvcache-server -j "$(nproc)"
exec "$build/apps/server/kvcache-server" "$@"
