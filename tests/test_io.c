/* test_io.c - weight-file I/O: safetensors read/write, PyTorch zip and legacy checkpoints,
   and a corpus of malformed and hostile files that must fail cleanly.
   Fixtures: tests/ref/io_ref.py. Also built with sanitizers: LDM_TEST_SANITIZE */
#define LDM_IMPLEMENTATION
#include "ldm_test.h"
#include <sys/stat.h>
#include <unistd.h>

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

/* ldm_atomic_begin/commit/abort: the target is the old file or the whole new one, never a
   mix, and no temporary file is left behind */
static int atomic_read(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = 0;
    fclose(f);
    return (int)n;
}
static int atomic_tmp_left(const char *path) {
    char t[256];
    snprintf(t, sizeof t, "%s.tmp.%ld", path, (long)getpid());
    return access(t, F_OK) == 0;
}
static void test_atomic_write(void) {
    const char *path = "io_atomic.txt";
    char buf[64];
    ldm_atomic_file af;
    remove(path);
    int ok = ldm_atomic_begin(ctx, &af, path) == LDM_OK;
    if (ok) fprintf(af.f, "first");
    ok = ok && atomic_read(path, buf, sizeof buf) < 0; /* nothing at the target before commit */
    ok = ok && ldm_atomic_commit(ctx, &af) == LDM_OK;
    ok = ok && atomic_read(path, buf, sizeof buf) == 5 && !strcmp(buf, "first") && !atomic_tmp_left(path);
    LT_CHECK(ok, "atomic write: commit installs the file");
    ok = ldm_atomic_begin(ctx, &af, path) == LDM_OK;
    if (ok) fprintf(af.f, "second, longer");
    ok = ok && atomic_read(path, buf, sizeof buf) == 5; /* the old file while the new one is written */
    ldm_atomic_abort(&af);
    ok = ok && atomic_read(path, buf, sizeof buf) == 5 && !strcmp(buf, "first") && !atomic_tmp_left(path);
    LT_CHECK(ok, "atomic write: abort keeps the old file and removes the temporary");
    ok = ldm_atomic_begin(ctx, &af, path) == LDM_OK;
    if (ok) fprintf(af.f, "third");
    ok = ok && ldm_atomic_commit(ctx, &af) == LDM_OK && atomic_read(path, buf, sizeof buf) == 5 && !strcmp(buf, "third");
    LT_CHECK(ok, "atomic write: commit replaces an existing file");
    ldm_result r = ldm_atomic_begin(ctx, &af, "no_such_dir/x.txt");
    LT_CHECK(r == LDM_ERR_IO && af.f == NULL && af.tmp == NULL, "atomic write: a missing directory is LDM_ERR_IO");
    ldm_ctx_clear_error(ctx);
    remove(path);
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
    /* a failed rename (the target is a directory) is an error and leaves no temporary file */
    char tmp[64];
    mkdir("io_dir.safetensors", 0755);
    snprintf(tmp, sizeof tmp, "io_dir.safetensors.tmp.%ld", (long)getpid());
    ldm_ctx_clear_error(ctx);
    t[1].name = "other";
    LT_CHECK(ldm_safetensors_write(ctx, "io_dir.safetensors", 2, t, LDM_F32, 0, NULL, NULL) == LDM_ERR_IO &&
             strstr(ldm_ctx_error(ctx), "rename") != NULL, "write over a directory fails at rename");
    f = fopen(tmp, "rb");
    LT_CHECK(f == NULL, "the temporary file is removed after a failed rename");
    if (f) fclose(f);
    /* a rejected write leaves an existing file as it was */
    t[1].data = NULL;
    ldm_ctx_clear_error(ctx);
    LT_CHECK(ldm_safetensors_write(ctx, "io_roundtrip_F32.safetensors", 2, t, LDM_F16, 0, NULL, NULL) == LDM_ERR_INVALID, "write rejects NULL data");
    ldm_weights *w = NULL;
    LT_CHECK(ldm_weights_open(ctx, &w, "io_roundtrip_F32.safetensors") == 0 && ldm_weights_count(w) == 3 &&
             ldm_weights_info(w, 0)->dtype == LDM_F32, "the existing file is untouched by a rejected write");
    ldm_weights_close(w);
    ldm_ctx_clear_error(ctx);
    LT_CHECK(ldm_safetensors_write(ctx, "/nonexistent-dir/x.safetensors", 1, t, LDM_F32, 0, NULL, NULL) == LDM_ERR_IO &&
             strstr(ldm_ctx_error(ctx), "/nonexistent-dir/x.safetensors") != NULL, "write to a missing directory is an I/O error naming the path");
    ldm_ctx_clear_error(ctx);
}

