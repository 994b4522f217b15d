/* ldm_vae.h - AutoencoderKL (the KL-regularised first stage of latent diffusion), exact to
   CompVis latent-diffusion: encoder, decoder, diagonal Gaussian posterior, weights in the
   CompVis and diffusers layouts, and tiled inference in bounded memory.      v0.1

   Do this in exactly one C or C++ file before including it:
       #define LDM_IMPLEMENTATION          (every ldm_ header)
   ldm_vae.h includes ldm_nn.h and ldm_tensor.h; those three files are all a program that
   only runs the autoencoder needs.

   Example: encode an image to its latent mode and decode it again.

       ldm_vae *vae;  ldm_vae_config cfg = ldm_vae_config_kl_f8();
       if (ldm_vae_create(ctx, &vae, &cfg) || ldm_vae_load(ctx, vae, "kl-f8.ckpt", 1)) { ...error... }
       ldm_vae_infer inf = {0};  inf.tile = 512;               // pixels; 0 = untiled
       ldm_vae_posterior q;
       if (ldm_vae_encode_infer(ctx, vae, x, &inf, &q)) { ... }   // x [B,3,H,W] in [-1,1]
       ldm_tensor *img = ldm_vae_decode_infer(ctx, vae, q.mean, &inf);
       ldm_vae_destroy(vae);

   Shape legend: B batch, C channels, H, W image size, h = H/f, w = W/f latent size with
   f = 2^(levels-1) (kl-f4: f 4, kl-f8: f 8), E embed_dim (latent channels), Z z_channels;
   volumes (dims 3) add T (depth/slices) and t = T/f.
       image [B, in_channels, H, W] in [-1, 1]  ->  moments [B, 2E, h, w]  ->  z [B, E, h, w]
       z -> image [B, out_ch, H, W]
       dims 3: volume [B, in_channels, T, H, W] -> moments [B, 2E, t, h, w] -> z [B, E, t, h, w]

   Architecture (ldm/modules/diffusionmodules/model.py), parameter names as CompVis:
       encoder.conv_in; encoder.down.i.block.j (ResnetBlock), encoder.down.i.attn.j
       (AttnBlock, at levels whose nominal resolution is in attn_resolutions),
       encoder.down.i.downsample.conv (all levels but the last); encoder.mid.{block_1, attn_1,
       block_2}; encoder.norm_out, swish, encoder.conv_out (-> 2Z); quant_conv (1x1 -> 2E);
       post_quant_conv (1x1 E -> Z); decoder.conv_in; decoder.mid; decoder.up.i (run from the
       last level down, num_res_blocks+1 blocks, upsample on all levels but 0); decoder
       norm_out, swish, conv_out [, tanh].
       ResnetBlock: conv1(swish(norm1(x))) -> conv2(dropout(swish(norm2(.)))) + x (or
       nin_shortcut(x), a 1x1 conv, when channels change). Norms: GroupNorm(32, eps 1e-6).
       AttnBlock: x + proj_out(v softmax(q^T k / sqrt(C))^T), q/k/v/proj_out 1x1 convs.
       Downsample: zero pad right/bottom by 1, 3x3 conv stride 2 (or 2x2 average pool).
       Upsample: nearest x2, 3x3 conv (or nearest only).

   Posterior (DiagonalGaussianDistribution): mean, logvar = chunk(moments, 2), logvar clamped
   to [-30, 20]; sample = mean + exp(logvar/2) * eps; mode = mean;
   kl = 0.5 sum_{C,H,W}(mean^2 + var - 1 - logvar); nll = 0.5 sum(log 2pi + logvar + (x-mean)^2/var).
   (dims 3: both summed over C,T,H,W.)

   Volumes (ddconfig dims = 3, e.g. CT/MRI; default 2): the same module tree and the SAME
   parameter names, CompVis's model.py with Conv3d for Conv2d: convs 3x3x3 padding 1,
   nin_shortcut, q/k/v/proj_out, quant_conv and post_quant_conv 1x1x1 (weights [O,I,k,k,k]);
   Downsample pads back/bottom/right by 1 and runs a 3x3x3 stride-2 conv (avg_pool3d 2 without
   resamp_with_conv), so T, H and W all halve; Upsample is nearest x2 in T, H and W, then a
   3x3x3 conv; AttnBlock attends over all T*H*W positions; GroupNorm as in 2-D. Save/load
   as in 2-D (a 2-D checkpoint fails with a shape error naming the tensors). Tiled inference
   tiles T, H and W with cubes of `tile` voxels, blended by the product of the per-axis
   ramps. The VQ first stage (n_embed > 0) is 2-D only.

   Weights: ldm_vae_load reads safetensors/.ckpt/.pth and detects the layout: CompVis names,
   diffusers names (down_blocks/up_blocks/mid_block..., attention as [C,C] linears), and
   either of them under `first_stage_model.` (whole latent-diffusion / Stable Diffusion
   checkpoints; every other key is ignored). `loss.*` keys of CompVis autoencoder checkpoints
   (LPIPS, discriminator) are not the VAE's and are skipped. ldm_vae_save writes CompVis names.

   VQ first stage (VQModel / VQModelInterface of ldm/models/autoencoder.py with taming's
   VectorQuantizer2; the published CompVis LDMs cin256, bsr_sr, celebahq and lsun use vq-f4):
   config n_embed > 0 selects it (0 keeps AutoencoderKL). The encoder runs with double_z false
   (conv_out -> Z), quant_conv is 1x1 Z -> E, post_quant_conv E -> Z, and the codebook
   quantize.embedding.weight is [n_embed, E].
       encode:   h = quant_conv(encoder(x))   [B,E,h,w], NOT quantized (latent diffusion's latent;
                 ldm_vae_encode puts it in q.mean with q.logvar NULL, sample = mode = h)
       quantize: per position, the codebook row nearest by d = |z|^2 + |e|^2 - 2 z.e (first
                 index on ties), output z + (e - z) with the difference detached, as taming
       decode:   quantize (unless force_not_quantize), post_quant_conv, decoder
   Inference only: the commitment/codebook losses and the index remap of VectorQuantizer2
   are left out (VQ training is not supported); the argmin passes no gradient (straight-through to h, as in taming).

   Inference in bounded memory (ldm_vae_encode_infer / ldm_vae_decode_infer): no autograd,
   every block's activations rewound as soon as its output exists, `batch` samples at a time,
   and optionally overlapping tiles blended with a raised-cosine ramp over the overlap, so
   the result is seamless. GroupNorm and the mid-block attention see one tile instead of the
   whole image, so a tiled result is close to, not equal to, the untiled one (the test states
   the measured difference); larger tiles come closer.
*/
#ifndef LDM_VAE_H
#define LDM_VAE_H

#include "ldm_nn.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LDM_VAE_MAX_LEVELS 8
#define LDM_VAE_MAX_BLOCKS 8   /* num_res_blocks + 1 */

/* ddconfig + embed_dim, as in the CompVis yaml (model.params.ddconfig, model.params.embed_dim). */
typedef struct ldm_vae_config {
    int double_z;
    int z_channels;
    int resolution;               /* nominal; decides where attention goes, not the input size */
    int in_channels, out_ch, ch;
    int ch_mult[LDM_VAE_MAX_LEVELS], n_levels;
    int num_res_blocks;
    int attn_resolutions[LDM_VAE_MAX_LEVELS], n_attn;
    float dropout;
    int resamp_with_conv;
    int tanh_out;
    int embed_dim;
    int n_embed;                  /* VQ codebook size (model.params.n_embed); 0: AutoencoderKL */
    int dims;                     /* 2: images [B,C,H,W]; 3: volumes [B,C,T,H,W] (0 reads as 2) */
} ldm_vae_config;

/* The ddconfig keys, described once: X(name, kind, default, help) (ldm_config.h's schema
   convention; bounds as AT_LEAST(INT, 1)). With ldm_config.h included
   before this header, ldm_vae_config_read() validates and reads them through this table. */
#define LDM_VAE_DDCONFIG_KEYS(X)                                                               \
    X(double_z, BOOL, "true", "encoder outputs mean and log-variance (2*z_channels)")          \
    X(z_channels, AT_LEAST(INT, 1), "4", "channels of the encoder/decoder latent")             \
    X(resolution, AT_LEAST(INT, 1), "256", "nominal image size; decides which levels get attention") \
    X(in_channels, AT_LEAST(INT, 1), "3", "image channels in")                                 \
    X(out_ch, AT_LEAST(INT, 1), "3", "image channels out")                                     \
    X(ch, AT_LEAST(INT, 32), "128", "base channel count (a multiple of 32)")                   \
    X(ch_mult, AT_LEAST(INT_LIST, 1), "1,2,4,4", "channel multiplier per level; f = 2^(levels-1)") \
    X(num_res_blocks, AT_LEAST(INT, 1), "2", "ResNet blocks per level (decoder: one more)")    \
    X(attn_resolutions, INT_LIST, "", "nominal resolutions that get self-attention")           \
    X(dropout, BETWEEN(FLOAT, 0, 1), "0.0", "dropout in the ResNet blocks")                    \
    X(resamp_with_conv, BOOL, "true", "convolutional down/up-sampling")                        \
    X(tanh_out, BOOL, "false", "tanh on the decoder output")                                   \
    X(dims, BETWEEN(INT, 2, 3), "2", "2: images [B,C,H,W]; 3: volumes [B,C,T,H,W] (Conv3d everywhere)")

LDM_API ldm_vae_config ldm_vae_config_kl_f4(void);  /* the seed's autoencoder_kl_64x64x3: ch 128, ch_mult 1,2,4, z 3 */
LDM_API ldm_vae_config ldm_vae_config_kl_f8(void);  /* Stable Diffusion's: ch 128, ch_mult 1,2,4,4, z 4 */
LDM_API ldm_vae_config ldm_vae_config_vq_f4(void);  /* CompVis vq-f4: ch 128, ch_mult 1,2,4, z 3, embed_dim 3, n_embed 8192 */
/* Checks ranges (channels divisible by the 32 GroupNorm groups, levels, lists); the message
   names the key. */
