/* bench_unet.c - speed of the LDM UNet (the denoiser of latent diffusion) on the CPU or a GPU,
   ldm.h against PyTorch on the same device, with the same sizes, in the same run.

   Models (--model):
     cin256  configs/cin256-v2.yaml's unet_config (the class-conditional ImageNet LDM: 64x64x3
             latent, model_channels 192, channel_mult 1,2,3,5, 2 ResBlocks per level,
             SpatialTransformer at downsample rates 8, 4, 2 with one head (num_heads 1, legacy)
             and context_dim 512; 400.9M parameters) and its cond_stage_config ClassEmbedder
             (1001 classes x 512). Default.
     small   a reduced UNet of the same kind, so that a check of both sides takes seconds:
             model_channels 32, channel_mult 1,2,2, 1 ResBlock per level, SpatialTransformer
             at rates 2 and 4 (one head), context_dim 64, ClassEmbedder 1001 x 64.
   Random weights on both sides (ldm.h's init, PyTorch's default init): speed does not depend
   on the values.

   Cases (--cases, comma-separated), each at every batch of --batch (a list, default 1) and
   latent size --size (default 64):
     train   one training step of LatentDiffusion's denoiser, as p_losses and
             configure_optimizers do it (first stage and q_sample left out: x_t is given):
             context = ClassEmbedder(labels) (cond_stage_trainable), eps = UNet(x_t, t,
             context), loss = mean((target - eps)^2), the loss read back to the host (Lightning
             logs it), backward, one AdamW step (lr = base_learning_rate 1e-4 * batch, torch's
             defaults otherwise: weight decay 0.01) over the UNet and the ClassEmbedder.
     sample  one sampling step's denoiser call without grad on a precomputed context. With
             --cfg, the classifier-free-guided call of CompVis's DDIM/PLMS samplers: x, t and
             [unconditional context, context] concatenated to batch 2B, one UNet call, the
             output split and e = e_u + 3 * (e_c - e_u).

   Timing, FLOPs and memory as bench_vae.c (see bench/README.md): --warmup runs (the first one
   also counts FLOPs through a wrapped kernel table: conv_forward, conv_backward, sgemm of the
   device's ldm_backend), then the best of --reps runs, the device synchronised before each
   clock reading; inputs in persistent device memory made before the clock starts. A
   convolution is 2*MACs forward and 2*MACs for each of the input and weight gradients its
   backward computes; a matrix product 2*M*N*K (attention included, as long as ldm_attention
   reaches its products through the table's sgemm). bench/unet_torch.py counts its aten calls
   by the same rule with a TorchDispatchMode after its timed runs. One count divides both times
   (PyTorch's when it ran, else ldm.h's); where the counts differ the program says by how much
   and why. Memory: ldm.h = persistent buffers (parameters, gradients, AdamW moments, inputs) +
   the peak of the device's step arena over the timed runs; PyTorch = max_memory_allocated on
   cuda, the process's maximum RSS on cpu (libraries included).

   Options: --device cpu|cuda (cuda in LDM_CUDA builds; the default there), --model
   cin256|small, --cases train,sample|all (default all), --size S, --batch B[,B...], --cfg,
   --reps R (default 5 on a GPU, 2 on the CPU), --warmup W (2 / 1), --threads T (CPU threads,
   both sides), --tf32, --arena-mb N (ldm.h's CUDA step arena), --no-torch, --python CMD (the
   first of $PYTHON, python3, /usr/bin/python3 that imports torch). ldm.h runs every case
   first and releases the device, then PyTorch runs each case in its own process.

   Build and run: ./build.sh bench, or cc -std=c99 -O2 -march=native -I. -Ithird_party
   bench/bench_unet.c -o build/bench_unet -lm -lpthread; run from the repository root or from
   build/ (it looks for bench/unet_torch.py and configs/cin256-v2.yaml in both places). */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, popen */
#define LDM_IMPLEMENTATION
#include "ldm_config.h"
#include "ldm_diffusion.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "bench_common.h"


