/* model_diffusion.h - latent-diffusion's ldm.models.diffusion.ddpm.LatentDiffusion and DDPM as an
   ex_model (examples/model.h): ldm_diffusion.h's LatentDiffusion (pixel space when the config
   has no first_stage_config: DDPM), trained as CompVis does it under Lightning 1.4.

       const ex_model_class *mc = &ex_latent_diffusion_class;   (and ex_ddpm_class)
       ldm_config_registry_add(reg, mc->target, mc->aliases, mc->create, (void *)mc);

   What it does, call by call (ddpm.py):
     setup                 the model on the ctx; the first stage from
                           first_stage_config.params.ckpt_path (init_from_ckpt, non-strict), then
                           model.params.ckpt_path (the whole model, non-strict); a resumed run
                           takes every weight from its checkpoint instead
     configure_optimizers  AdamW(lr) over the denoiser (+ the cond stage when cond_stage_trainable,
                           + logvar when learn_logvar); scheduler_config: LambdaLR, stepped per
                           optimizer step, with ldm.lr_scheduler's LambdaLinearScheduler,
                           LambdaWarmUpCosineScheduler2 or LambdaWarmUpCosineScheduler
     training_step         scale_by_std on the very first batch (not when resuming), then
                           shared_step: p_losses on the encoded batch; logs train/loss_simple,
                           loss_vlb, loss (and loss_gamma with learn_logvar)
     on_train_batch_end    the EMA update (LitEma, every batch)
     validation_step       the same losses as val/..., then again with the EMA weights as
                           val/..._ema (ema_scope)
     log_images            inputs, reconstruction, conditioning (image conditionings),
                           diffusion_row, samples (EMA weights; DDIM for LatentDiffusion, DDPM
                           ancestral for DDPM), denoise_row, progressive_row; the ImageLogger's
                           log_images_kwargs are LatentDiffusion.log_images's: N, n_row,
                           sample, ddim_steps (200), ddim_eta (1.0), plot_diffusion_rows,
                           plot_denoise_rows, plot_progressive_rows, and Stable Diffusion's
                           unconditional_guidance_scale (1: no guided row)
     test_step             samples (EMA weights) for each test batch's conditioning, written
                           with the inputs; same sampler options as log_images
   The class-label conditioning may drop labels to the unconditional class n_classes - 1 with
   cond_stage_config.params.ucg_rate (Stable Diffusion 2's ClassEmbedder) for classifier-free
   guidance; dropping happens in training steps only. With lr_scale (an ldm.h extension) the
   conditioning is the input itself, downsampled by 1/lr_scale and upsampled back (bicubic),
   encoded by the frozen first stage and concatenated: super-resolution without LR data. Not done: log_images' inpainting rows
   (samples_inpainting, samples_outpainting) and text/class conditionings drawn as images.
   In the file with LDM_IMPLEMENTATION, include image_io.h before it, as examples/main.c does. */
#ifndef EX_MODEL_DIFFUSION_H
#define EX_MODEL_DIFFUSION_H

#include "model.h"
#include "ldm_diffusion.h"

#include <math.h>
#include <stdlib.h>

/* ldm.lr_scheduler: cycles of warm-up then linear or cosine decay of a factor on the lr. */
#define EX_LD_SCHED_KEYS(X)                                                                      \
    X(warm_up_steps, NODE, "", "steps of linear warm-up (a list: one per cycle; an int for LambdaWarmUpCosineScheduler)") \
    X(cycle_lengths, FLOAT_LIST, "10000000000000", "steps per cycle")                           \
    X(f_start, FLOAT_LIST, "1e-6", "factor at the start of each cycle")                         \
    X(f_max, FLOAT_LIST, "1.0", "factor after the warm-up")                                     \
    X(f_min, FLOAT_LIST, "1.0", "factor at the end of each cycle")                              \
    X(lr_start, FLOAT, "0", "LambdaWarmUpCosineScheduler: factor at step 0")                    \
    X(lr_max, FLOAT, "1", "LambdaWarmUpCosineScheduler: factor after the warm-up")              \
    X(lr_min, FLOAT, "0", "LambdaWarmUpCosineScheduler: factor at max_decay_steps")             \
    X(max_decay_steps, FLOAT, "1", "LambdaWarmUpCosineScheduler: end of the cosine decay")      \
    X(verbosity_interval, INT, "0", "accepted (printing only)")
LDM_CONFIG_DECLARE(ex_ld_sched_cfg, EX_LD_SCHED_KEYS);
LDM_CONFIG_DEFINE(ex_ld_sched_cfg, EX_LD_SCHED_KEYS)

/* main.ImageLogger's log_images_kwargs, as LatentDiffusion.log_images takes them. */
#define EX_LD_LOGIMG_KEYS(X)                                                                     \
    X(N, AT_LEAST(INT, 1), "8", "images per key (also capped by the ImageLogger's max_images)")  \
    X(n_row, AT_LEAST(INT, 1), "4", "rows of the diffusion row")                                 \
    X(sample, BOOL, "true", "draw samples")                                                     \
    X(ddim_steps, AT_LEAST(INT, 0), "200", "DDIM steps of the samples (0: DDPM ancestral over all T)") \
    X(ddim_eta, AT_LEAST(FLOAT, 0), "1.0", "DDIM eta")                                          \
    X(plot_diffusion_rows, BOOL, "true", "the forward process of the first n_row inputs")        \
    X(plot_denoise_rows, BOOL, "false", "the sampler's intermediates")                          \
    X(plot_progressive_rows, BOOL, "true", "x0 predictions along a DDPM ancestral run (T model calls)") \
    X(unconditional_guidance_scale, FLOAT, "1.0", "classifier-free guidance of extra samples (1: none)") \
    X(quantize_denoised, BOOL, "true", "accepted (VQ x0 quantization rows are not drawn)")      \
    X(inpaint, BOOL, "true", "accepted (inpainting rows are not drawn)")                       \
    X(return_keys, NODE, "", "accepted")

LDM_CONFIG_DECLARE(ex_ld_logimg_cfg, EX_LD_LOGIMG_KEYS);
LDM_CONFIG_DEFINE(ex_ld_logimg_cfg, EX_LD_LOGIMG_KEYS)

