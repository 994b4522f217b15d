/* main.c - ldm, the train/test driver: CompVis latent-diffusion's main.py (PyTorch Lightning 1.4
   semantics), in C. It knows no model: the config's model.target is built through a registry
   of ex_model implementations (examples/model.h; AutoencoderKL: examples/model_autoencoder.h),
   and the loop, checkpoints, metrics and image logging work through that interface.

       ./build.sh && ./build/ldm --base configs/demo_autoencoder.ini -t --name demo

   Build alone: cc -std=c99 -O2 -march=native -I. -Ithird_party examples/main.c -o build/ldm -lm -lpthread
   GPU:         nvcc -x cu -O2 -arch=sm_80 -DLDM_CUDA -Xcompiler -ffp-contract=off -I. -Ithird_party examples/main.c -o build/ldm -lcublas -lm -lpthread

   usage: ldm --base CFG [CFG ...] [-t] [-n NAME | -r LOGDIR|CHECKPOINT] [options] [key=value ...]

     -b, --base CFG ...     config files (INI or the CompVis YAML subset), merged left to right;
                            then every key=value argument overrides (model.params.embed_dim=4)
     -t, --train [BOOL]     train, then test (unless --no-test); without -t: only test
     -n, --name NAME        logdir postfix: <logdir>/<YYYY-MM-DDTHH-MM-SS>_<NAME>
                            (default: the first config's file name without extension)
     -f, --postfix TEXT     appended to the logdir name
     -r, --resume PATH      a logdir (resumes from its checkpoints/last with its saved configs)
                            or a checkpoint directory inside one (<logdir>/checkpoints/<name>)
     -s, --seed N           seed of everything random (default 23)
     -l, --logdir DIR       where logdirs go (default logs)
     --no-test [BOOL]       skip the test after training
     --scale_lr [BOOL]      lr = accumulate_grad_batches * num_gpus * batch_size * base_lr
                            (default true; --scale_lr false uses base_learning_rate as is)
     --gpus IDS             Lightning's trainer flag: one GPU ("0,") in a CUDA build
                            (LDM_CUDA=1 ./build.sh); in a CPU build a GPU is an error
     --max_steps N, --max_epochs N, ... any lightning.trainer key as a flag
     -h, --help             this text and the config keys

   What it writes (logdir = logs/<timestamp>_<name>):
     configs/<timestamp>-project.ini   the merged config (every base file and override), INI
     checkpoints/last/                 the latest state (also written on SIGINT/SIGTERM/SIGUSR1)
     checkpoints/epoch=E-step=S/       the best save_top_k by `monitor` (default val/rec_loss)
     checkpoints/trainstep_checkpoints/epoch=E-step=S/   every n steps (when configured)
       each holds model.safetensors (the model's state dict in CompVis names),
       optimizer_<i>.safetensors (one per optimizer), state.ini (step, epoch, batch, RNG, loader,
       top-k), and grads.safetensors when saved in the middle of a gradient accumulation
     images/train, images/val          ImageLogger grids: <key>_gs-<step>_e-<epoch>_b-<batch>.png
     images/test                       the model's test images, one PNG per image and key; volumes
                                       ([B,C,T,H,W]) as .nii.gz plus a PNG of their middle slices
                                       (model.test_only_params.output_dir puts them elsewhere)
     metrics.csv                       step, epoch and every logged value
     loss_curve.png                    the model's curve key (rec_loss) on train and val, redrawn at each validation
     test_metrics.csv, test_summary.txt   per-image and mean test values (AutoencoderKL: PSNR, SSIM, LPIPS, rec_loss)

   Data parallel (ldm_dist.h; build.sh links Open MPI when mpicc exists):
       mpirun -np 2 build/ldm --base cfg -t --name exp       N processes, one per CPU socket or GPU
     as PyTorch Lightning's DDP: batch_size is per process and the lr scales with the process
     count; each rank reads its DistributedSampler shard and draws its rows of the job's noise,
     so N processes with batch b train what one process with batch N*b trains; gradients are
     averaged in buckets while the backward pass runs; logged values are means over the ranks;
     rank 0 alone writes the logdir and tests; every rank resumes from the same checkpoint.
     On GPUs (CUDA build) --gpus 0,1,.. lists the devices, one per process (NCCL with LDM_NCCL).
     LDM_DIST_TIMEOUT (seconds, default 300) bounds every wait: a rank that died or hangs ends
     the job with a message naming it. SIGTERM to the ranks (pkill -TERM -f build/ldm, or a
     scheduler's cancel): rank 0 checkpoints once and all exit 0. (Open MPI's mpirun, sent a
     SIGTERM itself, stops forwarding output and SIGKILLs the ranks about 1 s later.)

   Exit status: 0 when done (or stopped by SIGINT/SIGTERM after writing checkpoints/last), 1 on
   an error (config, data, NaN/Inf loss), 2 on a usage error.

   Test hooks (environment): LDM_TEST_CRASH_IN_CHECKPOINT=1 kills the process (SIGKILL) in the
   middle of writing a checkpoint, =2 between moving the old one aside and moving the new one
   into place; LDM_TEST_SIGNAL_AT_BATCH=N[:INT|TERM|USR1] raises that signal (SIGTERM by default)
   after N training batches of this run; LDM_TEST_DIE_AT_BATCH=N:R / LDM_TEST_HANG_AT_BATCH=N:R
   kill rank R (SIGKILL) or make it hang after its N-th batch (data-parallel fault tests);
   LDM_TEST_INJECT_NAN=batch:N|grad:N|weight:N puts a NaN there at global step N. */
#if !defined(_XOPEN_SOURCE)
#define _XOPEN_SOURCE 700
#endif
#define LDM_IMPLEMENTATION
#include "image_io.h" /* stb_image + stb_image_write implementations; ldm_data.h uses them */
#include "ldm_config.h"
#include "ldm_data.h"
#include "model.h"
#include "model_autoencoder.h" /* the models this driver can build (drv_registries) */
#include "model_diffusion.h"   /* LatentDiffusion and DDPM */
#include "model_video.h"       /* VideoSREngine (sgm engine form) and the video datasets */
#include "plot.h"
#include "volume_io.h"     /* volumes [B, C, T, H, W]: .nii.gz outputs, mid-slice PNGs */
#include "ldm_dist.h"          /* data parallel under mpirun (LDM_MPI builds) */

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define DRV_PATH 1024
#define DRV_MAX_BASE 64
#define DRV_MAX_OVR 256
#define DRV_MAX_TOPK 32                /* top-k checkpoints tracked at most */

/* ============================================================================================
   Messages and small file-system helpers
   ============================================================================================ */
static void drv_error(const char *fmt, ...) {
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "ldm: error: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
}
/* snprintf for messages and paths (a too-long path is cut, and then fails to open) */
static int drv_sfmt(char *out, size_t n, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static int drv_sfmt(char *out, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(out, n, fmt, ap);
    va_end(ap);
    return r;
}
static void drv_note(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

static int drv_is_dir(const char *p) { struct stat st; return stat(p, &st) == 0 && S_ISDIR(st.st_mode); }
static int drv_is_file(const char *p) { struct stat st; return stat(p, &st) == 0 && S_ISREG(st.st_mode); }
static int drv_exists(const char *p) { struct stat st; return lstat(p, &st) == 0; }

static void drv_join(char *out, size_t n, const char *a, const char *b) {
    size_t la = strlen(a);
    drv_sfmt(out, n, "%s%s%s", a, (la && a[la - 1] == '/') ? "" : "/", b);
}

/* mkdir -p */
static int drv_mkdirs(const char *path) {
    char buf[DRV_PATH];
    drv_sfmt(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0777) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(buf, 0777) != 0 && errno != EEXIST) return -1;
    return drv_is_dir(buf) ? 0 : -1;
}

/* rm -r (files and directories, no symlink following) */
static int drv_rm_rf(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : -1;
    if (!S_ISDIR(st.st_mode)) return unlink(path);
    DIR *d = opendir(path);
    if (!d) return -1;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char sub[DRV_PATH];
        drv_join(sub, sizeof sub, path, e->d_name);
        if (drv_rm_rf(sub)) rc = -1;
    }
    closedir(d);
    if (rmdir(path)) rc = -1;
    return rc;
}

static void drv_fsync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd >= 0) { fsync(fd); close(fd); }
}
static void drv_parent(char *out, size_t n, const char *path) {
    drv_sfmt(out, n, "%s", path);
    char *s = strrchr(out, '/');
    if (s && s != out) *s = 0;
    else drv_sfmt(out, n, "%s", s ? "/" : ".");
}

/* Hard link (the checkpoint files are never modified once written), else a copy. */
static int drv_link_or_copy(const char *src, const char *dst) {
    if (link(src, dst) == 0) return 0;
    FILE *in = fopen(src, "rb"), *out = in ? fopen(dst, "wb") : NULL;
    int ok = in && out;
    char buf[1 << 16];
    size_t n;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0) ok = fwrite(buf, 1, n, out) == n;
    if (in) fclose(in);
    if (out) { ok = fflush(out) == 0 && ok; fsync(fileno(out)); ok = fclose(out) == 0 && ok; }
    return ok ? 0 : -1;
}

static double drv_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void drv_fmt_time(char *out, size_t n, double s) {
    if (!(s >= 0) || s > 1e8) { drv_sfmt(out, n, "--:--"); return; }
    long t = (long)(s + 0.5);
    if (t >= 3600) drv_sfmt(out, n, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    else drv_sfmt(out, n, "%02ld:%02ld", t / 60, t % 60);
}

/* ============================================================================================
   Command line (main.py's get_parser, plus Lightning trainer flags)
   ============================================================================================ */
typedef struct drv_opts {
    const char *name, *resume, *logdir, *postfix;
    const char *base[DRV_MAX_BASE];
    int n_base;
    char *ovr[DRV_MAX_OVR];            /* "a.b=value", applied in order */
    int n_ovr;
    int train, no_test, scale_lr, help;
    uint64_t seed;
} drv_opts;

static int drv_parse_bool(const char *s, int *out) {
    static const char *const yes[] = {"yes", "true", "t", "y", "1"}, *const no[] = {"no", "false", "f", "n", "0"};
    char low[16];
    size_t i;
    for (i = 0; s[i] && i < sizeof low - 1; i++) low[i] = (char)((s[i] >= 'A' && s[i] <= 'Z') ? s[i] - 'A' + 'a' : s[i]);
    low[i] = 0;
    for (i = 0; i < 5; i++) if (!strcmp(low, yes[i])) { *out = 1; return 1; }
    for (i = 0; i < 5; i++) if (!strcmp(low, no[i])) { *out = 0; return 1; }
    return 0;
}

static int drv_add_ovr(drv_opts *o, const char *fmt, ...) {
    if (o->n_ovr >= DRV_MAX_OVR) { drv_error("too many key=value overrides (at most %d)", DRV_MAX_OVR); return -1; }
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    o->ovr[o->n_ovr] = (char *)malloc(strlen(buf) + 1);
    if (!o->ovr[o->n_ovr]) return -1;
    strcpy(o->ovr[o->n_ovr++], buf);
    return 0;
}

/* A value that the INI parser would read as a number or bool is passed as is, anything else
   quoted (so --gpus 0, becomes the string "0," and not a list). */
static int drv_plain_scalar(const char *v) {
    int b;
    if (drv_parse_bool(v, &b) && (!strcmp(v, "true") || !strcmp(v, "false"))) return 1;
    char *e;
    if (*v) { strtod(v, &e); if (!*e) return 1; }
    return 0;
}

static const char *const drv_trainer_flags[] = {
    "max_epochs", "max_steps", "accumulate_grad_batches", "limit_train_batches", "limit_val_batches",
    "limit_test_batches", "val_check_interval", "check_val_every_n_epoch", "num_sanity_val_steps",
    "log_every_n_steps", "benchmark", "gpus", "num_nodes", "accelerator", NULL};

static int drv_usage(const char *msg) {
    if (msg) fprintf(stderr, "ldm: %s\n", msg);
    fprintf(stderr, "usage: ldm --base CFG [CFG ...] [-t] [-n NAME | -r LOGDIR|CHECKPOINT] [-s SEED] [-l LOGDIR] [-f POSTFIX]\n"
                    "           [--no-test] [--scale_lr BOOL] [--gpus IDS] [--<trainer key> VALUE] [key=value ...]\n"
                    "       ldm --help   (options, outputs and every config key)\n");
    return 2;
}

static int drv_parse_args(int argc, char **argv, drv_opts *o) {
    memset(o, 0, sizeof *o);
    o->logdir = "logs";
    o->postfix = "";
    o->scale_lr = 1;
    o->seed = 23;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *nx = i + 1 < argc ? argv[i + 1] : NULL;
        int b;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { o->help = 1; return 0; }
        if (!strcmp(a, "-b") || !strcmp(a, "--base")) {
            /* nargs='*': the configs that follow; key=value words among them are overrides */
            while (i + 1 < argc && argv[i + 1][0] != '-') {
                const char *v = argv[++i];
                if (strchr(v, '=') && !drv_is_file(v)) { if (drv_add_ovr(o, "%s", v)) return 2; continue; }
                if (o->n_base >= DRV_MAX_BASE) return drv_usage("too many --base configs");
                o->base[o->n_base++] = v;
            }
            continue;
        }
        if (!strcmp(a, "-t") || !strcmp(a, "--train")) {
            o->train = 1;
            if (nx && drv_parse_bool(nx, &b)) { o->train = b; i++; }
            continue;
        }
        if (!strcmp(a, "--no-test")) {
            o->no_test = 1;
            if (nx && drv_parse_bool(nx, &b)) { o->no_test = b; i++; }
            continue;
        }
        if (!strcmp(a, "--scale_lr")) {
            o->scale_lr = 1;
            if (nx && drv_parse_bool(nx, &b)) { o->scale_lr = b; i++; }
            continue;
        }
#define DRV_OPT_VAL(s1, s2, dst)                                                               \
    if (!strcmp(a, s1) || !strcmp(a, s2)) {                                                    \
        if (!nx) return drv_usage(s2 " needs a value");                                       \
        dst = argv[++i];                                                                       \
        continue;                                                                              \
    }
        DRV_OPT_VAL("-n", "--name", o->name)
        DRV_OPT_VAL("-r", "--resume", o->resume)
        DRV_OPT_VAL("-l", "--logdir", o->logdir)
        DRV_OPT_VAL("-f", "--postfix", o->postfix)
        if (!strcmp(a, "-s") || !strcmp(a, "--seed")) {
            char *e;
            if (!nx) return drv_usage("--seed needs a value");
            o->seed = strtoull(argv[++i], &e, 10);
            if (*e || argv[i][0] == '-') return drv_usage("--seed needs a non-negative integer");
            continue;
        }
        if (a[0] == '-' && a[1] == '-') {
            /* Lightning trainer flags: --max_steps 100 or --max_steps=100 */
            char key[64];
            const char *eq = strchr(a + 2, '='), *val = NULL;
            size_t kl = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
            if (kl >= sizeof key) kl = sizeof key - 1;
            memcpy(key, a + 2, kl);
            key[kl] = 0;
            int known = 0;
            for (int k = 0; drv_trainer_flags[k]; k++) known |= !strcmp(key, drv_trainer_flags[k]);
            if (!known) {
                fprintf(stderr, "ldm: unknown option %s\n", a);
                return drv_usage(NULL);
            }
            if (eq) val = eq + 1;
            else { if (!nx) { fprintf(stderr, "ldm: --%s needs a value\n", key); return drv_usage(NULL); } val = argv[++i]; }
            if (drv_add_ovr(o, drv_plain_scalar(val) ? "lightning.trainer.%s=%s" : "lightning.trainer.%s=\"%s\"", key, val)) return 2;
            continue;
        }
        if (a[0] == '-' && a[1]) { fprintf(stderr, "ldm: unknown option %s\n", a); return drv_usage(NULL); }
        if (strchr(a, '=')) { if (drv_add_ovr(o, "%s", a)) return 2; continue; }
        fprintf(stderr, "ldm: unexpected argument '%s' (configs go after --base; overrides are key=value)\n", a);
        return drv_usage(NULL);
    }
    if (o->name && o->resume)
        return drv_usage("-n/--name and -r/--resume cannot be given together (a resumed run keeps its logdir and name)");
    if (!o->n_base && !o->resume) return drv_usage("no config: give --base CFG (or -r LOGDIR)");
    return 0;
}

/* ============================================================================================
   Config schemas. Every key the driver reads is listed here once (X(name, kind, default,
   help)); unknown keys and wrong types are errors with the file:line they were written at.
   ============================================================================================ */
#define DRV_ROOT_KEYS(X)                                                                         \
    X(model, NODE, NULL, "the model: {base_learning_rate, target, params}")                      \
    X(data, NODE, "", "main.DataModuleFromConfig: {target, params} (ldm_data.h)")               \
    X(lightning, NODE, "", "trainer, callbacks, modelcheckpoint")
#define DRV_MODEL_KEYS(X)                                                                        \
    X(base_learning_rate, FLOAT, NULL, "lr before scaling by accumulate_grad_batches * gpus * batch_size") \
    X(target, STR, "", "the model class (ldm.models.autoencoder.AutoencoderKL); or train_target")  \
    X(train_target, STR, "", "the model class trained with -t (instead of target)")              \
    X(test_target, STR, "", "the model class a test-only run builds (default: train_target, else target)") \
    X(params, NODE, "", "the model's parameters")                                                \
    X(test_only_params, NODE, "", "test settings: {ckpt_path, output_dir, sampler, batch_size, cycle_test_data}")
