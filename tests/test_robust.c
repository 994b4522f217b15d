/* test_robust.c - the driver and loaders under bad numbers, a full disk and random SIGKILLs.
   - NaN/Inf in weights read from a file: ldm_nn_load names the tensor (allow_nonfinite
     accepts it), and so does `ldm -r` from a checkpoint holding one;
   - a NaN in a training batch, in a gradient, or in a weight after an update (injected with
     LDM_TEST_INJECT_NAN): each stops training with a message naming the field or parameter
     and the step, and checkpoints/last keeps the state before it;
   - a file-size limit (RLIMIT_FSIZE, as a full disk) during a checkpoint write: a clear error
     and the previous checkpoint intact, which a later run resumes;
   - a crash loop: at least 50 SIGKILLs at random moments of a run that writes a checkpoint at
     every step (so many land inside checkpoint writes), each followed by `-r`: every resume
     loads a complete checkpoint and the final weights and optimizer state are bitwise those
     of an uninterrupted run.
   Runs from build/ (./ldm). */
#if !defined(_XOPEN_SOURCE)
#define _XOPEN_SOURCE 700
#endif
#define LDM_IMPLEMENTATION
#include "ldm_test.h"
#include "ldm_nn.h"
#include <math.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "driver_util.h"

static const char *cfg_text =
    "[model]\nbase_learning_rate = 1.0e-4\ntarget = ldm.models.autoencoder.AutoencoderKL\n"
    "[model.params]\nembed_dim = 2\n"
    "[model.params.ddconfig]\ndouble_z = true\nz_channels = 2\nresolution = 16\nin_channels = 3\nout_ch = 3\nch = 32\n"
    "ch_mult = 1, 2\nnum_res_blocks = 1\nattn_resolutions = []\ndropout = 0.0\n"
    "[model.params.lossconfig]\ntarget = LPIPSWithDiscriminator\n"
    "[model.params.lossconfig.params]\ndisc_start = 6\nkl_weight = 1.0e-6\ndisc_weight = 0.5\nperceptual_weight = 0.0\n"
    "disc_num_layers = 2\n"
    "[data]\ntarget = main.DataModuleFromConfig\n"
    "[data.params]\nbatch_size = 2\nnum_workers = 1\n"
    "[data.params.train]\ntarget = ldm.data.folder.ImageFolder\n"
    "[data.params.train.params]\nroot = \"%s/img\"\nsize = 16\nrandom_crop = true\nflip_p = 0.5\n"
    "[data.params.validation]\ntarget = ldm.data.folder.ImageFolder\n"
    "[data.params.validation.params]\nroot = \"%s/img\"\nsize = 16\nmax_items = 2\n"
    "[lightning.trainer]\nmax_steps = 4\naccumulate_grad_batches = 2\nlog_every_n_steps = 1\nval_check_interval = 4\n"
    "num_sanity_val_steps = 0\n"
    "[lightning.modelcheckpoint.params]\nevery_n_train_steps = 1\n";

static ldm_ctx *new_ctx(void) {
    ldm_settings s;
    memset(&s, 0, sizeof s);
    ldm_ctx *ctx = NULL;
    return ldm_ctx_create(&ctx, &s) ? NULL : ctx;
}

static long state_step(const char *logdir) {
    char p[1200];
    snprintf(p, sizeof p, "%s/checkpoints/last/state.ini", logdir);
    char *s = slurp(p, NULL), *g = s ? strstr(s, "global_step = ") : NULL;
    long v = g ? atol(g + 14) : -1;
    free(s);
    return v;
}