LDM_API ldm_result ldm_vae_config_check(ldm_ctx *ctx, const ldm_vae_config *cfg);
LDM_API int ldm_vae_factor(const ldm_vae_config *cfg);   /* f = 2^(n_levels-1) */

/* One conv of the model: nn.Conv2d (dims 2) or nn.Conv3d (dims 3). weight/bias are the
   registered tensors (the forward uses these); c2 / c3 hold the geometry. */
typedef struct ldm__vae_conv {
    ldm_tensor *weight, *bias;    /* [O, I, k, k] or [O, I, k, k, k]; [O] */
    int in, out, dims;
    ldm_nn_conv2d c2;
    ldm_nn_conv3d c3;
} ldm__vae_conv;
typedef struct ldm__vae_res {
    ldm_nn_groupnorm norm1, norm2;
    ldm__vae_conv conv1, conv2, nin_shortcut;
    int has_shortcut;
} ldm__vae_res;
typedef struct ldm__vae_attn {
    ldm_nn_groupnorm norm;
    ldm__vae_conv q, k, v, proj_out;
} ldm__vae_attn;
typedef struct ldm__vae_level {
    ldm__vae_res block[LDM_VAE_MAX_BLOCKS];
    ldm__vae_attn attn[LDM_VAE_MAX_BLOCKS];
    int n_block, n_attn;
    ldm__vae_conv resample;       /* downsample.conv / upsample.conv */
    int has_resample;
} ldm__vae_level;
typedef struct ldm__vae_half {    /* an Encoder or a Decoder */
    ldm__vae_conv conv_in, conv_out;
    ldm__vae_level level[LDM_VAE_MAX_LEVELS];
    ldm__vae_res mid_block_1, mid_block_2;
    ldm__vae_attn mid_attn_1;
    ldm_nn_groupnorm norm_out;
} ldm__vae_half;

typedef struct ldm_vae {
    ldm_vae_config cfg;
    ldm_nn_params *P;             /* every parameter, CompVis names */
    int training;                 /* dropout on (ldm_vae_set_training) */
    ldm__vae_half enc, dec;
    ldm__vae_conv quant_conv, post_quant_conv;
    ldm_tensor *codebook;         /* VQ: quantize.embedding.weight [n_embed, E]; NULL for AutoencoderKL */
} ldm_vae;

/* Registers and allocates the model on the context's device, initialised like PyTorch's
   defaults from the context's RNG. */
LDM_API ldm_result ldm_vae_create(ldm_ctx *ctx, ldm_vae **vae, const ldm_vae_config *cfg);
LDM_API void ldm_vae_destroy(ldm_vae *vae);
LDM_API void ldm_vae_set_training(ldm_vae *vae, int on);
/* Loads weights in any supported layout (see the top). strict: every VAE parameter must be
   in the file and every considered file tensor must be used, shapes equal; the error lists
   every offending name. report (may be NULL) gets the details. */
LDM_API ldm_result ldm_vae_load(ldm_ctx *ctx, ldm_vae *vae, const char *path, int strict);
LDM_API ldm_result ldm_vae_load_ex(ldm_ctx *ctx, ldm_vae *vae, const char *path, int strict, ldm_nn_load_report *report);
/* Writes CompVis names (torch's load_state_dict(strict=True) on the CompVis module accepts it). */
LDM_API ldm_result ldm_vae_save(ldm_ctx *ctx, const ldm_vae *vae, const char *path, ldm_dtype dtype);
/* The diffusers -> CompVis name map (NULL when the name is not a VAE name). n_levels is
   len(ch_mult): diffusers counts decoder levels the other way round. */
LDM_API const char *ldm_vae_name_from_diffusers(const char *name, int n_levels, char *buf, size_t cap);

/* ---- forward (autograd-aware: use these for training) ---- */
typedef struct ldm_vae_posterior { ldm_tensor *mean, *logvar; } ldm_vae_posterior;  /* [B,E,h,w] each */
LDM_API ldm_tensor *ldm_vae_encoder_forward(ldm_ctx *ctx, ldm_vae *vae, ldm_tensor *x);   /* -> [B,2Z,h,w] */
LDM_API ldm_tensor *ldm_vae_decoder_forward(ldm_ctx *ctx, ldm_vae *vae, ldm_tensor *z);   /* [B,Z,h,w] -> image */
LDM_API ldm_result ldm_vae_encode(ldm_ctx *ctx, ldm_vae *vae, ldm_tensor *x, ldm_vae_posterior *q);
LDM_API ldm_tensor *ldm_vae_decode(ldm_ctx *ctx, ldm_vae *vae, ldm_tensor *z);              /* post_quant_conv + decoder */
/* AutoencoderKL.forward: encode, z = sample (eps from the RNG) or mode, decode. q may be NULL. */
LDM_API ldm_tensor *ldm_vae_forward(ldm_ctx *ctx, ldm_vae *vae, ldm_tensor *x, int sample_posterior, ldm_vae_posterior *q);
LDM_API ldm_tensor *ldm_vae_last_layer(ldm_vae *vae);  /* decoder.conv_out.weight */

LDM_API ldm_result ldm_vae_posterior_from_moments(ldm_ctx *ctx, ldm_tensor *moments, ldm_vae_posterior *q);
/* mean + exp(logvar/2) * eps; eps NULL: drawn from the context's RNG. */
LDM_API ldm_tensor *ldm_vae_posterior_sample(ldm_ctx *ctx, const ldm_vae_posterior *q, ldm_tensor *eps);
LDM_API ldm_tensor *ldm_vae_posterior_mode(const ldm_vae_posterior *q);
LDM_API ldm_tensor *ldm_vae_posterior_kl(ldm_ctx *ctx, const ldm_vae_posterior *q);              /* [B] */
LDM_API ldm_tensor *ldm_vae_posterior_nll(ldm_ctx *ctx, const ldm_vae_posterior *q, ldm_tensor *x); /* [B] */

/* ---- inference in bounded memory ---- */
typedef struct ldm_vae_infer {
    int batch;                    /* samples per pass (0: all) */
    int tile;                     /* tile size in image pixels (0: no tiling); rounded down to a multiple of f; volumes: cubes over T, H, W */
    int overlap;                  /* overlap in image pixels (0: tile/4), a multiple of f */
} ldm_vae_infer;
/* Posterior of x (mean and logvar, grad off). Tiled encoding needs H and W (volumes: T, H, W) divisible by f. */
LDM_API ldm_result ldm_vae_encode_infer(ldm_ctx *ctx, ldm_vae *vae, ldm_tensor *x, const ldm_vae_infer *opt, ldm_vae_posterior *q);
LDM_API ldm_tensor *ldm_vae_decode_infer(ldm_ctx *ctx, ldm_vae *vae, ldm_tensor *z, const ldm_vae_infer *opt);

/* ---- VQ first stage (n_embed > 0; see the top) ---- */
LDM_API int ldm_vae_is_vq(const ldm_vae *vae);
/* VQModelInterface.encode: quant_conv(encoder(x)) -> h [B,E,h,w], not quantized. */
LDM_API ldm_tensor *ldm_vae_vq_encode(ldm_ctx *ctx, ldm_vae *vae, ldm_tensor *x);
/* VectorQuantizer2 forward: z_q [B,E,h,w]; indices (may be NULL) gets B*h*w codebook rows,
   in (b, y, x) order (sane_index_shape's order). */
LDM_API ldm_tensor *ldm_vae_vq_quantize(ldm_ctx *ctx, ldm_vae *vae, ldm_tensor *h, int64_t *indices);
/* VQModelInterface.decode: quantize unless force_not_quantize, post_quant_conv, decoder. */
LDM_API ldm_tensor *ldm_vae_vq_decode(ldm_ctx *ctx, ldm_vae *vae, ldm_tensor *h, int force_not_quantize);
/* get_codebook_entry: the codebook rows of B*h*w indices as [B,E,h,w]. */
LDM_API ldm_tensor *ldm_vae_vq_embed_code(ldm_ctx *ctx, ldm_vae *vae, const int64_t *indices, int64_t B, int64_t h, int64_t w);
/* VQModel.decode_code: the image of B*h*w indices (codebook rows, post_quant_conv, decoder). */
LDM_API ldm_tensor *ldm_vae_vq_decode_code(ldm_ctx *ctx, ldm_vae *vae, const int64_t *indices, int64_t B, int64_t h, int64_t w);

#ifdef LDM_CONFIG_H
/* Config glue, compiled when ldm_config.h was included first. node may be the root (reads
   model.params), a model node (target + params), its params, or any node holding ddconfig
   and embed_dim. Errors carry file:line (ldm_config_error). */
LDM_CONFIG_DECLARE(ldm_vae_ddconfig, LDM_VAE_DDCONFIG_KEYS);
LDM_API ldm_result ldm_vae_config_read(ldm_config *cfg, const ldm_config_node *node, ldm_vae_config *out);
#endif

#ifdef __cplusplus
}
#endif
#endif /* LDM_VAE_H */

/* ========================================================================================== */
/*                                      IMPLEMENTATION                                        */
/* ========================================================================================== */
#if defined(LDM_IMPLEMENTATION) || defined(LDM_VAE_IMPLEMENTATION)
#ifndef LDM_VAE_IMPLEMENTATION_DONE
#define LDM_VAE_IMPLEMENTATION_DONE

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LDM__VAE_MIN(a, b) ((a) < (b) ? (a) : (b))
#define LDM__VAE_MAX(a, b) ((a) > (b) ? (a) : (b))

