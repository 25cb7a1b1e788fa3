#!/usr/bin/env bash
# Installs the Python packages the tests use, from PyPI with pip: openai (the official client the server tests
# talk through), requests, selenium (the browser test). Idempotent: installs only what does not import.
# PYTHON=... picks the interpreter (default python3, the one ctest runs the tests with).
set -euo pipefail
python="${PYTHON:-python3}"
missing=()
for entry in openai:openai requests:requests selenium:selenium; do
  module="${entry%%:*}"
  package="${entry##*:}"
  "$python" -c "import $module" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "python deps: all installed"
  exit 0
fi
echo "python deps: installing ${missing[*]}"
# A Debian system python refuses plain pip installs (PEP 668); then install for this user only.
"$python" -m pip install --quiet "${missing[@]}" 2>/dev/null ||
  "$python" -m pip install --quiet --user --break-system-packages "${missing[@]}"
