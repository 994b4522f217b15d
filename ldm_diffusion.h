/* ldm_diffusion.h - latent diffusion, exact to CompVis latent-diffusion: noise schedules and the
   DDPM / LatentDiffusion training objective, the denoisers (the LDM UNet with its
   SpatialTransformer, and DiT), and the DDPM / DDIM samplers with classifier-free guidance.
   v0.1

   Do this in exactly one C or C++ file before including it:
       #define LDM_IMPLEMENTATION          (every ldm_ header)
   ldm_diffusion.h includes ldm_nn.h and ldm_tensor.h.

   Shape legend: B batch, C channels, H, W latent (or pixel) size, T diffusion steps (1000),
   S sampling steps, N tokens (H*W), D model width, L context length, K classes.
       x_t, eps, x0  [B, C, H, W];  t [B] (integer steps stored as floats);  context [B, L, D]

   Sections, in the order the data flows:
     1. schedules and the diffusion process (q_sample, posterior, parameterizations, losses)
     2. denoisers (UNet + SpatialTransformer, DiT), all behind one call: ldm_denoiser
     3. samplers (DDPM ancestral, DDIM, classifier-free guidance)

   Example (sections 1 and 3): train a denoiser with EMA, then sample with guided DDIM.

       ldm_schedule sch;  ldm_schedule_config sc = {0};        // linear, T 1000, 1e-4 .. 2e-2, eps
       ldm_schedule_init(ctx, &sch, &sc);
       ldm_ema ema;  ldm_ema_init(ctx, &ema, P, 0.9999f, 1);   // LitEma over P's trainable parameters
       for (;;) {                                              // den: an ldm_denoiser (section 2)
           ldm_loss_log log;  ldm_loss_config lc = {0};
           ldm_tensor *loss = ldm_diffusion_p_losses(ctx, &sch, &lc, &den, x0, &cond, NULL, NULL, NULL, NULL, &log);
           ldm_backward(ctx, loss);  ldm_nn_optim_step(ctx, opt);  ldm_nn_optim_zero_grad(ctx, opt);
           ldm_ema_update(ctx, &ema);  ldm_step_reset(ctx);    // on_train_batch_end
       }
       ldm_ddim dd;  ldm_ddim_init(ctx, &dd, &sch, 50, 0, 0.0);           // 50 uniform steps, eta 0
       ldm_sample_opts so = {0};  so.cond = &c;  so.uncond = &uc;  so.guidance_scale = 3.0f;
       ldm_ema_store(ctx, &ema);  ldm_ema_copy_to(ctx, &ema);             // ema_scope
       ldm_tensor *z = ldm_ddim_sample(ctx, &dd, &sch, &den, ldm_shape4(4, 4, 32, 32), &so);
       ldm_ema_restore(ctx, &ema);

   Public API of sections 1 and 3 (ddpm.py, ddim.py, util.py, ema.py of CompVis latent-diffusion;
   v-prediction as in Stable Diffusion 2):
     ldm_schedule_init/free         register_schedule: every buffer computed in double, stored
                                    float32 (linear, sqrt_linear, sqrt, cosine or given betas)
     ldm_make_beta_schedule         make_beta_schedule; *_parse: config strings to enums
     ldm_diffusion_extract          schedule values gathered per sample, [B, 1, ...]
     ldm_diffusion_q_sample, _predict_start_from_noise, _predict_start_from_v,
     _predict_eps_from_v, _get_v, _q_posterior, _p_mean_variance
                                    the diffusion process on tensors (autograd flows through)
     ldm_diffusion_p_losses         LatentDiffusion.p_losses (eps | x0 | v, l2 | l1, learned
                                    logvar, vlb term), logged under CompVis' keys
     ldm_diffusion_logvar_param     the learned "logvar" parameter (learn_logvar, logvar_init)
     ldm_ema_init/update/copy_to/store/restore/free, ldm_ema_state_name/save/load
                                    LitEma over a registry's parameter block
     ldm_ddim_init/free             make_ddim_timesteps (uniform | quad) + sampling parameters
     ldm_diffusion_model_output     model call with classifier-free guidance ([uncond; cond] batch)
     ldm_ddpm_step, ldm_ddpm_sample p_sample, p_sample_loop (no noise at t = 0)
     ldm_ddim_update, _step, _sample  p_sample_ddim, ddim_sampling
   Timesteps are host int arrays (t[B]); noise is drawn from the ctx RNG unless given (tests
   pass it explicitly). Samplers run without grad, keep memory bounded by rewinding the arena
   every step (the returned sample is a leaf in the arena) and report progress and the
   x_inter / pred_x0 intermediates through callbacks (copy what you keep: each step's tensors
   are freed by the next).
*/
#ifndef LDM_DIFFUSION_H
#define LDM_DIFFUSION_H

#include "ldm_nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- 1. schedules and the diffusion process ------------------------------------------------ */
/* @@ section 1 declarations @@ */
/* Beta schedules (make_beta_schedule). Betas and every derived buffer are computed in double
   and only then stored as float32, as register_schedule does. */
typedef enum {
    LDM_BETA_LINEAR = 0,      /* linspace(sqrt(b0), sqrt(b1), T)^2 */
    LDM_BETA_SQRT_LINEAR = 1, /* linspace(b0, b1, T) (despite its name) */
    LDM_BETA_SQRT = 2,        /* linspace(b0, b1, T)^0.5 */
    LDM_BETA_COSINE = 3       /* 1 - f(t+1)/f(t), f(t) = cos((t/T + s)/(1 + s) * pi/2)^2, clipped to [0, 0.999] */
} ldm_beta_schedule;
/* What the denoiser predicts. v (v = sqrt(a)*eps - sqrt(1-a)*x0) is the Stable Diffusion 2
   extension of CompVis' ddpm.py; DDIM supports all three. */
typedef enum { LDM_PRED_EPS = 0, LDM_PRED_X0 = 1, LDM_PRED_V = 2 } ldm_parameterization;
typedef enum { LDM_LOSS_L2 = 0, LDM_LOSS_L1 = 1 } ldm_loss_type;

/* "linear", "sqrt_linear", "sqrt", "cosine" (config strings); "eps", "x0", "v"; "l2", "l1". */
LDM_API ldm_result ldm_beta_schedule_parse(ldm_ctx *ctx, const char *name, ldm_beta_schedule *out);
LDM_API ldm_result ldm_parameterization_parse(ldm_ctx *ctx, const char *name, ldm_parameterization *out);
LDM_API ldm_result ldm_loss_type_parse(ldm_ctx *ctx, const char *name, ldm_loss_type *out);
/* make_beta_schedule: T betas in double. */
LDM_API ldm_result ldm_make_beta_schedule(ldm_ctx *ctx, ldm_beta_schedule schedule, int T, double linear_start,
                                          double linear_end, double cosine_s, double *betas);

/* Zero means the default (DDPM's constructor arguments). */
typedef struct ldm_schedule_config {
    ldm_beta_schedule schedule;   /* LDM_BETA_LINEAR */
    int timesteps;                /* T; 0: 1000 */
    double linear_start;          /* 0: 1e-4 */
    double linear_end;            /* 0: 2e-2 */
    double cosine_s;              /* 0: 8e-3 */
    double v_posterior;           /* posterior variance (1 - v)*beta_tilde + v*beta; 0 */
    ldm_parameterization parameterization; /* picks lvlb_weights */
    const double *given_betas;    /* timesteps betas that replace the named schedule (given_betas), or NULL */
} ldm_schedule_config;

/* register_schedule's buffers, host float32 arrays of T values each (one allocation). */
typedef struct ldm_schedule {
    int T;
    ldm_parameterization parameterization;
    double v_posterior;
    float *betas, *alphas_cumprod, *alphas_cumprod_prev;
    float *sqrt_alphas_cumprod, *sqrt_one_minus_alphas_cumprod, *log_one_minus_alphas_cumprod;
    float *sqrt_recip_alphas_cumprod, *sqrt_recipm1_alphas_cumprod;
    float *posterior_variance, *posterior_log_variance_clipped;   /* log(max(var, 1e-20)) */
    float *posterior_mean_coef1, *posterior_mean_coef2;
    /* eps: beta^2 / (2 var alpha (1 - alphas_cumprod)); x0: 0.5 sqrt(ac) / (2 - ac) (CompVis'
       "2.*1 - ac"); v: 1. Computed in float32 from the float32 buffers as ddpm.py does;
       lvlb_weights[0] = lvlb_weights[1]. */
    float *lvlb_weights;
    void *mem;
} ldm_schedule;
LDM_API ldm_result ldm_schedule_init(ldm_ctx *ctx, ldm_schedule *s, const ldm_schedule_config *cfg);
LDM_API void ldm_schedule_free(ldm_schedule *s);

/* The diffusion process on tensors x [B, ...] (any rank >= 1) with host timesteps t[B] in
   [0, T). Schedule values are gathered per sample into a [B, 1, ...] tensor and multiplied in
   (autograd flows through x / noise / model outputs). Each returns NULL on error (a step
   outside [0, T) is one; ldm_diffusion_extract, which does not know T, trusts t). */
