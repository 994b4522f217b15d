/* test_gemm.c - ldm_sgemm against ldm_sgemm_ref: every transpose combination, alpha/beta
   (beta 0 over NaN-filled C), odd and blocked sizes, padded leading dimensions, K = 0, calls
   from inside a parallel region, and bitwise equality across thread counts; for every
   micro-kernel this CPU runs (chosen with $LDM_CPU_KERNEL). */
#define _POSIX_C_SOURCE 200809L /* setenv */
#define LDM_IMPLEMENTATION
#include "ldm_test.h"

#define PAD 3 /* extra columns in every leading dimension; they must never be written */

static uint32_t rng_state = 12345u;
static float frand(void) { /* uniform in [-1, 1) */
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)(rng_state >> 8) * (2.0f / 16777216.0f) - 1.0f;
}
static float *fill_rand(int64_t n) {
    float *p = (float *)malloc(sizeof(float) * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) p[i] = frand();
    return p;
}

/* Runs one case and compares element-wise with the float64 reference. The bound is the
   float32 rounding of a K-term dot product: (K + 4) * eps * (|alpha| sum |a||b| + |beta c|),
   while an indexing mistake is off by the magnitude itself. The PAD columns of C must keep
   their sentinel. */
static int check_case_q(ldm_ctx *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, float beta, int nan_c, int quiet) {
    int64_t lda = (ta ? M : K) + PAD, ldb = (tb ? K : N) + PAD, ldc = N + PAD;
    int64_t arows = ta ? K : M, brows = tb ? N : K;
    float *A = fill_rand(arows * lda), *B = fill_rand(brows * ldb), *C = fill_rand(M * ldc);
    float *R = (float *)malloc(sizeof(float) * (size_t)(M * ldc > 0 ? M * ldc : 1));
    float *C0 = (float *)malloc(sizeof(float) * (size_t)(M * ldc > 0 ? M * ldc : 1));
    const float sentinel = 12345.0f;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < ldc; j++) {
            if (j >= N) C[i * ldc + j] = sentinel;
            else if (nan_c) C[i * ldc + j] = NAN;
        }
    memcpy(R, C, sizeof(float) * (size_t)(M * ldc));
    memcpy(C0, C, sizeof(float) * (size_t)(M * ldc));
    ldm_sgemm_ref(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, R, ldc);
    ldm_sgemm(ctx, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    int ok = ldm_ctx_status(ctx) == LDM_OK;
    double worst = 0.0;
    int64_t wi = 0, wj = 0;
    for (int64_t i = 0; i < M && ok; i++)
        for (int64_t j = 0; j < ldc; j++) {
            float got = C[i * ldc + j], want = R[i * ldc + j];
            if (j >= N) { if (got != sentinel) { ok = 0; wi = i; wj = j; worst = INFINITY; break; } continue; }
            double mag = 0.0;
            for (int64_t k = 0; k < K; k++)
                mag += fabs((double)(ta ? A[k * lda + i] : A[i * lda + k]) * (double)(tb ? B[j * ldb + k] : B[k * ldb + j]));
            mag = fabs(alpha) * mag + (beta != 0.0f ? fabs((double)beta * C0[i * ldc + j]) : 0.0);
            double bound = (double)(K + 4) * 1.2e-7 * mag + 1e-30, err = fabs((double)got - (double)want);
            if (!(err <= bound)) { ok = 0; wi = i; wj = j; worst = err / bound; break; }
        }
    char name[160];
    snprintf(name, sizeof name, "sgemm %c%c M=%lld N=%lld K=%lld alpha=%g beta=%g%s", ta ? 'T' : 'N', tb ? 'T' : 'N',
             (long long)M, (long long)N, (long long)K, alpha, beta, nan_c ? " (C=NaN)" : "");
    if (!ok || !quiet) lt_report(ok, name, "C[%lld][%lld] = %.8g, want %.8g (error / bound = %.3g)%s", (long long)wi, (long long)wj,
              M ? (double)C[wi * ldc + wj] : 0.0, M ? (double)R[wi * ldc + wj] : 0.0, worst, ldm_ctx_error(ctx));
    free(A); free(B); free(C); free(R); free(C0);
    return ok;
}
static int check_case(ldm_ctx *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, float beta, int nan_c) {
    return check_case_q(ctx, ta, tb, M, N, K, alpha, beta, nan_c, 0);
}

