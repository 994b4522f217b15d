/* video_io.h - video clips for the ldm driver: two datasets (clips as folders of frames, and
   clips synthesised as moving crops of still photos), a GIF encoder and a frame-folder writer.

   A clip of T RGB frames is one item field "video" [T*3, H, W] (frame-major, so a batch
   [B, T*3, H, W] is B T C H W in memory); ldm_data.h's items are 3-D, and the video model
   (model_video.h) reads the field back as [B, T, 3, H, W].

   Datasets (registered by ex_video_data_register into the driver's data registry):
     ldm.data.video.FrameFolders (alias FrameFolders)   root/<clip>/<frame>.png|jpg...: one
         clip per sub-folder (sorted by name), frames sorted by name bytewise; every frame of
         a clip must have the clip's size (an error names the file). num_frames consecutive
         frames from a random start (random_crop) or the first; size: a size x size crop,
         random or central, of frames at least that large (no rescale: the LR condition is
         made by the model, and a rescale would blur the ground truth); frame_stride.
     ldm.data.video.MovingCrops (alias MovingCrops)     every photo under root, its shorter
         side rescaled to image_size (INTER_AREA), gives clips_per_image clips: a size x size
         window starting at a random place and moving by a constant integer velocity of up to
         max_speed pixels per frame (bouncing off the borders), num_frames frames. Training
         (random: true) draws start and velocity per (seed, epoch, item); random: false draws
         them once per item (the same clips every epoch: validation and test).
   GIF (ex_gif_write): GIF89a, a fixed 6x7x6 colour cube (252 of 256 palette entries, green
   gets the extra level), nearest colour per pixel, no dithering, LZW with codes of 3..12 bits
   and a clear code when the table fills; looped (NETSCAPE2.0). Include after image_io.h. */
#ifndef EX_VIDEO_IO_H
#define EX_VIDEO_IO_H

#include "ldm_config.h"
#include "ldm_data.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- folder scanning ---- */
typedef struct ex_vid_names { char **v; int n, cap; } ex_vid_names;
static void ex__vid_names_free(ex_vid_names *s) {
    for (int i = 0; i < s->n; i++) free(s->v[i]);
    free(s->v);
    memset(s, 0, sizeof *s);
}
static int ex__vid_names_add(ex_vid_names *s, const char *a) {
    if (s->n == s->cap) {
        int cap = s->cap ? 2 * s->cap : 16;
        char **v = (char **)realloc(s->v, sizeof(char *) * (size_t)cap);
        if (!v) return -1;
        s->v = v; s->cap = cap;
    }
    size_t n = strlen(a) + 1;
    if (!(s->v[s->n] = (char *)malloc(n))) return -1;
    memcpy(s->v[s->n++], a, n);
    return 0;
}
static int ex__vid_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }
static int ex__vid_is_image(const char *name) {
    static const char *const ext[] = {".png", ".jpg", ".jpeg", ".bmp", ".tga"};
    size_t n = strlen(name);
    for (int i = 0; i < 5; i++) {
        size_t e = strlen(ext[i]);
        if (n > e) {
            int ok = 1;
            for (size_t k = 0; k < e && ok; k++) {
                char c = name[n - e + k];
                if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
                ok = c == ext[i][k];
            }
            if (ok) return 1;
        }
    }
    return 0;
}
/* The entries of dir (full paths), sorted: dirs = 1 sub-folders, 0 image files. */
static ldm_result ex__vid_list(const char *dir, int dirs, ex_vid_names *out, char *err, size_t errn) {
    DIR *d = opendir(dir);
    memset(out, 0, sizeof *out);
    if (!d) { snprintf(err, errn, "%.300s: cannot open the folder (%s)", dir, strerror(errno)); return LDM_ERR_IO; }
    struct dirent *e;
    char path[1024];
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st)) continue;
        int is_dir = S_ISDIR(st.st_mode);
        if (dirs ? !is_dir : (is_dir || !ex__vid_is_image(e->d_name))) continue;
        if (ex__vid_names_add(out, path)) { closedir(d); ex__vid_names_free(out); snprintf(err, errn, "out of memory"); return LDM_ERR_NOMEM; }
    }
    closedir(d);
    if (out->n) qsort(out->v, (size_t)out->n, sizeof(char *), ex__vid_cmp);
    return LDM_OK;
}

