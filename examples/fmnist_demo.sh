#!/usr/bin/env bash
# fmnist_demo.sh - class-conditional latent diffusion on Fashion-MNIST, end to end on the CPU:
#   1. the first stage: configs/fmnist_autoencoder.yaml (a small AutoencoderKL, f = 4);
#   2. the LDM on its latents: configs/fmnist_ldm.yaml (UNet + SpatialTransformer, ClassEmbedder);
#   3. ldm-classcheck: 100 guided samples of each class, the share nearest (pixel L2) to their
#      class's training mean beside the same share for the real test images, and a grid
#      (a row per class) written to logs/<run>_fmnist_ldm/fmnist_samples.png.
# Installs Debian's dataset-fashion-mnist when it is missing (./build.sh deps) and builds the
# programs when they are missing. Prints the wall time of each stage.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=/usr/share/datasets/fashion-mnist
[ -f "$DATA/train-images-idx3-ubyte.gz" ] || [ -f "$DATA/train-images-idx3-ubyte" ] || ./build.sh deps
{ [ -x build/ldm ] && [ -x build/ldm-classcheck ]; } || ./build.sh
LOGS=${LOGS:-logs}
t0=$(date +%s)
build/ldm --base configs/fmnist_autoencoder.yaml -t --name fmnist_ae --no-test -l "$LOGS"
AE=$(ls -d "$LOGS"/*_fmnist_ae | tail -n 1)
t1=$(date +%s)
build/ldm --base configs/fmnist_ldm.yaml -t --name fmnist_ldm --no-test -l "$LOGS" \
    model.params.first_stage_config.params.ckpt_path="$AE/checkpoints/last/model.safetensors"
LDM=$(ls -d "$LOGS"/*_fmnist_ldm | tail -n 1)
t2=$(date +%s)
build/ldm-classcheck --config configs/fmnist_ldm.yaml --ckpt "$LDM/checkpoints/last" --idx "$DATA" --n 100 --steps 50 --scale 3 \
    --grid "$LDM/fmnist_samples.png" --grid-n 10 | tee "$LDM/classcheck.txt"
t3=$(date +%s)
printf 'fmnist demo: autoencoder %dm%02ds, latent diffusion %dm%02ds, class check %dm%02ds, total %dm%02ds (%s)\n' \
    $(((t1 - t0) / 60)) $(((t1 - t0) % 60)) $(((t2 - t1) / 60)) $(((t2 - t1) % 60)) $(((t3 - t2) / 60)) $(((t3 - t2) % 60)) \
    $(((t3 - t0) / 60)) $(((t3 - t0) % 60)) "$LDM" | tee -a "$LDM/classcheck.txt"
