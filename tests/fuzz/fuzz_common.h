/* fuzz_common.h - what the libFuzzer harnesses (tests/fuzz/fuzz_*.c) share: the library with
   its implementation, a per-process scratch directory for loaders that take a path, and one
   context. Each harness defines `static int fuzz_<t>_run(data, size, err, errn)`: 0 when the
   input was accepted, else non-zero with the library's message in err. LLVMFuzzerTestOneInput
   wraps it unless FUZZ_REPLAY is defined (tests/test_fuzz_replay.c includes every harness). */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H
#define _XOPEN_SOURCE 700
#define LDM_IMPLEMENTATION
#include "../../ldm_tensor.h"
#include "../../ldm_config.h"
#include "../../ldm_data.h"
#include "../../ldm_nn.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Bigger tensors are listed but not read: a few bytes of header can describe gigabytes, and
   the index checks (not the copy loop) are what an input of that kind exercises. */
#define FUZZ_MAX_READ_NUMEL (1 << 22)

/* "<scratch>/<name>" in a directory of this process (tmpfs when there is one: every input is
   written there, so it must be cheap). */
static const char *fuzz_path(const char *name) {
    static char dir[256], path[512];
    if (!dir[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(dir, sizeof dir, "%s/ldm-fuzz-%ld", base, (long)getpid());
        mkdir(dir, 0700);
    }
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return path;
}

/* Writes data as the scratch file `name` (n == (size_t)-1: removes it); returns its path. */
static const char *fuzz_file(const char *name, const uint8_t *data, size_t n) {
    const char *p = fuzz_path(name);
    remove(p);
    if (n == (size_t)-1) return p;
    FILE *f = fopen(p, "wb");
    if (!f) return p;
    if (n) fwrite(data, 1, n, f);
    fclose(f);
    return p;
}

/* One context for the process, one thread (the loaders do not need the pool). */
static ldm_ctx *fuzz_ctx(void) {
    static ldm_ctx *ctx;
    if (!ctx) {
        ldm_settings s;
        memset(&s, 0, sizeof s);
        s.threads = 1;
        s.arena_bytes = (size_t)64 << 20;
        if (ldm_ctx_create(&ctx, &s)) return NULL;
    }
    ldm_ctx_clear_error(ctx);
    return ctx;
}

/* Copies a failure's message into err; returns 1 (rejected). */
static int fuzz_reject(char *err, size_t errn, const char *msg) {
    size_t n = msg ? strlen(msg) : 0;
    if (n >= errn) n = errn - 1; /* messages can be long (ldm_nn_load lists every name) */
    memcpy(err, msg ? msg : "", n);
    err[n] = 0;
    return 1;
}

/* Opens a weight file the way a user does (ldm_weights_open), lists it, looks names up and
   reads every tensor of a sane size. Shared by the safetensors and torch harnesses. */
static int fuzz_weights_body(const char *path, char *err, size_t errn) {
    ldm_ctx *ctx = fuzz_ctx();
    ldm_weights *w = NULL;
    if (!ctx) return fuzz_reject(err, errn, "cannot create a context");
    if (ldm_weights_open(ctx, &w, path)) return fuzz_reject(err, errn, ldm_ctx_error(ctx));
    int rc = 0, n = ldm_weights_count(w);
    (void)ldm_weights_format(w);
    (void)ldm_weights_metadata(w, "format");
    for (int i = 0; i < n && !rc; i++) {
        const ldm_weight_info *wi = ldm_weights_info(w, i);
        if (ldm_weights_find(w, wi->name) < 0) { rc = fuzz_reject(err, errn, "ldm_weights_find misses a listed name"); break; }
        if (wi->numel < 0 || wi->numel > FUZZ_MAX_READ_NUMEL) continue;
        float *dst = (float *)malloc(sizeof(float) * (size_t)(wi->numel ? wi->numel : 1));
        if (!dst) continue;
        if (ldm_weights_read(ctx, w, i, dst)) rc = fuzz_reject(err, errn, ldm_ctx_error(ctx));
        free(dst);
    }
    ldm_weights_close(w);
    return rc;
}

#ifdef FUZZ_REPLAY
#define FUZZ_ENTRY(run)
#else
#define FUZZ_ENTRY(run)                                                                          \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);                                \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {                               \
        char err[1024];                                                                          \
        err[0] = 0;                                                                              \
        /* a rejection without a message is a bug too: make it a crash the fuzzer keeps */     \
        if (run(data, size, err, sizeof err) && !err[0]) {                                       \
            fprintf(stderr, "rejected without an error message\n");                             \
            abort();                                                                             \
        }                                                                                        \
        return 0;                                                                                \
    }
#endif
#endif /* FUZZ_COMMON_H */
