/* fuzz_ckptdir.c - libFuzzer harness: a training checkpoint directory as examples/main.c's
   drv_load_checkpoint reads it. That reader is driver-internal, so this runs the library calls
   it makes on the files it reads: state.ini through ldm_config_load and the same getters,
   model.safetensors through ldm_nn_load (strict) into a small model, optimizer_0.safetensors
   through ldm_nn_optim_load into an Adam over it.
   Input: the three files' bytes separated by FUZZ_CKPT_SEP (state.ini, model.safetensors,
   optimizer_0.safetensors); a missing part is a missing file.
   Seeds: tests/fuzz/seeds/ckptdir/: this model saved with ldm_nn_save / ldm_nn_optim_save and
   a state.ini as drv_write_state writes it, joined as above; plus the INI files of tests/configs. */
#include "fuzz_common.h"

#define FUZZ_CKPT_SEP "\n@@ldm-fuzz-file@@\n"

/* The model: a conv and a linear with bias; an Adam over all of it. Made once per process. */
static ldm_nn_params *fuzz_ckpt_P;
static ldm_nn_optim *fuzz_ckpt_opt;
static int fuzz_ckpt_model(ldm_ctx *ctx) {
    if (fuzz_ckpt_opt) return 0;
    ldm_nn_conv2d conv;
    ldm_nn_linear lin;
    if (ldm_nn_params_create(ctx, &fuzz_ckpt_P, LDM_CPU)) return 1;
    if (ldm_nn_conv2d_init(fuzz_ckpt_P, &conv, "conv", 2, 3, 3, 1, 1, 1) ||
        ldm_nn_linear_init(fuzz_ckpt_P, &lin, "proj", 4, 2, 1) || ldm_nn_params_alloc(ctx, fuzz_ckpt_P) ||
        ldm_nn_params_init(ctx, fuzz_ckpt_P))
        return 1;
    ldm_nn_optim_config oc = ldm_nn_optim_defaults(LDM_OPTIM_ADAM, 1e-4);
    return ldm_nn_optim_create(ctx, &fuzz_ckpt_opt, fuzz_ckpt_P, &oc, 0, NULL) ? 1 : 0;
}

static int fuzz_ckpt_state(const char *st, char *err, size_t errn) {
    ldm_config *sc;
    if (ldm_config_create(&sc)) return fuzz_reject(err, errn, "ldm_config_create failed");
    int rc = 0, popped;
    int64_t step, epoch, bie, acc, rows;
    double ep_n, loss;
    const char *s_seed, *s_rs, *s_ro, *mon;
    ldm_config_strs names;
    ldm_config_floats scores;
    ldm_config_ints steps_i;
    /* the getters and defaults of drv_load_checkpoint */
    if (ldm_config_load(sc, st) || ldm_config_get_i64(sc, NULL, "trainer.global_step", 0, &step) ||
        ldm_config_get_i64(sc, NULL, "trainer.epoch", 0, &epoch) ||
        ldm_config_get_i64(sc, NULL, "trainer.batch_in_epoch", 0, &bie) ||
        ldm_config_get_i64(sc, NULL, "trainer.accumulated", 0, &acc) ||
        ldm_config_get_i64(sc, NULL, "trainer.metrics_rows", 0, &rows) ||
        ldm_config_get_str(sc, NULL, "trainer.seed", "", &s_seed) || ldm_config_get_str(sc, NULL, "trainer.rng_seed", "", &s_rs) ||
        ldm_config_get_str(sc, NULL, "trainer.rng_offset", "", &s_ro) ||
        ldm_config_get_float(sc, NULL, "trainer.epoch_samples", 0, &ep_n) ||
        ldm_config_get_int(sc, NULL, "image_logger.log_steps_popped", 0, &popped) ||
        ldm_config_get_str(sc, NULL, "checkpoint.monitor", "", &mon) ||
        ldm_config_get_str_list(sc, NULL, "checkpoint.topk_names", "", &names) ||
        ldm_config_get_float_list(sc, NULL, "checkpoint.topk_scores", "", &scores) ||
        ldm_config_get_int_list(sc, NULL, "checkpoint.topk_steps", "", &steps_i) ||
        ldm_config_get_float(sc, NULL, "trainer.epoch_loss_sum", 0, &loss))
        rc = fuzz_reject(err, errn, ldm_config_error(sc));
    else if (names.n != scores.n || names.n != steps_i.n)
        rc = fuzz_reject(err, errn, "state.ini: topk lists differ in length"); /* the driver's own check */
    ldm_config_destroy(sc);
    return rc;
}

static int fuzz_ckptdir_run(const uint8_t *data, size_t size, char *err, size_t errn) {
    static const char *const files[3] = {"state.ini", "model.safetensors", "optimizer_0.safetensors"};
    const size_t sl = sizeof FUZZ_CKPT_SEP - 1;
    char paths[3][512]; /* fuzz_file returns a static buffer */
    size_t at = 0;
    for (int k = 0; k < 3; k++) {
        if (at > size) { snprintf(paths[k], sizeof paths[k], "%s", fuzz_file(files[k], NULL, (size_t)-1)); continue; }
        size_t end = size;
        for (size_t i = at; i + sl <= size; i++)
            if (!memcmp(data + i, FUZZ_CKPT_SEP, sl)) { end = i; break; }
        snprintf(paths[k], sizeof paths[k], "%s", fuzz_file(files[k], data + at, end - at));
        at = end == size ? size + 1 : end + sl;
    }
    ldm_ctx *ctx = fuzz_ctx();
    if (!ctx || fuzz_ckpt_model(ctx)) return fuzz_reject(err, errn, "cannot create the model");
    /* the driver's order: weights, optimizer, then state.ini; all three are tried here */
    int rc = 0;
    if (access(paths[1], F_OK) == 0 && ldm_nn_load(ctx, fuzz_ckpt_P, paths[1], NULL)) rc = fuzz_reject(err, errn, ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    if (access(paths[2], F_OK) == 0 && ldm_nn_optim_load(ctx, fuzz_ckpt_opt, paths[2]) && !rc)
        rc = fuzz_reject(err, errn, ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    char e2[1024];
    if (fuzz_ckpt_state(paths[0], e2, sizeof e2) && !rc) rc = fuzz_reject(err, errn, e2);
    return rc;
}
FUZZ_ENTRY(fuzz_ckptdir_run)
