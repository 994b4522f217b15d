/* sample.c - samples a CompVis LatentDiffusion model (ldm_diffusion.h section 4) into a PNG grid.

   Build:  cc -std=c99 -O2 -march=native -I. -Ithird_party examples/sample.c -o build/ldm-sample -lm -lpthread
   GPU:    nvcc -x cu -O2 -arch=sm_80 -DLDM_CUDA -Xcompiler -ffp-contract=off -I. -Ithird_party examples/sample.c -o build/ldm-sample -lcublas -lm -lpthread
   (or ./build.sh, which builds every example into build/)

   ldm-sample --config C --ckpt K --out grid.png [--n 16] [--steps 50] [--eta 0] [--scale 1]
              [--class k] [--seed s] [--lr in.png] [--ema] [--ddpm] [--threads N]
              [--decode-batch N] [--tile N] [--non-strict] [--gpu ID | --cpu]

   --config   a CompVis LatentDiffusion config (model.params: unet_config, first_stage_config,
              cond_stage_config), e.g. configs/cin256-v2.yaml
   --ckpt     a CompVis .ckpt / safetensors state dict, or an ldm.h checkpoint directory
              (its model.safetensors); loaded strictly unless --non-strict
   --scale    classifier-free guidance scale; the unconditional input is the class n_classes-1
              (CompVis' cin256 scripts); 1: no guidance
   --class    the class of every sample (class-conditional models); default: classes drawn
              from the seed in [0, n_classes-1)
   --lr       the low-resolution conditioning image (super-resolution: conditioning_key concat;
              an lr_scale model upsamples it by lr_scale, bicubic, and encodes it);
              the latent has its size
   --ema      sample with the EMA weights (model_ema.*), as CompVis does when use_ema
   --ddpm     ancestral DDPM over all T steps instead of DDIM
   --gpu      the CUDA device of a CUDA build (default 0 when one is visible); --cpu: the CPU
   The grid has 4 images per row, 2 pixels of padding, images clamped to [-1, 1] (ImageLogger's
   make_grid); a progress bar over the steps goes to stderr. */
#define LDM_IMPLEMENTATION
#include "ldm_config.h"
#include "image_io.h"   /* stb_image, before ldm_data.h */
#include "ldm_data.h"     /* ldm_data_resize: lr_scale models take --lr upsampled */
#include "ldm_diffusion.h"
#include "cli.h"

typedef struct args {
    const char *config, *ckpt, *out, *lr;
    int n, steps, cls, threads, ema, ddpm, strict, decode_batch, tile, gpu, cpu;
    double eta, scale;
    unsigned long long seed;
} args;

static int usage(const char *msg) {
    if (msg) fprintf(stderr, "ldm-sample: %s\n", msg);
    fprintf(stderr,
            "usage: ldm-sample --config C --ckpt K --out grid.png [--n 16] [--steps 50] [--eta 0] [--scale 1]\n"
            "                  [--class k] [--seed s] [--lr in.png] [--ema] [--ddpm] [--threads N]\n"
            "                  [--decode-batch N] [--tile N] [--non-strict] [--gpu ID | --cpu]\n");
    return 2;
}

static int parse(int argc, char **argv, args *a) {
    memset(a, 0, sizeof *a);
    a->n = 16; a->steps = 50; a->cls = -1; a->strict = 1; a->scale = 1.0; a->seed = 23; a->decode_batch = 1;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        int more = i + 1 < argc;
        char *e;
        EX_ARG_VAL("--config", a->config)
        EX_ARG_VAL("--ckpt", a->ckpt)
        EX_ARG_VAL("--out", a->out)
        EX_ARG_VAL("--lr", a->lr)
        EX_ARG_INT("--n", a->n)
        EX_ARG_INT("--steps", a->steps)
        EX_ARG_INT("--class", a->cls)
        EX_ARG_INT("--threads", a->threads)
        EX_ARG_INT("--decode-batch", a->decode_batch)
        EX_ARG_INT("--tile", a->tile)
        EX_ARG_INT("--gpu", a->gpu)
        EX_ARG_NUM("--eta", a->eta)
        EX_ARG_NUM("--scale", a->scale)
        EX_ARG_U64("--seed", a->seed)
        if (!strcmp(s, "--ema")) { a->ema = 1; continue; }
        if (!strcmp(s, "--ddpm")) { a->ddpm = 1; continue; }
        if (!strcmp(s, "--cpu")) { a->cpu = 1; continue; }
        if (!strcmp(s, "--non-strict")) { a->strict = 0; continue; }
        fprintf(stderr, "ldm-sample: unknown argument %s\n", s);
        return usage(NULL);
    }
    if (!a->config) return usage("--config is required");
    if (!a->ckpt) return usage("--ckpt is required");
    if (!a->out) return usage("--out is required");
    if (!ex_has_ext(a->out, ".png")) return usage("--out must be a .png file");
    if (a->n < 1 || a->steps < 1 || a->decode_batch < 1 || a->tile < 0) return usage("--n, --steps and --decode-batch must be positive");
    if (a->eta < 0) return usage("--eta must not be negative");
    return 0;
}

