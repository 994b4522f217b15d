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
*/
#ifndef LDM_DIFFUSION_H
#define LDM_DIFFUSION_H

#include "ldm_nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- 1. schedules and the diffusion process ------------------------------------------------ */
/* @@ section 1 declarations @@ */

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
/* @@ section 3 declarations @@ */

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

/* ---- 2. denoisers -------------------------------------------------------------------------- */
/* @@ section 2 implementation @@ */
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
    float *th = ldm__dn_host(ctx, t);
    float *e = (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * (size_t)(B * dim));
    if (!th || !e) return NULL;
    const float neg_log = (float)(-log(10000.0));
    for (int64_t b = 0; b < B; b++) {
        float *row = e + b * dim;
        for (int i = 0; i < half; i++) {
            /* float32 throughout, in torch's order: (-ln(10000) * i) / half, exp, times t */
            float f = expf((neg_log * (float)i) / (float)half), a = th[b] * f;
            row[i] = cosf(a);
            row[half + i] = sinf(a);
        }
        if (dim % 2) row[dim - 1] = 0.0f;
    }
    return ldm_from_host(ctx, ldm_shape2(B, dim), e);
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
        h = ldm_nn_groupnorm_silu_forward(ctx, &r->out_norm, ldm_add(ctx, h, e));
    }
    if (u->cfg.dropout > 0.0f) h = ldm_dropout(ctx, h, u->cfg.dropout, u->training);
    h = ldm__uconv_fw(ctx, &r->out_conv, h);
    return ldm_add(ctx, r->has_skip ? ldm__uconv_fw(ctx, &r->skip, x) : x, h);
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
    h = ldm_add(ctx, xf, ldm_transpose(ctx, h, 1, 2));
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
        h = ldm_add(ctx, ldm__ucross(ctx, &b->q1, &b->k1, &b->v1, &b->o1, s->heads, ldm_nn_layernorm_forward(ctx, &b->norm1, h), NULL), h);
        h = ldm_add(ctx, ldm__ucross(ctx, &b->q2, &b->k2, &b->v2, &b->o2, s->heads, ldm_nn_layernorm_forward(ctx, &b->norm2, h), context), h);
        ldm_tensor *f = ldm_nn_linear_forward(ctx, &b->ff0, ldm_nn_layernorm_forward(ctx, &b->norm3, h));
        int64_t I = 4 * (int64_t)s->inner;  /* GEGLU: value half times gelu(gate half) */
        f = ldm_mul(ctx, ldm_slice(ctx, f, 2, 0, I), ldm_gelu(ctx, ldm_slice(ctx, f, 2, I, I), 0));
        h = ldm_add(ctx, ldm_nn_linear_forward(ctx, &b->ff2, f), h);
    }
    if (s->linear) h = ldm_nn_linear_forward(ctx, &s->pout_l, h);
    h = ldm_reshape(ctx, ldm_transpose(ctx, h, 1, 2), ldm_shape4(B, s->linear ? C : s->inner, H, W));
    if (!s->linear) h = ldm_nn_conv2d_forward(ctx, &s->pout_c, h);
    return ldm_add(ctx, h, x);
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
    ldm_tensor *h = x;
    for (int i = 0; i < u->n_in; i++) hs[i] = h = ldm__ublock_fw(ctx, u, &u->in[i], h, semb, context);
    h = ldm__ublock_fw(ctx, u, &u->mid, h, semb, context);
    for (int i = 0, k = u->n_in; i < u->n_out && h; i++) {
        ldm_tensor *cat[2] = {h, hs[--k]};
        h = ldm__ublock_fw(ctx, u, &u->out[i], ldm_concat(ctx, 2, cat, 1), semb, context);
    }
    return ldm__uconv_fw(ctx, &u->out_conv, ldm_nn_groupnorm_silu_forward(ctx, &u->out_norm, h));
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

typedef struct ldm__dit_block {
    ldm_nn_layernorm norm1, norm2;
    ldm_nn_linear qkv, proj, fc1, fc2, ada;
} ldm__dit_block;
struct ldm_dit {
    ldm_dit_config cfg;
    ldm_nn_params *P;
    int training, out_channels;
    ldm_tensor *pos_embed;        /* [1, N, D], requires_grad off */
    ldm_nn_conv2d x_proj;
    ldm_nn_linear t0, t2, final_linear, final_ada;
    ldm_nn_embedding y_table;
    ldm__dit_block *blk;
    ldm_nn_layernorm norm_final;
};

