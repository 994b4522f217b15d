/* ldm_diffusion.h - latent diffusion, exact to CompVis latent-diffusion: noise schedules and the
   DDPM / LatentDiffusion training objective, the denoisers (the LDM UNet with its
   SpatialTransformer, and DiT), the DDPM / DDIM samplers with classifier-free guidance, and
   the LatentDiffusion model that ties them to a first stage and a conditioning stage; and a
   spatio-temporal video DiT with Stability AI's sgm engine (continuous-sigma denoisers, the
   EDM-style loss, Euler EDM and DDIM samplers).
   v0.1

   Do this in exactly one C or C++ file before including it:
       #define LDM_IMPLEMENTATION          (every ldm_ header)
   ldm_diffusion.h includes ldm_vae.h (the first stage), ldm_nn.h and ldm_tensor.h; with
   ldm_config.h included first it also reads CompVis configs.

   Shape legend: B batch, C channels, H, W latent (or pixel) size, T diffusion steps (1000),
   S sampling steps, N tokens (H*W), D model width, L context length, K classes; in section
   5, F frames (the video DiT's num_frames), sigma [B] host noise levels.
       x_t, eps, x0  [B, C, H, W];  t [B] (integer steps stored as floats);  context [B, L, D]
       video latents [B, C, F, H, W]; video DiT tokens [B, (F/pt)(H/p)(W/p), D]

   Sections, in the order the data flows:
     1. schedules and the diffusion process (q_sample, posterior, parameterizations, losses)
     2. denoisers (UNet + SpatialTransformer, DiT), all behind one call: ldm_denoiser
     3. samplers (DDPM ancestral, DDIM, classifier-free guidance)
     4. LatentDiffusion (ddpm.py's LatentDiffusion: config, checkpoint, shared_step, sampling)
     5. video DiT (ldm_vdit: Conv3d patches, 3-D sin-cos, adaLN-Zero or adaLN-single) and the
        sgm engine (ldm_sgm_*: scalings, Denoiser / DiscreteDenoiser, discretizations,
        StandardDiffusionLoss, EulerEDMSampler, DDIM, VanillaCFG); its own docs and API list
        are at its declarations

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

   Example (section 4): a CompVis class-conditional LDM, sampled with guidance and EMA weights.

       ldm_config *cfg;  ldm_latent_diffusion_config lc;  ldm_latent_diffusion *ld;
       ldm_config_create(&cfg);  ldm_config_load(cfg, "cin256-v2.yaml");
       ldm_latent_diffusion_config_read(cfg, NULL, &lc);       // model.params
       ldm_latent_diffusion_create(ctx, &ld, &lc);
       ldm_latent_diffusion_load_opts lo = {1, 1};             // strict, EMA weights
       ldm_latent_diffusion_load(ctx, ld, "cin256-v2.ckpt", &lo);
       ldm_latent_diffusion_sample_opts so = {0};
       so.n = 4;  so.steps = 50;  so.guidance_scale = 3.0f;  so.c = labels;   // [4] floats
       ldm_tensor *img = ldm_latent_diffusion_sample(ctx, ld, &so, NULL);      // [4, 3, 256, 256]
       // training: loss = ldm_latent_diffusion_loss(ctx, ld, x, labels, NULL, NULL, NULL, &log)

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
   Section 2 (openaimodel.py UNetModel and attention.py SpatialTransformer; encoders/modules.py
   ClassEmbedder; facebookresearch DiT models.py), state-dict names as theirs:
     ldm_unet_config_read/_default/_check, ldm_unet_create/destroy/count_params/load/save
     ldm_unet_forward(x, t, context, y), ldm_unet_denoiser   the model and its ldm_denoiser
     ldm_timestep_embedding         util.timestep_embedding ([cos, sin], computed on t's device)
     ldm_class_embedder_*           ClassEmbedder: labels -> context [B, 1, D]
     ldm_dit_config_preset/_check, ldm_dit_create/destroy/forward/denoiser/load/save   DiT
   Section 4 (ddpm.py LatentDiffusion, DiffusionWrapper; ema.py; encoders ClassEmbedder):
     ldm_latent_diffusion_config_read   model.params of a CompVis config (schema-checked)
     ldm_latent_diffusion_create/destroy/load/save   whole CompVis state dicts (incl. model_ema.*)
     ldm_latent_diffusion_encode/decode encode_first_stage + get_first_stage_encoding /
                                        decode_first_stage (scale_factor), chunked first stage
     ldm_latent_diffusion_conditioning/cond   get_learned_conditioning, then the conditioning_key
     ldm_latent_diffusion_loss          shared_step (p_losses on the encoded batch)
     ldm_latent_diffusion_scale_by_std  the first batch's scale factor
     ldm_latent_diffusion_sample        DDIM / DDPM with guidance, decoded
   Section 5 (DiT models.py + PixArt-alpha's adaLN-single; sgm/modules/diffusionmodules):
     ldm_vdit_config_default/_check/_read, ldm_vdit_create/.../forward/denoiser   video DiT
     ldm_sgm_denoiser_*, ldm_sgm_denoise, ldm_sgm_scalings, ldm_sgm_discretize,
     ldm_sgm_loss, ldm_sgm_euler_edm_sample, ldm_sgm_ddim_sample, ldm_sgm_guided_denoise
   A config without first_stage_config is ddpm.py's DDPM (pixel space: encode/decode are the
   identity); lr_scale (an extension) conditions on the latent of the degraded input.
   Training them with the driver: examples/model_diffusion.h (the ex_model of build/ldm).
   Timesteps are host int arrays (t[B]); noise is drawn from the ctx RNG unless given (tests
   pass it explicitly). Samplers run without grad, keep memory bounded by rewinding the arena
   every step (the returned sample is a leaf in the arena) and report progress and the
   x_inter / pred_x0 intermediates through callbacks (copy what you keep: each step's tensors
   are freed by the next).
*/
#ifndef LDM_DIFFUSION_H
#define LDM_DIFFUSION_H

#include "ldm_nn.h"
#include "ldm_vae.h"   /* the first stage of section 4 */

