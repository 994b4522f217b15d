/* test_ldm_driver.c - the ldm driver (build/ldm) training and testing diffusion models through
   examples/model_diffusion.h, end to end on generated labelled images (two classes):
   - a tiny AutoencoderKL run, whose checkpoint then serves as the first stage
     (first_stage_config.params.ckpt_path) of a class-conditional LatentDiffusion run with a
     trainable ClassEmbedder (ucg_rate), scale_by_std, EMA, LambdaLinearScheduler warm-up and
     gradient accumulation;
   - the lr column of metrics.csv follows base_lr * LambdaLinearScheduler(step) exactly;
   - scale_by_std's factor is in the checkpoint; the EMA (model_ema.*) and the ClassEmbedder's
     optimizer state are there too;
   - the same run stopped by max_steps and resumed with -r ends with bitwise the same
     checkpoint (weights, EMA, optimizer moments);
   - the ImageLogger writes CompVis's keys (inputs, reconstruction, diffusion_row, samples,
     denoise_row, progressive_row, guided samples) as PNGs of the right size;
   - a test-only run (-r without -t) writes samples for limit_test_batches batches;
   - a pixel-space DDPM config trains, logs its rows and tests;
   - lr_scale: a run conditioned on the first-stage latent of its own degraded input;
   - configs/sr_photos.yaml and configs/fmnist_ldm.yaml run (two steps; Fashion-MNIST's skipped
     without the dataset);
   - config errors: LatentDiffusion without a first stage, DDPM with a cond stage, an unknown
     scheduler, a bad log_images_kwargs key, all naming the file.
   Runs from build/ (./ldm); everything it writes goes to a temporary directory. */
#if !defined(_XOPEN_SOURCE)
#define _XOPEN_SOURCE 700
#endif
#define LDM_IMPLEMENTATION
#include "ldm_test.h"
#include <unistd.h>

#include "driver_util.h"

/* Class 0: horizontal stripes, class 1: vertical stripes (phases vary). */
static void make_class_images(const char *dir, int cls, int count, int size) {
    char p[1600];
    unsigned char *px = (unsigned char *)malloc((size_t)size * size * 3);
    for (int k = 0; k < count; k++) {
        for (int y = 0; y < size; y++)
            for (int x = 0; x < size; x++)
                for (int c = 0; c < 3; c++) {
                    double u = cls ? x : y;
                    double v = 0.5 + 0.4 * sin(0.9 * u + 0.7 * k + 0.3 * c);
                    px[((size_t)y * size + x) * 3 + c] = (unsigned char)(v * 255);
                }
        snprintf(p, sizeof p, "%s/img_%02d.png", dir, k);
        stbi_write_png(p, size, size, 3, px, size * 3);
    }
    free(px);
}

static const char *ae_cfg =
    "[model]\nbase_learning_rate = 1.0e-4\ntarget = ldm.models.autoencoder.AutoencoderKL\n"
    "[model.params]\nembed_dim = 4\n"
    "[model.params.ddconfig]\ndouble_z = true\nz_channels = 4\nresolution = 16\nin_channels = 3\nout_ch = 3\nch = 32\n"
    "ch_mult = 1, 2\nnum_res_blocks = 1\nattn_resolutions = []\ndropout = 0.0\n"
    "[model.params.lossconfig]\ntarget = LPIPSWithDiscriminator\n"
    "[model.params.lossconfig.params]\ndisc_start = 100\nkl_weight = 1.0e-6\nperceptual_weight = 0.0\ndisc_num_layers = 2\n"
    "[data]\ntarget = main.DataModuleFromConfig\n"
    "[data.params]\nbatch_size = 2\nnum_workers = 1\n"
    "[data.params.train]\ntarget = ldm.data.folder.ImageFolder\n"
    "[data.params.train.params]\nroot = \"%s/img\"\nsize = 16\n"
    "[lightning.trainer]\nmax_steps = 2\n"
    "[lightning.callbacks.image_logger]\ntarget = main.ImageLogger\n"
    "[lightning.callbacks.image_logger.params]\ndisabled = true\n";

