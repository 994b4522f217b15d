/* cli.h - what the diffusion command-line programs (sample.c, classcheck.c) share: option
   macros, reading a LatentDiffusion config, and finding a checkpoint's weights file.
   Include after ldm_config.h and ldm_diffusion.h. */
#ifndef EX_CLI_H
#define EX_CLI_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Inside an argv loop (`s` the argument, `more` whether a value follows, `e` a char *):
   "--name value" into dst, with the program's usage(msg) on a missing or malformed value. */
#define EX_ARG_VAL(name, dst) if (!strcmp(s, name)) { if (!more) return usage(name " needs a value"); dst = argv[++i]; continue; }
#define EX_ARG_INT(name, dst) if (!strcmp(s, name)) { if (!more) return usage(name " needs a value"); dst = (int)strtol(argv[++i], &e, 10); if (*e || e == argv[i]) return usage(name " needs an integer"); continue; }
#define EX_ARG_U64(name, dst) if (!strcmp(s, name)) { if (!more) return usage(name " needs a value"); dst = strtoull(argv[++i], &e, 10); if (*e || e == argv[i]) return usage(name " needs an integer"); continue; }
#define EX_ARG_NUM(name, dst) if (!strcmp(s, name)) { if (!more) return usage(name " needs a value"); dst = strtod(argv[++i], &e); if (*e || e == argv[i]) return usage(name " needs a number"); continue; }

/* model.params of a CompVis LatentDiffusion config file; 1 with the message printed on error. */
static int ex_cli_ld_config(const char *prog, const char *path, ldm_latent_diffusion_config *lc) {
    ldm_config *cfg;
    if (ldm_config_create(&cfg)) { fprintf(stderr, "%s: out of memory\n", prog); return 1; }
    int rc = ldm_config_load(cfg, path) || ldm_latent_diffusion_config_read(cfg, NULL, lc);
    if (rc) fprintf(stderr, "%s: %s\n", prog, ldm_config_error(cfg));
    ldm_config_destroy(cfg);
    return rc;
}

/* The weights file of --ckpt: the file itself, or an ldm checkpoint directory's
   model.safetensors; 1 with the message printed when it does not exist. */
static int ex_cli_ckpt(const char *prog, const char *path, char *out, size_t cap) {
    struct stat sb;
    if (stat(path, &sb) != 0) { fprintf(stderr, "%s: %s: no such file or directory\n", prog, path); return 1; }
    snprintf(out, cap, S_ISDIR(sb.st_mode) ? "%s/model.safetensors" : "%s", path);
    return 0;
}

#endif /* EX_CLI_H */