/* Rewrites a safetensors file with one value of tensor `name` replaced by v. */
static int poison(ldm_ctx *ctx, const char *path, const char *name, float v) {
    ldm_weights *w;
    if (ldm_weights_open(ctx, &w, path)) return 0;
    int n = ldm_weights_count(w), ok = 0;
    ldm_named_data *nd = (ldm_named_data *)calloc((size_t)n, sizeof *nd);
    float **h = (float **)calloc((size_t)n, sizeof *h);
    char **names = (char **)calloc((size_t)n, sizeof *names);
    for (int i = 0; i < n; i++) {
        const ldm_weight_info *in = ldm_weights_info(w, i);
        h[i] = (float *)malloc(sizeof(float) * (size_t)(in->numel ? in->numel : 1));
        names[i] = strdup(in->name);
        ldm_weights_read(ctx, w, i, h[i]);
        if (!strcmp(in->name, name)) { h[i][0] = v; ok = 1; }
        nd[i].name = names[i];
        nd[i].data = h[i];
        nd[i].ndim = in->ndim;
        memcpy(nd[i].shape, in->shape, sizeof nd[i].shape);
    }
    ldm_weights_close(w);
    if (ok && ldm_safetensors_write(ctx, path, n, nd, LDM_F32, 0, NULL, NULL)) ok = 0;
    for (int i = 0; i < n; i++) { free(h[i]); free(names[i]); }
    free(h); free(names); free(nd);
    return ok;
}

