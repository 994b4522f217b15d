/* bench_common.h - what the benchmarks share: the clock, the FLOP counter on a device's kernel
   table, the size of a model's persistent blocks, integer options and finding a python with
   torch. Included by bench/bench_*.c after the ldm_ headers (with LDM_IMPLEMENTATION). */
#ifndef LDM_BENCH_COMMON_H
#define LDM_BENCH_COMMON_H
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- FLOP counter: the device's kernel table with counting entries ------------------------- */
/* struct ldm_backend and ctx->be come from ldm_tensor.h's implementation part, compiled into this
   file. Every op reaches its kernels through that table (the CPU and CUDA convolutions call their
   own GEMM directly, not the table's sgemm), so each call is counted once. */
static const ldm_backend *fc_orig;
static ldm_backend fc_table;
static double fc_flops;
static double fc_conv_macs(const ldm_conv_desc *d) {
    return (double)d->B * (double)d->O * (double)(d->OT * d->OH * d->OW) * (double)d->C * (double)(d->kt * d->kh * d->kw);
}
static void fc_sgemm(ldm_ctx *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                     const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    fc_flops += 2.0 * (double)M * (double)N * (double)K;
    fc_orig->sgemm(ctx, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
static void fc_conv_forward(ldm_ctx *ctx, float *out, const float *inp, const float *w, const float *b, const ldm_conv_desc *d) {
    fc_flops += 2.0 * fc_conv_macs(d);
    fc_orig->conv_forward(ctx, out, inp, w, b, d);
}
static void fc_conv_backward(ldm_ctx *ctx, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                             const float *w, const ldm_conv_desc *d) {
    fc_flops += 2.0 * fc_conv_macs(d) * (double)((dinp != NULL) + (dw != NULL));
    fc_orig->conv_backward(ctx, dinp, dw, db, dout, inp, w, d);
}
/* attention: q k^T and p v forward; the backward recomputes the scores, then dP = dO v^T and
   whichever of dV = p^T dO, dQ = dS k, dK = dS^T q it is asked for */
static void fc_attn_forward(ldm_ctx *ctx, float *out, float *lse, const float *q, const float *k, const float *v, int64_t B,
                            int64_t H, int64_t Sq, int64_t Sk, int64_t D, float scale) {
    fc_flops += 4.0 * (double)B * (double)H * (double)Sq * (double)Sk * (double)D;
    fc_orig->attn_forward(ctx, out, lse, q, k, v, B, H, Sq, Sk, D, scale);
}
static void fc_attn_backward(ldm_ctx *ctx, float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                             const float *q, const float *k, const float *v, int64_t B, int64_t H, int64_t Sq, int64_t Sk,
                             int64_t D, float scale) {
    fc_flops += 2.0 * (double)(2 + (dq != NULL) + (dk != NULL) + (dv != NULL)) * (double)B * (double)H * (double)Sq * (double)Sk * (double)D;
    fc_orig->attn_backward(ctx, dq, dk, dv, dout, out, lse, q, k, v, B, H, Sq, Sk, D, scale);
}
static void fc_install(ldm_ctx *ctx, ldm_device dev) {
    fc_orig = ctx->be[dev];
    fc_table = *fc_orig;
    fc_table.sgemm = fc_sgemm;
    fc_table.conv_forward = fc_conv_forward;
    fc_table.conv_backward = fc_conv_backward;
    fc_table.attn_forward = fc_attn_forward;
    fc_table.attn_backward = fc_attn_backward;
    fc_flops = 0.0;
    ldm_ctx_set_backend(ctx, dev, &fc_table, ldm_ctx_backend_state(ctx, dev));
}
static void fc_remove(ldm_ctx *ctx, ldm_device dev) { ldm_ctx_set_backend(ctx, dev, fc_orig, ldm_ctx_backend_state(ctx, dev)); }

/* bytes of a model's parameters and buffers (and gradients) */
static double block_bytes(const ldm_nn_params *P, int with_grads) {
    int64_t n, t = 0;
    ldm_nn_block(P, LDM_NN_BLOCK_PARAMS, &n); t += n;
    ldm_nn_block(P, LDM_NN_BLOCK_BUFFERS, &n); t += n;
    if (with_grads) { ldm_nn_block(P, LDM_NN_BLOCK_GRADS, &n); t += n; }
    return 4.0 * (double)t;
}

/* an integer option >= lo; prints the error under the program's name */
static int parse_int_opt(const char *prog, const char *flag, const char *v, int lo, int *out) {
    char *end;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || *end || x < lo || x > 1 << 20) {
        fprintf(stderr, "%s: %s needs an integer >= %d, got %s\n", prog, flag, lo, v ? v : "nothing");
        return 1;
    }
    *out = (int)x;
    return 0;
}

/* `given` if set, else the first of $PYTHON, python3, /usr/bin/python3 that imports torch (NULL: none) */
static const char *find_torch_python(const char *given) {
    static char found[256];
    const char *cands[3] = {getenv("PYTHON"), "python3", "/usr/bin/python3"};
    if (given) return given;
    for (int i = 0; i < 3; i++) {
        char cmd[400];
        if (!cands[i] || !cands[i][0]) continue;
        snprintf(cmd, sizeof cmd, "%s -c 'import torch' >/dev/null 2>&1", cands[i]);
        if (system(cmd) == 0) { snprintf(found, sizeof found, "%s", cands[i]); return found; }
    }
    return NULL;
}
#endif
