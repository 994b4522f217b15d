/* fuzz_config.h - the body the INI and YAML harnesses share: ldm_config_load on a file with
   the format's extension, then what a user does with a tree: typed getters, an override,
   the INI dump and a reload of it (the dump of an accepted tree must load and be equal). */
#ifndef FUZZ_CONFIG_H
#define FUZZ_CONFIG_H
#include "fuzz_common.h"

static int fuzz_config_body(const char *name, const uint8_t *data, size_t size, char *err, size_t errn) {
    ldm_config *cfg = NULL, *back = NULL;
    int rc = 0;
    if (ldm_config_create(&cfg)) return fuzz_reject(err, errn, "ldm_config_create failed");
    if (ldm_config_load(cfg, fuzz_file(name, data, size))) {
        rc = fuzz_reject(err, errn, ldm_config_error(cfg));
        goto done;
    }
    {
        const ldm_config_node *root = ldm_config_root(cfg);
        int iv;
        int64_t lv;
        double fv;
        const char *sv;
        ldm_config_ints il;
        ldm_config_floats fl;
        ldm_config_strs sl;
        char buf[256];
        /* getters on the first few keys, whatever their type: errors are fine, crashes not */
        for (int i = 0; i < root->n && i < 8; i++) {
            const ldm_config_node *c = root->child[i];
            const char *k = c->key ? c->key : "";
            (void)ldm_config_path(c, buf, sizeof buf);
            (void)ldm_config_find(root, k);
            (void)ldm_config_get_int(cfg, root, k, 0, &iv);
            (void)ldm_config_get_i64(cfg, root, k, 0, &lv);
            (void)ldm_config_get_float(cfg, root, k, 0, &fv);
            (void)ldm_config_get_str(cfg, root, k, "", &sv);
            (void)ldm_config_get_bool(cfg, root, k, 0, &iv);
            (void)ldm_config_get_int_list(cfg, root, k, "", &il);
            (void)ldm_config_get_float_list(cfg, root, k, "", &fl);
            (void)ldm_config_get_str_list(cfg, root, k, "", &sl);
        }
        (void)ldm_config_get_str(cfg, NULL, "model.target", "", &sv);
        (void)ldm_config_get_int_list(cfg, NULL, "model.params.ddconfig.ch_mult", "1,2", &il);
        (void)ldm_config_set(cfg, "model.params.fuzz=1", "<fuzz>");
        /* the INI dump of an accepted tree loads back to an equal tree */
        const char *dump = fuzz_path("dump.ini");
        FILE *f = fopen(dump, "wb");
        if (f && !ldm_config_dump(cfg, NULL, f)) {
            fclose(f);
            f = NULL;
            char why[512];
            if (ldm_config_create(&back)) goto done;
            if (ldm_config_load(back, dump)) {
                snprintf(err, errn, "the INI dump of an accepted tree does not load: %s", ldm_config_error(back));
                fprintf(stderr, "%s\n", err);
                abort();
            }
            if (!ldm_config_equal(root, ldm_config_root(back), why, sizeof why)) {
                fprintf(stderr, "INI dump round trip differs: %s\n", why);
                abort();
            }
        }
        if (f) fclose(f);
    }
done:
    ldm_config_destroy(back);
    ldm_config_destroy(cfg);
    return rc;
}
#endif