/* The same product at thread counts 1..4 must give identical bits. */
static void check_threads(ldm_ctx *ctx, int ta, int tb, int64_t M, int64_t N, int64_t K, float beta) {
    int64_t lda = ta ? M : K, ldb = tb ? K : N;
    float *A = fill_rand(M * K), *B = fill_rand(K * N), *C0 = fill_rand(M * N);
    float *C1 = (float *)malloc(sizeof(float) * (size_t)(M * N)), *Cn = (float *)malloc(sizeof(float) * (size_t)(M * N));
    int same = 1, bad_t = 0;
    ldm_ctx_set_threads(ctx, 1);
    memcpy(C1, C0, sizeof(float) * (size_t)(M * N));
    ldm_sgemm(ctx, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C1, N);
    for (int t = 2; t <= 4 && same; t++) {
        ldm_ctx_set_threads(ctx, t);
        memcpy(Cn, C0, sizeof(float) * (size_t)(M * N));
        ldm_sgemm(ctx, ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, Cn, N);
        if (memcmp(C1, Cn, sizeof(float) * (size_t)(M * N)) != 0) { same = 0; bad_t = t; }
    }
    ldm_ctx_set_threads(ctx, 2);
    char name[128];
    snprintf(name, sizeof name, "sgemm %c%c %lldx%lldx%lld bitwise equal for 1..4 threads", ta ? 'T' : 'N', tb ? 'T' : 'N',
             (long long)M, (long long)N, (long long)K);
    lt_report(same, name, "%d threads differ from 1 thread", bad_t);
    free(A); free(B); free(C0); free(C1); free(Cn);
}

/* ldm_sgemm called from inside ldm_parallel_for tasks (each its own product). */
typedef struct { ldm_ctx *ctx; const float *A, *B; float *C; int64_t n; } nested_job;
static void nested_task(void *arg, int64_t b, int64_t e, int tid) {
    nested_job *j = (nested_job *)arg;
    (void)tid;
    for (int64_t i = b; i < e; i++)
        ldm_sgemm(j->ctx, 0, 0, j->n, j->n, j->n, 1.0f, j->A + i * j->n * j->n, j->n, j->B, j->n, 0.0f, j->C + i * j->n * j->n, j->n);
}
static void check_nested(ldm_ctx *ctx) {
    int64_t n = 150, parts = 4;
    float *A = fill_rand(parts * n * n), *B = fill_rand(n * n);
    float *C = (float *)malloc(sizeof(float) * (size_t)(parts * n * n)), *R = (float *)malloc(sizeof(float) * (size_t)(parts * n * n));
    nested_job j = {ctx, A, B, C, n};
    ldm_parallel_for(ctx, parts, 1, nested_task, &j);
    for (int64_t i = 0; i < parts; i++)
        ldm_sgemm(ctx, 0, 0, n, n, n, 1.0f, A + i * n * n, n, B, n, 0.0f, R + i * n * n, n);
    LT_CHECK(ldm_ctx_status(ctx) == LDM_OK && memcmp(C, R, sizeof(float) * (size_t)(parts * n * n)) == 0,
             "sgemm inside a parallel region equals the top-level result");
    free(A); free(B); free(C); free(R);
}

