/* ldm_cuda.cuh - the CUDA back end of ldm.h: every kernel of ldm_tensor.h's ldm_backend on one
   NVIDIA GPU, with cuBLAS for the GEMMs.                                             v0.1

   Build (the file holding LDM_IMPLEMENTATION must be compiled by nvcc as CUDA: a .cu file, or
   -x cu for a .c file; -arch=sm_90 for Hopper, sm_80 also runs there through its PTX):
       nvcc -x cu -O2 -arch=sm_80 -DLDM_CUDA -Xcompiler -ffp-contract=off -I. prog.c -o prog -lcublas -lm -lpthread
   Without a GPU, tests/cuda_emu.hpp runs this file's kernels on the CPU (see build.sh).

   Nothing includes this file directly: defining LDM_CUDA before ldm_tensor.h makes that header
   pull in the declarations below (plain C) and, in its implementation, the CUDA code.

       ldm_ctx *ctx; ldm_ctx_create(&ctx, NULL);
       if (ldm_cuda_available() && ldm_cuda_init(ctx, 0) == LDM_OK)   // new tensors now go to the GPU
           printf("on %s\n", ldm_cuda_device_name(ctx));
       ldm_tensor *x = ldm_randn(ctx, ldm_shape4(1, 4, 64, 64));       // device memory
       ...ops as on the CPU...; ldm_to_host(ctx, y, host_buffer);
       ldm_ctx_destroy(ctx);                                           // also releases the GPU

   Semantics: each kernel computes what the CPU kernel of the same name computes (same argument
   meanings, += into gradients, NULL gradient = skip). Results agree with the CPU to float
   rounding, not bitwise, except: the RNG (element i of a draw is the same float on both), the
   element-wise arithmetic ops (affine, axpby, binary ops and their gradients, copies, pooling
   and upsampling gradients, embedding gradients, argmin) and the optimizer update, which do the
   CPU's correctly rounded operations in its order. Every reduction runs in a fixed order (no atomics),
   so a run repeats bitwise on the same GPU. Transcendentals use CUDA's libdevice (a few ulp from
   glibc); GEMMs use cuBLAS in full FP32 unless ldm_cuda_set_tf32(ctx, 1).

   Memory: the step arena (ldm_arena_*) of LDM_GPU is one cudaMalloc block: $LDM_CUDA_ARENA_MB,
   else half of the device memory free at init. Persistent buffers (parameters, optimizer state)
   come from cudaMalloc through the back end's alloc entry. All work runs on one stream, so arena
   memory rewound by the host can be reused at once; copies to the host wait for the stream.

   Errors: every CUDA and cuBLAS call is checked; a failure sets LDM_ERR_DEVICE on the context
   with file:line, the call and CUDA's error string (kernels run asynchronously: a fault inside
   one surfaces at the next checked call, ldm_cuda_sync reports it at a point of your choice).
   One device per context; use the context from the host thread that initialised it. */
#ifndef LDM_CUDA_CUH
#define LDM_CUDA_CUH

#ifdef __cplusplus
extern "C" {
#endif
/* Number of usable CUDA devices (0 when there is no driver or device). */
LDM_API int ldm_cuda_available(void);
/* Attaches device `device` to ctx as LDM_GPU (stream, cuBLAS handle, device arena) and makes
   it the context's default device (ldm_ctx_set_device(ctx, LDM_CPU) switches back).
   LDM_ERR_DEVICE when there is no such device or it cannot be set up. */
LDM_API ldm_result ldm_cuda_init(ldm_ctx *ctx, int device);
/* Name of the attached device ("" when none). */
LDM_API const char *ldm_cuda_device_name(const ldm_ctx *ctx);
/* TF32 tensor-core GEMMs (about 10 bits of mantissa in the products): off by default. */
LDM_API void ldm_cuda_set_tf32(ldm_ctx *ctx, int on);
/* Waits for every queued kernel; returns the context status (a device fault becomes an error). */
LDM_API ldm_result ldm_cuda_sync(ldm_ctx *ctx);
/* The stream every kernel of ctx runs on (a cudaStream_t; NULL without a device): for
   libraries that queue work after ldm.h's, e.g. NCCL all-reduces (ldm_dist.h). */
LDM_API void *ldm_cuda_stream(ldm_ctx *ctx);
/* Detaches and frees the device (ldm_ctx_destroy does this too). Device tensors and
   persistent buffers must not be used afterwards. */
LDM_API void ldm_cuda_shutdown(ldm_ctx *ctx);
#ifdef __cplusplus
}
#endif
#endif /* LDM_CUDA_CUH */

/* ========================================================================================== */
/*                                      IMPLEMENTATION                                        */
/* ========================================================================================== */
/* Included a second time at the end of ldm_tensor.h's implementation, where ldm_ctx and the
   backend table are defined. */
#if defined(LDM_TENSOR_IMPLEMENTATION_DONE) && !defined(LDM_CUDA_IMPLEMENTATION_DONE)
#define LDM_CUDA_IMPLEMENTATION_DONE
#if defined(LDM_CUDA_EMULATOR)
/* Tests only: a C++ header (tests/cuda_emu.hpp) that runs these kernels on the CPU, one block
   at a time, with device memory unreadable to host code, so CI checks the back end's logic. */
#include LDM_CUDA_EMULATOR
#define LDM__CU_LAUNCH(k, grid, block, stream, ...) ldm_emu_launch(#k, k, (grid), (block), (stream), __VA_ARGS__)
#else
#ifndef __CUDACC__
#error "LDM_GPU: the file that defines LDM_IMPLEMENTATION must be compiled by nvcc (as .cu)"
#endif
#include <cuda_runtime.h>
#include <cublas_v2.h>
/* Every launch goes through this macro (dynamic shared memory is never used). */
#define LDM__CU_LAUNCH(k, grid, block, stream, ...) k<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif
#include <limits.h>

typedef struct ldm__cuda_state {
    ldm_ctx *ctx;
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    double *scratch;          /* sum_squares partials, LDM__CU_RED_BLOCKS + 1 doubles */
    void *arena;              /* the step arena's block */
    char name[320];       /* "<prop.name> (device N, sm_XY)" */
} ldm__cuda_state;

#define LDM__CU_T 256         /* threads per block */
#define LDM__CU_RED_BLOCKS 1024

static int ldm__cu_fail(ldm_ctx *ctx, cudaError_t e, const char *call, const char *file, int line) {
    if (e == cudaSuccess) return 0;
    cudaGetLastError(); /* a non-sticky error must not resurface at the next launch check */
    ldm_ctx_seterr(ctx, LDM_ERR_DEVICE, "%s:%d: %s: %s (%s) (hint: a fault inside a kernel reports at the next CUDA call; run compute-sanitizer to find it)",
                   file, line, call, cudaGetErrorName(e), cudaGetErrorString(e));
    return 1;
}
static int ldm__cublas_fail(ldm_ctx *ctx, cublasStatus_t s, const char *call, const char *file, int line) {
    if (s == CUBLAS_STATUS_SUCCESS) return 0;
    ldm_ctx_seterr(ctx, LDM_ERR_DEVICE, "%s:%d: %s: %s", file, line, call, cublasGetStatusString(s));
    return 1;
}
/* Each evaluates to nonzero on failure (the context error is then set). */
#define LDM__CU(ctx, call) ldm__cu_fail((ctx), (call), #call, __FILE__, __LINE__)
#define LDM__CUBLAS(ctx, call) ldm__cublas_fail((ctx), (call), #call, __FILE__, __LINE__)
#define LDM__CU_LAUNCHED(ctx) ldm__cu_fail((ctx), cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

static ldm__cuda_state *ldm__cu_st(ldm_ctx *ctx) { return (ldm__cuda_state *)ctx->be_state[LDM_GPU]; }
static unsigned ldm__cu_blocks(int64_t n) {
    int64_t b = (n + LDM__CU_T - 1) / LDM__CU_T;
    return (unsigned)(b < 1 ? 1 : b > 65536 * 16 ? 65536 * 16 : b);
}
/* Grid-stride loop over [0, n). */
#define LDM__CU_FOR(i, n) for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)
/* Launches kernel k over n items on ctx's stream and checks the launch. */
#define LDM__CU_RUN(ctx, n, k, ...)                                                              \
    do {                                                                                        \
        if ((n) > 0) {                                                                          \
            LDM__CU_LAUNCH(k, ldm__cu_blocks(n), LDM__CU_T, ldm__cu_st(ctx)->stream, __VA_ARGS__);       \
            LDM__CU_LAUNCHED(ctx);                                                              \
        }                                                                                       \
    } while (0)

/* Sums v over the block (blockDim.x a multiple of 32, at most 1024) in a fixed tree; every
   thread gets the result. sh: 33 doubles of shared memory. */
static __device__ double ldm__cu_warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ double ldm__cu_block_sum(double v, double *sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (int)(blockDim.x >> 5);
    v = ldm__cu_warp_sum(v);
    __syncthreads(); /* the previous call's readers of sh[32] are done */
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        double s = lane < nw ? sh[lane] : 0.0;
        s = ldm__cu_warp_sum(s);
        if (lane == 0) sh[32] = s;
    }
    __syncthreads();
    return sh[32];
}

/* ---- memory ---- */
static void *ldm__cu_alloc(void *state, size_t bytes) {
    ldm__cuda_state *st = (ldm__cuda_state *)state;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        cudaGetLastError();
        ldm_ctx_seterr(st->ctx, LDM_ERR_NOMEM, "%s:%d: cudaMalloc of %s on %s: %s (hint: lower the batch size, or LDM_CUDA_ARENA_MB to leave room for parameters)",
                       __FILE__, __LINE__, ldm__bytes(bytes).s, st->name, cudaGetErrorString(e));
        return NULL;
    }
    return p;
}
static void ldm__cu_free(void *state, void *p) {
    ldm__cuda_state *st = (ldm__cuda_state *)state;
    if (p) LDM__CU(st->ctx, cudaFree(p));
}
static void ldm__cu_copy(void *state, void *dst, ldm_device dd, const void *src, ldm_device sd, size_t bytes) {
    ldm__cuda_state *st = (ldm__cuda_state *)state;
    (void)sd;
    if (!bytes || dst == src) return;
    /* Unified addressing tells the directions apart; a copy from pageable host memory has left
       the source when the call returns, and a copy to the host waits for the stream. */
    if (LDM__CU(st->ctx, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, st->stream))) return;
    if (dd == LDM_CPU) LDM__CU(st->ctx, cudaStreamSynchronize(st->stream));
}

/* ---- fill, rng, axpby ---- */
static __global__ void ldm__k_fill(float *out, int64_t n, float v) { LDM__CU_FOR(i, n) out[i] = v; }
static void ldm__cu_fill(ldm_ctx *ctx, float *out, int64_t n, float v) { LDM__CU_RUN(ctx, n, ldm__k_fill, out, n, v); }

static __global__ void ldm__k_rng(float *out, int64_t n, uint64_t seed, uint64_t block0, int normal, float a, float b) {
    LDM__CU_FOR(blk, (n + 3) / 4) {
        float v[4];
        ldm__rng_block(seed, block0 + (uint64_t)blk, normal, a, b, v); /* shared with the CPU */
        int64_t base = blk * 4;
        for (int q = 0; q < 4 && base + q < n; q++) out[base + q] = v[q];
    }
}
static void ldm__cu_rng(ldm_ctx *ctx, float *out, int64_t n, uint64_t seed, uint64_t offset, int normal, float a, float b) {
    LDM__CU_RUN(ctx, (n + 3) / 4, ldm__k_rng, out, n, seed, offset / 4, normal, a, b);
}