/* ---- FrameFolders ---- */
typedef struct ex_vid_frames {
    ex_vid_names clips;
    ex_vid_names *frames;         /* per clip */
    int num_frames, size, stride, random;
} ex_vid_frames;
static int64_t ex__vf_len(void *self) { return ((ex_vid_frames *)self)->clips.n; }
/* base: every frame of the clip stacked, [n*3, H, W] */
static ldm_result ex__vf_load(void *self, int64_t i, ldm_data_image *out, char *err, size_t errn) {
    ex_vid_frames *s = (ex_vid_frames *)self;
    const ex_vid_names *f = &s->frames[i];
    memset(out, 0, sizeof *out);
    out->label = -1; out->index = i;
    for (int k = 0; k < f->n; k++) {
        ldm_data_image im;
        ldm_result r = ldm_data_image_load(f->v[k], 3, &im, err, errn);
        if (r) { ldm_data_image_free(out); return r; }
        if (!k) {
            out->c = 3 * f->n; out->h = im.h; out->w = im.w;
            out->px = (unsigned char *)malloc((size_t)out->c * im.h * im.w);
            if (!out->px) { ldm_data_image_free(&im); snprintf(err, errn, "out of memory"); return LDM_ERR_NOMEM; }
        } else if (im.h != out->h || im.w != out->w) {
            snprintf(err, errn, "%.300s: frame is %dx%d but the clip's first frame %.300s is %dx%d (hint: every frame of a clip must have "
                     "one size)", f->v[k], im.w, im.h, f->v[0], out->w, out->h);
            ldm_data_image_free(&im); ldm_data_image_free(out);
            return LDM_ERR_FORMAT;
        }
        memcpy(out->px + (size_t)k * 3 * im.h * im.w, im.px, (size_t)3 * im.h * im.w);
        ldm_data_image_free(&im);
    }
    return LDM_OK;
}
/* T frames, stride apart, from a start; a size x size window; bytes -> [-1, 1] */
static ldm_result ex__vid_emit(ldm_data_item *out, const ldm_data_image *base, int T, int t0, int stride, int y0, int x0, int size,
                               const int *dy, const int *dx, char *err, size_t errn) {
    ldm_data_field *fd = ldm_data_item_add(out, "video", 3 * T, size, size);
    if (!fd) { snprintf(err, errn, "out of memory"); return LDM_ERR_NOMEM; }
    for (int t = 0; t < T; t++) {
        int f = t0 + t * stride, yy = y0 + (dy ? dy[t] : 0), xx = x0 + (dx ? dx[t] : 0);
        for (int c = 0; c < 3; c++)
            for (int y = 0; y < size; y++) {
                const unsigned char *src = base->px + (((size_t)(base->c == 3 ? 0 : f) * 3 + c) * base->h + (size_t)(yy + y)) * base->w + xx;
                float *dst = fd->data + (((size_t)t * 3 + c) * size + y) * size;
                for (int x = 0; x < size; x++) dst[x] = (float)src[x] / 127.5f - 1.0f;
            }
    }
    return LDM_OK;
}
static ldm_result ex__vf_augment(void *self, int64_t i, const ldm_data_image *base, ldm_rng *rng, ldm_data_item *out, char *err, size_t errn) {
    ex_vid_frames *s = (ex_vid_frames *)self;
    int n = base->c / 3, span = (s->num_frames - 1) * s->stride + 1;
    int size = s->size ? s->size : (base->h < base->w ? base->h : base->w);
    if (n < span || base->h < size || base->w < size) {
        snprintf(err, errn, "%.300s: %d frames of %dx%d; num_frames %d at frame_stride %d needs %d frames of at least %dx%d", s->clips.v[i], n,
                 base->w, base->h, s->num_frames, s->stride, span, size, size);
        return LDM_ERR_INVALID;
    }
    int t0 = 0, y0 = (base->h - size) / 2, x0 = (base->w - size) / 2;
    if (s->random) {
        t0 = (int)((n - span + 1) * ldm_data_uniform(rng));
        y0 = (int)((base->h - size + 1) * ldm_data_uniform(rng));
        x0 = (int)((base->w - size + 1) * ldm_data_uniform(rng));
    }
    out->class_label = -1; out->index = i;
    return ex__vid_emit(out, base, s->num_frames, t0, s->stride, y0, x0, size, NULL, NULL, err, errn);
}
static void ex__vf_destroy(void *self) {
    ex_vid_frames *s = (ex_vid_frames *)self;
    if (!s) return;
    for (int i = 0; s->frames && i < s->clips.n; i++) ex__vid_names_free(&s->frames[i]);
    free(s->frames);
    ex__vid_names_free(&s->clips);
    free(s);
}
static const ldm_dataset_vtable ex__vf_vt = {"FrameFolders", ex__vf_len, ex__vf_load, ex__vf_augment, ex__vf_destroy};

