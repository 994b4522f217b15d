/* test_ops.c - every op's forward and gradients against PyTorch (float64 reference stored as
   float32 by tests/ref/ops_ref.py in tests/fixtures/ops.safetensors).

   Case <c>: inputs <c>/x0.. (all get requires_grad), outputs <c>/y0.., upstream gradients
   <c>/r0.. and input gradients <c>/g0..; the table below repeats ops_ref.py's parameters.
   Tolerances: 1e-6 abs + 1e-5 rel for element-wise and data-movement ops; 1e-5 + 1e-4 for
   the ops that sum many terms in float32 (GEMM, convolution, norms). Also: chunked
   convolution against direct loops in double (shapes too big for the fixture); the fused
   ldm_group_norm_silu against ldm_silu(ldm_group_norm(...)) (forward bitwise, gradients to
   float rounding) and the arena memory its tape saves. 
   Also built and run under ASan/UBSan by build.sh (LDM_TEST_SANITIZE). */
#define LDM_IMPLEMENTATION
#include "lt_ops.h"

static ldm_ctx *ctx;
static ldm_weights *fx;

enum { SIMPLE, HEAVY };

static int have(const char *name) { return ldm_weights_find(fx, name) >= 0; }

/* Runs case `name` with op p on n_in fixture inputs and compares everything. */
static void run_case(const char *name, lt_op p, int n_in, int tol) {
    double atol = tol == HEAVY ? 1e-5 : 1e-6, rtol = tol == HEAVY ? 1e-4 : 1e-5;
    char nm[160], key[160];
    ldm_tensor *in[8] = {0}, *out[LT_MAX_OUT];
    ldm_step_reset(ctx);
    for (int k = 0; k < n_in; k++) {
        snprintf(key, sizeof key, "%s/x%d", name, k);
        if (!(in[k] = lt_tensor(ctx, fx, key))) { lt_report(0, name, "fixture lacks %s", key); ldm_ctx_clear_error(ctx); return; }
        in[k]->requires_grad = 1;
    }
    float *idx_f = NULL;
    int64_t idx[64];
    if (p.op == LT_EMBEDDING) {
        long n = 0;
        snprintf(key, sizeof key, "%s/idx", name);
        if (!(idx_f = lt_load(ctx, fx, key, &n)) || n > 64) { lt_report(0, name, "fixture lacks %s", key); free(idx_f); return; }
        for (long i = 0; i < n; i++) idx[i] = (int64_t)idx_f[i];
        p.idx = idx;
        p.n_idx = n;
        free(idx_f);
    }
    if (p.op == LT_BATCH_NORM) {
        snprintf(key, sizeof key, "%s/rm", name);
        p.rm = lt_tensor(ctx, fx, key);
        snprintf(key, sizeof key, "%s/rv", name);
        p.rv = lt_tensor(ctx, fx, key);
        if (!p.rm || !p.rv) { lt_report(0, name, "fixture lacks running stats"); ldm_ctx_clear_error(ctx); return; }
    }
    int n_out = lt_op_run(ctx, &p, n_in, in, out);
    if (!n_out) { lt_report(0, name, "op failed: %s", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); return; }
    snprintf(key, sizeof key, "%s/y%d", name, n_out);
    if (have(key)) lt_report(0, name, "fixture has more outputs than the %d produced", n_out);
    for (int k = 0; k < n_out; k++) {
        long n = 0;
        snprintf(key, sizeof key, "%s/y%d", name, k);
        float *want = lt_load(ctx, fx, key, &n);
        char ws[96];
        snprintf(nm, sizeof nm, "%s y%d %s", name, k, ldm_shape_str(out[k], ws, sizeof ws));
        if (!want || n != out[k]->numel) lt_report(0, nm, "fixture %s missing or has %ld elements, op gave %lld", key, n, (long long)out[k]->numel);
        else lt_close(nm, out[k]->data, want, n, atol, rtol);
        free(want);
        snprintf(key, sizeof key, "%s/r%d", name, k);
        float *r = lt_load(ctx, fx, key, &n);
        if (r && n == out[k]->numel && ldm_backward_from(ctx, out[k], r)) {
            lt_report(0, nm, "backward failed: %s", ldm_ctx_error(ctx));
            ldm_ctx_clear_error(ctx);
        }
        free(r);
    }
    for (int k = 0; k < n_in; k++) {
        long n = 0;
        snprintf(key, sizeof key, "%s/g%d", name, k);
        snprintf(nm, sizeof nm, "%s d/dx%d", name, k);
        float *want = lt_load(ctx, fx, key, &n);
        if (!want || n != in[k]->numel || !in[k]->grad) lt_report(0, nm, "no gradient (fixture %s: %ld elements)", key, n);
        else lt_close(nm, in[k]->grad, want, n, atol, rtol);
        free(want);
    }
    if (p.op == LT_BATCH_NORM) {
        long n = 0;
        snprintf(key, sizeof key, "%s/rm_out", name);
        float *want = lt_load(ctx, fx, key, &n);
        snprintf(nm, sizeof nm, "%s running_mean (momentum 0.1)", name);
        if (want) lt_close(nm, p.rm->data, want, n, 1e-6, 1e-5);
        free(want);
        snprintf(key, sizeof key, "%s/rv_out", name);
        want = lt_load(ctx, fx, key, &n);
        snprintf(nm, sizeof nm, "%s running_var (unbiased)", name);
        if (want) lt_close(nm, p.rv->data, want, n, 1e-6, 1e-5);
        free(want);
    }
}

