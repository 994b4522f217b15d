/* test_denoisers.c - the LDM UNet (+ SpatialTransformer), ClassEmbedder and DiT against PyTorch
   (tests/ref/denoiser_ref.py: float64 references of modules named as CompVis / DiT, hash
   weights made here too with lt_hash_init): forward, the input gradient and every parameter
   gradient (hash projection and norm) for five UNet variants (one 3-D) and a DiT; state-dict names and
   shapes against the PyTorch state dicts; a torch.save checkpoint loaded under
   model.diffusion_model.; save/load round trip; strict-load errors; the published configs'
   unet_config read unchanged with PyTorch's parameter counts; denoiser calls (concat, CFG null
   class, label drop). Prints the forward+backward time of each tiny model.
   Loads files, so it also runs under ASan/UBSan: LDM_TEST_SANITIZE */
#define _POSIX_C_SOURCE 200809L /* clock_gettime for the timings */
#define LDM_IMPLEMENTATION
#include "../ldm_config.h"
#include "../ldm_diffusion.h"
#include "ldm_test.h"
#include <time.h>

#define FIX "../tests/fixtures/"
#define CFGS "../configs/"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static ldm_unet_config tiny_base(void) {
    ldm_unet_config c = ldm_unet_config_default();
    c.image_size = 8; c.in_channels = 4; c.model_channels = 32; c.out_channels = 4; c.num_res_blocks = 1;
    c.channel_mult[0] = 1; c.channel_mult[1] = 2; c.n_levels = 2;
    return c;
}
static ldm_unet_config cfg_case(char v) {
    ldm_unet_config c = tiny_base();
    switch (v) {
    case 'a': c.attention_resolutions[0] = 2; c.n_attn = 1; c.num_heads = 2; c.use_spatial_transformer = 1; c.context_dim = 24; break;
    case 'b': c.out_channels = 8; c.attention_resolutions[0] = 1; c.attention_resolutions[1] = 2; c.n_attn = 2;
              c.num_head_channels = 32; c.use_scale_shift_norm = 1; c.resblock_updown = 1; c.num_classes = 10; break;
    case 'c': c.in_channels = 6; c.out_channels = 3; c.attention_resolutions[0] = 2; c.n_attn = 1; c.num_heads = 2;
              c.num_heads_upsample = 1; c.use_new_attention_order = 1; c.legacy = 0; c.conv_resample = 0; break;
    case 'd': c.attention_resolutions[0] = 1; c.attention_resolutions[1] = 2; c.n_attn = 2; c.num_head_channels = 16;
              c.use_spatial_transformer = 1; c.context_dim = 20; c.transformer_depth = 2; c.use_linear_in_transformer = 1;
              c.use_scale_shift_norm = 1; c.legacy = 0; break;
    case 'f': c.dims = 3; c.attention_resolutions[0] = 2; c.n_attn = 1; c.num_heads = 2; break;
    case 'e': c.channel_mult[0] = 1; c.n_levels = 1; c.attention_resolutions[0] = 1; c.n_attn = 1; c.num_heads = 1;
              c.use_spatial_transformer = 1; c.context_dim = 8; c.num_classes = 5; break;
    }
    return c;
}
static ldm_dit_config dit_tiny(void) {
    ldm_dit_config c;
    memset(&c, 0, sizeof c);
    c.input_size = 8; c.patch_size = 2; c.in_channels = 4; c.hidden_size = 64; c.depth = 2; c.num_heads = 4;
    c.mlp_ratio = 4.0f; c.class_dropout_prob = 0.1f; c.num_classes = 10; c.learn_sigma = 1;
    return c;
}

/* out vs fixture (forward within 1e-4), loss, x_grad (1e-3 relative to its scale). */
static void check_out(ldm_ctx *ctx, ldm_weights *fx, const char *tag, ldm_tensor *out, ldm_tensor *x) {
    char name[128];
    long n;
    float *want = lt_load(ctx, fx, "out", &n);
    snprintf(name, sizeof name, "%s forward", tag);
    if (out && want && n == out->numel) lt_close(name, lt_h(ctx, out, 0), want, n, 1e-4, 1e-4);
    else lt_report(0, name, "%s", out ? "output size differs" : ldm_ctx_error(ctx));
    free(want);
    if (!x) return;
    want = lt_load(ctx, fx, "x_grad", &n);
    snprintf(name, sizeof name, "%s grad x", tag);
    if (want && x->grad) {
        double wmax = 0;
        for (long k = 0; k < n; k++) wmax = fmax(wmax, fabs(want[k]));
        lt_close(name, lt_h(ctx, x, 1), want, n, 1e-4 * wmax, 1e-3);
    } else lt_report(0, name, "no gradient");
    free(want);
}