static __global__ void ldm__k_axpby(float *y, const float *x, int64_t n, float a, float b) {
    LDM__CU_FOR(i, n) y[i] = __fadd_rn(__fmul_rn(a, y[i]), __fmul_rn(b, x[i]));
}
static void ldm__cu_axpby(ldm_ctx *ctx, float *y, const float *x, int64_t n, float a, float b) {
    LDM__CU_RUN(ctx, n, ldm__k_axpby, y, x, n, a, b);
}

/* ---- unary ---- */
/* silu'(v): the unary SiLU backward and the fused GroupNorm+SiLU backward share it */
static __device__ float ldm__cu_dsilu(float v) {
    float sg = 1.0f / (1.0f + expf(-v));
    return sg * (1.0f + v * (1.0f - sg));
}
static __device__ float ldm__cu_gelu_tanh_inner(float x) { return 0.7978845608028654f * (x + 0.044715f * x * x * x); }
static __global__ void ldm__k_unary(ldm__unary_op op, float *y, const float *x, int64_t n, float p0, float p1) {
    LDM__CU_FOR(i, n) {
        float v = x[i], r = 0.0f;
        switch (op) {
        case LDM__U_AFFINE: r = __fadd_rn(__fmul_rn(v, p0), p1); break;
        case LDM__U_POW: r = p0 == 2.0f ? __fmul_rn(v, v) : p0 == -0.5f ? __fdiv_rn(1.0f, __fsqrt_rn(v)) : powf(v, p0); break;
        case LDM__U_EXP: r = expf(v); break;
        case LDM__U_LOG: r = logf(v); break;
        case LDM__U_SQRT: r = __fsqrt_rn(v); break;
        case LDM__U_ABS: r = fabsf(v); break;
        case LDM__U_SQUARE: r = __fmul_rn(v, v); break;
        case LDM__U_CLAMP: r = v < p0 ? p0 : v > p1 ? p1 : v; break;
        case LDM__U_SIGMOID: r = 1.0f / (1.0f + expf(-v)); break;
        case LDM__U_SILU: r = v / (1.0f + expf(-v)); break;
        case LDM__U_RELU: r = v > 0.0f ? v : 0.0f; break;
        case LDM__U_LEAKY: r = v > 0.0f ? v : __fmul_rn(v, p0); break;
        case LDM__U_TANH: r = tanhf(v); break;
        case LDM__U_GELU: r = 0.5f * v * (1.0f + erff(v * 0.7071067811865476f)); break;
        case LDM__U_GELU_TANH: r = 0.5f * v * (1.0f + tanhf(ldm__cu_gelu_tanh_inner(v))); break;
        case LDM__U_SOFTPLUS: r = v * p0 > p1 ? v : log1pf(expf(v * p0)) / p0; break;
        case LDM__U_SIN: r = sinf(v); break;
        case LDM__U_COS: r = cosf(v); break;
        case LDM__U_STEP: r = v >= p0 ? p1 : 0.0f; break;
        }
        y[i] = r;
    }
}
static __global__ void ldm__k_unary_bw(ldm__unary_op op, float *dx, const float *dy, const float *x, const float *y,
                                       int64_t n, float p0, float p1) {
    LDM__CU_FOR(i, n) {
        float v = x[i], d;
        switch (op) {
        case LDM__U_AFFINE: d = p0; break;
        case LDM__U_POW: d = p0 == 2.0f ? 2.0f * v : p0 * powf(v, p0 - 1.0f); break;
        case LDM__U_EXP: d = y[i]; break;
        case LDM__U_LOG: d = 1.0f / v; break;
        case LDM__U_SQRT: d = 0.5f / y[i]; break;
        case LDM__U_ABS: d = v > 0.0f ? 1.0f : v < 0.0f ? -1.0f : 0.0f; break;
        case LDM__U_SQUARE: d = 2.0f * v; break;
        case LDM__U_CLAMP: d = v >= p0 && v <= p1 ? 1.0f : 0.0f; break;
        case LDM__U_SIGMOID: { float o = y[i]; d = o * (1.0f - o); break; }
        case LDM__U_SILU: d = ldm__cu_dsilu(v); break;
        case LDM__U_RELU: d = v > 0.0f ? 1.0f : 0.0f; break;
        case LDM__U_LEAKY: d = v > 0.0f ? 1.0f : p0; break;
        case LDM__U_TANH: { float o = y[i]; d = 1.0f - o * o; break; }
        case LDM__U_GELU: d = 0.5f * (1.0f + erff(v * 0.7071067811865476f)) + v * 0.3989422804014327f * expf(-0.5f * v * v); break;
        case LDM__U_GELU_TANH: {
            float t = tanhf(ldm__cu_gelu_tanh_inner(v)), dinner = 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * v * v);
            d = 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * dinner;
            break;
        }
        case LDM__U_SOFTPLUS: d = v * p0 > p1 ? 1.0f : 1.0f / (1.0f + expf(-v * p0)); break;
        case LDM__U_SIN: d = cosf(v); break;
        case LDM__U_COS: d = -sinf(v); break;
        default: continue; /* STEP: no gradient */
        }
        dx[i] = __fadd_rn(dx[i], __fmul_rn(dy[i], d));
    }
}
static void ldm__cu_unary(ldm_ctx *ctx, ldm__unary_op op, float *out, const float *x, int64_t n, float p0, float p1) {
    LDM__CU_RUN(ctx, n, ldm__k_unary, op, out, x, n, p0, p1);
}
static void ldm__cu_unary_backward(ldm_ctx *ctx, ldm__unary_op op, float *dx, const float *dy, const float *x,
                                   const float *y, int64_t n, float p0, float p1) {
    if (op == LDM__U_STEP) return;
    LDM__CU_RUN(ctx, n, ldm__k_unary_bw, op, dx, dy, x, y, n, p0, p1);
}

/* ---- binary with broadcast (the geometry travels by value) ---- */
static __device__ void ldm__cu_bc_offsets(const ldm__bcast &g, int64_t i, int64_t *oa, int64_t *ob) {
    int64_t a = 0, b = 0;
    for (int d = 4; d >= 0; d--) {
        int64_t k = i % g.shape[d];
        i /= g.shape[d];
        a += k * g.sa[d];
        b += k * g.sb[d];
    }
    *oa = a;
    *ob = b;
}
static __global__ void ldm__k_binary(ldm__binary_op op, float *y, const float *a, const float *b, ldm__bcast g) {
    LDM__CU_FOR(i, g.n) {
        int64_t oa, ob;
        ldm__cu_bc_offsets(g, i, &oa, &ob);
        float u = a[oa], v = b[ob];
        y[i] = op == LDM__B_ADD ? __fadd_rn(u, v) : op == LDM__B_SUB ? __fsub_rn(u, v) : op == LDM__B_MUL ? __fmul_rn(u, v) : __fdiv_rn(u, v);
    }
}
static __global__ void ldm__k_binary_bw(ldm__binary_op op, float *da, float *db, const float *dy, const float *a,
                                        const float *b, ldm__bcast g) {
    LDM__CU_FOR(i, g.n) {
        int64_t oa, ob;
        ldm__cu_bc_offsets(g, i, &oa, &ob);
        float u = a[oa], v = b[ob], d = dy[i];
        switch (op) {
        case LDM__B_ADD: if (da) da[i] = __fadd_rn(da[i], d); if (db) db[i] = __fadd_rn(db[i], d); break;
        case LDM__B_SUB: if (da) da[i] = __fadd_rn(da[i], d); if (db) db[i] = __fsub_rn(db[i], d); break;
        case LDM__B_MUL: if (da) da[i] = __fadd_rn(da[i], __fmul_rn(d, v)); if (db) db[i] = __fadd_rn(db[i], __fmul_rn(d, u)); break;
        case LDM__B_DIV:
            if (da) da[i] = __fadd_rn(da[i], __fdiv_rn(d, v));
            if (db) db[i] = __fsub_rn(db[i], __fdiv_rn(__fmul_rn(d, u), __fmul_rn(v, v)));
            break;
        }
    }
}
static void ldm__cu_binary(ldm_ctx *ctx, ldm__binary_op op, float *out, const float *a, const float *b, const ldm__bcast *g) {
    LDM__CU_RUN(ctx, g->n, ldm__k_binary, op, out, a, b, *g);
}
static void ldm__cu_binary_backward(ldm_ctx *ctx, ldm__binary_op op, float *da, float *db, const float *dy, const float *a,
                                    const float *b, const ldm__bcast *g) {
    if (!da && !db) return;
    LDM__CU_RUN(ctx, g->n, ldm__k_binary_bw, op, da, db, dy, a, b, *g);
}

/* ---- reduce_sum: per output element, the reduced index space in row-major order, in double.
   Many outputs: one thread each; few: one block each, threads striding the reduced space. */
typedef struct { int nk, nr; int64_t ksz[5], kst[5], rsz[5], rst[5]; int64_t on, rn; } ldm__cu_red;
static ldm__cu_red ldm__cu_red_make(const int64_t *shape, const int64_t *ostride) {
    ldm__cu_red r;
    int64_t xs[5], s = 1;
    memset(&r, 0, sizeof r);
    for (int d = 4; d >= 0; d--) { xs[d] = s; s *= shape[d]; }
    r.on = r.rn = 1;
    for (int d = 0; d < 5; d++) {
        if (ostride[d]) { r.ksz[r.nk] = shape[d]; r.kst[r.nk++] = xs[d]; r.on *= shape[d]; }
        else { r.rsz[r.nr] = shape[d]; r.rst[r.nr++] = xs[d]; r.rn *= shape[d]; }
    }
    return r;
}
static __device__ int64_t ldm__cu_unravel(int64_t i, int n, const int64_t *sz, const int64_t *st) {
    int64_t off = 0;
    for (int d = n - 1; d >= 0; d--) { off += (i % sz[d]) * st[d]; i /= sz[d]; }
    return off;
}
static __global__ void ldm__k_reduce_thread(float *out, const float *x, ldm__cu_red r, int acc) {
    LDM__CU_FOR(o, r.on) {
        const float *p = x + ldm__cu_unravel(o, r.nk, r.ksz, r.kst);
        double s = 0.0;
        for (int64_t q = 0; q < r.rn; q++) s += p[ldm__cu_unravel(q, r.nr, r.rsz, r.rst)];
        out[o] = acc ? __fadd_rn(out[o], (float)s) : (float)s;
    }
}
static __global__ void ldm__k_reduce_block(float *out, const float *x, ldm__cu_red r, int acc) {
    __shared__ double sh[33];
    for (int64_t o = blockIdx.x; o < r.on; o += gridDim.x) {
        const float *p = x + ldm__cu_unravel(o, r.nk, r.ksz, r.kst);
        double s = 0.0;
        for (int64_t q = threadIdx.x; q < r.rn; q += blockDim.x) s += p[ldm__cu_unravel(q, r.nr, r.rsz, r.rst)];
        s = ldm__cu_block_sum(s, sh);
        if (threadIdx.x == 0) out[o] = acc ? __fadd_rn(out[o], (float)s) : (float)s;
    }
}
static void ldm__cu_reduce(ldm_ctx *ctx, float *out, const float *x, const ldm__cu_red *r, int accumulate) {
    if (r->on <= 0) return;
    if (r->on >= 4096 || r->rn <= 64) LDM__CU_RUN(ctx, r->on, ldm__k_reduce_thread, out, x, *r, accumulate);
    else {
        LDM__CU_LAUNCH(ldm__k_reduce_block, (unsigned)LDM__MIN(r->on, 65535), LDM__CU_T, ldm__cu_st(ctx)->stream, out, x, *r, accumulate);
        LDM__CU_LAUNCHED(ctx);
    }
}
static void ldm__cu_reduce_sum(ldm_ctx *ctx, float *out, const float *x, const int64_t *shape, const int64_t *ostride, int accumulate) {
    ldm__cu_red r = ldm__cu_red_make(shape, ostride);
    ldm__cu_reduce(ctx, out, x, &r, accumulate);
}

