/* test_vol3d.c - the 3-D (volume, [B,C,T,H,W]) parts against PyTorch (tests/ref/vol3d_ref.py,
   float64 references, hash weights made here too): Conv3d padding/stride variants with the
   gradients of input, weight and bias; the AttnBlock over T*H*W with every gradient; two tiny
   3-D AutoencoderKLs (attention, strided-conv and avg-pool resampling, non-cubic volumes):
   moments, sample, decode, KL, batch-chunked and tiled (T, H, W) inference, input gradient and every parameter
   gradient; the LPIPS-free volume loss (L1/L2 + learned logvar + KL + 3-D PatchGAN hinge with
   the adaptive weight): losses, logs, gradients and BatchNorm3d statistics; the UNet with
   dims 3 on a latent volume; PSNR of volumes; end to end: the 3-D first stage's latent, the UNet's eps loss
   (p_losses) and a DDIM sample decoded to a volume; the `dims` config key, save/load of 5-D weights, and the errors
   for 2-D/3-D mix-ups. Loads files, so it also runs under ASan/UBSan: LDM_TEST_SANITIZE */
#define LDM_IMPLEMENTATION
#include "../ldm_config.h"
#include "../ldm_diffusion.h"
#include "../ldm_lpips.h"
#include "ldm_test.h"

#define FIX "../tests/fixtures/"

/* a hash tensor: U(-1,1) * scale, on the context's device */
static ldm_tensor *hashed(ldm_ctx *ctx, const char *name, ldm_shape s, float scale) {
    int64_t n = 1;
    for (int i = 0; i < s.ndim; i++) n *= s.d[i];
    float *h = (float *)malloc(sizeof(float) * (size_t)n);
    if (!h) return NULL;
    lt_hash_uniform(name, h, (long)n);
    for (int64_t i = 0; i < n; i++) h[i] *= scale;
    ldm_tensor *t = ldm_from_host(ctx, s, h);
    free(h);
    return t;
}

/* The registry P's state-dict shapes and gradient projections under the fixture prefix pre
   (ldm_test.h; names without `strip`). */
static const char *no_prefix = "";
static void check_shapes(ldm_weights *fx, ldm_nn_params *P, const char *pre, const char *tag) {
    lt_check_names(fx, tag, pre, &P, &no_prefix, 1);
}
static void check_gproj(ldm_ctx *ctx, ldm_weights *fx, ldm_nn_params *P, const char *pre, const char *strip, const char *tag) {
    lt_check_grads(ctx, fx, tag, pre, &P, &no_prefix, 1, strip);
}

static ldm_tensor *weighted_sum(ldm_ctx *ctx, ldm_tensor *out, const char *rname) {
    ldm_tensor *R = out ? hashed(ctx, rname, ldm_shape_of(out), 1.0f) : NULL;
    return ldm_sum_all(ctx, ldm_mul(ctx, out, R));
}

/* ---- Conv3d -------------------------------------------------------------------------------- */
static void test_conv3d(ldm_ctx *ctx, ldm_weights *fx) {
    /* as vol3d_ref.py: x, w shapes, stride (t,h,w), pads in F.pad order (W lo/hi, H lo/hi, T lo/hi) */
    static const int64_t xs[4][5] = {{2, 3, 5, 6, 7}, {2, 3, 6, 5, 4}, {1, 4, 3, 4, 5}, {2, 2, 7, 6, 9}};
    static const int64_t ws[4][5] = {{4, 3, 3, 3, 3}, {3, 3, 3, 3, 3}, {5, 4, 1, 1, 1}, {3, 2, 4, 4, 4}};
    static const int st[4][3] = {{1, 1, 1}, {2, 2, 2}, {1, 1, 1}, {2, 1, 2}};
    static const int pd[4][6] = {{1, 1, 1, 1, 1, 1}, {0, 1, 0, 1, 0, 1}, {0, 0, 0, 0, 0, 0}, {1, 1, 1, 1, 1, 1}};
    static const char *what[4] = {"3x3x3 pad 1", "Downsample (pad 0,1 per axis, stride 2)", "1x1x1", "4x4x4 stride (2,1,2) pad 1"};
    for (int k = 0; k < 4; k++) {
        char nm[64], key[64], label[128];
        ldm_step_reset(ctx);
        snprintf(nm, sizeof nm, "conv%d.x", k);
        ldm_tensor *x = hashed(ctx, nm, ldm_shape_n(5, xs[k]), 1.0f);
        snprintf(nm, sizeof nm, "conv%d.w", k);
        ldm_tensor *w = hashed(ctx, nm, ldm_shape_n(5, ws[k]), (float)(1.0 / sqrt((double)(ws[k][1] * ws[k][2] * ws[k][3] * ws[k][4]))));
        snprintf(nm, sizeof nm, "conv%d.b", k);
        ldm_tensor *b = hashed(ctx, nm, ldm_shape1(ws[k][0]), 0.1f);
        if (!x || !w || !b) { lt_report(0, "conv3d inputs", "%s", ldm_ctx_error(ctx)); return; }
        x->requires_grad = w->requires_grad = b->requires_grad = 1;
        int p6[6] = {pd[k][4], pd[k][5], pd[k][2], pd[k][3], pd[k][0], pd[k][1]}; /* front, back, top, bottom, left, right */
        ldm_tensor *out = ldm_conv3d_ex(ctx, x, w, b, st[k], p6);
        snprintf(nm, sizeof nm, "conv%d.R", k);
        ldm_tensor *loss = weighted_sum(ctx, out, nm);
        if (!loss || ldm_backward(ctx, loss)) { lt_report(0, what[k], "%s", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); continue; }
        static const char *const parts[4] = {"out", "x_grad", "w_grad", "b_grad"};
        const ldm_tensor *ts[4] = {out, x, w, b};
        for (int i = 0; i < 4; i++) {
            snprintf(key, sizeof key, "conv%d.%s", k, parts[i]);
            snprintf(label, sizeof label, "conv3d %s: %s", what[k], parts[i]);
            lt_close_fx_t(ctx, fx, key, label, ts[i], i > 0, 1e-5, 1e-4);
        }
    }
    ldm_step_reset(ctx);
}

