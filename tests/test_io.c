/* test_io.c - weight-file I/O: safetensors read/write, PyTorch zip and legacy checkpoints,
   and a corpus of malformed and hostile files that must fail cleanly.
   Fixtures: tests/ref/io_ref.py. Also built with sanitizers: LDM_TEST_SANITIZE */
#define LDM_IMPLEMENTATION
#include "ldm_test.h"

#define FIX "../tests/fixtures/"

static ldm_ctx *ctx;

/* Compares every tensor of `path` with the expected values "<tag>:<name>" in io_expect. */
static void check_against_expect(ldm_weights *expect, const char *path, const char *tag, const char *format) {
    ldm_weights *w = NULL;
    char name[512];
    ldm_ctx_clear_error(ctx);
    int rc = ldm_weights_open(ctx, &w, path);
    snprintf(name, sizeof name, "%s opens", tag);
    lt_report(rc == LDM_OK, name, "%s", ldm_ctx_error(ctx));
    if (rc) return;
    snprintf(name, sizeof name, "%s format is %s", tag, format);
    lt_report(!strcmp(ldm_weights_format(w), format), name, "got %s", ldm_weights_format(w));
    int found = 0, total = 0;
    for (int i = 0; i < ldm_weights_count(expect); i++) {
        const ldm_weight_info *ei = ldm_weights_info(expect, i);
        size_t tl = strlen(tag);
        if (strncmp(ei->name, tag, tl) || ei->name[tl] != ':') continue;
        total++;
        const char *tn = ei->name + tl + 1;
        int j = ldm_weights_find(w, tn);
        snprintf(name, sizeof name, "%s '%s' present", tag, tn);
        lt_report(j >= 0, name, "missing");
        if (j < 0) continue;
        found++;
        const ldm_weight_info *wi = ldm_weights_info(w, j);
        int same = wi->ndim == ei->ndim && wi->numel == ei->numel;
        for (int d = 0; same && d < wi->ndim; d++) same = wi->shape[d] == ei->shape[d];
        snprintf(name, sizeof name, "%s '%s' shape", tag, tn);
        lt_report(same, name, "ndim %d numel %lld, want ndim %d numel %lld", wi->ndim, (long long)wi->numel, ei->ndim, (long long)ei->numel);
        long n = (long)ei->numel;
        float *want = (float *)malloc(sizeof(float) * (size_t)(n + 1)), *got = (float *)malloc(sizeof(float) * (size_t)(n + 1));
        if (ldm_weights_read(ctx, expect, i, want) || ldm_weights_read(ctx, w, j, got)) {
            snprintf(name, sizeof name, "%s '%s' read", tag, tn);
            lt_report(0, name, "%s", ldm_ctx_error(ctx));
            ldm_ctx_clear_error(ctx);
        } else {
            snprintf(name, sizeof name, "%s '%s' values", tag, tn);
            lt_close(name, got, want, n, 0, 0); /* conversions are exact */
        }
        free(want);
        free(got);
    }
    snprintf(name, sizeof name, "%s has exactly the expected tensors", tag);
    lt_report(found == total && total > 0 && ldm_weights_count(w) == total, name, "file has %d, expected %d, matched %d",
              ldm_weights_count(w), total, found);
    ldm_weights_close(w);
}

static void test_safetensors_fixture(ldm_weights *expect) {
    check_against_expect(expect, FIX "io_st.safetensors", "st", "safetensors");
    ldm_weights *w = NULL;
    if (ldm_weights_open(ctx, &w, FIX "io_st.safetensors")) return;
    const char *note = ldm_weights_metadata(w, "note");
    LT_CHECK(note && !strcmp(note, "caf\xc3\xa9 \"quoted\" \\ \n end"), "st metadata with escapes");
    LT_CHECK(ldm_weights_metadata(w, "format") && !strcmp(ldm_weights_metadata(w, "format"), "pt"), "st metadata format");
    LT_CHECK(ldm_weights_metadata(w, "absent") == NULL, "st metadata missing key is NULL");
    int h = ldm_weights_find(w, "h"), b = ldm_weights_find(w, "b"), n = ldm_weights_find(w, "n");
    LT_CHECK(h >= 0 && ldm_weights_info(w, h)->dtype == LDM_F16 && !strcmp(ldm_weights_info(w, h)->file_dtype, "F16"), "st F16 dtype");
    LT_CHECK(b >= 0 && ldm_weights_info(w, b)->dtype == LDM_BF16, "st BF16 dtype");
    LT_CHECK(n >= 0 && !strcmp(ldm_weights_info(w, n)->file_dtype, "I64"), "st I64 file dtype");
    LT_CHECK(ldm_weights_find(w, "nope") == -1 && ldm_weights_info(w, 999) == NULL, "st find/info out of range");
    float x;
    ldm_ctx_clear_error(ctx);
    LT_CHECK(ldm_weights_read(ctx, w, 999, &x) == LDM_ERR_INVALID, "st read index out of range");
    ldm_ctx_clear_error(ctx);
    ldm_weights_close(w);
}

