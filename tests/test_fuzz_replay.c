/* test_fuzz_replay.c - replays the fuzzers' regression inputs (tests/fuzz/regress/<target>/:
   every crash, leak or timeout a fuzzer found, plus representative malformed inputs) through
   the harness bodies themselves (tests/fuzz/fuzz_*.c). Each must return, and a rejected input
   must come with an error message. Also built with sanitizers: LDM_TEST_SANITIZE */
#define FUZZ_REPLAY
#include "fuzz/fuzz_safetensors.c"
#include "fuzz/fuzz_torch.c"
#include "fuzz/fuzz_ini.c"
#include "fuzz/fuzz_yaml.c"
#include "fuzz/fuzz_image.c"
#include "fuzz/fuzz_idx.c"
#include "fuzz/fuzz_ckptdir.c"
#include "fuzz/fuzz_nifti.c"
#include "ldm_test.h"

#include <dirent.h>

typedef int (*fuzz_run_fn)(const uint8_t *data, size_t size, char *err, size_t errn);

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, len = 0, got;
    uint8_t *buf = (uint8_t *)malloc(cap);
    while (buf && (got = fread(buf + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) {
            uint8_t *b2 = (uint8_t *)realloc(buf, cap *= 2);
            if (!b2) { free(buf); buf = NULL; }
            buf = b2;
        }
    }
    fclose(f);
    *n = len;
    return buf;
}

static void replay(const char *target, fuzz_run_fn run) {
    char dir[256], path[768], name[900];
    snprintf(dir, sizeof dir, "../tests/fuzz/regress/%s", target);
    DIR *d = opendir(dir);
    int count = 0, rejected = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        size_t n = 0;
        uint8_t *data = slurp(path, &n);
        snprintf(name, sizeof name, "%s/%s", target, e->d_name);
        if (!data) { lt_report(0, name, "cannot read %s", path); continue; }
        char err[1024] = "";
        int rc = run(data, n, err, sizeof err);
        free(data);
        count++;
        rejected += rc != 0;
        /* the first line of the message is enough to show it is readable */
        char first[160];
        snprintf(first, sizeof first, "%.150s", err);
        first[strcspn(first, "\n")] = 0;
        lt_report(rc == 0 || err[0] != 0, name, "rejected without an error message");
        if (rc) printf("     rejected: %s\n", first);
    }
    if (d) closedir(d);
    snprintf(name, sizeof name, "%s: regression inputs present", target);
    lt_report(count > 0, name, "no files in %s", dir);
    printf("     %s: %d inputs, %d rejected\n", target, count, rejected);
}

int main(void) {
    replay("safetensors", fuzz_safetensors_run);
    replay("torch", fuzz_torch_run);
    replay("ini", fuzz_ini_run);
    replay("yaml", fuzz_yaml_run);
    replay("image", fuzz_image_run);
    replay("idx", fuzz_idx_run);
    replay("ckptdir", fuzz_ckptdir_run);
    replay("nifti", fuzz_nifti_run);
    if (fuzz_ckpt_opt) ldm_nn_optim_destroy(fuzz_ckpt_opt);
    if (fuzz_ckpt_P) ldm_nn_params_destroy(fuzz_ckpt_P);
    ldm_ctx_destroy(fuzz_ctx());
    char scratch[600];
    snprintf(scratch, sizeof scratch, "%s", fuzz_path(""));
    const char *const left[] = {"in.safetensors", "in.ckpt", "in.ini", "in.yaml", "dump.ini", "in.img", "in.idx",
                                "state.ini", "model.safetensors", "optimizer_0.safetensors"};
    for (size_t i = 0; i < sizeof left / sizeof left[0]; i++) remove(fuzz_path(left[i]));
    rmdir(scratch);
    return lt_finish("test_fuzz_replay");
}