LDM_API ldm_tensor *ldm_diffusion_extract(ldm_ctx *ctx, const float *values, const int *t, const ldm_tensor *like);
LDM_API ldm_tensor *ldm_diffusion_q_sample(ldm_ctx *ctx, const ldm_schedule *s, ldm_tensor *x0, const int *t, ldm_tensor *noise);
LDM_API ldm_tensor *ldm_diffusion_predict_start_from_noise(ldm_ctx *ctx, const ldm_schedule *s, ldm_tensor *x_t, const int *t, ldm_tensor *eps);
LDM_API ldm_tensor *ldm_diffusion_predict_start_from_v(ldm_ctx *ctx, const ldm_schedule *s, ldm_tensor *x_t, const int *t, ldm_tensor *v);
LDM_API ldm_tensor *ldm_diffusion_predict_eps_from_v(ldm_ctx *ctx, const ldm_schedule *s, ldm_tensor *x_t, const int *t, ldm_tensor *v);
LDM_API ldm_tensor *ldm_diffusion_get_v(ldm_ctx *ctx, const ldm_schedule *s, ldm_tensor *x0, const int *t, ldm_tensor *noise);
/* q(x_{t-1} | x_t, x_0): mean, variance and clipped log-variance ([B, 1, ...]); any output
   pointer may be NULL. */
LDM_API ldm_result ldm_diffusion_q_posterior(ldm_ctx *ctx, const ldm_schedule *s, ldm_tensor *x0, ldm_tensor *x_t, const int *t,
                                             ldm_tensor **mean, ldm_tensor **variance, ldm_tensor **log_variance);
/* p_mean_variance from a model output (eps, x0 or v by s->parameterization): x0_hat (clamped
   to [-1, 1] when clip_denoised), then q_posterior(x0_hat, x_t). Outputs may be NULL. */
LDM_API ldm_result ldm_diffusion_p_mean_variance(ldm_ctx *ctx, const ldm_schedule *s, ldm_tensor *model_out, ldm_tensor *x_t,
                                                 const int *t, int clip_denoised, ldm_tensor **mean, ldm_tensor **variance,
                                                 ldm_tensor **log_variance, ldm_tensor **x0_hat);

/* The training objective, LatentDiffusion.p_losses (DDPM.p_losses is the case logvar = NULL):
     target = noise | x0 | get_v(x0, noise, t);  loss_simple = loss(model(x_t, t, cond), target)
     averaged over every dim but the batch (l2: squared error, l1: absolute);
     loss = l_simple_weight * mean(loss_simple / exp(logvar[t]) + logvar[t])
          + original_elbo_weight * mean(lvlb_weights[t] * loss_simple).
   Zero means the default. */
typedef struct ldm_loss_config {
    ldm_loss_type loss_type;      /* LDM_LOSS_L2 */
    double l_simple_weight;       /* 0: 1 */
    double original_elbo_weight;  /* 0 (the vlb term is then only logged) */
    const char *prefix;           /* log key prefix; NULL: "train" ("val" for validation) */
} ldm_loss_config;
/* The logged values under CompVis' keys, in its order: "<prefix>/loss_simple", then with a
   learned logvar "<prefix>/loss_gamma" and "logvar" (the mean of all T values, no prefix),
   "<prefix>/loss_vlb", "<prefix>/loss". */
#define LDM_LOSS_LOG_MAX 5
typedef struct ldm_loss_log {
    int n;
    char key[LDM_LOSS_LOG_MAX][48];
    float value[LDM_LOSS_LOG_MAX];
} ldm_loss_log;
/* x0 [B, ...]; t: B host steps, or NULL to draw them uniformly from [0, T) with the ctx RNG
   (t_out, when given, receives the steps used); noise: NULL draws N(0, 1) from the ctx RNG;
   logvar: NULL (fixed at 0) or a [T] tensor (a parameter with requires_grad when learned:
   learn_logvar; gathered with ldm_embedding so its gradient flows). Returns the scalar loss
   [1]; log may be NULL. */
/* learn_logvar: registers LatentDiffusion's "logvar" parameter ([T], every value logvar_init)
   at the registry's current prefix, for ldm_diffusion_p_losses and the optimizer. Without
   learn_logvar CompVis keeps a fixed tensor outside the state dict: pass logvar NULL (0) or
   any [T] tensor without requires_grad. */
LDM_API ldm_tensor *ldm_diffusion_logvar_param(ldm_nn_params *P, int T, float logvar_init);
struct ldm_denoiser; /* section 2 */
struct ldm_cond;
LDM_API ldm_tensor *ldm_diffusion_p_losses(ldm_ctx *ctx, const ldm_schedule *s, const ldm_loss_config *cfg,
                                           const struct ldm_denoiser *model, ldm_tensor *x0, const struct ldm_cond *cond,
                                           const int *t, int *t_out, ldm_tensor *noise, ldm_tensor *logvar,
                                           ldm_loss_log *log);

/* EMA of a model's trainable parameters (ldm/modules/ema.py LitEma). The shadow mirrors the
   registry's parameter block (same layout, same device); only parameters with requires_grad
   at update time are averaged or copied, like LitEma's. */
typedef struct ldm_ema {
    ldm_nn_params *P;
    float *shadow;                /* parameter-block mirror (device memory) */
    float *stored;                /* ldm_ema_store's copy, or NULL */
    float decay;                  /* 0.9999 by default */
    int num_updates;              /* -1: no warm-up (use_num_upates=False) */
    void *raw_shadow, *raw_stored;
} ldm_ema;
/* decay 0 means 0.9999; the shadow starts as a copy of the parameters. */
LDM_API ldm_result ldm_ema_init(ldm_ctx *ctx, ldm_ema *ema, ldm_nn_params *P, float decay, int use_num_updates);
LDM_API void ldm_ema_free(ldm_ctx *ctx, ldm_ema *ema);
/* LitEma.forward: num_updates += 1; d = min(decay, (1 + n)/(10 + n)) (n counted when
   use_num_updates); shadow -= (1 - d)*(shadow - param), in float32 as torch does. */
LDM_API ldm_result ldm_ema_update(ldm_ctx *ctx, ldm_ema *ema);
LDM_API ldm_result ldm_ema_copy_to(ldm_ctx *ctx, ldm_ema *ema);  /* shadow -> parameters */
LDM_API ldm_result ldm_ema_store(ldm_ctx *ctx, ldm_ema *ema);    /* remember the parameters */
LDM_API ldm_result ldm_ema_restore(ldm_ctx *ctx, ldm_ema *ema);  /* and put them back */
/* The checkpoint name of a parameter's shadow: "model_ema." + name without its dots, after
   removing strip (e.g. "model.": LatentDiffusion's LitEma(self.model) sees
   "diffusion_model.out.2.weight", stored as "model_ema.diffusion_modelout2weight"). The
   other LitEma entries are "model_ema.decay" and "model_ema.num_updates". Returns the full
   length (the name is truncated to cap - 1 when longer). */
LDM_API size_t ldm_ema_state_name(const char *param_name, const char *strip, char *buf, size_t cap);
/* Writes the shadow under those names (+ decay, num_updates) as safetensors, float32. */
LDM_API ldm_result ldm_ema_save(ldm_ctx *ctx, const ldm_ema *ema, const char *path, const char *strip);
/* Reads the shadow (and decay, num_updates when present) from a checkpoint written by
   CompVis or ldm_ema_save; every trainable parameter must be found (strict). */
LDM_API ldm_result ldm_ema_load(ldm_ctx *ctx, ldm_ema *ema, const char *path, const char *strip);

/* ---- 2. denoisers -------------------------------------------------------------------------- */
/* The one call a sampler or a training step makes: model output for x_t at steps t, with an
   optional conditioning (class labels, a context sequence, or channels concatenated to x_t).
   Every denoiser (UNet, DiT) provides one; `self` is the model. */
typedef struct ldm_cond {
    ldm_tensor *y;        /* [B] class labels as floats (label_emb / y_embedder), or NULL */
    ldm_tensor *context;  /* [B, L, Dc] cross-attention context (SpatialTransformer), or NULL */
    ldm_tensor *concat;   /* [B, Cc, H, W] channels concatenated to x_t (super-resolution), or NULL */
} ldm_cond;
typedef ldm_tensor *(*ldm_denoiser_fn)(ldm_ctx *ctx, void *self, ldm_tensor *x, ldm_tensor *t, const ldm_cond *cond);
typedef struct ldm_denoiser { ldm_denoiser_fn forward; void *self; } ldm_denoiser;
/* @@ section 2 declarations @@ */

/* ---- 3. samplers --------------------------------------------------------------------------- */
/* @@ section 3 declarations @@ */
/* DDIM's schedule (make_ddim_timesteps + make_ddim_sampling_parameters), host arrays of S. */
typedef struct ldm_ddim {
    int S;                        /* steps; "uniform" gives ceil(T / (T / S)) of them */
    int *timesteps;               /* ascending: range(0, T, T / S) + 1 ("uniform") or
                                     int(linspace(0, sqrt(0.8 T), S)^2) + 1 ("quad") */
    float *alphas, *alphas_prev;  /* alphas_cumprod at timesteps[i] and timesteps[i-1] (alphas_cumprod[0] first) */
    float *sigmas;                /* eta * sqrt((1 - a')/(1 - a) * (1 - a/a')) */
    float *sqrt_one_minus_alphas;
    double eta;
    void *mem;
} ldm_ddim;
LDM_API ldm_result ldm_ddim_init(ldm_ctx *ctx, ldm_ddim *d, const ldm_schedule *s, int steps, int quad, double eta);
LDM_API void ldm_ddim_free(ldm_ddim *d);

