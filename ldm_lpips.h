/* ldm_lpips.h - LPIPS perceptual distance (VGG16), the PatchGAN discriminator, the
   autoencoder's LPIPSWithDiscriminator loss, and image metrics (PSNR, SSIM, LPIPS) for ldm.h
   (latent diffusion in C).                                                   v0.1

   Do this in exactly one C or C++ file before including it:
       #define LDM_IMPLEMENTATION          (every ldm_ header)
   ldm_lpips.h includes ldm_nn.h and ldm_tensor.h (the autoencoder is the caller's: the loss
   takes the posterior's KL divergence, not the posterior).

   Example: one training iteration of an AutoencoderKL with its loss (latent-diffusion's
   AutoencoderKL.training_step for optimizer 0 and 1).

       ldm_lpips_loss *L;  ldm_lpips_loss_config lc = ldm_lpips_loss_defaults();
       lc.disc_start = 50001; lc.kl_weight = 1e-6; lc.disc_weight = 0.5;
       if (ldm_lpips_loss_create(ctx, &L, &lc) ||
           ldm_lpips_loss_load_lpips(ctx, L, "lpips_vgg.safetensors", NULL)) { ...error... }
       const char *note;
       if (ldm_lpips_loss_ready(ctx, L, &note)) { ...error (no LPIPS weights)... }
       if (note) puts(note);                             // said once, at the start
       const char *d_only = "discriminator";             // logvar is in no optimizer
       ldm_nn_optim_create(ctx, &opt_d, L->P, &adam, 1, &d_only);
       ldm_loss_log log;
       ldm_tensor *xrec = ldm_vae_forward(ctx, vae, x, 1, &q);
       ldm_tensor *kl = ldm_vae_posterior_kl(ctx, &q);
       ldm_tensor *lg = ldm_lpips_loss_generator(ctx, L, x, xrec, kl, step, ldm_vae_last_layer(vae), "train", &log);
       ldm_backward(ctx, lg);  ...step the autoencoder's optimizer...
       xrec = ldm_vae_forward(ctx, vae, x, 1, &q);      // Lightning runs the model again
       ldm_tensor *ld = ldm_lpips_loss_discriminator(ctx, L, x, xrec, step, "train", &log);
       ldm_backward(ctx, ld);  ...step opt_d...
       ldm_lpips_loss_destroy(L);

   Shape legend: B batch, C channels (3), H, W image size, T depth of volumes.
       images x, xrec [B, 3, H, W] in [-1, 1]; LPIPS value [B, 1, 1, 1];
       discriminator logits [B, 1, H', W'] (H' = H/8 - 2 for n_layers 3);
       volumes (disc_dims 3) x, xrec [B, C, T, H, W] -> logits [B, 1, T', H', W'].

   LPIPS (taming/modules/losses/lpips.py, the PerceptualSimilarity v0.1 "vgg" model):
       x -> (x - shift) / scale, shift = (-.030, -.088, -.188), scale = (.458, .448, .450);
       VGG16 `features` cut after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (slices [0:4],
       [4:9], [9:16], [16:23], [23:30]: 3x3 convs with padding 1 + ReLU, 2x2 max pools between);
       per tap f / (sqrt(sum_c f^2) + 1e-10) for both images, d = (f0 - f1)^2, lin_k = 1x1 conv
       to one channel without bias, spatial mean, sum over the five taps.
       Parameter names as taming's module: net.slice1.0.weight ... net.slice5.28.bias,
       lin0.model.1.weight ... lin4.model.1.weight, buffers scaling_layer.shift / .scale.
       Every LPIPS tensor is frozen (its own registry, no gradient memory); the backward pass
       into BOTH images is exact.
   Weights: ldm_lpips_load takes one or two files (safetensors, .pth, .ckpt) holding, between
       them, the VGG16 backbone and the five lin heads under any of these names:
         taming's  net.sliceK.N.*, linK.model.1.weight (tools/convert_lpips.py writes this),
         torchvision's vgg16-397923af.pth  features.N.weight/bias (classifier.* is ignored),
         PerceptualSimilarity's lpips/weights/v0.1/vgg.pth  linK.model.1.weight,
         a CompVis autoencoder checkpoint's  loss.perceptual_loss.* (or perceptual_loss.*).
       The ImageNet backbone is not shipped with ldm.h; without it LPIPS is an error whose
       message says how to convert torchvision's file:
         python3 tools/convert_lpips.py --vgg vgg16-397923af.pth --lin vgg.pth --out lpips_vgg.safetensors
   Dropout (decision): taming builds the lin heads as Dropout(0.5) + conv and calls .eval()
       once; PyTorch Lightning 1.4 (latent-diffusion's pin) calls model.train() when training
       starts and after every validation run, which switches those Dropouts back on, so the
       published autoencoders were trained with dropout on the squared feature differences.
       ldm.h follows that by default: the loss applies LPIPS dropout (p = 0.5, inverted
       scaling, masks from the context's RNG) while it is training, and never in validation
       or in the metrics. lpips_eval = 1 in the loss config keeps LPIPS in eval mode always
       (what the LPIPS authors intended). Eval mode is exactly torch's; training mode draws
       other random masks than torch, with the same distribution.

   NLayerDiscriminator (taming/modules/discriminator/model.py), names main.N.*:
       Conv(3, ndf, k4 s2 p1) LeakyReLU(0.2); for n = 1 .. n_layers-1: Conv(k4 s2 p1, no bias)
       BatchNorm2d LeakyReLU; Conv(k4 s1 p1, no bias) BatchNorm2d LeakyReLU; Conv(-> 1, k4 s1 p1).
       Channels ndf * min(2^n, 8). Init (taming's weights_init): conv weights N(0, 0.02), conv
       biases PyTorch's default, BatchNorm weight N(1, 0.02), bias 0; drawn from the context's
       RNG. Training mode: batch statistics and running-statistics update (momentum 0.1);
       eval: running statistics. use_actnorm = True is not supported (an error).

   LPIPSWithDiscriminator (ldm/modules/losses/contperceptual.py), names as the CompVis module,
   so the `loss.*` tensors of an autoencoder checkpoint map onto it: "logvar",
   "discriminator.main.N.*", "perceptual_loss.*".
       generator step (optimizer 0):
         rec = |x - xrec| + perceptual_weight * LPIPS(x, xrec)       (LPIPS broadcast per pixel)
         nll = rec / exp(logvar) + logvar;  nll_loss = sum(nll) / B;  kl_loss = sum(kl) / B
         g_loss = -mean(D(xrec))   (hinge and vanilla alike; D in the loss's mode, its
                                    parameters get no gradient, as Lightning's toggle_optimizer)
         d_weight = clamp(|grad_last nll_loss| / (|grad_last g_loss| + 1e-4), 0, 1e4) * disc_weight,
                    a constant; 0 when disc_factor = 0 or when there is no autograd graph
                    (validation: grad mode off, loss not training; in training that is an error,
                    as taming's assert)
         disc_factor = 0 while global_step < disc_start, else disc_factor
         loss = nll_loss + kl_weight * kl_loss + d_weight * disc_factor * g_loss
       discriminator step (optimizer 1), on detached x and xrec, two separate D calls (separate
       BatchNorm statistics):
         hinge   0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(xrec))))
         vanilla 0.5 * (mean(softplus(-D(x))) + mean(softplus(D(xrec)))),  times disc_factor.
       Logs (key prefix "<split>/"): total_loss, logvar, kl_loss, nll_loss, rec_loss (mean of
       rec, perceptual term included), d_weight, disc_factor, g_loss; disc_loss, logits_real,
       logits_fake (means). `logvar` stays at logvar_init: it is frozen and in no optimizer.
       pixelloss_weight is kept in the config but unused, as in the reference. The reference
       also evaluates LPIPS and the KL in the discriminator step and discards them; ldm.h skips
       that work.
       perceptual_weight = 0 trains without LPIPS (no VGG weights needed; the LPIPS is not even
       allocated); ldm_lpips_loss_ready returns the notice to print once.

   The LPIPS-free loss for volumes (x, xrec [B, C, T, H, W]); three config keys of ldm.h's own:
       pixel_loss  "l1" (the reference's |x - xrec|) or "l2" ((x - xrec)^2): the rec term above
       disc_dims   3: NLayerDiscriminator with Conv3d (4x4x4 kernels, stride 2 or 1 in all three
                   axes, padding 1) and BatchNorm3d, the same names main.N.*; needs
                   perceptual_weight 0 (LPIPS is a 2-D VGG16 metric; create says so)
       disc_ndf    the PatchGAN's base channels (64, fixed in the reference; a 3-D PatchGAN's
                   k4 kernels have 4x the weights, so volumes may want fewer)
       Everything else is unchanged: loss = sum(rec / exp(logvar) + logvar) / B + kl_weight *
       sum(kl) / B + d_weight * disc_factor * g_loss, with the adaptive d_weight, the hinge or
       vanilla discriminator loss and the same logs. Each PatchGAN3d stage maps n -> n/2 (stride
       2) or n - 1 (stride 1), so T, H, W must stay >= 1 through them (e.g. 12 for n_layers 2).

   Metrics (separate from the losses; no autograd; per image):
       PSNR = 10 log10(R^2 / mean((a - b)^2)) over C, H, W (skimage peak_signal_noise_ratio);
              volumes [B, C, T, H, W]: over C, T, H, W (SSIM and LPIPS stay 2-D).
       SSIM = skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
              use_sample_covariance=False, data_range=R, channel_axis) : Gaussian window
              11 x 11 (truncate 3.5), K1 0.01, K2 0.03, population covariances, the SSIM map
              averaged over the positions whose window lies inside the image (skimage crops
              (11-1)/2 pixels per border), then averaged over channels. Needs H, W >= 11.
       LPIPS distance (eval mode) on images in [-1, 1]; needs H, W >= 16.

   Options: those of ldm_tensor.h.
*/
#ifndef LDM_LPIPS_H
#define LDM_LPIPS_H