static void test_unet_case(ldm_ctx *ctx, char v) {
    char tag[32], path[128];
    snprintf(tag, sizeof tag, "unet_%c", v);
    snprintf(path, sizeof path, FIX "denoiser_unet_%c.safetensors", v);
    ldm_weights *fx;
    if (ldm_weights_open(ctx, &fx, path)) { lt_report(0, tag, "%s", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); return; }
    ldm_unet_config cfg = cfg_case(v);
    ldm_unet *u = NULL;
    ldm_class_embedder *ce = NULL;
    if (ldm_unet_create(ctx, &u, &cfg) || (v == 'a' && ldm_class_embedder_create(ctx, &ce, 11, 24))) {
        lt_report(0, tag, "create: %s", ldm_ctx_error(ctx));
        ldm_unet_destroy(u); ldm_weights_close(fx); return;
    }
    ldm_nn_params *Ps[2] = {ldm_unet_params(u), ce ? ldm_class_embedder_params(ce) : NULL};
    const char *pre[2] = {"", "cond_stage_model."};
    int nP = ce ? 2 : 1;
    lt_check_names(fx, tag, "shape.", Ps, pre, nP);
    { /* CompVis's zero_module: out.2 starts at zero */
        ldm_tensor *w = ldm_nn_find(Ps[0], "out.2.weight");
        const float *h = w ? lt_h(ctx, w, 0) : NULL;
        int zero = h != NULL;
        for (int64_t k = 0; zero && k < w->numel; k++) zero = h[k] == 0.0f;
        snprintf(path, sizeof path, "%s out.2 zero-initialised", tag);
        LT_CHECK(zero, path);
    }
    for (int k = 0; k < nP; k++) lt_hash_params(ctx, Ps[k], NULL, 0.0f);
    if (v == 'a') { /* for tests/ref/denoiser_crosscheck.py: CompVis's UNetModel loads it with strict=True */
        ldm_result r = ldm_unet_save(ctx, u, "denoiser_unet_a_saved.safetensors", LDM_F32, NULL);
        lt_report(r == LDM_OK, "unet_a saved as build/denoiser_unet_a_saved.safetensors", "%s", ldm_ctx_error(ctx));
    }
    ldm_step_reset(ctx);
    ldm_tensor *x = lt_tensor(ctx, fx, "x"), *t = lt_tensor(ctx, fx, "t"), *context = NULL, *y = NULL;
    if (ldm_weights_find(fx, "y") >= 0) y = lt_tensor(ctx, fx, "y");
    if (ldm_weights_find(fx, "context") >= 0) context = lt_tensor(ctx, fx, "context");
    x->requires_grad = 1;
    double t0 = now_s();
    if (ce) context = ldm_class_embedder_forward(ctx, ce, lt_tensor(ctx, fx, "class"));
    ldm_tensor *out = ldm_unet_forward(ctx, u, x, t, context, y);
    double t1 = now_s();
    int ok = out && lt_backward_hash(ctx, out);
    double t2 = now_s();
    check_out(ctx, fx, tag, out, ok ? x : NULL);
    if (ok) {
        lt_check_grads(ctx, fx, tag, "gproj.", Ps, pre, nP, NULL);
        printf("     %s: %lld parameters, batch %lld at %lldx%lld%s: forward %.1f ms, backward %.1f ms\n", tag,
               (long long)(ldm_nn_numel(Ps[0], NULL, 0) + (ce ? ldm_nn_numel(Ps[1], NULL, 0) : 0)), (long long)x->shape[0],
               (long long)x->shape[x->ndim - 2], (long long)x->shape[x->ndim - 1], x->ndim == 5 ? " x 3 frames" : "", 1e3 * (t1 - t0), 1e3 * (t2 - t1));
    } else lt_report(0, tag, "backward: %s", ldm_ctx_error(ctx));
    if (v == 'c') { /* the denoiser call: the last 2 channels given as cond.concat */
        int prev = ldm_set_grad_enabled(ctx, 0);
        ldm_tensor *xs[2];
        int64_t sizes[2] = {4, 2};
        ldm_denoiser d = ldm_unet_denoiser(u);
        ldm_cond c;
        memset(&c, 0, sizeof c);
        ldm_tensor *o2 = NULL;
        if (ldm_split(ctx, x, 2, sizes, 1, xs) == LDM_OK) { c.concat = xs[1]; o2 = d.forward(ctx, d.self, xs[0], t, &c); }
        check_out(ctx, fx, "unet_c denoiser(x, cond.concat)", o2, NULL);
        ldm_set_grad_enabled(ctx, prev);
    }
    if (v == 'b') { /* a class-conditional model refuses a missing y; a bad label is an error */
        ldm_tensor *o = ldm_unet_forward(ctx, u, x, t, NULL, NULL);
        LT_CHECK(!o && strstr(ldm_ctx_error(ctx), "class-conditional"), "unet_b without y is an error");
        ldm_ctx_clear_error(ctx);
        float bad[2] = {3.0f, 10.0f};
        o = ldm_unet_forward(ctx, u, x, t, NULL, ldm_from_host(ctx, ldm_shape1(2), bad));
        LT_CHECK(!o && strstr(ldm_ctx_error(ctx), "y[1] = 10"), "unet_b label out of range is an error");
        ldm_ctx_clear_error(ctx);
    }
    ldm_step_reset(ctx);
    ldm_class_embedder_destroy(ce);
    ldm_unet_destroy(u);
    ldm_weights_close(fx);
}

