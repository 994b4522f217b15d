/* ldm_attention: the flash-style op against PyTorch (tests/ref/attn_ref.py ->
   tests/fixtures/attn_ref.safetensors: output and q/k/v gradients over block-edge lengths,
   Sq != Sk, 1/2/8 heads, D > 128), against the matmul/softmax composite (which also exercises
   4-D batched matmul), with q, k, v one tensor or slices of one, and across thread counts.
   `test_attention bench` times forward and backward against the composite. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime for the timings */
#define LDM_IMPLEMENTATION
#include "ldm_tensor.h"
#include "ldm_test.h"
#include <time.h>

static ldm_ctx *ctx;

static const struct { int B, Sq, Sk, H, D; float scale, amp; } cases[] = {
    {2, 37, 37, 1, 16, 0.0f, 1.0f}, {1, 130, 70, 2, 24, 0.0f, 2.0f}, {1, 20, 150, 8, 8, 0.0f, 3.0f},
    {1, 65, 70, 1, 136, 0.0f, 1.0f}, {1, 140, 140, 2, 20, 0.3f, 2.0f}, {1, 257, 9, 8, 4, 0.0f, 4.0f},
};

static ldm_tensor *hashed(const char *name, int64_t B, int64_t S, int64_t C, float amp, int grad) {
    int64_t n = B * S * C;
    float *h = (float *)malloc(sizeof(float) * (size_t)n);
    lt_hash_uniform(name, h, (long)n);
    for (int64_t i = 0; i < n; i++) h[i] *= amp;
    ldm_tensor *t = ldm_from_host(ctx, ldm_shape3(B, S, C), h);
    free(h);
    t->requires_grad = grad;
    return t;
}

/* The composite: heads split by permute, scores by 4-D matmul, softmax, 4-D matmul back. */
static ldm_tensor *composite(ldm_tensor *q, ldm_tensor *k, ldm_tensor *v, int H, float scale) {
    int64_t B = q->shape[0], Sq = q->shape[1], Sk = k->shape[1], D = q->shape[2] / H;
    if (scale == 0.0f) scale = 1.0f / sqrtf((float)D);
    const int perm[4] = {0, 2, 1, 3};
    ldm_tensor *qh = ldm_permute(ctx, ldm_reshape(ctx, q, ldm_shape4(B, Sq, H, D)), perm);
    ldm_tensor *kh = ldm_permute(ctx, ldm_reshape(ctx, k, ldm_shape4(B, Sk, H, D)), perm);
    ldm_tensor *vh = ldm_permute(ctx, ldm_reshape(ctx, v, ldm_shape4(B, Sk, H, D)), perm);
    ldm_tensor *w = ldm_softmax(ctx, ldm_scale(ctx, ldm_matmul(ctx, qh, kh, 0, 1), scale), 3);
    ldm_tensor *o = ldm_matmul(ctx, w, vh, 0, 0); /* [B, H, Sq, D] */
    return ldm_reshape(ctx, ldm_permute(ctx, o, perm), ldm_shape3(B, Sq, H * D));
}

static void fixture_cases(ldm_weights *fx) {
    char name[64], tag[80];
    for (int c = 0; c < (int)(sizeof cases / sizeof cases[0]); c++) {
        ldm_mark m = ldm_arena_mark(ctx);
        int B = cases[c].B, Sq = cases[c].Sq, Sk = cases[c].Sk, H = cases[c].H, D = cases[c].D;
        snprintf(name, sizeof name, "attn%d.q", c);
        ldm_tensor *q = hashed(name, B, Sq, H * D, cases[c].amp, 1);
        snprintf(name, sizeof name, "attn%d.k", c);
        ldm_tensor *k = hashed(name, B, Sk, H * D, cases[c].amp, 1);
        snprintf(name, sizeof name, "attn%d.v", c);
        ldm_tensor *v = hashed(name, B, Sk, H * D, 1.0f, 1);
        snprintf(name, sizeof name, "attn%d.g", c);
        ldm_tensor *g = hashed(name, B, Sq, H * D, 1.0f, 0);
        ldm_tensor *o = ldm_attention(ctx, q, k, v, H, cases[c].scale);
        LT_CHECK(o != NULL && ldm_backward_from(ctx, o, g->data) == LDM_OK, "attention forward + backward run");
        if (!o) { ldm_ctx_clear_error(ctx); continue; }
        const char *what[4] = {"o", "dq", "dk", "dv"};
        const ldm_tensor *got[4] = {o, q, k, v};
        for (int i = 0; i < 4; i++) {
            snprintf(name, sizeof name, "attn%d.%s", c, what[i]);
            long n = 0;
            float *want = lt_load(ctx, fx, name, &n);
            snprintf(tag, sizeof tag, "attention vs torch: case %d (B%d Sq%d Sk%d H%d D%d) %s", c, B, Sq, Sk, H, D, what[i]);
            if (want && n == got[i]->numel) lt_close(tag, lt_h(ctx, got[i], i > 0), want, n, 2e-5, 1e-4);
            else lt_report(0, tag, "fixture tensor missing or of the wrong size");
            free(want);
        }
        q->grad = k->grad = v->grad = NULL;
        ldm_arena_rewind(ctx, m);
    }
}

