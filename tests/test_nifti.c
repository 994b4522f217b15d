/* test_nifti.c - ldm_data.h's NIfTI-1 volumes and the volume dataset: files nibabel wrote (every
   datatype, big-endian, gzip'ed, nibabel's scl_slope/scl_inter, oblique orientations) read back
   exactly as nibabel reads them; round trips of every written datatype as .nii and .nii.gz
   with the orientation kept; scl_slope 0/NaN; every malformed-file case with its message; the
   voxel and pixel caps; trilinear resize and the dataset pipeline (window, z-score, resize,
   centre and random crops, cache, 5-D collate, config) against PyTorch. Fixtures:
   tests/ref/nifti_ref.py. LDM_NIFTI_XCHECK=<dir>: the round-trip files are written there and
   kept, for `tests/ref/nifti_ref.py --check <dir>` (nibabel) to read.
   Also built with LDM_TEST_SANITIZE (ASan/UBSan): a file parser. */
#define _XOPEN_SOURCE 700
#define LDM_IMPLEMENTATION
#include "../ldm_config.h"
#include "../ldm_data.h"
#include "ldm_test.h"

#include <dirent.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FIX "../tests/fixtures/"

static ldm_ctx *ctx;
static ldm_weights *ref;
static char tmp[256];
static const char *xdir; /* LDM_NIFTI_XCHECK */