static void test_dit(ldm_ctx *ctx) {
    ldm_weights *fx;
    if (ldm_weights_open(ctx, &fx, FIX "denoiser_dit.safetensors")) { lt_report(0, "dit", "%s", ldm_ctx_error(ctx)); return; }
    ldm_dit_config cfg = dit_tiny();
    ldm_dit *m;
    if (ldm_dit_create(ctx, &m, &cfg)) { lt_report(0, "dit", "create: %s", ldm_ctx_error(ctx)); ldm_weights_close(fx); return; }
    ldm_nn_params *P = ldm_dit_params(m);
    const char *pre = "";
    lt_check_names(fx, "dit", "shape.", &P, &pre, 1);
    { /* adaLN-Zero: every modulation and the final linear start at zero; pos_embed frozen */
        int zero = 1;
        for (int i = 0; i < ldm_nn_count(P); i++) {
            const ldm_nn_entry *e = ldm_nn_entry_at(P, i);
            if (!strstr(e->name, "adaLN_modulation") && !strstr(e->name, "final_layer.linear")) continue;
            const float *h = lt_h(ctx, e->t, 0);
            for (int64_t k = 0; h && k < e->t->numel; k++) zero = zero && h[k] == 0.0f;
        }
        LT_CHECK(zero, "dit adaLN-Zero init");
        ldm_tensor *pe = ldm_nn_find(P, "pos_embed");
        LT_CHECK(pe && !pe->requires_grad && ldm_nn_numel(P, "pos_embed", 1) == 0 && ldm_nn_numel(P, "pos_embed", 0) == 16 * 64,
                 "dit pos_embed is a frozen parameter in the state dict");
    }
    lt_hash_params(ctx, P, NULL, 0.0f);
    ldm_step_reset(ctx);
    ldm_tensor *x = lt_tensor(ctx, fx, "x"), *t = lt_tensor(ctx, fx, "t"), *y = lt_tensor(ctx, fx, "y");
    x->requires_grad = 1;
    double t0 = now_s();
    ldm_denoiser d = ldm_dit_denoiser(m);
    ldm_cond c;
    memset(&c, 0, sizeof c);
    c.y = y;  /* y[1] is the null class (num_classes) */
    ldm_tensor *out = d.forward(ctx, d.self, x, t, &c);
    double t1 = now_s();
    int ok = out && lt_backward_hash(ctx, out);
    double t2 = now_s();
    check_out(ctx, fx, "dit", out, ok ? x : NULL);
    if (ok) {
        lt_check_grads(ctx, fx, "dit", "gproj.", &P, &pre, 1, NULL);
        printf("     dit: %lld parameters, batch 2 at 8x8 (16 tokens): forward %.1f ms, backward %.1f ms\n",
               (long long)ldm_nn_numel(P, NULL, 0), 1e3 * (t1 - t0), 1e3 * (t2 - t1));
    } else lt_report(0, "dit", "backward: %s", ldm_ctx_error(ctx));
    { /* label drop in training: with probability 1 every label becomes the null class */
        int prev = ldm_set_grad_enabled(ctx, 0);
        float nul[2] = {10.0f, 10.0f};
        ldm_tensor *want = ldm_dit_forward(ctx, m, x, t, ldm_from_host(ctx, ldm_shape1(2), nul));
        ldm_dit *m1 = NULL;
        ldm_dit_config c1 = cfg;
        c1.class_dropout_prob = 1.0f;
        ldm_tensor *got = NULL;
        if (ldm_dit_create(ctx, &m1, &c1) == LDM_OK) {
            lt_hash_params(ctx, ldm_dit_params(m1), NULL, 0.0f);
            ldm_dit_set_training(m1, 1);
            got = ldm_dit_forward(ctx, m1, x, t, y);
        }
        if (got && want) lt_close("dit training drops labels to the null class (p = 1)", lt_h(ctx, got, 0), lt_h(ctx, want, 0), (long)got->numel, 0, 0);
        else lt_report(0, "dit label drop", "%s", ldm_ctx_error(ctx));
        ldm_dit_destroy(m1);
        ldm_set_grad_enabled(ctx, prev);
    }
    ldm_step_reset(ctx);
    ldm_dit_destroy(m);
    ldm_weights_close(fx);
}