/* ---- AttnBlock over T*H*W ------------------------------------------------------------------- */
static void test_attn(ldm_ctx *ctx, ldm_weights *fx) {
    ldm_nn_params *P;
    ldm__vae_attn a;
    if (ldm_nn_params_create(ctx, &P, ldm_ctx_device(ctx))) { lt_report(0, "attn3d: registry", "%s", ldm_ctx_error(ctx)); return; }
    ldm__vae_reg_attn(P, &a, 3, 32);
    if (ldm_nn_params_alloc(ctx, P)) { lt_report(0, "attn3d: alloc", "%s", ldm_ctx_error(ctx)); ldm_nn_params_destroy(P); return; }
    lt_hash_params(ctx, P, NULL, 0.0f);
    LT_CHECK(a.q.weight->ndim == 5 && a.q.weight->shape[2] == 1 && a.q.weight->shape[4] == 1, "attn3d: q is a 1x1x1 Conv3d [32, 32, 1, 1, 1]");
    ldm_step_reset(ctx);
    ldm_tensor *x = hashed(ctx, "attn.x", ldm_shape5(2, 32, 3, 4, 5), 1.0f);
    x->requires_grad = 1;
    ldm_tensor *out = ldm__vae_attn_fwd(ctx, &a, x);
    ldm_tensor *loss = weighted_sum(ctx, out, "attn.R");
    if (!loss || ldm_backward(ctx, loss)) { lt_report(0, "attn3d forward/backward", "%s", ldm_ctx_error(ctx)); ldm_nn_params_destroy(P); return; }
    lt_close_fx_t(ctx, fx, "attn.out", "attn3d (AttnBlock over T*H*W = 60 positions): out", out, 0, 1e-5, 1e-4);
    lt_close_fx_t(ctx, fx, "attn.x_grad", "attn3d: x grad", x, 1, 1e-5, 1e-4);
    /* every parameter gradient; k.bias's true gradient is 0 (softmax is shift-invariant), so the
       absolute floor is 1e-5 of the largest gradient element of the whole block */
    double gmax = 0;
    for (int i = 0; i < ldm_nn_count(P); i++) {
        char key[128];
        long n = 0;
        snprintf(key, sizeof key, "attn.grad.%s", ldm_nn_entry_at(P, i)->name);
        float *g = lt_load(ctx, fx, key, &n);
        for (long j = 0; g && j < n; j++) gmax = fmax(gmax, fabs(g[j]));
        free(g);
    }
    for (int i = 0; i < ldm_nn_count(P); i++) {
        const ldm_nn_entry *e = ldm_nn_entry_at(P, i);
        char key[128], label[160];
        long n = 0;
        snprintf(key, sizeof key, "attn.grad.%s", e->name);
        snprintf(label, sizeof label, "attn3d: %s grad", e->name);
        float *want = lt_load(ctx, fx, key, &n);
        const float *got = lt_h(ctx, e->t, 1);
        if (want && got && n == e->t->numel) lt_close(label, got, want, n, 1e-5 * gmax, 1e-4);
        else lt_report(0, label, "missing");
        free(want);
    }
    ldm_step_reset(ctx);
    ldm_nn_params_destroy(P);
}

/* ---- AutoencoderKL, dims 3 ------------------------------------------------------------------- */
static ldm_vae_config vae_case(int k) {
    ldm_vae_config c = ldm_vae_config_kl_f4();
    c.dims = 3; c.ch = 32; c.num_res_blocks = 1;
    if (k == 0) {
        c.in_channels = c.out_ch = 1; c.z_channels = 4; c.embed_dim = 3; c.resolution = 8;
        c.ch_mult[0] = 1; c.ch_mult[1] = 2; c.n_levels = 2; c.attn_resolutions[0] = 4; c.n_attn = 1;
    } else {
        c.in_channels = c.out_ch = 2; c.z_channels = 2; c.embed_dim = 2; c.resolution = 16;
        c.ch_mult[0] = 1; c.ch_mult[1] = 1; c.ch_mult[2] = 2; c.n_levels = 3; c.n_attn = 0; c.resamp_with_conv = 0;
    }
    return c;
}
static const int64_t vae_x[2][5] = {{2, 1, 4, 8, 6}, {1, 2, 8, 4, 8}};

static ldm_vae *make_vae(ldm_ctx *ctx, int k) {
    ldm_vae_config c = vae_case(k);
    ldm_vae *v = NULL;
    if (ldm_vae_create(ctx, &v, &c)) { lt_report(0, "vae3d: create", "%s", ldm_ctx_error(ctx)); return NULL; }
    lt_hash_params(ctx, v->P, NULL, 0.0f);
    return v;
}

