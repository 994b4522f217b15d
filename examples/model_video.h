/* model_video.h - video super-resolution as an sgm DiffusionEngine (generative-models'
   sgm/models/diffusion.py) for the ldm driver (examples/model.h): a spatio-temporal DiT
   (ldm_vdit) behind sgm's Denoiser, StandardDiffusionLoss and samplers (ldm_diffusion.h
   section 5), a frozen AutoencoderKL first stage (2-D, or dims 3), and the low-resolution
   clip as a concatenated condition.

       target sgm.models.diffusion.VideoSREngine (aliases VideoSREngine, VideoSR)
       const ex_model_class *mc = &ex_video_sr_class;   (examples/main.c registers it)

   model.params, the sgm engine form (every *_config is {target, params} as sgm writes them;
   unknown keys and targets are errors with a did-you-mean):
     network_config         target VideoDiT (sgm.modules.diffusionmodules.video_dit.VideoDiT,
                            an ldm.h name), params: ldm_vdit's table (num_frames, height, width
                            are the LATENT sizes; in_channels = 2 x the latent channels)
     network_wrapper        sgm.modules.diffusionmodules.wrappers.OpenAIWrapper (the only one:
                            the condition is concatenated on channels)
     denoiser_config        ...denoiser.Denoiser {scaling_config} or DiscreteDenoiser
                            {scaling_config, num_idx, discretization_config, quantize_c_noise};
                            scalings ...denoiser_scaling.EDMScaling {sigma_data}, EpsScaling,
                            VScaling, VScalingWithEDMcNoise
     conditioner_config     sgm.modules.GeneralConditioner with no emb_models (accepted; the only
                            condition here is the LR latent, made by the engine)
     first_stage_config     sgm.models.autoencoder.AutoencoderKL or
                            ldm.models.autoencoder.AutoencoderKL {embed_dim, ddconfig,
                            ckpt_path, lossconfig: torch.nn.Identity}; frozen (requires_grad
                            off, eval) as sgm's _init_first_stage
     loss_fn_config         ...loss.StandardDiffusionLoss {sigma_sampler_config: EDMSampling
                            {p_mean, p_std} | DiscreteSampling {num_idx, discretization_config},
                            loss_weighting_config: EDMWeighting {sigma_data} | UnitWeighting |
                            VWeighting | EpsWeighting, loss_type l2|l1, offset_noise_level}
     sampler_single_config, sampler_multi_prompt_config, sampler_ddim_config (and sgm's
                            sampler_config = sampler_single_config): ...sampling.EulerEDMSampler
                            {num_steps, discretization_config, guider_config, s_churn, s_tmin,
                            s_tmax, s_noise, verbose} or ...sampling.DDIMSampler (ldm.h's, with
                            eta); guider ...guiders.IdentityGuider or VanillaCFG {scale} (the
                            unconditional condition is a zero LR latent); the multi-prompt
                            sampler's VanillaCFG scale may be a list: one scale per clip
                            (cycled), sgm's multi-prompt guidance
     scale_factor (1.0), latent_input (false), no_cond_log (false),
     en_and_decode_n_samples_a_time (0: all at once), lr_scale (4), lr_interpolation (bicubic),
     lora_train (false) with lora_rank, lora_alpha, lora_target_modules, lora_save_merged,
     not_trainable_prefixes ([]), log_keys ([]: every image key), input_key ("video"),
     lr_key ("lr_latent", latent_input only), ckpt_path, monitor, video_out_dir (test videos)

   Layout: the batch field input_key is [B, T*C, H, W] (video_io.h's datasets), read as
   B T C H W. The first stage sees the frames folded into its batch, [B*T, C, H, W] (2-D), or
   the clip as a volume [B, C, T, H, W] (dims 3); its latents come back as [B, Z, F, h, w] for
   the DiT (F = T, or T / f for dims 3). Encoding and decoding go en_and_decode_n_samples_a_time
   first-stage samples at a time (frames for 2-D, clips for dims 3); latents are the posterior
   MODE times scale_factor (sgm's DiagonalGaussianRegularizer would sample: the mode keeps the
   condition deterministic). latent_input: input_key holds latents [B, F*Z, h, w] and lr_key
   their LR-condition latents, only reordered and scaled.

   shared_step: the condition clip = every frame downsampled to floor(H / lr_scale) and upsampled
   back to H x W, both bicubic (torch F.interpolate(mode="bicubic", align_corners=False), as
   model_diffusion.h's lr_scale; lr_interpolation: bilinear selects torch's bilinear), encoded
   by the frozen first stage; loss = StandardDiffusionLoss(x latent, concat = condition latent),
   averaged over the batch: train/loss, val/loss.
   Training: AdamW (torch defaults, weight decay 0.01) over the DiT; not_trainable_prefixes
   (names as sgm's self.model.named_parameters(): "diffusion_model.blocks.0.", or without the
   "diffusion_model." part) are frozen first (disable_untrainable_params: no gradient, no
   optimizer state). lora_train: peft-style adapters on lora_target_modules of the DiT, the
   whole DiT frozen; model.safetensors keeps the base weights, <dir>/lora_adapters.safetensors
   the adapters (loaded back on resume), and with lora_save_merged <dir>/model_merged.safetensors
   the DiT with the adapters folded in (loadable without LoRA).
   Images (log_images): each clip as one strip of its frames left to right: inputs,
   lr_bicubic (the condition, unless no_cond_log), reconstructions, samples (single sampler),
   samples_multi_prompt, samples_ddim (when configured); log_keys limits the keys.
   test_step: samples with the single sampler; per clip psnr, ssim, psnr_bicubic, ssim_bicubic
   (frame means; data range 2 on [-1, 1]), psnr_recon (decode(encode(x)): the ceiling), and
   lpips, lpips_bicubic with LPIPS weights (lpips_path or $LDM_LPIPS_WEIGHTS; else empty); with video_out_dir, per clip frame folders + GIFs of
   the sample, the bicubic clip and the input, and frames.csv with the per-frame values. */
#ifndef EX_MODEL_VIDEO_H
#define EX_MODEL_VIDEO_H

#include "model.h"
#include "ldm_diffusion.h"
#include "ldm_vae.h"
#include "ldm_lpips.h"
#include "video_io.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define EX_VSR_KEYS(X)                                                                               \
    X(network_config, NODE, NULL, "the DiT: {target: VideoDiT, params: ldm_vdit's keys (latent sizes)}") \
    X(network_wrapper, STR, "sgm.modules.diffusionmodules.wrappers.OpenAIWrapper", "OpenAIWrapper: the condition is concatenated on channels") \
    X(denoiser_config, NODE, NULL, "{target: ...denoiser.Denoiser | DiscreteDenoiser, params: {scaling_config, ...}}") \
    X(conditioner_config, NODE, "", "sgm.modules.GeneralConditioner without emb_models (accepted)") \
    X(first_stage_config, NODE, NULL, "{target: AutoencoderKL, params: {embed_dim, ddconfig, ckpt_path}} (frozen)") \
    X(loss_fn_config, NODE, "", "...loss.StandardDiffusionLoss (default: EDMSampling, EDMWeighting, l2)") \
    X(sampler_config, NODE, "", "sgm's name for sampler_single_config")                         \
    X(sampler_single_config, NODE, "", "the sampler of samples and test (default EulerEDMSampler, 20 steps)") \
    X(sampler_multi_prompt_config, NODE, "", "a second sampler: per-clip VanillaCFG scales (samples_multi_prompt)") \
    X(sampler_ddim_config, NODE, "", "...sampling.DDIMSampler (samples_ddim)")                  \
    X(optimizer_config, NODE, "", "torch.optim.AdamW without params (the default)")            \
    X(scale_factor, FLOAT, "1.0", "latents = scale_factor * first-stage latents")               \
    X(latent_input, BOOL, "false", "input_key holds latents [B, F*Z, h, w]; lr_key the condition latents") \
    X(no_cond_log, BOOL, "false", "leave the condition out of log_images")                      \
    X(en_and_decode_n_samples_a_time, AT_LEAST(INT, 0), "0", "first-stage samples per pass (0: all)") \
    X(lr_scale, AT_LEAST(FLOAT, 1), "4", "the condition is the input downsampled by 1/lr_scale and upsampled back") \
    X(lr_interpolation, STR, "bicubic", "bicubic or bilinear (torch F.interpolate, align_corners=False)") \
    X(lora_train, BOOL, "false", "train LoRA adapters on the DiT only")                         \
    X(lora_rank, AT_LEAST(INT, 1), "4", "LoRA rank r")                                          \
    X(lora_alpha, FLOAT, "4.0", "LoRA alpha (scaling alpha / r)")                              \
    X(lora_target_modules, STR_LIST, "attn.qkv,attn.proj", "DiT linear layers that get adapters") \
    X(lora_save_merged, BOOL, "false", "also write model_merged.safetensors (adapters folded in)") \
    X(not_trainable_prefixes, STR_LIST, "", "DiT parameter name prefixes to freeze")           \
    X(log_keys, STR_LIST, "", "image keys log_images draws (empty: all)")                      \
    X(input_key, STR, "video", "the batch field of the clips [B, T*C, H, W]")                  \
    X(lr_key, STR, "lr_latent", "latent_input: the batch field of the condition latents")      \
    X(ckpt_path, STR, "", "initial weights (non-strict): model.diffusion_model.* and first_stage_model.*") \
    X(monitor, STR, "", "top-k metric (default val/loss)")                                      \
    X(use_ema, BOOL, "false", "sgm's EMA (not supported: must be false)")                       \
    X(video_out_dir, STR, "", "test: frame folders, GIFs and frames.csv written here")           \
    X(lpips_path, STR_LIST, "", "LPIPS weights for the test's lpips columns (one file, or VGG + heads; else $LDM_LPIPS_WEIGHTS)")
