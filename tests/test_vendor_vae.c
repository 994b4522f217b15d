/* test_vendor_vae.c - a program that vendors only ldm_vae.h (with the ldm_nn.h and
   ldm_tensor.h it includes) for inference, as a user would. build.sh compiles it as C99 and,
   as every tests/test_vendor_*.c, also as C++ (build/test_vendor_vae_cpp). It encodes and
   decodes the tiny fixture model and compares with PyTorch. */
#define LDM_IMPLEMENTATION
#include "../ldm_vae.h"
#include "ldm_test.h"

int main(void) {
    ldm_ctx *ctx;
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.arena_bytes = (size_t)256 << 20;
    if (ldm_ctx_create(&ctx, &s)) return 1;
    ldm_vae_config c = ldm_vae_config_kl_f4();
    c.z_channels = 4; c.embed_dim = 4; c.resolution = 32; c.ch = 32;
    c.ch_mult[0] = 2; c.ch_mult[1] = 1; c.n_levels = 2; c.num_res_blocks = 1;
    c.attn_resolutions[0] = 16; c.n_attn = 1;
    ldm_vae *vae;
    ldm_weights *fx;
    int ok = !ldm_vae_create(ctx, &vae, &c) && !ldm_vae_load(ctx, vae, "../tests/fixtures/vae_tiny_compvis.safetensors", 1) &&
             !ldm_weights_open(ctx, &fx, "../tests/fixtures/vae_tiny.safetensors");
    lt_report(ok, "vendored ldm_vae.h: create + strict load", "%s", ldm_ctx_error(ctx));
    if (!ok) return lt_finish("test_vendor_vae");
    ldm_vae_posterior q;
    ldm_vae_infer inf;
    memset(&inf, 0, sizeof inf);
    ldm_tensor *x = lt_tensor(ctx, fx, "x");
    ldm_vae_encode_infer(ctx, vae, x, &inf, &q);
    long n;
    float *want = lt_load(ctx, fx, "mean", &n);
    if (q.mean && want) lt_close("vendored ldm_vae.h: encode mean vs PyTorch", q.mean->data, want, n, 1e-5, 1e-4);
    else lt_report(0, "vendored ldm_vae.h: encode", "%s", ldm_ctx_error(ctx));
    free(want);
    ldm_tensor *img = ldm_vae_decode_infer(ctx, vae, q.mean, &inf);
    lt_report(img && img->shape[2] == 16 && img->shape[3] == 16, "vendored ldm_vae.h: decode shape", "%s", ldm_ctx_error(ctx));
    ldm_weights_close(fx);
    ldm_vae_destroy(vae);
    ldm_ctx_destroy(ctx);
    return lt_finish("test_vendor_vae");
}