/* The LDM: UNet + SpatialTransformer on a 4x8x8 latent, ClassEmbedder context (3 classes: the
   third is the unconditional one ucg_rate drops to). */
static const char *ldm_cfg =
    "model:\n"
    "  base_learning_rate: 1.0e-4\n"
    "  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    "  params:\n"
    "    linear_start: 0.0015\n    linear_end: 0.0195\n    timesteps: 50\n    log_every_t: 10\n"
    "    first_stage_key: image\n    cond_stage_key: class_label\n    image_size: 8\n    channels: 4\n"
    "    cond_stage_trainable: true\n    conditioning_key: crossattn\n    monitor: val/loss_simple_ema\n    scale_by_std: true\n"
    "    scheduler_config:\n"
    "      target: ldm.lr_scheduler.LambdaLinearScheduler\n"
    "      params: {warm_up_steps: [3], cycle_lengths: [10000000000000], f_start: [1.e-6], f_max: [1.], f_min: [1.]}\n"
    "    unet_config:\n"
    "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
    "      params: {image_size: 8, in_channels: 4, out_channels: 4, model_channels: 32, attention_resolutions: [2], "
    "num_res_blocks: 1, channel_mult: [1, 2], num_head_channels: 32, use_spatial_transformer: true, transformer_depth: 1, context_dim: 32}\n"
    "    first_stage_config:\n"
    "      target: ldm.models.autoencoder.AutoencoderKL\n"
    "      params:\n"
    "        embed_dim: 4\n        ckpt_path: \"%s\"\n"
    "        ddconfig: {double_z: true, z_channels: 4, resolution: 16, in_channels: 3, out_ch: 3, ch: 32, ch_mult: [1, 2], "
    "num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}\n"
    "        lossconfig: {target: torch.nn.Identity}\n"
    "    cond_stage_config:\n"
    "      target: ldm.modules.encoders.modules.ClassEmbedder\n"
    "      params: {embed_dim: 32, n_classes: 3, key: class_label, ucg_rate: 0.2}\n"
    "data:\n"
    "  target: main.DataModuleFromConfig\n"
    "  params:\n"
    "    batch_size: 2\n    num_workers: 1\n"
    "    train:\n      target: ldm.data.folder.ImageFolder\n      params: {root: \"%s/img\", size: 16, labels: true}\n"
    "    validation:\n      target: ldm.data.folder.ImageFolder\n      params: {root: \"%s/img\", size: 16, labels: true, max_items: 4}\n"
    "lightning:\n"
    "  callbacks:\n"
    "    image_logger:\n"
    "      target: main.ImageLogger\n"
    "      params:\n"
    "        batch_frequency: 4\n        max_images: 2\n"
    "        log_images_kwargs: {ddim_steps: 5, plot_denoise_rows: true, unconditional_guidance_scale: 2.0}\n"
    "  trainer:\n    max_steps: 6\n    accumulate_grad_batches: 2\n    log_every_n_steps: 1\n    val_check_interval: 4\n"
    "    num_sanity_val_steps: 0\n    limit_test_batches: 1\n";

static const char *ddpm_cfg =
    "model:\n"
    "  base_learning_rate: 1.0e-4\n"
    "  target: ldm.models.diffusion.ddpm.DDPM\n"
    "  params:\n"
    "    timesteps: 40\n    log_every_t: 10\n    image_size: 16\n    channels: 3\n    first_stage_key: image\n"
    "    unet_config:\n"
    "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
    "      params: {image_size: 16, in_channels: 3, out_channels: 3, model_channels: 32, attention_resolutions: [2], "
    "num_res_blocks: 1, channel_mult: [1, 2], num_head_channels: 32}\n"
    "data:\n"
    "  target: main.DataModuleFromConfig\n"
    "  params:\n"
    "    batch_size: 2\n    num_workers: 1\n"
    "    train:\n      target: ldm.data.folder.ImageFolder\n      params: {root: \"%s/img\", size: 16}\n"
    "    validation:\n      target: ldm.data.folder.ImageFolder\n      params: {root: \"%s/img\", size: 16, max_items: 2}\n"
    "lightning:\n"
    "  callbacks:\n"
    "    image_logger: {target: main.ImageLogger, params: {batch_frequency: 2, max_images: 2}}\n"
    "  trainer: {max_steps: 3, limit_test_batches: 1}\n";

