/* bench_vae.c - AutoencoderKL speed on the CPU or a GPU, ldm.h against PyTorch on the same
   device, with the same sizes, in the same run. Model: the seed's kl-f4 autoencoder
   (configs/autoencoder_kl_64x64x3: ch 128, ch_mult 1,2,4, z 3), or with --model klf8 Stable
   Diffusion's kl-f8 first stage (ch 128, ch_mult 1,2,4,4, z 4), random weights.

   Cases (--cases, comma-separated):
     encdec  encode + decode of one SxS image, no grad (ldm_vae_encode_infer, then
             ldm_vae_decode_infer of the posterior mean; untiled). S = 512 by default.
     dec     decode of one S/f x S/f latent to SxS, no grad. S = 512 by default.
     enc     encode of one SxS image (the posterior's mean), no grad. S = 512 by default.
     tiled   ldm.h only: decode of one S/f x S/f latent with --tile P pixel tiles (default
             512, overlap P/4), no grad. S = 2048 by default.
     train   one autoencoder training step at SxS, batch B (S = 256, B = 8 by default), as
             examples/main.c's drv_train_batch does it: generator update (forward with a
             posterior sample, LPIPSWithDiscriminator generator loss with the LPIPS perceptual
             term and the adaptive discriminator weight, backward, Adam step) then the
             discriminator update (a second forward pass without grad, hinge loss, backward,
             Adam step). Loss config of the seed: disc_start 50001, kl_weight 1e-6,
             disc_weight 0.5; global step 50001, so the discriminator is active. LPIPS: the
             default init's random weights stand in for VGG16's (speed does not depend on them).
   Default cases: all three on a GPU; encdec and dec on the CPU (the training step at 256x256
   batch 8 takes minutes per step on a few cores: ask for it with --cases train, smaller with
   --size/--batch).

   Timing: --warmup runs (the first one also counts FLOPs), then the best of --reps runs; the
   device is synchronised (ldm_cuda_sync) before each clock reading. Inputs live in persistent
   device memory, made before the clock starts.

   FLOPs: the convolutions and matrix products ldm.h executes, counted through a wrapped kernel
   table (conv_forward, conv_backward, sgemm of the device's ldm_backend) during the first
   warm-up run: a convolution is 2*MACs forward (MACs = B*O*OH*OW*C*kh*kw); its backward is
   2*MACs for the input gradient plus 2*MACs for the weight gradient, each only where the pass
   computes it (so a layer that needs both costs twice its forward, the first layer of the
   encoder and frozen layers once); a matrix product is 2*M*N*K (attention, backward included).
   Element-wise ops, norms, softmax and the optimizers are not counted. bench/vae_torch.py
   counts its aten calls (convolution, convolution_backward by its output mask, mm, addmm, bmm,
   baddbmm) by the same rule, in one more run after its timed runs. One count divides both
   times, so the two TFLOP/s columns compare like with like: PyTorch's when it ran (its
   autograd computes only the gradients the step needs), else ldm.h's; the program prints both
   counts where they differ. They do for the training step, by 0.2%: ldm.h's attention
   backward recomputes the scores from the saved log-sum-exp instead of keeping them.

   Memory: ldm.h = its persistent buffers (parameters, gradients, buffers, Adam moments, the
   inputs) + the peak of the device's step arena over the timed runs; PyTorch = its
   max_memory_allocated on cuda, the process's maximum RSS on cpu (libraries included).

   --tile-check S: decode one SxS latent untiled and tiled and print the difference.
   The last column is this process's maximum RSS after the case (all cases run so far).

   Options: --model klf4|klf8, --device cpu|cuda (cuda in LDM_CUDA builds; the default there), --cases LIST,
   --size S, --batch B, --reps R, --warmup W, --threads T (CPU threads, both sides), --tf32
   (TF32 GEMMs on both sides; off by default), --cudnn-benchmark (PyTorch's cudnn.benchmark),
   --arena-mb N (ldm.h's CUDA step arena; default: $LDM_CUDA_ARENA_MB, else 90% of the free
   device memory less 3 GiB), --no-torch, --python CMD (default: the first of $PYTHON, python3,
   /usr/bin/python3 that imports torch). ldm.h runs every case first and releases the device,
   then PyTorch runs each case in its own process, so neither side holds memory the other needs.

   Build and run: ./build.sh bench (CPU); LDM_CUDA=1 ./build.sh bench or bench/gpu.sh (GPU);
   or cc -O2 -march=native -I. bench/bench_vae.c -lm -lpthread. Run from the repository root
   or from build/ (it looks for bench/vae_torch.py in both places). */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, popen */
