/* ldm_nn.h - layers with PyTorch state-dict names, parameter storage, state-dict load/save
   and optimizers for ldm.h (latent diffusion in C).                    v0.1

   Do this in exactly one C or C++ file before including it:
       #define LDM_IMPLEMENTATION          (every ldm_ header)
   or  #define LDM_NN_IMPLEMENTATION       (this header; that file must also define
                                            LDM_TENSOR_IMPLEMENTATION: the implementation
                                            reaches the context's device backend)
   ldm_nn.h includes ldm_tensor.h itself.

   Example: a conv + GroupNorm block, loaded from a checkpoint, trained with Adam.

       ldm_nn_params *P;  ldm_nn_conv2d conv;  ldm_nn_groupnorm norm;
       ldm_nn_params_create(ctx, &P, LDM_CPU);
       ldm_nn_push(P, "encoder");                          // names: "encoder.conv_in.weight" ...
       ldm_nn_conv2d_init(P, &conv, "conv_in", 3, 128, 3, 1, 1, 1);
       ldm_nn_groupnorm_init(P, &norm, "norm_out", 32, 128, 1e-6f, 1);
       ldm_nn_pop(P);
       if (ldm_nn_params_alloc(ctx, P)) { ...ldm_ctx_error(ctx)... }   // one buffer, initialised
       ldm_nn_load_opts lo = {0};  lo.strict = 1;  lo.prefix_strip = "first_stage_model.";
       if (ldm_nn_load(ctx, P, "model.ckpt", &lo)) { ...lists every missing/unexpected name... }
       ldm_nn_optim *opt;  ldm_nn_optim_config oc = ldm_nn_optim_defaults(LDM_OPTIM_ADAM, 4.5e-6);
       oc.beta1 = 0.5; oc.beta2 = 0.9;
       ldm_nn_optim_create(ctx, &opt, P, &oc, 0, NULL);    // every trainable parameter
       for (;;) {
           ldm_tensor *h = ldm_nn_groupnorm_forward(ctx, &norm, ldm_nn_conv2d_forward(ctx, &conv, x));
           ldm_backward(ctx, ldm_mean_all(ctx, h));
           ldm_nn_optim_step(ctx, opt);  ldm_nn_optim_zero_grad(ctx, opt);  ldm_step_reset(ctx);
       }
       ldm_nn_optim_destroy(opt);  ldm_nn_params_destroy(P);

   Shape legend: B batch, C channels (I in, O out), T depth/frames, H height, W width,
   k kernel sizes, G groups, N number of embeddings, D feature dim.
       conv2d weight [O, I, kh, kw], bias [O]          x [B,I,H,W]   -> [B,O,H',W']
       conv3d weight [O, I, kt, kh, kw], bias [O]      x [B,I,T,H,W] -> [B,O,T',H',W']
       linear weight [O, I], bias [O]                  x [..., I]    -> [..., O]
       LoRA lora_A [r, I], lora_B [O, r] (rank r)      on a linear:  same shapes
       groupnorm / batchnorm weight, bias [C]          x [B,C,...]   -> same
       layernorm weight, bias = normalized shape       x [..., normalized shape] -> same
       embedding weight [N, D]                         n indices     -> [n, D]

   Design, in the order the data flows:
   - ldm_nn_params is a registry of named tensors. Registration (layer *_init functions, or
     ldm_nn_param / ldm_nn_buffer directly) only records a name, a shape, a kind and an init
     rule; the full PyTorch name is the prefix stack (ldm_nn_push / ldm_nn_pushf / ldm_nn_pop)
     joined with dots plus the local name, e.g. "decoder.up.2.block.0.conv1.weight". Layer
     structs keep `ldm_tensor *` pointers to tensor structs the registry owns; they stay valid
     (same address) for the registry's lifetime. Registration needs no memory for data and
     reports errors on the context the registry was created with (sticky, so a whole model
     can be registered and checked once, at ldm_nn_params_alloc).
   - ldm_nn_params_alloc gives every parameter its slice of ONE data block, every trainable
     parameter its slice of ONE gradient block (same order), and persistent and transient
     buffers (BatchNorm running statistics, ...) their slices of a third block. Each slice
     starts on a 64-byte boundary; the padding between slices is zero and stays zero, so a
     block can be treated as one flat vector (gradient all-reduce, clipping, EMA, broadcast
     of initial weights): see ldm_nn_block. Memory comes from the context's backend for the
     registry's device (CPU now, CUDA with ldm_cuda.cuh). Then every entry is initialised in
     registration order from the context's seeded RNG (deterministic for a given seed).
   - Init rules follow PyTorch's defaults: conv/linear weight kaiming_uniform(a = sqrt(5)),
     i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in_channels * prod(kernel), bias
     U(-1/sqrt(fan_in), 1/sqrt(fan_in)); norm weight 1, bias 0; BatchNorm running_mean 0,
     running_var 1, num_batches_tracked 0; embedding N(0, 1). ldm_nn_set_init overrides a
     rule after registration (taming's discriminator: conv N(0, 0.02), BN weight N(1, 0.02)).
     The values come from ldm.h's Philox RNG, so they follow the same distributions as
     PyTorch's, not the same numbers.
   - Freezing: ldm_nn_set_trainable(P, pattern, 0). Before ldm_nn_params_alloc it also keeps
     the gradient memory away (a frozen base model under LoRA costs no gradient block);
     after it, the gradient slice stays allocated but autograd no longer adds to it (zero it
     with ldm_nn_zero_grad, as PyTorch's toggle_optimizer pattern needs). Unfreezing after alloc works only
     for parameters that were trainable at alloc time. Frozen parameters have
     requires_grad = 0 (autograd skips them) and optimizers skip them.
     sgm's not_trainable_prefixes: ldm_nn_disable_untrainable_params(P, n, prefixes, &left)
     freezes names that start with a prefix (plain str.startswith; "all" is everything) and,
     after alloc, lays the gradient block out again without the frozen slices
     (ldm_nn_params_compact_grads), so the three mirrored layouts stay consistent: the
     parameter block never moves; the gradient block holds exactly the trainable parameters;
     an optimizer created afterwards gives moments to exactly those (none to frozen ones, see
     ldm_nn_optim_state_bytes). The first stage: ldm_nn_params_freeze (frozen for good, no
     gradient memory). Checkpoints: parameter files (ldm_nn_save) always hold every
     parameter, frozen or not; optimizer state files hold moments for the group only, so
     loading one after the frozen set changed is an error naming the first parameter that
     gained or lost state (hint: freeze the same prefixes, or start from zero state).
   - LoRA (peft's arithmetic and names): ldm_nn_lora_create(ctx, &L, P, &cfg) attaches
     adapters A [r, I], B [O, r] to every linear layer whose name ends in a target
     ("attn.qkv" adapts "blocks.3.attn.qkv"), freezes the whole base (gradient block
     released) and keeps the adapters in their own registry, ldm_nn_lora_params(L): the
     optimizer gets that one, so only adapters have gradients and moments. The hook is in the
     layer: ldm_nn_linear_init records the layer in its registry and ldm_nn_linear_forward
     adds scaling * B(A(dropout(x))) when an adapter is attached, so models (the DiT, the
     UNet's attention) need no LoRA code and adapters attach after a model is built. A starts
     kaiming_uniform(a = sqrt(5)), B zero: the adapted model starts equal to the base.
     Adapters save apart (ldm_nn_lora_save: rank/alpha/dropout/targets in the metadata) and
     load onto a base built from its own checkpoint (ldm_nn_lora_create_from_file); merge
     folds W += scaling B A into the base (for inference or export), unmerge takes it out.

       ldm_dit *dit;  ldm_dit_create(ctx, &dit, &cfg);  ldm_dit_load(ctx, dit, "base.safetensors", NULL, 1, NULL);
       const char *tg[2] = {"attn.qkv", "mlp.fc1"};
       ldm_nn_lora_config lc = {0};  lc.r = 16; lc.alpha = 16; lc.dropout = 0.05f; lc.n_targets = 2; lc.targets = tg;
       ldm_nn_lora *L;  ldm_nn_lora_create(ctx, &L, ldm_dit_params(dit), &lc);   // base frozen now
       ldm_nn_lora_set_training(L, 1);                                           // adapter dropout on
       ldm_nn_optim_create(ctx, &opt, ldm_nn_lora_params(L), &oc, 0, NULL);      // adapters only
       ... train: ldm_dit_forward picks the adapters up ...
       ldm_nn_lora_save(ctx, L, "adapters.safetensors");                         // small file
       ldm_nn_lora_merge(ctx, L);  ldm_dit_save(ctx, dit, "merged.safetensors", LDM_F32, NULL);
   - Patterns (freezing, optimizer groups, counting) are module-boundary prefixes with '*'
     wildcards: "encoder" matches "encoder.conv_in.weight" but not "encoder2.x";
     "loss.logvar" matches itself; "*.lora_up" matches "a.b.lora_up.weight". A trailing '.'
     is ignored. NULL or "" matches everything. See ldm_nn_match.
   - State dicts: ldm_nn_load reads safetensors, .ckpt and .pth files through ldm_weights
     (half precision is converted by the reader). Each name in the file is mapped
     (prefix_strip filter and strip, prefix_add, then the rename callback) and looked up. All
     names are checked before anything is written, so a failing strict load leaves the model
     untouched; the error lists every missing, unexpected and mis-shaped name. Unlike
     torch.load_state_dict(strict=False), a non-strict load also skips (and reports) tensors
     whose shape does not match. ldm_nn_save writes safetensors with the same names.
   - Optimizers (Adam, AdamW, SGD) update one group of parameters with exactly torch 1.13's
     arithmetic (single-tensor path; hyper-parameters kept in double and rounded to float
     where torch does). Their moments live in one block that mirrors the group's slices.
     A step turns the hyper-parameters into one ldm_optim_args and hands every tensor to
     ldm_device_optim_update, whose kernel (ldm_tensor.h's on the CPU, ldm_cuda.cuh's on the
     GPU) does the same correctly rounded operations in the same order on every device and
     thread count. The learning rate can change every step (schedulers); state saves to
     safetensors.

   Options: those of ldm_tensor.h (LDM_STATIC, LDM_MALLOC/LDM_REALLOC/LDM_FREE, LDM_ASSERT).

   Devices: this header uses only ldm_tensor.h's public API. Memory, copies, fills, the
   optimizer update and the gradient norm go through ldm_device_* for the registry's device,
   so one code path serves the CPU and the GPU (a back end without an optimizer or
   sum-of-squares kernel gives LDM_ERR_UNSUPPORTED).

   Limits: grouped convolution is not provided (ldm_tensor.h has none); the optimizer keeps
   one step count for its group (torch keeps one per parameter: they differ only for a
   parameter frozen for some steps and unfrozen again); num_batches_tracked is kept as float
   (exact up to 2^24) and saved in the file's dtype.
*/
#ifndef LDM_NN_H
#define LDM_NN_H

#include "ldm_tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- init rules ------------------------------------------------------------------------- */
typedef enum {
    LDM_NN_INIT_CONST = 0,    /* every element = a (a zeroed rule means zeros) */
    LDM_NN_INIT_UNIFORM = 1,  /* U[a, b) */
    LDM_NN_INIT_NORMAL = 2    /* N(mean a, std b) */
} ldm_nn_init_kind;
typedef struct ldm_nn_init { ldm_nn_init_kind kind; float a, b; } ldm_nn_init;

LDM_API ldm_nn_init ldm_nn_init_const(float v);
LDM_API ldm_nn_init ldm_nn_init_uniform(float lo, float hi);
LDM_API ldm_nn_init ldm_nn_init_normal(float mean, float std);
/* torch.nn.init.kaiming_uniform_(a, mode='fan_in', nonlinearity='leaky_relu'):
   bound = sqrt(6 / ((1 + a^2) * fan_in)); a = sqrt(5) gives 1/sqrt(fan_in). */
LDM_API ldm_nn_init ldm_nn_init_kaiming_uniform(double a, int64_t fan_in);
/* U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's default conv/linear bias. */
LDM_API ldm_nn_init ldm_nn_init_fan_in_uniform(int64_t fan_in);
/* torch.nn.init.xavier_uniform_: bound = gain * sqrt(6 / (fan_in + fan_out)). */
LDM_API ldm_nn_init ldm_nn_init_xavier_uniform(int64_t fan_in, int64_t fan_out, double gain);
/* torch's _calculate_fan_in_and_fan_out: shape[1] (resp. shape[0]) times the receptive
   field prod(shape[2:]); a 1-D tensor has fan_in = fan_out = shape[0]. */
LDM_API int64_t ldm_nn_fan_in(const ldm_tensor *t);
LDM_API int64_t ldm_nn_fan_out(const ldm_tensor *t);

/* ---- the registry ----------------------------------------------------------------------- */
typedef enum {
    LDM_NN_PARAM = 0,             /* trainable parameter (nn.Parameter) */
    LDM_NN_BUFFER = 1,            /* persistent buffer: in the state dict, never trained */
    LDM_NN_BUFFER_TRANSIENT = 2   /* register_buffer(persistent=False): not in the state dict */
} ldm_nn_kind;

/* One registered tensor. Read-only for callers. */
typedef struct ldm_nn_entry {
    const char *name;             /* full state-dict name (also t->name) */
    ldm_tensor *t;                /* owned by the registry; data/grad set by ldm_nn_params_alloc */
    ldm_nn_kind kind;
    ldm_nn_init init;
    int64_t offset;               /* float offset of t->data in its block (params or buffers) */
    int64_t grad_offset;          /* float offset of t->grad in the gradient block, -1: none */
} ldm_nn_entry;

typedef struct ldm_nn_params ldm_nn_params;

/* The registry reports registration errors on ctx; ctx must outlive it. */
LDM_API ldm_result ldm_nn_params_create(ldm_ctx *ctx, ldm_nn_params **P, ldm_device device);
LDM_API void ldm_nn_params_destroy(ldm_nn_params *P);       /* frees every block */
LDM_API ldm_device ldm_nn_params_device(const ldm_nn_params *P);

