/* vae.c - AutoencoderKL on the command line: encode images to latents, decode latents to
   images, and round trips with PSNR/SSIM.

   Build:  cc -std=c99 -O2 -march=native -I. -Ithird_party examples/vae.c -o build/ldm-vae -lm -lpthread
   GPU:    nvcc -x cu -O2 -arch=sm_80 -DLDM_CUDA -Xcompiler -ffp-contract=off -I. -Ithird_party examples/vae.c -o build/ldm-vae -lcublas -lm -lpthread
   (or ./build.sh, which builds every example into build/)

   ldm-vae encode    --config C --weights W IN.png OUT.safetensors [--sample] [--seed S] [--tile N]
   ldm-vae decode    --config C --weights W IN.safetensors OUT.png|OUT.safetensors [--tile N]
   ldm-vae roundtrip --config C --weights W IN.png OUT.png [--tile N]
   common options:   [--threads N] [--batch N] [--overlap N] [--diffusers-ok] [--non-strict]

   The config is an ldm.h config file (INI or the CompVis YAML subset): a full model config
   (ddconfig and embed_dim under model.params, like configs/autoencoder_kl_64x64x3.yaml) or
   one holding just ddconfig and embed_dim. Weights: safetensors/.ckpt/.pth, CompVis or
   diffusers names, optionally under first_stage_model. (see ldm_vae.h).
   encode writes float32 `mean`, `logvar` and `z` [1,C,h,w] (z = mean unless --sample); with a
   VQ first stage (model.params.n_embed, e.g. configs/first_stage_vq-f4.yaml) `mean` and `z`,
   both the unquantized h; decode quantizes it.
   decode reads `z` (or the file's only tensor); .safetensors output holds `image`
   [1,3,H,W] float32 in [-1,1] unclamped; PNG output is clamped and rounded. */
#define LDM_IMPLEMENTATION
#include "ldm_config.h"
#include "ldm_lpips.h"
#include "ldm_vae.h"
#include "image_io.h"

typedef struct args {
    const char *cmd, *config, *weights, *in, *out;
    int sample, tile, overlap, batch, threads, strict;
    unsigned long long seed;
} args;

static int usage(const char *msg) {
    if (msg) fprintf(stderr, "ldm-vae: %s\n", msg);
    fprintf(stderr,
            "usage: ldm-vae encode    --config C --weights W IN.png OUT.safetensors [--sample] [--seed S] [--tile N]\n"
            "       ldm-vae decode    --config C --weights W IN.safetensors OUT.png|OUT.safetensors [--tile N]\n"
            "       ldm-vae roundtrip --config C --weights W IN.png OUT.png [--tile N]\n"
            "       options: --threads N, --batch N, --overlap N (pixels), --non-strict\n");
    return 2;
}

static int parse(int argc, char **argv, args *a) {
    memset(a, 0, sizeof *a);
    a->strict = 1;
    a->seed = 23;
    int npos = 0;
    const char *pos[3] = {NULL, NULL, NULL};
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        int more = i + 1 < argc;
#define ARG_VAL(name, dst) if (!strcmp(s, name)) { if (!more) return usage(name " needs a value"); dst = argv[++i]; continue; }
#define ARG_INT(name, dst) if (!strcmp(s, name)) { char *e; if (!more) return usage(name " needs a value"); dst = (int)strtol(argv[++i], &e, 10); if (*e) return usage(name " needs an integer"); continue; }
        ARG_VAL("--config", a->config)
        ARG_VAL("--weights", a->weights)
        ARG_INT("--tile", a->tile)
        ARG_INT("--overlap", a->overlap)
        ARG_INT("--batch", a->batch)
        ARG_INT("--threads", a->threads)
        if (!strcmp(s, "--seed")) { char *e; if (!more) return usage("--seed needs a value"); a->seed = strtoull(argv[++i], &e, 10); if (*e) return usage("--seed needs an integer"); continue; }
        if (!strcmp(s, "--sample")) { a->sample = 1; continue; }
        if (!strcmp(s, "--non-strict")) { a->strict = 0; continue; }
        if (s[0] == '-' && s[1] == '-') { fprintf(stderr, "ldm-vae: unknown option %s\n", s); return usage(NULL); }
        if (npos == 3) return usage("too many arguments");
        pos[npos++] = s;
    }
    if (npos != 3) return usage(npos ? "expected a command, an input and an output" : NULL);
    a->cmd = pos[0]; a->in = pos[1]; a->out = pos[2];
    if (strcmp(a->cmd, "encode") && strcmp(a->cmd, "decode") && strcmp(a->cmd, "roundtrip")) return usage("the command is encode, decode or roundtrip");
    if (!a->config) return usage("--config is required");
    if (!a->weights) return usage("--weights is required");
    return 0;
}

