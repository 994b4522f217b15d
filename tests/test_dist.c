/* test_dist.c - data-parallel training (ldm_dist.h, issue: MPI on CPUs, NCCL on GPUs).
   Always (no MPI needed):
   - ldm_ctx_set_shard: rank r of W draws rows r, r+W, ... of the one-process draw (ldm_randn,
     ldm_rand, ldm_rng_u64_rows, dropout) and every rank's stream ends where the whole draw ends;
   - the grad-ready hook: every leaf reported once, with its final gradient, last layer first;
   - the loader's DistributedSampler: PyTorch's order (padding by wrap-around, strided ranks);
   - a reducer in a world of 1 changes nothing.
   Under Open MPI (build.sh builds this test and ./ldm with LDM_MPI when mpicc exists; SKIP
   otherwise), with `mpirun -np 2 --oversubscribe`:
   - this program's worker mode: bucketed all-reduce of real gradients equals the mean of
     both ranks' gradients (computed on each rank for reference), buckets start during the
     backward pass, broadcast and f64 reductions, and a rank that hangs makes rank 0 name it;
   - the driver: 2 processes with batch 2 against 1 process with batch 4 (AutoencoderKL
     with its LPIPS+PatchGAN loss before disc_start, and a pixel-space DDPM with EMA), resume
     under 2 ranks bitwise equal to an uninterrupted run, a killed rank and a hung rank end the
     job with the last checkpoint intact, SIGTERM to the ranks checkpoints once.
   Tolerance of "the same": losses in metrics.csv within 2e-6 relative + 1e-7 absolute (float
   summation order across ranks; the absolute part for values near 0 such as an SSIM); weights within 1e-5 relative, except parameters whose gradient is zero in
   exact arithmetic (biases in front of a GroupNorm, attention key biases, zero-initialised
   output layers): there Adam turns rounding noise into steps of up to lr, so they are held to
   2 * lr per step. Runs from build/. */
#if !defined(_XOPEN_SOURCE)
#define _XOPEN_SOURCE 700
#endif
#define LDM_IMPLEMENTATION
#include "ldm_test.h"
#include "ldm_data.h"
#include "ldm_dist.h"
#include <math.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "driver_util.h"

static void unused_cfg(void) { (void)CFG; }

/* ---- always: sharded RNG ------------------------------------------------------------------ */
static ldm_ctx *new_ctx(uint64_t seed) {
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.seed = seed;
    ldm_ctx *ctx = NULL;
    if (ldm_ctx_create(&ctx, &s)) return NULL;
    ldm_ctx_set_threads(ctx, 1);
    return ctx;
}

static void test_shard_rng(void) {
    const int W = 3, R = 2, C = 5; /* rows per rank, row length (not a multiple of 4) */
    ldm_ctx *one = new_ctx(7);
    float full[3 * 2 * 5], fullu[3 * 2 * 5];
    uint64_t fullt[3 * 2];
    ldm_tensor *a = ldm_randn(one, ldm_shape2(W * R, C));
    ldm_to_host(one, a, full);
    ldm_tensor *u = ldm_rand(one, ldm_shape2(W * R, C));
    ldm_to_host(one, u, fullu);
    ldm_rng_u64_rows(one, ldm_ctx_rng(one), fullt, W * R);
    uint64_t end = ldm_ctx_rng(one)->offset;
    int ok = 1, okend = 1;
    for (int r = 0; r < W; r++) {
        ldm_ctx *c = new_ctx(7);
        ldm_ctx_set_shard(c, r, W);
        float part[2 * 5], partu[2 * 5];
        uint64_t pt[2];
        ldm_to_host(c, ldm_randn(c, ldm_shape2(R, C)), part);
        ldm_to_host(c, ldm_rand(c, ldm_shape2(R, C)), partu);
        ldm_rng_u64_rows(c, ldm_ctx_rng(c), pt, R);
        for (int i = 0; i < R; i++) {
            ok &= !memcmp(part + i * C, full + (i * W + r) * C, sizeof(float) * C);
            ok &= !memcmp(partu + i * C, fullu + (i * W + r) * C, sizeof(float) * C);
            ok &= pt[i] == fullt[i * W + r];
        }
        okend &= ldm_ctx_rng(c)->offset == end;
        ldm_ctx_destroy(c);
    }
    LT_CHECK(ok, "shard: each rank's randn/rand/u64 rows are its rows of the one-process draw (bitwise)");
    LT_CHECK(okend, "shard: every rank's RNG ends where the one-process draw ends");
    /* dropout: the mask rows follow the rows of x */
    ldm_ctx_destroy(one);
    one = new_ctx(9);
    float xs[6 * 8], d1[6 * 8];
    for (int i = 0; i < 48; i++) xs[i] = 1.0f + (float)i;
    ldm_to_host(one, ldm_dropout(one, ldm_from_host(one, ldm_shape2(6, 8), xs), 0.5f, 1), d1);
    int okd = 1;
    for (int r = 0; r < 2; r++) {
        ldm_ctx *c = new_ctx(9);
        ldm_ctx_set_shard(c, r, 2);
        float xr[3 * 8], dr[3 * 8];
        for (int i = 0; i < 3; i++) memcpy(xr + i * 8, xs + (i * 2 + r) * 8, sizeof(float) * 8);
        ldm_to_host(c, ldm_dropout(c, ldm_from_host(c, ldm_shape2(3, 8), xr), 0.5f, 1), dr);
        for (int i = 0; i < 3; i++) okd &= !memcmp(dr + i * 8, d1 + (i * 2 + r) * 8, sizeof(float) * 8);
        ldm_ctx_destroy(c);
    }
    LT_CHECK(okd, "shard: dropout masks follow the rank's rows");
    ldm_ctx_destroy(one);
}

