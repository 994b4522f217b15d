/* test_driver.c - the ldm train/test driver (examples/main.c -> build/ldm), end to end.

   A tiny AutoencoderKL on 16x16 crops of generated images, a few optimizer steps each run:
   - an uninterrupted run: checkpoints, configs, metrics.csv, images, loss curve, test outputs;
   - the same run stopped by SIGTERM in the middle of a gradient accumulation, then resumed
     with -r: metrics.csv and the final weights equal the uninterrupted run's bit for bit;
   - a run stopped by max_steps and resumed with a larger max_steps: the same;
   - a kill -9 in the middle of a checkpoint write (and between the two renames) leaves the
     previous checkpoint loadable, and the run resumes from it;
   - a NaN/Inf loss stops training with a message and leaves checkpoints/last untouched;
   - config errors name file:line (unknown key, wrong type, unknown target), --gpus without
     CUDA, bad command lines;
   - test-only runs (ckpt_path, -r) reproduce the test metrics of the trained model;
   - where a python with torch is found ($LDM_TORCH_PYTHON, /usr/bin/python3, python3): a
     checkpoint of a run with LPIPS weights loads into the CompVis module with
     load_state_dict(strict=True) (tests/ref/driver_ckpt_check.py), as README says; without
     torch this part prints a SKIP line.
   Runs from build/ (./ldm); everything it writes goes to a temporary directory. */
#if !defined(_XOPEN_SOURCE)
#define _XOPEN_SOURCE 700
#endif
#define LDM_IMPLEMENTATION
#include "ldm_test.h"
#include <unistd.h>


#include "driver_util.h"


static const char *tiny_cfg =
    "# tiny AutoencoderKL for test_driver.c\n"
    "[model]\nbase_learning_rate = 1.0e-4\ntarget = ldm.models.autoencoder.AutoencoderKL\n"
    "[model.params]\nembed_dim = 2\n"
    "[model.params.ddconfig]\ndouble_z = true\nz_channels = 2\nresolution = 16\nin_channels = 3\nout_ch = 3\nch = 32\n"
    "ch_mult = 1, 2\nnum_res_blocks = 1\nattn_resolutions = []\ndropout = 0.0\n"
    "[model.params.lossconfig]\ntarget = LPIPSWithDiscriminator\n"
    "[model.params.lossconfig.params]\ndisc_start = 3\nkl_weight = 1.0e-6\ndisc_weight = 0.5\nperceptual_weight = 0.0\n"
    "disc_num_layers = 2\n"
    "[data]\ntarget = main.DataModuleFromConfig\n"
    "[data.params]\nbatch_size = 2\nnum_workers = 2\n"
    "[data.params.train]\ntarget = ldm.data.folder.ImageFolder\n"
    "[data.params.train.params]\nroot = \"%s/img\"\nsize = 16\nrandom_crop = true\nflip_p = 0.5\n"
    "[data.params.validation]\ntarget = ldm.data.folder.ImageFolder\n"
    "[data.params.validation.params]\nroot = \"%s/img\"\nsize = 16\nmax_items = 4\n"
    "[lightning.trainer]\nmax_steps = 6\naccumulate_grad_batches = 2\nlog_every_n_steps = 1\nval_check_interval = 2\n"
    "num_sanity_val_steps = 1\n"
    "[lightning.callbacks.image_logger]\ntarget = main.ImageLogger\n"
    "[lightning.callbacks.image_logger.params]\nbatch_frequency = 2\nmax_images = 2\n"
    "[lightning.modelcheckpoint.params]\nsave_top_k = 2\n";

static void check_file(const char *dir, const char *rel, const char *name) {
    char p[1200];
    snprintf(p, sizeof p, "%s/%s", dir, rel);
    lt_report(exists(p), name, "%s is missing", p);
}

