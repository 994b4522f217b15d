/* test_winograd.c - the Winograd F(2x2,3x3) and F(4x4,3x3) convolutions (ldm_tensor.h) against a
   float64 direct convolution and against the im2col path: forward, input and filter gradients
   (both accumulate into what is there), odd sizes, several batches, tile chunks that split rows,
   and 1 vs 2 threads bitwise; which one LDM_CONV_AUTO and _FAST pick (bitwise equal to the
   forced algorithm), batch invariance, and $LDM_CONV. Finite differences of the Winograd paths
   are in test_grad. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#define LDM_IMPLEMENTATION
#include "ldm_tensor.h"
#include "ldm_test.h"

static uint64_t seed = 1234567;
static float frand(void) { /* uniform [-1, 1) */
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(seed >> 40) / (double)(1ULL << 24) * 2.0 - 1.0);
}
static float *rnd(int64_t n) {
    float *p = (float *)malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) p[i] = frand();
    return p;
}

/* y = conv(x, w) + b, dx = conv^T(dy, w), dw = sum dy x, all in double */
static void direct(const ldm_conv_desc *d, const float *x, const float *w, const float *b, const float *dy, double *y, double *dx,
                   double *dw) {
    int64_t B = d->B, C = d->C, O = d->O, H = d->H, W = d->W;
    memset(dx, 0, sizeof(double) * (size_t)(B * C * H * W));
    memset(dw, 0, sizeof(double) * (size_t)(O * C * 9));
    for (int64_t n = 0; n < B; n++)
        for (int64_t o = 0; o < O; o++)
            for (int64_t i = 0; i < H; i++)
                for (int64_t j = 0; j < W; j++) {
                    double s = b[o], g = dy[((n * O + o) * H + i) * W + j];
                    for (int64_t c = 0; c < C; c++)
                        for (int u = 0; u < 3; u++)
                            for (int v = 0; v < 3; v++) {
                                int64_t yy = i + u - 1, xx = j + v - 1;
                                if (yy < 0 || yy >= H || xx < 0 || xx >= W) continue;
                                int64_t xi = ((n * C + c) * H + yy) * W + xx, wi = (o * C + c) * 9 + u * 3 + v;
                                s += (double)x[xi] * w[wi];
                                dx[xi] += g * w[wi];
                                dw[wi] += g * x[xi];
                            }
                    y[((n * O + o) * H + i) * W + j] = s;
                }
}

static int check(const char *name, const float *got, const double *want, int64_t n, double tol) {
    float *f = (float *)malloc(sizeof(float) * (size_t)n);
    double m = 0.0;
    for (int64_t i = 0; i < n; i++) { f[i] = (float)want[i]; m = fabs(want[i]) > m ? fabs(want[i]) : m; }
    int ok = lt_close(name, got, f, (long)n, tol * m, 0.0);
    double e = 0.0;
    for (int64_t i = 0; i < n; i++) e = fabs(got[i] - want[i]) > e ? fabs(got[i] - want[i]) : e;
    printf("     worst / largest: %.2e\n", m > 0.0 ? e / m : 0.0);
    free(f);
    return ok;
}

/* Runs forward and backward with the given algorithm and threads into y, dx, dw (dx and dw start
   from `base` values to check that both accumulate). */
static void run(ldm_ctx *ctx, int algo, int threads, const ldm_conv_desc *d, const float *x, const float *w, const float *b, const float *dy,
                const float *basex, const float *basew, float *y, float *dx, float *dw) {
    int64_t nx = d->B * d->C * d->H * d->W, nw = d->O * d->C * 9;
    ldm_ctx_set_conv_algo(ctx, algo);
    ldm_ctx_set_threads(ctx, threads);
    memcpy(dx, basex, sizeof(float) * (size_t)nx);
    memcpy(dw, basew, sizeof(float) * (size_t)nw);
    ldm_conv_forward(ctx, y, x, w, b, d);
    ldm_conv_backward(ctx, dx, dw, NULL, dy, x, w, d);
}

/* a 3x3, stride 1, padding 1 convolution of row = {B, C, O, H, W} */
static int desc3x3(ldm_conv_desc *d, const int64_t row[5]) {
    memset(d, 0, sizeof *d);
    d->B = row[0]; d->C = row[1]; d->O = row[2]; d->T = 1; d->H = row[3]; d->W = row[4];
    d->kt = 1; d->kh = d->kw = 3; d->st = d->sh = d->sw = 1;
    d->pad[2] = d->pad[3] = d->pad[4] = d->pad[5] = 1;
    return ldm_conv_desc_init(d) == LDM_OK;
}

