/* model_autoencoder.h - latent-diffusion's ldm.models.autoencoder.AutoencoderKL as an ex_model
   (examples/model.h): ldm_vae.h's autoencoder trained with ldm_lpips.h's LPIPSWithDiscriminator,
   two Adam optimizers (autoencoder, discriminator), Lightning 1.4 semantics.

       const ex_model_class *mc = &ex_autoencoder_class;
       ldm_config_registry_add(reg, mc->target, mc->aliases, mc->create, (void *)mc);

   Its state dict is CompVis's: the autoencoder's names, then the loss under loss.*
   (loss.perceptual_loss.* once LPIPS weights are loaded). It includes model.h, ldm_vae.h and
   ldm_lpips.h; in the file with LDM_IMPLEMENTATION, include image_io.h (stb_image for
   ldm_data.h) before it, as examples/main.c does. */
#ifndef EX_MODEL_AUTOENCODER_H
#define EX_MODEL_AUTOENCODER_H

#include "model.h"
#include "ldm_vae.h"
#include "ldm_lpips.h"

#include <math.h>
#include <stdlib.h>

#define EX_AE_KEYS(X)                                                                            \
    X(ddconfig, NODE, NULL, "encoder/decoder architecture (ldm_vae.h)")                          \
    X(lossconfig, NODE, NULL, "{target: ldm.modules.losses.LPIPSWithDiscriminator, params}")     \
    X(embed_dim, INT, NULL, "latent channels")                                                   \
    X(ckpt_path, STR, "", "initial weights (CompVis .ckpt / safetensors), loaded non-strictly")  \
    X(ignore_keys, STR_LIST, "", "state-dict name prefixes dropped from ckpt_path")             \
    X(image_key, STR, "image", "batch field holding the images")                                 \
    X(colorize_nlabels, NODE, "", "accepted, ignored (segmentation inputs are not supported)")  \
    X(monitor, STR, "val/rec_loss", "metric that selects the top-k checkpoints (lower is better)")
#define EX_AE_LOSS_KEYS(X)                                                                       \
    LDM_LPIPS_LOSS_KEYS(X)                                                                       \
    X(lpips_path, STR_LIST, "",                                                                  \
      "LPIPS weights: one file (backbone + heads) or two (e.g. torchvision's vgg16 .pth, then LPIPS's vgg.pth); " \
      "else $LDM_LPIPS_WEIGHTS (comma-separated), else loss.perceptual_loss.* of the checkpoint being loaded")

LDM_CONFIG_DECLARE(ex_ae_cfg, EX_AE_KEYS);
LDM_CONFIG_DEFINE(ex_ae_cfg, EX_AE_KEYS)
LDM_CONFIG_DECLARE(ex_ae_loss_cfg, EX_AE_LOSS_KEYS);
LDM_CONFIG_DEFINE(ex_ae_loss_cfg, EX_AE_LOSS_KEYS)

typedef struct ex_ae {
    ex_ae_cfg c;
    ldm_vae_config vc;
    ldm_lpips_loss_config lc;
    ldm_config_strs lpips_path;
    ldm_vae *vae;
    ldm_lpips_loss *L;
    ldm_lpips *lp_metric;         /* L->lpips when loaded, or lp_own; NULL: no LPIPS metric */
    ldm_lpips *lp_own;
} ex_ae;

static const char *const ex_ae_log_keys[] = {"total_loss", "logvar", "kl_loss", "nll_loss", "rec_loss", "d_weight",
                                             "disc_factor", "g_loss", "disc_loss", "logits_real", "logits_fake"};
static const char *const ex_ae_val_keys[] = {"psnr", "ssim", "lpips"};
static const char *const ex_ae_summary_keys[] = {"val/rec_loss", "val/total_loss", "val/psnr", "val/ssim", "val/lpips"};
static const char *const ex_ae_test_keys[] = {"psnr", "ssim", "lpips", "l1", "rec_loss"};

