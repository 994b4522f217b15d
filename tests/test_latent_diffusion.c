/* test_latent_diffusion.c - ldm_diffusion.h section 4 (LatentDiffusion) against PyTorch
   (tests/ref/ldm_ref.py): the CompVis configs read, a tiny class-conditional model loaded from
   a CompVis .ckpt (model_ema.* included), the training loss of shared_step and its gradients,
   guided DDIM runs decoded to images (own and EMA weights), save -> strict reload, and clear
   failures for wrong checkpoints. Runs from build/. */
#define LDM_IMPLEMENTATION
#include "../ldm_config.h"
#include "../ldm_diffusion.h"
#include "ldm_test.h"

static const char *CKPT = "../tests/fixtures/ldm_tiny.ckpt";

static int read_cfg(const char *path, ldm_latent_diffusion_config *lc) {
    ldm_config *cfg;
    if (ldm_config_create(&cfg)) return -1;
    int r = ldm_config_load(cfg, path) || ldm_latent_diffusion_config_read(cfg, NULL, lc);
    if (r) printf("  %s: %s\n", path, ldm_config_error(cfg));
    ldm_config_destroy(cfg);
    return r;
}

static void test_configs(ldm_ctx *ctx) {
    ldm_latent_diffusion_config c;
    int r = read_cfg("../configs/cin256-v2.yaml", &c);
    lt_report(!r && c.conditioning_key == LDM_CONDKEY_CROSSATTN && c.cond_stage == LDM_CONDSTAGE_CLASS && c.cond_n_classes == 1001 &&
                  c.cond_embed_dim == 512 && c.cond_stage_trainable && !c.use_ema && c.first_stage_n_embed == 8192 &&
                  c.first_stage.embed_dim == 3 && c.unet.model_channels == 192 && c.unet.context_dim == 512 && c.image_size == 64 &&
                  c.channels == 3 && c.schedule.timesteps == 1000 && fabs(c.schedule.linear_start - 0.0015) < 1e-12 &&
                  fabs(c.schedule.linear_end - 0.0195) < 1e-12 && c.log_every_t == 200 && !strcmp(c.monitor, "val/loss") &&
                  c.denoiser == LDM_DENOISER_UNET,
              "cin256-v2.yaml reads (crossattn, ClassEmbedder 1001x512, VQ first stage n_embed 8192)", "r %d", r);
    r = read_cfg("../configs/ldm_cin256.yaml", &c);
    lt_report(!r && c.cond_stage == LDM_CONDSTAGE_CLASS && c.conditioning_key == LDM_CONDKEY_CROSSATTN && c.first_stage_n_embed > 0,
              "ldm_cin256.yaml reads", "r %d", r);
    r = read_cfg("../configs/ldm_bsr_sr.yaml", &c);
    lt_report(!r && c.conditioning_key == LDM_CONDKEY_CONCAT && c.cond_stage == LDM_CONDSTAGE_IDENTITY && !c.cond_stage_trainable &&
                  c.use_ema && c.unet.in_channels == 6 && !strcmp(c.cond_stage_key, "LR_image") && c.loss.loss_type == LDM_LOSS_L2 &&
                  fabs(c.schedule.linear_end - 0.0155) < 1e-12,
              "ldm_bsr_sr.yaml reads (concat_mode -> concat, torch.nn.Identity, use_ema default)", "r %d", r);
    /* A VQ first stage (the published LDMs' vq-f4, in miniature): sampling decodes through the
       codebook, so latents that round to the same codes decode to the same image. */
    ldm_latent_diffusion *ld = NULL;
    {
        ldm_config *vc;
        ldm_config_create(&vc);
        ldm_config_load(vc, "../tests/configs/ldm_tiny.yaml");
        ldm_config_set(vc, "model.params.first_stage_config.target=ldm.models.autoencoder.VQModelInterface", "test");
        ldm_config_set(vc, "model.params.first_stage_config.params.n_embed=16", "test");
        ldm_config_set(vc, "model.params.first_stage_config.params.ddconfig.double_z=false", "test");
        r = ldm_latent_diffusion_config_read(vc, NULL, &c);
        if (r) printf("  %s\n", ldm_config_error(vc));
        ldm_config_destroy(vc);
        r = r ? r : (int)ldm_latent_diffusion_create(ctx, &ld, &c);
        ldm_tensor *z = NULL, *img = NULL;
        ldm_latent_diffusion_sample_opts so;
        memset(&so, 0, sizeof so);
        so.n = 2;
        so.steps = 4;
        so.guidance_scale = 2.0f;
        ldm_mark m = ldm_arena_mark(ctx);
        const float labels[2] = {1.0f, 3.0f};
        so.c = r ? NULL : ldm_from_host(ctx, ldm_shape1(2), labels);
        if (!r) img = ldm_latent_diffusion_sample(ctx, ld, &so, &z);
        int ok = !r && img && z && img->ndim == 4 && img->shape[0] == 2 && img->shape[1] == 3 && img->shape[2] == 8 && img->shape[3] == 8;
        float *h1 = ok ? (float *)malloc(sizeof(float) * (size_t)img->numel) : NULL, *h2 = NULL;
        if (ok && h1 && !ldm_to_host(ctx, img, h1)) {
            int finite = 1;
            for (int64_t i = 0; i < img->numel; i++) finite &= isfinite(h1[i]) != 0;
            ldm_tensor *img2 = ldm_latent_diffusion_decode(ctx, ld, ldm_add_scalar(ctx, z, 1e-6f), NULL);
            h2 = img2 ? (float *)malloc(sizeof(float) * (size_t)img2->numel) : NULL;
            ok = finite && h2 && !ldm_to_host(ctx, img2, h2) && !memcmp(h1, h2, sizeof(float) * (size_t)img->numel);
        } else ok = 0;
        lt_report(ok, "a VQ first stage: samples decode through the codebook (a 1e-6 shift of the latent decodes identically)",
                  "r %d: %s", r, ldm_ctx_error(ctx));
        free(h1); free(h2);
        ldm_arena_rewind(ctx, m);
        ldm_latent_diffusion_destroy(ld);
        ld = NULL;
        ldm_ctx_clear_error(ctx);
    }
    ldm_config *cfg;
    ldm_config_create(&cfg);
    ldm_config_load(cfg, "../tests/configs/ldm_tiny.yaml");
    ldm_config_set(cfg, "model.params.conditioning_kye=crossattn", "test");
    r = ldm_latent_diffusion_config_read(cfg, NULL, &c);
    lt_report(r && strstr(ldm_config_error(cfg), "conditioning_kye"), "an unknown model.params key is an error naming it", "%s", ldm_config_error(cfg));
    ldm_config_destroy(cfg);
}

