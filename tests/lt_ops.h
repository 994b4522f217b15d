/* lt_ops.h - one dispatcher over every ldm_tensor.h op, shared by test_grad.c (finite
   differences) and test_ops.c (PyTorch fixtures), so both run the ops the same way.

   A case is an lt_op (which op, its integer/float parameters) applied to an array of input
   tensors; lt_op_run returns how many outputs it produced (split/chunk give several), 0 when
   an op failed (the context error says why). */
#ifndef LT_OPS_H
#define LT_OPS_H
#include "ldm_test.h"

enum {
    LT_ADD, LT_SUB, LT_MUL, LT_DIV,
    LT_AFFINE, LT_SCALE, LT_ADD_SCALAR, LT_POW,
    LT_EXP, LT_LOG, LT_SQRT, LT_ABS, LT_SQUARE, LT_CLAMP, LT_SIGMOID, LT_SILU, LT_RELU, LT_LEAKY,
    LT_TANH, LT_GELU, LT_SOFTPLUS, LT_SIN, LT_COS, LT_GEGLU,
    LT_SUM, LT_MEAN, LT_SUM_ALL, LT_MEAN_ALL,
    LT_MATMUL, LT_LINEAR, LT_ATTENTION,
    LT_CONV2D, LT_CONV2D_EX, LT_CONV3D, LT_CONV3D_EX,
    LT_GROUP_NORM, LT_BATCH_NORM, LT_LAYER_NORM, LT_SOFTMAX, LT_GROUP_NORM_SILU, LT_GN_SILU_CONV,
    LT_UPSAMPLE, LT_AVG_POOL, LT_MAX_POOL, LT_PAD,
    LT_RESHAPE, LT_PERMUTE, LT_TRANSPOSE, LT_CONCAT, LT_SLICE, LT_SPLIT, LT_CHUNK, LT_COPY,
    LT_DROPOUT, LT_EMBEDDING,
    LT_GRAPH
};

/* Parameters by op (inputs in order; "[b]" = optional, present when the input count says so):
     AFFINE f0 scale f1 shift; SCALE/ADD_SCALAR/POW f0; CLAMP f0 lo f1 hi; LEAKY f0 slope;
     GELU i0 tanh; GEGLU (last dim even); SOFTPLUS f0 beta f1 threshold; SUM/MEAN i0 dim mask i1 keepdim;
     MATMUL a b, i0 trans_a i1 trans_b; LINEAR x w [b]; ATTENTION q [k v] (one input: q = k = v),
       i0 heads f0 scale;
     CONV2D x w [b], i0 stride i1 pad; CONV2D_EX x w [b], i0 sh i1 sw i2..i5 top bottom left right;
     CONV3D x w [b], i0 stride i1 pad; CONV3D_EX x w [b], i0..i2 stride i3..i8 pads;
     GROUP_NORM and GROUP_NORM_SILU x [w [b]], i0 groups f0 eps;
     GN_SILU_CONV x gw gb w [b], i0 groups f0 eps i1..i3 stride (t,h,w) i4..i9 pads; BATCH_NORM x [w b], i0 training f0 momentum f1 eps,
       rm/rv running stats (may be NULL when training); LAYER_NORM x [w b], i0 nd f0 eps;
     SOFTMAX i0 dim; UPSAMPLE i0..i2 factors t,h,w; AVG/MAX_POOL i0 kernel i1 stride i2 pad;
     PAD i0 n, i1.. pads, f0 value; RESHAPE shape; PERMUTE i0.. perm; TRANSPOSE i0 i1;
     CONCAT (all inputs) i0 dim; SLICE i0 dim i1 start i2 len; SPLIT i0 n i1 dim i2.. sizes;
     CHUNK i0 n i1 dim; DROPOUT f0 p i0 training, rng: the RNG state each call starts from;
     EMBEDDING weight, idx/n_idx;
     GRAPH x w b gw gb, i0 groups f0 eps: a small graph with fan-out and views, a ResnetBlock
       shaped mix: h = conv3x3(silu(group_norm(x))); y = (x + h) * sigmoid(h);
       out = y + mean(y over H,W, keepdim) reshaped and permuted back. */
