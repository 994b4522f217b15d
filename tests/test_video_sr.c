/* test_video_sr.c - the video super-resolution engine (examples/model_video.h) and video I/O
   (examples/video_io.h): config errors, the lr_scale condition and the B T C H W <-> first
   stage permutation against PyTorch (tests/ref/video_sr_ref.py, 2-D and dims 3), chunked ==
   unchunked encoding/decoding, latent_input, not_trainable_prefixes (frozen weights unchanged
   bitwise, no optimizer state), LoRA (adapters saved apart, merged copy = adapted model), the
   datasets, the GIF encoder (decoded back with stb_image), and a CI-sized driver run of
   configs/video_sr_demo.yaml. Runs from build/ (./ldm, ../data, ../tests/fixtures). */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */
#include "../examples/image_io.h"
#define LDM_IMPLEMENTATION
#include "../ldm_config.h"
#include "../ldm_data.h"
#include "../ldm_diffusion.h"
#include "../ldm_vae.h"
#include "../ldm_lpips.h"
#include "../examples/model_video.h"
#include "ldm_test.h"
#include "driver_util.h"

#define FIX "../tests/fixtures/"

/* the engine's model.params with a few holes: first-stage dims/ch_mult, vdit sizes, extras */
static const char *vsr_yaml =
    "model:\n"
    "  target: sgm.models.diffusion.VideoSREngine\n"
    "  params:\n"
    "    scale_factor: 0.7\n"
    "    lr_scale: %s\n"
    "%s"
    "    network_config:\n"
    "      target: sgm.modules.diffusionmodules.video_dit.VideoDiT\n"
    "      params: {num_frames: %d, height: %d, width: %d, patch_size: 2, in_channels: 4, out_channels: 2, hidden_size: 32, depth: 2, num_heads: 2}\n"
    "    denoiser_config:\n"
    "      target: sgm.modules.diffusionmodules.denoiser.Denoiser\n"
    "      params:\n"
    "        scaling_config: {target: sgm.modules.diffusionmodules.denoiser_scaling.EDMScaling, params: {sigma_data: 0.5}}\n"
    "    first_stage_config:\n"
    "      target: sgm.models.autoencoder.AutoencoderKL\n"
    "      params:\n"
    "        embed_dim: 2\n"
    "        lossconfig: {target: torch.nn.Identity}\n"
    "        ddconfig: {double_z: true, z_channels: 2, resolution: %d, in_channels: 3, out_ch: 3, ch: 32, ch_mult: [1, 2], num_res_blocks: 1, "
    "attn_resolutions: [], dims: %d}\n";

static ldm_config_registry *reg;
static ldm_config *cfgs[64];   /* the models keep strings of their config: freed at the end */
static int n_cfgs;

/* Builds the model from the template (NULL and a message on failure). */
static ex_model *make(const char *lr_scale, const char *extra, int F, int hw, int res, int dims, char *err, size_t errn) {
    static char text[8192];
    snprintf(text, sizeof text, vsr_yaml, lr_scale, extra, F, hw, hw, res, dims);
    ldm_config *cfg;
    ex_model *m = NULL;
    if (ldm_config_create(&cfg)) return NULL;
    if (ldm_config_load_string(cfg, text, "vsr.yaml", LDM_CONFIG_FORMAT_YAML) ||
        ldm_config_instantiate(cfg, reg, ldm_config_find(ldm_config_root(cfg), "model"), NULL, (void **)&m)) {
        snprintf(err, errn, "%s", ldm_config_error(cfg));
        m = NULL;
    }
    if (!m || n_cfgs == 64) ldm_config_destroy(cfg);
    else cfgs[n_cfgs++] = cfg;
    return m;
}
static void expect_error(const char *name, const char *extra, const char *needle) {
    char err[4096] = "";
    ex_model *m = make("3", extra, 3, 6, 12, 2, err, sizeof err);
    lt_report(!m && strstr(err, needle) != NULL, name, "model %s; message: %s", m ? "built" : "refused", err);
    if (m) m->destroy(m);
}

static void hash_params(ldm_ctx *ctx, ldm_nn_params *P) {
    for (int i = 0; i < ldm_nn_count(P); i++) {
        const ldm_nn_entry *e = ldm_nn_entry_at(P, i);
        float *h = (float *)malloc(sizeof(float) * (size_t)(e->t->numel ? e->t->numel : 1));
        lt_hash_init(e->name, h, e->t->ndim, e->t->shape);
        ldm_nn_copy_from_host(ctx, e->t, h);
        free(h);
    }
}
/* a one-field batch over host data [B, n, H, W] */
static ldm_data_batch batch_of(const char *name, float *data, int B, int n, int H, int W) {
    ldm_data_batch b;
    memset(&b, 0, sizeof b);
    b.size = B;
    b.n_fields = 1;
    snprintf(b.field[0].name, sizeof b.field[0].name, "%s", name);
    b.field[0].shape[0] = B; b.field[0].shape[1] = n; b.field[0].shape[2] = H; b.field[0].shape[3] = W;
    b.field[0].data = data;
    return b;
}
static float *host(ldm_ctx *ctx, ldm_tensor *t) {
    float *h = t ? (float *)malloc(sizeof(float) * (size_t)t->numel) : NULL;
    if (h && ldm_to_host(ctx, t, h)) { free(h); h = NULL; }
    return h;
}

