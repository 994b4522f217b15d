/* test_cuda.c - the CUDA back end against the CPU back end, from the same inputs.

   Every op of lt_ops.h runs on both devices inside one context; the loss sum(out * R) (R a
   fixed random tensor) is back-propagated and the outputs and every input gradient compared.
   The RNG, the optimizer update and the element-wise ops must agree bitwise; reductions and
   GEMMs to float rounding. Also: a realistic GEMM and a conv large enough to be chunked,
   repeatability (a second GPU run is bitwise equal), the arena on the device (rewind, keep),
   gradient clipping and errors. Prints SKIP without LDM_CUDA or without a device. */
#define LDM_IMPLEMENTATION
#include "ldm_test.h"
#include "lt_ops.h"
#include "../ldm_nn.h"

#ifdef LDM_CUDA
#define MAX_IN 5

/* Host copy of a device or host tensor (malloc'd). */
static float *host_of(ldm_ctx *ctx, const ldm_tensor *t) {
    float *h = (float *)malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
    if (h && ldm_to_host(ctx, t, h)) { free(h); return NULL; }
    return h;
}
static float *host_of_raw(ldm_ctx *ctx, float *p, const ldm_tensor *like) {
    ldm_tensor w = ldm_tensor_wrap(p, ldm_shape_of(like), like->device);
    return host_of(ctx, &w);
}
static float *random_host(ldm_ctx *ctx, int64_t n, uint64_t seed, int positive) {
    ldm_rng r;
    r.seed = seed;
    r.offset = 0;
    float *h = (float *)malloc(sizeof(float) * (size_t)(n ? n : 1));
    if (!h) return NULL;
    ldm_rng_normal(ctx, &r, LDM_CPU, h, n, 0.0f, 1.0f);
    if (positive) for (int64_t i = 0; i < n; i++) h[i] = fabsf(h[i]) + 0.25f;
    return h;
}
static int64_t numel_of(ldm_shape s) {
    int64_t n = 1;
    for (int i = 0; i < s.ndim; i++) n *= s.d[i];
    return n;
}

/* Results of one run of a case on one device: outputs then input gradients, host copies. */
typedef struct { int n_out; float *out[LT_MAX_OUT]; int64_t on[LT_MAX_OUT]; float *grad[MAX_IN]; } run_result;
static void run_free(run_result *r) {
    for (int k = 0; k < LT_MAX_OUT; k++) free(r->out[k]);
    for (int k = 0; k < MAX_IN; k++) free(r->grad[k]);
    memset(r, 0, sizeof *r);
}
static int run_on(ldm_ctx *ctx, ldm_device dev, const lt_op *p0, int n_in, const ldm_shape *shapes, float *const *hin,
                  const int *needs_grad, int running, run_result *r) {
    lt_op p = *p0;
    ldm_tensor *in[MAX_IN], *out[LT_MAX_OUT];
    memset(r, 0, sizeof *r);
    ldm_ctx_set_device(ctx, dev);
    for (int k = 0; k < n_in; k++) {
        in[k] = ldm_from_host(ctx, shapes[k], hin[k]);
        if (!in[k]) return 0;
        in[k]->requires_grad = needs_grad[k];
    }
    if (running) { /* eval-mode batch norm: running statistics on this device */
        int64_t C = shapes[0].d[1];
        p.rm = ldm_full(ctx, ldm_shape1(C), 0.1f);
        p.rv = ldm_full(ctx, ldm_shape1(C), 1.5f);
    }
    int n_out = lt_op_run(ctx, &p, n_in, in, out);
    if (!n_out) return 0;
    ldm_tensor *loss = NULL;
    for (int k = 0; k < n_out; k++) {
        float *R = random_host(ctx, out[k]->numel, 1000 + (uint64_t)k, 0);
        ldm_tensor *Rt = R ? ldm_from_host(ctx, ldm_shape_of(out[k]), R) : NULL;
        free(R);
        ldm_tensor *term = ldm_sum_all(ctx, ldm_mul(ctx, out[k], Rt));
        loss = loss ? ldm_add(ctx, loss, term) : term;
        r->out[k] = host_of(ctx, out[k]);
        r->on[k] = out[k]->numel;
    }
    r->n_out = n_out;
    int any = 0;
    for (int k = 0; k < n_in; k++) any |= needs_grad[k];
    if (any && loss && loss->requires_grad && ldm_backward(ctx, loss)) return 0;
    for (int k = 0; k < n_in; k++)
        if (needs_grad[k] && in[k]->grad) r->grad[k] = host_of_raw(ctx, in[k]->grad, in[k]);
    return !ldm_ctx_status(ctx);
}

