/* test_config.c - ldm_config.h: INI and YAML parsing, errors that name file:line, the seed
   config's YAML and INI forms giving one tree, getters, X-macro schemas, merging, overrides,
   the INI dump round trip (also on random trees), robustness on cut and mutated input, and
   the target registry. LDM_TEST_SANITIZE: build.sh also runs it under ASan/UBSan. */
#define LDM_IMPLEMENTATION
#include "ldm_test.h"
#include "ldm_config.h"

#define CFG_DIR "../tests/configs/"
#define SEED_YAML "../configs/autoencoder_kl_64x64x3.yaml"
#define SEED_INI "../configs/autoencoder_kl_64x64x3.ini"

/* The example schema: the keys of the KL autoencoder's ddconfig (ldm_vae.h owns the real one). */
#define TEST_DDCONFIG_KEYS(X)                                                                 \
    X(double_z, BOOL, "true", "encoder outputs mean and log-variance (2*z_channels)")         \
    X(z_channels, INT, "4", "latent channels")                                               \
    X(resolution, INT, "256", "training image size")                                         \
    X(in_channels, INT, "3", "image channels in")                                            \
    X(out_ch, INT, "3", "image channels out")                                                \
    X(ch, INT, "128", "base channel count")                                                  \
    X(ch_mult, INT_LIST, "1,2,4,4", "channel multiplier per resolution level")               \
    X(num_res_blocks, INT, "2", "ResNet blocks per level")                                   \
    X(attn_resolutions, INT_LIST, "", "resolutions that get self-attention")                 \
    X(dropout, FLOAT, "0.0", "dropout probability")                                          \
    X(resamp_with_conv, BOOL, "true", "convolutional down/up-sampling")                      \
    X(tanh_out, BOOL, "false", "tanh on the decoder output")
LDM_CONFIG_DECLARE(test_ddconfig, TEST_DDCONFIG_KEYS);
LDM_CONFIG_DEFINE(test_ddconfig, TEST_DDCONFIG_KEYS)

/* model.params of AutoencoderKL: required keys, sub-trees, strings and a string list. */
#define TEST_AE_KEYS(X)                                                                       \
    X(embed_dim, INT, NULL, "latent channels after quant_conv")                              \
    X(ddconfig, NODE, NULL, "encoder/decoder settings")                                      \
    X(lossconfig, NODE, "", "loss target and params")                                        \
    X(monitor, STR, "", "metric that picks the best checkpoint")                             \
    X(ckpt_path, STR, "", "weights to start from")                                           \
    X(ignore_keys, STR_LIST, "[]", "state-dict prefixes to skip")                            \
    X(image_key, STR, "image", "batch key of the images")                                    \
    X(seed, I64, "23", "seed")                                                               \
    X(lr_steps, FLOAT_LIST, "0.5, 1e3", "example float list")
LDM_CONFIG_DECLARE(test_ae, TEST_AE_KEYS);
LDM_CONFIG_DEFINE(test_ae, TEST_AE_KEYS)

/* Bounds in the kind column: every numeric kind, a list, and keys without bounds alongside. */
#define TEST_BOUNDS_KEYS(X)                                                                   \
    X(steps, AT_LEAST(INT, 1), "1", "at least one")                                          \
    X(big, AT_LEAST(I64, -1), "-1", "-1 or more")                                            \
    X(top_k, BETWEEN(INT, -1, 32), "3", "-1 .. 32")                                          \
    X(p, BETWEEN(FLOAT, 0, 1), "0.5", "a probability")                                       \
    X(lr, AT_MOST(FLOAT, 1e-2), "1e-4", "small")                                             \
    X(mult, AT_LEAST(INT_LIST, 1), "1,2", "positive items")                                  \
    X(name, STR, "x", "no bounds")
LDM_CONFIG_DECLARE(test_bcfg, TEST_BOUNDS_KEYS);
LDM_CONFIG_DEFINE(test_bcfg, TEST_BOUNDS_KEYS)

static ldm_config *load1(const char *path) {
    ldm_config *c;
    if (ldm_config_create(&c)) return NULL;
    if (ldm_config_load(c, path)) {
        printf("     load %s: %s\n", path, ldm_config_error(c));
        ldm_config_destroy(c);
        return NULL;
    }
    return c;
}

/* The INI dump as a malloc'd string. */
static char *dump_str(ldm_config *c, const ldm_config_node *node) {
    FILE *f = tmpfile();
    long n;
    char *s;
    if (!f) return NULL;
    if (ldm_config_dump(c, node, f)) { fclose(f); return NULL; }
    n = ftell(f);
    rewind(f);
    s = (char *)malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) { free(s); s = NULL; }
    if (s) s[n] = 0;
    fclose(f);
    return s;
}

static const ldm_config_node *at(ldm_config *c, const char *path) { return ldm_config_find(ldm_config_root(c), path); }

static void test_seed(void) {
    ldm_config *y = load1(SEED_YAML), *i = load1(SEED_INI);
    char why[512] = "";
    const ldm_config_node *n;
    ldm_config_ints il;
    double lr = 0, klw = 0;
    int z = 0, dz = 0;
    const char *mon = NULL;
    LT_CHECK(y && i, "seed: both forms load");
    if (!y || !i) { ldm_config_destroy(y); ldm_config_destroy(i); return; }
    lt_report(ldm_config_equal(ldm_config_root(y), ldm_config_root(i), why, sizeof why), "seed: YAML and INI give one tree", "%s", why);
    n = at(y, "model.params.lossconfig.params.disc_start");
    LT_CHECK(n && n->type == LDM_CONFIG_INT && n->i == 50001 && n->line == 10, "seed: disc_start is int 50001 at line 10");
    n = at(y, "model.params.lossconfig.params.kl_weight");
    LT_CHECK(n && n->type == LDM_CONFIG_FLOAT && n->f == 1e-6, "seed: kl_weight 0.000001 is the float 1e-6");
    n = at(y, "model.params.ddconfig.attn_resolutions");
    LT_CHECK(n && n->type == LDM_CONFIG_LIST && n->n == 0, "seed: attn_resolutions is an empty list");
    n = at(i, "model.params.ddconfig");
    LT_CHECK(n && n->type == LDM_CONFIG_MAP && n->line == 20 && strstr(n->file, "autoencoder_kl_64x64x3.ini"),
             "seed: INI nodes remember their file:line");
    LT_CHECK(!ldm_config_get_float(y, NULL, "model.base_learning_rate", 0, &lr) && lr == 4.5e-6, "seed: base_learning_rate 4.5e-6");
    LT_CHECK(!ldm_config_get_float(i, NULL, "model.params.lossconfig.params.kl_weight", 0, &klw) && klw == 1e-6, "seed: kl_weight getter");
    LT_CHECK(!ldm_config_get_int(y, NULL, "model.params.ddconfig.z_channels", 0, &z) && z == 3, "seed: z_channels 3");
    LT_CHECK(!ldm_config_get_bool(y, NULL, "model.params.ddconfig.double_z", 0, &dz) && dz == 1, "seed: double_z True");
    LT_CHECK(!ldm_config_get_str(y, NULL, "model.params.monitor", NULL, &mon) && mon && !strcmp(mon, "val/rec_loss"),
             "seed: quoted monitor string");
    LT_CHECK(!ldm_config_get_int_list(i, NULL, "model.params.ddconfig.ch_mult", NULL, &il) && il.n == 3 && il.v[0] == 1
                 && il.v[1] == 2 && il.v[2] == 4, "seed: ch_mult [1, 2, 4]");
    /* the equality test itself must see differences: a value, and a type (int 0 vs float 0.0) */
    LT_CHECK(!ldm_config_set(i, "model.params.ddconfig.ch_mult=[1,2,8]", NULL), "seed: override applies");
    why[0] = 0;
    LT_CHECK(!ldm_config_equal(ldm_config_root(y), ldm_config_root(i), why, sizeof why) && strstr(why, "ch_mult[2]"),
             "seed: a changed list item makes the trees differ, named by path");
    ldm_config_set(i, "model.params.ddconfig.ch_mult=[1,2,4]", NULL);
    ldm_config_set(i, "model.params.ddconfig.dropout=0", NULL);
    why[0] = 0;
    LT_CHECK(!ldm_config_equal(ldm_config_root(y), ldm_config_root(i), why, sizeof why) && strstr(why, "int 0") && strstr(why, "float 0.0"),
             "seed: int 0 and float 0.0 differ (types are compared)");
    ldm_config_set(i, "model.params.ddconfig.dropout=0.0", NULL);
    LT_CHECK(ldm_config_equal(ldm_config_root(y), ldm_config_root(i), NULL, 0), "seed: equal again after restoring");
    ldm_config_set(i, "model.params.extra=1", NULL);
    LT_CHECK(!ldm_config_equal(ldm_config_root(y), ldm_config_root(i), NULL, 0)
                 && !ldm_config_equal(ldm_config_root(i), ldm_config_root(y), NULL, 0), "seed: an extra key differs both ways");
    ldm_config_destroy(y);
    ldm_config_destroy(i);
}