LDM_CONFIG_DECLARE(ex_vsr_cfg, EX_VSR_KEYS);
LDM_CONFIG_DEFINE(ex_vsr_cfg, EX_VSR_KEYS)

#define EX_VSR_FS_KEYS(X)                                                                            \
    X(embed_dim, AT_LEAST(INT, 1), NULL, "latent channels")                                        \
    X(ddconfig, NODE, NULL, "the Encoder/Decoder config")                                         \
    X(ckpt_path, STR, "", "the first stage's weights (its own checkpoint or a whole model's)")    \
    X(lossconfig, NODE, "", "torch.nn.Identity (accepted)")                                       \
    X(monitor, STR, "", "accepted")
LDM_CONFIG_DECLARE(ex_vsr_fs, EX_VSR_FS_KEYS);
LDM_CONFIG_DEFINE(ex_vsr_fs, EX_VSR_FS_KEYS)

typedef struct ex_vsr_sampler {
    int on, ddim;
    ldm_sgm_sampler_opts so;      /* num_steps, disc, churn, eta, guidance_scale */
    double scales[LDM_CONFIG_LIST_MAX];
    int n_scales;                 /* VanillaCFG scales (1: one for every clip); 0: IdentityGuider */
} ex_vsr_sampler;

typedef struct ex_vsr {
    ex_vsr_cfg p;
    ldm_vdit_config vc;
    ldm_vae_config fc;
    const char *first_ckpt;
    ldm_sgm_denoiser_config dc;
    ldm_sgm_loss_config lc;
    ex_vsr_sampler samp[3];       /* single, multi-prompt, ddim */
    ldm_data_interp interp;
    char prefixes[LDM_CONFIG_LIST_MAX][256];
    const char *prefix_ptr[LDM_CONFIG_LIST_MAX];
    int n_prefixes;
    ldm_vdit *net;
    ldm_vae *vae;
    ldm_sgm_denoiser den;
    int den_ok;
    ldm_nn_lora *lora;
    ldm_lpips *lp;                /* the test's LPIPS (NULL: no weights, the columns stay empty) */
} ex_vsr;

static const char *const ex_vsr_log_keys[] = {"loss"};
static const char *const ex_vsr_summary[] = {"val/loss"};
static const char *const ex_vsr_test_keys[] = {"psnr", "ssim", "psnr_bicubic", "ssim_bicubic", "psnr_recon", "lpips", "lpips_bicubic"};
#define EX_VSR_NT 7

static ex_vsr *ex__vsr(ex_model *m) { return (ex_vsr *)m->self; }
static ldm_result ex__vsr_fail(ex_model *m, const char *what, ldm_ctx *ctx) {
    m->what = what;
    if (!ldm_ctx_status(ctx)) ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory");
    return ldm_ctx_status(ctx);
}

