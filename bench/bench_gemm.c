/* bench_gemm.c - GFLOP/s of ldm_sgemm on square matrices and on the GEMM calls the kl-f4
   autoencoder (ch 128, ch_mult 1,2,4) makes at 256x256 input, plus ldm_conv_forward/backward on
   kl-f4-sized convolutions so the im2col/col2im overhead shows next to the GEMM rate.

   The convolution shapes are the ones ldm's conv issues per SGEMM call: it builds im2col
   columns for chunks of nc = max(64, 4 Mi / K) output positions (~16 MiB of columns), so a
   3x3 conv with C input channels multiplies [O, 9C] x [9C, min(nc, H*W)]; a 1x1 conv without
   stride or padding uses the whole image as N. The backward pass issues dW += dY col^T (NT, K
   = the chunk) and col = W^T dY (TN); leading dimensions are the real ones (dY rows are H*W
   apart). The mid block's attention over 64x64 = 4096 positions with 512 channels adds two
   products (scores and the weighted sum).

   Built by `./build.sh bench`; with -DLDM_BENCH_OPENBLAS (added there when cblas.h exists, with
   -lopenblas) it times cblas_sgemm on the same calls, with the same thread count, and prints
   the ratio per shape and their geometric mean. Threads: LDM_THREADS (default: all cores).
   Every number is the best of several timed runs after one warm-up run. */
#define _POSIX_C_SOURCE 200809L
#define LDM_IMPLEMENTATION
#include "ldm_tensor.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef LDM_BENCH_OPENBLAS
#include <cblas.h>
#endif

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct {
    const char *name;
    int ta, tb;
    int64_t M, N, K, lda, ldb, ldc;
    float beta;
} shape;

/* square, then forward (NN), then backward (NT = weight gradient, TN = input gradient) */
static const shape shapes[] = {
    {"square 512", 0, 0, 512, 512, 512, 512, 512, 512, 0.0f},
    {"square 1024", 0, 0, 1024, 1024, 1024, 1024, 1024, 1024, 0.0f},
    {"square 2048", 0, 0, 2048, 2048, 2048, 2048, 2048, 2048, 0.0f},
    {"enc conv_in 3->128 @256", 0, 0, 128, 65536, 27, 27, 65536, 65536, 1.0f},
    {"3x3 128->128 @256", 0, 0, 128, 3640, 1152, 1152, 3640, 65536, 1.0f},
    {"3x3 128->256 @128", 0, 0, 256, 3640, 1152, 1152, 3640, 16384, 1.0f},
    {"3x3 256->256 @128", 0, 0, 256, 1820, 2304, 2304, 1820, 16384, 1.0f},
    {"3x3 256->512 @64", 0, 0, 512, 1820, 2304, 2304, 1820, 4096, 1.0f},
    {"3x3 512->512 @64", 0, 0, 512, 910, 4608, 4608, 910, 4096, 1.0f},
    {"3x3 512->256 @128 (dec)", 0, 0, 256, 910, 4608, 4608, 910, 16384, 1.0f},
    {"3x3 256->128 @256 (dec)", 0, 0, 128, 1820, 2304, 2304, 1820, 65536, 1.0f},
    {"3x3 128->3 @256 dec conv_out", 0, 0, 3, 3640, 1152, 1152, 3640, 65536, 1.0f},
    {"1x1 128->256 @128 shortcut", 0, 0, 256, 16384, 128, 128, 16384, 16384, 1.0f},
    {"1x1 512->256 @128 shortcut", 0, 0, 256, 16384, 512, 512, 16384, 16384, 1.0f},
    {"1x1 256->128 @256 shortcut", 0, 0, 128, 65536, 256, 256, 65536, 65536, 1.0f},
    {"dW 3x3 128->128 @256", 0, 1, 128, 1152, 3640, 65536, 3640, 1152, 1.0f},
    {"dW 3x3 256->256 @128", 0, 1, 256, 2304, 1820, 16384, 1820, 2304, 1.0f},
    {"dW 3x3 512->512 @64", 0, 1, 512, 4608, 910, 4096, 910, 4608, 1.0f},
    {"dX 3x3 128->128 @256", 1, 0, 1152, 3640, 128, 1152, 65536, 3640, 0.0f},
    {"dX 3x3 256->256 @128", 1, 0, 2304, 1820, 256, 2304, 16384, 1820, 0.0f},
    {"dX 3x3 512->512 @64", 1, 0, 4608, 910, 512, 4608, 4096, 910, 0.0f},
    {"dW 1x1 256->128 @256", 0, 1, 128, 256, 65536, 65536, 65536, 256, 1.0f},
    {"dX 1x1 256->128 @256", 1, 0, 256, 65536, 128, 256, 65536, 65536, 1.0f},
    {"mid attn 64^2 x 512: q k^T", 0, 1, 4096, 4096, 512, 512, 512, 4096, 0.0f},
    {"mid attn 64^2 x 512: p v", 0, 0, 4096, 512, 4096, 4096, 512, 512, 0.0f},
};

