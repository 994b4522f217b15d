/* classcheck.c - does a class-conditional model draw its classes? A check that needs no
   classifier: sample n images of every class k from a LatentDiffusion checkpoint, and count
   how many lie nearest (pixel L2) to class k's mean training image; the same share for the
   real test images of class k says how good this crude measure can get. Writes a grid, one
   row per class.
   Build:  cc -std=c99 -O2 -march=native -I. -Ithird_party examples/classcheck.c -o build/ldm-classcheck -lm -lpthread
   (./build.sh builds it as build/ldm-classcheck)
   ldm-classcheck --config C --ckpt K --idx DIR [--n 100] [--steps 50] [--eta 0] [--scale 3]
                   [--seed s] [--threads N] [--grid out.png] [--grid-n 8]
   --idx    an MNIST-style directory: train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],
            t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] (e.g. Debian's
            /usr/share/datasets/fashion-mnist)
   The model's images may be larger than the IDX images (padded, as ldm.data.mnist's
   resize: pad does); the centre is compared. Samples use the EMA weights when the checkpoint
   has them, DDIM with classifier-free guidance against the class n_classes - 1. */
#define LDM_IMPLEMENTATION
#include "ldm_config.h"
#include "image_io.h"   /* stb_image, before ldm_data.h */
#include "ldm_data.h"
#include "ldm_diffusion.h"
#include "cli.h"
#include <sys/stat.h>

typedef struct args {
    const char *config, *ckpt, *idx, *grid;
    int n, steps, threads, grid_n;
    double eta, scale;
    unsigned long long seed;
} args;

static int usage(const char *msg) {
    if (msg) fprintf(stderr, "ldm-classcheck: %s\n", msg);
    fprintf(stderr, "usage: ldm-classcheck --config C --ckpt K --idx DIR [--n 100] [--steps 50] [--eta 0] [--scale 3]\n"
                    "                       [--seed s] [--threads N] [--grid out.png] [--grid-n 8]\n");
    return 2;
}
static int parse(int argc, char **argv, args *a) {
    memset(a, 0, sizeof *a);
    a->n = 100; a->steps = 50; a->scale = 3.0; a->seed = 23; a->grid_n = 8;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        int more = i + 1 < argc;
        char *e;
        EX_ARG_VAL("--config", a->config)
        EX_ARG_VAL("--ckpt", a->ckpt)
        EX_ARG_VAL("--idx", a->idx)
        EX_ARG_VAL("--grid", a->grid)
        EX_ARG_INT("--n", a->n)
        EX_ARG_INT("--steps", a->steps)
        EX_ARG_INT("--threads", a->threads)
        EX_ARG_INT("--grid-n", a->grid_n)
        EX_ARG_NUM("--eta", a->eta)
        EX_ARG_NUM("--scale", a->scale)
        EX_ARG_U64("--seed", a->seed)
        fprintf(stderr, "ldm-classcheck: unknown argument %s\n", s);
        return usage(NULL);
    }
    if (!a->config || !a->ckpt || !a->idx) return usage("--config, --ckpt and --idx are required");
    if (a->n < 1 || a->steps < 1 || a->grid_n < 1) return usage("--n, --steps and --grid-n must be positive");
    if (a->grid && !ex_has_ext(a->grid, ".png")) return usage("--grid must be a .png file");
    return 0;
}
static int fail(ldm_ctx *ctx, const char *what) {
    fprintf(stderr, "ldm-classcheck: %s%s%s\n", what, ctx ? ": " : "", ctx ? ldm_ctx_error(ctx) : "");
    return 1;
}

/* An IDX file of the directory: name, else name.gz. */
static int idx_open(ldm_ctx *ctx, const char *dir, const char *name, ldm_idx *out) {
    char p[4096];
    struct stat sb;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    if (stat(p, &sb) != 0) snprintf(p, sizeof p, "%s/%s.gz", dir, name);
    return ldm_idx_read(ctx, p, out) ? fail(ctx, "reading the dataset") : 0;
}

/* The nearest of K class means (each hw floats in [0, 1]) to image x (hw floats). */
static int nearest(const double *means, int K, const float *x, int hw) {
    int best = 0;
    double bd = 0;
    for (int k = 0; k < K; k++) {
        double d = 0;
        for (int i = 0; i < hw; i++) { double e = x[i] - means[(size_t)k * hw + i]; d += e * e; }
        if (k == 0 || d < bd) { bd = d; best = k; }
    }
    return best;
}