typedef enum { EX_LD_SCHED_NONE = 0, EX_LD_SCHED_LINEAR, EX_LD_SCHED_COSINE2, EX_LD_SCHED_COSINE } ex_ld_sched_kind;

typedef struct ex_ld {
    ldm_ctx *ctx;                 /* for the sampler callback */
    ldm_latent_diffusion_config lc;
    ldm_latent_diffusion *ld;
    int pixel;                    /* DDPM */
    const char *first_ckpt;       /* first_stage_config.params.ckpt_path */
    double ucg_rate;
    ex_ld_sched_kind sched;
    ex_ld_sched_cfg sc;
    double warm[LDM_CONFIG_LIST_MAX];   /* warm-up steps per cycle */
    int n_cycles;
    ex_ld_logimg_cfg li;
    int resumed, scaled;
    char cfg_key[48];             /* "samples_cfg_scale_3.00" */
    float *keep[16];              /* host copies of sampler intermediates (log_images) */
    int n_keep;
    ldm_shape keep_shape;
    int keep_x0;                  /* collect pred_x0 (progressive) rather than x_inter */
    int keep_lost;                /* a copy failed (out of memory): the row is not drawn */
} ex_ld;

static const char *const ex_ld_log_keys[] = {"loss_simple", "loss_gamma", "loss_vlb", "loss"};
static const char *const ex_ld_val_keys[] = {"loss_simple_ema", "loss_gamma_ema", "loss_vlb_ema", "loss_ema"};
static const char *const ex_ld_summary_ema[] = {"val/loss_simple", "val/loss_simple_ema", "val/loss"};
static const char *const ex_ld_summary[] = {"val/loss_simple", "val/loss"};

static ex_ld *ex__ld(ex_model *m) { return (ex_ld *)m->self; }
static ldm_result ex__ld_fail(ex_model *m, const char *what, ldm_ctx *ctx) {
    m->what = what;
    if (!ldm_ctx_status(ctx)) ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory");
    return ldm_ctx_status(ctx);
}

/* ---- the learning-rate schedule (ldm/lr_scheduler.py) ---- */
static double ex__ld_lr_lambda(void *self, int64_t step) {
    ex_ld *a = (ex_ld *)self;
    double n = (double)step;
    if (a->sched == EX_LD_SCHED_COSINE) { /* LambdaWarmUpCosineScheduler */
        double w = a->warm[0];
        if (n < w) return (a->sc.lr_max - a->sc.lr_start) / w * n + a->sc.lr_start;
        double t = (n - w) / (a->sc.max_decay_steps - w);
        if (t > 1.0) t = 1.0;
        return a->sc.lr_min + 0.5 * (a->sc.lr_max - a->sc.lr_min) * (1.0 + cos(t * 3.14159265358979323846));
    }
    /* cycles: the first whose cumulative end is >= n (find_in_interval); past the last, the last */
    int c = 0;
    double start = 0, cum = 0;
    for (c = 0; c < a->n_cycles; c++) {
        cum += a->sc.cycle_lengths.v[c];
        if (n <= cum) break;
        start = cum;
    }
    if (c == a->n_cycles) { c = a->n_cycles - 1; start = cum - a->sc.cycle_lengths.v[c]; }
    n -= start;
    double L = a->sc.cycle_lengths.v[c], fmax = a->sc.f_max.v[c], fmin = a->sc.f_min.v[c], f0 = a->sc.f_start.v[c], w = a->warm[c];
    if (n < w) return (fmax - f0) / w * n + f0;
    if (a->sched == EX_LD_SCHED_LINEAR) return fmin + (fmax - fmin) * (L - n) / L;
    double t = (n - w) / (L - w);
    if (t > 1.0) t = 1.0;
    return fmin + 0.5 * (fmax - fmin) * (1.0 + cos(t * 3.14159265358979323846));
}

/* ---- inputs ---- */
static ldm_tensor *ex__ld_field(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, const char *key, int n, const char *which) {
    ldm_tensor x = ldm_data_batch_tensor(b, key);
    if (!x.data) {
        ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "the batch has no field '%s' (hint: model.params.%s names the dataset's field)", key, which);
        m->what = "LatentDiffusion input";
        return NULL;
    }
    ldm_shape s = ldm_shape_of(&x);
    if (n > 0 && n < s.d[0]) s.d[0] = n;
    return ldm_from_host(ctx, s, x.data);
}
/* lr_scale: the first n input images downsampled by 1/lr_scale and upsampled back, both
   bicubic (torch F.interpolate(mode="bicubic"), ldm_data_resize), on the host. */
static ldm_tensor *ex__ld_degrade(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, int n) {
    ex_ld *a = ex__ld(m);
    ldm_tensor x = ldm_data_batch_tensor(b, a->lc.first_stage_key);
    if (!x.data || x.ndim != 4) return ex__ld_field(m, ctx, b, a->lc.first_stage_key, n, "first_stage_key");
    int B = n > 0 && n < x.shape[0] ? n : (int)x.shape[0], C = (int)x.shape[1], H = (int)x.shape[2], W = (int)x.shape[3];
    int h = (int)floor(H / a->lc.lr_scale), w = (int)floor(W / a->lc.lr_scale);
    if (h < 1 || w < 1) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "lr_scale %g shrinks %dx%d images to nothing", a->lc.lr_scale, H, W);
        m->what = "LatentDiffusion conditioning";
        return NULL;
    }
    float *lo = (float *)malloc(sizeof(float) * (size_t)C * h * w), *up = (float *)malloc(sizeof(float) * (size_t)B * C * H * W);
    ldm_result r = lo && up ? LDM_OK : LDM_ERR_NOMEM;
    for (int i = 0; i < B && !r; i++) {
        r = ldm_data_resize(lo, h, w, x.data + (size_t)i * C * H * W, C, H, W, LDM_INTERP_BICUBIC);
        if (!r) r = ldm_data_resize(up + (size_t)i * C * H * W, H, W, lo, C, h, w, LDM_INTERP_BICUBIC);
    }
    ldm_tensor *t = r ? NULL : ldm_from_host(ctx, ldm_shape4(B, C, H, W), up);
    if (r) ldm_ctx_seterr(ctx, r, "lr_scale: resizing the input failed");
    free(lo); free(up);
    return t;
}

