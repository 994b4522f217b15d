/* model.h - what the ldm driver (examples/main.c) asks of a model: Lightning's LightningModule
   as a C interface. The driver owns the loop, the data, checkpoints, metrics.csv, top-k and the
   ImageLogger; a model owns its networks, losses and optimizers and answers these calls. It
   is a struct of function pointers and a `self`, built from the config by the constructor
   registered for its target (ldm_config.h's registry):

       const ex_model_class *mc = &ex_autoencoder_class;
       ldm_config_registry_add(reg, mc->target, mc->aliases, mc->create, (void *)mc);
       ex_model *m;  ldm_config_instantiate(cfg, reg, model_node, NULL, (void **)&m);
       m->setup(m, ctx, resume_file);  m->configure_optimizers(m, ctx, lr);
       for each batch: for i < m->n_optim: loss = m->training_step(m, ctx, batch, step, i, &log);
                       backward, m->optim[i].opt steps;  then m->on_train_batch_end (may be NULL)

   Logged values are named scalars ("train/rec_loss"); the driver turns them into metrics.csv
   columns, picks the monitor for top-k from them and plots `curve_key`. Images are logged by
   key ("samples", "reconstructions"). A checkpoint is the model's state dict (save/load, in
   the reference implementation's names), one file per optimizer, the gradients of each
   parameter set while an accumulation is under way, and the driver's state.ini.

   The constructor only reads and checks the config (no ldm_ctx exists yet: config errors come
   first); setup builds the networks on the ctx. Every call returns 0 or an ldm_result whose
   message is in the ctx (or the ldm_config, for the constructor), and sets m->what to the
   part that failed ("LPIPSWithDiscriminator") for the driver's message. */
#ifndef EX_MODEL_H
#define EX_MODEL_H

#include "ldm_config.h"
#include "ldm_data.h"
#include "ldm_nn.h"

#include <stdio.h>
#include <string.h>

#define EX_MAX_OPTIM 8
#define EX_MAX_PARAMS 8
#define EX_MAX_LOG 48
#define EX_MAX_IMAGES 8

/* {target, params}: a node naming a class and its arguments (the config's *_config nodes). */
#define EX_TARGET_KEYS(X)                                                                        \
    X(target, STR, NULL, "what to build")                                                        \
    X(params, NODE, "", "its parameters")
LDM_CONFIG_DECLARE(ex_target_cfg, EX_TARGET_KEYS);
LDM_CONFIG_DEFINE(ex_target_cfg, EX_TARGET_KEYS)

/* Values one step logs (Lightning's self.log), by name. */
typedef struct ex_log_item { char key[64]; double value; } ex_log_item;
typedef struct ex_log { int n; ex_log_item item[EX_MAX_LOG]; } ex_log;

static void ex_log_put(ex_log *l, const char *key, double v) {
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->item[i].key, key)) { l->item[i].value = v; return; }
    if (l->n >= EX_MAX_LOG) return;
    snprintf(l->item[l->n].key, sizeof l->item[l->n].key, "%s", key);
    l->item[l->n++].value = v;
}
static const double *ex_log_get(const ex_log *l, const char *key) {
    for (int i = 0; i < l->n; i++) if (!strcmp(l->item[i].key, key)) return &l->item[i].value;
    return NULL;
}

/* Images by key, as tensors [B, C, H, W] in [-1, 1] (arena memory of the call that made them). */
typedef struct ex_images { int n; const char *key[EX_MAX_IMAGES]; ldm_tensor *t[EX_MAX_IMAGES]; } ex_images;

/* One optimizer with its parameter group (configure_optimizers). */
typedef struct ex_optim {
    const char *name;             /* "aeloss": metrics.csv's <name>_step, <name>_epoch */
    const char *loss_key;         /* the logged value the loss is ("train/total_loss"), for messages */
    ldm_nn_optim *opt;
    /* More parameter registries in the same torch optimizer (LatentDiffusion's AdamW over the
       denoiser, a trainable cond stage and logvar): stepped, scheduled and saved with opt.
       Adam/AdamW/SGD update each element on its own, so this is the one optimizer's update. */
    ldm_nn_optim *also[EX_MAX_PARAMS];
    int n_also;
    /* LambdaLR: lr = base_lr * lr_lambda(self, global_step) before each step; NULL = constant */
    double (*lr_lambda)(void *self, int64_t global_step);
    double base_lr;               /* the driver keeps the lr configure_optimizers gave here */
} ex_optim;

/* A parameter registry whose gradients a checkpoint keeps mid-accumulation (grads.safetensors
   holds one flat tensor per set, under `name`). */
typedef struct ex_params { const char *name; ldm_nn_params *P; } ex_params;

typedef struct ex_model ex_model;
struct ex_model {
    void *self;
    const char *name;             /* "AutoencoderKL" */
    const char *what;             /* set by a failing call: which part failed */

    /* declared by the constructor */
    const char *monitor;          /* the default metric of top-k checkpoints ("val/rec_loss") */
    const char *const *log_keys;  /* every name logged as train/<key> and val/<key>, in column order */
    int n_log_keys;
    const char *const *val_keys;  /* logged by validation only (val/<key>): "psnr" ... */
    int n_val_keys;
    const char *const *summary_keys; /* the validation line; the first must be finite */
    int n_summary_keys;
    const char *progress_key;     /* shown in the progress line ("train/rec_loss") */
    const char *curve_key;        /* loss_curve.png plots train/<key> and val/<key> */
    const char *const *test_keys; /* the columns of test_metrics.csv, one value per image */
    int n_test_keys;
    const char *test_note;        /* comment lines at the top of test_summary.txt */
    int pretrained;               /* initial weights came from the config (ckpt_path) */

