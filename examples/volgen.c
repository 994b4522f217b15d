/* volgen.c - writes the synthetic volume set of examples/volgen.h (ellipsoids in noise) for the
   3-D demo (configs/vol3d_*.yaml):

       build/ldm-volgen DIR N [SIZE=16] [SEED=1]     DIR/vol_000.nii.gz ... (DIR is created)
       build/ldm-volgen --stats DIR [SUFFIX] [A_MIN A_MAX]
            mean, std, foreground fraction (> 0) and an 8-bin histogram over [-1, 1] of every
            DIR/ *SUFFIX (default .nii.gz) volume, after the window A_MIN..A_MAX -> -1..1 when
            given (the configs' data norm; samples are written normalised already)

   Build alone: cc -std=c99 -O2 -I. -Ithird_party examples/volgen.c -o build/ldm-volgen -lm -lpthread */
#define LDM_IMPLEMENTATION
#include "image_io.h"
#include "ldm_data.h"
#include "volgen.h"

#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>

static int volgen_stats(int argc, char **argv) {
    const char *dir = argv[2], *suffix = argc > 3 ? argv[3] : ".nii.gz";
    int win = argc > 5;
    double a0 = win ? atof(argv[4]) : 0, a1 = win ? atof(argv[5]) : 1, sum = 0, sum2 = 0, fg = 0, hist[8] = {0};
    long n = 0, files = 0;
    ldm_ctx *ctx;
    ldm_settings s;
    memset(&s, 0, sizeof s);
    if (ldm_ctx_create(&ctx, &s)) return 1;
    DIR *d = opendir(dir);
    struct dirent *e;
    if (!d) { fprintf(stderr, "%s: cannot open %s\n", argv[0], dir); ldm_ctx_destroy(ctx); return 1; }
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name), ls = strlen(suffix);
        if (l <= ls || strcmp(e->d_name + l - ls, suffix)) continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        ldm_nifti v;
        if (ldm_nifti_read(ctx, p, &v)) { fprintf(stderr, "%s\n", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); continue; }
        for (size_t i = 0; i < v.nvox; i++) {
            double x = v.data[i];
            if (win) { x = (x - a0) / (a1 - a0) * 2.0 - 1.0; x = x < -1 ? -1 : x > 1 ? 1 : x; }
            sum += x; sum2 += x * x; fg += x > 0;
            int b = (int)floor((x + 1.0) * 4.0);
            hist[b < 0 ? 0 : b > 7 ? 7 : b] += 1;
        }
        n += (long)v.nvox;
        files++;
        ldm_nifti_free(&v);
    }
    closedir(d);
    ldm_ctx_destroy(ctx);
    if (!n) { fprintf(stderr, "%s: no *%s volumes in %s\n", argv[0], suffix, dir); return 1; }
    double m = sum / n;
    printf("%ld volumes: mean %.4f std %.4f foreground %.4f histogram", files, m, sqrt(sum2 / n - m * m), fg / n);
    for (int b = 0; b < 8; b++) printf(" %.3f", hist[b] / n);
    printf("\n");
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "--stats")) return volgen_stats(argc, argv);
    if (argc < 3) {
        fprintf(stderr, "usage: %s DIR N [SIZE=16] [SEED=1]  |  %s --stats DIR [SUFFIX] [A_MIN A_MAX]\n", argv[0], argv[0]);
        return 2;
    }
    int n = atoi(argv[2]), S = argc > 3 ? atoi(argv[3]) : 16;
    uint64_t seed = argc > 4 ? (uint64_t)strtoull(argv[4], NULL, 10) : 1;
    if (n < 1 || S < 4 || S > 512) {
        fprintf(stderr, "%s: N must be >= 1 and SIZE in 4..512\n", argv[0]);
        return 2;
    }
    if (mkdir(argv[1], 0777) && errno != EEXIST) {
        fprintf(stderr, "%s: cannot create %s\n", argv[0], argv[1]);
        return 1;
    }
    ldm_ctx *ctx;
    ldm_settings s;
    memset(&s, 0, sizeof s);
    if (ldm_ctx_create(&ctx, &s)) { fprintf(stderr, "out of memory\n"); return 1; }
    ldm_result r = ex_volgen_write(ctx, argv[1], n, S, seed);
    if (r) fprintf(stderr, "%s: %s\n", argv[0], ldm_ctx_error(ctx));
    else printf("%d volumes of %d^3 in %s\n", n, S, argv[1]);
    ldm_ctx_destroy(ctx);
    return r ? 1 : 0;
}
