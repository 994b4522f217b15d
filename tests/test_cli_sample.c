/* test_cli_sample.c - the ldm-sample command line (build/ldm-sample, run from build/) on the
   tiny LatentDiffusion of tests/fixtures/ldm_tiny.ckpt: a grid PNG of the right size from a
   CompVis .ckpt and from an ldm.h checkpoint directory (the same pixels), the EMA weights,
   and clean failures (a wrong checkpoint lists the names, a missing file, bad options). */
#define _POSIX_C_SOURCE 200809L
#define LDM_IMPLEMENTATION
#include "../ldm_config.h"
#include "../ldm_diffusion.h"
#include "ldm_test.h"
#include <sys/stat.h>

static int run(const char *cmd, char *out, size_t n) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t k = fread(out, 1, n - 1, p);
    out[k] = 0;
    return pclose(p);
}

/* width and height from a PNG's IHDR, or -1 */
static void png_size(const char *path, long *w, long *h) {
    unsigned char b[24];
    FILE *f = fopen(path, "rb");
    *w = *h = -1;
    if (!f) return;
    if (fread(b, 1, 24, f) == 24 && b[1] == 'P' && b[2] == 'N' && b[3] == 'G') {
        *w = ((long)b[16] << 24) | ((long)b[17] << 16) | ((long)b[18] << 8) | b[19];
        *h = ((long)b[20] << 24) | ((long)b[21] << 16) | ((long)b[22] << 8) | b[23];
    }
    fclose(f);
}

static int same_file(const char *a, const char *b) {
    FILE *f = fopen(a, "rb"), *g = fopen(b, "rb");
    int same = f && g;
    while (same) {
        int x = fgetc(f), y = fgetc(g);
        if (x != y) same = 0;
        if (x == EOF || y == EOF) break;
    }
    if (f) fclose(f);
    if (g) fclose(g);
    return same;
}

/* an ldm.h checkpoint directory (model.safetensors) written by ldm_latent_diffusion_save */
static int write_ldm_checkpoint(const char *dir) {
    ldm_ctx *ctx;
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.arena_bytes = (size_t)64 << 20;
    if (ldm_ctx_create(&ctx, &s)) return 1;
    ldm_config *cfg;
    ldm_latent_diffusion_config lc;
    ldm_latent_diffusion *ld = NULL;
    int r = ldm_config_create(&cfg) || ldm_config_load(cfg, "../tests/configs/ldm_tiny.yaml") || ldm_latent_diffusion_config_read(cfg, NULL, &lc);
    ldm_config_destroy(cfg);
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    mkdir(dir, 0755);
    if (!r) r = ldm_latent_diffusion_create(ctx, &ld, &lc) || ldm_latent_diffusion_load(ctx, ld, "../tests/fixtures/ldm_tiny.ckpt", NULL) ||
                ldm_latent_diffusion_save(ctx, ld, path, LDM_F32);
    if (r) printf("  %s\n", ldm_ctx_error(ctx));
    ldm_latent_diffusion_destroy(ld);
    ldm_ctx_destroy(ctx);
    return r;
}

int main(void) {
    char out[16384];
    long w, h;
    const char *base = "./ldm-sample --config ../tests/configs/ldm_tiny.yaml --steps 4 --scale 3 --seed 5";
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s --ckpt ../tests/fixtures/ldm_tiny.ckpt --n 5 --class 2 --out cli_grid.png 2>&1", base);
    int st = run(cmd, out, sizeof out);
    png_size("cli_grid.png", &w, &h);
    lt_report(st == 0 && w == 4 * 10 + 2 && h == 2 * 10 + 2, "5 samples of 8x8 -> a 4-per-row grid PNG 42x22 (padding 2)", "status %d, %ldx%ld: %s", st, w, h, out);
    lt_report(strstr(out, "4/4") != NULL, "a progress bar over the steps on stderr", "%s", out);

    lt_report(write_ldm_checkpoint("cli_ldm_ckpt") == 0, "an ldm.h checkpoint directory written", "see above");
    snprintf(cmd, sizeof cmd, "%s --ckpt cli_ldm_ckpt --n 5 --class 2 --out cli_grid_dir.png 2>&1", base);
    st = run(cmd, out, sizeof out);
    lt_report(st == 0 && same_file("cli_grid.png", "cli_grid_dir.png"), "the ldm.h checkpoint directory gives the same PNG", "status %d: %s", st, out);

    snprintf(cmd, sizeof cmd, "%s --ckpt ../tests/fixtures/ldm_tiny.ckpt --n 5 --class 2 --ema --out cli_grid_ema.png 2>&1", base);
    st = run(cmd, out, sizeof out);
    png_size("cli_grid_ema.png", &w, &h);
    lt_report(st == 0 && w == 42 && h == 22 && !same_file("cli_grid.png", "cli_grid_ema.png"), "--ema samples with the model_ema weights (another image)",
              "status %d: %s", st, out);

    snprintf(cmd, sizeof cmd, "%s --ckpt ../tests/fixtures/vae_tiny.ckpt --n 2 --out cli_bad.png 2>&1", base);
    st = run(cmd, out, sizeof out);
    lt_report(st != 0 && strstr(out, "model.diffusion_model.") && strstr(out, "time_embed.0.weight"),
              "a checkpoint for another model: the error lists the names", "status %d: %.400s", st, out);
    snprintf(cmd, sizeof cmd, "%s --ckpt no_such.ckpt --out cli_bad.png 2>&1", base);
    st = run(cmd, out, sizeof out);
    lt_report(st != 0 && strstr(out, "no_such.ckpt"), "a missing checkpoint is an error naming it", "status %d: %s", st, out);
    st = run("./ldm-sample --config no_such.yaml --ckpt ../tests/fixtures/ldm_tiny.ckpt --out x.png 2>&1", out, sizeof out);
    lt_report(st != 0 && strstr(out, "no_such.yaml"), "a missing config is an error naming it", "status %d: %s", st, out);
    st = run("./ldm-sample --config ../tests/configs/ldm_tiny.yaml --out x.png 2>&1", out, sizeof out);
    lt_report(st != 0 && strstr(out, "usage") && strstr(out, "--ckpt"), "a missing --ckpt prints the usage", "status %d: %s", st, out);
    st = run("./ldm-sample --config ../tests/configs/ldm_tiny.yaml --ckpt ../tests/fixtures/ldm_tiny.ckpt --n two --out x.png 2>&1", out, sizeof out);
    lt_report(st != 0 && strstr(out, "usage"), "a non-integer --n prints the usage", "status %d: %s", st, out);
    snprintf(cmd, sizeof cmd, "%s --ckpt ../tests/fixtures/ldm_tiny.ckpt --class 9 --out x.png 2>&1", base);
    st = run(cmd, out, sizeof out);
    lt_report(st != 0 && strstr(out, "5 classes"), "a class outside the model's is an error", "status %d: %s", st, out);
    return lt_finish("test_cli_sample");
}
