/* volume_io.h - what the driver writes for volumes (model outputs [B, C, T, H, W], values in
   [-1, 1]): one NIfTI-1 file per volume and PNG views of its middle slices.

     ex_volume_save_nifti   one volume [C, T, H, W] -> .nii / .nii.gz (float32), in the axis
                            order VolumeDataset reads (ldm_data.h): x = W, y = H, z = T, 4th
                            axis = C (only when C > 1); voxel size 1, identity orientation. The
                            values are the model's (normalised) ones: VolumeDataset's norm is per
                            volume and has no inverse.
     ex_volume_mid_slice    [B, C, T, H, W] -> [B, C, H, W]: the slice at T/2 of each volume
                            (the ImageLogger's grids of volumes)
     ex_volume_mid_views    one volume -> [C, Hv, Wv]: its three middle slices side by side
                            (T/2: H x W, H/2: T x W, W/2: T x H), 2 voxels of -1 between them
   Include after ldm_data.h. */
#ifndef EX_VOLUME_IO_H
#define EX_VOLUME_IO_H

#include "ldm_data.h"

#include <stdlib.h>
#include <string.h>

static ldm_result ex_volume_save_nifti(ldm_ctx *ctx, const char *path, const float *x, int C, int T, int H, int W) {
    ldm_nifti v = ldm_nifti_make(W, H, T);
    if (C > 1) { v.dim[0] = 4; v.dim[4] = C; }
    v.nvox = (size_t)C * T * H * W;
    v.data = (float *)x;   /* read only: ldm_nifti_write does not keep or free it */
    snprintf(v.descrip, sizeof v.descrip, "ldm.h sample (normalised intensities)");
    return ldm_nifti_write(ctx, path, &v, LDM_NII_FLOAT32);
}

/* out: B*C*H*W floats; may be x itself (compacted in place). */
static void ex_volume_mid_slice(const float *x, int B, int C, int T, int H, int W, float *out) {
    size_t plane = (size_t)H * W;
    for (size_t i = 0; i < (size_t)B * C; i++) memmove(out + i * plane, x + (i * T + (size_t)T / 2) * plane, sizeof(float) * plane);
}

/* The size of ex_volume_mid_views's picture. */
static void ex_volume_views_size(int T, int H, int W, int *hv, int *wv) {
    *hv = H > T ? H : T;
    *wv = W + 2 + W + 2 + H;
}
/* out: C * hv * wv floats (ex_volume_views_size). */
static void ex_volume_mid_views(const float *x, int C, int T, int H, int W, float *out) {
    int hv, wv;
    ex_volume_views_size(T, H, W, &hv, &wv);
    for (size_t i = 0; i < (size_t)C * hv * wv; i++) out[i] = -1.0f;
    for (int c = 0; c < C; c++) {
        const float *v = x + (size_t)c * T * H * W;
        float *o = out + (size_t)c * hv * wv;
        for (int y = 0; y < H; y++)          /* axial: k = T/2, rows j, columns i */
            for (int q = 0; q < W; q++) o[(size_t)y * wv + q] = v[((size_t)(T / 2) * H + y) * W + q];
        for (int t = 0; t < T; t++)          /* j = H/2: rows k, columns i */
            for (int q = 0; q < W; q++) o[(size_t)t * wv + W + 2 + q] = v[((size_t)t * H + H / 2) * W + q];
        for (int t = 0; t < T; t++)          /* i = W/2: rows k, columns j */
            for (int y = 0; y < H; y++) o[(size_t)t * wv + 2 * W + 4 + y] = v[((size_t)t * H + y) * W + W / 2];
    }
}

#endif /* EX_VOLUME_IO_H */