/* the real LPIPS v0.1 VGG linear heads, a legacy (pre-1.6) torch.save file */
static void test_lpips(void) {
    ldm_weights *w = NULL;
    ldm_ctx_clear_error(ctx);
    int rc = ldm_weights_open(ctx, &w, FIX "lpips_v0.1_vgg_lin.pth");
    lt_report(rc == 0, "lpips legacy file opens", "%s", ldm_ctx_error(ctx));
    if (rc) return;
    static const int ch[5] = {64, 128, 256, 512, 512};
    int ok = ldm_weights_count(w) == 5 && !strcmp(ldm_weights_format(w), "torch-legacy");
    for (int k = 0; k < 5 && ok; k++) {
        char name[64];
        snprintf(name, sizeof name, "lin%d.model.1.weight", k);
        int i = ldm_weights_find(w, name);
        const ldm_weight_info *inf = ldm_weights_info(w, i);
        ok = inf && inf->ndim == 4 && inf->shape[0] == 1 && inf->shape[1] == ch[k] && inf->shape[2] == 1 && inf->shape[3] == 1;
    }
    LT_CHECK(ok, "lpips has lin0..lin4 [1,C,1,1]");
    float v[64];
    const float want[4] = {0.0501117f, 0.0393123f, 0.0464007f, 0.0690696f};
    if (ldm_weights_read(ctx, w, ldm_weights_find(w, "lin0.model.1.weight"), v) == 0) lt_close("lpips lin0 first values", v, want, 4, 5e-7, 0);
    else lt_report(0, "lpips lin0 read", "%s", ldm_ctx_error(ctx));
    ldm_weights_close(w);
}