static void ldm__dit_xavier(ldm_nn_params *P, ldm_nn_linear *m) {
    ldm_nn_set_init(P, m->weight, ldm_nn_init_xavier_uniform(m->in, m->out, 1.0));
    ldm_nn_set_init(P, m->bias, ldm_nn_init_const(0.0f));
}
static void ldm__dit_zero(ldm_nn_params *P, ldm_nn_linear *m) {
    ldm_nn_set_init(P, m->weight, ldm_nn_init_const(0.0f));
    ldm_nn_set_init(P, m->bias, ldm_nn_init_const(0.0f));
}
/* Module order = DiT's state-dict order (pos_embed is DiT's own parameter, so it comes first). */
static void ldm__dit_register(ldm_dit *m) {
    const ldm_dit_config *c = &m->cfg;
    ldm_nn_params *P = m->P;
    int D = c->hidden_size, p = c->patch_size, g = c->input_size / p, hid = (int)((float)D * c->mlp_ratio);
    m->pos_embed = ldm_nn_param(P, "pos_embed", ldm_shape3(1, (int64_t)g * g, D), ldm_nn_init_const(0.0f));
    ldm_nn_conv2d_init(P, &m->x_proj, "x_embedder.proj", c->in_channels, D, p, p, 0, 1);
    ldm_nn_set_init(P, m->x_proj.weight, ldm_nn_init_xavier_uniform((int64_t)c->in_channels * p * p, D, 1.0)); /* as a Linear */
    ldm_nn_set_init(P, m->x_proj.bias, ldm_nn_init_const(0.0f));
    ldm_nn_linear_init(P, &m->t0, "t_embedder.mlp.0", 256, D, 1);
    ldm_nn_linear_init(P, &m->t2, "t_embedder.mlp.2", D, D, 1);
    ldm_nn_set_init(P, m->t0.weight, ldm_nn_init_normal(0.0f, 0.02f)); ldm_nn_set_init(P, m->t0.bias, ldm_nn_init_const(0.0f));
    ldm_nn_set_init(P, m->t2.weight, ldm_nn_init_normal(0.0f, 0.02f)); ldm_nn_set_init(P, m->t2.bias, ldm_nn_init_const(0.0f));
    ldm_nn_embedding_init(P, &m->y_table, "y_embedder.embedding_table", c->num_classes + (c->class_dropout_prob > 0.0f), D);
    ldm_nn_set_init(P, m->y_table.weight, ldm_nn_init_normal(0.0f, 0.02f));
    for (int i = 0; i < c->depth; i++) {
        ldm__dit_block *b = &m->blk[i];
        ldm_nn_pushf(P, "blocks.%d", i);
        ldm_nn_layernorm_init(P, &b->norm1, "norm1", ldm_shape1(D), 1e-6f, 0);
        ldm_nn_linear_init(P, &b->qkv, "attn.qkv", D, 3 * D, 1); ldm__dit_xavier(P, &b->qkv);
        ldm_nn_linear_init(P, &b->proj, "attn.proj", D, D, 1); ldm__dit_xavier(P, &b->proj);
        ldm_nn_layernorm_init(P, &b->norm2, "norm2", ldm_shape1(D), 1e-6f, 0);
        ldm_nn_linear_init(P, &b->fc1, "mlp.fc1", D, hid, 1); ldm__dit_xavier(P, &b->fc1);
        ldm_nn_linear_init(P, &b->fc2, "mlp.fc2", hid, D, 1); ldm__dit_xavier(P, &b->fc2);
        ldm_nn_linear_init(P, &b->ada, "adaLN_modulation.1", D, 6 * D, 1); ldm__dit_zero(P, &b->ada);
        ldm_nn_pop(P);
    }
    ldm_nn_layernorm_init(P, &m->norm_final, "final_layer.norm_final", ldm_shape1(D), 1e-6f, 0);
    ldm_nn_linear_init(P, &m->final_linear, "final_layer.linear", D, p * p * m->out_channels, 1); ldm__dit_zero(P, &m->final_linear);
    ldm_nn_linear_init(P, &m->final_ada, "final_layer.adaLN_modulation.1", D, 2 * D, 1); ldm__dit_zero(P, &m->final_ada);
    ldm_nn_set_trainable(P, "pos_embed", 0);
}
static ldm_result ldm__dit_build(ldm_ctx *ctx, ldm_dit **out, const ldm_dit_config *cfg) {
    *out = NULL;
    if (ldm_dit_config_check(ctx, cfg)) return ldm_ctx_status(ctx);
    ldm_dit *m = (ldm_dit *)LDM_MALLOC(sizeof *m);
    if (!m) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "DiT: out of memory");
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    m->out_channels = cfg->learn_sigma ? 2 * cfg->in_channels : cfg->in_channels;
    m->blk = (ldm__dit_block *)LDM_MALLOC(sizeof(ldm__dit_block) * (size_t)(cfg->depth ? cfg->depth : 1));
    ldm_result r = m->blk ? ldm_nn_params_create(ctx, &m->P, ldm_ctx_device(ctx)) : ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "DiT: out of memory");
    if (r) { LDM_FREE(m->blk); LDM_FREE(m); return r; }
    ldm__dit_register(m);
    if ((r = ldm_ctx_status(ctx)) != LDM_OK) { ldm_dit_destroy(m); return r; }
    *out = m;
    return LDM_OK;
}
/* get_2d_sincos_pos_embed in float64, rounded to float: token n = i*g + j (row i, column j)
   gets [sin(j w_k), cos(j w_k), sin(i w_k), cos(i w_k)], w_k = 10000^(-k/(D/4)), k < D/4
   (the first half encodes the column: numpy.meshgrid puts w first). */