/* model.test_only_params (the 3-D LDM config form): what only the test uses */
#define DRV_TESTONLY_KEYS(X)                                                                     \
    X(ckpt_path, STR, "", "weights a test-only run tests: a model.safetensors, a checkpoint dir or a logdir "     \
      "(its checkpoints/last); empty: checkpoints/last of the newest <logdir>/*_<name> run")                     \
    X(output_dir, STR, "", "where test outputs go (.nii.gz volumes, PNGs; default <logdir>/images/test)")       \
    X(sampler, NODE, "", "the model's sampling options for the test (its log_images_kwargs: ddim_steps, ...)")  \
    X(batch_size, AT_LEAST(INT, 0), "0", "test batch size (0: data.params.batch_size); 1: limit_test_batches = samples")  \
    X(cycle_test_data, BOOL, "true", "an int limit_test_batches above the test split's batches cycles it: "     \
      "limit_test_batches batches are generated")
#define DRV_LIGHTNING_KEYS(X)                                                                    \
    X(trainer, NODE, "", "Trainer arguments")                                                    \
    X(callbacks, NODE, "", "callbacks: {name: {target, params}} (main.ImageLogger, ModelCheckpoint, ...)") \
    X(modelcheckpoint, NODE, "", "{target: ModelCheckpoint, params: {monitor, save_top_k, every_n_train_steps, save_last}}")
#define DRV_TRAINER_KEYS(X)                                                                      \
    X(max_epochs, I64, "-1", "stop after this many epochs (-1: 1000 when max_steps is -1, else no limit)") \
    X(max_steps, I64, "-1", "stop after this many optimizer steps (-1: no limit)")               \
    X(accumulate_grad_batches, AT_LEAST(INT, 1), "1", "batches per optimizer step (the loss is divided by it)") \
    X(limit_train_batches, NODE, "", "int: batches per epoch; float: fraction of the epoch (1.0)") \
    X(limit_val_batches, NODE, "", "int: batches; float: fraction (1.0); 0 disables validation") \
    X(limit_test_batches, NODE, "", "int: batches; float: fraction (1.0)")                      \
    X(val_check_interval, NODE, "", "float: validate every fraction of an epoch (1.0); int: every N batches") \
    X(check_val_every_n_epoch, AT_LEAST(INT, 1), "1", "validate in every n-th epoch")                         \
    X(num_sanity_val_steps, AT_LEAST(INT, -1), "2", "validation batches run before training (nothing logged, RNG untouched)") \
    X(log_every_n_steps, AT_LEAST(INT, 1), "50", "metrics.csv row and progress line every n steps")          \
    X(benchmark, BOOL, "false", "accepted (cuDNN autotuning in Lightning); no effect")          \
    X(gpus, NODE, "", "GPU ids (\"0,\") or a count: needs a CUDA build; several: one process per GPU (mpirun)") \
    X(num_nodes, AT_LEAST(INT, 1), "1", "machines (mpirun starts gpus * num_nodes processes; checked against it)") \
    X(accelerator, STR, "", "cpu (default); gpu/ddp need a CUDA build")
#define DRV_IMLOG_KEYS(X)                                                                        \
    X(batch_frequency, AT_LEAST(INT, 1), "750", "log every n global steps (and at powers of two before)")     \
    X(max_images, AT_LEAST(INT, 0), "4", "images per grid")                                                   \
    X(clamp, BOOL, "true", "clamp images to [-1, 1]")                                            \
    X(increase_log_steps, BOOL, "true", "also log at steps 1, 2, 4, ... < batch_frequency")      \
    X(rescale, BOOL, "true", "map [-1, 1] to [0, 1] before writing")                            \
    X(disabled, BOOL, "false", "log nothing")                                                    \
    X(log_on_batch_idx, BOOL, "false", "count batches of the epoch instead of global steps")    \
    X(log_first_step, BOOL, "false", "also log at step 0")                                      \
    X(log_images_kwargs, NODE, "", "the model's log_images options (see the model's --help)")
#define DRV_MCKPT_KEYS(X)                                                                        \
    X(monitor, STR, "", "metric for top-k (default: model.params.monitor)")                      \
    X(mode, STR, "min", "min or max: which monitor values are better")                          \
    X(save_top_k, BETWEEN(INT, -1, DRV_MAX_TOPK), "3", "keep the k best checkpoints (-1: all, 0: none)")                   \
    X(every_n_train_steps, AT_LEAST(I64, 0), "0", "also write checkpoints/last every n optimizer steps (0: off)") \
    X(save_last, BOOL, "true", "write checkpoints/last at every checkpoint event")              \
    X(verbose, BOOL, "true", "print a line per saved checkpoint")
#define DRV_STEPCKPT_KEYS(X)                                                                     \
    X(every_n_train_steps, AT_LEAST(I64, 1), "10000", "write checkpoints/trainstep_checkpoints/epoch=E-step=S every n steps") \
    X(save_weights_only, BOOL, "true", "only model.safetensors (else a resumable checkpoint)")   \
    X(save_top_k, INT, "-1", "-1 (keep all) only")                                               \
    X(filename, STR, "", "accepted, ignored (the name is epoch=E-step=S)")                       \
    X(dirpath, STR, "", "accepted, ignored (checkpoints/trainstep_checkpoints)")                 \
    X(verbose, BOOL, "true", "print a line per saved checkpoint")
#define DRV_LRMON_KEYS(X)                                                                        \
    X(logging_interval, STR, "step", "accepted; lr is always a metrics.csv column")             \
    X(log_momentum, BOOL, "false", "accepted, ignored")
#define DRV_NOKEYS(X)

LDM_CONFIG_DECLARE(drv_root_cfg, DRV_ROOT_KEYS);
LDM_CONFIG_DEFINE(drv_root_cfg, DRV_ROOT_KEYS)
LDM_CONFIG_DECLARE(drv_model_cfg, DRV_MODEL_KEYS);
LDM_CONFIG_DEFINE(drv_model_cfg, DRV_MODEL_KEYS)
LDM_CONFIG_DECLARE(drv_testonly_cfg, DRV_TESTONLY_KEYS);
LDM_CONFIG_DEFINE(drv_testonly_cfg, DRV_TESTONLY_KEYS)
LDM_CONFIG_DECLARE(drv_lightning_cfg, DRV_LIGHTNING_KEYS);
LDM_CONFIG_DEFINE(drv_lightning_cfg, DRV_LIGHTNING_KEYS)
LDM_CONFIG_DECLARE(drv_trainer_cfg, DRV_TRAINER_KEYS);
LDM_CONFIG_DEFINE(drv_trainer_cfg, DRV_TRAINER_KEYS)
LDM_CONFIG_DECLARE(drv_imlog_cfg, DRV_IMLOG_KEYS);
LDM_CONFIG_DEFINE(drv_imlog_cfg, DRV_IMLOG_KEYS)
LDM_CONFIG_DECLARE(drv_mckpt_cfg, DRV_MCKPT_KEYS);
LDM_CONFIG_DEFINE(drv_mckpt_cfg, DRV_MCKPT_KEYS)
LDM_CONFIG_DECLARE(drv_stepckpt_cfg, DRV_STEPCKPT_KEYS);
LDM_CONFIG_DEFINE(drv_stepckpt_cfg, DRV_STEPCKPT_KEYS)
LDM_CONFIG_DECLARE(drv_lrmon_cfg, DRV_LRMON_KEYS);
LDM_CONFIG_DEFINE(drv_lrmon_cfg, DRV_LRMON_KEYS)

/* "file:line: path" of a node, for messages */
static const char *drv_where(const ldm_config_node *n, char *buf, size_t cap) {
    char path[256];
    if (!n) { drv_sfmt(buf, cap, "<config>"); return buf; }
    drv_sfmt(buf, cap, "%s:%d: %s", n->file ? n->file : "<config>", n->line, ldm_config_path(n, path, sizeof path));
    return buf;
}

/* Lightning's int-or-float limits: an int counts batches, a float is a fraction. */
typedef struct drv_limit { int is_frac; double frac; int64_t n; } drv_limit;
static ldm_result drv_read_limit(ldm_config *cfg, const ldm_config_node *n, double def, drv_limit *out) {
    char w[400];
    out->is_frac = 1; out->frac = def; out->n = 0;
    if (!n || n->type == LDM_CONFIG_NULL) return LDM_OK;
    if (n->type == LDM_CONFIG_INT) {
        if (n->i < 0) return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s: %lld must be >= 0", drv_where(n, w, sizeof w), (long long)n->i);
        out->is_frac = 0; out->n = n->i;
        return LDM_OK;
    }
    if (n->type == LDM_CONFIG_FLOAT) {
        if (!(n->f >= 0.0 && n->f <= 1.0))
            return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s: %g: a float is a fraction in [0, 1] (an int counts batches)",
                                     drv_where(n, w, sizeof w), n->f);
        out->frac = n->f;
        return LDM_OK;
    }
    return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s: expected an int (batches) or a float (fraction), found %s",
                             drv_where(n, w, sizeof w), ldm_config_type_name(n->type));
}
/* batches of an epoch of nb that a limit selects (PL: int(nb * fraction), or min(n, nb)) */
static int64_t drv_limit_apply(const drv_limit *l, int64_t nb) {
    if (l->is_frac) return (int64_t)((double)nb * l->frac);
    return l->n < nb ? l->n : nb;
}

/* ============================================================================================
   Target registries: models, callbacks (unknown targets list the known ones)
   ============================================================================================ */
typedef enum { DRV_CB_IMAGE_LOGGER = 1, DRV_CB_MODEL_CHECKPOINT, DRV_CB_LR_MONITOR, DRV_CB_CUDA } drv_cb_kind;

/* ============================================================================================
   Metrics: the columns of metrics.csv, rows kept in memory for the loss curve
   ============================================================================================ */
#define DRV_MAX_COLS 96

typedef struct drv_metrics {
    char *col[DRV_MAX_COLS];
    int ncol;
    double *v;                         /* rows x ncol, NaN = empty */
    int64_t rows, cap;
    char path[DRV_PATH];
    int nowrite;                       /* a data-parallel rank other than 0 */
} drv_metrics;

static void drv_metrics_add_col(drv_metrics *m, const char *name) {
    if (m->ncol >= DRV_MAX_COLS) return;
    m->col[m->ncol] = (char *)malloc(strlen(name) + 1);
    strcpy(m->col[m->ncol++], name);
}
/* step, epoch, lr, <optimizer>_step, train/<key>, <optimizer>_epoch, val/<key>, val/<val key> */
static void drv_metrics_init(drv_metrics *m, const ex_model *md) {
    char k[96];
    memset(m, 0, sizeof *m);
    drv_metrics_add_col(m, "step");
    drv_metrics_add_col(m, "epoch");
    drv_metrics_add_col(m, "lr");
    for (int i = 0; i < md->n_optim; i++) { drv_sfmt(k, sizeof k, "%s_step", md->optim[i].name); drv_metrics_add_col(m, k); }
    for (int i = 0; i < md->n_log_keys; i++) { drv_sfmt(k, sizeof k, "train/%s", md->log_keys[i]); drv_metrics_add_col(m, k); }
    for (int i = 0; i < md->n_optim; i++) { drv_sfmt(k, sizeof k, "%s_epoch", md->optim[i].name); drv_metrics_add_col(m, k); }
    for (int i = 0; i < md->n_log_keys; i++) { drv_sfmt(k, sizeof k, "val/%s", md->log_keys[i]); drv_metrics_add_col(m, k); }
    for (int i = 0; i < md->n_val_keys; i++) { drv_sfmt(k, sizeof k, "val/%s", md->val_keys[i]); drv_metrics_add_col(m, k); }
}
static void drv_metrics_free(drv_metrics *m) {
    for (int i = 0; i < m->ncol; i++) free(m->col[i]);
    free(m->v);
}
static int drv_metrics_col(const drv_metrics *m, const char *name) {
    for (int i = 0; i < m->ncol; i++) if (!strcmp(m->col[i], name)) return i;
    return -1;
}
static double *drv_metrics_new_row(drv_metrics *m) {
    if (m->rows == m->cap) {
        int64_t nc = m->cap ? m->cap * 2 : 256;
        double *nv = (double *)realloc(m->v, sizeof(double) * (size_t)(nc * m->ncol));
        if (!nv) return NULL;
        m->v = nv; m->cap = nc;
    }
    double *r = m->v + m->rows * m->ncol;
    for (int i = 0; i < m->ncol; i++) r[i] = NAN;
    m->rows++;
    return r;
}
static void drv_metrics_fmt_row(const drv_metrics *m, const double *r, FILE *f) {
    for (int i = 0; i < m->ncol; i++) {
        if (i) fputc(',', f);
        if (r[i] != r[i]) continue;
        if (i < 2) fprintf(f, "%lld", (long long)r[i]);
        else fprintf(f, "%.9g", r[i]); /* a float32 value reads back exactly */
    }
    fputc('\n', f);
}
static void drv_metrics_header(const drv_metrics *m, FILE *f) {
    for (int i = 0; i < m->ncol; i++) fprintf(f, "%s%s", i ? "," : "", m->col[i]);
    fputc('\n', f);
}
/* Appends the newest row to metrics.csv. */
static int drv_metrics_flush_row(drv_metrics *m) {
    if (m->nowrite) return 0;
    FILE *f = fopen(m->path, "a");
    if (!f) { drv_error("%s: cannot append (%s)", m->path, strerror(errno)); return -1; }
    drv_metrics_fmt_row(m, m->v + (m->rows - 1) * m->ncol, f);
    return fclose(f) ? -1 : 0;
}
/* Writes the whole file (header + rows) atomically. */
static int drv_metrics_rewrite(drv_metrics *m, ldm_ctx *ctx) {
    ldm_atomic_file af;
    if (m->nowrite) return 0;
    if (ldm_atomic_begin(ctx, &af, m->path)) { drv_error("%s", ldm_ctx_error(ctx)); return -1; }
    drv_metrics_header(m, af.f);
    for (int64_t i = 0; i < m->rows; i++) drv_metrics_fmt_row(m, m->v + i * m->ncol, af.f);
    if (ldm_atomic_commit(ctx, &af)) { drv_error("%s", ldm_ctx_error(ctx)); return -1; }
    return 0;
}
/* Reads the first `keep` rows of an existing metrics.csv (columns matched by name). */
static int drv_metrics_load(drv_metrics *m, int64_t keep) {
    FILE *f = fopen(m->path, "r");
    if (!f) return keep == 0 ? 0 : (drv_error("%s: missing, but the checkpoint counts %lld rows", m->path, (long long)keep), -1);
    static char line[1 << 16];
    int map[DRV_MAX_COLS * 2], nmap = 0;
    if (fgets(line, sizeof line, f)) {
        char *s = line, *tok;
        line[strcspn(line, "\r\n")] = 0;
        while ((tok = s) != NULL && nmap < DRV_MAX_COLS * 2) {
            char *c = strchr(s, ',');
            if (c) *c = 0;
            map[nmap++] = drv_metrics_col(m, tok);
            s = c ? c + 1 : NULL;
        }
    }
    while (m->rows < keep && fgets(line, sizeof line, f)) {
        double *r = drv_metrics_new_row(m);
        if (!r) { fclose(f); return -1; }
        char *s = line;
        line[strcspn(line, "\r\n")] = 0;
        for (int c = 0; c < nmap && s; c++) {
            char *e = strchr(s, ',');
            if (e) *e = 0;
            if (*s && map[c] >= 0) r[map[c]] = strtod(s, NULL);
            s = e ? e + 1 : NULL;
        }
    }
    fclose(f);
    if (m->rows < keep) { drv_error("%s has %lld rows, the checkpoint counts %lld", m->path, (long long)m->rows, (long long)keep); return -1; }
    return 0;
}

/* ============================================================================================
   Loss-curve PNG (examples/plot.h): train/<key> and val/<key> of metrics.csv against the step
   ============================================================================================ */
static void drv_png_out(void *f, void *data, int size) { fwrite(data, 1, (size_t)size, (FILE *)f); }

static int drv_plot_curve(const drv_metrics *m, ldm_ctx *ctx, const char *key, const char *path) {
    char name[2][96];
    double *xs = (double *)malloc(sizeof(double) * (size_t)(m->rows + 1) * 3), *ys[2];
    if (!xs) return -1;
    ys[0] = xs + m->rows + 1;
    ys[1] = ys[0] + m->rows + 1;
    ex_plot_series s[2];
    for (int k = 0; k < 2; k++) {
        drv_sfmt(name[k], sizeof name[k], "%s/%s", k ? "val" : "train", key);
        int c = drv_metrics_col(m, name[k]);
        for (int64_t i = 0; i < m->rows; i++) {
            xs[i] = m->v[i * m->ncol];
            ys[k][i] = c >= 0 ? m->v[i * m->ncol + c] : NAN;
        }
        s[k].label = name[k]; s[k].x = xs; s[k].y = ys[k]; s[k].n = m->rows; s[k].markers = k;
    }
    const int W = 960, H = 600;
    unsigned char *px = ex_plot_lines(W, H, "step", key, 2, s);
    free(xs);
    if (!px) return 0; /* nothing to plot yet */
    ldm_atomic_file af;
    int rc = 0;
    if (ldm_atomic_begin(ctx, &af, path)) rc = -1;
    else if (!stbi_write_png_to_func(drv_png_out, af.f, W, H, 3, px, W * 3)) { ldm_atomic_abort(&af); rc = -1; }
    else if (ldm_atomic_commit(ctx, &af)) rc = -1;
    free(px);
    if (rc) drv_error("%s: cannot write the loss curve (%s)", path, ldm_ctx_error(ctx));
    return rc;
}