#ifdef __cplusplus
extern "C" {
#endif

/* ---- 1. schedules and the diffusion process ------------------------------------------------ */
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
   [0, T) (q_sample's noise NULL: N(0, 1) from the ctx RNG). Schedule values are gathered per sample into a [B, 1, ...] tensor and multiplied in
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
   "<prefix>/loss_vlb", "<prefix>/loss", in an ldm_loss_log (ldm_nn.h). */
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
    ldm_tensor *concat;   /* [B, Cc, H, W] (video: [B, Cc, F, H, W]) channels concatenated to x_t (super-resolution), or NULL */
} ldm_cond;
typedef ldm_tensor *(*ldm_denoiser_fn)(ldm_ctx *ctx, void *self, ldm_tensor *x, ldm_tensor *t, const ldm_cond *cond);
typedef struct ldm_denoiser { ldm_denoiser_fn forward; void *self; } ldm_denoiser;
/* Shapes here: x [B, C, H, W] (dims 3: [B, C, T, H, W]), t [B], emb [B, 4*model_channels],
   context [B, L, context_dim], y [B]; DiT tokens [B, N, D] with N = (H/p)*(W/p).

   Example: the class-conditional ImageNet LDM (cin256-v2: UNet + SpatialTransformer whose
   context is the ClassEmbedder's [B, 1, 512]), from a CompVis checkpoint.

       ldm_config *cf;  ldm_unet_config uc;  ldm_unet *unet;  ldm_class_embedder *ce;
       ldm_config_create(&cf);  ldm_config_load(cf, "configs/cin256-v2.yaml");
       ldm_unet_config_read(cf, NULL, &uc);                   // model.params.unet_config.params
       ldm_unet_create(ctx, &unet, &uc);
       ldm_unet_load(ctx, unet, "cin256-v2.ckpt", "model.diffusion_model.", 1, NULL);
       ldm_class_embedder_create(ctx, &ce, 1001, 512);
       ldm_class_embedder_load(ctx, ce, "cin256-v2.ckpt", "cond_stage_model.", 1, NULL);
       ldm_cond c = {0};  c.context = ldm_class_embedder_forward(ctx, ce, labels);   // [B, 1, 512]
       ldm_denoiser d = ldm_unet_denoiser(unet);
       ldm_tensor *eps = d.forward(ctx, d.self, x_t, t, &c);

   UNet (ldm/modules/diffusionmodules/openaimodel.py UNetModel), state-dict names as CompVis:
       time_embed.0 / .2 (Linear, SiLU between), label_emb (Embedding, num_classes > 0),
       input_blocks.0.0 (conv_in); input_blocks.N.0 ResBlock [+ input_blocks.N.1 AttentionBlock
       or SpatialTransformer where the downsample rate ds is in attention_resolutions];
       input_blocks.N.0 Downsample (.op conv, or 2x2 average pool) or ResBlock(down) between
       levels; middle_block.0 ResBlock, .1 attention, .2 ResBlock; output_blocks.N (levels in
       reverse, num_res_blocks+1 each: ResBlock on concat(h, skip) [+ attention] [+ Upsample
       (.conv) or ResBlock(up) as the last layer of a level > 0]); out.0 GroupNorm, SiLU, out.2.
       ResBlock: in_layers.0 GroupNorm32, SiLU, in_layers.2 conv3x3; emb_layers.1 Linear(SiLU(emb))
       added (or, with use_scale_shift_norm, norm(h)*(1+scale)+shift); out_layers.0 norm, SiLU,
       dropout, out_layers.3 conv3x3 (zero-initialised); skip_connection 1x1 conv when the
       channels change. GroupNorm32: 32 groups, eps 1e-5, float32.
       AttentionBlock: norm, qkv (conv1d, weight [3C, C, 1]), attention, proj_out (conv1d,
       zero-initialised), + x. Heads: num_head_channels > 0 gives C / num_head_channels heads.
       The legacy head order (QKVAttentionLegacy, use_new_attention_order false) splits qkv's
       3C channels into heads first ([head][q|k|v][ch]); the new order splits q|k|v first.
       SpatialTransformer: norm (GroupNorm 32, eps 1e-6), proj_in (1x1 conv, or Linear with
       use_linear_in_transformer, SD2), transformer_blocks.N {norm1 + attn1 (self),
       norm2 + attn2 (cross on context, or self without one), norm3 + ff (ff.net.0.proj GEGLU
       to 2*4*inner, exact GELU gate; ff.net.2)}, proj_out (zero-initialised), + x. attn*:
       to_q / to_k / to_v without bias, to_out.0 with bias; heads * dim_head = inner.
       The head count per block follows UNetModel's own rules, `legacy` included.
       Timestep embedding: [cos, sin] of t * exp(-ln(10000) * i / half), i < half = C/2.
   DiT (facebookresearch/DiT models.py): x_embedder.proj (conv p x p, stride p) + pos_embed
       (fixed 2-D sin-cos, an nn.Parameter with requires_grad=False: in the state dict, never
       trained); t_embedder.mlp.0 / .2 on a 256-wide [cos, sin] embedding; y_embedder.
       embedding_table with an extra null class (index num_classes) when class_dropout_prob > 0;
       c = t_emb + y_emb; blocks.N: adaLN_modulation.1 (Linear(SiLU(c)) -> 6D: shift, scale,
       gate for attention and MLP), norm1/norm2 (LayerNorm without affine, eps 1e-6),
       attn.qkv / attn.proj, mlp.fc1 / fc2 (GELU tanh); final_layer: adaLN_modulation.1 (2D),
       norm_final, linear -> p*p*out_channels; unpatchify. learn_sigma: 2*in_channels out, the
       first half is eps. Init as DiT: xavier-uniform linears, zero biases, N(0, 0.02) label
       table and t MLP, adaLN-Zero (every modulation and the final linear zero).

   Weights: *_load reads safetensors / .ckpt / .pth through ldm_nn_load; `prefix` (may be NULL)
   selects and strips a name prefix, e.g. "model.diffusion_model." in a LatentDiffusion
   checkpoint (every other key is then ignored); strict lists every missing, unexpected and
   mis-shaped name. *_save writes the same names (prefix prepended when given). */

#define LDM_UNET_MAX_LEVELS 8

/* UNetModel's constructor arguments (unet_config.params). -1 means None / unset where the
   Python default is None or -1. */
typedef struct ldm_unet_config {
    int image_size, in_channels, model_channels, out_channels, num_res_blocks;
    int attention_resolutions[LDM_UNET_MAX_LEVELS], n_attn;  /* downsample rates (1, 2, 4, ...) */
    float dropout;
    int channel_mult[LDM_UNET_MAX_LEVELS], n_levels;
    int conv_resample, dims;      /* dims 2, or 3 (video: convs 3x3x3, resampling in H, W only) */
    int num_classes;              /* -1: not class-conditional */
    int num_heads, num_head_channels, num_heads_upsample;
    int use_scale_shift_norm, resblock_updown, use_new_attention_order;
    int use_spatial_transformer, transformer_depth, context_dim; /* context_dim -1: none */
    int legacy, use_linear_in_transformer;
} ldm_unet_config;

/* The keys, described once: X(name, kind, default, help); NULL default = required.
   use_checkpoint and use_fp16 are accepted and change nothing (recomputation and half
   precision do not change the result here). */
#define LDM_UNET_CONFIG_KEYS(X)                                                                 \
    X(image_size, INT, NULL, "nominal latent size (informational)")                            \
    X(in_channels, INT, NULL, "input channels (latent + concatenated conditioning)")           \
    X(model_channels, INT, NULL, "base channel count (a multiple of 32)")                      \
    X(out_channels, INT, NULL, "output channels")                                               \
    X(num_res_blocks, INT, NULL, "ResBlocks per level (decoder side: one more)")               \
    X(attention_resolutions, INT_LIST, NULL, "downsample rates that get attention")            \
    X(dropout, FLOAT, "0", "dropout in the ResBlocks")                                          \
    X(channel_mult, INT_LIST, "1,2,4,8", "channel multiplier per level")                       \
    X(conv_resample, BOOL, "true", "convolutional down/up-sampling")                           \
    X(dims, INT, "2", "2 (images) or 3 (video)")                                                \
    X(num_classes, INT, "-1", "classes of label_emb (-1: none)")                               \
    X(use_checkpoint, BOOL, "false", "gradient checkpointing (no effect here)")                \
    X(use_fp16, BOOL, "false", "half precision torso (no effect here: float32)")               \
    X(num_heads, INT, "-1", "attention heads (or set num_head_channels)")                      \
    X(num_head_channels, INT, "-1", "channels per head (overrides num_heads)")                 \
    X(num_heads_upsample, INT, "-1", "heads of the decoder AttentionBlocks (-1: num_heads)")   \
    X(use_scale_shift_norm, BOOL, "false", "FiLM-like emb conditioning in ResBlocks")          \
    X(resblock_updown, BOOL, "false", "ResBlocks for down/up-sampling")                        \
    X(use_new_attention_order, BOOL, "false", "split q|k|v before heads (QKVAttention)")       \
    X(use_spatial_transformer, BOOL, "false", "SpatialTransformer instead of AttentionBlock")  \
    X(transformer_depth, INT, "1", "BasicTransformerBlocks per SpatialTransformer")            \
    X(context_dim, INT, "-1", "cross-attention context width (-1: none)")                      \
    X(legacy, BOOL, "true", "CompVis's legacy head-size rule")                                 \
    X(use_linear_in_transformer, BOOL, "false", "proj_in/proj_out as Linear (SD2)")

LDM_API ldm_unet_config ldm_unet_config_default(void);   /* the Python defaults, sizes 0 */
/* Checks ranges and the head rules; the message names the key. */
LDM_API ldm_result ldm_unet_config_check(ldm_ctx *ctx, const ldm_unet_config *cfg);

typedef struct ldm_unet ldm_unet;
/* Registers and allocates the model on the context's device, initialised like PyTorch's
   defaults (zero_module where CompVis zeroes) from the context's RNG. */
LDM_API ldm_result ldm_unet_create(ldm_ctx *ctx, ldm_unet **unet, const ldm_unet_config *cfg);
LDM_API void ldm_unet_destroy(ldm_unet *unet);
/* Parameters of a config without allocating them (sum(p.numel() for p in parameters())). */
LDM_API ldm_result ldm_unet_count_params(ldm_ctx *ctx, const ldm_unet_config *cfg, int64_t *n);
LDM_API ldm_nn_params *ldm_unet_params(ldm_unet *unet);
LDM_API const ldm_unet_config *ldm_unet_cfg(const ldm_unet *unet);
LDM_API void ldm_unet_set_training(ldm_unet *unet, int on);     /* dropout on */
/* x [B, in_channels, H, W] (H, W divisible by 2^(levels-1)); t [B] (float steps);
   context [B, L, context_dim] or NULL; y [B] labels as floats or NULL (needed iff
   num_classes > 0). Returns [B, out_channels, H, W]. */
LDM_API ldm_tensor *ldm_unet_forward(ldm_ctx *ctx, ldm_unet *unet, ldm_tensor *x, ldm_tensor *t, ldm_tensor *context, ldm_tensor *y);
/* The denoiser call: cond->concat is concatenated to x on channels, then ldm_unet_forward. */
LDM_API ldm_denoiser ldm_unet_denoiser(ldm_unet *unet);
LDM_API ldm_result ldm_unet_load(ldm_ctx *ctx, ldm_unet *unet, const char *path, const char *prefix, int strict, ldm_nn_load_report *report);
LDM_API ldm_result ldm_unet_save(ldm_ctx *ctx, const ldm_unet *unet, const char *path, ldm_dtype dtype, const char *prefix);

/* util.timestep_embedding: [B, dim] = [cos(t f_i), sin(t f_i)] with f_i = exp(-ln(10000) i / half)
   (a zero column more when dim is odd), float32 arithmetic as torch's; no gradient to t. */
LDM_API ldm_tensor *ldm_timestep_embedding(ldm_ctx *ctx, ldm_tensor *t, int dim);

/* ClassEmbedder (ldm/modules/encoders/modules.py): y [B] -> embedding(y) [B, 1, embed_dim];
   its one parameter is `embedding.weight` (`cond_stage_model.embedding.weight` in a checkpoint). */
typedef struct ldm_class_embedder ldm_class_embedder;
LDM_API ldm_result ldm_class_embedder_create(ldm_ctx *ctx, ldm_class_embedder **ce, int n_classes, int embed_dim);
LDM_API void ldm_class_embedder_destroy(ldm_class_embedder *ce);
LDM_API ldm_nn_params *ldm_class_embedder_params(ldm_class_embedder *ce);
LDM_API ldm_tensor *ldm_class_embedder_forward(ldm_ctx *ctx, ldm_class_embedder *ce, ldm_tensor *y);
LDM_API ldm_result ldm_class_embedder_load(ldm_ctx *ctx, ldm_class_embedder *ce, const char *path, const char *prefix, int strict, ldm_nn_load_report *report);
LDM_API ldm_result ldm_class_embedder_save(ldm_ctx *ctx, const ldm_class_embedder *ce, const char *path, ldm_dtype dtype, const char *prefix);

/* DiT's constructor arguments. */
typedef struct ldm_dit_config {
    int input_size, patch_size, in_channels, hidden_size, depth, num_heads;
    float mlp_ratio, class_dropout_prob;
    int num_classes, learn_sigma;
} ldm_dit_config;
/* "DiT-XL/2" ... "DiT-S/8" with DiT's defaults (input 32, 4 channels, 1000 classes, dropout
   0.1, learn_sigma); LDM_ERR_NOT_FOUND for another name. */
LDM_API ldm_result ldm_dit_config_preset(ldm_ctx *ctx, const char *name, ldm_dit_config *cfg);
LDM_API ldm_result ldm_dit_config_check(ldm_ctx *ctx, const ldm_dit_config *cfg);

typedef struct ldm_dit ldm_dit;
LDM_API ldm_result ldm_dit_create(ldm_ctx *ctx, ldm_dit **dit, const ldm_dit_config *cfg);
LDM_API void ldm_dit_destroy(ldm_dit *dit);
LDM_API ldm_result ldm_dit_count_params(ldm_ctx *ctx, const ldm_dit_config *cfg, int64_t *n);
LDM_API ldm_nn_params *ldm_dit_params(ldm_dit *dit);
LDM_API const ldm_dit_config *ldm_dit_cfg(const ldm_dit *dit);
/* Training mode drops labels to the null class with probability class_dropout_prob (the
   context's RNG), as LabelEmbedder.token_drop; a label equal to num_classes is the null class. */
LDM_API void ldm_dit_set_training(ldm_dit *dit, int on);
/* x [B, in_channels, input_size, input_size], t [B], y [B] -> [B, out_channels, ., .]. */
LDM_API ldm_tensor *ldm_dit_forward(ldm_ctx *ctx, ldm_dit *dit, ldm_tensor *x, ldm_tensor *t, ldm_tensor *y);
LDM_API ldm_denoiser ldm_dit_denoiser(ldm_dit *dit);   /* uses cond->y */
/* Writes the fixed sin-cos pos_embed again (after ldm_nn_params_init, which zeroes it). */
LDM_API ldm_result ldm_dit_reset_pos_embed(ldm_ctx *ctx, ldm_dit *dit);
LDM_API ldm_result ldm_dit_load(ldm_ctx *ctx, ldm_dit *dit, const char *path, const char *prefix, int strict, ldm_nn_load_report *report);
LDM_API ldm_result ldm_dit_save(ldm_ctx *ctx, const ldm_dit *dit, const char *path, ldm_dtype dtype, const char *prefix);

#ifdef LDM_CONFIG_H
/* Config glue, compiled when ldm_config.h was included first. node may be the root (reads
   model.params.unet_config.params), the model node, its params, a unet_config node (target +
   params), or the UNet's params themselves (the first of these holding model_channels).
   Errors carry file:line (ldm_config_error). */
LDM_CONFIG_DECLARE(ldm_unet_yaml, LDM_UNET_CONFIG_KEYS);
LDM_API ldm_result ldm_unet_config_read(ldm_config *cfg, const ldm_config_node *node, ldm_unet_config *out);
#endif

/* ---- 3. samplers --------------------------------------------------------------------------- */
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

/* ---- 4. LatentDiffusion -------------------------------------------------------------------- */
/* ddpm.py LatentDiffusion as one object: the schedule, the denoiser (DiffusionWrapper around a
   UNet, or a DiT), the frozen first stage (ldm_vae), the conditioning stage and the optional
   LitEma of the denoiser.
     conditioning_key  what the denoiser gets (DiffusionWrapper): none; concat (channels
                       concatenated to z_t: super-resolution); crossattn (context of the
                       SpatialTransformers); adm (class labels as y: label_emb / DiT).
     cond stage        none (__is_unconditional__); ClassEmbedder (labels [B] -> [B, 1, D]);
                       identity (torch.nn.Identity: the input itself, e.g. the low-res image);
                       first stage (__is_first_stage__: the first stage's posterior mode);
                       low-res latent (lr_scale > 0, an ldm.h extension after the seed's
                       video super-resolution: the caller degrades the input itself, down by
                       1/lr_scale and back up, bicubic; the conditioning is that image's
                       first-stage latent, scale_factor * posterior mode, concatenated).
   Checkpoint names (a CompVis LatentDiffusion state dict): model.diffusion_model.*,
   first_stage_model.*, cond_stage_model.*, model_ema.* (the denoiser's names without dots, plus
   model_ema.decay / model_ema.num_updates), the schedule buffers (betas, alphas_cumprod, ...),
   scale_factor (scale_by_std) and logvar (learn_logvar). */
typedef enum { LDM_CONDKEY_NONE = 0, LDM_CONDKEY_CONCAT, LDM_CONDKEY_CROSSATTN, LDM_CONDKEY_ADM } ldm_conditioning_key;
typedef enum { LDM_CONDSTAGE_NONE = 0, LDM_CONDSTAGE_CLASS, LDM_CONDSTAGE_IDENTITY, LDM_CONDSTAGE_FIRST_STAGE, LDM_CONDSTAGE_LR_LATENT } ldm_cond_stage_kind;
typedef enum { LDM_DENOISER_UNET = 0, LDM_DENOISER_DIT = 1 } ldm_denoiser_kind;

/* LatentDiffusion's constructor arguments (model.params), resolved. */
typedef struct ldm_latent_diffusion_config {
    ldm_schedule_config schedule;     /* linear_start, linear_end, timesteps, beta_schedule, cosine_s,
                                         v_posterior, parameterization (given_betas unsupported) */
    ldm_loss_config loss;             /* loss_type, l_simple_weight, original_elbo_weight */
    int image_size, channels;         /* the latent's size and channels */
    char first_stage_key[32], cond_stage_key[32], monitor[32];
    ldm_conditioning_key conditioning_key;
    int cond_stage_trainable, scale_by_std, use_ema, log_every_t, num_timesteps_cond;
    int learn_logvar, clip_denoised;
    double scale_factor, logvar_init;
    ldm_denoiser_kind denoiser;       /* from unet_config.target */
    ldm_unet_config unet;
    ldm_dit_config dit;
    ldm_vae_config first_stage;
    int first_stage_n_embed;          /* > 0: a VQ first stage (VQModelInterface) */
    double lr_scale;                  /* > 0: LDM_CONDSTAGE_LR_LATENT (see above) */
    int pixel_space;                  /* no first stage: ddpm.py's DDPM, x itself is diffused
                                         (encode/decode are the identity, no scale_factor) */
    ldm_cond_stage_kind cond_stage;
    int cond_n_classes, cond_embed_dim; /* ClassEmbedder */
    char ckpt_path[256];              /* accepted and reported; the caller loads it */
    int n_ignore_keys;
} ldm_latent_diffusion_config;

typedef struct ldm_latent_diffusion ldm_latent_diffusion;
/* Builds every part on the context's device, initialised as PyTorch would (use a checkpoint
   for real weights). The first stage is frozen; the cond stage trainable iff
   cond_stage_trainable. A VQ first stage (VQModelInterface) encodes to its unquantized h and
   quantizes in decode, as CompVis's LatentDiffusion does. */
LDM_API ldm_result ldm_latent_diffusion_create(ldm_ctx *ctx, ldm_latent_diffusion **ld, const ldm_latent_diffusion_config *cfg);
LDM_API void ldm_latent_diffusion_destroy(ldm_latent_diffusion *ld);
LDM_API const ldm_latent_diffusion_config *ldm_latent_diffusion_cfg(const ldm_latent_diffusion *ld);
LDM_API const ldm_schedule *ldm_latent_diffusion_schedule(const ldm_latent_diffusion *ld);
LDM_API ldm_denoiser ldm_latent_diffusion_denoiser(ldm_latent_diffusion *ld); /* DiffusionWrapper */
/* The parts' registries (NULL when absent): the denoiser (names under model.diffusion_model.),
   the first stage, the cond stage (ClassEmbedder only), and LatentDiffusion's own (logvar). */
LDM_API ldm_nn_params *ldm_latent_diffusion_denoiser_params(ldm_latent_diffusion *ld);
LDM_API ldm_vae *ldm_latent_diffusion_first_stage(ldm_latent_diffusion *ld);
LDM_API ldm_nn_params *ldm_latent_diffusion_cond_params(ldm_latent_diffusion *ld);
LDM_API ldm_nn_params *ldm_latent_diffusion_own_params(ldm_latent_diffusion *ld);
LDM_API ldm_ema *ldm_latent_diffusion_ema(ldm_latent_diffusion *ld);          /* NULL without use_ema */
LDM_API float ldm_latent_diffusion_scale_factor(const ldm_latent_diffusion *ld);
LDM_API void ldm_latent_diffusion_set_scale_factor(ldm_latent_diffusion *ld, float s);
LDM_API void ldm_latent_diffusion_set_training(ldm_latent_diffusion *ld, int on); /* denoiser dropout */

/* Loading a whole checkpoint (safetensors, .ckpt zip or legacy). strict: every parameter of
   every part found with its shape, and no file name outside the known prefixes and buffers;
   the error lists the names. With use_ema, model_ema.* is read into the EMA (every name must be
   there once the file has any; a file without EMA starts the EMA from the loaded weights).
   ema_weights: the denoiser gets the model_ema.* weights (sampling with EMA, as CompVis'
   ema_scope); an error when the file has none. The schedule buffers
   are checked against the config (betas); scale_factor is taken from the file with
   scale_by_std. report (may be NULL) gets the denoiser's load report. */
typedef struct ldm_latent_diffusion_load_opts {
    int strict;
    int ema_weights;
} ldm_latent_diffusion_load_opts;
/* A part's load error, said with the part and its checkpoint prefix (the listed names are the part's own). */
static ldm_result ldm__ld_part(ldm_ctx *ctx, ldm_result r, const char *part, const char *prefix) {
    if (!r) return r;
    size_t n = strlen(ldm_ctx_error(ctx)) + 1;
    char *msg = (char *)LDM_MALLOC(n);
    if (!msg) return r;
    memcpy(msg, ldm_ctx_error(ctx), n);
    ldm_ctx_clear_error(ctx);
    r = ldm_ctx_seterr(ctx, r, "LatentDiffusion: %s (%s*): %s", part, prefix, msg);
    LDM_FREE(msg);
    return r;
}

LDM_API ldm_result ldm_latent_diffusion_load(ldm_ctx *ctx, ldm_latent_diffusion *ld, const char *path,
                                             const ldm_latent_diffusion_load_opts *opts);
/* The same names as safetensors (torch's strict load_state_dict on the CompVis module accepts
   it; lvlb_weights is not persistent there and not written). */
LDM_API ldm_result ldm_latent_diffusion_save(ldm_ctx *ctx, const ldm_latent_diffusion *ld, const char *path, ldm_dtype dtype);

/* encode_first_stage + get_first_stage_encoding: scale_factor * (posterior sample for KL, with
   eps from the RNG when eps is NULL; the first stage's output for VQ). x [B, C, H, W] in
   [-1, 1]; no gradient (the first stage is frozen). infer may be NULL (batch, tiling). */
LDM_API ldm_tensor *ldm_latent_diffusion_encode(ldm_ctx *ctx, ldm_latent_diffusion *ld, ldm_tensor *x, ldm_tensor *eps,
                                                const ldm_vae_infer *infer);
/* decode_first_stage: first stage decode of z / scale_factor (VQ: quantized first). No grad. */
LDM_API ldm_tensor *ldm_latent_diffusion_decode(ldm_ctx *ctx, ldm_latent_diffusion *ld, ldm_tensor *z, const ldm_vae_infer *infer);
/* scale_by_std (on_train_batch_start of the first batch): with scale_factor 1, the latents of
   x (posterior sample, eps as above) give scale_factor = 1 / std(z) (unbiased, as torch.std);
   stored and returned in *scale (may be NULL). An error without scale_by_std or when the scale
   factor is not 1 (CompVis asserts both). */
LDM_API ldm_result ldm_latent_diffusion_scale_by_std(ldm_ctx *ctx, ldm_latent_diffusion *ld, ldm_tensor *x, ldm_tensor *eps, float *scale);
/* The same over the batches of every data-parallel rank: reduce(user, v, n) sums n doubles
   across ranks in place (ldm_dist_allreduce_f64), so every rank gets the whole job's std. */
typedef ldm_result (*ldm_reduce_fn)(void *user, double *v, int n);
LDM_API ldm_result ldm_latent_diffusion_scale_by_std_reduce(ldm_ctx *ctx, ldm_latent_diffusion *ld, ldm_tensor *x, ldm_tensor *eps,
                                                            ldm_reduce_fn reduce, void *user, float *scale);
/* get_learned_conditioning: labels [B] as floats -> ClassEmbedder [B, 1, D]; identity: c;
   first stage: posterior mode; none: NULL without an error. */
LDM_API ldm_tensor *ldm_latent_diffusion_conditioning(ldm_ctx *ctx, ldm_latent_diffusion *ld, ldm_tensor *c);
/* The ldm_cond for a learned conditioning c (per conditioning_key); c NULL: empty. */
LDM_API ldm_cond ldm_latent_diffusion_cond(const ldm_latent_diffusion *ld, ldm_tensor *c);
/* shared_step: z = encode(x) (posterior eps given or drawn), c = conditioning(c_raw) (with
   gradient when cond_stage_trainable), p_losses(z, c, t) with the config's loss; t and noise
   as ldm_diffusion_p_losses (NULL: drawn). Returns the scalar loss; log gets CompVis' keys. */
LDM_API ldm_tensor *ldm_latent_diffusion_loss(ldm_ctx *ctx, ldm_latent_diffusion *ld, ldm_tensor *x, ldm_tensor *c_raw,
                                              const int *t, ldm_tensor *noise, ldm_tensor *posterior_eps, ldm_loss_log *log);

/* Sampling (zero means the default). */
typedef struct ldm_latent_diffusion_sample_opts {
    int n;                        /* samples (0: 1; with c, c's batch) */
    int steps;                    /* DDIM steps (0: 50); ignored by DDPM (all T) */
    int ddpm;                     /* ancestral DDPM instead of DDIM */
    double eta;                   /* DDIM eta */
    float guidance_scale;         /* classifier-free guidance (0 or 1: none) */
    ldm_tensor *c;                /* raw conditioning: labels [n] (ClassEmbedder / adm), an image
                                     [n, C, h, w] (concat); NULL: unconditional model */
    ldm_tensor *uc;               /* raw unconditional conditioning; NULL with guidance: the
                                     class n_classes - 1 for all samples (CompVis' cin256 scripts),
                                     or a DiT's null class (num_classes) */
    ldm_tensor *x_T, *noise;      /* as ldm_sample_opts (NULL: the ctx RNG) */
    int decode_batch;             /* first stage decodes this many at a time (0: 1) */
    int tile;                     /* first stage tile in pixels (0: none) */
    void (*on_step)(void *user, int i, int total);
    void *user;
} ldm_latent_diffusion_sample_opts;
/* Samples latents [n, channels, h, w] (h, w: image_size, or the concat conditioning's size),
   decodes them and returns the images [n, C, H, W] (unclamped; a leaf in the arena); z_out (may
   be NULL) receives the latents. Runs without grad. */
LDM_API ldm_tensor *ldm_latent_diffusion_sample(ldm_ctx *ctx, ldm_latent_diffusion *ld, const ldm_latent_diffusion_sample_opts *opts,
                                                ldm_tensor **z_out);

#ifdef LDM_CONFIG_H
/* model.params of a CompVis LatentDiffusion config, validated against this table (unknown
   keys are errors with file:line). */
#define LDM_LATENT_DIFFUSION_CONFIG_KEYS(X)                                                     \
    X(linear_start, FLOAT, "1e-4", "first beta")                                                \
    X(linear_end, FLOAT, "2e-2", "last beta")                                                   \
    X(timesteps, INT, "1000", "diffusion steps T")                                              \
    X(beta_schedule, STR, "linear", "linear, sqrt_linear, sqrt or cosine")                      \
    X(cosine_s, FLOAT, "8e-3", "cosine schedule offset")                                        \
    X(given_betas, NODE, "", "explicit betas (unsupported: leave out)")                        \
    X(parameterization, STR, "eps", "eps, x0 or v")                                             \
    X(loss_type, STR, "l2", "l2 or l1")                                                         \
    X(image_size, INT, "256", "latent size")                                                    \
    X(channels, INT, "3", "latent channels")                                                    \
    X(first_stage_key, STR, "image", "batch key of the images")                                 \
    X(cond_stage_key, STR, "image", "batch key of the conditioning")                            \
    X(conditioning_key, STR, "", "concat, crossattn, adm (unset: from concat_mode)")            \
    X(concat_mode, BOOL, "true", "conditioning_key concat when unset (else crossattn)")         \
    X(cond_stage_trainable, BOOL, "false", "train the conditioning stage")                      \
    X(cond_stage_forward, STR, "", "method of the cond stage (unsupported)")                    \
    X(scale_factor, FLOAT, "1.0", "latent scale")                                               \
    X(scale_by_std, BOOL, "false", "scale_factor = 1/std of the first batch's latents")         \
    X(use_ema, BOOL, "true", "LitEma of the denoiser")                                          \
    X(monitor, STR, "", "logged metric for checkpointing")                                      \
    X(log_every_t, INT, "100", "intermediates logged every so many steps")                      \
    X(num_timesteps_cond, INT, "1", "conditioning noise schedule (only 1 supported)")           \
    X(l_simple_weight, FLOAT, "1.0", "weight of the simple loss")                               \
    X(original_elbo_weight, FLOAT, "0.0", "weight of the VLB term")                             \
    X(learn_logvar, BOOL, "false", "learned per-step log-variance")                             \
    X(logvar_init, FLOAT, "0.0", "its initial value")                                           \
    X(v_posterior, FLOAT, "0.0", "posterior variance mix")                                      \
    X(clip_denoised, BOOL, "true", "DDPM sampling clamps x0 to [-1, 1] (LatentDiffusion: always off)") \
    X(use_positional_encodings, BOOL, "false", "positional conditioning (unsupported)")         \
    X(load_only_unet, BOOL, "false", "ckpt_path loads only the UNet")                           \
    X(scheduler_config, NODE, "", "learning-rate schedule (the trainer's)")                     \
    X(unet_config, NODE, NULL, "denoiser: target + params")                                     \
    X(first_stage_config, NODE, "", "first stage: target + params (absent: pixel-space DDPM)")   \
    X(cond_stage_config, NODE, "", "conditioning stage, __is_first_stage__ or __is_unconditional__ (absent: unconditional)") \
    X(lr_scale, AT_LEAST(FLOAT, 0), "0", "ldm.h extension: condition on the latent of the input downsampled by 1/lr_scale and upsampled back (bicubic); concat") \
    X(ckpt_path, STR, "", "checkpoint to initialise from (reported)")                           \
    X(ignore_keys, STR_LIST, "", "keys dropped from ckpt_path")
LDM_CONFIG_DECLARE(ldm_latent_diffusion_yaml, LDM_LATENT_DIFFUSION_CONFIG_KEYS);
/* node: the root (reads model.params), the model node, or its params. */
LDM_API ldm_result ldm_latent_diffusion_config_read(ldm_config *cfg, const ldm_config_node *node, ldm_latent_diffusion_config *out);
#endif

/* ---- 5. video DiT and the sgm engine ------------------------------------------------------- */
/* A spatio-temporal DiT over video latents and Stability AI's sgm engine (generative-models,
   sgm/modules/diffusionmodules) around it: the continuous-noise denoiser D(x, sigma) =
   c_skip x + c_out F(c_in x, c_noise), its training loss and its samplers. Noise levels sigma
   are host floats, one per sample (like the timesteps of sections 1 and 3); x = x0 + sigma n.

   Shapes: x, x0, noise [B, C, F, H, W] (the sgm parts take any rank); sigma [B];
   tokens [B, N, D], N = (F/pt)(H/p)(W/p) in (frame, row, column) order; concat [B or 1, Cc, F, H, W].

   Video DiT (ldm_vdit), DiT's architecture and names with a Conv3d patch embedding (the
   transformer, t_embedder and final layer are section 2's DiT code, shared):
     pos_embed          [1, N, D], fixed 3-D sin-cos (frozen parameter, in the state dict):
                        token (i, j, k) = frame i, row j, column k gets
                        [temporal: sincos_1d(D/4, i) | spatial: sincos_1d(3D/8, k), sincos_1d(3D/8, j)]
                        with sincos_1d(d, pos) = [sin(pos w_m), cos(pos w_m)], w_m = 10000^(-m/(d/2)),
                        m < d/2 (diffusers' get_3d_sincos_pos_embed split: a quarter of the
                        width for time; the spatial part is DiT's 2-D embedding, column first).
                        hidden_size must be a multiple of 16.
     x_embedder.proj    Conv3d(in_channels, D, kernel = stride = (pt, p, p))
     t_embedder.mlp.0/2 Linear(256, D), SiLU, Linear(D, D) on DiT's [cos, sin] embedding of t
     switch_adaln_layer how each block gets its 6 modulations (shift, scale, gate for the
                        attention, then for the MLP) from c = t_embedder(t):
                        false: DiT's adaLN-Zero: blocks.N.adaLN_modulation.1 = Linear(D, 6D) on
                          SiLU(c), one per block (zero-initialised); final_layer.adaLN_modulation.1
                          = Linear(D, 2D) on SiLU(c).
                        true: PixArt-alpha's adaLN-single: one t_block.1 = Linear(D, 6D) on
                          SiLU(c) shared by every block, plus a learned per-block
                          blocks.N.scale_shift_table [6, D] added to it (init randn / sqrt(D));
                          final_layer.scale_shift_table [2, D] added to c itself (T2IFinalLayer).
                          About (depth - 1) x 6D^2 + 2D^2 fewer parameters.
     blocks.N           x += gate_msa * attn.proj(attention(attn.qkv(mod(norm1(x)))))  (all N tokens)
                        x += gate_mlp * mlp.fc2(gelu_tanh(mlp.fc1(mod(norm2(x)))))
                        mod(h) = h (1 + scale) + shift; norm1/norm2: LayerNorm, no affine, eps 1e-6
     final_layer        linear(mod(norm_final(x))) -> pt*p*p*out per token in (pt, p, p, C) order,
                        unpatchified to [B, out, F, H, W]; learn_sigma: out = 2*out_channels.
   LoRA targets like "attn.qkv" or "mlp.fc1" work as for the DiT (ldm_nn_lora_create).

   sgm engine (denoiser.py, denoiser_scaling.py, discretizer.py, sigma_sampling.py,
   loss_weighting.py, loss.py, sampling.py, guiders.py, wrappers.py):
     scalings   (c_skip, c_out, c_in, c_noise) of sigma, sd = sigma_data:
                EDM  (sd^2/(s^2+sd^2), s sd/sqrt(s^2+sd^2), 1/sqrt(s^2+sd^2), log(s)/4)
                Eps  (1, -s, 1/sqrt(s^2+1), s);   V (1/(s^2+1), -s/sqrt(s^2+1), 1/sqrt(s^2+1), s)
                V with EDM c_noise (VScalingWithEDMcNoise): V's, c_noise log(s)/4
     Denoiser   D = F(c_in x, c_noise, cond) c_out + x c_skip. DiscreteDenoiser: sigma first
                snapped to the nearest of num_idx LegacyDDPM sigmas (ascending, no zero), and
                c_noise (quantize_c_noise) replaced by that nearest sigma's index.
     OpenAIWrapper  the network sees [x, cond->concat] on channels: ldm_vdit_denoiser.
     discretizations  EDM: (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho;
                LegacyDDPM: sqrt((1 - ac)/ac) at n roughly equally spaced steps of a linear
                beta schedule, descending; then append_zero and flip as Discretization.__call__.
     loss       StandardDiffusionLoss: sigma ~ EDMSampling exp(p_mean + p_std N(0,1)) or
                DiscreteSampling sigmas[randint(num_idx)]; noise (+ offset_noise_level *
                offset[B, C] broadcast over F, H, W: sgm's image-shaped offset); x = x0 + sigma n;
                loss_b = mean over all but the batch of w(sigma) (D(x) - x0)^2 (l2) or |.| (l1),
                w: Unit 1, EDM (s^2+sd^2)/(s sd)^2, V (EDM with sd 1), Eps s^-2.
     samplers   EulerEDMSampler (s_churn, s_tmin, s_tmax, s_noise as sgm; x = randn sqrt(1 +
                sigma_0^2)); DDIM over the discretization (eta; in sigma space: x' = D +
                sqrt(s'^2 - s_up^2) eps + s_up n, s_up = eta s' sqrt(s^2 - s'^2)/s, eps = (x - D)/s,
                which is CompVis' p_sample_ddim on x_t = x/sqrt(1 + s^2); section 3's ldm_ddim is
                not reused: it has CompVis' timestep grid, ends at alphas_cumprod[0] instead of
                sigma 0 and calls an integer-t network, not an sgm Denoiser). Guidance: sgm's
                VanillaCFG: one call on [uncond; cond], out_u + scale (out_c - out_u);
                IdentityGuider without uncond. Single prompt: a cond whose concat has batch 1
                is repeated for the whole batch. Multi-prompt: a batch of B conditions with
                per-sample scales (guidance_scales[B], sgm's NoDynamicThresholding with a
                tensor scale).

   Example: train a video super-resolution denoiser with the EDM recipe, then sample.

       ldm_vdit_config vc = ldm_vdit_config_default();
       vc.num_frames = 8; vc.height = vc.width = 32; vc.in_channels = 8; vc.out_channels = 4;
       ldm_vdit *net;  ldm_vdit_create(ctx, &net, &vc);
       ldm_sgm_denoiser den;  ldm_sgm_denoiser_config dc = ldm_sgm_denoiser_config_default(LDM_SGM_EDM);
       ldm_sgm_denoiser_init(ctx, &den, &dc, ldm_vdit_denoiser(net));
       ldm_sgm_loss_config lc = ldm_sgm_loss_config_default();          // EDMSampling, EDMWeighting, l2
       ldm_cond c = {0};  c.concat = lr_latent;                          // [B, 4, 8, 32, 32]
       ldm_tensor *loss = ldm_mean_all(ctx, ldm_sgm_loss(ctx, &lc, &den, z, &c, NULL, NULL, NULL, NULL));
       ...
       ldm_sgm_sampler_opts so = ldm_sgm_sampler_opts_default();        // EDM discretization, 50 steps
       so.cond = &c;  so.uncond = &uc;  so.guidance_scale = 2.0f;
       ldm_tensor *z = ldm_sgm_euler_edm_sample(ctx, &den, ldm_randn(ctx, shape), &so);

   Public API:
     ldm_vdit_config_default/_check/_read, ldm_vdit_create/destroy/count_params/params/cfg/
     forward/denoiser/reset_pos_embed/load/save      the video DiT
     ldm_sgm_discretization_default, ldm_sgm_discretize   sigma arrays
     ldm_sgm_denoiser_config_default, ldm_sgm_denoiser_init/free, ldm_sgm_scalings,
     ldm_sgm_sigma_to_idx, ldm_sgm_denoise            the denoiser
     ldm_sgm_loss_config_default, ldm_sgm_sample_sigmas, ldm_sgm_loss_weight, ldm_sgm_loss
     ldm_sgm_sampler_opts_default, ldm_sgm_guided_denoise, ldm_sgm_euler_edm_sample,
     ldm_sgm_ddim_sample                              the samplers */
typedef struct ldm_vdit_config {
    int num_frames, height, width;   /* latent F, H, W the model is built for (pos_embed) */
    int patch_t, patch_size;         /* pt, p */
    int in_channels;                 /* network input: latent + concatenated condition channels */
    int out_channels;                /* predicted channels; learn_sigma doubles them */
    int hidden_size, depth, num_heads;
    float mlp_ratio;
    int learn_sigma;
    int switch_adaln_layer;          /* 0: DiT's per-block adaLN-Zero, 1: PixArt-alpha's adaLN-single */
} ldm_vdit_config;
/* The keys, described once: X(name, kind, default, help); NULL default = required. */
#define LDM_VDIT_CONFIG_KEYS(X)                                                                     \
    X(num_frames, AT_LEAST(INT, 1), NULL, "latent frames F (a multiple of patch_t)")               \
    X(height, AT_LEAST(INT, 1), NULL, "latent height H (a multiple of patch_size)")                \
    X(width, AT_LEAST(INT, 1), NULL, "latent width W (a multiple of patch_size)")                  \
    X(patch_t, AT_LEAST(INT, 1), "1", "temporal patch size pt")                                     \
    X(patch_size, AT_LEAST(INT, 1), "2", "spatial patch size p")                                    \
    X(in_channels, AT_LEAST(INT, 1), NULL, "input channels: latent + concatenated condition")      \
    X(out_channels, AT_LEAST(INT, 1), NULL, "predicted channels (learn_sigma doubles them)")       \
    X(hidden_size, AT_LEAST(INT, 16), "384", "token width D (a multiple of 16 and of num_heads)")  \
    X(depth, AT_LEAST(INT, 0), "12", "transformer blocks")                                          \
    X(num_heads, AT_LEAST(INT, 1), "6", "attention heads")                                          \
    X(mlp_ratio, FLOAT, "4.0", "MLP hidden width / D")                                              \
    X(learn_sigma, BOOL, "false", "also predict a variance: 2*out_channels outputs")               \
    X(switch_adaln_layer, BOOL, "false", "false: DiT's per-block adaLN-Zero; true: PixArt's shared adaLN-single")
/* The table's defaults (required keys 0). */
LDM_API ldm_vdit_config ldm_vdit_config_default(void);
/* Sizes, divisibility and head rules; the message names the key. */
LDM_API ldm_result ldm_vdit_config_check(ldm_ctx *ctx, const ldm_vdit_config *cfg);

typedef struct ldm_vdit ldm_vdit;
/* Registers and allocates the model on the context's device, initialised as DiT (xavier
   linears and patch embedding, N(0, 0.02) t MLP, zero adaLN-Zero and final linear) and
   PixArt (t_block.1 weight normal with std 0.02, scale_shift_tables randn / sqrt(D)), from the
   context's RNG. */
LDM_API ldm_result ldm_vdit_create(ldm_ctx *ctx, ldm_vdit **m, const ldm_vdit_config *cfg);
LDM_API void ldm_vdit_destroy(ldm_vdit *m);
LDM_API ldm_result ldm_vdit_count_params(ldm_ctx *ctx, const ldm_vdit_config *cfg, int64_t *n);
LDM_API ldm_nn_params *ldm_vdit_params(ldm_vdit *m);
LDM_API const ldm_vdit_config *ldm_vdit_cfg(const ldm_vdit *m);
/* x [B, in_channels, num_frames, height, width], t [B] (any real values: sgm passes c_noise)
   -> [B, out_channels (x2 with learn_sigma), num_frames, height, width]. */
LDM_API ldm_tensor *ldm_vdit_forward(ldm_ctx *ctx, ldm_vdit *m, ldm_tensor *x, ldm_tensor *t);
/* OpenAIWrapper: cond->concat (batch B) is concatenated to x on channels, then ldm_vdit_forward;
   a learn_sigma model's output is cut to its first out_channels (the denoised prediction). */
LDM_API ldm_denoiser ldm_vdit_denoiser(ldm_vdit *m);
/* Writes the fixed 3-D sin-cos pos_embed again (after ldm_nn_params_init, which zeroes it). */
LDM_API ldm_result ldm_vdit_reset_pos_embed(ldm_ctx *ctx, ldm_vdit *m);
LDM_API ldm_result ldm_vdit_load(ldm_ctx *ctx, ldm_vdit *m, const char *path, const char *prefix, int strict, ldm_nn_load_report *report);
LDM_API ldm_result ldm_vdit_save(ldm_ctx *ctx, const ldm_vdit *m, const char *path, ldm_dtype dtype, const char *prefix);
#ifdef LDM_CONFIG_H
LDM_CONFIG_DECLARE(ldm_vdit_yaml, LDM_VDIT_CONFIG_KEYS);
/* node: the network's params, a node with them under "params" (target + params), an sgm
   model node (params.network_config.params), or NULL for the root (then also
   model.params.network_config.params); schema-checked (ldm_vdit_create checks the rest). */
LDM_API ldm_result ldm_vdit_config_read(ldm_config *cfg, const ldm_config_node *node, ldm_vdit_config *out);
#endif

/* Discretizations (discretizer.py). Every sigma array is float32 computed as sgm does. */
typedef enum { LDM_SGM_DISC_EDM = 0, LDM_SGM_DISC_LEGACY_DDPM = 1 } ldm_sgm_disc_kind;
typedef struct ldm_sgm_discretization {
    ldm_sgm_disc_kind kind;
    double sigma_min, sigma_max, rho;   /* EDM: 0.002, 80, 7 */
    double linear_start, linear_end;    /* LegacyDDPM: 0.00085, 0.012 */
    int num_timesteps;                  /* LegacyDDPM: 1000 */
} ldm_sgm_discretization;
LDM_API ldm_sgm_discretization ldm_sgm_discretization_default(ldm_sgm_disc_kind kind);
/* n sigmas, descending (+ a trailing 0 with append_zero), reversed with flip: sigmas holds
   n + append_zero floats. LegacyDDPM needs n <= num_timesteps. */
LDM_API ldm_result ldm_sgm_discretize(ldm_ctx *ctx, const ldm_sgm_discretization *d, int n, int append_zero, int flip, float *sigmas);

typedef enum { LDM_SGM_EDM = 0, LDM_SGM_EPS = 1, LDM_SGM_V = 2, LDM_SGM_V_EDM_NOISE = 3 } ldm_sgm_scaling;
typedef struct ldm_sgm_denoiser_config {
    ldm_sgm_scaling scaling;
    double sigma_data;            /* EDMScaling's; 0.5 */
    int discrete;                 /* DiscreteDenoiser (do_append_zero False, flip True) */
    int num_idx;                  /* its sigma count; 1000 */
    ldm_sgm_discretization disc;  /* its discretization; LegacyDDPM */
    int quantize_c_noise;         /* c_noise -> the nearest sigma's index; 1 */
} ldm_sgm_denoiser_config;
LDM_API ldm_sgm_denoiser_config ldm_sgm_denoiser_config_default(ldm_sgm_scaling scaling);
typedef struct ldm_sgm_denoiser {
    ldm_sgm_denoiser_config cfg;
    ldm_denoiser net;             /* the network: net.forward(ctx, self, c_in x, c_noise [B], cond) */
    float *sigmas;                /* discrete: num_idx ascending sigmas; else NULL */
} ldm_sgm_denoiser;
LDM_API ldm_result ldm_sgm_denoiser_init(ldm_ctx *ctx, ldm_sgm_denoiser *d, const ldm_sgm_denoiser_config *cfg, ldm_denoiser net);
LDM_API void ldm_sgm_denoiser_free(ldm_sgm_denoiser *d);
/* c[4] = c_skip, c_out, c_in, c_noise of one sigma (> 0) by the scaling, before any quantization. */
LDM_API void ldm_sgm_scalings(const ldm_sgm_denoiser_config *cfg, float sigma, float c[4]);
/* DiscreteDenoiser.sigma_to_idx: argmin |sigma - sigmas[i]| (first of ties); -1 when not discrete. */
LDM_API int ldm_sgm_sigma_to_idx(const ldm_sgm_denoiser *d, float sigma);
/* D(x, sigma) for x [B, ...] and B host sigmas (> 0); autograd flows through x and the network. */
LDM_API ldm_tensor *ldm_sgm_denoise(ldm_ctx *ctx, const ldm_sgm_denoiser *d, ldm_tensor *x, const float *sigma, const ldm_cond *cond);

typedef enum { LDM_SGM_SIGMA_EDM = 0, LDM_SGM_SIGMA_DISCRETE = 1 } ldm_sgm_sigma_sampling;
typedef enum { LDM_SGM_W_UNIT = 0, LDM_SGM_W_EDM = 1, LDM_SGM_W_V = 2, LDM_SGM_W_EPS = 3 } ldm_sgm_weighting;
typedef struct ldm_sgm_loss_config {
    ldm_sgm_sigma_sampling sigma_sampling;
    double p_mean, p_std;         /* EDMSampling: -1.2, 1.2 */
    int num_idx;                  /* DiscreteSampling: 1000 sigmas of disc (flip, no zero) */
    ldm_sgm_discretization disc;  /* LegacyDDPM */
    ldm_sgm_weighting weighting;  /* EDM */
    double sigma_data;            /* EDMWeighting's; 0.5 */
    ldm_loss_type loss_type;      /* l2 */
    double offset_noise_level;    /* 0 */
} ldm_sgm_loss_config;
LDM_API ldm_sgm_loss_config ldm_sgm_loss_config_default(void);
/* B sigmas from the sigma sampler and the ctx RNG. */
LDM_API ldm_result ldm_sgm_sample_sigmas(ldm_ctx *ctx, const ldm_sgm_loss_config *cfg, int64_t B, float *sigmas);
LDM_API float ldm_sgm_loss_weight(const ldm_sgm_loss_config *cfg, float sigma);
/* StandardDiffusionLoss: the per-sample loss [B] (ldm_mean_all for the training scalar).
   sigmas: B host values or NULL (sampled; sigmas_out, when given, receives them); noise [like
   x0] or NULL (ctx RNG); offset [B, C] or NULL (ctx RNG, used when offset_noise_level > 0). */
LDM_API ldm_tensor *ldm_sgm_loss(ldm_ctx *ctx, const ldm_sgm_loss_config *cfg, const ldm_sgm_denoiser *den, ldm_tensor *x0,
                                 const ldm_cond *cond, const float *sigmas, ldm_tensor *noise, ldm_tensor *offset, float *sigmas_out);

typedef struct ldm_sgm_sampler_opts {
    int num_steps;                /* 50 */
    ldm_sgm_discretization disc;  /* EDM (DDIM: LegacyDDPM is the usual one) */
    float s_churn, s_tmin, s_tmax, s_noise;   /* EDMSampler: 0, 0, inf, 1 */
    double eta;                   /* DDIM: 0 (deterministic) */
    const ldm_cond *cond;         /* conditioning (concat batch B, or 1: repeated), or NULL */
    const ldm_cond *uncond;       /* VanillaCFG's unconditional conditioning; NULL: IdentityGuider */
    float guidance_scale;         /* VanillaCFG scale; 1 */
    const float *guidance_scales; /* B per-sample scales (multi-prompt), or NULL: guidance_scale */
    ldm_tensor *noise;            /* [num_steps, ...], num_steps x (x's size) values (video: [S, B*C, F, H, W]):
                                     slice i is step i's churn / DDIM noise; NULL: ctx RNG */
    void (*on_step)(void *user, int i, int total);
    void *user;
} ldm_sgm_sampler_opts;
LDM_API ldm_sgm_sampler_opts ldm_sgm_sampler_opts_default(void);
/* BaseDiffusionSampler.denoise: the guided D(x, sigma) (sigma: B host values). */
LDM_API ldm_tensor *ldm_sgm_guided_denoise(ldm_ctx *ctx, const ldm_sgm_denoiser *den, ldm_tensor *x, const float *sigma,
                                           const ldm_sgm_sampler_opts *opts);
/* randn: the starting N(0, 1) draw [B, ...] (scaled by sqrt(1 + sigma_0^2) here). Return the
   sample (a leaf in the arena); run without grad. */
LDM_API ldm_tensor *ldm_sgm_euler_edm_sample(ldm_ctx *ctx, const ldm_sgm_denoiser *den, ldm_tensor *randn, const ldm_sgm_sampler_opts *opts);
LDM_API ldm_tensor *ldm_sgm_ddim_sample(ldm_ctx *ctx, const ldm_sgm_denoiser *den, ldm_tensor *randn, const ldm_sgm_sampler_opts *opts);

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
    if (!noise) noise = ldm_randn(ctx, ldm_shape_of(x0));
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
    uint64_t *u = (uint64_t *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(uint64_t) * (size_t)(B ? B : 1));
    if (!u) { for (int64_t i = 0; i < B; i++) t[i] = 0; return; }
    ldm_rng_u64_rows(ctx, ldm_ctx_rng(ctx), u, B); /* a data-parallel rank draws its rows */
    for (int64_t i = 0; i < B; i++) t[i] = (int)(u[i] % (uint64_t)T);
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
static void ldm__diff_log(ldm_loss_log *log, const char *prefix, const char *name, float v) { ldm_loss_log_put(log, prefix, name, v); }

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
/* ---- shared pieces --------------------------------------------------------------------------- */
/* Host copy of a small [B] tensor (steps, labels) in CPU arena memory. */
static float *ldm__dn_host(ldm_ctx *ctx, ldm_tensor *t) {
    float *h = (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * (size_t)(t->numel ? t->numel : 1));
    if (h && ldm_to_host(ctx, t, h)) return NULL;
    return h;
}

/* The sinusoid is computed on the host (ldm_tensor.h has no sin/cos op yet). */
LDM_API ldm_tensor *ldm_timestep_embedding(ldm_ctx *ctx, ldm_tensor *t, int dim) {
    if (!t || dim < 1) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_timestep_embedding: %s (hint: t [B] and dim >= 1)", t ? "dim < 1" : "t is NULL");
        return NULL;
    }
    int64_t B = t->numel;
    int half = dim / 2;
    /* The frequencies depend on dim only (host, float32 in torch's order: (-ln(10000) * i) / half,
       exp); the products and cos/sin run on t's device. A [B,1] x [1,half] product is one
       rounding per element, like torch's t[:, None] * freqs[None]. */
    float *fh = (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * (size_t)(half > 0 ? half : 1));
    if (!fh) return NULL;
    const float neg_log = (float)(-log(10000.0));
    for (int i = 0; i < half; i++) fh[i] = expf((neg_log * (float)i) / (float)half);
    ldm_tensor *parts[3];
    int n = 0;
    if (half > 0) {
        ldm_device keep = ldm_ctx_device(ctx);
        ldm_ctx_set_device(ctx, t->device);
        ldm_tensor *freqs = ldm_from_host(ctx, ldm_shape2(1, half), fh);
        ldm_ctx_set_device(ctx, keep);
        ldm_tensor *args = ldm_matmul(ctx, ldm_reshape(ctx, ldm_detach(ctx, t), ldm_shape2(B, 1)), freqs, 0, 0);
        parts[n++] = ldm_cos(ctx, args);
        parts[n++] = ldm_sin(ctx, args);
    }
    if (dim % 2) {
        ldm_device keep = ldm_ctx_device(ctx);
        ldm_ctx_set_device(ctx, t->device);
        parts[n++] = ldm_zeros(ctx, ldm_shape2(B, 1));
        ldm_ctx_set_device(ctx, keep);
    }
    return n == 1 ? parts[0] : ldm_concat(ctx, n, parts, 1);
}