/* Prefix stack. push("") and push(NULL) push nothing but still need their pop. */
LDM_API void ldm_nn_push(ldm_nn_params *P, const char *name);
LDM_API void ldm_nn_pushf(ldm_nn_params *P, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
LDM_API void ldm_nn_pop(ldm_nn_params *P);
LDM_API const char *ldm_nn_prefix(const ldm_nn_params *P);  /* current prefix, "" at the top */

/* Registers "<prefix>.<name>" (name may itself contain dots). Returns the registry's tensor
   (shape set, data NULL until alloc) or NULL with the error on the registry's context. */
LDM_API ldm_tensor *ldm_nn_param(ldm_nn_params *P, const char *name, ldm_shape s, ldm_nn_init init);
LDM_API ldm_tensor *ldm_nn_buffer(ldm_nn_params *P, const char *name, ldm_shape s, ldm_nn_init init, int persistent);
/* Replaces the init rule of a registered tensor (before ldm_nn_params_alloc, or call
   ldm_nn_params_init afterwards). t NULL (a failed registration) is ignored. */
LDM_API void ldm_nn_set_init(ldm_nn_params *P, ldm_tensor *t, ldm_nn_init init);
/* requires_grad for every parameter matching pattern. LDM_ERR_NOT_FOUND when no parameter
   matches (a typo would otherwise freeze nothing). */
LDM_API ldm_result ldm_nn_set_trainable(ldm_nn_params *P, const char *pattern, int on);
/* sgm's disable_untrainable_params: every parameter whose name starts with one of the n
   prefixes (plain string prefixes, as str.startswith; "all" matches every name) stops
   requiring gradients. A prefix that matches no parameter is LDM_ERR_NOT_FOUND and nothing
   changes. After ldm_nn_params_alloc the frozen gradient slices are given back at once
   (ldm_nn_params_compact_grads). *n_trainable (may be NULL) gets the trainable elements left. */
LDM_API ldm_result ldm_nn_disable_untrainable_params(ldm_nn_params *P, int n, const char *const *not_trainable_prefixes,
                                                     int64_t *n_trainable);
/* Lays the gradient block out again over the parameters that require gradients now: frozen
   ones lose their slice (t->grad = NULL, grad_offset -1), the others keep their values. The
   block moves, so take ldm_nn_block(P, LDM_NN_BLOCK_GRADS) pointers again afterwards.
   Optimizers stay valid (they skip frozen members). No-op before ldm_nn_params_alloc. */
LDM_API ldm_result ldm_nn_params_compact_grads(ldm_ctx *ctx, ldm_nn_params *P);
/* Freezes a whole model for good (sgm's first stage: requires_grad off, eval, train()
   disabled): every parameter stops requiring gradients, the gradient block is released and
   ldm_nn_set_trainable(..., 1) is refused from then on. ldm_nn.h's layers keep no mode:
   run a frozen model with training = 0 wherever a forward takes it. */
LDM_API ldm_result ldm_nn_params_freeze(ldm_ctx *ctx, ldm_nn_params *P);
LDM_API int ldm_nn_params_frozen(const ldm_nn_params *P);

/* Allocates the blocks (see the design notes) and initialises every entry. ctx must be the
   registry's context. Registration is closed afterwards. */
LDM_API ldm_result ldm_nn_params_alloc(ldm_ctx *ctx, ldm_nn_params *P);
/* (Re)draws every entry from its init rule, in registration order. */
LDM_API ldm_result ldm_nn_params_init(ldm_ctx *ctx, ldm_nn_params *P);

/* Lookup and counting. */
LDM_API int ldm_nn_count(const ldm_nn_params *P);                        /* entries */
LDM_API const ldm_nn_entry *ldm_nn_entry_at(const ldm_nn_params *P, int i);
LDM_API ldm_tensor *ldm_nn_find(const ldm_nn_params *P, const char *name); /* exact name or NULL */
LDM_API int ldm_nn_index(const ldm_nn_params *P, const char *name);       /* entry index or -1 */
/* Elements of the parameters matching pattern (NULL: all); trainable_only counts only
   those with requires_grad. Like sum(p.numel() for p in model.parameters()). */
LDM_API int64_t ldm_nn_numel(const ldm_nn_params *P, const char *pattern, int trainable_only);
LDM_API int ldm_nn_match(const char *pattern, const char *name);

typedef enum { LDM_NN_BLOCK_PARAMS = 0, LDM_NN_BLOCK_GRADS = 1, LDM_NN_BLOCK_BUFFERS = 2 } ldm_nn_block_id;
/* Base of a block (on the registry's device) and its length in floats, padding included. */
LDM_API float *ldm_nn_block(const ldm_nn_params *P, ldm_nn_block_id b, int64_t *n);

/* Copies host floats (t->numel) into a registry tensor on any device. */
LDM_API ldm_result ldm_nn_copy_from_host(ldm_ctx *ctx, ldm_tensor *t, const float *src);

/* Zeroes the whole gradient block. */
LDM_API void ldm_nn_zero_grad(ldm_ctx *ctx, ldm_nn_params *P);
/* torch.nn.utils.clip_grad_norm_ over every parameter with requires_grad: total = the 2-norm
   of all gradients together; coef = max_norm / (total + 1e-6); gradients are scaled by coef
   when coef < 1. *total_norm (may be NULL) gets the norm before clipping; max_norm = INFINITY
   only measures. */
LDM_API ldm_result ldm_nn_clip_grad_norm(ldm_ctx *ctx, ldm_nn_params *P, float max_norm, float *total_norm);

/* ---- layers ------------------------------------------------------------------------------
   Each layer: a struct, ldm_nn_<layer>_init(P, m, name, ...) registering "<prefix>.<name>.*"
   (name NULL or "": the current prefix itself, as in nn.Sequential built by hand), and
   ldm_nn_<layer>_forward(ctx, m, x, ...) built from ldm_tensor.h ops (autograd included).
   init returns the registry context's status. */

/* nn.Conv2d. pad = {top, bottom, left, right}; torch's padding (ph, pw) is {ph, ph, pw, pw}
   and F.pad(x, (0,1,0,1)) followed by padding 0 is {0, 1, 0, 1}. */
typedef struct ldm_nn_conv2d {
    ldm_tensor *weight;           /* [O, I, kh, kw] */
    ldm_tensor *bias;             /* [O] or NULL */
    int in, out, kh, kw, stride_h, stride_w, pad[4];
} ldm_nn_conv2d;
LDM_API ldm_result ldm_nn_conv2d_init(ldm_nn_params *P, ldm_nn_conv2d *m, const char *name, int in, int out,
                                      int kernel, int stride, int pad, int bias);
LDM_API ldm_result ldm_nn_conv2d_init_ex(ldm_nn_params *P, ldm_nn_conv2d *m, const char *name, int in, int out,
                                         int kh, int kw, int stride_h, int stride_w, const int pad[4], int bias);
LDM_API ldm_tensor *ldm_nn_conv2d_forward(ldm_ctx *ctx, const ldm_nn_conv2d *m, ldm_tensor *x);

/* nn.Conv3d. k, stride = {t, h, w}; pad = {front, back, top, bottom, left, right}. */
typedef struct ldm_nn_conv3d {
    ldm_tensor *weight;           /* [O, I, kt, kh, kw] */
    ldm_tensor *bias;             /* [O] or NULL */
    int in, out, k[3], stride[3], pad[6];
} ldm_nn_conv3d;
LDM_API ldm_result ldm_nn_conv3d_init(ldm_nn_params *P, ldm_nn_conv3d *m, const char *name, int in, int out,
                                      int kernel, int stride, int pad, int bias);
LDM_API ldm_result ldm_nn_conv3d_init_ex(ldm_nn_params *P, ldm_nn_conv3d *m, const char *name, int in, int out,
                                         const int k[3], const int stride[3], const int pad[6], int bias);
LDM_API ldm_tensor *ldm_nn_conv3d_forward(ldm_ctx *ctx, const ldm_nn_conv3d *m, ldm_tensor *x);

/* nn.Linear. ldm_nn_linear_init also records the layer in its registry (mod), which is
   where a LoRA adapter attaches: the forward then adds the adapter's term (see LoRA below),
   so models need no LoRA code, and copying the struct keeps the hook. */
typedef struct ldm_nn_module ldm_nn_module;   /* a layer's record in its registry (opaque) */
typedef struct ldm_nn_linear {
    ldm_tensor *weight;           /* [O, I] */
    ldm_tensor *bias;             /* [O] or NULL */
    int in, out;
    ldm_nn_module *mod;           /* registry-owned; NULL for a struct filled by hand (no LoRA) */
} ldm_nn_linear;
LDM_API ldm_result ldm_nn_linear_init(ldm_nn_params *P, ldm_nn_linear *m, const char *name, int in, int out, int bias);
LDM_API ldm_tensor *ldm_nn_linear_forward(ldm_ctx *ctx, const ldm_nn_linear *m, ldm_tensor *x);

/* nn.GroupNorm(groups, channels, eps, affine). */
typedef struct ldm_nn_groupnorm {
    ldm_tensor *weight, *bias;    /* [C] each, or NULL without affine */
    int groups, channels;
    float eps;
} ldm_nn_groupnorm;
LDM_API ldm_result ldm_nn_groupnorm_init(ldm_nn_params *P, ldm_nn_groupnorm *m, const char *name, int groups,
                                         int channels, float eps, int affine);
LDM_API ldm_tensor *ldm_nn_groupnorm_forward(ldm_ctx *ctx, const ldm_nn_groupnorm *m, ldm_tensor *x);
/* F.silu(norm(x)) in one op (ldm_group_norm_silu): no normalised activation is kept. */
LDM_API ldm_tensor *ldm_nn_groupnorm_silu_forward(ldm_ctx *ctx, const ldm_nn_groupnorm *m, ldm_tensor *x);
/* c(silu(m(x))) as one op whose backward recomputes the conv's input (ldm_group_norm_silu_conv):
   the same numbers, two activations fewer kept per ResnetBlock for the backward pass. */
LDM_API ldm_tensor *ldm_nn_groupnorm_silu_conv2d_forward(ldm_ctx *ctx, const ldm_nn_groupnorm *m, const ldm_nn_conv2d *c, ldm_tensor *x);

/* nn.BatchNorm1d/2d/3d (any [B, C, ...] input). momentum < 0 means momentum=None
   (cumulative average, factor 1/num_batches_tracked). Training with running statistics
   increments num_batches_tracked and updates running_mean / running_var (unbiased) like
   torch; without track_running_stats the batch statistics are used in eval mode too. */
typedef struct ldm_nn_batchnorm {
    ldm_tensor *weight, *bias;    /* [C] each, or NULL without affine */
    ldm_tensor *running_mean;     /* [C] buffer, or NULL without track_running_stats */
    ldm_tensor *running_var;      /* [C] buffer */
    ldm_tensor *num_batches_tracked; /* [] buffer (one float) */
    int channels;
    float eps, momentum;
} ldm_nn_batchnorm;
LDM_API ldm_result ldm_nn_batchnorm_init(ldm_nn_params *P, ldm_nn_batchnorm *m, const char *name, int channels,
                                         float eps, float momentum, int affine, int track_running_stats);
LDM_API ldm_tensor *ldm_nn_batchnorm_forward(ldm_ctx *ctx, ldm_nn_batchnorm *m, ldm_tensor *x, int training);

/* nn.LayerNorm(normalized_shape, eps, elementwise_affine) over the last normalized.ndim dims. */
typedef struct ldm_nn_layernorm {
    ldm_tensor *weight, *bias;    /* normalized shape each, or NULL without affine */
    ldm_shape normalized;
    float eps;
} ldm_nn_layernorm;
LDM_API ldm_result ldm_nn_layernorm_init(ldm_nn_params *P, ldm_nn_layernorm *m, const char *name, ldm_shape normalized,
                                         float eps, int affine);
LDM_API ldm_tensor *ldm_nn_layernorm_forward(ldm_ctx *ctx, const ldm_nn_layernorm *m, ldm_tensor *x);

/* nn.Dropout(p): no parameters; the mask comes from the context's RNG. */
typedef struct ldm_nn_dropout { float p; } ldm_nn_dropout;
LDM_API void ldm_nn_dropout_init(ldm_nn_dropout *m, float p);
LDM_API ldm_tensor *ldm_nn_dropout_forward(ldm_ctx *ctx, const ldm_nn_dropout *m, ldm_tensor *x, int training);

/* nn.Embedding(num, dim), weight N(0, 1). */
typedef struct ldm_nn_embedding {
    ldm_tensor *weight;           /* [N, D] */
    int64_t num, dim;
} ldm_nn_embedding;
LDM_API ldm_result ldm_nn_embedding_init(ldm_nn_params *P, ldm_nn_embedding *m, const char *name, int64_t num, int64_t dim);
LDM_API ldm_tensor *ldm_nn_embedding_forward(ldm_ctx *ctx, const ldm_nn_embedding *m, int64_t n, const int64_t *idx);

/* ---- state dicts -------------------------------------------------------------------------- */
/* Maps a file name (after prefix_strip / prefix_add) to the model's name: return `name`
   unchanged, a string written into buf (cap bytes), or NULL to skip the tensor silently. */
typedef const char *(*ldm_nn_rename_fn)(void *user, const char *name, char *buf, size_t cap);

/* One name that did not load. */
typedef struct ldm_nn_load_issue {
    char *name;                   /* model-side name (after mapping) */
    char *file_name;              /* the name in the file (NULL for a missing entry) */
    int file_ndim, model_ndim;    /* -1 when that side has no tensor */
    int64_t file_shape[LDM_MAX_DIMS], model_shape[LDM_MAX_DIMS];
} ldm_nn_load_issue;
typedef struct ldm_nn_load_report {
    int n_loaded, n_missing, n_unexpected, n_mismatched, n_skipped; /* skipped: filtered out by prefix_strip or rename */
    ldm_nn_load_issue *missing, *unexpected, *mismatched;
} ldm_nn_load_report;
LDM_API void ldm_nn_load_report_free(ldm_nn_load_report *r);

/* A zeroed struct is a non-strict load without mapping; opts NULL means strict. */
typedef struct ldm_nn_load_opts {
    int strict;                   /* every model entry loaded, every considered file tensor used, shapes equal */
    const char *prefix_strip;     /* only file names starting with it are considered; it is removed */
    const char *prefix_add;       /* then prepended */
    ldm_nn_rename_fn rename;      /* then applied (may be NULL) */
    void *rename_user;
    int allow_unit_dims;          /* accept a file shape that equals the model's after dropping
                                     trailing 1s, e.g. [C, C] for [C, C, 1, 1] (diffusers' linear
                                     attention vs CompVis's 1x1 conv) */
    ldm_nn_load_report *report;   /* optional: filled in (free with ldm_nn_load_report_free) */
    int allow_nonfinite;          /* accept NaN/Inf values (by default a tensor holding one is an
                                     error naming it: the file came from a diverged run) */
} ldm_nn_load_opts;

LDM_API ldm_result ldm_nn_load(ldm_ctx *ctx, ldm_nn_params *P, const char *path, const ldm_nn_load_opts *opts);
/* The same from an open file, e.g. to load several models from one checkpoint. */
LDM_API ldm_result ldm_nn_load_weights(ldm_ctx *ctx, ldm_nn_params *P, ldm_weights *w, const ldm_nn_load_opts *opts);
/* Writes parameters and persistent buffers, in registration order, as safetensors named
   prefix + name (prefix may be NULL), converted to dtype; metadata {"format": "pt"}. */
LDM_API ldm_result ldm_nn_save(ldm_ctx *ctx, const ldm_nn_params *P, const char *path, ldm_dtype dtype, const char *prefix);

/* ---- loss logs -------------------------------------------------------------------------- */
/* Named scalar values of one loss step ("train/total_loss", ...), what ldm_lpips.h's and
   ldm_diffusion.h's losses report (Lightning's self.log). */
#define LDM_LOSS_LOG_MAX 16
typedef struct ldm_loss_log_item { char key[64]; float value; } ldm_loss_log_item;
typedef struct ldm_loss_log { int n; ldm_loss_log_item item[LDM_LOSS_LOG_MAX]; } ldm_loss_log;
LDM_API const float *ldm_loss_log_get(const ldm_loss_log *log, const char *key); /* NULL when absent */
/* Appends "<prefix>/<name>" (prefix NULL: name alone); log may be NULL, a full log drops it. */
LDM_API void ldm_loss_log_put(ldm_loss_log *log, const char *prefix, const char *name, float v);

/* ---- optimizers ------------------------------------------------------------------------- */
typedef enum { LDM_OPTIM_SGD = 0, LDM_OPTIM_ADAM = 1, LDM_OPTIM_ADAMW = 2 } ldm_optim_type;

/* Hyper-parameters in double, as in Python, so they round to float where torch does. */
typedef struct ldm_nn_optim_config {
    ldm_optim_type type;
    double lr;
    double beta1, beta2, eps;     /* Adam, AdamW */
    double weight_decay;          /* Adam, SGD: L2 added to the gradient; AdamW: decoupled */
    double momentum, dampening;   /* SGD */
    int nesterov;                 /* SGD */
} ldm_nn_optim_config;
/* torch's defaults: Adam betas (0.9, 0.999), eps 1e-8, weight_decay 0; AdamW the same with
   weight_decay 0.01; SGD momentum 0, dampening 0, no nesterov, weight_decay 0. */
LDM_API ldm_nn_optim_config ldm_nn_optim_defaults(ldm_optim_type type, double lr);

typedef struct ldm_nn_optim ldm_nn_optim;
/* The group: every parameter that is trainable now and matches one of the patterns (all
   trainable parameters when n_patterns is 0). A pattern matching no parameter at all is an
   error; so is an empty group. Moments start at zero. */
LDM_API ldm_result ldm_nn_optim_create(ldm_ctx *ctx, ldm_nn_optim **opt, ldm_nn_params *P, const ldm_nn_optim_config *cfg,
                                       int n_patterns, const char *const *patterns);
LDM_API void ldm_nn_optim_destroy(ldm_nn_optim *opt);
/* One update of every group parameter that has requires_grad (frozen ones are skipped). */
LDM_API ldm_result ldm_nn_optim_step(ldm_ctx *ctx, ldm_nn_optim *opt);
LDM_API void ldm_nn_optim_zero_grad(ldm_ctx *ctx, ldm_nn_optim *opt);  /* the group's gradients only */
LDM_API ldm_result ldm_nn_optim_clip_grad_norm(ldm_ctx *ctx, ldm_nn_optim *opt, float max_norm, float *total_norm);
LDM_API void ldm_nn_optim_set_lr(ldm_nn_optim *opt, double lr);
LDM_API double ldm_nn_optim_lr(const ldm_nn_optim *opt);
LDM_API const ldm_nn_optim_config *ldm_nn_optim_cfg(const ldm_nn_optim *opt);
LDM_API int64_t ldm_nn_optim_steps(const ldm_nn_optim *opt);            /* steps taken so far */
LDM_API int ldm_nn_optim_size(const ldm_nn_optim *opt);                  /* parameters in the group */
LDM_API const ldm_nn_entry *ldm_nn_optim_entry(const ldm_nn_optim *opt, int i);
LDM_API int64_t ldm_nn_optim_numel(const ldm_nn_optim *opt);
/* Bytes of optimizer state (moments, 64-byte padded slices): frozen parameters cost none. */
LDM_API int64_t ldm_nn_optim_state_bytes(const ldm_nn_optim *opt);
/* State as safetensors: "<name>.exp_avg" and "<name>.exp_avg_sq" (Adam/AdamW) or
   "<name>.momentum_buffer" (SGD with momentum), float32; metadata "type", "step", "lr".
   Loading checks type, names and shapes (all before writing anything): state saved while a
   different set of parameters was frozen is an error naming the first parameter that has
   state in the file but is not in the group, or is in the group without state in the file. */
LDM_API ldm_result ldm_nn_optim_save(ldm_ctx *ctx, const ldm_nn_optim *opt, const char *path);
LDM_API ldm_result ldm_nn_optim_load(ldm_ctx *ctx, ldm_nn_optim *opt, const char *path);

/* ---- LoRA ---------------------------------------------------------------------------------
   Low-rank adapters on linear layers, with peft's LoRA arithmetic and names. An adapted layer
   computes y = W x + b + scaling * B(A(dropout(x))), A [r, I], B [O, r], scaling = alpha / r
   (alpha / sqrt(r) with use_rslora). The adapters of one base registry form a set with its
   own registry (its own parameter, gradient and optimizer blocks), named
   "<module>.lora_A.weight" and "<module>.lora_B.weight". */
typedef struct ldm_nn_lora_config {
    int r;                        /* rank, >= 1 */
    float alpha;                  /* lora_alpha */
    float dropout;                /* lora_dropout on the adapter input, in [0, 1); training mode only */
    int use_rslora;               /* scaling = alpha / sqrt(r) */
    int n_targets;
    const char *const *targets;   /* target_modules: a linear layer is adapted when its name, or
                                     a part of it after a '.', matches one ('*' wildcards), e.g.
                                     "attn.qkv" adapts "blocks.3.attn.qkv"; no ',' inside */
} ldm_nn_lora_config;
typedef struct ldm_nn_lora ldm_nn_lora;

/* Attaches adapters to every linear layer of base (allocated) matching a target, and
   freezes the whole base (gradient block released): only adapters train. A initialised
   kaiming_uniform(a = sqrt(5)) from the context's RNG, B zero, so the adapted model starts
   equal to the base. Errors: rank < 1, a target matching no linear layer (the message lists
   the layer names), a base that already has adapters. One set per base at a time. */
LDM_API ldm_result ldm_nn_lora_create(ldm_ctx *ctx, ldm_nn_lora **L, ldm_nn_params *base, const ldm_nn_lora_config *cfg);
/* The same with the config stored in an adapter file (ldm_nn_lora_save), then its values. */
LDM_API ldm_result ldm_nn_lora_create_from_file(ldm_ctx *ctx, ldm_nn_lora **L, ldm_nn_params *base, const char *path);
/* Detaches the adapters (merged ones stay folded into the base weights; the base stays
   frozen). Destroying the base first is allowed: the set then only frees itself. */
LDM_API void ldm_nn_lora_destroy(ldm_nn_lora *L);
LDM_API ldm_nn_params *ldm_nn_lora_params(ldm_nn_lora *L);      /* the adapters: give it to the optimizer */
LDM_API const ldm_nn_lora_config *ldm_nn_lora_cfg(const ldm_nn_lora *L);
LDM_API int ldm_nn_lora_count(const ldm_nn_lora *L);            /* adapted layers */
LDM_API const char *ldm_nn_lora_module(const ldm_nn_lora *L, int i);  /* the i-th adapted layer's name */
LDM_API float ldm_nn_lora_scaling(const ldm_nn_lora *L);
/* Training mode turns the adapter dropout on (the context's RNG). Off after create. */
LDM_API void ldm_nn_lora_set_training(ldm_nn_lora *L, int on);
/* W += scaling * B A for every adapter (sums in double, rounded once per element), after
   which the layers run without the adapter term (merged forward = unmerged within float
   rounding); unmerge subtracts it again (W back within rounding, not bitwise). Merging
   twice, unmerging an unmerged set and loading into a merged set are errors; while merged
   the adapters get no gradient (unmerge before training on). */
LDM_API ldm_result ldm_nn_lora_merge(ldm_ctx *ctx, ldm_nn_lora *L);
LDM_API ldm_result ldm_nn_lora_unmerge(ldm_ctx *ctx, ldm_nn_lora *L);
LDM_API int ldm_nn_lora_merged(const ldm_nn_lora *L);
/* The adapters alone as safetensors (float32) with metadata "format" "pt", "lora_rank",
   "lora_alpha", "lora_dropout", "use_rslora" and "target_modules" (comma-separated). Loading
   checks rank, alpha and use_rslora, every name and shape (before writing anything): a file
   for another model or other layer sizes is an error naming the tensor. */
LDM_API ldm_result ldm_nn_lora_save(ldm_ctx *ctx, const ldm_nn_lora *L, const char *path);
LDM_API ldm_result ldm_nn_lora_load(ldm_ctx *ctx, ldm_nn_lora *L, const char *path);

#ifdef __cplusplus
}
#endif
#endif /* LDM_NN_H */