/* The raw conditioning of the first n (0: all) batch items: labels as floats, or an image. */
static ldm_tensor *ex__ld_cond_raw(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, int n, int drop) {
    ex_ld *a = ex__ld(m);
    if (a->lc.cond_stage == LDM_CONDSTAGE_NONE) return NULL;
    if (a->lc.cond_stage == LDM_CONDSTAGE_LR_LATENT) return ex__ld_degrade(m, ctx, b, n);
    if (a->lc.cond_stage != LDM_CONDSTAGE_CLASS) return ex__ld_field(m, ctx, b, a->lc.cond_stage_key, n, "cond_stage_key");
    if (!b->class_label) {
        ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "the batch has no class labels for cond_stage_key '%s' (hint: a dataset with labels, "
                       "e.g. ldm.data.mnist.FashionMNIST or a folder dataset with labels = true)", a->lc.cond_stage_key);
        m->what = "LatentDiffusion conditioning";
        return NULL;
    }
    int B = n > 0 && n < b->size ? n : b->size;
    float *h = (float *)malloc(sizeof(float) * (size_t)B * 2);
    if (!h) { ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory"); return NULL; }
    float *u = h + B; /* ucg draws, one per sample (a data-parallel rank draws its rows) */
    if (drop && a->ucg_rate > 0) ldm_rng_rows(ctx, ldm_ctx_rng(ctx), LDM_CPU, u, B, 1, 0, 0.0f, 1.0f);
    for (int i = 0; i < B; i++) {
        int64_t y = b->class_label[i];
        if (y < 0 || y >= a->lc.cond_n_classes) {
            free(h);
            ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "class label %lld of batch item %d is outside the ClassEmbedder's n_classes %d", (long long)y, i,
                           a->lc.cond_n_classes);
            m->what = "LatentDiffusion conditioning";
            return NULL;
        }
        h[i] = (float)y;
        /* ClassEmbedder(ucg_rate): the label becomes the unconditional class n_classes - 1 */
        if (drop && a->ucg_rate > 0 && u[i] < a->ucg_rate) h[i] = (float)(a->lc.cond_n_classes - 1);
    }
    ldm_tensor *t = ldm_from_host(ctx, ldm_shape1(B), h);
    free(h);
    return t;
}

static void ex__ld_log_from(ex_log *out, const ldm_loss_log *in, const char *split, const char *suffix) {
    for (int i = 0; i < in->n; i++) {
        const char *k = in->item[i].key, *slash = strchr(k, '/');
        char key[64];
        if (!slash) continue;   /* "logvar": the mean over all steps, not a loss */
        snprintf(key, sizeof key, "%s/%s%s", split, slash + 1, suffix);
        ex_log_put(out, key, (double)in->item[i].value);
    }
}

/* ---- setup and optimizers ---- */
static ldm_result ex__ld_setup(ex_model *m, ldm_ctx *ctx, const char *resume_file) {
    ex_ld *a = ex__ld(m);
    if (ldm_latent_diffusion_create(ctx, &a->ld, &a->lc)) return ex__ld_fail(m, a->pixel ? "DDPM" : "LatentDiffusion", ctx);
    int n = 0;
    m->params[n].name = "model"; m->params[n++].P = ldm_latent_diffusion_denoiser_params(a->ld);
    if (ldm_latent_diffusion_cond_params(a->ld)) { m->params[n].name = "cond_stage_model"; m->params[n++].P = ldm_latent_diffusion_cond_params(a->ld); }
    if (ldm_latent_diffusion_own_params(a->ld)) { m->params[n].name = "own"; m->params[n++].P = ldm_latent_diffusion_own_params(a->ld); }
    m->n_params = n;
    a->resumed = resume_file != NULL;
    if (resume_file) return LDM_OK;   /* every weight, the EMA and scale_factor come from the checkpoint */
    if (a->first_ckpt && a->first_ckpt[0]) {
        ldm_nn_load_report rep;
        memset(&rep, 0, sizeof rep);
        if (ldm_vae_load_ex(ctx, ldm_latent_diffusion_first_stage(a->ld), a->first_ckpt, 0, &rep))
            return ex__ld_fail(m, "model.params.first_stage_config.params.ckpt_path", ctx);
        printf("First stage restored from %s (%d tensors; %d missing, %d unexpected)\n", a->first_ckpt, rep.n_loaded, rep.n_missing, rep.n_unexpected);
        if (rep.n_missing) {
            ldm_nn_load_report_free(&rep);
            ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "%s: the first stage's weights are incomplete (hint: the first stage's own checkpoint, "
                           "e.g. an autoencoder run's checkpoints/last.ckpt/model.safetensors)", a->first_ckpt);
            return ex__ld_fail(m, "model.params.first_stage_config.params.ckpt_path", ctx);
        }
        ldm_nn_load_report_free(&rep);
    } else if (!a->pixel && !a->lc.ckpt_path[0])
        printf("warning: no first_stage_config.params.ckpt_path: the first stage keeps its random initial weights\n");
    if (a->lc.ckpt_path[0]) {
        ldm_latent_diffusion_load_opts lo = {0, 0};   /* init_from_ckpt: strict=False */
        if (ldm_latent_diffusion_load(ctx, a->ld, a->lc.ckpt_path, &lo)) return ex__ld_fail(m, "model.params.ckpt_path", ctx);
        printf("Restored from %s\n", a->lc.ckpt_path);
    }
    fflush(stdout);
    return LDM_OK;
}