static void test_config_errors(void) {
    expect_error("config: unknown model.params key, did you mean", "    scale_facter: 1.0\n", "did you mean 'scale_factor'");
    expect_error("config: unknown sampler target, did you mean",
                 "    sampler_single_config: {target: sgm.modules.diffusionmodules.sampling.EulerEDMSampla}\n", "did you mean");
    expect_error("config: unknown key in a sampler's params",
                 "    sampler_single_config: {target: EulerEDMSampler, params: {num_step: 3}}\n", "did you mean 'num_steps'");
    expect_error("config: IdentityWrapper is refused", "    network_wrapper: sgm.modules.diffusionmodules.wrappers.IdentityWrapper\n",
                 "unknown target");
    expect_error("config: loss_type lpips is refused",
                 "    loss_fn_config: {target: sgm.modules.diffusionmodules.loss.StandardDiffusionLoss, params: {loss_type: lpips}}\n", "not supported");
    expect_error("config: sampler_ddim_config must be a DDIMSampler", "    sampler_ddim_config: {target: EulerEDMSampler}\n", "DDIMSampler");
    expect_error("config: a list of scales only for the multi-prompt sampler",
                 "    sampler_single_config: {target: EulerEDMSampler, params: {guider_config: {target: VanillaCFG, params: {scale: [1, 2]}}}}\n",
                 "sampler_multi_prompt_config");
    expect_error("config: conditioner with emb_models is refused",
                 "    conditioner_config: {target: sgm.modules.GeneralConditioner, params: {emb_models: [{target: x}]}}\n", "emb_models");
    expect_error("config: unknown log_keys image", "    log_keys: [samples, sample]\n", "unknown image key 'sample'");
    expect_error("config: use_ema refused", "    use_ema: true\n", "use_ema");
    char err[4096] = "";
    /* in_channels 4 needs embed_dim 2: a DiT for 3 latent channels is caught */
    static char text[4096];
    snprintf(text, sizeof text, vsr_yaml, "3", "", 3, 6, 6, 12, 2);
    char *p = strstr(text, "in_channels: 4");
    if (p) p[13] = '6';
    ldm_config *cfg;
    ex_model *m = NULL;
    ldm_config_create(&cfg);
    int rc = ldm_config_load_string(cfg, text, "vsr.yaml", LDM_CONFIG_FORMAT_YAML) ||
             ldm_config_instantiate(cfg, reg, ldm_config_find(ldm_config_root(cfg), "model"), NULL, (void **)&m);
    snprintf(err, sizeof err, "%s", ldm_config_error(cfg));
    lt_report(rc && strstr(err, "in_channels 4") != NULL, "config: in_channels != 2 x embed_dim is an error", "%s", err);
    if (m) m->destroy(m);
    ldm_config_destroy(cfg);
    m = make("3", "    sampler_multi_prompt_config: {target: EulerEDMSampler, params: {num_steps: 2, guider_config: {target: VanillaCFG, params: {scale: [1.0, 2.5]}}}}\n"
                  "    sampler_ddim_config: {target: sgm.modules.diffusionmodules.sampling.DDIMSampler, params: {num_steps: 2, eta: 0.5, discretization_config: "
                  "{target: LegacyDDPMDiscretization}}}\n", 3, 6, 12, 2, err, sizeof err);
    lt_report(m != NULL, "config: samplers with guiders and discretizations are read", "%s", err);
    if (m) {
        ex_vsr *a = ex__vsr(m);
        LT_CHECK(a->samp[1].on && a->samp[1].n_scales == 2 && a->samp[1].scales[1] == 2.5 && a->samp[2].ddim && a->samp[2].so.eta == 0.5 &&
                     a->samp[2].so.disc.kind == LDM_SGM_DISC_LEGACY_DDPM && a->samp[0].so.num_steps == 20,
                 "config: sampler fields");
        m->destroy(m);
    }
}

/* the condition path and the latents against PyTorch; chunked == unchunked */
static void test_numerics(ldm_ctx *ctx, int dims) {
    ldm_weights *fx;
    char err[4096] = "", name[128];
    if (ldm_weights_open(ctx, &fx, FIX "video_sr_ref.safetensors")) { lt_report(0, "fixture", "%s", ldm_ctx_error(ctx)); return; }
    const char *tag = dims == 3 ? "dims 3" : "2-D";
    int T = dims == 3 ? 4 : 3, H = dims == 3 ? 8 : 12;
    long n;
    float *x = lt_load(ctx, fx, dims == 3 ? "video4" : "video", &n);
    float *zw = lt_load(ctx, fx, dims == 3 ? "z3" : "z", NULL), *cw = lt_load(ctx, fx, dims == 3 ? "c3" : "c", NULL);
    float *lw = lt_load(ctx, fx, dims == 3 ? "lr3" : "lr_bicubic", NULL), *lbl = lt_load(ctx, fx, "lr_bilinear", NULL);
    float *z_all = NULL, *d_all = NULL;   /* unchunked latents and decoded clip */
    for (int chunk = 0; chunk < 3; chunk++) {
        static const int chunks[3] = {0, 1, 4};
        char extra[256];
        snprintf(extra, sizeof extra, "    en_and_decode_n_samples_a_time: %d\n", chunks[chunk]);
        ex_model *m = make(dims == 3 ? "2" : "3", extra, dims == 3 ? 2 : 3, dims == 3 ? 4 : 6, H, dims, err, sizeof err);
        if (!m || m->setup(m, ctx, NULL)) { lt_report(0, "numerics: model", "%s %s", err, ldm_ctx_error(ctx)); if (m) m->destroy(m); break; }
        ex_vsr *a = ex__vsr(m);
        hash_params(ctx, a->vae->P);
        ldm_data_batch b = batch_of("video", x, 2, T * 3, H, H);
        ldm_tensor *z, *c, *xi, *lr;
        ldm_mark mk = ldm_arena_mark(ctx);
        if (ex__vsr_inputs(m, ctx, &b, 0, &z, &c, &xi, &lr)) { lt_report(0, "numerics: inputs", "%s", ldm_ctx_error(ctx)); m->destroy(m); break; }
        float *zh = host(ctx, z), *ch = host(ctx, c), *lh = host(ctx, lr);
        snprintf(name, sizeof name, "%s chunk %d: lr_scale condition (bicubic down/up) vs torch", tag, chunks[chunk]);
        lt_close(name, lh, lw, n, 2e-6, 1e-5);
        snprintf(name, sizeof name, "%s chunk %d: latents [B, Z, F, h, w] x scale_factor vs torch", tag, chunks[chunk]);
        lt_close(name, zh, zw, (long)z->numel, 2e-5, 1e-4);
        snprintf(name, sizeof name, "%s chunk %d: condition latents vs torch", tag, chunks[chunk]);
        lt_close(name, ch, cw, (long)c->numel, 2e-5, 1e-4);
        /* decode: chunked and unchunked agree, and frames come back as [B, T, C, H, W] */
        ldm_tensor *d = ex_vsr_decode(ctx, a, z);
        LT_CHECK(d && d->ndim == 5 && d->shape[0] == 2 && d->shape[1] == T && d->shape[2] == 3 && d->shape[3] == H, "decode: [B, T, C, H, W]");
        if (!chunk) { z_all = host(ctx, z); d_all = host(ctx, d); }
        else {
            float *zc = host(ctx, z), *dc = host(ctx, d);
            snprintf(name, sizeof name, "%s: encode %d samples at a time = all at once", tag, chunks[chunk]);
            lt_close(name, zc, z_all, (long)z->numel, 1e-6, 1e-6);
            snprintf(name, sizeof name, "%s: decode %d samples at a time = all at once", tag, chunks[chunk]);
            lt_close(name, dc, d_all, (long)d->numel, 1e-6, 1e-6);
            free(zc); free(dc);
        }
        if (dims == 2 && d) {
            /* frame (b, t) decoded alone equals the clip's frame t */
            ldm_tensor *zf = ldm_slice(ctx, ldm_slice(ctx, z, 0, 1, 1), 2, 2, 1);   /* [1, Z, 1, h, w] */
            ldm_tensor *one = ldm_vae_decode(ctx, a->vae, ldm_scale(ctx, ldm_reshape(ctx, zf, ldm_shape4(1, 2, 6, 6)), 1.0f / 0.7f));
            ldm_tensor *df = ldm_slice(ctx, ldm_slice(ctx, d, 0, 1, 1), 1, 2, 1);
            float *oh = host(ctx, one), *dh = host(ctx, df);
            snprintf(name, sizeof name, "2-D chunk %d: decoded frame (b 1, t 2) = that latent frame decoded alone", chunks[chunk]);
            lt_close(name, dh, oh, (long)df->numel, 1e-5, 1e-5);
            free(oh); free(dh);
        }
        if (dims == 2 && chunk == 0) {   /* bilinear */
            a->interp = LDM_INTERP_BILINEAR;
            ldm_tensor *l2 = ex__vsr_lr_pixels(m, ctx, xi);
            float *l2h = host(ctx, l2);
            lt_close("2-D: lr_interpolation bilinear vs torch", l2h, lbl, n, 2e-6, 1e-5);
            free(l2h);
            /* lr_scale larger than the frames: a clear error */
            a->p.lr_scale = 13;
            LT_CHECK(!ex__vsr_lr_pixels(m, ctx, xi) && strstr(ldm_ctx_error(ctx), "lr_scale"), "lr_scale past the frame size: an error");
            ldm_ctx_clear_error(ctx);
        }
        free(zh); free(ch); free(lh);
        ldm_arena_rewind(ctx, mk);
        m->destroy(m);
    }
    free(x); free(zw); free(cw); free(lw); free(lbl); free(z_all); free(d_all);
    ldm_weights_close(fx);
}