    /* filled by setup and configure_optimizers */
    ex_optim optim[EX_MAX_OPTIM];
    int n_optim;
    ex_params params[EX_MAX_PARAMS];
    int n_params;

    /* Builds the networks on ctx and loads initial weights; resume_file: the state dict the run
       will resume from (NULL if none), for weights a model may take from it. */
    ldm_result (*setup)(ex_model *m, ldm_ctx *ctx, const char *resume_file);
    /* Fills optim[] for the (already scaled) learning rate. */
    ldm_result (*configure_optimizers)(ex_model *m, ldm_ctx *ctx, double lr);
    void (*set_training)(ex_model *m, int on);
    /* The loss (one element) of optimizer opt_idx, with grad mode on; logs "train/..." values.
       The driver scales it for accumulation, runs backward and steps optim[opt_idx]. */
    ldm_tensor *(*training_step)(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, int64_t global_step, int opt_idx,
                                 ex_log *log);
    /* After the batch's optimizer steps (stepped: whether they ran); e.g. an EMA update. May be NULL. */
    ldm_result (*on_train_batch_end)(ex_model *m, ldm_ctx *ctx, int64_t global_step, int stepped);
    /* Under no_grad and eval: "val/..." values of one batch (the driver averages them over the
       epoch weighted by the batch size). */
    ldm_result (*validation_step)(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, int64_t global_step, ex_log *log);
    /* Under no_grad: up to max_images images per key. */
    ldm_result (*log_images)(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, int max_images, ex_images *out);
    /* Under no_grad and eval: per image j, values[j * n_test_keys + k]; images by key (written
       one PNG per image). */
    ldm_result (*test_step)(ex_model *m, ldm_ctx *ctx, const ldm_data_batch *b, double *values, ex_images *images);
    /* The state dict (model.safetensors) with metadata; load is strict. */
    ldm_result (*save)(ex_model *m, ldm_ctx *ctx, const char *path, int n_meta, const char *const *keys, const char *const *vals);
    ldm_result (*load)(ex_model *m, ldm_ctx *ctx, const char *path);
    void (*destroy)(ex_model *m);
    /* Set by the driver under data parallelism (else NULL): sums n host values across the
       ranks in place, for statistics a model takes over the whole batch (scale_by_std). */
    ldm_result (*reduce)(void *user, double *v, int n);
    void *reduce_user;
    /* The ImageLogger's log_images_kwargs (a mapping, checked against the model's own table).
       May be NULL: the model takes none. */
    ldm_result (*set_log_images_kwargs)(ex_model *m, ldm_config *cfg, const ldm_config_node *kwargs);
};

/* A model target: what the driver registers (ldm_config_registry_add(reg, target, aliases,
   create, class)) and its --help text. */
typedef struct ex_model_class {
    const char *target;           /* "ldm.models.autoencoder.AutoencoderKL" */
    const char *aliases;          /* "AutoencoderKL" */
    ldm_config_ctor create;       /* reads model.params; *out = an ex_model */
    void (*help)(FILE *f);
} ex_model_class;

/* A registry constructor for targets that only need resolving (their params are read by the caller). */
static ldm_result ex_config_ctor_name(ldm_config *cfg, const ldm_config_node *params, void *user, void *arg, void **out) {
    (void)cfg; (void)params; (void)arg;
    *out = user;
    return LDM_OK;
}

/* Writes registries as one safetensors state dict, each under its prefix ("", "loss.",
   "model.diffusion_model."), float32, transient buffers left out. */
static ldm_result ex_state_dict_save(ldm_ctx *ctx, const char *path, int n, const ldm_nn_params *const *regs,
                                     const char *const *prefix, int n_meta, const char *const *keys, const char *const *vals) {
    int total = 0, m = 0;
    ldm_result r = LDM_OK;
    for (int k = 0; k < n; k++)
        for (int i = 0; regs[k] && i < ldm_nn_count(regs[k]); i++) total += ldm_nn_entry_at(regs[k], i)->kind != LDM_NN_BUFFER_TRANSIENT;
    ldm_named_data *nd = (ldm_named_data *)calloc((size_t)total + 1, sizeof *nd);
    char **names = (char **)calloc((size_t)total + 1, sizeof *names);
    float **host = (float **)calloc((size_t)total + 1, sizeof *host);
    if (!nd || !names || !host) { r = ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "%s: out of memory", path); goto done; }
    for (int k = 0; k < n; k++)
        for (int i = 0; regs[k] && i < ldm_nn_count(regs[k]); i++) {
            const ldm_nn_entry *e = ldm_nn_entry_at(regs[k], i);
            if (e->kind == LDM_NN_BUFFER_TRANSIENT) continue;
            names[m] = (char *)malloc(strlen(prefix[k]) + strlen(e->name) + 1);
            host[m] = (float *)malloc(sizeof(float) * (size_t)(e->t->numel ? e->t->numel : 1));
            if (!names[m] || !host[m]) { r = ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "%s: out of memory", path); goto done; }
            sprintf(names[m], "%s%s", prefix[k], e->name);
            if ((r = ldm_to_host(ctx, e->t, host[m]))) goto done;
            nd[m].name = names[m];
            nd[m].data = host[m];
            nd[m].ndim = e->t->ndim;
            for (int q = 0; q < e->t->ndim; q++) nd[m].shape[q] = e->t->shape[q];
            m++;
        }
    r = ldm_safetensors_write(ctx, path, m, nd, LDM_F32, n_meta, keys, vals);
done:
    for (int i = 0; i < total; i++) { if (names) free(names[i]); if (host) free(host[i]); }
    free(nd); free(names); free(host);
    return r;
}

#endif /* EX_MODEL_H */