/* ---- config: sgm {target, params} nodes ---- */
static const char *ex__vsr_file(const ldm_config_node *n) { return n && n->file ? n->file : "<config>"; }
/* Resolves node's target among names ("full|short", index = position) with a did-you-mean. */
static ldm_result ex__vsr_pick(ldm_config *cfg, const ldm_config_node *node, const char *const *names, int n, int *which,
                               const ldm_config_node **params) {
    ex_target_cfg tp;
    ldm_result r = ex_target_cfg_load(cfg, node, &tp);
    if (r) return r;
    ldm_config_registry *reg;
    if (ldm_config_registry_create(&reg)) return ldm_config_seterr(cfg, LDM_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n && !r; i++) {
        char full[256];
        const char *bar = strchr(names[i], '|');
        snprintf(full, sizeof full, "%.*s", (int)(bar - names[i]), names[i]);
        r = ldm_config_registry_add(reg, full, bar + 1, ex_config_ctor_name, (void *)(intptr_t)(i + 1));
    }
    const ldm_config_target *t = NULL;
    if (!r) r = ldm_config_registry_lookup(cfg, reg, ldm_config_find(node, "target"), &t);
    if (!r) *which = (int)(intptr_t)t->user - 1;
    ldm_config_registry_destroy(reg);
    *params = tp.params && tp.params->type != LDM_CONFIG_NULL ? tp.params : NULL;
    return r;
}
/* Validates params against a list of allowed keys (a did-you-mean on the rest). */
static ldm_result ex__vsr_keys(ldm_config *cfg, const ldm_config_node *params, const char *const *keys, int n) {
    ldm_config_field f[16];
    memset(f, 0, sizeof f);
    for (int i = 0; i < n && i < 15; i++) { f[i].name = keys[i]; f[i].kind = LDM_CONFIG_KIND_NODE; f[i].def = ""; f[i].help = ""; }
    return ldm_config_validate(cfg, params, f);
}
#define EX__VSR_SGM "sgm.modules.diffusionmodules."
static ldm_result ex__vsr_disc(ldm_config *cfg, const ldm_config_node *node, ldm_sgm_discretization *d) {
    static const char *const names[] = {EX__VSR_SGM "discretizer.EDMDiscretization|EDMDiscretization",
                                        EX__VSR_SGM "discretizer.LegacyDDPMDiscretization|LegacyDDPMDiscretization"};
    static const char *const k_edm[] = {"sigma_min", "sigma_max", "rho"}, *const k_ddpm[] = {"linear_start", "linear_end", "num_timesteps"};
    int w;
    const ldm_config_node *p;
    ldm_result r = ex__vsr_pick(cfg, node, names, 2, &w, &p);
    if (r) return r;
    *d = ldm_sgm_discretization_default(w ? LDM_SGM_DISC_LEGACY_DDPM : LDM_SGM_DISC_EDM);
    if ((r = ex__vsr_keys(cfg, p, w ? k_ddpm : k_edm, 3))) return r;
    if (!w) {
        if ((r = ldm_config_get_float(cfg, p, "sigma_min", d->sigma_min, &d->sigma_min)) || (r = ldm_config_get_float(cfg, p, "sigma_max", d->sigma_max, &d->sigma_max)) ||
            (r = ldm_config_get_float(cfg, p, "rho", d->rho, &d->rho)))
            return r;
        if (!(d->sigma_min > 0 && d->sigma_max > d->sigma_min && d->rho > 0))
            return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: EDMDiscretization needs 0 < sigma_min < sigma_max and rho > 0", ex__vsr_file(node), node->line);
    } else {
        if ((r = ldm_config_get_float(cfg, p, "linear_start", d->linear_start, &d->linear_start)) ||
            (r = ldm_config_get_float(cfg, p, "linear_end", d->linear_end, &d->linear_end)) ||
            (r = ldm_config_get_int(cfg, p, "num_timesteps", d->num_timesteps, &d->num_timesteps)))
            return r;
        if (!(d->linear_start > 0 && d->linear_end > d->linear_start && d->linear_end < 1 && d->num_timesteps >= 1))
            return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: LegacyDDPMDiscretization needs 0 < linear_start < linear_end < 1 and num_timesteps >= 1",
                                     ex__vsr_file(node), node->line);
    }
    return LDM_OK;
}
static ldm_result ex__vsr_denoiser(ldm_config *cfg, const ldm_config_node *node, ldm_sgm_denoiser_config *dc) {
    static const char *const names[] = {EX__VSR_SGM "denoiser.Denoiser|Denoiser", EX__VSR_SGM "denoiser.DiscreteDenoiser|DiscreteDenoiser"};
    static const char *const scal[] = {EX__VSR_SGM "denoiser_scaling.EDMScaling|EDMScaling", EX__VSR_SGM "denoiser_scaling.EpsScaling|EpsScaling",
                                       EX__VSR_SGM "denoiser_scaling.VScaling|VScaling",
                                       EX__VSR_SGM "denoiser_scaling.VScalingWithEDMcNoise|VScalingWithEDMcNoise"};
    static const char *const k_den[] = {"scaling_config"};
    static const char *const k_disc[] = {"scaling_config", "num_idx", "discretization_config", "do_append_zero", "quantize_c_noise", "flip"};
    static const char *const k_sd[] = {"sigma_data"};
    int w, s;
    const ldm_config_node *p, *sp;
    ldm_result r = ex__vsr_pick(cfg, node, names, 2, &w, &p);
    if (r || (r = ex__vsr_keys(cfg, p, w ? k_disc : k_den, w ? 6 : 1))) return r;
    const ldm_config_node *sc = ldm_config_find(p, "scaling_config");
    if (!sc) return ldm_config_seterr(cfg, LDM_ERR_NOT_FOUND, "%s:%d: denoiser_config.params needs scaling_config (e.g. target "
                                      EX__VSR_SGM "denoiser_scaling.EDMScaling)", ex__vsr_file(node), node->line);
    if ((r = ex__vsr_pick(cfg, sc, scal, 4, &s, &sp)) || (r = ex__vsr_keys(cfg, sp, k_sd, s == 0 ? 1 : 0))) return r;
    *dc = ldm_sgm_denoiser_config_default((ldm_sgm_scaling)s);
    if (s == 0 && (r = ldm_config_get_float(cfg, sp, "sigma_data", 0.5, &dc->sigma_data))) return r;
    if (!(dc->sigma_data > 0)) return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: sigma_data must be > 0", ex__vsr_file(sc), sc->line);
    dc->discrete = w;
    if (w) {
        int append_zero = 0, flip = 1;
        if ((r = ldm_config_get_int(cfg, p, "num_idx", 1000, &dc->num_idx)) || (r = ldm_config_get_bool(cfg, p, "quantize_c_noise", 1, &dc->quantize_c_noise)) ||
            (r = ldm_config_get_bool(cfg, p, "do_append_zero", 0, &append_zero)) || (r = ldm_config_get_bool(cfg, p, "flip", 1, &flip)))
            return r;
        if (append_zero || !flip)
            return ldm_config_seterr(cfg, LDM_ERR_UNSUPPORTED, "%s:%d: DiscreteDenoiser supports do_append_zero false and flip true only", ex__vsr_file(node), node->line);
        const ldm_config_node *dn = ldm_config_find(p, "discretization_config");
        if (!dn) return ldm_config_seterr(cfg, LDM_ERR_NOT_FOUND, "%s:%d: DiscreteDenoiser needs discretization_config", ex__vsr_file(node), node->line);
        if ((r = ex__vsr_disc(cfg, dn, &dc->disc))) return r;
        if (dc->num_idx < 1) return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: num_idx must be >= 1", ex__vsr_file(node), node->line);
    }
    return LDM_OK;
}
static ldm_result ex__vsr_loss(ldm_config *cfg, const ldm_config_node *node, ldm_sgm_loss_config *lc) {
    static const char *const names[] = {EX__VSR_SGM "loss.StandardDiffusionLoss|StandardDiffusionLoss"};
    static const char *const k_loss[] = {"sigma_sampler_config", "loss_weighting_config", "loss_type", "offset_noise_level", "batch2model_keys"};
    static const char *const ss[] = {EX__VSR_SGM "sigma_sampling.EDMSampling|EDMSampling", EX__VSR_SGM "sigma_sampling.DiscreteSampling|DiscreteSampling"};
    static const char *const ws[] = {EX__VSR_SGM "loss_weighting.UnitWeighting|UnitWeighting", EX__VSR_SGM "loss_weighting.EDMWeighting|EDMWeighting",
                                     EX__VSR_SGM "loss_weighting.VWeighting|VWeighting", EX__VSR_SGM "loss_weighting.EpsWeighting|EpsWeighting"};
    static const char *const k_edm[] = {"p_mean", "p_std"}, *const k_dis[] = {"num_idx", "discretization_config", "do_append_zero", "flip"};
    static const char *const k_sd[] = {"sigma_data"};
    *lc = ldm_sgm_loss_config_default();
    if (!node || node->type == LDM_CONFIG_NULL) return LDM_OK;
    int w;
    const ldm_config_node *p, *q;
    ldm_result r = ex__vsr_pick(cfg, node, names, 1, &w, &p);
    if (r || (r = ex__vsr_keys(cfg, p, k_loss, 5))) return r;
    const char *lt;
    if ((r = ldm_config_get_str(cfg, p, "loss_type", "l2", &lt)) || (r = ldm_config_get_float(cfg, p, "offset_noise_level", 0.0, &lc->offset_noise_level))) return r;
    if (!strcmp(lt, "l2")) lc->loss_type = LDM_LOSS_L2;
    else if (!strcmp(lt, "l1")) lc->loss_type = LDM_LOSS_L1;
    else return ldm_config_seterr(cfg, LDM_ERR_UNSUPPORTED, "%s:%d: loss_type '%s' is not supported (hint: l2 or l1; lpips is not)", ex__vsr_file(node), node->line, lt);
    const ldm_config_node *b2m = ldm_config_find(p, "batch2model_keys");
    if (b2m && b2m->type != LDM_CONFIG_NULL && b2m->n > 0)
        return ldm_config_seterr(cfg, LDM_ERR_UNSUPPORTED, "%s:%d: batch2model_keys is not supported (the network takes no extra batch inputs)", ex__vsr_file(b2m), b2m->line);
    const ldm_config_node *sn = ldm_config_find(p, "sigma_sampler_config");
    if (sn) {
        if ((r = ex__vsr_pick(cfg, sn, ss, 2, &w, &q)) || (r = ex__vsr_keys(cfg, q, w ? k_dis : k_edm, w ? 4 : 2))) return r;
        lc->sigma_sampling = w ? LDM_SGM_SIGMA_DISCRETE : LDM_SGM_SIGMA_EDM;
        if (!w) {
            if ((r = ldm_config_get_float(cfg, q, "p_mean", -1.2, &lc->p_mean)) || (r = ldm_config_get_float(cfg, q, "p_std", 1.2, &lc->p_std))) return r;
        } else {
            const ldm_config_node *dn = ldm_config_find(q, "discretization_config");
            if ((r = ldm_config_get_int(cfg, q, "num_idx", 1000, &lc->num_idx))) return r;
            if (!dn) return ldm_config_seterr(cfg, LDM_ERR_NOT_FOUND, "%s:%d: DiscreteSampling needs discretization_config", ex__vsr_file(sn), sn->line);
            if ((r = ex__vsr_disc(cfg, dn, &lc->disc))) return r;
            if (lc->num_idx < 1) return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: num_idx must be >= 1", ex__vsr_file(sn), sn->line);
        }
    }
    const ldm_config_node *wn = ldm_config_find(p, "loss_weighting_config");
    if (wn) {
        if ((r = ex__vsr_pick(cfg, wn, ws, 4, &w, &q)) || (r = ex__vsr_keys(cfg, q, k_sd, w == 1 ? 1 : 0))) return r;
        lc->weighting = (ldm_sgm_weighting)w;
        if (w == 1 && (r = ldm_config_get_float(cfg, q, "sigma_data", 0.5, &lc->sigma_data))) return r;
        if (!(lc->sigma_data > 0)) return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: sigma_data must be > 0", ex__vsr_file(wn), wn->line);
    }
    return LDM_OK;
}
static ldm_result ex__vsr_sampler(ldm_config *cfg, const ldm_config_node *node, ex_vsr_sampler *s, int force_ddim, int multi) {
    static const char *const names[] = {EX__VSR_SGM "sampling.EulerEDMSampler|EulerEDMSampler", EX__VSR_SGM "sampling.DDIMSampler|DDIMSampler"};
    static const char *const k_euler[] = {"num_steps", "discretization_config", "guider_config", "s_churn", "s_tmin", "s_tmax", "s_noise", "verbose"};
    static const char *const k_ddim[] = {"num_steps", "discretization_config", "guider_config", "eta", "verbose"};
    static const char *const gs[] = {EX__VSR_SGM "guiders.IdentityGuider|IdentityGuider", EX__VSR_SGM "guiders.VanillaCFG|VanillaCFG"};
    static const char *const k_cfg[] = {"scale", "dyn_thresh_config"};
    memset(s, 0, sizeof *s);
    s->so = ldm_sgm_sampler_opts_default();
    if (!node || node->type == LDM_CONFIG_NULL) return LDM_OK;
    int w, g;
    const ldm_config_node *p, *q;
    ldm_result r = ex__vsr_pick(cfg, node, names, 2, &w, &p);
    if (r || (r = ex__vsr_keys(cfg, p, w ? k_ddim : k_euler, w ? 5 : 8))) return r;
    if (force_ddim && !w)
        return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: sampler_ddim_config needs target " EX__VSR_SGM "sampling.DDIMSampler", ex__vsr_file(node), node->line);
    s->on = 1;
    s->ddim = w;
    double v;
    if ((r = ldm_config_get_int(cfg, p, "num_steps", 20, &s->so.num_steps))) return r;
    if (s->so.num_steps < 1) return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: num_steps must be >= 1", ex__vsr_file(node), node->line);
    const ldm_config_node *dn = ldm_config_find(p, "discretization_config");
    if (dn && (r = ex__vsr_disc(cfg, dn, &s->so.disc))) return r;
    if (!dn && w) s->so.disc = ldm_sgm_discretization_default(LDM_SGM_DISC_LEGACY_DDPM);
    if (w) { if ((r = ldm_config_get_float(cfg, p, "eta", 0.0, &s->so.eta))) return r; }
    else {
        if ((r = ldm_config_get_float(cfg, p, "s_churn", 0.0, &v))) return r;
        s->so.s_churn = (float)v;
        if ((r = ldm_config_get_float(cfg, p, "s_tmin", 0.0, &v))) return r;
        s->so.s_tmin = (float)v;
        if ((r = ldm_config_get_float(cfg, p, "s_tmax", INFINITY, &v))) return r;
        s->so.s_tmax = (float)v;
        if ((r = ldm_config_get_float(cfg, p, "s_noise", 1.0, &v))) return r;
        s->so.s_noise = (float)v;
    }
    const ldm_config_node *gn = ldm_config_find(p, "guider_config");
    if (!gn) return LDM_OK;
    if ((r = ex__vsr_pick(cfg, gn, gs, 2, &g, &q)) || (r = ex__vsr_keys(cfg, q, k_cfg, g ? 2 : 0))) return r;
    if (!g) return LDM_OK;
    const ldm_config_node *dt = ldm_config_find(q, "dyn_thresh_config");
    if (dt && dt->type != LDM_CONFIG_NULL) {
        const char *t = NULL;
        if ((r = ldm_config_get_str(cfg, dt, "target", "", &t))) return r;
        if (!strstr(t, "NoDynamicThresholding"))
            return ldm_config_seterr(cfg, LDM_ERR_UNSUPPORTED, "%s:%d: dyn_thresh_config '%s' is not supported (hint: NoDynamicThresholding)", ex__vsr_file(dt), dt->line, t);
    }
    const ldm_config_node *sc = ldm_config_find(q, "scale");
    if (sc && sc->type == LDM_CONFIG_LIST) {
        if (!multi) return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: a list of scales is for sampler_multi_prompt_config", ex__vsr_file(sc), sc->line);
        ldm_config_floats f;
        if ((r = ldm_config_get_float_list(cfg, q, "scale", NULL, &f))) return r;
        if (f.n < 1) return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: an empty list of scales", ex__vsr_file(sc), sc->line);
        for (int i = 0; i < f.n; i++) s->scales[i] = f.v[i];
        s->n_scales = f.n;
    } else {
        if ((r = ldm_config_get_float(cfg, q, "scale", 1.0, &v))) return r;
        s->scales[0] = v;
        s->n_scales = 1;
    }
    return LDM_OK;
}
/* sgm's target strings of optional configs that only need a check */
static ldm_result ex__vsr_check_target(ldm_config *cfg, const ldm_config_node *node, const char *const *names, int n, const char *what) {
    int w;
    const ldm_config_node *p;
    if (!node || node->type == LDM_CONFIG_NULL) return LDM_OK;
    ldm_result r = ex__vsr_pick(cfg, node, names, n, &w, &p);
    if (r) return r;
    if (p && p->n > 0) {
        const ldm_config_node *em = ldm_config_find(p, "emb_models");
        if (p->n == 1 && em && (em->type == LDM_CONFIG_NULL || em->n == 0)) return LDM_OK;
        return ldm_config_seterr(cfg, LDM_ERR_UNSUPPORTED, "%s:%d: %s takes no params here (hint: %s)", ex__vsr_file(p), p->line, what,
                                 em ? "no emb_models: the LR latent is the only condition" : "leave params out");
    }
    return LDM_OK;
}

