/* driver_util.h - what the driver tests (test_driver.c, test_ldm_driver.c) share: a temporary
   directory T, running ./ldm with its output captured, small file checks, and stb_image_write
   (static) for the test images. Include after ldm_test.h. */
#ifndef LDM_TEST_DRIVER_UTIL_H
#define LDM_TEST_DRIVER_UTIL_H
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#endif
#ifndef STB_IMAGE_WRITE_IMPLEMENTATION /* a test that includes examples/image_io.h has it already */
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include "../third_party/stb_image_write.h"
#endif
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

static char T[512];     /* the temporary directory */
static char CFG[600];   /* the tiny config */

static char *slurp(const char *path, long *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = (char *)malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) { free(b); b = NULL; }
    fclose(f);
    if (b) b[n] = 0;
    if (len) *len = n;
    return b;
}
static int same_file(const char *a, const char *b) {
    long na, nb;
    char *x = slurp(a, &na), *y = slurp(b, &nb);
    int same = x && y && na == nb && !memcmp(x, y, (size_t)na);
    free(x); free(y);
    return same;
}
static int file_has(const char *path, const char *needle) {
    char *s = slurp(path, NULL);
    int r = s && strstr(s, needle) != NULL;
    free(s);
    return r;
}
static int exists(const char *p) { struct stat st; return stat(p, &st) == 0; }
static void writef(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f) { fputs(text, f); fclose(f); }
}

/* Runs "env ./ldm args" with stdout/stderr to T/<tag>.out/.err; returns the exit status, or
   128 + the signal that killed it. */
static int ldm_bin(const char *bin, const char *tag, const char *env, const char *args) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s %s > %s/%s.out 2> %s/%s.err", env ? env : "", bin, args, T, tag, T, tag);
    int st = system(cmd);
    if (st == -1) return -1;
    if (WIFEXITED(st)) {
        int rc = WEXITSTATUS(st);
        /* the shell reports a child killed by a signal as 128 + signal */
        return rc;
    }
    return 128 + WTERMSIG(st);
}
static int ldm(const char *tag, const char *env, const char *args) { return ldm_bin("./ldm", tag, env, args); }
static void out_path(char *buf, size_t n, const char *tag, const char *ext) { snprintf(buf, n, "%s/%s.%s", T, tag, ext); }
static int out_has(const char *tag, const char *ext, const char *needle) {
    char p[700];
    out_path(p, sizeof p, tag, ext);
    return file_has(p, needle);
}
static void show(const char *tag) {
    char p[700];
    out_path(p, sizeof p, tag, "err");
    char *s = slurp(p, NULL);
    if (s && *s) printf("  [%s stderr] %.2000s\n", tag, s);
    free(s);
}

/* The logdir <T>/logs/<timestamp>_<name>. */
static int logdir_of(const char *name, char *out, size_t n) {
    char root[600], suffix[128];
    snprintf(root, sizeof root, "%s/logs", T);
    snprintf(suffix, sizeof suffix, "_%s", name);
    DIR *d = opendir(root);
    if (!d) return 0;
    struct dirent *e;
    int found = 0;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name), s = strlen(suffix);
        if (l > s && !strcmp(e->d_name + l - s, suffix)) { snprintf(out, n, "%s/%s", root, e->d_name); found = 1; }
    }
    closedir(d);
    return found;
}

/* Smooth colour images with some structure (so an autoencoder has something to learn). */
static void make_images(const char *dir, int count, int size) {
    char p[1200];
    unsigned char *px = (unsigned char *)malloc((size_t)size * size * 3);
    for (int k = 0; k < count; k++) {
        for (int y = 0; y < size; y++)
            for (int x = 0; x < size; x++)
                for (int c = 0; c < 3; c++) {
                    double v = 0.5 + 0.35 * sin(0.11 * (k + 1) * x + 0.07 * (c + 1) * y + k) + 0.15 * cos(0.3 * (x - y) * (c + 1) / (k + 2.0));
                    px[((size_t)y * size + x) * 3 + c] = (unsigned char)(v < 0 ? 0 : v > 1 ? 255 : v * 255);
                }
        if (snprintf(p, sizeof p, "%s/img_%02d.png", dir, k) >= (int)sizeof p) break;
        stbi_write_png(p, size, size, 3, px, size * 3);
    }
    free(px);
}

#endif /* LDM_TEST_DRIVER_UTIL_H */