/* ---- always: grad-ready hook ------------------------------------------------------------- */
typedef struct hook_rec { int n; ldm_tensor *leaf[16]; float *snap[16]; } hook_rec;
static void on_ready(void *user, ldm_ctx *ctx, ldm_tensor *leaf) {
    hook_rec *h = (hook_rec *)user;
    if (h->n >= 16) return;
    h->leaf[h->n] = leaf;
    h->snap[h->n] = (float *)malloc(sizeof(float) * (size_t)leaf->numel);
    ldm_tensor g = ldm_tensor_wrap(leaf->grad, ldm_shape_of(leaf), leaf->device);
    ldm_to_host(ctx, &g, h->snap[h->n]);
    h->n++;
}

static void test_hook(void) {
    ldm_ctx *ctx = new_ctx(3);
    ldm_nn_params *P;
    ldm_nn_linear l1, l2, l3;
    ldm_nn_params_create(ctx, &P, LDM_CPU);
    ldm_nn_linear_init(P, &l1, "l1", 6, 8, 1);
    ldm_nn_linear_init(P, &l2, "l2", 8, 8, 1);
    ldm_nn_linear_init(P, &l3, "l3", 8, 4, 1);
    if (ldm_nn_params_alloc(ctx, P)) { lt_report(0, "hook: params", "%s", ldm_ctx_error(ctx)); return; }
    hook_rec h;
    memset(&h, 0, sizeof h);
    ldm_set_grad_ready_hook(ctx, on_ready, &h);
    ldm_tensor *x = ldm_randn(ctx, ldm_shape2(5, 6));
    /* l2 is used twice: its gradient is final only after its earlier use */
    ldm_tensor *y = ldm_nn_linear_forward(ctx, &l2, ldm_silu(ctx, ldm_nn_linear_forward(ctx, &l1, x)));
    y = ldm_nn_linear_forward(ctx, &l2, ldm_tanh(ctx, y));
    ldm_tensor *loss = ldm_mean_all(ctx, ldm_square(ctx, ldm_nn_linear_forward(ctx, &l3, y)));
    ldm_backward(ctx, loss);
    ldm_set_grad_ready_hook(ctx, NULL, NULL);
    int once = h.n == 6, same = 1, order = 0;
    for (int i = 0; i < h.n; i++) {
        for (int j = 0; j < i; j++) once &= h.leaf[i] != h.leaf[j];
        float *g = (float *)malloc(sizeof(float) * (size_t)h.leaf[i]->numel);
        ldm_tensor gt = ldm_tensor_wrap(h.leaf[i]->grad, ldm_shape_of(h.leaf[i]), LDM_CPU);
        ldm_to_host(ctx, &gt, g);
        same &= !memcmp(g, h.snap[i], sizeof(float) * (size_t)h.leaf[i]->numel);
        free(g);
    }
    int i3 = -1, i1 = -1;
    for (int i = 0; i < h.n; i++) {
        if (h.leaf[i] == l3.weight) i3 = i;
        if (h.leaf[i] == l1.weight) i1 = i;
    }
    order = i3 >= 0 && i1 >= 0 && i3 < i1;
    lt_report(once, "hook: every parameter reported exactly once", "%d reports", h.n);
    LT_CHECK(same, "hook: a reported gradient is already final (bitwise the gradient after the pass)");
    LT_CHECK(order, "hook: the last layer is reported before the first (reductions can start early)");
    for (int i = 0; i < h.n; i++) free(h.snap[i]);
    ldm_step_reset(ctx);
    ldm_nn_params_destroy(P);
    ldm_ctx_destroy(ctx);
}

/* ---- always: DistributedSampler ----------------------------------------------------------- */
static int64_t ds_len(void *self) { (void)self; return 5; }
static ldm_result ds_load(void *self, int64_t i, ldm_data_image *out, char *err, size_t errn) {
    (void)self; (void)err; (void)errn;
    out->c = out->h = out->w = 1;
    out->px = (unsigned char *)malloc(1);
    if (!out->px) return LDM_ERR_NOMEM;
    out->px[0] = (unsigned char)i;
    out->label = -1;
    out->index = i;
    return LDM_OK;
}
static ldm_result ds_augment(void *self, int64_t i, const ldm_data_image *base, ldm_rng *rng, ldm_data_item *out, char *err, size_t errn) {
    (void)self; (void)i; (void)rng; (void)err; (void)errn;
    ldm_data_field *f = ldm_data_item_add(out, "image", 1, 1, 1);
    if (!f) return LDM_ERR_NOMEM;
    f->data[0] = (float)base->px[0];
    return LDM_OK;
}

static int loader_items(ldm_ctx *ctx, ldm_dataset *ds, int W, int r, int shuffle, int bs, int64_t epoch, int *out, int cap) {
    ldm_data_loader_opts o;
    memset(&o, 0, sizeof o);
    o.batch_size = bs;
    o.shuffle = shuffle;
    o.seed = 11;
    o.num_replicas = W;
    o.rank = r;
    ldm_data_loader *ld;
    if (ldm_data_loader_create(ctx, &ld, ds, &o)) return -1;
    ldm_data_state st = {epoch, 0};
    ldm_data_loader_seek(ctx, ld, st);
    int n = 0;
    const ldm_data_batch *b;
    while (ldm_data_loader_next(ctx, ld, &b) == LDM_OK) {
        ldm_tensor t = ldm_data_batch_tensor(b, "image");
        for (int k = 0; k < b->size && n < cap; k++) out[n++] = (int)t.data[k];
    }
    ldm_data_loader_destroy(ld);
    return n;
}