LDM_API ldm_result ldm_dit_reset_pos_embed(ldm_ctx *ctx, ldm_dit *m) {
    int D = m->cfg.hidden_size, g = m->cfg.input_size / m->cfg.patch_size, q = D / 4;
    float *e = (float *)LDM_MALLOC(sizeof(float) * (size_t)g * g * D);
    if (!e) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "DiT: out of memory");
    for (int i = 0; i < g; i++)
        for (int j = 0; j < g; j++) {
            float *row = e + ((size_t)i * g + j) * D;
            for (int k = 0; k < q; k++) {
                double w = 1.0 / pow(10000.0, (double)k / (double)q);
                row[k] = (float)sin(j * w); row[q + k] = (float)cos(j * w);
                row[2 * q + k] = (float)sin(i * w); row[3 * q + k] = (float)cos(i * w);
            }
        }
    ldm_result r = ldm_nn_copy_from_host(ctx, m->pos_embed, e);
    LDM_FREE(e);
    return r;
}
LDM_API ldm_result ldm_dit_create(ldm_ctx *ctx, ldm_dit **out, const ldm_dit_config *cfg) {
    ldm_dit *m;
    ldm_result r = ldm__dit_build(ctx, &m, cfg);
    *out = NULL;
    if (r) return r;
    if ((r = ldm_nn_params_alloc(ctx, m->P)) != LDM_OK || (r = ldm_dit_reset_pos_embed(ctx, m)) != LDM_OK) { ldm_dit_destroy(m); return r; }
    *out = m;
    return LDM_OK;
}
LDM_API void ldm_dit_destroy(ldm_dit *m) {
    if (!m) return;
    ldm_nn_params_destroy(m->P);
    LDM_FREE(m->blk);
    LDM_FREE(m);
}
LDM_API ldm_result ldm_dit_count_params(ldm_ctx *ctx, const ldm_dit_config *cfg, int64_t *n) {
    ldm_dit *m;
    ldm_result r = ldm__dit_build(ctx, &m, cfg);
    *n = r ? 0 : ldm_nn_numel(m->P, NULL, 0);
    if (!r) ldm_dit_destroy(m);
    return r;
}
LDM_API ldm_nn_params *ldm_dit_params(ldm_dit *m) { return m->P; }
LDM_API const ldm_dit_config *ldm_dit_cfg(const ldm_dit *m) { return &m->cfg; }
LDM_API void ldm_dit_set_training(ldm_dit *m, int on) { m->training = on; }
LDM_API ldm_result ldm_dit_load(ldm_ctx *ctx, ldm_dit *m, const char *path, const char *prefix, int strict, ldm_nn_load_report *report) {
    return ldm__dn_load(ctx, m->P, path, prefix, strict, report);
}
LDM_API ldm_result ldm_dit_save(ldm_ctx *ctx, const ldm_dit *m, const char *path, ldm_dtype dtype, const char *prefix) {
    return ldm_nn_save(ctx, m->P, path, dtype, prefix);
}