/* ========================================================================================== */
/*                                      IMPLEMENTATION                                        */
/* ========================================================================================== */
#if defined(LDM_IMPLEMENTATION) || defined(LDM_NN_IMPLEMENTATION)
#ifndef LDM_NN_IMPLEMENTATION_DONE
#define LDM_NN_IMPLEMENTATION_DONE

#ifndef LDM_TENSOR_IMPLEMENTATION_DONE
#error "ldm_nn.h: its implementation needs ldm_tensor.h's in the same file (define LDM_IMPLEMENTATION, or LDM_TENSOR_IMPLEMENTATION too)"
#endif

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LDM__NN_ALIGNF 16     /* floats per 64 bytes: every slice starts on a 64-byte boundary */
#define LDM__NN_UP(n) (((n) + (LDM__NN_ALIGNF - 1)) / LDM__NN_ALIGNF * LDM__NN_ALIGNF)

struct ldm_nn_params {
    ldm_ctx *ctx;
    ldm_device device;
    ldm_nn_entry *e;
    int n, cap;
    char *prefix;                 /* joined prefix stack */
    size_t plen, pcap;
    size_t *stack;                /* prefix length before each push */
    int depth, stack_cap;
    int allocated;
    int *sorted;                  /* entry indices sorted by name (after alloc) */
    void *raw[3];                 /* blocks as returned by the backend (before alignment) */
    float *block[3];
    int64_t block_n[3];
    ldm_nn_module **mods;         /* linear layers, in registration order (each its own allocation) */
    int nmod, modcap;
    struct ldm_nn_lora *lora;     /* the attached adapter set, or NULL */
    int frozen;                   /* ldm_nn_params_freeze */
};

/* A linear layer's record: where an adapter hooks in. */
struct ldm__nn_adapter;
struct ldm_nn_module {
    char *name;                   /* "blocks.0.attn.qkv" */
    ldm_tensor *weight, *bias;
    int in, out;
    struct ldm__nn_adapter *lora; /* attached adapter or NULL */
};
static ldm_tensor *ldm__nn_lora_term(ldm_ctx *ctx, const struct ldm__nn_adapter *a, ldm_tensor *x, ldm_tensor *y);

/* ---- init rules ----------------------------------------------------------------------- */
LDM_API ldm_nn_init ldm_nn_init_const(float v) { ldm_nn_init r; r.kind = LDM_NN_INIT_CONST; r.a = v; r.b = 0.0f; return r; }
LDM_API ldm_nn_init ldm_nn_init_uniform(float lo, float hi) { ldm_nn_init r; r.kind = LDM_NN_INIT_UNIFORM; r.a = lo; r.b = hi; return r; }
LDM_API ldm_nn_init ldm_nn_init_normal(float mean, float std) { ldm_nn_init r; r.kind = LDM_NN_INIT_NORMAL; r.a = mean; r.b = std; return r; }
LDM_API ldm_nn_init ldm_nn_init_kaiming_uniform(double a, int64_t fan_in) {
    double bound = fan_in > 0 ? sqrt(3.0) * sqrt(2.0 / (1.0 + a * a)) / sqrt((double)fan_in) : 0.0;
    return ldm_nn_init_uniform((float)-bound, (float)bound);
}
LDM_API ldm_nn_init ldm_nn_init_fan_in_uniform(int64_t fan_in) {
    double bound = fan_in > 0 ? 1.0 / sqrt((double)fan_in) : 0.0;
    return ldm_nn_init_uniform((float)-bound, (float)bound);
}
LDM_API ldm_nn_init ldm_nn_init_xavier_uniform(int64_t fan_in, int64_t fan_out, double gain) {
    double bound = fan_in + fan_out > 0 ? gain * sqrt(6.0 / (double)(fan_in + fan_out)) : 0.0;
    return ldm_nn_init_uniform((float)-bound, (float)bound);
}
static int64_t ldm__nn_receptive(const ldm_tensor *t) {
    int64_t r = 1;
    for (int i = 2; i < t->ndim; i++) r *= t->shape[i];
    return r;
}
LDM_API int64_t ldm_nn_fan_in(const ldm_tensor *t) {
    if (!t || t->ndim == 0) return 0;
    return t->ndim == 1 ? t->shape[0] : t->shape[1] * ldm__nn_receptive(t);
}
LDM_API int64_t ldm_nn_fan_out(const ldm_tensor *t) {
    if (!t || t->ndim == 0) return 0;
    return t->ndim == 1 ? t->shape[0] : t->shape[0] * ldm__nn_receptive(t);
}

/* ---- patterns ------------------------------------------------------------------------- */
/* '*' glob of pattern[0:pn] against s[0:sn] (iterative, with one backtrack point). */
static int ldm__nn_glob(const char *p, size_t pn, const char *s, size_t sn) {
    size_t pi = 0, si = 0, star = (size_t)-1, mark = 0;
    while (si < sn) {
        if (pi < pn && p[pi] == '*') { star = pi++; mark = si; }
        else if (pi < pn && p[pi] == s[si]) { pi++; si++; }
        else if (star != (size_t)-1) { pi = star + 1; si = ++mark; }
        else return 0;
    }
    while (pi < pn && p[pi] == '*') pi++;
    return pi == pn;
}
LDM_API int ldm_nn_match(const char *pattern, const char *name) {
    if (!pattern || !pattern[0]) return 1;
    size_t pn = strlen(pattern), sn = strlen(name);
    if (pattern[pn - 1] == '.') pn--;
    if (pn == 0) return 1;
    for (size_t k = 1; k <= sn; k++)
        if ((k == sn || name[k] == '.') && ldm__nn_glob(pattern, pn, name, k)) return 1;
    return 0;
}

/* ---- the registry --------------------------------------------------------------------- */
static void ldm__nn_lora_orphan(struct ldm_nn_lora *L);
LDM_API ldm_result ldm_nn_params_create(ldm_ctx *ctx, ldm_nn_params **out, ldm_device device) {
    *out = NULL;
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    if (!ldm_device_name(ctx, device))
        return ldm_ctx_seterr(ctx, LDM_ERR_DEVICE, "ldm_nn_params_create: device %d has no backend (hint: attach it, e.g. with ldm_cuda.cuh, or use LDM_CPU)", (int)device);
    ldm_nn_params *P = (ldm_nn_params *)LDM_MALLOC(sizeof *P);
    if (!P) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_params_create: out of memory");
    memset(P, 0, sizeof *P);
    P->ctx = ctx;
    P->device = device;
    P->prefix = (char *)LDM_MALLOC(64);
    if (!P->prefix) { LDM_FREE(P); return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_params_create: out of memory"); }
    P->prefix[0] = 0;
    P->pcap = 64;
    *out = P;
    return LDM_OK;
}

LDM_API void ldm_nn_params_destroy(ldm_nn_params *P) {
    if (!P) return;
    for (int b = 0; b < 3; b++)
        ldm_device_free(P->ctx, P->device, P->raw[b]);
    for (int i = 0; i < P->n; i++) {
        LDM_FREE((void *)P->e[i].name);
        LDM_FREE(P->e[i].t);
    }
    LDM_FREE(P->e);
    for (int i = 0; i < P->nmod; i++) { LDM_FREE(P->mods[i]->name); LDM_FREE(P->mods[i]); }
    LDM_FREE(P->mods);
    if (P->lora) ldm__nn_lora_orphan(P->lora);
    LDM_FREE(P->prefix);
    LDM_FREE(P->stack);
    LDM_FREE(P->sorted);
    LDM_FREE(P);
}
LDM_API ldm_device ldm_nn_params_device(const ldm_nn_params *P) { return P->device; }

static int ldm__nn_reserve(ldm_nn_params *P, size_t need) {
    if (need <= P->pcap) return 1;
    size_t cap = P->pcap * 2;
    while (cap < need) cap *= 2;
    char *p = (char *)LDM_REALLOC(P->prefix, cap);
    if (!p) { ldm_ctx_seterr(P->ctx, LDM_ERR_NOMEM, "ldm_nn_push: out of memory"); return 0; }
    P->prefix = p;
    P->pcap = cap;
    return 1;
}
LDM_API void ldm_nn_push(ldm_nn_params *P, const char *name) {
    if (P->depth == P->stack_cap) {
        int cap = P->stack_cap ? P->stack_cap * 2 : 16;
        size_t *s = (size_t *)LDM_REALLOC(P->stack, sizeof(size_t) * (size_t)cap);
        if (!s) { ldm_ctx_seterr(P->ctx, LDM_ERR_NOMEM, "ldm_nn_push: out of memory"); return; }
        P->stack = s;
        P->stack_cap = cap;
    }
    P->stack[P->depth++] = P->plen;
    if (!name || !name[0]) return;
    size_t n = strlen(name);
    if (!ldm__nn_reserve(P, P->plen + n + 2)) return;
    if (P->plen) P->prefix[P->plen++] = '.';
    memcpy(P->prefix + P->plen, name, n + 1);
    P->plen += n;
}
LDM_API void ldm_nn_pushf(ldm_nn_params *P, const char *fmt, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= sizeof buf) {
        ldm_ctx_seterr(P->ctx, LDM_ERR_INVALID, "ldm_nn_pushf: name from \"%s\" is longer than %d characters", fmt, (int)sizeof buf - 1);
        buf[0] = 0;
    }
    ldm_nn_push(P, buf);
}
LDM_API void ldm_nn_pop(ldm_nn_params *P) {
    LDM_ASSERT(P->depth > 0 && "ldm_nn_pop without a matching push");
    P->plen = P->stack[--P->depth];
    P->prefix[P->plen] = 0;
}
LDM_API const char *ldm_nn_prefix(const ldm_nn_params *P) { return P->prefix; }

static ldm_tensor *ldm__nn_register(ldm_nn_params *P, const char *name, ldm_shape s, ldm_nn_init init, ldm_nn_kind kind) {
    ldm_ctx *ctx = P->ctx;
    if (ldm_ctx_status(ctx)) return NULL;
    size_t nl = name ? strlen(name) : 0;
    if (P->allocated)
        { ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn: cannot register \"%s%s%s\" after ldm_nn_params_alloc (hint: register every layer first)", P->prefix, P->plen && nl ? "." : "", name ? name : ""); return NULL; }
    if (P->plen == 0 && nl == 0) { ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn: a tensor needs a name (empty prefix and name)"); return NULL; }
    int64_t numel = 1;
    for (int i = 0; i < s.ndim; i++) numel *= s.d[i];
    if (s.ndim < 0 || s.ndim > LDM_MAX_DIMS || numel < 0) {
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn: invalid shape (rank %d) for \"%s.%s\"", s.ndim, P->prefix, name ? name : "");
        return NULL;
    }
    for (int i = 0; i < s.ndim; i++)
        if (s.d[i] < 0) { ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn: negative dim %lld for \"%s.%s\"", (long long)s.d[i], P->prefix, name ? name : ""); return NULL; }
    if (P->n == P->cap) {
        int cap = P->cap ? P->cap * 2 : 64;
        ldm_nn_entry *e = (ldm_nn_entry *)LDM_REALLOC(P->e, sizeof(ldm_nn_entry) * (size_t)cap);
        if (!e) { ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn: out of memory registering %d tensors", cap); return NULL; }
        P->e = e;
        P->cap = cap;
    }
    char *full = (char *)LDM_MALLOC(P->plen + nl + 2);
    ldm_tensor *t = (ldm_tensor *)LDM_MALLOC(sizeof(ldm_tensor));
    if (!full || !t) { LDM_FREE(full); LDM_FREE(t); ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn: out of memory"); return NULL; }
    memcpy(full, P->prefix, P->plen);
    size_t k = P->plen;
    if (k && nl) full[k++] = '.';
    if (nl) memcpy(full + k, name, nl);
    full[k + nl] = 0;
    memset(t, 0, sizeof *t);
    t->ndim = s.ndim;
    for (int i = 0; i < s.ndim; i++) t->shape[i] = s.d[i];
    t->numel = numel;
    t->device = P->device;
    t->node = -1;
    t->requires_grad = kind == LDM_NN_PARAM;
    t->name = full;
    ldm_nn_entry *e = &P->e[P->n++];
    e->name = full;
    e->t = t;
    e->kind = kind;
    e->init = init;
    e->offset = -1;
    e->grad_offset = -1;
    return t;
}
LDM_API ldm_tensor *ldm_nn_param(ldm_nn_params *P, const char *name, ldm_shape s, ldm_nn_init init) {
    return ldm__nn_register(P, name, s, init, LDM_NN_PARAM);
}
LDM_API ldm_tensor *ldm_nn_buffer(ldm_nn_params *P, const char *name, ldm_shape s, ldm_nn_init init, int persistent) {
    return ldm__nn_register(P, name, s, init, persistent ? LDM_NN_BUFFER : LDM_NN_BUFFER_TRANSIENT);
}
static int ldm__nn_entry_of(const ldm_nn_params *P, const ldm_tensor *t) {
    for (int i = 0; i < P->n; i++) if (P->e[i].t == t) return i;
    return -1;
}
LDM_API void ldm_nn_set_init(ldm_nn_params *P, ldm_tensor *t, ldm_nn_init init) {
    if (!t) return;
    int i = ldm__nn_entry_of(P, t);
    if (i < 0) { ldm_ctx_seterr(P->ctx, LDM_ERR_INVALID, "ldm_nn_set_init: tensor \"%s\" is not in this registry", t->name ? t->name : "?"); return; }
    P->e[i].init = init;
}
LDM_API ldm_result ldm_nn_set_trainable(ldm_nn_params *P, const char *pattern, int on) {
    ldm_ctx *ctx = P->ctx;
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    if (on && P->frozen)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_set_trainable(\"%s\"): this model was frozen for good with ldm_nn_params_freeze "
                              "(hint: the first stage stays frozen; build another registry to train it)", pattern ? pattern : "");
    int hits = 0;
    for (int i = 0; i < P->n; i++) {
        ldm_nn_entry *e = &P->e[i];
        if (e->kind != LDM_NN_PARAM || !ldm_nn_match(pattern, e->name)) continue;
        hits++;
        if (on && P->allocated && !e->t->grad)
            return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_set_trainable: \"%s\" was frozen when its memory was allocated and has no gradient slice "
                                  "(hint: unfreeze before ldm_nn_params_alloc)", e->name);
    }
    if (!hits)
        return ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "ldm_nn_set_trainable: no parameter matches \"%s\" (hint: patterns are name prefixes "
                              "at '.' boundaries with '*' wildcards, e.g. \"encoder\" or \"*.lora_up\")", pattern ? pattern : "");
    for (int i = 0; i < P->n; i++) {
        ldm_nn_entry *e = &P->e[i];
        if (e->kind == LDM_NN_PARAM && ldm_nn_match(pattern, e->name)) e->t->requires_grad = on ? 1 : 0;
    }
    return LDM_OK;
}