/* Runs the case on CPU and GPU (and the GPU twice) and compares. tol < 0: bitwise. */
static void check_case(ldm_ctx *ctx, const char *name, const lt_op *p, int n_in, const ldm_shape *shapes, int positive_mask,
                       int nograd_mask, int running, double atol, double rtol) {
    float *hin[MAX_IN];
    int needs_grad[MAX_IN];
    char buf[160];
    run_result rc, rg, rg2;
    for (int k = 0; k < n_in; k++) {
        hin[k] = random_host(ctx, numel_of(shapes[k]), 77 + (uint64_t)k * 13, (positive_mask >> k) & 1);
        needs_grad[k] = !((nograd_mask >> k) & 1);
    }
    int ok = run_on(ctx, LDM_CPU, p, n_in, shapes, hin, needs_grad, running, &rc);
    ldm_step_reset(ctx);
    ok = ok && run_on(ctx, LDM_GPU, p, n_in, shapes, hin, needs_grad, running, &rg);
    ldm_step_reset(ctx);
    ok = ok && run_on(ctx, LDM_GPU, p, n_in, shapes, hin, needs_grad, running, &rg2);
    ldm_step_reset(ctx);
    ldm_ctx_set_device(ctx, LDM_GPU);
    if (!ok) {
        lt_report(0, name, "%s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
    } else {
        int same = rc.n_out == rg.n_out, repeat = 1;
        for (int k = 0; k < rc.n_out && same; k++) {
            snprintf(buf, sizeof buf, "%s: output %d", name, k);
            if (atol < 0) lt_report(memcmp(rc.out[k], rg.out[k], sizeof(float) * (size_t)rc.on[k]) == 0, buf, "differs from the CPU bitwise");
            else lt_close(buf, rg.out[k], rc.out[k], (long)rc.on[k], atol, rtol);
            repeat &= memcmp(rg.out[k], rg2.out[k], sizeof(float) * (size_t)rc.on[k]) == 0;
        }
        for (int k = 0; k < n_in; k++) {
            if (!needs_grad[k]) continue;
            snprintf(buf, sizeof buf, "%s: gradient of input %d", name, k);
            if (!rc.grad[k] || !rg.grad[k]) { lt_report(rc.grad[k] == rg.grad[k], buf, "present on one device only"); continue; }
            int64_t n = numel_of(shapes[k]);
            if (atol < 0) lt_report(memcmp(rc.grad[k], rg.grad[k], sizeof(float) * (size_t)n) == 0, buf, "differs from the CPU bitwise");
            else lt_close(buf, rg.grad[k], rc.grad[k], (long)n, atol, rtol);
            repeat &= memcmp(rg.grad[k], rg2.grad[k], sizeof(float) * (size_t)n) == 0;
        }
        if (!same) lt_report(0, name, "output count %d on the GPU, %d on the CPU", rg.n_out, rc.n_out);
        snprintf(buf, sizeof buf, "%s: a second GPU run is bitwise equal", name);
        lt_report(repeat, buf, "GPU results changed between runs");
    }
    run_free(&rc);
    run_free(&rg);
    run_free(&rg2);
    for (int k = 0; k < n_in; k++) free(hin[k]);
}

#define S1(a) ldm_shape1(a)
#define S2(a, b) ldm_shape2(a, b)
#define S3(a, b, c) ldm_shape3(a, b, c)
#define S4(a, b, c, d) ldm_shape4(a, b, c, d)
#define S5(a, b, c, d, e) ldm_shape5(a, b, c, d, e)
#define TOL 1e-5, 1e-4
#define GEMM_TOL 2e-4, 1e-3
#define EXACT -1.0, 0.0

static lt_op op0(int op) { return lt_op_make(op); }
static lt_op opi(int op, int n, const int *v) { lt_op p = lt_op_make(op); for (int k = 0; k < n; k++) p.i[k] = v[k]; return p; }
static lt_op opf(int op, float a, float b) { lt_op p = lt_op_make(op); p.f[0] = a; p.f[1] = b; return p; }

static void test_ops(ldm_ctx *ctx) {
    ldm_shape s[MAX_IN];
    lt_op p;
    /* element-wise with broadcasting: bitwise */
    s[0] = S4(2, 3, 4, 5); s[1] = S3(3, 1, 5);
    check_case(ctx, "add broadcast", (p = op0(LT_ADD), &p), 2, s, 0, 0, 0, EXACT);
    check_case(ctx, "sub broadcast", (p = op0(LT_SUB), &p), 2, s, 0, 0, 0, EXACT);
    s[1] = S4(1, 3, 1, 1);
    check_case(ctx, "mul broadcast", (p = op0(LT_MUL), &p), 2, s, 0, 0, 0, EXACT);
    s[1] = S1(5);
    check_case(ctx, "div broadcast", (p = op0(LT_DIV), &p), 2, s, 2, 0, 0, EXACT);
    s[0] = S2(64, 1000);
    check_case(ctx, "affine", (p = opf(LT_AFFINE, 1.5f, -0.3f), &p), 1, s, 0, 0, 0, EXACT);
    check_case(ctx, "square", (p = op0(LT_SQUARE), &p), 1, s, 0, 0, 0, EXACT);
    check_case(ctx, "relu", (p = op0(LT_RELU), &p), 1, s, 0, 0, 0, EXACT);
    check_case(ctx, "leaky relu", (p = opf(LT_LEAKY, 0.1f, 0), &p), 1, s, 0, 0, 0, EXACT);
    check_case(ctx, "clamp", (p = opf(LT_CLAMP, -0.5f, 0.5f), &p), 1, s, 0, 0, 0, EXACT);
    check_case(ctx, "abs", (p = op0(LT_ABS), &p), 1, s, 0, 0, 0, EXACT);
    check_case(ctx, "sqrt", (p = op0(LT_SQRT), &p), 1, s, 1, 0, 0, TOL);
    check_case(ctx, "pow 2", (p = opf(LT_POW, 2.0f, 0), &p), 1, s, 0, 0, 0, EXACT);
    check_case(ctx, "pow -0.5", (p = opf(LT_POW, -0.5f, 0), &p), 1, s, 1, 0, 0, TOL);
    check_case(ctx, "pow 1.7", (p = opf(LT_POW, 1.7f, 0), &p), 1, s, 1, 0, 0, TOL);
    check_case(ctx, "exp", (p = op0(LT_EXP), &p), 1, s, 0, 0, 0, TOL);
    check_case(ctx, "log", (p = op0(LT_LOG), &p), 1, s, 1, 0, 0, TOL);
    check_case(ctx, "sigmoid", (p = op0(LT_SIGMOID), &p), 1, s, 0, 0, 0, TOL);
    check_case(ctx, "silu", (p = op0(LT_SILU), &p), 1, s, 0, 0, 0, TOL);
    check_case(ctx, "tanh", (p = op0(LT_TANH), &p), 1, s, 0, 0, 0, TOL);
    { int v[1] = {0}; check_case(ctx, "gelu erf", (p = opi(LT_GELU, 1, v), &p), 1, s, 0, 0, 0, TOL); }
    { int v[1] = {1}; check_case(ctx, "gelu tanh", (p = opi(LT_GELU, 1, v), &p), 1, s, 0, 0, 0, TOL); }
    check_case(ctx, "softplus", (p = opf(LT_SOFTPLUS, 1.0f, 20.0f), &p), 1, s, 0, 0, 0, TOL);
    check_case(ctx, "softplus beta 2 threshold 1", (p = opf(LT_SOFTPLUS, 2.0f, 1.0f), &p), 1, s, 0, 0, 0, TOL);
    check_case(ctx, "sin", (p = op0(LT_SIN), &p), 1, s, 0, 0, 0, TOL);
    check_case(ctx, "cos", (p = op0(LT_COS), &p), 1, s, 0, 0, 0, TOL);
    /* reductions (one thread per output and one block per output) */
    s[0] = S4(2, 3, 4, 5);
    { int v[2] = {LDM_DIM(1) | LDM_DIM(3), 0}; check_case(ctx, "sum dims 1,3", (p = opi(LT_SUM, 2, v), &p), 1, s, 0, 0, 0, TOL); }
    { int v[2] = {LDM_DIM(0), 1}; check_case(ctx, "mean dim 0 keepdim", (p = opi(LT_MEAN, 2, v), &p), 1, s, 0, 0, 0, TOL); }
    s[0] = S2(300, 1000);
    check_case(ctx, "sum_all 300000", (p = op0(LT_SUM_ALL), &p), 1, s, 0, 0, 0, 1e-3, 1e-4);
    check_case(ctx, "mean_all 300000", (p = op0(LT_MEAN_ALL), &p), 1, s, 0, 0, 0, TOL);
    { int v[2] = {LDM_DIM(1), 0}; check_case(ctx, "sum rows of 1000", (p = opi(LT_SUM, 2, v), &p), 1, s, 0, 0, 0, 1e-3, 1e-4); }
    { int v[2] = {LDM_DIM(0), 0}; check_case(ctx, "sum columns of 300", (p = opi(LT_SUM, 2, v), &p), 1, s, 0, 0, 0, 1e-3, 1e-4); }
    /* GEMM */
    s[0] = S3(2, 17, 33); s[1] = S2(33, 9);
    { int v[2] = {0, 0}; check_case(ctx, "matmul batched x shared", (p = opi(LT_MATMUL, 2, v), &p), 2, s, 0, 0, 0, GEMM_TOL); }
    s[0] = S3(2, 33, 17); s[1] = S3(2, 9, 33);
    { int v[2] = {1, 1}; check_case(ctx, "matmul trans_a trans_b", (p = opi(LT_MATMUL, 2, v), &p), 2, s, 0, 0, 0, GEMM_TOL); }
    s[0] = S4(2, 3, 17, 33); s[1] = S3(3, 33, 9);
    { int v[2] = {0, 0}; check_case(ctx, "matmul 4-D x 3-D (broadcast batch)", (p = opi(LT_MATMUL, 2, v), &p), 2, s, 0, 0, 0, GEMM_TOL); }
    s[0] = S4(2, 1, 33, 17); s[1] = S4(1, 3, 9, 33);
    { int v[2] = {1, 1}; check_case(ctx, "matmul 4-D size-1 batches, trans_a trans_b", (p = opi(LT_MATMUL, 2, v), &p), 2, s, 0, 0, 0, GEMM_TOL); }
    /* attention: lengths off the 16/32-row tiles, D across 32-column chunks, Sq != Sk, heads */
    s[0] = S3(2, 40, 120); s[1] = S3(2, 45, 120); s[2] = S3(2, 45, 120);
    { int v[1] = {3}; check_case(ctx, "attention 3 heads D40 Sq40 Sk45", (p = opi(LT_ATTENTION, 1, v), &p), 3, s, 0, 0, 0, GEMM_TOL); }
    s[0] = S3(1, 20, 64); s[1] = S3(1, 70, 64); s[2] = S3(1, 70, 64);
    { int v[1] = {8}; check_case(ctx, "attention 8 heads D8 Sq20 Sk70", (p = opi(LT_ATTENTION, 1, v), &p), 3, s, 0, 0, 0, GEMM_TOL); }
    s[0] = S3(2, 33, 64);
    { int v[1] = {1}; check_case(ctx, "attention q = k = v one tensor, D64", (p = opi(LT_ATTENTION, 1, v), &p), 1, s, 0, 0, 0, GEMM_TOL); }
    s[0] = S3(1, 17, 48); s[1] = S3(1, 9, 48); s[2] = S3(1, 9, 48);
    { int v[1] = {2}; check_case(ctx, "attention v constant", (p = opi(LT_ATTENTION, 1, v), &p), 3, s, 0, 4, 0, GEMM_TOL); }
    s[0] = S3(4, 7, 64); s[1] = S2(32, 64); s[2] = S1(32);
    check_case(ctx, "linear", (p = op0(LT_LINEAR), &p), 3, s, 0, 0, 0, GEMM_TOL);
    /* convolution */
    s[0] = S4(2, 3, 9, 9); s[1] = S4(4, 3, 3, 3); s[2] = S1(4);
    { int v[2] = {1, 1}; check_case(ctx, "conv2d 3x3 pad 1", (p = opi(LT_CONV2D, 2, v), &p), 3, s, 0, 0, 0, GEMM_TOL); }
    { int v[2] = {2, 0}; check_case(ctx, "conv2d stride 2 no bias", (p = opi(LT_CONV2D, 2, v), &p), 2, s, 0, 0, 0, GEMM_TOL); }
    { int v[6] = {2, 1, 0, 1, 1, 0}; check_case(ctx, "conv2d_ex asymmetric", (p = opi(LT_CONV2D_EX, 6, v), &p), 3, s, 0, 0, 0, GEMM_TOL); }
    s[0] = S4(2, 8, 5, 5); s[1] = S4(6, 8, 1, 1); s[2] = S1(6);
    { int v[2] = {1, 0}; check_case(ctx, "conv2d 1x1 (direct GEMM)", (p = opi(LT_CONV2D, 2, v), &p), 3, s, 0, 0, 0, GEMM_TOL); }
    s[0] = S5(1, 2, 4, 6, 6); s[1] = S5(3, 2, 3, 3, 3); s[2] = S1(3);
    { int v[2] = {1, 1}; check_case(ctx, "conv3d 3x3x3 pad 1", (p = opi(LT_CONV3D, 2, v), &p), 3, s, 0, 0, 0, GEMM_TOL); }
    { int v[9] = {1, 2, 2, 1, 0, 0, 1, 1, 0}; check_case(ctx, "conv3d_ex causal pads", (p = opi(LT_CONV3D_EX, 9, v), &p), 3, s, 0, 0, 0, GEMM_TOL); }
    /* normalisation */
    s[0] = S4(2, 8, 5, 5); s[1] = S1(8); s[2] = S1(8);
    p = op0(LT_GROUP_NORM); p.i[0] = 4; p.f[0] = 1e-5f;
    check_case(ctx, "group_norm affine", &p, 3, s, 0, 0, 0, TOL);
    check_case(ctx, "group_norm plain", &p, 1, s, 0, 0, 0, TOL);
    p = op0(LT_GROUP_NORM_SILU); p.i[0] = 4; p.f[0] = 1e-5f;
    check_case(ctx, "group_norm_silu affine", &p, 3, s, 0, 0, 0, TOL);
    check_case(ctx, "group_norm_silu weight only", &p, 2, s, 0, 0, 0, TOL);
    check_case(ctx, "group_norm_silu plain", &p, 1, s, 0, 0, 0, TOL);
    check_case(ctx, "group_norm_silu constant weight and bias", &p, 3, s, 0, 6, 0, TOL);
    s[3] = S4(6, 8, 3, 3); s[4] = S1(6);
    p = op0(LT_GN_SILU_CONV); p.i[0] = 4; p.f[0] = 1e-5f; p.i[1] = p.i[2] = p.i[3] = 1; p.i[6] = p.i[7] = p.i[8] = p.i[9] = 1;
    check_case(ctx, "group_norm_silu_conv (conv input recomputed)", &p, 5, s, 0, 0, 0, GEMM_TOL);
    s[0] = S4(4, 3, 5, 5); s[1] = S1(3); s[2] = S1(3);
    p = op0(LT_BATCH_NORM); p.i[0] = 1; p.f[0] = 0.1f; p.f[1] = 1e-5f;
    check_case(ctx, "batch_norm training", &p, 3, s, 0, 0, 0, TOL);
    p.i[0] = 0;
    check_case(ctx, "batch_norm eval", &p, 3, s, 0, 0, 1, TOL);
    s[0] = S3(3, 5, 16); s[1] = S1(16); s[2] = S1(16);
    p = op0(LT_LAYER_NORM); p.i[0] = 1; p.f[0] = 1e-5f;
    check_case(ctx, "layer_norm", &p, 3, s, 0, 0, 0, TOL);
    s[1] = S2(5, 16); s[2] = S2(5, 16); p.i[0] = 2;
    check_case(ctx, "layer_norm 2 dims", &p, 3, s, 0, 0, 0, TOL);
    s[0] = S3(2, 7, 33);
    { int v[1] = {2}; check_case(ctx, "softmax last dim", (p = opi(LT_SOFTMAX, 1, v), &p), 1, s, 0, 0, 0, TOL); }
    { int v[1] = {1}; check_case(ctx, "softmax inner dim", (p = opi(LT_SOFTMAX, 1, v), &p), 1, s, 0, 0, 0, TOL); }
    /* spatial: gradients of pooling/upsampling are bitwise (same adds in the same order) */
    s[0] = S4(2, 3, 5, 7);
    { int v[3] = {1, 2, 2}; check_case(ctx, "upsample 2x", (p = opi(LT_UPSAMPLE, 3, v), &p), 1, s, 0, 0, 0, EXACT); }
    s[0] = S5(1, 2, 2, 3, 3);
    { int v[3] = {2, 2, 3}; check_case(ctx, "upsample 3-D", (p = opi(LT_UPSAMPLE, 3, v), &p), 1, s, 0, 0, 0, EXACT); }
    s[0] = S4(2, 3, 8, 9);
    { int v[3] = {3, 2, 1}; check_case(ctx, "avg_pool 3 stride 2 pad 1", (p = opi(LT_AVG_POOL, 3, v), &p), 1, s, 0, 0, 0, TOL); }
    { int v[3] = {3, 2, 1}; check_case(ctx, "max_pool 3 stride 2 pad 1", (p = opi(LT_MAX_POOL, 3, v), &p), 1, s, 0, 0, 0, EXACT); }
    { int v[3] = {3, 1, 1}; check_case(ctx, "max_pool overlapping", (p = opi(LT_MAX_POOL, 3, v), &p), 1, s, 0, 0, 0, EXACT); }
    { int v[3] = {2, 2, 0}; check_case(ctx, "max_pool 2", (p = opi(LT_MAX_POOL, 3, v), &p), 1, s, 0, 0, 0, EXACT); }
    /* shape ops: strided copies, bitwise */
    s[0] = S4(2, 3, 4, 5);
    { int v[5] = {2, 1, 2, 0, 3}; p = opi(LT_PAD, 5, v); p.f[0] = 0.5f; check_case(ctx, "pad", &p, 1, s, 0, 0, 0, EXACT); }
    { int v[4] = {0, 2, 3, 1}; check_case(ctx, "permute", (p = opi(LT_PERMUTE, 4, v), &p), 1, s, 0, 0, 0, EXACT); }
    { int v[2] = {1, 3}; check_case(ctx, "transpose", (p = opi(LT_TRANSPOSE, 2, v), &p), 1, s, 0, 0, 0, EXACT); }
    { int v[3] = {3, 1, 2}; check_case(ctx, "slice", (p = opi(LT_SLICE, 3, v), &p), 1, s, 0, 0, 0, EXACT); }
    { int v[5] = {3, 3, 1, 3, 1}; check_case(ctx, "split", (p = opi(LT_SPLIT, 5, v), &p), 1, s, 0, 0, 0, EXACT); }
    { int v[2] = {2, 2}; check_case(ctx, "chunk", (p = opi(LT_CHUNK, 2, v), &p), 1, s, 0, 0, 0, EXACT); }
    check_case(ctx, "copy", (p = op0(LT_COPY), &p), 1, s, 0, 0, 0, EXACT);
    p = op0(LT_RESHAPE); p.shape = S2(6, -1);
    check_case(ctx, "reshape", &p, 1, s, 0, 0, 0, EXACT);
    s[1] = S4(2, 1, 4, 5); s[2] = S4(2, 2, 4, 5);
    { int v[1] = {1}; check_case(ctx, "concat", (p = opi(LT_CONCAT, 1, v), &p), 3, s, 0, 0, 0, EXACT); }
    /* misc */
    p = op0(LT_DROPOUT); p.f[0] = 0.3f; p.i[0] = 1; p.rng.seed = 5; p.rng.offset = 12;
    s[0] = S2(33, 101);
    check_case(ctx, "dropout (the same mask)", &p, 1, s, 0, 0, 0, EXACT);
    {
        static const int64_t idx[8] = {3, 1, 3, 7, 3, 0, 9, 1};
        p = op0(LT_EMBEDDING); p.idx = idx; p.n_idx = 8;
        s[0] = S2(10, 16);
        check_case(ctx, "embedding (repeated indices)", &p, 1, s, 0, 0, 0, EXACT);
    }
    s[0] = S4(2, 8, 6, 6); s[1] = S4(8, 8, 3, 3); s[2] = S1(8); s[3] = S1(8); s[4] = S1(8);
    p = op0(LT_GRAPH); p.i[0] = 4; p.f[0] = 1e-6f;
    check_case(ctx, "graph (ResnetBlock-like)", &p, 5, s, 0, 0, 0, GEMM_TOL);
    /* realistic sizes: an attention-sized GEMM and a conv whose columns come in chunks (values
       and gradients are sums of hundreds to tens of thousands of products: float rounding of
       different summation orders, relative to those magnitudes) */
    s[0] = S3(2, 256, 320); s[1] = S2(320, 512);
    { int v[2] = {0, 0}; check_case(ctx, "matmul 2x256x320x512", (p = opi(LT_MATMUL, 2, v), &p), 2, s, 0, 0, 0, 1e-2, 1e-3); }
    s[0] = S4(1, 64, 192, 192); s[1] = S4(8, 64, 3, 3); s[2] = S1(8);
    { int v[2] = {1, 1}; check_case(ctx, "conv2d 64->8 on 192x192 (chunked im2col)", (p = opi(LT_CONV2D, 2, v), &p), 3, s, 0, 0, 0, 1e-2, 1e-3); }
}

/* ldm_argmin (the VQ quantizer's nearest codebook row): indices are integers, so the GPU must
   give the CPU's exactly, ties to the first index and NaN first included. */
static void test_argmin(ldm_ctx *ctx) {
    static const int64_t dims[6][2] = {{1, 1}, {7, 31}, {300, 33}, {65, 1000}, {5, 8192}, {3, 64}};
    for (int c = 0; c < 6; c++) {
        int64_t R = dims[c][0], K = dims[c][1];
        float *h = random_host(ctx, R * K, 500 + (uint64_t)c, 0);
        int64_t *ic = (int64_t *)malloc(sizeof(int64_t) * (size_t)R), *ig = (int64_t *)malloc(sizeof(int64_t) * (size_t)R);
        if (!h || !ic || !ig) { lt_report(0, "argmin", "out of memory"); free(h); free(ic); free(ig); return; }
        for (int64_t i = 0; i < R * K; i++) h[i] = floorf(h[i] * 2.0f) * 0.5f; /* few distinct values: many ties */
        if (c == 2) { h[5 * K + 20] = (float)NAN; h[5 * K + 30] = (float)NAN; h[9 * K + 3] = -(float)INFINITY; h[9 * K + 31] = -(float)INFINITY; }
        if (c == 5) for (int64_t k = 0; k < K; k++) h[K + k] = -1.0f;     /* a row of equal values */
        ldm_ctx_set_device(ctx, LDM_CPU);
        ldm_tensor *tc = ldm_from_host(ctx, ldm_shape2(R, K), h);
        ldm_ctx_set_device(ctx, LDM_GPU);
        ldm_tensor *tg = ldm_from_host(ctx, ldm_shape2(R, K), h);
        int ok = tc && tg && ldm_argmin(ctx, tc, ic) == LDM_OK && ldm_argmin(ctx, tg, ig) == LDM_OK &&
                 memcmp(ic, ig, sizeof(int64_t) * (size_t)R) == 0;
        if (c == 2) ok = ok && ic[5] == 20 && ic[9] == 3;
        if (c == 5) ok = ok && ic[1] == 0;
        char name[96];
        snprintf(name, sizeof name, "argmin %lld rows of %lld (ties, NaN, -inf): GPU indices equal the CPU's", (long long)R, (long long)K);
        long first = -1;
        for (int64_t r = 0; r < R && first < 0; r++) if (ic[r] != ig[r]) first = (long)r;
        lt_report(ok, name, "first difference at row %ld (cpu %lld gpu %lld) %s", first, first >= 0 ? (long long)ic[first] : 0LL,
                  first >= 0 ? (long long)ig[first] : 0LL, ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
        free(h); free(ic); free(ig);
        ldm_step_reset(ctx);
    }
}

static void test_rng(ldm_ctx *ctx) {
    const int64_t n = 100003; /* ends mid-block */
    float *c = (float *)malloc(sizeof(float) * n), *g = (float *)malloc(sizeof(float) * n);
    float *d = (float *)ldm_arena_alloc(ctx, LDM_GPU, sizeof(float) * n);
    if (!c || !g || !d) { lt_report(0, "rng", "out of memory"); free(c); free(g); return; }
    for (int normal = 0; normal < 2; normal++) {
        ldm_rng a = {7, 12}, b = {7, 12};
        if (normal) { ldm_rng_normal(ctx, &a, LDM_CPU, c, n, 0.5f, 2.0f); ldm_rng_normal(ctx, &b, LDM_GPU, d, n, 0.5f, 2.0f); }
        else { ldm_rng_uniform(ctx, &a, LDM_CPU, c, n, -1.0f, 3.0f); ldm_rng_uniform(ctx, &b, LDM_GPU, d, n, -1.0f, 3.0f); }
        ldm_tensor w = ldm_tensor_wrap(d, ldm_shape1(n), LDM_GPU);
        int ok = ldm_to_host(ctx, &w, g) == LDM_OK && memcmp(c, g, sizeof(float) * n) == 0 && a.offset == b.offset;
        long first = -1;
        for (long i = 0; i < n && first < 0; i++) if (c[i] != g[i]) first = i;
        lt_report(ok, normal ? "rng normal: GPU draws equal the CPU's bitwise" : "rng uniform: GPU draws equal the CPU's bitwise",
                  "first difference at %ld (cpu %.9g gpu %.9g)%s", first, first >= 0 ? c[first] : 0.0, first >= 0 ? g[first] : 0.0,
                  ldm_ctx_error(ctx));
    }
    free(c);
    free(g);
    ldm_step_reset(ctx);
}

static void test_arena(ldm_ctx *ctx) {
    ldm_ctx_set_device(ctx, LDM_GPU);
    ldm_mark m = ldm_arena_mark(ctx);
    float h[6] = {1, 2, 3, 4, 5, 6}, back[6] = {0};
    ldm_tensor *junk = ldm_zeros(ctx, ldm_shape1(1 << 20));
    ldm_tensor *x = ldm_from_host(ctx, ldm_shape2(2, 3), h);
    ldm_tensor *k = ldm_arena_keep(ctx, m, x);
    int ok = junk && k && k->device == LDM_GPU && ldm_to_host(ctx, k, back) == LDM_OK && memcmp(h, back, sizeof h) == 0;
    lt_report(ok, "arena_keep moves a device tensor down its arena", "%s", ldm_ctx_error(ctx));
    lt_report(ldm_arena_used(ctx, LDM_GPU) < ((size_t)1 << 20), "arena_keep released the device memory above it", "used %zu",
              ldm_arena_used(ctx, LDM_GPU));
    ldm_arena_rewind(ctx, m);
    lt_report(ldm_arena_used(ctx, LDM_GPU) == m.used[LDM_GPU], "arena_rewind rewinds the device arena", "used %zu",
              ldm_arena_used(ctx, LDM_GPU));
    ldm_step_reset(ctx);
}

/* Optimizer steps and clipping: CPU and GPU registries with the same values. */
static void test_optim(ldm_ctx *ctx) {
    static const ldm_optim_type types[3] = {LDM_OPTIM_ADAM, LDM_OPTIM_ADAMW, LDM_OPTIM_SGD};
    static const char *names[3] = {"adam (l2 weight decay)", "adamw", "sgd momentum nesterov weight decay"};
    const int64_t n0 = 1003, n1 = 37;
    float *h0 = random_host(ctx, n0, 11, 0), *h1 = random_host(ctx, n1, 12, 0);
    for (int t = 0; t < 3; t++) {
        ldm_nn_params *P[2] = {NULL, NULL};
        ldm_nn_optim *o[2] = {NULL, NULL};
        float *res[2] = {NULL, NULL}, norm[2] = {0, 0};
        for (int dv = 0; dv < 2; dv++) {
            ldm_device dev = dv ? LDM_GPU : LDM_CPU;
            ldm_ctx_set_device(ctx, dev);
            if (ldm_nn_params_create(ctx, &P[dv], dev)) break;
            ldm_tensor *a = ldm_nn_param(P[dv], "a", ldm_shape1(n0), ldm_nn_init_const(0.0f));
            ldm_tensor *b = ldm_nn_param(P[dv], "b", ldm_shape1(n1), ldm_nn_init_const(0.0f));
            if (ldm_nn_params_alloc(ctx, P[dv]) || ldm_nn_copy_from_host(ctx, a, h0) || ldm_nn_copy_from_host(ctx, b, h1)) break;
            ldm_nn_optim_config c = ldm_nn_optim_defaults(types[t], 1e-2);
            c.weight_decay = 0.05;
            if (types[t] == LDM_OPTIM_SGD) { c.momentum = 0.9; c.nesterov = 1; }
            if (ldm_nn_optim_create(ctx, &o[dv], P[dv], &c, 0, NULL)) break;
            for (int step = 0; step < 3; step++) {
                float *r0 = random_host(ctx, n0, 100 + (uint64_t)step, 0), *r1 = random_host(ctx, n1, 200 + (uint64_t)step, 0);
                ldm_tensor *R0 = ldm_from_host(ctx, ldm_shape1(n0), r0), *R1 = ldm_from_host(ctx, ldm_shape1(n1), r1);
                free(r0);
                free(r1);
                ldm_tensor *loss = ldm_add(ctx, ldm_sum_all(ctx, ldm_mul(ctx, ldm_square(ctx, a), R0)), ldm_sum_all(ctx, ldm_mul(ctx, b, R1)));
                if (!loss || ldm_backward(ctx, loss)) break;
                if (step == 2 && ldm_nn_optim_clip_grad_norm(ctx, o[dv], 5.0f, &norm[dv])) break;
                if (ldm_nn_optim_step(ctx, o[dv])) break;
                ldm_nn_optim_zero_grad(ctx, o[dv]);
                ldm_step_reset(ctx);
            }
            res[dv] = (float *)malloc(sizeof(float) * (size_t)(n0 + n1));
            if (res[dv] && !ldm_ctx_status(ctx)) {
                ldm_to_host(ctx, a, res[dv]);
                ldm_to_host(ctx, b, res[dv] + n0);
            }
        }
        char buf[128];
        snprintf(buf, sizeof buf, "optimizer %s: parameters after 3 steps", names[t]);
        if (ldm_ctx_status(ctx) || !res[0] || !res[1]) { lt_report(0, buf, "%s", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); }
        else {
            /* clipping rescales by a float from a double sum whose order differs: allow for it */
            lt_close(buf, res[1], res[0], (long)(n0 + n1), 1e-6, 1e-5);
            snprintf(buf, sizeof buf, "optimizer %s: clip_grad_norm total norm", names[t]);
            lt_close(buf, &norm[1], &norm[0], 1, 0.0, 1e-6);
        }
        for (int dv = 0; dv < 2; dv++) { ldm_nn_optim_destroy(o[dv]); ldm_nn_params_destroy(P[dv]); free(res[dv]); }
        ldm_step_reset(ctx);
    }
    /* without clipping the update itself is bitwise */
    {
        ldm_nn_params *P[2] = {NULL, NULL};
        ldm_nn_optim *o[2] = {NULL, NULL};
        float *res[2] = {NULL, NULL};
        for (int dv = 0; dv < 2; dv++) {
            ldm_device dev = dv ? LDM_GPU : LDM_CPU;
            ldm_ctx_set_device(ctx, dev);
            if (ldm_nn_params_create(ctx, &P[dv], dev)) break;
            ldm_tensor *a = ldm_nn_param(P[dv], "a", ldm_shape1(n0), ldm_nn_init_const(0.0f));
            if (ldm_nn_params_alloc(ctx, P[dv]) || ldm_nn_copy_from_host(ctx, a, h0)) break;
            ldm_nn_optim_config c = ldm_nn_optim_defaults(LDM_OPTIM_ADAMW, 3e-3);
            if (ldm_nn_optim_create(ctx, &o[dv], P[dv], &c, 0, NULL)) break;
            for (int step = 0; step < 4; step++) {
                float *r0 = random_host(ctx, n0, 300 + (uint64_t)step, 0);
                ldm_tensor *R0 = ldm_from_host(ctx, ldm_shape1(n0), r0);
                free(r0);
                if (ldm_backward(ctx, ldm_sum_all(ctx, ldm_mul(ctx, a, R0))) || ldm_nn_optim_step(ctx, o[dv])) break;
                ldm_nn_optim_zero_grad(ctx, o[dv]);
                ldm_step_reset(ctx);
            }
            res[dv] = (float *)malloc(sizeof(float) * (size_t)n0);
            if (res[dv] && !ldm_ctx_status(ctx)) ldm_to_host(ctx, a, res[dv]);
        }
        int ok = !ldm_ctx_status(ctx) && res[0] && res[1] && memcmp(res[0], res[1], sizeof(float) * (size_t)n0) == 0;
        lt_report(ok, "optimizer adamw: the GPU update equals the CPU's bitwise", "%s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
        for (int dv = 0; dv < 2; dv++) { ldm_nn_optim_destroy(o[dv]); ldm_nn_params_destroy(P[dv]); free(res[dv]); }
        ldm_step_reset(ctx);
    }
    free(h0);
    free(h1);
}

static void test_errors(ldm_ctx *ctx) {
    ldm_result r = ldm_cuda_init(ctx, 0);
    lt_report(r == LDM_ERR_INVALID && strstr(ldm_ctx_error(ctx), "already") != NULL, "a second ldm_cuda_init is refused", "got %d: %s",
              r, ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    ldm_ctx *c2;
    if (ldm_ctx_create(&c2, NULL)) return;
    r = ldm_cuda_init(c2, ldm_cuda_available() + 3);
    lt_report(r == LDM_ERR_DEVICE && strstr(ldm_ctx_error(c2), "no CUDA device") != NULL, "an absent device is LDM_ERR_DEVICE",
              "got %d: %s", r, ldm_ctx_error(c2));
    ldm_ctx_destroy(c2);
    lt_report(ldm_cuda_sync(ctx) == LDM_OK, "no device error is pending after the run", "%s", ldm_ctx_error(ctx));
}

/* TF32 GEMMs: close to the FP32 result (10-bit mantissa products), and FP32 comes back. */
static void test_tf32(ldm_ctx *ctx) {
    const int64_t M = 64, K = 192, N = 48;
    float *ha = random_host(ctx, M * K, 71, 0), *hb = random_host(ctx, K * N, 72, 0);
    float *r32 = NULL, *r19 = NULL, *again = NULL;
    ldm_ctx_set_device(ctx, LDM_GPU);
    ldm_tensor *a = ldm_from_host(ctx, ldm_shape2(M, K), ha), *b = ldm_from_host(ctx, ldm_shape2(K, N), hb);
    ldm_tensor *c = ldm_matmul(ctx, a, b, 0, 0);
    if (c) r32 = host_of(ctx, c);
    ldm_cuda_set_tf32(ctx, 1);
    c = ldm_matmul(ctx, a, b, 0, 0);
    if (c) r19 = host_of(ctx, c);
    ldm_cuda_set_tf32(ctx, 0);
    c = ldm_matmul(ctx, a, b, 0, 0);
    if (c) again = host_of(ctx, c);
    if (!r32 || !r19 || !again) lt_report(0, "tf32 matmul", "%s", ldm_ctx_error(ctx));
    else {
        double num = 0, den = 0;
        for (int64_t i = 0; i < M * N; i++) { num += (r19[i] - r32[i]) * (double)(r19[i] - r32[i]); den += (double)r32[i] * r32[i]; }
        double rel = sqrt(num / den);
        lt_report(rel < 4e-3, "tf32 matmul is within TF32 rounding of FP32", "relative error %.3g", rel);
        printf("     tf32 relative error %.3g\n", rel);
        lt_report(!memcmp(r32, again, sizeof(float) * (size_t)(M * N)), "ldm_cuda_set_tf32(ctx, 0) restores FP32 GEMMs (bitwise)", "differs");
    }
    free(ha); free(hb); free(r32); free(r19); free(again);
    ldm_step_reset(ctx);
    /* K = 0: C = beta C through both back ends (cuBLAS is not called) */
    float hc[6 * 10], want[6 * 10];
    for (int i = 0; i < 60; i++) hc[i] = want[i] = (float)i - 20.5f;
    ldm_tensor *dc = ldm_from_host(ctx, ldm_shape2(6, 10), hc);
    if (!dc) { lt_report(0, "sgemm K=0", "%s", ldm_ctx_error(ctx)); return; }
    ctx->be[LDM_CPU]->sgemm(ctx, 0, 0, 5, 7, 0, 1.0f, NULL, 1, NULL, 7, 0.5f, want, 10);
    ctx->be[LDM_GPU]->sgemm(ctx, 0, 0, 5, 7, 0, 1.0f, NULL, 1, NULL, 7, 0.5f, dc->data, 10);
    float *got = host_of(ctx, dc);
    lt_report(got && !memcmp(got, want, sizeof want), "sgemm with K = 0 scales C by beta inside its leading dimension", "%s",
              ldm_ctx_error(ctx));
    free(got);
    ldm_step_reset(ctx);
}

#ifdef LDM_CUDA_EMULATOR
/* Under the emulator: every kernel of ldm_cuda.cuh ran at least once. */
static void test_coverage(void) {
    FILE *f = fopen("../ldm_cuda.cuh", "rb");
    if (!f) { lt_report(0, "kernel coverage", "cannot open ../ldm_cuda.cuh"); return; }
    char line[1024];
    int n = 0, missed = 0;
    while (fgets(line, sizeof line, f)) {
        char *g = strstr(line, "__global__ void ");
        if (!g) continue;
        char name[128];
        if (sscanf(g + 16, "%127[A-Za-z0-9_]", name) != 1) continue;
        n++;
        if (!ldm_emu_launch_count(name)) { printf("     never launched: %s\n", name); missed++; }
    }
    fclose(f);
    lt_report(n > 30 && !missed, "every kernel of ldm_cuda.cuh was launched", "%d of %d never launched", missed, n);
}
#endif
#endif

int main(void) {
#ifndef LDM_CUDA
    printf("SKIP test_cuda: built without LDM_CUDA\n");
    return lt_finish("test_cuda");
#else
    if (!ldm_cuda_available()) {
        printf("SKIP test_cuda: no CUDA device\n");
        return lt_finish("test_cuda");
    }
    ldm_ctx *ctx;
    ldm_settings st;
    memset(&st, 0, sizeof st);
    st.seed = 1;
    st.arena_bytes = (size_t)1 << 30;
    if (ldm_ctx_create(&ctx, &st)) { printf("FAIL test_cuda: no context\n"); return 1; }
    if (ldm_cuda_init(ctx, 0)) {
        printf("FAIL test_cuda: ldm_cuda_init: %s\n", ldm_ctx_error(ctx));
        ldm_ctx_destroy(ctx);
        return 1;
    }
    printf("device: %s\n", ldm_cuda_device_name(ctx));
    test_rng(ctx);
    test_arena(ctx);
    test_ops(ctx);
    test_argmin(ctx);
    test_optim(ctx);
    test_tf32(ctx);
    test_errors(ctx);
    ldm_ctx_destroy(ctx);
#ifdef LDM_CUDA_EMULATOR
    test_coverage();
#endif
    return lt_finish("test_cuda");
#endif
}