int main(void) {
    ldm_ctx *ctx;
    ldm_settings bad;
    memset(&bad, 0, sizeof bad);
    bad.conv_algo = 5;
    lt_report(ldm_ctx_create(&ctx, &bad) == LDM_ERR_INVALID && !ctx, "ldm_ctx_create refuses conv_algo 5 (LDM_ERR_INVALID)", "accepted");
    if (ldm_ctx_create(&ctx, NULL)) { printf("FAIL ctx\n"); return 1; }
    /* B C O H W: odd and even sizes, one-pixel images, single tiles, several small images in one
       product, chunks of whole and partial tile rows (C + O = 400: 655 tiles per chunk, 35 per
       row), chunks that end inside an image (C + O = 800: 327 tiles per chunk, 100 per image) */
    static const int64_t shapes[][5] = {{2, 16, 24, 7, 9}, {1, 3, 5, 1, 1}, {1, 4, 4, 2, 3}, {1, 17, 16, 1, 8}, {2, 32, 48, 13, 16},
                                        {3, 20, 24, 4, 6},
                                        {1, 200, 200, 70, 69}, {1, 256, 256, 64, 64}, {4, 400, 400, 20, 20}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        ldm_conv_desc d;
        if (!desc3x3(&d, shapes[s])) { lt_report(0, "desc", "%s", ldm_ctx_error(ctx)); continue; }
        int64_t nx = d.B * d.C * d.H * d.W, ny = d.B * d.O * d.H * d.W, nw = d.O * d.C * 9;
        float *x = rnd(nx), *w = rnd(nw), *b = rnd(d.O), *dy = rnd(ny), *bx = rnd(nx), *bw = rnd(nw);
        /* runs: F(2x2) 2 threads, im2col, F(2x2) 1 thread, F(4x4) 2 threads, F(4x4) 1 thread */
        enum { NR = 5 };
        static const int algo[NR] = {LDM_CONV_WINOGRAD, LDM_CONV_IM2COL, LDM_CONV_WINOGRAD, LDM_CONV_WINOGRAD4, LDM_CONV_WINOGRAD4};
        static const int thr[NR] = {2, 2, 1, 2, 1};
        float *y[NR], *dx[NR], *dw[NR];
        for (int k = 0; k < NR; k++) {
            y[k] = (float *)malloc(sizeof(float) * (size_t)ny);
            dx[k] = (float *)malloc(sizeof(float) * (size_t)nx);
            dw[k] = (float *)malloc(sizeof(float) * (size_t)nw);
        }
        double *ry = (double *)malloc(sizeof(double) * (size_t)ny), *rdx = (double *)malloc(sizeof(double) * (size_t)nx),
               *rdw = (double *)malloc(sizeof(double) * (size_t)nw);
        int big = d.C * d.O * d.H * d.W > 1000000;
        if (!big) { /* the double reference is O(B C O H W 9): only for the small shapes */
            direct(&d, x, w, b, dy, ry, rdx, rdw);
            for (int64_t i = 0; i < nx; i++) rdx[i] += bx[i];
            for (int64_t i = 0; i < nw; i++) rdw[i] += bw[i];
        }
        for (int k = 0; k < NR; k++) run(ctx, algo[k], thr[k], &d, x, w, b, dy, bx, bw, y[k], dx[k], dw[k]);
        if (ldm_ctx_status(ctx)) { lt_report(0, "conv", "%s", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); }
        char nm[160];
        const char *what[3] = {"y", "dx (+= a base)", "dw (+= a base)"};
        int64_t n[3] = {ny, nx, nw};
        /* bounds on the worst element as a fraction of the largest: F(4x4)'s transforms round more
           (~3-5e-6 at 128-512 channels; see ldm_tensor.h) */
        static const struct { int k; const char *name; double tol; } cmp[3] = {{0, "F(2x2)", 2e-6}, {1, "im2col", 2e-6}, {3, "F(4x4)", 1e-5}};
        for (int q = 0; q < 3; q++) {
            float *got[NR];
            for (int k = 0; k < NR; k++) got[k] = q == 0 ? y[k] : q == 1 ? dx[k] : dw[k];
            for (int c = 0; c < 3; c++) {
                if (!big) {
                    double *ref = q == 0 ? ry : q == 1 ? rdx : rdw;
                    snprintf(nm, sizeof nm, "[%lld,%lld,%lld,%lld] -> %lld: %s %s = float64 direct (%.0e of the largest)", (long long)d.B,
                             (long long)d.C, (long long)d.H, (long long)d.W, (long long)d.O, cmp[c].name, what[q], cmp[c].tol);
                    check(nm, got[cmp[c].k], ref, n[q], cmp[c].tol);
                } else if (cmp[c].k != 1) {
                    snprintf(nm, sizeof nm, "[%lld,%lld,%lld,%lld] -> %lld: %s %s = im2col (%.0e of the largest)", (long long)d.B,
                             (long long)d.C, (long long)d.H, (long long)d.W, (long long)d.O, cmp[c].name, what[q], cmp[c].tol);
                    double m = 0.0;
                    for (int64_t i = 0; i < n[q]; i++) m = fabs(got[1][i]) > m ? fabs(got[1][i]) : m;
                    lt_close(nm, got[cmp[c].k], got[1], (long)n[q], cmp[c].tol * m, 0.0);
                    double e = 0.0;
                    for (int64_t i = 0; i < n[q]; i++) e = fabs(got[cmp[c].k][i] - got[1][i]) > e ? fabs(got[cmp[c].k][i] - got[1][i]) : e;
                    printf("     worst / largest: %.2e\n", m > 0.0 ? e / m : 0.0);
                }
            }
            for (int k = 2; k < NR; k += 2) {
                snprintf(nm, sizeof nm, "[%lld,%lld,%lld,%lld] -> %lld: %s %s: 1 and 2 threads bitwise", (long long)d.B, (long long)d.C,
                         (long long)d.H, (long long)d.W, (long long)d.O, k == 2 ? "F(2x2)" : "F(4x4)", what[q]);
                lt_report(!memcmp(got[k - (k == 2 ? 2 : 1)], got[k], sizeof(float) * (size_t)n[q]), nm, "differ");
            }
        }
        free(x); free(w); free(b); free(dy); free(bx); free(bw); free(ry); free(rdx); free(rdw);
        for (int k = 0; k < NR; k++) { free(y[k]); free(dx[k]); free(dw[k]); }
    }
    /* AUTO: forward F(2x2), backward F(4x4) on large images (H W >= 8 max(C, O)), F(2x2) on small
       ones; FAST: F(4x4) both ways on large images. Checked bitwise against the forced runs, for
       a batch of 3 and for its samples one at a time (the choice must not depend on B). */
    static const int64_t pick[][5] = {{3, 16, 24, 20, 20}, {3, 32, 16, 9, 12}};
    for (int s = 0; s < 2; s++) {
        ldm_conv_desc d;
        if (!desc3x3(&d, pick[s])) { lt_report(0, "desc", "%s", ldm_ctx_error(ctx)); continue; }
        int large = d.H * d.W >= 8 * (d.C > d.O ? d.C : d.O);
        int64_t nx = d.B * d.C * d.H * d.W, ny = d.B * d.O * d.H * d.W, nw = d.O * d.C * 9;
        float *x = rnd(nx), *w = rnd(nw), *b = rnd(d.O), *dy = rnd(ny), *bx = rnd(nx), *bw = rnd(nw);
        enum { NA = 4 };
        static const int al[NA] = {LDM_CONV_AUTO, LDM_CONV_FAST, LDM_CONV_WINOGRAD, LDM_CONV_WINOGRAD4};
        float *y[NA], *dx[NA], *dw[NA];
        for (int k = 0; k < NA; k++) {
            y[k] = (float *)malloc(sizeof(float) * (size_t)ny);
            dx[k] = (float *)malloc(sizeof(float) * (size_t)nx);
            dw[k] = (float *)malloc(sizeof(float) * (size_t)nw);
            run(ctx, al[k], 2, &d, x, w, b, dy, bx, bw, y[k], dx[k], dw[k]);
        }
        char nm[200];
        int f2 = 2, f4 = large ? 3 : 2;
        snprintf(nm, sizeof nm, "%s image [%lld,%lld,%lld,%lld] -> %lld: AUTO's y is F(2x2)'s, dx and dw %s's (bitwise)", large ? "large" : "small",
                 (long long)d.B, (long long)d.C, (long long)d.H, (long long)d.W, (long long)d.O, large ? "F(4x4)" : "F(2x2)");
        lt_report(!memcmp(y[0], y[f2], sizeof(float) * (size_t)ny) && !memcmp(dx[0], dx[f4], sizeof(float) * (size_t)nx) &&
                      !memcmp(dw[0], dw[f4], sizeof(float) * (size_t)nw), nm, "differ");
        snprintf(nm, sizeof nm, "%s image: FAST's y, dx and dw are %s's (bitwise)", large ? "large" : "small", large ? "F(4x4)" : "F(2x2)");
        lt_report(!memcmp(y[1], y[f4], sizeof(float) * (size_t)ny) && !memcmp(dx[1], dx[f4], sizeof(float) * (size_t)nx) &&
                      !memcmp(dw[1], dw[f4], sizeof(float) * (size_t)nw), nm, "differ");
        /* one sample at a time: y and dx per sample equal the batch's (dw sums over the batch) */
        for (int k = 0; k < 2; k++) {
            ldm_conv_desc d1 = d;
            d1.B = 1;
            ldm_conv_desc_init(&d1);
            int ok = 1;
            for (int64_t n = 0; n < d.B; n++) {
                int64_t sx = d.C * d.H * d.W, sy = d.O * d.H * d.W;
                float *y1 = (float *)malloc(sizeof(float) * (size_t)sy), *dx1 = (float *)malloc(sizeof(float) * (size_t)sx),
                      *dw1 = (float *)malloc(sizeof(float) * (size_t)nw);
                run(ctx, al[k], 2, &d1, x + n * sx, w, b, dy + n * sy, bx + n * sx, bw, y1, dx1, dw1);
                ok &= !memcmp(y1, y[k] + n * sy, sizeof(float) * (size_t)sy) && !memcmp(dx1, dx[k] + n * sx, sizeof(float) * (size_t)sx);
                free(y1); free(dx1); free(dw1);
            }
            snprintf(nm, sizeof nm, "%s image: %s on a batch of %lld = on each sample alone (y, dx bitwise)", large ? "large" : "small",
                     k ? "FAST" : "AUTO", (long long)d.B);
            lt_report(ok, nm, "differ");
        }
        if (s == 0) { /* $LDM_CONV picks the algorithm when the settings leave it at AUTO */
            static const char *const env[] = {"winograd4", "im2col", "fast"};
            static const int want[] = {3, -1, 1};
            for (int e = 0; e < 3; e++) {
                ldm_ctx *c2;
                setenv("LDM_CONV", env[e], 1);
                ldm_settings st;
                memset(&st, 0, sizeof st);
                st.threads = 2;
                if (ldm_ctx_create(&c2, &st)) { lt_report(0, "LDM_CONV", "ldm_ctx_create failed for %s", env[e]); continue; }
                float *y1 = (float *)malloc(sizeof(float) * (size_t)ny);
                ldm_conv_forward(c2, y1, x, w, b, &d);
                int ok;
                if (want[e] >= 0) ok = !memcmp(y1, y[want[e]], sizeof(float) * (size_t)ny);
                else { /* im2col: not F(2x2)'s bits, but within rounding of them */
                    double m = 0, e2 = 0;
                    for (int64_t i = 0; i < ny; i++) { m = fmax(m, fabs(y[2][i])); e2 = fmax(e2, fabs(y1[i] - y[2][i])); }
                    ok = memcmp(y1, y[2], sizeof(float) * (size_t)ny) && e2 <= 2e-6 * m;
                }
                snprintf(nm, sizeof nm, "LDM_CONV=%s: the forward pass is %s's", env[e], e == 1 ? "im2col" : e == 0 ? "F(4x4)" : "FAST");
                lt_report(ok, nm, "differs");
                free(y1);
                ldm_ctx_destroy(c2);
            }
            setenv("LDM_CONV", "winograd5", 1);
            ldm_ctx *c3 = NULL;
            lt_report(ldm_ctx_create(&c3, NULL) == LDM_ERR_INVALID && !c3, "LDM_CONV=winograd5 -> LDM_ERR_INVALID (and a message naming it)", "accepted");
            unsetenv("LDM_CONV");
        }
        free(x); free(w); free(b); free(dy); free(bx); free(bw);
        for (int k = 0; k < NA; k++) { free(y[k]); free(dx[k]); free(dw[k]); }
    }
    ldm_ctx_destroy(ctx);
    return lt_finish("test_winograd");
}