/* ---- MovingCrops ---- */
typedef struct ex_vid_moving {
    ex_vid_names photos;
    int num_frames, size, image_size, clips_per_image, max_speed, random;
} ex_vid_moving;
static int64_t ex__vm_len(void *self) { ex_vid_moving *s = (ex_vid_moving *)self; return (int64_t)s->photos.n * s->clips_per_image; }
static ldm_result ex__vm_load(void *self, int64_t i, ldm_data_image *out, char *err, size_t errn) {
    ex_vid_moving *s = (ex_vid_moving *)self;
    const char *path = s->photos.v[i / s->clips_per_image];
    ldm_data_image im;
    ldm_result r = ldm_data_image_load(path, 3, &im, err, errn);
    if (r) return r;
    int sh = im.h < im.w ? im.h : im.w;
    int h = (int)((int64_t)im.h * s->image_size / sh), w = (int)((int64_t)im.w * s->image_size / sh);
    *out = im;
    out->index = i; out->label = -1;
    if (h == im.h && w == im.w) return LDM_OK;
    unsigned char *px = (unsigned char *)malloc((size_t)3 * h * w);
    if (!px) { ldm_data_image_free(&im); snprintf(err, errn, "out of memory"); return LDM_ERR_NOMEM; }
    if ((r = ldm_data_resize_u8(px, h, w, im.px, 3, im.h, im.w, LDM_INTERP_AREA))) {
        free(px); ldm_data_image_free(&im);
        snprintf(err, errn, "%.300s: resizing to %dx%d failed", path, w, h);
        return r;
    }
    free(im.px);
    out->px = px; out->h = h; out->w = w;
    return LDM_OK;
}
/* a position moving by v per frame inside [0, room], reflected at the ends */
static int ex__vm_bounce(int p0, int v, int t, int room) {
    if (room <= 0) return 0;
    int64_t p = (int64_t)p0 + (int64_t)v * t, period = 2 * (int64_t)room;
    p %= period;
    if (p < 0) p += period;
    return (int)(p <= room ? p : period - p);
}
static ldm_result ex__vm_augment(void *self, int64_t i, const ldm_data_image *base, ldm_rng *rng, ldm_data_item *out, char *err, size_t errn) {
    ex_vid_moving *s = (ex_vid_moving *)self;
    if (base->h < s->size || base->w < s->size) {
        snprintf(err, errn, "%.300s: %dx%d after the rescale is smaller than size %d (hint: image_size >= size)", s->photos.v[i / s->clips_per_image],
                 base->w, base->h, s->size);
        return LDM_ERR_INVALID;
    }
    ldm_rng fixed = ldm_data_item_rng(0x5eed, 0, i);
    ldm_rng *g = s->random ? rng : &fixed;
    int ry = base->h - s->size, rx = base->w - s->size;
    int y0 = (int)((ry + 1) * ldm_data_uniform(g)), x0 = (int)((rx + 1) * ldm_data_uniform(g));
    int vy = (int)((2 * s->max_speed + 1) * ldm_data_uniform(g)) - s->max_speed;
    int vx = (int)((2 * s->max_speed + 1) * ldm_data_uniform(g)) - s->max_speed;
    int dy[256], dx[256];
    for (int t = 0; t < s->num_frames; t++) {
        dy[t] = ex__vm_bounce(y0, vy, t, ry) - y0;
        dx[t] = ex__vm_bounce(x0, vx, t, rx) - x0;
    }
    out->class_label = -1; out->index = i;
    return ex__vid_emit(out, base, s->num_frames, 0, 0, y0, x0, s->size, dy, dx, err, errn);
}
static void ex__vm_destroy(void *self) {
    ex_vid_moving *s = (ex_vid_moving *)self;
    if (!s) return;
    ex__vid_names_free(&s->photos);
    free(s);
}
static const ldm_dataset_vtable ex__vm_vt = {"MovingCrops", ex__vm_len, ex__vm_load, ex__vm_augment, ex__vm_destroy};