/* Sampling options (zero means the default). Model calls see t as [B] floats. */
typedef struct ldm_sample_opts {
    const ldm_cond *cond;         /* conditioning, or NULL */
    const ldm_cond *uncond;       /* unconditional conditioning for classifier-free guidance, or NULL */
    float guidance_scale;         /* out = out_u + s*(out_c - out_u) when uncond is set and s != 1 (0: 1);
                                     one batched call on [uncond; cond] as CompVis does */
    ldm_tensor *x_T;              /* starting noise [B, ...]; NULL: N(0, 1) from the ctx RNG */
    ldm_tensor *noise;            /* [steps, B, ...]: the noise of each step in call order; NULL: ctx RNG */
    int clip_denoised;            /* DDPM: clamp x0_hat to [-1, 1] (DDPM class default on, LatentDiffusion off);
                                     DDIM: clamp pred_x0 (an extension; CompVis' ddim.py never clips) */
    int log_every_t;              /* 0: 100 */
    float temperature;            /* scales the noise of each step; 0: 1 */
    /* inpainting (log_images' "samples_inpainting"): with mask [B, 1 or C, ...] (1 = keep) and x0,
       x = q_sample(x0, t)*mask + (1 - mask)*x, its noise from the ctx RNG; DDPM applies it after
       each step, DDIM before each step, as CompVis does. NULL: off. */
    ldm_tensor *mask, *x0;
    /* after each step i of total (a progress bar) */
    void (*on_step)(void *user, int i, int total);
    /* the intermediates (x_inter, pred_x0): the start (i = -1, both x_T), then every step whose
       index (DDIM: total - i - 1, DDPM: t) is a multiple of log_every_t, and the first step */
    void (*on_log)(void *user, int i, ldm_tensor *x_inter, ldm_tensor *pred_x0);
    void *user;
} ldm_sample_opts;

/* The model output at (x, t) with guidance as opts describes (t: B host steps). */
LDM_API ldm_tensor *ldm_diffusion_model_output(ldm_ctx *ctx, const ldm_denoiser *model, ldm_tensor *x, const int *t,
                                               const ldm_sample_opts *opts);
/* One ancestral step (p_sample): mean + [t != 0] exp(0.5 log_variance) noise; noise NULL: ctx
   RNG. pred_x0 (may be NULL) receives x0_hat. */
LDM_API ldm_tensor *ldm_ddpm_step(ldm_ctx *ctx, const ldm_schedule *s, const ldm_denoiser *model, ldm_tensor *x, const int *t,
                                  const ldm_sample_opts *opts, ldm_tensor *noise, ldm_tensor **pred_x0);
/* p_sample_loop: x_T, then t = T-1 .. 0. Returns the sample (a leaf in the arena); runs without grad. */
LDM_API ldm_tensor *ldm_ddpm_sample(ldm_ctx *ctx, const ldm_schedule *s, const ldm_denoiser *model, ldm_shape shape,
                                    const ldm_sample_opts *opts);
/* One DDIM step at schedule index `index` (model step d->timesteps[index]) from a model
   output (p_sample_ddim's update; eps, x0 or v converted to (eps, pred_x0)):
     x' = sqrt(a')*pred_x0 + sqrt(1 - a' - sigma^2)*eps + sigma*noise. */
LDM_API ldm_tensor *ldm_ddim_update(ldm_ctx *ctx, const ldm_ddim *d, const ldm_schedule *s, ldm_tensor *model_out,
                                    ldm_tensor *x, int index, int clip_denoised, ldm_tensor *noise, ldm_tensor **pred_x0);
LDM_API ldm_tensor *ldm_ddim_step(ldm_ctx *ctx, const ldm_ddim *d, const ldm_schedule *s, const ldm_denoiser *model,
                                  ldm_tensor *x, int index, const ldm_sample_opts *opts, ldm_tensor *noise, ldm_tensor **pred_x0);
/* ddim_sampling: indices S-1 .. 0. Returns the sample (a leaf in the arena); runs without grad. */
LDM_API ldm_tensor *ldm_ddim_sample(ldm_ctx *ctx, const ldm_ddim *d, const ldm_schedule *s, const ldm_denoiser *model,
                                    ldm_shape shape, const ldm_sample_opts *opts);

#ifdef __cplusplus
}
#endif
#endif /* LDM_DIFFUSION_H */

/* ============================================================================================ */
#if defined(LDM_IMPLEMENTATION) || defined(LDM_DIFFUSION_IMPLEMENTATION)
#ifndef LDM_DIFFUSION_IMPLEMENTATION_DONE
#define LDM_DIFFUSION_IMPLEMENTATION_DONE

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- 1. schedules and the diffusion process ------------------------------------------------ */
/* @@ section 1 implementation @@ */
static int ldm__diff_streq(const char *a, const char *b) { return a && b && strcmp(a, b) == 0; }

LDM_API ldm_result ldm_beta_schedule_parse(ldm_ctx *ctx, const char *name, ldm_beta_schedule *out) {
    static const char *const names[4] = {"linear", "sqrt_linear", "sqrt", "cosine"};
    for (int i = 0; i < 4; i++)
        if (ldm__diff_streq(name, names[i])) { *out = (ldm_beta_schedule)i; return LDM_OK; }
    return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "beta_schedule '%s' unknown (hint: linear, sqrt_linear, sqrt or cosine)", name ? name : "(null)");
}
LDM_API ldm_result ldm_parameterization_parse(ldm_ctx *ctx, const char *name, ldm_parameterization *out) {
    if (ldm__diff_streq(name, "eps")) *out = LDM_PRED_EPS;
    else if (ldm__diff_streq(name, "x0")) *out = LDM_PRED_X0;
    else if (ldm__diff_streq(name, "v")) *out = LDM_PRED_V;
    else return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "parameterization '%s' unknown (hint: eps, x0 or v)", name ? name : "(null)");
    return LDM_OK;
}
LDM_API ldm_result ldm_loss_type_parse(ldm_ctx *ctx, const char *name, ldm_loss_type *out) {
    if (ldm__diff_streq(name, "l2")) *out = LDM_LOSS_L2;
    else if (ldm__diff_streq(name, "l1")) *out = LDM_LOSS_L1;
    else return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "loss_type '%s' unknown (hint: l2 or l1)", name ? name : "(null)");
    return LDM_OK;
}

/* torch.linspace in float64: start + i*step for the first half, end - (n-1-i)*step for the rest */
static double ldm__diff_linspace(double a, double b, int n, int i) {
    if (n == 1) return a;
    double step = (b - a) / (double)(n - 1);
    return i < n / 2 ? a + step * (double)i : b - step * (double)(n - 1 - i);
}

LDM_API ldm_result ldm_make_beta_schedule(ldm_ctx *ctx, ldm_beta_schedule schedule, int T, double linear_start,
                                          double linear_end, double cosine_s, double *betas) {
    if (T < 1) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_make_beta_schedule: %d timesteps (hint: T >= 1)", T);
    switch (schedule) {
    case LDM_BETA_LINEAR:
        for (int i = 0; i < T; i++) {
            double r = ldm__diff_linspace(sqrt(linear_start), sqrt(linear_end), T, i);
            betas[i] = r * r;
        }
        break;
    case LDM_BETA_SQRT_LINEAR:
        for (int i = 0; i < T; i++) betas[i] = ldm__diff_linspace(linear_start, linear_end, T, i);
        break;
    case LDM_BETA_SQRT:
        for (int i = 0; i < T; i++) betas[i] = sqrt(ldm__diff_linspace(linear_start, linear_end, T, i));
        break;
    case LDM_BETA_COSINE: {
        const double half_pi = 3.14159265358979323846 / 2;
        double f0 = cos(((0.0 / T + cosine_s) / (1 + cosine_s)) * half_pi), prev;
        f0 *= f0;
        prev = 1.0; /* f(0)/f(0) */
        for (int i = 0; i < T; i++) {
            /* same order of operations as ddpm.py: (t/T + s) / (1 + s) * pi/2 */
            double c = cos(((double)(i + 1) / T + cosine_s) / (1 + cosine_s) * half_pi);
            double f = c * c / f0;
            double b = 1 - f / prev;
            betas[i] = b < 0 ? 0 : b > 0.999 ? 0.999 : b;
            prev = f;
        }
        break;
    }
    default: return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_make_beta_schedule: unknown schedule %d", (int)schedule);
    }
    return LDM_OK;
}