static int count_topk(const char *ckdir) {
    DIR *d = opendir(ckdir);
    int n = 0;
    struct dirent *e;
    if (!d) return -1;
    while ((e = readdir(d)) != NULL) n += !strncmp(e->d_name, "epoch=", 6);
    closedir(d);
    return n;
}

/* The rec_loss of the "test: ..." line a run prints, or 0. */
static double test_rec_loss(const char *tag) {
    char p[700];
    out_path(p, sizeof p, tag, "out");
    char *s = slurp(p, NULL), *t = s ? strstr(s, "test: ") : NULL;
    double v = t && (t = strstr(t, "rec_loss ")) != NULL ? atof(t + 9) : 0.0;
    free(s);
    return v;
}
/* metrics.csv of a GPU run against the CPU run's, row by row over the GPU run's rows (the same
   batches, dropout masks and posterior noise: the RNG draws are equal on both devices). The
   first generator loss comes from identical weights: float rounding apart. Later rows drift:
   Adam turns rounding-level gradient differences into lr-sized steps, and the GAN amplifies. */
static void compare_metrics(const char *cpu_csv, const char *gpu_csv) {
    char *a = slurp(cpu_csv, NULL), *b = slurp(gpu_csv, NULL);
    if (!a || !b) { lt_report(0, "gpu: metrics.csv of both runs", "missing"); free(a); free(b); return; }
    int rows = 0, bad = 0, first_ok = 0;
    double worst = 0;
    char *sa = NULL, *sb = NULL, *la = strtok_r(a, "\n", &sa), *lb = strtok_r(b, "\n", &sb);
    for (; la && lb; la = strtok_r(NULL, "\n", &sa), lb = strtok_r(NULL, "\n", &sb), rows++) {
        if (rows == 0) { if (strcmp(la, lb)) bad++; continue; } /* the header */
        const char *pa = la, *pb = lb;
        for (int col = 0; pa && pb; col++) {
            const char *ea = strchr(pa, ','), *eb = strchr(pb, ',');
            int ema = pa == ea || !*pa, emb = pb == eb || !*pb;
            if (ema != emb) { bad++; printf("  row %d column %d: empty on one device only\n", rows, col); }
            else if (!ema) {
                double x = atof(pa), y = atof(pb), tol = 1e-2 * fabs(x) + 2e-3;
                if (rows == 1 && (col == 3 || col == 9)) { /* step 0: aeloss_step, train/rec_loss */
                    tol = 1e-4 * fabs(x);
                    first_ok += fabs(x - y) <= tol;
                }
                if (fabs(x - y) / tol > worst) worst = fabs(x - y) / tol;
                if (!(fabs(x - y) <= tol)) { bad++; printf("  row %d column %d: CPU %.9g GPU %.9g\n", rows, col, x, y); }
            }
            pa = ea ? ea + 1 : NULL;
            pb = eb ? eb + 1 : NULL;
        }
    }
    lt_report(first_ok == 2, "gpu: the first step's losses equal the CPU's to float rounding", "aeloss/rec_loss off");
    lt_report(rows >= 8 && !bad, "gpu: every logged value of every step stays close to the CPU run's", "%d of %d rows, %d values off", bad, rows, bad);
    printf("     (%d rows; worst value at %.2f of its tolerance)\n", rows, worst);
    free(a);
    free(b);
}

/* The uninterrupted run again on the GPU: a CUDA build with a device runs ./ldm --gpus;
   without one, the CPU emulator's build of the same driver (./emu/ldm, tests/cuda_emu.hpp)
   runs the CUDA back end's code and catches host code touching device memory. */
