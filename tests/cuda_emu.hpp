/* cuda_emu.hpp - runs ldm_cuda.cuh's kernels on the CPU, so machines without a GPU (CI) test the
   CUDA back end's logic: indexing, block and warp reductions, launch shapes, cuBLAS argument
   conventions, and which memory the host and the kernels touch.

   Build a program with a C++ compiler (not nvcc):
       c++ -std=c++17 -O1 -DLDM_CUDA -DLDM_CUDA_EMULATOR='"cuda_emu.hpp"' -Itests -x c++ prog.c -lm -lpthread
   ldm_cuda.cuh then includes this file instead of cuda_runtime.h / cublas_v2.h.

   What is emulated, and how strictly:
   - Kernels run one block at a time. A block's threads are fibers (own stacks) that switch only at
     __syncthreads and __shfl_xor_sync, so barriers and warp shuffles have CUDA's semantics; a
     barrier that not every live thread of the block reaches, or a shuffle with exited lanes, is
     reported as an error (on a GPU: a hang or undefined values). A kernel whose first launch
     never synchronised runs later launches as plain loops (fast); if such a kernel synchronises
     after all, the emulator stops with a message rather than compute garbage.
   - __shared__ variables become statics: one instance, which is what a block sees.
   - Device memory: every cudaMalloc is its own mapping with a PROT_NONE guard page right after
     the allocation (rounded up to 256 bytes, the cudaMalloc alignment), and all device memory is
     PROT_NONE while host code runs: a host dereference of a device pointer, or a kernel running
     off the end of an allocation, faults and is reported with the allocation and kernel.
     LDM_EMU_PROTECT=0 turns the protection off (faster).
   - Kernel pointer arguments must be NULL or point into a live device allocation (a host pointer
     reaching a kernel is an error). Launch shapes are checked against CUDA's limits.
   - cublasSgemm: the column-major definition with cuBLAS's argument checks (leading dimensions,
     operands inside their allocations, host-side alpha/beta); CUBLAS_TF32_TENSOR_OP_MATH rounds
     the operands to TF32 as tensor cores do. Streams are synchronous; copies infer directions by
     provenance and check them.
   - Not emulated: timing, concurrency between blocks, memory coalescing, real libdevice
     transcendentals (the host's libm is used), FMA contraction choices of nvcc.
   One host thread drives the emulated device (as ldm.h does: a context per host thread). */
#ifndef LDM_CUDA_EMU_HPP
#define LDM_CUDA_EMU_HPP
#ifndef __cplusplus
#error "cuda_emu.hpp is C++: compile with c++ -x c++"
#endif
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>
#include <signal.h>
#include <sys/mman.h>
#include <setjmp.h>
#include <ucontext.h>
#include <unistd.h>

/* ---- language ---- */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
typedef dim3 uint3;
static thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }

/* ---- runtime types ---- */
enum cudaError_t {
    cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2, cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17, cudaErrorInvalidMemcpyDirection = 21, cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101, cudaErrorInvalidResourceHandle = 400, cudaErrorIllegalAddress = 700,
    cudaErrorLaunchFailure = 719
};
enum cudaMemcpyKind { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4 };
#define cudaStreamNonBlocking 0x01u
struct ldm_emu_stream { int magic; };
typedef ldm_emu_stream *cudaStream_t;
struct cudaDeviceProp { char name[256]; size_t totalGlobalMem; int major, minor, multiProcessorCount, maxThreadsPerBlock; };

enum cublasStatus_t {
    CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_NOT_INITIALIZED = 1, CUBLAS_STATUS_ALLOC_FAILED = 3, CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_EXECUTION_FAILED = 13
};
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 };
enum cublasMath_t { CUBLAS_DEFAULT_MATH = 0, CUBLAS_TENSOR_OP_MATH = 1, CUBLAS_PEDANTIC_MATH = 2, CUBLAS_TF32_TENSOR_OP_MATH = 3 };
struct ldm_emu_blas { cudaStream_t stream; cublasMath_t math; };
typedef ldm_emu_blas *cublasHandle_t;