/* ---- strided copy. Dims that write one destination element more than once (dst stride 0,
   size > 1) run serially inside a thread in row-major order, as the CPU does: accumulation
   adds in its order and a plain copy keeps the last value. ---- */
typedef struct { int np, ns; int64_t psz[5], pd[5], ps[5], ssz[5], sd[5], ss[5]; int64_t pn, sn; } ldm__cu_scopy;
static __global__ void ldm__k_scopy(float *dst, const float *src, ldm__cu_scopy c, int acc) {
    LDM__CU_FOR(i, c.pn) {
        int64_t od = 0, os = 0, t = i;
        for (int d = c.np - 1; d >= 0; d--) { int64_t k = t % c.psz[d]; t /= c.psz[d]; od += k * c.pd[d]; os += k * c.ps[d]; }
        if (!c.ns) { dst[od] = acc ? __fadd_rn(dst[od], src[os]) : src[os]; continue; }
        if (!acc) { dst[od] = src[os + ldm__cu_unravel(c.sn - 1, c.ns, c.ssz, c.ss)]; continue; }
        float v = dst[od];
        for (int64_t q = 0; q < c.sn; q++) v = __fadd_rn(v, src[os + ldm__cu_unravel(q, c.ns, c.ssz, c.ss)]);
        dst[od] = v;
    }
}
static void ldm__cu_strided_copy(ldm_ctx *ctx, float *dst, const int64_t *dstride, const float *src, const int64_t *sstride,
                                 const int64_t *shape, int accumulate) {
    ldm__cu_scopy c;
    memset(&c, 0, sizeof c);
    c.pn = c.sn = 1;
    for (int d = 0; d < 5; d++) {
        if (shape[d] == 0) return;
        if (!dstride[d] && shape[d] > 1) { c.ssz[c.ns] = shape[d]; c.ss[c.ns++] = sstride[d]; c.sn *= shape[d]; }
        else { c.psz[c.np] = shape[d]; c.pd[c.np] = dstride[d]; c.ps[c.np++] = sstride[d]; c.pn *= shape[d]; }
    }
    LDM__CU_RUN(ctx, c.pn, ldm__k_scopy, dst, src, c, accumulate);
}

/* ---- SGEMM: row-major C = alpha op(A) op(B) + beta C is column-major C^T = op(B)^T op(A)^T,
   so cuBLAS gets the operands swapped with the same transpose flags. ---- */
static __global__ void ldm__k_scale_rows(float *C, int64_t M, int64_t N, int64_t ldc, float beta) {
    LDM__CU_FOR(i, M * N) { float *p = C + (i / N) * ldc + i % N; *p = beta == 0.0f ? 0.0f : beta * *p; }
}
static void ldm__cu_sgemm(ldm_ctx *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                          int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { LDM__CU_RUN(ctx, M * N, ldm__k_scale_rows, C, M, N, ldc, beta); return; }
    if (M > INT_MAX || N > INT_MAX || K > INT_MAX || lda > INT_MAX || ldb > INT_MAX || ldc > INT_MAX) {
        ldm_ctx_seterr(ctx, LDM_ERR_UNSUPPORTED, "cuda sgemm: size %lldx%lldx%lld exceeds cuBLAS's 32-bit dimensions (hint: split the batch)",
                       (long long)M, (long long)N, (long long)K);
        return;
    }
    LDM__CUBLAS(ctx, cublasSgemm(ldm__cu_st(ctx)->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                 (int)N, (int)M, (int)K, &alpha, B, (int)ldb, A, (int)lda, &beta, C, (int)ldc));
}

/* ---- convolution: im2col / col2im over chunks of output positions + cuBLAS, like the CPU ---- */
static __global__ void ldm__k_im2col(float *col, const float *img, ldm_conv_desc d, int64_t n0, int64_t m, int64_t K) {
    int64_t khw = (int64_t)d.kh * d.kw, kk = khw * d.kt;
    LDM__CU_FOR(i, K * m) {
        int64_t k = i / m, n = n0 + i % m;
        int64_t c = k / kk, r = k % kk, ft = r / khw, fy = (r % khw) / d.kw, fx = r % d.kw;
        int64_t ox = n % d.OW, oy = (n / d.OW) % d.OH, ot = n / (d.OW * d.OH);
        int64_t t = ot * d.st - d.pad[0] + ft, y = oy * d.sh - d.pad[2] + fy, x = ox * d.sw - d.pad[4] + fx;
        col[i] = (t >= 0 && t < d.T && y >= 0 && y < d.H && x >= 0 && x < d.W) ? img[((c * d.T + t) * d.H + y) * d.W + x] : 0.0f;
    }
}
/* Gather form: one thread per image element sums the column entries of this chunk that came
   from it (no write races, fixed order). */
static __device__ void ldm__cu_cover(int64_t p, int pad, int k, int s, int64_t O, int64_t *lo, int64_t *hi) {
    int64_t a = p + pad - k + 1, b = p + pad; /* o*s in [a, b] */
    *lo = a <= 0 ? 0 : (a + s - 1) / s;
    *hi = b < 0 ? -1 : LDM__MIN(b / s, O - 1);
}
static __global__ void ldm__k_col2im(float *img, const float *col, ldm_conv_desc d, int64_t n0, int64_t m) {
    int64_t khw = (int64_t)d.kh * d.kw, kk = khw * d.kt, IS = d.T * d.H * d.W;
    LDM__CU_FOR(i, d.C * IS) {
        int64_t c = i / IS, x = i % d.W, y = (i / d.W) % d.H, t = (i / (d.W * d.H)) % d.T;
        int64_t t0, t1, y0, y1, x0, x1;
        ldm__cu_cover(t, d.pad[0], d.kt, d.st, d.OT, &t0, &t1);
        ldm__cu_cover(y, d.pad[2], d.kh, d.sh, d.OH, &y0, &y1);
        ldm__cu_cover(x, d.pad[4], d.kw, d.sw, d.OW, &x0, &x1);
        float s = 0.0f;
        for (int64_t ot = t0; ot <= t1; ot++)
            for (int64_t oy = y0; oy <= y1; oy++)
                for (int64_t ox = x0; ox <= x1; ox++) {
                    int64_t n = (ot * d.OH + oy) * d.OW + ox;
                    if (n < n0 || n >= n0 + m) continue;
                    int64_t ft = t + d.pad[0] - ot * d.st, fy = y + d.pad[2] - oy * d.sh, fx = x + d.pad[4] - ox * d.sw;
                    s += col[(c * kk + (ft * d.kh + fy) * d.kw + fx) * m + (n - n0)];
                }
        img[i] += s;
    }
}
static __global__ void ldm__k_bias_fill(float *out, const float *bias, int64_t O, int64_t OS, int64_t n) {
    LDM__CU_FOR(i, n) out[i] = bias[(i / OS) % O];
}
static int ldm__cu_conv_pointwise(const ldm_conv_desc *d) {
    int p = 0;
    for (int i = 0; i < 6; i++) p |= d->pad[i];
    return d->kt == 1 && d->kh == 1 && d->kw == 1 && d->st == 1 && d->sh == 1 && d->sw == 1 && !p;
}
static int64_t ldm__cu_conv_chunk(const ldm_conv_desc *d, int64_t K) {
    int64_t OS = d->OT * d->OH * d->OW, nc = ((int64_t)16 << 20) / LDM__MAX(K, 1); /* ~64 MiB of columns */
    return LDM__MIN(LDM__MAX(nc, 256), OS);
}
static void ldm__cu_conv_forward(ldm_ctx *ctx, float *out, const float *inp, const float *w, const float *bias, const ldm_conv_desc *d) {
    int64_t K = d->C * d->kt * d->kh * d->kw, IS = d->T * d->H * d->W, OS = d->OT * d->OH * d->OW;
    int pw = ldm__cu_conv_pointwise(d);
    int64_t nc = pw ? OS : ldm__cu_conv_chunk(d, K);
    size_t used0 = ctx->arena[LDM_GPU].used;
    float *col = pw ? NULL : (float *)ldm_arena_alloc(ctx, LDM_GPU, sizeof(float) * (size_t)(K * nc));
    if (!pw && !col) return;
    if (bias) LDM__CU_RUN(ctx, d->B * d->O * OS, ldm__k_bias_fill, out, bias, d->O, OS, d->B * d->O * OS);
    for (int64_t b = 0; b < d->B && !ctx->status; b++) {
        float *ob = out + b * d->O * OS;
        for (int64_t n0 = 0; n0 < OS; n0 += nc) {
            int64_t m = LDM__MIN(nc, OS - n0);
            if (pw) ldm__cu_sgemm(ctx, 0, 0, d->O, m, K, 1.0f, w, K, inp + b * d->C * IS + n0, IS, bias ? 1.0f : 0.0f, ob + n0, OS);
            else {
                LDM__CU_RUN(ctx, K * m, ldm__k_im2col, col, inp + b * d->C * IS, *d, n0, m, K);
                ldm__cu_sgemm(ctx, 0, 0, d->O, m, K, 1.0f, w, K, col, m, bias ? 1.0f : 0.0f, ob + n0, OS);
            }
        }
    }
    ctx->arena[LDM_GPU].used = used0; /* the stream orders later users of this memory after the GEMMs */
}
static void ldm__cu_conv_backward(ldm_ctx *ctx, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                                  const float *w, const ldm_conv_desc *d) {
    int64_t K = d->C * d->kt * d->kh * d->kw, IS = d->T * d->H * d->W, OS = d->OT * d->OH * d->OW;
    if (db) { /* sum over batch and positions: [1, 1, B, O, OS] -> [O] */
        int64_t shape[5] = {1, 1, d->B, d->O, OS}, ost[5] = {0, 0, 0, 1, 0};
        ldm__cu_reduce_sum(ctx, db, dout, shape, ost, 1);
    }
    if (!dinp && !dw) return;
    int pw = ldm__cu_conv_pointwise(d);
    int64_t nc = pw ? OS : ldm__cu_conv_chunk(d, K);
    size_t used0 = ctx->arena[LDM_GPU].used;
    float *col = pw ? NULL : (float *)ldm_arena_alloc(ctx, LDM_GPU, sizeof(float) * (size_t)(K * nc));
    if (!pw && !col) return;
    for (int64_t b = 0; b < d->B && !ctx->status; b++) {
        const float *gb = dout + b * d->O * OS, *xb = inp + b * d->C * IS;
        float *dxb = dinp ? dinp + b * d->C * IS : NULL;
        if (pw) {
            if (dw) ldm__cu_sgemm(ctx, 0, 1, d->O, K, OS, 1.0f, gb, OS, xb, IS, 1.0f, dw, K);
            if (dxb) ldm__cu_sgemm(ctx, 1, 0, K, OS, d->O, 1.0f, w, K, gb, OS, 1.0f, dxb, IS);
            continue;
        }
        for (int64_t n0 = 0; n0 < OS; n0 += nc) {
            int64_t m = LDM__MIN(nc, OS - n0);
            if (dw) {
                LDM__CU_RUN(ctx, K * m, ldm__k_im2col, col, xb, *d, n0, m, K);
                ldm__cu_sgemm(ctx, 0, 1, d->O, K, m, 1.0f, gb + n0, OS, col, m, 1.0f, dw, K);
            }
            if (dxb) {
                ldm__cu_sgemm(ctx, 1, 0, K, m, d->O, 1.0f, w, K, gb + n0, OS, 0.0f, col, m);
                LDM__CU_RUN(ctx, d->C * IS, ldm__k_col2im, dxb, col, *d, n0, m);
            }
        }
    }
    ctx->arena[LDM_GPU].used = used0;
}

