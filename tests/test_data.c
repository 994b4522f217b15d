/* test_data.c - ldm_data.h: resampling against PyTorch / OpenCV / Pillow (fixture from
   tests/ref/data_ref.py), ImageFolder over generated PNG/JPG/BMP/TGA files with corrupt ones,
   ImageNetSR pipelines and degradations, IDX and gzip readers (fixtures, generated files, the
   real Fashion-MNIST when installed, malformed files), the cache, the threaded loader
   (determinism across num_workers, epochs, save/restore), and the config glue.
   Also built with LDM_TEST_SANITIZE (ASan/UBSan): loaders and parsers. */
#define _XOPEN_SOURCE 700
#define LDM_IMPLEMENTATION
#include "../ldm_config.h"
#include "../ldm_data.h"
#include "ldm_test.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#endif
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include "../third_party/stb_image_write.h"
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

#define FIX "../tests/fixtures/"
#define FMNIST "/usr/share/datasets/fashion-mnist/"

static ldm_ctx *ctx;
static ldm_weights *ref;
static char tmp[256];

/* ---- helpers ---------------------------------------------------------------------------- */
static void path_in(char *buf, size_t n, const char *rel) { snprintf(buf, n, "%s/%s", tmp, rel); }

/* Planar [c,h,w] 8-bit -> interleaved, written by extension. */
static int write_image(const char *path, const unsigned char *planar, int c, int h, int w) {
    unsigned char *px = (unsigned char *)malloc((size_t)c * h * w);
    for (int k = 0; k < c; k++)
        for (int i = 0; i < h * w; i++) px[(size_t)i * c + k] = planar[(size_t)k * h * w + i];
    const char *ext = strrchr(path, '.');
    int ok = 0;
    if (!strcmp(ext, ".png") || !strcmp(ext, ".PNG")) ok = stbi_write_png(path, w, h, c, px, w * c);
    else if (!strcmp(ext, ".BMP") || !strcmp(ext, ".bmp")) ok = stbi_write_bmp(path, w, h, c, px);
    else if (!strcmp(ext, ".tga")) ok = stbi_write_tga(path, w, h, c, px);
    free(px);
    return ok;
}

static unsigned char *ref_u8(const char *name, long *n) {
    float *f = lt_load(ctx, ref, name, n);
    if (!f) return NULL;
    unsigned char *u = (unsigned char *)malloc((size_t)*n);
    for (long i = 0; i < *n; i++) u[i] = (unsigned char)f[i];
    free(f);
    return u;
}

/* 8-bit comparison: passes when no element is off by more than max_diff and at most
   max_off_frac of them differ at all. */
static void check_u8(const char *name, const unsigned char *got, const unsigned char *want, long n, int max_diff, double max_off_frac) {
    long off = 0, worst = -1;
    int wd = 0;
    for (long i = 0; i < n; i++) {
        int d = abs((int)got[i] - (int)want[i]);
        if (d) off++;
        if (d > wd) { wd = d; worst = i; }
    }
    int ok = wd <= max_diff && off <= (long)(max_off_frac * n);
    lt_report(ok, name, "%ld of %ld differ, largest %d at [%ld] (got %d want %d); allowed: %d levels, %.1f%% of elements",
              off, n, wd, worst, worst >= 0 ? got[worst] : 0, worst >= 0 ? want[worst] : 0, max_diff, 100 * max_off_frac);
    if (ok) printf("     (%ld of %ld differ by one level)\n", off, n);
}

/* The item's "image" back to 8-bit levels. */
static void field_u8(const ldm_data_field *f, unsigned char *out) {
    long n = (long)f->c * f->h * f->w;
    for (long i = 0; i < n; i++) out[i] = (unsigned char)lrintf((f->data[i] + 1.0f) * 127.5f);
}

static int has(const char *hay, const char *needle) { return hay && strstr(hay, needle) != NULL; }

static char warnings[8192];
static int n_warnings;
static void capture_warn(void *user, const char *msg) {
    (void)user;
    n_warnings++;
    size_t k = strlen(warnings);
    snprintf(warnings + k, sizeof warnings - k, "%s\n", msg);
}

/* ---- resampling ------------------------------------------------------------------------- */
static void test_resize(void) {
    static const int sizes[][2] = {{10, 15}, {5, 10}, {8, 12}, {13, 19}, {40, 60}, {27, 41}, {16, 45}, {20, 30}};
    long n;
    float *src = lt_load(ctx, ref, "rs_src", &n);
    unsigned char *src8 = ref_u8("rs_src", &n);
    if (!src || !src8 || n != 600) { lt_report(0, "resize fixture", "rs_src missing"); return; }
    for (int s = 0; s < 8; s++) {
        int oh = sizes[s][0], ow = sizes[s][1];
        int integer_area = (20 % oh == 0 && 30 % ow == 0) || (oh % 20 == 0 && ow % 30 == 0);
        float *got = (float *)malloc(sizeof(float) * oh * ow);
        unsigned char *got8 = (unsigned char *)malloc((size_t)oh * ow);
        char name[96], key[64];
        struct { const char *ref; ldm_data_interp m; double atol; int only_integer; } fl[] = {
            {"torch_nearest", LDM_INTERP_NEAREST, 0.0, 0},
            {"cv_nearest", LDM_INTERP_NEAREST, 0.0, 0},
            {"torch_bilinear", LDM_INTERP_BILINEAR, 3e-4, 0},
            {"cv_bilinear", LDM_INTERP_BILINEAR, 2e-3, 0},
            {"torch_bicubic", LDM_INTERP_BICUBIC, 6e-4, 0},
            {"cv_bicubic", LDM_INTERP_BICUBIC, 3e-3, 0},
            {"cv_area", LDM_INTERP_AREA, 2e-4, 0},
            {"torch_area", LDM_INTERP_AREA, 1e-4, 1},
            {"torch_bilinear_aa", LDM_INTERP_PIL_BILINEAR, 2e-4, 0},
            {"torch_bicubic_aa", LDM_INTERP_PIL_BICUBIC, 3e-4, 0},
        };
        for (size_t k = 0; k < sizeof fl / sizeof fl[0]; k++) {
            if (fl[k].only_integer && !integer_area) continue;
            snprintf(key, sizeof key, "%s_%dx%d", fl[k].ref, oh, ow);
            snprintf(name, sizeof name, "resize %s 20x30 -> %dx%d vs %s", ldm_data_interp_name(fl[k].m), oh, ow, fl[k].ref);
            float *want = lt_load(ctx, ref, key, &n);
            ldm_result r = ldm_data_resize(got, oh, ow, src, 1, 20, 30, fl[k].m);
            if (!want || r) lt_report(0, name, "missing reference or resize failed (%d)", r);
            else lt_close(name, got, want, n, fl[k].atol, 0);
            free(want);
        }
        /* torch's area is adaptive pooling: for non-integer factors it is not OpenCV's
           INTER_AREA. Show that the fixture really separates them. */
        if (!integer_area) {
            snprintf(key, sizeof key, "torch_area_%dx%d", oh, ow);
            float *tw = lt_load(ctx, ref, key, &n);
            ldm_data_resize(got, oh, ow, src, 1, 20, 30, LDM_INTERP_AREA);
            double md = 0;
            for (long i = 0; tw && i < n; i++) md = fmax(md, fabs(got[i] - tw[i]));
            snprintf(name, sizeof name, "area %dx%d: OpenCV INTER_AREA differs from torch area (max %.1f levels)", oh, ow, md);
            lt_report(tw && md > 1.0, name, "expected a difference over one level, got %g", md);
            free(tw);
        }
        /* 8-bit: Pillow filters (exact up to fixed-point rounding), OpenCV on uint8 (fixed point). */
        struct { const char *ref; ldm_data_interp m; int max_diff; double frac; } u8[] = {
            {"pil_nearest", LDM_INTERP_PIL_NEAREST, 0, 0.0}, {"pil_bilinear", LDM_INTERP_PIL_BILINEAR, 0, 0.0},
            {"pil_bicubic", LDM_INTERP_PIL_BICUBIC, 0, 0.0}, {"pil_box", LDM_INTERP_PIL_BOX, 0, 0.0},
            {"pil_hamming", LDM_INTERP_PIL_HAMMING, 0, 0.0}, {"pil_lanczos", LDM_INTERP_PIL_LANCZOS, 0, 0.0},
            {"cvu8_nearest", LDM_INTERP_NEAREST, 0, 0.0}, {"cvu8_bilinear", LDM_INTERP_BILINEAR, 1, 0.25},
            {"cvu8_bicubic", LDM_INTERP_BICUBIC, 1, 0.25}, {"cvu8_area", LDM_INTERP_AREA, 1, 0.25},
        };
        for (size_t k = 0; k < sizeof u8 / sizeof u8[0]; k++) {
            snprintf(key, sizeof key, "%s_%dx%d", u8[k].ref, oh, ow);
            snprintf(name, sizeof name, "resize_u8 %s 20x30 -> %dx%d vs %s", ldm_data_interp_name(u8[k].m), oh, ow, u8[k].ref);
            unsigned char *want = ref_u8(key, &n);
            ldm_result r = ldm_data_resize_u8(got8, oh, ow, src8, 1, 20, 30, u8[k].m);
            if (!want || r) lt_report(0, name, "missing reference or resize failed (%d)", r);
            else check_u8(name, got8, want, n, u8[k].max_diff, u8[k].frac);
            free(want);
        }
        free(got);
        free(got8);
    }
    /* AUTO = area down, bilinear up; invalid arguments. */
    float a[150], b[150], up[2400], upb[2400];
    ldm_data_resize(a, 10, 15, src, 1, 20, 30, LDM_INTERP_AUTO);
    ldm_data_resize(b, 10, 15, src, 1, 20, 30, LDM_INTERP_AREA);
    ldm_data_resize(up, 40, 60, src, 1, 20, 30, LDM_INTERP_AUTO);
    ldm_data_resize(upb, 40, 60, src, 1, 20, 30, LDM_INTERP_BILINEAR);
    LT_CHECK(!memcmp(a, b, sizeof a) && !memcmp(up, upb, sizeof up), "resize auto: area when shrinking, bilinear when enlarging");
    LT_CHECK(ldm_data_resize(a, 0, 15, src, 1, 20, 30, LDM_INTERP_AREA) == LDM_ERR_INVALID &&
             ldm_data_resize(a, 10, 15, src, 1, 20, 30, (ldm_data_interp)99) == LDM_ERR_INVALID, "resize rejects empty sizes and unknown modes");
    /* names */
    ldm_data_interp m;
    char msg[256];
    LT_CHECK(!ldm_data_interp_parse("cv_bicubic", &m, msg, sizeof msg) && m == LDM_INTERP_BICUBIC &&
             !ldm_data_interp_parse("pil_box", &m, msg, sizeof msg) && m == LDM_INTERP_PIL_BOX &&
             !ldm_data_interp_parse("area", &m, msg, sizeof msg) && m == LDM_INTERP_AREA, "interpolation names (cv_, pil_, plain)");
    LT_CHECK(ldm_data_interp_parse("cv_bicubc", &m, msg, sizeof msg) == LDM_ERR_NOT_FOUND && has(msg, "did you mean 'cv_bicubic'"),
             "unknown interpolation suggests the nearest name");
    LT_CHECK(ldm_data_interp_parse("bsrgan_light", &m, msg, sizeof msg) == LDM_ERR_UNSUPPORTED && has(msg, "not implemented"),
             "bsrgan degradations are reported as unsupported");
    free(src);
    free(src8);
}

