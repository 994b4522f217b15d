#!/usr/bin/env bash
# bench/gpu.sh - the GPU benchmarks in one command: builds bench/bench_vae.c with nvcc (ldm.h's
# CUDA back end, cuBLAS), runs it on the first visible GPU against PyTorch on the same GPU with
# the same sizes, and prints what to paste into bench/README.md: date, GPU model, driver,
# CUDA and PyTorch versions, and the tables.
#
#   bench/gpu.sh              every case at the issue's sizes (encode+decode 512x512, decode
#                             512x512, training step 256x256 batch 8), twice: FP32 GEMMs
#                             (TF32 off on both sides), then TF32 on both sides
#   bench/gpu.sh OPTIONS...   one run of bench_vae with these options, e.g. --size 64 --batch 2
#                             (a quick check), --cases train, --tf32, --cudnn-benchmark
#
# Environment: NVCC (default: nvcc on PATH, else /usr/local/cuda/bin/nvcc); CUDA_ARCH (default:
# the GPU's compute capability from nvidia-smi, else sm_80); PYTHON (a python whose torch has
# CUDA; default: the first of python3, /usr/bin/python3 that has it); CUDA_VISIBLE_DEVICES.
set -u
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "bench/gpu.sh: nvidia-smi finds no GPU (hint: run this on a machine with an NVIDIA GPU and its driver)" >&2
  exit 1
fi
[ -x "$NVCC" ] || { echo "bench/gpu.sh: no nvcc at $NVCC (hint: install the CUDA toolkit, or set NVCC)" >&2; exit 1; }

# the GPU that CUDA numbers 0 (the first of CUDA_VISIBLE_DEVICES when that is set)
gpu=${CUDA_VISIBLE_DEVICES:-0}
gpu=${gpu%%,*}
arch=${CUDA_ARCH:-}
if [ -z "$arch" ]; then
  cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader -i "$gpu" 2>/dev/null | head -n 1 | tr -d ' .')
  case $cc in [0-9][0-9]|[0-9][0-9][0-9]) arch=sm_$cc ;; *) arch=sm_80 ;; esac
fi

mkdir -p build
cp bench/bench_vae.c build/bench_vae_cuda.cu
echo "building build/bench_vae_cuda ($NVCC -arch=$arch)"
# the flags of build.sh's CUDA compile(); -O2 -march=native for the host code as the CPU build
if ! "$NVCC" -O2 -arch="$arch" -DLDM_CUDA -Xcompiler -ffp-contract=off -Xcompiler -march=native -I. -Ithird_party \
     build/bench_vae_cuda.cu -o build/bench_vae_cuda -lcublas -lm -lpthread; then
  echo "bench/gpu.sh: the CUDA build failed" >&2
  exit 1
fi

py=""
for c in ${PYTHON:-} python3 /usr/bin/python3; do
  if "$c" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then py=$c; break; fi
done
torch_args=(--python "$py")
if [ -z "$py" ]; then
  echo "bench/gpu.sh: no python with a CUDA-enabled torch (set PYTHON): ldm.h figures only, no ratios" >&2
  torch_args=(--no-torch)
fi

echo
echo "date: $(date -u +%Y-%m-%d)"
echo "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader -i "$gpu")"
echo "CUDA: $("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), -arch=$arch"
[ -n "$py" ] && echo "PyTorch: $("$py" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())')"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
status=0
if [ $# -eq 0 ]; then
  echo; echo "## FP32 (TF32 off on both sides)"
  ./build/bench_vae_cuda --device cuda "${torch_args[@]}" || status=1
  echo; echo "## TF32 on both sides"
  ./build/bench_vae_cuda --device cuda --tf32 "${torch_args[@]}" || status=1
else
  echo
  ./build/bench_vae_cuda --device cuda "${torch_args[@]}" "$@" || status=1
fi
exit $status
