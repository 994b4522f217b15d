/* flags_tu.c - one translation unit of test_flags: all of ldm_tensor.h, static, compiled with
   the flags under test (build.sh compiles it three times, -DFLAGS_TU=<name>), exporting one
   function that times ldm_sgemm. See tests/test_flags.c. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#define LDM_STATIC
#define LDM_IMPLEMENTATION
#include "../ldm_tensor.h"
#include <time.h>

#ifdef __cplusplus
extern "C"
#endif
    /* Best time in seconds of `reps` products C = A B ([M,K] x [K,N]) on one thread; writes
       "<kernel> <compiler>" into `kernel`. Returns a negative value on error. */
    double
    FLAGS_TU(int64_t M, int64_t N, int64_t K, const float *A, const float *B, float *C, int reps, char *kernel, size_t cap) {
    ldm_ctx *ctx;
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.threads = 1; /* one core: the other one may be busy */
    s.arena_bytes = (size_t)64 << 20;
    if (ldm_ctx_create(&ctx, &s)) return -1.0;
#if defined(__NVCC__)
    const char *cc = "nvcc";
#elif defined(__cplusplus)
    const char *cc = "c++";
#else
    const char *cc = "cc";
#endif
    snprintf(kernel, cap, "%s %s", ldm_cpu_kernel_name(ctx), cc);
    double best = -1.0;
    for (int r = 0; r < reps; r++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        ldm_sgemm(ctx, 0, 0, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double t = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        if (best < 0 || t < best) best = t;
    }
    if (ldm_ctx_status(ctx)) best = -1.0;
    ldm_ctx_destroy(ctx);
    return best;
}