/* ---- group norm: one block per (b, g); statistics in double ----
   silu: the output is silu(z) for z the normalised value, written in the same pass; the
   backward recomputes z per element (same operations as the forward) and uses dy * silu'(z). */
static __device__ float ldm__cu_gn_z(float x, float mf, float r, const float *w, const float *b, int64_t c) {
    float sc = __fmul_rn(r, w ? w[c] : 1.0f), shf = __fsub_rn(b ? b[c] : 0.0f, __fmul_rn(mf, sc));
    return __fadd_rn(__fmul_rn(x, sc), shf);
}
static __global__ void ldm__k_gn_fwd(float *out, float *mean, float *rstd, const float *inp, const float *w, const float *b,
                                     int64_t C, int64_t S, int G, float eps, int silu) {
    __shared__ double sh[33];
    int64_t i = blockIdx.x, cg = C / G, n = cg * S, c0 = (i % G) * cg;
    const float *x = inp + i * n;
    double s = 0.0, ss = 0.0;
    for (int64_t k = threadIdx.x; k < n; k += blockDim.x) { double v = x[k]; s += v; ss += v * v; }
    s = ldm__cu_block_sum(s, sh);
    ss = ldm__cu_block_sum(ss, sh);
    double m = s / (double)n, var = ss / (double)n - m * m;
    if (var < 0.0) var = 0.0;
    float mf = (float)m, r = (float)(1.0 / sqrt(var + (double)eps));
    if (threadIdx.x == 0) { mean[i] = mf; rstd[i] = r; }
    float *y = out + i * n;
    for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
        float z = ldm__cu_gn_z(x[k], mf, r, w, b, c0 + k / S);
        y[k] = silu ? z / (1.0f + expf(-z)) : z; /* LDM__U_SILU's expression */
    }
}
static __global__ void ldm__k_gn_bwd(float *dinp, double *dwp, double *dbp, const float *dout, const float *inp, const float *w,
                                     const float *b, const float *mean, const float *rstd, int64_t C, int64_t S, int G, int silu) {
    __shared__ double sh[33];
    int64_t i = blockIdx.x, cg = C / G, n = cg * S, c0 = (i % G) * cg, bi = i / G;
    const float *x = inp + i * n, *dy = dout + i * n;
    float m = mean[i], r = rstd[i];
    double sdy = 0.0, sdyx = 0.0;
    for (int64_t c = 0; c < cg; c++) {
        double a = 0.0, bs = 0.0;
        for (int64_t k = threadIdx.x; k < S; k += blockDim.x) {
            float xh = (x[c * S + k] - m) * r, g = dy[c * S + k];
            if (silu) g = g * ldm__cu_dsilu(ldm__cu_gn_z(x[c * S + k], m, r, w, b, c0 + c));
            a += (double)g * xh;
            bs += g;
        }
        a = ldm__cu_block_sum(a, sh);
        bs = ldm__cu_block_sum(bs, sh);
        if (threadIdx.x == 0) { dwp[bi * C + c0 + c] = a; dbp[bi * C + c0 + c] = bs; }
        float wc = w ? w[c0 + c] : 1.0f;
        sdy += wc * bs;
        sdyx += wc * a;
    }
    if (!dinp) return;
    float mdy = (float)(sdy / (double)n), mdyx = (float)(sdyx / (double)n);
    float *dx = dinp + i * n;
    for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
        int64_t c = c0 + k / S;
        float wc = w ? w[c] : 1.0f, xh = (x[k] - m) * r, g = dy[k];
        if (silu) g = g * ldm__cu_dsilu(ldm__cu_gn_z(x[k], m, r, w, b, c));
        dx[k] += r * (g * wc - mdy - xh * mdyx);
    }
}
/* Per-channel sums of per-(b, c) partials over b, in b order (the CPU's order). */
static __global__ void ldm__k_sum_over_b(float *dw, float *db, const double *dwp, const double *dbp, int64_t B, int64_t C) {
    LDM__CU_FOR(c, C) {
        double a = 0.0, bb = 0.0;
        for (int64_t b = 0; b < B; b++) { a += dwp[b * C + c]; bb += dbp[b * C + c]; }
        if (dw) dw[c] = __fadd_rn(dw[c], (float)a);
        if (db) db[c] = __fadd_rn(db[c], (float)bb);
    }
}
static void ldm__cu_groupnorm_forward(ldm_ctx *ctx, float *out, float *mean, float *rstd, const float *inp, const float *w,
                                      const float *b, int64_t B, int64_t C, int64_t S, int G, float eps, int silu) {
    if (B * G <= 0) return;
    LDM__CU_LAUNCH(ldm__k_gn_fwd, (unsigned)(B * G), LDM__CU_T, ldm__cu_st(ctx)->stream, out, mean, rstd, inp, w, b, C, S, G, eps, silu);
    LDM__CU_LAUNCHED(ctx);
}
static void ldm__cu_groupnorm_backward(ldm_ctx *ctx, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                                       const float *w, const float *b, const float *mean, const float *rstd, int64_t B, int64_t C,
                                       int64_t S, int G, int silu) {
    if (B * G <= 0) return;
    size_t used0 = ctx->arena[LDM_GPU].used;
    double *part = (double *)ldm_arena_alloc(ctx, LDM_GPU, sizeof(double) * (size_t)(2 * B * C));
    if (!part) return;
    LDM__CU_LAUNCH(ldm__k_gn_bwd, (unsigned)(B * G), LDM__CU_T, ldm__cu_st(ctx)->stream, dinp, part, part + B * C, dout, inp, w, b, mean, rstd, C, S, G, silu);
    if (!LDM__CU_LAUNCHED(ctx) && (dw || db)) LDM__CU_RUN(ctx, C, ldm__k_sum_over_b, dw, db, part, part + B * C, B, C);
    ctx->arena[LDM_GPU].used = used0;
}

/* ---- batch norm: one block per channel ---- */
static __global__ void ldm__k_bn_stats(float *mean, float *var, const float *x, int64_t B, int64_t C, int64_t S) {
    __shared__ double sh[33];
    int64_t c = blockIdx.x, n = B * S;
    double s = 0.0, ss = 0.0;
    for (int64_t q = threadIdx.x; q < n; q += blockDim.x) { double v = x[((q / S) * C + c) * S + q % S]; s += v; ss += v * v; }
    s = ldm__cu_block_sum(s, sh);
    ss = ldm__cu_block_sum(ss, sh);
    if (threadIdx.x == 0) {
        double m = s / (double)n, v = ss / (double)n - m * m;
        mean[c] = (float)m;
        var[c] = (float)(v < 0.0 ? 0.0 : v);
    }
}
static __global__ void ldm__k_bn_affine(float *out, const float *x, const float *mean, const float *rstd, const float *w,
                                        const float *b, int64_t C, int64_t S, int64_t n) {
    LDM__CU_FOR(i, n) {
        int64_t c = (i / S) % C;
        float sc = __fmul_rn(rstd[c], w ? w[c] : 1.0f), shf = __fsub_rn(b ? b[c] : 0.0f, __fmul_rn(mean[c], sc));
        out[i] = __fadd_rn(__fmul_rn(x[i], sc), shf);
    }
}
static __global__ void ldm__k_bn_bwd(float *dinp, float *dw, float *db, const float *dout, const float *x, const float *w,
                                     const float *mean, const float *rstd, int64_t B, int64_t C, int64_t S, int training) {
    __shared__ double sh[33];
    int64_t c = blockIdx.x, n = B * S;
    float m = mean[c], r = rstd[c], wc = w ? w[c] : 1.0f;
    double sdy = 0.0, sdyx = 0.0;
    for (int64_t q = threadIdx.x; q < n; q += blockDim.x) {
        int64_t o = ((q / S) * C + c) * S + q % S;
        float g = dout[o];
        sdy += g;
        sdyx += (double)g * ((x[o] - m) * r);
    }
    sdy = ldm__cu_block_sum(sdy, sh);
    sdyx = ldm__cu_block_sum(sdyx, sh);
    if (threadIdx.x == 0) {
        if (dw) dw[c] += (float)sdyx;
        if (db) db[c] += (float)sdy;
    }
    if (!dinp) return;
    float mdy = training ? (float)(sdy / (double)n) : 0.0f, mdyx = training ? (float)(sdyx / (double)n) : 0.0f;
    for (int64_t q = threadIdx.x; q < n; q += blockDim.x) {
        int64_t o = ((q / S) * C + c) * S + q % S;
        dinp[o] += wc * r * (dout[o] - mdy - (x[o] - m) * r * mdyx);
    }
}
static void ldm__cu_channel_stats(ldm_ctx *ctx, float *mean, float *var, const float *x, int64_t B, int64_t C, int64_t S) {
    if (C <= 0) return;
    LDM__CU_LAUNCH(ldm__k_bn_stats, (unsigned)C, LDM__CU_T, ldm__cu_st(ctx)->stream, mean, var, x, B, C, S);
    LDM__CU_LAUNCHED(ctx);
}
static void ldm__cu_channel_affine(ldm_ctx *ctx, float *out, const float *x, const float *mean, const float *rstd, const float *w,
                                   const float *b, int64_t B, int64_t C, int64_t S) {
    LDM__CU_RUN(ctx, B * C * S, ldm__k_bn_affine, out, x, mean, rstd, w, b, C, S, B * C * S);
}
static void ldm__cu_batchnorm_backward(ldm_ctx *ctx, float *dinp, float *dw, float *db, const float *dout, const float *x,
                                       const float *w, const float *mean, const float *rstd, int64_t B, int64_t C, int64_t S, int training) {
    if (C <= 0) return;
    LDM__CU_LAUNCH(ldm__k_bn_bwd, (unsigned)C, LDM__CU_T, ldm__cu_st(ctx)->stream, dinp, dw, db, dout, x, w, mean, rstd, B, C, S, training);
    LDM__CU_LAUNCHED(ctx);
}