/* ---- configs ---------------------------------------------------------------------------- */
static ldm_vae_config ldm__vae_cfg(int z, const int *mult, int n) {
    ldm_vae_config c;
    memset(&c, 0, sizeof c);
    c.double_z = 1; c.z_channels = z; c.resolution = 256; c.in_channels = 3; c.out_ch = 3; c.ch = 128;
    for (int i = 0; i < n; i++) c.ch_mult[i] = mult[i];
    c.n_levels = n; c.num_res_blocks = 2; c.dropout = 0.0f; c.resamp_with_conv = 1; c.embed_dim = z; c.dims = 2;
    return c;
}
LDM_API ldm_vae_config ldm_vae_config_kl_f4(void) { static const int m[3] = {1, 2, 4}; return ldm__vae_cfg(3, m, 3); }
LDM_API ldm_vae_config ldm_vae_config_kl_f8(void) { static const int m[4] = {1, 2, 4, 4}; return ldm__vae_cfg(4, m, 4); }
LDM_API ldm_vae_config ldm_vae_config_vq_f4(void) {
    static const int m[3] = {1, 2, 4};
    ldm_vae_config c = ldm__vae_cfg(3, m, 3);
    c.double_z = 0; c.n_embed = 8192;
    return c;
}
LDM_API int ldm_vae_factor(const ldm_vae_config *c) { return 1 << (c->n_levels - 1); }

LDM_API ldm_result ldm_vae_config_check(ldm_ctx *ctx, const ldm_vae_config *c) {
#define LDM__VAE_REQ(cond, ...) do { if (!(cond)) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "AutoencoderKL config: " __VA_ARGS__); } while (0)
    LDM__VAE_REQ(c->n_levels >= 1 && c->n_levels <= LDM_VAE_MAX_LEVELS, "ch_mult needs 1 to %d entries, got %d", LDM_VAE_MAX_LEVELS, c->n_levels);
    LDM__VAE_REQ(c->num_res_blocks >= 1 && c->num_res_blocks < LDM_VAE_MAX_BLOCKS, "num_res_blocks must be 1..%d, got %d", LDM_VAE_MAX_BLOCKS - 1, c->num_res_blocks);
    LDM__VAE_REQ(c->ch > 0 && c->ch % 32 == 0, "ch = %d: GroupNorm uses 32 groups, so ch must be a positive multiple of 32", c->ch);
    for (int i = 0; i < c->n_levels; i++)
        LDM__VAE_REQ(c->ch_mult[i] > 0, "ch_mult[%d] = %d must be positive", i, c->ch_mult[i]);
    LDM__VAE_REQ(c->z_channels > 0 && c->embed_dim > 0, "z_channels (%d) and embed_dim (%d) must be positive", c->z_channels, c->embed_dim);
    LDM__VAE_REQ(c->in_channels > 0 && c->out_ch > 0, "in_channels (%d) and out_ch (%d) must be positive", c->in_channels, c->out_ch);
    LDM__VAE_REQ(c->n_attn >= 0 && c->n_attn <= LDM_VAE_MAX_LEVELS, "at most %d attn_resolutions", LDM_VAE_MAX_LEVELS);
    LDM__VAE_REQ(c->dropout >= 0.0f && c->dropout < 1.0f, "dropout = %g must be in [0, 1)", (double)c->dropout);
    if (c->n_embed < 0 || (c->n_embed > 0 && c->double_z))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "VQModel config: n_embed = %d with double_z = %s (hint: n_embed > 0 selects the VQ first "
                              "stage, whose encoder needs double_z = false; n_embed 0 is AutoencoderKL)", c->n_embed, c->double_z ? "true" : "false");
    LDM__VAE_REQ(c->double_z || c->n_embed > 0, "double_z = false has no variance to sample from; AutoencoderKL needs double_z = true");
    LDM__VAE_REQ(c->dims == 0 || c->dims == 2 || c->dims == 3, "dims = %d: 2 (images [B,C,H,W]) or 3 (volumes [B,C,T,H,W])", c->dims);
    LDM__VAE_REQ(c->dims != 3 || c->n_embed == 0, "dims = 3 with n_embed = %d: the VQ first stage is 2-D only here (hint: n_embed 0, "
                 "an AutoencoderKL, for volumes)", c->n_embed);
    return LDM_OK;
#undef LDM__VAE_REQ
}

/* ---- registration (module order = CompVis state-dict order) ------------------------------ */
/* k x k (x k) conv with stride 1 and padding k/2, or (down) Downsample's: F.pad right/bottom
   (and back, in 3-D) by 1, then stride 2 without padding. */
static void ldm__vae_conv_init(ldm_nn_params *P, ldm__vae_conv *m, const char *name, int dims, int in, int out, int k, int down) {
    int p = down ? 0 : k / 2, s = down ? 2 : 1;
    memset(m, 0, sizeof *m);
    m->dims = dims == 3 ? 3 : 2; m->in = in; m->out = out;
    if (m->dims == 3) {
        int k3[3] = {k, k, k}, s3[3] = {s, s, s}, p6[6] = {p, p + down, p, p + down, p, p + down};
        ldm_nn_conv3d_init_ex(P, &m->c3, name, in, out, k3, s3, p6, 1);
        m->weight = m->c3.weight; m->bias = m->c3.bias;
    } else {
        int p4[4] = {p, p + down, p, p + down};
        ldm_nn_conv2d_init_ex(P, &m->c2, name, in, out, k, k, s, s, p4, 1);
        m->weight = m->c2.weight; m->bias = m->c2.bias;
    }
}
/* weight/bias from the aliases (the one place to swap them), geometry from c2 / c3 */
static ldm_tensor *ldm__vae_conv_fwd(ldm_ctx *ctx, const ldm__vae_conv *m, ldm_tensor *x) {
    if (m->dims == 3) return ldm_conv3d_ex(ctx, x, m->weight, m->bias, m->c3.stride, m->c3.pad);
    const ldm_nn_conv2d *c = &m->c2;
    return ldm_conv2d_ex(ctx, x, m->weight, m->bias, c->stride_h, c->stride_w, c->pad[0], c->pad[1], c->pad[2], c->pad[3]);
}
/* conv(silu(norm(x))) as ldm_group_norm_silu_conv: the conv's input is recomputed in the
   backward pass instead of kept (2-D and 3-D) */
static ldm_tensor *ldm__vae_gn_conv_fwd(ldm_ctx *ctx, const ldm_nn_groupnorm *n, const ldm__vae_conv *m, ldm_tensor *x) {
    int st2[3], p2[6];
    const int *st = m->c3.stride, *pad = m->c3.pad;
    if (m->dims != 3) {
        const ldm_nn_conv2d *c = &m->c2;
        st2[0] = 1; st2[1] = c->stride_h; st2[2] = c->stride_w;
        p2[0] = p2[1] = 0; p2[2] = c->pad[0]; p2[3] = c->pad[1]; p2[4] = c->pad[2]; p2[5] = c->pad[3];
        st = st2, pad = p2;
    }
    return ldm_group_norm_silu_conv(ctx, x, n->weight, n->bias, n->groups, n->eps, m->weight, m->bias, st, pad);
}
static void ldm__vae_reg_res(ldm_nn_params *P, ldm__vae_res *r, int d, int cin, int cout) {
    ldm_nn_groupnorm_init(P, &r->norm1, "norm1", 32, cin, 1e-6f, 1);
    ldm__vae_conv_init(P, &r->conv1, "conv1", d, cin, cout, 3, 0);
    ldm_nn_groupnorm_init(P, &r->norm2, "norm2", 32, cout, 1e-6f, 1);
    ldm__vae_conv_init(P, &r->conv2, "conv2", d, cout, cout, 3, 0);
    r->has_shortcut = cin != cout;
    if (r->has_shortcut) ldm__vae_conv_init(P, &r->nin_shortcut, "nin_shortcut", d, cin, cout, 1, 0);
}
static void ldm__vae_reg_attn(ldm_nn_params *P, ldm__vae_attn *a, int d, int c) {
    ldm_nn_groupnorm_init(P, &a->norm, "norm", 32, c, 1e-6f, 1);
    ldm__vae_conv_init(P, &a->q, "q", d, c, c, 1, 0);
    ldm__vae_conv_init(P, &a->k, "k", d, c, c, 1, 0);
    ldm__vae_conv_init(P, &a->v, "v", d, c, c, 1, 0);
    ldm__vae_conv_init(P, &a->proj_out, "proj_out", d, c, c, 1, 0);
}
static void ldm__vae_reg_mid(ldm_nn_params *P, ldm__vae_half *h, int d, int c) {
    ldm_nn_push(P, "mid");
    ldm_nn_push(P, "block_1"); ldm__vae_reg_res(P, &h->mid_block_1, d, c, c); ldm_nn_pop(P);
    ldm_nn_push(P, "attn_1"); ldm__vae_reg_attn(P, &h->mid_attn_1, d, c); ldm_nn_pop(P);
    ldm_nn_push(P, "block_2"); ldm__vae_reg_res(P, &h->mid_block_2, d, c, c); ldm_nn_pop(P);
    ldm_nn_pop(P);
}
static int ldm__vae_has_attn(const ldm_vae_config *c, int res) {
    for (int i = 0; i < c->n_attn; i++) if (c->attn_resolutions[i] == res) return 1;
    return 0;
}