#include "ldm_nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- LPIPS ------------------------------------------------------------------------------ */
typedef struct ldm_lpips {
    ldm_nn_params *P;             /* every tensor frozen; names "<prefix>net.slice1.0.weight" ... */
    ldm_tensor *shift, *scale;    /* scaling_layer buffers [1, 3, 1, 1] */
    ldm_nn_conv2d conv[13];       /* VGG16 convolutions, in order */
    ldm_nn_conv2d lin[5];         /* lin0..lin4 (the conv after the Dropout: "model.1") */
    int loaded;                   /* 1 once backbone and heads came from a file */
    char prefix[64];              /* "" or e.g. "perceptual_loss." */
} ldm_lpips;

/* Registers and allocates the LPIPS (weights unset: ldm_lpips_load next). prefix: NULL for
   taming's names, "perceptual_loss" inside the loss. */
LDM_API ldm_result ldm_lpips_create(ldm_ctx *ctx, ldm_lpips **lp, const char *prefix);
LDM_API void ldm_lpips_destroy(ldm_lpips *lp);
/* Loads backbone + heads from one file (path_b NULL) or two (see the top for the names).
   Checks every name and shape before it writes anything; errors name the file and tensor. */
LDM_API ldm_result ldm_lpips_load(ldm_ctx *ctx, ldm_lpips *lp, const char *path_a, const char *path_b);
/* LPIPS(x0, x1) -> [B, 1, 1, 1]. dropout: apply the lin heads' Dropout(0.5) (training mode). */
LDM_API ldm_tensor *ldm_lpips_forward(ldm_ctx *ctx, ldm_lpips *lp, ldm_tensor *x0, ldm_tensor *x1, int dropout);

/* ---- PatchGAN discriminator ------------------------------------------------------------- */
#define LDM_PATCHGAN_MAX_LAYERS 6
typedef struct ldm_patchgan {
    ldm_nn_conv2d conv[LDM_PATCHGAN_MAX_LAYERS + 2];
    ldm_nn_conv3d conv3[LDM_PATCHGAN_MAX_LAYERS + 2];   /* dims 3: these instead of conv[] */
    ldm_nn_batchnorm norm[LDM_PATCHGAN_MAX_LAYERS];
    int n_layers;
    int dims;                     /* 2: images [B,C,H,W]; 3: volumes [B,C,T,H,W] */
} ldm_patchgan;
/* Registers "<prefix>.<name>.main.N.*" with taming's init rules (use_actnorm: error). */
LDM_API ldm_result ldm_patchgan_init(ldm_nn_params *P, ldm_patchgan *D, const char *name, int input_nc, int ndf,
                                     int n_layers, int use_actnorm);
/* dims 3: the same network with Conv3d (k4, 4x4x4 kernels) and BatchNorm3d, same names. */
LDM_API ldm_result ldm_patchgan_init_ex(ldm_nn_params *P, ldm_patchgan *D, const char *name, int input_nc, int ndf,
                                        int n_layers, int use_actnorm, int dims);
LDM_API ldm_tensor *ldm_patchgan_forward(ldm_ctx *ctx, ldm_patchgan *D, ldm_tensor *x, int training);

/* ---- LPIPSWithDiscriminator ------------------------------------------------------------- */
/* The loss config keys once, for config readers (ldm_config.h's schema convention
   X(name, kind, default, help); the fields of ldm_lpips_loss_config of the same names). The
   last one is ldm.h's, not the reference's (see the dropout note). */
#define LDM_LPIPS_LOSS_KEYS(X)                                                                     \
    X(disc_start, I64, "0", "global step at which the GAN terms start (the seed configs: 50001)")    \
    X(logvar_init, FLOAT, "0.0", "initial (and, in no optimizer, final) value of the learned log-variance") \
    X(kl_weight, FLOAT, "1.0", "weight of the KL term (the seed configs: 1e-6)")                    \
    X(pixelloss_weight, FLOAT, "1.0", "accepted, unused (as in the reference)")                     \
    X(disc_num_layers, INT, "3", "PatchGAN layers")                                                 \
    X(disc_in_channels, INT, "3", "PatchGAN input channels")                                        \
    X(disc_factor, FLOAT, "1.0", "GAN weight once disc_start is reached")                           \
    X(disc_weight, FLOAT, "1.0", "scale of the adaptive generator weight (the seed configs: 0.5)")  \
    X(perceptual_weight, FLOAT, "1.0", "LPIPS weight in the reconstruction loss (0: no VGG16 weights needed)") \
    X(use_actnorm, BOOL, "false", "false only")                                                     \
    X(disc_conditional, BOOL, "false", "false only")                                                \
    X(disc_loss, STR, "hinge", "hinge or vanilla")                                                  \
    X(lpips_eval, BOOL, "false", "ldm.h's: LPIPS without its dropout while training")              \
    X(pixel_loss, STR, "l1", "ldm.h's: l1 (the reference's |x - xrec|) or l2 ((x - xrec)^2)")      \
    X(disc_dims, BETWEEN(INT, 2, 3), "2", "ldm.h's: 2 (images) or 3 (volumes: Conv3d/BatchNorm3d PatchGAN)") \
    X(disc_ndf, AT_LEAST(INT, 1), "64", "ldm.h's: PatchGAN base channels (the reference's fixed 64)")

/* Hyper-parameters in double, as in Python (they round to float where torch does). */
typedef struct ldm_lpips_loss_config {
    int64_t disc_start;           /* required by the reference; the seed configs use 50001 */
    double logvar_init, kl_weight, pixelloss_weight;
    int disc_num_layers, disc_in_channels;
    double disc_factor, disc_weight, perceptual_weight;
    int use_actnorm;              /* must be 0 */
    int disc_conditional;         /* must be 0 */
    const char *disc_loss;        /* "hinge" (also NULL) or "vanilla"; read at create */
    int lpips_eval;               /* 1: no LPIPS dropout even while training */
    const char *pixel_loss;       /* "l1" (also NULL) or "l2"; read at create */
    int disc_dims;                /* 2 (also 0) or 3: volumes, which need perceptual_weight 0 */
    int disc_ndf;                 /* PatchGAN base channels; 0 reads as 64 */
} ldm_lpips_loss_config;
LDM_API ldm_lpips_loss_config ldm_lpips_loss_defaults(void);   /* the reference's defaults */

typedef struct ldm_lpips_loss {
    ldm_lpips_loss_config cfg;
    ldm_nn_params *P;             /* "logvar" (frozen), "discriminator.main.*" */
    ldm_tensor *logvar;           /* [] */
    ldm_patchgan disc;
    ldm_lpips *lpips;             /* "perceptual_loss.*"; NULL when perceptual_weight is 0 */
    int training;                 /* 1 after create; 0 for validation (D eval, no dropout) */
    int hinge;
    int l2;                       /* pixel_loss "l2" */
} ldm_lpips_loss;