static int has(const char *s, const char *sub) { return s && strstr(s, sub) != NULL; }
static void path_in(char *buf, size_t n, const char *rel) { snprintf(buf, n, "%s/%s", tmp, rel); }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
static void put32le(unsigned char *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static void putf(unsigned char *p, float f) { uint32_t u; memcpy(&u, &f, 4); put32le(p, u); }

/* The header fields nifti_ref.py's hdr_vector lists. */
static void hdr_vec(const ldm_nifti *v, float *o) {
    for (int i = 0; i < 8; i++) o[i] = v->pixdim[i];
    o[8] = (float)v->qform_code;
    o[9] = (float)v->sform_code;
    o[10] = v->quatern_b; o[11] = v->quatern_c; o[12] = v->quatern_d;
    o[13] = v->qoffset_x; o[14] = v->qoffset_y; o[15] = v->qoffset_z;
    for (int i = 0; i < 4; i++) { o[16 + i] = v->srow_x[i]; o[20 + i] = v->srow_y[i]; o[24 + i] = v->srow_z[i]; }
}

/* ---- files nibabel wrote (nifti_ext.nii has a header extension: vox_offset > 352) ------- */
static void test_fixtures(void) {
    static const char *files[] = {"nifti_u8.nii", "nifti_i16s.nii.gz", "nifti_f32be.nii", "nifti_f64.nii", "nifti_i8.nii",
                                  "nifti_u16.nii.gz", "nifti_i32.nii", "nifti_ct.nii.gz", "nifti_ext.nii"};
    static const int dts[] = {LDM_NII_UINT8, LDM_NII_INT16, LDM_NII_FLOAT32, LDM_NII_FLOAT64, LDM_NII_INT8,
                              LDM_NII_UINT16, LDM_NII_INT32, LDM_NII_INT16, LDM_NII_INT16};
    for (int f = 0; f < 9; f++) {
        char path[512], key[96], name[160];
        ldm_nifti v;
        snprintf(path, sizeof path, FIX "%s", files[f]);
        ldm_result r = ldm_nifti_read(ctx, path, &v);
        snprintf(name, sizeof name, "read %s (written by nibabel)", files[f]);
        if (r) { lt_report(0, name, "%s", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); continue; }
        char stem[64];
        snprintf(stem, sizeof stem, "%s", files[f]);
        stem[strcspn(stem, ".")] = 0;
        long n = 0, nd = 0, nh = 0;
        snprintf(key, sizeof key, "%s_data", stem);
        float *want = lt_load(ctx, ref, key, &n);
        snprintf(key, sizeof key, "%s_dim", stem);
        float *dim = lt_load(ctx, ref, key, &nd);
        snprintf(key, sizeof key, "%s_hdr", stem);
        float *hdr = lt_load(ctx, ref, key, &nh);
        int dims_ok = dim && nd == 8 && v.datatype == dts[f] && (long)v.nvox == n;
        for (int i = 0; dims_ok && i <= v.dim[0]; i++) dims_ok = v.dim[i] == (int)dim[i];
        snprintf(name, sizeof name, "%s: dim, datatype %d, %lu voxels", files[f], dts[f], (unsigned long)v.nvox);
        lt_report(dims_ok, name, "dims/datatype differ from nibabel's (datatype %d, nvox %lu vs %ld)", v.datatype, (unsigned long)v.nvox, n);
        if (want && dims_ok) {
            snprintf(name, sizeof name, "%s: voxels (scaled) = nibabel's, [C,T,H,W] = (t,k,j,i)", files[f]);
            lt_close(name, v.data, want, n, 0, 0);
        }
        if (hdr && nh == 28) {
            float got[28];
            hdr_vec(&v, got);
            snprintf(name, sizeof name, "%s: pixdim, qform/sform codes, quaternion, srow", files[f]);
            lt_close(name, got, hdr, 28, 0, 0);
        }
        free(want);
        free(dim);
        free(hdr);
        ldm_nifti_free(&v);
    }
    /* nibabel chose a real scaling for nifti_i16s: the header shows it */
    ldm_nifti v;
    if (ldm_nifti_read(ctx, FIX "nifti_i16s.nii.gz", &v) == LDM_OK) {
        LT_CHECK(v.scl_slope != 0.0f && v.scl_slope != 1.0f && v.scl_inter != 0.0f, "nifti_i16s: nibabel's scl_slope/scl_inter are kept in the header");
        ldm_nifti_free(&v);
    }
}

/* ---- round trips ------------------------------------------------------------------------ */
/* The formula of nifti_ref.py's check(): ((i*7 + j*13 + k*29 + t*31) % 200) - 100. */
static void fill(ldm_nifti *v, float add) {
    size_t q = 0;
    for (int t = 0; t < v->dim[4]; t++)
        for (int k = 0; k < v->dim[3]; k++)
            for (int j = 0; j < v->dim[2]; j++)
                for (int i = 0; i < v->dim[1]; i++) v->data[q++] = (float)((i * 7 + j * 13 + k * 29 + t * 31) % 200 - 100) + add;
}

static void test_roundtrip(void) {
    ldm_nifti src;
    if (ldm_nifti_read(ctx, FIX "nifti_u8.nii", &src)) { lt_report(0, "round trip: orientation source", "%s", ldm_ctx_error(ctx)); return; }
    struct { const char *name; int dt; float slope, inter, add; int nt; } c[] = {
        {"rt_f32_frac", LDM_NII_FLOAT32, 1, 0, 0.25f, 1}, {"rt_i16", LDM_NII_INT16, 1, 0, 0, 1},  {"rt_u8", LDM_NII_UINT8, 1, -100, 0, 1},
        {"rt_i16_scaled", LDM_NII_INT16, 0.5f, -3, 0, 1}, {"rt_i8", LDM_NII_INT8, 0, 0, 0, 1},    {"rt_u16", LDM_NII_UINT16, 1, -100, 0, 1},
        {"rt_i32", LDM_NII_INT32, 1, 0, 0, 1},            {"rt_f64_frac", LDM_NII_FLOAT64, 1, 0, 0.25f, 1}, {"rt_4d_f32", LDM_NII_FLOAT32, 1, 0, 0, 2},
    };
    for (size_t k = 0; k < sizeof c / sizeof c[0]; k++)
        for (int gz = 0; gz < 2; gz++) {
            char path[600], name[200];
            ldm_nifti v = src; /* the orientation, pixdim, units of nifti_u8.nii */
            v.dim[0] = c[k].nt > 1 ? 4 : 3;
            v.dim[1] = 7; v.dim[2] = 6; v.dim[3] = 5; v.dim[4] = c[k].nt;
            v.nvox = (size_t)7 * 6 * 5 * c[k].nt;
            v.scl_slope = c[k].slope;
            v.scl_inter = c[k].inter;
            snprintf(v.descrip, sizeof v.descrip, "ldm test %s", c[k].name);
            v.data = (float *)malloc(sizeof(float) * v.nvox);
            fill(&v, c[k].add);
            snprintf(path, sizeof path, "%s/%s.%s", xdir ? xdir : tmp, c[k].name, gz ? "nii.gz" : "nii");
            ldm_result r = ldm_nifti_write(ctx, path, &v, c[k].dt);
            ldm_nifti b;
            snprintf(name, sizeof name, "round trip %s.%s (datatype %d): voxels exact", c[k].name, gz ? "nii.gz" : "nii", c[k].dt);
            if (r || ldm_nifti_read(ctx, path, &b)) { lt_report(0, name, "%s", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); free(v.data); continue; }
            int same = b.nvox == v.nvox && b.datatype == c[k].dt;
            for (int i = 0; i < 8; i++) same = same && b.dim[i] == (i <= v.dim[0] ? v.dim[i] : 1);
            if (same) lt_close(name, b.data, v.data, (long)v.nvox, 0, 0);
            else lt_report(0, name, "dims or datatype changed (datatype %d)", b.datatype);
            float h0[28], h1[28];
            hdr_vec(&src, h0);
            hdr_vec(&b, h1);
            snprintf(name, sizeof name, "round trip %s.%s: orientation, pixdim, units, descrip kept", c[k].name, gz ? "nii.gz" : "nii");
            lt_report(!memcmp(h0, h1, sizeof h0) && b.xyzt_units == src.xyzt_units && !strcmp(b.descrip, v.descrip), name, "header fields differ");
            if (gz) {
                size_t n;
                unsigned char *raw = lt_read_file(path, &n);
                size_t plain = 352 + v.nvox * (size_t)(c[k].dt == LDM_NII_FLOAT64 ? 8 : c[k].dt == LDM_NII_UINT8 || c[k].dt == LDM_NII_INT8 ? 1 :
                                                       c[k].dt == LDM_NII_INT16 || c[k].dt == LDM_NII_UINT16 ? 2 : 4);
                snprintf(name, sizeof name, "%s.nii.gz is gzip, %lu bytes for %lu", c[k].name, (unsigned long)n, (unsigned long)plain);
                LT_CHECK(raw && n > 2 && raw[0] == 0x1f && raw[1] == 0x8b && n < plain, name);
                free(raw);
            }
            free(v.data);
            ldm_nifti_free(&b);
        }
    /* what an integer write refuses */
    ldm_nifti v = ldm_nifti_make(3, 1, 1);
    float vals[3] = {1, 40000, 2};
    char path[600];
    v.data = vals;
    v.nvox = 3;
    path_in(path, sizeof path, "overflow.nii");
    LT_CHECK(ldm_nifti_write(ctx, path, &v, LDM_NII_INT16) == LDM_ERR_INVALID && has(ldm_ctx_error(ctx), "voxel 1 = 40000 does not fit int16"),
             "write: a voxel out of int16's range is an error naming it");
    ldm_ctx_clear_error(ctx);
    vals[1] = NAN;
    LT_CHECK(ldm_nifti_write(ctx, path, &v, LDM_NII_UINT8) == LDM_ERR_INVALID && has(ldm_ctx_error(ctx), "voxel 1 = nan"), "write: NaN into uint8 is an error");
    ldm_ctx_clear_error(ctx);
    vals[1] = -1;
    LT_CHECK(ldm_nifti_write(ctx, path, &v, LDM_NII_UINT8) == LDM_ERR_INVALID, "write: -1 into uint8 is an error");
    ldm_ctx_clear_error(ctx);
    LT_CHECK(ldm_nifti_write(ctx, path, &v, 32) == LDM_ERR_UNSUPPORTED && has(ldm_ctx_error(ctx), "complex64"), "write: datatype complex64 is unsupported");
    ldm_ctx_clear_error(ctx);
    v.nvox = 2;
    LT_CHECK(ldm_nifti_write(ctx, path, &v, 0) == LDM_ERR_INVALID && has(ldm_ctx_error(ctx), "dims make 3"), "write: nvox that disagrees with dim is an error");
    ldm_ctx_clear_error(ctx);
    LT_CHECK(ldm_nifti_write(ctx, "/nonexistent-dir/x.nii", &src, 0) == LDM_ERR_IO && has(ldm_ctx_error(ctx), "cannot create"), "write: unwritable path");
    ldm_ctx_clear_error(ctx);
    ldm_nifti_free(&src);
}

/* ---- the writer's deflate compressor ----------------------------------------------------- */
/* Volumes the compressor must get right: background runs longer than 258 bytes, noise (no
   matches), a pattern repeating just beyond the 32 KiB window, matches at distance 1..32768;
   and pure noise, where it must fall back to stored blocks. Read back by stb_image's inflater
   (and by nibabel with LDM_NIFTI_XCHECK: mixed_*.nii.gz next to mixed_*.f32 dumps). */
static uint32_t hash32(uint32_t x) {
    x ^= x >> 16; x *= 0x7feb352dU; x ^= x >> 15; x *= 0x846ca68bU; x ^= x >> 16;
    return x;
}
static void test_deflate(void) {
    const int nx = 64, ny = 64, nz = 40;
    size_t nv = (size_t)nx * ny * nz;
    for (int kind = 0; kind < 2; kind++) {
        ldm_nifti v = ldm_nifti_make(nx, ny, nz);
        v.data = (float *)malloc(sizeof(float) * nv);
        v.nvox = nv;
        for (size_t i = 0; i < nv; i++) {
            float x = 0.0f;                                                    /* background */
            if (kind == 1) { /* random bits (exponent 255, NaN and Inf, left out) */
                uint32_t u = hash32((uint32_t)i);
                if (((u >> 23) & 0xff) == 0xff) u &= ~(1u << 23);
                memcpy(&x, &u, 4);
            } else if (i >= 20000 && i < 30000) x = (float)(hash32((uint32_t)i) % 100000) * 0.01f - 500.0f; /* noise */
            else if (i >= 40000 && i < 90000) x = (float)((i % 8193) * 3);   /* period 32772 bytes: just outside the window */
            else if (i >= 100000 && i < 110000) x = (float)(i % 7);          /* short period */
            else if (i >= 120000 && i < 125000) x = (float)(hash32((uint32_t)(i - 8192)) % 1000); /* noise, then the same noise 8192 voxels (32 KiB) on */
            else if (i >= 128192 && i < 133192) x = (float)(hash32((uint32_t)(i - 16384)) % 1000);
            else if (i >= 140000 && i < 150000) x = 1.0f;                    /* a constant other than 0 */
            v.data[i] = x;
        }
        char path[600], raw[600], name[200];
        snprintf(path, sizeof path, "%s/mixed_%s.nii.gz", xdir ? xdir : tmp, kind ? "noise" : "volume");
        snprintf(raw, sizeof raw, "%s/mixed_%s.f32", xdir ? xdir : tmp, kind ? "noise" : "volume");
        lt_write_file(raw, v.data, sizeof(float) * nv);
        ldm_nifti b;
        snprintf(name, sizeof name, "deflate: %s volume 64x64x40 float32 .nii.gz reads back exactly", kind ? "a pure noise" : "a mixed");
        if (ldm_nifti_write(ctx, path, &v, LDM_NII_FLOAT32) || ldm_nifti_read(ctx, path, &b)) {
            lt_report(0, name, "%s", ldm_ctx_error(ctx));
            ldm_ctx_clear_error(ctx);
        } else {
            lt_close(name, b.data, v.data, (long)nv, 0, 0);
            ldm_nifti_free(&b);
        }
        size_t n;
        unsigned char *f = lt_read_file(path, &n);
        size_t plain = 352 + 4 * nv;
        snprintf(name, sizeof name, "deflate: %s: %lu bytes for %lu (%.1f%%)", kind ? "noise is stored (about the raw size)" : "the mixed volume shrinks below half",
                 (unsigned long)n, (unsigned long)plain, 100.0 * n / plain);
        if (kind == 0) LT_CHECK(f && n < plain / 2, name);
        else LT_CHECK(f && n > plain && n < plain + plain / 1000 + 64, name);
        free(f);
        free(v.data);
    }
}

/* ---- scaling rules, caps, malformed files ----------------------------------------------- */
/* A plain little-endian float32 3x2x2 volume of 0..11 as bytes (352 + 48). */
static unsigned char *small_nii(size_t *n) {
    char path[600];
    float vals[12];
    for (int i = 0; i < 12; i++) vals[i] = (float)i;
    ldm_nifti v = ldm_nifti_make(3, 2, 2);
    v.data = vals;
    v.nvox = 12;
    path_in(path, sizeof path, "small.nii");
    if (ldm_nifti_write(ctx, path, &v, LDM_NII_INT16)) return NULL;
    return lt_read_file(path, n);
}

/* Writes bytes as name and reads it; returns the code (message left in ctx). */
static ldm_result read_bytes(const char *fname, const unsigned char *b, size_t n, ldm_nifti *out) {
    char path[600];
    path_in(path, sizeof path, fname);
    lt_write_file(path, b, n);
    ldm_nifti tmpv;
    ldm_result r = ldm_nifti_read(ctx, path, out ? out : &tmpv);
    if (!r && !out) ldm_nifti_free(&tmpv);
    return r;
}

/* A gzip member of raw bytes in stored blocks (as the library writes it), by hand. */
static unsigned char *gz_stored(const unsigned char *raw, size_t n, size_t *out_n) {
    unsigned char *o = (unsigned char *)malloc(10 + 5 + n + 8);
    static const unsigned char h[10] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255};
    memcpy(o, h, 10);
    o[10] = 1;
    o[11] = (unsigned char)(n & 255); o[12] = (unsigned char)(n >> 8);
    o[13] = (unsigned char)(~n & 255); o[14] = (unsigned char)((~n >> 8) & 255);
    memcpy(o + 15, raw, n);
    put32le(o + 15 + n, ldm_crc32(0, raw, n));
    put32le(o + 19 + n, (uint32_t)n);
    *out_n = 10 + 5 + n + 8;
    return o;
}

