/* ldm_test.h - the tiny harness every test program uses.

   Each check prints one line, "ok   <name>" or "FAIL <name>: <why>"; lt_finish() prints
   "<program>: N passed, M failed" and returns the exit code. build.sh adds the counts of all
   programs up. Comparisons print the worst element so a failure says where and by how much. */
#ifndef LDM_TEST_H
#define LDM_TEST_H
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../ldm_tensor.h"

static int lt_passed, lt_failed;
static const char *lt_tag = ""; /* printed before every check's name, e.g. "[cuda] " */

static void lt_report(int ok, const char *name, const char *fmt, ...) {
    if (ok) { lt_passed++; printf("ok   %s%s\n", lt_tag, name); }
    else {
        va_list ap;
        lt_failed++;
        printf("FAIL %s%s: ", lt_tag, name);
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        printf("\n");
    }
    fflush(stdout);
}
#define LT_CHECK(cond, name) lt_report((cond) ? 1 : 0, (name), "%s (%s:%d)", #cond, __FILE__, __LINE__)

/* Passes when |got - want| <= atol + rtol*|want| everywhere (and no NaN). */
static int lt_close(const char *name, const float *got, const float *want, long n, double atol, double rtol) {
    double max_abs = 0, max_rel = 0, worst_excess = -1;
    long worst = -1, bad = 0;
    for (long i = 0; i < n; i++) {
        double g = got[i], w = want[i], d = fabs(g - w), lim = atol + rtol * fabs(w);
        if (d > max_abs) max_abs = d;
        if (fabs(w) > 1e-12 && d / fabs(w) > max_rel) max_rel = d / fabs(w);
        if (!(d <= lim) || g != g) {
            bad++;
            if (d - lim > worst_excess || g != g) { worst_excess = d - lim; worst = i; }
        } else if (worst < 0 && d - lim > worst_excess) { worst_excess = d - lim; }
    }
    if (bad == 0) { lt_passed++; printf("ok   %s%s (max abs %.2e, max rel %.2e, n %ld)\n", lt_tag, name, max_abs, max_rel, n); fflush(stdout); return 1; }
    lt_failed++;
    printf("FAIL %s%s: %ld of %ld elements off; worst [%ld] got %.8g want %.8g (abs %.3e); max abs %.3e, max rel %.3e (atol %.1e rtol %.1e)\n",
           lt_tag, name, bad, n, worst, (double)got[worst], (double)want[worst], fabs((double)got[worst] - want[worst]), max_abs, max_rel, atol, rtol);
    fflush(stdout);
    return 0;
}

/* A tensor's values (grad: its gradient) readable on the host: its own memory on the CPU,
   else a host copy kept until lt_host_release() (so fixture checks run on any device). */
#define LT_MAX_COPIES 4096
static float *lt__copies[LT_MAX_COPIES];
static int lt__ncopies;
static void lt_host_release(void) {
    while (lt__ncopies > 0) free(lt__copies[--lt__ncopies]);
}
static const float *lt_h(ldm_ctx *ctx, const ldm_tensor *t, int grad) {
    float *p = t ? (grad ? t->grad : t->data) : NULL;
    if (!p || t->device == LDM_CPU) return p;
    if (lt__ncopies == LT_MAX_COPIES) lt_host_release();
    float *h = (float *)malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
    ldm_tensor w = ldm_tensor_wrap(p, ldm_shape_of(t), t->device);
    if (!h || ldm_to_host(ctx, &w, h)) { free(h); return NULL; }
    lt__copies[lt__ncopies++] = h;
    return h;
}

static int lt_finish(const char *prog) {
    lt_host_release();
    printf("%s: %d passed, %d failed\n", prog, lt_passed, lt_failed);
    return lt_failed ? 1 : 0;
}

/* Fixture access: tensors by name from a safetensors file, as malloc'd host floats. */
static float *lt_load(ldm_ctx *ctx, ldm_weights *w, const char *name, long *numel) {
    int i = ldm_weights_find(w, name);
    if (i < 0) { fprintf(stderr, "fixture %s has no tensor '%s'\n", ldm_weights_path(w), name); return NULL; }
    const ldm_weight_info *inf = ldm_weights_info(w, i);
    float *p = (float *)malloc(sizeof(float) * (size_t)(inf->numel ? inf->numel : 1));
    if (!p || ldm_weights_read(ctx, w, i, p)) { fprintf(stderr, "%s\n", ldm_ctx_error(ctx)); free(p); return NULL; }
    if (numel) *numel = (long)inf->numel;
    return p;
}
/* The same as an arena tensor with the file's shape, on the context's device. */
static ldm_tensor *lt_tensor(ldm_ctx *ctx, ldm_weights *w, const char *name) {
    int i = ldm_weights_find(w, name);
    if (i < 0) { fprintf(stderr, "fixture %s has no tensor '%s'\n", ldm_weights_path(w), name); return NULL; }
    const ldm_weight_info *inf = ldm_weights_info(w, i);
    float *h = (float *)malloc(sizeof(float) * (size_t)(inf->numel ? inf->numel : 1));
    ldm_tensor *t = h && !ldm_weights_read(ctx, w, i, h) ? ldm_from_host(ctx, ldm_shape_n(inf->ndim, inf->shape), h) : NULL;
    free(h);
    if (!t) fprintf(stderr, "%s\n", ldm_ctx_error(ctx));
    return t; /* on the context's device */
}
/* The hash weight generator of tests/ref/common.py (hash_uniform / hash_init), so big random
   models need no committed weights: element i of `name` is the splitmix64 finaliser of
   fnv1a64(name) + i*golden, top 24 bits mapped to [-1, 1). */
static void lt_hash_uniform(const char *name, float *out, long n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *c = (const unsigned char *)name; *c; c++) { h ^= *c; h *= 0x100000001b3ull; }
    for (long i = 0; i < n; i++) {
        uint64_t z = h + (uint64_t)i * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        out[i] = (float)(2.0 * ((double)(z >> 40) / (double)(1 << 24)) - 1.0);
    }
}
/* hash_init for one tensor: ndim >= 2 -> U/sqrt(fan_in); "*.weight" -> 1 + 0.1U; else 0.1U. */
static void lt_hash_init(const char *name, float *data, int ndim, const int64_t *shape) {
    long n = 1;
    for (int d = 0; d < ndim; d++) n *= (long)shape[d];
    lt_hash_uniform(name, data, n);
    size_t len = strlen(name);
    int is_weight = len >= 7 && strcmp(name + len - 7, ".weight") == 0;
    float s = ndim >= 2 ? (float)(1.0 / sqrt((double)(n / shape[0]))) : 0.1f;
    for (long i = 0; i < n; i++) data[i] = (ndim < 2 && is_weight) ? 1.0f + s * data[i] : s * data[i];
}
#endif