static ldm_result ex__ld_optimizers(ex_model *m, ldm_ctx *ctx, double lr) {
    ex_ld *a = ex__ld(m);
    ldm_nn_optim_config oc = ldm_nn_optim_defaults(LDM_OPTIM_ADAMW, lr);   /* torch defaults: wd 0.01 */
    memset(m->optim, 0, sizeof m->optim[0]);
    ex_optim *o = &m->optim[0];
    o->name = "loss";
    o->loss_key = "train/loss";
    if (ldm_nn_optim_create(ctx, &o->opt, ldm_latent_diffusion_denoiser_params(a->ld), &oc, 0, NULL)) return ex__ld_fail(m, "optimizer", ctx);
    m->n_optim = 1;
    if (a->lc.cond_stage_trainable && ldm_latent_diffusion_cond_params(a->ld)) {
        if (ldm_nn_optim_create(ctx, &o->also[o->n_also], ldm_latent_diffusion_cond_params(a->ld), &oc, 0, NULL)) return ex__ld_fail(m, "optimizer", ctx);
        o->n_also++;
    }
    if (ldm_latent_diffusion_own_params(a->ld)) {
        if (ldm_nn_optim_create(ctx, &o->also[o->n_also], ldm_latent_diffusion_own_params(a->ld), &oc, 0, NULL)) return ex__ld_fail(m, "optimizer", ctx);
        o->n_also++;
    }
    if (a->sched != EX_LD_SCHED_NONE) {
        o->lr_lambda = ex__ld_lr_lambda;
        printf("Setting up LambdaLR scheduler...\n");
    }
    return LDM_OK;
}

static void ex__ld_set_training(ex_model *m, int on) { ldm_latent_diffusion_set_training(ex__ld(m)->ld, on); }

/* ---- steps ---- */
static ldm_tensor *ex__ld_training_step(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, int64_t step, int opt_idx, ex_log *log) {
    ex_ld *a = ex__ld(m);
    (void)opt_idx;
    m->what = "training";
    ldm_tensor *x = ex__ld_field(m, ctx, b, a->lc.first_stage_key, 0, "first_stage_key");
    if (!x) return NULL;
    /* on_train_batch_start: scale_by_std once, at the first batch of a fresh run */
    if (a->lc.scale_by_std && step == 0 && !a->resumed && !a->scaled) {
        float s;
        if (ldm_latent_diffusion_scale_by_std_reduce(ctx, a->ld, x, NULL, m->reduce, m->reduce_user, &s)) { ex__ld_fail(m, "scale_by_std", ctx); return NULL; }
        a->scaled = 1;
        printf("### USING STD-RESCALING ###\nsetting self.scale_factor to %g\n### USING STD-RESCALING ###\n", (double)s);
        fflush(stdout);
    }
    ldm_tensor *c = ex__ld_cond_raw(m, ctx, b, 0, 1);
    if (ldm_ctx_status(ctx)) return NULL;
    ldm_loss_log l;
    ldm_tensor *loss = ldm_latent_diffusion_loss(ctx, a->ld, x, c, NULL, NULL, NULL, &l);
    if (!loss) { ex__ld_fail(m, "training", ctx); return NULL; }
    ex__ld_log_from(log, &l, "train", "");
    return loss;
}

static ldm_result ex__ld_on_batch_end(ex_model *m, ldm_ctx *ctx, int64_t step, int stepped) {
    ex_ld *a = ex__ld(m);
    (void)step; (void)stepped;
    ldm_ema *e = ldm_latent_diffusion_ema(a->ld);
    if (e && ldm_ema_update(ctx, e)) return ex__ld_fail(m, "EMA update", ctx);
    return LDM_OK;
}

static ldm_result ex__ld_validation_step(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, int64_t step, ex_log *log) {
    ex_ld *a = ex__ld(m);
    (void)step;
    ldm_tensor *x = ex__ld_field(m, ctx, b, a->lc.first_stage_key, 0, "first_stage_key");
    ldm_tensor *c = x ? ex__ld_cond_raw(m, ctx, b, 0, 0) : NULL;
    if (!x || ldm_ctx_status(ctx)) return ex__ld_fail(m, "validation", ctx);
    ldm_loss_log l;
    if (!ldm_latent_diffusion_loss(ctx, a->ld, x, c, NULL, NULL, NULL, &l)) return ex__ld_fail(m, "validation", ctx);
    ex__ld_log_from(log, &l, "val", "");
    ldm_ema *e = ldm_latent_diffusion_ema(a->ld);
    if (e) {   /* ema_scope */
        if (ldm_ema_store(ctx, e) || ldm_ema_copy_to(ctx, e)) return ex__ld_fail(m, "validation (EMA)", ctx);
        ldm_tensor *le = ldm_latent_diffusion_loss(ctx, a->ld, x, c, NULL, NULL, NULL, &l);
        if (ldm_ema_restore(ctx, e) || !le) return ex__ld_fail(m, "validation (EMA)", ctx);
        ex__ld_log_from(log, &l, "val", "_ema");
    }
    return LDM_OK;
}

/* ---- images ---- */
/* Sampler intermediates, copied to the host (each step's tensors die with the next). */
static void ex__ld_on_log(void *user, int i, ldm_tensor *x_inter, ldm_tensor *pred_x0) {
    ex_ld *a = (ex_ld *)user;
    ldm_tensor *t = a->keep_x0 ? pred_x0 : x_inter;
    if (a->keep_x0 && i < 0) return;   /* progressive_denoising keeps x0 predictions only */
    if (a->n_keep >= 16 || !t) return;   /* at most 16 columns (log_every_t picks how many) */
    float *h = (float *)malloc(sizeof(float) * (size_t)t->numel);
    if (!h || ldm_to_host(a->ctx, t, h)) { free(h); a->keep_lost = 1; return; }
    a->keep[a->n_keep++] = h;
    a->keep_shape = ldm_shape_of(t);
}
static void ex__ld_keep_free(ex_ld *a) {
    for (int i = 0; i < a->n_keep; i++) free(a->keep[i]);
    a->n_keep = 0;
    a->keep_lost = 0;
}

/* make_grid(rows x cols images, nrow = cols, padding 2, pad value 0) of host images
   img(r, c) -> [C, H, W] as one [1, C, Hg, Wg] tensor. */
