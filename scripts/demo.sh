#!/usr/bin/env bash
# The pipeline as far as it exists, small, on the CPU: describe and condition the real
# detector images in shared/data, then simulate a still with the kinematic simulator and
# condition it, then make a small labelled training set, all in a fresh temporary folder.
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

echo "== xrais spots: spots, resolution and hit call of every real image without a model, pictures in $OUT/spots"
xrais spots "${IMAGES[@]}" --out "$OUT/spots.csv" --png "$OUT/spots"

echo "== xrais nanobragg: a lysozyme still on a 1024×1024 PILATUS-pitch detector, Poisson noise from seed 1"
(cd "$OUT" && xrais nanobragg -cell 79.1 79.1 38.4 90 90 90 -default_F 100 -N 10 -lambda 0.9795 \
    -distance 150 -pixel 0.172 -detpixels 1024 -oversample 3 -mosaic 0.2 -mosaic_domains 5 -misset 10 20 30 \
    -seed 1 -floatfile sim.bin -intfile sim.img \
    -noisefile sim_noise.img -nopgm -noprogress)
xrais info "$OUT/sim_noise.img"
xrais condition "$OUT/sim_noise.img" --out "$OUT/simulated" --png

echo "== xrais simulate: 8 labelled PILATUS 6M training images (XRAIS Appendix A defaults), then one shown"
xrais simulate --n-images 8 --out "$OUT/training" --seed 1 --backend numba
xrais show "$OUT/training/sim_r0000_00000.h5" --index 0 --out "$OUT/training/image0.png"

echo "== xrais train: a ResNet-18 resolution model, 2 epochs on those images (a smoke run; real sets are 10⁵ images)"
xrais train --data "$OUT/training" --task resolution --arch resnet18 --epochs 2 --batch-size 2 --workers 0 \
    --val-fraction 0.25 --out "$OUT/model"
xrais evaluate --model "$OUT/model" --data "$OUT/training" --out "$OUT/model/evaluation" --workers 0

echo "== xrais models list: the builders, and the resolution model shipped with xrais (trained on simulation only)"
xrais models list

echo "== xrais infer: every real image scored with the shipped resolution model (4 quadrants) and its spots found"
echo "   in the same pass (model_warning names a geometry the model was not trained on), then the strip chart"
xrais infer "${IMAGES[@]}" --quadrants 4 --out "$OUT/results"
xrais plot "$OUT/results" --out "$OUT/results/strip.png"

echo "== shoeboxes: a 6-frame lysozyme-cell rotation series, integrated (variational, trained here) and merged"
xrais simulate --shoeboxes --out "$OUT/shoeboxes" --seed 1 --n-images 6
xrais integrate "$OUT/shoeboxes" --model "$OUT/integrator.safetensors" --train --epochs 3 --out "$OUT/reflections"
xrais merge "$OUT/reflections.mtz" --out "$OUT/merged.mtz"

echo "== shards and PNGs"
ls -l "$OUT" "$OUT/png" "$OUT/simulated/png" "$OUT/training"
echo "demo: done; conditioned quadrants in $OUT (look at $OUT/png/*.png and $OUT/simulated/png/*.png)"