static int fail(ldm_ctx *ctx, const char *what) {
    fprintf(stderr, "ldm-sample: %s%s%s\n", what, ctx ? ": " : "", ctx ? ldm_ctx_error(ctx) : "");
    return 1;
}

static void progress(void *user, int i, int total) {
    (void)user;
    int w = 30, k = (i + 1) * w / total;
    fprintf(stderr, "\rsampling [%.*s%*s] %d/%d", k, "##############################", w - k, "", i + 1, total);
    if (i + 1 == total) fputc('\n', stderr);
    fflush(stderr);
}

/* make_grid(nrow=4, padding=2, pad_value=0) of images clamped to [-1, 1], written as PNG. */
static int save_grid(ldm_ctx *ctx, const char *path, ldm_tensor *img) {
    int B = (int)img->shape[0], C = (int)img->shape[1], H = (int)img->shape[2], W = (int)img->shape[3], pad = 2;
    int cols = B < 4 ? B : 4, rows = (B + cols - 1) / cols;
    int GH = rows * (H + pad) + pad, GW = cols * (W + pad) + pad;
    float *host = (float *)malloc(sizeof(float) * (size_t)img->numel);
    float *grid = (float *)calloc((size_t)C * GH * GW, sizeof(float));
    char err[512];
    int r = 0;
    if (!host || !grid || ldm_to_host(ctx, img, host)) r = fail(ctx, "reading the images back");
    for (int b = 0; b < B && !r; b++) {
        int y0 = (b / cols) * (H + pad) + pad, x0 = (b % cols) * (W + pad) + pad;
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    float v = host[(((size_t)b * C + c) * H + y) * W + x];
                    grid[((size_t)c * GH + y0 + y) * GW + x0 + x] = v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v;
                }
    }
    if (!r && ex_image_save_png(path, grid, C, GH, GW, err, sizeof err)) { fprintf(stderr, "ldm-sample: %s\n", err); r = 1; }
    free(host);
    free(grid);
    return r;
}