/* PNG width x height from the IHDR chunk, or 0. */
static int png_size(const char *path, int *w, int *h) {
    unsigned char b[24];
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t n = fread(b, 1, sizeof b, f);
    fclose(f);
    if (n != sizeof b || memcmp(b + 1, "PNG", 3) || memcmp(b + 12, "IHDR", 4)) return 0;
    *w = (b[16] << 24) | (b[17] << 16) | (b[18] << 8) | b[19];
    *h = (b[20] << 24) | (b[21] << 16) | (b[22] << 8) | b[23];
    return 1;
}

/* How many tensors of a checkpoint are named `name` (exact) or start with it; -1 when the file
   does not open. value (may be NULL) gets the first match's first element. */
static int ckpt_count(const char *path, const char *name, int exact, float *value) {
    ldm_ctx *ctx;
    ldm_settings st;
    memset(&st, 0, sizeof st);
    st.threads = 1;
    if (ldm_ctx_create(&ctx, &st)) return -1;
    ldm_weights *w;
    int n = -1;
    if (!ldm_weights_open(ctx, &w, path)) {
        n = 0;
        for (int i = 0; i < ldm_weights_count(w); i++) {
            const char *nm = ldm_weights_info(w, i)->name;
            if (exact ? strcmp(nm, name) : strncmp(nm, name, strlen(name))) continue;
            if (!n++ && value && ldm_weights_info(w, i)->numel >= 1) {
                float *h = (float *)malloc(sizeof(float) * (size_t)ldm_weights_info(w, i)->numel);
                if (h && !ldm_weights_read(ctx, w, i, h)) *value = h[0];
                free(h);
            }
        }
        ldm_weights_close(w);
    }
    ldm_ctx_destroy(ctx);
    return n;
}

/* The lr column (third) of metrics.csv by step (rows with a train loss). */
static int read_lrs(const char *csv, double *lr, int max) {
    FILE *f = fopen(csv, "r");
    if (!f) return 0;
    char line[4096];
    int n = 0;
    if (!fgets(line, sizeof line, f)) { fclose(f); return 0; }
    while (fgets(line, sizeof line, f)) {
        long step, epoch;
        double l;
        if (sscanf(line, "%ld,%ld,%lf", &step, &epoch, &l) == 3 && step >= 0 && step < max) { lr[step] = l; n++; }
    }
    fclose(f);
    return n;
}