static float scalar(ldm_ctx *ctx, ldm_tensor *t) {
    float v = NAN;
    if (t) ldm_to_host(ctx, t, &v);
    return v;
}

/* sum(grad * hash("proj." + name)) as the reference computes it */
static float gproj(ldm_ctx *ctx, ldm_nn_params *P, const char *name) {
    ldm_tensor *p = ldm_nn_find(P, name);
    if (!p || !p->grad) return NAN;
    float *g = (float *)malloc(sizeof(float) * (size_t)p->numel), *d = (float *)malloc(sizeof(float) * (size_t)p->numel);
    char key[256];
    snprintf(key, sizeof key, "proj.%s", name);
    lt_hash_uniform(key, d, (long)p->numel);
    ldm_tensor gt = ldm_tensor_wrap(p->grad, ldm_shape1(p->numel), p->device);
    double s = 0;
    if (!ldm_to_host(ctx, &gt, g))
        for (int64_t i = 0; i < p->numel; i++) s += (double)g[i] * d[i];
    free(g); free(d);
    return (float)s;
}

static int check_tensor(const char *name, ldm_ctx *ctx, ldm_tensor *got, ldm_weights *w, const char *key, double atol, double rtol) {
    long n = 0;
    float *want = lt_load(ctx, w, key, &n);
    if (!got || !want || got->numel != n) {
        lt_report(0, name, "missing output or size (%s)", ldm_ctx_error(ctx));
        free(want);
        return 0;
    }
    int ok = lt_close(name, lt_h(ctx, got, 0), want, n, atol, rtol);
    free(want);
    return ok;
}

/* A LatentDiffusion from YAML text (the tiny first stage, another denoiser / conditioning). */
static const char *FIRST_STAGE =
    "    first_stage_config:\n"
    "      target: ldm.models.autoencoder.AutoencoderKL\n"
    "      params:\n"
    "        embed_dim: 4\n"
    "        ddconfig: {double_z: true, z_channels: 4, resolution: 8, in_channels: 3, out_ch: 3, ch: 32, ch_mult: [1],"
    " num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}\n";