/* ---- config glue ---- */
#define EX_VIDEO_FRAMES_KEYS(X)                                                                        \
    X(root, STR, NULL, "folder of clips: one sub-folder of PNG/JPG frames per clip")                  \
    X(num_frames, BETWEEN(INT, 1, 256), NULL, "frames per clip T")                                     \
    X(size, AT_LEAST(INT, 0), "0", "a size x size crop of every frame (0: the largest square)")       \
    X(frame_stride, AT_LEAST(INT, 1), "1", "take every frame_stride-th frame")                         \
    X(random_crop, BOOL, "false", "random start frame and spatial crop (else the first frames, centred)") \
    X(max_items, AT_LEAST(INT, 0), "0", "use only the first max_items clips (0: all)")
#define EX_VIDEO_MOVING_KEYS(X)                                                                        \
    X(root, STR, NULL, "folder of still photos (PNG/JPG), not recursive")                             \
    X(num_frames, BETWEEN(INT, 1, 256), NULL, "frames per clip T")                                     \
    X(size, AT_LEAST(INT, 1), NULL, "frame size (square)")                                             \
    X(image_size, AT_LEAST(INT, 1), "96", "each photo's shorter side is rescaled to this first (INTER_AREA)") \
    X(clips_per_image, AT_LEAST(INT, 1), "8", "clips made from each photo")                            \
    X(max_speed, AT_LEAST(INT, 0), "2", "largest motion, pixels per frame on each axis")               \
    X(random, BOOL, "true", "new start and velocity every epoch (false: fixed per clip)")             \
    X(max_items, AT_LEAST(INT, 0), "0", "use only the first max_items photos (0: all)")
LDM_CONFIG_DECLARE(ex_video_frames_cfg, EX_VIDEO_FRAMES_KEYS);
LDM_CONFIG_DEFINE(ex_video_frames_cfg, EX_VIDEO_FRAMES_KEYS)
LDM_CONFIG_DECLARE(ex_video_moving_cfg, EX_VIDEO_MOVING_KEYS);
LDM_CONFIG_DEFINE(ex_video_moving_cfg, EX_VIDEO_MOVING_KEYS)