static void test_good_ini(void) {
    ldm_config *c = load1(CFG_DIR "good.ini");
    const ldm_config_node *n, *m;
    const char *s = NULL;
    int v = 0;
    ldm_config_ints il;
    ldm_config_strs sl;
    LT_CHECK(c != NULL, "ini: good.ini loads");
    if (!c) return;
    LT_CHECK(!ldm_config_get_str(c, NULL, "name", NULL, &s) && !strcmp(s, "ldm-test"), "ini: bare string, trailing # comment");
    LT_CHECK(!ldm_config_get_str(c, NULL, "title", NULL, &s) && !strcmp(s, "a # is not a comment ; in quotes"), "ini: # and ; inside quotes");
    LT_CHECK(!ldm_config_get_str(c, NULL, "single", NULL, &s) && !strcmp(s, "it's single-quoted"), "ini: single quotes, '' escape");
    LT_CHECK(!ldm_config_get_str(c, NULL, "escaped", NULL, &s) && !strcmp(s, "tab\there, quote \" and backslash \\ and \xc3\xa9"),
             "ini: escapes \\t \\\" \\\\ \\u00e9");
    LT_CHECK(!ldm_config_get_str(c, NULL, "url", NULL, &s) && !strcmp(s, "http://example.com/a#b"), "ini: # inside a word is text, ; comment");
    n = at(c, "seed");
    LT_CHECK(n && n->type == LDM_CONFIG_INT && n->i == 23, "ini: int");
    n = at(c, "negative");
    LT_CHECK(n && n->type == LDM_CONFIG_INT && n->i == -7, "ini: negative int");
    n = at(c, "lr");
    LT_CHECK(n && n->type == LDM_CONFIG_FLOAT && n->f == 4.5e-6, "ini: float 4.5e-6");
    n = at(c, "big");
    LT_CHECK(n && n->type == LDM_CONFIG_FLOAT && n->f == 1000.0, "ini: 1e3 is a float");
    n = at(c, "half");
    LT_CHECK(n && n->type == LDM_CONFIG_FLOAT && n->f == 0.5, "ini: .5 is a float");
    n = at(c, "flag_b");
    LT_CHECK(at(c, "flag_a")->type == LDM_CONFIG_BOOL && at(c, "flag_a")->i == 1 && n && n->type == LDM_CONFIG_BOOL && n->i == 0,
             "ini: booleans true / False");
    LT_CHECK(at(c, "nothing") && at(c, "nothing")->type == LDM_CONFIG_NULL, "ini: null");
    LT_CHECK(at(c, "empty_str") && at(c, "empty_str")->type == LDM_CONFIG_STR && !at(c, "empty_str")->s[0], "ini: empty quoted string");
    LT_CHECK(!ldm_config_get_int_list(c, NULL, "bare_list", NULL, &il) && il.n == 3 && il.v[2] == 4, "ini: bare list 1, 2, 4");
    LT_CHECK(ldm_config_equal(at(c, "bare_list"), at(c, "bracket_list"), NULL, 0), "ini: bare and bracketed lists are the same");
    LT_CHECK(at(c, "empty_list")->type == LDM_CONFIG_LIST && at(c, "empty_list")->n == 0, "ini: []");
    n = at(c, "mixed");
    LT_CHECK(n && n->n == 5 && n->child[0]->type == LDM_CONFIG_INT && n->child[1]->type == LDM_CONFIG_FLOAT
                 && n->child[2]->type == LDM_CONFIG_STR && n->child[3]->type == LDM_CONFIG_BOOL && n->child[4]->type == LDM_CONFIG_NULL,
             "ini: a list keeps each item's type");
    n = at(c, "nested");
    LT_CHECK(n && n->n == 3 && n->child[0]->n == 2 && n->child[1]->n == 1 && n->child[2]->n == 0, "ini: nested lists");
    LT_CHECK(!ldm_config_get_str_list(c, NULL, "strings", NULL, &sl) && sl.n == 3 && !strcmp(sl.v[1], "b, c") && !strcmp(sl.v[2], "d"),
             "ini: a quoted comma stays in its string");
    m = at(c, "maps[0].params.x");
    LT_CHECK(m && m->type == LDM_CONFIG_INT && m->i == 1 && at(c, "maps.1")->type == LDM_CONFIG_MAP && at(c, "maps.1")->n == 0,
             "ini: flow mappings in a list, [i] and .i paths");
    LT_CHECK(at(c, "empty_map")->type == LDM_CONFIG_MAP && at(c, "empty_map")->n == 0, "ini: {}");
    LT_CHECK(!ldm_config_get_int(c, NULL, "dotted.a.b", 0, &v) && v == 5, "ini: top-level dotted key");
    LT_CHECK(!ldm_config_get_int(c, NULL, "model.params.embed_dim", 0, &v) && v == 3, "ini: dotted key inside a section");
    LT_CHECK(!ldm_config_get_int(c, NULL, "model.params.ddconfig.indented", 0, &v) && v == 1, "ini: indented key");
    n = at(c, "model.params");
    LT_CHECK(n && n->n == 3 && !strcmp(n->child[2]->key, "monitor") && n->child[2]->line == 36,
             "ini: [model.params] extends the mapping a dotted key made");
    ldm_config_destroy(c);
}