static ex_ae *ex__ae(ex_model *m) { return (ex_ae *)m->self; }
/* Notes which part failed; the ctx holds the message. */
static ldm_result ex__ae_fail(ex_model *m, const char *what, ldm_ctx *ctx) {
    m->what = what;
    if (!ldm_ctx_status(ctx)) ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory");
    return ldm_ctx_status(ctx);
}

static void ex__ae_log_from(ex_log *out, const ldm_loss_log *in) {
    for (int i = 0; i < in->n; i++) ex_log_put(out, in->item[i].key, (double)in->item[i].value);
}

/* The batch's images on the ctx's device (the first n when n > 0). */
static ldm_tensor *ex__ae_input(ex_ae *a, ldm_ctx *ctx, const ldm_data_batch *b, int n) {
    ldm_tensor x = ldm_data_batch_tensor(b, a->c.image_key);
    if (!x.data) {
        ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "the batch has no field '%s' (hint: model.params.image_key names the dataset's image field)",
                       a->c.image_key);
        return NULL;
    }
    ldm_shape s = ldm_shape_of(&x);
    if (n > 0 && n < s.d[0]) s.d[0] = n;
    return ldm_from_host(ctx, s, x.data);
}

/* Whether a weights file holds a tensor whose name starts with prefix. */
static int ex__file_has_prefix(ldm_ctx *ctx, const char *path, const char *prefix) {
    ldm_weights *w;
    if (ldm_weights_open(ctx, &w, path)) { ldm_ctx_clear_error(ctx); return 0; }
    int found = 0;
    for (int i = 0; i < ldm_weights_count(w) && !found; i++) found = !strncmp(ldm_weights_info(w, i)->name, prefix, strlen(prefix));
    ldm_weights_close(w);
    return found;
}

/* init_from_ckpt and resuming: drops ignore_keys prefixes and the loss's tensors (loaded separately). */
typedef struct ex_ae_ignore { const ldm_config_strs *keys; } ex_ae_ignore;
static const char *ex__ae_rename(void *user, const char *name, char *buf, size_t cap) {
    ex_ae_ignore *ig = (ex_ae_ignore *)user;
    (void)buf; (void)cap;
    for (int i = 0; ig && i < ig->keys->n; i++)
        if (!strncmp(name, ig->keys->v[i], strlen(ig->keys->v[i]))) {
            printf("Deleting key %s from state_dict.\n", name);
            return NULL;
        }
    if (!strncmp(name, "loss.", 5)) return NULL;
    return name;
}

/* LPIPS weights: lpips_path, else $LDM_LPIPS_WEIGHTS, else the checkpoint being loaded. */
static ldm_result ex__ae_setup_lpips(ex_model *m, ldm_ctx *ctx, const char *resume_file) {
    ex_ae *a = ex__ae(m);
    char paths[2][1024];
    int n = 0;
    const char *src = NULL;
    if (a->lpips_path.n) {
        for (int i = 0; i < a->lpips_path.n && i < 2; i++) snprintf(paths[n++], sizeof paths[0], "%s", a->lpips_path.v[i]);
        src = "lossconfig.params.lpips_path";
    } else if (getenv("LDM_LPIPS_WEIGHTS") && getenv("LDM_LPIPS_WEIGHTS")[0]) {
        const char *s = getenv("LDM_LPIPS_WEIGHTS");
        while (s && *s && n < 2) { /* comma-separated, empty parts skipped */
            const char *c = strchr(s, ',');
            size_t l = c ? (size_t)(c - s) : strlen(s);
            if (l >= sizeof paths[0]) l = sizeof paths[0] - 1;
            memcpy(paths[n], s, l);
            paths[n][l] = 0;
            if (l) n++;
            s = c ? c + 1 : NULL;
        }
        src = "$LDM_LPIPS_WEIGHTS";
    } else {
        const char *cands[2] = {resume_file, a->c.ckpt_path};
        for (int i = 0; i < 2 && !n; i++)
            if (cands[i] && cands[i][0] && ex__file_has_prefix(ctx, cands[i], "loss.perceptual_loss.")) {
                snprintf(paths[n++], sizeof paths[0], "%s", cands[i]);
                src = "the checkpoint's loss.perceptual_loss.*";
            }
    }
    if (n && a->L->lpips) {
        if (ldm_lpips_loss_load_lpips(ctx, a->L, paths[0], n > 1 ? paths[1] : NULL)) return ex__ae_fail(m, src, ctx);
        a->lp_metric = a->L->lpips;
    } else if (n) {
        if (ldm_lpips_create(ctx, &a->lp_own, NULL) || ldm_lpips_load(ctx, a->lp_own, paths[0], n > 1 ? paths[1] : NULL))
            return ex__ae_fail(m, src, ctx);
        a->lp_metric = a->lp_own;
    }
    const char *note = NULL;
    if (ldm_lpips_loss_ready(ctx, a->L, &note)) return ex__ae_fail(m, "LPIPSWithDiscriminator", ctx);
    if (note) printf("%s\n", note);
    if (a->vc.dims == 3) printf("metrics: volumes: PSNR over every voxel (SSIM and LPIPS are 2-D image metrics)\n");
    else if (!a->lp_metric)
        printf("metrics: no LPIPS weights (lossconfig.params.lpips_path or $LDM_LPIPS_WEIGHTS), so no LPIPS metric; PSNR and SSIM only\n");
    else printf("LPIPS weights from %s\n", src);
    fflush(stdout);
    return LDM_OK;
}

