/* test_lora.c - ldm_nn.h: freezing by name prefix and LoRA adapters.

   LoRA against PyTorch (tests/ref/lora_ref.py: a residual MLP with DiT-like layer names and
   hand-written peft LoRA on "attn.qkv" and "mlp.fc1"): forward, gradients w.r.t. adapters and
   input, two AdamW steps on the adapters only. Then a finite-difference check of the adapter
   backward, init (adapted model == base, bitwise), merge/unmerge, adapters saved apart and
   loaded onto a fresh base, bad input, freezing (no updates, no optimizer state, a smaller
   gradient block, optimizer state files across a changed frozen set), and LoRA on a small DiT.
   Every weight comes from the hash generator (lt_hash_init), so the fixture holds no model.
   Adapter files are loaded, so this also runs under LDM_TEST_SANITIZE (ASan/UBSan). */
#define LDM_IMPLEMENTATION
#include "ldm_test.h"
#include "../ldm_nn.h"
#include "../ldm_diffusion.h"

#define FIX "../tests/fixtures/"
#define D 8
#define HID 16
#define OUT 4
#define DEPTH 2

static ldm_ctx *new_ctx(uint64_t seed) {
    ldm_ctx *ctx;
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.seed = seed;
    s.arena_bytes = (size_t)64 << 20;
    if (ldm_ctx_create(&ctx, &s)) { printf("FAIL cannot create a context\n"); exit(1); }
    return ctx;
}
/* The call failed with `code` and its message contains `needle`. */
static void expect_err(ldm_ctx *ctx, ldm_result r, ldm_result code, const char *needle, const char *name) {
    const char *msg = ldm_ctx_error(ctx);
    int ok = r == code && ldm_ctx_status(ctx) == code && msg && strstr(msg, needle);
    lt_report(ok, name, "result %d (want %d), message \"%s\" (want it to contain \"%s\")", (int)r, (int)code, msg ? msg : "", needle);
    if (ok) printf("     -> %s\n", msg);
    ldm_ctx_clear_error(ctx);
}

/* ---- the reference model (lora_ref.py: Net) ---------------------------------------------- */
typedef struct { ldm_nn_linear l[DEPTH][4], head; } net;
static void net_register(ldm_nn_params *P, net *m, int depth, int hid) {
    for (int b = 0; b < depth; b++) {
        ldm_nn_pushf(P, "blocks.%d", b);
        ldm_nn_linear_init(P, &m->l[b][0], "attn.qkv", D, D, 1);
        ldm_nn_linear_init(P, &m->l[b][1], "attn.proj", D, D, 1);
        ldm_nn_linear_init(P, &m->l[b][2], "mlp.fc1", D, hid, 1);
        ldm_nn_linear_init(P, &m->l[b][3], "mlp.fc2", hid, D, 1);
        ldm_nn_pop(P);
    }
    ldm_nn_linear_init(P, &m->head, "head", D, OUT, 1);
}
static void hash_fill(ldm_ctx *ctx, ldm_nn_params *P) {
    for (int i = 0; i < ldm_nn_count(P); i++) {
        const ldm_nn_entry *e = ldm_nn_entry_at(P, i);
        float *h = (float *)malloc(sizeof(float) * (size_t)e->t->numel);
        lt_hash_init(e->name, h, e->t->ndim, e->t->shape);
        ldm_nn_copy_from_host(ctx, e->t, h);
        free(h);
    }
}
/* depth/hid other than the reference's build mismatching models for the error tests */
static ldm_nn_params *net_new(ldm_ctx *ctx, net *m, int depth, int hid, int n_freeze, const char *const *freeze) {
    ldm_nn_params *P;
    if (ldm_nn_params_create(ctx, &P, ldm_ctx_device(ctx))) return NULL;
    net_register(P, m, depth, hid);
    if (n_freeze) ldm_nn_disable_untrainable_params(P, n_freeze, freeze, NULL);
    if (ldm_nn_params_alloc(ctx, P)) { printf("alloc: %s\n", ldm_ctx_error(ctx)); ldm_nn_params_destroy(P); return NULL; }
    hash_fill(ctx, P);
    return P;
}
static ldm_tensor *net_forward(ldm_ctx *ctx, const net *m, ldm_tensor *x) {
    ldm_tensor *h = x;
    for (int b = 0; b < DEPTH; b++) {
        h = ldm_add(ctx, h, ldm_nn_linear_forward(ctx, &m->l[b][1], ldm_silu(ctx, ldm_nn_linear_forward(ctx, &m->l[b][0], h))));
        h = ldm_add(ctx, h, ldm_nn_linear_forward(ctx, &m->l[b][3], ldm_silu(ctx, ldm_nn_linear_forward(ctx, &m->l[b][2], h))));
    }
    return ldm_nn_linear_forward(ctx, &m->head, h);
}
static const char *const TARGETS[2] = {"attn.qkv", "mlp.fc1"};
static ldm_nn_lora_config lora_cfg(int r, float alpha) {
    ldm_nn_lora_config c;
    memset(&c, 0, sizeof c);
    c.r = r; c.alpha = alpha; c.n_targets = 2; c.targets = TARGETS;
    return c;
}
/* host copy of a whole block (on any device) */
static float *block_copy_dev(ldm_ctx *ctx, ldm_nn_params *P, ldm_nn_block_id b, int64_t *n) {
    float *src = ldm_nn_block(P, b, n);
    float *h = (float *)malloc(sizeof(float) * (size_t)(*n ? *n : 1));
    if (*n) ldm_device_copy(ctx, h, LDM_CPU, src, ldm_nn_params_device(P), sizeof(float) * (size_t)*n);
    return h;
}
static int block_same_dev(ldm_ctx *ctx, ldm_nn_params *P, ldm_nn_block_id b, const float *snap, int64_t n) {
    int64_t m;
    float *cur = block_copy_dev(ctx, P, b, &m);
    int same = m == n && (n == 0 || memcmp(cur, snap, sizeof(float) * (size_t)n) == 0);
    free(cur);
    return same;
}
/* the CPU-only tests below read memory directly */
static float *block_copy(ldm_nn_params *P, ldm_nn_block_id b, int64_t *n) {
    float *src = ldm_nn_block(P, b, n);
    float *h = (float *)malloc(sizeof(float) * (size_t)(*n ? *n : 1));
    if (*n) memcpy(h, src, sizeof(float) * (size_t)*n);
    return h;
}
static int block_same(ldm_nn_params *P, ldm_nn_block_id b, const float *snap, int64_t n) {
    int64_t m;
    float *cur = ldm_nn_block(P, b, &m);
    return m == n && (n == 0 || memcmp(cur, snap, sizeof(float) * (size_t)n) == 0);
}
static double loss_of(const ldm_tensor *y, const float *r) {
    double L = 0.0;
    for (int64_t i = 0; i < y->numel; i++) L += (double)y->data[i] * r[i];
    return L;
}