/* ---- layer norm: one warp per row; weight/bias gradients one thread per column ---- */
#define LDM__CU_ROWS_PER_BLOCK (LDM__CU_T / 32)
static __global__ void ldm__k_ln_fwd(float *out, float *mean, float *rstd, const float *xx, const float *w, const float *b,
                                     int64_t R, int64_t N, float eps) {
    int lane = threadIdx.x & 31;
    for (int64_t r = (int64_t)blockIdx.x * LDM__CU_ROWS_PER_BLOCK + (threadIdx.x >> 5); r < R; r += (int64_t)gridDim.x * LDM__CU_ROWS_PER_BLOCK) {
        const float *x = xx + r * N;
        double s = 0.0, ss = 0.0;
        for (int64_t k = lane; k < N; k += 32) { double v = x[k]; s += v; ss += v * v; }
        s = ldm__cu_warp_sum(s);
        ss = ldm__cu_warp_sum(ss);
        double m = s / (double)N, v = ss / (double)N - m * m;
        float mf = (float)m, rs = (float)(1.0 / sqrt((v < 0.0 ? 0.0 : v) + (double)eps));
        if (lane == 0) { mean[r] = mf; rstd[r] = rs; }
        float *y = out + r * N;
        for (int64_t k = lane; k < N; k += 32)
            y[k] = __fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(x[k], mf), rs), w ? w[k] : 1.0f), b ? b[k] : 0.0f);
    }
}
static __global__ void ldm__k_ln_bwd(float *dx, const float *dyy, const float *xx, const float *w, const float *mean, const float *rstd,
                                     int64_t R, int64_t N) {
    int lane = threadIdx.x & 31;
    for (int64_t r = (int64_t)blockIdx.x * LDM__CU_ROWS_PER_BLOCK + (threadIdx.x >> 5); r < R; r += (int64_t)gridDim.x * LDM__CU_ROWS_PER_BLOCK) {
        const float *x = xx + r * N, *dy = dyy + r * N;
        float m = mean[r], rs = rstd[r];
        double sg = 0.0, sgx = 0.0;
        for (int64_t k = lane; k < N; k += 32) {
            float g = dy[k] * (w ? w[k] : 1.0f), xh = (x[k] - m) * rs;
            sg += g;
            sgx += (double)g * xh;
        }
        sg = ldm__cu_warp_sum(sg);
        sgx = ldm__cu_warp_sum(sgx);
        float mg = (float)(sg / (double)N), mgx = (float)(sgx / (double)N);
        float *d = dx + r * N;
        for (int64_t k = lane; k < N; k += 32) {
            float g = dy[k] * (w ? w[k] : 1.0f), xh = (x[k] - m) * rs;
            d[k] += rs * (g - mg - xh * mgx);
        }
    }
}
static __global__ void ldm__k_ln_wgrad(float *dw, float *db, const float *dy, const float *x, const float *mean, const float *rstd,
                                       int64_t R, int64_t N) {
    LDM__CU_FOR(k, N) { /* rows in order, in double: the CPU's order */
        double a = 0.0, bb = 0.0;
        for (int64_t r = 0; r < R; r++) {
            float g = dy[r * N + k];
            a += (double)g * ((x[r * N + k] - mean[r]) * rstd[r]);
            bb += g;
        }
        if (dw) dw[k] = __fadd_rn(dw[k], (float)a);
        if (db) db[k] = __fadd_rn(db[k], (float)bb);
    }
}
static unsigned ldm__cu_row_blocks(int64_t R) {
    int64_t b = (R + LDM__CU_ROWS_PER_BLOCK - 1) / LDM__CU_ROWS_PER_BLOCK;
    return (unsigned)LDM__MAX(1, LDM__MIN(b, 65536 * 16));
}
static void ldm__cu_layernorm_forward(ldm_ctx *ctx, float *out, float *mean, float *rstd, const float *x, const float *w,
                                      const float *b, int64_t R, int64_t N, float eps) {
    if (R <= 0) return;
    LDM__CU_LAUNCH(ldm__k_ln_fwd, ldm__cu_row_blocks(R), LDM__CU_T, ldm__cu_st(ctx)->stream, out, mean, rstd, x, w, b, R, N, eps);
    LDM__CU_LAUNCHED(ctx);
}
static void ldm__cu_layernorm_backward(ldm_ctx *ctx, float *dx, float *dw, float *db, const float *dy, const float *x,
                                       const float *w, const float *mean, const float *rstd, int64_t R, int64_t N) {
    if (R <= 0) return;
    if (dx) {
        LDM__CU_LAUNCH(ldm__k_ln_bwd, ldm__cu_row_blocks(R), LDM__CU_T, ldm__cu_st(ctx)->stream, dx, dy, x, w, mean, rstd, R, N);
        LDM__CU_LAUNCHED(ctx);
    }
    if (dw || db) LDM__CU_RUN(ctx, N, ldm__k_ln_wgrad, dw, db, dy, x, mean, rstd, R, N);
}

/* ---- softmax over D of (outer, D, inner): a warp per row when inner == 1, else a thread per
   (outer, inner) pair (adjacent threads read adjacent memory) ---- */
static __device__ float ldm__cu_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) { float u = __shfl_xor_sync(0xffffffffu, v, o); v = u > v ? u : v; }
    return v;
}
static __global__ void ldm__k_sm_fwd_rows(float *yy, const float *xx, int64_t R, int64_t D) {
    int lane = threadIdx.x & 31;
    for (int64_t r = (int64_t)blockIdx.x * LDM__CU_ROWS_PER_BLOCK + (threadIdx.x >> 5); r < R; r += (int64_t)gridDim.x * LDM__CU_ROWS_PER_BLOCK) {
        const float *x = xx + r * D;
        float *y = yy + r * D, mx = -INFINITY;
        for (int64_t d = lane; d < D; d += 32) mx = x[d] > mx ? x[d] : mx;
        mx = ldm__cu_warp_max(mx);
        double s = 0.0;
        for (int64_t d = lane; d < D; d += 32) { float e = expf(x[d] - mx); y[d] = e; s += e; }
        float inv = (float)(1.0 / ldm__cu_warp_sum(s));
        for (int64_t d = lane; d < D; d += 32) y[d] *= inv;
    }
}
static __global__ void ldm__k_sm_bwd_rows(float *dxx, const float *dyy, const float *yy, int64_t R, int64_t D) {
    int lane = threadIdx.x & 31;
    for (int64_t r = (int64_t)blockIdx.x * LDM__CU_ROWS_PER_BLOCK + (threadIdx.x >> 5); r < R; r += (int64_t)gridDim.x * LDM__CU_ROWS_PER_BLOCK) {
        const float *y = yy + r * D, *dy = dyy + r * D;
        float *dx = dxx + r * D;
        double s = 0.0;
        for (int64_t d = lane; d < D; d += 32) s += (double)dy[d] * y[d];
        float sf = (float)ldm__cu_warp_sum(s);
        for (int64_t d = lane; d < D; d += 32) dx[d] += y[d] * (dy[d] - sf);
    }
}
static __global__ void ldm__k_sm_fwd_cols(float *yy, const float *xx, int64_t outer, int64_t D, int64_t in) {
    LDM__CU_FOR(p, outer * in) {
        int64_t base = (p / in) * D * in + p % in;
        const float *x = xx + base;
        float *y = yy + base, mx = -INFINITY;
        for (int64_t d = 0; d < D; d++) mx = x[d * in] > mx ? x[d * in] : mx;
        double s = 0.0;
        for (int64_t d = 0; d < D; d++) { float e = expf(x[d * in] - mx); y[d * in] = e; s += e; }
        float inv = (float)(1.0 / s);
        for (int64_t d = 0; d < D; d++) y[d * in] *= inv;
    }
}
static __global__ void ldm__k_sm_bwd_cols(float *dxx, const float *dyy, const float *yy, int64_t outer, int64_t D, int64_t in) {
    LDM__CU_FOR(p, outer * in) {
        int64_t base = (p / in) * D * in + p % in;
        const float *y = yy + base, *dy = dyy + base;
        float *dx = dxx + base;
        double s = 0.0;
        for (int64_t d = 0; d < D; d++) s += (double)dy[d * in] * y[d * in];
        float sf = (float)s;
        for (int64_t d = 0; d < D; d++) dx[d * in] += y[d * in] * (dy[d * in] - sf);
    }
}
static void ldm__cu_softmax_forward(ldm_ctx *ctx, float *y, const float *x, int64_t outer, int64_t D, int64_t inner) {
    if (outer * inner <= 0 || D <= 0) return;
    if (inner == 1) {
        LDM__CU_LAUNCH(ldm__k_sm_fwd_rows, ldm__cu_row_blocks(outer), LDM__CU_T, ldm__cu_st(ctx)->stream, y, x, outer, D);
        LDM__CU_LAUNCHED(ctx);
    } else LDM__CU_RUN(ctx, outer * inner, ldm__k_sm_fwd_cols, y, x, outer, D, inner);
}
static void ldm__cu_softmax_backward(ldm_ctx *ctx, float *dx, const float *dy, const float *y, int64_t outer, int64_t D, int64_t inner) {
    if (outer * inner <= 0 || D <= 0) return;
    if (inner == 1) {
        LDM__CU_LAUNCH(ldm__k_sm_bwd_rows, ldm__cu_row_blocks(outer), LDM__CU_T, ldm__cu_st(ctx)->stream, dx, dy, y, outer, D);
        LDM__CU_LAUNCHED(ctx);
    } else LDM__CU_RUN(ctx, outer * inner, ldm__k_sm_bwd_cols, dx, dy, y, outer, D, inner);
}

/* ---- pooling and upsampling on [P, T, H, W] planes ---- */
typedef struct { int64_t in[3], out[3]; int k[3], s[3], p[3]; } ldm__cu_pool;
static __global__ void ldm__k_pool_fwd(float *out, int32_t *arg, const float *xx, int64_t P, ldm__cu_pool g, int is_max) {
    int64_t isz = g.in[0] * g.in[1] * g.in[2], osz = g.out[0] * g.out[1] * g.out[2];
    float inv = 1.0f / (float)(g.k[0] * g.k[1] * g.k[2]);
    LDM__CU_FOR(i, P * osz) {
        int64_t p = i / osz, o = i % osz;
        int64_t ot = o / (g.out[1] * g.out[2]), oy = (o / g.out[2]) % g.out[1], ox = o % g.out[2];
        const float *x = xx + p * isz;
        float best = -INFINITY;
        int32_t bi = -1;
        double s = 0.0;
        for (int a = 0; a < g.k[0]; a++) {
            int64_t t = ot * g.s[0] - g.p[0] + a;
            if (t < 0 || t >= g.in[0]) continue;
            for (int b = 0; b < g.k[1]; b++) {
                int64_t y = oy * g.s[1] - g.p[1] + b;
                if (y < 0 || y >= g.in[1]) continue;
                for (int c = 0; c < g.k[2]; c++) {
                    int64_t xc = ox * g.s[2] - g.p[2] + c;
                    if (xc < 0 || xc >= g.in[2]) continue;
                    int64_t idx = (t * g.in[1] + y) * g.in[2] + xc;
                    float v = x[idx];
                    s += v;
                    if (v > best || bi < 0 || v != v) { best = v; bi = (int32_t)idx; }
                }
            }
        }
        out[i] = is_max ? best : __fmul_rn((float)s, inv);
        if (is_max) arg[i] = bi; /* an int32 in the float buffer, as the CPU stores it */
    }
}
/* Gather form: an input element visits the outputs whose window covers it in increasing order,
   which is the order the CPU's scatter adds them in. */