static ldm_result ex__ae_setup(ex_model *m, ldm_ctx *ctx, const char *resume_file) {
    ex_ae *a = ex__ae(m);
    if (ldm_vae_create(ctx, &a->vae, &a->vc)) return ex__ae_fail(m, "AutoencoderKL", ctx);
    if (ldm_lpips_loss_create(ctx, &a->L, &a->lc)) return ex__ae_fail(m, "LPIPSWithDiscriminator", ctx);
    m->params[0].name = "model"; m->params[0].P = a->vae->P;
    m->params[1].name = "loss"; m->params[1].P = a->L->P;
    m->n_params = 2;

    /* ckpt_path: CompVis init_from_ckpt (non-strict, ignore_keys), the loss's logvar and
       discriminator when the file has them */
    const char *ck = a->c.ckpt_path;
    if (ck && ck[0]) {
        ex_ae_ignore ig = {&a->c.ignore_keys};
        ldm_nn_load_report rep;
        ldm_nn_load_opts lo;
        memset(&lo, 0, sizeof lo);
        memset(&rep, 0, sizeof rep);
        lo.rename = ex__ae_rename;
        lo.rename_user = &ig;
        lo.report = &rep;
        /* without ignore_keys every layout ldm_vae_load knows (CompVis, diffusers, first_stage_model.) */
        if (a->c.ignore_keys.n == 0) {
            if (ldm_vae_load_ex(ctx, a->vae, ck, 0, &rep)) return ex__ae_fail(m, "model.params.ckpt_path", ctx);
        } else if (ldm_nn_load(ctx, a->vae->P, ck, &lo)) return ex__ae_fail(m, "model.params.ckpt_path", ctx);
        printf("Restored from %s (%d tensors; %d missing, %d unexpected)\n", ck, rep.n_loaded, rep.n_missing, rep.n_unexpected);
        ldm_nn_load_report_free(&rep);
        int skip_loss = 0;
        for (int i = 0; i < a->c.ignore_keys.n; i++) skip_loss |= !strncmp("loss.", a->c.ignore_keys.v[i], strlen(a->c.ignore_keys.v[i]));
        if (!skip_loss && ex__file_has_prefix(ctx, ck, "loss.logvar") && ldm_lpips_loss_load(ctx, a->L, ck, "loss."))
            return ex__ae_fail(m, "model.params.ckpt_path (loss.*)", ctx);
    }
    return ex__ae_setup_lpips(m, ctx, resume_file);
}

