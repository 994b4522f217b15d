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

/* ---- 3. samplers --------------------------------------------------------------------------- */
/* @@ section 3 implementation @@ */

#endif /* LDM_DIFFUSION_IMPLEMENTATION_DONE */
#endif /* LDM_IMPLEMENTATION */
