/* volgen.h - synthetic volumes for the 3-D demo and tests: each one S x S x S voxels (z, y, x),
   a dim background (0.1) and one or two solid ellipsoids (axis-aligned, radii 0.18..0.32 of
   the side, intensity 0.6..0.9, edges smoothed over about one voxel), plus Gaussian noise
   (sigma 0.03), saved as float32 NIfTI-1 (.nii.gz). Deterministic for a seed (a 64-bit LCG and
   Box-Muller, no libc rand).

       ex_volgen_one(S, seed, k, vox)        volume k into vox (S^3 floats)
       ex_volgen_write(ctx, dir, n, S, seed) vol_000.nii.gz ... into dir (which must exist)

   Used with VolumeDataset's norm window a_min 0, a_max 1 -> [-1, 1]: the foreground
   (value > 0.5 raw, > 0 normalised) is 10-35% of a volume. Include after ldm_data.h. */
#ifndef EX_VOLGEN_H
#define EX_VOLGEN_H

#include "ldm_data.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static double ex__volgen_u(uint64_t *s) {   /* U[0, 1) */
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*s >> 11) * (1.0 / 9007199254740992.0);
}

static void ex_volgen_one(int S, uint64_t seed, int k, float *vox) {
    uint64_t st = seed * 0x9E3779B97F4A7C15ULL + (uint64_t)k * 0xD1B54A32D192ED03ULL + 1;
    for (int i = 0; i < 4; i++) ex__volgen_u(&st);
    int ne = 1 + (ex__volgen_u(&st) < 0.5);
    double c[2][3], r[2][3], a[2];
    for (int e = 0; e < ne; e++) {
        for (int q = 0; q < 3; q++) {
            r[e][q] = S * (0.18 + 0.14 * ex__volgen_u(&st));
            c[e][q] = S * (0.3 + 0.4 * ex__volgen_u(&st));
        }
        a[e] = 0.6 + 0.3 * ex__volgen_u(&st);
    }
    for (int z = 0; z < S; z++)
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                double v = 0.1, p[3] = {z + 0.5, y + 0.5, x + 0.5};
                for (int e = 0; e < ne; e++) {
                    double d = 0;   /* ~ signed distance in voxels: (normalised radius - 1) * mean radius */
                    for (int q = 0; q < 3; q++) d += (p[q] - c[e][q]) * (p[q] - c[e][q]) / (r[e][q] * r[e][q]);
                    double rm = (r[e][0] + r[e][1] + r[e][2]) / 3.0, sd = (sqrt(d) - 1.0) * rm;
                    double w = 1.0 / (1.0 + exp(2.5 * sd));   /* soft edge */
                    double t = 0.1 + (a[e] - 0.1) * w;
                    if (t > v) v = t;
                }
                double u1 = ex__volgen_u(&st), u2 = ex__volgen_u(&st);
                v += 0.03 * sqrt(-2.0 * log(u1 + 1e-300)) * cos(6.283185307179586 * u2);
                vox[((size_t)z * S + y) * S + x] = (float)v;
            }
}

static ldm_result ex_volgen_write(ldm_ctx *ctx, const char *dir, int n, int S, uint64_t seed) {
    ldm_nifti v = ldm_nifti_make(S, S, S);
    v.nvox = (size_t)S * S * S;
    v.data = (float *)malloc(sizeof(float) * v.nvox);
    if (!v.data) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory");
    ldm_result r = LDM_OK;
    for (int k = 0; k < n && !r; k++) {
        char path[2048];
        snprintf(path, sizeof path, "%s/vol_%03d.nii.gz", dir, k);
        ex_volgen_one(S, seed, k, v.data);
        r = ldm_nifti_write(ctx, path, &v, LDM_NII_FLOAT32);
    }
    free(v.data);
    return r;
}

#endif /* EX_VOLGEN_H */
