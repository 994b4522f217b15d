/* fuzz_idx.c - libFuzzer harness: IDX files (raw or gzip'ed) through ldm_idx_read, and the
   same bytes through ldm_gunzip. Seeds: tests/fixtures/data_idx_*. */
#include "fuzz_common.h"

static int fuzz_idx_run(const uint8_t *data, size_t size, char *err, size_t errn) {
    ldm_ctx *ctx = fuzz_ctx();
    if (!ctx) return fuzz_reject(err, errn, "cannot create a context");
    unsigned char *raw = NULL;
    size_t n = 0;
    if (!ldm_gunzip(ctx, data, size, &raw, &n, "<fuzz>")) free(raw);
    else if (!ldm_ctx_error(ctx)[0]) return fuzz_reject(err, errn, "");
    ldm_ctx_clear_error(ctx);
    ldm_idx x;
    if (ldm_idx_read(ctx, fuzz_file("in.idx", data, size), &x)) return fuzz_reject(err, errn, ldm_ctx_error(ctx));
    uint64_t total = 1;
    for (int d = 0; d < x.ndim; d++) total *= (uint64_t)x.dims[d];
    if (x.ndim < 1 || x.ndim > 4 || total != x.size || (x.size && !x.data)) {
        fprintf(stderr, "accepted IDX with ndim %d, %llu elements, size %lu\n", x.ndim, (unsigned long long)total, (unsigned long)x.size);
        abort();
    }
    volatile unsigned sum = 0; /* touch every byte: ASan checks the size is real */
    for (size_t i = 0; i < x.size; i++) sum += x.data[i];
    ldm_idx_free(&x);
    return 0;
}
FUZZ_ENTRY(fuzz_idx_run)
