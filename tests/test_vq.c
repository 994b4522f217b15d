/* test_vq.c - the VQ first stage (VQModelInterface + VectorQuantizer2) against PyTorch
   (tests/ref/vq_ref.py): encode, quantize (indices exactly, planted ties to the first index),
   decode, decode_code, the inference helpers (batch chunks, tiles); ldm_argmin's semantics;
   weights in CompVis names, also under first_stage_model. with loss.* skipped; the errors for
   a wrong n_embed / codebook shape or a KL/VQ mix-up; configs/first_stage_vq-f4.yaml read and
   built with PyTorch's parameter count. On a CUDA build the fixture checks rerun on the device.
   Loads files, so it also runs under ASan/UBSan: LDM_TEST_SANITIZE */
#define LDM_IMPLEMENTATION
#include "../ldm_config.h"
#include "../ldm_vae.h"
#include "ldm_test.h"

#define FIX "../tests/fixtures/"

static ldm_vae_config tiny_cfg(void) {
    ldm_vae_config c = ldm_vae_config_vq_f4();
    c.resolution = 32; c.ch = 32;
    c.ch_mult[0] = 1; c.ch_mult[1] = 2; c.n_levels = 2; c.num_res_blocks = 1;
    c.attn_resolutions[0] = 16; c.n_attn = 1;
    c.n_embed = 64;
    return c;
}

/* Hash weights (lt_hash_init, as the reference) and the fixture's codebook. */
static int tiny_model(ldm_ctx *ctx, ldm_weights *fx, ldm_vae **out) {
    ldm_vae_config cfg = tiny_cfg();
    ldm_vae *v;
    if (ldm_vae_create(ctx, &v, &cfg)) return 0;
    for (int i = 0; i < ldm_nn_count(v->P); i++) {
        const ldm_nn_entry *e = ldm_nn_entry_at(v->P, i);
        float *h = (float *)malloc(sizeof(float) * (size_t)e->t->numel);
        if (!h) continue;
        lt_hash_init(e->name, h, e->t->ndim, e->t->shape);
        ldm_nn_copy_from_host(ctx, e->t, h);
        free(h);
    }
    float *cb = lt_load(ctx, fx, "codebook", NULL);
    int ok = cb && v->codebook && ldm_nn_copy_from_host(ctx, v->codebook, cb) == LDM_OK;
    free(cb);
    if (!ok) { ldm_vae_destroy(v); return 0; }
    *out = v;
    return 1;
}

static void close_to(ldm_ctx *ctx, ldm_weights *fx, const char *key, const ldm_tensor *got, const char *what) {
    long n = 0;
    float *want = lt_load(ctx, fx, key, &n);
    if (got && want && n == got->numel) lt_close(what, lt_h(ctx, got, 0), want, n, 1e-5, 1e-4);
    else lt_report(0, what, "missing or wrong size: %s", ldm_ctx_error(ctx));
    free(want);
}
static void same_indices(ldm_ctx *ctx, ldm_weights *fx, const int64_t *got, long n, const char *what) {
    long nw = 0, bad = 0, first = -1;
    float *want = lt_load(ctx, fx, "indices", &nw);
    for (long i = 0; want && nw == n && i < n; i++)
        if (got[i] != (int64_t)want[i]) { bad++; if (first < 0) first = i; }
    lt_report(want && nw == n && bad == 0, what, "%ld of %ld differ (first at %ld: got %lld want %g)", bad, n, first,
              first >= 0 ? (long long)got[first] : 0LL, first >= 0 && want ? (double)want[first] : 0.0);
    free(want);
}