enum { CASE_TRAIN = 0, CASE_SAMPLE = 1, N_CASES = 2 };
static const char *const case_names[N_CASES] = {"train", "sample"};
#define MAX_BATCHES 8
#define CFG_SCALE 3.0f      /* the guidance scale of CompVis's cin256 sampling notebook */
#define BASE_LR 1e-4        /* cin256-v2.yaml's base_learning_rate */

typedef struct {
    ldm_device dev;
    int cases;                    /* bit i: case i */
    int small, size, cfg;
    int batches[MAX_BATCHES], n_batches;
    int reps, warmup, threads, tf32, torch;
    int arena_mb;
    const char *python;
} opts;


/* ---- the models ------------------------------------------------------------------------------ */
/* The small model; bench/unet_torch.py builds the same one. */
static ldm_unet_config small_config(int *n_classes, int *embed_dim) {
    ldm_unet_config c = ldm_unet_config_default();
    c.image_size = 64; c.in_channels = 3; c.out_channels = 3; c.model_channels = 32; c.num_res_blocks = 1;
    c.attention_resolutions[0] = 2; c.attention_resolutions[1] = 4; c.n_attn = 2;
    c.channel_mult[0] = 1; c.channel_mult[1] = 2; c.channel_mult[2] = 2; c.n_levels = 3;
    c.num_heads = 1; c.use_spatial_transformer = 1; c.transformer_depth = 1; c.context_dim = 64;
    *n_classes = 1001;
    *embed_dim = 64;
    return c;
}

/* configs/cin256-v2.yaml: the UNet from unet_config, the ClassEmbedder from cond_stage_config. */
static int cin256_config(const char *path, ldm_unet_config *uc, int *n_classes, int *embed_dim) {
    ldm_config *cf = NULL;
    ldm_result r = ldm_config_create(&cf);
    if (!r) r = ldm_config_load(cf, path);
    if (!r) r = ldm_unet_config_read(cf, NULL, uc);
    const ldm_config_node *cs = r ? NULL : ldm_config_find(ldm_config_root(cf), "model.params.cond_stage_config.params");
    if (!r) r = ldm_config_get_int(cf, cs, "n_classes", 1000, n_classes);
    if (!r) r = ldm_config_get_int(cf, cs, "embed_dim", -1, embed_dim);
    if (r) fprintf(stderr, "bench_unet: %s: %s\n", path, cf ? ldm_config_error(cf) : "out of memory");
    ldm_config_destroy(cf);
    return r != LDM_OK;
}

typedef struct {
    ldm_ctx *ctx;
    ldm_device dev;
    ldm_unet *unet;
    ldm_class_embedder *ce;
    ldm_nn_params *in;            /* the inputs, persistent on the device */
    ldm_tensor *x, *t, *y, *target, *c, *uc;
    ldm_nn_optim *opt_u, *opt_c;  /* AdamW over the UNet and over the ClassEmbedder: one AdamW over both */
    int cfg;
    float loss;
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
    if (c == CASE_SAMPLE) {
        int prev = ldm_set_grad_enabled(ctx, 0);
        ldm_tensor *e;
        if (!b->cfg) {
            ldm_cond cd;
            memset(&cd, 0, sizeof cd);
            cd.context = b->c;
            ldm_denoiser d = ldm_unet_denoiser(b->unet);
            e = d.forward(ctx, d.self, b->x, b->t, &cd);
        } else { /* p_sample_ddim: x_in = cat([x]*2), t_in = cat([t]*2), c_in = cat([uc, c]) */
            ldm_tensor *xs[2] = {b->x, b->x}, *ts[2] = {b->t, b->t}, *cs[2] = {b->uc, b->c}, *eo[2] = {NULL, NULL};
            ldm_cond cd;
            memset(&cd, 0, sizeof cd);
            cd.context = ldm_concat(ctx, 2, cs, 0);
            ldm_denoiser d = ldm_unet_denoiser(b->unet);
            ldm_tensor *out = d.forward(ctx, d.self, ldm_concat(ctx, 2, xs, 0), ldm_concat(ctx, 2, ts, 0), &cd);
            int64_t half[2] = {b->x->shape[0], b->x->shape[0]};
            e = out && ldm_split(ctx, out, 2, half, 0, eo) == LDM_OK
                    ? ldm_add(ctx, eo[0], ldm_scale(ctx, ldm_sub(ctx, eo[1], eo[0]), CFG_SCALE)) : NULL;
        }
        ldm_set_grad_enabled(ctx, prev);
        return e == NULL;
    }
    /* the training step */
    ldm_set_grad_enabled(ctx, 1);
    ldm_tensor *context = ldm_class_embedder_forward(ctx, b->ce, b->y);
    ldm_tensor *eps = context ? ldm_unet_forward(ctx, b->unet, b->x, b->t, context, NULL) : NULL;
    ldm_tensor *loss = eps ? ldm_mean_all(ctx, ldm_square(ctx, ldm_sub(ctx, b->target, eps))) : NULL;
    if (!loss || ldm_to_host(ctx, loss, &b->loss) || ldm_backward(ctx, loss) || ldm_nn_optim_step(ctx, b->opt_u) ||
        ldm_nn_optim_step(ctx, b->opt_c))
        return 1;
    ldm_nn_optim_zero_grad(ctx, b->opt_u);
    ldm_nn_optim_zero_grad(ctx, b->opt_c);
    ldm_step_reset(ctx);
    return 0;
}