static void test_vae(ldm_ctx *ctx, ldm_weights *fx, int k) {
    char tag[64], key[96], label[160];
    snprintf(tag, sizeof tag, "vae3d case %d (%s)", k, k ? "avg-pool/nearest resampling, 3 levels" : "attention, strided convs");
    ldm_vae *v = make_vae(ctx, k);
    if (!v) return;
    snprintf(key, sizeof key, "vae%d.shape.", k);
    check_shapes(fx, v->P, key, tag);
    ldm_step_reset(ctx);
    ldm_nn_zero_grad(ctx, v->P);
    snprintf(key, sizeof key, "vae%d.x", k);
    ldm_tensor *x = hashed(ctx, key, ldm_shape_n(5, vae_x[k]), 1.0f);
    x->requires_grad = 1;
    ldm_vae_posterior q;
    ldm_vae_encode(ctx, v, x, &q);
    snprintf(key, sizeof key, "vae%d.eps", k);
    ldm_tensor *eps = q.mean ? hashed(ctx, key, ldm_shape_of(q.mean), 1.0f) : NULL;
    ldm_tensor *z = ldm_vae_posterior_sample(ctx, &q, eps);
    ldm_tensor *dec = ldm_vae_decode(ctx, v, z);
    ldm_tensor *klv = ldm_vae_posterior_kl(ctx, &q);
    snprintf(key, sizeof key, "vae%d.R", k);
    ldm_tensor *loss = ldm_add(ctx, weighted_sum(ctx, dec, key), ldm_scale(ctx, ldm_sum_all(ctx, klv), 0.01f));
    if (!loss) { lt_report(0, tag, "forward: %s", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); ldm_vae_destroy(v); return; }
    static const char *const parts[6] = {"mean", "logvar", "z", "dec", "kl", "loss"};
    const ldm_tensor *ts[6] = {q.mean, q.logvar, z, dec, klv, loss};
    for (int i = 0; i < 6; i++) {
        snprintf(key, sizeof key, "vae%d.%s", k, parts[i]);
        snprintf(label, sizeof label, "%s: %s", tag, parts[i]);
        lt_close_fx_t(ctx, fx, key, label, ts[i], 0, 1e-5, 1e-4);
    }
    if (ldm_backward(ctx, loss)) { lt_report(0, tag, "backward: %s", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); ldm_vae_destroy(v); return; }
    snprintf(key, sizeof key, "vae%d.x_grad", k);
    snprintf(label, sizeof label, "%s: x grad", tag);
    lt_close_fx_t(ctx, fx, key, label, x, 1, 1e-4, 1e-3);
    snprintf(key, sizeof key, "vae%d.gproj.", k);
    check_gproj(ctx, fx, v->P, key, NULL, tag);

    /* inference: one sample per pass (batch chunks gathered on the host) */
    ldm_vae_infer inf;
    memset(&inf, 0, sizeof inf);
    inf.batch = 1;
    ldm_vae_posterior qi;
    ldm_tensor *dm = ldm_vae_encode_infer(ctx, v, x, &inf, &qi) ? NULL : ldm_vae_decode_infer(ctx, v, qi.mean, &inf);
    snprintf(key, sizeof key, "vae%d.mean", k);
    snprintf(label, sizeof label, "%s: encode_infer (batch 1) mean", tag);
    lt_close_fx_t(ctx, fx, key, label, qi.mean, 0, 1e-5, 1e-4);
    snprintf(key, sizeof key, "vae%d.dec_mode", k);
    snprintf(label, sizeof label, "%s: decode_infer(mode) (batch 1)", tag);
    lt_close_fx_t(ctx, fx, key, label, dm, 0, 1e-5, 1e-4);
    ldm_ctx_clear_error(ctx);
    ldm_step_reset(ctx);
    ldm_vae_destroy(v);
}

