#!/usr/bin/env bash
# build.sh - builds ldm.h's examples, tests and benchmarks into build/.
#
#   ./build.sh            build examples/*.c and tests/test_*.c
#   ./build.sh test       build, run every test program (and the sanitizer builds), print
#                         "N passed, M failed", exit non-zero on any failure
#   ./build.sh bench      build and run bench/*.c
#   ./build.sh deps       install the Debian packages the build can use (stb, OpenBLAS, Fashion-MNIST,
#                         Open MPI; `deps mpi`: Open MPI alone)
#   ./build.sh fuzz [s]   build tests/fuzz/fuzz_*.c with clang's libFuzzer + ASan/UBSan and run each
#                         for s seconds (default 600), one at a time, niced, on a fresh copy of its
#                         seed corpus (build/fuzz/corpus_<t>); crashes go to build/fuzz/artifacts_<t>/;
#                         exit non-zero on any crash (FUZZ=name,name runs only those harnesses)
#
# Environment: CC (default cc), LDM_PORTABLE=1 (no -march=native), LDM_CUDA=1 (CUDA build with
# nvcc: NVCC, default nvcc on PATH else /usr/local/cuda/bin/nvcc; CUDA_ARCH, default sm_80),
# LDM_THREADS (thread count at run time), LDM_SANITIZE=0 (skip sanitizer test builds),
# LDM_EMU=0 (skip the CUDA-emulator builds: build/emu/test_cuda and build/emu/ldm run the CUDA
# back end's code on the CPU through tests/cuda_emu.hpp; CXX, default c++), LDM_MPI=0 (build
# build/ldm without Open MPI even where mpicc exists; with it, `mpirun -np N build/ldm ...`
# trains data parallel; CUDA builds then also get LDM_NCCL: libnccl.so.2 is opened at run time).
set -u
cd "$(dirname "$0")"
CC=${CC:-cc}
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
mode=${1:-build}
mkdir -p build

ARCH="-march=native"
[ "${LDM_PORTABLE:-0}" = 1 ] && ARCH=""
CFLAGS="-std=c99 -O2 $ARCH -Wall -Wextra -Wno-unused-function -I. -Ithird_party"
[ -d /usr/include/stb ] && CFLAGS="$CFLAGS -I/usr/include/stb"
LIBS="-lm -lpthread"
# OpenBLAS (the benchmarks' reference) when its header and library are both there: cblas.h
# alone may come from another BLAS.
HAVE_BLAS=0
if { [ -f /usr/include/x86_64-linux-gnu/cblas.h ] || [ -f /usr/include/cblas.h ] || [ -f /usr/include/openblas/cblas.h ]; } &&
   echo 'int main(void){return 0;}' | $CC -x c - -o /dev/null -lopenblas >/dev/null 2>&1; then
  HAVE_BLAS=1
fi

# Open MPI (data-parallel training; ldm_dist.h): examples/main.c and tests/test_dist.c are built
# with LDM_MPI when mpicc is there. Its -I/-L/-l flags also serve nvcc.
MPI_CFLAGS=""; MPI_LIBS=""
if [ "${LDM_MPI:-1}" != 0 ] && command -v mpicc >/dev/null 2>&1 &&
   MPI_CFLAGS=$(mpicc --showme:compile 2>/dev/null) && MPI_LIBS=$(mpicc --showme:link 2>/dev/null); then
  MPI_CFLAGS="-DLDM_MPI $(echo $MPI_CFLAGS | tr ' ' '\n' | grep -E '^-I' | tr '\n' ' ')"
  MPI_LIBS=$(echo $MPI_LIBS | tr ' ' '\n' | grep -E '^-(L|l|Wl)' | tr '\n' ' ')
else
  MPI_CFLAGS=""; MPI_LIBS=""
fi

