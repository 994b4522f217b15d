/* fuzz_torch.c - libFuzzer harness: PyTorch checkpoints, zip (torch.save since 1.6) and legacy
   (0.4 to 1.5), through the restricted unpickler. ldm_weights_open detects the kind from the
   content, so one harness covers both; the corpus is seeded with both kinds.
   Seeds: the .ckpt, .pt and .pth files of tests/fixtures. */
#include "fuzz_common.h"

static int fuzz_torch_run(const uint8_t *data, size_t size, char *err, size_t errn) {
    return fuzz_weights_body(fuzz_file("in.ckpt", data, size), err, errn);
}
FUZZ_ENTRY(fuzz_torch_run)