/* ---- the first stage: B T C H W <-> latents [B, Z, F, h, w] ---- */
static int ex__vsr_fs_n(const ex_vsr *a, int64_t N) { int n = a->p.en_and_decode_n_samples_a_time; return n > 0 && n < N ? n : (int)N; }
/* x [B, T, C, H, W] -> scale_factor * mode [B, Z, F, h, w] (no grad: the first stage is frozen) */
static ldm_tensor *ex_vsr_encode(ldm_ctx *ctx, ex_vsr *a, ldm_tensor *x) {
    static const int p01[5] = {0, 2, 1, 3, 4};
    if (!x || ldm_ctx_status(ctx)) return NULL;
    int64_t B = x->shape[0], T = x->shape[1], C = x->shape[2], H = x->shape[3], W = x->shape[4];
    if (a->p.latent_input) return ldm_scale(ctx, ldm_permute(ctx, x, p01), (float)a->p.scale_factor);
    int prev = ldm_set_grad_enabled(ctx, 0);
    int dims3 = a->fc.dims == 3;
    ldm_tensor *f = dims3 ? ldm_permute(ctx, x, p01) : ldm_reshape(ctx, x, ldm_shape4(B * T, C, H, W));
    int64_t N = dims3 ? B : B * T, n = ex__vsr_fs_n(a, N), k = (N + n - 1) / n;
    ldm_tensor **parts = (ldm_tensor **)malloc(sizeof *parts * (size_t)k), *z = NULL;
    if (!parts) ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; parts && i < k && f && !ldm_ctx_status(ctx); i++) {
        ldm_vae_posterior q;
        int64_t len = N - i * n < n ? N - i * n : n;
        ldm_tensor *part = k == 1 ? f : ldm_slice(ctx, f, 0, i * n, len);
        parts[i] = part && !ldm_vae_encode(ctx, a->vae, part, &q) ? ldm_vae_posterior_mode(&q) : NULL;
    }
    if (parts && !ldm_ctx_status(ctx)) z = k == 1 ? parts[0] : ldm_concat(ctx, (int)k, parts, 0);
    free(parts);
    if (z && !dims3) z = ldm_permute(ctx, ldm_reshape(ctx, z, ldm_shape5(B, T, z->shape[1], z->shape[2], z->shape[3])), p01);
    z = z ? ldm_scale(ctx, z, (float)a->p.scale_factor) : NULL;
    ldm_set_grad_enabled(ctx, prev);
    return z;
}
/* z [B, Z, F, h, w] -> frames [B, T, C, H, W] */
static ldm_tensor *ex_vsr_decode(ldm_ctx *ctx, ex_vsr *a, ldm_tensor *z) {
    static const int p01[5] = {0, 2, 1, 3, 4};
    if (!z || ldm_ctx_status(ctx)) return NULL;
    int prev = ldm_set_grad_enabled(ctx, 0);
    int dims3 = a->fc.dims == 3;
    int64_t B = z->shape[0], Z = z->shape[1], F = z->shape[2];
    z = ldm_scale(ctx, z, (float)(1.0 / a->p.scale_factor));
    ldm_tensor *f = dims3 ? z : ldm_reshape(ctx, ldm_permute(ctx, z, p01), ldm_shape4(B * F, Z, z->shape[3], z->shape[4]));
    int64_t N = dims3 ? B : B * F, n = ex__vsr_fs_n(a, N), k = (N + n - 1) / n;
    ldm_tensor **parts = (ldm_tensor **)malloc(sizeof *parts * (size_t)k), *x = NULL;
    if (!parts) ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory");
    for (int64_t i = 0; parts && i < k && f && !ldm_ctx_status(ctx); i++) {
        int64_t len = N - i * n < n ? N - i * n : n;
        parts[i] = ldm_vae_decode(ctx, a->vae, k == 1 ? f : ldm_slice(ctx, f, 0, i * n, len));
    }
    if (parts && !ldm_ctx_status(ctx)) x = k == 1 ? parts[0] : ldm_concat(ctx, (int)k, parts, 0);
    free(parts);
    if (x) x = dims3 ? ldm_permute(ctx, x, p01) : ldm_reshape(ctx, x, ldm_shape5(B, F, x->shape[1], x->shape[2], x->shape[3]));
    ldm_set_grad_enabled(ctx, prev);
    return x;
}