/* The code, the message's substring and the file named (every file here is under tmp). */
static void expect(ldm_result r, ldm_result code, const char *sub, const char *name) {
    const char *m = ldm_ctx_error(ctx), *at = strstr(m, tmp);
    int ok = r == code && has(m, sub) && (at || has(m, "/nonexistent/"));
    lt_report(ok, name, "got code %d (want %d), message: %s", (int)r, (int)code, m);
    if (ok) printf("     %s\n", at ? at + strlen(tmp) + 1 : m);
    ldm_ctx_clear_error(ctx);
}

static void test_malformed(void) {
    size_t n;
    unsigned char *good = small_nii(&n);
    if (!good || n != 352 + 24) { lt_report(0, "small volume", "%s", ldm_ctx_error(ctx)); free(good); return; }
    unsigned char *b = (unsigned char *)malloc(n + 64);
    ldm_nifti v;
    /* scl_slope 0 or NaN: unscaled, whatever scl_inter says */
    memcpy(b, good, n);
    putf(b + 112, 0.0f);
    putf(b + 116, 5.0f);
    if (read_bytes("slope0.nii", b, n, &v) == LDM_OK) {
        LT_CHECK(v.data[0] == 0.0f && v.data[11] == 11.0f, "scl_slope 0: the stored values unscaled (scl_inter ignored)");
        ldm_nifti_free(&v);
    } else lt_report(0, "scl_slope 0", "%s", ldm_ctx_error(ctx));
    putf(b + 112, NAN);
    if (read_bytes("slopenan.nii", b, n, &v) == LDM_OK) {
        LT_CHECK(v.data[3] == 3.0f, "scl_slope NaN: unscaled");
        ldm_nifti_free(&v);
    } else lt_report(0, "scl_slope NaN", "%s", ldm_ctx_error(ctx));
    putf(b + 112, -2.0f);
    putf(b + 116, 0.5f);
    if (read_bytes("slope-2.nii", b, n, &v) == LDM_OK) {
        LT_CHECK(v.data[3] == -5.5f, "scl_slope -2, scl_inter 0.5: 3 -> -5.5");
        ldm_nifti_free(&v);
    } else lt_report(0, "scl_slope -2", "%s", ldm_ctx_error(ctx));
    /* big-endian version of the same header by hand: every field swapped */
    {
        memcpy(b, good, n);
        static const int f32[] = {0, 56, 60, 64, 76, 80, 84, 88, 92, 96, 100, 104, 108, 112, 116, 124, 128, 132, 136, 140, 144,
                                  256, 260, 264, 268, 272, 276, 280, 284, 288, 292, 296, 300, 304, 308, 312, 316, 320, 324, 32};
        static const int f16[] = {36, 40, 42, 44, 46, 48, 50, 52, 54, 68, 70, 72, 74, 120, 252, 254};
        for (size_t i = 0; i < sizeof f32 / sizeof f32[0]; i++) {
            unsigned char *p = b + f32[i], t0 = p[0], t1 = p[1];
            p[0] = p[3]; p[1] = p[2]; p[2] = t1; p[3] = t0;
        }
        for (size_t i = 0; i < sizeof f16 / sizeof f16[0]; i++) { unsigned char t = b[f16[i]]; b[f16[i]] = b[f16[i] + 1]; b[f16[i] + 1] = t; }
        for (size_t i = 352; i < n; i += 2) { unsigned char t = b[i]; b[i] = b[i + 1]; b[i + 1] = t; }
        if (read_bytes("be.nii", b, n, &v) == LDM_OK) {
            LT_CHECK(v.dim[0] == 3 && v.dim[1] == 3 && v.dim[2] == 2 && v.dim[3] == 2 && v.data[7] == 7.0f && v.sform_code == 1 && v.srow_x[0] == 1.0f,
                     "big-endian header and int16 data (byte-swapped by hand) read the same");
            ldm_nifti_free(&v);
        } else lt_report(0, "big-endian by hand", "%s", ldm_ctx_error(ctx));
    }
    expect(read_bytes("short.nii", good, 100, NULL), LDM_ERR_FORMAT, "100 bytes is too short for a NIfTI-1 header", "short header");
    expect(read_bytes("empty.nii", good, 0, NULL), LDM_ERR_FORMAT, "too short", "empty file");
    memcpy(b, good, n);
    memcpy(b + 344, "n+2", 4);
    expect(read_bytes("magic.nii", b, n, NULL), LDM_ERR_FORMAT, "bad NIfTI-1 magic 6e 2b 32 00", "bad magic");
    memcpy(b + 344, "ni1", 4);
    expect(read_bytes("pair.hdr", b, n, NULL), LDM_ERR_UNSUPPORTED, ".hdr/.img pair", "\"ni1\" header/image pair: a clear unsupported message");
    memcpy(b, good, n);
    put32le(b, 540);
    expect(read_bytes("v2.nii", b, n, NULL), LDM_ERR_UNSUPPORTED, "NIfTI-2", "NIfTI-2 (sizeof_hdr 540)");
    put32le(b, 1234);
    expect(read_bytes("sizeof.nii", b, n, NULL), LDM_ERR_FORMAT, "sizeof_hdr is 1234", "sizeof_hdr neither 348 nor swapped 348");
    memcpy(b, good, n);
    b[40] = 0;
    expect(read_bytes("dim0.nii", b, n, NULL), LDM_ERR_FORMAT, "dim[0] = 0", "dim[0] = 0");
    b[40] = 8;
    expect(read_bytes("dim8.nii", b, n, NULL), LDM_ERR_FORMAT, "dim[0] = 8", "dim[0] = 8");
    memcpy(b, good, n);
    b[44] = 0xff; b[45] = 0xff;
    expect(read_bytes("dimneg.nii", b, n, NULL), LDM_ERR_FORMAT, "dim[2] = -1 must be >= 1", "negative dim[2]");
    memcpy(b, good, n);
    b[70] = 32;
    expect(read_bytes("complex.nii", b, n, NULL), LDM_ERR_UNSUPPORTED, "datatype 32 (complex64) is not supported", "datatype complex64");
    b[70] = 128;
    expect(read_bytes("rgb.nii", b, n, NULL), LDM_ERR_UNSUPPORTED, "datatype 128 (RGB24)", "datatype RGB24");
    b[70] = 0; b[71] = 4;
    expect(read_bytes("int64.nii", b, n, NULL), LDM_ERR_UNSUPPORTED, "datatype 1024 (int64)", "datatype int64");
    b[70] = 3; b[71] = 0;
    expect(read_bytes("dt3.nii", b, n, NULL), LDM_ERR_UNSUPPORTED, "not a NIfTI-1 datatype", "datatype 3 (no such type)");
    memcpy(b, good, n);
    putf(b + 108, 100.0f);
    expect(read_bytes("voxoff.nii", b, n, NULL), LDM_ERR_FORMAT, "vox_offset 100", "vox_offset inside the header");
    putf(b + 108, 352.5f);
    expect(read_bytes("voxoff2.nii", b, n, NULL), LDM_ERR_FORMAT, "vox_offset 352.5", "fractional vox_offset");
    putf(b + 108, 1e30f);
    expect(read_bytes("voxoff3.nii", b, n, NULL), LDM_ERR_FORMAT, "not a whole number", "vox_offset 1e30");
    expect(read_bytes("trunc.nii", good, n - 3, NULL), LDM_ERR_FORMAT, "data shorter than declared: 3 x 2 x 2 int16 voxels from offset 352 need 376 bytes, the file has 373",
           "data shorter than declared");
    /* a tiny file declaring a huge volume: refused from the header, at once */
    memcpy(b, good, n);
    for (int i = 1; i <= 3; i++) { b[40 + 2 * i] = 0xff; b[41 + 2 * i] = 0x7f; }
    double t0 = now();
    expect(read_bytes("huge.nii", b, n, NULL), LDM_ERR_UNSUPPORTED, "declares 32767 x 32767 x 32767 voxels, over the cap of 268435456", "huge declared volume");
    size_t gn;
    unsigned char *gz = gz_stored(b, n, &gn);
    expect(read_bytes("huge.nii.gz", gz, gn, NULL), LDM_ERR_UNSUPPORTED, "over the cap", "huge declared volume inside gzip: refused before inflating");
    double dt = now() - t0;
    lt_report(dt < 0.5, "huge declared volumes are refused quickly", "took %.3f s", dt);
    free(gz);
    /* the cap: a setter and the dataset option */
    ldm_data_set_max_voxels(11);
    expect(read_bytes("cap.nii", good, n, NULL), LDM_ERR_UNSUPPORTED, "declares 3 x 2 x 2 voxels, over the cap of 11", "ldm_data_set_max_voxels(11) refuses 12 voxels");
    ldm_data_set_max_voxels(12);
    LT_CHECK(read_bytes("cap.nii", good, n, NULL) == LDM_OK && ldm_data_max_voxels() == 12, "cap 12 reads 12 voxels");
    ldm_data_set_max_voxels(0);
    LT_CHECK(ldm_data_max_voxels() == ((int64_t)1 << 28) || getenv("LDM_MAX_VOXELS"), "ldm_data_set_max_voxels(0) restores the default");
    /* gzip damage */
    gz = gz_stored(good, n, &gn);
    LT_CHECK(read_bytes("ok.nii.gz", gz, gn, NULL) == LDM_OK, "a stored-block .nii.gz reads");
    gz[gn - 8] ^= 1;
    expect(read_bytes("crc.nii.gz", gz, gn, NULL), LDM_ERR_FORMAT, "CRC-32 mismatch", "gzip CRC-32 damaged");
    gz[gn - 8] ^= 1;
    put32le(gz + gn - 4, 300);
    expect(read_bytes("isize.nii.gz", gz, gn, NULL), LDM_ERR_FORMAT, "more than the 300 bytes its trailer declares", "gzip ISIZE smaller than the data");
    put32le(gz + gn - 4, 200000);
    expect(read_bytes("isize2.nii.gz", gz, gn, NULL), LDM_ERR_FORMAT, "200000", "gzip ISIZE larger than the data");
    put32le(gz + gn - 4, (uint32_t)n);
    expect(read_bytes("gztrunc.nii.gz", gz, gn / 2, NULL), LDM_ERR_FORMAT, "", "truncated gzip");
    expect(read_bytes("gzhdr.nii.gz", gz, 12, NULL), LDM_ERR_FORMAT, "not a gzip file (12 bytes", "gzip shorter than its header");
    free(gz);
    /* deflate-compressed data (nibabel's file) damaged in the middle */
    unsigned char *nib = lt_read_file(FIX "nifti_ct.nii.gz", &gn);
    if (nib) {
        for (size_t i = gn / 2; i < gn / 2 + 16; i++) nib[i] ^= 0x5a;
        expect(read_bytes("corrupt.nii.gz", nib, gn, NULL), LDM_ERR_FORMAT, "", "nibabel's .nii.gz with damaged deflate data");
        free(nib);
    }
    gz = gz_stored(good, n - 3, &gn);
    expect(read_bytes("gzshort.nii.gz", gz, gn, NULL), LDM_ERR_FORMAT, "data shorter than declared", "a .nii.gz whose data is shorter than declared");
    free(gz);
    ldm_nifti tv;
    expect(ldm_nifti_read(ctx, "/nonexistent/x.nii", &tv), LDM_ERR_IO, "cannot open '/nonexistent/x.nii'", "missing file");
    free(good);
    free(b);
}