static void test_gpu(const char *U) {
    const char *bin = NULL;
#ifdef LDM_CUDA
    if (ldm_cuda_available()) bin = "./ldm";
#endif
    if (!bin && exists("./emu/ldm")) bin = "./emu/ldm";
    if (!bin) { printf("SKIP gpu: no CUDA device and no emulator build (build/emu/ldm)\n"); return; }
    char args[3000], G[800], p[1200], q[1200];
    snprintf(args, sizeof args, "--base %s -t --name G -l %s/logs --gpus 0, lightning.trainer.max_steps=4", CFG, T);
    int rc = ldm_bin(bin, "G", NULL, args);
    lt_report(rc == 0, strcmp(bin, "./ldm") ? "gpu (emulated): training with --gpus 0, exits 0" : "gpu: training with --gpus 0, exits 0", "exit %d", rc);
    if (rc) { show("G"); return; }
    LT_CHECK(out_has("G", "out", "Running on GPU 0"), "gpu: the run says which GPU");
    LT_CHECK(logdir_of("G", G, sizeof G), "gpu: logdir");
    snprintf(p, sizeof p, "%s/metrics.csv", U);
    snprintf(q, sizeof q, "%s/metrics.csv", G);
    compare_metrics(p, q);
    /* its checkpoint, written from device memory, tested by the CPU build */
    snprintf(args, sizeof args, "-r %s --gpus 0", G); /* Lightning's gpus=0: the CPU */
    rc = ldm("GC", NULL, args);
    lt_report(rc == 0, "gpu: the CPU build tests the GPU run's checkpoint", "exit %d", rc);
    if (rc) show("GC");
    double tg = test_rec_loss("G"), tc = test_rec_loss("GC");
    lt_report(tg > 0 && fabs(tg - tc) <= 2e-4 * tg, "gpu: test rec_loss on the GPU equals the CPU's on the same checkpoint", "GPU %.7g CPU %.7g", tg, tc);
}

/* A python that can import torch, or NULL. */
static const char *torch_python(void) {
    static char found[600];
    const char *env = getenv("LDM_TORCH_PYTHON"), *cands[3] = {env, "/usr/bin/python3", "python3"};
    for (int i = 0; i < 3; i++) {
        char cmd[800];
        if (!cands[i] || !*cands[i] || strlen(cands[i]) > 500) continue;
        snprintf(cmd, sizeof cmd, "%s -c 'import torch' > /dev/null 2>&1", cands[i]);
        if (system(cmd) == 0) { snprintf(found, sizeof found, "%s", cands[i]); return found; }
    }
    return NULL;
}

/* README's claim: with LPIPS weights loaded, checkpoints/last/model.safetensors loads into the
   CompVis AutoencoderKL (loss included) with PyTorch's load_state_dict(strict=True). A short
   run with perceptual_weight 1 and LPIPS weights (random, under taming's names, written by the
   reference script) is checked by tests/ref/driver_ckpt_check.py; the perceptual_weight 0 run
   U must load except for exactly loss.perceptual_loss.*. */
static void test_strict_load(const char *U) {
    const char *py = torch_python();
    if (!py) { printf("SKIP strict load: no python with torch (set LDM_TORCH_PYTHON) to run tests/ref/driver_ckpt_check.py\n"); return; }
    char cmd[3000], lp[700], args[3000], L[800];
    snprintf(lp, sizeof lp, "%s/lpips_random.safetensors", T);
    snprintf(cmd, sizeof cmd, "%s ../tests/ref/driver_ckpt_check.py --lpips-weights %s > %s/py_lp.out 2>&1", py, lp, T);
    int rc = system(cmd);
    lt_report(rc == 0, "strict load: the reference script writes LPIPS weights", "exit %d (see %s/py_lp.out)", rc, T);
    if (rc) return;
    snprintf(args, sizeof args, "--base %s -t --no-test --name L -l %s/logs lightning.trainer.max_steps=2 "
             "model.params.lossconfig.params.perceptual_weight=1.0", CFG, T);
    snprintf(cmd, sizeof cmd, "LDM_LPIPS_WEIGHTS=%s", lp);
    rc = ldm("L", cmd, args);
    lt_report(rc == 0 && logdir_of("L", L, sizeof L), "strict load: a run with LPIPS weights (perceptual_weight 1) exits 0", "exit %d", rc);
    if (rc) { show("L"); return; }
    snprintf(cmd, sizeof cmd, "%s ../tests/ref/driver_ckpt_check.py %s > %s/py_L.out 2>&1", py, L, T);
    rc = system(cmd);
    lt_report(rc == 0 && out_has("py_L", "out", "load_state_dict(strict=True): OK"),
              "strict load: with LPIPS weights, torch's load_state_dict(strict=True) on the CompVis module accepts the checkpoint",
              "exit %d (see %s/py_L.out)", rc, T);
    snprintf(cmd, sizeof cmd, "%s ../tests/ref/driver_ckpt_check.py %s > %s/py_U.out 2>&1", py, U, T);
    rc = system(cmd);
    lt_report(rc == 0 && out_has("py_U", "out", "perceptual_weight 0, no LPIPS weights"),
              "strict load: without LPIPS weights only loss.perceptual_loss.* is missing", "exit %d (see %s/py_U.out)", rc, T);
}