/* Labels as floats -> int64 indices in [0, n); NULL + error otherwise. */
static int64_t *ldm__dn_labels(ldm_ctx *ctx, const char *who, ldm_tensor *y, int64_t B, int64_t n) {
    if (!y || y->numel != B) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: labels y must be [%lld] (one per sample)%s", who, (long long)B, y ? "" : ", got NULL");
        return NULL;
    }
    float *yh = ldm__dn_host(ctx, y);
    int64_t *idx = (int64_t *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(int64_t) * (size_t)(B ? B : 1));
    if (!yh || !idx) return NULL;
    for (int64_t b = 0; b < B; b++) {
        if (!(yh[b] >= 0.0f && yh[b] < (float)n) || yh[b] != floorf(yh[b])) {
            ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: label y[%lld] = %g is not a class index in [0, %lld)", who, (long long)b, (double)yh[b], (long long)n);
            return NULL;
        }
        idx[b] = (int64_t)yh[b];
    }
    return idx;
}

static ldm_result ldm__dn_load(ldm_ctx *ctx, ldm_nn_params *P, const char *path, const char *prefix, int strict, ldm_nn_load_report *report) {
    ldm_nn_load_opts lo;
    memset(&lo, 0, sizeof lo);
    lo.strict = strict;
    lo.prefix_strip = prefix && *prefix ? prefix : NULL;
    lo.report = report;
    return ldm_nn_load(ctx, P, path, &lo);
}

/* ---- UNet: config ---------------------------------------------------------------------------- */
LDM_API ldm_unet_config ldm_unet_config_default(void) {
    ldm_unet_config c;
    memset(&c, 0, sizeof c);
    c.channel_mult[0] = 1; c.channel_mult[1] = 2; c.channel_mult[2] = 4; c.channel_mult[3] = 8; c.n_levels = 4;
    c.conv_resample = 1; c.dims = 2; c.num_classes = -1;
    c.num_heads = -1; c.num_head_channels = -1; c.num_heads_upsample = -1;
    c.transformer_depth = 1; c.context_dim = -1; c.legacy = 1;
    return c;
}

static int ldm__unet_has_attn(const ldm_unet_config *c, int ds) {
    for (int i = 0; i < c->n_attn; i++) if (c->attention_resolutions[i] == ds) return 1;
    return 0;
}
/* UNetModel's head arithmetic at an attention site with ch channels (decoder side: up).
   SpatialTransformer(ch, heads, dim_head); AttentionBlock(ch, num_heads, num_head_channels)
   resolves to *heads (dim_head = ch / heads). */
static void ldm__unet_heads(const ldm_unet_config *c, int ch, int up, int *heads, int *dim_head) {
    int nh = c->num_heads, dh;
    if (c->num_head_channels == -1) dh = nh > 0 ? ch / nh : 0;
    else { nh = ch / c->num_head_channels; dh = c->num_head_channels; }
    if (c->legacy) dh = c->use_spatial_transformer ? (nh > 0 ? ch / nh : 0) : c->num_head_channels;
    if (c->use_spatial_transformer) { *heads = nh; *dim_head = dh; return; }
    int nha = up ? (c->num_heads_upsample == -1 ? c->num_heads : c->num_heads_upsample) : nh;
    *heads = dh == -1 ? nha : (dh > 0 ? ch / dh : 0);
    *dim_head = *heads > 0 ? ch / *heads : 0;
}

LDM_API ldm_result ldm_unet_config_check(ldm_ctx *ctx, const ldm_unet_config *c) {
#define LDM__UNET_REQ(cond, ...) do { if (!(cond)) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "UNetModel config: " __VA_ARGS__); } while (0)
    LDM__UNET_REQ(c->n_levels >= 1 && c->n_levels <= LDM_UNET_MAX_LEVELS, "channel_mult needs 1 to %d entries, got %d", LDM_UNET_MAX_LEVELS, c->n_levels);
    LDM__UNET_REQ(c->n_attn >= 0 && c->n_attn <= LDM_UNET_MAX_LEVELS, "at most %d attention_resolutions", LDM_UNET_MAX_LEVELS);
    LDM__UNET_REQ(c->model_channels > 0 && c->model_channels % 32 == 0, "model_channels = %d: GroupNorm32 needs a positive multiple of 32", c->model_channels);
    for (int i = 0; i < c->n_levels; i++) LDM__UNET_REQ(c->channel_mult[i] > 0, "channel_mult[%d] = %d must be positive", i, c->channel_mult[i]);
    LDM__UNET_REQ(c->num_res_blocks >= 1 && c->num_res_blocks <= 64, "num_res_blocks = %d must be 1..64", c->num_res_blocks);
    LDM__UNET_REQ(c->in_channels > 0 && c->out_channels > 0, "in_channels (%d) and out_channels (%d) must be positive", c->in_channels, c->out_channels);
    LDM__UNET_REQ(c->dims == 2 || c->dims == 3, "dims = %d: 2 (images) or 3 (video)", c->dims);
    LDM__UNET_REQ(c->dims == 2 || (c->conv_resample && !c->resblock_updown && !c->use_spatial_transformer),
                  "dims = 3 needs conv_resample, no resblock_updown and no spatial transformer here (hint: no 1x2x2 pooling op yet)");
    LDM__UNET_REQ(c->dropout >= 0.0f && c->dropout < 1.0f, "dropout = %g must be in [0, 1)", (double)c->dropout);
    LDM__UNET_REQ(c->num_heads != -1 || c->num_head_channels != -1, "either num_heads or num_head_channels has to be set");
    LDM__UNET_REQ(c->num_head_channels == -1 || c->num_head_channels > 0, "num_head_channels = %d must be positive (or -1)", c->num_head_channels);
    LDM__UNET_REQ(!c->use_spatial_transformer || c->context_dim > 0, "use_spatial_transformer needs context_dim");
    LDM__UNET_REQ(c->context_dim <= 0 || c->use_spatial_transformer, "context_dim is set: use_spatial_transformer must be true");
    LDM__UNET_REQ(c->transformer_depth >= 1, "transformer_depth = %d must be >= 1", c->transformer_depth);
    LDM__UNET_REQ(c->num_classes == -1 || c->num_classes > 0, "num_classes = %d must be positive (or -1: none)", c->num_classes);
    /* every attention site: the channels the UNet will have there */
    int ch = c->model_channels, ds = 1;
    for (int pass = 0; pass < 2; pass++) {
        for (int lv = 0; lv < c->n_levels; lv++) {
            int lvl = pass ? c->n_levels - 1 - lv : lv, d = pass ? ds >> lv : ds << lv;
            ch = c->model_channels * c->channel_mult[lvl];
            LDM__UNET_REQ(ch % 32 == 0, "model_channels * channel_mult[%d] = %d: GroupNorm32 needs a multiple of 32", lvl, ch);
            if (!ldm__unet_has_attn(c, d) && !(pass == 0 && lv == c->n_levels - 1)) continue;
            int h, dh;
            ldm__unet_heads(c, ch, pass, &h, &dh);
            LDM__UNET_REQ(h >= 1 && dh >= 1 && (c->use_spatial_transformer || ch % h == 0),
                          "attention with %d channels gets %d heads of %d (hint: check num_heads / num_head_channels)", ch, h, dh);
        }
        if (!pass) ds <<= c->n_levels - 1;
    }
    return LDM_OK;
#undef LDM__UNET_REQ
}

/* ---- UNet: modules ----------------------------------------------------------------------------- */
/* conv_nd(dims, ...): 2-D or 3-D (3x3x3, stride 1x2x2 for Downsample), one call site each. */
typedef struct ldm__uconv { int dims; ldm_nn_conv2d c2; ldm_nn_conv3d c3; } ldm__uconv;
static void ldm__uconv_init(ldm_nn_params *P, ldm__uconv *m, const char *name, int dims, int in, int out, int k, int down) {
    int p = k / 2;
    m->dims = dims;
    if (dims == 3) {
        int kk[3] = {k, k, k}, st[3] = {1, down ? 2 : 1, down ? 2 : 1}, pad[6] = {p, p, p, p, p, p};
        ldm_nn_conv3d_init_ex(P, &m->c3, name, in, out, kk, st, pad, 1);
    } else {
        ldm_nn_conv2d_init(P, &m->c2, name, in, out, k, down ? 2 : 1, p, 1);
    }
}
static ldm_tensor *ldm__uconv_fw(ldm_ctx *ctx, const ldm__uconv *m, ldm_tensor *x) {
    return m->dims == 3 ? ldm_nn_conv3d_forward(ctx, &m->c3, x) : ldm_nn_conv2d_forward(ctx, &m->c2, x);
}
static void ldm__uconv_zero(ldm_nn_params *P, ldm__uconv *m) { /* zero_module */
    ldm_nn_set_init(P, m->dims == 3 ? m->c3.weight : m->c2.weight, ldm_nn_init_const(0.0f));
    ldm_nn_set_init(P, m->dims == 3 ? m->c3.bias : m->c2.bias, ldm_nn_init_const(0.0f));
}

typedef struct ldm__ures {
    ldm_nn_groupnorm in_norm, out_norm;
    ldm__uconv in_conv, out_conv, skip;
    ldm_nn_linear emb;
    int has_skip, updown;         /* updown: 1 up, -1 down, 0 neither */
    int cout, scale_shift;
} ldm__ures;
typedef struct ldm__uattn {       /* AttentionBlock */
    ldm_nn_groupnorm norm;
    ldm_tensor *qkv_w, *qkv_b, *proj_w, *proj_b;   /* conv1d weights [3C, C, 1], [C, C, 1] */
    int C, heads, new_order;
} ldm__uattn;
typedef struct ldm__utblock {     /* BasicTransformerBlock */
    ldm_nn_linear q1, k1, v1, o1, ff0, ff2, q2, k2, v2, o2;
    ldm_nn_layernorm norm1, norm2, norm3;
} ldm__utblock;
typedef struct ldm__ust {         /* SpatialTransformer */
    ldm_nn_groupnorm norm;
    ldm_nn_conv2d pin_c, pout_c;
    ldm_nn_linear pin_l, pout_l;
    ldm__utblock *blk;
    int depth, heads, inner, linear;
} ldm__ust;
enum { LDM__UL_CONV, LDM__UL_RES, LDM__UL_ATTN, LDM__UL_ST, LDM__UL_DOWN, LDM__UL_UP };
typedef struct ldm__ulayer {
    int kind, use_conv;
    ldm__uconv conv;              /* CONV; DOWN/UP with conv_resample */
    ldm__ures res;
    ldm__uattn attn;
    ldm__ust st;
} ldm__ulayer;
typedef struct ldm__ublock { ldm__ulayer l[3]; int n; } ldm__ublock;   /* TimestepEmbedSequential */

struct ldm_unet {
    ldm_unet_config cfg;
    ldm_nn_params *P;
    int training;
    ldm_nn_linear te0, te2;
    ldm_nn_embedding label_emb;
    ldm__ublock *in, mid, *out;
    int n_in, n_out;
    ldm_nn_groupnorm out_norm;
    ldm__uconv out_conv;
};

static void ldm__ures_reg(ldm_nn_params *P, const ldm_unet_config *c, ldm__ures *r, int cin, int cout, int updown) {
    int emb = 4 * c->model_channels;
    r->cout = cout; r->updown = updown; r->scale_shift = c->use_scale_shift_norm;
    ldm_nn_groupnorm_init(P, &r->in_norm, "in_layers.0", 32, cin, 1e-5f, 1);
    ldm__uconv_init(P, &r->in_conv, "in_layers.2", c->dims, cin, cout, 3, 0);
    ldm_nn_linear_init(P, &r->emb, "emb_layers.1", emb, c->use_scale_shift_norm ? 2 * cout : cout, 1);
    ldm_nn_groupnorm_init(P, &r->out_norm, "out_layers.0", 32, cout, 1e-5f, 1);
    ldm__uconv_init(P, &r->out_conv, "out_layers.3", c->dims, cout, cout, 3, 0);
    ldm__uconv_zero(P, &r->out_conv);
    r->has_skip = cin != cout;    /* use_conv is never set by UNetModel: a 1x1 skip */
    if (r->has_skip) ldm__uconv_init(P, &r->skip, "skip_connection", c->dims, cin, cout, 1, 0);
}
static void ldm__uattn_reg(ldm_nn_params *P, const ldm_unet_config *c, ldm__uattn *a, int ch, int heads) {
    a->C = ch; a->heads = heads; a->new_order = c->use_new_attention_order;
    ldm_nn_groupnorm_init(P, &a->norm, "norm", 32, ch, 1e-5f, 1);
    a->qkv_w = ldm_nn_param(P, "qkv.weight", ldm_shape3(3 * ch, ch, 1), ldm_nn_init_kaiming_uniform(sqrt(5.0), ch));
    a->qkv_b = ldm_nn_param(P, "qkv.bias", ldm_shape1(3 * ch), ldm_nn_init_fan_in_uniform(ch));
    a->proj_w = ldm_nn_param(P, "proj_out.weight", ldm_shape3(ch, ch, 1), ldm_nn_init_const(0.0f));
    a->proj_b = ldm_nn_param(P, "proj_out.bias", ldm_shape1(ch), ldm_nn_init_const(0.0f));
}
static void ldm__ust_reg(ldm_ctx *ctx, ldm_nn_params *P, const ldm_unet_config *c, ldm__ust *s, int ch, int heads, int dim_head) {
    int inner = heads * dim_head, cd = c->context_dim;
    s->depth = c->transformer_depth; s->heads = heads; s->inner = inner; s->linear = c->use_linear_in_transformer;
    s->blk = (ldm__utblock *)LDM_MALLOC(sizeof(ldm__utblock) * (size_t)s->depth);
    if (!s->blk) { ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "SpatialTransformer: out of memory"); return; }
    memset(s->blk, 0, sizeof(ldm__utblock) * (size_t)s->depth);
    ldm_nn_groupnorm_init(P, &s->norm, "norm", 32, ch, 1e-6f, 1);
    if (s->linear) ldm_nn_linear_init(P, &s->pin_l, "proj_in", ch, inner, 1);
    else ldm_nn_conv2d_init(P, &s->pin_c, "proj_in", ch, inner, 1, 1, 0, 1);
    for (int d = 0; d < s->depth; d++) {
        ldm__utblock *b = &s->blk[d];
        ldm_nn_pushf(P, "transformer_blocks.%d", d);
        ldm_nn_linear_init(P, &b->q1, "attn1.to_q", inner, inner, 0);
        ldm_nn_linear_init(P, &b->k1, "attn1.to_k", inner, inner, 0);
        ldm_nn_linear_init(P, &b->v1, "attn1.to_v", inner, inner, 0);
        ldm_nn_linear_init(P, &b->o1, "attn1.to_out.0", inner, inner, 1);
        ldm_nn_linear_init(P, &b->ff0, "ff.net.0.proj", inner, 2 * 4 * inner, 1);
        ldm_nn_linear_init(P, &b->ff2, "ff.net.2", 4 * inner, inner, 1);
        ldm_nn_linear_init(P, &b->q2, "attn2.to_q", inner, inner, 0);
        ldm_nn_linear_init(P, &b->k2, "attn2.to_k", cd > 0 ? cd : inner, inner, 0);
        ldm_nn_linear_init(P, &b->v2, "attn2.to_v", cd > 0 ? cd : inner, inner, 0);
        ldm_nn_linear_init(P, &b->o2, "attn2.to_out.0", inner, inner, 1);
        ldm_nn_layernorm_init(P, &b->norm1, "norm1", ldm_shape1(inner), 1e-5f, 1);
        ldm_nn_layernorm_init(P, &b->norm2, "norm2", ldm_shape1(inner), 1e-5f, 1);
        ldm_nn_layernorm_init(P, &b->norm3, "norm3", ldm_shape1(inner), 1e-5f, 1);
        ldm_nn_pop(P);
    }
    /* SD2's linear proj_out is nn.Linear(in_channels, inner_dim): [inner, ch], equal to the
       right [ch, inner] whenever it can run (inner == ch) */
    if (s->linear) { ldm_nn_linear_init(P, &s->pout_l, "proj_out", inner, ch, 1);
                     ldm_nn_set_init(P, s->pout_l.weight, ldm_nn_init_const(0.0f)); ldm_nn_set_init(P, s->pout_l.bias, ldm_nn_init_const(0.0f)); }
    else { ldm_nn_conv2d_init(P, &s->pout_c, "proj_out", inner, ch, 1, 1, 0, 1);
           ldm_nn_set_init(P, s->pout_c.weight, ldm_nn_init_const(0.0f)); ldm_nn_set_init(P, s->pout_c.bias, ldm_nn_init_const(0.0f)); }
}
/* The attention layer (index k of the current block) at a site with ch channels. */
static void ldm__ulayer_attn(ldm_ctx *ctx, ldm_nn_params *P, const ldm_unet_config *c, ldm__ulayer *L, int k, int ch, int up) {
    int heads, dh;
    ldm__unet_heads(c, ch, up, &heads, &dh);
    ldm_nn_pushf(P, "%d", k);
    if (c->use_spatial_transformer) { L->kind = LDM__UL_ST; ldm__ust_reg(ctx, P, c, &L->st, ch, heads, dh); }
    else { L->kind = LDM__UL_ATTN; ldm__uattn_reg(P, c, &L->attn, ch, heads); }
    ldm_nn_pop(P);
}
static void ldm__ulayer_res(ldm_nn_params *P, const ldm_unet_config *c, ldm__ulayer *L, int k, int cin, int cout, int updown) {
    L->kind = LDM__UL_RES;
    ldm_nn_pushf(P, "%d", k);
    ldm__ures_reg(P, c, &L->res, cin, cout, updown);
    ldm_nn_pop(P);
}

