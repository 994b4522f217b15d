/* test_flags.c - the SGEMM keeps its speed under any compiler flags. ISO C mode (-std=c99)
   and -ffp-contract=off stop the compiler from fusing a*b + c, and nvcc's host pass compiles
   without -march flags; the kernels must not depend on either. build.sh links three copies of
   ldm_tensor.h into this program (tests/flags_tu.c, static), each built with other flags:
     gemm_default  cc -O2 -march=native               (GNU defaults: the reference)
     gemm_c99      build.sh's flags + -ffp-contract=off (cc -std=c99 -O2 -march=native ...)
     gemm_nvcc     nvcc -O2 -Xcompiler -ffp-contract=off (build.sh's CUDA flags: the host pass; where
                   nvcc is missing, c++ -O2 -ffp-contract=off, what nvcc hands its host compiler)
   The check is a ratio within this process (best of several interleaved runs, one thread),
   never an absolute time; and since every copy runs the same explicit-FMA kernel, their
   results must agree bit for bit. */
#define LDM_IMPLEMENTATION
#include "ldm_test.h"

#ifdef __cplusplus
extern "C" {
#endif
double gemm_default(int64_t M, int64_t N, int64_t K, const float *A, const float *B, float *C, int reps, char *kernel, size_t cap);
double gemm_c99(int64_t M, int64_t N, int64_t K, const float *A, const float *B, float *C, int reps, char *kernel, size_t cap);
double gemm_nvcc(int64_t M, int64_t N, int64_t K, const float *A, const float *B, float *C, int reps, char *kernel, size_t cap);
#ifdef __cplusplus
}
#endif

#define MAX_RATIO 1.5 /* a lost FMA or a lost vector ISA costs 2-6x; noise stays well under this */

int main(void) {
    const int64_t M = 128, N = 2048, K = 1152; /* a kl-f4 3x3 convolution's product, one image chunk */
    float *A = (float *)malloc(sizeof(float) * (size_t)(M * K)), *B = (float *)malloc(sizeof(float) * (size_t)(K * N));
    float *C[3];
    for (int i = 0; i < 3; i++) C[i] = (float *)malloc(sizeof(float) * (size_t)(M * N));
    uint32_t st = 7u;
    for (int64_t i = 0; i < M * K; i++) { st = st * 1664525u + 1013904223u; A[i] = (float)(st >> 8) / 16777216.0f - 0.5f; }
    for (int64_t i = 0; i < K * N; i++) { st = st * 1664525u + 1013904223u; B[i] = (float)(st >> 8) / 16777216.0f - 0.5f; }
    const char *names[3] = {"default flags", "-std=c99 -ffp-contract=off", "nvcc host flags"};
    char kern[3][48];
    double best[3] = {-1, -1, -1};
    for (int round = 0; round < 5; round++) /* interleaved, so a busy moment hits every copy */
        for (int i = 0; i < 3; i++) {
            double t = i == 0   ? gemm_default(M, N, K, A, B, C[i], 3, kern[i], sizeof kern[i])
                       : i == 1 ? gemm_c99(M, N, K, A, B, C[i], 3, kern[i], sizeof kern[i])
                                : gemm_nvcc(M, N, K, A, B, C[i], 3, kern[i], sizeof kern[i]);
            if (t > 0 && (best[i] < 0 || t < best[i])) best[i] = t;
        }
    double gf = 2.0 * (double)M * (double)N * (double)K * 1e-9;
    for (int i = 0; i < 3; i++) printf("   %-28s kernel, compiler: %-14s %7.2f ms %6.1f GFLOP/s\n", names[i], kern[i], best[i] * 1e3, gf / best[i]);
    LT_CHECK(best[0] > 0 && best[1] > 0 && best[2] > 0, "sgemm ran in all three builds");
    for (int i = 1; i < 3; i++) {
        char what[160];
        snprintf(what, sizeof what, "sgemm built with %s within %.1fx of the default flags' time", names[i], MAX_RATIO);
        lt_report(best[0] > 0 && best[i] > 0 && best[i] / best[0] <= MAX_RATIO, what, "%.2fx slower (kernel %s vs %s)",
                  best[i] / best[0], kern[i], kern[0]);
        snprintf(what, sizeof what, "sgemm built with %s gives bitwise the default flags' result", names[i]);
        lt_report(strncmp(kern[i], kern[0], strcspn(kern[0], " ") + 1) == 0 && memcmp(C[i], C[0], sizeof(float) * (size_t)(M * N)) == 0, what,
                  "kernels %s and %s, results differ", kern[i], kern[0]);
    }
    free(A); free(B);
    for (int i = 0; i < 3; i++) free(C[i]);
    return lt_finish("test_flags");
}