static void *ldm__nn_dev_alloc(ldm_ctx *ctx, ldm_device d, int64_t nfloats, void **raw, int zeroed);

/* Records a linear layer (its prefix is the current one). */
static ldm_nn_module *ldm__nn_add_module(ldm_nn_params *P, const ldm_nn_linear *m) {
    if (ldm_ctx_status(P->ctx)) return NULL;
    if (P->nmod == P->modcap) {
        int cap = P->modcap ? P->modcap * 2 : 32;
        ldm_nn_module **v = (ldm_nn_module **)LDM_REALLOC(P->mods, sizeof(ldm_nn_module *) * (size_t)cap);
        if (!v) { ldm_ctx_seterr(P->ctx, LDM_ERR_NOMEM, "ldm_nn: out of memory"); return NULL; }
        P->mods = v;
        P->modcap = cap;
    }
    ldm_nn_module *r = (ldm_nn_module *)LDM_MALLOC(sizeof *r);
    char *name = (char *)LDM_MALLOC(P->plen + 1);
    if (!r || !name) { LDM_FREE(r); LDM_FREE(name); ldm_ctx_seterr(P->ctx, LDM_ERR_NOMEM, "ldm_nn: out of memory"); return NULL; }
    memcpy(name, P->prefix, P->plen + 1);
    r->name = name;
    r->weight = m->weight;
    r->bias = m->bias;
    r->in = m->in;
    r->out = m->out;
    r->lora = NULL;
    P->mods[P->nmod++] = r;
    return r;
}

LDM_API ldm_result ldm_nn_params_compact_grads(ldm_ctx *ctx, ldm_nn_params *P) {
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    if (!P->allocated) return LDM_OK;
    int64_t n = 0;
    for (int i = 0; i < P->n; i++) {
        ldm_nn_entry *e = &P->e[i];
        if (e->kind == LDM_NN_PARAM && e->t->requires_grad && e->t->grad) n += LDM__NN_UP(e->t->numel);
    }
    if (n == P->block_n[LDM_NN_BLOCK_GRADS]) return LDM_OK; /* nothing frozen since the layout */
    void *raw = NULL;
    float *g = (float *)ldm__nn_dev_alloc(ctx, P->device, n, &raw, 1);
    if (n && !g)
        return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_params_compact_grads: cannot allocate %.1f MiB on %s", (double)n * 4 / 1048576.0,
                              ldm_device_name(ctx, P->device));
    int64_t off = 0;
    for (int i = 0; i < P->n; i++) {
        ldm_nn_entry *e = &P->e[i];
        if (e->kind != LDM_NN_PARAM) continue;
        if (e->t->requires_grad && e->t->grad) {
            ldm_device_copy(ctx, g + off, P->device, e->t->grad, P->device, (size_t)e->t->numel * sizeof(float));
            e->grad_offset = off;
            e->t->grad = g + off;
            off += LDM__NN_UP(e->t->numel);
        } else {
            e->grad_offset = -1;
            e->t->grad = NULL;
        }
    }
    ldm_device_free(ctx, P->device, P->raw[LDM_NN_BLOCK_GRADS]);
    P->raw[LDM_NN_BLOCK_GRADS] = raw;
    P->block[LDM_NN_BLOCK_GRADS] = g;
    P->block_n[LDM_NN_BLOCK_GRADS] = n;
    return ldm_ctx_status(ctx);
}

static int ldm__nn_starts(const char *name, const char *prefix) {
    return !strcmp(prefix, "all") || !strncmp(name, prefix, strlen(prefix));
}
LDM_API ldm_result ldm_nn_disable_untrainable_params(ldm_nn_params *P, int n, const char *const *prefixes, int64_t *n_trainable) {
    ldm_ctx *ctx = P->ctx;
    if (n_trainable) *n_trainable = 0;
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    if (n < 0 || (n > 0 && !prefixes))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_disable_untrainable_params: %d prefixes at %p", n, (const void *)prefixes);
    for (int k = 0; k < n; k++) {
        if (!prefixes[k]) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_disable_untrainable_params: prefix %d is NULL", k);
        int hit = 0;
        for (int i = 0; i < P->n && !hit; i++) hit = P->e[i].kind == LDM_NN_PARAM && ldm__nn_starts(P->e[i].name, prefixes[k]);
        if (!hit) {
            const char *ex = NULL;
            for (int i = 0; i < P->n && !ex; i++) if (P->e[i].kind == LDM_NN_PARAM) ex = P->e[i].name;
            return ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "ldm_nn_disable_untrainable_params: no parameter name starts with \"%s\" "
                                  "(hint: prefixes are plain string prefixes of state-dict names such as \"%s\"; \"all\" freezes everything)",
                                  prefixes[k], ex ? ex : "?");
        }
    }
    for (int i = 0; i < P->n; i++) {
        ldm_nn_entry *e = &P->e[i];
        for (int k = 0; k < n && e->kind == LDM_NN_PARAM; k++)
            if (ldm__nn_starts(e->name, prefixes[k])) { e->t->requires_grad = 0; break; }
    }
    if (ldm_nn_params_compact_grads(ctx, P)) return ldm_ctx_status(ctx);
    if (n_trainable) *n_trainable = ldm_nn_numel(P, NULL, 1);
    return LDM_OK;
}
LDM_API ldm_result ldm_nn_params_freeze(ldm_ctx *ctx, ldm_nn_params *P) {
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    for (int i = 0; i < P->n; i++) if (P->e[i].kind == LDM_NN_PARAM) P->e[i].t->requires_grad = 0;
    P->frozen = 1;
    return ldm_nn_params_compact_grads(ctx, P);
}
LDM_API int ldm_nn_params_frozen(const ldm_nn_params *P) { return P->frozen; }

/* Sorted index by a merge sort (no global state, stable). */
static void ldm__nn_msort(const ldm_nn_params *P, int *a, int *tmp, int n) {
    if (n < 2) return;
    int h = n / 2;
    ldm__nn_msort(P, a, tmp, h);
    ldm__nn_msort(P, a + h, tmp, n - h);
    int i = 0, j = h, k = 0;
    while (i < h && j < n) tmp[k++] = strcmp(P->e[a[i]].name, P->e[a[j]].name) <= 0 ? a[i++] : a[j++];
    while (i < h) tmp[k++] = a[i++];
    while (j < n) tmp[k++] = a[j++];
    memcpy(a, tmp, sizeof(int) * (size_t)n);
}

static void *ldm__nn_dev_alloc(ldm_ctx *ctx, ldm_device d, int64_t nfloats, void **raw, int zeroed) {
    *raw = NULL;
    if (nfloats == 0) return NULL;
    size_t bytes = (size_t)nfloats * sizeof(float) + 64;
    *raw = zeroed ? ldm_device_alloc_zeroed(ctx, d, bytes) : ldm_device_alloc(ctx, d, bytes);
    if (!*raw) return NULL;
    return (void *)(((uintptr_t)*raw + 63) & ~(uintptr_t)63); /* 64-byte aligned, as LDM__NN_ALIGNF assumes */
}

LDM_API ldm_result ldm_nn_params_alloc(ldm_ctx *ctx, ldm_nn_params *P) {
    LDM_ASSERT(ctx == P->ctx && "ldm_nn_params_alloc: ctx is not the registry's context");
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    if (P->allocated) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_params_alloc: already allocated");
    if (P->depth) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_params_alloc: %d ldm_nn_push without ldm_nn_pop (prefix \"%s\")", P->depth, P->prefix);
    P->sorted = (int *)LDM_MALLOC(sizeof(int) * (size_t)(P->n ? P->n : 1) * 2);
    if (!P->sorted) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_params_alloc: out of memory");
    for (int i = 0; i < P->n; i++) P->sorted[i] = i;
    ldm__nn_msort(P, P->sorted, P->sorted + P->n, P->n);
    for (int i = 1; i < P->n; i++)
        if (!strcmp(P->e[P->sorted[i]].name, P->e[P->sorted[i - 1]].name))
            return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_params_alloc: \"%s\" is registered twice (entries %d and %d; hint: check the ldm_nn_push/pop nesting)",
                                  P->e[P->sorted[i]].name, P->sorted[i - 1], P->sorted[i]);
    int64_t n[3] = {0, 0, 0};
    for (int i = 0; i < P->n; i++) {
        ldm_nn_entry *e = &P->e[i];
        int b = e->kind == LDM_NN_PARAM ? LDM_NN_BLOCK_PARAMS : LDM_NN_BLOCK_BUFFERS;
        e->offset = n[b];
        n[b] += LDM__NN_UP(e->t->numel);
        if (e->kind == LDM_NN_PARAM && e->t->requires_grad) {
            e->grad_offset = n[LDM_NN_BLOCK_GRADS];
            n[LDM_NN_BLOCK_GRADS] += LDM__NN_UP(e->t->numel);
        }
    }
    for (int b = 0; b < 3; b++) {
        /* the gradient block zeroed lazily: a model used only for inference never touches it */
        P->block[b] = (float *)ldm__nn_dev_alloc(ctx, P->device, n[b], &P->raw[b], b == LDM_NN_BLOCK_GRADS);
        if (n[b] && !P->block[b])
            return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_params_alloc: cannot allocate %.1f MiB for the %s block on %s",
                                  (double)n[b] * 4 / 1048576.0, b == 0 ? "parameter" : b == 1 ? "gradient" : "buffer", ldm_device_name(ctx, P->device));
        P->block_n[b] = n[b];
    }
    for (int i = 0; i < P->n; i++) {
        ldm_nn_entry *e = &P->e[i];
        e->t->data = P->block[e->kind == LDM_NN_PARAM ? LDM_NN_BLOCK_PARAMS : LDM_NN_BLOCK_BUFFERS] + e->offset;
        e->t->grad = e->grad_offset >= 0 ? P->block[LDM_NN_BLOCK_GRADS] + e->grad_offset : NULL;
        int64_t pad = LDM__NN_UP(e->t->numel) - e->t->numel; /* init writes the data; the padding stays zero */
        ldm_device_fill(ctx, P->device, e->t->data + e->t->numel, pad, 0.0f);
    }
    P->allocated = 1;
    return ldm_nn_params_init(ctx, P);
}

LDM_API ldm_result ldm_nn_params_init(ldm_ctx *ctx, ldm_nn_params *P) {
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    if (!P->allocated) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_params_init: call ldm_nn_params_alloc first");
    for (int i = 0; i < P->n; i++) {
        ldm_nn_entry *e = &P->e[i];
        ldm_tensor *t = e->t;
        if (!t->numel) continue;
        switch (e->init.kind) {
        case LDM_NN_INIT_CONST: ldm_device_fill(ctx, P->device, t->data, t->numel, e->init.a); break;
        case LDM_NN_INIT_UNIFORM: ldm_rng_uniform(ctx, ldm_ctx_rng(ctx), P->device, t->data, t->numel, e->init.a, e->init.b); break;
        case LDM_NN_INIT_NORMAL: ldm_rng_normal(ctx, ldm_ctx_rng(ctx), P->device, t->data, t->numel, e->init.a, e->init.b); break;
        default: return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_params_init: \"%s\" has an unknown init kind %d", e->name, (int)e->init.kind);
        }
    }
    return ldm_ctx_status(ctx);
}

LDM_API int ldm_nn_count(const ldm_nn_params *P) { return P->n; }
LDM_API const ldm_nn_entry *ldm_nn_entry_at(const ldm_nn_params *P, int i) { return i >= 0 && i < P->n ? &P->e[i] : NULL; }
LDM_API int ldm_nn_index(const ldm_nn_params *P, const char *name) {
    if (P->allocated) {
        int lo = 0, hi = P->n - 1;
        while (lo <= hi) {
            int mid = (lo + hi) / 2, c = strcmp(P->e[P->sorted[mid]].name, name);
            if (c == 0) return P->sorted[mid];
            if (c < 0) lo = mid + 1; else hi = mid - 1;
        }
        return -1;
    }
    for (int i = 0; i < P->n; i++) if (!strcmp(P->e[i].name, name)) return i;
    return -1;
}
LDM_API ldm_tensor *ldm_nn_find(const ldm_nn_params *P, const char *name) {
    int i = ldm_nn_index(P, name);
    return i < 0 ? NULL : P->e[i].t;
}
LDM_API int64_t ldm_nn_numel(const ldm_nn_params *P, const char *pattern, int trainable_only) {
    int64_t n = 0;
    for (int i = 0; i < P->n; i++) {
        const ldm_nn_entry *e = &P->e[i];
        if (e->kind == LDM_NN_PARAM && (!trainable_only || e->t->requires_grad) && ldm_nn_match(pattern, e->name)) n += e->t->numel;
    }
    return n;
}
LDM_API float *ldm_nn_block(const ldm_nn_params *P, ldm_nn_block_id b, int64_t *n) {
    if (n) *n = P->block_n[b];
    return P->block[b];
}
LDM_API ldm_result ldm_nn_copy_from_host(ldm_ctx *ctx, ldm_tensor *t, const float *src) {
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    if (!t || !t->data) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_copy_from_host: tensor %s has no memory (hint: ldm_nn_params_alloc first)", t && t->name ? t->name : "(null)");
    ldm_device_copy(ctx, t->data, t->device, src, LDM_CPU, (size_t)t->numel * sizeof(float));
    return LDM_OK;
}

/* ---- gradients: zeroing and clipping ---------------------------------------------------- */
LDM_API void ldm_nn_zero_grad(ldm_ctx *ctx, ldm_nn_params *P) {
    ldm_device_fill(ctx, P->device, P->block[LDM_NN_BLOCK_GRADS], P->block_n[LDM_NN_BLOCK_GRADS], 0.0f);
}

/* The shared core of both clip functions, on the grads of the listed entries. torch: the
   norm of the per-tensor norms (summed in double here), then every grad *= max_norm /
   (norm + 1e-6) when that is below 1. */
