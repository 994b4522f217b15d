#!/usr/bin/env bash
# bench/dist.sh - data-parallel throughput of the driver on this machine: one process with
# all the threads and the whole batch against `mpirun -np 2`, each with half the threads and
# half the batch (the same global batch, the same training: see tests/test_dist.c), and the
# same two runs with LDM_DIST_NO_OVERLAP=1 (every bucket all-reduced after the backward pass)
# to show what starting the reductions during the backward pass hides.
#
#   ./build.sh && bench/dist.sh [epochs]          (needs build/ldm built with Open MPI)
#
# images/s: two runs of E and 3E epochs each, (6 * 2E images) / (difference of wall times),
# so start-up (config, data, model) cancels. Models: the README demo's autoencoder (64x64,
# batch 4 in all, LPIPS off as in the demo) and a pixel-space DDPM UNet (32x32, model_channels
# 64, attention at 16x16 and 8x8, batch 4 in all), both on the 6 photos of data/.
set -eu
cd "$(dirname "$0")/.."
E=${1:-4}
THREADS=${LDM_THREADS:-2}
command -v mpirun >/dev/null || { echo "bench/dist.sh: no mpirun (./build.sh deps installs Open MPI)"; exit 1; }
MPIRUN="mpirun --oversubscribe --bind-to none"
[ "$(id -u)" = 0 ] && MPIRUN="$MPIRUN --allow-run-as-root"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

cat > "$TMP/ddpm.yaml" <<EOF
model:
  base_learning_rate: 1.0e-4
  target: ldm.models.diffusion.ddpm.DDPM
  params:
    timesteps: 1000
    image_size: 32
    channels: 3
    first_stage_key: image
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params: {image_size: 32, in_channels: 3, out_channels: 3, model_channels: 64, attention_resolutions: [2, 4], num_res_blocks: 2, channel_mult: [1, 2, 2], num_head_channels: 32}
data:
  target: main.DataModuleFromConfig
  params:
    batch_size: 4
    num_workers: 1
    train:
      target: ldm.data.folder.ImageFolder
      params: {root: data, size: 32, random_crop: true}
lightning:
  callbacks:
    image_logger: {target: main.ImageLogger, params: {disabled: true}}
  trainer: {log_every_n_steps: 1000, num_sanity_val_steps: 0}
EOF

# run TAG NP EPOCHS ENV CFG ARGS... -> seconds of wall time
run() {
  local tag=$1 np=$2 ep=$3 env=$4 cfg=$5; shift 5
  local t0 t1 cmd
  if [ "$np" = 1 ]; then cmd="env LDM_THREADS=$THREADS $env build/ldm"
  else cmd="$MPIRUN -np $np -x LDM_THREADS=$((THREADS / np > 0 ? THREADS / np : 1)) $(for v in $env; do echo "-x $v"; done) build/ldm"; fi
  t0=$(date +%s.%N)
  $cmd --base "$cfg" -t --no-test --name "$tag" -l "$TMP/logs" lightning.trainer.max_epochs="$ep" lightning.trainer.max_steps=-1 \
    lightning.trainer.limit_val_batches=0 "$@" > "$TMP/$tag.out" 2>&1 || { echo "run $tag failed:" >&2; tail -5 "$TMP/$tag.out" >&2; exit 1; }
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}

bench() { # NAME CFG NP BATCH ENV
  local name=$1 cfg=$2 np=$3 bs=$4 env=$5 a b
  a=$(run "${name}_a" "$np" "$E" "$env" "$cfg" data.params.batch_size="$bs" lightning.callbacks.image_logger.params.disabled=true)
  b=$(run "${name}_b" "$np" $((3 * E)) "$env" "$cfg" data.params.batch_size="$bs" lightning.callbacks.image_logger.params.disabled=true)
  local ips stats
  ips=$(echo "6 * 2 * $E / ($b - $a)" | bc -l)
  stats=$(grep -h "^Data parallel (" "$TMP/${name}_b.out" | sed 's/^Data parallel //' | tr '\n' ' ')
  printf "| %-28s | %d | %d | %6.2f | %s\n" "$name" "$np" "$bs" "$ips" "${stats:-}"
}

echo "ldm.h data parallel, $(date +%F), $(nproc) cores, $THREADS threads in all, $E and $((3 * E)) epochs of 6 images"
echo "| case | processes | batch per process | images/s | reducer (rank 0) |"
echo "|---|---|---|---|---|"
for m in demo_ae ddpm32; do
  if [ $m = demo_ae ]; then cfg=configs/demo_autoencoder.ini; else cfg=$TMP/ddpm.yaml; fi
  bench "$m 1 process" "$cfg" 1 4 ""
  bench "$m 2 processes" "$cfg" 2 2 ""
  bench "$m 2 processes, no overlap" "$cfg" 2 2 "LDM_DIST_NO_OVERLAP=1"
done