/* ---- emulator state ---- */
struct ldm_emu_alloc { unsigned char *map, *body, *ptr; size_t maplen, bodylen, size, span; long id; };
struct ldm_emu_fiber { ucontext_t uc; jmp_buf jb; int state, started; const void *site; };
enum { LDM_EMU_READY, LDM_EMU_AT_BLOCK, LDM_EMU_AT_WARP, LDM_EMU_DONE };
#define LDM_EMU_STACK (128 * 1024)
#define LDM_EMU_MAGIC 0x1d3c
struct ldm_emu_state {
    std::vector<ldm_emu_alloc> allocs;
    long next_id = 1;
    size_t used = 0, total = 0;
    int protect = -1, always_fibers = 0, devices = 1, device_mode = 0, handler = 0;
    cudaError_t last = cudaSuccess, sticky = cudaSuccess;
    const char *kernel = NULL;            /* the running kernel, for messages */
    std::map<const void *, int> syncs;    /* kernel -> 1 synchronises, 0 its first launch did not */
    std::map<std::string, long> launches; /* kernel name -> launches */
    /* the block being run as fibers */
    int fiber_mode = 0, saw_sync = 0, current = 0, nthreads = 0;
    void (*body)(void *) = NULL;
    void *body_arg = NULL;
    jmp_buf sched;
    std::vector<ldm_emu_fiber> fib;
    std::vector<unsigned char *> stacks;
    std::vector<uint64_t> shfl[2];
    std::vector<int> phase;
};
static ldm_emu_state &ldm_emu(void) {
    static ldm_emu_state s;
    if (s.protect < 0) {
        const char *e = getenv("LDM_EMU_PROTECT"), *f = getenv("LDM_EMU_FIBERS"), *m = getenv("LDM_EMU_MEM_MB"), *d = getenv("LDM_EMU_DEVICES");
        s.protect = !(e && !strcmp(e, "0"));
        s.always_fibers = f && !strcmp(f, "1");
        s.total = (size_t)(m && atol(m) > 0 ? atol(m) : 2048) << 20;
        s.devices = d ? atoi(d) : 1;
    }
    return s;
}
[[noreturn]] static void ldm_emu_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void ldm_emu_fatal(const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "cuda emulator: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    fflush(stderr);
    abort();
}
/* Index of the allocation whose mapping holds p (guard page included), or -1. */
static int ldm_emu_find(const void *p) {
    ldm_emu_state &g = ldm_emu();
    const unsigned char *q = (const unsigned char *)p;
    for (size_t i = 0; i < g.allocs.size(); i++)
        if (q >= g.allocs[i].map && q < g.allocs[i].map + g.allocs[i].maplen) return (int)i;
    return -1;
}
static int ldm_emu_is_device(const void *p) { return p && ldm_emu_find(p) >= 0; }
/* Device memory is readable only while "the device" runs (kernels, copies, GEMMs). */
static void ldm_emu_protect_all(int rw) {
    ldm_emu_state &g = ldm_emu();
    g.device_mode = rw;
    if (!g.protect) return;
    for (size_t i = 0; i < g.allocs.size(); i++) {
        ldm_emu_alloc &a = g.allocs[i];
        if (mprotect(a.body, a.bodylen, rw ? PROT_READ | PROT_WRITE : PROT_NONE))
            ldm_emu_fatal("mprotect failed: %s", strerror(errno));
    }
}
static void ldm_emu_on_fault(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    ldm_emu_state &g = ldm_emu();
    const unsigned char *p = (const unsigned char *)si->si_addr;
    int i = ldm_emu_find(p);
    if (i >= 0) {
        const ldm_emu_alloc &a = g.allocs[(size_t)i];
        long off = (long)(p - a.ptr);
        if (!g.device_mode)
            fprintf(stderr, "cuda emulator: host code touched device memory at %p: byte %ld of device allocation #%ld (%zu bytes)"
                            " (hint: device tensors are read with ldm_to_host; look for ->data of a tensor on LDM_GPU)\n",
                    (const void *)p, off, a.id, a.size);
        else
            fprintf(stderr, "cuda emulator: %s (block %u,%u,%u thread %u,%u,%u) accessed %p: byte %ld of device allocation #%ld of %zu bytes,"
                            " past its end\n", g.kernel ? g.kernel : "a device copy", blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x,
                    threadIdx.y, threadIdx.z, (const void *)p, off, a.id, a.size);
    } else if (g.device_mode && g.kernel) {
        fprintf(stderr, "cuda emulator: %s (block %u thread %u) faulted at %p (not device memory)\n", g.kernel, blockIdx.x, threadIdx.x,
                (const void *)p);
    }
    fflush(stderr);
    signal(sig, SIG_DFL);
    raise(sig);
}
static void ldm_emu_install_handler(void) {
    ldm_emu_state &g = ldm_emu();
    if (g.handler) return;
    g.handler = 1;
    static unsigned char alt[1 << 16];
    stack_t ss;
    memset(&ss, 0, sizeof ss);
    ss.ss_sp = alt;
    ss.ss_size = sizeof alt;
    sigaltstack(&ss, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = ldm_emu_on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
}

/* ---- runtime API ---- */
static cudaError_t ldm_emu_ret(cudaError_t e) {
    ldm_emu_state &g = ldm_emu();
    if (g.sticky) return g.sticky;
    if (e) g.last = e;
    return e;
}
static cudaError_t cudaGetLastError(void) {
    ldm_emu_state &g = ldm_emu();
    cudaError_t e = g.sticky ? g.sticky : g.last;
    g.last = cudaSuccess;
    return e;
}
static const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    }
    return "cudaErrorUnknown";
}
static const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    }
    return "unknown error";
}
static cudaError_t cudaGetDeviceCount(int *n) {
    ldm_emu_state &g = ldm_emu();
    *n = g.devices > 0 ? g.devices : 0;
    return ldm_emu_ret(*n ? cudaSuccess : cudaErrorNoDevice);
}
static cudaError_t cudaSetDevice(int d) { return ldm_emu_ret(d >= 0 && d < ldm_emu().devices ? cudaSuccess : cudaErrorInvalidDevice); }
static cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d) {
    if (d < 0 || d >= ldm_emu().devices) return ldm_emu_ret(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "ldm.h CUDA emulator (CPU)");
    p->totalGlobalMem = ldm_emu().total;
    p->major = 8;
    p->minor = 0;
    p->multiProcessorCount = 1;
    p->maxThreadsPerBlock = 1024;
    return ldm_emu_ret(cudaSuccess);
}
static cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b) {
    ldm_emu_state &g = ldm_emu();
    *free_b = g.total - g.used;
    *total_b = g.total;
    return ldm_emu_ret(cudaSuccess);
}
static cudaError_t cudaMalloc(void **out, size_t bytes) {
    ldm_emu_state &g = ldm_emu();
    *out = NULL;
    if (g.sticky) return g.sticky;
    if (!bytes) return cudaSuccess;
    if (bytes > g.total - g.used) return ldm_emu_ret(cudaErrorMemoryAllocation);
    ldm_emu_install_handler();
    /* Big allocations sit on 2 MiB-aligned transparent huge pages: switching protection then
       touches one page-table entry per 2 MiB instead of per 4 KiB (the arena is large). */
    size_t page = (size_t)getpagesize(), huge = (size_t)2 << 20, span = (bytes + 255) & ~(size_t)255;
    size_t align = span >= huge ? huge : page, body = (span + align - 1) / align * align;
    ldm_emu_alloc a;
    a.maplen = body + (align > page ? align : 0) + page; /* alignment slack, the guard page */
    a.map = (unsigned char *)mmap(NULL, a.maplen, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (a.map == (unsigned char *)MAP_FAILED) return ldm_emu_ret(cudaErrorMemoryAllocation);
    a.body = (unsigned char *)(((uintptr_t)a.map + align - 1) & ~(uintptr_t)(align - 1));
    a.bodylen = body;
    a.ptr = a.body + body - span; /* the allocation ends where the guard page starts */
    a.size = bytes;
    a.span = span;
    a.id = g.next_id++;
#ifdef MADV_HUGEPAGE
    if (align > page) madvise(a.body, body, MADV_HUGEPAGE);
#endif
    mprotect(a.body, body, g.device_mode || !g.protect ? PROT_READ | PROT_WRITE : PROT_NONE);
    g.allocs.push_back(a);
    g.used += span;
    *out = a.ptr;
    return cudaSuccess;
}
static cudaError_t cudaFree(void *p) {
    ldm_emu_state &g = ldm_emu();
    if (g.sticky) return g.sticky;
    if (!p) return cudaSuccess;
    for (size_t i = 0; i < g.allocs.size(); i++)
        if (g.allocs[i].ptr == p) {
            munmap(g.allocs[i].map, g.allocs[i].maplen);
            g.used -= g.allocs[i].span;
            g.allocs.erase(g.allocs.begin() + (long)i);
            return cudaSuccess;
        }
    fprintf(stderr, "cuda emulator: cudaFree(%p): not the start of a live device allocation\n", p);
    return ldm_emu_ret(cudaErrorInvalidValue);
}
static cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
    (void)flags;
    *s = new ldm_emu_stream;
    (*s)->magic = LDM_EMU_MAGIC;
    return ldm_emu_ret(cudaSuccess);
}
static int ldm_emu_stream_ok(cudaStream_t s) { return !s || s->magic == LDM_EMU_MAGIC; }
static cudaError_t cudaStreamSynchronize(cudaStream_t s) { return ldm_emu_ret(ldm_emu_stream_ok(s) ? cudaSuccess : cudaErrorInvalidResourceHandle); }
static cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (!s || s->magic != LDM_EMU_MAGIC) return ldm_emu_ret(cudaErrorInvalidResourceHandle);
    s->magic = 0;
    delete s;
    return ldm_emu_ret(cudaSuccess);
}
/* The bytes [p, p + n) of a device pointer lie inside its allocation. */
static void ldm_emu_check_range(const char *who, const char *what, const void *p, size_t n) {
    int i = ldm_emu_find(p);
    if (i < 0) return;
    const ldm_emu_alloc &a = ldm_emu().allocs[(size_t)i];
    const unsigned char *q = (const unsigned char *)p;
    if (q < a.ptr || q + n > a.ptr + a.size)
        ldm_emu_fatal("%s: %s [%p, +%zu) is outside device allocation #%ld (%zu bytes at %p)", who, what, p, n, a.id, a.size, (void *)a.ptr);
}
static cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind kind, cudaStream_t s) {
    ldm_emu_state &g = ldm_emu();
    if (g.sticky) return g.sticky;
    if (!ldm_emu_stream_ok(s)) return ldm_emu_ret(cudaErrorInvalidResourceHandle);
    if (!n) return cudaSuccess;
    int sd = ldm_emu_is_device(src), dd = ldm_emu_is_device(dst);
    ldm_emu_check_range("cudaMemcpyAsync", "source", src, n);
    ldm_emu_check_range("cudaMemcpyAsync", "destination", dst, n);
    cudaMemcpyKind actual = (cudaMemcpyKind)((sd ? 2 : 0) + (dd ? 1 : 0)); /* HostToHost 0 ... DeviceToDevice 3 */
    if (kind != cudaMemcpyDefault && kind != actual) {
        fprintf(stderr, "cuda emulator: cudaMemcpyAsync kind %d, but the source is %s memory and the destination %s memory\n", (int)kind,
                sd ? "device" : "host", dd ? "device" : "host");
        return ldm_emu_ret(cudaErrorInvalidMemcpyDirection);
    }
    ldm_emu_protect_all(1);
    memmove(dst, src, n);
    ldm_emu_protect_all(0);
    return cudaSuccess;
}