/* The batch's clips as [B, T, C, H, W] (the first n; 0: all), on the device. */
static ldm_tensor *ex__vsr_field(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, const char *key, int n, int latent) {
    ex_vsr *a = ex__vsr(m);
    ldm_tensor x = ldm_data_batch_tensor(b, key);
    int C = latent ? a->vc.out_channels : a->fc.in_channels;
    if (!x.data) {
        ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "the batch has no field '%s' (hint: model.params.%s names the dataset's field, e.g. \"video\" "
                       "of ldm.data.video.FrameFolders)", key, latent == 2 ? "lr_key" : "input_key");
        m->what = "VideoSR input";
        return NULL;
    }
    if (x.ndim != 4 || x.shape[1] % C) {
        char s[64];
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "batch field '%s' is %s; expected [B, T*%d, H, W] (frames of %d channels, frame-major)", key,
                       ldm_shape_str(&x, s, sizeof s), C, C);
        m->what = "VideoSR input";
        return NULL;
    }
    int64_t B = n > 0 && n < x.shape[0] ? n : x.shape[0];
    return ldm_from_host(ctx, ldm_shape5(B, x.shape[1] / C, C, x.shape[2], x.shape[3]), x.data);
}
/* every frame down by 1/lr_scale and back up (host, float planes) */
static ldm_result ex_vsr_degrade(const float *x, float *out, int64_t frames, int C, int H, int W, double lr_scale, ldm_data_interp mode) {
    int h = (int)floor(H / lr_scale), w = (int)floor(W / lr_scale);
    if (h < 1 || w < 1) return LDM_ERR_INVALID;
    float *lo = (float *)malloc(sizeof(float) * (size_t)C * h * w);
    ldm_result r = lo ? LDM_OK : LDM_ERR_NOMEM;
    for (int64_t i = 0; i < frames && !r; i++) {
        r = ldm_data_resize(lo, h, w, x + (size_t)i * C * H * W, C, H, W, mode);
        if (!r) r = ldm_data_resize(out + (size_t)i * C * H * W, H, W, lo, C, h, w, mode);
    }
    free(lo);
    return r;
}
static ldm_tensor *ex__vsr_lr_pixels(ex_model *m, ldm_ctx *ctx, ldm_tensor *x) {
    ex_vsr *a = ex__vsr(m);
    int64_t n = x->numel;
    float *h = (float *)malloc(sizeof(float) * (size_t)n * 2);
    ldm_result r = h ? ldm_to_host(ctx, x, h) : LDM_ERR_NOMEM;
    if (!r) r = ex_vsr_degrade(h, h + n, x->shape[0] * x->shape[1], (int)x->shape[2], (int)x->shape[3], (int)x->shape[4], a->p.lr_scale, a->interp);
    ldm_tensor *t = r ? NULL : ldm_from_host(ctx, ldm_shape_of(x), h + n);
    free(h);
    if (r) {
        ldm_ctx_seterr(ctx, r, "lr_scale %g: degrading %lldx%lld frames failed (hint: lr_scale <= the frame size)", a->p.lr_scale, (long long)x->shape[4], (long long)x->shape[3]);
        m->what = "VideoSR condition";
    }
    return t;
}
/* the latents of the first n clips and their condition latents; lrpix (may be NULL) gets the
   condition clip (pixels; NULL under latent_input) */
static ldm_result ex__vsr_inputs(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, int n, ldm_tensor **z, ldm_tensor **c, ldm_tensor **x,
                                 ldm_tensor **lrpix) {
    ex_vsr *a = ex__vsr(m);
    *z = *c = NULL;
    if (x) *x = NULL;
    if (lrpix) *lrpix = NULL;
    ldm_tensor *xi = ex__vsr_field(m, ctx, b, a->p.input_key, n, a->p.latent_input);
    if (!xi) return ldm_ctx_status(ctx);
    ldm_tensor *ci = a->p.latent_input ? ex__vsr_field(m, ctx, b, a->p.lr_key, n, 2) : ex__vsr_lr_pixels(m, ctx, xi);
    if (!ci) return ldm_ctx_status(ctx);
    if (a->p.latent_input && ci->numel != xi->numel) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "latent_input: field '%s' (%lld values) and '%s' (%lld values) differ in size", a->p.input_key,
                       (long long)xi->numel, a->p.lr_key, (long long)ci->numel);
        m->what = "VideoSR input";
        return LDM_ERR_INVALID;
    }
    *z = ex_vsr_encode(ctx, a, xi);
    *c = ex_vsr_encode(ctx, a, ci);
    if (!*z || !*c) return ex__vsr_fail(m, "first stage (encode)", ctx);
    if (x) *x = xi;
    if (lrpix && !a->p.latent_input) *lrpix = ci;
    ldm_vdit_config *vc = &a->vc;
    if ((*z)->shape[1] + (*c)->shape[1] != vc->in_channels || (*z)->shape[1] != vc->out_channels || (*z)->shape[2] != vc->num_frames ||
        (*z)->shape[3] != vc->height || (*z)->shape[4] != vc->width) {
        char s[64];
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "the latents are %s but network_config.params expects [B, %d, %d, %d, %d] with in_channels %d "
                       "(hint: num_frames, height, width are the latent sizes: frames T%s, H/f, W/f; in_channels = 2 x embed_dim)",
                       ldm_shape_str(*z, s, sizeof s), vc->out_channels, vc->num_frames, vc->height, vc->width, vc->in_channels,
                       a->fc.dims == 3 ? "/f" : "");
        m->what = "VideoSR input";
        return LDM_ERR_INVALID;
    }
    return LDM_OK;
}

/* ---- setup and optimizers ---- */
static ldm_result ex__vsr_load_all(ex_model *m, ldm_ctx *ctx, const char *path, int strict) {
    ex_vsr *a = ex__vsr(m);
    ldm_nn_load_report rep;
    ldm_nn_load_opts o;
    memset(&o, 0, sizeof o);
    memset(&rep, 0, sizeof rep);
    o.strict = strict;
    o.prefix_strip = "model.diffusion_model.";
    o.report = &rep;
    ldm_result r = ldm_nn_load(ctx, ldm_vdit_params(a->net), path, &o);
    int missing = rep.n_missing;
    ldm_nn_load_report_free(&rep);
    if (r) return r;
    o.prefix_strip = "first_stage_model.";
    memset(&rep, 0, sizeof rep);
    r = ldm_nn_load(ctx, a->vae->P, path, &o);
    printf("Restored from %s (DiT: %d missing; first stage: %d loaded, %d missing)\n", path, missing, rep.n_loaded, rep.n_missing);
    ldm_nn_load_report_free(&rep);
    return r;
}
static void ex__vsr_lora_path(const char *model_path, const char *file, char *out, size_t n) {
    const char *slash = model_path ? strrchr(model_path, '/') : NULL;
    if (slash) snprintf(out, n, "%.*s/%s", (int)(slash - model_path), model_path, file);
    else snprintf(out, n, "%s", file);
}
static ldm_result ex__vsr_setup(ex_model *m, ldm_ctx *ctx, const char *resume_file) {
    ex_vsr *a = ex__vsr(m);
    if (ldm_vdit_create(ctx, &a->net, &a->vc)) return ex__vsr_fail(m, "network_config", ctx);
    if (ldm_vae_create(ctx, &a->vae, &a->fc)) return ex__vsr_fail(m, "first_stage_config", ctx);
    if (ldm_sgm_denoiser_init(ctx, &a->den, &a->dc, ldm_vdit_denoiser(a->net))) return ex__vsr_fail(m, "denoiser_config", ctx);
    a->den_ok = 1;
    if (!resume_file && a->first_ckpt[0]) {
        ldm_nn_load_report rep;
        memset(&rep, 0, sizeof rep);
        if (ldm_vae_load_ex(ctx, a->vae, a->first_ckpt, 0, &rep)) return ex__vsr_fail(m, "model.params.first_stage_config.params.ckpt_path", ctx);
        printf("First stage restored from %s (%d tensors; %d missing)\n", a->first_ckpt, rep.n_loaded, rep.n_missing);
        int miss = rep.n_missing;
        ldm_nn_load_report_free(&rep);
        if (miss) {
            ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "%s: the first stage's weights are incomplete (%d missing; hint: an autoencoder run's "
                           "checkpoints/last.ckpt/model.safetensors)", a->first_ckpt, miss);
            return ex__vsr_fail(m, "model.params.first_stage_config.params.ckpt_path", ctx);
        }
    } else if (!resume_file && !a->p.ckpt_path[0] && !a->p.latent_input)
        printf("warning: no first_stage_config.params.ckpt_path: the first stage keeps its random initial weights\n");
    if (!resume_file && a->p.ckpt_path[0] && ex__vsr_load_all(m, ctx, a->p.ckpt_path, 0)) return ex__vsr_fail(m, "model.params.ckpt_path", ctx);
    /* _init_first_stage: frozen for good, eval */
    if (ldm_nn_params_freeze(ctx, a->vae->P)) return ex__vsr_fail(m, "first stage", ctx);
    ldm_vae_set_training(a->vae, 0);
    int64_t left = 0;
    /* the message names the prefix and an example name (diffusion_model. is stripped above) */
    if (a->n_prefixes && ldm_nn_disable_untrainable_params(ldm_vdit_params(a->net), a->n_prefixes, a->prefix_ptr, &left))
        return ex__vsr_fail(m, "model.params.not_trainable_prefixes", ctx);
    if (a->n_prefixes) printf("not_trainable_prefixes: %lld trainable DiT elements left\n", (long long)left);
    if (a->p.lora_train) {
        ldm_nn_lora_config lc;
        memset(&lc, 0, sizeof lc);
        const char *tg[LDM_CONFIG_LIST_MAX];
        for (int i = 0; i < a->p.lora_target_modules.n; i++) tg[i] = a->p.lora_target_modules.v[i];
        lc.r = a->p.lora_rank; lc.alpha = (float)a->p.lora_alpha; lc.n_targets = a->p.lora_target_modules.n; lc.targets = tg;
        if (ldm_nn_lora_create(ctx, &a->lora, ldm_vdit_params(a->net), &lc)) return ex__vsr_fail(m, "model.params.lora_target_modules", ctx);
        printf("LoRA: %d adapted layers, rank %d, alpha %g\n", ldm_nn_lora_count(a->lora), lc.r, (double)lc.alpha);
        if (!resume_file && !a->p.ckpt_path[0])
            printf("warning: lora_train on a freshly initialised DiT: its zero-initialised final layer is frozen with the rest, so the "
                   "adapters get no gradient (hint: model.params.ckpt_path of a trained VideoSREngine)\n");
    }
    {   /* LPIPS for the test: lpips_path, else $LDM_LPIPS_WEIGHTS (comma-separated) */
        char paths[2][1024];
        int np = 0;
        const char *env = getenv("LDM_LPIPS_WEIGHTS");
        for (int i = 0; i < a->p.lpips_path.n && i < 2; i++) snprintf(paths[np++], sizeof paths[0], "%s", a->p.lpips_path.v[i]);
        while (!a->p.lpips_path.n && env && *env && np < 2) {
            const char *c = strchr(env, ',');
            size_t l = c ? (size_t)(c - env) : strlen(env);
            if (l >= sizeof paths[0]) l = sizeof paths[0] - 1;
            memcpy(paths[np], env, l);
            paths[np][l] = 0;
            if (l) np++;
            env = c ? c + 1 : NULL;
        }
        if (np && (ldm_lpips_create(ctx, &a->lp, NULL) || ldm_lpips_load(ctx, a->lp, paths[0], np > 1 ? paths[1] : NULL)))
            return ex__vsr_fail(m, a->p.lpips_path.n ? "model.params.lpips_path" : "$LDM_LPIPS_WEIGHTS", ctx);
        if (!np) printf("VideoSR test: no LPIPS weights (model.params.lpips_path or $LDM_LPIPS_WEIGHTS): the lpips columns stay empty\n");
    }
    int n = 0;
    m->params[n].name = "model"; m->params[n++].P = ldm_vdit_params(a->net);
    if (a->lora) { m->params[n].name = "lora"; m->params[n++].P = ldm_nn_lora_params(a->lora); }
    m->n_params = n;
    fflush(stdout);
    return LDM_OK;
}
static ldm_result ex__vsr_optimizers(ex_model *m, ldm_ctx *ctx, double lr) {
    ex_vsr *a = ex__vsr(m);
    ldm_nn_optim_config oc = ldm_nn_optim_defaults(LDM_OPTIM_ADAMW, lr);
    memset(m->optim, 0, sizeof m->optim[0]);
    ex_optim *o = &m->optim[0];
    o->name = "loss";
    o->loss_key = "train/loss";
    if (ldm_nn_optim_create(ctx, &o->opt, a->lora ? ldm_nn_lora_params(a->lora) : ldm_vdit_params(a->net), &oc, 0, NULL)) return ex__vsr_fail(m, "optimizer", ctx);
    m->n_optim = 1;
    return LDM_OK;
}
static void ex__vsr_set_training(ex_model *m, int on) {
    ex_vsr *a = ex__vsr(m);
    if (a->lora) ldm_nn_lora_set_training(a->lora, on);   /* the first stage stays in eval */
}