static void ldm__vae_register(ldm_vae *v) {
    const ldm_vae_config *c = &v->cfg;
    ldm_nn_params *P = v->P;
    int n = c->n_levels, res = c->resolution, cin = c->ch, d = c->dims == 3 ? 3 : 2;

    ldm_nn_push(P, "encoder");
    ldm__vae_conv_init(P, &v->enc.conv_in, "conv_in", d, c->in_channels, c->ch, 3, 0);
    for (int i = 0; i < n; i++) {
        ldm__vae_level *L = &v->enc.level[i];
        int cout = c->ch * c->ch_mult[i];
        L->n_block = c->num_res_blocks;
        L->n_attn = ldm__vae_has_attn(c, res) ? L->n_block : 0;
        ldm_nn_pushf(P, "down.%d", i);
        for (int j = 0; j < L->n_block; j++) {
            ldm_nn_pushf(P, "block.%d", j); ldm__vae_reg_res(P, &L->block[j], d, cin, cout); ldm_nn_pop(P);
            cin = cout;
        }
        for (int j = 0; j < L->n_attn; j++) { ldm_nn_pushf(P, "attn.%d", j); ldm__vae_reg_attn(P, &L->attn[j], d, cin); ldm_nn_pop(P); }
        L->has_resample = i != n - 1;
        if (L->has_resample) {
            if (c->resamp_with_conv) ldm__vae_conv_init(P, &L->resample, "downsample.conv", d, cin, cin, 3, 1);
            res /= 2;
        }
        ldm_nn_pop(P);
    }
    ldm__vae_reg_mid(P, &v->enc, d, cin);
    ldm_nn_groupnorm_init(P, &v->enc.norm_out, "norm_out", 32, cin, 1e-6f, 1);
    ldm__vae_conv_init(P, &v->enc.conv_out, "conv_out", d, cin, c->double_z ? 2 * c->z_channels : c->z_channels, 3, 0);
    ldm_nn_pop(P);

    /* Decoder: levels are registered 0..n-1 (state-dict order) but run n-1..0; level i's
       input channels are the output channels of level i+1 (or of the mid block). */
    ldm_nn_push(P, "decoder");
    int top = c->ch * c->ch_mult[n - 1];
    ldm__vae_conv_init(P, &v->dec.conv_in, "conv_in", d, c->z_channels, top, 3, 0);
    ldm__vae_reg_mid(P, &v->dec, d, top);
    for (int i = 0; i < n; i++) {
        ldm__vae_level *L = &v->dec.level[i];
        int lres = c->resolution >> i, cout = c->ch * c->ch_mult[i];
        cin = i == n - 1 ? top : c->ch * c->ch_mult[i + 1];
        L->n_block = c->num_res_blocks + 1;
        L->n_attn = ldm__vae_has_attn(c, lres) ? L->n_block : 0;
        ldm_nn_pushf(P, "up.%d", i);
        for (int j = 0; j < L->n_block; j++) {
            ldm_nn_pushf(P, "block.%d", j); ldm__vae_reg_res(P, &L->block[j], d, cin, cout); ldm_nn_pop(P);
            cin = cout;
        }
        for (int j = 0; j < L->n_attn; j++) { ldm_nn_pushf(P, "attn.%d", j); ldm__vae_reg_attn(P, &L->attn[j], d, cout); ldm_nn_pop(P); }
        L->has_resample = i != 0;
        if (L->has_resample && c->resamp_with_conv) ldm__vae_conv_init(P, &L->resample, "upsample.conv", d, cout, cout, 3, 0);
        ldm_nn_pop(P);
    }
    ldm_nn_groupnorm_init(P, &v->dec.norm_out, "norm_out", 32, c->ch * c->ch_mult[0], 1e-6f, 1);
    ldm__vae_conv_init(P, &v->dec.conv_out, "conv_out", d, c->ch * c->ch_mult[0], c->out_ch, 3, 0);
    ldm_nn_pop(P);

    if (c->n_embed > 0) /* VectorQuantizer2's nn.Embedding init; registered where VQModel's state dict has it */
        v->codebook = ldm_nn_param(P, "quantize.embedding.weight", ldm_shape2(c->n_embed, c->embed_dim),
                                   ldm_nn_init_uniform(-1.0f / (float)c->n_embed, 1.0f / (float)c->n_embed));
    int moments = c->n_embed > 0 ? 1 : 2; /* VQ: h itself; KL: mean and logvar */
    ldm__vae_conv_init(P, &v->quant_conv, "quant_conv", d, moments * c->z_channels, moments * c->embed_dim, 1, 0);
    ldm__vae_conv_init(P, &v->post_quant_conv, "post_quant_conv", d, c->embed_dim, c->z_channels, 1, 0);
}

LDM_API ldm_result ldm_vae_create(ldm_ctx *ctx, ldm_vae **out, const ldm_vae_config *cfg) {
    *out = NULL;
    if (ldm_vae_config_check(ctx, cfg)) return ldm_ctx_status(ctx);
    ldm_vae *v = (ldm_vae *)LDM_MALLOC(sizeof *v);
    if (!v) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "AutoencoderKL: out of memory");
    memset(v, 0, sizeof *v);
    v->cfg = *cfg;
    if (v->cfg.dims == 0) v->cfg.dims = 2;
    ldm_result r = ldm_nn_params_create(ctx, &v->P, ldm_ctx_device(ctx));
    if (r) { LDM_FREE(v); return r; }
    ldm__vae_register(v);
    if ((r = ldm_nn_params_alloc(ctx, v->P)) != LDM_OK) { ldm_vae_destroy(v); return r; }
    *out = v;
    return LDM_OK;
}
LDM_API void ldm_vae_destroy(ldm_vae *v) {
    if (!v) return;
    ldm_nn_params_destroy(v->P);
    LDM_FREE(v);
}
LDM_API void ldm_vae_set_training(ldm_vae *v, int on) { v->training = on; }
LDM_API ldm_tensor *ldm_vae_last_layer(ldm_vae *v) { return v->dec.conv_out.weight; }

/* ---- weight layouts ---------------------------------------------------------------------- */
/* Matches s against pat, where '#' stands for a decimal number (stored in num[]); on success
   returns the rest of s after the pattern, else NULL. */
static const char *ldm__vae_match(const char *s, const char *pat, int *num) {
    int k = 0;
    for (; *pat; pat++) {
        if (*pat == '#') {
            if (*s < '0' || *s > '9') return NULL;
            long v = 0;
            while (*s >= '0' && *s <= '9' && v < 100000) v = v * 10 + (*s++ - '0');
            num[k++] = (int)v;
        } else if (*s++ != *pat) {
            return NULL;
        }
    }
    return s;
}

/* Attention sub-module names, diffusers (new and old) -> CompVis. */
static const char *ldm__vae_attn_tail(const char *t, char *tmp, size_t cap) {
    static const char *const map[][2] = {{"group_norm.", "norm."}, {"to_q.", "q."}, {"to_k.", "k."}, {"to_v.", "v."},
                                         {"to_out.0.", "proj_out."}, {"query.", "q."}, {"key.", "k."}, {"value.", "v."},
                                         {"proj_attn.", "proj_out."}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        size_t n = strlen(map[i][0]);
        if (strncmp(t, map[i][0], n) == 0) { snprintf(tmp, cap, "%s%s", map[i][1], t + n); return tmp; }
    }
    return NULL;
}
static const char *ldm__vae_res_tail(const char *t, char *tmp, size_t cap) {
    if (strncmp(t, "conv_shortcut.", 14) == 0) { snprintf(tmp, cap, "nin_shortcut.%s", t + 14); return tmp; }
    return t;
}

LDM_API const char *ldm_vae_name_from_diffusers(const char *name, int n_levels, char *buf, size_t cap) {
    char tail[256];
    int num[4];
    const char *r, *t;
    for (int half = 0; half < 2; half++) {
        const char *hn = half ? "decoder." : "encoder.";
        if (strncmp(name, hn, 8) != 0) continue;
        const char *s = name + 8;
        if ((r = ldm__vae_match(s, half ? "up_blocks.#.resnets.#." : "down_blocks.#.resnets.#.", num))) {
            int lvl = half ? n_levels - 1 - num[0] : num[0];
            snprintf(buf, cap, "%s%s.%d.block.%d.%s", hn, half ? "up" : "down", lvl, num[1], ldm__vae_res_tail(r, tail, sizeof tail));
        } else if ((r = ldm__vae_match(s, half ? "up_blocks.#.attentions.#." : "down_blocks.#.attentions.#.", num))) {
            if (!(t = ldm__vae_attn_tail(r, tail, sizeof tail))) return NULL;
            int lvl = half ? n_levels - 1 - num[0] : num[0];
            snprintf(buf, cap, "%s%s.%d.attn.%d.%s", hn, half ? "up" : "down", lvl, num[1], t);
        } else if (!half && (r = ldm__vae_match(s, "down_blocks.#.downsamplers.0.conv.", num))) {
            snprintf(buf, cap, "%sdown.%d.downsample.conv.%s", hn, num[0], r);
        } else if (half && (r = ldm__vae_match(s, "up_blocks.#.upsamplers.0.conv.", num))) {
            snprintf(buf, cap, "%sup.%d.upsample.conv.%s", hn, n_levels - 1 - num[0], r);
        } else if ((r = ldm__vae_match(s, "mid_block.resnets.#.", num)) && num[0] < 2) {
            snprintf(buf, cap, "%smid.block_%d.%s", hn, num[0] + 1, ldm__vae_res_tail(r, tail, sizeof tail));
        } else if ((r = ldm__vae_match(s, "mid_block.attentions.0.", num))) {
            if (!(t = ldm__vae_attn_tail(r, tail, sizeof tail))) return NULL;
            snprintf(buf, cap, "%smid.attn_1.%s", hn, t);
        } else if ((r = ldm__vae_match(s, "conv_norm_out.", num))) {
            snprintf(buf, cap, "%snorm_out.%s", hn, r);
        } else {
            return name; /* conv_in, conv_out: same names */
        }
        return buf;
    }
    return name; /* quant_conv, post_quant_conv */
}

typedef struct ldm__vae_map { int diffusers, n_levels; } ldm__vae_map;
static const char *ldm__vae_rename(void *user, const char *name, char *buf, size_t cap) {
    const ldm__vae_map *m = (const ldm__vae_map *)user;
    if (strncmp(name, "loss.", 5) == 0) return NULL; /* the training loss's LPIPS/discriminator */
    return m->diffusers ? ldm_vae_name_from_diffusers(name, m->n_levels, buf, cap) : name;
}

/* The codebook against the model before the generic loader runs, so a KL/VQ mix-up or a wrong
   n_embed is named as such. */
