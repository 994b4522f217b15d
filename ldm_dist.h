/* ldm_dist.h - data-parallel training for ldm.h: gradients averaged across processes by an
   existing distributed engine, Open MPI on CPUs and NCCL on GPUs, launched like torchrun:

       mpirun -np 2 build/ldm --base cfg -t --name exp        (one process per CPU socket/node)
       mpirun -np 8 build/ldm --gpus 0,1,2,3,4,5,6,7 ...      (LDM_NCCL: one process per GPU)

   Do this in exactly one C or C++ file before including it:
       #define LDM_IMPLEMENTATION     (or LDM_DIST_IMPLEMENTATION with the others' own)
   Build switches (both optional; without them world is 1 and nothing is needed):
       -DLDM_MPI    mpi.h and libmpi (Debian: libopenmpi-dev; build with mpicc, or
                    cc $(mpicc --showme:compile) ... $(mpicc --showme:link))
       -DLDM_NCCL   (with LDM_CUDA and LDM_MPI) libnccl.so.2 is opened at run time (dlopen;
                    the few entry points are declared here, no NCCL header needed); MPI only
                    bootstraps it (the unique id goes out by MPI_Bcast)

   What PyTorch's DistributedDataParallel does, and what this header does for it:
     - the same initial weights everywhere: ldm_dist_broadcast from rank 0;
     - each rank reads its shard of every epoch: ldm_data_loader_opts.num_replicas/rank
       (DistributedSampler), and draws per-sample noise as its rows of the whole job's draw
       (ldm_ctx_set_shard, ldm_tensor.h), so N ranks with batch b compute what one process
       with batch N*b computes;
     - gradients averaged before the optimizer step, in buckets started while the backward
       pass is still running: ldm_dist_reducer (each bucket of about bucket_mb is all-reduced
       as soon as the last gradient in it is final, through ldm_tensor.h's grad-ready hook);
     - every wait has a deadline: a rank that died or hangs turns into an error naming the
       ranks that did not arrive (rank 0 knows: every rank announces each collective to it),
       and the caller ends the job with ldm_dist_abort (MPI_Abort) instead of hanging.

   Shape legend: n elements (float32), buffers on the ctx's devices (host staging for GPU
   buffers when MPI moves them without NCCL). */
#ifndef LDM_DIST_H
#define LDM_DIST_H

#include "ldm_nn.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ldm_dist ldm_dist;
typedef struct ldm_dist_reducer ldm_dist_reducer;

/* World 1 (nothing to do) unless built with LDM_MPI and started by an MPI launcher (mpirun,
   srun: recognised by its environment). timeout_s: how long any collective may wait
   (<= 0: 300). The argc/argv pointers may be NULL. */
LDM_API ldm_result ldm_dist_create(ldm_ctx *ctx, ldm_dist **out, int *argc, char ***argv, double timeout_s);
LDM_API void ldm_dist_destroy(ldm_dist *d);                    /* MPI_Finalize when it initialised MPI */
LDM_API int ldm_dist_rank(const ldm_dist *d);
LDM_API int ldm_dist_world(const ldm_dist *d);
LDM_API const char *ldm_dist_engine(const ldm_dist *d);        /* "none", "mpi", "mpi+nccl" */
LDM_API void ldm_dist_set_timeout(ldm_dist *d, double seconds); /* the deadline of every later collective */
/* Device buffers (on `device` != LDM_CPU) go through NCCL from now on (LDM_NCCL builds;
   elsewhere an error that says how to build it). */
LDM_API ldm_result ldm_dist_use_nccl(ldm_ctx *ctx, ldm_dist *d, ldm_device device);
/* Ends every process of the job now (MPI_Abort), after the caller printed why; returns only
   in a world of 1. For errors on one rank that the others would otherwise wait for. */
LDM_API void ldm_dist_abort(ldm_dist *d, int code);