static __global__ void ldm__k_pool_bwd(float *dxx, const float *dyy, const int32_t *arg, int64_t P, ldm__cu_pool g, int is_max) {
    int64_t isz = g.in[0] * g.in[1] * g.in[2], osz = g.out[0] * g.out[1] * g.out[2];
    float inv = 1.0f / (float)(g.k[0] * g.k[1] * g.k[2]);
    LDM__CU_FOR(i, P * isz) {
        int64_t p = i / isz, q = i % isz;
        int64_t t = q / (g.in[1] * g.in[2]), y = (q / g.in[2]) % g.in[1], x = q % g.in[2];
        int64_t t0, t1, y0, y1, x0, x1;
        ldm__cu_cover(t, g.p[0], g.k[0], g.s[0], g.out[0], &t0, &t1);
        ldm__cu_cover(y, g.p[1], g.k[1], g.s[1], g.out[1], &y0, &y1);
        ldm__cu_cover(x, g.p[2], g.k[2], g.s[2], g.out[2], &x0, &x1);
        const float *dy = dyy + p * osz;
        const int32_t *ag = arg ? arg + p * osz : NULL;
        float acc = dxx[i];
        for (int64_t ot = t0; ot <= t1; ot++)
            for (int64_t oy = y0; oy <= y1; oy++)
                for (int64_t ox = x0; ox <= x1; ox++) {
                    int64_t o = (ot * g.out[1] + oy) * g.out[2] + ox;
                    if (is_max) { if (ag[o] == (int32_t)q) acc = __fadd_rn(acc, dy[o]); }
                    else acc = __fadd_rn(acc, __fmul_rn(dy[o], inv));
                }
        dxx[i] = acc;
    }
}
static ldm__cu_pool ldm__cu_pool_make(const int64_t *in3, const int64_t *out3, const int *k3, const int *s3, const int *p3) {
    ldm__cu_pool g;
    for (int i = 0; i < 3; i++) { g.in[i] = in3[i]; g.out[i] = out3[i]; g.k[i] = k3[i]; g.s[i] = s3[i]; g.p[i] = p3[i]; }
    return g;
}
static void ldm__cu_pool_forward(ldm_ctx *ctx, float *out, float *arg, const float *x, int64_t P, const int64_t *in3,
                                 const int64_t *out3, const int *k3, const int *s3, const int *p3, int is_max) {
    LDM__CU_RUN(ctx, P * out3[0] * out3[1] * out3[2], ldm__k_pool_fwd, out, (int32_t *)(void *)arg, x, P,
                ldm__cu_pool_make(in3, out3, k3, s3, p3), is_max);
}
static void ldm__cu_pool_backward(ldm_ctx *ctx, float *dx, const float *dy, const float *arg, int64_t P, const int64_t *in3,
                                  const int64_t *out3, const int *k3, const int *s3, const int *p3, int is_max) {
    LDM__CU_RUN(ctx, P * in3[0] * in3[1] * in3[2], ldm__k_pool_bwd, dx, dy, is_max ? (const int32_t *)(const void *)arg : NULL, P,
                ldm__cu_pool_make(in3, out3, k3, s3, p3), is_max);
}
typedef struct { int64_t in[3]; int f[3]; } ldm__cu_up;
static __global__ void ldm__k_up_fwd(float *out, const float *x, int64_t P, ldm__cu_up g) {
    int64_t OT = g.in[0] * g.f[0], OH = g.in[1] * g.f[1], OW = g.in[2] * g.f[2];
    LDM__CU_FOR(i, P * OT * OH * OW) {
        int64_t ox = i % OW, oy = (i / OW) % OH, ot = (i / (OW * OH)) % OT, p = i / (OW * OH * OT);
        out[i] = x[((p * g.in[0] + ot / g.f[0]) * g.in[1] + oy / g.f[1]) * g.in[2] + ox / g.f[2]];
    }
}
static __global__ void ldm__k_up_bwd(float *dx, const float *dy, int64_t P, ldm__cu_up g) {
    int64_t OT = g.in[0] * g.f[0], OH = g.in[1] * g.f[1], OW = g.in[2] * g.f[2];
    LDM__CU_FOR(i, P * g.in[0] * g.in[1] * g.in[2]) {
        int64_t xx = i % g.in[2], y = (i / g.in[2]) % g.in[1], t = (i / (g.in[2] * g.in[1])) % g.in[0], p = i / (g.in[2] * g.in[1] * g.in[0]);
        const float *base = dy + ((p * OT + t * g.f[0]) * OH + y * g.f[1]) * OW + xx * g.f[2];
        float s = 0.0f;
        for (int a = 0; a < g.f[0]; a++)
            for (int b = 0; b < g.f[1]; b++)
                for (int c = 0; c < g.f[2]; c++) s = __fadd_rn(s, base[((int64_t)a * OH + b) * OW + c]);
        dx[i] = __fadd_rn(dx[i], s);
    }
}
static void ldm__cu_upsample_forward(ldm_ctx *ctx, float *out, const float *x, int64_t P, const int64_t *in3, const int *f3) {
    ldm__cu_up g;
    for (int i = 0; i < 3; i++) { g.in[i] = in3[i]; g.f[i] = f3[i]; }
    LDM__CU_RUN(ctx, P * in3[0] * f3[0] * in3[1] * f3[1] * in3[2] * f3[2], ldm__k_up_fwd, out, x, P, g);
}
static void ldm__cu_upsample_backward(ldm_ctx *ctx, float *dx, const float *dy, int64_t P, const int64_t *in3, const int *f3) {
    ldm__cu_up g;
    for (int i = 0; i < 3; i++) { g.in[i] = in3[i]; g.f[i] = f3[i]; }
    LDM__CU_RUN(ctx, P * in3[0] * in3[1] * in3[2], ldm__k_up_bwd, dx, dy, P, g);
}

/* ---- embedding (idx in device memory). Backward: the first position holding an index owns its
   weight row and adds every position's gradient for it in position order (the CPU's order);
   O(n^2) index comparisons, fine for token sequences. ---- */
static __global__ void ldm__k_emb_fwd(float *out, const float *w, const int64_t *idx, int64_t n, int64_t dim) {
    LDM__CU_FOR(i, n * dim) out[i] = w[idx[i / dim] * dim + i % dim];
}
static __global__ void ldm__k_emb_bwd(float *dw, const float *dout, const int64_t *idx, int64_t n, int64_t dim) {
    LDM__CU_FOR(i, n * dim) {
        int64_t pos = i / dim, k = i % dim, v = idx[pos], j;
        for (j = 0; j < pos && idx[j] != v; j++) {}
        if (j < pos) continue; /* an earlier position owns this row */
        float acc = dw[v * dim + k];
        for (j = pos; j < n; j++) if (idx[j] == v) acc = __fadd_rn(acc, dout[j * dim + k]);
        dw[v * dim + k] = acc;
    }
}
static void ldm__cu_embedding_forward(ldm_ctx *ctx, float *out, const float *w, const int64_t *idx, int64_t n, int64_t dim) {
    LDM__CU_RUN(ctx, n * dim, ldm__k_emb_fwd, out, w, idx, n, dim);
}
static void ldm__cu_embedding_backward(ldm_ctx *ctx, float *dw, const float *dout, const int64_t *idx, int64_t n, int64_t dim) {
    LDM__CU_RUN(ctx, n * dim, ldm__k_emb_bwd, dw, dout, idx, n, dim);
}

/* ---- argmin over rows: a warp per row, lanes scan strided and the warp merges (value, index)
   pairs; the order of the candidates never matters because the merge is a total order (NaN
   first, then the smaller value, then the lower index), so the result is the CPU's exactly ---- */
static __device__ int ldm__cu_argmin_better(float v, int64_t i, float bv, int64_t bi) {
    int vn = v != v, bn = bv != bv;
    if (vn != bn) return vn;
    if (!vn && v != bv) return v < bv;
    return i < bi;
}
static __global__ void ldm__k_argmin_rows(int64_t *idx, const float *xx, int64_t R, int64_t K) {
    int lane = threadIdx.x & 31;
    for (int64_t r = (int64_t)blockIdx.x * LDM__CU_ROWS_PER_BLOCK + (threadIdx.x >> 5); r < R; r += (int64_t)gridDim.x * LDM__CU_ROWS_PER_BLOCK) {
        const float *x = xx + r * K;
        float bv = 0.0f;
        int64_t bi = -1;
        for (int64_t k = lane; k < K; k += 32)
            if (bi < 0 || ldm__cu_argmin_better(x[k], k, bv, bi)) { bv = x[k]; bi = k; }
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (oi >= 0 && (bi < 0 || ldm__cu_argmin_better(ov, oi, bv, bi))) { bv = ov; bi = oi; }
        }
        if (lane == 0) idx[r] = bi;
    }
}
static void ldm__cu_argmin_rows(ldm_ctx *ctx, int64_t *idx, const float *x, int64_t rows, int64_t K) {
    if (rows <= 0 || K <= 0) return;
    LDM__CU_LAUNCH(ldm__k_argmin_rows, ldm__cu_row_blocks(rows), LDM__CU_T, ldm__cu_st(ctx)->stream, idx, x, rows, K);
    LDM__CU_LAUNCHED(ctx);
}

/* ---- optimizer update: the CPU back end's arithmetic (ldm_optim_args), operation for operation ---- */
static __global__ void ldm__k_optim(ldm_optim_args a, float *pp, const float *gg, float *mm, float *vv, int64_t n) {
    LDM__CU_FOR(i, n) {
        float p = pp[i], g = gg[i];
        if (a.sgd) {
            if (a.l2) g = __fadd_rn(g, __fmul_rn(a.wd, p));
            if (mm) {
                float buf = a.first ? g : __fadd_rn(__fmul_rn(mm[i], a.mom), __fmul_rn(a.one_damp, g));
                mm[i] = buf;
                g = a.nesterov ? __fadd_rn(g, __fmul_rn(a.mom, buf)) : buf;
            }
            pp[i] = __fadd_rn(p, __fmul_rn(a.neg_lr, g));
        } else {
            if (a.adamw) p = __fmul_rn(p, a.decay);
            else if (a.l2) g = __fadd_rn(g, __fmul_rn(a.wd, p));
            float m = __fadd_rn(__fmul_rn(mm[i], a.b1), __fmul_rn(a.one_b1, g));
            float v = __fadd_rn(__fmul_rn(vv[i], a.b2), __fmul_rn(__fmul_rn(a.one_b2, g), g));
            float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), a.bc2s), a.eps);
            mm[i] = m;
            vv[i] = v;
            pp[i] = __fadd_rn(p, __fdiv_rn(__fmul_rn(a.neg_step, m), denom));
        }
    }
}
static void ldm__cu_optim_step(ldm_ctx *ctx, const ldm_optim_args *a, float *p, const float *g, float *m, float *v, int64_t n) {
    LDM__CU_RUN(ctx, n, ldm__k_optim, *a, p, g, m, v, n);
}