/* ---- malformed and hostile files ---------------------------------------------------------- */
typedef struct buf { unsigned char *p; size_t n, cap; } buf;
static void put(buf *b, const void *s, size_t n) {
    if (b->n + n > b->cap) { b->cap = (b->n + n) * 2 + 64; b->p = (unsigned char *)realloc(b->p, b->cap); }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
static void put_le(buf *b, uint64_t v, int n) { for (int i = 0; i < n; i++) { unsigned char c = (unsigned char)(v >> (8 * i)); put(b, &c, 1); } }
static void put_s(buf *b, const char *s) { put(b, s, strlen(s)); }
static void write_file(const char *path, const void *p, size_t n) {
    remove(path); /* a fresh file: rewriting a truncated one makes ext4 flush it on close */
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n) { printf("FAIL cannot write %s\n", path); exit(1); }
    fclose(f);
}
static unsigned char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = (unsigned char *)malloc(*n + 1);
    if (fread(p, 1, *n, f) != *n) { free(p); p = NULL; }
    fclose(f);
    return p;
}

/* Opens path and reads every tensor; returns the first error code (0 if all worked). */
static int open_and_read(const char *path) {
    ldm_weights *w = NULL;
    int rc = ldm_weights_open(ctx, &w, path);
    for (int i = 0; !rc && i < ldm_weights_count(w); i++) {
        const ldm_weight_info *inf = ldm_weights_info(w, i);
        if (inf->numel > (1 << 22)) continue; /* a stride-0 view may be legitimately huge */
        float *d = (float *)malloc(sizeof(float) * (size_t)(inf->numel + 1));
        rc = ldm_weights_read(ctx, w, i, d);
        free(d);
    }
    ldm_weights_close(w);
    return rc;
}
/* The file must fail with `code`, and the message must name the file (and `needle`). */
static void expect_fail(const char *label, const void *data, size_t n, int code, const char *needle) {
    char path[128], name[160];
    snprintf(path, sizeof path, "io_bad_%s.bin", label);
    write_file(path, data, n);
    ldm_ctx_clear_error(ctx);
    int rc = open_and_read(path);
    const char *err = ldm_ctx_error(ctx);
    snprintf(name, sizeof name, "malformed %s", label);
    lt_report(rc == code && (code == 0 || strstr(err, path)) && (!needle || strstr(err, needle)), name, "rc %d (%s), want %d (%s) naming the file%s%s; message: %s",
              rc, ldm_result_name(rc), code, ldm_result_name(code), needle ? " and " : "", needle ? needle : "", err);
    ldm_ctx_clear_error(ctx);
}
/* a safetensors file from a header and `data` zero bytes */
static void st_case(const char *label, const char *header, size_t data, int code, const char *needle) {
    buf b = {0};
    put_le(&b, strlen(header), 8);
    put_s(&b, header);
    for (size_t i = 0; i < data; i++) put(&b, "", 1);
    expect_fail(label, b.p, b.n, code, needle);
    free(b.p);
}

