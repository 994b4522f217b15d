/* image_io.h - image files <-> float tensors for the ldm.h examples (stb_image underneath).
   Pixels map [0,255] -> [-1,1] as in CompVis (x/127.5 - 1); saving clamps to [-1,1] and
   rounds. Include it in one example file only: it carries stb's implementations. */
#ifndef LDM_EXAMPLES_IMAGE_IO_H
#define LDM_EXAMPLES_IMAGE_IO_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#endif
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_FAILURE_USERMSG
#include "stb_image.h"
#include "stb_image_write.h"
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

/* Loads PNG/JPG/BMP/TGA/... as `channels` planes [C,H,W] in [-1,1] (grey is replicated, alpha
   dropped). Returns malloc'd floats, or NULL with a message in err. */
static float *ex_image_load(const char *path, int channels, int *w, int *h, char *err, size_t errn) {
    int n = 0;
    unsigned char *px = stbi_load(path, w, h, &n, 0);
    if (!px) { snprintf(err, errn, "%.200s: cannot read image (%s)", path, stbi_failure_reason()); return NULL; }
    size_t plane = (size_t)*w * (size_t)*h;
    float *out = (float *)malloc(sizeof(float) * plane * (size_t)channels);
    if (!out) { stbi_image_free(px); snprintf(err, errn, "%.200s: out of memory", path); return NULL; }
    int colour = n >= 3;
    for (int c = 0; c < channels; c++)
        for (size_t i = 0; i < plane; i++) {
            int src = colour ? (c < 3 ? c : 2) : 0;
            out[(size_t)c * plane + i] = (float)px[i * (size_t)n + (size_t)src] / 127.5f - 1.0f;
        }
    stbi_image_free(px);
    return out;
}

/* Writes planes [C,H,W] in [-1,1] (C = 1 or 3) as PNG. Returns 0 on success. */
static int ex_image_save_png(const char *path, const float *chw, int c, int h, int w, char *err, size_t errn) {
    size_t plane = (size_t)w * (size_t)h;
    unsigned char *px = (unsigned char *)malloc(plane * (size_t)c);
    if (!px) { snprintf(err, errn, "%.200s: out of memory", path); return -1; }
    for (size_t i = 0; i < plane; i++)
        for (int k = 0; k < c; k++) {
            float v = chw[(size_t)k * plane + i];
            v = v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v;
            px[i * (size_t)c + (size_t)k] = (unsigned char)lrintf((v + 1.0f) * 127.5f);
        }
    int ok = stbi_write_png(path, w, h, c, px, w * c);
    free(px);
    if (!ok) { snprintf(err, errn, "%.200s: cannot write PNG", path); return -1; }
    return 0;
}

/* "x.png" -> 1 when path ends with ext (case-insensitive) */
static int ex_has_ext(const char *path, const char *ext) {
    size_t n = strlen(path), e = strlen(ext);
    if (n < e) return 0;
    for (size_t i = 0; i < e; i++) {
        char a = path[n - e + i], b = ext[i];
        if (a >= 'A' && a <= 'Z') a = (char)(a - 'A' + 'a');
        if (a != b) return 0;
    }
    return 1;
}
#endif