/* OPI(op, f0, f1, i0, i1, ...): an lt_op with those parameters (the list ends at LT_END) */
#define LT_END (-12345)
static lt_op op_iv(int op, double f0, double f1, ...) {
    lt_op p = lt_op_make(op);
    va_list ap;
    va_start(ap, f1);
    for (int k = 0, v; k < 12 && (v = va_arg(ap, int)) != LT_END; k++) p.i[k] = v;
    va_end(ap);
    p.f[0] = (float)f0;
    p.f[1] = (float)f1;
    return p;
}
#define OPI(op, f0, f1, ...) op_iv(op, f0, f1, __VA_ARGS__, LT_END)

static void elementwise(void) {
    static const char *bin[4] = {"add", "sub", "mul", "div"};
    static const int bop[4] = {LT_ADD, LT_SUB, LT_MUL, LT_DIV};
    char nm[64];
    for (int o = 0; o < 4; o++)
        for (char t = 'a'; t <= 'g'; t++) {
            snprintf(nm, sizeof nm, "%s_%c", bin[o], t);
            run_case(nm, lt_op_make(bop[o]), 2, SIMPLE);
        }
    struct { const char *name; int op; float f0, f1; int i0; } un[] = {
        {"affine", LT_AFFINE, 1.7f, -0.3f, 0}, {"scale", LT_SCALE, -2.5f, 0, 0}, {"add_scalar", LT_ADD_SCALAR, 0.75f, 0, 0},
        {"pow2", LT_POW, 2, 0, 0}, {"pow3", LT_POW, 3, 0, 0}, {"pow2_5", LT_POW, 2.5f, 0, 0}, {"pow_m0_5", LT_POW, -0.5f, 0, 0},
        {"exp", LT_EXP, 0, 0, 0}, {"log", LT_LOG, 0, 0, 0}, {"sqrt", LT_SQRT, 0, 0, 0}, {"abs", LT_ABS, 0, 0, 0},
        {"square", LT_SQUARE, 0, 0, 0}, {"clamp", LT_CLAMP, -0.5f, 0.8f, 0}, {"sigmoid", LT_SIGMOID, 0, 0, 0},
        {"silu", LT_SILU, 0, 0, 0}, {"relu", LT_RELU, 0, 0, 0}, {"leaky_relu", LT_LEAKY, 0.2f, 0, 0}, {"tanh", LT_TANH, 0, 0, 0},
        {"gelu", LT_GELU, 0, 0, 0}, {"gelu_tanh", LT_GELU, 0, 0, 1}, {"softplus", LT_SOFTPLUS, 1, 20, 0},
        {"softplus_b2_t3", LT_SOFTPLUS, 2, 3, 0},
    };
    for (size_t c = 0; c < sizeof un / sizeof un[0]; c++) {
        lt_op p = lt_op_make(un[c].op);
        p.f[0] = un[c].f0; p.f[1] = un[c].f1; p.i[0] = un[c].i0;
        run_case(un[c].name, p, 1, SIMPLE);
    }
}

static void reductions(void) {
    static const int masks[6] = {0x1, 0x2, 0x5, 0xA, 0xE, 0xF};
    char nm[64];
    for (int m = 0; m < 6; m++)
        for (int keep = 0; keep < 2; keep++) {
            snprintf(nm, sizeof nm, "sum_%x_%d", masks[m], keep);
            run_case(nm, OPI(LT_SUM, 0, 0, masks[m], keep), 1, SIMPLE);
            snprintf(nm, sizeof nm, "mean_%x_%d", masks[m], keep);
            run_case(nm, OPI(LT_MEAN, 0, 0, masks[m], keep), 1, SIMPLE);
        }
    run_case("sum_all", lt_op_make(LT_SUM_ALL), 1, SIMPLE);
    run_case("mean_all", lt_op_make(LT_MEAN_ALL), 1, SIMPLE);
    run_case("sum_size1", OPI(LT_SUM, 0, 0, 0x6, 1), 1, SIMPLE);
}

