/* test_vae.c - AutoencoderKL against PyTorch (tests/ref/vae_ref.py, float64 references):
   the tiny model in three files/layouts (CompVis F32, diffusers F16, Lightning .ckpt under
   first_stage_model.) with every gradient; the seed kl-f4 and a kl-f8 with hash weights;
   save/load round trip; strict-load errors; batch chunking and tiled inference.
   Loads files, so it also runs under ASan/UBSan: LDM_TEST_SANITIZE */
#define LDM_IMPLEMENTATION
#include "../ldm_vae.h"
#include "ldm_test.h"

#define FIX "../tests/fixtures/"

static ldm_vae_config tiny_cfg(void) {
    ldm_vae_config c = ldm_vae_config_kl_f4();
    c.z_channels = 4; c.embed_dim = 4; c.resolution = 32; c.ch = 32;
    c.ch_mult[0] = 2; c.ch_mult[1] = 1; c.n_levels = 2; c.num_res_blocks = 1;
    c.attn_resolutions[0] = 16; c.n_attn = 1;
    return c;
}

/* Encode, sample with the fixture's eps, decode, loss = sum(dec*R) + 0.01*sum(kl); compare.
   full: compare every parameter gradient ("grad.<name>"), else the hash projections. */
static void check_model(ldm_ctx *ctx, ldm_vae *vae, ldm_weights *fx, const char *tag, int full, int with_grads) {
    char name[256];
    ldm_step_reset(ctx);
    ldm_nn_zero_grad(ctx, vae->P);
    ldm_tensor *x = lt_tensor(ctx, fx, "x"), *eps = lt_tensor(ctx, fx, "eps"), *R = lt_tensor(ctx, fx, "R");
    if (!x || !eps || !R) { lt_report(0, tag, "fixture tensors missing"); return; }
    x->requires_grad = with_grads;
    ldm_vae_posterior q;
    ldm_vae_encode(ctx, vae, x, &q);
    ldm_tensor *z = ldm_vae_posterior_sample(ctx, &q, eps);
    ldm_tensor *dec = ldm_vae_decode(ctx, vae, z);
    ldm_tensor *loss = ldm_add(ctx, ldm_sum_all(ctx, ldm_mul(ctx, dec, R)), ldm_scale(ctx, ldm_sum_all(ctx, ldm_vae_posterior_kl(ctx, &q)), 0.01f));
    if (!loss) { lt_report(0, tag, "forward failed: %s", ldm_ctx_error(ctx)); return; }
    const char *keys[] = {"mean", "logvar", "z", "dec", "loss"};
    ldm_tensor *got[] = {q.mean, q.logvar, z, dec, loss};
    for (int i = 0; i < 5; i++) {
        long n;
        float *want = lt_load(ctx, fx, keys[i], &n);
        snprintf(name, sizeof name, "%s %s", tag, keys[i]);
        if (want && n == got[i]->numel) lt_close(name, lt_h(ctx, got[i], 0), want, n, 1e-5, 1e-4);
        else lt_report(0, name, "missing or wrong size");
        free(want);
    }
    { /* inference path (no grad, bounded memory, blocked attention) on the posterior mode */
        ldm_vae_infer inf;
        memset(&inf, 0, sizeof inf);
        ldm_tensor *dm = ldm_vae_decode_infer(ctx, vae, q.mean, &inf);
        long n;
        float *want = lt_load(ctx, fx, "dec_mode", &n);
        snprintf(name, sizeof name, "%s decode_infer(mode)", tag);
        if (dm && want && n == dm->numel) lt_close(name, lt_h(ctx, dm, 0), want, n, 1e-5, 1e-4);
        else lt_report(0, name, "%s", ldm_ctx_error(ctx));
        free(want);
        /* the no-grad ResnetBlocks (norms written over dead inputs, results moved down the
           arena) compute bitwise what the recorded graph computes */
        if (dm) {
            ldm_tensor *dg = ldm_vae_decode(ctx, vae, q.mean);
            const float *a = lt_h(ctx, dm, 0), *b = dg ? lt_h(ctx, dg, 0) : NULL;
            snprintf(name, sizeof name, "%s decode_infer is bitwise the graph's decode", tag);
            lt_report(a && b && !memcmp(a, b, sizeof(float) * (size_t)dm->numel), name, "%s", dg ? "values differ" : ldm_ctx_error(ctx));
        }
    }
    if (!with_grads) return;
    if (ldm_backward(ctx, loss)) { lt_report(0, tag, "backward: %s", ldm_ctx_error(ctx)); return; }
    long n;
    float *want = lt_load(ctx, fx, "x_grad", &n);
    snprintf(name, sizeof name, "%s grad x", tag);
    if (want) {
        double wmax = 0;
        for (long k = 0; k < n; k++) wmax = fmax(wmax, fabs(want[k]));
        lt_close(name, lt_h(ctx, x, 1), want, n, 1e-4 * wmax, 1e-3);
    }
    free(want);
    /* The scale of the whole gradient: some true gradients are exactly zero (a bias right
       before a GroupNorm with one channel per group, attention's k.bias), and float32 leaves
       rounding noise there that is tiny next to the rest of the gradient, not next to 0. */
    double grms = 0;
    for (int i = 0; i < ldm_nn_count(vae->P); i++) {
        const ldm_nn_entry *e = ldm_nn_entry_at(vae->P, i);
        if (e->kind != LDM_NN_PARAM) continue;
        snprintf(name, sizeof name, full ? "grad.%s" : "gproj.%s", e->name);
        float *g = lt_load(ctx, fx, name, &n);
        if (!g) continue;
        double ss = 0;
        if (full) for (long k = 0; k < n; k++) ss += (double)g[k] * g[k];
        else ss = g[1];
        grms = fmax(grms, sqrt(ss / (double)e->t->numel));
        free(g);
    }
    int bad = 0, count = 0;
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < ldm_nn_count(vae->P); i++) {
        const ldm_nn_entry *e = ldm_nn_entry_at(vae->P, i);
        if (e->kind != LDM_NN_PARAM) continue;
        count++;
        const float *eg = lt_h(ctx, e->t, 1);
        if (full) {
            snprintf(name, sizeof name, "grad.%s", e->name);
            float *g = lt_load(ctx, fx, name, &n);
            if (!g || n != e->t->numel) { bad++; free(g); continue; }
            double gmax = 0;
            for (long k = 0; k < n; k++) gmax = fmax(gmax, fabs(g[k]));
            for (long k = 0; k < n; k++) {
                double d = fabs((double)eg[k] - g[k]), lim = 1e-3 * fabs(g[k]) + 1e-4 * gmax + 1e-4 * grms;
                if (d / lim > worst) { worst = d / lim; worst_name = e->name; }
                if (d > lim) { bad++; printf("  %s[%ld]: got %.6g want %.6g (max |g| %.3g)\n", e->name, k, eg[k], g[k], gmax); break; }
            }
            free(g);
        } else {
            snprintf(name, sizeof name, "gproj.%s", e->name);
            float *g = lt_load(ctx, fx, name, &n);
            float *h = (float *)malloc(sizeof(float) * (size_t)e->t->numel);
            snprintf(name, sizeof name, "proj.%s", e->name);
            lt_hash_uniform(name, h, (long)e->t->numel);
            double proj = 0, ss = 0;
            for (int64_t k = 0; k < e->t->numel; k++) { proj += (double)eg[k] * h[k]; ss += (double)eg[k] * eg[k]; }
            /* a projection on a U(-1,1) vector is typically |g| / sqrt(3) large */
            double rootn = sqrt((double)e->t->numel);
            double scale = sqrt(g ? g[1] : 0) / sqrt(3.0) + 1e-1 * grms * rootn;
            double d1 = g ? fabs(proj - g[0]) / (1e-3 * scale) : 1e9;
            double d2 = g ? fabs(sqrt(ss) - sqrt(g[1])) / (1e-3 * sqrt(g[1]) + 1e-4 * grms * rootn) : 1e9;
            if (fmax(d1, d2) > worst) { worst = fmax(d1, d2); worst_name = e->name; }
            if (d1 > 1 || d2 > 1) { bad++; printf("  %s: proj %.6g want %.6g, |g|^2 %.6g want %.6g\n", e->name, proj, g ? g[0] : 0, ss, g ? g[1] : 0); }
            free(g);
            free(h);
        }
    }
    snprintf(name, sizeof name, "%s gradients of all %d parameters", tag, count);
    lt_report(bad == 0, name, "%d parameters off (worst %s at %.2f of the tolerance)", bad, worst_name, worst);
    if (bad == 0) printf("     (worst %s at %.2f of the tolerance)\n", worst_name, worst);
}