int main(void) {
    snprintf(T, sizeof T, "/tmp/ldm_test_driver_");
    for (int i = 0; i < 6; i++) strcat(T, "X"); /* mkdtemp's template */
    if (!mkdtemp(T)) { printf("FAIL mkdtemp\n"); return 1; }
    if (!exists("./ldm")) { printf("FAIL ./ldm is not built (run ./build.sh)\n"); return 1; }
    char p[1200], q[1200], args[3000], U[800], I[800], S[800];
    snprintf(p, sizeof p, "%s/img", T);
    mkdir(p, 0777);
    make_images(p, 8, 24);
    char cfgtext[4096];
    snprintf(cfgtext, sizeof cfgtext, tiny_cfg, T, T);
    snprintf(CFG, sizeof CFG, "%s/tiny.ini", T);
    writef(CFG, cfgtext);

    /* ---- the uninterrupted run ---- */
    snprintf(args, sizeof args, "--base %s -t --name U -l %s/logs", CFG, T);
    int rc = ldm("U", NULL, args);
    lt_report(rc == 0, "train: uninterrupted run exits 0", "exit %d", rc);
    if (rc) show("U");
    LT_CHECK(logdir_of("U", U, sizeof U), "train: logdir logs/<timestamp>_U");
    LT_CHECK(out_has("U", "out", "Setting learning rate to 4.00e-04 = 2 (accumulate_grad_batches) * 1 (num_gpus) * 2 (batchsize) * 1.00e-04 (base_lr)"),
             "train: lr scaling printed like main.py");
    check_file(U, "checkpoints/last/model.safetensors", "train: checkpoints/last/model.safetensors");
    check_file(U, "checkpoints/last/optimizer_0.safetensors", "train: checkpoints/last/optimizer_0.safetensors");
    check_file(U, "checkpoints/last/optimizer_1.safetensors", "train: checkpoints/last/optimizer_1.safetensors");
    check_file(U, "checkpoints/last/state.ini", "train: checkpoints/last/state.ini");
    check_file(U, "metrics.csv", "train: metrics.csv");
    check_file(U, "loss_curve.png", "train: loss_curve.png");
    check_file(U, "images/train/reconstructions_gs-000001_e-000000_b-000002.png", "train: ImageLogger grid at step 1");
    check_file(U, "images/train/samples_gs-000002_e-000001_b-000001.png", "train: ImageLogger samples at step 2");
    check_file(U, "test_summary.txt", "test: test_summary.txt");
    check_file(U, "test_metrics.csv", "test: test_metrics.csv");
    check_file(U, "images/test/000000_reconstructions.png", "test: reconstruction PNG");
    snprintf(p, sizeof p, "%s/checkpoints/last/state.ini", U);
    LT_CHECK(file_has(p, "global_step = 6\n"), "train: last checkpoint at global step 6");
    snprintf(p, sizeof p, "%s/checkpoints", U);
    int ntop = count_topk(p);
    lt_report(ntop == 2, "train: save_top_k = 2 keeps two epoch=...-step=... checkpoints", "found %d", ntop);
    snprintf(p, sizeof p, "%s/metrics.csv", U);
    LT_CHECK(file_has(p, "step,epoch,lr,aeloss_step,discloss_step,train/total_loss"), "train: metrics.csv header");
    {
        /* the weights: CompVis names, loss included */
        ldm_ctx *ctx;
        ldm_weights *w = NULL;
        ldm_ctx_create(&ctx, NULL);
        snprintf(p, sizeof p, "%s/checkpoints/last/model.safetensors", U);
        int ok = ldm_weights_open(ctx, &w, p) == 0;
        LT_CHECK(ok && ldm_weights_find(w, "encoder.conv_in.weight") >= 0 && ldm_weights_find(w, "decoder.conv_out.weight") >= 0 &&
                     ldm_weights_find(w, "quant_conv.weight") >= 0 && ldm_weights_find(w, "post_quant_conv.bias") >= 0,
                 "checkpoint: autoencoder tensors under CompVis names");
        LT_CHECK(ok && ldm_weights_find(w, "loss.logvar") >= 0 && ldm_weights_find(w, "loss.discriminator.main.0.weight") >= 0 &&
                     ldm_weights_find(w, "loss.discriminator.main.3.running_var") >= 0,
                 "checkpoint: loss.logvar and loss.discriminator.* (BatchNorm buffers too)");
        if (w) ldm_weights_close(w);
        ldm_ctx_destroy(ctx);
    }
    snprintf(p, sizeof p, "%s/configs", U);
    {
        DIR *d = opendir(p);
        int n = 0;
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) n += strstr(e->d_name, "-project.ini") != NULL;
        if (d) closedir(d);
        LT_CHECK(n == 1, "train: configs/<timestamp>-project.ini");
    }

    test_gpu(U);
    test_strict_load(U);

    /* ---- stopped by SIGTERM after 5 batches (mid-accumulation), then resumed ---- */
    snprintf(args, sizeof args, "--base %s -t --name I -l %s/logs", CFG, T);
    rc = ldm("I1", "LDM_TEST_SIGNAL_AT_BATCH=5", args);
    lt_report(rc == 0, "signal: SIGTERM writes last and exits 0", "exit %d", rc);
    if (rc) show("I1");
    LT_CHECK(logdir_of("I", I, sizeof I), "signal: logdir");
    LT_CHECK(out_has("I1", "out", "Summoning checkpoint (SIGTERM)"), "signal: says it saves");
    check_file(I, "checkpoints/last/grads.safetensors", "signal: mid-accumulation checkpoint keeps the gradients");
    snprintf(p, sizeof p, "%s/checkpoints/last/state.ini", I);
    LT_CHECK(file_has(p, "accumulated = 1\n") && file_has(p, "global_step = 2\n"), "signal: state at batch 5 (2 steps + 1 accumulated)");
    LT_CHECK(!exists(strcat(strcpy(q, I), "/test_summary.txt")), "signal: no test after an interruption");
    snprintf(args, sizeof args, "-r %s -t", I);
    rc = ldm("I2", NULL, args);
    lt_report(rc == 0, "resume: -r logdir exits 0", "exit %d", rc);
    if (rc) show("I2");
    LT_CHECK(out_has("I2", "out", "Resumed from") && out_has("I2", "out", "global step 2 (epoch 1, batch 1)"), "resume: from step 2, epoch 1, batch 1");
    snprintf(p, sizeof p, "%s/metrics.csv", U);
    snprintf(q, sizeof q, "%s/metrics.csv", I);
    LT_CHECK(same_file(p, q), "resume: metrics.csv (every loss, every step) equals the uninterrupted run's bit for bit");
    snprintf(p, sizeof p, "%s/checkpoints/last/model.safetensors", U);
    snprintf(q, sizeof q, "%s/checkpoints/last/model.safetensors", I);
    LT_CHECK(same_file(p, q), "resume: final weights equal the uninterrupted run's");
    snprintf(p, sizeof p, "%s/checkpoints/last/optimizer_0.safetensors", U);
    snprintf(q, sizeof q, "%s/checkpoints/last/optimizer_0.safetensors", I);
    LT_CHECK(same_file(p, q), "resume: final Adam moments equal");
    snprintf(p, sizeof p, "%s/test_summary.txt", U);
    snprintf(q, sizeof q, "%s/test_summary.txt", I);
    LT_CHECK(same_file(p, q), "resume: test summary equals");

    /* ---- SIGUSR1 writes last and continues (without changing the run); SIGINT stops ---- */
    snprintf(args, sizeof args, "--base %s -t --no-test --name USR -l %s/logs", CFG, T);
    rc = ldm("USR", "LDM_TEST_SIGNAL_AT_BATCH=3:USR1", args);
    lt_report(rc == 0 && out_has("USR", "out", "Summoning checkpoint (SIGUSR1)") && logdir_of("USR", S, sizeof S),
              "signal: SIGUSR1 writes a checkpoint and goes on", "exit %d", rc);
    snprintf(p, sizeof p, "%s/metrics.csv", U);
    snprintf(q, sizeof q, "%s/metrics.csv", S);
    LT_CHECK(same_file(p, q), "signal: a SIGUSR1 checkpoint does not change the run");
    snprintf(args, sizeof args, "--base %s -t --name INT -l %s/logs", CFG, T);
    rc = ldm("INT", "LDM_TEST_SIGNAL_AT_BATCH=4:INT", args);
    lt_report(rc == 0 && out_has("INT", "out", "Summoning checkpoint (SIGINT)") && logdir_of("INT", S, sizeof S),
              "signal: SIGINT writes last and exits 0", "exit %d", rc);
    snprintf(p, sizeof p, "%s/checkpoints/last/state.ini", S);
    snprintf(q, sizeof q, "%s/checkpoints/last/grads.safetensors", S);
    LT_CHECK(file_has(p, "global_step = 2\n") && file_has(p, "accumulated = 0\n") && !exists(q),
             "signal: at an accumulation boundary there are no gradients to keep");

    /* ---- stopped by max_steps, resumed with an override ---- */
    snprintf(args, sizeof args, "--base %s -t --no-test --name S -l %s/logs lightning.trainer.max_steps=3", CFG, T);
    rc = ldm("S1", NULL, args);
    lt_report(rc == 0 && logdir_of("S", S, sizeof S), "resume: run stopped at max_steps 3", "exit %d", rc);
    snprintf(args, sizeof args, "-r %s -t --no-test lightning.trainer.max_steps=6", S);
    rc = ldm("S2", NULL, args);
    lt_report(rc == 0, "resume: continued to max_steps 6", "exit %d", rc);
    if (rc) show("S2");
    snprintf(p, sizeof p, "%s/metrics.csv", U);
    snprintf(q, sizeof q, "%s/metrics.csv", S);
    LT_CHECK(same_file(p, q), "resume: max_steps 3 + resume to 6 equals the uninterrupted metrics.csv");

    /* ---- kill -9 in the middle of a checkpoint write ---- */
    char K[900], keep[1200];
    snprintf(K, sizeof K, "%s/logs/K_copy", T);
    snprintf(args, sizeof args, "cp -a %s %s", U, K);
    LT_CHECK(system(args) == 0, "crash: copy of a finished run");
    snprintf(p, sizeof p, "%s/checkpoints/last/model.safetensors", K);
    snprintf(keep, sizeof keep, "%s/model_before.safetensors", T);
    snprintf(args, sizeof args, "cp %s %s", p, keep);
    (void)!system(args);
    snprintf(args, sizeof args, "-r %s -t --no-test lightning.trainer.max_steps=8", K);
    rc = ldm("K1", "LDM_TEST_CRASH_IN_CHECKPOINT=1", args);
    lt_report(rc == 128 + 9 || rc == 137, "crash: killed (SIGKILL) while writing", "exit %d", rc);
    LT_CHECK(same_file(p, keep), "crash: checkpoints/last is the previous, complete one");
    snprintf(q, sizeof q, "%s/checkpoints/last/state.ini", K);
    LT_CHECK(file_has(q, "global_step = 6\n"), "crash: its state says step 6");
    rc = ldm("K2", "LDM_TEST_CRASH_IN_CHECKPOINT=2", args);
    lt_report(rc == 128 + 9 || rc == 137, "crash: killed between moving the old checkpoint aside and the new in", "exit %d", rc);
    snprintf(q, sizeof q, "%s/checkpoints/last.old/model.safetensors", K);
    LT_CHECK(same_file(q, keep), "crash: the previous checkpoint survives as last.old");
    rc = ldm("K3", NULL, args);
    lt_report(rc == 0, "crash: -r resumes from what survived and finishes", "exit %d", rc);
    if (rc) show("K3");
    LT_CHECK(out_has("K3", "out", "resuming from") && out_has("K3", "out", "global step 6"), "crash: resumed from last.old at step 6");
    snprintf(q, sizeof q, "%s/checkpoints/last/state.ini", K);
    LT_CHECK(file_has(q, "global_step = 8\n"), "crash: the resumed run wrote step 8");
    snprintf(q, sizeof q, "%s/checkpoints/last.old", K);
    LT_CHECK(!exists(q), "crash: last.old removed once the new last is in place");
    {
        int stale = 0;
        snprintf(q, sizeof q, "%s/checkpoints", K);
        DIR *dd = opendir(q);
        struct dirent *e;
        while (dd && (e = readdir(dd)) != NULL) stale += !strncmp(e->d_name, ".tmp-", 5);
        if (dd) closedir(dd);
        LT_CHECK(stale == 0, "crash: the killed run's temporary directory is cleaned up");
    }

    /* ---- NaN/Inf loss ---- */
    snprintf(p, sizeof p, "%s/checkpoints/last/model.safetensors", K);
    snprintf(args, sizeof args, "cp %s %s", p, keep);
    (void)!system(args);
    snprintf(args, sizeof args, "-r %s -t lightning.trainer.max_steps=20 model.base_learning_rate=1e30", K);
    rc = ldm("N", NULL, args);
    lt_report(rc == 1, "nan: a diverging run exits 1", "exit %d", rc);
    LT_CHECK(out_has("N", "err", "training stopped") && (out_has("N", "err", "is NaN") || out_has("N", "err", "is Inf") || out_has("N", "err", "not finite")),
             "nan: the message says which loss and that training stopped");
    LT_CHECK(same_file(p, keep), "nan: checkpoints/last keeps the last good state");

    /* ---- test only ---- */
    snprintf(args, sizeof args, "--base %s --name T -l %s/logs model.params.ckpt_path=%s/checkpoints/last/model.safetensors", CFG, T, U);
    rc = ldm("T", NULL, args);
    lt_report(rc == 0, "test-only: ckpt_path run exits 0", "exit %d", rc);
    if (rc) show("T");
    {
        char tdir[800];
        if (logdir_of("T", tdir, sizeof tdir)) {
            char *a, *b;
            snprintf(p, sizeof p, "%s/test_summary.txt", tdir);
            snprintf(q, sizeof q, "%s/test_summary.txt", U);
            a = slurp(p, NULL);
            b = slurp(q, NULL);
            /* same weights, posterior mode: the same numbers (global_step differs: 0 vs 6) */
            char *pa = a ? strstr(a, "psnr = ") : NULL, *pb = b ? strstr(b, "psnr = ") : NULL;
            LT_CHECK(pa && pb && !strncmp(pa, pb, strcspn(pb, "\n") + 1) && strstr(a, "ssim = ") &&
                         !strncmp(strstr(a, "ssim = "), strstr(b, "ssim = "), 20),
                     "test-only: ckpt_path reproduces the trained model's PSNR and SSIM");
            free(a); free(b);
        } else LT_CHECK(0, "test-only: logdir");
    }
    snprintf(args, sizeof args, "-r %s", U);
    rc = ldm("R", NULL, args);
    lt_report(rc == 0 && out_has("R", "out", "test: "), "test-only: -r logdir without -t tests", "exit %d", rc);
    LT_CHECK(out_has("R", "out", "Resumed from") && logdir_of("U", U, sizeof U) && file_has(strcat(strcpy(p, U), "/test_summary.txt"), "global_step = 6\n"),
             "test-only: -r reports the checkpoint's global step");

    /* ---- config and command-line errors ---- */
    struct { const char *file, *text, *want1, *want2, *name; } bad[] = {
        {"bad_key.ini", "[lightning.trainer]\nmax_stepz = 5\n", "bad_key.ini:2", "max_stepz", "errors: unknown key names file:line"},
        {"bad_type.ini", "[lightning.trainer]\n\nmax_steps = \"ten\"\n", "bad_type.ini:3", "max_steps", "errors: wrong type names file:line"},
        {"bad_target.ini", "[model]\ntarget = ldm.models.autoencoder.AutoencoderKLX\n", "bad_target.ini:2",
         "ldm.models.autoencoder.AutoencoderKL", "errors: unknown model target names file:line and the known targets"},
        {"bad_loss.ini", "[model.params.lossconfig]\ntarget = VQLPIPSWithDiscriminator\n", "bad_loss.ini:2", "LPIPSWithDiscriminator",
         "errors: unknown loss target"},
        {"bad_cb.ini", "[lightning.callbacks.x]\ntarget = main.SomeCallback\n", "bad_cb.ini:2", "main.ImageLogger", "errors: unknown callback target"},
        {"bad_limit.ini", "[lightning.trainer]\nlimit_train_batches = \"all\"\n", "bad_limit.ini:2", "int (batches) or a float",
         "errors: limit_train_batches type"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", T, bad[i].file);
        writef(p, bad[i].text);
        snprintf(args, sizeof args, "--base %s %s -t --name E -l %s/logs", CFG, p, T);
        rc = ldm("E", NULL, args);
        int ok = rc == 1 && out_has("E", "err", bad[i].want1) && out_has("E", "err", bad[i].want2);
        lt_report(ok, bad[i].name, "exit %d", rc);
        if (!ok) show("E");
    }
    snprintf(args, sizeof args, "--base %s -t --name E -l %s/logs model.params.embed_dim=four", CFG, T);
    rc = ldm("E", NULL, args);
    lt_report(rc == 1 && out_has("E", "err", "<command line>:1"), "errors: a bad override names <command line>:N", "exit %d", rc);
#ifndef LDM_CUDA
    snprintf(args, sizeof args, "--base %s -t --name E -l %s/logs --gpus 0,", CFG, T);
    rc = ldm("E", NULL, args);
    lt_report(rc == 1 && out_has("E", "err", "CUDA"), "errors: --gpus without a CUDA build is a clear error", "exit %d", rc);
#endif
    snprintf(args, sizeof args, "--base %s -t --name E -r %s", CFG, U);
    rc = ldm("E", NULL, args);
    lt_report(rc == 2, "errors: -n with -r is a usage error", "exit %d", rc);
    rc = ldm("E", NULL, "--base");
    lt_report(rc == 2, "errors: no config is a usage error", "exit %d", rc);
    snprintf(args, sizeof args, "--base %s/nonexistent.ini -t", T);
    rc = ldm("E", NULL, args);
    lt_report(rc == 1 && out_has("E", "err", "nonexistent.ini"), "errors: a missing config file is named", "exit %d", rc);

    snprintf(args, sizeof args, "rm -rf %s", T);
    if (!lt_failed) (void)!system(args);
    else printf("outputs kept in %s\n", T);
    return lt_finish("test_driver");
}