static void test_good_yaml(void) {
    ldm_config *y = load1(CFG_DIR "good.yaml"), *i = load1(CFG_DIR "good_twin.ini");
    const ldm_config_node *n;
    char why[512] = "";
    LT_CHECK(y && i, "yaml: good.yaml and good_twin.ini load");
    if (!y || !i) { ldm_config_destroy(y); ldm_config_destroy(i); return; }
    lt_report(ldm_config_equal(ldm_config_root(y), ldm_config_root(i), why, sizeof why), "yaml: good.yaml equals its INI twin", "%s", why);
    n = at(y, "model.params.unet_config.params.attention_resolutions");
    LT_CHECK(n && n->type == LDM_CONFIG_LIST && n->n == 3 && n->child[0]->i == 4 && n->child[2]->line == 18,
             "yaml: block list at the key's own indentation, comment inside");
    n = at(y, "data.transforms");
    LT_CHECK(n && n->n == 6, "yaml: six block list items");
    if (n && n->n == 6) {
        LT_CHECK(n->child[0]->type == LDM_CONFIG_MAP && ldm_config_find(n->child[0], "params.size")
                     && ldm_config_find(n->child[0], "params.size")->i == 256, "yaml: '- key:' item is a mapping with nested blocks");
        LT_CHECK(n->child[2]->type == LDM_CONFIG_STR && !strcmp(n->child[2]->s, "plain_item"), "yaml: scalar item");
        LT_CHECK(n->child[3]->type == LDM_CONFIG_LIST && n->child[3]->n == 2, "yaml: flow list item");
        LT_CHECK(n->child[4]->type == LDM_CONFIG_MAP && n->child[4]->line == 42, "yaml: '-' then an indented block");
        LT_CHECK(n->child[5]->type == LDM_CONFIG_LIST && n->child[5]->n == 2 && n->child[5]->child[1]->i == 2, "yaml: '- - x' nested list");
    }
    n = at(y, "data.commas");
    LT_CHECK(n && n->type == LDM_CONFIG_STR && !strcmp(n->s, "1, 2"), "yaml: a plain value with commas is one string");
    n = at(y, "model.params.first_stage_config.params.nothing");
    LT_CHECK(n && n->type == LDM_CONFIG_NULL, "yaml: 'key:' with nothing under it is null");
    n = at(y, "model.params.unet_config.params.apostrophe");
    LT_CHECK(n && !strcmp(n->s, "it's plain"), "yaml: apostrophe in a plain value, comment after it");
    n = at(y, "lightning.trainer.max_epochs");
    LT_CHECK(n && n->type == LDM_CONFIG_INT && n->i == -1, "yaml: negative int");
    ldm_config_destroy(y);
    ldm_config_destroy(i);
}

typedef struct bad_case { const char *file; int line; const char *want; int mode; } bad_case;
enum { BAD_LOAD, BAD_DDCONFIG, BAD_AE, BAD_TARGET };

static ldm_result dummy_ctor(ldm_config *cfg, const ldm_config_node *params, void *user, void *arg, void **out) {
    (void)cfg; (void)params; (void)arg;
    *out = user;
    return LDM_OK;
}

static void test_bad_files(void) {
    static const bad_case cases[] = {
        {"bad_section.ini", 4, "unterminated section header", BAD_LOAD},
        {"bad_indent.yaml", 4, "bad indentation", BAD_LOAD},
        {"bad_tab.yaml", 4, "tab character", BAD_LOAD},
        {"bad_unknown_key.ini", 4, "unknown key 'z_chanels' in ddconfig; did you mean 'z_channels'?", BAD_DDCONFIG},
        {"bad_type.ini", 3, "ddconfig.resolution: expected an int, found the string 'abc'", BAD_DDCONFIG},
        {"bad_type.yaml", 3, "expected an int, found the float 1.5 (not a whole number)", BAD_DDCONFIG},
        {"bad_type_list.yaml", 2, "ddconfig.ch_mult[2]: expected an int, found the string 'four'", BAD_DDCONFIG},
        {"bad_string.ini", 2, "unterminated string", BAD_LOAD},
        {"bad_unclosed_quote.yaml", 3, "unterminated string", BAD_LOAD},
        {"bad_list.yaml", 3, "unterminated list", BAD_LOAD},
        {"bad_list.ini", 3, "unterminated list", BAD_LOAD},
        {"bad_dup_key.yaml", 5, "duplicate key 'target' in model (first set at ../tests/configs/bad_dup_key.yaml:2)", BAD_LOAD},
        {"bad_dup_key.ini", 4, "duplicate key 'embed_dim' in model (first set at ../tests/configs/bad_dup_key.ini:2)", BAD_LOAD},
        {"bad_dup_section.ini", 5, "duplicate section [model] (first at ../tests/configs/bad_dup_section.ini:1)", BAD_LOAD},
        {"bad_no_key.ini", 2, "value without a key", BAD_LOAD},
        {"bad_no_equals.ini", 2, "expected 'key = value'", BAD_LOAD},
        {"bad_no_value.ini", 3, "'embed_dim' has no value", BAD_LOAD},
        {"bad_value_section.ini", 2, "'model' is already a value (int", BAD_LOAD},
        {"bad_block_scalar.yaml", 2, "block scalars", BAD_LOAD},
        {"bad_anchor.yaml", 1, "anchors", BAD_LOAD},
        {"bad_escape.yaml", 2, "unknown escape '\\q'", BAD_LOAD},
        {"bad_int_range.ini", 2, "does not fit in 64 bits", BAD_LOAD},
        {"bad_empty_item.ini", 1, "missing value", BAD_LOAD},
        {"bad_seq_in_map.yaml", 3, "a list item '- ...' among the keys", BAD_LOAD},
        {"bad_top_list.yaml", 2, "top level must be a mapping", BAD_LOAD},
        {"bad_key_char.ini", 2, "invalid character ' ' in the name 'my key'", BAD_LOAD},
        {"bad_after_scalar.yaml", 3, "bad indentation", BAD_LOAD},
        {"bad_two_docs.yaml", 2, "second YAML document", BAD_LOAD},
        {"bad_flow_map.ini", 1, "expected 'key: value' in a flow mapping", BAD_LOAD},
        {"bad_multiline.yaml", 3, "bad indentation", BAD_LOAD},
        {"bad_required.yaml", 3, "model.params: missing required key 'embed_dim'", BAD_AE},
        {"bad_target.yaml", 2, "unknown target 'ldm.models.autoencoder.AutoencoderKLL'; did you mean "
                               "'ldm.models.autoencoder.AutoencoderKL'?; known targets: ldm.models.autoencoder.AutoencoderKL "
                               "(AutoencoderKL), ldm.modules.losses.LPIPSWithDiscriminator (LPIPSWithDiscriminator)", BAD_TARGET},
    };
    ldm_config_registry *reg;
    size_t k;
    int dummy = 0;
    if (ldm_config_registry_create(&reg)) return;
    ldm_config_registry_add(reg, "ldm.models.autoencoder.AutoencoderKL", "AutoencoderKL", dummy_ctor, &dummy);
    ldm_config_registry_add(reg, "ldm.modules.losses.LPIPSWithDiscriminator", "LPIPSWithDiscriminator", dummy_ctor, &dummy);
    for (k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const bad_case *bc = &cases[k];
        char path[256], where[300], name[300];
        ldm_config *c;
        ldm_result r;
        snprintf(path, sizeof path, CFG_DIR "%s", bc->file);
        snprintf(where, sizeof where, "%s:%d: ", path, bc->line);
        snprintf(name, sizeof name, "bad: %s reports line %d", bc->file, bc->line);
        if (ldm_config_create(&c)) return;
        r = ldm_config_load(c, path);
        if (bc->mode != BAD_LOAD && r == LDM_OK) {
            if (bc->mode == BAD_DDCONFIG) {
                test_ddconfig dd;
                r = test_ddconfig_load(c, at(c, "ddconfig"), &dd);
            } else if (bc->mode == BAD_AE) {
                test_ae ae;
                r = test_ae_load(c, at(c, "model.params"), &ae);
            } else {
                void *obj;
                r = ldm_config_instantiate(c, reg, at(c, "model"), NULL, &obj);
            }
        }
        lt_report(r != LDM_OK && strstr(ldm_config_error(c), where) == ldm_config_error(c) && strstr(ldm_config_error(c), bc->want),
                  name, "code %d, message '%s'; want it to start with '%s' and contain '%s'", r, ldm_config_error(c), where, bc->want);
        ldm_config_destroy(c);
    }
    ldm_config_registry_destroy(reg);
}

