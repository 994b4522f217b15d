/* test_vol3d_driver.c - the 3-D volume latent diffusion system through the driver (build/ldm),
   end to end on examples/volgen.h's synthetic ellipsoid volumes (8^3 here):
   - the 3-D LDM config form: train_target (-t) and test_target (a test-only run; it inherits
     train_target), model.test_only_params (ckpt_path: a file, a logdir or, when empty, the
     newest run of the same --name; output_dir; sampler; cycle_test_data), data targets
     SimpleDataset (= VolumeDataset), limit_test_batches = generated batches;
   - config errors: target and train_target together, a test_target other than the trained
     one with -t, misspelled keys in test_only_params and model (did-you-mean), an unknown
     train_target (the known ones listed), sampler options for a model without them;
   - a 3-D AutoencoderKL trained with the volume loss (val/psnr, no SSIM/LPIPS for volumes),
     its test writing .nii.gz inputs/reconstructions readable by ldm_nifti_read: a non-cubic
     volume (W 12, H 8, T 4) comes back with dim = (12, 8, 4) and exactly the dataset's values
     (the window normalisation of the source voxels), i.e. the same orientation;
   - a 3-D LatentDiffusion (UNet dims 3) on that first stage's latents: trained with -t, its
     ImageLogger's mid-slice grids, then tested by the train command without -t, writing
     limit_test_batches sampled volumes (test_only_params.batch_size 1; the 8-volume test split cycled) into
     output_dir as .nii.gz of the data's shape plus PNGs of the middle slices;
   - statistics: the sampled volumes' mean, std, foreground fraction (normalised value > 0) and histogram
     against the data's, within the tolerances of STAT_TOL below.
   Runs from build/ (./ldm); everything it writes goes to a temporary directory. */
#if !defined(_XOPEN_SOURCE)
#define _XOPEN_SOURCE 700
#endif
#define LDM_IMPLEMENTATION
#include "../ldm_config.h"
#include "../ldm_data.h"
#include "ldm_test.h"
#include <unistd.h>

#include "driver_util.h"
#include "../examples/volgen.h"

#define S 8 /* volume side */

/* The first stage: f = 2, 8^3 -> 2 x 4^3. %s: the data root (three times). */
static const char *ae_cfg =
    "model:\n"
    "  base_learning_rate: 2.5e-4\n"
    "  train_target: ldm.models.autoencoder.AutoencoderKL\n"
    "  params:\n"
    "    embed_dim: 2\n"
    "    ddconfig: {dims: 3, double_z: true, z_channels: 2, resolution: 8, in_channels: 1, out_ch: 1, ch: 32, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}\n"
    "    lossconfig:\n"
    "      target: ldm.modules.losses.LPIPSWithDiscriminator\n"
    "      params: {disc_start: 100000000, kl_weight: 1.0e-6, perceptual_weight: 0.0, disc_dims: 3, disc_in_channels: 1, disc_num_layers: 1, disc_ndf: 8}\n"
    "  test_only_params: {output_dir: \"\"}\n"
    "data:\n"
    "  target: main.DataModuleFromConfig\n"
    "  params:\n"
    "    batch_size: 4\n"
    "    num_workers: 1\n"
    "    train: {target: SimpleDataset, params: {root: \"%s/train\", norm: window, a_min: 0.0, a_max: 1.0}}\n"
    "    validation: {target: SimpleDataset, params: {root: \"%s/val\", norm: window, a_min: 0.0, a_max: 1.0}}\n"
    "    test: {target: SimpleDataset, params: {root: \"%s/val\", norm: window, a_min: 0.0, a_max: 1.0}}\n"
    "lightning:\n"
    "  callbacks:\n"
    "    image_logger: {target: main.ImageLogger, params: {batch_frequency: 100000, max_images: 2, increase_log_steps: false, log_first_step: true}}\n"
    "  trainer: {max_steps: %d, limit_test_batches: 1, num_sanity_val_steps: 0, check_val_every_n_epoch: 5}\n";