LDM_API ldm_result ldm_schedule_init(ldm_ctx *ctx, ldm_schedule *s, const ldm_schedule_config *cfg) {
    ldm_schedule_config c;
    memset(s, 0, sizeof *s);
    if (cfg) c = *cfg; else memset(&c, 0, sizeof c);
    if (ctx->status) return ctx->status;
    int T = c.timesteps ? c.timesteps : 1000;
    if (T < 2) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_schedule_init: %d timesteps (hint: at least 2)", T);
    if ((unsigned)c.parameterization > LDM_PRED_V) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_schedule_init: unknown parameterization %d", (int)c.parameterization);
    const int nbuf = 13;
    double *b = (double *)LDM_MALLOC(sizeof(double) * (size_t)T * 3);
    float *m = (float *)LDM_MALLOC(sizeof(float) * (size_t)T * nbuf);
    if (!b || !m) { LDM_FREE(b); LDM_FREE(m); return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_schedule_init: out of memory"); }
    double *ac = b + T, *acp = b + 2 * T;
    if (c.given_betas) memcpy(b, c.given_betas, sizeof(double) * (size_t)T);
    else if (ldm_make_beta_schedule(ctx, c.schedule, T, c.linear_start != 0 ? c.linear_start : 1e-4, c.linear_end != 0 ? c.linear_end : 2e-2,
                                    c.cosine_s != 0 ? c.cosine_s : 8e-3, b)) { LDM_FREE(b); LDM_FREE(m); return ctx->status; }
    float **dst[13];
    dst[0] = &s->betas; dst[1] = &s->alphas_cumprod; dst[2] = &s->alphas_cumprod_prev;
    dst[3] = &s->sqrt_alphas_cumprod; dst[4] = &s->sqrt_one_minus_alphas_cumprod; dst[5] = &s->log_one_minus_alphas_cumprod;
    dst[6] = &s->sqrt_recip_alphas_cumprod; dst[7] = &s->sqrt_recipm1_alphas_cumprod; dst[8] = &s->posterior_variance;
    dst[9] = &s->posterior_log_variance_clipped; dst[10] = &s->posterior_mean_coef1; dst[11] = &s->posterior_mean_coef2;
    dst[12] = &s->lvlb_weights;
    for (int k = 0; k < nbuf; k++) *dst[k] = m + (size_t)k * T;
    double cum = 1.0, v = c.v_posterior;
    for (int i = 0; i < T; i++) {
        acp[i] = cum;
        cum *= 1.0 - b[i];          /* np.cumprod of alphas = 1 - betas */
        ac[i] = cum;
    }
    for (int i = 0; i < T; i++) {
        double a = 1.0 - b[i], pv = (1 - v) * b[i] * (1.0 - acp[i]) / (1.0 - ac[i]) + v * b[i];
        s->betas[i] = (float)b[i];
        s->alphas_cumprod[i] = (float)ac[i];
        s->alphas_cumprod_prev[i] = (float)acp[i];
        s->sqrt_alphas_cumprod[i] = (float)sqrt(ac[i]);
        s->sqrt_one_minus_alphas_cumprod[i] = (float)sqrt(1.0 - ac[i]);
        s->log_one_minus_alphas_cumprod[i] = (float)log(1.0 - ac[i]);
        s->sqrt_recip_alphas_cumprod[i] = (float)sqrt(1.0 / ac[i]);
        s->sqrt_recipm1_alphas_cumprod[i] = (float)sqrt(1.0 / ac[i] - 1);
        s->posterior_variance[i] = (float)pv;
        s->posterior_log_variance_clipped[i] = (float)log(pv > 1e-20 ? pv : 1e-20);
        s->posterior_mean_coef1[i] = (float)(b[i] * sqrt(acp[i]) / (1.0 - ac[i]));
        s->posterior_mean_coef2[i] = (float)((1.0 - acp[i]) * sqrt(a) / (1.0 - ac[i]));
        /* lvlb_weights: ddpm.py computes them from the float32 buffers, in float32 */
        if (c.parameterization == LDM_PRED_EPS) {
            float bf = s->betas[i], af = (float)a;
            s->lvlb_weights[i] = bf * bf / (2.0f * s->posterior_variance[i] * af * (1.0f - s->alphas_cumprod[i]));
        } else if (c.parameterization == LDM_PRED_X0) {
            float acf = s->alphas_cumprod[i];
            s->lvlb_weights[i] = 0.5f * sqrtf(acf) / (2.0f - acf);
        } else {
            s->lvlb_weights[i] = 1.0f;
        }
    }
    s->lvlb_weights[0] = s->lvlb_weights[1];
    LDM_FREE(b);
    s->T = T;
    s->parameterization = c.parameterization;
    s->v_posterior = v;
    s->mem = m;
    return LDM_OK;
}
LDM_API void ldm_schedule_free(ldm_schedule *s) {
    if (s && s->mem) LDM_FREE(s->mem);
    if (s) memset(s, 0, sizeof *s);
}

/* values[t[b]] as a [B, 1, ...] tensor of like's rank (extract_into_tensor) */
LDM_API ldm_tensor *ldm_diffusion_extract(ldm_ctx *ctx, const float *values, const int *t, const ldm_tensor *like) {
    if (!like || ctx->status) return NULL;
    int64_t B = like->shape[0];
    float *h = (float *)LDM_MALLOC(sizeof(float) * (size_t)(B ? B : 1));
    if (!h) { ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_diffusion_extract: out of memory"); return NULL; }
    for (int64_t i = 0; i < B; i++) h[i] = values[t[i]];
    ldm_shape sh;
    sh.ndim = like->ndim;
    sh.d[0] = B;
    for (int d = 1; d < like->ndim; d++) sh.d[d] = 1;
    ldm_tensor *r = ldm_from_host(ctx, sh, h);
    LDM_FREE(h);
    return r;
}
static ldm_result ldm__diff_check_t(ldm_ctx *ctx, const ldm_schedule *s, const ldm_tensor *x, const int *t, const char *fn) {
    if (ctx->status) return ctx->status;
    if (!x) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: NULL tensor", fn);
    if (!t) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: NULL timesteps", fn);
    for (int64_t i = 0; i < x->shape[0]; i++)
        if (t[i] < 0 || t[i] >= s->T)
            return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: timestep %d (sample %lld) outside [0, %d)", fn, t[i], (long long)i, s->T);
    return LDM_OK;
}
/* a[t]*x + b[t]*y, or a[t]*x - b[t]*y */
static ldm_tensor *ldm__diff_comb(ldm_ctx *ctx, const float *a, ldm_tensor *x, const float *b, ldm_tensor *y, const int *t, int minus) {
    ldm_tensor *ax = ldm_mul(ctx, ldm_diffusion_extract(ctx, a, t, x), x);
    ldm_tensor *by = ldm_mul(ctx, ldm_diffusion_extract(ctx, b, t, y), y);
    return minus ? ldm_sub(ctx, ax, by) : ldm_add(ctx, ax, by);
}
LDM_API ldm_tensor *ldm_diffusion_q_sample(ldm_ctx *ctx, const ldm_schedule *s, ldm_tensor *x0, const int *t, ldm_tensor *noise) {
    if (ldm__diff_check_t(ctx, s, x0, t, "ldm_diffusion_q_sample")) return NULL;
    return ldm__diff_comb(ctx, s->sqrt_alphas_cumprod, x0, s->sqrt_one_minus_alphas_cumprod, noise, t, 0);
}
LDM_API ldm_tensor *ldm_diffusion_predict_start_from_noise(ldm_ctx *ctx, const ldm_schedule *s, ldm_tensor *x_t, const int *t, ldm_tensor *eps) {
    if (ldm__diff_check_t(ctx, s, x_t, t, "ldm_diffusion_predict_start_from_noise")) return NULL;
    return ldm__diff_comb(ctx, s->sqrt_recip_alphas_cumprod, x_t, s->sqrt_recipm1_alphas_cumprod, eps, t, 1);
}
LDM_API ldm_tensor *ldm_diffusion_predict_start_from_v(ldm_ctx *ctx, const ldm_schedule *s, ldm_tensor *x_t, const int *t, ldm_tensor *v) {
    if (ldm__diff_check_t(ctx, s, x_t, t, "ldm_diffusion_predict_start_from_v")) return NULL;
    return ldm__diff_comb(ctx, s->sqrt_alphas_cumprod, x_t, s->sqrt_one_minus_alphas_cumprod, v, t, 1);
}
LDM_API ldm_tensor *ldm_diffusion_predict_eps_from_v(ldm_ctx *ctx, const ldm_schedule *s, ldm_tensor *x_t, const int *t, ldm_tensor *v) {
    if (ldm__diff_check_t(ctx, s, x_t, t, "ldm_diffusion_predict_eps_from_v")) return NULL;
    return ldm__diff_comb(ctx, s->sqrt_alphas_cumprod, v, s->sqrt_one_minus_alphas_cumprod, x_t, t, 0);
}
LDM_API ldm_tensor *ldm_diffusion_get_v(ldm_ctx *ctx, const ldm_schedule *s, ldm_tensor *x0, const int *t, ldm_tensor *noise) {
    if (ldm__diff_check_t(ctx, s, x0, t, "ldm_diffusion_get_v")) return NULL;
    return ldm__diff_comb(ctx, s->sqrt_alphas_cumprod, noise, s->sqrt_one_minus_alphas_cumprod, x0, t, 1);
}
LDM_API ldm_result ldm_diffusion_q_posterior(ldm_ctx *ctx, const ldm_schedule *s, ldm_tensor *x0, ldm_tensor *x_t, const int *t,
                                             ldm_tensor **mean, ldm_tensor **variance, ldm_tensor **log_variance) {
    if (ldm__diff_check_t(ctx, s, x_t, t, "ldm_diffusion_q_posterior")) return ctx->status;
    if (mean) *mean = ldm__diff_comb(ctx, s->posterior_mean_coef1, x0, s->posterior_mean_coef2, x_t, t, 0);
    if (variance) *variance = ldm_diffusion_extract(ctx, s->posterior_variance, t, x_t);
    if (log_variance) *log_variance = ldm_diffusion_extract(ctx, s->posterior_log_variance_clipped, t, x_t);
    return ctx->status;
}
/* x0_hat from a model output by parameterization */
static ldm_tensor *ldm__diff_x0_hat(ldm_ctx *ctx, const ldm_schedule *s, ldm_tensor *out, ldm_tensor *x_t, const int *t) {
    switch (s->parameterization) {
    case LDM_PRED_EPS: return ldm_diffusion_predict_start_from_noise(ctx, s, x_t, t, out);
    case LDM_PRED_X0: return out;
    default: return ldm_diffusion_predict_start_from_v(ctx, s, x_t, t, out);
    }
}
LDM_API ldm_result ldm_diffusion_p_mean_variance(ldm_ctx *ctx, const ldm_schedule *s, ldm_tensor *model_out, ldm_tensor *x_t,
                                                 const int *t, int clip_denoised, ldm_tensor **mean, ldm_tensor **variance,
                                                 ldm_tensor **log_variance, ldm_tensor **x0_hat) {
    if (ldm__diff_check_t(ctx, s, x_t, t, "ldm_diffusion_p_mean_variance")) return ctx->status;
    if (!model_out || !ldm_shape_eq(model_out, x_t))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_diffusion_p_mean_variance: the model output does not have x_t's shape (hint: out_channels = in_channels, learn_sigma off)");
    ldm_tensor *x0 = ldm__diff_x0_hat(ctx, s, model_out, x_t, t);
    if (clip_denoised) x0 = ldm_clamp(ctx, x0, -1.0f, 1.0f);
    if (x0_hat) *x0_hat = x0;
    return ldm_diffusion_q_posterior(ctx, s, x0, x_t, t, mean, variance, log_variance);
}

LDM_API ldm_tensor *ldm_diffusion_logvar_param(ldm_nn_params *P, int T, float logvar_init) {
    return ldm_nn_param(P, "logvar", ldm_shape1(T), ldm_nn_init_const(logvar_init));
}

/* torch.randint(0, T, (B,)) from the ctx RNG */
static void ldm__diff_sample_t(ldm_ctx *ctx, int T, int64_t B, int *t) {
    ldm_rng *r = ldm_ctx_rng(ctx);
    for (int64_t i = 0; i < B; i++) t[i] = (int)(ldm_rng_u64(r) % (uint64_t)T);
}
/* the model's t: [B] floats on the ctx device */
static ldm_tensor *ldm__diff_t_tensor(ldm_ctx *ctx, const int *t, int64_t B) {
    float *h = (float *)LDM_MALLOC(sizeof(float) * (size_t)(B ? B : 1));
    if (!h) { ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory"); return NULL; }
    for (int64_t i = 0; i < B; i++) h[i] = (float)t[i];
    ldm_tensor *r = ldm_from_host(ctx, ldm_shape1(B), h);
    LDM_FREE(h);
    return r;
}
static float ldm__diff_scalar(ldm_ctx *ctx, ldm_tensor *x) {
    float v = NAN;
    if (x && ldm_to_host(ctx, x, &v)) v = NAN;
    return v;
}
static void ldm__diff_log(ldm_loss_log *log, const char *prefix, const char *name, float v) {
    if (!log || log->n >= LDM_LOSS_LOG_MAX) return;
    if (prefix) snprintf(log->key[log->n], sizeof log->key[0], "%s/%s", prefix, name);
    else snprintf(log->key[log->n], sizeof log->key[0], "%s", name);
    log->value[log->n++] = v;
}

LDM_API ldm_tensor *ldm_diffusion_p_losses(ldm_ctx *ctx, const ldm_schedule *s, const ldm_loss_config *cfg,
                                           const ldm_denoiser *model, ldm_tensor *x0, const ldm_cond *cond,
                                           const int *t, int *t_out, ldm_tensor *noise, ldm_tensor *logvar,
                                           ldm_loss_log *log) {
    ldm_loss_config c;
    if (cfg) c = *cfg; else memset(&c, 0, sizeof c);
    const char *prefix = c.prefix ? c.prefix : "train";
    double lsw = c.l_simple_weight != 0 ? c.l_simple_weight : 1.0;
    if (log) log->n = 0;
    if (ctx->status || !x0) return NULL;
    if (!model || !model->forward) { ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_diffusion_p_losses: no denoiser"); return NULL; }
    if (x0->ndim < 2) { ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_diffusion_p_losses: x0 must be [B, ...] with at least 2 dims"); return NULL; }
    if (logvar && logvar->numel != s->T) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_diffusion_p_losses: logvar has %lld values, the schedule %d (hint: a [T] tensor)", (long long)logvar->numel, s->T);
        return NULL;
    }
    if (noise && !ldm_shape_eq(noise, x0)) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_diffusion_p_losses: noise does not have x0's shape (hint: NULL draws it)");
        return NULL;
    }
    int64_t B = x0->shape[0];
    int *tt = (int *)LDM_MALLOC(sizeof(int) * (size_t)(B ? B : 1));
    int64_t *ti = (int64_t *)LDM_MALLOC(sizeof(int64_t) * (size_t)(B ? B : 1));
    if (!tt || !ti) { LDM_FREE(tt); LDM_FREE(ti); ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_diffusion_p_losses: out of memory"); return NULL; }
    if (t) memcpy(tt, t, sizeof(int) * (size_t)B); else ldm__diff_sample_t(ctx, s->T, B, tt);
    if (t_out) memcpy(t_out, tt, sizeof(int) * (size_t)B);
    for (int64_t i = 0; i < B; i++) ti[i] = tt[i];
    ldm_tensor *loss = NULL;
    if (!noise) noise = ldm_randn(ctx, ldm_shape_of(x0));
    ldm_tensor *x_t = ldm_diffusion_q_sample(ctx, s, x0, tt, noise);
    ldm_tensor *out = x_t ? model->forward(ctx, model->self, x_t, ldm__diff_t_tensor(ctx, tt, B), cond) : NULL;
    if (!out && x_t && !ctx->status) ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_diffusion_p_losses: the denoiser returned NULL without an error");
    if (out && !ldm_shape_eq(out, x0)) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_diffusion_p_losses: the model output does not have x0's shape (hint: out_channels = in_channels)");
        out = NULL;
    }
    if (out) {
        ldm_tensor *target = s->parameterization == LDM_PRED_EPS ? noise
                           : s->parameterization == LDM_PRED_X0 ? x0 : ldm_diffusion_get_v(ctx, s, x0, tt, noise);
        ldm_tensor *d = ldm_sub(ctx, target, out);
        ldm_tensor *e = c.loss_type == LDM_LOSS_L1 ? ldm_abs(ctx, d) : ldm_square(ctx, d);
        unsigned dims = 0;
        for (int k = 1; k < x0->ndim; k++) dims |= LDM_DIM(k);
        ldm_tensor *ls = ldm_reshape(ctx, ldm_mean(ctx, e, dims, 0), ldm_shape1(B)); /* loss_simple per sample */
        ldm_tensor *lsm = ldm_mean_all(ctx, ls);
        ldm__diff_log(log, prefix, "loss_simple", ldm__diff_scalar(ctx, lsm));
        ldm_tensor *l = ls;
        if (logvar) {
            ldm_tensor *lt = ldm_reshape(ctx, ldm_embedding(ctx, ldm_reshape(ctx, logvar, ldm_shape2(s->T, 1)), B, ti), ldm_shape1(B));
            l = ldm_add(ctx, ldm_div(ctx, ls, ldm_exp(ctx, lt)), lt);
            if (logvar->requires_grad) { /* learn_logvar */
                ldm__diff_log(log, prefix, "loss_gamma", ldm__diff_scalar(ctx, ldm_mean_all(ctx, l)));
                int prev = ldm_set_grad_enabled(ctx, 0);
                ldm__diff_log(log, NULL, "logvar", ldm__diff_scalar(ctx, ldm_mean_all(ctx, logvar)));
                ldm_set_grad_enabled(ctx, prev);
            }
        }
        loss = ldm_scale(ctx, ldm_mean_all(ctx, l), (float)lsw);
        /* the vlb term only joins the graph when it is weighted */
        int prev = c.original_elbo_weight != 0 ? ldm_grad_enabled(ctx) : ldm_set_grad_enabled(ctx, 0);
        ldm_tensor *vlb = ldm_mean_all(ctx, ldm_mul(ctx, ldm_diffusion_extract(ctx, s->lvlb_weights, tt, ls), ls));
        ldm_set_grad_enabled(ctx, prev);
        ldm__diff_log(log, prefix, "loss_vlb", ldm__diff_scalar(ctx, vlb));
        if (c.original_elbo_weight != 0) loss = ldm_add(ctx, loss, ldm_scale(ctx, vlb, (float)c.original_elbo_weight));
        ldm__diff_log(log, prefix, "loss", ldm__diff_scalar(ctx, loss));
    }
    LDM_FREE(tt);
    LDM_FREE(ti);
    return ctx->status ? NULL : loss;
}

/* ---- EMA (LitEma) ---- */
static void *ldm__ema_alloc(ldm_ctx *ctx, ldm_device d, int64_t n, void **raw) {
    *raw = ctx->be[d]->alloc(ctx->be_state[d], (size_t)n * sizeof(float) + 64);
    return *raw ? (void *)(((uintptr_t)*raw + 63) & ~(uintptr_t)63) : NULL;
}
static void ldm__ema_copy(ldm_ctx *ctx, ldm_device d, float *dst, const float *src, int64_t n) {
    ctx->be[d]->copy(ctx->be_state[d], dst, d, src, d, (size_t)n * sizeof(float));
}
LDM_API ldm_result ldm_ema_init(ldm_ctx *ctx, ldm_ema *ema, ldm_nn_params *P, float decay, int use_num_updates) {
    memset(ema, 0, sizeof *ema);
    if (ctx->status) return ctx->status;
    if (decay == 0) decay = 0.9999f;
    if (!(decay >= 0 && decay <= 1)) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_ema_init: decay %g is outside [0, 1]", (double)decay);
    int64_t n;
    float *p = ldm_nn_block(P, LDM_NN_BLOCK_PARAMS, &n);
    if (!p && n) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_ema_init: the registry has no parameter block (hint: call ldm_nn_params_alloc first)");
    ldm_device d = ldm_nn_params_device(P);
    ema->P = P;
    ema->decay = decay;
    ema->num_updates = use_num_updates ? 0 : -1;
    if (n) {
        ema->shadow = (float *)ldm__ema_alloc(ctx, d, n, &ema->raw_shadow);
        if (!ema->shadow) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_ema_init: cannot allocate %.1f MiB for the shadow", (double)n * 4 / 1048576.0);
        ldm__ema_copy(ctx, d, ema->shadow, p, n);
    }
    return ctx->status;
}
LDM_API void ldm_ema_free(ldm_ctx *ctx, ldm_ema *ema) {
    if (!ema || !ema->P) return;
    ldm_device d = ldm_nn_params_device(ema->P);
    if (ema->raw_shadow) ctx->be[d]->free(ctx->be_state[d], ema->raw_shadow);
    if (ema->raw_stored) ctx->be[d]->free(ctx->be_state[d], ema->raw_stored);
    memset(ema, 0, sizeof *ema);
}
/* Runs of consecutive trainable parameters (offsets are in registration order), so a model
   trained whole is one run: [*begin, *end) floats of the block, entries [i, *next). */
static int ldm__ema_run(const ldm_nn_params *P, int i, int64_t *begin, int64_t *end, int *next) {
    int n = ldm_nn_count(P);
    for (; i < n; i++) {
        const ldm_nn_entry *e = ldm_nn_entry_at(P, i);
        if (e->kind == LDM_NN_PARAM && e->t->requires_grad) break;
    }
    if (i >= n) return 0;
    const ldm_nn_entry *e = ldm_nn_entry_at(P, i);
    *begin = e->offset;
    *end = e->offset + e->t->numel;
    for (i++; i < n; i++) {
        e = ldm_nn_entry_at(P, i);
        if (e->kind != LDM_NN_PARAM) continue;        /* buffers live in another block */
        if (!e->t->requires_grad) break;
        *end = e->offset + e->t->numel;
    }
    *next = i;
    return 1;
}
LDM_API ldm_result ldm_ema_update(ldm_ctx *ctx, ldm_ema *ema) {
    if (ctx->status) return ctx->status;
    if (!ema->P) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_ema_update: not initialised (hint: ldm_ema_init)");
    float decay = ema->decay;
    if (ema->num_updates >= 0) {
        ema->num_updates++;
        /* torch: int tensor / int tensor is a float32 division */
        float w = (float)(1 + ema->num_updates) / (float)(10 + ema->num_updates);
        if (w < decay) decay = w;
    }
    float omd = 1.0f - decay;
    int64_t n, b, e;
    float *p = ldm_nn_block(ema->P, LDM_NN_BLOCK_PARAMS, &n);
    ldm_device d = ldm_nn_params_device(ema->P);
    int prev = ldm_set_grad_enabled(ctx, 0), i = 0, next;
    while (ldm__ema_run(ema->P, i, &b, &e, &next)) {
        /* shadow -= omd * (shadow - param), the ops of LitEma.forward, on any device, in
           chunks of 4M floats so the temporaries stay small for big models */
        for (int64_t o = b; o < e && !ctx->status; o += (int64_t)1 << 22) {
            int64_t len = e - o < ((int64_t)1 << 22) ? e - o : (int64_t)1 << 22;
            ldm_mark m = ldm_arena_mark(ctx);
            ldm_tensor sw = ldm_tensor_wrap(ema->shadow + o, ldm_shape1(len), d);
            ldm_tensor pw = ldm_tensor_wrap(p + o, ldm_shape1(len), d);
            ldm_tensor *r = ldm_sub(ctx, &sw, ldm_scale(ctx, ldm_sub(ctx, &sw, &pw), omd));
            if (r) ldm__ema_copy(ctx, d, ema->shadow + o, r->data, len);
            ldm_arena_rewind(ctx, m);
        }
        i = next;
    }
    ldm_set_grad_enabled(ctx, prev);
    return ctx->status;
}
LDM_API ldm_result ldm_ema_copy_to(ldm_ctx *ctx, ldm_ema *ema) {
    if (ctx->status) return ctx->status;
    if (!ema->P) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_ema_copy_to: not initialised (hint: ldm_ema_init)");
    int64_t n, b, e;
    float *p = ldm_nn_block(ema->P, LDM_NN_BLOCK_PARAMS, &n);
    int i = 0, next;
    while (ldm__ema_run(ema->P, i, &b, &e, &next)) {
        ldm__ema_copy(ctx, ldm_nn_params_device(ema->P), p + b, ema->shadow + b, e - b);
        i = next;
    }
    return ctx->status;
}
LDM_API ldm_result ldm_ema_store(ldm_ctx *ctx, ldm_ema *ema) {
    if (ctx->status) return ctx->status;
    if (!ema->P) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_ema_store: not initialised (hint: ldm_ema_init)");
    int64_t n;
    float *p = ldm_nn_block(ema->P, LDM_NN_BLOCK_PARAMS, &n);
    ldm_device d = ldm_nn_params_device(ema->P);
    if (!n) return LDM_OK;
    if (!ema->stored) ema->stored = (float *)ldm__ema_alloc(ctx, d, n, &ema->raw_stored);
    if (!ema->stored) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_ema_store: cannot allocate %.1f MiB", (double)n * 4 / 1048576.0);
    ldm__ema_copy(ctx, d, ema->stored, p, n);
    return ctx->status;
}
LDM_API ldm_result ldm_ema_restore(ldm_ctx *ctx, ldm_ema *ema) {
    if (ctx->status) return ctx->status;
    int64_t n;
    if (!ema->P || !ema->stored) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_ema_restore: nothing stored (hint: ldm_ema_store before ldm_ema_copy_to)");
    float *p = ldm_nn_block(ema->P, LDM_NN_BLOCK_PARAMS, &n);
    ldm__ema_copy(ctx, ldm_nn_params_device(ema->P), p, ema->stored, n);
    return ctx->status;
}
LDM_API size_t ldm_ema_state_name(const char *param_name, const char *strip, char *buf, size_t cap) {
    static const char pre[] = "model_ema.";
    size_t k = 0, sl = strip ? strlen(strip) : 0;
    if (sl && strncmp(param_name, strip, sl) == 0) param_name += sl;
    for (const char *c = pre; *c; c++, k++) if (k + 1 < cap) buf[k] = *c;
    for (const char *c = param_name; *c; c++) {
        if (*c == '.') continue;
        if (k + 1 < cap) buf[k] = *c;
        k++;
    }
    if (cap) buf[k < cap ? k : cap - 1] = 0;
    return k;
}
LDM_API ldm_result ldm_ema_save(ldm_ctx *ctx, const ldm_ema *ema, const char *path, const char *strip) {
    if (ctx->status) return ctx->status;
    if (!ema->P) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_ema_save: not initialised (hint: ldm_ema_init)");
    int n = ldm_nn_count(ema->P), k = 0;
    int64_t total;
    ldm_nn_block(ema->P, LDM_NN_BLOCK_PARAMS, &total);
    ldm_named_data *t = (ldm_named_data *)LDM_MALLOC(sizeof(ldm_named_data) * (size_t)(n + 2));
    char *names = (char *)LDM_MALLOC((size_t)(n + 2) * 512);
    float *host = (float *)LDM_MALLOC(sizeof(float) * (size_t)(total + 2));
    ldm_result r = LDM_OK;
    if (!t || !names || !host) r = ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_ema_save: out of memory");
    else {
        ldm_tensor all = ldm_tensor_wrap(ema->shadow, ldm_shape1(total), ldm_nn_params_device(ema->P));
        if (total) r = ldm_to_host(ctx, &all, host);
        for (int i = 0; i < n && !r; i++) {
            const ldm_nn_entry *e = ldm_nn_entry_at(ema->P, i);
            if (e->kind != LDM_NN_PARAM || !e->t->requires_grad) continue;
            if (ldm_ema_state_name(e->name, strip, names + (size_t)k * 512, 512) >= 512) { r = ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_ema_save: name too long: %s", e->name); break; }
            t[k].name = names + (size_t)k * 512;
            t[k].data = host + e->offset;
            t[k].ndim = e->t->ndim;
            for (int j = 0; j < e->t->ndim; j++) t[k].shape[j] = e->t->shape[j];
            k++;
        }
        host[total] = ema->decay;
        host[total + 1] = (float)ema->num_updates;
        t[k].name = "model_ema.decay"; t[k].data = host + total; t[k].ndim = 0; k++;
        t[k].name = "model_ema.num_updates"; t[k].data = host + total + 1; t[k].ndim = 0; k++;
        if (!r) r = ldm_safetensors_write(ctx, path, k, t, LDM_F32, 0, NULL, NULL);
    }
    LDM_FREE(t); LDM_FREE(names); LDM_FREE(host);
    return r;
}
LDM_API ldm_result ldm_ema_load(ldm_ctx *ctx, ldm_ema *ema, const char *path, const char *strip) {
    if (ctx->status) return ctx->status;
    if (!ema->P) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_ema_load: not initialised (hint: ldm_ema_init)");
    ldm_weights *w;
    if (ldm_weights_open(ctx, &w, path)) return ctx->status;
    int n = ldm_nn_count(ema->P);
    char name[512];
    ldm_result r = LDM_OK;
    /* check every name and shape before writing anything */
    for (int pass = 0; pass < 2 && !r; pass++)
        for (int i = 0; i < n && !r; i++) {
            const ldm_nn_entry *e = ldm_nn_entry_at(ema->P, i);
            if (e->kind != LDM_NN_PARAM || !e->t->requires_grad) continue;
            ldm_ema_state_name(e->name, strip, name, sizeof name);
            int j = ldm_weights_find(w, name);
            if (j < 0) { r = ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "ldm_ema_load: %s has no '%s' for %s (hint: a checkpoint trained with use_ema, and strip = \"model.\")", path, name, e->name); break; }
            if (ldm_weights_info(w, j)->numel != e->t->numel) { r = ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_ema_load: '%s' has %lld values, %s %lld", name, (long long)ldm_weights_info(w, j)->numel, e->name, (long long)e->t->numel); break; }
            if (pass == 0) continue;
            float *h = (float *)LDM_MALLOC(sizeof(float) * (size_t)(e->t->numel ? e->t->numel : 1));
            if (!h) { r = ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_ema_load: out of memory"); break; }
            if (!(r = ldm_weights_read(ctx, w, j, h)))
                ctx->be[e->t->device]->copy(ctx->be_state[e->t->device], ema->shadow + e->offset, e->t->device, h, LDM_CPU, sizeof(float) * (size_t)e->t->numel);
            LDM_FREE(h);
        }
    float v;
    int j;
    if (!r && (j = ldm_weights_find(w, "model_ema.decay")) >= 0 && ldm_weights_info(w, j)->numel == 1 && !(r = ldm_weights_read(ctx, w, j, &v))) ema->decay = v;
    if (!r && (j = ldm_weights_find(w, "model_ema.num_updates")) >= 0 && ldm_weights_info(w, j)->numel == 1 && !(r = ldm_weights_read(ctx, w, j, &v))) ema->num_updates = (int)v;
    ldm_weights_close(w);
    return r;
}

/* ---- 2. denoisers -------------------------------------------------------------------------- */
/* @@ section 2 implementation @@ */

/* ---- 3. samplers --------------------------------------------------------------------------- */
/* @@ section 3 implementation @@ */
LDM_API ldm_result ldm_ddim_init(ldm_ctx *ctx, ldm_ddim *d, const ldm_schedule *s, int steps, int quad, double eta) {
    memset(d, 0, sizeof *d);
    if (ctx->status) return ctx->status;
    int T = s->T, S;
    if (steps < 1 || steps > T) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_ddim_init: %d steps for %d timesteps (hint: 1 <= steps < T)", steps, T);
    if (!quad) { int c = T / steps; S = (T + c - 1) / c; } /* range(0, T, T // S) can give more than S */
    else S = steps;
    void *mem = LDM_MALLOC((sizeof(int) + 4 * sizeof(float)) * (size_t)S);
    if (!mem) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_ddim_init: out of memory");
    d->mem = mem;
    d->alphas = (float *)mem;
    d->alphas_prev = d->alphas + S;
    d->sigmas = d->alphas_prev + S;
    d->sqrt_one_minus_alphas = d->sigmas + S;
    d->timesteps = (int *)(d->sqrt_one_minus_alphas + S);
    d->S = S;
    d->eta = eta;
    for (int i = 0; i < S; i++) {
        int ts;
        if (!quad) ts = i * (T / steps);
        else { /* np.linspace(0, sqrt(T * .8), S)**2 truncated */
            double stop = sqrt((double)T * 0.8), v = S == 1 ? 0.0 : i == S - 1 ? stop : (double)i * (stop / (double)(S - 1));
            ts = (int)(v * v);
        }
        d->timesteps[i] = ts + 1;   /* ddim.py: "+1 to get the final alpha values right" */
        if (ts + 1 >= T) {
            ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_ddim_init: step %d lands on timestep %d, outside [0, %d) (hint: fewer steps)", i, ts + 1, T);
            ldm_ddim_free(d);
            return ctx->status;
        }
    }
    for (int i = 0; i < S; i++) {
        float a = s->alphas_cumprod[d->timesteps[i]];
        float ap = i ? s->alphas_cumprod[d->timesteps[i - 1]] : s->alphas_cumprod[0];
        d->alphas[i] = a;
        d->alphas_prev[i] = ap;
        /* float64 from the float32 alphas (numpy/torch promotion in make_ddim_sampling_parameters) */
        d->sigmas[i] = (float)(eta * sqrt((1 - (double)ap) / (1 - (double)a) * (1 - (double)a / (double)ap)));
        d->sqrt_one_minus_alphas[i] = sqrtf(1.0f - a);
    }
    return LDM_OK;
}
LDM_API void ldm_ddim_free(ldm_ddim *d) {
    if (d && d->mem) LDM_FREE(d->mem);
    if (d) memset(d, 0, sizeof *d);
}

/* [a; b] along the batch; both or neither */
static ldm_tensor *ldm__diff_cat2(ldm_ctx *ctx, ldm_tensor *a, ldm_tensor *b, const char *what) {
    if (!a && !b) return NULL;
    if (!a || !b) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "classifier-free guidance: %s is set in only one of cond and uncond (hint: give both the same fields)", what);
        return NULL;
    }
    ldm_tensor *xs[2];
    xs[0] = a; xs[1] = b;
    return ldm_concat(ctx, 2, xs, 0);
}
LDM_API ldm_tensor *ldm_diffusion_model_output(ldm_ctx *ctx, const ldm_denoiser *model, ldm_tensor *x, const int *t,
                                               const ldm_sample_opts *opts) {
    if (ctx->status || !x) return NULL;
    if (!model || !model->forward) { ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_diffusion_model_output: no denoiser"); return NULL; }
    int64_t B = x->shape[0];
    const ldm_cond *c = opts ? opts->cond : NULL, *u = opts ? opts->uncond : NULL;
    float scale = opts && opts->guidance_scale != 0 ? opts->guidance_scale : 1.0f;
    ldm_tensor *out;
    if (!u || scale == 1.0f) {
        out = model->forward(ctx, model->self, x, ldm__diff_t_tensor(ctx, t, B), c);
    } else {
        /* one pass on [uncond; cond] (p_sample_ddim's x_in, t_in, c_in), then chunk(2) */
        ldm_cond cc, none;
        memset(&none, 0, sizeof none);
        if (!c) c = &none;
        cc.y = ldm__diff_cat2(ctx, u->y, c->y, "y");
        cc.context = ldm__diff_cat2(ctx, u->context, c->context, "context");
        cc.concat = ldm__diff_cat2(ctx, u->concat, c->concat, "concat");
        ldm_tensor *x2 = ldm__diff_cat2(ctx, x, x, "x");
        int *t2 = (int *)LDM_MALLOC(sizeof(int) * (size_t)(B ? 2 * B : 1));
        if (!t2) { ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_diffusion_model_output: out of memory"); return NULL; }
        memcpy(t2, t, sizeof(int) * (size_t)B);
        memcpy(t2 + B, t, sizeof(int) * (size_t)B);
        ldm_tensor *tt = ldm__diff_t_tensor(ctx, t2, 2 * B);
        LDM_FREE(t2);
        ldm_tensor *o2 = ctx->status ? NULL : model->forward(ctx, model->self, x2, tt, &cc);
        ldm_tensor *ou = ldm_slice(ctx, o2, 0, 0, B), *oc = ldm_slice(ctx, o2, 0, B, B);
        out = ldm_add(ctx, ou, ldm_scale(ctx, ldm_sub(ctx, oc, ou), scale));
    }
    if (!out && !ctx->status) ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_diffusion_model_output: the denoiser returned NULL without an error");
    if (out && !ldm_shape_eq(out, x)) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_diffusion_model_output: the model output does not have x's shape (hint: out_channels = in_channels, learn_sigma off)");
        return NULL;
    }
    return out;
}
/* the noise of step `step` from opts->noise, or the ctx RNG */
static ldm_tensor *ldm__diff_noise(ldm_ctx *ctx, const ldm_sample_opts *o, int step, const ldm_tensor *x) {
    if (!o || !o->noise) return ldm_randn(ctx, ldm_shape_of(x));
    if (step >= o->noise->shape[0] || o->noise->numel != o->noise->shape[0] * x->numel) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "sampler: opts.noise has %lld slices of %lld values, step %d needs one of %lld (hint: [steps, B, ...])",
                       (long long)o->noise->shape[0], (long long)(o->noise->numel / (o->noise->shape[0] ? o->noise->shape[0] : 1)), step, (long long)x->numel);
        return NULL;
    }
    return ldm_reshape(ctx, ldm_slice(ctx, o->noise, 0, step, 1), ldm_shape_of(x));
}

static ldm_tensor *ldm__diff_inpaint(ldm_ctx *ctx, const ldm_schedule *s, const ldm_sample_opts *o, ldm_tensor *x, int t) {
    if (!o || !o->mask || !x) return x;
    if (!o->x0) { ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "sampler: opts.mask without opts.x0 (hint: the image to keep)"); return NULL; }
    int64_t B = x->shape[0];
    int *tt = (int *)LDM_MALLOC(sizeof(int) * (size_t)(B ? B : 1));
    if (!tt) { ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "sampler: out of memory"); return NULL; }
    for (int64_t i = 0; i < B; i++) tt[i] = t;
    ldm_tensor *orig = ldm_diffusion_q_sample(ctx, s, o->x0, tt, ldm_randn(ctx, ldm_shape_of(o->x0)));
    LDM_FREE(tt);
    return ldm_add(ctx, ldm_mul(ctx, orig, o->mask), ldm_mul(ctx, ldm_affine(ctx, o->mask, -1.0f, 1.0f), x));
}