/* latent_input: the fields are latents, only reordered and scaled; a wrong field is an error */
static void test_latent_input(ldm_ctx *ctx) {
    char err[4096] = "";
    ex_model *m = make("3", "    latent_input: true\n", 3, 6, 12, 2, err, sizeof err);
    if (!m || m->setup(m, ctx, NULL)) { lt_report(0, "latent_input: model", "%s %s", err, ldm_ctx_error(ctx)); if (m) m->destroy(m); return; }
    int B = 2, T = 3, Z = 2, h = 6;
    long n = (long)B * T * Z * h * h;
    float *lat = (float *)malloc(sizeof(float) * (size_t)n * 2), *want = (float *)malloc(sizeof(float) * (size_t)n);
    lt_hash_uniform("vsr.lat", lat, n * 2);
    ldm_data_batch b = batch_of("video", lat, B, T * Z, h, h);
    b.n_fields = 2;
    snprintf(b.field[1].name, sizeof b.field[1].name, "lr_latent");
    memcpy(b.field[1].shape, b.field[0].shape, sizeof b.field[0].shape);
    b.field[1].data = lat + n;
    ldm_tensor *z, *c;
    LT_CHECK(!ex__vsr_inputs(m, ctx, &b, 0, &z, &c, NULL, NULL), "latent_input: inputs");
    for (int s = 0; s < 2; s++) {   /* want[b, z, t, y, x] = 0.7 * in[b, t, z, y, x] */
        for (int bb = 0; bb < B; bb++)
            for (int zz = 0; zz < Z; zz++)
                for (int t = 0; t < T; t++)
                    for (int q = 0; q < h * h; q++)
                        want[(((size_t)bb * Z + zz) * T + t) * h * h + q] = 0.7f * lat[(size_t)s * n + (((size_t)bb * T + t) * Z + zz) * h * h + q];
        float *g = host(ctx, s ? c : z);
        lt_close(s ? "latent_input: lr_key latents reordered and scaled" : "latent_input: input latents reordered and scaled", g, want, n, 0, 0);
        free(g);
    }
    b.n_fields = 1;
    LT_CHECK(ex__vsr_inputs(m, ctx, &b, 0, &z, &c, NULL, NULL) && strstr(ldm_ctx_error(ctx), "lr_latent"), "latent_input: a missing lr_key field is an error naming it");
    ldm_ctx_clear_error(ctx);
    free(lat); free(want);
    m->destroy(m);
}

/* one optimizer step of the model on a hash clip */
static int train_steps(ldm_ctx *ctx, ex_model *m, float *x, int k) {
    ldm_data_batch b = batch_of("video", x, 2, 9, 12, 12);
    ex_log log;
    for (int i = 0; i < k; i++) {
        memset(&log, 0, sizeof log);
        ldm_tensor *l = m->training_step(m, ctx, &b, i, 0, &log);
        if (!l || ldm_backward(ctx, l) || ldm_nn_optim_step(ctx, m->optim[0].opt)) return -1;
        ldm_nn_optim_zero_grad(ctx, m->optim[0].opt);
        ldm_step_reset(ctx);
    }
    return ex_log_get(&log, "train/loss") ? 0 : -1;
}