static void test_schema(void) {
    ldm_config *c = load1(SEED_YAML), *p = NULL;
    test_ddconfig dd, back;
    test_ae ae;
    FILE *f;
    char *text = NULL;
    long n;
    if (!c) { LT_CHECK(0, "schema: seed loads"); return; }
    LT_CHECK(!test_ddconfig_load(c, at(c, "model.params.ddconfig"), &dd), "schema: the seed's ddconfig validates and loads");
    LT_CHECK(dd.double_z == 1 && dd.z_channels == 3 && dd.resolution == 256 && dd.ch == 128 && dd.ch_mult.n == 3 && dd.ch_mult.v[2] == 4
                 && dd.num_res_blocks == 2 && dd.attn_resolutions.n == 0 && dd.dropout == 0.0,
             "schema: fields from the file");
    LT_CHECK(dd.resamp_with_conv == 1 && dd.tanh_out == 0, "schema: absent keys take the defaults");
    LT_CHECK(!test_ddconfig_load(c, NULL, &dd) && dd.z_channels == 4 && dd.ch_mult.n == 4 && dd.ch_mult.v[3] == 4 && dd.attn_resolutions.n == 0,
             "schema: no section: every default");
    LT_CHECK(test_ae_load(c, NULL, &ae) == LDM_ERR_NOT_FOUND && strstr(ldm_config_error(c), "missing required key 'embed_dim'")
                 && strstr(ldm_config_error(c), "missing required key 'ddconfig'"),
             "schema: required keys are reported together");
    LT_CHECK(!test_ae_load(c, at(c, "model.params"), &ae) && ae.embed_dim == 3 && !strcmp(ae.monitor, "val/rec_loss")
                 && ae.ddconfig == at(c, "model.params.ddconfig") && ae.lossconfig == at(c, "model.params.lossconfig")
                 && !strcmp(ae.ckpt_path, "") && ae.ignore_keys.n == 0 && !strcmp(ae.image_key, "image") && ae.seed == 23
                 && ae.lr_steps.n == 2 && ae.lr_steps.v[1] == 1000.0,
             "schema: NODE, STR, STR_LIST, I64 and FLOAT_LIST fields");
    /* several problems in one section: all reported, one per line, each with file:line */
    LT_CHECK(!ldm_config_load_string(c, "[model.params.ddconfig]\nch_mlt = 1\nz_channels = 2.5\ntanh_out = 1\n", "multi.ini",
                                     LDM_CONFIG_FORMAT_AUTO), "schema: merge a broken section");
    LT_CHECK(test_ddconfig_load(c, at(c, "model.params.ddconfig"), &dd) == LDM_ERR_INVALID
                 && strstr(ldm_config_error(c), "multi.ini:2: unknown key 'ch_mlt' in model.params.ddconfig; did you mean 'ch_mult'?\n")
                 && strstr(ldm_config_error(c), "multi.ini:3: model.params.ddconfig.z_channels: expected an int, found the float 2.5")
                 && strstr(ldm_config_error(c), "\nmulti.ini:4: model.params.ddconfig.tanh_out: expected a bool, found the int 1"),
             "schema: every problem reported, one per line");
    /* an unknown key with nothing close lists the known keys */
    ldm_config_load_string(c, "[x]\nzzzzzzzzzzzz = 1\n", "far.ini", LDM_CONFIG_FORMAT_INI);
    LT_CHECK(test_ddconfig_load(c, at(c, "x"), &dd) && strstr(ldm_config_error(c), "far.ini:2: unknown key 'zzzzzzzzzzzz' in x; the known keys are: double_z, z_channels"),
             "schema: no close match: the known keys are listed");
    /* print -> parse -> load gives the same struct: print, defaults and parser agree */
    ldm_config_destroy(c);
    c = load1(SEED_YAML);
    test_ddconfig_load(c, at(c, "model.params.ddconfig"), &dd);
    f = tmpfile();
    if (f) {
        test_ddconfig_print(f, &dd);
        n = ftell(f);
        rewind(f);
        text = (char *)calloc(1, (size_t)n + 1);
        if (text && fread(text, 1, (size_t)n, f) != (size_t)n) text[0] = 0;
        fclose(f);
    }
    LT_CHECK(text && strstr(text, "# channel multiplier per resolution level\nch_mult = [1, 2, 4]\n"), "schema: print writes help and value");
    ldm_config_create(&p);
    LT_CHECK(text && !ldm_config_load_string(p, text, "printed.ini", LDM_CONFIG_FORMAT_INI) && !test_ddconfig_load(p, NULL, &back)
                 && !test_ddconfig_load(p, ldm_config_root(p), &back) && back.z_channels == dd.z_channels && back.ch_mult.n == dd.ch_mult.n
                 && back.ch_mult.v[1] == dd.ch_mult.v[1] && back.double_z == dd.double_z && back.dropout == dd.dropout
                 && back.tanh_out == dd.tanh_out && back.attn_resolutions.n == 0,
             "schema: the printed struct parses back to the same struct");
    free(text);
    ldm_config_destroy(p);
    ldm_config_destroy(c);
}

static void test_bounds(void) {
    ldm_config *c;
    test_bcfg v;
    if (ldm_config_create(&c)) { LT_CHECK(0, "bounds: create"); return; }
    LT_CHECK(!test_bcfg_load(c, NULL, &v) && v.steps == 1 && v.big == -1 && v.top_k == 3 && v.p == 0.5 && v.mult.n == 2,
             "bounds: the defaults load (C types from the bounded kinds)");
    LT_CHECK(!ldm_config_load_string(c, "[ok]\nsteps = 1\nbig = 9000000000\ntop_k = -1\np = 1\nlr = 0.01\nmult = [1, 7]\n", "ok.ini",
                                     LDM_CONFIG_FORMAT_INI) && !test_bcfg_load(c, at(c, "ok"), &v) && v.big == 9000000000LL && v.top_k == -1
                 && v.p == 1.0 && v.mult.v[1] == 7,
             "bounds: values on the bounds are accepted");
    LT_CHECK(!ldm_config_load_string(c, "[bad]\nsteps = 0\nbig = -2\ntop_k = 33\np = 1.5\nlr = 0.5\nmult = [2, 0, 3]\nname = \"y\"\n", "bad.ini",
                                     LDM_CONFIG_FORMAT_INI), "bounds: a section with values out of range loads");
    ldm_result r = test_bcfg_load(c, at(c, "bad"), &v);
    const char *e = ldm_config_error(c);
    LT_CHECK(r == LDM_ERR_INVALID && strstr(e, "bad.ini:2: bad.steps: 0 is out of range: steps must be >= 1")
                 && strstr(e, "bad.ini:3: bad.big: -2 is out of range: big must be >= -1")
                 && strstr(e, "bad.ini:4: bad.top_k: 33 is out of range: top_k must be in [-1, 32]")
                 && strstr(e, "bad.ini:5: bad.p: 1.5 is out of range: p must be in [0.0, 1.0]")
                 && strstr(e, "bad.ini:6: bad.lr: 0.5 is out of range: lr must be <= 0.01")
                 && strstr(e, "bad.ini:7: bad.mult[1]: 0 is out of range: mult must be >= 1"),
             "bounds: every value out of range is reported with its file:line");
    if (r != LDM_ERR_INVALID || !strstr(e, "bad.ini:7")) printf("     %s\n", e);
    FILE *f = tmpfile();
    char buf[2048] = "";
    if (f) {
        ldm_config_schema_print(f, test_bcfg_schema());
        rewind(f);
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = 0;
        fclose(f);
    }
    LT_CHECK(strstr(buf, "at least one (>= 1)") && strstr(buf, "-1 .. 32 (in [-1, 32])") && strstr(buf, "small (<= 0.01)")
                 && strstr(buf, "no bounds\n"),
             "bounds: --help tables show them");
    ldm_config_destroy(c);
}

