/* fuzz_nifti.c - libFuzzer harness: NIfTI-1 files (.nii, or gzip'ed: told by the magic) through
   ldm_nifti_read. An accepted volume must be what its header says (dims, voxel count, every
   voxel readable), survive a write + read round trip as .nii.gz bit for bit (NaNs as NaNs) with
   its orientation, and resample (ldm_data_resize3, the dataset's resize). The voxel cap is
   lowered to FUZZ_MAX_READ_NUMEL so a header may declare anything without the harness
   allocating gigabytes. Seeds: tests/fixtures/nifti_*.nii*. */
#include "fuzz_common.h"
#include <math.h>

static int fuzz_nifti_same(float a, float b) { return a == b || (a != a && b != b); }

static int fuzz_nifti_run(const uint8_t *data, size_t size, char *err, size_t errn) {
    ldm_ctx *ctx = fuzz_ctx();
    if (!ctx) return fuzz_reject(err, errn, "cannot create a context");
    ldm_data_set_max_voxels(FUZZ_MAX_READ_NUMEL);
    ldm_nifti v, w;
    if (ldm_nifti_read(ctx, fuzz_file("in.nii", data, size), &v)) return fuzz_reject(err, errn, ldm_ctx_error(ctx));
    uint64_t total = 1;
    int bad = v.dim[0] < 1 || v.dim[0] > 7 || !v.data;
    for (int d = 1; d <= 7; d++) {
        bad |= v.dim[d] < 1 || (d > v.dim[0] && v.dim[d] != 1);
        total *= (uint64_t)(v.dim[d] > 0 ? v.dim[d] : 0);
    }
    if (bad || total != v.nvox || total > FUZZ_MAX_READ_NUMEL) {
        fprintf(stderr, "accepted NIfTI with dim[0] %d, %llu voxels from dims, nvox %lu\n", v.dim[0], (unsigned long long)total, (unsigned long)v.nvox);
        abort();
    }
    volatile float sum = 0; /* touch every voxel: ASan checks the size is real */
    for (size_t i = 0; i < v.nvox; i++) sum += v.data[i];
    /* round trip as float32 .nii.gz: the same voxels and orientation */
    const char *rt = fuzz_path("rt.nii.gz");
    if (ldm_nifti_write(ctx, rt, &v, LDM_NII_FLOAT32) || ldm_nifti_read(ctx, rt, &w)) {
        fprintf(stderr, "round trip failed: %s\n", ldm_ctx_error(ctx));
        abort();
    }
    int same = w.nvox == v.nvox && !memcmp(w.dim, v.dim, sizeof v.dim) && !memcmp(w.pixdim + 1, v.pixdim + 1, 7 * sizeof(float)) &&
               w.qform_code == v.qform_code && w.sform_code == v.sform_code && !memcmp(&w.quatern_b, &v.quatern_b, 6 * sizeof(float)) &&
               !memcmp(w.srow_x, v.srow_x, sizeof v.srow_x) && !memcmp(w.srow_y, v.srow_y, sizeof v.srow_y) && !memcmp(w.srow_z, v.srow_z, sizeof v.srow_z);
    for (size_t i = 0; same && i < v.nvox; i++) same = fuzz_nifti_same(v.data[i], w.data[i]);
    if (!same) {
        fprintf(stderr, "round trip changed the volume\n");
        abort();
    }
    ldm_nifti_free(&w);
    /* the dataset's view [C,T,H,W] = (t, z, y, x), resampled to 2x3x4 */
    if (v.dim[5] * v.dim[6] * v.dim[7] == 1) {
        float out[4 * 2 * 3 * 4];
        int C = v.dim[4] < 4 ? v.dim[4] : 4; /* the first channels */
        if (ldm_data_resize3(out, 2, 3, 4, v.data, C, v.dim[3], v.dim[2], v.dim[1])) {
            fprintf(stderr, "resize3 failed\n");
            abort();
        }
        for (int i = 0; i < C * 24; i++) sum += out[i];
    }
    ldm_nifti_free(&v);
    return 0;
}
FUZZ_ENTRY(fuzz_nifti_run)