int main(void) {
    snprintf(T, sizeof T, "/tmp/ldm_test_ldm_driver_");
    for (int i = 0; i < 6; i++) strcat(T, "X"); /* mkdtemp's template */
    if (!mkdtemp(T)) { printf("FAIL mkdtemp\n"); return 1; }
    if (!exists("./ldm")) { printf("FAIL ./ldm is not built (run ./build.sh)\n"); return 1; }
    char p[1400], args[3000], A[800] = "", L[800] = "", R[800] = "", D[800] = "";
    snprintf(p, sizeof p, "%s/img", T);
    mkdir(p, 0777);
    for (int c = 0; c < 2; c++) {
        snprintf(p, sizeof p, "%s/img/class%d", T, c);
        mkdir(p, 0777);
        make_class_images(p, c, 4, 16);
    }
    static char text[8192];

    /* ---- the first stage ---- */
    snprintf(text, sizeof text, ae_cfg, T);
    snprintf(CFG, sizeof CFG, "%s/ae.ini", T);
    writef(CFG, text);
    snprintf(args, sizeof args, "--base %s -t --name AE -l %s/logs --no-test", CFG, T);
    int rc = ldm("AE", NULL, args);
    lt_report(rc == 0, "first stage: the autoencoder run exits 0", "exit %d", rc);
    if (rc) show("AE");
    LT_CHECK(logdir_of("AE", A, sizeof A), "first stage: logdir");

    /* ---- the LatentDiffusion run ---- */
    char fs[1000];
    snprintf(fs, sizeof fs, "%s/checkpoints/last/model.safetensors", A);
    snprintf(text, sizeof text, ldm_cfg, fs, T, T);
    char ldmcfg[700];
    snprintf(ldmcfg, sizeof ldmcfg, "%s/ldm.yaml", T);
    writef(ldmcfg, text);
    snprintf(args, sizeof args, "--base %s -t --name L -l %s/logs", ldmcfg, T);
    rc = ldm("L", NULL, args);
    lt_report(rc == 0, "LatentDiffusion: the run exits 0", "exit %d", rc);
    if (rc) show("L");
    LT_CHECK(logdir_of("L", L, sizeof L), "LatentDiffusion: logdir");
    LT_CHECK(out_has("L", "out", "First stage restored from"), "LatentDiffusion: the first stage is loaded from its ckpt_path");
    LT_CHECK(out_has("L", "out", "setting self.scale_factor to"), "LatentDiffusion: scale_by_std runs at the first batch");
    LT_CHECK(out_has("L", "out", "Setting up LambdaLR scheduler"), "LatentDiffusion: the scheduler is set up");
    {
        /* lr(step) = base_lr * f(step), f linear from f_start to f_max over 3 warm-up steps */
        double lr[16], base = 2 * 2 * 1.0e-4;
        for (int i = 0; i < 16; i++) lr[i] = -1;
        snprintf(p, sizeof p, "%s/metrics.csv", L);
        int n = read_lrs(p, lr, 16), ok = n >= 6;
        double worst = 0;
        for (int s = 0; s < 6 && ok; s++) {
            double f = s < 3 ? (1.0 - 1e-6) / 3.0 * s + 1e-6 : 1.0;
            double e = fabs(lr[s] - base * f) / (base * f);
            if (!(e < 1e-6)) ok = 0;
            if (e > worst) worst = e;
        }
        lt_report(ok, "LatentDiffusion: metrics.csv's lr follows LambdaLinearScheduler's warm-up", "%d rows, worst rel err %g (lr[1] %g)", n, worst,
                  lr[1]);
    }
    {
        snprintf(p, sizeof p, "%s/checkpoints/last/model.safetensors", L);
        float sf = 0;
        int has_sf = ckpt_count(p, "scale_factor", 1, &sf), has_ema = ckpt_count(p, "model_ema.diffusion_model", 0, NULL);
        int has_cond = ckpt_count(p, "cond_stage_model.embedding.weight", 1, NULL), has_first = ckpt_count(p, "first_stage_model.encoder.", 0, NULL);
        lt_report(has_sf == 1 && sf > 0 && sf != 1.0f && has_ema > 0 && has_cond == 1 && has_first > 0,
                  "LatentDiffusion: the checkpoint has scale_factor, model_ema.*, cond_stage_model.*, first_stage_model.*",
                  "scale_factor %d (%g), ema %d, cond %d, first %d", has_sf, (double)sf, has_ema, has_cond, has_first);
    }
    snprintf(p, sizeof p, "%s/checkpoints/last/optimizer_0.1.safetensors", L);
    LT_CHECK(exists(p), "LatentDiffusion: the trainable ClassEmbedder's AdamW state is saved (optimizer_0.1)");
    {
        static const char *const keys[] = {"inputs", "reconstruction", "diffusion_row", "samples", "denoise_row", "progressive_row",
                                           "samples_cfg_scale_2.00"};
        int ok = 1, w, h;
        char miss[256] = "";
        for (int k = 0; k < 7; k++) {
            snprintf(p, sizeof p, "%s/images/train/%s_gs-000004_e-000002_b-000000.png", L, keys[k]);
            if (!png_size(p, &w, &h)) { ok = 0; snprintf(miss, sizeof miss, "%s", keys[k]); }
        }
        lt_report(ok, "LatentDiffusion: ImageLogger writes every key at step 4 (epoch 2: 2 steps an epoch)", "missing %s", miss);
        /* diffusion_row: 2 rows (n_row) x 6 steps (0, 10, 20, 30, 40, 49) of 16x16 with make_grid's
           padding 2 (the logger writes a single image as it is) */
        snprintf(p, sizeof p, "%s/images/train/diffusion_row_gs-000004_e-000002_b-000000.png", L);
        int okd = png_size(p, &w, &h) && w == 6 * 18 + 2 && h == 2 * 18 + 2;
        lt_report(okd, "LatentDiffusion: diffusion_row is 2 rows of 6 steps", "%dx%d", w, h);
        /* progressive_row: 2 samples x (T-1 and every 10th step: 49, 40, 30, 20, 10, 0) */
        snprintf(p, sizeof p, "%s/images/train/progressive_row_gs-000004_e-000002_b-000000.png", L);
        okd = png_size(p, &w, &h) && w == 6 * 18 + 2 && h == 2 * 18 + 2;
        lt_report(okd, "LatentDiffusion: progressive_row is 2 samples of 6 x0 predictions", "%dx%d", w, h);
    }
    snprintf(p, sizeof p, "%s/images/test/000000_samples.png", L);
    LT_CHECK(exists(p), "LatentDiffusion: the test writes samples");

    /* ---- stopped at step 2 (mid-warm-up), resumed to 6: the same final checkpoint ---- */
    snprintf(args, sizeof args, "--base %s -t --name R -l %s/logs --no-test lightning.trainer.max_steps=2", ldmcfg, T);
    rc = ldm("R1", NULL, args);
    LT_CHECK(rc == 0 && logdir_of("R", R, sizeof R), "resume: the first part runs");
    if (rc) show("R1");
    snprintf(args, sizeof args, "-r %s -t --no-test lightning.trainer.max_steps=6", R);
    rc = ldm("R2", NULL, args);
    lt_report(rc == 0, "resume: the second part runs", "exit %d", rc);
    if (rc) show("R2");
    {
        const char *files[3] = {"model.safetensors", "optimizer_0.safetensors", "optimizer_0.1.safetensors"};
        for (int i = 0; i < 3; i++) {
            char a[1400], b[1400], what[160];
            snprintf(a, sizeof a, "%s/checkpoints/last/%s", L, files[i]);
            snprintf(b, sizeof b, "%s/checkpoints/last/%s", R, files[i]);
            snprintf(what, sizeof what, "resume: %s equals the uninterrupted run's bit for bit", files[i]);
            LT_CHECK(same_file(a, b), what);
        }
    }

    /* ---- a test-only run of the trained model ---- */
    snprintf(args, sizeof args, "-r %s lightning.trainer.limit_test_batches=2", L);
    rc = ldm("LT", NULL, args);
    lt_report(rc == 0 && out_has("LT", "out", "test: 4 images"), "test-only: -r without -t samples limit_test_batches batches", "exit %d", rc);
    if (rc) show("LT");

    /* ---- DDPM in pixel space ---- */
    snprintf(text, sizeof text, ddpm_cfg, T, T);
    char ddpmcfg[700];
    snprintf(ddpmcfg, sizeof ddpmcfg, "%s/ddpm.yaml", T);
    writef(ddpmcfg, text);
    snprintf(args, sizeof args, "--base %s -t --name D -l %s/logs", ddpmcfg, T);
    rc = ldm("D", NULL, args);
    lt_report(rc == 0, "DDPM: the run exits 0", "exit %d", rc);
    if (rc) show("D");
    LT_CHECK(logdir_of("D", D, sizeof D), "DDPM: logdir");
    {
        int w, h;
        snprintf(p, sizeof p, "%s/images/train/denoise_row_gs-000002_e-000000_b-000002.png", D);
        /* x_T, then t = 39 and every 10th (30, 20, 10, 0): 6 columns of 2 samples */
        int ok = png_size(p, &w, &h) && w == 6 * 18 + 2 && h == 2 * 18 + 2;
        lt_report(ok, "DDPM: denoise_row is 2 samples of 6 steps", "%dx%d", w, h);
        snprintf(p, sizeof p, "%s/images/test/000000_samples.png", D);
        LT_CHECK(exists(p), "DDPM: the test writes samples");
        snprintf(p, sizeof p, "%s/checkpoints/last/model.safetensors", D);
        int first = ckpt_count(p, "first_stage_model.", 0, NULL);
        int ok2 = first == 0 && ckpt_count(p, "model.diffusion_model.out.2.weight", 1, NULL) == 1 && ckpt_count(p, "betas", 1, NULL) == 1;
        lt_report(ok2, "DDPM: the checkpoint is model.diffusion_model.* and the schedule, no first stage", "first stage %d", first);
    }

    /* ---- lr_scale: the input degraded (down 2x, up again) and encoded is the concat conditioning ---- */
    snprintf(args, sizeof args,
             "--base %s -t --name S -l %s/logs lightning.trainer.max_steps=2 lightning.trainer.accumulate_grad_batches=1 "
             "model.params.lr_scale=2 model.params.cond_stage_config=__is_first_stage__ model.params.unet_config.params.in_channels=8 "
             "model.params.unet_config.params.use_spatial_transformer=false model.params.unet_config.params.context_dim=null "
             "lightning.callbacks.image_logger.params.log_images_kwargs.unconditional_guidance_scale=1.0 "
             "lightning.callbacks.image_logger.params.batch_frequency=1",
             ldmcfg, T);
    rc = ldm("S", NULL, args);
    lt_report(rc == 0, "lr_scale: a run conditioned on the degraded input's latent exits 0", "exit %d", rc);
    if (rc) show("S");
    {
        char S[800] = "";
        int w = 0, h = 0;
        if (logdir_of("S", S, sizeof S)) snprintf(p, sizeof p, "%s/images/test/000000_conditioning.png", S);
        lt_report(S[0] && png_size(p, &w, &h) && w == 16 && h == 16, "lr_scale: the test writes the degraded 16x16 conditioning", "%dx%d", w, h);
        /* ldm-sample --lr: an 8x8 image, upsampled 2x and encoded, gives 16x16 samples */
        char cfgdir[1000], proj[1400] = "", lr[800], outp[800];
        snprintf(cfgdir, sizeof cfgdir, "%s/configs", S);
        DIR *dd = opendir(cfgdir);
        struct dirent *de;
        while (dd && (de = readdir(dd)) != NULL)
            if (strstr(de->d_name, "-project.ini")) snprintf(proj, sizeof proj, "%s/%s", cfgdir, de->d_name);
        if (dd) closedir(dd);
        snprintf(lr, sizeof lr, "%s/lr8.png", T);
        snprintf(outp, sizeof outp, "%s/sr.png", T);
        unsigned char px[8 * 8 * 3];
        for (int i = 0; i < 8 * 8 * 3; i++) px[i] = (unsigned char)(40 + 20 * (i % 7));
        stbi_write_png(lr, 8, 8, 3, px, 8 * 3);
        snprintf(args, sizeof args, "--config %s --ckpt %s/checkpoints/last --lr %s --n 1 --steps 4 --out %s", proj, S, lr, outp);
        rc = ldm_bin("./ldm-sample", "SS", NULL, args);
        w = h = 0;
        lt_report(rc == 0 && png_size(outp, &w, &h) && w == 20 && h == 20, "lr_scale: ldm-sample --lr upsamples an 8x8 image to 16x16 samples (a 20x20 grid)",
                  "exit %d, %dx%d", rc, w, h);
        if (rc) show("SS");
    }

    /* ---- the shipped diffusion configs run (two steps; their first stages random) ---- */
    {
        static const char *ovr = "lightning.trainer.max_steps=2 lightning.trainer.num_sanity_val_steps=0 "
                                 "lightning.callbacks.image_logger.params.batch_frequency=2 "
                                 "lightning.callbacks.image_logger.params.log_images_kwargs.ddim_steps=4 "
                                 "lightning.trainer.limit_test_batches=1 data.params.num_workers=1";
        snprintf(args, sizeof args, "--base ../configs/sr_photos.yaml -t --name C1 -l %s/logs %s data.params.train.params.dataset.params.root=../data "
                 "data.params.validation.params.dataset.params.root=../data", T, ovr);
        rc = ldm("C1", NULL, args);
        lt_report(rc == 0 && out_has("C1", "out", "test: 3 images"), "configs/sr_photos.yaml trains two steps and samples the test",
                  "exit %d", rc);
        if (rc) show("C1");
        if (exists("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz")) {
            snprintf(args, sizeof args, "--base ../configs/fmnist_ldm.yaml -t --name C2 -l %s/logs %s data.params.batch_size=4 "
                     "data.params.train.params.max_items=16 data.params.validation.params.max_items=4 lightning.trainer.val_check_interval=2", T, ovr);
            rc = ldm("C2", NULL, args);
            lt_report(rc == 0 && out_has("C2", "out", "test: 4 images"), "configs/fmnist_ldm.yaml trains two steps and samples the test",
                      "exit %d", rc);
            if (rc) show("C2");
        } else printf("SKIP configs/fmnist_ldm.yaml: no Fashion-MNIST (./build.sh deps installs dataset-fashion-mnist)\n");
    }

    /* ---- config errors ---- */
    struct { const char *tag, *override, *needle, *what; } bad[] = {
        {"E1", "model.target=ldm.models.diffusion.ddpm.DDPM", "DDPM has no first stage", "DDPM with a first stage"},
        {"E2", "model.params.scheduler_config.target=ldm.lr_scheduler.Nope", "scheduler_config target 'ldm.lr_scheduler.Nope' is not supported",
         "an unknown scheduler"},
        {"E3", "lightning.callbacks.image_logger.params.log_images_kwargs.ddim_stepz=3", "ddim_stepz", "a misspelt log_images_kwargs key"},
        {"E4", "model.params.cond_stage_config.params.ucg_rate=2", "ucg_rate 2 is outside [0, 1]", "ucg_rate outside [0, 1]"},
        {"E6", "model.params.lr_scale=2", "cond_stage_config must be __is_first_stage__ or left out", "lr_scale with a ClassEmbedder"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(args, sizeof args, "--base %s -t --name E -l %s/logs %s", ldmcfg, T, bad[i].override);
        rc = ldm(bad[i].tag, NULL, args);
        char what[200];
        snprintf(what, sizeof what, "config error: %s is refused, naming the key", bad[i].what);
        lt_report(rc != 0 && out_has(bad[i].tag, "err", bad[i].needle), what, "exit %d", rc);
        if (!rc || !out_has(bad[i].tag, "err", bad[i].needle)) show(bad[i].tag);
    }
    snprintf(args, sizeof args, "--base %s -t --name E -l %s/logs model.target=ldm.models.diffusion.ddpm.LatentDiffusion", ddpmcfg, T);
    rc = ldm("E5", NULL, args);
    lt_report(rc != 0 && out_has("E5", "err", "ddpm.yaml") && out_has("E5", "err", "LatentDiffusion needs model.params.first_stage_config"),
              "config error: LatentDiffusion without a first stage names the file", "exit %d", rc);
    if (rc == 0) show("E5");

    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", T);
    if (lt_failed == 0 && system(cmd)) printf("note: could not remove %s\n", T);
    return lt_finish("test_ldm_driver");
}