/* Losses report named values in an ldm_loss_log (ldm_nn.h). */

LDM_API ldm_result ldm_lpips_loss_create(ldm_ctx *ctx, ldm_lpips_loss **L, const ldm_lpips_loss_config *cfg);
LDM_API void ldm_lpips_loss_destroy(ldm_lpips_loss *L);
LDM_API void ldm_lpips_loss_set_training(ldm_lpips_loss *L, int on);
/* The LPIPS weights (ldm_lpips_load); a no-op when perceptual_weight is 0. */
LDM_API ldm_result ldm_lpips_loss_load_lpips(ldm_ctx *ctx, ldm_lpips_loss *L, const char *path_a, const char *path_b);
/* Before training: an error (with the conversion hint) when perceptual_weight > 0 and no
   LPIPS weights were loaded; *notice (may be NULL) gets a line to print once, or NULL. */
LDM_API ldm_result ldm_lpips_loss_ready(ldm_ctx *ctx, const ldm_lpips_loss *L, const char **notice);
/* logvar and the discriminator (parameters and BatchNorm buffers) from a checkpoint whose
   names carry `prefix` (e.g. "loss." in a CompVis autoencoder .ckpt); strict for them,
   perceptual_loss.* names are left to ldm_lpips_loss_load_lpips. */
LDM_API ldm_result ldm_lpips_loss_load(ldm_ctx *ctx, ldm_lpips_loss *L, const char *path, const char *prefix);

/* Generator step: the loss tensor (one element) to backpropagate into the autoencoder.
   kl [B]: the posterior's KL divergence per sample (ldm_vae_posterior_kl). last_layer: the
   decoder's last weight (ldm_vae_last_layer). split: "train", "val" (NULL: "train"). log may
   be NULL. */
LDM_API ldm_tensor *ldm_lpips_loss_generator(ldm_ctx *ctx, ldm_lpips_loss *L, ldm_tensor *x, ldm_tensor *xrec,
                                             ldm_tensor *kl, int64_t global_step, ldm_tensor *last_layer,
                                             const char *split, ldm_loss_log *log);
/* Discriminator step: the loss tensor whose gradient goes to the discriminator only. */
LDM_API ldm_tensor *ldm_lpips_loss_discriminator(ldm_ctx *ctx, ldm_lpips_loss *L, ldm_tensor *x, ldm_tensor *xrec,
                                                 int64_t global_step, const char *split, ldm_loss_log *log);

/* ---- metrics (a, b [B, C, H, W], same shape; out[B]; PSNR also volumes [B, C, T, H, W]) -- */
LDM_API ldm_result ldm_metric_psnr(ldm_ctx *ctx, const ldm_tensor *a, const ldm_tensor *b, double data_range, double *out);
LDM_API ldm_result ldm_metric_ssim(ldm_ctx *ctx, const ldm_tensor *a, const ldm_tensor *b, double data_range, double *out);
/* images in [-1, 1]; eval mode, grad off, activations freed before it returns */
LDM_API ldm_result ldm_metric_lpips(ldm_ctx *ctx, ldm_lpips *lp, ldm_tensor *a, ldm_tensor *b, double *out);

#ifdef __cplusplus
}
#endif
#endif /* LDM_LPIPS_H */

/* ========================================================================================== */
/*                                      IMPLEMENTATION                                        */
/* ========================================================================================== */
#if defined(LDM_IMPLEMENTATION) || defined(LDM_LPIPS_IMPLEMENTATION)
#ifndef LDM_LPIPS_IMPLEMENTATION_DONE
#define LDM_LPIPS_IMPLEMENTATION_DONE

#ifndef LDM_NN_IMPLEMENTATION_DONE
#error "ldm_lpips.h: its implementation needs ldm_nn.h's and ldm_tensor.h's in the same file (define LDM_IMPLEMENTATION)"
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- LPIPS: registration ----------------------------------------------------------------- */
/* torchvision's features.N index of each VGG16 convolution, its channels, and the slice
   (1..5) it belongs to in taming's module. */
static const int ldm__vgg_idx[13] = {0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28};
static const int ldm__vgg_in[13] = {3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512};
static const int ldm__vgg_out[13] = {64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512};
static const int ldm__vgg_per_slice[5] = {2, 2, 3, 3, 3};
static const int ldm__lpips_chns[5] = {64, 128, 256, 512, 512};
static const float ldm__lpips_shift[3] = {-.030f, -.088f, -.188f};
static const float ldm__lpips_scale[3] = {.458f, .448f, .450f};

static int ldm__vgg_slice_of(int n) { return n < 4 ? 1 : n < 9 ? 2 : n < 16 ? 3 : n < 23 ? 4 : n < 30 ? 5 : 0; }

LDM_API ldm_result ldm_lpips_create(ldm_ctx *ctx, ldm_lpips **out, const char *prefix) {
    *out = NULL;
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    if (prefix && strlen(prefix) + 2 > sizeof((*out)->prefix))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_lpips_create: prefix \"%s\" is too long", prefix);
    ldm_lpips *lp = (ldm_lpips *)LDM_MALLOC(sizeof *lp);
    if (!lp) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "LPIPS: out of memory");
    memset(lp, 0, sizeof *lp);
    if (prefix && prefix[0]) snprintf(lp->prefix, sizeof lp->prefix, "%s.", prefix);
    ldm_result r = ldm_nn_params_create(ctx, &lp->P, ldm_ctx_device(ctx));
    if (r) { LDM_FREE(lp); return r; }
    ldm_nn_params *P = lp->P;
    ldm_nn_push(P, prefix);
    lp->shift = ldm_nn_buffer(P, "scaling_layer.shift", ldm_shape4(1, 3, 1, 1), ldm_nn_init_const(0.0f), 1);
    lp->scale = ldm_nn_buffer(P, "scaling_layer.scale", ldm_shape4(1, 3, 1, 1), ldm_nn_init_const(1.0f), 1);
    for (int i = 0; i < 13; i++) {
        ldm_nn_pushf(P, "net.slice%d.%d", ldm__vgg_slice_of(ldm__vgg_idx[i]), ldm__vgg_idx[i]);
        ldm_nn_conv2d_init(P, &lp->conv[i], NULL, ldm__vgg_in[i], ldm__vgg_out[i], 3, 1, 1, 1);
        ldm_nn_pop(P);
    }
    for (int k = 0; k < 5; k++) {
        ldm_nn_pushf(P, "lin%d.model.1", k);
        ldm_nn_conv2d_init(P, &lp->lin[k], NULL, ldm__lpips_chns[k], 1, 1, 1, 0, 0);
        ldm_nn_pop(P);
    }
    ldm_nn_pop(P);
    /* frozen before alloc: no gradient block at all */
    if (!ldm_ctx_status(ctx)) ldm_nn_set_trainable(P, NULL, 0);
    if (!ldm_ctx_status(ctx)) ldm_nn_params_alloc(ctx, P);
    if (!ldm_ctx_status(ctx)) ldm_nn_copy_from_host(ctx, lp->shift, ldm__lpips_shift);
    if (!ldm_ctx_status(ctx)) ldm_nn_copy_from_host(ctx, lp->scale, ldm__lpips_scale);
    if ((r = ldm_ctx_status(ctx)) != LDM_OK) { ldm_lpips_destroy(lp); return r; }
    *out = lp;
    return LDM_OK;
}

LDM_API void ldm_lpips_destroy(ldm_lpips *lp) {
    if (!lp) return;
    if (lp->P) ldm_nn_params_destroy(lp->P);
    LDM_FREE(lp);
}

/* ---- LPIPS: loading ---------------------------------------------------------------------- */
/* Maps a file name to the registry's name (without the registry prefix); NULL: not LPIPS. */
static const char *ldm__lpips_map(const char *name, char *buf, size_t cap) {
    static const char *const drop[] = {"loss.perceptual_loss.", "perceptual_loss."};
    for (int i = 0; i < 2; i++)
        if (!strncmp(name, drop[i], strlen(drop[i]))) { name += strlen(drop[i]); break; }
    int a, b, used = 0;
    char leaf[16];
    if (sscanf(name, "features.%d.%15[a-z]%n", &a, leaf, &used) == 2 && name[used] == 0 &&
        (!strcmp(leaf, "weight") || !strcmp(leaf, "bias")) && ldm__vgg_slice_of(a)) {
        snprintf(buf, cap, "net.slice%d.%d.%s", ldm__vgg_slice_of(a), a, leaf);
        return buf;
    }
    if (sscanf(name, "net.slice%d.%d.%15[a-z]%n", &b, &a, leaf, &used) == 3 && name[used] == 0) return name;
    if (sscanf(name, "lin%d.model.1.weigh%15[t]%n", &a, leaf, &used) == 2 && name[used] == 0) return name;
    if (!strcmp(name, "scaling_layer.shift") || !strcmp(name, "scaling_layer.scale")) return name;
    return NULL;
}