static void ldm__unet_register(ldm_ctx *ctx, ldm_unet *u) {
    const ldm_unet_config *c = &u->cfg;
    ldm_nn_params *P = u->P;
    int mc = c->model_channels, nrb = c->num_res_blocks, nl = c->n_levels;
    int chans[LDM_UNET_MAX_LEVELS * 65 + 1], nch = 0;
    ldm_nn_linear_init(P, &u->te0, "time_embed.0", mc, 4 * mc, 1);
    ldm_nn_linear_init(P, &u->te2, "time_embed.2", 4 * mc, 4 * mc, 1);
    if (c->num_classes > 0) ldm_nn_embedding_init(P, &u->label_emb, "label_emb", c->num_classes, 4 * mc);

    int ch = mc, ds = 1, bi = 0;
    ldm_nn_pushf(P, "input_blocks.%d", bi);
    u->in[bi].n = 1; u->in[bi].l[0].kind = LDM__UL_CONV;
    ldm__uconv_init(P, &u->in[bi].l[0].conv, "0", c->dims, c->in_channels, mc, 3, 0);
    ldm_nn_pop(P);
    chans[nch++] = ch; bi++;
    for (int lv = 0; lv < nl; lv++) {
        for (int j = 0; j < nrb; j++, bi++) {
            ldm__ublock *B = &u->in[bi];
            ldm_nn_pushf(P, "input_blocks.%d", bi);
            ldm__ulayer_res(P, c, &B->l[0], 0, ch, mc * c->channel_mult[lv], 0);
            ch = mc * c->channel_mult[lv];
            B->n = 1;
            if (ldm__unet_has_attn(c, ds)) ldm__ulayer_attn(ctx, P, c, &B->l[B->n++], 1, ch, 0);
            ldm_nn_pop(P);
            chans[nch++] = ch;
        }
        if (lv != nl - 1) {
            ldm__ublock *B = &u->in[bi];
            ldm_nn_pushf(P, "input_blocks.%d", bi);
            B->n = 1;
            if (c->resblock_updown) ldm__ulayer_res(P, c, &B->l[0], 0, ch, ch, -1);
            else {
                B->l[0].kind = LDM__UL_DOWN; B->l[0].use_conv = c->conv_resample;
                ldm_nn_push(P, "0");
                if (c->conv_resample) ldm__uconv_init(P, &B->l[0].conv, "op", c->dims, ch, ch, 3, 1);
                ldm_nn_pop(P);
            }
            ldm_nn_pop(P);
            chans[nch++] = ch; bi++; ds *= 2;
        }
    }
    ldm_nn_push(P, "middle_block");
    u->mid.n = 3;
    ldm__ulayer_res(P, c, &u->mid.l[0], 0, ch, ch, 0);
    ldm__ulayer_attn(ctx, P, c, &u->mid.l[1], 1, ch, 0);
    ldm__ulayer_res(P, c, &u->mid.l[2], 2, ch, ch, 0);
    ldm_nn_pop(P);
    bi = 0;
    for (int lv = nl - 1; lv >= 0; lv--) {
        for (int i = 0; i <= nrb; i++, bi++) {
            ldm__ublock *B = &u->out[bi];
            int ich = chans[--nch];
            ldm_nn_pushf(P, "output_blocks.%d", bi);
            ldm__ulayer_res(P, c, &B->l[0], 0, ch + ich, mc * c->channel_mult[lv], 0);
            ch = mc * c->channel_mult[lv];
            B->n = 1;
            if (ldm__unet_has_attn(c, ds)) { ldm__ulayer_attn(ctx, P, c, &B->l[B->n], B->n, ch, 1); B->n++; }
            if (lv && i == nrb) {
                ldm__ulayer *L = &B->l[B->n];
                if (c->resblock_updown) ldm__ulayer_res(P, c, L, B->n, ch, ch, 1);
                else {
                    L->kind = LDM__UL_UP; L->use_conv = c->conv_resample;
                    ldm_nn_pushf(P, "%d", B->n);
                    if (c->conv_resample) ldm__uconv_init(P, &L->conv, "conv", c->dims, ch, ch, 3, 0);
                    ldm_nn_pop(P);
                }
                B->n++;
                ds /= 2;
            }
            ldm_nn_pop(P);
        }
    }
    ldm_nn_groupnorm_init(P, &u->out_norm, "out.0", 32, ch, 1e-5f, 1);
    ldm__uconv_init(P, &u->out_conv, "out.2", c->dims, mc, c->out_channels, 3, 0);
    ldm__uconv_zero(P, &u->out_conv);
}

static void ldm__unet_free(ldm_unet *u) {
    ldm__ublock *lists[3] = {u->in, &u->mid, u->out};
    int counts[3] = {u->in ? u->n_in : 0, 1, u->out ? u->n_out : 0};
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < counts[k]; i++)
            for (int j = 0; j < 3; j++)
                if (lists[k][i].l[j].kind == LDM__UL_ST) LDM_FREE(lists[k][i].l[j].st.blk);
    LDM_FREE(u->in);
    LDM_FREE(u->out);
    ldm_nn_params_destroy(u->P);
    LDM_FREE(u);
}

/* Registers (no allocation yet) into a new model struct. */
static ldm_result ldm__unet_build(ldm_ctx *ctx, ldm_unet **out, const ldm_unet_config *cfg) {
    *out = NULL;
    if (ldm_unet_config_check(ctx, cfg)) return ldm_ctx_status(ctx);
    ldm_unet *u = (ldm_unet *)LDM_MALLOC(sizeof *u);
    if (!u) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "UNetModel: out of memory");
    memset(u, 0, sizeof *u);
    u->cfg = *cfg;
    u->n_in = 1 + cfg->n_levels * cfg->num_res_blocks + cfg->n_levels - 1;
    u->n_out = cfg->n_levels * (cfg->num_res_blocks + 1);
    u->in = (ldm__ublock *)LDM_MALLOC(sizeof(ldm__ublock) * (size_t)u->n_in);
    u->out = (ldm__ublock *)LDM_MALLOC(sizeof(ldm__ublock) * (size_t)u->n_out);
    ldm_result r = u->in && u->out ? ldm_nn_params_create(ctx, &u->P, ldm_ctx_device(ctx))
                                   : ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "UNetModel: out of memory");
    if (r) { LDM_FREE(u->in); LDM_FREE(u->out); LDM_FREE(u); return r; }
    memset(u->in, 0, sizeof(ldm__ublock) * (size_t)u->n_in);
    memset(u->out, 0, sizeof(ldm__ublock) * (size_t)u->n_out);
    ldm__unet_register(ctx, u);
    if ((r = ldm_ctx_status(ctx)) != LDM_OK) { ldm__unet_free(u); return r; }
    *out = u;
    return LDM_OK;
}
LDM_API ldm_result ldm_unet_create(ldm_ctx *ctx, ldm_unet **out, const ldm_unet_config *cfg) {
    ldm_unet *u;
    ldm_result r = ldm__unet_build(ctx, &u, cfg);
    *out = NULL;
    if (r) return r;
    if ((r = ldm_nn_params_alloc(ctx, u->P)) != LDM_OK) { ldm__unet_free(u); return r; }
    *out = u;
    return LDM_OK;
}
LDM_API ldm_result ldm_unet_count_params(ldm_ctx *ctx, const ldm_unet_config *cfg, int64_t *n) {
    ldm_unet *u;
    ldm_result r = ldm__unet_build(ctx, &u, cfg);
    *n = r ? 0 : ldm_nn_numel(u->P, NULL, 0);
    if (!r) ldm__unet_free(u);
    return r;
}
LDM_API void ldm_unet_destroy(ldm_unet *u) { if (u) ldm__unet_free(u); }
LDM_API ldm_nn_params *ldm_unet_params(ldm_unet *u) { return u->P; }
LDM_API const ldm_unet_config *ldm_unet_cfg(const ldm_unet *u) { return &u->cfg; }
LDM_API void ldm_unet_set_training(ldm_unet *u, int on) { u->training = on; }
LDM_API ldm_result ldm_unet_load(ldm_ctx *ctx, ldm_unet *u, const char *path, const char *prefix, int strict, ldm_nn_load_report *report) {
    return ldm__dn_load(ctx, u->P, path, prefix, strict, report);
}
LDM_API ldm_result ldm_unet_save(ldm_ctx *ctx, const ldm_unet *u, const char *path, ldm_dtype dtype, const char *prefix) {
    return ldm_nn_save(ctx, u->P, path, dtype, prefix);
}

/* ---- UNet: forward ------------------------------------------------------------------------------ */
static ldm_tensor *ldm__upsample2(ldm_ctx *ctx, ldm_tensor *x) { return ldm_upsample_nearest(ctx, x, 1, 2, 2); }

/* ResBlock._forward; semb = SiLU(emb), shared by every block (emb_layers.0). */
static ldm_tensor *ldm__ures_fw(ldm_ctx *ctx, const ldm_unet *u, const ldm__ures *r, ldm_tensor *x, ldm_tensor *semb) {
    ldm_tensor *h = ldm_nn_groupnorm_silu_forward(ctx, &r->in_norm, x);
    if (r->updown > 0) { h = ldm__upsample2(ctx, h); x = ldm__upsample2(ctx, x); }
    else if (r->updown < 0) { h = ldm_avg_pool(ctx, h, 2, 2, 0); x = ldm_avg_pool(ctx, x, 2, 2, 0); }
    h = ldm__uconv_fw(ctx, &r->in_conv, h);
    ldm_tensor *e = ldm_nn_linear_forward(ctx, &r->emb, semb);
    if (!h || !e) return NULL;
    int64_t ed[LDM_MAX_DIMS];  /* emb_out[..., None, None]: [B, C', 1, 1(, 1)] */
    ed[0] = e->shape[0]; ed[1] = e->shape[1];
    for (int d = 2; d < h->ndim; d++) ed[d] = 1;
    e = ldm_reshape(ctx, e, ldm_shape_n(h->ndim, ed));
    if (r->scale_shift) {
        ldm_tensor *ss[2];
        if (ldm_chunk(ctx, e, 2, 1, ss)) return NULL;
        h = ldm_nn_groupnorm_forward(ctx, &r->out_norm, h);
        h = ldm_silu(ctx, ldm_add(ctx, ldm_mul(ctx, h, ldm_add_scalar(ctx, ss[0], 1.0f)), ss[1]));
    } else {
        h = ldm_nn_groupnorm_silu_forward(ctx, &r->out_norm, ldm_add_into(ctx, h, e));   /* h: in_conv's fresh output */
    }
    if (u->cfg.dropout > 0.0f) h = ldm_dropout(ctx, h, u->cfg.dropout, u->training);
    h = ldm__uconv_fw(ctx, &r->out_conv, h);
    return ldm_add_into(ctx, h, r->has_skip ? ldm__uconv_fw(ctx, &r->skip, x) : x);   /* h: out_conv's fresh output */
}

/* AttentionBlock on [B, C, ...] flattened to T positions; the 1x1 conv1ds run as linears on
   [B, T, C]. Legacy order: qkv channels are [head][q|k|v][ch]; new order: [q|k|v][head][ch]. */
static ldm_tensor *ldm__uattn_fw(ldm_ctx *ctx, const ldm__uattn *a, ldm_tensor *x) {
    int64_t B = x->shape[0], C = a->C, T = x->numel / (B * C), ch = C / a->heads;
    ldm_tensor *xf = ldm_reshape(ctx, x, ldm_shape3(B, C, T));
    ldm_tensor *h = ldm_transpose(ctx, ldm_nn_groupnorm_forward(ctx, &a->norm, xf), 1, 2);
    ldm_tensor *qkv = ldm_linear(ctx, h, ldm_reshape(ctx, a->qkv_w, ldm_shape2(3 * C, C)), a->qkv_b);
    if (!a->new_order) {
        static const int perm[5] = {0, 1, 3, 2, 4};
        qkv = ldm_reshape(ctx, ldm_permute(ctx, ldm_reshape(ctx, qkv, ldm_shape5(B, T, a->heads, 3, ch)), perm), ldm_shape3(B, T, 3 * C));
    }
    ldm_tensor *p[3];
    if (!qkv || ldm_chunk(ctx, qkv, 3, 2, p)) return NULL;
    h = ldm_attention(ctx, p[0], p[1], p[2], a->heads, 0.0f);
    h = ldm_linear(ctx, h, ldm_reshape(ctx, a->proj_w, ldm_shape2(C, C)), a->proj_b);
    h = ldm_add_into(ctx, ldm_transpose(ctx, h, 1, 2), xf);
    return h ? ldm_reshape(ctx, h, ldm_shape_of(x)) : NULL;
}

/* CrossAttention: context NULL = self-attention. */
static ldm_tensor *ldm__ucross(ldm_ctx *ctx, const ldm_nn_linear *q, const ldm_nn_linear *k, const ldm_nn_linear *v,
                               const ldm_nn_linear *o, int heads, ldm_tensor *x, ldm_tensor *context) {
    ldm_tensor *c = context ? context : x;
    ldm_tensor *h = ldm_attention(ctx, ldm_nn_linear_forward(ctx, q, x), ldm_nn_linear_forward(ctx, k, c),
                                  ldm_nn_linear_forward(ctx, v, c), heads, 0.0f);
    return ldm_nn_linear_forward(ctx, o, h);
}
static ldm_tensor *ldm__ust_fw(ldm_ctx *ctx, const ldm__ust *s, ldm_tensor *x, ldm_tensor *context) {
    int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    ldm_tensor *h = ldm_nn_groupnorm_forward(ctx, &s->norm, x);
    if (!s->linear) h = ldm_nn_conv2d_forward(ctx, &s->pin_c, h);
    h = ldm_transpose(ctx, ldm_reshape(ctx, h, ldm_shape3(B, s->linear ? C : s->inner, H * W)), 1, 2);
    if (s->linear) h = ldm_nn_linear_forward(ctx, &s->pin_l, h);
    for (int d = 0; d < s->depth; d++) {
        const ldm__utblock *b = &s->blk[d];
        /* the residual adds go into the fresh outputs of to_out and ff.net.2 (ldm_add_into) */
        h = ldm_add_into(ctx, ldm__ucross(ctx, &b->q1, &b->k1, &b->v1, &b->o1, s->heads, ldm_nn_layernorm_forward(ctx, &b->norm1, h), NULL), h);
        h = ldm_add_into(ctx, ldm__ucross(ctx, &b->q2, &b->k2, &b->v2, &b->o2, s->heads, ldm_nn_layernorm_forward(ctx, &b->norm2, h), context), h);
        ldm_tensor *f = ldm_nn_linear_forward(ctx, &b->ff0, ldm_nn_layernorm_forward(ctx, &b->norm3, h));
        f = ldm_geglu(ctx, f);   /* GEGLU: value half times gelu(gate half) */
        h = ldm_add_into(ctx, ldm_nn_linear_forward(ctx, &b->ff2, f), h);
    }
    if (s->linear) h = ldm_nn_linear_forward(ctx, &s->pout_l, h);
    h = ldm_reshape(ctx, ldm_transpose(ctx, h, 1, 2), ldm_shape4(B, s->linear ? C : s->inner, H, W));
    if (!s->linear) h = ldm_nn_conv2d_forward(ctx, &s->pout_c, h);
    return ldm_add_into(ctx, h, x);   /* h: proj_out's (or the transpose's) fresh output */
}

static ldm_tensor *ldm__ublock_fw(ldm_ctx *ctx, const ldm_unet *u, const ldm__ublock *B, ldm_tensor *h, ldm_tensor *semb, ldm_tensor *context) {
    for (int i = 0; i < B->n && h; i++) {
        const ldm__ulayer *L = &B->l[i];
        switch (L->kind) {
        case LDM__UL_CONV: h = ldm__uconv_fw(ctx, &L->conv, h); break;
        case LDM__UL_RES: h = ldm__ures_fw(ctx, u, &L->res, h, semb); break;
        case LDM__UL_ATTN: h = ldm__uattn_fw(ctx, &L->attn, h); break;
        case LDM__UL_ST: h = ldm__ust_fw(ctx, &L->st, h, context); break;
        case LDM__UL_DOWN: h = L->use_conv ? ldm__uconv_fw(ctx, &L->conv, h) : ldm_avg_pool(ctx, h, 2, 2, 0); break;
        case LDM__UL_UP: h = ldm__upsample2(ctx, h); if (L->use_conv) h = ldm__uconv_fw(ctx, &L->conv, h); break;
        }
    }
    return h;
}

LDM_API ldm_tensor *ldm_unet_forward(ldm_ctx *ctx, ldm_unet *u, ldm_tensor *x, ldm_tensor *t, ldm_tensor *context, ldm_tensor *y) {
    const ldm_unet_config *c = &u->cfg;
    int nd = c->dims + 2, f = 1 << (c->n_levels - 1);
    if (!x || !t) { ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "UNetModel: x and t are required"); return NULL; }
    if (x->ndim != nd || x->shape[1] != c->in_channels || x->shape[nd - 1] % f || x->shape[nd - 2] % f || t->numel != x->shape[0]) {
        char b[64];
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "UNetModel: x %s with %lld steps; expected %d-D [B, %d, ...] with H, W divisible by %d and t [B]",
                       ldm_shape_str(x, b, sizeof b), (long long)t->numel, nd, c->in_channels, f);
        return NULL;
    }
    if ((y != NULL) != (c->num_classes > 0)) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "UNetModel: give y if and only if the model is class-conditional (num_classes = %d)", c->num_classes);
        return NULL;
    }
    if (context && (context->ndim != 3 || context->shape[0] != x->shape[0] || context->shape[2] != c->context_dim || !c->use_spatial_transformer)) {
        char b[64];
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "UNetModel: context %s, expected [B, L, %d] for a model with use_spatial_transformer",
                       ldm_shape_str(context, b, sizeof b), c->context_dim);
        return NULL;
    }
    ldm_tensor *emb = ldm_nn_linear_forward(ctx, &u->te2, ldm_silu(ctx, ldm_nn_linear_forward(ctx, &u->te0, ldm_timestep_embedding(ctx, t, c->model_channels))));
    if (y) {
        int64_t *idx = ldm__dn_labels(ctx, "UNetModel", y, x->shape[0], c->num_classes);
        if (!idx) return NULL;
        emb = ldm_add(ctx, emb, ldm_nn_embedding_forward(ctx, &u->label_emb, x->shape[0], idx));
    }
    ldm_tensor *semb = ldm_silu(ctx, emb);
    ldm_tensor **hs = (ldm_tensor **)ldm_arena_alloc(ctx, LDM_CPU, sizeof(ldm_tensor *) * (size_t)u->n_in);
    if (!semb || !hs) return NULL;
    /* Without grad (sampling) each block's temporaries are dropped once its output exists: the
       output moves down to the block's mark (ldm_arena_keep), so the arena holds the skip
       connections and a block's working set rather than every intermediate of the network. */
    int keep = !ldm_grad_enabled(ctx) && x->device == LDM_CPU;
    ldm_tensor *h = x;
    for (int i = 0; i < u->n_in && h; i++) {
        ldm_mark m = ldm_arena_mark(ctx);
        h = ldm__ublock_fw(ctx, u, &u->in[i], h, semb, context);
        hs[i] = h = keep ? ldm_arena_keep(ctx, m, h) : h;
    }
    ldm_mark m = ldm_arena_mark(ctx);
    h = h ? ldm__ublock_fw(ctx, u, &u->mid, h, semb, context) : NULL;
    if (keep) h = ldm_arena_keep(ctx, m, h);
    for (int i = 0, k = u->n_in; i < u->n_out && h; i++) {
        ldm_tensor *cat[2] = {h, hs[--k]};
        m = ldm_arena_mark(ctx);
        h = ldm__ublock_fw(ctx, u, &u->out[i], ldm_concat(ctx, 2, cat, 1), semb, context);
        if (keep) h = ldm_arena_keep(ctx, m, h);
    }
    return h ? ldm__uconv_fw(ctx, &u->out_conv, ldm_nn_groupnorm_silu_forward(ctx, &u->out_norm, h)) : NULL;
}

static ldm_tensor *ldm__unet_denoise(ldm_ctx *ctx, void *self, ldm_tensor *x, ldm_tensor *t, const ldm_cond *cond) {
    ldm_unet *u = (ldm_unet *)self;
    if (cond && cond->concat) { ldm_tensor *xs[2] = {x, cond->concat}; x = ldm_concat(ctx, 2, xs, 1); } /* torch.cat([x] + c_concat, 1) */
    return ldm_unet_forward(ctx, u, x, t, cond ? cond->context : NULL, cond ? cond->y : NULL);
}
LDM_API ldm_denoiser ldm_unet_denoiser(ldm_unet *u) { ldm_denoiser d; d.forward = ldm__unet_denoise; d.self = u; return d; }

/* ---- ClassEmbedder ------------------------------------------------------------------------------ */
struct ldm_class_embedder { ldm_nn_params *P; ldm_nn_embedding embedding; int n_classes, embed_dim; };
LDM_API ldm_result ldm_class_embedder_create(ldm_ctx *ctx, ldm_class_embedder **out, int n_classes, int embed_dim) {
    *out = NULL;
    if (n_classes < 1 || embed_dim < 1)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ClassEmbedder: n_classes (%d) and embed_dim (%d) must be positive", n_classes, embed_dim);
    ldm_class_embedder *ce = (ldm_class_embedder *)LDM_MALLOC(sizeof *ce);
    if (!ce) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ClassEmbedder: out of memory");
    memset(ce, 0, sizeof *ce);
    ce->n_classes = n_classes; ce->embed_dim = embed_dim;
    ldm_result r = ldm_nn_params_create(ctx, &ce->P, ldm_ctx_device(ctx));
    if (r) { LDM_FREE(ce); return r; }
    ldm_nn_embedding_init(ce->P, &ce->embedding, "embedding", n_classes, embed_dim);
    if ((r = ldm_nn_params_alloc(ctx, ce->P)) != LDM_OK) { ldm_class_embedder_destroy(ce); return r; }
    *out = ce;
    return LDM_OK;
}
LDM_API void ldm_class_embedder_destroy(ldm_class_embedder *ce) {
    if (!ce) return;
    ldm_nn_params_destroy(ce->P);
    LDM_FREE(ce);
}
LDM_API ldm_nn_params *ldm_class_embedder_params(ldm_class_embedder *ce) { return ce->P; }
LDM_API ldm_tensor *ldm_class_embedder_forward(ldm_ctx *ctx, ldm_class_embedder *ce, ldm_tensor *y) {
    int64_t B = y ? y->numel : 0;
    int64_t *idx = ldm__dn_labels(ctx, "ClassEmbedder", y, B, ce->n_classes);
    ldm_tensor *e = idx ? ldm_nn_embedding_forward(ctx, &ce->embedding, B, idx) : NULL;
    return e ? ldm_reshape(ctx, e, ldm_shape3(B, 1, ce->embed_dim)) : NULL;  /* batch[key][:, None] */
}
LDM_API ldm_result ldm_class_embedder_load(ldm_ctx *ctx, ldm_class_embedder *ce, const char *path, const char *prefix, int strict, ldm_nn_load_report *report) {
    return ldm__dn_load(ctx, ce->P, path, prefix, strict, report);
}
LDM_API ldm_result ldm_class_embedder_save(ldm_ctx *ctx, const ldm_class_embedder *ce, const char *path, ldm_dtype dtype, const char *prefix) {
    return ldm_nn_save(ctx, ce->P, path, dtype, prefix);
}

/* ---- DiT ---------------------------------------------------------------------------------------- */
LDM_API ldm_result ldm_dit_config_preset(ldm_ctx *ctx, const char *name, ldm_dit_config *c) {
    static const struct { const char *size; int depth, hidden, heads; } sz[4] = {
        {"XL", 28, 1152, 16}, {"L", 24, 1024, 16}, {"B", 12, 768, 12}, {"S", 12, 384, 6}};
    for (int i = 0; i < 4; i++)
        for (int p = 2; p <= 8; p *= 2) {
            char full[32];
            snprintf(full, sizeof full, "DiT-%s/%d", sz[i].size, p);
            if (!name || strcmp(name, full) != 0) continue;
            memset(c, 0, sizeof *c);
            c->input_size = 32; c->patch_size = p; c->in_channels = 4; c->hidden_size = sz[i].hidden;
            c->depth = sz[i].depth; c->num_heads = sz[i].heads; c->mlp_ratio = 4.0f;
            c->class_dropout_prob = 0.1f; c->num_classes = 1000; c->learn_sigma = 1;
            return LDM_OK;
        }
    return ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "DiT: unknown model '%s' (hint: DiT-XL/2, DiT-L/4, DiT-B/8, DiT-S/2, ...: XL, L, B, S with patch 2, 4 or 8)",
                          name ? name : "(null)");
}
LDM_API ldm_result ldm_dit_config_check(ldm_ctx *ctx, const ldm_dit_config *c) {
#define LDM__DIT_REQ(cond, ...) do { if (!(cond)) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "DiT config: " __VA_ARGS__); } while (0)
    LDM__DIT_REQ(c->patch_size >= 1 && c->input_size >= c->patch_size && c->input_size % c->patch_size == 0,
                 "input_size %d must be a positive multiple of patch_size %d", c->input_size, c->patch_size);
    LDM__DIT_REQ(c->hidden_size > 0 && c->hidden_size % 4 == 0, "hidden_size = %d: the 2-D sin-cos embedding needs a multiple of 4", c->hidden_size);
    LDM__DIT_REQ(c->num_heads >= 1 && c->hidden_size % c->num_heads == 0, "hidden_size %d is not divisible by num_heads %d", c->hidden_size, c->num_heads);
    LDM__DIT_REQ(c->depth >= 0 && c->in_channels > 0 && c->num_classes > 0, "depth, in_channels and num_classes must be positive");
    LDM__DIT_REQ(c->mlp_ratio > 0.0f && (int)((float)c->hidden_size * c->mlp_ratio) >= 1, "mlp_ratio = %g must be positive", (double)c->mlp_ratio);
    LDM__DIT_REQ(c->class_dropout_prob >= 0.0f && c->class_dropout_prob <= 1.0f, "class_dropout_prob = %g must be in [0, 1]", (double)c->class_dropout_prob);
    return LDM_OK;
#undef LDM__DIT_REQ
}

/* The transformer shared by the DiT and the video DiT (section 5): DiT's blocks and final layer
   with either DiT's adaLN-Zero (a block's own adaLN_modulation.1 on SiLU(c)) or PixArt-alpha's
   adaLN-single (single: one t_block.1 on SiLU(c) for all blocks plus a learned scale_shift_table
   per block and in the final layer). The models add their patch embedding, pos_embed filling,
   conditioning and unpatchify. */
typedef struct ldm__dit_block {
    ldm_tensor *sst;              /* scale_shift_table [6, D] (adaLN-single), else NULL */
    ldm_nn_layernorm norm1, norm2;
    ldm_nn_linear qkv, proj, fc1, fc2, ada;
} ldm__dit_block;
typedef struct ldm__dit_trunk {
    ldm_nn_params *P;
    int depth, heads, single, out_channels;
    ldm_tensor *pos_embed;        /* [1, N, D], fixed sin-cos, requires_grad off */
    ldm_nn_linear t0, t2;         /* t_embedder.mlp.0 / .2 */
    ldm_nn_linear t_block;        /* t_block.1 (adaLN-single) */
    ldm__dit_block *blk;
    ldm_tensor *final_sst;        /* final_layer.scale_shift_table [2, D] (adaLN-single) */
    ldm_nn_layernorm norm_final;
    ldm_nn_linear final_linear, final_ada;
} ldm__dit_trunk;
struct ldm_dit {
    ldm_dit_config cfg;
    int training;
    ldm_nn_conv2d x_proj;
    ldm_nn_embedding y_table;
    ldm__dit_trunk k;
};