static ldm_result ldm__vae_vq_check_file(ldm_ctx *ctx, const ldm_vae *v, ldm_weights *w, const char *path, const char *pfx, int strict) {
    char nm[128];
    snprintf(nm, sizeof nm, "%squantize.embedding.weight", pfx);
    int i = ldm_weights_find(w, nm);
    const ldm_weight_info *inf = i >= 0 ? ldm_weights_info(w, i) : NULL;
    if (!v->codebook && inf && strict)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: holds a VQ codebook %s [%lld, %lld], but the model is an AutoencoderKL "
                              "(hint: set model.params.n_embed to %lld for a VQ first stage)", path, nm, (long long)inf->shape[0],
                              (long long)(inf->ndim > 1 ? inf->shape[1] : 0), (long long)inf->shape[0]);
    if (v->codebook && !inf && strict)
        return ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "%s: no %s (the VQ codebook) in the file (hint: an AutoencoderKL checkpoint "
                              "needs n_embed 0)", path, nm);
    if (v->codebook && inf && (inf->ndim != 2 || inf->shape[0] != v->cfg.n_embed || inf->shape[1] != v->cfg.embed_dim))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: %s is [%lld, %lld] in the file, the model's codebook is [%d, %d] "
                              "(hint: n_embed and embed_dim must be the checkpoint's)", path, nm, (long long)inf->shape[0],
                              (long long)(inf->ndim > 1 ? inf->shape[1] : 0), v->cfg.n_embed, v->cfg.embed_dim);
    return LDM_OK;
}

LDM_API ldm_result ldm_vae_load_ex(ldm_ctx *ctx, ldm_vae *v, const char *path, int strict, ldm_nn_load_report *report) {
    ldm_weights *w;
    ldm_result r = ldm_weights_open(ctx, &w, path);
    if (r) return r;
    static const char *const pfx = "first_stage_model.";
    int n = ldm_weights_count(w), prefixed = 0, diffusers = 0;
    for (int i = 0; i < n; i++) if (strncmp(ldm_weights_info(w, i)->name, pfx, strlen(pfx)) == 0) prefixed = 1;
    for (int i = 0; i < n; i++) {
        const char *nm = ldm_weights_info(w, i)->name;
        if (prefixed && strncmp(nm, pfx, strlen(pfx)) != 0) continue;
        if (strstr(nm, "down_blocks.") || strstr(nm, "up_blocks.") || strstr(nm, "mid_block.")) diffusers = 1;
    }
    if ((r = ldm__vae_vq_check_file(ctx, v, w, path, prefixed ? pfx : "", strict)) != LDM_OK) { ldm_weights_close(w); return r; }
    ldm__vae_map map;
    map.diffusers = diffusers;
    map.n_levels = v->cfg.n_levels;
    ldm_nn_load_opts o;
    memset(&o, 0, sizeof o);
    o.strict = strict;
    o.prefix_strip = prefixed ? pfx : NULL;
    o.rename = ldm__vae_rename;
    o.rename_user = &map;
    o.allow_unit_dims = diffusers;
    o.report = report;
    r = ldm_nn_load_weights(ctx, v->P, w, &o);
    ldm_weights_close(w);
    return r;
}
LDM_API ldm_result ldm_vae_load(ldm_ctx *ctx, ldm_vae *v, const char *path, int strict) {
    return ldm_vae_load_ex(ctx, v, path, strict, NULL);
}
LDM_API ldm_result ldm_vae_save(ldm_ctx *ctx, const ldm_vae *v, const char *path, ldm_dtype dtype) {
    return ldm_nn_save(ctx, v->P, path, dtype, NULL);
}

/* ---- forward ----------------------------------------------------------------------------- */
/* In no-grad mode (inference) the temporaries of each step are dropped as soon as its output
   exists: the output is moved down to the mark (ldm_arena_keep), so peak memory stays at a few
   activations instead of every intermediate of the network. */
static ldm_tensor *ldm__vae_keep(ldm_ctx *ctx, ldm_mark m, ldm_tensor *h) {
    if (!ldm_grad_enabled(ctx) && h && h->device == LDM_CPU) return ldm_arena_keep(ctx, m, h);
    return h;
}
/* ResnetBlock without grad, x a temporary of this forward that starts at mark `at` (on the CPU
   every step's input sits at the forward's base). Bitwise the values of the graph version, in
   less memory and with few copies: each conv(silu(norm(.))) is one ldm_group_norm_silu_conv,
   whose output is allocated before its normalised input, which is freed at once; with a
   shortcut, nin_shortcut(x) is taken first and norm1 then overwrites x, which is dropped once
   conv1 has run (on the CPU, where results move down the arena); the residual is added over
   conv2's output. Peak: x (or the shortcut), conv1's and conv2's outputs and one normalised
   activation. */
static ldm_tensor *ldm__vae_res_infer(ldm_ctx *ctx, const ldm_vae *v, const ldm__vae_res *r, ldm_tensor *x, ldm_mark at) {
    ldm_tensor *s, *h;
    if (r->has_shortcut) {
        s = ldm__vae_conv_fwd(ctx, &r->nin_shortcut, x);
        h = ldm__vae_conv_fwd(ctx, &r->conv1, ldm_group_norm_silu_into(ctx, x, r->norm1.weight, r->norm1.bias, r->norm1.groups, r->norm1.eps));
        if (x && x->device == LDM_CPU && s && h) {            /* [s][h]: x (norm1's output) dropped */
            ldm_tensor hs = *h;                               /* s's move may land on h's struct */
            s = ldm_arena_keep(ctx, at, s);
            h = s ? ldm_arena_keep(ctx, ldm_arena_mark(ctx), &hs) : NULL;
        }
    } else {
        s = x;
        h = ldm__vae_gn_conv_fwd(ctx, &r->norm1, &r->conv1, x);
    }
    if (v->cfg.dropout > 0.0f && v->training)
        h = ldm__vae_conv_fwd(ctx, &r->conv2, ldm_dropout(ctx, ldm_nn_groupnorm_silu_forward(ctx, &r->norm2, h), v->cfg.dropout, 1));
    else
        h = ldm__vae_gn_conv_fwd(ctx, &r->norm2, &r->conv2, h);
    return ldm_add_into(ctx, h, s);                           /* s + h, as the graph adds it */
}
static ldm_tensor *ldm__vae_res_fwd(ldm_ctx *ctx, const ldm_vae *v, const ldm__vae_res *r, ldm_tensor *x, ldm_mark at) {
    if (!ldm_grad_enabled(ctx)) return ldm__vae_res_infer(ctx, v, r, x, at);
    /* With grad: the convolutions' inputs (the normalised activations) are recomputed in the
       backward pass rather than kept, and the residual is added over conv2's fresh output, so
       the tape keeps x, conv1's output and the sum (PyTorch keeps two more). */
    ldm_tensor *h = ldm__vae_gn_conv_fwd(ctx, &r->norm1, &r->conv1, x);
    if (v->cfg.dropout > 0.0f && v->training)
        h = ldm__vae_conv_fwd(ctx, &r->conv2, ldm_dropout(ctx, ldm_nn_groupnorm_silu_forward(ctx, &r->norm2, h), v->cfg.dropout, 1));
    else
        h = ldm__vae_gn_conv_fwd(ctx, &r->norm2, &r->conv2, h);
    return ldm_add_into(ctx, h, r->has_shortcut ? ldm__vae_conv_fwd(ctx, &r->nin_shortcut, x) : x);
}
/* A 1x1 conv applied token-major: x [B, S, C] times the weight [O, C, 1, 1(, 1)] seen as [O, C]. */
static ldm_tensor *ldm__vae_pointwise(ldm_ctx *ctx, const ldm__vae_conv *c, ldm_tensor *x) {
    return ldm_linear(ctx, x, ldm_reshape(ctx, c->weight, ldm_shape2(c->out, c->in)), c->bias);
}
/* AttnBlock: single-head self-attention over the H*W (3-D: T*H*W) positions. The normalised
   input is transposed once to [B, S, C]; q, k, v and proj_out (1x1 convs) run as linears on
   it and ldm_attention never holds the S x S weights, in training and inference alike. */
static ldm_tensor *ldm__vae_attn_fwd(ldm_ctx *ctx, const ldm__vae_attn *a, ldm_tensor *x) {
    if (!x) return NULL;
    int64_t B = x->shape[0], C = x->shape[1], S = 1;
    for (int i = 2; i < x->ndim; i++) S *= x->shape[i];
    const int tr[3] = {0, 2, 1};
    ldm_tensor *h = ldm_nn_groupnorm_forward(ctx, &a->norm, x);
    h = ldm_permute(ctx, ldm_reshape(ctx, h, ldm_shape3(B, C, S)), tr); /* [B, S, C] */
    ldm_tensor *q = ldm__vae_pointwise(ctx, &a->q, h), *k = ldm__vae_pointwise(ctx, &a->k, h);
    ldm_tensor *v = ldm__vae_pointwise(ctx, &a->v, h);
    ldm_tensor *o = ldm__vae_pointwise(ctx, &a->proj_out, ldm_attention(ctx, q, k, v, 1, (float)pow((double)C, -0.5)));
    o = ldm_reshape(ctx, ldm_permute(ctx, o, tr), ldm_shape_of(x));
    return ldm_add(ctx, x, o);
}

static const char *ldm__vae_sp(const ldm_vae *v) { return v->cfg.dims == 3 ? "T, H, W" : "H, W"; }

/* One step of a forward pass: h = expr(h). Without grad the result replaces the step's input
   at `base` (a mark taken after the forward's own input), so memory stays bounded. */
#define LDM__VAE_STEP(expr) do { h = ldm__vae_keep(ctx, base, (expr)); } while (0)

