/* test_arena.c - the per-step arena: a clear error when it runs out (how much was needed, how
   much is in use, a hint), sticky errors, ldm_step_reset freeing everything, mark/rewind and
   ldm_arena_keep.
   Also built and run under ASan/UBSan by build.sh (LDM_TEST_SANITIZE). */
#define LDM_IMPLEMENTATION
#include "ldm_test.h"

static int has(const char *msg, const char *part) { return strstr(msg, part) != NULL; }

int main(void) {
    ldm_ctx *ctx;
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.threads = 2;
    s.arena_bytes = (size_t)4 << 20;
    if (ldm_ctx_create(&ctx, &s)) { printf("FAIL ctx create\n"); return 1; }
    LT_CHECK(ldm_arena_limit(ctx, LDM_CPU) == ((size_t)4 << 20) && ldm_arena_used(ctx, LDM_CPU) == 0, "arena limit as set, empty");

    /* 3 MiB fit, 2 MiB more do not */
    ldm_tensor *a = ldm_zeros(ctx, ldm_shape2(768, 1024));
    LT_CHECK(a && ldm_arena_used(ctx, LDM_CPU) >= ((size_t)3 << 20), "3 MiB tensor fits in 4 MiB");
    ldm_tensor *b = ldm_new(ctx, ldm_shape2(512, 1024));
    const char *msg = ldm_ctx_error(ctx);
    printf("     message: %s\n", msg);
    LT_CHECK(b == NULL && ldm_ctx_status(ctx) == LDM_ERR_NOMEM, "out of arena: NULL and LDM_ERR_NOMEM");
    LT_CHECK(has(msg, "needed 2.0 MiB") && has(msg, "of 4.0 MiB in use") && has(msg, "hint") && has(msg, "arena_bytes"),
             "message says how much was needed, what is in use, and how to fix it");
    /* errors are sticky: later ops return NULL and keep the first message */
    ldm_tensor *c = ldm_exp(ctx, a);
    LT_CHECK(c == NULL && ldm_ctx_status(ctx) == LDM_ERR_NOMEM && has(ldm_ctx_error(ctx), "needed 2.0 MiB"), "the first error sticks");
    LT_CHECK(ldm_exp(ctx, NULL) == NULL, "NULL input gives NULL");

    /* reset frees everything; the same request then fits */
    size_t peak = ldm_arena_peak(ctx, LDM_CPU);
    ldm_step_reset(ctx);
    ldm_ctx_clear_error(ctx);
    LT_CHECK(ldm_arena_used(ctx, LDM_CPU) == 0 && ldm_tape_len(ctx) == 0, "ldm_step_reset empties the arena and the tape");
    LT_CHECK(peak >= ((size_t)3 << 20) && ldm_arena_peak(ctx, LDM_CPU) == peak, "peak is remembered across resets");
    b = ldm_zeros(ctx, ldm_shape2(960, 1024)); /* 3.75 MiB: only fits in an empty arena */
    LT_CHECK(b && ldm_ctx_status(ctx) == LDM_OK, "after reset the whole arena is available again");

    /* a small request when full names its size in bytes, not "0.0 MiB" */
    ldm_tensor *d = ldm_new(ctx, ldm_shape1(100000));
    LT_CHECK(d == NULL && has(ldm_ctx_error(ctx), "needed 390.6 KiB"), "small requests are reported in KiB");
    printf("     message: %s\n", ldm_ctx_error(ctx));
    ldm_step_reset(ctx);
    ldm_ctx_clear_error(ctx);

    /* a backward pass that does not fit fails cleanly with NOMEM */
    ldm_tensor *x = ldm_full(ctx, ldm_shape2(256, 1024), 0.5f);  /* 1 MiB */
    x->requires_grad = 1;
    ldm_tensor *y = ldm_mean_all(ctx, ldm_exp(ctx, ldm_exp(ctx, x))); /* 2 more MiB */
    ldm_result r = y ? ldm_backward(ctx, y) : ldm_ctx_status(ctx);
    LT_CHECK(y && r == LDM_ERR_NOMEM && has(ldm_ctx_error(ctx), "step arena full"), "backward out of arena reports LDM_ERR_NOMEM");
    ldm_step_reset(ctx);
    ldm_ctx_clear_error(ctx);

    /* an op whose output fits but whose scratch (im2col columns, ~9 MiB) does not: NULL too */
    ldm_tensor *cx = ldm_zeros(ctx, ldm_shape4(1, 64, 64, 64)), *cw = ldm_zeros(ctx, ldm_shape4(8, 64, 3, 3));
    ldm_tensor *cy = ldm_conv2d(ctx, cx, cw, NULL, 1, 1);
    LT_CHECK(cx && cw && cy == NULL && ldm_ctx_status(ctx) == LDM_ERR_NOMEM, "conv whose column buffer does not fit returns NULL");
    ldm_step_reset(ctx);
    ldm_ctx_clear_error(ctx);

    /* mark / rewind and keep */
    ldm_tensor *keep0 = ldm_full(ctx, ldm_shape1(1000), 1.0f);
    ldm_mark m = ldm_arena_mark(ctx);
    size_t used_m = ldm_arena_used(ctx, LDM_CPU);
    ldm_tensor *tmp = ldm_full(ctx, ldm_shape2(256, 1024), 2.0f); /* 3 x 1 MiB with the results */
    ldm_tensor *res = ldm_add_scalar(ctx, ldm_scale(ctx, tmp, 3.0f), 1.0f);
    ldm_arena_rewind(ctx, m);
    LT_CHECK(res && ldm_arena_used(ctx, LDM_CPU) == used_m && keep0->data[999] == 1.0f, "rewind frees everything after the mark");
    tmp = ldm_full(ctx, ldm_shape2(256, 1024), 2.0f);
    res = ldm_add_scalar(ctx, ldm_scale(ctx, tmp, 3.0f), 1.0f);
    ldm_tensor *kept = ldm_arena_keep(ctx, m, res);
    int all7 = kept != NULL;
    for (int64_t i = 0; kept && i < kept->numel; i++) all7 &= kept->data[i] == 7.0f;
    LT_CHECK(all7 && kept->node == -1 && !kept->requires_grad && ldm_arena_used(ctx, LDM_CPU) <= used_m + ((size_t)1 << 20) + 256,
             "ldm_arena_keep moves the result down and frees the rest");
    LT_CHECK(ldm_ctx_status(ctx) == LDM_OK, "no error left behind");

    /* a persistent leaf whose gradient came from the arena: the reset must not leave it
       pointing at memory the next step reuses */
    ldm_step_reset(ctx);
    float pdata[64];
    for (int i = 0; i < 64; i++) pdata[i] = 0.01f * (float)i;
    ldm_tensor p = ldm_tensor_wrap(pdata, ldm_shape2(8, 8), LDM_CPU);
    p.requires_grad = 1;
    ldm_backward(ctx, ldm_sum_all(ctx, ldm_square(ctx, &p)));
    int step1 = p.grad != NULL && p.grad[9] == 2.0f * pdata[9];
    ldm_step_reset(ctx);
    LT_CHECK(step1 && p.grad == NULL, "ldm_step_reset drops arena gradients of persistent leaves");
    ldm_tensor *z = ldm_full(ctx, ldm_shape1(4096), 3.0f);
    ldm_backward(ctx, ldm_sum_all(ctx, ldm_square(ctx, &p)));
    int zok = 1;
    for (int i = 0; z && i < 4096; i++) zok &= z->data[i] == 3.0f;
    LT_CHECK(z && zok && p.grad && p.grad[9] == 2.0f * pdata[9], "the next step's gradient is fresh and nothing else is overwritten");
    ldm_mark pm = ldm_arena_mark(ctx);
    ldm_backward(ctx, ldm_sum_all(ctx, ldm_square(ctx, &p))); /* accumulates into the same buffer */
    LT_CHECK(p.grad && p.grad[9] == 4.0f * pdata[9], "a second backward in the step accumulates");
    ldm_arena_rewind(ctx, pm);
    LT_CHECK(p.grad != NULL, "rewinding to a mark above the gradient keeps it");
    ldm_step_reset(ctx);

    /* an arena leaf whose gradient the caller clears (PyTorch's x.grad = None) is forgotten:
       the reset must not read it after its memory is reused (ASan checks this build) */
    for (int rep = 0; rep < 3; rep++) {
        ldm_tensor *q = ldm_full(ctx, ldm_shape1(64), 1.5f);
        q->requires_grad = 1;
        ldm_backward(ctx, ldm_sum_all(ctx, ldm_square(ctx, q)));
        int ok = q->grad && q->grad[3] == 3.0f;
        q->grad = NULL;
        ldm_step_reset(ctx);
        (void)ldm_full(ctx, ldm_shape1(4096), -7.0f); /* reuses the memory q and its entry lived in */
        ldm_step_reset(ctx);
        if (rep == 2) LT_CHECK(ok && ldm_ctx_status(ctx) == LDM_OK && ctx->n_arena_grads == 0, "a cleared arena gradient is forgotten at the reset");
    }

    /* backward reuses the gradient buffers of nodes it has finished: a chain of 12 ops needs a
       few live gradients at a time, not 12 */
    {
        const int64_t n = 16384;
        ldm_tensor *x = ldm_full(ctx, ldm_shape1(n), 0.25f), *h = x;
        x->requires_grad = 1;
        for (int k = 0; k < 12; k++) h = (k & 1) ? ldm_tanh(ctx, h) : ldm_scale(ctx, h, 1.5f);
        ldm_tensor *loss = ldm_sum_all(ctx, h);
        ldm_arena_reset_peak(ctx);
        size_t before = ldm_arena_used(ctx, LDM_CPU);
        ldm_backward(ctx, loss);
        size_t grew = ldm_arena_peak(ctx, LDM_CPU) - before, one = (size_t)n * sizeof(float);
        printf("     backward of a 12-op chain: arena peak +%zu bytes (%.1f gradients of %zu)\n", grew, (double)grew / (double)one, one);
        LT_CHECK(x->grad && ldm_ctx_status(ctx) == LDM_OK && grew < 5 * one, "backward reuses finished nodes' gradient buffers");
        ldm_step_reset(ctx);
    }

    /* invalid shapes are INVALID, not NOMEM */
    ldm_step_reset(ctx);
    int64_t huge[2] = {(int64_t)1 << 40, (int64_t)1 << 40};
    LT_CHECK(ldm_new(ctx, ldm_shape_n(2, huge)) == NULL && ldm_ctx_status(ctx) == LDM_ERR_INVALID, "overflowing shape is LDM_ERR_INVALID");
    ldm_ctx_clear_error(ctx);
    LT_CHECK(ldm_new(ctx, ldm_shape2((int64_t)1 << 30, 16)) == NULL && ldm_ctx_status(ctx) == LDM_ERR_NOMEM &&
             has(ldm_ctx_error(ctx), "needed 64.00 GiB"), "64 GiB request: NOMEM in GiB");
    ldm_ctx_destroy(ctx);
    return lt_finish("test_arena");
}