static void ldm__dit_xavier(ldm_nn_params *P, ldm_tensor *weight, ldm_tensor *bias, int64_t fan_in, int64_t fan_out) {
    ldm_nn_set_init(P, weight, ldm_nn_init_xavier_uniform(fan_in, fan_out, 1.0));
    ldm_nn_set_init(P, bias, ldm_nn_init_const(0.0f));
}
static void ldm__dit_zero(ldm_nn_params *P, ldm_nn_linear *m) {
    ldm_nn_set_init(P, m->weight, ldm_nn_init_const(0.0f));
    ldm_nn_set_init(P, m->bias, ldm_nn_init_const(0.0f));
}
/* The registry and a zeroed block array; who names the model in errors. */
static ldm_result ldm__dit_trunk_alloc(ldm_ctx *ctx, ldm__dit_trunk *k, const char *who, int depth, int heads, int single, int out_channels) {
    size_t nb = (size_t)(depth ? depth : 1);
    memset(k, 0, sizeof *k);
    k->depth = depth; k->heads = heads; k->single = single; k->out_channels = out_channels;
    k->blk = (ldm__dit_block *)LDM_MALLOC(sizeof(ldm__dit_block) * nb);
    if (!k->blk) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "%s: out of memory", who);
    memset(k->blk, 0, sizeof(ldm__dit_block) * nb);
    ldm_result r = ldm_nn_params_create(ctx, &k->P, ldm_ctx_device(ctx));
    if (r) { LDM_FREE(k->blk); k->blk = NULL; }
    return r;
}
static void ldm__dit_trunk_free(ldm__dit_trunk *k) {
    ldm_nn_params_destroy(k->P);
    LDM_FREE(k->blk);
}
/* t_embedder (N(0, 0.02) weights) and, adaLN-single, t_block.1; registered after x_embedder. */
static void ldm__dit_register_temb(ldm__dit_trunk *k, int D) {
    ldm_nn_params *P = k->P;
    ldm_nn_linear_init(P, &k->t0, "t_embedder.mlp.0", 256, D, 1);
    ldm_nn_linear_init(P, &k->t2, "t_embedder.mlp.2", D, D, 1);
    ldm_nn_set_init(P, k->t0.weight, ldm_nn_init_normal(0.0f, 0.02f)); ldm_nn_set_init(P, k->t0.bias, ldm_nn_init_const(0.0f));
    ldm_nn_set_init(P, k->t2.weight, ldm_nn_init_normal(0.0f, 0.02f)); ldm_nn_set_init(P, k->t2.bias, ldm_nn_init_const(0.0f));
    if (k->single) {
        ldm_nn_linear_init(P, &k->t_block, "t_block.1", D, 6 * D, 1);
        ldm_nn_set_init(P, k->t_block.weight, ldm_nn_init_normal(0.0f, 0.02f)); ldm_nn_set_init(P, k->t_block.bias, ldm_nn_init_const(0.0f));
    }
}
/* blocks.N and final_layer in state-dict order (a module's own parameters before its children);
   patch_out = values per token (patch volume x out_channels). Freezes pos_embed. */
static void ldm__dit_register_blocks(ldm__dit_trunk *k, int D, float mlp_ratio, int64_t patch_out) {
    ldm_nn_params *P = k->P;
    int hid = (int)((float)D * mlp_ratio), single = k->single;
    float sd = (float)(1.0 / sqrt((double)D));
    for (int i = 0; i < k->depth; i++) {
        ldm__dit_block *b = &k->blk[i];
        ldm_nn_pushf(P, "blocks.%d", i);
        if (single) b->sst = ldm_nn_param(P, "scale_shift_table", ldm_shape2(6, D), ldm_nn_init_normal(0.0f, sd));
        ldm_nn_layernorm_init(P, &b->norm1, "norm1", ldm_shape1(D), 1e-6f, 0);
        ldm_nn_linear_init(P, &b->qkv, "attn.qkv", D, 3 * D, 1); ldm__dit_xavier(P, b->qkv.weight, b->qkv.bias, D, 3 * D);
        ldm_nn_linear_init(P, &b->proj, "attn.proj", D, D, 1); ldm__dit_xavier(P, b->proj.weight, b->proj.bias, D, D);
        ldm_nn_layernorm_init(P, &b->norm2, "norm2", ldm_shape1(D), 1e-6f, 0);
        ldm_nn_linear_init(P, &b->fc1, "mlp.fc1", D, hid, 1); ldm__dit_xavier(P, b->fc1.weight, b->fc1.bias, D, hid);
        ldm_nn_linear_init(P, &b->fc2, "mlp.fc2", hid, D, 1); ldm__dit_xavier(P, b->fc2.weight, b->fc2.bias, hid, D);
        if (!single) { ldm_nn_linear_init(P, &b->ada, "adaLN_modulation.1", D, 6 * D, 1); ldm__dit_zero(P, &b->ada); }
        ldm_nn_pop(P);
    }
    if (single) k->final_sst = ldm_nn_param(P, "final_layer.scale_shift_table", ldm_shape2(2, D), ldm_nn_init_normal(0.0f, sd));
    ldm_nn_layernorm_init(P, &k->norm_final, "final_layer.norm_final", ldm_shape1(D), 1e-6f, 0);
    ldm_nn_linear_init(P, &k->final_linear, "final_layer.linear", D, patch_out, 1); ldm__dit_zero(P, &k->final_linear);
    if (!single) { ldm_nn_linear_init(P, &k->final_ada, "final_layer.adaLN_modulation.1", D, 2 * D, 1); ldm__dit_zero(P, &k->final_ada); }
    ldm_nn_set_trainable(P, "pos_embed", 0);
}
/* sincos_1d(d, pos) into out[d]: [sin(pos w_m), cos(pos w_m)], w_m = 10000^(-m/(d/2)), in double */
static void ldm__dit_sincos(float *out, int d, double pos) {
    int h = d / 2;
    for (int k = 0; k < h; k++) {
        double w = 1.0 / pow(10000.0, (double)k / ((double)d / 2.0));
        out[k] = (float)sin(pos * w);
        out[h + k] = (float)cos(pos * w);
    }
}

/* ---- DiT ---- */
/* Module order = DiT's state-dict order (pos_embed is DiT's own parameter, so it comes first). */
static void ldm__dit_register(ldm_dit *m) {
    const ldm_dit_config *c = &m->cfg;
    ldm_nn_params *P = m->k.P;
    int D = c->hidden_size, p = c->patch_size, g = c->input_size / p;
    m->k.pos_embed = ldm_nn_param(P, "pos_embed", ldm_shape3(1, (int64_t)g * g, D), ldm_nn_init_const(0.0f));
    ldm_nn_conv2d_init(P, &m->x_proj, "x_embedder.proj", c->in_channels, D, p, p, 0, 1);
    ldm__dit_xavier(P, m->x_proj.weight, m->x_proj.bias, (int64_t)c->in_channels * p * p, D); /* as a Linear */
    ldm__dit_register_temb(&m->k, D);
    ldm_nn_embedding_init(P, &m->y_table, "y_embedder.embedding_table", c->num_classes + (c->class_dropout_prob > 0.0f), D);
    ldm_nn_set_init(P, m->y_table.weight, ldm_nn_init_normal(0.0f, 0.02f));
    ldm__dit_register_blocks(&m->k, D, c->mlp_ratio, (int64_t)p * p * m->k.out_channels);
}
static ldm_result ldm__dit_build(ldm_ctx *ctx, ldm_dit **out, const ldm_dit_config *cfg) {
    *out = NULL;
    if (ldm_dit_config_check(ctx, cfg)) return ldm_ctx_status(ctx);
    ldm_dit *m = (ldm_dit *)LDM_MALLOC(sizeof *m);
    if (!m) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "DiT: out of memory");
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    ldm_result r = ldm__dit_trunk_alloc(ctx, &m->k, "DiT", cfg->depth, cfg->num_heads, 0, cfg->learn_sigma ? 2 * cfg->in_channels : cfg->in_channels);
    if (r) { LDM_FREE(m); return r; }
    ldm__dit_register(m);
    if ((r = ldm_ctx_status(ctx)) != LDM_OK) { ldm_dit_destroy(m); return r; }
    *out = m;
    return LDM_OK;
}
/* get_2d_sincos_pos_embed in float64, rounded to float: token n = i*g + j (row i, column j)
   gets [sincos_1d(D/2, j), sincos_1d(D/2, i)] (the first half encodes the column: numpy.meshgrid
   puts w first). */
LDM_API ldm_result ldm_dit_reset_pos_embed(ldm_ctx *ctx, ldm_dit *m) {
    int D = m->cfg.hidden_size, g = m->cfg.input_size / m->cfg.patch_size;
    float *e = (float *)LDM_MALLOC(sizeof(float) * (size_t)g * g * D);
    if (!e) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "DiT: out of memory");
    for (int i = 0; i < g; i++)
        for (int j = 0; j < g; j++) {
            float *row = e + ((size_t)i * g + j) * D;
            ldm__dit_sincos(row, D / 2, j);
            ldm__dit_sincos(row + D / 2, D / 2, i);
        }
    ldm_result r = ldm_nn_copy_from_host(ctx, m->k.pos_embed, e);
    LDM_FREE(e);
    return r;
}
LDM_API ldm_result ldm_dit_create(ldm_ctx *ctx, ldm_dit **out, const ldm_dit_config *cfg) {
    ldm_dit *m;
    ldm_result r = ldm__dit_build(ctx, &m, cfg);
    *out = NULL;
    if (r) return r;
    if ((r = ldm_nn_params_alloc(ctx, m->k.P)) != LDM_OK || (r = ldm_dit_reset_pos_embed(ctx, m)) != LDM_OK) { ldm_dit_destroy(m); return r; }
    *out = m;
    return LDM_OK;
}
LDM_API void ldm_dit_destroy(ldm_dit *m) {
    if (!m) return;
    ldm__dit_trunk_free(&m->k);
    LDM_FREE(m);
}
LDM_API ldm_result ldm_dit_count_params(ldm_ctx *ctx, const ldm_dit_config *cfg, int64_t *n) {
    ldm_dit *m;
    ldm_result r = ldm__dit_build(ctx, &m, cfg);
    *n = r ? 0 : ldm_nn_numel(m->k.P, NULL, 0);
    if (!r) ldm_dit_destroy(m);
    return r;
}
LDM_API ldm_nn_params *ldm_dit_params(ldm_dit *m) { return m->k.P; }
LDM_API const ldm_dit_config *ldm_dit_cfg(const ldm_dit *m) { return &m->cfg; }
LDM_API void ldm_dit_set_training(ldm_dit *m, int on) { m->training = on; }
LDM_API ldm_result ldm_dit_load(ldm_ctx *ctx, ldm_dit *m, const char *path, const char *prefix, int strict, ldm_nn_load_report *report) {
    return ldm__dn_load(ctx, m->k.P, path, prefix, strict, report);
}
LDM_API ldm_result ldm_dit_save(ldm_ctx *ctx, const ldm_dit *m, const char *path, ldm_dtype dtype, const char *prefix) {
    return ldm_nn_save(ctx, m->k.P, path, dtype, prefix);
}

/* modulate(x, shift, scale) = x * (1 + scale) + shift, shift/scale [B, 1, D] */
static ldm_tensor *ldm__dit_mod(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *shift, ldm_tensor *scale) {
    return ldm_add(ctx, ldm_mul(ctx, x, ldm_add_scalar(ctx, scale, 1.0f)), shift);
}
/* Patch embedding output [B, D, grid...] -> tokens [B, N, D] + pos_embed */
static ldm_tensor *ldm__dit_tokens(ldm_ctx *ctx, const ldm__dit_trunk *k, ldm_tensor *h) {
    if (!h) return NULL;
    int64_t B = h->shape[0], D = h->shape[1];
    return ldm_add(ctx, ldm_transpose(ctx, ldm_reshape(ctx, h, ldm_shape3(B, D, h->numel / (B * D))), 1, 2), k->pos_embed);
}
/* t_embedder: DiT's [cos, sin] embedding of t [B] (any real values) -> [B, D] */
static ldm_tensor *ldm__dit_temb(ldm_ctx *ctx, const ldm__dit_trunk *k, ldm_tensor *t) {
    return ldm_nn_linear_forward(ctx, &k->t2, ldm_silu(ctx, ldm_nn_linear_forward(ctx, &k->t0, ldm_timestep_embedding(ctx, t, 256))));
}
/* Block b on tokens h [B, N, D]; ada_in = SiLU(c) [B, D] (adaLN-Zero: the block's own
   adaLN_modulation.1 makes the 6 modulations) or t_block's output [B, 6D] (adaLN-single: the
   block adds its scale_shift_table). */
static ldm_tensor *ldm__dit_block_forward(ldm_ctx *ctx, const ldm__dit_block *b, int heads, ldm_tensor *h, ldm_tensor *ada_in) {
    if (!h || !ada_in) return NULL;
    int64_t B = h->shape[0], D = h->shape[2];
    ldm_tensor *md = b->sst ? ldm_add(ctx, ldm_reshape(ctx, ada_in, ldm_shape3(B, 6, D)), ldm_reshape(ctx, b->sst, ldm_shape3(1, 6, D)))
                            : ldm_reshape(ctx, ldm_nn_linear_forward(ctx, &b->ada, ada_in), ldm_shape3(B, 6, D));
    ldm_tensor *s[6], *q[3];
    if (!md || ldm_chunk(ctx, md, 6, 1, s)) return NULL;  /* shift, scale, gate (msa); shift, scale, gate (mlp): [B, 1, D] */
    ldm_tensor *a = ldm_nn_linear_forward(ctx, &b->qkv, ldm__dit_mod(ctx, ldm_nn_layernorm_forward(ctx, &b->norm1, h), s[0], s[1]));
    if (!a || ldm_chunk(ctx, a, 3, 2, q)) return NULL;
    a = ldm_nn_linear_forward(ctx, &b->proj, ldm_attention(ctx, q[0], q[1], q[2], heads, 0.0f));
    h = ldm_add(ctx, h, ldm_mul(ctx, s[2], a));
    a = ldm_nn_linear_forward(ctx, &b->fc1, ldm__dit_mod(ctx, ldm_nn_layernorm_forward(ctx, &b->norm2, h), s[3], s[4]));
    a = ldm_nn_linear_forward(ctx, &b->fc2, ldm_gelu(ctx, a, 1));
    return ldm_add(ctx, h, ldm_mul(ctx, s[5], a));
}
/* Every block, then the final layer: tokens h [B, N, D] conditioned on c [B, D] -> [B, N, patch_out] */
static ldm_tensor *ldm__dit_trunk_forward(ldm_ctx *ctx, const ldm__dit_trunk *k, ldm_tensor *h, ldm_tensor *c) {
    if (!h || !c) return NULL;
    int64_t B = h->shape[0], D = h->shape[2];
    ldm_tensor *sc = ldm_silu(ctx, c), *s[2], *md;
    ldm_tensor *ada_in = k->single ? ldm_nn_linear_forward(ctx, &k->t_block, sc) : sc;   /* t_block: shared by all blocks */
    for (int i = 0; i < k->depth && h; i++) h = ldm__dit_block_forward(ctx, &k->blk[i], k->heads, h, ada_in);
    md = k->single ? ldm_add(ctx, ldm_reshape(ctx, c, ldm_shape3(B, 1, D)), ldm_reshape(ctx, k->final_sst, ldm_shape3(1, 2, D)))
                   : ldm_reshape(ctx, ldm_nn_linear_forward(ctx, &k->final_ada, sc), ldm_shape3(B, 2, D));
    if (!h || !md || ldm_chunk(ctx, md, 2, 1, s)) return NULL;
    return ldm_nn_linear_forward(ctx, &k->final_linear, ldm__dit_mod(ctx, ldm_nn_layernorm_forward(ctx, &k->norm_final, h), s[0], s[1]));
}
LDM_API ldm_tensor *ldm_dit_forward(ldm_ctx *ctx, ldm_dit *m, ldm_tensor *x, ldm_tensor *t, ldm_tensor *y) {
    const ldm_dit_config *c = &m->cfg;
    int64_t p = c->patch_size, g = c->input_size / p;
    if (!x || !t || x->ndim != 4 || x->shape[1] != c->in_channels || x->shape[2] != c->input_size || x->shape[3] != c->input_size ||
        t->numel != x->shape[0]) {
        char b[64];
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "DiT: x %s, t %lld steps; expected x [B, %d, %d, %d] and t [B]", x ? ldm_shape_str(x, b, sizeof b) : "NULL",
                       t ? (long long)t->numel : -1LL, c->in_channels, c->input_size, c->input_size);
        return NULL;
    }
    int64_t B = x->shape[0], rows = c->num_classes + (c->class_dropout_prob > 0.0f);
    int64_t *idx = ldm__dn_labels(ctx, "DiT", y, B, rows);
    if (!idx) return NULL;
    if (m->training && c->class_dropout_prob > 0.0f) { /* token_drop: rand(B) < p -> the null class */
        float *u = (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * (size_t)B);
        if (!u) return NULL;
        ldm_rng_rows(ctx, ldm_ctx_rng(ctx), LDM_CPU, u, B, 1, 0, 0.0f, 1.0f);
        for (int64_t b = 0; b < B; b++) if (u[b] < c->class_dropout_prob) idx[b] = c->num_classes;
    }
    ldm_tensor *h = ldm__dit_tokens(ctx, &m->k, ldm_nn_conv2d_forward(ctx, &m->x_proj, x));   /* [B, N, D] */
    ldm_tensor *cond = ldm_add(ctx, ldm__dit_temb(ctx, &m->k, t), ldm_nn_embedding_forward(ctx, &m->y_table, B, idx));
    h = ldm__dit_trunk_forward(ctx, &m->k, h, cond);
    /* unpatchify: [B, (gh gw), (p q C)] -> [B, C, gh*p, gw*q] in two permutes of <= 5 dims */
    int64_t C = m->k.out_channels;
    static const int p1[5] = {0, 4, 2, 1, 3}, p2[4] = {0, 2, 1, 3};
    h = ldm_permute(ctx, ldm_reshape(ctx, h, ldm_shape5(B * g, g, p, p, C)), p1);          /* [B*gh, C, p, gw, q] */
    h = ldm_permute(ctx, ldm_reshape(ctx, h, ldm_shape4(B, g, C, p * g * p)), p2);         /* [B, C, gh, (p gw q)] */
    return h ? ldm_reshape(ctx, h, ldm_shape4(B, C, g * p, g * p)) : NULL;
}
static ldm_tensor *ldm__dit_denoise(ldm_ctx *ctx, void *self, ldm_tensor *x, ldm_tensor *t, const ldm_cond *cond) {
    return ldm_dit_forward(ctx, (ldm_dit *)self, x, t, cond ? cond->y : NULL);
}
LDM_API ldm_denoiser ldm_dit_denoiser(ldm_dit *m) { ldm_denoiser d; d.forward = ldm__dit_denoise; d.self = m; return d; }

#ifdef LDM_CONFIG_H
LDM_CONFIG_DEFINE(ldm_unet_yaml, LDM_UNET_CONFIG_KEYS)

LDM_API ldm_result ldm_unet_config_read(ldm_config *cfg, const ldm_config_node *node, ldm_unet_config *out) {
    static const char *const where[] = {"", "params", "unet_config.params", "params.unet_config.params", "model.params.unet_config.params"};
    const ldm_config_node *params = NULL;
    if (!node) node = ldm_config_root(cfg);
    for (int i = 0; i < 5 && !params; i++) {
        const ldm_config_node *n = i ? ldm_config_find(node, where[i]) : node;
        if (n && ldm_config_find(n, "model_channels")) params = n;
    }
    if (!params) {
        char path[256];
        return ldm_config_seterr(cfg, LDM_ERR_NOT_FOUND, "%s:%d: no UNet parameters under '%s' (expected model.params.unet_config.params "
                                 "with model_channels, or a unet_config node)", node->file ? node->file : "<config>", node->line,
                                 ldm_config_path(node, path, sizeof path));
    }
    ldm_unet_yaml d;
    ldm_result r = ldm_unet_yaml_load(cfg, params, &d);
    if (r) return r;
    const char *file = params->file ? params->file : "<config>";
    if (d.channel_mult.n < 1 || d.channel_mult.n > LDM_UNET_MAX_LEVELS || d.attention_resolutions.n > LDM_UNET_MAX_LEVELS)
        return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: channel_mult needs 1 to %d entries and attention_resolutions at most %d",
                                 file, params->line, LDM_UNET_MAX_LEVELS, LDM_UNET_MAX_LEVELS);
    memset(out, 0, sizeof *out);
    out->image_size = d.image_size; out->in_channels = d.in_channels; out->model_channels = d.model_channels;
    out->out_channels = d.out_channels; out->num_res_blocks = d.num_res_blocks;
    out->n_attn = d.attention_resolutions.n;
    for (int i = 0; i < d.attention_resolutions.n; i++) out->attention_resolutions[i] = d.attention_resolutions.v[i];
    out->dropout = (float)d.dropout;
    out->n_levels = d.channel_mult.n;
    for (int i = 0; i < d.channel_mult.n; i++) out->channel_mult[i] = d.channel_mult.v[i];
    out->conv_resample = d.conv_resample; out->dims = d.dims; out->num_classes = d.num_classes;
    out->num_heads = d.num_heads; out->num_head_channels = d.num_head_channels; out->num_heads_upsample = d.num_heads_upsample;
    out->use_scale_shift_norm = d.use_scale_shift_norm; out->resblock_updown = d.resblock_updown;
    out->use_new_attention_order = d.use_new_attention_order; out->use_spatial_transformer = d.use_spatial_transformer;
    out->transformer_depth = d.transformer_depth; out->context_dim = d.context_dim; out->legacy = d.legacy;
    out->use_linear_in_transformer = d.use_linear_in_transformer;
    return LDM_OK;
}
#endif

/* ---- 3. samplers --------------------------------------------------------------------------- */
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

/* ---- 4. LatentDiffusion -------------------------------------------------------------------- */
struct ldm_latent_diffusion {
    ldm_ctx *ctx;                 /* the one it was created on (EMA memory) */
    ldm_latent_diffusion_config cfg;
    ldm_schedule sched;
    ldm_unet *unet;               /* one of unet / dit, by cfg.denoiser */
    ldm_dit *dit;
    ldm_nn_params *dP;            /* the denoiser's registry */
    ldm_denoiser base;            /* the denoiser's own call */
    ldm_vae *vae;
    ldm_class_embedder *ce;
    ldm_nn_params *own;           /* LatentDiffusion's own parameters (logvar) or NULL */
    ldm_tensor *logvar;
    ldm_ema ema;
    int has_ema;
    float scale_factor;
};

static const char *const ldm__ld_schedule_names[12] = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"};
static const float *ldm__ld_schedule_buf(const ldm_schedule *s, int i) {
    const float *b[12] = {s->betas, s->alphas_cumprod, s->alphas_cumprod_prev, s->sqrt_alphas_cumprod, s->sqrt_one_minus_alphas_cumprod,
                          s->log_one_minus_alphas_cumprod, s->sqrt_recip_alphas_cumprod, s->sqrt_recipm1_alphas_cumprod,
                          s->posterior_variance, s->posterior_log_variance_clipped, s->posterior_mean_coef1, s->posterior_mean_coef2};
    return b[i];
}

/* DiffusionWrapper's model call; a learn_sigma DiT's output is cut to its eps half. */
static ldm_tensor *ldm__ld_denoise(ldm_ctx *ctx, void *self, ldm_tensor *x, ldm_tensor *t, const ldm_cond *cond) {
    ldm_latent_diffusion *ld = (ldm_latent_diffusion *)self;
    ldm_tensor *out = ld->base.forward(ctx, ld->base.self, x, t, cond);
    if (out && ld->cfg.denoiser == LDM_DENOISER_DIT && out->shape[1] != x->shape[1]) out = ldm_slice(ctx, out, 1, 0, x->shape[1]);
    return out;
}

/* The one place that turns the denoiser kind into a model. */
static ldm_result ldm__ld_make_denoiser(ldm_ctx *ctx, ldm_latent_diffusion *ld) {
    ldm_result r;
    switch (ld->cfg.denoiser) {
    case LDM_DENOISER_UNET:
        if ((r = ldm_unet_create(ctx, &ld->unet, &ld->cfg.unet)) != LDM_OK) return r;
        ld->dP = ldm_unet_params(ld->unet);
        ld->base = ldm_unet_denoiser(ld->unet);
        return LDM_OK;
    case LDM_DENOISER_DIT:
        if ((r = ldm_dit_create(ctx, &ld->dit, &ld->cfg.dit)) != LDM_OK) return r;
        ld->dP = ldm_dit_params(ld->dit);
        ld->base = ldm_dit_denoiser(ld->dit);
        return LDM_OK;
    }
    return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "LatentDiffusion: unknown denoiser kind %d", (int)ld->cfg.denoiser);
}

LDM_API ldm_result ldm_latent_diffusion_create(ldm_ctx *ctx, ldm_latent_diffusion **out, const ldm_latent_diffusion_config *cfg) {
    *out = NULL;
    if (ctx->status) return ctx->status;
    if (cfg->num_timesteps_cond > 1)
        return ldm_ctx_seterr(ctx, LDM_ERR_UNSUPPORTED, "LatentDiffusion: num_timesteps_cond %d (a noised conditioning schedule) is not supported (hint: 1)", cfg->num_timesteps_cond);
    ldm_latent_diffusion *ld = (ldm_latent_diffusion *)LDM_MALLOC(sizeof *ld);
    if (!ld) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "LatentDiffusion: out of memory");
    memset(ld, 0, sizeof *ld);
    ld->ctx = ctx;
    ld->cfg = *cfg;
    ld->scale_factor = cfg->scale_factor > 0 ? (float)cfg->scale_factor : 1.0f;
    ldm_result r = ldm_schedule_init(ctx, &ld->sched, &cfg->schedule);
    if (!r) r = ldm__ld_make_denoiser(ctx, ld);
    if (!r && cfg->pixel_space && (cfg->cond_stage == LDM_CONDSTAGE_FIRST_STAGE || cfg->cond_stage == LDM_CONDSTAGE_LR_LATENT))
        r = ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "LatentDiffusion: a pixel-space model has no first stage to condition on");
    if (!r && !cfg->pixel_space) r = ldm_vae_create(ctx, &ld->vae, &cfg->first_stage);
    if (!r && ld->vae) r = ldm_nn_set_trainable(ld->vae->P, "", 0);   /* instantiate_first_stage: frozen, eval */
    if (!r && cfg->cond_stage == LDM_CONDSTAGE_CLASS) {
        r = ldm_class_embedder_create(ctx, &ld->ce, cfg->cond_n_classes, cfg->cond_embed_dim);
        if (!r) r = ldm_nn_set_trainable(ldm_class_embedder_params(ld->ce), "", cfg->cond_stage_trainable);
    }
    if (!r && cfg->learn_logvar) {
        r = ldm_nn_params_create(ctx, &ld->own, ldm_ctx_device(ctx));
        if (!r) ld->logvar = ldm_diffusion_logvar_param(ld->own, ld->sched.T, (float)cfg->logvar_init);
        if (!r) r = ldm_nn_params_alloc(ctx, ld->own);
        if (!r) r = ldm_nn_params_init(ctx, ld->own);
    }
    if (!r && cfg->use_ema) {
        r = ldm_ema_init(ctx, &ld->ema, ld->dP, 0.0f, 1);
        ld->has_ema = !r;
    }
    if (r) { ldm_latent_diffusion_destroy(ld); return r; }
    *out = ld;
    return LDM_OK;
}
LDM_API void ldm_latent_diffusion_destroy(ldm_latent_diffusion *ld) {
    if (!ld) return;
    if (ld->has_ema) ldm_ema_free(ld->ctx, &ld->ema);
    ldm_unet_destroy(ld->unet);
    ldm_dit_destroy(ld->dit);
    ldm_vae_destroy(ld->vae);
    ldm_class_embedder_destroy(ld->ce);
    if (ld->own) ldm_nn_params_destroy(ld->own);
    ldm_schedule_free(&ld->sched);
    LDM_FREE(ld);
}
LDM_API const ldm_latent_diffusion_config *ldm_latent_diffusion_cfg(const ldm_latent_diffusion *ld) { return &ld->cfg; }
LDM_API const ldm_schedule *ldm_latent_diffusion_schedule(const ldm_latent_diffusion *ld) { return &ld->sched; }
LDM_API ldm_denoiser ldm_latent_diffusion_denoiser(ldm_latent_diffusion *ld) {
    ldm_denoiser d;
    d.forward = ldm__ld_denoise;
    d.self = ld;
    return d;
}
LDM_API ldm_nn_params *ldm_latent_diffusion_denoiser_params(ldm_latent_diffusion *ld) { return ld->dP; }
LDM_API ldm_vae *ldm_latent_diffusion_first_stage(ldm_latent_diffusion *ld) { return ld->vae; }
LDM_API ldm_nn_params *ldm_latent_diffusion_cond_params(ldm_latent_diffusion *ld) { return ld->ce ? ldm_class_embedder_params(ld->ce) : NULL; }
LDM_API ldm_nn_params *ldm_latent_diffusion_own_params(ldm_latent_diffusion *ld) { return ld->own; }
LDM_API ldm_ema *ldm_latent_diffusion_ema(ldm_latent_diffusion *ld) { return ld->has_ema ? &ld->ema : NULL; }
LDM_API float ldm_latent_diffusion_scale_factor(const ldm_latent_diffusion *ld) { return ld->scale_factor; }
LDM_API void ldm_latent_diffusion_set_scale_factor(ldm_latent_diffusion *ld, float s) { ld->scale_factor = s; }
LDM_API void ldm_latent_diffusion_set_training(ldm_latent_diffusion *ld, int on) {
    if (ld->unet) ldm_unet_set_training(ld->unet, on);
    if (ld->dit) ldm_dit_set_training(ld->dit, on);
}

