/* cc -std=c99 -O2 -march=native -I. -Ithird_party examples/lpips.c -o build/ldm-lpips -lm -lpthread
   GPU: nvcc -x cu -O2 -arch=sm_80 -DLDM_CUDA -Xcompiler -ffp-contract=off -I. -Ithird_party examples/lpips.c -o build/ldm-lpips -lcublas -lm -lpthread

   ldm-lpips - perceptual distance (LPIPS-VGG16), PSNR and SSIM between two images.

       ldm-lpips A.png B.png --weights lpips_vgg.safetensors [--weights2 vgg.pth]

   Prints "lpips: v", "psnr: v" (dB) and "ssim: v", one per line. Images are read with
   stb_image (PNG, JPEG, BMP, ...) as RGB and must have the same size (at least 16x16). PSNR
   and SSIM are computed on [0, 1] pixels (skimage conventions, see ldm_lpips.h), LPIPS on
   [-1, 1]. --weights takes the file written by tools/convert_lpips.py, or torchvision's
   vgg16-397923af.pth with LPIPS's vgg.pth as --weights2 (either order). Exit status: 0 on
   success, 1 on any error (the message names the file), 2 on bad usage. */
#define LDM_IMPLEMENTATION
#include "ldm_lpips.h"
#define STB_IMAGE_IMPLEMENTATION
#include "stb_image.h"

static void usage(void) {
    fprintf(stderr, "usage: ldm-lpips A.png B.png --weights W [--weights2 W2]\n"
                    "  W: LPIPS weights (tools/convert_lpips.py output), or torchvision's vgg16 .pth with LPIPS's vgg.pth as W2\n");
}

/* RGB8 image -> [1, 3, H, W] host floats: v/255 (unit) and 2*v/255 - 1 (signed) */
static int load_image(const char *path, int *w, int *h, float **unit, float **sgn) {
    int n;
    unsigned char *px = stbi_load(path, w, h, &n, 3);
    if (!px) { fprintf(stderr, "ldm-lpips: cannot read image %s: %s\n", path, stbi_failure_reason()); return 1; }
    size_t S = (size_t)*w * (size_t)*h;
    *unit = (float *)malloc(sizeof(float) * 3 * S);
    *sgn = (float *)malloc(sizeof(float) * 3 * S);
    if (!*unit || !*sgn) { fprintf(stderr, "ldm-lpips: out of memory for %s\n", path); stbi_image_free(px); return 1; }
    for (size_t i = 0; i < S; i++)
        for (int c = 0; c < 3; c++) {
            float v = (float)px[i * 3 + c] / 255.0f;
            (*unit)[c * S + i] = v;
            (*sgn)[c * S + i] = v * 2.0f - 1.0f;
        }
    stbi_image_free(px);
    return 0;
}

int main(int argc, char **argv) {
    const char *img[2] = {NULL, NULL}, *wa = NULL, *wb = NULL;
    int ni = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--weights") && i + 1 < argc) wa = argv[++i];
        else if (!strcmp(argv[i], "--weights2") && i + 1 < argc) wb = argv[++i];
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) { usage(); return 0; }
        else if (argv[i][0] == '-' && argv[i][1]) { fprintf(stderr, "ldm-lpips: unknown option %s\n", argv[i]); usage(); return 2; }
        else if (ni < 2) img[ni++] = argv[i];
        else { fprintf(stderr, "ldm-lpips: more than two images given (%s)\n", argv[i]); usage(); return 2; }
    }
    if (ni != 2 || !wa) { usage(); return 2; }

    int w[2], h[2];
    float *unit[2] = {NULL, NULL}, *sgn[2] = {NULL, NULL};
    for (int k = 0; k < 2; k++)
        if (load_image(img[k], &w[k], &h[k], &unit[k], &sgn[k])) return 1;
    if (w[0] != w[1] || h[0] != h[1]) {
        fprintf(stderr, "ldm-lpips: the images differ in size: %s is %dx%d, %s is %dx%d (hint: compare images of the same size)\n",
                img[0], w[0], h[0], img[1], w[1], h[1]);
        return 1;
    }
    if (w[0] < 16 || h[0] < 16) {
        fprintf(stderr, "ldm-lpips: %s is %dx%d; LPIPS needs at least 16x16 pixels\n", img[0], w[0], h[0]);
        return 1;
    }

    ldm_ctx *ctx;
    if (ldm_ctx_create(&ctx, NULL)) { fprintf(stderr, "ldm-lpips: cannot create the context\n"); return 1; }
    ldm_lpips *lp = NULL;
    double lpips = 0, psnr = 0, ssim = 0;
    ldm_shape s = ldm_shape4(1, 3, h[0], w[0]);
    if (!ldm_lpips_create(ctx, &lp, NULL) && !ldm_lpips_load(ctx, lp, wa, wb)) {
        ldm_tensor *ua = ldm_from_host(ctx, s, unit[0]), *ub = ldm_from_host(ctx, s, unit[1]);
        ldm_tensor *sa = ldm_from_host(ctx, s, sgn[0]), *sb = ldm_from_host(ctx, s, sgn[1]);
        if (!ldm_metric_lpips(ctx, lp, sa, sb, &lpips) && !ldm_metric_psnr(ctx, ua, ub, 1.0, &psnr))
            ldm_metric_ssim(ctx, ua, ub, 1.0, &ssim);
    }
    int rc = 0;
    if (ldm_ctx_status(ctx)) {
        fprintf(stderr, "ldm-lpips: %s\n", ldm_ctx_error(ctx));
        rc = 1;
    } else {
        printf("lpips: %.6f\npsnr: %.4f\nssim: %.6f\n", lpips, psnr, ssim);
    }
    ldm_lpips_destroy(lp);
    ldm_ctx_destroy(ctx);
    for (int k = 0; k < 2; k++) { free(unit[k]); free(sgn[k]); }
    return rc;
}