/* ============================================================================================
   Image grids (torchvision.utils.make_grid(nrow=4, padding=2, pad_value=0), then main.py's
   ImageLogger: (x + 1) / 2 * 255 -> uint8, truncating, in float32 like numpy)
   ============================================================================================ */
static int drv_save_grid(const char *path, const float *x, int B, int C, int H, int W, int nrow, int clamp, int rescale) {
    int pad = 2, xm, ym, gw, gh;
    if (B == 1) { pad = 0; xm = ym = 1; } /* make_grid returns a single image unpadded */
    else { xm = B < nrow ? B : nrow; ym = (B + xm - 1) / xm; }
    gw = xm * (W + pad) + pad;
    gh = ym * (H + pad) + pad;
    unsigned char *px = (unsigned char *)malloc((size_t)gw * gh * 3);
    if (!px) return -1;
    for (size_t i = 0; i < (size_t)gw * gh * 3; i++) {
        float v = 0.0f; /* pad_value 0, then the same mapping as the images */
        if (rescale) v = (v + 1.0f) / 2.0f;
        px[i] = (unsigned char)(v * 255.0f);
    }
    for (int b = 0; b < B; b++) {
        int gx = (b % xm) * (W + pad) + pad, gy = (b / xm) * (H + pad) + pad;
        for (int ch = 0; ch < 3; ch++) {
            const float *src = x + ((size_t)b * C + (size_t)(C == 1 ? 0 : ch)) * (size_t)H * W;
            for (int y = 0; y < H; y++)
                for (int q = 0; q < W; q++) {
                    float v = src[(size_t)y * W + q];
                    if (clamp) v = v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v;
                    if (rescale) v = (v + 1.0f) / 2.0f;
                    v = v * 255.0f;
                    v = v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v; /* numpy would wrap; never for clamped input */
                    px[((size_t)(gy + y) * gw + (size_t)(gx + q)) * 3 + ch] = (unsigned char)v;
                }
        }
    }
    int ok = stbi_write_png(path, gw, gh, 3, px, gw * 3);
    free(px);
    if (!ok) { drv_error("%s: cannot write PNG", path); return -1; }
    return 0;
}

/* ============================================================================================
   The trainer
   ============================================================================================ */
typedef struct drv_topk { char name[96]; double score; int64_t step; } drv_topk;

typedef struct drv_imlog {
    drv_imlog_cfg c;
    int64_t steps[64];                 /* ImageLogger.log_steps; popped from the front */
    int n_steps, popped;
} drv_imlog;

typedef struct drv {
    drv_opts *o;
    ldm_ctx *ctx;
    ldm_config *cfg;
    ldm_config_registry *reg_model, *reg_data, *reg_cb;
    char now[32], nowname[256], logdir[DRV_PATH], ckptdir[DRV_PATH], cfgdir[DRV_PATH], resume_ckpt[DRV_PATH];
    int resuming;

    /* model */
    ex_model *m;
    double base_lr, lr;

    /* data */
    ldm_data_module *dm;
    ldm_data_loader *ld_train, *ld_val;

    /* model.test_only_params */
    drv_testonly_cfg to;
    int test_weights;                  /* a test-only run loaded test_only_params' weights */

    /* trainer settings */
    drv_trainer_cfg tc;
    drv_limit lim_train, lim_val, lim_test, val_interval;
    int64_t max_epochs, max_steps, n_train, n_val, val_check_batch, steps_per_epoch, total_steps;
    int accumulate;
    drv_imlog imlog;
    int have_imlog;
    drv_mckpt_cfg mc;
    int mode_max;
    int64_t trainstep_every;
    int trainstep_weights_only, trainstep_verbose;

    /* state (all of it is in state.ini) */
    int64_t global_step, epoch, batch_in_epoch, accumulated;
    double ep_loss_sum[EX_MAX_OPTIM], ep_n; /* per optimizer: sum of loss * batch size this epoch */
    drv_topk topk[DRV_MAX_TOPK];
    int n_topk;
    drv_metrics met;

    /* run */
    int tty, nan_stop;
    double t_start, rate;              /* steps per second (smoothed) */
    int64_t rate_steps;
    double rate_t;
    float last_loss[EX_MAX_OPTIM], last_val, last_progress;
    int64_t batches_this_run, signal_at;
    uint64_t data_seed;                /* the loaders' seed: --seed, or the resumed run's */
    int64_t last_written;              /* batches_this_run when checkpoints/last was written, or -1 */
    int ngpu, gpu_id;                  /* 0 GPUs: the CPU */
    int gpu_ids[64];                   /* the --gpus list (one process per GPU when several) */
    int monitor_note;

    /* data parallel (ldm_dist.h): rank 0 alone writes the logdir */
    ldm_dist *dist;
    int rank, world;
    ldm_dist_reducer *red[EX_MAX_OPTIM];
} drv;

/* ---- signals ---------------------------------------------------------------------------- */
static volatile sig_atomic_t drv_sig_stop, drv_sig_save;
static void drv_on_signal(int s) {
    if (s == SIGUSR1) { drv_sig_save = 1; return; }
    if (drv_sig_stop) { signal(s, SIG_DFL); raise(s); return; } /* a second one: leave now */
    drv_sig_stop = s;
}
static void drv_install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = drv_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGXFSZ, SIG_IGN); /* over RLIMIT_FSIZE a write fails (EFBIG) and the checkpoint error says so */
}

static int drv_crash_hook(int point) {
    const char *e = getenv("LDM_TEST_CRASH_IN_CHECKPOINT");
    if (e && atoi(e) == point) {
        fflush(stdout);
        fprintf(stderr, "ldm: LDM_TEST_CRASH_IN_CHECKPOINT=%d: killing myself in the middle of a checkpoint write\n", point);
        raise(SIGKILL);
    }
    return 0;
}

/* Data-parallel fault tests: LDM_TEST_DIE_AT_BATCH=N:R kills rank R (SIGKILL) after its N-th
   batch, LDM_TEST_HANG_AT_BATCH=N:R makes it stop answering (it sleeps until killed). */
static void drv_fault_hook(const drv *d) {
    const char *die = getenv("LDM_TEST_DIE_AT_BATCH"), *hang = getenv("LDM_TEST_HANG_AT_BATCH");
    const char *e = die ? die : hang;
    if (!e || !strchr(e, ':') || atoll(e) != d->batches_this_run || atoi(strchr(e, ':') + 1) != d->rank) return;
    fflush(stdout);
    fprintf(stderr, "ldm: rank %d: %s=%s: %s\n", d->rank, die ? "LDM_TEST_DIE_AT_BATCH" : "LDM_TEST_HANG_AT_BATCH", e,
            die ? "killing myself" : "hanging");
    if (die) raise(SIGKILL);
    for (;;) sleep(60);
}

/* Bad-number tests: LDM_TEST_INJECT_NAN=batch:N | grad:N | weight:N puts a NaN into the
   training batch, the first gradient of the first optimizer, or (after its update) the first
   weight, at global step N. */
static int drv_inject(const drv *d, const char *what) {
    const char *e = getenv("LDM_TEST_INJECT_NAN");
    size_t n = strlen(what);
    return e && !strncmp(e, what, n) && e[n] == ':' && atoll(e + n + 1) == d->global_step;
}
static void drv_poke_nan(ldm_ctx *ctx, float *p, ldm_device dev) {
    float v = NAN;
    ldm_device_copy(ctx, p, dev, &v, LDM_CPU, sizeof v);
}

static ldm_data_state drv_state(int64_t epoch, int64_t batch) {
    ldm_data_state s;
    s.epoch = epoch;
    s.batch = batch;
    return s;
}

static int drv_fail_ctx(drv *d, const char *what) {
    drv_error("%s: %s", what ? what : "model", ldm_ctx_error(d->ctx));
    return 1;
}
static int drv_fail_cfg(drv *d) {
    drv_error("%s", ldm_config_error(d->cfg));
    return 1;
}

/* ---- config ------------------------------------------------------------------------------ */
static int drv_cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* main.py's logdir / resume rules. */
static int drv_setup_paths(drv *d) {
    drv_opts *o = d->o;
    if (!d->now[0]) { /* data-parallel ranks take rank 0's */
        time_t t = time(NULL);
        struct tm tmv;
        localtime_r(&t, &tmv);
        strftime(d->now, sizeof d->now, "%Y-%m-%dT%H-%M-%S", &tmv);
    }
    if (o->resume) {
        char r[DRV_PATH];
        drv_sfmt(r, sizeof r, "%s", o->resume);
        size_t n = strlen(r);
        while (n > 1 && r[n - 1] == '/') r[--n] = 0;
        if (!drv_exists(r)) { drv_error("cannot find %s (hint: -r takes a logdir or a checkpoint directory inside one)", r); return 1; }
        char ckd[DRV_PATH];
        drv_join(ckd, sizeof ckd, r, "checkpoints");
        if (drv_is_dir(ckd)) {
            drv_sfmt(d->logdir, sizeof d->logdir, "%s", r);
            drv_join(d->resume_ckpt, sizeof d->resume_ckpt, ckd, "last");
        } else {
            /* a checkpoint: the logdir is two levels up (logdir/checkpoints/<ckpt>) */
            drv_sfmt(d->resume_ckpt, sizeof d->resume_ckpt, "%s", r);
            char p1[DRV_PATH], p2[DRV_PATH];
            drv_parent(p1, sizeof p1, r);
            drv_parent(p2, sizeof p2, p1);
            if (!strcmp(p1 + strlen(p1) - strlen("trainstep_checkpoints"), "trainstep_checkpoints")) {
                drv_parent(p1, sizeof p1, p2);
                drv_sfmt(p2, sizeof p2, "%s", p1);
            }
            drv_sfmt(d->logdir, sizeof d->logdir, "%s", p2);
        }
        /* a crash between moving the old checkpoint aside and moving the new one in leaves
           <ckpt>.old: that is the last complete one */
        if (!drv_is_dir(d->resume_ckpt)) {
            char old[DRV_PATH + 8];
            drv_sfmt(old, sizeof old, "%s.old", d->resume_ckpt);
            if (drv_is_dir(old)) {
                drv_note("Note: %s is missing (interrupted checkpoint write); resuming from %s", d->resume_ckpt, old);
                drv_sfmt(d->resume_ckpt, sizeof d->resume_ckpt, "%s", old);
            } else {
                drv_error("%s: no checkpoint to resume from (hint: the run wrote none yet, or pass a checkpoint directory)", d->resume_ckpt);
                return 1;
            }
        }
        const char *base = strrchr(d->logdir, '/');
        drv_sfmt(d->nowname, sizeof d->nowname, "%s", base ? base + 1 : d->logdir);
        d->resuming = 1;
    } else {
        char name[256] = "";
        if (o->name && o->name[0]) drv_sfmt(name, sizeof name, "_%s", o->name);
        else if (o->n_base) {
            const char *f = strrchr(o->base[0], '/');
            f = f ? f + 1 : o->base[0];
            drv_sfmt(name, sizeof name, "_%s", f);
            char *dot = strrchr(name, '.');
            if (dot && dot != name) *dot = 0;
        }
        drv_sfmt(d->nowname, sizeof d->nowname, "%s%s%s", d->now, name, o->postfix);
        drv_join(d->logdir, sizeof d->logdir, o->logdir, d->nowname);
    }
    drv_join(d->ckptdir, sizeof d->ckptdir, d->logdir, "checkpoints");
    drv_join(d->cfgdir, sizeof d->cfgdir, d->logdir, "configs");
    return 0;
}

static int drv_load_config(drv *d) {
    drv_opts *o = d->o;
    if (ldm_config_create(&d->cfg)) { drv_error("out of memory"); return 1; }
    if (d->resuming) {
        /* the logdir's saved configs first (sorted), then --base, then overrides */
        DIR *dir = opendir(d->cfgdir);
        char *names[256];
        int n = 0;
        if (dir) {
            struct dirent *e;
            while ((e = readdir(dir)) != NULL && n < 256) {
                size_t l = strlen(e->d_name);
                if (l > 4 && (!strcmp(e->d_name + l - 4, ".ini") || !strcmp(e->d_name + l - 5, ".yaml"))) {
                    names[n] = (char *)malloc(l + 1);
                    strcpy(names[n++], e->d_name);
                }
            }
            closedir(dir);
        }
        if (!n) { drv_error("%s: no saved configs (hint: -r needs a logdir this program wrote)", d->cfgdir); return 1; }
        qsort(names, (size_t)n, sizeof names[0], drv_cmp_str);
        int bad = 0;
        for (int i = 0; i < n; i++) {
            char p[DRV_PATH];
            drv_join(p, sizeof p, d->cfgdir, names[i]);
            if (!bad && ldm_config_load(d->cfg, p)) bad = 1;
            free(names[i]);
        }
        if (bad) return drv_fail_cfg(d);
    }
    for (int i = 0; i < o->n_base; i++)
        if (ldm_config_load(d->cfg, o->base[i])) return drv_fail_cfg(d);
    for (int i = 0; i < o->n_ovr; i++) /* located as <command line>:N */
        if (ldm_config_set(d->cfg, o->ovr[i], NULL)) return drv_fail_cfg(d);
    return 0;
}

/* The models this driver builds: each class's constructor reads model.params and returns an
   ex_model. */
static const ex_model_class *const drv_models[] = {&ex_autoencoder_class, &ex_latent_diffusion_class, &ex_ddpm_class, &ex_video_sr_class};

static int drv_registries(drv *d) {
    if (ldm_config_registry_create(&d->reg_model) || ldm_config_registry_create(&d->reg_data) ||
        ldm_config_registry_create(&d->reg_cb)) { drv_error("out of memory"); return 1; }
    static int kinds[4] = {DRV_CB_IMAGE_LOGGER, DRV_CB_MODEL_CHECKPOINT, DRV_CB_LR_MONITOR, DRV_CB_CUDA};
    ldm_result r = LDM_OK;
    for (size_t i = 0; i < sizeof drv_models / sizeof drv_models[0] && !r; i++)
        r = ldm_config_registry_add(d->reg_model, drv_models[i]->target, drv_models[i]->aliases, drv_models[i]->create, (void *)drv_models[i]);
    if (r) { drv_error("registry: %s", ldm_config_registry_error(d->reg_model)); return 1; }
    r = ldm_config_registry_add(d->reg_cb, "main.ImageLogger", "ImageLogger", ex_config_ctor_name, &kinds[0]);
    if (!r) r = ldm_config_registry_add(d->reg_cb, "pytorch_lightning.callbacks.ModelCheckpoint", "ModelCheckpoint", ex_config_ctor_name, &kinds[1]);
    if (!r) r = ldm_config_registry_add(d->reg_cb, "main.LearningRateMonitor", "pytorch_lightning.callbacks.LearningRateMonitor,LearningRateMonitor",
                                        ex_config_ctor_name, &kinds[2]);
    if (!r) r = ldm_config_registry_add(d->reg_cb, "main.CUDACallback", "CUDACallback", ex_config_ctor_name, &kinds[3]);
    if (r) { drv_error("registry: %s", ldm_config_registry_error(d->reg_cb)); return 1; }
    if (ldm_data_register(d->reg_data) || ex_video_data_register(d->reg_data)) { drv_error("registry: %s", ldm_config_registry_error(d->reg_data)); return 1; }
    {   /* the 3-D LDM config form's dataset of volumes */
        const ldm_config_target *vt = ldm_config_registry_find(d->reg_data, "ldm.data.volume.VolumeDataset");
        if (vt && ldm_config_registry_add(d->reg_data, "SimpleDataset", "", vt->fn, vt->user)) {
            drv_error("registry: %s", ldm_config_registry_error(d->reg_data));
            return 1;
        }
    }
    return 0;
}

/* Instantiates a {target, params} node through reg (unknown target: error listing the known). */
static int drv_resolve(drv *d, const ldm_config_registry *reg, const ldm_config_node *node, int validate, void **out) {
    ex_target_cfg t;
    if (validate && ex_target_cfg_load(d->cfg, node, &t)) return drv_fail_cfg(d);
    if (ldm_config_instantiate(d->cfg, reg, node, NULL, out)) return drv_fail_cfg(d);
    return 0;
}

/* The model target: target, or the 3-D LDM config form's train_target (-t) and test_target (a
   test-only run; it inherits train_target). With -t the test after training tests the trained
   model, so a different test_target is an error there. */
static int drv_build_model(drv *d, const ldm_config_node *model, const drv_model_cfg *mc) {
    ldm_config *cfg = d->cfg;
    char w[400];
    const ldm_config_node *tg = ldm_config_find(model, "target"), *tr = ldm_config_find(model, "train_target"),
                          *te = ldm_config_find(model, "test_target");
    if (drv_testonly_cfg_load(cfg, mc->test_only_params, &d->to)) return drv_fail_cfg(d);
    if (tg && tr) {
        drv_error("%s: give target or train_target, not both (hint: train_target with test_target is the 3-D LDM form)",
                  drv_where(tr, w, sizeof w));
        return 1;
    }
    const ldm_config_node *train = tr ? tr : tg, *use = d->o->train || !te ? train : te;
    if (!use) {
        drv_error("%s: no model target (hint: model.target, or model.train_target [and test_target])", drv_where(model, w, sizeof w));
        return 1;
    }
    const ldm_config_target *t, *t_train = NULL;
    if (ldm_config_registry_lookup(cfg, d->reg_model, use, &t)) return drv_fail_cfg(d);
    if (d->o->train && te && !d->o->no_test) {
        const ldm_config_target *t_test;
        if (ldm_config_registry_lookup(cfg, d->reg_model, te, &t_test)) return drv_fail_cfg(d);
        t_train = t;
        if (t_test != t_train) {
            drv_error("%s: %s differs from the trained %s: the test after -t tests the trained model (hint: --no-test, then a "
                      "test-only run without -t)", drv_where(te, w, sizeof w), te->s, t_train->name);
            return 1;
        }
    }
    if (t->fn(cfg, mc->params, t->user, NULL, (void **)&d->m)) return drv_fail_cfg(d);
    return 0;
}