static void test_freeze(ldm_ctx *ctx) {
    char err[4096] = "", path[1200];
    ex_model *m = make("3", "    not_trainable_prefixes: [diffusion_model.blocks.0., x_embedder]\n", 3, 6, 12, 2, err, sizeof err);
    if (!m || m->setup(m, ctx, NULL) || m->configure_optimizers(m, ctx, 1e-3)) {
        lt_report(0, "freeze: model", "%s %s", err, ldm_ctx_error(ctx));
        if (m) m->destroy(m);
        return;
    }
    ex_vsr *a = ex__vsr(m);
    ldm_nn_params *P = ldm_vdit_params(a->net);
    int n = ldm_nn_count(P);
    float **before = (float **)calloc((size_t)n, sizeof *before), **vae_before = (float **)calloc((size_t)ldm_nn_count(a->vae->P), sizeof *vae_before);
    for (int i = 0; i < n; i++) before[i] = host(ctx, ldm_nn_entry_at(P, i)->t);
    for (int i = 0; i < ldm_nn_count(a->vae->P); i++) vae_before[i] = host(ctx, ldm_nn_entry_at(a->vae->P, i)->t);
    float x[2 * 9 * 144];
    lt_hash_uniform("vsr.train", x, 2 * 9 * 144);
    LT_CHECK(train_steps(ctx, m, x, 3) == 0, "freeze: three training steps");
    int frozen_same = 1, trained_moved = 0, n_frozen = 0, vae_same = 1;
    for (int i = 0; i < n; i++) {
        const ldm_nn_entry *e = ldm_nn_entry_at(P, i);
        float *now = host(ctx, e->t);
        int same = !memcmp(now, before[i], sizeof(float) * (size_t)e->t->numel);
        int fr = !strncmp(e->name, "blocks.0.", 9) || !strncmp(e->name, "x_embedder", 10);
        if (fr) { n_frozen++; frozen_same &= same; }
        else if (e->kind == LDM_NN_PARAM && !same) trained_moved++;
        free(now); free(before[i]);
    }
    for (int i = 0; i < ldm_nn_count(a->vae->P); i++) {
        float *now = host(ctx, ldm_nn_entry_at(a->vae->P, i)->t);
        vae_same &= !memcmp(now, vae_before[i], sizeof(float) * (size_t)ldm_nn_entry_at(a->vae->P, i)->t->numel);
        free(now); free(vae_before[i]);
    }
    free(before); free(vae_before);
    lt_report(n_frozen > 0 && frozen_same, "freeze: not_trainable_prefixes parameters unchanged bitwise", "%d frozen entries, unchanged %d", n_frozen, frozen_same);
    lt_report(trained_moved > 10, "freeze: the other DiT parameters train", "%d moved", trained_moved);
    LT_CHECK(vae_same && ldm_nn_params_frozen(a->vae->P), "freeze: the first stage is frozen and unchanged bitwise");
    snprintf(path, sizeof path, "%s/optim.safetensors", T);
    ldm_weights *w = NULL;
    int has_frozen = 0, has_trained = 0;
    if (!ldm_nn_optim_save(ctx, m->optim[0].opt, path) && !ldm_weights_open(ctx, &w, path)) {
        has_frozen = ldm_weights_find(w, "blocks.0.attn.qkv.weight.exp_avg") >= 0 || ldm_weights_find(w, "x_embedder.proj.weight.exp_avg") >= 0;
        has_trained = ldm_weights_find(w, "blocks.1.attn.qkv.weight.exp_avg") >= 0;
        ldm_weights_close(w);
    }
    LT_CHECK(!has_frozen && has_trained, "freeze: no optimizer state for frozen parameters");
    m->destroy(m);
    m = make("3", "    not_trainable_prefixes: [diffusion_model.blokcs.0.]\n", 3, 6, 12, 2, err, sizeof err);
    LT_CHECK(m && m->setup(m, ctx, NULL) && strstr(ldm_ctx_error(ctx), "\"blokcs.0.\"") && !strcmp(m->what, "model.params.not_trainable_prefixes"),
             "freeze: a prefix matching nothing is an error naming it");
    ldm_ctx_clear_error(ctx);
    if (m) m->destroy(m);
}

static void test_lora(ldm_ctx *ctx) {
    char err[4096] = "", dir[1100], path[1200], mp[1200];
    snprintf(dir, sizeof dir, "%s/lora_ckpt", T);
    mkdir(dir, 0777);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ex_model *m = make("3", "    lora_train: true\n    lora_rank: 2\n    lora_alpha: 4\n    lora_target_modules: [attn.qkv, mlp.fc1]\n    lora_save_merged: true\n",
                       3, 6, 12, 2, err, sizeof err);
    if (!m || m->setup(m, ctx, NULL) || m->configure_optimizers(m, ctx, 1e-2)) {
        lt_report(0, "lora: model", "%s %s", err, ldm_ctx_error(ctx));
        if (m) m->destroy(m);
        return;
    }
    ex_vsr *a = ex__vsr(m);
    ldm_nn_params *P = ldm_vdit_params(a->net);
    hash_params(ctx, P);   /* adaLN-Zero's zero gates would keep every adapter's gradient at 0 */
    ldm_vdit_reset_pos_embed(ctx, a->net);
    const ldm_nn_entry *e0 = ldm_nn_entry_at(P, 5);
    float *w0 = host(ctx, e0->t);
    float x[2 * 9 * 144];
    lt_hash_uniform("vsr.lora", x, 2 * 9 * 144);
    LT_CHECK(train_steps(ctx, m, x, 3) == 0, "lora: three training steps");
    float *w1 = host(ctx, e0->t);
    LT_CHECK(w0 && w1 && !memcmp(w0, w1, sizeof(float) * (size_t)e0->t->numel), "lora: the base DiT is unchanged bitwise");
    free(w0); free(w1);
    LT_CHECK(!m->save(m, ctx, path, 0, NULL, NULL), "lora: checkpoint");
    snprintf(mp, sizeof mp, "%s/lora_adapters.safetensors", dir);
    ldm_weights *w = NULL;
    int ok = 0;
    if (!ldm_weights_open(ctx, &w, mp)) {
        ok = ldm_weights_find(w, "blocks.0.attn.qkv.lora_A.weight") >= 0 && ldm_weights_find(w, "blocks.1.mlp.fc1.lora_B.weight") >= 0 &&
             ldm_weights_find(w, "blocks.0.attn.proj.weight") < 0;
        ldm_weights_close(w);
    }
    LT_CHECK(ok, "lora: adapters stored apart (lora_adapters.safetensors, adapters only)");
    ok = 0;
    if (!ldm_weights_open(ctx, &w, path)) {
        ok = ldm_weights_find(w, "model.diffusion_model.blocks.0.attn.qkv.weight") >= 0 && ldm_weights_find(w, "first_stage_model.encoder.conv_in.weight") >= 0;
        for (int i = 0; i < ldm_weights_count(w); i++) ok &= strstr(ldm_weights_info(w, i)->name, "lora") == NULL;
        ldm_weights_close(w);
    }
    LT_CHECK(ok, "lora: model.safetensors holds the base weights in sgm names, no adapters");
    /* the adapted model's denoiser output = a plain model loading model_merged.safetensors */
    ldm_tensor *xin = ldm_randn(ctx, ldm_shape5(2, 2, 3, 6, 6)), *cc = ldm_randn(ctx, ldm_shape5(2, 2, 3, 6, 6));
    float sig[2] = {0.7f, 3.0f};
    ldm_cond cond;
    memset(&cond, 0, sizeof cond);
    cond.concat = cc;
    int prev = ldm_set_grad_enabled(ctx, 0);
    m->set_training(m, 0);
    float *o1 = host(ctx, ldm_sgm_denoise(ctx, &a->den, xin, sig, &cond));
    ex_model *m2 = make("3", "", 3, 6, 12, 2, err, sizeof err);   /* no LoRA */
    snprintf(mp, sizeof mp, "%s/model_merged.safetensors", dir);
    float *o2 = NULL, *o3 = NULL;
    if (m2 && !m2->setup(m2, ctx, NULL) && !m2->load(m2, ctx, mp)) {
        o2 = host(ctx, ldm_sgm_denoise(ctx, &ex__vsr(m2)->den, xin, sig, &cond));
        if (!m2->load(m2, ctx, path)) o3 = host(ctx, ldm_sgm_denoise(ctx, &ex__vsr(m2)->den, xin, sig, &cond));
    } else lt_report(0, "lora: plain model", "%s %s", err, ldm_ctx_error(ctx));
    lt_close("lora: merged checkpoint in a model without LoRA = the adapted model", o2, o1, 2 * 2 * 3 * 36, 1e-5, 1e-4);
    double diff = 0;
    for (int i = 0; o1 && o3 && i < 2 * 2 * 3 * 36; i++) diff = fmax(diff, fabs(o1[i] - o3[i]));
    lt_report(o3 && diff > 1e-4, "lora: the base checkpoint alone differs (the adapters learnt something)", "max diff %g", diff);
    /* resume: a LoRA model loading the checkpoint gets the adapters back */
    ex_model *m3 = make("3", "    lora_train: true\n    lora_rank: 2\n    lora_alpha: 4\n    lora_target_modules: [attn.qkv, mlp.fc1]\n", 3, 6, 12, 2, err, sizeof err);
    float *o4 = NULL;
    if (m3 && !m3->setup(m3, ctx, path) && !m3->load(m3, ctx, path)) o4 = host(ctx, ldm_sgm_denoise(ctx, &ex__vsr(m3)->den, xin, sig, &cond));
    lt_close("lora: resume loads base + adapters (same output)", o4, o1, 2 * 2 * 3 * 36, 0, 0);
    ldm_set_grad_enabled(ctx, prev);
    free(o1); free(o2); free(o3); free(o4);
    if (m3) m3->destroy(m3);
    if (m2) m2->destroy(m2);
    m->destroy(m);
}