static char warnings[4096];
static void warn_fn(void *user, const char *msg) {
    (void)user;
    size_t k = strlen(warnings);
    snprintf(warnings + k, sizeof warnings - k, "%s\n", msg);
}

/* 2-D images: a PNG header declaring 16000 x 16000 (which stb_image would allocate and try
   to fill) is refused from the header */
static void test_pixel_cap(void) {
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    unsigned char png[8 + 25 + 12];
    memcpy(png, sig, 8);
    unsigned char *c = png + 8;
    c[0] = 0; c[1] = 0; c[2] = 0; c[3] = 13;
    memcpy(c + 4, "IHDR", 4);
    unsigned w = 16000, h = 16000;
    c[8] = (unsigned char)(w >> 24); c[9] = (unsigned char)(w >> 16); c[10] = (unsigned char)(w >> 8); c[11] = (unsigned char)w;
    c[12] = (unsigned char)(h >> 24); c[13] = (unsigned char)(h >> 16); c[14] = (unsigned char)(h >> 8); c[15] = (unsigned char)h;
    c[16] = 8; c[17] = 2; c[18] = 0; c[19] = 0; c[20] = 0;
    uint32_t crc = ldm_crc32(0, c + 4, 17);
    c[21] = (unsigned char)(crc >> 24); c[22] = (unsigned char)(crc >> 16); c[23] = (unsigned char)(crc >> 8); c[24] = (unsigned char)crc;
    memset(c + 25, 0, 12); /* a bogus chunk: the body never gets read */
    char path[600], err[1024] = "";
    path_in(path, sizeof path, "huge.png");
    lt_write_file(path, png, sizeof png);
    ldm_data_image im;
    double t0 = now();
    ldm_result r = ldm_data_image_load(path, 3, &im, err, sizeof err);
    double dt = now() - t0;
    lt_report(r == LDM_ERR_UNSUPPORTED && has(err, "declares 16000 x 16000 pixels, over the cap of 67108864") && has(err, "huge.png") && dt < 0.5,
              "a PNG declaring 16000 x 16000 pixels is refused from its header", "code %d in %.3f s: %s", (int)r, dt, err);
    /* a real photo under a lowered cap, then the cap raised */
    ldm_data_set_max_pixels(1000);
    r = ldm_data_image_load(FIX "photo_chelsea.png", 3, &im, err, sizeof err);
    lt_report(r == LDM_ERR_UNSUPPORTED && has(err, "over the cap of 1000") && has(err, "LDM_MAX_PIXELS"), "ldm_data_set_max_pixels(1000) refuses a photo", "%d %s", (int)r, err);
    if (r == LDM_OK) ldm_data_image_free(&im);
    /* an ImageFolder scan skips it with a warning that names the cap */
    {
        char dir[600], dst[700];
        size_t n;
        unsigned char *png = lt_read_file(FIX "photo_chelsea.png", &n);
        path_in(dir, sizeof dir, "photos");
        mkdir(dir, 0700);
        snprintf(dst, sizeof dst, "%s/chelsea.png", dir);
        if (png) lt_write_file(dst, png, n);
        free(png);
        ldm_data_image_folder_opts o;
        memset(&o, 0, sizeof o);
        o.src.root = dir;
        o.src.warn = warn_fn;
        warnings[0] = 0;
        ldm_dataset *ds = NULL;
        r = ldm_dataset_image_folder(ctx, &ds, &o);
        lt_report(r == LDM_ERR_FORMAT && has(warnings, "chelsea.png' declares") && has(warnings, "over the cap of 1000"),
                  "ImageFolder: an image over the pixel cap is skipped at the scan with a warning", "%d %s | %s", (int)r, ldm_ctx_error(ctx), warnings);
        ldm_ctx_clear_error(ctx);
        if (ds) ldm_dataset_destroy(ds);
        ldm_data_set_max_pixels(0);
        r = ldm_dataset_image_folder(ctx, &ds, &o);
        LT_CHECK(r == LDM_OK && ldm_dataset_len(ds) == 1, "ImageFolder: the default cap keeps it");
        if (r == LDM_OK) ldm_dataset_destroy(ds);
    }
    r = ldm_data_image_load(FIX "photo_chelsea.png", 3, &im, err, sizeof err);
    LT_CHECK(r == LDM_OK && im.w * im.h > 1000, "the default cap reads it");
    if (r == LDM_OK) ldm_data_image_free(&im);
}