static ldm_result ldm__nn_clip(ldm_ctx *ctx, ldm_device dev, ldm_nn_entry *const *es, int cnt, float max_norm, float *total_norm) {
    if (total_norm) *total_norm = 0.0f;
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    double total = 0.0;
    for (int i = 0; i < cnt; i++) {
        ldm_tensor *t = es[i]->t;
        if (t->requires_grad && t->grad) total += ldm_device_sum_squares(ctx, dev, t->grad, t->numel);
    }
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    float tn = (float)sqrt(total), coef = max_norm / (tn + 1e-6f);
    if (total_norm) *total_norm = tn;
    for (int i = 0; i < cnt && coef < 1.0f; i++) {
        ldm_tensor *t = es[i]->t;
        if (t->requires_grad && t->grad) ldm_device_scale(ctx, dev, t->grad, t->numel, coef);
    }
    return ldm_ctx_status(ctx);
}
LDM_API ldm_result ldm_nn_clip_grad_norm(ldm_ctx *ctx, ldm_nn_params *P, float max_norm, float *total_norm) {
    ldm_nn_entry **es = (ldm_nn_entry **)LDM_MALLOC(sizeof(ldm_nn_entry *) * (size_t)(P->n ? P->n : 1));
    if (!es) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_clip_grad_norm: out of memory");
    int m = 0;
    for (int i = 0; i < P->n; i++) if (P->e[i].kind == LDM_NN_PARAM) es[m++] = &P->e[i];
    ldm_result r = ldm__nn_clip(ctx, P->device, es, m, max_norm, total_norm);
    LDM_FREE(es);
    return r;
}

/* ---- layers ----------------------------------------------------------------------------- */
LDM_API ldm_result ldm_nn_conv2d_init_ex(ldm_nn_params *P, ldm_nn_conv2d *m, const char *name, int in, int out,
                                         int kh, int kw, int stride_h, int stride_w, const int pad[4], int bias) {
    memset(m, 0, sizeof *m);
    if (in < 1 || out < 1 || kh < 1 || kw < 1 || stride_h < 1 || stride_w < 1 || pad[0] < 0 || pad[1] < 0 || pad[2] < 0 || pad[3] < 0)
        return ldm_ctx_seterr(P->ctx, LDM_ERR_INVALID, "ldm_nn_conv2d_init: %s%s%s: invalid in %d out %d kernel %dx%d stride %dx%d pad %d,%d,%d,%d",
                              P->prefix, P->plen ? "." : "", name ? name : "", in, out, kh, kw, stride_h, stride_w, pad[0], pad[1], pad[2], pad[3]);
    m->in = in; m->out = out; m->kh = kh; m->kw = kw; m->stride_h = stride_h; m->stride_w = stride_w;
    for (int i = 0; i < 4; i++) m->pad[i] = pad[i];
    int64_t fan_in = (int64_t)in * kh * kw;
    ldm_nn_push(P, name);
    m->weight = ldm_nn_param(P, "weight", ldm_shape4(out, in, kh, kw), ldm_nn_init_kaiming_uniform(sqrt(5.0), fan_in));
    if (bias) m->bias = ldm_nn_param(P, "bias", ldm_shape1(out), ldm_nn_init_fan_in_uniform(fan_in));
    ldm_nn_pop(P);
    return ldm_ctx_status(P->ctx);
}
LDM_API ldm_result ldm_nn_conv2d_init(ldm_nn_params *P, ldm_nn_conv2d *m, const char *name, int in, int out,
                                      int kernel, int stride, int pad, int bias) {
    int p4[4];
    p4[0] = p4[1] = p4[2] = p4[3] = pad;
    return ldm_nn_conv2d_init_ex(P, m, name, in, out, kernel, kernel, stride, stride, p4, bias);
}
LDM_API ldm_tensor *ldm_nn_conv2d_forward(ldm_ctx *ctx, const ldm_nn_conv2d *m, ldm_tensor *x) {
    return ldm_conv2d_ex(ctx, x, m->weight, m->bias, m->stride_h, m->stride_w, m->pad[0], m->pad[1], m->pad[2], m->pad[3]);
}

LDM_API ldm_result ldm_nn_conv3d_init_ex(ldm_nn_params *P, ldm_nn_conv3d *m, const char *name, int in, int out,
                                         const int k[3], const int stride[3], const int pad[6], int bias) {
    memset(m, 0, sizeof *m);
    int ok = in >= 1 && out >= 1;
    for (int i = 0; i < 3; i++) ok = ok && k[i] >= 1 && stride[i] >= 1;
    for (int i = 0; i < 6; i++) ok = ok && pad[i] >= 0;
    if (!ok)
        return ldm_ctx_seterr(P->ctx, LDM_ERR_INVALID, "ldm_nn_conv3d_init: %s%s%s: invalid in %d out %d kernel %dx%dx%d stride %dx%dx%d",
                              P->prefix, P->plen ? "." : "", name ? name : "", in, out, k[0], k[1], k[2], stride[0], stride[1], stride[2]);
    m->in = in; m->out = out;
    for (int i = 0; i < 3; i++) { m->k[i] = k[i]; m->stride[i] = stride[i]; }
    for (int i = 0; i < 6; i++) m->pad[i] = pad[i];
    int64_t fan_in = (int64_t)in * k[0] * k[1] * k[2];
    ldm_nn_push(P, name);
    m->weight = ldm_nn_param(P, "weight", ldm_shape5(out, in, k[0], k[1], k[2]), ldm_nn_init_kaiming_uniform(sqrt(5.0), fan_in));
    if (bias) m->bias = ldm_nn_param(P, "bias", ldm_shape1(out), ldm_nn_init_fan_in_uniform(fan_in));
    ldm_nn_pop(P);
    return ldm_ctx_status(P->ctx);
}
LDM_API ldm_result ldm_nn_conv3d_init(ldm_nn_params *P, ldm_nn_conv3d *m, const char *name, int in, int out,
                                      int kernel, int stride, int pad, int bias) {
    int k[3], s[3], p[6];
    for (int i = 0; i < 3; i++) { k[i] = kernel; s[i] = stride; }
    for (int i = 0; i < 6; i++) p[i] = pad;
    return ldm_nn_conv3d_init_ex(P, m, name, in, out, k, s, p, bias);
}
LDM_API ldm_tensor *ldm_nn_conv3d_forward(ldm_ctx *ctx, const ldm_nn_conv3d *m, ldm_tensor *x) {
    return ldm_conv3d_ex(ctx, x, m->weight, m->bias, m->stride, m->pad);
}

LDM_API ldm_result ldm_nn_linear_init(ldm_nn_params *P, ldm_nn_linear *m, const char *name, int in, int out, int bias) {
    memset(m, 0, sizeof *m);
    if (in < 1 || out < 1)
        return ldm_ctx_seterr(P->ctx, LDM_ERR_INVALID, "ldm_nn_linear_init: %s%s%s: invalid in %d out %d", P->prefix, P->plen ? "." : "", name ? name : "", in, out);
    m->in = in; m->out = out;
    ldm_nn_push(P, name);
    m->weight = ldm_nn_param(P, "weight", ldm_shape2(out, in), ldm_nn_init_kaiming_uniform(sqrt(5.0), in));
    if (bias) m->bias = ldm_nn_param(P, "bias", ldm_shape1(out), ldm_nn_init_fan_in_uniform(in));
    if (m->weight && (!bias || m->bias)) m->mod = ldm__nn_add_module(P, m);
    ldm_nn_pop(P);
    return ldm_ctx_status(P->ctx);
}
LDM_API ldm_tensor *ldm_nn_linear_forward(ldm_ctx *ctx, const ldm_nn_linear *m, ldm_tensor *x) {
    ldm_tensor *y = ldm_linear(ctx, x, m->weight, m->bias);
    return m->mod && m->mod->lora ? ldm__nn_lora_term(ctx, m->mod->lora, x, y) : y;
}

LDM_API ldm_result ldm_nn_groupnorm_init(ldm_nn_params *P, ldm_nn_groupnorm *m, const char *name, int groups,
                                         int channels, float eps, int affine) {
    memset(m, 0, sizeof *m);
    if (groups < 1 || channels < 1 || channels % groups)
        return ldm_ctx_seterr(P->ctx, LDM_ERR_INVALID, "ldm_nn_groupnorm_init: %s%s%s: %d groups do not divide %d channels",
                              P->prefix, P->plen ? "." : "", name ? name : "", groups, channels);
    m->groups = groups; m->channels = channels; m->eps = eps;
    if (affine) {
        ldm_nn_push(P, name);
        m->weight = ldm_nn_param(P, "weight", ldm_shape1(channels), ldm_nn_init_const(1.0f));
        m->bias = ldm_nn_param(P, "bias", ldm_shape1(channels), ldm_nn_init_const(0.0f));
        ldm_nn_pop(P);
    }
    return ldm_ctx_status(P->ctx);
}
LDM_API ldm_tensor *ldm_nn_groupnorm_forward(ldm_ctx *ctx, const ldm_nn_groupnorm *m, ldm_tensor *x) {
    return ldm_group_norm(ctx, x, m->weight, m->bias, m->groups, m->eps);
}
LDM_API ldm_tensor *ldm_nn_groupnorm_silu_forward(ldm_ctx *ctx, const ldm_nn_groupnorm *m, ldm_tensor *x) {
    return ldm_group_norm_silu(ctx, x, m->weight, m->bias, m->groups, m->eps);
}
LDM_API ldm_tensor *ldm_nn_groupnorm_silu_conv2d_forward(ldm_ctx *ctx, const ldm_nn_groupnorm *m, const ldm_nn_conv2d *c, ldm_tensor *x) {
    int st[3] = {1, c->stride_h, c->stride_w}, pad[6] = {0, 0, c->pad[0], c->pad[1], c->pad[2], c->pad[3]};
    return ldm_group_norm_silu_conv(ctx, x, m->weight, m->bias, m->groups, m->eps, c->weight, c->bias, st, pad);
}

LDM_API ldm_result ldm_nn_batchnorm_init(ldm_nn_params *P, ldm_nn_batchnorm *m, const char *name, int channels,
                                         float eps, float momentum, int affine, int track_running_stats) {
    memset(m, 0, sizeof *m);
    if (channels < 1 || momentum > 1.0f)
        return ldm_ctx_seterr(P->ctx, LDM_ERR_INVALID, "ldm_nn_batchnorm_init: %s%s%s: invalid channels %d or momentum %g",
                              P->prefix, P->plen ? "." : "", name ? name : "", channels, (double)momentum);
    m->channels = channels; m->eps = eps; m->momentum = momentum;
    ldm_nn_push(P, name);
    if (affine) {
        m->weight = ldm_nn_param(P, "weight", ldm_shape1(channels), ldm_nn_init_const(1.0f));
        m->bias = ldm_nn_param(P, "bias", ldm_shape1(channels), ldm_nn_init_const(0.0f));
    }
    if (track_running_stats) {
        m->running_mean = ldm_nn_buffer(P, "running_mean", ldm_shape1(channels), ldm_nn_init_const(0.0f), 1);
        m->running_var = ldm_nn_buffer(P, "running_var", ldm_shape1(channels), ldm_nn_init_const(1.0f), 1);
        m->num_batches_tracked = ldm_nn_buffer(P, "num_batches_tracked", ldm_shape_n(0, NULL), ldm_nn_init_const(0.0f), 1);
    }
    ldm_nn_pop(P);
    return ldm_ctx_status(P->ctx);
}
LDM_API ldm_tensor *ldm_nn_batchnorm_forward(ldm_ctx *ctx, ldm_nn_batchnorm *m, ldm_tensor *x, int training) {
    if (ldm_ctx_status(ctx) || !x) return NULL;
    if (!m->running_mean) return ldm_batch_norm(ctx, x, m->weight, m->bias, NULL, NULL, 1, 0.0f, m->eps);
    if (!training) return ldm_batch_norm(ctx, x, m->weight, m->bias, m->running_mean, m->running_var, 0, 0.0f, m->eps);
    /* torch: num_batches_tracked += 1 first; momentum None averages with factor 1/count */
    ldm_tensor *c = m->num_batches_tracked;
    float count;
    ldm_device_copy(ctx, &count, LDM_CPU, c->data, c->device, sizeof count);
    count += 1.0f;
    ldm_device_copy(ctx, c->data, c->device, &count, LDM_CPU, sizeof count);
    float factor = m->momentum < 0.0f ? 1.0f / count : m->momentum;
    return ldm_batch_norm(ctx, x, m->weight, m->bias, m->running_mean, m->running_var, 1, factor, m->eps);
}

LDM_API ldm_result ldm_nn_layernorm_init(ldm_nn_params *P, ldm_nn_layernorm *m, const char *name, ldm_shape normalized,
                                         float eps, int affine) {
    memset(m, 0, sizeof *m);
    int ok = normalized.ndim >= 1 && normalized.ndim <= LDM_MAX_DIMS;
    for (int i = 0; ok && i < normalized.ndim; i++) ok = normalized.d[i] >= 1;
    if (!ok)
        return ldm_ctx_seterr(P->ctx, LDM_ERR_INVALID, "ldm_nn_layernorm_init: %s%s%s: invalid normalized shape (rank %d)",
                              P->prefix, P->plen ? "." : "", name ? name : "", normalized.ndim);
    m->normalized = normalized; m->eps = eps;
    if (affine) {
        ldm_nn_push(P, name);
        m->weight = ldm_nn_param(P, "weight", normalized, ldm_nn_init_const(1.0f));
        m->bias = ldm_nn_param(P, "bias", normalized, ldm_nn_init_const(0.0f));
        ldm_nn_pop(P);
    }
    return ldm_ctx_status(P->ctx);
}
LDM_API ldm_tensor *ldm_nn_layernorm_forward(ldm_ctx *ctx, const ldm_nn_layernorm *m, ldm_tensor *x) {
    if (ldm_ctx_status(ctx) || !x) return NULL;
    int nd = m->normalized.ndim, ok = x->ndim >= nd;
    for (int i = 0; ok && i < nd; i++) ok = x->shape[x->ndim - nd + i] == m->normalized.d[i];
    if (!ok) {
        char a[96], b[96];
        ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_layernorm_forward%s%s: input %s does not end in the normalized shape %s",
                       m->weight ? " " : "", m->weight ? m->weight->name : "", ldm_shape_str(x, a, sizeof a),
                       ldm_dims_str(m->normalized.d, nd, b, sizeof b));
        return NULL;
    }
    return ldm_layer_norm(ctx, x, m->weight, m->bias, nd, m->eps);
}

LDM_API void ldm_nn_dropout_init(ldm_nn_dropout *m, float p) { m->p = p; }
LDM_API ldm_tensor *ldm_nn_dropout_forward(ldm_ctx *ctx, const ldm_nn_dropout *m, ldm_tensor *x, int training) {
    return ldm_dropout(ctx, x, m->p, training);
}

LDM_API ldm_result ldm_nn_embedding_init(ldm_nn_params *P, ldm_nn_embedding *m, const char *name, int64_t num, int64_t dim) {
    memset(m, 0, sizeof *m);
    if (num < 1 || dim < 1)
        return ldm_ctx_seterr(P->ctx, LDM_ERR_INVALID, "ldm_nn_embedding_init: %s%s%s: invalid size %lld x %lld",
                              P->prefix, P->plen ? "." : "", name ? name : "", (long long)num, (long long)dim);
    m->num = num; m->dim = dim;
    ldm_nn_push(P, name);
    m->weight = ldm_nn_param(P, "weight", ldm_shape2(num, dim), ldm_nn_init_normal(0.0f, 1.0f));
    ldm_nn_pop(P);
    return ldm_ctx_status(P->ctx);
}
LDM_API ldm_tensor *ldm_nn_embedding_forward(ldm_ctx *ctx, const ldm_nn_embedding *m, int64_t n, const int64_t *idx) {
    return ldm_embedding(ctx, m->weight, n, idx);
}

/* ---- state dicts ------------------------------------------------------------------------ */
LDM_API void ldm_nn_load_report_free(ldm_nn_load_report *r) {
    if (!r) return;
    ldm_nn_load_issue *lists[3];
    int counts[3];
    lists[0] = r->missing; lists[1] = r->unexpected; lists[2] = r->mismatched;
    counts[0] = r->n_missing; counts[1] = r->n_unexpected; counts[2] = r->n_mismatched;
    for (int l = 0; l < 3; l++) {
        for (int i = 0; lists[l] && i < counts[l]; i++) { LDM_FREE(lists[l][i].name); LDM_FREE(lists[l][i].file_name); }
        LDM_FREE(lists[l]);
    }
    memset(r, 0, sizeof *r);
}