#define LDM_IMPLEMENTATION
#include "ldm_vae.h"
#include "ldm_lpips.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include "bench_common.h"


enum { CASE_ENCDEC = 0, CASE_DEC = 1, CASE_ENC = 2, CASE_TRAIN = 3, CASE_TILED = 4, N_CASES = 5 };
static const char *const case_names[N_CASES] = {"encdec", "dec", "enc", "train", "tiled"};

typedef struct {
    ldm_device dev;
    int cases;                    /* bit i: case i */
    int size, batch;              /* 0: the case's default */
    int reps, warmup, threads, tf32, cudnn_benchmark, torch;
    int arena_mb;                 /* CUDA step arena; 0: most of the device (see main) */
    int klf8;                     /* --model klf8: Stable Diffusion's first stage instead of kl-f4 */
    int tile_check;               /* --tile-check S: untiled vs tiled decode at SxS */
    int tile;                     /* the tiled case's tile in pixels (overlap tile/4) */
    const char *python;
} opts;


/* ---- the models and one run of each case ---------------------------------------------------- */
typedef struct {
    ldm_ctx *ctx;
    ldm_device dev;
    ldm_vae *vae;
    ldm_nn_params *in;            /* the inputs, persistent on the device */
    ldm_tensor *x, *z;
    ldm_lpips_loss *L;            /* training only */
    int tile;                     /* CASE_TILED: tile size in pixels */
    ldm_nn_optim *opt_ae, *opt_d;
    float aeloss, discloss;
} bench;


static int sync_dev(bench *b) {
#ifdef LDM_CUDA
    if (b->dev == LDM_GPU) return ldm_cuda_sync(b->ctx) != LDM_OK;
#endif
    return ldm_ctx_status(b->ctx) != LDM_OK;
}

static int run_case(bench *b, int c) {
    ldm_ctx *ctx = b->ctx;
    ldm_step_reset(ctx);
    if (c != CASE_TRAIN) {
        ldm_vae_infer inf;
        memset(&inf, 0, sizeof inf);
        if (c == CASE_TILED) inf.tile = b->tile;
        ldm_tensor *out;
        ldm_vae_posterior q;
        if (c == CASE_ENCDEC) out = ldm_vae_encode_infer(ctx, b->vae, b->x, &inf, &q) ? NULL : ldm_vae_decode_infer(ctx, b->vae, q.mean, &inf);
        else if (c == CASE_ENC) out = ldm_vae_encode_infer(ctx, b->vae, b->x, &inf, &q) ? NULL : q.mean;
        else out = ldm_vae_decode_infer(ctx, b->vae, b->z, &inf);
        return out == NULL;
    }
    /* the training step: examples/main.c's drv_train_batch with accumulate_grad_batches 1 */
    const int64_t step = b->L->cfg.disc_start;
    ldm_set_grad_enabled(ctx, 1);
    ldm_vae_posterior q;
    ldm_tensor *xrec = ldm_vae_forward(ctx, b->vae, b->x, 1, &q);
    ldm_tensor *lg = xrec ? ldm_lpips_loss_generator(ctx, b->L, b->x, xrec, ldm_vae_posterior_kl(ctx, &q), step, ldm_vae_last_layer(b->vae), "train", NULL) : NULL;
    if (!lg || ldm_to_host(ctx, lg, &b->aeloss) || ldm_backward(ctx, lg) || ldm_nn_optim_step(ctx, b->opt_ae)) return 1;
    ldm_nn_optim_zero_grad(ctx, b->opt_ae);
    ldm_step_reset(ctx);
    ldm_set_grad_enabled(ctx, 0); /* nothing flows back into the autoencoder from this step */
    xrec = ldm_vae_forward(ctx, b->vae, b->x, 1, &q);
    ldm_set_grad_enabled(ctx, 1);
    ldm_tensor *ld = xrec ? ldm_lpips_loss_discriminator(ctx, b->L, b->x, xrec, step, "train", NULL) : NULL;
    if (!ld || ldm_to_host(ctx, ld, &b->discloss) || ldm_backward(ctx, ld) || ldm_nn_optim_step(ctx, b->opt_d)) return 1;
    ldm_nn_optim_zero_grad(ctx, b->opt_d);
    ldm_step_reset(ctx);
    return 0;
}