/* sampling and the image strips */
static void test_sampling(ldm_ctx *ctx) {
    char err[4096] = "";
    ex_model *m = make("3", "    sampler_single_config: {target: EulerEDMSampler, params: {num_steps: 2}}\n"
                            "    sampler_multi_prompt_config: {target: EulerEDMSampler, params: {num_steps: 2, guider_config: {target: VanillaCFG, params: {scale: [1.0, 2.5]}}}}\n"
                            "    sampler_ddim_config: {target: DDIMSampler, params: {num_steps: 2, discretization_config: {target: LegacyDDPMDiscretization}}}\n",
                       3, 6, 12, 2, err, sizeof err);
    if (!m || m->setup(m, ctx, NULL)) { lt_report(0, "sampling: model", "%s %s", err, ldm_ctx_error(ctx)); if (m) m->destroy(m); return; }
    float x[2 * 9 * 144];
    lt_hash_uniform("vsr.sample", x, 2 * 9 * 144);
    ldm_data_batch b = batch_of("video", x, 2, 9, 12, 12);
    ex_images im;
    memset(&im, 0, sizeof im);
    int prev = ldm_set_grad_enabled(ctx, 0);
    ldm_result r = m->log_images(m, ctx, &b, 4, &im);
    lt_report(!r && im.n == 6, "log_images: inputs, lr_bicubic, reconstructions, three samplers", "%d images; %s", im.n, r ? ldm_ctx_error(ctx) : "");
    int ok = !r;
    for (int i = 0; ok && i < im.n; i++) ok = im.t[i]->ndim == 4 && im.t[i]->shape[0] == 2 && im.t[i]->shape[2] == 12 && im.t[i]->shape[3] == 36;
    LT_CHECK(ok, "log_images: each clip one strip [C, H, T*W]");
    if (!r) {   /* the strip's frame t is the input frame t */
        float *s = host(ctx, im.t[0]);
        int same = 1;
        for (int t = 0; t < 3; t++)
            for (int c = 0; c < 3; c++)
                for (int y = 0; y < 12; y++)
                    for (int xx = 0; xx < 12; xx++) same &= s[((size_t)(9 * 144) + (size_t)c * 12 * 36 + (size_t)y * 36 + (size_t)t * 12 + xx)] == x[9 * 144 + ((t * 3 + c) * 12 + y) * 12 + xx];
        LT_CHECK(same, "log_images: strip layout (clip 1, every frame)");
        free(s);
    }
    double v[14];
    ex_images ti;
    memset(&ti, 0, sizeof ti);
    r = m->test_step(m, ctx, &b, v, &ti);
    lt_report(!r && ti.n == 3 && v[0] == v[0] && v[2] > 5 && v[10] <= 1.0 && v[11] == v[11] && v[5] != v[5] && v[13] != v[13], "test_step: samples and metrics", "%s psnr %g psnr_bicubic %g", r ? ldm_ctx_error(ctx) : "", v[0], v[2]);
    ldm_step_reset(ctx);
    m->destroy(m);
    /* with LPIPS weights (hash weights written here): lpips_bicubic = the frames' LPIPS averaged per clip */
    ldm_lpips *lp = NULL;
    char lpath[1200], extra[1400];
    snprintf(lpath, sizeof lpath, "%s/lpips_hash.safetensors", T);
    if (ldm_lpips_create(ctx, &lp, NULL)) { lt_report(0, "lpips: create", "%s", ldm_ctx_error(ctx)); ldm_set_grad_enabled(ctx, prev); return; }
    hash_params(ctx, lp->P);
    ldm_nn_save(ctx, lp->P, lpath, LDM_F32, NULL);
    ldm_lpips_destroy(lp);
    snprintf(extra, sizeof extra, "    sampler_single_config: {target: EulerEDMSampler, params: {num_steps: 1}}\n    lpips_path: [%s]\n", lpath);
    m = make("4", extra, 3, 8, 16, 2, err, sizeof err);   /* LPIPS needs frames of 16 x 16 or more */
    float x16[2 * 9 * 256];
    lt_hash_uniform("vsr.lpips", x16, 2 * 9 * 256);
    b = batch_of("video", x16, 2, 9, 16, 16);
    if (!m || m->setup(m, ctx, NULL)) { lt_report(0, "lpips: model", "%s %s", err, ldm_ctx_error(ctx)); if (m) m->destroy(m); ldm_set_grad_enabled(ctx, prev); return; }
    r = m->test_step(m, ctx, &b, v, &ti);
    ldm_tensor *z, *c, *xi, *lr;
    double fl[6] = {0};
    if (!r && !ex__vsr_inputs(m, ctx, &b, 0, &z, &c, &xi, &lr))
        r = ldm_metric_lpips(ctx, ex__vsr(m)->lp, ldm_reshape(ctx, lr, ldm_shape4(6, 3, 16, 16)), ldm_reshape(ctx, xi, ldm_shape4(6, 3, 16, 16)), fl);
    float got[2] = {(float)v[6], (float)v[13]}, want[2] = {(float)((fl[0] + fl[1] + fl[2]) / 3), (float)((fl[3] + fl[4] + fl[5]) / 3)};
    lt_report(!r && v[5] == v[5] && v[12] == v[12], "lpips: lpips_path fills the lpips columns (hash weights: any sign)", "%s lpips %g", r ? ldm_ctx_error(ctx) : "", v[5]);
    lt_close("lpips: lpips_bicubic = per-frame LPIPS averaged per clip", got, want, 2, 1e-6, 1e-5);
    ldm_set_grad_enabled(ctx, prev);
    ldm_step_reset(ctx);
    m->destroy(m);
}

