#!/usr/bin/env bash
# The pipeline as far as it exists, small, on the CPU: describe and condition the real
# detector images in shared/data into a fresh temporary folder, and print the tables.
set -euo pipefail
DATA="${1:-../shared/data}"
if [ ! -d "$DATA/real" ]; then
    echo "demo: no real images under $DATA/real; run 'make demo DATA=/path/to/shared/data'" >&2
    exit 1
fi
OUT="$(mktemp -d "${TMPDIR:-/tmp}/xrais-demo-XXXXXX")"
mapfile -t IMAGES < <(find "$DATA/real" -type f ! -name 'header' ! -name 'LICENSE*' | sort)

echo "== xrais info: ${#IMAGES[@]} real images from $DATA/real"
xrais info "${IMAGES[@]}"

echo "== xrais condition → $OUT"
xrais condition "${IMAGES[@]}" --out "$OUT" --png

echo "== shards and PNGs"
ls -l "$OUT" "$OUT/png"
echo "demo: done; conditioned quadrants in $OUT (look at $OUT/png/*.png)"
