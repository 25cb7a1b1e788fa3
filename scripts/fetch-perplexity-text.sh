#!/usr/bin/env bash
# Writes the text kvcache-perplexity is measured on (docs/quantised-caches.md): the Book of Genesis from the
# King James Version of the Bible (public domain), as Debian's bible-kjv-text package ships it, read with that
# package's `bible` program. Verse numbers and chapter headings are dropped; each chapter becomes a paragraph.
# The text is not committed (about 200 KB); this script recreates it byte for byte from the package.
#
# Usage: scripts/fetch-perplexity-text.sh [OUT]   (default build/perplexity/genesis-kjv.txt)
set -euo pipefail
out=${1:-build/perplexity/genesis-kjv.txt}
if ! command -v bible >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y bible-kjv >/dev/null || { apt-get update >/dev/null && apt-get install -y bible-kjv >/dev/null; }
  else
    echo "fetch-perplexity-text: install Debian's bible-kjv package (apt-get install bible-kjv)" >&2
    exit 1
  fi
fi
mkdir -p "$(dirname "$out")"
COLUMNS=100000 bible "Gen1:1-50:26" | python3 -c '
import re, sys
paragraphs, current = [], []
for line in sys.stdin.read().splitlines():
    line = line.strip()
    if not line:
        continue
    if re.fullmatch(r"Genesis \d+", line):  # a chapter heading: start a new paragraph
        if current:
            paragraphs.append(" ".join(current))
        current = []
        continue
    current.append(re.sub(r"^\d+ ", "", line))  # drop the verse number
if current:
    paragraphs.append(" ".join(current))
sys.stdout.write("\n\n".join(paragraphs) + "\n")
' > "$out"
echo "$out: $(wc -c < "$out") bytes (Genesis, King James Version, from Debian bible-kjv-text)"