/* Integer-valued inputs (steps, labels) written from the host into persistent buffers. */
static void fill_ints(bench *b, ldm_tensor *t, int hi, unsigned seed) {
    float v[4 * MAX_BATCHES];
    for (int64_t i = 0; i < t->numel && i < 4 * MAX_BATCHES; i++) {
        seed = seed * 1103515245u + 12345u;
        v[i] = (float)((seed >> 8) % (unsigned)hi);
    }
    b->ctx->be[b->dev]->copy(ldm_ctx_backend_state(b->ctx, b->dev), t->data, b->dev, v, LDM_CPU, sizeof(float) * (size_t)t->numel);
}

/* Inputs and (for training) the optimizers of case c at batch B; persistent bytes in *persist. */
static int setup_case(bench *b, int c, int S, int B, double *persist) {
    ldm_ctx *ctx = b->ctx;
    const ldm_unet_config *uc = ldm_unet_cfg(b->unet);
    int ed = (int)ldm_nn_find(ldm_class_embedder_params(b->ce), "embedding.weight")->shape[1];
    if (b->in) ldm_nn_params_destroy(b->in);
    b->in = NULL;
    b->x = b->t = b->y = b->target = b->c = b->uc = NULL;
    if (ldm_nn_params_create(ctx, &b->in, b->dev)) return 1;
    b->x = ldm_nn_buffer(b->in, "x", ldm_shape4(B, uc->in_channels, S, S), ldm_nn_init_normal(0.0f, 1.0f), 1);
    b->t = ldm_nn_buffer(b->in, "t", ldm_shape1(B), ldm_nn_init_const(0.0f), 1);
    if (c == CASE_TRAIN) {
        b->target = ldm_nn_buffer(b->in, "target", ldm_shape4(B, uc->out_channels, S, S), ldm_nn_init_normal(0.0f, 1.0f), 1);
        b->y = ldm_nn_buffer(b->in, "y", ldm_shape1(B), ldm_nn_init_const(0.0f), 1);
    } else {
        b->c = ldm_nn_buffer(b->in, "c", ldm_shape3(B, 1, ed), ldm_nn_init_normal(0.0f, 1.0f), 1);
        if (b->cfg) b->uc = ldm_nn_buffer(b->in, "uc", ldm_shape3(B, 1, ed), ldm_nn_init_normal(0.0f, 1.0f), 1);
    }
    if (ldm_nn_params_alloc(ctx, b->in)) return 1;
    fill_ints(b, b->t, 1000, 1u + (unsigned)B);
    if (b->y) fill_ints(b, b->y, 1000, 7u + (unsigned)B);
    ldm_unet_set_training(b->unet, c == CASE_TRAIN);
    *persist = block_bytes(b->in, 0) + block_bytes(ldm_unet_params(b->unet), c == CASE_TRAIN) +
               block_bytes(ldm_class_embedder_params(b->ce), c == CASE_TRAIN);
    if (c != CASE_TRAIN) return 0;
    ldm_nn_optim_config oc = ldm_nn_optim_defaults(LDM_OPTIM_ADAMW, BASE_LR * B); /* main.py's scale_lr */
    if (b->opt_u) ldm_nn_optim_destroy(b->opt_u);
    if (b->opt_c) ldm_nn_optim_destroy(b->opt_c);
    b->opt_u = b->opt_c = NULL;
    if (ldm_nn_optim_create(ctx, &b->opt_u, ldm_unet_params(b->unet), &oc, 0, NULL) ||
        ldm_nn_optim_create(ctx, &b->opt_c, ldm_class_embedder_params(b->ce), &oc, 0, NULL))
        return 1;
    *persist += 8.0 * (double)(ldm_nn_optim_numel(b->opt_u) + ldm_nn_optim_numel(b->opt_c)); /* 2 moments */
    return 0;
}