/* configure_optimizers: Adam(betas 0.5, 0.9) for the autoencoder and for the discriminator */
static ldm_result ex__ae_optimizers(ex_model *m, ldm_ctx *ctx, double lr) {
    ex_ae *a = ex__ae(m);
    ldm_nn_optim_config oc = ldm_nn_optim_defaults(LDM_OPTIM_ADAM, lr);
    oc.beta1 = 0.5;
    oc.beta2 = 0.9;
    const char *ae_groups[4] = {"encoder", "decoder", "quant_conv", "post_quant_conv"}, *d_groups[1] = {"discriminator"};
    memset(m->optim, 0, sizeof m->optim[0] * 2);
    m->optim[0].name = "aeloss"; m->optim[0].loss_key = "train/total_loss";
    m->optim[1].name = "discloss"; m->optim[1].loss_key = "train/disc_loss";
    if (ldm_nn_optim_create(ctx, &m->optim[0].opt, a->vae->P, &oc, 4, ae_groups) ||
        ldm_nn_optim_create(ctx, &m->optim[1].opt, a->L->P, &oc, 1, d_groups)) return ex__ae_fail(m, "optimizers", ctx);
    m->n_optim = 2;
    return LDM_OK;
}

static void ex__ae_set_training(ex_model *m, int on) {
    ldm_vae_set_training(ex__ae(m)->vae, on);
    ldm_lpips_loss_set_training(ex__ae(m)->L, on);
}

/* optimizer 0: encoder, decoder, quant convs (the discriminator runs on detached weights
   inside the generator loss: Lightning's toggle_optimizer); optimizer 1: the discriminator,
   on a second forward pass (a second posterior sample) */
static ldm_tensor *ex__ae_training_step(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, int64_t step, int opt_idx, ex_log *log) {
    ex_ae *a = ex__ae(m);
    ldm_loss_log l;
    ldm_vae_posterior q;
    ldm_tensor *x = ex__ae_input(a, ctx, b, 0), *loss = NULL;
    if (opt_idx == 0) {
        m->what = "training (autoencoder step)";
        int bad = 0, f = ldm_vae_factor(&a->vc);
        for (int k = 2; x && k < x->ndim; k++) bad |= x->shape[k] % f != 0;
        if (bad) {
            char sb[64];
            ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s %s: the autoencoder needs every spatial size divisible by %d",
                           x->ndim == 5 ? "volumes" : "images", ldm_shape_str(x, sb, sizeof sb), f);
            m->what = "training";
            return NULL;
        }
        ldm_tensor *xrec = x ? ldm_vae_forward(ctx, a->vae, x, 1, &q) : NULL;
        loss = xrec ? ldm_lpips_loss_generator(ctx, a->L, x, xrec, ldm_vae_posterior_kl(ctx, &q), step, ldm_vae_last_layer(a->vae),
                                               "train", &l) : NULL;
    } else {
        m->what = "training (discriminator step)";
        int prev = ldm_set_grad_enabled(ctx, 0); /* nothing flows back into the autoencoder from this step */
        ldm_tensor *xrec = x ? ldm_vae_forward(ctx, a->vae, x, 1, &q) : NULL;
        ldm_set_grad_enabled(ctx, prev);
        loss = xrec ? ldm_lpips_loss_discriminator(ctx, a->L, x, xrec, step, "train", &l) : NULL;
    }
    if (loss) ex__ae_log_from(log, &l);
    return loss;
}