/* Collectives (every rank calls them in the same order); `what` names it in errors. */
LDM_API ldm_result ldm_dist_allreduce(ldm_ctx *ctx, ldm_dist *d, float *x, int64_t n, ldm_device dev, const char *what); /* sum */
LDM_API ldm_result ldm_dist_allreduce_f64(ldm_ctx *ctx, ldm_dist *d, double *x, int n, int max, const char *what);     /* sum or max, host */
LDM_API ldm_result ldm_dist_broadcast(ldm_ctx *ctx, ldm_dist *d, void *buf, size_t bytes, ldm_device dev, const char *what); /* from rank 0 */
LDM_API ldm_result ldm_dist_barrier(ldm_ctx *ctx, ldm_dist *d, const char *what);

/* Gradient averaging for one optimizer's parameters. Add the optimizers whose groups one
   backward pass feeds (their trainable parameters' gradients), then per optimizer step:
       ldm_dist_reducer_begin(r);  ldm_backward(ctx, loss);  ldm_dist_reducer_finish(r);
   begin installs the grad-ready hook; buckets (reverse registration order, as DDP) start as
   their gradients become final; finish starts the rest, waits, divides by the world size. */
LDM_API ldm_result ldm_dist_reducer_create(ldm_ctx *ctx, ldm_dist *d, ldm_dist_reducer **out, double bucket_mb);
LDM_API ldm_result ldm_dist_reducer_add(ldm_dist_reducer *r, const ldm_nn_optim *opt);
LDM_API void ldm_dist_reducer_begin(ldm_dist_reducer *r);
LDM_API ldm_result ldm_dist_reducer_finish(ldm_dist_reducer *r, const char *what);
LDM_API void ldm_dist_reducer_destroy(ldm_dist_reducer *r);
/* Since create: reductions, buckets started during the backward pass and in all, bytes
   all-reduced, seconds finish spent waiting (the communication the backward did not hide). */
typedef struct ldm_dist_stats { int64_t steps, buckets_early, buckets, bytes; double wait_s; } ldm_dist_stats;
LDM_API ldm_dist_stats ldm_dist_reducer_stats(const ldm_dist_reducer *r);

#ifdef __cplusplus
}
#endif
#endif /* LDM_DIST_H */

/* ============================================================================================ */
#if (defined(LDM_IMPLEMENTATION) || defined(LDM_DIST_IMPLEMENTATION)) && !defined(LDM_DIST_IMPLEMENTED)
#define LDM_DIST_IMPLEMENTED

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef LDM_MPI
#include <sched.h>
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1  /* the C API only, also when compiled as C++ (nvcc, the emulator) */
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>
#endif
#ifdef LDM_NCCL
#if !defined(LDM_CUDA) || !defined(LDM_MPI)
#error "LDM_NCCL needs LDM_CUDA (the GPU back end) and LDM_MPI (bootstrap)"
#endif
#include <dlfcn.h>
#endif

#define LDM__DIST_TAG_ARRIVE 7301
#define LDM__DIST_CHUNK ((int64_t)1 << 28) /* MPI counts are int */

#ifdef LDM_NCCL
/* The NCCL entry points this file uses, as nccl.h declares them (ABI of NCCL 2.x). */
typedef struct { char internal[128]; } ldm__nccl_id;
typedef void *ldm__nccl_comm;
typedef struct ldm__nccl_api {
    void *lib;
    int (*get_unique_id)(ldm__nccl_id *id);
    int (*comm_init_rank)(ldm__nccl_comm *comm, int nranks, ldm__nccl_id id, int rank);
    int (*all_reduce)(const void *send, void *recv, size_t count, int dtype, int op, ldm__nccl_comm comm, void *stream);
    int (*broadcast)(const void *send, void *recv, size_t count, int dtype, int root, ldm__nccl_comm comm, void *stream);
    int (*comm_destroy)(ldm__nccl_comm comm);
    const char *(*error_string)(int r);
} ldm__nccl_api;
enum { LDM__NCCL_INT8 = 0, LDM__NCCL_FLOAT32 = 7, LDM__NCCL_SUM = 0 };
#endif

struct ldm_dist {
    int rank, world, mpi_owner;
    double timeout;
    int64_t seq;                  /* collectives so far (the arrival announcements carry it) */
    int64_t *arrived;             /* rank 0: the last sequence number each rank announced */
    long long send_seq[64];       /* ring of announcement buffers (eager sends, freed requests) */
    ldm_device nccl_dev;
    int nccl_on;
#ifdef LDM_NCCL
    ldm__nccl_api nc;
    ldm__nccl_comm comm;
#endif
};