/* The fixture: encode, quantize, decode, decode_code, and the generic/inference entry points. */
static void test_fixture(ldm_ctx *ctx) {
    ldm_weights *fx;
    ldm_vae *v = NULL;
    if (ldm_weights_open(ctx, &fx, FIX "vq_tiny.safetensors") || !tiny_model(ctx, fx, &v)) {
        lt_report(0, "vq tiny: setup", "%s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
        return;
    }
    ldm_set_grad_enabled(ctx, 0);
    ldm_tensor *x = lt_tensor(ctx, fx, "x"), *href = lt_tensor(ctx, fx, "h");
    const long N = 2 * 8 * 8;
    int64_t idx[2 * 8 * 8], idx2[2 * 8 * 8];
    lt_report(ldm_vae_is_vq(v), "vq tiny: the model is a VQ model", "no codebook");
    ldm_tensor *h = ldm_vae_vq_encode(ctx, v, x);
    close_to(ctx, fx, "h", h, "vq tiny: encode (encoder + quant_conv, not quantized)");
    ldm_tensor *zq = ldm_vae_vq_quantize(ctx, v, href, idx);
    close_to(ctx, fx, "zq", zq, "vq tiny: quantize the reference h: z_q");
    same_indices(ctx, fx, idx, N, "vq tiny: quantize the reference h: indices equal PyTorch's exactly (planted ties to the first index)");
    ldm_vae_vq_quantize(ctx, v, h, idx2);
    same_indices(ctx, fx, idx2, N, "vq tiny: quantize our own h: indices equal PyTorch's exactly");
    close_to(ctx, fx, "dec", ldm_vae_vq_decode(ctx, v, h, 0), "vq tiny: decode (quantize, post_quant_conv, decoder)");
    close_to(ctx, fx, "dec", ldm_vae_decode(ctx, v, h), "vq tiny: ldm_vae_decode on a VQ model quantizes (VQModelInterface.decode)");
    close_to(ctx, fx, "dec_code", ldm_vae_vq_decode_code(ctx, v, idx, 2, 8, 8), "vq tiny: decode_code of the indices");
    close_to(ctx, fx, "dec", ldm_vae_forward(ctx, v, x, 1, NULL), "vq tiny: ldm_vae_forward (VQModel.forward)");
    {
        ldm_vae_posterior q;
        ldm_result r = ldm_vae_encode(ctx, v, x, &q);
        lt_report(r == LDM_OK && q.logvar == NULL && ldm_vae_posterior_sample(ctx, &q, NULL) == q.mean && ldm_vae_posterior_mode(&q) == q.mean,
                  "vq tiny: ldm_vae_encode gives h as a deterministic posterior (sample = mode = h)", "%s", ldm_ctx_error(ctx));
        close_to(ctx, fx, "h", q.mean, "vq tiny: ldm_vae_encode's h");
        lt_report(ldm_vae_posterior_kl(ctx, &q) == NULL && strstr(ldm_ctx_error(ctx), "no logvar"),
                  "vq tiny: the KL of a VQ latent is a clear error", "got: %s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
    }
    /* inference helpers: untiled equals the fixture, batch chunks of 1 equal the whole batch */
    ldm_vae_infer all = {0, 0, 0}, chunk = {1, 0, 0};
    ldm_vae_posterior qa, qc;
    ldm_vae_encode_infer(ctx, v, x, &all, &qa);
    close_to(ctx, fx, "h", qa.mean, "vq tiny: encode_infer (whole batch) = h");
    ldm_vae_encode_infer(ctx, v, x, &chunk, &qc);
    close_to(ctx, fx, "h", qc.mean, "vq tiny: encode_infer (chunks of 1) = h");
    close_to(ctx, fx, "dec", ldm_vae_decode_infer(ctx, v, href, &all), "vq tiny: decode_infer (whole batch) quantizes = dec");
    close_to(ctx, fx, "dec", ldm_vae_decode_infer(ctx, v, href, &chunk), "vq tiny: decode_infer (chunks of 1) quantizes = dec");
    lt_report(qa.logvar == NULL && qc.logvar == NULL, "vq tiny: encode_infer leaves logvar NULL", "logvar set");
    ldm_weights_close(fx);
    ldm_vae_destroy(v);
    ldm_set_grad_enabled(ctx, 1);
    ldm_step_reset(ctx);
    lt_host_release();
}

/* Tiles: quantization is per position, so a tiled decode of h equals the tiled decode of its
   quantized z_q (decode quantizes inside every tile), and tiled encode/decode run on a VQ model. */
static void test_tiles(ldm_ctx *ctx) {
    ldm_weights *fx;
    ldm_vae *v = NULL;
    if (ldm_weights_open(ctx, &fx, FIX "vq_tiny.safetensors") || !tiny_model(ctx, fx, &v)) {
        lt_report(0, "vq tiles: setup", "%s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
        return;
    }
    ldm_tensor *x = ldm_affine(ctx, ldm_rand(ctx, ldm_shape4(2, 3, 96, 96)), 2.0f, -1.0f);
    ldm_vae_infer all = {0, 0, 0}, tiled = {1, 64, 32};
    ldm_vae_posterior qa, qt;
    ldm_vae_encode_infer(ctx, v, x, &all, &qa);
    ldm_vae_encode_infer(ctx, v, x, &tiled, &qt);
    int ok = qa.mean && qt.mean && ldm_shape_eq(qa.mean, qt.mean) && qt.mean->shape[1] == 3 && qt.mean->shape[2] == 48;
    lt_report(ok, "vq tiles: tiled encode gives h [2, 3, 48, 48]", "%s", ldm_ctx_error(ctx));
    ldm_tensor *h = qa.mean;
    int64_t *idx = (int64_t *)malloc(sizeof(int64_t) * 2 * 2 * 48 * 48);
    ldm_tensor *zq = h && idx ? ldm_vae_vq_quantize(ctx, v, h, idx) : NULL;
    int same = zq && ldm_vae_vq_quantize(ctx, v, zq, idx + 2 * 48 * 48) && !memcmp(idx, idx + 2 * 48 * 48, sizeof(int64_t) * 2 * 48 * 48);
    lt_report(same, "vq tiles: quantizing z_q again picks the same codebook rows", "%s", ldm_ctx_error(ctx));
    ldm_tensor *dh = ldm_vae_decode_infer(ctx, v, h, &tiled), *dq = ldm_vae_decode_infer(ctx, v, zq, &tiled);
    ldm_tensor *du = ldm_vae_decode_infer(ctx, v, h, &all);
    if (!dh || !dq || !du) lt_report(0, "vq tiles: tiled decode", "%s", ldm_ctx_error(ctx));
    else {
        lt_report(dh->shape[2] == 96 && dh->shape[3] == 96, "vq tiles: tiled decode gives [2, 3, 96, 96]", "wrong shape");
        /* equal up to the rounding of z + (e - z), which the decoder carries to ~1e-6 */
        lt_close("vq tiles: tiled decode of h == tiled decode of its z_q (quantized per tile)", dh->data, dq->data, (long)dh->numel, 1e-5, 1e-4);
        double mad = 0, sd = 0, mean = 0;
        for (int64_t i = 0; i < du->numel; i++) mean += du->data[i];
        mean /= (double)du->numel;
        for (int64_t i = 0; i < du->numel; i++) { sd += (du->data[i] - mean) * (du->data[i] - mean); mad += fabs(dh->data[i] - du->data[i]); }
        sd = sqrt(sd / (double)du->numel);
        mad /= (double)du->numel;
        printf("     tiled vq decode: mean |tiled - untiled| = %.4g (output sd %.4g)\n", mad, sd);
        lt_report(mad < 0.12 * sd, "vq tiles: tiled decode (64-px tiles, 32 overlap) within 12% of the output sd of untiled", "mad %.4g sd %.4g", mad, sd);
    }
    free(idx);
    ldm_weights_close(fx);
    ldm_vae_destroy(v);
    ldm_step_reset(ctx);
}

/* ldm_argmin: torch.argmin(x, dim=-1) semantics on the CPU. */
static void test_argmin(ldm_ctx *ctx) {
    const float nan = (float)NAN, inf = (float)INFINITY;
    static float x[6][5];
    const float rows[6][5] = {{3, 1, 2, 1, 5},             /* tie: first index (1) */
                              {0, 0, 0, 0, 0},             /* all equal: 0 */
                              {2, -inf, 1, -inf, 0},       /* -inf, first: 1 */
                              {2, 1, nan, 0, nan},         /* NaN wins, the first: 2 */
                              {nan, -1, -2, -3, -4},       /* NaN at 0 */
                              {-0.0f, 0.0f, 1, 2, 3}};     /* -0 == 0: first */
    const int64_t want[6] = {1, 0, 1, 2, 0, 0};
    memcpy(x, rows, sizeof x);
    int64_t got[6] = {-1, -1, -1, -1, -1, -1};
    ldm_ctx_set_device(ctx, LDM_CPU);
    ldm_tensor *t = ldm_from_host(ctx, ldm_shape2(6, 5), &x[0][0]);
    ldm_result r = ldm_argmin(ctx, t, got);
    int ok = r == LDM_OK && memcmp(got, want, sizeof want) == 0;
    lt_report(ok, "argmin: first index on ties, -inf, NaN first (torch.argmin)", "got %lld %lld %lld %lld %lld %lld", (long long)got[0],
              (long long)got[1], (long long)got[2], (long long)got[3], (long long)got[4], (long long)got[5]);
    /* rows of a 3-D tensor are its last dim */
    ldm_tensor *t3 = ldm_reshape(ctx, t, ldm_shape3(3, 2, 5));
    int64_t g3[6];
    ok = ldm_argmin(ctx, t3, g3) == LDM_OK && memcmp(g3, want, sizeof want) == 0;
    lt_report(ok, "argmin: a 3-D tensor's rows are its last dim", "%s", ldm_ctx_error(ctx));
    ldm_step_reset(ctx);
}

static int write_named(ldm_ctx *ctx, const char *src, const char *dst, const char *pfx, const char *skip, int extras) {
    ldm_weights *w;
    if (ldm_weights_open(ctx, &w, src)) return 0;
    int n = ldm_weights_count(w), k = 0;
    ldm_named_data *nd = (ldm_named_data *)calloc((size_t)n + 2, sizeof *nd);
    float **bufs = (float **)calloc((size_t)n + 2, sizeof(float *));
    char **names = (char **)calloc((size_t)n + 2, sizeof(char *));
    static float extra[4] = {1, 2, 3, 4};
    for (int i = 0; i < n; i++) {
        const ldm_weight_info *inf = ldm_weights_info(w, i);
        if (skip && !strcmp(inf->name, skip)) continue;
        bufs[k] = (float *)malloc(sizeof(float) * (size_t)inf->numel);
        names[k] = (char *)malloc(strlen(pfx) + strlen(inf->name) + 1);
        sprintf(names[k], "%s%s", pfx, inf->name);
        ldm_weights_read(ctx, w, i, bufs[k]);
        nd[k].name = names[k]; nd[k].data = bufs[k]; nd[k].ndim = inf->ndim;
        memcpy(nd[k].shape, inf->shape, sizeof inf->shape);
        k++;
    }
    if (extras) { /* what a whole LDM / VQModel training checkpoint also holds */
        char *a = (char *)malloc(128), *b = (char *)malloc(128);
        snprintf(a, 128, "%sloss.discriminator.main.0.weight", pfx);
        snprintf(b, 128, "%s", *pfx ? "model.diffusion_model.out.0.weight" : "loss.logvar");
        names[n] = a; names[n + 1] = b;
        nd[k].name = a; nd[k].data = extra; nd[k].ndim = 1; nd[k].shape[0] = 4; k++;
        nd[k].name = b; nd[k].data = extra; nd[k].ndim = 1; nd[k].shape[0] = 2; k++;
    }
    ldm_result r = ldm_safetensors_write(ctx, dst, k, nd, LDM_F32, 0, NULL, NULL);
    for (int i = 0; i < n + 2; i++) { free(bufs[i]); free(names[i]); }
    free(bufs); free(names); free(nd);
    ldm_weights_close(w);
    return r == LDM_OK;
}

/* Weights: save -> load, CompVis names (the reference module's state dict), the whole-LDM prefix,
   and the errors for a mismatched codebook. */
static void test_weights(ldm_ctx *ctx) {
    ldm_weights *fx;
    ldm_vae *v = NULL, *v2 = NULL;
    if (ldm_weights_open(ctx, &fx, FIX "vq_tiny.safetensors") || !tiny_model(ctx, fx, &v)) {
        lt_report(0, "vq weights: setup", "%s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
        return;
    }
    ldm_vae_config cfg = tiny_cfg();
    int r = ldm_vae_save(ctx, v, "vq_tiny_saved.safetensors", LDM_F32);
    r = r || ldm_vae_create(ctx, &v2, &cfg) || ldm_vae_load(ctx, v2, "vq_tiny_saved.safetensors", 1);
    int64_t n1 = 0, n2 = 0;
    float *b1 = ldm_nn_block(v->P, LDM_NN_BLOCK_PARAMS, &n1), *b2 = v2 ? ldm_nn_block(v2->P, LDM_NN_BLOCK_PARAMS, &n2) : NULL;
    lt_report(!r && n1 == n2 && memcmp(b1, b2, sizeof(float) * (size_t)n1) == 0, "vq weights: save -> strict load is bitwise", "%s", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    /* the saved names are the reference module's state dict, in its order */
    {
        const char *keys = ldm_weights_metadata(fx, "state_dict_keys");
        ldm_weights *ws;
        int same = 0, count = 0;
        if (keys && !ldm_weights_open(ctx, &ws, "vq_tiny_saved.safetensors")) {
            same = 1;
            const char *p = keys;
            int i = 0;
            while (*p && same) {
                const char *e = strchr(p, ',');
                size_t len = e ? (size_t)(e - p) : strlen(p);
                const ldm_nn_entry *en = i < ldm_nn_count(v->P) ? ldm_nn_entry_at(v->P, i) : NULL;
                same = en && strlen(en->name) == len && !strncmp(en->name, p, len);
                char nm[256];
                snprintf(nm, sizeof nm, "%.*s", (int)len, p);
                same = same && ldm_weights_find(ws, nm) >= 0;
                i++; count++;
                p = e ? e + 1 : p + len;
            }
            same = same && count == ldm_nn_count(v->P) && count == ldm_weights_count(ws);
            ldm_weights_close(ws);
        }
        lt_report(same, "vq weights: names and order are PyTorch's VQModel state dict (quantize.embedding.weight included)",
                  "differ after %d names", count);
    }
    /* a whole latent-diffusion checkpoint (first_stage_model., other models' keys) and a VQModel
       training checkpoint (loss.*) load strictly */
    const char *variants[2][2] = {{"first_stage_model.", "vq_tiny_ldm.safetensors"}, {"", "vq_tiny_with_loss.safetensors"}};
    for (int k = 0; k < 2; k++) {
        ldm_nn_params_init(ctx, v2->P);
        int ok = write_named(ctx, "vq_tiny_saved.safetensors", variants[k][1], variants[k][0], NULL, 1) &&
                 ldm_vae_load(ctx, v2, variants[k][1], 1) == LDM_OK;
        b2 = ldm_nn_block(v2->P, LDM_NN_BLOCK_PARAMS, &n2);
        lt_report(ok && memcmp(b1, b2, sizeof(float) * (size_t)n1) == 0,
                  k ? "vq weights: a checkpoint with loss.* keys loads strictly (loss skipped)"
                    : "vq weights: a whole LDM checkpoint (first_stage_model., other keys) loads strictly", "%s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
    }
    /* a model with another n_embed: the error names the tensor and both shapes */
    {
        ldm_vae_config c2 = cfg;
        ldm_vae *v3 = NULL;
        c2.n_embed = 32;
        int rr = ldm_vae_create(ctx, &v3, &c2) ? -1 : ldm_vae_load(ctx, v3, "vq_tiny_saved.safetensors", 0);
        const char *msg = ldm_ctx_error(ctx);
        lt_report(rr != LDM_OK && strstr(msg, "quantize.embedding.weight") && strstr(msg, "[64, 3]") && strstr(msg, "[32, 3]") &&
                  strstr(msg, "n_embed"), "vq weights: a codebook of another size is a clear error naming the tensor (also non-strict)", "got: %s", msg);
        ldm_ctx_clear_error(ctx);
        ldm_vae_destroy(v3);
        /* an AutoencoderKL config given VQ weights, and a VQ model given a file without codebook */
        ldm_vae_config kl = cfg;
        kl.n_embed = 0; kl.double_z = 1;
        v3 = NULL;
        rr = ldm_vae_create(ctx, &v3, &kl) ? -1 : ldm_vae_load(ctx, v3, "vq_tiny_saved.safetensors", 1);
        msg = ldm_ctx_error(ctx);
        lt_report(rr != LDM_OK && strstr(msg, "quantize.embedding.weight") && strstr(msg, "AutoencoderKL") && strstr(msg, "n_embed"),
                  "vq weights: VQ weights into an AutoencoderKL say so (hint: n_embed)", "got: %s", msg);
        ldm_ctx_clear_error(ctx);
        ldm_vae_destroy(v3);
        rr = write_named(ctx, "vq_tiny_saved.safetensors", "vq_tiny_nocb.safetensors", "", "quantize.embedding.weight", 0) ? 0 : -1;
        rr = rr ? rr : ldm_vae_load(ctx, v2, "vq_tiny_nocb.safetensors", 1);
        msg = ldm_ctx_error(ctx);
        lt_report(rr != LDM_OK && strstr(msg, "quantize.embedding.weight") && strstr(msg, "codebook"),
                  "vq weights: a file without the codebook is a clear error naming it", "got: %s", msg);
        ldm_ctx_clear_error(ctx);
    }
    /* config errors */
    {
        ldm_vae_config c3 = cfg;
        ldm_vae *v4 = NULL;
        c3.double_z = 1;
        int rr = ldm_vae_create(ctx, &v4, &c3);
        lt_report(rr != LDM_OK && strstr(ldm_ctx_error(ctx), "double_z") && strstr(ldm_ctx_error(ctx), "n_embed"),
                  "vq config: n_embed with double_z true is refused", "got: %s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
        c3 = cfg;
        c3.n_embed = -3;
        rr = ldm_vae_create(ctx, &v4, &c3);
        lt_report(rr != LDM_OK && strstr(ldm_ctx_error(ctx), "n_embed = -3"), "vq config: a negative n_embed is refused", "got: %s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
        ldm_vae_config kl = ldm_vae_config_kl_f4();
        kl.ch = 32; kl.ch_mult[0] = 1; kl.ch_mult[1] = 2; kl.n_levels = 2; kl.num_res_blocks = 1;
        if (!ldm_vae_create(ctx, &v4, &kl)) {
            ldm_tensor *z = ldm_zeros(ctx, ldm_shape4(1, 3, 4, 4));
            lt_report(ldm_vae_vq_quantize(ctx, v4, z, NULL) == NULL && strstr(ldm_ctx_error(ctx), "no codebook"),
                      "vq: quantize on an AutoencoderKL is a clear error", "got: %s", ldm_ctx_error(ctx));
            ldm_ctx_clear_error(ctx);
            ldm_vae_destroy(v4);
        }
        ldm_tensor *bad = ldm_zeros(ctx, ldm_shape4(1, 4, 4, 4));
        lt_report(ldm_vae_vq_decode(ctx, v, bad, 0) == NULL && strstr(ldm_ctx_error(ctx), "[B, 3, h, w]"),
                  "vq: a latent with the wrong channel count is a clear error", "got: %s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
        int64_t oob[1] = {64};
        lt_report(ldm_vae_vq_decode_code(ctx, v, oob, 1, 1, 1) == NULL && strstr(ldm_ctx_error(ctx), "index 64"),
                  "vq: decode_code with an index past n_embed is a clear error", "got: %s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
    }
    remove("vq_tiny_saved.safetensors"); remove("vq_tiny_ldm.safetensors"); remove("vq_tiny_with_loss.safetensors");
    remove("vq_tiny_nocb.safetensors");
    ldm_weights_close(fx);
    ldm_vae_destroy(v);
    ldm_vae_destroy(v2);
    ldm_step_reset(ctx);
}

/* configs/first_stage_vq-f4.yaml (CompVis models/first_stage_models/vq-f4/config.yaml) reads as
   it is and builds PyTorch's parameter count; n_embed errors carry file:line. */
static void test_config(ldm_ctx *ctx) {
    ldm_config *c;
    ldm_vae_config vc;
    memset(&vc, 0, sizeof vc);
    if (ldm_config_create(&c)) return;
    int r = ldm_config_load(c, "../configs/first_stage_vq-f4.yaml") || ldm_vae_config_read(c, NULL, &vc);
    lt_report(!r, "vq-f4 config: configs/first_stage_vq-f4.yaml reads", "%s", ldm_config_error(c));
    ldm_config_destroy(c);
    if (r) return;
    ldm_vae_config pre = ldm_vae_config_vq_f4();
    int same = vc.n_embed == 8192 && vc.embed_dim == 3 && vc.z_channels == 3 && !vc.double_z && vc.ch == 128 && vc.n_levels == 3 &&
               vc.ch_mult[2] == 4 && vc.num_res_blocks == 2 && vc.n_attn == 0 && !memcmp(&vc, &pre, sizeof vc);
    lt_report(same, "vq-f4 config: n_embed 8192, embed_dim 3, double_z false, ... = ldm_vae_config_vq_f4()", "n_embed %d embed %d", vc.n_embed, vc.embed_dim);
    ldm_weights *fx;
    ldm_vae *v;
    if (ldm_weights_open(ctx, &fx, FIX "vq_tiny.safetensors")) return;
    const char *want = ldm_weights_metadata(fx, "vq_f4_params");
    if (!ldm_vae_create(ctx, &v, &vc)) {
        long long n = 0;
        for (int i = 0; i < ldm_nn_count(v->P); i++)
            if (ldm_nn_entry_at(v->P, i)->kind == LDM_NN_PARAM) n += ldm_nn_entry_at(v->P, i)->t->numel;
        lt_report(want && n == atoll(want), "vq-f4 config: builds PyTorch's parameter count", "%lld, PyTorch %s", n, want ? want : "?");
        printf("     vq-f4: %lld parameters\n", n);
        ldm_vae_destroy(v);
    } else lt_report(0, "vq-f4 config: create", "%s", ldm_ctx_error(ctx));
    ldm_weights_close(fx);
    /* n_embed errors from a config carry its file:line */
    if (ldm_config_create(&c)) return;
    static const char *bad = "model:\n  params:\n    embed_dim: 3\n    n_embed: -4\n    ddconfig:\n      double_z: false\n      z_channels: 3\n";
    r = ldm_config_load_string(c, bad, "bad_vq.yaml", LDM_CONFIG_FORMAT_YAML) || ldm_vae_config_read(c, NULL, &vc);
    lt_report(r && strstr(ldm_config_error(c), "bad_vq.yaml:") && strstr(ldm_config_error(c), "n_embed = -4"),
              "vq config: a negative n_embed is an error with file:line", "got: %s", ldm_config_error(c));
    ldm_config_destroy(c);
    ldm_step_reset(ctx);
}

/* Everything on the CPU; the fixture on the GPU too. */
static void run_all(ldm_ctx *ctx, int cpu) {
    if (cpu) test_argmin(ctx);
    test_fixture(ctx);
    if (!cpu) return;
    test_tiles(ctx);
    test_weights(ctx);
    test_config(ctx);
}

int main(void) {
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.seed = 1;
    return lt_main(&s, "test_vq", run_all);
}