static char *ldm__nn_strdup(const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *d = (char *)LDM_MALLOC(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* A growing list of issues. */
typedef struct { ldm_nn_load_issue *v; int n, cap; } ldm__nn_issues;
static int ldm__nn_issue_add(ldm__nn_issues *l, const char *name, const char *file_name, const ldm_weight_info *fi, const ldm_tensor *mt) {
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 16;
        ldm_nn_load_issue *v = (ldm_nn_load_issue *)LDM_REALLOC(l->v, sizeof(ldm_nn_load_issue) * (size_t)cap);
        if (!v) return 0;
        l->v = v;
        l->cap = cap;
    }
    ldm_nn_load_issue *is = &l->v[l->n];
    memset(is, 0, sizeof *is);
    is->name = ldm__nn_strdup(name);
    is->file_name = ldm__nn_strdup(file_name);
    is->file_ndim = fi ? fi->ndim : -1;
    for (int i = 0; fi && i < fi->ndim; i++) is->file_shape[i] = fi->shape[i];
    is->model_ndim = mt ? mt->ndim : -1;
    for (int i = 0; mt && i < mt->ndim; i++) is->model_shape[i] = mt->shape[i];
    if ((name && !is->name) || (file_name && !is->file_name)) { LDM_FREE(is->name); LDM_FREE(is->file_name); return 0; }
    l->n++;
    return 1;
}
static void ldm__nn_issues_free(ldm__nn_issues *l) {
    for (int i = 0; i < l->n; i++) { LDM_FREE(l->v[i].name); LDM_FREE(l->v[i].file_name); }
    LDM_FREE(l->v);
    memset(l, 0, sizeof *l);
}

/* Equal after dropping trailing 1s (and so equal numel). */
static int ldm__nn_unit_dims_eq(const int64_t *a, int an, const int64_t *b, int bn) {
    while (an > 0 && a[an - 1] == 1) an--;
    while (bn > 0 && b[bn - 1] == 1) bn--;
    if (an != bn) return 0;
    for (int i = 0; i < an; i++) if (a[i] != b[i]) return 0;
    return 1;
}

/* Appends printf output to a bounded message; returns 0 once the budget is used up. */
typedef struct { char *buf; size_t cap, len; int full; } ldm__nn_msg;
static void ldm__nn_msg_add(ldm__nn_msg *m, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void ldm__nn_msg_add(ldm__nn_msg *m, const char *fmt, ...) {
    if (m->full) return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(m->buf + m->len, m->cap - m->len, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= m->cap - m->len) { m->buf[m->len] = 0; m->full = 1; return; }
    m->len += (size_t)k;
}

LDM_API ldm_result ldm_nn_load_weights(ldm_ctx *ctx, ldm_nn_params *P, ldm_weights *w, const ldm_nn_load_opts *opts) {
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    ldm_nn_load_opts o;
    memset(&o, 0, sizeof o);
    if (opts) o = *opts; else o.strict = 1;
    if (o.report) memset(o.report, 0, sizeof *o.report);
    const char *path = ldm_weights_path(w);
    if (!P->allocated) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_load: %s: the model has no memory yet (hint: ldm_nn_params_alloc first)", path);
    int nf = ldm_weights_count(w);
    /* Pass 1: map every file name; target[i] = entry index, -1 unused. */
    int *target = (int *)LDM_MALLOC(sizeof(int) * (size_t)(nf ? nf : 1));
    unsigned char *loaded = (unsigned char *)LDM_MALLOC((size_t)(P->n ? P->n : 1));
    size_t strip = o.prefix_strip ? strlen(o.prefix_strip) : 0, add = o.prefix_add ? strlen(o.prefix_add) : 0;
    size_t namecap = 256 + add;
    char *mapped = (char *)LDM_MALLOC(namecap), *renamed = (char *)LDM_MALLOC(1024);
    ldm__nn_issues miss, unexp, mis;
    memset(&miss, 0, sizeof miss); memset(&unexp, 0, sizeof unexp); memset(&mis, 0, sizeof mis);
    int n_skipped = 0, n_loaded = 0, oom = 0;
    float *tmp = NULL;
    ldm_result r = LDM_OK;
    if (!target || !loaded || !mapped || !renamed) { oom = 1; goto done; }
    memset(loaded, 0, (size_t)(P->n ? P->n : 1));
    for (int i = 0; i < nf; i++) {
        const ldm_weight_info *fi = ldm_weights_info(w, i);
        target[i] = -1;
        if (strip && strncmp(fi->name, o.prefix_strip, strip)) { n_skipped++; continue; }
        size_t rest = strlen(fi->name + strip);
        if (add + rest + 1 > namecap) {
            namecap = add + rest + 1;
            char *m2 = (char *)LDM_REALLOC(mapped, namecap);
            if (!m2) { oom = 1; goto done; }
            mapped = m2;
        }
        if (add) memcpy(mapped, o.prefix_add, add);
        memcpy(mapped + add, fi->name + strip, rest + 1);
        const char *name = mapped;
        if (o.rename) {
            renamed[0] = 0;
            name = o.rename(o.rename_user, mapped, renamed, 1024);
            if (!name) { n_skipped++; continue; }
        }
        int e = ldm_nn_index(P, name);
        if (e < 0 || P->e[e].kind == LDM_NN_BUFFER_TRANSIENT) {
            if (!ldm__nn_issue_add(&unexp, name, fi->name, fi, NULL)) { oom = 1; goto done; }
            continue;
        }
        ldm_tensor *t = P->e[e].t;
        if (loaded[e]) {
            r = ldm_ctx_seterr(ctx, LDM_ERR_FORMAT, "ldm_nn_load: %s: two tensors map to \"%s\" (the second is \"%s\"; hint: check prefix_strip, prefix_add and the rename callback)",
                               path, name, fi->name);
            goto done;
        }
        int same = fi->ndim == t->ndim;
        for (int d = 0; same && d < t->ndim; d++) same = fi->shape[d] == t->shape[d];
        if (!same && !(o.allow_unit_dims && fi->numel == t->numel && ldm__nn_unit_dims_eq(fi->shape, fi->ndim, t->shape, t->ndim))) {
            if (!ldm__nn_issue_add(&mis, name, fi->name, fi, t)) { oom = 1; goto done; }
            loaded[e] = 2; /* present but unusable: not also "missing" */
            continue;
        }
        loaded[e] = 1;
        target[i] = e;
    }
    for (int e = 0; e < P->n; e++)
        if (!loaded[e] && P->e[e].kind != LDM_NN_BUFFER_TRANSIENT)
            if (!ldm__nn_issue_add(&miss, P->e[e].name, NULL, NULL, P->e[e].t)) { oom = 1; goto done; }
    if (o.strict && (miss.n || unexp.n || mis.n)) {
        char msg[1900];
        ldm__nn_msg m;
        m.buf = msg; m.cap = 1700; m.len = 0; m.full = 0; msg[0] = 0;
        ldm__nn_msg_add(&m, "ldm_nn_load: %s (%s) does not match the model: %d missing, %d unexpected, %d shape mismatch%s",
                        path, ldm_weights_format(w), miss.n, unexp.n, mis.n, mis.n == 1 ? "" : "es");
        int shown = 0;
        char a[96], b[96];
        for (int i = 0; i < miss.n && !m.full; i++, shown++)
            ldm__nn_msg_add(&m, "\n  missing:    %s %s", miss.v[i].name, ldm_dims_str(miss.v[i].model_shape, miss.v[i].model_ndim, a, sizeof a));
        for (int i = 0; i < unexp.n && !m.full; i++, shown++) {
            if (strcmp(unexp.v[i].name, unexp.v[i].file_name))
                ldm__nn_msg_add(&m, "\n  unexpected: %s (as %s) %s", unexp.v[i].file_name, unexp.v[i].name,
                                ldm_dims_str(unexp.v[i].file_shape, unexp.v[i].file_ndim, a, sizeof a));
            else
                ldm__nn_msg_add(&m, "\n  unexpected: %s %s", unexp.v[i].file_name, ldm_dims_str(unexp.v[i].file_shape, unexp.v[i].file_ndim, a, sizeof a));
        }
        for (int i = 0; i < mis.n && !m.full; i++, shown++)
            ldm__nn_msg_add(&m, "\n  shape:      %s file %s model %s", mis.v[i].name, ldm_dims_str(mis.v[i].file_shape, mis.v[i].file_ndim, a, sizeof a),
                            ldm_dims_str(mis.v[i].model_shape, mis.v[i].model_ndim, b, sizeof b));
        int total = miss.n + unexp.n + mis.n;
        if (m.full) shown--; /* the line that did not fit */
        m.full = 0;
        m.cap = sizeof msg;
        if (shown < total) ldm__nn_msg_add(&m, "\n  ... and %d more (every name is in ldm_nn_load_opts.report)", total - shown);
        ldm__nn_msg_add(&m, "\nhint: map the file's names with prefix_strip / prefix_add / rename%s, or load with strict = 0",
                        mis.n ? " (allow_unit_dims for [C,C] vs [C,C,1,1])" : "");
        r = ldm_ctx_seterr(ctx, miss.n || unexp.n ? LDM_ERR_NOT_FOUND : LDM_ERR_INVALID, "%s", msg);
        goto done;
    }
    /* Pass 2: read. */
    if (P->device != LDM_CPU) {
        int64_t mx = 0;
        for (int i = 0; i < nf; i++) if (target[i] >= 0 && P->e[target[i]].t->numel > mx) mx = P->e[target[i]].t->numel;
        tmp = (float *)LDM_MALLOC(sizeof(float) * (size_t)(mx ? mx : 1));
        if (!tmp) { oom = 1; goto done; }
    }
    for (int i = 0; i < nf; i++) {
        if (target[i] < 0) continue;
        ldm_tensor *t = P->e[target[i]].t;
        float *h = tmp ? tmp : t->data;
        if (ldm_weights_read(ctx, w, i, h)) { r = ldm_ctx_status(ctx); goto done; }
        if (!o.allow_nonfinite) {
            int64_t bad = 0, first = -1;
            for (int64_t k = 0; k < t->numel; k++)
                if (!(h[k] - h[k] == 0.0f)) { bad++; if (first < 0) first = k; } /* NaN or +-Inf */
            if (bad) {
                r = ldm_ctx_seterr(ctx, LDM_ERR_NUMERIC, "ldm_nn_load: %s: tensor \"%s\" holds %lld non-finite value%s (the first, element %lld, "
                                   "is %s): the file was written from a diverged run or is damaged (hint: load an earlier checkpoint; "
                                   "allow_nonfinite accepts it)", path, ldm_weights_info(w, i)->name, (long long)bad, bad == 1 ? "" : "s",
                                   (long long)first, h[first] != h[first] ? "NaN" : h[first] > 0 ? "+Inf" : "-Inf");
                goto done;
            }
        }
        if (tmp) ldm_nn_copy_from_host(ctx, t, tmp);
        n_loaded++;
    }
done:
    if (oom) r = ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_load: %s: out of memory", path);
    if (o.report) {
        ldm_nn_load_report *rep = o.report;
        rep->n_loaded = n_loaded; rep->n_skipped = n_skipped;
        rep->n_missing = miss.n; rep->missing = miss.v;
        rep->n_unexpected = unexp.n; rep->unexpected = unexp.v;
        rep->n_mismatched = mis.n; rep->mismatched = mis.v;
    } else {
        ldm__nn_issues_free(&miss);
        ldm__nn_issues_free(&unexp);
        ldm__nn_issues_free(&mis);
    }
    LDM_FREE(tmp);
    LDM_FREE(target);
    LDM_FREE(loaded);
    LDM_FREE(mapped);
    LDM_FREE(renamed);
    return r;
}

LDM_API ldm_result ldm_nn_load(ldm_ctx *ctx, ldm_nn_params *P, const char *path, const ldm_nn_load_opts *opts) {
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    ldm_weights *w = NULL;
    if (ldm_weights_open(ctx, &w, path)) return ldm_ctx_status(ctx);
    ldm_result r = ldm_nn_load_weights(ctx, P, w, opts);
    ldm_weights_close(w);
    return r;
}

/* Host copies of a list of tensors for writing (device tensors are copied, CPU ones used
   in place). */
static float *ldm__nn_host_view(ldm_ctx *ctx, const float *data, ldm_device d, int64_t n, float **owned) {
    *owned = NULL;
    if (d == LDM_CPU) return (float *)data;
    *owned = (float *)LDM_MALLOC(sizeof(float) * (size_t)(n ? n : 1));
    if (*owned) ldm_device_copy(ctx, *owned, LDM_CPU, data, d, (size_t)n * sizeof(float));
    return *owned;
}

static ldm_result ldm__nn_save(ldm_ctx *ctx, const ldm_nn_params *P, const char *path, ldm_dtype dtype, const char *prefix,
                               int n_meta, const char *const *mk, const char *const *mv) {
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    if (!P->allocated) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_save: %s: the model has no memory yet (hint: ldm_nn_params_alloc first)", path);
    size_t pl = prefix ? strlen(prefix) : 0;
    ldm_named_data *nd = (ldm_named_data *)LDM_MALLOC(sizeof(ldm_named_data) * (size_t)(P->n ? P->n : 1));
    char **names = (char **)LDM_MALLOC(sizeof(char *) * (size_t)(P->n ? P->n : 1));
    float **owned = (float **)LDM_MALLOC(sizeof(float *) * (size_t)(P->n ? P->n : 1));
    ldm_result r = LDM_OK;
    int m = 0;
    if (!nd || !names || !owned) { r = ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_save: out of memory"); goto done; }
    for (int i = 0; i < P->n; i++) {
        const ldm_nn_entry *e = &P->e[i];
        if (e->kind == LDM_NN_BUFFER_TRANSIENT) continue;
        size_t nl = strlen(e->name);
        names[m] = (char *)LDM_MALLOC(pl + nl + 1);
        owned[m] = NULL;
        if (!names[m]) { r = ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_save: out of memory"); goto done; }
        if (pl) memcpy(names[m], prefix, pl);
        memcpy(names[m] + pl, e->name, nl + 1);
        nd[m].name = names[m];
        nd[m].ndim = e->t->ndim;
        for (int d = 0; d < e->t->ndim; d++) nd[m].shape[d] = e->t->shape[d];
        nd[m].data = ldm__nn_host_view(ctx, e->t->data, e->t->device, e->t->numel, &owned[m]);
        m++;
        if (!nd[m - 1].data) { r = ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_save: out of memory"); goto done; }
    }
    r = ldm_safetensors_write(ctx, path, m, nd, dtype, n_meta, mk, mv);
done:
    for (int i = 0; i < m; i++) { LDM_FREE(names[i]); LDM_FREE(owned[i]); }
    LDM_FREE(nd);
    LDM_FREE(names);
    LDM_FREE(owned);
    return r;
}
LDM_API ldm_result ldm_nn_save(ldm_ctx *ctx, const ldm_nn_params *P, const char *path, ldm_dtype dtype, const char *prefix) {
    const char *mk[1] = {"format"}, *mv[1] = {"pt"};
    return ldm__nn_save(ctx, P, path, dtype, prefix, 1, mk, mv);
}

/* ---- optimizers ------------------------------------------------------------------------- */
struct ldm_nn_optim {
    ldm_nn_params *P;
    ldm_nn_optim_config cfg;
    int n;
    ldm_nn_entry **e;             /* the group, in registration order */
    int64_t *moff;                /* offset of each entry's slice in a moment block */
    int64_t mn;                   /* floats per moment block (padding included) */
    int nmom;                     /* moment blocks: Adam 2, SGD with momentum 1, else 0 */
    void *raw;
    float *mom;                   /* nmom * mn floats on the registry's device */
    int64_t step;
};

LDM_API const float *ldm_loss_log_get(const ldm_loss_log *log, const char *key) {
    for (int i = 0; log && i < log->n; i++) if (!strcmp(log->item[i].key, key)) return &log->item[i].value;
    return NULL;
}
LDM_API void ldm_loss_log_put(ldm_loss_log *log, const char *prefix, const char *name, float v) {
    if (!log || log->n >= LDM_LOSS_LOG_MAX) return;
    if (prefix) snprintf(log->item[log->n].key, sizeof log->item[log->n].key, "%s/%s", prefix, name);
    else snprintf(log->item[log->n].key, sizeof log->item[log->n].key, "%s", name);
    log->item[log->n].value = v;
    log->n++;
}

LDM_API ldm_nn_optim_config ldm_nn_optim_defaults(ldm_optim_type type, double lr) {
    ldm_nn_optim_config c;
    memset(&c, 0, sizeof c);
    c.type = type;
    c.lr = lr;
    c.beta1 = 0.9;
    c.beta2 = 0.999;
    c.eps = 1e-8;
    c.weight_decay = type == LDM_OPTIM_ADAMW ? 1e-2 : 0.0;
    return c;
}

static const char *ldm__nn_optim_name(ldm_optim_type t) {
    return t == LDM_OPTIM_SGD ? "sgd" : t == LDM_OPTIM_ADAM ? "adam" : t == LDM_OPTIM_ADAMW ? "adamw" : "?";
}

LDM_API ldm_result ldm_nn_optim_create(ldm_ctx *ctx, ldm_nn_optim **out, ldm_nn_params *P, const ldm_nn_optim_config *cfg,
                                       int n_patterns, const char *const *patterns) {
    *out = NULL;
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    if (!P->allocated) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_optim_create: the model has no memory yet (hint: ldm_nn_params_alloc first)");
    const ldm_nn_optim_config *c = cfg;
    if (c->type != LDM_OPTIM_SGD && c->type != LDM_OPTIM_ADAM && c->type != LDM_OPTIM_ADAMW)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_optim_create: unknown optimizer type %d", (int)c->type);
    if (!(c->lr >= 0.0) || !(c->weight_decay >= 0.0))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_optim_create: invalid lr %g or weight_decay %g", c->lr, c->weight_decay);
    if (c->type != LDM_OPTIM_SGD && (!(c->beta1 >= 0.0 && c->beta1 < 1.0) || !(c->beta2 >= 0.0 && c->beta2 < 1.0) || !(c->eps >= 0.0)))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_optim_create: invalid betas (%g, %g) or eps %g (betas must be in [0, 1))", c->beta1, c->beta2, c->eps);
    if (c->type == LDM_OPTIM_SGD && (!(c->momentum >= 0.0) || (c->nesterov && (c->momentum <= 0.0 || c->dampening != 0.0))))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_optim_create: invalid SGD momentum %g (nesterov needs momentum > 0 and dampening 0)", c->momentum);
    for (int k = 0; k < n_patterns; k++) {
        int hit = 0;
        for (int i = 0; i < P->n && !hit; i++) hit = P->e[i].kind == LDM_NN_PARAM && ldm_nn_match(patterns[k], P->e[i].name);
        if (!hit)
            return ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "ldm_nn_optim_create: no parameter matches \"%s\" (hint: patterns are name prefixes at '.' boundaries with '*' wildcards)", patterns[k]);
    }
    ldm_nn_optim *o = (ldm_nn_optim *)LDM_MALLOC(sizeof *o);
    if (!o) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_optim_create: out of memory");
    memset(o, 0, sizeof *o);
    o->P = P;
    o->cfg = *c;
    o->e = (ldm_nn_entry **)LDM_MALLOC(sizeof(ldm_nn_entry *) * (size_t)(P->n ? P->n : 1));
    o->moff = (int64_t *)LDM_MALLOC(sizeof(int64_t) * (size_t)(P->n ? P->n : 1));
    if (!o->e || !o->moff) { ldm_nn_optim_destroy(o); return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_optim_create: out of memory"); }
    for (int i = 0; i < P->n; i++) {
        ldm_nn_entry *e = &P->e[i];
        if (e->kind != LDM_NN_PARAM || !e->t->requires_grad || !e->t->grad) continue;
        int hit = n_patterns == 0;
        for (int k = 0; k < n_patterns && !hit; k++) hit = ldm_nn_match(patterns[k], e->name);
        if (!hit) continue;
        o->moff[o->n] = o->mn;
        o->mn += LDM__NN_UP(e->t->numel);
        o->e[o->n++] = e;
    }
    if (!o->n) {
        ldm_nn_optim_destroy(o);
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_optim_create: no trainable parameter in the group (hint: check the patterns and ldm_nn_set_trainable)");
    }
    o->nmom = c->type != LDM_OPTIM_SGD ? 2 : c->momentum != 0.0 ? 1 : 0;
    if (o->nmom && o->mn) {
        o->mom = (float *)ldm__nn_dev_alloc(ctx, P->device, o->mn * o->nmom, &o->raw, 0);
        if (!o->mom) {
            ldm_nn_optim_destroy(o);
            return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_optim_create: cannot allocate %.1f MiB of optimizer state", (double)o->mn * o->nmom * 4 / 1048576.0);
        }
        ldm_device_fill(ctx, P->device, o->mom, o->mn * o->nmom, 0.0f);
    }
    *out = o;
    return LDM_OK;
}

LDM_API void ldm_nn_optim_destroy(ldm_nn_optim *o) {
    if (!o) return;
    ldm_device_free(o->P->ctx, o->P->device, o->raw);
    LDM_FREE(o->e);
    LDM_FREE(o->moff);
    LDM_FREE(o);
}

/* One update per tensor, on the registry's device: ldm_optim_args holds torch 1.13's
   single-tensor coefficients, rounded to float where torch passes them as scalars. */
LDM_API ldm_result ldm_nn_optim_step(ldm_ctx *ctx, ldm_nn_optim *o) {
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    const ldm_nn_optim_config *c = &o->cfg;
    int64_t step = o->step + 1;
    ldm_optim_args a;
    memset(&a, 0, sizeof a);
    a.sgd = c->type == LDM_OPTIM_SGD;
    a.wd = (float)c->weight_decay;
    if (a.sgd) {
        a.l2 = c->weight_decay != 0.0;
        a.first = o->step == 0;
        a.mom = (float)c->momentum;
        a.one_damp = (float)(1.0 - c->dampening);
        a.neg_lr = (float)-c->lr;
        a.nesterov = c->nesterov;
    } else {
        a.adamw = c->type == LDM_OPTIM_ADAMW;
        a.l2 = !a.adamw && c->weight_decay != 0.0;
        a.decay = (float)(1.0 - c->lr * c->weight_decay);
        a.b1 = (float)c->beta1;
        a.one_b1 = (float)(1.0 - c->beta1);
        a.b2 = (float)c->beta2;
        a.one_b2 = (float)(1.0 - c->beta2);
        double bc1 = 1.0 - pow(c->beta1, (double)step), bc2 = 1.0 - pow(c->beta2, (double)step);
        a.bc2s = (float)sqrt(bc2);
        a.eps = (float)c->eps;
        a.neg_step = (float)-(c->lr / bc1);
    }
    for (int i = 0; i < o->n; i++) {
        ldm_tensor *t = o->e[i]->t;
        if (!t->requires_grad || !t->numel) continue;
        ldm_device_optim_update(ctx, o->P->device, &a, t->data, t->grad, o->nmom >= 1 ? o->mom + o->moff[i] : NULL,
                                o->nmom >= 2 ? o->mom + o->mn + o->moff[i] : NULL, t->numel);
    }
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    o->step = step;
    return LDM_OK;
}

LDM_API void ldm_nn_optim_zero_grad(ldm_ctx *ctx, ldm_nn_optim *o) {
    for (int i = 0; i < o->n; i++) {
        ldm_tensor *t = o->e[i]->t;
        if (t->grad) ldm_device_fill(ctx, o->P->device, t->grad, t->numel, 0.0f);
    }
}
LDM_API ldm_result ldm_nn_optim_clip_grad_norm(ldm_ctx *ctx, ldm_nn_optim *o, float max_norm, float *total_norm) {
    return ldm__nn_clip(ctx, o->P->device, o->e, o->n, max_norm, total_norm);
}
LDM_API void ldm_nn_optim_set_lr(ldm_nn_optim *o, double lr) { o->cfg.lr = lr; }
LDM_API double ldm_nn_optim_lr(const ldm_nn_optim *o) { return o->cfg.lr; }
LDM_API const ldm_nn_optim_config *ldm_nn_optim_cfg(const ldm_nn_optim *o) { return &o->cfg; }
LDM_API int64_t ldm_nn_optim_steps(const ldm_nn_optim *o) { return o->step; }
LDM_API int ldm_nn_optim_size(const ldm_nn_optim *o) { return o->n; }
LDM_API const ldm_nn_entry *ldm_nn_optim_entry(const ldm_nn_optim *o, int i) { return i >= 0 && i < o->n ? o->e[i] : NULL; }
LDM_API int64_t ldm_nn_optim_numel(const ldm_nn_optim *o) {
    int64_t n = 0;
    for (int i = 0; i < o->n; i++) n += o->e[i]->t->numel;
    return n;
}
LDM_API int64_t ldm_nn_optim_state_bytes(const ldm_nn_optim *o) { return o->mn * o->nmom * (int64_t)sizeof(float); }

static const char *ldm__nn_moment_suffix(const ldm_nn_optim *o, int k) {
    if (o->cfg.type == LDM_OPTIM_SGD) return ".momentum_buffer";
    return k == 0 ? ".exp_avg" : ".exp_avg_sq";
}

LDM_API ldm_result ldm_nn_optim_save(ldm_ctx *ctx, const ldm_nn_optim *o, const char *path) {
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    int cnt = o->n * o->nmom;
    ldm_named_data *nd = (ldm_named_data *)LDM_MALLOC(sizeof(ldm_named_data) * (size_t)(cnt ? cnt : 1));
    char **names = (char **)LDM_MALLOC(sizeof(char *) * (size_t)(cnt ? cnt : 1));
    float *host = NULL, *owned = NULL;
    ldm_result r = LDM_OK;
    int m = 0;
    if (!nd || !names) { r = ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_optim_save: out of memory"); goto done; }
    if (cnt) {
        host = ldm__nn_host_view(ctx, o->mom, o->P->device, o->mn * o->nmom, &owned);
        if (!host) { r = ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_optim_save: out of memory"); goto done; }
    }
    for (int k = 0; k < o->nmom; k++)
        for (int i = 0; i < o->n; i++) {
            const char *suf = ldm__nn_moment_suffix(o, k);
            size_t nl = strlen(o->e[i]->name), sl = strlen(suf);
            names[m] = (char *)LDM_MALLOC(nl + sl + 1);
            if (!names[m]) { r = ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_optim_save: out of memory"); goto done; }
            memcpy(names[m], o->e[i]->name, nl);
            memcpy(names[m] + nl, suf, sl + 1);
            ldm_tensor *t = o->e[i]->t;
            nd[m].name = names[m];
            nd[m].data = host + (int64_t)k * o->mn + o->moff[i];
            nd[m].ndim = t->ndim;
            for (int d = 0; d < t->ndim; d++) nd[m].shape[d] = t->shape[d];
            m++;
        }
    {
        char step[32], lr[40];
        snprintf(step, sizeof step, "%lld", (long long)o->step);
        snprintf(lr, sizeof lr, "%.17g", o->cfg.lr);
        const char *mk[3] = {"type", "step", "lr"}, *mv[3];
        mv[0] = ldm__nn_optim_name(o->cfg.type); mv[1] = step; mv[2] = lr;
        r = ldm_safetensors_write(ctx, path, m, nd, LDM_F32, 3, mk, mv);
    }
done:
    for (int i = 0; i < m; i++) LDM_FREE(names[i]);
    LDM_FREE(names);
    LDM_FREE(nd);
    LDM_FREE(owned);
    return r;
}

LDM_API ldm_result ldm_nn_optim_load(ldm_ctx *ctx, ldm_nn_optim *o, const char *path) {
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    ldm_weights *w = NULL;
    if (ldm_weights_open(ctx, &w, path)) return ldm_ctx_status(ctx);
    ldm_result r = LDM_OK;
    int cnt = o->n * o->nmom, nf = ldm_weights_count(w);
    int *src = (int *)LDM_MALLOC(sizeof(int) * (size_t)(cnt ? cnt : 1));
    char *name = NULL;
    float *tmp = NULL;
    const char *type = ldm_weights_metadata(w, "type"), *step = ldm_weights_metadata(w, "step");
    char *endp = NULL;
    long long st = step ? strtoll(step, &endp, 10) : -1;
    if (!src) { r = ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_optim_load: out of memory"); goto done; }
    if (!type || strcmp(type, ldm__nn_optim_name(o->cfg.type))) {
        r = ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_optim_load: %s holds %s optimizer state, this optimizer is %s (hint: create the optimizer with the type it was saved with)",
                           path, type ? type : "no", ldm__nn_optim_name(o->cfg.type));
        goto done;
    }
    if (!step || !*step || *endp || st < 0) {
        r = ldm_ctx_seterr(ctx, LDM_ERR_FORMAT, "ldm_nn_optim_load: %s: metadata \"step\" is %s%s%s, not a step count", path,
                           step ? "\"" : "missing", step ? step : "", step ? "\"" : "");
        goto done;
    }
    /* A file tensor whose parameter is not in the group: frozen now (or another model). */
    for (int f = 0; f < nf; f++) {
        const char *fn = ldm_weights_info(w, f)->name;
        int in_group = 0;
        for (int k = 0; k < o->nmom && !in_group; k++) {
            const char *suf = ldm__nn_moment_suffix(o, k);
            size_t fl = strlen(fn), sl = strlen(suf);
            for (int i = 0; i < o->n && !in_group && fl > sl && !strcmp(fn + fl - sl, suf); i++)
                in_group = strlen(o->e[i]->name) == fl - sl && !strncmp(fn, o->e[i]->name, fl - sl);
        }
        if (!in_group) {
            r = ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_optim_load: %s holds \"%s\", which belongs to no parameter of this %s optimizer's group of %d "
                               "(hint: the parameter group differs from the saved one: the frozen prefixes or the optimizer's patterns changed; "
                               "use the same ones, or start the optimizer from zero state)", path, fn, ldm__nn_optim_name(o->cfg.type), o->n);
            goto done;
        }
    }
    /* every file tensor belongs to the group; the loop below finds every group tensor in the
       file, so the two sets are equal (names are unique in a file) */
    for (int k = 0, q = 0; k < o->nmom; k++)
        for (int i = 0; i < o->n; i++, q++) {
            const char *suf = ldm__nn_moment_suffix(o, k);
            size_t nl = strlen(o->e[i]->name), sl = strlen(suf);
            LDM_FREE(name);
            name = (char *)LDM_MALLOC(nl + sl + 1);
            if (!name) { r = ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_optim_load: out of memory"); goto done; }
            memcpy(name, o->e[i]->name, nl);
            memcpy(name + nl, suf, sl + 1);
            int f = ldm_weights_find(w, name);
            if (f < 0) { r = ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "ldm_nn_optim_load: %s has no \"%s\": that parameter was frozen or absent when the state was saved "
                                            "(hint: the parameter group differs from the saved one; freeze the same prefixes, or start from zero state)", path, name); goto done; }
            const ldm_weight_info *fi = ldm_weights_info(w, f);
            ldm_tensor *t = o->e[i]->t;
            int same = fi->ndim == t->ndim;
            for (int d = 0; same && d < t->ndim; d++) same = fi->shape[d] == t->shape[d];
            if (!same) {
                char a[96], b[96];
                r = ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_optim_load: %s: \"%s\" is %s, the parameter is %s", path, name,
                                   ldm_dims_str(fi->shape, fi->ndim, a, sizeof a), ldm_shape_str(t, b, sizeof b));
                goto done;
            }
            src[q] = f;
        }
    if (o->P->device != LDM_CPU) {
        tmp = (float *)LDM_MALLOC(sizeof(float) * (size_t)(o->mn ? o->mn : 1));
        if (!tmp) { r = ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_optim_load: out of memory"); goto done; }
    }
    for (int k = 0, q = 0; k < o->nmom; k++)
        for (int i = 0; i < o->n; i++, q++) {
            float *dst = o->mom + (int64_t)k * o->mn + o->moff[i];
            if (ldm_weights_read(ctx, w, src[q], tmp ? tmp : dst)) { r = ldm_ctx_status(ctx); goto done; }
            if (tmp) ldm_device_copy(ctx, dst, o->P->device, tmp, LDM_CPU, (size_t)o->e[i]->t->numel * sizeof(float));
        }
    o->step = st;
done:
    LDM_FREE(name);
    LDM_FREE(tmp);
    LDM_FREE(src);
    ldm_weights_close(w);
    return r;
}

/* ---- LoRA ------------------------------------------------------------------------------- */
struct ldm__nn_adapter {
    ldm_tensor *A, *B;            /* [r, I], [O, r] in the set's registry */
    ldm_nn_module *mod;           /* the adapted layer */
    struct ldm_nn_lora *set;
};
struct ldm_nn_lora {
    ldm_nn_params *base;          /* NULL once the base registry is destroyed */
    ldm_nn_params *P;             /* the adapters */
    ldm_nn_lora_config cfg;       /* targets point at `targets` */
    char **targets;
    struct ldm__nn_adapter *ad;
    int n, training, merged;
    float scaling;
};

/* y + scaling * B(A(dropout(x))), in peft's order; a merged set adds nothing. */
static ldm_tensor *ldm__nn_lora_term(ldm_ctx *ctx, const struct ldm__nn_adapter *a, ldm_tensor *x, ldm_tensor *y) {
    const struct ldm_nn_lora *L = a->set;
    if (!y || L->merged) return y;
    ldm_tensor *h = L->training && L->cfg.dropout > 0.0f ? ldm_dropout(ctx, x, L->cfg.dropout, 1) : x;
    h = ldm_linear(ctx, ldm_linear(ctx, h, a->A, NULL), a->B, NULL);
    return ldm_add(ctx, y, ldm_scale(ctx, h, L->scaling));
}

/* target matches name, or the part of name after one of its '.' */
static int ldm__nn_target_match(const char *target, const char *name) {
    size_t tn = strlen(target), sn = strlen(name);
    for (size_t k = 0; k < sn; k++)
        if ((k == 0 || name[k - 1] == '.') && ldm__nn_glob(target, tn, name + k, sn - k)) return 1;
    return 0;
}

static void ldm__nn_lora_orphan(struct ldm_nn_lora *L) { L->base = NULL; }

LDM_API void ldm_nn_lora_destroy(ldm_nn_lora *L) {
    if (!L) return;
    if (L->base) {
        for (int i = 0; i < L->n; i++) if (L->ad[i].mod) L->ad[i].mod->lora = NULL;
        L->base->lora = NULL;
    }
    ldm_nn_params_destroy(L->P);
    for (int i = 0; L->targets && i < L->cfg.n_targets; i++) LDM_FREE(L->targets[i]);
    LDM_FREE(L->targets);
    LDM_FREE(L->ad);
    LDM_FREE(L);
}

/* The adapters, allocated and initialised, not yet attached (the base is untouched). */
static ldm_result ldm__nn_lora_build(ldm_ctx *ctx, ldm_nn_lora **out, ldm_nn_params *base, const ldm_nn_lora_config *cfg) {
    *out = NULL;
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    if (ctx != base->ctx) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_lora_create: ctx is not the base registry's context");
    if (!base->allocated) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_lora_create: the base model has no memory yet (hint: ldm_nn_params_alloc first)");
    if (base->lora) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_lora_create: the base model already has LoRA adapters (hint: ldm_nn_lora_destroy them first)");
    if (cfg->r < 1)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_lora_create: rank r = %d; LoRA needs r >= 1", cfg->r);
    if (!(cfg->alpha == cfg->alpha) || cfg->alpha - cfg->alpha != 0.0f)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_lora_create: lora_alpha %g is not finite", (double)cfg->alpha);
    if (!(cfg->dropout >= 0.0f && cfg->dropout < 1.0f))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_lora_create: lora_dropout %g is outside [0, 1)", (double)cfg->dropout);
    if (cfg->n_targets < 1 || !cfg->targets)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_lora_create: no target modules (hint: e.g. {\"attn.qkv\", \"mlp.fc1\"})");
    for (int k = 0; k < cfg->n_targets; k++) {
        const char *t = cfg->targets[k];
        if (!t || !t[0] || strchr(t, ','))
            return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_lora_create: target %d is %s%s%s (targets are non-empty module names without ',')", k,
                                  t ? "\"" : "NULL", t ? t : "", t ? "\"" : "");
        int hit = 0;
        for (int i = 0; i < base->nmod && !hit; i++) hit = ldm__nn_target_match(t, base->mods[i]->name);
        if (!hit) {
            char list[512];
            size_t len = 0;
            list[0] = 0;
            for (int i = 0; i < base->nmod && len + 64 < sizeof list; i++) {
                int w = snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "", base->mods[i]->name);
                if (w < 0 || (size_t)w >= sizeof list - len) break;
                len += (size_t)w;
            }
            return ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "ldm_nn_lora_create: target \"%s\" matches no linear layer of the model "
                                  "(hint: LoRA adapts ldm_nn_linear layers; this model has %d: %s%s)", t, base->nmod, base->nmod ? list : "none",
                                  len + 64 >= sizeof list ? ", ..." : "");
        }
    }
    ldm_nn_lora *L = (ldm_nn_lora *)LDM_MALLOC(sizeof *L);
    if (!L) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_lora_create: out of memory");
    memset(L, 0, sizeof *L);
    L->cfg = *cfg;
    L->scaling = cfg->use_rslora ? (float)((double)cfg->alpha / sqrt((double)cfg->r)) : (float)((double)cfg->alpha / (double)cfg->r);
    L->targets = (char **)LDM_MALLOC(sizeof(char *) * (size_t)cfg->n_targets);
    L->ad = (struct ldm__nn_adapter *)LDM_MALLOC(sizeof(struct ldm__nn_adapter) * (size_t)(base->nmod ? base->nmod : 1));
    ldm_result r = L->targets && L->ad ? LDM_OK : ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_lora_create: out of memory");
    if (L->targets) memset(L->targets, 0, sizeof(char *) * (size_t)cfg->n_targets);
    for (int k = 0; !r && k < cfg->n_targets; k++)
        if (!(L->targets[k] = ldm__nn_strdup(cfg->targets[k]))) r = ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_lora_create: out of memory");
    L->cfg.targets = (const char *const *)L->targets;
    if (!r) r = ldm_nn_params_create(ctx, &L->P, base->device);
    for (int i = 0; !r && i < base->nmod; i++) {
        ldm_nn_module *m = base->mods[i];
        int hit = 0;
        for (int k = 0; k < cfg->n_targets && !hit; k++) hit = ldm__nn_target_match(cfg->targets[k], m->name);
        if (!hit) continue;
        struct ldm__nn_adapter *a = &L->ad[L->n++];
        a->mod = m;
        a->set = L;
        ldm_nn_push(L->P, m->name);
        a->A = ldm_nn_param(L->P, "lora_A.weight", ldm_shape2(cfg->r, m->in), ldm_nn_init_kaiming_uniform(sqrt(5.0), m->in));
        a->B = ldm_nn_param(L->P, "lora_B.weight", ldm_shape2(m->out, cfg->r), ldm_nn_init_const(0.0f));
        ldm_nn_pop(L->P);
        r = ldm_ctx_status(ctx);
    }
    if (!r) r = ldm_nn_params_alloc(ctx, L->P);
    if (r) { ldm_nn_lora_destroy(L); return r; }
    *out = L;
    return LDM_OK;
}
/* peft's mark_only_lora_as_trainable (the base trains nothing and keeps no gradient memory),
   then the layers' hooks. */
static ldm_result ldm__nn_lora_attach(ldm_ctx *ctx, ldm_nn_lora *L, ldm_nn_params *base) {
    for (int i = 0; i < base->n; i++) if (base->e[i].kind == LDM_NN_PARAM) base->e[i].t->requires_grad = 0;
    if (ldm_nn_params_compact_grads(ctx, base)) return ldm_ctx_status(ctx);
    for (int i = 0; i < L->n; i++) L->ad[i].mod->lora = &L->ad[i];
    L->base = base;
    base->lora = L;
    return LDM_OK;
}
LDM_API ldm_result ldm_nn_lora_create(ldm_ctx *ctx, ldm_nn_lora **out, ldm_nn_params *base, const ldm_nn_lora_config *cfg) {
    ldm_result r = ldm__nn_lora_build(ctx, out, base, cfg);
    if (!r && (r = ldm__nn_lora_attach(ctx, *out, base)) != LDM_OK) { ldm_nn_lora_destroy(*out); *out = NULL; }
    return r;
}

LDM_API ldm_nn_params *ldm_nn_lora_params(ldm_nn_lora *L) { return L->P; }
LDM_API const ldm_nn_lora_config *ldm_nn_lora_cfg(const ldm_nn_lora *L) { return &L->cfg; }
LDM_API int ldm_nn_lora_count(const ldm_nn_lora *L) { return L->n; }
LDM_API const char *ldm_nn_lora_module(const ldm_nn_lora *L, int i) { return i >= 0 && i < L->n && L->ad[i].mod ? L->ad[i].mod->name : NULL; }
LDM_API float ldm_nn_lora_scaling(const ldm_nn_lora *L) { return L->scaling; }
LDM_API void ldm_nn_lora_set_training(ldm_nn_lora *L, int on) { L->training = on ? 1 : 0; }
LDM_API int ldm_nn_lora_merged(const ldm_nn_lora *L) { return L->merged; }

/* W += sign * scaling * B A on the host (sum over r in double, one rounding per element). */
static ldm_result ldm__nn_lora_fold(ldm_ctx *ctx, ldm_nn_lora *L, double sign, const char *who) {
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    if (!L->base) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: the base model of these adapters was destroyed", who);
    if (L->merged == (sign > 0))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: the adapters are %s merged", who, L->merged ? "already" : "not");
    ldm_device dev = L->base->device;
    for (int i = 0; i < L->n; i++) {
        const struct ldm__nn_adapter *a = &L->ad[i];
        int64_t O = a->mod->out, I = a->mod->in, R = L->cfg.r;
        float *w = NULL, *ah = NULL, *bh = NULL, *oa = NULL, *ob = NULL;
        if (dev == LDM_CPU) w = a->mod->weight->data;
        else if ((w = (float *)LDM_MALLOC(sizeof(float) * (size_t)(O * I))) != NULL)
            ldm_device_copy(ctx, w, LDM_CPU, a->mod->weight->data, dev, (size_t)(O * I) * sizeof(float));
        ah = ldm__nn_host_view(ctx, a->A->data, dev, R * I, &oa);
        bh = ldm__nn_host_view(ctx, a->B->data, dev, O * R, &ob);
        if (!w || !ah || !bh) {
            if (dev != LDM_CPU) LDM_FREE(w);
            LDM_FREE(oa); LDM_FREE(ob);
            return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "%s: out of memory", who);
        }
        double s = sign * (double)L->scaling;
        for (int64_t o = 0; o < O; o++)
            for (int64_t j = 0; j < I; j++) {
                double d = 0.0;
                for (int64_t k = 0; k < R; k++) d += (double)bh[o * R + k] * (double)ah[k * I + j];
                w[o * I + j] = (float)((double)w[o * I + j] + s * d);
            }
        if (dev != LDM_CPU) {
            ldm_device_copy(ctx, a->mod->weight->data, dev, w, LDM_CPU, (size_t)(O * I) * sizeof(float));
            LDM_FREE(w);
        }
        LDM_FREE(oa); LDM_FREE(ob);
    }
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    L->merged = sign > 0;
    return LDM_OK;
}
LDM_API ldm_result ldm_nn_lora_merge(ldm_ctx *ctx, ldm_nn_lora *L) { return ldm__nn_lora_fold(ctx, L, 1.0, "ldm_nn_lora_merge"); }
LDM_API ldm_result ldm_nn_lora_unmerge(ldm_ctx *ctx, ldm_nn_lora *L) { return ldm__nn_lora_fold(ctx, L, -1.0, "ldm_nn_lora_unmerge"); }

LDM_API ldm_result ldm_nn_lora_save(ldm_ctx *ctx, const ldm_nn_lora *L, const char *path) {
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    char rank[24], alpha[40], drop[40], rs[4], *targets;
    size_t tl = 1;
    for (int k = 0; k < L->cfg.n_targets; k++) tl += strlen(L->targets[k]) + 1;
    if (!(targets = (char *)LDM_MALLOC(tl))) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_nn_lora_save: out of memory");
    targets[0] = 0;
    for (int k = 0; k < L->cfg.n_targets; k++) { if (k) strcat(targets, ","); strcat(targets, L->targets[k]); }
    snprintf(rank, sizeof rank, "%d", L->cfg.r);
    snprintf(alpha, sizeof alpha, "%.9g", (double)L->cfg.alpha);
    snprintf(drop, sizeof drop, "%.9g", (double)L->cfg.dropout);
    snprintf(rs, sizeof rs, "%d", L->cfg.use_rslora ? 1 : 0);
    const char *mk[6] = {"format", "lora_rank", "lora_alpha", "lora_dropout", "use_rslora", "target_modules"};
    const char *mv[6];
    mv[0] = "pt"; mv[1] = rank; mv[2] = alpha; mv[3] = drop; mv[4] = rs; mv[5] = targets;
    ldm_result r = ldm__nn_save(ctx, L->P, path, LDM_F32, NULL, 6, mk, mv);
    LDM_FREE(targets);
    return r;
}

/* The config in an adapter file's metadata; targets are written into buf (cap bytes) and
   pointed at by tp (up to maxt). */
static ldm_result ldm__nn_lora_file_cfg(ldm_ctx *ctx, ldm_weights *w, ldm_nn_lora_config *c, char *buf, size_t cap, const char **tp, int maxt) {
    const char *path = ldm_weights_path(w);
    const char *rk = ldm_weights_metadata(w, "lora_rank"), *al = ldm_weights_metadata(w, "lora_alpha");
    const char *dr = ldm_weights_metadata(w, "lora_dropout"), *rs = ldm_weights_metadata(w, "use_rslora");
    const char *tg = ldm_weights_metadata(w, "target_modules");
    char *e1 = NULL, *e2 = NULL;
    memset(c, 0, sizeof *c);
    long r = rk ? strtol(rk, &e1, 10) : 0;
    double a = al ? strtod(al, &e2) : 0.0;
    if (!rk || !al || *e1 || *e2 || !*rk || !*al || r < 1 || r > 1 << 20)
        return ldm_ctx_seterr(ctx, LDM_ERR_FORMAT, "ldm_nn_lora_load: %s is not a LoRA adapter file of ldm_nn_lora_save: metadata lora_rank \"%s\", lora_alpha \"%s\" "
                              "(hint: save adapters with ldm_nn_lora_save)", path, rk ? rk : "(none)", al ? al : "(none)");
    c->r = (int)r;
    c->alpha = (float)a;
    c->dropout = dr ? (float)strtod(dr, NULL) : 0.0f;
    c->use_rslora = rs && !strcmp(rs, "1");
    if (buf) {
        if (!tg || strlen(tg) >= cap)
            return ldm_ctx_seterr(ctx, LDM_ERR_FORMAT, "ldm_nn_lora_load: %s: metadata target_modules is %s", path, tg ? "too long" : "missing");
        strcpy(buf, tg);
        int n = 0;
        for (char *p = buf; *p && n < maxt;) {
            tp[n++] = p;
            char *q = strchr(p, ',');
            if (!q) break;
            *q = 0;
            p = q + 1;
        }
        c->n_targets = n;
        c->targets = tp;
    }
    return LDM_OK;
}

LDM_API ldm_result ldm_nn_lora_load(ldm_ctx *ctx, ldm_nn_lora *L, const char *path) {
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    if (L->merged)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_lora_load: %s: the adapters are merged into the base weights (hint: ldm_nn_lora_unmerge first)", path);
    ldm_weights *w = NULL;
    if (ldm_weights_open(ctx, &w, path)) return ldm_ctx_status(ctx);
    ldm_nn_lora_config fc;
    ldm_result r = ldm__nn_lora_file_cfg(ctx, w, &fc, NULL, 0, NULL, 0);
    if (!r && (fc.r != L->cfg.r || fc.alpha != L->cfg.alpha || fc.use_rslora != (L->cfg.use_rslora != 0)))
        r = ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_lora_load: %s holds adapters with rank %d, alpha %g%s; these have rank %d, alpha %g%s "
                           "(hint: ldm_nn_lora_create_from_file builds adapters with the file's config)", path, fc.r, (double)fc.alpha,
                           fc.use_rslora ? " (rslora)" : "", L->cfg.r, (double)L->cfg.alpha, L->cfg.use_rslora ? " (rslora)" : "");
    /* names and shapes first, with messages about models rather than state dicts */
    for (int f = 0; !r && f < ldm_weights_count(w); f++) {
        const ldm_weight_info *fi = ldm_weights_info(w, f);
        ldm_tensor *t = ldm_nn_find(L->P, fi->name);
        char a[96], b[96];
        if (!t)
            r = ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "ldm_nn_lora_load: %s holds \"%s\", which is no adapter of this model (the first of its %d adapted layers is \"%s\"; "
                               "hint: the file was trained on another model or other target modules)", path, fi->name, L->n, ldm_nn_lora_module(L, 0));
        else if (fi->ndim != t->ndim || fi->numel != t->numel || (fi->ndim == 2 && (fi->shape[0] != t->shape[0] || fi->shape[1] != t->shape[1])))
            r = ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_nn_lora_load: %s: \"%s\" is %s in the file, %s here (hint: the base model's layer sizes differ from the one "
                               "the adapters were trained on)", path, fi->name, ldm_dims_str(fi->shape, fi->ndim, a, sizeof a), ldm_shape_str(t, b, sizeof b));
    }
    for (int i = 0; !r && i < ldm_nn_count(L->P); i++) {
        const char *nm = ldm_nn_entry_at(L->P, i)->name;
        if (ldm_weights_find(w, nm) < 0)
            r = ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "ldm_nn_lora_load: %s has no \"%s\" (hint: the file adapts other layers; compare its target_modules \"%s\")",
                               path, nm, ldm_weights_metadata(w, "target_modules") ? ldm_weights_metadata(w, "target_modules") : "?");
    }
    if (!r) {
        ldm_nn_load_opts o;
        memset(&o, 0, sizeof o);
        o.strict = 1;
        r = ldm_nn_load_weights(ctx, L->P, w, &o);
    }
    ldm_weights_close(w);
    return r;
}

LDM_API ldm_result ldm_nn_lora_create_from_file(ldm_ctx *ctx, ldm_nn_lora **L, ldm_nn_params *base, const char *path) {
    *L = NULL;
    if (ldm_ctx_status(ctx)) return ldm_ctx_status(ctx);
    ldm_weights *w = NULL;
    if (ldm_weights_open(ctx, &w, path)) return ldm_ctx_status(ctx);
    char buf[4096];
    const char *tp[256];
    ldm_nn_lora_config c;
    ldm_result r = ldm__nn_lora_file_cfg(ctx, w, &c, buf, sizeof buf, tp, 256);
    ldm_weights_close(w);
    /* loaded before attaching: a file that does not fit leaves the base as it was */
    if (!r) r = ldm__nn_lora_build(ctx, L, base, &c);
    if (!r && ((r = ldm_nn_lora_load(ctx, *L, path)) != LDM_OK || (r = ldm__nn_lora_attach(ctx, *L, base)) != LDM_OK)) { ldm_nn_lora_destroy(*L); *L = NULL; }
    return r;
}

#endif /* LDM_NN_IMPLEMENTATION_DONE */
#endif /* LDM_NN_IMPLEMENTATION */