/* The LDM: UNet dims 3 on 2 x 4^3 latents. %s: first-stage checkpoint, data root (3x), output dir. */
static const char *ldm_cfg =
    "model:\n"
    "  base_learning_rate: 2.5e-4\n"
    "  train_target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    "  params:\n"
    "    linear_start: 0.0015\n"
    "    linear_end: 0.0195\n"
    "    timesteps: 1000\n"
    "    image_size: 4\n"
    "    channels: 2\n"
    "    scale_by_std: true\n"
    "    use_ema: true\n"
    "    unet_config:\n"
    "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
    "      params: {dims: 3, image_size: 4, in_channels: 2, out_channels: 2, model_channels: 32, attention_resolutions: [], num_res_blocks: 1, channel_mult: [1, 2], num_heads: 1}\n"
    "    first_stage_config:\n"
    "      target: ldm.models.autoencoder.AutoencoderKL\n"
    "      params:\n"
    "        embed_dim: 2\n"
    "        ckpt_path: \"%s\"\n"
    "        ddconfig: {dims: 3, double_z: true, z_channels: 2, resolution: 8, in_channels: 1, out_ch: 1, ch: 32, ch_mult: [1, 2], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}\n"
    "        lossconfig: {target: torch.nn.Identity}\n"
    "    cond_stage_config: __is_unconditional__\n"
    "  test_only_params:\n"
    "    ckpt_path: \"\"\n"
    "    output_dir: \"%s\"\n"
    "    sampler: {ddim_steps: 25, ddim_eta: 0.0}\n"
    "    batch_size: 1\n"
    "data:\n"
    "  target: main.DataModuleFromConfig\n"
    "  params:\n"
    "    batch_size: 4\n"
    "    num_workers: 1\n"
    "    train: {target: SimpleDataset, params: {root: \"%s/train\", norm: window, a_min: 0.0, a_max: 1.0}}\n"
    "    validation: {target: SimpleDataset, params: {root: \"%s/val\", norm: window, a_min: 0.0, a_max: 1.0}}\n"
    "    test: {target: SimpleDataset, params: {root: \"%s/val\", norm: window, a_min: 0.0, a_max: 1.0}}\n"
    "lightning:\n"
    "  callbacks:\n"
    "    image_logger:\n"
    "      target: main.ImageLogger\n"
    "      params: {batch_frequency: 100000, max_images: 2, increase_log_steps: false, log_first_step: true, log_images_kwargs: {ddim_steps: 5, plot_progressive_rows: false}}\n"
    "  trainer: {max_steps: %d, accumulate_grad_batches: 1, limit_test_batches: 12, num_sanity_val_steps: 0, check_val_every_n_epoch: 1000}\n";

/* Sampled vs data statistics (normalised values in [-1, 1]): absolute differences of the
   mean, the std and the foreground fraction, and the L1 distance of the 8-bin histograms over
   [-1, 1] (values clipped). Measured here: trained 0.003, 0.007, 0.016, 0.16; the same LDM
   after 2 steps: 0.083, 0.056, 0.005, 0.45 (so mean, std and histogram tell them apart). */
static const double STAT_TOL[4] = {0.04, 0.04, 0.04, 0.25};
#define NBIN 8

typedef struct { double mean, std, fg, hist[NBIN]; long n; } vstats;
static void stats_add(vstats *s, double *sum2, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        s->mean += x[i];
        *sum2 += (double)x[i] * x[i];
        s->fg += x[i] > 0.0f;
        int b = (int)floor((x[i] + 1.0) * NBIN / 2.0);
        s->hist[b < 0 ? 0 : b >= NBIN ? NBIN - 1 : b] += 1;
    }
    s->n += (long)n;
}
static void stats_done(vstats *s, double sum2) {
    s->mean /= s->n;
    s->std = sqrt(sum2 / s->n - s->mean * s->mean);
    s->fg /= s->n;
    for (int b = 0; b < NBIN; b++) s->hist[b] /= s->n;
}
static double hist_l1(const vstats *a, const vstats *b) {
    double d = 0;
    for (int k = 0; k < NBIN; k++) d += fabs(a->hist[k] - b->hist[k]);
    return d;
}