/* the GIF decodes (stb_image) to the palette-quantised frames */
static void test_gif(void) {
    int T0 = 3, H = 20, W = 27;
    float *f = (float *)malloc(sizeof(float) * (size_t)T0 * 3 * H * W);
    for (int i = 0; i < T0 * 3 * H * W; i++) f[i] = (float)sin(0.37 * i) * 0.95f;
    char path[1200], err[512];
    snprintf(path, sizeof path, "%s/t.gif", T);
    int rc = ex_gif_write(path, f, T0, H, W, 10, err, sizeof err);
    long len = 0;
    char *buf = rc ? NULL : slurp(path, &len);
    int *delays = NULL, w = 0, h = 0, z = 0, comp = 0;
    unsigned char *px = buf ? stbi_load_gif_from_memory((unsigned char *)buf, (int)len, &delays, &w, &h, &z, &comp, 4) : NULL;
    lt_report(px && w == W && h == H && z == T0, "gif: stb_image decodes it (size, frame count)", "%s %dx%d x %d", rc ? err : "", w, h, z);
    double worst = 0;
    for (int t = 0; px && t < T0; t++)
        for (int c = 0; c < 3; c++)
            for (int p = 0; p < H * W; p++) {
                double v = (f[((size_t)t * 3 + c) * H * W + p] + 1.0) * 127.5, g = px[((size_t)t * H * W + p) * 4 + c];
                worst = fmax(worst, fabs(v - g));
            }
    /* the palette has 6 levels for red/blue (step 51) and 7 for green (step 42.5): half a step at most */
    lt_report(px && worst <= 25.6, "gif: pixels within half a palette step", "worst %g", worst);
    /* a bigger frame exercises the 12-bit code table and its reset */
    int H2 = 200, W2 = 200;
    float *g2 = (float *)malloc(sizeof(float) * 3 * H2 * W2);
    for (int i = 0; i < 3 * H2 * W2; i++) g2[i] = (float)((i * 2654435761u) % 1000) / 500.0f - 1.0f;
    rc = ex_gif_write(path, g2, 1, H2, W2, 10, err, sizeof err);
    free(buf); stbi_image_free(px); free(delays);
    buf = rc ? NULL : slurp(path, &len);
    delays = NULL;
    px = buf ? stbi_load_gif_from_memory((unsigned char *)buf, (int)len, &delays, &w, &h, &z, &comp, 4) : NULL;
    worst = 0;
    for (int c = 0; px && c < 3; c++)
        for (int p = 0; p < H2 * W2; p++) worst = fmax(worst, fabs((g2[(size_t)c * H2 * W2 + p] + 1.0) * 127.5 - px[(size_t)p * 4 + c]));
    lt_report(px && z == 1 && worst <= 25.6, "gif: noise frame (code table resets) decodes", "worst %g", worst);
    free(buf); stbi_image_free(px); free(delays); free(f); free(g2);
}