static ldm_result ex__vid_cfgerr(ldm_config *cfg, ldm_result r, const ldm_config_node *params, const char *msg) {
    return ldm_config_seterr(cfg, r, "%s:%d: %s", params && params->file ? params->file : "<config>", params ? params->line : 0, msg);
}
static ldm_result ex__vf_ctor(ldm_config *cfg, const ldm_config_node *params, void *user, void *arg, void **out) {
    (void)user;
    ex_video_frames_cfg p;
    ldm_result r = ex_video_frames_cfg_load(cfg, params, &p);
    char err[1024];
    if (r) return r;
    ex_vid_frames *s = (ex_vid_frames *)calloc(1, sizeof *s);
    if (!s) return ldm_config_seterr(cfg, LDM_ERR_NOMEM, "out of memory");
    s->num_frames = p.num_frames; s->size = p.size; s->stride = p.frame_stride; s->random = p.random_crop;
    if ((r = ex__vid_list(p.root, 1, &s->clips, err, sizeof err))) { ex__vf_destroy(s); return ex__vid_cfgerr(cfg, r, params, err); }
    if (p.max_items > 0 && s->clips.n > p.max_items) {
        for (int i = p.max_items; i < s->clips.n; i++) free(s->clips.v[i]);
        s->clips.n = p.max_items;
    }
    s->frames = (ex_vid_names *)calloc((size_t)s->clips.n + 1, sizeof *s->frames);
    if (!s->frames) { ex__vf_destroy(s); return ldm_config_seterr(cfg, LDM_ERR_NOMEM, "out of memory"); }
    int span = (s->num_frames - 1) * s->stride + 1;
    for (int i = 0; i < s->clips.n; i++) {
        if ((r = ex__vid_list(s->clips.v[i], 0, &s->frames[i], err, sizeof err))) { ex__vf_destroy(s); return ex__vid_cfgerr(cfg, r, params, err); }
        if (s->frames[i].n < span) {
            snprintf(err, sizeof err, "clip folder %.300s has %d frames; num_frames %d at frame_stride %d needs %d", s->clips.v[i], s->frames[i].n,
                     s->num_frames, s->stride, span);
            ex__vf_destroy(s);
            return ex__vid_cfgerr(cfg, LDM_ERR_INVALID, params, err);
        }
    }
    if (!s->clips.n) {
        snprintf(err, sizeof err, "%.300s has no clip folders (hint: root/<clip>/<frame>.png, one sub-folder per clip)", p.root);
        ex__vf_destroy(s);
        return ex__vid_cfgerr(cfg, LDM_ERR_NOT_FOUND, params, err);
    }
    if ((r = ldm_dataset_create((ldm_ctx *)arg, (ldm_dataset **)out, &ex__vf_vt, s))) return ldm_config_seterr(cfg, r, "%s", ldm_ctx_error((ldm_ctx *)arg));
    return LDM_OK;
}
static ldm_result ex__vm_ctor(ldm_config *cfg, const ldm_config_node *params, void *user, void *arg, void **out) {
    (void)user;
    ex_video_moving_cfg p;
    ldm_result r = ex_video_moving_cfg_load(cfg, params, &p);
    char err[1024];
    if (r) return r;
    ex_vid_moving *s = (ex_vid_moving *)calloc(1, sizeof *s);
    if (!s) return ldm_config_seterr(cfg, LDM_ERR_NOMEM, "out of memory");
    s->num_frames = p.num_frames; s->size = p.size; s->image_size = p.image_size; s->clips_per_image = p.clips_per_image;
    s->max_speed = p.max_speed; s->random = p.random;
    if ((r = ex__vid_list(p.root, 0, &s->photos, err, sizeof err))) { ex__vm_destroy(s); return ex__vid_cfgerr(cfg, r, params, err); }
    if (p.max_items > 0 && s->photos.n > p.max_items) {
        for (int i = p.max_items; i < s->photos.n; i++) free(s->photos.v[i]);
        s->photos.n = p.max_items;
    }
    if (!s->photos.n) {
        snprintf(err, sizeof err, "%.300s has no PNG/JPG photos", p.root);
        ex__vm_destroy(s);
        return ex__vid_cfgerr(cfg, LDM_ERR_NOT_FOUND, params, err);
    }
    if (p.image_size < p.size) { ex__vm_destroy(s); return ex__vid_cfgerr(cfg, LDM_ERR_INVALID, params, "image_size must be >= size"); }
    if ((r = ldm_dataset_create((ldm_ctx *)arg, (ldm_dataset **)out, &ex__vm_vt, s))) return ldm_config_seterr(cfg, r, "%s", ldm_ctx_error((ldm_ctx *)arg));
    return LDM_OK;
}
static ldm_result ex_video_data_register(ldm_config_registry *reg) {
    ldm_result r = ldm_config_registry_add(reg, "ldm.data.video.FrameFolders", "FrameFolders", ex__vf_ctor, NULL);
    return r ? r : ldm_config_registry_add(reg, "ldm.data.video.MovingCrops", "MovingCrops", ex__vm_ctor, NULL);
}
static void ex_video_data_help(FILE *f) {
    fprintf(f, "\n[data.params.<split>.params]  (target ldm.data.video.FrameFolders: field \"video\" [T*3, H, W])\n");
    ldm_config_schema_print(f, ex_video_frames_cfg_schema());
    fprintf(f, "\n[data.params.<split>.params]  (target ldm.data.video.MovingCrops: field \"video\" [T*3, H, W])\n");
    ldm_config_schema_print(f, ex_video_moving_cfg_schema());
}