static double ldm__dist_now(void) { /* wall clock (only the MPI builds wait for anything) */
#ifdef LDM_MPI
    return MPI_Wtime();
#else
    return (double)clock() / CLOCKS_PER_SEC;
#endif
}

LDM_API int ldm_dist_rank(const ldm_dist *d) { return d ? d->rank : 0; }
LDM_API int ldm_dist_world(const ldm_dist *d) { return d ? d->world : 1; }
LDM_API const char *ldm_dist_engine(const ldm_dist *d) {
    if (!d || d->world == 1) return "none";
    return d->nccl_on ? "mpi+nccl" : "mpi";
}

LDM_API void ldm_dist_set_timeout(ldm_dist *d, double seconds) { if (d && seconds > 0) d->timeout = seconds; }

LDM_API ldm_result ldm_dist_create(ldm_ctx *ctx, ldm_dist **out, int *argc, char ***argv, double timeout_s) {
    *out = NULL;
    ldm_dist *d = (ldm_dist *)calloc(1, sizeof *d);
    if (!d) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_dist: out of memory");
    d->world = 1;
    d->timeout = timeout_s > 0 ? timeout_s : 300.0;
    int launched = getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK") || getenv("MPI_LOCALNRANKS");
#ifdef LDM_MPI
    if (launched) {
        int init = 0, prov = 0;
        MPI_Initialized(&init);
        if (!init) {
            if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &prov) != MPI_SUCCESS) {
                free(d);
                return ldm_ctx_seterr(ctx, LDM_ERR_IO, "ldm_dist: MPI_Init_thread failed (hint: start the job with mpirun -np N)");
            }
            d->mpi_owner = 1;
        }
        MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
        MPI_Comm_size(MPI_COMM_WORLD, &d->world);
        if (d->rank == 0) {
            d->arrived = (int64_t *)calloc((size_t)d->world, sizeof(int64_t));
            if (!d->arrived) { ldm_dist_destroy(d); return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_dist: out of memory"); }
        }
    }
#else
    (void)argc; (void)argv;
    if (launched) {
        const char *ws = getenv("OMPI_COMM_WORLD_SIZE") ? getenv("OMPI_COMM_WORLD_SIZE") : getenv("PMI_SIZE");
        if (ws && atoi(ws) > 1) {
            free(d);
            return ldm_ctx_seterr(ctx, LDM_ERR_UNSUPPORTED,
                                  "ldm_dist: started by an MPI launcher with %s processes, but this program was built without "
                                  "LDM_MPI: every process would train alone (hint: LDM_MPI=1 ./build.sh, or build with mpicc -DLDM_MPI)", ws);
        }
    }
#endif
    *out = d;
    return LDM_OK;
}

LDM_API void ldm_dist_destroy(ldm_dist *d) {
    if (!d) return;
#ifdef LDM_NCCL
    if (d->nccl_on) d->nc.comm_destroy(d->comm);
    if (d->nc.lib) dlclose(d->nc.lib);
#endif
#ifdef LDM_MPI
    if (d->mpi_owner) MPI_Finalize();
#endif
    free(d->arrived);
    free(d);
}

LDM_API void ldm_dist_abort(ldm_dist *d, int code) {
    fflush(stdout);
    fflush(stderr);
#ifdef LDM_MPI
    if (d && d->world > 1) MPI_Abort(MPI_COMM_WORLD, code);
#else
    (void)d; (void)code;
#endif
}

#ifdef LDM_MPI
/* Every rank tells rank 0 that it reached collective number seq (a tiny eager send that
   completes at once), so that rank 0 can name the ranks a timed-out collective waits for. */