/* write F32/F16/BF16 with ldm_safetensors_write and read back */
static void test_roundtrip(void) {
    enum { N = 1000 };
    static float a[N], b[6];
    for (int i = 0; i < N; i++) a[i] = (float)sin(i * 0.37) * (float)pow(10.0, (i % 11) - 6); /* stays finite in F16 */
    a[0] = 0.0f; a[1] = -0.0f; a[2] = 65504.0f; a[3] = 1e-7f; a[4] = 65519.0f;
    for (int i = 0; i < 6; i++) b[i] = (float)i - 2.5f;
    ldm_named_data t[3];
    memset(t, 0, sizeof t);
    t[0].name = "layer.weight"; t[0].data = a; t[0].ndim = 2; t[0].shape[0] = 40; t[0].shape[1] = 25;
    t[1].name = "we\"ird\\name\n\x01"; t[1].data = b; t[1].ndim = 3; t[1].shape[0] = 1; t[1].shape[1] = 2; t[1].shape[2] = 3;
    t[2].name = "scalar"; t[2].data = b + 5; t[2].ndim = 0;
    const char *mk[2] = {"format", "quote\"key"}, *mv[2] = {"pt", "line\nbreak \\ \x7f"};
    ldm_dtype dts[3] = {LDM_F32, LDM_F16, LDM_BF16};
    for (int k = 0; k < 3; k++) {
        char path[64], name[128];
        snprintf(path, sizeof path, "io_roundtrip_%s.safetensors", ldm_dtype_name(dts[k]));
        ldm_ctx_clear_error(ctx);
        int rc = ldm_safetensors_write(ctx, path, 3, t, dts[k], 2, mk, mv);
        snprintf(name, sizeof name, "write %s", ldm_dtype_name(dts[k]));
        lt_report(rc == 0, name, "%s", ldm_ctx_error(ctx));
        ldm_weights *w = NULL;
        rc = ldm_weights_open(ctx, &w, path);
        snprintf(name, sizeof name, "reopen %s", ldm_dtype_name(dts[k]));
        lt_report(rc == 0, name, "%s", ldm_ctx_error(ctx));
        if (rc) continue;
        LT_CHECK(ldm_weights_count(w) == 3 && !strcmp(ldm_weights_info(w, 0)->name, "layer.weight") &&
                 !strcmp(ldm_weights_info(w, 1)->name, t[1].name) && ldm_weights_info(w, 2)->ndim == 0,
                 "roundtrip names, order and ranks");
        LT_CHECK(ldm_weights_info(w, 0)->dtype == dts[k] && ldm_weights_info(w, 1)->shape[2] == 3, "roundtrip dtype and shape");
        LT_CHECK(ldm_weights_metadata(w, "quote\"key") && !strcmp(ldm_weights_metadata(w, "quote\"key"), mv[1]), "roundtrip metadata");
        static float got[N], want[N];
        for (int i = 0; i < N; i++)
            want[i] = dts[k] == LDM_F32 ? a[i] : dts[k] == LDM_F16 ? ldm_f16_to_f32(ldm_f32_to_f16(a[i])) : ldm_bf16_to_f32(ldm_f32_to_bf16(a[i]));
        snprintf(name, sizeof name, "roundtrip %s values (exactly the rounded inputs)", ldm_dtype_name(dts[k]));
        if (ldm_weights_read(ctx, w, 0, got) == 0) lt_close(name, got, want, N, 0, 0);
        else lt_report(0, name, "%s", ldm_ctx_error(ctx));
        float g2[6], s1;
        LT_CHECK(ldm_weights_read(ctx, w, 1, g2) == 0 && !memcmp(g2, b, sizeof b), "roundtrip small tensor (exact in all dtypes)");
        LT_CHECK(ldm_weights_read(ctx, w, 2, &s1) == 0 && s1 == 2.5f, "roundtrip scalar");
        ldm_weights_close(w);
        FILE *f = fopen(path, "rb");
        unsigned char h8[8];
        LT_CHECK(f && fread(h8, 1, 8, f) == 8 && h8[0] % 8 == 0, "header length is a multiple of 8");
        if (f) fclose(f);
    }
    /* duplicate names and bad arguments are rejected, and nothing is left behind */
    t[1].name = "layer.weight";
    ldm_ctx_clear_error(ctx);
    LT_CHECK(ldm_safetensors_write(ctx, "io_dup.safetensors", 2, t, LDM_F32, 0, NULL, NULL) == LDM_ERR_INVALID &&
             strstr(ldm_ctx_error(ctx), "twice") != NULL, "write rejects duplicate names");
    FILE *f = fopen("io_dup.safetensors", "rb");
    LT_CHECK(f == NULL, "no file after a rejected write");
    if (f) fclose(f);
    ldm_ctx_clear_error(ctx);
    LT_CHECK(ldm_safetensors_write(ctx, "/nonexistent-dir/x.safetensors", 1, t, LDM_F32, 0, NULL, NULL) == LDM_ERR_IO &&
             strstr(ldm_ctx_error(ctx), "/nonexistent-dir/x.safetensors") != NULL, "write to a missing directory is an I/O error naming the path");
    ldm_ctx_clear_error(ctx);
}

int main(void) {
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.threads = 1;
    if (ldm_ctx_create(&ctx, &s)) { printf("FAIL context\n"); return 1; }
    ldm_weights *expect = NULL;
    if (ldm_weights_open(ctx, &expect, FIX "io_expect.safetensors")) {
        lt_report(0, "open io_expect.safetensors", "%s", ldm_ctx_error(ctx));
        return lt_finish("test_io");
    }
    test_safetensors_fixture(expect);
    test_roundtrip();
    check_against_expect(expect, FIX "io_zip_sd.pt", "sd", "torch-zip");
    check_against_expect(expect, FIX "io_legacy_sd.pt", "sd", "torch-legacy");
    check_against_expect(expect, FIX "io_zip_lightning.ckpt", "lightning", "torch-zip");
    check_against_expect(expect, FIX "io_legacy_lightning.ckpt", "lightning", "torch-legacy");
    check_against_expect(expect, FIX "io_zip_views.pt", "views", "torch-zip");
    check_against_expect(expect, FIX "io_legacy_views.pt", "views", "torch-legacy");
    test_lpips();
    ldm_weights_close(expect);
    ldm_ctx_destroy(ctx);
    return lt_finish("test_io");
}