/* ---- sum of squares in double: fixed partials per block, then one block over them ---- */
static __global__ void ldm__k_sumsq_part(double *part, const float *x, int64_t n) {
    __shared__ double sh[33];
    double s = 0.0;
    LDM__CU_FOR(i, n) { double v = x[i]; s += v * v; }
    s = ldm__cu_block_sum(s, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}
static __global__ void ldm__k_sum_parts(double *out, const double *part, int n) {
    __shared__ double sh[33];
    double s = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += part[i];
    s = ldm__cu_block_sum(s, sh);
    if (threadIdx.x == 0) *out = s;
}
static double ldm__cu_sum_squares(ldm_ctx *ctx, const float *x, int64_t n) {
    ldm__cuda_state *st = ldm__cu_st(ctx);
    double r = 0.0;
    if (n <= 0) return 0.0;
    int nb = (int)LDM__MIN((n + LDM__CU_T * 8 - 1) / (LDM__CU_T * 8), LDM__CU_RED_BLOCKS);
    LDM__CU_LAUNCH(ldm__k_sumsq_part, nb, LDM__CU_T, st->stream, st->scratch, x, n);
    if (LDM__CU_LAUNCHED(ctx)) return 0.0;
    LDM__CU_LAUNCH(ldm__k_sum_parts, 1, LDM__CU_T, st->stream, st->scratch + LDM__CU_RED_BLOCKS, st->scratch, nb);
    if (LDM__CU_LAUNCHED(ctx)) return 0.0;
    if (LDM__CU(ctx, cudaMemcpyAsync(&r, st->scratch + LDM__CU_RED_BLOCKS, sizeof r, cudaMemcpyDeviceToHost, st->stream))) return 0.0;
    if (LDM__CU(ctx, cudaStreamSynchronize(st->stream))) return 0.0;
    return r;
}

/* ---- attention: a block per (query or key tile, batch*head); the scores of one tile pair sit in
   shared memory, operands stream through it in chunks of D, accumulators live in the output
   (or gradient) rows the block owns. Forward: online softmax over key tiles, saving the
   per-row log-sum-exp. Backward (FlashAttention-2): Di = rowsum(dO*O); one kernel per key
   tile adds dK and dV over every query tile, another per query tile adds dQ; each recomputes
   P = exp(S - lse). ---- */
#define LDM__CU_AQ 16         /* query rows per tile */
#define LDM__CU_AK 32         /* key rows per tile */
#define LDM__CU_AC 32         /* D columns per shared chunk */
/* s[r*nc + c] = alpha * dot(a row r, b row c) over D, rows ld apart (all threads call) */
static __device__ void ldm__cu_att_dots(float *s, const float *a, int nr, const float *b, int nc, int64_t ld, int64_t D,
                                        float alpha, float *sha, float *shb) {
    float acc[(LDM__CU_AQ * LDM__CU_AK + LDM__CU_T - 1) / LDM__CU_T];
    const int per = (LDM__CU_AQ * LDM__CU_AK + LDM__CU_T - 1) / LDM__CU_T;
    for (int e = 0; e < per; e++) acc[e] = 0.0f;
    for (int64_t d0 = 0; d0 < D; d0 += LDM__CU_AC) {
        int dc = (int)(D - d0 < LDM__CU_AC ? D - d0 : LDM__CU_AC);
        __syncthreads(); /* the previous chunk's readers are done */
        for (int i = threadIdx.x; i < LDM__CU_AQ * LDM__CU_AC; i += blockDim.x) {
            int r = i / LDM__CU_AC, d = i % LDM__CU_AC;
            sha[i] = r < nr && d < dc ? a[r * ld + d0 + d] : 0.0f;
        }
        for (int i = threadIdx.x; i < LDM__CU_AK * LDM__CU_AC; i += blockDim.x) {
            int c = i / LDM__CU_AC, d = i % LDM__CU_AC;
            shb[i] = c < nc && d < dc ? b[c * ld + d0 + d] : 0.0f;
        }
        __syncthreads();
        for (int e = 0; e < per; e++) {
            int i = threadIdx.x + e * LDM__CU_T, r = i / LDM__CU_AK, c = i % LDM__CU_AK;
            if (i >= LDM__CU_AQ * LDM__CU_AK) break;
            float x = acc[e];
            for (int d = 0; d < dc; d++) x += sha[r * LDM__CU_AC + d] * shb[c * LDM__CU_AC + d];
            acc[e] = x;
        }
    }
    __syncthreads();
    for (int e = 0; e < per; e++) {
        int i = threadIdx.x + e * LDM__CU_T, r = i / LDM__CU_AK, c = i % LDM__CU_AK;
        if (i < LDM__CU_AQ * LDM__CU_AK && r < nr && c < nc) s[r * nc + c] = alpha * acc[e];
    }
    __syncthreads();
}
/* out[x*ldo + d] = out[x*ldo + d] * (rs ? rs[x] : 1) + alpha * sum_y p(x, y) b[y*ld + d] for x < nx,
   with p(x, y) = p[x*ny + y], or p[y*nx + x] when trans; b's rows stream through shared memory
   (all threads call) */
static __device__ void ldm__cu_att_acc(float *out, int64_t ldo, const float *rs, const float *p, int nx, int ny, int trans,
                                       const float *b, int64_t ld, int64_t D, float alpha, float *shb) {
    for (int64_t d0 = 0; d0 < D; d0 += LDM__CU_AC) {
        int dc = (int)(D - d0 < LDM__CU_AC ? D - d0 : LDM__CU_AC);
        __syncthreads();
        for (int i = threadIdx.x; i < LDM__CU_AK * LDM__CU_AC; i += blockDim.x) {
            int y = i / LDM__CU_AC, d = i % LDM__CU_AC;
            shb[i] = y < ny && d < dc ? b[y * ld + d0 + d] : 0.0f;
        }
        __syncthreads();
        for (int i = threadIdx.x; i < nx * dc; i += blockDim.x) {
            int x = i / dc, d = i % dc;
            float a = 0.0f;
            for (int y = 0; y < ny; y++) a += (trans ? p[y * nx + x] : p[x * ny + y]) * shb[y * LDM__CU_AC + d];
            float *o = out + x * ldo + d0 + d;
            *o = (rs ? *o * rs[x] : *o) + alpha * a;
        }
    }
    __syncthreads();
}
static __global__ void ldm__k_attn_fwd(float *out, float *lse, const float *q, const float *k, const float *v, int64_t H,
                                       int64_t Sq, int64_t Sk, int64_t D, float scale) {
    __shared__ float sha[LDM__CU_AQ * LDM__CU_AC], shb[LDM__CU_AK * LDM__CU_AC], s[LDM__CU_AQ * LDM__CU_AK];
    __shared__ float m[LDM__CU_AQ], l[LDM__CU_AQ], corr[LDM__CU_AQ];
    int64_t bh = blockIdx.y, b = bh / H, h = bh % H, i0 = (int64_t)blockIdx.x * LDM__CU_AQ, HD = H * D;
    int nr = (int)(Sq - i0 < LDM__CU_AQ ? Sq - i0 : LDM__CU_AQ);
    const float *qb = q + (b * Sq + i0) * HD + h * D;
    float *ob = out + (b * Sq + i0) * HD + h * D;
    for (int i = threadIdx.x; i < nr * D; i += blockDim.x) ob[(i / D) * HD + i % D] = 0.0f;
    if (threadIdx.x < LDM__CU_AQ) { m[threadIdx.x] = -INFINITY; l[threadIdx.x] = 0.0f; }
    for (int64_t c0 = 0; c0 < Sk; c0 += LDM__CU_AK) {
        int nc = (int)(Sk - c0 < LDM__CU_AK ? Sk - c0 : LDM__CU_AK);
        const float *kb = k + (b * Sk + c0) * HD + h * D, *vb = v + (b * Sk + c0) * HD + h * D;
        ldm__cu_att_dots(s, qb, nr, kb, nc, HD, D, scale, sha, shb);
        if (threadIdx.x < nr) {
            int r = threadIdx.x;
            float mx = m[r], sum = 0.0f;
            for (int c = 0; c < nc; c++) mx = s[r * nc + c] > mx ? s[r * nc + c] : mx;
            for (int c = 0; c < nc; c++) { float e = expf(s[r * nc + c] - mx); s[r * nc + c] = e; sum += e; }
            corr[r] = m[r] == -INFINITY ? 0.0f : expf(m[r] - mx);
            l[r] = l[r] * corr[r] + sum;
            m[r] = mx;
        }
        ldm__cu_att_acc(ob, HD, corr, s, nr, nc, 0, vb, HD, D, 1.0f, shb);
    }
    for (int i = threadIdx.x; i < nr * D; i += blockDim.x) ob[(i / D) * HD + i % D] /= l[i / D];
    if (threadIdx.x < nr) lse[bh * Sq + i0 + threadIdx.x] = m[threadIdx.x] + logf(l[threadIdx.x]);
}
/* Di = rowsum(dO * O) per (b, h, query), n = B*H*Sq rows */
static __global__ void ldm__k_attn_di(float *di, const float *dout, const float *out, int64_t n, int64_t H, int64_t Sq, int64_t D) {
    LDM__CU_FOR(r, n) {
        int64_t bh = r / Sq, i = r % Sq, off = ((bh / H) * Sq + i) * H * D + (bh % H) * D;
        double s = 0.0;
        for (int64_t d = 0; d < D; d++) s += (double)dout[off + d] * out[off + d];
        di[r] = (float)s;
    }
}
/* p = exp(scale * q k^T - lse), dp = p * (dO v^T - Di) for one tile pair (all threads call) */
static __device__ void ldm__cu_att_probs(float *p, float *dp, const float *qb, const float *gob, int nr, const float *kb,
                                         const float *vb, int nc, int64_t HD, int64_t D, float scale, const float *lse,
                                         const float *di, float *sha, float *shb) {
    ldm__cu_att_dots(p, qb, nr, kb, nc, HD, D, scale, sha, shb);
    ldm__cu_att_dots(dp, gob, nr, vb, nc, HD, D, 1.0f, sha, shb);
    for (int i = threadIdx.x; i < nr * nc; i += blockDim.x) {
        int r = i / nc;
        float e = expf(p[i] - lse[r]);
        p[i] = e;
        dp[i] = e * (dp[i] - di[r]);
    }
}
/* dK and dV of one key tile over every query tile; dk and dv may be one buffer (the two
   updates of an element come from the same thread, in order) */
static __global__ void ldm__k_attn_bwd_kv(float *dk, float *dv, const float *dout, const float *lse, const float *di,
                                          const float *q, const float *k, const float *v, int64_t H, int64_t Sq, int64_t Sk,
                                          int64_t D, float scale) {
    __shared__ float sha[LDM__CU_AQ * LDM__CU_AC], shb[LDM__CU_AK * LDM__CU_AC];
    __shared__ float p[LDM__CU_AQ * LDM__CU_AK], dp[LDM__CU_AQ * LDM__CU_AK];
    int64_t bh = blockIdx.y, b = bh / H, h = bh % H, c0 = (int64_t)blockIdx.x * LDM__CU_AK, HD = H * D;
    int nc = (int)(Sk - c0 < LDM__CU_AK ? Sk - c0 : LDM__CU_AK);
    const float *kb = k + (b * Sk + c0) * HD + h * D, *vb = v + (b * Sk + c0) * HD + h * D;
    for (int64_t i0 = 0; i0 < Sq; i0 += LDM__CU_AQ) {
        int nr = (int)(Sq - i0 < LDM__CU_AQ ? Sq - i0 : LDM__CU_AQ);
        const float *qb = q + (b * Sq + i0) * HD + h * D, *gob = dout + (b * Sq + i0) * HD + h * D;
        ldm__cu_att_probs(p, dp, qb, gob, nr, kb, vb, nc, HD, D, scale, lse + bh * Sq + i0, di + bh * Sq + i0, sha, shb);
        if (dv) ldm__cu_att_acc(dv + (b * Sk + c0) * HD + h * D, HD, NULL, p, nc, nr, 1, gob, HD, D, 1.0f, shb);
        if (dk) ldm__cu_att_acc(dk + (b * Sk + c0) * HD + h * D, HD, NULL, dp, nc, nr, 1, qb, HD, D, scale, shb);
    }
}
/* dQ of one query tile over every key tile */
static __global__ void ldm__k_attn_bwd_q(float *dq, const float *dout, const float *lse, const float *di, const float *q,
                                         const float *k, const float *v, int64_t H, int64_t Sq, int64_t Sk, int64_t D, float scale) {
    __shared__ float sha[LDM__CU_AQ * LDM__CU_AC], shb[LDM__CU_AK * LDM__CU_AC];
    __shared__ float p[LDM__CU_AQ * LDM__CU_AK], dp[LDM__CU_AQ * LDM__CU_AK];
    int64_t bh = blockIdx.y, b = bh / H, h = bh % H, i0 = (int64_t)blockIdx.x * LDM__CU_AQ, HD = H * D;
    int nr = (int)(Sq - i0 < LDM__CU_AQ ? Sq - i0 : LDM__CU_AQ);
    const float *qb = q + (b * Sq + i0) * HD + h * D, *gob = dout + (b * Sq + i0) * HD + h * D;
    for (int64_t c0 = 0; c0 < Sk; c0 += LDM__CU_AK) {
        int nc = (int)(Sk - c0 < LDM__CU_AK ? Sk - c0 : LDM__CU_AK);
        const float *kb = k + (b * Sk + c0) * HD + h * D, *vb = v + (b * Sk + c0) * HD + h * D;
        ldm__cu_att_probs(p, dp, qb, gob, nr, kb, vb, nc, HD, D, scale, lse + bh * Sq + i0, di + bh * Sq + i0, sha, shb);
        ldm__cu_att_acc(dq + (b * Sq + i0) * HD + h * D, HD, NULL, dp, nr, nc, 0, kb, HD, D, scale, shb);
    }
}
static void ldm__cu_attn_forward(ldm_ctx *ctx, float *out, float *lse, const float *q, const float *k, const float *v,
                                 int64_t B, int64_t H, int64_t Sq, int64_t Sk, int64_t D, float scale) {
    if (B * H * Sq <= 0) return;
    dim3 grid((unsigned)((Sq + LDM__CU_AQ - 1) / LDM__CU_AQ), (unsigned)(B * H));
    LDM__CU_LAUNCH(ldm__k_attn_fwd, grid, LDM__CU_T, ldm__cu_st(ctx)->stream, out, lse, q, k, v, H, Sq, Sk, D, scale);
    LDM__CU_LAUNCHED(ctx);
}
static void ldm__cu_attn_backward(ldm_ctx *ctx, float *dq, float *dk, float *dv, const float *dout, const float *out,
                                  const float *lse, const float *q, const float *k, const float *v, int64_t B, int64_t H,
                                  int64_t Sq, int64_t Sk, int64_t D, float scale) {
    if (B * H * Sq <= 0) return;
    /* Di lives in the step arena until the backward pass that called this rewinds it */
    float *di = (float *)ldm_arena_alloc(ctx, LDM_GPU, sizeof(float) * (size_t)(B * H * Sq));
    if (!di) return;
    LDM__CU_RUN(ctx, B * H * Sq, ldm__k_attn_di, di, dout, out, B * H * Sq, H, Sq, D);
    /* two kernels, so each gradient row has one writer; q, k and v may share a buffer */
    if (dk || dv) {
        dim3 grid((unsigned)((Sk + LDM__CU_AK - 1) / LDM__CU_AK), (unsigned)(B * H));
        LDM__CU_LAUNCH(ldm__k_attn_bwd_kv, grid, LDM__CU_T, ldm__cu_st(ctx)->stream, dk, dv, dout, lse, di, q, k, v, H, Sq, Sk, D, scale);
        LDM__CU_LAUNCHED(ctx);
    }
    if (dq) {
        dim3 grid((unsigned)((Sq + LDM__CU_AQ - 1) / LDM__CU_AQ), (unsigned)(B * H));
        LDM__CU_LAUNCH(ldm__k_attn_bwd_q, grid, LDM__CU_T, ldm__cu_st(ctx)->stream, dq, dout, lse, di, q, k, v, H, Sq, Sk, D, scale);
        LDM__CU_LAUNCHED(ctx);
    }
}

/* ---- life cycle ---- */
static void ldm__cu_destroy_state(ldm_ctx *ctx, ldm__cuda_state *st) {
    if (!st) return;
    if (st->stream) LDM__CU(ctx, cudaStreamSynchronize(st->stream));
    if (st->blas) LDM__CUBLAS(ctx, cublasDestroy(st->blas));
    if (st->scratch) LDM__CU(ctx, cudaFree(st->scratch));
    if (st->arena) LDM__CU(ctx, cudaFree(st->arena));
    if (st->stream) LDM__CU(ctx, cudaStreamDestroy(st->stream));
    LDM_FREE(st);
}
static void ldm__cu_release(ldm_ctx *ctx, void *state) {
    ldm__cu_destroy_state(ctx, (ldm__cuda_state *)state);
    ctx->be[LDM_GPU] = NULL;
    ctx->be_state[LDM_GPU] = NULL;
    memset(&ctx->arena[LDM_GPU], 0, sizeof ctx->arena[LDM_GPU]);
    if (ctx->s.device == LDM_GPU) ctx->s.device = LDM_CPU;
}

static const ldm_backend ldm__cuda_backend = {
    "cuda",
    ldm__cu_alloc, ldm__cu_free, ldm__cu_copy, ldm__cu_fill, ldm__cu_rng,
    ldm__cu_unary, ldm__cu_unary_backward, ldm__cu_binary, ldm__cu_binary_backward,
    ldm__cu_reduce_sum, ldm__cu_strided_copy, ldm__cu_axpby, ldm__cu_sgemm,
    ldm__cu_conv_forward, ldm__cu_conv_backward,
    ldm__cu_groupnorm_forward, ldm__cu_groupnorm_backward,
    ldm__cu_channel_stats, ldm__cu_channel_affine, ldm__cu_batchnorm_backward,
    ldm__cu_layernorm_forward, ldm__cu_layernorm_backward,
    ldm__cu_softmax_forward, ldm__cu_softmax_backward,
    ldm__cu_pool_forward, ldm__cu_pool_backward,
    ldm__cu_upsample_forward, ldm__cu_upsample_backward,
    ldm__cu_embedding_forward, ldm__cu_embedding_backward,
    ldm__cu_attn_forward, ldm__cu_attn_backward,
    ldm__cu_argmin_rows,
    ldm__cu_optim_step, ldm__cu_sum_squares, ldm__cu_release,
};

LDM_API int ldm_cuda_available(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) { cudaGetLastError(); return 0; } /* clear the sticky "no driver" */
    return n;
}