static void test_getters(void) {
    ldm_config *c;
    int v = -1, b = -1;
    int64_t l = 0;
    double d = 0;
    const char *s = NULL;
    ldm_config_ints il;
    ldm_config_floats fl;
    ldm_config_strs sl;
    const char *text =
        "[t]\n"
        "i = 1000\n"
        "e3 = 1e3\n"
        "frac = 1.5\n"
        "word = abc\n"
        "quoted_num = \"12\"\n"
        "big = 5000000000\n"
        "flag = true\n"
        "one = 16\n"
        "nul = null\n"
        "l = [1, 2.0, 3e0]\n"
        "long = [0,1,2,3,4,5,6,7,8,9,0,1,2,3,4,5,6,7,8,9,0,1,2,3,4,5,6,7,8,9,0,1,2,3,4,5,6,7,8,9]\n";
    if (ldm_config_create(&c)) return;
    LT_CHECK(!ldm_config_load_string(c, text, "get.ini", LDM_CONFIG_FORMAT_AUTO), "get: text loads");
    LT_CHECK(!ldm_config_get_int(c, NULL, "t.i", 0, &v) && v == 1000, "get: int accepts 1000");
    LT_CHECK(!ldm_config_get_int(c, NULL, "t.e3", 0, &v) && v == 1000, "get: int accepts the whole float 1e3");
    v = 7;
    LT_CHECK(ldm_config_get_int(c, NULL, "t.frac", 0, &v) == LDM_ERR_INVALID && v == 7
                 && strstr(ldm_config_error(c), "get.ini:4: t.frac: expected an int, found the float 1.5 (not a whole number)"),
             "get: int rejects 1.5 with file:line and leaves out alone");
    LT_CHECK(ldm_config_get_int(c, NULL, "t.word", 0, &v) && strstr(ldm_config_error(c), "get.ini:5: t.word: expected an int, found the string 'abc'"),
             "get: int rejects abc");
    LT_CHECK(ldm_config_get_int(c, NULL, "t.quoted_num", 0, &v) && strstr(ldm_config_error(c), "get.ini:6:"), "get: a quoted number is a string");
    LT_CHECK(ldm_config_get_int(c, NULL, "t.big", 0, &v) && strstr(ldm_config_error(c), "out of the range of an int"), "get: int range");
    LT_CHECK(!ldm_config_get_i64(c, NULL, "t.big", 0, &l) && l == 5000000000LL, "get: i64 holds 5e9");
    LT_CHECK(!ldm_config_get_float(c, NULL, "t.i", 0, &d) && d == 1000.0, "get: float accepts an int");
    LT_CHECK(ldm_config_get_str(c, NULL, "t.i", NULL, &s) && strstr(ldm_config_error(c), "get.ini:2:"), "get: string rejects an int");
    LT_CHECK(!ldm_config_get_bool(c, NULL, "t.flag", 0, &b) && b == 1, "get: bool");
    LT_CHECK(ldm_config_get_bool(c, NULL, "t.i", 0, &b) && strstr(ldm_config_error(c), "expected a bool"), "get: bool rejects an int");
    LT_CHECK(!ldm_config_get_int(c, NULL, "t.absent", 42, &v) && v == 42, "get: absent key gives the default");
    LT_CHECK(!ldm_config_get_int(c, NULL, "t.nul", 43, &v) && v == 43, "get: null gives the default");
    LT_CHECK(!ldm_config_get_int(c, NULL, "nope.deeper.still", 44, &v) && v == 44, "get: absent parents give the default");
    LT_CHECK(!ldm_config_get_int(c, at(c, "t"), "l[2]", 0, &v) && v == 3, "get: path relative to a node, with [i]");
    LT_CHECK(!ldm_config_get_int_list(c, NULL, "t.l", NULL, &il) && il.n == 3 && il.v[1] == 2, "get: int list with whole floats");
    LT_CHECK(!ldm_config_get_float_list(c, NULL, "t.l", NULL, &fl) && fl.n == 3 && fl.v[2] == 3.0, "get: float list");
    LT_CHECK(!ldm_config_get_int_list(c, NULL, "t.one", NULL, &il) && il.n == 1 && il.v[0] == 16, "get: a scalar is a one-item list");
    LT_CHECK(!ldm_config_get_int_list(c, NULL, "t.absent", "8, 16", &il) && il.n == 2 && il.v[1] == 16, "get: list default text");
    LT_CHECK(!ldm_config_get_int_list(c, NULL, "t.absent", NULL, &il) && il.n == 0, "get: NULL list default is empty");
    LT_CHECK(!ldm_config_get_str_list(c, NULL, "t.absent", "[a, \"b c\"]", &sl) && sl.n == 2 && !strcmp(sl.v[1], "b c"),
             "get: string list default (strings owned by cfg)");
    LT_CHECK(ldm_config_get_int_list(c, NULL, "t.long", NULL, &il) && strstr(ldm_config_error(c), "40 items, at most 32"),
             "get: list longer than LDM_CONFIG_LIST_MAX");
    LT_CHECK(ldm_config_get_int_list(c, NULL, "t.absent", "1, x", &il) == LDM_ERR_INVALID && strstr(ldm_config_error(c), "default '1, x'"),
             "get: a bad default is reported as such");
    ldm_config_destroy(c);
}

