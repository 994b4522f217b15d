/* fuzz_yaml.c - libFuzzer harness: the CompVis YAML subset (ldm_config_load of a .yaml file).
   Seeds: the .yaml files of tests/configs and configs. */
#include "fuzz_config.h"

static int fuzz_yaml_run(const uint8_t *data, size_t size, char *err, size_t errn) {
    return fuzz_config_body("in.yaml", data, size, err, errn);
}
FUZZ_ENTRY(fuzz_yaml_run)