static void test_malformed_safetensors(void) {
    const char *T = "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    st_case("st_valid_control", T, 8, 0, NULL); /* the builder itself makes valid files */
    expect_fail("st_tiny", "\x08\0\0\0\0", 5, LDM_ERR_FORMAT, "too short");
    buf b = {0};
    put_le(&b, 200, 8);
    put_s(&b, "{\"t\":{\"dtype\":\"F32\",");
    expect_fail("st_header_cut", b.p, b.n, LDM_ERR_FORMAT, "past the end");
    b.n = 0;
    put_le(&b, (uint64_t)1 << 40, 8);
    put_s(&b, T);
    expect_fail("st_huge_header", b.p, b.n, LDM_ERR_FORMAT, "100 MB");
    free(b.p);
    st_case("st_data_cut", T, 5, LDM_ERR_FORMAT, "past the end");
    st_case("json_unterminated", "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, LDM_ERR_FORMAT, "JSON");
    st_case("json_trailing_comma", "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],}}", 8, LDM_ERR_FORMAT, "JSON");
    st_case("json_control_char", "{\"t\x01\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, LDM_ERR_FORMAT, "control character");
    st_case("json_bad_escape", "{\"t\\q\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, LDM_ERR_FORMAT, "escape");
    st_case("json_bad_unicode", "{\"t\\u12g4\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, LDM_ERR_FORMAT, "escape");
    st_case("json_lone_surrogate", "{\"t\\ud800x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, LDM_ERR_FORMAT, "surrogate");
    st_case("json_nul_escape", "{\"t\\u0000\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, LDM_ERR_FORMAT, "u0000");
    st_case("json_single_quotes", "{'t':{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, LDM_ERR_FORMAT, "JSON");
    st_case("json_leading_zero", "{\"t\":{\"dtype\":\"F32\",\"shape\":[02],\"data_offsets\":[0,8]}}", 8, LDM_ERR_FORMAT, "JSON");
    st_case("json_bad_literal", "{\"t\":tru}", 0, LDM_ERR_FORMAT, "JSON");
    st_case("json_trailing_garbage", "{} x", 0, LDM_ERR_FORMAT, "trailing");
    st_case("json_not_object", "[1, 2]", 0, LDM_ERR_FORMAT, "not a JSON object");
    {
        char deep[256];
        memset(deep, '[', 100);
        memset(deep + 100, ']', 100);
        deep[0] = '{'; memcpy(deep + 1, "\"a\":", 4); deep[199] = '}'; deep[200] = 0;
        st_case("json_deep_nesting", deep, 0, LDM_ERR_FORMAT, "nested");
    }
    st_case("missing_dtype", "{\"t\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, LDM_ERR_FORMAT, "dtype");
    st_case("missing_shape", "{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, LDM_ERR_FORMAT, "shape");
    st_case("missing_offsets", "{\"t\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, LDM_ERR_FORMAT, "data_offsets");
    st_case("unknown_dtype", "{\"t\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, LDM_ERR_FORMAT, "unknown dtype");
    st_case("unsupported_dtype", "{\"t\":{\"dtype\":\"F8_E4M3\",\"shape\":[8],\"data_offsets\":[0,8]}}", 8, LDM_ERR_UNSUPPORTED, "F8_E4M3");
    st_case("size_mismatch", "{\"t\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, LDM_ERR_FORMAT, "'t'");
    st_case("offsets_past_end", "{\"t\":{\"dtype\":\"F32\",\"shape\":[100],\"data_offsets\":[0,400]}}", 8, LDM_ERR_FORMAT, "past the end");
    st_case("offsets_reversed", "{\"t\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 8, LDM_ERR_FORMAT, "data_offsets");
    st_case("overlap", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
            12, LDM_ERR_FORMAT, "overlap");
    st_case("duplicate_name", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
            8, LDM_ERR_FORMAT, "twice");
    st_case("negative_dim", "{\"t\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, LDM_ERR_FORMAT, "shape");
    st_case("overflowing_shape", "{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8, LDM_ERR_FORMAT, "shape");
    st_case("six_dims", "{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,2],\"data_offsets\":[0,8]}}", 8, LDM_ERR_UNSUPPORTED, "dims");
    st_case("metadata_not_string", "{\"__metadata__\":{\"k\":1}}", 0, LDM_ERR_FORMAT, "__metadata__");
    expect_fail("not_a_weight_file", "hello, this is text and not a weight file at all", 48, LDM_ERR_FORMAT, "not a weight file");
    ldm_weights *w = NULL;
    ldm_ctx_clear_error(ctx);
    LT_CHECK(ldm_weights_open(ctx, &w, "io_no_such_file.safetensors") == LDM_ERR_IO && w == NULL &&
             strstr(ldm_ctx_error(ctx), "io_no_such_file.safetensors"), "missing file is an I/O error naming it");
    ldm_ctx_clear_error(ctx);
}

/* A zip of stored entries (CRCs are not checked by the reader and left 0). zip64: every size
   and offset saturated in the 32-bit fields and given in ZIP64 extra fields and records, as
   torch writes them for files over 4 GB. */
static void make_zip(buf *z, int n, const char *const *names, const buf *data, int zip64) {
    buf cd = {0};
    uint32_t sat = zip64 ? 0xffffffffu : 0;
    z->n = 0;
    for (int i = 0; i < n; i++) {
        size_t off = z->n, nl = strlen(names[i]);
        put_s(z, "PK\3\4"); put_le(z, 45, 2); put_le(z, 0, 2); put_le(z, 0, 2); put_le(z, 0, 4); put_le(z, 0, 4);
        put_le(z, sat ? sat : data[i].n, 4); put_le(z, sat ? sat : data[i].n, 4); put_le(z, nl, 2); put_le(z, zip64 ? 20 : 3, 2);
        put_s(z, names[i]);
        if (zip64) { put_le(z, 1, 2); put_le(z, 16, 2); put_le(z, data[i].n, 8); put_le(z, data[i].n, 8); }
        else put(z, "\0\0\0", 3); /* a local extra field the central one lacks */
        put(z, data[i].p, data[i].n);
        put_s(&cd, "PK\1\2"); put_le(&cd, 45, 2); put_le(&cd, 45, 2); put_le(&cd, 0, 2); put_le(&cd, 0, 2); put_le(&cd, 0, 4);
        put_le(&cd, 0, 4); put_le(&cd, sat ? sat : data[i].n, 4); put_le(&cd, sat ? sat : data[i].n, 4); put_le(&cd, nl, 2);
        put_le(&cd, zip64 ? 9 + 28 : 0, 2); put_le(&cd, 0, 2); put_le(&cd, 0, 2); put_le(&cd, 0, 2); put_le(&cd, 0, 4);
        put_le(&cd, sat ? sat : off, 4); put_s(&cd, names[i]);
        if (zip64) { /* an unrelated extra field first, then ZIP64: usize, csize, local header offset */
            put_le(&cd, 0x5455, 2); put_le(&cd, 5, 2); put(&cd, "\1\0\0\0\0", 5);
            put_le(&cd, 1, 2); put_le(&cd, 24, 2); put_le(&cd, data[i].n, 8); put_le(&cd, data[i].n, 8); put_le(&cd, off, 8);
        }
    }
    size_t cd_off = z->n;
    put(z, cd.p, cd.n);
    if (zip64) {
        size_t rec = z->n;
        put_s(z, "PK\6\6"); put_le(z, 44, 8); put_le(z, 45, 2); put_le(z, 45, 2); put_le(z, 0, 4); put_le(z, 0, 4);
        put_le(z, (uint64_t)n, 8); put_le(z, (uint64_t)n, 8); put_le(z, cd.n, 8); put_le(z, cd_off, 8);
        put_s(z, "PK\6\7"); put_le(z, 0, 4); put_le(z, rec, 8); put_le(z, 1, 4);
    }
    put_s(z, "PK\5\6"); put_le(z, 0, 4); put_le(z, zip64 ? 0xffff : (uint64_t)n, 2); put_le(z, zip64 ? 0xffff : (uint64_t)n, 2);
    put_le(z, zip64 ? 0xffffffffu : cd.n, 4); put_le(z, zip64 ? 0xffffffffu : cd_off, 4); put_le(z, 0, 2);
    free(cd.p);
}
/* pickle pieces (protocol 2) */
static void pk_str(buf *b, const char *s) { put_s(b, "X"); put_le(b, strlen(s), 4); put_s(b, s); }
static void pk_int(buf *b, int v) { put_s(b, "J"); put_le(b, (uint32_t)v, 4); }
static void pk_global(buf *b, const char *mod, const char *name) { put_s(b, "c"); put_s(b, mod); put_s(b, "\n"); put_s(b, name); put_s(b, "\n"); }
/* {"w": _rebuild_tensor_v2(storage '0' of `numel` floats, offset, (size,), (stride,), False, None)} */
static void pk_tensor_dict(buf *b, int numel, int offset, int size, int stride) {
    put_s(b, "\x80\x02}(");
    pk_str(b, "w");
    pk_global(b, "torch._utils", "_rebuild_tensor_v2");
    put_s(b, "((");
    pk_str(b, "storage"); pk_global(b, "torch", "FloatStorage"); pk_str(b, "0"); pk_str(b, "cpu"); pk_int(b, numel);
    put_s(b, "tQ");
    pk_int(b, offset); pk_int(b, size); put_s(b, "\x85"); pk_int(b, stride); put_s(b, "\x85\x89Nt");
    put_s(b, "Ru.");
}
/* a zip checkpoint "a/data.pkl" + "a/data/0" (4 floats 1..4) */
static void zip_case(const char *label, const buf *pkl, int code, const char *needle) {
    const char *names[2] = {"a/data.pkl", "a/data/0"};
    buf d[2] = {*pkl, {0}}, z = {0};
    for (int i = 1; i <= 4; i++) { float f = (float)i; put(&d[1], &f, 4); }
    make_zip(&z, 2, names, d, 0);
    expect_fail(label, z.p, z.n, code, needle);
    free(d[1].p);
    free(z.p);
}

static void test_malformed_torch(void) {
    buf p = {0}, z = {0};
    pk_tensor_dict(&p, 4, 1, 3, 1);
    zip_case("zip_valid_control", &p, 0, NULL);
    {   /* and it reads the right values: elements 1..3 of the storage */
        ldm_weights *w = NULL;
        float v[3], want[3] = {2, 3, 4};
        if (ldm_weights_open(ctx, &w, "io_bad_zip_valid_control.bin") == 0 && ldm_weights_read(ctx, w, 0, v) == 0) lt_close("hand-made zip values", v, want, 3, 0, 0);
        else lt_report(0, "hand-made zip values", "%s", ldm_ctx_error(ctx));
        ldm_weights_close(w);
        ldm_ctx_clear_error(ctx);
    }
    {   /* the same as ZIP64 */
        const char *nm[2] = {"a/data.pkl", "a/data/0"};
        buf d[2] = {p, {0}};
        for (int i = 1; i <= 4; i++) { float f = (float)i; put(&d[1], &f, 4); }
        make_zip(&z, 2, nm, d, 1);
        write_file("io_zip64.bin", z.p, z.n);
        ldm_weights *w = NULL;
        float v[3], want[3] = {2, 3, 4};
        if (ldm_weights_open(ctx, &w, "io_zip64.bin") == 0 && ldm_weights_read(ctx, w, 0, v) == 0) lt_close("ZIP64 zip values", v, want, 3, 0, 0);
        else lt_report(0, "ZIP64 zip values", "%s", ldm_ctx_error(ctx));
        ldm_weights_close(w);
        ldm_ctx_clear_error(ctx);
        z.p[z.n - 22 - 20 - 56 + 2] = 'X'; /* damage the ZIP64 record */
        expect_fail("zip64_bad_record", z.p, z.n, LDM_ERR_FORMAT, "zip64");
        free(d[1].p);
    }
    p.n = 0; pk_tensor_dict(&p, 4, 1, 4, 1); zip_case("view_past_storage", &p, LDM_ERR_FORMAT, "runs past its storage");
    p.n = 0; pk_tensor_dict(&p, 4, 0, 2, 4); zip_case("strided_view_past_storage", &p, LDM_ERR_FORMAT, "runs past its storage");
    p.n = 0; pk_tensor_dict(&p, 8, 0, 8, 1); zip_case("storage_entry_too_small", &p, LDM_ERR_FORMAT, "less than");
    p.n = 0; pk_tensor_dict(&p, 4, 0, 2, -1); zip_case("negative_stride", &p, LDM_ERR_FORMAT, "stride");
    /* hostile pickles: never executed, rejected by name */
    p.n = 0; put(&p, "\x80\x02", 2); pk_global(&p, "os", "system"); pk_str(&p, "echo pwned"); put_s(&p, "\x85R.");
    zip_case("pickle_os_system", &p, LDM_ERR_UNSUPPORTED, "os.system");
    p.n = 0; put(&p, "\x80\x02", 2); pk_global(&p, "builtins", "eval"); pk_str(&p, "1+1"); put_s(&p, "\x85R.");
    zip_case("pickle_builtins_eval", &p, LDM_ERR_UNSUPPORTED, "builtins.eval");
    p.n = 0; put_s(&p, "\x80\x04\x8c\x02os\x8c\x06system\x93.");
    zip_case("pickle_stack_global", &p, LDM_ERR_UNSUPPORTED, "os.system");
    p.n = 0; put_s(&p, "\x80\x02(ios\nsystem\n.");
    zip_case("pickle_inst", &p, LDM_ERR_UNSUPPORTED, "opcode 0x69");
    p.n = 0; put(&p, "\x80\x02(o.", 5); zip_case("pickle_obj", &p, LDM_ERR_UNSUPPORTED, "opcode 0x6f");
    p.n = 0; put(&p, "\x80\x02\xff.", 4); zip_case("pickle_unknown_opcode", &p, LDM_ERR_UNSUPPORTED, "opcode 0xff");
    p.n = 0; put(&p, "\x80\x02h\x05.", 5); zip_case("pickle_memo_out_of_range", &p, LDM_ERR_FORMAT, "memo");
    p.n = 0; put(&p, "\x80\x02}s.", 5); zip_case("pickle_stack_underflow", &p, LDM_ERR_FORMAT, "underflow");
    p.n = 0; put(&p, "\x80\x02.", 3); zip_case("pickle_empty_stop", &p, LDM_ERR_FORMAT, "underflow");
    p.n = 0; put(&p, "\x80\x02t.", 4); zip_case("pickle_tuple_without_mark", &p, LDM_ERR_FORMAT, "MARK");
    p.n = 0; put(&p, "\x80\x02}", 3); zip_case("pickle_no_stop", &p, LDM_ERR_FORMAT, "without STOP");
    p.n = 0; put(&p, "\x80\x02X\xff\xff\x00\x00" "ab.", 10); zip_case("pickle_string_past_end", &p, LDM_ERR_FORMAT, "past the end");
    p.n = 0; put(&p, "\x80\x09}.", 4); zip_case("pickle_protocol_9", &p, LDM_ERR_UNSUPPORTED, "protocol");
    p.n = 0; put(&p, "\x80\x02", 2); for (int i = 0; i < 5000; i++) put_s(&p, "("); put_s(&p, ".");
    zip_case("pickle_deep_marks", &p, LDM_ERR_UNSUPPORTED, "MARK");
    p.n = 0; put(&p, "\x80\x02}q\x00", 5); pk_str(&p, "a"); put(&p, "h\0s.", 4); /* a dict that contains itself */
    zip_case("pickle_self_dict", &p, LDM_ERR_FORMAT, "nested");
    p.n = 0; put(&p, "\x80\x02K\x05.", 5); zip_case("pickle_not_a_dict", &p, LDM_ERR_UNSUPPORTED, "not a dict");
    p.n = 0; put_s(&p, "\x80\x02}("); pk_str(&p, "w"); put_s(&p, "(");
    pk_str(&p, "storage"); pk_global(&p, "torch", "FloatStorage"); pk_str(&p, "0"); pk_str(&p, "cpu"); put_s(&p, "tQu.");
    zip_case("pickle_bad_persistent_id", &p, LDM_ERR_FORMAT, "persistent id");

    /* broken archives, from the valid control */
    p.n = 0; pk_tensor_dict(&p, 4, 0, 4, 1);
    const char *names[3] = {"a/data.pkl", "a/data/0", "a/data/1"};
    buf d[2] = {p, {0}};
    for (int i = 1; i <= 4; i++) { float f = (float)i; put(&d[1], &f, 4); }
    make_zip(&z, 2, names, d, 0);
    unsigned char *q = (unsigned char *)malloc(z.n);
    size_t cd = 0, eocd = z.n - 22;
    for (size_t i = 0; i + 4 <= z.n; i++) if (!memcmp(z.p + i, "PK\1\2", 4)) { cd = i; break; }
    expect_fail("zip_truncated", z.p, z.n / 2, LDM_ERR_FORMAT, "end-of-directory");
    memcpy(q, z.p, z.n); q[cd + 1] = 'X';
    expect_fail("zip_bad_central_dir", q, z.n, LDM_ERR_FORMAT, "central directory");
    memcpy(q, z.p, z.n); q[eocd + 16] = 0xff; q[eocd + 17] = 0x7f;
    expect_fail("zip_cd_offset_past_end", q, z.n, LDM_ERR_FORMAT, "inconsistent");
    memcpy(q, z.p, z.n); q[cd + 10] = 8; q[8] = 8;
    expect_fail("zip_compressed_entry", q, z.n, LDM_ERR_UNSUPPORTED, "compressed");
    memcpy(q, z.p, z.n); q[cd + 46 + 9] = 'x';
    expect_fail("zip_missing_data_pkl", q, z.n, LDM_ERR_FORMAT, "data.pkl");
    memcpy(q, z.p, z.n); q[cd + 42] = 0xf0; q[cd + 43] = 0xff;
    expect_fail("zip_local_header_past_end", q, z.n, LDM_ERR_FORMAT, "data.pkl");
    free(q);
    names[1] = "a/data/7";
    make_zip(&z, 2, names, d, 0);
    expect_fail("zip_missing_storage", z.p, z.n, LDM_ERR_FORMAT, "missing");
    free(d[1].p);
    free(p.p);
    free(z.p);

    /* legacy storage views (torch < 1.0): ('storage', type, root, location, numel, (view, offset, size)) */
    for (int bad = 0; bad < 2; bad++) {
        static const unsigned char magic[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
        buf l = {0};
        put_s(&l, "\x80\x02\x8a\x0a"); put(&l, magic, 10); put_s(&l, ".");
        put_s(&l, "\x80\x02M\xe9\x03.");
        put_s(&l, "\x80\x02}("); pk_str(&l, "little_endian"); put_s(&l, "\x88u.");
        put_s(&l, "\x80\x02}(");
        for (int k = 0; k < 2; k++) { /* "v": elements 1..2 of the view root[2:5]; "w": all of root */
            pk_str(&l, k ? "w" : "v");
            pk_global(&l, "torch._utils", "_rebuild_tensor_v2");
            put_s(&l, "((");
            pk_str(&l, "storage"); pk_global(&l, "torch", "FloatStorage"); pk_str(&l, "root"); pk_str(&l, "cpu"); pk_int(&l, 6);
            if (k) put_s(&l, "N");
            else { put_s(&l, "("); pk_str(&l, "view"); pk_int(&l, bad ? 4 : 2); pk_int(&l, 3); put_s(&l, "t"); }
            put_s(&l, "tQ");
            pk_int(&l, k ? 0 : 1); pk_int(&l, k ? 6 : 2); put_s(&l, "\x85"); pk_int(&l, 1); put_s(&l, "\x85\x89NtR");
        }
        put_s(&l, "u.");
        put_s(&l, "\x80\x02](");
        pk_str(&l, "root");
        put_s(&l, "e.");
        put_le(&l, 6, 8);
        for (int i = 0; i < 6; i++) { float f = 10.0f + (float)i; put(&l, &f, 4); }
        if (bad) { expect_fail("legacy_view_past_root", l.p, l.n, LDM_ERR_FORMAT, "view"); free(l.p); break; }
        write_file("io_legacy_view.bin", l.p, l.n);
        free(l.p);
        ldm_weights *w = NULL;
        float v[2], ww[6], want_v[2] = {13, 14}, want_w[6] = {10, 11, 12, 13, 14, 15};
        ldm_ctx_clear_error(ctx);
        if (ldm_weights_open(ctx, &w, "io_legacy_view.bin") == 0 && ldm_weights_read(ctx, w, ldm_weights_find(w, "v"), v) == 0 &&
            ldm_weights_read(ctx, w, ldm_weights_find(w, "w"), ww) == 0) {
            lt_close("legacy storage view values", v, want_v, 2, 0, 0);
            lt_close("legacy root storage values", ww, want_w, 6, 0, 0);
        } else lt_report(0, "legacy storage views", "%s", ldm_ctx_error(ctx));
        ldm_weights_close(w);
        ldm_ctx_clear_error(ctx);
    }

    /* legacy: the real LPIPS file, cut or with a wrong storage size */
    size_t n;
    unsigned char *l = read_file(FIX "lpips_v0.1_vgg_lin.pth", &n);
    if (!l) { lt_report(0, "read lpips fixture", "missing"); return; }
    expect_fail("legacy_data_cut", l, n - 100, LDM_ERR_FORMAT, "past the end");
    expect_fail("legacy_pickle_cut", l, 700, LDM_ERR_FORMAT, "pickle");
    l[1361] ^= 1; /* the first storage's element count */
    expect_fail("legacy_wrong_count", l, n, LDM_ERR_FORMAT, "elements");
    free(l);
}

/* every prefix of each valid file, and random byte flips: errors are fine, crashes and hangs are not */
static void test_fuzz(void) {
    static const char *files[] = {FIX "io_st.safetensors", FIX "io_zip_views.pt", FIX "io_legacy_views.pt",
                                  FIX "io_zip_lightning.ckpt", FIX "io_legacy_sd.pt", FIX "lpips_v0.1_vgg_lin.pth",
                                  "io_zip64.bin", "io_legacy_view.bin", "io_roundtrip_BF16.safetensors"}; /* last three: made above */
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    long opened = 0, runs = 0;
    for (size_t f = 0; f < sizeof files / sizeof *files; f++) {
        size_t n;
        unsigned char *orig = read_file(files[f], &n), *q = (unsigned char *)malloc(n + 1);
        if (!orig) { lt_report(0, "fuzz input", "cannot read %s", files[f]); continue; }
        for (size_t len = 0; len < n; len += 1 + len / 1024) { /* every length up to 1 KB, then sparser */
            write_file("io_fuzz.bin", orig, len);
            opened += open_and_read("io_fuzz.bin") == 0;
            runs++;
            ldm_ctx_clear_error(ctx);
        }
        for (int it = 0; it < 1000; it++) {
            memcpy(q, orig, n);
            int flips = 1 + (int)((rng >> 60) & 3);
            for (int k = 0; k < flips; k++) {
                rng = rng * 6364136223846793005ull + 1442695040888963407ull;
                q[(rng >> 33) % n] ^= (unsigned char)(1u << ((rng >> 20) & 7));
            }
            write_file("io_fuzz.bin", q, n);
            opened += open_and_read("io_fuzz.bin") == 0;
            runs++;
            ldm_ctx_clear_error(ctx);
        }
        free(orig);
        free(q);
    }
    printf("fuzz: %ld files, %ld opened and read without error\n", runs, opened);
    lt_report(runs > 8000, "fuzz: truncations and bit flips never crash", "only %ld runs", runs);
}

int main(void) {
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.threads = 1;
    s.arena_bytes = (size_t)16 << 20; /* no ops here; a small arena keeps the sanitizer build fast */
    if (ldm_ctx_create(&ctx, &s)) { printf("FAIL context\n"); return 1; }
    ldm_weights *expect = NULL;
    if (ldm_weights_open(ctx, &expect, FIX "io_expect.safetensors")) {
        lt_report(0, "open io_expect.safetensors", "%s", ldm_ctx_error(ctx));
        return lt_finish("test_io");
    }
    test_safetensors_fixture(expect);
    test_roundtrip();
    test_atomic_write();
    check_against_expect(expect, FIX "io_zip_sd.pt", "sd", "torch-zip");
    check_against_expect(expect, FIX "io_legacy_sd.pt", "sd", "torch-legacy");
    check_against_expect(expect, FIX "io_zip_lightning.ckpt", "lightning", "torch-zip");
    check_against_expect(expect, FIX "io_legacy_lightning.ckpt", "lightning", "torch-legacy");
    check_against_expect(expect, FIX "io_zip_views.pt", "views", "torch-zip");
    check_against_expect(expect, FIX "io_legacy_views.pt", "views", "torch-legacy");
    test_lpips();
    test_malformed_safetensors();
    test_malformed_torch();
    test_fuzz();
    ldm_weights_close(expect);
    ldm_ctx_destroy(ctx);
    return lt_finish("test_io");
}