static void test_load_nonfinite(void) {
    ldm_ctx *ctx = new_ctx();
    ldm_nn_params *P;
    ldm_nn_linear l;
    ldm_nn_params_create(ctx, &P, LDM_CPU);
    ldm_nn_linear_init(P, &l, "proj", 4, 3, 1);
    ldm_nn_params_alloc(ctx, P);
    char path[700];
    snprintf(path, sizeof path, "%s/w.safetensors", T);
    ldm_nn_save(ctx, P, path, LDM_F32, NULL);
    int ok = poison(ctx, path, "proj.bias", INFINITY);
    ldm_nn_load_opts o;
    memset(&o, 0, sizeof o);
    o.strict = 1;
    ldm_result r = ldm_nn_load(ctx, P, path, &o);
    lt_report(ok && r == LDM_ERR_NUMERIC && strstr(ldm_ctx_error(ctx), "\"proj.bias\"") && strstr(ldm_ctx_error(ctx), "+Inf") &&
              strstr(ldm_ctx_error(ctx), "w.safetensors"),
              "load: a non-finite weight in a file is an error naming the file, the tensor and the value", "%d: %s", (int)r, ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    o.allow_nonfinite = 1;
    r = ldm_nn_load(ctx, P, path, &o);
    lt_report(r == LDM_OK, "load: allow_nonfinite accepts it", "%s", ldm_ctx_error(ctx));
    ldm_nn_params_destroy(P);
    ldm_ctx_destroy(ctx);
}

static int run_new(const char *tag, const char *env, const char *extra) {
    char args[3000];
    snprintf(args, sizeof args, "--base %s -t --no-test --name %s -l %s/logs %s", CFG, tag, T, extra ? extra : "");
    return ldm(tag, env, args);
}

static void test_bad_numbers(void) {
    char L[800], p[1200], args[3000];
    /* batch */
    int rc = run_new("NB", "LDM_TEST_INJECT_NAN=batch:2", NULL);
    lt_report(rc == 1 && out_has("NB", "err", "field \"image\" of item 0") && out_has("NB", "err", "holds NaN") &&
              out_has("NB", "err", "global step 2"), "NaN in a batch: stops, naming the field, the item and the step", "exit %d", rc);
    if (rc != 1) show("NB");
    /* gradient */
    rc = run_new("NG", "LDM_TEST_INJECT_NAN=grad:2", NULL);
    lt_report(rc == 1 && out_has("NG", "err", "the gradient of encoder.conv_in.weight (optimizer aeloss) is not finite at global step 2"),
              "NaN in a gradient: stops before the update, naming the parameter, the optimizer and the step", "exit %d", rc);
    if (rc != 1) show("NG");
    lt_report(logdir_of("NG", L, sizeof L) && state_step(L) == 2, "NaN in a gradient: checkpoints/last holds step 2, before it",
              "step %ld", state_step(L));
    /* weight */
    rc = run_new("NW", "LDM_TEST_INJECT_NAN=weight:2", NULL);
    lt_report(rc == 1 && out_has("NW", "err", "the weight encoder.conv_in.weight after the last optimizer step is not finite"),
              "NaN in a weight: no checkpoint is written from it; the message names the weight", "exit %d", rc);
    if (rc != 1) show("NW");
    lt_report(logdir_of("NW", L, sizeof L) && state_step(L) == 2, "NaN in a weight: checkpoints/last keeps step 2", "step %ld", state_step(L));
    /* a checkpoint whose weights hold a NaN: -r names the tensor */
    rc = run_new("NR", NULL, "lightning.trainer.max_steps=2");
    if (!rc && logdir_of("NR", L, sizeof L)) {
        ldm_ctx *ctx = new_ctx();
        snprintf(p, sizeof p, "%s/checkpoints/last/model.safetensors", L);
        int ok = poison(ctx, p, "decoder.conv_out.bias", NAN);
        ldm_ctx_destroy(ctx);
        snprintf(args, sizeof args, "-r %s -t --no-test lightning.trainer.max_steps=4", L);
        rc = ok ? ldm("NR2", NULL, args) : -1;
        lt_report(rc == 1 && out_has("NR2", "err", "\"decoder.conv_out.bias\"") && out_has("NR2", "err", "NaN") &&
                  out_has("NR2", "err", "model.safetensors"), "resume from a checkpoint with a NaN weight: an error naming file and tensor",
                  "exit %d", rc);
        if (rc != 1) show("NR2");
    } else lt_report(0, "resume from a checkpoint with a NaN weight", "the first run failed (%d)", rc);
}

static void test_disk_full(void) {
    char L[800], args[3000];
    int rc = run_new("DF", NULL, "lightning.trainer.max_steps=2");
    if (rc || !logdir_of("DF", L, sizeof L)) { lt_report(0, "disk full: first run", "exit %d", rc); return; }
    /* files over 256 KB fail with EFBIG: the model file does not fit */
    snprintf(args, sizeof args, "sh -c 'ulimit -f 256; exec ./ldm -r %s -t --no-test lightning.trainer.max_steps=4'", L);
    rc = ldm_bin("", "DF2", NULL, args);
    lt_report(rc == 1 && (out_has("DF2", "err", "File too large") || out_has("DF2", "err", "No space")),
              "disk full: a checkpoint write over the file-size limit is a clear error (not a crash)", "exit %d", rc);
    if (rc != 1) show("DF2");
    lt_report(state_step(L) == 2, "disk full: the previous checkpoint is intact", "step %ld", state_step(L));
    snprintf(args, sizeof args, "-r %s -t --no-test lightning.trainer.max_steps=4", L);
    rc = ldm("DF3", NULL, args);
    lt_report(rc == 0 && state_step(L) == 4, "disk full: a later run resumes from it and finishes", "exit %d, step %ld", rc, state_step(L));
}

static void test_crash_loop(void) {
    char U[800], L[800] = "", args[3000], a[1200], b[1200];
    /* long enough that 50 kills come before the end even on a loaded machine */
    const char *steps = "lightning.trainer.max_steps=200";
    int rc = run_new("CU", "LDM_THREADS=1", steps);
    if (rc || !logdir_of("CU", U, sizeof U)) { lt_report(0, "crash loop: uninterrupted run", "exit %d", rc); show("CU"); return; }
    unsigned seed = 12345;
    int kills = 0, resumes = 0, bad_resume = 0, finished = 0, in_ckpt = 0;
    for (int round = 0; round < 400 && !finished; round++) {
        int fresh = !L[0];
        if (fresh) snprintf(args, sizeof args, "exec ./ldm --base %s -t --no-test --name CK -l %s/logs %s > %s/CK.out 2> %s/CK.err", CFG, T, steps, T, T);
        else snprintf(args, sizeof args, "exec ./ldm -r %s -t --no-test %s > %s/CK.out 2> %s/CK.err", L, steps, T, T);
        pid_t pid = fork();
        if (pid == 0) { setenv("LDM_THREADS", "1", 1); execl("/bin/sh", "sh", "-c", args, (char *)NULL); _exit(127); }
        seed = seed * 1103515245u + 12345u;
        double ms = kills < 50 ? 150 + (double)((seed >> 8) % 700) : 1e9; /* after 50 kills: let it finish */
        int st = 0, done = 0;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (;;) { /* wall-clock time: sleeps stretch on a loaded machine */
            struct timespec ts = {0, 5000000};
            nanosleep(&ts, NULL);
            done = waitpid(pid, &st, WNOHANG) == pid;
            clock_gettime(CLOCK_MONOTONIC, &t1);
            if (done || 1e3 * (double)(t1.tv_sec - t0.tv_sec) + 1e-6 * (double)(t1.tv_nsec - t0.tv_nsec) >= ms) break;
        }
        if (!done) {
            char tmpdir[1000];
            snprintf(tmpdir, sizeof tmpdir, "%s/checkpoints", L);
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            kills++;
            DIR *dd = L[0] ? opendir(tmpdir) : NULL; /* a checkpoint being written left its temporary behind */
            struct dirent *e;
            while (dd && (e = readdir(dd)) != NULL) if (!strncmp(e->d_name, ".tmp-", 5) || strstr(e->d_name, ".old")) { in_ckpt++; break; }
            if (dd) closedir(dd);
        } else if (WIFEXITED(st) && WEXITSTATUS(st) == 0) finished = 1;
        else {
            bad_resume++;
            show("CK");
        }
        if (!fresh) resumes++;
        if (!L[0] && logdir_of("CK", L, sizeof L)) {
            char p[1200], q[1200];
            snprintf(p, sizeof p, "%s/checkpoints/last", L);
            snprintf(q, sizeof q, "%s/checkpoints/last.old", L);
            if (!exists(p) && !exists(q)) { /* killed before its first checkpoint: start over */
                snprintf(p, sizeof p, "rm -rf %s", L);
                if (system(p)) {}
                L[0] = 0;
            }
        }
    }
    printf("     (%d SIGKILLs, %d of them with a checkpoint being written; %d resumes)\n", kills, in_ckpt, resumes);
    lt_report(kills >= 50 && finished && !bad_resume, "crash loop: 50+ SIGKILLs at random moments, every resume loads a whole checkpoint",
              "%d kills, finished %d, %d failed resumes", kills, finished, bad_resume);
    lt_report(in_ckpt >= 5, "crash loop: kills landed inside checkpoint writes", "%d", in_ckpt);
    snprintf(a, sizeof a, "%s/checkpoints/last/model.safetensors", U);
    snprintf(b, sizeof b, "%s/checkpoints/last/model.safetensors", L);
    lt_report(finished && same_file(a, b), "crash loop: the final weights are bitwise those of the uninterrupted run", "%s vs %s", a, b);
    snprintf(a, sizeof a, "%s/checkpoints/last/optimizer_0.safetensors", U);
    snprintf(b, sizeof b, "%s/checkpoints/last/optimizer_0.safetensors", L);
    int o0 = same_file(a, b);
    snprintf(a, sizeof a, "%s/checkpoints/last/optimizer_1.safetensors", U);
    snprintf(b, sizeof b, "%s/checkpoints/last/optimizer_1.safetensors", L);
    lt_report(finished && o0 && same_file(a, b), "crash loop: and so are both optimizers' states", "differ");
}

int main(void) {
    snprintf(T, sizeof T, "/tmp/ldm_test_robust_");
    for (int i = 0; i < 6; i++) strcat(T, "X");
    if (!mkdtemp(T)) { printf("FAIL mkdtemp\n"); return 1; }
    if (!exists("./ldm")) { printf("FAIL ./ldm is not built (run ./build.sh)\n"); return 1; }
    char p[1400];
    snprintf(p, sizeof p, "%s/img", T);
    mkdir(p, 0777);
    make_images(p, 8, 20);
    static char text[8192];
    snprintf(text, sizeof text, cfg_text, T, T);
    snprintf(CFG, sizeof CFG, "%s/robust.ini", T);
    writef(CFG, text);
    test_load_nonfinite();
    test_bad_numbers();
    test_disk_full();
    test_crash_loop();
    return lt_finish("test_robust");
}