/* save -> load strict into a fresh model: 5-D conv weights under CompVis names, same output */
static void test_vae_io_and_errors(ldm_ctx *ctx) {
    ldm_vae *v = make_vae(ctx, 0), *w = NULL;
    if (!v) return;
    const char *path = "vol3d_vae_saved.safetensors";
    ldm_vae_config c = vae_case(0);
    ldm_result r = ldm_vae_save(ctx, v, path, LDM_F32);
    if (!r) r = ldm_vae_create(ctx, &w, &c);
    if (!r) r = ldm_vae_load(ctx, w, path, 1);
    int same = !r;
    for (int i = 0; same && i < ldm_nn_count(v->P); i++) {
        const ldm_tensor *a = ldm_nn_entry_at(v->P, i)->t, *b = ldm_nn_entry_at(w->P, i)->t;
        const float *ha = lt_h(ctx, a, 0), *hb = lt_h(ctx, b, 0);
        same = ha && hb && a->numel == b->numel && !memcmp(ha, hb, sizeof(float) * (size_t)a->numel);
    }
    ldm_weights *f = NULL;
    int five = 0;
    if (!r && !ldm_weights_open(ctx, &f, path)) {
        int i = ldm_weights_find(f, "encoder.down.0.downsample.conv.weight");
        five = i >= 0 && ldm_weights_info(f, i)->ndim == 5 && ldm_weights_info(f, i)->shape[4] == 3;
        ldm_weights_close(f);
    }
    lt_report(!r && same && five, "vae3d: save/load strict round trip (5-D weights, CompVis names)", "%s", ldm_ctx_error(ctx));
    remove(path);
    ldm_ctx_clear_error(ctx);
    ldm_vae_destroy(w);

    /* a 2-D model's file into the 3-D model: a shape error naming the tensor */
    ldm_vae_config c2 = c;
    c2.dims = 2;
    ldm_vae *v2 = NULL;
    r = ldm_vae_create(ctx, &v2, &c2);
    if (!r) r = ldm_vae_save(ctx, v2, path, LDM_F32);
    r = r ? r : ldm_vae_load(ctx, v, path, 1);
    lt_report(r != LDM_OK && strstr(ldm_ctx_error(ctx), "conv_in.weight") != NULL, "vae3d: a 2-D checkpoint is refused with the tensor named",
              "r %d: %s", (int)r, ldm_ctx_error(ctx));
    printf("     (%.160s...)\n", ldm_ctx_error(ctx));
    remove(path);
    ldm_ctx_clear_error(ctx);
    ldm_vae_destroy(v2);

    /* wrong ranks, tiling, VQ */
    ldm_step_reset(ctx);
    ldm_tensor *img = ldm_zeros(ctx, ldm_shape4(1, 1, 8, 8));
    ldm_vae_posterior q;
    r = ldm_vae_encode(ctx, v, img, &q);
    lt_report(r != LDM_OK && strstr(ldm_ctx_error(ctx), "[B, 1, T, H, W]") != NULL, "vae3d: a 4-D image into a dims 3 model is an error",
              "%s", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    ldm_vae_config cv = c;
    cv.double_z = 0; cv.n_embed = 16;
    r = ldm_vae_config_check(ctx, &cv);
    lt_report(r != LDM_OK && strstr(ldm_ctx_error(ctx), "dims = 3") != NULL, "vae3d: VQ with dims 3 is refused", "%s", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    cv = c; cv.dims = 4;
    r = ldm_vae_config_check(ctx, &cv);
    lt_report(r != LDM_OK && strstr(ldm_ctx_error(ctx), "dims = 4") != NULL, "vae3d: dims 4 is refused", "%s", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    ldm_step_reset(ctx);
    ldm_vae_destroy(v);

    /* the ddconfig key */
    ldm_config *cf = NULL;
    ldm_vae_config rc;
    memset(&rc, 0, sizeof rc);
    const char *ini = "[model.params]\nembed_dim = 3\n[model.params.ddconfig]\ndims = 3\nin_channels = 1\nout_ch = 1\nch = 32\n"
                      "ch_mult = 1,2\nnum_res_blocks = 1\n";
    r = ldm_config_create(&cf);
    if (!r) r = ldm_config_load_string(cf, ini, "vol.ini", LDM_CONFIG_FORMAT_INI);
    if (!r) r = ldm_vae_config_read(cf, NULL, &rc);
    lt_report(!r && rc.dims == 3 && rc.in_channels == 1 && rc.n_levels == 2, "vae3d: ddconfig dims = 3 is read", "%s",
              cf ? ldm_config_error(cf) : "no config");
    ldm_config_destroy(cf);
    cf = NULL;
    r = ldm_config_create(&cf);
    if (!r) r = ldm_config_load_string(cf, "[model.params]\nembed_dim = 3\n[model.params.ddconfig]\ndims = 1\n", "bad.ini", LDM_CONFIG_FORMAT_INI);
    if (!r) r = ldm_vae_config_read(cf, NULL, &rc);
    lt_report(r != LDM_OK && strstr(ldm_config_error(cf), "dims") != NULL, "vae3d: ddconfig dims = 1 is refused, the key named", "%s",
              ldm_config_error(cf));
    ldm_config_destroy(cf);
    ldm_vae_config d2 = ldm_vae_config_kl_f8();
    LT_CHECK(d2.dims == 2, "vae: the preset configs are 2-D");
}

/* ---- the volume loss ------------------------------------------------------------------------- */
static void test_loss(ldm_ctx *ctx, ldm_weights *fx, int k) {
    static const char *const pixel[2] = {"l1", "l2"};
    static const double klw[2] = {0.01, 1e-3}, dw[2] = {0.5, 0.8}, df[2] = {1.0, 0.7}, lvi[2] = {0.25, -0.5};
    static const int64_t step[2] = {5, 6};
    static const int nl[2] = {1, 2};
    char tag[96], key[128], label[200];
    snprintf(tag, sizeof tag, "volume loss %d (%s, PatchGAN3d n_layers %d)", k, pixel[k], nl[k]);
    ldm_vae *v = make_vae(ctx, 0);
    if (!v) return;
    ldm_lpips_loss_config lc = ldm_lpips_loss_defaults();
    lc.disc_start = 5; lc.kl_weight = klw[k]; lc.disc_weight = dw[k]; lc.disc_factor = df[k]; lc.logvar_init = lvi[k];
    lc.perceptual_weight = 0.0; lc.pixel_loss = pixel[k]; lc.disc_dims = 3; lc.disc_ndf = 8; lc.disc_num_layers = nl[k];
    lc.disc_in_channels = 1;
    ldm_lpips_loss *L = NULL;
    if (ldm_lpips_loss_create(ctx, &L, &lc)) { lt_report(0, tag, "create: %s", ldm_ctx_error(ctx)); ldm_vae_destroy(v); return; }
    LT_CHECK(L->lpips == NULL && L->disc.dims == 3 && L->disc.conv3[0].weight->ndim == 5, "volume loss: no LPIPS built, a Conv3d PatchGAN");
    lt_hash_params(ctx, L->P, "discriminator.", (float)lvi[k]);
    const char *note = NULL;
    LT_CHECK(!ldm_lpips_loss_ready(ctx, L, &note) && note && strstr(note, k ? "L2" : "L1"), "volume loss: ready without VGG weights, notice names the pixel loss");
    ldm_step_reset(ctx);
    ldm_nn_zero_grad(ctx, v->P);
    ldm_nn_zero_grad(ctx, L->P);
    snprintf(key, sizeof key, "loss%d.x", k);
    ldm_tensor *x = hashed(ctx, key, ldm_shape5(2, 1, 12, 16, 12), 1.0f);
    ldm_vae_posterior q;
    ldm_vae_encode(ctx, v, x, &q);
    snprintf(key, sizeof key, "loss%d.eps", k);
    ldm_tensor *xrec = q.mean ? ldm_vae_decode(ctx, v, ldm_vae_posterior_sample(ctx, &q, hashed(ctx, key, ldm_shape_of(q.mean), 1.0f))) : NULL;
    ldm_loss_log log, dlog;
    ldm_tensor *lg = xrec ? ldm_lpips_loss_generator(ctx, L, x, xrec, ldm_vae_posterior_kl(ctx, &q), step[k], ldm_vae_last_layer(v), "train", &log) : NULL;
    if (lg) ldm_backward(ctx, lg);
    ldm_tensor *ld = lg ? ldm_lpips_loss_discriminator(ctx, L, x, xrec, step[k], "train", &dlog) : NULL;
    if (ld) ldm_backward(ctx, ld);
    if (!lg || !ld || ldm_ctx_status(ctx)) {
        lt_report(0, tag, "%s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx); ldm_step_reset(ctx); ldm_lpips_loss_destroy(L); ldm_vae_destroy(v);
        return;
    }
    static const char *const keys[11] = {"total_loss", "logvar", "kl_loss", "nll_loss", "rec_loss", "d_weight", "disc_factor", "g_loss",
                                         "disc_loss", "logits_real", "logits_fake"};
    int bad = 0;
    double worst = 0;
    for (int i = 0; i < 11; i++) {
        snprintf(key, sizeof key, "loss%d.log.%s", k, keys[i]);
        float *want = lt_load(ctx, fx, key, NULL);
        snprintf(key, sizeof key, "train/%s", keys[i]);
        const float *got = ldm_loss_log_get(i < 8 ? &log : &dlog, key);
        double err = want && got ? fabs(*got - want[0]) / fmax(fabs(want[0]), 1e-3) : 1e9;
        worst = fmax(worst, err);
        if (!(err <= 1e-4)) { bad++; printf("  %s: got %.9g want %.9g\n", key, got ? *got : NAN, want ? want[0] : NAN); }
        free(want);
    }
    snprintf(label, sizeof label, "%s: all 11 logged values within 1e-4 relative (worst %.2e)", tag, worst);
    lt_report(bad == 0 && log.n == 8 && dlog.n == 3, label, "%d off", bad);
    snprintf(key, sizeof key, "loss%d.loss_g", k);
    snprintf(label, sizeof label, "%s: generator loss", tag);
    lt_close_fx_t(ctx, fx, key, label, lg, 0, 0.0, 1e-4);
    snprintf(key, sizeof key, "loss%d.loss_d", k);
    snprintf(label, sizeof label, "%s: discriminator loss", tag);
    lt_close_fx_t(ctx, fx, key, label, ld, 0, 0.0, 1e-4);
    snprintf(key, sizeof key, "loss%d.gproj.", k);
    snprintf(label, sizeof label, "%s: generator step, autoencoder", tag);
    check_gproj(ctx, fx, v->P, key, NULL, label);
    snprintf(key, sizeof key, "loss%d.dgproj.", k);
    snprintf(label, sizeof label, "%s: discriminator step, PatchGAN3d", tag);
    check_gproj(ctx, fx, L->P, key, "discriminator.", label);
    for (int i = 0; i < ldm_nn_count(L->P); i++) { /* BatchNorm3d running statistics after the three train-mode calls */
        const ldm_nn_entry *e = ldm_nn_entry_at(L->P, i);
        if (e->kind != LDM_NN_BUFFER || strstr(e->name, "num_batches_tracked")) continue;
        snprintf(key, sizeof key, "loss%d.buf.%s", k, e->name + strlen("discriminator."));
        snprintf(label, sizeof label, "%s: %s", tag, e->name);
        lt_close_fx_t(ctx, fx, key, label, e->t, 0, 1e-5, 1e-4);
    }
    ldm_step_reset(ctx);
    ldm_lpips_loss_destroy(L);
    ldm_vae_destroy(v);
}

static void test_loss_errors(ldm_ctx *ctx) {
    ldm_lpips_loss_config lc = ldm_lpips_loss_defaults();
    ldm_lpips_loss *L = NULL;
    lc.disc_dims = 3; /* perceptual_weight stays 1 */
    ldm_result r = ldm_lpips_loss_create(ctx, &L, &lc);
    lt_report(r != LDM_OK && !L && strstr(ldm_ctx_error(ctx), "perceptual_weight: 0.0"), "volume loss: LPIPS with disc_dims 3 is refused with a hint",
              "%s", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    lc = ldm_lpips_loss_defaults();
    lc.pixel_loss = "huber";
    r = ldm_lpips_loss_create(ctx, &L, &lc);
    lt_report(r != LDM_OK && strstr(ldm_ctx_error(ctx), "huber"), "volume loss: an unknown pixel_loss is refused", "%s", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    lc = ldm_lpips_loss_defaults();
    lc.perceptual_weight = 0.0; lc.disc_ndf = 8; lc.disc_num_layers = 1; lc.disc_in_channels = 1; /* a 2-D loss fed volumes */
    if (ldm_lpips_loss_create(ctx, &L, &lc)) { lt_report(0, "volume loss: 2-D loss", "%s", ldm_ctx_error(ctx)); return; }
    ldm_step_reset(ctx);
    ldm_tensor *x = ldm_zeros(ctx, ldm_shape5(1, 1, 8, 8, 8));
    ldm_tensor *d = ldm_lpips_loss_discriminator(ctx, L, x, x, 0, "train", NULL);
    lt_report(!d && strstr(ldm_ctx_error(ctx), "disc_dims 3"), "volume loss: volumes into a 2-D loss are refused with a hint", "%s", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    ldm_step_reset(ctx);
    ldm_lpips_loss_destroy(L);
}

/* ---- UNet, dims 3, on a latent volume --------------------------------------------------------- */
static void test_unet(ldm_ctx *ctx, ldm_weights *fx) {
    ldm_unet_config c = ldm_unet_config_default();
    c.image_size = 8; c.in_channels = 3; c.model_channels = 32; c.out_channels = 3; c.num_res_blocks = 1;
    c.channel_mult[0] = 1; c.channel_mult[1] = 2; c.n_levels = 2; c.attention_resolutions[0] = 2; c.n_attn = 1; c.num_heads = 2; c.dims = 3;
    ldm_unet *u = NULL;
    if (ldm_unet_create(ctx, &u, &c)) { lt_report(0, "unet3d: create", "%s", ldm_ctx_error(ctx)); return; }
    lt_hash_params(ctx, ldm_unet_params(u), NULL, 0.0f);
    ldm_step_reset(ctx);
    ldm_tensor *x = hashed(ctx, "unet.x", ldm_shape5(1, 3, 8, 8, 8), 1.0f);
    float tv = 421.0f;
    ldm_tensor *t = ldm_from_host(ctx, ldm_shape1(1), &tv);
    x->requires_grad = 1;
    ldm_tensor *out = ldm_unet_forward(ctx, u, x, t, NULL, NULL);
    ldm_tensor *loss = weighted_sum(ctx, out, "unet.R");
    if (!loss || ldm_backward(ctx, loss)) { lt_report(0, "unet3d forward/backward", "%s", ldm_ctx_error(ctx)); ldm_unet_destroy(u); return; }
    lt_close_fx_t(ctx, fx, "unet.out", "unet3d [1, 3, 8, 8, 8] latent volume: out", out, 0, 1e-5, 1e-4);
    lt_close_fx_t(ctx, fx, "unet.x_grad", "unet3d: x grad", x, 1, 1e-4, 1e-3);
    check_gproj(ctx, fx, ldm_unet_params(u), "unet.gproj.", NULL, "unet3d");
    ldm_step_reset(ctx);
    ldm_unet_destroy(u);
}

/* ---- end to end: 3-D first stage -> 3-D UNet eps loss -> DDIM sample -> decoded volume -------- */
static void test_pipeline(ldm_ctx *ctx, ldm_weights *fx) {
    const char *tag = "volume LDM end to end";
    ldm_vae *v = make_vae(ctx, 0);
    if (!v) return;
    ldm_unet_config c = ldm_unet_config_default();
    c.image_size = 8; c.in_channels = 3; c.model_channels = 32; c.out_channels = 3; c.num_res_blocks = 1;
    c.channel_mult[0] = 1; c.channel_mult[1] = 2; c.n_levels = 2; c.attention_resolutions[0] = 2; c.n_attn = 1; c.num_heads = 2; c.dims = 3;
    ldm_unet *u = NULL;
    if (ldm_unet_create(ctx, &u, &c)) { lt_report(0, tag, "unet: %s", ldm_ctx_error(ctx)); ldm_vae_destroy(v); return; }
    lt_hash_params(ctx, ldm_unet_params(u), NULL, 0.0f);
    ldm_nn_set_trainable(v->P, "", 0); /* the frozen first stage */
    ldm_schedule_config sc;
    memset(&sc, 0, sizeof sc);
    sc.linear_start = 0.0015; sc.linear_end = 0.0195;
    ldm_schedule sch;
    ldm_ddim dd;
    memset(&dd, 0, sizeof dd);
    if (ldm_schedule_init(ctx, &sch, &sc) || ldm_ddim_init(ctx, &dd, &sch, 4, 0, 0.0)) {
        lt_report(0, tag, "schedule: %s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
        ldm_schedule_free(&sch); ldm_unet_destroy(u); ldm_vae_destroy(v);
        return;
    }
    ldm_step_reset(ctx);
    ldm_vae_infer inf;
    memset(&inf, 0, sizeof inf);
    ldm_vae_posterior q;
    ldm_tensor *z0 = ldm_vae_encode_infer(ctx, v, hashed(ctx, "ldm.x", ldm_shape5(1, 1, 16, 16, 16), 1.0f), &inf, &q) ? NULL
                   : ldm_scale(ctx, q.mean, 0.5f);
    lt_close_fx_t(ctx, fx, "ldm.z0", "volume LDM: first-stage latent (mode x 0.5) [1, 3, 8, 8, 8]", z0, 0, 1e-5, 1e-4);
    ldm_denoiser den = ldm_unet_denoiser(u);
    int t = 613;
    ldm_loss_log log;
    ldm_tensor *loss = z0 ? ldm_diffusion_p_losses(ctx, &sch, NULL, &den, z0, NULL, &t, NULL, hashed(ctx, "ldm.noise", ldm_shape_of(z0), 1.0f),
                                                   NULL, &log) : NULL;
    if (!loss || ldm_backward(ctx, loss)) {
        lt_report(0, tag, "p_losses: %s", ldm_ctx_error(ctx));
    } else {
        lt_close_fx_t(ctx, fx, "ldm.loss", "volume LDM: UNet eps loss (p_losses, t 613)", loss, 0, 0.0, 1e-4);
        check_gproj(ctx, fx, ldm_unet_params(u), "ldm.gproj.", NULL, "volume LDM: UNet");
        ldm_sample_opts so;
        memset(&so, 0, sizeof so);
        so.x_T = hashed(ctx, "ldm.xT", ldm_shape_of(z0), 1.0f);
        ldm_tensor *zs = ldm_ddim_sample(ctx, &dd, &sch, &den, ldm_shape_of(z0), &so);
        lt_close_fx_t(ctx, fx, "ldm.sample", "volume LDM: 4-step DDIM sample on the latent volume", zs, 0, 1e-5, 1e-4);
        ldm_tensor *vol = zs ? ldm_vae_decode_infer(ctx, v, ldm_scale(ctx, zs, 2.0f), &inf) : NULL;
        lt_close_fx_t(ctx, fx, "ldm.volume", "volume LDM: the sample decoded to a [1, 1, 16, 16, 16] volume", vol, 0, 1e-5, 1e-4);
    }
    ldm_ctx_clear_error(ctx);
    ldm_step_reset(ctx);
    ldm_ddim_free(&dd);
    ldm_schedule_free(&sch);
    ldm_unet_destroy(u);
    ldm_vae_destroy(v);
}

/* Max |a - b| over the box [lo, hi) of a [1, C, T, H, W] tensor a against b, whose box starts
   at b_lo (b may be a tile). */
static double box_diff(ldm_ctx *ctx, const ldm_tensor *a, const int64_t *lo, const int64_t *hi, const ldm_tensor *b, const int64_t *b_lo) {
    const float *ha = lt_h(ctx, a, 0), *hb = lt_h(ctx, b, 0);
    if (!ha || !hb) return 1e9;
    double worst = 0;
    for (int64_t c = 0; c < a->shape[1]; c++)
        for (int64_t z = lo[0]; z < hi[0]; z++)
            for (int64_t y = lo[1]; y < hi[1]; y++)
                for (int64_t x = lo[2]; x < hi[2]; x++) {
                    double va = ha[((c * a->shape[2] + z) * a->shape[3] + y) * a->shape[4] + x];
                    double vb = hb[((c * b->shape[2] + z - b_lo[0]) * b->shape[3] + y - b_lo[1]) * b->shape[4] + x - b_lo[2]];
                    worst = fmax(worst, fabs(va - vb));
                }
    return worst;
}

/* Tiled inference over T, H, W. Where one tile alone covers an output voxel its blend weight is
   1, so the tiled result there is that tile's own output, bit for bit: checked for the first
   and the last tile of a [1, 1, 24, 16, 32] volume (T and W tiled, H one tile). Elsewhere
   GroupNorm and attention see one tile, so tiled and untiled differ (printed, with a loose
   bound; test_vae.c's 2-D check has the same character). */
static void test_tiled(ldm_ctx *ctx) {
    ldm_vae *v = make_vae(ctx, 0);
    if (!v) return;
    ldm_step_reset(ctx);
    ldm_tensor *x = hashed(ctx, "tiled.x", ldm_shape5(1, 1, 24, 16, 32), 1.0f);
    ldm_vae_infer all, tiled;
    memset(&all, 0, sizeof all);
    memset(&tiled, 0, sizeof tiled);
    tiled.tile = 16; tiled.overlap = 8;   /* decoding: 8 latent voxels, overlap 4; tiles start at T 0, 4 and W 0, 4, 8 */
    ldm_vae_posterior qa, qt;
    ldm_tensor *da = NULL, *dt = NULL, *d0 = NULL, *d1 = NULL;
    int prev = ldm_set_grad_enabled(ctx, 0);
    if (!ldm_vae_encode_infer(ctx, v, x, &all, &qa) && !ldm_vae_encode_infer(ctx, v, x, &tiled, &qt)) {
        da = ldm_vae_decode_infer(ctx, v, qa.mean, &all);
        dt = ldm_vae_decode_infer(ctx, v, qa.mean, &tiled);
        ldm_tensor *z0 = ldm_slice(ctx, ldm_slice(ctx, qa.mean, 2, 0, 8), 4, 0, 8);   /* the first tile: T 0..7, W 0..7 */
        ldm_tensor *z1 = ldm_slice(ctx, ldm_slice(ctx, qa.mean, 2, 4, 8), 4, 8, 8);   /* the last: T 4..11, W 8..15 */
        d0 = ldm_vae_decode(ctx, v, z0);
        d1 = ldm_vae_decode(ctx, v, z1);
    }
    ldm_set_grad_enabled(ctx, prev);
    if (!da || !dt || !d0 || !d1 || !ldm_shape_eq(da, dt) || !ldm_shape_eq(qa.mean, qt.mean)) {
        lt_report(0, "vae3d: tiled inference", "%s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx); ldm_step_reset(ctx); ldm_vae_destroy(v);
        return;
    }
    /* output units: tiles 16 long, ramps 8 long at inner edges; first tile alone on T, W < 8, last on T >= 16, W >= 24 */
    int64_t lo0[3] = {0, 0, 0}, hi0[3] = {8, 16, 8}, lo1[3] = {16, 0, 24}, hi1[3] = {24, 16, 32}, at1[3] = {8, 0, 16};
    double e0 = box_diff(ctx, dt, lo0, hi0, d0, lo0), e1 = box_diff(ctx, dt, lo1, hi1, d1, at1);
    lt_report(e0 == 0.0 && e1 == 0.0, "vae3d: tiled decode equals the first and the last tile's own output where they alone cover",
              "max |d| %.3g (first tile), %.3g (last tile)", e0, e1);
    double mad = 0, sd = 0, madz = 0, sdz = 0;
    const float *a = lt_h(ctx, da, 0), *t = lt_h(ctx, dt, 0), *za = lt_h(ctx, qa.mean, 0), *zt = lt_h(ctx, qt.mean, 0);
    for (int64_t i = 0; i < da->numel; i++) { mad += fabs((double)a[i] - t[i]); sd += (double)a[i] * a[i]; }
    for (int64_t i = 0; i < qa.mean->numel; i++) { madz += fabs((double)za[i] - zt[i]); sdz += (double)za[i] * za[i]; }
    mad /= (double)da->numel; sd = sqrt(sd / (double)da->numel);
    madz /= (double)qa.mean->numel; sdz = sqrt(sdz / (double)qa.mean->numel);
    printf("     tiled (16-voxel cubes, overlap 8) vs untiled: decode mean |d| %.4g (output rms %.4g), encode %.4g (latent rms %.4g)\n",
           mad, sd, madz, sdz);
    lt_report(mad > 0 && mad < 0.7 * sd && madz > 0 && madz < 0.5 * sdz,
              "vae3d: tiled decode / encode within 70% / 50% of the rms of untiled (hash weights, small tiles)", "mad %.4g rms %.4g; %.4g, %.4g",
              mad, sd, madz, sdz);
    ldm_vae_posterior qb;
    ldm_result r = ldm_vae_encode_infer(ctx, v, hashed(ctx, "tiled.x", ldm_shape5(1, 1, 5, 16, 12), 1.0f), &tiled, &qb);
    lt_report(r != LDM_OK && strstr(ldm_ctx_error(ctx), "T, H and W divisible by 2"), "vae3d: tiled encoding of an odd T is refused",
              "%s", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    ldm_step_reset(ctx);
    ldm_vae_destroy(v);
}

/* PSNR of volumes (over C,T,H,W); SSIM stays 2-D and says so */
static void test_metrics(ldm_ctx *ctx, ldm_weights *fx) {
    ldm_step_reset(ctx);
    ldm_tensor *a = hashed(ctx, "psnr.a", ldm_shape5(2, 1, 6, 7, 8), 1.0f);
    ldm_tensor *d = hashed(ctx, "psnr.b", ldm_shape5(2, 1, 6, 7, 8), 0.1f);
    ldm_tensor *b = ldm_add(ctx, a, d);
    double out[2] = {0, 0};
    float got[2];
    long n = 0;
    float *want = lt_load(ctx, fx, "psnr", &n);
    if (!ldm_metric_psnr(ctx, a, b, 2.0, out) && want && n == 2) {
        got[0] = (float)out[0]; got[1] = (float)out[1];
        lt_close("PSNR of [2, 1, 6, 7, 8] volumes (over C,T,H,W)", got, want, 2, 0.0, 1e-5);
    } else {
        lt_report(0, "PSNR of volumes", "%s", ldm_ctx_error(ctx));
    }
    free(want);
    ldm_ctx_clear_error(ctx);
    ldm_result r = ldm_metric_ssim(ctx, a, b, 2.0, out);
    lt_report(r != LDM_OK && strstr(ldm_ctx_error(ctx), "2-D only"), "SSIM of volumes is refused (2-D only)", "%s", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    ldm_step_reset(ctx);
}

/* every fixture check on ctx's device; full: also the CPU-only I/O and error checks */
static void run_all(ldm_ctx *ctx, int full) {
    ldm_weights *fx = NULL;
    if (ldm_weights_open(ctx, &fx, FIX "vol3d_ref.safetensors")) { lt_report(0, "fixture", "%s", ldm_ctx_error(ctx)); return; }
    test_conv3d(ctx, fx);
    test_attn(ctx, fx);
    test_vae(ctx, fx, 0);
    test_vae(ctx, fx, 1);
    test_loss(ctx, fx, 0);
#ifndef LDM_CUDA_EMULATOR /* the L2 case adds no device code; the emulator's time goes to the rest */
    test_loss(ctx, fx, 1);
#endif
    test_unet(ctx, fx);
#ifndef LDM_CUDA_EMULATOR /* its parts are all above; on the emulator it would double the time */
    test_pipeline(ctx, fx);
#endif
    if (full) test_metrics(ctx, fx);
    if (full) test_tiled(ctx);
    ldm_weights_close(fx);
    if (full) {
        test_vae_io_and_errors(ctx);
        test_loss_errors(ctx);
    }
}

int main(void) {
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.seed = 1;
    return lt_main(&s, "test_vol3d", run_all);
}