typedef struct { int ok; double secs, mib, flops, params; } result;

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
    r->ok = 1;
    if (c == CASE_TRAIN) fprintf(stderr, "ldm.h train b%d: loss %g\n", B, b->loss);
    return 0;
}

/* ---- PyTorch ---------------------------------------------------------------------------------- */
static const char *torch_python(const opts *o) { return find_torch_python(o->python); }

static int torch_case(const opts *o, const char *py, const char *script, const char *yaml, int c, int S, int B, int threads,
                      result *r) {
    char cmd[1400];
    memset(r, 0, sizeof *r);
    snprintf(cmd, sizeof cmd,
             "%s %s --case %s --model %s%s%s --device %s --size %d --batch %d --reps %d --warmup %d --threads %d%s%s --count-flops",
             py, script, case_names[c], o->small ? "small" : "cin256", yaml ? " --config " : "", yaml ? yaml : "",
             o->dev == LDM_CPU ? "cpu" : "cuda", S, B, o->reps, o->warmup, threads, o->cfg ? " --cfg" : "", o->tf32 ? " --tf32" : "");
    fflush(stdout);
    FILE *p = popen(cmd, "r");
    if (!p) return 1;
    char line[512], name[32];
    while (fgets(line, sizeof line, p))
        if (sscanf(line, "RESULT %31s %lf %lf %lf %lf", name, &r->secs, &r->mib, &r->flops, &r->params) == 5 &&
            !strcmp(name, case_names[c]))
            r->ok = 1;
    int st = pclose(p);
    if (!r->ok || st != 0) {
        fprintf(stderr, "bench_unet: PyTorch case %s failed (exit status %d): %s\n", case_names[c], st, cmd);
        r->ok = 0;
        return 1;
    }
    return 0;
}

/* ---- main ------------------------------------------------------------------------------------- */
static void usage(void) {
    fprintf(stderr,
            "usage: bench_unet [--device cpu|cuda] [--model cin256|small] [--cases train,sample|all] [--size S]\n"
            "                  [--batch B[,B...]] [--cfg] [--reps R] [--warmup W] [--threads T] [--tf32] [--arena-mb N]\n"
            "                  [--no-torch] [--python CMD]\n"
            "  defaults: cin256, both cases, latent 64x64, batch 1; reps 5 (GPU) / 2 (CPU), warmup 2 (GPU) / 1 (CPU)\n");
}

static int parse_int(const char *flag, const char *v, int lo, int *out) { return parse_int_opt("bench_unet", flag, v, lo, out); }

static const char *find_file(const char *rel, char *buf, size_t n) {
    snprintf(buf, n, "%s", rel);
    if (access(buf, R_OK) == 0) return buf;
    snprintf(buf, n, "../%s", rel);
    return access(buf, R_OK) == 0 ? buf : NULL;
}