/* ---- GIF ---- */
typedef struct ex__gif_bits { FILE *f; unsigned char blk[255]; int nblk; uint32_t acc; int nacc; } ex__gif_bits;
static void ex__gif_put(ex__gif_bits *b, int code, int width) {
    b->acc |= (uint32_t)code << b->nacc;
    b->nacc += width;
    while (b->nacc >= 8) {
        b->blk[b->nblk++] = (unsigned char)(b->acc & 0xff);
        b->acc >>= 8; b->nacc -= 8;
        if (b->nblk == 255) { fputc(255, b->f); fwrite(b->blk, 1, 255, b->f); b->nblk = 0; }
    }
}
/* One frame's indices (8-bit, min code size 8) as LZW sub-blocks. The dictionary is a
   (prefix code, byte) -> code table of 4096 x 256 entries searched directly. */
static int ex__gif_lzw(FILE *f, const unsigned char *idx, size_t n, uint16_t *dict) {
    ex__gif_bits b;
    memset(&b, 0, sizeof b);
    b.f = f;
    const int clear = 256, eoi = 257;
    int next = 258, width = 9;
    memset(dict, 0, sizeof(uint16_t) * 4096 * 256);
    fputc(8, f);
    ex__gif_put(&b, clear, width);
    int cur = idx[0];
    for (size_t i = 1; i < n; i++) {
        int k = idx[i];
        uint16_t *e = &dict[(size_t)cur * 256 + (size_t)k];
        if (*e) { cur = *e; continue; }
        ex__gif_put(&b, cur, width);
        if (next < 4096) {
            *e = (uint16_t)next++;
            if (next > (1 << width) && width < 12) width++;
        } else {   /* table full: start again */
            ex__gif_put(&b, clear, width);
            memset(dict, 0, sizeof(uint16_t) * 4096 * 256);
            next = 258; width = 9;
        }
        cur = k;
    }
    ex__gif_put(&b, cur, width);
    ex__gif_put(&b, eoi, width);
    if (b.nacc) ex__gif_put(&b, 0, 8 - b.nacc);
    if (b.nblk) { fputc(b.nblk, f); fwrite(b.blk, 1, (size_t)b.nblk, f); }
    fputc(0, f);
    return ferror(f) ? -1 : 0;
}
/* frames: T planes [3, H, W] in [-1, 1] back to back; delay in 1/100 s. 0 or -1 (err set). */
static int ex_gif_write(const char *path, const float *frames, int T, int H, int W, int delay_cs, char *err, size_t errn) {
    if (T < 1 || H < 1 || W < 1 || H > 65535 || W > 65535) { snprintf(err, errn, "%.300s: bad GIF size %dx%d x %d frames", path, W, H, T); return -1; }
    FILE *f = fopen(path, "wb");
    if (!f) { snprintf(err, errn, "%.300s: cannot write (%s)", path, strerror(errno)); return -1; }
    uint16_t *dict = (uint16_t *)malloc(sizeof(uint16_t) * 4096 * 256);
    unsigned char *idx = (unsigned char *)malloc((size_t)H * W);
    if (!dict || !idx) { free(dict); free(idx); fclose(f); snprintf(err, errn, "out of memory"); return -1; }
    unsigned char hdr[13] = {'G', 'I', 'F', '8', '9', 'a', 0, 0, 0, 0, 0xF7, 0, 0};
    hdr[6] = (unsigned char)(W & 255); hdr[7] = (unsigned char)(W >> 8); hdr[8] = (unsigned char)(H & 255); hdr[9] = (unsigned char)(H >> 8);
    fwrite(hdr, 1, 13, f);
    for (int i = 0; i < 256; i++) {   /* 6 x 7 x 6 cube, then black */
        unsigned char rgb[3] = {0, 0, 0};
        if (i < 252) { rgb[0] = (unsigned char)(i / 42 * 51); rgb[1] = (unsigned char)((i / 6) % 7 * 255 / 6); rgb[2] = (unsigned char)(i % 6 * 51); }
        fwrite(rgb, 1, 3, f);
    }
    static const unsigned char loop[19] = {0x21, 0xFF, 11, 'N', 'E', 'T', 'S', 'C', 'A', 'P', 'E', '2', '.', '0', 3, 1, 0, 0, 0};
    fwrite(loop, 1, 19, f);
    int rc = 0;
    size_t plane = (size_t)H * W;
    for (int t = 0; t < T && !rc; t++) {
        const float *fr = frames + (size_t)t * 3 * plane;
        for (size_t p = 0; p < plane; p++) {
            int q[3];
            for (int c = 0; c < 3; c++) {
                float v = fr[(size_t)c * plane + p];
                v = v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v;
                int levels = c == 1 ? 6 : 5;
                q[c] = (int)((v + 1.0f) * 0.5f * (float)levels + 0.5f);
            }
            idx[p] = (unsigned char)(q[0] * 42 + q[1] * 6 + q[2]);
        }
        unsigned char gce[8] = {0x21, 0xF9, 4, 0x04, (unsigned char)(delay_cs & 255), (unsigned char)(delay_cs >> 8), 0, 0};
        unsigned char desc[10] = {0x2C, 0, 0, 0, 0, (unsigned char)(W & 255), (unsigned char)(W >> 8), (unsigned char)(H & 255), (unsigned char)(H >> 8), 0};
        fwrite(gce, 1, 8, f);
        fwrite(desc, 1, 10, f);
        rc = ex__gif_lzw(f, idx, plane, dict);
    }
    fputc(0x3B, f);
    if (ferror(f)) rc = -1;
    if (fclose(f)) rc = -1;
    free(dict); free(idx);
    if (rc) snprintf(err, errn, "%.300s: write error", path);
    return rc;
}

/* dir/frame_%03d.png for T planes [3, H, W] in [-1, 1] (dir created), plus dir.gif. */
static int ex_video_write(const char *dir, const float *frames, int T, int H, int W, char *err, size_t errn) {
    char path[1200];
    if (mkdir(dir, 0777) && errno != EEXIST) { snprintf(err, errn, "%.300s: cannot create (%s)", dir, strerror(errno)); return -1; }
    for (int t = 0; t < T; t++) {
        snprintf(path, sizeof path, "%s/frame_%03d.png", dir, t);
        if (ex_image_save_png(path, frames + (size_t)t * 3 * H * W, 3, H, W, err, errn)) return -1;
    }
    snprintf(path, sizeof path, "%s.gif", dir);
    return ex_gif_write(path, frames, T, H, W, 12, err, errn);
}

#endif /* EX_VIDEO_IO_H */