LDM_API ldm_result ldm_lpips_load(ldm_ctx *ctx, ldm_lpips *lp, const char *path_a, const char *path_b) {
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    if (!path_a) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_lpips_load: no file given");
    const char *paths[2] = {path_a, path_b};
    int nfiles = path_b ? 2 : 1;
    ldm_weights *w[2] = {NULL, NULL};
    int n = ldm_nn_count(lp->P);
    int *src_file = (int *)LDM_MALLOC(sizeof(int) * (size_t)n * 2);
    float *tmp = NULL;
    ldm_result r = LDM_OK;
    char files[1100];
    if (!src_file) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "LPIPS: out of memory");
    int *src_idx = src_file + n;
    for (int e = 0; e < n; e++) src_file[e] = src_idx[e] = -1;
    snprintf(files, sizeof files, "%s%s%s", path_a, path_b ? " and " : "", path_b ? path_b : "");
    for (int f = 0; f < nfiles && !r; f++) r = ldm_weights_open(ctx, &w[f], paths[f]);
    /* pass 1: map and check every name and shape; a later file overrides an earlier one */
    for (int f = 0; f < nfiles && !r; f++) {
        for (int i = 0; i < ldm_weights_count(w[f]) && !r; i++) {
            const ldm_weight_info *fi = ldm_weights_info(w[f], i);
            char mapped[256], full[400];
            const char *m = ldm__lpips_map(fi->name, mapped, sizeof mapped);
            if (!m) continue;
            snprintf(full, sizeof full, "%s%s", lp->prefix, m);
            int e = ldm_nn_index(lp->P, full);
            if (e < 0) {
                r = ldm_ctx_seterr(ctx, LDM_ERR_FORMAT, "LPIPS: %s: tensor \"%s\" is not a VGG16 layer (taming's module has no %s; "
                                   "hint: the backbone must be torchvision's vgg16, not vgg16_bn or vgg19)", paths[f], fi->name, m);
                break;
            }
            ldm_tensor *t = ldm_nn_entry_at(lp->P, e)->t;
            int same = fi->ndim == t->ndim;
            for (int d = 0; same && d < t->ndim; d++) same = fi->shape[d] == t->shape[d];
            if (!same) {
                char a[96], b[96];
                r = ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "LPIPS: %s: tensor \"%s\" has shape %s, LPIPS-VGG16 needs %s for %s "
                                   "(hint: the backbone must be torchvision's vgg16 and the heads LPIPS v0.1 vgg.pth)",
                                   paths[f], fi->name, ldm_dims_str(fi->shape, fi->ndim, a, sizeof a),
                                   ldm_dims_str(t->shape, t->ndim, b, sizeof b), m);
                break;
            }
            src_file[e] = f;
            src_idx[e] = i;
        }
    }
    if (!r) {
        int miss_vgg = 0, miss_lin = 0;
        const char *first_vgg = NULL, *first_lin = NULL;
        for (int e = 0; e < n; e++) {
            const ldm_nn_entry *en = ldm_nn_entry_at(lp->P, e);
            if (src_file[e] >= 0 || en->t == lp->shift || en->t == lp->scale) continue; /* the scaling constants are optional */
            if (strstr(en->name, "net.slice")) { if (!miss_vgg++) first_vgg = en->name; }
            else if (!miss_lin++) first_lin = en->name;
        }
        if (miss_vgg)
            r = ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "LPIPS: no VGG16 backbone in %s (%d tensors missing, the first %s; torchvision "
                               "names features.N.* are accepted too). hint: the ImageNet VGG16 is torchvision's vgg16-397923af.pth; "
                               "convert it together with LPIPS's lin weights: python3 tools/convert_lpips.py --vgg vgg16-397923af.pth "
                               "--lin vgg.pth --out lpips_vgg.safetensors, then pass lpips_vgg.safetensors",
                               files, miss_vgg, first_vgg);
        else if (miss_lin)
            r = ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "LPIPS: no lin heads in %s (%d missing, the first %s). hint: the LPIPS v0.1 "
                               "heads are PerceptualSimilarity's lpips/weights/v0.1/vgg.pth: pass it as the second file, or "
                               "convert both with tools/convert_lpips.py", files, miss_lin, first_lin);
    }
    /* pass 2: read */
    if (!r) {
        int64_t mx = 1;
        for (int e = 0; e < n; e++) if (ldm_nn_entry_at(lp->P, e)->t->numel > mx) mx = ldm_nn_entry_at(lp->P, e)->t->numel;
        tmp = (float *)LDM_MALLOC(sizeof(float) * (size_t)mx);
        if (!tmp) r = ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "LPIPS: out of memory");
        lp->loaded = 0;
        for (int e = 0; e < n && !r; e++) {
            if (src_file[e] < 0) continue;
            ldm_tensor *t = ldm_nn_entry_at(lp->P, e)->t;
            r = ldm_weights_read(ctx, w[src_file[e]], src_idx[e], tmp);
            if (!r) r = ldm_nn_copy_from_host(ctx, t, tmp);
        }
        if (!r) lp->loaded = 1;
    }
    for (int f = 0; f < nfiles; f++) if (w[f]) ldm_weights_close(w[f]);
    LDM_FREE(tmp);
    LDM_FREE(src_file);
    return r;
}

/* ---- LPIPS: forward ---------------------------------------------------------------------- */
static ldm_result ldm__lpips_check(ldm_ctx *ctx, const ldm_lpips *lp, const ldm_tensor *x0, const ldm_tensor *x1, const char *what) {
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    if (!x0 || !x1) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: NULL image", what);
    char a[96], b[96];
    if (!ldm_shape_eq(x0, x1))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: the two images differ in shape: %s vs %s", what, ldm_shape_str(x0, a, sizeof a),
                              ldm_shape_str(x1, b, sizeof b));
    if (x0->ndim != 4 || x0->shape[1] != 3 || x0->shape[2] < 16 || x0->shape[3] < 16)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: images must be [B, 3, H, W] with H, W >= 16 (VGG16 pools four times), got %s",
                              what, ldm_shape_str(x0, a, sizeof a));
    if (!lp->loaded)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: LPIPS has no weights (hint: ldm_lpips_load with the file written by "
                              "tools/convert_lpips.py from torchvision's vgg16-397923af.pth and LPIPS's vgg.pth)", what);
    return LDM_OK;
}

/* The five normalised VGG16 features of x (taps after relu1_2 ... relu5_3) without grad, in
   tensors allocated first; every other activation is dropped as soon as the next exists. */
static ldm_result ldm__lpips_feats_nograd(ldm_ctx *ctx, ldm_lpips *lp, ldm_tensor *x, ldm_tensor **f) {
    int64_t B = x->shape[0], H = x->shape[2], W = x->shape[3];
    int prev = ldm_set_grad_enabled(ctx, 0);
    for (int k = 0; k < 5; k++) {
        f[k] = ldm_new(ctx, ldm_shape4(B, ldm__lpips_chns[k], H, W));
        H /= 2, W /= 2; /* max_pool2d(2, 2): floor */
    }
    ldm_mark base = ldm_arena_mark(ctx);
    ldm_tensor *h = ldm_div(ctx, ldm_sub(ctx, x, lp->shift), lp->scale);
    int c = 0;
    for (int k = 0; k < 5 && h; k++) {
        if (k) h = ldm_arena_keep(ctx, base, ldm_max_pool(ctx, h, 2, 2, 0));
        for (int j = 0; j < ldm__vgg_per_slice[k]; j++, c++)
            h = ldm_arena_keep(ctx, base, ldm_relu_into(ctx, ldm_nn_conv2d_forward(ctx, &lp->conv[c], h)));
        ldm_mark m = ldm_arena_mark(ctx);
        ldm_tensor *norm = ldm_add_scalar(ctx, ldm_sqrt(ctx, ldm_sum(ctx, ldm_square(ctx, h), LDM_DIM(1), 1)), 1e-10f);
        ldm_tensor *fk = ldm_div(ctx, h, norm);
        if (fk && f[k] && ldm_shape_eq(fk, f[k])) ldm_device_copy(ctx, f[k]->data, f[k]->device, fk->data, fk->device, (size_t)fk->numel * 4);
        else if (fk && !ldm_ctx_status(ctx)) ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "LPIPS: feature %d has an unexpected shape", k);
        ldm_arena_rewind(ctx, m);
    }
    ldm_arena_rewind(ctx, base);
    ldm_set_grad_enabled(ctx, prev);
    return ldm_ctx_status(ctx);
}