int main(int argc, char **argv) {
    opts o;
    memset(&o, 0, sizeof o);
    o.torch = 1;
    o.reps = o.warmup = -1;
    o.cases = (1 << N_CASES) - 1;
    o.size = 64;
    o.batches[0] = 1;
    o.n_batches = 1;
#ifdef LDM_CUDA
    o.dev = LDM_GPU;
#else
    o.dev = LDM_CPU;
#endif
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int bad = 0;
        if (!strcmp(a, "--device")) {
            if (!v || (strcmp(v, "cpu") && strcmp(v, "cuda") && strcmp(v, "gpu"))) { fprintf(stderr, "bench_unet: --device cpu or cuda\n"); return 2; }
            o.dev = strcmp(v, "cpu") ? LDM_GPU : LDM_CPU;
            i++;
        } else if (!strcmp(a, "--model")) {
            if (!v || (strcmp(v, "cin256") && strcmp(v, "small"))) { fprintf(stderr, "bench_unet: --model cin256 or small\n"); return 2; }
            o.small = !strcmp(v, "small");
            i++;
        } else if (!strcmp(a, "--cases")) {
            if (!v) { usage(); return 2; }
            o.cases = 0;
            char buf[128];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *t = strtok(buf, ","); t; t = strtok(NULL, ",")) {
                int k = 0;
                if (!strcmp(t, "all")) { o.cases = (1 << N_CASES) - 1; continue; }
                while (k < N_CASES && strcmp(t, case_names[k])) k++;
                if (k == N_CASES) { fprintf(stderr, "bench_unet: unknown case \"%s\" (train, sample, all)\n", t); return 2; }
                o.cases |= 1 << k;
            }
            i++;
        } else if (!strcmp(a, "--batch")) {
            if (!v) { usage(); return 2; }
            char buf[128];
            snprintf(buf, sizeof buf, "%s", v);
            o.n_batches = 0;
            for (char *t = strtok(buf, ","); t && !bad; t = strtok(NULL, ",")) {
                if (o.n_batches == MAX_BATCHES) { fprintf(stderr, "bench_unet: at most %d batch sizes\n", MAX_BATCHES); return 2; }
                bad = parse_int(a, t, 1, &o.batches[o.n_batches++]);
                if (!bad && o.batches[o.n_batches - 1] > 4 * MAX_BATCHES) { fprintf(stderr, "bench_unet: --batch at most %d\n", 4 * MAX_BATCHES); return 2; }
            }
            if (!o.n_batches) bad = 1;
            i++;
        } else if (!strcmp(a, "--size")) bad = parse_int(a, v, 8, &o.size), i++;
        else if (!strcmp(a, "--reps")) bad = parse_int(a, v, 1, &o.reps), i++;
        else if (!strcmp(a, "--warmup")) bad = parse_int(a, v, 1, &o.warmup), i++;
        else if (!strcmp(a, "--threads")) bad = parse_int(a, v, 1, &o.threads), i++;
        else if (!strcmp(a, "--arena-mb")) bad = parse_int(a, v, 64, &o.arena_mb), i++;
        else if (!strcmp(a, "--cfg")) o.cfg = 1;
        else if (!strcmp(a, "--tf32")) o.tf32 = 1;
        else if (!strcmp(a, "--no-torch")) o.torch = 0;
        else if (!strcmp(a, "--python")) { if (!v) { usage(); return 2; } o.python = v; i++; }
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(); return 0; }
        else { fprintf(stderr, "bench_unet: unknown option %s\n", a); usage(); return 2; }
        if (bad) return 2;
    }
#ifndef LDM_CUDA
    if (o.dev != LDM_CPU) {
        fprintf(stderr, "bench_unet: --device cuda needs a CUDA build of this program (hint: LDM_CUDA=1 ./build.sh bench)\n");
        return 2;
    }
