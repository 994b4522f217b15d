/* test_cli_vae.c - the ldm-vae command line (build/ldm-vae, run from build/): encode ->
   decode through files in both weight layouts, the tensor names and shapes it writes, decode
   to PNG and to safetensors (unclamped), roundtrip metrics, and clear failures. */
#define _POSIX_C_SOURCE 200809L
#define LDM_IMPLEMENTATION
#include "../ldm_tensor.h"
#include "ldm_test.h"

static int run(const char *cmd, char *out, size_t n) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t k = fread(out, 1, n - 1, p);
    out[k] = 0;
    int st = pclose(p);
    return st;
}

int main(void) {
    ldm_ctx *ctx;
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.arena_bytes = (size_t)64 << 20;
    if (ldm_ctx_create(&ctx, &s)) return 1;
    FILE *f = fopen("cli_tiny.ini", "w");
    if (!f) return 1;
    fputs("embed_dim = 4\n[ddconfig]\nz_channels = 4\nresolution = 32\nch = 32\nch_mult = 2, 1\nnum_res_blocks = 1\nattn_resolutions = [16]\n", f);
    fclose(f);
    char out[8192];
    int st = run("./ldm-vae encode --config cli_tiny.ini --weights ../tests/fixtures/vae_tiny.ckpt ../data/astronaut.png cli_z.safetensors 2>&1", out, sizeof out);
    lt_report(st == 0, "ldm-vae encode (.ckpt under first_stage_model.)", "status %d: %s", st, out);
    ldm_weights *w;
    if (st == 0 && !ldm_weights_open(ctx, &w, "cli_z.safetensors")) {
        int ok = ldm_weights_count(w) == 3;
        const char *names[3] = {"mean", "logvar", "z"};
        for (int i = 0; i < 3 && ok; i++) {
            int k = ldm_weights_find(w, names[i]);
            const ldm_weight_info *inf = k >= 0 ? ldm_weights_info(w, k) : NULL;
            ok = inf && inf->ndim == 4 && inf->shape[0] == 1 && inf->shape[1] == 4 && inf->shape[2] == 112 && inf->shape[3] == 112;
        }
        lt_report(ok, "encode writes mean, logvar, z as [1, 4, 112, 112]", "wrong names or shapes");
        ldm_weights_close(w);
    }
    st = run("./ldm-vae decode --config cli_tiny.ini --weights ../tests/fixtures/vae_tiny_diffusers.safetensors cli_z.safetensors cli_out.safetensors 2>&1", out, sizeof out);
    lt_report(st == 0, "ldm-vae decode (diffusers F16) -> safetensors", "status %d: %s", st, out);
    if (st == 0 && !ldm_weights_open(ctx, &w, "cli_out.safetensors")) {
        int k = ldm_weights_find(w, "image");
        const ldm_weight_info *inf = k >= 0 ? ldm_weights_info(w, k) : NULL;
        lt_report(inf && inf->ndim == 4 && inf->shape[1] == 3 && inf->shape[2] == 224 && inf->shape[3] == 224, "decode writes image [1, 3, 224, 224]", "wrong");
        ldm_weights_close(w);
    }
    st = run("./ldm-vae decode --config cli_tiny.ini --weights ../tests/fixtures/vae_tiny_compvis.safetensors cli_z.safetensors cli_out.png --tile 64 2>&1", out, sizeof out);
    FILE *png = fopen("cli_out.png", "rb");
    unsigned char sig[8] = {0};
    if (png) { if (fread(sig, 1, 8, png) != 8) sig[0] = 0; fclose(png); }
    lt_report(st == 0 && sig[1] == 'P' && sig[2] == 'N' && sig[3] == 'G', "ldm-vae decode --tile 64 -> PNG", "status %d: %s", st, out);
    st = run("./ldm-vae roundtrip --config cli_tiny.ini --weights ../tests/fixtures/vae_tiny_compvis.safetensors ../data/astronaut.png cli_rt.png 2>&1", out, sizeof out);
    double psnr = -1, ssim = -2;
    const char *p = strstr(out, "psnr: "), *q = strstr(out, "ssim: ");
    if (p) psnr = atof(p + 6);
    if (q) ssim = atof(q + 6);
    lt_report(st == 0 && psnr > 0 && psnr < 100 && ssim > -1 && ssim <= 1, "ldm-vae roundtrip prints psnr and ssim", "status %d: %s", st, out);
    st = run("./ldm-vae encode --config cli_tiny.ini --weights ../tests/fixtures/vae_tiny.ckpt no_such_image.png x.safetensors 2>&1", out, sizeof out);
    lt_report(st != 0 && strstr(out, "no_such_image.png"), "a missing input is an error naming it", "status %d: %s", st, out);
    st = run("./ldm-vae decode --config ../configs/autoencoder_kl_64x64x3.yaml --weights ../tests/fixtures/vae_tiny_compvis.safetensors cli_z.safetensors x.png 2>&1", out, sizeof out);
    lt_report(st != 0 && strstr(out, "missing") && strstr(out, "encoder.down.0.block.1.norm1.weight"), "weights for another config: the error lists the names", "status %d: %s", st, out);
    st = run("./ldm-vae encode --config cli_tiny.ini 2>&1", out, sizeof out);
    lt_report(st != 0 && strstr(out, "usage"), "bad command lines print the usage", "status %d: %s", st, out);
    ldm_ctx_destroy(ctx);
    return lt_finish("test_cli_vae");
}