int main(int argc, char **argv) {
    args a;
    int pr = parse(argc, argv, &a);
    if (pr) return pr;

    ldm_latent_diffusion_config lc;
    if (ex_cli_ld_config("ldm-sample", a.config, &lc)) return 1;
    if (lc.ckpt_path[0])
        fprintf(stderr, "ldm-sample: note: the config's ckpt_path %s (ignore_keys: %d) is not read; the weights come from --ckpt\n",
                lc.ckpt_path, lc.n_ignore_keys);

    /* an ldm.h checkpoint directory holds model.safetensors */
    char ckpt[4096];
    if (ex_cli_ckpt("ldm-sample", a.ckpt, ckpt, sizeof ckpt)) return 1;

    ldm_settings st;
    memset(&st, 0, sizeof st);
    st.threads = a.threads;
    st.seed = a.seed;
    ldm_ctx *ctx;
    if (ldm_ctx_create(&ctx, &st)) return fail(NULL, "cannot create the context");
    ldm_latent_diffusion *ld = NULL;
    ldm_latent_diffusion_load_opts lo;
    lo.strict = a.strict;
    lo.ema_weights = a.ema;
    int rc = 0;
#ifdef LDM_CUDA
    if (!a.cpu && ldm_cuda_available() && ldm_cuda_init(ctx, a.gpu)) rc = fail(ctx, "--gpu");
#endif
    if (rc) {}
    else if (ldm_latent_diffusion_create(ctx, &ld, &lc)) rc = fail(ctx, "model");
    else if (ldm_latent_diffusion_load(ctx, ld, ckpt, &lo)) rc = fail(ctx, "checkpoint");

    ldm_latent_diffusion_sample_opts so;
    memset(&so, 0, sizeof so);
    so.n = a.n; so.steps = a.steps; so.eta = a.eta; so.ddpm = a.ddpm; so.guidance_scale = (float)a.scale;
    so.decode_batch = a.decode_batch; so.tile = a.tile; so.on_step = progress;
    if (!rc && lc.conditioning_key == LDM_CONDKEY_CONCAT) {   /* super-resolution: the low-res image, n times */
        if (!a.lr) rc = usage("this model is conditioned on an image (conditioning_key concat): give --lr in.png");
        int w = 0, h = 0, ch = 3;
        char err[512];
        float *px = rc ? NULL : ex_image_load(a.lr, ch, &w, &h, err, sizeof err);
        if (!rc && !px) { fprintf(stderr, "ldm-sample: %s\n", err); rc = 1; }
        if (px && lc.cond_stage == LDM_CONDSTAGE_LR_LATENT) {   /* lr_scale: bicubic up to the full size, encoded by the model */
            int W2 = (int)floor(w * lc.lr_scale + 0.5), H2 = (int)floor(h * lc.lr_scale + 0.5);
            float *up = (float *)malloc(sizeof(float) * (size_t)ch * W2 * H2);
            if (!up || ldm_data_resize(up, H2, W2, px, ch, h, w, LDM_INTERP_BICUBIC)) { free(up); up = NULL; rc = fail(NULL, "resizing --lr"); }
            free(px);
            px = up;
            w = W2;
            h = H2;
        }
        if (px) {
            size_t plane = (size_t)ch * w * h;
            float *rep = (float *)malloc(sizeof(float) * plane * (size_t)a.n);
            for (int i = 0; rep && i < a.n; i++) memcpy(rep + plane * (size_t)i, px, sizeof(float) * plane);
            so.c = rep ? ldm_from_host(ctx, ldm_shape4(a.n, ch, h, w), rep) : NULL;
            free(rep);
            free(px);
            if (!so.c) rc = fail(ctx, "the conditioning image");
        }
    } else if (!rc && (lc.cond_stage == LDM_CONDSTAGE_CLASS || lc.conditioning_key == LDM_CONDKEY_ADM)) {
        /* K classes; the drawn ones leave out ClassEmbedder's last (the unconditional one) */
        int K = lc.cond_stage == LDM_CONDSTAGE_CLASS ? lc.cond_n_classes : lc.denoiser == LDM_DENOISER_DIT ? lc.dit.num_classes : lc.unet.num_classes;
        int Kd = lc.cond_stage == LDM_CONDSTAGE_CLASS ? K - 1 : K;
        if (a.cls >= K || K < 1) { fprintf(stderr, "ldm-sample: --class %d: the model has %d classes\n", a.cls, K); rc = 2; }
        float *y = (float *)malloc(sizeof(float) * (size_t)a.n);
        ldm_rng *rng = ldm_ctx_rng(ctx);
        for (int i = 0; y && i < a.n; i++) y[i] = (float)(a.cls >= 0 ? a.cls : (int)(ldm_rng_u64(rng) % (uint64_t)(Kd > 0 ? Kd : 1)));
        if (!rc && y) {
            fprintf(stderr, "classes:");
            for (int i = 0; i < a.n; i++) fprintf(stderr, " %d", (int)y[i]);
            fputc('\n', stderr);
            so.c = ldm_from_host(ctx, ldm_shape1(a.n), y);
        }
        free(y);
    }
    ldm_tensor *img = NULL;
    if (!rc) {
        img = ldm_latent_diffusion_sample(ctx, ld, &so, NULL);
        if (!img) rc = fail(ctx, "sampling");
    }
    if (!rc && !(rc = save_grid(ctx, a.out, img)))
        printf("%d samples [%lld, %lld, %lld] -> %s\n", a.n, (long long)img->shape[1], (long long)img->shape[2], (long long)img->shape[3], a.out);
    ldm_latent_diffusion_destroy(ld);
    ldm_ctx_destroy(ctx);
    return rc;
}