typedef struct lt_op {
    int op;
    int i[12];
    float f[4];
    ldm_shape shape;
    const int64_t *idx;
    int64_t n_idx;
    ldm_tensor *rm, *rv;
    ldm_rng rng;
} lt_op;

static lt_op lt_op_make(int op) {
    lt_op p;
    memset(&p, 0, sizeof p);
    p.op = op;
    return p;
}

#define LT_MAX_OUT 8
static int lt_op_run(ldm_ctx *ctx, const lt_op *p, int n_in, ldm_tensor **in, ldm_tensor **out) {
    ldm_tensor *x = in[0], *a1 = n_in > 1 ? in[1] : NULL, *a2 = n_in > 2 ? in[2] : NULL;
    const int *i = p->i;
    const float *f = p->f;
    int n_out = 1;
    switch (p->op) {
    case LT_ADD: out[0] = ldm_add(ctx, x, a1); break;
    case LT_SUB: out[0] = ldm_sub(ctx, x, a1); break;
    case LT_MUL: out[0] = ldm_mul(ctx, x, a1); break;
    case LT_DIV: out[0] = ldm_div(ctx, x, a1); break;
    case LT_AFFINE: out[0] = ldm_affine(ctx, x, f[0], f[1]); break;
    case LT_SCALE: out[0] = ldm_scale(ctx, x, f[0]); break;
    case LT_ADD_SCALAR: out[0] = ldm_add_scalar(ctx, x, f[0]); break;
    case LT_POW: out[0] = ldm_pow_scalar(ctx, x, f[0]); break;
    case LT_EXP: out[0] = ldm_exp(ctx, x); break;
    case LT_LOG: out[0] = ldm_log(ctx, x); break;
    case LT_SQRT: out[0] = ldm_sqrt(ctx, x); break;
    case LT_ABS: out[0] = ldm_abs(ctx, x); break;
    case LT_SQUARE: out[0] = ldm_square(ctx, x); break;
    case LT_CLAMP: out[0] = ldm_clamp(ctx, x, f[0], f[1]); break;
    case LT_SIGMOID: out[0] = ldm_sigmoid(ctx, x); break;
    case LT_SILU: out[0] = ldm_silu(ctx, x); break;
    case LT_RELU: out[0] = ldm_relu(ctx, x); break;
    case LT_LEAKY: out[0] = ldm_leaky_relu(ctx, x, f[0]); break;
    case LT_TANH: out[0] = ldm_tanh(ctx, x); break;
    case LT_SIN: out[0] = ldm_sin(ctx, x); break;
    case LT_COS: out[0] = ldm_cos(ctx, x); break;
    case LT_GELU: out[0] = ldm_gelu(ctx, x, i[0]); break;
    case LT_GEGLU: out[0] = ldm_geglu(ctx, x); break;
    case LT_SOFTPLUS: out[0] = ldm_softplus(ctx, x, f[0], f[1]); break;
    case LT_SUM: out[0] = ldm_sum(ctx, x, (unsigned)i[0], i[1]); break;
    case LT_MEAN: out[0] = ldm_mean(ctx, x, (unsigned)i[0], i[1]); break;
    case LT_SUM_ALL: out[0] = ldm_sum_all(ctx, x); break;
    case LT_MEAN_ALL: out[0] = ldm_mean_all(ctx, x); break;
    case LT_MATMUL: out[0] = ldm_matmul(ctx, x, a1, i[0], i[1]); break;
    case LT_ATTENTION: out[0] = n_in == 1 ? ldm_attention(ctx, x, x, x, i[0], f[0]) : ldm_attention(ctx, x, a1, a2, i[0], f[0]); break;
    case LT_LINEAR: out[0] = ldm_linear(ctx, x, a1, a2); break;
    case LT_CONV2D: out[0] = ldm_conv2d(ctx, x, a1, a2, i[0], i[1]); break;
    case LT_GN_SILU_CONV: out[0] = ldm_group_norm_silu_conv(ctx, x, a1, a2, i[0], f[0], in[3], n_in > 4 ? in[4] : NULL, i + 1, i + 4); break;
    case LT_CONV2D_EX: out[0] = ldm_conv2d_ex(ctx, x, a1, a2, i[0], i[1], i[2], i[3], i[4], i[5]); break;
    case LT_CONV3D: out[0] = ldm_conv3d(ctx, x, a1, a2, i[0], i[1]); break;
    case LT_CONV3D_EX: out[0] = ldm_conv3d_ex(ctx, x, a1, a2, i, i + 3); break;
    case LT_GROUP_NORM: out[0] = ldm_group_norm(ctx, x, a1, a2, i[0], f[0]); break;
    case LT_GROUP_NORM_SILU: out[0] = ldm_group_norm_silu(ctx, x, a1, a2, i[0], f[0]); break;
    case LT_BATCH_NORM: out[0] = ldm_batch_norm(ctx, x, a1, a2, p->rm, p->rv, i[0], f[0], f[1]); break;
    case LT_LAYER_NORM: out[0] = ldm_layer_norm(ctx, x, a1, a2, i[0], f[0]); break;
    case LT_SOFTMAX: out[0] = ldm_softmax(ctx, x, i[0]); break;
    case LT_UPSAMPLE: out[0] = ldm_upsample_nearest(ctx, x, i[0], i[1], i[2]); break;
    case LT_AVG_POOL: out[0] = ldm_avg_pool(ctx, x, i[0], i[1], i[2]); break;
    case LT_MAX_POOL: out[0] = ldm_max_pool(ctx, x, i[0], i[1], i[2]); break;
    case LT_PAD: out[0] = ldm_pad(ctx, x, i[0], i + 1, f[0]); break;
    case LT_RESHAPE: out[0] = ldm_reshape(ctx, x, p->shape); break;
    case LT_PERMUTE: out[0] = ldm_permute(ctx, x, i); break;
    case LT_TRANSPOSE: out[0] = ldm_transpose(ctx, x, i[0], i[1]); break;
    case LT_CONCAT: out[0] = ldm_concat(ctx, n_in, in, i[0]); break;
    case LT_SLICE: out[0] = ldm_slice(ctx, x, i[0], i[1], i[2]); break;
    case LT_SPLIT: {
        int64_t sizes[LT_MAX_OUT];
        for (int k = 0; k < i[0]; k++) sizes[k] = i[2 + k];
        n_out = i[0];
        if (ldm_split(ctx, x, i[0], sizes, i[1], out)) return 0;
        break;
    }
    case LT_CHUNK:
        n_out = i[0];
        if (ldm_chunk(ctx, x, i[0], i[1], out)) return 0;
        break;
    case LT_COPY: out[0] = ldm_copy(ctx, x); break;
    case LT_DROPOUT: {
        ldm_rng keep = *ldm_ctx_rng(ctx);
        *ldm_ctx_rng(ctx) = p->rng; /* the same mask on every call */
        out[0] = ldm_dropout(ctx, x, f[0], i[0]);
        *ldm_ctx_rng(ctx) = keep;
        break;
    }
    case LT_EMBEDDING: out[0] = ldm_embedding(ctx, x, p->n_idx, p->idx); break;
    case LT_GRAPH: {
        ldm_tensor *h = ldm_conv2d(ctx, ldm_silu(ctx, ldm_group_norm(ctx, x, in[3], in[4], i[0], f[0])), a1, a2, 1, 1);
        ldm_tensor *y = ldm_mul(ctx, ldm_add(ctx, x, h), ldm_sigmoid(ctx, h));
        ldm_tensor *m = ldm_mean(ctx, y, LDM_DIM(2) | LDM_DIM(3), 1);
        static const int perm[4] = {0, 3, 1, 2}, back[4] = {0, 2, 3, 1};
        ldm_tensor *t = ldm_permute(ctx, ldm_add(ctx, y, m), perm);
        out[0] = ldm_permute(ctx, ldm_reshape(ctx, ldm_reshape(ctx, t, ldm_shape2(-1, x ? x->shape[1] : 1)), t ? ldm_shape_of(t) : ldm_shape1(1)), back);
        break;
    }
    default: ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "lt_op_run: unknown op %d", p->op); return 0;
    }
    for (int k = 0; k < n_out; k++) if (!out[k]) return 0;
    return n_out;
}
#endif