/* Inputs and (for training) the loss and optimizers of case c; persistent bytes in *persist. */
static int setup_case(bench *b, int c, int S, int B, double *persist) {
    ldm_ctx *ctx = b->ctx;
    if (b->in) ldm_nn_params_destroy(b->in);
    b->in = NULL;
    b->x = b->z = NULL;
    if (ldm_nn_params_create(ctx, &b->in, b->dev)) return 1;
    int f = ldm_vae_factor(&b->vae->cfg);
    if (c == CASE_DEC || c == CASE_TILED)
        b->z = ldm_nn_buffer(b->in, "z", ldm_shape4(B, b->vae->cfg.embed_dim, S / f, S / f), ldm_nn_init_normal(0.0f, 1.0f), 1);
    else b->x = ldm_nn_buffer(b->in, "x", ldm_shape4(B, 3, S, S), ldm_nn_init_uniform(-1.0f, 1.0f), 1);
    if (ldm_nn_params_alloc(ctx, b->in)) return 1;
    ldm_vae_set_training(b->vae, c == CASE_TRAIN);
    *persist = block_bytes(b->in, 0) + block_bytes(b->vae->P, c == CASE_TRAIN);
    if (c != CASE_TRAIN) return 0;
    if (!b->L) {
        ldm_lpips_loss_config lc = ldm_lpips_loss_defaults();
        lc.disc_start = 50001; lc.kl_weight = 1e-6; lc.disc_weight = 0.5;
        if (ldm_lpips_loss_create(ctx, &b->L, &lc)) return 1;
        b->L->lpips->loaded = 1; /* random weights (the default init) stand in for VGG16's */
        /* configure_optimizers: Adam(betas 0.5, 0.9) for each; lr = base_lr * batch as main.py */
        ldm_nn_optim_config oc = ldm_nn_optim_defaults(LDM_OPTIM_ADAM, 4.5e-6 * B);
        oc.beta1 = 0.5;
        oc.beta2 = 0.9;
        const char *ae_groups[4] = {"encoder", "decoder", "quant_conv", "post_quant_conv"}, *d_groups[1] = {"discriminator"};
        if (ldm_nn_optim_create(ctx, &b->opt_ae, b->vae->P, &oc, 4, ae_groups) ||
            ldm_nn_optim_create(ctx, &b->opt_d, b->L->P, &oc, 1, d_groups)) return 1;
    }
    *persist += block_bytes(b->L->P, 1) + block_bytes(b->L->lpips->P, 0) +
                8.0 * (double)(ldm_nn_optim_numel(b->opt_ae) + ldm_nn_optim_numel(b->opt_d)); /* Adam: 2 moments */
    return 0;
}

typedef struct { int ok; double secs, mib, flops, rss; } result;