static ldm_tensor *ldm__vae_mid(ldm_ctx *ctx, const ldm_vae *v, const ldm__vae_half *hf, ldm_tensor *h, ldm_mark base) {
    LDM__VAE_STEP(ldm__vae_res_fwd(ctx, v, &hf->mid_block_1, h, base));
    LDM__VAE_STEP(ldm__vae_attn_fwd(ctx, &hf->mid_attn_1, h));
    LDM__VAE_STEP(ldm__vae_res_fwd(ctx, v, &hf->mid_block_2, h, base));
    return h;
}
static ldm_tensor *ldm__vae_out(ldm_ctx *ctx, const ldm__vae_half *hf, ldm_tensor *h) {
    if (!ldm_grad_enabled(ctx)) return ldm__vae_conv_fwd(ctx, &hf->conv_out, ldm_nn_groupnorm_silu_forward(ctx, &hf->norm_out, h));
    return ldm__vae_gn_conv_fwd(ctx, &hf->norm_out, &hf->conv_out, h);
}

LDM_API ldm_tensor *ldm_vae_encoder_forward(ldm_ctx *ctx, ldm_vae *v, ldm_tensor *x) {
    if (!x || ldm_ctx_status(ctx)) return NULL;
    if (x->ndim != v->cfg.dims + 2 || x->shape[1] != v->cfg.in_channels) {
        char b[64];
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "AutoencoderKL encoder: input %s, expected [B, %d, %s] (dims %d)", ldm_shape_str(x, b, sizeof b),
                       v->cfg.in_channels, ldm__vae_sp(v), v->cfg.dims);
        return NULL;
    }
    ldm_tensor *h;
    ldm_mark base = ldm_arena_mark(ctx);
    LDM__VAE_STEP(ldm__vae_conv_fwd(ctx, &v->enc.conv_in, x));
    for (int i = 0; i < v->cfg.n_levels; i++) {
        const ldm__vae_level *L = &v->enc.level[i];
        for (int j = 0; j < L->n_block; j++) {
            LDM__VAE_STEP(ldm__vae_res_fwd(ctx, v, &L->block[j], h, base));
            if (L->n_attn) LDM__VAE_STEP(ldm__vae_attn_fwd(ctx, &L->attn[j], h));
        }
        if (L->has_resample)
            LDM__VAE_STEP(v->cfg.resamp_with_conv ? ldm__vae_conv_fwd(ctx, &L->resample, h) : ldm_avg_pool(ctx, h, 2, 2, 0));
    }
    h = ldm__vae_mid(ctx, v, &v->enc, h, base);
    LDM__VAE_STEP(ldm__vae_out(ctx, &v->enc, h));
    return h;
}

LDM_API ldm_tensor *ldm_vae_decoder_forward(ldm_ctx *ctx, ldm_vae *v, ldm_tensor *z) {
    if (!z || ldm_ctx_status(ctx)) return NULL;
    if (z->ndim != v->cfg.dims + 2 || z->shape[1] != v->cfg.z_channels) {
        char b[64];
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "AutoencoderKL decoder: input %s, expected [B, %d, %s] (dims %d)", ldm_shape_str(z, b, sizeof b),
                       v->cfg.z_channels, ldm__vae_sp(v), v->cfg.dims);
        return NULL;
    }
    ldm_tensor *h;
    ldm_mark base = ldm_arena_mark(ctx);
    LDM__VAE_STEP(ldm__vae_conv_fwd(ctx, &v->dec.conv_in, z));
    h = ldm__vae_mid(ctx, v, &v->dec, h, base);
    for (int i = v->cfg.n_levels - 1; i >= 0; i--) {
        const ldm__vae_level *L = &v->dec.level[i];
        for (int j = 0; j < L->n_block; j++) {
            LDM__VAE_STEP(ldm__vae_res_fwd(ctx, v, &L->block[j], h, base));
            if (L->n_attn) LDM__VAE_STEP(ldm__vae_attn_fwd(ctx, &L->attn[j], h));
        }
        if (L->has_resample) {
            LDM__VAE_STEP(ldm_upsample_nearest(ctx, h, v->cfg.dims == 3 ? 2 : 1, 2, 2));
            if (v->cfg.resamp_with_conv) LDM__VAE_STEP(ldm__vae_conv_fwd(ctx, &L->resample, h));
        }
    }
    LDM__VAE_STEP(ldm__vae_out(ctx, &v->dec, h));
    return v->cfg.tanh_out ? ldm_tanh(ctx, h) : h;
}

LDM_API ldm_result ldm_vae_posterior_from_moments(ldm_ctx *ctx, ldm_tensor *moments, ldm_vae_posterior *q) {
    ldm_tensor *part[2] = {NULL, NULL};
    q->mean = q->logvar = NULL;
    if (!moments) return ldm_ctx_status(ctx) ? ldm_ctx_status(ctx) : ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "posterior: NULL moments");
    if (ldm_chunk(ctx, moments, 2, 1, part)) return ldm_ctx_status(ctx);
    q->mean = part[0];
    q->logvar = ldm_clamp(ctx, part[1], -30.0f, 20.0f);
    return ldm_ctx_status(ctx);
}
LDM_API ldm_result ldm_vae_encode(ldm_ctx *ctx, ldm_vae *v, ldm_tensor *x, ldm_vae_posterior *q) {
    if (v->codebook) { /* VQ: the deterministic latent h (see the top) */
        q->logvar = NULL;
        q->mean = ldm_vae_vq_encode(ctx, v, x);
        return q->mean ? LDM_OK : ldm_ctx_status(ctx);
    }
    return ldm_vae_posterior_from_moments(ctx, ldm__vae_conv_fwd(ctx, &v->quant_conv, ldm_vae_encoder_forward(ctx, v, x)), q);
}
LDM_API ldm_tensor *ldm_vae_decode(ldm_ctx *ctx, ldm_vae *v, ldm_tensor *z) {
    if (v->codebook) return ldm_vae_vq_decode(ctx, v, z, 0); /* VQModelInterface.decode quantizes */
    if (z && (z->ndim != v->cfg.dims + 2 || z->shape[1] != v->cfg.embed_dim)) {
        char b[64];
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "AutoencoderKL decode: latent %s, expected [B, %d, %s] (embed_dim %d, dims %d)",
                       ldm_shape_str(z, b, sizeof b), v->cfg.embed_dim, ldm__vae_sp(v), v->cfg.embed_dim, v->cfg.dims);
        return NULL;
    }
    return ldm_vae_decoder_forward(ctx, v, ldm__vae_conv_fwd(ctx, &v->post_quant_conv, z));
}
LDM_API ldm_tensor *ldm_vae_posterior_sample(ldm_ctx *ctx, const ldm_vae_posterior *q, ldm_tensor *eps) {
    if (q->mean && !q->logvar) return q->mean; /* a VQ model's latent is deterministic */
    if (!q->mean || !q->logvar) return NULL;
    if (!eps) eps = ldm_randn(ctx, ldm_shape_of(q->mean));
    return ldm_add(ctx, q->mean, ldm_mul(ctx, ldm_exp(ctx, ldm_scale(ctx, q->logvar, 0.5f)), eps));
}
LDM_API ldm_tensor *ldm_vae_posterior_mode(const ldm_vae_posterior *q) { return q->mean; }
/* the dims DiagonalGaussianDistribution sums over: C,H,W (3-D: C,T,H,W) */
static unsigned ldm__vae_nonbatch(const ldm_tensor *t) {
    unsigned m = 0;
    for (int i = 1; t && i < t->ndim; i++) m |= LDM_DIM(i);
    return m;
}
static ldm_tensor *ldm__vae_no_logvar(ldm_ctx *ctx, const ldm_vae_posterior *q, const char *what) {
    if (q->mean && !ldm_ctx_status(ctx))
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "posterior %s: no logvar (a VQ first stage's latent is deterministic; hint: KL/NLL need an AutoencoderKL)", what);
    return NULL;
}
LDM_API ldm_tensor *ldm_vae_posterior_kl(ldm_ctx *ctx, const ldm_vae_posterior *q) {
    if (!q->logvar) return ldm__vae_no_logvar(ctx, q, "kl");
    ldm_tensor *t = ldm_add(ctx, ldm_square(ctx, q->mean), ldm_exp(ctx, q->logvar));
    t = ldm_sub(ctx, ldm_add_scalar(ctx, t, -1.0f), q->logvar);
    return ldm_scale(ctx, ldm_sum(ctx, t, ldm__vae_nonbatch(t), 0), 0.5f);
}
LDM_API ldm_tensor *ldm_vae_posterior_nll(ldm_ctx *ctx, const ldm_vae_posterior *q, ldm_tensor *x) {
    if (!q->logvar) return ldm__vae_no_logvar(ctx, q, "nll");
    ldm_tensor *d = ldm_sub(ctx, x, q->mean);
    ldm_tensor *t = ldm_add(ctx, ldm_add_scalar(ctx, q->logvar, (float)log(2.0 * 3.14159265358979323846)),
                            ldm_div(ctx, ldm_square(ctx, d), ldm_exp(ctx, q->logvar)));
    return ldm_scale(ctx, ldm_sum(ctx, t, ldm__vae_nonbatch(t), 0), 0.5f);
}
LDM_API ldm_tensor *ldm_vae_forward(ldm_ctx *ctx, ldm_vae *v, ldm_tensor *x, int sample_posterior, ldm_vae_posterior *qout) {
    ldm_vae_posterior q;
    if (ldm_vae_encode(ctx, v, x, &q)) return NULL;
    if (qout) *qout = q;
    return ldm_vae_decode(ctx, v, sample_posterior ? ldm_vae_posterior_sample(ctx, &q, NULL) : q.mean);
}

/* ---- tiled inference --------------------------------------------------------------------- */
/* Tile starts along one axis of n input units: step tile-overlap, the last tile flush with
   the end. Returns the count (at most cap). */
static int ldm__vae_tiles(int64_t n, int64_t tile, int64_t overlap, int64_t *start, int cap) {
    int k = 0;
    if (tile >= n) { start[0] = 0; return 1; }
    int64_t step = tile - overlap;
    for (int64_t s = 0; k < cap - 1; s += step) {
        if (s + tile >= n) break;
        start[k++] = s;
    }
    start[k++] = n - tile;
    return k;
}
/* Blend weight of output position p in a tile [s, s+len) of an axis of size n: a raised
   cosine over `ov` positions at every edge that is not the image border, 1 elsewhere. */
