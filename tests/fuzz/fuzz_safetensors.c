/* fuzz_safetensors.c - libFuzzer harness: safetensors through ldm_weights_open/_read.
   Seeds: the .safetensors files of tests/fixtures. */
#include "fuzz_common.h"

static int fuzz_safetensors_run(const uint8_t *data, size_t size, char *err, size_t errn) {
    return fuzz_weights_body(fuzz_file("in.safetensors", data, size), err, errn);
}
FUZZ_ENTRY(fuzz_safetensors_run)