/* the process's maximum RSS so far, MiB (everything this process has run, libraries included) */
static double max_rss_mib(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) ? 0.0 : (double)ru.ru_maxrss / 1024.0;
}

/* The FLOPs that divide both times: PyTorch's count when it ran (autograd computes only the
   gradients the step needs), else ldm.h's. */
static double flops_of(const result *l, const result *t) { return t->ok && t->flops > 0 ? t->flops : l->flops; }

static int time_case(bench *b, const opts *o, int c, int S, int B, result *r) {
    ldm_ctx *ctx = b->ctx;
    double persist = 0.0;
    memset(r, 0, sizeof *r);
    if (setup_case(b, c, S, B, &persist)) return 1;
    for (int w = 0; w < o->warmup; w++) {
        if (w == 0) fc_install(ctx, b->dev);
        int bad = run_case(b, c) || sync_dev(b);
        if (w == 0) { fc_remove(ctx, b->dev); r->flops = fc_flops; }
        if (bad) return 1;
    }
    ldm_step_reset(ctx);
    ldm_arena_reset_peak(ctx);
    double best = 1e30;
    for (int i = 0; i < o->reps; i++) {
        if (sync_dev(b)) return 1;
        double t0 = now();
        if (run_case(b, c) || sync_dev(b)) return 1;
        double t = now() - t0;
        if (t < best) best = t;
    }
    r->secs = best;
    r->mib = (persist + (double)ldm_arena_peak(ctx, b->dev)) / 1048576.0;
    r->rss = max_rss_mib();
    r->ok = 1;
    if (c == CASE_TRAIN) fprintf(stderr, "ldm.h train: aeloss %g discloss %g\n", b->aeloss, b->discloss);
    return 0;
}

/* ---- tiled against untiled ------------------------------------------------------------------ */
/* Decodes one S x S latent untiled and with b->tile pixel tiles (overlap tile/4) and prints how
   far apart they are: GroupNorm and attention see one tile at a time, so tiling changes the
   result; the overlap's cosine blend keeps the change smooth (no seams). */
static int tile_check(bench *b, int S) {
    ldm_ctx *ctx = b->ctx;
    int f = ldm_vae_factor(&b->vae->cfg);
    double persist;
    if (setup_case(b, CASE_DEC, S, 1, &persist)) return 1;
    ldm_vae_infer inf;
    memset(&inf, 0, sizeof inf);
    int64_t n = 3 * (int64_t)S * S;
    float *u = (float *)malloc(sizeof(float) * (size_t)n), *t = (float *)malloc(sizeof(float) * (size_t)n);
    int bad = !u || !t;
    for (int k = 0; k < 2 && !bad; k++) {
        ldm_step_reset(ctx);
        inf.tile = k ? b->tile : 0;
        ldm_tensor *o = ldm_vae_decode_infer(ctx, b->vae, b->z, &inf);
        bad = !o || ldm_to_host(ctx, o, k ? t : u);
    }
    ldm_step_reset(ctx);
    if (!bad) {
        double mx = 0, sad = 0, s1 = 0, s2 = 0, lo = 1e30, hi = -1e30;
        for (int64_t i = 0; i < n; i++) {
            double d = fabs((double)t[i] - u[i]);
            if (d > mx) mx = d;
            sad += d; s1 += u[i]; s2 += (double)u[i] * u[i];
            if (u[i] < lo) lo = u[i];
            if (u[i] > hi) hi = u[i];
        }
        double mean = s1 / (double)n, sd = sqrt(s2 / (double)n - mean * mean), mse = 0;
        for (int64_t i = 0; i < n; i++) mse += ((double)t[i] - u[i]) * ((double)t[i] - u[i]);
        mse /= (double)n;
        printf("tile check: %dx%d decode (latent %dx%d), %d-pixel tiles with %d overlap against untiled: max |diff| %.4g, "
               "mean |diff| %.4g, output sd %.4g (mean |diff| = %.2f%% of sd), PSNR %.1f dB over the output's range %.3g\n",
               S, S, S / f, S / f, b->tile, b->tile / 4, mx, sad / (double)n, sd, 100.0 * sad / (double)n / sd,
               10.0 * log10((hi - lo) * (hi - lo) / (mse > 0 ? mse : 1e-30)), hi - lo);
    }
    free(u);
    free(t);
    return bad;
}