/* ---- checkpoints ---- */
static const char ldm__ld_pfx_model[] = "model.diffusion_model.";
static const char ldm__ld_pfx_first[] = "first_stage_model.";
static const char ldm__ld_pfx_cond[] = "cond_stage_model.";
static const char ldm__ld_pfx_ema[] = "model_ema.";

/* "model_ema." + "diffusion_model." + name with its dots removed (LitEma over self.model) */
static void ldm__ld_ema_name(const char *param, char *buf, size_t cap) {
    char full[512];
    snprintf(full, sizeof full, "diffusion_model.%s", param);
    ldm_ema_state_name(full, NULL, buf, cap);
}
static int ldm__ld_starts(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

/* A file tensor of exactly `numel` values into host memory (caller frees), or NULL with an error. */
static float *ldm__ld_read(ldm_ctx *ctx, ldm_weights *w, int i, int64_t numel, const char *what) {
    const ldm_weight_info *inf = ldm_weights_info(w, i);
    if (inf->numel != numel) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "LatentDiffusion: %s: '%s' has %lld values, the model %lld (hint: the checkpoint is for another config)",
                       ldm_weights_path(w), inf->name, (long long)inf->numel, (long long)numel);
        return NULL;
    }
    float *h = (float *)LDM_MALLOC(sizeof(float) * (size_t)(numel ? numel : 1));
    if (!h) { ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "LatentDiffusion: out of memory reading %s", what); return NULL; }
    if (ldm_weights_read(ctx, w, i, h)) { LDM_FREE(h); return NULL; }
    return h;
}

/* model_ema.* into the shadow (to_shadow) or straight into the denoiser's parameters. */
static ldm_result ldm__ld_load_ema(ldm_ctx *ctx, ldm_latent_diffusion *ld, ldm_weights *w, int to_shadow) {
    char name[512];
    int n = ldm_nn_count(ld->dP);
    for (int pass = 0; pass < 2; pass++)       /* names first, then data: nothing written on a miss */
        for (int i = 0; i < n; i++) {
            const ldm_nn_entry *e = ldm_nn_entry_at(ld->dP, i);
            if (e->kind != LDM_NN_PARAM || !e->t->requires_grad) continue;
            ldm__ld_ema_name(e->name, name, sizeof name);
            int j = ldm_weights_find(w, name);
            if (j < 0)
                return ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "LatentDiffusion: %s has no EMA weight '%s' for model.diffusion_model.%s "
                                      "(hint: a checkpoint trained with use_ema, or sample without --ema)", ldm_weights_path(w), name, e->name);
            if (pass == 0) continue;
            float *h = ldm__ld_read(ctx, w, j, e->t->numel, name);
            if (!h) return ctx->status;
            if (to_shadow)
                ctx->be[e->t->device]->copy(ctx->be_state[e->t->device], ld->ema.shadow + e->offset, e->t->device, h, LDM_CPU,
                                            sizeof(float) * (size_t)e->t->numel);
            else
                ldm_nn_copy_from_host(ctx, e->t, h);
            LDM_FREE(h);
            if (ctx->status) return ctx->status;
        }
    float v;
    int j;
    if (to_shadow && (j = ldm_weights_find(w, "model_ema.decay")) >= 0 && ldm_weights_info(w, j)->numel == 1 && !ldm_weights_read(ctx, w, j, &v)) ld->ema.decay = v;
    if (to_shadow && (j = ldm_weights_find(w, "model_ema.num_updates")) >= 0 && ldm_weights_info(w, j)->numel == 1 && !ldm_weights_read(ctx, w, j, &v)) ld->ema.num_updates = (int)v;
    return ctx->status;
}

/* Is a file name one of the model's (or a buffer it accepts)? */
static int ldm__ld_known(const ldm_latent_diffusion *ld, const char *nm) {
    if (ldm__ld_starts(nm, ldm__ld_pfx_model) || ldm__ld_starts(nm, ldm__ld_pfx_ema)) return 1;
    if (ldm__ld_starts(nm, ldm__ld_pfx_first)) return ld->vae != NULL;
    if (ldm__ld_starts(nm, ldm__ld_pfx_cond)) return ld->cfg.cond_stage == LDM_CONDSTAGE_CLASS || ld->cfg.cond_stage == LDM_CONDSTAGE_FIRST_STAGE;
    for (int i = 0; i < 12; i++) if (!strcmp(nm, ldm__ld_schedule_names[i])) return 1;
    if (!strcmp(nm, "lvlb_weights")) return 1;
    if (!strcmp(nm, "scale_factor")) return ld->cfg.scale_by_std;
    if (!strcmp(nm, "logvar")) return ld->cfg.learn_logvar;
    return 0;
}

LDM_API ldm_result ldm_latent_diffusion_load(ldm_ctx *ctx, ldm_latent_diffusion *ld, const char *path, const ldm_latent_diffusion_load_opts *opts) {
    if (ctx->status) return ctx->status;
    int strict = opts ? opts->strict : 1, emaw = opts ? opts->ema_weights : 0;
    ldm_weights *w;
    ldm_result r = ldm_weights_open(ctx, &w, path);
    if (r) return r;
    int n = ldm_weights_count(w);
    if (strict) {   /* names that no part takes, all listed */
        char list[1024];
        size_t k = 0;
        int bad = 0;
        list[0] = 0;
        for (int i = 0; i < n; i++) {
            const char *nm = ldm_weights_info(w, i)->name;
            if (ldm__ld_known(ld, nm)) continue;
            if (k + strlen(nm) + 4 < sizeof list) k += (size_t)snprintf(list + k, sizeof list - k, "%s%s", bad ? ", " : "", nm);
            bad++;
        }
        if (bad) {
            r = ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "LatentDiffusion: %s: %d unexpected tensor(s): %s (hint: the checkpoint is for another "
                               "config, e.g. another cond_stage_config)", path, bad, list);
            ldm_weights_close(w);
            return r;
        }
    }
    ldm_nn_load_opts o;
    memset(&o, 0, sizeof o);
    o.strict = strict;
    o.prefix_strip = ldm__ld_pfx_model;
    r = ldm__ld_part(ctx, ldm_nn_load_weights(ctx, ld->dP, w, &o), "the denoiser", ldm__ld_pfx_model);
    if (!r && ld->ce) {
        o.prefix_strip = ldm__ld_pfx_cond;
        r = ldm__ld_part(ctx, ldm_nn_load_weights(ctx, ldm_class_embedder_params(ld->ce), w, &o), "the ClassEmbedder", ldm__ld_pfx_cond);
    }
    int j;
    if (!r && ld->logvar) {
        if ((j = ldm_weights_find(w, "logvar")) >= 0) {
            float *h = ldm__ld_read(ctx, w, j, ld->logvar->numel, "logvar");
            r = h ? ldm_nn_copy_from_host(ctx, ld->logvar, h) : ctx->status;
            LDM_FREE(h);
        } else if (strict) r = ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "LatentDiffusion: %s has no 'logvar' (learn_logvar is set)", path);
    }
    if (!r && ld->cfg.scale_by_std && (j = ldm_weights_find(w, "scale_factor")) >= 0) {
        float *h = ldm__ld_read(ctx, w, j, 1, "scale_factor");
        if (h) ld->scale_factor = h[0];
        else r = ctx->status;
        LDM_FREE(h);
    }
    if (!r && (j = ldm_weights_find(w, "betas")) >= 0) {   /* the schedule the model was trained with */
        float *h = ldm__ld_read(ctx, w, j, ld->sched.T, "betas");
        if (!h) r = ctx->status;
        for (int i = 0; h && i < ld->sched.T && !r; i++)
            if (fabsf(h[i] - ld->sched.betas[i]) > 1e-6f * fmaxf(1.0f, fabsf(ld->sched.betas[i])))
                r = ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "LatentDiffusion: %s: betas[%d] is %g, the config's schedule gives %g (hint: check "
                                   "linear_start, linear_end, beta_schedule)", path, i, (double)h[i], (double)ld->sched.betas[i]);
        LDM_FREE(h);
    }
    int has_ema_file = 0;
    for (int i = 0; i < n && !has_ema_file; i++) has_ema_file = ldm__ld_starts(ldm_weights_info(w, i)->name, ldm__ld_pfx_ema);
    if (!r && ld->has_ema && has_ema_file) r = ldm__ld_load_ema(ctx, ld, w, 1);
    else if (!r && ld->has_ema) {   /* no EMA in the file: LitEma starts from the loaded weights */
        ldm_ema_free(ctx, &ld->ema);
        ld->has_ema = !(r = ldm_ema_init(ctx, &ld->ema, ld->dP, 0.0f, 1));
    }
    if (!r && emaw) r = ld->has_ema ? ldm_ema_copy_to(ctx, &ld->ema) : ldm__ld_load_ema(ctx, ld, w, 0);
    ldm_weights_close(w);
    if (!r && ld->vae) r = ldm__ld_part(ctx, ldm_vae_load_ex(ctx, ld->vae, path, strict, NULL), "the first stage", ldm__ld_pfx_first);
    return r;
}

/* ---- saving: every part's tensors into one list ---- */
typedef struct ldm__ld_list { int n, cap; ldm_named_data *t; char **names; float **host; } ldm__ld_list;
static int ldm__ld_add(ldm__ld_list *L, const char *prefix, const char *name, int ndim, const int64_t *shape, float *host) {
    if (L->n == L->cap) {
        int cap = L->cap ? 2 * L->cap : 256;
        ldm_named_data *t = (ldm_named_data *)LDM_REALLOC(L->t, sizeof *t * (size_t)cap);
        if (t) L->t = t;
        char **nm = (char **)LDM_REALLOC(L->names, sizeof *nm * (size_t)cap);
        if (nm) L->names = nm;
        float **h = (float **)LDM_REALLOC(L->host, sizeof *h * (size_t)cap);
        if (h) L->host = h;
        if (!t || !nm || !h) { LDM_FREE(host); return 1; }
        L->cap = cap;
    }
    size_t pl = strlen(prefix), nl = strlen(name);
    char *s = (char *)LDM_MALLOC(pl + nl + 1);
    if (!s) { LDM_FREE(host); return 1; }
    memcpy(s, prefix, pl);
    memcpy(s + pl, name, nl + 1);
    ldm_named_data *d = &L->t[L->n];
    d->name = s;
    d->data = host;
    d->ndim = ndim;
    for (int i = 0; i < ndim; i++) d->shape[i] = shape[i];
    L->names[L->n] = s;
    L->host[L->n] = host;
    L->n++;
    return 0;
}
static ldm_result ldm__ld_add_params(ldm_ctx *ctx, ldm__ld_list *L, const ldm_nn_params *P, const char *prefix) {
    for (int i = 0; i < ldm_nn_count(P); i++) {
        const ldm_nn_entry *e = ldm_nn_entry_at(P, i);
        if (e->kind == LDM_NN_BUFFER_TRANSIENT) continue;
        float *h = (float *)LDM_MALLOC(sizeof(float) * (size_t)(e->t->numel ? e->t->numel : 1));
        if (!h) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "LatentDiffusion save: out of memory");
        if (e->t->numel && ldm_to_host(ctx, e->t, h)) { LDM_FREE(h); return ctx->status; }
        if (ldm__ld_add(L, prefix, e->name, e->t->ndim, e->t->shape, h)) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "LatentDiffusion save: out of memory");
    }
    return LDM_OK;
}
static ldm_result ldm__ld_add_host(ldm_ctx *ctx, ldm__ld_list *L, const char *name, int ndim, int64_t n, const float *src) {
    float *h = (float *)LDM_MALLOC(sizeof(float) * (size_t)(n ? n : 1));
    if (!h) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "LatentDiffusion save: out of memory");
    memcpy(h, src, sizeof(float) * (size_t)n);
    if (ldm__ld_add(L, "", name, ndim, &n, h)) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "LatentDiffusion save: out of memory");
    return LDM_OK;
}

LDM_API ldm_result ldm_latent_diffusion_save(ldm_ctx *ctx, const ldm_latent_diffusion *ld, const char *path, ldm_dtype dtype) {
    if (ctx->status) return ctx->status;
    ldm__ld_list L;
    memset(&L, 0, sizeof L);
    ldm_result r = LDM_OK;
    for (int i = 0; i < 12 && !r; i++) r = ldm__ld_add_host(ctx, &L, ldm__ld_schedule_names[i], 1, ld->sched.T, ldm__ld_schedule_buf(&ld->sched, i));
    if (!r && ld->cfg.scale_by_std) r = ldm__ld_add_host(ctx, &L, "scale_factor", 0, 1, &ld->scale_factor);
    if (!r && ld->own) r = ldm__ld_add_params(ctx, &L, ld->own, "");
    if (!r) r = ldm__ld_add_params(ctx, &L, ld->dP, ldm__ld_pfx_model);
    if (!r && ld->vae) r = ldm__ld_add_params(ctx, &L, ld->vae->P, ldm__ld_pfx_first);
    if (!r && ld->ce) r = ldm__ld_add_params(ctx, &L, ldm_class_embedder_params(ld->ce), ldm__ld_pfx_cond);
    if (!r && ld->cfg.cond_stage == LDM_CONDSTAGE_FIRST_STAGE) r = ldm__ld_add_params(ctx, &L, ld->vae->P, ldm__ld_pfx_cond); /* the same module twice */
    if (!r && ld->has_ema) {
        int64_t total;
        ldm_nn_block(ld->dP, LDM_NN_BLOCK_PARAMS, &total);
        float *all = (float *)LDM_MALLOC(sizeof(float) * (size_t)(total ? total : 1));
        ldm_tensor sh = ldm_tensor_wrap(ld->ema.shadow, ldm_shape1(total), ldm_nn_params_device(ld->dP));
        if (!all) r = ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "LatentDiffusion save: out of memory");
        else if (total) r = ldm_to_host(ctx, &sh, all);
        char name[512];
        for (int i = 0; i < ldm_nn_count(ld->dP) && !r; i++) {
            const ldm_nn_entry *e = ldm_nn_entry_at(ld->dP, i);
            if (e->kind != LDM_NN_PARAM || !e->t->requires_grad) continue;
            ldm__ld_ema_name(e->name, name, sizeof name);
            float *h = (float *)LDM_MALLOC(sizeof(float) * (size_t)(e->t->numel ? e->t->numel : 1));
            if (!h) { r = ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "LatentDiffusion save: out of memory"); break; }
            memcpy(h, all + e->offset, sizeof(float) * (size_t)e->t->numel);
            if (ldm__ld_add(&L, "", name, e->t->ndim, e->t->shape, h)) r = ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "LatentDiffusion save: out of memory");
        }
        LDM_FREE(all);
        float dn[2];
        dn[0] = ld->ema.decay;
        dn[1] = (float)ld->ema.num_updates;
        if (!r) r = ldm__ld_add_host(ctx, &L, "model_ema.decay", 0, 1, dn);
        if (!r) r = ldm__ld_add_host(ctx, &L, "model_ema.num_updates", 0, 1, dn + 1);
    }
    if (!r) {
        const char *mk[1] = {"format"}, *mv[1] = {"pt"};
        r = ldm_safetensors_write(ctx, path, L.n, L.t, dtype, 1, mk, mv);
    }
    for (int i = 0; i < L.n; i++) { LDM_FREE(L.names[i]); LDM_FREE(L.host[i]); }
    LDM_FREE(L.t); LDM_FREE(L.names); LDM_FREE(L.host);
    return r;
}

/* ---- first stage and conditioning ---- */
LDM_API ldm_tensor *ldm_latent_diffusion_encode(ldm_ctx *ctx, ldm_latent_diffusion *ld, ldm_tensor *x, ldm_tensor *eps, const ldm_vae_infer *infer) {
    if (ctx->status) return NULL;
    if (!ld->vae) return x;   /* DDPM: pixel space */
    int prev = ldm_set_grad_enabled(ctx, 0);
    ldm_vae_posterior q;
    ldm_tensor *z = NULL;
    if (!ldm_vae_encode_infer(ctx, ld->vae, x, infer, &q)) {
        z = q.logvar ? ldm_vae_posterior_sample(ctx, &q, eps) : q.mean;  /* DiagonalGaussian: sample(); a tensor: itself */
        if (z) z = ldm_scale(ctx, z, ld->scale_factor);
    }
    ldm_set_grad_enabled(ctx, prev);
    return z;
}
LDM_API ldm_tensor *ldm_latent_diffusion_decode(ldm_ctx *ctx, ldm_latent_diffusion *ld, ldm_tensor *z, const ldm_vae_infer *infer) {
    if (ctx->status || !z) return NULL;
    if (!ld->vae) return z;
    int prev = ldm_set_grad_enabled(ctx, 0);
    ldm_tensor *img = ldm_vae_decode_infer(ctx, ld->vae, ldm_scale(ctx, z, 1.0f / ld->scale_factor), infer);
    ldm_set_grad_enabled(ctx, prev);
    return img;
}
LDM_API ldm_result ldm_latent_diffusion_scale_by_std(ldm_ctx *ctx, ldm_latent_diffusion *ld, ldm_tensor *x, ldm_tensor *eps, float *scale) {
    return ldm_latent_diffusion_scale_by_std_reduce(ctx, ld, x, eps, NULL, NULL, scale);
}
LDM_API ldm_result ldm_latent_diffusion_scale_by_std_reduce(ldm_ctx *ctx, ldm_latent_diffusion *ld, ldm_tensor *x, ldm_tensor *eps,
                                                            ldm_reduce_fn reduce, void *user, float *scale) {
    if (ctx->status) return ctx->status;
    if (!ld->cfg.scale_by_std || ld->scale_factor != 1.0f)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "LatentDiffusion scale_by_std: needs scale_by_std and a scale factor of 1 (it is %g; "
                              "hint: compute it once, at the first batch)", (double)ld->scale_factor);
    ldm_mark m = ldm_arena_mark(ctx);
    ldm_tensor *z = ldm_latent_diffusion_encode(ctx, ld, x, eps, NULL);
    float *h = z ? (float *)LDM_MALLOC(sizeof(float) * (size_t)z->numel) : NULL;
    ldm_result r = z ? LDM_OK : ctx->status;
    if (z && !h) r = ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "LatentDiffusion scale_by_std: out of memory");
    if (h && !(r = ldm_to_host(ctx, z, h))) {
        double sn[2] = {0, (double)z->numel}, ss = 0; /* two passes: sum and count, then squares about the mean */
        int64_t n = z->numel;
        for (int64_t i = 0; i < n; i++) sn[0] += h[i];
        if (reduce) r = reduce(user, sn, 2);
        double mean = sn[0] / sn[1];
        for (int64_t i = 0; i < n; i++) ss += (h[i] - mean) * (h[i] - mean);
        if (!r && reduce) r = reduce(user, &ss, 1);
        double sd = sn[1] > 1 ? sqrt(ss / (sn[1] - 1)) : 0.0;
        if (r) (void)0;
        else if (!(sd > 0)) r = ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "LatentDiffusion scale_by_std: the latents have no spread (std %g)", sd);
        else ld->scale_factor = (float)(1.0 / (float)sd);   /* 1. / z.flatten().std() on a float32 std */
        if (!r && scale) *scale = ld->scale_factor;
    }
    LDM_FREE(h);
    ldm_arena_rewind(ctx, m);
    return r;
}
LDM_API ldm_tensor *ldm_latent_diffusion_conditioning(ldm_ctx *ctx, ldm_latent_diffusion *ld, ldm_tensor *c) {
    if (ctx->status) return NULL;
    if (ld->cfg.cond_stage == LDM_CONDSTAGE_NONE) return NULL;
    if (!c) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "LatentDiffusion: the model is conditional (%s) and no conditioning was given (hint: %s)",
                       ld->cfg.cond_stage_key, ld->cfg.cond_stage == LDM_CONDSTAGE_CLASS ? "class labels" : "the conditioning image");
        return NULL;
    }
    switch (ld->cfg.cond_stage) {
    case LDM_CONDSTAGE_CLASS: return ldm_class_embedder_forward(ctx, ld->ce, c);
    case LDM_CONDSTAGE_IDENTITY: return c;
    case LDM_CONDSTAGE_FIRST_STAGE:     /* cond_stage_model.encode(c).mode() */
    case LDM_CONDSTAGE_LR_LATENT: {     /* scale_factor * first_stage.encode(degraded x).mode() */
        int prev = ldm_set_grad_enabled(ctx, 0);
        ldm_vae_posterior q;
        ldm_tensor *m = ldm_vae_encode_infer(ctx, ld->vae, c, NULL, &q) ? NULL : q.mean;
        if (m && ld->cfg.cond_stage == LDM_CONDSTAGE_LR_LATENT) m = ldm_scale(ctx, m, ld->scale_factor);
        ldm_set_grad_enabled(ctx, prev);
        return m;
    }
    default: return NULL;
    }
}
LDM_API ldm_cond ldm_latent_diffusion_cond(const ldm_latent_diffusion *ld, ldm_tensor *c) {
    ldm_cond k;
    memset(&k, 0, sizeof k);
    switch (ld->cfg.conditioning_key) {
    case LDM_CONDKEY_CONCAT: k.concat = c; break;
    case LDM_CONDKEY_CROSSATTN: k.context = c; break;
    case LDM_CONDKEY_ADM: k.y = c; break;
    default: break;
    }
    return k;
}

LDM_API ldm_tensor *ldm_latent_diffusion_loss(ldm_ctx *ctx, ldm_latent_diffusion *ld, ldm_tensor *x, ldm_tensor *c_raw,
                                              const int *t, ldm_tensor *noise, ldm_tensor *posterior_eps, ldm_loss_log *log) {
    ldm_tensor *z = ldm_latent_diffusion_encode(ctx, ld, x, posterior_eps, NULL);
    if (!z) return NULL;
    ldm_tensor *c = ldm_latent_diffusion_conditioning(ctx, ld, c_raw);
    if (ctx->status) return NULL;
    ldm_cond cond = ldm_latent_diffusion_cond(ld, c);
    ldm_denoiser den = ldm_latent_diffusion_denoiser(ld);
    ldm_tensor *logvar = ld->logvar;
    if (!logvar && ld->cfg.logvar_init != 0.0) {   /* a fixed, non-zero logvar (not a parameter) */
        float *h = (float *)LDM_MALLOC(sizeof(float) * (size_t)ld->sched.T);
        if (!h) { ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "LatentDiffusion: out of memory"); return NULL; }
        for (int i = 0; i < ld->sched.T; i++) h[i] = (float)ld->cfg.logvar_init;
        logvar = ldm_from_host(ctx, ldm_shape1(ld->sched.T), h);
        LDM_FREE(h);
    }
    return ldm_diffusion_p_losses(ctx, &ld->sched, &ld->cfg.loss, &den, z, &cond, t, NULL, noise, logvar, log);
}

LDM_API ldm_tensor *ldm_latent_diffusion_sample(ldm_ctx *ctx, ldm_latent_diffusion *ld, const ldm_latent_diffusion_sample_opts *o,
                                                ldm_tensor **z_out) {
    if (z_out) *z_out = NULL;
    if (ctx->status) return NULL;
    ldm_latent_diffusion_sample_opts def;
    memset(&def, 0, sizeof def);
    if (!o) o = &def;
    int64_t n = o->n > 0 ? o->n : o->c ? o->c->shape[0] : 1;
    if (o->c && o->c->shape[0] != n) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "LatentDiffusion sample: %lld conditionings for %lld samples", (long long)o->c->shape[0], (long long)n);
        return NULL;
    }
    int prev = ldm_set_grad_enabled(ctx, 0);
    ldm_tensor *c = ldm_latent_diffusion_conditioning(ctx, ld, o->c), *uc = NULL;
    int guided = o->guidance_scale != 0.0f && o->guidance_scale != 1.0f && ld->cfg.cond_stage != LDM_CONDSTAGE_NONE;
    if (guided && !ctx->status) {
        ldm_tensor *ucr = o->uc;
        /* the "unconditional" class: ClassEmbedder's last one; DiT's null class */
        int null_class = ld->cfg.cond_stage == LDM_CONDSTAGE_CLASS ? ld->cfg.cond_n_classes - 1
                         : ld->cfg.denoiser == LDM_DENOISER_DIT && ld->cfg.conditioning_key == LDM_CONDKEY_ADM && ld->cfg.dit.class_dropout_prob > 0
                             ? ld->cfg.dit.num_classes : -1;
        if (!ucr && null_class >= 0) {
            float *h = (float *)LDM_MALLOC(sizeof(float) * (size_t)n);
            if (h) {
                for (int64_t i = 0; i < n; i++) h[i] = (float)null_class;
                ucr = ldm_from_host(ctx, ldm_shape1(n), h);
                LDM_FREE(h);
            } else ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "LatentDiffusion sample: out of memory");
        }
        if (!ucr && !ctx->status)
            ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "LatentDiffusion sample: guidance scale %g needs an unconditional conditioning (uc)", (double)o->guidance_scale);
        if (!ctx->status) uc = ldm_latent_diffusion_conditioning(ctx, ld, ucr);
    }
    ldm_tensor *img = NULL;
    if (!ctx->status) {
        ldm_cond kc = ldm_latent_diffusion_cond(ld, c), kuc = ldm_latent_diffusion_cond(ld, uc);
        int64_t H = ld->cfg.image_size, W = ld->cfg.image_size;
        if (ld->cfg.conditioning_key == LDM_CONDKEY_CONCAT && c && c->ndim == 4) { H = c->shape[2]; W = c->shape[3]; }
        ldm_sample_opts so;
        memset(&so, 0, sizeof so);
        so.cond = &kc;
        so.uncond = guided ? &kuc : NULL;
        so.guidance_scale = guided ? o->guidance_scale : 1.0f;
        so.x_T = o->x_T;
        so.noise = o->noise;
        so.log_every_t = ld->cfg.log_every_t;
        so.on_step = o->on_step;
        so.user = o->user;
        ldm_denoiser den = ldm_latent_diffusion_denoiser(ld);
        ldm_shape shape = ldm_shape4(n, ld->cfg.channels, H, W);
        ldm_tensor *z = NULL;
        if (o->ddpm) {
            so.clip_denoised = ld->cfg.clip_denoised;   /* LatentDiffusion.p_sample_loop */
            z = ldm_ddpm_sample(ctx, &ld->sched, &den, shape, &so);
        } else {
            ldm_ddim dd;
            if (!ldm_ddim_init(ctx, &dd, &ld->sched, o->steps > 0 ? o->steps : 50, 0, o->eta)) {
                z = ldm_ddim_sample(ctx, &dd, &ld->sched, &den, shape, &so);
                ldm_ddim_free(&dd);
            }
        }
        ldm_vae_infer inf;
        memset(&inf, 0, sizeof inf);
        inf.batch = o->decode_batch > 0 ? o->decode_batch : 1;
        inf.tile = o->tile;
        if (z) img = ldm_latent_diffusion_decode(ctx, ld, z, &inf);
        if (z_out && img) *z_out = z;
    }
    ldm_set_grad_enabled(ctx, prev);
    return ctx->status ? NULL : img;
}