LDM_API ldm_tensor *ldm_lpips_forward(ldm_ctx *ctx, ldm_lpips *lp, ldm_tensor *x0, ldm_tensor *x1, int dropout) {
    if (ldm__lpips_check(ctx, lp, x0, x1, "LPIPS")) return NULL;
    int64_t B = x0->shape[0];
    if (ldm_grad_enabled(ctx) && !x0->requires_grad && x1->requires_grad) {
        /* the training case, LPIPS(x, xrec): x needs no gradient, so its features are taken
           without grad and none of its activations wait for the backward pass (torch runs the
           two images separately too; its autograd then skips x's input gradients) */
        ldm_tensor *f0[5];
        if (ldm__lpips_feats_nograd(ctx, lp, x0, f0)) return NULL;
        ldm_tensor *h = ldm_div(ctx, ldm_sub(ctx, x1, lp->shift), lp->scale), *val = NULL;
        int c = 0;
        for (int k = 0; k < 5; k++) {
            if (k) h = ldm_max_pool(ctx, h, 2, 2, 0);
            for (int j = 0; j < ldm__vgg_per_slice[k]; j++, c++) h = ldm_relu_into(ctx, ldm_nn_conv2d_forward(ctx, &lp->conv[c], h));
            ldm_tensor *norm = ldm_add_scalar(ctx, ldm_sqrt(ctx, ldm_sum(ctx, ldm_square(ctx, h), LDM_DIM(1), 1)), 1e-10f);
            ldm_tensor *d = ldm_square(ctx, ldm_sub(ctx, f0[k], ldm_div(ctx, h, norm)));
            if (dropout) d = ldm_dropout(ctx, d, 0.5f, 1);
            ldm_tensor *m = ldm_mean(ctx, ldm_nn_conv2d_forward(ctx, &lp->lin[k], d), LDM_DIM(2) | LDM_DIM(3), 1);
            val = val ? ldm_add(ctx, val, m) : m;
        }
        return val;
    }
    /* both images through VGG as one batch: every op is per sample, so this is torch's two calls */
    ldm_tensor *both[2];
    both[0] = x0; both[1] = x1;
    ldm_tensor *h = ldm_div(ctx, ldm_sub(ctx, ldm_concat(ctx, 2, both, 0), lp->shift), lp->scale);
    ldm_tensor *val = NULL;
    int c = 0;
    for (int k = 0; k < 5; k++) {
        if (k) h = ldm_max_pool(ctx, h, 2, 2, 0);
        for (int j = 0; j < ldm__vgg_per_slice[k]; j++, c++) h = ldm_relu_into(ctx, ldm_nn_conv2d_forward(ctx, &lp->conv[c], h));
        ldm_tensor *norm = ldm_add_scalar(ctx, ldm_sqrt(ctx, ldm_sum(ctx, ldm_square(ctx, h), LDM_DIM(1), 1)), 1e-10f);
        ldm_tensor *f = ldm_div(ctx, h, norm);
        ldm_tensor *d = ldm_square(ctx, ldm_sub(ctx, ldm_slice(ctx, f, 0, 0, B), ldm_slice(ctx, f, 0, B, B)));
        if (dropout) d = ldm_dropout(ctx, d, 0.5f, 1);
        ldm_tensor *m = ldm_mean(ctx, ldm_nn_conv2d_forward(ctx, &lp->lin[k], d), LDM_DIM(2) | LDM_DIM(3), 1);
        val = val ? ldm_add(ctx, val, m) : m;
    }
    return val;
}

/* ---- PatchGAN discriminator -------------------------------------------------------------- */
/* conv N of the PatchGAN, 2-D or 3-D, with taming's N(0, 0.02) weights */
static void ldm__patchgan_conv(ldm_nn_params *P, ldm_patchgan *D, int i, const char *nm, int in, int out, int stride, int bias) {
    ldm_tensor *w;
    if (D->dims == 3) { ldm_nn_conv3d_init(P, &D->conv3[i], nm, in, out, 4, stride, 1, bias); w = D->conv3[i].weight; }
    else { ldm_nn_conv2d_init(P, &D->conv[i], nm, in, out, 4, stride, 1, bias); w = D->conv[i].weight; }
    ldm_nn_set_init(P, w, ldm_nn_init_normal(0.0f, 0.02f));
}
static ldm_tensor *ldm__patchgan_conv_fwd(ldm_ctx *ctx, const ldm_patchgan *D, int i, ldm_tensor *x) {
    return D->dims == 3 ? ldm_nn_conv3d_forward(ctx, &D->conv3[i], x) : ldm_nn_conv2d_forward(ctx, &D->conv[i], x);
}
LDM_API ldm_result ldm_patchgan_init(ldm_nn_params *P, ldm_patchgan *D, const char *name, int input_nc, int ndf,
                                     int n_layers, int use_actnorm) {
    return ldm_patchgan_init_ex(P, D, name, input_nc, ndf, n_layers, use_actnorm, 2);
}
LDM_API ldm_result ldm_patchgan_init_ex(ldm_nn_params *P, ldm_patchgan *D, const char *name, int input_nc, int ndf,
                                        int n_layers, int use_actnorm, int dims) {
    ldm_ctx *ctx = P->ctx;
    memset(D, 0, sizeof *D);
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    if (dims != 2 && dims != 3)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "NLayerDiscriminator: dims = %d (hint: 2 for images, 3 for volumes)", dims);
    D->dims = dims;
    if (use_actnorm)
        return ldm_ctx_seterr(ctx, LDM_ERR_UNSUPPORTED, "NLayerDiscriminator: use_actnorm = true is not supported (hint: the "
                              "latent-diffusion configs use BatchNorm2d, use_actnorm: false)");
    if (n_layers < 1 || n_layers > LDM_PATCHGAN_MAX_LAYERS || ndf < 1 || input_nc < 1)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "NLayerDiscriminator: n_layers %d (1..%d), ndf %d, input_nc %d out of range",
                              n_layers, LDM_PATCHGAN_MAX_LAYERS, ndf, input_nc);
    D->n_layers = n_layers;
    ldm_nn_push(P, name);
    ldm_nn_push(P, "main");
    ldm__patchgan_conv(P, D, 0, "0", input_nc, ndf, 2, 1);
    int idx = 2, mult = 1;
    for (int n = 1; n <= n_layers; n++) {
        int prev = mult;
        mult = 1 << (n < 3 ? n : 3);
        char nm[16];
        snprintf(nm, sizeof nm, "%d", idx);
        ldm__patchgan_conv(P, D, n, nm, ndf * prev, ndf * mult, n < n_layers ? 2 : 1, 0);
        snprintf(nm, sizeof nm, "%d", idx + 1);
        ldm_nn_batchnorm_init(P, &D->norm[n - 1], nm, ndf * mult, 1e-5f, 0.1f, 1, 1);
        ldm_nn_set_init(P, D->norm[n - 1].weight, ldm_nn_init_normal(1.0f, 0.02f));
        idx += 3;
    }
    char nm[16];
    snprintf(nm, sizeof nm, "%d", idx);
    ldm__patchgan_conv(P, D, n_layers + 1, nm, ndf * mult, 1, 1, 1);
    ldm_nn_pop(P);
    ldm_nn_pop(P);
    return ldm_ctx_status(ctx);
}