/* FrameFolders: frame folders with crops; errors name the file */
static void test_datasets(ldm_ctx *ctx) {
    char root[1200], p[1300];
    snprintf(root, sizeof root, "%s/clips", T);
    mkdir(root, 0777);
    unsigned char px[20 * 16 * 3];
    for (int c = 0; c < 2; c++) {
        snprintf(p, sizeof p, "%s/clip%d", root, c);
        mkdir(p, 0777);
        for (int f = 0; f < 5; f++) {
            for (int i = 0; i < 20 * 16 * 3; i++) px[i] = (unsigned char)(i * 7 + f * 40 + c * 3);
            snprintf(p, sizeof p, "%s/clip%d/f%02d.png", root, c, f);
            stbi_write_png(p, 20, 16, 3, px, 20 * 3);
        }
    }
    ldm_config_registry *dr;
    ldm_config_registry_create(&dr);
    ex_video_data_register(dr);
    ldm_config *cfg;
    ldm_config_create(&cfg);
    static char text[2048];
    snprintf(text, sizeof text, "ds:\n  target: ldm.data.video.FrameFolders\n  params: {root: %s, num_frames: 2, frame_stride: 2, size: 8}\n", root);
    ldm_dataset *ds = NULL;
    int rc = ldm_config_load_string(cfg, text, "d.yaml", LDM_CONFIG_FORMAT_YAML) ||
             ldm_config_instantiate(cfg, dr, ldm_config_find(ldm_config_root(cfg), "ds"), ctx, (void **)&ds);
    lt_report(!rc && ds && ldm_dataset_len(ds) == 2, "FrameFolders: two clips", "%s", ldm_config_error(cfg));
    ldm_data_item it;
    char err[1024];
    memset(&it, 0, sizeof it);
    if (ds && !ldm_dataset_get(ds, 1, 1, 0, &it, err, sizeof err)) {
        const ldm_data_field *fd = ldm_data_item_field(&it, "video");
        int ok = fd && fd->c == 6 && fd->h == 8 && fd->w == 8;
        /* frame 1 of the item = file f02 (stride 2), centre crop (y 4, x 6), channel 1 */
        if (ok) ok = fabsf(fd->data[((size_t)(1 * 3 + 1) * 8 + 0) * 8 + 0] - ((float)(unsigned char)(((4 * 20 + 6) * 3 + 1) * 7 + 2 * 40 + 3) / 127.5f - 1.0f)) < 1e-6f;
        LT_CHECK(ok, "FrameFolders: [T*3, size, size], stride and centre crop");
        ldm_data_item_free(&it);
    } else lt_report(0, "FrameFolders: item", "%s", err);
    ldm_dataset_destroy(ds);
    /* a frame of another size: the error names it */
    for (int i = 0; i < 10 * 10 * 3; i++) px[i] = 1;
    snprintf(p, sizeof p, "%s/clip1/f03.png", root);
    stbi_write_png(p, 10, 10, 3, px, 30);
    ds = NULL;
    if (!ldm_config_instantiate(cfg, dr, ldm_config_find(ldm_config_root(cfg), "ds"), ctx, (void **)&ds)) {
        rc = ldm_dataset_get(ds, 1, 1, 0, &it, err, sizeof err);
        lt_report(rc && strstr(err, "f03.png"), "FrameFolders: a frame of another size is an error naming it", "%s", err);
        ldm_dataset_destroy(ds);
    }
    snprintf(text, sizeof text, "ds:\n  target: ldm.data.video.FrameFolders\n  params: {root: %s, num_frames: 9}\n", root);
    ldm_config_destroy(cfg);
    ldm_config_create(&cfg);
    ds = NULL;
    rc = ldm_config_load_string(cfg, text, "d.yaml", LDM_CONFIG_FORMAT_YAML) ||
         ldm_config_instantiate(cfg, dr, ldm_config_find(ldm_config_root(cfg), "ds"), ctx, (void **)&ds);
    lt_report(rc && strstr(ldm_config_error(cfg), "clip0") && strstr(ldm_config_error(cfg), "5 frames"), "FrameFolders: too few frames names the clip",
              "%s", ldm_config_error(cfg));
    if (ds) ldm_dataset_destroy(ds);
    /* MovingCrops: fixed clips without random; frame t+1 is frame t moved by the velocity */
    snprintf(text, sizeof text, "ds:\n  target: MovingCrops\n  params: {root: ../data, num_frames: 3, size: 16, image_size: 48, clips_per_image: 2, "
                                "max_speed: 3, random: false}\n");
    ldm_config_destroy(cfg);
    ldm_config_create(&cfg);
    ds = NULL;
    rc = ldm_config_load_string(cfg, text, "d.yaml", LDM_CONFIG_FORMAT_YAML) ||
         ldm_config_instantiate(cfg, dr, ldm_config_find(ldm_config_root(cfg), "ds"), ctx, (void **)&ds);
    lt_report(!rc && ds && ldm_dataset_len(ds) == 12, "MovingCrops: 6 photos x 2 clips", "%s", ldm_config_error(cfg));
    ldm_data_item a2, b2;
    memset(&a2, 0, sizeof a2);
    memset(&b2, 0, sizeof b2);
    if (ds && !ldm_dataset_get(ds, 3, 1, 0, &a2, err, sizeof err) && !ldm_dataset_get(ds, 3, 7, 5, &b2, err, sizeof err)) {
        const ldm_data_field *fa = ldm_data_item_field(&a2, "video"), *fb = ldm_data_item_field(&b2, "video");
        LT_CHECK(fa && fb && fa->c == 9 && fa->h == 16 && !memcmp(fa->data, fb->data, sizeof(float) * 9 * 256), "MovingCrops: random false gives the same clip every epoch");
        ldm_data_item_free(&a2); ldm_data_item_free(&b2);
    } else lt_report(0, "MovingCrops: items", "%s", err);
    if (ds) ldm_dataset_destroy(ds);
    ldm_config_destroy(cfg);
    ldm_config_registry_destroy(dr);
}

