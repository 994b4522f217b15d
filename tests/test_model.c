/* test_model.c - the driver's model interface (examples/model.h) through its AutoencoderKL
   implementation (examples/model_autoencoder.h), without the driver: built from a config via
   the target registry, every call of the interface on a tiny model, the state dict saved and
   loaded into a second model, and config errors (bounds, unknown loss target, double_z). */
#define LDM_IMPLEMENTATION
#include "../examples/image_io.h"
#include "../examples/model_autoencoder.h"
#include "ldm_test.h"

static const char *const tiny =
    "[model]\nbase_learning_rate = 1e-4\ntarget = AutoencoderKL\n"
    "[model.params]\nembed_dim = 4\n"
    "[model.params.ddconfig]\nz_channels = 4\nresolution = 16\nch = 32\nch_mult = 1, 2\nnum_res_blocks = 1\nattn_resolutions = []\n"
    "[model.params.lossconfig]\ntarget = ldm.modules.losses.LPIPSWithDiscriminator\n"
    "[model.params.lossconfig.params]\ndisc_start = 0\nperceptual_weight = 0.0\nkl_weight = 1e-6\ndisc_in_channels = 3\n";

/* Builds model.* of text through a registry holding the AutoencoderKL class. */
static ldm_result build(const char *text, const char *extra, ldm_config **cfg, ex_model **m) {
    ldm_config_registry *reg;
    ldm_result r = ldm_config_create(cfg);
    if (r) return r;
    if ((r = ldm_config_load_string(*cfg, text, "tiny.ini", LDM_CONFIG_FORMAT_INI))) return r;
    if (extra && (r = ldm_config_load_string(*cfg, extra, "extra.ini", LDM_CONFIG_FORMAT_INI))) return r;
    if (ldm_config_registry_create(&reg)) return LDM_ERR_NOMEM;
    const ex_model_class *mc = &ex_autoencoder_class;
    r = ldm_config_registry_add(reg, mc->target, mc->aliases, mc->create, (void *)mc);
    if (!r) r = ldm_config_instantiate(*cfg, reg, ldm_config_find(ldm_config_root(*cfg), "model"), NULL, (void **)m);
    ldm_config_registry_destroy(reg);
    return r;
}

static int all_finite(const ldm_tensor *t, ldm_ctx *ctx) {
    float *h = (float *)malloc(sizeof(float) * (size_t)t->numel);
    int ok = h && !ldm_to_host(ctx, t, h);
    for (int64_t i = 0; ok && i < t->numel; i++) ok = isfinite(h[i]);
    free(h);
    return ok;
}