/* ---- steps ---- */
static ldm_tensor *ex__vsr_loss_of(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b) {
    ex_vsr *a = ex__vsr(m);
    ldm_tensor *z, *c;
    if (ex__vsr_inputs(m, ctx, b, 0, &z, &c, NULL, NULL)) return NULL;
    ldm_cond cond;
    memset(&cond, 0, sizeof cond);
    cond.concat = c;
    ldm_tensor *l = ldm_sgm_loss(ctx, &a->lc, &a->den, z, &cond, NULL, NULL, NULL, NULL);
    l = l ? ldm_mean_all(ctx, l) : NULL;
    if (!l) ex__vsr_fail(m, "loss_fn", ctx);
    return l;
}
static ldm_tensor *ex__vsr_training_step(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, int64_t step, int opt_idx, ex_log *log) {
    (void)step; (void)opt_idx;
    m->what = "training";
    ldm_tensor *l = ex__vsr_loss_of(m, ctx, b);
    float v;
    if (!l || ldm_to_host(ctx, l, &v)) return NULL;
    ex_log_put(log, "train/loss", (double)v);
    return l;
}
static ldm_result ex__vsr_validation_step(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, int64_t step, ex_log *log) {
    (void)step;
    ldm_tensor *l = ex__vsr_loss_of(m, ctx, b);
    float v;
    if (!l || ldm_to_host(ctx, l, &v)) return ex__vsr_fail(m, "validation", ctx);
    ex_log_put(log, "val/loss", (double)v);
    return LDM_OK;
}

