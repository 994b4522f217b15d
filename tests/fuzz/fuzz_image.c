/* fuzz_image.c - libFuzzer harness: PNG/JPG/BMP/... through ldm_data_image_load (stb_image),
   which takes a path: the input goes to a scratch file. Decoded as RGB and as grey.
   Seeds: the PNGs of data, tests/fixtures/photo_chelsea.png, photo_astronaut.png, data_small.jpg. */
#include "fuzz_common.h"

static int fuzz_image_run(const uint8_t *data, size_t size, char *err, size_t errn) {
    const char *p = fuzz_file("in.img", data, size);
    int rc = 0;
    for (int c = 3; c >= 1 && !rc; c -= 2) {
        ldm_data_image im;
        if (ldm_data_image_load(p, c, &im, err, errn)) { rc = 1; break; }
        if (im.c != c || im.h <= 0 || im.w <= 0 || !im.px) {
            fprintf(stderr, "accepted image with c=%d h=%d w=%d px=%p\n", im.c, im.h, im.w, (void *)im.px);
            abort();
        }
        ldm_data_image_free(&im);
    }
    return rc;
}
FUZZ_ENTRY(fuzz_image_run)