/* Every NIfTI in dir whose name ends with suffix: count, each one's dim checked against (nx, ny, nz), statistics. */
static int nifti_dir(ldm_ctx *ctx, const char *dir, const char *suffix, int nx, int ny, int nz, vstats *st, int *bad_shape) {
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    double sum2 = 0;
    memset(st, 0, sizeof *st);
    *bad_shape = 0;
    while (d && (e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name), ls = strlen(suffix);
        if (l <= ls || strcmp(e->d_name + l - ls, suffix)) continue;
        char p[1400];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        ldm_nifti v;
        if (ldm_nifti_read(ctx, p, &v)) { printf("  %s\n", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); *bad_shape = 1; continue; }
        if (v.dim[0] != 3 || v.dim[1] != nx || v.dim[2] != ny || v.dim[3] != nz) *bad_shape = 1;
        else stats_add(st, &sum2, v.data, v.nvox);
        ldm_nifti_free(&v);
        n++;
    }
    if (d) closedir(d);
    if (st->n) stats_done(st, sum2);
    return n;
}

int main(void) {
    if (!lt_mkdtemp(T, sizeof T, "ldm_test_vol3d_driver")) return 1;
    if (!exists("./ldm")) { printf("FAIL ./ldm is not built (run ./build.sh)\n"); return 1; }
    ldm_ctx *ctx;
    ldm_settings set;
    memset(&set, 0, sizeof set);
    if (ldm_ctx_create(&ctx, &set)) { printf("FAIL context\n"); return 1; }
    static char text[8192], args[3000], p[1400], D[1000], ae_cfg_path[700], ldm_cfg_path[700];
    char A[800] = "", L[800] = "", L2[800] = "";

    /* data: 24 training and 8 test volumes; the data's statistics after the window norm */
    snprintf(D, sizeof D, "%s/vol", T);
    mkdir(D, 0777);
    snprintf(p, sizeof p, "%s/train", D); mkdir(p, 0777);
    LT_CHECK(ex_volgen_write(ctx, p, 24, S, 1) == 0, "data: 24 training volumes written");
    snprintf(p, sizeof p, "%s/val", D); mkdir(p, 0777);
    LT_CHECK(ex_volgen_write(ctx, p, 8, S, 2) == 0, "data: 8 test volumes written");
    vstats data;
    {
        double sum2 = 0;
        float v[S * S * S];
        memset(&data, 0, sizeof data);
        for (int k = 0; k < 24; k++) {
            ex_volgen_one(S, 1, k, v);
            for (int i = 0; i < S * S * S; i++) { float y = v[i] * 2.0f - 1.0f; v[i] = y < -1 ? -1 : y > 1 ? 1 : y; }
            stats_add(&data, &sum2, v, S * S * S);
        }
        stats_done(&data, sum2);
        printf("  data: mean %.4f std %.4f foreground %.4f\n", data.mean, data.std, data.fg);
    }

    /* ---- config errors (before anything is built) ---- */
    snprintf(ae_cfg_path, sizeof ae_cfg_path, "%s/ae.yaml", T);
    snprintf(text, sizeof text, ae_cfg, D, D, D, 120);
    writef(ae_cfg_path, text);
    struct { const char *tag, *ovr, *flags, *want; } errs[] = {
        {"E1", "model.target=AutoencoderKL", "-t", "give target or train_target, not both"},
        {"E2", "model.test_target=ldm.models.diffusion.ddpm.LatentDiffusion", "-t", "differs from the trained"},
        {"E3", "model.test_only_params.output_dri=x", "", "did you mean 'output_dir'"},
        {"E4", "model.train_targt=AutoencoderKL", "-t", "did you mean 'train_target'"},
        {"E5", "model.train_target=ldm.models.autoencoder.AutoencoderKLL", "-t", "ldm.models.autoencoder.AutoencoderKL"},
        {"E6", "model.test_only_params.sampler.ddim_steps=5", "", "test takes no sampler options"},
        {"E7", "model.test_only_params.cycle_test_data=maybe", "", "cycle_test_data"},
        {"E8", "model.test_only_params.ckpt_path=/nonexistent", "", "no model.safetensors there"},
    };
    for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++) {
        snprintf(args, sizeof args, "--base %s %s --name %s -l %s/logs %s", ae_cfg_path, errs[i].flags, errs[i].tag, T, errs[i].ovr);
        int rc = ldm(errs[i].tag, NULL, args);
        char name[200];
        snprintf(name, sizeof name, "config error %s: %s -> exit 1 naming '%s'", errs[i].tag, errs[i].ovr, errs[i].want);
        lt_report(rc == 1 && out_has(errs[i].tag, "err", errs[i].want), name, "exit %d", rc);
        if (rc != 1 || !out_has(errs[i].tag, "err", errs[i].want)) show(errs[i].tag);
    }
    /* a test-only run of a config form without a run of that name to test */
    snprintf(args, sizeof args, "--base %s --name NORUN -l %s/logs", ae_cfg_path, T);
    int rc = ldm("NORUN", NULL, args);
    lt_report(rc == 1 && out_has("NORUN", "err", "no ") && out_has("NORUN", "err", "_NORUN/checkpoints/last to test"),
              "test-only run with nothing to test: an error naming what it looked for", "exit %d", rc);

    /* ---- the first stage: train (-t), volume metrics, test outputs ---- */
    snprintf(args, sizeof args, "--base %s -t --name AE -l %s/logs", ae_cfg_path, T);
    rc = ldm("AE", NULL, args);
    lt_report(rc == 0, "3-D autoencoder: trains through the driver (train_target)", "exit %d", rc);
    if (rc) show("AE");
    LT_CHECK(logdir_of("AE", A, sizeof A), "3-D autoencoder: logdir");
    snprintf(p, sizeof p, "%s/metrics.csv", A);
    LT_CHECK(file_has(p, "val/psnr") && !file_has(p, "val/ssim"), "3-D autoencoder: metrics.csv has val/psnr, no SSIM column (not a volume metric)");
    LT_CHECK(out_has("AE", "out", "val/psnr") && !out_has("AE", "out", "val/ssim"), "3-D autoencoder: the validation line shows PSNR, no SSIM");
    {
        /* the ImageLogger's grid of volumes: middle slices (8 x 8 each, 2 images: 2 x (8 + 2) + 2 wide) */
        char dir[900];
        snprintf(dir, sizeof dir, "%s/images/train", A);
        DIR *d = opendir(dir);
        struct dirent *e;
        int w = 0, h = 0, c = 0, found = 0;
        while (d && (e = readdir(d)) != NULL)
            if (!strncmp(e->d_name, "inputs_gs-", 10)) {
                snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
                found = stbi_info(p, &w, &h, &c);
                break;
            }
        if (d) closedir(d);
        lt_report(found && w == 2 * (S + 2) + 2 && h == S + 4, "3-D autoencoder: ImageLogger grid of middle slices", "found %d, %dx%d", found, w, h);
    }
    {
        vstats st;
        int bad;
        snprintf(p, sizeof p, "%s/images/test", A);
        int n = nifti_dir(ctx, p, "_reconstructions.nii.gz", S, S, S, &st, &bad);
        lt_report(n == 4 && !bad, "3-D autoencoder test: 4 reconstructions as 8x8x8 .nii.gz (limit_test_batches 1 x batch 4)", "%d files, bad %d", n, bad);
        snprintf(p, sizeof p, "%s/images/test/000000_inputs.png", A);
        int w = 0, h = 0, c = 0;
        lt_report(stbi_info(p, &w, &h, &c) && w == 3 * S + 4 && h == S, "3-D autoencoder test: PNG of the three middle slices", "%dx%d", w, h);
        snprintf(p, sizeof p, "%s/test_summary.txt", A);
        LT_CHECK(file_has(p, "psnr = ") && file_has(p, "ssim = n/a"), "3-D autoencoder test: PSNR in test_summary.txt, SSIM n/a");
    }

    /* orientation: a non-cubic volume through a test-only run comes back as written */
    {
        snprintf(p, sizeof p, "%s/orient", T);
        mkdir(p, 0777);
        ldm_nifti v = ldm_nifti_make(12, 8, 4);   /* nx = W, ny = H, nz = T */
        v.nvox = 12 * 8 * 4;
        float src[12 * 8 * 4];
        v.data = src;
        for (int k = 0; k < 4; k++)
            for (int j = 0; j < 8; j++)
                for (int i = 0; i < 12; i++) src[(k * 8 + j) * 12 + i] = (float)(0.02 * i + 0.05 * j + 0.2 * k);
        snprintf(p, sizeof p, "%s/orient/a.nii.gz", T);
        LT_CHECK(ldm_nifti_write(ctx, p, &v, LDM_NII_FLOAT32) == 0, "orientation: source volume written");
        snprintf(args, sizeof args,
                 "--base %s --name OR -l %s/logs model.test_only_params.ckpt_path=%s model.test_only_params.output_dir=%s/orient_out "
                 "model.test_only_params.batch_size=1 data.params.test.params.root=%s/orient",
                 ae_cfg_path, T, A, T, T);
        rc = ldm("OR", NULL, args);
        lt_report(rc == 0 && out_has("OR", "out", "Testing the weights of"), "test-only run: test_only_params.ckpt_path = a logdir", "exit %d", rc);
        if (rc) show("OR");
        ldm_nifti o;
        snprintf(p, sizeof p, "%s/orient_out/000000_inputs.nii.gz", T);
        int ok = ldm_nifti_read(ctx, p, &o) == 0;
        if (!ok) printf("  %s\n", ldm_ctx_error(ctx));
        int same = ok && o.dim[0] == 3 && o.dim[1] == 12 && o.dim[2] == 8 && o.dim[3] == 4;
        double worst = 0;
        for (int i = 0; same && i < 12 * 8 * 4; i++) {
            double want = src[i] * 2.0 - 1.0;
            want = want < -1 ? -1 : want > 1 ? 1 : want;
            double d = fabs(o.data[i] - want);
            if (d > worst) worst = d;
        }
        lt_report(same && worst < 1e-6, "orientation: output_dir's inputs .nii.gz is 12x8x4 with the dataset's voxels in place",
                  "dims %d %d %d %d, max err %g", ok ? o.dim[0] : -1, ok ? o.dim[1] : -1, ok ? o.dim[2] : -1, ok ? o.dim[3] : -1, worst);
        if (ok) ldm_nifti_free(&o);
        snprintf(p, sizeof p, "%s/orient_out/000000_reconstructions.nii.gz", T);
        ok = ldm_nifti_read(ctx, p, &o) == 0;
        LT_CHECK(ok && o.dim[1] == 12 && o.dim[2] == 8 && o.dim[3] == 4, "orientation: the reconstruction has the same shape");
        if (ok) ldm_nifti_free(&o);
    }

    /* an explicit test_target; cycle_test_data false: Lightning's min(limit, batches of the split) */
    snprintf(args, sizeof args,
             "--base %s --name TT -l %s/logs model.test_target=AutoencoderKL model.test_only_params.ckpt_path=%s/checkpoints/last "
             "model.test_only_params.output_dir=%s/tt_out model.test_only_params.cycle_test_data=false lightning.trainer.limit_test_batches=3",
             ae_cfg_path, T, A, T);
    rc = ldm("TT", NULL, args);
    lt_report(rc == 0 && out_has("TT", "out", "Testing on 2 batches"), "test-only run: test_target, ckpt_path = a checkpoint dir", "exit %d", rc);
    if (rc) show("TT");
    {
        vstats st;
        int bad;
        snprintf(p, sizeof p, "%s/tt_out", T);
        int n = nifti_dir(ctx, p, "_reconstructions.nii.gz", S, S, S, &st, &bad);
        lt_report(n == 8 && !bad, "cycle_test_data false: limit_test_batches 3 of a 2-batch split tests 8 volumes", "%d files", n);
    }

    /* ---- the LDM on the first stage's latents ---- */
    char fs[1000], outdir[900];
    snprintf(fs, sizeof fs, "%s/checkpoints/last/model.safetensors", A);
    snprintf(outdir, sizeof outdir, "%s/samples", T);
    snprintf(ldm_cfg_path, sizeof ldm_cfg_path, "%s/ldm.yaml", T);
    snprintf(text, sizeof text, ldm_cfg, fs, outdir, D, D, D, 300);
    writef(ldm_cfg_path, text);
    snprintf(args, sizeof args, "--base %s -t --no-test --name LDM -l %s/logs", ldm_cfg_path, T);
    rc = ldm("LDM", NULL, args);
    lt_report(rc == 0, "3-D LDM: trains through the driver (UNet dims 3 on the 3-D first stage's latents)", "exit %d", rc);
    if (rc) show("LDM");
    LT_CHECK(logdir_of("LDM", L, sizeof L), "3-D LDM: logdir");
    snprintf(p, sizeof p, "%s/images/train/samples_gs-000000_e-000000_b-000000.png", L);
    {
        int w = 0, h = 0, c = 0;
        lt_report(stbi_info(p, &w, &h, &c) && w == 2 * (S + 2) + 2, "3-D LDM: ImageLogger samples grid (middle slices)", "%dx%d", w, h);
        snprintf(p, sizeof p, "%s/images/train/diffusion_row_gs-000000_e-000000_b-000000.png", L);
        LT_CHECK(stbi_info(p, &w, &h, &c), "3-D LDM: ImageLogger diffusion_row of middle slices");
    }
    /* the test: the train command without -t (newest LDM run), test_target inherited */
    sleep(1);   /* a new logdir name (timestamp) */
    snprintf(args, sizeof args, "--base %s --name LDM -l %s/logs", ldm_cfg_path, T);
    rc = ldm("LDMT", NULL, args);
    char want[1000];
    snprintf(want, sizeof want, "Testing the weights of %s/checkpoints/last/model.safetensors", L);
    lt_report(rc == 0 && out_has("LDMT", "out", want), "3-D LDM test-only run: finds the newest run of the name (test_target = train_target)",
              "exit %d", rc);
    if (rc) show("LDMT");
    {
        vstats st;
        int bad;
        int n = nifti_dir(ctx, outdir, "_samples.nii.gz", S, S, S, &st, &bad);
        lt_report(n == 12 && !bad, "3-D LDM test: limit_test_batches 12 (test_only_params.batch_size 1) = 12 sampled 8x8x8 .nii.gz (the 8-volume split cycled)",
                  "%d files, bad shape %d", n, bad);
        snprintf(p, sizeof p, "%s/000011_samples.png", outdir);
        LT_CHECK(exists(p), "3-D LDM test: middle-slice PNGs next to the volumes");
        printf("  samples: mean %.4f std %.4f foreground %.4f histogram L1 %.4f (tolerances %.2f %.2f %.2f %.2f)\n", st.mean, st.std, st.fg,
               hist_l1(&st, &data), STAT_TOL[0], STAT_TOL[1], STAT_TOL[2], STAT_TOL[3]);
        lt_report(n && fabs(st.mean - data.mean) <= STAT_TOL[0], "statistics: sampled mean matches the data's", "%.4f vs %.4f", st.mean, data.mean);
        lt_report(n && fabs(st.std - data.std) <= STAT_TOL[1], "statistics: sampled std matches the data's", "%.4f vs %.4f", st.std, data.std);
        lt_report(n && fabs(st.fg - data.fg) <= STAT_TOL[2], "statistics: sampled foreground fraction matches the data's", "%.4f vs %.4f", st.fg,
                  data.fg);
        lt_report(n && hist_l1(&st, &data) <= STAT_TOL[3], "statistics: sampled intensity histogram matches the data's", "L1 %.4f",
                  hist_l1(&st, &data));
    }
    (void)L2;
    (void)CFG;
    ldm_ctx_destroy(ctx);
    if (lt_failed == 0) lt_rm_rf(T);
    return lt_finish("test_vol3d_driver");
}
