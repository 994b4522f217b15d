/* ldm_config.h - configuration trees for ldm.h: INI files and the block-YAML subset CompVis
   configs use, typed getters, X-macro schemas, OmegaConf-style merging with command-line
   overrides, an INI dump that re-parses to the same tree, and a target registry.     v0.1

   Do this in exactly one C or C++ file before including it:
       #define LDM_IMPLEMENTATION          (every ldm_ header)
   or  #define LDM_CONFIG_IMPLEMENTATION   (this header only)

   Example: what main.py does with `--base a.yaml b.ini model.params.embed_dim=4`.

       ldm_config *cfg;
       if (ldm_config_create(&cfg)) { ...out of memory... }
       if (ldm_config_load(cfg, "a.yaml") || ldm_config_load(cfg, "b.ini")      // merged in order
           || ldm_config_set(cfg, "model.params.embed_dim=4", NULL)) {          // then overrides
           fprintf(stderr, "%s\n", ldm_config_error(cfg));                     // "b.ini:12: ..."
       }
       const ldm_config_node *dd = ldm_config_find(ldm_config_root(cfg), "model.params.ddconfig");
       int z;
       if (ldm_config_get_int(cfg, dd, "z_channels", 4, &z)) { ...ldm_config_error(cfg)... }
       ldm_config_save(cfg, NULL, "logs/run/configs/project.ini");             // INI dump
       ldm_config_destroy(cfg);

   The tree. Every file becomes one tree of ldm_config_node: mappings (MAP, keys in insertion
   order), lists, and scalars typed as null, bool, int (int64), float (double) or string. Each
   node remembers the file and line it came from, and every error message starts with that
   "file:line: ". A key is one word: any characters but blanks, control characters and
   . = : [ ] { } # ; , ' " \ ` (UTF-8 is fine); a dotted key `a.b = 1` means key b inside
   mapping a.

   Scalars (both formats, and command-line values): unquoted text is typed by its spelling:
       null ~ Null NULL                         -> null
       true True TRUE false False FALSE         -> bool   (yes/no/on/off stay strings)
       [-+]digits                               -> int    (decimal only; out of int64 -> error)
       1.5  .5  4.5e-6  1e3  -2E+4  inf nan .inf -.inf .nan -> float (needs '.', 'e' or a name)
       anything else                            -> string
   Quoted strings are always strings: "..." with escapes \\ \" \/ \n \t \r \xHH \uHHHH, or
   '...' where '' is a quote. Flow lists [1, 2, 4] and [] (nested lists and `{key: value}`
   mappings allowed, trailing comma allowed) and flow mappings {} must close on their line.

   INI (.ini, .cfg, .conf): `[section]` or `[dotted.section]` headers, `key = value`, comments
   with `#` or `;` at the start of a line or after whitespace (not inside quotes). An unquoted
   value with top-level commas is a list: `ch_mult = 1, 2, 4` is `[1, 2, 4]`. Keys before the
   first header are top-level keys. A key set twice in one section, or the same header twice,
   is an error; `[a.b]` may extend a mapping that only existed as a prefix (`[a.b.c]`, `b.x = 1`).

   YAML (.yaml, .yml): the block subset CompVis configs use: `key: value`, `key:` followed by a
   more indented block (a mapping or a `- item` list; a list may also sit at the key's own
   indentation), `- item` lists whose items are scalars, flow values, mappings (`- key: v` with
   its other keys aligned under the first) or nested blocks, `#` comments, a leading `---`.
   `key:` with nothing under it is null. Not supported (each is an error naming the line):
   tabs in indentation, inconsistent indentation, multi-line scalars and flow collections,
   block scalars (| >), anchors, aliases and tags, quoted keys, several documents. An unquoted
   YAML value is one scalar even with commas in it (`a: 1, 2` is the string "1, 2").
   Other extensions: the content decides (a first line `[...]` or `k = v` means INI).

   Getters read a value by dotted path from a node ("params.ddconfig.ch_mult[1]" or
   "...ch_mult.1"; NULL node = the root) and return the default when the key is absent or null.
   Conversions, the same for getters and schemas:
       bool   <- bool only
       int    <- int, or a float with an integral value (1e3, 1000.0); 1.5 is an error; range
                 checked (int: INT_MIN..INT_MAX, i64: int64)
       float  <- float or int
       string <- string only (quote numbers meant as strings: "0123")
       lists  <- a list whose items convert as above, or a single scalar (= a one-item list);
                 at most LDM_CONFIG_LIST_MAX items
   A wrong type is LDM_ERR_INVALID with "file:line: path: expected ..., found ...".

   Schemas. Declare a component's keys once as an X-macro:
       #define MY_DDCONFIG_KEYS(X) \
           X(double_z,   BOOL,     "true",    "encoder outputs mean and log-variance")    \
           X(z_channels, INT,      "4",       "latent channels")                          \
           X(ch_mult,    INT_LIST, "1,2,4,4", "channel multiplier per resolution level")
       LDM_CONFIG_DECLARE(my_ddconfig, MY_DDCONFIG_KEYS);   // struct my_ddconfig + prototypes
       LDM_CONFIG_DEFINE(my_ddconfig, MY_DDCONFIG_KEYS)     // in one .c file / implementation
   which gives `typedef struct my_ddconfig { int double_z; int z_channels; ldm_config_ints
   ch_mult; } my_ddconfig;`, `my_ddconfig_schema()` (the field table), `my_ddconfig_load(cfg,
   node, &out)` (validate, then fill every field from node or its default; node NULL = all
   defaults) and `my_ddconfig_print(FILE *, &v)` (the struct as commented INI lines). Kinds and
   their C types: BOOL int, INT int, I64 int64_t, FLOAT double, STR const char *, INT_LIST
   ldm_config_ints, FLOAT_LIST ldm_config_floats, STR_LIST ldm_config_strs, NODE const
   ldm_config_node * (any sub-tree, passed on unchecked). A numeric kind may carry inclusive
   bounds, checked by validate (and so by _load) with the value's file:line:
       X(accumulate_grad_batches, AT_LEAST(INT, 1),       "1",   "batches per optimizer step")
       X(flip_p,                  BETWEEN(FLOAT, 0, 1),   "0.5", "probability of a flip")
   (AT_MOST(kind, hi) too; for a list, each item). Defaults are text parsed like an INI
   value ("" is the empty list for list kinds; STR defaults are taken literally); a NULL
   default makes the key required. ldm_config_validate() reports every unknown key (with a
   did-you-mean), wrong type and missing required key at once, one per line.

   Merging follows OmegaConf.merge: mappings merge recursively, anything else (scalars, lists,
   a mapping over a scalar) replaces; replaced values carry their new file:line. Loading a file
   merges it into the tree, so loading several files merges them left to right. Overrides
   `a.b.c=value` parse the value like an INI value, create missing mappings, refuse to descend
   into a scalar, and may index an existing list item (`a.list[0]=5`); their location is
   "<command line>:N" for the N-th override (or the origin you pass).

   The INI dump writes any tree so that parsing it gives an equal tree: in each mapping, first
   its plain values as `key = value` (strings quoted only when needed, floats in the shortest
   text that reads back exactly, lists of mappings as `[{target: a, params: {x: 1}}]`, empty
   mappings as {}), then its mappings as [sections], both in insertion order. So a config
   written the CompVis way (values before sub-mappings) keeps its exact order, and the dump of
   a re-parsed dump is the same text.

   Registry: constructors registered under a target string and comma-separated aliases
   ("ldm.models.autoencoder.AutoencoderKL", "AutoencoderKL"); ldm_config_instantiate() reads
   a node's `target` and passes its `params` to the constructor, like instantiate_from_config.
   An unknown target is an error listing the known ones. No globals: the registry is an object.

   Errors: every call that fails returns a negative ldm_result and leaves its message in the
   ldm_config (ldm_config_error); registry set-up errors go to the registry. Config comes before
   an ldm_ctx exists (it decides the ctx's settings), so it keeps its own message; forward it
   with ldm_ctx_seterr(ctx, r, "%s", ldm_config_error(cfg)). Library code never exits.

   Options (define before including the implementation):
       LDM_CONFIG_LIST_MAX   capacity of ldm_config_ints/floats/strs (default 32)
       LDM_STATIC, LDM_MALLOC/LDM_REALLOC/LDM_FREE as in ldm_tensor.h
*/
#ifndef LDM_CONFIG_H
#define LDM_CONFIG_H

#include <stdio.h>
#include "ldm_tensor.h" /* ldm_result codes, LDM_API */

#ifndef LDM_CONFIG_LIST_MAX
#define LDM_CONFIG_LIST_MAX 32
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the tree --------------------------------------------------------------------------- */
typedef enum ldm_config_type {
    LDM_CONFIG_NULL = 0, LDM_CONFIG_BOOL, LDM_CONFIG_INT, LDM_CONFIG_FLOAT, LDM_CONFIG_STR,
    LDM_CONFIG_LIST, LDM_CONFIG_MAP
} ldm_config_type;

typedef enum ldm_config_format {
    LDM_CONFIG_FORMAT_AUTO = 0, LDM_CONFIG_FORMAT_INI, LDM_CONFIG_FORMAT_YAML
} ldm_config_format;

/* Read-only for users: iterate a LIST or MAP with child[0..n). */
typedef struct ldm_config_node ldm_config_node;
struct ldm_config_node {
    ldm_config_type type;
    const char *key;              /* key in the parent mapping; NULL for list items and the root */
    const char *file;             /* where it was written, for messages */
    int line;
    int64_t i;                    /* INT value; BOOL: 0 or 1 */
    double f;                     /* FLOAT value (INT: the same value as a double) */
    const char *s;                /* STR value (NUL-terminated) */
    int n;                        /* LIST / MAP: number of children */
    ldm_config_node **child;
    ldm_config_node *parent;
    int ldm__cap, ldm__defined;   /* private */
};

typedef struct ldm_config ldm_config;