#endif
    int gpu = o.dev != LDM_CPU;
    if (o.reps < 0) o.reps = gpu ? 5 : 2;
    if (o.warmup < 0) o.warmup = gpu ? 2 : 1;

    ldm_unet_config uc;
    int n_classes = 0, embed_dim = 0;
    char yaml_buf[256];
    const char *yaml = NULL;
    if (o.small) uc = small_config(&n_classes, &embed_dim);
    else {
        yaml = find_file("configs/cin256-v2.yaml", yaml_buf, sizeof yaml_buf);
        if (!yaml) { fprintf(stderr, "bench_unet: configs/cin256-v2.yaml not found (run from the repository root or build/)\n"); return 1; }
        if (cin256_config(yaml, &uc, &n_classes, &embed_dim)) return 1;
    }
    int down = 1 << (uc.n_levels - 1);
    if (o.size % down) { fprintf(stderr, "bench_unet: --size must be a multiple of %d (the UNet's %d levels)\n", down, uc.n_levels); return 2; }

    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.threads = o.threads;
    bench b;
    memset(&b, 0, sizeof b);
    b.cfg = o.cfg;
    if (ldm_ctx_create(&b.ctx, &s)) { fprintf(stderr, "bench_unet: %s\n", b.ctx ? ldm_ctx_error(b.ctx) : "out of memory"); return 1; }
    ldm_ctx *ctx = b.ctx;
    b.dev = o.dev;
    char devname[400];
    snprintf(devname, sizeof devname, "cpu (%s SGEMM kernel)", ldm_cpu_kernel_name(ctx));
#ifdef LDM_CUDA
    if (gpu) {
        if (!ldm_cuda_available()) { fprintf(stderr, "bench_unet: no CUDA device is visible (hint: check nvidia-smi, or --device cpu)\n"); return 1; }
        if (o.arena_mb > 0 || !getenv("LDM_CUDA_ARENA_MB")) { /* most of the device, as bench_vae */
            size_t fr = 0, tot = 0;
            long mb = o.arena_mb;
            if (mb <= 0 && cudaSetDevice(0) == cudaSuccess && cudaMemGetInfo(&fr, &tot) == cudaSuccess)
                mb = (long)(fr >> 20) * 9 / 10 - 3072 - 8192; /* room for cuBLAS and the persistent buffers (6 GiB training cin256) */
            char v[32];
            snprintf(v, sizeof v, "%ld", mb);
            if (mb >= 64) setenv("LDM_CUDA_ARENA_MB", v, 1);
        }
        if (ldm_cuda_init(ctx, 0)) { fprintf(stderr, "bench_unet: %s\n", ldm_ctx_error(ctx)); return 1; }
        ldm_cuda_set_tf32(ctx, o.tf32);
        snprintf(devname, sizeof devname, "cuda: %s, ldm.h step arena %.1f GiB", ldm_cuda_device_name(ctx),
                 (double)ldm_arena_limit(ctx, LDM_GPU) / 1073741824.0);
    }