/* ---- kernels ---- */
static void ldm_emu_set_thread(unsigned t) {
    threadIdx = dim3(t % blockDim.x, (t / blockDim.x) % blockDim.y, t / (blockDim.x * blockDim.y));
}
/* A fiber lives for the whole program: it runs the current body for whichever thread it is
   given, parks as DONE, and is resumed for the next block. Switches are _setjmp/_longjmp
   between stacks (no signal-mask system calls); ucontext only creates the stacks. */
static void ldm_emu_fiber_main(void) {
    ldm_emu_state &g = ldm_emu();
    for (;;) {
        g.body(g.body_arg);
        ldm_emu_fiber &f = g.fib[(size_t)g.current];
        f.state = LDM_EMU_DONE;
        if (!_setjmp(f.jb)) _longjmp(g.sched, 1);
    }
}
static void ldm_emu_resume(size_t t) {
    ldm_emu_state &g = ldm_emu();
    ldm_emu_fiber &f = g.fib[t];
    if (_setjmp(g.sched)) return;
    if (!f.started) { f.started = 1; setcontext(&f.uc); }
    _longjmp(f.jb, 1);
}
static void ldm_emu_wait(int state, const void *site) {
    ldm_emu_state &g = ldm_emu();
    if (!g.fiber_mode)
        ldm_emu_fatal("%s synchronised, but its first launch never did, so it runs as plain loops (hint: LDM_EMU_FIBERS=1)", g.kernel);
    g.saw_sync = 1;
    int me = g.current;
    g.fib[(size_t)me].state = state;
    g.fib[(size_t)me].site = site;
    if (!_setjmp(g.fib[(size_t)me].jb)) _longjmp(g.sched, 1);
}
/* The call site tells barriers apart: threads of a block waiting at different __syncthreads
   calls is reported (CUDA requires every thread to reach the same one). */