static float ldm__vae_ramp(int64_t p, int64_t s, int64_t len, int64_t n, int64_t ov) {
    const double pi = 3.14159265358979323846;
    double w = 1.0;
    if (ov <= 0) return 1.0f;
    if (s > 0 && p < ov) w *= 0.5 - 0.5 * cos(pi * ((double)p + 0.5) / (double)ov);
    if (s + len < n && p >= len - ov) w *= 0.5 - 0.5 * cos(pi * ((double)(len - p) - 0.5) / (double)ov);
    return (float)w;
}

typedef ldm_tensor *(*ldm__vae_fn)(ldm_ctx *ctx, ldm_vae *v, ldm_tensor *x);
static ldm_tensor *ldm__vae_enc_moments(ldm_ctx *ctx, ldm_vae *v, ldm_tensor *x) {
    return ldm__vae_conv_fwd(ctx, &v->quant_conv, ldm_vae_encoder_forward(ctx, v, x));
}

/* Runs fn over x in batch chunks and tiles and blends the results. up > 0: outputs are `up`
   times larger than inputs (decoding); up < 0: `-up` times smaller (encoding). Images tile
   over H, W and volumes over T, H, W (cubes of the same size); internally both use three
   axes, an image's first one of size 1. */
static ldm_tensor *ldm__vae_tiled(ldm_ctx *ctx, ldm_vae *v, ldm_tensor *x, const ldm_vae_infer *opt, ldm__vae_fn fn,
                                  int out_ch, int up) {
    if (!x || ldm_ctx_status(ctx)) return NULL;
    int nd = v->cfg.dims == 3 ? 3 : 2, off = 3 - nd;
    if (x->ndim != nd + 2) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "AutoencoderKL: expected a %d-D %s input", nd + 2, nd == 3 ? "[B, C, T, H, W]" : "[B, C, H, W]");
        return NULL;
    }
    int f = ldm_vae_factor(&v->cfg);
    int64_t B = x->shape[0], S[3], OS[3], smax = 0;
    for (int a = 0; a < 3; a++) {
        S[a] = a < off ? 1 : x->shape[2 + a - off];
        OS[a] = up > 0 ? S[a] * up : S[a] / -up;
        if (a >= off) smax = LDM__VAE_MAX(smax, S[a]);
    }
    if (off) OS[0] = 1;
    int64_t nb = opt && opt->batch > 0 ? opt->batch : B;
    /* tile and overlap in input units */
    int64_t ti = 0, oi = 0;
    if (opt && opt->tile > 0) {
        ti = up > 0 ? opt->tile / f : opt->tile / f * f;
        oi = opt->overlap > 0 ? (up > 0 ? opt->overlap / f : opt->overlap / f * f) : (up > 0 ? ti / 4 : ti / 4 / f * f);
        if (ti < (up > 0 ? 1 : f) || oi >= ti) {
            ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "AutoencoderKL: tile %d / overlap %d pixels do not make tiles for f = %d (hint: tile >= %d, overlap < tile)",
                           opt->tile, opt->overlap, f, 2 * f);
            return NULL;
        }
        for (int a = off; a < 3; a++)
            if (up < 0 && S[a] % f) {
                ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "AutoencoderKL: tiled encoding needs %s divisible by %d, got %lld", nd == 3 ? "T, H and W" : "H and W",
                               f, (long long)S[a]);
                return NULL;
            }
    }
    int fits = 1;
    for (int a = off; a < 3; a++) fits = fits && ti >= S[a];
    if (ti <= 0 || fits) ti = smax, oi = 0;
    for (int a = off; a < 3; a++)
        if (ti < S[a] && (S[a] - ti) / (ti - oi) + 2 > 512) {
            ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "AutoencoderKL: more than 512 tiles per side (hint: a larger tile)");
            return NULL;
        }
    int64_t st[3][512];
    int n[3];
    for (int a = 0; a < 3; a++) {
        if (a < off) { st[a][0] = 0; n[a] = 1; }
        else n[a] = ldm__vae_tiles(S[a], LDM__VAE_MIN(ti, S[a]), oi, st[a], 512);
    }
    if (n[0] == 1 && n[1] == 1 && n[2] == 1 && nb >= B) { /* one piece: fn's result as it is, on x's device */
        int prev = ldm_set_grad_enabled(ctx, 0);
        ldm_tensor *o = fn(ctx, v, x);
        ldm_set_grad_enabled(ctx, prev);
        return o;
    }
    /* Tiles and chunks are blended on the host: the output is assembled in CPU memory and
       copied to x's device at the end. */
    int64_t oplane = OS[0] * OS[1] * OS[2];
    float *acc = (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * (size_t)(B * out_ch * oplane));
    float *wsum = (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * (size_t)oplane);
    if (!acc || !wsum) return NULL;
    memset(acc, 0, sizeof(float) * (size_t)(B * out_ch * oplane));
    memset(wsum, 0, sizeof(float) * (size_t)oplane);
    int prev = ldm_set_grad_enabled(ctx, 0);
    int64_t ovo = up > 0 ? oi * up : oi / -up; /* the overlap in output units */
    for (int64_t b0 = 0; b0 < B && !ldm_ctx_status(ctx); b0 += nb) {
        int64_t bn = LDM__VAE_MIN(nb, B - b0);
        for (int k = 0; k < n[0] * n[1] * n[2] && !ldm_ctx_status(ctx); k++) {
            int ix[3] = {k / (n[1] * n[2]), k / n[2] % n[1], k % n[2]};
            ldm_mark m = ldm_arena_mark(ctx);
            ldm_tensor *in = x;
            if (bn != B) in = ldm_slice(ctx, in, 0, b0, bn);
            for (int a = off; a < 3; a++)
                if (LDM__VAE_MIN(ti, S[a]) != S[a]) in = ldm_slice(ctx, in, 2 + a - off, st[a][ix[a]], ti);
            ldm_tensor *o = fn(ctx, v, in);
            float *host = o ? (float *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(float) * (size_t)o->numel) : NULL;
            if (!host || ldm_to_host(ctx, o, host)) { ldm_arena_rewind(ctx, m); break; }
            int64_t os[3], oo[3];
            for (int a = 0; a < 3; a++) {
                os[a] = a < off ? 1 : o->shape[2 + a - off];
                oo[a] = up > 0 ? st[a][ix[a]] * up : st[a][ix[a]] / -up;
            }
            for (int64_t zz = 0; zz < os[0]; zz++) {
                float wz = ldm__vae_ramp(zz, oo[0], os[0], OS[0], n[0] > 1 ? ovo : 0);
                for (int64_t yy = 0; yy < os[1]; yy++) {
                    float wy = wz * ldm__vae_ramp(yy, oo[1], os[1], OS[1], n[1] > 1 ? ovo : 0);
                    for (int64_t xx = 0; xx < os[2]; xx++) {
                        float wgt = wy * ldm__vae_ramp(xx, oo[2], os[2], OS[2], n[2] > 1 ? ovo : 0);
                        int64_t pix = ((oo[0] + zz) * OS[1] + oo[1] + yy) * OS[2] + oo[2] + xx;
                        int64_t src = (zz * os[1] + yy) * os[2] + xx, tplane = os[0] * os[1] * os[2];
                        if (b0 == 0) wsum[pix] += wgt;
                        for (int64_t bc = 0; bc < bn * out_ch; bc++)
                            acc[(b0 * out_ch + bc) * oplane + pix] += wgt * host[bc * tplane + src];
                    }
                }
            }
            ldm_arena_rewind(ctx, m);
        }
    }
    ldm_set_grad_enabled(ctx, prev);
    if (ldm_ctx_status(ctx)) return NULL;
    for (int64_t i = 0; i < B * out_ch; i++)
        for (int64_t p = 0; p < oplane; p++) acc[i * oplane + p] /= wsum[p];
    ldm_shape os = ldm_shape_of(x);
    os.d[1] = out_ch;
    for (int a = off; a < 3; a++) os.d[2 + a - off] = OS[a];
    return ldm_from_host(ctx, os, acc);
}

LDM_API ldm_result ldm_vae_encode_infer(ldm_ctx *ctx, ldm_vae *v, ldm_tensor *x, const ldm_vae_infer *opt, ldm_vae_posterior *q) {
    q->mean = q->logvar = NULL;
    if (x && (x->ndim != v->cfg.dims + 2 || x->shape[1] != v->cfg.in_channels)) {
        char b[64];
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "AutoencoderKL encode: input %s, expected [B, %d, %s] (dims %d)", ldm_shape_str(x, b, sizeof b),
                              v->cfg.in_channels, ldm__vae_sp(v), v->cfg.dims);
    }
    int f = ldm_vae_factor(&v->cfg);
    if (x && (x->shape[2] % f || x->shape[3] % f || (x->ndim == 5 && x->shape[4] % f)) && opt && opt->tile > 0)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "AutoencoderKL: tiled encoding needs %s divisible by %d", v->cfg.dims == 3 ? "T, H and W" : "H and W", f);
    ldm_tensor *mom = ldm__vae_tiled(ctx, v, x, opt, ldm__vae_enc_moments, (v->codebook ? 1 : 2) * v->cfg.embed_dim, -f);
    if (v->codebook) { q->mean = mom; return mom ? LDM_OK : ldm_ctx_status(ctx); } /* VQ: h, not quantized */
    int prev = ldm_set_grad_enabled(ctx, 0);
    ldm_result r = ldm_vae_posterior_from_moments(ctx, mom, q);
    ldm_set_grad_enabled(ctx, prev);
    return r;
}
LDM_API ldm_tensor *ldm_vae_decode_infer(ldm_ctx *ctx, ldm_vae *v, ldm_tensor *z, const ldm_vae_infer *opt) {
    if (z && (z->ndim != v->cfg.dims + 2 || z->shape[1] != v->cfg.embed_dim)) {
        char b[64];
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "AutoencoderKL decode: latent %s, expected [B, %d, %s] (dims %d)", ldm_shape_str(z, b, sizeof b),
                       v->cfg.embed_dim, ldm__vae_sp(v), v->cfg.dims);
        return NULL;
    }
    return ldm__vae_tiled(ctx, v, z, opt, ldm_vae_decode, v->cfg.out_ch, ldm_vae_factor(&v->cfg));
}

