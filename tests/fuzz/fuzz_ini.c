/* fuzz_ini.c - libFuzzer harness: INI configs (ldm_config_load of a .ini file).
   Seeds: the .ini files of tests/configs and configs. */
#include "fuzz_config.h"

static int fuzz_ini_run(const uint8_t *data, size_t size, char *err, size_t errn) {
    return fuzz_config_body("in.ini", data, size, err, errn);
}
FUZZ_ENTRY(fuzz_ini_run)