static ldm_tensor *ex__ld_grid(ldm_ctx *ctx, int rows, int cols, int C, int H, int W, const float *const *col_data) {
    int Hg = rows * (H + 2) + 2, Wg = cols * (W + 2) + 2;
    float *g = (float *)calloc((size_t)C * Hg * Wg, sizeof(float));
    if (!g) { ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory"); return NULL; }
    for (int r = 0; r < rows; r++)
        for (int k = 0; k < cols; k++) {
            const float *src = col_data[k] + (size_t)r * C * H * W;
            for (int ch = 0; ch < C; ch++)
                for (int y = 0; y < H; y++)
                    memcpy(g + ((size_t)ch * Hg + (size_t)(2 + r * (H + 2) + y)) * Wg + 2 + k * (W + 2), src + ((size_t)ch * H + y) * W,
                           sizeof(float) * (size_t)W);
        }
    ldm_tensor *t = ldm_from_host(ctx, ldm_shape4(1, C, Hg, Wg), g);
    free(g);
    return t;
}
/* Decodes the kept latents (each [n, ...]) and lays them out as a grid: a row per sample, a
   column per kept step (_get_denoise_row_from_list). */
static ldm_tensor *ex__ld_rows(ex_model *m, ldm_ctx *ctx, int n) {
    ex_ld *a = ex__ld(m);
    float *dec[16];
    int C = 0, H = 0, W = 0, k, ok = !a->keep_lost;
    for (k = 0; k < a->n_keep && ok; k++) {
        ldm_mark mk = ldm_arena_mark(ctx);
        ldm_shape s = a->keep_shape;
        ldm_tensor *z = ldm_from_host(ctx, s, a->keep[k]);
        if (z && n < s.d[0]) z = ldm_slice(ctx, z, 0, 0, n);
        ldm_tensor *img = z ? ldm_latent_diffusion_decode(ctx, a->ld, z, NULL) : NULL;
        dec[k] = img ? (float *)malloc(sizeof(float) * (size_t)img->numel) : NULL;
        if (!dec[k] || ldm_to_host(ctx, img, dec[k])) { free(dec[k]); ok = 0; break; }
        int v = img->ndim == 5;   /* volumes [n, C, T, H, W]: the row shows each one's middle slice along T */
        C = (int)img->shape[1]; H = (int)img->shape[2 + v]; W = (int)img->shape[3 + v];
        if (v) {
            int64_t T = img->shape[2], plane = (int64_t)H * W;
            for (int64_t i = 0; i < img->shape[0] * C; i++)
                memmove(dec[k] + i * plane, dec[k] + (i * T + T / 2) * plane, sizeof(float) * (size_t)plane);
        }
        ldm_arena_rewind(ctx, mk);
    }
    ldm_tensor *g = ok && k ? ex__ld_grid(ctx, n, k, C, H, W, (const float *const *)dec) : NULL;
    for (int i = 0; i < k; i++) free(dec[i]);
    ex__ld_keep_free(a);
    if (!ok && !ldm_ctx_status(ctx)) ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory");
    return g;
}

/* Samples for conditioning c (raw, n items; NULL: unconditional) with the EMA weights, of
   [n, channels, image_size, image_size], or for a volume batch x [B, C, T, H, W] (UNet dims 3)
   the latent [n, channels, T/f, H/f, W/f] of the batch's size:
   DDIM (ddim_steps, eta) or DDPM ancestral; keep: collect x_inter / pred_x0 every log_every_t. */
static ldm_tensor *ex__ld_sample(ex_model *m, ldm_ctx *ctx, const ldm_tensor *x, ldm_tensor *c, int n, int ddim_steps, double eta, float scale,
                                 int ddpm, int keep, int keep_x0) {
    ex_ld *a = ex__ld(m);
    ldm_ema *e = ldm_latent_diffusion_ema(a->ld);
    if (e && (ldm_ema_store(ctx, e) || ldm_ema_copy_to(ctx, e))) return NULL;
    ldm_tensor *cc = ldm_latent_diffusion_conditioning(ctx, a->ld, c), *uc = NULL;
    int guided = scale != 1.0f && a->lc.cond_stage != LDM_CONDSTAGE_NONE;
    if (guided && !ldm_ctx_status(ctx)) {
        if (a->lc.cond_stage != LDM_CONDSTAGE_CLASS) ldm_ctx_seterr(ctx, LDM_ERR_UNSUPPORTED, "unconditional_guidance_scale needs a class-label conditioning");
        else {
            float *h = (float *)malloc(sizeof(float) * (size_t)n);
            if (h) {
                for (int i = 0; i < n; i++) h[i] = (float)(a->lc.cond_n_classes - 1);
                uc = ldm_latent_diffusion_conditioning(ctx, a->ld, ldm_from_host(ctx, ldm_shape1(n), h));
                free(h);
            } else ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory");
        }
    }
    ldm_tensor *z = NULL;
    if (!ldm_ctx_status(ctx)) {
        ldm_cond kc = ldm_latent_diffusion_cond(a->ld, cc), ku = ldm_latent_diffusion_cond(a->ld, uc);
        int64_t H = a->lc.image_size, W = a->lc.image_size;
        if (a->lc.conditioning_key == LDM_CONDKEY_CONCAT && cc && cc->ndim == 4) { H = cc->shape[2]; W = cc->shape[3]; }
        ldm_sample_opts so;
        memset(&so, 0, sizeof so);
        so.cond = &kc;
        so.uncond = guided ? &ku : NULL;
        so.guidance_scale = guided ? scale : 1.0f;
        a->keep_x0 = keep_x0;
        a->ctx = ctx;
        ex__ld_keep_free(a);
        so.on_log = keep ? ex__ld_on_log : NULL;
        so.user = a;
        ldm_denoiser den = ldm_latent_diffusion_denoiser(a->ld);
        ldm_shape shape = ldm_shape4(n, a->lc.channels, H, W);
        if (x && x->ndim == 5) {   /* volumes: the latent of the batch's size (image_size is one number) */
            int f = a->pixel ? 1 : ldm_vae_factor(&a->lc.first_stage);
            shape = ldm_shape5(n, a->lc.channels, x->shape[2] / f, x->shape[3] / f, x->shape[4] / f);
        }
        const ldm_schedule *sch = ldm_latent_diffusion_schedule(a->ld);
        if (ddpm || ddim_steps <= 0) {
            so.clip_denoised = a->lc.clip_denoised;
            so.log_every_t = a->lc.log_every_t;
            z = ldm_ddpm_sample(ctx, sch, &den, shape, &so);
        } else {
            ldm_ddim dd;
            so.log_every_t = 100;   /* DDIMSampler.sample's default */
            if (!ldm_ddim_init(ctx, &dd, sch, ddim_steps, 0, eta)) {
                z = ldm_ddim_sample(ctx, &dd, sch, &den, shape, &so);
                ldm_ddim_free(&dd);
            }
        }
    }
    if (e) ldm_ema_restore(ctx, e);
    return ldm_ctx_status(ctx) ? NULL : z;
}

/* LatentDiffusion.log_images / DDPM.log_images */
static ldm_result ex__ld_log_images(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, int max_images, ex_images *out) {
    ex_ld *a = ex__ld(m);
    const ex_ld_logimg_cfg *li = &a->li;
    int N = li->N < max_images ? li->N : max_images;
    if (N > b->size) N = b->size;
    int n_row = li->n_row < N ? li->n_row : N;
    const ldm_schedule *sch = ldm_latent_diffusion_schedule(a->ld);
    m->what = "log_images";
    ldm_tensor *x = ex__ld_field(m, ctx, b, a->lc.first_stage_key, N, "first_stage_key");
    ldm_tensor *c = x ? ex__ld_cond_raw(m, ctx, b, N, 0) : NULL;
    ldm_tensor *z = x && !ldm_ctx_status(ctx) ? ldm_latent_diffusion_encode(ctx, a->ld, x, NULL, NULL) : NULL;
    if (!z) return ex__ld_fail(m, "log_images", ctx);
    out->n = 0;
    out->key[out->n] = "inputs"; out->t[out->n++] = x;
    if (!a->pixel) {
        ldm_tensor *xrec = ldm_latent_diffusion_decode(ctx, a->ld, z, NULL);
        if (!xrec) return ex__ld_fail(m, "log_images", ctx);
        out->key[out->n] = "reconstruction"; out->t[out->n++] = xrec;
        if (c && c->ndim == 4) { out->key[out->n] = "conditioning"; out->t[out->n++] = c; }
    }
    if (li->plot_diffusion_rows) {   /* q_sample of the first n_row at t % log_every_t == 0 and T - 1 */
        ldm_tensor *z0 = n_row < z->shape[0] ? ldm_slice(ctx, z, 0, 0, n_row) : z;
        int every = a->lc.log_every_t > 0 ? a->lc.log_every_t : 100;
        ex__ld_keep_free(a);
        int *tt = (int *)malloc(sizeof(int) * (size_t)n_row);
        if (!tt) return ex__ld_fail(m, "log_images", ctx);
        for (int t = 0; t < sch->T && a->n_keep < 16; t++) {
            if (t % every && t != sch->T - 1) continue;
            for (int i = 0; i < n_row; i++) tt[i] = t;
            ldm_mark mk = ldm_arena_mark(ctx);
            ldm_tensor *zn = ldm_diffusion_q_sample(ctx, sch, z0, tt, NULL);
            float *h = zn ? (float *)malloc(sizeof(float) * (size_t)zn->numel) : NULL;
            if (!h || ldm_to_host(ctx, zn, h)) { free(h); free(tt); ex__ld_keep_free(a); return ex__ld_fail(m, "log_images", ctx); }
            a->keep[a->n_keep++] = h;
            a->keep_shape = ldm_shape_of(zn);
            ldm_arena_rewind(ctx, mk);
        }
        free(tt);
        ldm_tensor *g = ex__ld_rows(m, ctx, n_row);
        if (!g) return ex__ld_fail(m, "log_images (diffusion_row)", ctx);
        out->key[out->n] = "diffusion_row"; out->t[out->n++] = g;
    }
    if (li->sample) {
        ldm_tensor *s = ex__ld_sample(m, ctx, x, c, N, li->ddim_steps, li->ddim_eta, 1.0f, a->pixel, li->plot_denoise_rows || a->pixel, 0);
        ldm_tensor *img = s ? ldm_latent_diffusion_decode(ctx, a->ld, s, NULL) : NULL;
        if (!img) { ex__ld_keep_free(a); return ex__ld_fail(m, "log_images (samples)", ctx); }
        out->key[out->n] = "samples"; out->t[out->n++] = img;
        if (li->plot_denoise_rows || a->pixel) {
            ldm_tensor *g = ex__ld_rows(m, ctx, N);
            if (!g) return ex__ld_fail(m, "log_images (denoise_row)", ctx);
            out->key[out->n] = "denoise_row"; out->t[out->n++] = g;
        }
        if (li->unconditional_guidance_scale != 1.0 && a->lc.cond_stage != LDM_CONDSTAGE_NONE) {
            s = ex__ld_sample(m, ctx, x, c, N, li->ddim_steps, li->ddim_eta, (float)li->unconditional_guidance_scale, a->pixel, 0, 0);
            img = s ? ldm_latent_diffusion_decode(ctx, a->ld, s, NULL) : NULL;
            if (!img) return ex__ld_fail(m, "log_images (guided samples)", ctx);
            snprintf(a->cfg_key, sizeof a->cfg_key, "samples_cfg_scale_%.2f", li->unconditional_guidance_scale);
            out->key[out->n] = a->cfg_key; out->t[out->n++] = img;
        }
    }
    if (li->plot_progressive_rows && !a->pixel) {
        ldm_tensor *s = ex__ld_sample(m, ctx, x, c, N, 0, 0.0, 1.0f, 1, 1, 1);
        ldm_tensor *g = s ? ex__ld_rows(m, ctx, N) : NULL;
        if (!g) { ex__ld_keep_free(a); return ex__ld_fail(m, "log_images (progressive_row)", ctx); }
        out->key[out->n] = "progressive_row"; out->t[out->n++] = g;
    }
    return LDM_OK;
}

static ldm_result ex__ld_test_step(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, double *values, ex_images *images) {
    ex_ld *a = ex__ld(m);
    (void)values;
    m->what = "test";
    ldm_tensor *x = ex__ld_field(m, ctx, b, a->lc.first_stage_key, 0, "first_stage_key");
    ldm_tensor *c = x ? ex__ld_cond_raw(m, ctx, b, 0, 0) : NULL;
    if (!x || ldm_ctx_status(ctx)) return ex__ld_fail(m, "test", ctx);
    ldm_tensor *s = ex__ld_sample(m, ctx, x, c, b->size, a->li.ddim_steps, a->li.ddim_eta, (float)a->li.unconditional_guidance_scale, a->pixel, 0, 0);
    ldm_tensor *img = s ? ldm_latent_diffusion_decode(ctx, a->ld, s, NULL) : NULL;
    img = img ? ldm_clamp(ctx, img, -1.0f, 1.0f) : NULL;
    if (!img) return ex__ld_fail(m, "test (sampling)", ctx);
    images->n = 0;
    images->key[images->n] = "inputs"; images->t[images->n++] = x;
    if (c && c->ndim == 4) { images->key[images->n] = "conditioning"; images->t[images->n++] = c; }
    images->key[images->n] = "samples"; images->t[images->n++] = img;
    return LDM_OK;
}

static ldm_result ex__ld_save(ex_model *m, ldm_ctx *ctx, const char *path, int n_meta, const char *const *keys, const char *const *vals) {
    (void)n_meta; (void)keys; (void)vals;
    if (ldm_latent_diffusion_save(ctx, ex__ld(m)->ld, path, LDM_F32)) return ex__ld_fail(m, "checkpoint", ctx);
    return LDM_OK;
}
static ldm_result ex__ld_load(ex_model *m, ldm_ctx *ctx, const char *path) {
    ldm_latent_diffusion_load_opts lo = {1, 0};
    if (ldm_latent_diffusion_load(ctx, ex__ld(m)->ld, path, &lo)) return ex__ld_fail(m, "resume", ctx);
    ex__ld(m)->scaled = 1;
    return LDM_OK;
}
static void ex__ld_destroy(ex_model *m) {
    if (!m) return;
    ex_ld *a = ex__ld(m);
    for (int i = 0; i < m->n_optim; i++) {
        ldm_nn_optim_destroy(m->optim[i].opt);
        for (int j = 0; j < m->optim[i].n_also; j++) ldm_nn_optim_destroy(m->optim[i].also[j]);
    }
    if (a) {
        ex__ld_keep_free(a);
        ldm_latent_diffusion_destroy(a->ld);
        free(a);
    }
    free(m);
}

/* The ImageLogger's log_images_kwargs (examples/main.c passes them once the config is read). */
static ldm_result ex_ld_set_log_kwargs(ex_model *m, ldm_config *cfg, const ldm_config_node *kwargs) {
    return ex_ld_logimg_cfg_load(cfg, kwargs, &ex__ld(m)->li);
}

/* model.params.scheduler_config: {target, params} */
static ldm_result ex__ld_read_scheduler(ldm_config *cfg, ex_ld *a, const ldm_config_node *node) {
    const char *target = NULL;
    ldm_result r;
    if (!node || node->type == LDM_CONFIG_NULL) return LDM_OK;
    if ((r = ldm_config_get_str(cfg, node, "target", NULL, &target))) return r;
    const char *file = node->file ? node->file : "<config>";
    if (strstr(target, "LambdaLinearScheduler")) a->sched = EX_LD_SCHED_LINEAR;
    else if (strstr(target, "LambdaWarmUpCosineScheduler2")) a->sched = EX_LD_SCHED_COSINE2;
    else if (strstr(target, "LambdaWarmUpCosineScheduler")) a->sched = EX_LD_SCHED_COSINE;
    else return ldm_config_seterr(cfg, LDM_ERR_UNSUPPORTED, "%s:%d: scheduler_config target '%s' is not supported (hint: "
                                  "ldm.lr_scheduler.LambdaLinearScheduler, LambdaWarmUpCosineScheduler2 or LambdaWarmUpCosineScheduler)",
                                  file, node->line, target);
    const ldm_config_node *p = ldm_config_find(node, "params");
    if ((r = ex_ld_sched_cfg_load(cfg, p, &a->sc))) return r;
    if (a->sched == EX_LD_SCHED_COSINE) {
        double w;
        if ((r = ldm_config_get_float(cfg, p, "warm_up_steps", 0, &w))) return r;
        a->warm[0] = w;
        if (!(a->sc.max_decay_steps > w) || !(w > 0))
            return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: LambdaWarmUpCosineScheduler needs 0 < warm_up_steps < max_decay_steps", file, node->line);
        return LDM_OK;
    }
    ldm_config_floats w;
    if ((r = ldm_config_get_float_list(cfg, p, "warm_up_steps", "0", &w))) return r;
    a->n_cycles = a->sc.cycle_lengths.n;
    if (w.n != a->n_cycles || a->sc.f_min.n != a->n_cycles || a->sc.f_max.n != a->n_cycles || a->sc.f_start.n != a->n_cycles || a->n_cycles < 1)
        return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: scheduler_config.params: warm_up_steps, f_min, f_max, f_start and cycle_lengths "
                                 "need one value per cycle (%d cycle lengths)", file, node->line, a->n_cycles);
    for (int i = 0; i < a->n_cycles; i++) {
        a->warm[i] = w.v[i];
        if (!(a->sc.cycle_lengths.v[i] > 0) || w.v[i] < 0 || (a->sched == EX_LD_SCHED_COSINE2 && !(a->sc.cycle_lengths.v[i] > w.v[i])))
            return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: scheduler cycle %d: needs cycle_lengths > warm_up_steps >= 0", file, node->line, i);
    }
    return LDM_OK;
}

