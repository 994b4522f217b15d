/* test_nn.c - ldm_nn.h: registry, init, layers against PyTorch (outputs, gradients, BatchNorm
   running statistics), state-dict load/save (strict errors, prefixes, rename, unit dims, .pth),
   optimizers against torch 1.13 (Adam, AdamW, SGD), optimizer state round trip, clipping.
   Fixtures: tests/ref/nn_ref.py. Loaders are exercised, so this also runs under
   LDM_TEST_SANITIZE (ASan/UBSan). */
#define LDM_IMPLEMENTATION
#include "ldm_test.h"
#include "../ldm_nn.h"

#define FIX "../tests/fixtures/"

static ldm_ctx *new_ctx(uint64_t seed) {
    ldm_ctx *ctx;
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.seed = seed;
    s.arena_bytes = (size_t)256 << 20;
    if (ldm_ctx_create(&ctx, &s)) { printf("FAIL cannot create a context\n"); exit(1); }
    return ctx;
}
static int check_ok(ldm_ctx *ctx, const char *name) {
    int ok = ldm_ctx_status(ctx) == LDM_OK;
    lt_report(ok, name, "%s", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    return ok;
}

/* ---- the reference model (tests/ref/nn_ref.py: Net) ------------------------------------ */
typedef struct {
    ldm_nn_conv2d conv, down, head0;
    ldm_nn_groupnorm gn;
    ldm_nn_batchnorm bn, head1;
    ldm_nn_linear lin;
    ldm_nn_embedding emb;
    ldm_nn_layernorm ln;
    ldm_nn_conv3d vol;
} net;

static void net_init(ldm_nn_params *P, net *m) {
    int pd[4] = {0, 1, 0, 1}, ph[4] = {1, 1, 0, 0};
    ldm_nn_conv2d_init(P, &m->conv, "conv", 3, 8, 3, 1, 1, 1);
    ldm_nn_groupnorm_init(P, &m->gn, "gn", 4, 8, 1e-6f, 1);
    ldm_nn_batchnorm_init(P, &m->bn, "bn", 8, 1e-5f, 0.1f, 1, 1);
    ldm_nn_conv2d_init_ex(P, &m->down, "down", 8, 8, 3, 3, 2, 2, pd, 1);
    ldm_nn_push(P, "head");
    ldm_nn_conv2d_init_ex(P, &m->head0, "0", 8, 4, 3, 2, 2, 1, ph, 0);
    ldm_nn_batchnorm_init(P, &m->head1, "1", 4, 1e-5f, -1.0f, 1, 1); /* momentum=None */
    ldm_nn_pop(P);
    ldm_nn_linear_init(P, &m->lin, "lin", 24, 6, 1);
    ldm_nn_embedding_init(P, &m->emb, "emb", 10, 6);
    ldm_nn_layernorm_init(P, &m->ln, "ln", ldm_shape1(6), 1e-5f, 1);
    ldm_nn_pushf(P, "%s", "vol");
    ldm_nn_conv3d_init(P, &m->vol, "conv", 2, 3, 3, 1, 1, 1);
    ldm_nn_pop(P);
}

static ldm_nn_params *net_new(ldm_ctx *ctx, net *m) {
    ldm_nn_params *P;
    if (ldm_nn_params_create(ctx, &P, LDM_CPU)) return NULL;
    net_init(P, m);
    if (ldm_nn_params_alloc(ctx, P)) { printf("alloc: %s\n", ldm_ctx_error(ctx)); ldm_nn_params_destroy(P); return NULL; }
    return P;
}

/* ---- registry ----------------------------------------------------------------------------- */
static void test_registry(void) {
    ldm_ctx *ctx = new_ctx(1);
    net m;
    ldm_nn_params *P = net_new(ctx, &m);
    if (!P) { lt_report(0, "registry: build", "%s", ldm_ctx_error(ctx)); ldm_ctx_destroy(ctx); return; }
    const char *want[] = {"conv.weight", "conv.bias", "gn.weight", "gn.bias", "bn.weight", "bn.bias", "bn.running_mean",
                          "bn.running_var", "bn.num_batches_tracked", "down.weight", "down.bias", "head.0.weight",
                          "head.1.weight", "head.1.bias", "head.1.running_mean", "head.1.running_var",
                          "head.1.num_batches_tracked", "lin.weight", "lin.bias", "emb.weight", "ln.weight", "ln.bias",
                          "vol.conv.weight", "vol.conv.bias"};
    int n = (int)(sizeof want / sizeof want[0]), names_ok = ldm_nn_count(P) == n;
    for (int i = 0; names_ok && i < n; i++) names_ok = !strcmp(ldm_nn_entry_at(P, i)->name, want[i]);
    LT_CHECK(names_ok, "registry: PyTorch state-dict names in registration order");
    LT_CHECK(ldm_nn_find(P, "head.1.running_var") == m.head1.running_var && ldm_nn_find(P, "nope") == NULL &&
             ldm_nn_index(P, "vol.conv.bias") == n - 1, "registry: lookup by name");
    LT_CHECK(m.head0.bias == NULL && m.head0.weight->shape[2] == 3 && m.head0.weight->shape[3] == 2 &&
             m.vol.weight->ndim == 5 && m.bn.num_batches_tracked->ndim == 0 && m.bn.num_batches_tracked->numel == 1,
             "registry: shapes (bias flag, asymmetric kernel, conv3d, scalar buffer)");
    LT_CHECK(!strcmp(m.lin.weight->name, "lin.weight") && m.lin.weight->requires_grad && !m.bn.running_mean->requires_grad,
             "registry: tensor names and requires_grad");
    int64_t np = ldm_nn_numel(P, NULL, 0);
    int64_t want_np = 8 * 3 * 9 + 8 + 8 + 8 + 8 + 8 + 8 * 8 * 9 + 8 + 4 * 8 * 6 + 4 + 4 + 24 * 6 + 6 + 60 + 6 + 6 + 3 * 2 * 27 + 3;
    LT_CHECK(np == want_np && ldm_nn_numel(P, "head", 0) == 4 * 8 * 6 + 8 && ldm_nn_numel(P, "vol.conv.bias", 0) == 3,
             "registry: parameter counts (buffers excluded, pattern)");
    /* blocks: slices 64-byte aligned, grads mirror the params, buffers apart */
    int64_t nb[3];
    float *pb = ldm_nn_block(P, LDM_NN_BLOCK_PARAMS, &nb[0]), *gb = ldm_nn_block(P, LDM_NN_BLOCK_GRADS, &nb[1]),
          *bb = ldm_nn_block(P, LDM_NN_BLOCK_BUFFERS, &nb[2]);
    int lay = nb[0] == nb[1] && nb[0] >= np && nb[2] >= 8 + 8 + 1 + 4 + 4 + 1;
    for (int i = 0; i < n; i++) {
        const ldm_nn_entry *e = ldm_nn_entry_at(P, i);
        lay = lay && ((uintptr_t)e->t->data % 64) == 0;
        if (e->kind == LDM_NN_PARAM) lay = lay && e->t->data == pb + e->offset && e->t->grad == gb + e->grad_offset && e->offset == e->grad_offset;
        else lay = lay && e->t->data == bb + e->offset && e->t->grad == NULL;
    }
    LT_CHECK(lay, "registry: one parameter block, one mirrored gradient block, one buffer block, aligned slices");
    /* patterns */
    LT_CHECK(ldm_nn_match("encoder", "encoder.conv_in.weight") && !ldm_nn_match("encoder", "encoder2.x") &&
             ldm_nn_match("encoder.", "encoder.x") && ldm_nn_match("loss.logvar", "loss.logvar") &&
             ldm_nn_match("*.lora_up", "a.b.lora_up.weight") && !ldm_nn_match("*.lora_up", "a.lora_upx.weight") &&
             ldm_nn_match("decoder.up.*.attn", "decoder.up.2.attn.1.q.weight") && ldm_nn_match(NULL, "x") &&
             ldm_nn_match("", "x") && !ldm_nn_match("decoder.conv_out", "decoder.conv_out2.weight"),
             "registry: module-boundary patterns with wildcards");
    /* freeze after alloc: requires_grad off, slice kept; unfreeze works */
    LT_CHECK(ldm_nn_set_trainable(P, "head", 0) == LDM_OK && !m.head0.weight->requires_grad && m.head0.weight->grad &&
             ldm_nn_numel(P, NULL, 1) == np - (4 * 8 * 6 + 8) && ldm_nn_set_trainable(P, "head", 1) == LDM_OK &&
             m.head0.weight->requires_grad, "registry: freeze / unfreeze after alloc");
    LT_CHECK(ldm_nn_set_trainable(P, "hed", 0) == LDM_ERR_NOT_FOUND && strstr(ldm_ctx_error(ctx), "hed"), "registry: freezing a typo is an error");
    ldm_ctx_clear_error(ctx);
    LT_CHECK(ldm_nn_param(P, "late", ldm_shape1(3), ldm_nn_init_const(0)) == NULL && strstr(ldm_ctx_error(ctx), "after ldm_nn_params_alloc"),
             "registry: registering after alloc is an error");
    ldm_ctx_clear_error(ctx);
    ldm_nn_params_destroy(P);

    /* freeze before alloc: no gradient memory; unfreezing later is refused */
    ldm_nn_params *Q;
    ldm_nn_params_create(ctx, &Q, LDM_CPU);
    net_init(Q, &m);
    ldm_nn_set_trainable(Q, "conv", 0);
    ldm_nn_set_trainable(Q, "vol", 0);
    ldm_nn_params_alloc(ctx, Q);
    int64_t ng, np_q;
    ldm_nn_block(Q, LDM_NN_BLOCK_GRADS, &ng);
    ldm_nn_block(Q, LDM_NN_BLOCK_PARAMS, &np_q);
    LT_CHECK(check_ok(ctx, "registry: freeze before alloc builds") && m.conv.weight->grad == NULL && m.vol.weight->grad == NULL &&
             m.gn.weight->grad != NULL && ng > 0 && ng < np_q &&
             ldm_nn_entry_at(Q, 0)->grad_offset == -1, "registry: frozen before alloc has no gradient slice");
    LT_CHECK(ldm_nn_set_trainable(Q, "conv", 1) == LDM_ERR_INVALID && strstr(ldm_ctx_error(ctx), "conv.weight"),
             "registry: unfreezing a parameter without a gradient slice is refused");
    ldm_ctx_clear_error(ctx);
    ldm_nn_params_destroy(Q);

    /* duplicate names and unbalanced push are caught at alloc */
    ldm_nn_params_create(ctx, &Q, LDM_CPU);
    ldm_nn_push(Q, "a");
    ldm_nn_param(Q, "w", ldm_shape1(2), ldm_nn_init_const(0));
    ldm_nn_pop(Q);
    ldm_nn_param(Q, "a.w", ldm_shape1(2), ldm_nn_init_const(0));
    LT_CHECK(ldm_nn_params_alloc(ctx, Q) == LDM_ERR_INVALID && strstr(ldm_ctx_error(ctx), "\"a.w\" is registered twice"),
             "registry: duplicate names are an error");
    ldm_ctx_clear_error(ctx);
    ldm_nn_params_destroy(Q);
    ldm_nn_params_create(ctx, &Q, LDM_CPU);
    ldm_nn_pushf(Q, "down.%d", 3);
    ldm_nn_param(Q, "w", ldm_shape1(2), ldm_nn_init_const(0));
    LT_CHECK(!strcmp(ldm_nn_entry_at(Q, 0)->name, "down.3.w") && ldm_nn_params_alloc(ctx, Q) == LDM_ERR_INVALID &&
             strstr(ldm_ctx_error(ctx), "without ldm_nn_pop"), "registry: pushf names, unbalanced push is an error");
    ldm_ctx_clear_error(ctx);
    ldm_nn_params_destroy(Q);
    ldm_ctx_destroy(ctx);
}

/* ---- init -------------------------------------------------------------------------------- */
static void stats(const float *x, int64_t n, double *mean, double *var, float *amax) {
    double s = 0, s2 = 0;
    float mx = 0;
    for (int64_t i = 0; i < n; i++) { s += x[i]; if (fabsf(x[i]) > mx) mx = fabsf(x[i]); }
    *mean = s / (double)n;
    for (int64_t i = 0; i < n; i++) s2 += (x[i] - *mean) * (x[i] - *mean);
    *var = s2 / (double)n;
    *amax = mx;
}

typedef struct { ldm_nn_conv2d c; ldm_nn_linear l; ldm_nn_groupnorm g; ldm_nn_batchnorm b; ldm_nn_embedding e; ldm_nn_conv3d c3; ldm_nn_conv2d d; } initnet;
static ldm_nn_params *initnet_new(ldm_ctx *ctx, initnet *m) {
    ldm_nn_params *P;
    ldm_nn_params_create(ctx, &P, LDM_CPU);
    ldm_nn_conv2d_init(P, &m->c, "c", 64, 128, 3, 1, 1, 1);
    ldm_nn_linear_init(P, &m->l, "l", 1000, 300, 1);
    ldm_nn_groupnorm_init(P, &m->g, "g", 32, 128, 1e-6f, 1);
    ldm_nn_batchnorm_init(P, &m->b, "b", 16, 1e-5f, 0.1f, 1, 1);
    ldm_nn_embedding_init(P, &m->e, "e", 500, 64);
    ldm_nn_conv3d_init(P, &m->c3, "c3", 4, 8, 3, 1, 1, 1);
    ldm_nn_conv2d_init(P, &m->d, "d", 64, 256, 4, 2, 1, 0);
    /* taming's discriminator init: conv N(0, 0.02), BN weight N(1, 0.02) */
    ldm_nn_set_init(P, m->d.weight, ldm_nn_init_normal(0.0f, 0.02f));
    ldm_nn_set_init(P, m->b.weight, ldm_nn_init_normal(1.0f, 0.02f));
    if (ldm_nn_params_alloc(ctx, P)) { ldm_nn_params_destroy(P); return NULL; }
    return P;
}

static void test_init(void) {
    ldm_ctx *ctx = new_ctx(42);
    initnet m;
    ldm_nn_params *P = initnet_new(ctx, &m);
    if (!check_ok(ctx, "init: build") || !P) { ldm_ctx_destroy(ctx); return; }
    double mean, var;
    float amax;
    struct { const char *name; ldm_tensor *t; double bound; } U[] = {
        {"conv2d weight", m.c.weight, 1.0 / sqrt(64 * 9.0)}, {"conv2d bias", m.c.bias, 1.0 / sqrt(64 * 9.0)},
        {"linear weight", m.l.weight, 1.0 / sqrt(1000.0)}, {"linear bias", m.l.bias, 1.0 / sqrt(1000.0)},
        {"conv3d weight", m.c3.weight, 1.0 / sqrt(4 * 27.0)}};
    for (int i = 0; i < 5; i++) {
        char nm[128];
        stats(U[i].t->data, U[i].t->numel, &mean, &var, &amax);
        double sd_mean = U[i].bound / sqrt(3.0 * (double)U[i].t->numel);
        snprintf(nm, sizeof nm, "init: %s U(+-1/sqrt(fan_in)): max %.5f <= %.5f, mean %.2e, var/theory %.3f", U[i].name, amax,
                 U[i].bound, mean, var / (U[i].bound * U[i].bound / 3.0));
        int big = U[i].t->numel > 1000;
        LT_CHECK(amax <= U[i].bound && amax > 0.9 * U[i].bound && fabs(mean) < 5 * sd_mean &&
                 fabs(var / (U[i].bound * U[i].bound / 3.0) - 1.0) < (big ? 0.03 : 0.3), nm);
    }
    int ok = 1;
    for (int i = 0; i < 128; i++) ok = ok && m.g.weight->data[i] == 1.0f && m.g.bias->data[i] == 0.0f;
    for (int i = 0; i < 16; i++) ok = ok && m.b.bias->data[i] == 0.0f && m.b.running_mean->data[i] == 0.0f && m.b.running_var->data[i] == 1.0f;
    LT_CHECK(ok && m.b.num_batches_tracked->data[0] == 0.0f, "init: norm weight 1 bias 0; running_mean 0, running_var 1, num_batches_tracked 0");
    stats(m.e.weight->data, m.e.weight->numel, &mean, &var, &amax);
    LT_CHECK(fabs(mean) < 0.02 && fabs(var - 1.0) < 0.03, "init: embedding N(0, 1)");
    stats(m.d.weight->data, m.d.weight->numel, &mean, &var, &amax);
    LT_CHECK(fabs(mean) < 0.001 && fabs(sqrt(var) / 0.02 - 1.0) < 0.02, "init: override conv weight N(0, 0.02)");
    stats(m.b.weight->data, 16, &mean, &var, &amax);
    LT_CHECK(fabs(mean - 1.0) < 0.02 && sqrt(var) > 0.005 && sqrt(var) < 0.04, "init: override BN weight N(1, 0.02)");

    /* same seed: same values, independent of the thread count; other seed: others */
    ldm_ctx *c2 = new_ctx(42), *c3 = new_ctx(43);
    ldm_ctx_set_threads(c2, 1);
    initnet m2, m3;
    ldm_nn_params *P2 = initnet_new(c2, &m2), *P3 = initnet_new(c3, &m3);
    int64_t n1, n2;
    float *b1 = ldm_nn_block(P, LDM_NN_BLOCK_PARAMS, &n1), *b2 = P2 ? ldm_nn_block(P2, LDM_NN_BLOCK_PARAMS, &n2) : NULL;
    LT_CHECK(b2 && n1 == n2 && !memcmp(b1, b2, sizeof(float) * (size_t)n1), "init: same seed, same values (1 vs N threads)");
    LT_CHECK(P3 && memcmp(b1, ldm_nn_block(P3, LDM_NN_BLOCK_PARAMS, NULL), sizeof(float) * 1000) != 0, "init: another seed, other values");
    /* re-init draws new values from the advanced RNG, rules unchanged */
    float first = m.c.weight->data[0];
    ldm_nn_params_init(ctx, P);
    LT_CHECK(m.c.weight->data[0] != first && m.g.weight->data[5] == 1.0f, "init: ldm_nn_params_init redraws");
    ldm_nn_params_destroy(P);
    ldm_nn_params_destroy(P2);
    ldm_nn_params_destroy(P3);
    ldm_ctx_destroy(ctx);
    ldm_ctx_destroy(c2);
    ldm_ctx_destroy(c3);
}

/* ---- layers against PyTorch -------------------------------------------------------------- */
static int cmp_fixture(ldm_ctx *ctx, ldm_weights *io, const char *key, const ldm_tensor *t, double atol, double rtol, const char *label) {
    long n = 0;
    float *want = lt_load(ctx, io, key, &n);
    char nm[160];
    snprintf(nm, sizeof nm, "%s %s", label, key);
    if (!want || !t) { lt_report(0, nm, "missing (%s)", t ? "fixture" : ldm_ctx_error(ctx)); free(want); return 0; }
    if (n != (long)t->numel) { lt_report(0, nm, "numel %ld vs %lld", n, (long long)t->numel); free(want); return 0; }
    int ok = lt_close(nm, t->data, want, n, atol, rtol);
    free(want);
    return ok;
}

static void test_model(void) {
    ldm_ctx *ctx = new_ctx(7);
    net m;
    ldm_nn_params *P = net_new(ctx, &m);
    ldm_weights *io = NULL;
    if (!P || ldm_weights_open(ctx, &io, FIX "nn_model_io.safetensors")) {
        lt_report(0, "model: setup", "%s", ldm_ctx_error(ctx));
        ldm_nn_params_destroy(P);
        ldm_ctx_destroy(ctx);
        return;
    }
    ldm_nn_load_report rep;
    ldm_nn_load_opts lo;
    memset(&lo, 0, sizeof lo);
    lo.strict = 1;
    lo.report = &rep;
    ldm_result r = ldm_nn_load(ctx, P, FIX "nn_model.safetensors", &lo);
    lt_report(r == LDM_OK && rep.n_loaded == 24 && rep.n_missing == 0, "model: strict load of the torch state dict (safetensors)", "%s (loaded %d)",
              ldm_ctx_error(ctx), rep.n_loaded);
    ldm_ctx_clear_error(ctx);
    ldm_nn_load_report_free(&rep);
    LT_CHECK(m.head1.num_batches_tracked->data[0] == 3.0f, "model: num_batches_tracked (I64 in the file) loaded");

    ldm_tensor *x = lt_tensor(ctx, io, "in.x"), *v = lt_tensor(ctx, io, "in.v"), *r_out = lt_tensor(ctx, io, "in.r_out"),
               *r_vol = lt_tensor(ctx, io, "in.r_vol"), *idxf = lt_tensor(ctx, io, "in.idx");
    int64_t idx[2] = {idxf ? (int64_t)idxf->data[0] : 0, idxf ? (int64_t)idxf->data[1] : 0};
    ldm_tensor *o_conv = ldm_nn_conv2d_forward(ctx, &m.conv, x);
    ldm_tensor *o_gn = ldm_nn_groupnorm_forward(ctx, &m.gn, o_conv);
    ldm_tensor *h = ldm_silu(ctx, o_gn);
    ldm_tensor *o_bn = ldm_nn_batchnorm_forward(ctx, &m.bn, h, 1);
    ldm_tensor *o_down = ldm_nn_conv2d_forward(ctx, &m.down, o_bn);
    ldm_tensor *o_h0 = ldm_nn_conv2d_forward(ctx, &m.head0, o_down);
    ldm_tensor *o_h1 = ldm_nn_batchnorm_forward(ctx, &m.head1, o_h0, 1);
    ldm_tensor *o_lin = ldm_nn_linear_forward(ctx, &m.lin, ldm_reshape(ctx, o_h1, ldm_shape2(2, -1)));
    ldm_tensor *o_emb = ldm_nn_embedding_forward(ctx, &m.emb, 2, idx);
    ldm_tensor *o_ln = ldm_nn_layernorm_forward(ctx, &m.ln, ldm_add(ctx, o_lin, o_emb));
    ldm_tensor *o_vol = ldm_nn_conv3d_forward(ctx, &m.vol, v);
    ldm_tensor *loss = ldm_add(ctx, ldm_sum_all(ctx, ldm_mul(ctx, o_ln, r_out)), ldm_sum_all(ctx, ldm_mul(ctx, o_vol, r_vol)));
    if (!check_ok(ctx, "model: forward runs") || !loss) goto out;
    {
        const double at = 1e-5, rt = 1e-4;
        cmp_fixture(ctx, io, "out.conv", o_conv, at, rt, "model: forward");
        cmp_fixture(ctx, io, "out.gn", o_gn, at, rt, "model: forward");
        cmp_fixture(ctx, io, "out.bn", o_bn, at, rt, "model: forward (train)");
        cmp_fixture(ctx, io, "out.down", o_down, at, rt, "model: forward (pad 0,1,0,1 stride 2)");
        cmp_fixture(ctx, io, "out.head0", o_h0, at, rt, "model: forward (kernel 3x2, stride 2x1)");
        cmp_fixture(ctx, io, "out.head1", o_h1, at, rt, "model: forward (train, momentum None)");
        cmp_fixture(ctx, io, "out.lin", o_lin, at, rt, "model: forward");
        cmp_fixture(ctx, io, "out.emb", o_emb, at, rt, "model: forward");
        cmp_fixture(ctx, io, "out.ln", o_ln, at, rt, "model: forward");
        cmp_fixture(ctx, io, "out.vol", o_vol, at, rt, "model: forward");
        cmp_fixture(ctx, io, "loss", loss, 1e-4, rt, "model:");
        const char *bufs[] = {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked", "head.1.running_mean",
                              "head.1.running_var", "head.1.num_batches_tracked"};
        for (int i = 0; i < 6; i++) {
            char key[96];
            snprintf(key, sizeof key, "after.%s", bufs[i]);
            cmp_fixture(ctx, io, key, ldm_nn_find(P, bufs[i]), 1e-6, 1e-5, "model: running statistics");
        }
        if (ldm_backward(ctx, loss)) { check_ok(ctx, "model: backward"); goto out; }
        for (int i = 0; i < ldm_nn_count(P); i++) {
            const ldm_nn_entry *e = ldm_nn_entry_at(P, i);
            if (e->kind != LDM_NN_PARAM) continue;
            char key[96];
            snprintf(key, sizeof key, "grad.%s", e->name);
            long n = 0;
            float *want = lt_load(ctx, io, key, &n);
            if (!want) { lt_report(0, key, "missing in fixture"); continue; }
            char nm[128];
            snprintf(nm, sizeof nm, "model: gradient %s", e->name);
            lt_close(nm, e->t->grad, want, n, 1e-5, 1e-4);
            free(want);
        }
        /* eval mode uses the updated running statistics and leaves them alone */
        int pg = ldm_set_grad_enabled(ctx, 0);
        float rm0 = m.bn.running_mean->data[0], nbt = m.bn.num_batches_tracked->data[0];
        cmp_fixture(ctx, io, "out.bn_eval", ldm_nn_batchnorm_forward(ctx, &m.bn, h, 0), at, rt, "model: forward (eval)");
        cmp_fixture(ctx, io, "out.head1_eval", ldm_nn_batchnorm_forward(ctx, &m.head1, o_h0, 0), at, rt, "model: forward (eval)");
        LT_CHECK(m.bn.running_mean->data[0] == rm0 && m.bn.num_batches_tracked->data[0] == nbt, "model: eval leaves running statistics alone");
        ldm_set_grad_enabled(ctx, pg);
    }
out:
    ldm_step_reset(ctx);
    ldm_weights_close(io);

    /* the same state dict through torch.save (zip) loads to identical bits */
    {
        net m2;
        ldm_nn_params *P2 = net_new(ctx, &m2), *P3 = net_new(ctx, &m2);
        ldm_result r1 = P2 ? ldm_nn_load(ctx, P2, FIX "nn_model.safetensors", NULL) : LDM_ERR_INVALID;
        ldm_result r2 = P3 ? ldm_nn_load(ctx, P3, FIX "nn_model.pth", NULL) : LDM_ERR_INVALID;
        int64_t n1 = 0, n2 = 0, b1 = 0, b2 = 0;
        int same = r1 == LDM_OK && r2 == LDM_OK;
        if (same) {
            same = !memcmp(ldm_nn_block(P2, LDM_NN_BLOCK_PARAMS, &n1), ldm_nn_block(P3, LDM_NN_BLOCK_PARAMS, &n2), sizeof(float) * (size_t)n1) &&
                   !memcmp(ldm_nn_block(P2, LDM_NN_BLOCK_BUFFERS, &b1), ldm_nn_block(P3, LDM_NN_BLOCK_BUFFERS, &b2), sizeof(float) * (size_t)b1);
        }
        lt_report(same, "model: strict load of the torch.save .pth equals the safetensors load", "%s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
        ldm_nn_params_destroy(P2);
        ldm_nn_params_destroy(P3);
    }
    ldm_nn_params_destroy(P);
    ldm_ctx_destroy(ctx);
}

/* ---- state dicts ------------------------------------------------------------------------- */
/* Every persistent entry of P as named data, name = prefix + entry name (names kept in buf). */
static int dump_named(const ldm_nn_params *P, const char *prefix, ldm_named_data *nd, char (*names)[96]) {
    int m = 0;
    for (int i = 0; i < ldm_nn_count(P); i++) {
        const ldm_nn_entry *e = ldm_nn_entry_at(P, i);
        if (e->kind == LDM_NN_BUFFER_TRANSIENT) continue;
        snprintf(names[m], 96, "%s%s", prefix, e->name);
        nd[m].name = names[m];
        nd[m].data = e->t->data;
        nd[m].ndim = e->t->ndim;
        for (int d = 0; d < e->t->ndim; d++) nd[m].shape[d] = e->t->shape[d];
        m++;
    }
    return m;
}

static int blocks_equal(const ldm_nn_params *A, const ldm_nn_params *B) {
    int64_t na, nb, ba, bb;
    const float *pa = ldm_nn_block(A, LDM_NN_BLOCK_PARAMS, &na), *pb = ldm_nn_block(B, LDM_NN_BLOCK_PARAMS, &nb);
    const float *qa = ldm_nn_block(A, LDM_NN_BLOCK_BUFFERS, &ba), *qb = ldm_nn_block(B, LDM_NN_BLOCK_BUFFERS, &bb);
    return na == nb && ba == bb && !memcmp(pa, pb, sizeof(float) * (size_t)na) && !memcmp(qa, qb, sizeof(float) * (size_t)ba);
}

static const char *rename_cb(void *user, const char *name, char *buf, size_t cap) {
    int *calls = (int *)user;
    (*calls)++;
    if (!strncmp(name, "skipme.", 7)) return NULL;
    if (!strncmp(name, "conv_in.", 8)) { snprintf(buf, cap, "conv.%s", name + 8); return buf; }
    return name;
}

static void test_state_dict(void) {
    ldm_ctx *ctx = new_ctx(11);
    net ma, mb;
    ldm_nn_params *A = net_new(ctx, &ma), *B = net_new(ctx, &mb);
    if (!A || !B) { lt_report(0, "state dict: setup", "%s", ldm_ctx_error(ctx)); goto end; }
    ma.bn.num_batches_tracked->data[0] = 17.0f;
    ma.head1.running_var->data[2] = 3.25f;

    /* save -> load: bitwise */
    LT_CHECK(ldm_nn_save(ctx, A, "nn_rt.safetensors", LDM_F32, NULL) == LDM_OK, "state dict: save");
    LT_CHECK(ldm_nn_load(ctx, B, "nn_rt.safetensors", NULL) == LDM_OK && blocks_equal(A, B), "state dict: save -> strict load is bitwise");
    check_ok(ctx, "state dict: round trip without errors");
    {   /* half precision: values come back rounded to f16 */
        ldm_nn_save(ctx, A, "nn_rt16.safetensors", LDM_F16, NULL);
        ldm_nn_load(ctx, B, "nn_rt16.safetensors", NULL);
        int ok = check_ok(ctx, "state dict: f16 save and load");
        for (int i = 0; ok && i < ldm_nn_count(A); i++) {
            const ldm_tensor *a = ldm_nn_entry_at(A, i)->t, *b = ldm_nn_entry_at(B, i)->t;
            for (int64_t k = 0; ok && k < a->numel; k++) ok = b->data[k] == ldm_f16_to_f32(ldm_f32_to_f16(a->data[k]));
        }
        LT_CHECK(ok, "state dict: f16 file converted by the reader (values = f16 rounding)");
    }

    /* strict errors: two missing, one unexpected, one mis-shaped -> all four named; model untouched */
    {
        static ldm_named_data nd[40];
        static char names[40][96];
        float extra[6] = {1, 2, 3, 4, 5, 6};
        int m = dump_named(A, "", nd, names), k = 0;
        for (int i = 0; i < m; i++) {
            if (!strcmp(nd[i].name, "gn.weight") || !strcmp(nd[i].name, "lin.bias")) continue;
            nd[k] = nd[i];
            if (!strcmp(nd[k].name, "conv.bias")) nd[k].shape[0] = 7;
            k++;
        }
        nd[k].name = "extra.weight"; nd[k].data = extra; nd[k].ndim = 2; nd[k].shape[0] = 2; nd[k].shape[1] = 3; k++;
        ldm_safetensors_write(ctx, "nn_bad.safetensors", k, nd, LDM_F32, 0, NULL, NULL);
        check_ok(ctx, "state dict: write the bad file");
        ldm_nn_load(ctx, B, "nn_rt.safetensors", NULL);
        float before = mb.conv.weight->data[0];
        mb.conv.weight->data[0] = 123.0f;
        ldm_nn_load_report rep;
        ldm_nn_load_opts lo;
        memset(&lo, 0, sizeof lo);
        lo.strict = 1;
        lo.report = &rep;
        ldm_result r = ldm_nn_load(ctx, B, "nn_bad.safetensors", &lo);
        const char *msg = ldm_ctx_error(ctx);
        int lists = r == LDM_ERR_NOT_FOUND && strstr(msg, "2 missing, 1 unexpected, 1 shape mismatch") && strstr(msg, "gn.weight") &&
                    strstr(msg, "lin.bias") && strstr(msg, "extra.weight [2, 3]") && strstr(msg, "conv.bias file [7] model [8]");
        lt_report(lists, "state dict: strict error lists every missing, unexpected and mis-shaped name", "got: %s", msg);
        LT_CHECK(rep.n_missing == 2 && rep.n_unexpected == 1 && rep.n_mismatched == 1 && !strcmp(rep.missing[0].name, "gn.weight") &&
                 !strcmp(rep.missing[1].name, "lin.bias") && !strcmp(rep.unexpected[0].file_name, "extra.weight") &&
                 rep.mismatched[0].file_shape[0] == 7 && rep.mismatched[0].model_shape[0] == 8 && rep.n_loaded == 0,
                 "state dict: the report struct holds the same");
        LT_CHECK(mb.conv.weight->data[0] == 123.0f, "state dict: a failing strict load writes nothing");
        ldm_nn_load_report_free(&rep);
        ldm_ctx_clear_error(ctx);
        /* non-strict: loads what matches, reports the rest */
        lo.strict = 0;
        r = ldm_nn_load(ctx, B, "nn_bad.safetensors", &lo);
        LT_CHECK(r == LDM_OK && rep.n_loaded == ldm_nn_count(B) - 3 && rep.n_missing == 2 && rep.n_unexpected == 1 &&
                 rep.n_mismatched == 1 && mb.conv.weight->data[0] == before && mb.conv.bias->data[0] == mb.conv.bias->data[0],
                 "state dict: non-strict loads the matching names and reports the rest");
        ldm_nn_load_report_free(&rep);
        check_ok(ctx, "state dict: non-strict leaves no error");
    }

    /* message cap with many names: exact counts, bounded message */
    {
        ldm_nn_params *Big;
        ldm_nn_params_create(ctx, &Big, LDM_CPU);
        for (int i = 0; i < 300; i++) {
            ldm_nn_pushf(Big, "blocks.%d.a_rather_long_module_name", i);
            ldm_nn_param(Big, "weight", ldm_shape1(2), ldm_nn_init_const(0));
            ldm_nn_pop(Big);
        }
        ldm_nn_params_alloc(ctx, Big);
        ldm_nn_load(ctx, Big, "nn_rt.safetensors", NULL);
        const char *msg = ldm_ctx_error(ctx);
        LT_CHECK(strstr(msg, "300 missing, 24 unexpected, 0 shape mismatches") && strstr(msg, "more (every name is in") &&
                 strstr(msg, "hint:") && strlen(msg) < 2047, "state dict: long lists are capped, counts stay exact");
        ldm_ctx_clear_error(ctx);
        ldm_nn_params_destroy(Big);
    }

    /* prefix_strip: a full checkpoint with other models' tensors */
    {
        static ldm_named_data nd[64];
        static char names[64][96];
        float other[4] = {9, 9, 9, 9};
        int m = dump_named(A, "first_stage_model.", nd, names);
        nd[m].name = "model.diffusion_model.x"; nd[m].data = other; nd[m].ndim = 1; nd[m].shape[0] = 4; m++;
        nd[m].name = "cond_stage_model.y"; nd[m].data = other; nd[m].ndim = 1; nd[m].shape[0] = 4; m++;
        ldm_safetensors_write(ctx, "nn_full.safetensors", m, nd, LDM_F32, 0, NULL, NULL);
        ldm_nn_params_init(ctx, B);
        ldm_nn_load_report rep;
        ldm_nn_load_opts lo;
        memset(&lo, 0, sizeof lo);
        lo.strict = 1;
        lo.prefix_strip = "first_stage_model.";
        lo.report = &rep;
        ldm_result r = ldm_nn_load(ctx, B, "nn_full.safetensors", &lo);
        LT_CHECK(r == LDM_OK && blocks_equal(A, B) && rep.n_skipped == 2 && rep.n_loaded == 24, "state dict: prefix_strip considers only its names");
        ldm_nn_load_report_free(&rep);
        check_ok(ctx, "state dict: prefix_strip strict load");
        /* ldm_nn_save with a prefix writes the same names */
        ldm_nn_save(ctx, A, "nn_pref.safetensors", LDM_F32, "first_stage_model.");
        ldm_nn_params_init(ctx, B);
        lo.report = NULL;
        LT_CHECK(ldm_nn_load(ctx, B, "nn_pref.safetensors", &lo) == LDM_OK && blocks_equal(A, B), "state dict: save with a prefix, load with prefix_strip");
        check_ok(ctx, "state dict: prefixed save");
    }

    /* prefix_add: the model lives under "vae." */
    {
        ldm_nn_params *V;
        net mv;
        ldm_nn_params_create(ctx, &V, LDM_CPU);
        ldm_nn_push(V, "vae");
        net_init(V, &mv);
        ldm_nn_pop(V);
        ldm_nn_params_alloc(ctx, V);
        ldm_nn_load_opts lo;
        memset(&lo, 0, sizeof lo);
        lo.strict = 1;
        lo.prefix_add = "vae.";
        ldm_result r = ldm_nn_load(ctx, V, "nn_rt.safetensors", &lo);
        LT_CHECK(r == LDM_OK && !memcmp(mv.lin.weight->data, ma.lin.weight->data, sizeof(float) * 144) &&
                 mv.bn.num_batches_tracked->data[0] == 17.0f && !strcmp(mv.lin.weight->name, "vae.lin.weight"),
                 "state dict: prefix_add maps file names into a sub-module");
        check_ok(ctx, "state dict: prefix_add strict load");
        ldm_nn_params_destroy(V);
    }

    /* rename callback: file uses "conv_in." for "conv."; "skipme." tensors are dropped */
    {
        static ldm_named_data nd[64];
        static char names[64][96];
        float other[4] = {1, 2, 3, 4};
        int m = dump_named(A, "", nd, names), calls = 0;
        for (int i = 0; i < m; i++)
            if (!strncmp(names[i], "conv.", 5)) { char t[96]; snprintf(t, sizeof t, "conv_in.%s", names[i] + 5); strcpy(names[i], t); }
        nd[m].name = "skipme.w"; nd[m].data = other; nd[m].ndim = 1; nd[m].shape[0] = 4; m++;
        ldm_safetensors_write(ctx, "nn_ren.safetensors", m, nd, LDM_F32, 0, NULL, NULL);
        ldm_nn_params_init(ctx, B);
        ldm_nn_load_opts lo;
        memset(&lo, 0, sizeof lo);
        lo.strict = 1;
        LT_CHECK(ldm_nn_load(ctx, B, "nn_ren.safetensors", &lo) == LDM_ERR_NOT_FOUND && strstr(ldm_ctx_error(ctx), "conv_in.weight"),
                 "state dict: without the rename the file does not match");
        ldm_ctx_clear_error(ctx);
        lo.rename = rename_cb;
        lo.rename_user = &calls;
        ldm_result r = ldm_nn_load(ctx, B, "nn_ren.safetensors", &lo);
        LT_CHECK(r == LDM_OK && blocks_equal(A, B) && calls == m, "state dict: rename callback maps names and skips on NULL");
        check_ok(ctx, "state dict: rename strict load");
    }

    /* allow_unit_dims: [C, C] in the file for a [C, C, 1, 1] conv */
    {
        ldm_nn_params *U;
        ldm_nn_conv2d q;
        ldm_nn_params_create(ctx, &U, LDM_CPU);
        ldm_nn_conv2d_init(U, &q, "attn.q", 4, 4, 1, 1, 0, 1);
        ldm_nn_params_alloc(ctx, U);
        float w[16], b[4];
        for (int i = 0; i < 16; i++) w[i] = (float)i * 0.5f;
        for (int i = 0; i < 4; i++) b[i] = (float)-i;
        ldm_named_data nd[2];
        nd[0].name = "attn.q.weight"; nd[0].data = w; nd[0].ndim = 2; nd[0].shape[0] = 4; nd[0].shape[1] = 4;
        nd[1].name = "attn.q.bias"; nd[1].data = b; nd[1].ndim = 1; nd[1].shape[0] = 4;
        ldm_safetensors_write(ctx, "nn_unit.safetensors", 2, nd, LDM_F32, 0, NULL, NULL);
        ldm_nn_load_opts lo;
        memset(&lo, 0, sizeof lo);
        lo.strict = 1;
        LT_CHECK(ldm_nn_load(ctx, U, "nn_unit.safetensors", &lo) == LDM_ERR_INVALID &&
                 strstr(ldm_ctx_error(ctx), "attn.q.weight file [4, 4] model [4, 4, 1, 1]") && strstr(ldm_ctx_error(ctx), "allow_unit_dims"),
                 "state dict: [C,C] vs [C,C,1,1] is a mismatch by default");
        ldm_ctx_clear_error(ctx);
        lo.allow_unit_dims = 1;
        LT_CHECK(ldm_nn_load(ctx, U, "nn_unit.safetensors", &lo) == LDM_OK && !memcmp(q.weight->data, w, sizeof w) && q.bias->data[3] == -3.0f,
                 "state dict: allow_unit_dims loads [C,C] into [C,C,1,1]");
        check_ok(ctx, "state dict: unit dims load");
        ldm_nn_params_destroy(U);
    }

    /* two file tensors mapping to one name is an error */
    {
        ldm_nn_load_opts lo;
        memset(&lo, 0, sizeof lo);
        lo.prefix_add = "";
        lo.prefix_strip = "first_stage_model.";
        static ldm_named_data nd[2];
        float b8[8] = {0};
        nd[0].name = "first_stage_model.conv.bias"; nd[0].data = b8; nd[0].ndim = 1; nd[0].shape[0] = 8;
        nd[1].name = "first_stage_model.conv_in.bias"; nd[1].data = b8; nd[1].ndim = 1; nd[1].shape[0] = 8;
        ldm_safetensors_write(ctx, "nn_dup.safetensors", 2, nd, LDM_F32, 0, NULL, NULL);
        int calls = 0;
        lo.rename = rename_cb;
        lo.rename_user = &calls;
        LT_CHECK(ldm_nn_load(ctx, B, "nn_dup.safetensors", &lo) == LDM_ERR_FORMAT && strstr(ldm_ctx_error(ctx), "two tensors map to \"conv.bias\""),
                 "state dict: two file tensors for one model name is an error");
        ldm_ctx_clear_error(ctx);
    }
    LT_CHECK(ldm_nn_load(ctx, B, "does_not_exist.safetensors", NULL) == LDM_ERR_IO && strstr(ldm_ctx_error(ctx), "does_not_exist"),
             "state dict: a missing file names the path");
    ldm_ctx_clear_error(ctx);
    remove("nn_rt.safetensors"); remove("nn_rt16.safetensors"); remove("nn_bad.safetensors"); remove("nn_full.safetensors");
    remove("nn_pref.safetensors"); remove("nn_ren.safetensors"); remove("nn_unit.safetensors"); remove("nn_dup.safetensors");
end:
    ldm_nn_params_destroy(A);
    ldm_nn_params_destroy(B);
    ldm_ctx_destroy(ctx);
}

/* ---- optimizers against torch 1.13 -------------------------------------------------------- */
static const char *PN[3] = {"a", "b", "c"};

typedef struct { ldm_nn_params *P; ldm_tensor *t[3]; } optnet;
static int optnet_new(ldm_ctx *ctx, ldm_weights *w, optnet *o) {
    ldm_nn_params_create(ctx, &o->P, LDM_CPU);
    for (int k = 0; k < 3; k++) {
        char key[32];
        snprintf(key, sizeof key, "p0.%s", PN[k]);
        const ldm_weight_info *fi = ldm_weights_info(w, ldm_weights_find(w, key));
        if (!fi) return 0;
        o->t[k] = ldm_nn_param(o->P, PN[k], ldm_shape_n(fi->ndim, fi->shape), ldm_nn_init_const(0));
    }
    if (ldm_nn_params_alloc(ctx, o->P)) return 0;
    for (int k = 0; k < 3; k++) {
        char key[32];
        snprintf(key, sizeof key, "p0.%s", PN[k]);
        float *p = lt_load(ctx, w, key, NULL);
        if (!p) return 0;
        memcpy(o->t[k]->data, p, sizeof(float) * (size_t)o->t[k]->numel);
        free(p);
    }
    return 1;
}
static void set_grads(ldm_ctx *ctx, ldm_weights *w, optnet *o, int step) {
    for (int k = 0; k < 3; k++) {
        char key[32];
        snprintf(key, sizeof key, "g%d.%s", step, PN[k]);
        float *g = lt_load(ctx, w, key, NULL);
        if (g) memcpy(o->t[k]->grad, g, sizeof(float) * (size_t)o->t[k]->numel);
        free(g);
    }
}
/* "type lr1 lr2 lr3 beta1 beta2 eps wd momentum dampening nesterov" */
static int parse_cfg(const char *s, ldm_nn_optim_config *c, double lrs[3]) {
    char type[16];
    memset(c, 0, sizeof *c);
    if (!s || sscanf(s, "%15s %lf %lf %lf %lf %lf %lf %lf %lf %lf %d", type, &lrs[0], &lrs[1], &lrs[2], &c->beta1, &c->beta2, &c->eps,
                     &c->weight_decay, &c->momentum, &c->dampening, &c->nesterov) != 11) return 0;
    c->type = !strcmp(type, "adam") ? LDM_OPTIM_ADAM : !strcmp(type, "adamw") ? LDM_OPTIM_ADAMW : LDM_OPTIM_SGD;
    c->lr = lrs[0];
    return 1;
}

static void test_optim(void) {
    ldm_ctx *ctx = new_ctx(5);
    ldm_weights *w = NULL;
    if (ldm_weights_open(ctx, &w, FIX "nn_optim.safetensors")) { lt_report(0, "optim: fixture", "%s", ldm_ctx_error(ctx)); ldm_ctx_destroy(ctx); return; }
    char list[256];
    snprintf(list, sizeof list, "%s", ldm_weights_metadata(w, "configs") ? ldm_weights_metadata(w, "configs") : "");
    int nconf = 0;
    for (char *name = strtok(list, " "); name; name = strtok(NULL, " ")) {
        ldm_nn_optim_config c;
        double lrs[3];
        char nm[128];
        if (!parse_cfg(ldm_weights_metadata(w, name), &c, lrs)) { lt_report(0, name, "bad config metadata"); continue; }
        nconf++;
        optnet o;
        ldm_nn_optim *opt = NULL;
        if (!optnet_new(ctx, w, &o) || ldm_nn_optim_create(ctx, &opt, o.P, &c, 0, NULL)) {
            lt_report(0, name, "%s", ldm_ctx_error(ctx));
            ldm_nn_params_destroy(o.P);
            continue;
        }
        for (int s = 1; s <= 3; s++) {
            set_grads(ctx, w, &o, s);
            ldm_nn_optim_set_lr(opt, lrs[s - 1]);
            ldm_nn_optim_step(ctx, opt);
            for (int k = 0; k < 3; k++) {
                char key[64];
                snprintf(key, sizeof key, "%s.p%d.%s", name, s, PN[k]);
                float *want = lt_load(ctx, w, key, NULL);
                snprintf(nm, sizeof nm, "optim: %s step %d param %s", name, s, PN[k]);
                if (want) lt_close(nm, o.t[k]->data, want, (long)o.t[k]->numel, 1e-7, 1e-6);
                else lt_report(0, nm, "missing fixture %s", key);
                free(want);
            }
        }
        LT_CHECK(ldm_nn_optim_steps(opt) == 3 && ldm_nn_optim_lr(opt) == lrs[2], "optim: step count and lr");
        ldm_nn_optim_destroy(opt);
        ldm_nn_params_destroy(o.P);
    }
    LT_CHECK(nconf == 8, "optim: all 8 torch configurations checked");
    check_ok(ctx, "optim: no errors");
    ldm_weights_close(w);
    ldm_ctx_destroy(ctx);
}

/* Optimizer state save -> load in a fresh model, then continuing, equals an uninterrupted run. */
static void run_steps(ldm_ctx *ctx, ldm_weights *w, optnet *o, ldm_nn_optim *opt, int from, int to) {
    for (int s = from; s <= to; s++) {
        set_grads(ctx, w, o, (s - 1) % 3 + 1);
        ldm_nn_optim_set_lr(opt, 1e-2 / s);
        ldm_nn_optim_step(ctx, opt);
    }
}
static void test_optim_state(void) {
    ldm_ctx *ctx = new_ctx(6);
    ldm_weights *w = NULL;
    if (ldm_weights_open(ctx, &w, FIX "nn_optim.safetensors")) { lt_report(0, "optim state: fixture", "%s", ldm_ctx_error(ctx)); ldm_ctx_destroy(ctx); return; }
    const char *cfgs[3] = {"adam_l2", "adamw", "sgd_nest"};
    for (int ci = 0; ci < 3; ci++) {
        ldm_nn_optim_config c;
        double lrs[3];
        parse_cfg(ldm_weights_metadata(w, cfgs[ci]), &c, lrs);
        optnet a, b;
        ldm_nn_optim *oa = NULL, *ob = NULL, *ob2 = NULL;
        optnet_new(ctx, w, &a);
        optnet_new(ctx, w, &b);
        ldm_nn_optim_create(ctx, &oa, a.P, &c, 0, NULL);
        ldm_nn_optim_create(ctx, &ob, b.P, &c, 0, NULL);
        if (!check_ok(ctx, "optim state: setup")) break;
        run_steps(ctx, w, &a, oa, 1, 5);
        run_steps(ctx, w, &b, ob, 1, 2);
        ldm_nn_save(ctx, b.P, "nn_os_params.safetensors", LDM_F32, NULL);
        ldm_nn_optim_save(ctx, ob, "nn_os_state.safetensors");
        ldm_nn_optim_destroy(ob);
        ldm_nn_params_destroy(b.P);
        /* a fresh model and optimizer resume */
        optnet_new(ctx, w, &b);
        ldm_nn_load(ctx, b.P, "nn_os_params.safetensors", NULL);
        ldm_nn_optim_create(ctx, &ob2, b.P, &c, 0, NULL);
        ldm_nn_optim_load(ctx, ob2, "nn_os_state.safetensors");
        int resumed = ldm_nn_optim_steps(ob2) == 2;
        run_steps(ctx, w, &b, ob2, 3, 5);
        char nm[128];
        snprintf(nm, sizeof nm, "optim state: %s save at step 2, load, continue == uninterrupted (bitwise)", cfgs[ci]);
        int same = resumed && ldm_ctx_status(ctx) == LDM_OK;
        for (int k = 0; same && k < 3; k++) same = !memcmp(a.t[k]->data, b.t[k]->data, sizeof(float) * (size_t)a.t[k]->numel);
        lt_report(same, nm, "%s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
        if (ci == 0) {  /* mismatches are errors */
            ldm_nn_optim_config sc = ldm_nn_optim_defaults(LDM_OPTIM_SGD, 0.1);
            sc.momentum = 0.9;
            ldm_nn_optim *os = NULL, *og = NULL;
            ldm_nn_optim_create(ctx, &os, b.P, &sc, 0, NULL);
            LT_CHECK(ldm_nn_optim_load(ctx, os, "nn_os_state.safetensors") == LDM_ERR_INVALID && strstr(ldm_ctx_error(ctx), "adam optimizer state"),
                     "optim state: loading Adam state into SGD is an error");
            ldm_ctx_clear_error(ctx);
            const char *pat[1] = {"b"};
            ldm_nn_optim_create(ctx, &og, b.P, &c, 1, pat);
            LT_CHECK(ldm_nn_optim_load(ctx, og, "nn_os_state.safetensors") == LDM_ERR_INVALID && strstr(ldm_ctx_error(ctx), "group differs"),
                     "optim state: loading into another parameter group is an error");
            ldm_ctx_clear_error(ctx);
            ldm_nn_optim_destroy(os);
            ldm_nn_optim_destroy(og);
        }
        ldm_nn_optim_destroy(oa);
        ldm_nn_optim_destroy(ob2);
        ldm_nn_params_destroy(a.P);
        ldm_nn_params_destroy(b.P);
    }
    remove("nn_os_params.safetensors");
    remove("nn_os_state.safetensors");
    ldm_weights_close(w);
    ldm_ctx_destroy(ctx);
}

/* Groups (two optimizers, a parameter in neither), freezing, per-group zero_grad. */
static void test_groups(void) {
    ldm_ctx *ctx = new_ctx(8);
    ldm_nn_params *P;
    ldm_nn_params_create(ctx, &P, LDM_CPU);
    ldm_nn_conv2d enc, dec, q;
    ldm_nn_linear disc;
    ldm_nn_conv2d_init(P, &enc, "encoder.conv_in", 3, 4, 3, 1, 1, 1);
    ldm_nn_conv2d_init(P, &dec, "decoder.conv_out", 4, 3, 3, 1, 1, 1);
    ldm_nn_conv2d_init(P, &q, "quant_conv", 4, 4, 1, 1, 0, 1);
    ldm_nn_push(P, "loss");
    ldm_tensor *logvar = ldm_nn_param(P, "logvar", ldm_shape_n(0, NULL), ldm_nn_init_const(0.0f));
    ldm_nn_linear_init(P, &disc, "discriminator.main.0", 8, 1, 1);
    ldm_nn_pop(P);
    ldm_nn_params_alloc(ctx, P);
    const char *gen[3] = {"encoder", "decoder", "quant_conv"}, *dis[1] = {"loss.discriminator"}, *bad[1] = {"encoderr"};
    ldm_nn_optim_config c = ldm_nn_optim_defaults(LDM_OPTIM_ADAM, 1e-3);
    c.beta1 = 0.5; c.beta2 = 0.9;
    ldm_nn_optim *og = NULL, *od = NULL, *ox = NULL;
    ldm_nn_optim_create(ctx, &og, P, &c, 3, gen);
    ldm_nn_optim_create(ctx, &od, P, &c, 1, dis);
    if (!check_ok(ctx, "groups: two optimizers")) { ldm_nn_params_destroy(P); ldm_ctx_destroy(ctx); return; }
    LT_CHECK(ldm_nn_optim_size(og) == 6 && ldm_nn_optim_size(od) == 2 &&
             ldm_nn_optim_numel(og) == 4 * 27 + 4 + 3 * 36 + 3 + 16 + 4 && ldm_nn_optim_numel(od) == 9 &&
             !strcmp(ldm_nn_optim_entry(od, 0)->name, "loss.discriminator.main.0.weight"),
             "groups: generator and discriminator groups; logvar in neither");
    LT_CHECK(ldm_nn_optim_create(ctx, &ox, P, &c, 1, bad) == LDM_ERR_NOT_FOUND && strstr(ldm_ctx_error(ctx), "encoderr") && !ox,
             "groups: a pattern matching nothing is an error");
    ldm_ctx_clear_error(ctx);
    /* fill every gradient with 1; step the generator only */
    int64_t ng;
    float *gb = ldm_nn_block(P, LDM_NN_BLOCK_GRADS, &ng);
    for (int64_t i = 0; i < ng; i++) gb[i] = 1.0f;
    float d0 = disc.weight->data[0], e0 = enc.weight->data[0], l0 = logvar->data[0];
    ldm_nn_set_trainable(P, "decoder", 0);
    float dec0 = dec.weight->data[0];
    ldm_nn_optim_step(ctx, og);
    LT_CHECK(disc.weight->data[0] == d0 && logvar->data[0] == l0 && enc.weight->data[0] != e0 && dec.weight->data[0] == dec0,
             "groups: a step moves only its group, and skips frozen parameters");
    ldm_nn_optim_zero_grad(ctx, og);
    LT_CHECK(enc.weight->grad[0] == 0.0f && q.bias->grad[3] == 0.0f && disc.weight->grad[0] == 1.0f && logvar->grad[0] == 1.0f,
             "groups: zero_grad of one optimizer leaves the others' gradients");
    /* group clipping sees only its own gradients (the decoder is frozen) */
    float tot = 0;
    ldm_nn_optim_clip_grad_norm(ctx, od, INFINITY, &tot);
    LT_CHECK(fabsf(tot - 3.0f) < 1e-6f && disc.weight->grad[0] == 1.0f, "groups: clip_grad_norm of a group (max_norm inf only measures)");
    ldm_nn_zero_grad(ctx, P);
    int zero = 1;
    for (int64_t i = 0; i < ng; i++) zero = zero && gb[i] == 0.0f;
    LT_CHECK(zero, "groups: ldm_nn_zero_grad zeroes the whole gradient block");
    /* an optimizer made while the decoder is frozen leaves it out */
    ldm_nn_optim_create(ctx, &ox, P, &c, 0, NULL);
    LT_CHECK(ox && ldm_nn_optim_size(ox) == 7, "groups: optimizers leave out parameters frozen at creation");
    check_ok(ctx, "groups: no errors");
    ldm_nn_optim_destroy(ox);
    ldm_nn_optim_destroy(og);
    ldm_nn_optim_destroy(od);
    ldm_nn_params_destroy(P);
    ldm_ctx_destroy(ctx);
}

/* clip_grad_norm_ against torch, and independent of the thread count */
static void test_clip(void) {
    ldm_ctx *ctx = new_ctx(9);
    ldm_weights *w = NULL;
    if (ldm_weights_open(ctx, &w, FIX "nn_clip.safetensors")) { lt_report(0, "clip: fixture", "%s", ldm_ctx_error(ctx)); ldm_ctx_destroy(ctx); return; }
    const char *cases[2] = {"clip", "keep"};
    for (int ci = 0; ci < 2; ci++) {
        ldm_nn_params *P;
        ldm_tensor *t[3];
        ldm_nn_params_create(ctx, &P, LDM_CPU);
        for (int k = 0; k < 3; k++) {
            char key[32];
            snprintf(key, sizeof key, "g.%s", PN[k]);
            const ldm_weight_info *fi = ldm_weights_info(w, ldm_weights_find(w, key));
            t[k] = fi ? ldm_nn_param(P, PN[k], ldm_shape_n(fi->ndim, fi->shape), ldm_nn_init_const(0)) : NULL;
        }
        ldm_nn_buffer(P, "not_a_grad", ldm_shape1(3), ldm_nn_init_const(100.0f), 1);
        ldm_nn_params_alloc(ctx, P);
        if (!check_ok(ctx, "clip: setup")) { ldm_nn_params_destroy(P); break; }
        for (int k = 0; k < 3; k++) {
            char key[32];
            snprintf(key, sizeof key, "g.%s", PN[k]);
            float *g = lt_load(ctx, w, key, NULL);
            if (g) memcpy(t[k]->grad, g, sizeof(float) * (size_t)t[k]->numel);
            free(g);
        }
        float total = -1, max_norm = (float)atof(ldm_weights_metadata(w, cases[ci]));
        ldm_nn_clip_grad_norm(ctx, P, max_norm, &total);
        char key[32], nm[96];
        snprintf(key, sizeof key, "%s.total", cases[ci]);
        float *want = lt_load(ctx, w, key, NULL);
        snprintf(nm, sizeof nm, "clip: %s total norm (max_norm %g)", cases[ci], (double)max_norm);
        if (want) lt_close(nm, &total, want, 1, 0, 1e-6);
        free(want);
        for (int k = 0; k < 3; k++) {
            snprintf(key, sizeof key, "%s.%s", cases[ci], PN[k]);
            want = lt_load(ctx, w, key, NULL);
            snprintf(nm, sizeof nm, "clip: %s gradient %s", cases[ci], PN[k]);
            if (want) lt_close(nm, t[k]->grad, want, (long)t[k]->numel, 1e-9, 1e-6);
            free(want);
        }
        ldm_nn_params_destroy(P);
    }
    ldm_weights_close(w);
    {   /* several summation pieces: 1 and N threads agree bitwise, and with a double sum */
        ldm_nn_params *P;
        ldm_nn_params_create(ctx, &P, LDM_CPU);
        ldm_tensor *a = ldm_nn_param(P, "a", ldm_shape1(300001), ldm_nn_init_const(0)),
                   *b = ldm_nn_param(P, "b", ldm_shape2(70, 3), ldm_nn_init_const(0));
        ldm_nn_params_alloc(ctx, P);
        ldm_rng_normal(ctx, ldm_ctx_rng(ctx), LDM_CPU, a->grad, a->numel, 0.0f, 1.0f);
        ldm_rng_normal(ctx, ldm_ctx_rng(ctx), LDM_CPU, b->grad, b->numel, 0.0f, 3.0f);
        double s = 0;
        for (int64_t i = 0; i < a->numel; i++) s += (double)a->grad[i] * a->grad[i];
        for (int64_t i = 0; i < b->numel; i++) s += (double)b->grad[i] * b->grad[i];
        float t1 = 0, tn = 0;
        ldm_ctx_set_threads(ctx, 1);
        ldm_nn_clip_grad_norm(ctx, P, INFINITY, &t1);
        ldm_ctx_set_threads(ctx, 4);
        ldm_nn_clip_grad_norm(ctx, P, INFINITY, &tn);
        LT_CHECK(t1 == tn && fabs(t1 - sqrt(s)) <= 1e-6 * sqrt(s), "clip: total norm independent of the thread count");
        float g5 = a->grad[5];
        ldm_nn_clip_grad_norm(ctx, P, 1.0f, &t1);
        float coef = 1.0f / (tn + 1e-6f);
        LT_CHECK(a->grad[5] == g5 * coef, "clip: scales by max_norm / (total + 1e-6)");
        ldm_nn_params_destroy(P);
    }
    check_ok(ctx, "clip: no errors");
    ldm_ctx_destroy(ctx);
}

static void test_dropout(void) {
    ldm_ctx *ctx = new_ctx(10);
    ldm_nn_dropout d;
    ldm_nn_dropout_init(&d, 0.25f);
    ldm_tensor *x = ldm_full(ctx, ldm_shape2(100, 100), 2.0f);
    ldm_tensor *ye = ldm_nn_dropout_forward(ctx, &d, x, 0), *yt = ldm_nn_dropout_forward(ctx, &d, x, 1);
    int eval_ok = ye && !memcmp(ye->data, x->data, sizeof(float) * 10000), vals = yt != NULL;
    long zeros = 0;
    for (int i = 0; vals && i < 10000; i++) {
        if (yt->data[i] == 0.0f) zeros++;
        else vals = fabsf(yt->data[i] - 2.0f / 0.75f) < 1e-6f;
    }
    LT_CHECK(eval_ok && vals && zeros > 2300 && zeros < 2700, "dropout: identity in eval; zeros ~p and x/(1-p) in training");
    check_ok(ctx, "dropout: no errors");
    ldm_ctx_destroy(ctx);
}

int main(void) {
    test_registry();
    test_init();
    test_model();
    test_state_dict();
    test_optim();
    test_optim_state();
    test_groups();
    test_clip();
    test_dropout();
    return lt_finish("test_nn");
}