static ldm_result ex__ae_validation_step(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, int64_t step, ex_log *log) {
    ex_ae *a = ex__ae(m);
    ldm_tensor *x = ex__ae_input(a, ctx, b, 0);
    ldm_vae_posterior q;
    ldm_tensor *xrec = x ? ldm_vae_forward(ctx, a->vae, x, 1, &q) : NULL;
    ldm_loss_log l0, l1;
    ldm_tensor *lg = xrec ? ldm_lpips_loss_generator(ctx, a->L, x, xrec, ldm_vae_posterior_kl(ctx, &q), step, ldm_vae_last_layer(a->vae),
                                                     "val", &l0) : NULL;
    ldm_tensor *ld = lg ? ldm_lpips_loss_discriminator(ctx, a->L, x, xrec, step, "val", &l1) : NULL;
    if (!ld) return ex__ae_fail(m, "validation", ctx);
    ex__ae_log_from(log, &l0);
    ex__ae_log_from(log, &l1);
    int B = (int)x->shape[0];
    ldm_tensor *xc = ldm_clamp(ctx, xrec, -1.0f, 1.0f);
    double *v = (double *)malloc(sizeof(double) * (size_t)B * 3), s[3] = {0, 0, 0};
    /* SSIM and LPIPS are 2-D image metrics: volumes get PSNR (over every voxel) only */
    int img = x->ndim == 4, lp = img && a->lp_metric;
    if (!v || !xc || ldm_metric_psnr(ctx, x, xc, 2.0, v) || (img && ldm_metric_ssim(ctx, x, xc, 2.0, v + B)) ||
        (lp && ldm_metric_lpips(ctx, a->lp_metric, x, xc, v + 2 * B))) {
        free(v);
        return ex__ae_fail(m, "validation metrics", ctx);
    }
    for (int j = 0; j < B; j++) { s[0] += v[j]; if (img) s[1] += v[B + j]; if (lp) s[2] += v[2 * B + j]; }
    free(v);
    ex_log_put(log, "val/psnr", s[0] / B);
    if (img) ex_log_put(log, "val/ssim", s[1] / B);
    if (lp) ex_log_put(log, "val/lpips", s[2] / B);
    return LDM_OK;
}

/* AutoencoderKL.log_images in eval(): samples, reconstructions, inputs. */
static ldm_result ex__ae_log_images(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, int max_images, ex_images *out) {
    ex_ae *a = ex__ae(m);
    int was = a->vae->training;
    ldm_vae_set_training(a->vae, 0);
    ldm_tensor *x = ex__ae_input(a, ctx, b, max_images);
    ldm_vae_posterior q;
    ldm_tensor *xrec = x ? ldm_vae_forward(ctx, a->vae, x, 1, &q) : NULL;
    ldm_tensor *samples = xrec ? ldm_vae_decode(ctx, a->vae, ldm_randn(ctx, ldm_shape_of(q.mean))) : NULL;
    ldm_vae_set_training(a->vae, was);
    if (!samples) return ex__ae_fail(m, "ImageLogger", ctx);
    out->n = 3;
    out->key[0] = "samples"; out->t[0] = samples;
    out->key[1] = "reconstructions"; out->t[1] = xrec;
    out->key[2] = "inputs"; out->t[2] = x;
    return LDM_OK;
}

/* Reconstructions from the posterior mode; PSNR/SSIM/LPIPS on them clamped to [-1, 1] (volumes:
   PSNR only, SSIM and LPIPS are n/a);
   rec_loss = mean|x - xrec| (unclamped) + perceptual_weight * LPIPS, the loss's rec_loss. */
static ldm_result ex__ae_test_step(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, double *values, ex_images *images) {
    ex_ae *a = ex__ae(m);
    ldm_tensor *x = ex__ae_input(a, ctx, b, 0);
    ldm_vae_posterior q;
    ldm_tensor *xrec = x && !ldm_vae_encode(ctx, a->vae, x, &q) ? ldm_vae_decode(ctx, a->vae, ldm_vae_posterior_mode(&q)) : NULL;
    ldm_tensor *xc = xrec ? ldm_clamp(ctx, xrec, -1.0f, 1.0f) : NULL;
    int B = x ? (int)x->shape[0] : 0, img = x && x->ndim == 4, have_lp = img && a->lp_metric != NULL;
    double *v = xc ? (double *)malloc(sizeof(double) * (size_t)B * 3) : NULL;
    float *h = v ? (float *)malloc(sizeof(float) * (size_t)x->numel * 2) : NULL;
    if (!h || ldm_metric_psnr(ctx, x, xc, 2.0, v) || (img && ldm_metric_ssim(ctx, x, xc, 2.0, v + B)) ||
        (have_lp && ldm_metric_lpips(ctx, a->lp_metric, x, xc, v + 2 * B)) || ldm_to_host(ctx, x, h) || ldm_to_host(ctx, xrec, h + x->numel)) {
        free(v); free(h);
        return ex__ae_fail(m, "test", ctx);
    }
    int64_t per = x->numel / B;
    double pw = a->lc.perceptual_weight;
    for (int j = 0; j < B; j++) {
        double l1 = 0;
        for (int64_t e = 0; e < per; e++) l1 += fabs((double)h[j * per + e] - (double)h[x->numel + j * per + e]);
        l1 /= (double)per;
        double lp = have_lp ? v[2 * B + j] : NAN;
        double *r = values + (size_t)j * 5;
        r[0] = v[j]; r[1] = img ? v[B + j] : NAN; r[2] = lp; r[3] = l1;
        r[4] = l1 + (pw > 0 ? pw * lp : 0.0);
    }
    free(v); free(h);
    images->n = 2;
    images->key[0] = "inputs"; images->t[0] = x;
    images->key[1] = "reconstructions"; images->t[1] = xc;
    return LDM_OK;
}