/* ---- ImageFolder ------------------------------------------------------------------------ */
static unsigned char *rgb;  /* the fixture photo [3,40,56] */

static void make_folder(void) {
    char p[512];
    long n;
    rgb = ref_u8("rgb", &n);
    unsigned char *small = (unsigned char *)malloc(3 * 30 * 36), *grey = (unsigned char *)malloc(44 * 33);
    for (int i = 0; i < 3 * 30 * 36; i++) small[i] = (unsigned char)(i * 7 % 251);
    for (int i = 0; i < 44 * 33; i++) grey[i] = (unsigned char)(i * 3 % 256);
    path_in(p, sizeof p, "img");
    mkdir(p, 0755);
    path_in(p, sizeof p, "img/sub");
    mkdir(p, 0755);
    path_in(p, sizeof p, "img/sub2");
    mkdir(p, 0755);
    path_in(p, sizeof p, "img/.hidden");
    mkdir(p, 0755);
    int ok = 1;
    path_in(p, sizeof p, "img/a.png");
    ok &= write_image(p, rgb, 3, 40, 56);
    path_in(p, sizeof p, "img/e.PNG");
    ok &= write_image(p, grey, 1, 44, 33);
    {
        unsigned char *jpg = NULL;
        size_t jn = 0;
        FILE *f = fopen(FIX "data_small.jpg", "rb");
        if (f) {
            jpg = (unsigned char *)malloc(1 << 16);
            jn = fread(jpg, 1, 1 << 16, f);
            fclose(f);
        }
        path_in(p, sizeof p, "img/sub/b.jpg");
        lt_write_file(p, jpg, jn);
        ok &= jn > 100;
        free(jpg);
    }
    path_in(p, sizeof p, "img/sub/c.BMP");
    ok &= write_image(p, small, 3, 30, 36);
    path_in(p, sizeof p, "img/sub2/d.tga");
    ok &= write_image(p, small, 3, 30, 36);
    path_in(p, sizeof p, "img/.hidden/x.png");
    ok &= write_image(p, small, 3, 30, 36);
    path_in(p, sizeof p, "img/sub2/loop"); /* a link back to img: the scan must not loop or count twice */
    ok &= symlink("..", p) == 0;
    path_in(p, sizeof p, "img/notes.txt");
    lt_write_file(p, "not an image", 12);
    path_in(p, sizeof p, "img/corrupt.png"); /* garbage: caught by the header check */
    lt_write_file(p, "this is not a PNG file at all, just text with a png name", 56);
    /* a real PNG cut after its header: the header check passes, decoding fails later */
    path_in(p, sizeof p, "img/truncated.png");
    {
        int len = 0;
        unsigned char *png = stbi_write_png_to_mem(small, 36 * 3, 36, 30, 3, &len);
        lt_write_file(p, png, (size_t)(len > 60 ? 60 : len));
        STBIW_FREE(png);
    }
    lt_report(ok, "generated png/jpg/bmp/tga files", "stb_image_write failed");
    free(small);
    free(grey);
}

static ldm_data_image_folder_opts folder_opts(const char *sub, int size) {
    static char root[512];
    ldm_data_image_folder_opts o;
    memset(&o, 0, sizeof o);
    path_in(root, sizeof root, sub);
    o.src.root = root;
    o.src.warn = capture_warn;
    o.size = size;
    return o;
}