__attribute__((noinline)) static void __syncthreads(void) { ldm_emu_wait(LDM_EMU_AT_BLOCK, __builtin_return_address(0)); }
template <typename T> __attribute__((noinline)) static T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
    ldm_emu_state &g = ldm_emu();
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    if (mask != 0xffffffffu) ldm_emu_fatal("%s: __shfl_xor_sync with a partial mask is not emulated", g.kernel);
    if (lane_mask < 0 || lane_mask > 31) ldm_emu_fatal("%s: __shfl_xor_sync lane mask %d", g.kernel, lane_mask);
    int me = g.current, base = me & ~31;
    if (base + 32 > g.nthreads) ldm_emu_fatal("%s: a shuffle in a partial warp (block of %d threads)", g.kernel, g.nthreads);
    int ph = g.fiber_mode ? g.phase[(size_t)me] : 0;
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    if (g.fiber_mode) g.shfl[ph][(size_t)me] = bits;
    ldm_emu_wait(LDM_EMU_AT_WARP, __builtin_return_address(0));
    T r;
    memcpy(&r, &g.shfl[ph][(size_t)(base + ((me & 31) ^ lane_mask))], sizeof r);
    g.phase[(size_t)me] ^= 1;
    return r;
}
static void ldm_emu_run_block_fibers(void) {
    ldm_emu_state &g = ldm_emu();
    size_t n = (size_t)g.nthreads;
    if (g.fib.size() < n) { /* fibers are created once and never freed (the vector never shrinks) */
        g.fib.reserve(1024);
        for (size_t t = g.fib.size(); t < n; t++) {
            unsigned char *st = (unsigned char *)malloc(LDM_EMU_STACK);
            if (!st) ldm_emu_fatal("out of host memory for fiber stacks");
            g.stacks.push_back(st);
            g.fib.emplace_back();
            ldm_emu_fiber &f = g.fib.back();
            getcontext(&f.uc);
            f.uc.uc_stack.ss_sp = st;
            f.uc.uc_stack.ss_size = LDM_EMU_STACK;
            f.uc.uc_link = NULL;
            makecontext(&f.uc, ldm_emu_fiber_main, 0);
            f.started = 0;
        }
    }
    for (int b = 0; b < 2; b++) g.shfl[b].assign(n, 0);
    g.phase.assign(n, 0);
    for (size_t t = 0; t < n; t++) g.fib[t].state = LDM_EMU_READY;
    for (;;) {
        for (size_t t = 0; t < n; t++)
            if (g.fib[t].state == LDM_EMU_READY) {
                g.current = (int)t;
                ldm_emu_set_thread((unsigned)t);
                ldm_emu_resume(t);
            }
        size_t done = 0, at_block = 0;
        for (size_t t = 0; t < n; t++) { done += g.fib[t].state == LDM_EMU_DONE; at_block += g.fib[t].state == LDM_EMU_AT_BLOCK; }
        if (done == n) return;
        int released = 0;
        for (size_t w = 0; w < n; w += 32) { /* a warp whose lanes all wait at a shuffle goes on */
            size_t e = w + 32 < n ? w + 32 : n, at = 0, gone = 0;
            for (size_t t = w; t < e; t++) { at += g.fib[t].state == LDM_EMU_AT_WARP; gone += g.fib[t].state == LDM_EMU_DONE; }
            if (!at) continue;
            if (gone) ldm_emu_fatal("%s: block %u: a full-mask shuffle while %zu lanes of warp %zu have exited", g.kernel, blockIdx.x, gone, w / 32);
            if (at != e - w) continue;
            for (size_t t = w; t < e; t++)
                if (g.fib[t].site != g.fib[w].site) ldm_emu_fatal("%s: block %u: lanes of warp %zu shuffle at different calls", g.kernel, blockIdx.x, w / 32);
            for (size_t t = w; t < e; t++) g.fib[t].state = LDM_EMU_READY;
            released = 1;
        }
        if (!released && at_block + done == n) { /* exited threads do not hold up a barrier */
            const void *site = NULL;
            for (size_t t = 0; t < n; t++)
                if (g.fib[t].state == LDM_EMU_AT_BLOCK) {
                    if (!site) site = g.fib[t].site;
                    else if (g.fib[t].site != site)
                        ldm_emu_fatal("%s: block %u: threads wait at different __syncthreads calls (thread %zu at %p, others at %p)", g.kernel,
                                      blockIdx.x, t, g.fib[t].site, site);
                }
            for (size_t t = 0; t < n; t++) if (g.fib[t].state == LDM_EMU_AT_BLOCK) g.fib[t].state = LDM_EMU_READY;
            released = 1;
        }
        if (!released)
            ldm_emu_fatal("%s: block %u: threads wait at different barriers (%zu at __syncthreads, %zu exited, the rest at shuffles)", g.kernel,
                          blockIdx.x, at_block, done);
    }
}
template <typename F> static void ldm_emu_call(void *f) { (*(F *)f)(); }
template <typename T> static void ldm_emu_check_arg(const char *name, int k, const T &v) {
    if constexpr (std::is_pointer<T>::value) {
        if (v && !ldm_emu_is_device((const void *)v)) {
            fprintf(stderr, "cuda emulator: %s: argument %d (%p) is not device memory (a kernel cannot read host memory)\n", name, k, (const void *)v);
            ldm_emu().sticky = cudaErrorIllegalAddress;
        }
    }
}
/* Runs kernel k over grid x block (what k<<<grid, block, 0, stream>>>(args) does). */
template <typename... P, typename... A>
static void ldm_emu_launch(const char *name, void (*k)(P...), dim3 grid, dim3 block, cudaStream_t s, A &&...a) {
    ldm_emu_state &g = ldm_emu();
    if (g.sticky) return;
    unsigned long long nt = (unsigned long long)block.x * block.y * block.z;
    if (!nt || nt > 1024 || block.z > 64 || !grid.x || !grid.y || !grid.z || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
        fprintf(stderr, "cuda emulator: %s: launch of %u,%u,%u blocks of %u,%u,%u threads exceeds CUDA's limits\n", name, grid.x, grid.y,
                grid.z, block.x, block.y, block.z);
        g.last = cudaErrorInvalidConfiguration;
        return;
    }
    if (!ldm_emu_stream_ok(s)) { g.last = cudaErrorInvalidResourceHandle; return; }
    std::tuple<typename std::decay<P>::type...> args(std::forward<A>(a)...);
    int idx = 0;
    std::apply([&](const auto &...v) { (ldm_emu_check_arg(name, idx++, v), ...); }, args);
    if (g.sticky) return;
    auto run = [&]() { std::apply(k, args); };
    const void *key = (const void *)k;
    std::map<const void *, int>::iterator it = g.syncs.find(key);
    int fibers = g.always_fibers || it == g.syncs.end() || it->second;
    g.kernel = name;
    g.launches[name]++;
    g.fiber_mode = fibers;
    g.saw_sync = 0;
    g.nthreads = (int)nt;
    g.body = ldm_emu_call<decltype(run)>;
    g.body_arg = &run;
    blockDim = block;
    gridDim = grid;
    ldm_emu_protect_all(1);
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                blockIdx = dim3(x, y, z);
                if (fibers) ldm_emu_run_block_fibers();
                else for (unsigned t = 0; t < nt; t++) { ldm_emu_set_thread(t); run(); }
            }
    ldm_emu_protect_all(0);
    if (fibers) g.syncs[key] = (it != g.syncs.end() && it->second) || g.saw_sync;
    g.kernel = NULL;
    g.fiber_mode = 0;
}
/* Launches of a kernel so far (by its name in ldm_cuda.cuh). */
static long ldm_emu_launch_count(const char *name) {
    std::map<std::string, long>::iterator it = ldm_emu().launches.find(name);
    return it == ldm_emu().launches.end() ? 0 : it->second;
}