static void ldm__dist_announce(ldm_dist *d) {
    d->seq++;
    if (d->rank == 0) return;
    long long *b = &d->send_seq[d->seq % 64];
    *b = (long long)d->seq;
    MPI_Request rq;
    MPI_Isend(b, 1, MPI_LONG_LONG, 0, LDM__DIST_TAG_ARRIVE, MPI_COMM_WORLD, &rq);
    MPI_Request_free(&rq);
}
static void ldm__dist_drain(ldm_dist *d) {
    if (d->rank != 0) return;
    for (;;) {
        int flag = 0;
        MPI_Status st;
        MPI_Iprobe(MPI_ANY_SOURCE, LDM__DIST_TAG_ARRIVE, MPI_COMM_WORLD, &flag, &st);
        if (!flag) return;
        long long v;
        MPI_Recv(&v, 1, MPI_LONG_LONG, st.MPI_SOURCE, LDM__DIST_TAG_ARRIVE, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        if (v > d->arrived[st.MPI_SOURCE]) d->arrived[st.MPI_SOURCE] = v;
    }
}
/* Waits for n requests until the deadline; the error names the missing ranks where it can. */
static ldm_result ldm__dist_wait(ldm_ctx *ctx, ldm_dist *d, int n, MPI_Request *rq, const char *what) {
    double t0 = ldm__dist_now(), next_drain = t0;
    for (;;) {
        int done = 0;
        MPI_Testall(n, rq, &done, MPI_STATUSES_IGNORE);
        if (done) return LDM_OK;
        double now = ldm__dist_now();
        if (d->rank == 0 && now >= next_drain) { ldm__dist_drain(d); next_drain = now + 0.5; }
        if (now - t0 > d->timeout) {
            char missing[512] = "";
            size_t len = 0;
            if (d->rank == 0) {
                ldm__dist_drain(d);
                for (int k = 1; k < d->world && len + 16 < sizeof missing; k++)
                    if (d->arrived[k] < d->seq) len += (size_t)snprintf(missing + len, sizeof missing - len, "%s%d", len ? ", " : "", k);
            }
            if (missing[0])
                return ldm_ctx_seterr(ctx, LDM_ERR_IO, "ldm_dist: rank 0: %s waited %.0f s for rank%s %s, which did not reach it "
                                      "(dead or hung; hint: its own output says why; LDM_DIST_TIMEOUT sets the wait)",
                                      what, d->timeout, strchr(missing, ',') ? "s" : "", missing);
            return ldm_ctx_seterr(ctx, LDM_ERR_IO, "ldm_dist: rank %d: %s did not complete within %.0f s (another rank is dead or "
                                  "hung; rank 0 names it; hint: LDM_DIST_TIMEOUT sets the wait)", d->rank, what, d->timeout);
        }
        sched_yield(); /* a rank sharing cores with others gives its turn away while it waits */
    }
}
#endif

LDM_API ldm_result ldm_dist_use_nccl(ldm_ctx *ctx, ldm_dist *d, ldm_device device) {
#ifdef LDM_NCCL
    if (d->world == 1 || d->nccl_on) return LDM_OK;
    ldm__nccl_api *a = &d->nc;
    a->lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!a->lib) return ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "ldm_dist: cannot open libnccl.so.2 (%s) (hint: install NVIDIA's NCCL, "
                                       "e.g. the nvidia-nccl-cu12 wheel, and put its lib/ on LD_LIBRARY_PATH)", dlerror());
#define LDM__NCCL_SYM(field, name)                                                                                    \
    if (!(*(void **)&a->field = dlsym(a->lib, name)))                                                                 \
        return ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "ldm_dist: libnccl.so.2 has no %s (hint: NCCL 2.x)", name);
    LDM__NCCL_SYM(get_unique_id, "ncclGetUniqueId")
    LDM__NCCL_SYM(comm_init_rank, "ncclCommInitRank")
    LDM__NCCL_SYM(all_reduce, "ncclAllReduce")
    LDM__NCCL_SYM(broadcast, "ncclBroadcast")
    LDM__NCCL_SYM(comm_destroy, "ncclCommDestroy")
    LDM__NCCL_SYM(error_string, "ncclGetErrorString")