LDM_API ldm_tensor *ldm_ddpm_step(ldm_ctx *ctx, const ldm_schedule *s, const ldm_denoiser *model, ldm_tensor *x, const int *t,
                                  const ldm_sample_opts *opts, ldm_tensor *noise, ldm_tensor **pred_x0) {
    if (ldm__diff_check_t(ctx, s, x, t, "ldm_ddpm_step")) return NULL;
    ldm_tensor *out = ldm_diffusion_model_output(ctx, model, x, t, opts), *mean = NULL, *lv = NULL;
    if (ldm_diffusion_p_mean_variance(ctx, s, out, x, t, opts ? opts->clip_denoised : 0, &mean, NULL, &lv, pred_x0)) return NULL;
    if (!noise) noise = ldm_randn(ctx, ldm_shape_of(x));
    if (opts && opts->temperature != 0 && opts->temperature != 1.0f) noise = ldm_scale(ctx, noise, opts->temperature);
    /* nonzero_mask * exp(0.5 * log_variance): no noise at t == 0 */
    int64_t B = x->shape[0];
    float *h = (float *)LDM_MALLOC(sizeof(float) * (size_t)(B ? B : 1));
    if (!h) { ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_ddpm_step: out of memory"); return NULL; }
    for (int64_t i = 0; i < B; i++) h[i] = (t[i] != 0 ? 1.0f : 0.0f) * expf(0.5f * s->posterior_log_variance_clipped[t[i]]);
    ldm_tensor *sd = ldm_from_host(ctx, ldm_shape_of(lv), h);
    LDM_FREE(h);
    return ldm_add(ctx, mean, ldm_mul(ctx, sd, noise));
}

static ldm_result ldm__diff_sample_begin(ldm_ctx *ctx, const ldm_sample_opts *o, ldm_shape shape, ldm_tensor **x) {
    *x = o && o->x_T ? o->x_T : ldm_randn(ctx, shape);
    if (*x && o && o->x_T) {
        ldm_tensor tmp = ldm_tensor_wrap(NULL, shape, LDM_CPU);
        if (!ldm_shape_eq(*x, &tmp)) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "sampler: x_T does not have the requested shape");
    }
    if (*x && shape.d[0] > 4096) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "sampler: batch %lld is too large (hint: at most 4096 per call)", (long long)shape.d[0]);
    if (*x && o && o->on_log) o->on_log(o->user, -1, *x, *x);
    return ctx->status;
}