static void linalg(void) {
    static const char *tags[4] = {"22", "33", "23", "32"};
    char nm[64];
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int t = 0; t < 4; t++) {
                snprintf(nm, sizeof nm, "matmul_%s_%d%d", tags[t], ta, tb);
                run_case(nm, OPI(LT_MATMUL, 0, 0, ta, tb), 2, HEAVY);
            }
    run_case("linear", lt_op_make(LT_LINEAR), 3, HEAVY);
    run_case("linear_nobias", lt_op_make(LT_LINEAR), 2, HEAVY);
    run_case("linear_3d", lt_op_make(LT_LINEAR), 3, HEAVY);
}

static void convs(void) {
    struct { const char *tag; int s, p, bias; } c2[] = {{"k1s1p0", 1, 0, 1}, {"k1s2p0", 2, 0, 1}, {"k3s1p1", 1, 1, 1}, {"k3s2p1", 2, 1, 1},
                                                       {"k3s1p0_nb", 1, 0, 0}, {"k4s2p1", 2, 1, 1}, {"k4s1p1", 1, 1, 1}, {"k5s1p2", 1, 2, 1}};
    char nm[64];
    for (size_t c = 0; c < sizeof c2 / sizeof c2[0]; c++) {
        snprintf(nm, sizeof nm, "conv2d_%s", c2[c].tag);
        run_case(nm, OPI(LT_CONV2D, 0, 0, c2[c].s, c2[c].p), 2 + c2[c].bias, HEAVY);
    }
    run_case("conv2d_ex_down", OPI(LT_CONV2D_EX, 0, 0, 2, 2, 0, 1, 0, 1), 3, HEAVY);
    run_case("conv2d_ex_asym", OPI(LT_CONV2D_EX, 0, 0, 1, 2, 2, 0, 1, 3), 3, HEAVY);
    run_case("conv2d_ex_asym_nb", OPI(LT_CONV2D_EX, 0, 0, 2, 1, 1, 0, 0, 2), 2, HEAVY);
    run_case("conv3d_k3s1p1", OPI(LT_CONV3D, 0, 0, 1, 1), 3, HEAVY);
    run_case("conv3d_k2s2p0_nb", OPI(LT_CONV3D, 0, 0, 2, 0), 2, HEAVY);
    run_case("conv3d_ex_a", OPI(LT_CONV3D_EX, 0, 0, 1, 2, 2, 1, 1, 0, 1, 0, 1), 3, HEAVY);
    run_case("conv3d_ex_b", OPI(LT_CONV3D_EX, 0, 0, 2, 1, 1, 0, 1, 1, 1, 2, 0), 2, HEAVY);
}

static void norms(void) {
    run_case("group_norm", OPI(LT_GROUP_NORM, 1e-6f, 0, 3), 3, HEAVY);
    run_case("group_norm_noaffine", OPI(LT_GROUP_NORM, 1e-5f, 0, 4), 1, HEAVY);
    run_case("group_norm_32", OPI(LT_GROUP_NORM, 1e-6f, 0, 32), 3, HEAVY);
    run_case("group_norm_5d", OPI(LT_GROUP_NORM, 1e-6f, 0, 2), 3, HEAVY);
    run_case("group_norm_offset", OPI(LT_GROUP_NORM, 1e-6f, 0, 2), 3, HEAVY);
    run_case("batch_norm_train", OPI(LT_BATCH_NORM, 0.1f, 1e-5f, 1), 3, HEAVY);
    run_case("batch_norm_train_noaffine", OPI(LT_BATCH_NORM, 0.1f, 1e-5f, 1), 1, HEAVY);
    run_case("batch_norm_train_5d", OPI(LT_BATCH_NORM, 0.1f, 1e-5f, 1), 3, HEAVY);
    run_case("batch_norm_eval", OPI(LT_BATCH_NORM, 0.1f, 1e-5f, 0), 3, HEAVY);
    run_case("layer_norm_1", OPI(LT_LAYER_NORM, 1e-5f, 0, 1), 3, HEAVY);
    run_case("layer_norm_2", OPI(LT_LAYER_NORM, 1e-6f, 0, 2), 3, HEAVY);
    run_case("layer_norm_noaffine", OPI(LT_LAYER_NORM, 1e-5f, 0, 1), 1, HEAVY);
    run_case("softmax_0", OPI(LT_SOFTMAX, 0, 0, 0), 1, HEAVY);
    run_case("softmax_1", OPI(LT_SOFTMAX, 0, 0, 1), 1, HEAVY);
    run_case("softmax_2", OPI(LT_SOFTMAX, 0, 0, 2), 1, HEAVY);
    run_case("softmax_large", OPI(LT_SOFTMAX, 0, 0, -1), 1, HEAVY);
    run_case("group_norm_silu", OPI(LT_GROUP_NORM_SILU, 1e-6f, 0, 3), 3, HEAVY);
    run_case("group_norm_silu_noaffine", OPI(LT_GROUP_NORM_SILU, 1e-5f, 0, 4), 1, HEAVY);
    run_case("group_norm_silu_32", OPI(LT_GROUP_NORM_SILU, 1e-6f, 0, 32), 3, HEAVY);
    run_case("group_norm_silu_5d", OPI(LT_GROUP_NORM_SILU, 1e-6f, 0, 2), 3, HEAVY);
}