/* Self-attention from one tensor three ways: q = k = v the same leaf, and q, k, v slices of
   one [B, S, 3C] leaf; gradients against the composite's. */
static void shared_inputs(void) {
    const int B = 2, S = 150, H = 2, D = 12, C = H * D;
    ldm_mark m = ldm_arena_mark(ctx);
    ldm_tensor *x = hashed("attn.shared.x", B, S, C, 2.0f, 1), *g = hashed("attn.shared.g", B, S, C, 1.0f, 0);
    ldm_tensor *o = ldm_attention(ctx, x, x, x, H, 0.0f);
    ldm_backward_from(ctx, o, g->data);
    float *g1 = (float *)malloc(sizeof(float) * (size_t)x->numel), *o1 = (float *)malloc(sizeof(float) * (size_t)o->numel);
    ldm_to_host(ctx, o, o1);
    ldm_tensor gw = ldm_tensor_wrap(x->grad, ldm_shape_of(x), x->device);
    ldm_to_host(ctx, &gw, g1);
    x->grad = NULL;
    ldm_tensor *oc = composite(x, x, x, H, 0.0f);
    ldm_backward_from(ctx, oc, g->data);
    lt_close("attention q = k = v one tensor: output vs composite", o1, lt_h(ctx, oc, 0), (long)o->numel, 1e-5, 1e-4);
    lt_close("attention q = k = v one tensor: gradient vs composite", g1, lt_h(ctx, x, 1), (long)x->numel, 1e-5, 1e-4);
    x->grad = NULL;

    ldm_tensor *qkv = hashed("attn.shared.qkv", B, S, 3 * C, 2.0f, 1), *part[3];
    ldm_chunk(ctx, qkv, 3, 2, part);
    o = ldm_attention(ctx, part[0], part[1], part[2], H, 0.0f);
    ldm_backward_from(ctx, o, g->data);
    float *g3 = (float *)malloc(sizeof(float) * (size_t)qkv->numel);
    gw = ldm_tensor_wrap(qkv->grad, ldm_shape_of(qkv), qkv->device);
    ldm_to_host(ctx, &gw, g3);
    qkv->grad = NULL;
    ldm_chunk(ctx, qkv, 3, 2, part);
    oc = composite(part[0], part[1], part[2], H, 0.0f);
    ldm_backward_from(ctx, oc, g->data);
    lt_close("attention q, k, v slices of one tensor: gradient vs composite", g3, lt_h(ctx, qkv, 1), (long)qkv->numel, 1e-5, 1e-4);
    qkv->grad = NULL;
    LT_CHECK(ldm_ctx_status(ctx) == LDM_OK, "shared-input attention ran without error");
    free(g1); free(o1); free(g3);
    ldm_arena_rewind(ctx, m);
}

/* Outputs and gradients are bitwise the same for 1 and 2 threads, and no S x S buffer exists:
   the arena grows by far less than the score matrix for a long sequence. B*H >= 8 takes the
   single-pass backward, fewer (b, h) pairs the two-pass one. */
static void threads_and_memory(int B, int S, int H, int D) {
    const int C = H * D;
    char nm[128];
    float *r[2][4];
    for (int t = 0; t < 2; t++) {
        ldm_ctx_set_threads(ctx, t ? 2 : 1);
        ldm_mark m = ldm_arena_mark(ctx);
        ldm_tensor *q = hashed("attn.thr.q", B, S, C, 2.0f, 1), *k = hashed("attn.thr.k", B, S, C, 2.0f, 1);
        ldm_tensor *v = hashed("attn.thr.v", B, S, C, 1.0f, 1), *g = hashed("attn.thr.g", B, S, C, 1.0f, 0);
        ldm_arena_reset_peak(ctx);
        size_t base = ldm_arena_used(ctx, ldm_ctx_device(ctx));
        ldm_tensor *o = ldm_attention(ctx, q, k, v, H, 0.0f);
        ldm_backward_from(ctx, o, g->data);
        size_t grown = ldm_arena_peak(ctx, ldm_ctx_device(ctx)) - base;
        if (t == 0) {
            /* the output, its lse, the gradients of q, k, v and the kernels' scratch: O(S * C) */
            size_t scores = sizeof(float) * (size_t)B * H * S * S, linear = 16 * sizeof(float) * (size_t)B * S * C;
            snprintf(nm, sizeof nm, "attention memory B%d S%d H%d D%d: no S x S scores", B, S, H, D);
            lt_report(grown <= linear && linear < scores, nm, "arena grew %zu bytes (bound %zu); one score matrix is %zu", grown, linear, scores);
        }
        const ldm_tensor *ts[4] = {o, q, k, v};
        for (int i = 0; i < 4; i++) {
            r[t][i] = (float *)malloc(sizeof(float) * (size_t)ts[i]->numel);
            const float *h = lt_h(ctx, ts[i], i > 0);
            memcpy(r[t][i], h, sizeof(float) * (size_t)ts[i]->numel);
        }
        q->grad = k->grad = v->grad = NULL;
        ldm_arena_rewind(ctx, m);
    }
    int same = 1;
    for (int i = 0; i < 4; i++) same &= memcmp(r[0][i], r[1][i], sizeof(float) * (size_t)B * S * C) == 0;
    snprintf(nm, sizeof nm, "attention B%d S%d H%d D%d: 1 and 2 threads agree bitwise (output and gradients)", B, S, H, D);
    lt_report(same, nm, "results differ");
    for (int t = 0; t < 2; t++) for (int i = 0; i < 4; i++) free(r[t][i]);
    ldm_ctx_set_threads(ctx, 2);
}

