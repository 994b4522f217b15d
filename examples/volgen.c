/* volgen.c - writes the synthetic volume set of examples/volgen.h (ellipsoids in noise) for the
   3-D demo (configs/vol3d_*.yaml):

       build/ldm-volgen DIR N [SIZE=16] [SEED=1]     DIR/vol_000.nii.gz ... (DIR is created)

   Build alone: cc -std=c99 -O2 -I. -Ithird_party examples/volgen.c -o build/ldm-volgen -lm -lpthread */
#define LDM_IMPLEMENTATION
#include "image_io.h"
#include "ldm_data.h"
#include "volgen.h"

#include <errno.h>
#include <sys/stat.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s DIR N [SIZE=16] [SEED=1]\n", argv[0]);
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