int main(int argc, char **argv) {
    args a;
    int pr = parse(argc, argv, &a);
    if (pr) return pr;
    ldm_latent_diffusion_config lc;
    if (ex_cli_ld_config("ldm-classcheck", a.config, &lc)) return 1;
    if (lc.cond_stage != LDM_CONDSTAGE_CLASS) { fprintf(stderr, "ldm-classcheck: %s: not a class-conditional model (ClassEmbedder)\n", a.config); return 1; }
    char ckpt[4096];
    if (ex_cli_ckpt("ldm-classcheck", a.ckpt, ckpt, sizeof ckpt)) return 1;

    ldm_settings st;
    memset(&st, 0, sizeof st);
    st.threads = a.threads;
    st.seed = a.seed;
    ldm_ctx *ctx;
    if (ldm_ctx_create(&ctx, &st)) return fail(NULL, "cannot create the context");
    ldm_idx tri, trl, tei, tel;
    memset(&tri, 0, sizeof tri); memset(&trl, 0, sizeof trl); memset(&tei, 0, sizeof tei); memset(&tel, 0, sizeof tel);
    int rc = idx_open(ctx, a.idx, "train-images-idx3-ubyte", &tri) || idx_open(ctx, a.idx, "train-labels-idx1-ubyte", &trl) ||
             idx_open(ctx, a.idx, "t10k-images-idx3-ubyte", &tei) || idx_open(ctx, a.idx, "t10k-labels-idx1-ubyte", &tel);
    int K = lc.cond_n_classes - 1;   /* the last class is the unconditional one */
    int h = rc ? 0 : (int)tri.dims[1], w = rc ? 0 : (int)tri.dims[2], hw = h * w;
    if (!rc && (tri.ndim != 3 || trl.dims[0] != tri.dims[0] || tei.ndim != 3 || tei.dims[1] != h || tei.dims[2] != w || tel.dims[0] != tei.dims[0])) {
        fprintf(stderr, "ldm-classcheck: %s: the IDX files do not match (images [N, H, W] and N labels)\n", a.idx);
        rc = 1;
    }
    double *means = rc ? NULL : (double *)calloc((size_t)K * hw, sizeof(double));
    int64_t *count = rc ? NULL : (int64_t *)calloc((size_t)K, sizeof(int64_t));
    float *img = rc ? NULL : (float *)malloc(sizeof(float) * (size_t)hw);
    if (!rc && (!means || !count || !img)) rc = fail(NULL, "out of memory");
    for (int64_t i = 0; !rc && i < tri.dims[0]; i++) {
        int y = trl.data[i];
        if (y >= K) { fprintf(stderr, "ldm-classcheck: training label %d, the model has %d classes\n", y, K); rc = 1; break; }
        for (int j = 0; j < hw; j++) means[(size_t)y * hw + j] += tri.data[i * hw + j] / 255.0;
        count[y]++;
    }
    for (int k = 0; !rc && k < K; k++)
        for (int j = 0; j < hw; j++) means[(size_t)k * hw + j] /= count[k] ? (double)count[k] : 1.0;
    /* real test images */
    double real_share[64] = {0};
    int64_t real_n[64] = {0};
    for (int64_t i = 0; !rc && i < tei.dims[0]; i++) {
        int y = tel.data[i];
        if (y >= K || y >= 64) continue;
        for (int j = 0; j < hw; j++) img[j] = tei.data[i * hw + j] / 255.0f;
        real_share[y] += nearest(means, K, img, hw) == y;
        real_n[y]++;
    }

    ldm_latent_diffusion *ld = NULL;
    if (!rc && ldm_latent_diffusion_create(ctx, &ld, &lc)) rc = fail(ctx, "creating the model");
    if (!rc) {
        ldm_weights *wf;
        int has_ema = 0;
        if (!ldm_weights_open(ctx, &wf, ckpt)) {
            for (int i = 0; i < ldm_weights_count(wf) && !has_ema; i++) has_ema = !strncmp(ldm_weights_info(wf, i)->name, "model_ema.", 10);
            ldm_weights_close(wf);
        } else ldm_ctx_clear_error(ctx);
        ldm_latent_diffusion_load_opts lo;
        lo.strict = 1;
        lo.ema_weights = has_ema;
        if (ldm_latent_diffusion_load(ctx, ld, ckpt, &lo)) rc = fail(ctx, "loading the checkpoint");
        else printf("%s: %s weights\n", ckpt, has_ema ? "EMA" : "trained");
    }
    double sample_share[64] = {0};
    int gn = a.grid_n < a.n ? a.grid_n : a.n, GH = 0, GW = 0, C = 1, H = 0, W = 0;
    float *grid = NULL;
    for (int k = 0; !rc && k < K && k < 64; k++) {
        for (int done = 0; done < a.n && !rc;) {
            int b = a.n - done < 50 ? a.n - done : 50;
            ldm_mark mk = ldm_arena_mark(ctx);
            float *lab = (float *)malloc(sizeof(float) * (size_t)b);
            for (int i = 0; lab && i < b; i++) lab[i] = (float)k;
            ldm_latent_diffusion_sample_opts so;
            memset(&so, 0, sizeof so);
            so.n = b;
            so.steps = a.steps;
            so.eta = a.eta;
            so.guidance_scale = (float)a.scale;
            so.c = lab ? ldm_from_host(ctx, ldm_shape1(b), lab) : NULL;
            so.decode_batch = b;
            free(lab);
            ldm_tensor *x = so.c ? ldm_latent_diffusion_sample(ctx, ld, &so, NULL) : NULL;
            float *hx = x ? (float *)malloc(sizeof(float) * (size_t)x->numel) : NULL;
            if (!hx || ldm_to_host(ctx, x, hx)) { free(hx); rc = fail(ctx, "sampling"); break; }
            C = (int)x->shape[1]; H = (int)x->shape[2]; W = (int)x->shape[3];
            if (H < h || W < w) { free(hx); fprintf(stderr, "ldm-classcheck: samples of %dx%d are smaller than the data's %dx%d\n", H, W, h, w); rc = 1; break; }
            int oy = (H - h) / 2, ox = (W - w) / 2;
            for (int i = 0; i < b; i++) {
                const float *s = hx + (size_t)i * C * H * W;   /* channel 0 (grey) */
                for (int y = 0; y < h; y++)
                    for (int q = 0; q < w; q++) {
                        float v = (s[(size_t)(oy + y) * W + ox + q] + 1.0f) * 0.5f;
                        img[y * w + q] = v < 0 ? 0 : v > 1 ? 1 : v;
                    }
                sample_share[k] += nearest(means, K, img, hw) == k;
                int col = done + i;
                if (a.grid && col < gn) {   /* make_grid(nrow = gn, padding 2) of clamped images */
                    if (!grid) {
                        GH = K * (H + 2) + 2; GW = gn * (W + 2) + 2;
                        grid = (float *)calloc((size_t)C * GH * GW, sizeof(float));
                        if (!grid) { rc = fail(NULL, "out of memory"); break; }
                    }
                    for (int c = 0; c < C; c++)
                        for (int y = 0; y < H; y++)
                            for (int q = 0; q < W; q++) {
                                float v = hx[(((size_t)i * C + c) * H + y) * W + q];
                                grid[((size_t)c * GH + 2 + k * (H + 2) + y) * GW + 2 + col * (W + 2) + q] = v < -1 ? -1 : v > 1 ? 1 : v;
                            }
                }
            }
            free(hx);
            done += b;
            ldm_arena_rewind(ctx, mk);
        }
        if (!rc) {
            printf("class %d: %5.1f%% of %d samples nearest to its training mean (real test images: %5.1f%% of %lld)\n", k,
                   100.0 * sample_share[k] / a.n, a.n, real_n[k] ? 100.0 * real_share[k] / (double)real_n[k] : 0.0, (long long)real_n[k]);
            fflush(stdout);
        }
    }
    if (!rc) {
        double s = 0, r = 0, rn = 0;
        for (int k = 0; k < K && k < 64; k++) { s += sample_share[k]; r += real_share[k]; rn += (double)real_n[k]; }
        printf("all classes: %.1f%% of samples, %.1f%% of real test images nearest to their class's training mean\n", 100.0 * s / ((double)a.n * K),
               rn > 0 ? 100.0 * r / rn : 0.0);
        char err[512];
        if (a.grid && grid && ex_image_save_png(a.grid, grid, C, GH, GW, err, sizeof err)) { fprintf(stderr, "ldm-classcheck: %s\n", err); rc = 1; }
        else if (a.grid) printf("grid: %s (a row per class, %d samples each)\n", a.grid, gn);
    }
    free(grid); free(means); free(count); free(img);
    ldm_idx_free(&tri); ldm_idx_free(&trl); ldm_idx_free(&tei); ldm_idx_free(&tel);
    ldm_latent_diffusion_destroy(ld);
    ldm_ctx_destroy(ctx);
    return rc;
}
