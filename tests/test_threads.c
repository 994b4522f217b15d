/* test_threads.c - the same ops on the same inputs at 1, 2 and 3 threads must give bitwise
   identical outputs and gradients (ldm_parallel_for's contract: no result depends on where
   the ranges split), and the RNG must draw the same numbers at every thread count.

   Shapes are big enough that every kernel really splits its work (element-wise kernels need
   more than 16K elements per task, convolutions more than 4M column entries to be chunked). 
   Also built and run under ASan/UBSan by build.sh (LDM_TEST_SANITIZE). */
#define LDM_IMPLEMENTATION
#include "ldm_test.h"

#define MAX_RES 96
typedef struct { char name[64]; float *data; int64_t n; } result;
static result res[3][MAX_RES];
static int nres[3];

static uint64_t rs;
static float frand(float lo, float hi) {
    rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17;
    return lo + (hi - lo) * (float)((double)(rs >> 11) * (1.0 / 9007199254740992.0));
}

static ldm_ctx *ctx;
static int run;

static ldm_tensor *input(ldm_shape s, float lo, float hi, int grad) {
    ldm_tensor *t = ldm_new(ctx, s);
    if (!t) return NULL;
    for (int64_t i = 0; i < t->numel; i++) t->data[i] = frand(lo, hi);
    t->requires_grad = grad;
    return t;
}
static void keep(const char *name, const float *p, int64_t n) {
    result *r = &res[run][nres[run]++];
    snprintf(r->name, sizeof r->name, "%s", name);
    r->n = p ? n : 0;
    r->data = (float *)malloc(sizeof(float) * (size_t)(n ? n : 1));
    if (p) memcpy(r->data, p, sizeof(float) * (size_t)n);
}
/* Keeps y, runs backward from a fixed upstream gradient and keeps the inputs' gradients. */
static void fwd_bwd(const char *name, ldm_tensor *y, int n_in, ldm_tensor **in) {
    char nm[64];
    if (!y) {
        printf("FAIL %s: %s\n", name, ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
        keep(name, NULL, 0);
        return;
    }
    keep(name, y->data, y->numel);
    float *R = (float *)malloc(sizeof(float) * (size_t)y->numel);
    for (int64_t i = 0; i < y->numel; i++) R[i] = frand(-1, 1);
    ldm_backward_from(ctx, y, R);
    free(R);
    for (int k = 0; k < n_in; k++) {
        snprintf(nm, sizeof nm, "%s d%d", name, k);
        keep(nm, in[k]->grad, in[k]->grad ? in[k]->numel : 0);
    }
}

/* ldm_parallel_for hands out each index exactly once and really uses the workers */
typedef struct { int hits[4096]; int tids[8]; } pf_probe;
static void pf_task(void *arg, int64_t b, int64_t e, int tid) {
    pf_probe *p = (pf_probe *)arg;
    for (int64_t i = b; i < e; i++) p->hits[i]++;
    if (tid >= 0 && tid < 8) p->tids[tid] = 1;
}
static void check_parallel_for(int nthreads) {
    static pf_probe p;
    memset(&p, 0, sizeof p);
    ldm_parallel_for(ctx, 4096, 16, pf_task, &p);
    int once = 1, used = 0;
    for (int i = 0; i < 4096; i++) once &= p.hits[i] == 1;
    for (int t = 0; t < 8; t++) used += p.tids[t];
    char nm[96];
    snprintf(nm, sizeof nm, "parallel_for at %d threads: every index once, %d workers busy", nthreads, nthreads);
    LT_CHECK(once && used == nthreads, nm);
}

static void suite(void) {
    ldm_step_reset(ctx);
    rs = 0x2545F4914F6CDD1Dull;
    {   /* conv2d 3x3, K*OS = 1152*4096 > 4M: the columns come in two chunks */
        ldm_tensor *in[3] = {input(ldm_shape4(1, 128, 64, 64), -1, 1, 1), input(ldm_shape4(8, 128, 3, 3), -0.1f, 0.1f, 1),
                             input(ldm_shape1(8), -1, 1, 1)};
        fwd_bwd("conv2d k3 p1 chunked", ldm_conv2d(ctx, in[0], in[1], in[2], 1, 1), 3, in);
    }
    {
        ldm_tensor *in[3] = {input(ldm_shape4(2, 16, 33, 31), -1, 1, 1), input(ldm_shape4(24, 16, 4, 4), -0.1f, 0.1f, 1),
                             input(ldm_shape1(24), -1, 1, 1)};
        fwd_bwd("conv2d k4 s2 p1", ldm_conv2d(ctx, in[0], in[1], in[2], 2, 1), 3, in);
        fwd_bwd("conv2d_ex downsample", ldm_conv2d_ex(ctx, in[0], in[1], NULL, 2, 2, 0, 1, 0, 1), 2, in);
    }
    {
        ldm_tensor *in[2] = {input(ldm_shape4(2, 64, 32, 32), -1, 1, 1), input(ldm_shape4(48, 64, 1, 1), -0.1f, 0.1f, 1)};
        fwd_bwd("conv2d 1x1", ldm_conv2d(ctx, in[0], in[1], NULL, 1, 0), 2, in);
    }
    {
        ldm_tensor *in[3] = {input(ldm_shape5(1, 8, 8, 16, 16), -1, 1, 1), input(ldm_shape5(8, 8, 3, 3, 3), -0.1f, 0.1f, 1),
                             input(ldm_shape1(8), -1, 1, 1)};
        fwd_bwd("conv3d k3 p1", ldm_conv3d(ctx, in[0], in[1], in[2], 1, 1), 3, in);
    }
    {
        ldm_tensor *in[3] = {input(ldm_shape4(2, 32, 24, 24), -1, 2, 1), input(ldm_shape1(32), 0.5f, 1.5f, 1), input(ldm_shape1(32), -1, 1, 1)};
        fwd_bwd("group_norm", ldm_group_norm(ctx, in[0], in[1], in[2], 8, 1e-6f), 3, in);
    }
    {
        ldm_tensor *in[3] = {input(ldm_shape4(8, 16, 24, 24), -1, 2, 1), input(ldm_shape1(16), 0.5f, 1.5f, 1), input(ldm_shape1(16), -1, 1, 1)};
        ldm_tensor *rm = input(ldm_shape1(16), 0, 0, 0), *rv = input(ldm_shape1(16), 1, 1, 0);
        fwd_bwd("batch_norm train", ldm_batch_norm(ctx, in[0], in[1], in[2], rm, rv, 1, 0.1f, 1e-5f), 3, in);
        keep("batch_norm running_mean", rm->data, rm->numel);
        keep("batch_norm running_var", rv->data, rv->numel);
        fwd_bwd("batch_norm eval", ldm_batch_norm(ctx, in[0], in[1], in[2], rm, rv, 0, 0.1f, 1e-5f), 3, in);
    }
    {
        ldm_tensor *in[3] = {input(ldm_shape3(8, 64, 96), -1, 2, 1), input(ldm_shape1(96), 0.5f, 1.5f, 1), input(ldm_shape1(96), -1, 1, 1)};
        fwd_bwd("layer_norm", ldm_layer_norm(ctx, in[0], in[1], in[2], 1, 1e-5f), 3, in);
    }
    {
        ldm_tensor *in[1] = {input(ldm_shape3(64, 40, 30), -4, 4, 1)};
        fwd_bwd("softmax last", ldm_softmax(ctx, in[0], -1), 1, in);
        fwd_bwd("softmax middle", ldm_softmax(ctx, in[0], 1), 1, in);
        fwd_bwd("softmax first", ldm_softmax(ctx, in[0], 0), 1, in);
    }
    {
        ldm_tensor *in[1] = {input(ldm_shape4(8, 32, 32, 32), -1, 1, 1)};
        fwd_bwd("sum dims 0,2", ldm_sum(ctx, in[0], LDM_DIM(0) | LDM_DIM(2), 0), 1, in);
        fwd_bwd("mean dims 2,3 keepdim", ldm_mean(ctx, in[0], LDM_DIM(2) | LDM_DIM(3), 1), 1, in);
        fwd_bwd("mean_all", ldm_mean_all(ctx, in[0]), 1, in);
    }
    {
        ldm_tensor *in[2] = {input(ldm_shape3(4, 96, 80), -1, 1, 1), input(ldm_shape2(80, 72), -1, 1, 1)};
        fwd_bwd("matmul 3-D x 2-D", ldm_matmul(ctx, in[0], in[1], 0, 0), 2, in);
        ldm_tensor *in2[2] = {input(ldm_shape3(4, 96, 80), -1, 1, 1), input(ldm_shape3(4, 72, 80), -1, 1, 1)};
        fwd_bwd("matmul batched b^T", ldm_matmul(ctx, in2[0], in2[1], 0, 1), 2, in2);
        ldm_tensor *in3[3] = {input(ldm_shape3(4, 100, 64), -1, 1, 1), input(ldm_shape2(72, 64), -0.2f, 0.2f, 1), input(ldm_shape1(72), -1, 1, 1)};
        fwd_bwd("linear", ldm_linear(ctx, in3[0], in3[1], in3[2]), 3, in3);
    }
    {
        ldm_tensor *in[2] = {input(ldm_shape4(4, 32, 32, 32), -1, 1, 1), input(ldm_shape3(32, 1, 32), 0.5f, 1.5f, 1)};
        fwd_bwd("mul broadcast", ldm_mul(ctx, in[0], in[1]), 2, in);
        fwd_bwd("div broadcast", ldm_div(ctx, in[0], in[1]), 2, in);
        ldm_tensor *in2[2] = {in[0], input(ldm_shape4(4, 32, 32, 32), -1, 1, 1)};
        fwd_bwd("add same shape", ldm_add(ctx, in2[0], in2[1]), 2, in2);
    }
    {
        ldm_tensor *in[1] = {input(ldm_shape1(100003), -4, 4, 1)};
        fwd_bwd("silu", ldm_silu(ctx, in[0]), 1, in);
        fwd_bwd("gelu", ldm_gelu(ctx, in[0], 0), 1, in);
        fwd_bwd("softplus", ldm_softplus(ctx, in[0], 1.0f, 20.0f), 1, in);
    }
    {
        ldm_tensor *in[1] = {input(ldm_shape4(2, 16, 48, 40), -1, 1, 1)};
        fwd_bwd("upsample x2", ldm_upsample_nearest(ctx, in[0], 1, 2, 2), 1, in);
        fwd_bwd("avg_pool k3 s2 p1", ldm_avg_pool(ctx, in[0], 3, 2, 1), 1, in);
        fwd_bwd("max_pool k3 s2 p1", ldm_max_pool(ctx, in[0], 3, 2, 1), 1, in);
        int perm[4] = {0, 2, 3, 1}, pads[4] = {1, 2, 0, 3};
        fwd_bwd("permute", ldm_permute(ctx, in[0], perm), 1, in);
        fwd_bwd("pad", ldm_pad(ctx, in[0], 2, pads, 0.0f), 1, in);
        ldm_tensor *two[2] = {in[0], in[0]};
        fwd_bwd("concat", ldm_concat(ctx, 2, two, 1), 1, in);
        fwd_bwd("slice", ldm_slice(ctx, in[0], 2, 5, 30), 1, in);
    }
    /* RNG: drawn from a fixed state; odd sizes end mid-block */
    ldm_rng *rng = ldm_ctx_rng(ctx);
    rng->seed = 42;
    rng->offset = 0;
    ldm_tensor *n1 = ldm_randn(ctx, ldm_shape1(200003)), *u1 = ldm_rand(ctx, ldm_shape1(100001));
    keep("randn", n1 ? n1->data : NULL, 200003);
    keep("rand", u1 ? u1->data : NULL, 100001);
    ldm_tensor *dx = input(ldm_shape3(8, 64, 64), -1, 1, 1), *in[1] = {dx};
    fwd_bwd("dropout", ldm_dropout(ctx, dx, 0.25f, 1), 1, in);
    float off = (float)rng->offset;
    keep("rng offset after the draws", &off, 1);
}

int main(void) {
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.threads = 1;
    s.arena_bytes = (size_t)512 << 20;
    if (ldm_ctx_create(&ctx, &s)) { printf("FAIL ctx create\n"); return 1; }
    static const int threads[3] = {1, 2, 3};
    for (run = 0; run < 3; run++) {
        ldm_ctx_set_threads(ctx, threads[run]);
        LT_CHECK(ldm_ctx_threads(ctx) == threads[run], threads[run] == 1 ? "1 thread" : threads[run] == 2 ? "2 threads" : "3 threads");
        check_parallel_for(threads[run]);
        suite();
    }
    char nm[128];
    for (int t = 1; t < 3; t++) {
        LT_CHECK(nres[t] == nres[0], "same number of results");
        for (int i = 0; i < nres[0] && i < nres[t]; i++) {
            result *a = &res[0][i], *b = &res[t][i];
            snprintf(nm, sizeof nm, "%.60s: %d threads == 1 thread (bitwise)", a->name, threads[t]);
            if (!a->n || a->n != b->n) { lt_report(0, nm, "missing result (n %lld vs %lld)", (long long)a->n, (long long)b->n); continue; }
            if (memcmp(a->data, b->data, sizeof(float) * (size_t)a->n) == 0) { lt_report(1, nm, ""); continue; }
            lt_close(nm, b->data, a->data, a->n, 0.0, 0.0); /* prints where and by how much */
        }
    }
    for (int t = 0; t < 3; t++)
        for (int i = 0; i < nres[t]; i++) free(res[t][i].data);
    ldm_ctx_destroy(ctx);
    return lt_finish("test_threads");
}