static void test_merge_overrides(void) {
    ldm_config *c = load1(SEED_YAML), *d;
    const ldm_config_node *n;
    char *a = NULL, *b = NULL, why[512] = "";
    if (!c) { LT_CHECK(0, "merge: seed loads"); return; }
    LT_CHECK(!ldm_config_load(c, CFG_DIR "merge_over.ini"), "merge: second file merges");
    n = at(c, "model.base_learning_rate");
    LT_CHECK(n && n->f == 1e-4 && strstr(n->file, "merge_over.ini") && n->line == 3, "merge: scalar replaced, with the new file:line");
    n = at(c, "model.params.ddconfig.ch_mult");
    LT_CHECK(n && n->n == 2 && n->child[1]->i == 2, "merge: a list replaces the list");
    n = at(c, "model.params.ddconfig.attn_resolutions");
    LT_CHECK(n && n->n == 2 && n->child[0]->i == 16, "merge: an empty list replaced");
    n = at(c, "model.params.lossconfig.params");
    LT_CHECK(n && n->n == 3 && ldm_config_find(n, "disc_start")->i == 1 && ldm_config_find(n, "kl_weight")->f == 1e-6
                 && !strcmp(n->child[0]->key, "disc_start"), "merge: mappings merge recursively, keeping the order");
    LT_CHECK(at(c, "data.params.num_workers")->i == 2 && at(c, "data.params.batch_size")->i == 8 && at(c, "data.params.wrap")->i == 1,
             "merge: new keys join, old ones stay");
    LT_CHECK(at(c, "lightning.trainer.max_steps")->i == 100 && at(c, "lightning.trainer.accumulate_grad_batches")->i == 2,
             "merge: a flow mapping merges too");
    LT_CHECK(at(c, "model.params.ddconfig.z_channels")->line == 16 && strstr(at(c, "model.params.ddconfig.z_channels")->file, ".yaml"),
             "merge: untouched values keep the first file's file:line");
    /* a mapping over a scalar and a scalar over a mapping replace */
    LT_CHECK(!ldm_config_load_string(c, "data:\n  target:\n    x: 1\nlightning: off\n", "swap.yaml", LDM_CONFIG_FORMAT_AUTO)
                 && at(c, "data.target.x")->i == 1 && at(c, "lightning")->type == LDM_CONFIG_STR, "merge: type changes replace");
    /* overrides */
    LT_CHECK(!ldm_config_set(c, "model.params.embed_dim=8", NULL) && at(c, "model.params.embed_dim")->i == 8, "set: replaces a value");
    LT_CHECK(!ldm_config_set(c, "model.params.new.deep.key = [1, 2]", NULL) && at(c, "model.params.new.deep.key")->n == 2
                 && !strcmp(at(c, "model.params.new.deep.key")->file, "<command line>") && at(c, "model.params.new.deep")->line == 2,
             "set: creates missing keys; location is <command line>:N");
    LT_CHECK(!ldm_config_set(c, "model.params.ddconfig.ch_mult[1]=7", NULL) && at(c, "model.params.ddconfig.ch_mult.1")->i == 7,
             "set: a list item by index");
    LT_CHECK(!ldm_config_set(c, "model.params.lossconfig={params: {kl_weight: 0.5}}", "cli") && at(c, "model.params.lossconfig.params.kl_weight")->f == 0.5
                 && at(c, "model.params.lossconfig.target") != NULL, "set: a mapping value merges");
    LT_CHECK(!ldm_config_set(c, "data.params.name=1, 2", NULL) && at(c, "data.params.name")->type == LDM_CONFIG_LIST, "set: values parse like INI");
    LT_CHECK(ldm_config_set(c, "model.base_learning_rate.x=1", NULL) == LDM_ERR_INVALID
                 && strstr(ldm_config_error(c), "<command line>:6: override 'model.base_learning_rate.x=1': model.base_learning_rate is a value (float"),
             "set: refuses to descend into a scalar");
    LT_CHECK(ldm_config_set(c, "model.params.ddconfig.ch_mult[5]=1", NULL) && strstr(ldm_config_error(c), "has no item"), "set: index out of range");
    LT_CHECK(ldm_config_set(c, "just_a_word", NULL) && strstr(ldm_config_error(c), "is not 'key=value'"), "set: needs '='");
    LT_CHECK(ldm_config_set(c, "a..b=1", NULL) && strstr(ldm_config_error(c), "bad key"), "set: bad key");
    LT_CHECK(ldm_config_set(c, "a=[1,", NULL) && strstr(ldm_config_error(c), "<command line>:10: unterminated list"), "set: bad value, with location");
    LT_CHECK(ldm_config_set(c, "a=", NULL) && strstr(ldm_config_error(c), "has no value"), "set: empty value");
    /* dump round trip of the merged tree, through a file */
    LT_CHECK(!ldm_config_save(c, NULL, "test_config_merged.ini"), "dump: save the merged tree");
    d = load1("test_config_merged.ini");
    why[0] = 0;
    lt_report(d && ldm_config_equal(ldm_config_root(c), ldm_config_root(d), why, sizeof why), "dump: re-parsed dump equals the merged tree",
              "%s", why);
    a = dump_str(c, NULL);
    b = d ? dump_str(d, NULL) : NULL;
    LT_CHECK(a && b && !strcmp(a, b), "dump: dumping the re-parsed tree gives the same text");
    LT_CHECK(a && strstr(a, "[model]\nbase_learning_rate = 0.0001\ntarget = ldm.models.autoencoder.AutoencoderKL\n\n[model.params]\n"),
             "dump: sections in order, values first");
    LT_CHECK(ldm_config_dump(c, at(c, "model.base_learning_rate"), stdout) == LDM_ERR_INVALID, "dump: only mappings");
    free(a);
    free(b);
    remove("test_config_merged.ini");
    ldm_config_destroy(d);
    ldm_config_destroy(c);
}

static void test_dump_good(void) {
    const char *files[] = {CFG_DIR "good.yaml", CFG_DIR "good.ini", SEED_YAML};
    int k;
    for (k = 0; k < 3; k++) {
        ldm_config *c = load1(files[k]), *d;
        char *a, *b = NULL, why[512] = "", name[200];
        if (!c) { LT_CHECK(0, "dump: load"); continue; }
        a = dump_str(c, NULL);
        if (ldm_config_create(&d)) return;
        snprintf(name, sizeof name, "dump: %s round trip", files[k]);
        lt_report(a && !ldm_config_load_string(d, a, "dump.ini", LDM_CONFIG_FORMAT_INI)
                      && ldm_config_equal(ldm_config_root(c), ldm_config_root(d), why, sizeof why) && (b = dump_str(d, NULL)) && !strcmp(a, b),
                  name, "%s / %s", why, ldm_config_error(d));
        if (k == 2) {
            /* the seed has values before sub-mappings everywhere: its order survives exactly */
            const ldm_config_node *x = ldm_config_root(c), *y = ldm_config_root(d);
            int same = x->n == y->n, j;
            for (j = 0; same && j < x->n; j++) same = !strcmp(x->child[j]->key, y->child[j]->key);
            x = at(c, "model.params"); y = at(d, "model.params");
            for (j = 0; same && j < x->n; j++) same = !strcmp(x->child[j]->key, y->child[j]->key);
            LT_CHECK(same, "dump: the seed keeps its key order");
        }
        free(a);
        free(b);
        ldm_config_destroy(d);
        ldm_config_destroy(c);
    }
}

/* ---- random trees: every tree the API can hold must dump and re-parse to itself ---------- */
static uint64_t rs = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return (uint32_t)(rs >> 11); }

static void rand_str(char *s, int max) {
    static const char *pieces[] = {"a", "Z", "0", "7", " ", "#", ";", ",", "[", "]", "{", "}", "\"", "'", "\\", "=", ":",
                                   "\t", "\n", "\r", "\x01", "\x7f", "\xc3\xa9", "true", "null", "~", "1e3", "-", ".", "inf",
                                   "nan", "x", "_", "/", "&", "*", "|"};
    int n = (int)(rnd() % 6), k;
    s[0] = 0;
    for (k = 0; k < n && (int)strlen(s) + 4 < max; k++) strcat(s, pieces[rnd() % (sizeof pieces / sizeof pieces[0])]);
}