/* ---- PyTorch ---------------------------------------------------------------------------------- */
static const char *torch_python(const opts *o) { return find_torch_python(o->python); }

static int torch_case(const opts *o, const char *py, const char *script, int c, int S, int B, int threads, result *r) {
    char cmd[1024];
    memset(r, 0, sizeof *r);
    snprintf(cmd, sizeof cmd, "%s %s --model %s --case %s --device %s --size %d --batch %d --reps %d --warmup %d --threads %d%s%s --count-flops",
             py, script, o->klf8 ? "klf8" : "klf4", case_names[c], o->dev == LDM_CPU ? "cpu" : "cuda", S, B, o->reps, o->warmup, threads,
             o->tf32 ? " --tf32" : "", o->cudnn_benchmark ? " --cudnn-benchmark" : "");
    fflush(stdout);
    FILE *p = popen(cmd, "r");
    if (!p) return 1;
    char line[512], name[32];
    while (fgets(line, sizeof line, p))
        if (sscanf(line, "RESULT %31s %lf %lf %lf", name, &r->secs, &r->mib, &r->flops) == 4 && !strcmp(name, case_names[c])) r->ok = 1;
    int st = pclose(p);
    if (!r->ok || st != 0) {
        fprintf(stderr, "bench_vae: PyTorch case %s failed (exit status %d): %s\n", case_names[c], st, cmd);
        r->ok = 0;
        return 1;
    }
    return 0;
}

/* ---- main ------------------------------------------------------------------------------------- */
static void usage(void) {
    fprintf(stderr,
            "usage: bench_vae [--model klf4|klf8] [--device cpu|cuda] [--cases encdec,dec,enc,train,tiled] [--size S]\n"
            "                 [--batch B] [--reps R] [--warmup W] [--threads T] [--tile P] [--tile-check S] [--tf32]\n"
            "                 [--cudnn-benchmark] [--arena-mb N] [--no-torch] [--python CMD]\n"
            "  defaults: kl-f4; encdec, dec and enc at 512x512 batch 1, train at 256x256 batch 8, tiled (ldm.h only) at\n"
            "  2048x2048 with 512-pixel tiles; encdec,dec,enc,train on a GPU, encdec,dec on the CPU; reps 5 (GPU) / 2 (CPU),\n"
            "  warmup 2 (GPU) / 1 (CPU). --tile-check S: decode one SxS latent untiled and tiled and print their difference\n");
}

static int parse_int(const char *flag, const char *v, int lo, int *out) { return parse_int_opt("bench_vae", flag, v, lo, out); }