#undef LDM__NCCL_SYM
    ldm__nccl_id id;
    memset(&id, 0, sizeof id);
    int e = d->rank == 0 ? a->get_unique_id(&id) : 0;
    if (e) return ldm_ctx_seterr(ctx, LDM_ERR_DEVICE, "ldm_dist: ncclGetUniqueId: %s", a->error_string(e));
    ldm_result r = ldm_dist_broadcast(ctx, d, &id, sizeof id, LDM_CPU, "the NCCL id");
    if (r) return r;
    if ((e = a->comm_init_rank(&d->comm, d->world, id, d->rank)))
        return ldm_ctx_seterr(ctx, LDM_ERR_DEVICE, "ldm_dist: ncclCommInitRank (rank %d of %d): %s", d->rank, d->world, a->error_string(e));
    d->nccl_on = 1;
    d->nccl_dev = device;
    return LDM_OK;
#else
    (void)device;
    if (d->world == 1) return LDM_OK;
    return ldm_ctx_seterr(ctx, LDM_ERR_UNSUPPORTED, "ldm_dist: GPU all-reduce needs NCCL (hint: build with LDM_CUDA, LDM_MPI and LDM_NCCL)");
#endif
}

#ifdef LDM_NCCL
/* NCCL runs on the GPU back end's stream, after the kernels that produced the data. */
static ldm_result ldm__dist_nccl(ldm_ctx *ctx, ldm_dist *d, void *x, size_t count, int dtype, int bcast, const char *what) {
    void *stream = ldm_cuda_stream(ctx);
    int e = bcast ? d->nc.broadcast(x, x, count, dtype, 0, d->comm, stream)
                  : d->nc.all_reduce(x, x, count, dtype, LDM__NCCL_SUM, d->comm, stream);
    if (e) return ldm_ctx_seterr(ctx, LDM_ERR_DEVICE, "ldm_dist: NCCL %s of %s: %s", bcast ? "broadcast" : "all-reduce", what, d->nc.error_string(e));
    return LDM_OK;
}
#endif

/* In-place sum of a host buffer, chunked, with the deadline. */
static ldm_result ldm__dist_allreduce_host(ldm_ctx *ctx, ldm_dist *d, float *x, int64_t n, const char *what) {
    (void)d;
#ifdef LDM_MPI
    ldm__dist_announce(d);
    for (int64_t o = 0; o < n; o += LDM__DIST_CHUNK) {
        MPI_Request rq;
        int c = (int)(n - o < LDM__DIST_CHUNK ? n - o : LDM__DIST_CHUNK);
        MPI_Iallreduce(MPI_IN_PLACE, x + o, c, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &rq);
        ldm_result r = ldm__dist_wait(ctx, d, 1, &rq, what);
        if (r) return r;
    }
#else
    (void)ctx; (void)x; (void)n; (void)what;
#endif
    return LDM_OK;
}

LDM_API ldm_result ldm_dist_allreduce(ldm_ctx *ctx, ldm_dist *d, float *x, int64_t n, ldm_device dev, const char *what) {
    if (!d || d->world == 1 || n <= 0) return LDM_OK;
#ifdef LDM_NCCL
    if (dev != LDM_CPU && d->nccl_on) return ldm__dist_nccl(ctx, d, x, (size_t)n, LDM__NCCL_FLOAT32, 0, what);
#endif
    if (dev == LDM_CPU) return ldm__dist_allreduce_host(ctx, d, x, n, what);
    float *h = (float *)malloc(sizeof(float) * (size_t)n); /* staged through the host */
    if (!h) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_dist: out of memory staging %s", what);
    ldm_device_copy(ctx, h, LDM_CPU, x, dev, sizeof(float) * (size_t)n);
    ldm_result r = ldm__dist_allreduce_host(ctx, d, h, n, what);
    if (!r) ldm_device_copy(ctx, x, dev, h, LDM_CPU, sizeof(float) * (size_t)n);
    free(h);
    return r;
}

LDM_API ldm_result ldm_dist_allreduce_f64(ldm_ctx *ctx, ldm_dist *d, double *x, int n, int max, const char *what) {
    if (!d || d->world == 1 || n <= 0) return LDM_OK;
#ifdef LDM_MPI
    ldm__dist_announce(d);
    MPI_Request rq;
    MPI_Iallreduce(MPI_IN_PLACE, x, n, MPI_DOUBLE, max ? MPI_MAX : MPI_SUM, MPI_COMM_WORLD, &rq);
    return ldm__dist_wait(ctx, d, 1, &rq, what);
#else
    (void)ctx; (void)x; (void)max; (void)what;
    return LDM_OK;
#endif
}