static void rand_value(char *out, size_t cap, int depth);
static void rand_scalar(char *out, size_t cap) {
    char s[64], q[256];
    int k, o = 0;
    switch (rnd() % 7) {
    case 0: snprintf(out, cap, "null"); break;
    case 1: snprintf(out, cap, rnd() % 2 ? "true" : "False"); break;
    case 2: snprintf(out, cap, "%lld", (long long)((int64_t)rnd() << 31 ^ (int64_t)rnd()) * (rnd() % 2 ? 1 : -1)); break;
    case 3: {
        double v;
        uint64_t bits = (uint64_t)rnd() << 32 | rnd();
        memcpy(&v, &bits, sizeof v);
        if (rnd() % 3 == 0) v = (double)(int)(rnd() % 1000) / 8.0;
        snprintf(out, cap, "%.17g", v);
        if (v != v) snprintf(out, cap, "nan");
        else if (v > 1.7976931348623157e308) snprintf(out, cap, "inf");
        else if (v < -1.7976931348623157e308) snprintf(out, cap, "-inf");
        else if (!strpbrk(out, ".e")) strcat(out, ".0");
        break;
    }
    default:
        rand_str(s, sizeof s);
        q[o++] = '"';
        for (k = 0; s[k] && o < (int)sizeof q - 6; k++) {
            unsigned char ch = (unsigned char)s[k];
            if (ch == '"' || ch == '\\') { q[o++] = '\\'; q[o++] = (char)ch; }
            else if (ch < 0x20 || ch == 0x7f) o += snprintf(q + o, sizeof q - (size_t)o, "\\x%02x", ch);
            else q[o++] = (char)ch;
        }
        q[o++] = '"';
        q[o] = 0;
        snprintf(out, cap, "%s", q);
    }
}

static void rand_key(char *k) {
    static const char ch[] = "abcxyz_019-/+";
    int n = 1 + (int)(rnd() % 4), i;
    for (i = 0; i < n; i++) k[i] = ch[rnd() % (sizeof ch - 1)];
    k[n] = 0;
}

static void rand_value(char *out, size_t cap, int depth) {
    int r = (int)(rnd() % 10), n, k;
    size_t used;
    if (depth > 3 || r < 6) { rand_scalar(out, cap); return; }
    n = (int)(rnd() % 4);
    used = (size_t)snprintf(out, cap, "%c", r < 8 ? '[' : '{');
    for (k = 0; k < n && used + 600 < cap; k++) {
        char key[8];
        if (k) used += (size_t)snprintf(out + used, cap - used, ", ");
        if (r >= 8) { rand_key(key); used += (size_t)snprintf(out + used, cap - used, "k%d%s: ", k, key); }
        rand_value(out + used, cap - used, depth + 1);
        used += strlen(out + used);
    }
    snprintf(out + used, cap - used, "%c", r < 8 ? ']' : '}');
}

static void test_random_trees(void) {
    int t, ok = 0, total = 200;
    char first_fail[600] = "";
    for (t = 0; t < total; t++) {
        ldm_config *c, *d;
        char *a = NULL, *b = NULL, why[512] = "";
        int k, nset = 1 + (int)(rnd() % 12), good = 1;
        if (ldm_config_create(&c)) return;
        if (ldm_config_create(&d)) { ldm_config_destroy(c); return; }
        for (k = 0; k < nset; k++) {
            char path[64] = "", key[8], val[2048], assign[2200];
            int depth = (int)(rnd() % 3), j;
            for (j = 0; j <= depth; j++) { rand_key(key); strcat(path, j ? "." : ""); strcat(path, key); }
            rand_value(val, sizeof val, 0);
            snprintf(assign, sizeof assign, "%s=%s", path, val);
            ldm_config_set(c, assign, "random"); /* may fail (a path through a value): the tree stays valid */
        }
        a = dump_str(c, NULL);
        if (!a || ldm_config_load_string(d, a, "random.ini", LDM_CONFIG_FORMAT_INI)
            || !ldm_config_equal(ldm_config_root(c), ldm_config_root(d), why, sizeof why) || !(b = dump_str(d, NULL)) || strcmp(a, b)) {
            good = 0;
            if (!first_fail[0]) snprintf(first_fail, sizeof first_fail, "%.200s | %.200s | dump:\n%.150s", why, ldm_config_error(d), a ? a : "");
        }
        ok += good;
        free(a);
        free(b);
        ldm_config_destroy(c);
        ldm_config_destroy(d);
    }
    lt_report(ok == total, "dump: 200 random trees (tricky strings, floats, nesting) round-trip", "%d of %d; first: %s", ok, total, first_fail);
}

/* ---- robustness: cut and mutated input parses or fails cleanly with name:line ------------ */
static int clean_result(ldm_config *c, ldm_result r, const char *name, int nlines) {
    const char *e = ldm_config_error(c);
    size_t n = strlen(name);
    int line;
    if (r == LDM_OK) return 1;
    if (strncmp(e, name, n) || e[n] != ':') return 0;
    line = atoi(e + n + 1);
    return line >= 1 && line <= nlines + 1;
}

