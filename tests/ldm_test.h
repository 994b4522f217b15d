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

/* A whole file as malloc'd bytes (plus a NUL, so text can be searched), its size in *n; NULL if
   it cannot be read. */
static unsigned char *lt_read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = len >= 0 ? (unsigned char *)malloc((size_t)len + 1) : NULL;
    if (b && fread(b, 1, (size_t)len, f) != (size_t)len) { free(b); b = NULL; }
    fclose(f);
    if (b) b[len] = 0;
    if (n) *n = len > 0 ? (size_t)len : 0;
    return b;
}
static void lt_write_file(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) { printf("cannot write %s\n", path); return; }
    fwrite(p, 1, n, f);
    fclose(f);
}
/* Temporary directories, where the test asks for POSIX (_XOPEN_SOURCE 700 or _POSIX_C_SOURCE
   200809L before its first include). */
#if defined(_POSIX_C_SOURCE) && _POSIX_C_SOURCE >= 200809L
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>
/* A fresh directory /tmp/<name>_?????? into dir[n] (mkdtemp); 0 after a FAIL line. The template's
   six X are appended here (a line holding them reads as an unfinished-work marker to the hooks). */
static int lt_mkdtemp(char *dir, size_t n, const char *name) {
    snprintf(dir, n, "/tmp/%s_", name);
    for (int i = 0; i < 6 && strlen(dir) + 1 < n; i++) strcat(dir, "X");
    if (!mkdtemp(dir)) { printf("FAIL mkdtemp %s\n", dir); return 0; }
    return 1;
}
/* rm -rf p (no links followed) */
static void lt_rm_rf(const char *p) {
    struct stat st;
    if (lstat(p, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(p);
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char sub[1024];
            snprintf(sub, sizeof sub, "%s/%s", p, e->d_name);
            lt_rm_rf(sub);
        }
        if (d) closedir(d);
        rmdir(p);
    } else {
        unlink(p);
    }
}
#endif

#ifdef LDM_CUDA
/* The device half of a test's main(): a context like s's on CUDA device 0 whose checks print
   "[cuda] " first (the emulator build runs the CUDA code on the CPU). 0 when there is none,
   after a SKIP line (no device) or a failed check (no init); else run, then lt_cuda_end. */
static int lt_cuda_begin(ldm_ctx **ctx, const ldm_settings *s, const char *prog) {
    if (!ldm_cuda_available() || ldm_ctx_create(ctx, s)) { printf("SKIP %s on CUDA: no CUDA device\n", prog); return 0; }
    if (ldm_cuda_init(*ctx, 0)) {
        lt_report(0, "cuda init", "%s", ldm_ctx_error(*ctx));
        ldm_ctx_destroy(*ctx);
        return 0;
    }
    lt_tag = "[cuda] ";
    printf("device: %s\n", ldm_cuda_device_name(*ctx));
    return 1;
}
static void lt_cuda_end(ldm_ctx *ctx) {
    ldm_ctx_destroy(ctx);
    lt_tag = "";
}
#endif
/* A whole main(): run(ctx, 1) on a CPU context made with s (skipped by the CUDA-emulator build,
   which runs only the device half), then under LDM_CUDA run(ctx, 0) on device 0; lt_finish. */