static ldm_latent_diffusion *from_text(ldm_ctx *ctx, const char *params, const char *name) {
    char text[4096];
    snprintf(text, sizeof text, "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n%s%s", params, FIRST_STAGE);
    ldm_config *cfg;
    ldm_latent_diffusion_config lc;
    ldm_latent_diffusion *ld = NULL;
    ldm_config_create(&cfg);
    if (ldm_config_load_string(cfg, text, name, LDM_CONFIG_FORMAT_YAML) || ldm_latent_diffusion_config_read(cfg, NULL, &lc))
        printf("  %s: %s\n", name, ldm_config_error(cfg));
    else if (ldm_latent_diffusion_create(ctx, &ld, &lc)) printf("  %s: %s\n", name, ldm_ctx_error(ctx));
    ldm_config_destroy(cfg);
    return ld;
}

static ldm_tensor *filled(ldm_ctx *ctx, ldm_shape s, const char *name, float scale) {
    int64_t n = 1;
    for (int i = 0; i < s.ndim; i++) n *= s.d[i];
    float *h = (float *)malloc(sizeof(float) * (size_t)n);
    lt_hash_uniform(name, h, (long)n);
    for (int64_t i = 0; i < n; i++) h[i] *= scale;
    ldm_tensor *t = ldm_from_host(ctx, s, h);
    free(h);
    return t;
}