/* ---- cuBLAS ---- */
static cublasStatus_t cublasCreate(cublasHandle_t *h) {
    *h = new ldm_emu_blas;
    (*h)->stream = NULL;
    (*h)->math = CUBLAS_DEFAULT_MATH;
    return CUBLAS_STATUS_SUCCESS;
}
static cublasStatus_t cublasDestroy(cublasHandle_t h) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
static cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}
static cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->math = m;
    return CUBLAS_STATUS_SUCCESS;
}
static const char *cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}
static float ldm_emu_tf32(float v) { /* round to nearest (ties away) at 10 mantissa bits */
    uint32_t b;
    memcpy(&b, &v, 4);
    if ((b & 0x7f800000u) != 0x7f800000u) b = (b + 0x1000u) & 0xffffe000u;
    memcpy(&v, &b, 4);
    return v;
}
/* Column-major C = alpha op(A) op(B) + beta C, with float accumulation; beta 0 ignores C. */
static cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float *alpha,
                                  const float *A, int lda, const float *B, int ldb, const float *beta, float *C, int ldc) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m, br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
    if (m < 0 || n < 0 || k < 0 || (unsigned)ta > 2 || (unsigned)tb > 2 || lda < (ar > 1 ? ar : 1) || ldb < (br > 1 ? br : 1) ||
        ldc < (m > 1 ? m : 1)) {
        fprintf(stderr, "cuda emulator: cublasSgemm(%c%c, m %d n %d k %d, lda %d ldb %d ldc %d): invalid value\n", "NTC"[ta % 3],
                "NTC"[tb % 3], m, n, k, lda, ldb, ldc);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (ldm_emu_is_device(alpha) || ldm_emu_is_device(beta)) ldm_emu_fatal("cublasSgemm: alpha/beta are device pointers in host pointer mode");
    if (!m || !n) return CUBLAS_STATUS_SUCCESS;
    if (!ldm_emu_is_device(C) || (k && (!ldm_emu_is_device(A) || !ldm_emu_is_device(B))))
        ldm_emu_fatal("cublasSgemm: an operand is not device memory (A %p, B %p, C %p)", (const void *)A, (const void *)B, (void *)C);
    if (k) {
        ldm_emu_check_range("cublasSgemm", "A", A, sizeof(float) * ((size_t)(ac - 1) * lda + ar));
        ldm_emu_check_range("cublasSgemm", "B", B, sizeof(float) * ((size_t)(bc - 1) * ldb + br));
    }
    ldm_emu_check_range("cublasSgemm", "C", C, sizeof(float) * ((size_t)(n - 1) * ldc + m));
    int tf32 = h->math == CUBLAS_TF32_TENSOR_OP_MATH;
    float al = *alpha, be = *beta;
    std::vector<float> Ap((size_t)m * (size_t)k), acc((size_t)m);
    ldm_emu_protect_all(1);
    for (int l = 0; l < k; l++)
        for (int i = 0; i < m; i++) {
            float v = ta == CUBLAS_OP_N ? A[i + (size_t)l * lda] : A[l + (size_t)i * lda];
            Ap[i + (size_t)l * m] = tf32 ? ldm_emu_tf32(v) : v;
        }
    for (int j = 0; j < n; j++) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int l = 0; l < k; l++) {
            float b = tb == CUBLAS_OP_N ? B[l + (size_t)j * ldb] : B[j + (size_t)l * ldb];
            if (tf32) b = ldm_emu_tf32(b);
            const float *a = &Ap[(size_t)l * m];
            for (int i = 0; i < m; i++) acc[i] += a[i] * b;
        }
        float *c = C + (size_t)j * ldc;
        for (int i = 0; i < m; i++) c[i] = be == 0.0f ? al * acc[i] : al * acc[i] + be * c[i];
    }
    ldm_emu_protect_all(0);
    return CUBLAS_STATUS_SUCCESS;
}
#endif /* LDM_CUDA_EMU_HPP */