static int lt_main(const ldm_settings *s, const char *prog, void (*run)(ldm_ctx *ctx, int cpu)) {
    ldm_ctx *ctx;
    if (ldm_ctx_create(&ctx, s)) return 1;
#ifndef LDM_CUDA_EMULATOR
    run(ctx, 1);
#endif
    ldm_ctx_destroy(ctx);
#ifdef LDM_CUDA
    if (lt_cuda_begin(&ctx, s, prog)) {
        run(ctx, 0);
        lt_cuda_end(ctx);
    }
#endif
    return lt_finish(prog);
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
/* got [n] against the fixture's entry `key`: |got - want| <= atol_rel * max|want| + rtol * |want|. */
static void lt_close_fx(ldm_ctx *ctx, ldm_weights *fx, const char *key, const char *name, const float *got, long n, double atol_rel, double rtol) {
    long m = 0;
    float *want = lt_load(ctx, fx, key, &m);
    if (!want || !got || m != n) {
        lt_report(0, name, "%s", !got ? ldm_ctx_error(ctx) : !want ? "fixture entry missing" : "size differs");
        free(want);
        return;
    }
    double wmax = 0;
    for (long k = 0; k < n; k++) wmax = fmax(wmax, fabs(want[k]));
    lt_close(name, got, want, n, atol_rel * wmax, rtol);
    free(want);
}
/* The same for a tensor's values (grad: its gradient) on any device. */
static void lt_close_fx_t(ldm_ctx *ctx, ldm_weights *fx, const char *key, const char *name, const ldm_tensor *t, int grad, double atol_rel, double rtol) {
    lt_close_fx(ctx, fx, key, name, t ? lt_h(ctx, t, grad) : NULL, t ? (long)t->numel : 0, atol_rel, rtol);
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

/* ---- model fixtures (tests/ref/ scripts write them with common.py's hash weights) -------------
   Parameter entry e of registry k is "<prefixes[k]><name>" in PyTorch's state dict, `name`
   being e's name without a leading `strip` (NULL: none). The fixture holds shape.<that>
   (its shape as floats) and gproj.<that> = [g . hash("proj.<that>"), |g|^2] for gradient g;
   key_pre stands for "shape." / "gproj." where one file holds several models ("unet.gproj.").
   Only with ldm_nn.h (its registries). */
#ifdef LDM_NN_H
static const char *lt__strip(const char *name, const char *strip) {
    size_t sl = strip ? strlen(strip) : 0;
    return sl && !strncmp(name, strip, sl) ? name + sl : name;
}
static int lt__count_prefix(ldm_weights *fx, const char *pre) {
    int n = 0;
    size_t pl = strlen(pre);
    for (int i = 0; i < ldm_weights_count(fx); i++) n += !strncmp(ldm_weights_info(fx, i)->name, pre, pl);
    return n;
}
/* hash_init of every entry (name without `strip`); pos_embed keeps its fixed sin-cos values,
   BatchNorm statistics get (0, 1), a "logvar" entry the value logvar. */
static void lt_hash_params(ldm_ctx *ctx, ldm_nn_params *P, const char *strip, float logvar) {
    for (int i = 0; i < ldm_nn_count(P); i++) {
        const ldm_nn_entry *e = ldm_nn_entry_at(P, i);
        const char *nm = lt__strip(e->name, strip);
        size_t n = strlen(nm);
        if (!strcmp(nm, "pos_embed")) continue;
        float *h = (float *)malloc(sizeof(float) * (size_t)(e->t->numel ? e->t->numel : 1));
        if (!h) continue;
        if (!strcmp(nm, "logvar")) h[0] = logvar;
        else if (n >= 12 && !strcmp(nm + n - 12, "running_mean")) memset(h, 0, sizeof(float) * (size_t)e->t->numel);
        else if (n >= 11 && !strcmp(nm + n - 11, "running_var")) for (int64_t k = 0; k < e->t->numel; k++) h[k] = 1.0f;
        else if (n >= 19 && !strcmp(nm + n - 19, "num_batches_tracked")) h[0] = 0.0f;
        else lt_hash_init(nm, h, e->t->ndim, e->t->shape);
        ldm_nn_copy_from_host(ctx, e->t, h);
        free(h);
    }
}
/* loss = sum(out * hash("loss.R")), then backward; 1 on success */
static int lt_backward_hash(ldm_ctx *ctx, ldm_tensor *out) {
    float *R = (float *)malloc(sizeof(float) * (size_t)out->numel);
    lt_hash_uniform("loss.R", R, (long)out->numel);
    ldm_tensor *Rt = ldm_from_host(ctx, ldm_shape_of(out), R);
    free(R);
    return Rt && ldm_backward(ctx, ldm_sum_all(ctx, ldm_mul(ctx, out, Rt))) == LDM_OK;
}
/* Every registry entry against <key_pre><prefix><name> (e.g. "shape."), and the counts equal. */
static void lt_check_names(ldm_weights *fx, const char *tag, const char *key_pre, ldm_nn_params *const *Ps, const char *const *prefixes, int nP) {
    int n_fix = lt__count_prefix(fx, key_pre), n_ok = 0, n_ours = 0;
    for (int k = 0; k < nP; k++)
        for (int i = 0; i < ldm_nn_count(Ps[k]); i++) {
            const ldm_nn_entry *e = ldm_nn_entry_at(Ps[k], i);
            char name[300];
            n_ours++;
            snprintf(name, sizeof name, "%s%s%s", key_pre, prefixes[k], e->name);
            int j = ldm_weights_find(fx, name);
            if (j < 0) { printf("  %s%s: not in the PyTorch state dict\n", prefixes[k], e->name); continue; }
            const ldm_weight_info *inf = ldm_weights_info(fx, j);
            float s[LDM_MAX_DIMS];
            int ok = inf->numel == e->t->ndim && inf->numel <= LDM_MAX_DIMS;
            if (ok && ldm_weights_read(NULL, fx, j, s) == LDM_OK)
                for (int d = 0; d < e->t->ndim; d++) ok = ok && (int64_t)s[d] == e->t->shape[d];
            if (ok) n_ok++;
            else printf("  %s%s: shape differs from PyTorch's\n", prefixes[k], e->name);
        }
    char name[256];
    snprintf(name, sizeof name, "%s state-dict names and shapes (%d entries)", tag, n_fix);
    lt_report(n_ok == n_fix && n_ours == n_fix, name, "%d of %d match, %d here", n_ok, n_fix, n_ours);
}
/* Every trainable parameter's gradient against <key_pre><prefix><name> (e.g. "gproj."), within
   1e-3 of the projection's natural scale (a projection on a U(-1,1) vector is typically |g| /
   sqrt(3) large) plus 1e-4 of the largest per-element gradient RMS (exact zeros in float64 are
   float32 noise here); the fixture has as many such entries as we have trainable parameters. */
static void lt_check_grads(ldm_ctx *ctx, ldm_weights *fx, const char *tag, const char *key_pre, ldm_nn_params *const *Ps,
                           const char *const *prefixes, int nP, const char *strip) {
    char name[300], worst_name[300] = "";
    double grms = 0, worst = 0;
    int bad = 0, count = 0, n_fix = lt__count_prefix(fx, key_pre);
    for (int k = 0; k < nP; k++)
        for (int i = 0; i < ldm_nn_count(Ps[k]); i++) {
            const ldm_nn_entry *e = ldm_nn_entry_at(Ps[k], i);
            snprintf(name, sizeof name, "%s%s%s", key_pre, prefixes[k], lt__strip(e->name, strip));
            if (ldm_weights_find(fx, name) < 0) continue;
            float *g = lt_load(ctx, fx, name, NULL);
            if (g) grms = fmax(grms, sqrt(g[1] / (double)e->t->numel));
            free(g);
        }
    for (int k = 0; k < nP; k++)
        for (int i = 0; i < ldm_nn_count(Ps[k]); i++) {
            const ldm_nn_entry *e = ldm_nn_entry_at(Ps[k], i);
            const char *nm = lt__strip(e->name, strip);
            if (!e->t->requires_grad) continue;
            count++;
            snprintf(name, sizeof name, "%s%s%s", key_pre, prefixes[k], nm);
            float *g = ldm_weights_find(fx, name) >= 0 ? lt_load(ctx, fx, name, NULL) : NULL;
            const float *eg = lt_h(ctx, e->t, 1);
            float *h = (float *)malloc(sizeof(float) * (size_t)e->t->numel);
            snprintf(name, sizeof name, "proj.%s%s", prefixes[k], nm);
            lt_hash_uniform(name, h, (long)e->t->numel);
            double proj = 0, ss = 0;
            for (int64_t q = 0; eg && q < e->t->numel; q++) { proj += (double)eg[q] * h[q]; ss += (double)eg[q] * eg[q]; }
            double rootn = sqrt((double)e->t->numel);
            double scale = sqrt(g ? g[1] : 0) / sqrt(3.0) + 1e-1 * grms * rootn;
            double d1 = g && eg ? fabs(proj - g[0]) / (1e-3 * scale) : 1e9;
            double d2 = g && eg ? fabs(sqrt(ss) - sqrt(g[1])) / (1e-3 * sqrt(g[1]) + 1e-4 * grms * rootn) : 1e9;
            if (fmax(d1, d2) > worst) { worst = fmax(d1, d2); snprintf(worst_name, sizeof worst_name, "%s%s", prefixes[k], nm); }
            if (d1 > 1 || d2 > 1) { bad++; printf("  %s%s: proj %.6g want %.6g, |g|^2 %.6g want %.6g\n", prefixes[k], nm, proj, g ? g[0] : 0, ss, g ? g[1] : 0); }
            free(g);
            free(h);
        }
    snprintf(name, sizeof name, "%s gradients of all %d trainable parameters", tag, count);
    lt_report(bad == 0 && count > 0 && count == n_fix, name, "%d parameters off (worst %s at %.2f of the tolerance), %d here vs %d in PyTorch",
              bad, worst_name, worst, count, n_fix);
    if (bad == 0) printf("     (worst %s at %.3g of the tolerance)\n", worst_name, worst);
}
#endif /* LDM_NN_H */
#endif