/* model.safetensors: the VAE, then the loss as loss.* (loss.perceptual_loss.* when LPIPS is loaded). */
static ldm_result ex__ae_save(ex_model *m, ldm_ctx *ctx, const char *path, int n_meta, const char *const *keys, const char *const *vals) {
    ex_ae *a = ex__ae(m);
    const ldm_nn_params *regs[3] = {a->vae->P, a->L->P, a->L->lpips && a->L->lpips->loaded ? a->L->lpips->P : NULL};
    const char *const pre[3] = {"", "loss.", "loss."};
    if (ex_state_dict_save(ctx, path, 3, regs, pre, n_meta, keys, vals)) return ex__ae_fail(m, "checkpoint", ctx);
    return LDM_OK;
}

static ldm_result ex__ae_load(ex_model *m, ldm_ctx *ctx, const char *path) {
    ex_ae *a = ex__ae(m);
    ldm_nn_load_opts lo;
    memset(&lo, 0, sizeof lo);
    lo.strict = 1;
    lo.rename = ex__ae_rename;
    if (ldm_nn_load(ctx, a->vae->P, path, &lo) || ldm_lpips_loss_load(ctx, a->L, path, "loss.")) return ex__ae_fail(m, "resume", ctx);
    return LDM_OK;
}

static void ex__ae_destroy(ex_model *m) {
    if (!m) return;
    ex_ae *a = ex__ae(m);
    for (int i = 0; i < m->n_optim; i++) ldm_nn_optim_destroy(m->optim[i].opt);
    if (a) {
        if (a->lp_own) ldm_lpips_destroy(a->lp_own);
        if (a->L) ldm_lpips_loss_destroy(a->L);
        if (a->vae) ldm_vae_destroy(a->vae);
        free(a);
    }
    free(m);
}