/* A torch.save checkpoint (float16, Lightning layout) under model.diffusion_model.; save and
   load back; a strict load of the wrong model lists the offending names. */
static void test_load_save(ldm_ctx *ctx) {
    ldm_unet_config cfg = cfg_case('e');
    ldm_unet *u = NULL, *u2 = NULL, *ua = NULL;
    ldm_unet_config ca = cfg_case('a');
    if (ldm_unet_create(ctx, &u, &cfg) || ldm_unet_create(ctx, &u2, &cfg)) {
        lt_report(0, "unet_e create", "%s", ldm_ctx_error(ctx));
        ldm_unet_destroy(u);
        ldm_ctx_clear_error(ctx);
        return;
    }
    ldm_nn_load_report rep;
    memset(&rep, 0, sizeof rep);
    ldm_result r = ldm_unet_load(ctx, u, FIX "denoiser_unet_e.ckpt", "model.diffusion_model.", 1, &rep);
    lt_report(r == LDM_OK && rep.n_missing == 0 && rep.n_unexpected == 0, "unet_e: torch.save .ckpt loads strictly under model.diffusion_model.",
              "%s", ldm_ctx_error(ctx));
    printf("     (%d tensors loaded, %d other keys skipped)\n", rep.n_loaded, rep.n_skipped);
    ldm_nn_load_report_free(&rep);
    ldm_nn_params *P = ldm_unet_params(u);
    int bad = 0;
    for (int i = 0; i < ldm_nn_count(P); i++) { /* the file holds the hash weights rounded to float16 */
        const ldm_nn_entry *e = ldm_nn_entry_at(P, i);
        float *h = (float *)malloc(sizeof(float) * (size_t)e->t->numel);
        lt_hash_init(e->name, h, e->t->ndim, e->t->shape);
        const float *got = lt_h(ctx, e->t, 0);
        for (int64_t k = 0; k < e->t->numel; k++)
            /* torch divides by sqrt(fan_in) where lt_hash_init multiplies by its inverse: one
               float32 ulp apart, which can flip a float16 rounding; so within half a float16 ulp */
            if (!(fabsf(got[k] - h[k]) <= fabsf(h[k]) * (1.0001f / 2048.0f) + 3e-8f)) {
                bad++; printf("  %s[%lld]: %.9g want %.9g\n", e->name, (long long)k, got[k], h[k]); break;
            }
        free(h);
    }
    lt_report(bad == 0, "unet_e: loaded values equal PyTorch's (float16)", "%d tensors differ", bad);
    r = ldm_unet_save(ctx, u, "denoiser_unet_e_saved.safetensors", LDM_F32, "model.diffusion_model.");
    if (!r) r = ldm_unet_load(ctx, u2, "denoiser_unet_e_saved.safetensors", "model.diffusion_model.", 1, NULL);
    int64_t n1, n2;
    float *b1 = ldm_nn_block(P, LDM_NN_BLOCK_PARAMS, &n1), *b2 = ldm_nn_block(ldm_unet_params(u2), LDM_NN_BLOCK_PARAMS, &n2);
    int same = r == LDM_OK && n1 == n2;
    if (same && ldm_ctx_device(ctx) == LDM_CPU) same = memcmp(b1, b2, sizeof(float) * (size_t)n1) == 0;
    lt_report(same, "unet_e: save (prefixed) and strict load round trip", "%s", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    if (ldm_unet_create(ctx, &ua, &ca) == LDM_OK) {
        memset(&rep, 0, sizeof rep);
        r = ldm_unet_load(ctx, ua, FIX "denoiser_unet_e.ckpt", "model.diffusion_model.", 1, &rep);
        int named = 0;
        for (int i = 0; i < rep.n_unexpected; i++) named += strcmp(rep.unexpected[i].name, "label_emb.weight") == 0;
        for (int i = 0; i < rep.n_missing; i++) named += strcmp(rep.missing[i].name, "input_blocks.3.1.norm.weight") == 0;
        lt_report(r != LDM_OK && named == 2 && strstr(ldm_ctx_error(ctx), "missing"), "strict load of another model's checkpoint fails naming the keys",
                  "r %d, %d missing, %d unexpected", (int)r, rep.n_missing, rep.n_unexpected);
        ldm_nn_load_report_free(&rep);
        ldm_ctx_clear_error(ctx);
    }
    ldm_unet_destroy(u); ldm_unet_destroy(u2); ldm_unet_destroy(ua);
    ldm_ctx_clear_error(ctx);
}

/* The published configs read unchanged; parameter counts from shapes (no allocation) equal
   PyTorch's (tests/ref/denoiser_ref.py --counts); the ClassEmbedder from cond_stage_config. */
static void test_configs(ldm_ctx *ctx) {
    static const struct { const char *file; int64_t params; int n_classes; } cases[3] = {
        {"cin256-v2.yaml", 400920579, 1001}, {"ldm_cin256.yaml", 394984196, 1000}, {"ldm_bsr_sr.yaml", 113622563, 0}};
    for (int i = 0; i < 3; i++) {
        char name[160], path[160];
        ldm_config *cf = NULL;
        ldm_unet_config uc;
        int64_t n = -1;
        snprintf(path, sizeof path, CFGS "%s", cases[i].file);
        ldm_result r = ldm_config_create(&cf);
        if (!r) r = ldm_config_load(cf, path);
        if (!r) r = ldm_unet_config_read(cf, NULL, &uc);
        if (r) { snprintf(name, sizeof name, "%s unet_config", cases[i].file); lt_report(0, name, "%s", ldm_config_error(cf)); ldm_config_destroy(cf); continue; }
        if (!r) { /* the same from the unet_config node itself */
            ldm_unet_config u2;
            r = ldm_unet_config_read(cf, ldm_config_find(ldm_config_root(cf), "model.params.unet_config"), &u2);
            if (!r && memcmp(&u2, &uc, sizeof uc) != 0) r = LDM_ERR_INVALID;
        }
        if (!r) r = ldm_unet_count_params(ctx, &uc, &n);
        snprintf(name, sizeof name, "%s: unet_config reads and the UNet has PyTorch's %lld parameters", cases[i].file, (long long)cases[i].params);
        lt_report(r == LDM_OK && n == cases[i].params, name, "got %lld (%s)", (long long)n, ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
        if (cases[i].n_classes) { /* ClassEmbedder params: n_classes (default 1000), embed_dim */
            const ldm_config_node *cs = ldm_config_find(ldm_config_root(cf), "model.params.cond_stage_config.params");
            int nc = 0, ed = 0;
            ldm_class_embedder *ce = NULL;
            r = ldm_config_get_int(cf, cs, "n_classes", 1000, &nc);
            if (!r) r = ldm_config_get_int(cf, cs, "embed_dim", -1, &ed);
            if (!r) r = ldm_class_embedder_create(ctx, &ce, nc, ed);
            snprintf(name, sizeof name, "%s: ClassEmbedder %d x %d, context [B, 1, %d] = the UNet's context_dim", cases[i].file, cases[i].n_classes, uc.context_dim, uc.context_dim);
            ldm_tensor *ctxt = NULL;
            if (!r) { float yv[2] = {0.0f, (float)(nc - 1)}; ctxt = ldm_class_embedder_forward(ctx, ce, ldm_from_host(ctx, ldm_shape1(2), yv)); }
            lt_report(!r && nc == cases[i].n_classes && ed == uc.context_dim && ctxt && ctxt->ndim == 3 && ctxt->shape[1] == 1 && ctxt->shape[2] == ed,
                      name, "%s", ldm_ctx_error(ctx));
            ldm_class_embedder_destroy(ce);
            ldm_step_reset(ctx);
        }
        ldm_config_destroy(cf);
    }
    { /* a typo in unet_config is reported with its line */
        ldm_config *cf = NULL;
        ldm_unet_config uc;
        ldm_config_create(&cf);
        ldm_result r = ldm_config_load_string(cf, "unet_config:\n  params:\n    image_size: 8\n    in_channels: 4\n    model_channels: 32\n"
                                              "    out_channels: 4\n    num_res_blocks: 1\n    attention_resolutions: []\n    num_head: 2\n", "typo.yaml", LDM_CONFIG_FORMAT_YAML);
        if (!r) r = ldm_unet_config_read(cf, NULL, &uc);
        LT_CHECK(r != LDM_OK && strstr(ldm_config_error(cf), "num_head") && strstr(ldm_config_error(cf), "typo.yaml:"), "unet_config: an unknown key is reported with file:line");
        ldm_config_destroy(cf);
    }
    { /* DiT presets, counted without allocating (PyTorch: 675129632 and 33148160) */
        ldm_dit_config dc;
        int64_t n1 = -1, n2 = -1;
        if (ldm_dit_config_preset(ctx, "DiT-XL/2", &dc) == LDM_OK) ldm_dit_count_params(ctx, &dc, &n1);
        if (ldm_dit_config_preset(ctx, "DiT-S/8", &dc) == LDM_OK) ldm_dit_count_params(ctx, &dc, &n2);
        lt_report(n1 == 675129632 && n2 == 33148160, "DiT-XL/2 and DiT-S/8 have PyTorch's parameter counts", "got %lld and %lld", (long long)n1, (long long)n2);
        LT_CHECK(ldm_dit_config_preset(ctx, "DiT-M/2", &dc) == LDM_ERR_NOT_FOUND, "unknown DiT preset is an error");
        ldm_ctx_clear_error(ctx);
    }
    { /* a head rule the UNet cannot satisfy is refused before anything is built */
        ldm_unet_config c = cfg_case('b');
        c.num_head_channels = 48;
        int64_t n;
        LT_CHECK(ldm_unet_count_params(ctx, &c, &n) == LDM_ERR_INVALID && strstr(ldm_ctx_error(ctx), "heads"), "unet: channels not divisible by num_head_channels is an error");
        ldm_ctx_clear_error(ctx);
    }
}

/* Every check; the config tables' (host only) on the CPU alone. */
static void run_all(ldm_ctx *ctx, int cpu) {
    test_unet_case(ctx, 'a');
    test_unet_case(ctx, 'b');
    test_unet_case(ctx, 'c');
    test_unet_case(ctx, 'd');
    test_unet_case(ctx, 'f');
    test_dit(ctx);
    test_load_save(ctx);
    if (cpu) test_configs(ctx);
}

int main(void) {
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.seed = 1;
    return lt_main(&s, "test_denoisers", run_all);
}