LDM_API ldm_result ldm_dist_broadcast(ldm_ctx *ctx, ldm_dist *d, void *buf, size_t bytes, ldm_device dev, const char *what) {
    if (!d || d->world == 1 || bytes == 0) return LDM_OK;
#ifdef LDM_NCCL
    if (dev != LDM_CPU && d->nccl_on) return ldm__dist_nccl(ctx, d, buf, bytes, LDM__NCCL_INT8, 1, what);
#endif
#ifdef LDM_MPI
    unsigned char *h = (unsigned char *)buf;
    if (dev != LDM_CPU) {
        if (!(h = (unsigned char *)malloc(bytes))) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_dist: out of memory staging %s", what);
        if (d->rank == 0) ldm_device_copy(ctx, h, LDM_CPU, buf, dev, bytes);
    }
    ldm_result r = LDM_OK;
    ldm__dist_announce(d);
    for (size_t o = 0; o < bytes && !r; o += (size_t)LDM__DIST_CHUNK) {
        MPI_Request rq;
        int c = (int)(bytes - o < (size_t)LDM__DIST_CHUNK ? bytes - o : (size_t)LDM__DIST_CHUNK);
        MPI_Ibcast(h + o, c, MPI_BYTE, 0, MPI_COMM_WORLD, &rq);
        r = ldm__dist_wait(ctx, d, 1, &rq, what);
    }
    if (dev != LDM_CPU) {
        if (!r && d->rank != 0) ldm_device_copy(ctx, buf, dev, h, LDM_CPU, bytes);
        free(h);
    }
    return r;
#else
    (void)ctx; (void)buf; (void)dev; (void)what;
    return LDM_OK;
#endif
}

LDM_API ldm_result ldm_dist_barrier(ldm_ctx *ctx, ldm_dist *d, const char *what) {
    if (!d || d->world == 1) return LDM_OK;
#ifdef LDM_MPI
    ldm__dist_announce(d);
    MPI_Request rq;
    MPI_Ibarrier(MPI_COMM_WORLD, &rq);
    return ldm__dist_wait(ctx, d, 1, &rq, what);
#else
    (void)ctx; (void)what;
    return LDM_OK;
#endif
}

/* ---- the gradient reducer ------------------------------------------------------------------- */
typedef struct ldm__dist_param { float *g; int64_t n; int bucket; } ldm__dist_param;
typedef struct ldm__dist_bucket {
    float *g;                     /* contiguous gradients of params [p0, p1) */
    int64_t n;
    int p0, p1, pending, started;
    ldm_device dev;
#ifdef LDM_MPI
    MPI_Request rq;
#endif
    float *host;                  /* staging for device buffers without NCCL */
} ldm__dist_bucket;

struct ldm_dist_reducer {
    ldm_ctx *ctx;
    ldm_dist *d;
    double cap_bytes;
    ldm__dist_param *p;           /* sorted by gradient address once bucketed */
    int np, cap_p;
    ldm__dist_bucket *b;
    int nb;
    unsigned char *ready;         /* per param, this pass */
    ldm_device dev;
    int active, no_overlap;
    ldm_dist_stats st;
};

LDM_API ldm_result ldm_dist_reducer_create(ldm_ctx *ctx, ldm_dist *d, ldm_dist_reducer **out, double bucket_mb) {
    *out = NULL;
    ldm_dist_reducer *r = (ldm_dist_reducer *)calloc(1, sizeof *r);
    if (!r) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "ldm_dist: out of memory");
    r->ctx = ctx;
    r->d = d;
    r->cap_bytes = (bucket_mb > 0 ? bucket_mb : 25.0) * 1048576.0; /* DDP's bucket_cap_mb */
    r->no_overlap = getenv("LDM_DIST_NO_OVERLAP") && atoi(getenv("LDM_DIST_NO_OVERLAP")) == 1; /* for measuring the overlap */
    *out = r;
    return LDM_OK;
}