static void errors(void) {
    ldm_mark m = ldm_arena_mark(ctx);
    ldm_tensor *q = ldm_zeros(ctx, ldm_shape3(1, 4, 6)), *k = ldm_zeros(ctx, ldm_shape3(1, 5, 6)), *v = ldm_zeros(ctx, ldm_shape3(1, 4, 6));
    LT_CHECK(ldm_attention(ctx, q, k, v, 2, 0.0f) == NULL && ldm_ctx_status(ctx) == LDM_ERR_INVALID, "attention: k and v lengths differ -> error");
    ldm_ctx_clear_error(ctx);
    LT_CHECK(ldm_attention(ctx, q, q, q, 4, 0.0f) == NULL && ldm_ctx_status(ctx) == LDM_ERR_INVALID, "attention: channels not divisible by heads -> error");
    ldm_ctx_clear_error(ctx);
    ldm_arena_rewind(ctx, m);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
static double cpu(void) { /* process CPU time: steadier than wall time on a shared machine */
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}
/* Each variant runs twice and the second (warm arena) run is reported. */
static void bench(int H, int S, int D) {
    for (int run = 0; run < 4; run++) {
        int which = run / 2;
        ldm_mark m = ldm_arena_mark(ctx);
        ldm_tensor *q = hashed("b.q", 1, S, H * D, 1.0f, 1), *k = hashed("b.k", 1, S, H * D, 1.0f, 1);
        ldm_tensor *v = hashed("b.v", 1, S, H * D, 1.0f, 1), *g = hashed("b.g", 1, S, H * D, 1.0f, 0);
        ldm_arena_reset_peak(ctx);
        size_t base = ldm_arena_used(ctx, LDM_CPU);
        double t0 = now(), c0 = cpu();
        ldm_tensor *o = which ? composite(q, k, v, H, 0.0f) : ldm_attention(ctx, q, k, v, H, 0.0f);
        double t1 = now(), c1 = cpu();
        ldm_backward_from(ctx, o, g->data);
        double t2 = now(), c2 = cpu();
        if (run % 2 == 1)
            printf("bench B1 H%d S%d D%d %-9s forward %7.1f ms (cpu %7.1f)  backward %7.1f ms (cpu %7.1f)  arena peak +%.1f MiB%s\n",
                   H, S, D, which ? "composite" : "flash", (t1 - t0) * 1e3, (c1 - c0) * 1e3, (t2 - t1) * 1e3, (c2 - c1) * 1e3,
                   (ldm_arena_peak(ctx, LDM_CPU) - base) / 1048576.0, ldm_ctx_status(ctx) ? ldm_ctx_error(ctx) : "");
        q->grad = k->grad = v->grad = NULL;
        ldm_arena_rewind(ctx, m);
    }
}

int main(int argc, char **argv) {
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.threads = 2;
    s.arena_bytes = (size_t)(argc > 1 ? 8192 : 256) << 20;
    if (ldm_ctx_create(&ctx, &s)) { printf("FAIL ctx create\n"); return 1; }
    if (argc > 1 && !strcmp(argv[1], "bench")) {
        if (argc > 2) ldm_ctx_set_threads(ctx, atoi(argv[2]));
        bench(8, 4096, 64);
        bench(1, 4096, 512);
        ldm_ctx_destroy(ctx);
        return 0;
    }
    ldm_weights *fx = NULL;
    if (ldm_weights_open(ctx, &fx, "../tests/fixtures/attn_ref.safetensors")) {
        lt_report(0, "open attn_ref.safetensors", "%s (regenerate with /usr/bin/python3 tests/ref/attn_ref.py)", ldm_ctx_error(ctx));
        ldm_ctx_destroy(ctx);
        return lt_finish("test_attention");
    }
    fixture_cases(fx);
    shared_inputs();
    threads_and_memory(1, 1000, 2, 32);
    threads_and_memory(2, 300, 4, 16);
    errors();
#ifdef LDM_CUDA
    /* the same fixtures on the GPU back end (also under the CPU emulator) */
    if (ldm_cuda_available() && ldm_cuda_init(ctx, 0) == LDM_OK) {
        lt_tag = "[cuda] ";
        fixture_cases(fx);
        shared_inputs();
        lt_tag = "";
    } else printf("SKIP test_attention on CUDA: %s\n", ldm_ctx_status(ctx) ? ldm_ctx_error(ctx) : "no CUDA device");
#endif
    ldm_weights_close(fx);
    ldm_ctx_destroy(ctx);
    return lt_finish("test_attention");
}
