/* bench_vae.c - AutoencoderKL inference speed and memory: the seed kl-f4 model (random
   weights), encode+decode at 256x256 and decode at 512x512 (latent 128x128), batch 1, no
   grad. When PyTorch is installed, bench/vae_torch.py runs the same cases with the same
   thread count in this run and the ratios are printed (> 1: ldm.h is faster).
   Build: ./build.sh bench   (or cc -O2 -march=native -I. bench/bench_vae.c -lm -lpthread) */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, popen */
#define LDM_IMPLEMENTATION
#include "ldm_vae.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(void) {
    ldm_ctx *ctx;
    if (ldm_ctx_create(&ctx, NULL)) return 1;
    ldm_vae_config cfg = ldm_vae_config_kl_f4();
    ldm_vae *vae;
    if (ldm_vae_create(ctx, &vae, &cfg)) { fprintf(stderr, "%s\n", ldm_ctx_error(ctx)); return 1; }
    int threads = ldm_ctx_threads(ctx);
    ldm_vae_infer inf;
    memset(&inf, 0, sizeof inf);
    const char *names[2] = {"encdec256", "dec512"};
    double secs[2], peak[2];
    for (int c = 0; c < 2; c++) {
        double best = 1e30;
        for (int rep = 0; rep < (c ? 2 : 3) + 1; rep++) { /* first run is the warm-up */
            ldm_step_reset(ctx);
            ldm_tensor *x = c ? ldm_randn(ctx, ldm_shape4(1, 3, 128, 128)) : ldm_rand(ctx, ldm_shape4(1, 3, 256, 256));
            ldm_arena_reset_peak(ctx);
            size_t base = ldm_arena_used(ctx, LDM_CPU);
            double t0 = now();
            ldm_tensor *out;
            if (c == 0) {
                ldm_vae_posterior q;
                ldm_vae_encode_infer(ctx, vae, x, &inf, &q);
                out = ldm_vae_decode_infer(ctx, vae, q.mean, &inf);
            } else {
                out = ldm_vae_decode_infer(ctx, vae, x, &inf);
            }
            double t = now() - t0;
            if (!out) { fprintf(stderr, "%s\n", ldm_ctx_error(ctx)); return 1; }
            if (rep > 0 && t < best) best = t;
            peak[c] = (double)(ldm_arena_peak(ctx, LDM_CPU) - base) / 1048576.0;
        }
        secs[c] = best;
    }
    int64_t np = ldm_nn_numel(vae->P, NULL, 0);
    printf("AutoencoderKL kl-f4 (%.1fM params, weights %.0f MiB), %d threads, batch 1, no grad\n", (double)np / 1e6, (double)np * 4 / 1048576.0, threads);
    printf("%-26s %10s %16s\n", "case", "ldm.h s", "arena peak MiB");
    printf("%-26s %10.3f %16.1f\n", "encode+decode 256x256", secs[0], peak[0]);
    printf("%-26s %10.3f %16.1f\n", "decode 512x512", secs[1], peak[1]);
    ldm_vae_destroy(vae);
    ldm_ctx_destroy(ctx);

    /* PyTorch in the same run */
    if (system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0) {
        printf("PyTorch not installed: no ratios (apt-get install python3-torch)\n");
        return 0;
    }
    char cmd[256];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 bench/vae_torch.py %d 2>/dev/null || /usr/bin/python3 ../bench/vae_torch.py %d", threads, threads);
    FILE *p = popen(cmd, "r");
    if (!p) return 0;
    char name[64];
    double ts, rss;
    printf("%-26s %10s %10s %12s %16s\n", "case", "ldm.h s", "torch s", "torch/ldm.h", "torch maxrss MiB");
    while (fscanf(p, "%63s %lf %lf", name, &ts, &rss) == 3)
        for (int c = 0; c < 2; c++)
            if (!strcmp(name, names[c]))
                printf("%-26s %10.3f %10.3f %12.2f %16.0f\n", c ? "decode 512x512" : "encode+decode 256x256", secs[c], ts, ts / secs[c], rss);
    pclose(p);
    return 0;
}