LDM_API ldm_tensor *ldm_patchgan_forward(ldm_ctx *ctx, ldm_patchgan *D, ldm_tensor *x, int training) {
    if (x && !ldm_ctx_status(ctx) && x->ndim != D->dims + 2) {
        char b[64];
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "NLayerDiscriminator: input %s, expected %s (dims %d; hint: disc_dims 3 for volumes)",
                       ldm_shape_str(x, b, sizeof b), D->dims == 3 ? "[B, C, T, H, W]" : "[B, C, H, W]", D->dims);
        return NULL;
    }
    /* LeakyReLU(0.2, True) as taming: in place over the fresh conv / norm output */
    ldm_tensor *h = ldm_leaky_relu_into(ctx, ldm__patchgan_conv_fwd(ctx, D, 0, x), 0.2f);
    for (int n = 1; n <= D->n_layers; n++)
        h = ldm_leaky_relu_into(ctx, ldm_nn_batchnorm_forward(ctx, &D->norm[n - 1], ldm__patchgan_conv_fwd(ctx, D, n, h), training), 0.2f);
    return ldm__patchgan_conv_fwd(ctx, D, D->n_layers + 1, h);
}

/* ---- LPIPSWithDiscriminator -------------------------------------------------------------- */
LDM_API ldm_lpips_loss_config ldm_lpips_loss_defaults(void) {
    ldm_lpips_loss_config c;
    memset(&c, 0, sizeof c);
    c.disc_start = 0;
    c.logvar_init = 0.0; c.kl_weight = 1.0; c.pixelloss_weight = 1.0;
    c.disc_num_layers = 3; c.disc_in_channels = 3;
    c.disc_factor = 1.0; c.disc_weight = 1.0; c.perceptual_weight = 1.0;
    c.disc_loss = "hinge";
    c.pixel_loss = "l1"; c.disc_dims = 2; c.disc_ndf = 64;
    return c;
}

static void ldm__log_put(ldm_loss_log *log, const char *split, const char *name, float v) { ldm_loss_log_put(log, split, name, v); }
static float ldm__scalar(ldm_ctx *ctx, ldm_tensor *t) {
    float v = NAN;
    if (t && !ldm_ctx_status(ctx)) ldm_to_host(ctx, t, &v);
    return v;
}

LDM_API ldm_result ldm_lpips_loss_create(ldm_ctx *ctx, ldm_lpips_loss **out, const ldm_lpips_loss_config *cfg) {
    *out = NULL;
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    const char *dl = cfg->disc_loss ? cfg->disc_loss : "hinge";
    if (strcmp(dl, "hinge") && strcmp(dl, "vanilla"))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "LPIPSWithDiscriminator: disc_loss \"%s\" (hint: \"hinge\" or \"vanilla\")", dl);
    const char *pl = cfg->pixel_loss ? cfg->pixel_loss : "l1";
    if (strcmp(pl, "l1") && strcmp(pl, "l2"))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "LPIPSWithDiscriminator: pixel_loss \"%s\" (hint: \"l1\" or \"l2\")", pl);
    int ddims = cfg->disc_dims ? cfg->disc_dims : 2;
    if (ddims != 2 && ddims != 3)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "LPIPSWithDiscriminator: disc_dims = %d (hint: 2 for images, 3 for volumes)", cfg->disc_dims);
    if (ddims == 3 && cfg->perceptual_weight > 0.0)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "LPIPSWithDiscriminator: disc_dims = 3 (volumes) with perceptual_weight = %g: LPIPS is a "
                              "2-D VGG16 metric (hint: perceptual_weight: 0.0 for volumes, the loss is then pixel_loss + KL + GAN)",
                              cfg->perceptual_weight);
    if (cfg->disc_ndf < 0)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "LPIPSWithDiscriminator: disc_ndf = %d must be positive", cfg->disc_ndf);
    if (cfg->disc_conditional)
        return ldm_ctx_seterr(ctx, LDM_ERR_UNSUPPORTED, "LPIPSWithDiscriminator: disc_conditional = true is not supported "
                              "(hint: the latent-diffusion autoencoder configs leave it false)");
    if (!(cfg->perceptual_weight >= 0.0) || !(cfg->disc_factor >= 0.0) || !(cfg->disc_weight >= 0.0) || !(cfg->kl_weight >= 0.0))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "LPIPSWithDiscriminator: perceptual_weight, disc_factor, disc_weight and kl_weight "
                              "must be >= 0");
    ldm_lpips_loss *L = (ldm_lpips_loss *)LDM_MALLOC(sizeof *L);
    if (!L) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "LPIPSWithDiscriminator: out of memory");
    memset(L, 0, sizeof *L);
    L->cfg = *cfg;
    L->cfg.disc_loss = strcmp(dl, "hinge") ? "vanilla" : "hinge"; /* not the caller's string */
    L->hinge = !strcmp(dl, "hinge");
    L->l2 = !strcmp(pl, "l2");
    L->cfg.pixel_loss = L->l2 ? "l2" : "l1";
    L->cfg.disc_dims = ddims;
    L->cfg.disc_ndf = cfg->disc_ndf ? cfg->disc_ndf : 64;
    L->training = 1;
    ldm_result r = ldm_nn_params_create(ctx, &L->P, ldm_ctx_device(ctx));
    if (r) { LDM_FREE(L); return r; }
    L->logvar = ldm_nn_param(L->P, "logvar", ldm_shape_n(0, NULL), ldm_nn_init_const((float)cfg->logvar_init));
    ldm_patchgan_init_ex(L->P, &L->disc, "discriminator", cfg->disc_in_channels, L->cfg.disc_ndf, cfg->disc_num_layers, cfg->use_actnorm,
                         ddims);
    if (!ldm_ctx_status(ctx)) ldm_nn_set_trainable(L->P, "logvar", 0); /* in no optimizer: stays at logvar_init */
    if (!ldm_ctx_status(ctx)) ldm_nn_params_alloc(ctx, L->P);
    if (!ldm_ctx_status(ctx) && cfg->perceptual_weight > 0.0) ldm_lpips_create(ctx, &L->lpips, "perceptual_loss");
    if ((r = ldm_ctx_status(ctx)) != LDM_OK) { ldm_lpips_loss_destroy(L); return r; }
    *out = L;
    return LDM_OK;
}

LDM_API void ldm_lpips_loss_destroy(ldm_lpips_loss *L) {
    if (!L) return;
    ldm_lpips_destroy(L->lpips);
    if (L->P) ldm_nn_params_destroy(L->P);
    LDM_FREE(L);
}
LDM_API void ldm_lpips_loss_set_training(ldm_lpips_loss *L, int on) { L->training = on ? 1 : 0; }

LDM_API ldm_result ldm_lpips_loss_load_lpips(ldm_ctx *ctx, ldm_lpips_loss *L, const char *path_a, const char *path_b) {
    if (!L->lpips) return ldm_ctx_status(ctx);
    return ldm_lpips_load(ctx, L->lpips, path_a, path_b);
}

LDM_API ldm_result ldm_lpips_loss_ready(ldm_ctx *ctx, const ldm_lpips_loss *L, const char **notice) {
    if (notice) *notice = NULL;
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    if (!L->lpips) {
        if (notice) *notice = L->l2 ? "loss: perceptual_weight = 0, training without LPIPS (reconstruction = L2 only; no VGG16 weights needed)"
                                    : "loss: perceptual_weight = 0, training without LPIPS (reconstruction = L1 only; no VGG16 weights needed)";
        return LDM_OK;
    }
    if (!L->lpips->loaded)
        return ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "loss: perceptual_weight = %g needs the LPIPS weights, and none were loaded "
                              "(hint: python3 tools/convert_lpips.py --vgg vgg16-397923af.pth --lin vgg.pth --out lpips_vgg.safetensors "
                              "converts torchvision's VGG16 and LPIPS's lin weights into one file; or set perceptual_weight: 0.0 to "
                              "train without LPIPS)", L->cfg.perceptual_weight);
    return LDM_OK;
}

static const char *ldm__loss_skip_lpips(void *user, const char *name, char *buf, size_t cap) {
    (void)user; (void)buf; (void)cap;
    return strncmp(name, "perceptual_loss.", 16) ? name : NULL;
}
LDM_API ldm_result ldm_lpips_loss_load(ldm_ctx *ctx, ldm_lpips_loss *L, const char *path, const char *prefix) {
    ldm_nn_load_opts o;
    memset(&o, 0, sizeof o);
    o.strict = 1;
    o.prefix_strip = prefix && prefix[0] ? prefix : NULL;
    o.rename = ldm__loss_skip_lpips;
    return ldm_nn_load(ctx, L->P, path, &o);
}