/* ---- trilinear resize ------------------------------------------------------------------- */
static void test_resize3(void) {
    long n;
    float *src = lt_load(ctx, ref, "tri_src", &n);
    if (!src || n != 2 * 5 * 6 * 7) { lt_report(0, "tri_src", "missing"); free(src); return; }
    int sizes[][3] = {{3, 4, 5}, {8, 9, 11}, {5, 3, 13}, {1, 1, 1}, {5, 6, 7}};
    for (int k = 0; k < 5; k++) {
        char key[64], name[160];
        snprintf(key, sizeof key, "tri_%dx%dx%d", sizes[k][0], sizes[k][1], sizes[k][2]);
        long m;
        float *want = lt_load(ctx, ref, key, &m);
        float *got = (float *)malloc(sizeof(float) * (size_t)m);
        ldm_result r = ldm_data_resize3(got, sizes[k][0], sizes[k][1], sizes[k][2], src, 2, 5, 6, 7);
        snprintf(name, sizeof name, "resize3 [2,5,6,7] -> %dx%dx%d vs torch trilinear (align_corners=False)", sizes[k][0], sizes[k][1], sizes[k][2]);
        if (!want || r) lt_report(0, name, "missing or failed (%d)", (int)r);
        else lt_close(name, got, want, m, 2e-6, 0);
        free(want);
        free(got);
    }
    float one;
    LT_CHECK(ldm_data_resize3(&one, 0, 1, 1, src, 2, 5, 6, 7) == LDM_ERR_INVALID, "resize3: a zero size is LDM_ERR_INVALID");
    free(src);
}

/* ---- the dataset ------------------------------------------------------------------------ */

static ldm_result get_image(ldm_dataset *ds, int64_t i, uint64_t seed, int64_t epoch, ldm_data_item *it, const ldm_data_field **f) {
    char err[1024];
    ldm_result r = ldm_dataset_get(ds, i, seed, epoch, it, err, sizeof err);
    if (r) { printf("     dataset_get: %s\n", err); return r; }
    *f = ldm_data_item_field(it, "image");
    return *f ? LDM_OK : LDM_ERR_NOT_FOUND;
}