static int fail(ldm_ctx *ctx, const char *what) {
    fprintf(stderr, "ldm-vae: %s%s%s\n", what, ctx ? ": " : "", ctx ? ldm_ctx_error(ctx) : "");
    return 1;
}

/* Writes tensors [1..B, C, h, w] as float32 safetensors. */
static int save_tensors(ldm_ctx *ctx, const char *path, int n, const char *const *names, ldm_tensor *const *t) {
    ldm_named_data nd[4];
    float *host[4] = {NULL, NULL, NULL, NULL};
    int r = 0;
    for (int i = 0; i < n && !r; i++) {
        host[i] = (float *)malloc(sizeof(float) * (size_t)t[i]->numel);
        if (!host[i] || ldm_to_host(ctx, t[i], host[i])) r = 1;
        nd[i].name = names[i];
        nd[i].data = host[i];
        nd[i].ndim = t[i]->ndim;
        memcpy(nd[i].shape, t[i]->shape, sizeof nd[i].shape);
    }
    if (!r) r = ldm_safetensors_write(ctx, path, n, nd, LDM_F32, 0, NULL, NULL) != LDM_OK;
    for (int i = 0; i < n; i++) free(host[i]);
    return r;
}

static int save_image(ldm_ctx *ctx, const char *path, ldm_tensor *img) {
    if (ex_has_ext(path, ".safetensors")) {
        const char *nm = "image";
        return save_tensors(ctx, path, 1, &nm, &img);
    }
    if (!ex_has_ext(path, ".png")) { fprintf(stderr, "ldm-vae: %s: output must be .png or .safetensors\n", path); return 1; }
    int B = (int)img->shape[0], C = (int)img->shape[1], H = (int)img->shape[2], W = (int)img->shape[3];
    float *host = (float *)malloc(sizeof(float) * (size_t)img->numel);
    char err[512];
    if (!host || ldm_to_host(ctx, img, host)) { free(host); return fail(ctx, "reading the image back"); }
    int r = 0;
    for (int b = 0; b < B && !r; b++) {
        char name[1024];
        if (B == 1) snprintf(name, sizeof name, "%s", path);
        else snprintf(name, sizeof name, "%.*s_%d.png", (int)(strlen(path) - 4), path, b);
        if (ex_image_save_png(name, host + (size_t)b * C * H * W, C, H, W, err, sizeof err)) { fprintf(stderr, "ldm-vae: %s\n", err); r = 1; }
    }
    free(host);
    return r;
}

static ldm_tensor *load_image(ldm_ctx *ctx, const char *path, int channels) {
    int w, h;
    char err[512];
    float *px = ex_image_load(path, channels, &w, &h, err, sizeof err);
    if (!px) { ldm_ctx_seterr(ctx, LDM_ERR_IO, "%s", err); return NULL; }
    ldm_tensor *x = ldm_from_host(ctx, ldm_shape4(1, channels, h, w), px);
    free(px);
    return x;
}

/* The latent from a safetensors file: tensor `z`, else the only tensor; [C,h,w] gets a batch dim. */
static ldm_tensor *load_latent(ldm_ctx *ctx, const char *path, int embed_dim) {
    ldm_weights *w;
    if (ldm_weights_open(ctx, &w, path)) return NULL;
    int i = ldm_weights_find(w, "z");
    if (i < 0 && ldm_weights_count(w) == 1) i = 0;
    if (i < 0) {
        ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "%s: no tensor named 'z' and more than one tensor (%d); write the latent as 'z'", path, ldm_weights_count(w));
        ldm_weights_close(w);
        return NULL;
    }
    const ldm_weight_info *inf = ldm_weights_info(w, i);
    ldm_shape s = ldm_shape_n(inf->ndim, inf->shape);
    if (inf->ndim == 3) s = ldm_shape4(1, inf->shape[0], inf->shape[1], inf->shape[2]);
    if (s.ndim != 4 || s.d[1] != embed_dim) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: tensor '%s' has %d dims with %lld channels; the model wants [B, %d, h, w]", path, inf->name,
                       inf->ndim, (long long)(inf->ndim >= 3 ? inf->shape[inf->ndim - 3] : 0), embed_dim);
        ldm_weights_close(w);
        return NULL;
    }
    ldm_tensor *z = ldm_new(ctx, s);
    if (z && ldm_weights_read(ctx, w, i, z->data)) z = NULL;
    ldm_weights_close(w);
    return z;
}