int main(int argc, char **argv) {
    opts o;
    memset(&o, 0, sizeof o);
    o.torch = 1;
    o.reps = o.warmup = -1;
    o.cases = -1;
#ifdef LDM_CUDA
    o.dev = LDM_GPU;
#else
    o.dev = LDM_CPU;
#endif
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--device")) {
            if (!v || (strcmp(v, "cpu") && strcmp(v, "cuda") && strcmp(v, "gpu"))) {
                fprintf(stderr, "bench_vae: --device cpu or cuda\n");
                return 2;
            }
            o.dev = strcmp(v, "cpu") ? LDM_GPU : LDM_CPU;
            i++;
        } else if (!strcmp(a, "--model")) {
            if (!v || (strcmp(v, "klf4") && strcmp(v, "klf8"))) { fprintf(stderr, "bench_vae: --model klf4 or klf8\n"); return 2; }
            o.klf8 = !strcmp(v, "klf8");
            i++;
        } else if (!strcmp(a, "--tile")) bad = parse_int(a, v, 16, &o.tile), i++;
        else if (!strcmp(a, "--tile-check")) {
            bad = parse_int(a, v, 64, &o.tile_check), i++;
            if (!bad && o.tile_check % 8) { fprintf(stderr, "bench_vae: --tile-check needs a multiple of 8\n"); return 2; }
        } else if (!strcmp(a, "--cases")) {
            if (!v) { usage(); return 2; }
            o.cases = 0;
            char buf[128];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *t = strtok(buf, ","); t; t = strtok(NULL, ",")) {
                int k = 0;
                if (!strcmp(t, "all")) { o.cases = (1 << N_CASES) - 1; continue; }
                while (k < N_CASES && strcmp(t, case_names[k])) k++;
                if (k == N_CASES) { fprintf(stderr, "bench_vae: unknown case \"%s\" (encdec, dec, enc, train, tiled, all)\n", t); return 2; }
                o.cases |= 1 << k;
            }
            i++;
        } else if (!strcmp(a, "--size")) {
            bad = parse_int(a, v, 8, &o.size), i++;
            if (!bad && o.size % 8) { fprintf(stderr, "bench_vae: --size must be a multiple of 8 (the discriminator and f = 4)\n"); return 2; }
        } else if (!strcmp(a, "--batch")) bad = parse_int(a, v, 1, &o.batch), i++;
        else if (!strcmp(a, "--reps")) bad = parse_int(a, v, 1, &o.reps), i++;
        else if (!strcmp(a, "--warmup")) bad = parse_int(a, v, 1, &o.warmup), i++;
        else if (!strcmp(a, "--threads")) bad = parse_int(a, v, 1, &o.threads), i++;
        else if (!strcmp(a, "--arena-mb")) bad = parse_int(a, v, 64, &o.arena_mb), i++;
        else if (!strcmp(a, "--tf32")) o.tf32 = 1;
        else if (!strcmp(a, "--cudnn-benchmark")) o.cudnn_benchmark = 1;
        else if (!strcmp(a, "--no-torch")) o.torch = 0;
        else if (!strcmp(a, "--python")) { if (!v) { usage(); return 2; } o.python = v; i++; }
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(); return 0; }
        else { fprintf(stderr, "bench_vae: unknown option %s\n", a); usage(); return 2; }
        if (bad) return 2;
    }
#ifndef LDM_CUDA
    if (o.dev != LDM_CPU) {
        fprintf(stderr, "bench_vae: --device cuda needs a CUDA build of this program (hint: bench/gpu.sh, or LDM_CUDA=1 ./build.sh bench)\n");
        return 2;
    }
#endif
    if (o.size && o.size < 32 && (o.cases < 0 || (o.cases & (1 << CASE_TRAIN)))) {
        fprintf(stderr, "bench_vae: the training step needs --size >= 32 (the discriminator's receptive field)\n");
        if (o.cases >= 0) return 2;
        o.cases = (1 << CASE_ENCDEC) | (1 << CASE_DEC); /* the default case list without train */
    }
    int gpu = o.dev != LDM_CPU;
    if (o.cases < 0) o.cases = o.tile_check ? 0 : gpu ? (1 << N_CASES) - 1 - (1 << CASE_TILED) : (1 << CASE_ENCDEC) | (1 << CASE_DEC);
    if (!o.tile) o.tile = 512;
    if (o.reps < 0) o.reps = gpu ? 5 : 2;
    if (o.warmup < 0) o.warmup = gpu ? 2 : 1;

    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.threads = o.threads;
    bench b;
    memset(&b, 0, sizeof b);
    if (ldm_ctx_create(&b.ctx, &s)) { fprintf(stderr, "bench_vae: %s\n", b.ctx ? ldm_ctx_error(b.ctx) : "out of memory"); return 1; }
    ldm_ctx *ctx = b.ctx;
    b.dev = o.dev;
    char devname[400];
    snprintf(devname, sizeof devname, "cpu (%s SGEMM kernel)", ldm_cpu_kernel_name(ctx));