LDM_API ldm_result ldm_dist_reducer_add(ldm_dist_reducer *r, const ldm_nn_optim *opt) {
    for (int i = 0; i < ldm_nn_optim_size(opt); i++) {
        const ldm_nn_entry *e = ldm_nn_optim_entry(opt, i);
        if (!e->t->grad || !e->t->requires_grad) continue;
        if (r->np == r->cap_p) {
            int c = r->cap_p ? 2 * r->cap_p : 64;
            ldm__dist_param *q = (ldm__dist_param *)realloc(r->p, sizeof *q * (size_t)c);
            if (!q) return ldm_ctx_seterr(r->ctx, LDM_ERR_NOMEM, "ldm_dist: out of memory");
            r->p = q;
            r->cap_p = c;
        }
        r->p[r->np].g = e->t->grad;
        r->p[r->np].n = e->t->numel;
        r->p[r->np].bucket = -1;
        r->np++;
        r->dev = e->t->device;
    }
    free(r->b); /* rebucketed at the next begin */
    r->b = NULL;
    r->nb = 0;
    return LDM_OK;
}

static int ldm__dist_cmp_param(const void *a, const void *b) {
    const ldm__dist_param *x = (const ldm__dist_param *)a, *y = (const ldm__dist_param *)b;
    return x->g < y->g ? -1 : x->g > y->g;
}

/* Buckets from the highest gradient address down (the last registered parameters finish
   first in the backward pass); one bucket is one contiguous range of the gradient block. */
static ldm_result ldm__dist_bucketize(ldm_dist_reducer *r) {
    qsort(r->p, (size_t)r->np, sizeof *r->p, ldm__dist_cmp_param);
    r->b = (ldm__dist_bucket *)calloc((size_t)(r->np ? r->np : 1), sizeof *r->b);
    r->ready = (unsigned char *)realloc(r->ready, (size_t)(r->np ? r->np : 1));
    if (!r->b || !r->ready) return ldm_ctx_seterr(r->ctx, LDM_ERR_NOMEM, "ldm_dist: out of memory");
    int i = r->np - 1;
    while (i >= 0) {
        ldm__dist_bucket *b = &r->b[r->nb];
        b->p1 = i + 1;
        b->dev = r->dev;
        int j = i;
        /* neighbours in the block (alignment padding between them is reduced too: unread) */
        while (j > 0 && r->p[j - 1].g + r->p[j - 1].n <= r->p[j].g && r->p[j].g - (r->p[j - 1].g + r->p[j - 1].n) <= 64 &&
               (double)(r->p[i].g + r->p[i].n - r->p[j - 1].g) * 4.0 <= r->cap_bytes)
            j--;
        b->p0 = j;
        b->g = r->p[j].g;
        b->n = (int64_t)(r->p[i].g + r->p[i].n - r->p[j].g);
        for (int k = j; k <= i; k++) r->p[k].bucket = r->nb;
        r->nb++;
        i = j - 1;
    }
    return LDM_OK;
}

static void ldm__dist_start(ldm_dist_reducer *r, ldm__dist_bucket *b) {
    b->started = 1;
    r->st.buckets++;
    r->st.bytes += b->n * 4;
    if (r->d->world == 1) return;
#ifdef LDM_NCCL
    if (b->dev != LDM_CPU && r->d->nccl_on) { ldm__dist_nccl(r->ctx, r->d, b->g, (size_t)b->n, LDM__NCCL_FLOAT32, 0, "gradients"); return; }
#endif
#ifdef LDM_MPI
    float *x = b->g;
    if (b->dev != LDM_CPU) { /* staged: the copy to the host waits for the stream */
        if (!b->host) b->host = (float *)malloc(sizeof(float) * (size_t)b->n);
        if (!b->host) { ldm_ctx_seterr(r->ctx, LDM_ERR_NOMEM, "ldm_dist: out of memory staging gradients"); b->rq = MPI_REQUEST_NULL; return; }
        ldm_device_copy(r->ctx, b->host, LDM_CPU, b->g, b->dev, sizeof(float) * (size_t)b->n);
        x = b->host;
    }
    MPI_Iallreduce(MPI_IN_PLACE, x, (int)b->n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &b->rq);
#endif
}