int main(void) {
    ldm_ctx *ctx;
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.seed = 5;
    if (ldm_ctx_create(&ctx, &s)) { printf("FAIL context\n"); return 1; }

    /* ---- built from the config through the registry ---- */
    ldm_config *cfg = NULL;
    ex_model *m = NULL;
    ldm_result r = build(tiny, NULL, &cfg, &m);
    lt_report(!r && m, "model: AutoencoderKL from its config via the registry", "%s", cfg ? ldm_config_error(cfg) : "");
    if (r || !m) return lt_finish("test_model");
    LT_CHECK(!strcmp(m->name, "AutoencoderKL") && !strcmp(m->monitor, "val/rec_loss") && m->n_log_keys == 11 && m->n_val_keys == 3
                 && m->n_test_keys == 5 && !m->pretrained,
             "model: declares its metrics, monitor and test columns");
    r = m->setup(m, ctx, NULL);
    lt_report(!r && m->n_params == 2 && !strcmp(m->params[0].name, "model") && !strcmp(m->params[1].name, "loss"),
              "model: setup builds the networks and names the parameter sets", "%s", ldm_ctx_error(ctx));
    r = m->configure_optimizers(m, ctx, 2e-4);
    LT_CHECK(!r && m->n_optim == 2 && !strcmp(m->optim[0].name, "aeloss") && !strcmp(m->optim[1].name, "discloss")
                 && ldm_nn_optim_lr(m->optim[1].opt) == 2e-4 && !m->optim[0].lr_lambda,
             "model: two optimizers (autoencoder, discriminator) at the given lr");

    /* ---- a batch of two 32x32 images ---- */
    static float img[2 * 3 * 32 * 32];
    for (int i = 0; i < 2 * 3 * 32 * 32; i++) img[i] = (float)sin(0.37 * i) * 0.8f;
    ldm_data_batch b;
    memset(&b, 0, sizeof b);
    b.size = 2;
    b.n_fields = 1;
    strcpy(b.field[0].name, "image");
    b.field[0].shape[0] = 2; b.field[0].shape[1] = 3; b.field[0].shape[2] = 32; b.field[0].shape[3] = 32;
    b.field[0].data = img;

    /* ---- training_step per optimizer: a finite scalar and the logged values ---- */
    ex_log log;
    log.n = 0;
    int ok = 1;
    for (int i = 0; i < m->n_optim && ok; i++) {
        ldm_set_grad_enabled(ctx, 1);
        ldm_tensor *loss = m->training_step(m, ctx, &b, 1, i, &log);
        ok = loss && loss->numel == 1 && all_finite(loss, ctx) && !ldm_backward(ctx, loss) && !ldm_nn_optim_step(ctx, m->optim[i].opt);
        ldm_nn_optim_zero_grad(ctx, m->optim[i].opt);
        ldm_step_reset(ctx);
    }
    lt_report(ok && ex_log_get(&log, "train/rec_loss") && ex_log_get(&log, "train/total_loss") && ex_log_get(&log, "train/disc_loss")
                  && ex_log_get(&log, "train/logits_fake"),
              "model: training_step(0) and (1) give losses that backpropagate, and log train/* values", "%s", ldm_ctx_error(ctx));

    /* ---- validation_step, log_images, test_step ---- */
    ldm_set_grad_enabled(ctx, 0);
    m->set_training(m, 0);
    log.n = 0;
    r = m->validation_step(m, ctx, &b, 1, &log);
    const double *psnr = ex_log_get(&log, "val/psnr");
    lt_report(!r && psnr && *psnr > 0 && ex_log_get(&log, "val/rec_loss") && ex_log_get(&log, "val/ssim") && !ex_log_get(&log, "val/lpips"),
              "model: validation_step logs val/* losses and PSNR/SSIM (no LPIPS without weights)", "%s", ldm_ctx_error(ctx));
    ldm_step_reset(ctx);
    ex_images im;
    memset(&im, 0, sizeof im);
    r = m->log_images(m, ctx, &b, 1, &im);
    LT_CHECK(!r && im.n == 3 && !strcmp(im.key[0], "samples") && !strcmp(im.key[1], "reconstructions") && !strcmp(im.key[2], "inputs")
                 && im.t[1]->shape[0] == 1 && im.t[1]->shape[2] == 32 && all_finite(im.t[0], ctx),
             "model: log_images gives samples, reconstructions, inputs (max_images of each)");
    ldm_step_reset(ctx);
    double vals[2 * 5];
    memset(&im, 0, sizeof im);
    r = m->test_step(m, ctx, &b, vals, &im);
    LT_CHECK(!r && im.n == 2 && vals[0] > 0 && vals[1] <= 1.0 && vals[2] != vals[2] && vals[3] > 0 && vals[4] == vals[3] && vals[5] > 0,
             "model: test_step gives per-image PSNR, SSIM, (no) LPIPS, L1 and rec_loss, and images");
    ldm_step_reset(ctx);
    m->set_training(m, 1);

    /* ---- the state dict: save, load into a second model, equal weights ---- */
    const char *path = "test_model.safetensors";
    const char *mk[1] = {"format"}, *mv[1] = {"pt"};
    r = m->save(m, ctx, path, 1, mk, mv);
    ldm_weights *w = NULL;
    int has_loss = 0;
    if (!r && !ldm_weights_open(ctx, &w, path)) {
        has_loss = ldm_weights_find(w, "loss.logvar") >= 0 && ldm_weights_find(w, "encoder.conv_in.weight") >= 0
                   && ldm_weights_find(w, "loss.discriminator.main.0.weight") >= 0;
        ldm_weights_close(w);
    }
    LT_CHECK(!r && has_loss, "model: the state dict has CompVis names (encoder.*, loss.logvar, loss.discriminator.*)");
    ldm_config *cfg2 = NULL;
    ex_model *m2 = NULL;
    int same = 0;
    if (!build(tiny, NULL, &cfg2, &m2) && !m2->setup(m2, ctx, NULL) && !m2->load(m2, ctx, path)) {
        same = 1;
        for (int k = 0; k < m->n_params && same; k++) {
            int64_t n1, n2;
            float *a = ldm_nn_block(m->params[k].P, LDM_NN_BLOCK_PARAMS, &n1), *c = ldm_nn_block(m2->params[k].P, LDM_NN_BLOCK_PARAMS, &n2);
            same = n1 == n2 && !memcmp(a, c, sizeof(float) * (size_t)n1);
        }
    }
    lt_report(same, "model: load restores every parameter set bit for bit", "%s", ldm_ctx_error(ctx));
    if (m2) m2->destroy(m2);
    if (cfg2) ldm_config_destroy(cfg2);
    remove(path);
    m->destroy(m);
    ldm_config_destroy(cfg);

    /* ---- config errors come from the constructor, with file:line ---- */
    struct { const char *extra, *want, *name; } bad[] = {
        {"[model.params.ddconfig]\nch = 16\n", "extra.ini:2: model.params.ddconfig.ch: 16 is out of range: ch must be >= 32",
         "errors: a ddconfig value out of its bounds names file:line"},
        {"[model.params.lossconfig]\ntarget = VQLPIPSWithDiscriminator\n", "LPIPSWithDiscriminator", "errors: an unknown loss target lists the known one"},
        {"[model.params.ddconfig]\ndouble_z = false\n", "extra.ini:2: model.params.ddconfig.double_z: AutoencoderKL needs double_z = true",
         "errors: double_z = false names file:line"},
        {"[model.params.lossconfig.params]\ndisc_strat = 5\n", "did you mean 'disc_start'", "errors: an unknown loss key suggests the right one"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cfg = NULL;
        m = NULL;
        r = build(tiny, bad[i].extra, &cfg, &m);
        const char *e = cfg ? ldm_config_error(cfg) : "";
        lt_report(r && !m && strstr(e, bad[i].want), bad[i].name, "got: %s", e);
        if (m) m->destroy(m);
        if (cfg) ldm_config_destroy(cfg);
    }
    ldm_ctx_destroy(ctx);
    return lt_finish("test_model");
}