static void test_folder(void) {
    char err[LDM_DATA_ERR_MAX], p[512];
    ldm_dataset *ds = NULL;
    ldm_data_item it;
    long n;
    warnings[0] = 0;
    n_warnings = 0;
    ldm_data_image_folder_opts o = folder_opts("img", 24);
    o.src.labels = 1;
    ldm_result r = ldm_dataset_image_folder(ctx, &ds, &o);
    lt_report(r == LDM_OK, "ImageFolder over png/jpg/bmp/tga with a corrupt file", "%s", ldm_ctx_error(ctx));
    if (r) { ldm_ctx_clear_error(ctx); return; }
    LT_CHECK(ldm_dataset_len(ds) == 6, "ImageFolder finds 6 images (hidden dirs, .txt, the garbage file and a link loop left out)");
    LT_CHECK(ldm_dataset_skipped(ds) == 1 && n_warnings == 1 && has(warnings, "corrupt.png") && has(warnings, "skipped"),
             "corrupt file: one warning naming it, counted");
    printf("     warning was: %s", warnings);
    /* sorted order: a.png e.PNG sub/b.jpg sub/c.BMP sub2/d.tga truncated.png; labels by directory */
    static const int64_t want_label[6] = {0, 0, 1, 1, 2, 0};
    static const int want_h[6] = {24, 32, 24, 24, 24, 24}; /* crops are 24x24; heights of the rescaled bases */
    int labels_ok = 1, shapes_ok = 1;
    (void)want_h;
    for (int i = 0; i < 5; i++) {
        r = ldm_dataset_get(ds, i, 1, 0, &it, err, sizeof err);
        if (r) { labels_ok = 0; printf("get %d: %s\n", i, err); continue; }
        const ldm_data_field *f = ldm_data_item_field(&it, "image");
        if (!f || f->c != 3 || f->h != 24 || f->w != 24) shapes_ok = 0;
        if (it.class_label != want_label[i] || it.index != i) labels_ok = 0;
        ldm_data_item_free(&it);
    }
    LT_CHECK(shapes_ok, "ImageFolder items are [3,24,24] (grey replicated to RGB)");
    LT_CHECK(labels_ok, "sorted by path; class_label = index of the directory (\"\", sub, sub2)");
    /* the truncated PNG fails when decoded: warned once, counted, replaced by the next file */
    n_warnings = 0;
    r = ldm_dataset_get(ds, 5, 1, 0, &it, err, sizeof err);
    LT_CHECK(r == LDM_OK && it.index == 0 && ldm_dataset_skipped(ds) == 2 && n_warnings == 1 && has(warnings, "truncated.png"),
             "a file that fails to decode later is warned about, counted and replaced by the next readable one");
    ldm_data_item_free(&it);
    r = ldm_dataset_get(ds, 5, 1, 1, &it, err, sizeof err);
    LT_CHECK(r == LDM_OK && it.index == 0 && n_warnings == 1, "the bad file is remembered (no second warning)");
    ldm_data_item_free(&it);

    /* centre crop of the INTER_AREA-rescaled photo vs the reference (40x56 -> 24x34) */
    unsigned char *want = ref_u8("folder24_f", &n), *want_cv = ref_u8("folder24_cv", &n), got[3 * 24 * 24], wc[3 * 24 * 24], wcv[3 * 24 * 24];
    r = ldm_dataset_get(ds, 0, 1, 0, &it, err, sizeof err);
    if (!r && want && want_cv) {
        field_u8(&it.field[0], got);
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < 24; y++)
                for (int x = 0; x < 24; x++) {
                    wc[(c * 24 + y) * 24 + x] = want[(c * 24 + y) * 34 + x + 5]; /* x0 = (34 - 24) / 2 */
                    wcv[(c * 24 + y) * 24 + x] = want_cv[(c * 24 + y) * 34 + x + 5];
                }
        check_u8("ImageFolder shrink (INTER_AREA, rounded) + centre crop vs cv2 float", got, wc, 3 * 24 * 24, 1, 0.01);
        check_u8("ImageFolder shrink + centre crop vs cv2 on uint8 (CompVis)", got, wcv, 3 * 24 * 24, 1, 0.25);
    } else {
        lt_report(0, "ImageFolder shrink + centre crop", "%s", err);
    }
    ldm_data_item_free(&it);
    ldm_dataset_destroy(ds);

    /* random crop + flip: offsets floor((H - s + 1) u), flip when u < flip_p, u from the item RNG */
    o = folder_opts("img", 24);
    o.random_crop = 1;
    o.flip_p = 0.5f;
    r = ldm_dataset_image_folder(ctx, &ds, &o);
    int crop_ok = !r && want, flips = 0, moves = 0;
    for (int e = 0; e < 12 && crop_ok; e++) {
        if (ldm_dataset_get(ds, 0, 99, e, &it, err, sizeof err)) { crop_ok = 0; break; }
        ldm_rng rng = ldm_data_item_rng(99, e, 0);
        double uy = ldm_data_uniform(&rng), ux = ldm_data_uniform(&rng), uf = ldm_data_uniform(&rng);
        int y0 = (int)floor((24 - 24 + 1) * uy), x0 = (int)floor((34 - 24 + 1) * ux), flip = uf < 0.5;
        flips += flip;
        moves += x0 != 5;
        field_u8(&it.field[0], got);
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < 24; y++)
                for (int x = 0; x < 24; x++) {
                    int sx = flip ? x0 + 23 - x : x0 + x;
                    if (abs((int)got[(c * 24 + y) * 24 + x] - (int)want[(c * 24 + y0 + y) * 34 + sx]) > 1) crop_ok = 0;
                }
        ldm_data_item_free(&it);
    }
    LT_CHECK(crop_ok && flips > 0 && flips < 12 && moves > 0, "random crop offsets and flips follow the item RNG (12 epochs, both flip states seen)");
    ldm_dataset_destroy(ds);
    free(want);
    free(want_cv);

    /* enlarging uses bilinear: 40x56 -> 64x90 */
    o = folder_opts("img", 64);
    o.src.max_items = 1;
    r = ldm_dataset_image_folder(ctx, &ds, &o);
    want = ref_u8("folder64_f", &n);
    want_cv = ref_u8("folder64_cv", &n);
    if (!r && want && want_cv && !ldm_dataset_get(ds, 0, 1, 0, &it, err, sizeof err)) {
        static unsigned char g64[3 * 64 * 64], w64[3 * 64 * 64], c64[3 * 64 * 64];
        field_u8(&it.field[0], g64);
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < 64; y++)
                for (int x = 0; x < 64; x++) {
                    w64[(c * 64 + y) * 64 + x] = want[(c * 64 + y) * 90 + x + 13];
                    c64[(c * 64 + y) * 64 + x] = want_cv[(c * 64 + y) * 90 + x + 13];
                }
        check_u8("ImageFolder enlarge (bilinear) + centre crop vs torch bilinear, rounded", g64, w64, 3 * 64 * 64, 1, 0.01);
        check_u8("ImageFolder enlarge vs cv2 INTER_LINEAR on uint8", g64, c64, 3 * 64 * 64, 1, 0.25);
        ldm_data_item_free(&it);
    } else {
        lt_report(0, "ImageFolder enlarge", "%s %s", ldm_ctx_error(ctx), err);
    }
    LT_CHECK(ldm_dataset_len(ds) == 1, "max_items limits the dataset");
    free(want);
    free(want_cv);
    ldm_dataset_destroy(ds);

    /* splits: 7 candidate files (the garbage one included, so a bad file never moves the
       split), val_fraction 0.3 -> 2 validation files: j = 3 (sub/b.jpg) and j = 6 (truncated.png) */
    ldm_dataset *tr = NULL, *va = NULL;
    o = folder_opts("img", 16);
    o.src.split = "train";
    o.src.val_fraction = 0.3;
    r = ldm_dataset_image_folder(ctx, &tr, &o);
    o.src.split = "validation";
    r |= ldm_dataset_image_folder(ctx, &va, &o);
    LT_CHECK(!r && ldm_dataset_len(tr) == 4 && ldm_dataset_len(va) == 2, "train/validation split by val_fraction: 4 + 2 readable files");
    ldm_dataset_destroy(tr);
    ldm_dataset_destroy(va);
    o.src.split = "test";
    r = ldm_dataset_image_folder(ctx, &tr, &o);
    LT_CHECK(r == LDM_ERR_INVALID && has(ldm_ctx_error(ctx), "split 'test'"), "unknown split is an error");
    ldm_ctx_clear_error(ctx);

    /* file list: its order, comments and blank lines */
    path_in(p, sizeof p, "list.txt");
    lt_write_file(p, "sub/c.BMP\n# a comment\n\n  a.png  \r\n", 35);
    o = folder_opts("img", 16);
    o.src.file_list = p;
    o.src.labels = 1;
    r = ldm_dataset_image_folder(ctx, &ds, &o);
    int list_ok = !r && ldm_dataset_len(ds) == 2;
    if (list_ok && !ldm_dataset_get(ds, 0, 1, 0, &it, err, sizeof err)) {
        list_ok = it.class_label == 1; /* sub sorts after "" */
        ldm_data_item_free(&it);
    } else {
        list_ok = 0;
    }
    LT_CHECK(list_ok, "file_list: listed files in the list's order");
    ldm_dataset_destroy(ds);

    /* errors */
    path_in(p, sizeof p, "empty");
    mkdir(p, 0755);
    o = folder_opts("empty", 16);
    r = ldm_dataset_image_folder(ctx, &ds, &o);
    LT_CHECK(r == LDM_ERR_NOT_FOUND && has(ldm_ctx_error(ctx), "no image files") && has(ldm_ctx_error(ctx), p),
             "empty directory: error naming it");
    printf("     %s\n", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    path_in(p, sizeof p, "bad");
    mkdir(p, 0755);
    path_in(p, sizeof p, "bad/x.jpg");
    lt_write_file(p, "garbage", 7);
    path_in(p, sizeof p, "bad/y.png");
    lt_write_file(p, "\x89PNG\r\n\x1a\n garbage", 17);
    o = folder_opts("bad", 16);
    n_warnings = 0;
    r = ldm_dataset_image_folder(ctx, &ds, &o);
    path_in(p, sizeof p, "bad");
    LT_CHECK(r == LDM_ERR_FORMAT && has(ldm_ctx_error(ctx), "none of the image files") && has(ldm_ctx_error(ctx), p) && n_warnings == 2,
             "no readable file: an error naming the directory (after a warning per file)");
    printf("     %s\n", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    o = folder_opts("does-not-exist", 16);
    r = ldm_dataset_image_folder(ctx, &ds, &o);
    LT_CHECK(r == LDM_ERR_IO && has(ldm_ctx_error(ctx), "does-not-exist"), "missing directory: LDM_ERR_IO naming it");
    ldm_ctx_clear_error(ctx);
    o = folder_opts("img", 16);
    o.channels = 2;
    LT_CHECK(ldm_dataset_image_folder(ctx, &ds, &o) == LDM_ERR_INVALID, "channels must be 1 or 3");
    ldm_ctx_clear_error(ctx);

    /* size 0 keeps images as they are: collating different sizes is an error naming both */
    o = folder_opts("img", 0);
    r = ldm_dataset_image_folder(ctx, &ds, &o);
    ldm_data_loader *ld = NULL;
    ldm_data_loader_opts lo;
    memset(&lo, 0, sizeof lo);
    lo.batch_size = 3;
    const ldm_data_batch *b;
    if (!r) r = ldm_data_loader_create(ctx, &ld, ds, &lo);
    r = r ? r : ldm_data_loader_next(ctx, ld, &b);
    LT_CHECK(r == LDM_ERR_INVALID && has(ldm_ctx_error(ctx), "cannot collate") && has(ldm_ctx_error(ctx), "[3, 40, 56]"),
             "collating images of different sizes: error with both shapes");
    printf("     %s\n", ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    LT_CHECK(ldm_data_loader_next(ctx, ld, &b) == LDM_ERR_INVALID, "a loader error repeats until seek");
    ldm_ctx_clear_error(ctx);
    ldm_data_loader_destroy(ld);
    ldm_dataset_destroy(ds);
}

/* ---- ImageNetSR ------------------------------------------------------------------------- */
static void test_sr(void) {
    char err[LDM_DATA_ERR_MAX], p[512];
    long n;
    path_in(p, sizeof p, "sr");
    mkdir(p, 0755);
    path_in(p, sizeof p, "sr/photo.png");
    write_image(p, rgb, 3, 40, 56);
    ldm_data_sr_opts o;
    memset(&o, 0, sizeof o);
    path_in(p, sizeof p, "sr");
    o.src.root = p;
    o.size = 32;
    o.downscale_f = 4;
    o.min_crop_f = o.max_crop_f = 1.0;
    o.random_crop = 0;
    struct { const char *name; ldm_data_interp m; int max_diff; double frac; } deg[] = {
        {"cv_bicubic", LDM_INTERP_BICUBIC, 1, 0.25}, {"cv_bilinear", LDM_INTERP_BILINEAR, 1, 0.25}, {"cv_area", LDM_INTERP_AREA, 1, 0.25},
        {"cv_nearest", LDM_INTERP_NEAREST, 0, 0}, {"pil_bicubic", LDM_INTERP_PIL_BICUBIC, 0, 0},
        {"pil_bilinear", LDM_INTERP_PIL_BILINEAR, 0, 0}, {"pil_nearest", LDM_INTERP_PIL_NEAREST, 0, 0},
        {"pil_box", LDM_INTERP_PIL_BOX, 0, 0}, {"pil_lanczos", LDM_INTERP_PIL_LANCZOS, 0, 0},
    };
    unsigned char *hr_f = ref_u8("sr_hr_f", &n), *hr_cv = ref_u8("sr_hr_cv", &n), got[3 * 32 * 32];
    for (size_t k = 0; k < sizeof deg / sizeof deg[0]; k++) {
        ldm_dataset *ds;
        ldm_data_item it;
        char name[128], key[64];
        o.degradation = deg[k].m;
        if (ldm_dataset_imagenet_sr(ctx, &ds, &o) || ldm_dataset_get(ds, 0, 5, 0, &it, err, sizeof err)) {
            lt_report(0, "ImageNetSR", "%s %s", ldm_ctx_error(ctx), err);
            ldm_ctx_clear_error(ctx);
            continue;
        }
        const ldm_data_field *hr = ldm_data_item_field(&it, "image"), *lr = ldm_data_item_field(&it, "LR_image");
        if (k == 0) {
            LT_CHECK(hr && lr && hr->c == 3 && hr->h == 32 && hr->w == 32 && lr->h == 8 && lr->w == 8,
                     "ImageNetSR yields image [3,32,32] and LR_image [3,8,8]");
            if (hr && hr_f && hr_cv) {
                field_u8(hr, got);
                check_u8("ImageNetSR centre crop 40x40 -> 32x32 INTER_AREA vs cv2 float, rounded", got, hr_f, 3 * 32 * 32, 1, 0.01);
                check_u8("ImageNetSR HR vs cv2 on uint8 (CompVis)", got, hr_cv, 3 * 32 * 32, 1, 0.25);
            }
        }
        snprintf(key, sizeof key, "sr_lr_%s", deg[k].name);
        snprintf(name, sizeof name, "ImageNetSR LR_image with %s vs %s", deg[k].name, deg[k].name[0] == 'p' ? "Pillow" : "OpenCV uint8");
        unsigned char *want = ref_u8(key, &n);
        if (lr && want) {
            field_u8(lr, got);
            check_u8(name, got, want, 3 * 8 * 8, deg[k].max_diff, deg[k].frac);
        } else {
            lt_report(0, name, "missing");
        }
        free(want);
        ldm_data_item_free(&it);
        ldm_dataset_destroy(ds);
    }
    free(hr_f);
    free(hr_cv);
    /* random crops: crop side int(40 * U(0.5, 1)), deterministic per (seed, epoch, index) */
    ldm_dataset *ds;
    o.min_crop_f = 0.5;
    o.random_crop = 1;
    o.degradation = LDM_INTERP_BICUBIC;
    int ok = !ldm_dataset_imagenet_sr(ctx, &ds, &o), differ = 0;
    for (int e = 0; e < 4 && ok; e++) {
        ldm_data_item a, b2;
        ok = !ldm_dataset_get(ds, 0, 7, e, &a, err, sizeof err) && !ldm_dataset_get(ds, 0, 7, e, &b2, err, sizeof err);
        if (!ok) break;
        ok = !memcmp(a.field[0].data, b2.field[0].data, sizeof(float) * 3 * 32 * 32) &&
             !memcmp(a.field[1].data, b2.field[1].data, sizeof(float) * 3 * 8 * 8);
        if (e) {
            ldm_data_item c;
            ldm_dataset_get(ds, 0, 7, 0, &c, err, sizeof err);
            differ += memcmp(a.field[0].data, c.field[0].data, sizeof(float) * 3 * 32 * 32) != 0;
            ldm_data_item_free(&c);
        }
        ldm_data_item_free(&a);
        ldm_data_item_free(&b2);
    }
    LT_CHECK(ok && differ == 3, "ImageNetSR random crops: same (seed, epoch, index) same item, other epochs differ");
    if (!ok) ldm_ctx_clear_error(ctx);
    ldm_dataset_destroy(ds);
    o.size = 30;
    LT_CHECK(ldm_dataset_imagenet_sr(ctx, &ds, &o) == LDM_ERR_INVALID && has(ldm_ctx_error(ctx), "divisible"), "size must divide by downscale_f");
    ldm_ctx_clear_error(ctx);
    o.size = 32;
    o.max_crop_f = 1.5;
    LT_CHECK(ldm_dataset_imagenet_sr(ctx, &ds, &o) == LDM_ERR_INVALID, "max_crop_f above 1 is an error");
    ldm_ctx_clear_error(ctx);
}

/* ---- IDX and gzip ----------------------------------------------------------------------- */
/* gzip with stored (uncompressed) deflate blocks of at most `block` bytes, optional FNAME. */
static unsigned char *gzip_stored(const unsigned char *data, size_t n, size_t block, const char *fname, size_t *out_n) {
    size_t nb = n / block + 1, cap = 10 + (fname ? strlen(fname) + 1 : 0) + n + 5 * nb + 8;
    unsigned char *g = (unsigned char *)malloc(cap), *p = g;
    *p++ = 0x1f; *p++ = 0x8b; *p++ = 8; *p++ = fname ? 8 : 0;
    memset(p, 0, 4); p += 4;
    *p++ = 0; *p++ = 3;
    if (fname) { memcpy(p, fname, strlen(fname) + 1); p += strlen(fname) + 1; }
    size_t off = 0;
    do {
        size_t len = n - off < block ? n - off : block;
        int last = off + len == n;
        *p++ = (unsigned char)last; /* BFINAL, BTYPE 00 */
        *p++ = (unsigned char)(len & 0xff); *p++ = (unsigned char)(len >> 8);
        *p++ = (unsigned char)(~len & 0xff); *p++ = (unsigned char)((~len >> 8) & 0xff);
        memcpy(p, data + off, len);
        p += len;
        off += len;
    } while (off < n);
    uint32_t crc = ldm_crc32(0, data, n), isz = (uint32_t)n;
    for (int i = 0; i < 4; i++) *p++ = (unsigned char)(crc >> (8 * i));
    for (int i = 0; i < 4; i++) *p++ = (unsigned char)(isz >> (8 * i));
    *out_n = (size_t)(p - g);
    return g;
}

static ldm_result idx_err(const char *path, const char *want_substr) {
    ldm_idx x;
    ldm_result r = ldm_idx_read(ctx, path, &x);
    if (r == LDM_OK) ldm_idx_free(&x);
    else if (!has(ldm_ctx_error(ctx), want_substr)) printf("     unexpected message: %s\n", ldm_ctx_error(ctx));
    else printf("     %s\n", ldm_ctx_error(ctx));
    if (r && !has(ldm_ctx_error(ctx), want_substr)) r = 1000;
    ldm_ctx_clear_error(ctx);
    return r;
}

static void test_idx(void) {
    ldm_idx raw, gz, lab, labgz;
    char p[512], err[LDM_DATA_ERR_MAX];
    LT_CHECK(ldm_crc32(0, "123456789", 9) == 0xCBF43926u, "CRC-32 check value");
    int ok = !ldm_idx_read(ctx, FIX "data_idx_images-idx3-ubyte", &raw) && !ldm_idx_read(ctx, FIX "data_idx_images-idx3-ubyte.gz", &gz) &&
             !ldm_idx_read(ctx, FIX "data_idx_labels-idx1-ubyte", &lab) && !ldm_idx_read(ctx, FIX "data_idx_labels-idx1-ubyte.gz", &labgz);
    lt_report(ok, "IDX fixtures read (raw and gzip written by Python)", "%s", ldm_ctx_error(ctx));
    if (!ok) { ldm_ctx_clear_error(ctx); return; }
    int pix_ok = 1;
    for (int i = 0; i < 60; i++) pix_ok &= raw.data[i] == (unsigned char)(i * 37 % 256);
    LT_CHECK(raw.ndim == 3 && raw.dims[0] == 5 && raw.dims[1] == 4 && raw.dims[2] == 3 && raw.size == 60 && pix_ok, "idx3: dims 5 x 4 x 3 and pixels");
    LT_CHECK(gz.size == raw.size && !memcmp(gz.data, raw.data, raw.size), "gzip (deflate by Python's zlib, FNAME header) inflates to the raw file");
    LT_CHECK(lab.ndim == 1 && lab.dims[0] == 5 && lab.data[0] == 3 && lab.data[4] == 5 && labgz.size == 5 && !memcmp(labgz.data, lab.data, 5),
             "idx1 labels, raw and gzip");

    /* stored-block gzip made here, several blocks */
    size_t gn;
    unsigned char idx3[4 + 12 + 60];
    memcpy(idx3, "\0\0\x08\x03\0\0\0\x05\0\0\0\x04\0\0\0\x03", 16);
    memcpy(idx3 + 16, raw.data, 60);
    unsigned char *g = gzip_stored(idx3, sizeof idx3, 20, "name.idx", &gn);
    path_in(p, sizeof p, "stored.gz");
    lt_write_file(p, g, gn);
    ldm_idx st;
    ok = !ldm_idx_read(ctx, p, &st) && st.size == 60 && !memcmp(st.data, raw.data, 60);
    LT_CHECK(ok, "gzip with stored deflate blocks made in C");
    if (ok) ldm_idx_free(&st);
    ldm_ctx_clear_error(ctx);

    /* malformed gzip files */
    g[gn - 8] ^= 0x55; /* CRC */
    path_in(p, sizeof p, "badcrc.gz");
    lt_write_file(p, g, gn);
    LT_CHECK(idx_err(p, "CRC-32 mismatch") == LDM_ERR_FORMAT, "gzip with a wrong CRC-32 is an error");
    g[gn - 8] ^= 0x55;
    g[gn - 4] ^= 1; /* ISIZE */
    path_in(p, sizeof p, "badlen.gz");
    lt_write_file(p, g, gn);
    LT_CHECK(idx_err(p, "length check failed") == LDM_ERR_FORMAT, "gzip with a wrong ISIZE is an error");
    g[gn - 4] ^= 1;
    path_in(p, sizeof p, "trunc.gz");
    lt_write_file(p, g, gn / 2);
    ldm_result r = idx_err(p, p);
    LT_CHECK(r == LDM_ERR_FORMAT, "truncated gzip is an error naming the file");
    g[2] = 7;
    path_in(p, sizeof p, "method.gz");
    lt_write_file(p, g, gn);
    LT_CHECK(idx_err(p, "not deflate") == LDM_ERR_FORMAT, "gzip with another compression method is an error");
    free(g);
    unsigned char junk[64];
    for (int i = 0; i < 64; i++) junk[i] = (unsigned char)(i * 91 + 7);
    junk[0] = 0x1f;
    junk[1] = 0x8b;
    junk[2] = 8;
    junk[3] = 0;
    path_in(p, sizeof p, "junk.gz");
    lt_write_file(p, junk, sizeof junk);
    LT_CHECK(idx_err(p, "junk.gz") == LDM_ERR_FORMAT, "gzip header over random bytes is an error");
    unsigned char *out;
    size_t on;
    LT_CHECK(ldm_gunzip(ctx, (const unsigned char *)"\x1f\x8b", 2, &out, &on, "tiny") == LDM_ERR_FORMAT && has(ldm_ctx_error(ctx), "tiny"),
             "ldm_gunzip on 2 bytes is an error");
    ldm_ctx_clear_error(ctx);

    /* malformed IDX files */
    unsigned char bad[16 + 60];
    memcpy(bad, idx3, sizeof bad);
    bad[1] = 1;
    path_in(p, sizeof p, "magic.idx");
    lt_write_file(p, bad, sizeof bad);
    LT_CHECK(idx_err(p, "not an IDX file") == LDM_ERR_FORMAT, "IDX with a bad magic is an error");
    bad[1] = 0;
    bad[2] = 0x0D;
    path_in(p, sizeof p, "float.idx");
    lt_write_file(p, bad, sizeof bad);
    LT_CHECK(idx_err(p, "float32") == LDM_ERR_UNSUPPORTED, "IDX of float32 elements is unsupported");
    bad[2] = 0x08;
    path_in(p, sizeof p, "short.idx");
    lt_write_file(p, bad, sizeof bad - 1);
    LT_CHECK(idx_err(p, "truncated") == LDM_ERR_FORMAT, "IDX shorter than its dims is an error");
    path_in(p, sizeof p, "hdr.idx");
    lt_write_file(p, bad, 10);
    LT_CHECK(idx_err(p, "truncated IDX header") == LDM_ERR_FORMAT, "IDX with a cut header is an error");
    unsigned char longer[16 + 61];
    memcpy(longer, bad, sizeof bad);
    longer[sizeof bad] = 0;
    path_in(p, sizeof p, "long.idx");
    lt_write_file(p, longer, sizeof longer);
    LT_CHECK(idx_err(p, "bytes after") == LDM_ERR_FORMAT, "IDX with trailing bytes is an error");
    LT_CHECK(idx_err("no/such/file.idx", "no/such/file.idx") == LDM_ERR_IO, "missing IDX file: LDM_ERR_IO naming it");

    /* the dataset: pad to 6x6, 3 channels; labels */
    ldm_data_idx_opts o;
    memset(&o, 0, sizeof o);
    o.images = FIX "data_idx_images-idx3-ubyte.gz";
    o.labels = FIX "data_idx_labels-idx1-ubyte";
    o.size = 6;
    o.pad = 1;
    o.channels = 3;
    ldm_dataset *ds;
    ldm_data_item it;
    ok = !ldm_dataset_idx(ctx, &ds, &o) && ldm_dataset_len(ds) == 5 && !ldm_dataset_get(ds, 2, 0, 0, &it, err, sizeof err);
    if (ok) {
        const ldm_data_field *f = &it.field[0];
        ok = f->c == 3 && f->h == 6 && f->w == 6 && it.class_label == 4;
        for (int c = 0; c < 3 && ok; c++)
            for (int y = 0; y < 6; y++)
                for (int x = 0; x < 6; x++) {
                    int inside = y >= 1 && y < 5 && x >= 1 && x < 4;
                    float want = inside ? raw.data[24 + (y - 1) * 3 + (x - 1)] / 127.5f - 1.0f : -1.0f;
                    if (fabsf(f->data[(c * 6 + y) * 6 + x] - want) > 1e-6f) ok = 0;
                }
        ldm_data_item_free(&it);
        ldm_dataset_destroy(ds);
    }
    LT_CHECK(ok, "IDX dataset: centred zero padding 4x3 -> 6x6 (top 1, left 1), replicated to 3 channels, class_label");
    ldm_ctx_clear_error(ctx);
    o.labels = FIX "data_idx_images-idx3-ubyte";
    LT_CHECK(ldm_dataset_idx(ctx, &ds, &o) == LDM_ERR_FORMAT && has(ldm_ctx_error(ctx), "labels file has 1 dimension"),
             "an images file given as labels is an error");
    ldm_ctx_clear_error(ctx);
    ldm_idx_free(&raw);
    ldm_idx_free(&gz);
    ldm_idx_free(&lab);
    ldm_idx_free(&labgz);

    /* the real Fashion-MNIST files */
    FILE *f = fopen(FMNIST "train-images-idx3-ubyte.gz", "rb");
    if (!f) {
        printf("SKIP Fashion-MNIST: %s not installed (apt-get install dataset-fashion-mnist)\n", FMNIST);
        return;
    }
    fclose(f);
    static const char *const names[2][2] = {{FMNIST "train-images-idx3-ubyte.gz", FMNIST "train-labels-idx1-ubyte.gz"},
                                            {FMNIST "t10k-images-idx3-ubyte.gz", FMNIST "t10k-labels-idx1-ubyte.gz"}};
    for (int s = 0; s < 2; s++) {
        ldm_idx im, lb;
        int64_t count = s ? 10000 : 60000, hist[10] = {0};
        ok = !ldm_idx_read(ctx, names[s][0], &im) && !ldm_idx_read(ctx, names[s][1], &lb);
        if (!ok) { lt_report(0, "Fashion-MNIST", "%s", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); continue; }
        int per_class = 1;
        for (int64_t i = 0; i < lb.dims[0]; i++) {
            if (lb.data[i] > 9) per_class = 0;
            else hist[lb.data[i]]++;
        }
        for (int k = 0; k < 10; k++) per_class &= hist[k] == count / 10;
        char name[128];
        snprintf(name, sizeof name, "Fashion-MNIST %s: %lld x 28 x 28 images, 10 balanced classes", s ? "t10k" : "train", (long long)count);
        LT_CHECK(im.ndim == 3 && im.dims[0] == count && im.dims[1] == 28 && im.dims[2] == 28 && lb.dims[0] == count && per_class, name);
        ldm_idx_free(&im);
        ldm_idx_free(&lb);
    }
}

/* ---- cache ------------------------------------------------------------------------------ */
static void test_cache(void) {
    char err[LDM_DATA_ERR_MAX];
    ldm_data_image_folder_opts o = folder_opts("img", 16);
    o.random_crop = 1;
    o.flip_p = 0.5f;
    ldm_dataset *plain, *inner, *cached;
    int ok = !ldm_dataset_image_folder(ctx, &plain, &o) && !ldm_dataset_image_folder(ctx, &inner, &o);
    ok = ok && !ldm_dataset_cache(ctx, &cached, inner, 2 * 3 * 16 * 24 + 100); /* room for two of the 16 x (16..24) bases */
    lt_report(ok, "CacheDataset created", "%s", ldm_ctx_error(ctx));
    if (!ok) return;
    int same = 1;
    for (int e = 0; e < 3; e++)
        for (int i = 0; i < 6; i++) {
            ldm_data_item a, b;
            if (ldm_dataset_get(plain, i, 3, e, &a, err, sizeof err) || ldm_dataset_get(cached, i, 3, e, &b, err, sizeof err)) { same = 0; continue; }
            same &= a.index == b.index && !memcmp(a.field[0].data, b.field[0].data, sizeof(float) * 3 * 16 * 16);
            ldm_data_item_free(&a);
            ldm_data_item_free(&b);
        }
    LT_CHECK(same, "cached items equal uncached ones (augmentations still vary per epoch)");
    LT_CHECK(ldm_dataset_cache_count(cached) == 2 && ldm_dataset_cache_bytes(cached) <= 2 * 3 * 16 * 24 + 100,
             "the cache stops at its byte cap");
    printf("     cache holds %lld items, %lu bytes; %lld files skipped\n", (long long)ldm_dataset_cache_count(cached),
           (unsigned long)ldm_dataset_cache_bytes(cached), (long long)ldm_dataset_skipped(cached));
    LT_CHECK(ldm_dataset_skipped(cached) == 2, "skipped files are counted through the cache");
    ldm_dataset_destroy(plain);
    ldm_dataset_destroy(cached);
}

/* ---- loader ----------------------------------------------------------------------------- */
typedef struct { int64_t epoch, batch, size, index[8]; float sum, first; unsigned h; } batch_sig;

static unsigned hash_floats(const float *p, size_t n) {
    unsigned h = 2166136261u;
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i < n * sizeof(float); i++) h = (h ^ b[i]) * 16777619u;
    return h;
}

/* Runs `count` next() calls and records each batch (END as size -1). */
static int run_loader(ldm_data_loader *ld, batch_sig *out, int count) {
    for (int k = 0; k < count; k++) {
        const ldm_data_batch *b;
        ldm_result r = ldm_data_loader_next(ctx, ld, &b);
        memset(&out[k], 0, sizeof out[k]);
        if (r == LDM_DATA_END) { out[k].size = -1; continue; }
        if (r) { printf("loader: %s\n", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); return 0; }
        const ldm_data_bfield *f = ldm_data_batch_field(b, "image");
        out[k].epoch = b->epoch;
        out[k].batch = b->batch;
        out[k].size = b->size;
        for (int i = 0; i < b->size && i < 8; i++) out[k].index[i] = b->index[i];
        out[k].h = hash_floats(f->data, (size_t)(f->shape[0] * f->shape[1] * f->shape[2] * f->shape[3]));
    }
    return 1;
}

static void test_loader(void) {
    char p[512];
    path_in(p, sizeof p, "many");
    mkdir(p, 0755);
    unsigned char px[3 * 20 * 26];
    for (int k = 0; k < 13; k++) {
        for (int i = 0; i < 3 * 20 * 26; i++) px[i] = (unsigned char)((i * (k + 3) + k * 17) % 256);
        char name[64];
        snprintf(name, sizeof name, "many/img%02d.png", k);
        path_in(p, sizeof p, name);
        write_image(p, px, 3, 20, 26);
    }
    ldm_data_image_folder_opts o = folder_opts("many", 16);
    o.random_crop = 1;
    o.flip_p = 0.5f;
    ldm_dataset *ds;
    if (ldm_dataset_image_folder(ctx, &ds, &o)) { lt_report(0, "loader dataset", "%s", ldm_ctx_error(ctx)); return; }
    enum { N = 3 * 5 }; /* 3 epochs of 4 batches + END */
    static batch_sig sig[4][N];
    static const int workers[4] = {0, 1, 3, 2};
    int ok = 1;
    for (int w = 0; w < 3; w++) {
        ldm_data_loader *ld;
        ldm_data_loader_opts lo;
        memset(&lo, 0, sizeof lo);
        lo.batch_size = 4;
        lo.num_workers = workers[w];
        lo.shuffle = 1;
        lo.seed = 1234;
        ok &= !ldm_data_loader_create(ctx, &ld, ds, &lo) && run_loader(ld, sig[w], N);
        if (w == 0) LT_CHECK(ldm_data_loader_batches(ld) == 4, "13 items, batch 4, drop_last false: 4 batches per epoch");
        ldm_data_loader_destroy(ld);
    }
    LT_CHECK(ok, "loaders with 0, 1 and 3 workers ran");
    LT_CHECK(!memcmp(sig[0], sig[1], sizeof sig[0]) && !memcmp(sig[0], sig[2], sizeof sig[0]),
             "same seed: identical batches (indices and pixels) for num_workers 0, 1 and 3");
    int ends = 1, sizes = 1, covers = 1;
    for (int e = 0; e < 3; e++) {
        int seen[13] = {0};
        ends &= sig[0][e * 5 + 4].size == -1;
        for (int b = 0; b < 4; b++) {
            batch_sig *s = &sig[0][e * 5 + b];
            sizes &= s->size == (b < 3 ? 4 : 1) && s->epoch == e && s->batch == b;
            for (int i = 0; i < s->size; i++) seen[s->index[i]]++;
        }
        for (int i = 0; i < 13; i++) covers &= seen[i] == 1;
    }
    LT_CHECK(ends && sizes, "LDM_DATA_END once per epoch; last batch holds the remaining item");
    LT_CHECK(covers, "each epoch visits every item exactly once");
    LT_CHECK(memcmp(sig[0][0].index, sig[0][5].index, sizeof sig[0][0].index) && sig[0][0].h != sig[0][5].h,
             "epochs differ (order and augmentation)");

    /* save after epoch 1 batch 2, continue; a new loader seeking there sees the same batches */
    ldm_data_loader *a, *b;
    ldm_data_loader_opts lo;
    memset(&lo, 0, sizeof lo);
    lo.batch_size = 4;
    lo.num_workers = 3;
    lo.shuffle = 1;
    lo.seed = 1234;
    ok = !ldm_data_loader_create(ctx, &a, ds, &lo);
    batch_sig head[7], rest_a[8], rest_b[8], rest_c[8];
    ok = ok && run_loader(a, head, 7);
    ldm_data_state st = ldm_data_loader_state(a);
    LT_CHECK(st.epoch == 1 && st.batch == 2, "state after 7 calls: epoch 1, batch 2");
    ok = ok && run_loader(a, rest_a, 8);
    lo.num_workers = 2;
    ok = ok && !ldm_data_loader_create(ctx, &b, ds, &lo) && !ldm_data_loader_seek(ctx, b, st) && run_loader(b, rest_b, 8);
    LT_CHECK(ok && !memcmp(rest_a, rest_b, sizeof rest_a) && !memcmp(rest_a, &sig[0][7], sizeof rest_a),
             "restored loader (another worker count) continues with exactly the same batches");
    ok = ok && !ldm_data_loader_seek(ctx, a, st) && run_loader(a, rest_c, 8);
    LT_CHECK(ok && !memcmp(rest_a, rest_c, sizeof rest_a), "seeking back on a running threaded loader replays the same batches");
    ldm_data_state end = {1, 4};
    batch_sig e1[2];
    ok = !ldm_data_loader_seek(ctx, a, end) && run_loader(a, e1, 2);
    LT_CHECK(ok && e1[0].size == -1 && e1[1].epoch == 2 && e1[1].batch == 0, "a state at the end of an epoch resumes with END, then the next epoch");
    ldm_data_state badst = {0, 9};
    LT_CHECK(ldm_data_loader_seek(ctx, a, badst) == LDM_ERR_INVALID, "seek past an epoch's batches is an error");
    ldm_ctx_clear_error(ctx);
    /* stop a threaded loader in the middle of an epoch (workers busy): clean shutdown */
    ldm_data_loader_destroy(a);
    ldm_data_loader_destroy(b);

    /* drop_last, no shuffle */
    lo.drop_last = 1;
    lo.shuffle = 0;
    lo.num_workers = 2;
    lo.prefetch = 1;
    batch_sig d[4];
    ok = !ldm_data_loader_create(ctx, &a, ds, &lo) && run_loader(a, d, 4);
    LT_CHECK(ok && ldm_data_loader_batches(a) == 3 && d[3].size == -1 && d[2].size == 4 && d[0].index[0] == 0 && d[1].index[0] == 4 &&
             d[2].index[3] == 11, "drop_last: 3 full batches; no shuffle: indices in order");
    ldm_data_loader_destroy(a);
    lo.batch_size = 14;
    LT_CHECK(ldm_data_loader_create(ctx, &a, ds, &lo) == LDM_ERR_INVALID && has(ldm_ctx_error(ctx), "drop_last"),
             "fewer items than one batch with drop_last: error with a hint");
    ldm_ctx_clear_error(ctx);
    lo.batch_size = 4;
    lo.num_workers = LDM_DATA_MAX_WORKERS + 1;
    LT_CHECK(ldm_data_loader_create(ctx, &a, ds, &lo) == LDM_ERR_INVALID, "too many workers is an error");
    ldm_ctx_clear_error(ctx);

    /* batch tensors and collate */
    ldm_data_item items[2];
    char err[LDM_DATA_ERR_MAX];
    ldm_data_batch bt;
    ldm_dataset_get(ds, 0, 1, 0, &items[0], err, sizeof err);
    ldm_dataset_get(ds, 1, 1, 0, &items[1], err, sizeof err);
    ok = !ldm_data_collate(ctx, items, 2, &bt);
    ldm_tensor t = ldm_data_batch_tensor(&bt, "image");
    ldm_tensor none = ldm_data_batch_tensor(&bt, "LR_image");
    LT_CHECK(ok && t.ndim == 4 && t.shape[0] == 2 && t.shape[1] == 3 && t.shape[2] == 16 && t.shape[3] == 16 && none.data == NULL && !bt.class_label &&
             !memcmp(t.data + 3 * 16 * 16, items[1].field[0].data, sizeof(float) * 3 * 16 * 16),
             "collate: [B,C,H,W] host tensor, item k at offset k; absent field gives data NULL");
    ldm_data_batch_free(&bt);
    items[1].class_label = 2;
    LT_CHECK(ldm_data_collate(ctx, items, 2, &bt) == LDM_ERR_INVALID && has(ldm_ctx_error(ctx), "class_label"), "collate: labels on some items only is an error");
    ldm_ctx_clear_error(ctx);
    ldm_data_item_free(&items[0]);
    ldm_data_item_free(&items[1]);
    ldm_dataset_destroy(ds);
}

/* ---- config ----------------------------------------------------------------------------- */
static ldm_result cfg_module(const char *text, ldm_data_module **dm, char *msg, size_t n) {
    ldm_config *cfg;
    ldm_config_registry *reg;
    ldm_result r;
    *dm = NULL;
    ldm_config_create(&cfg);
    ldm_config_registry_create(&reg);
    r = ldm_data_register(reg);
    if (!r) r = ldm_config_load_string(cfg, text, "test.yaml", LDM_CONFIG_FORMAT_YAML);
    if (!r) r = ldm_data_module_from_config(cfg, reg, NULL, ctx, dm);
    snprintf(msg, n, "%s", r ? ldm_config_error(cfg) : "");
    ldm_config_registry_destroy(reg);
    ldm_config_destroy(cfg);
    return r;
}

static void test_config(void) {
    char text[4096], msg[4096], root[512];
    ldm_data_module *dm;
    path_in(root, sizeof root, "img");
    snprintf(text, sizeof text,
             "data:\n"
             "  target: main.DataModuleFromConfig\n"
             "  params:\n"
             "    batch_size: 2\n"
             "    wrap: true\n"
             "    train:\n"
             "      target: ImageFolderTrain\n"
             "      params:\n"
             "        root: %s\n"
             "        size: 16\n"
             "        val_fraction: 0.3\n"
             "    validation:\n"
             "      target: ldm.data.folder.ImageFolderValidation\n"
             "      params:\n"
             "        data_root: %s\n"
             "        size: 16\n"
             "        val_fraction: 0.3\n"
             "    test:\n"
             "      target: CacheDataset\n"
             "      params:\n"
             "        max_mb: 1\n"
             "        dataset: {target: ImageNetSRValidation, params: {root: %s, size: 16, degradation: pil_bicubic, split: all}}\n",
             root, root, root);
    warnings[0] = 0;
    ldm_result r = cfg_module(text, &dm, msg, sizeof msg);
    lt_report(r == LDM_OK, "config: DataModuleFromConfig with ImageFolderTrain/Validation and a cached ImageNetSRValidation", "%s", msg);
    if (r == LDM_OK) {
        LT_CHECK(dm->batch_size == 2 && dm->num_workers == 4 && dm->wrap && dm->shuffle[LDM_DATA_TRAIN] && !dm->shuffle[LDM_DATA_VALIDATION] &&
                 !dm->shuffle[LDM_DATA_TEST] && !dm->dataset[LDM_DATA_PREDICT],
                 "data module: num_workers null -> 2 * batch_size; train shuffled, validation/test not");
        LT_CHECK(ldm_dataset_len(dm->dataset[LDM_DATA_TRAIN]) == 4 && ldm_dataset_len(dm->dataset[LDM_DATA_VALIDATION]) == 2 &&
                 ldm_dataset_len(dm->dataset[LDM_DATA_TEST]) == 6, "splits: train 4, validation 2, test (all) 6");
        ldm_data_loader *ld;
        const ldm_data_batch *b;
        r = ldm_data_module_loader(ctx, dm, LDM_DATA_TEST, 23, &ld);
        r = r ? r : ldm_data_loader_next(ctx, ld, &b);
        LT_CHECK(!r && b->size == 2 && ldm_data_batch_field(b, "LR_image") && ldm_data_batch_field(b, "LR_image")->shape[2] == 4,
                 "module loader over the test split yields image and LR_image batches");
        if (r) { printf("     %s\n", ldm_ctx_error(ctx)); ldm_ctx_clear_error(ctx); }
        else ldm_data_loader_destroy(ld);
        LT_CHECK(ldm_data_module_loader(ctx, dm, LDM_DATA_PREDICT, 23, &ld) == LDM_ERR_NOT_FOUND, "no predict dataset: LDM_ERR_NOT_FOUND");
        ldm_ctx_clear_error(ctx);
        ldm_data_module_destroy(dm);
    }
    /* a misspelt key: file:line and a suggestion */
    snprintf(text, sizeof text,
             "data:\n  target: main.DataModuleFromConfig\n  params:\n    batch_size: 2\n    train:\n      target: ImageFolder\n"
             "      params:\n        root: %s\n        sise: 16\n", root);
    r = cfg_module(text, &dm, msg, sizeof msg);
    LT_CHECK(r && has(msg, "test.yaml:9") && has(msg, "sise") && has(msg, "did you mean 'size'"), "unknown dataset key: file:line with did-you-mean");
    printf("     %s\n", msg);
    snprintf(text, sizeof text, "data:\n  target: main.DataModuleFromConfig\n  params:\n    batch_size: 2\n    num_worker: 3\n");
    r = cfg_module(text, &dm, msg, sizeof msg);
    LT_CHECK(r && has(msg, "test.yaml:5") && has(msg, "num_workers"), "unknown data module key: file:line with did-you-mean");
    printf("     %s\n", msg);
    snprintf(text, sizeof text, "data:\n  target: main.DataModuleFromConfig\n  params:\n    batch_size: 2\n    train:\n      target: ImageFoldr\n");
    r = cfg_module(text, &dm, msg, sizeof msg);
    LT_CHECK(r && has(msg, "test.yaml:6") && has(msg, "ImageFolder"), "unknown dataset target: file:line and the known names");
    snprintf(text, sizeof text, "data:\n  target: main.DataModuleFromConfig\n  params:\n    batch_size: 2\n    train:\n      target: ImageFolder\n"
                                "      params:\n        size: 16\n");
    r = cfg_module(text, &dm, msg, sizeof msg);
    LT_CHECK(r && has(msg, "test.yaml:7") && has(msg, "root"), "missing root: file:line naming the key");
    printf("     %s\n", msg);
    snprintf(text, sizeof text, "data:\n  target: main.DataModuleFromConfig\n  params:\n    batch_size: 2\n    train:\n      target: ImageNetSRTrain\n"
                                "      params:\n        root: %s\n        size: 16\n        degradation: cv_bicubc\n", root);
    r = cfg_module(text, &dm, msg, sizeof msg);
    LT_CHECK(r && has(msg, "test.yaml:10") && has(msg, "did you mean 'cv_bicubic'"), "misspelt degradation: file:line with did-you-mean");
    printf("     %s\n", msg);
    snprintf(text, sizeof text, "data:\n  target: main.DataModuleFromConfig\n  params:\n    batch_size: 2\n    train:\n      target: ImageFolder\n"
                                "      params:\n        root: %s/nothing-here\n", root);
    r = cfg_module(text, &dm, msg, sizeof msg);
    LT_CHECK(r == LDM_ERR_IO && has(msg, "test.yaml:7") && has(msg, "nothing-here"), "dataset construction errors carry the params' file:line");
    printf("     %s\n", msg);
    snprintf(text, sizeof text, "data:\n  target: ImageFolder\n  params:\n    root: %s\n", root);
    r = cfg_module(text, &dm, msg, sizeof msg);
    LT_CHECK(r && has(msg, "test.yaml:2") && has(msg, "DataModuleFromConfig"), "data.target must be the data module");
    snprintf(text, sizeof text, "data:\n  target: main.DataModuleFromConfig\n  params:\n    batch_size: 2\n    train:\n      target: DataModuleFromConfig\n"
                                "      params: {batch_size: 1}\n");
    r = cfg_module(text, &dm, msg, sizeof msg);
    LT_CHECK(r && has(msg, "not a dataset"), "a data module as a split is an error");
    snprintf(text, sizeof text, "data:\n  target: main.DataModuleFromConfig\n  params:\n    num_workers: 0\n");
    r = cfg_module(text, &dm, msg, sizeof msg);
    LT_CHECK(r == LDM_ERR_NOT_FOUND && has(msg, "batch_size"), "batch_size is required");

    /* Fashion-MNIST through the config (defaults: root /usr/share/datasets/fashion-mnist) */
    FILE *f = fopen(FMNIST "t10k-images-idx3-ubyte.gz", "rb");
    if (!f) { printf("SKIP FashionMNIST config: %s not installed\n", FMNIST); return; }
    fclose(f);
    snprintf(text, sizeof text, "data:\n  target: main.DataModuleFromConfig\n  params:\n    batch_size: 8\n    num_workers: 2\n    validation:\n"
                                "      target: ldm.data.mnist.FashionMNIST\n      params: {split: test, size: 32, channels: 3}\n");
    r = cfg_module(text, &dm, msg, sizeof msg);
    lt_report(r == LDM_OK, "config: FashionMNIST test split, padded to 32, 3 channels", "%s", msg);
    if (r) return;
    ldm_data_loader *ld;
    const ldm_data_batch *b;
    r = ldm_data_module_loader(ctx, dm, LDM_DATA_VALIDATION, 23, &ld);
    r = r ? r : ldm_data_loader_next(ctx, ld, &b);
    if (!r) {
        const ldm_data_bfield *img = ldm_data_batch_field(b, "image");
        int border = 1;
        for (int k = 0; k < 8; k++)
            for (int c = 0; c < 3; c++)
                for (int i = 0; i < 32; i++) {
                    const float *pl = img->data + ((size_t)k * 3 + c) * 32 * 32;
                    border &= pl[i] == -1.0f && pl[31 * 32 + i] == -1.0f && pl[i * 32] == -1.0f && pl[i * 32 + 31] == -1.0f;
                }
        LT_CHECK(img->shape[0] == 8 && img->shape[1] == 3 && img->shape[2] == 32 && b->class_label && b->class_label[0] >= 0 &&
                 b->class_label[0] <= 9 && b->index[0] == 0 && border && ldm_dataset_len(dm->dataset[LDM_DATA_VALIDATION]) == 10000,
                 "FashionMNIST batch: [8,3,32,32], black 2-pixel border, labels 0..9, in order");
        ldm_data_loader_destroy(ld);
    } else {
        lt_report(0, "FashionMNIST loader", "%s", ldm_ctx_error(ctx));
        ldm_ctx_clear_error(ctx);
    }
    ldm_data_module_destroy(dm);
}

/* ---- the shipped demo photos -------------------------------------------------------------- */
static void test_demo_photos(void) {
    ldm_data_image_folder_opts o;
    memset(&o, 0, sizeof o);
    o.src.root = "../data";
    o.size = 64;
    o.random_crop = 1;
    o.flip_p = 0.5f;
    ldm_dataset *ds;
    ldm_result r = ldm_dataset_image_folder(ctx, &ds, &o);
    lt_report(r == LDM_OK && ldm_dataset_len(ds) >= 5 && ldm_dataset_skipped(ds) == 0, "data/: the demo photos load", "%s", ldm_ctx_error(ctx));
    if (r) { ldm_ctx_clear_error(ctx); return; }
    ldm_data_loader *ld;
    ldm_data_loader_opts lo;
    memset(&lo, 0, sizeof lo);
    lo.batch_size = 3;
    lo.num_workers = 2;
    lo.shuffle = 1;
    const ldm_data_batch *b;
    int ok = !ldm_data_loader_create(ctx, &ld, ds, &lo), n = 0;
    double lo_v = 1, hi_v = -1;
    while (ok && (r = ldm_data_loader_next(ctx, ld, &b)) == LDM_OK) {
        const ldm_data_bfield *f = ldm_data_batch_field(b, "image");
        for (int64_t i = 0; i < f->shape[0] * 3 * 64 * 64; i++) { lo_v = fmin(lo_v, f->data[i]); hi_v = fmax(hi_v, f->data[i]); }
        n += b->size;
    }
    LT_CHECK(ok && r == LDM_DATA_END && n == ldm_dataset_len(ds) && lo_v >= -1.0 && hi_v <= 1.0 && hi_v - lo_v > 1.5,
             "data/: one epoch of [3,64,64] crops in [-1, 1]");
    if (ok) ldm_data_loader_destroy(ld);
    ldm_dataset_destroy(ds);
    /* the data section data/README.md shows */
    char msg[2048];
    ldm_data_module *dm;
    r = cfg_module("data:\n  target: main.DataModuleFromConfig\n  params:\n    batch_size: 4\n    num_workers: 2\n    train:\n"
                   "      target: ldm.data.folder.ImageFolderTrain\n      params: {root: ../data, size: 128, val_fraction: 0.2}\n"
                   "    validation:\n      target: ldm.data.folder.ImageFolderValidation\n"
                   "      params: {root: ../data, size: 128, val_fraction: 0.2}\n", &dm, msg, sizeof msg);
    LT_CHECK(r == LDM_OK && ldm_dataset_len(dm->dataset[LDM_DATA_TRAIN]) == 5 && ldm_dataset_len(dm->dataset[LDM_DATA_VALIDATION]) == 1,
             "data/README.md's config: 5 training photos, 1 validation photo");
    if (r) printf("     %s\n", msg);
    else ldm_data_module_destroy(dm);
}

int main(void) {
    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.threads = 1;
    if (ldm_ctx_create(&ctx, &s)) { printf("FAIL ctx\n"); return 1; }
    if (ldm_weights_open(ctx, &ref, FIX "data_ref.safetensors")) { printf("FAIL fixture: %s\n", ldm_ctx_error(ctx)); return 1; }
    if (!lt_mkdtemp(tmp, sizeof tmp, "ldm_test_data")) return 1;
    test_resize();
    make_folder();
    test_folder();
    test_sr();
    test_idx();
    test_cache();
    test_loader();
    test_config();
    test_demo_photos();
    free(rgb);
    lt_rm_rf(tmp);
    ldm_weights_close(ref);
    ldm_ctx_destroy(ctx);
    return lt_finish("test_data");
}