/* The registry's constructor: reads and checks model.params (no ctx yet). */
static ldm_result ex_autoencoder_create(ldm_config *cfg, const ldm_config_node *params, void *user, void *arg, void **out) {
    (void)user; (void)arg;
    ex_model *m = (ex_model *)calloc(1, sizeof *m);
    ex_ae *a = (ex_ae *)calloc(1, sizeof *a);
    ldm_config_registry *reg = NULL;
    ldm_result r = LDM_OK;
    if (!m || !a) { free(m); free(a); return ldm_config_seterr(cfg, LDM_ERR_NOMEM, "out of memory"); }
    m->self = a;
    if ((r = ex_ae_cfg_load(cfg, params, &a->c)) || (r = ldm_vae_config_read(cfg, params, &a->vc))) goto fail;
    if (!a->vc.double_z) {
        const ldm_config_node *n = ldm_config_find(a->c.ddconfig, "double_z");
        char path[256];
        r = ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: %s: AutoencoderKL needs double_z = true (assert ddconfig[\"double_z\"] in CompVis)",
                              n && n->file ? n->file : "<config>", n ? n->line : 0, n ? ldm_config_path(n, path, sizeof path) : "double_z");
        goto fail;
    }
    {
        /* lossconfig: {target, params} through a registry of the one loss there is */
        ex_target_cfg t;
        ex_ae_loss_cfg lc;
        void *dummy;
        if ((r = ex_target_cfg_load(cfg, a->c.lossconfig, &t))) goto fail;
        if (ldm_config_registry_create(&reg)) { r = ldm_config_seterr(cfg, LDM_ERR_NOMEM, "out of memory"); goto fail; }
        if (ldm_config_registry_add(reg, "ldm.modules.losses.LPIPSWithDiscriminator",
                                    "ldm.modules.losses.contperceptual.LPIPSWithDiscriminator,LPIPSWithDiscriminator", ex_config_ctor_name, NULL)) {
            r = ldm_config_seterr(cfg, LDM_ERR_NOMEM, "registry: %s", ldm_config_registry_error(reg));
            goto fail;
        }
        if ((r = ldm_config_instantiate(cfg, reg, a->c.lossconfig, NULL, &dummy))) goto fail;
        if ((r = ex_ae_loss_cfg_load(cfg, t.params, &lc))) goto fail;
        a->lc = ldm_lpips_loss_defaults();
#define EX__AE_LOSS_COPY(name, kind, def, help) a->lc.name = lc.name;
        LDM_LPIPS_LOSS_KEYS(EX__AE_LOSS_COPY)
#undef EX__AE_LOSS_COPY
        a->lpips_path = lc.lpips_path;
    }
    ldm_config_registry_destroy(reg);
    m->name = "AutoencoderKL";
    m->monitor = a->c.monitor;
    m->log_keys = ex_ae_log_keys; m->n_log_keys = (int)(sizeof ex_ae_log_keys / sizeof ex_ae_log_keys[0]);
    /* volumes (dims 3): PSNR only, SSIM and LPIPS being 2-D image metrics */
    m->val_keys = ex_ae_val_keys; m->n_val_keys = a->vc.dims == 3 ? 1 : 3;
    m->summary_keys = ex_ae_summary_keys; m->n_summary_keys = a->vc.dims == 3 ? 3 : 5;
    m->progress_key = "train/rec_loss";
    m->curve_key = "rec_loss";
    m->test_keys = ex_ae_test_keys; m->n_test_keys = 5;
    m->test_note = "# ldm test summary (reconstructions from the posterior mode; PSNR/SSIM/LPIPS on reconstructions\n"
                   "# clamped to [-1, 1], data range 2; rec_loss = mean|x - xrec| + perceptual_weight * LPIPS)\n";
    m->pretrained = a->c.ckpt_path && a->c.ckpt_path[0];
    m->setup = ex__ae_setup;
    m->configure_optimizers = ex__ae_optimizers;
    m->set_training = ex__ae_set_training;
    m->training_step = ex__ae_training_step;
    m->on_train_batch_end = NULL;
    m->validation_step = ex__ae_validation_step;
    m->log_images = ex__ae_log_images;
    m->test_step = ex__ae_test_step;
    m->save = ex__ae_save;
    m->load = ex__ae_load;
    m->destroy = ex__ae_destroy;
    *out = m;
    return LDM_OK;
fail:
    if (reg) ldm_config_registry_destroy(reg);
    ex__ae_destroy(m);
    return r;
}

static void ex__ae_help(FILE *f) {
    fprintf(f, "\n[model.params]  (target ldm.models.autoencoder.AutoencoderKL)\n");
    ldm_config_schema_print(f, ex_ae_cfg_schema());
    fprintf(f, "\n[model.params.ddconfig]\n");
    ldm_config_schema_print(f, ldm_vae_ddconfig_schema());
    fprintf(f, "\n[model.params.lossconfig.params]  (target ldm.modules.losses.LPIPSWithDiscriminator)\n");
    ldm_config_schema_print(f, ex_ae_loss_cfg_schema());
    fprintf(f, "  (environment: LDM_LPIPS_WEIGHTS, LPIPS weights as comma-separated files)\n");
}

static const ex_model_class ex_autoencoder_class = {"ldm.models.autoencoder.AutoencoderKL", "AutoencoderKL", ex_autoencoder_create,
                                                    ex__ae_help};

#endif /* EX_MODEL_AUTOENCODER_H */