#endif
    if (ldm_unet_create(ctx, &b.unet, &uc) || ldm_class_embedder_create(ctx, &b.ce, n_classes, embed_dim)) {
        fprintf(stderr, "bench_unet: %s\n", ldm_ctx_error(ctx));
        return 1;
    }
    int threads = ldm_ctx_threads(ctx);
    double np_u = (double)ldm_nn_numel(ldm_unet_params(b.unet), NULL, 0), np_c = (double)ldm_nn_numel(ldm_class_embedder_params(b.ce), NULL, 0);

    const char *py = NULL, *script = NULL;
    char script_buf[256];
    if (o.torch) {
        script = find_file("bench/unet_torch.py", script_buf, sizeof script_buf);
        py = script ? torch_python(&o) : NULL;
        if (!script) printf("bench/unet_torch.py not found (run from the repository root or build/): no PyTorch columns\n");
        else if (!py) printf("PyTorch not found (no python3 that imports torch; --python CMD): no PyTorch columns\n");
    }
    time_t tt = time(NULL);
    char date[32];
    strftime(date, sizeof date, "%Y-%m-%d", localtime(&tt));
    printf("bench_unet %s: %s UNet (%.1fM params) + ClassEmbedder (%.2fM), random weights, on %s; TF32 %s; %d CPU threads;"
           " warm-up %d, best of %d\n",
           date, o.small ? "small" : "cin256-v2", np_u / 1e6, np_c / 1e6, devname, o.tf32 ? "on" : "off", threads, o.warmup, o.reps);

    result rl[N_CASES][MAX_BATCHES], rt[N_CASES][MAX_BATCHES];
    int fail = 0;
    memset(rl, 0, sizeof rl);
    memset(rt, 0, sizeof rt);
    for (int c = 0; c < N_CASES; c++)
        for (int k = 0; k < o.n_batches && (o.cases & (1 << c)); k++)
            if (time_case(&b, &o, c, o.size, o.batches[k], &rl[c][k])) {
                fprintf(stderr, "bench_unet: ldm.h case %s b%d: %s\n", case_names[c], o.batches[k], ldm_ctx_error(ctx));
                ldm_ctx_clear_error(ctx);
                fail = 1;
            }
    /* every ldm.h buffer goes before PyTorch starts, so that each side has the whole device */
    if (b.opt_u) ldm_nn_optim_destroy(b.opt_u);
    if (b.opt_c) ldm_nn_optim_destroy(b.opt_c);
    if (b.in) ldm_nn_params_destroy(b.in);
    ldm_class_embedder_destroy(b.ce);
    ldm_unet_destroy(b.unet);
    ldm_ctx_destroy(ctx);
    for (int c = 0; c < N_CASES; c++)
        for (int k = 0; k < o.n_batches && py && (o.cases & (1 << c)); k++)
            if (torch_case(&o, py, script, yaml, c, o.size, o.batches[k], threads, &rt[c][k])) fail = 1;

    printf("%-24s %9s %9s %8s %9s %8s %8s %10s %10s\n", "case", "ldm.h s", "torch s", "speedup", "GFLOP", "ldm TF/s",
           "torch TF/s", "ldm.h MiB", "torch MiB");
    for (int c = 0; c < N_CASES; c++)
        for (int k = 0; k < o.n_batches; k++) {
            const result *l = &rl[c][k], *t = &rt[c][k];
            if (!(o.cases & (1 << c)) || !l->ok) continue;
            char label[64];
            snprintf(label, sizeof label, "%s %dx%d b%d", c == CASE_TRAIN ? "train step" : o.cfg ? "sample cfg" : "sample", o.size,
                     o.size, o.batches[k]);
            double f = flops_of(l, t);
            printf("%-24s %9.4f", label, l->secs);
            if (t->ok) printf(" %9.4f %8.2f", t->secs, t->secs / l->secs);
            else printf(" %9s %8s", "-", "-");
            printf(" %9.1f %8.3f", f / 1e9, f / l->secs / 1e12);
            if (t->ok) printf(" %8.3f", f / t->secs / 1e12);
            else printf(" %8s", "-");
            printf(" %10.0f", l->mib);
            if (t->ok) printf(" %10.0f", t->mib);
            else printf(" %10s", "-");
            printf("\n");
        }
    printf("speedup = torch s / ldm.h s (> 1: ldm.h is faster). GFLOP: convolutions and matrix products, 2 per MAC, backward\n"
           "as computed (PyTorch's count when it ran, else ldm.h's); TF/s = that one count / each time. MiB: ldm.h persistent\n"
           "buffers + step-arena peak; torch %s.%s\n",
           gpu ? "max_memory_allocated" : "max RSS of its process (libraries included)",
           o.cfg ? " sample cfg: one UNet call on batch 2B (unconditional and conditional halves)." : "");
    for (int c = 0; c < N_CASES; c++)
        for (int k = 0; k < o.n_batches; k++) {
            const result *l = &rl[c][k], *t = &rt[c][k];
            if (!l->ok || !t->ok || t->flops <= 0) continue;
            if (fabs(t->params - (np_u + np_c)) > 0.5)
                printf("%s b%d: PyTorch's model has %.0f parameters, ldm.h's %.0f: NOT the same model\n", case_names[c], o.batches[k],
                       t->params, np_u + np_c);
            double d = l->flops / t->flops - 1.0;
            if (fabs(d) > 0.001)
                printf("%s b%d: ldm.h executes %.2f GFLOP of convolutions and products, %+.2f%% against PyTorch's %.2f%s\n",
                       case_names[c], o.batches[k], l->flops / 1e9, 100.0 * d, t->flops / 1e9,
                       d < 0 ? " (ldm.h's count misses the products of kernels outside the wrapped table entries)"
                             : " (its attention backward recomputes the scores, 2*B*heads*Sq*Sk*D per call)");
            else printf("%s b%d: ldm.h's and PyTorch's FLOP counts agree\n", case_names[c], o.batches[k]);
        }
    return fail;
}