static char *read_all(const char *path) {
    FILE *f = fopen(path, "rb");
    long n;
    char *s;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    rewind(f);
    s = (char *)calloc(1, (size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) s[0] = 0;
    fclose(f);
    return s;
}

static void test_robust(void) {
    const char *files[] = {CFG_DIR "good.yaml", CFG_DIR "good.ini", CFG_DIR "good_twin.ini", SEED_YAML};
    static const char junk[] = " \t\n-:#;,[]{}\"'\\=.ab1";
    int f, bad = 0, runs = 0;
    char first[400] = "";
    for (f = 0; f < 4; f++) {
        char *text = read_all(files[f]), *buf;
        size_t n, cut;
        int m, nlines = 0;
        const char *name = strstr(files[f], ".yaml") ? "cut.yaml" : "cut.ini";
        if (!text) { bad++; continue; }
        n = strlen(text);
        for (cut = 0; cut < n; cut++) nlines += text[cut] == '\n';
        buf = (char *)malloc(n + 1);
        for (cut = 0; buf && cut <= n; cut += 3) {
            ldm_config *c;
            ldm_result r;
            memcpy(buf, text, cut);
            buf[cut] = 0;
            if (ldm_config_create(&c)) break;
            r = ldm_config_load_string(c, buf, name, LDM_CONFIG_FORMAT_AUTO);
            runs++;
            if (!clean_result(c, r, name, nlines)) { bad++; if (!first[0]) snprintf(first, sizeof first, "cut %zu: %.300s", cut, ldm_config_error(c)); }
            ldm_config_destroy(c);
        }
        for (m = 0; buf && m < 400; m++) {
            ldm_config *c;
            ldm_result r;
            int j, edits = 1 + (int)(rnd() % 4);
            memcpy(buf, text, n + 1);
            for (j = 0; j < edits; j++) {
                char ch = junk[rnd() % (sizeof junk - 1)];
                buf[rnd() % n] = ch ? ch : 'x';
            }
            if (ldm_config_create(&c)) break;
            r = ldm_config_load_string(c, buf, name, LDM_CONFIG_FORMAT_AUTO);
            runs++;
            if (!clean_result(c, r, name, nlines)) { bad++; if (!first[0]) snprintf(first, sizeof first, "mutation: %.300s", ldm_config_error(c)); }
            if (r == LDM_OK) { /* what parsed must also dump and re-parse */
                char *a = dump_str(c, NULL);
                ldm_config *d;
                if (!ldm_config_create(&d)) {
                    if (!a || ldm_config_load_string(d, a, "re.ini", LDM_CONFIG_FORMAT_INI)
                        || !ldm_config_equal(ldm_config_root(c), ldm_config_root(d), NULL, 0)) {
                        bad++;
                        if (!first[0]) snprintf(first, sizeof first, "re-parse: %.300s", ldm_config_error(d));
                    }
                    ldm_config_destroy(d);
                }
                free(a);
            }
            ldm_config_destroy(c);
        }
        free(buf);
        free(text);
    }
    lt_report(bad == 0 && runs > 1000, "robust: cut and mutated files parse or fail with name:line", "%d bad of %d; first: %s", bad, runs, first);
}

/* ---- registry --------------------------------------------------------------------------- */
typedef struct test_vae { test_ddconfig dd; int embed_dim; int *built; } test_vae;

static ldm_result vae_ctor(ldm_config *cfg, const ldm_config_node *params, void *user, void *arg, void **out) {
    test_vae *v;
    test_ae ae;
    ldm_result r = test_ae_load(cfg, params, &ae);
    if (r) return r;
    if (!(v = (test_vae *)calloc(1, sizeof *v))) return ldm_config_seterr(cfg, LDM_ERR_NOMEM, "out of memory");
    if ((r = test_ddconfig_load(cfg, ae.ddconfig, &v->dd))) { free(v); return r; }
    v->embed_dim = ae.embed_dim;
    v->built = (int *)user;
    (*v->built)++;
    *(int *)arg += 10;
    *out = v;
    return LDM_OK;
}

static ldm_result failing_ctor(ldm_config *cfg, const ldm_config_node *params, void *user, void *arg, void **out) {
    (void)cfg; (void)params; (void)user; (void)arg; (void)out;
    return LDM_ERR_UNSUPPORTED;
}

static void test_registry(void) {
    ldm_config_registry *reg;
    ldm_config *c = load1(SEED_YAML);
    int built = 0, arg = 0;
    void *obj = NULL;
    const ldm_config_target *t;
    test_vae *v;
    if (!c || ldm_config_registry_create(&reg)) { LT_CHECK(0, "registry: set up"); ldm_config_destroy(c); return; }
    LT_CHECK(!ldm_config_registry_add(reg, "ldm.models.autoencoder.AutoencoderKL", "AutoencoderKL, autoencoder_kl", vae_ctor, &built),
             "registry: add with aliases");
    LT_CHECK(!ldm_config_registry_add(reg, "torch.nn.Identity", NULL, failing_ctor, NULL), "registry: add without aliases");
    LT_CHECK(ldm_config_registry_add(reg, "my.Other", "AutoencoderKL", vae_ctor, NULL) == LDM_ERR_INVALID
                 && strstr(ldm_config_registry_error(reg), "'AutoencoderKL' is already taken by 'ldm.models.autoencoder.AutoencoderKL'"),
             "registry: an alias clash is refused");
    LT_CHECK(ldm_config_registry_count(reg) == 2, "registry: count");
    t = ldm_config_registry_find(reg, "AutoencoderKL");
    LT_CHECK(t && t == ldm_config_registry_find(reg, "ldm.models.autoencoder.AutoencoderKL") && t == ldm_config_registry_find(reg, "autoencoder_kl")
                 && t == ldm_config_registry_get(reg, 0), "registry: find by name and each alias");
    LT_CHECK(!ldm_config_registry_find(reg, "Autoencoder") && !ldm_config_registry_find(reg, ""), "registry: no partial matches");
    LT_CHECK(!ldm_config_instantiate(c, reg, at(c, "model"), &arg, &obj) && obj, "registry: instantiate the seed's model");
    v = (test_vae *)obj;
    LT_CHECK(v && built == 1 && arg == 10 && v->embed_dim == 3 && v->dd.z_channels == 3 && v->dd.ch_mult.n == 3 && v->dd.double_z == 1,
             "registry: the constructor got params, user data and arg");
    free(obj);
    ldm_config_set(c, "model.target=AutoencoderKL", NULL);
    LT_CHECK(!ldm_config_instantiate(c, reg, at(c, "model"), &arg, &obj) && built == 2, "registry: a short alias in the config");
    free(obj);
    LT_CHECK(ldm_config_instantiate(c, reg, at(c, "model.params.lossconfig"), &arg, &obj) == LDM_ERR_NOT_FOUND
                 && strstr(ldm_config_error(c), "autoencoder_kl_64x64x3.yaml:8: model.params.lossconfig.target: unknown target "
                                                "'ldm.modules.losses.LPIPSWithDiscriminator'")
                 && strstr(ldm_config_error(c), "known targets: ldm.models.autoencoder.AutoencoderKL (AutoencoderKL, autoencoder_kl), torch.nn.Identity"),
             "registry: unknown target lists the known ones");
    ldm_config_set(c, "model.params.lossconfig.target=torch.nn.Identity", NULL);
    LT_CHECK(ldm_config_instantiate(c, reg, at(c, "model.params.lossconfig"), &arg, &obj) == LDM_ERR_UNSUPPORTED
                 && strstr(ldm_config_error(c), "constructing target 'torch.nn.Identity' failed"),
             "registry: a failing constructor without a message gets one");
    LT_CHECK(ldm_config_instantiate(c, reg, at(c, "data.params"), &arg, &obj) == LDM_ERR_NOT_FOUND
                 && strstr(ldm_config_error(c), "data.params: expected key 'target'"), "registry: missing target");
    ldm_config_set(c, "model.params.ddconfig.ch_mult=oops", NULL);
    LT_CHECK(ldm_config_instantiate(c, reg, at(c, "model"), &arg, &obj) == LDM_ERR_INVALID
                 && strstr(ldm_config_error(c), "model.params.ddconfig.ch_mult: expected an int, found the string 'oops'"),
             "registry: the constructor's own validation error comes through");
    ldm_config_registry_destroy(reg);
    ldm_config_destroy(c);
}

static void test_misc(void) {
    ldm_config *c;
    if (ldm_config_create(&c)) return;
    LT_CHECK(ldm_config_load(c, "../tests/configs/does_not_exist.yaml") == LDM_ERR_IO && strstr(ldm_config_error(c), "cannot open config"),
             "misc: a missing file is an I/O error naming it");
    LT_CHECK(!ldm_config_load_string(c, "# comment\nkey: value\n", "noext", LDM_CONFIG_FORMAT_AUTO) && at(c, "key")
                 && !strcmp(at(c, "key")->s, "value"), "misc: no extension: YAML detected from the content");
    LT_CHECK(!ldm_config_load_string(c, "; c\n[s]\nk = v\n", "noext2", LDM_CONFIG_FORMAT_AUTO) && at(c, "s.k"), "misc: INI detected from the content");
    LT_CHECK(!ldm_config_load_string(c, "\xef\xbb\xbfk2 = 1\r\nk3 = 2\r\n", "bom.ini", LDM_CONFIG_FORMAT_AUTO) && at(c, "k2")->i == 1
                 && at(c, "k3")->i == 2, "misc: UTF-8 BOM and CRLF");
    LT_CHECK(ldm_config_edit_distance("z_chanels", "z_channels") == 1 && ldm_config_edit_distance("resolutoin", "resolution") == 1
                 && ldm_config_edit_distance("", "abc") == 3, "misc: edit distance (with swaps)");
    LT_CHECK(!ldm_config_load_string(c, "deep: [[[[[[[[1]]]]]]]]\n", "deep.yaml", LDM_CONFIG_FORMAT_AUTO), "misc: nesting within the limit");
    {
        char deep[300];
        memset(deep, '[', 200);
        memcpy(deep, "x = ", 4);
        deep[200] = 0;
        LT_CHECK(ldm_config_load_string(c, deep, "deeper.ini", LDM_CONFIG_FORMAT_AUTO) && strstr(ldm_config_error(c), "deeper.ini:1: values nested more than 64 deep"),
                 "misc: nesting limit");
    }
    ldm_config_destroy(c);
}

int main(void) {
    test_seed();
    test_good_ini();
    test_good_yaml();
    test_bad_files();
    test_schema();
    test_bounds();
    test_getters();
    test_merge_overrides();
    test_dump_good();
    test_random_trees();
    test_robust();
    test_registry();
    test_misc();
    return lt_finish("test_config");
}