static float *rand_buf(size_t n) {
    float *p = (float *)malloc(sizeof(float) * (n ? n : 1));
    uint32_t s = 2463534242u;
    if (!p) { fprintf(stderr, "bench_gemm: out of memory (%zu floats)\n", n); exit(1); }
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 17; s ^= s << 5;
        p[i] = (float)(s >> 8) * (1.0f / 16777216.0f) - 0.5f;
    }
    return p;
}

/* best time of one call: a warm-up run, then repeats for ~budget seconds (3..50 runs) */
typedef void (*run_fn)(void *arg);
static double best_time(run_fn fn, void *arg, double budget) {
    fn(arg);
    double best = 1e30, spent = 0.0;
    for (int r = 0; r < 50 && (r < 3 || spent < budget); r++) {
        double t = now();
        fn(arg);
        t = now() - t;
        spent += t;
        if (t < best) best = t;
    }
    return best;
}

typedef struct { ldm_ctx *ctx; const shape *s; const float *A, *B; float *C; } gemm_arg;
static void run_ldm(void *p) {
    gemm_arg *g = (gemm_arg *)p;
    const shape *s = g->s;
    ldm_sgemm(g->ctx, s->ta, s->tb, s->M, s->N, s->K, 1.0f, g->A, s->lda, g->B, s->ldb, s->beta, g->C, s->ldc);
}
#ifdef LDM_BENCH_OPENBLAS
static void run_blas(void *p) {
    gemm_arg *g = (gemm_arg *)p;
    const shape *s = g->s;
    cblas_sgemm(CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans, s->tb ? CblasTrans : CblasNoTrans, (int)s->M, (int)s->N,
                (int)s->K, 1.0f, g->A, (int)s->lda, g->B, (int)s->ldb, s->beta, g->C, (int)s->ldc);
}
#endif

typedef struct { ldm_ctx *ctx; ldm_conv_desc d; float *x, *w, *b, *y, *dy, *dx, *dw, *db; int backward; } conv_arg;
static void run_conv(void *p) {
    conv_arg *c = (conv_arg *)p;
    if (c->backward) ldm_conv_backward(c->ctx, c->dx, c->dw, c->db, c->dy, c->x, c->w, &c->d);
    else ldm_conv_forward(c->ctx, c->y, c->x, c->w, c->b, &c->d);
}