/* super-resolution layout (ldm_bsr_sr.yaml): the low-res image concatenated to z_t */
static void test_concat(ldm_ctx *ctx) {
    ldm_latent_diffusion *ld = from_text(ctx,
        "    timesteps: 1000\n    image_size: 8\n    channels: 4\n    concat_mode: true\n    cond_stage_key: LR_image\n    use_ema: false\n"
        "    unet_config:\n      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
        "      params: {image_size: 8, in_channels: 7, out_channels: 4, model_channels: 32, attention_resolutions: [], num_res_blocks: 1,"
        " channel_mult: [1], num_head_channels: 32}\n"
        "    cond_stage_config:\n      target: torch.nn.Identity\n", "concat.yaml");
    lt_report(ld && ldm_latent_diffusion_cfg(ld)->conditioning_key == LDM_CONDKEY_CONCAT, "SR model: concat + Identity created", "%s", ldm_ctx_error(ctx));
    if (!ld) return;
    ldm_tensor *lr = filled(ctx, ldm_shape4(2, 3, 6, 6), "sr.lr", 0.9f);
    ldm_latent_diffusion_sample_opts so;
    memset(&so, 0, sizeof so);
    so.steps = 4;
    so.c = lr;
    ldm_tensor *z = NULL, *img = ldm_latent_diffusion_sample(ctx, ld, &so, &z);
    lt_report(img && z && z->shape[0] == 2 && z->shape[1] == 4 && z->shape[2] == 6 && z->shape[3] == 6 && img->shape[1] == 3 && img->shape[2] == 6,
              "SR sampling: the latent takes the low-res image's size, decoded to [2, 3, 6, 6]", "%s", ldm_ctx_error(ctx));
    ldm_tensor *x = filled(ctx, ldm_shape4(2, 3, 6, 6), "sr.x", 0.9f);
    ldm_tensor *loss = ldm_latent_diffusion_loss(ctx, ld, x, lr, NULL, NULL, NULL, NULL);
    float v = NAN;
    if (loss) ldm_to_host(ctx, loss, &v);
    lt_report(loss && v > 0 && v < 100, "SR training loss (t, noise drawn)", "loss %g: %s", v, ldm_ctx_error(ctx));
    so.c = NULL;
    img = ldm_latent_diffusion_sample(ctx, ld, &so, NULL);
    lt_report(!img && strstr(ldm_ctx_error(ctx), "conditioning"), "SR sampling without the image is an error", "%s", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    ldm_latent_diffusion_destroy(ld);
    ldm_step_reset(ctx);
}

/* a DiT denoiser (unet_config.target ...DiT) with class labels as y (adm), guided with its null class */
static void test_dit(ldm_ctx *ctx) {
    ldm_latent_diffusion *ld = from_text(ctx,
        "    image_size: 8\n    channels: 4\n    conditioning_key: adm\n    cond_stage_key: class_label\n    use_ema: false\n"
        "    unet_config:\n      target: models.DiT\n"
        "      params: {input_size: 8, patch_size: 2, in_channels: 4, hidden_size: 32, depth: 1, num_heads: 2, num_classes: 3,"
        " learn_sigma: true, class_dropout_prob: 0.1}\n"
        "    cond_stage_config:\n      target: torch.nn.Identity\n", "dit.yaml");
    lt_report(ld && ldm_latent_diffusion_cfg(ld)->denoiser == LDM_DENOISER_DIT, "DiT denoiser from unet_config.target", "%s", ldm_ctx_error(ctx));
    if (!ld) return;
    float yh[2] = {0, 2};
    ldm_latent_diffusion_sample_opts so;
    memset(&so, 0, sizeof so);
    so.steps = 2;
    so.guidance_scale = 2.0f;
    so.c = ldm_from_host(ctx, ldm_shape1(2), yh);
    ldm_tensor *z = NULL, *img = ldm_latent_diffusion_sample(ctx, ld, &so, &z);
    lt_report(img && z && z->shape[1] == 4 && z->shape[2] == 8 && img->shape[0] == 2 && img->shape[1] == 3,
              "DiT sampling: eps half of the learn_sigma output, guided with the null class", "%s", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    ldm_latent_diffusion_destroy(ld);
    ldm_step_reset(ctx);
}

/* the tiny model against the reference; every check reads tensors back, so it runs on any device */
static void test_model(ldm_ctx *ctx) {
    ldm_latent_diffusion_config lc;
    ldm_latent_diffusion *ld = NULL;
    ldm_weights *w = NULL;
    if (read_cfg("../tests/configs/ldm_tiny.yaml", &lc) || ldm_latent_diffusion_create(ctx, &ld, &lc) ||
        ldm_weights_open(ctx, &w, "../tests/fixtures/ldm_ref.safetensors")) {
        lt_report(0, "setup", "%s", ldm_ctx_error(ctx));
        return;
    }
    ldm_latent_diffusion_load_opts lo = {1, 0};
    ldm_result r = ldm_latent_diffusion_load(ctx, ld, CKPT, &lo);
    lt_report(!r, "strict load of a CompVis LatentDiffusion .ckpt (model, first stage, cond stage, model_ema, buffers)", "%s", ldm_ctx_error(ctx));
    lt_report(ldm_latent_diffusion_ema(ld) && ldm_latent_diffusion_ema(ld)->num_updates == 7 && fabsf(ldm_latent_diffusion_ema(ld)->decay - 0.9999f) < 1e-7f,
              "model_ema.decay and num_updates are read", "num_updates %d", ldm_latent_diffusion_ema(ld) ? ldm_latent_diffusion_ema(ld)->num_updates : -1);
    ldm_step_reset(ctx);

    /* ---- shared_step ---- */
    ldm_tensor *x = lt_tensor(ctx, w, "x"), *peps = lt_tensor(ctx, w, "posterior_eps"), *noise = lt_tensor(ctx, w, "noise");
    ldm_tensor *y = lt_tensor(ctx, w, "y");
    int t[2] = {3, 871};
    ldm_loss_log log;
    memset(&log, 0, sizeof log);
    ldm_nn_zero_grad(ctx, ldm_latent_diffusion_denoiser_params(ld));
    ldm_nn_zero_grad(ctx, ldm_latent_diffusion_cond_params(ld));
    ldm_nn_zero_grad(ctx, ldm_latent_diffusion_first_stage(ld)->P);
    ldm_tensor *loss = ldm_latent_diffusion_loss(ctx, ld, x, y, t, noise, peps, &log);
    float lv = scalar(ctx, loss);
    check_tensor("shared_step loss", ctx, loss, w, "loss", 1e-5, 1e-4);
    {
        long n;
        float *ls = lt_load(ctx, w, "loss_simple", &n);
        float mean = ls ? 0.5f * (ls[0] + ls[1]) : NAN;
        int k = -1;
        for (int i = 0; i < log.n; i++) if (!strcmp(log.item[i].key, "train/loss_simple")) k = i;
        lt_report(k >= 0 && fabsf(log.item[k].value - mean) < 1e-4f * fabsf(mean) + 1e-6f && log.n >= 3 && !strcmp(log.item[log.n - 1].key, "train/loss"),
                  "logged train/loss_simple, train/loss_vlb, train/loss", "n %d, loss_simple %g want %g", log.n, k >= 0 ? log.item[k].value : -1, mean);
        free(ls);
    }
    if (loss && !ldm_backward(ctx, loss)) {
        static const char *names[4] = {"out.2.weight", "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", "time_embed.0.weight",
                                       "middle_block.0.in_layers.2.weight"};
        float got[5];
        for (int i = 0; i < 4; i++) got[i] = gproj(ctx, ldm_latent_diffusion_denoiser_params(ld), names[i]);
        got[4] = gproj(ctx, ldm_latent_diffusion_cond_params(ld), "embedding.weight");
        float want[5];
        int ok = 1;
        for (int i = 0; i < 5 && ok; i++) {
            char key[32];
            if (i < 4) snprintf(key, sizeof key, "gproj.%d", i); else snprintf(key, sizeof key, "gproj.cond");
            float *v = lt_load(ctx, w, key, NULL);
            ok = v != NULL;
            if (v) want[i] = v[0];
            free(v);
        }
        if (ok) lt_close("gradient projections (4 UNet parameters, the trainable ClassEmbedder)", got, want, 5, 1e-5, 1e-3);
        ldm_tensor *vg = ldm_latent_diffusion_first_stage(ld)->quant_conv.weight;
        float gs = 0;
        if (vg->grad) {
            ldm_tensor gt = ldm_tensor_wrap(vg->grad, ldm_shape1(vg->numel), vg->device);
            const float *g = lt_h(ctx, &gt, 0);
            for (int64_t i = 0; g && i < vg->numel; i++) gs += fabsf(g[i]);
        }
        lt_report(!vg->requires_grad && gs == 0, "the first stage is frozen (no gradient)", "requires_grad %d, |grad| %g", vg->requires_grad, gs);
    } else lt_report(0, "backward", "%s", ldm_ctx_error(ctx));
    (void)lv;
    ldm_step_reset(ctx);

    /* ---- guided DDIM, 5 steps, eta 0, decoded ---- */
    ldm_latent_diffusion_sample_opts so;
    memset(&so, 0, sizeof so);
    so.steps = 5;
    so.guidance_scale = 3.0f;
    so.c = lt_tensor(ctx, w, "y");
    so.x_T = lt_tensor(ctx, w, "x_T");
    so.decode_batch = 1;
    ldm_tensor *z = NULL, *img = ldm_latent_diffusion_sample(ctx, ld, &so, &z);
    check_tensor("guided DDIM latents (5 steps, scale 3, uncond class n_classes-1)", ctx, z, w, "ddim_z", 1e-4, 1e-4);
    check_tensor("decoded images", ctx, img, w, "ddim_img", 1e-4, 1e-4);
    ldm_step_reset(ctx);

    /* ---- save -> strict reload -> the same loss ---- */
    r = ldm_latent_diffusion_save(ctx, ld, "ldm_tiny_saved.safetensors", LDM_F32);
    ldm_latent_diffusion *ld2 = NULL;
    if (!r) r = ldm_latent_diffusion_create(ctx, &ld2, &lc);
    if (!r) r = ldm_latent_diffusion_load(ctx, ld2, "ldm_tiny_saved.safetensors", &lo);
    lt_report(!r, "save writes CompVis names; a strict load takes them back", "%s", ldm_ctx_error(ctx));
    if (!r) {
        x = lt_tensor(ctx, w, "x"); peps = lt_tensor(ctx, w, "posterior_eps"); noise = lt_tensor(ctx, w, "noise"); y = lt_tensor(ctx, w, "y");
        float l2 = scalar(ctx, ldm_latent_diffusion_loss(ctx, ld2, x, y, t, noise, peps, NULL));
        lt_report(l2 == lv, "the reloaded model gives the same loss", "%.9g vs %.9g", l2, lv);
        lt_report(ldm_latent_diffusion_ema(ld2)->num_updates == 7, "EMA state survives the round trip", "num_updates %d", ldm_latent_diffusion_ema(ld2)->num_updates);
    }
    ldm_latent_diffusion_destroy(ld2);
    ldm_step_reset(ctx);

    /* ---- sampling with the EMA weights ---- */
    lo.ema_weights = 1;
    r = ldm_latent_diffusion_load(ctx, ld, CKPT, &lo);
    so.c = lt_tensor(ctx, w, "y");
    so.x_T = lt_tensor(ctx, w, "x_T");
    img = r ? NULL : ldm_latent_diffusion_sample(ctx, ld, &so, NULL);
    check_tensor("guided DDIM with the model_ema weights (--ema)", ctx, img, w, "ddim_ema_img", 1e-4, 1e-4);
    ldm_step_reset(ctx);

    /* ---- ancestral DDPM over all 1000 steps (no clipping: LatentDiffusion sets clip_denoised False), noise given (hash values); CPU
       only: a thousand model calls take minutes on the CUDA emulator ---- */
    if (ldm_ctx_device(ctx) == LDM_CPU) {
        int64_t per = 2 * 4 * 8 * 8;
        float *nh = (float *)malloc(sizeof(float) * (size_t)(1000 * per));
        lt_hash_uniform("ldm.ddpm_noise", nh, (long)(1000 * per));
        ldm_latent_diffusion_sample_opts dp;
        memset(&dp, 0, sizeof dp);
        dp.ddpm = 1;
        dp.c = lt_tensor(ctx, w, "y");
        dp.x_T = lt_tensor(ctx, w, "x_T");
        const int64_t nshape[5] = {1000, 2, 4, 8, 8};
        dp.noise = ldm_from_host(ctx, ldm_shape_n(5, nshape), nh);
        free(nh);
        img = ldm_latent_diffusion_sample(ctx, ld, &dp, NULL);
        check_tensor("DDPM, 1000 ancestral steps (clip_denoised False, as LatentDiffusion), decoded", ctx, img, w, "ddpm_img", 1e-4, 1e-4);
        ldm_step_reset(ctx);
    }

    /* ---- wrong checkpoints ---- */
    lo.ema_weights = 0;
    r = ldm_latent_diffusion_load(ctx, ld, "../tests/fixtures/vae_tiny.ckpt", &lo);
    lt_report(r && strstr(ldm_ctx_error(ctx), "model.diffusion_model.") && strstr(ldm_ctx_error(ctx), "time_embed.0.weight"), "a first-stage-only checkpoint: the error lists the missing names",
              "r %d: %.300s", r, ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    r = ldm_latent_diffusion_load(ctx, ld, "no_such.ckpt", &lo);
    lt_report(r && strstr(ldm_ctx_error(ctx), "no_such.ckpt"), "a missing file is an error naming it", "%s", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);

    /* ---- scale_by_std ---- */
    {
        ldm_config *cfg;
        ldm_latent_diffusion_config sc;
        ldm_latent_diffusion *l3 = NULL;
        ldm_config_create(&cfg);
        ldm_config_load(cfg, "../tests/configs/ldm_tiny.yaml");
        ldm_config_set(cfg, "model.params.scale_by_std=true", "test");
        ldm_config_set(cfg, "model.params.scale_factor=1.0", "test");
        r = ldm_latent_diffusion_config_read(cfg, NULL, &sc);
        ldm_config_destroy(cfg);
        if (!r) r = ldm_latent_diffusion_create(ctx, &l3, &sc);
        if (!r) r = ldm_latent_diffusion_load(ctx, l3, CKPT, &lo);
        float s = 0;
        x = lt_tensor(ctx, w, "x"); peps = lt_tensor(ctx, w, "posterior_eps");
        if (!r) r = ldm_latent_diffusion_scale_by_std(ctx, l3, x, peps, &s);
        float *want = lt_load(ctx, w, "scale_by_std", NULL);
        if (!r && want) lt_close("scale_by_std: 1 / std of the first batch's latents", &s, want, 1, 1e-6, 1e-5);
        else lt_report(0, "scale_by_std", "%s", ldm_ctx_error(ctx));
        r = ldm_latent_diffusion_scale_by_std(ctx, l3, x, peps, NULL);
        lt_report(r != 0, "scale_by_std a second time is an error", "r %d", r);
        ldm_ctx_clear_error(ctx);
        ldm_latent_diffusion *l4 = NULL;
        r = ldm_latent_diffusion_save(ctx, l3, "ldm_tiny_std.safetensors", LDM_F32);
        if (!r) r = ldm_latent_diffusion_create(ctx, &l4, &sc);
        if (!r) r = ldm_latent_diffusion_load(ctx, l4, "ldm_tiny_std.safetensors", &lo);
        lt_report(!r && ldm_latent_diffusion_scale_factor(l4) == s, "the scale_factor buffer is saved and loaded", "%g vs %g: %s",
                  l4 ? ldm_latent_diffusion_scale_factor(l4) : -1.0, s, ldm_ctx_error(ctx));
        free(want);
        ldm_latent_diffusion_destroy(l3);
        ldm_latent_diffusion_destroy(l4);
        ldm_step_reset(ctx);
    }
    /* ---- learn_logvar: a parameter "logvar" [T] at the top of the state dict ---- */
    {
        ldm_config *cfg;
        ldm_latent_diffusion_config vc;
        ldm_latent_diffusion *l5 = NULL, *l6 = NULL;
        ldm_config_create(&cfg);
        ldm_config_load(cfg, "../tests/configs/ldm_tiny.yaml");
        ldm_config_set(cfg, "model.params.learn_logvar=true", "test");
        ldm_config_set(cfg, "model.params.logvar_init=0.5", "test");
        r = ldm_latent_diffusion_config_read(cfg, NULL, &vc);
        ldm_config_destroy(cfg);
        ldm_latent_diffusion_load_opts ns = {0, 0};
        if (!r) r = ldm_latent_diffusion_create(ctx, &l5, &vc);
        if (!r) {
            r = ldm_latent_diffusion_load(ctx, l5, CKPT, &lo);
            lt_report(r && strstr(ldm_ctx_error(ctx), "logvar"), "learn_logvar: a strict load wants 'logvar'", "r %d: %s", r, ldm_ctx_error(ctx));
            ldm_ctx_clear_error(ctx);
            r = ldm_latent_diffusion_load(ctx, l5, CKPT, &ns);
        }
        x = lt_tensor(ctx, w, "x"); peps = lt_tensor(ctx, w, "posterior_eps"); noise = lt_tensor(ctx, w, "noise"); y = lt_tensor(ctx, w, "y");
        ldm_tensor *lvl = r ? NULL : ldm_latent_diffusion_loss(ctx, l5, x, y, t, noise, peps, &log);
        float l5v = scalar(ctx, lvl), want = (float)(lv / exp(0.5) + 0.5);
        lt_report(lvl && fabsf(l5v - want) < 1e-5f * want && log.n == 5 && !strcmp(log.item[2].key, "logvar"),
                  "learn_logvar: loss = mean(simple / exp(logvar_t) + logvar_t), logged with loss_gamma and logvar", "%g vs %g, %d keys", l5v, want, log.n);
        if (lvl && !ldm_backward(ctx, lvl)) {
            ldm_tensor *p = ldm_nn_find(ldm_latent_diffusion_own_params(l5), "logvar");
            const float *g = p ? lt_h(ctx, p, 1) : NULL;
            lt_report(g && g[3] != 0 && g[871] != 0 && g[500] == 0, "the logvar gradient reaches the sampled steps only", "g %p", (const void *)g);
        }
        if (!r) r = ldm_latent_diffusion_save(ctx, l5, "ldm_tiny_logvar.safetensors", LDM_F32);
        if (!r) r = ldm_latent_diffusion_create(ctx, &l6, &vc);
        if (!r) r = ldm_latent_diffusion_load(ctx, l6, "ldm_tiny_logvar.safetensors", &lo);
        lt_report(!r, "learn_logvar: saved with 'logvar', loaded strictly", "%s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
        ldm_latent_diffusion_destroy(l5);
        ldm_latent_diffusion_destroy(l6);
        ldm_step_reset(ctx);
    }

    ldm_weights_close(w);
    ldm_latent_diffusion_destroy(ld);
    lt_host_release();
    ldm_step_reset(ctx);
}

int main(void) {
    ldm_ctx *ctx;
    ldm_settings st;
    memset(&st, 0, sizeof st);
    st.arena_bytes = (size_t)256 << 20;
    if (ldm_ctx_create(&ctx, &st)) return 1;
#ifndef LDM_CUDA_EMULATOR /* the emulator build only runs the device part below */
    test_configs(ctx);
    test_model(ctx);
    test_concat(ctx);
    test_dit(ctx);
#endif
#ifdef LDM_CUDA
    ldm_ctx *gpu;
    if (lt_cuda_begin(&gpu, &st, "test_latent_diffusion")) {
        test_model(gpu);
        test_concat(gpu);
        test_dit(gpu);
        lt_cuda_end(gpu);
    }
#endif
    ldm_ctx_destroy(ctx);
    return lt_finish("test_latent_diffusion");
}