#ifdef LDM_CUDA
    if (gpu) {
        if (!ldm_cuda_available()) { fprintf(stderr, "bench_vae: no CUDA device is visible (hint: check nvidia-smi, or --device cpu)\n"); return 1; }
        /* The training step at 256x256 batch 8 needs more activation memory than the default
           arena of ldm_cuda_init (half the free memory): take most of the device, unless
           LDM_CUDA_ARENA_MB or --arena-mb says otherwise. */
        if (o.arena_mb > 0 || !getenv("LDM_CUDA_ARENA_MB")) {
            size_t fr = 0, tot = 0;
            long mb = o.arena_mb;
            if (mb <= 0 && cudaSetDevice(0) == cudaSuccess && cudaMemGetInfo(&fr, &tot) == cudaSuccess)
                mb = (long)(fr >> 20) * 9 / 10 - 3072; /* room for the persistent buffers and cuBLAS */
            char v[32];
            snprintf(v, sizeof v, "%ld", mb);
            if (mb >= 64) setenv("LDM_CUDA_ARENA_MB", v, 1);
        }
        if (ldm_cuda_init(ctx, 0)) { fprintf(stderr, "bench_vae: %s\n", ldm_ctx_error(ctx)); return 1; }
        ldm_cuda_set_tf32(ctx, o.tf32);
        snprintf(devname, sizeof devname, "cuda: %s, ldm.h step arena %.1f GiB", ldm_cuda_device_name(ctx),
                 (double)ldm_arena_limit(ctx, LDM_GPU) / 1073741824.0);
    }