int main(void) {
    ldm_ctx *ctx;
    if (ldm_ctx_create(&ctx, NULL)) { fprintf(stderr, "bench_gemm: cannot create a context\n"); return 1; }
    int threads = ldm_ctx_threads(ctx);
#ifdef LDM_BENCH_OPENBLAS
    openblas_set_num_threads(threads);
    printf("ldm_sgemm (%s kernel) vs OpenBLAS cblas_sgemm (%s), %d thread%s each\n", ldm_cpu_kernel_name(ctx), openblas_get_config(),
           threads, threads == 1 ? "" : "s");
#else
    printf("ldm_sgemm (%s kernel), %d thread%s (build with -DLDM_BENCH_OPENBLAS -lopenblas to compare)\n", ldm_cpu_kernel_name(ctx),
           threads, threads == 1 ? "" : "s");
#endif
    size_t na = 0, nb = 0, nc = 0;
    int ns = (int)(sizeof shapes / sizeof shapes[0]);
    for (int i = 0; i < ns; i++) {
        const shape *s = &shapes[i];
        size_t a = (size_t)((s->ta ? s->K : s->M) * s->lda), b = (size_t)((s->tb ? s->N : s->K) * s->ldb), c = (size_t)(s->M * s->ldc);
        if (a > na) na = a;
        if (b > nb) nb = b;
        if (c > nc) nc = c;
    }
    float *A = rand_buf(na), *B = rand_buf(nb), *C = rand_buf(nc);

    printf("\n%-30s %-2s %5s %6s %6s %9s", "GEMM call", "op", "M", "N", "K", "ldm GF/s");
#ifdef LDM_BENCH_OPENBLAS
    printf(" %9s %7s", "BLAS GF/s", "ratio");
#endif
    printf("\n");
#ifdef LDM_BENCH_OPENBLAS
    double log_ratio = 0.0;
#endif
    for (int i = 0; i < ns; i++) {
        const shape *s = &shapes[i];
        gemm_arg g = {ctx, s, A, B, C};
        double flops = 2.0 * (double)s->M * (double)s->N * (double)s->K;
        double t = best_time(run_ldm, &g, 0.3);
        printf("%-30s %c%c %5lld %6lld %6lld %9.1f", s->name, s->ta ? 'T' : 'N', s->tb ? 'T' : 'N', (long long)s->M,
               (long long)s->N, (long long)s->K, flops / t * 1e-9);
#ifdef LDM_BENCH_OPENBLAS
        double tb = best_time(run_blas, &g, 0.3);
        printf(" %9.1f %7.2f", flops / tb * 1e-9, tb / t);
        log_ratio += log(tb / t);
#endif
        printf("\n");
        fflush(stdout);
    }
#ifdef LDM_BENCH_OPENBLAS
    printf("geometric mean ldm/OpenBLAS over %d calls: %.2f\n", ns, exp(log_ratio / ns));
#endif
    free(A); free(B); free(C);

    /* whole convolutions (batch 1), through ldm_conv_forward / ldm_conv_backward */
    static const struct { const char *name; int64_t C, O, H; int k; } convs[] = {
        {"conv 3x3 128->128 @256", 128, 128, 256, 3},
        {"conv 3x3 256->256 @128", 256, 256, 128, 3},
        {"conv 3x3 512->512 @64", 512, 512, 64, 3},
        {"conv 1x1 256->128 @256", 256, 128, 256, 1},
    };
    printf("\n%-30s %12s %12s   (backward = dX + dW + db, counted as 2x the forward FLOPs)\n", "convolution", "fwd GF/s", "bwd GF/s");
    for (int i = 0; i < (int)(sizeof convs / sizeof convs[0]); i++) {
        conv_arg c;
        memset(&c, 0, sizeof c);
        c.ctx = ctx;
        c.d.B = 1; c.d.C = convs[i].C; c.d.T = 1; c.d.H = convs[i].H; c.d.W = convs[i].H; c.d.O = convs[i].O;
        c.d.kt = 1; c.d.kh = convs[i].k; c.d.kw = convs[i].k; c.d.st = 1; c.d.sh = 1; c.d.sw = 1;
        c.d.pad[2] = c.d.pad[3] = c.d.pad[4] = c.d.pad[5] = convs[i].k / 2;
        if (ldm_conv_desc_init(&c.d)) { fprintf(stderr, "bench_gemm: bad conv descriptor\n"); return 1; }
        size_t xs = (size_t)(c.d.C * c.d.H * c.d.W), ys = (size_t)(c.d.O * c.d.OH * c.d.OW), ws = (size_t)(c.d.O * c.d.C * c.d.kh * c.d.kw);
        c.x = rand_buf(xs); c.w = rand_buf(ws); c.b = rand_buf((size_t)c.d.O); c.y = rand_buf(ys); c.dy = rand_buf(ys);
        c.dx = rand_buf(xs); c.dw = rand_buf(ws); c.db = rand_buf((size_t)c.d.O);
        double flops = 2.0 * (double)ys * (double)(c.d.C * c.d.kh * c.d.kw);
        c.backward = 0;
        double tf = best_time(run_conv, &c, 0.5);
        c.backward = 1;
        double tbw = best_time(run_conv, &c, 0.5);
        printf("%-30s %12.1f %12.1f\n", convs[i].name, flops / tf * 1e-9, 2.0 * flops / tbw * 1e-9);
        fflush(stdout);
        free(c.x); free(c.w); free(c.b); free(c.y); free(c.dy); free(c.dx); free(c.dw); free(c.db);
        if (ldm_ctx_status(ctx)) { fprintf(stderr, "bench_gemm: %s\n", ldm_ctx_error(ctx)); return 1; }
    }
    ldm_ctx_destroy(ctx);
    return 0;
}