static ldm_result ldm__loss_inputs(ldm_ctx *ctx, const ldm_lpips_loss *L, ldm_tensor *x, ldm_tensor *xrec, const char *what) {
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    if (!x || !xrec) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: NULL input", what);
    char a[96], b[96];
    int nd = L->disc.dims + 2;
    if (!ldm_shape_eq(x, xrec) || x->ndim != nd)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: inputs %s and reconstructions %s must be the same %s shape (disc_dims %d%s)", what,
                              ldm_shape_str(x, a, sizeof a), ldm_shape_str(xrec, b, sizeof b), nd == 5 ? "[B, C, T, H, W]" : "[B, C, H, W]",
                              L->disc.dims, nd == 4 && x->ndim == 5 ? "; hint: disc_dims 3 and perceptual_weight 0 for volumes" : "");
    return LDM_OK;
}

/* Lightning's toggle_optimizer during the generator step: the discriminator's parameters do
   not require grad, so the generator loss sends them no gradient. The copy runs on detached
   views of the same weights; the BatchNorm running statistics are the real ones (updated). */
static ldm_patchgan ldm__disc_frozen(ldm_ctx *ctx, const ldm_patchgan *D) {
    ldm_patchgan F = *D;
    for (int i = 0; i < D->n_layers + 2; i++) {
        if (D->dims == 3) {
            F.conv3[i].weight = ldm_detach(ctx, D->conv3[i].weight);
            if (D->conv3[i].bias) F.conv3[i].bias = ldm_detach(ctx, D->conv3[i].bias);
        } else {
            F.conv[i].weight = ldm_detach(ctx, D->conv[i].weight);
            if (D->conv[i].bias) F.conv[i].bias = ldm_detach(ctx, D->conv[i].bias);
        }
    }
    for (int i = 0; i < D->n_layers; i++) {
        F.norm[i].weight = ldm_detach(ctx, D->norm[i].weight);
        F.norm[i].bias = ldm_detach(ctx, D->norm[i].bias);
    }
    return F;
}

static double ldm__norm2(const float *g, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)g[i] * g[i];
    return sqrt(s);
}

LDM_API ldm_tensor *ldm_lpips_loss_generator(ldm_ctx *ctx, ldm_lpips_loss *L, ldm_tensor *x, ldm_tensor *xrec,
                                             ldm_tensor *kl, int64_t global_step, ldm_tensor *last_layer,
                                             const char *split, ldm_loss_log *log) {
    const char *what = "LPIPSWithDiscriminator (generator step)";
    if (log) log->n = 0;
    if (ldm__loss_inputs(ctx, L, x, xrec, what)) return NULL;
    if (!kl || kl->ndim != 1 || kl->shape[0] != x->shape[0]) {
        if (!ldm_ctx_status(ctx)) ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: kl must be the posterior's KL per sample [B] (ldm_vae_posterior_kl)", what);
        return NULL;
    }
    if (!split) split = "train";
    const ldm_lpips_loss_config *c = &L->cfg;
    int64_t B = x->shape[0];
    ldm_tensor *rec = L->l2 ? ldm_square(ctx, ldm_sub(ctx, x, xrec)) : ldm_abs(ctx, ldm_sub(ctx, x, xrec));
    if (c->perceptual_weight > 0.0) {
        if (!L->lpips->loaded) { ldm_lpips_loss_ready(ctx, L, NULL); return NULL; }
        ldm_tensor *p = ldm_lpips_forward(ctx, L->lpips, x, xrec, L->training && !c->lpips_eval);
        rec = ldm_add(ctx, rec, ldm_scale(ctx, p, (float)c->perceptual_weight));
    }
    ldm_tensor *nll = ldm_add(ctx, ldm_div(ctx, rec, ldm_exp(ctx, L->logvar)), L->logvar);
    ldm_tensor *nll_loss = ldm_scale(ctx, ldm_sum_all(ctx, nll), 1.0f / (float)B);
    ldm_tensor *kl_loss = ldm_scale(ctx, ldm_sum_all(ctx, kl), 1.0f / (float)kl->shape[0]);

    ldm_patchgan frozen = ldm__disc_frozen(ctx, &L->disc);
    ldm_tensor *logits = ldm_patchgan_forward(ctx, &frozen, xrec, L->training);
    ldm_tensor *g_loss = ldm_scale(ctx, ldm_mean_all(ctx, logits), -1.0f);
    if (!g_loss || !kl_loss || !nll_loss) return NULL;

    float d_weight = 0.0f;
    if (c->disc_factor > 0.0) {
        if (nll_loss->requires_grad && g_loss->requires_grad && last_layer && ldm_grad_enabled(ctx)) {
            int64_t n = last_layer->numel;
            float *h = (float *)LDM_MALLOC(sizeof(float) * (size_t)n);
            float *gd = (float *)ldm_arena_alloc(ctx, last_layer->device, sizeof(float) * (size_t)n);
            if (!h || !gd) { LDM_FREE(h); if (!ldm_ctx_status(ctx)) ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "%s: out of memory", what); return NULL; }
            ldm_tensor gt = ldm_tensor_wrap(gd, ldm_shape_of(last_layer), last_layer->device);
            double n1 = 0, n2 = 0;
            if (!ldm_grad(ctx, nll_loss, 1, &last_layer, &gd) && !ldm_to_host(ctx, &gt, h)) n1 = ldm__norm2(h, n);
            if (!ldm_grad(ctx, g_loss, 1, &last_layer, &gd) && !ldm_to_host(ctx, &gt, h)) n2 = ldm__norm2(h, n);
            LDM_FREE(h);
            if (ldm_ctx_status(ctx)) return NULL;
            /* torch: norm / (norm + 1e-4) in float32, clamp, then times disc_weight */
            float dw = (float)n1 / ((float)n2 + 1e-4f);
            dw = dw < 0.0f ? 0.0f : dw > 1e4f ? 1e4f : dw;
            d_weight = dw * (float)c->disc_weight;
        } else if (L->training) {
            ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: the adaptive discriminator weight needs the gradient w.r.t. the decoder's last "
                           "layer (hint: pass ldm_vae_last_layer(vae) with grad mode on, or ldm_lpips_loss_set_training(L, 0) for "
                           "validation, where it is 0)", what);
            return NULL;
        }
    }
    float disc_factor = global_step < c->disc_start ? 0.0f : (float)c->disc_factor;
    ldm_tensor *loss = ldm_add(ctx, nll_loss, ldm_scale(ctx, kl_loss, (float)c->kl_weight));
    float coef = d_weight * disc_factor;
    if (coef != 0.0f) loss = ldm_add(ctx, loss, ldm_scale(ctx, g_loss, coef));
    if (!loss) return NULL;
    if (log) {
        int prev = ldm_set_grad_enabled(ctx, 0);
        ldm__log_put(log, split, "total_loss", ldm__scalar(ctx, loss));
        ldm__log_put(log, split, "logvar", ldm__scalar(ctx, L->logvar));
        ldm__log_put(log, split, "kl_loss", ldm__scalar(ctx, kl_loss));
        ldm__log_put(log, split, "nll_loss", ldm__scalar(ctx, nll_loss));
        ldm__log_put(log, split, "rec_loss", ldm__scalar(ctx, ldm_mean_all(ctx, rec)));
        ldm__log_put(log, split, "d_weight", d_weight);
        ldm__log_put(log, split, "disc_factor", disc_factor);
        ldm__log_put(log, split, "g_loss", ldm__scalar(ctx, g_loss));
        ldm_set_grad_enabled(ctx, prev);
    }
    return ldm_ctx_status(ctx) ? NULL : loss;
}