/* ---- VQ first stage ---------------------------------------------------------------------- */
LDM_API int ldm_vae_is_vq(const ldm_vae *v) { return v && v->codebook != NULL; }

static int ldm__vae_vq_need(ldm_ctx *ctx, const ldm_vae *v, const char *fn) {
    if (ldm_ctx_status(ctx)) return 0;
    if (v->codebook) return 1;
    ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: the model has no codebook (n_embed 0: an AutoencoderKL; hint: model.params.n_embed > 0 "
                   "builds the VQ first stage)", fn);
    return 0;
}
static int ldm__vae_vq_latent_ok(ldm_ctx *ctx, const ldm_vae *v, const ldm_tensor *h, const char *fn) {
    if (!h || !ldm__vae_vq_need(ctx, v, fn)) return 0;
    if (h->ndim == 4 && h->shape[1] == v->cfg.embed_dim) return 1;
    char b[64];
    ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: latent %s, expected [B, %d, h, w] (embed_dim %d)", fn, ldm_shape_str(h, b, sizeof b),
                   v->cfg.embed_dim, v->cfg.embed_dim);
    return 0;
}

LDM_API ldm_tensor *ldm_vae_vq_encode(ldm_ctx *ctx, ldm_vae *v, ldm_tensor *x) {
    if (!ldm__vae_vq_need(ctx, v, "VQModel encode")) return NULL;
    return ldm__vae_enc_moments(ctx, v, x);
}

LDM_API ldm_tensor *ldm_vae_vq_quantize(ldm_ctx *ctx, ldm_vae *v, ldm_tensor *h, int64_t *indices) {
    if (!ldm__vae_vq_latent_ok(ctx, v, h, "VQModel quantize")) return NULL;
    int64_t B = h->shape[0], E = h->shape[1], H = h->shape[2], W = h->shape[3], N = B * H * W, K = v->cfg.n_embed;
    int64_t *idx = indices ? indices : (int64_t *)ldm_arena_alloc(ctx, LDM_CPU, sizeof(int64_t) * (size_t)(N ? N : 1));
    if (!idx) return NULL;
    /* Nearest codebook rows: VectorQuantizer2's d = sum(z^2) + sum(e^2) - 2 z e^T in its order
       of operations, over row blocks so that d stays under 4M floats; grad off and rewound
       (the indices are integers, nothing to differentiate). */
    int prev = ldm_set_grad_enabled(ctx, 0);
    ldm_mark m = ldm_arena_mark(ctx);
    static const int to_bhwc[4] = {0, 2, 3, 1};
    ldm_tensor *z = ldm_reshape(ctx, ldm_permute(ctx, h, to_bhwc), ldm_shape2(N, E));   /* z_flattened */
    ldm_tensor *ee = ldm_sum(ctx, ldm_square(ctx, v->codebook), LDM_DIM(1), 0);         /* [K] */
    int64_t rows = LDM__VAE_MAX(((int64_t)4 << 20) / K, 1);
    for (int64_t r0 = 0; z && ee && r0 < N && !ldm_ctx_status(ctx); r0 += rows) {
        ldm_mark mr = ldm_arena_mark(ctx);
        ldm_tensor *zc = ldm_slice(ctx, z, 0, r0, LDM__VAE_MIN(rows, N - r0));
        ldm_tensor *zz = ldm_sum(ctx, ldm_square(ctx, zc), LDM_DIM(1), 1);                /* [n, 1] */
        ldm_tensor *ze = ldm_matmul(ctx, zc, v->codebook, 0, 1);                          /* [n, K] */
        ldm_tensor *d = ldm_sub(ctx, ldm_add(ctx, zz, ee), ldm_scale(ctx, ze, 2.0f));
        if (d) ldm_argmin(ctx, d, idx + r0);
        ldm_arena_rewind(ctx, mr);
    }
    ldm_arena_rewind(ctx, m);
    ldm_set_grad_enabled(ctx, prev);
    if (ldm_ctx_status(ctx)) return NULL;
    /* z_q = z + (z_q - z).detach(): the same float values as taming's output, and the gradient
       goes straight through to h */
    ldm_tensor *zq = ldm_vae_vq_embed_code(ctx, v, idx, B, H, W);
    return ldm_add(ctx, h, ldm_detach(ctx, ldm_sub(ctx, zq, h)));
}

LDM_API ldm_tensor *ldm_vae_vq_embed_code(ldm_ctx *ctx, ldm_vae *v, const int64_t *indices, int64_t B, int64_t H, int64_t W) {
    if (!ldm__vae_vq_need(ctx, v, "VQModel embed_code")) return NULL;
    if (!indices || B < 1 || H < 1 || W < 1) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "VQModel embed_code: %s indices for a [%lld, %lld, %lld] latent", indices ? "need" : "NULL",
                       (long long)B, (long long)H, (long long)W);
        return NULL;
    }
    static const int to_bchw[4] = {0, 3, 1, 2};
    ldm_tensor *e = ldm_embedding(ctx, v->codebook, B * H * W, indices);                  /* [B*h*w, E], checks the range */
    return ldm_permute(ctx, ldm_reshape(ctx, e, ldm_shape4(B, H, W, v->cfg.embed_dim)), to_bchw);
}

LDM_API ldm_tensor *ldm_vae_vq_decode(ldm_ctx *ctx, ldm_vae *v, ldm_tensor *h, int force_not_quantize) {
    if (!ldm__vae_vq_latent_ok(ctx, v, h, "VQModel decode")) return NULL;
    ldm_tensor *q = force_not_quantize ? h : ldm_vae_vq_quantize(ctx, v, h, NULL);
    return ldm_vae_decoder_forward(ctx, v, ldm__vae_conv_fwd(ctx, &v->post_quant_conv, q));
}

LDM_API ldm_tensor *ldm_vae_vq_decode_code(ldm_ctx *ctx, ldm_vae *v, const int64_t *indices, int64_t B, int64_t H, int64_t W) {
    return ldm_vae_vq_decode(ctx, v, ldm_vae_vq_embed_code(ctx, v, indices, B, H, W), 1);
}

#ifdef LDM_CONFIG_H
LDM_CONFIG_DEFINE(ldm_vae_ddconfig, LDM_VAE_DDCONFIG_KEYS)

LDM_API ldm_result ldm_vae_config_read(ldm_config *cfg, const ldm_config_node *node, ldm_vae_config *out) {
    static const char *const where[] = {"", "params", "model.params"};
    const ldm_config_node *params = NULL, *dd = NULL;
    if (!node) node = ldm_config_root(cfg);
    for (int i = 0; i < 3 && !dd; i++) {
        params = i ? ldm_config_find(node, where[i]) : node;
        dd = params ? ldm_config_find(params, "ddconfig") : NULL;
    }
    if (!dd) {
        char path[256];
        return ldm_config_seterr(cfg, LDM_ERR_NOT_FOUND, "%s:%d: no ddconfig under '%s' (expected model.params.ddconfig and model.params.embed_dim, "
                                 "or ddconfig and embed_dim at the top)", node->file ? node->file : "<config>", node->line,
                                 ldm_config_path(node, path, sizeof path));
    }
    ldm_vae_ddconfig d;
    ldm_result r = ldm_vae_ddconfig_load(cfg, dd, &d);
    int embed = 0;
    if (!r) r = ldm_config_get_int(cfg, params, "embed_dim", -1, &embed);
    int n_embed = 0;
    if (!r) r = ldm_config_get_int(cfg, params, "n_embed", 0, &n_embed);
    if (r) return r;
    if (n_embed < 0)
        return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: n_embed = %d must be positive (a VQ first stage) or absent (AutoencoderKL)",
                                 params->file ? params->file : "<config>", params->line, n_embed);
    if (embed <= 0)
        return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: embed_dim is missing or not positive (next to ddconfig)", dd->file ? dd->file : "<config>", dd->line);
    if (d.ch_mult.n < 1 || d.ch_mult.n > LDM_VAE_MAX_LEVELS || d.attn_resolutions.n > LDM_VAE_MAX_LEVELS)
        return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s:%d: ch_mult needs 1 to %d entries and attn_resolutions at most %d",
                                 dd->file ? dd->file : "<config>", dd->line, LDM_VAE_MAX_LEVELS, LDM_VAE_MAX_LEVELS);
    memset(out, 0, sizeof *out);
    out->double_z = d.double_z; out->z_channels = d.z_channels; out->resolution = d.resolution;
    out->in_channels = d.in_channels; out->out_ch = d.out_ch; out->ch = d.ch;
    out->n_levels = d.ch_mult.n;
    for (int i = 0; i < d.ch_mult.n; i++) out->ch_mult[i] = d.ch_mult.v[i];
    out->n_attn = d.attn_resolutions.n;
    for (int i = 0; i < d.attn_resolutions.n; i++) out->attn_resolutions[i] = d.attn_resolutions.v[i];
    out->num_res_blocks = d.num_res_blocks; out->dropout = (float)d.dropout;
    out->resamp_with_conv = d.resamp_with_conv; out->tanh_out = d.tanh_out; out->embed_dim = embed;
    out->n_embed = n_embed; out->dims = d.dims;
    return LDM_OK;
}
#endif

#endif /* LDM_VAE_IMPLEMENTATION_DONE */
#endif /* LDM_IMPLEMENTATION || LDM_VAE_IMPLEMENTATION */