/* ---- against PyTorch (on the CPU, and on the CUDA back end / its emulator) ------------------ */
static void test_torch(ldm_ctx *ctx) {
    ldm_weights *fx = NULL;
    net m;
    ldm_nn_params *P = net_new(ctx, &m, DEPTH, HID, 0, NULL);
    if (!P || ldm_weights_open(ctx, &fx, FIX "lora_ref.safetensors")) {
        lt_report(0, "lora vs torch: setup", "%s", ldm_ctx_error(ctx));
        ldm_nn_params_destroy(P); ldm_ctx_clear_error(ctx); return;
    }
    long n;
    float *x = lt_load(ctx, fx, "x", &n), *r = lt_load(ctx, fx, "r", NULL), *want;
    ldm_tensor *xt = ldm_from_host(ctx, ldm_shape3(2, 5, D), x);
    ldm_tensor *y = net_forward(ctx, &m, xt);
    want = lt_load(ctx, fx, "y_base", &n);
    lt_close("lora vs torch: base forward", lt_h(ctx, y, 0), want, n, 1e-6, 1e-5);
    free(want);
    {   /* freezing after alloc on this device: the kept gradients move to the new block intact */
        ldm_backward_from(ctx, y, r);
        ldm_tensor *k = ldm_nn_find(P, "blocks.1.mlp.fc2.weight");
        float *g0 = (float *)malloc(sizeof(float) * (size_t)k->numel);
        memcpy(g0, lt_h(ctx, k, 1), sizeof(float) * (size_t)k->numel);
        const char *pre[2] = {"blocks.0", "head"};
        int64_t ng;
        int ok = ldm_nn_disable_untrainable_params(P, 2, pre, NULL) == LDM_OK;
        ldm_nn_block(P, LDM_NN_BLOCK_GRADS, &ng);
        const float *g1 = lt_h(ctx, k, 1);
        LT_CHECK(ok && g1 && !memcmp(g0, g1, sizeof(float) * (size_t)k->numel) && !ldm_nn_find(P, "head.weight")->grad && ng < ldm_nn_numel(P, NULL, 0),
                 "lora vs torch: prefixes frozen after a backward keep the others' gradients bitwise");
        free(g0);
    }
    int64_t pn;
    float *psnap = block_copy_dev(ctx, P, LDM_NN_BLOCK_PARAMS, &pn);
    ldm_step_reset(ctx);

    ldm_nn_lora *L = NULL;
    ldm_nn_params *A = NULL;
    ldm_nn_lora_config c = lora_cfg(4, 8.0f);
    if (ldm_nn_lora_create(ctx, &L, P, &c)) { lt_report(0, "lora vs torch: create", "%s", ldm_ctx_error(ctx)); goto out; }
    A = ldm_nn_lora_params(L);
    hash_fill(ctx, A);
    LT_CHECK(ldm_nn_lora_count(L) == 4 && ldm_nn_count(A) == 8 && !strcmp(ldm_nn_entry_at(A, 0)->name, "blocks.0.attn.qkv.lora_A.weight") &&
             !strcmp(ldm_nn_entry_at(A, 3)->name, "blocks.0.mlp.fc1.lora_B.weight") && !strcmp(ldm_nn_lora_module(L, 3), "blocks.1.mlp.fc1") &&
             ldm_nn_lora_scaling(L) == 2.0f, "lora vs torch: peft names (<module>.lora_A.weight), target suffixes, scaling alpha/r");
    xt = ldm_from_host(ctx, ldm_shape3(2, 5, D), x);
    xt->requires_grad = 1;
    y = net_forward(ctx, &m, xt);
    want = lt_load(ctx, fx, "y", &n);
    lt_close("lora vs torch: adapted forward", lt_h(ctx, y, 0), want, n, 1e-6, 1e-5);
    free(want);
    ldm_backward_from(ctx, y, r);
    want = lt_load(ctx, fx, "grad.x", &n);
    lt_close("lora vs torch: grad input", lt_h(ctx, xt, 1), want, n, 1e-6, 1e-5);
    free(want);
    for (int i = 0; i < ldm_nn_count(A); i++) {
        const ldm_nn_entry *e = ldm_nn_entry_at(A, i);
        char key[160], nm[200];
        snprintf(key, sizeof key, "grad.%s", e->name);
        snprintf(nm, sizeof nm, "lora vs torch: %s", key);
        want = lt_load(ctx, fx, key, &n);
        if (want) lt_close(nm, lt_h(ctx, e->t, 1), want, n, 1e-6, 1e-5);
        free(want);
    }
    LT_CHECK(ldm_nn_numel(P, NULL, 1) == 0 && ldm_nn_block(P, LDM_NN_BLOCK_GRADS, NULL) == NULL && ldm_nn_entry_at(P, 0)->t->grad == NULL,
             "lora vs torch: the base is frozen with no gradient memory");
    ldm_step_reset(ctx);
    {
        ldm_nn_optim *opt = NULL;
        ldm_nn_optim_config oc = ldm_nn_optim_defaults(LDM_OPTIM_ADAMW, 1e-2);
        oc.weight_decay = 0.01;
        if (ldm_nn_optim_create(ctx, &opt, A, &oc, 0, NULL)) { lt_report(0, "lora vs torch: optimizer", "%s", ldm_ctx_error(ctx)); goto out; }
        int64_t padded = 0;
        for (int i = 0; i < ldm_nn_count(A); i++) padded += (ldm_nn_entry_at(A, i)->t->numel + 15) / 16 * 16;
        LT_CHECK(ldm_nn_optim_size(opt) == 8 && ldm_nn_optim_state_bytes(opt) == 2 * 4 * padded,
                 "lora vs torch: optimizer state only for the adapters");
        for (int step = 1; step <= 2; step++) {
            if (step == 2) {
                ldm_nn_optim_zero_grad(ctx, opt);
                ldm_backward_from(ctx, net_forward(ctx, &m, ldm_from_host(ctx, ldm_shape3(2, 5, D), x)), r);
                ldm_step_reset(ctx);
            }
            ldm_nn_optim_step(ctx, opt);
            for (int i = 0; i < ldm_nn_count(A); i++) {
                const ldm_nn_entry *e = ldm_nn_entry_at(A, i);
                char key[160], nm[200];
                snprintf(key, sizeof key, "step%d.%s", step, e->name);
                snprintf(nm, sizeof nm, "lora vs torch: AdamW %s", key);
                want = lt_load(ctx, fx, key, &n);
                if (want) lt_close(nm, lt_h(ctx, e->t, 0), want, n, 1e-6, 1e-5);
                free(want);
            }
        }
        y = net_forward(ctx, &m, ldm_from_host(ctx, ldm_shape3(2, 5, D), x));
        want = lt_load(ctx, fx, "y_step2", &n);
        lt_close("lora vs torch: forward after two steps", lt_h(ctx, y, 0), want, n, 1e-6, 1e-5);
        LT_CHECK(block_same_dev(ctx, P, LDM_NN_BLOCK_PARAMS, psnap, pn), "lora vs torch: base weights bitwise unchanged by training");
        ldm_step_reset(ctx);
        ldm_nn_lora_merge(ctx, L);
        y = net_forward(ctx, &m, ldm_from_host(ctx, ldm_shape3(2, 5, D), x));
        lt_close("lora vs torch: merged forward after two steps", lt_h(ctx, y, 0), want, n, 1e-5, 1e-5);
        ldm_nn_lora_unmerge(ctx, L);
        {
            int64_t n2;
            float *w = block_copy_dev(ctx, P, LDM_NN_BLOCK_PARAMS, &n2);
            lt_close("lora vs torch: unmerge restores the base weights", w, psnap, (long)pn, 1e-6, 0.0);
            free(w);
        }
        free(want);
        ldm_step_reset(ctx);
        ldm_nn_optim_destroy(opt);
    }
out:
    lt_report(ldm_ctx_status(ctx) == LDM_OK, "lora vs torch: no error", "%s", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    ldm_nn_lora_destroy(L);
    ldm_nn_params_destroy(P);
    free(psnap); free(x); free(r);
    ldm_weights_close(fx);
    ldm_step_reset(ctx);
    lt_host_release();
}

/* ---- finite differences on the adapter backward ---------------------------------------------- */
static void test_fd(void) {
    ldm_ctx *ctx = new_ctx(2);
    net m;
    ldm_nn_params *P = net_new(ctx, &m, DEPTH, HID, 0, NULL);
    ldm_nn_lora *L = NULL;
    ldm_nn_lora_config c = lora_cfg(3, 5.0f);
    if (!P || ldm_nn_lora_create(ctx, &L, P, &c)) { lt_report(0, "fd: setup", "%s", ldm_ctx_error(ctx)); ldm_nn_params_destroy(P); ldm_ctx_destroy(ctx); return; }
    ldm_nn_params *A = ldm_nn_lora_params(L);
    hash_fill(ctx, A);
    float x[2 * 3 * D], r[2 * 3 * OUT];
    lt_hash_uniform("fd.x", x, 2 * 3 * D);
    lt_hash_uniform("fd.r", r, 2 * 3 * OUT);
    ldm_tensor *xt = ldm_from_host(ctx, ldm_shape3(2, 3, D), x);
    xt->requires_grad = 1;
    ldm_backward_from(ctx, net_forward(ctx, &m, xt), r);
    /* targets: every adapter element and every input element */
    int ok = 1;
    double worst = 0.0;
    const float h = 1e-2f;
    for (int i = 0; i <= ldm_nn_count(A); i++) {
        ldm_tensor *t = i < ldm_nn_count(A) ? ldm_nn_entry_at(A, i)->t : xt;
        const float *g = t->grad;
        double gmax = 0.0;
        for (int64_t k = 0; k < t->numel; k++) if (fabs(g[k]) > gmax) gmax = fabs(g[k]);
        for (int64_t k = 0; k < t->numel; k++) {
            float v = t->data[k];
            ldm_mark mk = ldm_arena_mark(ctx);
            int prev = ldm_set_grad_enabled(ctx, 0);
            t->data[k] = v + h;
            double lp = loss_of(net_forward(ctx, &m, xt), r);
            t->data[k] = v - h;
            double lm = loss_of(net_forward(ctx, &m, xt), r);
            t->data[k] = v;
            ldm_set_grad_enabled(ctx, prev);
            ldm_arena_rewind(ctx, mk);
            double num = (lp - lm) / (2.0 * h), err = fabs(num - g[k]), lim = 1e-2 * fabs(num) + 1e-3 * gmax;
            if (err / (lim > 0 ? lim : 1) > worst) worst = err / (lim > 0 ? lim : 1);
            if (!(err <= lim)) {
                if (ok) printf("     fd: %s[%lld] analytic %.6g numeric %.6g\n", t == xt ? "x" : t->name, (long long)k, (double)g[k], num);
                ok = 0;
            }
        }
    }
    lt_report(ok, "fd: adapter backward (every lora_A, lora_B and input element) vs central differences", "worst err/limit %.3g", worst);
    printf("     fd: worst error / tolerance %.3f\n", worst);
    ldm_nn_lora_destroy(L);
    ldm_nn_params_destroy(P);
    ldm_ctx_destroy(ctx);
}

/* ---- init, dropout, merge, save/load ----------------------------------------------------------- */
static void test_init_merge_io(void) {
    ldm_ctx *ctx = new_ctx(3);
    net m, m2;
    ldm_nn_params *P = net_new(ctx, &m, DEPTH, HID, 0, NULL), *P2 = NULL;
    ldm_nn_lora *L = NULL, *L2 = NULL;
    float x[2 * 5 * D];
    lt_hash_uniform("init.x", x, 2 * 5 * D);
    ldm_nn_lora_config c = lora_cfg(4, 16.0f);
    c.dropout = 0.5f;
    if (!P) { lt_report(0, "init: setup", "%s", ldm_ctx_error(ctx)); ldm_ctx_destroy(ctx); return; }
    ldm_tensor *y, *yb = net_forward(ctx, &m, ldm_from_host(ctx, ldm_shape3(2, 5, D), x));
    float *base = (float *)malloc(sizeof(float) * (size_t)yb->numel), *ad = NULL;
    int64_t ny = yb->numel, pn;
    memcpy(base, yb->data, sizeof(float) * (size_t)ny);
    float *psnap = block_copy(P, LDM_NN_BLOCK_PARAMS, &pn);
    if (ldm_nn_lora_create(ctx, &L, P, &c)) { lt_report(0, "init: create", "%s", ldm_ctx_error(ctx)); goto out; }
    {
    ldm_nn_params *A = ldm_nn_lora_params(L);
    {
        int a_ok = 1, b_zero = 1, a_nonzero = 0;
        for (int i = 0; i < ldm_nn_count(A); i++) {
            ldm_tensor *t = ldm_nn_entry_at(A, i)->t;
            int is_a = strstr(t->name, ".lora_A.") != NULL;
            double bound = 1.0 / sqrt((double)t->shape[1]);
            for (int64_t k = 0; k < t->numel; k++) {
                if (is_a) { a_ok = a_ok && fabs(t->data[k]) <= bound; a_nonzero = a_nonzero || t->data[k] != 0.0f; }
                else b_zero = b_zero && t->data[k] == 0.0f;
            }
        }
        LT_CHECK(a_ok && a_nonzero && b_zero, "init: lora_A kaiming_uniform(a=sqrt(5)) within 1/sqrt(in), lora_B zero");
    }
    ldm_nn_lora_set_training(L, 1); /* dropout on: still the base, since B = 0 */
    y = net_forward(ctx, &m, ldm_from_host(ctx, ldm_shape3(2, 5, D), x));
    LT_CHECK(y && !memcmp(y->data, base, sizeof(float) * (size_t)ny), "init: the adapted model equals the base bitwise");
    hash_fill(ctx, A);
    ldm_step_reset(ctx);
    ldm_nn_lora_set_training(L, 0);
    y = net_forward(ctx, &m, ldm_from_host(ctx, ldm_shape3(2, 5, D), x));
    ad = (float *)malloc(sizeof(float) * (size_t)ny);
    memcpy(ad, y->data, sizeof(float) * (size_t)ny);
    ldm_nn_lora_set_training(L, 1);
    ldm_tensor *yd = net_forward(ctx, &m, ldm_from_host(ctx, ldm_shape3(2, 5, D), x));
    int differs = 0;
    for (int64_t k = 0; k < ny; k++) differs += yd->data[k] != ad[k];
    LT_CHECK(differs > ny / 2, "dropout: training mode drops adapter inputs, eval mode does not");
    ldm_nn_lora_set_training(L, 0);
    ldm_step_reset(ctx);

    /* merge */
    LT_CHECK(ldm_nn_lora_merge(ctx, L) == LDM_OK && ldm_nn_lora_merged(L), "merge: W += scaling B A");
    y = net_forward(ctx, &m, ldm_from_host(ctx, ldm_shape3(2, 5, D), x));
    lt_close("merge: merged forward == unmerged forward", y->data, ad, ny, 1e-5, 0.0);
    expect_err(ctx, ldm_nn_lora_merge(ctx, L), LDM_ERR_INVALID, "already merged", "merge: merging twice is an error");
    ldm_step_reset(ctx);
    LT_CHECK(ldm_nn_lora_save(ctx, L, "lora_rt.safetensors") == LDM_OK, "save: adapters apart (while merged: the adapters themselves)");
    expect_err(ctx, ldm_nn_lora_load(ctx, L, "lora_rt.safetensors"), LDM_ERR_INVALID, "unmerge first", "load: refused into merged adapters");
    LT_CHECK(ldm_nn_lora_unmerge(ctx, L) == LDM_OK && !ldm_nn_lora_merged(L), "unmerge");
    {
        int64_t n2;
        float *w = ldm_nn_block(P, LDM_NN_BLOCK_PARAMS, &n2);
        lt_close("unmerge: base weights restored", w, psnap, (long)pn, 1e-6, 0.0);
    }
    y = net_forward(ctx, &m, ldm_from_host(ctx, ldm_shape3(2, 5, D), x));
    lt_close("unmerge: forward back to the adapted one", y->data, ad, ny, 1e-6, 0.0);
    expect_err(ctx, ldm_nn_lora_unmerge(ctx, L), LDM_ERR_INVALID, "not merged", "unmerge: unmerging twice is an error");
    ldm_step_reset(ctx);

    /* adapters file onto a fresh base */
    {
        ldm_weights *w = NULL;
        int meta = ldm_weights_open(ctx, &w, "lora_rt.safetensors") == LDM_OK && ldm_weights_count(w) == 8 &&
                   !strcmp(ldm_weights_metadata(w, "lora_rank"), "4") && !strcmp(ldm_weights_metadata(w, "lora_alpha"), "16") &&
                   !strcmp(ldm_weights_metadata(w, "lora_dropout"), "0.5") && !strcmp(ldm_weights_metadata(w, "target_modules"), "attn.qkv,mlp.fc1") &&
                   ldm_weights_find(w, "blocks.1.mlp.fc1.lora_B.weight") >= 0 && ldm_weights_find(w, "blocks.1.mlp.fc1.weight") < 0;
        ldm_weights_close(w);
        LT_CHECK(meta, "save: only the adapters, with rank/alpha/dropout/targets in the metadata");
    }
    P2 = net_new(ctx, &m2, DEPTH, HID, 0, NULL);
    if (!P2 || ldm_nn_lora_create_from_file(ctx, &L2, P2, "lora_rt.safetensors")) { lt_report(0, "load: onto a fresh base", "%s", ldm_ctx_error(ctx)); goto out; }
    y = net_forward(ctx, &m2, ldm_from_host(ctx, ldm_shape3(2, 5, D), x));
    LT_CHECK(ldm_nn_lora_count(L2) == 4 && ldm_nn_lora_cfg(L2)->r == 4 && ldm_nn_lora_cfg(L2)->alpha == 16.0f && ldm_nn_lora_cfg(L2)->dropout == 0.5f &&
             ldm_nn_lora_cfg(L2)->n_targets == 2 && !strcmp(ldm_nn_lora_cfg(L2)->targets[1], "mlp.fc1") &&
             !memcmp(y->data, ad, sizeof(float) * (size_t)ny), "load: create_from_file on a fresh base gives the same forward bitwise");
    ldm_step_reset(ctx);
    /* destroying the base first leaves a set that frees itself; a merge says why it cannot */
    ldm_nn_params_destroy(P2);
    P2 = NULL;
    expect_err(ctx, ldm_nn_lora_merge(ctx, L2), LDM_ERR_INVALID, "destroyed", "lifetime: adapters outliving their base");
    }
out:
    LT_CHECK(ldm_ctx_status(ctx) == LDM_OK, "init/merge/io: no error");
    ldm_nn_lora_destroy(L2);
    ldm_nn_lora_destroy(L);
    {   /* detached: the base runs without the adapter term again (weights unmerged: within rounding) */
        y = net_forward(ctx, &m, ldm_from_host(ctx, ldm_shape3(2, 5, D), x));
        if (y) lt_close("destroy: detaches the adapters from the layers", y->data, base, (long)ny, 1e-6, 0.0);
        else lt_report(0, "destroy: detaches the adapters from the layers", "%s", ldm_ctx_error(ctx));
    }
    ldm_nn_params_destroy(P2);
    ldm_nn_params_destroy(P);
    free(base); free(psnap); free(ad);
    ldm_ctx_destroy(ctx);
}

/* ---- bad input ---------------------------------------------------------------------------------- */
static void test_errors(void) {
    ldm_ctx *ctx = new_ctx(4);
    net m, m2;
    ldm_nn_params *P = net_new(ctx, &m, DEPTH, HID, 0, NULL);
    ldm_nn_lora *L = NULL;
    ldm_nn_lora_config c = lora_cfg(0, 8.0f);
    expect_err(ctx, ldm_nn_lora_create(ctx, &L, P, &c), LDM_ERR_INVALID, "r = 0", "errors: rank 0");
    c = lora_cfg(4, 8.0f);
    const char *bad[1] = {"attn.nope"};
    c.targets = bad; c.n_targets = 1;
    expect_err(ctx, ldm_nn_lora_create(ctx, &L, P, &c), LDM_ERR_NOT_FOUND, "blocks.0.attn.qkv", "errors: unknown target lists the linear layers");
    const char *part[1] = {"qkv.weight"};
    c.targets = part;
    expect_err(ctx, ldm_nn_lora_create(ctx, &L, P, &c), LDM_ERR_NOT_FOUND, "\"qkv.weight\" matches no linear layer", "errors: a parameter name is no module");
    c = lora_cfg(4, 8.0f);
    c.dropout = 1.0f;
    expect_err(ctx, ldm_nn_lora_create(ctx, &L, P, &c), LDM_ERR_INVALID, "lora_dropout", "errors: dropout 1");
    c = lora_cfg(4, 8.0f);
    c.alpha = NAN;
    expect_err(ctx, ldm_nn_lora_create(ctx, &L, P, &c), LDM_ERR_INVALID, "not finite", "errors: alpha NaN");
    LT_CHECK(L == NULL && ldm_nn_numel(P, NULL, 1) == ldm_nn_numel(P, NULL, 0), "errors: a failed create changes nothing (base still trainable)");
    c = lora_cfg(4, 8.0f);
    if (ldm_nn_lora_create(ctx, &L, P, &c)) { lt_report(0, "errors: create", "%s", ldm_ctx_error(ctx)); goto out; }
    {
    ldm_nn_lora *L2 = NULL;
    expect_err(ctx, ldm_nn_lora_create(ctx, &L2, P, &c), LDM_ERR_INVALID, "already has LoRA", "errors: a second set on one base");
    hash_fill(ctx, ldm_nn_lora_params(L));
    ldm_nn_lora_save(ctx, L, "lora_err.safetensors");
    {   /* another shape: fc1 is 8 -> 32 there */
        ldm_nn_params *Q = net_new(ctx, &m2, DEPTH, 2 * HID, 0, NULL);
        ldm_nn_lora *LQ = NULL;
        expect_err(ctx, Q ? ldm_nn_lora_create_from_file(ctx, &LQ, Q, "lora_err.safetensors") : LDM_ERR_INVALID, LDM_ERR_INVALID,
                   "\"blocks.0.mlp.fc1.lora_B.weight\" is [16, 4] in the file, [32, 4] here", "errors: adapter file for other layer sizes");
        LT_CHECK(LQ == NULL && Q && ldm_nn_numel(Q, NULL, 1) == ldm_nn_numel(Q, NULL, 0), "errors: a failed load leaves the base as it was");
        ldm_nn_params_destroy(Q);
    }
    {   /* another model: one block only */
        ldm_nn_params *Q = net_new(ctx, &m2, 1, HID, 0, NULL);
        ldm_nn_lora *LQ = NULL;
        expect_err(ctx, Q ? ldm_nn_lora_create_from_file(ctx, &LQ, Q, "lora_err.safetensors") : LDM_ERR_INVALID, LDM_ERR_NOT_FOUND,
                   "\"blocks.1.attn.qkv.lora_A.weight\", which is no adapter of this model", "errors: adapter file for another model");
        ldm_nn_params_destroy(Q);
    }
    {   /* other rank */
        ldm_nn_params *Q = net_new(ctx, &m2, DEPTH, HID, 0, NULL);
        ldm_nn_lora *LQ = NULL;
        ldm_nn_lora_config c2 = lora_cfg(2, 8.0f);
        if (Q && !ldm_nn_lora_create(ctx, &LQ, Q, &c2))
            expect_err(ctx, ldm_nn_lora_load(ctx, LQ, "lora_err.safetensors"), LDM_ERR_INVALID, "rank 4, alpha 8; these have rank 2", "errors: adapter file of another rank");
        else lt_report(0, "errors: adapter file of another rank", "%s", ldm_ctx_error(ctx));
        ldm_nn_lora_destroy(LQ);
        ldm_nn_params_destroy(Q);
    }
    {   /* rsLoRA: scaling alpha / sqrt(r); a plain-LoRA file does not load into it */
        ldm_nn_params *Q = net_new(ctx, &m2, DEPTH, HID, 0, NULL);
        ldm_nn_lora *LQ = NULL;
        ldm_nn_lora_config c2 = lora_cfg(4, 8.0f);
        c2.use_rslora = 1;
        if (Q && !ldm_nn_lora_create(ctx, &LQ, Q, &c2)) {
            LT_CHECK(ldm_nn_lora_scaling(LQ) == 4.0f, "rslora: scaling = alpha / sqrt(r)");
            expect_err(ctx, ldm_nn_lora_load(ctx, LQ, "lora_err.safetensors"), LDM_ERR_INVALID, "these have rank 4, alpha 8 (rslora)", "errors: plain LoRA file into rsLoRA adapters");
        } else lt_report(0, "rslora: create", "%s", ldm_ctx_error(ctx));
        ldm_nn_lora_destroy(LQ);
        ldm_nn_params_destroy(Q);
    }
    expect_err(ctx, ldm_nn_lora_load(ctx, L, FIX "nn_model.safetensors"), LDM_ERR_FORMAT, "not a LoRA adapter file", "errors: a model file is no adapter file");
    }
out:
    ldm_nn_lora_destroy(L);
    ldm_nn_params_destroy(P);
    ldm_ctx_destroy(ctx);
}

/* ---- freezing ----------------------------------------------------------------------------------- */
static int64_t padded_numel(ldm_nn_params *P, int trainable_only) {
    int64_t n = 0;
    for (int i = 0; i < ldm_nn_count(P); i++) {
        const ldm_nn_entry *e = ldm_nn_entry_at(P, i);
        if (e->kind == LDM_NN_PARAM && (!trainable_only || e->t->requires_grad)) n += (e->t->numel + 15) / 16 * 16;
    }
    return n;
}
/* 3 AdamW steps (weight decay on) of sum(y * r) */
static void train3(ldm_ctx *ctx, const net *m, ldm_nn_optim *opt) {
    float x[2 * 5 * D], r[2 * 5 * OUT];
    lt_hash_uniform("train.x", x, 2 * 5 * D);
    lt_hash_uniform("train.r", r, 2 * 5 * OUT);
    for (int s = 0; s < 3; s++) {
        ldm_backward_from(ctx, net_forward(ctx, m, ldm_from_host(ctx, ldm_shape3(2, 5, D), x)), r);
        ldm_nn_optim_step(ctx, opt);
        ldm_nn_optim_zero_grad(ctx, opt);
        ldm_step_reset(ctx);
    }
}
static void test_freeze(void) {
    ldm_ctx *ctx = new_ctx(5);
    net m, m2;
    const char *pre[2] = {"blocks.0", "head"};
    ldm_nn_params *P = net_new(ctx, &m, DEPTH, HID, 2, pre), *Q = NULL;
    ldm_nn_optim *opt = NULL, *opt2 = NULL;
    ldm_nn_optim_config oc = ldm_nn_optim_defaults(LDM_OPTIM_ADAMW, 1e-2);
    if (!P) { lt_report(0, "freeze: setup", "%s", ldm_ctx_error(ctx)); ldm_ctx_destroy(ctx); return; }
    int flags = 1;
    for (int i = 0; i < ldm_nn_count(P); i++) {
        const ldm_nn_entry *e = ldm_nn_entry_at(P, i);
        int frozen = !strncmp(e->name, "blocks.0", 8) || !strncmp(e->name, "head", 4);
        flags = flags && e->t->requires_grad == !frozen && (e->t->grad == NULL) == frozen;
    }
    int64_t ng;
    ldm_nn_block(P, LDM_NN_BLOCK_GRADS, &ng);
    LT_CHECK(flags && ng == padded_numel(P, 1) && ng < padded_numel(P, 0),
             "freeze: prefixes before alloc: frozen parameters get no gradient slice (block shrinks)");
    if (ldm_nn_optim_create(ctx, &opt, P, &oc, 0, NULL)) { lt_report(0, "freeze: optimizer", "%s", ldm_ctx_error(ctx)); goto out; }
    LT_CHECK(ldm_nn_optim_size(opt) == 8 && ldm_nn_optim_state_bytes(opt) == 2 * 4 * padded_numel(P, 1) &&
             ldm_nn_optim_state_bytes(opt) < 2 * 4 * padded_numel(P, 0) / 2,
             "freeze: optimizer state only for trainable parameters (less than half the full size here)");
    printf("     freeze: optimizer state %lld bytes (all parameters: %lld)\n", (long long)ldm_nn_optim_state_bytes(opt), (long long)(2 * 4 * padded_numel(P, 0)));
    {
        int64_t pn;
        float *snap = block_copy(P, LDM_NN_BLOCK_PARAMS, &pn);
        train3(ctx, &m, opt);
        int frozen_same = 1, trained_moved = 1;
        for (int i = 0; i < ldm_nn_count(P); i++) {
            const ldm_nn_entry *e = ldm_nn_entry_at(P, i);
            int same = !memcmp(e->t->data, snap + e->offset, sizeof(float) * (size_t)e->t->numel);
            if (e->t->requires_grad) trained_moved = trained_moved && !same;
            else frozen_same = frozen_same && same;
        }
        LT_CHECK(frozen_same && trained_moved && ldm_ctx_status(ctx) == LDM_OK, "freeze: 3 AdamW steps leave frozen weights bitwise unchanged, move the rest");
        free(snap);
    }
    LT_CHECK(ldm_nn_optim_save(ctx, opt, "freeze_opt.safetensors") == LDM_OK, "freeze: optimizer state saved");
    {   /* the same frozen set loads; another is a clear error */
        const char *p1[1] = {"head"}, *p3[3] = {"blocks.0", "head", "blocks.1.mlp"};
        Q = net_new(ctx, &m2, DEPTH, HID, 2, pre);
        LT_CHECK(Q && !ldm_nn_optim_create(ctx, &opt2, Q, &oc, 0, NULL) && ldm_nn_optim_load(ctx, opt2, "freeze_opt.safetensors") == LDM_OK &&
                 ldm_nn_optim_steps(opt2) == 3, "checkpoint: the same frozen prefixes load the optimizer state");
        ldm_nn_optim_destroy(opt2); opt2 = NULL; ldm_nn_params_destroy(Q);
        Q = net_new(ctx, &m2, DEPTH, HID, 1, p1);
        if (Q && !ldm_nn_optim_create(ctx, &opt2, Q, &oc, 0, NULL))
            expect_err(ctx, ldm_nn_optim_load(ctx, opt2, "freeze_opt.safetensors"), LDM_ERR_NOT_FOUND, "has no \"blocks.0.attn.qkv.weight.exp_avg\": that parameter was frozen",
                       "checkpoint: unfreezing a prefix is an error naming the parameter");
        ldm_nn_optim_destroy(opt2); opt2 = NULL; ldm_nn_params_destroy(Q);
        Q = net_new(ctx, &m2, DEPTH, HID, 3, p3);
        if (Q && !ldm_nn_optim_create(ctx, &opt2, Q, &oc, 0, NULL))
            expect_err(ctx, ldm_nn_optim_load(ctx, opt2, "freeze_opt.safetensors"), LDM_ERR_INVALID, "\"blocks.1.mlp.fc1.weight.exp_avg\", which belongs to no parameter",
                       "checkpoint: freezing more is an error naming the parameter");
        ldm_nn_optim_destroy(opt2); opt2 = NULL; ldm_nn_params_destroy(Q);
        Q = NULL;
    }
    {   /* after alloc: the gradient block is laid out again, kept gradients keep their values */
        Q = net_new(ctx, &m2, DEPTH, HID, 0, NULL);
        int64_t n0, n1;
        float *g = ldm_nn_block(Q, LDM_NN_BLOCK_GRADS, &n0);
        for (int64_t k = 0; k < n0; k++) g[k] = 0.0f;
        for (int i = 0; i < ldm_nn_count(Q); i++) {
            ldm_tensor *t = ldm_nn_entry_at(Q, i)->t;
            for (int64_t k = 0; k < t->numel; k++) t->grad[k] = (float)(i + 1) + 0.001f * (float)k;
        }
        const char *p2[2] = {"blocks.1.attn", "head.bias"};
        int64_t nt = -1;
        ldm_result r = ldm_nn_disable_untrainable_params(Q, 2, p2, &nt);
        ldm_nn_block(Q, LDM_NN_BLOCK_GRADS, &n1);
        int kept = 1;
        for (int i = 0; i < ldm_nn_count(Q); i++) {
            ldm_tensor *t = ldm_nn_entry_at(Q, i)->t;
            int frozen = !strncmp(t->name, "blocks.1.attn", 13) || !strcmp(t->name, "head.bias");
            if (frozen) { kept = kept && !t->grad && !t->requires_grad; continue; }
            for (int64_t k = 0; k < t->numel && kept; k++) kept = t->grad && t->grad[k] == (float)(i + 1) + 0.001f * (float)k;
        }
        LT_CHECK(r == LDM_OK && kept && n1 == padded_numel(Q, 1) && n1 < n0 && nt == ldm_nn_numel(Q, NULL, 1),
                 "freeze: prefixes after alloc give the frozen gradient slices back, the rest keep their gradients");
        const char *nope[2] = {"head", "blocks.9"};
        expect_err(ctx, ldm_nn_disable_untrainable_params(Q, 2, nope, NULL), LDM_ERR_NOT_FOUND, "no parameter name starts with \"blocks.9\"",
                   "freeze: a prefix matching nothing is an error");
        LT_CHECK(ldm_nn_find(Q, "head.weight")->requires_grad == 1, "freeze: ... and freezes nothing");
        expect_err(ctx, ldm_nn_set_trainable(Q, "blocks.1.attn", 1), LDM_ERR_INVALID, "has no gradient slice", "freeze: unfreezing a released slice is an error");
        const char *all[1] = {"all"};
        LT_CHECK(ldm_nn_disable_untrainable_params(Q, 1, all, &nt) == LDM_OK && nt == 0 && ldm_nn_block(Q, LDM_NN_BLOCK_GRADS, &n1) == NULL && n1 == 0,
                 "freeze: \"all\" freezes everything and releases the gradient block");
        expect_err(ctx, ldm_nn_optim_create(ctx, &opt2, Q, &oc, 0, NULL), LDM_ERR_INVALID, "no trainable parameter", "freeze: no optimizer over a frozen model");
        ldm_nn_params_destroy(Q);
        Q = NULL;
    }
    {   /* the first stage: frozen for good */
        Q = net_new(ctx, &m2, DEPTH, HID, 0, NULL);
        int64_t n1;
        LT_CHECK(Q && ldm_nn_params_freeze(ctx, Q) == LDM_OK && ldm_nn_params_frozen(Q) && ldm_nn_numel(Q, NULL, 1) == 0 &&
                 ldm_nn_block(Q, LDM_NN_BLOCK_GRADS, &n1) == NULL && n1 == 0, "freeze: whole model, gradient block released");
        expect_err(ctx, ldm_nn_set_trainable(Q, "head", 1), LDM_ERR_INVALID, "frozen for good", "freeze: a frozen first stage refuses set_trainable");
        ldm_nn_params_destroy(Q);
        Q = NULL;
    }
out:
    ldm_nn_optim_destroy(opt);
    ldm_nn_params_destroy(P);
    ldm_ctx_destroy(ctx);
}

/* ---- LoRA on a small DiT (ldm_diffusion.h): no LoRA code in the model ---------------------------- */
static void test_dit(void) {
    ldm_ctx *ctx = new_ctx(6);
    ldm_dit_config c;
    memset(&c, 0, sizeof c);
    c.input_size = 8; c.patch_size = 2; c.in_channels = 4; c.hidden_size = 16; c.depth = 2; c.num_heads = 2;
    c.mlp_ratio = 2.0f; c.class_dropout_prob = 0.0f; c.num_classes = 10; c.learn_sigma = 0;
    ldm_dit *dit = NULL;
    ldm_nn_lora *L = NULL;
    ldm_nn_optim *opt = NULL;
    if (ldm_dit_create(ctx, &dit, &c)) { lt_report(0, "dit: create", "%s", ldm_ctx_error(ctx)); ldm_ctx_destroy(ctx); return; }
    ldm_nn_params *P = ldm_dit_params(dit);
    for (int i = 0; i < ldm_nn_count(P); i++) {  /* hash weights (the adaLN-Zero init would hide the blocks); pos_embed stays */
        const ldm_nn_entry *e = ldm_nn_entry_at(P, i);
        if (strcmp(e->name, "pos_embed") == 0) continue;
        float *h = (float *)malloc(sizeof(float) * (size_t)e->t->numel);
        lt_hash_init(e->name, h, e->t->ndim, e->t->shape);
        ldm_nn_copy_from_host(ctx, e->t, h);
        free(h);
    }
    float x[2 * 4 * 8 * 8], t[2] = {10.0f, 500.0f}, y[2] = {3.0f, 7.0f}, r[2 * 4 * 8 * 8];
    lt_hash_uniform("dit.x", x, 2 * 4 * 64);
    lt_hash_uniform("dit.r", r, 2 * 4 * 64);
#define DIT_FWD() ldm_dit_forward(ctx, dit, ldm_from_host(ctx, ldm_shape4(2, 4, 8, 8), x), ldm_from_host(ctx, ldm_shape1(2), t), ldm_from_host(ctx, ldm_shape1(2), y))
    ldm_tensor *o = DIT_FWD();
    int64_t no = o ? o->numel : 0, pn;
    float *base = (float *)malloc(sizeof(float) * (size_t)(no ? no : 1)), *got = (float *)malloc(sizeof(float) * (size_t)(no ? no : 1));
    if (o) memcpy(base, o->data, sizeof(float) * (size_t)no);
    float *psnap = block_copy(P, LDM_NN_BLOCK_PARAMS, &pn);
    ldm_step_reset(ctx);
    ldm_nn_lora_config lc = lora_cfg(4, 4.0f);
    ldm_nn_optim_config oc = ldm_nn_optim_defaults(LDM_OPTIM_ADAMW, 1e-2);
    int differs = 0;
    if (ldm_nn_lora_create(ctx, &L, P, &lc)) { lt_report(0, "dit: lora", "%s", ldm_ctx_error(ctx)); goto out; }
    LT_CHECK(ldm_nn_lora_count(L) == 4 && !strcmp(ldm_nn_lora_module(L, 0), "blocks.0.attn.qkv") && !strcmp(ldm_nn_lora_module(L, 3), "blocks.1.mlp.fc1"),
             "dit: adapters on blocks.*.attn.qkv and blocks.*.mlp.fc1");
    o = DIT_FWD();
    LT_CHECK(o && !memcmp(o->data, base, sizeof(float) * (size_t)no), "dit: forward with fresh adapters equals the base bitwise");
    ldm_step_reset(ctx);
    if (ldm_nn_optim_create(ctx, &opt, ldm_nn_lora_params(L), &oc, 0, NULL)) { lt_report(0, "dit: optimizer", "%s", ldm_ctx_error(ctx)); goto out; }
    ldm_backward_from(ctx, DIT_FWD(), r);
    ldm_nn_optim_step(ctx, opt);
    ldm_step_reset(ctx);
    {
        int b_moved = 1;
        for (int i = 0; i < ldm_nn_count(ldm_nn_lora_params(L)); i++) {
            ldm_tensor *a = ldm_nn_entry_at(ldm_nn_lora_params(L), i)->t;
            if (!strstr(a->name, "lora_B")) continue;
            int nz = 0;
            for (int64_t k = 0; k < a->numel; k++) nz += a->data[k] != 0.0f;
            b_moved = b_moved && nz == a->numel;
        }
        LT_CHECK(block_same(P, LDM_NN_BLOCK_PARAMS, psnap, pn) && b_moved && ldm_ctx_status(ctx) == LDM_OK,
                 "dit: one AdamW step moves every lora_B element and no base weight");
    }
    o = DIT_FWD();
    for (int64_t k = 0; o && k < no; k++) differs += o->data[k] != base[k];
    if (o) memcpy(got, o->data, sizeof(float) * (size_t)no);
    LT_CHECK(differs > 0, "dit: the adapted DiT's output moved");
    ldm_step_reset(ctx);
    ldm_nn_lora_merge(ctx, L);
    o = DIT_FWD();
    if (o) lt_close("dit: merged forward == unmerged forward", o->data, got, (long)no, 1e-5, 0.0);
    ldm_step_reset(ctx);
#undef DIT_FWD
out:
    LT_CHECK(ldm_ctx_status(ctx) == LDM_OK, "dit: no error");
    ldm_nn_optim_destroy(opt);
    ldm_nn_lora_destroy(L);
    ldm_dit_destroy(dit);
    free(base); free(got); free(psnap);
    ldm_ctx_destroy(ctx);
}

int main(void) {
    ldm_ctx *ctx = new_ctx(1);
#ifndef LDM_CUDA_EMULATOR /* the emulator build only runs the device part below */
    test_torch(ctx);
    test_fd();
    test_init_merge_io();
    test_errors();
    test_freeze();
    test_dit();
    remove("lora_rt.safetensors");
    remove("lora_err.safetensors");
    remove("freeze_opt.safetensors");
#endif
    ldm_ctx_destroy(ctx);
#ifdef LDM_CUDA
    /* forward, gradients, AdamW, merge and gradient-block compaction on the CUDA back end
       (the CPU emulator's build runs the CUDA code on the CPU) */
    if (ldm_cuda_available() && (ctx = new_ctx(1)) != NULL) {
        if (ldm_cuda_init(ctx, 0)) lt_report(0, "cuda init", "%s", ldm_ctx_error(ctx));
        else {
            lt_tag = "[cuda] ";
            test_torch(ctx);
            lt_tag = "";
        }
        ldm_ctx_destroy(ctx);
    } else printf("SKIP test_lora on CUDA: no CUDA device\n");
#endif
    return lt_finish("test_lora");
}