LDM_API ldm_tensor *ldm_lpips_loss_discriminator(ldm_ctx *ctx, ldm_lpips_loss *L, ldm_tensor *x, ldm_tensor *xrec,
                                                 int64_t global_step, const char *split, ldm_loss_log *log) {
    if (log) log->n = 0;
    if (ldm__loss_inputs(ctx, L, x, xrec, "LPIPSWithDiscriminator (discriminator step)")) return NULL;
    if (!split) split = "train";
    ldm_tensor *real = ldm_patchgan_forward(ctx, &L->disc, ldm_detach(ctx, x), L->training);
    ldm_tensor *fake = ldm_patchgan_forward(ctx, &L->disc, ldm_detach(ctx, xrec), L->training);
    ldm_tensor *a, *b;
    if (L->hinge) {
        a = ldm_mean_all(ctx, ldm_relu(ctx, ldm_affine(ctx, real, -1.0f, 1.0f)));
        b = ldm_mean_all(ctx, ldm_relu(ctx, ldm_add_scalar(ctx, fake, 1.0f)));
    } else {
        a = ldm_mean_all(ctx, ldm_softplus(ctx, ldm_scale(ctx, real, -1.0f), 1.0f, 20.0f));
        b = ldm_mean_all(ctx, ldm_softplus(ctx, fake, 1.0f, 20.0f));
    }
    float disc_factor = global_step < L->cfg.disc_start ? 0.0f : (float)L->cfg.disc_factor;
    /* torch: disc_factor * (0.5 * (a + b)) */
    ldm_tensor *d_loss = ldm_scale(ctx, ldm_scale(ctx, ldm_add(ctx, a, b), 0.5f), disc_factor);
    if (!d_loss) return NULL;
    if (log) {
        int prev = ldm_set_grad_enabled(ctx, 0);
        ldm__log_put(log, split, "disc_loss", ldm__scalar(ctx, d_loss));
        ldm__log_put(log, split, "logits_real", ldm__scalar(ctx, ldm_mean_all(ctx, real)));
        ldm__log_put(log, split, "logits_fake", ldm__scalar(ctx, ldm_mean_all(ctx, fake)));
        ldm_set_grad_enabled(ctx, prev);
    }
    return ldm_ctx_status(ctx) ? NULL : d_loss;
}

/* ---- metrics ----------------------------------------------------------------------------- */
/* volumes: [B, C, T, H, W] accepted too (PSNR) */
static ldm_result ldm__metric_args(ldm_ctx *ctx, const ldm_tensor *a, const ldm_tensor *b, int min_hw, int volumes, const char *what) {
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    if (!a || !b) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: NULL image", what);
    char s1[96], s2[96];
    if (!ldm_shape_eq(a, b) || !(a->ndim == 4 || (volumes && a->ndim == 5)))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: images must be [B, C, H, W]%s of the same shape, got %s and %s", what,
                              volumes ? " or volumes [B, C, T, H, W]" : " (2-D only)",
                              ldm_shape_str(a, s1, sizeof s1), ldm_shape_str(b, s2, sizeof s2));
    if (a->shape[a->ndim - 2] < min_hw || a->shape[a->ndim - 1] < min_hw)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: images of %lldx%lld pixels are too small (at least %dx%d)", what,
                              (long long)a->shape[a->ndim - 2], (long long)a->shape[a->ndim - 1], min_hw, min_hw);
    return LDM_OK;
}
/* host copies of both images (malloc'd, a then b) */
static float *ldm__metric_host(ldm_ctx *ctx, const ldm_tensor *a, const ldm_tensor *b) {
    float *h = (float *)LDM_MALLOC(sizeof(float) * (size_t)a->numel * 2);
    if (!h) { ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "metrics: out of memory"); return NULL; }
    if (ldm_to_host(ctx, a, h) || ldm_to_host(ctx, b, h + a->numel)) { LDM_FREE(h); return NULL; }
    return h;
}

LDM_API ldm_result ldm_metric_psnr(ldm_ctx *ctx, const ldm_tensor *a, const ldm_tensor *b, double data_range, double *out) {
    if (ldm__metric_args(ctx, a, b, 1, 1, "PSNR")) return ldm_ctx_status(ctx);
    float *h = ldm__metric_host(ctx, a, b);
    if (!h) return ldm_ctx_status(ctx);
    int64_t B = a->shape[0], n = a->numel / B;
    for (int64_t i = 0; i < B; i++) {
        double s = 0;
        for (int64_t k = 0; k < n; k++) { double d = (double)h[i * n + k] - h[a->numel + i * n + k]; s += d * d; }
        out[i] = 10.0 * log10(data_range * data_range / (s / (double)n)); /* identical images: +inf, as skimage */
    }
    LDM_FREE(h);
    return LDM_OK;
}

/* Gaussian correlation of an H x W plane keeping the (H-10) x (W-10) outputs whose 11 x 11
   window lies inside: rows first into tmp, then columns into out. */
static void ldm__ssim_filter(const double *img, int64_t H, int64_t W, const double *k, double *tmp, double *out) {
    int64_t OH = H - 10, OW = W - 10;
    for (int64_t y = 0; y < H; y++)
        for (int64_t x = 0; x < OW; x++) {
            double s = 0;
            for (int j = 0; j < 11; j++) s += k[j] * img[y * W + x + j];
            tmp[y * OW + x] = s;
        }
    for (int64_t y = 0; y < OH; y++)
        for (int64_t x = 0; x < OW; x++) {
            double s = 0;
            for (int j = 0; j < 11; j++) s += k[j] * tmp[(y + j) * OW + x];
            out[y * OW + x] = s;
        }
}

LDM_API ldm_result ldm_metric_ssim(ldm_ctx *ctx, const ldm_tensor *a, const ldm_tensor *b, double data_range, double *out) {
    if (ldm__metric_args(ctx, a, b, 11, 0, "SSIM")) return ldm_ctx_status(ctx);
    float *h = ldm__metric_host(ctx, a, b);
    if (!h) return ldm_ctx_status(ctx);
    int64_t B = a->shape[0], C = a->shape[1], H = a->shape[2], W = a->shape[3], S = H * W, O = (H - 10) * (W - 10);
    /* skimage: sigma 1.5, truncate 3.5 -> radius 5; weights exp(-x^2 / (2 sigma^2)), normalised */
    double k[11], ks = 0;
    for (int j = 0; j < 11; j++) { k[j] = exp(-0.5 * (double)((j - 5) * (j - 5)) / (1.5 * 1.5)); ks += k[j]; }
    for (int j = 0; j < 11; j++) k[j] /= ks;
    double *buf = (double *)LDM_MALLOC(sizeof(double) * (size_t)(5 * S + H * (W - 10) + 5 * O));
    if (!buf) { LDM_FREE(h); return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "SSIM: out of memory"); }
    double *in[5], *f[5], *tmp = buf + 5 * S;
    for (int i = 0; i < 5; i++) { in[i] = buf + i * S; f[i] = tmp + H * (W - 10) + i * O; }
    const double c1 = (0.01 * data_range) * (0.01 * data_range), c2 = (0.03 * data_range) * (0.03 * data_range);
    for (int64_t bi = 0; bi < B; bi++) {
        double total = 0;
        for (int64_t c = 0; c < C; c++) {
            const float *pa = h + (bi * C + c) * S, *pb = h + a->numel + (bi * C + c) * S;
            for (int64_t i = 0; i < S; i++) {
                double x = pa[i], y = pb[i];
                in[0][i] = x; in[1][i] = y; in[2][i] = x * x; in[3][i] = y * y; in[4][i] = x * y;
            }
            for (int i = 0; i < 5; i++) ldm__ssim_filter(in[i], H, W, k, tmp, f[i]);
            double s = 0;
            for (int64_t i = 0; i < O; i++) {
                double ux = f[0][i], uy = f[1][i];
                double vx = f[2][i] - ux * ux, vy = f[3][i] - uy * uy, vxy = f[4][i] - ux * uy;
                s += ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
            }
            total += s / (double)O;
        }
        out[bi] = total / (double)C;
    }
    LDM_FREE(buf);
    LDM_FREE(h);
    return LDM_OK;
}

LDM_API ldm_result ldm_metric_lpips(ldm_ctx *ctx, ldm_lpips *lp, ldm_tensor *a, ldm_tensor *b, double *out) {
    if (ldm__lpips_check(ctx, lp, a, b, "LPIPS metric")) return ldm_ctx_status(ctx);
    int prev = ldm_set_grad_enabled(ctx, 0);
    ldm_mark m = ldm_arena_mark(ctx);
    ldm_tensor *v = ldm_lpips_forward(ctx, lp, a, b, 0);
    int64_t B = a->shape[0];
    float *h = (float *)LDM_MALLOC(sizeof(float) * (size_t)B);
    if (!h && !ldm_ctx_status(ctx)) ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "LPIPS metric: out of memory");
    if (v && h && !ldm_to_host(ctx, v, h))
        for (int64_t i = 0; i < B; i++) out[i] = h[i];
    LDM_FREE(h);
    ldm_arena_rewind(ctx, m);
    ldm_set_grad_enabled(ctx, prev);
    return ldm_ctx_status(ctx);
}

#endif /* LDM_LPIPS_IMPLEMENTATION_DONE */
#endif /* LDM_IMPLEMENTATION || LDM_LPIPS_IMPLEMENTATION */