LDM_API ldm_result ldm_config_create(ldm_config **cfg);       /* an empty tree (root mapping) */
LDM_API void ldm_config_destroy(ldm_config *cfg);
LDM_API const char *ldm_config_error(const ldm_config *cfg);  /* message of the last failure */
LDM_API ldm_result ldm_config_seterr(ldm_config *cfg, ldm_result code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;                                                         /* for constructors; returns code */
LDM_API const ldm_config_node *ldm_config_root(const ldm_config *cfg);

/* Parses a file (format from the extension, else the content) and merges it into the tree. */
LDM_API ldm_result ldm_config_load(ldm_config *cfg, const char *path);
/* The same for text in memory; `name` is used in messages. */
LDM_API ldm_result ldm_config_load_string(ldm_config *cfg, const char *text, const char *name,
                                          ldm_config_format fmt);
LDM_API ldm_result ldm_config_merge(ldm_config *dst, const ldm_config *src); /* src's root into dst's */
/* "a.b.c=value"; origin names the source in messages (NULL: "<command line>"). */
LDM_API ldm_result ldm_config_set(ldm_config *cfg, const char *assignment, const char *origin);

/* INI dump of a mapping node (NULL: the root). */
LDM_API ldm_result ldm_config_dump(ldm_config *cfg, const ldm_config_node *node, FILE *f);
LDM_API ldm_result ldm_config_save(ldm_config *cfg, const ldm_config_node *node, const char *path);

/* 1 when equal: same types and values, lists in order, mappings with the same keys (in any
   order). Otherwise 0, and `why` (may be NULL) gets the first difference with both places. */
LDM_API int ldm_config_equal(const ldm_config_node *a, const ldm_config_node *b, char *why, size_t why_size);

LDM_API const ldm_config_node *ldm_config_find(const ldm_config_node *node, const char *path); /* NULL if absent */
LDM_API char *ldm_config_path(const ldm_config_node *node, char *buf, size_t n); /* "model.params.ch_mult[1]" */
LDM_API const char *ldm_config_type_name(ldm_config_type t);
LDM_API int ldm_config_edit_distance(const char *a, const char *b); /* Damerau (adjacent swaps) */

/* ---- typed getters (node NULL: the root; absent or null: the default) ------------------- */
typedef struct ldm_config_ints { int n; int v[LDM_CONFIG_LIST_MAX]; } ldm_config_ints;
typedef struct ldm_config_floats { int n; double v[LDM_CONFIG_LIST_MAX]; } ldm_config_floats;
typedef struct ldm_config_strs { int n; const char *v[LDM_CONFIG_LIST_MAX]; } ldm_config_strs; /* owned by cfg */

LDM_API ldm_result ldm_config_get_bool(ldm_config *cfg, const ldm_config_node *node, const char *path, int def, int *out);
LDM_API ldm_result ldm_config_get_int(ldm_config *cfg, const ldm_config_node *node, const char *path, int def, int *out);
LDM_API ldm_result ldm_config_get_i64(ldm_config *cfg, const ldm_config_node *node, const char *path, int64_t def, int64_t *out);
LDM_API ldm_result ldm_config_get_float(ldm_config *cfg, const ldm_config_node *node, const char *path, double def, double *out);
LDM_API ldm_result ldm_config_get_str(ldm_config *cfg, const ldm_config_node *node, const char *path, const char *def, const char **out);
/* list defaults are text ("1,2,4", "[]"; NULL or "" = empty) */
LDM_API ldm_result ldm_config_get_int_list(ldm_config *cfg, const ldm_config_node *node, const char *path, const char *def, ldm_config_ints *out);
LDM_API ldm_result ldm_config_get_float_list(ldm_config *cfg, const ldm_config_node *node, const char *path, const char *def, ldm_config_floats *out);
LDM_API ldm_result ldm_config_get_str_list(ldm_config *cfg, const ldm_config_node *node, const char *path, const char *def, ldm_config_strs *out);

/* ---- schemas ---------------------------------------------------------------------------- */
typedef enum ldm_config_kind {
    LDM_CONFIG_KIND_BOOL, LDM_CONFIG_KIND_INT, LDM_CONFIG_KIND_I64, LDM_CONFIG_KIND_FLOAT,
    LDM_CONFIG_KIND_STR, LDM_CONFIG_KIND_INT_LIST, LDM_CONFIG_KIND_FLOAT_LIST,
    LDM_CONFIG_KIND_STR_LIST, LDM_CONFIG_KIND_NODE
} ldm_config_kind;

/* One key of a schema; a table ends with LDM_CONFIG_FIELD_END (name NULL). */
enum { LDM_CONFIG_MIN = 1, LDM_CONFIG_MAX = 2 };
typedef struct ldm_config_field {
    const char *name;
    ldm_config_kind kind;
    const char *def;              /* default as text; NULL = required */
    const char *help;
    int bounds;                   /* LDM_CONFIG_MIN | LDM_CONFIG_MAX: min/max apply */
    double min, max;              /* inclusive bounds of a number, or of each item of a list */
} ldm_config_field;
#define LDM_CONFIG_FIELD_END { NULL, LDM_CONFIG_KIND_NODE, NULL, NULL, 0, 0.0, 0.0 }

/* Checks node (a mapping, or NULL/null = empty) against schema: unknown keys, types, bounds,
   required keys. All problems go into one message, one per line (file:line first); returns
   the first one's code. */
LDM_API ldm_result ldm_config_validate(ldm_config *cfg, const ldm_config_node *node, const ldm_config_field *schema);
/* Converts node's `key` (or the default text) to kind into *dst (the kind's C type). */
LDM_API ldm_result ldm_config_get_field(ldm_config *cfg, const ldm_config_node *node, const char *key,
                                        ldm_config_kind kind, const char *def, void *dst);
/* "# help\nname = value\n" for a value of the kind's C type at src. */
LDM_API void ldm_config_print_field(FILE *f, const char *name, ldm_config_kind kind, const void *src, const char *help);
LDM_API void ldm_config_schema_print(FILE *f, const ldm_config_field *schema); /* --help table */
LDM_API const char *ldm_config_kind_name(ldm_config_kind k);

#define LDM_CONFIG_CTYPE_BOOL int
#define LDM_CONFIG_CTYPE_INT int
#define LDM_CONFIG_CTYPE_I64 int64_t
#define LDM_CONFIG_CTYPE_FLOAT double
#define LDM_CONFIG_CTYPE_STR const char *
#define LDM_CONFIG_CTYPE_INT_LIST ldm_config_ints
#define LDM_CONFIG_CTYPE_FLOAT_LIST ldm_config_floats
#define LDM_CONFIG_CTYPE_STR_LIST ldm_config_strs
#define LDM_CONFIG_CTYPE_NODE const ldm_config_node *

/* A kind in a schema is a plain kind (INT) or a kind with bounds: AT_LEAST(INT, 1),
   AT_MOST(FLOAT, 1), BETWEEN(INT, -1, 32) (inclusive; for lists, each item). The macros below
   take a kind column apart: its C type, its ldm_config_kind, its bounds. */
#define LDM_CONFIG_CTYPE_AT_LEAST(k, lo) LDM_CONFIG_CTYPE_##k
#define LDM_CONFIG_CTYPE_AT_MOST(k, hi) LDM_CONFIG_CTYPE_##k
#define LDM_CONFIG_CTYPE_BETWEEN(k, lo, hi) LDM_CONFIG_CTYPE_##k
#define LDM__CFG_K_BOOL LDM_CONFIG_KIND_BOOL
#define LDM__CFG_K_INT LDM_CONFIG_KIND_INT
#define LDM__CFG_K_I64 LDM_CONFIG_KIND_I64
#define LDM__CFG_K_FLOAT LDM_CONFIG_KIND_FLOAT
#define LDM__CFG_K_STR LDM_CONFIG_KIND_STR
#define LDM__CFG_K_INT_LIST LDM_CONFIG_KIND_INT_LIST
#define LDM__CFG_K_FLOAT_LIST LDM_CONFIG_KIND_FLOAT_LIST
#define LDM__CFG_K_STR_LIST LDM_CONFIG_KIND_STR_LIST
#define LDM__CFG_K_NODE LDM_CONFIG_KIND_NODE
#define LDM__CFG_K_AT_LEAST(k, lo) LDM_CONFIG_KIND_##k
#define LDM__CFG_K_AT_MOST(k, hi) LDM_CONFIG_KIND_##k
#define LDM__CFG_K_BETWEEN(k, lo, hi) LDM_CONFIG_KIND_##k
#define LDM__CFG_B_BOOL 0, 0.0, 0.0
#define LDM__CFG_B_INT 0, 0.0, 0.0
#define LDM__CFG_B_I64 0, 0.0, 0.0
#define LDM__CFG_B_FLOAT 0, 0.0, 0.0
#define LDM__CFG_B_STR 0, 0.0, 0.0
#define LDM__CFG_B_INT_LIST 0, 0.0, 0.0
#define LDM__CFG_B_FLOAT_LIST 0, 0.0, 0.0
#define LDM__CFG_B_STR_LIST 0, 0.0, 0.0
#define LDM__CFG_B_NODE 0, 0.0, 0.0
#define LDM__CFG_B_AT_LEAST(k, lo) LDM_CONFIG_MIN, (double)(lo), 0.0
#define LDM__CFG_B_AT_MOST(k, hi) LDM_CONFIG_MAX, 0.0, (double)(hi)
#define LDM__CFG_B_BETWEEN(k, lo, hi) LDM_CONFIG_MIN | LDM_CONFIG_MAX, (double)(lo), (double)(hi)

#define LDM__CONFIG_MEMBER(name, kind, def, help) LDM_CONFIG_CTYPE_##kind name;
#define LDM__CONFIG_FIELD(name, kind, def, help) { #name, LDM__CFG_K_##kind, def, help, LDM__CFG_B_##kind },
#define LDM__CONFIG_LOAD(name, kind, def, help) \
    if ((r = ldm_config_get_field(cfg, node, #name, LDM__CFG_K_##kind, def, &out->name)) != LDM_OK) return r;
#define LDM__CONFIG_PRINT(name, kind, def, help) ldm_config_print_field(f, #name, LDM__CFG_K_##kind, &v->name, help);

/* The struct T with one member per key, and the prototypes of T_schema/T_load/T_print. */
#define LDM_CONFIG_DECLARE(T, KEYS)                                                            \
    typedef struct T { KEYS(LDM__CONFIG_MEMBER) } T;                                           \
    LDM_API const ldm_config_field *T##_schema(void);                                          \
    LDM_API ldm_result T##_load(ldm_config *cfg, const ldm_config_node *node, T *out);         \
    LDM_API void T##_print(FILE *f, const T *v)
/* Their definitions: put it in the file that has the implementation. */
#define LDM_CONFIG_DEFINE(T, KEYS)                                                             \
    LDM_API const ldm_config_field *T##_schema(void) {                                         \
        static const ldm_config_field fields[] = {                                             \
            KEYS(LDM__CONFIG_FIELD) LDM_CONFIG_FIELD_END };                                    \
        return fields;                                                                         \
    }                                                                                          \
    LDM_API ldm_result T##_load(ldm_config *cfg, const ldm_config_node *node, T *out) {        \
        ldm_result r = ldm_config_validate(cfg, node, T##_schema());                           \
        if (r != LDM_OK) return r;                                                             \
        KEYS(LDM__CONFIG_LOAD)                                                                 \
        return LDM_OK;                                                                         \
    }                                                                                          \
    LDM_API void T##_print(FILE *f, const T *v) { KEYS(LDM__CONFIG_PRINT) }

/* ---- target registry -------------------------------------------------------------------- */
/* Builds the object for a target from its params (may be NULL). user: given at registration;
   arg: given to ldm_config_instantiate (e.g. an ldm_ctx). On failure, set a message with
   ldm_config_seterr and return its code. */
typedef ldm_result (*ldm_config_ctor)(ldm_config *cfg, const ldm_config_node *params, void *user,
                                      void *arg, void **out);
typedef struct ldm_config_target {
    const char *name;             /* "ldm.models.autoencoder.AutoencoderKL" */
    const char *aliases;          /* "AutoencoderKL" (comma-separated; may be "") */
    ldm_config_ctor fn;
    void *user;
} ldm_config_target;
typedef struct ldm_config_registry ldm_config_registry;

LDM_API ldm_result ldm_config_registry_create(ldm_config_registry **reg);
LDM_API void ldm_config_registry_destroy(ldm_config_registry *reg);
/* Fails (LDM_ERR_INVALID) when the name or an alias is taken; message in registry_error. */
LDM_API ldm_result ldm_config_registry_add(ldm_config_registry *reg, const char *name, const char *aliases,
                                           ldm_config_ctor fn, void *user);
LDM_API const char *ldm_config_registry_error(const ldm_config_registry *reg);
LDM_API int ldm_config_registry_count(const ldm_config_registry *reg);
LDM_API const ldm_config_target *ldm_config_registry_get(const ldm_config_registry *reg, int i);
LDM_API const ldm_config_target *ldm_config_registry_find(const ldm_config_registry *reg, const char *name); /* by name or alias */
/* Finds the target named by a string node; unknown: LDM_ERR_NOT_FOUND, the node's file:line,
   a did-you-mean and the known targets. */
LDM_API ldm_result ldm_config_registry_lookup(ldm_config *cfg, const ldm_config_registry *reg,
                                              const ldm_config_node *target, const ldm_config_target **out);
/* node: a mapping with `target` and optional `params`; calls the target's constructor. */
LDM_API ldm_result ldm_config_instantiate(ldm_config *cfg, const ldm_config_registry *reg,
                                          const ldm_config_node *node, void *arg, void **out);

#ifdef __cplusplus
}
#endif
#endif /* LDM_CONFIG_H */

/* ========================================================================================== */
/*                                      IMPLEMENTATION                                        */
/* ========================================================================================== */
#if defined(LDM_IMPLEMENTATION) || defined(LDM_CONFIG_IMPLEMENTATION)
#ifndef LDM_CONFIG_IMPLEMENTATION_DONE
#define LDM_CONFIG_IMPLEMENTATION_DONE

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#if !defined(LDM_MALLOC) && !defined(LDM_REALLOC) && !defined(LDM_FREE)
#define LDM_MALLOC(sz) malloc(sz)
#define LDM_REALLOC(p, sz) realloc(p, sz)
#define LDM_FREE(p) free(p)
#endif

#define LDM__CFG_ERR_CAP 4096
#define LDM__CFG_MAX_DEPTH 64

typedef struct ldm__cfg_kept { char *text; ldm_config_node *node; } ldm__cfg_kept;

struct ldm_config {
    ldm_config_node *root;
    char **files;                 /* interned file names the nodes point to */
    int n_files, cap_files;
    ldm__cfg_kept *kept;          /* parsed list defaults whose strings were handed out */
    int n_kept, cap_kept;
    int n_overrides;
    int append;                   /* validation: collect messages, one per line */
    char err[LDM__CFG_ERR_CAP];
};

/* ---- errors ----------------------------------------------------------------------------- */
static ldm_result ldm__cfg_verr(ldm_config *cfg, ldm_result code, const char *file, int line,
                                const char *fmt, va_list ap) {
    size_t cap = sizeof cfg->err, used = 0;
    int k;
    if (cfg->append && cfg->err[0]) {
        used = strlen(cfg->err);
        if (used + 2 >= cap) return code;
        cfg->err[used++] = '\n';
        cfg->err[used] = 0;
    }
    if (file) {
        k = snprintf(cfg->err + used, cap - used, "%s:%d: ", file, line);
        if (k > 0) used += (size_t)k;
        if (used >= cap) return code;
    }
    vsnprintf(cfg->err + used, cap - used, fmt, ap);
    return code;
}

static ldm_result ldm__cfg_err(ldm_config *cfg, ldm_result code, const char *file, int line, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;
static ldm_result ldm__cfg_err(ldm_config *cfg, ldm_result code, const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ldm__cfg_verr(cfg, code, file, line, fmt, ap);
    va_end(ap);
    return code;
}

LDM_API ldm_result ldm_config_seterr(ldm_config *cfg, ldm_result code, const char *fmt, ...) {
    va_list ap;
    if (!cfg) return code;
    va_start(ap, fmt);
    ldm__cfg_verr(cfg, code, NULL, 0, fmt, ap);
    va_end(ap);
    return code;
}

static ldm_result ldm__cfg_oom(ldm_config *cfg) {
    return ldm__cfg_err(cfg, LDM_ERR_NOMEM, NULL, 0, "out of memory while handling the configuration");
}

LDM_API const char *ldm_config_error(const ldm_config *cfg) { return cfg ? cfg->err : "no configuration"; }

LDM_API const char *ldm_config_type_name(ldm_config_type t) {
    switch (t) {
    case LDM_CONFIG_NULL: return "null";
    case LDM_CONFIG_BOOL: return "bool";
    case LDM_CONFIG_INT: return "int";
    case LDM_CONFIG_FLOAT: return "float";
    case LDM_CONFIG_STR: return "string";
    case LDM_CONFIG_LIST: return "list";
    case LDM_CONFIG_MAP: return "mapping";
    }
    return "?";
}

LDM_API const char *ldm_config_kind_name(ldm_config_kind k) {
    switch (k) {
    case LDM_CONFIG_KIND_BOOL: return "bool";
    case LDM_CONFIG_KIND_INT: return "int";
    case LDM_CONFIG_KIND_I64: return "int64";
    case LDM_CONFIG_KIND_FLOAT: return "float";
    case LDM_CONFIG_KIND_STR: return "string";
    case LDM_CONFIG_KIND_INT_LIST: return "int list";
    case LDM_CONFIG_KIND_FLOAT_LIST: return "float list";
    case LDM_CONFIG_KIND_STR_LIST: return "string list";
    case LDM_CONFIG_KIND_NODE: return "any";
    }
    return "?";
}

/* ---- small helpers ---------------------------------------------------------------------- */
static char *ldm__cfg_strndup(const char *s, size_t n) {
    char *p = (char *)LDM_MALLOC(n + 1);
    if (!p) return NULL;
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

static int ldm__cfg_space(char c) { return c == ' ' || c == '\t'; }
static int ldm__cfg_digit(char c) { return c >= '0' && c <= '9'; }
static int ldm__cfg_key_char(char c) {
    unsigned char u = (unsigned char)c;
    return u > ' ' && u != 127 && !strchr(".=:[]{}#;,\"'\\`", c);
}

/* A growable text buffer, for paths in the dump. */
typedef struct ldm__cfg_buf { char *p; size_t n, cap; } ldm__cfg_buf;
static int ldm__cfg_buf_put(ldm__cfg_buf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 128;
        char *p;
        while (cap < b->n + n + 1) cap *= 2;
        p = (char *)LDM_REALLOC(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

/* strtod and printf use the locale's decimal point; config text always uses '.'. */
static char ldm__cfg_decimal_point(void) {
    const struct lconv *lc = localeconv();
    return (lc && lc->decimal_point && lc->decimal_point[0]) ? lc->decimal_point[0] : '.';
}

/* Parses s[0..n) as a float; returns 0, or -1 when it does not fit a double (or is too long). */
static int ldm__cfg_strtod(const char *s, size_t n, double *out) {
    char buf[128], dp = ldm__cfg_decimal_point(), *end;
    size_t k;
    if (n >= sizeof buf) return -1;
    for (k = 0; k < n; k++) buf[k] = s[k] == '.' ? dp : s[k];
    buf[n] = 0;
    errno = 0;
    *out = strtod(buf, &end);
    if (end != buf + n) return -1;
    if (errno == ERANGE && (*out == HUGE_VAL || *out == -HUGE_VAL)) return -1;
    return 0;
}

/* The shortest "%.*g" text that reads back to exactly v, always recognisable as a float. */
static void ldm__cfg_fmt_float(double v, char *buf, size_t n) {
    int prec;
    char dp = ldm__cfg_decimal_point();
    size_t k, len;
    if (v != v) { snprintf(buf, n, "nan"); return; }
    if (v > DBL_MAX) { snprintf(buf, n, "inf"); return; }
    if (v < -DBL_MAX) { snprintf(buf, n, "-inf"); return; }
    for (prec = 1; prec <= 17; prec++) {
        double back;
        snprintf(buf, n, "%.*g", prec, v);
        for (k = 0; buf[k]; k++) if (buf[k] == dp) buf[k] = '.';
        if (ldm__cfg_strtod(buf, strlen(buf), &back) == 0 && back == v) break;
    }
    if (!strpbrk(buf, ".e")) {
        len = strlen(buf);
        if (len + 3 <= n) memcpy(buf + len, ".0", 3);
    }
}

/* ---- nodes ------------------------------------------------------------------------------ */
static const char *ldm__cfg_intern(ldm_config *cfg, const char *file) {
    int k;
    if (!file) file = "?";
    for (k = 0; k < cfg->n_files; k++)
        if (cfg->files[k] == file || strcmp(cfg->files[k], file) == 0) return cfg->files[k];
    if (cfg->n_files == cfg->cap_files) {
        int cap = cfg->cap_files ? cfg->cap_files * 2 : 8;
        char **f = (char **)LDM_REALLOC(cfg->files, sizeof(char *) * (size_t)cap);
        if (!f) return NULL;
        cfg->files = f;
        cfg->cap_files = cap;
    }
    cfg->files[cfg->n_files] = ldm__cfg_strndup(file, strlen(file));
    if (!cfg->files[cfg->n_files]) return NULL;
    return cfg->files[cfg->n_files++];
}

static ldm_config_node *ldm__cfg_node(ldm_config *owner, ldm_config_type t, const char *file, int line) {
    ldm_config_node *nd = (ldm_config_node *)LDM_MALLOC(sizeof *nd);
    if (!nd) return NULL;
    memset(nd, 0, sizeof *nd);
    nd->type = t;
    nd->line = line;
    nd->file = ldm__cfg_intern(owner, file);
    if (!nd->file) { LDM_FREE(nd); return NULL; }
    return nd;
}

static void ldm__cfg_free(ldm_config_node *nd) {
    int k;
    if (!nd) return;
    for (k = 0; k < nd->n; k++) ldm__cfg_free(nd->child[k]);
    LDM_FREE(nd->child);
    LDM_FREE((void *)nd->key);
    LDM_FREE((void *)nd->s);
    LDM_FREE(nd);
}

static int ldm__cfg_append(ldm_config_node *parent, ldm_config_node *c) {
    if (parent->n == parent->ldm__cap) {
        int cap = parent->ldm__cap ? parent->ldm__cap * 2 : 4;
        ldm_config_node **p = (ldm_config_node **)LDM_REALLOC(parent->child, sizeof(ldm_config_node *) * (size_t)cap);
        if (!p) return -1;
        parent->child = p;
        parent->ldm__cap = cap;
    }
    parent->child[parent->n++] = c;
    c->parent = parent;
    return 0;
}

static ldm_config_node *ldm__cfg_child(const ldm_config_node *map, const char *key, size_t len) {
    int k;
    if (!map || map->type != LDM_CONFIG_MAP) return NULL;
    for (k = 0; k < map->n; k++) {
        const char *ck = map->child[k]->key;
        if (strncmp(ck, key, len) == 0 && ck[len] == 0) return map->child[k];
    }
    return NULL;
}

static ldm_config_node *ldm__cfg_copy(ldm_config *dst, const ldm_config_node *src) {
    int k;
    ldm_config_node *nd = ldm__cfg_node(dst, src->type, src->file, src->line);
    if (!nd) return NULL;
    nd->i = src->i;
    nd->f = src->f;
    nd->ldm__defined = src->ldm__defined;
    if ((src->key && !(nd->key = ldm__cfg_strndup(src->key, strlen(src->key))))
        || (src->s && !(nd->s = ldm__cfg_strndup(src->s, strlen(src->s))))) {
        ldm__cfg_free(nd);
        return NULL;
    }
    for (k = 0; k < src->n; k++) {
        ldm_config_node *c = ldm__cfg_copy(dst, src->child[k]);
        if (!c || ldm__cfg_append(nd, c)) { ldm__cfg_free(c); ldm__cfg_free(nd); return NULL; }
    }
    return nd;
}

LDM_API ldm_result ldm_config_create(ldm_config **out) {
    ldm_config *cfg = (ldm_config *)LDM_MALLOC(sizeof *cfg);
    *out = NULL;
    if (!cfg) return LDM_ERR_NOMEM;
    memset(cfg, 0, sizeof *cfg);
    cfg->root = ldm__cfg_node(cfg, LDM_CONFIG_MAP, "<empty>", 0);
    if (!cfg->root) { ldm_config_destroy(cfg); return LDM_ERR_NOMEM; }
    *out = cfg;
    return LDM_OK;
}

LDM_API void ldm_config_destroy(ldm_config *cfg) {
    int k;
    if (!cfg) return;
    ldm__cfg_free(cfg->root);
    for (k = 0; k < cfg->n_kept; k++) { LDM_FREE(cfg->kept[k].text); ldm__cfg_free(cfg->kept[k].node); }
    LDM_FREE(cfg->kept);
    for (k = 0; k < cfg->n_files; k++) LDM_FREE(cfg->files[k]);
    LDM_FREE(cfg->files);
    LDM_FREE(cfg);
}

LDM_API const ldm_config_node *ldm_config_root(const ldm_config *cfg) { return cfg->root; }

LDM_API char *ldm_config_path(const ldm_config_node *node, char *buf, size_t n) {
    const ldm_config_node *chain[LDM__CFG_MAX_DEPTH * 4];
    int depth = 0, d;
    size_t used = 0;
    if (!n) return buf;
    buf[0] = 0;
    for (; node && node->parent && depth < (int)(sizeof chain / sizeof chain[0]); node = node->parent) chain[depth++] = node;
    for (d = depth - 1; d >= 0 && used + 1 < n; d--) {
        const ldm_config_node *c = chain[d];
        int k;
        if (c->parent->type == LDM_CONFIG_LIST) {
            for (k = 0; k < c->parent->n && c->parent->child[k] != c; k++) {}
            k = snprintf(buf + used, n - used, "[%d]", k);
        } else {
            k = snprintf(buf + used, n - used, "%s%s", used ? "." : "", c->key);
        }
        if (k < 0) break;
        used += (size_t)k;
    }
    if (used == 0) snprintf(buf, n, "(top level)");
    return buf;
}

/* Describes a value for messages: "the string 'abc'", "a list of 3 items". */
static char *ldm__cfg_describe(const ldm_config_node *v, char *buf, size_t n) {
    char num[40];
    switch (v->type) {
    case LDM_CONFIG_NULL: snprintf(buf, n, "null"); break;
    case LDM_CONFIG_BOOL: snprintf(buf, n, "the bool %s", v->i ? "true" : "false"); break;
    case LDM_CONFIG_INT: snprintf(buf, n, "the int %lld", (long long)v->i); break;
    case LDM_CONFIG_FLOAT: ldm__cfg_fmt_float(v->f, num, sizeof num); snprintf(buf, n, "the float %s", num); break;
    case LDM_CONFIG_STR: snprintf(buf, n, "the string '%.60s%s'", v->s, strlen(v->s) > 60 ? "..." : ""); break;
    case LDM_CONFIG_LIST: snprintf(buf, n, "a list of %d item%s", v->n, v->n == 1 ? "" : "s"); break;
    case LDM_CONFIG_MAP: snprintf(buf, n, "a mapping of %d key%s", v->n, v->n == 1 ? "" : "s"); break;
    }
    return buf;
}

/* ---- scalars and flow values (shared by INI, YAML, overrides, defaults) ------------------ */
typedef struct ldm__cfgp {
    ldm_config *err;              /* receives messages */
    ldm_config *tree;             /* owns the nodes being built */
    const char *file;             /* interned in tree */
    int line;
    int yaml;
    int depth;
    const char *s;                /* the value scanner: one line's text */
    size_t i, n;
} ldm__cfgp;

enum { LDM__CFG_TOP_YAML, LDM__CFG_ITEM, LDM__CFG_FLOW };

static ldm_config_node *ldm__cfgp_node(ldm__cfgp *p, ldm_config_type t) {
    ldm_config_node *nd = ldm__cfg_node(p->tree, t, p->file, p->line);
    if (!nd) ldm__cfg_oom(p->err);
    return nd;
}

static ldm_config_node *ldm__cfgp_fail(ldm__cfgp *p, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static ldm_config_node *ldm__cfgp_fail(ldm__cfgp *p, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ldm__cfg_verr(p->err, LDM_ERR_FORMAT, p->file, p->line, fmt, ap);
    va_end(ap);
    return NULL;
}

static int ldm__cfg_is_int(const char *s, size_t n) {
    size_t k = 0;
    if (k < n && (s[k] == '+' || s[k] == '-')) k++;
    if (k == n) return 0;
    for (; k < n; k++) if (!ldm__cfg_digit(s[k])) return 0;
    return 1;
}

static int ldm__cfg_is_float(const char *s, size_t n) {
    size_t k = 0, d = 0;
    int marked = 0;
    if (k < n && (s[k] == '+' || s[k] == '-')) k++;
    while (k < n && ldm__cfg_digit(s[k])) { k++; d++; }
    if (k < n && s[k] == '.') { k++; marked = 1; while (k < n && ldm__cfg_digit(s[k])) { k++; d++; } }
    if (!d) return 0;
    if (k < n && (s[k] == 'e' || s[k] == 'E')) {
        size_t e = 0;
        k++;
        marked = 1;
        if (k < n && (s[k] == '+' || s[k] == '-')) k++;
        while (k < n && ldm__cfg_digit(s[k])) { k++; e++; }
        if (!e) return 0;
    }
    return marked && k == n;
}

static int ldm__cfg_word(const char *s, size_t n, const char *const *words) {
    for (; *words; words++) if (strlen(*words) == n && memcmp(*words, s, n) == 0) return 1;
    return 0;
}

/* inf/nan spellings; returns 1 and the value when s is one */
static int ldm__cfg_special_float(const char *s, size_t n, double *v) {
    static const char *const infs[] = {"inf", ".inf", ".Inf", ".INF", NULL};
    static const char *const nans[] = {"nan", ".nan", ".NaN", ".NAN", NULL};
    double sign = 1;
    if (n && (s[0] == '+' || s[0] == '-')) { sign = s[0] == '-' ? -1 : 1; s++; n--; }
    if (ldm__cfg_word(s, n, infs)) { *v = sign * HUGE_VAL; return 1; }
    if (ldm__cfg_word(s, n, nans) && sign > 0) { *v = NAN; return 1; }
    return 0;
}

/* Types a plain (unquoted) scalar s[0..n). */
static ldm_config_node *ldm__cfgp_scalar(ldm__cfgp *p, const char *s, size_t n) {
    static const char *const nulls[] = {"null", "Null", "NULL", "~", NULL};
    static const char *const trues[] = {"true", "True", "TRUE", NULL};
    static const char *const falses[] = {"false", "False", "FALSE", NULL};
    ldm_config_node *v;
    double f;
    if (ldm__cfg_word(s, n, nulls)) return ldm__cfgp_node(p, LDM_CONFIG_NULL);
    if (ldm__cfg_word(s, n, trues) || ldm__cfg_word(s, n, falses)) {
        if ((v = ldm__cfgp_node(p, LDM_CONFIG_BOOL))) v->i = ldm__cfg_word(s, n, trues);
        return v;
    }
    if (ldm__cfg_is_int(s, n)) {
        uint64_t acc = 0, lim = s[0] == '-' ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
        size_t k = (s[0] == '-' || s[0] == '+') ? 1 : 0;
        for (; k < n; k++) {
            unsigned dgt = (unsigned)(s[k] - '0');
            if (acc > (lim - dgt) / 10)
                return ldm__cfgp_fail(p, "integer %.*s does not fit in 64 bits; write it as a float (%.*s.0) if that is meant",
                                      (int)n, s, (int)n, s);
            acc = acc * 10 + dgt;
        }
        if (!(v = ldm__cfgp_node(p, LDM_CONFIG_INT))) return NULL;
        v->i = s[0] == '-' ? (acc == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)acc) : (int64_t)acc;
        v->f = (double)v->i;
        return v;
    }
    if (ldm__cfg_is_float(s, n) || ldm__cfg_special_float(s, n, &f)) {
        if (ldm__cfg_is_float(s, n) && ldm__cfg_strtod(s, n, &f))
            return ldm__cfgp_fail(p, "number %.*s is out of the range of a double (or too long to read)", (int)n, s);
        if ((v = ldm__cfgp_node(p, LDM_CONFIG_FLOAT))) v->f = f;
        return v;
    }
    if (!(v = ldm__cfgp_node(p, LDM_CONFIG_STR))) return NULL;
    if (!(v->s = ldm__cfg_strndup(s, n))) { ldm__cfg_free(v); ldm__cfg_oom(p->err); return NULL; }
    return v;
}

static int ldm__cfg_hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A quoted string at p->s[p->i] (the quote). */
static ldm_config_node *ldm__cfgp_quoted(ldm__cfgp *p) {
    char q = p->s[p->i], *out;
    size_t start = p->i, o = 0;
    ldm_config_node *v;
    /* the decoded text is never longer than the source */
    if (!(out = (char *)LDM_MALLOC(p->n - p->i + 1))) { ldm__cfg_oom(p->err); return NULL; }
    p->i++;
    for (;;) {
        char c;
        if (p->i >= p->n) {
            LDM_FREE(out);
            return ldm__cfgp_fail(p, "unterminated string: the closing %c of the string starting at column %d is missing "
                                  "(strings end on the line they start)", q, (int)start + 1);
        }
        c = p->s[p->i++];
        if (c == q) {
            if (q == '\'' && p->i < p->n && p->s[p->i] == '\'') { out[o++] = '\''; p->i++; continue; }
            break;
        }
        if (c == '\\' && q == '"') {
            int ndig = 0, k;
            unsigned long cp = 0;
            c = p->i < p->n ? p->s[p->i++] : 0;
            switch (c) {
            case '\\': case '"': case '/': out[o++] = c; continue;
            case 'n': out[o++] = '\n'; continue;
            case 't': out[o++] = '\t'; continue;
            case 'r': out[o++] = '\r'; continue;
            case 'x': ndig = 2; break;
            case 'u': ndig = 4; break;
            default:
                LDM_FREE(out);
                return ldm__cfgp_fail(p, "unknown escape '\\%c' in a string; write '\\\\' for a backslash", c ? c : ' ');
            }
            for (k = 0; k < ndig; k++) {
                int h = p->i < p->n ? ldm__cfg_hex(p->s[p->i]) : -1;
                if (h < 0) { LDM_FREE(out); return ldm__cfgp_fail(p, "'\\%c' needs %d hex digits", c, ndig); }
                cp = cp * 16 + (unsigned long)h;
                p->i++;
            }
            if (cp == 0) { LDM_FREE(out); return ldm__cfgp_fail(p, "a string cannot contain a NUL character"); }
            if (ndig == 2 || cp < 0x80) out[o++] = (char)cp;
            else if (cp < 0x800) { out[o++] = (char)(0xC0 | (cp >> 6)); out[o++] = (char)(0x80 | (cp & 63)); }
            else {
                out[o++] = (char)(0xE0 | (cp >> 12));
                out[o++] = (char)(0x80 | ((cp >> 6) & 63));
                out[o++] = (char)(0x80 | (cp & 63));
            }
            continue;
        }
        out[o++] = c;
    }
    out[o] = 0;
    if (!(v = ldm__cfgp_node(p, LDM_CONFIG_STR))) { LDM_FREE(out); return NULL; }
    v->s = out;
    return v;
}

static void ldm__cfgp_ws(ldm__cfgp *p) { while (p->i < p->n && ldm__cfg_space(p->s[p->i])) p->i++; }

static ldm_config_node *ldm__cfgp_value(ldm__cfgp *p, int where);

/* Adds child under key to map; a duplicate is an error naming both lines. */
static int ldm__cfgp_put(ldm__cfgp *p, ldm_config_node *map, const char *key, size_t len, ldm_config_node *c) {
    ldm_config_node *ex = ldm__cfg_child(map, key, len);
    char path[256];
    if (ex) {
        /* a flow mapping being read is not in the tree yet: it has no path */
        ldm__cfgp_fail(p, "duplicate key '%.*s' in %s (first set at %s:%d); each key may appear once per section",
                       (int)len, key, map->parent || map == p->tree->root ? ldm_config_path(map, path, sizeof path) : "a {...} value",
                       ex->file, ex->line);
        return -1;
    }
    if (!(c->key = ldm__cfg_strndup(key, len)) || ldm__cfg_append(map, c)) { ldm__cfg_oom(p->err); return -1; }
    return 0;
}

static ldm_config_node *ldm__cfgp_flow(ldm__cfgp *p, int is_map) {
    char close = is_map ? '}' : ']';
    const char *what = is_map ? "mapping" : "list";
    ldm_config_node *v;
    if (++p->depth > LDM__CFG_MAX_DEPTH) return ldm__cfgp_fail(p, "values nested more than %d deep", LDM__CFG_MAX_DEPTH);
    if (!(v = ldm__cfgp_node(p, is_map ? LDM_CONFIG_MAP : LDM_CONFIG_LIST))) return NULL;
    p->i++;
    ldm__cfgp_ws(p);
    if (p->i < p->n && p->s[p->i] == close) { p->i++; p->depth--; return v; }
    for (;;) {
        ldm_config_node *item;
        size_t ks = 0, kl = 0;
        ldm__cfgp_ws(p);
        if (p->i >= p->n) break;
        if (is_map) {
            ks = p->i;
            while (p->i < p->n && ldm__cfg_key_char(p->s[p->i])) p->i++;
            kl = p->i - ks;
            ldm__cfgp_ws(p);
            if (!kl || p->i >= p->n || p->s[p->i] != ':') {
                if (p->i >= p->n) break;
                ldm__cfg_free(v);
                return ldm__cfgp_fail(p, "expected 'key: value' in a flow mapping at column %d", (int)ks + 1);
            }
            p->i++;
        }
        if (!(item = ldm__cfgp_value(p, LDM__CFG_FLOW))) { ldm__cfg_free(v); return NULL; }
        if (is_map ? ldm__cfgp_put(p, v, p->s + ks, kl, item) : ldm__cfg_append(v, item)) {
            if (!is_map) ldm__cfg_oom(p->err);
            ldm__cfg_free(item);
            ldm__cfg_free(v);
            return NULL;
        }
        ldm__cfgp_ws(p);
        if (p->i >= p->n) break;
        if (p->s[p->i] == ',') {
            p->i++;
            ldm__cfgp_ws(p);
            if (p->i < p->n && p->s[p->i] == close) { p->i++; p->depth--; return v; }
            continue;
        }
        if (p->s[p->i] == close) { p->i++; p->depth--; return v; }
        ldm__cfg_free(v);
        return ldm__cfgp_fail(p, "expected ',' or '%c' in a %s, found '%c' at column %d", close, what, p->s[p->i], (int)p->i + 1);
    }
    ldm__cfg_free(v);
    return ldm__cfgp_fail(p, "unterminated %s: '%c' is missing (flow %ss close on the line they start)", what, close, what);
}

/* One value at p->i: flow list or mapping, quoted string or plain scalar. A plain scalar ends
   at the end of the text (TOP_YAML), at ',' (ITEM: INI value items) or at ',' ']' '}' (FLOW). */
static ldm_config_node *ldm__cfgp_value(ldm__cfgp *p, int where) {
    size_t start, end;
    char c;
    ldm__cfgp_ws(p);
    if (p->i >= p->n || (where != LDM__CFG_TOP_YAML && p->s[p->i] == ','))
        return ldm__cfgp_fail(p, "missing value at column %d (an empty item in a list?)", (int)p->i + 1);
    c = p->s[p->i];
    if (c == '[' || c == '{') return ldm__cfgp_flow(p, c == '{');
    if (c == '"' || c == '\'') return ldm__cfgp_quoted(p);
    start = p->i;
    while (p->i < p->n) {
        c = p->s[p->i];
        if (where == LDM__CFG_ITEM && c == ',') break;
        if (where == LDM__CFG_FLOW && (c == ',' || c == ']' || c == '}')) break;
        p->i++;
    }
    end = p->i;
    while (end > start && ldm__cfg_space(p->s[end - 1])) end--;
    if (end == start) return ldm__cfgp_fail(p, "missing value at column %d (an empty item in a list?)", (int)start + 1);
    if (p->yaml) {
        size_t k;
        if (strchr("&*!|>%@`", p->s[start]))
            return ldm__cfgp_fail(p, "'%c' starts a YAML feature this reader does not support (anchors, aliases, tags, block "
                                  "scalars); quote the value if it is a string", p->s[start]);
        for (k = start; k < end; k++)
            if (p->s[k] == ':' && (k + 1 == end || ldm__cfg_space(p->s[k + 1])))
                return ldm__cfgp_fail(p, "a plain value cannot contain ': ' (YAML reads it as a nested mapping); quote it");
    }
    return ldm__cfgp_scalar(p, p->s + start, end - start);
}

/* A whole value s[0..n) (already without comment and surrounding blanks). INI: top-level
   commas make a list. YAML: a plain scalar runs to the end of the line. */
static ldm_config_node *ldm__cfgp_top(ldm__cfgp *p, const char *s, size_t n) {
    ldm_config_node *v, *list;
    p->s = s;
    p->i = 0;
    p->n = n;
    p->depth = 0;
    if (!(v = ldm__cfgp_value(p, p->yaml ? LDM__CFG_TOP_YAML : LDM__CFG_ITEM))) return NULL;
    ldm__cfgp_ws(p);
    if (p->i < p->n && p->s[p->i] == ',' && !p->yaml) {
        if (!(list = ldm__cfgp_node(p, LDM_CONFIG_LIST))) { ldm__cfg_free(v); return NULL; }
        if (ldm__cfg_append(list, v)) { ldm__cfg_free(v); ldm__cfg_free(list); ldm__cfg_oom(p->err); return NULL; }
        while (p->i < p->n && p->s[p->i] == ',') {
            p->i++;
            if (!(v = ldm__cfgp_value(p, LDM__CFG_ITEM))) { ldm__cfg_free(list); return NULL; }
            if (ldm__cfg_append(list, v)) { ldm__cfg_free(v); ldm__cfg_free(list); ldm__cfg_oom(p->err); return NULL; }
            ldm__cfgp_ws(p);
        }
        v = list;
    }
    if (p->i < p->n) {
        ldm__cfg_free(v);
        return ldm__cfgp_fail(p, "unexpected '%.20s' after the value at column %d; quote the whole value if it is one string",
                              p->s + p->i, (int)p->i + 1);
    }
    return v;
}

/* Length of a line's content before its comment: '#' (and ';' when semi) at the start or
   after a blank, outside quotes. A quote opens a string only where a value can begin (start,
   after a blank or one of "[{,:="), so apostrophes inside words stay text. */
static size_t ldm__cfg_strip_comment(const char *s, size_t n, int semi) {
    size_t k;
    char q = 0;
    for (k = 0; k < n; k++) {
        char c = s[k], prev = k ? s[k - 1] : ' ';
        if (q == '"') { if (c == '\\') k++; else if (c == '"') q = 0; continue; }
        if (q == '\'') { if (c == '\'') { if (k + 1 < n && s[k + 1] == '\'') k++; else q = 0; } continue; }
        if ((c == '#' || (semi && c == ';')) && ldm__cfg_space(prev)) return k;
        if ((c == '"' || c == '\'') && (ldm__cfg_space(prev) || memchr("[{,:=", prev, 5))) q = c;
    }
    return n;
}

/* Walks/creates the mappings for the dotted path key[0..len) under node. The last segment is
   not created: last and last_len name it. Intermediate mappings are "implicit" (not defined). */
static ldm_config_node *ldm__cfgp_walk(ldm__cfgp *p, ldm_config_node *node, const char *key, size_t len,
                                       const char **last, size_t *last_len) {
    size_t a = 0, b, k;
    for (;;) {
        ldm_config_node *c;
        b = a;
        while (b < len && key[b] != '.') b++;
        if (b == a) return ldm__cfgp_fail(p, "empty part in the name '%.*s'", (int)len, key);
        for (k = a; k < b; k++)
            if (!ldm__cfg_key_char(key[k]))
                return ldm__cfgp_fail(p, "invalid character '%c' in the name '%.*s' (names are one word of letters, digits, "
                                      "'_', '-' and the like; quote values, not names)", key[k], (int)len, key);
        if (b == len) { *last = key + a; *last_len = b - a; return node; }
        c = ldm__cfg_child(node, key + a, b - a);
        if (!c) {
            if (!(c = ldm__cfgp_node(p, LDM_CONFIG_MAP))) return NULL;
            if (ldm__cfgp_put(p, node, key + a, b - a, c)) { ldm__cfg_free(c); return NULL; }
        } else if (c->type != LDM_CONFIG_MAP) {
            return ldm__cfgp_fail(p, "'%.*s' is already a value (%s, set at %s:%d), so it cannot hold '%.*s'", (int)(b - a), key + a,
                                  ldm_config_type_name(c->type), c->file, c->line, (int)(len - b - 1), key + b + 1);
        }
        node = c;
        a = b + 1;
    }
}

/* ---- INI -------------------------------------------------------------------------------- */
static ldm_result ldm__cfg_parse_ini(ldm__cfgp *p, const char *text) {
    ldm_config_node *root = p->tree->root, *sec = root;
    const char *line = text;
    p->line = 0;
    while (*line) {
        const char *eol = strchr(line, '\n'), *c, *eq, *last;
        size_t n, kl, last_len;
        ldm_config_node *v, *map;
        if (!eol) eol = line + strlen(line);
        p->line++;
        c = line;
        line = *eol ? eol + 1 : eol;
        while (c < eol && (ldm__cfg_space(*c) || *c == '\r')) c++;
        n = ldm__cfg_strip_comment(c, (size_t)(eol - c), 1);
        while (n && (ldm__cfg_space(c[n - 1]) || c[n - 1] == '\r')) n--;
        if (!n) continue;
        if (c[0] == '[') {
            size_t a = 1, b = n - 1;
            ldm_config_node *ex;
            if (c[n - 1] != ']')
                return ldm__cfg_err(p->err, LDM_ERR_FORMAT, p->file, p->line,
                                    "unterminated section header '%.*s': it must end with ']'", (int)n, c);
            while (a < b && ldm__cfg_space(c[a])) a++;
            while (b > a && ldm__cfg_space(c[b - 1])) b--;
            if (a == b) return ldm__cfg_err(p->err, LDM_ERR_FORMAT, p->file, p->line, "empty section name '[]'");
            if (!(map = ldm__cfgp_walk(p, root, c + a, b - a, &last, &last_len))) return LDM_ERR_FORMAT;
            ex = ldm__cfg_child(map, last, last_len);
            if (ex && ex->type != LDM_CONFIG_MAP)
                return ldm__cfg_err(p->err, LDM_ERR_FORMAT, p->file, p->line, "section [%.*s]: '%.*s' is already a value (%s, set at %s:%d)",
                                    (int)(b - a), c + a, (int)last_len, last, ldm_config_type_name(ex->type), ex->file, ex->line);
            if (ex && ex->ldm__defined)
                return ldm__cfg_err(p->err, LDM_ERR_FORMAT, p->file, p->line,
                                    "duplicate section [%.*s] (first at %s:%d); put its keys under one header",
                                    (int)(b - a), c + a, ex->file, ex->line);
            if (!ex) {
                if (!(ex = ldm__cfgp_node(p, LDM_CONFIG_MAP))) return LDM_ERR_NOMEM;
                if (ldm__cfgp_put(p, map, last, last_len, ex)) { ldm__cfg_free(ex); return LDM_ERR_FORMAT; }
            }
            ex->ldm__defined = 1;
            sec = ex;
            continue;
        }
        eq = (const char *)memchr(c, '=', n);
        if (!eq) {
            if (memchr(c, ':', n))
                return ldm__cfg_err(p->err, LDM_ERR_FORMAT, p->file, p->line,
                                    "expected 'key = value', found '%.*s'; INI uses '=' (a YAML file must end in .yaml)", (int)n, c);
            return ldm__cfg_err(p->err, LDM_ERR_FORMAT, p->file, p->line, "expected 'key = value', found '%.*s'", (int)n, c);
        }
        kl = (size_t)(eq - c);
        while (kl && ldm__cfg_space(c[kl - 1])) kl--;
        if (!kl) return ldm__cfg_err(p->err, LDM_ERR_FORMAT, p->file, p->line, "value without a key: '%.*s'", (int)n, c);
        eq++;
        while (eq < c + n && ldm__cfg_space(*eq)) eq++;
        if (eq == c + n)
            return ldm__cfg_err(p->err, LDM_ERR_FORMAT, p->file, p->line,
                                "'%.*s' has no value; write \"\" for an empty string, [] for an empty list or null", (int)kl, c);
        if (!(map = ldm__cfgp_walk(p, sec, c, kl, &last, &last_len))) return LDM_ERR_FORMAT;
        if (!(v = ldm__cfgp_top(p, eq, (size_t)(c + n - eq)))) return LDM_ERR_FORMAT;
        v->ldm__defined = 1;
        if (ldm__cfgp_put(p, map, last, last_len, v)) { ldm__cfg_free(v); return LDM_ERR_FORMAT; }
    }
    return LDM_OK;
}

/* ---- YAML (block subset) ---------------------------------------------------------------- */
typedef struct ldm__yline { int indent, line; const char *t; size_t n; } ldm__yline;
typedef struct ldm__yaml { ldm__cfgp *p; ldm__yline *l; int nl, pos, depth; } ldm__yaml;

static int ldm__yaml_fill(ldm__yaml *y, int ind, ldm_config_node *node);

static int ldm__yaml_dash(const char *t, size_t n) { return n && t[0] == '-' && (n == 1 || ldm__cfg_space(t[1])); }

/* Length of "key" when t is "key: ..." or "key:", else 0. */
static size_t ldm__yaml_key(const char *t, size_t n) {
    size_t k = 0;
    while (k < n && (ldm__cfg_key_char(t[k]) || t[k] == '.')) k++;
    if (k && k < n && t[k] == ':' && (k + 1 == n || ldm__cfg_space(t[k + 1]))) return k;
    return 0;
}

static int ldm__yaml_fail(ldm__yaml *y, int line, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static int ldm__yaml_fail(ldm__yaml *y, int line, const char *fmt, ...) {
    va_list ap;
    y->p->line = line;
    va_start(ap, fmt);
    ldm__cfg_verr(y->p->err, LDM_ERR_FORMAT, y->p->file, line, fmt, ap);
    va_end(ap);
    return -1;
}

/* A new, empty block node for the line at y->pos: a list when it starts with "- ". */
static ldm_config_node *ldm__yaml_new_block(ldm__yaml *y, int line) {
    const ldm__yline *L = &y->l[y->pos];
    ldm_config_node *v;
    y->p->line = line;
    v = ldm__cfgp_node(y->p, ldm__yaml_dash(L->t, L->n) ? LDM_CONFIG_LIST : LDM_CONFIG_MAP);
    return v;
}

/* Containers are attached to the tree before their content is read, so that messages name
   their full path and a failure leaves nothing to free but the tree. */
static int ldm__yaml_map(ldm__yaml *y, int ind, ldm_config_node *map) {
    ldm__cfgp *p = y->p;
    while (y->pos < y->nl) {
        ldm__yline *L = &y->l[y->pos];
        ldm_config_node *v, *dst;
        const char *last;
        size_t kl, last_len, vs;
        int line = L->line, block = 0;
        p->line = line;
        if (L->indent < ind) break;
        if (L->indent > ind) return ldm__yaml_fail(y, line, "bad indentation: %d spaces where this mapping's keys have %d", L->indent, ind);
        if (ldm__yaml_dash(L->t, L->n))
            return ldm__yaml_fail(y, line, "a list item '- ...' among the keys of a mapping; a list must be the value of a key "
                                  "(indent it under 'key:')");
        kl = ldm__yaml_key(L->t, L->n);
        if (!kl) {
            if (L->t[0] == '"' || L->t[0] == '\'') return ldm__yaml_fail(y, line, "quoted keys are not supported");
            return ldm__yaml_fail(y, line, "expected 'key: value', found '%.*s' (a key is one word; a value cannot continue on "
                                  "the next line)", (int)(L->n < 40 ? L->n : 40), L->t);
        }
        vs = kl + 1;
        while (vs < L->n && ldm__cfg_space(L->t[vs])) vs++;
        y->pos++;
        if (vs == L->n) {
            const ldm__yline *next = y->pos < y->nl ? &y->l[y->pos] : NULL;
            block = next && (next->indent > ind || (next->indent == ind && ldm__yaml_dash(next->t, next->n)));
            v = block ? ldm__yaml_new_block(y, line) : (p->line = line, ldm__cfgp_node(p, LDM_CONFIG_NULL));
        } else {
            if (L->t[vs] == '|' || L->t[vs] == '>')
                return ldm__yaml_fail(y, line, "block scalars ('|', '>') are not supported; write the string in quotes on one line");
            p->line = line;
            v = ldm__cfgp_top(p, L->t + vs, L->n - vs);
        }
        if (!v) return -1;
        v->line = line;
        p->line = line;
        if (!(dst = ldm__cfgp_walk(p, map, L->t, kl, &last, &last_len)) || ldm__cfgp_put(p, dst, last, last_len, v)) {
            ldm__cfg_free(v);
            return -1;
        }
        if (block && ldm__yaml_fill(y, y->l[y->pos].indent, v)) return -1;
    }
    return 0;
}

static int ldm__yaml_seq(ldm__yaml *y, int ind, ldm_config_node *list) {
    ldm__cfgp *p = y->p;
    while (y->pos < y->nl) {
        ldm__yline *L = &y->l[y->pos];
        ldm_config_node *v;
        size_t off = 1;
        int line = L->line, block = 1;
        p->line = line;
        if (L->indent < ind) break;
        if (L->indent > ind) return ldm__yaml_fail(y, line, "bad indentation: %d spaces where this list's items have %d", L->indent, ind);
        if (!ldm__yaml_dash(L->t, L->n)) break;
        while (off < L->n && ldm__cfg_space(L->t[off])) off++;
        if (off == L->n) { /* "-" alone: the item is the block under it, or null */
            y->pos++;
            block = y->pos < y->nl && y->l[y->pos].indent > ind;
            v = block ? ldm__yaml_new_block(y, line) : ldm__cfgp_node(p, LDM_CONFIG_NULL);
        } else if (ldm__yaml_dash(L->t + off, L->n - off) || ldm__yaml_key(L->t + off, L->n - off)) {
            /* "- key: v" / "- - x": the rest of the line starts a block at its own column */
            L->indent = ind + (int)off;
            L->t += off;
            L->n -= off;
            v = ldm__yaml_new_block(y, line);
        } else {
            block = 0;
            y->pos++;
            v = ldm__cfgp_top(p, L->t + off, L->n - off);
        }
        if (!v) return -1;
        v->line = line;
        if (ldm__cfg_append(list, v)) { ldm__cfg_free(v); ldm__cfg_oom(p->err); return -1; }
        if (block && ldm__yaml_fill(y, y->l[y->pos].indent, v)) return -1;
    }
    return 0;
}

static int ldm__yaml_fill(ldm__yaml *y, int ind, ldm_config_node *node) {
    int r;
    if (++y->depth > LDM__CFG_MAX_DEPTH) return ldm__yaml_fail(y, y->l[y->pos].line, "blocks nested more than %d deep", LDM__CFG_MAX_DEPTH);
    r = node->type == LDM_CONFIG_LIST ? ldm__yaml_seq(y, ind, node) : ldm__yaml_map(y, ind, node);
    y->depth--;
    return r;
}

static ldm_result ldm__cfg_parse_yaml(ldm__cfgp *p, const char *text) {
    ldm__yaml y;
    const char *line = text;
    int cap = 0, lineno = 0;
    ldm_result r = LDM_OK;
    memset(&y, 0, sizeof y);
    y.p = p;
    while (*line) {
        const char *eol = strchr(line, '\n'), *c;
        size_t n;
        int ind = 0;
        if (!eol) eol = line + strlen(line);
        lineno++;
        c = line;
        line = *eol ? eol + 1 : eol;
        while (c < eol && *c == ' ') { c++; ind++; }
        if (c < eol && *c == '\t') {
            const char *d = c;
            while (d < eol && (ldm__cfg_space(*d) || *d == '\r')) d++;
            if (d < eol && *d != '#') {
                r = ldm__cfg_err(p->err, LDM_ERR_FORMAT, p->file, lineno,
                                 "tab character in the indentation; YAML indents with spaces only");
                break;
            }
            continue;
        }
        n = ldm__cfg_strip_comment(c, (size_t)(eol - c), 0);
        while (n && (ldm__cfg_space(c[n - 1]) || c[n - 1] == '\r')) n--;
        if (!n) continue;
        if (n >= 3 && memcmp(c, "---", 3) == 0 && (n == 3 || ldm__cfg_space(c[3]))) {
            if (y.nl == 0 && n == 3) continue;
            r = ldm__cfg_err(p->err, LDM_ERR_FORMAT, p->file, lineno,
                             y.nl ? "a second YAML document ('---') is not supported; use one file per config"
                                  : "content after '---' on the same line is not supported");
            break;
        }
        if (n == 3 && memcmp(c, "...", 3) == 0) break; /* end of the document */
        if (y.nl == cap) {
            ldm__yline *l;
            cap = cap ? cap * 2 : 64;
            if (!(l = (ldm__yline *)LDM_REALLOC(y.l, sizeof *l * (size_t)cap))) { r = ldm__cfg_oom(p->err); break; }
            y.l = l;
        }
        y.l[y.nl].indent = ind;
        y.l[y.nl].line = lineno;
        y.l[y.nl].t = c;
        y.l[y.nl].n = n;
        y.nl++;
    }
    if (r == LDM_OK && y.nl) {
        if (ldm__yaml_dash(y.l[0].t, y.l[0].n))
            r = ldm__cfg_err(p->err, LDM_ERR_FORMAT, p->file, y.l[0].line,
                             "the top level must be a mapping ('key: value'), not a list");
        else if (ldm__yaml_fill(&y, y.l[0].indent, p->tree->root))
            r = LDM_ERR_FORMAT;
        else if (y.pos < y.nl)
            r = ldm__cfg_err(p->err, LDM_ERR_FORMAT, p->file, y.l[y.pos].line,
                             "bad indentation: %d spaces, but the document's top-level keys have %d", y.l[y.pos].indent, y.l[0].indent);
    }
    LDM_FREE(y.l);
    return r;
}

/* ---- loading, merging, overrides -------------------------------------------------------- */
static ldm_config_format ldm__cfg_detect(const char *name, const char *text) {
    const char *dot = name ? strrchr(name, '.') : NULL, *c = text;
    if (dot) {
        char ext[8];
        size_t k;
        for (k = 0; dot[k + 1] && k + 1 < sizeof ext; k++) ext[k] = (char)(dot[k + 1] | 0x20);
        ext[k] = 0;
        if (!dot[k + 1]) {
            if (!strcmp(ext, "yaml") || !strcmp(ext, "yml")) return LDM_CONFIG_FORMAT_YAML;
            if (!strcmp(ext, "ini") || !strcmp(ext, "cfg") || !strcmp(ext, "conf")) return LDM_CONFIG_FORMAT_INI;
        }
    }
    /* content: the first line that is not blank or a comment */
    while (*c) {
        const char *eol = strchr(c, '\n'), *e, *colon;
        if (!eol) eol = c + strlen(c);
        while (c < eol && (ldm__cfg_space(*c) || *c == '\r')) c++;
        if (c < eol && *c != '#' && *c != ';') {
            if (*c == '[') return LDM_CONFIG_FORMAT_INI;
            if (ldm__yaml_dash(c, (size_t)(eol - c)) || (eol - c == 3 && !memcmp(c, "---", 3))) return LDM_CONFIG_FORMAT_YAML;
            e = (const char *)memchr(c, '=', (size_t)(eol - c));
            colon = (const char *)memchr(c, ':', (size_t)(eol - c));
            return (colon && (!e || colon < e)) ? LDM_CONFIG_FORMAT_YAML : LDM_CONFIG_FORMAT_INI;
        }
        c = *eol ? eol + 1 : eol;
    }
    return LDM_CONFIG_FORMAT_INI;
}

/* OmegaConf.merge: mappings merge recursively; everything else replaces. */
static ldm_result ldm__cfg_merge(ldm_config *dst, ldm_config_node *d, const ldm_config_node *s) {
    int k;
    for (k = 0; k < s->n; k++) {
        const ldm_config_node *c = s->child[k];
        ldm_config_node *ex = ldm__cfg_child(d, c->key, strlen(c->key)), *cp;
        if (ex && ex->type == LDM_CONFIG_MAP && c->type == LDM_CONFIG_MAP) {
            ldm_result r = ldm__cfg_merge(dst, ex, c);
            if (r) return r;
            continue;
        }
        if (!(cp = ldm__cfg_copy(dst, c))) return ldm__cfg_oom(dst);
        if (ex) {
            int j;
            for (j = 0; d->child[j] != ex; j++) {}
            d->child[j] = cp;
            cp->parent = d;
            ldm__cfg_free(ex);
        } else if (ldm__cfg_append(d, cp)) {
            ldm__cfg_free(cp);
            return ldm__cfg_oom(dst);
        }
    }
    return LDM_OK;
}

LDM_API ldm_result ldm_config_merge(ldm_config *dst, const ldm_config *src) {
    if (dst->root->n == 0) { /* an empty tree takes its location from the first file merged into it */
        const char *file = ldm__cfg_intern(dst, src->root->file);
        if (!file) return ldm__cfg_oom(dst);
        dst->root->file = file;
        dst->root->line = src->root->line;
    }
    return ldm__cfg_merge(dst, dst->root, src->root);
}

LDM_API ldm_result ldm_config_load_string(ldm_config *cfg, const char *text, const char *name, ldm_config_format fmt) {
    ldm_config *tmp;
    ldm__cfgp p;
    ldm_result r;
    if (!name) name = "<string>";
    if (ldm_config_create(&tmp)) return ldm__cfg_oom(cfg);
    memset(&p, 0, sizeof p);
    p.err = cfg;
    p.tree = tmp;
    if (!(p.file = ldm__cfg_intern(tmp, name))) { ldm_config_destroy(tmp); return ldm__cfg_oom(cfg); }
    tmp->root->file = p.file;
    if ((unsigned char)text[0] == 0xEF && (unsigned char)text[1] == 0xBB && (unsigned char)text[2] == 0xBF) text += 3;
    if (fmt == LDM_CONFIG_FORMAT_AUTO) fmt = ldm__cfg_detect(name, text);
    p.yaml = fmt == LDM_CONFIG_FORMAT_YAML;
    r = p.yaml ? ldm__cfg_parse_yaml(&p, text) : ldm__cfg_parse_ini(&p, text);
    if (r == LDM_OK) r = ldm_config_merge(cfg, tmp);
    ldm_config_destroy(tmp);
    return r;
}

LDM_API ldm_result ldm_config_load(ldm_config *cfg, const char *path) {
    FILE *f = fopen(path, "rb");
    char *text;
    long size;
    size_t got;
    ldm_result r;
    if (!f) return ldm__cfg_err(cfg, LDM_ERR_IO, NULL, 0, "cannot open config '%s': %s; check the path", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) {
        fclose(f);
        return ldm__cfg_err(cfg, LDM_ERR_IO, NULL, 0, "cannot read config '%s': not a regular file", path);
    }
    if (!(text = (char *)LDM_MALLOC((size_t)size + 4))) { fclose(f); return ldm__cfg_oom(cfg); }
    got = fread(text, 1, (size_t)size, f);
    fclose(f);
    if (got != (size_t)size) { LDM_FREE(text); return ldm__cfg_err(cfg, LDM_ERR_IO, NULL, 0, "cannot read config '%s'", path); }
    memset(text + got, 0, 4);
    if (memchr(text, 0, got)) {
        int line = 1;
        const char *z = (const char *)memchr(text, 0, got), *c;
        for (c = text; c < z; c++) line += *c == '\n';
        LDM_FREE(text);
        return ldm__cfg_err(cfg, LDM_ERR_FORMAT, path, line, "NUL byte in a config file (is it a binary file?)");
    }
    r = ldm_config_load_string(cfg, text, path, LDM_CONFIG_FORMAT_AUTO);
    LDM_FREE(text);
    return r;
}

/* Path segments: "a.b[2].c", "a.b.2.c". Returns 1 with a segment, 0 at the end, -1 on bad syntax. */
typedef struct ldm__cfg_seg { const char *key; size_t len; int index; } ldm__cfg_seg; /* index >= 0: "[i]" */
static int ldm__cfg_next_seg(const char **pp, ldm__cfg_seg *seg) {
    const char *s = *pp;
    if (!*s) return 0;
    seg->index = -1;
    if (*s == '[') {
        long v = 0;
        s++;
        if (!ldm__cfg_digit(*s)) return -1;
        while (ldm__cfg_digit(*s)) { v = v * 10 + (*s - '0'); if (v > INT_MAX) return -1; s++; }
        if (*s != ']') return -1;
        s++;
        seg->index = (int)v;
        seg->key = NULL;
        seg->len = 0;
    } else {
        seg->key = s;
        while (*s && *s != '.' && *s != '[') { if (!ldm__cfg_key_char(*s)) return -1; s++; }
        seg->len = (size_t)(s - seg->key);
        if (!seg->len) return -1;
    }
    if (*s == '.') { s++; if (!*s) return -1; }
    *pp = s;
    return 1;
}

/* The child a segment names: a mapping key, or a list index ("[i]" or an all-digit key). */
static ldm_config_node *ldm__cfg_step(const ldm_config_node *node, const ldm__cfg_seg *seg) {
    long idx = seg->index;
    if (node->type == LDM_CONFIG_MAP && seg->key) return ldm__cfg_child(node, seg->key, seg->len);
    if (node->type != LDM_CONFIG_LIST) return NULL;
    if (seg->key) {
        size_t k;
        idx = 0;
        for (k = 0; k < seg->len; k++) {
            if (!ldm__cfg_digit(seg->key[k]) || idx > INT_MAX / 10) return NULL;
            idx = idx * 10 + (seg->key[k] - '0');
        }
    }
    return idx < node->n ? node->child[idx] : NULL;
}

LDM_API const ldm_config_node *ldm_config_find(const ldm_config_node *node, const char *path) {
    ldm__cfg_seg seg;
    int r;
    if (!node || !path) return node;
    while (node && (r = ldm__cfg_next_seg(&path, &seg)) != 0) {
        if (r < 0) return NULL;
        node = ldm__cfg_step(node, &seg);
    }
    return node;
}

LDM_API ldm_result ldm_config_set(ldm_config *cfg, const char *assignment, const char *origin) {
    const char *eq = strchr(assignment, '='), *path = assignment;
    ldm_config *tmp;
    ldm__cfgp p;
    ldm_config_node *v, *node = cfg->root, *ex = NULL, *cp;
    ldm__cfg_seg seg, next;
    char *pathbuf;
    const char *vs;
    size_t pl;
    int line = ++cfg->n_overrides, r;
    ldm_result res = LDM_OK;
    if (!origin) origin = "<command line>";
    if (!eq) return ldm__cfg_err(cfg, LDM_ERR_INVALID, origin, line, "override '%s' is not 'key=value'", assignment);
    pl = (size_t)(eq - assignment);
    while (pl && ldm__cfg_space(assignment[pl - 1])) pl--;
    while (pl && ldm__cfg_space(*path)) { path++; pl--; }
    vs = eq + 1;
    while (ldm__cfg_space(*vs)) vs++;
    if (!*vs)
        return ldm__cfg_err(cfg, LDM_ERR_INVALID, origin, line,
                            "override '%s' has no value; write \"\" for an empty string, [] for an empty list or null", assignment);
    if (!(pathbuf = ldm__cfg_strndup(path, pl))) return ldm__cfg_oom(cfg);
    if (ldm_config_create(&tmp)) { LDM_FREE(pathbuf); return ldm__cfg_oom(cfg); }
    memset(&p, 0, sizeof p);
    p.err = cfg;
    p.tree = tmp;
    p.line = line;
    if (!(p.file = ldm__cfg_intern(tmp, origin))) { res = ldm__cfg_oom(cfg); goto done; }
    {
        size_t n = strlen(vs);
        while (n && ldm__cfg_space(vs[n - 1])) n--;
        if (!(v = ldm__cfgp_top(&p, vs, n))) { res = LDM_ERR_INVALID; goto done; }
        ldm__cfg_free(tmp->root);
        tmp->root = v;
    }
    path = pathbuf;
    if ((r = ldm__cfg_next_seg(&path, &seg)) <= 0) {
        res = ldm__cfg_err(cfg, LDM_ERR_INVALID, origin, line, "override '%s': bad key '%s'", assignment, pathbuf);
        goto done;
    }
    for (;;) {
        if ((r = ldm__cfg_next_seg(&path, &next)) < 0) {
            res = ldm__cfg_err(cfg, LDM_ERR_INVALID, origin, line, "override '%s': bad key '%s'", assignment, pathbuf);
            goto done;
        }
        ex = ldm__cfg_step(node, &seg);
        if (!ex && (node->type != LDM_CONFIG_MAP || !seg.key)) {
            char where[256];
            res = ldm__cfg_err(cfg, LDM_ERR_INVALID, origin, line, "override '%s': %s (%s, %s:%d) has no item %.*s%s",
                               assignment, ldm_config_path(node, where, sizeof where), ldm_config_type_name(node->type),
                               node->file, node->line, seg.key ? (int)seg.len : 0, seg.key ? seg.key : "", seg.key ? "" : "[index]");
            goto done;
        }
        if (r == 0) break;
        if (!ex) {
            if (!(ex = ldm__cfg_node(cfg, LDM_CONFIG_MAP, origin, line)) || !(ex->key = ldm__cfg_strndup(seg.key, seg.len))
                || ldm__cfg_append(node, ex)) {
                ldm__cfg_free(ex);
                res = ldm__cfg_oom(cfg);
                goto done;
            }
        } else if (ex->type != LDM_CONFIG_MAP && ex->type != LDM_CONFIG_LIST) {
            char where[256];
            res = ldm__cfg_err(cfg, LDM_ERR_INVALID, origin, line,
                               "override '%s': %s is a value (%s, set at %s:%d), not a mapping; nothing can be set inside it",
                               assignment, ldm_config_path(ex, where, sizeof where), ldm_config_type_name(ex->type), ex->file, ex->line);
            goto done;
        }
        node = ex;
        seg = next;
    }
    if (ex && ex->type == LDM_CONFIG_MAP && v->type == LDM_CONFIG_MAP) { res = ldm__cfg_merge(cfg, ex, v); goto done; }
    if (!(cp = ldm__cfg_copy(cfg, v)) || (!ex && !(cp->key = ldm__cfg_strndup(seg.key, seg.len)))) {
        ldm__cfg_free(cp);
        res = ldm__cfg_oom(cfg);
        goto done;
    }
    if (ex) {
        int j;
        for (j = 0; node->child[j] != ex; j++) {}
        if (ex->key && !(cp->key = ldm__cfg_strndup(ex->key, strlen(ex->key)))) { ldm__cfg_free(cp); res = ldm__cfg_oom(cfg); goto done; }
        node->child[j] = cp;
        cp->parent = node;
        ldm__cfg_free(ex);
    } else if (ldm__cfg_append(node, cp)) {
        ldm__cfg_free(cp);
        res = ldm__cfg_oom(cfg);
    }
done:
    ldm_config_destroy(tmp);
    LDM_FREE(pathbuf);
    return res;
}

/* ---- equality --------------------------------------------------------------------------- */
static int ldm__cfg_neq(const ldm_config_node *a, const ldm_config_node *b, char *why, size_t n, const char *what) {
    char path[256], da[96], db[96];
    if (why && n)
        snprintf(why, n, "%s: %s%s (%s:%d) vs %s (%s:%d)", ldm_config_path(a, path, sizeof path), what,
                 ldm__cfg_describe(a, da, sizeof da), a->file, a->line, ldm__cfg_describe(b, db, sizeof db), b->file, b->line);
    return 0;
}

LDM_API int ldm_config_equal(const ldm_config_node *a, const ldm_config_node *b, char *why, size_t n) {
    int k;
    if (a->type != b->type) return ldm__cfg_neq(a, b, why, n, "");
    switch (a->type) {
    case LDM_CONFIG_NULL: return 1;
    case LDM_CONFIG_BOOL:
    case LDM_CONFIG_INT: return a->i == b->i ? 1 : ldm__cfg_neq(a, b, why, n, "");
    case LDM_CONFIG_FLOAT: return (a->f == b->f || (a->f != a->f && b->f != b->f)) ? 1 : ldm__cfg_neq(a, b, why, n, "");
    case LDM_CONFIG_STR: return strcmp(a->s, b->s) == 0 ? 1 : ldm__cfg_neq(a, b, why, n, "");
    case LDM_CONFIG_LIST:
        if (a->n != b->n) return ldm__cfg_neq(a, b, why, n, "lengths differ: ");
        for (k = 0; k < a->n; k++) if (!ldm_config_equal(a->child[k], b->child[k], why, n)) return 0;
        return 1;
    case LDM_CONFIG_MAP:
        for (k = 0; k < a->n; k++) {
            const ldm_config_node *c = ldm__cfg_child(b, a->child[k]->key, strlen(a->child[k]->key));
            if (!c) {
                char path[256];
                if (why && n) snprintf(why, n, "%s (%s:%d) is missing on the other side (%s:%d)",
                                       ldm_config_path(a->child[k], path, sizeof path), a->child[k]->file, a->child[k]->line, b->file, b->line);
                return 0;
            }
            if (!ldm_config_equal(a->child[k], c, why, n)) return 0;
        }
        if (a->n != b->n) {
            for (k = 0; k < b->n; k++)
                if (!ldm__cfg_child(a, b->child[k]->key, strlen(b->child[k]->key))) {
                    char path[256];
                    if (why && n) snprintf(why, n, "%s (%s:%d) is missing on the first side (%s:%d)",
                                           ldm_config_path(b->child[k], path, sizeof path), b->child[k]->file, b->child[k]->line, a->file, a->line);
                    return 0;
                }
        }
        return 1;
    }
    return 0;
}

/* ---- INI dump --------------------------------------------------------------------------- */
/* A string may be written bare when it reads back as the same string in every INI value
   position: safe characters only and not typed as a number, bool or null. */
static int ldm__cfg_bare_ok(const char *s) {
    size_t k, n = strlen(s);
    double f;
    if (!n) return 0;
    for (k = 0; k < n; k++) {
        char c = s[k];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || ldm__cfg_digit(c) || strchr("_./+-", c))) return 0;
    }
    if (!strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL") || !strcmp(s, "true") || !strcmp(s, "True")
        || !strcmp(s, "TRUE") || !strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE"))
        return 0;
    return !ldm__cfg_is_int(s, n) && !ldm__cfg_is_float(s, n) && !ldm__cfg_special_float(s, n, &f);
}

static void ldm__cfg_write_str(FILE *f, const char *s) {
    if (ldm__cfg_bare_ok(s)) { fputs(s, f); return; }
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { fputc('\\', f); fputc(c, f); }
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c == '\r') fputs("\\r", f);
        else if (c < 0x20 || c == 0x7f) fprintf(f, "\\x%02x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static void ldm__cfg_write_value(FILE *f, const ldm_config_node *v) {
    char num[40];
    int k;
    switch (v->type) {
    case LDM_CONFIG_NULL: fputs("null", f); break;
    case LDM_CONFIG_BOOL: fputs(v->i ? "true" : "false", f); break;
    case LDM_CONFIG_INT: fprintf(f, "%lld", (long long)v->i); break;
    case LDM_CONFIG_FLOAT: ldm__cfg_fmt_float(v->f, num, sizeof num); fputs(num, f); break;
    case LDM_CONFIG_STR: ldm__cfg_write_str(f, v->s); break;
    case LDM_CONFIG_LIST:
    case LDM_CONFIG_MAP:
        fputc(v->type == LDM_CONFIG_LIST ? '[' : '{', f);
        for (k = 0; k < v->n; k++) {
            if (k) fputs(", ", f);
            if (v->type == LDM_CONFIG_MAP) fprintf(f, "%s: ", v->child[k]->key);
            ldm__cfg_write_value(f, v->child[k]);
        }
        fputc(v->type == LDM_CONFIG_LIST ? ']' : '}', f);
        break;
    }
}

static int ldm__cfg_nonempty_map(const ldm_config_node *v) { return v->type == LDM_CONFIG_MAP && v->n > 0; }

/* A mapping's plain values (empty mappings included, as {}) first, then its non-empty
   mappings as [sections], each group in insertion order. */
static int ldm__cfg_dump_map(FILE *f, const ldm_config_node *m, ldm__cfg_buf *path, int *wrote) {
    int k, plain = 0;
    size_t mark = path->n;
    for (k = 0; k < m->n; k++) plain += !ldm__cfg_nonempty_map(m->child[k]);
    if (path->n && plain) { /* a header with nothing under it is implied by its sub-sections */
        fprintf(f, "%s[%s]\n", *wrote ? "\n" : "", path->p);
        *wrote = 1;
    }
    for (k = 0; k < m->n; k++) {
        if (ldm__cfg_nonempty_map(m->child[k])) continue;
        fprintf(f, "%s = ", m->child[k]->key);
        ldm__cfg_write_value(f, m->child[k]);
        fputc('\n', f);
        *wrote = 1;
    }
    for (k = 0; k < m->n; k++) {
        if (!ldm__cfg_nonempty_map(m->child[k])) continue;
        if ((path->n && ldm__cfg_buf_put(path, ".", 1)) || ldm__cfg_buf_put(path, m->child[k]->key, strlen(m->child[k]->key))
            || ldm__cfg_dump_map(f, m->child[k], path, wrote))
            return -1;
        path->n = mark;
        path->p[mark] = 0;
    }
    return 0;
}

LDM_API ldm_result ldm_config_dump(ldm_config *cfg, const ldm_config_node *node, FILE *f) {
    ldm__cfg_buf path = {NULL, 0, 0};
    int wrote = 0, bad;
    if (!node) node = cfg->root;
    if (node->type != LDM_CONFIG_MAP) {
        char where[256], desc[128];
        return ldm__cfg_err(cfg, LDM_ERR_INVALID, node->file, node->line, "cannot dump %s as INI: it is %s, not a mapping",
                            ldm_config_path(node, where, sizeof where), ldm__cfg_describe(node, desc, sizeof desc));
    }
    if (ldm__cfg_buf_put(&path, "", 0)) return ldm__cfg_oom(cfg);
    bad = ldm__cfg_dump_map(f, node, &path, &wrote);
    LDM_FREE(path.p);
    if (bad) return ldm__cfg_oom(cfg);
    if (fflush(f) || ferror(f)) return ldm__cfg_err(cfg, LDM_ERR_IO, NULL, 0, "writing the config failed: %s", strerror(errno));
    return LDM_OK;
}

LDM_API ldm_result ldm_config_save(ldm_config *cfg, const ldm_config_node *node, const char *path) {
    FILE *f = fopen(path, "wb");
    ldm_result r;
    if (!f) return ldm__cfg_err(cfg, LDM_ERR_IO, NULL, 0, "cannot write config '%s': %s; does its folder exist?", path, strerror(errno));
    r = ldm_config_dump(cfg, node, f);
    if (fclose(f) && r == LDM_OK) r = ldm__cfg_err(cfg, LDM_ERR_IO, NULL, 0, "writing config '%s' failed: %s", path, strerror(errno));
    return r;
}

/* ---- conversions, getters, schemas ------------------------------------------------------ */
LDM_API int ldm_config_edit_distance(const char *a, const char *b) {
    int la = (int)strlen(a), lb = (int)strlen(b), i, j, *d, r;
    if (la > 200 || lb > 200) return la > lb ? la : lb;
    if (!(d = (int *)LDM_MALLOC(sizeof(int) * (size_t)(la + 1) * (size_t)(lb + 1)))) return la > lb ? la : lb;
#define LDM__D(i, j) d[(i) * (lb + 1) + (j)]
    for (i = 0; i <= la; i++) LDM__D(i, 0) = i;
    for (j = 0; j <= lb; j++) LDM__D(0, j) = j;
    for (i = 1; i <= la; i++)
        for (j = 1; j <= lb; j++) {
            int cost = a[i - 1] != b[j - 1], v = LDM__D(i - 1, j - 1) + cost;
            if (LDM__D(i - 1, j) + 1 < v) v = LDM__D(i - 1, j) + 1;
            if (LDM__D(i, j - 1) + 1 < v) v = LDM__D(i, j - 1) + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && LDM__D(i - 2, j - 2) + 1 < v) v = LDM__D(i - 2, j - 2) + 1;
            LDM__D(i, j) = v;
        }
    r = LDM__D(la, lb);
#undef LDM__D
    LDM_FREE(d);
    return r;
}

/* Close enough to suggest: at most 2 edits, or a third of the longer name. */
static int ldm__cfg_close(const char *a, const char *b, int *best) {
    int d = ldm_config_edit_distance(a, b), la = (int)strlen(a), lb = (int)strlen(b);
    int lim = (la > lb ? la : lb) / 3;
    if (lim < 2) lim = 2;
    if (d <= lim && d < *best) { *best = d; return 1; }
    return 0;
}

static int ldm__cfg_to_i64(const ldm_config_node *v, int64_t *out) {
    if (v->type == LDM_CONFIG_INT) { *out = v->i; return 0; }
    if (v->type == LDM_CONFIG_FLOAT && v->f == floor(v->f) && v->f >= -9223372036854775808.0 && v->f < 9223372036854775808.0) {
        *out = (int64_t)v->f;
        return 0;
    }
    return -1;
}

static const char *ldm__cfg_hint(ldm_config_kind kind) {
    switch (kind) {
    case LDM_CONFIG_KIND_BOOL: return "write true or false";
    case LDM_CONFIG_KIND_INT:
    case LDM_CONFIG_KIND_I64: return "write a whole number such as 4";
    case LDM_CONFIG_KIND_FLOAT: return "write a number such as 0.5 or 4.5e-6";
    case LDM_CONFIG_KIND_STR: return "quote it to make it a string";
    default: return "write a list such as [1, 2, 4]";
    }
}

static ldm_result ldm__cfg_type_err(ldm_config *cfg, const ldm_config_node *v, ldm_config_kind kind, const char *extra) {
    char path[256], desc[128];
    const char *name = ldm_config_kind_name(kind);
    return ldm__cfg_err(cfg, LDM_ERR_INVALID, v->file, v->line, "%s: expected %s %s, found %s%s; %s",
                        ldm_config_path(v, path, sizeof path), strchr("aeiou", name[0]) ? "an" : "a", name,
                        ldm__cfg_describe(v, desc, sizeof desc), extra, ldm__cfg_hint(kind));
}

/* A scalar node v to the scalar kind at dst. */
static ldm_result ldm__cfg_scalar_to(ldm_config *cfg, const ldm_config_node *v, ldm_config_kind kind, void *dst) {
    int64_t i;
    switch (kind) {
    case LDM_CONFIG_KIND_BOOL:
        if (v->type != LDM_CONFIG_BOOL) return ldm__cfg_type_err(cfg, v, kind, "");
        *(int *)dst = (int)v->i;
        return LDM_OK;
    case LDM_CONFIG_KIND_INT:
    case LDM_CONFIG_KIND_I64:
        if (ldm__cfg_to_i64(v, &i))
            return ldm__cfg_type_err(cfg, v, kind, v->type == LDM_CONFIG_FLOAT ? " (not a whole number)" : "");
        if (kind == LDM_CONFIG_KIND_I64) { *(int64_t *)dst = i; return LDM_OK; }
        if (i < INT_MIN || i > INT_MAX) return ldm__cfg_type_err(cfg, v, kind, " (out of the range of an int)");
        *(int *)dst = (int)i;
        return LDM_OK;
    case LDM_CONFIG_KIND_FLOAT:
        if (v->type != LDM_CONFIG_FLOAT && v->type != LDM_CONFIG_INT) return ldm__cfg_type_err(cfg, v, kind, "");
        *(double *)dst = v->type == LDM_CONFIG_INT ? (double)v->i : v->f;
        return LDM_OK;
    case LDM_CONFIG_KIND_STR:
        if (v->type != LDM_CONFIG_STR) return ldm__cfg_type_err(cfg, v, kind, "");
        *(const char **)dst = v->s;
        return LDM_OK;
    default: break;
    }
    return ldm__cfg_type_err(cfg, v, kind, "");
}

/* Any present, non-null node v to kind at dst (the kind's C type). */
static ldm_result ldm__cfg_convert(ldm_config *cfg, const ldm_config_node *v, ldm_config_kind kind, void *dst) {
    ldm_config_kind item;
    int n, k, *count;
    size_t size;
    char *base;
    ldm_result r;
    switch (kind) {
    case LDM_CONFIG_KIND_NODE: *(const ldm_config_node **)dst = v; return LDM_OK;
    case LDM_CONFIG_KIND_INT_LIST:
        item = LDM_CONFIG_KIND_INT; count = &((ldm_config_ints *)dst)->n; base = (char *)((ldm_config_ints *)dst)->v; size = sizeof(int);
        break;
    case LDM_CONFIG_KIND_FLOAT_LIST:
        item = LDM_CONFIG_KIND_FLOAT; count = &((ldm_config_floats *)dst)->n; base = (char *)((ldm_config_floats *)dst)->v; size = sizeof(double);
        break;
    case LDM_CONFIG_KIND_STR_LIST:
        item = LDM_CONFIG_KIND_STR; count = &((ldm_config_strs *)dst)->n; base = (char *)((ldm_config_strs *)dst)->v; size = sizeof(const char *);
        break;
    default:
        if (v->type == LDM_CONFIG_LIST || v->type == LDM_CONFIG_MAP) return ldm__cfg_type_err(cfg, v, kind, "");
        return ldm__cfg_scalar_to(cfg, v, kind, dst);
    }
    if (v->type == LDM_CONFIG_MAP) return ldm__cfg_type_err(cfg, v, kind, "");
    if (v->type != LDM_CONFIG_LIST) { *count = 1; return ldm__cfg_scalar_to(cfg, v, item, base); }
    n = v->n;
    if (n > LDM_CONFIG_LIST_MAX) {
        char path[256];
        return ldm__cfg_err(cfg, LDM_ERR_INVALID, v->file, v->line, "%s: %d items, at most %d fit; define LDM_CONFIG_LIST_MAX larger",
                            ldm_config_path(v, path, sizeof path), n, LDM_CONFIG_LIST_MAX);
    }
    *count = 0;
    for (k = 0; k < n; k++) {
        const ldm_config_node *c = v->child[k];
        if (c->type == LDM_CONFIG_LIST || c->type == LDM_CONFIG_MAP || c->type == LDM_CONFIG_NULL)
            return ldm__cfg_type_err(cfg, c, item, "");
        if ((r = ldm__cfg_scalar_to(cfg, c, item, base + size * (size_t)k))) return r;
    }
    *count = n;
    return LDM_OK;
}

/* A default's text to kind. List defaults stay parsed in cfg (their strings are handed out). */
static ldm_result ldm__cfg_default(ldm_config *cfg, const char *key, ldm_config_kind kind, const char *def, void *dst) {
    ldm_config *tmp;
    ldm__cfgp p;
    ldm_config_node *v;
    ldm_result r;
    int k;
    size_t n;
    if (kind == LDM_CONFIG_KIND_STR) { *(const char **)dst = def; return LDM_OK; }
    if (kind == LDM_CONFIG_KIND_NODE) { *(const ldm_config_node **)dst = NULL; return LDM_OK; }
    n = def ? strlen(def) : 0;
    while (n && ldm__cfg_space(def[n - 1])) n--;
    while (n && ldm__cfg_space(*def)) { def++; n--; }
    if (n == 0 && kind == LDM_CONFIG_KIND_INT_LIST) { ((ldm_config_ints *)dst)->n = 0; return LDM_OK; }
    if (n == 0 && kind == LDM_CONFIG_KIND_FLOAT_LIST) { ((ldm_config_floats *)dst)->n = 0; return LDM_OK; }
    if (n == 0 && kind == LDM_CONFIG_KIND_STR_LIST) { ((ldm_config_strs *)dst)->n = 0; return LDM_OK; }
    for (k = 0; k < cfg->n_kept; k++)
        if (strlen(cfg->kept[k].text) == n && !memcmp(cfg->kept[k].text, def, n)) return ldm__cfg_convert(cfg, cfg->kept[k].node, kind, dst);
    if (ldm_config_create(&tmp)) return ldm__cfg_oom(cfg);
    memset(&p, 0, sizeof p);
    p.err = cfg;
    p.tree = tmp;
    if (!(p.file = ldm__cfg_intern(tmp, "<default>"))) { ldm_config_destroy(tmp); return ldm__cfg_oom(cfg); }
    if (!(v = ldm__cfgp_top(&p, def, n))) {
        char why[256];
        size_t l = strlen(cfg->err);
        if (l >= sizeof why) l = sizeof why - 1;
        memcpy(why, cfg->err, l);
        why[l] = 0;
        ldm_config_destroy(tmp);
        return ldm__cfg_err(cfg, LDM_ERR_INVALID, NULL, 0, "the default '%.*s' of '%s' does not parse: %s", (int)n, def, key, why);
    }
    v->key = ldm__cfg_strndup(key, strlen(key));
    if (!v->key) { ldm__cfg_free(v); ldm_config_destroy(tmp); return ldm__cfg_oom(cfg); }
    r = v->type == LDM_CONFIG_NULL ? ldm__cfg_type_err(cfg, v, kind, "") : ldm__cfg_convert(cfg, v, kind, dst);
    if (r == LDM_OK && kind == LDM_CONFIG_KIND_STR_LIST) {
        /* the node's file is interned in tmp: move it into cfg's table */
        char *text = ldm__cfg_strndup(def, n);
        ldm_config_node *keep = ldm__cfg_copy(cfg, v);
        if (text && keep && cfg->n_kept == cfg->cap_kept) {
            int cap = cfg->cap_kept ? cfg->cap_kept * 2 : 4;
            ldm__cfg_kept *kept = (ldm__cfg_kept *)LDM_REALLOC(cfg->kept, sizeof(ldm__cfg_kept) * (size_t)cap);
            if (kept) { cfg->kept = kept; cfg->cap_kept = cap; }
        }
        if (!text || !keep || cfg->n_kept == cfg->cap_kept) {
            LDM_FREE(text);
            ldm__cfg_free(keep);
            r = ldm__cfg_oom(cfg);
        } else {
            cfg->kept[cfg->n_kept].text = text;
            cfg->kept[cfg->n_kept++].node = keep;
            r = ldm__cfg_convert(cfg, keep, kind, dst);
        }
    }
    if (r != LDM_OK && r != LDM_ERR_NOMEM)
        r = ldm__cfg_err(cfg, LDM_ERR_INVALID, NULL, 0, "the default '%.*s' of '%s' is not a valid %s", (int)n, def, key, ldm_config_kind_name(kind));
    ldm__cfg_free(v);
    ldm_config_destroy(tmp);
    return r;
}

/* dst holds the default already, except for lists (def_text). */
static ldm_result ldm__cfg_get(ldm_config *cfg, const ldm_config_node *node, const char *path, ldm_config_kind kind,
                               const char *def_text, void *dst) {
    const ldm_config_node *v = ldm_config_find(node ? node : cfg->root, path);
    if (v && v->type != LDM_CONFIG_NULL) return ldm__cfg_convert(cfg, v, kind, dst);
    if (kind >= LDM_CONFIG_KIND_INT_LIST) return ldm__cfg_default(cfg, path ? path : "?", kind, def_text, dst);
    return LDM_OK;
}

LDM_API ldm_result ldm_config_get_bool(ldm_config *cfg, const ldm_config_node *node, const char *path, int def, int *out) {
    *out = def;
    return ldm__cfg_get(cfg, node, path, LDM_CONFIG_KIND_BOOL, NULL, out);
}
LDM_API ldm_result ldm_config_get_int(ldm_config *cfg, const ldm_config_node *node, const char *path, int def, int *out) {
    int v = def;
    ldm_result r = ldm__cfg_get(cfg, node, path, LDM_CONFIG_KIND_INT, NULL, &v);
    if (r == LDM_OK) *out = v;
    return r;
}
LDM_API ldm_result ldm_config_get_i64(ldm_config *cfg, const ldm_config_node *node, const char *path, int64_t def, int64_t *out) {
    int64_t v = def;
    ldm_result r = ldm__cfg_get(cfg, node, path, LDM_CONFIG_KIND_I64, NULL, &v);
    if (r == LDM_OK) *out = v;
    return r;
}
LDM_API ldm_result ldm_config_get_float(ldm_config *cfg, const ldm_config_node *node, const char *path, double def, double *out) {
    double v = def;
    ldm_result r = ldm__cfg_get(cfg, node, path, LDM_CONFIG_KIND_FLOAT, NULL, &v);
    if (r == LDM_OK) *out = v;
    return r;
}
LDM_API ldm_result ldm_config_get_str(ldm_config *cfg, const ldm_config_node *node, const char *path, const char *def, const char **out) {
    const char *v = def;
    ldm_result r = ldm__cfg_get(cfg, node, path, LDM_CONFIG_KIND_STR, NULL, &v);
    if (r == LDM_OK) *out = v;
    return r;
}
LDM_API ldm_result ldm_config_get_int_list(ldm_config *cfg, const ldm_config_node *node, const char *path, const char *def, ldm_config_ints *out) {
    ldm_config_ints v;
    ldm_result r = ldm__cfg_get(cfg, node, path, LDM_CONFIG_KIND_INT_LIST, def, &v);
    if (r == LDM_OK) *out = v;
    return r;
}
LDM_API ldm_result ldm_config_get_float_list(ldm_config *cfg, const ldm_config_node *node, const char *path, const char *def, ldm_config_floats *out) {
    ldm_config_floats v;
    ldm_result r = ldm__cfg_get(cfg, node, path, LDM_CONFIG_KIND_FLOAT_LIST, def, &v);
    if (r == LDM_OK) *out = v;
    return r;
}
LDM_API ldm_result ldm_config_get_str_list(ldm_config *cfg, const ldm_config_node *node, const char *path, const char *def, ldm_config_strs *out) {
    ldm_config_strs v;
    ldm_result r = ldm__cfg_get(cfg, node, path, LDM_CONFIG_KIND_STR_LIST, def, &v);
    if (r == LDM_OK) *out = v;
    return r;
}

LDM_API ldm_result ldm_config_get_field(ldm_config *cfg, const ldm_config_node *node, const char *key, ldm_config_kind kind,
                                        const char *def, void *dst) {
    const ldm_config_node *v = node && node->type == LDM_CONFIG_MAP ? ldm__cfg_child(node, key, strlen(key)) : NULL;
    if (v && v->type != LDM_CONFIG_NULL) return ldm__cfg_convert(cfg, v, kind, dst);
    if (!def) {
        char path[256];
        if (!node) return ldm__cfg_err(cfg, LDM_ERR_NOT_FOUND, NULL, 0, "missing required key '%s' (no section given)", key);
        return ldm__cfg_err(cfg, LDM_ERR_NOT_FOUND, node->file, node->line, "%s: missing required key '%s'%s",
                            ldm_config_path(node, path, sizeof path), key, v ? " (it is null)" : "");
    }
    return ldm__cfg_default(cfg, key, kind, def, dst);
}

/* "(>= 1)", "(<= 0.5)", "(in [-1, 32])" */
static void ldm__cfg_bounds_text(const ldm_config_field *fd, char *buf, size_t n) {
    char a[40], b[40];
    if (fd->kind == LDM_CONFIG_KIND_FLOAT || fd->kind == LDM_CONFIG_KIND_FLOAT_LIST) {
        ldm__cfg_fmt_float(fd->min, a, sizeof a);
        ldm__cfg_fmt_float(fd->max, b, sizeof b);
    } else {
        snprintf(a, sizeof a, "%.0f", fd->min);
        snprintf(b, sizeof b, "%.0f", fd->max);
    }
    if ((fd->bounds & LDM_CONFIG_MIN) && (fd->bounds & LDM_CONFIG_MAX)) snprintf(buf, n, "in [%s, %s]", a, b);
    else if (fd->bounds & LDM_CONFIG_MIN) snprintf(buf, n, ">= %s", a);
    else if (fd->bounds & LDM_CONFIG_MAX) snprintf(buf, n, "<= %s", b);
    else buf[0] = 0;
}

/* The converted value(s) of node v (at val, the kind's C type) against fd's bounds. */
static ldm_result ldm__cfg_check_bounds(ldm_config *cfg, const ldm_config_node *v, const ldm_config_field *fd, const void *val) {
    const void *items = val;
    int n = 1, k;
    ldm_config_kind item = fd->kind;
    if (fd->kind == LDM_CONFIG_KIND_INT_LIST) { n = ((const ldm_config_ints *)val)->n; items = ((const ldm_config_ints *)val)->v; item = LDM_CONFIG_KIND_INT; }
    if (fd->kind == LDM_CONFIG_KIND_FLOAT_LIST) { n = ((const ldm_config_floats *)val)->n; items = ((const ldm_config_floats *)val)->v; item = LDM_CONFIG_KIND_FLOAT; }
    for (k = 0; k < n; k++) {
        double x;
        char num[40], want[100], path[256];
        if (item == LDM_CONFIG_KIND_INT) x = (double)((const int *)items)[k];
        else if (item == LDM_CONFIG_KIND_I64) x = (double)((const int64_t *)items)[k];
        else if (item == LDM_CONFIG_KIND_FLOAT) x = ((const double *)items)[k];
        else return LDM_OK; /* bounds on a kind without numbers: nothing to check */
        if (!((fd->bounds & LDM_CONFIG_MIN) && !(x >= fd->min)) && !((fd->bounds & LDM_CONFIG_MAX) && !(x <= fd->max))) continue;
        const ldm_config_node *at = v->type == LDM_CONFIG_LIST && k < v->n ? v->child[k] : v;
        if (item == LDM_CONFIG_KIND_FLOAT) ldm__cfg_fmt_float(x, num, sizeof num);
        else snprintf(num, sizeof num, "%lld", item == LDM_CONFIG_KIND_I64 ? (long long)((const int64_t *)items)[k] : (long long)((const int *)items)[k]);
        ldm__cfg_bounds_text(fd, want, sizeof want);
        return ldm__cfg_err(cfg, LDM_ERR_INVALID, at->file, at->line, "%s: %s is out of range: %s must be %s", ldm_config_path(at, path, sizeof path),
                            num, fd->name, want);
    }
    return LDM_OK;
}

LDM_API ldm_result ldm_config_validate(ldm_config *cfg, const ldm_config_node *node, const ldm_config_field *schema) {
    ldm_result first = LDM_OK, r;
    int k;
    const ldm_config_field *fd;
    char path[256];
    union { int i; int64_t l; double d; const char *s; ldm_config_ints il; ldm_config_floats fl; ldm_config_strs sl;
            const ldm_config_node *nd; } scratch;
    cfg->err[0] = 0;
    cfg->append = 1;
    if (node && node->type != LDM_CONFIG_MAP && node->type != LDM_CONFIG_NULL) {
        char desc[128];
        first = ldm__cfg_err(cfg, LDM_ERR_INVALID, node->file, node->line, "%s: expected a mapping of settings, found %s",
                             ldm_config_path(node, path, sizeof path), ldm__cfg_describe(node, desc, sizeof desc));
        cfg->append = 0;
        return first;
    }
    for (k = 0; node && k < node->n; k++) {
        const ldm_config_node *c = node->child[k];
        for (fd = schema; fd->name && strcmp(fd->name, c->key); fd++) {}
        if (!fd->name) {
            const char *sugg = NULL;
            int best = 1 << 30;
            for (fd = schema; fd->name; fd++) if (ldm__cfg_close(c->key, fd->name, &best)) sugg = fd->name;
            if (sugg) {
                r = ldm__cfg_err(cfg, LDM_ERR_INVALID, c->file, c->line, "unknown key '%s' in %s; did you mean '%s'?", c->key,
                                 ldm_config_path(node, path, sizeof path), sugg);
            } else {
                char known[1024];
                size_t used = 0;
                known[0] = 0;
                for (fd = schema; fd->name && used + 1 < sizeof known; fd++) {
                    int w = snprintf(known + used, sizeof known - used, "%s%s", used ? ", " : "", fd->name);
                    if (w < 0) break;
                    used += (size_t)w;
                }
                r = ldm__cfg_err(cfg, LDM_ERR_INVALID, c->file, c->line, "unknown key '%s' in %s; the known keys are: %s", c->key,
                                 ldm_config_path(node, path, sizeof path), known);
            }
        } else if (c->type == LDM_CONFIG_NULL) {
            r = LDM_OK;
        } else {
            r = ldm__cfg_convert(cfg, c, fd->kind, &scratch);
            if (r == LDM_OK && fd->bounds) r = ldm__cfg_check_bounds(cfg, c, fd, &scratch);
        }
        if (r != LDM_OK && first == LDM_OK) first = r;
    }
    for (fd = schema; fd->name; fd++) {
        const ldm_config_node *c = node && node->type == LDM_CONFIG_MAP ? ldm__cfg_child(node, fd->name, strlen(fd->name)) : NULL;
        if (fd->def || (c && c->type != LDM_CONFIG_NULL)) continue;
        r = node ? ldm__cfg_err(cfg, LDM_ERR_NOT_FOUND, node->file, node->line, "%s: missing required key '%s' (%s)",
                                ldm_config_path(node, path, sizeof path), fd->name, fd->help ? fd->help : ldm_config_kind_name(fd->kind))
                 : ldm__cfg_err(cfg, LDM_ERR_NOT_FOUND, NULL, 0, "missing required key '%s' (no section given)", fd->name);
        if (first == LDM_OK) first = r;
    }
    cfg->append = 0;
    return first;
}

LDM_API void ldm_config_print_field(FILE *f, const char *name, ldm_config_kind kind, const void *src, const char *help) {
    char num[40];
    int k;
    if (help && *help) fprintf(f, "# %s\n", help);
    fprintf(f, "%s = ", name);
    switch (kind) {
    case LDM_CONFIG_KIND_BOOL: fputs(*(const int *)src ? "true" : "false", f); break;
    case LDM_CONFIG_KIND_INT: fprintf(f, "%d", *(const int *)src); break;
    case LDM_CONFIG_KIND_I64: fprintf(f, "%lld", (long long)*(const int64_t *)src); break;
    case LDM_CONFIG_KIND_FLOAT: ldm__cfg_fmt_float(*(const double *)src, num, sizeof num); fputs(num, f); break;
    case LDM_CONFIG_KIND_STR:
        if (*(const char *const *)src) ldm__cfg_write_str(f, *(const char *const *)src);
        else fputs("null", f);
        break;
    case LDM_CONFIG_KIND_INT_LIST: {
        const ldm_config_ints *l = (const ldm_config_ints *)src;
        fputc('[', f);
        for (k = 0; k < l->n; k++) fprintf(f, "%s%d", k ? ", " : "", l->v[k]);
        fputc(']', f);
        break;
    }
    case LDM_CONFIG_KIND_FLOAT_LIST: {
        const ldm_config_floats *l = (const ldm_config_floats *)src;
        fputc('[', f);
        for (k = 0; k < l->n; k++) { ldm__cfg_fmt_float(l->v[k], num, sizeof num); fprintf(f, "%s%s", k ? ", " : "", num); }
        fputc(']', f);
        break;
    }
    case LDM_CONFIG_KIND_STR_LIST: {
        const ldm_config_strs *l = (const ldm_config_strs *)src;
        fputc('[', f);
        for (k = 0; k < l->n; k++) { if (k) fputs(", ", f); ldm__cfg_write_str(f, l->v[k]); }
        fputc(']', f);
        break;
    }
    case LDM_CONFIG_KIND_NODE:
        if (*(const ldm_config_node *const *)src) ldm__cfg_write_value(f, *(const ldm_config_node *const *)src);
        else fputs("null", f);
        break;
    }
    fputc('\n', f);
}

LDM_API void ldm_config_schema_print(FILE *f, const ldm_config_field *schema) {
    char b[100];
    for (; schema->name; schema++) {
        ldm__cfg_bounds_text(schema, b, sizeof b);
        fprintf(f, "  %-22s %-11s %-14s %s%s%s%s\n", schema->name, ldm_config_kind_name(schema->kind),
                schema->def ? (*schema->def ? schema->def : "\"\"") : "(required)", schema->help ? schema->help : "",
                b[0] ? " (" : "", b, b[0] ? ")" : "");
    }
}

/* ---- registry --------------------------------------------------------------------------- */
struct ldm_config_registry {
    ldm_config_target *t;
    int n, cap;
    char err[512];
};

LDM_API ldm_result ldm_config_registry_create(ldm_config_registry **reg) {
    *reg = (ldm_config_registry *)LDM_MALLOC(sizeof **reg);
    if (!*reg) return LDM_ERR_NOMEM;
    memset(*reg, 0, sizeof **reg);
    return LDM_OK;
}

LDM_API void ldm_config_registry_destroy(ldm_config_registry *reg) {
    int k;
    if (!reg) return;
    for (k = 0; k < reg->n; k++) { LDM_FREE((void *)reg->t[k].name); LDM_FREE((void *)reg->t[k].aliases); }
    LDM_FREE(reg->t);
    LDM_FREE(reg);
}

LDM_API const char *ldm_config_registry_error(const ldm_config_registry *reg) { return reg->err; }
LDM_API int ldm_config_registry_count(const ldm_config_registry *reg) { return reg->n; }
LDM_API const ldm_config_target *ldm_config_registry_get(const ldm_config_registry *reg, int i) {
    return i >= 0 && i < reg->n ? &reg->t[i] : NULL;
}

/* Calls fn for the name and each (trimmed, non-empty) alias of t until it returns non-zero. */
static int ldm__reg_each(const ldm_config_target *t, int (*fn)(const char *s, size_t n, void *arg), void *arg) {
    const char *a = t->aliases;
    if (fn(t->name, strlen(t->name), arg)) return 1;
    while (*a) {
        const char *e = strchr(a, ',');
        size_t n;
        if (!e) e = a + strlen(a);
        while (a < e && ldm__cfg_space(*a)) a++;
        n = (size_t)(e - a);
        while (n && ldm__cfg_space(a[n - 1])) n--;
        if (n && fn(a, n, arg)) return 1;
        a = *e ? e + 1 : e;
    }
    return 0;
}

static int ldm__reg_match(const char *s, size_t n, void *arg) { return strlen((const char *)arg) == n && !memcmp(s, arg, n); }

LDM_API const ldm_config_target *ldm_config_registry_find(const ldm_config_registry *reg, const char *name) {
    int k;
    for (k = 0; k < reg->n; k++) if (ldm__reg_each(&reg->t[k], ldm__reg_match, (void *)name)) return &reg->t[k];
    return NULL;
}

typedef struct ldm__reg_add { const ldm_config_registry *reg; const char *s; size_t n; const ldm_config_target *hit; } ldm__reg_add;
static int ldm__reg_same(const char *s, size_t n, void *arg) {
    const ldm__reg_add *a = (const ldm__reg_add *)arg;
    return n == a->n && !memcmp(s, a->s, n);
}
static int ldm__reg_taken(const char *s, size_t n, void *arg) {
    ldm__reg_add *a = (ldm__reg_add *)arg;
    int k;
    a->s = s;
    a->n = n;
    for (k = 0; k < a->reg->n; k++)
        if (ldm__reg_each(&a->reg->t[k], ldm__reg_same, a)) { a->hit = &a->reg->t[k]; return 1; }
    return 0;
}

LDM_API ldm_result ldm_config_registry_add(ldm_config_registry *reg, const char *name, const char *aliases,
                                           ldm_config_ctor fn, void *user) {
    ldm_config_target t;
    ldm__reg_add chk;
    if (!name || !*name || !fn) {
        snprintf(reg->err, sizeof reg->err, "registering a target needs a name and a constructor");
        return LDM_ERR_INVALID;
    }
    t.name = name;
    t.aliases = aliases ? aliases : "";
    t.fn = fn;
    t.user = user;
    memset(&chk, 0, sizeof chk);
    chk.reg = reg;
    if (ldm__reg_each(&t, ldm__reg_taken, &chk)) {
        snprintf(reg->err, sizeof reg->err, "cannot register '%s': the name '%.*s' is already taken by '%s'", name,
                 (int)chk.n, chk.s, chk.hit->name);
        return LDM_ERR_INVALID;
    }
    if (reg->n == reg->cap) {
        int cap = reg->cap ? reg->cap * 2 : 8;
        ldm_config_target *p = (ldm_config_target *)LDM_REALLOC(reg->t, sizeof *p * (size_t)cap);
        if (!p) { snprintf(reg->err, sizeof reg->err, "out of memory"); return LDM_ERR_NOMEM; }
        reg->t = p;
        reg->cap = cap;
    }
    t.name = ldm__cfg_strndup(name, strlen(name));
    t.aliases = ldm__cfg_strndup(t.aliases, strlen(t.aliases));
    if (!t.name || !t.aliases) {
        LDM_FREE((void *)t.name);
        LDM_FREE((void *)t.aliases);
        snprintf(reg->err, sizeof reg->err, "out of memory");
        return LDM_ERR_NOMEM;
    }
    reg->t[reg->n++] = t;
    return LDM_OK;
}

typedef struct ldm__reg_near { const char *want; int best; char sugg[256]; } ldm__reg_near;
static int ldm__reg_near_fn(const char *s, size_t n, void *arg) {
    ldm__reg_near *a = (ldm__reg_near *)arg;
    char name[256];
    if (n >= sizeof name) return 0;
    memcpy(name, s, n);
    name[n] = 0;
    if (ldm__cfg_close(a->want, name, &a->best)) memcpy(a->sugg, name, n + 1);
    return 0;
}

LDM_API ldm_result ldm_config_registry_lookup(ldm_config *cfg, const ldm_config_registry *reg, const ldm_config_node *target,
                                              const ldm_config_target **out) {
    char path[256], desc[128], known[1536];
    ldm__reg_near near;
    size_t used = 0;
    int k;
    *out = NULL;
    if (target->type != LDM_CONFIG_STR)
        return ldm__cfg_err(cfg, LDM_ERR_INVALID, target->file, target->line, "%s: a target must be a string, found %s",
                            ldm_config_path(target, path, sizeof path), ldm__cfg_describe(target, desc, sizeof desc));
    if ((*out = ldm_config_registry_find(reg, target->s))) return LDM_OK;
    near.want = target->s;
    near.best = 1 << 30;
    near.sugg[0] = 0;
    known[0] = 0;
    for (k = 0; k < reg->n; k++) {
        int w;
        ldm__reg_each(&reg->t[k], ldm__reg_near_fn, &near);
        if (used + 1 >= sizeof known) continue;
        w = snprintf(known + used, sizeof known - used, "%s%s%s%s%s", k ? ", " : "", reg->t[k].name,
                     *reg->t[k].aliases ? " (" : "", reg->t[k].aliases, *reg->t[k].aliases ? ")" : "");
        if (w > 0) used += (size_t)w;
    }
    return ldm__cfg_err(cfg, LDM_ERR_NOT_FOUND, target->file, target->line, "%s: unknown target '%s'%s%s%s; known targets: %s",
                        ldm_config_path(target, path, sizeof path), target->s, near.sugg[0] ? "; did you mean '" : "", near.sugg,
                        near.sugg[0] ? "'?" : "", reg->n ? known : "(none registered)");
}

LDM_API ldm_result ldm_config_instantiate(ldm_config *cfg, const ldm_config_registry *reg, const ldm_config_node *node,
                                          void *arg, void **out) {
    const ldm_config_node *tn, *params;
    const ldm_config_target *t;
    char path[256];
    ldm_result r;
    *out = NULL;
    if (!node || node->type != LDM_CONFIG_MAP) {
        if (!node) return ldm__cfg_err(cfg, LDM_ERR_NOT_FOUND, NULL, 0, "nothing to instantiate: the config section is missing");
        return ldm__cfg_err(cfg, LDM_ERR_INVALID, node->file, node->line, "%s: expected a mapping with 'target' and 'params'",
                            ldm_config_path(node, path, sizeof path));
    }
    if (!(tn = ldm__cfg_child(node, "target", 6)))
        return ldm__cfg_err(cfg, LDM_ERR_NOT_FOUND, node->file, node->line, "%s: expected key 'target' to instantiate",
                            ldm_config_path(node, path, sizeof path));
    if ((r = ldm_config_registry_lookup(cfg, reg, tn, &t))) return r;
    params = ldm__cfg_child(node, "params", 6);
    if (params && params->type == LDM_CONFIG_NULL) params = NULL;
    cfg->err[0] = 0;
    r = t->fn(cfg, params, t->user, arg, out);
    if (r != LDM_OK && !cfg->err[0])
        ldm__cfg_err(cfg, r, tn->file, tn->line, "constructing target '%s' failed (code %d)", t->name, (int)r);
    return r;
}

#endif /* LDM_CONFIG_IMPLEMENTATION_DONE */
#endif /* LDM_IMPLEMENTATION || LDM_CONFIG_IMPLEMENTATION */