static void test_sampler(void) {
    ldm_ctx *ctx = new_ctx(1);
    ldm_dataset_vtable vt;
    memset(&vt, 0, sizeof vt);
    vt.name = "five";
    vt.length = ds_len;
    vt.load = ds_load;
    vt.augment = ds_augment;
    ldm_dataset *ds;
    if (ldm_dataset_create(ctx, &ds, &vt, NULL)) { lt_report(0, "sampler: dataset", "%s", ldm_ctx_error(ctx)); return; }
    /* torch.utils.data.DistributedSampler(range(5), num_replicas=2, rank=r, shuffle=False):
       list(...) is [0, 2, 4] for rank 0 and [1, 3, 0] for rank 1 */
    int a[8], b[8];
    int na = loader_items(ctx, ds, 2, 0, 0, 2, 0, a, 8), nb = loader_items(ctx, ds, 2, 1, 0, 2, 0, b, 8);
    lt_report(na == 3 && nb == 3 && a[0] == 0 && a[1] == 2 && a[2] == 4 && b[0] == 1 && b[1] == 3 && b[2] == 0,
              "sampler: PyTorch's DistributedSampler order (padded by wrap-around, strided)", "rank 0 %d items, rank 1 %d", na, nb);
    /* shuffled: both ranks together cover the one-process epoch order, rank r at r, r+2, ... */
    int all[8], ok = 1;
    for (int e = 0; e < 3; e++) {
        int n1 = loader_items(ctx, ds, 1, 0, 1, 5, e, all, 8);
        na = loader_items(ctx, ds, 2, 0, 1, 2, e, a, 8);
        nb = loader_items(ctx, ds, 2, 1, 1, 2, e, b, 8);
        ok &= n1 == 5 && na == 3 && nb == 3;
        for (int k = 0; k < 3 && ok; k++) ok &= a[k] == all[(2 * k) % 5] && b[k] == all[(2 * k + 1) % 5];
    }
    LT_CHECK(ok, "sampler: shuffled, the ranks take the one-process epoch order's strided positions (3 epochs)");
    ldm_data_loader_opts o;
    memset(&o, 0, sizeof o);
    o.batch_size = 1;
    o.num_replicas = 2;
    o.rank = 2;
    ldm_data_loader *ld = NULL;
    ldm_result r = ldm_data_loader_create(ctx, &ld, ds, &o);
    lt_report(r != LDM_OK && strstr(ldm_ctx_error(ctx), "rank 2 of 2"), "sampler: a rank outside the world is an error", "%s", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    ldm_dataset_destroy(ds);
    ldm_ctx_destroy(ctx);
}

/* ---- MPI worker: real collectives ----------------------------------------------------------- */
#ifdef LDM_MPI
static int worker(void) {
    ldm_ctx *ctx = new_ctx(5);
    ldm_dist *d;
    if (ldm_dist_create(ctx, &d, NULL, NULL, 20)) { printf("FAIL worker: %s\n", ldm_ctx_error(ctx)); return 1; }
    int rank = ldm_dist_rank(d), W = ldm_dist_world(d);
    lt_tag = rank ? "[rank 1] " : "[rank 0] ";
    lt_report(W == 2, "worker: a world of 2", "world %d", W);
    /* a small MLP; each rank its own input; gradients after the reducer = the mean of both */
    ldm_nn_params *P;
    ldm_nn_linear l[4];
    ldm_nn_params_create(ctx, &P, LDM_CPU);
    char nm[8];
    for (int i = 0; i < 4; i++) { snprintf(nm, sizeof nm, "l%d", i); ldm_nn_linear_init(P, &l[i], nm, 64, 64, 1); }
    ldm_nn_params_alloc(ctx, P);
    int64_t np;
    float *pb = ldm_nn_block(P, LDM_NN_BLOCK_PARAMS, &np);
    if (rank == 1) for (int64_t i = 0; i < np; i++) pb[i] = 0.5f; /* rank 0's weights must win */
    ldm_dist_broadcast(ctx, d, pb, sizeof(float) * (size_t)np, LDM_CPU, "weights");
    ldm_nn_optim *opt;
    ldm_nn_optim_config oc = ldm_nn_optim_defaults(LDM_OPTIM_SGD, 0.1);
    ldm_nn_optim_create(ctx, &opt, P, &oc, 0, NULL);
    int64_t ng;
    float *gb = ldm_nn_block(P, LDM_NN_BLOCK_GRADS, &ng);
    float *want = (float *)calloc((size_t)ng, sizeof(float)), *got = (float *)malloc(sizeof(float) * (size_t)ng);
    int okw = 1;
    for (int64_t i = 0; i < np; i++) okw &= pb[i] != 0.5f;
    lt_report(okw, "worker: broadcast gives every rank rank 0's weights", "rank %d", rank);
    /* the reference: both ranks' gradients, computed here */
    for (int r = 0; r < 2; r++) {
        ldm_nn_optim_zero_grad(ctx, opt);
        float xin[3 * 64];
        for (int i = 0; i < 3 * 64; i++) xin[i] = sinf(0.37f * (float)i + 1.3f * (float)r);
        ldm_tensor *h = ldm_from_host(ctx, ldm_shape2(3, 64), xin);
        for (int i = 0; i < 4; i++) h = ldm_tanh(ctx, ldm_nn_linear_forward(ctx, &l[i], h));
        ldm_backward(ctx, ldm_mean_all(ctx, ldm_square(ctx, h)));
        for (int64_t i = 0; i < ng; i++) want[i] += 0.5f * gb[i];
        if (r == rank) memcpy(got, gb, sizeof(float) * (size_t)ng);
        ldm_step_reset(ctx);
    }
    ldm_dist_reducer *red;
    ldm_dist_reducer_create(ctx, d, &red, 0.02); /* 20 KB buckets: several per pass */
    ldm_dist_reducer_add(red, opt);
    ldm_nn_optim_zero_grad(ctx, opt);
    float xin[3 * 64];
    for (int i = 0; i < 3 * 64; i++) xin[i] = sinf(0.37f * (float)i + 1.3f * (float)rank);
    ldm_tensor *h = ldm_from_host(ctx, ldm_shape2(3, 64), xin);
    for (int i = 0; i < 4; i++) h = ldm_tanh(ctx, ldm_nn_linear_forward(ctx, &l[i], h));
    ldm_dist_reducer_begin(red);
    ldm_backward(ctx, ldm_mean_all(ctx, ldm_square(ctx, h)));
    ldm_result rr = ldm_dist_reducer_finish(red, "test gradients");
    double worst = 0;
    for (int64_t i = 0; i < ng; i++) {
        double e = fabs((double)gb[i] - want[i]) / (fabs(want[i]) + 1e-6);
        if (e > worst) worst = e;
    }
    lt_report(!rr && worst < 1e-5, "worker: reduced gradients are the mean of both ranks' (1e-5 relative)", "worst %.3g %s", worst, ldm_ctx_error(ctx));
    ldm_dist_stats st = ldm_dist_reducer_stats(red);
    lt_report(st.buckets >= 4 && st.buckets_early >= 3, "worker: buckets start while the backward pass runs",
              "%lld buckets, %lld early", (long long)st.buckets, (long long)st.buckets_early);
    ldm_step_reset(ctx);
    double v[2] = {(double)rank + 1, (double)rank * 10};
    ldm_dist_allreduce_f64(ctx, d, v, 2, 0, "sum");
    double m[1] = {(double)rank * 3};
    ldm_dist_allreduce_f64(ctx, d, m, 1, 1, "max");
    lt_report(v[0] == 3 && v[1] == 10 && m[0] == 3, "worker: f64 sum and max", "%g %g %g", v[0], v[1], m[0]);
    /* a hung rank: rank 1 sleeps past the deadline; rank 0's error names it */
    ldm_dist_barrier(ctx, d, "before the hang");
    if (rank == 1) {
        sleep(5);
        lt_report(1, "worker: rank 1 slept through the deadline", "");
    } else {
        float one = 1;
        ldm_dist_set_timeout(d, 2);
        ldm_result hr = ldm_dist_allreduce(ctx, d, &one, 1, LDM_CPU, "the hang check");
        ldm_dist_set_timeout(d, 20);
        lt_report(hr != LDM_OK && strstr(ldm_ctx_error(ctx), "rank 1") && strstr(ldm_ctx_error(ctx), "the hang check"),
                  "worker: a collective that a hung rank never joins fails on rank 0, naming rank 1", "%s", ldm_ctx_error(ctx));
        printf("     (%s)\n", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
    }
    if (rank == 1) { float one = 1; ldm_dist_allreduce(ctx, d, &one, 1, LDM_CPU, "the hang check"); } /* completes the pending one */
    ldm_dist_barrier(ctx, d, "the end");
    free(want);
    free(got);
    ldm_dist_reducer_destroy(red);
    ldm_nn_optim_destroy(opt);
    ldm_nn_params_destroy(P);
    ldm_dist_destroy(d);
    ldm_ctx_destroy(ctx);
    return lt_finish(rank ? "test_dist worker 1" : "test_dist worker 0");
}
#endif

/* ---- the driver under mpirun ----------------------------------------------------------------- */
static char MPIRUN[256];

static const char *ae_cfg =
    "[model]\nbase_learning_rate = 1.0e-4\ntarget = ldm.models.autoencoder.AutoencoderKL\n"
    "[model.params]\nembed_dim = 2\n"
    "[model.params.ddconfig]\ndouble_z = true\nz_channels = 2\nresolution = 16\nin_channels = 3\nout_ch = 3\nch = 32\n"
    "ch_mult = 1, 2\nnum_res_blocks = 1\nattn_resolutions = []\ndropout = 0.0\n"
    "[model.params.lossconfig]\ntarget = LPIPSWithDiscriminator\n"
    "[model.params.lossconfig.params]\ndisc_start = 100\nkl_weight = 1.0e-6\ndisc_weight = 0.5\nperceptual_weight = 0.0\n"
    "disc_num_layers = 2\n"
    "[data]\ntarget = main.DataModuleFromConfig\n"
    "[data.params]\nbatch_size = 4\nnum_workers = 1\n"
    "[data.params.train]\ntarget = ldm.data.folder.ImageFolder\n"
    "[data.params.train.params]\nroot = \"%s/img\"\nsize = 16\nrandom_crop = true\nflip_p = 0.5\n"
    "[data.params.validation]\ntarget = ldm.data.folder.ImageFolder\n"
    "[data.params.validation.params]\nroot = \"%s/img\"\nsize = 16\nmax_items = 4\n"
    "[lightning.trainer]\nmax_steps = 6\nlog_every_n_steps = 1\nnum_sanity_val_steps = 1\n"
    "[lightning.callbacks.image_logger]\ntarget = main.ImageLogger\n"
    "[lightning.callbacks.image_logger.params]\nbatch_frequency = 2\nmax_images = 2\n";

static const char *ddpm_cfg =
    "model:\n  base_learning_rate: 1.0e-4\n  target: ldm.models.diffusion.ddpm.DDPM\n"
    "  params:\n    timesteps: 40\n    log_every_t: 10\n    image_size: 16\n    channels: 3\n    first_stage_key: image\n"
    "    unet_config:\n      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
    "      params: {image_size: 16, in_channels: 3, out_channels: 3, model_channels: 32, attention_resolutions: [2], "
    "num_res_blocks: 1, channel_mult: [1, 2], num_head_channels: 32, dropout: 0.1}\n"
    "data:\n  target: main.DataModuleFromConfig\n  params:\n    batch_size: 4\n    num_workers: 1\n"
    "    train:\n      target: ldm.data.folder.ImageFolder\n      params: {root: \"%s/img\", size: 16, random_crop: true, flip_p: 0.5}\n"
    "    validation:\n      target: ldm.data.folder.ImageFolder\n      params: {root: \"%s/img\", size: 16, max_items: 4}\n"
    "lightning:\n  callbacks:\n    image_logger: {target: main.ImageLogger, params: {batch_frequency: 2, max_images: 2}}\n"
    "  trainer: {max_steps: 6, log_every_n_steps: 1, num_sanity_val_steps: 0}\n";

static int mpi_ldm(const char *tag, int np, const char *env, const char *args) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s -np %d -x LDM_THREADS=1 %s ./ldm %s", MPIRUN, np, env ? env : "", args);
    return ldm_bin("", tag, NULL, cmd);
}

/* Columns of two metrics.csv files, by name, row by row; only `cols` are compared. */
static void compare_csv(const char *what, const char *a_path, const char *b_path, const char *const *cols, int ncols) {
    char *a = slurp(a_path, NULL), *b = slurp(b_path, NULL);
    if (!a || !b) { lt_report(0, what, "metrics.csv missing"); free(a); free(b); return; }
    char *sa = NULL, *sb = NULL, *la = strtok_r(a, "\n", &sa), *lb = strtok_r(b, "\n", &sb);
    int idx[32], rows = 0, bad = 0, vals = 0;
    double worst = 0;
    char hdr[4096];
    snprintf(hdr, sizeof hdr, "%s", la ? la : "");
    for (int c = 0; c < ncols; c++) { /* column index of each name */
        idx[c] = -1;
        int k = 0;
        for (char *p = hdr, *e; p; p = e ? e + 1 : NULL, k++) {
            e = strchr(p, ',');
            size_t n = e ? (size_t)(e - p) : strlen(p);
            if (n == strlen(cols[c]) && !strncmp(p, cols[c], n)) idx[c] = k;
        }
    }
    int same_hdr = la && lb && !strcmp(la, lb);
    for (la = strtok_r(NULL, "\n", &sa), lb = strtok_r(NULL, "\n", &sb); la && lb;
         la = strtok_r(NULL, "\n", &sa), lb = strtok_r(NULL, "\n", &sb), rows++) {
        double va[128], vb[128];
        int ha[128], hb[128], n = 0;
        for (const char *p = la, *q = lb; p && q && n < 128; n++) {
            ha[n] = *p && *p != ','; hb[n] = *q && *q != ',';
            va[n] = atof(p); vb[n] = atof(q);
            p = strchr(p, ','); q = strchr(q, ',');
            if (p) p++;
            if (q) q++;
        }
        for (int c = 0; c < ncols; c++) {
            int k = idx[c];
            if (k < 0 || k >= n) continue;
            if (ha[k] != hb[k]) { bad++; continue; }
            if (!ha[k]) continue;
            double e = fabs(va[k] - vb[k]) / (fabs(va[k]) + 1e-6);
            vals++;
            if (e > worst) worst = e;
            if (fabs(va[k] - vb[k]) > 2e-6 * fabs(va[k]) + 1e-7) { bad++; printf("  row %d %s: %.9g vs %.9g\n", rows + 1, cols[c], va[k], vb[k]); }
        }
    }
    lt_report(same_hdr && rows >= 6 && vals >= 12 && !bad && !la && !lb, what, "%d rows, %d values, %d off", rows, vals, bad);
    printf("     (%d rows, %d values compared, worst relative difference %.2g)\n", rows, vals, worst);
    free(a);
    free(b);
}

/* Two state dicts: the share of tensors within 1e-5 relative, and every tensor within 2*lr*steps. */
static void compare_weights(const char *what, const char *pa, const char *pb, double loose, int bitwise) {
    ldm_ctx *ctx = new_ctx(1);
    ldm_weights *a = NULL, *b = NULL;
    if (ldm_weights_open(ctx, &a, pa) || ldm_weights_open(ctx, &b, pb)) {
        lt_report(0, what, "%s", ldm_ctx_error(ctx));
        if (a) ldm_weights_close(a);
        ldm_ctx_destroy(ctx);
        return;
    }
    int n = 0, tight = 0, outside = 0, same = ldm_weights_count(a) == ldm_weights_count(b), exact = 1;
    double worst_loose = 0;
    const char *worst_name = "";
    for (int i = 0; i < ldm_weights_count(a); i++) {
        const ldm_weight_info *ia = ldm_weights_info(a, i);
        if (strstr(ia->name, "running_") || strstr(ia->name, "num_batches")) continue; /* BatchNorm: per rank, as DDP */
        int j = ldm_weights_find(b, ia->name);
        if (j < 0) { same = 0; continue; }
        float *x = lt_load(ctx, a, ia->name, NULL), *y = lt_load(ctx, b, ia->name, NULL);
        if (!x || !y) { free(x); free(y); same = 0; continue; }
        double mx = 0, md = 0;
        for (int64_t k = 0; k < ia->numel; k++) {
            if (fabs(x[k]) > mx) mx = fabs(x[k]);
            if (fabs((double)x[k] - y[k]) > md) md = fabs((double)x[k] - y[k]);
        }
        exact &= !memcmp(x, y, sizeof(float) * (size_t)ia->numel);
        n++;
        tight += md <= 1e-5 * (mx + 1e-6);
        if (md > loose) outside++;
        if (md > worst_loose) { worst_loose = md; worst_name = ia->name; }
        free(x);
        free(y);
    }
    if (bitwise) lt_report(same && n > 0 && exact, what, "not bitwise equal (worst %.3g in %s)", worst_loose, worst_name);
    else {
        lt_report(same && n > 0 && !outside && tight >= 0.85 * n, what, "%d of %d tensors within 1e-5, %d beyond %.3g (worst %.3g in %s)",
                  tight, n, outside, loose, worst_loose, worst_name);
        printf("     (%d of %d tensors within 1e-5 relative; largest difference %.3g, in %s)\n", tight, n, worst_loose, worst_name);
    }
    ldm_weights_close(a);
    ldm_weights_close(b);
    ldm_ctx_destroy(ctx);
}

static void test_driver_mpi(void) {
    char p[1400], args[3000], d1[800], d2[800];
    snprintf(p, sizeof p, "%s/img", T);
    mkdir(p, 0777);
    make_images(p, 8, 20);
    static char text[8192];
    char ae[700], dd[700];
    snprintf(text, sizeof text, ae_cfg, T, T);
    snprintf(ae, sizeof ae, "%s/ae.ini", T);
    writef(ae, text);
    snprintf(text, sizeof text, ddpm_cfg, T, T);
    snprintf(dd, sizeof dd, "%s/ddpm.yaml", T);
    writef(dd, text);

    static const char *const ae_cols[] = {"aeloss_step", "train/total_loss", "train/kl_loss", "train/nll_loss", "train/rec_loss",
                                          "aeloss_epoch", "val/rec_loss", "val/kl_loss", "val/nll_loss", "val/psnr", "val/ssim"};
    static const char *const dd_cols[] = {"loss_step", "train/loss_simple", "train/loss_vlb", "train/loss", "loss_epoch",
                                          "val/loss_simple", "val/loss", "val/loss_simple_ema", "val/loss_ema"};
    const char *cfgs[2] = {ae, dd}, *names[2] = {"AutoencoderKL", "DDPM"};
    for (int m = 0; m < 2; m++) {
        char t1[8], t2[8], w[200];
        snprintf(t1, sizeof t1, "M%d1", m);
        snprintf(t2, sizeof t2, "M%d2", m);
        snprintf(args, sizeof args, "--base %s -t --name %s -l %s/logs --no-test --scale_lr false", cfgs[m], t1, T);
        int rc1 = ldm(t1, "LDM_THREADS=1", args);
        snprintf(args, sizeof args, "--base %s -t --name %s -l %s/logs --no-test --scale_lr false data.params.batch_size=2", cfgs[m], t2, T);
        int rc2 = mpi_ldm(t2, 2, NULL, args);
        snprintf(w, sizeof w, "%s: 1 process (batch 4) and 2 processes (batch 2) both train", names[m]);
        lt_report(rc1 == 0 && rc2 == 0, w, "exit %d and %d", rc1, rc2);
        if (rc1 || rc2) { show(t1); show(t2); continue; }
        if (!logdir_of(t1, d1, sizeof d1) || !logdir_of(t2, d2, sizeof d2)) { lt_report(0, w, "no logdir"); continue; }
        if (m == 0) LT_CHECK(out_has(t2, "out", "Data parallel: 2 processes (mpi)"), "driver: the run says it is data parallel");
        char a[1200], b[1200];
        snprintf(a, sizeof a, "%s/metrics.csv", d1);
        snprintf(b, sizeof b, "%s/metrics.csv", d2);
        snprintf(w, sizeof w, "%s: every logged loss of 6 steps (train, epoch, validation) equals the one-process run's", names[m]);
        compare_csv(w, a, b, m == 0 ? ae_cols : dd_cols, m == 0 ? 11 : 9);
        snprintf(a, sizeof a, "%s/checkpoints/last/model.safetensors", d1);
        snprintf(b, sizeof b, "%s/checkpoints/last/model.safetensors", d2);
        snprintf(w, sizeof w, "%s: the weights after 6 steps equal the one-process run's", names[m]);
        compare_weights(w, a, b, 2 * 1e-4 * 6, 0);
        if (m == 1) { /* rank 0 alone wrote; images and checkpoints are there */
            snprintf(a, sizeof a, "%s/images/train", d2);
            DIR *dir = opendir(a);
            int imgs = 0;
            struct dirent *e;
            while (dir && (e = readdir(dir)) != NULL) imgs += strstr(e->d_name, ".png") != NULL;
            if (dir) closedir(dir);
            lt_report(imgs > 0, "driver: rank 0 logs images", "%d", imgs);
        }
    }

    /* GPUs without NCCL: gradients staged through host memory, on the CUDA emulator (build/emu/ldm) */
    if (exists("./emu/ldm")) {
        snprintf(args, sizeof args, "--base %s -t --name G1 -l %s/logs --no-test --scale_lr false --gpus 0, lightning.trainer.max_steps=4", ae, T);
        int g1 = ldm_bin("./emu/ldm", "G1", "LDM_THREADS=1", args);
        snprintf(args, sizeof args, "--base %s -t --name G2 -l %s/logs --no-test --scale_lr false --gpus 0,0 lightning.trainer.max_steps=4 "
                 "data.params.batch_size=2", ae, T);
        char cmd2[4096];
        snprintf(cmd2, sizeof cmd2, "%s -np 2 -x LDM_THREADS=1 ./emu/ldm %s", MPIRUN, args);
        int g2 = ldm_bin("", "G2", NULL, cmd2);
        lt_report(g1 == 0 && g2 == 0 && out_has("G2", "out", "gradients go through host memory"),
                  "emulated GPUs: 1 process (batch 4) and 2 processes (batch 2, one GPU each) train", "exit %d and %d", g1, g2);
        char e1[800], e2[800];
        if (!g1 && !g2 && logdir_of("G1", e1, sizeof e1) && logdir_of("G2", e2, sizeof e2)) {
            char a[1200], b[1200];
            snprintf(a, sizeof a, "%s/metrics.csv", e1);
            snprintf(b, sizeof b, "%s/metrics.csv", e2);
            compare_csv("emulated GPUs: every logged loss of 4 steps equals the one-GPU run's", a, b, ae_cols, 11);
        } else { show("G1"); show("G2"); }
    } else printf("SKIP emulated GPUs: no build/emu/ldm (a C++ compiler builds it)\n");

    /* resume under 2 ranks: 3 steps, then -r to 6, bitwise the uninterrupted 2-rank run */
    snprintf(args, sizeof args, "--base %s -t --name R2 -l %s/logs --no-test --scale_lr false data.params.batch_size=2 "
             "lightning.trainer.max_steps=3", dd, T);
    int rc = mpi_ldm("R2", 2, NULL, args);
    char r2[800] = "";
    if (!rc && logdir_of("R2", r2, sizeof r2)) {
        snprintf(args, sizeof args, "-r %s -t --no-test --scale_lr false lightning.trainer.max_steps=6", r2);
        rc = mpi_ldm("R2b", 2, NULL, args);
    }
    lt_report(rc == 0 && r2[0], "resume: 2 ranks stop at step 3 and resume to 6", "exit %d", rc);
    if (!rc && r2[0] && logdir_of("M12", d2, sizeof d2)) {
        char a[1200], b[1200];
        snprintf(a, sizeof a, "%s/checkpoints/last/model.safetensors", r2);
        snprintf(b, sizeof b, "%s/checkpoints/last/model.safetensors", d2);
        compare_weights("resume: the resumed 2-rank run's weights are bitwise the uninterrupted one's", a, b, 0, 1);
        snprintf(a, sizeof a, "%s/checkpoints/last/optimizer_0.safetensors", r2);
        snprintf(b, sizeof b, "%s/checkpoints/last/optimizer_0.safetensors", d2);
        lt_report(same_file(a, b), "resume: and so is its optimizer state (optimizer_0.safetensors)", "%s differs", a);
    } else show("R2b");

    /* mid-accumulation: 2 ranks with accumulate_grad_batches 2 stopped by SIGTERM after 3
       batches (one micro-batch into a step) and resumed, against the uninterrupted run */
    {
        char u[800] = "", v[800] = "";
        const char *acc = "data.params.batch_size=2 lightning.trainer.accumulate_grad_batches=2 lightning.trainer.max_steps=4 "
                          "lightning.callbacks.image_logger.params.disabled=true";
        snprintf(args, sizeof args, "--base %s -t --name AU -l %s/logs --no-test --scale_lr false %s", dd, T, acc);
        int r1 = mpi_ldm("AU", 2, NULL, args);
        snprintf(args, sizeof args, "--base %s -t --name AV -l %s/logs --no-test --scale_lr false %s", dd, T, acc);
        int r2 = mpi_ldm("AV", 2, "-x LDM_TEST_SIGNAL_AT_BATCH=3:TERM", args);
        int r3 = -1;
        if (!r1 && !r2 && logdir_of("AU", u, sizeof u) && logdir_of("AV", v, sizeof v)) {
            char gp[1200];
            snprintf(gp, sizeof gp, "%s/checkpoints/last/grads.safetensors", v);
            LT_CHECK(exists(gp), "accumulation: the checkpoint taken mid-accumulation holds the gradients so far");
            snprintf(args, sizeof args, "-r %s -t --no-test --scale_lr false %s", v, acc);
            r3 = mpi_ldm("AV2", 2, NULL, args);
        }
        lt_report(!r1 && !r2 && !r3, "accumulation: 2 ranks, interrupted mid-accumulation and resumed, train to the end", "exit %d %d %d", r1, r2, r3);
        if (!r3) {
            char a[1200], b[1200];
            snprintf(a, sizeof a, "%s/checkpoints/last/model.safetensors", u);
            snprintf(b, sizeof b, "%s/checkpoints/last/model.safetensors", v);
            compare_weights("accumulation: the resumed run's weights equal the uninterrupted run's (the saved partial sums are the ranks' mean)",
                            a, b, 2 * 1e-4 * 4, 0);
        } else { show("AV"); show("AV2"); }
    }

    /* a rank that dies: the job ends, mpirun names the rank, the last checkpoint is whole */
    snprintf(args, sizeof args, "--base %s -t --name K -l %s/logs --no-test data.params.batch_size=2 lightning.trainer.max_steps=40 "
             "lightning.modelcheckpoint.params.every_n_train_steps=2", dd, T);
    time_t t0 = time(NULL);
    rc = mpi_ldm("K", 2, "-x LDM_TEST_DIE_AT_BATCH=5:1", args);
    double el = difftime(time(NULL), t0);
    lt_report(rc != 0 && el < 120, "fault: a killed rank ends the whole job (non-zero exit)", "exit %d after %.0f s", rc, el);
    LT_CHECK(out_has("K", "err", "rank 1") || out_has("K", "out", "rank 1"), "fault: the message names rank 1");
    LT_CHECK(out_has("K", "out", "Setting learning rate to 4.00e-04 = 1 (accumulate_grad_batches) * 2 (num_gpus) * 2 (batchsize)"),
             "lr scaling counts the processes (main.py's num_gpus)");
    char k[800];
    if (logdir_of("K", k, sizeof k)) {
        char a[1200];
        snprintf(a, sizeof a, "%s/checkpoints/last", k);
        snprintf(args, sizeof args, "-r %s -t --no-test lightning.trainer.max_steps=6", a);
        int rr = ldm("Kr", "LDM_THREADS=1", args); /* one process resumes the 2-rank run's checkpoint */
        lt_report(rr == 0 && out_has("Kr", "out", "Resumed from"), "fault: the last checkpoint is whole (one process resumes it)", "exit %d", rr);
        if (rr) show("Kr");
    } else lt_report(0, "fault: logdir of the killed run", "missing");

    /* a rank that hangs: rank 0 names it after LDM_DIST_TIMEOUT and ends the job */
    snprintf(args, sizeof args, "--base %s -t --name H -l %s/logs --no-test data.params.batch_size=2 lightning.trainer.max_steps=40", dd, T);
    t0 = time(NULL);
    rc = mpi_ldm("H", 2, "-x LDM_TEST_HANG_AT_BATCH=3:1 -x LDM_DIST_TIMEOUT=4", args);
    el = difftime(time(NULL), t0);
    lt_report(rc != 0 && el < 90, "fault: a hung rank ends the job after the timeout", "exit %d after %.0f s", rc, el);
    lt_report(out_has("H", "err", "for rank 1"), "fault: rank 0 names the hung rank", "see %s/H.err", T);

    /* SIGTERM to the job's processes (what a batch scheduler's cancel does, e.g. SLURM's
       scancel): the ranks agree at the next batch, rank 0 checkpoints once, all exit 0.
       (A SIGTERM to mpirun itself is Open MPI's business: it stops forwarding output and
       SIGKILLs the ranks about a second after passing the signal on.) */
    snprintf(args, sizeof args, "--base %s -t --name S -l %s/logs --no-test data.params.batch_size=2 lightning.trainer.max_steps=400", dd, T);
    static char cmd[8192];
    snprintf(cmd, sizeof cmd, "exec %s -np 2 -x LDM_THREADS=1 ./ldm %s > %s/S.out 2> %s/S.err", MPIRUN, args, T, T);
    pid_t pid = fork();
    if (pid == 0) { execl("/bin/sh", "sh", "-c", cmd, (char *)NULL); _exit(127); }
    char s[800] = "";
    for (int i = 0; i < 600; i++) { /* until the run has taken a few steps */
        struct timespec ts = {0, 100000000};
        nanosleep(&ts, NULL);
        if (!s[0]) logdir_of("S", s, sizeof s);
        char mp[1200];
        snprintf(mp, sizeof mp, "%s/metrics.csv", s);
        char *txt = s[0] ? slurp(mp, NULL) : NULL;
        int lines = 0;
        for (char *c = txt; c && *c; c++) lines += *c == '\n';
        free(txt);
        if (lines >= 4) break;
    }
    snprintf(cmd, sizeof cmd, "pkill -TERM -P %ld -x ldm", (long)pid); /* sh exec'd mpirun: the ranks are its children */
    int kr = system(cmd);
    int st = 0;
    waitpid(pid, &st, 0);
    char a[1200];
    snprintf(a, sizeof a, "%s/checkpoints/last/state.ini", s);
    int once = 0;
    char op[700];
    snprintf(op, sizeof op, "%s/S.out", T);
    char *txt = slurp(op, NULL);
    for (char *c = txt; c && (c = strstr(c, "Summoning checkpoint (SIGTERM)")); c++) once++;
    free(txt);
    lt_report(kr == 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0 && exists(a) && once == 1 && out_has("S", "out", "Interrupted at global step"),
              "SIGTERM to the ranks: rank 0 checkpoints once and the job exits 0", "pkill %d, mpirun status %d, %d checkpoint messages", kr,
              WIFEXITED(st) ? WEXITSTATUS(st) : -1, once);
}

int main(int argc, char **argv) {
#ifdef LDM_MPI
    if (argc > 1 && !strcmp(argv[1], "--mpi-worker")) return worker();
#else
    (void)argc; (void)argv;
#endif
    test_shard_rng();
    test_hook();
    test_sampler();
    {
        ldm_ctx *ctx = new_ctx(1);
        ldm_dist *d;
        ldm_result r = ldm_dist_create(ctx, &d, NULL, NULL, 0);
        lt_report(!r && ldm_dist_world(d) == 1 && !strcmp(ldm_dist_engine(d), "none"), "world of 1 outside mpirun", "%s", ldm_ctx_error(ctx));
        if (!r) ldm_dist_destroy(d);
        ldm_ctx_destroy(ctx);
    }
#ifndef LDM_MPI
    printf("SKIP data parallel under mpirun: built without LDM_MPI (build.sh uses mpicc when Open MPI is installed: "
           "./build.sh deps installs libopenmpi-dev openmpi-bin)\n");
    return lt_finish("test_dist");
#else
    if (system("command -v mpirun > /dev/null 2>&1") != 0) {
        printf("SKIP data parallel under mpirun: no mpirun on PATH (./build.sh deps installs openmpi-bin)\n");
        return lt_finish("test_dist");
    }
    snprintf(MPIRUN, sizeof MPIRUN, "mpirun --oversubscribe%s", getuid() == 0 ? " --allow-run-as-root" : "");
    snprintf(T, sizeof T, "/tmp/ldm_test_dist_");
    for (int i = 0; i < 6; i++) strcat(T, "X");
    if (!mkdtemp(T)) { printf("FAIL mkdtemp\n"); return 1; }
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "%s -np 2 ./test_dist --mpi-worker > %s/worker.out 2>&1", MPIRUN, T);
    int rc = system(cmd);
    snprintf(cmd, sizeof cmd, "%s/worker.out", T);
    char *wo = slurp(cmd, NULL);
    int wp = 0, wf = 0;
    for (char *c = wo; c && (c = strstr(c, "ok   ")); c++) wp++;
    for (char *c = wo; c && (c = strstr(c, "FAIL ")); c++) wf++;
    if (wo) printf("%s", wo);
    lt_report(rc == 0 && wp >= 8 && wf == 0, "mpirun -np 2 test_dist --mpi-worker: every rank's checks pass", "exit %d, %d passed, %d failed", rc, wp, wf);
    free(wo);
    if (!exists("./ldm")) { printf("FAIL ./ldm is not built\n"); return 1; }
    test_driver_mpi();
    return lt_finish("test_dist");
#endif
}