static void hash_weights(ldm_ctx *ctx, ldm_vae *vae) { /* on any device */
    for (int i = 0; i < ldm_nn_count(vae->P); i++) {
        const ldm_nn_entry *e = ldm_nn_entry_at(vae->P, i);
        float *h = (float *)malloc(sizeof(float) * (size_t)e->t->numel);
        if (!h) continue;
        lt_hash_init(e->name, h, e->t->ndim, e->t->shape);
        ldm_nn_copy_from_host(ctx, e->t, h);
        free(h);
    }
}

static void test_tiny(ldm_ctx *ctx) {
    ldm_vae_config cfg = tiny_cfg();
    ldm_vae *vae;
    ldm_weights *fx;
    if (ldm_vae_create(ctx, &vae, &cfg) || ldm_weights_open(ctx, &fx, FIX "vae_tiny.safetensors")) {
        lt_report(0, "tiny: create", "%s", ldm_ctx_error(ctx));
        return;
    }
    const char *files[] = {FIX "vae_tiny_compvis.safetensors", FIX "vae_tiny_diffusers.safetensors", FIX "vae_tiny.ckpt"};
    const char *tags[] = {"tiny compvis", "tiny diffusers", "tiny ckpt"};
    for (int f = 0; f < 3; f++) {
        ldm_nn_params_init(ctx, vae->P); /* forget the previous weights */
        int r = ldm_vae_load(ctx, vae, files[f], 1);
        lt_report(r == LDM_OK, tags[f], "strict load: %s", ldm_ctx_error(ctx));
        if (r) { ldm_ctx_clear_error(ctx); continue; }
        check_model(ctx, vae, fx, tags[f], 1, f == 0);
        lt_host_release();
    }
    if (ldm_ctx_device(ctx) != LDM_CPU) { /* on a GPU: the fixtures above; the rest is host-side */
        lt_report(ldm_nn_params_device(vae->P) == ldm_ctx_device(ctx), "tiny: parameters live on the device", "device %d",
                  (int)ldm_nn_params_device(vae->P));
        ldm_step_reset(ctx);
        ldm_weights_close(fx);
        ldm_vae_destroy(vae);
        return;
    }

    /* save (CompVis names) -> load is bitwise, and the names are the fixture's */
    ldm_step_reset(ctx);
    int r = ldm_vae_save(ctx, vae, "vae_tiny_saved.safetensors", LDM_F32);
    ldm_vae *v2;
    ldm_vae_create(ctx, &v2, &cfg);
    r = r || ldm_vae_load(ctx, v2, "vae_tiny_saved.safetensors", 1);
    int64_t n1, n2;
    float *b1 = ldm_nn_block(vae->P, LDM_NN_BLOCK_PARAMS, &n1), *b2 = ldm_nn_block(v2->P, LDM_NN_BLOCK_PARAMS, &n2);
    lt_report(!r && n1 == n2 && memcmp(b1, b2, sizeof(float) * (size_t)n1) == 0, "tiny: save -> load is bitwise", "%s", ldm_ctx_error(ctx));
    ldm_weights *ws, *wc;
    int same_names = 0;
    if (!ldm_weights_open(ctx, &ws, "vae_tiny_saved.safetensors")) {
        if (!ldm_weights_open(ctx, &wc, FIX "vae_tiny_compvis.safetensors")) {
            same_names = ldm_weights_count(ws) == ldm_weights_count(wc);
            for (int i = 0; same_names && i < ldm_weights_count(wc); i++) {
                int j = ldm_weights_find(ws, ldm_weights_info(wc, i)->name);
                same_names = j >= 0 && ldm_weights_info(ws, j)->numel == ldm_weights_info(wc, i)->numel &&
                             ldm_weights_info(ws, j)->ndim == ldm_weights_info(wc, i)->ndim;
            }
            ldm_weights_close(wc);
        }
        ldm_weights_close(ws);
    }
    lt_report(same_names, "tiny: saved names and shapes are PyTorch's state dict", "differ");
    ldm_vae_destroy(v2);
    ldm_ctx_clear_error(ctx);

    /* strict errors list every offending name: drop two, add one, mis-shape one */
    {
        ldm_weights *w;
        ldm_weights_open(ctx, &w, FIX "vae_tiny_compvis.safetensors");
        int n = ldm_weights_count(w), k = 0;
        ldm_named_data *nd = (ldm_named_data *)calloc((size_t)n + 1, sizeof *nd);
        float **bufs = (float **)calloc((size_t)n + 1, sizeof(float *));
        for (int i = 0; i < n; i++) {
            const ldm_weight_info *inf = ldm_weights_info(w, i);
            if (!strcmp(inf->name, "encoder.mid.attn_1.q.bias") || !strcmp(inf->name, "decoder.up.1.block.0.conv2.weight")) continue;
            bufs[k] = (float *)malloc(sizeof(float) * (size_t)inf->numel);
            ldm_weights_read(ctx, w, i, bufs[k]);
            nd[k].name = inf->name;
            nd[k].data = bufs[k];
            nd[k].ndim = inf->ndim;
            memcpy(nd[k].shape, inf->shape, sizeof inf->shape);
            if (!strcmp(inf->name, "quant_conv.weight")) nd[k].shape[1] = 4, nd[k].shape[0] = inf->shape[0] * 2; /* [8,8,1,1] -> [16,4,1,1] */
            k++;
        }
        static float extra[3] = {1, 2, 3};
        nd[k].name = "encoder.extra_thing.weight"; nd[k].data = extra; nd[k].ndim = 1; nd[k].shape[0] = 3; k++;
        ldm_safetensors_write(ctx, "vae_tiny_bad.safetensors", k, nd, LDM_F32, 0, NULL, NULL);
        ldm_weights_close(w);
        int rr = ldm_vae_load(ctx, vae, "vae_tiny_bad.safetensors", 1);
        const char *msg = ldm_ctx_error(ctx);
        int all = rr != LDM_OK && strstr(msg, "encoder.mid.attn_1.q.bias") && strstr(msg, "decoder.up.1.block.0.conv2.weight") &&
                  strstr(msg, "encoder.extra_thing.weight") && strstr(msg, "quant_conv.weight");
        lt_report(all, "tiny: strict load lists every missing, unexpected and mis-shaped name", "got: %s", msg);
        ldm_ctx_clear_error(ctx);
        for (int i = 0; i < n; i++) free(bufs[i]);
        free(bufs);
        free(nd);
        /* a file that is not a weight file at all */
        FILE *fp = fopen("vae_not_weights.safetensors", "wb");
        if (fp) { fputs("this is not a weight file", fp); fclose(fp); }
        rr = ldm_vae_load(ctx, vae, "vae_not_weights.safetensors", 1);
        lt_report(rr != LDM_OK && strstr(ldm_ctx_error(ctx), "vae_not_weights.safetensors"), "tiny: garbage file is a clear error", "%s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
    }

    /* batch chunking and tiling, grad off */
    {
        ldm_step_reset(ctx);
        ldm_vae_load(ctx, vae, FIX "vae_tiny_compvis.safetensors", 1);
        ldm_tensor *x = ldm_rand(ctx, ldm_shape4(2, 3, 96, 96));
        x = ldm_affine(ctx, x, 2.0f, -1.0f);
        ldm_vae_infer all = {0, 0, 0}, chunk = {1, 0, 0}, tiled = {0, 64, 32};
        ldm_vae_posterior qa, qc, qt;
        ldm_vae_encode_infer(ctx, vae, x, &all, &qa);
        ldm_vae_encode_infer(ctx, vae, x, &chunk, &qc);
        lt_close("tiny: encode in batch chunks of 1 == whole batch", qc.mean->data, qa.mean->data, (long)qa.mean->numel, 1e-6, 1e-5);
        ldm_tensor *da = ldm_vae_decode_infer(ctx, vae, qa.mean, &all);
        ldm_tensor *dc = ldm_vae_decode_infer(ctx, vae, qa.mean, &chunk);
        lt_close("tiny: decode in batch chunks of 1 == whole batch", dc->data, da->data, (long)da->numel, 1e-6, 1e-5);
        /* tiled vs untiled: GroupNorm/attention statistics are per tile, so they differ.
           Stated bound (random weights, 96-px images, 64-px tiles with 32 overlap, measured
           ~9.7% and ~5%): mean abs difference under 12% of the output's standard deviation
           for decoding, under 8% of the latent rms for encoding. */
        ldm_vae_encode_infer(ctx, vae, x, &tiled, &qt);
        ldm_tensor *dt = ldm_vae_decode_infer(ctx, vae, qa.mean, &tiled);
        double sd = 0, mean = 0, mad = 0, madz = 0, sdz = 0;
        for (int64_t i = 0; i < da->numel; i++) mean += da->data[i];
        mean /= (double)da->numel;
        for (int64_t i = 0; i < da->numel; i++) { sd += (da->data[i] - mean) * (da->data[i] - mean); mad += fabs(dt->data[i] - da->data[i]); }
        sd = sqrt(sd / (double)da->numel);
        mad /= (double)da->numel;
        for (int64_t i = 0; i < qa.mean->numel; i++) { madz += fabs(qt.mean->data[i] - qa.mean->data[i]); sdz += qa.mean->data[i] * qa.mean->data[i]; }
        madz /= (double)qa.mean->numel;
        sdz = sqrt(sdz / (double)qa.mean->numel);
        printf("     tiled decode: mean |tiled - untiled| = %.4g (output sd %.4g); tiled encode: %.4g (latent rms %.4g)\n", mad, sd, madz, sdz);
        lt_report(mad < 0.12 * sd, "tiny: tiled decode (64-px tiles, 32 overlap) within 12% of the output sd of untiled", "mad %.4g sd %.4g", mad, sd);
        lt_report(madz < 0.08 * sdz, "tiny: tiled encode (64-px tiles, 32 overlap) within 8% of the latent rms of untiled", "mad %.4g rms %.4g", madz, sdz);
        /* seamless: the jump between neighbouring pixels across the seams is no larger than
           the largest jump elsewhere in the untiled image */
        int64_t Hh = dt->shape[2], Ww = dt->shape[3];
        double jump_t = 0, jump_u = 0;
        for (int64_t c = 0; c < dt->shape[0] * dt->shape[1]; c++)
            for (int64_t yy = 0; yy < Hh; yy++)
                for (int64_t xx = 0; xx + 1 < Ww; xx++) {
                    double jt = fabs(dt->data[(c * Hh + yy) * Ww + xx + 1] - dt->data[(c * Hh + yy) * Ww + xx]);
                    double ju = fabs(da->data[(c * Hh + yy) * Ww + xx + 1] - da->data[(c * Hh + yy) * Ww + xx]);
                    if (jt > jump_t) jump_t = jt;
                    if (ju > jump_u) jump_u = ju;
                }
        lt_report(jump_t <= 1.1 * jump_u, "tiny: tiled decode is seamless (no jump beyond the untiled image's)", "max jump %.4g vs %.4g", jump_t, jump_u);
        /* bounded memory: with 64-pixel tiles the arena peak of a 256x256 decode is the
           one of a 128x128 decode plus the larger output (the untiled 256x256 decode needs
           16 MiB for each 64-channel activation alone) */
        size_t peak[2], outb[2];
        for (int k = 0; k < 2; k++) {
            ldm_step_reset(ctx);
            ldm_tensor *zb = ldm_randn(ctx, ldm_shape4(1, 4, 64 << k, 64 << k));
            size_t base = ldm_arena_used(ctx, LDM_CPU);
            ldm_arena_reset_peak(ctx);
            ldm_vae_infer t64 = {1, 64, 16};
            ldm_tensor *big = ldm_vae_decode_infer(ctx, vae, zb, &t64);
            peak[k] = ldm_arena_peak(ctx, LDM_CPU) - base;
            outb[k] = (size_t)(big ? big->numel : 0) * 4;
        }
        printf("     tiled decode arena peak: 128x128 %.1f MiB, 256x256 %.1f MiB\n", (double)peak[0] / 1048576.0, (double)peak[1] / 1048576.0);
        lt_report(outb[1] && peak[1] <= peak[0] + 3 * (outb[1] - outb[0]), "tiny: tiled decode memory does not grow with the image beyond its output",
                  "peak %zu vs %zu", peak[1], peak[0]);
    }
    ldm_weights_close(fx);
    ldm_vae_destroy(vae);
}

/* AttnBlock (token-major linears around ldm_attention) against the conv / matmul / softmax
   form it replaced: output and the gradients of x and of the q weight, to 1e-5. */
static ldm_tensor *attn_block_ref(ldm_ctx *ctx, const ldm__vae_attn *a, ldm_tensor *x) {
    int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    ldm_shape s3 = ldm_shape3(B, C, H * W);
    ldm_tensor *h = ldm_nn_groupnorm_forward(ctx, &a->norm, x);
    ldm_tensor *q = ldm_reshape(ctx, ldm__vae_conv_fwd(ctx, &a->q, h), s3);
    ldm_tensor *k = ldm_reshape(ctx, ldm__vae_conv_fwd(ctx, &a->k, h), s3);
    ldm_tensor *v = ldm_reshape(ctx, ldm__vae_conv_fwd(ctx, &a->v, h), s3);
    ldm_tensor *w = ldm_softmax(ctx, ldm_scale(ctx, ldm_matmul(ctx, q, k, 1, 0), (float)pow((double)C, -0.5)), 2);
    ldm_tensor *o = ldm_reshape(ctx, ldm_matmul(ctx, v, w, 0, 1), ldm_shape4(B, C, H, W));
    return ldm_add(ctx, x, ldm__vae_conv_fwd(ctx, &a->proj_out, o));
}
static void test_attn_block(ldm_ctx *ctx) {
    ldm_vae_config cfg = tiny_cfg();
    ldm_vae *vae;
    if (ldm_vae_create(ctx, &vae, &cfg)) { lt_report(0, "attn block: create", "%s", ldm_ctx_error(ctx)); return; }
    hash_weights(ctx, vae);
    const ldm__vae_attn *a = &vae->enc.mid_attn_1;
    int64_t C = a->q.in, n = 2 * C * 5 * 7;
    float *hx = (float *)malloc(sizeof(float) * (size_t)n), *r[2][3];
    lt_hash_uniform("attn_block.x", hx, (long)n);
    ldm_tensor *wq = a->q.weight;
    for (int which = 0; which < 2; which++) {
        ldm_tensor *x = ldm_from_host(ctx, ldm_shape4(2, C, 5, 7), hx);
        x->requires_grad = 1;
        ldm_tensor *y = which ? attn_block_ref(ctx, a, x) : ldm__vae_attn_fwd(ctx, a, x);
        ldm_tensor *loss = ldm_sum_all(ctx, ldm_mul(ctx, y, y));
        float *gx = (float *)malloc(sizeof(float) * (size_t)n), *gw = (float *)malloc(sizeof(float) * (size_t)wq->numel);
        float *outs[2] = {gx, gw};
        ldm_tensor *wrt[2] = {x, wq};
        float *dev[2] = {(float *)ldm_arena_alloc(ctx, ldm_ctx_device(ctx), sizeof(float) * (size_t)n),
                         (float *)ldm_arena_alloc(ctx, ldm_ctx_device(ctx), sizeof(float) * (size_t)wq->numel)};
        ldm_grad(ctx, loss, 2, wrt, dev);
        for (int i = 0; i < 2; i++) {
            ldm_tensor t = ldm_tensor_wrap(dev[i], ldm_shape1(i ? wq->numel : n), ldm_ctx_device(ctx));
            ldm_to_host(ctx, &t, outs[i]);
        }
        r[which][0] = (float *)malloc(sizeof(float) * (size_t)n);
        ldm_to_host(ctx, y, r[which][0]);
        r[which][1] = gx;
        r[which][2] = gw;
        ldm_step_reset(ctx);
    }
    LT_CHECK(ldm_ctx_status(ctx) == LDM_OK, "attn block: both forms ran");
    lt_close("attn block: output vs conv/matmul/softmax form", r[0][0], r[1][0], (long)n, 1e-5, 1e-5);
    lt_close("attn block: d/dx vs conv/matmul/softmax form", r[0][1], r[1][1], (long)n, 1e-5, 1e-4);
    lt_close("attn block: d/d(q.weight) vs conv/matmul/softmax form", r[0][2], r[1][2], (long)wq->numel, 1e-5, 1e-4);
    for (int w = 0; w < 2; w++) for (int i = 0; i < 3; i++) free(r[w][i]);
    free(hx);
    ldm_vae_destroy(vae);
}

static void test_hash_model(ldm_ctx *ctx, const char *tag, const char *file, ldm_vae_config cfg) {
    ldm_vae *vae;
    ldm_weights *fx;
    if (ldm_vae_create(ctx, &vae, &cfg) || ldm_weights_open(ctx, &fx, file)) {
        lt_report(0, tag, "%s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
        return;
    }
    hash_weights(ctx, vae);
    check_model(ctx, vae, fx, tag, 0, 1);
    ldm_weights_close(fx);
    ldm_vae_destroy(vae);
    ldm_step_reset(ctx);
}

/* The same fixtures on the CPU and the GPU (the CPU emulator's build runs the CUDA code on the CPU). */
static void run_all(ldm_ctx *ctx, int cpu) {
    (void)cpu;
    test_tiny(ctx);
    test_attn_block(ctx);
    /* the 55M/84M-parameter models: minutes under ASan or on the emulator, a second on a GPU */
#if !defined(LDM_TEST_SANITIZED) && !defined(LDM_CUDA_EMULATOR)
    test_hash_model(ctx, "kl-f4 (seed config)", FIX "vae_f4.safetensors", ldm_vae_config_kl_f4());
    test_hash_model(ctx, "kl-f8", FIX "vae_f8.safetensors", ldm_vae_config_kl_f8());
#endif
}

int main(void) {
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.seed = 1;
    return lt_main(&s, "test_vae", run_all);
}