#endif
    ldm_vae_config cfg = o.klf8 ? ldm_vae_config_kl_f8() : ldm_vae_config_kl_f4();
    b.tile = o.tile;
    if (ldm_vae_create(ctx, &b.vae, &cfg)) { fprintf(stderr, "bench_vae: %s\n", ldm_ctx_error(ctx)); return 1; }
    int threads = ldm_ctx_threads(ctx);
    int64_t np = ldm_nn_numel(b.vae->P, NULL, 0);

    const char *py = NULL, *script = NULL;
    if (o.torch) {
        script = access("bench/vae_torch.py", R_OK) == 0 ? "bench/vae_torch.py" : access("../bench/vae_torch.py", R_OK) == 0 ? "../bench/vae_torch.py" : NULL;
        py = script ? torch_python(&o) : NULL;
        if (!script) printf("bench/vae_torch.py not found (run from the repository root or build/): no PyTorch columns\n");
        else if (!py) printf("PyTorch not found (no python3 that imports torch; --python CMD): no PyTorch columns\n");
    }
    time_t tt = time(NULL);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%d", localtime(&tt));
    printf("bench_vae %s: AutoencoderKL %s (%.1fM params, random weights) on %s; TF32 %s; %d CPU threads; warm-up %d, best of %d\n",
           date, o.klf8 ? "kl-f8" : "kl-f4", (double)np / 1e6, devname, o.tf32 ? "on" : "off", threads, o.warmup, o.reps);
    if (!gpu && !(o.cases & (1 << CASE_TRAIN))) printf("(train not run on the CPU by default: --cases train, e.g. with --size 128 --batch 2)\n");

    result rl[N_CASES], rt[N_CASES];
    int S[N_CASES], B[N_CASES], fail = 0;
    memset(rl, 0, sizeof rl);
    memset(rt, 0, sizeof rt);
    for (int c = 0; c < N_CASES; c++) {
        S[c] = o.size ? o.size : c == CASE_TRAIN ? 256 : c == CASE_TILED ? 2048 : 512;
        B[c] = c == CASE_TRAIN ? (o.batch ? o.batch : 8) : 1;
        if (!(o.cases & (1 << c))) continue;
        if (time_case(&b, &o, c, S[c], B[c], &rl[c])) {
            fprintf(stderr, "bench_vae: ldm.h case %s: %s\n", case_names[c], ldm_ctx_error(ctx));
            ldm_ctx_clear_error(ctx);
            fail = 1;
        }
    }
    if (o.tile_check && tile_check(&b, o.tile_check)) {
        fprintf(stderr, "bench_vae: tile check: %s\n", ldm_ctx_error(ctx));
        fail = 1;
    }
    /* every ldm.h buffer goes (on a GPU: the step arena too) before PyTorch starts, so that
       each side has the whole device */
    if (b.opt_ae) ldm_nn_optim_destroy(b.opt_ae);
    if (b.opt_d) ldm_nn_optim_destroy(b.opt_d);
    if (b.L) ldm_lpips_loss_destroy(b.L);
    if (b.in) ldm_nn_params_destroy(b.in);
    ldm_vae_destroy(b.vae);
    ldm_ctx_destroy(ctx);
    for (int c = 0; c < N_CASES; c++)
        if (py && c != CASE_TILED && (o.cases & (1 << c)) && torch_case(&o, py, script, c, S[c], B[c], threads, &rt[c])) fail = 1;

    printf("%-26s %9s %9s %8s %9s %8s %8s %10s %10s %10s\n", "case", "ldm.h s", "torch s", "speedup", "GFLOP", "ldm TF/s",
           "torch TF/s", "ldm.h MiB", "torch MiB", "ldm.h RSS");
    for (int c = 0; c < N_CASES; c++) {
        if (!(o.cases & (1 << c)) || !rl[c].ok) continue;
        char label[64];
        static const char *const what[N_CASES] = {"encode+decode", "decode", "encode", "train step", "tiled decode"};
        snprintf(label, sizeof label, "%s %dx%d b%d", what[c], S[c], S[c], B[c]);
        double f = flops_of(&rl[c], &rt[c]);
        printf("%-26s %9.4f", label, rl[c].secs);
        if (rt[c].ok) printf(" %9.4f %8.2f", rt[c].secs, rt[c].secs / rl[c].secs);
        else printf(" %9s %8s", "-", "-");
        printf(" %9.1f %8.2f", f / 1e9, f / rl[c].secs / 1e12);
        if (rt[c].ok) printf(" %8.2f", f / rt[c].secs / 1e12);
        else printf(" %8s", "-");
        printf(" %10.0f", rl[c].mib);
        if (rt[c].ok) printf(" %10.0f", rt[c].mib);
        else printf(" %10s", "-");
        printf(" %10.0f\n", rl[c].rss);
    }
    printf("speedup = torch s / ldm.h s (> 1: ldm.h is faster). GFLOP: convolutions and matrix products, 2 per MAC, backward\n"
           "as computed (PyTorch's count when it ran, else ldm.h's); TF/s = that one count / each time. MiB: ldm.h persistent\n"
           "buffers + step-arena peak; torch %s. ldm.h RSS: this process's maximum RSS after\n"
           "the case (a maximum over the cases run so far: run one case for its own figure).\n",
           gpu ? "max_memory_allocated" : "max RSS of its process (libraries included)");
    for (int c = 0; c < N_CASES; c++) {
        if (!rl[c].ok || !rt[c].ok || rt[c].flops <= 0) continue;
        double d = rl[c].flops / rt[c].flops - 1.0;
        if (fabs(d) > 0.001)
            printf("%s: ldm.h executes %.1f GFLOP of convolutions and products, %+.1f%% against PyTorch's %.1f%s\n", case_names[c],
                   rl[c].flops / 1e9, 100.0 * d, rt[c].flops / 1e9,
                   c == CASE_TRAIN ? " (ldm.h's attention backward recomputes the scores from the saved log-sum-exp: 2 more products per attention block)" : "");
        else printf("%s: ldm.h's and PyTorch's FLOP counts agree\n", case_names[c]);
    }

    return fail;
}