/* ---- fused group norm + SiLU against the composition ------------------------------------ */
/* One pass of y = silu(group_norm(x)) (fused or not) into y and the gradients of sum(y * r)
   into g[0..2] (x, w, b; NULL inputs skipped). */
static int gn_silu_pass(int fused, ldm_tensor *x, ldm_tensor *w, ldm_tensor *b, int G, const float *r, float *y,
                        float *const *g) {
    ldm_tensor *in[3] = {x, w, b}, *wrt[3];
    float *dst[3];
    int n = 0;
    for (int k = 0; k < 3; k++) if (in[k]) { wrt[n] = in[k]; dst[n++] = g[k]; }
    ldm_tensor *out = fused ? ldm_group_norm_silu(ctx, x, w, b, G, 1e-6f) : ldm_silu(ctx, ldm_group_norm(ctx, x, w, b, G, 1e-6f));
    ldm_tensor *loss = ldm_sum_all(ctx, ldm_mul(ctx, out, ldm_from_host(ctx, out ? ldm_shape_of(out) : ldm_shape1(1), r)));
    if (!loss || ldm_grad(ctx, loss, n, wrt, dst)) return 0;
    memcpy(y, out->data, sizeof(float) * (size_t)out->numel);
    return 1;
}
static void gn_silu_vs_composition(int affine, int has_bias) {
    const int64_t B = 2, C = 64, H = 12, W = 10;
    const int G = 32;
    char nm[160];
    const char *tag = affine ? (has_bias ? "weight+bias" : "weight only") : "no affine";
    ldm_step_reset(ctx);
    ldm_tensor *x = ldm_randn(ctx, ldm_shape4(B, C, H, W)), *w = affine ? ldm_rand(ctx, ldm_shape1(C)) : NULL;
    ldm_tensor *b = affine && has_bias ? ldm_randn(ctx, ldm_shape1(C)) : NULL, *r = ldm_randn(ctx, ldm_shape4(B, C, H, W));
    if (!x || !r || (affine && !w) || (has_bias && !b)) { lt_report(0, "group_norm_silu setup", "%s", ldm_ctx_error(ctx)); return; }
    x->requires_grad = 1;
    for (int64_t i = 0; i < x->numel; i++) x->data[i] = 1.5f * x->data[i] + 0.5f; /* an offset mean, both signs of z */
    if (w) { w->requires_grad = 1; for (int64_t i = 0; i < C; i++) w->data[i] += 0.5f; }
    if (b) b->requires_grad = 1;
    int64_t n = x->numel;
    float *y[2], *g[2][3];
    for (int f = 0; f < 2; f++) {
        y[f] = (float *)malloc(sizeof(float) * (size_t)n);
        g[f][0] = (float *)malloc(sizeof(float) * (size_t)n);
        g[f][1] = (float *)malloc(sizeof(float) * (size_t)C);
        g[f][2] = (float *)malloc(sizeof(float) * (size_t)C);
    }
    int ok = gn_silu_pass(0, x, w, b, G, r->data, y[0], g[0]) && gn_silu_pass(1, x, w, b, G, r->data, y[1], g[1]);
    if (!ok) {
        lt_report(0, "group_norm_silu vs composition", "%s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
    } else {
        snprintf(nm, sizeof nm, "group_norm_silu %s [2,64,12,10] G32: forward bitwise == silu(group_norm)", tag);
        lt_close(nm, y[1], y[0], (long)n, 0, 0);
        snprintf(nm, sizeof nm, "group_norm_silu %s: d/dx vs composition", tag);
        lt_close(nm, g[1][0], g[0][0], (long)n, 1e-6, 1e-5);
        if (w) { snprintf(nm, sizeof nm, "group_norm_silu %s: d/dweight vs composition", tag); lt_close(nm, g[1][1], g[0][1], (long)C, 1e-6, 1e-5); }
        if (b) { snprintf(nm, sizeof nm, "group_norm_silu %s: d/dbias vs composition", tag); lt_close(nm, g[1][2], g[0][2], (long)C, 1e-6, 1e-5); }
    }
    for (int f = 0; f < 2; f++) { free(y[f]); for (int k = 0; k < 3; k++) free(g[f][k]); }
}
/* The fused op keeps no normalised activation: with grad on, its forward takes one
   activation of x's size less arena memory than the composition (whose silu node keeps z). */
static void gn_silu_memory(void) {
    const int64_t B = 1, C = 128, H = 32, W = 32;
    ldm_step_reset(ctx);
    ldm_tensor *x = ldm_randn(ctx, ldm_shape4(B, C, H, W)), *w = ldm_full(ctx, ldm_shape1(C), 1.0f), *b = ldm_zeros(ctx, ldm_shape1(C));
    if (!x || !w || !b) { lt_report(0, "group_norm_silu memory setup", "%s", ldm_ctx_error(ctx)); return; }
    x->requires_grad = w->requires_grad = b->requires_grad = 1;
    size_t u0 = ldm_arena_used(ctx, LDM_CPU);
    ldm_tensor *y0 = ldm_silu(ctx, ldm_group_norm(ctx, x, w, b, 32, 1e-6f));
    size_t u1 = ldm_arena_used(ctx, LDM_CPU);
    ldm_tensor *y1 = ldm_group_norm_silu(ctx, x, w, b, 32, 1e-6f);
    size_t u2 = ldm_arena_used(ctx, LDM_CPU);
    size_t unfused = u1 - u0, fused = u2 - u1, act = sizeof(float) * (size_t)x->numel;
    int ok = y0 && y1 && y0->requires_grad && y1->requires_grad && unfused >= fused + act;
    lt_report(ok, "group_norm_silu [1,128,32,32] saves one activation of arena memory on the tape",
              "composition %zu bytes, fused %zu bytes, activation %zu bytes", unfused, fused, act);
    printf("     arena per call with grad: silu(group_norm) %zu bytes, group_norm_silu %zu bytes (saves %zu)\n",
           unfused, fused, unfused - fused);
    /* the backward works from what was saved, and agrees with the composition's */
    float *gx0 = (float *)malloc(sizeof(float) * (size_t)x->numel);
    ldm_tensor *wrt[1] = {x};
    float *outs0[1] = {gx0};
    ldm_tensor *l0 = ldm_sum_all(ctx, ldm_square(ctx, y0)), *l1 = ldm_sum_all(ctx, ldm_square(ctx, y1));
    ok = l0 && l1 && ldm_grad(ctx, l0, 1, wrt, outs0) == LDM_OK;
    float *gx1 = (float *)malloc(sizeof(float) * (size_t)x->numel);
    float *outs1[1] = {gx1};
    ok = ok && ldm_grad(ctx, l1, 1, wrt, outs1) == LDM_OK;
    if (ok) lt_close("group_norm_silu [1,128,32,32] d(sum y^2)/dx vs composition", gx1, gx0, (long)x->numel, 1e-6, 1e-5);
    else { lt_report(0, "group_norm_silu memory backward", "%s", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); }
    free(gx0);
    free(gx1);
}

static void spatial(void) {
    run_case("upsample2d", OPI(LT_UPSAMPLE, 0, 0, 1, 2, 2), 1, SIMPLE);
    run_case("upsample2d_31", OPI(LT_UPSAMPLE, 0, 0, 1, 3, 1), 1, SIMPLE);
    run_case("upsample3d", OPI(LT_UPSAMPLE, 0, 0, 2, 2, 2), 1, SIMPLE);
    run_case("upsample3d_122", OPI(LT_UPSAMPLE, 0, 0, 1, 2, 2), 1, SIMPLE);
    struct { const char *tag; int k, s, p; } pc[] = {{"k2s2p0", 2, 2, 0}, {"k3s2p1", 3, 2, 1}, {"k3s1p1", 3, 1, 1}, {"k2s1p1", 2, 1, 1}, {"k3s3p0", 3, 3, 0}};
    char nm[64];
    for (size_t c = 0; c < sizeof pc / sizeof pc[0]; c++) {
        static const char *kinds[4] = {"avg_pool2d", "max_pool2d", "avg_pool3d", "max_pool3d"};
        for (int k = 0; k < 4; k++) {
            snprintf(nm, sizeof nm, "%s_%s", kinds[k], pc[c].tag);
            run_case(nm, OPI(k & 1 ? LT_MAX_POOL : LT_AVG_POOL, 0, 0, pc[c].k, pc[c].s, pc[c].p), 1, SIMPLE);
        }
    }
    run_case("max_pool2d_neg", OPI(LT_MAX_POOL, 0, 0, 3, 2, 1), 1, SIMPLE);
    run_case("pad_1", OPI(LT_PAD, 0, 0, 1, 1, 2), 1, SIMPLE);
    run_case("pad_2", OPI(LT_PAD, 0.5f, 0, 2, 0, 1, 0, 1), 1, SIMPLE);
    run_case("pad_3", OPI(LT_PAD, -1.0f, 0, 3, 1, 0, 2, 1, 0, 1), 1, SIMPLE);
}

static void shapes(void) {
    lt_op r = lt_op_make(LT_RESHAPE);
    r.shape = ldm_shape3(4, -1, 3);
    run_case("reshape", r, 1, SIMPLE);
    run_case("permute_3", OPI(LT_PERMUTE, 0, 0, 2, 0, 1), 1, SIMPLE);
    run_case("permute_4", OPI(LT_PERMUTE, 0, 0, 0, 2, 3, 1), 1, SIMPLE);
    run_case("permute_5", OPI(LT_PERMUTE, 0, 0, 4, 2, 0, 3, 1), 1, SIMPLE);
    run_case("transpose", OPI(LT_TRANSPOSE, 0, 0, 1, -1), 1, SIMPLE);
    run_case("concat_2", OPI(LT_CONCAT, 0, 0, 1), 2, SIMPLE);
    run_case("concat_6", OPI(LT_CONCAT, 0, 0, 0), 6, SIMPLE);
    run_case("concat_last", OPI(LT_CONCAT, 0, 0, -1), 3, SIMPLE);
    run_case("slice", OPI(LT_SLICE, 0, 0, 1, 1, 3), 1, SIMPLE);
    run_case("split", OPI(LT_SPLIT, 0, 0, 3, 2, 1, 3, 1), 1, SIMPLE);
    run_case("chunk", OPI(LT_CHUNK, 0, 0, 3, 1), 1, SIMPLE);
    run_case("copy", lt_op_make(LT_COPY), 1, SIMPLE);
    run_case("embedding", lt_op_make(LT_EMBEDDING), 1, SIMPLE);
    run_case("graph", OPI(LT_GRAPH, 1e-6f, 0, 2), 5, HEAVY);
}

/* ---- chunked im2col against direct loops ----------------------------------------------- */
static void conv_direct(const ldm_conv_desc *d, const float *x, const float *w, const float *b, const float *dy,
                        double *y, double *dx, double *dw) {
    for (int64_t n = 0; n < d->B; n++)
        for (int64_t o = 0; o < d->O; o++)
            for (int64_t oy = 0; oy < d->OH; oy++)
                for (int64_t ox = 0; ox < d->OW; ox++) {
                    int64_t oi = ((n * d->O + o) * d->OH + oy) * d->OW + ox;
                    double s = b ? b[o] : 0.0, g = dy[oi];
                    for (int64_t c = 0; c < d->C; c++)
                        for (int ky = 0; ky < d->kh; ky++) {
                            int64_t iy = oy * d->sh - d->pad[2] + ky;
                            if (iy < 0 || iy >= d->H) continue;
                            for (int kx = 0; kx < d->kw; kx++) {
                                int64_t ix = ox * d->sw - d->pad[4] + kx;
                                if (ix < 0 || ix >= d->W) continue;
                                int64_t xi = ((n * d->C + c) * d->H + iy) * d->W + ix, wi = ((o * d->C + c) * d->kh + ky) * d->kw + kx;
                                s += (double)x[xi] * w[wi];
                                dx[xi] += g * w[wi];
                                dw[wi] += g * x[xi];
                            }
                        }
                    y[oi] = s;
                }
}
static void conv_chunked(int stride, int pad_lo, int pad_hi) {
    ldm_step_reset(ctx);
    /* K = 128*9 = 1152: columns come in chunks of 4M/K = 3640 output positions, which do not
       start on a row boundary (OW 64 or 32) */
    ldm_tensor *x = ldm_randn(ctx, ldm_shape4(1, 128, 64, 64)), *w = ldm_randn(ctx, ldm_shape4(6, 128, 3, 3)), *b = ldm_randn(ctx, ldm_shape1(6));
    if (!x || !w || !b) return;
    x->requires_grad = w->requires_grad = 1;
    for (int64_t i = 0; i < w->numel; i++) w->data[i] *= 0.05f;
    ldm_tensor *y = ldm_conv2d_ex(ctx, x, w, b, stride, stride, pad_lo, pad_hi, pad_lo, pad_hi);
    if (!y) { lt_report(0, "chunked conv", "%s", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); return; }
    ldm_tensor *dy = ldm_randn(ctx, ldm_shape_of(y));
    ldm_backward_from(ctx, y, dy->data);
    ldm_conv_desc d;
    memset(&d, 0, sizeof d);
    d.B = 1; d.C = 128; d.T = 1; d.H = 64; d.W = 64; d.O = 6; d.kt = 1; d.kh = 3; d.kw = 3; d.st = 1; d.sh = stride; d.sw = stride;
    d.pad[2] = d.pad[4] = pad_lo; d.pad[3] = d.pad[5] = pad_hi;
    ldm_conv_desc_init(&d);
    double *ry = (double *)calloc((size_t)y->numel, sizeof(double)), *rdx = (double *)calloc((size_t)x->numel, sizeof(double)),
           *rdw = (double *)calloc((size_t)w->numel, sizeof(double));
    conv_direct(&d, x->data, w->data, b->data, dy->data, ry, rdx, rdw);
    float *fy = (float *)malloc(sizeof(float) * (size_t)y->numel), *fdx = (float *)malloc(sizeof(float) * (size_t)x->numel),
          *fdw = (float *)malloc(sizeof(float) * (size_t)w->numel);
    for (int64_t i = 0; i < y->numel; i++) fy[i] = (float)ry[i];
    for (int64_t i = 0; i < x->numel; i++) fdx[i] = (float)rdx[i];
    for (int64_t i = 0; i < w->numel; i++) fdw[i] = (float)rdw[i];
    char nm[128];
    snprintf(nm, sizeof nm, "chunked conv s%d pad(%d,%d) [1,128,64,64] forward vs direct", stride, pad_lo, pad_hi);
    lt_close(nm, y->data, fy, y->numel, 1e-4, 1e-4);
    snprintf(nm, sizeof nm, "chunked conv s%d pad(%d,%d) d/dx vs direct", stride, pad_lo, pad_hi);
    lt_close(nm, x->grad, fdx, x->numel, 1e-4, 1e-4);
    snprintf(nm, sizeof nm, "chunked conv s%d pad(%d,%d) d/dw vs direct", stride, pad_lo, pad_hi);
    lt_close(nm, w->grad, fdw, w->numel, 1e-3, 1e-4);
    free(ry); free(rdx); free(rdw); free(fy); free(fdx); free(fdw);
}

/* ---- argument errors: NULL, LDM_ERR_INVALID and a message naming the op ------------------- */
static void expect_invalid(ldm_tensor *got, const char *what, const char *must_say) {
    char nm[160];
    snprintf(nm, sizeof nm, "rejects %s", what);
    int ok = got == NULL && ldm_ctx_status(ctx) == LDM_ERR_INVALID && strstr(ldm_ctx_error(ctx), must_say) != NULL;
    lt_report(ok, nm, "got %p, status %d, message '%s' (wanted it to mention '%s')", (void *)got, (int)ldm_ctx_status(ctx),
              ldm_ctx_error(ctx), must_say);
    ldm_ctx_clear_error(ctx);
}
static void errors(void) {
    ldm_step_reset(ctx);
    ldm_tensor *a = ldm_zeros(ctx, ldm_shape2(2, 3)), *b4 = ldm_zeros(ctx, ldm_shape1(4)), *img = ldm_zeros(ctx, ldm_shape4(1, 4, 5, 5));
    ldm_tensor *w3 = ldm_zeros(ctx, ldm_shape4(2, 3, 3, 3)), *w9 = ldm_zeros(ctx, ldm_shape4(2, 4, 7, 7)), *c4 = ldm_zeros(ctx, ldm_shape1(4));
    ldm_tensor *out[4];
    expect_invalid(ldm_add(ctx, a, b4), "add of [2,3] and [4]", "ldm_add: shapes [2, 3] and [4] do not broadcast");
    expect_invalid(ldm_matmul(ctx, a, a, 0, 0), "matmul [2,3] x [2,3]", "ldm_matmul");
    expect_invalid(ldm_matmul(ctx, b4, a, 0, 0), "matmul of a 1-D operand", "ldm_matmul");
    expect_invalid(ldm_linear(ctx, a, ldm_zeros(ctx, ldm_shape2(5, 4)), NULL), "linear with weight [5,4] for 3 inputs", "ldm_linear");
    expect_invalid(ldm_conv2d(ctx, img, w3, NULL, 1, 1), "conv2d with 3 weight channels for 4 input channels", "ldm_conv2d");
    expect_invalid(ldm_conv2d(ctx, img, w9, NULL, 1, 0), "conv2d 7x7 kernel on 5x5 without padding", "ldm_conv2d");
    expect_invalid(ldm_conv2d(ctx, img, w9, c4, 1, 1), "conv2d bias of the wrong size", "ldm_conv2d");
    expect_invalid(ldm_conv2d(ctx, img, ldm_zeros(ctx, ldm_shape4(2, 4, 3, 3)), NULL, 0, 1), "conv2d stride 0", "ldm_conv2d");
    expect_invalid(ldm_conv3d(ctx, img, w3, NULL, 1, 1), "conv3d of a 4-D input", "ldm_conv3d");
    expect_invalid(ldm_group_norm(ctx, img, NULL, NULL, 3, 1e-5f), "group_norm 3 groups of 4 channels", "ldm_group_norm");
    expect_invalid(ldm_group_norm(ctx, img, b4, ldm_zeros(ctx, ldm_shape1(3)), 2, 1e-5f), "group_norm bias of 3 for 4 channels", "ldm_group_norm");
    expect_invalid(ldm_group_norm_silu(ctx, img, NULL, NULL, 3, 1e-5f), "group_norm_silu 3 groups of 4 channels", "ldm_group_norm_silu: 3 groups");
    expect_invalid(ldm_group_norm_silu(ctx, b4, NULL, NULL, 1, 1e-5f), "group_norm_silu of a 1-D tensor", "ldm_group_norm_silu: input [4]");
    expect_invalid(ldm_batch_norm(ctx, img, NULL, NULL, NULL, NULL, 0, 0.1f, 1e-5f), "batch_norm eval without running stats", "ldm_batch_norm");
    expect_invalid(ldm_batch_norm(ctx, ldm_zeros(ctx, ldm_shape2(1, 4)), NULL, NULL, NULL, NULL, 1, 0.1f, 1e-5f), "batch_norm training on one value per channel", "ldm_batch_norm");
    expect_invalid(ldm_layer_norm(ctx, a, NULL, NULL, 3, 1e-5f), "layer_norm over 3 dims of a 2-D tensor", "ldm_layer_norm");
    expect_invalid(ldm_layer_norm(ctx, a, b4, NULL, 1, 1e-5f), "layer_norm weight of 4 for 3", "ldm_layer_norm");
    expect_invalid(ldm_softmax(ctx, a, 2), "softmax dim 2 of a 2-D tensor", "ldm_softmax: dim 2 out of range");
    expect_invalid(ldm_upsample_nearest(ctx, img, 2, 2, 2), "upsample of a 4-D tensor along T", "ldm_upsample_nearest");
    expect_invalid(ldm_upsample_nearest(ctx, a, 1, 2, 2), "upsample of a 2-D tensor", "ldm_upsample_nearest");
    expect_invalid(ldm_avg_pool(ctx, img, 3, 1, 2), "avg_pool padding above half the kernel", "ldm_avg_pool");
    expect_invalid(ldm_max_pool(ctx, img, 7, 1, 0), "max_pool kernel larger than the input", "ldm_max_pool");
    int negpad[2] = {-1, 1};
    expect_invalid(ldm_pad(ctx, a, 1, negpad, 0.0f), "negative padding", "ldm_pad");
    expect_invalid(ldm_pad(ctx, a, 3, negpad, 0.0f), "padding 3 dims of a 2-D tensor", "ldm_pad");
    expect_invalid(ldm_reshape(ctx, a, ldm_shape2(4, 2)), "reshape [2,3] to [4,2]", "ldm_reshape: cannot view [2, 3] as [4, 2]");
    expect_invalid(ldm_reshape(ctx, a, ldm_shape2(-1, 4)), "reshape [2,3] to [-1,4]", "ldm_reshape");
    int badperm[2] = {0, 0};
    expect_invalid(ldm_permute(ctx, a, badperm), "permutation (0,0)", "ldm_permute");
    expect_invalid(ldm_transpose(ctx, a, 0, 2), "transpose of dim 2 of a 2-D tensor", "ldm_transpose");
    ldm_tensor *pair[2] = {a, b4};
    expect_invalid(ldm_concat(ctx, 2, pair, 0), "concat [2,3] with [4]", "ldm_concat");
    expect_invalid(ldm_slice(ctx, a, 1, 2, 2), "slice [2,4) of a dim of 3", "ldm_slice");
    int64_t sizes[2] = {1, 1};
    ldm_result r = ldm_split(ctx, a, 2, sizes, 1, out);
    expect_invalid(r == LDM_ERR_INVALID ? NULL : a, "split sizes adding to 2 of 3", "ldm_split");
    r = ldm_chunk(ctx, a, 2, 1, out);
    expect_invalid(r == LDM_ERR_INVALID ? NULL : a, "3 into 2 chunks", "ldm_chunk");
    expect_invalid(ldm_dropout(ctx, a, 1.5f, 1), "dropout p 1.5", "ldm_dropout");
    int64_t idx[2] = {0, 9};
    expect_invalid(ldm_embedding(ctx, a, 2, idx), "embedding index 9 of 2 rows", "ldm_embedding: index 9");
    expect_invalid(ldm_sum(ctx, a, LDM_DIM(2), 0), "sum over dim 2 of a 2-D tensor", "ldm_sum");
    /* after an error every op returns NULL until the error is cleared */
    ldm_add(ctx, a, b4);
    LT_CHECK(ldm_exp(ctx, a) == NULL && ldm_ctx_status(ctx) == LDM_ERR_INVALID, "errors are sticky");
    ldm_ctx_clear_error(ctx);
    LT_CHECK(ldm_exp(ctx, a) != NULL, "clearing the error lets ops run again");
}

int main(void) {
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.threads = 2;
    s.seed = 5;
    s.arena_bytes = (size_t)256 << 20;
    if (ldm_ctx_create(&ctx, &s)) { printf("FAIL ctx create\n"); return 1; }
    if (ldm_weights_open(ctx, &fx, "../tests/fixtures/ops.safetensors")) {
        lt_report(0, "open ops.safetensors", "%s (regenerate with /usr/bin/python3 tests/ref/ops_ref.py)", ldm_ctx_error(ctx));
        ldm_ctx_destroy(ctx);
        return lt_finish("test_ops");
    }
    elementwise();
    reductions();
    linalg();
    convs();
    norms();
    spatial();
    shapes();
    errors();
    conv_chunked(1, 1, 1);
    conv_chunked(2, 0, 1);
    gn_silu_vs_composition(1, 1);
    gn_silu_vs_composition(1, 0);
    gn_silu_vs_composition(0, 0);
    gn_silu_memory();
    ldm_weights_close(fx);
    ldm_ctx_destroy(ctx);
    return lt_finish("test_ops");
}