deps() {
  # stb (also vendored), OpenBLAS (the benchmarks' reference), Fashion-MNIST (test_data's real-data
  # checks and the diffusion demo's data), Open MPI (data-parallel training and its tests);
  # `./build.sh deps mpi` installs Open MPI alone
  local pkgs="libstb-dev libopenblas-dev dataset-fashion-mnist libopenmpi-dev openmpi-bin"
  [ "${1:-}" = mpi ] && pkgs="libopenmpi-dev openmpi-bin"
  if command -v apt-get >/dev/null 2>&1; then
    local sudo=""; [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo=sudo
    $sudo apt-get update -qq && $sudo apt-get install -y -qq $pkgs
  else
    echo "build.sh: no apt-get here; install: $pkgs (optional: OpenBLAS for benchmarks)" >&2
  fi
}

# compile SRC OUT [extra flags...]; prints the command's errors, returns its status
compile() {
  local src=$1 out=$2; shift 2
  if [ "${LDM_CUDA:-0}" = 1 ]; then
    cp "$src" "build/$(basename "${src%.c}").cu"
    # -ffp-contract=off keeps the host compiler from fusing the RNG's multiply-adds (the
    # device side fuses none), so CPU and GPU draw the same numbers
    "$NVCC" -O2 -arch="${CUDA_ARCH:-sm_80}" -DLDM_CUDA -Xcompiler -ffp-contract=off -I. -Itests -Iexamples -Ithird_party \
      $( [ -d /usr/include/stb ] && echo -I/usr/include/stb ) \
      "build/$(basename "${src%.c}").cu" -o "$out" -lcublas "$@" $LIBS
  else
    $CC $CFLAGS "$src" -o "$out" "$@" $LIBS
  fi
}

# tests/test_flags.c links three copies of ldm_tensor.h built with other flags (see its header):
# GNU defaults, this script's flags with -ffp-contract=off, and nvcc's (its host pass; c++ with
# nvcc's host flags where there is no nvcc). Sets FLAGS_LINK to what linking them needs.
FLAGS_LINK=""
flags_objs() {
  mkdir -p build/flags &&
    $CC -O2 $ARCH -DFLAGS_TU=gemm_default -c tests/flags_tu.c -o build/flags/default.o &&
    $CC $CFLAGS -ffp-contract=off -DFLAGS_TU=gemm_c99 -c tests/flags_tu.c -o build/flags/c99.o || return 1
  FLAGS_LINK="build/flags/default.o build/flags/c99.o build/flags/nvcc.o"
  # nvcc's object calls the CUDA runtime (its fat-binary registration): link cudart from the
  # directories nvcc itself names (nvcc may be a wrapper script far from its libraries). Where
  # that fails to link, fall back to c++ with nvcc's host flags, saying so.
  local cudalibs
  cudalibs=$("$NVCC" --dryrun -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ LIBRARIES= *//p' | tr -d '"')
  if [ -x "$NVCC" ] && "$NVCC" -O2 -Xcompiler -ffp-contract=off -DFLAGS_TU=gemm_nvcc -x cu -c tests/flags_tu.c -o build/flags/nvcc.o &&
     echo 'int main(void){return 0;}' | $CC -x c - -x none build/flags/nvcc.o -o build/flags/probe $cudalibs -lcudart_static -ldl -lrt -lstdc++ -lm -lpthread; then
    FLAGS_LINK="$FLAGS_LINK $cudalibs -lcudart_static -ldl -lrt -lstdc++"
    return 0
  fi
  [ -x "$NVCC" ] && echo "build.sh: test_flags: nvcc's object does not link here (above); timing c++ with nvcc's host flags instead" >&2
  if command -v "${CXX:-c++}" >/dev/null 2>&1; then
    ${CXX:-c++} -O2 -ffp-contract=off -DFLAGS_TU=gemm_nvcc -x c++ -c tests/flags_tu.c -o build/flags/nvcc.o
  else
    $CC -O2 -ffp-contract=off -DFLAGS_TU=gemm_nvcc -c tests/flags_tu.c -o build/flags/nvcc.o
  fi
}

# Tests that also run the CUDA back end's code on the CPU emulator (build/emu/).
EMU_TESTS="tests/test_vdit.c tests/test_lora.c tests/test_cuda.c tests/test_vae.c tests/test_lpips.c tests/test_attention.c tests/test_denoisers.c tests/test_diffusion.c tests/test_vq.c tests/test_latent_diffusion.c tests/test_vol3d.c"

build_all() {
  local ok=0 src out extra
  for src in examples/*.c tests/test_*.c; do
    [ -f "$src" ] || continue
    case $src in examples/*) out=build/ldm-$(basename "${src%.c}");; *) out=build/$(basename "${src%.c}");; esac
    [ "$src" = examples/main.c ] && out=build/ldm
    extra=""
    if [ -n "$MPI_CFLAGS" ] && { [ "$src" = examples/main.c ] || [ "$src" = tests/test_dist.c ]; }; then
      extra="$MPI_CFLAGS $MPI_LIBS"
      [ "${LDM_CUDA:-0}" = 1 ] && extra="-DLDM_NCCL $extra -ldl"
    fi
    if [ "$src" = tests/test_flags.c ]; then
      flags_objs || { echo "build.sh: failed to build tests/flags_tu.c" >&2; ok=1; continue; }
      extra=$FLAGS_LINK
    fi
    compile "$src" "$out" $extra || { echo "build.sh: failed to build $src" >&2; ok=1; }
  done
  # The CUDA back end on the CPU emulator (C++17), for machines without a GPU.
  if [ "${LDM_CUDA:-0}" != 1 ] && [ "${LDM_EMU:-1}" = 1 ] && ! command -v "${CXX:-c++}" >/dev/null 2>&1; then
    echo "build.sh: no C++ compiler (${CXX:-c++}): the CUDA-emulator tests are not built" >&2
  elif [ "${LDM_CUDA:-0}" != 1 ] && [ "${LDM_EMU:-1}" = 1 ]; then
    mkdir -p build/emu
    for src in $EMU_TESTS examples/main.c; do
      out=build/emu/$(basename "${src%.c}"); [ "$src" = examples/main.c ] && out=build/emu/ldm
      extra=""; [ "$src" = examples/main.c ] && extra="$MPI_CFLAGS $MPI_LIBS" # data parallel over emulated GPUs (host staging)
      ${CXX:-c++} -std=c++17 -O2 -U_FORTIFY_SOURCE -w -DLDM_CUDA -DLDM_CUDA_EMULATOR='"cuda_emu.hpp"' -I. -Itests -Iexamples -Ithird_party \
        $( [ -d /usr/include/stb ] && echo -I/usr/include/stb ) -x c++ "$src" -o "$out" $extra $LIBS ||
        { echo "build.sh: failed to build $src for the CUDA emulator" >&2; ok=1; }
    done
  fi
  # Vendoring tests also build as C++ (nvcc compiles .cu files as C++); skipped without one.
  if [ "${LDM_CUDA:-0}" != 1 ] && command -v "${CXX:-c++}" >/dev/null 2>&1; then
    for src in tests/test_vendor_*.c; do
      [ -f "$src" ] || continue
      ${CXX:-c++} -std=c++11 -O2 $ARCH -Wall -Wno-unused-function -I. -x c++ "$src" -o "build/$(basename "${src%.c}")_cpp" $LIBS ||
        { echo "build.sh: failed to build $src as C++" >&2; ok=1; }
    done
  fi
  return $ok
}

run_tests() {
  local pass=0 fail=0 t log p f line
  mkdir -p build/logs
  # The build's messages are kept so the summary can repeat them (CI shows only the tail).
  build_all 2>&1 | tee build/logs/build.log
  [ "${PIPESTATUS[0]}" = 0 ] || fail=$((fail + 1))
  local progs=()
  for t in tests/test_*.c; do [ -f "$t" ] && progs+=("build/$(basename "${t%.c}")"); done
  if [ "${LDM_CUDA:-0}" != 1 ]; then
    if command -v "${CXX:-c++}" >/dev/null 2>&1; then
      for t in tests/test_vendor_*.c; do [ -f "$t" ] && progs+=("build/$(basename "${t%.c}")_cpp"); done
    else echo "SKIP vendoring check as C++ (tests/test_vendor_*.c): no C++ compiler"; fi
  fi
  if [ "${LDM_CUDA:-0}" != 1 ] && [ "${LDM_EMU:-1}" = 1 ]; then
    if command -v "${CXX:-c++}" >/dev/null 2>&1; then for t in $EMU_TESTS; do progs+=("build/emu/$(basename "${t%.c}")"); done
    else echo "SKIP CUDA-emulator tests: no C++ compiler"; fi
  fi
  # Loader and parser tests (files marked LDM_TEST_SANITIZE) again under ASan/UBSan.
  if [ "${LDM_SANITIZE:-1}" = 1 ] && [ "${LDM_CUDA:-0}" != 1 ]; then
    for t in $(grep -l "LDM_TEST_SANITIZE" tests/test_*.c 2>/dev/null); do
      out=build/$(basename "${t%.c}")_asan
      if $CC -std=c99 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=undefined -DLDM_TEST_SANITIZED -I. \
           $( [ -d /usr/include/stb ] && echo -I/usr/include/stb ) "$t" -o "$out" $LIBS; then
        progs+=("$out")
      else
        echo "FAIL build $t with sanitizers"; fail=$((fail + 1))
      fi
    done
  fi
  for p in "${progs[@]}"; do
    [ -x "$p" ] || { echo "FAIL $p was not built"; fail=$((fail + 1)); continue; }
    log=build/logs/$(echo "${p#build/}" | tr / _).log
    echo "== $p"
    ( cd build && ASAN_OPTIONS=detect_leaks=1 timeout 900 "../$p" ) > "$log" 2>&1
    local rc=$?
    grep -E '^(FAIL|SKIP)' "$log"
    line=$(grep -E '^[^ ]+: [0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)
    if [ -n "$line" ]; then
      p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\1/')
      f=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed, ([0-9]+) failed/\2/')
      pass=$((pass + p)); fail=$((fail + f))
      echo "   $line"
    fi
    if [ $rc != 0 ] && { [ -z "$line" ] || [ "$f" = 0 ]; }; then
      echo "FAIL $p exited with status $rc (log: $log)"; tail -n 5 "$log"; fail=$((fail + 1))
    fi
  done
  if grep -q "^build.sh: failed" build/logs/build.log; then
    echo "== build errors (build/logs/build.log)"; grep -B 12 "^build.sh: failed" build/logs/build.log | tail -n 40
  fi
  echo "$pass passed, $fail failed"
  [ $fail = 0 ]
}

run_bench() {
  local src out extra
  for src in bench/*.c; do
    [ -f "$src" ] || continue
    out=build/$(basename "${src%.c}")
    extra=""
    [ $HAVE_BLAS = 1 ] && extra="-DLDM_BENCH_OPENBLAS -lopenblas"
    compile "$src" "$out" $extra || { echo "build.sh: failed to build $src" >&2; return 1; }
    echo "== $out"; "$out" || return 1
  done
}

# The libFuzzer campaign (tests/fuzz/): seeds are real files of each format plus the committed
# regression inputs (tests/fuzz/regress/<t>/); one fuzzer process at a time, niced.
fuzz_seeds() {
  case $1 in
    safetensors) ls tests/fixtures/*.safetensors ;;
    torch) ls tests/fixtures/*.ckpt tests/fixtures/*.pt tests/fixtures/*.pth ;;
    ini) ls tests/configs/*.ini configs/*.ini ;;
    yaml) ls tests/configs/*.yaml configs/*.yaml ;;
    image) ls data/*.png tests/fixtures/*.png tests/fixtures/*.jpg ;;
    idx) ls tests/fixtures/data_idx_* ;;
    ckptdir) ls tests/fuzz/seeds/ckptdir/* tests/configs/*.ini ;;
    nifti) ls tests/fixtures/nifti_*.nii tests/fixtures/nifti_*.nii.gz ;;
  esac 2>/dev/null
}
run_fuzz() {
  local secs=${1:-600} fail=0 t src bin corpus art log execs took size crashes fcc=${FUZZ_CC:-clang}
  if ! echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n){(void)d;(void)n;return 0;}' |
       $fcc -x c - -fsanitize=fuzzer,address,undefined -o build/fuzz_probe >/dev/null 2>&1; then
    echo "SKIP fuzz: clang with libFuzzer (-fsanitize=fuzzer) is not available (Debian: apt-get install clang)"
    return 0
  fi
  rm -f build/fuzz_probe
  mkdir -p build/fuzz
  printf '%-12s %10s %8s %8s %8s\n' harness execs exec/s corpus crashes
  for src in tests/fuzz/fuzz_*.c; do
    t=$(basename "${src%.c}"); t=${t#fuzz_}
    case ",${FUZZ:-$t}," in *",$t,"*) ;; *) continue ;; esac
    bin=build/fuzz/fuzz_$t corpus=build/fuzz/corpus_$t art=build/fuzz/artifacts_$t log=build/fuzz/fuzz_$t.log
    if ! nice -n 19 $fcc -std=c99 -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
         -I. -Ithird_party "$src" -o "$bin" -lm -lpthread; then
      echo "FAIL build $src"; fail=1; continue
    fi
    rm -rf "$corpus" "$art"; mkdir -p "$corpus" "$art"
    # seeds up to 256 KiB: the megabyte fixtures add no format features, only slow every run
    fuzz_seeds "$t" | while read -r f; do [ "$(stat -c %s "$f")" -le 262144 ] && cp "$f" "$corpus/"; done
    [ -d "tests/fuzz/regress/$t" ] && cp tests/fuzz/regress/"$t"/* "$corpus/" 2>/dev/null
    ASAN_OPTIONS=detect_leaks=1 nice -n 19 "$bin" -max_total_time="$secs" -timeout=25 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$art/" "$corpus" > "$log" 2>&1
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)
    size=$(ls "$corpus" | wc -l)
    crashes=$(ls "$art" | grep -cE '^(crash|leak|timeout|oom)-')
    printf '%-12s %10s %8s %8s %8s\n' "$t" "${execs:-?}" "$(( ${execs:-0} / (${took:-$secs} > 0 ? ${took:-$secs} : 1) ))" "$size" "$crashes"
    if [ "$crashes" != 0 ]; then
      fail=1; ls "$art" | sed 's/^/    /'; grep -m 3 -E '^(==[0-9]+==ERROR|SUMMARY)' "$log" | sed 's/^/    /'
    fi
  done
  [ $fail = 0 ]
}

case $mode in
  build) build_all ;;
  test) run_tests ;;
  bench) run_bench ;;
  deps) deps "${2:-}" ;;
  fuzz) run_fuzz "${2:-600}" ;;
  *) echo "usage: ./build.sh [build|test|bench|deps [mpi]|fuzz [seconds]]" >&2; exit 2 ;;
esac
