#!/usr/bin/env bash
# Reproduce the shipped shapes-world models from scratch on the CPU: every stage of
# `python -m difflens.shapes.train`, in the order and with the arguments that made the shipped files.
#
#   bash scripts/train-shapes.sh [OUT] [WORK]
#
# OUT (default: a fresh folder under WORK, so the shipped files stay as they are) receives clip/, unet/,
# mmdit/ and manifest.json (SHA-256 of every file, the commands, the wall time of every run). WORK (default
# /tmp/difflens-shapes-work) holds the rendered data, the VAE, the latents and every intermediate
# denoiser. Two processes run at a time (one thread each), which fills a 2-core machine; the wall times of
# one reproduction are in BENCHMARKS.md ("Shapes-world models"). The shipped files are the output of one run
# of this script; to test a reproduction of your own, pass OUT = src/difflens/shapes/pretrained (an editable
# install) and run `make test`.
set -euo pipefail
WORK=${2:-/tmp/difflens-shapes-work}
OUT=${1:-$WORK/out}
PY=${PYTHON:-python}
mkdir -p "$WORK"
train() { "$PY" -m difflens.shapes.train --out "$OUT" --work "$WORK" "$@"; }
both() {  # run two command strings in parallel; fail if either fails
    bash -c "$1" & local a=$!
    bash -c "$2" & local b=$!
    wait "$a"; wait "$b"
}
export -f train
export OUT WORK PY

train --stage data
both "train --stage vae" "train --stage clip"
train --stage latents
# The denoisers: diffusion loss first, then fine-tuned with the attention supervision of
# difflens.shapes.attn_loss (the MMDiT's chain is the one its first shipped version took, plus the
# coverage round; renaming each output lets the next run continue from it).
both "train --stage unet --unet-steps 2400 && mv \$WORK/unet \$WORK/unet-2400 &&
      train --stage unet --init \$WORK/unet-2400 --seed 4 --unet-steps 600 --attn-weight 0.05 --attn-loss cover" \
     "train --stage mmdit --mmdit-steps 1500 && mv \$WORK/mmdit \$WORK/mmdit-1500 &&
      train --stage mmdit --init \$WORK/mmdit-1500 --seed 1 --mmdit-steps 1500 && mv \$WORK/mmdit \$WORK/mmdit-3000 &&
      train --stage mmdit --init \$WORK/mmdit-3000 --seed 2 --mmdit-steps 800 --attn-weight 0.05 &&
      mv \$WORK/mmdit \$WORK/mmdit-attn800 &&
      train --stage mmdit --init \$WORK/mmdit-attn800 --seed 4 --mmdit-steps 600 --attn-weight 0.05 --attn-loss cover"
train --stage ship
echo "shapes-world models written to $OUT"