LDM_API ldm_result ldm_cuda_init(ldm_ctx *ctx, int device) {
    if (ctx->status) return ctx->status;
    if (ctx->be[LDM_GPU]) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_cuda_init: a CUDA device is already attached (hint: ldm_cuda_shutdown first)");
    int n = ldm_cuda_available();
    if (device < 0 || device >= n)
        return ldm_ctx_seterr(ctx, LDM_ERR_DEVICE, "ldm_cuda_init: no CUDA device %d (%d found; hint: check nvidia-smi and CUDA_VISIBLE_DEVICES)", device, n);
    ldm__cuda_state *st = (ldm__cuda_state *)LDM_MALLOC(sizeof *st);
    if (!st) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_cuda_init: out of memory");
    memset(st, 0, sizeof *st);
    st->ctx = ctx;
    st->device = device;
    cudaDeviceProp prop;
    size_t free_b = 0, total_b = 0, bytes = 0;
    const char *e = getenv("LDM_CUDA_ARENA_MB");
    if (LDM__CU(ctx, cudaSetDevice(device)) || LDM__CU(ctx, cudaGetDeviceProperties(&prop, device)) ||
        LDM__CU(ctx, cudaStreamCreateWithFlags(&st->stream, cudaStreamNonBlocking)) ||
        LDM__CUBLAS(ctx, cublasCreate(&st->blas)) || LDM__CUBLAS(ctx, cublasSetStream(st->blas, st->stream)) ||
        LDM__CUBLAS(ctx, cublasSetMathMode(st->blas, CUBLAS_DEFAULT_MATH)) ||
        LDM__CU(ctx, cudaMalloc((void **)&st->scratch, sizeof(double) * (LDM__CU_RED_BLOCKS + 1))) ||
        LDM__CU(ctx, cudaMemGetInfo(&free_b, &total_b))) {
        ldm__cu_destroy_state(ctx, st);
        return ctx->status;
    }
    snprintf(st->name, sizeof st->name, "%s (device %d, sm_%d%d)", prop.name, device, prop.major, prop.minor);
    bytes = e && atol(e) > 0 ? (size_t)atol(e) << 20 : free_b / 2;
    for (; bytes >= ((size_t)64 << 20); bytes /= 2) { /* take what the device has, down to 64 MiB */
        if (cudaMalloc(&st->arena, bytes + LDM__ALIGN) == cudaSuccess) break;
        cudaGetLastError();
        st->arena = NULL;
    }
    if (!st->arena) {
        ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_cuda_init: cannot allocate a step arena on %s (%s free of %s; hint: set LDM_CUDA_ARENA_MB)",
                       st->name, ldm__bytes(free_b).s, ldm__bytes(total_b).s);
        ldm__cu_destroy_state(ctx, st);
        return ctx->status;
    }
    ctx->arena[LDM_GPU].base = (unsigned char *)st->arena;
    ctx->arena[LDM_GPU].used = ctx->arena[LDM_GPU].peak = 0;
    ctx->arena[LDM_GPU].limit = bytes;
    ldm_ctx_set_backend(ctx, LDM_GPU, &ldm__cuda_backend, st);
    ctx->s.device = LDM_GPU;
    return LDM_OK;
}

LDM_API void *ldm_cuda_stream(ldm_ctx *ctx) {
    ldm__cuda_state *st = ctx->be_state[LDM_GPU] ? ldm__cu_st(ctx) : NULL;
    return st ? (void *)st->stream : NULL;
}
LDM_API const char *ldm_cuda_device_name(const ldm_ctx *ctx) {
    const ldm__cuda_state *st = (const ldm__cuda_state *)ctx->be_state[LDM_GPU];
    return ctx->be[LDM_GPU] && st ? st->name : "";
}
LDM_API void ldm_cuda_set_tf32(ldm_ctx *ctx, int on) {
    if (!ctx->be[LDM_GPU]) return;
    LDM__CUBLAS(ctx, cublasSetMathMode(ldm__cu_st(ctx)->blas, on ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
}
LDM_API ldm_result ldm_cuda_sync(ldm_ctx *ctx) {
    if (ctx->be[LDM_GPU]) LDM__CU(ctx, cudaStreamSynchronize(ldm__cu_st(ctx)->stream));
    return ctx->status;
}
LDM_API void ldm_cuda_shutdown(ldm_ctx *ctx) {
    if (ctx->be[LDM_GPU]) ldm__cu_release(ctx, ctx->be_state[LDM_GPU]);
}

#endif /* LDM_TENSOR_IMPLEMENTATION_DONE && !LDM_CUDA_IMPLEMENTATION_DONE */