LDM_API ldm_tensor *ldm_ddpm_sample(ldm_ctx *ctx, const ldm_schedule *s, const ldm_denoiser *model, ldm_shape shape,
                                    const ldm_sample_opts *opts) {
    if (ctx->status) return NULL;
    int prev = ldm_set_grad_enabled(ctx, 0);
    int every = opts && opts->log_every_t > 0 ? opts->log_every_t : 100;
    ldm_tensor *x = NULL;
    int *t = (int *)LDM_MALLOC(sizeof(int) * (size_t)(shape.d[0] ? shape.d[0] : 1));
    if (!t) ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_ddpm_sample: out of memory");
    else if (!ldm__diff_sample_begin(ctx, opts, shape, &x)) {
        for (int i = s->T - 1, k = 0; i >= 0 && !ctx->status; i--, k++) {
            ldm_mark m = ldm_arena_mark(ctx);
            ldm_tensor *x0 = NULL;
            for (int64_t b = 0; b < shape.d[0]; b++) t[b] = i;
            ldm_tensor *xn = ldm_ddpm_step(ctx, s, model, x, t, opts, opts && opts->noise ? ldm__diff_noise(ctx, opts, k, x) : NULL, &x0);
            xn = ldm__diff_inpaint(ctx, s, opts, xn, i);
            if (!xn) break;
            if (opts && opts->on_log && (i % every == 0 || i == s->T - 1)) opts->on_log(opts->user, k, xn, x0);
            x = ldm_arena_keep(ctx, m, xn);
            if (opts && opts->on_step) opts->on_step(opts->user, k, s->T);
        }
    }
    LDM_FREE(t);
    ldm_set_grad_enabled(ctx, prev);
    return ctx->status ? NULL : x;
}