#ifdef LDM_CONFIG_H
LDM_CONFIG_DEFINE(ldm_latent_diffusion_yaml, LDM_LATENT_DIFFUSION_CONFIG_KEYS)

#define LDM__DIT_CONFIG_KEYS(X)                                                                 \
    X(input_size, INT, "32", "latent size")                                                     \
    X(patch_size, INT, "2", "patch size")                                                       \
    X(in_channels, INT, "4", "latent channels")                                                 \
    X(hidden_size, INT, "1152", "width")                                                        \
    X(depth, INT, "28", "blocks")                                                               \
    X(num_heads, INT, "16", "heads")                                                            \
    X(mlp_ratio, FLOAT, "4.0", "MLP width / width")                                             \
    X(class_dropout_prob, FLOAT, "0.1", "label dropout (the null class)")                       \
    X(num_classes, INT, "1000", "classes")                                                      \
    X(learn_sigma, BOOL, "true", "predict the variance too")
LDM_CONFIG_DECLARE(ldm__dit_yaml, LDM__DIT_CONFIG_KEYS);
LDM_CONFIG_DEFINE(ldm__dit_yaml, LDM__DIT_CONFIG_KEYS)

static const char *ldm__ld_file(const ldm_config_node *n) { return n && n->file ? n->file : "<config>"; }
static int ldm__ld_ends(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}
/* unet_config.target -> the denoiser kind (one switch for every place that needs it) */
static ldm_result ldm__ld_denoiser_kind(ldm_config *cfg, const ldm_config_node *node, const char *target, ldm_denoiser_kind *k) {
    if (ldm__ld_ends(target, "UNetModel")) { *k = LDM_DENOISER_UNET; return LDM_OK; }
    if (ldm__ld_ends(target, "DiT")) { *k = LDM_DENOISER_DIT; return LDM_OK; }
    return ldm_config_seterr(cfg, LDM_ERR_UNSUPPORTED, "%s:%d: unet_config.target '%s' is not a known denoiser (hint: "
                             "ldm.modules.diffusionmodules.openaimodel.UNetModel or models.DiT)", ldm__ld_file(node), node->line, target);
}
static void ldm__ld_copy(char *dst, size_t cap, const char *s) { snprintf(dst, cap, "%s", s ? s : ""); }

LDM_API ldm_result ldm_latent_diffusion_config_read(ldm_config *cfg, const ldm_config_node *node, ldm_latent_diffusion_config *out) {
    static const char *const where[] = {"", "params", "model.params"};
    const ldm_config_node *params = NULL;
    if (!node) node = ldm_config_root(cfg);
    for (int i = 0; i < 3 && !params; i++) {
        const ldm_config_node *p = i ? ldm_config_find(node, where[i]) : node;
        if (p && ldm_config_find(p, "unet_config")) params = p;
    }
    if (!params) {
        char path[256];
        return ldm_config_seterr(cfg, LDM_ERR_NOT_FOUND, "%s:%d: no LatentDiffusion parameters under '%s' (expected model.params with "
                                 "unet_config, first_stage_config, cond_stage_config)", ldm__ld_file(node), node->line,
                                 ldm_config_path(node, path, sizeof path));
    }
    const char *file = ldm__ld_file(params);
    ldm_latent_diffusion_yaml d;
    ldm_result r = ldm_latent_diffusion_yaml_load(cfg, params, &d);
    if (r) return r;
    memset(out, 0, sizeof *out);
    if (d.given_betas && d.given_betas->type != LDM_CONFIG_NULL)
        return ldm_config_seterr(cfg, LDM_ERR_UNSUPPORTED, "%s:%d: given_betas is not supported (hint: beta_schedule with linear_start/linear_end)", file, d.given_betas->line);
    if (d.use_positional_encodings)
        return ldm_config_seterr(cfg, LDM_ERR_UNSUPPORTED, "%s:%d: use_positional_encodings is not supported", file, params->line);
    if (d.cond_stage_forward && d.cond_stage_forward[0])
        return ldm_config_seterr(cfg, LDM_ERR_UNSUPPORTED, "%s:%d: cond_stage_forward '%s' is not supported (hint: leave it out)", file, params->line, d.cond_stage_forward);
    if (!strcmp(d.beta_schedule, "linear")) out->schedule.schedule = LDM_BETA_LINEAR;
    else if (!strcmp(d.beta_schedule, "sqrt_linear")) out->schedule.schedule = LDM_BETA_SQRT_LINEAR;
    else if (!strcmp(d.beta_schedule, "sqrt")) out->schedule.schedule = LDM_BETA_SQRT;
    else if (!strcmp(d.beta_schedule, "cosine")) out->schedule.schedule = LDM_BETA_COSINE;
    else return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: beta_schedule '%s' (expected linear, sqrt_linear, sqrt or cosine)", file, params->line, d.beta_schedule);
    if (!strcmp(d.parameterization, "eps")) out->schedule.parameterization = LDM_PRED_EPS;
    else if (!strcmp(d.parameterization, "x0")) out->schedule.parameterization = LDM_PRED_X0;
    else if (!strcmp(d.parameterization, "v")) out->schedule.parameterization = LDM_PRED_V;
    else return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: parameterization '%s' (expected eps, x0 or v)", file, params->line, d.parameterization);
    if (!strcmp(d.loss_type, "l2")) out->loss.loss_type = LDM_LOSS_L2;
    else if (!strcmp(d.loss_type, "l1")) out->loss.loss_type = LDM_LOSS_L1;
    else return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: loss_type '%s' (expected l2 or l1)", file, params->line, d.loss_type);
    if (d.timesteps < 1) return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: timesteps must be positive", file, params->line);
    out->schedule.timesteps = d.timesteps;
    out->schedule.linear_start = d.linear_start;
    out->schedule.linear_end = d.linear_end;
    out->schedule.cosine_s = d.cosine_s;
    out->schedule.v_posterior = d.v_posterior;
    out->loss.l_simple_weight = d.l_simple_weight;
    out->loss.original_elbo_weight = d.original_elbo_weight;
    out->image_size = d.image_size;
    out->channels = d.channels;
    ldm__ld_copy(out->first_stage_key, sizeof out->first_stage_key, d.first_stage_key);
    ldm__ld_copy(out->cond_stage_key, sizeof out->cond_stage_key, d.cond_stage_key);
    ldm__ld_copy(out->monitor, sizeof out->monitor, d.monitor);
    ldm__ld_copy(out->ckpt_path, sizeof out->ckpt_path, d.ckpt_path);
    out->n_ignore_keys = d.ignore_keys.n;
    out->cond_stage_trainable = d.cond_stage_trainable;
    out->scale_by_std = d.scale_by_std;
    out->scale_factor = d.scale_factor;
    out->use_ema = d.use_ema;
    out->log_every_t = d.log_every_t;
    out->num_timesteps_cond = d.num_timesteps_cond;
    out->learn_logvar = d.learn_logvar;
    out->logvar_init = d.logvar_init;
    out->clip_denoised = d.clip_denoised;   /* LatentDiffusion sets it False below (its __init__ does) */

    /* conditioning_key: given, else concat_mode's choice; __is_unconditional__ clears it */
    const char *ck = d.conditioning_key && d.conditioning_key[0] ? d.conditioning_key : d.concat_mode ? "concat" : "crossattn";
    const ldm_config_node *cs = d.cond_stage_config;
    if (!cs || cs->type == LDM_CONFIG_NULL) { out->cond_stage = LDM_CONDSTAGE_NONE; ck = "none"; }   /* DDPM */
    else if (cs->type == LDM_CONFIG_STR) {
        if (!strcmp(cs->s, "__is_unconditional__")) { out->cond_stage = LDM_CONDSTAGE_NONE; ck = "none"; }
        else if (!strcmp(cs->s, "__is_first_stage__")) out->cond_stage = LDM_CONDSTAGE_FIRST_STAGE;
        else return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: cond_stage_config '%s' (expected a target + params, __is_first_stage__ "
                                      "or __is_unconditional__)", ldm__ld_file(cs), cs->line, cs->s);
    } else {
        const char *target = NULL;
        if ((r = ldm_config_get_str(cfg, cs, "target", NULL, &target)) != LDM_OK) return r;
        if (ldm__ld_ends(target, "ClassEmbedder")) {
            out->cond_stage = LDM_CONDSTAGE_CLASS;
            if ((r = ldm_config_get_int(cfg, cs, "params.embed_dim", -1, &out->cond_embed_dim)) != LDM_OK) return r;
            if ((r = ldm_config_get_int(cfg, cs, "params.n_classes", 1000, &out->cond_n_classes)) != LDM_OK) return r;
            if (out->cond_embed_dim < 1 || out->cond_n_classes < 1)
                return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: ClassEmbedder needs params.embed_dim and n_classes > 0", ldm__ld_file(cs), cs->line);
        } else if (!strcmp(target, "torch.nn.Identity")) out->cond_stage = LDM_CONDSTAGE_IDENTITY;
        else return ldm_config_seterr(cfg, LDM_ERR_UNSUPPORTED, "%s:%d: cond_stage_config target '%s' is not supported (hint: ClassEmbedder, "
                                      "torch.nn.Identity, __is_first_stage__, __is_unconditional__)", ldm__ld_file(cs), cs->line, target);
    }
    if (!strcmp(ck, "none")) out->conditioning_key = LDM_CONDKEY_NONE;
    else if (!strcmp(ck, "concat")) out->conditioning_key = LDM_CONDKEY_CONCAT;
    else if (!strcmp(ck, "crossattn")) out->conditioning_key = LDM_CONDKEY_CROSSATTN;
    else if (!strcmp(ck, "adm")) out->conditioning_key = LDM_CONDKEY_ADM;
    else return ldm_config_seterr(cfg, LDM_ERR_UNSUPPORTED, "%s:%d: conditioning_key '%s' is not supported (hint: concat, crossattn or adm)", file, params->line, ck);

    /* the denoiser */
    const ldm_config_node *un = d.unet_config;
    const char *target = NULL;
    if ((r = ldm_config_get_str(cfg, un, "target", NULL, &target)) != LDM_OK) return r;
    if ((r = ldm__ld_denoiser_kind(cfg, un, target, &out->denoiser)) != LDM_OK) return r;
    if (out->denoiser == LDM_DENOISER_UNET) r = ldm_unet_config_read(cfg, un, &out->unet);
    else {
        ldm__dit_yaml dy;
        if ((r = ldm__dit_yaml_load(cfg, ldm_config_find(un, "params"), &dy)) != LDM_OK) return r;
        out->dit.input_size = dy.input_size; out->dit.patch_size = dy.patch_size; out->dit.in_channels = dy.in_channels;
        out->dit.hidden_size = dy.hidden_size; out->dit.depth = dy.depth; out->dit.num_heads = dy.num_heads;
        out->dit.mlp_ratio = (float)dy.mlp_ratio; out->dit.class_dropout_prob = (float)dy.class_dropout_prob;
        out->dit.num_classes = dy.num_classes; out->dit.learn_sigma = dy.learn_sigma;
    }
    if (r) return r;

    /* the first stage: AutoencoderKL, or VQ (n_embed); none: pixel space (DDPM) */
    const ldm_config_node *fs = d.first_stage_config;
    if (!fs || fs->type == LDM_CONFIG_NULL) {
        out->pixel_space = 1;
        if (d.lr_scale > 0) return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: lr_scale needs a first_stage_config (its latent is the conditioning)", file, params->line);
        if (out->cond_stage == LDM_CONDSTAGE_FIRST_STAGE)
            return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: cond_stage_config __is_first_stage__ needs a first_stage_config", file, params->line);
        return LDM_OK;
    }
    out->clip_denoised = 0;
    out->lr_scale = d.lr_scale;
    if (d.lr_scale > 0) {   /* the low-res latent replaces the cond stage */
        if (out->cond_stage != LDM_CONDSTAGE_NONE && out->cond_stage != LDM_CONDSTAGE_FIRST_STAGE)
            return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: lr_scale conditions on the first stage's latent: cond_stage_config must be "
                                     "__is_first_stage__ or left out", file, params->line);
        if (d.lr_scale < 1) return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: lr_scale %g must be at least 1", file, params->line, d.lr_scale);
        out->cond_stage = LDM_CONDSTAGE_LR_LATENT;
        out->conditioning_key = LDM_CONDKEY_CONCAT;
    }
    if ((r = ldm_config_get_str(cfg, fs, "target", NULL, &target)) != LDM_OK) return r;
    if (!strstr(target, "AutoencoderKL") && !strstr(target, "VQModel"))
        return ldm_config_seterr(cfg, LDM_ERR_UNSUPPORTED, "%s:%d: first_stage_config target '%s' is not supported (hint: AutoencoderKL or "
                                 "VQModelInterface)", ldm__ld_file(fs), fs->line, target);
    if ((r = ldm_config_get_int(cfg, fs, "params.n_embed", 0, &out->first_stage_n_embed)) != LDM_OK) return r;
    return ldm_vae_config_read(cfg, fs, &out->first_stage);
}
#endif

/* ---- 5. video DiT ---------------------------------------------------------------------------- */
/* "true" / "false" / a number / NULL (required: 0) as the table's defaults are written */
static double ldm__vdit_def(const char *s) {
    if (!s) return 0.0;
    if (strcmp(s, "true") == 0) return 1.0;
    if (strcmp(s, "false") == 0) return 0.0;
    return strtod(s, NULL);
}
#define LDM__VDIT_DEFAULT(name, kind, def, help) c.name = ldm__vdit_def(def);
LDM_API ldm_vdit_config ldm_vdit_config_default(void) {
    ldm_vdit_config c;
    memset(&c, 0, sizeof c);
    LDM_VDIT_CONFIG_KEYS(LDM__VDIT_DEFAULT)
    return c;
}
#undef LDM__VDIT_DEFAULT
LDM_API ldm_result ldm_vdit_config_check(ldm_ctx *ctx, const ldm_vdit_config *c) {
#define LDM__VDIT_REQ(cond, ...) do { if (!(cond)) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "VideoDiT config: " __VA_ARGS__); } while (0)
    LDM__VDIT_REQ(c != NULL, "no config");
    LDM__VDIT_REQ(c->patch_t >= 1 && c->patch_size >= 1, "patch_t = %d and patch_size = %d must be positive", c->patch_t, c->patch_size);
    LDM__VDIT_REQ(c->num_frames >= 1 && c->num_frames % c->patch_t == 0, "num_frames %d must be a positive multiple of patch_t %d", c->num_frames, c->patch_t);
    LDM__VDIT_REQ(c->height >= 1 && c->height % c->patch_size == 0 && c->width >= 1 && c->width % c->patch_size == 0,
                  "height %d and width %d must be positive multiples of patch_size %d", c->height, c->width, c->patch_size);
    LDM__VDIT_REQ(c->in_channels >= 1 && c->out_channels >= 1, "in_channels = %d and out_channels = %d must be positive", c->in_channels, c->out_channels);
    LDM__VDIT_REQ(c->hidden_size >= 16 && c->hidden_size % 16 == 0, "hidden_size = %d: the 3-D sin-cos embedding needs a multiple of 16", c->hidden_size);
    LDM__VDIT_REQ(c->num_heads >= 1 && c->hidden_size % c->num_heads == 0, "hidden_size %d is not divisible by num_heads %d", c->hidden_size, c->num_heads);
    LDM__VDIT_REQ(c->depth >= 0, "depth = %d must not be negative", c->depth);
    LDM__VDIT_REQ(c->mlp_ratio > 0.0f && (int)((float)c->hidden_size * c->mlp_ratio) >= 1, "mlp_ratio = %g must be positive", (double)c->mlp_ratio);
    LDM__VDIT_REQ((c->learn_sigma == 0 || c->learn_sigma == 1) && (c->switch_adaln_layer == 0 || c->switch_adaln_layer == 1),
                  "learn_sigma = %d and switch_adaln_layer = %d must be 0 or 1", c->learn_sigma, c->switch_adaln_layer);
    LDM__VDIT_REQ((int64_t)c->num_frames * c->height * c->width / ((int64_t)c->patch_t * c->patch_size * c->patch_size) <= (int64_t)1 << 30,
                  "%d x %d x %d latents give too many tokens", c->num_frames, c->height, c->width);
    return LDM_OK;
#undef LDM__VDIT_REQ
}

struct ldm_vdit {
    ldm_vdit_config cfg;
    int gt, gh, gw;
    ldm_nn_conv3d x_proj;
    ldm__dit_trunk k;             /* pos_embed, t_embedder, t_block, blocks, final layer (section 2) */
};

/* Module order = the PyTorch state-dict order (a module's own parameters before its children). */
static void ldm__vdit_register(ldm_vdit *m) {
    const ldm_vdit_config *c = &m->cfg;
    ldm_nn_params *P = m->k.P;
    int D = c->hidden_size;
    int k[3], pad[6] = {0, 0, 0, 0, 0, 0};
    k[0] = c->patch_t; k[1] = k[2] = c->patch_size;
    m->k.pos_embed = ldm_nn_param(P, "pos_embed", ldm_shape3(1, (int64_t)m->gt * m->gh * m->gw, D), ldm_nn_init_const(0.0f));
    ldm_nn_conv3d_init_ex(P, &m->x_proj, "x_embedder.proj", c->in_channels, D, k, k, pad, 1);
    ldm__dit_xavier(P, m->x_proj.weight, m->x_proj.bias, (int64_t)c->in_channels * k[0] * k[1] * k[2], D); /* as a Linear */
    ldm__dit_register_temb(&m->k, D);
    ldm__dit_register_blocks(&m->k, D, c->mlp_ratio, (int64_t)k[0] * k[1] * k[2] * m->k.out_channels);
}
static ldm_result ldm__vdit_build(ldm_ctx *ctx, ldm_vdit **out, const ldm_vdit_config *cfg) {
    *out = NULL;
    if (ldm_vdit_config_check(ctx, cfg)) return ldm_ctx_status(ctx);
    ldm_vdit *m = (ldm_vdit *)LDM_MALLOC(sizeof *m);
    if (!m) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "VideoDiT: out of memory");
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    m->gt = cfg->num_frames / cfg->patch_t; m->gh = cfg->height / cfg->patch_size; m->gw = cfg->width / cfg->patch_size;
    ldm_result r = ldm__dit_trunk_alloc(ctx, &m->k, "VideoDiT", cfg->depth, cfg->num_heads, cfg->switch_adaln_layer,
                                        cfg->learn_sigma ? 2 * cfg->out_channels : cfg->out_channels);
    if (r) { LDM_FREE(m); return r; }
    ldm__vdit_register(m);
    if ((r = ldm_ctx_status(ctx)) != LDM_OK) { ldm_vdit_destroy(m); return r; }
    *out = m;
    return LDM_OK;
}
LDM_API ldm_result ldm_vdit_reset_pos_embed(ldm_ctx *ctx, ldm_vdit *m) {
    int D = m->cfg.hidden_size, dt = D / 4, q = (D - dt) / 2;
    float *e = (float *)LDM_MALLOC(sizeof(float) * (size_t)m->gt * m->gh * m->gw * D);
    if (!e) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "VideoDiT: out of memory");
    for (int i = 0; i < m->gt; i++)
        for (int j = 0; j < m->gh; j++)
            for (int k = 0; k < m->gw; k++) {
                float *row = e + (((size_t)i * m->gh + j) * m->gw + k) * D;
                ldm__dit_sincos(row, dt, i);            /* time */
                ldm__dit_sincos(row + dt, q, k);        /* column */
                ldm__dit_sincos(row + dt + q, q, j);    /* row */
            }
    ldm_result r = ldm_nn_copy_from_host(ctx, m->k.pos_embed, e);
    LDM_FREE(e);
    return r;
}
LDM_API ldm_result ldm_vdit_create(ldm_ctx *ctx, ldm_vdit **out, const ldm_vdit_config *cfg) {
    ldm_vdit *m;
    ldm_result r = ldm__vdit_build(ctx, &m, cfg);
    *out = NULL;
    if (r) return r;
    if ((r = ldm_nn_params_alloc(ctx, m->k.P)) != LDM_OK || (r = ldm_vdit_reset_pos_embed(ctx, m)) != LDM_OK) { ldm_vdit_destroy(m); return r; }
    *out = m;
    return LDM_OK;
}
LDM_API void ldm_vdit_destroy(ldm_vdit *m) {
    if (!m) return;
    ldm__dit_trunk_free(&m->k);
    LDM_FREE(m);
}
LDM_API ldm_result ldm_vdit_count_params(ldm_ctx *ctx, const ldm_vdit_config *cfg, int64_t *n) {
    ldm_vdit *m;
    ldm_result r = ldm__vdit_build(ctx, &m, cfg);
    *n = r ? 0 : ldm_nn_numel(m->k.P, NULL, 0);
    if (!r) ldm_vdit_destroy(m);
    return r;
}
LDM_API ldm_nn_params *ldm_vdit_params(ldm_vdit *m) { return m->k.P; }
LDM_API const ldm_vdit_config *ldm_vdit_cfg(const ldm_vdit *m) { return &m->cfg; }
LDM_API ldm_result ldm_vdit_load(ldm_ctx *ctx, ldm_vdit *m, const char *path, const char *prefix, int strict, ldm_nn_load_report *report) {
    return ldm__dn_load(ctx, m->k.P, path, prefix, strict, report);
}
LDM_API ldm_result ldm_vdit_save(ldm_ctx *ctx, const ldm_vdit *m, const char *path, ldm_dtype dtype, const char *prefix) {
    return ldm_nn_save(ctx, m->k.P, path, dtype, prefix);
}

LDM_API ldm_tensor *ldm_vdit_forward(ldm_ctx *ctx, ldm_vdit *m, ldm_tensor *x, ldm_tensor *t) {
    if (ctx->status) return NULL;
    const ldm_vdit_config *c = &m->cfg;
    if (!x || !t || x->ndim != 5 || x->shape[1] != c->in_channels || x->shape[2] != c->num_frames || x->shape[3] != c->height ||
        x->shape[4] != c->width || t->numel != x->shape[0]) {
        char b[64];
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "VideoDiT: x %s, t %lld values; expected x [B, %d, %d, %d, %d] and t [B] (hint: in_channels "
                       "counts the concatenated condition; the model is built for one latent size)", x ? ldm_shape_str(x, b, sizeof b) : "NULL",
                       t ? (long long)t->numel : -1LL, c->in_channels, c->num_frames, c->height, c->width);
        return NULL;
    }
    int64_t B = x->shape[0], gt = m->gt, gh = m->gh, gw = m->gw, N = gt * gh * gw;
    int64_t pt = c->patch_t, p = c->patch_size, C = m->k.out_channels;
    ldm_tensor *h = ldm__dit_tokens(ctx, &m->k, ldm_nn_conv3d_forward(ctx, &m->x_proj, x));  /* [B, N, D] */
    h = ldm__dit_trunk_forward(ctx, &m->k, h, ldm__dit_temb(ctx, &m->k, t));
    /* unpatchify: (b, i, j, k, a, u, v, c) -> (b, c, i a, j u, k v) in four moves of <= 5 dims */
    static const int p2[4] = {0, 2, 1, 3}, p3[5] = {0, 3, 1, 2, 4}, p4[5] = {0, 1, 3, 2, 4};
    h = ldm_transpose(ctx, ldm_reshape(ctx, h, ldm_shape3(B * N, pt * p * p, C)), 1, 2);       /* b i j k | c | a u v */
    h = ldm_permute(ctx, ldm_reshape(ctx, h, ldm_shape4(B, N, C, pt * p * p)), p2);            /* b c | i j k | a u v */
    h = ldm_permute(ctx, ldm_reshape(ctx, h, ldm_shape5(B * C * gt, gh, gw, pt, p * p)), p3);  /* b c i a | j | k | u v */
    h = ldm_permute(ctx, ldm_reshape(ctx, h, ldm_shape5(B * C * gt * pt, gh, gw, p, p)), p4);  /* .. | j u k v */
    return h ? ldm_reshape(ctx, h, ldm_shape5(B, C, gt * pt, gh * p, gw * p)) : NULL;
}
static ldm_tensor *ldm__vdit_denoise(ldm_ctx *ctx, void *self, ldm_tensor *x, ldm_tensor *t, const ldm_cond *cond) {
    ldm_vdit *m = (ldm_vdit *)self;
    ldm_tensor *in = x;
    if (cond && cond->concat) {
        ldm_tensor *xs[2];
        xs[0] = x; xs[1] = cond->concat;
        in = ldm_concat(ctx, 2, xs, 1);
    }
    ldm_tensor *out = ldm_vdit_forward(ctx, m, in, t);
    return out && m->cfg.learn_sigma ? ldm_slice(ctx, out, 1, 0, m->cfg.out_channels) : out;
}
LDM_API ldm_denoiser ldm_vdit_denoiser(ldm_vdit *m) { ldm_denoiser d; d.forward = ldm__vdit_denoise; d.self = m; return d; }

#ifdef LDM_CONFIG_H
LDM_CONFIG_DEFINE(ldm_vdit_yaml, LDM_VDIT_CONFIG_KEYS)
LDM_API ldm_result ldm_vdit_config_read(ldm_config *cfg, const ldm_config_node *node, ldm_vdit_config *out) {
    static const char *const where[] = {"", "params", "network_config.params", "params.network_config.params", "model.params.network_config.params"};
    const ldm_config_node *params = NULL;
    if (!node) node = ldm_config_root(cfg);
    for (int i = 0; i < 5 && !params; i++) {
        const ldm_config_node *q = i ? ldm_config_find(node, where[i]) : node;
        if (q && ldm_config_find(q, "num_frames")) params = q;
    }
    if (!params) params = node;   /* validation then names what is missing */
    ldm_vdit_yaml d;
    ldm_result r = ldm_vdit_yaml_load(cfg, params, &d);
    if (r) return r;
    memset(out, 0, sizeof *out);
    out->num_frames = d.num_frames; out->height = d.height; out->width = d.width;
    out->patch_t = d.patch_t; out->patch_size = d.patch_size;
    out->in_channels = d.in_channels; out->out_channels = d.out_channels;
    out->hidden_size = d.hidden_size; out->depth = d.depth; out->num_heads = d.num_heads;
    out->mlp_ratio = (float)d.mlp_ratio; out->learn_sigma = d.learn_sigma; out->switch_adaln_layer = d.switch_adaln_layer;
    return LDM_OK;
}
#endif