static void ldm__dist_on_ready(void *user, ldm_ctx *ctx, ldm_tensor *leaf) {
    ldm_dist_reducer *r = (ldm_dist_reducer *)user;
    (void)ctx;
    if (r->no_overlap || !leaf->grad) return;
    int lo = 0, hi = r->np - 1, at = -1; /* the parameter whose gradient this is */
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (r->p[mid].g == leaf->grad) { at = mid; break; }
        if (r->p[mid].g < leaf->grad) lo = mid + 1; else hi = mid - 1;
    }
    if (at < 0 || r->ready[at]) return;
    r->ready[at] = 1;
    ldm__dist_bucket *b = &r->b[r->p[at].bucket];
    if (--b->pending == 0 && !b->started) ldm__dist_start(r, b), r->st.buckets_early++;
#ifdef LDM_MPI
    if (r->d->world > 1) { /* MPI progresses inside calls: poke the ones under way */
        for (int k = 0; k < r->nb; k++)
            if (r->b[k].started && r->b[k].rq != MPI_REQUEST_NULL) { int f; MPI_Test(&r->b[k].rq, &f, MPI_STATUS_IGNORE); }
    }
#endif
}

LDM_API void ldm_dist_reducer_begin(ldm_dist_reducer *r) {
    if (!r->b && ldm__dist_bucketize(r)) return;
    memset(r->ready, 0, (size_t)(r->np ? r->np : 1));
    for (int k = 0; k < r->nb; k++) {
        r->b[k].pending = r->b[k].p1 - r->b[k].p0;
        r->b[k].started = 0;
#ifdef LDM_MPI
        r->b[k].rq = MPI_REQUEST_NULL;
#endif
    }
#ifdef LDM_MPI
    if (r->d->world > 1) ldm__dist_announce(r->d); /* one announcement per reduction */
#endif
    r->active = 1;
    ldm_set_grad_ready_hook(r->ctx, ldm__dist_on_ready, r);
}

LDM_API ldm_result ldm_dist_reducer_finish(ldm_dist_reducer *r, const char *what) {
    ldm_ctx *ctx = r->ctx;
    ldm_set_grad_ready_hook(ctx, NULL, NULL);
    if (!r->active) return ldm_ctx_status(ctx) ? ldm_ctx_status(ctx) : ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_dist: finish without begin");
    r->active = 0;
    r->st.steps++;
    double t0 = ldm__dist_now();
    for (int k = 0; k < r->nb; k++) if (!r->b[k].started) ldm__dist_start(r, &r->b[k]);
    ldm_result res = ldm_ctx_status(ctx);
#ifdef LDM_MPI
    if (r->d->world > 1 && !res) {
        for (int k = 0; k < r->nb && !res; k++) res = ldm__dist_wait(ctx, r->d, 1, &r->b[k].rq, what);
        for (int k = 0; k < r->nb && !res; k++)
            if (r->b[k].dev != LDM_CPU && !(r->d->nccl_on)) ldm_device_copy(ctx, r->b[k].g, r->b[k].dev, r->b[k].host, LDM_CPU, sizeof(float) * (size_t)r->b[k].n);
    }
#else
    (void)what;
#endif
    if (!res && r->d->world > 1) /* the mean over ranks, as DDP */
        for (int k = 0; k < r->nb; k++) ldm_device_scale(ctx, r->b[k].dev, r->b[k].g, r->b[k].n, 1.0f / (float)r->d->world);
    r->st.wait_s += ldm__dist_now() - t0;
    return res ? res : ldm_ctx_status(ctx);
}

LDM_API ldm_dist_stats ldm_dist_reducer_stats(const ldm_dist_reducer *r) { return r->st; }

LDM_API void ldm_dist_reducer_destroy(ldm_dist_reducer *r) {
    if (!r) return;
    if (r->active) ldm_set_grad_ready_hook(r->ctx, NULL, NULL);
    for (int k = 0; k < r->nb; k++) free(r->b[k].host);
    free(r->b);
    free(r->p);
    free(r->ready);
    free(r);
}

#endif /* LDM_DIST_IMPLEMENTATION */