static void test_dataset(void) {
    char dir[600], path[700];
    path_in(dir, sizeof dir, "vols");
    mkdir(dir, 0700);
    snprintf(path, sizeof path, "%s/sub", dir);
    mkdir(path, 0700);
    /* a.nii.gz: nibabel's CT; b.nii: the same volume written by ldm as int16 .nii; bad.nii: junk;
       c.txt: not a volume name; sub/d.NII.GZ: a stored-gzip copy (case-insensitive extension) */
    size_t n;
    unsigned char *ct = lt_read_file(FIX "nifti_ct.nii.gz", &n);
    snprintf(path, sizeof path, "%s/a.nii.gz", dir);
    if (ct) lt_write_file(path, ct, n);
    free(ct);
    ldm_nifti v;
    if (ldm_nifti_read(ctx, FIX "nifti_ct.nii.gz", &v)) { lt_report(0, "CT fixture", "%s", ldm_ctx_error(ctx)); return; }
    snprintf(path, sizeof path, "%s/b.nii", dir);
    ldm_nifti_write(ctx, path, &v, LDM_NII_INT16);
    snprintf(path, sizeof path, "%s/sub/d.NII.GZ", dir);
    ldm_nifti_write(ctx, path, &v, LDM_NII_FLOAT32);
    snprintf(path, sizeof path, "%s/bad.nii", dir);
    lt_write_file(path, "not a volume at all, but long enough to hold a header? no.", 58);
    snprintf(path, sizeof path, "%s/c.txt", dir);
    lt_write_file(path, "x", 1);
    ldm_nifti_free(&v);

    long nw, nr, nc, nz;
    float *win = lt_load(ctx, ref, "ct_window", &nw), *res = lt_load(ctx, ref, "ct_window_resized", &nr), *cen = lt_load(ctx, ref, "ct_centre_crop", &nc),
          *zs = lt_load(ctx, ref, "ct_zscore", &nz);
    ldm_dataset *ds = NULL; /* declared before the first goto: C++ (nvcc) refuses jumps past initialisations */
    ldm_result r;
    if (!win || !res || !cen || !zs) { lt_report(0, "dataset fixtures", "missing"); goto out; }

    ldm_data_volume_opts o;
    memset(&o, 0, sizeof o);
    o.src.root = dir;
    o.src.warn = warn_fn;
    o.norm = LDM_VOL_WINDOW;
    o.a_min = -1000; o.a_max = 1000; o.b_min = -1; o.b_max = 1; o.clip = 1;
    warnings[0] = 0;
    r = ldm_dataset_volume(ctx, &ds, &o);
    lt_report(r == LDM_OK && ldm_dataset_len(ds) == 3 && ldm_dataset_skipped(ds) == 1 && has(warnings, "bad.nii") && has(warnings, "58 bytes is too short for a NIfTI-1 header"),
              "VolumeDataset: 3 volumes (.nii, .nii.gz, .NII.GZ in a subfolder), the junk .nii skipped with a warning", "%d len %lld skipped %lld: %s %s", (int)r,
              ds ? (long long)ldm_dataset_len(ds) : -1LL, ds ? (long long)ldm_dataset_skipped(ds) : -1LL, ldm_ctx_error(ctx), warnings);
    printf("     warning: %s", warnings);
    ldm_ctx_clear_error(ctx);
    if (r) goto out;
    for (int i = 0; i < 3; i++) {
        ldm_data_item it;
        const ldm_data_field *f;
        char name[160];
        snprintf(name, sizeof name, "item %d: window [-1000, 1000] -> [-1, 1] clipped, [1,7,8,9] = torch", i);
        if (get_image(ds, i, 1, 0, &it, &f) == LDM_OK && f->c == 1 && f->t == 7 && f->h == 8 && f->w == 9) lt_close(name, f->data, win, nw, 1e-6, 0);
        else lt_report(0, name, "wrong shape");
        ldm_data_item_free(&it);
    }
    ldm_dataset_destroy(ds);

    /* resize + centre crop; then random crops */
    o.resize[0] = 5; o.resize[1] = 12; o.resize[2] = 6;
    if (ldm_dataset_volume(ctx, &ds, &o) == LDM_OK) {
        ldm_data_item it;
        const ldm_data_field *f;
        if (get_image(ds, 0, 1, 0, &it, &f) == LDM_OK && f->t == 5 && f->h == 12 && f->w == 6)
            lt_close("window then trilinear resize to 5x12x6 = torch F.interpolate", f->data, res, nr, 2e-6, 0);
        else lt_report(0, "resize", "wrong shape");
        ldm_data_item_free(&it);
        ldm_dataset_destroy(ds);
    }
    o.spatial_size[0] = 4; o.spatial_size[1] = 8; o.spatial_size[2] = 0;
    if (ldm_dataset_volume(ctx, &ds, &o) == LDM_OK) {
        ldm_data_item it;
        const ldm_data_field *f;
        if (get_image(ds, 1, 1, 0, &it, &f) == LDM_OK && f->t == 4 && f->h == 8 && f->w == 6)
            lt_close("centre crop 4x8x(whole W) of the resized volume = torch slicing", f->data, cen, nc, 2e-6, 0);
        else lt_report(0, "centre crop", "wrong shape");
        ldm_data_item_free(&it);
        ldm_dataset_destroy(ds);
    }
    o.random_crop = 1;
    o.spatial_size[2] = 3;
    if (ldm_dataset_volume(ctx, &ds, &o) == LDM_OK) {
        int ok = 1, differ = 0, repro = 1;
        float first[4 * 8 * 3];
        for (int e = 0; e < 6; e++) {
            ldm_data_item it, it2;
            const ldm_data_field *f, *f2;
            if (get_image(ds, 2, 77, e, &it, &f) || get_image(ds, 2, 77, e, &it2, &f2)) { ok = 0; break; }
            ldm_rng rng = ldm_data_item_rng(77, e, 2);
            int dims[3] = {5, 12, 6}, s[3] = {4, 8, 3}, o0[3];
            for (int k = 0; k < 3; k++) o0[k] = (int)floor((dims[k] - s[k] + 1) * ldm_data_uniform(&rng));
            for (int z = 0; z < 4; z++)
                for (int y = 0; y < 8; y++)
                    for (int x = 0; x < 3; x++) {
                        float want = res[((size_t)(o0[0] + z) * 12 + o0[1] + y) * 6 + o0[2] + x], got = f->data[((size_t)z * 8 + y) * 3 + x];
                        if (fabsf(got - want) > 2e-6f) ok = 0;
                    }
            if (memcmp(f->data, f2->data, sizeof first)) repro = 0;
            if (e == 0) memcpy(first, f->data, sizeof first);
            else if (memcmp(first, f->data, sizeof first)) differ = 1;
            ldm_data_item_free(&it);
            ldm_data_item_free(&it2);
        }
        LT_CHECK(ok, "random crops: offsets floor((D - s + 1) * u) from ldm_data_item_rng(seed, epoch, index), draws T, H, W");
        LT_CHECK(repro && differ, "random crops: reproducible for (seed, epoch, index), re-drawn across epochs");
        ldm_dataset_destroy(ds);
    }
    /* the cache keeps the decoded, windowed, resized volumes; crops are drawn per epoch */
    {
        ldm_dataset *inner = NULL, *cached = NULL, *plain = NULL;
        if (ldm_dataset_volume(ctx, &inner, &o) == LDM_OK && ldm_dataset_cache(ctx, &cached, inner, (size_t)1 << 20) == LDM_OK &&
            ldm_dataset_volume(ctx, &plain, &o) == LDM_OK) {
            int same = 1;
            for (int e = 0; e < 3; e++)
                for (int i = 0; i < 3; i++) {
                    ldm_data_item a, b;
                    const ldm_data_field *fa, *fb;
                    if (get_image(cached, i, 5, e, &a, &fa) || get_image(plain, i, 5, e, &b, &fb)) { same = 0; continue; }
                    same = same && !memcmp(fa->data, fb->data, sizeof(float) * 4 * 8 * 3);
                    ldm_data_item_free(&a);
                    ldm_data_item_free(&b);
                }
            LT_CHECK(same, "CacheDataset over volumes: the same items as uncached, crops re-drawn per epoch");
            LT_CHECK(ldm_dataset_cache_count(cached) == 3 && ldm_dataset_cache_bytes(cached) == 3 * sizeof(float) * 5 * 12 * 6,
                     "CacheDataset holds the 3 resized float volumes (3 x 360 floats)");
        } else lt_report(0, "cache", "%s", ldm_ctx_error(ctx));
        ldm_dataset_destroy(cached);
        ldm_dataset_destroy(plain);
        /* a cap too small for the volumes: they are cached only while they fit */
        if (ldm_dataset_volume(ctx, &inner, &o) == LDM_OK && ldm_dataset_cache(ctx, &cached, inner, sizeof(float) * 5 * 12 * 6) == LDM_OK) {
            ldm_data_item a;
            const ldm_data_field *fa;
            for (int i = 0; i < 3; i++) if (get_image(cached, i, 5, 0, &a, &fa) == LDM_OK) ldm_data_item_free(&a);
            LT_CHECK(ldm_dataset_cache_count(cached) == 1, "CacheDataset byte cap counts float voxels");
            ldm_dataset_destroy(cached);
        }
    }
    /* loader: batches [B,1,4,8,3] */
    {
        ldm_data_loader *ld = NULL;
        ldm_data_loader_opts lo;
        memset(&lo, 0, sizeof lo);
        lo.batch_size = 2;
        lo.num_workers = 2;
        lo.shuffle = 1;
        lo.seed = 3;
        if (ldm_dataset_volume(ctx, &ds, &o) == LDM_OK && ldm_data_loader_create(ctx, &ld, ds, &lo) == LDM_OK) {
            const ldm_data_batch *b;
            int nb = 0, ok = 1;
            ldm_result rr;
            while ((rr = ldm_data_loader_next(ctx, ld, &b)) == LDM_OK) {
                const ldm_data_bfield *bf = ldm_data_batch_field(b, "image");
                ldm_tensor t = ldm_data_batch_tensor(b, "image");
                ok = ok && bf && bf->ndim == 5 && bf->shape[0] == b->size && bf->shape[1] == 1 && bf->shape[2] == 4 && bf->shape[3] == 8 && bf->shape[4] == 3 &&
                     t.ndim == 5 && t.shape[2] == 4 && t.shape[4] == 3;
                nb++;
            }
            LT_CHECK(rr == LDM_DATA_END && nb == 2 && ok, "loader over volumes: batches [B,1,T,H,W] (ndim 5), ldm_data_batch_tensor 5-D");
            ldm_data_loader_destroy(ld);
        } else lt_report(0, "volume loader", "%s", ldm_ctx_error(ctx));
        ldm_dataset_destroy(ds);
    }
    /* z-score */
    memset(&o, 0, sizeof o);
    o.src.root = dir;
    o.src.warn = warn_fn;
    o.norm = LDM_VOL_ZSCORE;
    if (ldm_dataset_volume(ctx, &ds, &o) == LDM_OK) {
        ldm_data_item it;
        const ldm_data_field *f;
        if (get_image(ds, 0, 1, 0, &it, &f) == LDM_OK) lt_close("z-score per volume = torch (x - mean) / std(unbiased=False)", f->data, zs, nz, 2e-6, 0);
        ldm_data_item_free(&it);
        ldm_dataset_destroy(ds);
    }
    /* min-max */
    o.norm = LDM_VOL_MINMAX;
    o.b_min = -1;
    o.b_max = 1;
    if (ldm_dataset_volume(ctx, &ds, &o) == LDM_OK) {
        ldm_data_item it;
        const ldm_data_field *f;
        long nm;
        float *mm = lt_load(ctx, ref, "ct_minmax", &nm);
        if (mm && get_image(ds, 1, 1, 0, &it, &f) == LDM_OK) {
            lt_close("minmax per volume -> [-1, 1] = torch (MONAI ScaleIntensity)", f->data, mm, nm, 2e-7, 0);
            ldm_data_item_free(&it);
        } else lt_report(0, "minmax", "missing");
        free(mm);
        ldm_dataset_destroy(ds);
    }
    /* a 4-D file: its 4th axis is the channels */
    {
        char d4[600], p4[700];
        path_in(d4, sizeof d4, "vol4d");
        mkdir(d4, 0700);
        snprintf(p4, sizeof p4, "%s/two.nii.gz", d4);
        ldm_nifti v4 = ldm_nifti_make(5, 4, 3);
        v4.dim[0] = 4;
        v4.dim[4] = 2;
        v4.nvox = 120;
        v4.data = (float *)malloc(sizeof(float) * 120);
        for (int i = 0; i < 120; i++) v4.data[i] = (float)i;
        ldm_nifti_write(ctx, p4, &v4, LDM_NII_FLOAT32);
        ldm_data_volume_opts o4;
        memset(&o4, 0, sizeof o4);
        o4.src.root = d4;
        ldm_data_item it;
        const ldm_data_field *f;
        if (ldm_dataset_volume(ctx, &ds, &o4) == LDM_OK && get_image(ds, 0, 1, 0, &it, &f) == LDM_OK) {
            LT_CHECK(f->c == 2 && f->t == 3 && f->h == 4 && f->w == 5 && !memcmp(f->data, v4.data, sizeof(float) * 120),
                     "a 4-D NIfTI (nt 2): item [C=2,T=3,H=4,W=5], the file's memory order");
            ldm_data_item_free(&it);
        } else lt_report(0, "4-D dataset", "%s", ldm_ctx_error(ctx));
        ldm_dataset_destroy(ds);
        free(v4.data);
    }
    /* errors: a crop larger than the volume; different sizes collated; bad options */
    o.spatial_size[0] = 8;
    if (ldm_dataset_volume(ctx, &ds, &o) == LDM_OK) {
        ldm_data_item it;
        char err[1024];
        r = ldm_dataset_get(ds, 0, 1, 0, &it, err, sizeof err);
        lt_report(r == LDM_ERR_INVALID && has(err, "a.nii.gz is 7x8x9 (T x H x W), smaller than spatial_size 8x0x0"), "a crop larger than the volume: an error naming the file",
                  "%d %s", (int)r, err);
        ldm_dataset_destroy(ds);
    }
    {
        ldm_data_item items[2];
        ldm_data_batch bt;
        memset(items, 0, sizeof items);
        items[0].class_label = items[1].class_label = -1;
        ldm_data_item_add3(&items[0], "image", 1, 2, 3, 4);
        ldm_data_item_add3(&items[1], "image", 1, 3, 3, 4);
        r = ldm_data_collate(ctx, items, 2, &bt);
        LT_CHECK(r == LDM_ERR_INVALID && has(ldm_ctx_error(ctx), "depth 2 but item 0 has depth 3"), "collate: volumes of different depths are an error");
        ldm_ctx_clear_error(ctx);
        ldm_data_item_free(&items[1]);
        ldm_data_item_add3(&items[1], "image", 1, 2, 5, 4);
        r = ldm_data_collate(ctx, items, 2, &bt);
        LT_CHECK(r == LDM_ERR_INVALID && has(ldm_ctx_error(ctx), "[1, 2, 3, 4] but item 0 has \"image\" [1, 2, 5, 4] (volumes of different sizes need a resize"),
                 "collate: volumes of different heights are an error with the hint");
        ldm_ctx_clear_error(ctx);
        ldm_data_item_free(&items[1]);
        ldm_data_item_add(&items[1], "image", 1, 3, 4);
        r = ldm_data_collate(ctx, items, 2, &bt);
        lt_report(r == LDM_ERR_INVALID && has(ldm_ctx_error(ctx), "depth 0"), "collate: a volume and a 2-D image are an error", "%d %s", (int)r, ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
        ldm_data_item_free(&items[0]);
        ldm_data_item_free(&items[1]);
    }
    memset(&o, 0, sizeof o);
    o.src.root = dir;
    o.norm = LDM_VOL_WINDOW;
    LT_CHECK(ldm_dataset_volume(ctx, &ds, &o) == LDM_ERR_INVALID && has(ldm_ctx_error(ctx), "a_min != a_max"), "window with a_min == a_max is refused");
    ldm_ctx_clear_error(ctx);
    o.norm = LDM_VOL_NONE;
    o.max_voxels = 100;
    warnings[0] = 0;
    o.src.warn = warn_fn;
    r = ldm_dataset_volume(ctx, &ds, &o);
    if (r == LDM_OK) { /* the .nii is refused at the scan; the .nii.gz files when read: skipped, so no file is left */
        ldm_data_item it;
        char err[1024];
        r = ldm_dataset_get(ds, 0, 1, 0, &it, err, sizeof err);
        lt_report(r == LDM_ERR_FORMAT && has(warnings, "over the cap of 100") && has(err, "none of its"), "max_voxels 100: every volume refused with the cap named",
                  "%d %s | %s", (int)r, err, warnings);
        ldm_dataset_destroy(ds);
    } else lt_report(0, "max_voxels", "%s", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    path_in(path, sizeof path, "empty");
    mkdir(path, 0700);
    o.src.root = path;
    LT_CHECK(ldm_dataset_volume(ctx, &ds, &o) == LDM_ERR_NOT_FOUND && has(ldm_ctx_error(ctx), "no volume files (nii, nii.gz)"), "an empty folder: no volume files");
    ldm_ctx_clear_error(ctx);
out:
    free(win);
    free(res);
    free(cen);
    free(zs);
}

/* ---- config ----------------------------------------------------------------------------- */
static void test_config(void) {
    char text[2048], dir[600];
    path_in(dir, sizeof dir, "vols");
    snprintf(text, sizeof text,
             "data:\n"
             "  target: main.DataModuleFromConfig\n"
             "  params:\n"
             "    batch_size: 3\n"
             "    num_workers: 0\n"
             "    train:\n"
             "      target: ldm.data.cache.CacheDataset\n"
             "      params:\n"
             "        dataset:\n"
             "          target: VolumeDataset\n"
             "          params: {root: %s, norm: window, a_min: -1000, a_max: 1000, b_min: -1, b_max: 1, resize: [5, 12, 6], spatial_size: [4, 8, -1], random_crop: true}\n"
             "    validation:\n"
             "      target: NiftiDataset\n"
             "      params: {root: %s, norm: zscore, spatial_size: 6}\n",
             dir, dir);
    ldm_config *cfg;
    ldm_config_registry *reg;
    ldm_data_module *dm = NULL;
    ldm_config_create(&cfg);
    ldm_config_registry_create(&reg);
    ldm_result r = ldm_data_register(reg);
    if (!r) r = ldm_config_load_string(cfg, text, "vol.yaml", LDM_CONFIG_FORMAT_YAML);
    if (!r) r = ldm_data_module_from_config(cfg, reg, NULL, ctx, &dm);
    lt_report(r == LDM_OK, "config: DataModuleFromConfig with a cached VolumeDataset and a NiftiDataset", "%s", ldm_config_error(cfg));
    if (r == LDM_OK) {
        ldm_data_loader *ld;
        const ldm_data_batch *b;
        if (ldm_data_module_loader(ctx, dm, LDM_DATA_TRAIN, 1, &ld) == LDM_OK) {
            r = ldm_data_loader_next(ctx, ld, &b);
            const ldm_data_bfield *bf = r == LDM_OK ? ldm_data_batch_field(b, "image") : NULL;
            LT_CHECK(bf && bf->ndim == 5 && bf->shape[0] == 3 && bf->shape[2] == 4 && bf->shape[3] == 8 && bf->shape[4] == 6,
                     "config: train batch [3,1,4,8,6] (resize [5,12,6], spatial_size [4,8,-1])");
            ldm_data_loader_destroy(ld);
        }
        if (ldm_data_module_loader(ctx, dm, LDM_DATA_VALIDATION, 1, &ld) == LDM_OK) {
            r = ldm_data_loader_next(ctx, ld, &b);
            const ldm_data_bfield *bf = r == LDM_OK ? ldm_data_batch_field(b, "image") : NULL;
            LT_CHECK(bf && bf->ndim == 5 && bf->shape[2] == 6 && bf->shape[3] == 6 && bf->shape[4] == 6, "config: spatial_size 6 means 6x6x6");
            ldm_data_loader_destroy(ld);
        }
        ldm_data_module_destroy(dm);
    }
    ldm_config_destroy(cfg);
    ldm_config_create(&cfg);
    snprintf(text, sizeof text, "data:\n  target: main.DataModuleFromConfig\n  params:\n    batch_size: 1\n    train:\n      target: VolumeDataset\n"
                                "      params: {root: %s, norm: max}\n", dir);
    dm = NULL;
    r = ldm_config_load_string(cfg, text, "bad.yaml", LDM_CONFIG_FORMAT_YAML);
    if (!r) r = ldm_data_module_from_config(cfg, reg, NULL, ctx, &dm);
    LT_CHECK(r == LDM_ERR_INVALID && has(ldm_config_error(cfg), "bad.yaml:") && has(ldm_config_error(cfg), "norm 'max' is not none, window, zscore or minmax"),
             "config: an unknown norm names the file and line");
    if (dm) ldm_data_module_destroy(dm);
    ldm_config_destroy(cfg);
    ldm_config_create(&cfg);
    snprintf(text, sizeof text, "target: VolumeDataset\nparams: {root: %s, resize: [1, 2]}\n", dir);
    ldm_dataset *ds = NULL;
    r = ldm_config_load_string(cfg, text, "bad2.yaml", LDM_CONFIG_FORMAT_YAML);
    if (!r) r = ldm_config_instantiate(cfg, reg, ldm_config_root(cfg), ctx, (void **)&ds);
    LT_CHECK(r == LDM_ERR_INVALID && has(ldm_config_error(cfg), "resize has 2 sizes; give 3 (T, H, W) or 1"), "config: resize with 2 sizes is an error");
    if (ds) ldm_dataset_destroy(ds);
    ldm_config_destroy(cfg);
    ldm_config_registry_destroy(reg);
}

int main(void) {
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.threads = 1;
    if (ldm_ctx_create(&ctx, &s)) { printf("FAIL ctx\n"); return 1; }
    if (ldm_weights_open(ctx, &ref, FIX "nifti_ref.safetensors")) { printf("FAIL fixture: %s\n", ldm_ctx_error(ctx)); return 1; }
    if (!lt_mkdtemp(tmp, sizeof tmp, "ldm_test_nifti")) return 1;
    xdir = getenv("LDM_NIFTI_XCHECK");
    if (xdir && !xdir[0]) xdir = NULL;
    if (xdir) mkdir(xdir, 0700);
    test_fixtures();
    test_roundtrip();
    test_deflate();
    test_malformed();
    test_pixel_cap();
    test_resize3();
    test_dataset();
    test_config();
    lt_rm_rf(tmp);
    ldm_weights_close(ref);
    ldm_ctx_destroy(ctx);
    return lt_finish("test_nifti");
}