/* The registry's constructor (LatentDiffusion and DDPM): reads and checks model.params. */
static ldm_result ex__ld_create(ldm_config *cfg, const ldm_config_node *params, void *user, void *arg, void **out, int pixel) {
    (void)user; (void)arg;
    ex_model *m = (ex_model *)calloc(1, sizeof *m);
    ex_ld *a = (ex_ld *)calloc(1, sizeof *a);
    ldm_result r = LDM_OK;
    if (!m || !a) { free(m); free(a); return ldm_config_seterr(cfg, LDM_ERR_NOMEM, "out of memory"); }
    m->self = a;
    a->pixel = pixel;
    if ((r = ldm_latent_diffusion_config_read(cfg, params, &a->lc))) goto fail;
    {
        const char *file = params && params->file ? params->file : "<config>";
        int line = params ? params->line : 0;
        if (!pixel && a->lc.pixel_space) {
            r = ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: LatentDiffusion needs model.params.first_stage_config (hint: target "
                                  "ldm.models.diffusion.ddpm.DDPM diffuses pixels without one)", file, line);
            goto fail;
        }
        if (pixel && !a->lc.pixel_space) {
            r = ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: DDPM has no first stage: first_stage_config is for "
                                  "ldm.models.diffusion.ddpm.LatentDiffusion", file, line);
            goto fail;
        }
        if (pixel && a->lc.cond_stage != LDM_CONDSTAGE_NONE) {
            r = ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: DDPM is unconditional: cond_stage_config is for LatentDiffusion", file, line);
            goto fail;
        }
        if (a->lc.n_ignore_keys) {
            r = ldm_config_seterr(cfg, LDM_ERR_UNSUPPORTED, "%s:%d: ignore_keys is not supported for diffusion models (hint: leave it out; "
                                  "ckpt_path loads non-strictly)", file, line);
            goto fail;
        }
        const ldm_config_node *fs = ldm_config_find(params, "first_stage_config");
        if (fs && (r = ldm_config_get_str(cfg, fs, "params.ckpt_path", "", &a->first_ckpt))) goto fail;
        const ldm_config_node *cs = ldm_config_find(params, "cond_stage_config");
        if (a->lc.cond_stage == LDM_CONDSTAGE_CLASS && (r = ldm_config_get_float(cfg, cs, "params.ucg_rate", 0.0, &a->ucg_rate))) goto fail;
        if (a->ucg_rate < 0 || a->ucg_rate > 1) {
            r = ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: ucg_rate %g is outside [0, 1]", cs && cs->file ? cs->file : file, cs ? cs->line : line, a->ucg_rate);
            goto fail;
        }
        if ((r = ex__ld_read_scheduler(cfg, a, ldm_config_find(params, "scheduler_config")))) goto fail;
        if ((r = ex_ld_logimg_cfg_load(cfg, NULL, &a->li))) goto fail;   /* defaults until the ImageLogger says otherwise */
    }
    m->name = pixel ? "DDPM" : "LatentDiffusion";
    m->monitor = a->lc.monitor[0] ? a->lc.monitor : a->lc.use_ema ? "val/loss_simple_ema" : "val/loss_simple";
    m->log_keys = ex_ld_log_keys; m->n_log_keys = 4;
    m->val_keys = ex_ld_val_keys; m->n_val_keys = a->lc.use_ema ? 4 : 0;
    m->summary_keys = a->lc.use_ema ? ex_ld_summary_ema : ex_ld_summary;
    m->n_summary_keys = a->lc.use_ema ? 3 : 2;
    m->progress_key = "train/loss_simple";
    m->curve_key = "loss_simple";
    m->test_keys = NULL; m->n_test_keys = 0;
    m->test_note = "# ldm test: samples (EMA weights when the model keeps them) for each test batch's conditioning\n";
    m->pretrained = a->lc.ckpt_path[0] != 0;
    m->setup = ex__ld_setup;
    m->configure_optimizers = ex__ld_optimizers;
    m->set_training = ex__ld_set_training;
    m->training_step = ex__ld_training_step;
    m->on_train_batch_end = ex__ld_on_batch_end;
    m->validation_step = ex__ld_validation_step;
    m->log_images = ex__ld_log_images;
    m->test_step = ex__ld_test_step;
    m->save = ex__ld_save;
    m->load = ex__ld_load;
    m->destroy = ex__ld_destroy;
    m->set_log_images_kwargs = ex_ld_set_log_kwargs;
    *out = m;
    return LDM_OK;