static void battery(ldm_ctx *ctx) {
    /* every transpose combination over small odd sizes, edges on every side */
    static const int64_t small[] = {1, 7, 17, 33};
    int all_small = 1;
    for (int t = 0; t < 4; t++)
        for (int a = 0; a < 4; a++)
            for (int b = 0; b < 4; b++)
                for (int c = 0; c < 4; c++) /* prints failures only */
                    all_small &= check_case_q(ctx, t >> 1, t & 1, small[a], small[b], small[c], 1.0f, (a + b + c) % 2 ? 0.0f : 0.5f, 0, 1);
    LT_CHECK(all_small, "sgemm all 4 transpose combinations x M,N,K in {1,7,17,33}");

    /* larger sizes: several K slices, several column blocks, M beyond one row block */
    for (int t = 0; t < 4; t++) {
        int ta = t >> 1, tb = t & 1;
        check_case(ctx, ta, tb, 129, 257, 33, 1.0f, 0.0f, 1);
        check_case(ctx, ta, tb, 257, 129, 600, 0.5f, 0.0f, 1);
        check_case(ctx, ta, tb, 65, 97, 1100, 1.0f, 1.0f, 0);
        check_case(ctx, ta, tb, 33, 513, 129, -2.0f, 0.25f, 0);
    }
    check_case(ctx, 0, 0, 300, 1000, 520, 1.0f, 1.0f, 0);
    check_case(ctx, 0, 0, 1030, 50, 20, 1.0f, 0.0f, 1);     /* more rows than one packed block */
    check_case(ctx, 0, 1, 9, 7000, 20, 1.0f, 1.0f, 0);      /* short K: several wide column blocks */
    check_case(ctx, 1, 0, 1, 1000, 300, 1.0f, -1.0f, 0);    /* vector x matrix */
    check_case(ctx, 0, 1, 1000, 1, 300, 1.0f, 0.0f, 1);     /* matrix x vector */
    check_case(ctx, 0, 0, 64, 64, 64, 0.0f, 0.5f, 0);       /* alpha 0: C = beta*C */
    /* K = 0: C = beta*C, and beta 0 over NaN gives zeros */
    check_case(ctx, 0, 0, 17, 33, 0, 1.0f, 0.0f, 1);
    check_case(ctx, 1, 1, 17, 33, 0, 1.0f, 3.0f, 0);
    check_case(ctx, 0, 0, 0, 33, 7, 1.0f, 0.0f, 1);         /* M = 0: nothing to do */

    /* the kl-f4 conv shapes in miniature: tall, wide and backward (trans) products */
    check_threads(ctx, 0, 0, 128, 910, 1152, 0.0f);
    check_threads(ctx, 0, 0, 257, 129, 700, 1.0f);
    check_threads(ctx, 0, 1, 64, 576, 1000, 1.0f);   /* dW = dY col^T */
    check_threads(ctx, 1, 0, 576, 300, 64, 0.0f);    /* dX = W^T dY */
    check_threads(ctx, 1, 1, 100, 1030, 77, 0.5f);
    check_threads(ctx, 0, 0, 20, 13000, 27, 1.0f);   /* conv_in: K = 27 */
    check_nested(ctx);
}

int main(void) {
    static const char *kernels[] = {"avx512", "avx2", "portable"};
    for (int i = 0; i < 3; i++) {
        ldm_ctx *ctx;
        ldm_settings s;
        memset(&s, 0, sizeof s);
        s.threads = 2;
        setenv("LDM_CPU_KERNEL", kernels[i], 1);
        if (ldm_ctx_create(&ctx, &s)) { printf("FAIL ldm_ctx_create\n"); return 1; }
        if (strcmp(ldm_cpu_kernel_name(ctx), kernels[i])) {
            printf("SKIP the %s kernel: this CPU or build does not run it (uses %s)\n", kernels[i], ldm_cpu_kernel_name(ctx));
        } else {
            printf("-- kernel %s\n", kernels[i]);
            battery(ctx);
        }
        ldm_ctx_destroy(ctx);
    }
    unsetenv("LDM_CPU_KERNEL");
    return lt_finish("test_gemm");
}
