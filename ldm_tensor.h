/* ldm_tensor.h - tensors, arena, autograd, CPU kernels, safetensors and
   PyTorch-checkpoint I/O for ldm.h (latent diffusion in C).       v0.1

   Do this in exactly one C or C++ file before including it:
       #define LDM_IMPLEMENTATION          (every ldm_ header)
   or  #define LDM_TENSOR_IMPLEMENTATION   (this header only)

   Example: y = silu(conv2d(x, w, b)), then the gradient of mean(y) w.r.t. w.

       ldm_ctx *ctx; ldm_settings s = {0};               // zero means default
       if (ldm_ctx_create(&ctx, &s)) { ...ldm_ctx_error(ctx)... }
       ldm_tensor *w = ldm_param_new(...)  or any leaf with requires_grad = 1
       ldm_tensor *x = ldm_randn(ctx, ldm_shape4(2, 3, 32, 32));
       ldm_tensor *y = ldm_silu(ctx, ldm_conv2d(ctx, x, w, b, 1, 1));
       ldm_tensor *loss = ldm_mean_all(ctx, y);
       if (!loss || ldm_backward(ctx, loss)) { ...ldm_ctx_error(ctx)... }
       ldm_step_reset(ctx);                              // frees every activation at once

   Shape legend (all tensors contiguous, row-major):
       B batch, C channels, T frames / depth (D), H height, W width,
       S spatial size (T*H*W), G groups, M,N,K the GEMM sizes (C[M,N] = A[M,K] B[K,N]).
       Images are [B,C,H,W], volumes and videos [B,C,T,H,W].

   Design, in the order the data flows:
   - ldm_ctx holds everything that would otherwise be a global: settings, the thread pool, the
     RNG, the per-step arenas (one per device), the autograd tape and the last error.
   - Tensors are float32 compute, up to 5 dims, contiguous. fp16/bf16 exist as storage dtypes
     for files and are converted on load. A tensor's `device` selects the kernel table
     (ldm_backend) its ops dispatch to: CPU here, CUDA in ldm_cuda.cuh.
   - Activations come from the step arena and are freed together by ldm_step_reset().
     Parameters live in persistent buffers (ldm_nn.h puts all of a model's parameters, their
     gradients and optimizer moments in mirrored buffers).
   - Every op computes eagerly; when grad mode is on and an input requires grad, it appends a
     node to the tape. ldm_backward() walks the tape backwards and adds (+=) into the leaves'
     .grad; ldm_grad() returns the gradient w.r.t. chosen tensors only, touching no .grad.
   - Errors are sticky: a failing op sets the context error and returns NULL, and every op
     returns NULL when handed a NULL input, so a whole forward pass can be checked once.
     Programmer errors (broken invariants) use LDM_ASSERT, which reports file:line.

   Options (define before including the implementation):
       LDM_CUDA              compile the CUDA back end in (ldm_cuda.cuh, pulled in by this
                             header; the file must be compiled by nvcc): see ldm_cuda.cuh
       LDM_STATIC            make every function static
       LDM_MALLOC/LDM_REALLOC/LDM_FREE   allocator hooks (all three or none)
       LDM_ASSERT(c)         assertion hook (default: print file:line, abort)
       LDM_BLAS              route SGEMM to cblas_sgemm (link -lopenblas); for comparison
       LDM_NO_THREADS        build without pthreads (single-threaded)
       LDM_NO_DISPATCH       x86: only the SGEMM kernels the -march flags enable (no run-time
                             choice by CPU; without -march=native that is the portable one)
   Environment: LDM_THREADS (thread count), LDM_ARENA_MB (per-step arena limit),
   LDM_CPU_KERNEL (avx512, avx2 or portable: use a slower SGEMM kernel, for comparisons),
   LDM_CONV (CPU convolution algorithm: auto, im2col, winograd, winograd4 or fast; see
   ldm_settings.conv_algo).
*/
#ifndef LDM_TENSOR_H
#define LDM_TENSOR_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define LDM_VERSION_MAJOR 0
#define LDM_VERSION_MINOR 1
#define LDM_VERSION_PATCH 0

#ifndef LDM_API
#ifdef LDM_STATIC
#define LDM_API static
#else
#define LDM_API extern
#endif
#endif

#define LDM_MAX_DIMS 5


#ifdef __cplusplus
extern "C" {
#endif

/* ---- results ---------------------------------------------------------------------------- */
typedef int ldm_result;
enum {
    LDM_OK = 0,
    LDM_ERR_INVALID = -1,     /* bad argument or shape */
    LDM_ERR_NOMEM = -2,       /* allocation or arena limit */
    LDM_ERR_IO = -3,          /* open/read/write failed */
    LDM_ERR_FORMAT = -4,      /* malformed file */
    LDM_ERR_NOT_FOUND = -5,   /* missing name / key */
    LDM_ERR_UNSUPPORTED = -6, /* valid but not supported here */
    LDM_ERR_NUMERIC = -7,     /* NaN / Inf */
    LDM_ERR_DEVICE = -8,      /* device (CUDA) failure */
    LDM_ERR_INTERRUPTED = -9  /* stopped by a signal */
};
LDM_API const char *ldm_result_name(ldm_result r);

/* ---- types ------------------------------------------------------------------------------ */
typedef enum { LDM_F32 = 0, LDM_F16 = 1, LDM_BF16 = 2 } ldm_dtype;
/* Devices. LDM_GPU is the CUDA device; the build switch LDM_CUDA (-DLDM_CUDA) is a separate name. */
typedef enum { LDM_CPU = 0, LDM_GPU = 1, LDM_NUM_DEVICES = 2 } ldm_device;

typedef struct ldm_shape { int ndim; int64_t d[LDM_MAX_DIMS]; } ldm_shape;

typedef struct ldm_tensor {
    float *data;              /* numel floats on `device` */
    float *grad;              /* leaves only: gradient accumulated by ldm_backward (or NULL) */
    int64_t shape[LDM_MAX_DIMS];
    int ndim;
    int64_t numel;
    ldm_device device;
    int requires_grad;        /* leaf: wants a gradient; op output: depends on such a leaf */
    int node;                 /* tape index of the op that made it, -1 for a leaf */
    const char *name;         /* optional, for messages (parameters carry their state-dict name) */
} ldm_tensor;

/* Counter-based RNG (Philox4x32-10): element i of a draw depends only on (seed, offset + i),
   never on the thread count or the device. */
typedef struct ldm_rng { uint64_t seed, offset; } ldm_rng;

typedef struct ldm_settings {
    int threads;              /* 0: $LDM_THREADS, else the number of online CPUs */
    uint64_t seed;            /* RNG seed (0 is a valid seed) */
    size_t arena_bytes;       /* per-step arena limit; 0: $LDM_ARENA_MB, else half the RAM */
    ldm_device device;        /* where new tensors go (CPU unless a CUDA backend is attached) */
    int conv_algo;            /* CPU convolutions: LDM_CONV_* below; AUTO (0): $LDM_CONV (auto, im2col,
                                 winograd, winograd4, fast) if set, else auto. ldm_ctx_create returns
                                 LDM_ERR_INVALID for another value. */
} ldm_settings;
/* LDM_CONV_AUTO: Winograd for 3x3, stride 1, padding 1 2-D convolutions with at least 16 input
   and output channels, im2col + SGEMM for the rest. The forward pass uses F(2x2,3x3); the
   backward uses F(4x4,3x3) on "large" images (at least 8x8 and 8 * max(in, out channels)
   pixels: there it is faster) and F(2x2,3x3) on the others. IM2COL: always im2col. WINOGRAD:
   F(2x2,3x3) wherever the shape allows. WINOGRAD4: F(4x4,3x3) wherever the shape allows. FAST:
   AUTO with F(4x4,3x3) in the forward pass too, on large images.
   They differ by rounding only. The worst element's error as a fraction of the output's largest
   is ~5e-7 for im2col and F(2x2) but ~3-5e-6 for F(4x4) at 128-512 channels
   (tests/test_winograd.c). In a forward pass that is enough, in a ReLU/max-pool network such as
   LPIPS's VGG16, to tip near-ties to the other side and route gradients differently from a
   float64 reference; in gradients it is far below what training notices. So AUTO computes
   forward values with im2col's accuracy, and FAST (a few % less time than AUTO for a VAE
   training step at 128x128) is opt-in. The choice depends on the layer's shape, never on the batch size or thread count. */
enum { LDM_CONV_AUTO = 0, LDM_CONV_IM2COL = 1, LDM_CONV_WINOGRAD = 2, LDM_CONV_WINOGRAD4 = 3, LDM_CONV_FAST = 4 };

typedef struct ldm_ctx ldm_ctx;
typedef struct ldm_backend ldm_backend;

/* ---- context ---------------------------------------------------------------------------- */
LDM_API ldm_result ldm_ctx_create(ldm_ctx **ctx, const ldm_settings *settings /* may be NULL */);
LDM_API void ldm_ctx_destroy(ldm_ctx *ctx);
LDM_API ldm_result ldm_ctx_status(const ldm_ctx *ctx);        /* first error since clear */
LDM_API const char *ldm_ctx_error(const ldm_ctx *ctx);        /* its message ("" if none) */
/* The CPU SGEMM micro-kernel in use: "avx512", "avx2" or "portable" (x86-64 GCC/Clang builds
   choose by CPU at ldm_ctx_create whatever the -march flags; $LDM_CPU_KERNEL may name a
   slower one), or "cblas" under LDM_BLAS. */
LDM_API const char *ldm_cpu_kernel_name(const ldm_ctx *ctx);
LDM_API void ldm_ctx_clear_error(ldm_ctx *ctx);
LDM_API ldm_result ldm_ctx_seterr(ldm_ctx *ctx, ldm_result code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;                                                         /* returns code; keeps the first */
LDM_API int ldm_ctx_threads(const ldm_ctx *ctx);
LDM_API void ldm_ctx_set_threads(ldm_ctx *ctx, int n);
LDM_API void ldm_ctx_set_conv_algo(ldm_ctx *ctx, int algo); /* LDM_CONV_*; see ldm_settings */
LDM_API ldm_rng *ldm_ctx_rng(ldm_ctx *ctx);
LDM_API ldm_device ldm_ctx_device(const ldm_ctx *ctx);
LDM_API void ldm_ctx_set_device(ldm_ctx *ctx, ldm_device d);
LDM_API void ldm_ctx_set_backend(ldm_ctx *ctx, ldm_device d, const ldm_backend *be, void *state);
LDM_API void *ldm_ctx_backend_state(const ldm_ctx *ctx, ldm_device d);

/* ---- threads ---------------------------------------------------------------------------- */
/* fn runs on [begin,end) sub-ranges of [0,n), at most one range per thread, each range at
   least `grain` long. Ranges depend on the thread count: kernels must make every output
   element independent of where the ranges split (so 1 and N threads agree bitwise). */
typedef void (*ldm_task_fn)(void *arg, int64_t begin, int64_t end, int tid);
LDM_API void ldm_parallel_for(ldm_ctx *ctx, int64_t n, int64_t grain, ldm_task_fn fn, void *arg);

/* ---- per-step arena --------------------------------------------------------------------- */
typedef struct ldm_mark { size_t used[LDM_NUM_DEVICES]; int tape_len; } ldm_mark; /* per device arena */
LDM_API void *ldm_arena_alloc(ldm_ctx *ctx, ldm_device d, size_t bytes); /* 64-byte aligned; NULL + error when full */
LDM_API ldm_mark ldm_arena_mark(const ldm_ctx *ctx);
LDM_API void ldm_arena_rewind(ldm_ctx *ctx, ldm_mark m);     /* frees everything allocated since m (every arena) */
LDM_API size_t ldm_arena_used(const ldm_ctx *ctx, ldm_device d);
LDM_API size_t ldm_arena_peak(const ldm_ctx *ctx, ldm_device d);  /* high-water mark since creation or reset_peak */
LDM_API void ldm_arena_reset_peak(ldm_ctx *ctx);                  /* every device: peak = used now */
LDM_API size_t ldm_arena_limit(const ldm_ctx *ctx, ldm_device d);
/* Clears the tape and every arena. Leaves whose .grad ldm_backward allocated in the arena get
   .grad = NULL (ldm_arena_rewind does the same for what it frees); persistent gradient
   buffers (ldm_nn.h's) are untouched. */
LDM_API void ldm_step_reset(ldm_ctx *ctx);
/* Rewinds to m but keeps t: its data is moved down to m (in its device's arena) and the
   returned tensor is a fresh leaf. For no-grad inference that wants bounded memory across blocks. */
LDM_API ldm_tensor *ldm_arena_keep(ldm_ctx *ctx, ldm_mark m, ldm_tensor *t);

/* ---- shapes and tensors ----------------------------------------------------------------- */
LDM_API ldm_shape ldm_shape1(int64_t a);
LDM_API ldm_shape ldm_shape2(int64_t a, int64_t b);
LDM_API ldm_shape ldm_shape3(int64_t a, int64_t b, int64_t c);
LDM_API ldm_shape ldm_shape4(int64_t a, int64_t b, int64_t c, int64_t d);
LDM_API ldm_shape ldm_shape5(int64_t a, int64_t b, int64_t c, int64_t d, int64_t e);
LDM_API ldm_shape ldm_shape_of(const ldm_tensor *t);
LDM_API ldm_shape ldm_shape_n(int ndim, const int64_t *d);
LDM_API int ldm_shape_eq(const ldm_tensor *a, const ldm_tensor *b);
LDM_API char *ldm_shape_str(const ldm_tensor *t, char *buf, size_t n); /* "[2, 3, 8, 8]" */
LDM_API char *ldm_dims_str(const int64_t *d, int ndim, char *buf, size_t n); /* the same for a dims array */

/* Arena tensors on the context's device (uninitialised / filled). */
LDM_API ldm_tensor *ldm_new(ldm_ctx *ctx, ldm_shape s);
LDM_API ldm_tensor *ldm_zeros(ldm_ctx *ctx, ldm_shape s);
LDM_API ldm_tensor *ldm_full(ldm_ctx *ctx, ldm_shape s, float v);
LDM_API ldm_tensor *ldm_from_host(ldm_ctx *ctx, ldm_shape s, const float *src); /* copies */
LDM_API ldm_tensor *ldm_randn(ldm_ctx *ctx, ldm_shape s);    /* N(0,1) from ctx's RNG */
LDM_API ldm_tensor *ldm_rand(ldm_ctx *ctx, ldm_shape s);     /* U[0,1) from ctx's RNG */
LDM_API ldm_tensor *ldm_to_device(ldm_ctx *ctx, ldm_tensor *t, ldm_device d); /* copy (or t) */
/* Copies t's data to host memory dst (numel floats). */
LDM_API ldm_result ldm_to_host(ldm_ctx *ctx, const ldm_tensor *t, float *dst);
/* A tensor struct over caller memory (not owned, not in the arena): for parameters, files. */
LDM_API ldm_tensor ldm_tensor_wrap(float *data, ldm_shape s, ldm_device d);

/* RNG draws into raw memory (host or device by d), n elements. */
LDM_API void ldm_rng_normal(ldm_ctx *ctx, ldm_rng *rng, ldm_device d, float *out, int64_t n, float mean, float std);
LDM_API void ldm_rng_uniform(ldm_ctx *ctx, ldm_rng *rng, ldm_device d, float *out, int64_t n, float lo, float hi);
LDM_API uint64_t ldm_rng_u64(ldm_rng *rng);  /* one 64-bit draw (host), e.g. for data order */
/* Data parallelism (ldm_dist.h): rank r of world W draws per-sample randomness as its rows of
   the draw the whole job would make at once, rows r, r+W, r+2W, ... of [rows*W, rowlen] (the
   strided order of PyTorch's DistributedSampler), and every rank's stream then advances by the
   whole draw. The noise that meets a sample thus does not depend on the number of processes:
   two processes with batch b draw what one process with batch 2b draws. ldm_randn/ldm_rand
   (rows = dim 0) and dropout draw this way; with world 1 (the default) it is a plain draw. */
LDM_API void ldm_ctx_set_shard(ldm_ctx *ctx, int rank, int world);
LDM_API void ldm_rng_rows(ldm_ctx *ctx, ldm_rng *rng, ldm_device d, float *out, int64_t rows, int64_t rowlen, int normal,
                          float a, float b);           /* normal: N(a, b^2); else U[a, b) */
LDM_API void ldm_rng_u64_rows(ldm_ctx *ctx, ldm_rng *rng, uint64_t *out, int64_t rows); /* host */

/* ---- autograd --------------------------------------------------------------------------- */
LDM_API int ldm_grad_enabled(const ldm_ctx *ctx);
LDM_API int ldm_set_grad_enabled(ldm_ctx *ctx, int on);       /* returns the previous mode */
/* Called by ldm_backward (not ldm_grad) for each leaf that requires grad as soon as its .grad
   holds its final value for the pass, i.e. once the earliest tape node that reads it has run:
   data-parallel training reduces a bucket of gradients while the rest of the pass computes.
   NULL removes it. */
typedef void (*ldm_grad_ready_fn)(void *user, ldm_ctx *ctx, ldm_tensor *leaf);
LDM_API void ldm_set_grad_ready_hook(ldm_ctx *ctx, ldm_grad_ready_fn fn, void *user);
/* Adds d(loss)/d(leaf) into leaf->grad for every leaf with requires_grad reached from loss
   (loss must have one element). Leaves without a grad buffer get one from the arena. */
LDM_API ldm_result ldm_backward(ldm_ctx *ctx, ldm_tensor *loss);
/* Same, but from an upstream gradient dout (same shape as out, on out's device). */
LDM_API ldm_result ldm_backward_from(ldm_ctx *ctx, ldm_tensor *out, const float *dout);
/* Writes d(loss)/d(wrt[i]) into out[i] (wrt[i]->numel floats, on its device; zeros when
   loss does not depend on it) and touches no .grad. wrt may be leaves or op outputs. */
LDM_API ldm_result ldm_grad(ldm_ctx *ctx, ldm_tensor *loss, int n, ldm_tensor *const *wrt, float *const *out);
LDM_API ldm_tensor *ldm_detach(ldm_ctx *ctx, ldm_tensor *t);  /* same data, no history */
LDM_API int ldm_tape_len(const ldm_ctx *ctx);

/* ---- ops (each returns a new arena tensor, NULL on error; records itself on the tape) ----- */
/* element-wise, numpy broadcasting of size-1 (or missing leading) dims */
LDM_API ldm_tensor *ldm_add(ldm_ctx *ctx, ldm_tensor *a, ldm_tensor *b);
LDM_API ldm_tensor *ldm_sub(ldm_ctx *ctx, ldm_tensor *a, ldm_tensor *b);
LDM_API ldm_tensor *ldm_mul(ldm_ctx *ctx, ldm_tensor *a, ldm_tensor *b);
LDM_API ldm_tensor *ldm_div(ldm_ctx *ctx, ldm_tensor *a, ldm_tensor *b);
/* scalar */
LDM_API ldm_tensor *ldm_affine(ldm_ctx *ctx, ldm_tensor *x, float scale, float shift); /* x*scale + shift */
LDM_API ldm_tensor *ldm_scale(ldm_ctx *ctx, ldm_tensor *x, float s);
LDM_API ldm_tensor *ldm_add_scalar(ldm_ctx *ctx, ldm_tensor *x, float s);
LDM_API ldm_tensor *ldm_pow_scalar(ldm_ctx *ctx, ldm_tensor *x, float p);
/* unary */
LDM_API ldm_tensor *ldm_exp(ldm_ctx *ctx, ldm_tensor *x);
LDM_API ldm_tensor *ldm_log(ldm_ctx *ctx, ldm_tensor *x);
LDM_API ldm_tensor *ldm_sqrt(ldm_ctx *ctx, ldm_tensor *x);
LDM_API ldm_tensor *ldm_abs(ldm_ctx *ctx, ldm_tensor *x);
LDM_API ldm_tensor *ldm_square(ldm_ctx *ctx, ldm_tensor *x);
LDM_API ldm_tensor *ldm_clamp(ldm_ctx *ctx, ldm_tensor *x, float lo, float hi); /* grad 0 outside [lo,hi] */
LDM_API ldm_tensor *ldm_sigmoid(ldm_ctx *ctx, ldm_tensor *x);
LDM_API ldm_tensor *ldm_silu(ldm_ctx *ctx, ldm_tensor *x);
LDM_API ldm_tensor *ldm_relu(ldm_ctx *ctx, ldm_tensor *x);
LDM_API ldm_tensor *ldm_leaky_relu(ldm_ctx *ctx, ldm_tensor *x, float slope);
/* relu / leaky_relu written over x's memory, as nn.ReLU(inplace=True) (torchvision's VGG16,
   taming's PatchGAN): the backward tests the sign of the output, which is the input's, so the
   tape keeps one tensor where ldm_relu keeps two. For an x that no backward reads and nothing
   uses afterwards (the fresh output of a convolution, a linear, a norm), never a leaf or a
   caller's input (a leaf that requires grad, or a leaky slope <= 0, falls back to the
   out-of-place op). Bitwise the same
   values and gradients. The result is a new tensor. */
LDM_API ldm_tensor *ldm_relu_into(ldm_ctx *ctx, ldm_tensor *x);
LDM_API ldm_tensor *ldm_leaky_relu_into(ldm_ctx *ctx, ldm_tensor *x, float slope);
LDM_API ldm_tensor *ldm_tanh(ldm_ctx *ctx, ldm_tensor *x);
LDM_API ldm_tensor *ldm_gelu(ldm_ctx *ctx, ldm_tensor *x, int tanh_approx);
/* GEGLU (the FeedForward of Stable Diffusion's transformer blocks): x [..., 2I] ->
   x[..., :I] * gelu(x[..., I:]) (exact gelu). The same numbers as slice/gelu/mul, but the tape
   keeps only x: the backward recomputes the halves and the gelu, where the composite keeps
   three more [..., I] tensors until the backward. */
LDM_API ldm_tensor *ldm_geglu(ldm_ctx *ctx, ldm_tensor *x);
/* a + b (b broadcast to a's shape) written over a's memory, as PyTorch's `h += x` on a fresh
   result: the arena then holds one tensor where ldm_add holds two. For an `a` that no backward
   reads and nothing uses afterwards — the fresh output of a linear, a convolution, an add or a
   transpose — never a leaf or a parameter (a leaf that requires grad, or a b that would
   broadcast a larger result, falls back to ldm_add). The result is a new tensor. */
LDM_API ldm_tensor *ldm_add_into(ldm_ctx *ctx, ldm_tensor *a, ldm_tensor *b);
LDM_API ldm_tensor *ldm_softplus(ldm_ctx *ctx, ldm_tensor *x, float beta, float threshold); /* torch: 1, 20 */
LDM_API ldm_tensor *ldm_sin(ldm_ctx *ctx, ldm_tensor *x);
LDM_API ldm_tensor *ldm_cos(ldm_ctx *ctx, ldm_tensor *x);
/* reductions: dims is a bit mask (bit i = dim i; LDM_DIM(-1) is not allowed, use ndim-1) */
#define LDM_DIM(i) (1u << (i))
LDM_API ldm_tensor *ldm_sum(ldm_ctx *ctx, ldm_tensor *x, unsigned dims, int keepdim);
LDM_API ldm_tensor *ldm_mean(ldm_ctx *ctx, ldm_tensor *x, unsigned dims, int keepdim);
LDM_API ldm_tensor *ldm_sum_all(ldm_ctx *ctx, ldm_tensor *x);   /* shape [1] */
LDM_API ldm_tensor *ldm_mean_all(ldm_ctx *ctx, ldm_tensor *x);  /* shape [1] */
/* linear algebra. matmul: a [..., M, K] (or [..., K, M] when trans_a), b [..., K, N] (or
   [..., N, K] when trans_b), with 0 to 2 leading batch dims each, e.g. [B, heads, S, D]. Batch
   dims broadcast numpy-style (right-aligned; missing or size 1 = shared), so a 2-D operand is
   shared across the other's batch; the result is [batch..., M, N]. No operand is copied. */
LDM_API ldm_tensor *ldm_matmul(ldm_ctx *ctx, ldm_tensor *a, ldm_tensor *b, int trans_a, int trans_b);
LDM_API ldm_tensor *ldm_linear(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b); /* x[...,I] w[O,I] b[O]|NULL */
/* Multi-head scaled dot-product attention, token-major as Linear layers produce it:
   q [B, Sq, heads*D], k and v [B, Sk, heads*D] -> [B, Sq, heads*D];
   out_h = softmax(q_h k_h^T * scale) v_h per head h (channels h*D .. h*D+D-1).
   scale 0 means 1/sqrt(D). One op, flash-style: scores are computed a block at a time and
   never held whole (memory O(S * (block + D)), never Sq x Sk); the backward recomputes them
   from the saved per-row log-sum-exp. q, k and v may be one tensor or views of one. */
LDM_API ldm_tensor *ldm_attention(ldm_ctx *ctx, ldm_tensor *q, ldm_tensor *k, ldm_tensor *v, int heads, float scale);
/* convolution: x [B,C,H,W] w [O,C,kh,kw] (conv3d: [B,C,T,H,W], [O,C,kt,kh,kw]); bias may be NULL */
LDM_API ldm_tensor *ldm_conv2d(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b, int stride, int pad);
LDM_API ldm_tensor *ldm_conv2d_ex(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b,
                                  int stride_h, int stride_w, int pad_top, int pad_bottom, int pad_left, int pad_right);
LDM_API ldm_tensor *ldm_conv3d(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b, int stride, int pad);
/* stride[3] = t,h,w; pad[6] = front, back, top, bottom, left, right */
LDM_API ldm_tensor *ldm_conv3d_ex(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b, const int stride[3], const int pad[6]);
/* normalisation (x [B,C,...]); weight/bias may be NULL (no affine) */
LDM_API ldm_tensor *ldm_group_norm(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b, int groups, float eps);
/* silu(group_norm(x)) as one op (the ResnetBlock and VAE norm_out pattern): the forward equals
   ldm_silu(ldm_group_norm(...)) bitwise on the CPU; the normalised pre-activation is never
   stored (the tape keeps x, mean and rstd; the backward recomputes it), which saves one
   activation of x's size per call, with or without grad. */
LDM_API ldm_tensor *ldm_group_norm_silu(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b, int groups, float eps);
/* The same, written over x's memory when no backward will need x (grad mode off, or none of
   x, w, b requires grad); otherwise exactly ldm_group_norm_silu. For inference, on an x that
   nothing uses afterwards (a fresh activation, never a caller's input): the arena then holds
   one tensor where ldm_group_norm_silu holds two. The result is a new tensor. */
LDM_API ldm_tensor *ldm_group_norm_silu_into(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b, int groups, float eps);
/* conv(silu(group_norm(x))) with the convolution's input recomputed in the backward pass
   instead of kept: the tape holds x (and the per-group statistics), not the normalised
   activation, so a ResnetBlock keeps two tensors fewer until the backward. The same
   arithmetic as ldm_group_norm_silu then ldm_conv2d/3d (bitwise), one more GroupNorm+SiLU
   pass in the backward. x [B,C,H,W] or [B,C,T,H,W]; gw, gb [C] (may be NULL); w, b as the
   convolution's; stride[3] = t,h,w and pad[6] = front, back, top, bottom, left, right
   (a 2-D conv: stride[0] 1, pad[0..1] 0). */
LDM_API ldm_tensor *ldm_group_norm_silu_conv(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *gw, ldm_tensor *gb, int groups, float eps,
                                             ldm_tensor *w, ldm_tensor *b, const int stride[3], const int pad[6]);
/* training: batch statistics, and running_mean/var (persistent, may be NULL) updated in place
   with momentum (running = (1-m)*running + m*batch, unbiased var); eval: running statistics. */
LDM_API ldm_tensor *ldm_batch_norm(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b,
                                   ldm_tensor *running_mean, ldm_tensor *running_var,
                                   int training, float momentum, float eps);
/* over the last `nd` dims (w, b have that many elements) */
LDM_API ldm_tensor *ldm_layer_norm(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b, int nd, float eps);
LDM_API ldm_tensor *ldm_softmax(ldm_ctx *ctx, ldm_tensor *x, int dim);
/* spatial, on [B,C,H,W] or [B,C,T,H,W] */
LDM_API ldm_tensor *ldm_upsample_nearest(ldm_ctx *ctx, ldm_tensor *x, int scale_t, int scale_h, int scale_w);
LDM_API ldm_tensor *ldm_avg_pool(ldm_ctx *ctx, ldm_tensor *x, int kernel, int stride, int pad); /* count_include_pad */
LDM_API ldm_tensor *ldm_max_pool(ldm_ctx *ctx, ldm_tensor *x, int kernel, int stride, int pad);
/* F.pad semantics: pads = (last_lo, last_hi, prev_lo, prev_hi, ...), 2*n values; constant v */
LDM_API ldm_tensor *ldm_pad(ldm_ctx *ctx, ldm_tensor *x, int n, const int *pads, float v);
/* shape */
LDM_API ldm_tensor *ldm_reshape(ldm_ctx *ctx, ldm_tensor *x, ldm_shape s);  /* one dim may be -1 */
LDM_API ldm_tensor *ldm_permute(ldm_ctx *ctx, ldm_tensor *x, const int *perm);
LDM_API ldm_tensor *ldm_transpose(ldm_ctx *ctx, ldm_tensor *x, int d0, int d1);
LDM_API ldm_tensor *ldm_concat(ldm_ctx *ctx, int n, ldm_tensor *const *xs, int dim);
LDM_API ldm_tensor *ldm_slice(ldm_ctx *ctx, ldm_tensor *x, int dim, int64_t start, int64_t len);
LDM_API ldm_result ldm_chunk(ldm_ctx *ctx, ldm_tensor *x, int n, int dim, ldm_tensor **out);
LDM_API ldm_result ldm_split(ldm_ctx *ctx, ldm_tensor *x, int n, const int64_t *sizes, int dim, ldm_tensor **out);
LDM_API ldm_tensor *ldm_copy(ldm_ctx *ctx, ldm_tensor *x);
/* misc */
LDM_API ldm_tensor *ldm_dropout(ldm_ctx *ctx, ldm_tensor *x, float p, int training);
LDM_API ldm_tensor *ldm_embedding(ldm_ctx *ctx, ldm_tensor *weight, int64_t n, const int64_t *idx); /* [n, dim] */
/* Index of the smallest element of each row of x (the last dim; rows = numel / last dim),
   written to idx (host memory, one int64 per row), as torch.argmin(x, dim=-1): the first index
   on ties, a NaN counts as smaller than every number. Not differentiable (records nothing). */
LDM_API ldm_result ldm_argmin(ldm_ctx *ctx, const ldm_tensor *x, int64_t *idx);

/* ---- kernels: forward/backward pairs on raw memory ---------------------------------------
   Arguments: outputs, saved values, inputs, weights, sizes. Backward adds (+=) into every
   gradient it is given; a NULL gradient pointer means "not needed" and skips that work. */
/* C = alpha*op(A)*op(B) + beta*C, row-major, op = transpose when trans_*. */
LDM_API void ldm_sgemm(ldm_ctx *ctx, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                       float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                       float beta, float *C, int64_t ldc);
LDM_API void ldm_sgemm_ref(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                           float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                           float beta, float *C, int64_t ldc); /* plain loops, for tests */

/* 2-D and 3-D convolution share one descriptor (2-D: T = kt = st = 1, no front/back pad). */
typedef struct ldm_conv_desc {
    int64_t B, C, T, H, W;        /* input */
    int64_t O, OT, OH, OW;        /* output channels and sizes (filled by ldm_conv_desc_init) */
    int kt, kh, kw, st, sh, sw;
    int pad[6];                   /* front, back, top, bottom, left, right */
} ldm_conv_desc;
LDM_API ldm_result ldm_conv_desc_init(ldm_conv_desc *d); /* computes OT/OH/OW, validates */
LDM_API void ldm_conv_forward(ldm_ctx *ctx, float *out, const float *inp, const float *weight,
                              const float *bias, const ldm_conv_desc *d);
LDM_API void ldm_conv_backward(ldm_ctx *ctx, float *dinp, float *dweight, float *dbias,
                               const float *dout, const float *inp, const float *weight,
                               const ldm_conv_desc *d);

LDM_API void ldm_groupnorm_forward(ldm_ctx *ctx, float *out, float *mean, float *rstd,
                                   const float *inp, const float *weight, const float *bias,
                                   int64_t B, int64_t C, int64_t S, int G, float eps);
LDM_API void ldm_groupnorm_backward(ldm_ctx *ctx, float *dinp, float *dweight, float *dbias,
                                    const float *dout, const float *inp, const float *weight,
                                    const float *mean, const float *rstd,
                                    int64_t B, int64_t C, int64_t S, int G);

/* ---- raw memory on a device, through its back end ----------------------------------------
   For persistent buffers outside the arena (ldm_nn.h's parameter, gradient and optimizer
   blocks): the same calls serve every device, the context's back end for d does the work. */
LDM_API const char *ldm_device_name(const ldm_ctx *ctx, ldm_device d); /* "cpu", "cuda"; NULL: none attached */
/* Back-end memory (malloc on the CPU), NULL when it fails (a device back end sets the error). */
LDM_API void *ldm_device_alloc(ldm_ctx *ctx, ldm_device d, size_t bytes);
LDM_API void ldm_device_free(ldm_ctx *ctx, ldm_device d, void *p);
/* ldm_device_alloc, zero-filled. On the CPU with the default allocator this is calloc, so pages
   never written (an inference-only model's gradient block) cost no resident memory. Sizes that
   are not a multiple of 4 bytes are zeroed only up to the last whole float on a GPU. */
LDM_API void *ldm_device_alloc_zeroed(ldm_ctx *ctx, ldm_device d, size_t bytes);
LDM_API void ldm_device_copy(ldm_ctx *ctx, void *dst, ldm_device dst_dev, const void *src, ldm_device src_dev, size_t bytes);
LDM_API void ldm_device_fill(ldm_ctx *ctx, ldm_device d, float *x, int64_t n, float v);
LDM_API void ldm_device_scale(ldm_ctx *ctx, ldm_device d, float *x, int64_t n, float s); /* x *= s, exactly */
/* Sum of x[i]^2 in double, in fixed pieces: the same on any thread count. */
LDM_API double ldm_device_sum_squares(ldm_ctx *ctx, ldm_device d, const float *x, int64_t n);

/* One optimizer update of n elements, torch 1.13's single-tensor arithmetic in float with the
   coefficients below (ldm_nn.h derives them from its hyper-parameters each step):
     SGD:  d = g (+ wd*p when l2); with a momentum buffer m (NULL: none):
           m = first ? d : m*mom + one_damp*d,  d = nesterov ? d + mom*m : m;  p += neg_lr*d
     Adam: p *= decay (adamw), or g += wd*p (l2);  m = m*b1 + one_b1*g;  v = v*b2 + one_b2*g*g;
           p += neg_step*m / (sqrt(v)/bc2s + eps)
   Every back end does these correctly rounded operations in this order, so the CPU and the
   GPU agree bitwise. */
typedef struct ldm_optim_args {
    int sgd, adamw, l2, first, nesterov;
    float decay, wd, b1, one_b1, b2, one_b2, bc2s, eps, neg_step; /* Adam (decay = 1 - lr*wd) */
    float mom, one_damp, neg_lr;                                  /* SGD */
} ldm_optim_args;
LDM_API void ldm_device_optim_update(ldm_ctx *ctx, ldm_device d, const ldm_optim_args *a, float *p, const float *g,
                                     float *m, float *v, int64_t n);

/* ---- half precision --------------------------------------------------------------------- */
LDM_API float ldm_f16_to_f32(uint16_t h);
LDM_API uint16_t ldm_f32_to_f16(float f);     /* round to nearest even */
LDM_API float ldm_bf16_to_f32(uint16_t h);
LDM_API uint16_t ldm_f32_to_bf16(float f);    /* round to nearest even */
LDM_API size_t ldm_dtype_size(ldm_dtype t);
LDM_API const char *ldm_dtype_name(ldm_dtype t);

/* ---- weight files: safetensors, PyTorch .ckpt/.pth (zip and legacy) ----------------------
   ldm_weights_open reads only the index (names, dtypes, shapes, where the bytes are); tensors
   are read one at a time, converted to float32. The format is detected from the content:
   - safetensors: element types F32 F16 BF16 F64 I64 I32 I16 I8 U8 BOOL (all read as float32;
     integers above 2^24 round); F8/U16/U32/U64/C64 are LDM_ERR_UNSUPPORTED. The header is
     validated strictly (JSON syntax, dtype/shape/data_offsets, sizes, bounds, overlaps,
     duplicates); "__metadata__" is exposed by ldm_weights_metadata.
   - PyTorch zip (torch.save since 1.6) and legacy (0.4 to 1.5) checkpoints, .pt/.pth/.ckpt:
     the pickle is read by a restricted interpreter that never executes anything: it accepts
     tensors (_rebuild_tensor_v2, _rebuild_parameter), typed storages, dicts/OrderedDicts,
     lists, tuples and scalars, plus a few data-only classes seen in training checkpoints
     (numpy scalars, torch dtypes, Lightning's ModelCheckpoint), which become opaque values.
     Any other class (os.system, builtins.eval, ...) or opcode is an error naming it. Zip
     entries must be stored (uncompressed), as torch.save writes them; ZIP64 is supported.
     Names: the top-level dict, or its "state_dict" entry when that is a dict (Lightning);
     nested dicts of tensors are flattened with '.' ("a": {"b": t} gives "a.b"); integer keys
     are written in decimal; non-tensor values (epoch, optimizer settings, lists) are skipped.
     Views (non-contiguous, offset, shared storages) are gathered on read.
   An ldm_weights keeps its file open; read from one thread at a time. Errors name the file
   and the tensor. */
typedef struct ldm_weights ldm_weights;
typedef struct ldm_weight_info {
    const char *name;
    ldm_dtype dtype;              /* the file's dtype: F16, BF16, else F32 (also for F64 and integers) */
    int ndim;
    int64_t shape[LDM_MAX_DIMS];
    int64_t numel;
    const char *file_dtype;       /* the element type as stored: "F32" "F16" "BF16" "F64" "I64" ... */
} ldm_weight_info;
LDM_API ldm_result ldm_weights_open(ldm_ctx *ctx, ldm_weights **w, const char *path);
LDM_API void ldm_weights_close(ldm_weights *w);
LDM_API const char *ldm_weights_path(const ldm_weights *w);
LDM_API const char *ldm_weights_format(const ldm_weights *w); /* "safetensors", "torch-zip", "torch-legacy" */
LDM_API int ldm_weights_count(const ldm_weights *w);
LDM_API const ldm_weight_info *ldm_weights_info(const ldm_weights *w, int i);
LDM_API int ldm_weights_find(const ldm_weights *w, const char *name); /* index or -1 */
/* Reads tensor i, converted to float32, into host memory dst (numel floats). */
LDM_API ldm_result ldm_weights_read(ldm_ctx *ctx, ldm_weights *w, int i, float *dst);
/* safetensors metadata ("__metadata__" string map): value for key or NULL */
LDM_API const char *ldm_weights_metadata(const ldm_weights *w, const char *key);

/* Writes host float32 tensors as safetensors, converted to `dtype` (F32, F16, BF16; round to
   nearest even). names must be unique and non-empty; meta_keys/meta_vals (n_meta strings) go
   to "__metadata__". The header is deterministic (metadata, then tensors in the given order,
   padded with spaces to 8 bytes). Atomic: written to "<path>.tmp.<pid>", fsync'ed, renamed
   over path; on failure path is untouched and the temporary file removed. */
typedef struct ldm_named_data {
    const char *name;
    const float *data;            /* host memory */
    int ndim;
    int64_t shape[LDM_MAX_DIMS];
} ldm_named_data;
LDM_API ldm_result ldm_safetensors_write(ldm_ctx *ctx, const char *path, int n, const ldm_named_data *t,
                                         ldm_dtype dtype, int n_meta, const char *const *meta_keys,
                                         const char *const *meta_vals);

/* Atomic file replacement: begin opens "<path>.tmp.<pid>" for writing (af->f); commit flushes,
   fsyncs and closes it, then renames it over path, so a reader (or a crash) sees either the
   old file or the complete new one. On any failure (also a write error left on af->f) commit
   removes the temporary file, leaves path untouched and returns the error; abort drops an
   unfinished write. */
typedef struct ldm_atomic_file {
    FILE *f;                      /* write here between begin and commit */
    char *tmp, *path;
} ldm_atomic_file;
LDM_API ldm_result ldm_atomic_begin(ldm_ctx *ctx, ldm_atomic_file *af, const char *path);
LDM_API ldm_result ldm_atomic_commit(ldm_ctx *ctx, ldm_atomic_file *af);
LDM_API void ldm_atomic_abort(ldm_atomic_file *af);

#ifdef __cplusplus
}
#endif
#ifdef LDM_CUDA
#include "ldm_cuda.cuh" /* the CUDA back end's declarations (plain C) */
#endif
#endif /* LDM_TENSOR_H */

/* ========================================================================================== */
/*                                      IMPLEMENTATION                                        */
/* ========================================================================================== */
#if defined(LDM_IMPLEMENTATION) || defined(LDM_TENSOR_IMPLEMENTATION)
#ifndef LDM_TENSOR_IMPLEMENTATION_DONE
#define LDM_TENSOR_IMPLEMENTATION_DONE

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifndef LDM_NO_THREADS
#include <pthread.h>
#include <unistd.h>
#endif
#if ((defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))) || defined(__AVX2__) || \
    defined(__AVX512F__)
#include <immintrin.h> /* GCC and Clang declare every intrinsic; functions enable them by target */
#endif

#if defined(LDM_MALLOC) && defined(LDM_REALLOC) && defined(LDM_FREE)
/* all three hooks given: zeroed blocks are allocated, then filled */
#elif !defined(LDM_MALLOC) && !defined(LDM_REALLOC) && !defined(LDM_FREE)
#define LDM_MALLOC(sz) malloc(sz)
#define LDM_REALLOC(p, sz) realloc(p, sz)
#define LDM_FREE(p) free(p)
#define LDM__CALLOC(sz) calloc(1, sz) /* large blocks: the OS's zero pages, touched only when used */
#else
#error "Define all of LDM_MALLOC, LDM_REALLOC and LDM_FREE, or none of them."
#endif

#ifndef LDM_ASSERT
#define LDM_ASSERT(c) ((c) ? (void)0 : ldm__assert_fail(#c, __FILE__, __LINE__))
static void ldm__assert_fail(const char *what, const char *file, int line) {
    fprintf(stderr, "%s:%d: ldm.h internal assertion failed: %s\n", file, line, what);
    abort();
}
#endif

#ifdef __cplusplus
#define LDM_RESTRICT __restrict
#else
#define LDM_RESTRICT restrict
#endif
#define LDM__MIN(a, b) ((a) < (b) ? (a) : (b))
#define LDM__MAX(a, b) ((a) > (b) ? (a) : (b))
#define LDM__ALIGN 64
#define LDM__ALIGN_UP(x) (((x) + (LDM__ALIGN - 1)) & ~(size_t)(LDM__ALIGN - 1))

/* ---- the backend table: every op dispatches its kernels through one of these ------------- */
/* Unary element-wise ops share one kernel pair selected by this code. */
typedef enum {
    LDM__U_AFFINE, LDM__U_POW, LDM__U_EXP, LDM__U_LOG, LDM__U_SQRT, LDM__U_ABS, LDM__U_SQUARE,
    LDM__U_CLAMP, LDM__U_SIGMOID, LDM__U_SILU, LDM__U_RELU, LDM__U_LEAKY, LDM__U_TANH,
    LDM__U_GELU, LDM__U_GELU_TANH, LDM__U_SOFTPLUS, LDM__U_SIN, LDM__U_COS,
    LDM__U_STEP /* (x >= p0) ? p1 : 0, for masks; no gradient */
} ldm__unary_op;
typedef enum { LDM__B_ADD, LDM__B_SUB, LDM__B_MUL, LDM__B_DIV } ldm__binary_op;

/* Broadcast geometry of a binary op, padded to 5 dims (stride 0 = broadcast). */
typedef struct ldm__bcast { int64_t shape[LDM_MAX_DIMS], sa[LDM_MAX_DIMS], sb[LDM_MAX_DIMS]; int64_t n; } ldm__bcast;

struct ldm_backend {
    const char *name;
    void *(*alloc)(void *state, size_t bytes);                /* persistent memory */
    void (*free)(void *state, void *p);
    void (*copy)(void *state, void *dst, ldm_device dd, const void *src, ldm_device sd, size_t bytes);
    void (*fill)(ldm_ctx *ctx, float *out, int64_t n, float v);
    void (*rng)(ldm_ctx *ctx, float *out, int64_t n, uint64_t seed, uint64_t offset, int normal, float a, float b);
    void (*unary)(ldm_ctx *ctx, ldm__unary_op op, float *out, const float *x, int64_t n, float p0, float p1);
    void (*unary_backward)(ldm_ctx *ctx, ldm__unary_op op, float *dx, const float *dy, const float *x,
                           const float *y, int64_t n, float p0, float p1);
    void (*binary)(ldm_ctx *ctx, ldm__binary_op op, float *out, const float *a, const float *b, const ldm__bcast *g);
    /* da/db (either may be NULL): += the gradient of a/b at the broadcast shape (contiguous,
       g->n elements); the caller reduces broadcast operands to their own shapes. */
    void (*binary_backward)(ldm_ctx *ctx, ldm__binary_op op, float *da, float *db, const float *dy,
                            const float *a, const float *b, const ldm__bcast *g);
    /* out[o] (+)= sum of contiguous x (5-D shape) over the dims where ostride is 0 */
    void (*reduce_sum)(ldm_ctx *ctx, float *out, const float *x, const int64_t *shape, const int64_t *ostride, int accumulate);
    /* dst[i . dstride] (+)= src[i . sstride] for every index i of the 5-D shape: permute, slice,
       concat, pad and broadcast (stride 0) are all this one kernel */
    void (*strided_copy)(ldm_ctx *ctx, float *dst, const int64_t *dstride, const float *src, const int64_t *sstride,
                         const int64_t *shape, int accumulate);
    void (*axpby)(ldm_ctx *ctx, float *y, const float *x, int64_t n, float a, float b); /* y = a*y + b*x */
    void (*sgemm)(ldm_ctx *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                  int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
    void (*conv_forward)(ldm_ctx *ctx, float *out, const float *inp, const float *w, const float *b, const ldm_conv_desc *d);
    void (*conv_backward)(ldm_ctx *ctx, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                          const float *w, const ldm_conv_desc *d);
    /* silu: out = silu(z) instead of z = groupnorm(x); the backward then recomputes z from inp,
       mean, rstd, w and b (b is read only then) and back-propagates dout * silu'(z) */
    void (*groupnorm_forward)(ldm_ctx *ctx, float *out, float *mean, float *rstd, const float *inp, const float *w,
                              const float *b, int64_t B, int64_t C, int64_t S, int G, float eps, int silu);
    void (*groupnorm_backward)(ldm_ctx *ctx, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                               const float *w, const float *b, const float *mean, const float *rstd, int64_t B, int64_t C,
                               int64_t S, int G, int silu);
    /* per-channel statistics over B and S (biased variance) */
    void (*channel_stats)(ldm_ctx *ctx, float *mean, float *var, const float *x, int64_t B, int64_t C, int64_t S);
    /* out = (x - mean[c]) * rstd[c] * w[c] + b[c] */
    void (*channel_affine)(ldm_ctx *ctx, float *out, const float *x, const float *mean, const float *rstd,
                           const float *w, const float *b, int64_t B, int64_t C, int64_t S);
    void (*batchnorm_backward)(ldm_ctx *ctx, float *dinp, float *dw, float *db, const float *dout, const float *x,
                               const float *w, const float *mean, const float *rstd, int64_t B, int64_t C, int64_t S, int training);
    void (*layernorm_forward)(ldm_ctx *ctx, float *out, float *mean, float *rstd, const float *x, const float *w,
                              const float *b, int64_t R, int64_t N, float eps);
    void (*layernorm_backward)(ldm_ctx *ctx, float *dx, float *dw, float *db, const float *dy, const float *x,
                               const float *w, const float *mean, const float *rstd, int64_t R, int64_t N);
    void (*softmax_forward)(ldm_ctx *ctx, float *y, const float *x, int64_t outer, int64_t D, int64_t inner);
    void (*softmax_backward)(ldm_ctx *ctx, float *dx, const float *dy, const float *y, int64_t outer, int64_t D, int64_t inner);
    /* pooling on [B*C, T, H, W] planes; avg counts padding; max saves argmax (as float index) */
    void (*pool_forward)(ldm_ctx *ctx, float *out, float *arg, const float *x, int64_t P, const int64_t *in3,
                         const int64_t *out3, const int *k3, const int *s3, const int *p3, int is_max);
    void (*pool_backward)(ldm_ctx *ctx, float *dx, const float *dy, const float *arg, int64_t P, const int64_t *in3,
                          const int64_t *out3, const int *k3, const int *s3, const int *p3, int is_max);
    /* nearest upsampling of [P, T, H, W] planes by integer factors f3 */
    void (*upsample_forward)(ldm_ctx *ctx, float *out, const float *x, int64_t P, const int64_t *in3, const int *f3);
    void (*upsample_backward)(ldm_ctx *ctx, float *dx, const float *dy, int64_t P, const int64_t *in3, const int *f3);
    void (*embedding_forward)(ldm_ctx *ctx, float *out, const float *w, const int64_t *idx, int64_t n, int64_t dim);
    void (*embedding_backward)(ldm_ctx *ctx, float *dw, const float *dout, const int64_t *idx, int64_t n, int64_t dim);
    /* Attention over token-major q [B, Sq, H*D] and k, v [B, Sk, H*D] (head h: channels h*D..):
       out [B, Sq, H*D] = softmax(scale * q_h k_h^T) v_h per head, lse [B, H, Sq] = the log-sum-exp
       of each row of scaled scores. Never holds more than a block of the Sq x Sk scores. */
    void (*attn_forward)(ldm_ctx *ctx, float *out, float *lse, const float *q, const float *k, const float *v,
                         int64_t B, int64_t H, int64_t Sq, int64_t Sk, int64_t D, float scale);
    /* dq, dk, dv (each may be NULL, and they may be one buffer when q, k, v are one tensor) +=
       the gradients, recomputing the probabilities from q, k and lse */
    void (*attn_backward)(ldm_ctx *ctx, float *dq, float *dk, float *dv, const float *dout, const float *out,
                          const float *lse, const float *q, const float *k, const float *v, int64_t B, int64_t H,
                          int64_t Sq, int64_t Sk, int64_t D, float scale);
    /* idx[r] = argmin over the K entries of row r of x (rows x K, contiguous); idx on x's device */
    void (*argmin_rows)(ldm_ctx *ctx, int64_t *idx, const float *x, int64_t rows, int64_t K);
    /* ldm_nn.h's optimizers and gradient clipping, through ldm_device_optim_update and
       ldm_device_sum_squares (a back end without them, NULL, gives LDM_ERR_UNSUPPORTED there);
       release is optional: ldm_ctx_destroy calls it so a device back end can free what it attached. */
    void (*optim_step)(ldm_ctx *ctx, const ldm_optim_args *a, float *p, const float *g, float *m, float *v, int64_t n);
    double (*sum_squares)(ldm_ctx *ctx, const float *x, int64_t n); /* sum of x[i]^2, in double */
    void (*release)(ldm_ctx *ctx, void *state);
};

/* ---- the context ------------------------------------------------------------------------ */
typedef struct ldm__node ldm__node;
typedef void (*ldm__backward_fn)(ldm_ctx *ctx, ldm__node *nd, float *dout, float **din);
/* What a node keeps for its backward besides its tensors: one struct per op family (the op
   that records the node fills its member, its backward reads the same one). */
typedef union ldm__node_args {
    struct { ldm__unary_op op; float p0, p1; } unary;
    struct { ldm__binary_op op; ldm__bcast g; } binary;          /* g: the broadcast geometry */
    struct { unsigned dims; float scale; } reduce;               /* reduced-dim mask; 1/count for a mean, else 1 */
    struct { int64_t batch[2], M, N, K, sa[2], sb[2]; int trans_a, trans_b; } matmul; /* sa, sb: strides per batch dim, 0 broadcasts */
    struct { int64_t B, Sq, Sk, heads, D; float scale; } attention;  /* saved: lse [B, heads, Sq] */
    struct { int64_t R, I, O; } linear;                          /* rows, in and out features */
    ldm_conv_desc conv;
    struct { int64_t B, C, S; int groups, silu; } groupnorm;     /* saved: mean, saved2: rstd [B*groups] */
    struct { ldm_conv_desc conv; int groups; float eps; } gnconv; /* saved: mean, saved2: rstd [B*groups] */
    struct { int64_t B, C, S; int training; } batchnorm;         /* saved: mean, saved2: rstd [C] */
    struct { int64_t R, N; } layernorm;                          /* saved: mean, saved2: rstd [R] */
    struct { int64_t outer, D, inner; } softmax;
    struct { int64_t P, in3[3]; int f3[3]; } upsample;           /* P planes of in3 = (T,H,W); factors */
    struct { int64_t P, in3[3], out3[3]; int k3[3], s3[3], p3[3], is_max; } pool; /* saved: argmax */
    struct { int64_t perm[LDM_MAX_DIMS]; } permute;
    struct { int dim; int64_t start; } slice;
    struct { int dim; int64_t off[4]; } concat;                  /* where each input starts along dim */
    struct { int64_t lo[LDM_MAX_DIMS]; } pad;                    /* padding before each dim */
    struct { int64_t n, dim; } embedding;                        /* saved: the indices (int64, on the device) */
} ldm__node_args;
struct ldm__node {
    ldm__backward_fn backward;
    ldm_tensor *out;
    ldm_tensor *in[5];
    int nin;
    ldm__node_args args;
    void *saved;              /* arena buffers the forward computed for the backward */
    void *saved2;
};

typedef struct ldm__arena { unsigned char *base; size_t used, peak, limit; } ldm__arena;

#ifndef LDM_NO_THREADS
typedef struct ldm__pool {
    int n;                    /* threads including the caller */
    pthread_t *th;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    uint64_t gen;
    int pending, quit, busy;
    ldm_task_fn fn;
    void *arg;
    int64_t n_items, chunk;
    int n_tasks;
} ldm__threadpool;
#endif

struct ldm_ctx {
    ldm_settings s;
    int threads;
    ldm_result status;
    char err[2048];
    ldm_rng rng;
    int shard_rank, shard_world;  /* ldm_ctx_set_shard */
    ldm_grad_ready_fn grad_ready;
    void *grad_ready_user;
    ldm__arena arena[LDM_NUM_DEVICES];
    const ldm_backend *be[LDM_NUM_DEVICES];
    void *be_state[LDM_NUM_DEVICES];
    int grad_enabled;
    ldm__node *tape;
    int tape_len, tape_cap;
    ldm_tensor **arena_grads;     /* leaves whose .grad ldm_backward took from the arena */
    int n_arena_grads, cap_arena_grads;
    void *gemm_buf;           /* SGEMM packing buffers (per thread), grown on demand */
    const struct ldm__gemm_kernel *gemm_kernel; /* the SGEMM micro-kernel for this CPU */
    size_t gemm_buf_bytes;
#ifndef LDM_NO_THREADS
    ldm__threadpool pool;
#endif
};

static const ldm_backend *ldm__cpu_backend_get(void); /* defined after the CPU kernels */

LDM_API const char *ldm_result_name(ldm_result r) {
    switch (r) {
    case LDM_OK: return "ok";
    case LDM_ERR_INVALID: return "invalid argument";
    case LDM_ERR_NOMEM: return "out of memory";
    case LDM_ERR_IO: return "I/O error";
    case LDM_ERR_FORMAT: return "malformed file";
    case LDM_ERR_NOT_FOUND: return "not found";
    case LDM_ERR_UNSUPPORTED: return "unsupported";
    case LDM_ERR_NUMERIC: return "numeric error";
    case LDM_ERR_DEVICE: return "device error";
    case LDM_ERR_INTERRUPTED: return "interrupted";
    }
    return "unknown error";
}

LDM_API ldm_result ldm_ctx_seterr(ldm_ctx *ctx, ldm_result code, const char *fmt, ...) {
    if (!ctx || ctx->status != LDM_OK) return code; /* the first error is the cause; keep it */
    ctx->status = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->err, sizeof ctx->err, fmt, ap);
    va_end(ap);
    return code;
}
LDM_API ldm_result ldm_ctx_status(const ldm_ctx *ctx) { return ctx->status; }
LDM_API const char *ldm_ctx_error(const ldm_ctx *ctx) { return ctx->err; }
LDM_API void ldm_ctx_clear_error(ldm_ctx *ctx) { ctx->status = LDM_OK; ctx->err[0] = 0; }
LDM_API ldm_rng *ldm_ctx_rng(ldm_ctx *ctx) { return &ctx->rng; }
LDM_API ldm_device ldm_ctx_device(const ldm_ctx *ctx) { return ctx->s.device; }
LDM_API void ldm_ctx_set_device(ldm_ctx *ctx, ldm_device d) { LDM_ASSERT(ctx->be[d] != NULL); ctx->s.device = d; }
LDM_API void ldm_ctx_set_backend(ldm_ctx *ctx, ldm_device d, const ldm_backend *be, void *state) {
    ctx->be[d] = be;
    ctx->be_state[d] = state;
}
LDM_API void *ldm_ctx_backend_state(const ldm_ctx *ctx, ldm_device d) { return ctx->be_state[d]; }

/* ---- raw memory on a device: the back end of the device does the work ------------------ */
LDM_API const char *ldm_device_name(const ldm_ctx *ctx, ldm_device d) {
    return (int)d >= 0 && d < LDM_NUM_DEVICES && ctx->be[d] ? ctx->be[d]->name : NULL;
}
LDM_API void *ldm_device_alloc(ldm_ctx *ctx, ldm_device d, size_t bytes) { return ctx->be[d]->alloc(ctx->be_state[d], bytes); }
LDM_API void ldm_device_free(ldm_ctx *ctx, ldm_device d, void *p) { if (p) ctx->be[d]->free(ctx->be_state[d], p); }
static void *ldm__cpu_alloc(void *st, size_t n);
LDM_API void *ldm_device_alloc_zeroed(ldm_ctx *ctx, ldm_device d, size_t bytes) {
#ifdef LDM__CALLOC
    /* the CPU back end allocates with LDM_MALLOC and frees with LDM_FREE, i.e. malloc/free here */
    if (d == LDM_CPU && ctx->be[d]->alloc == ldm__cpu_alloc) return LDM__CALLOC(bytes ? bytes : 1);
#endif
    void *p = ldm_device_alloc(ctx, d, bytes);
    if (p && bytes) {
        /* whole floats, then the tail bytes on the host when the size is not a multiple of 4 */
        ldm_device_fill(ctx, d, (float *)p, (int64_t)(bytes / sizeof(float)), 0.0f);
        if (bytes % sizeof(float) && d == LDM_CPU) memset((char *)p + bytes / sizeof(float) * sizeof(float), 0, bytes % sizeof(float));
    }
    return p;
}
LDM_API void ldm_device_copy(ldm_ctx *ctx, void *dst, ldm_device dst_dev, const void *src, ldm_device src_dev, size_t bytes) {
    ldm_device d = dst_dev != LDM_CPU ? dst_dev : src_dev; /* a copy involving a device is that device's */
    ctx->be[d]->copy(ctx->be_state[d], dst, dst_dev, src, src_dev, bytes);
}
LDM_API void ldm_device_fill(ldm_ctx *ctx, ldm_device d, float *x, int64_t n, float v) { if (n) ctx->be[d]->fill(ctx, x, n, v); }
/* x*s + (-0.0) is x*s bitwise, signed zeros included (+0.0 would turn -0.0 into +0.0) */
LDM_API void ldm_device_scale(ldm_ctx *ctx, ldm_device d, float *x, int64_t n, float s) {
    if (n) ctx->be[d]->unary(ctx, LDM__U_AFFINE, x, x, n, s, -0.0f);
}
LDM_API double ldm_device_sum_squares(ldm_ctx *ctx, ldm_device d, const float *x, int64_t n) {
    if (ctx->status || n <= 0) return 0.0;
    if (!ctx->be[d]->sum_squares) {
        ldm_ctx_seterr(ctx, LDM_ERR_UNSUPPORTED, "ldm_device_sum_squares: the %s back end has no sum_squares kernel (hint: keep the parameters on LDM_CPU)", ctx->be[d]->name);
        return 0.0;
    }
    return ctx->be[d]->sum_squares(ctx, x, n);
}
LDM_API void ldm_device_optim_update(ldm_ctx *ctx, ldm_device d, const ldm_optim_args *a, float *p, const float *g,
                                     float *m, float *v, int64_t n) {
    if (ctx->status || n <= 0) return;
    if (!ctx->be[d]->optim_step) {
        ldm_ctx_seterr(ctx, LDM_ERR_UNSUPPORTED, "ldm_device_optim_update: the %s back end has no optimizer kernel (hint: keep the parameters on LDM_CPU)", ctx->be[d]->name);
        return;
    }
    ctx->be[d]->optim_step(ctx, a, p, g, m, v, n);
}
LDM_API int ldm_grad_enabled(const ldm_ctx *ctx) { return ctx->grad_enabled; }
LDM_API int ldm_set_grad_enabled(ldm_ctx *ctx, int on) { int p = ctx->grad_enabled; ctx->grad_enabled = on; return p; }
LDM_API void ldm_set_grad_ready_hook(ldm_ctx *ctx, ldm_grad_ready_fn fn, void *user) {
    ctx->grad_ready = fn;
    ctx->grad_ready_user = user;
}
LDM_API int ldm_tape_len(const ldm_ctx *ctx) { return ctx->tape_len; }

/* ---- thread pool -------------------------------------------------------------------------
   A fixed set of workers woken per parallel region; the caller runs task 0. Regions do not
   nest: a region started from inside one runs on the calling thread. */
#ifndef LDM_NO_THREADS
typedef struct { ldm_ctx *ctx; int tid; } ldm__worker_arg;

static void ldm__pool_run_task(ldm__threadpool *p, int t) {
    int64_t b = (int64_t)t * p->chunk, e = LDM__MIN(p->n_items, b + p->chunk);
    if (b < e) p->fn(p->arg, b, e, t);
}

static void *ldm__pool_worker(void *arg) {
    ldm__worker_arg *wa = (ldm__worker_arg *)arg;
    ldm__threadpool *p = &wa->ctx->pool;
    int tid = wa->tid;
    LDM_FREE(wa);
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->gen == seen && !p->quit) pthread_cond_wait(&p->go, &p->mu);
        if (p->quit) break;
        seen = p->gen;
        int run = tid < p->n_tasks;
        pthread_mutex_unlock(&p->mu);
        if (run) ldm__pool_run_task(p, tid);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void ldm__pool_stop(ldm_ctx *ctx) {
    ldm__threadpool *p = &ctx->pool;
    if (p->n <= 1) return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n; i++) pthread_join(p->th[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    LDM_FREE(p->th);
    memset(p, 0, sizeof *p);
    p->n = 1;
}

static void ldm__pool_start(ldm_ctx *ctx, int n) {
    ldm__threadpool *p = &ctx->pool;
    memset(p, 0, sizeof *p);
    p->n = 1;
    if (n <= 1) return;
    p->th = (pthread_t *)LDM_MALLOC(sizeof(pthread_t) * (size_t)n);
    if (!p->th) return;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    for (int i = 1; i < n; i++) {
        ldm__worker_arg *wa = (ldm__worker_arg *)LDM_MALLOC(sizeof *wa);
        if (!wa) break;
        wa->ctx = ctx;
        wa->tid = i;
        if (pthread_create(&p->th[i], NULL, ldm__pool_worker, wa) != 0) { LDM_FREE(wa); break; }
        p->n = i + 1;
    }
}
#endif

LDM_API void ldm_parallel_for(ldm_ctx *ctx, int64_t n, int64_t grain, ldm_task_fn fn, void *arg) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
#ifndef LDM_NO_THREADS
    ldm__threadpool *p = &ctx->pool;
    int64_t tasks = (n + grain - 1) / grain;
    if (tasks > p->n) tasks = p->n;
    if (tasks > 1 && !p->busy) {
        p->busy = 1;
        pthread_mutex_lock(&p->mu);
        p->fn = fn;
        p->arg = arg;
        p->n_items = n;
        p->n_tasks = (int)tasks;
        p->chunk = (n + tasks - 1) / tasks;
        p->pending = p->n - 1;
        p->gen++;
        pthread_cond_broadcast(&p->go);
        pthread_mutex_unlock(&p->mu);
        ldm__pool_run_task(p, 0);
        pthread_mutex_lock(&p->mu);
        while (p->pending > 0) pthread_cond_wait(&p->done, &p->mu);
        pthread_mutex_unlock(&p->mu);
        p->busy = 0;
        return;
    }
#endif
    fn(arg, 0, n, 0);
}

LDM_API int ldm_ctx_threads(const ldm_ctx *ctx) { return ctx->threads; }
LDM_API void ldm_ctx_set_conv_algo(ldm_ctx *ctx, int algo) {
    LDM_ASSERT(algo >= LDM_CONV_AUTO && algo <= LDM_CONV_FAST);
    ctx->s.conv_algo = algo;
}
LDM_API void ldm_ctx_set_threads(ldm_ctx *ctx, int n) {
    if (n < 1) n = 1;
#ifndef LDM_NO_THREADS
    ldm__pool_stop(ctx);
    ldm__pool_start(ctx, n);
    ctx->threads = ctx->pool.n;
#else
    ctx->threads = 1;
#endif
}

/* ---- context life cycle ---------------------------------------------------------------- */
static size_t ldm__default_arena_bytes(void) {
    const char *e = getenv("LDM_ARENA_MB");
    if (e && atol(e) > 0) return (size_t)atol(e) << 20;
    size_t ram = (size_t)4 << 30;
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    if (pages > 0 && psz > 0) ram = (size_t)pages * (size_t)psz;
#endif
    return ram / 2;
}

#ifndef LDM_BLAS
static const struct ldm__gemm_kernel *ldm__gemm_pick(const char *want);
#endif
LDM_API ldm_result ldm_ctx_create(ldm_ctx **out, const ldm_settings *settings) {
    *out = NULL;
    if (settings && (settings->conv_algo < LDM_CONV_AUTO || settings->conv_algo > LDM_CONV_FAST)) return LDM_ERR_INVALID;
    int conv_algo = settings ? settings->conv_algo : LDM_CONV_AUTO;
    const char *ce = conv_algo == LDM_CONV_AUTO ? getenv("LDM_CONV") : NULL;
    if (ce && *ce) {
        static const char *const names[] = {"auto", "im2col", "winograd", "winograd4", "fast"};
        int k = 0;
        while (k < 5 && strcmp(ce, names[k])) k++;
        if (k == 5) {
            fprintf(stderr, "ldm_ctx_create: LDM_CONV=%s is not one of auto, im2col, winograd, winograd4, fast\n", ce);
            return LDM_ERR_INVALID;
        }
        conv_algo = k;
    }
    ldm_ctx *ctx = (ldm_ctx *)LDM_MALLOC(sizeof *ctx);
    if (!ctx) return LDM_ERR_NOMEM;
    memset(ctx, 0, sizeof *ctx);
    if (settings) ctx->s = *settings;
    ctx->s.conv_algo = conv_algo;
    ctx->s.device = LDM_CPU; /* a device backend switches it after attaching */
    ctx->rng.seed = ctx->s.seed;
    ctx->grad_enabled = 1;
    ctx->be[LDM_CPU] = ldm__cpu_backend_get();
#ifndef LDM_BLAS
    ctx->gemm_kernel = ldm__gemm_pick(getenv("LDM_CPU_KERNEL"));
#endif
    int threads = ctx->s.threads;
    if (threads <= 0) {
        const char *e = getenv("LDM_THREADS");
        threads = e ? atoi(e) : 0;
    }
#if !defined(LDM_NO_THREADS) && defined(_SC_NPROCESSORS_ONLN)
    if (threads <= 0) threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
#endif
    if (threads <= 0) threads = 1;
    /* The CPU arena reserves address space once; the OS commits pages as they are touched. */
    size_t want = ctx->s.arena_bytes ? ctx->s.arena_bytes : ldm__default_arena_bytes();
    ldm__arena *a = &ctx->arena[LDM_CPU];
    for (size_t sz = want; sz >= ((size_t)64 << 20) || sz == want; sz /= 2) {
        a->base = (unsigned char *)LDM_MALLOC(sz + LDM__ALIGN);
        if (a->base) { a->limit = sz; break; }
        if (sz < ((size_t)64 << 20)) break;
    }
    if (!a->base) { LDM_FREE(ctx); return LDM_ERR_NOMEM; }
    ctx->threads = 1;
#ifndef LDM_NO_THREADS
    ldm__pool_start(ctx, threads);
    ctx->threads = ctx->pool.n;
#endif
    *out = ctx;
    return LDM_OK;
}

LDM_API void ldm_ctx_destroy(ldm_ctx *ctx) {
    if (!ctx) return;
    for (int d = 0; d < LDM_NUM_DEVICES; d++)
        if (d != LDM_CPU && ctx->be[d] && ctx->be[d]->release) ctx->be[d]->release(ctx, ctx->be_state[d]);
#ifndef LDM_NO_THREADS
    ldm__pool_stop(ctx);
#endif
    LDM_FREE(ctx->arena[LDM_CPU].base);
    LDM_FREE(ctx->tape);
    LDM_FREE(ctx->arena_grads);
    LDM_FREE(ctx->gemm_buf);
    LDM_FREE(ctx);
}

/* ---- arena ------------------------------------------------------------------------------ */
static unsigned char *ldm__arena_base(ldm__arena *a) {
    return (unsigned char *)(((uintptr_t)a->base + (LDM__ALIGN - 1)) & ~(uintptr_t)(LDM__ALIGN - 1));
}

/* "123 bytes", "4.0 KiB", "1.5 MiB", "2.00 GiB": small requests must not print as 0.0 MiB */
typedef struct { char s[32]; } ldm__bytes_str;
static ldm__bytes_str ldm__bytes(size_t n) {
    ldm__bytes_str b;
    if (n < 1024) snprintf(b.s, sizeof b.s, "%zu bytes", n);
    else if (n < ((size_t)1 << 20)) snprintf(b.s, sizeof b.s, "%.1f KiB", n / 1024.0);
    else if (n < ((size_t)1 << 30)) snprintf(b.s, sizeof b.s, "%.1f MiB", n / 1048576.0);
    else snprintf(b.s, sizeof b.s, "%.2f GiB", n / 1073741824.0);
    return b;
}

LDM_API void *ldm_arena_alloc(ldm_ctx *ctx, ldm_device d, size_t bytes) {
    ldm__arena *a = &ctx->arena[d];
    size_t need = LDM__ALIGN_UP(bytes ? bytes : 1);
    if (!a->base) {
        ldm_ctx_seterr(ctx, LDM_ERR_DEVICE, "no arena for device %d: attach its backend first", (int)d);
        return NULL;
    }
    if (need > a->limit - a->used || need < bytes) {
        ldm_ctx_seterr(ctx, LDM_ERR_NOMEM,
                       "step arena full: needed %s more, %s of %s in use, %s free "
                       "(hint: raise ldm_settings.arena_bytes or LDM_ARENA_MB, or lower the batch/tile size)",
                       ldm__bytes(bytes).s, ldm__bytes(a->used).s, ldm__bytes(a->limit).s, ldm__bytes(a->limit - a->used).s);
        return NULL;
    }
    void *p = ldm__arena_base(a) + a->used;
    a->used += need;
    if (a->used > a->peak) a->peak = a->used;
    return p;
}

LDM_API ldm_mark ldm_arena_mark(const ldm_ctx *ctx) {
    ldm_mark m;
    for (int d = 0; d < LDM_NUM_DEVICES; d++) m.used[d] = ctx->arena[d].used;
    m.tape_len = ctx->tape_len;
    return m;
}
/* Leaves whose .grad ldm_backward took from the arena at or above `from` (of their device's
   arena) lose it: the memory is about to be reused, and a persistent leaf (ldm_tensor_wrap)
   would otherwise accumulate into it on the next step. Only leaves recorded when the buffer
   was handed out are touched (never, say, a model's parameters, which may be gone by now);
   such a leaf must outlive the step. */
static void ldm__drop_arena_grads(ldm_ctx *ctx, const size_t from[LDM_NUM_DEVICES]) {
    int k = 0;
    for (int i = 0; i < ctx->n_arena_grads; i++) {
        ldm_tensor *t = ctx->arena_grads[i];
        ldm__arena *a = &ctx->arena[t->device];
        unsigned char *g = (unsigned char *)t->grad, *base = ldm__arena_base(a), *lo = base + from[t->device];
        if (!g || !a->base || g < base || g >= base + a->limit) continue; /* the caller cleared or replaced it: forget the leaf */
        if (g >= lo) t->grad = NULL;
        else ctx->arena_grads[k++] = t; /* below the rewind point: still live */
    }
    ctx->n_arena_grads = k;
}
LDM_API void ldm_arena_rewind(ldm_ctx *ctx, ldm_mark m) {
    size_t from[LDM_NUM_DEVICES];
    for (int d = 0; d < LDM_NUM_DEVICES; d++) from[d] = m.used[d] <= ctx->arena[d].used ? m.used[d] : ctx->arena[d].limit;
    ldm__drop_arena_grads(ctx, from);
    for (int d = 0; d < LDM_NUM_DEVICES; d++) if (m.used[d] <= ctx->arena[d].used) ctx->arena[d].used = m.used[d];
    if (m.tape_len <= ctx->tape_len) ctx->tape_len = m.tape_len;
}
LDM_API size_t ldm_arena_used(const ldm_ctx *ctx, ldm_device d) { return ctx->arena[d].used; }
LDM_API size_t ldm_arena_peak(const ldm_ctx *ctx, ldm_device d) { return ctx->arena[d].peak; }
LDM_API void ldm_arena_reset_peak(ldm_ctx *ctx) {
    for (int d = 0; d < LDM_NUM_DEVICES; d++) ctx->arena[d].peak = ctx->arena[d].used;
}
LDM_API size_t ldm_arena_limit(const ldm_ctx *ctx, ldm_device d) { return ctx->arena[d].limit; }
LDM_API void ldm_step_reset(ldm_ctx *ctx) {
    size_t from[LDM_NUM_DEVICES] = {0};
    ldm__drop_arena_grads(ctx, from);
    for (int d = 0; d < LDM_NUM_DEVICES; d++) ctx->arena[d].used = 0;
    ctx->tape_len = 0;
}

/* ---- half precision --------------------------------------------------------------------- */
LDM_API float ldm_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000u | (man << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
LDM_API uint16_t ldm_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to inf */
    if (ax < 0x38800000u) { /* subnormal or zero in half */
        if (ax < 0x33000000u) return (uint16_t)sign;
        /* value = m * 2^(e-150); in units of the half subnormal step 2^-24 that is m >> (126-e) */
        uint32_t e = ax >> 23, m = (ax & 0x7fffff) | 0x800000;
        int shift = 126 - (int)e; /* 14..24 */
        uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t e = (ax >> 23) - 127 + 15, m = ax & 0x7fffff;
    uint32_t q = (e << 10) | (m >> 13), rem = m & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (q & 1))) q++;
    return (uint16_t)(sign | q);
}
LDM_API float ldm_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
LDM_API uint16_t ldm_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40); /* quiet NaN */
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}
LDM_API size_t ldm_dtype_size(ldm_dtype t) { return t == LDM_F32 ? 4 : 2; }
LDM_API const char *ldm_dtype_name(ldm_dtype t) { return t == LDM_F32 ? "F32" : t == LDM_F16 ? "F16" : "BF16"; }

/* ---- RNG: Philox4x32-10 ------------------------------------------------------------------
   The generator and the transforms below are shared with the CUDA back end (LDM__HD), and
   the normal transform uses only IEEE +, -, *, / and sqrt in double (no libm, whose last bits
   differ between glibc and CUDA), with contraction into fused multiply-adds ruled out on the
   device: element i of a draw is the same float on every device. (Host compilers contract
   only when asked to: GCC does not in ISO C mode, nor on x86-64 without -mfma.) */
#if defined(__CUDACC__)
#define LDM__HD __host__ __device__
#else
#define LDM__HD
#endif
#if defined(__CUDA_ARCH__)
#define LDM__FMUL(a, b) __fmul_rn((a), (b))
#define LDM__FADD(a, b) __fadd_rn((a), (b))
#define LDM__DMUL(a, b) __dmul_rn((a), (b))
#define LDM__DADD(a, b) __dadd_rn((a), (b))
#else
#define LDM__FMUL(a, b) ((a) * (b))
#define LDM__FADD(a, b) ((a) + (b))
#define LDM__DMUL(a, b) ((a) * (b))
#define LDM__DADD(a, b) ((a) + (b))
#endif
LDM__HD static void ldm__philox(uint64_t key, uint64_t ctr, uint32_t out[4]) {
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    uint32_t c0 = (uint32_t)ctr, c1 = (uint32_t)(ctr >> 32), c2 = 0x9e3779b9u, c3 = 0x85a308d3u;
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1; c3 = (uint32_t)p0; c0 = n0; c2 = n2;
        k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}
/* ln(k / 2^24) for k in [1, 2^24]: k = m 2^e with m in [1/sqrt2, sqrt2), ln m = 2 atanh(s),
   s = (m-1)/(m+1), |s| < 0.172, by its series to s^23 (error below 1e-19). */
LDM__HD static double ldm__ln_u24(uint32_t k) {
    int e = 0;
    while ((k >> e) > 1) e++;
    double m = (double)k / (double)((uint32_t)1 << e); /* exact */
    if (m > 1.4142135623730951) { m *= 0.5; e++; }
    double s = (m - 1.0) / (m + 1.0), s2 = LDM__DMUL(s, s), p = 1.0 / 23;
    for (int q = 21; q >= 1; q -= 2) p = LDM__DADD(LDM__DMUL(p, s2), 1.0 / q);
    return LDM__DADD(LDM__DMUL((double)(e - 24), 0.69314718055994531), LDM__DMUL(2.0 * s, p));
}
/* Box-Muller on two 32-bit draws: r = sqrt(-2 ln U1), U1 in (0,1]; the angle 2 pi U2,
   U2 = k/2^24, is reduced exactly on k (quadrant, then reflection to [0, pi/4]) and its sine
   and cosine are Taylor series (error below 1e-17). */
LDM__HD static void ldm__box_muller(uint32_t u0, uint32_t u1, float *z0, float *z1) {
    double r = sqrt(LDM__DMUL(-2.0, ldm__ln_u24((u0 >> 8) + 1)));
    uint32_t k = u1 >> 8, q = k >> 22, rem = k & 0x3fffffu, refl = rem > (1u << 21);
    double x = LDM__DMUL((double)(refl ? (1u << 22) - rem : rem), 6.283185307179586 / 16777216.0), x2 = LDM__DMUL(x, x);
#define LDM__H(p, c) LDM__DADD(LDM__DMUL(p, x2), c)
    double sp = LDM__H(LDM__H(LDM__H(LDM__H(LDM__H(LDM__H(LDM__H(1.0 / 355687428096000.0, -1.0 / 1307674368000.0),
                1.0 / 6227020800.0), -1.0 / 39916800), 1.0 / 362880), -1.0 / 5040), 1.0 / 120), -1.0 / 6);
    double cp = LDM__H(LDM__H(LDM__H(LDM__H(LDM__H(LDM__H(LDM__H(1.0 / 20922789888000.0, -1.0 / 87178291200.0),
                1.0 / 479001600), -1.0 / 3628800), 1.0 / 40320), -1.0 / 720), 1.0 / 24), -1.0 / 2);
#undef LDM__H
    double sn = LDM__DADD(x, LDM__DMUL(LDM__DMUL(x, x2), sp)), cs = LDM__DADD(1.0, LDM__DMUL(x2, cp));
    if (refl) { double t = sn; sn = cs; cs = t; }   /* sin(pi/2 - x) = cos x */
    double c = q == 0 ? cs : q == 1 ? -sn : q == 2 ? -cs : sn, s = q == 0 ? sn : q == 1 ? cs : q == 2 ? -sn : -cs;
    *z0 = (float)LDM__DMUL(r, c);
    *z1 = (float)LDM__DMUL(r, s);
}
/* Element i of a draw at `offset` is lane i%4 of block offset/4 + i/4 ... offsets are kept
   multiples of 4 so every element has exactly one (block, lane). One block: normal a + b*z
   (Box-Muller on lane pairs (0,1) and (2,3)) or uniform a + (b-a)*u, u = k/2^24 in [0,1). */
LDM__HD static void ldm__rng_block(uint64_t seed, uint64_t block, int normal, float a, float b, float v[4]) {
    uint32_t u[4];
    ldm__philox(seed, block, u);
    if (normal) {
        ldm__box_muller(u[0], u[1], &v[0], &v[1]);
        ldm__box_muller(u[2], u[3], &v[2], &v[3]);
        for (int q = 0; q < 4; q++) v[q] = LDM__FADD(a, LDM__FMUL(b, v[q]));
    } else {
        for (int q = 0; q < 4; q++) v[q] = LDM__FADD(a, LDM__FMUL(b - a, (float)(u[q] >> 8) * (1.0f / 16777216.0f)));
    }
}

typedef struct { float *out; uint64_t seed, block0; int normal; float a, b; int64_t n; } ldm__rng_job;
static void ldm__rng_task(void *arg, int64_t b0, int64_t b1, int tid) {
    ldm__rng_job *j = (ldm__rng_job *)arg;
    (void)tid;
    for (int64_t blk = b0; blk < b1; blk++) {
        float v[4];
        ldm__rng_block(j->seed, j->block0 + (uint64_t)blk, j->normal, j->a, j->b, v);
        int64_t base = blk * 4;
        for (int q = 0; q < 4 && base + q < j->n; q++) j->out[base + q] = v[q];
    }
}
static void ldm__cpu_rng(ldm_ctx *ctx, float *out, int64_t n, uint64_t seed, uint64_t offset, int normal, float a, float b) {
    ldm__rng_job j;
    j.out = out; j.seed = seed; j.block0 = offset / 4; j.normal = normal; j.a = a; j.b = b; j.n = n;
    ldm_parallel_for(ctx, (n + 3) / 4, 4096, ldm__rng_task, &j);
}
static void ldm__rng_draw(ldm_ctx *ctx, ldm_rng *rng, ldm_device d, float *out, int64_t n, int normal, float a, float b) {
    ctx->be[d]->rng(ctx, out, n, rng->seed, rng->offset, normal, a, b);
    rng->offset += (uint64_t)((n + 3) / 4) * 4;
}
LDM_API void ldm_rng_normal(ldm_ctx *ctx, ldm_rng *rng, ldm_device d, float *out, int64_t n, float mean, float std) {
    ldm__rng_draw(ctx, rng, d, out, n, 1, mean, std);
}
LDM_API void ldm_rng_uniform(ldm_ctx *ctx, ldm_rng *rng, ldm_device d, float *out, int64_t n, float lo, float hi) {
    ldm__rng_draw(ctx, rng, d, out, n, 0, lo, hi);
}
LDM_API uint64_t ldm_rng_u64(ldm_rng *rng) {
    uint32_t u[4];
    ldm__philox(rng->seed, rng->offset / 4, u);
    rng->offset += 4;
    return ((uint64_t)u[0] << 32) | u[1];
}
LDM_API void ldm_ctx_set_shard(ldm_ctx *ctx, int rank, int world) {
    LDM_ASSERT(world >= 1 && rank >= 0 && rank < world);
    ctx->shard_rank = rank;
    ctx->shard_world = world;
}
LDM_API void ldm_rng_rows(ldm_ctx *ctx, ldm_rng *rng, ldm_device d, float *out, int64_t rows, int64_t rowlen, int normal,
                          float a, float b) {
    int W = ctx->shard_world > 1 ? ctx->shard_world : 1;
    if (W == 1 || rows <= 0 || rowlen <= 0) { ldm__rng_draw(ctx, rng, d, out, rows * rowlen, normal, a, b); return; }
    /* the whole job's draw in scratch, this rank's rows out of it (cheap next to any model) */
    ldm_mark mk = ldm_arena_mark(ctx);
    int64_t n = rows * W * rowlen;
    float *all = (float *)ldm_arena_alloc(ctx, d, (size_t)n * 4);
    if (!all) return;
    ldm__rng_draw(ctx, rng, d, all, n, normal, a, b);
    for (int64_t i = 0; i < rows; i++)
        ctx->be[d]->copy(ctx->be_state[d], out + i * rowlen, d, all + (i * W + ctx->shard_rank) * rowlen, d, (size_t)rowlen * 4);
    ldm_arena_rewind(ctx, mk);
}
LDM_API void ldm_rng_u64_rows(ldm_ctx *ctx, ldm_rng *rng, uint64_t *out, int64_t rows) {
    int W = ctx->shard_world > 1 ? ctx->shard_world : 1;
    for (int64_t i = 0; i < rows; i++) {
        ldm_rng r = *rng;
        r.offset += (uint64_t)(i * W + (W > 1 ? ctx->shard_rank : 0)) * 4;
        out[i] = ldm_rng_u64(&r);
    }
    rng->offset += (uint64_t)(rows * W) * 4;
}

/* ---- shapes ----------------------------------------------------------------------------- */
LDM_API ldm_shape ldm_shape_n(int ndim, const int64_t *d) {
    ldm_shape s;
    memset(&s, 0, sizeof s);
    LDM_ASSERT(ndim >= 0 && ndim <= LDM_MAX_DIMS);
    s.ndim = ndim;
    for (int i = 0; i < ndim; i++) s.d[i] = d[i];
    return s;
}
LDM_API ldm_shape ldm_shape1(int64_t a) { int64_t d[1] = {a}; return ldm_shape_n(1, d); }
LDM_API ldm_shape ldm_shape2(int64_t a, int64_t b) { int64_t d[2] = {a, b}; return ldm_shape_n(2, d); }
LDM_API ldm_shape ldm_shape3(int64_t a, int64_t b, int64_t c) { int64_t d[3] = {a, b, c}; return ldm_shape_n(3, d); }
LDM_API ldm_shape ldm_shape4(int64_t a, int64_t b, int64_t c, int64_t e) { int64_t d[4] = {a, b, c, e}; return ldm_shape_n(4, d); }
LDM_API ldm_shape ldm_shape5(int64_t a, int64_t b, int64_t c, int64_t e, int64_t f) {
    int64_t d[5] = {a, b, c, e, f};
    return ldm_shape_n(5, d);
}
LDM_API ldm_shape ldm_shape_of(const ldm_tensor *t) { return ldm_shape_n(t->ndim, t->shape); }
LDM_API int ldm_shape_eq(const ldm_tensor *a, const ldm_tensor *b) {
    if (a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++) if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}
static char *ldm__shape_fmt(const int64_t *d, int nd, char *buf, size_t n) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int i = 0; i < nd && k < n; i++) k += (size_t)snprintf(buf + k, n - k, i ? ", %lld" : "%lld", (long long)d[i]);
    if (k < n) snprintf(buf + k, n - k, "]");
    return buf;
}
LDM_API char *ldm_shape_str(const ldm_tensor *t, char *buf, size_t n) { return ldm__shape_fmt(t->shape, t->ndim, buf, n); }
LDM_API char *ldm_dims_str(const int64_t *d, int ndim, char *buf, size_t n) { return ldm__shape_fmt(d, ndim, buf, n); }
/* Several shape strings in one expression need separate buffers. */
typedef struct { char s[96]; } ldm__sbuf;
static ldm__sbuf ldm__shp(const ldm_tensor *t) { ldm__sbuf b; ldm_shape_str(t, b.s, sizeof b.s); return b; }

/* ---- tensors ---------------------------------------------------------------------------- */
static int ldm__shape_ok(ldm_ctx *ctx, ldm_shape s, int64_t *numel) {
    int64_t n = 1;
    if (s.ndim < 0 || s.ndim > LDM_MAX_DIMS) { ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "tensor rank %d is not in 0..%d", s.ndim, LDM_MAX_DIMS); return 0; }
    for (int i = 0; i < s.ndim; i++) {
        if (s.d[i] < 0 || (s.d[i] > 0 && n > INT64_MAX / 4 / s.d[i])) {
            char b[96];
            ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "invalid tensor shape %s", ldm__shape_fmt(s.d, s.ndim, b, sizeof b));
            return 0;
        }
        n *= s.d[i];
    }
    *numel = n;
    return 1;
}

static ldm_tensor *ldm__new_on(ldm_ctx *ctx, ldm_shape s, ldm_device dev) {
    int64_t n;
    if (ctx->status || !ldm__shape_ok(ctx, s, &n)) return NULL;
    ldm_tensor *t = (ldm_tensor *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(ldm_tensor));
    if (!t) return NULL;
    memset(t, 0, sizeof *t);
    t->data = (float *)ldm_arena_alloc(ctx, dev, (size_t)n * sizeof(float));
    if (!t->data) return NULL;
    t->ndim = s.ndim;
    for (int i = 0; i < s.ndim; i++) t->shape[i] = s.d[i];
    t->numel = n;
    t->device = dev;
    t->node = -1;
    return t;
}
LDM_API ldm_tensor *ldm_new(ldm_ctx *ctx, ldm_shape s) { return ldm__new_on(ctx, s, ctx->s.device); }
LDM_API ldm_tensor *ldm_full(ldm_ctx *ctx, ldm_shape s, float v) {
    ldm_tensor *t = ldm_new(ctx, s);
    if (t) ctx->be[t->device]->fill(ctx, t->data, t->numel, v);
    return t;
}
LDM_API ldm_tensor *ldm_zeros(ldm_ctx *ctx, ldm_shape s) { return ldm_full(ctx, s, 0.0f); }
LDM_API ldm_tensor *ldm_from_host(ldm_ctx *ctx, ldm_shape s, const float *src) {
    ldm_tensor *t = ldm_new(ctx, s);
    if (t) ctx->be[t->device]->copy(ctx->be_state[t->device], t->data, t->device, src, LDM_CPU, (size_t)t->numel * 4);
    return t;
}
LDM_API ldm_tensor *ldm_randn(ldm_ctx *ctx, ldm_shape s) {
    ldm_tensor *t = ldm_new(ctx, s);
    if (t) ldm_rng_rows(ctx, &ctx->rng, t->device, t->data, s.ndim ? s.d[0] : 1, s.ndim ? t->numel / (s.d[0] ? s.d[0] : 1) : 1, 1, 0.0f, 1.0f);
    return t;
}
LDM_API ldm_tensor *ldm_rand(ldm_ctx *ctx, ldm_shape s) {
    ldm_tensor *t = ldm_new(ctx, s);
    if (t) ldm_rng_rows(ctx, &ctx->rng, t->device, t->data, s.ndim ? s.d[0] : 1, s.ndim ? t->numel / (s.d[0] ? s.d[0] : 1) : 1, 0, 0.0f, 1.0f);
    return t;
}
LDM_API ldm_tensor ldm_tensor_wrap(float *data, ldm_shape s, ldm_device d) {
    ldm_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.ndim = s.ndim;
    t.numel = 1;
    for (int i = 0; i < s.ndim; i++) { t.shape[i] = s.d[i]; t.numel *= s.d[i]; }
    t.device = d;
    t.node = -1;
    return t;
}
LDM_API ldm_result ldm_to_host(ldm_ctx *ctx, const ldm_tensor *t, float *dst) {
    if (!t) return ctx->status ? ctx->status : ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_to_host: NULL tensor");
    ctx->be[t->device]->copy(ctx->be_state[t->device], dst, LDM_CPU, t->data, t->device, (size_t)t->numel * 4);
    return LDM_OK;
}
LDM_API ldm_tensor *ldm_to_device(ldm_ctx *ctx, ldm_tensor *t, ldm_device d) {
    if (!t || ctx->status) return NULL;
    if (t->device == d) return t;
    if (!ctx->be[d]) { ldm_ctx_seterr(ctx, LDM_ERR_DEVICE, "device %d has no backend attached", (int)d); return NULL; }
    ldm_tensor *o = ldm__new_on(ctx, ldm_shape_of(t), d);
    if (!o) return NULL;
    const ldm_backend *be = ctx->be[d == LDM_CPU ? t->device : d];
    be->copy(ctx->be_state[d == LDM_CPU ? t->device : d], o->data, d, t->data, t->device, (size_t)t->numel * 4);
    return o;
}
LDM_API ldm_tensor *ldm_arena_keep(ldm_ctx *ctx, ldm_mark m, ldm_tensor *t) {
    if (!t || ctx->status) return NULL;
    ldm_tensor keep = *t;
    ldm_arena_rewind(ctx, m);
    ldm_tensor *o = (ldm_tensor *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(ldm_tensor));
    float *data = (float *)ldm_arena_alloc(ctx, keep.device, (size_t)keep.numel * 4);
    if (!o || !data) return NULL;
    /* The destination is at or below the source. A device copies in pieces no longer than the
       distance, so no piece overlaps its own source (the CPU's memmove handles the overlap);
       when that would take many pieces, it bounces through host memory instead. */
    const ldm_backend *be = ctx->be[keep.device];
    void *st = ctx->be_state[keep.device];
    size_t bytes = (size_t)keep.numel * 4, step = bytes;
    char *src = (char *)keep.data, *dst = (char *)data, *host = NULL;
    if (keep.device != LDM_CPU && src > dst && (size_t)(src - dst) < bytes) step = (size_t)(src - dst);
    if (step < bytes / 64 && (host = (char *)LDM_MALLOC(bytes)) != NULL) {
        be->copy(st, host, LDM_CPU, src, keep.device, bytes);
        be->copy(st, dst, keep.device, host, LDM_CPU, bytes);
        LDM_FREE(host);
    } else {
        for (size_t at = 0; src != dst && at < bytes; at += step)
            be->copy(st, dst + at, keep.device, src + at, keep.device, LDM__MIN(step, bytes - at));
    }
    *o = keep;
    o->data = data;
    o->grad = NULL;
    o->node = -1;
    o->requires_grad = 0;
    return o;
}

/* ---- the tape ---------------------------------------------------------------------------- */
#define LDM__BE(t) (ctx->be[(t)->device])

/* NULL inputs and a set error both make an op return NULL without doing anything. */
static int ldm__bad(ldm_ctx *ctx, const ldm_tensor *a) { return ctx->status != LDM_OK || a == NULL; }
static int ldm__same_dev(ldm_ctx *ctx, const char *op, const ldm_tensor *a, const ldm_tensor *b) {
    if (!b || a->device == b->device) return 1;
    ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: tensors on different devices (%d and %d)", op, (int)a->device, (int)b->device);
    return 0;
}

/* Appends a node when grad mode is on and an input requires grad; NULL when nothing is recorded. */
/* A node over nin (<= 5) inputs. */
static ldm__node *ldm__record_n(ldm_ctx *ctx, ldm_tensor *out, ldm__backward_fn fn, int nin, ldm_tensor *const *in) {
    int need = 0;
    for (int k = 0; k < nin; k++) need |= in[k] && in[k]->requires_grad;
    if (!ctx->grad_enabled || !need || !out) return NULL;
    if (ctx->tape_len == ctx->tape_cap) {
        int cap = ctx->tape_cap ? ctx->tape_cap * 2 : 1024;
        ldm__node *t = (ldm__node *)LDM_REALLOC(ctx->tape, sizeof(ldm__node) * (size_t)cap);
        if (!t) { ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "autograd tape: cannot grow to %d nodes", cap); return NULL; }
        ctx->tape = t;
        ctx->tape_cap = cap;
    }
    ldm__node *nd = &ctx->tape[ctx->tape_len];
    memset(nd, 0, sizeof *nd);
    nd->backward = fn;
    nd->out = out;
    nd->nin = nin;
    for (int k = 0; k < nin; k++) nd->in[k] = in[k];
    out->node = ctx->tape_len++;
    out->requires_grad = 1;
    return nd;
}
static ldm__node *ldm__record(ldm_ctx *ctx, ldm_tensor *out, ldm__backward_fn fn, int nin, ldm_tensor *a,
                              ldm_tensor *b, ldm_tensor *c, ldm_tensor *d) {
    ldm_tensor *in[4];
    in[0] = a; in[1] = b; in[2] = c; in[3] = d;
    return ldm__record_n(ctx, out, fn, nin, in);
}

static float *ldm__zeros_raw(ldm_ctx *ctx, ldm_device d, int64_t n) {
    float *p = (float *)ldm_arena_alloc(ctx, d, (size_t)n * sizeof(float));
    if (p) ctx->be[d]->fill(ctx, p, n, 0.0f);
    return p;
}
/* A leaf's gradient buffer from the arena, recorded so that resets can take it back. */
static float *ldm__leaf_grad(ldm_ctx *ctx, ldm_tensor *t) {
    if (ctx->n_arena_grads == ctx->cap_arena_grads) {
        int cap = ctx->cap_arena_grads ? 2 * ctx->cap_arena_grads : 64;
        ldm_tensor **p = (ldm_tensor **)LDM_REALLOC(ctx->arena_grads, sizeof(ldm_tensor *) * (size_t)cap);
        if (!p) { ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "backward: out of memory"); return NULL; }
        ctx->arena_grads = p;
        ctx->cap_arena_grads = cap;
    }
    t->grad = ldm__zeros_raw(ctx, t->device, t->numel);
    if (t->grad) ctx->arena_grads[ctx->n_arena_grads++] = t;
    return t->grad;
}

typedef struct { float *p; int64_t n; ldm_device device; } ldm__gfree;
/* A zeroed gradient buffer of n floats: the smallest freed one that fits, else new arena memory. */
static float *ldm__pool_zeros(ldm_ctx *ctx, ldm__gfree *pool, int *npool, ldm_device d, int64_t n) {
    int best = -1;
    for (int k = 0; k < *npool; k++)
        if (pool[k].device == d && pool[k].n >= n && (best < 0 || pool[k].n < pool[best].n)) best = k;
    if (best < 0) return ldm__zeros_raw(ctx, d, n);
    float *p = pool[best].p;
    pool[best] = pool[--*npool];
    ctx->be[d]->fill(ctx, p, n, 0.0f);
    return p;
}

/* The one backward pass behind ldm_backward, ldm_backward_from and ldm_grad.
   wrt == NULL: accumulate into leaves' .grad. Otherwise only the paths from wrt[] to root are
   walked and the results land in out[]. Gradients of intermediate tensors live in the arena
   for the duration of the pass only. */
static ldm_result ldm__backward_pass(ldm_ctx *ctx, ldm_tensor *root, const float *droot, int n_wrt,
                                     ldm_tensor *const *wrt, float *const *out) {
    if (ctx->status) return ctx->status;
    if (!root) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "backward: NULL tensor");
    int last = root->node;
    if (wrt) {
        for (int k = 0; k < n_wrt; k++) {
            if (!wrt[k]) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_grad: wrt[%d] is NULL", k);
            ctx->be[wrt[k]->device]->fill(ctx, out[k], wrt[k]->numel, 0.0f);
        }
    }
    if (last < 0 || !root->requires_grad) { /* root is a leaf (or constant) */
        for (int k = 0; wrt && k < n_wrt; k++)
            if (wrt[k] == root) ctx->be[root->device]->copy(ctx->be_state[root->device], out[k], root->device, droot, root->device, (size_t)root->numel * 4);
        if (!wrt && root->requires_grad && !root->grad && !ldm__leaf_grad(ctx, root)) return ctx->status;
        if (!wrt && root->requires_grad) ctx->be[root->device]->axpby(ctx, root->grad, droot, root->numel, 1.0f, 1.0f);
        return LDM_OK;
    }
    LDM_ASSERT(last < ctx->tape_len && ctx->tape[last].out == root);
    /* Leaves that will receive a gradient get their buffer before the mark, so it survives. */
    if (!wrt) {
        for (int i = 0; i <= last; i++) {
            ldm__node *nd = &ctx->tape[i];
            for (int k = 0; k < nd->nin; k++) {
                ldm_tensor *t = nd->in[k];
                if (t && t->node < 0 && t->requires_grad && !t->grad) {
                    ldm__leaf_grad(ctx, t);
                    if (!t->grad) return ctx->status;
                }
            }
        }
    }
    ldm_mark mark = ldm_arena_mark(ctx);
    float **g = (float **)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float *) * (size_t)(last + 1));
    unsigned char *reach = (unsigned char *)ldm_arena_alloc(ctx, LDM_CPU, (size_t)(last + 1));
    /* Freed gradient buffers: a node's output gradient is dead once the node has run, so later
       nodes reuse it (smallest that fits) instead of growing the arena: the pass then needs
       about the largest set of simultaneously live gradients, not all of them. */
    ldm__gfree *pool = (ldm__gfree *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(ldm__gfree) * (size_t)(last + 1));
    int npool = 0;
    if (!g || !reach || !pool) return ctx->status;
    memset(g, 0, sizeof(float *) * (size_t)(last + 1));
    /* The grad-ready hook: each leaf is listed under the earliest node that reads it (ready[i]
       chains, through rnext, the leaves whose gradient is final once nodes >= i have run).
       Keyed by gradient buffer, so two tensor structs over one parameter count as one. */
    ldm_tensor **rleaf = NULL;
    int *ready = NULL, *rnext = NULL, nleaf = 0;
    if (!wrt && ctx->grad_ready) {
        int nocc = 0, cap = 16;
        for (int i = 0; i <= last; i++) nocc += ctx->tape[i].nin;
        while (cap < 2 * nocc) cap *= 2;
        float **seen = (float **)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float *) * (size_t)cap);
        rleaf = (ldm_tensor **)ldm_arena_alloc(ctx, LDM_CPU, sizeof(ldm_tensor *) * (size_t)(nocc + 1));
        ready = (int *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(int) * (size_t)(last + 2));
        rnext = (int *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(int) * (size_t)(nocc + 1));
        if (!seen || !rleaf || !ready || !rnext) return ctx->status;
        memset(seen, 0, sizeof(float *) * (size_t)cap);
        for (int i = 0; i <= last + 1; i++) ready[i] = -1;
        for (int i = 0; i <= last; i++) /* ascending: a leaf's first sighting is its earliest use */
            for (int k = 0; k < ctx->tape[i].nin; k++) {
                ldm_tensor *t = ctx->tape[i].in[k];
                if (!t || t->node >= 0 || !t->requires_grad || !t->grad) continue;
                size_t h = ((size_t)(uintptr_t)t->grad >> 6) & (size_t)(cap - 1);
                while (seen[h] && seen[h] != t->grad) h = (h + 1) & (size_t)(cap - 1);
                if (seen[h]) continue;
                seen[h] = t->grad;
                rleaf[nleaf] = t;
                rnext[nleaf] = ready[i];
                ready[i] = nleaf++;
            }
    }
    /* reach[i]: node i lies on a path from a wrt tensor (pass over the tape in order). */
    for (int i = 0; i <= last; i++) {
        ldm__node *nd = &ctx->tape[i];
        reach[i] = !wrt;
        for (int k = 0; wrt && k < nd->nin && !reach[i]; k++) {
            ldm_tensor *t = nd->in[k];
            if (!t) continue;
            for (int q = 0; q < n_wrt; q++) if (wrt[q] == t) reach[i] = 1;
            if (t->node >= 0 && reach[t->node]) reach[i] = 1;
        }
    }
    for (int q = 0; wrt && q < n_wrt; q++) if (wrt[q] == root) reach[last] = 1;
    if (!reach[last]) { ldm_arena_rewind(ctx, mark); return LDM_OK; } /* loss does not depend on wrt */
    g[last] = (float *)ldm_arena_alloc(ctx, root->device, (size_t)root->numel * 4);
    if (!g[last]) return ctx->status;
    ctx->be[root->device]->copy(ctx->be_state[root->device], g[last], root->device, droot, root->device, (size_t)root->numel * 4);
    for (int i = last; i >= 0 && !ctx->status; i--) {
        for (int q = ready ? ready[i + 1] : -1; q >= 0; q = rnext[q]) ctx->grad_ready(ctx->grad_ready_user, ctx, rleaf[q]);
        ldm__node *nd = &ctx->tape[i];
        if (!g[i] || !reach[i]) continue;
        float *din[5] = {NULL, NULL, NULL, NULL, NULL};
        for (int k = 0; k < nd->nin; k++) {
            ldm_tensor *t = nd->in[k];
            if (!t || !t->requires_grad) continue;
            if (t->node < 0) {
                if (!wrt) din[k] = t->grad;
                else for (int q = 0; q < n_wrt; q++) if (wrt[q] == t) din[k] = out[q];
            } else if (t->node < i) {
                int j = t->node;
                int wanted = !wrt || reach[j];
                for (int q = 0; wrt && q < n_wrt; q++) if (wrt[q] == t) wanted = 1;
                if (!wanted) continue;
                if (!g[j] && !(g[j] = ldm__pool_zeros(ctx, pool, &npool, t->device, t->numel))) return ctx->status;
                din[k] = g[j];
            }
        }
        nd->backward(ctx, nd, g[i], din);
        int keep = 0; /* a wrt tensor that is this node's output is read after the loop */
        for (int q = 0; wrt && q < n_wrt; q++) keep |= wrt[q] == nd->out;
        if (!keep && i != last) {
            pool[npool].p = g[i];
            pool[npool].n = nd->out->numel;
            pool[npool++].device = nd->out->device;
            g[i] = NULL;
        }
    }
    for (int q = ready && !ctx->status ? ready[0] : -1; q >= 0; q = rnext[q]) ctx->grad_ready(ctx->grad_ready_user, ctx, rleaf[q]);
    for (int q = 0; wrt && q < n_wrt; q++) { /* wrt tensors that are op outputs */
        ldm_tensor *t = wrt[q];
        if (t->node >= 0 && t->node <= last && ctx->tape[t->node].out == t && g[t->node])
            ctx->be[t->device]->copy(ctx->be_state[t->device], out[q], t->device, g[t->node], t->device, (size_t)t->numel * 4);
    }
    ldm_arena_rewind(ctx, mark);
    return ctx->status;
}

LDM_API ldm_result ldm_backward_from(ldm_ctx *ctx, ldm_tensor *t, const float *dout) {
    return ldm__backward_pass(ctx, t, dout, 0, NULL, NULL);
}
static float *ldm__ones_for(ldm_ctx *ctx, ldm_tensor *loss, const char *what) {
    if (ctx->status) return NULL;
    if (!loss) { ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: NULL loss", what); return NULL; }
    if (loss->numel != 1) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: the loss must have one element, got shape %s (hint: reduce it with ldm_mean_all)",
                       what, ldm__shp(loss).s);
        return NULL;
    }
    float *one = (float *)ldm_arena_alloc(ctx, loss->device, 4);
    if (one) ctx->be[loss->device]->fill(ctx, one, 1, 1.0f);
    return one;
}
LDM_API ldm_result ldm_backward(ldm_ctx *ctx, ldm_tensor *loss) {
    float *one = ldm__ones_for(ctx, loss, "ldm_backward");
    return one ? ldm__backward_pass(ctx, loss, one, 0, NULL, NULL) : ctx->status;
}
LDM_API ldm_result ldm_grad(ldm_ctx *ctx, ldm_tensor *loss, int n, ldm_tensor *const *wrt, float *const *out) {
    float *one = ldm__ones_for(ctx, loss, "ldm_grad");
    return one ? ldm__backward_pass(ctx, loss, one, n, wrt, out) : ctx->status;
}
LDM_API ldm_tensor *ldm_detach(ldm_ctx *ctx, ldm_tensor *t) {
    if (ldm__bad(ctx, t)) return NULL;
    ldm_tensor *o = (ldm_tensor *)ldm_arena_alloc(ctx, LDM_CPU, sizeof *o);
    if (!o) return NULL;
    *o = *t;
    o->grad = NULL;
    o->node = -1;
    o->requires_grad = 0;
    return o;
}

/* ---- helpers for ops --------------------------------------------------------------------- */
static ldm_tensor *ldm__like(ldm_ctx *ctx, const ldm_tensor *x) { return ldm__new_on(ctx, ldm_shape_of(x), x->device); }
static void ldm__strides(const int64_t *shape, int nd, int64_t *st) { /* contiguous strides */
    int64_t s = 1;
    for (int i = nd - 1; i >= 0; i--) { st[i] = s; s *= shape[i]; }
}
static int ldm__dim(ldm_ctx *ctx, const char *op, const ldm_tensor *x, int dim) {
    int d = dim < 0 ? dim + x->ndim : dim;
    if (d < 0 || d >= x->ndim) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: dim %d out of range for shape %s", op, dim, ldm__shp(x).s);
        return -1;
    }
    return d;
}
/* Right-aligns an n-dim shape/stride pair into 5 dims (missing dims: size 1, stride 0). */
static void ldm__pad5(int nd, const int64_t *shape, const int64_t *stride, int64_t *s5, int64_t *st5) {
    for (int i = 0; i < 5; i++) { s5[i] = 1; st5[i] = 0; }
    for (int i = 0; i < nd; i++) { s5[5 - nd + i] = shape[i]; st5[5 - nd + i] = shape[i] == 1 ? 0 : stride[i]; }
}

/* ---- unary ------------------------------------------------------------------------------- */
static void ldm__unary_bw(ldm_ctx *ctx, ldm__node *nd, float *dout, float **din) {
    if (din[0]) LDM__BE(nd->out)->unary_backward(ctx, nd->args.unary.op, din[0], dout, nd->in[0]->data,
                                                 nd->out->data, nd->out->numel, nd->args.unary.p0, nd->args.unary.p1);
}
static ldm_tensor *ldm__unary(ldm_ctx *ctx, ldm_tensor *x, ldm__unary_op op, float p0, float p1) {
    if (ldm__bad(ctx, x)) return NULL;
    ldm_tensor *y = ldm__like(ctx, x);
    if (!y) return NULL;
    LDM__BE(x)->unary(ctx, op, y->data, x->data, x->numel, p0, p1);
    ldm__node *nd = ldm__record(ctx, y, ldm__unary_bw, 1, x, NULL, NULL, NULL);
    if (nd) { nd->args.unary.op = op; nd->args.unary.p0 = p0; nd->args.unary.p1 = p1; }
    return y;
}
LDM_API ldm_tensor *ldm_affine(ldm_ctx *ctx, ldm_tensor *x, float scale, float shift) { return ldm__unary(ctx, x, LDM__U_AFFINE, scale, shift); }
LDM_API ldm_tensor *ldm_scale(ldm_ctx *ctx, ldm_tensor *x, float s) { return ldm__unary(ctx, x, LDM__U_AFFINE, s, 0.0f); }
LDM_API ldm_tensor *ldm_add_scalar(ldm_ctx *ctx, ldm_tensor *x, float s) { return ldm__unary(ctx, x, LDM__U_AFFINE, 1.0f, s); }
LDM_API ldm_tensor *ldm_pow_scalar(ldm_ctx *ctx, ldm_tensor *x, float p) { return ldm__unary(ctx, x, LDM__U_POW, p, 0.0f); }
LDM_API ldm_tensor *ldm_exp(ldm_ctx *ctx, ldm_tensor *x) { return ldm__unary(ctx, x, LDM__U_EXP, 0, 0); }
LDM_API ldm_tensor *ldm_log(ldm_ctx *ctx, ldm_tensor *x) { return ldm__unary(ctx, x, LDM__U_LOG, 0, 0); }
LDM_API ldm_tensor *ldm_sqrt(ldm_ctx *ctx, ldm_tensor *x) { return ldm__unary(ctx, x, LDM__U_SQRT, 0, 0); }
LDM_API ldm_tensor *ldm_abs(ldm_ctx *ctx, ldm_tensor *x) { return ldm__unary(ctx, x, LDM__U_ABS, 0, 0); }
LDM_API ldm_tensor *ldm_square(ldm_ctx *ctx, ldm_tensor *x) { return ldm__unary(ctx, x, LDM__U_SQUARE, 0, 0); }
LDM_API ldm_tensor *ldm_clamp(ldm_ctx *ctx, ldm_tensor *x, float lo, float hi) { return ldm__unary(ctx, x, LDM__U_CLAMP, lo, hi); }
LDM_API ldm_tensor *ldm_sigmoid(ldm_ctx *ctx, ldm_tensor *x) { return ldm__unary(ctx, x, LDM__U_SIGMOID, 0, 0); }
LDM_API ldm_tensor *ldm_silu(ldm_ctx *ctx, ldm_tensor *x) { return ldm__unary(ctx, x, LDM__U_SILU, 0, 0); }
LDM_API ldm_tensor *ldm_relu(ldm_ctx *ctx, ldm_tensor *x) { return ldm__unary(ctx, x, LDM__U_RELU, 0, 0); }
LDM_API ldm_tensor *ldm_leaky_relu(ldm_ctx *ctx, ldm_tensor *x, float slope) { return ldm__unary(ctx, x, LDM__U_LEAKY, slope, 0); }
/* in place: y shares x's memory; the node's input is x, whose data now holds y (the relu
   backward's test v > 0 gives the same on y) */
static ldm_tensor *ldm__unary_into(ldm_ctx *ctx, ldm_tensor *x, ldm__unary_op op, float p0) {
    if (ldm__bad(ctx, x)) return NULL;
    if ((x->node < 0 && x->requires_grad) || (op == LDM__U_LEAKY && !(p0 > 0.0f))) return ldm__unary(ctx, x, op, p0, 0.0f);
    ldm_tensor *y = (ldm_tensor *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(ldm_tensor));
    if (!y) return NULL;
    *y = *x;
    y->grad = NULL, y->node = -1, y->requires_grad = 0, y->name = NULL;
    LDM__BE(x)->unary(ctx, op, y->data, x->data, x->numel, p0, 0.0f);
    ldm__node *nd = ldm__record(ctx, y, ldm__unary_bw, 1, x, NULL, NULL, NULL);
    if (nd) { nd->args.unary.op = op; nd->args.unary.p0 = p0; nd->args.unary.p1 = 0.0f; }
    return y;
}
LDM_API ldm_tensor *ldm_relu_into(ldm_ctx *ctx, ldm_tensor *x) { return ldm__unary_into(ctx, x, LDM__U_RELU, 0.0f); }
LDM_API ldm_tensor *ldm_leaky_relu_into(ldm_ctx *ctx, ldm_tensor *x, float slope) { return ldm__unary_into(ctx, x, LDM__U_LEAKY, slope); }
LDM_API ldm_tensor *ldm_tanh(ldm_ctx *ctx, ldm_tensor *x) { return ldm__unary(ctx, x, LDM__U_TANH, 0, 0); }
LDM_API ldm_tensor *ldm_sin(ldm_ctx *ctx, ldm_tensor *x) { return ldm__unary(ctx, x, LDM__U_SIN, 0, 0); }
LDM_API ldm_tensor *ldm_cos(ldm_ctx *ctx, ldm_tensor *x) { return ldm__unary(ctx, x, LDM__U_COS, 0, 0); }
LDM_API ldm_tensor *ldm_gelu(ldm_ctx *ctx, ldm_tensor *x, int tanh_approx) {
    return ldm__unary(ctx, x, tanh_approx ? LDM__U_GELU_TANH : LDM__U_GELU, 0, 0);
}
LDM_API ldm_tensor *ldm_softplus(ldm_ctx *ctx, ldm_tensor *x, float beta, float threshold) {
    return ldm__unary(ctx, x, LDM__U_SOFTPLUS, beta, threshold);
}

/* ---- binary with broadcasting ------------------------------------------------------------ */
static int ldm__broadcast(ldm_ctx *ctx, const char *op, const ldm_tensor *a, const ldm_tensor *b, ldm__bcast *g, ldm_shape *os) {
    int nd = LDM__MAX(a->ndim, b->ndim);
    int64_t sa[LDM_MAX_DIMS], sb[LDM_MAX_DIMS], as5[5], ast5[5], bs5[5], bst5[5];
    ldm__strides(a->shape, a->ndim, sa);
    ldm__strides(b->shape, b->ndim, sb);
    ldm__pad5(a->ndim, a->shape, sa, as5, ast5);
    ldm__pad5(b->ndim, b->shape, sb, bs5, bst5);
    g->n = 1;
    for (int i = 0; i < 5; i++) {
        if (as5[i] != bs5[i] && as5[i] != 1 && bs5[i] != 1) {
            ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: shapes %s and %s do not broadcast", op, ldm__shp(a).s, ldm__shp(b).s);
            return 0;
        }
        g->shape[i] = LDM__MAX(as5[i], bs5[i]);
        g->sa[i] = ast5[i];
        g->sb[i] = bst5[i];
        g->n *= g->shape[i];
    }
    os->ndim = nd;
    for (int i = 0; i < nd; i++) os->d[i] = g->shape[5 - nd + i];
    return 1;
}
/* Adds a gradient computed at the broadcast shape (full) into the operand's gradient. */
static void ldm__reduce_to(ldm_ctx *ctx, float *dst, const ldm_tensor *t, const float *full, const ldm__bcast *g) {
    int64_t st[LDM_MAX_DIMS], s5[5], ost[5];
    ldm__strides(t->shape, t->ndim, st);
    ldm__pad5(t->ndim, t->shape, st, s5, ost);
    LDM__BE(t)->reduce_sum(ctx, dst, full, g->shape, ost, 1);
}
static void ldm__binary_bw(ldm_ctx *ctx, ldm__node *nd, float *dout, float **din) {
    const ldm__bcast *g = &nd->args.binary.g;
    ldm_tensor *a = nd->in[0], *b = nd->in[1];
    const ldm_backend *be = LDM__BE(nd->out);
    float *da = NULL, *db = NULL;
    int a_full = a->numel == g->n, b_full = b->numel == g->n;
    if (din[0]) da = a_full ? din[0] : ldm__zeros_raw(ctx, a->device, g->n);
    if (din[1]) db = b_full ? din[1] : ldm__zeros_raw(ctx, b->device, g->n);
    if (ctx->status) return;
    if (da && db && da == db) { /* x op x: separate buffers so both terms are added */
        db = ldm__zeros_raw(ctx, b->device, g->n);
        if (!db) return;
        be->binary_backward(ctx, nd->args.binary.op, da, db, dout, a->data, b->data, g);
        be->axpby(ctx, da, db, g->n, 1.0f, 1.0f);
        db = NULL;
    } else {
        be->binary_backward(ctx, nd->args.binary.op, da, db, dout, a->data, b->data, g);
    }
    if (da && !a_full) ldm__reduce_to(ctx, din[0], a, da, g);
    if (db && !b_full) ldm__reduce_to(ctx, din[1], b, db, g);
}
static ldm_tensor *ldm__binary(ldm_ctx *ctx, ldm_tensor *a, ldm_tensor *b, ldm__binary_op op, const char *name) {
    if (ldm__bad(ctx, a) || ldm__bad(ctx, b) || !ldm__same_dev(ctx, name, a, b)) return NULL;
    ldm__bcast g;
    ldm_shape os;
    if (!ldm__broadcast(ctx, name, a, b, &g, &os)) return NULL;
    ldm_tensor *y = ldm__new_on(ctx, os, a->device);
    if (!y) return NULL;
    LDM__BE(a)->binary(ctx, op, y->data, a->data, b->data, &g);
    ldm__node *nd = ldm__record(ctx, y, ldm__binary_bw, 2, a, b, NULL, NULL);
    if (nd) { nd->args.binary.op = op; nd->args.binary.g = g; }
    return y;
}
LDM_API ldm_tensor *ldm_add(ldm_ctx *ctx, ldm_tensor *a, ldm_tensor *b) { return ldm__binary(ctx, a, b, LDM__B_ADD, "ldm_add"); }
LDM_API ldm_tensor *ldm_sub(ldm_ctx *ctx, ldm_tensor *a, ldm_tensor *b) { return ldm__binary(ctx, a, b, LDM__B_SUB, "ldm_sub"); }
LDM_API ldm_tensor *ldm_mul(ldm_ctx *ctx, ldm_tensor *a, ldm_tensor *b) { return ldm__binary(ctx, a, b, LDM__B_MUL, "ldm_mul"); }
LDM_API ldm_tensor *ldm_div(ldm_ctx *ctx, ldm_tensor *a, ldm_tensor *b) { return ldm__binary(ctx, a, b, LDM__B_DIV, "ldm_div"); }
LDM_API ldm_tensor *ldm_add_into(ldm_ctx *ctx, ldm_tensor *a, ldm_tensor *b) {
    if (ldm__bad(ctx, a) || ldm__bad(ctx, b) || !ldm__same_dev(ctx, "ldm_add_into", a, b)) return NULL;
    ldm__bcast g;
    ldm_shape os;
    if (!ldm__broadcast(ctx, "ldm_add_into", a, b, &g, &os)) return NULL;
    int same = os.ndim == a->ndim;
    for (int i = 0; same && i < os.ndim; i++) same = os.d[i] == a->shape[i];
    if (!same || (a->node < 0 && a->requires_grad)) return ldm_add(ctx, a, b);   /* b would grow a; a leaf keeps its data */
    ldm_tensor *y = (ldm_tensor *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(ldm_tensor));
    if (!y) return NULL;
    *y = *a;   /* the same memory, a new tensor on the tape */
    y->grad = NULL;
    y->node = -1;
    y->requires_grad = 0;
    LDM__BE(a)->binary(ctx, LDM__B_ADD, y->data, a->data, b->data, &g);
    ldm__node *nd = ldm__record(ctx, y, ldm__binary_bw, 2, a, b, NULL, NULL);
    if (nd) { nd->args.binary.op = LDM__B_ADD; nd->args.binary.g = g; }
    return y;
}

/* ---- reductions -------------------------------------------------------------------------- */
static void ldm__reduce_bw(ldm_ctx *ctx, ldm__node *nd, float *dout, float **din) {
    if (!din[0]) return;
    ldm_tensor *x = nd->in[0];
    int64_t s5[5], ost5[5], xst[LDM_MAX_DIMS] = {0}, dst5[5], ostride[LDM_MAX_DIMS];
    const ldm_backend *be = LDM__BE(x);
    float scale = nd->args.reduce.scale;
    unsigned dims = nd->args.reduce.dims;
    const float *src = dout;
    if (scale != 1.0f) {
        float *t = (float *)ldm_arena_alloc(ctx, x->device, (size_t)nd->out->numel * 4);
        if (!t) return;
        be->unary(ctx, LDM__U_AFFINE, t, dout, nd->out->numel, scale, 0.0f);
        src = t;
    }
    /* dout viewed at x's rank with the reduced dims of size 1, then broadcast by stride 0 */
    int64_t kshape[LDM_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) kshape[i] = (dims >> i) & 1 ? 1 : x->shape[i];
    ldm__strides(kshape, x->ndim, ostride);
    for (int i = 0; i < x->ndim; i++) if ((dims >> i) & 1) ostride[i] = 0;
    ldm__strides(x->shape, x->ndim, xst);
    ldm__pad5(x->ndim, x->shape, xst, s5, dst5);
    for (int i = 0; i < 5; i++) ost5[i] = 0;
    for (int i = 0; i < x->ndim; i++) { ost5[5 - x->ndim + i] = ostride[i]; dst5[5 - x->ndim + i] = xst[i]; }
    be->strided_copy(ctx, din[0], dst5, src, ost5, s5, 1);
}
static ldm_tensor *ldm__reduce(ldm_ctx *ctx, ldm_tensor *x, unsigned dims, int keepdim, int mean, const char *op) {
    if (ldm__bad(ctx, x)) return NULL;
    if (dims >> x->ndim) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: dim mask 0x%x has dims beyond shape %s", op, dims, ldm__shp(x).s);
        return NULL;
    }
    ldm_shape os;
    os.ndim = 0;
    int64_t count = 1, ost[LDM_MAX_DIMS], kshape[LDM_MAX_DIMS], xst[LDM_MAX_DIMS] = {0}, s5[5], o5[5];
    for (int i = 0; i < x->ndim; i++) {
        int r = (dims >> i) & 1;
        if (r) count *= x->shape[i];
        kshape[i] = r ? 1 : x->shape[i];
        if (!r || keepdim) os.d[os.ndim++] = kshape[i];
    }
    if (os.ndim == 0) { os.ndim = 1; os.d[0] = 1; }
    ldm_tensor *y = ldm__new_on(ctx, os, x->device);
    if (!y) return NULL;
    ldm__strides(kshape, x->ndim, ost);
    for (int i = 0; i < x->ndim; i++) if ((dims >> i) & 1) ost[i] = 0;
    ldm__strides(x->shape, x->ndim, xst);
    ldm__pad5(x->ndim, x->shape, xst, s5, o5);
    for (int i = 0; i < 5; i++) o5[i] = 0;
    for (int i = 0; i < x->ndim; i++) o5[5 - x->ndim + i] = ost[i];
    const ldm_backend *be = LDM__BE(x);
    be->reduce_sum(ctx, y->data, x->data, s5, o5, 0);
    float scale = mean ? (float)(1.0 / (double)(count ? count : 1)) : 1.0f;
    if (mean) be->unary(ctx, LDM__U_AFFINE, y->data, y->data, y->numel, scale, 0.0f);
    if (ctx->status) return NULL; /* the kernel's scratch did not fit */
    ldm__node *nd = ldm__record(ctx, y, ldm__reduce_bw, 1, x, NULL, NULL, NULL);
    if (nd) { nd->args.reduce.dims = dims; nd->args.reduce.scale = scale; }
    return y;
}
LDM_API ldm_tensor *ldm_sum(ldm_ctx *ctx, ldm_tensor *x, unsigned dims, int keepdim) { return ldm__reduce(ctx, x, dims, keepdim, 0, "ldm_sum"); }
LDM_API ldm_tensor *ldm_mean(ldm_ctx *ctx, ldm_tensor *x, unsigned dims, int keepdim) { return ldm__reduce(ctx, x, dims, keepdim, 1, "ldm_mean"); }
LDM_API ldm_tensor *ldm_sum_all(ldm_ctx *ctx, ldm_tensor *x) {
    return x ? ldm__reduce(ctx, x, (1u << x->ndim) - 1, 0, 0, "ldm_sum_all") : NULL;
}
LDM_API ldm_tensor *ldm_mean_all(ldm_ctx *ctx, ldm_tensor *x) {
    return x ? ldm__reduce(ctx, x, (1u << x->ndim) - 1, 0, 1, "ldm_mean_all") : NULL;
}

/* ---- matmul and linear ------------------------------------------------------------------- */
/* A broadcast operand's gradient sums over the batch in a fixed order. */
static void ldm__matmul_bw(ldm_ctx *ctx, ldm__node *nd, float *dC, float **din) {
    ldm_tensor *a = nd->in[0], *b = nd->in[1];
    const ldm_backend *be = LDM__BE(a);
    const int64_t *bo = nd->args.matmul.batch, *sa = nd->args.matmul.sa, *sb = nd->args.matmul.sb;
    int64_t M = nd->args.matmul.M, N = nd->args.matmul.N, K = nd->args.matmul.K;
    int ta = nd->args.matmul.trans_a, tb = nd->args.matmul.trans_b;
    int64_t lda = ta ? M : K, ldb = tb ? K : N;
    for (int64_t z0 = 0; z0 < bo[0]; z0++)
        for (int64_t z1 = 0; z1 < bo[1]; z1++) {
            int64_t oa = z0 * sa[0] + z1 * sa[1], ob = z0 * sb[0] + z1 * sb[1];
            const float *A = a->data + oa, *Bm = b->data + ob, *dc = dC + (z0 * bo[1] + z1) * M * N;
            if (din[0]) {
                float *dA = din[0] + oa;
                if (!ta) be->sgemm(ctx, 0, !tb, M, K, N, 1.0f, dc, N, Bm, ldb, 1.0f, dA, K);
                else be->sgemm(ctx, tb, 1, K, M, N, 1.0f, Bm, ldb, dc, N, 1.0f, dA, M);
            }
            if (din[1]) {
                float *dB = din[1] + ob;
                if (!tb) be->sgemm(ctx, !ta, 0, K, N, M, 1.0f, A, lda, dc, N, 1.0f, dB, N);
                else be->sgemm(ctx, 1, ta, N, K, M, 1.0f, dc, N, A, lda, 1.0f, dB, K);
            }
        }
}
LDM_API ldm_tensor *ldm_matmul(ldm_ctx *ctx, ldm_tensor *a, ldm_tensor *b, int trans_a, int trans_b) {
    if (ldm__bad(ctx, a) || ldm__bad(ctx, b) || !ldm__same_dev(ctx, "ldm_matmul", a, b)) return NULL;
    if (a->ndim < 2 || a->ndim > 4 || b->ndim < 2 || b->ndim > 4) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_matmul: operands must be 2-D to 4-D, got %s and %s", ldm__shp(a).s, ldm__shp(b).s);
        return NULL;
    }
    int64_t M = trans_a ? a->shape[a->ndim - 1] : a->shape[a->ndim - 2], Ka = trans_a ? a->shape[a->ndim - 2] : a->shape[a->ndim - 1];
    int64_t Kb = trans_b ? b->shape[b->ndim - 1] : b->shape[b->ndim - 2], N = trans_b ? b->shape[b->ndim - 2] : b->shape[b->ndim - 1];
    /* batch dims right-aligned into two, missing ones of size 1; size 1 broadcasts */
    int64_t ba[2] = {1, 1}, bb[2] = {1, 1}, bo[2], sa[2], sb[2];
    for (int i = 0; i < a->ndim - 2; i++) ba[4 - a->ndim + i] = a->shape[i];
    for (int i = 0; i < b->ndim - 2; i++) bb[4 - b->ndim + i] = b->shape[i];
    int ok = Ka == Kb;
    for (int i = 0; i < 2; i++) {
        ok &= ba[i] == bb[i] || ba[i] == 1 || bb[i] == 1;
        bo[i] = LDM__MAX(ba[i], bb[i]);
    }
    if (!ok) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_matmul: shapes %s%s and %s%s do not multiply", ldm__shp(a).s,
                       trans_a ? "^T" : "", ldm__shp(b).s, trans_b ? "^T" : "");
        return NULL;
    }
    sa[1] = ba[1] == 1 ? 0 : M * Ka; sa[0] = ba[0] == 1 ? 0 : ba[1] * M * Ka;
    sb[1] = bb[1] == 1 ? 0 : Ka * N; sb[0] = bb[0] == 1 ? 0 : bb[1] * Ka * N;
    int ond = LDM__MAX(a->ndim, b->ndim);
    int64_t od[4] = {bo[0], bo[1], M, N};
    ldm_tensor *y = ldm__new_on(ctx, ldm_shape_n(ond, od + 4 - ond), a->device);
    if (!y) return NULL;
    int64_t lda = trans_a ? M : Ka, ldb = trans_b ? Ka : N;
    for (int64_t z0 = 0; z0 < bo[0]; z0++)
        for (int64_t z1 = 0; z1 < bo[1]; z1++)
            LDM__BE(a)->sgemm(ctx, trans_a, trans_b, M, N, Ka, 1.0f, a->data + z0 * sa[0] + z1 * sa[1], lda,
                              b->data + z0 * sb[0] + z1 * sb[1], ldb, 0.0f, y->data + (z0 * bo[1] + z1) * M * N, N);
    if (ctx->status) return NULL; /* the kernel's scratch did not fit */
    ldm__node *nd = ldm__record(ctx, y, ldm__matmul_bw, 2, a, b, NULL, NULL);
    if (nd) {
        for (int d = 0; d < 2; d++) {
            nd->args.matmul.batch[d] = bo[d]; nd->args.matmul.sa[d] = sa[d]; nd->args.matmul.sb[d] = sb[d];
        }
        nd->args.matmul.M = M; nd->args.matmul.N = N; nd->args.matmul.K = Ka;
        nd->args.matmul.trans_a = trans_a; nd->args.matmul.trans_b = trans_b;
    }
    return y;
}

static void ldm__attention_bw(ldm_ctx *ctx, ldm__node *nd, float *dout, float **din) {
    const int64_t B = nd->args.attention.B, H = nd->args.attention.heads, Sq = nd->args.attention.Sq, Sk = nd->args.attention.Sk;
    LDM__BE(nd->out)->attn_backward(ctx, din[0], din[1], din[2], dout, nd->out->data, (const float *)nd->saved,
                                    nd->in[0]->data, nd->in[1]->data, nd->in[2]->data, B, H, Sq, Sk, nd->args.attention.D,
                                    nd->args.attention.scale);
}
LDM_API ldm_tensor *ldm_attention(ldm_ctx *ctx, ldm_tensor *q, ldm_tensor *k, ldm_tensor *v, int heads, float scale) {
    if (ldm__bad(ctx, q) || ldm__bad(ctx, k) || ldm__bad(ctx, v) || !ldm__same_dev(ctx, "ldm_attention", q, k) ||
        !ldm__same_dev(ctx, "ldm_attention", q, v))
        return NULL;
    if (q->ndim != 3 || k->ndim != 3 || v->ndim != 3 || heads < 1 || q->shape[2] % heads || k->shape[0] != q->shape[0] ||
        v->shape[0] != q->shape[0] || k->shape[2] != q->shape[2] || v->shape[2] != q->shape[2] || v->shape[1] != k->shape[1] ||
        k->shape[1] < 1 || q->shape[2] < 1) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_attention: q %s, k %s, v %s with %d heads (hint: [B, S, heads*D] each, k and v of one length)",
                       ldm__shp(q).s, ldm__shp(k).s, ldm__shp(v).s, heads);
        return NULL;
    }
    int64_t B = q->shape[0], Sq = q->shape[1], Sk = k->shape[1], D = q->shape[2] / heads;
    if (scale == 0.0f) scale = 1.0f / sqrtf((float)D);
    ldm_tensor *o = ldm__like(ctx, q);
    float *lse = (float *)ldm_arena_alloc(ctx, q->device, sizeof(float) * (size_t)LDM__MAX(1, B * heads * Sq));
    if (!o || !lse) return NULL;
    LDM__BE(q)->attn_forward(ctx, o->data, lse, q->data, k->data, v->data, B, heads, Sq, Sk, D, scale);
    if (ctx->status) return NULL;
    ldm__node *nd = ldm__record(ctx, o, ldm__attention_bw, 3, q, k, v, NULL);
    if (nd) {
        nd->args.attention.B = B; nd->args.attention.Sq = Sq; nd->args.attention.Sk = Sk;
        nd->args.attention.heads = heads; nd->args.attention.D = D; nd->args.attention.scale = scale;
        nd->saved = lse;
    }
    return o;
}

static void ldm__linear_bw(ldm_ctx *ctx, ldm__node *nd, float *dy, float **din) {
    ldm_tensor *x = nd->in[0], *w = nd->in[1];
    const ldm_backend *be = LDM__BE(x);
    int64_t R = nd->args.linear.R, I = nd->args.linear.I, O = nd->args.linear.O;
    if (din[0]) be->sgemm(ctx, 0, 0, R, I, O, 1.0f, dy, O, w->data, I, 1.0f, din[0], I);
    if (din[1]) be->sgemm(ctx, 1, 0, O, I, R, 1.0f, dy, O, x->data, I, 1.0f, din[1], I);
    if (din[2]) {
        int64_t shape[5] = {1, 1, 1, R, O}, ost[5] = {0, 0, 0, 0, 1};
        be->reduce_sum(ctx, din[2], dy, shape, ost, 1);
    }
}
LDM_API ldm_tensor *ldm_linear(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b) {
    if (ldm__bad(ctx, x) || ldm__bad(ctx, w) || !ldm__same_dev(ctx, "ldm_linear", x, w) || !ldm__same_dev(ctx, "ldm_linear", x, b)) return NULL;
    int64_t I = x->shape[x->ndim - 1];
    if (w->ndim != 2 || w->shape[1] != I || (b && b->numel != w->shape[0])) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_linear: input %s, weight %s%s%s: expected weight [out, %lld] and bias [out]",
                       ldm__shp(x).s, ldm__shp(w).s, b ? ", bias " : "", b ? ldm__shp(b).s : "", (long long)I);
        return NULL;
    }
    int64_t O = w->shape[0], R = x->numel / (I ? I : 1);
    ldm_shape os = ldm_shape_of(x);
    os.d[os.ndim - 1] = O;
    ldm_tensor *y = ldm__new_on(ctx, os, x->device);
    if (!y) return NULL;
    const ldm_backend *be = LDM__BE(x);
    if (b) { /* y = broadcast bias, then += x W^T */
        int64_t shape[5] = {1, 1, 1, R, O}, dst[5] = {0, 0, 0, O, 1}, sst[5] = {0, 0, 0, 0, 1};
        be->strided_copy(ctx, y->data, dst, b->data, sst, shape, 0);
    }
    be->sgemm(ctx, 0, 1, R, O, I, 1.0f, x->data, I, w->data, I, b ? 1.0f : 0.0f, y->data, O);
    if (ctx->status) return NULL; /* the kernel's scratch did not fit */
    ldm__node *nd = ldm__record(ctx, y, ldm__linear_bw, b ? 3 : 2, x, w, b, NULL);
    if (nd) { nd->args.linear.R = R; nd->args.linear.I = I; nd->args.linear.O = O; }
    return y;
}

/* ---- convolution ------------------------------------------------------------------------- */
LDM_API ldm_result ldm_conv_desc_init(ldm_conv_desc *d) {
    int64_t et = d->T + d->pad[0] + d->pad[1] - d->kt, eh = d->H + d->pad[2] + d->pad[3] - d->kh,
            ew = d->W + d->pad[4] + d->pad[5] - d->kw;
    if (d->kt < 1 || d->kh < 1 || d->kw < 1 || d->st < 1 || d->sh < 1 || d->sw < 1 || et < 0 || eh < 0 || ew < 0)
        return LDM_ERR_INVALID;
    for (int i = 0; i < 6; i++) if (d->pad[i] < 0) return LDM_ERR_INVALID;
    d->OT = et / d->st + 1;
    d->OH = eh / d->sh + 1;
    d->OW = ew / d->sw + 1;
    return LDM_OK;
}
static void ldm__conv_bw(ldm_ctx *ctx, ldm__node *nd, float *dout, float **din) {
    ldm_tensor *b = nd->nin > 2 ? nd->in[2] : NULL;
    LDM__BE(nd->out)->conv_backward(ctx, din[0], din[1], b ? din[2] : NULL, dout, nd->in[0]->data, nd->in[1]->data, &nd->args.conv);
}
/* Checks a convolution's operands and fills its descriptor; 0 (and the context's error) when
   they do not fit. */
static int ldm__conv_prepare(ldm_ctx *ctx, const char *op, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b, const int st[3],
                             const int pad[6], int nsp, ldm_conv_desc *d) {
    if (ldm__bad(ctx, x) || ldm__bad(ctx, w) || !ldm__same_dev(ctx, op, x, w) || !ldm__same_dev(ctx, op, x, b)) return 0;
    if (x->ndim != nsp + 2 || w->ndim != nsp + 2 || w->shape[1] != x->shape[1] || (b && b->numel != w->shape[0])) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: input %s, weight %s%s%s: expected input [B,C,%s], weight [O,C,%s], bias [O]",
                       op, ldm__shp(x).s, ldm__shp(w).s, b ? ", bias " : "", b ? ldm__shp(b).s : "",
                       nsp == 2 ? "H,W" : "T,H,W", nsp == 2 ? "kh,kw" : "kt,kh,kw");
        return 0;
    }
    memset(d, 0, sizeof *d);
    int o = nsp == 2 ? 1 : 0;
    d->B = x->shape[0]; d->C = x->shape[1];
    d->T = nsp == 3 ? x->shape[2] : 1; d->H = x->shape[3 - o]; d->W = x->shape[4 - o];
    d->O = w->shape[0];
    d->kt = nsp == 3 ? (int)w->shape[2] : 1; d->kh = (int)w->shape[3 - o]; d->kw = (int)w->shape[4 - o];
    d->st = st[0]; d->sh = st[1]; d->sw = st[2];
    for (int i = 0; i < 6; i++) d->pad[i] = pad[i];
    if (ldm_conv_desc_init(d)) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: kernel %s does not fit input %s with stride (%d,%d,%d) and padding (%d,%d,%d,%d,%d,%d)",
                       op, ldm__shp(w).s, ldm__shp(x).s, st[0], st[1], st[2], pad[0], pad[1], pad[2], pad[3], pad[4], pad[5]);
        return 0;
    }
    return 1;
}
static ldm_tensor *ldm__conv(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b, const int st[3], const int pad[6], int nsp) {
    ldm_conv_desc desc, *d = &desc;
    if (!ldm__conv_prepare(ctx, nsp == 2 ? "ldm_conv2d" : "ldm_conv3d", x, w, b, st, pad, nsp, d)) return NULL;
    ldm_shape os = nsp == 2 ? ldm_shape4(d->B, d->O, d->OH, d->OW) : ldm_shape5(d->B, d->O, d->OT, d->OH, d->OW);
    ldm_tensor *y = ldm__new_on(ctx, os, x->device);
    if (!y) return NULL;
    LDM__BE(x)->conv_forward(ctx, y->data, x->data, w->data, b ? b->data : NULL, d);
    if (ctx->status) return NULL; /* the column buffer did not fit */
    ldm__node *nd = ldm__record(ctx, y, ldm__conv_bw, b ? 3 : 2, x, w, b, NULL);
    if (nd) nd->args.conv = desc;
    return y;
}
LDM_API ldm_tensor *ldm_conv2d_ex(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b, int stride_h, int stride_w,
                                  int pad_top, int pad_bottom, int pad_left, int pad_right) {
    int st[3] = {1, stride_h, stride_w}, pad[6] = {0, 0, pad_top, pad_bottom, pad_left, pad_right};
    return ldm__conv(ctx, x, w, b, st, pad, 2);
}
LDM_API ldm_tensor *ldm_conv2d(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b, int stride, int pad) {
    return ldm_conv2d_ex(ctx, x, w, b, stride, stride, pad, pad, pad, pad);
}
LDM_API ldm_tensor *ldm_conv3d_ex(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b, const int stride[3], const int pad[6]) {
    return ldm__conv(ctx, x, w, b, stride, pad, 3);
}
LDM_API ldm_tensor *ldm_conv3d(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b, int stride, int pad) {
    int st[3] = {stride, stride, stride}, p[6] = {pad, pad, pad, pad, pad, pad};
    return ldm__conv(ctx, x, w, b, st, p, 3);
}

/* ---- normalisation ----------------------------------------------------------------------- */
static int64_t ldm__spatial(const ldm_tensor *x) { int64_t s = 1; for (int i = 2; i < x->ndim; i++) s *= x->shape[i]; return s; }
static int ldm__affine_ok(ldm_ctx *ctx, const char *op, const ldm_tensor *x, const ldm_tensor *w, const ldm_tensor *b, int64_t n) {
    if ((w && w->numel != n) || (b && b->numel != n)) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: input %s needs weight and bias of %lld elements, got %s and %s", op,
                       ldm__shp(x).s, (long long)n, w ? ldm__shp(w).s : "none", b ? ldm__shp(b).s : "none");
        return 0;
    }
    return ldm__same_dev(ctx, op, x, w) && ldm__same_dev(ctx, op, x, b);
}

/* silu: the output is silu(z); the backward recomputes z from x, mean, rstd, w and b */
static void ldm__groupnorm_bw(ldm_ctx *ctx, ldm__node *nd, float *dout, float **din) {
    ldm_tensor *w = nd->in[1], *b = nd->in[2];
    LDM__BE(nd->out)->groupnorm_backward(ctx, din[0], w ? din[1] : NULL, b ? din[2] : NULL, dout, nd->in[0]->data,
                                         w ? w->data : NULL, b ? b->data : NULL, (float *)nd->saved, (float *)nd->saved2,
                                         nd->args.groupnorm.B, nd->args.groupnorm.C, nd->args.groupnorm.S,
                                         nd->args.groupnorm.groups, nd->args.groupnorm.silu);
}
static ldm_tensor *ldm__group_norm(ldm_ctx *ctx, const char *op, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b, int groups,
                                   float eps, int silu, int into) {
    if (ldm__bad(ctx, x)) return NULL;
    if (x->ndim < 2) { ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: input %s has no channel dim (expected [B,C,...])", op, ldm__shp(x).s); return NULL; }
    if (groups < 1 || x->shape[1] % groups) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: %d groups do not divide the channels of %s", op, groups, ldm__shp(x).s);
        return NULL;
    }
    if (!ldm__affine_ok(ctx, op, x, w, b, x->shape[1])) return NULL;
    int64_t B = x->shape[0], C = x->shape[1], S = ldm__spatial(x);
    int grad = ldm_grad_enabled(ctx) && (x->requires_grad || (w && w->requires_grad) || (b && b->requires_grad));
    ldm_tensor *y;
    if (into && !grad) { /* both kernels read a group's statistics before writing any of it */
        y = (ldm_tensor *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(ldm_tensor));
        if (y) *y = *x, y->grad = NULL, y->node = -1, y->requires_grad = 0, y->name = NULL;
    } else {
        y = ldm__like(ctx, x);
    }
    float *mean = (float *)ldm_arena_alloc(ctx, x->device, sizeof(float) * (size_t)(B * groups));
    float *rstd = (float *)ldm_arena_alloc(ctx, x->device, sizeof(float) * (size_t)(B * groups));
    if (!y || !mean || !rstd) return NULL;
    LDM__BE(x)->groupnorm_forward(ctx, y->data, mean, rstd, x->data, w ? w->data : NULL, b ? b->data : NULL, B, C, S, groups,
                                  eps, silu);
    ldm__node *nd = ldm__record(ctx, y, ldm__groupnorm_bw, 3, x, w, b, NULL);
    if (nd) {
        nd->saved = mean; nd->saved2 = rstd;
        nd->args.groupnorm.B = B; nd->args.groupnorm.C = C; nd->args.groupnorm.S = S;
        nd->args.groupnorm.groups = groups; nd->args.groupnorm.silu = silu;
    }
    return y;
}
LDM_API ldm_tensor *ldm_group_norm(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b, int groups, float eps) {
    return ldm__group_norm(ctx, "ldm_group_norm", x, w, b, groups, eps, 0, 0);
}
LDM_API ldm_tensor *ldm_group_norm_silu(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b, int groups, float eps) {
    return ldm__group_norm(ctx, "ldm_group_norm_silu", x, w, b, groups, eps, 1, 0);
}
LDM_API ldm_tensor *ldm_group_norm_silu_into(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b, int groups, float eps) {
    return ldm__group_norm(ctx, "ldm_group_norm_silu_into", x, w, b, groups, eps, 1, 1);
}

/* backward: recompute t = silu(gn(x)) (mean and rstd saved), then the convolution's backward
   (dt, dw, db), then GroupNorm+SiLU's (dx, dgw, dgb); t and dt live until the node is done */
static void ldm__gnconv_bw(ldm_ctx *ctx, ldm__node *nd, float *dout, float **din) {
    ldm_tensor *x = nd->in[0], *gw = nd->in[1], *gb = nd->in[2], *w = nd->in[3], *b = nd->in[4];
    const ldm_conv_desc *d = &nd->args.gnconv.conv;
    const ldm_backend *be = LDM__BE(x);
    int G = nd->args.gnconv.groups, need_t = din[0] || (gw && din[1]) || (gb && din[2]);
    int64_t B = d->B, C = d->C, S = x->numel / (d->B * d->C);
    ldm_mark m = ldm_arena_mark(ctx);
    float *t = (float *)ldm_arena_alloc(ctx, x->device, sizeof(float) * (size_t)x->numel);
    float *st = (float *)ldm_arena_alloc(ctx, x->device, sizeof(float) * (size_t)(2 * B * G));
    float *dt = need_t ? ldm__zeros_raw(ctx, x->device, x->numel) : NULL;
    if (!t || !st || (need_t && !dt)) return;
    be->groupnorm_forward(ctx, t, st, st + B * G, x->data, gw ? gw->data : NULL, gb ? gb->data : NULL, B, C, S, G,
                          nd->args.gnconv.eps, 1);
    be->conv_backward(ctx, dt, din[3], b ? din[4] : NULL, dout, t, w->data, d);
    if (need_t)
        be->groupnorm_backward(ctx, din[0], gw ? din[1] : NULL, gb ? din[2] : NULL, dt, x->data, gw ? gw->data : NULL,
                               gb ? gb->data : NULL, (float *)nd->saved, (float *)nd->saved2, B, C, S, G, 1);
    ldm_arena_rewind(ctx, m);
}
LDM_API ldm_tensor *ldm_group_norm_silu_conv(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *gw, ldm_tensor *gb, int groups, float eps,
                                             ldm_tensor *w, ldm_tensor *b, const int stride[3], const int pad[6]) {
    const char *op = "ldm_group_norm_silu_conv";
    if (ldm__bad(ctx, x)) return NULL;
    int nsp = x->ndim - 2;
    if (nsp != 2 && nsp != 3) { ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: input %s is neither [B,C,H,W] nor [B,C,T,H,W]", op, ldm__shp(x).s); return NULL; }
    if (groups < 1 || x->shape[1] % groups) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: %d groups do not divide the channels of %s", op, groups, ldm__shp(x).s);
        return NULL;
    }
    ldm_conv_desc desc;
    if (!ldm__affine_ok(ctx, op, x, gw, gb, x->shape[1]) || !ldm__conv_prepare(ctx, op, x, w, b, stride, pad, nsp, &desc)) return NULL;
    int64_t B = x->shape[0], C = x->shape[1], S = ldm__spatial(x);
    const ldm_conv_desc *d = &desc;
    ldm_shape os = nsp == 2 ? ldm_shape4(d->B, d->O, d->OH, d->OW) : ldm_shape5(d->B, d->O, d->OT, d->OH, d->OW);
    ldm_tensor *y = ldm__new_on(ctx, os, x->device);
    float *mean = (float *)ldm_arena_alloc(ctx, x->device, sizeof(float) * (size_t)(B * groups));
    float *rstd = (float *)ldm_arena_alloc(ctx, x->device, sizeof(float) * (size_t)(B * groups));
    if (!y || !mean || !rstd) return NULL;
    ldm_mark m = ldm_arena_mark(ctx); /* the normalised activation lives only while the conv runs */
    float *t = (float *)ldm_arena_alloc(ctx, x->device, sizeof(float) * (size_t)x->numel);
    if (!t) return NULL;
    LDM__BE(x)->groupnorm_forward(ctx, t, mean, rstd, x->data, gw ? gw->data : NULL, gb ? gb->data : NULL, B, C, S, groups, eps, 1);
    LDM__BE(x)->conv_forward(ctx, y->data, t, w->data, b ? b->data : NULL, d);
    ldm_arena_rewind(ctx, m);
    if (ctx->status) return NULL;
    ldm_tensor *in[5];
    in[0] = x; in[1] = gw; in[2] = gb; in[3] = w; in[4] = b;
    ldm__node *nd = ldm__record_n(ctx, y, ldm__gnconv_bw, 5, in);
    if (nd) {
        nd->saved = mean; nd->saved2 = rstd;
        nd->args.gnconv.conv = desc; nd->args.gnconv.groups = groups; nd->args.gnconv.eps = eps;
    }
    return y;
}

static void ldm__batchnorm_bw(ldm_ctx *ctx, ldm__node *nd, float *dout, float **din) {
    ldm_tensor *w = nd->in[1];
    LDM__BE(nd->out)->batchnorm_backward(ctx, din[0], w ? din[1] : NULL, nd->in[2] ? din[2] : NULL, dout, nd->in[0]->data,
                                         w ? w->data : NULL, (float *)nd->saved, (float *)nd->saved2, nd->args.batchnorm.B,
                                         nd->args.batchnorm.C, nd->args.batchnorm.S, nd->args.batchnorm.training);
}
LDM_API ldm_tensor *ldm_batch_norm(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b, ldm_tensor *running_mean,
                                   ldm_tensor *running_var, int training, float momentum, float eps) {
    if (ldm__bad(ctx, x)) return NULL;
    if (x->ndim < 2) { ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_batch_norm: input %s has no channel dim", ldm__shp(x).s); return NULL; }
    int64_t B = x->shape[0], C = x->shape[1], S = ldm__spatial(x);
    if (!ldm__affine_ok(ctx, "ldm_batch_norm", x, w, b, C) || !ldm__affine_ok(ctx, "ldm_batch_norm", x, running_mean, running_var, C)) return NULL;
    if (!training && (!running_mean || !running_var)) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_batch_norm: eval mode needs running_mean and running_var");
        return NULL;
    }
    if (training && B * S < 2) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_batch_norm: expected more than 1 value per channel when training, got input %s", ldm__shp(x).s);
        return NULL;
    }
    const ldm_backend *be = LDM__BE(x);
    ldm_tensor *y = ldm__like(ctx, x);
    float *mean = (float *)ldm_arena_alloc(ctx, x->device, sizeof(float) * (size_t)C);
    float *rstd = (float *)ldm_arena_alloc(ctx, x->device, sizeof(float) * (size_t)C);
    if (!y || !mean || !rstd) return NULL;
    if (training) {
        be->channel_stats(ctx, mean, rstd, x->data, B, C, S); /* rstd holds the variance for now */
        if (running_mean) be->axpby(ctx, running_mean->data, mean, C, 1.0f - momentum, momentum);
        if (running_var) { /* running statistics use the unbiased variance */
            double n = (double)(B * S);
            float *uv = (float *)ldm_arena_alloc(ctx, x->device, sizeof(float) * (size_t)C);
            if (!uv) return NULL;
            be->unary(ctx, LDM__U_AFFINE, uv, rstd, C, (float)(n / (n - 1.0)), 0.0f);
            be->axpby(ctx, running_var->data, uv, C, 1.0f - momentum, momentum);
        }
        be->unary(ctx, LDM__U_AFFINE, rstd, rstd, C, 1.0f, eps);
        be->unary(ctx, LDM__U_POW, rstd, rstd, C, -0.5f, 0.0f);
    } else {
        be->copy(ctx->be_state[x->device], mean, x->device, running_mean->data, x->device, sizeof(float) * (size_t)C);
        be->unary(ctx, LDM__U_AFFINE, rstd, running_var->data, C, 1.0f, eps);
        be->unary(ctx, LDM__U_POW, rstd, rstd, C, -0.5f, 0.0f);
    }
    be->channel_affine(ctx, y->data, x->data, mean, rstd, w ? w->data : NULL, b ? b->data : NULL, B, C, S);
    ldm__node *nd = ldm__record(ctx, y, ldm__batchnorm_bw, 3, x, w, b, NULL);
    if (nd) {
        nd->saved = mean; nd->saved2 = rstd;
        nd->args.batchnorm.B = B; nd->args.batchnorm.C = C; nd->args.batchnorm.S = S; nd->args.batchnorm.training = training;
    }
    return y;
}

static void ldm__layernorm_bw(ldm_ctx *ctx, ldm__node *nd, float *dout, float **din) {
    ldm_tensor *w = nd->in[1];
    LDM__BE(nd->out)->layernorm_backward(ctx, din[0], w ? din[1] : NULL, nd->in[2] ? din[2] : NULL, dout, nd->in[0]->data,
                                         w ? w->data : NULL, (float *)nd->saved, (float *)nd->saved2, nd->args.layernorm.R,
                                         nd->args.layernorm.N);
}
LDM_API ldm_tensor *ldm_layer_norm(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b, int nd_, float eps) {
    if (ldm__bad(ctx, x)) return NULL;
    if (nd_ < 1 || nd_ > x->ndim) { ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_layer_norm: cannot normalise the last %d dims of %s", nd_, ldm__shp(x).s); return NULL; }
    int64_t N = 1;
    for (int i = x->ndim - nd_; i < x->ndim; i++) N *= x->shape[i];
    if (!ldm__affine_ok(ctx, "ldm_layer_norm", x, w, b, N)) return NULL;
    int64_t R = x->numel / (N ? N : 1);
    ldm_tensor *y = ldm__like(ctx, x);
    float *mean = (float *)ldm_arena_alloc(ctx, x->device, sizeof(float) * (size_t)R);
    float *rstd = (float *)ldm_arena_alloc(ctx, x->device, sizeof(float) * (size_t)R);
    if (!y || !mean || !rstd) return NULL;
    LDM__BE(x)->layernorm_forward(ctx, y->data, mean, rstd, x->data, w ? w->data : NULL, b ? b->data : NULL, R, N, eps);
    ldm__node *nd = ldm__record(ctx, y, ldm__layernorm_bw, 3, x, w, b, NULL);
    if (nd) { nd->saved = mean; nd->saved2 = rstd; nd->args.layernorm.R = R; nd->args.layernorm.N = N; }
    return y;
}

static void ldm__softmax_bw(ldm_ctx *ctx, ldm__node *nd, float *dout, float **din) {
    if (din[0]) LDM__BE(nd->out)->softmax_backward(ctx, din[0], dout, nd->out->data, nd->args.softmax.outer, nd->args.softmax.D,
                                                   nd->args.softmax.inner);
}
LDM_API ldm_tensor *ldm_softmax(ldm_ctx *ctx, ldm_tensor *x, int dim) {
    if (ldm__bad(ctx, x)) return NULL;
    int d = ldm__dim(ctx, "ldm_softmax", x, dim);
    if (d < 0) return NULL;
    int64_t outer = 1, inner = 1;
    for (int i = 0; i < d; i++) outer *= x->shape[i];
    for (int i = d + 1; i < x->ndim; i++) inner *= x->shape[i];
    ldm_tensor *y = ldm__like(ctx, x);
    if (!y) return NULL;
    LDM__BE(x)->softmax_forward(ctx, y->data, x->data, outer, x->shape[d], inner);
    ldm__node *nd = ldm__record(ctx, y, ldm__softmax_bw, 1, x, NULL, NULL, NULL);
    if (nd) { nd->args.softmax.outer = outer; nd->args.softmax.D = x->shape[d]; nd->args.softmax.inner = inner; }
    return y;
}

/* ---- spatial ----------------------------------------------------------------------------- */
/* [B,C,H,W] or [B,C,T,H,W] as P = B*C planes of (T,H,W) */
static int ldm__planes(ldm_ctx *ctx, const char *op, const ldm_tensor *x, int64_t *P, int64_t in3[3]) {
    if (x->ndim != 4 && x->ndim != 5) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: expected [B,C,H,W] or [B,C,T,H,W], got %s", op, ldm__shp(x).s);
        return 0;
    }
    *P = x->shape[0] * x->shape[1];
    in3[0] = x->ndim == 5 ? x->shape[2] : 1;
    in3[1] = x->shape[x->ndim - 2];
    in3[2] = x->shape[x->ndim - 1];
    return 1;
}
static ldm_shape ldm__planes_shape(const ldm_tensor *x, const int64_t o3[3]) {
    return x->ndim == 5 ? ldm_shape5(x->shape[0], x->shape[1], o3[0], o3[1], o3[2]) : ldm_shape4(x->shape[0], x->shape[1], o3[1], o3[2]);
}

static void ldm__upsample_bw(ldm_ctx *ctx, ldm__node *nd, float *dout, float **din) {
    if (din[0]) LDM__BE(nd->out)->upsample_backward(ctx, din[0], dout, nd->args.upsample.P, nd->args.upsample.in3, nd->args.upsample.f3);
}
LDM_API ldm_tensor *ldm_upsample_nearest(ldm_ctx *ctx, ldm_tensor *x, int scale_t, int scale_h, int scale_w) {
    int64_t P, in3[3], o3[3];
    if (ldm__bad(ctx, x) || !ldm__planes(ctx, "ldm_upsample_nearest", x, &P, in3)) return NULL;
    int f3[3] = {x->ndim == 5 ? scale_t : 1, scale_h, scale_w};
    if (f3[0] < 1 || f3[1] < 1 || f3[2] < 1 || (x->ndim == 4 && scale_t != 1)) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_upsample_nearest: bad factors (%d,%d,%d) for %s", scale_t, scale_h, scale_w, ldm__shp(x).s);
        return NULL;
    }
    for (int i = 0; i < 3; i++) o3[i] = in3[i] * f3[i];
    ldm_tensor *y = ldm__new_on(ctx, ldm__planes_shape(x, o3), x->device);
    if (!y) return NULL;
    LDM__BE(x)->upsample_forward(ctx, y->data, x->data, P, in3, f3);
    ldm__node *nd = ldm__record(ctx, y, ldm__upsample_bw, 1, x, NULL, NULL, NULL);
    if (nd) { nd->args.upsample.P = P; for (int i = 0; i < 3; i++) { nd->args.upsample.in3[i] = in3[i]; nd->args.upsample.f3[i] = f3[i]; } }
    return y;
}

static void ldm__pool_bw(ldm_ctx *ctx, ldm__node *nd, float *dout, float **din) {
    if (din[0]) LDM__BE(nd->out)->pool_backward(ctx, din[0], dout, (float *)nd->saved, nd->args.pool.P, nd->args.pool.in3, nd->args.pool.out3,
                                                nd->args.pool.k3, nd->args.pool.s3, nd->args.pool.p3, nd->args.pool.is_max);
}
static ldm_tensor *ldm__pool(ldm_ctx *ctx, ldm_tensor *x, int kernel, int stride, int pad, int is_max) {
    const char *op = is_max ? "ldm_max_pool" : "ldm_avg_pool";
    int64_t P, in3[3], o3[3];
    if (ldm__bad(ctx, x) || !ldm__planes(ctx, op, x, &P, in3)) return NULL;
    int three = x->ndim == 5; /* 2-D pooling is 3-D pooling with a unit window in T */
    int k3[3] = {three ? kernel : 1, kernel, kernel}, s3[3] = {three ? stride : 1, stride, stride}, p3[3] = {three ? pad : 0, pad, pad};
    for (int i = 0; i < 3; i++) {
        int64_t e = in3[i] + 2 * p3[i] - k3[i];
        if (kernel < 1 || stride < 1 || pad < 0 || 2 * pad > kernel || e < 0) {
            ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: kernel %d, stride %d, padding %d do not fit %s (padding must be at most half the kernel)",
                           op, kernel, stride, pad, ldm__shp(x).s);
            return NULL;
        }
        o3[i] = e / s3[i] + 1;
    }
    ldm_tensor *y = ldm__new_on(ctx, ldm__planes_shape(x, o3), x->device);
    float *arg = NULL;
    if (!y) return NULL;
    if (is_max && !(arg = (float *)ldm_arena_alloc(ctx, x->device, (size_t)y->numel * 4))) return NULL;
    LDM__BE(x)->pool_forward(ctx, y->data, arg, x->data, P, in3, o3, k3, s3, p3, is_max);
    ldm__node *nd = ldm__record(ctx, y, ldm__pool_bw, 1, x, NULL, NULL, NULL);
    if (nd) {
        nd->args.pool.P = P;
        for (int i = 0; i < 3; i++) {
            nd->args.pool.in3[i] = in3[i]; nd->args.pool.out3[i] = o3[i];
            nd->args.pool.k3[i] = k3[i]; nd->args.pool.s3[i] = s3[i]; nd->args.pool.p3[i] = p3[i];
        }
        nd->args.pool.is_max = is_max;
        nd->saved = arg;
    }
    return y;
}
LDM_API ldm_tensor *ldm_avg_pool(ldm_ctx *ctx, ldm_tensor *x, int kernel, int stride, int pad) { return ldm__pool(ctx, x, kernel, stride, pad, 0); }
LDM_API ldm_tensor *ldm_max_pool(ldm_ctx *ctx, ldm_tensor *x, int kernel, int stride, int pad) { return ldm__pool(ctx, x, kernel, stride, pad, 1); }

/* ---- shape ops: all of them are the strided-copy kernel ---------------------------------- */
/* A sub-block of a bigger tensor: copy between a contiguous `shape` block and the region of
   `big` starting at `offset` (big's strides). to_big: block -> region, else region -> block. */
static void ldm__block_copy(ldm_ctx *ctx, const ldm_tensor *big, float *bigdata, int64_t offset, const int64_t *shape, int nd,
                            float *block, int to_big, int accumulate) {
    int64_t bst[LDM_MAX_DIMS], kst[LDM_MAX_DIMS], s5[5], b5[5], k5[5];
    ldm__strides(big->shape, big->ndim, bst);
    ldm__strides(shape, nd, kst);
    for (int i = 0; i < 5; i++) { s5[i] = 1; b5[i] = 0; k5[i] = 0; }
    for (int i = 0; i < nd; i++) { s5[5 - nd + i] = shape[i]; b5[5 - nd + i] = bst[i]; k5[5 - nd + i] = kst[i]; }
    if (to_big) LDM__BE(big)->strided_copy(ctx, bigdata + offset, b5, block, k5, s5, accumulate);
    else LDM__BE(big)->strided_copy(ctx, block, k5, bigdata + offset, b5, s5, accumulate);
}

static void ldm__view_bw(ldm_ctx *ctx, ldm__node *nd, float *dout, float **din) {
    if (din[0]) LDM__BE(nd->out)->axpby(ctx, din[0], dout, nd->out->numel, 1.0f, 1.0f);
}
LDM_API ldm_tensor *ldm_reshape(ldm_ctx *ctx, ldm_tensor *x, ldm_shape s) {
    if (ldm__bad(ctx, x)) return NULL;
    int infer = -1;
    int64_t n = 1;
    for (int i = 0; i < s.ndim; i++) {
        if (s.d[i] == -1 && infer < 0) infer = i;
        else if (s.d[i] < 0) { n = -1; break; }
        else n *= s.d[i];
    }
    if (n >= 0 && infer >= 0 && n > 0 && x->numel % n == 0) { s.d[infer] = x->numel / n; n = x->numel; }
    if (n != x->numel) {
        char b[96];
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_reshape: cannot view %s as %s", ldm__shp(x).s, ldm__shape_fmt(s.d, s.ndim, b, sizeof b));
        return NULL;
    }
    ldm_tensor *y = (ldm_tensor *)ldm_arena_alloc(ctx, LDM_CPU, sizeof *y);
    if (!y) return NULL;
    *y = *x; /* shares x's data: tensors are never modified in place */
    y->ndim = s.ndim;
    for (int i = 0; i < s.ndim; i++) y->shape[i] = s.d[i];
    y->grad = NULL;
    y->node = -1;
    y->requires_grad = 0;
    y->name = NULL;
    ldm__record(ctx, y, ldm__view_bw, 1, x, NULL, NULL, NULL);
    return y;
}
LDM_API ldm_tensor *ldm_copy(ldm_ctx *ctx, ldm_tensor *x) {
    if (ldm__bad(ctx, x)) return NULL;
    ldm_tensor *y = ldm__like(ctx, x);
    if (!y) return NULL;
    LDM__BE(x)->copy(ctx->be_state[x->device], y->data, x->device, x->data, x->device, (size_t)x->numel * 4);
    ldm__record(ctx, y, ldm__view_bw, 1, x, NULL, NULL, NULL);
    return y;
}

static void ldm__permute_strides(const ldm_tensor *x, const int64_t *perm, int64_t *s5, int64_t *src5, int64_t *dst5) {
    int64_t xst[LDM_MAX_DIMS], yshape[LDM_MAX_DIMS], yst[LDM_MAX_DIMS];
    int nd = x->ndim;
    ldm__strides(x->shape, nd, xst);
    for (int i = 0; i < nd; i++) yshape[i] = x->shape[perm[i]];
    ldm__strides(yshape, nd, yst);
    for (int i = 0; i < 5; i++) { s5[i] = 1; src5[i] = 0; dst5[i] = 0; }
    for (int i = 0; i < nd; i++) { s5[5 - nd + i] = yshape[i]; src5[5 - nd + i] = xst[perm[i]]; dst5[5 - nd + i] = yst[i]; }
}
static void ldm__permute_bw(ldm_ctx *ctx, ldm__node *nd, float *dout, float **din) {
    if (!din[0]) return;
    int64_t s5[5], x5[5], y5[5];
    ldm__permute_strides(nd->in[0], nd->args.permute.perm, s5, x5, y5);
    LDM__BE(nd->out)->strided_copy(ctx, din[0], x5, dout, y5, s5, 1);
}
LDM_API ldm_tensor *ldm_permute(ldm_ctx *ctx, ldm_tensor *x, const int *perm) {
    if (ldm__bad(ctx, x)) return NULL;
    int64_t p[LDM_MAX_DIMS];
    unsigned seen = 0;
    for (int i = 0; i < x->ndim; i++) {
        int d = perm[i] < 0 ? perm[i] + x->ndim : perm[i];
        if (d < 0 || d >= x->ndim || (seen >> d) & 1) {
            ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_permute: invalid permutation for %s", ldm__shp(x).s);
            return NULL;
        }
        seen |= 1u << d;
        p[i] = d;
    }
    int64_t s5[5], x5[5], y5[5], ys[LDM_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) ys[i] = x->shape[p[i]];
    ldm_tensor *y = ldm__new_on(ctx, ldm_shape_n(x->ndim, ys), x->device);
    if (!y) return NULL;
    ldm__permute_strides(x, p, s5, x5, y5);
    LDM__BE(x)->strided_copy(ctx, y->data, y5, x->data, x5, s5, 0);
    ldm__node *nd = ldm__record(ctx, y, ldm__permute_bw, 1, x, NULL, NULL, NULL);
    if (nd) for (int i = 0; i < x->ndim; i++) nd->args.permute.perm[i] = p[i];
    return y;
}
LDM_API ldm_tensor *ldm_transpose(ldm_ctx *ctx, ldm_tensor *x, int d0, int d1) {
    if (ldm__bad(ctx, x)) return NULL;
    int a = ldm__dim(ctx, "ldm_transpose", x, d0), b = ldm__dim(ctx, "ldm_transpose", x, d1);
    if (a < 0 || b < 0) return NULL;
    int perm[LDM_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) perm[i] = i;
    perm[a] = b;
    perm[b] = a;
    return ldm_permute(ctx, x, perm);
}

static void ldm__slice_bw(ldm_ctx *ctx, ldm__node *nd, float *dout, float **din) {
    if (!din[0]) return;
    ldm_tensor *x = nd->in[0];
    int64_t st[LDM_MAX_DIMS];
    ldm__strides(x->shape, x->ndim, st);
    ldm__block_copy(ctx, x, din[0], nd->args.slice.start * st[nd->args.slice.dim], nd->out->shape, x->ndim, dout, 1, 1);
}
LDM_API ldm_tensor *ldm_slice(ldm_ctx *ctx, ldm_tensor *x, int dim, int64_t start, int64_t len) {
    if (ldm__bad(ctx, x)) return NULL;
    int d = ldm__dim(ctx, "ldm_slice", x, dim);
    if (d < 0) return NULL;
    if (start < 0 || len < 0 || start + len > x->shape[d]) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_slice: [%lld, %lld) is outside dim %d of %s", (long long)start,
                       (long long)(start + len), d, ldm__shp(x).s);
        return NULL;
    }
    ldm_shape s = ldm_shape_of(x);
    s.d[d] = len;
    ldm_tensor *y = ldm__new_on(ctx, s, x->device);
    if (!y) return NULL;
    int64_t st[LDM_MAX_DIMS];
    ldm__strides(x->shape, x->ndim, st);
    ldm__block_copy(ctx, x, x->data, start * st[d], y->shape, x->ndim, y->data, 0, 0);
    ldm__node *nd = ldm__record(ctx, y, ldm__slice_bw, 1, x, NULL, NULL, NULL);
    if (nd) { nd->args.slice.dim = d; nd->args.slice.start = start; }
    return y;
}
/* GEGLU's backward, from x alone: d value = dy * gelu(gate), d gate = gelu'(gate) * dy * value,
   each added into its half of x's gradient; the temporaries go with the arena mark. */
static void ldm__geglu_bw(ldm_ctx *ctx, ldm__node *nd, float *dout, float **din) {
    if (!din[0]) return;
    ldm_tensor *x = nd->in[0];
    int64_t I = x->shape[x->ndim - 1] / 2, st[LDM_MAX_DIMS];
    ldm__strides(x->shape, x->ndim, st);
    ldm_mark m = ldm_arena_mark(ctx);
    int prev = ldm_set_grad_enabled(ctx, 0);
    ldm_tensor dy = ldm_tensor_wrap(dout, ldm_shape_of(nd->out), nd->out->device);
    ldm_tensor *val = ldm_slice(ctx, x, x->ndim - 1, 0, I), *gate = ldm_slice(ctx, x, x->ndim - 1, I, I);
    ldm_tensor *g = ldm_gelu(ctx, gate, 0);
    ldm_tensor *dval = ldm_mul(ctx, &dy, g), *dg = ldm_mul(ctx, &dy, val), *dgate = gate ? ldm__like(ctx, gate) : NULL;
    if (dval && dg && dgate) {
        LDM__BE(x)->fill(ctx, dgate->data, dgate->numel, 0.0f);
        LDM__BE(x)->unary_backward(ctx, LDM__U_GELU, dgate->data, dg->data, gate->data, g->data, gate->numel, 0.0f, 0.0f);
        ldm__block_copy(ctx, x, din[0], 0, val->shape, x->ndim, dval->data, 1, 1);
        ldm__block_copy(ctx, x, din[0], I * st[x->ndim - 1], gate->shape, x->ndim, dgate->data, 1, 1);
    }
    ldm_set_grad_enabled(ctx, prev);
    ldm_arena_rewind(ctx, m);
}
LDM_API ldm_tensor *ldm_geglu(ldm_ctx *ctx, ldm_tensor *x) {
    if (ldm__bad(ctx, x)) return NULL;
    if (x->ndim < 1 || x->shape[x->ndim - 1] % 2) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_geglu: the last dim of %s must be even (value and gate halves)", ldm__shp(x).s);
        return NULL;
    }
    int64_t I = x->shape[x->ndim - 1] / 2;
    ldm_mark m = ldm_arena_mark(ctx);
    int prev = ldm_set_grad_enabled(ctx, 0);
    ldm_tensor *y = ldm_mul(ctx, ldm_slice(ctx, x, x->ndim - 1, 0, I), ldm_gelu(ctx, ldm_slice(ctx, x, x->ndim - 1, I, I), 0));
    ldm_set_grad_enabled(ctx, prev);
    y = ldm_arena_keep(ctx, m, y);   /* the halves and the gelu are dropped */
    ldm__record(ctx, y, ldm__geglu_bw, 1, x, NULL, NULL, NULL);
    return y;
}
LDM_API ldm_result ldm_split(ldm_ctx *ctx, ldm_tensor *x, int n, const int64_t *sizes, int dim, ldm_tensor **out) {
    if (ldm__bad(ctx, x)) return ctx->status ? ctx->status : ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_split: NULL tensor");
    int d = ldm__dim(ctx, "ldm_split", x, dim);
    if (d < 0) return ctx->status;
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += sizes[i];
    if (total != x->shape[d]) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_split: sizes add up to %lld, dim %d of %s is %lld",
                                                    (long long)total, d, ldm__shp(x).s, (long long)x->shape[d]);
    int64_t at = 0;
    for (int i = 0; i < n; i++) { out[i] = ldm_slice(ctx, x, d, at, sizes[i]); at += sizes[i]; }
    return ctx->status;
}
LDM_API ldm_result ldm_chunk(ldm_ctx *ctx, ldm_tensor *x, int n, int dim, ldm_tensor **out) {
    if (ldm__bad(ctx, x)) return ctx->status ? ctx->status : ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_chunk: NULL tensor");
    int d = ldm__dim(ctx, "ldm_chunk", x, dim);
    if (d < 0) return ctx->status;
    if (n < 1 || x->shape[d] % n)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_chunk: dim %d of %s does not split into %d equal chunks", d, ldm__shp(x).s, n);
    int64_t sizes[64];
    if (n > 64) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_chunk: at most 64 chunks");
    for (int i = 0; i < n; i++) sizes[i] = x->shape[d] / n;
    return ldm_split(ctx, x, n, sizes, d, out);
}

static void ldm__concat_bw(ldm_ctx *ctx, ldm__node *nd, float *dout, float **din) {
    ldm_tensor *y = nd->out;
    int64_t st[LDM_MAX_DIMS];
    ldm__strides(y->shape, y->ndim, st);
    for (int k = 0; k < nd->nin; k++)
        if (din[k]) ldm__block_copy(ctx, y, dout, nd->args.concat.off[k] * st[nd->args.concat.dim], nd->in[k]->shape, y->ndim, din[k], 0, 1);
}
LDM_API ldm_tensor *ldm_concat(ldm_ctx *ctx, int n, ldm_tensor *const *xs, int dim) {
    if (ctx->status) return NULL;
    if (n < 1) { ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_concat: no tensors"); return NULL; }
    for (int k = 0; k < n; k++) if (!xs[k]) return NULL;
    ldm_tensor *x0 = xs[0];
    int d = ldm__dim(ctx, "ldm_concat", x0, dim);
    if (d < 0) return NULL;
    ldm_shape s = ldm_shape_of(x0);
    s.d[d] = 0;
    for (int k = 0; k < n; k++) {
        int ok = xs[k]->ndim == x0->ndim && xs[k]->device == x0->device;
        for (int i = 0; ok && i < x0->ndim; i++) ok = i == d || xs[k]->shape[i] == x0->shape[i];
        if (!ok) {
            ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_concat: %s and %s differ outside dim %d", ldm__shp(x0).s, ldm__shp(xs[k]).s, d);
            return NULL;
        }
        s.d[d] += xs[k]->shape[d];
    }
    if (ctx->grad_enabled && n > 4) { /* a tape node holds 4 inputs: chain longer lists */
        ldm_tensor *part[4], *acc = ldm_concat(ctx, 4, xs, d);
        for (int k = 4; k < n && acc;) {
            int m = LDM__MIN(3, n - k);
            part[0] = acc;
            for (int q = 0; q < m; q++) part[1 + q] = xs[k + q];
            acc = ldm_concat(ctx, 1 + m, part, d);
            k += m;
        }
        return acc;
    }
    ldm_tensor *y = ldm__new_on(ctx, s, x0->device);
    int64_t st[LDM_MAX_DIMS], at = 0;
    if (!y) return NULL;
    ldm__strides(y->shape, y->ndim, st);
    for (int k = 0; k < n; k++) {
        ldm__block_copy(ctx, y, y->data, at * st[d], xs[k]->shape, y->ndim, xs[k]->data, 1, 0);
        at += xs[k]->shape[d];
    }
    if (n <= 4) { /* more inputs only get here with grad mode off: nothing to record */
        ldm__node *nd = ldm__record(ctx, y, ldm__concat_bw, n, xs[0], n > 1 ? xs[1] : NULL, n > 2 ? xs[2] : NULL, n > 3 ? xs[3] : NULL);
        if (nd) {
            nd->args.concat.dim = d;
            at = 0;
            for (int k = 0; k < n; k++) { nd->args.concat.off[k] = at; at += xs[k]->shape[d]; }
        }
    }
    return y;
}

/* the interior of y is x */
static void ldm__pad_bw(ldm_ctx *ctx, ldm__node *nd, float *dout, float **din) {
    if (!din[0]) return;
    ldm_tensor *x = nd->in[0], *y = nd->out;
    const int64_t *lo = nd->args.pad.lo;
    int64_t st[LDM_MAX_DIMS], off = 0;
    ldm__strides(y->shape, y->ndim, st);
    for (int i = 0; i < y->ndim; i++) off += lo[i] * st[i];
    ldm__block_copy(ctx, y, dout, off, x->shape, x->ndim, din[0], 0, 1);
}
LDM_API ldm_tensor *ldm_pad(ldm_ctx *ctx, ldm_tensor *x, int n, const int *pads, float v) {
    if (ldm__bad(ctx, x)) return NULL;
    if (n < 0 || n > x->ndim) { ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_pad: %d padded dims for %s", n, ldm__shp(x).s); return NULL; }
    int64_t lo[LDM_MAX_DIMS], st[LDM_MAX_DIMS], off = 0;
    ldm_shape s = ldm_shape_of(x);
    for (int i = 0; i < x->ndim; i++) lo[i] = 0;
    for (int k = 0; k < n; k++) {
        int d = x->ndim - 1 - k;
        if (pads[2 * k] < 0 || pads[2 * k + 1] < 0) {
            ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_pad: negative padding (%d, %d) on dim %d is not supported", pads[2 * k], pads[2 * k + 1], d);
            return NULL;
        }
        lo[d] = pads[2 * k];
        s.d[d] += pads[2 * k] + pads[2 * k + 1];
    }
    ldm_tensor *y = ldm__new_on(ctx, s, x->device);
    if (!y) return NULL;
    LDM__BE(x)->fill(ctx, y->data, y->numel, v);
    ldm__strides(y->shape, y->ndim, st);
    for (int i = 0; i < y->ndim; i++) off += lo[i] * st[i];
    ldm__block_copy(ctx, y, y->data, off, x->shape, x->ndim, x->data, 1, 0);
    ldm__node *nd = ldm__record(ctx, y, ldm__pad_bw, 1, x, NULL, NULL, NULL);
    if (nd) for (int i = 0; i < x->ndim; i++) nd->args.pad.lo[i] = lo[i];
    return y;
}

/* ---- dropout and embedding --------------------------------------------------------------- */
LDM_API ldm_tensor *ldm_dropout(ldm_ctx *ctx, ldm_tensor *x, float p, int training) {
    if (ldm__bad(ctx, x)) return NULL;
    if (p < 0.0f || p > 1.0f) { ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_dropout: p = %g is not a probability", (double)p); return NULL; }
    if (!training || p == 0.0f) return x;
    ldm_tensor *mask = ldm__like(ctx, x);
    if (!mask) return NULL;
    ldm_rng_rows(ctx, &ctx->rng, x->device, mask->data, x->shape[0], x->numel / (x->shape[0] ? x->shape[0] : 1), 0, 0.0f, 1.0f);
    /* mask = (u >= p) / (1 - p); p = 1 drops everything */
    LDM__BE(x)->unary(ctx, LDM__U_STEP, mask->data, mask->data, x->numel, p, p < 1.0f ? 1.0f / (1.0f - p) : 0.0f);
    return ldm_mul(ctx, x, mask);
}

static void ldm__embedding_bw(ldm_ctx *ctx, ldm__node *nd, float *dout, float **din) {
    if (din[0]) LDM__BE(nd->out)->embedding_backward(ctx, din[0], dout, (const int64_t *)nd->saved, nd->args.embedding.n,
                                                     nd->args.embedding.dim);
}
LDM_API ldm_tensor *ldm_embedding(ldm_ctx *ctx, ldm_tensor *weight, int64_t n, const int64_t *idx) {
    if (ldm__bad(ctx, weight)) return NULL;
    if (weight->ndim != 2) { ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_embedding: weight %s is not [num, dim]", ldm__shp(weight).s); return NULL; }
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= weight->shape[0]) {
            ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_embedding: index %lld (position %lld) is outside [0, %lld)",
                           (long long)idx[i], (long long)i, (long long)weight->shape[0]);
            return NULL;
        }
    int64_t *saved = (int64_t *)ldm_arena_alloc(ctx, weight->device, sizeof(int64_t) * (size_t)(n ? n : 1));
    ldm_tensor *y = ldm__new_on(ctx, ldm_shape2(n, weight->shape[1]), weight->device);
    if (!saved || !y) return NULL;
    LDM__BE(weight)->copy(ctx->be_state[weight->device], saved, weight->device, idx, LDM_CPU, sizeof(int64_t) * (size_t)n);
    LDM__BE(weight)->embedding_forward(ctx, y->data, weight->data, saved, n, weight->shape[1]);
    ldm__node *nd = ldm__record(ctx, y, ldm__embedding_bw, 1, weight, NULL, NULL, NULL);
    if (nd) { nd->saved = saved; nd->args.embedding.n = n; nd->args.embedding.dim = weight->shape[1]; }
    return y;
}

LDM_API ldm_result ldm_argmin(ldm_ctx *ctx, const ldm_tensor *x, int64_t *idx) {
    if (ldm__bad(ctx, x)) return ctx->status ? ctx->status : ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_argmin: NULL input");
    int64_t K = x->ndim ? x->shape[x->ndim - 1] : 1, rows = K ? x->numel / K : 0;
    if (K < 1) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_argmin: input %s has an empty last dim", ldm__shp(x).s);
    if (rows == 0) return LDM_OK;
    ldm_mark m = ldm_arena_mark(ctx);
    int64_t *dev = x->device == LDM_CPU ? idx : (int64_t *)ldm_arena_alloc(ctx, x->device, sizeof(int64_t) * (size_t)rows);
    if (!dev) return ctx->status;
    LDM__BE(x)->argmin_rows(ctx, dev, x->data, rows, K);
    if (dev != idx) LDM__BE(x)->copy(ctx->be_state[x->device], idx, LDM_CPU, dev, x->device, sizeof(int64_t) * (size_t)rows);
    ldm_arena_rewind(ctx, m);
    return ctx->status;
}

/* ========================================================================================== */
/*                                    CPU kernels                                             */
/* ========================================================================================== */
/* Element-wise work is split in fixed 16K-element pieces so that results never depend on
   the thread count; reductions keep a fixed order per output element. */
/* Elementwise kernels ask GCC to vectorise them: its -O2 "very cheap" cost model leaves most
   loops scalar (Clang's -O2 vectorises them anyway). Vectorising element-independent loops
   changes no result: no reassociation, and -ffp-contract stays what the build says. */
#if defined(__GNUC__) && !defined(__clang__)
#define LDM__VEC __attribute__((optimize("tree-vectorize", "vect-cost-model=dynamic")))
#else
#define LDM__VEC
#endif
#define LDM__GRAIN 16384

/* e^x for SiLU, in a form the vectoriser takes (libm's expf is a call per element): x = n ln2 + r
   with |r| <= ln2/2 (Cody-Waite, n by the 1.5 * 2^23 rounding trick), e^r by its Taylor series to
   r^7, times 2^n in two halves so that denormal results come out right. Within 1.2 ulp of
   e^x on a 1.2M-point sweep of [-110, 95] (against exp in double); 0 below -104, inf above
   88.72, NaN for NaN, as expf. */
static inline float ldm__pow2i(int32_t h) { /* 2^h for -126 <= h <= 127 */
    uint32_t b = (uint32_t)(h + 127) << 23;
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}
static inline float ldm__expf(float x) {
    float xc = x > -104.0f ? (x < 89.0f ? x : 89.0f) : -104.0f; /* NaN: -104, put back at the end */
    float t = xc * 1.44269504088896341f + 12582912.0f, nf = t - 12582912.0f;
    uint32_t tb;
    memcpy(&tb, &t, sizeof tb);
    int32_t n = (int32_t)(tb - 0x4b400000u), h = n >> 1; /* n = nf, from t's low mantissa bits */
    float r = (xc - nf * 0.693145751953125f) - nf * 1.428606765330187e-06f; /* ln 2 in two parts */
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 + r * (1.0f / 5040)))))));
    float y = p * ldm__pow2i(h) * ldm__pow2i(n - h);
    return x != x ? x : y;
}
/* y = silu(x) = x / (1 + e^-x); y may be x */
static LDM__VEC void ldm__silu_row(float *y, const float *x, int64_t n) {
    for (int64_t k = 0; k < n; k++) { float v = x[k]; y[k] = v / (1.0f + ldm__expf(-v)); }
}
/* dy * silu'(z) */
static inline float ldm__silu_grad(float dy, float z) {
    float sg = 1.0f / (1.0f + ldm__expf(-z));
    return dy * sg * (1.0f + z * (1.0f - sg));
}
static LDM__VEC void ldm__silu_grad_row(float *dx, const float *dy, const float *x, int64_t n) {
    for (int64_t k = 0; k < n; k++) dx[k] += ldm__silu_grad(dy[k], x[k]);
}

static void *ldm__cpu_alloc(void *st, size_t n) { (void)st; return LDM_MALLOC(n ? n : 1); }
static void ldm__cpu_free(void *st, void *p) { (void)st; LDM_FREE(p); }
static void ldm__cpu_copy(void *st, void *dst, ldm_device dd, const void *src, ldm_device sd, size_t n) {
    (void)st; (void)dd; (void)sd;
    if (n && dst != src) memmove(dst, src, n);
}
typedef struct { float *out; float v; } ldm__fill_job;
static LDM__VEC void ldm__fill_task(void *arg, int64_t b, int64_t e, int tid) {
    ldm__fill_job *j = (ldm__fill_job *)arg;
    (void)tid;
    for (int64_t i = b; i < e; i++) j->out[i] = j->v;
}
static void ldm__cpu_fill(ldm_ctx *ctx, float *out, int64_t n, float v) {
    ldm__fill_job j;
    j.out = out; j.v = v;
    ldm_parallel_for(ctx, n, LDM__GRAIN * 4, ldm__fill_task, &j);
}
typedef struct { float *y; const float *x; float a, b; } ldm__axpby_job;
static LDM__VEC void ldm__axpby_task(void *arg, int64_t s, int64_t e, int tid) {
    ldm__axpby_job *j = (ldm__axpby_job *)arg;
    float *LDM_RESTRICT y = j->y;
    const float *x = j->x;
    float a = j->a, b = j->b;
    (void)tid;
    if (a == 1.0f && b == 1.0f) for (int64_t i = s; i < e; i++) y[i] += x[i];
    else for (int64_t i = s; i < e; i++) y[i] = a * y[i] + b * x[i];
}
static void ldm__cpu_axpby(ldm_ctx *ctx, float *y, const float *x, int64_t n, float a, float b) {
    ldm__axpby_job j;
    j.y = y; j.x = x; j.a = a; j.b = b;
    ldm_parallel_for(ctx, n, LDM__GRAIN, ldm__axpby_task, &j);
}

/* ---- unary ---- */
typedef struct { ldm__unary_op op; float *out; const float *x, *dy, *y; float p0, p1; } ldm__unary_job;
static float ldm__gelu_tanh_inner(float x) { return 0.7978845608028654f * (x + 0.044715f * x * x * x); }
static void ldm__unary_task(void *arg, int64_t s, int64_t e, int tid) {
    ldm__unary_job *j = (ldm__unary_job *)arg;
    const float *x = j->x;
    float *y = j->out, p0 = j->p0, p1 = j->p1;
    (void)tid;
#define LDM__MAP(expr) for (int64_t i = s; i < e; i++) { float v = x[i]; y[i] = (expr); } break
    switch (j->op) {
    case LDM__U_AFFINE: LDM__MAP(v * p0 + p1);
    case LDM__U_POW: LDM__MAP(p0 == 2.0f ? v * v : p0 == -0.5f ? 1.0f / sqrtf(v) : powf(v, p0));
    case LDM__U_EXP: LDM__MAP(expf(v));
    case LDM__U_LOG: LDM__MAP(logf(v));
    case LDM__U_SQRT: LDM__MAP(sqrtf(v));
    case LDM__U_ABS: LDM__MAP(fabsf(v));
    case LDM__U_SQUARE: LDM__MAP(v * v);
    case LDM__U_CLAMP: LDM__MAP(v < p0 ? p0 : v > p1 ? p1 : v);
    case LDM__U_SIGMOID: LDM__MAP(1.0f / (1.0f + expf(-v)));
    case LDM__U_SILU: ldm__silu_row(y + s, x + s, e - s); break;
    case LDM__U_RELU: LDM__MAP(v > 0.0f ? v : 0.0f);
    case LDM__U_LEAKY: LDM__MAP(v > 0.0f ? v : v * p0);
    case LDM__U_TANH: LDM__MAP(tanhf(v));
    case LDM__U_GELU: LDM__MAP(0.5f * v * (1.0f + erff(v * 0.7071067811865476f)));
    case LDM__U_GELU_TANH: LDM__MAP(0.5f * v * (1.0f + tanhf(ldm__gelu_tanh_inner(v))));
    case LDM__U_SOFTPLUS: LDM__MAP(v * p0 > p1 ? v : log1pf(expf(v * p0)) / p0);
    case LDM__U_SIN: LDM__MAP(sinf(v));
    case LDM__U_COS: LDM__MAP(cosf(v));
    case LDM__U_STEP: LDM__MAP(v >= p0 ? p1 : 0.0f);
    }
#undef LDM__MAP
}
static LDM__VEC void ldm__unary_bw_task(void *arg, int64_t s, int64_t e, int tid) {
    ldm__unary_job *j = (ldm__unary_job *)arg;
    const float *x = j->x, *y = j->y, *dy = j->dy;
    float *dx = j->out, p0 = j->p0, p1 = j->p1;
    (void)tid;
    (void)y;
#define LDM__MAP(expr) for (int64_t i = s; i < e; i++) { float v = x[i], o = y[i]; (void)(v + o); dx[i] += dy[i] * (expr); } break
    switch (j->op) {
    case LDM__U_AFFINE: LDM__MAP(p0);
    case LDM__U_POW: LDM__MAP(p0 == 2.0f ? 2.0f * v : p0 * powf(v, p0 - 1.0f));
    case LDM__U_EXP: LDM__MAP(o);
    case LDM__U_LOG: LDM__MAP(1.0f / v);
    case LDM__U_SQRT: LDM__MAP(0.5f / o);
    case LDM__U_ABS: LDM__MAP(v > 0.0f ? 1.0f : v < 0.0f ? -1.0f : 0.0f);
    case LDM__U_SQUARE: LDM__MAP(2.0f * v);
    case LDM__U_CLAMP: LDM__MAP(v >= p0 && v <= p1 ? 1.0f : 0.0f);
    case LDM__U_SIGMOID: LDM__MAP(o * (1.0f - o));
    case LDM__U_SILU: ldm__silu_grad_row(dx + s, dy + s, x + s, e - s); break;
    case LDM__U_RELU: LDM__MAP(v > 0.0f ? 1.0f : 0.0f);
    case LDM__U_LEAKY: LDM__MAP(v > 0.0f ? 1.0f : p0);
    case LDM__U_TANH: LDM__MAP(1.0f - o * o);
    case LDM__U_GELU: LDM__MAP(0.5f * (1.0f + erff(v * 0.7071067811865476f)) + v * 0.3989422804014327f * expf(-0.5f * v * v));
    case LDM__U_GELU_TANH: {
        for (int64_t i = s; i < e; i++) {
            float v = x[i], t = tanhf(ldm__gelu_tanh_inner(v));
            float dinner = 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * v * v);
            dx[i] += dy[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * dinner);
        }
        break;
    }
    case LDM__U_SOFTPLUS: LDM__MAP(v * p0 > p1 ? 1.0f : 1.0f / (1.0f + expf(-v * p0)));
    case LDM__U_SIN: LDM__MAP(cosf(v));
    case LDM__U_COS: LDM__MAP(-sinf(v));
    case LDM__U_STEP: break;
    }
#undef LDM__MAP
}
static void ldm__cpu_unary(ldm_ctx *ctx, ldm__unary_op op, float *out, const float *x, int64_t n, float p0, float p1) {
    ldm__unary_job j;
    memset(&j, 0, sizeof j);
    j.op = op; j.out = out; j.x = x; j.p0 = p0; j.p1 = p1;
    ldm_parallel_for(ctx, n, LDM__GRAIN, ldm__unary_task, &j);
}
static void ldm__cpu_unary_backward(ldm_ctx *ctx, ldm__unary_op op, float *dx, const float *dy, const float *x,
                                    const float *y, int64_t n, float p0, float p1) {
    ldm__unary_job j;
    j.op = op; j.out = dx; j.x = x; j.dy = dy; j.y = y; j.p0 = p0; j.p1 = p1;
    ldm_parallel_for(ctx, n, LDM__GRAIN, ldm__unary_bw_task, &j);
}

/* ---- binary with broadcast: the 5-D index splits into rows (first 4 dims) and the last dim */
typedef struct { ldm__binary_op op; float *out, *da, *db; const float *a, *b, *dy; const ldm__bcast *g; } ldm__binary_job;
static void ldm__row_offsets(const ldm__bcast *g, int64_t r, int64_t *oa, int64_t *ob) {
    int64_t i3 = r % g->shape[3], t = r / g->shape[3];
    int64_t i2 = t % g->shape[2]; t /= g->shape[2];
    int64_t i1 = t % g->shape[1], i0 = t / g->shape[1];
    *oa = i0 * g->sa[0] + i1 * g->sa[1] + i2 * g->sa[2] + i3 * g->sa[3];
    *ob = i0 * g->sb[0] + i1 * g->sb[1] + i2 * g->sb[2] + i3 * g->sb[3];
}
static LDM__VEC void ldm__binary_task(void *arg, int64_t r0, int64_t r1, int tid) {
    ldm__binary_job *j = (ldm__binary_job *)arg;
    const ldm__bcast *g = j->g;
    int64_t W = g->shape[4], sa = g->sa[4], sb = g->sb[4];
    (void)tid;
    for (int64_t r = r0; r < r1; r++) {
        int64_t oa, ob;
        ldm__row_offsets(g, r, &oa, &ob);
        const float *a = j->a + oa, *b = j->b + ob;
        float *y = j->out + r * W;
#define LDM__ROW(expr)                                                                   \
    if (sa && sb) for (int64_t i = 0; i < W; i++) { float u = a[i], v = b[i]; y[i] = (expr); } \
    else if (sa) { float v = b[0]; for (int64_t i = 0; i < W; i++) { float u = a[i]; y[i] = (expr); } } \
    else if (sb) { float u = a[0]; for (int64_t i = 0; i < W; i++) { float v = b[i]; y[i] = (expr); } } \
    else { float u = a[0], v = b[0]; for (int64_t i = 0; i < W; i++) y[i] = (expr); } break
        switch (j->op) {
        case LDM__B_ADD: LDM__ROW(u + v);
        case LDM__B_SUB: LDM__ROW(u - v);
        case LDM__B_MUL: LDM__ROW(u * v);
        case LDM__B_DIV: LDM__ROW(u / v);
        }
#undef LDM__ROW
    }
}
static LDM__VEC void ldm__binary_bw_task(void *arg, int64_t r0, int64_t r1, int tid) {
    ldm__binary_job *j = (ldm__binary_job *)arg;
    const ldm__bcast *g = j->g;
    int64_t W = g->shape[4], sa = g->sa[4], sb = g->sb[4];
    (void)tid;
    for (int64_t r = r0; r < r1; r++) {
        int64_t oa, ob;
        ldm__row_offsets(g, r, &oa, &ob);
        const float *a = j->a + oa, *b = j->b + ob, *dy = j->dy + r * W;
        float *da = j->da ? j->da + r * W : NULL, *db = j->db ? j->db + r * W : NULL;
        for (int64_t i = 0; i < W; i++) {
            float u = a[sa ? i : 0], v = b[sb ? i : 0], d = dy[i];
            switch (j->op) {
            case LDM__B_ADD: if (da) da[i] += d; if (db) db[i] += d; break;
            case LDM__B_SUB: if (da) da[i] += d; if (db) db[i] -= d; break;
            case LDM__B_MUL: if (da) da[i] += d * v; if (db) db[i] += d * u; break;
            case LDM__B_DIV: if (da) da[i] += d / v; if (db) db[i] -= d * u / (v * v); break;
            }
        }
    }
}
static void ldm__cpu_binary(ldm_ctx *ctx, ldm__binary_op op, float *out, const float *a, const float *b, const ldm__bcast *g) {
    ldm__binary_job j;
    memset(&j, 0, sizeof j);
    j.op = op; j.out = out; j.a = a; j.b = b; j.g = g;
    int64_t rows = g->n / (g->shape[4] ? g->shape[4] : 1);
    ldm_parallel_for(ctx, rows, LDM__MAX(1, LDM__GRAIN / LDM__MAX(1, g->shape[4])), ldm__binary_task, &j);
}
static void ldm__cpu_binary_backward(ldm_ctx *ctx, ldm__binary_op op, float *da, float *db, const float *dy, const float *a,
                                     const float *b, const ldm__bcast *g) {
    ldm__binary_job j;
    memset(&j, 0, sizeof j);
    j.op = op; j.da = da; j.db = db; j.dy = dy; j.a = a; j.b = b; j.g = g;
    int64_t rows = g->n / (g->shape[4] ? g->shape[4] : 1);
    ldm_parallel_for(ctx, rows, LDM__MAX(1, LDM__GRAIN / LDM__MAX(1, g->shape[4])), ldm__binary_bw_task, &j);
}

/* ---- reduce_sum: accumulate in double in input order, per output element ---- */
static void ldm__cpu_reduce_sum(ldm_ctx *ctx, float *out, const float *x, const int64_t *shape, const int64_t *ostride, int accumulate) {
    int64_t on = 1;
    for (int d = 0; d < 5; d++) if (ostride[d]) on *= shape[d];
    size_t used0 = ctx->arena[LDM_CPU].used; /* the accumulator is scratch, released below */
    double *acc = (double *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(double) * (size_t)on);
    if (!acc) return;
    memset(acc, 0, sizeof(double) * (size_t)on);
    const float *p = x;
    for (int64_t i0 = 0; i0 < shape[0]; i0++)
        for (int64_t i1 = 0; i1 < shape[1]; i1++)
            for (int64_t i2 = 0; i2 < shape[2]; i2++)
                for (int64_t i3 = 0; i3 < shape[3]; i3++, p += shape[4]) {
                    double *o = acc + i0 * ostride[0] + i1 * ostride[1] + i2 * ostride[2] + i3 * ostride[3];
                    if (ostride[4]) for (int64_t i = 0; i < shape[4]; i++) o[i] += p[i];
                    else {
                        double s = 0.0;
                        for (int64_t i = 0; i < shape[4]; i++) s += p[i];
                        o[0] += s;
                    }
                }
    /* ostride describes a contiguous output, so acc and out share the linear layout */
    for (int64_t i = 0; i < on; i++) out[i] = accumulate ? out[i] + (float)acc[i] : (float)acc[i];
    ctx->arena[LDM_CPU].used = used0;
}

/* ---- strided copy ---- */
typedef struct { float *dst; const float *src; const int64_t *ds, *ss, *shape; int acc; } ldm__scopy_job;
static void ldm__scopy_task(void *arg, int64_t r0, int64_t r1, int tid) {
    ldm__scopy_job *j = (ldm__scopy_job *)arg;
    const int64_t *sh = j->shape, *ds = j->ds, *ss = j->ss;
    int64_t W = sh[4];
    (void)tid;
    for (int64_t r = r0; r < r1; r++) {
        int64_t i3 = r % sh[3], t = r / sh[3], i2 = t % sh[2], i1, i0;
        t /= sh[2];
        i1 = t % sh[1];
        i0 = t / sh[1];
        float *d = j->dst + i0 * ds[0] + i1 * ds[1] + i2 * ds[2] + i3 * ds[3];
        const float *s = j->src + i0 * ss[0] + i1 * ss[1] + i2 * ss[2] + i3 * ss[3];
        int64_t dw = ds[4], sw = ss[4];
        if (j->acc) {
            if (dw == 1 && sw == 1) for (int64_t i = 0; i < W; i++) d[i] += s[i];
            else for (int64_t i = 0; i < W; i++) d[i * dw] += s[i * sw];
        } else {
            if (dw == 1 && sw == 1) memcpy(d, s, sizeof(float) * (size_t)W);
            else for (int64_t i = 0; i < W; i++) d[i * dw] = s[i * sw];
        }
    }
}
static void ldm__cpu_strided_copy(ldm_ctx *ctx, float *dst, const int64_t *dstride, const float *src, const int64_t *sstride,
                                  const int64_t *shape, int accumulate) {
    ldm__scopy_job j;
    j.dst = dst; j.src = src; j.ds = dstride; j.ss = sstride; j.shape = shape; j.acc = accumulate;
    int64_t rows = shape[0] * shape[1] * shape[2] * shape[3];
    /* accumulating through a dst stride of 0 over a dim longer than 1 (a broadcast read-back)
       must stay serial; size-1 dims (rank padding) have stride 0 too and do not count */
    int serial = 0;
    for (int d = 0; d < 4; d++) serial |= accumulate && !dstride[d] && shape[d] > 1;
    if (serial) ldm__scopy_task(&j, 0, rows, 0);
    else ldm_parallel_for(ctx, rows, LDM__MAX(1, LDM__GRAIN / LDM__MAX(1, shape[4])), ldm__scopy_task, &j);
}

/* ---- SGEMM ------------------------------------------------------------------------------- */
LDM_API void ldm_sgemm_ref(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                           const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double s = 0.0;
            for (int64_t k = 0; k < K; k++) s += (double)(ta ? A[k * lda + i] : A[i * lda + k]) * (tb ? B[j * ldb + k] : B[k * ldb + j]);
            C[i * ldc + j] = (float)(alpha * s + (beta == 0.0f ? 0.0 : (double)beta * C[i * ldc + j]));
        }
}

#ifdef LDM_BLAS
/* OpenBLAS's cblas.h pulls in <complex.h>, whose macro I would clash with variables named I below. */
#ifdef I
#define LDM__HAD_I
#endif
#include <cblas.h>
#if defined(I) && !defined(LDM__HAD_I)
#undef I
#endif
static void ldm__cpu_sgemm(ldm_ctx *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                           int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    (void)ctx;
    if (M <= 0 || N <= 0) return;
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K,
                alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}
static void ldm__cpu_sgemm_batch(ldm_ctx *ctx, int64_t n, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                                 int64_t lda, int64_t sa, const float *B, int64_t ldb, int64_t sb, float beta, float *C, int64_t ldc,
                                 int64_t sc) {
    for (int64_t i = 0; i < n; i++) ldm__cpu_sgemm(ctx, ta, tb, M, N, K, alpha, A + i * sa, lda, B + i * sb, ldb, beta, C + i * sc, ldc);
}
#else
/* Blocked, packed SGEMM (the BLIS loop nest, with the roles of the caches chosen for
   row-major C and a micro-tile that is wide in N):

     for ic: MC rows of A            A block (MC x KC, packed in MR-row panels [k][MR])
      for pc: KC slice of K
       for jc: NC columns of B       B block (KC x NC, packed in NR-column panels [k][NR]): L2
        for ir: MR rows              one A panel (MR x KC): L1
         for jr: NR columns          micro-kernel: MR x NR tile of C in registers

   The micro-kernel merges its tile into C (alpha*acc + beta*C on the first K slice, += after).
   Edge panels are packed with zero padding and the kernel stores edge tiles with masks, so
   every tile runs the same code. Threads take a grid of disjoint row x column ranges of C
   (never a split of K) and every element of C sees the same sequence of operations whatever
   the grid: results are bitwise identical for any thread count. */
/* Micro-kernels. Each computes acc = sum over k of a[k][0..MR) (x) b[k][0..NR) and stores
   C[0..mr)[0..nr) = alpha*acc + beta*C (beta == 0 never reads C). Their multiply-adds are
   explicit FMA intrinsics, so neither -std=c99 (which turns off floating-point contraction)
   nor -ffp-contract=off slows them down. On x86-64 with GCC or Clang the AVX-512 and AVX2
   kernels are compiled with target attributes and chosen at run time from the CPU, so a
   program built without -march flags (nvcc's host pass, a portable build) still runs them. */
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && !defined(LDM_NO_DISPATCH)
#define LDM__X86_AVX512 1
#define LDM__X86_AVX2 1
#define LDM__TARGET(s) __attribute__((target(s)))
#else
#if defined(__AVX512F__)
#define LDM__X86_AVX512 1
#endif
#if defined(__AVX2__) && defined(__FMA__)
#define LDM__X86_AVX2 1
#endif
#define LDM__TARGET(s)
#endif
#if defined(LDM__X86_AVX512) || defined(LDM__X86_AVX2)
#define LDM__X86 1
#endif
#define LDM__KC 512  /* K slice; A blocks are ~1024 rows (L3), B blocks ~KC x 240 columns (L2) */

#if defined(__CUDA_ARCH__)
#define LDM__UNROLL _Pragma("unroll") /* device code: nvcc's own form */
#elif defined(__NVCC__)
#define LDM__UNROLL /* nvcc's host pass drops GCC's form with a warning */
#elif defined(__clang__)
#define LDM__UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define LDM__UNROLL _Pragma("GCC unroll 16")
#else
#define LDM__UNROLL
#endif

/* Requests the tile of C before the K loop: when K is short its rows would otherwise come from
   memory after the FMAs, with nothing left to overlap them. (A macro: GCC deems a function
   holding only prefetches pure and deletes the call.) */
#if defined(__GNUC__)
#define LDM__PREFETCH_C(c, ldc, mr, nr)                                                             \
    for (int r_ = 0; r_ < (mr); r_++) {                                                            \
        const float *p_ = (c) + r_ * (ldc);                                                        \
        for (int q_ = 0; q_ < (nr); q_ += 16) __builtin_prefetch(p_ + q_, 0, 3);                    \
        __builtin_prefetch(p_ + (nr) - 1, 0, 3);                                                   \
    }
#else
#define LDM__PREFETCH_C(c, ldc, mr, nr)
#endif

typedef void (*ldm__ukernel_fn)(int64_t kc, const float *LDM_RESTRICT a, const float *LDM_RESTRICT b, float *c, int64_t ldc,
                                int mr, int nr, float alpha, float beta);
typedef struct ldm__gemm_kernel {
    const char *name;
    int mr, nr;          /* register tile */
    int t8;              /* packs may use the AVX 8 x 8 transpose */
    ldm__ukernel_fn run;
} ldm__gemm_kernel;

/* The K loops are unrolled by hand, with the accumulators as named variables: unroll pragmas
   are not portable (nvcc's host pass drops GCC's), and without them the tile stays in memory. */
#ifdef LDM__X86_AVX512
/* 8 x 48: 24 zmm accumulators, 3 B loads + 8 broadcasts per k */
LDM__TARGET("avx512f")
static void ldm__ukernel_avx512(int64_t kc, const float *LDM_RESTRICT a, const float *LDM_RESTRICT b, float *c, int64_t ldc,
                                int mr, int nr, float alpha, float beta) {
    enum { MR = 8, NR = 48, NV = NR / 16 };
    LDM__PREFETCH_C(c, ldc, mr, nr)
#define LDM__Z3(r) __m512 c##r##0 = _mm512_setzero_ps(), c##r##1 = _mm512_setzero_ps(), c##r##2 = _mm512_setzero_ps();
    LDM__Z3(0) LDM__Z3(1) LDM__Z3(2) LDM__Z3(3) LDM__Z3(4) LDM__Z3(5) LDM__Z3(6) LDM__Z3(7)
#undef LDM__Z3
    for (int64_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16), b2 = _mm512_load_ps(b + 32), av;
#define LDM__R3(r)                                                                                 \
    av = _mm512_set1_ps(a[r]);                                                                     \
    c##r##0 = _mm512_fmadd_ps(av, b0, c##r##0);                                                    \
    c##r##1 = _mm512_fmadd_ps(av, b1, c##r##1);                                                    \
    c##r##2 = _mm512_fmadd_ps(av, b2, c##r##2);
        LDM__R3(0) LDM__R3(1) LDM__R3(2) LDM__R3(3) LDM__R3(4) LDM__R3(5) LDM__R3(6) LDM__R3(7)
#undef LDM__R3
        a += MR;
        b += NR;
    }
    const __m512 acc[MR][NV] = {{c00, c01, c02}, {c10, c11, c12}, {c20, c21, c22}, {c30, c31, c32},
                                {c40, c41, c42}, {c50, c51, c52}, {c60, c61, c62}, {c70, c71, c72}};
    __mmask16 m[NV];
    for (int v = 0; v < NV; v++) {
        int left = nr - 16 * v;
        m[v] = (__mmask16)(left >= 16 ? 0xFFFFu : left > 0 ? (1u << left) - 1 : 0u);
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int r = 0; r < mr; r++) {
        float *cr = c + r * ldc;
        for (int v = 0; v < NV; v++) {
            __m512 x = _mm512_mul_ps(va, acc[r][v]);
            if (beta != 0.0f) x = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m[v], cr + 16 * v), x);
            _mm512_mask_storeu_ps(cr + 16 * v, m[v], x);
        }
    }
}
#endif
#ifdef LDM__X86_AVX2
/* 6 x 16: 12 ymm accumulators */
LDM__TARGET("avx2,fma")
static void ldm__ukernel_avx2(int64_t kc, const float *LDM_RESTRICT a, const float *LDM_RESTRICT b, float *c, int64_t ldc,
                              int mr, int nr, float alpha, float beta) {
    enum { MR = 6, NR = 16, NV = NR / 8 };
    LDM__PREFETCH_C(c, ldc, mr, nr)
#define LDM__Z2(r) __m256 c##r##0 = _mm256_setzero_ps(), c##r##1 = _mm256_setzero_ps();
    LDM__Z2(0) LDM__Z2(1) LDM__Z2(2) LDM__Z2(3) LDM__Z2(4) LDM__Z2(5)
#undef LDM__Z2
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8), av;
#define LDM__R2(r)                                                                                 \
    av = _mm256_broadcast_ss(a + r);                                                               \
    c##r##0 = _mm256_fmadd_ps(av, b0, c##r##0);                                                    \
    c##r##1 = _mm256_fmadd_ps(av, b1, c##r##1);
        LDM__R2(0) LDM__R2(1) LDM__R2(2) LDM__R2(3) LDM__R2(4) LDM__R2(5)
#undef LDM__R2
        a += MR;
        b += NR;
    }
    const __m256 acc[MR][NV] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i m[NV];
    for (int v = 0; v < NV; v++) m[v] = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr - 8 * v), lane);
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    for (int r = 0; r < mr; r++) {
        float *cr = c + r * ldc;
        for (int v = 0; v < NV; v++) {
            __m256 x = _mm256_mul_ps(va, acc[r][v]);
            if (beta != 0.0f) x = _mm256_fmadd_ps(vb, _mm256_maskload_ps(cr + 8 * v, m[v]), x);
            _mm256_maskstore_ps(cr + 8 * v, m[v], x);
        }
    }
}
#endif

/* Portable 6 x 8: GCC/Clang vector extensions give SSE/NEON code without intrinsics; plain
   arrays elsewhere. It is the kernel of CPUs without AVX2, which have no FMA unit either, so
   its separate multiply and add cost nothing there. Edge tiles go through a local tile so
   every element takes the same path. */
enum { LDM__PMR = 6, LDM__PNR = 8 };
static void ldm__ukernel_portable_full(int64_t kc, const float *LDM_RESTRICT a, const float *LDM_RESTRICT b, float *c,
                                       int64_t ldc, float alpha, float beta) {
#if defined(__GNUC__)
    typedef float ldm__v4 __attribute__((vector_size(16)));
    enum { NV = LDM__PNR / 4 };
    ldm__v4 acc[LDM__PMR][NV];
    LDM__UNROLL for (int r = 0; r < LDM__PMR; r++) LDM__UNROLL for (int v = 0; v < NV; v++) acc[r][v] = (ldm__v4){0, 0, 0, 0};
    for (int64_t k = 0; k < kc; k++) {
        ldm__v4 bv[NV];
        LDM__UNROLL for (int v = 0; v < NV; v++) memcpy(&bv[v], b + 4 * v, sizeof bv[v]);
        LDM__UNROLL for (int r = 0; r < LDM__PMR; r++) {
            ldm__v4 av = {a[r], a[r], a[r], a[r]};
            LDM__UNROLL for (int v = 0; v < NV; v++) acc[r][v] += av * bv[v];
        }
        a += LDM__PMR;
        b += LDM__PNR;
    }
    LDM__UNROLL for (int r = 0; r < LDM__PMR; r++) {
        float *cr = c + r * ldc;
        LDM__UNROLL for (int v = 0; v < NV; v++) {
            ldm__v4 x = acc[r][v] * alpha, cv;
            if (beta != 0.0f) { memcpy(&cv, cr + 4 * v, sizeof cv); x += cv * beta; }
            memcpy(cr + 4 * v, &x, sizeof x);
        }
    }
#else
    float acc[LDM__PMR][LDM__PNR];
    memset(acc, 0, sizeof acc);
    for (int64_t k = 0; k < kc; k++) {
        for (int r = 0; r < LDM__PMR; r++)
            for (int q = 0; q < LDM__PNR; q++) acc[r][q] += a[r] * b[q];
        a += LDM__PMR;
        b += LDM__PNR;
    }
    for (int r = 0; r < LDM__PMR; r++)
        for (int q = 0; q < LDM__PNR; q++) {
            float x = acc[r][q] * alpha;
            if (beta != 0.0f) x += c[r * ldc + q] * beta;
            c[r * ldc + q] = x;
        }
#endif
}
static void ldm__ukernel_portable(int64_t kc, const float *LDM_RESTRICT a, const float *LDM_RESTRICT b, float *c, int64_t ldc,
                                  int mr, int nr, float alpha, float beta) {
    float t[LDM__PMR * LDM__PNR];
    LDM__PREFETCH_C(c, ldc, mr, nr)
    if (mr == LDM__PMR && nr == LDM__PNR) { ldm__ukernel_portable_full(kc, a, b, c, ldc, alpha, beta); return; }
    for (int r = 0; r < mr; r++)
        for (int q = 0; q < nr; q++) t[r * LDM__PNR + q] = beta != 0.0f ? c[r * ldc + q] : 0.0f;
    ldm__ukernel_portable_full(kc, a, b, t, LDM__PNR, alpha, beta);
    for (int r = 0; r < mr; r++)
        for (int q = 0; q < nr; q++) c[r * ldc + q] = t[r * LDM__PNR + q];
}

static const ldm__gemm_kernel ldm__gemm_kernels[] = {
#ifdef LDM__X86_AVX512
    {"avx512", 8, 48, 1, ldm__ukernel_avx512},
#endif
#ifdef LDM__X86_AVX2
    {"avx2", 6, 16, 1, ldm__ukernel_avx2},
#endif
    {"portable", LDM__PMR, LDM__PNR, 0, ldm__ukernel_portable},
};
/* The fastest kernel this CPU runs; `want` ("avx512", "avx2", "portable", from $LDM_CPU_KERNEL)
   picks a slower one, never one the CPU lacks. */
static const ldm__gemm_kernel *ldm__gemm_pick(const char *want) {
    int n = (int)(sizeof ldm__gemm_kernels / sizeof ldm__gemm_kernels[0]);
    for (int i = 0; i < n; i++) {
        const ldm__gemm_kernel *k = &ldm__gemm_kernels[i];
        int ok = 1;
#if defined(LDM__X86) && (defined(__GNUC__) || defined(__clang__))
        if (!strcmp(k->name, "avx512")) ok = __builtin_cpu_supports("avx512f");
        if (!strcmp(k->name, "avx2")) ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
        if (ok && (!want || !*want || !strcmp(want, k->name))) return k;
    }
    return &ldm__gemm_kernels[n - 1];
}

/* Packing. A panel is `rows` (<= P) lines of op(X) for kc values of k, laid out [k][P] and
   zero-padded to P. Two source layouts: "direct", where the P values of one k are contiguous
   in memory (rows of B, rows of A^T) and are copied as they are, and "transposed", where each
   line is contiguous in k (rows of A, rows of B^T) and 8 x 8 blocks are transposed in
   registers where AVX is available. */
static void ldm__pack_direct(float *LDM_RESTRICT dst, int P, const float *src, int64_t ld, int rows, int64_t kc) {
    for (int64_t k = 0; k < kc; k++, src += ld, dst += P) {
        if (rows == P) memcpy(dst, src, sizeof(float) * (size_t)P);
        else {
            int q = 0;
            for (; q < rows; q++) dst[q] = src[q];
            for (; q < P; q++) dst[q] = 0.0f;
        }
    }
}
#ifdef LDM__X86
/* dst[i][0..8) = src[0..8)[i] for i < 8 (rows of src ld apart, of dst ldd apart) */
LDM__TARGET("avx")
static void ldm__transpose8(const float *src, int64_t ld, float *dst, int64_t ldd) {
    __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + ld), r2 = _mm256_loadu_ps(src + 2 * ld);
    __m256 r3 = _mm256_loadu_ps(src + 3 * ld), r4 = _mm256_loadu_ps(src + 4 * ld), r5 = _mm256_loadu_ps(src + 5 * ld);
    __m256 r6 = _mm256_loadu_ps(src + 6 * ld), r7 = _mm256_loadu_ps(src + 7 * ld);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3);
    __m256 t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE), s2 = _mm256_shuffle_ps(t1, t3, 0x44);
    __m256 s3 = _mm256_shuffle_ps(t1, t3, 0xEE), s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(s0, s4, 0x20));
    _mm256_storeu_ps(dst + ldd, _mm256_permute2f128_ps(s1, s5, 0x20));
    _mm256_storeu_ps(dst + 2 * ldd, _mm256_permute2f128_ps(s2, s6, 0x20));
    _mm256_storeu_ps(dst + 3 * ldd, _mm256_permute2f128_ps(s3, s7, 0x20));
    _mm256_storeu_ps(dst + 4 * ldd, _mm256_permute2f128_ps(s0, s4, 0x31));
    _mm256_storeu_ps(dst + 5 * ldd, _mm256_permute2f128_ps(s1, s5, 0x31));
    _mm256_storeu_ps(dst + 6 * ldd, _mm256_permute2f128_ps(s2, s6, 0x31));
    _mm256_storeu_ps(dst + 7 * ldd, _mm256_permute2f128_ps(s3, s7, 0x31));
}
#endif
static void ldm__pack_transposed(float *LDM_RESTRICT dst, int P, const float *src, int64_t ld, int rows, int64_t kc, int t8) {
    int r0 = 0;
#ifdef LDM__X86
    for (; t8 && r0 + 8 <= rows; r0 += 8) {
        const float *s = src + r0 * ld;
        int64_t k = 0;
        for (; k + 8 <= kc; k += 8) ldm__transpose8(s + k, ld, dst + k * P + r0, P);
        for (; k < kc; k++)
            for (int r = 0; r < 8; r++) dst[k * P + r0 + r] = s[r * ld + k];
    }
#else
    (void)t8;
#endif
    for (int r = r0; r < rows; r++) {
        const float *s = src + r * ld;
        for (int64_t k = 0; k < kc; k++) dst[k * P + r] = s[k];
    }
    if (rows < P)
        for (int64_t k = 0; k < kc; k++)
            for (int r = rows; r < P; r++) dst[k * P + r] = 0.0f;
}
/* op(A)[i0 .. i0+mc, k0 .. k0+kc) into MR-row panels */
static void ldm__pack_a(const ldm__gemm_kernel *uk, float *dst, const float *A, int64_t lda, int ta, int64_t i0, int64_t mc,
                        int64_t k0, int64_t kc) {
    const int MR = uk->mr;
    for (int64_t ip = 0; ip < mc; ip += MR, dst += MR * kc) {
        int rows = (int)LDM__MIN(MR, mc - ip);
        if (ta) ldm__pack_direct(dst, MR, A + k0 * lda + i0 + ip, lda, rows, kc);
        else ldm__pack_transposed(dst, MR, A + (i0 + ip) * lda + k0, lda, rows, kc, uk->t8);
    }
}
/* op(B)[k0 .. k0+kc, j0 .. j0+nc) into NR-column panels */
static void ldm__pack_b(const ldm__gemm_kernel *uk, float *dst, const float *B, int64_t ldb, int tb, int64_t j0, int64_t nc,
                        int64_t k0, int64_t kc) {
    const int NR = uk->nr;
    for (int64_t jp = 0; jp < nc; jp += NR, dst += NR * kc) {
        int cols = (int)LDM__MIN(NR, nc - jp);
        if (tb) ldm__pack_transposed(dst, NR, B + (j0 + jp) * ldb + k0, ldb, cols, kc, uk->t8);
        else ldm__pack_direct(dst, NR, B + k0 * ldb + j0 + jp, ldb, cols, kc);
    }
}

typedef struct {
    const ldm__gemm_kernel *uk;  /* micro-kernel and its tile */
    int64_t mcb;                 /* rows of A per packed block */
    int ta, tb;
    int64_t M, N, K, lda, ldb, ldc;
    float alpha, beta;
    const float *A, *B;
    float *C;
    int64_t kc;                  /* K slice: depends on K only, never on the thread count */
    const float *ap;             /* A already packed whole (see ldm__gemm_packed_floats), or NULL */
    int64_t nc;                  /* columns per B block: the block keeps ~KC x NC floats */
    int tm, tn;                  /* thread grid: tm row ranges x tn column ranges */
    int64_t tiles_m, tiles_n;
    float *work;                 /* packing buffers: per thread, work_floats each */
    size_t work_floats, b_offset;
} ldm__gemm_job;

static void ldm__gemm_part(const ldm__gemm_job *g, int64_t m0, int64_t m1, int64_t n0, int64_t n1, float *pa, float *pb) {
    const int64_t K = g->K, kcb = g->kc, ldc = g->ldc;
    const ldm__gemm_kernel *uk = g->uk;
    const int MR = uk->mr, NR = uk->nr;
    for (int64_t ic = m0; ic < m1; ic += g->mcb) {
        int64_t mc = LDM__MIN(g->mcb, m1 - ic);
        for (int64_t pc = 0; pc < K; pc += kcb) {
            int64_t kc = LDM__MIN(kcb, K - pc);
            float beta = pc == 0 ? g->beta : 1.0f;
            const float *pak = pa; /* this block of A, packed */
            if (g->ap) pak = g->ap + pc * (g->tiles_m * MR) + ic * kc;
            else ldm__pack_a(uk, pa, g->A, g->lda, g->ta, ic, mc, pc, kc);
            for (int64_t jc = n0; jc < n1; jc += g->nc) {
                int64_t nc = LDM__MIN(g->nc, n1 - jc);
                ldm__pack_b(uk, pb, g->B, g->ldb, g->tb, jc, nc, pc, kc);
                for (int64_t ir = 0; ir < mc; ir += MR) {
                    float *c = g->C + (ic + ir) * ldc + jc;
                    int mr = (int)LDM__MIN(MR, mc - ir);
                    for (int64_t jr = 0; jr < nc; jr += NR)
                        uk->run(kc, pak + ir * kc, pb + jr * kc, c + jr, ldc, mr, (int)LDM__MIN(NR, nc - jr), g->alpha, beta);
                }
            }
        }
    }
}

static void ldm__gemm_task(void *arg, int64_t b, int64_t e, int tid) {
    const ldm__gemm_job *g = (const ldm__gemm_job *)arg;
    float *pa = g->work + (size_t)tid * g->work_floats, *pb = pa + g->b_offset;
    for (int64_t p = b; p < e; p++) {
        int64_t pm = p / g->tn, pn = p % g->tn;
        const int MR = g->uk->mr, NR = g->uk->nr;
        int64_t m0 = LDM__MIN(g->M, pm * g->tiles_m / g->tm * MR), m1 = LDM__MIN(g->M, (pm + 1) * g->tiles_m / g->tm * MR);
        int64_t n0 = LDM__MIN(g->N, pn * g->tiles_n / g->tn * NR), n1 = LDM__MIN(g->N, (pn + 1) * g->tiles_n / g->tn * NR);
        if (m0 < m1 && n0 < n1) ldm__gemm_part(g, m0, m1, n0, n1, pa, pb);
    }
}

/* C = beta*C; beta == 0 writes zeros without reading C. */
static void ldm__gemm_scale(int64_t M, int64_t N, float beta, float *C, int64_t ldc) {
    for (int64_t i = 0; i < M; i++) {
        float *c = C + i * ldc;
        if (beta == 0.0f) memset(c, 0, sizeof(float) * (size_t)N);
        else if (beta != 1.0f)
            for (int64_t j = 0; j < N; j++) c[j] *= beta;
    }
}

/* The K slice for K: equal slices no longer than KC. */
static int64_t ldm__gemm_kc(int64_t K) {
    int64_t slices = (K + LDM__KC - 1) / LDM__KC;
    return (K + slices - 1) / slices;
}
/* An A operand (M x K) can be packed once and used by many products (ldm__cpu_sgemm_pk): K
   slices one after another, each of whole MR-row panels [k][MR], padded with zero rows to a
   multiple of MR. Its size in floats: */
static int64_t ldm__gemm_packed_floats(const ldm__gemm_kernel *uk, int64_t M, int64_t K) {
    return (M + uk->mr - 1) / uk->mr * uk->mr * K;
}
/* Packs rows [i0, i0 + mc) of an M x K operand into dst (the whole packed operand) from src,
   which holds just those rows, row-major with leading dimension ld. i0 is a multiple of MR and
   mc at most MR unless i0 + mc = M. */
static void ldm__gemm_pack_rows(const ldm__gemm_kernel *uk, float *dst, const float *src, int64_t ld, int64_t M, int64_t K, int64_t i0,
                                int64_t mc) {
    int64_t kcb = ldm__gemm_kc(K), mpad = (M + uk->mr - 1) / uk->mr * uk->mr;
    for (int64_t pc = 0; pc < K; pc += kcb) {
        int64_t kc = LDM__MIN(kcb, K - pc);
        ldm__pack_a(uk, dst + pc * mpad + i0 * kc, src, ld, 0, 0, mc, pc, kc);
    }
}

/* Blocking and thread grid of one product on T threads; returns the packing buffer bytes it
   needs per thread. The blocking depends on the shape only, so every element of C is summed in
   the same order whatever T is. */
static size_t ldm__gemm_setup(ldm__gemm_job *g, const ldm__gemm_kernel *uk, int T, int ta, int tb, int64_t M, int64_t N, int64_t K,
                              float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    g->ta = ta; g->tb = tb; g->M = M; g->N = N; g->K = K; g->lda = lda; g->ldb = ldb; g->ldc = ldc;
    g->alpha = alpha; g->beta = beta; g->A = A; g->B = B; g->C = C;
    g->uk = uk;
    const int MR = uk->mr, NR = uk->nr;
    const int64_t NCB = 240 / NR * NR;  /* columns of B per packed block: KC x NC fits L2 */
    g->mcb = 1024 / MR * MR;            /* rows of A per packed block (L3) */
    g->kc = ldm__gemm_kc(K);
    g->ap = NULL;
    /* a short K slice gets a wider B block: longer runs of each C row per pass */
    g->nc = LDM__MAX(NCB, NCB * LDM__KC / g->kc / NR * NR);
    g->tiles_m = (M + MR - 1) / MR;
    g->tiles_n = (N + NR - 1) / NR;
    /* Thread grid: the one that minimises the busiest thread's time, estimated as its tiles'
       FMAs at 32 per cycle (whole tiles: padding costs the same) plus what it packs. */
    g->tm = 1; g->tn = 1;
    double best = -1.0;
    for (int tn = 1; tn <= T; tn++) {
        int tm = T / tn;
        if (T % tn || tn > g->tiles_n || tm > g->tiles_m) continue;
        double tiles = (double)((g->tiles_m + tm - 1) / tm) * (double)((g->tiles_n + tn - 1) / tn);
        double cost = tiles * (MR * NR / 32.0) * (double)K + 0.5 * ((double)M / tm + (double)N / tn) * (double)K;
        if (best < 0 || cost < best) { best = cost; g->tm = tm; g->tn = tn; }
    }
    /* one A block and one B block per thread, no larger than this product needs */
    size_t mcap = (size_t)LDM__MIN(g->mcb, g->tiles_m * MR), ncap = (size_t)LDM__MIN(g->nc, g->tiles_n * NR);
    size_t a_bytes = LDM__ALIGN_UP(sizeof(float) * mcap * (size_t)g->kc), b_bytes = LDM__ALIGN_UP(sizeof(float) * ncap * (size_t)g->kc);
    g->b_offset = a_bytes / sizeof(float);
    g->work_floats = (a_bytes + b_bytes) / sizeof(float);
    return a_bytes + b_bytes;
}

/* The context's packing buffers for `threads` threads: grown once to the largest need seen,
   then reused; NULL and an error when memory runs out. */
static float *ldm__gemm_buffers(ldm_ctx *ctx, size_t per_thread, int threads) {
    size_t need = per_thread * (size_t)threads + LDM__ALIGN;
    if (ctx->gemm_buf_bytes < need) {
        LDM_FREE(ctx->gemm_buf);
        ctx->gemm_buf = LDM_MALLOC(need);
        ctx->gemm_buf_bytes = ctx->gemm_buf ? need : 0;
    }
    if (!ctx->gemm_buf) {
        ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_sgemm: cannot allocate %.1f MiB of packing buffers (hint: free memory)", need / 1048576.0);
        return NULL;
    }
    return (float *)(((uintptr_t)ctx->gemm_buf + (LDM__ALIGN - 1)) & ~(uintptr_t)(LDM__ALIGN - 1));
}

/* ldm__cpu_sgemm with A given packed (ap), where not NULL */
static void ldm__cpu_sgemm_pk(ldm_ctx *ctx, const float *ap, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha,
                              const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0 || alpha == 0.0f) { ldm__gemm_scale(M, N, beta, C, ldc); return; }
    /* Called from inside a parallel region (regions do not nest): run on this thread with
       a private buffer, since the context's buffers belong to the outer region. */
    int nested = 0;
#ifndef LDM_NO_THREADS
    nested = ctx->pool.busy;
#endif
    int T = nested ? 1 : ctx->threads;
    if (2.0 * (double)M * (double)N * (double)K < 4e6) T = 1; /* under ~20 us: not worth waking threads */
    ldm__gemm_job g;
    size_t per = ldm__gemm_setup(&g, ctx->gemm_kernel, T, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    g.ap = ap;
    void *own = NULL;
    if (nested) {
        own = LDM_MALLOC(per + LDM__ALIGN);
        if (!own) {
            ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_sgemm: cannot allocate %.1f MiB of packing buffers (hint: free memory)", per / 1048576.0);
            return;
        }
        g.work = (float *)(((uintptr_t)own + (LDM__ALIGN - 1)) & ~(uintptr_t)(LDM__ALIGN - 1));
    } else if (!(g.work = ldm__gemm_buffers(ctx, per, ctx->threads))) return;
    if (T == 1) ldm__gemm_task(&g, 0, 1, 0);
    else ldm_parallel_for(ctx, g.tm * g.tn, 1, ldm__gemm_task, &g);
    if (own) LDM_FREE(own);
}
static void ldm__cpu_sgemm(ldm_ctx *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                           int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    ldm__cpu_sgemm_pk(ctx, NULL, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* n products of one shape, C_i = alpha op(A_i) op(B_i) + beta C_i with A_i = A + i*sa (and B, C
   alike, offsets in floats), each computed whole by one thread: one parallel region instead of
   n, for products too small to split well. Bitwise what n ldm__cpu_sgemm calls give. */
typedef struct { ldm__gemm_job g; int64_t sa, sb, sc, sap; } ldm__gemm_batch_job;
static void ldm__gemm_batch_task(void *arg, int64_t i0, int64_t i1, int tid) {
    const ldm__gemm_batch_job *j = (const ldm__gemm_batch_job *)arg;
    for (int64_t i = i0; i < i1; i++) {
        ldm__gemm_job g = j->g;
        g.A += i * j->sa; g.B += i * j->sb; g.C += i * j->sc;
        if (g.ap) g.ap += i * j->sap;
        ldm__gemm_task(&g, 0, 1, tid);
    }
}
/* ... and with the A_i given packed, ap + i*sap (ap NULL: unpacked) */
static void ldm__cpu_sgemm_batch_pk(ldm_ctx *ctx, int64_t n, const float *ap, int64_t sap, int ta, int tb,
                                    int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda, int64_t sa, const float *B,
                                    int64_t ldb, int64_t sb, float beta, float *C, int64_t ldc, int64_t sc) {
    int nested = 0;
#ifndef LDM_NO_THREADS
    nested = ctx->pool.busy;
#endif
    if (M <= 0 || N <= 0 || K <= 0 || alpha == 0.0f || nested || n < 2 * ctx->threads) { /* too few to share out */
        for (int64_t i = 0; i < n; i++)
            ldm__cpu_sgemm_pk(ctx, ap ? ap + i * sap : NULL, ta, tb, M, N, K, alpha, A + i * sa, lda, B + i * sb, ldb,
                              beta, C + i * sc, ldc);
        return;
    }
    ldm__gemm_batch_job j;
    size_t per = ldm__gemm_setup(&j.g, ctx->gemm_kernel, 1, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (!(j.g.work = ldm__gemm_buffers(ctx, per, ctx->threads))) return;
    j.g.ap = ap;
    j.sa = sa; j.sb = sb; j.sc = sc; j.sap = sap;
    ldm_parallel_for(ctx, n, 1, ldm__gemm_batch_task, &j);
}
static void ldm__cpu_sgemm_batch(ldm_ctx *ctx, int64_t n, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                                 int64_t lda, int64_t sa, const float *B, int64_t ldb, int64_t sb, float beta, float *C, int64_t ldc,
                                 int64_t sc) {
    ldm__cpu_sgemm_batch_pk(ctx, n, NULL, 0, ta, tb, M, N, K, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc);
}
#endif

LDM_API void ldm_sgemm(ldm_ctx *ctx, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                       int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    ldm__cpu_sgemm(ctx, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

LDM_API const char *ldm_cpu_kernel_name(const ldm_ctx *ctx) {
#ifdef LDM_BLAS
    (void)ctx;
    return "cblas";
#else
    return ctx->gemm_kernel ? ctx->gemm_kernel->name : "";
#endif
}

/* ---- convolution: im2col over column chunks + SGEMM --------------------------------------
   The column matrix of one image is [K = C*kt*kh*kw, OT*OH*OW]; it is built a chunk of output
   positions at a time so the buffer stays small. 1x1 convolutions without stride or padding
   use the input directly. */
typedef struct { const ldm_conv_desc *d; const float *img; float *col; int64_t n0, nc; } ldm__im2col_job;
static int ldm__conv_is_pointwise(const ldm_conv_desc *d) {
    int p = 0;
    for (int i = 0; i < 6; i++) p |= d->pad[i];
    return d->kt == 1 && d->kh == 1 && d->kw == 1 && d->st == 1 && d->sh == 1 && d->sw == 1 && !p;
}
/* Walks the chunk's output positions row by row (runs of constant ot, oy). */
#define LDM__CONV_ROWS(d, n0, nc, ...)                                                             \
    do {                                                                                           \
        int64_t n_ = (n0), end_ = (n0) + (nc);                                                     \
        while (n_ < end_) {                                                                        \
            int64_t ox0 = n_ % (d)->OW, oy = (n_ / (d)->OW) % (d)->OH, ot = n_ / ((d)->OW * (d)->OH); \
            int64_t run = LDM__MIN((d)->OW - ox0, end_ - n_), j0 = n_ - (n0);                      \
            __VA_ARGS__                                                                            \
            n_ += run;                                                                             \
        }                                                                                          \
    } while (0)
static void ldm__im2col_task(void *arg, int64_t k0, int64_t k1, int tid) {
    ldm__im2col_job *j = (ldm__im2col_job *)arg;
    const ldm_conv_desc *d = j->d;
    int64_t khw = (int64_t)d->kh * d->kw, kk = khw * d->kt;
    (void)tid;
    for (int64_t k = k0; k < k1; k++) {
        int64_t c = k / kk, r = k % kk, ft = r / khw, fy = (r % khw) / d->kw, fx = r % d->kw;
        const float *plane = j->img + c * d->T * d->H * d->W;
        float *dst = j->col + k * j->nc;
        LDM__CONV_ROWS(d, j->n0, j->nc, {
            int64_t t = ot * d->st - d->pad[0] + ft, y = oy * d->sh - d->pad[2] + fy;
            float *o = dst + j0;
            if (t < 0 || t >= d->T || y < 0 || y >= d->H) { memset(o, 0, sizeof(float) * (size_t)run); }
            else {
                const float *src = plane + (t * d->H + y) * d->W;
                int64_t x = ox0 * d->sw - d->pad[4] + fx;
                if (d->sw == 1) {
                    int64_t a = 0;
                    for (; a < run && x + a < 0; a++) o[a] = 0.0f;
                    int64_t b = run;
                    while (b > a && x + b - 1 >= d->W) o[--b] = 0.0f;
                    if (b > a) memcpy(o + a, src + x + a, sizeof(float) * (size_t)(b - a));
                } else {
                    for (int64_t a = 0; a < run; a++, x += d->sw) o[a] = (x >= 0 && x < d->W) ? src[x] : 0.0f;
                }
            }
        });
    }
}
typedef struct { const ldm_conv_desc *d; float *img; const float *col; int64_t n0, nc; } ldm__col2im_job;
static LDM__VEC void ldm__col2im_task(void *arg, int64_t c0, int64_t c1, int tid) { /* one channel per item: no write races */
    ldm__col2im_job *j = (ldm__col2im_job *)arg;
    const ldm_conv_desc *d = j->d;
    int64_t khw = (int64_t)d->kh * d->kw, kk = khw * d->kt;
    (void)tid;
    for (int64_t c = c0; c < c1; c++) {
        float *plane = j->img + c * d->T * d->H * d->W;
        for (int64_t r = 0; r < kk; r++) {
            int64_t ft = r / khw, fy = (r % khw) / d->kw, fx = r % d->kw;
            const float *src = j->col + (c * kk + r) * j->nc;
            LDM__CONV_ROWS(d, j->n0, j->nc, {
                int64_t t = ot * d->st - d->pad[0] + ft, y = oy * d->sh - d->pad[2] + fy;
                if (t >= 0 && t < d->T && y >= 0 && y < d->H) {
                    float *dst = plane + (t * d->H + y) * d->W;
                    const float *s = src + j0;
                    int64_t x = ox0 * d->sw - d->pad[4] + fx;
                    if (d->sw == 1) { /* the valid range once, then a plain (vectorisable) add */
                        int64_t a = x < 0 ? -x : 0, e = LDM__MIN(run, d->W - x);
                        float *dd = dst + x;
                        for (int64_t i = a; i < e; i++) dd[i] += s[i];
                    } else {
                        for (int64_t a = 0; a < run; a++, x += d->sw) if (x >= 0 && x < d->W) dst[x] += s[a];
                    }
                }
            });
        }
    }
}
static int64_t ldm__conv_chunk(const ldm_conv_desc *d, int64_t K) {
    int64_t OS = d->OT * d->OH * d->OW, nc = ((int64_t)4 << 20) / LDM__MAX(K, 1); /* ~16 MiB of columns */
    nc = LDM__MAX(nc, 64);
    return LDM__MIN(nc, OS);
}
static void ldm__im2col(ldm_ctx *ctx, const ldm_conv_desc *d, const float *img, float *col, int64_t n0, int64_t nc, int64_t K) {
    ldm__im2col_job j;
    j.d = d; j.img = img; j.col = col; j.n0 = n0; j.nc = nc;
    ldm_parallel_for(ctx, K, LDM__MAX(1, 8192 / LDM__MAX(nc, 1)), ldm__im2col_task, &j);
}
/* Per output channel: fill the bias (forward) or sum the gradient into db (backward, in
   double, batch then position order, so the thread count does not matter). */
typedef struct { float *out, *db; const float *bias, *dout; int64_t B, O, OS; } ldm__conv_bias_job;
static LDM__VEC void ldm__conv_bias_task(void *arg, int64_t o0, int64_t o1, int tid) {
    ldm__conv_bias_job *j = (ldm__conv_bias_job *)arg;
    (void)tid;
    for (int64_t o = o0; o < o1; o++) {
        if (j->bias) {
            for (int64_t b = 0; b < j->B; b++) {
                float *p = j->out + (b * j->O + o) * j->OS, v = j->bias[o];
                for (int64_t i = 0; i < j->OS; i++) p[i] = v;
            }
        } else {
            double s = 0.0;
            for (int64_t b = 0; b < j->B; b++) {
                const float *p = j->dout + (b * j->O + o) * j->OS;
                for (int64_t i = 0; i < j->OS; i++) s += p[i];
            }
            j->db[o] += (float)s;
        }
    }
}
static void ldm__conv_bias(ldm_ctx *ctx, float *out, const float *bias, float *db, const float *dout, const ldm_conv_desc *d) {
    ldm__conv_bias_job j;
    j.out = out; j.db = db; j.bias = bias; j.dout = dout; j.B = d->B; j.O = d->O; j.OS = d->OT * d->OH * d->OW;
    ldm_parallel_for(ctx, d->O, LDM__MAX(1, 65536 / LDM__MAX(j.OS * j.B, 1)), ldm__conv_bias_task, &j);
}
/* ---- 3x3 convolution by Winograd F(2x2, 3x3) ----------------------------------------------
   For stride 1 and padding 1 in 2-D, each 2x2 block of outputs (a "tile") is
       Y = A^T [ (G g G^T) o (B^T d B) ] A
   for d the 4x4 input patch under it and g the 3x3 filter (Lavin and Gray 2015). Summed over
   input channels, the elementwise product becomes 16 GEMMs U[xi] [O x C] by V[xi] [C x tiles]
   in the transformed domain: 4 multiply-adds per output and input channel instead of 9.
   The backward uses the same pieces: the input gradient is this convolution of the output
   gradient with the filters flipped and transposed, and the filter gradient is
   G^T [ sum over tiles (A dY A^T) o V ] G. The transforms only add, subtract and halve, so the
   results differ from im2col's only by rounding (relative ~1e-6, tested against it).
   Tiles are processed a chunk at a time (V and M ~16 MiB); chunk sizes do not depend on the
   thread count, and every output element is computed in one fixed order. */
#define LDM__WG_BLK 64 /* tiles per transform block (column buffers live on the stack) */

/* The Winograd tile side for this convolution (2 or 4), or 0 for im2col. */
static int ldm__conv_winograd_tile(const ldm_ctx *ctx, const ldm_conv_desc *d, int backward) {
    int algo = ctx->s.conv_algo;
    if (algo == LDM_CONV_IM2COL) return 0;
    if (d->kt != 1 || d->T != 1 || d->kh != 3 || d->kw != 3 || d->st != 1 || d->sh != 1 || d->sw != 1) return 0;
    if (d->pad[0] || d->pad[1] || d->pad[2] != 1 || d->pad[3] != 1 || d->pad[4] != 1 || d->pad[5] != 1) return 0;
    if (algo == LDM_CONV_WINOGRAD) return 2;
    if (algo == LDM_CONV_WINOGRAD4) return 4;
    /* Few channels: the GEMMs' K or M would be tiny, and im2col's K = 9C is better. */
    if (d->C < 16 || d->O < 16) return 0;
    /* F(4x4) (AUTO's backward, FAST) only where an image's pixels outnumber the channels well.
       Its transformed filters are 4x the weights, written per call and read per chunk of tiles,
       which costs more than the products it saves on small images with wide layers (measured:
       512 channels gain from 64x64, break even at 32x32 batch 2); under 8 pixels a 4x4 tile is
       mostly padding. The rule ignores the batch size, so that a batch gives what its samples
       give one at a time. */
    int big = d->H >= 8 && d->W >= 8 && d->H * d->W >= 8 * LDM__MAX(d->C, d->O);
    return big && (algo == LDM_CONV_FAST || backward) ? 4 : 2;
}

/* U[xi][o][c] = (G g G^T)[xi] for g = w[o][c] (flip = 0), or for the input gradient
   U[xi][c][o] = (G rot180(w[o][c]) G^T)[xi] (flip = 1): the filters of the transposed
   convolution. Each row (o, or c when flipped) is done 256 columns at a time: the 9 taps are
   gathered into planes g[9][256] so the transform runs along contiguous columns. */
typedef struct {
    float *U;          /* row r of plane xi at U + xi * ps + (r - rb) * cols */
    const float *w;
    int64_t O, C, ps, rb;
    int flip;
} ldm__wg_wjob;
/* one row (a, b, e) of G g times G^T: (a, (a+b+e)/2, (a-b+e)/2, e), n columns */
static LDM__VEC void ldm__wg_row(float *LDM_RESTRICT u0, float *LDM_RESTRICT u1, float *LDM_RESTRICT u2, float *LDM_RESTRICT u3,
                                 const float *LDM_RESTRICT a, const float *LDM_RESTRICT b, const float *LDM_RESTRICT e, int64_t n) {
    for (int64_t q = 0; q < n; q++) {
        u0[q] = a[q]; u1[q] = 0.5f * (a[q] + b[q] + e[q]); u2[q] = 0.5f * (a[q] - b[q] + e[q]); u3[q] = e[q];
    }
}
static LDM__VEC void ldm__wg_weight_task(void *arg, int64_t r0, int64_t r1, int tid) {
    const ldm__wg_wjob *j = (const ldm__wg_wjob *)arg;
    int64_t OC = j->ps, cols = j->flip ? j->O : j->C;
    float g[9][256], t[6][256]; /* the taps; rows 1 and 2 of G g */
    (void)tid;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t q0 = 0; q0 < cols; q0 += 256) {
            int64_t nq = LDM__MIN(256, cols - q0);
            for (int64_t q = 0; q < nq; q++) {
                const float *w = j->w + (j->flip ? (q0 + q) * j->C + r : r * j->C + q0 + q) * 9;
                for (int i = 0; i < 9; i++) g[i][q] = w[j->flip ? 8 - i : i];
            }
            for (int x = 0; x < 3; x++) { /* G g, column x of g: rows g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2 */
                const float *LDM_RESTRICT a = g[x], *LDM_RESTRICT b = g[3 + x], *LDM_RESTRICT e = g[6 + x];
                for (int64_t q = 0; q < nq; q++) { t[x][q] = 0.5f * (a[q] + b[q] + e[q]); t[3 + x][q] = 0.5f * (a[q] - b[q] + e[q]); }
            }
            /* (G g) G^T, the same on each row of G g */
            float *u = j->U + (r - j->rb) * cols + q0;
            ldm__wg_row(u, u + OC, u + 2 * OC, u + 3 * OC, g[0], g[1], g[2], nq);
            ldm__wg_row(u + 4 * OC, u + 5 * OC, u + 6 * OC, u + 7 * OC, t[0], t[1], t[2], nq);
            ldm__wg_row(u + 8 * OC, u + 9 * OC, u + 10 * OC, u + 11 * OC, t[3], t[4], t[5], nq);
            ldm__wg_row(u + 12 * OC, u + 13 * OC, u + 14 * OC, u + 15 * OC, g[6], g[7], g[8], nq);
        }
}

/* V[xi][c][p - p0] = (B^T d B)[xi] for the tiles p in [p0, p0 + np) of the images img [B, C, H, W]
   (tile p = b * P + ty * tw + tx covers rows 2ty-1 .. 2ty+2 and columns 2tx-1 .. 2tx+2 of image
   b; P tiles per image). A block of tiles never crosses a tile row, so never an image. */
typedef struct { float *V; const float *img; int64_t C, H, W, tw, P, p0, np; } ldm__wg_ijob;
/* The block of tiles of channel c starting at tile p (tile side m): its n tiles (at most
   LDM__WG_BLK, never past a tile row or the chunk), the m + 2 input rows under it from column
   a on (rp: in place, or the zero row z outside the image), and the block's nx columns, of
   which [a, b) lie in the image. The transforms set t = 0 outside [a, b). */
typedef struct { int64_t n, nx, a, b; const float *rp[6]; } ldm__wg_blk;
static void ldm__wg_block(const ldm__wg_ijob *j, int m, int64_t c, int64_t p, const float *z, ldm__wg_blk *k) {
    int64_t im = p / j->P, ty = p % j->P / j->tw, tx0 = p % j->tw, x0 = m * tx0 - 1;
    const float *plane = j->img + (im * j->C + c) * j->H * j->W;
    k->n = LDM__MIN(LDM__MIN(j->tw - tx0, j->p0 + j->np - p), LDM__WG_BLK);
    k->nx = m * k->n + 2;
    k->a = x0 < 0 ? 1 : 0;
    k->b = LDM__MAX(k->a, LDM__MIN(k->nx, j->W - x0));
    for (int i = 0; i < m + 2; i++) {
        int64_t y = m * ty - 1 + i;
        k->rp[i] = y < 0 || y >= j->H ? z : plane + y * j->W + x0 + k->a;
    }
}
/* (B^T d) B along a row for F(2x2): 4 columns per tile, 2 apart */
static LDM__VEC void ldm__wg_bt_cols(float *LDM_RESTRICT v0, float *LDM_RESTRICT v1, float *LDM_RESTRICT v2, float *LDM_RESTRICT v3,
                                     const float *LDM_RESTRICT s, int64_t n) {
    for (int64_t k = 0; k < n; k++) {
        v0[k] = s[2 * k] - s[2 * k + 2];
        v1[k] = s[2 * k + 1] + s[2 * k + 2];
        v2[k] = s[2 * k + 2] - s[2 * k + 1];
        v3[k] = s[2 * k + 1] - s[2 * k + 3];
    }
}
static LDM__VEC void ldm__wg_input_task(void *arg, int64_t c0, int64_t c1, int tid) {
    const ldm__wg_ijob *j = (const ldm__wg_ijob *)arg;
    int64_t CP = j->C * j->np;
    float z[2 * LDM__WG_BLK + 2], t[4][2 * LDM__WG_BLK + 2];
    (void)tid;
    memset(z, 0, sizeof z);
    for (int64_t c = c0; c < c1; c++) {
        for (int64_t p = j->p0; p < j->p0 + j->np;) {
            ldm__wg_blk bk;
            ldm__wg_block(j, 2, c, p, z, &bk);
            int64_t n = bk.n, nx = bk.nx, a = bk.a, b = bk.b;
            const float *LDM_RESTRICT d0 = bk.rp[0], *LDM_RESTRICT d1 = bk.rp[1], *LDM_RESTRICT d2 = bk.rp[2], *LDM_RESTRICT d3 = bk.rp[3];
            for (int i = 0; i < 4; i++) {
                for (int64_t x = 0; x < a; x++) t[i][x] = 0.0f;
                for (int64_t x = b; x < nx; x++) t[i][x] = 0.0f;
            }
            float *LDM_RESTRICT t0 = t[0] + a, *LDM_RESTRICT t1 = t[1] + a, *LDM_RESTRICT t2 = t[2] + a, *LDM_RESTRICT t3 = t[3] + a;
            for (int64_t x = 0; x < b - a; x++) { /* B^T d: rows d0-d2, d1+d2, d2-d1, d1-d3 */
                t0[x] = d0[x] - d2[x];
                t1[x] = d1[x] + d2[x];
                t2[x] = d2[x] - d1[x];
                t3[x] = d1[x] - d3[x];
            }
            float *v = j->V + c * j->np + (p - j->p0);
            for (int i = 0; i < 4; i++) { /* (B^T d) B: the same on columns */
                float *v0 = v + (4 * i) * CP;
                ldm__wg_bt_cols(v0, v0 + CP, v0 + 2 * CP, v0 + 3 * CP, t[i], n);
            }
            p += n;
        }
    }
}

/* out[o] (+)= A^T M[xi][o] A (+ bias[o]) for the chunk's tiles; accumulate adds into out. */
typedef struct { float *out; const float *M, *bias; int64_t O, OH, OW, tw, P, p0, np; int accumulate; } ldm__wg_ojob;
static LDM__VEC void ldm__wg_output_task(void *arg, int64_t o0, int64_t o1, int tid) {
    const ldm__wg_ojob *j = (const ldm__wg_ojob *)arg;
    int64_t OP = j->O * j->np;
    float y[4][LDM__WG_BLK];
    (void)tid;
    for (int64_t o = o0; o < o1; o++) {
        float bv = j->bias ? j->bias[o] : 0.0f;
        for (int64_t p = j->p0; p < j->p0 + j->np;) {
            int64_t im = p / j->P, ty = p % j->P / j->tw, tx0 = p % j->tw, n = LDM__MIN(LDM__MIN(j->tw - tx0, j->p0 + j->np - p), LDM__WG_BLK);
            const float *m = j->M + o * j->np + (p - j->p0);
            const float *LDM_RESTRICT m0 = m, *LDM_RESTRICT m1 = m0 + OP, *LDM_RESTRICT m2 = m1 + OP, *LDM_RESTRICT m3 = m2 + OP;
            const float *LDM_RESTRICT m4 = m3 + OP, *LDM_RESTRICT m5 = m4 + OP, *LDM_RESTRICT m6 = m5 + OP, *LDM_RESTRICT m7 = m6 + OP;
            const float *LDM_RESTRICT m8 = m7 + OP, *LDM_RESTRICT m9 = m8 + OP, *LDM_RESTRICT m10 = m9 + OP, *LDM_RESTRICT m11 = m10 + OP;
            const float *LDM_RESTRICT m12 = m11 + OP, *LDM_RESTRICT m13 = m12 + OP, *LDM_RESTRICT m14 = m13 + OP, *LDM_RESTRICT m15 = m14 + OP;
            for (int64_t k = 0; k < n; k++) {
                /* A^T M: rows M0+M1+M2 (a) and M1-M2-M3 (b), per column; then the same on columns */
                float a0 = m0[k] + m4[k] + m8[k], a1 = m1[k] + m5[k] + m9[k], a2 = m2[k] + m6[k] + m10[k], a3 = m3[k] + m7[k] + m11[k];
                float b0 = m4[k] - m8[k] - m12[k], b1 = m5[k] - m9[k] - m13[k], b2 = m6[k] - m10[k] - m14[k], b3 = m7[k] - m11[k] - m15[k];
                y[0][k] = a0 + a1 + a2;
                y[1][k] = a1 - a2 - a3;
                y[2][k] = b0 + b1 + b2;
                y[3][k] = b1 - b2 - b3;
            }
            for (int r = 0; r < 2; r++) {
                int64_t oy = 2 * ty + r, nw = LDM__MIN(2 * n, j->OW - 2 * tx0), h = nw / 2;
                if (oy >= j->OH) break;
                float *dst = j->out + ((im * j->O + o) * j->OH + oy) * j->OW + 2 * tx0;
                const float *e = y[2 * r], *f = y[2 * r + 1];
                if (j->accumulate) {
                    for (int64_t k = 0; k < h; k++) { dst[2 * k] += e[k]; dst[2 * k + 1] += f[k]; }
                    if (nw & 1) dst[nw - 1] += e[h];
                } else {
                    for (int64_t k = 0; k < h; k++) { dst[2 * k] = e[k] + bv; dst[2 * k + 1] = f[k] + bv; }
                    if (nw & 1) dst[nw - 1] = e[h] + bv;
                }
            }
            p += n;
        }
    }
}

/* dM[xi][o][p - p0] = (A dY A^T)[xi] for dY the 2x2 output-gradient tile (zero past the edge). */
typedef struct { float *dM; const float *dout; int64_t O, OH, OW, tw, P, p0, np; } ldm__wg_gjob;
static LDM__VEC void ldm__wg_grad_task(void *arg, int64_t o0, int64_t o1, int tid) {
    const ldm__wg_gjob *j = (const ldm__wg_gjob *)arg;
    int64_t OP = j->O * j->np;
    float e[2][LDM__WG_BLK], f[2][LDM__WG_BLK];
    (void)tid;
    for (int64_t o = o0; o < o1; o++) {
        for (int64_t p = j->p0; p < j->p0 + j->np;) {
            int64_t im = p / j->P, ty = p % j->P / j->tw, tx0 = p % j->tw, n = LDM__MIN(LDM__MIN(j->tw - tx0, j->p0 + j->np - p), LDM__WG_BLK);
            int64_t nw = LDM__MIN(2 * n, j->OW - 2 * tx0), h = nw / 2;
            for (int r = 0; r < 2; r++) { /* even and odd columns of the tile rows */
                int64_t oy = 2 * ty + r;
                for (int64_t k = 0; k < n; k++) e[r][k] = f[r][k] = 0.0f;
                if (oy >= j->OH) continue;
                const float *src = j->dout + ((im * j->O + o) * j->OH + oy) * j->OW + 2 * tx0;
                for (int64_t k = 0; k < h; k++) { e[r][k] = src[2 * k]; f[r][k] = src[2 * k + 1]; }
                if (nw & 1) e[r][h] = src[nw - 1];
            }
            float *m = j->dM + o * j->np + (p - j->p0);
            const float *LDM_RESTRICT e0 = e[0], *LDM_RESTRICT e1 = e[1], *LDM_RESTRICT f0 = f[0], *LDM_RESTRICT f1 = f[1];
            /* A dY: rows (y00, y01), (y00+y10, y01+y11), (y00-y10, y01-y11), (-y10, -y11); then each
               row (u, v) A^T = (u, u+v, u-v, -v) */
            for (int64_t k = 0; k < n; k++) { m[k] = e0[k]; m[OP + k] = e0[k] + f0[k]; m[2 * OP + k] = e0[k] - f0[k]; m[3 * OP + k] = -f0[k]; }
            float *m1 = m + 4 * OP, *m2 = m + 8 * OP, *m3 = m + 12 * OP;
            for (int64_t k = 0; k < n; k++) {
                float u = e0[k] + e1[k], v = f0[k] + f1[k];
                m1[k] = u; m1[OP + k] = u + v; m1[2 * OP + k] = u - v; m1[3 * OP + k] = -v;
            }
            for (int64_t k = 0; k < n; k++) {
                float u = e0[k] - e1[k], v = f0[k] - f1[k];
                m2[k] = u; m2[OP + k] = u + v; m2[2 * OP + k] = u - v; m2[3 * OP + k] = -v;
            }
            for (int64_t k = 0; k < n; k++) { m3[k] = -e1[k]; m3[OP + k] = -e1[k] - f1[k]; m3[2 * OP + k] = -e1[k] + f1[k]; m3[3 * OP + k] = f1[k]; }
            p += n;
        }
    }
}

/* dw[o][c] += G^T dU[.][o][c] G */
typedef struct { float *dw; const float *dU; int64_t O, C; } ldm__wg_djob;
static LDM__VEC void ldm__wg_dweight_task(void *arg, int64_t o0, int64_t o1, int tid) {
    const ldm__wg_djob *j = (const ldm__wg_djob *)arg;
    int64_t OC = j->O * j->C;
    (void)tid;
    for (int64_t o = o0; o < o1; o++)
        for (int64_t c = 0; c < j->C; c++) {
            const float *u = j->dU + o * j->C + c;
            float t[12]; /* G^T X: rows X0 + (X1+X2)/2, (X1-X2)/2, (X1+X2)/2 + X3 */
            for (int x = 0; x < 4; x++) {
                float x0 = u[x * OC], x1 = u[(4 + x) * OC], x2 = u[(8 + x) * OC], x3 = u[(12 + x) * OC], h = 0.5f * (x1 + x2);
                t[x] = x0 + h; t[4 + x] = 0.5f * (x1 - x2); t[8 + x] = h + x3;
            }
            float *w = j->dw + (o * j->C + c) * 9;
            for (int r = 0; r < 3; r++) { /* (G^T X) G, the same on columns */
                float a0 = t[4 * r], a1 = t[4 * r + 1], a2 = t[4 * r + 2], a3 = t[4 * r + 3], h = 0.5f * (a1 + a2);
                w[3 * r] += a0 + h; w[3 * r + 1] += 0.5f * (a1 - a2); w[3 * r + 2] += h + a3;
            }
        }
}

/* ---- F(4x4, 3x3): the same scheme on 4x4 output tiles ---------------------------------------
   6x6 input patches and 36 products per tile: 2.25 multiply-adds per output and input channel
   instead of F(2x2)'s 4, and less data through the GEMMs. The interpolation points are 0, 1,
   -1, 2, -1/2 and infinity, chosen for rounding: the worst element is ~3-5e-6 of the output's
   largest value at 128-512 channels (float32 against float64), where the textbook 0, +-1, +-2
   gives ~1e-5 and im2col ~5e-7 (measured in a float64 model of both). The matrices:
     B^T = [1 3/2 -2 -3/2 1 0; 0 -1 -5/2 -1/2 1 0; 0 1 1/2 -5/2 1 0; 0 -1/2 -1 1/2 1 0;
            0 2 -1 -2 1 0; 0 1 3/2 -2 -3/2 1]
     G   = [1 0 0; -1/3 -1/3 -1/3; 1/3 -1/3 1/3; 1/15 2/15 4/15; -16/15 8/15 -4/15; 0 0 1]
     A^T = [1 1 1 1 1 0; 0 1 -1 2 -1/2 0; 0 1 1 4 1/4 0; 0 1 -1 8 -1/8 1]
   Tile p covers output rows 4ty .. 4ty+3 and input rows 4ty-1 .. 4ty+4 (columns alike). */

/* u[i * s + q] = (G (a, b, e))[i] for n columns (six separate pointers, so that it vectorises) */
static LDM__VEC void ldm__wg4_g6(float *LDM_RESTRICT u0, float *LDM_RESTRICT u1, float *LDM_RESTRICT u2, float *LDM_RESTRICT u3,
                                 float *LDM_RESTRICT u4, float *LDM_RESTRICT u5, const float *LDM_RESTRICT a, const float *LDM_RESTRICT b,
                                 const float *LDM_RESTRICT e, int64_t n) {
    const float third = 1.0f / 3.0f, fif = 1.0f / 15.0f;
    for (int64_t q = 0; q < n; q++) {
        float ae = a[q] + e[q];
        u0[q] = a[q];
        u1[q] = -third * (ae + b[q]);
        u2[q] = third * (ae - b[q]);
        u3[q] = fif * (a[q] + 2.0f * b[q] + 4.0f * e[q]);
        u4[q] = fif * (-16.0f * a[q] + 8.0f * b[q] - 4.0f * e[q]);
        u5[q] = e[q];
    }
}
static void ldm__wg4_g(float *u, int64_t s, const float *a, const float *b, const float *e, int64_t n) {
    ldm__wg4_g6(u, u + s, u + 2 * s, u + 3 * s, u + 4 * s, u + 5 * s, a, b, e, n);
}
static LDM__VEC void ldm__wg4_weight_task(void *arg, int64_t r0, int64_t r1, int tid) {
    const ldm__wg_wjob *j = (const ldm__wg_wjob *)arg;
    int64_t OC = j->ps, cols = j->flip ? j->O : j->C;
    float g[9][128], t[18][128]; /* the taps; t[3i + x] = row i of G g, column x */
    (void)tid;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t q0 = 0; q0 < cols; q0 += 128) {
            int64_t nq = LDM__MIN(128, cols - q0);
            for (int64_t q = 0; q < nq; q++) {
                const float *w = j->w + (j->flip ? (q0 + q) * j->C + r : r * j->C + q0 + q) * 9;
                for (int i = 0; i < 9; i++) g[i][q] = w[j->flip ? 8 - i : i];
            }
            for (int x = 0; x < 3; x++) ldm__wg4_g(t[x], 3 * 128, g[x], g[3 + x], g[6 + x], nq);
            float *u = j->U + (r - j->rb) * cols + q0;
            for (int i = 0; i < 6; i++) ldm__wg4_g(u + 6 * i * OC, OC, t[3 * i], t[3 * i + 1], t[3 * i + 2], nq);
        }
}

/* v_j[k] = (B^T e)[j] for the tiles k of a row, e = (a[4k], .., a[4k+3], b[4k], b[4k+1]) with b = a + 4:
   two pointers, because the vectoriser refuses one group of 6 loads 4 apart */
static LDM__VEC void ldm__wg4_bt_cols(float *LDM_RESTRICT v0, float *LDM_RESTRICT v1, float *LDM_RESTRICT v2, float *LDM_RESTRICT v3,
                                      float *LDM_RESTRICT v4, float *LDM_RESTRICT v5, const float *LDM_RESTRICT a, const float *LDM_RESTRICT b,
                                      int64_t n) {
    for (int64_t k = 0; k < n; k++) {
        float e0 = a[4 * k], e1 = a[4 * k + 1], e2 = a[4 * k + 2], e3 = a[4 * k + 3], e4 = b[4 * k], e5 = b[4 * k + 1];
        v0[k] = e0 + 1.5f * e1 - 2.0f * e2 - 1.5f * e3 + e4;
        v1[k] = -e1 - 2.5f * e2 - 0.5f * e3 + e4;
        v2[k] = e1 + 0.5f * e2 - 2.5f * e3 + e4;
        v3[k] = -0.5f * e1 - e2 + 0.5f * e3 + e4;
        v4[k] = 2.0f * e1 - e2 - 2.0f * e3 + e4;
        v5[k] = e1 + 1.5f * e2 - 2.0f * e3 - 1.5f * e4 + e5;
    }
}
/* V[xi][c][p - p0] = (B^T d B)[xi], as ldm__wg_input_task for 6x6 patches */
static LDM__VEC void ldm__wg4_input_task(void *arg, int64_t c0, int64_t c1, int tid) {
    const ldm__wg_ijob *j = (const ldm__wg_ijob *)arg;
    int64_t CP = j->C * j->np;
    float z[4 * LDM__WG_BLK + 2], t[6][4 * LDM__WG_BLK + 2];
    (void)tid;
    memset(z, 0, sizeof z);
    for (int64_t c = c0; c < c1; c++) {
        for (int64_t p = j->p0; p < j->p0 + j->np;) {
            ldm__wg_blk bk;
            ldm__wg_block(j, 4, c, p, z, &bk);
            int64_t n = bk.n, nx = bk.nx, a = bk.a, b = bk.b;
            const float *LDM_RESTRICT d0 = bk.rp[0], *LDM_RESTRICT d1 = bk.rp[1], *LDM_RESTRICT d2 = bk.rp[2], *LDM_RESTRICT d3 = bk.rp[3],
                                      *LDM_RESTRICT d4 = bk.rp[4], *LDM_RESTRICT d5 = bk.rp[5];
            for (int i = 0; i < 6; i++) {
                for (int64_t x = 0; x < a; x++) t[i][x] = 0.0f;
                for (int64_t x = b; x < nx; x++) t[i][x] = 0.0f;
            }
            float *LDM_RESTRICT t0 = t[0] + a, *LDM_RESTRICT t1 = t[1] + a, *LDM_RESTRICT t2 = t[2] + a, *LDM_RESTRICT t3 = t[3] + a,
                                *LDM_RESTRICT t4 = t[4] + a, *LDM_RESTRICT t5 = t[5] + a;
            for (int64_t x = 0; x < b - a; x++) { /* B^T d, down the columns */
                t0[x] = d0[x] + 1.5f * d1[x] - 2.0f * d2[x] - 1.5f * d3[x] + d4[x];
                t1[x] = -d1[x] - 2.5f * d2[x] - 0.5f * d3[x] + d4[x];
                t2[x] = d1[x] + 0.5f * d2[x] - 2.5f * d3[x] + d4[x];
                t3[x] = -0.5f * d1[x] - d2[x] + 0.5f * d3[x] + d4[x];
                t4[x] = 2.0f * d1[x] - d2[x] - 2.0f * d3[x] + d4[x];
                t5[x] = d1[x] + 1.5f * d2[x] - 2.0f * d3[x] - 1.5f * d4[x] + d5[x];
            }
            float *v = j->V + c * j->np + (p - j->p0);
            for (int i = 0; i < 6; i++) { /* (B^T d) B: the same along each row, 6 columns per tile, 4 apart */
                float *v0 = v + (6 * i) * CP;
                ldm__wg4_bt_cols(v0, v0 + CP, v0 + 2 * CP, v0 + 3 * CP, v0 + 4 * CP, v0 + 5 * CP, t[i], t[i] + 4, n);
            }
            p += n;
        }
    }
}

/* y[r * ys + k] = (A^T (m[0], m[ms], .., m[5 ms]))[r] for n columns k */
static LDM__VEC void ldm__wg4_at4(float *LDM_RESTRICT y0, float *LDM_RESTRICT y1, float *LDM_RESTRICT y2, float *LDM_RESTRICT y3,
                                  const float *LDM_RESTRICT m0, const float *LDM_RESTRICT m1, const float *LDM_RESTRICT m2,
                                  const float *LDM_RESTRICT m3, const float *LDM_RESTRICT m4, const float *LDM_RESTRICT m5, int64_t n) {
    for (int64_t k = 0; k < n; k++) {
        float s = m1[k] + m2[k], d = m1[k] - m2[k];
        y0[k] = m0[k] + s + m3[k] + m4[k];
        y1[k] = d + 2.0f * m3[k] - 0.5f * m4[k];
        y2[k] = s + 4.0f * m3[k] + 0.25f * m4[k];
        y3[k] = d + 8.0f * m3[k] - 0.125f * m4[k] + m5[k];
    }
}
static void ldm__wg4_at(float *y, int64_t ys, const float *m, int64_t ms, int64_t n) {
    ldm__wg4_at4(y, y + ys, y + 2 * ys, y + 3 * ys, m, m + ms, m + 2 * ms, m + 3 * ms, m + 4 * ms, m + 5 * ms, n);
}
/* out[o] (+)= A^T M[xi][o] A (+ bias[o]), as ldm__wg_output_task for 4x4 tiles */
static LDM__VEC void ldm__wg4_output_task(void *arg, int64_t o0, int64_t o1, int tid) {
    const ldm__wg_ojob *j = (const ldm__wg_ojob *)arg;
    int64_t OP = j->O * j->np;
    float a[24][LDM__WG_BLK], y[16][LDM__WG_BLK]; /* a[6r + x]: row r of A^T M; y[4r + x] */
    (void)tid;
    for (int64_t o = o0; o < o1; o++) {
        float bv = j->bias ? j->bias[o] : 0.0f;
        for (int64_t p = j->p0; p < j->p0 + j->np;) {
            int64_t im = p / j->P, ty = p % j->P / j->tw, tx0 = p % j->tw, n = LDM__MIN(LDM__MIN(j->tw - tx0, j->p0 + j->np - p), LDM__WG_BLK);
            const float *m = j->M + o * j->np + (p - j->p0);
            for (int x = 0; x < 6; x++) ldm__wg4_at(a[x], 6 * LDM__WG_BLK, m + x * OP, 6 * OP, n);
            for (int r = 0; r < 4; r++) ldm__wg4_at(y[4 * r], LDM__WG_BLK, a[6 * r], LDM__WG_BLK, n);
            int64_t nw = LDM__MIN(4 * n, j->OW - 4 * tx0), h = nw / 4;
            for (int r = 0; r < 4; r++) {
                int64_t oy = 4 * ty + r;
                if (oy >= j->OH) break;
                float *LDM_RESTRICT dst = j->out + ((im * j->O + o) * j->OH + oy) * j->OW + 4 * tx0;
                const float *y0 = y[4 * r], *y1 = y[4 * r + 1], *y2 = y[4 * r + 2], *y3 = y[4 * r + 3];
                if (j->accumulate) {
                    for (int64_t k = 0; k < h; k++) { dst[4 * k] += y0[k]; dst[4 * k + 1] += y1[k]; dst[4 * k + 2] += y2[k]; dst[4 * k + 3] += y3[k]; }
                    for (int64_t x = 0; x < nw - 4 * h; x++) dst[4 * h + x] += y[4 * r + x][h];
                } else {
                    for (int64_t k = 0; k < h; k++) {
                        dst[4 * k] = y0[k] + bv; dst[4 * k + 1] = y1[k] + bv; dst[4 * k + 2] = y2[k] + bv; dst[4 * k + 3] = y3[k] + bv;
                    }
                    for (int64_t x = 0; x < nw - 4 * h; x++) dst[4 * h + x] = y[4 * r + x][h] + bv;
                }
            }
            p += n;
        }
    }
}

/* x[i * xs + k] = (A (y[0], y[ys], y[2 ys], y[3 ys]))[i] for n columns k: A is A^T's transpose */
static LDM__VEC void ldm__wg4_a6(float *LDM_RESTRICT x0, float *LDM_RESTRICT x1, float *LDM_RESTRICT x2, float *LDM_RESTRICT x3,
                                 float *LDM_RESTRICT x4, float *LDM_RESTRICT x5, const float *LDM_RESTRICT y0, const float *LDM_RESTRICT y1,
                                 const float *LDM_RESTRICT y2, const float *LDM_RESTRICT y3, int64_t n) {
    for (int64_t k = 0; k < n; k++) {
        float e = y0[k] + y2[k], f = y1[k] + y3[k];
        x0[k] = y0[k];
        x1[k] = e + f;
        x2[k] = e - f;
        x3[k] = y0[k] + 2.0f * y1[k] + 4.0f * y2[k] + 8.0f * y3[k];
        x4[k] = y0[k] - 0.5f * y1[k] + 0.25f * y2[k] - 0.125f * y3[k];
        x5[k] = y3[k];
    }
}
static void ldm__wg4_a(float *x, int64_t xs, const float *y, int64_t ys, int64_t n) {
    ldm__wg4_a6(x, x + xs, x + 2 * xs, x + 3 * xs, x + 4 * xs, x + 5 * xs, y, y + ys, y + 2 * ys, y + 3 * ys, n);
}
/* dM[xi][o][p - p0] = (A dY A^T)[xi] for dY the 4x4 output-gradient tile (zero past the edge) */
static LDM__VEC void ldm__wg4_grad_task(void *arg, int64_t o0, int64_t o1, int tid) {
    const ldm__wg_gjob *j = (const ldm__wg_gjob *)arg;
    int64_t OP = j->O * j->np;
    float e[16][LDM__WG_BLK], x[24][LDM__WG_BLK]; /* e[4r + c]: dY row r, column c; x[6r + i] = A (row r) */
    (void)tid;
    for (int64_t o = o0; o < o1; o++) {
        for (int64_t p = j->p0; p < j->p0 + j->np;) {
            int64_t im = p / j->P, ty = p % j->P / j->tw, tx0 = p % j->tw, n = LDM__MIN(LDM__MIN(j->tw - tx0, j->p0 + j->np - p), LDM__WG_BLK);
            int64_t nw = LDM__MIN(4 * n, j->OW - 4 * tx0), h = nw / 4;
            for (int r = 0; r < 4; r++) {
                int64_t oy = 4 * ty + r;
                float *e0 = e[4 * r], *e1 = e[4 * r + 1], *e2 = e[4 * r + 2], *e3 = e[4 * r + 3];
                for (int64_t k = 0; k < n; k++) e0[k] = e1[k] = e2[k] = e3[k] = 0.0f;
                if (oy >= j->OH) continue;
                const float *src = j->dout + ((im * j->O + o) * j->OH + oy) * j->OW + 4 * tx0;
                for (int64_t k = 0; k < h; k++) { e0[k] = src[4 * k]; e1[k] = src[4 * k + 1]; e2[k] = src[4 * k + 2]; e3[k] = src[4 * k + 3]; }
                for (int64_t c = 0; c < nw - 4 * h; c++) e[4 * r + c][h] = src[4 * h + c];
            }
            for (int r = 0; r < 4; r++) ldm__wg4_a(x[6 * r], LDM__WG_BLK, e[4 * r], LDM__WG_BLK, n);
            float *m = j->dM + o * j->np + (p - j->p0);
            for (int c = 0; c < 6; c++) ldm__wg4_a(m + c * OP, 6 * OP, x[c], 6 * LDM__WG_BLK, n);
            p += n;
        }
    }
}

/* dw[o][c] += G^T dU[.][o][c] G, for 128 input channels c at a time: (G^T)(u0..u5) =
   (u0 + (u2-u1)/3 + u3/15 - 16 u4/15, -(u1+u2)/3 + 2 u3/15 + 8 u4/15, (u2-u1)/3 + 4 u3/15 - 4 u4/15 + u5) */
static LDM__VEC void ldm__wg4_gt3(float *LDM_RESTRICT w0, float *LDM_RESTRICT w1, float *LDM_RESTRICT w2, const float *LDM_RESTRICT u0,
                                  const float *LDM_RESTRICT u1, const float *LDM_RESTRICT u2, const float *LDM_RESTRICT u3,
                                  const float *LDM_RESTRICT u4, const float *LDM_RESTRICT u5, int64_t n) {
    const float third = 1.0f / 3.0f, fif = 1.0f / 15.0f;
    for (int64_t k = 0; k < n; k++) {
        float d = third * (u2[k] - u1[k]);
        w0[k] = u0[k] + d + fif * (u3[k] - 16.0f * u4[k]);
        w1[k] = -third * (u1[k] + u2[k]) + fif * (2.0f * u3[k] + 8.0f * u4[k]);
        w2[k] = d + fif * (4.0f * u3[k] - 4.0f * u4[k]) + u5[k];
    }
}
static void ldm__wg4_dweight_task(void *arg, int64_t o0, int64_t o1, int tid) {
    const ldm__wg_djob *j = (const ldm__wg_djob *)arg;
    int64_t OC = j->O * j->C;
    float t[18][128], s[9][128]; /* t[6k + x]: G^T down column x of dU; s[3k + l] = ((G^T dU) G)[k][l] */
    (void)tid;
    for (int64_t o = o0; o < o1; o++)
        for (int64_t c0 = 0; c0 < j->C; c0 += 128) {
            int64_t nc = LDM__MIN(128, j->C - c0);
            const float *u = j->dU + o * j->C + c0;
            for (int x = 0; x < 6; x++)
                ldm__wg4_gt3(t[x], t[6 + x], t[12 + x], u + x * OC, u + (6 + x) * OC, u + (12 + x) * OC, u + (18 + x) * OC,
                             u + (24 + x) * OC, u + (30 + x) * OC, nc);
            for (int k = 0; k < 3; k++) ldm__wg4_gt3(s[3 * k], s[3 * k + 1], s[3 * k + 2], t[6 * k], t[6 * k + 1], t[6 * k + 2], t[6 * k + 3],
                                                     t[6 * k + 4], t[6 * k + 5], nc);
            float *w = j->dw + (o * j->C + c0) * 9;
            for (int64_t c = 0; c < nc; c++)
                for (int i = 0; i < 9; i++) w[c * 9 + i] += s[i][c];
        }
}

/* The two tile sizes: tile side m, m + 2 squared products, and their transforms. */
typedef struct { int m, n2; ldm_task_fn weight, input, output, grad, dweight; } ldm__wg_kind;
static const ldm__wg_kind ldm__wg_kinds[2] = {
    {2, 16, ldm__wg_weight_task, ldm__wg_input_task, ldm__wg_output_task, ldm__wg_grad_task, ldm__wg_dweight_task},
    {4, 36, ldm__wg4_weight_task, ldm__wg4_input_task, ldm__wg4_output_task, ldm__wg4_grad_task, ldm__wg4_dweight_task}};

/* The transformed filters U: per xi the GEMM's A, [O x C] (or [C x O] flipped). With the
   built-in SGEMM they are packed here, once per call, in the layout its kernel reads (each
   product would otherwise repack them for every chunk of tiles); `sap` is then the packed
   stride between the xi, else 0 and U is plain [n2, rows, cols]. */
typedef struct {
    ldm__wg_wjob w;
    const ldm__wg_kind *k;
    const void *uk;    /* the SGEMM kernel (const ldm__gemm_kernel *) */
    float *U, *scratch;
    int64_t sap, M, K, n2;
} ldm__wg_pjob;
#ifndef LDM_BLAS
static void ldm__wg_pack_task(void *arg, int64_t p0, int64_t p1, int tid) {
    const ldm__wg_pjob *j = (const ldm__wg_pjob *)arg;
    const ldm__gemm_kernel *uk = (const ldm__gemm_kernel *)j->uk;
    ldm__wg_wjob sub = j->w; /* MR rows at a time into this thread's scratch, then packed */
    sub.ps = uk->mr * j->K;
    sub.U = j->scratch + (size_t)tid * (size_t)(j->n2 * sub.ps);
    for (int64_t p = p0; p < p1; p++) {
        int64_t r0 = p * uk->mr, r1 = LDM__MIN(r0 + uk->mr, j->M);
        sub.rb = r0;
        j->k->weight(&sub, r0, r1, tid);
        for (int64_t xi = 0; xi < j->n2; xi++) ldm__gemm_pack_rows(uk, j->U + xi * j->sap, sub.U + xi * sub.ps, j->K, j->M, j->K, r0, r1 - r0);
    }
}
#endif
/* Allocates and fills U from w [O, C, 3, 3] (NULL when out of memory); *sap as above. */
static float *ldm__wg_weights(ldm_ctx *ctx, const ldm__wg_kind *k, const float *w, int64_t O, int64_t C, int flip, int64_t *sap) {
    int64_t n2 = k->n2, M = flip ? C : O, K = flip ? O : C;
    *sap = 0;
#ifndef LDM_BLAS
    const ldm__gemm_kernel *uk = ctx->gemm_kernel;
    int nested = 0;
#ifndef LDM_NO_THREADS
    nested = ctx->pool.busy;
#endif
    if (uk && !nested) {
        int64_t sp = ldm__gemm_packed_floats(uk, M, K);
        float *U = (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * (size_t)(n2 * sp));
        float *scr = U ? (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * (size_t)(n2 * uk->mr * K * ctx->threads)) : NULL;
        if (!scr) return NULL;
        ldm__wg_pjob pj = {{U, w, O, C, 0, 0, flip}, k, uk, U, scr, sp, M, K, n2};
        ldm_parallel_for(ctx, (M + uk->mr - 1) / uk->mr, 1, ldm__wg_pack_task, &pj);
        *sap = sp;
        return U;
    }
#endif
    float *U = (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * (size_t)(n2 * M * K));
    if (!U) return NULL;
    ldm__wg_wjob wj = {U, w, O, C, O * C, 0, flip};
    ldm_parallel_for(ctx, M, 1, k->weight, &wj);
    return U;
}

/* Tiles per chunk: V and M (or dM) together ~16 MiB, as im2col's columns. */
static int64_t ldm__wg_chunk(const ldm__wg_kind *k, int64_t C, int64_t O, int64_t P) {
    int64_t np = ((int64_t)4 << 20) / (k->n2 * (C + O));
    return LDM__MIN(LDM__MAX(np, 64), P);
}

/* out (+)= conv3x3(inp, U) (+ bias) for images inp [B, C, H, W] and transformed filters U
   [n2, O, C]; out [B, O, H, W]. */
static void ldm__wg_conv(ldm_ctx *ctx, const ldm__wg_kind *k, float *out, const float *inp, const float *U, int64_t sap, const float *bias,
                         int64_t B, int64_t C, int64_t O, int64_t H, int64_t W, int accumulate) {
    int64_t n2 = k->n2, tw = (W + k->m - 1) / k->m, P = (H + k->m - 1) / k->m * tw, np = ldm__wg_chunk(k, C, O, B * P);
    float *V = (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * (size_t)(n2 * (C + O) * np)), *M = V + n2 * C * np;
    if (!V) return;
    for (int64_t p0 = 0; p0 < B * P; p0 += np) { /* a chunk may span images: small images make one product */
        int64_t n = LDM__MIN(np, B * P - p0);
        ldm__wg_ijob ij = {V, inp, C, H, W, tw, P, p0, n};
        ldm_parallel_for(ctx, C, 1, k->input, &ij);
#ifndef LDM_BLAS
        if (sap) ldm__cpu_sgemm_batch_pk(ctx, n2, U, sap, 0, 0, O, n, C, 1.0f, U, C, sap, V, n, C * n, 0.0f, M, n, O * n);
        else
#endif
            ldm__cpu_sgemm_batch(ctx, n2, 0, 0, O, n, C, 1.0f, U, C, O * C, V, n, C * n, 0.0f, M, n, O * n);
        ldm__wg_ojob oj = {out, M, bias, O, H, W, tw, P, p0, n, accumulate};
        ldm_parallel_for(ctx, O, 1, k->output, &oj);
    }
}

static void ldm__wg_forward(ldm_ctx *ctx, const ldm__wg_kind *k, float *out, const float *inp, const float *w, const float *bias,
                            const ldm_conv_desc *d) {
    size_t used0 = ctx->arena[LDM_CPU].used;
    int64_t sap;
    float *U = ldm__wg_weights(ctx, k, w, d->O, d->C, 0, &sap);
    if (U) ldm__wg_conv(ctx, k, out, inp, U, sap, bias, d->B, d->C, d->O, d->H, d->W, 0);
    ctx->arena[LDM_CPU].used = used0;
}

static void ldm__wg_backward(ldm_ctx *ctx, const ldm__wg_kind *k, float *dinp, float *dw, const float *dout, const float *inp,
                             const float *w, const ldm_conv_desc *d) {
    int64_t C = d->C, O = d->O, H = d->H, W = d->W, n2 = k->n2, tw = (W + k->m - 1) / k->m, P = (H + k->m - 1) / k->m * tw;
    size_t used0 = ctx->arena[LDM_CPU].used;
    float *U = NULL;
    if (dinp) { /* the transposed convolution: the same kernel with flipped filters, O -> C */
        int64_t sap;
        if (!(U = ldm__wg_weights(ctx, k, w, O, C, 1, &sap))) return;
        ldm__wg_conv(ctx, k, dinp, dout, U, sap, NULL, d->B, O, C, H, W, 1);
        ctx->arena[LDM_CPU].used = used0;
    }
    if (dw && !(U = (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * (size_t)(n2 * O * C)))) return;
    if (dw) { /* dU, summed over images and chunks in a fixed order */
        int64_t BP = d->B * P, np = ldm__wg_chunk(k, C, O, BP);
        float *V = (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * (size_t)(n2 * (C + O) * np)), *dM = V + n2 * C * np;
        if (V) {
            memset(U, 0, sizeof(float) * (size_t)(n2 * O * C));
            for (int64_t p0 = 0; p0 < BP; p0 += np) {
                int64_t n = LDM__MIN(np, BP - p0);
                ldm__wg_ijob ij = {V, inp, C, H, W, tw, P, p0, n};
                ldm_parallel_for(ctx, C, 1, k->input, &ij);
                ldm__wg_gjob gj = {dM, dout, O, H, W, tw, P, p0, n};
                ldm_parallel_for(ctx, O, 1, k->grad, &gj);
                ldm__cpu_sgemm_batch(ctx, n2, 0, 1, O, C, n, 1.0f, dM, n, O * n, V, n, C * n, 1.0f, U, C, O * C);
            }
            ldm__wg_djob dj = {dw, U, O, C};
            ldm_parallel_for(ctx, O, 1, k->dweight, &dj);
        }
    }
    ctx->arena[LDM_CPU].used = used0;
}

static void ldm__cpu_conv_forward(ldm_ctx *ctx, float *out, const float *inp, const float *w, const float *bias, const ldm_conv_desc *d) {
    int wm = ldm__conv_winograd_tile(ctx, d, 0);
    if (wm) { ldm__wg_forward(ctx, &ldm__wg_kinds[wm == 4], out, inp, w, bias, d); return; }
    int64_t K = d->C * d->kt * d->kh * d->kw, IS = d->T * d->H * d->W, OS = d->OT * d->OH * d->OW;
    int pw = ldm__conv_is_pointwise(d);
    int64_t nc = pw ? OS : ldm__conv_chunk(d, K);
    size_t used0 = ctx->arena[LDM_CPU].used;
    float *col = pw ? NULL : (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * (size_t)(K * nc));
    if (!pw && !col) return;
    if (bias) ldm__conv_bias(ctx, out, bias, NULL, NULL, d);
    for (int64_t b = 0; b < d->B; b++) {
        float *ob = out + b * d->O * OS;
        for (int64_t n0 = 0; n0 < OS; n0 += nc) {
            int64_t m = LDM__MIN(nc, OS - n0);
            if (pw) ldm__cpu_sgemm(ctx, 0, 0, d->O, m, K, 1.0f, w, K, inp + b * d->C * IS + n0, IS, bias ? 1.0f : 0.0f, ob + n0, OS);
            else {
                ldm__im2col(ctx, d, inp + b * d->C * IS, col, n0, m, K);
                ldm__cpu_sgemm(ctx, 0, 0, d->O, m, K, 1.0f, w, K, col, m, bias ? 1.0f : 0.0f, ob + n0, OS);
            }
        }
    }
    ctx->arena[LDM_CPU].used = used0;
}
static void ldm__cpu_conv_backward(ldm_ctx *ctx, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                                   const float *w, const ldm_conv_desc *d) {
    int64_t K = d->C * d->kt * d->kh * d->kw, IS = d->T * d->H * d->W, OS = d->OT * d->OH * d->OW;
    if (db) ldm__conv_bias(ctx, NULL, NULL, db, dout, d);
    if (!dinp && !dw) return;
    int wm = ldm__conv_winograd_tile(ctx, d, 1);
    if (wm) { ldm__wg_backward(ctx, &ldm__wg_kinds[wm == 4], dinp, dw, dout, inp, w, d); return; }
    int pw = ldm__conv_is_pointwise(d);
    int64_t nc = pw ? OS : ldm__conv_chunk(d, K);
    size_t used0 = ctx->arena[LDM_CPU].used;
    float *col = pw ? NULL : (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * (size_t)(K * nc));
    if (!pw && !col) return;
    for (int64_t b = 0; b < d->B; b++) {
        const float *gb = dout + b * d->O * OS, *xb = inp + b * d->C * IS;
        float *dxb = dinp ? dinp + b * d->C * IS : NULL;
        if (pw) {
            if (dw) ldm__cpu_sgemm(ctx, 0, 1, d->O, K, OS, 1.0f, gb, OS, xb, IS, 1.0f, dw, K);
            if (dxb) ldm__cpu_sgemm(ctx, 1, 0, K, OS, d->O, 1.0f, w, K, gb, OS, 1.0f, dxb, IS);
            continue;
        }
        for (int64_t n0 = 0; n0 < OS; n0 += nc) {
            int64_t m = LDM__MIN(nc, OS - n0);
            if (dw) {
                ldm__im2col(ctx, d, xb, col, n0, m, K);
                ldm__cpu_sgemm(ctx, 0, 1, d->O, K, m, 1.0f, gb + n0, OS, col, m, 1.0f, dw, K);
            }
            if (dxb) {
                ldm__col2im_job j;
                ldm__cpu_sgemm(ctx, 1, 0, K, m, d->O, 1.0f, w, K, gb + n0, OS, 0.0f, col, m);
                j.d = d; j.img = dxb; j.col = col; j.n0 = n0; j.nc = m;
                ldm_parallel_for(ctx, d->C, 1, ldm__col2im_task, &j);
            }
        }
    }
    ctx->arena[LDM_CPU].used = used0;
}
LDM_API void ldm_conv_forward(ldm_ctx *ctx, float *out, const float *inp, const float *weight, const float *bias, const ldm_conv_desc *d) {
    ldm__cpu_conv_forward(ctx, out, inp, weight, bias, d);
}
LDM_API void ldm_conv_backward(ldm_ctx *ctx, float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                               const float *weight, const ldm_conv_desc *d) {
    ldm__cpu_conv_backward(ctx, dinp, dweight, dbias, dout, inp, weight, d);
}

/* ---- group norm: statistics in double, one (b, g) pair per work item ----
   With silu the output is silu(z) for z the group norm output, computed with the same
   operations as ldm_group_norm then ldm_silu (bitwise equal); the backward recomputes z. */
typedef struct {
    float *out, *mean, *rstd, *dinp;
    const float *inp, *w, *b, *dout;
    const float *cmean, *crstd;
    double *dwp, *dbp; /* per (b, c) partial sums for the weight and bias gradients */
    float *gs;         /* backward with silu: per thread, the group's dy * silu'(z) (or NULL: recomputed) */
    int64_t B, C, S;
    int G, silu;
    float eps;
} ldm__gn_job;
/* Group-norm sums in double over 8 interleaved lanes, added up in a fixed order at the end:
   vectorisable, and independent of the thread count. */
#define LDM__LANES 8
static LDM__VEC void ldm__sum_sumsq(const float *x, int64_t n, double *sum, double *sumsq) {
    double s[LDM__LANES] = {0}, q[LDM__LANES] = {0};
    int64_t k = 0;
    for (; k + LDM__LANES <= n; k += LDM__LANES)
        for (int l = 0; l < LDM__LANES; l++) { double v = x[k + l]; s[l] += v; q[l] += v * v; }
    for (int l = 0; k < n; k++, l++) { double v = x[k]; s[l] += v; q[l] += v * v; }
    double a = 0.0, b = 0.0;
    for (int l = 0; l < LDM__LANES; l++) { a += s[l]; b += q[l]; }
    *sum = a; *sumsq = b;
}
/* a += sum dy * (x - m) * r (the products in float, as the forward's xhat), b += sum dy */
static LDM__VEC void ldm__dot_sum(const float *dy, const float *x, float m, float r, int64_t n, double *a, double *b) {
    double s[LDM__LANES] = {0}, q[LDM__LANES] = {0};
    int64_t k = 0;
    for (; k + LDM__LANES <= n; k += LDM__LANES)
        for (int l = 0; l < LDM__LANES; l++) { float xh = (x[k + l] - m) * r; s[l] += (double)dy[k + l] * xh; q[l] += dy[k + l]; }
    for (int l = 0; k < n; k++, l++) { float xh = (x[k] - m) * r; s[l] += (double)dy[k] * xh; q[l] += dy[k]; }
    double u = 0.0, v = 0.0;
    for (int l = 0; l < LDM__LANES; l++) { u += s[l]; v += q[l]; }
    *a += u; *b += v;
}
static LDM__VEC void ldm__gn_fwd_task(void *arg, int64_t i0, int64_t i1, int tid) {
    ldm__gn_job *j = (ldm__gn_job *)arg;
    int64_t cg = j->C / j->G, n = cg * j->S;
    (void)tid;
    for (int64_t i = i0; i < i1; i++) {
        const float *x = j->inp + i * n;
        double s, ss;
        ldm__sum_sumsq(x, n, &s, &ss);
        double m = s / (double)n, var = ss / (double)n - m * m;
        if (var < 0.0) var = 0.0;
        float mf = (float)m, r = (float)(1.0 / sqrt(var + (double)j->eps));
        j->mean[i] = mf;
        j->rstd[i] = r;
        int64_t c0 = (i % j->G) * cg;
        float *y = j->out + i * n;
        for (int64_t c = 0; c < cg; c++) {
            float sc = r * (j->w ? j->w[c0 + c] : 1.0f), sh = (j->b ? j->b[c0 + c] : 0.0f) - mf * sc;
            const float *xc = x + c * j->S;
            float *yc = y + c * j->S;
            for (int64_t k = 0; k < j->S; k++) yc[k] = xc[k] * sc + sh;
            if (j->silu) /* in place, while the channel is in cache: LDM__U_SILU's expression */
                ldm__silu_row(yc, yc, j->S);
        }
    }
}
static void ldm__cpu_groupnorm_forward(ldm_ctx *ctx, float *out, float *mean, float *rstd, const float *inp, const float *w,
                                       const float *b, int64_t B, int64_t C, int64_t S, int G, float eps, int silu) {
    ldm__gn_job j;
    memset(&j, 0, sizeof j);
    j.out = out; j.mean = mean; j.rstd = rstd; j.inp = inp; j.w = w; j.b = b; j.B = B; j.C = C; j.S = S; j.G = G; j.eps = eps;
    j.silu = silu;
    ldm_parallel_for(ctx, B * G, 1, ldm__gn_fwd_task, &j);
}
static LDM__VEC void ldm__gn_bwd_task(void *arg, int64_t i0, int64_t i1, int tid) {
    ldm__gn_job *j = (ldm__gn_job *)arg;
    int64_t cg = j->C / j->G, n = cg * j->S;
    for (int64_t i = i0; i < i1; i++) {
        const float *x = j->inp + i * n, *dy = j->dout + i * n;
        float m = j->cmean[i], r = j->crstd[i];
        int64_t c0 = (i % j->G) * cg, bi = i / j->G;
        double sdy = 0.0, sdyx = 0.0; /* sums of dy*w and dy*w*xhat over the group */
        for (int64_t c = 0; c < cg; c++) {
            double a = 0.0, bsum = 0.0;
            const float *xc = x + c * j->S, *gc = dy + c * j->S;
            float wc = j->w ? j->w[c0 + c] : 1.0f;
            if (j->silu && j->gs) { /* the gradient reaching z: dy * silu'(z), z as the forward made it */
                float sc = r * wc, sh = (j->b ? j->b[c0 + c] : 0.0f) - m * sc, *g = j->gs + (size_t)tid * (size_t)n + c * j->S;
                for (int64_t k = 0; k < j->S; k++) g[k] = ldm__silu_grad(gc[k], xc[k] * sc + sh);
                ldm__dot_sum(g, xc, m, r, j->S, &a, &bsum);
            } else if (j->silu) {
                float sc = r * wc, sh = (j->b ? j->b[c0 + c] : 0.0f) - m * sc;
                for (int64_t k = 0; k < j->S; k++) {
                    float xh = (xc[k] - m) * r, g = ldm__silu_grad(gc[k], xc[k] * sc + sh);
                    a += (double)g * xh;
                    bsum += g;
                }
            } else {
                ldm__dot_sum(gc, xc, m, r, j->S, &a, &bsum);
            }
            if (j->dwp) j->dwp[bi * j->C + c0 + c] = a;
            if (j->dbp) j->dbp[bi * j->C + c0 + c] = bsum;
            sdy += wc * bsum;
            sdyx += wc * a;
        }
        if (!j->dinp) continue;
        float mdy = (float)(sdy / (double)n), mdyx = (float)(sdyx / (double)n);
        float *dx = j->dinp + i * n;
        for (int64_t c = 0; c < cg; c++) {
            float wc = j->w ? j->w[c0 + c] : 1.0f;
            const float *xc = x + c * j->S, *gc = j->gs ? j->gs + (size_t)tid * (size_t)n + c * j->S : dy + c * j->S;
            float *dc = dx + c * j->S;
            if (j->silu && !j->gs) {
                float sc = r * wc, sh = (j->b ? j->b[c0 + c] : 0.0f) - m * sc;
                for (int64_t k = 0; k < j->S; k++) {
                    float xh = (xc[k] - m) * r, g = ldm__silu_grad(gc[k], xc[k] * sc + sh);
                    dc[k] += r * (g * wc - mdy - xh * mdyx);
                }
                continue;
            }
            for (int64_t k = 0; k < j->S; k++) {
                float xh = (xc[k] - m) * r;
                dc[k] += r * (gc[k] * wc - mdy - xh * mdyx);
            }
        }
    }
}
static void ldm__cpu_groupnorm_backward(ldm_ctx *ctx, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                                        const float *w, const float *b, const float *mean, const float *rstd, int64_t B, int64_t C,
                                        int64_t S, int G, int silu) {
    ldm__gn_job j;
    memset(&j, 0, sizeof j);
    size_t used0 = ctx->arena[LDM_CPU].used;
    j.dinp = dinp; j.dout = dout; j.inp = inp; j.w = w; j.b = b; j.cmean = mean; j.crstd = rstd; j.B = B; j.C = C; j.S = S; j.G = G;
    j.silu = silu;
    if (dw && !(j.dwp = (double *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(double) * (size_t)(B * C)))) return;
    if (db && !(j.dbp = (double *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(double) * (size_t)(B * C)))) return;
    /* with silu, dy * silu'(z) is kept per thread between the sums and dx: one expf per element */
    int nested = 0;
#ifndef LDM_NO_THREADS
    nested = ctx->pool.busy;
#endif
    if (silu && !nested && !(j.gs = (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * (size_t)(C / G * S) * (size_t)ctx->threads)))
        return;
    ldm_parallel_for(ctx, B * G, 1, ldm__gn_bwd_task, &j);
    for (int64_t c = 0; c < C; c++) {
        double a = 0.0, bb = 0.0;
        for (int64_t b = 0; b < B; b++) { if (dw) a += j.dwp[b * C + c]; if (db) bb += j.dbp[b * C + c]; }
        if (dw) dw[c] += (float)a;
        if (db) db[c] += (float)bb;
    }
    ctx->arena[LDM_CPU].used = used0;
}
LDM_API void ldm_groupnorm_forward(ldm_ctx *ctx, float *out, float *mean, float *rstd, const float *inp, const float *weight,
                                   const float *bias, int64_t B, int64_t C, int64_t S, int G, float eps) {
    ldm__cpu_groupnorm_forward(ctx, out, mean, rstd, inp, weight, bias, B, C, S, G, eps, 0);
}
LDM_API void ldm_groupnorm_backward(ldm_ctx *ctx, float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                                    const float *weight, const float *mean, const float *rstd, int64_t B, int64_t C, int64_t S, int G) {
    ldm__cpu_groupnorm_backward(ctx, dinp, dweight, dbias, dout, inp, weight, NULL, mean, rstd, B, C, S, G, 0);
}

/* ---- batch norm: per-channel work items ---- */
typedef struct {
    float *out, *mean, *var, *dinp, *dw, *db;
    const float *x, *cmean, *crstd, *w, *b, *dout;
    int64_t B, C, S;
    int training;
} ldm__bn_job;
static void ldm__bn_stats_task(void *arg, int64_t c0, int64_t c1, int tid) {
    ldm__bn_job *j = (ldm__bn_job *)arg;
    (void)tid;
    for (int64_t c = c0; c < c1; c++) {
        double s = 0.0, ss = 0.0, n = (double)(j->B * j->S);
        for (int64_t b = 0; b < j->B; b++) {
            const float *p = j->x + (b * j->C + c) * j->S;
            for (int64_t k = 0; k < j->S; k++) { s += p[k]; ss += (double)p[k] * p[k]; }
        }
        double m = s / n, v = ss / n - m * m;
        j->mean[c] = (float)m;
        j->var[c] = (float)(v < 0.0 ? 0.0 : v);
    }
}
static void ldm__cpu_channel_stats(ldm_ctx *ctx, float *mean, float *var, const float *x, int64_t B, int64_t C, int64_t S) {
    ldm__bn_job j;
    memset(&j, 0, sizeof j);
    j.mean = mean; j.var = var; j.x = x; j.B = B; j.C = C; j.S = S;
    ldm_parallel_for(ctx, C, 1, ldm__bn_stats_task, &j);
}
static void ldm__bn_affine_task(void *arg, int64_t r0, int64_t r1, int tid) {
    ldm__bn_job *j = (ldm__bn_job *)arg;
    (void)tid;
    for (int64_t r = r0; r < r1; r++) {
        int64_t c = r % j->C;
        float sc = j->crstd[c] * (j->w ? j->w[c] : 1.0f), sh = (j->b ? j->b[c] : 0.0f) - j->cmean[c] * sc;
        const float *p = j->x + r * j->S;
        float *o = j->out + r * j->S;
        for (int64_t k = 0; k < j->S; k++) o[k] = p[k] * sc + sh;
    }
}
static void ldm__cpu_channel_affine(ldm_ctx *ctx, float *out, const float *x, const float *mean, const float *rstd, const float *w,
                                    const float *b, int64_t B, int64_t C, int64_t S) {
    ldm__bn_job j;
    memset(&j, 0, sizeof j);
    j.out = out; j.x = x; j.cmean = mean; j.crstd = rstd; j.w = w; j.b = b; j.B = B; j.C = C; j.S = S;
    ldm_parallel_for(ctx, B * C, LDM__MAX(1, LDM__GRAIN / LDM__MAX(1, S)), ldm__bn_affine_task, &j);
}
static void ldm__bn_bwd_task(void *arg, int64_t c0, int64_t c1, int tid) {
    ldm__bn_job *j = (ldm__bn_job *)arg;
    (void)tid;
    for (int64_t c = c0; c < c1; c++) {
        float m = j->cmean[c], r = j->crstd[c], wc = j->w ? j->w[c] : 1.0f;
        double sdy = 0.0, sdyx = 0.0, n = (double)(j->B * j->S);
        for (int64_t b = 0; b < j->B; b++) {
            const float *x = j->x + (b * j->C + c) * j->S, *g = j->dout + (b * j->C + c) * j->S;
            for (int64_t k = 0; k < j->S; k++) { sdy += g[k]; sdyx += (double)g[k] * ((x[k] - m) * r); }
        }
        if (j->dw) j->dw[c] += (float)sdyx;
        if (j->db) j->db[c] += (float)sdy;
        if (!j->dinp) continue;
        float mdy = j->training ? (float)(sdy / n) : 0.0f, mdyx = j->training ? (float)(sdyx / n) : 0.0f;
        for (int64_t b = 0; b < j->B; b++) {
            const float *x = j->x + (b * j->C + c) * j->S, *g = j->dout + (b * j->C + c) * j->S;
            float *dx = j->dinp + (b * j->C + c) * j->S;
            for (int64_t k = 0; k < j->S; k++) dx[k] += wc * r * (g[k] - mdy - (x[k] - m) * r * mdyx);
        }
    }
}
static void ldm__cpu_batchnorm_backward(ldm_ctx *ctx, float *dinp, float *dw, float *db, const float *dout, const float *x,
                                        const float *w, const float *mean, const float *rstd, int64_t B, int64_t C, int64_t S, int training) {
    ldm__bn_job j;
    memset(&j, 0, sizeof j);
    j.dinp = dinp; j.dw = dw; j.db = db; j.dout = dout; j.x = x; j.w = w; j.cmean = mean; j.crstd = rstd;
    j.B = B; j.C = C; j.S = S; j.training = training;
    ldm_parallel_for(ctx, C, 1, ldm__bn_bwd_task, &j);
}

/* ---- layer norm: rows ---- */
typedef struct { float *y, *mean, *rstd, *dx; double *dwp, *dbp; const float *x, *w, *b, *dy, *cm, *cr; int64_t R, N; float eps; } ldm__ln_job;
static void ldm__ln_fwd_task(void *arg, int64_t r0, int64_t r1, int tid) {
    ldm__ln_job *j = (ldm__ln_job *)arg;
    (void)tid;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = j->x + r * j->N;
        double s = 0.0, ss = 0.0;
        for (int64_t k = 0; k < j->N; k++) { s += x[k]; ss += (double)x[k] * x[k]; }
        double m = s / (double)j->N, v = ss / (double)j->N - m * m;
        float mf = (float)m, rs = (float)(1.0 / sqrt((v < 0.0 ? 0.0 : v) + (double)j->eps));
        j->mean[r] = mf;
        j->rstd[r] = rs;
        float *y = j->y + r * j->N;
        for (int64_t k = 0; k < j->N; k++) y[k] = (x[k] - mf) * rs * (j->w ? j->w[k] : 1.0f) + (j->b ? j->b[k] : 0.0f);
    }
}
static void ldm__cpu_layernorm_forward(ldm_ctx *ctx, float *out, float *mean, float *rstd, const float *x, const float *w,
                                       const float *b, int64_t R, int64_t N, float eps) {
    ldm__ln_job j;
    memset(&j, 0, sizeof j);
    j.y = out; j.mean = mean; j.rstd = rstd; j.x = x; j.w = w; j.b = b; j.R = R; j.N = N; j.eps = eps;
    ldm_parallel_for(ctx, R, LDM__MAX(1, LDM__GRAIN / LDM__MAX(1, N)), ldm__ln_fwd_task, &j);
}
static void ldm__ln_bwd_task(void *arg, int64_t r0, int64_t r1, int tid) {
    ldm__ln_job *j = (ldm__ln_job *)arg;
    (void)tid;
    for (int64_t r = r0; r < r1; r++) {
        const float *x = j->x + r * j->N, *dy = j->dy + r * j->N;
        float m = j->cm[r], rs = j->cr[r];
        double sg = 0.0, sgx = 0.0;
        for (int64_t k = 0; k < j->N; k++) {
            float g = dy[k] * (j->w ? j->w[k] : 1.0f), xh = (x[k] - m) * rs;
            sg += g;
            sgx += (double)g * xh;
        }
        float mg = (float)(sg / (double)j->N), mgx = (float)(sgx / (double)j->N);
        if (j->dx) {
            float *dx = j->dx + r * j->N;
            for (int64_t k = 0; k < j->N; k++) {
                float g = dy[k] * (j->w ? j->w[k] : 1.0f), xh = (x[k] - m) * rs;
                dx[k] += rs * (g - mg - xh * mgx);
            }
        }
    }
}
static void ldm__cpu_layernorm_backward(ldm_ctx *ctx, float *dx, float *dw, float *db, const float *dy, const float *x,
                                        const float *w, const float *mean, const float *rstd, int64_t R, int64_t N) {
    ldm__ln_job j;
    memset(&j, 0, sizeof j);
    j.dx = dx; j.dy = dy; j.x = x; j.w = w; j.cm = mean; j.cr = rstd; j.R = R; j.N = N;
    if (dx) ldm_parallel_for(ctx, R, LDM__MAX(1, LDM__GRAIN / LDM__MAX(1, N)), ldm__ln_bwd_task, &j);
    if (dw || db) { /* column sums over rows, in row order, in double like the other norms */
        size_t used0 = ctx->arena[LDM_CPU].used;
        double *acc = (double *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(double) * (size_t)(2 * N));
        if (!acc) return;
        memset(acc, 0, sizeof(double) * (size_t)(2 * N));
        for (int64_t r = 0; r < R; r++) {
            const float *xr = x + r * N, *g = dy + r * N;
            for (int64_t k = 0; k < N; k++) {
                acc[k] += (double)g[k] * ((xr[k] - mean[r]) * rstd[r]);
                acc[N + k] += g[k];
            }
        }
        for (int64_t k = 0; k < N; k++) {
            if (dw) dw[k] += (float)acc[k];
            if (db) db[k] += (float)acc[N + k];
        }
        ctx->arena[LDM_CPU].used = used0;
    }
}

/* ---- softmax ---- */
typedef struct { float *y, *dx; const float *x, *dy; int64_t D, inner; } ldm__sm_job;
static void ldm__sm_fwd_task(void *arg, int64_t o0, int64_t o1, int tid) {
    ldm__sm_job *j = (ldm__sm_job *)arg;
    int64_t D = j->D, in = j->inner;
    (void)tid;
    for (int64_t o = o0; o < o1; o++)
        for (int64_t i = 0; i < in; i++) {
            const float *x = j->x + o * D * in + i;
            float *y = j->y + o * D * in + i, mx = -INFINITY;
            for (int64_t d = 0; d < D; d++) mx = x[d * in] > mx ? x[d * in] : mx;
            double s = 0.0;
            for (int64_t d = 0; d < D; d++) { float e = expf(x[d * in] - mx); y[d * in] = e; s += e; }
            float inv = (float)(1.0 / s);
            for (int64_t d = 0; d < D; d++) y[d * in] *= inv;
        }
}
static void ldm__sm_bwd_task(void *arg, int64_t o0, int64_t o1, int tid) {
    ldm__sm_job *j = (ldm__sm_job *)arg;
    int64_t D = j->D, in = j->inner;
    (void)tid;
    for (int64_t o = o0; o < o1; o++)
        for (int64_t i = 0; i < in; i++) {
            const float *y = j->y + o * D * in + i, *dy = j->dy + o * D * in + i;
            float *dx = j->dx + o * D * in + i;
            double s = 0.0;
            for (int64_t d = 0; d < D; d++) s += (double)dy[d * in] * y[d * in];
            float sf = (float)s;
            for (int64_t d = 0; d < D; d++) dx[d * in] += y[d * in] * (dy[d * in] - sf);
        }
}
static void ldm__cpu_softmax_forward(ldm_ctx *ctx, float *y, const float *x, int64_t outer, int64_t D, int64_t inner) {
    ldm__sm_job j;
    memset(&j, 0, sizeof j);
    j.y = y; j.x = x; j.D = D; j.inner = inner;
    ldm_parallel_for(ctx, outer, LDM__MAX(1, LDM__GRAIN / LDM__MAX(1, D * inner)), ldm__sm_fwd_task, &j);
}
static void ldm__cpu_softmax_backward(ldm_ctx *ctx, float *dx, const float *dy, const float *y, int64_t outer, int64_t D, int64_t inner) {
    ldm__sm_job j;
    memset(&j, 0, sizeof j);
    j.dx = dx; j.dy = dy; j.y = (float *)y; j.D = D; j.inner = inner;
    ldm_parallel_for(ctx, outer, LDM__MAX(1, LDM__GRAIN / LDM__MAX(1, D * inner)), ldm__sm_bwd_task, &j);
}

/* ---- pooling and upsampling on planes ---- */
typedef struct { float *out, *dx; int32_t *arg; const float *x, *dy; const int64_t *in3, *out3; const int *k3, *s3, *p3, *f3; int is_max; } ldm__plane_job;
static void ldm__pool_fwd_task(void *arg, int64_t p0, int64_t p1, int tid) {
    ldm__plane_job *j = (ldm__plane_job *)arg;
    const int64_t *I = j->in3, *O = j->out3;
    int64_t isz = I[0] * I[1] * I[2], osz = O[0] * O[1] * O[2];
    float inv = 1.0f / (float)(j->k3[0] * j->k3[1] * j->k3[2]);
    (void)tid;
    for (int64_t p = p0; p < p1; p++) {
        const float *x = j->x + p * isz;
        for (int64_t o = 0; o < osz; o++) {
            int64_t ot = o / (O[1] * O[2]), oy = (o / O[2]) % O[1], ox = o % O[2];
            float best = -INFINITY;
            int32_t bi = -1;
            double s = 0.0;
            for (int a = 0; a < j->k3[0]; a++) {
                int64_t t = ot * j->s3[0] - j->p3[0] + a;
                if (t < 0 || t >= I[0]) continue;
                for (int b = 0; b < j->k3[1]; b++) {
                    int64_t y = oy * j->s3[1] - j->p3[1] + b;
                    if (y < 0 || y >= I[1]) continue;
                    for (int c = 0; c < j->k3[2]; c++) {
                        int64_t xx = ox * j->s3[2] - j->p3[2] + c;
                        if (xx < 0 || xx >= I[2]) continue;
                        int64_t idx = (t * I[1] + y) * I[2] + xx;
                        float v = x[idx];
                        s += v;
                        if (v > best || bi < 0 || v != v) { best = v; bi = (int32_t)idx; }
                    }
                }
            }
            j->out[p * osz + o] = j->is_max ? best : (float)s * inv;
            if (j->is_max) j->arg[p * osz + o] = bi;
        }
    }
}
static void ldm__pool_bwd_task(void *arg, int64_t p0, int64_t p1, int tid) {
    ldm__plane_job *j = (ldm__plane_job *)arg;
    const int64_t *I = j->in3, *O = j->out3;
    int64_t isz = I[0] * I[1] * I[2], osz = O[0] * O[1] * O[2];
    float inv = 1.0f / (float)(j->k3[0] * j->k3[1] * j->k3[2]);
    (void)tid;
    for (int64_t p = p0; p < p1; p++) {
        float *dx = j->dx + p * isz;
        const float *dy = j->dy + p * osz;
        for (int64_t o = 0; o < osz; o++) {
            if (j->is_max) { int32_t bi = j->arg[p * osz + o]; if (bi >= 0) dx[bi] += dy[o]; continue; }
            int64_t ot = o / (O[1] * O[2]), oy = (o / O[2]) % O[1], ox = o % O[2];
            float g = dy[o] * inv;
            for (int a = 0; a < j->k3[0]; a++) {
                int64_t t = ot * j->s3[0] - j->p3[0] + a;
                if (t < 0 || t >= I[0]) continue;
                for (int b = 0; b < j->k3[1]; b++) {
                    int64_t y = oy * j->s3[1] - j->p3[1] + b;
                    if (y < 0 || y >= I[1]) continue;
                    for (int c = 0; c < j->k3[2]; c++) {
                        int64_t xx = ox * j->s3[2] - j->p3[2] + c;
                        if (xx >= 0 && xx < I[2]) dx[(t * I[1] + y) * I[2] + xx] += g;
                    }
                }
            }
        }
    }
}
static void ldm__cpu_pool_forward(ldm_ctx *ctx, float *out, float *arg, const float *x, int64_t P, const int64_t *in3,
                                  const int64_t *out3, const int *k3, const int *s3, const int *p3, int is_max) {
    ldm__plane_job j;
    memset(&j, 0, sizeof j);
    j.out = out; j.arg = (int32_t *)(void *)arg; j.x = x; j.in3 = in3; j.out3 = out3; j.k3 = k3; j.s3 = s3; j.p3 = p3; j.is_max = is_max;
    ldm_parallel_for(ctx, P, 1, ldm__pool_fwd_task, &j);
}
static void ldm__cpu_pool_backward(ldm_ctx *ctx, float *dx, const float *dy, const float *arg, int64_t P, const int64_t *in3,
                                   const int64_t *out3, const int *k3, const int *s3, const int *p3, int is_max) {
    ldm__plane_job j;
    memset(&j, 0, sizeof j);
    j.dx = dx; j.dy = dy; j.arg = (int32_t *)(void *)arg; j.in3 = in3; j.out3 = out3; j.k3 = k3; j.s3 = s3; j.p3 = p3; j.is_max = is_max;
    ldm_parallel_for(ctx, P, 1, ldm__pool_bwd_task, &j);
}
static void ldm__up_fwd_task(void *arg, int64_t r0, int64_t r1, int tid) {
    ldm__plane_job *j = (ldm__plane_job *)arg; /* items: input rows (p, t, y) */
    const int64_t *I = j->in3;
    const int *f = j->f3;
    int64_t OW = I[2] * f[2], OH = I[1] * f[1], OT = I[0] * f[0];
    (void)tid;
    for (int64_t r = r0; r < r1; r++) {
        int64_t y = r % I[1], t = (r / I[1]) % I[0], p = r / (I[1] * I[0]);
        const float *x = j->x + r * I[2];
        float *row = j->out + ((p * OT + t * f[0]) * OH + y * f[1]) * OW;
        for (int64_t xx = 0; xx < I[2]; xx++) for (int c = 0; c < f[2]; c++) row[xx * f[2] + c] = x[xx];
        for (int a = 0; a < f[0]; a++)
            for (int b = 0; b < f[1]; b++)
                if (a || b) memcpy(row + ((int64_t)a * OH + b) * OW, row, sizeof(float) * (size_t)OW);
    }
}
static void ldm__up_bwd_task(void *arg, int64_t r0, int64_t r1, int tid) {
    ldm__plane_job *j = (ldm__plane_job *)arg;
    const int64_t *I = j->in3;
    const int *f = j->f3;
    int64_t OW = I[2] * f[2], OH = I[1] * f[1], OT = I[0] * f[0];
    (void)tid;
    for (int64_t r = r0; r < r1; r++) {
        int64_t y = r % I[1], t = (r / I[1]) % I[0], p = r / (I[1] * I[0]);
        float *dx = j->dx + r * I[2];
        const float *base = j->dy + ((p * OT + t * f[0]) * OH + y * f[1]) * OW;
        for (int64_t xx = 0; xx < I[2]; xx++) {
            float s = 0.0f;
            for (int a = 0; a < f[0]; a++)
                for (int b = 0; b < f[1]; b++) {
                    const float *row = base + ((int64_t)a * OH + b) * OW + xx * f[2];
                    for (int c = 0; c < f[2]; c++) s += row[c];
                }
            dx[xx] += s;
        }
    }
}
static void ldm__cpu_upsample_forward(ldm_ctx *ctx, float *out, const float *x, int64_t P, const int64_t *in3, const int *f3) {
    ldm__plane_job j;
    memset(&j, 0, sizeof j);
    j.out = out; j.x = x; j.in3 = in3; j.f3 = f3;
    ldm_parallel_for(ctx, P * in3[0] * in3[1], LDM__MAX(1, LDM__GRAIN / LDM__MAX(1, in3[2] * f3[0] * f3[1] * f3[2])), ldm__up_fwd_task, &j);
}
static void ldm__cpu_upsample_backward(ldm_ctx *ctx, float *dx, const float *dy, int64_t P, const int64_t *in3, const int *f3) {
    ldm__plane_job j;
    memset(&j, 0, sizeof j);
    j.dx = dx; j.dy = dy; j.in3 = in3; j.f3 = f3;
    ldm_parallel_for(ctx, P * in3[0] * in3[1], LDM__MAX(1, LDM__GRAIN / LDM__MAX(1, in3[2] * f3[0] * f3[1] * f3[2])), ldm__up_bwd_task, &j);
}

/* ---- embedding ---- */
static void ldm__cpu_embedding_forward(ldm_ctx *ctx, float *out, const float *w, const int64_t *idx, int64_t n, int64_t dim) {
    (void)ctx;
    for (int64_t i = 0; i < n; i++) memcpy(out + i * dim, w + idx[i] * dim, sizeof(float) * (size_t)dim);
}
static void ldm__cpu_embedding_backward(ldm_ctx *ctx, float *dw, const float *dout, const int64_t *idx, int64_t n, int64_t dim) {
    (void)ctx;
    for (int64_t i = 0; i < n; i++) {
        float *d = dw + idx[i] * dim;
        const float *g = dout + i * dim;
        for (int64_t k = 0; k < dim; k++) d[k] += g[k];
    }
}

/* ---- argmin over rows: NaN first (torch's min propagates NaN), then the smallest value, ties
   to the lower index ---- */
typedef struct { int64_t *idx; const float *x; int64_t K; } ldm__argmin_job;
static void ldm__argmin_task(void *arg, int64_t b, int64_t e, int tid) {
    const ldm__argmin_job *j = (const ldm__argmin_job *)arg;
    (void)tid;
    for (int64_t r = b; r < e; r++) {
        const float *x = j->x + r * j->K;
        int64_t best = 0;
        float bv = x[0];
        for (int64_t k = 1; k < j->K && bv == bv; k++)
            if (x[k] < bv || x[k] != x[k]) { bv = x[k]; best = k; }
        j->idx[r] = best;
    }
}
static void ldm__cpu_argmin_rows(ldm_ctx *ctx, int64_t *idx, const float *x, int64_t rows, int64_t K) {
    ldm__argmin_job j;
    j.idx = idx; j.x = x; j.K = K;
    ldm_parallel_for(ctx, rows, LDM__MAX(1, LDM__GRAIN / LDM__MAX(1, K)), ldm__argmin_task, &j);
}

/* ---- optimizer update (ldm_optim_args) and sum of squares, for ldm_nn.h ---- */
typedef struct { const ldm_optim_args *a; float *p; const float *g; float *m, *v; int64_t n; } ldm__optim_job;
/* Adam runs on blocks of 8 elements (the parallel split is in blocks, so whether an element
   takes the vector or the scalar path depends only on its index, never on the thread count);
   both paths do the same correctly rounded float operations in the same order. */
static void ldm__adam_scalar(const ldm__optim_job *j, int64_t b, int64_t e) {
    const ldm_optim_args *a = j->a;
    for (int64_t i = b; i < e; i++) {
        float p = j->p[i], g = j->g[i];
        if (a->adamw) p = p * a->decay;                       /* param.mul_(1 - lr*wd) */
        else if (a->l2) g = g + a->wd * p;                    /* grad.add(param, alpha=wd) */
        float m = j->m[i] * a->b1 + a->one_b1 * g;            /* exp_avg.mul_(b1).add_(g, alpha=1-b1) */
        float v = j->v[i] * a->b2 + a->one_b2 * g * g;        /* exp_avg_sq.mul_(b2).addcmul_(g, g, value=1-b2) */
        float denom = sqrtf(v) / a->bc2s + a->eps;            /* (exp_avg_sq.sqrt() / bc2_sqrt).add_(eps) */
        j->m[i] = m;
        j->v[i] = v;
        j->p[i] = p + a->neg_step * m / denom;                /* param.addcdiv_(exp_avg, denom, value=-step_size) */
    }
}
static LDM__VEC void ldm__adam_task(void *arg, int64_t b, int64_t e, int tid) {
    const ldm__optim_job *j = (const ldm__optim_job *)arg;
    (void)tid;
    int64_t i = b * 8, end = LDM__MIN(e * 8, j->n);
#if defined(__AVX2__)
    const ldm_optim_args *a = j->a;
    const __m256 decay = _mm256_set1_ps(a->decay), wd = _mm256_set1_ps(a->wd), b1 = _mm256_set1_ps(a->b1),
                 ob1 = _mm256_set1_ps(a->one_b1), b2 = _mm256_set1_ps(a->b2), ob2 = _mm256_set1_ps(a->one_b2),
                 bc2s = _mm256_set1_ps(a->bc2s), eps = _mm256_set1_ps(a->eps), ns = _mm256_set1_ps(a->neg_step);
    for (; i + 8 <= end; i += 8) {
        __m256 p = _mm256_loadu_ps(j->p + i), g = _mm256_loadu_ps(j->g + i);
        if (a->adamw) p = _mm256_mul_ps(p, decay);
        else if (a->l2) g = _mm256_add_ps(g, _mm256_mul_ps(wd, p));
        __m256 m = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(j->m + i), b1), _mm256_mul_ps(ob1, g));
        __m256 v = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(j->v + i), b2), _mm256_mul_ps(_mm256_mul_ps(ob2, g), g));
        __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(v), bc2s), eps);
        _mm256_storeu_ps(j->m + i, m);
        _mm256_storeu_ps(j->v + i, v);
        _mm256_storeu_ps(j->p + i, _mm256_add_ps(p, _mm256_div_ps(_mm256_mul_ps(ns, m), denom)));
    }
#endif
    ldm__adam_scalar(j, i, end);
}
static void ldm__sgd_task(void *arg, int64_t b, int64_t e, int tid) {
    const ldm__optim_job *j = (const ldm__optim_job *)arg;
    const ldm_optim_args *a = j->a;
    (void)tid;
    for (int64_t i = b; i < e; i++) {
        float p = j->p[i], d = j->g[i];
        if (a->l2) d = d + a->wd * p;                         /* d_p = d_p.add(param, alpha=wd) */
        if (j->m) {
            float buf = a->first ? d : j->m[i] * a->mom + a->one_damp * d; /* buf.mul_(momentum).add_(d_p, alpha=1-dampening) */
            j->m[i] = buf;
            d = a->nesterov ? d + a->mom * buf : buf;
        }
        j->p[i] = p + a->neg_lr * d;                          /* param.add_(d_p, alpha=-lr) */
    }
}
static void ldm__cpu_optim_step(ldm_ctx *ctx, const ldm_optim_args *a, float *p, const float *g, float *m, float *v, int64_t n) {
    ldm__optim_job j;
    j.a = a; j.p = p; j.g = g; j.m = m; j.v = v; j.n = n;
    if (a->sgd) ldm_parallel_for(ctx, n, 16384, ldm__sgd_task, &j);
    else ldm_parallel_for(ctx, (n + 7) / 8, 2048, ldm__adam_task, &j);
}
#define LDM__SUMSQ_PIECE 65536
typedef struct { const float *x; int64_t n; double *part; } ldm__sumsq_job;
static void ldm__sumsq_task(void *arg, int64_t b, int64_t e, int tid) {
    ldm__sumsq_job *j = (ldm__sumsq_job *)arg;
    (void)tid;
    for (int64_t q = b; q < e; q++) {
        int64_t s = q * LDM__SUMSQ_PIECE, end = LDM__MIN(j->n, s + LDM__SUMSQ_PIECE);
        double acc = 0.0;
        for (int64_t i = s; i < end; i++) acc += (double)j->x[i] * j->x[i];
        j->part[q] = acc;
    }
}
/* Pieces of fixed size summed in order: the result does not depend on the thread count. */
static double ldm__cpu_sum_squares(ldm_ctx *ctx, const float *x, int64_t n) {
    int64_t pieces = (n + LDM__SUMSQ_PIECE - 1) / LDM__SUMSQ_PIECE;
    double local[64], *part = pieces <= 64 ? local : (double *)LDM_MALLOC(sizeof(double) * (size_t)pieces), s = 0.0;
    if (!part) { ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "sum of squares: out of memory"); return 0.0; }
    ldm__sumsq_job j;
    j.x = x; j.n = n; j.part = part;
    ldm_parallel_for(ctx, pieces, 1, ldm__sumsq_task, &j);
    for (int64_t q = 0; q < pieces; q++) s += part[q];
    if (part != local) LDM_FREE(part);
    return s;
}

/* ---- attention (flash-style): q, k, v token-major [B, S, H*D], head h at channels h*D.. ----
   Queries go in blocks of BQ rows and keys in blocks of BK: a block of scores lives in a
   BQ x BK tile, never the S x S matrix. The forward keeps a running max and sum per row
   (online softmax) and saves the log-sum-exp per row; the backward recomputes each block's
   probabilities from it. The block products run on the SGEMM micro-kernel with the operands
   packed straight from their strided rows (no per-head copies). Every output element is
   computed by one task in a fixed order: results do not depend on the thread count. */
#if defined(__GNUC__) && !defined(__CUDACC__)
#define LDM__ATTN_VEC 1
typedef float ldm__f8 __attribute__((vector_size(32)));
typedef int32_t ldm__i8 __attribute__((vector_size(32)));
/* C has no ?: on vectors: select by the comparison's lane mask */
#define LDM__VSEL(mask, a, b) ((ldm__f8)(((ldm__i8)(a) & (mask)) | ((ldm__i8)(b) & ~(mask))))
#endif
/* exp, clamped to [-87, 88], to about 1 ulp: Cephes' polynomial on x - n ln2, times 2^n built
   from the exponent bits (n rounded to nearest by the 1.5 * 2^23 trick). The vector loop in
   ldm__exp_sub_sum does the same operations 8 lanes at a time. */
static float ldm__exp1(float x) {
    x = x < -87.0f ? -87.0f : x > 88.0f ? 88.0f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &e, 4);
    return p * s;
}
/* x[i] = exp(x[i] - sub); returns the sum (in a fixed order). */
static float ldm__exp_sub_sum(float *x, int64_t n, float sub) {
    int64_t i = 0;
    float sum = 0.0f;
#ifdef LDM__ATTN_VEC
    const ldm__f8 lo = {-87.0f, -87.0f, -87.0f, -87.0f, -87.0f, -87.0f, -87.0f, -87.0f}, hi = lo + 175.0f;
    ldm__f8 acc = lo - lo;
    for (; i + 8 <= n; i += 8) {
        ldm__f8 v, nn, r, p;
        memcpy(&v, x + i, 32);
        v = v - sub;
        v = LDM__VSEL(v < lo, lo, v);
        v = LDM__VSEL(v > hi, hi, v);
        nn = (v * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
        r = v - nn * 0.693359375f;
        r = r - nn * -2.12194440e-4f;
        p = r * 1.9875691500e-4f + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * r * r + r + 1.0f;
        ldm__i8 e = (__builtin_convertvector(nn, ldm__i8) + 127) << 23;
        p = p * (ldm__f8)e;
        memcpy(x + i, &p, 32);
        acc += p;
    }
    for (int k = 0; k < 8; k++) sum += acc[k];
#endif
    for (; i < n; i++) { x[i] = ldm__exp1(x[i] - sub); sum += x[i]; }
    return sum;
}
static float ldm__row_max(const float *x, int64_t n, float m) {
    int64_t i = 0;
#ifdef LDM__ATTN_VEC
    if (n >= 8) {
        ldm__f8 mv;
        memcpy(&mv, x, 32);
        for (i = 8; i + 8 <= n; i += 8) {
            ldm__f8 v;
            memcpy(&v, x + i, 32);
            mv = LDM__VSEL(v > mv, v, mv);
        }
        for (int k = 0; k < 8; k++) m = mv[k] > m ? mv[k] : m;
    }
#endif
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* C[M x N] = alpha * op(A) op(B) + beta * C for one block, on this thread, with the context's
   SGEMM micro-kernel uk. A is packed into pa unless apack says it already is (then A is
   ignored), likewise B into pb. */
static void ldm__blk_gemm(const struct ldm__gemm_kernel *uk, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                          int64_t lda, int ta, float *pa, int apack, const float *B, int64_t ldb, int tb, float *pb, int bpack,
                          float beta, float *C, int64_t ldc) {
#ifdef LDM_BLAS
    (void)uk; (void)pa; (void)pb; (void)apack; (void)bpack;
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K,
                alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
#else
    const int MR = uk->mr, NR = uk->nr;
    if (!apack) ldm__pack_a(uk, pa, A, lda, ta, 0, M, 0, K);
    if (!bpack) ldm__pack_b(uk, pb, B, ldb, tb, 0, N, 0, K);
    for (int64_t ir = 0; ir < M; ir += MR)
        for (int64_t jr = 0; jr < N; jr += NR)
            uk->run(K, pa + ir * K, pb + jr * K, C + ir * ldc + jr, ldc, (int)LDM__MIN(MR, M - ir), (int)LDM__MIN(NR, N - jr),
                    alpha, beta);
#endif
}

/* Host scratch for one kernel call: from the CPU arena when it has room (its pages are
   already touched, so big buffers cost no page faults), else the heap. Released in reverse
   order; nothing else allocates from the arena in between. */
typedef struct { size_t used; int heap; } ldm__scratch_mark;
static void *ldm__scratch_get(ldm_ctx *ctx, size_t bytes, ldm__scratch_mark *m) {
    ldm__arena *a = &ctx->arena[LDM_CPU];
    m->used = a->used;
    m->heap = !a->base || LDM__ALIGN_UP(bytes) > a->limit - a->used;
    return m->heap ? LDM_MALLOC(bytes) : ldm_arena_alloc(ctx, LDM_CPU, bytes);
}
static void ldm__scratch_put(ldm_ctx *ctx, void *p, const ldm__scratch_mark *m) {
    if (m->heap) LDM_FREE(p);
    else if (p) ctx->arena[LDM_CPU].used = m->used;
}

typedef struct {
    float *out, *lse, *dq, *dk, *dv, *di;
    const float *q, *k, *v, *dout, *o;
    const struct ldm__gemm_kernel *uk; /* the context's SGEMM micro-kernel (unused under LDM_BLAS) */
    int64_t B, H, Sq, Sk, D, bq, bk, nq, nk;
    float scale;
    int64_t groups;               /* backward: key-block groups per (b, h) */
    float *work, *dqp;            /* dqp: dQ^T partials [B*H, groups, nq, D, bq] */
    ldm__scratch_mark work_mark;
    size_t work_floats, pack_floats, tile_floats, acc_floats;
} ldm__attn_job;
/* Blocks of 96 rows fill the micro-tiles of every ISA (8/6 x 48/16/8) without padding. */
static void ldm__attn_setup(ldm_ctx *ctx, ldm__attn_job *j) {
    j->bq = j->D > 128 ? 192 : 96; /* a long D: longer K for the products over query rows */
    j->bk = 96;
    j->nq = (j->Sq + j->bq - 1) / j->bq;
    j->nk = (j->Sk + j->bk - 1) / j->bk;
    /* backward: key blocks of one (b, h) go in G groups, each a task with its own dQ partial.
       G depends on the shape only (never on the thread count), so results stay bitwise the
       same for any thread count; about 8 tasks at least. */
    j->groups = j->B * j->H >= 8 ? 1 : LDM__MIN(j->nk, (8 + j->B * j->H - 1) / (j->B * j->H));
#ifdef LDM_BLAS
    const int64_t MR = 1, NR = 1;
    j->uk = NULL;
#else
    j->uk = ctx->gemm_kernel;
    const int64_t MR = j->uk->mr, NR = j->uk->nr;
#endif
    int64_t r = LDM__MAX(LDM__MAX(j->bq, j->bk), j->D);
    int64_t rp = (r + MR + NR) / MR * MR + NR; /* rows padded to either tile */
    j->pack_floats = LDM__ALIGN_UP(sizeof(float) * (size_t)(rp * r)) / sizeof(float);
    j->tile_floats = LDM__ALIGN_UP(sizeof(float) * (size_t)(j->bq * j->bk)) / sizeof(float);
    j->acc_floats = LDM__ALIGN_UP(sizeof(float) * (size_t)(j->D * LDM__MAX(j->bq, j->bk))) / sizeof(float);
    size_t rows = LDM__ALIGN_UP(sizeof(float) * (size_t)(4 * j->bq)) / sizeof(float);
    /* 4 packing buffers, 2 score tiles, 2 accumulators, row statistics */
    j->work_floats = 4 * j->pack_floats + 2 * j->tile_floats + 2 * j->acc_floats + rows;
    j->work = (float *)ldm__scratch_get(ctx, sizeof(float) * j->work_floats * (size_t)ctx->threads + LDM__ALIGN, &j->work_mark);
}
static float *ldm__attn_buf(const ldm__attn_job *j, int tid) {
    uintptr_t p = ((uintptr_t)j->work + (LDM__ALIGN - 1)) & ~(uintptr_t)(LDM__ALIGN - 1);
    return (float *)p + (size_t)tid * j->work_floats;
}
/* g[r*ld + d] += t[d*ldt + r] for r < n, d < D: a transposed accumulator into token-major rows */
static void ldm__attn_add_t(float *g, int64_t ld, const float *t, int64_t ldt, int64_t n, int64_t D) {
    for (int64_t r = 0; r < n; r++)
        for (int64_t d = 0; d < D; d++) g[r * ld + d] += t[d * ldt + r];
}

/* Accumulators are kept transposed ([D, rows]): the block products then have D rows and 96
   columns, which fill the micro-kernel's wide tiles (D = 64 as columns would pad to 96). */
static void ldm__attn_fwd_task(void *arg, int64_t t0, int64_t t1, int tid) {
    const ldm__attn_job *j = (const ldm__attn_job *)arg;
    const int64_t D = j->D, HD = j->H * D, bq = j->bq, bk = j->bk;
    float *w = ldm__attn_buf(j, tid), *pq = w, *pa = w + 2 * j->pack_floats, *pb = w + 3 * j->pack_floats;
    float *s = w + 4 * j->pack_floats, *acc = s + 2 * j->tile_floats, *m = acc + 2 * j->acc_floats, *l = m + bq, *corr = l + bq;
    for (int64_t t = t0; t < t1; t++) {
        int64_t bh = t / j->nq, b = bh / j->H, h = bh % j->H, i0 = (t % j->nq) * bq, nr = LDM__MIN(bq, j->Sq - i0);
        const float *q = j->q + (b * j->Sq + i0) * HD + h * D;
        for (int64_t r = 0; r < nr; r++) { m[r] = -INFINITY; l[r] = 0.0f; }
        memset(acc, 0, sizeof(float) * (size_t)(D * bq));
        for (int64_t c0 = 0; c0 < j->Sk; c0 += bk) {
            int64_t nc = LDM__MIN(bk, j->Sk - c0);
            const float *k = j->k + (b * j->Sk + c0) * HD + h * D, *v = j->v + (b * j->Sk + c0) * HD + h * D;
            ldm__blk_gemm(j->uk, nr, nc, D, j->scale, q, HD, 0, pq, c0 > 0, k, HD, 1, pb, 0, 0.0f, s, nc);
            int rescale = 0;
            for (int64_t r = 0; r < nr; r++) {
                float *sr = s + r * nc, mn = ldm__row_max(sr, nc, m[r]);
                corr[r] = m[r] == -INFINITY ? 0.0f : ldm__exp1(m[r] - mn);
                rescale |= corr[r] != 1.0f;
                l[r] = l[r] * corr[r] + ldm__exp_sub_sum(sr, nc, mn);
                m[r] = mn;
            }
            if (rescale && c0 > 0)
                for (int64_t d = 0; d < D; d++)
                    for (int64_t r = 0; r < nr; r++) acc[d * bq + r] *= corr[r];
            /* acc^T += V^T P^T */
            ldm__blk_gemm(j->uk, D, nr, nc, 1.0f, v, HD, 1, pa, 0, s, nc, 1, pb, 0, 1.0f, acc, bq);
        }
        float *o = j->out + (b * j->Sq + i0) * HD + h * D;
        for (int64_t r = 0; r < nr; r++) {
            float inv = 1.0f / l[r];
            for (int64_t d = 0; d < D; d++) o[r * HD + d] = acc[d * bq + r] * inv;
            j->lse[bh * j->Sq + i0 + r] = m[r] + logf(l[r]);
        }
    }
}
static void ldm__cpu_attn_forward(ldm_ctx *ctx, float *out, float *lse, const float *q, const float *k, const float *v,
                                  int64_t B, int64_t H, int64_t Sq, int64_t Sk, int64_t D, float scale) {
    ldm__attn_job j;
    memset(&j, 0, sizeof j);
    j.out = out; j.lse = lse; j.q = q; j.k = k; j.v = v;
    j.B = B; j.H = H; j.Sq = Sq; j.Sk = Sk; j.D = D; j.scale = scale;
    ldm__attn_setup(ctx, &j);
    if (!j.work) { ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_attention: out of memory for the block scratch"); return; }
    ldm_parallel_for(ctx, B * H * j.nq, 1, ldm__attn_fwd_task, &j);
    ldm__scratch_put(ctx, j.work, &j.work_mark);
}

/* One query block against one key block (b, h given by the pointers): P = exp(scale q k^T -
   lse) in p, dS = P * (dO v^T - Di) in dp; k and v come packed (kpack/vpack) or are packed
   into pk/pv. */
static void ldm__attn_probs(const ldm__attn_job *j, float *p, float *dp, const float *q, const float *go, int64_t nr,
                            const float *k, const float *v, int64_t nc, float *pk, int kpack, float *pv, int vpack,
                            float *pa, const float *lse, const float *di) {
    const int64_t D = j->D, HD = j->H * D;
    ldm__blk_gemm(j->uk, nr, nc, D, j->scale, q, HD, 0, pa, 0, k, HD, 1, pk, kpack, 0.0f, p, nc);
    ldm__blk_gemm(j->uk, nr, nc, D, 1.0f, go, HD, 0, pa, 0, v, HD, 1, pv, vpack, 0.0f, dp, nc);
    for (int64_t r = 0; r < nr; r++) {
        float *pr = p + r * nc, *dr = dp + r * nc, d0 = di[r];
        ldm__exp_sub_sum(pr, nc, lse[r]);
        for (int64_t c = 0; c < nc; c++) dr[c] = pr[c] * (dr[c] - d0);
    }
}
/* dK and dV (transposed, [D, bk]) of one key block over the query blocks; with dqt, also
   adds to dQ^T of every query block (block-major: [nq][D][bq], so no row is a power-of-two
   stride apart from the next). */
static void ldm__attn_kv_block(const ldm__attn_job *j, float *w, int64_t b, int64_t h, int64_t c0, float *dqt, int dq_first) {
    const int64_t D = j->D, HD = j->H * D, bq = j->bq, bk = j->bk, bh = b * j->H + h, nc = LDM__MIN(bk, j->Sk - c0);
    float *pk = w, *pv = w + j->pack_floats, *pa = w + 2 * j->pack_floats, *pb = w + 3 * j->pack_floats;
    float *p = w + 4 * j->pack_floats, *dp = p + j->tile_floats, *dkt = dp + j->tile_floats, *dvt = dkt + j->acc_floats;
    const float *k = j->k + (b * j->Sk + c0) * HD + h * D, *v = j->v + (b * j->Sk + c0) * HD + h * D;
    memset(dkt, 0, sizeof(float) * (size_t)(D * bk));
    memset(dvt, 0, sizeof(float) * (size_t)(D * bk));
    for (int64_t i0 = 0; i0 < j->Sq; i0 += bq) {
        int64_t nr = LDM__MIN(bq, j->Sq - i0);
        const float *q = j->q + (b * j->Sq + i0) * HD + h * D, *go = j->dout + (b * j->Sq + i0) * HD + h * D;
        ldm__attn_probs(j, p, dp, q, go, nr, k, v, nc, pk, i0 > 0, pv, i0 > 0, pa, j->lse + bh * j->Sq + i0, j->di + bh * j->Sq + i0);
        ldm__blk_gemm(j->uk, D, nc, nr, 1.0f, go, HD, 1, pa, 0, p, nc, 0, pb, 0, 1.0f, dvt, bk);           /* dV^T += dO^T P */
        ldm__blk_gemm(j->uk, D, nc, nr, j->scale, q, HD, 1, pa, 0, dp, nc, 0, pb, 0, 1.0f, dkt, bk);       /* dK^T += s Q^T dS */
        if (dqt) /* dQ^T (+)= s K^T dS^T; the group's first key block writes it */
            ldm__blk_gemm(j->uk, D, nr, nc, j->scale, k, HD, 1, pa, 0, dp, nc, 1, pb, 0, dq_first ? 0.0f : 1.0f, dqt + i0 * D, bq);
    }
    /* dk and dv may be one buffer (k and v the same tensor): add one after the other */
    if (j->dk) ldm__attn_add_t(j->dk + (b * j->Sk + c0) * HD + h * D, HD, dkt, bk, nc, D);
    if (j->dv) ldm__attn_add_t(j->dv + (b * j->Sk + c0) * HD + h * D, HD, dvt, bk, nc, D);
}
/* One group of key blocks of one (b, h): dK and dV of its blocks, and its dQ^T partial. */
static void ldm__attn_bwd_task(void *arg, int64_t t0, int64_t t1, int tid) {
    const ldm__attn_job *j = (const ldm__attn_job *)arg;
    for (int64_t t = t0; t < t1; t++) {
        int64_t bh = t / j->groups, g = t % j->groups;
        float *dqt = j->dqp ? j->dqp + (size_t)t * (size_t)(j->nq * j->D * j->bq) : NULL;
        int64_t k0 = g * j->nk / j->groups, k1 = (g + 1) * j->nk / j->groups;
        for (int64_t kb = k0; kb < k1; kb++) ldm__attn_kv_block(j, ldm__attn_buf(j, tid), bh / j->H, bh % j->H, kb * j->bk, dqt, kb == k0);
    }
}
/* dq += the sum of the groups' dQ^T partials (in group order), per (b, h, query) row */
static void ldm__attn_dq_task(void *arg, int64_t r0, int64_t r1, int tid) {
    const ldm__attn_job *j = (const ldm__attn_job *)arg;
    const int64_t D = j->D, HD = j->H * D, Sq = j->Sq, G = j->groups, bq = j->bq, part = j->nq * D * bq;
    (void)tid;
    for (int64_t r = r0; r < r1; r++) {
        int64_t bh = r / Sq, i = r % Sq;
        float *g = j->dq + ((bh / j->H) * Sq + i) * HD + (bh % j->H) * D;
        const float *p = j->dqp + (size_t)(bh * G) * (size_t)part + (i / bq) * D * bq + i % bq;
        for (int64_t d = 0; d < D; d++) {
            float s = p[d * bq];
            for (int64_t k = 1; k < G; k++) s += p[(size_t)k * (size_t)part + d * bq];
            g[d] += s;
        }
    }
}
/* Di = rowsum(dO * O) per (b, h, query) */
static void ldm__attn_di_task(void *arg, int64_t r0, int64_t r1, int tid) {
    const ldm__attn_job *j = (const ldm__attn_job *)arg;
    const int64_t D = j->D, HD = j->H * D;
    (void)tid;
    for (int64_t r = r0; r < r1; r++) {
        int64_t bh = r / j->Sq, i = r % j->Sq, b = bh / j->H, h = bh % j->H;
        const float *o = j->o + (b * j->Sq + i) * HD + h * D, *g = j->dout + (b * j->Sq + i) * HD + h * D;
        double s = 0.0;
        for (int64_t d = 0; d < D; d++) s += (double)o[d] * g[d];
        j->di[r] = (float)s;
    }
}
static void ldm__cpu_attn_backward(ldm_ctx *ctx, float *dq, float *dk, float *dv, const float *dout, const float *out,
                                   const float *lse, const float *q, const float *k, const float *v, int64_t B, int64_t H,
                                   int64_t Sq, int64_t Sk, int64_t D, float scale) {
    ldm__attn_job j;
    memset(&j, 0, sizeof j);
    j.dq = dq; j.dk = dk; j.dv = dv; j.dout = dout; j.o = out; j.lse = (float *)lse; j.q = q; j.k = k; j.v = v;
    j.B = B; j.H = H; j.Sq = Sq; j.Sk = Sk; j.D = D; j.scale = scale;
    ldm__scratch_mark dm, pm;
    ldm__attn_setup(ctx, &j);
    j.di = (float *)ldm__scratch_get(ctx, sizeof(float) * (size_t)LDM__MAX(1, B * H * Sq), &dm);
    if (dq) j.dqp = (float *)ldm__scratch_get(ctx, sizeof(float) * (size_t)(B * H * j.groups) * (size_t)(j.nq * D * j.bq), &pm);
    if (!j.work || !j.di || (dq && !j.dqp)) {
        ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_attention backward: out of memory for the block scratch");
    } else {
        ldm_parallel_for(ctx, B * H * Sq, LDM__MAX(1, LDM__GRAIN / LDM__MAX(1, D)), ldm__attn_di_task, &j);
        /* each task writes the dK and dV rows of its own key blocks and its own dQ partial, so
           q, k and v may share a gradient buffer */
        ldm_parallel_for(ctx, B * H * j.groups, 1, ldm__attn_bwd_task, &j);
        if (dq) ldm_parallel_for(ctx, B * H * Sq, LDM__MAX(1, LDM__GRAIN / LDM__MAX(1, D * j.groups)), ldm__attn_dq_task, &j);
    }
    if (dq) ldm__scratch_put(ctx, j.dqp, &pm);
    ldm__scratch_put(ctx, j.di, &dm);
    ldm__scratch_put(ctx, j.work, &j.work_mark);
}

static const ldm_backend ldm__cpu_backend = {
    "cpu",
    ldm__cpu_alloc, ldm__cpu_free, ldm__cpu_copy, ldm__cpu_fill, ldm__cpu_rng,
    ldm__cpu_unary, ldm__cpu_unary_backward, ldm__cpu_binary, ldm__cpu_binary_backward,
    ldm__cpu_reduce_sum, ldm__cpu_strided_copy, ldm__cpu_axpby, ldm__cpu_sgemm,
    ldm__cpu_conv_forward, ldm__cpu_conv_backward,
    ldm__cpu_groupnorm_forward, ldm__cpu_groupnorm_backward,
    ldm__cpu_channel_stats, ldm__cpu_channel_affine, ldm__cpu_batchnorm_backward,
    ldm__cpu_layernorm_forward, ldm__cpu_layernorm_backward,
    ldm__cpu_softmax_forward, ldm__cpu_softmax_backward,
    ldm__cpu_pool_forward, ldm__cpu_pool_backward,
    ldm__cpu_upsample_forward, ldm__cpu_upsample_backward,
    ldm__cpu_embedding_forward, ldm__cpu_embedding_backward,
    ldm__cpu_attn_forward, ldm__cpu_attn_backward,
    ldm__cpu_argmin_rows,
    ldm__cpu_optim_step, ldm__cpu_sum_squares, NULL,
};
static const ldm_backend *ldm__cpu_backend_get(void) { return &ldm__cpu_backend; }

/* ---- weight files: safetensors, PyTorch zip and legacy checkpoints ---------------------- */
/* Every format becomes one index: per tensor its element type in the file, where element 0 of
   its storage lies, and a strided view (offset, shape, strides in elements) into that storage.
   ldm_weights_read seeks and reads just the bytes of one view, so a multi-GB checkpoint costs
   only its index in memory. Nothing from a file is ever executed: pickles run on a tiny
   interpreter that knows a whitelist of classes and builds inert values. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <unistd.h>

/* element types a file may store; all are converted to float32 on read */
enum { LDM__WT_F32, LDM__WT_F16, LDM__WT_BF16, LDM__WT_F64, LDM__WT_I64, LDM__WT_I32,
       LDM__WT_I16, LDM__WT_I8, LDM__WT_U8, LDM__WT_BOOL, LDM__WT_N };
static const struct { const char *st, *torch; int size; } ldm__wt[LDM__WT_N] = {
    {"F32", "FloatStorage", 4}, {"F16", "HalfStorage", 2}, {"BF16", "BFloat16Storage", 2},
    {"F64", "DoubleStorage", 8}, {"I64", "LongStorage", 8}, {"I32", "IntStorage", 4},
    {"I16", "ShortStorage", 2}, {"I8", "CharStorage", 1}, {"U8", "ByteStorage", 1},
    {"BOOL", "BoolStorage", 1}};

typedef struct ldm__wentry {
    ldm_weight_info info;         /* info.name is owned */
    int code;                     /* LDM__WT_* */
    int storage;                  /* torch: index of its storage while the file is indexed */
    uint64_t base;                /* file offset of element 0 of the storage */
    int64_t offset;               /* first element of the view */
    int64_t stride[LDM_MAX_DIMS]; /* in elements */
} ldm__wentry;

struct ldm_weights {
    char *path;
    const char *format;
    FILE *f;
    uint64_t size;                /* file size in bytes */
    ldm__wentry *e;
    int n, cap;
    int *hash, hcap;              /* open addressing over names: entry index + 1, 0 = empty */
    char **meta;                  /* n_meta key, value pairs */
    int n_meta;
};

/* Sets "<path>: <message>" as the context error and returns code. */
static ldm_result ldm__werr(ldm_ctx *ctx, ldm_result code, const char *path, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
static ldm_result ldm__werr(ldm_ctx *ctx, ldm_result code, const char *path, const char *fmt, ...) {
    char msg[1536];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ldm_ctx_seterr(ctx, code, "%s: %s", path, msg);
}

static char *ldm__strndup(const char *s, size_t n) {
    char *p = (char *)LDM_MALLOC(n + 1);
    if (p) { memcpy(p, s, n); p[n] = 0; }
    return p;
}
static uint64_t ldm__rd_le(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static void ldm__wr_le(unsigned char *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) { p[i] = (unsigned char)v; v >>= 8; }
}

/* 64-bit seek that also works where long is 32 bits (steps of LONG_MAX from the start) */
static int ldm__fseek(FILE *f, uint64_t off) {
    if (off <= (uint64_t)LONG_MAX) return fseek(f, (long)off, SEEK_SET);
    if (fseek(f, LONG_MAX, SEEK_SET)) return -1;
    for (off -= (uint64_t)LONG_MAX; off; ) {
        long step = off > (uint64_t)LONG_MAX ? LONG_MAX : (long)off;
        if (fseek(f, step, SEEK_CUR)) return -1;
        off -= (uint64_t)step;
    }
    return 0;
}
/* Reads n bytes at off; a short read is a truncated file (LDM_ERR_FORMAT). */
static ldm_result ldm__wread_at(ldm_ctx *ctx, ldm_weights *w, uint64_t off, void *dst, size_t n, const char *what) {
    if (off > w->size || n > w->size - off)
        return ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "%s (bytes %llu..%llu) runs past the end of the file (%llu bytes; truncated download?)",
                         what, (unsigned long long)off, (unsigned long long)(off + n), (unsigned long long)w->size);
    clearerr(w->f);
    if (ldm__fseek(w->f, off) || fread(dst, 1, n, w->f) != n)
        return ldm__werr(ctx, LDM_ERR_IO, w->path, "cannot read %s at byte %llu: %s", what, (unsigned long long)off,
                         ferror(w->f) ? strerror(errno) : "unexpected end of file");
    return LDM_OK;
}

static float ldm__wload(const unsigned char *p, int code) {
    uint64_t u;
    float f;
    double d;
    switch (code) {
    case LDM__WT_F32: u = ldm__rd_le(p, 4); { uint32_t b = (uint32_t)u; memcpy(&f, &b, 4); } return f;
    case LDM__WT_F16: return ldm_f16_to_f32((uint16_t)ldm__rd_le(p, 2));
    case LDM__WT_BF16: return ldm_bf16_to_f32((uint16_t)ldm__rd_le(p, 2));
    case LDM__WT_F64: u = ldm__rd_le(p, 8); memcpy(&d, &u, 8); return (float)d;
    case LDM__WT_I64: return (float)(int64_t)ldm__rd_le(p, 8);
    case LDM__WT_I32: return (float)(int32_t)(uint32_t)ldm__rd_le(p, 4);
    case LDM__WT_I16: return (float)(int16_t)(uint16_t)ldm__rd_le(p, 2);
    case LDM__WT_I8: return (float)(signed char)p[0];
    case LDM__WT_U8: return (float)p[0];
    default: return p[0] ? 1.0f : 0.0f; /* BOOL */
    }
}

/* a*b into *out, 0 on overflow (all operands non-negative) */
static int ldm__mul_ok(int64_t a, int64_t b, int64_t *out) {
    if (a < 0 || b < 0 || (b && a > INT64_MAX / b)) return 0;
    *out = a * b;
    return 1;
}

static uint32_t ldm__hash_str(const char *s) {
    uint32_t h = 2166136261u;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}
/* Builds the name index; a name that appears twice is a malformed file. */
static ldm_result ldm__wbuild_hash(ldm_ctx *ctx, ldm_weights *w) {
    int cap = 16;
    while (cap < 2 * w->n + 2) cap *= 2;
    w->hash = (int *)LDM_MALLOC(sizeof(int) * (size_t)cap);
    if (!w->hash) return ldm__werr(ctx, LDM_ERR_NOMEM, w->path, "out of memory for the name index");
    memset(w->hash, 0, sizeof(int) * (size_t)cap);
    w->hcap = cap;
    for (int i = 0; i < w->n; i++) {
        uint32_t h = ldm__hash_str(w->e[i].info.name) & (uint32_t)(cap - 1);
        while (w->hash[h]) {
            if (!strcmp(w->e[w->hash[h] - 1].info.name, w->e[i].info.name))
                return ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "tensor name '%s' appears twice", w->e[i].info.name);
            h = (h + 1) & (uint32_t)(cap - 1);
        }
        w->hash[h] = i + 1;
    }
    return LDM_OK;
}

/* Appends an entry (name copied); shape checked for rank, negative dims and overflow. */
static ldm_result ldm__wadd(ldm_ctx *ctx, ldm_weights *w, const char *name, size_t name_len, int code,
                            int ndim, const int64_t *shape, ldm__wentry **out) {
    char nm[96];
    snprintf(nm, sizeof nm, "%.*s", (int)LDM__MIN(name_len, (size_t)80), name);
    if (ndim > LDM_MAX_DIMS)
        return ldm__werr(ctx, LDM_ERR_UNSUPPORTED, w->path, "tensor '%s' has %d dims; ldm.h supports at most %d", nm, ndim, LDM_MAX_DIMS);
    int64_t numel = 1;
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 0 || !ldm__mul_ok(numel, shape[d], &numel) || numel > (INT64_MAX >> 4))
            return ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "tensor '%s' has an invalid shape (dim %d is %lld)", nm, d, (long long)shape[d]);
    if (w->n == w->cap) {
        int cap = w->cap ? 2 * w->cap : 64;
        ldm__wentry *e = (ldm__wentry *)LDM_REALLOC(w->e, sizeof *e * (size_t)cap);
        if (!e) return ldm__werr(ctx, LDM_ERR_NOMEM, w->path, "out of memory for %d tensor entries", cap);
        w->e = e;
        w->cap = cap;
    }
    ldm__wentry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    if (!(e->info.name = ldm__strndup(name, name_len))) return ldm__werr(ctx, LDM_ERR_NOMEM, w->path, "out of memory");
    w->n++;
    e->code = code;
    e->info.dtype = code == LDM__WT_F16 ? LDM_F16 : code == LDM__WT_BF16 ? LDM_BF16 : LDM_F32;
    e->info.file_dtype = ldm__wt[code].st;
    e->info.ndim = ndim;
    e->info.numel = numel;
    uint64_t s = 1; /* contiguous strides unless the caller sets others; unsigned: wraps only when numel is 0 */
    for (int d = ndim - 1; d >= 0; d--) {
        e->info.shape[d] = shape[d];
        e->stride[d] = (int64_t)(s & (uint64_t)INT64_MAX);
        s *= (uint64_t)LDM__MAX(shape[d], 1);
    }
    *out = e;
    return LDM_OK;
}

/* A strict JSON parser for safetensors headers: a DOM of nodes in one array, strings decoded
   in place (an escape is never shorter than its UTF-8), integers kept exact. */
enum { LDM__J_NULL, LDM__J_BOOL, LDM__J_NUM, LDM__J_STR, LDM__J_ARR, LDM__J_OBJ };
typedef struct ldm__jnode {
    int type, next, first, count; /* siblings linked by next (-1 ends); containers: first child */
    const char *key, *str;        /* object members: key; strings: value */
    int64_t ival;                 /* numbers: the value when is_int */
    int is_int;
} ldm__jnode;
typedef struct ldm__json {
    char *start, *p, *end;        /* *end is a NUL sentinel */
    ldm__jnode *n;
    int count, cap;
    const char *err;
    size_t err_at;
} ldm__json;

static int ldm__jfail(ldm__json *j, const char *at, const char *msg) {
    if (!j->err) { j->err = msg; j->err_at = (size_t)(at - j->start); }
    return -1;
}
static void ldm__jws(ldm__json *j) {
    while (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r') j->p++;
}
static int ldm__jnew(ldm__json *j, int type) {
    if (j->count == j->cap) {
        int cap = j->cap ? 2 * j->cap : 256;
        ldm__jnode *n = (ldm__jnode *)LDM_REALLOC(j->n, sizeof *n * (size_t)cap);
        if (!n) return ldm__jfail(j, j->p, "out of memory");
        j->n = n;
        j->cap = cap;
    }
    ldm__jnode *n = &j->n[j->count];
    memset(n, 0, sizeof *n);
    n->type = type;
    n->next = n->first = -1;
    return j->count++;
}
static int ldm__jhex4(const char *p, unsigned *out) {
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}
/* j->p is at the opening quote; returns the decoded, NUL-terminated string */
static char *ldm__jstr(ldm__json *j) {
    char *s = ++j->p, *o = s;
    for (;;) {
        if (j->p >= j->end) { ldm__jfail(j, j->p, "unterminated string"); return NULL; }
        char c = *j->p;
        if (c == '"') { j->p++; *o = 0; return s; }
        if ((unsigned char)c < 0x20) { ldm__jfail(j, j->p, "control character in a string (must be escaped)"); return NULL; }
        if (c != '\\') { *o++ = *j->p++; continue; }
        const char *e = j->p;
        unsigned cp;
        switch (e[1]) {
        case '"': case '\\': case '/': *o++ = e[1]; j->p += 2; continue;
        case 'b': *o++ = '\b'; j->p += 2; continue;
        case 'f': *o++ = '\f'; j->p += 2; continue;
        case 'n': *o++ = '\n'; j->p += 2; continue;
        case 'r': *o++ = '\r'; j->p += 2; continue;
        case 't': *o++ = '\t'; j->p += 2; continue;
        case 'u': break;
        default: ldm__jfail(j, e, "invalid escape in a string"); return NULL;
        }
        if (j->end - e < 6 || !ldm__jhex4(e + 2, &cp)) { ldm__jfail(j, e, "invalid \\u escape"); return NULL; }
        j->p += 6;
        if (cp >= 0xdc00 && cp <= 0xdfff) { ldm__jfail(j, e, "unpaired UTF-16 surrogate in \\u escape"); return NULL; }
        if (cp >= 0xd800 && cp <= 0xdbff) {
            unsigned lo;
            if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u' || !ldm__jhex4(j->p + 2, &lo) || lo < 0xdc00 || lo > 0xdfff) {
                ldm__jfail(j, e, "unpaired UTF-16 surrogate in \\u escape");
                return NULL;
            }
            j->p += 6;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        }
        if (cp == 0) { ldm__jfail(j, e, "\\u0000 in a string"); return NULL; }
        if (cp < 0x80) *o++ = (char)cp;
        else if (cp < 0x800) { *o++ = (char)(0xc0 | (cp >> 6)); *o++ = (char)(0x80 | (cp & 0x3f)); }
        else if (cp < 0x10000) { *o++ = (char)(0xe0 | (cp >> 12)); *o++ = (char)(0x80 | ((cp >> 6) & 0x3f)); *o++ = (char)(0x80 | (cp & 0x3f)); }
        else {
            *o++ = (char)(0xf0 | (cp >> 18)); *o++ = (char)(0x80 | ((cp >> 12) & 0x3f));
            *o++ = (char)(0x80 | ((cp >> 6) & 0x3f)); *o++ = (char)(0x80 | (cp & 0x3f));
        }
    }
}
static int ldm__jvalue(ldm__json *j, int depth) {
    ldm__jws(j);
    if (depth > 32) return ldm__jfail(j, j->p, "nested deeper than 32 levels");
    char c = *j->p;
    if (j->p >= j->end) return ldm__jfail(j, j->p, "unexpected end of the header");
    if (c == '{' || c == '[') {
        int obj = c == '{', node = ldm__jnew(j, obj ? LDM__J_OBJ : LDM__J_ARR), prev = -1;
        if (node < 0) return -1;
        j->p++;
        ldm__jws(j);
        if (*j->p == (obj ? '}' : ']')) { j->p++; return node; }
        for (;;) {
            const char *key = NULL;
            if (obj) {
                ldm__jws(j);
                if (*j->p != '"') return ldm__jfail(j, j->p, "expected a string key");
                if (!(key = ldm__jstr(j))) return -1;
                ldm__jws(j);
                if (*j->p != ':') return ldm__jfail(j, j->p, "expected ':' after a key");
                j->p++;
            }
            int child = ldm__jvalue(j, depth + 1);
            if (child < 0) return -1;
            j->n[child].key = key;
            if (prev < 0) j->n[node].first = child;
            else j->n[prev].next = child;
            prev = child;
            j->n[node].count++;
            ldm__jws(j);
            if (*j->p == ',') { j->p++; continue; }
            if (*j->p == (obj ? '}' : ']')) { j->p++; return node; }
            return ldm__jfail(j, j->p, obj ? "expected ',' or '}'" : "expected ',' or ']'");
        }
    }
    if (c == '"') {
        int node = ldm__jnew(j, LDM__J_STR);
        if (node < 0) return -1;
        const char *s = ldm__jstr(j);
        if (!s) return -1;
        j->n[node].str = s;
        return node;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        const char *s = j->p;
        int neg = c == '-', is_int = 1;
        uint64_t v = 0;
        if (neg) j->p++;
        if (*j->p == '0') j->p++;
        else if (*j->p >= '1' && *j->p <= '9')
            for (; *j->p >= '0' && *j->p <= '9'; j->p++) {
                if (v > (uint64_t)INT64_MAX / 10) is_int = 0;
                v = v * 10 + (uint64_t)(*j->p - '0');
                if (v > (uint64_t)INT64_MAX) is_int = 0;
            }
        else return ldm__jfail(j, s, "invalid number");
        if (*j->p == '.') {
            is_int = 0;
            if (*++j->p < '0' || *j->p > '9') return ldm__jfail(j, s, "invalid number");
            while (*j->p >= '0' && *j->p <= '9') j->p++;
        }
        if (*j->p == 'e' || *j->p == 'E') {
            is_int = 0;
            j->p++;
            if (*j->p == '+' || *j->p == '-') j->p++;
            if (*j->p < '0' || *j->p > '9') return ldm__jfail(j, s, "invalid number");
            while (*j->p >= '0' && *j->p <= '9') j->p++;
        }
        int node = ldm__jnew(j, LDM__J_NUM);
        if (node < 0) return -1;
        j->n[node].is_int = is_int;
        j->n[node].ival = is_int ? (neg ? -(int64_t)v : (int64_t)v) : 0;
        return node;
    }
    static const char *lit[3] = {"true", "false", "null"};
    for (int k = 0; k < 3; k++)
        if (!strncmp(j->p, lit[k], strlen(lit[k]))) {
            int node = ldm__jnew(j, k < 2 ? LDM__J_BOOL : LDM__J_NULL);
            j->p += strlen(lit[k]);
            return node;
        }
    return ldm__jfail(j, j->p, "unexpected character");
}
static int ldm__jget(const ldm__json *j, int obj, const char *key) {
    for (int c = j->n[obj].first; c >= 0; c = j->n[c].next)
        if (!strcmp(j->n[c].key, key)) return c;
    return -1;
}
/* Reads an array of non-negative integers (at most max) into out; returns the count or -1. */
static int ldm__jints(const ldm__json *j, int node, int64_t *out, int max) {
    if (node < 0 || j->n[node].type != LDM__J_ARR || j->n[node].count > max) return -1;
    int k = 0;
    for (int c = j->n[node].first; c >= 0; c = j->n[c].next) {
        if (j->n[c].type != LDM__J_NUM || !j->n[c].is_int || j->n[c].ival < 0) return -1;
        out[k++] = j->n[c].ival;
    }
    return k;
}

typedef struct { uint64_t b, e; int i; } ldm__span;
static int ldm__span_cmp(const void *a, const void *b) {
    const ldm__span *x = (const ldm__span *)a, *y = (const ldm__span *)b;
    return x->b < y->b ? -1 : x->b > y->b ? 1 : x->i - y->i;
}

static ldm_result ldm__st_index(ldm_ctx *ctx, ldm_weights *w, ldm__json *j, uint64_t data0) {
    static const char *unsupported[] = {"F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "U16", "U32", "U64", "C64"};
    const char *path = w->path;
    uint64_t dsize = w->size - data0;
    int top = 0, seen_meta = 0;
    if (j->n[top].type != LDM__J_OBJ) return ldm__werr(ctx, LDM_ERR_FORMAT, path, "safetensors header is not a JSON object");
    for (int m = j->n[top].first; m >= 0; m = j->n[m].next) {
        const char *name = j->n[m].key;
        if (!strcmp(name, "__metadata__")) {
            if (seen_meta++) return ldm__werr(ctx, LDM_ERR_FORMAT, path, "\"__metadata__\" appears twice in the header");
            if (j->n[m].type != LDM__J_OBJ) return ldm__werr(ctx, LDM_ERR_FORMAT, path, "\"__metadata__\" is not a JSON object");
            w->meta = (char **)LDM_MALLOC(sizeof(char *) * (size_t)(2 * j->n[m].count + 1));
            if (!w->meta) return ldm__werr(ctx, LDM_ERR_NOMEM, path, "out of memory for metadata");
            for (int c = j->n[m].first; c >= 0; c = j->n[c].next) {
                if (j->n[c].type != LDM__J_STR)
                    return ldm__werr(ctx, LDM_ERR_FORMAT, path, "\"__metadata__\" value of '%.200s' is not a string", j->n[c].key);
                char *k = ldm__strndup(j->n[c].key, strlen(j->n[c].key)), *v = ldm__strndup(j->n[c].str, strlen(j->n[c].str));
                if (k) w->meta[2 * w->n_meta] = k;
                if (v) w->meta[2 * w->n_meta + 1] = v;
                if (k && v) w->n_meta++;
                else { LDM_FREE(k); LDM_FREE(v); return ldm__werr(ctx, LDM_ERR_NOMEM, path, "out of memory for metadata"); }
            }
            continue;
        }
        if (j->n[m].type != LDM__J_OBJ) return ldm__werr(ctx, LDM_ERR_FORMAT, path, "tensor '%.200s': header entry is not a JSON object", name);
        int dt = ldm__jget(j, m, "dtype"), sh = ldm__jget(j, m, "shape"), of = ldm__jget(j, m, "data_offsets"), code = -1;
        const char *missing = dt < 0 ? "dtype" : sh < 0 ? "shape" : of < 0 ? "data_offsets" : NULL;
        if (missing) return ldm__werr(ctx, LDM_ERR_FORMAT, path, "tensor '%.200s' has no \"%s\" in the header", name, missing);
        if (j->n[dt].type != LDM__J_STR) return ldm__werr(ctx, LDM_ERR_FORMAT, path, "tensor '%.200s': dtype is not a string", name);
        for (int k = 0; k < LDM__WT_N; k++)
            if (!strcmp(j->n[dt].str, ldm__wt[k].st)) code = k;
        if (code < 0) {
            for (size_t k = 0; k < sizeof unsupported / sizeof *unsupported; k++)
                if (!strcmp(j->n[dt].str, unsupported[k]))
                    return ldm__werr(ctx, LDM_ERR_UNSUPPORTED, path, "tensor '%.200s' has dtype %s, which ldm.h does not read (it reads F32 F16 BF16 F64 I64 I32 I16 I8 U8 BOOL)", name, j->n[dt].str);
            return ldm__werr(ctx, LDM_ERR_FORMAT, path, "tensor '%.200s' has unknown dtype \"%.40s\"", name, j->n[dt].str);
        }
        int64_t shape[LDM_MAX_DIMS], off[2];
        if (j->n[sh].type == LDM__J_ARR && j->n[sh].count > LDM_MAX_DIMS)
            return ldm__werr(ctx, LDM_ERR_UNSUPPORTED, path, "tensor '%.200s' has %d dims; ldm.h supports at most %d", name, j->n[sh].count, LDM_MAX_DIMS);
        int ndim = ldm__jints(j, sh, shape, LDM_MAX_DIMS);
        if (ndim < 0) return ldm__werr(ctx, LDM_ERR_FORMAT, path, "tensor '%.200s': shape must be an array of non-negative integers", name);
        if (ldm__jints(j, of, off, 2) != 2 || off[0] > off[1])
            return ldm__werr(ctx, LDM_ERR_FORMAT, path, "tensor '%.200s': data_offsets must be [begin, end] with 0 <= begin <= end", name);
        if ((uint64_t)off[1] > dsize)
            return ldm__werr(ctx, LDM_ERR_FORMAT, path, "tensor '%.200s': data_offsets [%lld, %lld] run past the end of the data (%llu bytes; truncated file?)",
                             name, (long long)off[0], (long long)off[1], (unsigned long long)dsize);
        ldm__wentry *e;
        ldm_result r = ldm__wadd(ctx, w, name, strlen(name), code, ndim, shape, &e);
        if (r) return r;
        if ((uint64_t)e->info.numel * (uint64_t)ldm__wt[code].size != (uint64_t)(off[1] - off[0]))
            return ldm__werr(ctx, LDM_ERR_FORMAT, path, "tensor '%.200s': %lld elements of %s need %llu bytes but data_offsets span %lld",
                             name, (long long)e->info.numel, ldm__wt[code].st,
                             (unsigned long long)e->info.numel * (unsigned long long)ldm__wt[code].size, (long long)(off[1] - off[0]));
        e->base = data0 + (uint64_t)off[0];
    }
    /* spans must not overlap (empty tensors may sit anywhere) */
    ldm__span *s = (ldm__span *)LDM_MALLOC(sizeof *s * (size_t)(w->n + 1));
    if (!s) return ldm__werr(ctx, LDM_ERR_NOMEM, path, "out of memory");
    for (int i = 0; i < w->n; i++) {
        s[i].b = w->e[i].base;
        s[i].e = s[i].b + (uint64_t)w->e[i].info.numel * (uint64_t)ldm__wt[w->e[i].code].size;
        s[i].i = i;
    }
    qsort(s, (size_t)w->n, sizeof *s, ldm__span_cmp);
    ldm_result r = LDM_OK;
    for (int i = 0, last = -1; i < w->n && !r; i++) {
        if (s[i].b == s[i].e) continue;
        if (last >= 0 && s[i].b < s[last].e)
            r = ldm__werr(ctx, LDM_ERR_FORMAT, path, "tensors '%.200s' and '%.200s' overlap in the data section",
                          w->e[s[last].i].info.name, w->e[s[i].i].info.name);
        if (last < 0 || s[i].e > s[last].e) last = i;
    }
    LDM_FREE(s);
    return r;
}

static ldm_result ldm__st_open(ldm_ctx *ctx, ldm_weights *w) {
    unsigned char b8[8];
    ldm_result r = ldm__wread_at(ctx, w, 0, b8, 8, "the safetensors header length");
    if (r) return r;
    uint64_t hlen = ldm__rd_le(b8, 8);
    if (hlen > ((uint64_t)100 << 20))
        return ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "safetensors header length %llu is larger than 100 MB (corrupt file, or not safetensors)", (unsigned long long)hlen);
    if (hlen > w->size - 8)
        return ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "safetensors header length %llu runs past the end of the file (%llu bytes; truncated download?)",
                         (unsigned long long)hlen, (unsigned long long)w->size);
    ldm__json j;
    memset(&j, 0, sizeof j);
    if (!(j.start = (char *)LDM_MALLOC((size_t)hlen + 1))) return ldm__werr(ctx, LDM_ERR_NOMEM, w->path, "out of memory for a %llu-byte header", (unsigned long long)hlen);
    if (!(r = ldm__wread_at(ctx, w, 8, j.start, (size_t)hlen, "the safetensors header"))) {
        j.start[hlen] = 0;
        j.p = j.start;
        j.end = j.start + hlen;
        ldm__jvalue(&j, 0);
        if (!j.err) {
            ldm__jws(&j);
            if (j.p != j.end) ldm__jfail(&j, j.p, "trailing characters after the header object");
        }
        if (j.err) r = ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "safetensors header is not valid JSON: %s at byte %zu of the header", j.err, j.err_at);
        else r = ldm__st_index(ctx, w, &j, 8 + hlen);
    }
    LDM_FREE(j.n);
    LDM_FREE(j.start);
    return r;
}

/* ---- PyTorch checkpoints: a restricted unpickler ------------------------------------------
   torch.save pickles the object with tensors as _rebuild_tensor_v2(storage, offset, size,
   stride, ...) and storages as persistent ids ('storage', torch.FloatStorage, key, location,
   numel[, view]). This interpreter knows the opcodes torch emits (protocols 2-5) and a
   whitelist of classes; it builds plain values and never calls anything. A few data-only
   classes found in training checkpoints (numpy scalars, Lightning's ModelCheckpoint, torch
   dtypes) become opaque values; any other class is an error naming it. */
enum { LDM__P_NONE, LDM__P_BOOL, LDM__P_INT, LDM__P_FLOAT, LDM__P_STR, LDM__P_BYTES, LDM__P_BIGINT,
       LDM__P_TUPLE, LDM__P_LIST, LDM__P_DICT, LDM__P_GLOBAL, LDM__P_STORAGE, LDM__P_TENSOR, LDM__P_OPAQUE };
enum { LDM__PG_DICT, LDM__PG_TENSOR, LDM__PG_PARAM, LDM__PG_INERT, LDM__PG_STORAGE /* + LDM__WT_* */ };
static const struct { const char *mod, *name; int id; } ldm__pglobals[] = {
    {"collections", "OrderedDict", LDM__PG_DICT},
    {"torch._utils", "_rebuild_tensor_v2", LDM__PG_TENSOR},
    {"torch._utils", "_rebuild_parameter", LDM__PG_PARAM},
    {"torch._utils", "_rebuild_parameter_with_state", LDM__PG_PARAM},
    {"numpy.core.multiarray", "scalar", LDM__PG_INERT}, {"numpy.core.multiarray", "_reconstruct", LDM__PG_INERT},
    {"numpy", "dtype", LDM__PG_INERT}, {"numpy", "ndarray", LDM__PG_INERT}, {"_codecs", "encode", LDM__PG_INERT},
    {"pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint", LDM__PG_INERT},
    {"__builtin__", "set", LDM__PG_INERT}, {"builtins", "set", LDM__PG_INERT},
    {"torch", "float32", LDM__PG_INERT}, {"torch", "float16", LDM__PG_INERT}, {"torch", "bfloat16", LDM__PG_INERT},
    {"torch", "float64", LDM__PG_INERT}, {"torch", "int64", LDM__PG_INERT}, {"torch", "int32", LDM__PG_INERT},
    {"torch", "uint8", LDM__PG_INERT}, {"torch", "bool", LDM__PG_INERT}};

typedef struct ldm__pv {
    int type, n, cap;
    int *items;                   /* tuple, list, dict (key, value pairs) */
    int64_t i, j, k;              /* int/bool: i; global: i = class; storage: i = index, j = offset, k = count; tensor: i */
    double f;
    const unsigned char *s;       /* str, bytes, bigint: into the pickle buffer */
    size_t len;
} ldm__pv;
typedef struct ldm__pstorage { const unsigned char *key; size_t key_len; int code; int64_t numel; uint64_t base; int located; } ldm__pstorage;
typedef struct ldm__ptensor { int storage, ndim; int64_t offset, shape[LDM_MAX_DIMS], stride[LDM_MAX_DIMS]; } ldm__ptensor;
typedef struct ldm__pk {
    const unsigned char *buf;
    size_t len, pos;
    int legacy;                   /* persistent ids carry view metadata */
    ldm__pv *v;
    int nv, capv;
    int *stack, nstack, capstack;
    int *marks, nmarks, capmarks;
    int *memo;
    size_t nmemo;
    ldm__pstorage *st;
    int nst, capst;
    ldm__ptensor *t;
    int nt, capt;
    ldm_result err;               /* first error; `short_buf`: it ran past the end of buf */
    int short_buf;
    char msg[512];
} ldm__pk;

static int ldm__pkfail(ldm__pk *p, ldm_result code, size_t at, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
static int ldm__pkfail(ldm__pk *p, ldm_result code, size_t at, const char *fmt, ...) {
    if (p->err) return -1;
    int k = snprintf(p->msg, sizeof p->msg, "pickle byte %zu: ", at);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->msg + k, sizeof p->msg - (size_t)k, fmt, ap);
    va_end(ap);
    p->err = code;
    return -1;
}
/* grows *arr (elements of size sz) to hold n + 1 */
static int ldm__grow(void **arr, int *cap, int n, size_t sz) {
    if (n < *cap) return 0;
    int c = *cap ? 2 * *cap : 64;
    void *a = LDM_REALLOC(*arr, sz * (size_t)c);
    if (!a) return -1;
    *arr = a;
    *cap = c;
    return 0;
}
static int ldm__pnew(ldm__pk *p, int type) {
    if (ldm__grow((void **)&p->v, &p->capv, p->nv, sizeof *p->v)) return ldm__pkfail(p, LDM_ERR_NOMEM, p->pos, "out of memory");
    memset(&p->v[p->nv], 0, sizeof *p->v);
    p->v[p->nv].type = type;
    return p->nv++;
}
static int ldm__padd(ldm__pk *p, int c, int item) {
    ldm__pv *v = &p->v[c];
    if (ldm__grow((void **)&v->items, &v->cap, v->n, sizeof(int))) return ldm__pkfail(p, LDM_ERR_NOMEM, p->pos, "out of memory");
    v->items[v->n++] = item;
    return 0;
}
static int ldm__ppush(ldm__pk *p, int x) {
    if (x < 0) return -1;
    if (p->nstack >= (1 << 24)) return ldm__pkfail(p, LDM_ERR_UNSUPPORTED, p->pos, "stack deeper than 2^24 entries");
    if (ldm__grow((void **)&p->stack, &p->capstack, p->nstack, sizeof(int))) return ldm__pkfail(p, LDM_ERR_NOMEM, p->pos, "out of memory");
    p->stack[p->nstack++] = x;
    return 0;
}
static int ldm__ppop(ldm__pk *p, size_t at) {
    int floor = p->nmarks ? p->marks[p->nmarks - 1] : 0;
    if (p->nstack <= floor) return ldm__pkfail(p, LDM_ERR_FORMAT, at, "stack underflow (malformed pickle)");
    return p->stack[--p->nstack];
}
/* pops everything above the topmost MARK into a new tuple/list value */
static int ldm__ppop_mark(ldm__pk *p, int type, size_t at) {
    if (!p->nmarks) return ldm__pkfail(p, LDM_ERR_FORMAT, at, "no MARK on the stack (malformed pickle)");
    int m = p->marks[--p->nmarks], c = ldm__pnew(p, type);
    for (int i = m; i < p->nstack && c >= 0; i++)
        if (ldm__padd(p, c, p->stack[i])) c = -1;
    p->nstack = m;
    return c;
}
static int ldm__pstr_is(const ldm__pk *p, int x, const char *s) {
    return x >= 0 && p->v[x].type == LDM__P_STR && p->v[x].len == strlen(s) && !memcmp(p->v[x].s, s, p->v[x].len);
}
static int ldm__pint(const ldm__pk *p, int x, int64_t *out) {
    if (x < 0 || (p->v[x].type != LDM__P_INT && p->v[x].type != LDM__P_BOOL)) return 0;
    *out = p->v[x].i;
    return 1;
}

static int ldm__pglobal(ldm__pk *p, const unsigned char *mod, size_t ml, const unsigned char *name, size_t nl, size_t at) {
    int id = -1;
    for (size_t k = 0; k < sizeof ldm__pglobals / sizeof *ldm__pglobals && id < 0; k++)
        if (strlen(ldm__pglobals[k].mod) == ml && !memcmp(ldm__pglobals[k].mod, mod, ml) &&
            strlen(ldm__pglobals[k].name) == nl && !memcmp(ldm__pglobals[k].name, name, nl))
            id = ldm__pglobals[k].id;
    for (int k = 0; k < LDM__WT_N && id < 0; k++)
        if (ml == 5 && !memcmp(mod, "torch", 5) && strlen(ldm__wt[k].torch) == nl && !memcmp(ldm__wt[k].torch, name, nl))
            id = LDM__PG_STORAGE + k;
    if (id < 0)
        return ldm__pkfail(p, LDM_ERR_UNSUPPORTED, at, "refusing to load class %.*s.%.*s (not on ldm.h's whitelist of "
                           "tensor and container classes; nothing was executed)", (int)LDM__MIN(ml, 100u), (const char *)mod,
                           (int)LDM__MIN(nl, 100u), (const char *)name);
    int x = ldm__pnew(p, LDM__P_GLOBAL);
    if (x >= 0) p->v[x].i = id;
    return x;
}

static int ldm__pstorage_ref(ldm__pk *p, int pid, size_t at) {
    const ldm__pv *t = &p->v[pid];
    int n = t->type == LDM__P_TUPLE ? t->n : 0;
    int64_t numel = 0, voff = 0, vcnt = 0;
    if (n != (p->legacy ? 6 : 5) || !ldm__pstr_is(p, t->items[0], "storage") || p->v[t->items[1]].type != LDM__P_GLOBAL ||
        p->v[t->items[1]].i < LDM__PG_STORAGE || p->v[t->items[2]].type != LDM__P_STR || !ldm__pint(p, t->items[4], &numel) || numel < 0)
        return ldm__pkfail(p, LDM_ERR_FORMAT, at, "persistent id is not ('storage', <storage class>, key, location, numel%s)",
                           p->legacy ? ", view" : "");
    int code = (int)p->v[t->items[1]].i - LDM__PG_STORAGE;
    const ldm__pv *key = &p->v[t->items[2]];
    vcnt = numel;
    if (p->legacy && p->v[t->items[5]].type != LDM__P_NONE) { /* (view_key, offset, size) into the root storage */
        const ldm__pv *vm = &p->v[t->items[5]];
        if (vm->type != LDM__P_TUPLE || vm->n != 3 || !ldm__pint(p, vm->items[1], &voff) || !ldm__pint(p, vm->items[2], &vcnt) ||
            voff < 0 || vcnt < 0 || voff > numel || vcnt > numel - voff)
            return ldm__pkfail(p, LDM_ERR_FORMAT, at, "storage view metadata is not (key, offset, size) inside its storage of %lld elements", (long long)numel);
    }
    int s = 0;
    for (; s < p->nst; s++)
        if (p->st[s].key_len == key->len && !memcmp(p->st[s].key, key->s, key->len)) break;
    if (s == p->nst) {
        if (ldm__grow((void **)&p->st, &p->capst, p->nst, sizeof *p->st)) return ldm__pkfail(p, LDM_ERR_NOMEM, at, "out of memory");
        memset(&p->st[s], 0, sizeof *p->st);
        p->st[s].key = key->s;
        p->st[s].key_len = key->len;
        p->st[s].code = code;
        p->st[s].numel = numel;
        p->nst++;
    } else if (p->st[s].code != code || p->st[s].numel != numel)
        return ldm__pkfail(p, LDM_ERR_FORMAT, at, "storage '%.*s' is described twice with different types or sizes", (int)LDM__MIN(key->len, 64u), (const char *)key->s);
    int x = ldm__pnew(p, LDM__P_STORAGE);
    if (x >= 0) { p->v[x].i = s; p->v[x].j = voff; p->v[x].k = vcnt; }
    return x;
}

/* _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata]) */
static int ldm__prebuild_tensor(ldm__pk *p, int args, size_t at) {
    const ldm__pv *a = &p->v[args];
    int64_t off = 0;
    if (a->n < 4 || p->v[a->items[0]].type != LDM__P_STORAGE || !ldm__pint(p, a->items[1], &off) || off < 0 ||
        p->v[a->items[2]].type != LDM__P_TUPLE || p->v[a->items[3]].type != LDM__P_TUPLE || p->v[a->items[2]].n != p->v[a->items[3]].n)
        return ldm__pkfail(p, LDM_ERR_FORMAT, at, "_rebuild_tensor_v2 arguments are not (storage, offset, size, stride, ...)");
    const ldm__pv *sv = &p->v[a->items[0]], *size = &p->v[a->items[2]], *stride = &p->v[a->items[3]];
    ldm__ptensor t;
    memset(&t, 0, sizeof t);
    t.ndim = size->n;
    if (t.ndim > LDM_MAX_DIMS) return ldm__pkfail(p, LDM_ERR_UNSUPPORTED, at, "tensor with %d dims; ldm.h supports at most %d", t.ndim, LDM_MAX_DIMS);
    int64_t last = off, numel = 1, ext; /* last element the view touches, checked against the storage */
    for (int d = 0; d < t.ndim; d++) {
        if (!ldm__pint(p, size->items[d], &t.shape[d]) || !ldm__pint(p, stride->items[d], &t.stride[d]) || t.shape[d] < 0 ||
            t.stride[d] < 0 || t.shape[d] > ((int64_t)1 << 48) || t.stride[d] > ((int64_t)1 << 48))
            return ldm__pkfail(p, LDM_ERR_FORMAT, at, "tensor size/stride entry %d is not a non-negative integer below 2^48", d);
        if (!ldm__mul_ok(numel, t.shape[d], &numel) || numel > ((int64_t)1 << 48))
            return ldm__pkfail(p, LDM_ERR_FORMAT, at, "tensor has more than 2^48 elements");
        if (t.shape[d] > 0 && (!ldm__mul_ok(t.shape[d] - 1, t.stride[d], &ext) || (last += ext) > ((int64_t)1 << 60)))
            return ldm__pkfail(p, LDM_ERR_FORMAT, at, "tensor view is too large");
    }
    if (numel > 0 && last >= sv->k)
        return ldm__pkfail(p, LDM_ERR_FORMAT, at, "tensor view (offset %lld, last element %lld) runs past its storage '%.*s' of %lld elements",
                           (long long)off, (long long)last, (int)LDM__MIN(p->st[sv->i].key_len, 64u), (const char *)p->st[sv->i].key, (long long)sv->k);
    t.storage = (int)sv->i;
    t.offset = sv->j + off;
    if (ldm__grow((void **)&p->t, &p->capt, p->nt, sizeof *p->t)) return ldm__pkfail(p, LDM_ERR_NOMEM, at, "out of memory");
    p->t[p->nt] = t;
    int x = ldm__pnew(p, LDM__P_TENSOR);
    if (x >= 0) p->v[x].i = p->nt++;
    return x;
}

static int ldm__preduce(ldm__pk *p, int fn, int args, size_t at, int newobj) {
    if (p->v[fn].type != LDM__P_GLOBAL || p->v[args].type != LDM__P_TUPLE)
        return ldm__pkfail(p, LDM_ERR_FORMAT, at, "%s expects a class and an argument tuple", newobj ? "NEWOBJ" : "REDUCE");
    int id = (int)p->v[fn].i;
    const ldm__pv *a = &p->v[args];
    if (id == LDM__PG_DICT) { /* OrderedDict() or OrderedDict([[k, v], ...]) */
        int d = ldm__pnew(p, LDM__P_DICT);
        if (d >= 0 && p->v[args].n > 0) {
            const ldm__pv *l = &p->v[p->v[args].items[0]];
            if (l->type != LDM__P_LIST && l->type != LDM__P_TUPLE) return ldm__pkfail(p, LDM_ERR_FORMAT, at, "OrderedDict argument is not a list of pairs");
            for (int i = 0; i < p->v[p->v[args].items[0]].n; i++) {
                const ldm__pv *kv = &p->v[p->v[p->v[args].items[0]].items[i]];
                if ((kv->type != LDM__P_LIST && kv->type != LDM__P_TUPLE) || kv->n != 2)
                    return ldm__pkfail(p, LDM_ERR_FORMAT, at, "OrderedDict argument is not a list of pairs");
                int k = kv->items[0], v = kv->items[1];
                if (ldm__padd(p, d, k) || ldm__padd(p, d, v)) return -1;
            }
        }
        return d;
    }
    if (newobj && id != LDM__PG_INERT) return ldm__pkfail(p, LDM_ERR_UNSUPPORTED, at, "NEWOBJ of a class other than a data-only one");
    if (id == LDM__PG_TENSOR) return ldm__prebuild_tensor(p, args, at);
    if (id == LDM__PG_PARAM) {
        if (a->n < 1 || p->v[a->items[0]].type != LDM__P_TENSOR) return ldm__pkfail(p, LDM_ERR_FORMAT, at, "_rebuild_parameter argument is not a tensor");
        return a->items[0];
    }
    if (id == LDM__PG_INERT) return ldm__pnew(p, LDM__P_OPAQUE);
    return ldm__pkfail(p, LDM_ERR_UNSUPPORTED, at, "a storage class is called directly (only persistent ids may create storages)");
}

/* Runs one pickle from p->pos to its STOP; *result is the value left on the stack. */
static int ldm__prun(ldm__pk *p, int *result) {
    p->nstack = p->nmarks = 0;
    for (size_t i = 0; i < p->nmemo; i++) p->memo[i] = -1;
    for (;;) {
        size_t at = p->pos, need = 0;
        if (p->pos >= p->len) { p->short_buf = 1; return ldm__pkfail(p, LDM_ERR_FORMAT, at, "the pickle ends without STOP (truncated file?)"); }
        unsigned op = p->buf[p->pos++];
        const unsigned char *a = p->buf + p->pos;
        size_t left = p->len - p->pos;
        int x = -1, y, z;
        uint64_t n = 0;
        /* argument widths first, so every read below is in bounds */
        switch (op) {
        case 0x80: case 'K': case 'U': case 'C': case 0x8c: case 'q': case 'h': case 0x8a: need = 1; break;
        case 'M': need = 2; break;
        case 'J': case 'X': case 'T': case 'B': case 'r': case 'j': case 0x8b: need = 4; break;
        case 'G': case 0x95: case 0x8d: case 0x8e: need = 8; break;
        default: break;
        }
        if (left < need) { p->short_buf = 1; return ldm__pkfail(p, LDM_ERR_FORMAT, at, "opcode 0x%02x is cut off (truncated file?)", op); }
        if (need) n = ldm__rd_le(a, (int)need);
        p->pos += need;
        a += need;
        left -= need;
        switch (op) {
        case 0x80: /* PROTO */
            if (n < 2 || n > 5) return ldm__pkfail(p, LDM_ERR_UNSUPPORTED, at, "pickle protocol %u (ldm.h reads 2..5)", (unsigned)n);
            continue;
        case 0x95: continue; /* FRAME: a length hint only */
        case '}': x = ldm__pnew(p, LDM__P_DICT); break;
        case ']': case 0x8f: x = ldm__pnew(p, LDM__P_LIST); break; /* EMPTY_LIST, EMPTY_SET */
        case ')': x = ldm__pnew(p, LDM__P_TUPLE); break;
        case '(':
            if (p->nmarks >= 1000) return ldm__pkfail(p, LDM_ERR_UNSUPPORTED, at, "more than 1000 nested MARKs");
            if (ldm__grow((void **)&p->marks, &p->capmarks, p->nmarks, sizeof(int))) return ldm__pkfail(p, LDM_ERR_NOMEM, at, "out of memory");
            p->marks[p->nmarks++] = p->nstack;
            continue;
        case 't': x = ldm__ppop_mark(p, LDM__P_TUPLE, at); break;
        case 0x85: case 0x86: case 0x87: { /* TUPLE1..3 */
            int k = (int)op - 0x84, it[3];
            for (int i = k - 1; i >= 0; i--)
                if ((it[i] = ldm__ppop(p, at)) < 0) return -1;
            if ((x = ldm__pnew(p, LDM__P_TUPLE)) < 0) return -1;
            for (int i = 0; i < k; i++)
                if (ldm__padd(p, x, it[i])) return -1;
            break;
        }
        case 'X': case 'T': case 'B': case 'U': case 'C': case 0x8c: case 0x8d: case 0x8e: /* strings, bytes */
            if ((op == 'T' && n > 0x7fffffffu) || n > left) { p->short_buf = n <= ((uint64_t)1 << 40); return ldm__pkfail(p, LDM_ERR_FORMAT, at, "string of %llu bytes runs past the end of the pickle", (unsigned long long)n); }
            if ((x = ldm__pnew(p, op == 'B' || op == 'C' || op == 0x8e ? LDM__P_BYTES : LDM__P_STR)) < 0) return -1;
            p->v[x].s = a;
            p->v[x].len = (size_t)n;
            p->pos += (size_t)n;
            break;
        case 'K': case 'M': case 'J': /* BININT1/2 unsigned, BININT signed */
            if ((x = ldm__pnew(p, LDM__P_INT)) >= 0) p->v[x].i = op == 'J' ? (int64_t)(int32_t)(uint32_t)n : (int64_t)n;
            break;
        case 0x8a: case 0x8b: /* LONG1, LONG4: little-endian two's complement */
            if (n > left) { p->short_buf = n <= ((uint64_t)1 << 40); return ldm__pkfail(p, LDM_ERR_FORMAT, at, "long integer runs past the end of the pickle"); }
            if ((x = ldm__pnew(p, n <= 8 ? LDM__P_INT : LDM__P_BIGINT)) < 0) return -1;
            if (n <= 8) {
                uint64_t u = n ? ldm__rd_le(a, (int)n) : 0;
                if (n && n < 8 && (a[n - 1] & 0x80)) u |= ~(uint64_t)0 << (8 * n);
                p->v[x].i = (int64_t)u;
            }
            p->v[x].s = a;
            p->v[x].len = (size_t)n;
            p->pos += (size_t)n;
            break;
        case 'G': { /* BINFLOAT: big-endian */
            uint64_t u = 0;
            double d;
            for (int i = 0; i < 8; i++) u = (u << 8) | a[i - 8];
            memcpy(&d, &u, 8);
            if ((x = ldm__pnew(p, LDM__P_FLOAT)) >= 0) p->v[x].f = d;
            break;
        }
        case 'N': x = ldm__pnew(p, LDM__P_NONE); break;
        case 0x88: case 0x89:
            if ((x = ldm__pnew(p, LDM__P_BOOL)) >= 0) p->v[x].i = op == 0x88;
            break;
        case 'q': case 'r': case 0x94: /* BINPUT, LONG_BINPUT, MEMOIZE */
            if (op == 0x94) {
                n = 0;
                while (n < p->nmemo && p->memo[n] >= 0) n++;
            }
            if (!p->nstack || (p->nmarks && p->nstack <= p->marks[p->nmarks - 1])) return ldm__pkfail(p, LDM_ERR_FORMAT, at, "memo store from an empty stack");
            if (n > p->len) return ldm__pkfail(p, LDM_ERR_FORMAT, at, "memo index %llu out of range", (unsigned long long)n);
            if (n >= p->nmemo) {
                size_t c = LDM__MAX((size_t)n + 1, 2 * p->nmemo);
                int *m = (int *)LDM_REALLOC(p->memo, sizeof(int) * c);
                if (!m) return ldm__pkfail(p, LDM_ERR_NOMEM, at, "out of memory");
                for (size_t i = p->nmemo; i < c; i++) m[i] = -1;
                p->memo = m;
                p->nmemo = c;
            }
            p->memo[n] = p->stack[p->nstack - 1];
            continue;
        case 'h': case 'j':
            if (n >= p->nmemo || p->memo[n] < 0) return ldm__pkfail(p, LDM_ERR_FORMAT, at, "memo index %llu out of range (never stored)", (unsigned long long)n);
            x = p->memo[n];
            break;
        case 's': case 'u': case 'a': case 'e': case 0x90: { /* SETITEM(S), APPEND(S), ADDITEMS */
            int single = op == 's' || op == 'a', c, m0;
            if (single) m0 = p->nstack - (op == 's' ? 2 : 1);
            else if (!p->nmarks) return ldm__pkfail(p, LDM_ERR_FORMAT, at, "no MARK on the stack (malformed pickle)");
            else m0 = p->marks[--p->nmarks];
            /* the target sits just below the items, above the enclosing MARK */
            if (m0 - 1 < (p->nmarks ? p->marks[p->nmarks - 1] : 0)) return ldm__pkfail(p, LDM_ERR_FORMAT, at, "stack underflow (malformed pickle)");
            c = p->stack[m0 - 1];
            int want = (op == 's' || op == 'u') ? LDM__P_DICT : LDM__P_LIST;
            if ((op == 's' || op == 'u') && (p->nstack - m0) % 2) return ldm__pkfail(p, LDM_ERR_FORMAT, at, "SETITEMS with an odd number of items");
            if (p->v[c].type == want)
                for (int i = m0; i < p->nstack; i++)
                    if (ldm__padd(p, c, p->stack[i])) return -1;
            if (p->v[c].type != want && p->v[c].type != LDM__P_OPAQUE)
                return ldm__pkfail(p, LDM_ERR_FORMAT, at, "opcode '%c' applied to a value that is not a %s", op, want == LDM__P_DICT ? "dict" : "list");
            p->nstack = m0;
            continue;
        }
        case 'c': { /* GLOBAL "module\nname\n" */
            const unsigned char *e1 = (const unsigned char *)memchr(a, '\n', left), *e2;
            e2 = e1 ? (const unsigned char *)memchr(e1 + 1, '\n', left - (size_t)(e1 + 1 - a)) : NULL;
            if (!e2) { p->short_buf = 1; return ldm__pkfail(p, LDM_ERR_FORMAT, at, "GLOBAL without two newline-terminated names"); }
            x = ldm__pglobal(p, a, (size_t)(e1 - a), e1 + 1, (size_t)(e2 - e1 - 1), at);
            p->pos = (size_t)(e2 + 1 - p->buf);
            break;
        }
        case 0x93: /* STACK_GLOBAL */
            if ((z = ldm__ppop(p, at)) < 0 || (y = ldm__ppop(p, at)) < 0) return -1;
            if (p->v[y].type != LDM__P_STR || p->v[z].type != LDM__P_STR) return ldm__pkfail(p, LDM_ERR_FORMAT, at, "STACK_GLOBAL needs two strings");
            x = ldm__pglobal(p, p->v[y].s, p->v[y].len, p->v[z].s, p->v[z].len, at);
            break;
        case 'R': case 0x81: /* REDUCE, NEWOBJ */
            if ((z = ldm__ppop(p, at)) < 0 || (y = ldm__ppop(p, at)) < 0) return -1;
            x = ldm__preduce(p, y, z, at, op == 0x81);
            break;
        case 'b': /* BUILD: object state (OrderedDict _metadata, numpy arrays) is not needed */
            if (ldm__ppop(p, at) < 0 || (x = ldm__ppop(p, at)) < 0) return -1;
            break;
        case 'Q': /* BINPERSID */
            if ((y = ldm__ppop(p, at)) < 0) return -1;
            x = ldm__pstorage_ref(p, y, at);
            break;
        case '0': if (ldm__ppop(p, at) < 0) return -1; continue; /* POP */
        case '.': /* STOP */
            if ((x = ldm__ppop(p, at)) < 0) return -1;
            if (p->nstack || p->nmarks) return ldm__pkfail(p, LDM_ERR_FORMAT, at, "values left on the stack at STOP");
            *result = x;
            return 0;
        default:
            return ldm__pkfail(p, LDM_ERR_UNSUPPORTED, at, "pickle opcode 0x%02x ('%c') is not one torch.save writes; refusing to interpret it",
                               op, op >= 0x20 && op < 0x7f ? (char)op : '?');
        }
        if (x < 0 || ldm__ppush(p, x)) return -1;
    }
}

static void ldm__pk_free(ldm__pk *p) {
    for (int i = 0; i < p->nv; i++) LDM_FREE(p->v[i].items);
    LDM_FREE(p->v);
    LDM_FREE(p->stack);
    LDM_FREE(p->marks);
    LDM_FREE(p->memo);
    LDM_FREE(p->st);
    LDM_FREE(p->t);
    memset(p, 0, sizeof *p);
}

/* Adds every tensor of dict d as an entry; nested dicts join their keys with '.'. */
static ldm_result ldm__pflatten(ldm_ctx *ctx, ldm_weights *w, ldm__pk *p, int d, char *name, size_t len, int depth) {
    if (depth > 32) return ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "dicts nested deeper than 32 levels (or a dict that contains itself)");
    for (int i = 0; i + 1 < p->v[d].n; i += 2) {
        const ldm__pv *k = &p->v[p->v[d].items[i]], *v = &p->v[p->v[d].items[i + 1]];
        size_t kl;
        if (v->type != LDM__P_TENSOR && v->type != LDM__P_DICT) continue;
        char num[32];
        const char *ks = num;
        if (k->type == LDM__P_STR) { ks = (const char *)k->s; kl = k->len; }
        else if (k->type == LDM__P_INT) kl = (size_t)snprintf(num, sizeof num, "%lld", (long long)k->i);
        else continue;
        if (memchr(ks, 0, kl)) return ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "a key contains a NUL byte");
        if (len + kl + 2 > 4096) return ldm__werr(ctx, LDM_ERR_UNSUPPORTED, w->path, "a tensor name is longer than 4 KB");
        memcpy(name + len, ks, kl);
        if (v->type == LDM__P_DICT) {
            name[len + kl] = '.';
            ldm_result r = ldm__pflatten(ctx, w, p, p->v[d].items[i + 1], name, len + kl + 1, depth + 1);
            if (r) return r;
            continue;
        }
        const ldm__ptensor *t = &p->t[v->i];
        ldm__wentry *e;
        ldm_result r = ldm__wadd(ctx, w, name, len + kl, p->st[t->storage].code, t->ndim, t->shape, &e);
        if (r) return r;
        e->offset = t->offset;
        e->storage = t->storage;
        memcpy(e->stride, t->stride, sizeof e->stride);
    }
    return LDM_OK;
}
/* The state dict of a checkpoint: top-level dict, or its "state_dict" (Lightning). */
static ldm_result ldm__pindex(ldm_ctx *ctx, ldm_weights *w, ldm__pk *p, int top) {
    if (p->v[top].type != LDM__P_DICT)
        return ldm__werr(ctx, LDM_ERR_UNSUPPORTED, w->path, "the checkpoint's top-level object is not a dict (save a state_dict instead)");
    for (int i = 0; i + 1 < p->v[top].n; i += 2)
        if (ldm__pstr_is(p, p->v[top].items[i], "state_dict") && p->v[p->v[top].items[i + 1]].type == LDM__P_DICT) {
            top = p->v[top].items[i + 1];
            break;
        }
    char *name = (char *)LDM_MALLOC(4096);
    if (!name) return ldm__werr(ctx, LDM_ERR_NOMEM, w->path, "out of memory");
    ldm_result r = ldm__pflatten(ctx, w, p, top, name, 0, 0);
    LDM_FREE(name);
    return r;
}

/* ---- PyTorch zip checkpoints (torch.save since 1.6) ---------------------------------------
   A zip of "<archive>/data.pkl" and one "<archive>/data/<key>" entry per storage, all
   "stored" (uncompressed), so a tensor's bytes can be read in place. */
typedef struct ldm__zent { const char *name; size_t name_len; uint64_t lho, csize, usize; int method; } ldm__zent;
typedef struct ldm__zip { unsigned char *cd; ldm__zent *e; int n; } ldm__zip;

static ldm_result ldm__zip_dir(ldm_ctx *ctx, ldm_weights *w, ldm__zip *z) {
    size_t tl = (size_t)LDM__MIN(w->size, (uint64_t)65557); /* record + longest comment */
    unsigned char *tail = (unsigned char *)LDM_MALLOC(tl), *b;
    if (!tail) return ldm__werr(ctx, LDM_ERR_NOMEM, w->path, "out of memory");
    ldm_result r = ldm__wread_at(ctx, w, w->size - tl, tail, tl, "the zip directory");
    if (r) { LDM_FREE(tail); return r; }
    long eo = -1; /* end-of-central-directory record, searched from the back (a comment may follow it) */
    for (long i = (long)tl - 22; i >= 0 && eo < 0; i--)
        if (!memcmp(tail + i, "PK\5\6", 4)) eo = i;
    uint64_t eocd = w->size - tl + (uint64_t)eo, n = 0, cd_size = 0, cd_off = 0;
    if (eo >= 0) { n = ldm__rd_le(tail + eo + 10, 2); cd_size = ldm__rd_le(tail + eo + 12, 4); cd_off = ldm__rd_le(tail + eo + 16, 4); }
    LDM_FREE(tail);
    if (eo < 0) return ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "zip end-of-directory record not found (truncated or not a zip checkpoint)");
    if (n == 0xffff || cd_size == 0xffffffffu || cd_off == 0xffffffffu) { /* ZIP64: locator just before the record */
        unsigned char loc[20], z64[56];
        if (eocd < 20 || (r = ldm__wread_at(ctx, w, eocd - 20, loc, 20, "the zip64 locator"))) return r ? r : ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "zip64 locator missing");
        if (memcmp(loc, "PK\6\7", 4)) return ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "zip64 locator missing before the end-of-directory record");
        if ((r = ldm__wread_at(ctx, w, ldm__rd_le(loc + 8, 8), z64, 56, "the zip64 directory record"))) return r;
        if (memcmp(z64, "PK\6\6", 4)) return ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "bad zip64 end-of-directory signature");
        n = ldm__rd_le(z64 + 32, 8);
        cd_size = ldm__rd_le(z64 + 40, 8);
        cd_off = ldm__rd_le(z64 + 48, 8);
    }
    if (cd_off > eocd || cd_size > eocd - cd_off || cd_size > ((uint64_t)1 << 30) || n > cd_size / 46)
        return ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "zip central directory (%llu entries, %llu bytes at %llu) is inconsistent with the file",
                         (unsigned long long)n, (unsigned long long)cd_size, (unsigned long long)cd_off);
    z->cd = (unsigned char *)LDM_MALLOC((size_t)cd_size + 1);
    z->e = (ldm__zent *)LDM_MALLOC(sizeof *z->e * (size_t)(n + 1));
    if (!z->cd || !z->e) return ldm__werr(ctx, LDM_ERR_NOMEM, w->path, "out of memory for the zip directory");
    if ((r = ldm__wread_at(ctx, w, cd_off, z->cd, (size_t)cd_size, "the zip central directory"))) return r;
    size_t pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        b = z->cd + pos;
        if (cd_size - pos < 46 || memcmp(b, "PK\1\2", 4))
            return ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "zip central directory entry %llu is damaged", (unsigned long long)i);
        size_t nl = (size_t)ldm__rd_le(b + 28, 2), xl = (size_t)ldm__rd_le(b + 30, 2), cl = (size_t)ldm__rd_le(b + 32, 2);
        if (46 + nl + xl + cl > cd_size - pos)
            return ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "zip central directory entry %llu runs past the directory", (unsigned long long)i);
        ldm__zent *e = &z->e[z->n++];
        e->name = (const char *)b + 46;
        e->name_len = nl;
        e->method = (int)ldm__rd_le(b + 10, 2);
        e->csize = ldm__rd_le(b + 20, 4);
        e->usize = ldm__rd_le(b + 24, 4);
        e->lho = ldm__rd_le(b + 42, 4);
        for (const unsigned char *x = b + 46 + nl, *xe = x + xl; xe - x >= 4;) { /* ZIP64 extra: the fields saturated above */
            size_t id = (size_t)ldm__rd_le(x, 2), sz = (size_t)ldm__rd_le(x + 2, 2);
            const unsigned char *f = x + 4, *fe = f + LDM__MIN(sz, (size_t)(xe - f));
            if (id == 1) {
                uint64_t *fld[3] = {&e->usize, &e->csize, &e->lho};
                for (int k = 0; k < 3; k++)
                    if (*fld[k] == 0xffffffffu) {
                        if (fe - f < 8) return ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "zip64 extra field of entry %llu is too short", (unsigned long long)i);
                        *fld[k] = ldm__rd_le(f, 8);
                        f += 8;
                    }
            }
            x = fe;
        }
        pos += 46 + nl + xl + cl;
    }
    return LDM_OK;
}
static const ldm__zent *ldm__zip_find(const ldm__zip *z, const char *prefix, size_t pl, const char *mid, const unsigned char *key, size_t kl) {
    size_t ml = strlen(mid);
    for (int i = 0; i < z->n; i++) {
        const ldm__zent *e = &z->e[i];
        if (e->name_len == pl + ml + kl && !memcmp(e->name, prefix, pl) && !memcmp(e->name + pl, mid, ml) && !memcmp(e->name + pl + ml, key, kl))
            return e;
    }
    return NULL;
}
/* file offset of an entry's bytes: after its local header, which has its own name/extra lengths */
static ldm_result ldm__zip_data(ldm_ctx *ctx, ldm_weights *w, const ldm__zent *e, uint64_t *off) {
    unsigned char lh[30];
    char what[160];
    snprintf(what, sizeof what, "zip entry %.*s", (int)LDM__MIN(e->name_len, (size_t)120), e->name);
    if (e->method != 0)
        return ldm__werr(ctx, LDM_ERR_UNSUPPORTED, w->path, "%s is compressed (method %d); ldm.h reads the uncompressed entries torch.save writes (re-save it with torch.save)", what, e->method);
    ldm_result r = ldm__wread_at(ctx, w, e->lho, lh, 30, what);
    if (r) return r;
    if (memcmp(lh, "PK\3\4", 4)) return ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "%s: bad local header signature", what);
    *off = e->lho + 30 + ldm__rd_le(lh + 26, 2) + ldm__rd_le(lh + 28, 2);
    if (e->csize != e->usize || *off > w->size || e->csize > w->size - *off)
        return ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "%s (%llu bytes at %llu) runs past the end of the file (truncated?)", what,
                         (unsigned long long)e->csize, (unsigned long long)*off);
    return LDM_OK;
}

static ldm_result ldm__zip_open(ldm_ctx *ctx, ldm_weights *w) {
    ldm__zip z;
    ldm__pk p;
    memset(&z, 0, sizeof z);
    memset(&p, 0, sizeof p);
    unsigned char *pkl = NULL;
    const ldm__zent *pe = NULL;
    uint64_t off;
    size_t pl = 0;
    ldm_result r = ldm__zip_dir(ctx, w, &z);
    for (int i = 0; i < z.n && !r && !pe; i++) { /* "<archive>/data.pkl"; the archive name varies */
        const char *sl = (const char *)memchr(z.e[i].name, '/', z.e[i].name_len);
        if (sl && z.e[i].name_len - (size_t)(sl - z.e[i].name) == 9 && !memcmp(sl, "/data.pkl", 9)) { pe = &z.e[i]; pl = (size_t)(sl - pe->name) + 1; }
    }
    if (!r && !pe) r = ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "zip has no <archive>/data.pkl: not a PyTorch checkpoint");
    const ldm__zent *bo = r ? NULL : ldm__zip_find(&z, pe->name, pl, "byteorder", (const unsigned char *)"", 0);
    if (bo) { /* written by torch >= 1.13; absent means little-endian */
        char order[8] = {0};
        if (!(r = ldm__zip_data(ctx, w, bo, &off)) && bo->usize < sizeof order &&
            !(r = ldm__wread_at(ctx, w, off, order, (size_t)bo->usize, "byteorder")) && strcmp(order, "little"))
            r = ldm__werr(ctx, LDM_ERR_UNSUPPORTED, w->path, "checkpoint byte order is '%s'; ldm.h reads little-endian checkpoints", order);
    }
    if (!r && !(r = ldm__zip_data(ctx, w, pe, &off))) {
        if (pe->usize > ((uint64_t)1 << 30)) r = ldm__werr(ctx, LDM_ERR_UNSUPPORTED, w->path, "data.pkl is larger than 1 GB");
        else if (!(pkl = (unsigned char *)LDM_MALLOC((size_t)pe->usize + 1))) r = ldm__werr(ctx, LDM_ERR_NOMEM, w->path, "out of memory for data.pkl");
        else r = ldm__wread_at(ctx, w, off, pkl, (size_t)pe->usize, "data.pkl");
    }
    if (!r) {
        int top = -1;
        p.buf = pkl;
        p.len = (size_t)pe->usize;
        if (ldm__prun(&p, &top)) r = ldm__werr(ctx, p.err, w->path, "data.pkl: %s", p.msg);
        else if (p.pos != p.len) r = ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "data.pkl: %zu bytes after STOP", p.len - p.pos);
        else r = ldm__pindex(ctx, w, &p, top);
    }
    for (int i = 0; i < w->n && !r; i++) { /* locate the storages the state dict uses */
        ldm__pstorage *s = &p.st[w->e[i].storage];
        if (!s->located) {
            const ldm__zent *se = ldm__zip_find(&z, pe->name, pl, "data/", s->key, s->key_len);
            if (!se) r = ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "storage '%.*s' of tensor '%.200s' is missing from the archive",
                                   (int)LDM__MIN(s->key_len, 64u), (const char *)s->key, w->e[i].info.name);
            else if (!(r = ldm__zip_data(ctx, w, se, &s->base)) && se->usize / (uint64_t)ldm__wt[s->code].size < (uint64_t)s->numel)
                r = ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "storage '%.*s' holds %llu bytes, less than its %lld elements of %s",
                              (int)LDM__MIN(s->key_len, 64u), (const char *)s->key, (unsigned long long)se->usize, (long long)s->numel, ldm__wt[s->code].st);
            s->located = 1;
        }
        w->e[i].base = s->base;
    }
    ldm__pk_free(&p);
    LDM_FREE(pkl);
    LDM_FREE(z.cd);
    LDM_FREE(z.e);
    return r;
}

/* ---- legacy torch.save (before 1.6) --------------------------------------------------------
   Five pickles (magic number, protocol version 1001, system info, the object, the storage keys),
   then each storage in key order as an int64 element count and its raw bytes. */
static const unsigned char ldm__torch_magic[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
static ldm_result ldm__legacy_parse(ldm_ctx *ctx, ldm_weights *w, ldm__pk *p, int res[5]) {
    static const char *what[5] = {"magic number", "protocol version", "system info", "object", "storage keys"};
    for (int k = 0; k < 5; k++) {
        if (ldm__prun(p, &res[k])) return p->short_buf ? LDM_ERR_FORMAT : ldm__werr(ctx, p->err, w->path, "legacy %s pickle: %s", what[k], p->msg);
        const ldm__pv *v = &p->v[res[k]];
        int64_t ver;
        if (k == 0 && (v->type != LDM__P_BIGINT || v->len != 10 || memcmp(v->s, ldm__torch_magic, 10)))
            return ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "legacy torch.save magic number is wrong");
        if (k == 1 && (!ldm__pint(p, res[1], &ver) || ver != 1001))
            return ldm__werr(ctx, LDM_ERR_UNSUPPORTED, w->path, "legacy torch.save protocol version is not 1001");
        if (k == 2) {
            if (v->type != LDM__P_DICT) return ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "legacy system info is not a dict");
            for (int i = 0; i + 1 < v->n; i += 2)
                if (ldm__pstr_is(p, v->items[i], "little_endian") && p->v[v->items[i + 1]].type == LDM__P_BOOL && !p->v[v->items[i + 1]].i)
                    return ldm__werr(ctx, LDM_ERR_UNSUPPORTED, w->path, "checkpoint was saved on a big-endian machine");
        }
        if (k == 1) p->legacy = 1; /* the object's persistent ids carry view metadata */
    }
    return LDM_OK;
}
static ldm_result ldm__legacy_open(ldm_ctx *ctx, ldm_weights *w) {
    ldm__pk p;
    memset(&p, 0, sizeof p);
    unsigned char *buf = NULL;
    int res[5];
    ldm_result r = LDM_OK;
    /* the pickles come first; read a window and grow it until they fit */
    for (uint64_t win = LDM__MIN(w->size, (uint64_t)1 << 20);; win = LDM__MIN(w->size, win * 8)) {
        ldm__pk_free(&p);
        LDM_FREE(buf);
        if (win > ((uint64_t)1 << 30)) { r = ldm__werr(ctx, LDM_ERR_UNSUPPORTED, w->path, "legacy pickles larger than 1 GB"); buf = NULL; break; }
        if (!(buf = (unsigned char *)LDM_MALLOC((size_t)win))) { r = ldm__werr(ctx, LDM_ERR_NOMEM, w->path, "out of memory"); break; }
        if ((r = ldm__wread_at(ctx, w, 0, buf, (size_t)win, "the legacy pickles"))) break;
        p.buf = buf;
        p.len = (size_t)win;
        r = ldm__legacy_parse(ctx, w, &p, res);
        if (!r || !p.short_buf) break;
        if (win == w->size) { r = ldm__werr(ctx, p.err, w->path, "legacy pickles: %s", p.msg); break; }
    }
    if (!r) r = ldm__pindex(ctx, w, &p, res[3]);
    if (!r && p.v[res[4]].type != LDM__P_LIST)
        r = ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "legacy storage key list is not a list");
    uint64_t pos = p.pos;
    for (int i = 0; !r && i < p.v[res[4]].n; i++) { /* the storages follow in key-list order */
        const ldm__pv *key = &p.v[p.v[res[4]].items[i]];
        int s = 0;
        unsigned char c8[8];
        if (key->type == LDM__P_STR)
            for (; s < p.nst; s++)
                if (p.st[s].key_len == key->len && !memcmp(p.st[s].key, key->s, key->len)) break;
        if (key->type != LDM__P_STR || s == p.nst || p.st[s].located) {
            r = ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "legacy storage key %d is not a string naming a storage of the object, or is repeated", i);
            break;
        }
        if ((r = ldm__wread_at(ctx, w, pos, c8, 8, "a legacy storage size"))) break;
        int64_t cnt = (int64_t)ldm__rd_le(c8, 8);
        if (cnt != p.st[s].numel) {
            r = ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "legacy storage '%.*s' holds %lld elements, its persistent id says %lld",
                          (int)LDM__MIN(key->len, 64u), (const char *)key->s, (long long)cnt, (long long)p.st[s].numel);
            break;
        }
        p.st[s].base = pos + 8;
        p.st[s].located = 1;
        pos += 8 + (uint64_t)cnt * (uint64_t)ldm__wt[p.st[s].code].size;
        if (pos > w->size)
            r = ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "legacy storage '%.*s' runs past the end of the file (truncated download?)",
                          (int)LDM__MIN(key->len, 64u), (const char *)key->s);
    }
    for (int i = 0; i < w->n && !r; i++) {
        if (!p.st[w->e[i].storage].located)
            r = ldm__werr(ctx, LDM_ERR_FORMAT, w->path, "the storage of tensor '%.200s' is not in the legacy storage list", w->e[i].info.name);
        w->e[i].base = p.st[w->e[i].storage].base;
    }
    ldm__pk_free(&p);
    LDM_FREE(buf);
    return r;
}

/* ---- opening, the index, reading -------------------------------------------------------- */
LDM_API void ldm_weights_close(ldm_weights *w) {
    if (!w) return;
    if (w->f) fclose(w->f);
    for (int i = 0; i < w->n; i++) LDM_FREE((void *)w->e[i].info.name);
    for (int i = 0; i < 2 * w->n_meta; i++) LDM_FREE(w->meta[i]);
    LDM_FREE(w->meta);
    LDM_FREE(w->e);
    LDM_FREE(w->hash);
    LDM_FREE(w->path);
    LDM_FREE(w);
}

LDM_API ldm_result ldm_weights_open(ldm_ctx *ctx, ldm_weights **out, const char *path) {
    if (!out || !path) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_weights_open: NULL %s", out ? "path" : "output pointer");
    *out = NULL;
    ldm_weights *w = (ldm_weights *)LDM_MALLOC(sizeof *w);
    if (!w) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "%s: out of memory", path);
    memset(w, 0, sizeof *w);
    if (!(w->path = ldm__strndup(path, strlen(path)))) { LDM_FREE(w); return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "%s: out of memory", path); }
    ldm_result r = LDM_OK;
    long size;
    unsigned char head[16] = {0};
    if (!(w->f = fopen(path, "rb")))
        r = ldm__werr(ctx, LDM_ERR_IO, path, "cannot open: %s (check the path)", strerror(errno));
    else if (fseek(w->f, 0, SEEK_END) || (size = ftell(w->f)) < 0)
        r = ldm__werr(ctx, LDM_ERR_IO, path, "cannot determine the file size: %s (is it a regular file?)", strerror(errno));
    else if ((w->size = (uint64_t)size) < 8)
        r = ldm__werr(ctx, LDM_ERR_FORMAT, path, "file is only %llu bytes, too short for a weight file (empty or truncated download?)", (unsigned long long)w->size);
    else if (!(r = ldm__wread_at(ctx, w, 0, head, (size_t)LDM__MIN(w->size, 16u), "the first bytes"))) {
        uint64_t hlen = ldm__rd_le(head, 8);
        if (!memcmp(head, "PK\3\4", 4) || !memcmp(head, "PK\5\6", 4)) {
            w->format = "torch-zip";
            r = ldm__zip_open(ctx, w);
        } else if (w->size >= 14 && head[0] == 0x80 && head[2] == 0x8a && head[3] == 10 && !memcmp(head + 4, ldm__torch_magic, 10)) {
            w->format = "torch-legacy";
            r = ldm__legacy_open(ctx, w);
        } else if (head[8] == '{' || (hlen >= 2 && hlen <= w->size - 8 && hlen <= ((uint64_t)100 << 20))) {
            w->format = "safetensors";
            r = ldm__st_open(ctx, w);
        } else
            r = ldm__werr(ctx, LDM_ERR_FORMAT, path, "not a weight file (expected safetensors, a PyTorch zip checkpoint or a legacy torch.save file)");
    }
    if (!r) r = ldm__wbuild_hash(ctx, w);
    if (r) { ldm_weights_close(w); return r; }
    *out = w;
    return LDM_OK;
}

LDM_API const char *ldm_weights_path(const ldm_weights *w) { return w ? w->path : NULL; }
LDM_API const char *ldm_weights_format(const ldm_weights *w) { return w ? w->format : NULL; }
LDM_API int ldm_weights_count(const ldm_weights *w) { return w ? w->n : 0; }
LDM_API const ldm_weight_info *ldm_weights_info(const ldm_weights *w, int i) {
    return w && i >= 0 && i < w->n ? &w->e[i].info : NULL;
}
LDM_API int ldm_weights_find(const ldm_weights *w, const char *name) {
    if (!w || !name || !w->hcap) return -1;
    for (uint32_t h = ldm__hash_str(name) & (uint32_t)(w->hcap - 1); w->hash[h]; h = (h + 1) & (uint32_t)(w->hcap - 1))
        if (!strcmp(w->e[w->hash[h] - 1].info.name, name)) return w->hash[h] - 1;
    return -1;
}
LDM_API const char *ldm_weights_metadata(const ldm_weights *w, const char *key) {
    if (!w || !key) return NULL;
    for (int i = 0; i < w->n_meta; i++)
        if (!strcmp(w->meta[2 * i], key)) return w->meta[2 * i + 1];
    return NULL;
}

static int ldm__host_le(void) {
    const uint16_t one = 1;
    unsigned char c;
    memcpy(&c, &one, 1);
    return c == 1;
}

LDM_API ldm_result ldm_weights_read(ldm_ctx *ctx, ldm_weights *w, int i, float *dst) {
    if (!w || i < 0 || i >= w->n)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: ldm_weights_read: index %d out of range (the file has %d tensors)",
                              w ? w->path : "(NULL weights)", i, w ? w->n : 0);
    const ldm__wentry *e = &w->e[i];
    const int64_t *shape = e->info.shape, *stride = e->stride, n = e->info.numel;
    int nd = e->info.ndim, esz = ldm__wt[e->code].size, contiguous = 1;
    if (n == 0) return LDM_OK;
    if (!dst) return ldm__werr(ctx, LDM_ERR_INVALID, w->path, "ldm_weights_read: NULL destination for tensor '%.200s'", e->info.name);
    char what[256];
    snprintf(what, sizeof what, "tensor '%.200s'", e->info.name);
    int64_t span = 1, expect = 1; /* elements from the first to the last one of the view */
    for (int d = nd - 1; d >= 0; d--) {
        if (shape[d] != 1 && stride[d] != expect) contiguous = 0;
        expect *= shape[d];
        span += (shape[d] - 1) * stride[d];
    }
    uint64_t off = e->base + (uint64_t)e->offset * (uint64_t)esz;
    if (contiguous && e->code == LDM__WT_F32 && ldm__host_le())
        return ldm__wread_at(ctx, w, off, dst, (size_t)n * 4, what);
    ldm_result r = LDM_OK;
    if (contiguous) { /* convert in 1 MB chunks */
        int64_t chunk = LDM__MIN(n, ((int64_t)1 << 20) / esz);
        unsigned char *buf = (unsigned char *)LDM_MALLOC((size_t)(chunk * esz));
        if (!buf) return ldm__werr(ctx, LDM_ERR_NOMEM, w->path, "out of memory reading %s", what);
        for (int64_t done = 0; done < n && !r; done += chunk) {
            int64_t cnt = LDM__MIN(chunk, n - done);
            if (!(r = ldm__wread_at(ctx, w, off + (uint64_t)(done * esz), buf, (size_t)(cnt * esz), what)))
                for (int64_t k = 0; k < cnt; k++) dst[done + k] = ldm__wload(buf + k * esz, e->code);
        }
        LDM_FREE(buf);
        return r;
    }
    /* a strided view (checked at open to lie inside its storage): read its span, then gather */
    unsigned char *buf = (unsigned char *)LDM_MALLOC((size_t)(span * esz));
    if (!buf) return ldm__werr(ctx, LDM_ERR_NOMEM, w->path, "out of memory reading %s (%lld bytes)", what, (long long)(span * esz));
    if (!(r = ldm__wread_at(ctx, w, off, buf, (size_t)(span * esz), what))) {
        int64_t idx[LDM_MAX_DIMS] = {0}, src = 0;
        for (int64_t k = 0; k < n; k++) {
            dst[k] = ldm__wload(buf + src * esz, e->code);
            for (int d = nd - 1; d >= 0; d--) {
                if (++idx[d] < shape[d]) { src += stride[d]; break; }
                src -= (shape[d] - 1) * stride[d];
                idx[d] = 0;
            }
        }
    }
    LDM_FREE(buf);
    return r;
}

/* ---- safetensors writer ------------------------------------------------------------------ */
typedef struct ldm__hbuf { char *p; size_t n, cap; int oom; } ldm__hbuf;
static void ldm__hb_put(ldm__hbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = LDM__MAX(2 * b->cap, b->n + n + 256);
        char *p = (char *)LDM_REALLOC(b->p, cap);
        if (!p) { b->oom = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void ldm__hb_cstr(ldm__hbuf *b, const char *s) { ldm__hb_put(b, s, strlen(s)); }
static void ldm__hb_json(ldm__hbuf *b, const char *s) { /* a JSON string literal */
    ldm__hb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') { esc[0] = '\\'; esc[1] = (char)c; ldm__hb_put(b, esc, 2); }
        else if (c < 0x20) { snprintf(esc, sizeof esc, "\\u%04x", c); ldm__hb_put(b, esc, 6); }
        else ldm__hb_put(b, s, 1);
    }
    ldm__hb_put(b, "\"", 1);
}
static void ldm__hb_i64(ldm__hbuf *b, int64_t v) {
    char t[32];
    snprintf(t, sizeof t, "%lld", (long long)v);
    ldm__hb_cstr(b, t);
}
static int ldm__strptr_cmp(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }
LDM_API ldm_result ldm_atomic_begin(ldm_ctx *ctx, ldm_atomic_file *af, const char *path) {
    size_t n = strlen(path);
    memset(af, 0, sizeof *af);
    af->tmp = (char *)LDM_MALLOC(n + 32);
    af->path = (char *)LDM_MALLOC(n + 1);
    if (!af->tmp || !af->path) { ldm_atomic_abort(af); return ldm__werr(ctx, LDM_ERR_NOMEM, path, "out of memory"); }
    memcpy(af->path, path, n + 1);
    /* beside the target, so that the rename stays within one file system */
    snprintf(af->tmp, n + 32, "%s.tmp.%ld", path, (long)getpid());
    af->f = fopen(af->tmp, "wb");
    if (!af->f) {
        ldm_result r = ldm__werr(ctx, LDM_ERR_IO, path, "cannot create %s: %s (is the directory writable?)", af->tmp, strerror(errno));
        ldm_atomic_abort(af);
        return r;
    }
    return LDM_OK;
}

LDM_API ldm_result ldm_atomic_commit(ldm_ctx *ctx, ldm_atomic_file *af) {
    ldm_result r = LDM_OK;
    if (!af->f) { ldm_atomic_abort(af); return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_atomic_commit: no write in progress"); }
    if (ferror(af->f) || fflush(af->f)) r = ldm__werr(ctx, LDM_ERR_IO, af->path, "cannot write %s: %s (disk full?)", af->tmp, strerror(errno));
    if (fclose(af->f) && !r) r = ldm__werr(ctx, LDM_ERR_IO, af->path, "closing %s failed: %s", af->tmp, strerror(errno));
    af->f = NULL;
    if (!r) { /* the data must be on disk before the rename makes it the file (fileno is not C99: reopen) */
        int fd = open(af->tmp, O_RDONLY);
        if (fd < 0 || fsync(fd)) r = ldm__werr(ctx, LDM_ERR_IO, af->path, "fsync of %s failed: %s", af->tmp, strerror(errno));
        if (fd >= 0) close(fd);
    }
    if (!r && rename(af->tmp, af->path)) r = ldm__werr(ctx, LDM_ERR_IO, af->path, "cannot rename %s to the target: %s", af->tmp, strerror(errno));
    ldm_atomic_abort(af);
    return r;
}

LDM_API void ldm_atomic_abort(ldm_atomic_file *af) {
    if (af->f) fclose(af->f);
    if (af->tmp) remove(af->tmp); /* after a successful rename there is nothing to remove */
    LDM_FREE(af->tmp);
    LDM_FREE(af->path);
    memset(af, 0, sizeof *af);
}

LDM_API ldm_result ldm_safetensors_write(ldm_ctx *ctx, const char *path, int n, const ldm_named_data *t,
                                         ldm_dtype dtype, int n_meta, const char *const *meta_keys,
                                         const char *const *meta_vals) {
    if (!path) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_safetensors_write: NULL path");
    if (n < 0 || (n > 0 && !t) || n_meta < 0 || (n_meta > 0 && (!meta_keys || !meta_vals)))
        return ldm__werr(ctx, LDM_ERR_INVALID, path, "ldm_safetensors_write: bad arguments (n %d, n_meta %d, or NULL arrays)", n, n_meta);
    if (dtype != LDM_F32 && dtype != LDM_F16 && dtype != LDM_BF16)
        return ldm__werr(ctx, LDM_ERR_INVALID, path, "ldm_safetensors_write: dtype %d is not LDM_F32, LDM_F16 or LDM_BF16", (int)dtype);
    for (int k = 0; k < n_meta; k++)
        if (!meta_keys[k] || !meta_vals[k]) return ldm__werr(ctx, LDM_ERR_INVALID, path, "ldm_safetensors_write: metadata entry %d is NULL", k);
    int esz = (int)ldm_dtype_size(dtype);
    for (int i = 0; i < n; i++) {
        const ldm_named_data *d = &t[i];
        int64_t numel = 1;
        if (!d->name || !d->name[0] || !strcmp(d->name, "__metadata__"))
            return ldm__werr(ctx, LDM_ERR_INVALID, path, "ldm_safetensors_write: tensor %d has an empty, NULL or reserved name", i);
        if (d->ndim < 0 || d->ndim > LDM_MAX_DIMS)
            return ldm__werr(ctx, LDM_ERR_INVALID, path, "ldm_safetensors_write: tensor '%.200s' has rank %d", d->name, d->ndim);
        for (int k = 0; k < d->ndim; k++)
            if (!ldm__mul_ok(numel, d->shape[k], &numel) || numel > (INT64_MAX >> 4))
                return ldm__werr(ctx, LDM_ERR_INVALID, path, "ldm_safetensors_write: tensor '%.200s' has an invalid shape", d->name);
        if (numel > 0 && !d->data) return ldm__werr(ctx, LDM_ERR_INVALID, path, "ldm_safetensors_write: tensor '%.200s' has NULL data", d->name);
    }
    const char **names = (const char **)LDM_MALLOC(sizeof(char *) * (size_t)(LDM__MAX(n, n_meta) + 1));
    if (!names) return ldm__werr(ctx, LDM_ERR_NOMEM, path, "out of memory");
    ldm_result r = LDM_OK;
    for (int pass = 0; pass < 2 && !r; pass++) { /* duplicate tensor names, then metadata keys */
        int cnt = pass ? n_meta : n;
        for (int i = 0; i < cnt; i++) names[i] = pass ? meta_keys[i] : t[i].name;
        qsort(names, (size_t)cnt, sizeof *names, ldm__strptr_cmp);
        for (int i = 1; i < cnt && !r; i++)
            if (!strcmp(names[i - 1], names[i]))
                r = ldm__werr(ctx, LDM_ERR_INVALID, path, "ldm_safetensors_write: %s '%.200s' is given twice", pass ? "metadata key" : "tensor name", names[i]);
    }
    LDM_FREE(names);
    if (r) return r;

    /* header: metadata first, then the tensors in the order given; padded to 8 bytes */
    ldm__hbuf h;
    memset(&h, 0, sizeof h);
    ldm__hb_cstr(&h, "{");
    if (n_meta > 0) {
        ldm__hb_cstr(&h, "\"__metadata__\":{");
        for (int k = 0; k < n_meta; k++) {
            if (k) ldm__hb_cstr(&h, ",");
            ldm__hb_json(&h, meta_keys[k]);
            ldm__hb_cstr(&h, ":");
            ldm__hb_json(&h, meta_vals[k]);
        }
        ldm__hb_cstr(&h, n ? "}," : "}");
    }
    int64_t pos = 0;
    for (int i = 0; i < n; i++) {
        int64_t numel = 1;
        for (int k = 0; k < t[i].ndim; k++) numel *= t[i].shape[k];
        if (i) ldm__hb_cstr(&h, ",");
        ldm__hb_json(&h, t[i].name);
        ldm__hb_cstr(&h, ":{\"dtype\":\"");
        ldm__hb_cstr(&h, ldm_dtype_name(dtype));
        ldm__hb_cstr(&h, "\",\"shape\":[");
        for (int k = 0; k < t[i].ndim; k++) {
            if (k) ldm__hb_cstr(&h, ",");
            ldm__hb_i64(&h, t[i].shape[k]);
        }
        ldm__hb_cstr(&h, "],\"data_offsets\":[");
        ldm__hb_i64(&h, pos);
        ldm__hb_cstr(&h, ",");
        ldm__hb_i64(&h, pos += numel * esz);
        ldm__hb_cstr(&h, "]}");
    }
    ldm__hb_cstr(&h, "}");
    while (!h.oom && h.n % 8) ldm__hb_cstr(&h, " ");
    ldm_atomic_file af;
    unsigned char *buf = (unsigned char *)LDM_MALLOC(1 << 20);
    if (h.oom || !buf) {
        LDM_FREE(h.p); LDM_FREE(buf);
        return ldm__werr(ctx, LDM_ERR_NOMEM, path, "out of memory writing safetensors");
    }
    r = ldm_atomic_begin(ctx, &af, path);
    if (!r) {
        unsigned char len8[8];
        ldm__wr_le(len8, (uint64_t)h.n, 8);
        int bad = fwrite(len8, 1, 8, af.f) != 8 || fwrite(h.p, 1, h.n, af.f) != h.n;
        int64_t chunk = (1 << 20) / esz;
        for (int i = 0; i < n && !bad; i++) {
            int64_t numel = 1;
            for (int k = 0; k < t[i].ndim; k++) numel *= t[i].shape[k];
            for (int64_t done = 0; done < numel && !bad; done += chunk) {
                int64_t cnt = LDM__MIN(chunk, numel - done);
                const float *src = t[i].data + done;
                for (int64_t k = 0; k < cnt; k++) {
                    uint32_t bits;
                    memcpy(&bits, &src[k], 4);
                    if (dtype == LDM_F32) ldm__wr_le(buf + 4 * k, bits, 4);
                    else ldm__wr_le(buf + 2 * k, dtype == LDM_F16 ? ldm_f32_to_f16(src[k]) : ldm_f32_to_bf16(src[k]), 2);
                }
                bad = fwrite(buf, 1, (size_t)(cnt * esz), af.f) != (size_t)(cnt * esz);
            }
        }
        if (bad) {
            r = ldm__werr(ctx, LDM_ERR_IO, path, "cannot write %s: %s (disk full?)", af.tmp, strerror(errno));
            ldm_atomic_abort(&af);
        } else r = ldm_atomic_commit(ctx, &af);
    }
    LDM_FREE(h.p);
    LDM_FREE(buf);
    return r;
}

#ifdef LDM_CUDA
#include "ldm_cuda.cuh" /* the CUDA back end's implementation (nvcc only) */
#endif
#endif /* LDM_TENSOR_IMPLEMENTATION_DONE */
#endif /* LDM_IMPLEMENTATION || LDM_TENSOR_IMPLEMENTATION */

/* ------------------------------------------------------------------------------------------
   Licence: MIT. Copyright (c) 2026 the ldm.h authors.
   ------------------------------------------------------------------------------------------ */