fail:
    ex__ld_destroy(m);
    return r;
}
static ldm_result ex_latent_diffusion_create(ldm_config *cfg, const ldm_config_node *params, void *user, void *arg, void **out) {
    return ex__ld_create(cfg, params, user, arg, out, 0);
}
static ldm_result ex_ddpm_create(ldm_config *cfg, const ldm_config_node *params, void *user, void *arg, void **out) {
    return ex__ld_create(cfg, params, user, arg, out, 1);
}

static void ex__ld_help(FILE *f) {
    fprintf(f, "\n[model.params]  (target ldm.models.diffusion.ddpm.LatentDiffusion, or DDPM without first_stage_config)\n");
    ldm_config_schema_print(f, ldm_latent_diffusion_yaml_schema());
    fprintf(f, "\n[model.params.scheduler_config.params]  (ldm.lr_scheduler.LambdaLinearScheduler, LambdaWarmUpCosineScheduler2, "
               "LambdaWarmUpCosineScheduler)\n");
    ldm_config_schema_print(f, ex_ld_sched_cfg_schema());
    fprintf(f, "\n[lightning.callbacks.image_logger.params.log_images_kwargs]  (diffusion models)\n");
    ldm_config_schema_print(f, ex_ld_logimg_cfg_schema());
}

static const ex_model_class ex_latent_diffusion_class = {"ldm.models.diffusion.ddpm.LatentDiffusion", "LatentDiffusion",
                                                         ex_latent_diffusion_create, ex__ld_help};
static void ex__ddpm_help(FILE *f) {
    fprintf(f, "\n[model.params]  (target ldm.models.diffusion.ddpm.DDPM: the LatentDiffusion table above, without first_stage_config "
               "and cond_stage_config)\n");
}
static const ex_model_class ex_ddpm_class = {"ldm.models.diffusion.ddpm.DDPM", "DDPM", ex_ddpm_create, ex__ddpm_help};

#endif /* EX_MODEL_DIFFUSION_H */
