#!/usr/bin/env bash
# Builds and runs example_simple on the default model: installs what a fresh Debian 12 machine lacks,
# fetches the model, builds the example and runs it with the arguments given (see --help).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/install-deps.sh
bash scripts/fetch-model.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target example_simple -j "$(nproc)"
exec ./build/examples/example_simple "$@"