/* modulate(x, shift, scale) = x * (1 + scale) + shift, shift/scale [B, 1, D] */
static ldm_tensor *ldm__dit_mod(ldm_ctx *ctx, ldm_tensor *x, ldm_tensor *shift, ldm_tensor *scale) {
    return ldm_add(ctx, ldm_mul(ctx, x, ldm_add_scalar(ctx, scale, 1.0f)), shift);
}
LDM_API ldm_tensor *ldm_dit_forward(ldm_ctx *ctx, ldm_dit *m, ldm_tensor *x, ldm_tensor *t, ldm_tensor *y) {
    const ldm_dit_config *c = &m->cfg;
    int64_t D = c->hidden_size, p = c->patch_size, g = c->input_size / p, N = g * g;
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
        ldm_rng_uniform(ctx, ldm_ctx_rng(ctx), LDM_CPU, u, B, 0.0f, 1.0f);
        for (int64_t b = 0; b < B; b++) if (u[b] < c->class_dropout_prob) idx[b] = c->num_classes;
    }
    ldm_tensor *h = ldm_nn_conv2d_forward(ctx, &m->x_proj, x);                         /* [B, D, g, g] */
    h = ldm_add(ctx, ldm_transpose(ctx, ldm_reshape(ctx, h, ldm_shape3(B, D, N)), 1, 2), m->pos_embed);
    ldm_tensor *temb = ldm_nn_linear_forward(ctx, &m->t2, ldm_silu(ctx, ldm_nn_linear_forward(ctx, &m->t0, ldm_timestep_embedding(ctx, t, 256))));
    ldm_tensor *cond = ldm_add(ctx, temb, ldm_nn_embedding_forward(ctx, &m->y_table, B, idx));
    ldm_tensor *sc = ldm_silu(ctx, cond);
    for (int i = 0; i < c->depth && h; i++) {
        const ldm__dit_block *b = &m->blk[i];
        ldm_tensor *md = ldm_reshape(ctx, ldm_nn_linear_forward(ctx, &b->ada, sc), ldm_shape3(B, 1, 6 * D)), *s[6];
        if (!md || ldm_chunk(ctx, md, 6, 2, s)) return NULL;  /* shift, scale, gate (msa); shift, scale, gate (mlp) */
        ldm_tensor *a = ldm_nn_linear_forward(ctx, &b->qkv, ldm__dit_mod(ctx, ldm_nn_layernorm_forward(ctx, &b->norm1, h), s[0], s[1])), *q[3];
        if (!a || ldm_chunk(ctx, a, 3, 2, q)) return NULL;
        a = ldm_nn_linear_forward(ctx, &b->proj, ldm_attention(ctx, q[0], q[1], q[2], c->num_heads, 0.0f));
        h = ldm_add(ctx, h, ldm_mul(ctx, s[2], a));
        a = ldm_nn_linear_forward(ctx, &b->fc1, ldm__dit_mod(ctx, ldm_nn_layernorm_forward(ctx, &b->norm2, h), s[3], s[4]));
        a = ldm_nn_linear_forward(ctx, &b->fc2, ldm_gelu(ctx, a, 1));
        h = ldm_add(ctx, h, ldm_mul(ctx, s[5], a));
    }
    ldm_tensor *md = ldm_reshape(ctx, ldm_nn_linear_forward(ctx, &m->final_ada, sc), ldm_shape3(B, 1, 2 * D)), *s[2];
    if (!h || !md || ldm_chunk(ctx, md, 2, 2, s)) return NULL;
    h = ldm_nn_linear_forward(ctx, &m->final_linear, ldm__dit_mod(ctx, ldm_nn_layernorm_forward(ctx, &m->norm_final, h), s[0], s[1]));
    /* unpatchify: [B, (gh gw), (p q C)] -> [B, C, gh*p, gw*q] in two permutes of <= 5 dims */
    int64_t C = m->out_channels;
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
/* @@ section 3 implementation @@ */

#endif /* LDM_DIFFUSION_IMPLEMENTATION_DONE */
#endif /* LDM_IMPLEMENTATION */