/* the demo config through the driver at CI size (random first stage) */
static void test_driver(void) {
    char args[5000], L[800], p[1200];
    if (!exists("./ldm")) { lt_report(0, "driver: ./ldm is built", "missing"); return; }
    snprintf(args, sizeof args, "--base ../configs/video_sr_demo.yaml -t --name vsr -l %s/logs lightning.trainer.max_steps=4 "
             "data.params.train.params.root=../data data.params.validation.params.root=../data data.params.test.params.root=../data "
             "lightning.trainer.log_every_n_steps=2 lightning.callbacks.image_logger.params.batch_frequency=2 "
             "model.params.sampler_single_config.params.num_steps=2 model.params.network_config.params.depth=1 "
             "data.params.train.params.clips_per_image=2 data.params.validation.params.clips_per_image=1 "
             "data.params.test.params.clips_per_image=1 data.params.test.params.max_items=2 data.params.batch_size=4 "
             "model.params.video_out_dir=%s/videos", T, T);
    int rc = ldm("vsr", NULL, args);
    lt_report(rc == 0, "driver: the demo config trains and tests (CI size)", "exit %d", rc);
    if (rc) show("vsr");
    if (!logdir_of("vsr", L, sizeof L)) { lt_report(0, "driver: logdir", "none"); return; }
    snprintf(p, sizeof p, "%s/test_metrics.csv", L);
    LT_CHECK(file_has(p, "index,psnr,ssim,psnr_bicubic,ssim_bicubic,psnr_recon,lpips,lpips_bicubic"), "driver: test_metrics.csv columns");
    snprintf(p, sizeof p, "%s/metrics.csv", L);
    LT_CHECK(file_has(p, "train/loss"), "driver: metrics.csv logs train/loss");
    snprintf(p, sizeof p, "%s/checkpoints/last/model.safetensors", L);
    LT_CHECK(exists(p), "driver: checkpoint");
    snprintf(p, sizeof p, "%s/images/test/000000_samples.png", L);
    LT_CHECK(exists(p), "driver: test images");
    snprintf(p, sizeof p, "%s/videos/000000_sample.gif", T);
    int ok = exists(p);
    snprintf(p, sizeof p, "%s/videos/000001_bicubic/frame_003.png", T);
    ok &= exists(p);
    snprintf(p, sizeof p, "%s/videos/frames.csv", T);
    ok &= file_has(p, "clip,frame,psnr,ssim,psnr_bicubic,ssim_bicubic,psnr_recon,lpips,lpips_bicubic");
    LT_CHECK(ok, "driver: video_out_dir has GIFs, frame folders and frames.csv");
    /* LoRA through the driver: 4 steps at once = 2 steps, then resumed with -r to 4, bit for bit */
    char common[2500], R[800] = "", F2[800] = "";
    snprintf(common, sizeof common, "--no-test lightning.trainer.log_every_n_steps=1 lightning.callbacks.image_logger.params.batch_frequency=100 "
             "data.params.train.params.root=../data data.params.validation.params.root=../data data.params.test.params.root=../data "
             "data.params.train.params.clips_per_image=2 data.params.batch_size=4 model.params.network_config.params.depth=1 "
             "model.params.lora_train=true model.params.lora_rank=2 \"model.params.lora_target_modules=[attn.qkv, mlp.fc2]\"");
    /* LoRA fine-tunes a trained model: a base run first (a fresh DiT's final layer is zero and frozen under LoRA) */
    char B0[800] = "";
    snprintf(args, sizeof args, "--base ../configs/video_sr_demo.yaml -t --name base -l %s/logs --no-test lightning.trainer.max_steps=2 "
             "data.params.train.params.root=../data data.params.validation.params.root=../data data.params.test.params.root=../data "
             "data.params.train.params.clips_per_image=2 data.params.batch_size=4 model.params.network_config.params.depth=1", T);
    rc = ldm("base", NULL, args);
    lt_report(rc == 0 && logdir_of("base", B0, sizeof B0), "driver: a base run for LoRA", "exit %d", rc);
    size_t u = strlen(common);
    snprintf(common + u, sizeof common - u, " model.params.ckpt_path=%s/checkpoints/last/model.safetensors", B0);
    snprintf(args, sizeof args, "--base ../configs/video_sr_demo.yaml -t --name full -l %s/logs lightning.trainer.max_steps=4 %s", T, common);
    rc = ldm("full", NULL, args);
    lt_report(rc == 0 && logdir_of("full", F2, sizeof F2), "driver: a LoRA run", "exit %d", rc);
    if (rc) show("full");
    snprintf(args, sizeof args, "--base ../configs/video_sr_demo.yaml -t --name R -l %s/logs lightning.trainer.max_steps=2 %s", T, common);
    rc = ldm("R1", NULL, args);
    lt_report(rc == 0 && logdir_of("R", R, sizeof R), "driver: LoRA run, first part", "exit %d", rc);
    snprintf(args, sizeof args, "-r %s -t --no-test lightning.trainer.max_steps=4", R);
    rc = ldm("R2", NULL, args);
    lt_report(rc == 0, "driver: LoRA run resumed", "exit %d", rc);
    if (rc) show("R2");
    {
        const char *files[3] = {"model.safetensors", "optimizer_0.safetensors", "lora_adapters.safetensors"};
        for (int i = 0; i < 3; i++) {
            char fa[1400], fb[1400], what[160];
            snprintf(fa, sizeof fa, "%s/checkpoints/last/%s", F2, files[i]);
            snprintf(fb, sizeof fb, "%s/checkpoints/last/%s", R, files[i]);
            snprintf(what, sizeof what, "driver: resumed LoRA run's %s equals the uninterrupted run's bit for bit", files[i]);
            LT_CHECK(exists(fa) && same_file(fa, fb), what);
        }
        /* the adapters trained (lora_B starts at zero) */
        char fa[1400];
        snprintf(fa, sizeof fa, "%s/checkpoints/last/lora_adapters.safetensors", F2);
        ldm_ctx *c2;
        ldm_settings st;
        memset(&st, 0, sizeof st);
        ldm_weights *w = NULL;
        float bw[64 * 4];
        double mx = 0;
        if (!ldm_ctx_create(&c2, &st)) {
            int i = ldm_weights_open(c2, &w, fa) ? -1 : ldm_weights_find(w, "blocks.0.mlp.fc2.lora_B.weight");
            if (i >= 0 && ldm_weights_info(w, i)->numel <= 64 * 4 && !ldm_weights_read(c2, w, i, bw))
                for (int k = 0; k < ldm_weights_info(w, i)->numel; k++) mx = fmax(mx, fabs(bw[k]));
            if (w) ldm_weights_close(w);
            ldm_ctx_destroy(c2);
        }
        lt_report(mx > 0, "driver: the LoRA run trained its adapters (lora_B moved from zero)", "max |lora_B| %g", mx);
    }
    snprintf(args, sizeof args, "--base ../configs/video_sr_demo.yaml -t --name bad -l %s/logs model.params.denoiser_config.target=Denoisr", T);
    rc = ldm("bad", NULL, args);
    snprintf(p, sizeof p, "%s/bad.err", T);
    lt_report(rc != 0 && file_has(p, "did you mean 'Denoiser'"), "driver: an unknown denoiser target fails with a did-you-mean", "exit %d", rc);
}

int main(void) {
    if (!lt_mkdtemp(T, sizeof T, "ldm_test_video_sr")) return 1;
    (void)CFG;
    ldm_ctx *ctx;
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.seed = 3;
    if (ldm_ctx_create(&ctx, &s)) return 1;
    ldm_config_registry_create(&reg);
    ldm_config_registry_add(reg, ex_video_sr_class.target, ex_video_sr_class.aliases, ex_video_sr_class.create, NULL);
    test_config_errors();
    test_numerics(ctx, 2);
    test_numerics(ctx, 3);
    test_latent_input(ctx);
    test_freeze(ctx);
    test_lora(ctx);
    test_sampling(ctx);
    test_gif();
    test_datasets(ctx);
    test_driver();
    ldm_config_registry_destroy(reg);
    for (int i = 0; i < n_cfgs; i++) ldm_config_destroy(cfgs[i]);
    ldm_ctx_destroy(ctx);
    if (lt_failed == 0) lt_rm_rf(T);   /* kept for a look when something failed */
    return lt_finish("test_video_sr");
}