LDM_API ldm_tensor *ldm_ddim_update(ldm_ctx *ctx, const ldm_ddim *d, const ldm_schedule *s, ldm_tensor *model_out,
                                    ldm_tensor *x, int index, int clip_denoised, ldm_tensor *noise, ldm_tensor **pred_x0) {
    if (ctx->status || !x || !model_out) return NULL;
    if (index < 0 || index >= d->S) { ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_ddim_update: index %d outside [0, %d)", index, d->S); return NULL; }
    float a = d->alphas[index], ap = d->alphas_prev[index], sig = d->sigmas[index], s1m = d->sqrt_one_minus_alphas[index];
    int ts = d->timesteps[index];
    ldm_tensor *e_t, *x0;
    ldm_tensor *sqrt_a = ldm_full(ctx, ldm_shape1(1), sqrtf(a));
    if (s->parameterization == LDM_PRED_EPS) {
        e_t = model_out;
        x0 = ldm_div(ctx, ldm_sub(ctx, x, ldm_scale(ctx, e_t, s1m)), sqrt_a);
    } else if (s->parameterization == LDM_PRED_V) {
        /* the v conversions use the model's sqrt_alphas_cumprod[t] (Stable Diffusion 2's ddim.py) */
        float sa = s->sqrt_alphas_cumprod[ts], so = s->sqrt_one_minus_alphas_cumprod[ts];
        e_t = ldm_add(ctx, ldm_scale(ctx, model_out, sa), ldm_scale(ctx, x, so));
        x0 = ldm_sub(ctx, ldm_scale(ctx, x, sa), ldm_scale(ctx, model_out, so));
    } else {
        x0 = model_out;
        e_t = ldm_div(ctx, ldm_sub(ctx, x, ldm_mul(ctx, sqrt_a, x0)), ldm_full(ctx, ldm_shape1(1), s1m));
    }
    if (clip_denoised) x0 = ldm_clamp(ctx, x0, -1.0f, 1.0f);
    if (pred_x0) *pred_x0 = x0;
    float dir = sqrtf(1.0f - ap - sig * sig);
    ldm_tensor *xp = ldm_add(ctx, ldm_scale(ctx, x0, sqrtf(ap)), ldm_scale(ctx, e_t, dir));
    if (sig != 0.0f) {
        if (!noise) noise = ldm_randn(ctx, ldm_shape_of(x));
        xp = ldm_add(ctx, xp, ldm_scale(ctx, noise, sig));
    }
    return xp;
}
LDM_API ldm_tensor *ldm_ddim_step(ldm_ctx *ctx, const ldm_ddim *d, const ldm_schedule *s, const ldm_denoiser *model,
                                  ldm_tensor *x, int index, const ldm_sample_opts *opts, ldm_tensor *noise, ldm_tensor **pred_x0) {
    if (ctx->status || !x) return NULL;
    if (index < 0 || index >= d->S) { ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_ddim_step: index %d outside [0, %d)", index, d->S); return NULL; }
    int64_t B = x->shape[0];
    int *t = (int *)LDM_MALLOC(sizeof(int) * (size_t)(B ? B : 1));
    if (!t) { ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_ddim_step: out of memory"); return NULL; }
    for (int64_t b = 0; b < B; b++) t[b] = d->timesteps[index];
    ldm_tensor *out = ldm_diffusion_model_output(ctx, model, x, t, opts);
    LDM_FREE(t);
    if (opts && opts->temperature != 0 && opts->temperature != 1.0f && d->sigmas[index] != 0.0f) {
        if (!noise) noise = ldm_randn(ctx, ldm_shape_of(x));
        noise = ldm_scale(ctx, noise, opts->temperature);
    }
    return ldm_ddim_update(ctx, d, s, out, x, index, opts ? opts->clip_denoised : 0, noise, pred_x0);
}
LDM_API ldm_tensor *ldm_ddim_sample(ldm_ctx *ctx, const ldm_ddim *d, const ldm_schedule *s, const ldm_denoiser *model,
                                    ldm_shape shape, const ldm_sample_opts *opts) {
    if (ctx->status) return NULL;
    int prev = ldm_set_grad_enabled(ctx, 0);
    int every = opts && opts->log_every_t > 0 ? opts->log_every_t : 100;
    ldm_tensor *x = NULL;
    if (!ldm__diff_sample_begin(ctx, opts, shape, &x)) {
        for (int i = 0; i < d->S && !ctx->status; i++) {
            int index = d->S - i - 1;
            ldm_mark m = ldm_arena_mark(ctx);
            ldm_tensor *x0 = NULL;
            ldm_tensor *noise = opts && opts->noise ? ldm__diff_noise(ctx, opts, i, x) : NULL;
            ldm_tensor *xin = ldm__diff_inpaint(ctx, s, opts, x, d->timesteps[index]);
            ldm_tensor *xn = ldm_ddim_step(ctx, d, s, model, xin, index, opts, noise, &x0);
            if (!xn) break;
            if (opts && opts->on_log && (index % every == 0 || index == d->S - 1)) opts->on_log(opts->user, i, xn, x0);
            x = ldm_arena_keep(ctx, m, xn);
            if (opts && opts->on_step) opts->on_step(opts->user, i, d->S);
        }
    }
    ldm_set_grad_enabled(ctx, prev);
    return ctx->status ? NULL : x;
}

#endif /* LDM_DIFFUSION_IMPLEMENTATION_DONE */
#endif /* LDM_IMPLEMENTATION */