/* ---- 5. the sgm engine --------------------------------------------------------------------- */
LDM_API ldm_sgm_discretization ldm_sgm_discretization_default(ldm_sgm_disc_kind kind) {
    ldm_sgm_discretization d;
    memset(&d, 0, sizeof d);
    d.kind = kind;
    d.sigma_min = 0.002; d.sigma_max = 80.0; d.rho = 7.0;
    d.linear_start = 0.00085; d.linear_end = 0.012; d.num_timesteps = 1000;
    return d;
}
/* torch.linspace's element i (halves from both ends), in float32 or float64 */
static float ldm__sgm_linspace_f(float a, float b, int n, int i) {
    float step = n > 1 ? (b - a) / (float)(n - 1) : 0.0f;
    return i < n / 2 ? a + step * (float)i : b - step * (float)(n - i - 1);
}
static double ldm__sgm_linspace_d(double a, double b, int n, int i) {
    double step = n > 1 ? (b - a) / (double)(n - 1) : 0.0;
    return i < n / 2 ? a + step * (double)i : b - step * (double)(n - i - 1);
}
LDM_API ldm_result ldm_sgm_discretize(ldm_ctx *ctx, const ldm_sgm_discretization *d, int n, int append_zero, int flip, float *sigmas) {
    if (ctx->status) return ctx->status;
    if (!d || !sigmas || n < 1) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_sgm_discretize: %s (hint: n >= 1 and an output of n + append_zero floats)",
                                                      !d ? "no discretization" : !sigmas ? "no output" : "n < 1");
    if (d->kind == LDM_SGM_DISC_EDM) {
        if (!(d->sigma_min > 0.0 && d->sigma_max > d->sigma_min && d->rho > 0.0))
            return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "EDMDiscretization: sigma_min %g, sigma_max %g, rho %g (hint: 0 < sigma_min < sigma_max, rho > 0)",
                                  d->sigma_min, d->sigma_max, d->rho);
        /* float32 as torch: python floats enter as float32 scalars */
        double mi = pow(d->sigma_min, 1.0 / d->rho), ma = pow(d->sigma_max, 1.0 / d->rho);
        float diff = (float)(mi - ma), maf = (float)ma, rho = (float)d->rho;
        for (int i = 0; i < n; i++) {
            float base = maf + ldm__sgm_linspace_f(0.0f, 1.0f, n, i) * diff;
            sigmas[i] = powf(base, rho);
        }
    } else if (d->kind == LDM_SGM_DISC_LEGACY_DDPM) {
        int T = d->num_timesteps;
        if (T < 1 || n > T || !(d->linear_start > 0.0 && d->linear_end > 0.0))
            return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "LegacyDDPMDiscretization: %d sigmas of %d timesteps, betas %g .. %g (hint: n <= num_timesteps, positive betas)",
                                  n, T, d->linear_start, d->linear_end);
        double *ac = (double *)LDM_MALLOC(sizeof(double) * (size_t)T);
        if (!ac) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_sgm_discretize: out of memory");
        double prod = 1.0, a = sqrt(d->linear_start), b = sqrt(d->linear_end);
        for (int i = 0; i < T; i++) {
            double sb = ldm__sgm_linspace_d(a, b, T, i);
            prod *= 1.0 - sb * sb;
            ac[i] = prod;
        }
        /* generate_roughly_equally_spaced_steps: linspace(T-1, 0, n, endpoint=False) as int, ascending */
        for (int i = 0; i < n; i++) {
            int ts = n < T ? (int)((double)(n - 1 - i) * (-(double)(T - 1) / (double)n) + (double)(T - 1)) : i;
            float r = (float)((1.0 - ac[ts]) / ac[ts]);
            sigmas[n - 1 - i] = sqrtf(r);   /* descending */
        }
        LDM_FREE(ac);
    } else return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_sgm_discretize: unknown discretization %d", (int)d->kind);
    if (append_zero) sigmas[n++] = 0.0f;
    if (flip)
        for (int i = 0; i < n / 2; i++) { float t = sigmas[i]; sigmas[i] = sigmas[n - 1 - i]; sigmas[n - 1 - i] = t; }
    return LDM_OK;
}

LDM_API ldm_sgm_denoiser_config ldm_sgm_denoiser_config_default(ldm_sgm_scaling scaling) {
    ldm_sgm_denoiser_config c;
    memset(&c, 0, sizeof c);
    c.scaling = scaling;
    c.sigma_data = 0.5;
    c.num_idx = 1000;
    c.disc = ldm_sgm_discretization_default(LDM_SGM_DISC_LEGACY_DDPM);
    c.quantize_c_noise = 1;
    return c;
}
LDM_API ldm_result ldm_sgm_denoiser_init(ldm_ctx *ctx, ldm_sgm_denoiser *d, const ldm_sgm_denoiser_config *cfg, ldm_denoiser net) {
    memset(d, 0, sizeof *d);
    if (ctx->status) return ctx->status;
    if (!cfg || (int)cfg->scaling < 0 || (int)cfg->scaling > LDM_SGM_V_EDM_NOISE || !(cfg->sigma_data > 0.0))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "sgm Denoiser: %s (hint: ldm_sgm_denoiser_config_default)", !cfg ? "no config" : "unknown scaling or sigma_data <= 0");
    if (!net.forward) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "sgm Denoiser: no network (hint: ldm_vdit_denoiser)");
    d->cfg = *cfg;
    d->net = net;
    if (cfg->discrete) {
        if (cfg->num_idx < 1) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "sgm DiscreteDenoiser: num_idx = %d must be positive", cfg->num_idx);
        d->sigmas = (float *)LDM_MALLOC(sizeof(float) * (size_t)cfg->num_idx);
        if (!d->sigmas) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "sgm DiscreteDenoiser: out of memory");
        ldm_result r = ldm_sgm_discretize(ctx, &cfg->disc, cfg->num_idx, 0, 1, d->sigmas);
        if (r) { ldm_sgm_denoiser_free(d); return r; }
    }
    return LDM_OK;
}
LDM_API void ldm_sgm_denoiser_free(ldm_sgm_denoiser *d) {
    if (!d) return;
    LDM_FREE(d->sigmas);
    d->sigmas = NULL;
}
LDM_API void ldm_sgm_scalings(const ldm_sgm_denoiser_config *cfg, float sigma, float c[4]) {
    double s = sigma, s2 = s * s, sd = cfg->sigma_data;
    switch (cfg->scaling) {
    case LDM_SGM_EDM:
        c[0] = (float)(sd * sd / (s2 + sd * sd)); c[1] = (float)(s * sd / sqrt(s2 + sd * sd));
        c[2] = (float)(1.0 / sqrt(s2 + sd * sd)); c[3] = (float)(0.25 * log(s));
        break;
    case LDM_SGM_EPS:
        c[0] = 1.0f; c[1] = (float)-s; c[2] = (float)(1.0 / sqrt(s2 + 1.0)); c[3] = sigma;
        break;
    default: /* V, V with EDM c_noise */
        c[0] = (float)(1.0 / (s2 + 1.0)); c[1] = (float)(-s / sqrt(s2 + 1.0)); c[2] = (float)(1.0 / sqrt(s2 + 1.0));
        c[3] = cfg->scaling == LDM_SGM_V ? sigma : (float)(0.25 * log(s));
        break;
    }
}
LDM_API int ldm_sgm_sigma_to_idx(const ldm_sgm_denoiser *d, float sigma) {
    if (!d || !d->sigmas) return -1;
    int best = 0;
    float bd = fabsf(sigma - d->sigmas[0]);
    for (int i = 1; i < d->cfg.num_idx; i++) {
        float e = fabsf(sigma - d->sigmas[i]);
        if (e < bd) { bd = e; best = i; }
    }
    return best;
}
/* B host values as a [B, 1, ...] tensor of like's rank on the context's device */
static ldm_tensor *ldm__sgm_bcast(ldm_ctx *ctx, const float *v, const ldm_tensor *like) {
    int64_t d[LDM_MAX_DIMS];
    d[0] = like->shape[0];
    for (int i = 1; i < like->ndim; i++) d[i] = 1;
    return ldm_from_host(ctx, ldm_shape_n(like->ndim, d), v);
}
LDM_API ldm_tensor *ldm_sgm_denoise(ldm_ctx *ctx, const ldm_sgm_denoiser *d, ldm_tensor *x, const float *sigma, const ldm_cond *cond) {
    if (ctx->status || !x) return NULL;
    if (!d || !d->net.forward || !sigma) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_sgm_denoise: %s (hint: ldm_sgm_denoiser_init first)", !sigma ? "no sigmas" : "no denoiser");
        return NULL;
    }
    int64_t B = x->shape[0];
    float *cv = (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * 4 * (size_t)(B ? B : 1));
    if (!cv) return NULL;
    for (int64_t b = 0; b < B; b++) {
        float s = sigma[b], c[4];
        if (!(s > 0.0f) || s == HUGE_VALF) {
            ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_sgm_denoise: sigma[%lld] = %g (hint: noise levels must be positive and finite)", (long long)b, (double)s);
            return NULL;
        }
        if (d->sigmas) s = d->sigmas[ldm_sgm_sigma_to_idx(d, s)];   /* possibly_quantize_sigma */
        ldm_sgm_scalings(&d->cfg, s, c);
        if (d->sigmas && d->cfg.quantize_c_noise) c[3] = (float)ldm_sgm_sigma_to_idx(d, c[3]);
        for (int k = 0; k < 4; k++) cv[k * B + b] = c[k];
    }
    ldm_tensor *cskip = ldm__sgm_bcast(ctx, cv, x), *cout = ldm__sgm_bcast(ctx, cv + B, x), *cin = ldm__sgm_bcast(ctx, cv + 2 * B, x);
    ldm_tensor *cnoise = ldm_from_host(ctx, ldm_shape1(B), cv + 3 * B);
    if (!cskip || !cout || !cin || !cnoise) return NULL;
    ldm_tensor *f = d->net.forward(ctx, d->net.self, ldm_mul(ctx, x, cin), cnoise, cond);
    if (!f) {
        if (!ctx->status) ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_sgm_denoise: the network returned NULL without an error");
        return NULL;
    }
    if (!ldm_shape_eq(f, x)) {
        char a[64], b2[64];
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_sgm_denoise: the network output %s does not have x's shape %s (hint: out_channels = the latent's channels)",
                       ldm_shape_str(f, a, sizeof a), ldm_shape_str(x, b2, sizeof b2));
        return NULL;
    }
    return ldm_add(ctx, ldm_mul(ctx, f, cout), ldm_mul(ctx, x, cskip));
}

LDM_API ldm_sgm_loss_config ldm_sgm_loss_config_default(void) {
    ldm_sgm_loss_config c;
    memset(&c, 0, sizeof c);
    c.sigma_sampling = LDM_SGM_SIGMA_EDM;
    c.p_mean = -1.2; c.p_std = 1.2;
    c.num_idx = 1000;
    c.disc = ldm_sgm_discretization_default(LDM_SGM_DISC_LEGACY_DDPM);
    c.weighting = LDM_SGM_W_EDM;
    c.sigma_data = 0.5;
    c.loss_type = LDM_LOSS_L2;
    return c;
}
LDM_API ldm_result ldm_sgm_sample_sigmas(ldm_ctx *ctx, const ldm_sgm_loss_config *c, int64_t B, float *sigmas) {
    if (ctx->status) return ctx->status;
    if (!c || !sigmas || B < 0) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_sgm_sample_sigmas: no config or output");
    if (B == 0) return LDM_OK;
    if (c->sigma_sampling == LDM_SGM_SIGMA_EDM) {   /* EDMSampling: exp(p_mean + p_std * randn) */
        ldm_rng_normal(ctx, ldm_ctx_rng(ctx), LDM_CPU, sigmas, B, 0.0f, 1.0f);
        for (int64_t b = 0; b < B; b++) sigmas[b] = expf((float)c->p_mean + (float)c->p_std * sigmas[b]);
        return LDM_OK;
    }
    if (c->sigma_sampling != LDM_SGM_SIGMA_DISCRETE || c->num_idx < 1)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_sgm_sample_sigmas: unknown sigma sampler %d or num_idx %d < 1", (int)c->sigma_sampling, c->num_idx);
    float *tab = (float *)LDM_MALLOC(sizeof(float) * (size_t)c->num_idx);   /* DiscreteSampling: sigmas[randint(num_idx)] */
    if (!tab) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_sgm_sample_sigmas: out of memory");
    ldm_result r = ldm_sgm_discretize(ctx, &c->disc, c->num_idx, 0, 1, tab);
    if (!r) {
        ldm_rng_uniform(ctx, ldm_ctx_rng(ctx), LDM_CPU, sigmas, B, 0.0f, 1.0f);
        for (int64_t b = 0; b < B; b++) {
            int i = (int)(sigmas[b] * (float)c->num_idx);
            sigmas[b] = tab[i < c->num_idx ? i : c->num_idx - 1];
        }
    }
    LDM_FREE(tab);
    return r;
}
LDM_API float ldm_sgm_loss_weight(const ldm_sgm_loss_config *c, float sigma) {
    double s = sigma, sd = c->weighting == LDM_SGM_W_V ? 1.0 : c->sigma_data;
    switch (c->weighting) {
    case LDM_SGM_W_EDM: case LDM_SGM_W_V: return (float)((s * s + sd * sd) / ((s * sd) * (s * sd)));
    case LDM_SGM_W_EPS: return (float)(1.0 / (s * s));
    default: return 1.0f;
    }
}
LDM_API ldm_tensor *ldm_sgm_loss(ldm_ctx *ctx, const ldm_sgm_loss_config *c, const ldm_sgm_denoiser *den, ldm_tensor *x0,
                                 const ldm_cond *cond, const float *sigmas, ldm_tensor *noise, ldm_tensor *offset, float *sigmas_out) {
    if (ctx->status || !x0) return NULL;
    if (!c || !den || x0->ndim < 2 || (c->loss_type != LDM_LOSS_L2 && c->loss_type != LDM_LOSS_L1) || (int)c->weighting < 0 ||
        (int)c->weighting > LDM_SGM_W_EPS || c->offset_noise_level < 0.0) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "StandardDiffusionLoss: %s (hint: ldm_sgm_loss_config_default; x0 [B, C, ...])",
                       !c || !den ? "no config or denoiser" : x0->ndim < 2 ? "x0 needs a batch and a channel dim" : "unknown loss type or weighting, or a negative offset_noise_level");
        return NULL;
    }
    int64_t B = x0->shape[0], C = x0->shape[1];
    float *sg = (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * 2 * (size_t)(B ? B : 1)), *w = sg ? sg + B : NULL;
    if (!sg) return NULL;
    if (sigmas) memcpy(sg, sigmas, sizeof(float) * (size_t)B);
    else if (ldm_sgm_sample_sigmas(ctx, c, B, sg)) return NULL;
    if (sigmas_out) memcpy(sigmas_out, sg, sizeof(float) * (size_t)B);
    for (int64_t b = 0; b < B; b++) w[b] = ldm_sgm_loss_weight(c, sg[b]);
    if (noise && !ldm_shape_eq(noise, x0)) {
        char a[64], b2[64];
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "StandardDiffusionLoss: noise %s for x0 %s (hint: the same shape, or NULL)",
                       ldm_shape_str(noise, a, sizeof a), ldm_shape_str(x0, b2, sizeof b2));
        return NULL;
    }
    ldm_tensor *n = noise ? noise : ldm_randn(ctx, ldm_shape_of(x0));
    if (c->offset_noise_level > 0.0) {   /* sgm's image-shaped offset: one value per (sample, channel) */
        if (offset && offset->numel != B * C) {
            ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "StandardDiffusionLoss: offset has %lld values, expected [%lld, %lld]", (long long)offset->numel, (long long)B, (long long)C);
            return NULL;
        }
        int64_t d[LDM_MAX_DIMS];
        d[0] = B; d[1] = C;
        for (int i = 2; i < x0->ndim; i++) d[i] = 1;
        ldm_tensor *o = offset ? offset : ldm_randn(ctx, ldm_shape2(B, C));
        n = ldm_add(ctx, n, ldm_scale(ctx, ldm_reshape(ctx, o, ldm_shape_n(x0->ndim, d)), (float)c->offset_noise_level));
    }
    ldm_tensor *xn = ldm_add(ctx, x0, ldm_mul(ctx, n, ldm__sgm_bcast(ctx, sg, x0)));
    ldm_tensor *out = ldm_sgm_denoise(ctx, den, xn, sg, cond);
    ldm_tensor *e = ldm_sub(ctx, out, x0);
    e = c->loss_type == LDM_LOSS_L2 ? ldm_square(ctx, e) : ldm_abs(ctx, e);
    unsigned dims = 0;
    for (int i = 1; i < x0->ndim; i++) dims |= 1u << i;
    return ldm_mean(ctx, ldm_mul(ctx, ldm__sgm_bcast(ctx, w, x0), e), dims, 0);
}

LDM_API ldm_sgm_sampler_opts ldm_sgm_sampler_opts_default(void) {
    ldm_sgm_sampler_opts o;
    memset(&o, 0, sizeof o);
    o.num_steps = 50;
    o.disc = ldm_sgm_discretization_default(LDM_SGM_DISC_EDM);
    o.s_tmax = HUGE_VALF;
    o.s_noise = 1.0f;
    o.guidance_scale = 1.0f;
    return o;
}
/* a condition tensor for B samples: itself (batch B) or one repeated (single prompt) */
static ldm_tensor *ldm__sgm_rep(ldm_ctx *ctx, ldm_tensor *t, int64_t B, const char *what) {
    if (!t || t->shape[0] == B) return t;
    if (t->shape[0] != 1) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "sgm sampler: %s has batch %lld for %lld samples (hint: 1 for a single prompt, or one per sample)",
                       what, (long long)t->shape[0], (long long)B);
        return NULL;
    }
    ldm_tensor **xs = (ldm_tensor **)ldm_arena_alloc(ctx, LDM_CPU, sizeof(ldm_tensor *) * (size_t)B);
    if (!xs) return NULL;
    for (int64_t b = 0; b < B; b++) xs[b] = t;
    return ldm_concat(ctx, (int)B, xs, 0);
}
static ldm_result ldm__sgm_cond_for(ldm_ctx *ctx, const ldm_cond *in, int64_t B, const char *what, ldm_cond *out) {
    memset(out, 0, sizeof *out);
    if (!in) return LDM_OK;
    char w[48];
    snprintf(w, sizeof w, "%s.concat", what);
    out->concat = ldm__sgm_rep(ctx, in->concat, B, w);
    snprintf(w, sizeof w, "%s.context", what);
    out->context = ldm__sgm_rep(ctx, in->context, B, w);
    snprintf(w, sizeof w, "%s.y", what);
    out->y = ldm__sgm_rep(ctx, in->y, B, w);
    return ctx->status;
}
LDM_API ldm_tensor *ldm_sgm_guided_denoise(ldm_ctx *ctx, const ldm_sgm_denoiser *den, ldm_tensor *x, const float *sigma,
                                           const ldm_sgm_sampler_opts *o) {
    if (ctx->status || !x) return NULL;
    int64_t B = x->shape[0];
    ldm_cond c, u;
    if (ldm__sgm_cond_for(ctx, o ? o->cond : NULL, B, "cond", &c)) return NULL;
    int per_sample = o && o->uncond && o->guidance_scales;
    if (!o || !o->uncond || (!per_sample && o->guidance_scale == 1.0f)) return ldm_sgm_denoise(ctx, den, x, sigma, &c); /* IdentityGuider */
    if (ldm__sgm_cond_for(ctx, o->uncond, B, "uncond", &u)) return NULL;
    /* VanillaCFG: one call on [uncond; cond] */
    ldm_cond cc;
    memset(&cc, 0, sizeof cc);
    cc.y = ldm__diff_cat2(ctx, u.y, c.y, "y");
    cc.context = ldm__diff_cat2(ctx, u.context, c.context, "context");
    cc.concat = ldm__diff_cat2(ctx, u.concat, c.concat, "concat");
    float *s2 = (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * 3 * (size_t)(B ? B : 1));
    if (!s2 || ctx->status) return NULL;
    memcpy(s2, sigma, sizeof(float) * (size_t)B);
    memcpy(s2 + B, sigma, sizeof(float) * (size_t)B);
    ldm_tensor *o2 = ldm_sgm_denoise(ctx, den, ldm__diff_cat2(ctx, x, x, "x"), s2, &cc);
    ldm_tensor *ou = ldm_slice(ctx, o2, 0, 0, B), *oc = ldm_slice(ctx, o2, 0, B, B);
    if (!per_sample) return ldm_add(ctx, ou, ldm_scale(ctx, ldm_sub(ctx, oc, ou), o->guidance_scale));
    memcpy(s2 + 2 * B, o->guidance_scales, sizeof(float) * (size_t)B);
    return ldm_add(ctx, ou, ldm_mul(ctx, ldm__sgm_bcast(ctx, s2 + 2 * B, x), ldm_sub(ctx, oc, ou)));
}
/* step i's noise from opts->noise [steps, B, ...], or the ctx RNG */
static ldm_tensor *ldm__sgm_noise(ldm_ctx *ctx, const ldm_sgm_sampler_opts *o, int step, const ldm_tensor *x) {
    if (!o->noise) return ldm_randn(ctx, ldm_shape_of(x));
    if (step >= o->noise->shape[0] || o->noise->numel != o->noise->shape[0] * x->numel) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "sgm sampler: opts.noise has %lld slices of %lld values, step %d needs one of %lld (hint: [num_steps, B, ...])",
                       (long long)o->noise->shape[0], (long long)(o->noise->numel / (o->noise->shape[0] ? o->noise->shape[0] : 1)), step, (long long)x->numel);
        return NULL;
    }
    return ldm_reshape(ctx, ldm_slice(ctx, o->noise, 0, step, 1), ldm_shape_of(x));
}
/* prepare_sampling_loop: the sigmas (with the appended zero) and x = randn sqrt(1 + sigma_0^2) */
static float *ldm__sgm_prepare(ldm_ctx *ctx, const char *who, const ldm_sgm_denoiser *den, ldm_tensor *randn, const ldm_sgm_sampler_opts *o,
                               ldm_tensor **x) {
    if (ctx->status) return NULL;
    if (!den || !randn || !o || o->num_steps < 1 || !(o->s_noise >= 0.0f) || !(o->eta >= 0.0 && o->eta <= 1.0)) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: %s (hint: ldm_sgm_sampler_opts_default; randn is the N(0, 1) start [B, ...])", who,
                       !den ? "no denoiser" : !randn ? "no starting noise" : !o ? "no options" : o->num_steps < 1 ? "num_steps < 1" : "s_noise < 0 or eta outside [0, 1]");
        return NULL;
    }
    float *sig = (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * ((size_t)o->num_steps + 1));
    if (!sig || ldm_sgm_discretize(ctx, &o->disc, o->num_steps, 1, 0, sig)) return NULL;
    *x = ldm_scale(ctx, randn, sqrtf(1.0f + sig[0] * sig[0]));
    return *x ? sig : NULL;
}
static float *ldm__sgm_fill(ldm_ctx *ctx, int64_t B, float v) {
    float *s = (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * (size_t)(B ? B : 1));
    for (int64_t b = 0; s && b < B; b++) s[b] = v;
    return s;
}
LDM_API ldm_tensor *ldm_sgm_euler_edm_sample(ldm_ctx *ctx, const ldm_sgm_denoiser *den, ldm_tensor *randn, const ldm_sgm_sampler_opts *o) {
    int prev = ldm_set_grad_enabled(ctx, 0);
    ldm_tensor *x = NULL;
    float *sig = ldm__sgm_prepare(ctx, "EulerEDMSampler", den, randn, o, &x);
    int S = o ? o->num_steps : 0;
    for (int i = 0; sig && i < S && !ctx->status; i++) {
        ldm_mark m = ldm_arena_mark(ctx);
        int64_t B = x->shape[0];
        float gamma = o->s_tmin <= sig[i] && sig[i] <= o->s_tmax ? fminf(o->s_churn / (float)S, sqrtf(2.0f) - 1.0f) : 0.0f;
        float sh = sig[i] * (gamma + 1.0f);
        ldm_tensor *xi = x;
        if (gamma > 0.0f)
            xi = ldm_add(ctx, x, ldm_scale(ctx, ldm__sgm_noise(ctx, o, i, x), o->s_noise * sqrtf(sh * sh - sig[i] * sig[i])));
        ldm_tensor *dn = ldm_sgm_guided_denoise(ctx, den, xi, ldm__sgm_fill(ctx, B, sh), o);
        ldm_tensor *d = ldm_scale(ctx, ldm_sub(ctx, xi, dn), 1.0f / sh);             /* to_d */
        ldm_tensor *xn = ldm_add(ctx, xi, ldm_scale(ctx, d, sig[i + 1] - sh));      /* euler_step */
        if (!xn) break;
        x = ldm_arena_keep(ctx, m, xn);
        if (o->on_step) o->on_step(o->user, i, S);
    }
    ldm_set_grad_enabled(ctx, prev);
    return ctx->status ? NULL : x;
}
LDM_API ldm_tensor *ldm_sgm_ddim_sample(ldm_ctx *ctx, const ldm_sgm_denoiser *den, ldm_tensor *randn, const ldm_sgm_sampler_opts *o) {
    int prev = ldm_set_grad_enabled(ctx, 0);
    ldm_tensor *x = NULL;
    float *sig = ldm__sgm_prepare(ctx, "DDIM sampler", den, randn, o, &x);
    int S = o ? o->num_steps : 0;
    for (int i = 0; sig && i < S && !ctx->status; i++) {
        ldm_mark m = ldm_arena_mark(ctx);
        int64_t B = x->shape[0];
        double s = sig[i], sn = sig[i + 1];
        ldm_tensor *dn = ldm_sgm_guided_denoise(ctx, den, x, ldm__sgm_fill(ctx, B, sig[i]), o), *xn = dn;
        if (sn > 0.0) {
            double su = o->eta * sn * sqrt(fmax(s * s - sn * sn, 0.0)) / s;
            ldm_tensor *eps = ldm_scale(ctx, ldm_sub(ctx, x, dn), (float)(1.0 / s));
            xn = ldm_add(ctx, dn, ldm_scale(ctx, eps, (float)sqrt(sn * sn - su * su)));
            if (su > 0.0) xn = ldm_add(ctx, xn, ldm_scale(ctx, ldm__sgm_noise(ctx, o, i, x), (float)su));
        }
        if (!xn) break;
        x = ldm_arena_keep(ctx, m, xn);
        if (o->on_step) o->on_step(o->user, i, S);
    }
    ldm_set_grad_enabled(ctx, prev);
    return ctx->status ? NULL : x;
}

#endif /* LDM_DIFFUSION_IMPLEMENTATION_DONE */
#endif /* LDM_IMPLEMENTATION */