/* Reads and checks every key of the config (the model is built later). */
static int drv_read_config(drv *d, drv_root_cfg *root, drv_model_cfg *mcfg) {
    ldm_config *cfg = d->cfg;
    char w[400];
    if (drv_root_cfg_load(cfg, ldm_config_root(cfg), root)) return drv_fail_cfg(d);
    if (drv_model_cfg_load(cfg, root->model, mcfg)) return drv_fail_cfg(d);
    d->base_lr = mcfg->base_learning_rate;
    /* the model's constructor reads and checks model.params */
    if (drv_build_model(d, root->model, mcfg)) return 1;

    /* lightning */
    drv_lightning_cfg lt;
    if (drv_lightning_cfg_load(cfg, root->lightning, &lt)) return drv_fail_cfg(d);
    if (drv_trainer_cfg_load(cfg, lt.trainer, &d->tc)) return drv_fail_cfg(d);
    if (drv_read_limit(cfg, d->tc.limit_train_batches, 1.0, &d->lim_train) ||
        drv_read_limit(cfg, d->tc.limit_val_batches, 1.0, &d->lim_val) ||
        drv_read_limit(cfg, d->tc.limit_test_batches, 1.0, &d->lim_test) ||
        drv_read_limit(cfg, d->tc.val_check_interval, 1.0, &d->val_interval)) return drv_fail_cfg(d);
    const ldm_config_node *tn = lt.trainer;
    if (!d->val_interval.is_frac && d->val_interval.n < 1) {
        drv_error("%s: an int interval must be >= 1", drv_where(d->tc.val_check_interval, w, sizeof w));
        return 1;
    }
    /* devices (Lightning's gpus: an int n = n GPUs, "0," or [0] = those ids; main.py counts
       them as len(gpus.strip(",").split(","))) */
    const ldm_config_node *g = d->tc.gpus;
    int ngpu = 0;
    d->gpu_id = 0;
    for (int i = 0; i < 64; i++) d->gpu_ids[i] = i; /* a count: GPUs 0 .. n-1 */
    if (g && g->type == LDM_CONFIG_INT) ngpu = g->i > 0 ? (int)g->i : g->i < 0 ? -1 : 0; /* -1: every visible GPU */
    else if (g && g->type == LDM_CONFIG_STR) {
        char ids[256], *tok, *save = NULL;
        drv_sfmt(ids, sizeof ids, "%s", g->s);
        for (tok = strtok_r(ids, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
            if (!ngpu) d->gpu_id = atoi(tok);
            if (ngpu < 64) d->gpu_ids[ngpu] = atoi(tok);
            ngpu++;
        }
        if (ngpu == 1 && !strchr(g->s, ',')) { /* "2" is a count */
            ngpu = d->gpu_id > 0 ? d->gpu_id : 0;
            d->gpu_id = 0;
            for (int i = 0; i < 64; i++) d->gpu_ids[i] = i;
        }
    } else if (g && g->type == LDM_CONFIG_LIST) {
        ngpu = g->n;
        if (g->n && g->child[0]->type == LDM_CONFIG_INT) d->gpu_id = (int)g->child[0]->i;
        for (int i = 0; i < g->n && i < 64; i++) d->gpu_ids[i] = g->child[i]->type == LDM_CONFIG_INT ? (int)g->child[i]->i : i;
    }
    const char *acc = d->tc.accelerator;
    const ldm_config_node *at = g && g->type != LDM_CONFIG_NULL ? g : ldm_config_find(tn, "accelerator");
    if (acc[0] && strcmp(acc, "cpu") && strcmp(acc, "gpu") && strcmp(acc, "cuda") && strcmp(acc, "ddp") && strcmp(acc, "dp")) {
        drv_error("%s: accelerator \"%s\" (hint: cpu, or gpu with gpus)", drv_where(ldm_config_find(tn, "accelerator"), w, sizeof w), acc);
        return 1;
    }
    if (acc[0] && strcmp(acc, "cpu") && ngpu == 0) ngpu = 1;
    (void)at;
#ifndef LDM_CUDA
    if (ngpu) {
        drv_error("%s: this ldm is a CPU build: GPUs need the CUDA back end (rebuild with LDM_CUDA=1 ./build.sh on a machine "
                  "with nvcc; hint: drop --gpus / lightning.trainer.gpus to train on the CPU)", drv_where(at, w, sizeof w));
        return 1;
    }
#endif
    d->ngpu = ngpu;

    /* callbacks: the ImageLogger is on by default (main.py's default_callbacks_cfg) */
    if (drv_imlog_cfg_load(cfg, NULL, &d->imlog.c)) return drv_fail_cfg(d);
    d->have_imlog = 1;
    int n_imlog = 0;
    const ldm_config_node *cbs = lt.callbacks;
    if (cbs && cbs->type != LDM_CONFIG_NULL && cbs->type != LDM_CONFIG_MAP) {
        drv_error("%s: expected a mapping of callbacks {name: {target, params}}", drv_where(cbs, w, sizeof w));
        return 1;
    }
    for (int i = 0; cbs && cbs->type == LDM_CONFIG_MAP && i < cbs->n; i++) {
        const ldm_config_node *cb = cbs->child[i];
        void *kp;
        if (drv_resolve(d, d->reg_cb, cb, 1, &kp)) return 1;
        const ldm_config_node *params = ldm_config_find(cb, "params");
        switch (*(int *)kp) {
        case DRV_CB_IMAGE_LOGGER:
            if (++n_imlog > 1) { drv_error("%s: one ImageLogger at most", drv_where(cb, w, sizeof w)); return 1; }
            if (drv_imlog_cfg_load(cfg, params, &d->imlog.c)) return drv_fail_cfg(d);
            break;
        case DRV_CB_MODEL_CHECKPOINT: {
            drv_stepckpt_cfg sc;
            if (drv_stepckpt_cfg_load(cfg, params, &sc)) return drv_fail_cfg(d);
            if (sc.save_top_k != -1) {
                drv_error("%s: ModelCheckpoint callbacks keep every checkpoint (save_top_k -1); top-k by a metric is "
                          "lightning.modelcheckpoint's job", drv_where(ldm_config_find(params, "save_top_k"), w, sizeof w));
                return 1;
            }
            if (d->trainstep_every) { drv_error("%s: one trainstep ModelCheckpoint callback at most", drv_where(cb, w, sizeof w)); return 1; }
            d->trainstep_every = sc.every_n_train_steps;
            d->trainstep_weights_only = sc.save_weights_only;
            d->trainstep_verbose = sc.verbose;
            break;
        }
        case DRV_CB_LR_MONITOR: {
            drv_lrmon_cfg lc;
            if (drv_lrmon_cfg_load(cfg, params, &lc)) return drv_fail_cfg(d);
            break;
        }
        default: {
            static const ldm_config_field none[] = {LDM_CONFIG_FIELD_END};
            if (ldm_config_validate(cfg, params, none)) return drv_fail_cfg(d);
        }
        }
    }
    {
        const ldm_config_node *sp = d->to.sampler;   /* checked now; applied when the test starts */
        if (sp && sp->type != LDM_CONFIG_NULL && !d->m->set_log_images_kwargs) {
            drv_error("%s: %s's test takes no sampler options", drv_where(sp, w, sizeof w), d->m->name);
            return 1;
        }
        if (sp && sp->type != LDM_CONFIG_NULL && d->m->set_log_images_kwargs(d->m, cfg, sp)) return drv_fail_cfg(d);
    }
    {
        const ldm_config_node *kw = d->imlog.c.log_images_kwargs;
        if (kw && kw->type != LDM_CONFIG_NULL && !d->m->set_log_images_kwargs) {
            drv_error("%s: %s's log_images takes no options", drv_where(kw, w, sizeof w), d->m->name);
            return 1;
        }
        if (d->m->set_log_images_kwargs && d->m->set_log_images_kwargs(d->m, cfg, kw)) return drv_fail_cfg(d);
    }
    /* ImageLogger.log_steps = [2**n for n in range(int(log2(batch_freq)) + 1)] or [batch_freq] */
    if (d->imlog.c.increase_log_steps) {
        int nmax = (int)floor(log2((double)d->imlog.c.batch_frequency));
        for (int n = 0; n <= nmax && n < 64; n++) d->imlog.steps[d->imlog.n_steps++] = (int64_t)1 << n;
    } else d->imlog.steps[d->imlog.n_steps++] = d->imlog.c.batch_frequency;

    /* model checkpointing */
    const ldm_config_node *mck = lt.modelcheckpoint, *mparams = NULL;
    if (mck && mck->type != LDM_CONFIG_NULL) {
        static const ldm_config_field sch[] = {{"target", LDM_CONFIG_KIND_STR, "pytorch_lightning.callbacks.ModelCheckpoint", "ModelCheckpoint", 0, 0.0, 0.0},
                                               {"params", LDM_CONFIG_KIND_NODE, "", "its parameters", 0, 0.0, 0.0},
                                               LDM_CONFIG_FIELD_END};
        if (ldm_config_validate(cfg, mck, sch)) return drv_fail_cfg(d);
        const ldm_config_node *tg = ldm_config_find(mck, "target");
        const ldm_config_target *found;
        if (tg && ldm_config_registry_lookup(cfg, d->reg_cb, tg, &found)) return drv_fail_cfg(d);
        if (tg && *(int *)found->user != DRV_CB_MODEL_CHECKPOINT) {
            drv_error("%s: lightning.modelcheckpoint needs pytorch_lightning.callbacks.ModelCheckpoint", drv_where(tg, w, sizeof w));
            return 1;
        }
        mparams = ldm_config_find(mck, "params");
    }
    if (drv_mckpt_cfg_load(cfg, mparams, &d->mc)) return drv_fail_cfg(d);
    if (!d->mc.monitor[0]) d->mc.monitor = d->m->monitor;
    if (strcmp(d->mc.mode, "min") && strcmp(d->mc.mode, "max")) {
        drv_error("%s: mode is min or max", drv_where(ldm_config_find(mparams, "mode"), w, sizeof w));
        return 1;
    }
    d->mode_max = !strcmp(d->mc.mode, "max");
    return 0;
}

/* ---- checkpoints ---------------------------------------------------------------------------- */
/* model.safetensors: the model's state dict, with the step and epoch as metadata. */
static int drv_write_model(drv *d, const char *path) {
    char gs[32], ep[32];
    drv_sfmt(gs, sizeof gs, "%lld", (long long)d->global_step);
    drv_sfmt(ep, sizeof ep, "%lld", (long long)d->epoch);
    const char *mk[3] = {"format", "global_step", "epoch"}, *mv[3] = {"pt", gs, ep};
    if (d->m->save(d->m, d->ctx, path, 3, mk, mv)) return drv_fail_ctx(d, d->m->what);
    return 0;
}

/* The gradients accumulated since the last optimizer step (only mid-accumulation): one flat
   tensor per parameter set of the model. */
static int drv_write_grads(drv *d, const char *path) {
    ex_model *m = d->m;
    ldm_named_data nd[EX_MAX_PARAMS];
    float *h[EX_MAX_PARAMS];
    int rc = 0;
    memset(nd, 0, sizeof nd);
    memset(h, 0, sizeof h);
    for (int k = 0; k < m->n_params && !rc; k++) {
        int64_t n;
        float *g = ldm_nn_block(m->params[k].P, LDM_NN_BLOCK_GRADS, &n);
        ldm_tensor t = ldm_tensor_wrap(g, ldm_shape1(n), ldm_nn_params_device(m->params[k].P));
        h[k] = (float *)malloc(sizeof(float) * (size_t)(n + 1));
        if (!h[k]) { drv_error("out of memory"); rc = 1; break; }
        if (n && ldm_to_host(d->ctx, &t, h[k])) { rc = drv_fail_ctx(d, "checkpoint"); break; }
        nd[k].name = m->params[k].name; nd[k].data = h[k]; nd[k].ndim = 1; nd[k].shape[0] = n;
    }
    if (!rc && ldm_safetensors_write(d->ctx, path, m->n_params, nd, LDM_F32, 0, NULL, NULL)) rc = drv_fail_ctx(d, "checkpoint");
    for (int k = 0; k < m->n_params; k++) free(h[k]);
    return rc;
}

/* Puts grads.safetensors back into the model's gradient blocks. */
static int drv_read_grads(drv *d, const char *path) {
    ex_model *m = d->m;
    ldm_weights *w;
    if (ldm_weights_open(d->ctx, &w, path)) return drv_fail_ctx(d, "resume (accumulated gradients)");
    int bad = 0;
    for (int k = 0; k < m->n_params && !bad; k++) {
        int64_t n;
        float *g = ldm_nn_block(m->params[k].P, LDM_NN_BLOCK_GRADS, &n);
        int i = ldm_weights_find(w, m->params[k].name);
        if (i < 0 || ldm_weights_info(w, i)->numel != n) {
            ldm_weights_close(w);
            drv_error("%s: gradient sizes do not match this model", path);
            return 1;
        }
        float *h = (float *)malloc(sizeof(float) * (size_t)(n + 1));
        ldm_tensor t = ldm_tensor_wrap(g, ldm_shape1(n), ldm_nn_params_device(m->params[k].P));
        bad = !h || ldm_weights_read(d->ctx, w, i, h) || ldm_nn_copy_from_host(d->ctx, &t, h);
        free(h);
    }
    ldm_weights_close(w);
    return bad ? drv_fail_ctx(d, "resume (accumulated gradients)") : 0;
}

static int drv_write_state(drv *d, const char *path) {
    ldm_atomic_file af;
    if (ldm_atomic_begin(d->ctx, &af, path)) return drv_fail_ctx(d, "checkpoint");
    FILE *f = af.f;
    const ldm_rng *rng = ldm_ctx_rng(d->ctx);
    fprintf(f, "# ldm training state: with model.safetensors and optimizer_*.safetensors, everything a\n"
               "# resumed run needs to continue exactly where this one was.\n"
               "[trainer]\nglobal_step = %lld\nepoch = %lld\nbatch_in_epoch = %lld\naccumulated = %lld\n"
               "metrics_rows = %lld\nseed = \"%llu\"\nrng_seed = \"%llu\"\nrng_offset = \"%llu\"\n",
            (long long)d->global_step, (long long)d->epoch, (long long)d->batch_in_epoch, (long long)d->accumulated,
            (long long)d->met.rows, (unsigned long long)d->data_seed, (unsigned long long)rng->seed, (unsigned long long)rng->offset);
    for (int i = 0; i < d->m->n_optim; i++) fprintf(f, "epoch_%s_sum = %.17g\n", d->m->optim[i].name, d->ep_loss_sum[i]);
    fprintf(f, "epoch_samples = %.17g\n[image_logger]\nlog_steps_popped = %d\n[checkpoint]\nmonitor = \"%s\"\n", d->ep_n,
            d->imlog.popped, d->mc.monitor);
    fprintf(f, "topk_names = [");
    for (int i = 0; i < d->n_topk; i++) fprintf(f, "%s\"%s\"", i ? ", " : "", d->topk[i].name);
    fprintf(f, "]\ntopk_scores = [");
    for (int i = 0; i < d->n_topk; i++) fprintf(f, "%s%.17g", i ? ", " : "", d->topk[i].score);
    fprintf(f, "]\ntopk_steps = [");
    for (int i = 0; i < d->n_topk; i++) fprintf(f, "%s%lld", i ? ", " : "", (long long)d->topk[i].step);
    fprintf(f, "]\n[data]\nepoch = %lld\nbatch = %lld\n", (long long)d->epoch, (long long)d->batch_in_epoch);
    if (ldm_atomic_commit(d->ctx, &af)) return drv_fail_ctx(d, "checkpoint");
    return 0;
}

/* Moves a complete directory `tmp` into place as `final`, keeping the previous `final` (as
   final.old) until the new one is there. */
static int drv_install_dir(const char *tmp, const char *final) {
    char old[DRV_PATH + 8], parent[DRV_PATH];
    drv_sfmt(old, sizeof old, "%s.old", final);
    drv_parent(parent, sizeof parent, final);
    drv_rm_rf(old);
    int had = drv_exists(final);
    if (had && rename(final, old)) { drv_error("%s: cannot move aside (%s)", final, strerror(errno)); return 1; }
    if (had) drv_crash_hook(2);
    if (rename(tmp, final)) { drv_error("%s: cannot move into place (%s)", final, strerror(errno)); return 1; }
    drv_fsync_path(parent);
    if (had) drv_rm_rf(old);
    return 0;
}

/* Part j of optimizer i (0: opt, then its `also` registries) and its file name:
   optimizer_<i>.safetensors, optimizer_<i>.<j>.safetensors. */
static ldm_nn_optim *drv_optim_part(const ex_optim *o, int j) { return j == 0 ? o->opt : o->also[j - 1]; }
static void drv_optim_file(int i, int j, char *out, size_t n) {
    if (j == 0) drv_sfmt(out, n, "optimizer_%d.safetensors", i);
    else drv_sfmt(out, n, "optimizer_%d.%d.safetensors", i, j);
}

/* The files of a checkpoint directory: model.safetensors, the optimizers' files,
   grads.safetensors, state.ini; i-th name into out (false past the end). */
static int drv_ckpt_file(const drv *d, int i, char *out, size_t n) {
    static const char *const fixed[] = {"model.safetensors", "grads.safetensors", "state.ini"};
    if (i == 0) { drv_sfmt(out, n, "%s", fixed[0]); return 1; }
    i--;
    for (int k = 0; k < d->m->n_optim; k++) {
        if (i <= d->m->optim[k].n_also) { drv_optim_file(k, i, out, n); return 1; }
        i -= d->m->optim[k].n_also + 1;
    }
    if (i < 2) { drv_sfmt(out, n, "%s", fixed[1 + i]); return 1; }
    return 0;
}

/* Writes the current state once into a temporary directory, then installs it under every
   name in dests (hard links). weights_only: model.safetensors alone. */
static int drv_checkpoint(drv *d, int n, const char *const *dests, int weights_only) {
    char tmp[DRV_PATH], p[DRV_PATH];
    if (d->rank) return 0; /* rank 0 writes; every rank holds the same weights */
    drv_sfmt(tmp, sizeof tmp, "%s/.tmp-%ld", d->ckptdir, (long)getpid());
    drv_rm_rf(tmp);
    if (drv_mkdirs(tmp)) { drv_error("%s: cannot create (%s)", tmp, strerror(errno)); return 1; }
    drv_join(p, sizeof p, tmp, "model.safetensors");
    if (drv_write_model(d, p)) return 1;
    drv_crash_hook(1);
    if (!weights_only) {
        for (int i = 0; i < d->m->n_optim; i++)
            for (int j = 0; j <= d->m->optim[i].n_also; j++) {
                char f[64];
                drv_optim_file(i, j, f, sizeof f);
                drv_join(p, sizeof p, tmp, f);
                if (ldm_nn_optim_save(d->ctx, drv_optim_part(&d->m->optim[i], j), p)) return drv_fail_ctx(d, "checkpoint");
            }
        if (d->accumulated) {
            drv_join(p, sizeof p, tmp, "grads.safetensors");
            if (drv_write_grads(d, p)) return 1;
        }
        drv_join(p, sizeof p, tmp, "state.ini");
        if (drv_write_state(d, p)) return 1;
    }
    drv_fsync_path(tmp);
    for (int i = 0; i < n; i++) {
        char final[DRV_PATH], parent[DRV_PATH];
        drv_join(final, sizeof final, d->ckptdir, dests[i]);
        drv_parent(parent, sizeof parent, final);
        if (drv_mkdirs(parent)) { drv_error("%s: cannot create", parent); return 1; }
        if (i == n - 1) { if (drv_install_dir(tmp, final)) return 1; continue; }
        char t2[DRV_PATH];
        drv_sfmt(t2, sizeof t2, "%s/.tmp-%ld-%d", d->ckptdir, (long)getpid(), i);
        drv_rm_rf(t2);
        if (drv_mkdirs(t2)) { drv_error("%s: cannot create", t2); return 1; }
        char f[64];
        for (int k = 0; drv_ckpt_file(d, k, f, sizeof f); k++) {
            char a[DRV_PATH], b[DRV_PATH];
            drv_join(a, sizeof a, tmp, f);
            drv_join(b, sizeof b, t2, f);
            if (drv_is_file(a) && drv_link_or_copy(a, b)) { drv_error("%s: cannot write", b); return 1; }
        }
        drv_fsync_path(t2);
        if (drv_install_dir(t2, final)) return 1;
    }
    return 0;
}

/* Loads a checkpoint directory; with_state: also optimizers, gradients and state.ini. */
static int drv_load_checkpoint(drv *d, const char *dir, int with_state) {
    ldm_ctx *ctx = d->ctx;
    char p[DRV_PATH];
    drv_join(p, sizeof p, dir, "model.safetensors");
    if (!drv_is_file(p)) { drv_error("%s: no model.safetensors here (hint: pass a checkpoint directory or a logdir)", dir); return 1; }
    if (d->m->load(d->m, ctx, p)) return drv_fail_ctx(d, d->m->what);
    char st[DRV_PATH];
    drv_join(st, sizeof st, dir, "state.ini");
    if (!with_state) { /* weights only; the step and epoch are for the test report */
        ldm_config *sc;
        if (drv_is_file(st) && !ldm_config_create(&sc)) {
            if (!ldm_config_load(sc, st)) {
                ldm_config_get_i64(sc, NULL, "trainer.global_step", 0, &d->global_step);
                ldm_config_get_i64(sc, NULL, "trainer.epoch", 0, &d->epoch);
            }
            ldm_config_destroy(sc);
        }
        return 0;
    }
    if (!drv_is_file(st)) {
        drv_error("%s: weights only (no state.ini), so training cannot resume from it (hint: use model.params.ckpt_path=%s to "
                  "start a new run from these weights)", dir, p);
        return 1;
    }
    for (int i = 0; i < d->m->n_optim; i++)
        for (int j = 0; j <= d->m->optim[i].n_also; j++) {
            char f[64];
            drv_optim_file(i, j, f, sizeof f);
            drv_join(p, sizeof p, dir, f);
            if (ldm_nn_optim_load(ctx, drv_optim_part(&d->m->optim[i], j), p)) return drv_fail_ctx(d, "resume");
        }

    ldm_config *sc;
    if (ldm_config_create(&sc)) return 1;
    int rc = 0;
    const char *s_seed, *s_rs, *s_ro, *mon;
    int64_t rows;
    ldm_config_strs names;
    ldm_config_floats scores;
    ldm_config_ints steps_i;
    if (ldm_config_load(sc, st) || ldm_config_get_i64(sc, NULL, "trainer.global_step", 0, &d->global_step) ||
        ldm_config_get_i64(sc, NULL, "trainer.epoch", 0, &d->epoch) ||
        ldm_config_get_i64(sc, NULL, "trainer.batch_in_epoch", 0, &d->batch_in_epoch) ||
        ldm_config_get_i64(sc, NULL, "trainer.accumulated", 0, &d->accumulated) ||
        ldm_config_get_i64(sc, NULL, "trainer.metrics_rows", 0, &rows) ||
        ldm_config_get_str(sc, NULL, "trainer.seed", "", &s_seed) || ldm_config_get_str(sc, NULL, "trainer.rng_seed", "", &s_rs) ||
        ldm_config_get_str(sc, NULL, "trainer.rng_offset", "", &s_ro) ||
        ldm_config_get_float(sc, NULL, "trainer.epoch_samples", 0, &d->ep_n) ||
        ldm_config_get_int(sc, NULL, "image_logger.log_steps_popped", 0, &d->imlog.popped) ||
        ldm_config_get_str(sc, NULL, "checkpoint.monitor", "", &mon) ||
        ldm_config_get_str_list(sc, NULL, "checkpoint.topk_names", "", &names) ||
        ldm_config_get_float_list(sc, NULL, "checkpoint.topk_scores", "", &scores) ||
        ldm_config_get_int_list(sc, NULL, "checkpoint.topk_steps", "", &steps_i)) {
        drv_error("%s", ldm_config_error(sc));
        rc = 1;
        goto done;
    }
    for (int i = 0; i < d->m->n_optim; i++) {
        char k[96];
        drv_sfmt(k, sizeof k, "trainer.epoch_%s_sum", d->m->optim[i].name);
        if (ldm_config_get_float(sc, NULL, k, 0, &d->ep_loss_sum[i])) { drv_error("%s", ldm_config_error(sc)); rc = 1; goto done; }
    }
    if (names.n != scores.n || names.n != steps_i.n) { drv_error("%s: topk lists differ in length", st); rc = 1; goto done; }
    {
        ldm_rng *rng = ldm_ctx_rng(ctx);
        rng->seed = strtoull(s_rs, NULL, 10);
        rng->offset = strtoull(s_ro, NULL, 10);
        d->data_seed = strtoull(s_seed, NULL, 10);
        if (d->data_seed != d->o->seed)
            drv_note("Note: --seed %llu is ignored: the resumed run keeps its seed (%s) and RNG state",
                     (unsigned long long)d->o->seed, s_seed);
        if (strcmp(mon, d->mc.monitor)) d->n_topk = 0; /* another metric: start a fresh top-k */
        else {
            d->n_topk = 0;
            for (int i = 0; i < names.n; i++) {
                char pd[DRV_PATH];
                drv_join(pd, sizeof pd, d->ckptdir, names.v[i]);
                if (!drv_is_dir(pd)) continue; /* deleted after this checkpoint was written */
                drv_topk *t = &d->topk[d->n_topk++];
                drv_sfmt(t->name, sizeof t->name, "%s", names.v[i]);
                t->score = scores.v[i];
                t->step = steps_i.v[i];
            }
        }
        if (d->accumulated) {
            drv_join(p, sizeof p, dir, "grads.safetensors");
            if (drv_read_grads(d, p)) { rc = 1; goto done; }
        }
    }
    if (drv_metrics_load(&d->met, rows) || drv_metrics_rewrite(&d->met, ctx)) rc = 1;
done:
    ldm_config_destroy(sc);
    return rc;
}

/* ---- the ImageLogger ------------------------------------------------------------------------- */
/* CompVis ImageLogger.check_frequency (pops the front of log_steps whenever it fires). */
static int drv_check_frequency(drv_imlog *il, int64_t idx) {
    int in_steps = 0;
    for (int i = il->popped; i < il->n_steps; i++) in_steps |= il->steps[i] == idx;
    if (((idx % il->c.batch_frequency) == 0 || in_steps) && (idx > 0 || il->c.log_first_step)) {
        if (il->popped < il->n_steps) il->popped++;
        return 1;
    }
    return 0;
}

/* The model's log_images under no_grad: one grid per key. */
static int drv_log_images(drv *d, const ldm_data_batch *b, const char *split, int64_t batch_idx) {
    drv_imlog *il = &d->imlog;
    if (il->c.disabled || d->rank) return 0;
    int64_t idx = il->c.log_on_batch_idx ? batch_idx : d->global_step;
    if (!drv_check_frequency(il, idx) || il->c.max_images <= 0) return 0;
    ldm_ctx *ctx = d->ctx;
    int prev = ldm_set_grad_enabled(ctx, 0);
    ldm_mark mk = ldm_arena_mark(ctx);
    /* logging draws (samples, posterior noise) leave the training RNG where it was: rank 0
       alone logs, and training must not depend on how often images are logged */
    ldm_rng keep = *ldm_ctx_rng(ctx);
    ex_images im;
    memset(&im, 0, sizeof im);
    int rc = d->m->log_images(d->m, ctx, b, il->c.max_images, &im) ? drv_fail_ctx(d, d->m->what) : 0;
    ldm_set_grad_enabled(ctx, prev);
    for (int k = 0; k < im.n && !rc; k++) {
        ldm_tensor *t = im.t[k];
        float *h = (float *)malloc(sizeof(float) * (size_t)t->numel);
        if (!h || ldm_to_host(ctx, t, h)) { free(h); rc = drv_fail_ctx(d, "ImageLogger"); break; }
        char dir[DRV_PATH], name[160], path[DRV_PATH];
        drv_sfmt(dir, sizeof dir, "%s/images/%s", d->logdir, split);
        drv_mkdirs(dir);
        drv_sfmt(name, sizeof name, "%s_gs-%06lld_e-%06lld_b-%06lld.png", im.key[k], (long long)d->global_step, (long long)d->epoch,
                 (long long)batch_idx);
        drv_join(path, sizeof path, dir, name);
        int v = t->ndim == 5;   /* volumes: each one's middle slice along T */
        if (v) ex_volume_mid_slice(h, (int)t->shape[0], (int)t->shape[1], (int)t->shape[2], (int)t->shape[3], (int)t->shape[4], h);
        rc = drv_save_grid(path, h, (int)t->shape[0], (int)t->shape[1], (int)t->shape[2 + v], (int)t->shape[3 + v], 4, il->c.clamp, il->c.rescale);
        free(h);
    }
    *ldm_ctx_rng(ctx) = keep;
    ldm_arena_rewind(ctx, mk);
    return rc;
}

/* ---- progress --------------------------------------------------------------------------------- */
static void drv_progress(drv *d, int force_line) {
    double t = drv_now();
    if (d->rate_t == 0) { d->rate_t = t; d->rate_steps = d->global_step; }
    else if (t - d->rate_t > 2.0 || force_line) {
        double r = (double)(d->global_step - d->rate_steps) / (t - d->rate_t);
        if (t - d->rate_t > 0.5) {
            d->rate = d->rate > 0 ? 0.7 * d->rate + 0.3 * r : r;
            d->rate_t = t;
            d->rate_steps = d->global_step;
        }
    }
    char eta[32], val[48] = "";
    int64_t left = d->total_steps > d->global_step ? d->total_steps - d->global_step : 0;
    drv_fmt_time(eta, sizeof eta, d->rate > 0 ? (double)left / d->rate : -1);
    if (d->last_val == d->last_val) drv_sfmt(val, sizeof val, " %s %.4f", d->mc.monitor, d->last_val);
    /* each optimizer's loss, then the model's progress value */
    char losses[256] = "";
    size_t u = 0;
    const char *pk = d->m->progress_key, *ps = pk ? strrchr(pk, '/') : NULL;
    for (int i = 0; i < d->m->n_optim && u < sizeof losses; i++)
        u += (size_t)drv_sfmt(losses + u, sizeof losses - u, "%s%s %.*f", d->tty ? " " : "  ", d->m->optim[i].name, i ? (d->tty ? 4 : 5) : (d->tty ? 1 : 2),
                              d->last_loss[i]);
    if (pk && u < sizeof losses)
        drv_sfmt(losses + u, sizeof losses - u, "%s%s %.*f", d->tty ? " " : "  ", ps ? ps + 1 : pk, d->tty ? 4 : 5, d->last_progress);
    if (d->tty) {
        int width = 24, fill = d->total_steps > 0 ? (int)((double)width * (double)d->global_step / (double)d->total_steps) : 0;
        char bar[32];
        for (int i = 0; i < width; i++) bar[i] = i < fill ? '#' : '.';
        bar[width] = 0;
        printf("\rEpoch %lld: %lld/%lld [%s] %.2f it/s ETA %s%s%s\033[K", (long long)d->epoch, (long long)d->global_step,
               (long long)d->total_steps, bar, d->rate, eta, losses, val);
        fflush(stdout);
    } else if (force_line) {
        printf("epoch %lld step %lld/%lld  %.2f it/s  ETA %s%s%s\n", (long long)d->epoch, (long long)d->global_step,
               (long long)d->total_steps, d->rate, eta, losses, val);
        fflush(stdout);
    }
}
static void drv_progress_clear(drv *d) {
    if (d->tty) { printf("\r\033[K"); fflush(stdout); }
}

/* ---- one training batch (Lightning 1.4 automatic optimization, every optimizer in turn) ------- */
static void drv_log_into(drv_metrics *m, double *row, const ex_log *log) {
    for (int i = 0; i < log->n; i++) {
        int c = drv_metrics_col(m, log->item[i].key);
        if (c >= 0) row[c] = log->item[i].value;
    }
}

static const char *drv_nonfinite(double v) { return v != v ? "NaN" : "Inf"; }
static int drv_nan_stop(drv *d, const char *what, const char *kind) {
    char last[DRV_PATH];
    drv_join(last, sizeof last, d->ckptdir, "last");
    drv_progress_clear(d);
    drv_error("%s is %s at global step %lld (epoch %lld, batch %lld): training stopped. The last good checkpoint, %s, "
              "is left as it was (hint: lower model.base_learning_rate, or check the data)",
              what, kind, (long long)d->global_step, (long long)d->epoch, (long long)d->batch_in_epoch,
              drv_is_dir(last) ? last : "(none written yet)");
    d->nan_stop = 1;
    return 1;
}

/* A non-finite value in a batch is a data error: named by field, item and dataset index. */
static int drv_check_batch(drv *d, const ldm_data_batch *b) {
    for (int f = 0; f < b->n_fields; f++) {
        const ldm_data_bfield *bf = &b->field[f];
        int64_t per = 1; /* elements per item: [B,C,H,W] or, for volumes, [B,C,T,H,W] */
        for (int k = 1; k < (bf->ndim == 5 ? 5 : 4); k++) per *= bf->shape[k];
        for (int64_t i = 0; i < bf->shape[0] * per; i++)
            if (!(bf->data[i] - bf->data[i] == 0.0f)) {
                int item = (int)(i / per);
                drv_error("training batch %lld of epoch %lld (global step %lld): field \"%s\" of item %d (dataset index %lld) holds %s "
                          "(hint: check that sample and the dataset's normalisation)", (long long)d->batch_in_epoch, (long long)d->epoch,
                          (long long)d->global_step, bf->name, item, b->index ? (long long)b->index[item] : -1LL,
                          bf->data[i] != bf->data[i] ? "NaN" : "Inf");
                return 1;
            }
    }
    return 0;
}

/* Before an optimizer step: every gradient of its group finite, else stop naming the first
   parameter that is not (a finite loss can still have an infinite gradient). */
static int drv_check_grads(drv *d, const ex_optim *o) {
    for (int j = 0; j <= o->n_also; j++) {
        const ldm_nn_optim *op = drv_optim_part(o, j);
        for (int i = 0; i < ldm_nn_optim_size(op); i++) {
            const ldm_nn_entry *e = ldm_nn_optim_entry(op, i);
            if (!e->t->grad) continue;
            double ss = ldm_device_sum_squares(d->ctx, e->t->device, e->t->grad, e->t->numel);
            if (!isfinite(ss)) {
                char what[400];
                drv_sfmt(what, sizeof what, "the gradient of %s (optimizer %s)", e->name, o->name);
                return drv_nan_stop(d, what, "not finite");
            }
        }
    }
    return 0;
}

static int drv_train_batch(drv *d, const ldm_data_batch *b, int do_step, ex_log *log, float *losses) {
    ldm_ctx *ctx = d->ctx;
    ex_model *m = d->m;
    float k = (float)d->accumulate;
    log->n = 0;
    if (drv_inject(d, "batch") && b->n_fields) b->field[0].data[0] = NAN; /* test hook (the loader's memory) */
    if (drv_check_batch(d, b)) return 1;
    for (int i = 0; i < m->n_optim; i++) {
        const ex_optim *o = &m->optim[i];
        char what[160];
        ldm_set_grad_enabled(ctx, 1);
        if (o->lr_lambda)
            for (int j = 0; j <= o->n_also; j++) ldm_nn_optim_set_lr(drv_optim_part(o, j), o->base_lr * o->lr_lambda(m->self, d->global_step));
        ldm_tensor *loss = m->training_step(m, ctx, b, d->global_step, i, log);
        if (!loss || ldm_to_host(ctx, loss, &losses[i])) return drv_fail_ctx(d, m->what);
        if (d->world > 1) { /* the logged loss is the mean over ranks; a non-finite one anywhere stops all */
            double v[2] = {isfinite(losses[i]) ? losses[i] : 0.0, isfinite(losses[i]) ? 0.0 : 1.0};
            if (ldm_dist_allreduce_f64(ctx, d->dist, v, 2, 0, "the loss")) return drv_fail_ctx(d, "data parallel");
            losses[i] = v[1] > 0 ? NAN : (float)(v[0] / d->world);
        }
        if (!isfinite(losses[i])) {
            drv_sfmt(what, sizeof what, "%s (%s)", o->name, o->loss_key);
            return drv_nan_stop(d, what, drv_nonfinite(losses[i]));
        }
        if (k != 1.0f) loss = ldm_div(ctx, loss, ldm_full(ctx, ldm_shape1(1), k)); /* Lightning: loss / accumulate_grad_batches */
        drv_sfmt(what, sizeof what, "training (%s backward)", o->name);
        ldm_dist_reducer *red = do_step ? d->red[i] : NULL; /* DDP: no reduction while accumulating */
        if (red) ldm_dist_reducer_begin(red);
        if (ldm_backward(ctx, loss)) return drv_fail_ctx(d, what);
        drv_sfmt(what, sizeof what, "all-reduce of the %s gradients at global step %lld", o->name, (long long)d->global_step);
        if (red && ldm_dist_reducer_finish(red, what)) return drv_fail_ctx(d, "data parallel");
        if (i == 0 && do_step && drv_inject(d, "grad")) {
            const ldm_nn_entry *e0 = ldm_nn_optim_entry(o->opt, 0);
            if (e0 && e0->t->grad) drv_poke_nan(ctx, e0->t->grad, e0->t->device);
        }
        if (do_step && drv_check_grads(d, o)) return 1; /* after the all-reduce: every rank agrees */
        if (do_step) {
            drv_sfmt(what, sizeof what, "training (%s optimizer)", o->name);
            for (int j = 0; j <= o->n_also; j++) {
                if (ldm_nn_optim_step(ctx, drv_optim_part(o, j))) return drv_fail_ctx(d, what);
                ldm_nn_optim_zero_grad(ctx, drv_optim_part(o, j));
            }

        }
        ldm_step_reset(ctx);
    }
    ldm_set_grad_enabled(ctx, 1);
    if (do_step && m->n_optim && drv_inject(d, "weight")) { /* after every update of the batch */
        const ldm_nn_entry *e0 = ldm_nn_optim_entry(m->optim[0].opt, 0);
        if (e0) drv_poke_nan(ctx, e0->t->data, e0->t->device);
    }
    if (d->world > 1 && log->n) { /* logged values: the mean over ranks (Lightning's sync_dist) */
        double v[EX_MAX_LOG];
        for (int j = 0; j < log->n; j++) v[j] = log->item[j].value;
        if (ldm_dist_allreduce_f64(ctx, d->dist, v, log->n, 0, "the logged values")) return drv_fail_ctx(d, "data parallel");
        for (int j = 0; j < log->n; j++) log->item[j].value = v[j] / d->world;
    }
    if (m->on_train_batch_end && m->on_train_batch_end(m, ctx, d->global_step, do_step)) return drv_fail_ctx(d, m->what);
    return 0;
}

/* ---- validation ------------------------------------------------------------------------------- */
typedef struct drv_valres { double v[DRV_MAX_COLS]; double n; int have; } drv_valres;

/* Runs validation_step over nb batches; res->v holds every logged value (metrics.csv column
   order) averaged over the samples, NaN for columns nothing was logged into. */
static int drv_validate(drv *d, int64_t nb, int sanity, drv_valres *res) {
    ldm_ctx *ctx = d->ctx;
    ex_model *m = d->m;
    char logged[DRV_MAX_COLS];
    memset(res, 0, sizeof *res);
    memset(logged, 0, sizeof logged);
    if (ldm_data_loader_seek(ctx, d->ld_val, drv_state(0, 0) /* same batches every time */)) return drv_fail_ctx(d, "validation");
    int prev = ldm_set_grad_enabled(ctx, 0);
    m->set_training(m, 0);
    int rc = 0;
    for (int64_t i = 0; i < nb && !rc; i++) {
        const ldm_data_batch *b;
        ldm_result r = ldm_data_loader_next(ctx, d->ld_val, &b);
        if (r == LDM_DATA_END) break;
        if (r) { rc = drv_fail_ctx(d, "validation data"); break; }
        ex_log log;
        log.n = 0;
        if (m->validation_step(m, ctx, b, d->global_step, &log)) { rc = drv_fail_ctx(d, m->what ? m->what : "validation"); break; }
        /* Lightning 1.4 averages logged values over the epoch weighted by batch size */
        for (int j = 0; j < log.n; j++) {
            int c = drv_metrics_col(&d->met, log.item[j].key);
            if (c >= 0) { res->v[c] += log.item[j].value * b->size; logged[c] = 1; }
        }
        res->n += b->size;
        ldm_step_reset(ctx);
        if (!sanity && d->global_step > 0 && d->have_imlog) rc = drv_log_images(d, b, "val", i);
    }
    m->set_training(m, 1);
    ldm_set_grad_enabled(ctx, prev);
    ldm_step_reset(ctx);
    if (!rc && d->world > 1) { /* each rank validated its shard: sums, counts and columns over all */
        double v[2 * DRV_MAX_COLS + 1];
        for (int c = 0; c < d->met.ncol; c++) { v[c] = res->v[c]; v[DRV_MAX_COLS + c] = logged[c]; }
        v[2 * DRV_MAX_COLS] = res->n;
        if (ldm_dist_allreduce_f64(ctx, d->dist, v, 2 * DRV_MAX_COLS + 1, 0, "validation")) return drv_fail_ctx(d, "data parallel");
        for (int c = 0; c < d->met.ncol; c++) { res->v[c] = v[c]; logged[c] = v[DRV_MAX_COLS + c] > 0; }
        res->n = v[2 * DRV_MAX_COLS];
    }
    if (rc || res->n == 0) return rc;
    for (int c = 0; c < d->met.ncol; c++) res->v[c] = logged[c] ? res->v[c] / res->n : NAN;
    res->have = 1;
    return 0;
}

/* ---- test --------------------------------------------------------------------------------------- */
/* The model's test_step over the test split (else validation): test_metrics.csv (a row per
   image), test_summary.txt (the means), its images one PNG per image and key. */
static int drv_test(drv *d) {
    ldm_ctx *ctx = d->ctx;
    ex_model *m = d->m;
    const int nk = m->n_test_keys;
    ldm_data_split split = LDM_DATA_TEST;
    if (!d->dm->dataset[LDM_DATA_TEST]) {
        if (!d->dm->dataset[LDM_DATA_VALIDATION]) { drv_note("test: no data.params.test or validation dataset: nothing to test"); return 0; }
        drv_note("test: no data.params.test; testing on the validation dataset");
        split = LDM_DATA_VALIDATION;
    }
    ldm_data_loader *ld;
    if (d->to.batch_size > 0) d->dm->batch_size = d->to.batch_size;   /* training is over */
    if (ldm_data_module_loader(ctx, d->dm, split, d->data_seed, &ld)) return drv_fail_ctx(d, "test data");
    int64_t nb = drv_limit_apply(&d->lim_test, ldm_data_loader_batches(ld));
    /* test_only_params.cycle_test_data: an int limit counts the batches generated, cycling a shorter split */
    int cycle = d->to.cycle_test_data && !d->lim_test.is_frac && d->lim_test.n > nb && nb > 0;
    if (cycle) nb = d->lim_test.n;
    if (d->to.sampler && d->to.sampler->type != LDM_CONFIG_NULL && d->m->set_log_images_kwargs(d->m, d->cfg, d->to.sampler)) {
        ldm_data_loader_destroy(ld);
        return drv_fail_cfg(d);
    }
    char dir[DRV_PATH], path[DRV_PATH];
    if (d->to.output_dir[0]) drv_sfmt(dir, sizeof dir, "%s", d->to.output_dir);
    else drv_sfmt(dir, sizeof dir, "%s/images/test", d->logdir);
    if (drv_mkdirs(dir)) { ldm_data_loader_destroy(ld); drv_error("%s: cannot create", dir); return 1; }
    drv_join(path, sizeof path, d->logdir, "test_metrics.csv");
    FILE *csv = fopen(path, "w");
    if (!csv) { ldm_data_loader_destroy(ld); drv_error("%s: cannot write", path); return 1; }
    fprintf(csv, "index");
    for (int k = 0; k < nk; k++) fprintf(csv, ",%s", m->test_keys[k]);
    fprintf(csv, "\n");
    int prev = ldm_set_grad_enabled(ctx, 0);
    m->set_training(m, 0);
    double *sum = (double *)calloc((size_t)nk + 1, sizeof(double));
    int64_t n = 0;
    int rc = sum ? 0 : (drv_error("out of memory"), 1);
    printf("Testing on %lld batch%s of the %s split\n", (long long)nb, nb == 1 ? "" : "es", ldm_data_split_name(split));
    for (int64_t i = 0; i < nb && !rc; i++) {
        const ldm_data_batch *b;
        ldm_result r = ldm_data_loader_next(ctx, ld, &b);
        if (r == LDM_DATA_END && cycle) r = ldm_data_loader_next(ctx, ld, &b);   /* the next pass */
        if (r == LDM_DATA_END) break;
        if (r) { rc = drv_fail_ctx(d, "test data"); break; }
        int B = b->size;
        double *v = (double *)malloc(sizeof(double) * ((size_t)B * nk + 1));
        ex_images im;
        memset(&im, 0, sizeof im);
        if (!v) { drv_error("out of memory"); rc = 1; break; }
        if (m->test_step(m, ctx, b, v, &im)) { free(v); rc = drv_fail_ctx(d, m->what ? m->what : "test"); break; }
        float *h[EX_MAX_IMAGES];
        memset(h, 0, sizeof h);
        for (int k = 0; k < im.n && !rc; k++) {
            h[k] = (float *)malloc(sizeof(float) * (size_t)im.t[k]->numel);
            if (!h[k] || ldm_to_host(ctx, im.t[k], h[k])) rc = drv_fail_ctx(d, "test");
        }
        for (int j = 0; j < B && !rc; j++) {
            long long idx = b->index && !cycle ? (long long)b->index[j] : (long long)n;
            fprintf(csv, "%lld", idx);
            for (int k = 0; k < nk; k++) {
                double x = v[(size_t)j * nk + k];
                if (x == x) fprintf(csv, ",%.9g", x);
                else fputc(',', csv); /* not measured (e.g. no LPIPS weights) */
                sum[k] += x;
            }
            fputc('\n', csv);
            for (int k = 0; k < im.n && !rc; k++) {
                const ldm_tensor *t = im.t[k];
                int C = (int)t->shape[1], H = (int)t->shape[2], W = (int)t->shape[3];
                int64_t per = t->numel / t->shape[0];
                char name[96], err[256];
                const float *x = h[k] + j * per;
                float *views = NULL;
                if (t->ndim == 5) {   /* a volume: the .nii.gz, and a PNG of its three middle slices */
                    int T = H;
                    H = (int)t->shape[3]; W = (int)t->shape[4];
                    drv_sfmt(name, sizeof name, "%06lld_%s.nii.gz", idx, im.key[k]);
                    drv_join(path, sizeof path, dir, name);
                    if (ex_volume_save_nifti(ctx, path, x, C, T, H, W)) { rc = drv_fail_ctx(d, "test (NIfTI output)"); break; }
                    int hv, wv;
                    ex_volume_views_size(T, H, W, &hv, &wv);
                    views = (float *)malloc(sizeof(float) * (size_t)C * hv * wv);
                    if (!views) { drv_error("out of memory"); rc = 1; break; }
                    ex_volume_mid_views(x, C, T, H, W, views);
                    x = views; H = hv; W = wv;
                }
                drv_sfmt(name, sizeof name, "%06lld_%s.png", idx, im.key[k]);
                drv_join(path, sizeof path, dir, name);
                if (ex_image_save_png(path, x, C, H, W, err, sizeof err)) { drv_error("%s", err); rc = 1; }
                free(views);
            }
            n++;
        }
        for (int k = 0; k < im.n; k++) free(h[k]);
        free(v);
        ldm_step_reset(ctx);
    }
    m->set_training(m, 1);
    ldm_set_grad_enabled(ctx, prev);
    fclose(csv);
    ldm_data_loader_destroy(ld);
    if (rc || !n) {
        free(sum);
        if (!rc) drv_note("test: the test split gave no images");
        return rc;
    }
    char summary[1024];
    size_t u = (size_t)drv_sfmt(summary, sizeof summary, "test: %lld images (%s split)", (long long)n, ldm_data_split_name(split));
    for (int k = 0; k < nk && u < sizeof summary; k++)
        u += (size_t)(sum[k] == sum[k] ? drv_sfmt(summary + u, sizeof summary - u, "  %s %.6g", m->test_keys[k], sum[k] / n)
                                       : drv_sfmt(summary + u, sizeof summary - u, "  %s n/a", m->test_keys[k]));
    drv_note("%s", summary);
    drv_join(path, sizeof path, d->logdir, "test_summary.txt");
    FILE *f = fopen(path, "w");
    if (!f) { free(sum); drv_error("%s: cannot write", path); return 1; }
    fprintf(f, "%simages = %lld\nsplit = %s\nglobal_step = %lld\n", m->test_note ? m->test_note : "", (long long)n,
            ldm_data_split_name(split), (long long)d->global_step);
    for (int k = 0; k < nk; k++) {
        if (sum[k] == sum[k]) fprintf(f, "%s = %.9g\n", m->test_keys[k], sum[k] / n);
        else fprintf(f, "%s = n/a\n", m->test_keys[k]);
    }
    fclose(f);
    free(sum);
    drv_note("test: per-image values in %s/test_metrics.csv, images in %s", d->logdir, dir);
    return 0;
}

/* A test-only run of a config with model.test_only_params: the weights it names (ckpt_path:
   a file, a checkpoint directory or a logdir), else checkpoints/last of the newest run of the
   same name in --logdir (so the test command is the train command without -t). p: the
   model.safetensors, or "" when the run tests no such weights. */
static int drv_find_test_weights(drv *d, char *p) {
    const ldm_config_node *tn = ldm_config_find(ldm_config_find(ldm_config_root(d->cfg), "model"), "test_only_params");
    p[0] = 0;
    if (d->o->train || d->resuming || !tn || tn->type == LDM_CONFIG_NULL) return 0;
    char q[DRV_PATH];
    const char *c = d->to.ckpt_path;
    if (c[0]) {
        if (drv_is_file(c)) drv_sfmt(p, DRV_PATH, "%s", c);
        else if (drv_join(q, sizeof q, c, "model.safetensors"), drv_is_file(q)) drv_sfmt(p, DRV_PATH, "%s", q);
        else if (drv_join(q, sizeof q, c, "checkpoints/last/model.safetensors"), drv_is_file(q)) drv_sfmt(p, DRV_PATH, "%s", q);
        else {
            drv_error("model.test_only_params.ckpt_path = %s: no model.safetensors there (hint: a run's logdir, its "
                      "checkpoints/last, or the file itself)", c);
            return 1;
        }
    } else {
        const char *suffix = d->nowname + strlen(d->now);   /* "_<name><postfix>" */
        char best[DRV_PATH] = "";
        DIR *dir = opendir(d->o->logdir);
        struct dirent *e;
        size_t ls = strlen(suffix);
        while (dir && (e = readdir(dir)) != NULL) {
            size_t l = strlen(e->d_name);
            if (l <= ls || strcmp(e->d_name + l - ls, suffix) || !strcmp(e->d_name, d->nowname)) continue;
            drv_sfmt(q, sizeof q, "%s/%s/checkpoints/last/model.safetensors", d->o->logdir, e->d_name);
            if (drv_is_file(q) && strcmp(e->d_name, best) > 0) { drv_sfmt(best, sizeof best, "%s", e->d_name); drv_sfmt(p, DRV_PATH, "%s", q); }
        }
        if (dir) closedir(dir);
        if (!p[0]) {
            drv_error("a test-only run: no %s/*%s/checkpoints/last to test (hint: train first with -t --name, or set "
                      "model.test_only_params.ckpt_path)", d->o->logdir, suffix);
            return 1;
        }
    }
    return 0;
}

/* ---- the training loop ------------------------------------------------------------------------ */
typedef struct drv_pending {
    int last, signal_stop, topk;
    double score;
    int64_t topk_epoch;
    int trainstep;
} drv_pending;

static int drv_better(const drv *d, double a, double b) { return d->mode_max ? a > b : a < b; }

/* A finite loss can still leave non-finite weights behind (an overflowing update); such a
   state must not replace a good checkpoint. */
static int drv_params_finite(drv *d, char *bad, size_t nbad) {
    for (int k = 0; k < d->m->n_params; k++) {
        const ldm_nn_params *P = d->m->params[k].P;
        for (int i = 0; i < ldm_nn_count(P); i++) {
            const ldm_nn_entry *e = ldm_nn_entry_at(P, i);
            if (e->kind == LDM_NN_BUFFER_TRANSIENT || !e->t->numel) continue;
            double ss = ldm_device_sum_squares(d->ctx, e->t->device, e->t->data, e->t->numel);
            if (!isfinite(ss)) { drv_sfmt(bad, nbad, "%s", e->name); return 0; }
        }
    }
    return 1;
}

/* Writes the checkpoints a batch asked for, after its global step was counted: one write,
   installed as every name that wants it. A top-k entry pushed out is removed afterwards. */
static int drv_save_pending(drv *d, const drv_pending *pd) {
    const char *dests[2];
    char topname[96], dropped[96] = "";
    int n = 0;
    if (pd->topk && d->mc.save_top_k != 0) {
        int k = d->mc.save_top_k, worst = -1;
        for (int i = 0; i < d->n_topk; i++)
            if (worst < 0 || drv_better(d, d->topk[worst].score, d->topk[i].score)) worst = i;
        int full = k > 0 && d->n_topk >= k;
        if (!full || drv_better(d, pd->score, d->topk[worst].score)) { /* strictly better, as Lightning */
            drv_topk nt;
            drv_sfmt(topname, sizeof topname, "epoch=%06lld-step=%09lld", (long long)pd->topk_epoch, (long long)d->global_step);
            drv_sfmt(nt.name, sizeof nt.name, "%s", topname);
            nt.score = pd->score;
            nt.step = d->global_step;
            if (full) {
                drv_sfmt(dropped, sizeof dropped, "%s", d->topk[worst].name);
                d->topk[worst] = nt;
            } else if (d->n_topk < DRV_MAX_TOPK) d->topk[d->n_topk++] = nt; /* save_top_k -1 keeps all, tracks 32 */
            dests[n++] = topname;
            if (d->mc.verbose) {
                double best = pd->score;
                for (int i = 0; i < d->n_topk; i++) if (drv_better(d, d->topk[i].score, best)) best = d->topk[i].score;
                drv_progress_clear(d);
                printf("Epoch %lld, global step %lld: %s reached %.5f (best %.5f), saving model to \"%s/%s\" as top %d\n",
                       (long long)pd->topk_epoch, (long long)d->global_step, d->mc.monitor, pd->score, best, d->ckptdir, topname,
                       k < 0 ? d->n_topk : k);
            }
        } else if (d->mc.verbose) {
            drv_progress_clear(d);
            printf("Epoch %lld, global step %lld: %s was not in top %d\n", (long long)pd->topk_epoch, (long long)d->global_step,
                   d->mc.monitor, k);
        }
    }
    if (pd->last || pd->signal_stop) dests[n++] = "last";
    if ((n || pd->trainstep) && d->accumulated && d->world > 1) {
        /* mid-accumulation under data parallelism: every rank keeps the mean of the ranks'
           partial sums (what rank 0 saves), so a run resumed from it and this one continue
           alike: mean(partial) + own rest, averaged at the step, is the mean of the whole */
        for (int k = 0; k < d->m->n_params; k++) {
            int64_t ng;
            float *g = ldm_nn_block(d->m->params[k].P, LDM_NN_BLOCK_GRADS, &ng);
            ldm_device dev = ldm_nn_params_device(d->m->params[k].P);
            if (!g || !ng) continue;
            if (ldm_dist_allreduce(d->ctx, d->dist, g, ng, dev, "the accumulated gradients")) return drv_fail_ctx(d, "data parallel");
            ldm_device_scale(d->ctx, dev, g, ng, 1.0f / (float)d->world);
        }
    }
    char badw[256];
    if ((n || pd->trainstep) && !drv_params_finite(d, badw, sizeof badw)) {
        char what[400];
        drv_sfmt(what, sizeof what, "the weight %s after the last optimizer step", badw);
        return drv_nan_stop(d, what, "not finite");
    }
    if (n && drv_checkpoint(d, n, dests, 0)) return 1;
    if (n && !strcmp(dests[n - 1], "last")) d->last_written = d->batches_this_run;
    if (dropped[0] && d->rank == 0) {
        char p[DRV_PATH];
        drv_join(p, sizeof p, d->ckptdir, dropped);
        drv_rm_rf(p);
    }
    if (pd->trainstep) {
        char stepname[160];
        drv_sfmt(stepname, sizeof stepname, "trainstep_checkpoints/epoch=%06lld-step=%09lld", (long long)d->epoch, (long long)d->global_step);
        const char *one[1] = {stepname};
        if (drv_checkpoint(d, 1, one, d->trainstep_weights_only)) return 1;
        if (d->trainstep_verbose) { drv_progress_clear(d); printf("Saved %s/%s\n", d->ckptdir, stepname); }
    }
    return 0;
}

static int drv_fit(drv *d) {
    ldm_ctx *ctx = d->ctx;
    int64_t nb_loader = ldm_data_loader_batches(d->ld_train);
    int rc = 0;
    d->last_val = NAN;
    d->t_start = drv_now();

    /* Lightning's sanity check: a few validation batches before training; nothing is logged
       and the RNG state is put back, so it does not change the run */
    int64_t ns = d->tc.num_sanity_val_steps < 0 ? d->n_val : (d->tc.num_sanity_val_steps < d->n_val ? d->tc.num_sanity_val_steps : d->n_val);
    if (d->ld_val && ns > 0) {
        ldm_rng keep = *ldm_ctx_rng(ctx);
        drv_valres vr;
        if (drv_validate(d, ns, 1, &vr)) return 1;
        *ldm_ctx_rng(ctx) = keep;
    }
    if (ldm_data_loader_seek(ctx, d->ld_train, drv_state(d->epoch, d->batch_in_epoch))) return drv_fail_ctx(d, "train data");
    d->m->set_training(d->m, 1); /* Lightning's model.train() before the first batch: dropout on from step 0, resumed or not */
    const char *sig_env = getenv("LDM_TEST_SIGNAL_AT_BATCH");
    int sig_num = SIGTERM;
    d->signal_at = sig_env ? atoll(sig_env) : -1;
    if (sig_env && strchr(sig_env, ':')) {
        const char *nm = strchr(sig_env, ':') + 1;
        sig_num = !strcmp(nm, "INT") ? SIGINT : !strcmp(nm, "USR1") ? SIGUSR1 : SIGTERM;
    }

    for (;;) {
        if (d->max_steps >= 0 && d->global_step >= d->max_steps) break;
        if (d->max_epochs >= 0 && d->epoch >= d->max_epochs) break;
        const ldm_data_batch *b;
        ldm_result r = ldm_data_loader_next(ctx, d->ld_train, &b);
        if (r == LDM_DATA_END) { rc = 1; drv_error("train data: the epoch ended early"); break; }
        if (r) { rc = drv_fail_ctx(d, "train data"); break; }
        int64_t bi = d->batch_in_epoch;
        int is_last = bi + 1 == d->n_train;
        int do_step = (d->accumulated + 1) % d->accumulate == 0 || is_last;
        ex_log log;
        float losses[EX_MAX_OPTIM];
        if (drv_train_batch(d, b, do_step, &log, losses)) { rc = 1; break; }
        int B = b->size;
        for (int i = 0; i < d->m->n_optim; i++) {
            d->last_loss[i] = losses[i];
            d->ep_loss_sum[i] += (double)losses[i] * B;
        }
        {
            const double *pv = d->m->progress_key ? ex_log_get(&log, d->m->progress_key) : NULL;
            d->last_progress = pv ? (float)*pv : NAN;
        }
        d->ep_n += B;
        drv_pending pd;
        memset(&pd, 0, sizeof pd);
        int log_line = 0;

        /* on_train_batch_end: ImageLogger (global_step not yet counted for this batch) */
        if (d->have_imlog && (d->global_step > 0 || d->imlog.c.log_first_step) && drv_log_images(d, b, "train", bi)) { rc = 1; break; }
        if (do_step && (d->global_step + 1) % d->tc.log_every_n_steps == 0) {
            double *row = drv_metrics_new_row(&d->met);
            if (!row) { rc = 1; drv_error("out of memory"); break; }
            row[0] = (double)d->global_step; row[1] = (double)d->epoch;
            row[2] = d->m->n_optim ? ldm_nn_optim_lr(d->m->optim[0].opt) : d->lr;
            for (int i = 0; i < d->m->n_optim; i++) row[3 + i] = losses[i];
            drv_log_into(&d->met, row, &log);
            if (drv_metrics_flush_row(&d->met)) { rc = 1; break; }
            log_line = 1;
        }

        /* validation (Lightning: in on_advance_end, before the global step is counted) */
        int val_epoch = (d->epoch + 1) % d->tc.check_val_every_n_epoch == 0;
        if (d->ld_val && d->n_val > 0 && val_epoch && ((bi + 1) % d->val_check_batch == 0)) {
            drv_valres vr;
            if (drv_validate(d, d->n_val, 0, &vr)) { rc = 1; break; }
            if (vr.have) {
                double *row = drv_metrics_new_row(&d->met);
                if (!row) { rc = 1; drv_error("out of memory"); break; }
                for (int c = 2; c < d->met.ncol; c++) if (!strncmp(d->met.col[c], "val/", 4)) row[c] = vr.v[c];
                row[0] = (double)d->global_step; row[1] = (double)d->epoch;
                if (drv_metrics_flush_row(&d->met)) { rc = 1; break; }
                int mc = drv_metrics_col(&d->met, d->mc.monitor);
                double score = mc >= 0 ? vr.v[mc] : NAN;
                /* the model's summary values; the first must be finite */
                int c0 = d->m->n_summary_keys ? drv_metrics_col(&d->met, d->m->summary_keys[0]) : -1;
                if (c0 >= 0 && !isfinite(vr.v[c0])) { drv_nan_stop(d, d->m->summary_keys[0], drv_nonfinite(vr.v[c0])); rc = 1; break; }
                d->last_val = (float)score;
                drv_progress_clear(d);
                printf("Validation (epoch %lld, step %lld):", (long long)d->epoch, (long long)d->global_step + do_step);
                for (int k = 0; k < d->m->n_summary_keys; k++) {
                    int c = drv_metrics_col(&d->met, d->m->summary_keys[k]);
                    if (c >= 0 && vr.v[c] == vr.v[c]) printf("  %s %.5g", d->m->summary_keys[k], vr.v[c]);
                    else printf("  %s n/a", d->m->summary_keys[k]);
                }
                printf("\n");
                fflush(stdout);
                char cp[DRV_PATH];
                drv_join(cp, sizeof cp, d->logdir, "loss_curve.png");
                if (d->rank == 0 && d->m->curve_key && drv_plot_curve(&d->met, ctx, d->m->curve_key, cp)) { rc = 1; break; }
                if (mc >= 0 && score == score) { pd.topk = 1; pd.score = score; pd.topk_epoch = d->epoch; }
                else if (mc < 0 && !d->monitor_note) {
                    drv_note("Note: monitor %s is not a logged metric; no top-k checkpoints", d->mc.monitor);
                    d->monitor_note = 1;
                }
                pd.last = d->mc.save_last;
            }
        }

        /* the batch is done: count it */
        d->batches_this_run++;
        d->batch_in_epoch++;
        if (do_step) { d->global_step++; d->accumulated = 0; }
        else d->accumulated++;
        drv_progress(d, log_line);
        if (is_last) {
            double *row = drv_metrics_new_row(&d->met);
            if (!row) { rc = 1; drv_error("out of memory"); break; }
            row[0] = (double)(d->global_step - 1); row[1] = (double)d->epoch;
            for (int i = 0; i < d->m->n_optim; i++) {
                char k[96];
                drv_sfmt(k, sizeof k, "%s_epoch", d->m->optim[i].name);
                row[drv_metrics_col(&d->met, k)] = d->ep_loss_sum[i] / d->ep_n;
                d->ep_loss_sum[i] = 0;
            }
            if (drv_metrics_flush_row(&d->met)) { rc = 1; break; }
            d->ep_n = 0;
            d->epoch++;
            d->batch_in_epoch = 0;
            if (d->n_train == nb_loader) { /* the loader says END once per epoch */
                const ldm_data_batch *e;
                if (ldm_data_loader_next(ctx, d->ld_train, &e) != LDM_DATA_END) { rc = 1; drv_error("train data: epoch longer than expected"); break; }
            } else if (ldm_data_loader_seek(ctx, d->ld_train, drv_state(d->epoch, 0))) { rc = drv_fail_ctx(d, "train data"); break; }
        }
        if (do_step && d->mc.every_n_train_steps > 0 && d->global_step % d->mc.every_n_train_steps == 0) pd.last = 1;
        if (do_step && d->trainstep_every > 0 && d->global_step % d->trainstep_every == 0) pd.trainstep = 1;
        if (d->signal_at >= 0 && d->batches_this_run == d->signal_at) raise(sig_num);
        drv_fault_hook(d);
        if (d->world > 1) { /* every rank stops (or saves) at the same batch, whichever got the signal */
            double f[2] = {(double)drv_sig_stop, (double)drv_sig_save};
            if (ldm_dist_allreduce_f64(ctx, d->dist, f, 2, 1, "the stop flags")) { rc = drv_fail_ctx(d, "data parallel"); break; }
            if (f[0] > 0 && !drv_sig_stop) drv_sig_stop = (int)f[0];
            drv_sig_save = f[1] > 0;
        }
        if (drv_sig_save) { drv_sig_save = 0; pd.last = 1; drv_progress_clear(d); printf("Summoning checkpoint (SIGUSR1).\n"); }
        if (drv_sig_stop) { pd.signal_stop = 1; drv_progress_clear(d); printf("Summoning checkpoint (%s).\n", drv_sig_stop == SIGINT ? "SIGINT" : "SIGTERM"); }
        if (drv_save_pending(d, &pd)) { rc = 1; break; }
        if (pd.signal_stop) break;
    }
    drv_progress_clear(d);
    if (rc) return rc;
    if (drv_sig_stop) {
        printf("Interrupted at global step %lld; checkpoints/last holds the state (resume with -r %s).\n", (long long)d->global_step, d->logdir);
        return 0;
    }
    /* training is over: the final state goes to checkpoints/last (so that -r and the test see it) */
    drv_pending pd;
    memset(&pd, 0, sizeof pd);
    pd.last = d->last_written != d->batches_this_run; /* unless that state is already there */
    if (drv_save_pending(d, &pd)) return 1;
    double el = drv_now() - d->t_start;
    char t[32];
    drv_fmt_time(t, sizeof t, el);
    printf("Training done: global step %lld, epoch %lld, %s. Checkpoints in %s\n", (long long)d->global_step, (long long)d->epoch, t, d->ckptdir);
    for (int i = 0; i < d->m->n_optim && d->world > 1; i++) {
        ldm_dist_stats st = ldm_dist_reducer_stats(d->red[i]);
        if (!st.steps) continue;
        printf("Data parallel (%s): %lld all-reduced steps of %.2f MB in %lld buckets, %.0f%% of the buckets started during "
               "the backward pass; %.3f s spent waiting for them after it (%.1f ms per step)\n", d->m->optim[i].name, (long long)st.steps,
               (double)st.bytes / (double)st.steps / 1048576.0, (long long)(st.buckets / st.steps),
               st.buckets ? 100.0 * (double)st.buckets_early / (double)st.buckets : 0.0, st.wait_s, 1e3 * st.wait_s / (double)st.steps);
    }
    if (d->met.rows) {
        char cp[DRV_PATH];
        drv_join(cp, sizeof cp, d->logdir, "loss_curve.png");
        if (d->rank == 0 && d->m->curve_key && drv_plot_curve(&d->met, d->ctx, d->m->curve_key, cp)) return 1;
    }
    return 0;
}

/* ---- help ---------------------------------------------------------------------------------------- */
static void drv_help(void) {
    printf("ldm - train and test a CompVis model (AutoencoderKL) from a config (main.py semantics)\n\n"
           "usage: ldm --base CFG [CFG ...] [-t] [-n NAME | -r LOGDIR|CHECKPOINT] [-s SEED] [-l LOGDIR] [-f POSTFIX]\n"
           "           [--no-test] [--scale_lr BOOL] [--gpus IDS] [--<trainer key> VALUE] [key=value ...]\n\n"
           "  -t trains then tests; without -t only the test runs (weights from model.params.ckpt_path or -r).\n"
           "  -r LOGDIR resumes from LOGDIR/checkpoints/last with the configs saved in LOGDIR/configs.\n"
           "  key=value overrides any config key (model.params.lossconfig.params.disc_start=1000).\n"
           "  Environment: LDM_THREADS (threads).\n\n"
           "config keys (name, kind, default, meaning):\n\n[top level]\n");
    ldm_config_schema_print(stdout, drv_root_cfg_schema());
    printf("\n[model]\n");
    ldm_config_schema_print(stdout, drv_model_cfg_schema());
    printf("\n[model.test_only_params]\n");
    ldm_config_schema_print(stdout, drv_testonly_cfg_schema());
    for (size_t i = 0; i < sizeof drv_models / sizeof drv_models[0]; i++) drv_models[i]->help(stdout);
    printf("\n[data.params]  (target main.DataModuleFromConfig; datasets: see ldm_data.h)\n");
    ldm_config_schema_print(stdout, ldm_data_module_params_schema());
    printf("\n[lightning]\n");
    ldm_config_schema_print(stdout, drv_lightning_cfg_schema());
    printf("\n[lightning.trainer]\n");
    ldm_config_schema_print(stdout, drv_trainer_cfg_schema());
    printf("\n[lightning.modelcheckpoint.params]\n");
    ldm_config_schema_print(stdout, drv_mckpt_cfg_schema());
    printf("\n[lightning.callbacks.<name>.params]  (target main.ImageLogger)\n");
    ldm_config_schema_print(stdout, drv_imlog_cfg_schema());
    printf("\n[lightning.callbacks.<name>.params]  (target pytorch_lightning.callbacks.ModelCheckpoint: trainstep checkpoints)\n");
    ldm_config_schema_print(stdout, drv_stepckpt_cfg_schema());
    printf("\n(also accepted: main.LearningRateMonitor, main.CUDACallback)\n");
}

/* ---- main ---------------------------------------------------------------------------------------- */
/* Sums host values over the data-parallel ranks (a model's statistics, e.g. scale_by_std). */
static ldm_result drv_reduce(void *user, double *v, int n) {
    drv *d = (drv *)user;
    return ldm_dist_allreduce_f64(d->ctx, d->dist, v, n, 0, "a model statistic");
}

static int drv_run(drv *d) {
    drv_opts *o = d->o;
    drv_root_cfg root;
    drv_model_cfg mcfg;
    if (drv_setup_paths(d) || drv_load_config(d) || drv_registries(d) || drv_read_config(d, &root, &mcfg)) return 1;

    ldm_settings s;
    memset(&s, 0, sizeof s);
    s.seed = o->seed; /* seed_everything: the same on every rank */
    if (ldm_ctx_create(&d->ctx, &s)) { drv_error("context: %s", d->ctx ? ldm_ctx_error(d->ctx) : "out of memory"); return 1; }
    ldm_ctx *ctx = d->ctx;

    /* data parallel: one process per rank under mpirun (world 1 otherwise) */
    {
        const char *to = getenv("LDM_DIST_TIMEOUT");
        if (ldm_dist_create(ctx, &d->dist, NULL, NULL, to ? atof(to) : 0)) return drv_fail_ctx(d, "data parallel");
        d->rank = ldm_dist_rank(d->dist);
        d->world = ldm_dist_world(d->dist);
        if (d->world > 1) {
            ldm_ctx_set_shard(ctx, d->rank, d->world);
            if (d->rank) { /* as Lightning: rank 0 prints and writes; errors still reach stderr */
                fflush(stdout);
                if (!freopen("/dev/null", "w", stdout)) drv_note("rank %d: cannot silence stdout", d->rank);
            }
            if (ldm_dist_broadcast(ctx, d->dist, d->now, sizeof d->now, LDM_CPU, "the logdir name")) return drv_fail_ctx(d, "data parallel");
            if (!d->resuming && drv_setup_paths(d)) return 1;
        }
    }
    if (!d->resuming && d->rank == 0 && drv_exists(d->logdir)) {
        drv_error("logdir %s exists already (hint: another --name, or wait a second)", d->logdir);
        return 1;
    }
#ifdef LDM_CUDA
    if (d->ngpu) {
        /* every tensor the run creates from here on lives on the GPU */
        int avail = ldm_cuda_available();
        if (!avail) { drv_error("--gpus: no CUDA device is visible (hint: check nvidia-smi, or drop --gpus)"); return 1; }
        if (d->ngpu < 0) d->ngpu = avail;
        if (d->ngpu > 1 && d->world == 1) {
            drv_error("--gpus: %d GPUs: one process per GPU (hint: mpirun -np %d build/ldm ... with an LDM_MPI LDM_NCCL build, or "
                      "--gpus 0, for one)", d->ngpu, d->ngpu);
            return 1;
        }
        if (d->world > 1) { /* this process's GPU: its rank on this node picks one of the list */
            const char *lr = getenv("OMPI_COMM_WORLD_LOCAL_RANK") ? getenv("OMPI_COMM_WORLD_LOCAL_RANK") : getenv("MPI_LOCALRANKID");
            int local = lr ? atoi(lr) : d->rank, n = d->ngpu < 64 ? d->ngpu : 64;
            d->gpu_id = d->gpu_ids[local % n];
        }
        if (ldm_cuda_init(ctx, d->gpu_id)) return drv_fail_ctx(d, "--gpus");
        printf("Running on GPU %d (%s)\n", d->gpu_id, ldm_cuda_device_name(ctx));
#ifdef LDM_NCCL
        if (d->world > 1 && ldm_dist_use_nccl(ctx, d->dist, LDM_GPU)) return drv_fail_ctx(d, "NCCL");
#else
        if (d->world > 1) printf("Note: gradients go through host memory and MPI (build with LDM_NCCL for NCCL)\n");
#endif
    }
#endif
    if (d->world > 1) {
        printf("Data parallel: %d processes (%s), rank 0 writes the logdir\n", d->world, ldm_dist_engine(d->dist));

        if (d->ngpu > 0 && d->world != d->ngpu * d->tc.num_nodes)
            drv_note("Note: %d processes, but lightning.trainer asks for gpus %d x num_nodes %d", d->world, d->ngpu, d->tc.num_nodes);
    }
    /* the model's networks, with its initial weights (and any it takes from the checkpoint
       this run resumes from) */
    char resume_model[DRV_PATH] = "", test_model[DRV_PATH];
    if (d->resuming) drv_join(resume_model, sizeof resume_model, d->resume_ckpt, "model.safetensors");
    if (drv_find_test_weights(d, test_model)) return 1;
    const char *from = resume_model[0] ? resume_model : test_model[0] ? test_model : NULL;   /* all weights come from there */
    if (d->m->setup(d->m, ctx, from)) return drv_fail_ctx(d, d->m->what);
    if (test_model[0]) {
        if (d->m->load(d->m, ctx, test_model)) return drv_fail_ctx(d, d->m->what ? d->m->what : "test weights");
        d->test_weights = 1;
        printf("Testing the weights of %s\n", test_model);
    }

    /* data */
    if (root.data) {
        if (ldm_data_module_from_config(d->cfg, d->reg_data, root.data, ctx, &d->dm)) {
            if (ldm_ctx_status(ctx)) return drv_fail_ctx(d, "data");
            return drv_fail_cfg(d);
        }
        d->dm->num_replicas = d->world; /* DistributedSampler */
        d->dm->rank = d->rank;
        printf("#### Data #####\n");
        for (int sp = 0; sp < LDM_DATA_NSPLITS; sp++)
            if (d->dm->dataset[sp])
                printf("%s, %s, %lld\n", ldm_data_split_name((ldm_data_split)sp), ldm_dataset_name(d->dm->dataset[sp]),
                       (long long)ldm_dataset_len(d->dm->dataset[sp]));
    } else {
        drv_error("the config has no data section (data: {target: main.DataModuleFromConfig, params: ...})");
        return 1;
    }

    /* learning rate (main.py) */
    d->accumulate = d->tc.accumulate_grad_batches;
    int ngpu = d->world > 1 ? d->world : d->ngpu > 0 ? d->ngpu : 1, bs = d->dm->batch_size; /* processes x per-process batch */
    printf("accumulate_grad_batches = %d\n", d->accumulate);
    if (o->scale_lr) {
        d->lr = d->accumulate * ngpu * bs * d->base_lr;
        printf("Setting learning rate to %.2e = %d (accumulate_grad_batches) * %d (num_gpus) * %d (batchsize) * %.2e (base_lr)\n",
               d->lr, d->accumulate, ngpu, bs, d->base_lr);
    } else {
        d->lr = d->base_lr;
        printf("++++ NOT USING LR SCALING ++++\nSetting learning rate to %.2e\n", d->lr);
    }
    if (d->m->configure_optimizers(d->m, ctx, d->lr)) return drv_fail_ctx(d, d->m->what);
    for (int i = 0; i < d->m->n_optim; i++) d->m->optim[i].base_lr = ldm_nn_optim_lr(d->m->optim[i].opt);
    if (d->world > 1) {
        /* DDP: rank 0's initial weights everywhere; one gradient reducer per optimizer */
        for (int k = 0; k < d->m->n_params; k++)
            for (int blk = 0; blk < 2; blk++) {
                int64_t n;
                float *p = ldm_nn_block(d->m->params[k].P, blk ? LDM_NN_BLOCK_BUFFERS : LDM_NN_BLOCK_PARAMS, &n);
                if (p && n && ldm_dist_broadcast(ctx, d->dist, p, sizeof(float) * (size_t)n, ldm_nn_params_device(d->m->params[k].P),
                                                 "the initial weights")) return drv_fail_ctx(d, "data parallel");
            }
        for (int i = 0; i < d->m->n_optim; i++) {
            const ex_optim *oi = &d->m->optim[i];
            if (ldm_dist_reducer_create(ctx, d->dist, &d->red[i], 0)) return drv_fail_ctx(d, "data parallel");
            for (int j = 0; j <= oi->n_also; j++)
                if (ldm_dist_reducer_add(d->red[i], drv_optim_part(oi, j))) return drv_fail_ctx(d, "data parallel");
        }
        d->m->reduce = drv_reduce;
        d->m->reduce_user = d;
    }

    /* logdir (SetupCallback) */
    if (d->rank == 0 && (drv_mkdirs(d->ckptdir) || drv_mkdirs(d->cfgdir))) { drv_error("%s: cannot create (%s)", d->logdir, strerror(errno)); return 1; }
    if (o->train && d->rank == 0) {
        char p[DRV_PATH];
        drv_sfmt(p, sizeof p, "%s/images/train", d->logdir); drv_mkdirs(p);
        drv_sfmt(p, sizeof p, "%s/images/val", d->logdir); drv_mkdirs(p);
    }
    if (d->rank == 0) {
        char p[DRV_PATH], name[96];
        drv_sfmt(name, sizeof name, "%s-project.ini", d->now);
        drv_join(p, sizeof p, d->cfgdir, name);
        if (ldm_config_save(d->cfg, NULL, p)) return drv_fail_cfg(d);
        printf("Project config saved to %s\n", p);
    }
    if (o->train && d->rank == 0) { /* temporaries of a run that was killed while writing a checkpoint */
        DIR *dir = opendir(d->ckptdir);
        struct dirent *e;
        while (dir && (e = readdir(dir)) != NULL)
            if (!strncmp(e->d_name, ".tmp-", 5)) {
                char p[DRV_PATH];
                drv_join(p, sizeof p, d->ckptdir, e->d_name);
                drv_rm_rf(p);
            }
        if (dir) closedir(dir);
    }
    drv_metrics_init(&d->met, d->m);
    drv_join(d->met.path, sizeof d->met.path, d->logdir, "metrics.csv");
    d->met.nowrite = d->rank != 0;
    if (d->resuming) {
        if (drv_load_checkpoint(d, d->resume_ckpt, o->train)) return 1;
        printf("Resumed from %s at global step %lld (epoch %lld, batch %lld)\n", d->resume_ckpt, (long long)d->global_step,
               (long long)d->epoch, (long long)d->batch_in_epoch);
    } else if (o->train && drv_metrics_rewrite(&d->met, ctx)) return 1;
    if (!o->train && !d->resuming && !d->m->pretrained && !d->test_weights)
        drv_note("Note: testing an untrained model (no -t, no -r, no model.params.ckpt_path)");

    if (o->train) {
        if (!d->dm->dataset[LDM_DATA_TRAIN]) { drv_error("-t needs data.params.train"); return 1; }
        if (ldm_data_module_loader(ctx, d->dm, LDM_DATA_TRAIN, d->data_seed, &d->ld_train)) return drv_fail_ctx(d, "train data");
        int64_t nb = ldm_data_loader_batches(d->ld_train);
        d->n_train = drv_limit_apply(&d->lim_train, nb);
        if (d->n_train < 1) {
            drv_error("lightning.trainer.limit_train_batches selects 0 of the %lld training batches (hint: an int counts batches, a "
                      "float is a fraction)", (long long)nb);
            return 1;
        }
        if (d->dm->dataset[LDM_DATA_VALIDATION]) {
            if (ldm_data_module_loader(ctx, d->dm, LDM_DATA_VALIDATION, d->data_seed, &d->ld_val)) return drv_fail_ctx(d, "validation data");
            d->n_val = drv_limit_apply(&d->lim_val, ldm_data_loader_batches(d->ld_val));
        }
        if (d->val_interval.is_frac) {
            d->val_check_batch = (int64_t)((double)d->n_train * d->val_interval.frac);
            if (d->val_check_batch < 1) d->val_check_batch = 1;
        } else {
            d->val_check_batch = d->val_interval.n;
            if (d->val_check_batch > d->n_train) {
                drv_error("lightning.trainer.val_check_interval = %lld is more than the %lld training batches of an epoch",
                          (long long)d->val_check_batch, (long long)d->n_train);
                return 1;
            }
        }
        d->max_steps = d->tc.max_steps;
        d->max_epochs = d->tc.max_epochs >= 0 ? d->tc.max_epochs : (d->max_steps < 0 ? 1000 : -1);
        d->steps_per_epoch = (d->n_train + d->accumulate - 1) / d->accumulate;
        d->total_steps = d->max_steps >= 0 ? d->max_steps : d->max_epochs * d->steps_per_epoch;
        if (d->max_steps >= 0 && d->max_epochs >= 0 && d->max_epochs * d->steps_per_epoch < d->max_steps)
            d->total_steps = d->max_epochs * d->steps_per_epoch;
        if (d->ld_val && d->n_val > 0)
            printf("Monitoring %s as checkpoint metric.\n", d->mc.monitor);
        else
            printf("No validation (no data.params.validation, or limit_val_batches = 0): no top-k checkpoints, only last.\n");
        printf("Training %lld steps: %lld batches per epoch (%lld steps), batch size %d, %d threads. Logdir: %s\n",
               (long long)d->total_steps, (long long)d->n_train, (long long)d->steps_per_epoch, bs, ldm_ctx_threads(ctx), d->logdir);
        fflush(stdout);
        drv_install_signals();
        int frc = drv_fit(d);
        signal(SIGINT, SIG_DFL); /* the test is not checkpointed: Ctrl-C simply stops it */
        signal(SIGTERM, SIG_DFL);
        if (frc) return 1;
        if (drv_sig_stop) return 0; /* main.py: no test after an interruption */
    }
    if (!o->no_test) {
        if (d->rank) return 0; /* rank 0 tests on the whole test split (its own draws) */
        ldm_ctx_set_shard(ctx, 0, 1);
        d->dm->num_replicas = d->dm->rank = 0;
        return drv_test(d);
    }
    return 0;
}

static void drv_free(drv *d) {
    for (int i = 0; i < EX_MAX_OPTIM; i++) ldm_dist_reducer_destroy(d->red[i]);
    if (d->ld_train) ldm_data_loader_destroy(d->ld_train);
    if (d->ld_val) ldm_data_loader_destroy(d->ld_val);
    if (d->dm) ldm_data_module_destroy(d->dm);
    if (d->m) d->m->destroy(d->m);
    if (d->ctx) ldm_ctx_destroy(d->ctx);
    ldm_dist_destroy(d->dist); /* MPI_Finalize: after every rank's last collective */
    if (d->reg_model) ldm_config_registry_destroy(d->reg_model);
    if (d->reg_data) ldm_config_registry_destroy(d->reg_data);
    if (d->reg_cb) ldm_config_registry_destroy(d->reg_cb);
    if (d->cfg) ldm_config_destroy(d->cfg);
    drv_metrics_free(&d->met);
}

int main(int argc, char **argv) {
    drv_opts o;
    int rc = drv_parse_args(argc, argv, &o);
    if (rc) return rc;
    if (o.help) { drv_help(); return 0; }
    drv *d = (drv *)calloc(1, sizeof *d);
    if (!d) { drv_error("out of memory"); return 1; }
    d->o = &o;
    d->data_seed = o.seed;
    d->last_written = -1;
    d->tty = isatty(fileno(stdout));
    rc = drv_run(d);
    /* an error on one rank that the others did not share (they would wait for it until the
       timeout): end the whole job; a NaN stop is agreed by every rank and ends normally */
    if (rc && d->world > 1 && !d->nan_stop) {
        fprintf(stderr, "ldm: rank %d of %d failed (above): ending the job (MPI_Abort)\n", d->rank, d->world);
        ldm_dist_abort(d->dist, rc);
    }
    drv_free(d);
    free(d);
    for (int i = 0; i < o.n_ovr; i++) free(o.ovr[i]);
    return rc;
}