/* Samples with sampler k (0 single, 1 multi-prompt, 2 ddim) for condition latents c. */
static ldm_tensor *ex_vsr_sample(ldm_ctx *ctx, ex_vsr *a, ldm_tensor *c, int k) {
    ex_vsr_sampler *s = &a->samp[k];
    ldm_sgm_sampler_opts so = s->so;
    ldm_cond kc, ku;
    memset(&kc, 0, sizeof kc);
    memset(&ku, 0, sizeof ku);
    kc.concat = c;
    so.cond = &kc;
    int64_t B = c->shape[0];
    float *gs = NULL;
    if (s->n_scales) {
        ku.concat = ldm_zeros(ctx, ldm_shape_of(c));   /* sgm's force_uc_zero_embeddings */
        so.uncond = &ku;
        so.guidance_scale = (float)s->scales[0];
        if (s->n_scales > 1 || k == 1) {
            gs = (float *)malloc(sizeof(float) * (size_t)B);
            if (!gs) { ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory"); return NULL; }
            for (int64_t i = 0; i < B; i++) gs[i] = (float)s->scales[i % s->n_scales];
            so.guidance_scales = gs;
        }
    }
    ldm_shape sh = ldm_shape5(B, a->vc.out_channels, a->vc.num_frames, a->vc.height, a->vc.width);
    int prev = ldm_set_grad_enabled(ctx, 0);
    ldm_tensor *r = ldm_randn(ctx, sh);
    ldm_tensor *z = s->ddim ? ldm_sgm_ddim_sample(ctx, &a->den, r, &so) : ldm_sgm_euler_edm_sample(ctx, &a->den, r, &so);
    ldm_set_grad_enabled(ctx, prev);
    free(gs);
    return z;
}
/* [B, T, C, H, W] -> strips [B, C, H, T*W] (frames left to right) */
static ldm_tensor *ex_vsr_strip(ldm_ctx *ctx, ldm_tensor *v) {
    static const int p[5] = {0, 2, 3, 1, 4};
    if (!v) return NULL;
    int64_t B = v->shape[0], T = v->shape[1], C = v->shape[2], H = v->shape[3], W = v->shape[4];
    return ldm_reshape(ctx, ldm_permute(ctx, v, p), ldm_shape4(B, C, H, T * W));
}
static int ex__vsr_want(const ex_vsr *a, const char *key) {
    if (!a->p.log_keys.n) return 1;
    for (int i = 0; i < a->p.log_keys.n; i++) if (!strcmp(a->p.log_keys.v[i], key)) return 1;
    return 0;
}
static ldm_result ex__vsr_log_images(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, int max_images, ex_images *out) {
    ex_vsr *a = ex__vsr(m);
    static const char *const skey[3] = {"samples", "samples_multi_prompt", "samples_ddim"};
    int N = max_images < b->size ? max_images : b->size;
    ldm_tensor *z, *c, *x, *lr;
    if (ex__vsr_inputs(m, ctx, b, N, &z, &c, &x, &lr)) return ldm_ctx_status(ctx);
    out->n = 0;
    if (ex__vsr_want(a, "inputs")) {
        out->key[out->n] = "inputs";
        out->t[out->n++] = ex_vsr_strip(ctx, a->p.latent_input ? ex_vsr_decode(ctx, a, z) : x);
    }
    if (lr && !a->p.no_cond_log && ex__vsr_want(a, "lr_bicubic")) { out->key[out->n] = "lr_bicubic"; out->t[out->n++] = ex_vsr_strip(ctx, lr); }
    if (!a->p.latent_input && ex__vsr_want(a, "reconstructions")) { out->key[out->n] = "reconstructions"; out->t[out->n++] = ex_vsr_strip(ctx, ex_vsr_decode(ctx, a, z)); }
    for (int k = 0; k < 3; k++)
        if (a->samp[k].on && ex__vsr_want(a, skey[k])) {
            out->key[out->n] = skey[k];
            out->t[out->n++] = ex_vsr_strip(ctx, ex_vsr_decode(ctx, a, ex_vsr_sample(ctx, a, c, k)));
        }
    for (int i = 0; i < out->n; i++) if (!out->t[i]) return ex__vsr_fail(m, "log_images", ctx);
    return LDM_OK;
}

/* psnr/ssim (and lpips when lp, else NaN) of every frame: a, b [B, T, C, H, W] -> out[B*T] each */
static ldm_result ex__vsr_frame_metrics(ldm_ctx *ctx, ldm_tensor *a, ldm_tensor *b, double *psnr, double *ssim, ldm_lpips *lp, double *lpips) {
    int64_t BT = a->shape[0] * a->shape[1];
    ldm_shape s = ldm_shape4(BT, a->shape[2], a->shape[3], a->shape[4]);
    ldm_tensor *a4 = ldm_reshape(ctx, a, s), *b4 = ldm_reshape(ctx, b, s);
    if (!a4 || !b4) return ldm_ctx_status(ctx);
    ldm_result r = ldm_metric_psnr(ctx, a4, b4, 2.0, psnr);
    if (!r && ssim) r = ldm_metric_ssim(ctx, a4, b4, 2.0, ssim);
    if (!r && lpips && lp) r = ldm_metric_lpips(ctx, lp, a4, b4, lpips);
    else if (lpips) for (int64_t i = 0; i < BT; i++) lpips[i] = NAN;
    return r;
}
static ldm_result ex__vsr_write_clip(const char *dir, const char *name, long long idx, ldm_ctx *ctx, ldm_tensor *v, int64_t j) {
    int64_t T = v->shape[1], C = v->shape[2], H = v->shape[3], W = v->shape[4], per = T * C * H * W;
    float *h = (float *)malloc(sizeof(float) * (size_t)v->numel);
    char path[1024], err[512];
    if (!h) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory");
    ldm_result r = ldm_to_host(ctx, v, h);
    snprintf(path, sizeof path, "%s/%06lld_%s", dir, idx, name);
    if (!r && C != 3) r = ldm_ctx_seterr(ctx, LDM_ERR_UNSUPPORTED, "video_out_dir: frames of %lld channels (RGB only)", (long long)C);
    if (!r && ex_video_write(path, h + j * per, (int)T, (int)H, (int)W, err, sizeof err)) r = ldm_ctx_seterr(ctx, LDM_ERR_IO, "%s", err);
    free(h);
    return r;
}
static ldm_result ex__vsr_test_step(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, double *values, ex_images *images) {
    ex_vsr *a = ex__vsr(m);
    m->what = "test";
    ldm_tensor *z, *c, *x, *lr;
    if (ex__vsr_inputs(m, ctx, b, 0, &z, &c, &x, &lr)) return ldm_ctx_status(ctx);
    ldm_tensor *s = ex_vsr_decode(ctx, a, ex_vsr_sample(ctx, a, c, 0));
    s = s ? ldm_clamp(ctx, s, -1.0f, 1.0f) : NULL;
    if (!s) return ex__vsr_fail(m, "test (sampling)", ctx);
    if (a->p.latent_input) { x = ex_vsr_decode(ctx, a, z); lr = ex_vsr_decode(ctx, a, c); }
    ldm_tensor *rec = x ? ex_vsr_decode(ctx, a, z) : NULL;   /* the first stage's ceiling */
    rec = rec ? ldm_clamp(ctx, rec, -1.0f, 1.0f) : NULL;
    if (!x || !lr || !rec) return ex__vsr_fail(m, "test", ctx);
    int64_t B = x->shape[0], T = x->shape[1];
    /* per frame, in test-key order: psnr ssim psnr_bicubic ssim_bicubic psnr_recon lpips lpips_bicubic */
    const int64_t BT = B * T;
    double *fm = (double *)malloc(sizeof(double) * (size_t)(EX_VSR_NT * BT));
    if (!fm) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory");
    ldm_result r = ex__vsr_frame_metrics(ctx, s, x, fm, fm + BT, a->lp, fm + 5 * BT);
    if (!r) r = ex__vsr_frame_metrics(ctx, lr, x, fm + 2 * BT, fm + 3 * BT, a->lp, fm + 6 * BT);
    if (!r) r = ex__vsr_frame_metrics(ctx, rec, x, fm + 4 * BT, NULL, NULL, NULL);
    for (int64_t j = 0; j < B && !r; j++)
        for (int k = 0; k < EX_VSR_NT; k++) {
            double acc = 0;
            for (int64_t t = 0; t < T; t++) acc += fm[k * B * T + j * T + t];
            values[j * EX_VSR_NT + k] = acc / (double)T;
        }
    if (!r && a->p.video_out_dir[0]) {
        char path[1024];
        mkdir(a->p.video_out_dir, 0777);
        snprintf(path, sizeof path, "%s/frames.csv", a->p.video_out_dir);
        struct stat st;
        int fresh = stat(path, &st) != 0;
        FILE *f = fopen(path, "a");
        if (!f) r = ldm_ctx_seterr(ctx, LDM_ERR_IO, "%s: cannot write (hint: video_out_dir must be a writable folder)", path);
        if (f && fresh) fprintf(f, "clip,frame,psnr,ssim,psnr_bicubic,ssim_bicubic,psnr_recon,lpips,lpips_bicubic\n");
        for (int64_t j = 0; f && j < B && !r; j++) {
            long long idx = b->index ? (long long)b->index[j] : (long long)j;
            for (int64_t t = 0; t < T; t++) {
                fprintf(f, "%lld,%lld", idx, (long long)t);
                for (int k = 0; k < EX_VSR_NT; k++) {
                    double v = fm[k * BT + j * T + t];
                    if (v == v) fprintf(f, ",%.6f", v);
                    else fputc(',', f);   /* not measured (no LPIPS weights) */
                }
                fputc('\n', f);
            }
            if ((r = ex__vsr_write_clip(a->p.video_out_dir, "sample", idx, ctx, s, j)) || (r = ex__vsr_write_clip(a->p.video_out_dir, "bicubic", idx, ctx, lr, j)) ||
                (r = ex__vsr_write_clip(a->p.video_out_dir, "input", idx, ctx, x, j)))
                break;
        }
        if (f) fclose(f);
    }
    free(fm);
    if (r) return ex__vsr_fail(m, "test", ctx);
    images->n = 0;
    images->key[images->n] = "inputs"; images->t[images->n++] = ex_vsr_strip(ctx, x);
    images->key[images->n] = "bicubic"; images->t[images->n++] = ex_vsr_strip(ctx, lr);
    images->key[images->n] = "samples"; images->t[images->n++] = ex_vsr_strip(ctx, s);
    for (int i = 0; i < images->n; i++) if (!images->t[i]) return ex__vsr_fail(m, "test", ctx);
    return LDM_OK;
}

/* ---- checkpoints ---- */
static ldm_result ex__vsr_save(ex_model *m, ldm_ctx *ctx, const char *path, int n_meta, const char *const *keys, const char *const *vals) {
    ex_vsr *a = ex__vsr(m);
    const ldm_nn_params *regs[2] = {ldm_vdit_params(a->net), a->vae->P};
    const char *const pre[2] = {"model.diffusion_model.", "first_stage_model."};
    if (ex_state_dict_save(ctx, path, 2, regs, pre, n_meta, keys, vals)) return ex__vsr_fail(m, "checkpoint", ctx);
    if (!a->lora) return LDM_OK;
    char lp[1024];
    ex__vsr_lora_path(path, "lora_adapters.safetensors", lp, sizeof lp);
    if (ldm_nn_lora_save(ctx, a->lora, lp)) return ex__vsr_fail(m, "checkpoint (LoRA adapters)", ctx);
    if (!a->p.lora_save_merged) return LDM_OK;
    /* fold, write, unfold; then the base weights back from the file just written (bitwise) */
    ex__vsr_lora_path(path, "model_merged.safetensors", lp, sizeof lp);
    ldm_nn_load_opts o;
    memset(&o, 0, sizeof o);
    o.strict = 1;
    o.prefix_strip = "model.diffusion_model.";
    if (ldm_nn_lora_merge(ctx, a->lora) || ex_state_dict_save(ctx, lp, 2, regs, pre, n_meta, keys, vals) || ldm_nn_lora_unmerge(ctx, a->lora) ||
        ldm_nn_load(ctx, ldm_vdit_params(a->net), path, &o))
        return ex__vsr_fail(m, "checkpoint (merged LoRA)", ctx);
    return LDM_OK;
}
static ldm_result ex__vsr_load(ex_model *m, ldm_ctx *ctx, const char *path) {
    ex_vsr *a = ex__vsr(m);
    if (ex__vsr_load_all(m, ctx, path, 1)) return ex__vsr_fail(m, "resume", ctx);
    if (a->lora) {
        char lp[1024];
        ex__vsr_lora_path(path, "lora_adapters.safetensors", lp, sizeof lp);
        if (ldm_nn_lora_load(ctx, a->lora, lp)) return ex__vsr_fail(m, "resume (LoRA adapters)", ctx);
    }
    return LDM_OK;
}
static void ex__vsr_destroy(ex_model *m) {
    if (!m) return;
    ex_vsr *a = ex__vsr(m);
    for (int i = 0; i < m->n_optim; i++) ldm_nn_optim_destroy(m->optim[i].opt);
    if (a) {
        if (a->lora) ldm_nn_lora_destroy(a->lora);
        if (a->lp) ldm_lpips_destroy(a->lp);
        if (a->den_ok) ldm_sgm_denoiser_free(&a->den);
        if (a->net) ldm_vdit_destroy(a->net);
        if (a->vae) ldm_vae_destroy(a->vae);
        free(a);
    }
    free(m);
}

/* ---- the constructor: reads and checks model.params ---- */
static ldm_result ex__vsr_read(ldm_config *cfg, const ldm_config_node *params, ex_vsr *a) {
    static const char *const nets[] = {EX__VSR_SGM "video_dit.VideoDiT|VideoDiT,ldm.modules.video_dit.VideoDiT"};
    static const char *const conds[] = {"sgm.modules.GeneralConditioner|GeneralConditioner,sgm.modules.encoders.modules.GeneralConditioner"};
    static const char *const firsts[] = {"sgm.models.autoencoder.AutoencoderKL|ldm.models.autoencoder.AutoencoderKL,AutoencoderKL"};
    static const char *const ident[] = {"torch.nn.Identity|Identity"};
    static const char *const opts[] = {"torch.optim.AdamW|AdamW"};
    const char *file = ex__vsr_file(params);
    int line = params ? params->line : 0, w;
    const ldm_config_node *p;
    ldm_result r = ex_vsr_cfg_load(cfg, params, &a->p);
    if (r) return r;
    if ((r = ex__vsr_pick(cfg, a->p.network_config, nets, 1, &w, &p)) || (r = ldm_vdit_config_read(cfg, p, &a->vc))) return r;
    {   /* network_wrapper is a plain target string in sgm */
        ldm_config_registry *reg;
        const ldm_config_target *t;
        if (ldm_config_registry_create(&reg)) return ldm_config_seterr(cfg, LDM_ERR_NOMEM, "out of memory");
        r = ldm_config_registry_add(reg, EX__VSR_SGM "wrappers.OpenAIWrapper", "OpenAIWrapper", ex_config_ctor_name, NULL);
        const ldm_config_node *wn = ldm_config_find(params, "network_wrapper");
        if (!r && wn) r = ldm_config_registry_lookup(cfg, reg, wn, &t);
        ldm_config_registry_destroy(reg);
        if (r) return r;
    }
    if ((r = ex__vsr_denoiser(cfg, a->p.denoiser_config, &a->dc))) return r;
    if ((r = ex__vsr_check_target(cfg, a->p.conditioner_config, conds, 1, "conditioner_config"))) return r;
    if ((r = ex__vsr_check_target(cfg, a->p.optimizer_config, opts, 1, "optimizer_config"))) return r;
    if ((r = ex__vsr_pick(cfg, a->p.first_stage_config, firsts, 1, &w, &p))) return r;
    ex_vsr_fs fs;
    if ((r = ex_vsr_fs_load(cfg, p, &fs)) || (r = ex__vsr_check_target(cfg, fs.lossconfig, ident, 1, "first_stage_config.params.lossconfig")) ||
        (r = ldm_vae_config_read(cfg, p, &a->fc)))
        return r;
    a->first_ckpt = fs.ckpt_path;
    if ((r = ex__vsr_loss(cfg, a->p.loss_fn_config, &a->lc))) return r;
    const ldm_config_node *single = a->p.sampler_single_config;
    if (a->p.sampler_config && a->p.sampler_config->type != LDM_CONFIG_NULL) {
        if (single && single->type != LDM_CONFIG_NULL)
            return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: give sampler_config or sampler_single_config, not both", file, line);
        single = a->p.sampler_config;
    }
    if ((r = ex__vsr_sampler(cfg, single, &a->samp[0], 0, 0))) return r;
    if (!a->samp[0].on) { a->samp[0].on = 1; a->samp[0].so.num_steps = 20; }   /* EulerEDMSampler, 20 EDM steps */
    if ((r = ex__vsr_sampler(cfg, a->p.sampler_multi_prompt_config, &a->samp[1], 0, 1))) return r;
    if ((r = ex__vsr_sampler(cfg, a->p.sampler_ddim_config, &a->samp[2], 1, 0))) return r;
    if (a->p.use_ema) return ldm_config_seterr(cfg, LDM_ERR_UNSUPPORTED, "%s:%d: use_ema is not supported by VideoSREngine (hint: false)", file, line);
    if (!strcmp(a->p.lr_interpolation, "bicubic")) a->interp = LDM_INTERP_BICUBIC;
    else if (!strcmp(a->p.lr_interpolation, "bilinear")) a->interp = LDM_INTERP_BILINEAR;
    else return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: lr_interpolation '%s': bicubic or bilinear", file, line, a->p.lr_interpolation);
    if (a->fc.n_embed) return ldm_config_seterr(cfg, LDM_ERR_UNSUPPORTED, "%s:%d: a VQ first stage is not supported (AutoencoderKL only)", file, line);
    if (!(a->p.scale_factor > 0)) return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: scale_factor must be > 0", file, line);
    if (a->vc.out_channels != a->fc.embed_dim || a->vc.in_channels != 2 * a->fc.embed_dim)
        return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: network_config.params: out_channels %d and in_channels %d; the first stage's embed_dim %d "
                                 "needs out_channels %d and in_channels %d (latent + the concatenated LR latent)", file, line, a->vc.out_channels,
                                 a->vc.in_channels, a->fc.embed_dim, a->fc.embed_dim, 2 * a->fc.embed_dim);
    for (int i = 0; i < a->p.not_trainable_prefixes.n; i++) {   /* names relative to sgm's self.model (diffusion_model.*) */
        const char *s = a->p.not_trainable_prefixes.v[i];
        if (!strncmp(s, "model.", 6)) s += 6;
        if (!strncmp(s, "diffusion_model.", 16)) s += 16;
        else if (!strcmp(s, "diffusion_model")) s = "all";
        snprintf(a->prefixes[i], sizeof a->prefixes[i], "%s", *s ? s : "all");
        a->prefix_ptr[i] = a->prefixes[i];
    }
    a->n_prefixes = a->p.not_trainable_prefixes.n;
    if (a->p.lora_train && a->p.lora_target_modules.n < 1)
        return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: lora_train needs lora_target_modules (e.g. attn.qkv, attn.proj)", file, line);
    for (int i = 0; i < a->p.log_keys.n; i++) {
        static const char *const known[] = {"inputs", "lr_bicubic", "reconstructions", "samples", "samples_multi_prompt", "samples_ddim"};
        int ok = 0;
        for (int k = 0; k < 6; k++) ok |= !strcmp(known[k], a->p.log_keys.v[i]);
        if (!ok) return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: log_keys: unknown image key '%s' (known: inputs, lr_bicubic, reconstructions, "
                                          "samples, samples_multi_prompt, samples_ddim)", file, line, a->p.log_keys.v[i]);
    }
    return LDM_OK;
}
static ldm_result ex_video_sr_create(ldm_config *cfg, const ldm_config_node *params, void *user, void *arg, void **out) {
    (void)user; (void)arg;
    ex_model *m = (ex_model *)calloc(1, sizeof *m);
    ex_vsr *a = (ex_vsr *)calloc(1, sizeof *a);
    if (!m || !a) { free(m); free(a); return ldm_config_seterr(cfg, LDM_ERR_NOMEM, "out of memory"); }
    m->self = a;
    ldm_result r = ex__vsr_read(cfg, params, a);
    if (r) { ex__vsr_destroy(m); return r; }
    m->name = "VideoSREngine";
    m->monitor = a->p.monitor[0] ? a->p.monitor : "val/loss";
    m->log_keys = ex_vsr_log_keys; m->n_log_keys = 1;
    m->summary_keys = ex_vsr_summary; m->n_summary_keys = 1;
    m->progress_key = "train/loss";
    m->curve_key = "loss";
    m->test_keys = ex_vsr_test_keys; m->n_test_keys = EX_VSR_NT;
    m->test_note = "# VideoSR test: per clip, frame means of PSNR / SSIM (data range 2 on [-1, 1]) of the samples and of the bicubic\n"
                   "# condition against the input clip,\n# PSNR of the first stage's reconstruction (the ceiling of any latent model), LPIPS with weights\n";
    m->pretrained = a->p.ckpt_path[0] != 0;
    m->setup = ex__vsr_setup;
    m->configure_optimizers = ex__vsr_optimizers;
    m->set_training = ex__vsr_set_training;
    m->training_step = ex__vsr_training_step;
    m->validation_step = ex__vsr_validation_step;
    m->log_images = ex__vsr_log_images;
    m->test_step = ex__vsr_test_step;
    m->save = ex__vsr_save;
    m->load = ex__vsr_load;
    m->destroy = ex__vsr_destroy;
    *out = m;
    return LDM_OK;
}
static void ex__vsr_help(FILE *f) {
    fprintf(f, "\n[model.params]  (target sgm.models.diffusion.VideoSREngine: video super-resolution, sgm engine form)\n");
    ldm_config_schema_print(f, ex_vsr_cfg_schema());
    ex_video_data_help(f);
}
static const ex_model_class ex_video_sr_class = {"sgm.models.diffusion.VideoSREngine", "VideoSREngine,VideoSR", ex_video_sr_create, ex__vsr_help};

#endif /* EX_MODEL_VIDEO_H */