static int run(ldm_ctx *ctx, ldm_vae *vae, const args *a, const ldm_vae_config *vc) {
    ldm_vae_infer inf;
    inf.batch = a->batch;
    inf.tile = a->tile;
    inf.overlap = a->overlap;

    if (!strcmp(a->cmd, "decode")) {
        ldm_tensor *z = load_latent(ctx, a->in, vc->embed_dim);
        ldm_tensor *img = z ? ldm_vae_decode_infer(ctx, vae, z, &inf) : NULL;
        if (!img) return fail(ctx, "decode");
        return save_image(ctx, a->out, img);
    }
    ldm_tensor *x = load_image(ctx, a->in, vc->in_channels);
    ldm_vae_posterior q;
    if (!x || ldm_vae_encode_infer(ctx, vae, x, &inf, &q)) return fail(ctx, "encode");
    if (!strcmp(a->cmd, "encode")) {
        if (!ex_has_ext(a->out, ".safetensors")) { fprintf(stderr, "ldm-vae: %s: encode writes .safetensors\n", a->out); return 1; }
        int prev = ldm_set_grad_enabled(ctx, 0);
        ldm_tensor *z = a->sample ? ldm_vae_posterior_sample(ctx, &q, NULL) : q.mean;
        ldm_set_grad_enabled(ctx, prev);
        const char *names[3] = {"mean", "logvar", "z"};
        ldm_tensor *t[3];
        t[0] = q.mean; t[1] = q.logvar; t[2] = z;
        int nt = 3;
        if (!q.logvar) { names[1] = "z"; t[1] = z; nt = 2; } /* a VQ first stage: h, no variance */
        if (!z || save_tensors(ctx, a->out, nt, names, t)) return fail(ctx, "writing the latent");
        printf("latent [1, %lld, %lld, %lld] (%s) -> %s\n", (long long)z->shape[1], (long long)z->shape[2], (long long)z->shape[3],
               a->sample ? "sample" : "mode", a->out);
        return 0;
    }
    /* roundtrip */
    {
        ldm_tensor *y = ldm_vae_decode_infer(ctx, vae, q.mean, &inf);
        if (!y) return fail(ctx, "decode");
        if (y->shape[2] != x->shape[2] || y->shape[3] != x->shape[3] || y->shape[1] != x->shape[1]) {
            fprintf(stderr, "ldm-vae: the reconstruction is %lldx%lld for a %lldx%lld input (hint: use sizes divisible by %d)\n",
                    (long long)y->shape[3], (long long)y->shape[2], (long long)x->shape[3], (long long)x->shape[2], ldm_vae_factor(vc));
            return 1;
        }
        if (save_image(ctx, a->out, y)) return 1;
        /* metrics on [0,1] images: the input's pixels vs the PNG's (8-bit, clamped, rounded) */
        double psnr, ssim;
        ldm_tensor *yq = ldm_affine(ctx, ldm_clamp(ctx, y, -1.0f, 1.0f), 127.5f, 127.5f);
        for (int64_t i = 0; yq && i < yq->numel; i++) yq->data[i] = (float)(nearbyint(yq->data[i]) / 255.0);
        ldm_tensor *x01 = ldm_affine(ctx, x, 0.5f, 0.5f);
        if (!yq || !x01 || ldm_metric_psnr(ctx, x01, yq, 1.0, &psnr) || ldm_metric_ssim(ctx, x01, yq, 1.0, &ssim)) return fail(ctx, "metrics");
        printf("psnr: %.4f\nssim: %.6f\n", psnr, ssim);
        return 0;
    }
}

int main(int argc, char **argv) {
    args a;
    int pr = parse(argc, argv, &a);
    if (pr) return pr;

    ldm_config *cfg;
    ldm_vae_config vc;
    if (ldm_config_create(&cfg)) return fail(NULL, "out of memory");
    if (ldm_config_load(cfg, a.config) || ldm_vae_config_read(cfg, NULL, &vc)) {
        fprintf(stderr, "ldm-vae: %s\n", ldm_config_error(cfg));
        ldm_config_destroy(cfg);
        return 1;
    }
    ldm_config_destroy(cfg);

    ldm_settings st;
    memset(&st, 0, sizeof st);
    st.threads = a.threads;
    st.seed = a.seed;
    ldm_ctx *ctx;
    if (ldm_ctx_create(&ctx, &st)) return fail(NULL, "cannot create the context");
    ldm_vae *vae = NULL;
    int rc;
    if (ldm_vae_create(ctx, &vae, &vc)) rc = fail(ctx, "model");
    else if (ldm_vae_load(ctx, vae, a.weights, a.strict)) rc = fail(ctx, "weights");
    else rc = run(ctx, vae, &a, &vc);
    ldm_vae_destroy(vae);
    ldm_ctx_destroy(ctx);
    return rc;
}
