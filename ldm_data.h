/* ldm_data.h - datasets and data loading for ldm.h's train/test driver: the C counterpart of
   CompVis latent-diffusion's main.py DataModuleFromConfig and its ldm/data datasets.   v0.1

   Do this in exactly one C or C++ file before including it:
       #define LDM_IMPLEMENTATION          (every ldm_ header)
   or  #define LDM_DATA_IMPLEMENTATION     (this header only; ldm_tensor.h's implementation
                                            must be in the program too)

   Example: an image folder, shuffled batches of 8 from 2 background threads.

       ldm_data_image_folder_opts o = {0};                   // zero means the default
       o.src.root = "data";  o.size = 128;  o.random_crop = 1;  o.flip_p = 0.5f;
       ldm_dataset *ds;  ldm_data_loader *ld;
       ldm_data_loader_opts lo = {0};  lo.batch_size = 8;  lo.num_workers = 2;  lo.shuffle = 1;  lo.seed = 23;
       if (ldm_dataset_image_folder(ctx, &ds, &o) || ldm_data_loader_create(ctx, &ld, ds, &lo)) { ...ldm_ctx_error(ctx)... }
       const ldm_data_batch *b;  ldm_result r;
       while ((r = ldm_data_loader_next(ctx, ld, &b)) == LDM_OK) {
           ldm_tensor x = ldm_data_batch_tensor(b, "image");  // host [B,3,128,128] in [-1,1]
           ldm_tensor *xd = ldm_from_host(ctx, ldm_shape_of(&x), x.data);   // upload
           ...
       }
       if (r < 0) { ...ldm_ctx_error(ctx)... }               // r == LDM_DATA_END: epoch over
       ldm_data_loader_destroy(ld);  ldm_dataset_destroy(ds);

   Shape legend: B batch, C channels, T depth (volumes), H, W image size, h, w low-resolution
   size (H/f, W/f for a downscale factor f). Items are CHW, batches BCHW, host float32, values in [-1, 1]
   (8-bit pixel p -> p/127.5 - 1, as CompVis). CompVis datasets yield HWC numpy arrays and the
   model's get_input permutes them to BCHW; here the layout is CHW from the start.
       item:  "image" [C,H,W]  ("LR_image" [3,h,w] for super-resolution), class_label (optional)
       batch: "image" [B,C,H,W] ...,  class_label [B] (or NULL),  index [B] (dataset indices)
   Volumes (VolumeDataset) add a depth T: item "image" [C,T,H,W] (ldm_data_field.t = T; t is 0
   for 2-D fields), batch [B,C,T,H,W] (ldm_data_bfield.ndim = 5; 2-D fields have ndim 4 and
   shape[0..3] as before). Volume values are float, not 8-bit: see the dataset's `norm`.

   Datasets (ldm_dataset) have a length and produce item i in two stages: `load` decodes and
   applies the deterministic preprocessing (e.g. the shorter-side rescale) into an 8-bit base
   image, which ldm_dataset_cache can keep in memory; `augment` applies the random part (crops,
   flips, degradations) with an RNG derived from (seed, epoch, index) alone (Philox, see
   ldm_data_item_rng), so a run is reproducible whatever num_workers is and whatever order the
   threads finish in. Built in:
   - ImageFolder (ldm_dataset_image_folder): every PNG/JPG/JPEG/BMP/TGA file under a directory
     (recursive to 32 levels, links followed but not into a loop, case-insensitive
     extensions, names starting with '.' ignored; POSIX dirent), sorted by path bytewise. size > 0: the shorter side is rescaled to size (interpolation "auto": OpenCV
     INTER_AREA when shrinking, bilinear when enlarging; others selectable), then a size x size
     crop, random in training (offset floor((H - size + 1) * u), albumentations' RandomCrop)
     or central ((H - size) / 2), then a horizontal flip with probability flip_p.
   - ImageNetSR (ldm_dataset_imagenet_sr), as ldm/data/imagenet.py over a folder: crop side =
     int(min(H,W) * U(min_crop_f, max_crop_f)), a random or centre crop, rescaled to size x
     size with INTER_AREA, and LR_image = that image resized to size/downscale_f with the
     degradation. bsrgan/bsrgan_light and cv_lanczos are not implemented (LDM_ERR_UNSUPPORTED).
   - IDX (ldm_dataset_idx): MNIST / Fashion-MNIST idx3-ubyte images and idx1-ubyte labels,
     raw or gzip (inflated by stb_image's zlib decoder; CRC-32 and length are checked). 28x28
     -> size by centred zero padding (black) or by resizing; channels 1 or 3 (replicated).
   - VolumeDataset (ldm_dataset_volume): every .nii / .nii.gz file under a directory (the
     same scan, list, split and labels rules as ImageFolder), read as NIfTI-1 (below).
     load: the voxels as float with scl_slope/scl_inter applied, then `norm` (none; window =
     MONAI ScaleIntensityRanged: (x - a_min) / (a_max - a_min) * (b_max - b_min) + b_min,
     clipped to [b_min, b_max] when clip; zscore = (x - mean) / std over the whole volume,
     population std; minmax = MONAI ScaleIntensity, the volume's min..max -> b_min..b_max),
     then `resize` (trilinear, = torch F.interpolate(mode="trilinear",
     align_corners=False)). augment: a spatial_size crop, random (three draws T, H, W; offset
     floor((D - s + 1) * u), as the image datasets) or central ((D - s) / 2); a crop larger
     than the volume is an error naming the file. The 4th NIfTI axis (nt) becomes channels C;
     5- to 7-D files are LDM_ERR_UNSUPPORTED (skipped like unreadable files).
   - CacheDataset (ldm_dataset_cache): keeps base images in memory up to a byte cap
     (first come, first kept; what is cached never changes the values, only the speed).
     Over a VolumeDataset it keeps the loaded volumes (float, after norm and resize; the cap
     counts 4 bytes a voxel) and the crops are drawn again every epoch (MONAI CacheDataset).
   Unreadable files: the folder datasets check each file's header when scanning; a file that
   fails is a warning naming it, skipped and counted (ldm_dataset_skipped). A file whose body
   fails to decode later (LDM_ERR_FORMAT, _IO or _UNSUPPORTED) is reported the same way and
   item i is replaced by the next readable file (i+1, i+2, ... wrapping), so a batch keeps its
   size. Only a folder with no readable image is an error. (A .nii's header and length are
   checked at the scan; a .nii.gz only for the gzip magic, its header when it is inflated.)

   Size caps: a few header bytes can declare a gigantic image, which a decoder would
   allocate and fill before finding the data missing. ldm_data_image_load refuses more than
   ldm_data_max_pixels() pixels (w*h; default 2^26 = 8192^2; env LDM_MAX_PIXELS or
   ldm_data_set_max_pixels) from the header, before decoding; NIfTI reading refuses more than
   ldm_data_max_voxels() voxels (default 2^28, 1 GiB as float; env LDM_MAX_VOXELS,
   ldm_data_set_max_voxels, or the dataset's max_voxels) before reading or inflating the data.
   Both are LDM_ERR_UNSUPPORTED with a message naming the file, the size and how to raise it.

   NIfTI-1 (ldm_nifti_read / ldm_nifti_write; nifti1.h): single-file volumes, magic "n+1\0",
   .nii or gzip'ed (detected by the gzip magic, not the name). The 348-byte header is read in
   either byte order (told by sizeof_hdr: 348 as is or byte-swapped); dim[0] in 1..7, each
   used dim >= 1; datatypes uint8, int8, int16, uint16, int32, float32, float64 (others, e.g.
   complex or RGB, are LDM_ERR_UNSUPPORTED naming the code); vox_offset a whole number >= 352
   (extensions before it are skipped, not read); bitpix is not used (the datatype decides).
   Voxels become float: v * scl_slope + scl_inter when scl_slope is finite and non-zero,
   else v unscaled (NIfTI: slope 0 means no scaling; a non-finite scl_inter counts as 0).
   int32 and float64 values beyond float precision are rounded. Kept for writing back: dim,
   pixdim (pixdim[0] = qfac), qform/sform codes, quatern_b/c/d, qoffset, srow_x/y/z,
   xyzt_units, intent_code, descrip (not kept: dim_info, slice timing, cal_min/max, toffset,
   intent parameters and name, aux_file, extensions). ".hdr/.img" pairs (magic "ni1") and NIfTI-2 are
   refused with a message saying so. gzip: one member, CRC-32 and ISIZE checked, the header
   inflated first so the cap and the declared length are checked against ISIZE before the
   body's buffer is allocated; inflated size at most 2 GiB.
   Axis order: NIfTI stores x fastest, then y, z, t (indices i, j, k, t); ldm_nifti.data keeps
   that order, and the dataset's [C,T,H,W] is exactly that memory: W = nx (i), H = ny (j),
   T = nz (k), C = nt. A read followed by a write is exact (same bytes of data for float32,
   same values for integer types with the same scl_slope/scl_inter).
   Saving a generated volume x [1,T,H,W] in the space of a scan it was trained on:
       ldm_nifti ref, out;  ldm_nifti_read(ctx, "scan.nii.gz", &ref);
       out = ref;  out.dim[0] = 3;  out.dim[1] = W;  out.dim[2] = H;  out.dim[3] = T;  out.dim[4] = 1;
       out.data = x;  out.nvox = (size_t)T * H * W;       // pixdim/orientation of ref; if
       ldm_nifti_write(ctx, "sample.nii.gz", &out, LDM_NII_FLOAT32);  // resized, scale pixdim
       ldm_nifti_free(&ref);                              // and srow yourself
   Writing: .nii, or gzip when the name ends in .gz, compressed by a small deflate encoder of
   this file: one block of fixed Huffman codes over greedy LZ77 matches (32 KiB window), no
   dynamic codes; background runs shrink to almost nothing, but the file is larger than gzip
   -6 makes it (a test volume: 29% of raw here, 19% with gzip -6). Data it cannot shrink
   (noise) is written as stored deflate blocks instead. float32 and
   float64 are written as they are with scl_slope 1, scl_inter 0; integer types store
   round((x - scl_inter) / scl_slope) (half to even; scl_slope 0 counts as 1), and a value
   that does not fit, or NaN, is LDM_ERR_INVALID naming the voxel.

   Resampling conventions (ldm_data_resize; src and dst are float planes, tested against
   PyTorch 1.13 F.interpolate, OpenCV 4.6 cv2.resize and Pillow 9.4):
       NEAREST   src = min(floor(dst * in/out), in-1): torch "nearest" = cv2 INTER_NEAREST.
       BILINEAR  half-pixel centres, src = (dst+0.5)*in/out - 0.5 clamped at 0, edge pixels
                 replicated, no antialiasing: torch "bilinear" (align_corners=False,
                 antialias=False) = cv2 INTER_LINEAR (cv2 differs by float rounding only).
       BICUBIC   the same centres, Keys cubic a = -0.75, 4 taps with indices clamped: torch
                 "bicubic" (align_corners=False) = cv2 INTER_CUBIC (float rounding only).
       AREA      OpenCV INTER_AREA. Shrinking both ways: each output pixel averages the input
                 pixels it covers, weighted by the covered fraction. Integer factors give
                 plain box averages = torch "area" (adaptive_avg_pool2d); for non-integer
                 factors torch's adaptive pooling takes whole pixels and differs (by up to
                 tens of levels), cv2 is the reference. Enlarging in either direction: cv2's
                 linear interpolation with its area coefficients (fx = (d+1) - (s+1)/scale,
                 fractional part, 0 if negative), which is nearest for integer factors =
                 torch "area" there, and differs from torch otherwise.
       PIL_*     Pillow's resize filters. NEAREST: src = int(0.5*s + s + ... + s), the
                 position accumulated in double as Pillow does (= floor((dst+0.5) * in/out)
                 except at exact ties). BILINEAR, BICUBIC (a = -0.5), BOX, HAMMING, LANCZOS
                 (a = 3): antialiased, the filter support scaled by the downscale factor;
                 in float PIL_BILINEAR/PIL_BICUBIC = torch with antialias=True.
       volumes   ldm_data_resize3: BILINEAR over (H, W) slice by slice, then linear along T
                 with the same half-voxel centres: torch "trilinear" (align_corners=False).
   ldm_data_resize_u8 and the datasets keep CompVis's uint8 pipeline: every resized image is
   8-bit before the next step. OpenCV-style modes are computed in float and rounded half to
   even after clamping to [0, 255] (saturate_cast); OpenCV itself computes INTER_LINEAR,
   INTER_CUBIC and integer-factor INTER_AREA on uint8 in fixed point, so it differs by one
   level on some pixels. Pillow filters use Pillow's own arithmetic (22-bit fixed-point
   coefficients, horizontal pass to an 8-bit image, then vertical) and match it bit for bit.

   Loader (ldm_data_loader), DataLoader semantics as main.py sets them up: batch_size,
   shuffle (a Fisher-Yates permutation per epoch from (seed, epoch)), drop_last (default
   false, as torch's DataLoader), num_workers background threads that each build whole
   batches ahead of time (0 = in the calling thread), handed out strictly in order.
   ldm_data_loader_next returns LDM_OK with the next batch, LDM_DATA_END once at the end of
   each epoch (the next call starts the next epoch), or an error. The position
   (ldm_data_state: epoch and batch) can be saved and restored with ldm_data_loader_seek, and
   a resumed run sees exactly the batches an uninterrupted one would.
   With num_replicas > 1 the loader is one rank's DistributedSampler (drop_last false): the
   same shuffled order on every rank, padded by repeating its start to a multiple of
   num_replicas, rank r taking positions r, r + num_replicas, ...; batches are cut from that.

   Data module (ldm_data_module): batch_size, num_workers (main.py's default: 2*batch_size),
   datasets for train / validation / test / predict; train is shuffled, validation and test
   only with shuffle_val_dataloader / shuffle_test_loader, as main.py. `wrap` is accepted
   and changes nothing: main.py's WrappedDataset is a plain len/getitem passthrough.

   Config glue (compiled when ldm_config.h is included before this header): schemas for each
   dataset and for main.DataModuleFromConfig, and ldm_data_register() adding these targets to
   an ldm_config_registry (constructors take an ldm_ctx * as `arg` and make an ldm_dataset *):
       ldm.data.folder.ImageFolder (+Train, +Validation)  aliases ImageFolder, ImageFolderTrain, ...
       ldm.data.imagenet.ImageNetSRTrain / ImageNetSRValidation (image folder via root or data_root)
       ldm.data.mnist.FashionMNIST / ldm.data.mnist.MNIST (IDX; root or path, split train|test)
       ldm.data.cache.CacheDataset (params: dataset, max_mb)
       ldm.data.volume.VolumeDataset (aliases VolumeDataset, NiftiDataset): NIfTI volumes;
           params root/data_root, split, val_fraction, file_list, max_items, labels, norm
           (none | window | zscore | minmax), a_min, a_max, b_min, b_max, clip, resize and spatial_size
           ([T, H, W] or one size for all axes; -1 or 0 keeps an axis), random_crop, max_voxels
       main.DataModuleFromConfig (builds its splits through the same registry)

   stb_image: the implementation includes a private (static) copy of stb_image.h (looked up
   as third_party/stb_image.h next to this file, else "stb_image.h" on the include path),
   unless stb_image.h was included before it; then the program provides stb_image's
   implementation itself (STB_IMAGE_IMPLEMENTATION in one file). A program that uses
   stb_image too should include it (with its implementation) before this header.

   Errors: constructors and the loader return an ldm_result and set the context's message
   (ldm_ctx_seterr); ldm_dataset_get may run on several threads at once and writes its
   message into a caller buffer instead. Library code never exits. Warnings (skipped files)
   go to the `warn` callback of the options, or stderr.

   Options (define before including the implementation):
       LDM_STATIC, LDM_MALLOC/LDM_REALLOC/LDM_FREE as in ldm_tensor.h
       LDM_NO_THREADS     loaders load in the calling thread whatever num_workers says
*/
#ifndef LDM_DATA_H
#define LDM_DATA_H

#include <stddef.h>
#include <stdint.h>
#include "ldm_tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LDM_DATA_MAX_FIELDS 4      /* named tensors per item */
#define LDM_DATA_NAME_MAX 32
#define LDM_DATA_MAX_WORKERS 64
#define LDM_DATA_ERR_MAX 1024      /* size of the message buffers the library fills */
#define LDM_DATA_END 1             /* ldm_data_loader_next: the epoch is over (not an error) */

/* ---- resampling ------------------------------------------------------------------------- */
typedef enum ldm_data_interp {
    LDM_INTERP_AUTO = 0,          /* AREA when shrinking, BILINEAR when enlarging */
    LDM_INTERP_NEAREST, LDM_INTERP_BILINEAR, LDM_INTERP_BICUBIC, LDM_INTERP_AREA,
    LDM_INTERP_PIL_NEAREST, LDM_INTERP_PIL_BILINEAR, LDM_INTERP_PIL_BICUBIC, LDM_INTERP_PIL_BOX,
    LDM_INTERP_PIL_HAMMING, LDM_INTERP_PIL_LANCZOS
} ldm_data_interp;
/* "auto", "nearest", "bilinear", "bicubic", "area", the cv_ names (cv_nearest, cv_bilinear,
   cv_bicubic, cv_area) and pil_nearest/bilinear/bicubic/box/hamming/lanczos. Unknown:
   LDM_ERR_NOT_FOUND; cv_lanczos, bsrgan, bsrgan_light: LDM_ERR_UNSUPPORTED. msg (may be
   NULL) gets a sentence saying why. */
LDM_API ldm_result ldm_data_interp_parse(const char *name, ldm_data_interp *out, char *msg, size_t msg_size);
LDM_API const char *ldm_data_interp_name(ldm_data_interp m);
/* src [C,sh,sw] -> dst [C,dh,dw], float planes (no rounding). AUTO picks per the sizes.
   LDM_ERR_INVALID for non-positive sizes or an unknown mode; LDM_ERR_NOMEM. */
LDM_API ldm_result ldm_data_resize(float *dst, int dh, int dw, const float *src, int C, int sh, int sw,
                                   ldm_data_interp mode);
/* The same on 8-bit planes, rounded as the datasets do (see "Resampling conventions"). */
LDM_API ldm_result ldm_data_resize_u8(unsigned char *dst, int dh, int dw, const unsigned char *src, int C, int sh, int sw,
                                      ldm_data_interp mode);

/* ---- images, items, batches ------------------------------------------------------------- */
/* 8-bit planar image [c,h,w]: the base a dataset's `load` stage makes. */
typedef struct ldm_data_image {
    int c, h, w;
    unsigned char *px;            /* c*h*w bytes, malloc'd */
    int64_t label;                /* class label, -1: none */
    int64_t index;                /* dataset index actually read (differs after a skip) */
    int t;                        /* volumes: depth T (0 for 2-D images) */
    float *fx;                    /* volumes: [c,t,h,w] float voxels instead of px, malloc'd */
} ldm_data_image;
LDM_API void ldm_data_image_free(ldm_data_image *im);
/* Decodes a PNG/JPG/BMP/TGA/... file to channels (1 or 3) planes. LDM_ERR_IO (cannot open),
   LDM_ERR_FORMAT (cannot decode, with stb_image's reason), LDM_ERR_UNSUPPORTED (more pixels
   than ldm_data_max_pixels(): refused from the header before decoding); message in err. */
LDM_API ldm_result ldm_data_image_load(const char *path, int channels, ldm_data_image *out, char *err, size_t err_size);
/* Size caps that refuse a small file declaring a huge image or volume before allocating it.
   Pixels (w*h) of a 2-D image: default 2^26 (8192 x 8192), env LDM_MAX_PIXELS; voxels of a
   NIfTI volume: default 2^28 (1 GiB as float32), env LDM_MAX_VOXELS (a positive integer). A
   setter overrides both (n <= 0: back to the env var / default). Process-wide: set it before
   loaders start, not while they run. */
LDM_API int64_t ldm_data_max_pixels(void);
LDM_API void ldm_data_set_max_pixels(int64_t n);
LDM_API int64_t ldm_data_max_voxels(void);
LDM_API void ldm_data_set_max_voxels(int64_t n);

typedef struct ldm_data_field {
    char name[LDM_DATA_NAME_MAX];
    int c, h, w;
    float *data;                  /* [c,h,w] (or [c,t,h,w]), malloc'd, owned by the item */
    int t;                        /* depth of a volume field; 0: a 2-D field [c,h,w] */
} ldm_data_field;
typedef struct ldm_data_item {
    int n_fields;
    ldm_data_field field[LDM_DATA_MAX_FIELDS];
    int64_t class_label;          /* -1: none */
    int64_t index;                /* dataset index actually read */
} ldm_data_item;
LDM_API void ldm_data_item_free(ldm_data_item *it);
LDM_API const ldm_data_field *ldm_data_item_field(const ldm_data_item *it, const char *name); /* NULL if absent */
/* Adds a field [c,h,w] (uninitialised data) to it; for custom datasets. NULL when full or out of memory. */
LDM_API ldm_data_field *ldm_data_item_add(ldm_data_item *it, const char *name, int c, int h, int w);
/* A volume field [c,t,h,w] (t >= 1; collated to [B,c,t,h,w]). */
LDM_API ldm_data_field *ldm_data_item_add3(ldm_data_item *it, const char *name, int c, int t, int h, int w);

typedef struct ldm_data_bfield {
    char name[LDM_DATA_NAME_MAX];
    int64_t shape[5];             /* B, C, H, W (ndim 4) or B, C, T, H, W (ndim 5, volumes) */
    float *data;
    int ndim;                     /* 4 or 5 */
} ldm_data_bfield;
typedef struct ldm_data_batch {
    int size;                     /* B */
    int n_fields;
    ldm_data_bfield field[LDM_DATA_MAX_FIELDS];
    int64_t *class_label;         /* [B], or NULL when the items have none */
    int64_t *index;               /* [B] dataset indices */
    int64_t epoch, batch;         /* where the loader made it */
} ldm_data_batch;
/* Stacks n items (same field names and shapes, in the same order) into out (zeroed first;
   free with ldm_data_batch_free). Mismatches are LDM_ERR_INVALID naming items and shapes. */
LDM_API ldm_result ldm_data_collate(ldm_ctx *ctx, const ldm_data_item *items, int n, ldm_data_batch *out);
LDM_API void ldm_data_batch_free(ldm_data_batch *b);
LDM_API const ldm_data_bfield *ldm_data_batch_field(const ldm_data_batch *b, const char *name); /* NULL if absent */
/* The field as a host tensor struct over the batch's memory (data NULL when absent). */
LDM_API ldm_tensor ldm_data_batch_tensor(const ldm_data_batch *b, const char *name);

/* ---- datasets --------------------------------------------------------------------------- */
typedef struct ldm_dataset ldm_dataset;
/* For custom datasets. load and augment may be called from several threads at once (for
   different or equal i); they write a message into err on failure. load fills out->px/c/h/w
   and label; augment must not keep pointers into base. */
typedef struct ldm_dataset_vtable {
    const char *name;
    int64_t (*length)(void *self);
    ldm_result (*load)(void *self, int64_t i, ldm_data_image *out, char *err, size_t err_size);
    ldm_result (*augment)(void *self, int64_t i, const ldm_data_image *base, ldm_rng *rng,
                          ldm_data_item *out, char *err, size_t err_size);
    void (*destroy)(void *self);
} ldm_dataset_vtable;
/* Wraps self (owned from then on: destroy is called on failure too). */
LDM_API ldm_result ldm_dataset_create(ldm_ctx *ctx, ldm_dataset **out, const ldm_dataset_vtable *vt, void *self);
LDM_API void ldm_dataset_destroy(ldm_dataset *ds);
LDM_API int64_t ldm_dataset_len(const ldm_dataset *ds);
LDM_API const char *ldm_dataset_name(const ldm_dataset *ds);
/* Files skipped as unreadable so far (when scanning, and when decoding failed later). */
LDM_API int64_t ldm_dataset_skipped(const ldm_dataset *ds);
/* Item i (0 <= i < len) with the augmentation of (seed, epoch). Thread-safe. */
LDM_API ldm_result ldm_dataset_get(ldm_dataset *ds, int64_t i, uint64_t seed, int64_t epoch,
                                   ldm_data_item *out, char *err, size_t err_size);
/* The RNG of item `index` in `epoch`: Philox keyed by a hash of the three. */
LDM_API ldm_rng ldm_data_item_rng(uint64_t seed, int64_t epoch, int64_t index);
/* Uniform double in [0, 1) from 53 bits of one draw. */
LDM_API double ldm_data_uniform(ldm_rng *rng);

typedef void (*ldm_data_warn_fn)(void *user, const char *msg);

/* Which files of a folder a dataset uses. */
typedef struct ldm_data_folder_opts {
    const char *root;             /* directory (required) */
    const char *split;            /* NULL/"all", "train" or "validation" */
    double val_fraction;          /* split != all: round(n * val_fraction) files (at least 1 when
                                     > 0) spread evenly over the sorted list are validation: file j
                                     when floor((j+1) v / n) > floor(j v / n). Computed over every
                                     candidate before the header check, so a bad file never moves it */
    const char *file_list;        /* optional text file, one path per line (relative to root
                                     unless absolute, '#' comments): replaces the scan, keeps its order */
    int64_t max_items;            /* > 0: the first max_items files of the split */
    int labels;                   /* class_label = index of the file's directory among the
                                     sorted distinct directories (torchvision ImageFolder style) */
    ldm_data_warn_fn warn;        /* NULL: "warning: ..." on stderr */
    void *warn_user;
} ldm_data_folder_opts;

typedef struct ldm_data_image_folder_opts {
    ldm_data_folder_opts src;
    int size;                     /* 0: images are used as they are */
    int random_crop;              /* else centre crop */
    float flip_p;                 /* horizontal flip probability */
    int channels;                 /* 0 or 3: RGB; 1: grey */
    ldm_data_interp interp;       /* of the shorter-side rescale; AUTO by default */
} ldm_data_image_folder_opts;
LDM_API ldm_result ldm_dataset_image_folder(ldm_ctx *ctx, ldm_dataset **out, const ldm_data_image_folder_opts *o);

typedef struct ldm_data_sr_opts {
    ldm_data_folder_opts src;
    int size;                     /* required; divisible by downscale_f */
    int downscale_f;              /* 0: 4 */
    double min_crop_f, max_crop_f;/* both 0: 0.5, 1.0 */
    int random_crop;
    ldm_data_interp degradation;  /* AUTO: cv_bicubic */
} ldm_data_sr_opts;
LDM_API ldm_result ldm_dataset_imagenet_sr(ldm_ctx *ctx, ldm_dataset **out, const ldm_data_sr_opts *o);

typedef struct ldm_data_idx_opts {
    const char *images;           /* idx3-ubyte file, raw or .gz (required) */
    const char *labels;           /* idx1-ubyte file or NULL */
    int size;                     /* 0: the file's own size */
    int pad;                      /* 1: centred zero padding to size (needs size >= the file's); 0: resize */
    ldm_data_interp interp;       /* when resizing; AUTO: area/bilinear */
    int channels;                 /* 0 or 1: grey; 3: replicated */
    float flip_p;
    int64_t max_items;            /* > 0: the first max_items */
} ldm_data_idx_opts;
LDM_API ldm_result ldm_dataset_idx(ldm_ctx *ctx, ldm_dataset **out, const ldm_data_idx_opts *o);

/* Takes ownership of inner (also on failure). */
LDM_API ldm_result ldm_dataset_cache(ldm_ctx *ctx, ldm_dataset **out, ldm_dataset *inner, size_t max_bytes);
LDM_API size_t ldm_dataset_cache_bytes(const ldm_dataset *ds);   /* bytes held now (0: not a cache) */
LDM_API int64_t ldm_dataset_cache_count(const ldm_dataset *ds);  /* items held now */

/* ---- IDX files and gzip ----------------------------------------------------------------- */
typedef struct ldm_idx {
    int ndim;                     /* 1..4 */
    int64_t dims[4];
    unsigned char *data;          /* prod(dims) bytes (unsigned 8-bit elements), malloc'd */
    size_t size;
} ldm_idx;
/* Reads an IDX file (ubyte elements only), gunzipping it when it starts with the gzip magic.
   The header (magic 0 0 8 ndim, big-endian dims) and the file length are validated. */
LDM_API ldm_result ldm_idx_read(ldm_ctx *ctx, const char *path, ldm_idx *out);
LDM_API void ldm_idx_free(ldm_idx *x);
/* Inflates a single-member gzip file image; checks CRC-32 and ISIZE. name is for messages. */
LDM_API ldm_result ldm_gunzip(ldm_ctx *ctx, const unsigned char *in, size_t n, unsigned char **out,
                              size_t *out_size, const char *name);
LDM_API uint32_t ldm_crc32(uint32_t crc, const void *data, size_t n); /* start with 0 */

/* ---- NIfTI-1 volumes --------------------------------------------------------------------- */
/* NIfTI-1 datatype codes (nifti1.h NIFTI_TYPE_*) that are read and written. Others (complex,
   RGB, int64, float128, ...) are LDM_ERR_UNSUPPORTED. */
#define LDM_NII_UINT8 2
#define LDM_NII_INT16 4
#define LDM_NII_INT32 8
#define LDM_NII_FLOAT32 16
#define LDM_NII_FLOAT64 64
#define LDM_NII_INT8 256
#define LDM_NII_UINT16 512
typedef struct ldm_nifti {
    int dim[8];                   /* dim[0] = ndim (1..7), dim[1..ndim] = nx, ny, nz, nt, ... (>= 1); the rest 1 */
    float pixdim[8];              /* pixdim[0] = qfac (+1 or -1), pixdim[1..3] voxel size, [4] TR */
    int datatype;                 /* as stored (LDM_NII_*); the data below is float whatever it is */
    float scl_slope, scl_inter;   /* as stored; data already has them applied */
    int qform_code, sform_code;
    float quatern_b, quatern_c, quatern_d, qoffset_x, qoffset_y, qoffset_z;
    float srow_x[4], srow_y[4], srow_z[4];
    int xyzt_units, intent_code;
    char descrip[80];             /* zero-terminated */
    float *data;                  /* nvox voxels, x fastest (i, then j, k, t), malloc'd */
    size_t nvox;
} ldm_nifti;
/* Reads a single-file NIfTI-1 volume (.nii, or gzip'ed .nii.gz: detected by the gzip magic).
   Both byte orders (told by sizeof_hdr). Voxels become float: v * scl_slope + scl_inter when
   scl_slope is finite and non-zero, else v. A volume of more than ldm_data_max_voxels() is
   refused before its data is read or inflated. Errors name the file: LDM_ERR_IO (cannot
   open), LDM_ERR_FORMAT (short header, bad magic, dim out of range, data shorter than
   declared, bad gzip), LDM_ERR_UNSUPPORTED (datatype, .hdr/.img pairs, NIfTI-2, size cap). */
LDM_API ldm_result ldm_nifti_read(ldm_ctx *ctx, const char *path, ldm_nifti *out);
LDM_API void ldm_nifti_free(ldm_nifti *v);
/* Writes v (dim, pixdim, orientation, units, intent, descrip, data) to path: gzip'ed when the
   name ends in .gz (fixed-Huffman deflate, or stored blocks when that is not smaller), else
   plain .nii. datatype LDM_NII_FLOAT32 (or 0) / FLOAT64 store the floats, scl_slope 1,
   scl_inter 0. The integer types store round((x - scl_inter) / scl_slope) (half to even;
   slope 0 means 1) with v's scl_slope/scl_inter in the header; a voxel that is not finite or
   does not fit is LDM_ERR_INVALID naming it. */
LDM_API ldm_result ldm_nifti_write(ldm_ctx *ctx, const char *path, const ldm_nifti *v, int datatype);
/* A header for nx x ny x nz voxels of size 1 with an identity orientation (qform and sform
   code 1 = scanner), scl_slope 1; data NULL. Fill data (nx*ny*nz floats) before writing. */
LDM_API ldm_nifti ldm_nifti_make(int nx, int ny, int nz);

/* Volume resize: src [C,st,sh,sw] -> dst [C,dt,dh,dw], trilinear with half-voxel centres
   (PyTorch F.interpolate(mode="trilinear", align_corners=False), no antialiasing).
   LDM_ERR_INVALID for non-positive sizes, LDM_ERR_NOMEM. */
LDM_API ldm_result ldm_data_resize3(float *dst, int dt, int dh, int dw, const float *src, int C, int st, int sh, int sw);

/* NIfTI volume dataset: the .nii / .nii.gz files of a folder or list -> "image" [C,T,H,W]. */
typedef enum ldm_data_vol_norm {
    LDM_VOL_NONE = 0,             /* the scaled voxel values as they are */
    LDM_VOL_WINDOW,               /* MONAI ScaleIntensityRanged: (x - a_min) / (a_max - a_min) * (b_max - b_min)
                                     + b_min, clipped to [b_min, b_max] when clip */
    LDM_VOL_ZSCORE,               /* per volume: (x - mean) / std (population std; std 0: x - mean) */
    LDM_VOL_MINMAX                /* per volume, MONAI ScaleIntensity: (x - min) / (max - min) * (b_max - b_min)
                                     + b_min (max == min: b_min) */
} ldm_data_vol_norm;
typedef struct ldm_data_volume_opts {
    ldm_data_folder_opts src;     /* files ending .nii or .nii.gz (labels: directory classes) */
    ldm_data_vol_norm norm;
    float a_min, a_max, b_min, b_max;  /* LDM_VOL_WINDOW (a_min != a_max); b_min, b_max also for MINMAX */
    int clip;                     /* LDM_VOL_WINDOW: clip to [b_min, b_max] */
    int resize[3];                /* T, H, W: trilinear resize to this after normalising (0 in an axis: keep it) */
    int spatial_size[3];          /* T, H, W crop (0 in an axis: the whole axis); all 0: no crop */
    int random_crop;              /* offset floor((D - s + 1) * u) per axis (T, H, W draws); else centre (D - s) / 2 */
    int64_t max_voxels;           /* > 0: cap for this dataset instead of ldm_data_max_voxels() */
} ldm_data_volume_opts;
LDM_API ldm_result ldm_dataset_volume(ldm_ctx *ctx, ldm_dataset **out, const ldm_data_volume_opts *o);

/* ---- loader ----------------------------------------------------------------------------- */
typedef struct ldm_data_loader_opts {
    int batch_size;               /* required, >= 1 */
    int num_workers;              /* 0: in the calling thread; at most LDM_DATA_MAX_WORKERS */
    int shuffle;
    int drop_last;
    uint64_t seed;                /* order and augmentation */
    int prefetch;                 /* batches built ahead; 0: 2 * num_workers */
    int num_replicas, rank;       /* DistributedSampler (data-parallel ranks); 0: one process */
} ldm_data_loader_opts;
typedef struct ldm_data_state { int64_t epoch, batch; } ldm_data_state;
typedef struct ldm_data_loader ldm_data_loader;

/* ds stays owned by the caller and must outlive the loader. */
LDM_API ldm_result ldm_data_loader_create(ldm_ctx *ctx, ldm_data_loader **out, ldm_dataset *ds, const ldm_data_loader_opts *o);
LDM_API void ldm_data_loader_destroy(ldm_data_loader *ld);    /* stops and joins the workers */
/* LDM_OK: *batch is valid until the next call on this loader; LDM_DATA_END: the epoch is
   over (once per epoch; the next call begins the next one); < 0: an error (message in ctx;
   it repeats until ldm_data_loader_seek). */
LDM_API ldm_result ldm_data_loader_next(ldm_ctx *ctx, ldm_data_loader *ld, const ldm_data_batch **batch);
LDM_API ldm_data_state ldm_data_loader_state(const ldm_data_loader *ld); /* what next() returns next */
LDM_API ldm_result ldm_data_loader_seek(ldm_ctx *ctx, ldm_data_loader *ld, ldm_data_state st);
LDM_API int64_t ldm_data_loader_batches(const ldm_data_loader *ld);   /* per epoch */

/* ---- data module (main.DataModuleFromConfig) -------------------------------------------- */
typedef enum ldm_data_split {
    LDM_DATA_TRAIN = 0, LDM_DATA_VALIDATION, LDM_DATA_TEST, LDM_DATA_PREDICT, LDM_DATA_NSPLITS
} ldm_data_split;
typedef struct ldm_data_module {
    ldm_dataset *dataset[LDM_DATA_NSPLITS];  /* NULL: not configured; owned */
    int batch_size;
    int num_workers;
    int wrap;                     /* accepted, no effect (WrappedDataset is a passthrough) */
    int shuffle[LDM_DATA_NSPLITS];/* train 1, validation/test as configured, predict 0 */
    int num_replicas, rank;       /* data-parallel: loaders are this rank's DistributedSampler */
} ldm_data_module;
LDM_API const char *ldm_data_split_name(ldm_data_split s);  /* "train", "validation", "test", "predict" */
/* A loader over split s with the module's settings (drop_last false). LDM_ERR_NOT_FOUND when
   the split has no dataset. */
LDM_API ldm_result ldm_data_module_loader(ldm_ctx *ctx, ldm_data_module *dm, ldm_data_split s, uint64_t seed,
                                          ldm_data_loader **out);
LDM_API void ldm_data_module_destroy(ldm_data_module *dm);  /* the datasets and dm itself */

#ifdef __cplusplus
}
#endif
#endif /* LDM_DATA_H */

/* Config glue: declared when ldm_config.h came first (it may come after a first inclusion of
   this header that had no config, so this block has its own guard). */
#if defined(LDM_CONFIG_H) && !defined(LDM_DATA_CONFIG_H)
#define LDM_DATA_CONFIG_H
#ifdef __cplusplus
extern "C" {
#endif
/* Keys shared by the folder datasets; SPLIT is the default split. */
#define LDM__DATA_SRC_KEYS(X, SPLIT)                                                                        \
    X(root,         STR,   "",    "image directory (scanned recursively for png/jpg/jpeg/bmp/tga)")      \
    X(data_root,    STR,   "",    "the same as root (CompVis spelling); give one of them")               \
    X(split,        STR,   SPLIT, "all, train or validation (validation: every k-th sorted file)")       \
    X(val_fraction, FLOAT, "0.1", "share of the files in the validation split")                           \
    X(file_list,    STR,   "",    "text file of paths relative to root: replaces the directory scan")  \
    X(max_items,    I64,   "0",   "use only the first max_items files (0: all)")
#define LDM__DATA_FOLDER_KEYS(X, SPLIT, CROP, FLIP)                                                         \
    LDM__DATA_SRC_KEYS(X, SPLIT)                                                                            \
    X(size,          INT,   "0",    "shorter side rescaled to size, then a size x size crop (0: as is)")  \
    X(random_crop,   BOOL,  CROP,   "random crop (else centre crop)")                                     \
    X(flip_p,        FLOAT, FLIP,   "probability of a horizontal flip")                                   \
    X(channels,      INT,   "3",    "3 (RGB) or 1 (grey)")                                                \
    X(interpolation, STR,   "auto", "rescale filter: auto (area down, bilinear up), area, bilinear, bicubic, nearest, pil_*") \
    X(labels,        BOOL,  "false","class_label from the file's directory")
#define LDM_DATA_IMAGE_FOLDER_KEYS(X) LDM__DATA_FOLDER_KEYS(X, "all", "false", "0")
#define LDM_DATA_IMAGE_FOLDER_TRAIN_KEYS(X) LDM__DATA_FOLDER_KEYS(X, "train", "true", "0.5")
#define LDM_DATA_IMAGE_FOLDER_VALIDATION_KEYS(X) LDM__DATA_FOLDER_KEYS(X, "validation", "false", "0")
#define LDM__DATA_SR_KEYS(X, SPLIT)                                                                         \
    LDM__DATA_SRC_KEYS(X, SPLIT)                                                                            \
    X(size,        INT,   NULL,   "high-resolution size (crop rescaled to size x size)")                  \
    X(degradation, STR,   NULL,   "LR filter: cv_bicubic, cv_bilinear, cv_area, cv_nearest, pil_* (bsrgan unsupported)") \
    X(downscale_f, INT,   "4",    "LR_image is size / downscale_f")                                       \
    X(min_crop_f,  FLOAT, "0.5",  "crop side = min(H,W) * U(min_crop_f, max_crop_f)")                     \
    X(max_crop_f,  FLOAT, "1.0",  "at most 1")                                                            \
    X(random_crop, BOOL,  "true", "random crop (else centre crop)")
#define LDM_DATA_SR_TRAIN_KEYS(X) LDM__DATA_SR_KEYS(X, "train")
#define LDM_DATA_SR_VALIDATION_KEYS(X) LDM__DATA_SR_KEYS(X, "validation")
#define LDM__DATA_IDX_KEYS(X, ROOT)                                                                         \
    X(root,      STR,   ROOT,    "directory with {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]")        \
    X(path,      STR,   "",      "the same as root")                                                       \
    X(split,     STR,   "train", "train or test")                                                          \
    X(images,    STR,   "",      "explicit images file (overrides root/split)")                            \
    X(labels,    STR,   "",      "explicit labels file (overrides root/split)")                            \
    X(size,      INT,   "28",    "output size")                                                            \
    X(resize,    STR,   "pad",   "pad (centred, black) or a filter: bilinear, area, bicubic, nearest")    \
    X(channels,  INT,   "1",     "1 or 3 (replicated)")                                                    \
    X(flip_p,    FLOAT, "0",     "probability of a horizontal flip")                                       \
    X(max_items, I64,   "0",     "use only the first max_items (0: all)")
#define LDM_DATA_FASHION_MNIST_KEYS(X) LDM__DATA_IDX_KEYS(X, "/usr/share/datasets/fashion-mnist")
#define LDM_DATA_MNIST_KEYS(X) LDM__DATA_IDX_KEYS(X, "")
#define LDM_DATA_VOLUME_KEYS(X)                                                                             \
    X(root,         STR,   "",       "directory scanned recursively for .nii / .nii.gz volumes")           \
    X(data_root,    STR,   "",       "the same as root; give one of them")                                 \
    X(split,        STR,   "all",    "all, train or validation (validation: every k-th sorted file)")      \
    X(val_fraction, FLOAT, "0.1",    "share of the files in the validation split")                         \
    X(file_list,    STR,   "",       "text file of paths relative to root: replaces the directory scan")   \
    X(max_items,    I64,   "0",      "use only the first max_items files (0: all)")                        \
    X(labels,       BOOL,  "false",  "class_label from the file's directory")                              \
    X(norm,         STR,   "none",   "none, window (a_min..a_max -> b_min..b_max), zscore or minmax (per volume -> b_min..b_max)") \
    X(a_min,        FLOAT, "0",      "window: input value mapped to b_min (e.g. -1000 HU)")                \
    X(a_max,        FLOAT, "1",      "window: input value mapped to b_max (e.g. 1000 HU)")                 \
    X(b_min,        FLOAT, "-1",     "window: output at a_min; minmax: at the volume's minimum")           \
    X(b_max,        FLOAT, "1",      "window: output at a_max; minmax: at the volume's maximum")           \
    X(clip,         BOOL,  "true",   "window: clip the output to [b_min, b_max]")                         \
    X(resize,       INT_LIST, "",    "T, H, W (or one size for all): trilinear resize (0 or -1: keep that axis)") \
    X(spatial_size, INT_LIST, "",    "T, H, W (or one size for all) crop (0 or -1: the whole axis)")      \
    X(random_crop,  BOOL,  "false",  "random crop (else centre crop)")                                     \
    X(max_voxels,   I64,   "0",      "refuse volumes with more voxels (0: LDM_MAX_VOXELS or 2^28)")
#define LDM_DATA_CACHE_KEYS(X)                                                                              \
    X(dataset, NODE, NULL,   "the dataset to cache: {target: ..., params: {...}}")                         \
    X(max_mb,  INT,  "1024", "memory cap in MiB for the cached base images")
#define LDM_DATA_MODULE_KEYS(X)                                                                             \
    X(batch_size,             INT,  NULL,    "samples per batch")                                         \
    X(train,                  NODE, "",      "train dataset {target, params}")                            \
    X(validation,             NODE, "",      "validation dataset")                                        \
    X(test,                   NODE, "",      "test dataset")                                              \
    X(predict,                NODE, "",      "predict dataset")                                           \
    X(wrap,                   BOOL, "false", "WrappedDataset (a passthrough; no effect)")                 \
    X(num_workers,            INT,  "-1",    "loader threads (-1 or null: 2 * batch_size, at most 64)")   \
    X(shuffle_test_loader,    BOOL, "false", "shuffle the test split")                                    \
    X(use_worker_init_fn,     BOOL, "false", "accepted; augmentation is seeded per item anyway")          \
    X(shuffle_val_dataloader, BOOL, "false", "shuffle the validation split")

LDM_CONFIG_DECLARE(ldm_data_image_folder_params, LDM_DATA_IMAGE_FOLDER_KEYS);
LDM_CONFIG_DECLARE(ldm_data_sr_params, LDM_DATA_SR_TRAIN_KEYS);
LDM_CONFIG_DECLARE(ldm_data_idx_params, LDM_DATA_FASHION_MNIST_KEYS);
LDM_CONFIG_DECLARE(ldm_data_cache_params, LDM_DATA_CACHE_KEYS);
LDM_CONFIG_DECLARE(ldm_data_volume_params, LDM_DATA_VOLUME_KEYS);
LDM_CONFIG_DECLARE(ldm_data_module_params, LDM_DATA_MODULE_KEYS);
/* The schemas of the variants (same members, other defaults), for --help. */
LDM_API const ldm_config_field *ldm_data_image_folder_train_schema(void);
LDM_API const ldm_config_field *ldm_data_image_folder_validation_schema(void);
LDM_API const ldm_config_field *ldm_data_sr_validation_schema(void);
LDM_API const ldm_config_field *ldm_data_mnist_schema(void);

/* Registers the dataset targets and main.DataModuleFromConfig (its constructor makes an
   ldm_data_module * and instantiates the splits through reg, which must outlive that call).
   Every constructor takes an ldm_ctx * as `arg`. */
LDM_API ldm_result ldm_data_register(ldm_config_registry *reg);
/* node: the `data` mapping (target + params), or the root (then `data` is used). */
LDM_API ldm_result ldm_data_module_from_config(ldm_config *cfg, const ldm_config_registry *reg,
                                               const ldm_config_node *node, ldm_ctx *ctx, ldm_data_module **out);
#ifdef __cplusplus
}
#endif
#endif /* LDM_CONFIG_H && !LDM_DATA_CONFIG_H */

/* ========================================================================================== */
/*                                      IMPLEMENTATION                                        */
/* ========================================================================================== */
#if defined(LDM_IMPLEMENTATION) || defined(LDM_DATA_IMPLEMENTATION)
#ifndef LDM_DATA_IMPLEMENTATION_DONE
#define LDM_DATA_IMPLEMENTATION_DONE

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#ifndef LDM_NO_THREADS
#include <pthread.h>
#endif

#if !defined(LDM_MALLOC) && !defined(LDM_REALLOC) && !defined(LDM_FREE)
#define LDM_MALLOC(sz) malloc(sz)
#define LDM_REALLOC(p, sz) realloc(p, sz)
#define LDM_FREE(p) free(p)
#endif

/* A private copy of stb_image unless the program included its own first. */
#ifndef STBI_INCLUDE_STB_IMAGE_H
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wshadow"
#endif
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_FAILURE_USERMSG
#define STBI_NO_HDR
#define STBI_NO_LINEAR
#define STBI_MALLOC(sz) LDM_MALLOC(sz)
#define STBI_REALLOC(p, sz) LDM_REALLOC(p, sz)
#define STBI_FREE(p) LDM_FREE(p)
/* stb_image 2.27 declares this name but defines it as stbi__unpremultiply_on_load_thread;
   with static linkage that is a warning. One name for both. */
#define stbi_set_unpremultiply_on_load_thread stbi__unpremultiply_on_load_thread
#if defined(__has_include)
#if __has_include("third_party/stb_image.h")
#include "third_party/stb_image.h"
#define LDM__DATA_HAVE_STB
#endif
#endif
#ifndef LDM__DATA_HAVE_STB
#include "stb_image.h"
#endif
#undef STB_IMAGE_IMPLEMENTATION
#undef stbi_set_unpremultiply_on_load_thread
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#endif

/* ---- small helpers ---------------------------------------------------------------------- */
static ldm_result ldm__derr(char *err, size_t n, ldm_result code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
static ldm_result ldm__derr(char *err, size_t n, ldm_result code, const char *fmt, ...) {
    if (err && n) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, n, fmt, ap);
        va_end(ap);
    }
    return code;
}

static void *ldm__dalloc(size_t n) { return LDM_MALLOC(n ? n : 1); }
static void *ldm__dcalloc(size_t n) {
    void *p = LDM_MALLOC(n ? n : 1);
    if (p) memset(p, 0, n ? n : 1);
    return p;
}
static char *ldm__dstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = (char *)ldm__dalloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

static uint64_t ldm__dmix(uint64_t x) { /* splitmix64 */
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

LDM_API ldm_rng ldm_data_item_rng(uint64_t seed, int64_t epoch, int64_t index) {
    ldm_rng r;
    r.seed = ldm__dmix(ldm__dmix(ldm__dmix(seed) ^ (uint64_t)epoch) ^ (uint64_t)index);
    r.offset = 0;
    return r;
}

LDM_API double ldm_data_uniform(ldm_rng *rng) { return (double)(ldm_rng_u64(rng) >> 11) * (1.0 / 9007199254740992.0); }

/* Unbiased integer in [0, n). */
static uint64_t ldm__dbelow(ldm_rng *rng, uint64_t n) {
    uint64_t lim = (0 - n) % n, x;
    do x = ldm_rng_u64(rng); while (x < lim);
    return x % n;
}

static int ldm__dieq(const char *a, const char *b) { /* ASCII case-insensitive equality */
    for (; *a && *b; a++, b++) {
        int x = (unsigned char)*a, y = (unsigned char)*b;
        if (x >= 'A' && x <= 'Z') x += 32;
        if (y >= 'A' && y <= 'Z') y += 32;
        if (x != y) return 0;
    }
    return *a == *b;
}

/* Whole file into memory (LDM_MALLOC). */
static ldm_result ldm__dread_file(const char *path, unsigned char **out, size_t *size, char *err, size_t errn) {
    FILE *f = fopen(path, "rb");
    *out = NULL;
    *size = 0;
    if (!f) return ldm__derr(err, errn, LDM_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    unsigned char *buf = (unsigned char *)ldm__dalloc(cap);
    while (buf) {
        if (n == cap) {
            unsigned char *nb = (unsigned char *)LDM_REALLOC(buf, cap * 2);
            if (!nb) { LDM_FREE(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
        size_t k = fread(buf + n, 1, cap - n, f);
        n += k;
        if (k == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf) return ldm__derr(err, errn, LDM_ERR_NOMEM, "out of memory reading '%s'", path);
    if (bad) { LDM_FREE(buf); return ldm__derr(err, errn, LDM_ERR_IO, "read error on '%s'", path); }
    *out = buf;
    *size = n;
    return LDM_OK;
}

/* ---- CRC-32, gzip, IDX ------------------------------------------------------------------ */
LDM_API uint32_t ldm_crc32(uint32_t crc, const void *data, size_t n) {
    uint32_t table[256];
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        table[i] = c;
    }
    const unsigned char *p = (const unsigned char *)data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

static uint32_t ldm__dle32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint32_t ldm__dbe32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* Offset of the deflate data of a gzip member (header checked). */
static ldm_result ldm__dgz_start(const unsigned char *in, size_t n, size_t *start, const char *name, char *err, size_t errn) {
    if (n < 18) return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: not a gzip file (%lu bytes; gzip needs at least 18)", name, (unsigned long)n);
    if (in[0] != 0x1f || in[1] != 0x8b)
        return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: not a gzip file (starts %02x %02x, gzip starts 1f 8b)", name, in[0], in[1]);
    if (in[2] != 8) return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: gzip compression method %d is not deflate (8)", name, in[2]);
    int flg = in[3];
    if (flg & 0xe0) return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: gzip header has reserved flag bits set (0x%02x): corrupt file", name, flg);
    size_t p = 10;
    if (flg & 4) {
        if (p + 2 > n) goto truncated;
        p += 2 + ((size_t)in[p] | ((size_t)in[p + 1] << 8));
    }
    for (int bit = 8; bit <= 16; bit += 8)
        if (flg & bit) {
            while (p < n && in[p]) p++;
            p++;
        }
    if (flg & 2) p += 2;
    if (p > n || n - p < 8) goto truncated;
    *start = p;
    return LDM_OK;
truncated:
    return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: truncated gzip file (%lu bytes end inside the header)", name, (unsigned long)n);
}

static ldm_result ldm__dgunzip(const unsigned char *in, size_t n, unsigned char **out, size_t *out_size,
                               const char *name, char *err, size_t errn) {
    size_t p = 0;
    *out = NULL;
    *out_size = 0;
    ldm_result r = ldm__dgz_start(in, n, &p, name, err, errn);
    if (r) return r;
    {
        size_t clen = n - 8 - p;
        if (clen > (size_t)INT_MAX) return ldm__derr(err, errn, LDM_ERR_UNSUPPORTED, "%s: compressed data over 2 GiB is not supported", name);
        int olen = 0;
        /* The 8 trailer bytes stay in the input: stb_image's inflater fails when the deflate
           stream ends exactly at the buffer's end (it expects PNG's Adler-32 after it). */
        char *o = stbi_zlib_decode_noheader_malloc((const char *)in + p, (int)(clen + 8), &olen);
        if (!o) return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: corrupt deflate data (%s)", name, stbi_failure_reason());
        uint32_t crc = ldm__dle32(in + n - 8), isize = ldm__dle32(in + n - 4);
        if ((uint32_t)olen != isize) {
            stbi_image_free(o);
            return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: gzip length check failed: inflated %d bytes, the trailer says %u (truncated or corrupt file)",
                             name, olen, (unsigned)isize);
        }
        if (ldm_crc32(0, o, (size_t)olen) != crc) {
            stbi_image_free(o);
            return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: gzip CRC-32 mismatch (corrupt file, or several gzip members, which are not supported)", name);
        }
        unsigned char *copy = (unsigned char *)ldm__dalloc((size_t)olen);
        if (!copy) { stbi_image_free(o); return ldm__derr(err, errn, LDM_ERR_NOMEM, "%s: out of memory for %d inflated bytes", name, olen); }
        memcpy(copy, o, (size_t)olen);
        stbi_image_free(o);
        *out = copy;
        *out_size = (size_t)olen;
        return LDM_OK;
    }
}

LDM_API ldm_result ldm_gunzip(ldm_ctx *ctx, const unsigned char *in, size_t n, unsigned char **out, size_t *out_size, const char *name) {
    char err[LDM_DATA_ERR_MAX];
    ldm_result r = ldm__dgunzip(in, n, out, out_size, name ? name : "<memory>", err, sizeof err);
    return r ? ldm_ctx_seterr(ctx, r, "%s", err) : LDM_OK;
}

LDM_API void ldm_idx_free(ldm_idx *x) {
    if (!x) return;
    LDM_FREE(x->data);
    memset(x, 0, sizeof *x);
}

static ldm_result ldm__didx_read(const char *path, ldm_idx *out, char *err, size_t errn) {
    unsigned char *buf = NULL, *raw = NULL;
    size_t n = 0;
    ldm_result r;
    const char *how = "";
    memset(out, 0, sizeof *out);
    if ((r = ldm__dread_file(path, &buf, &n, err, errn)) != LDM_OK) return r;
    if (n >= 2 && buf[0] == 0x1f && buf[1] == 0x8b) {
        size_t m = 0;
        r = ldm__dgunzip(buf, n, &raw, &m, path, err, errn);
        LDM_FREE(buf);
        if (r) return r;
        buf = raw;
        n = m;
        how = " (after gunzip)";
    }
    if (n < 4) { r = ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: %lu bytes%s is too short for an IDX header", path, (unsigned long)n, how); goto fail; }
    if (buf[0] || buf[1]) {
        r = ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: not an IDX file%s (magic %02x %02x %02x %02x; IDX starts 00 00 <type> <ndim>)",
                      path, how, buf[0], buf[1], buf[2], buf[3]);
        goto fail;
    }
    if (buf[2] != 0x08) {
        const char *t = buf[2] == 0x09 ? "signed byte" : buf[2] == 0x0B ? "int16" : buf[2] == 0x0C ? "int32" : buf[2] == 0x0D ? "float32"
                        : buf[2] == 0x0E ? "float64" : NULL;
        r = t ? ldm__derr(err, errn, LDM_ERR_UNSUPPORTED, "%s: IDX element type 0x%02x (%s) is not supported; only unsigned bytes (0x08, as MNIST)", path, buf[2], t)
              : ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: unknown IDX element type 0x%02x (not an IDX file?)", path, buf[2]);
        goto fail;
    }
    out->ndim = buf[3];
    if (out->ndim < 1 || out->ndim > 4) {
        r = ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: IDX header has %d dimensions; 1 to 4 are supported", path, out->ndim);
        goto fail;
    }
    {
        size_t hdr = 4 + 4 * (size_t)out->ndim;
        if (n < hdr) { r = ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: truncated IDX header (%lu bytes%s, the header needs %lu)", path, (unsigned long)n, how, (unsigned long)hdr); goto fail; }
        uint64_t total = 1;
        char dims[96] = "";
        for (int d = 0; d < out->ndim; d++) {
            out->dims[d] = (int64_t)ldm__dbe32(buf + 4 + 4 * d);
            size_t k = strlen(dims);
            snprintf(dims + k, sizeof dims - k, "%s%lld", d ? " x " : "", (long long)out->dims[d]);
            if (out->dims[d] == 0 || out->dims[d] > (1ll << 31)) {
                r = ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: IDX dimension %d is %lld", path, d, (long long)out->dims[d]);
                goto fail;
            }
            total *= (uint64_t)out->dims[d];
            if (total > (1ull << 40)) { r = ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: IDX dimensions %s are implausibly large", path, dims); goto fail; }
        }
        if ((uint64_t)(n - hdr) < total) {
            r = ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: truncated: the IDX header says %s = %llu bytes of data, the file%s has %llu",
                          path, dims, (unsigned long long)total, how, (unsigned long long)(n - hdr));
            goto fail;
        }
        if ((uint64_t)(n - hdr) > total) {
            r = ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: %llu bytes after the %s = %llu bytes the IDX header describes (wrong header or corrupt file)",
                          path, (unsigned long long)(n - hdr - total), dims, (unsigned long long)total);
            goto fail;
        }
        memmove(buf, buf + hdr, (size_t)total);
        out->data = buf;
        out->size = (size_t)total;
        return LDM_OK;
    }
fail:
    LDM_FREE(buf);
    memset(out, 0, sizeof *out);
    return r;
}

LDM_API ldm_result ldm_idx_read(ldm_ctx *ctx, const char *path, ldm_idx *out) {
    char err[LDM_DATA_ERR_MAX];
    ldm_result r = ldm__didx_read(path, out, err, sizeof err);
    return r ? ldm_ctx_seterr(ctx, r, "%s", err) : LDM_OK;
}

/* ---- size caps -------------------------------------------------------------------------- */
/* 0: not set (then the env var, else the default, is read at each use: loader threads only
   read, so a setter called before loading starts is the only writer). */
static int64_t ldm__dmax_pix, ldm__dmax_vox;
static int64_t ldm__denv_cap(const char *var, int64_t def) {
    const char *e = getenv(var);
    if (e && *e) {
        char *end = NULL;
        long long v = strtoll(e, &end, 0);
        if (end && *end == 0 && v > 0) return (int64_t)v;
    }
    return def;
}
LDM_API int64_t ldm_data_max_pixels(void) { return ldm__dmax_pix > 0 ? ldm__dmax_pix : ldm__denv_cap("LDM_MAX_PIXELS", (int64_t)1 << 26); }
LDM_API void ldm_data_set_max_pixels(int64_t n) { ldm__dmax_pix = n > 0 ? n : 0; }
LDM_API int64_t ldm_data_max_voxels(void) { return ldm__dmax_vox > 0 ? ldm__dmax_vox : ldm__denv_cap("LDM_MAX_VOXELS", (int64_t)1 << 28); }
LDM_API void ldm_data_set_max_voxels(int64_t n) { ldm__dmax_vox = n > 0 ? n : 0; }

/* ---- NIfTI-1 ---------------------------------------------------------------------------- */
/* The 348-byte header (nifti1.h), fields at fixed offsets in the file's byte order, then 4
   extension bytes; a single-file volume's voxels start at vox_offset (>= 352). */
#define LDM__NII_HDR 348
#define LDM__NII_GZ_SLACK ((size_t)16 << 20) /* inflated bytes allowed after the declared data */
static uint32_t ldm__dn32(const unsigned char *p, int be) { return be ? ldm__dbe32(p) : ldm__dle32(p); }
static int ldm__dn16(const unsigned char *p, int be) {
    unsigned v = be ? ((unsigned)p[0] << 8) | p[1] : p[0] | ((unsigned)p[1] << 8);
    return v >= 0x8000u ? (int)v - 0x10000 : (int)v;
}
static float ldm__dnf(const unsigned char *p, int be) {
    uint32_t u = ldm__dn32(p, be);
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static int ldm__dnii_bytes(int dt) {
    switch (dt) {
    case LDM_NII_UINT8: case LDM_NII_INT8: return 1;
    case LDM_NII_INT16: case LDM_NII_UINT16: return 2;
    case LDM_NII_INT32: case LDM_NII_FLOAT32: return 4;
    case LDM_NII_FLOAT64: return 8;
    }
    return 0;
}
static const char *ldm__dnii_tname(int dt) {
    switch (dt) {
    case 0: return "DT_UNKNOWN";
    case 1: return "binary";
    case 2: return "uint8";
    case 4: return "int16";
    case 8: return "int32";
    case 16: return "float32";
    case 32: return "complex64";
    case 64: return "float64";
    case 128: return "RGB24";
    case 256: return "int8";
    case 512: return "uint16";
    case 768: return "uint32";
    case 1024: return "int64";
    case 1280: return "uint64";
    case 1536: return "float128";
    case 1792: return "complex128";
    case 2048: return "complex256";
    case 2304: return "RGBA32";
    }
    return "not a NIfTI-1 datatype";
}

LDM_API void ldm_nifti_free(ldm_nifti *v) {
    if (!v) return;
    LDM_FREE(v->data);
    v->data = NULL;
    v->nvox = 0;
}

LDM_API ldm_nifti ldm_nifti_make(int nx, int ny, int nz) {
    ldm_nifti v;
    memset(&v, 0, sizeof v);
    for (int i = 0; i < 8; i++) { v.dim[i] = 1; v.pixdim[i] = 1.0f; }
    v.dim[0] = 3;
    v.dim[1] = nx;
    v.dim[2] = ny;
    v.dim[3] = nz;
    v.pixdim[4] = 0.0f;
    v.datatype = LDM_NII_FLOAT32;
    v.scl_slope = 1.0f;
    v.qform_code = v.sform_code = 1;
    v.srow_x[0] = v.srow_y[1] = v.srow_z[2] = 1.0f;
    v.xyzt_units = 2; /* NIFTI_UNITS_MM */
    return v;
}

/* Parses and checks the header of b[0..n): a whole file image (check_len 1: the data must
   be there), or only its start (check_len 0). Fills everything but data; *off = vox_offset,
   *need = vox_offset + nvox * bytes. `how` is appended to messages (" (after gunzip)"). */
static ldm_result ldm__dnii_header(const unsigned char *b, size_t n, int check_len, const char *name, const char *how, int64_t cap,
                                   ldm_nifti *v, size_t *off, uint64_t *need, int *be_out, char *err, size_t errn) {
    memset(v, 0, sizeof *v);
    if (n < LDM__NII_HDR)
        return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: %lu bytes%s is too short for a NIfTI-1 header (348 bytes): truncated or not a NIfTI file",
                         name, (unsigned long)n, how);
    int be;
    uint32_t sz = ldm__dle32(b);
    if (sz == LDM__NII_HDR) be = 0;
    else if (ldm__dbe32(b) == LDM__NII_HDR) be = 1;
    else if (sz == 540 || ldm__dbe32(b) == 540)
        return ldm__derr(err, errn, LDM_ERR_UNSUPPORTED, "%s: a NIfTI-2 file (sizeof_hdr 540); only NIfTI-1 is supported (nibabel: nib.Nifti1Image.from_image)", name);
    else
        return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: not a NIfTI-1 file%s (sizeof_hdr is %u or %u byte-swapped; NIfTI-1 has 348)", name, how,
                         (unsigned)sz, (unsigned)ldm__dbe32(b));
    const unsigned char *m = b + 344;
    if (!memcmp(m, "ni1", 4))
        return ldm__derr(err, errn, LDM_ERR_UNSUPPORTED,
                         "%s: a NIfTI-1 header of a .hdr/.img pair (magic \"ni1\": the voxels are in a separate .img file); only single-file "
                         ".nii/.nii.gz is read (convert: nib.save(nib.load('x.hdr'), 'x.nii.gz'))", name);
    if (memcmp(m, "n+1", 4))
        return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: bad NIfTI-1 magic %02x %02x %02x %02x%s (a single-file volume has \"n+1\\0\")", name, m[0], m[1],
                         m[2], m[3], how);
    *be_out = be;
    for (int i = 0; i < 8; i++) v->dim[i] = ldm__dn16(b + 40 + 2 * i, be);
    int nd = v->dim[0];
    if (nd < 1 || nd > 7) return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: dim[0] = %d (the number of dimensions) must be 1..7", name, nd);
    uint64_t nvox = 1;
    for (int i = 1; i <= 7; i++) {
        if (i > nd) { v->dim[i] = 1; continue; }
        if (v->dim[i] < 1) return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: dim[%d] = %d must be >= 1 (dim[0] = %d)", name, i, v->dim[i], nd);
        nvox *= (uint64_t)v->dim[i]; /* at most 32767^7 < 2^105: checked against cap at each step */
        if (nvox > (uint64_t)cap) {
            char dims[96];
            int k = 0;
            for (int j = 1; j <= nd && k < (int)sizeof dims - 8; j++) k += snprintf(dims + k, sizeof dims - k, "%s%d", j > 1 ? " x " : "", v->dim[j]);
            return ldm__derr(err, errn, LDM_ERR_UNSUPPORTED,
                             "%s: declares %s voxels, over the cap of %lld (a corrupt header, or a volume too big to load: raise the cap with "
                             "LDM_MAX_VOXELS, ldm_data_set_max_voxels or the dataset's max_voxels)", name, dims, (long long)cap);
        }
    }
    v->datatype = ldm__dn16(b + 70, be);
    int bpv = ldm__dnii_bytes(v->datatype);
    if (!bpv)
        return ldm__derr(err, errn, LDM_ERR_UNSUPPORTED, "%s: NIfTI datatype %d (%s) is not supported (uint8 2, int16 4, int32 8, float32 16, float64 64, "
                         "int8 256, uint16 512 are)", name, v->datatype, ldm__dnii_tname(v->datatype));
    for (int i = 0; i < 8; i++) v->pixdim[i] = ldm__dnf(b + 76 + 4 * i, be);
    float vo = ldm__dnf(b + 108, be);
    if (!(vo >= 352.0f && vo <= 2147483647.0f) || vo != floorf(vo))
        return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: vox_offset %g is not a whole number >= 352 (a .nii's voxels follow the 348-byte header and 4 extension bytes)",
                         name, (double)vo);
    v->scl_slope = ldm__dnf(b + 112, be);
    v->scl_inter = ldm__dnf(b + 116, be);
    v->xyzt_units = b[123];
    v->intent_code = ldm__dn16(b + 68, be);
    memcpy(v->descrip, b + 148, 80);
    v->descrip[79] = 0;
    v->qform_code = ldm__dn16(b + 252, be);
    v->sform_code = ldm__dn16(b + 254, be);
    v->quatern_b = ldm__dnf(b + 256, be);
    v->quatern_c = ldm__dnf(b + 260, be);
    v->quatern_d = ldm__dnf(b + 264, be);
    v->qoffset_x = ldm__dnf(b + 268, be);
    v->qoffset_y = ldm__dnf(b + 272, be);
    v->qoffset_z = ldm__dnf(b + 276, be);
    for (int i = 0; i < 4; i++) {
        v->srow_x[i] = ldm__dnf(b + 280 + 4 * i, be);
        v->srow_y[i] = ldm__dnf(b + 296 + 4 * i, be);
        v->srow_z[i] = ldm__dnf(b + 312 + 4 * i, be);
    }
    v->nvox = (size_t)nvox;
    *off = (size_t)vo;
    *need = (uint64_t)*off + nvox * (uint64_t)bpv;
    if (check_len && *need > (uint64_t)n) {
        char dims[96];
        int k = 0;
        for (int j = 1; j <= nd && k < (int)sizeof dims - 8; j++) k += snprintf(dims + k, sizeof dims - k, "%s%d", j > 1 ? " x " : "", v->dim[j]);
        return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: data shorter than declared: %s %s voxels from offset %lu need %llu bytes, the file has %lu%s (truncated?)",
                         name, dims, ldm__dnii_tname(v->datatype), (unsigned long)*off, (unsigned long long)*need, (unsigned long)n, how);
    }
    return LDM_OK;
}

/* Voxels at b + off (checked to be there) -> v->data, scaled. */
static ldm_result ldm__dnii_voxels(const unsigned char *b, size_t off, int be, ldm_nifti *v, const char *name, char *err, size_t errn) {
    size_t n = v->nvox;
    int bpv = ldm__dnii_bytes(v->datatype);
    v->data = (float *)ldm__dalloc(sizeof(float) * n);
    if (!v->data) return ldm__derr(err, errn, LDM_ERR_NOMEM, "%s: out of memory for %lu voxels", name, (unsigned long)n);
    double slope = v->scl_slope, inter = v->scl_inter;
    int scale = isfinite(slope) && slope != 0.0; /* NIfTI: scl_slope 0 means unscaled */
    if (!isfinite(inter)) inter = 0.0;
    const unsigned char *p = b + off;
    for (size_t i = 0; i < n; i++, p += bpv) {
        double x;
        switch (v->datatype) {
        case LDM_NII_UINT8: x = p[0]; break;
        case LDM_NII_INT8: x = (signed char)p[0]; break;
        case LDM_NII_INT16: x = ldm__dn16(p, be); break;
        case LDM_NII_UINT16: x = be ? ((unsigned)p[0] << 8) | p[1] : p[0] | ((unsigned)p[1] << 8); break;
        case LDM_NII_INT32: x = (int32_t)ldm__dn32(p, be); break;
        case LDM_NII_FLOAT32: x = ldm__dnf(p, be); break;
        default: { /* FLOAT64 */
            uint64_t u = be ? ((uint64_t)ldm__dbe32(p) << 32) | ldm__dbe32(p + 4) : ((uint64_t)ldm__dle32(p + 4) << 32) | ldm__dle32(p);
            memcpy(&x, &u, 8);
        }
        }
        v->data[i] = (float)(scale ? x * slope + inter : x);
    }
    return LDM_OK;
}

/* Inflates a .nii.gz, checking the NIfTI header before inflating the body: a first pass
   into a small buffer yields the header (a failed pass still leaves its first 352 bytes in
   place: it only stops where a block or match of at most 65535 bytes no longer fits), so
   the voxel cap and the declared length are checked against the trailer's ISIZE before the
   body's buffer is allocated. */
#define LDM__NII_PEEK (352 + 65535 + 258)
static ldm_result ldm__dnii_gunzip(const unsigned char *in, size_t n, const char *name, int64_t cap, unsigned char **out, size_t *out_n,
                                   char *err, size_t errn) {
    size_t p = 0;
    ldm_nifti h;
    size_t off;
    uint64_t need;
    int be;
    *out = NULL;
    *out_n = 0;
    ldm_result r = ldm__dgz_start(in, n, &p, name, err, errn);
    if (r) return r;
    size_t clen = n - 8 - p;
    if (clen > (size_t)INT_MAX - 8) return ldm__derr(err, errn, LDM_ERR_UNSUPPORTED, "%s: compressed data over 2 GiB is not supported", name);
    uint32_t crc = ldm__dle32(in + n - 8), isize = ldm__dle32(in + n - 4);
    size_t peek = isize < LDM__NII_PEEK ? isize : LDM__NII_PEEK;
    unsigned char *buf = (unsigned char *)ldm__dcalloc(peek + 1);
    if (!buf) return ldm__derr(err, errn, LDM_ERR_NOMEM, "%s: out of memory", name);
    /* The trailer stays in the input: stb's inflater fails when a stream ends at the buffer's end. */
    int got = stbi_zlib_decode_noheader_buffer((char *)buf, (int)peek, (const char *)in + p, (int)(clen + 8));
    if (got >= 0 && (uint32_t)got == isize) { /* the whole file fitted */
        if (ldm_crc32(0, buf, (size_t)got) != crc) {
            LDM_FREE(buf);
            return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: gzip CRC-32 mismatch (corrupt file, or several gzip members, which are not supported)", name);
        }
        *out = buf;
        *out_n = (size_t)got;
        return LDM_OK;
    }
    if (got < 0 && isize < LDM__NII_PEEK) { /* the buffer held all the trailer declares */
        LDM_FREE(buf);
        return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: corrupt or truncated gzip data (or more than the %u bytes its trailer declares)", name, (unsigned)isize);
    }
    if (got >= 0) { /* ended early: the trailer's length is wrong */
        LDM_FREE(buf);
        return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: gzip length check failed: inflated %d bytes, the trailer says %u (truncated or corrupt file)", name, got,
                         (unsigned)isize);
    }
    r = ldm__dnii_header(buf, peek, 0, name, " (after gunzip)", cap, &h, &off, &need, &be, err, errn);
    LDM_FREE(buf);
    if (r) {
        if (r == LDM_ERR_FORMAT && isize >= LDM__NII_PEEK) {
            size_t k = strlen(err);
            snprintf(err + k, errn > k ? errn - k : 0, "; or corrupt deflate data");
        }
        return r;
    }
    if (need > (uint64_t)INT_MAX)
        return ldm__derr(err, errn, LDM_ERR_UNSUPPORTED, "%s: inflates to %llu bytes; .nii.gz over 2 GiB is not supported (store it as .nii)", name,
                         (unsigned long long)need);
    if ((uint64_t)isize < need)
        return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: data shorter than declared: the header needs %llu bytes, the gzip trailer says the file inflates to %u (truncated?)",
                         name, (unsigned long long)need, (unsigned)isize);
    if ((uint64_t)isize - need > LDM__NII_GZ_SLACK || isize > (uint32_t)INT_MAX)
        return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: the gzip trailer says %u bytes, %llu more than the header declares (corrupt file?)", name, (unsigned)isize,
                         (unsigned long long)((uint64_t)isize - need));
    buf = (unsigned char *)ldm__dalloc((size_t)isize);
    if (!buf) return ldm__derr(err, errn, LDM_ERR_NOMEM, "%s: out of memory for %u inflated bytes", name, (unsigned)isize);
    got = stbi_zlib_decode_noheader_buffer((char *)buf, (int)isize, (const char *)in + p, (int)(clen + 8));
    if (got < 0 || (uint32_t)got != isize) {
        LDM_FREE(buf);
        if (got < 0) return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: corrupt or truncated deflate data", name);
        return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: gzip length check failed: inflated %d bytes, the trailer says %u (truncated or corrupt file)", name, got,
                         (unsigned)isize);
    }
    if (ldm_crc32(0, buf, (size_t)got) != crc) {
        LDM_FREE(buf);
        return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: gzip CRC-32 mismatch (corrupt file, or several gzip members, which are not supported)", name);
    }
    *out = buf;
    *out_n = (size_t)got;
    return LDM_OK;
}

/* The whole read: file -> (gunzip) -> header -> voxels. cap <= 0: ldm_data_max_voxels(). */
static ldm_result ldm__dnii_read(const char *path, int64_t cap, ldm_nifti *v, char *err, size_t errn) {
    unsigned char *buf = NULL;
    size_t n = 0, off;
    uint64_t need;
    int be;
    const char *how = "";
    memset(v, 0, sizeof *v);
    if (cap <= 0) cap = ldm_data_max_voxels();
    ldm_result r = ldm__dread_file(path, &buf, &n, err, errn);
    if (r) return r;
    if (n >= 2 && buf[0] == 0x1f && buf[1] == 0x8b) {
        unsigned char *raw = NULL;
        size_t m = 0;
        r = ldm__dnii_gunzip(buf, n, path, cap, &raw, &m, err, errn);
        LDM_FREE(buf);
        if (r) return r;
        buf = raw;
        n = m;
        how = " (after gunzip)";
    }
    r = ldm__dnii_header(buf, n, 1, path, how, cap, v, &off, &need, &be, err, errn);
    if (r == LDM_OK) r = ldm__dnii_voxels(buf, off, be, v, path, err, errn);
    LDM_FREE(buf);
    if (r) ldm_nifti_free(v);
    return r;
}

LDM_API ldm_result ldm_nifti_read(ldm_ctx *ctx, const char *path, ldm_nifti *out) {
    char err[LDM_DATA_ERR_MAX];
    ldm_result r = ldm__dnii_read(path, 0, out, err, sizeof err);
    return r ? ldm_ctx_seterr(ctx, r, "%s", err) : LDM_OK;
}

/* Header check for the dataset's scan: a .nii's header and length; a .nii.gz only its gzip
   magic (its body is checked when it is read, under the skip rule). */
static ldm_result ldm__dnii_check(const char *path, int64_t cap, char *err, size_t errn) {
    unsigned char b[LDM__NII_HDR];
    FILE *f = fopen(path, "rb");
    if (!f) return ldm__derr(err, errn, LDM_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    size_t n = fread(b, 1, sizeof b, f);
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    fclose(f);
    if (n >= 2 && b[0] == 0x1f && b[1] == 0x8b) return LDM_OK;
    ldm_nifti h;
    size_t off;
    uint64_t need;
    int be;
    ldm_result r = ldm__dnii_header(b, n, 0, path, "", cap, &h, &off, &need, &be, err, errn);
    if (r == LDM_OK && size >= 0 && need > (uint64_t)size)
        r = ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: data shorter than declared: the header needs %llu bytes, the file has %ld (truncated?)", path,
                      (unsigned long long)need, size);
    return r;
}

/* ---- NIfTI-1 writing ---- */
static void ldm__dput16(unsigned char *p, int v) { p[0] = (unsigned char)(v & 255); p[1] = (unsigned char)((v >> 8) & 255); }
static void ldm__dput32(unsigned char *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static void ldm__dputf(unsigned char *p, float f) { uint32_t u; memcpy(&u, &f, 4); ldm__dput32(p, u); }

/* A small deflate compressor for .nii.gz: one block with the fixed Huffman codes (RFC 1951
   3.2.6) over greedy LZ77 matches (3-byte hash chains of at most 32 links, 32 KiB window).
   No dynamic codes, so it is not gzip -6, but the runs of equal voxels a volume's background
   is made of shrink to a few bits per 258 bytes. NULL when the result would not be smaller
   than n + n/8 (the caller then writes stored blocks). */
typedef struct ldm__dbits {
    unsigned char *p;
    size_t n, cap;
    uint64_t acc;
    int nb;
} ldm__dbits;
static int ldm__dbits_put(ldm__dbits *w, uint32_t v, int n) { /* n bits of v, LSB first */
    w->acc |= (uint64_t)v << w->nb;
    w->nb += n;
    while (w->nb >= 8) {
        if (w->n == w->cap) return 0;
        w->p[w->n++] = (unsigned char)w->acc;
        w->acc >>= 8;
        w->nb -= 8;
    }
    return 1;
}
static int ldm__dbits_code(ldm__dbits *w, uint32_t code, int len) { /* Huffman codes go MSB first */
    uint32_t r = 0;
    for (int i = 0; i < len; i++, code >>= 1) r = (r << 1) | (code & 1);
    return ldm__dbits_put(w, r, len);
}
static int ldm__dfixed_sym(ldm__dbits *w, int s) {
    if (s < 144) return ldm__dbits_code(w, 0x30u + (uint32_t)s, 8);
    if (s < 256) return ldm__dbits_code(w, 0x190u + (uint32_t)(s - 144), 9);
    if (s < 280) return ldm__dbits_code(w, (uint32_t)(s - 256), 7);
    return ldm__dbits_code(w, 0xC0u + (uint32_t)(s - 280), 8);
}
static int ldm__dfixed_match(ldm__dbits *w, int len, int dist) {
    static const short lbase[29] = {3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
    static const unsigned char lext[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
    static const unsigned short dbase[30] = {1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073,
                                             4097, 6145, 8193, 12289, 16385, 24577};
    static const unsigned char dext[30] = {0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
    int i = 28, j = 29;
    while (lbase[i] > len) i--;
    while (dbase[j] > dist) j--;
    return ldm__dfixed_sym(w, 257 + i) && ldm__dbits_put(w, (uint32_t)(len - lbase[i]), lext[i]) && ldm__dbits_code(w, (uint32_t)j, 5) &&
           ldm__dbits_put(w, (uint32_t)(dist - dbase[j]), dext[j]);
}
#define LDM__DZ_HASH 15
#define LDM__DZ_WIN 32768
static unsigned char *ldm__ddeflate(const unsigned char *in, size_t n, size_t *out_n) {
    ldm__dbits w;
    memset(&w, 0, sizeof w);
    w.cap = n + n / 8 + 64;
    w.p = (unsigned char *)ldm__dalloc(w.cap);
    int32_t *head = (int32_t *)ldm__dalloc(sizeof(int32_t) << LDM__DZ_HASH), *prev = (int32_t *)ldm__dalloc(sizeof(int32_t) * LDM__DZ_WIN);
    int ok = w.p && head && prev && n < ((size_t)1 << 31);
    if (ok) {
        for (size_t k = 0; k < ((size_t)1 << LDM__DZ_HASH); k++) head[k] = -1;
        ok = ldm__dbits_put(&w, 1, 1) && ldm__dbits_put(&w, 1, 2); /* BFINAL, BTYPE 01: fixed codes */
    }
#define LDM__DZ_H(p) ((((uint32_t)(p)[0] << 16 | (uint32_t)(p)[1] << 8 | (p)[2]) * 2654435761u) >> (32 - LDM__DZ_HASH))
    size_t i = 0;
    while (ok && i < n) {
        int best = 0, bdist = 0;
        if (i + 3 <= n) {
            int32_t cand = head[LDM__DZ_H(in + i)];
            size_t maxl = n - i < 258 ? n - i : 258;
            for (int chain = 0; chain < 32 && cand >= 0 && (size_t)cand < i && i - (size_t)cand <= LDM__DZ_WIN; chain++) {
                size_t l = 0;
                while (l < maxl && in[(size_t)cand + l] == in[i + l]) l++;
                if ((int)l > best) {
                    best = (int)l;
                    bdist = (int)(i - (size_t)cand);
                    if (l == maxl) break;
                }
                cand = prev[cand & (LDM__DZ_WIN - 1)];
            }
        }
        size_t adv = best >= 3 ? (size_t)best : 1;
        ok = best >= 3 ? ldm__dfixed_match(&w, best, bdist) : ldm__dfixed_sym(&w, in[i]);
        for (size_t e = i + adv; i < e; i++) /* every position enters the chains */
            if (i + 3 <= n) {
                uint32_t h = LDM__DZ_H(in + i);
                prev[i & (LDM__DZ_WIN - 1)] = head[h];
                head[h] = (int32_t)i;
            }
    }
#undef LDM__DZ_H
    ok = ok && ldm__dfixed_sym(&w, 256) && (w.nb == 0 || ldm__dbits_put(&w, 0, 8 - w.nb)); /* end of block, last byte */
    LDM_FREE(head);
    LDM_FREE(prev);
    if (!ok) { LDM_FREE(w.p); return NULL; }
    *out_n = w.n;
    return w.p;
}

/* The gzip image of raw[0..n): compressed (above) when that is smaller, else stored deflate
   blocks (no compression, valid gzip all the same). */
static unsigned char *ldm__dgzip(const unsigned char *raw, size_t n, size_t *out_n) {
    size_t nblk = n ? (n + 65534) / 65535 : 1, total = 10 + nblk * 5 + n + 8, zn = 0;
    unsigned char *z = ldm__ddeflate(raw, n, &zn);
    if (z && 10 + zn + 8 >= total) { LDM_FREE(z); z = NULL; }
    if (z) total = 10 + zn + 8;
    unsigned char *o = (unsigned char *)ldm__dalloc(total), *q = o;
    if (!o) { LDM_FREE(z); return NULL; }
    static const unsigned char hdr[10] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255}; /* no flags, mtime 0, OS unknown */
    memcpy(q, hdr, 10);
    q += 10;
    if (z) {
        memcpy(q, z, zn);
        q += zn;
        LDM_FREE(z);
        nblk = 0;
    }
    for (size_t b = 0, at = 0; b < nblk; b++) {
        size_t len = n - at < 65535 ? n - at : 65535;
        *q++ = (unsigned char)(b + 1 == nblk); /* BFINAL, BTYPE 00 */
        ldm__dput16(q, (int)len);
        ldm__dput16(q + 2, (int)(len ^ 0xffff));
        q += 4;
        memcpy(q, raw + at, len);
        q += len;
        at += len;
    }
    ldm__dput32(q, ldm_crc32(0, raw, n));
    ldm__dput32(q + 4, (uint32_t)n);
    *out_n = total;
    return o;
}

static ldm_result ldm__dnii_write(const char *path, const ldm_nifti *v, int dt, char *err, size_t errn) {
    if (dt == 0) dt = LDM_NII_FLOAT32;
    int bpv = ldm__dnii_bytes(dt);
    if (!bpv) return ldm__derr(err, errn, LDM_ERR_UNSUPPORTED, "%s: cannot write NIfTI datatype %d (%s)", path, dt, ldm__dnii_tname(dt));
    int nd = v->dim[0];
    if (nd < 1 || nd > 7) return ldm__derr(err, errn, LDM_ERR_INVALID, "%s: dim[0] = %d must be 1..7", path, nd);
    uint64_t nvox = 1;
    for (int i = 1; i <= nd; i++) {
        if (v->dim[i] < 1 || v->dim[i] > 32767) return ldm__derr(err, errn, LDM_ERR_INVALID, "%s: dim[%d] = %d must be 1..32767", path, i, v->dim[i]);
        nvox *= (uint64_t)v->dim[i];
    }
    if (!v->data || v->nvox != nvox)
        return ldm__derr(err, errn, LDM_ERR_INVALID, "%s: the volume has %lu voxels (data %s), its dims make %llu", path, (unsigned long)v->nvox,
                         v->data ? "set" : "NULL", (unsigned long long)nvox);
    if (nvox * (uint64_t)bpv > (uint64_t)INT_MAX - 352) return ldm__derr(err, errn, LDM_ERR_UNSUPPORTED, "%s: volumes over 2 GiB are not written", path);
    double slope = 1.0, inter = 0.0;
    int is_int = dt != LDM_NII_FLOAT32 && dt != LDM_NII_FLOAT64;
    if (is_int) {
        if (isfinite(v->scl_slope) && v->scl_slope != 0.0f) slope = v->scl_slope;
        if (isfinite(v->scl_inter) && isfinite(v->scl_slope) && v->scl_slope != 0.0f) inter = v->scl_inter;
    }
    size_t n = 352 + (size_t)nvox * bpv;
    unsigned char *b = (unsigned char *)ldm__dcalloc(n);
    if (!b) return ldm__derr(err, errn, LDM_ERR_NOMEM, "%s: out of memory", path);
    ldm__dput32(b, LDM__NII_HDR);
    b[38] = 'r'; /* regular, as nibabel writes */
    for (int i = 0; i < 8; i++) ldm__dput16(b + 40 + 2 * i, i <= nd ? v->dim[i] : 1);
    ldm__dput16(b + 68, v->intent_code);
    ldm__dput16(b + 70, dt);
    ldm__dput16(b + 72, bpv * 8);
    for (int i = 0; i < 8; i++) ldm__dputf(b + 76 + 4 * i, v->pixdim[i]);
    if (v->pixdim[0] != 1.0f && v->pixdim[0] != -1.0f) ldm__dputf(b + 76, 1.0f); /* qfac is +-1 */
    ldm__dputf(b + 108, 352.0f);
    ldm__dputf(b + 112, (float)slope);
    ldm__dputf(b + 116, (float)inter);
    b[123] = (unsigned char)v->xyzt_units;
    for (int i = 0; i < 79 && v->descrip[i]; i++) b[148 + i] = (unsigned char)v->descrip[i];
    ldm__dput16(b + 252, v->qform_code);
    ldm__dput16(b + 254, v->sform_code);
    ldm__dputf(b + 256, v->quatern_b);
    ldm__dputf(b + 260, v->quatern_c);
    ldm__dputf(b + 264, v->quatern_d);
    ldm__dputf(b + 268, v->qoffset_x);
    ldm__dputf(b + 272, v->qoffset_y);
    ldm__dputf(b + 276, v->qoffset_z);
    for (int i = 0; i < 4; i++) {
        ldm__dputf(b + 280 + 4 * i, v->srow_x[i]);
        ldm__dputf(b + 296 + 4 * i, v->srow_y[i]);
        ldm__dputf(b + 312 + 4 * i, v->srow_z[i]);
    }
    memcpy(b + 344, "n+1", 4);
    static const double lo[] = {0, 0, -128, 0, -32768, 0, -2147483648.0}, hi[] = {0, 255, 127, 65535, 32767, 0, 2147483647.0};
    int ti = dt == LDM_NII_UINT8 ? 1 : dt == LDM_NII_INT8 ? 2 : dt == LDM_NII_UINT16 ? 3 : dt == LDM_NII_INT16 ? 4 : dt == LDM_NII_INT32 ? 6 : 0;
    unsigned char *q = b + 352;
    for (size_t i = 0; i < (size_t)nvox; i++, q += bpv) {
        float x = v->data[i];
        if (dt == LDM_NII_FLOAT32) { ldm__dputf(q, x); continue; }
        if (dt == LDM_NII_FLOAT64) {
            double d = x;
            uint64_t u;
            memcpy(&u, &d, 8);
            ldm__dput32(q, (uint32_t)u);
            ldm__dput32(q + 4, (uint32_t)(u >> 32));
            continue;
        }
        double s = nearbyint(((double)x - inter) / slope);
        if (!(s >= lo[ti] && s <= hi[ti])) {
            LDM_FREE(b);
            return ldm__derr(err, errn, LDM_ERR_INVALID, "%s: voxel %lu = %g does not fit %s (stored (x - %g) / %g = %g; range %g..%g): choose another scl_slope/scl_inter or float32",
                             path, (unsigned long)i, (double)x, ldm__dnii_tname(dt), inter, slope, s, lo[ti], hi[ti]);
        }
        long iv = (long)s;
        if (bpv == 1) q[0] = (unsigned char)(iv & 255);
        else if (bpv == 2) ldm__dput16(q, (int)(iv & 0xffff));
        else ldm__dput32(q, (uint32_t)iv);
    }
    const unsigned char *w = b;
    size_t wn = n;
    unsigned char *gz = NULL;
    size_t pl = strlen(path);
    if (pl >= 3 && ldm__dieq(path + pl - 3, ".gz")) {
        gz = ldm__dgzip(b, n, &wn);
        if (!gz) { LDM_FREE(b); return ldm__derr(err, errn, LDM_ERR_NOMEM, "%s: out of memory", path); }
        w = gz;
    }
    FILE *f = fopen(path, "wb");
    ldm_result r = LDM_OK;
    if (!f) r = ldm__derr(err, errn, LDM_ERR_IO, "cannot create '%s': %s", path, strerror(errno));
    else {
        size_t put = fwrite(w, 1, wn, f);
        int bad = fclose(f) != 0 || put != wn;
        if (bad) r = ldm__derr(err, errn, LDM_ERR_IO, "write error on '%s' (disk full?)", path);
    }
    LDM_FREE(gz);
    LDM_FREE(b);
    return r;
}

LDM_API ldm_result ldm_nifti_write(ldm_ctx *ctx, const char *path, const ldm_nifti *v, int datatype) {
    char err[LDM_DATA_ERR_MAX];
    ldm_result r = ldm__dnii_write(path, v, datatype, err, sizeof err);
    return r ? ldm_ctx_seterr(ctx, r, "%s", err) : LDM_OK;
}

/* ---- resampling ------------------------------------------------------------------------- */
static const struct { const char *name; ldm_data_interp m; } ldm__dinterp_names[] = {
    {"auto", LDM_INTERP_AUTO}, {"nearest", LDM_INTERP_NEAREST}, {"bilinear", LDM_INTERP_BILINEAR},
    {"bicubic", LDM_INTERP_BICUBIC}, {"area", LDM_INTERP_AREA}, {"cv_nearest", LDM_INTERP_NEAREST},
    {"cv_bilinear", LDM_INTERP_BILINEAR}, {"cv_bicubic", LDM_INTERP_BICUBIC}, {"cv_area", LDM_INTERP_AREA},
    {"pil_nearest", LDM_INTERP_PIL_NEAREST}, {"pil_bilinear", LDM_INTERP_PIL_BILINEAR},
    {"pil_bicubic", LDM_INTERP_PIL_BICUBIC}, {"pil_box", LDM_INTERP_PIL_BOX},
    {"pil_hamming", LDM_INTERP_PIL_HAMMING}, {"pil_lanczos", LDM_INTERP_PIL_LANCZOS},
};
#define LDM__DN_INTERP ((int)(sizeof ldm__dinterp_names / sizeof ldm__dinterp_names[0]))

LDM_API ldm_result ldm_data_interp_parse(const char *name, ldm_data_interp *out, char *msg, size_t msg_size) {
    if (!name) name = "";
    for (int i = 0; i < LDM__DN_INTERP; i++)
        if (!strcmp(name, ldm__dinterp_names[i].name)) { *out = ldm__dinterp_names[i].m; return LDM_OK; }
    if (!strcmp(name, "cv_lanczos") || !strcmp(name, "bsrgan") || !strcmp(name, "bsrgan_light"))
        return ldm__derr(msg, msg_size, LDM_ERR_UNSUPPORTED, "'%s' is not implemented; use cv_bicubic, cv_bilinear, cv_area, cv_nearest or a pil_ filter", name);
    int best = -1, bd = 1 << 30;
    for (int i = 0; i < LDM__DN_INTERP; i++) {
        const char *a = name, *b = ldm__dinterp_names[i].name;
        size_t la = strlen(a), lb = strlen(b);
        if (la > 40 || lb > 40) continue;
        int dp[41][41];
        for (size_t x = 0; x <= la; x++) dp[x][0] = (int)x;
        for (size_t y = 0; y <= lb; y++) dp[0][y] = (int)y;
        for (size_t x = 1; x <= la; x++)
            for (size_t y = 1; y <= lb; y++) {
                int c = dp[x - 1][y - 1] + (a[x - 1] != b[y - 1]);
                if (dp[x - 1][y] + 1 < c) c = dp[x - 1][y] + 1;
                if (dp[x][y - 1] + 1 < c) c = dp[x][y - 1] + 1;
                dp[x][y] = c;
            }
        if (dp[la][lb] < bd) { bd = dp[la][lb]; best = i; }
    }
    if (best >= 0 && bd <= 3)
        return ldm__derr(msg, msg_size, LDM_ERR_NOT_FOUND, "unknown interpolation '%s' (did you mean '%s'?)", name, ldm__dinterp_names[best].name);
    return ldm__derr(msg, msg_size, LDM_ERR_NOT_FOUND, "unknown interpolation '%s' (known: auto, nearest, bilinear, bicubic, area, cv_*, pil_nearest, "
                     "pil_bilinear, pil_bicubic, pil_box, pil_hamming, pil_lanczos)", name);
}

LDM_API const char *ldm_data_interp_name(ldm_data_interp m) {
    switch (m) {
    case LDM_INTERP_AUTO: return "auto";
    case LDM_INTERP_NEAREST: return "nearest";
    case LDM_INTERP_BILINEAR: return "bilinear";
    case LDM_INTERP_BICUBIC: return "bicubic";
    case LDM_INTERP_AREA: return "area";
    case LDM_INTERP_PIL_NEAREST: return "pil_nearest";
    case LDM_INTERP_PIL_BILINEAR: return "pil_bilinear";
    case LDM_INTERP_PIL_BICUBIC: return "pil_bicubic";
    case LDM_INTERP_PIL_BOX: return "pil_box";
    case LDM_INTERP_PIL_HAMMING: return "pil_hamming";
    case LDM_INTERP_PIL_LANCZOS: return "pil_lanczos";
    }
    return "?";
}

/* Taps along one axis: output o reads in[idx[o*k + j]] with weight w[o*k + j]. */
typedef struct ldm__dtaps { int k; int *idx; float *w; } ldm__dtaps;

static int ldm__dclampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

static double ldm__dpil_filter(ldm_data_interp m, double x) {
    const double pi = 3.14159265358979323846;
    if (x < 0 && m != LDM_INTERP_PIL_BOX && m != LDM_INTERP_PIL_LANCZOS) x = -x;
    switch (m) {
    case LDM_INTERP_PIL_BOX: return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0;
    case LDM_INTERP_PIL_BILINEAR: return x < 1.0 ? 1.0 - x : 0.0;
    case LDM_INTERP_PIL_HAMMING:
        if (x == 0.0) return 1.0;
        if (x >= 1.0) return 0.0;
        x *= pi;
        return sin(x) / x * (0.54 + 0.46 * cos(x));
    case LDM_INTERP_PIL_BICUBIC: {
        const double a = -0.5;
        if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
        if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
        return 0.0;
    }
    case LDM_INTERP_PIL_LANCZOS: {
        if (x <= -3.0 || x >= 3.0) return 0.0;
        double s1 = x == 0.0 ? 1.0 : sin(pi * x) / (pi * x), x3 = x / 3.0;
        double s3 = x3 == 0.0 ? 1.0 : sin(pi * x3) / (pi * x3);
        return s1 * s3;
    }
    default: return 0.0;
    }
}

static double ldm__dpil_support(ldm_data_interp m) {
    switch (m) {
    case LDM_INTERP_PIL_BOX: return 0.5;
    case LDM_INTERP_PIL_BILINEAR: case LDM_INTERP_PIL_HAMMING: return 1.0;
    case LDM_INTERP_PIL_BICUBIC: return 2.0;
    case LDM_INTERP_PIL_LANCZOS: return 3.0;
    default: return 0.0;
    }
}

static float ldm__dcubic1(float x, float A) { return ((A + 2) * x - (A + 3)) * x * x + 1; }
static float ldm__dcubic2(float x, float A) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; }

/* area_down: OpenCV's coverage table (both axes shrink); otherwise AREA is OpenCV's linear
   interpolation with area coefficients. */
static int ldm__dtaps_make(ldm__dtaps *t, int in, int out, ldm_data_interp m, int area_down) {
    int k;
    double scale = (double)in / out;
    switch (m) {
    case LDM_INTERP_NEAREST: case LDM_INTERP_PIL_NEAREST: k = 1; break;
    case LDM_INTERP_BILINEAR: k = 2; break;
    case LDM_INTERP_BICUBIC: k = 4; break;
    case LDM_INTERP_AREA: k = area_down ? (int)ceil(scale) + 2 : 2; break;
    default: {
        double fs = scale < 1.0 ? 1.0 : scale;
        k = (int)ceil(ldm__dpil_support(m) * fs) * 2 + 1;
    }
    }
    t->k = k;
    t->idx = (int *)ldm__dcalloc(sizeof(int) * (size_t)k * (size_t)out);
    t->w = (float *)ldm__dcalloc(sizeof(float) * (size_t)k * (size_t)out);
    if (!t->idx || !t->w) { LDM_FREE(t->idx); LDM_FREE(t->w); t->idx = NULL; t->w = NULL; return 0; }
    float fscale = (float)in / (float)out; /* torch computes its scales in float */
    double pil_pos = 0.5 * scale;
    for (int o = 0; o < out; o++) {
        int *ix = t->idx + (size_t)o * k;
        float *w = t->w + (size_t)o * k;
        switch (m) {
        case LDM_INTERP_NEAREST: {
            int s = (int)floorf((float)o * fscale);
            ix[0] = s < in - 1 ? s : in - 1;
            w[0] = 1;
            break;
        }
        case LDM_INTERP_PIL_NEAREST: { /* Pillow's ImagingScaleAffine accumulates the position in double */
            int s = (int)pil_pos;
            pil_pos += scale;
            ix[0] = s < in - 1 ? s : in - 1;
            w[0] = 1;
            break;
        }
        case LDM_INTERP_BILINEAR: {
            float src = fscale * ((float)o + 0.5f) - 0.5f;
            if (src < 0) src = 0;
            int i0 = (int)src;
            float l1 = src - (float)i0;
            ix[0] = i0;
            ix[1] = i0 + (i0 < in - 1 ? 1 : 0);
            w[0] = 1.0f - l1;
            w[1] = l1;
            break;
        }
        case LDM_INTERP_BICUBIC: {
            const float A = -0.75f;
            float src = fscale * ((float)o + 0.5f) - 0.5f;
            float fl = floorf(src);
            int i0 = (int)fl;
            float tt = src - fl;
            w[0] = ldm__dcubic2(tt + 1.0f, A);
            w[1] = ldm__dcubic1(tt, A);
            w[2] = ldm__dcubic1(1.0f - tt, A);
            w[3] = ldm__dcubic2(2.0f - tt, A);
            for (int j = 0; j < 4; j++) ix[j] = ldm__dclampi(i0 - 1 + j, 0, in - 1);
            break;
        }
        case LDM_INTERP_AREA:
            if (area_down) {
                double fsx1 = o * scale, fsx2 = fsx1 + scale;
                double cell = scale < in - fsx1 ? scale : in - fsx1;
                int sx1 = (int)ceil(fsx1), sx2 = (int)floor(fsx2), j = 0;
                if (sx2 > in - 1) sx2 = in - 1;
                if (sx1 > sx2) sx1 = sx2;
                if (sx1 - fsx1 > 1e-3) { ix[j] = sx1 - 1; w[j++] = (float)((sx1 - fsx1) / cell); }
                for (int s = sx1; s < sx2; s++) { ix[j] = s; w[j++] = (float)(1.0 / cell); }
                if (fsx2 - sx2 > 1e-3) {
                    double a = fsx2 - sx2 < 1.0 ? fsx2 - sx2 : 1.0;
                    ix[j] = sx2;
                    w[j++] = (float)((a < cell ? a : cell) / cell);
                }
            } else {
                double inv = (double)out / in;
                int sx = (int)floor(o * scale);
                float fx = (float)((o + 1) - (sx + 1) * inv);
                fx = fx <= 0 ? 0.0f : fx - floorf(fx);
                if (sx >= in - 1) { fx = 0; sx = in - 1; }
                ix[0] = sx;
                ix[1] = sx + 1 < in ? sx + 1 : in - 1;
                w[0] = 1.0f - fx;
                w[1] = fx;
            }
            break;
        default: { /* Pillow's precompute_coeffs */
            double fs = scale < 1.0 ? 1.0 : scale, support = ldm__dpil_support(m) * fs;
            double center = (o + 0.5) * scale, ss = 1.0 / fs, ww = 0;
            int xmin = (int)(center - support + 0.5), xmax;
            if (xmin < 0) xmin = 0;
            xmax = (int)(center + support + 0.5);
            if (xmax > in) xmax = in;
            xmax -= xmin;
            if (xmax > k) xmax = k;
            for (int x = 0; x < xmax; x++) ww += ldm__dpil_filter(m, (x + xmin - center + 0.5) * ss);
            for (int x = 0; x < xmax; x++) {
                double f = ldm__dpil_filter(m, (x + xmin - center + 0.5) * ss);
                ix[x] = xmin + x;
                w[x] = (float)(ww != 0.0 ? f / ww : f);
            }
        }
        }
    }
    return 1;
}

static void ldm__dtaps_free(ldm__dtaps *t) {
    LDM_FREE(t->idx);
    LDM_FREE(t->w);
}

static int ldm__dis_pil(ldm_data_interp m) { return m >= LDM_INTERP_PIL_NEAREST && m <= LDM_INTERP_PIL_LANCZOS; }

/* Pillow's 8-bit resampling: coefficients in 22-bit fixed point (precompute_coeffs +
   normalize_coeffs_8bpc), horizontal pass into an 8-bit image, then vertical, each output
   clip8((2^21 + sum) >> 22). Bit-exact with Pillow's Image.resize. */
#define LDM__DPIL_BITS 22
static int ldm__dpil_coeffs(int in, int out, ldm_data_interp m, int *ksize, int **xmin, int **xcnt, int64_t **kk) {
    double scale = (double)in / out, fs = scale < 1.0 ? 1.0 : scale, support = ldm__dpil_support(m) * fs, ss = 1.0 / fs;
    int k = (int)ceil(support) * 2 + 1;
    *ksize = k;
    *xmin = (int *)ldm__dcalloc(sizeof(int) * (size_t)out);
    *xcnt = (int *)ldm__dcalloc(sizeof(int) * (size_t)out);
    *kk = (int64_t *)ldm__dcalloc(sizeof(int64_t) * (size_t)out * k);
    if (!*xmin || !*xcnt || !*kk) return 0;
    for (int o = 0; o < out; o++) {
        double center = (o + 0.5) * scale, ww = 0;
        int lo = (int)(center - support + 0.5), n;
        if (lo < 0) lo = 0;
        n = (int)(center + support + 0.5);
        if (n > in) n = in;
        n -= lo;
        if (n > k) n = k;
        for (int x = 0; x < n; x++) ww += ldm__dpil_filter(m, (x + lo - center + 0.5) * ss);
        for (int x = 0; x < n; x++) {
            double w = ldm__dpil_filter(m, (x + lo - center + 0.5) * ss);
            if (ww != 0.0) w /= ww;
            (*kk)[(size_t)o * k + x] = w < 0 ? (int64_t)(-0.5 + w * (1 << LDM__DPIL_BITS)) : (int64_t)(0.5 + w * (1 << LDM__DPIL_BITS));
        }
        (*xmin)[o] = lo;
        (*xcnt)[o] = n;
    }
    return 1;
}

static unsigned char ldm__dclip8(int64_t v) {
    v = (v + (1 << (LDM__DPIL_BITS - 1))) >> LDM__DPIL_BITS;
    return (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
}

static ldm_result ldm__dpil_resize_u8(unsigned char *dst, int dh, int dw, const unsigned char *src, int C, int sh, int sw, ldm_data_interp m) {
    int kh = 0, kv = 0, *hmin = NULL, *hcnt = NULL, *vmin = NULL, *vcnt = NULL;
    int64_t *hk = NULL, *vk = NULL;
    unsigned char *tmp = (unsigned char *)ldm__dalloc((size_t)C * sh * dw);
    ldm_result r = LDM_ERR_NOMEM;
    if (tmp && ldm__dpil_coeffs(sw, dw, m, &kh, &hmin, &hcnt, &hk) && ldm__dpil_coeffs(sh, dh, m, &kv, &vmin, &vcnt, &vk)) {
        for (int c = 0; c < C; c++)
            for (int y = 0; y < sh; y++) {
                const unsigned char *row = src + ((size_t)c * sh + y) * sw;
                unsigned char *o = tmp + ((size_t)c * sh + y) * dw;
                for (int x = 0; x < dw; x++) {
                    int64_t acc = 0;
                    const int64_t *k = hk + (size_t)x * kh;
                    for (int j = 0; j < hcnt[x]; j++) acc += (int64_t)row[hmin[x] + j] * k[j];
                    o[x] = dw == sw ? row[x] : ldm__dclip8(acc); /* Pillow skips a pass whose size is unchanged */
                }
            }
        for (int c = 0; c < C; c++)
            for (int y = 0; y < dh; y++) {
                const int64_t *k = vk + (size_t)y * kv;
                unsigned char *o = dst + ((size_t)c * dh + y) * dw;
                for (int x = 0; x < dw; x++) {
                    int64_t acc = 0;
                    if (dh == sh) { o[x] = tmp[((size_t)c * sh + y) * dw + x]; continue; }
                    for (int j = 0; j < vcnt[y]; j++) acc += (int64_t)tmp[((size_t)c * sh + vmin[y] + j) * dw + x] * k[j];
                    o[x] = ldm__dclip8(acc);
                }
            }
        r = LDM_OK;
    }
    LDM_FREE(tmp);
    LDM_FREE(hmin);
    LDM_FREE(hcnt);
    LDM_FREE(hk);
    LDM_FREE(vmin);
    LDM_FREE(vcnt);
    LDM_FREE(vk);
    return r;
}

/* Separable resize: horizontal pass into tmp [C,sh,dw], then vertical. */
static ldm_result ldm__dresize(float *dst, int dh, int dw, const float *src, int C, int sh, int sw, ldm_data_interp m) {
    if (dh <= 0 || dw <= 0 || sh <= 0 || sw <= 0 || C <= 0) return LDM_ERR_INVALID;
    if (m < LDM_INTERP_AUTO || m > LDM_INTERP_PIL_LANCZOS) return LDM_ERR_INVALID;
    if (m == LDM_INTERP_AUTO) m = (dh <= sh && dw <= sw) ? LDM_INTERP_AREA : LDM_INTERP_BILINEAR;
    int area_down = sh >= dh && sw >= dw;
    ldm__dtaps th, tv;
    memset(&th, 0, sizeof th);
    memset(&tv, 0, sizeof tv);
    float *tmp = (float *)ldm__dalloc(sizeof(float) * (size_t)C * (size_t)sh * (size_t)dw);
    if (!tmp || !ldm__dtaps_make(&th, sw, dw, m, area_down) || !ldm__dtaps_make(&tv, sh, dh, m, area_down)) {
        LDM_FREE(tmp);
        ldm__dtaps_free(&th);
        ldm__dtaps_free(&tv);
        return LDM_ERR_NOMEM;
    }
    for (int c = 0; c < C; c++)
        for (int y = 0; y < sh; y++) {
            const float *row = src + ((size_t)c * sh + y) * sw;
            float *o = tmp + ((size_t)c * sh + y) * dw;
            for (int x = 0; x < dw; x++) {
                const int *ix = th.idx + (size_t)x * th.k;
                const float *w = th.w + (size_t)x * th.k;
                float acc = 0;
                for (int j = 0; j < th.k; j++) acc += w[j] * row[ix[j]];
                o[x] = acc;
            }
        }
    for (int c = 0; c < C; c++)
        for (int y = 0; y < dh; y++) {
            const int *iy = tv.idx + (size_t)y * tv.k;
            const float *w = tv.w + (size_t)y * tv.k;
            float *o = dst + ((size_t)c * dh + y) * dw;
            for (int x = 0; x < dw; x++) o[x] = 0;
            for (int j = 0; j < tv.k; j++) {
                if (w[j] == 0.0f) continue;
                const float *row = tmp + ((size_t)c * sh + iy[j]) * dw;
                for (int x = 0; x < dw; x++) o[x] += w[j] * row[x];
            }
        }
    LDM_FREE(tmp);
    ldm__dtaps_free(&th);
    ldm__dtaps_free(&tv);
    return LDM_OK;
}

LDM_API ldm_result ldm_data_resize(float *dst, int dh, int dw, const float *src, int C, int sh, int sw, ldm_data_interp mode) {
    return ldm__dresize(dst, dh, dw, src, C, sh, sw, mode);
}

/* 8-bit planar resize as CompVis's uint8 pipeline: OpenCV-style modes in float, rounded half
   to even (saturate_cast); Pillow filters in Pillow's fixed point. Equal sizes copy. */
static ldm_result ldm__dresize_u8(unsigned char *dst, int dh, int dw, const unsigned char *src, int C, int sh, int sw,
                                  ldm_data_interp m, char *err, size_t errn) {
    size_t ns = (size_t)C * sh * sw, nd = (size_t)C * dh * dw;
    if (dh == sh && dw == sw) { memcpy(dst, src, ns); return LDM_OK; }
    if (ldm__dis_pil(m) && m != LDM_INTERP_PIL_NEAREST) {
        if (ldm__dpil_resize_u8(dst, dh, dw, src, C, sh, sw, m) == LDM_OK) return LDM_OK;
        return ldm__derr(err, errn, LDM_ERR_NOMEM, "out of memory resizing %dx%d to %dx%d", sw, sh, dw, dh);
    }
    float *a = (float *)ldm__dalloc(sizeof(float) * ns), *b = (float *)ldm__dalloc(sizeof(float) * nd);
    if (!a || !b) { LDM_FREE(a); LDM_FREE(b); return ldm__derr(err, errn, LDM_ERR_NOMEM, "out of memory resizing %dx%d to %dx%d", sw, sh, dw, dh); }
    for (size_t i = 0; i < ns; i++) a[i] = (float)src[i];
    ldm_result r = ldm__dresize(b, dh, dw, a, C, sh, sw, m);
    if (r == LDM_OK)
        for (size_t i = 0; i < nd; i++) {
            float v = b[i];
            v = v < 0 ? 0 : v > 255 ? 255 : v;
            dst[i] = (unsigned char)nearbyintf(v);
        }
    LDM_FREE(a);
    LDM_FREE(b);
    if (r) return ldm__derr(err, errn, r, "cannot resize %dx%d to %dx%d (%s)", sw, sh, dw, dh, r == LDM_ERR_NOMEM ? "out of memory" : "invalid sizes");
    return LDM_OK;
}

LDM_API ldm_result ldm_data_resize_u8(unsigned char *dst, int dh, int dw, const unsigned char *src, int C, int sh, int sw,
                                      ldm_data_interp mode) {
    if (dh <= 0 || dw <= 0 || sh <= 0 || sw <= 0 || C <= 0) return LDM_ERR_INVALID;
    return ldm__dresize_u8(dst, dh, dw, src, C, sh, sw, mode, NULL, 0);
}

/* ---- images, items, batches ------------------------------------------------------------- */
LDM_API void ldm_data_image_free(ldm_data_image *im) {
    if (!im) return;
    LDM_FREE(im->px);
    LDM_FREE(im->fx);
    im->px = NULL;
    im->fx = NULL;
    im->c = im->h = im->w = im->t = 0;
}

LDM_API ldm_result ldm_data_image_load(const char *path, int channels, ldm_data_image *out, char *err, size_t errn) {
    int w = 0, h = 0, n = 0;
    memset(out, 0, sizeof *out);
    out->label = -1;
    out->index = -1;
    if (channels != 1 && channels != 3) return ldm__derr(err, errn, LDM_ERR_INVALID, "%s: channels must be 1 or 3, got %d", path, channels);
    FILE *f = fopen(path, "rb");
    if (!f) return ldm__derr(err, errn, LDM_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    /* The header's size first: a few bytes can declare 2^24 x 2^24 pixels, which stb would
       try to allocate and fill (seconds and gigabytes) before failing. */
    int64_t cap = ldm_data_max_pixels();
    if (stbi_info_from_file(f, &w, &h, &n) && (int64_t)w * (int64_t)h > cap) {
        fclose(f);
        return ldm__derr(err, errn, LDM_ERR_UNSUPPORTED, "'%s' declares %d x %d pixels, over the cap of %lld (a corrupt header, or an image too big to "
                         "load: raise the cap with LDM_MAX_PIXELS or ldm_data_set_max_pixels)", path, w, h, (long long)cap);
    }
    unsigned char *px = stbi_load_from_file(f, &w, &h, &n, channels);
    fclose(f);
    if (!px) return ldm__derr(err, errn, LDM_ERR_FORMAT, "'%s' is not a readable image (%s)", path, stbi_failure_reason());
    size_t plane = (size_t)w * (size_t)h;
    out->px = (unsigned char *)ldm__dalloc(plane * (size_t)channels);
    if (!out->px) { stbi_image_free(px); return ldm__derr(err, errn, LDM_ERR_NOMEM, "out of memory decoding '%s' (%dx%d)", path, w, h); }
    for (int c = 0; c < channels; c++)
        for (size_t i = 0; i < plane; i++) out->px[(size_t)c * plane + i] = px[i * (size_t)channels + (size_t)c];
    stbi_image_free(px);
    out->c = channels;
    out->h = h;
    out->w = w;
    return LDM_OK;
}

LDM_API void ldm_data_item_free(ldm_data_item *it) {
    if (!it) return;
    for (int i = 0; i < it->n_fields; i++) LDM_FREE(it->field[i].data);
    memset(it, 0, sizeof *it);
    it->class_label = -1;
}

LDM_API const ldm_data_field *ldm_data_item_field(const ldm_data_item *it, const char *name) {
    for (int i = 0; i < it->n_fields; i++)
        if (!strcmp(it->field[i].name, name)) return &it->field[i];
    return NULL;
}

LDM_API ldm_data_field *ldm_data_item_add(ldm_data_item *it, const char *name, int c, int h, int w) {
    if (it->n_fields >= LDM_DATA_MAX_FIELDS || c <= 0 || h <= 0 || w <= 0) return NULL;
    ldm_data_field *f = &it->field[it->n_fields];
    memset(f, 0, sizeof *f);
    snprintf(f->name, sizeof f->name, "%s", name);
    f->data = (float *)ldm__dalloc(sizeof(float) * (size_t)c * h * w);
    if (!f->data) return NULL;
    f->c = c;
    f->h = h;
    f->w = w;
    it->n_fields++;
    return f;
}

LDM_API ldm_data_field *ldm_data_item_add3(ldm_data_item *it, const char *name, int c, int t, int h, int w) {
    if (t <= 0 || c <= 0 || (int64_t)c * t > INT_MAX) return NULL;
    ldm_data_field *f = ldm_data_item_add(it, name, c * t, h, w); /* the same c*t*h*w floats */
    if (f) {
        f->c = c;
        f->t = t;
    }
    return f;
}

LDM_API void ldm_data_batch_free(ldm_data_batch *b) {
    if (!b) return;
    for (int i = 0; i < b->n_fields; i++) LDM_FREE(b->field[i].data);
    LDM_FREE(b->class_label);
    LDM_FREE(b->index);
    memset(b, 0, sizeof *b);
}

LDM_API const ldm_data_bfield *ldm_data_batch_field(const ldm_data_batch *b, const char *name) {
    for (int i = 0; i < b->n_fields; i++)
        if (!strcmp(b->field[i].name, name)) return &b->field[i];
    return NULL;
}

LDM_API ldm_tensor ldm_data_batch_tensor(const ldm_data_batch *b, const char *name) {
    const ldm_data_bfield *f = ldm_data_batch_field(b, name);
    if (!f) {
        ldm_tensor t;
        memset(&t, 0, sizeof t);
        t.node = -1;
        return t;
    }
    if (f->ndim == 5) return ldm_tensor_wrap(f->data, ldm_shape5(f->shape[0], f->shape[1], f->shape[2], f->shape[3], f->shape[4]), LDM_CPU);
    return ldm_tensor_wrap(f->data, ldm_shape4(f->shape[0], f->shape[1], f->shape[2], f->shape[3]), LDM_CPU);
}

/* Puts item k of a batch of B (allocated from item 0 when k == 0). */
static ldm_result ldm__dbatch_put(ldm_data_batch *b, int B, int k, const ldm_data_item *it, char *err, size_t errn) {
    if (k == 0) {
        memset(b, 0, sizeof *b);
        b->size = B;
        b->n_fields = it->n_fields;
        b->index = (int64_t *)ldm__dalloc(sizeof(int64_t) * (size_t)B);
        if (it->class_label >= 0) b->class_label = (int64_t *)ldm__dalloc(sizeof(int64_t) * (size_t)B);
        if (!b->index || (it->class_label >= 0 && !b->class_label)) goto oom;
        for (int i = 0; i < it->n_fields; i++) {
            const ldm_data_field *f = &it->field[i];
            ldm_data_bfield *bf = &b->field[i];
            memcpy(bf->name, f->name, sizeof bf->name);
            int64_t s5[5] = {B, f->c, f->t, f->h, f->w}, s4[4] = {B, f->c, f->h, f->w};
            bf->ndim = f->t > 0 ? 5 : 4;
            memcpy(bf->shape, f->t > 0 ? s5 : s4, sizeof(int64_t) * (size_t)bf->ndim);
            bf->data = (float *)ldm__dalloc(sizeof(float) * (size_t)B * f->c * (f->t > 0 ? f->t : 1) * f->h * f->w);
            if (!bf->data) goto oom;
        }
    }
    if (it->n_fields != b->n_fields)
        return ldm__derr(err, errn, LDM_ERR_INVALID, "cannot collate: item %lld has %d fields, item %lld has %d",
                         (long long)b->index[0], b->n_fields, (long long)it->index, it->n_fields);
    if ((it->class_label >= 0) != (b->class_label != NULL))
        return ldm__derr(err, errn, LDM_ERR_INVALID, "cannot collate: item %lld %s a class_label and item %lld %s",
                         (long long)b->index[0], b->class_label ? "has" : "has no", (long long)it->index, it->class_label >= 0 ? "has" : "has none");
    for (int i = 0; i < it->n_fields; i++) {
        const ldm_data_field *f = &it->field[i];
        ldm_data_bfield *bf = &b->field[i];
        int ft = f->t > 0 ? f->t : 0, bt = bf->ndim == 5 ? (int)bf->shape[2] : 0;
        const int64_t *hw = bf->shape + bf->ndim - 2;
        if (ft != bt && !strcmp(bf->name, f->name))
            return ldm__derr(err, errn, LDM_ERR_INVALID, "cannot collate: item %lld has \"%s\" with depth %d but item %lld has depth %d "
                             "(0: a 2-D field; volumes of different sizes need a resize or spatial_size)", (long long)b->index[0], bf->name, bt,
                             (long long)it->index, ft);
        if ((strcmp(bf->name, f->name) || bf->shape[1] != f->c || hw[0] != f->h || hw[1] != f->w) && ft)
            return ldm__derr(err, errn, LDM_ERR_INVALID,
                             "cannot collate: item %lld has \"%s\" [%lld, %lld, %lld, %lld] but item %lld has \"%s\" [%d, %d, %d, %d] "
                             "(volumes of different sizes need a resize or a spatial_size crop)",
                             (long long)b->index[0], bf->name, (long long)bf->shape[1], (long long)bf->shape[2], (long long)hw[0], (long long)hw[1],
                             (long long)it->index, f->name, f->c, ft, f->h, f->w);
        if (strcmp(bf->name, f->name) || bf->shape[1] != f->c || hw[0] != f->h || hw[1] != f->w)
            return ldm__derr(err, errn, LDM_ERR_INVALID,
                             "cannot collate: item %lld has \"%s\" [%lld, %lld, %lld] but item %lld has \"%s\" [%d, %d, %d] "
                             "(images of different sizes need a `size` to rescale and crop them to)",
                             (long long)b->index[0], bf->name, (long long)bf->shape[1], (long long)hw[0], (long long)hw[1],
                             (long long)it->index, f->name, f->c, f->h, f->w);
        size_t n = (size_t)f->c * (ft ? ft : 1) * f->h * f->w;
        memcpy(bf->data + (size_t)k * n, f->data, sizeof(float) * n);
    }
    b->index[k] = it->index;
    if (b->class_label) b->class_label[k] = it->class_label;
    return LDM_OK;
oom:
    ldm_data_batch_free(b);
    return ldm__derr(err, errn, LDM_ERR_NOMEM, "out of memory for a batch of %d", B);
}

LDM_API ldm_result ldm_data_collate(ldm_ctx *ctx, const ldm_data_item *items, int n, ldm_data_batch *out) {
    char err[LDM_DATA_ERR_MAX];
    memset(out, 0, sizeof *out);
    if (n <= 0) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_data_collate: %d items; a batch needs at least one", n);
    for (int k = 0; k < n; k++) {
        ldm_result r = ldm__dbatch_put(out, n, k, &items[k], err, sizeof err);
        if (r) { ldm_data_batch_free(out); return ldm_ctx_seterr(ctx, r, "%s", err); }
    }
    return LDM_OK;
}

/* base [c,h,w] 8-bit, window (y0, x0, hh, ww), optional flip -> field in [-1, 1]. */
static void ldm__dto_field(ldm_data_field *f, const unsigned char *px, int c, int h, int w, int y0, int x0, int flip, int out_c) {
    size_t plane = (size_t)h * w;
    for (int k = 0; k < out_c; k++) {
        const unsigned char *p = px + (size_t)(c == 1 ? 0 : k) * plane;
        float *o = f->data + (size_t)k * f->h * f->w;
        for (int y = 0; y < f->h; y++)
            for (int x = 0; x < f->w; x++) {
                int sx = flip ? x0 + f->w - 1 - x : x0 + x;
                o[(size_t)y * f->w + x] = (float)p[(size_t)(y0 + y) * w + sx] / 127.5f - 1.0f;
            }
    }
}

/* ---- datasets --------------------------------------------------------------------------- */
struct ldm_dataset {
    const ldm_dataset_vtable *vt;
    void *self;
    ldm_dataset *inner;           /* cache wrapper: what it wraps */
    int skip_unreadable;          /* folder datasets: replace items whose file fails to decode */
    unsigned char *bad;           /* [len]: 1 once index i failed */
    int64_t n_bad, scan_skipped;
    ldm_data_warn_fn warn;
    void *warn_user;
#ifndef LDM_NO_THREADS
    pthread_mutex_t mu;
#endif
};

static void ldm__dlock(ldm_dataset *ds) {
#ifndef LDM_NO_THREADS
    pthread_mutex_lock(&ds->mu);
#else
    (void)ds;
#endif
}
static void ldm__dunlock(ldm_dataset *ds) {
#ifndef LDM_NO_THREADS
    pthread_mutex_unlock(&ds->mu);
#else
    (void)ds;
#endif
}

static void ldm__dwarn(ldm_data_warn_fn fn, void *user, const char *msg) {
    if (fn) fn(user, msg);
    else { fprintf(stderr, "warning: %s\n", msg); fflush(stderr); }
}

LDM_API ldm_result ldm_dataset_create(ldm_ctx *ctx, ldm_dataset **out, const ldm_dataset_vtable *vt, void *self) {
    *out = NULL;
    if (!vt || !vt->length || !vt->load || !vt->augment) {
        if (vt && vt->destroy) vt->destroy(self);
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ldm_dataset_create: the vtable needs length, load and augment");
    }
    ldm_dataset *ds = (ldm_dataset *)ldm__dcalloc(sizeof *ds);
    if (!ds) {
        if (vt->destroy) vt->destroy(self);
        return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory creating dataset %s", vt->name ? vt->name : "");
    }
    ds->vt = vt;
    ds->self = self;
#ifndef LDM_NO_THREADS
    pthread_mutex_init(&ds->mu, NULL);
#endif
    *out = ds;
    return LDM_OK;
}

LDM_API void ldm_dataset_destroy(ldm_dataset *ds) {
    if (!ds) return;
    if (ds->vt->destroy) ds->vt->destroy(ds->self);
    ldm_dataset_destroy(ds->inner);
    LDM_FREE(ds->bad);
#ifndef LDM_NO_THREADS
    pthread_mutex_destroy(&ds->mu);
#endif
    LDM_FREE(ds);
}

LDM_API int64_t ldm_dataset_len(const ldm_dataset *ds) { return ds->vt->length(ds->self); }
LDM_API const char *ldm_dataset_name(const ldm_dataset *ds) { return ds->vt->name ? ds->vt->name : "dataset"; }

LDM_API int64_t ldm_dataset_skipped(const ldm_dataset *ds) {
    ldm_dataset *m = (ldm_dataset *)ds;
    ldm__dlock(m);
    int64_t n = ds->n_bad + ds->scan_skipped;
    ldm__dunlock(m);
    return n + (ds->inner ? ldm_dataset_skipped(ds->inner) : 0);
}

/* Load stage with the skip rule: a file that fails to decode is reported once, counted, and
   item i is read from the next index that decodes. */
static ldm_result ldm__dataset_load(ldm_dataset *ds, int64_t i, ldm_data_image *base, char *err, size_t errn) {
    int64_t len = ds->vt->length(ds->self);
    for (int64_t t = 0; t < len; t++) {
        int64_t j = (i + t) % len;
        if (ds->skip_unreadable) {
            ldm__dlock(ds);
            int bad = ds->bad[j];
            ldm__dunlock(ds);
            if (bad) continue;
        }
        memset(base, 0, sizeof *base);
        base->label = -1;
        base->index = -1;
        ldm_result r = ds->vt->load(ds->self, j, base, err, errn);
        if (r == LDM_OK) {
            if (base->index < 0) base->index = j; /* a wrapper (cache) may already know the file read */
            return LDM_OK;
        }
        ldm_data_image_free(base);
        if (!ds->skip_unreadable || (r != LDM_ERR_FORMAT && r != LDM_ERR_IO && r != LDM_ERR_UNSUPPORTED)) return r;
        ldm__dlock(ds);
        if (!ds->bad[j]) {
            char msg[LDM_DATA_ERR_MAX + 64];
            ds->bad[j] = 1;
            ds->n_bad++;
            snprintf(msg, sizeof msg, "%s: %s; skipped (item %lld reads the next file)", ldm_dataset_name(ds), err, (long long)i);
            ldm__dwarn(ds->warn, ds->warn_user, msg);
        }
        ldm__dunlock(ds);
    }
    return ldm__derr(err, errn, LDM_ERR_FORMAT, "%s: none of its %lld files decodes (see the warnings)", ldm_dataset_name(ds), (long long)len);
}

LDM_API ldm_result ldm_dataset_get(ldm_dataset *ds, int64_t i, uint64_t seed, int64_t epoch, ldm_data_item *out,
                                   char *err, size_t errn) {
    ldm_data_image base;
    memset(out, 0, sizeof *out);
    out->class_label = -1;
    int64_t len = ds->vt->length(ds->self);
    if (i < 0 || i >= len) return ldm__derr(err, errn, LDM_ERR_INVALID, "%s: index %lld out of range [0, %lld)", ldm_dataset_name(ds), (long long)i, (long long)len);
    ldm_result r = ldm__dataset_load(ds, i, &base, err, errn);
    if (r) return r;
    ldm_rng rng = ldm_data_item_rng(seed, epoch, i);
    r = ds->vt->augment(ds->self, i, &base, &rng, out, err, errn);
    if (r == LDM_OK) {
        out->index = base.index;
        if (out->class_label < 0) out->class_label = base.label;
    } else {
        ldm_data_item_free(out);
    }
    ldm_data_image_free(&base);
    return r;
}

/* ---- folders: scan, split, header check --------------------------------------------------- */
typedef struct ldm__dfolder {
    char **path;                  /* full paths */
    int64_t *label;
    int64_t n;
} ldm__dfolder;

typedef struct ldm__dstrs { char **v; int64_t n, cap; } ldm__dstrs;
static int ldm__dstrs_push(ldm__dstrs *s, char *p) {
    if (!p) return 0;
    if (s->n == s->cap) {
        int64_t cap = s->cap ? s->cap * 2 : 64;
        char **nv = (char **)LDM_REALLOC(s->v, sizeof(char *) * (size_t)cap);
        if (!nv) { LDM_FREE(p); return 0; }
        s->v = nv;
        s->cap = cap;
    }
    s->v[s->n++] = p;
    return 1;
}
static void ldm__dstrs_free(ldm__dstrs *s) {
    for (int64_t i = 0; i < s->n; i++) LDM_FREE(s->v[i]);
    LDM_FREE(s->v);
    memset(s, 0, sizeof *s);
}
static int ldm__dcmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int ldm__dis_image_name(const char *name) {
    const char *dot = strrchr(name, '.');
    static const char *const ext[] = {".png", ".jpg", ".jpeg", ".bmp", ".tga"};
    if (!dot) return 0;
    for (int i = 0; i < 5; i++)
        if (ldm__dieq(dot, ext[i])) return 1;
    return 0;
}
static int ldm__dis_nifti_name(const char *name) {
    size_t n = strlen(name);
    return (n > 4 && ldm__dieq(name + n - 4, ".nii")) || (n > 7 && ldm__dieq(name + n - 7, ".nii.gz"));
}

static char *ldm__djoin(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    int slash = la > 0 && a[la - 1] != '/';
    char *p = (char *)ldm__dalloc(la + lb + 2);
    if (!p) return NULL;
    memcpy(p, a, la);
    if (slash) p[la++] = '/';
    memcpy(p + la, b, lb + 1);
    return p;
}

/* Relative paths of image files under root/rel, recursively. Symbolic links are followed,
   except to a directory already being scanned (a loop); seen[] holds the open ancestors. */
typedef struct ldm__ddirid { uint64_t dev, ino; } ldm__ddirid;
#define LDM__DSCAN_DEPTH 32
static ldm_result ldm__dscan(const char *root, const char *rel, int depth, ldm__ddirid *seen, ldm__dstrs *out, int vol, char *err, size_t errn) {
    char *dir = rel[0] ? ldm__djoin(root, rel) : ldm__dstrdup(root);
    if (!dir) return ldm__derr(err, errn, LDM_ERR_NOMEM, "out of memory scanning '%s'", root);
    struct stat ds;
    if (stat(dir, &ds) == 0) {
        for (int i = 0; i < depth; i++)
            if (seen[i].dev == (uint64_t)ds.st_dev && seen[i].ino == (uint64_t)ds.st_ino) { LDM_FREE(dir); return LDM_OK; }
        seen[depth].dev = (uint64_t)ds.st_dev;
        seen[depth].ino = (uint64_t)ds.st_ino;
    }
    DIR *d = opendir(dir);
    if (!d) {
        ldm_result r = ldm__derr(err, errn, LDM_ERR_IO, "cannot open directory '%s': %s", dir, strerror(errno));
        LDM_FREE(dir);
        return r;
    }
    ldm_result r = LDM_OK;
    struct dirent *e;
    while (r == LDM_OK && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue; /* ., .., hidden files and directories */
        char *sub = rel[0] ? ldm__djoin(rel, e->d_name) : ldm__dstrdup(e->d_name);
        char *full = sub ? ldm__djoin(root, sub) : NULL;
        struct stat st;
        if (!sub || !full) r = ldm__derr(err, errn, LDM_ERR_NOMEM, "out of memory scanning '%s'", root);
        else if (stat(full, &st) != 0) { /* dangling link: not an image we could read */ }
        else if (S_ISDIR(st.st_mode)) {
            if (depth + 1 < LDM__DSCAN_DEPTH) r = ldm__dscan(root, sub, depth + 1, seen, out, vol, err, errn);
        } else if (S_ISREG(st.st_mode) && (vol ? ldm__dis_nifti_name(e->d_name) : ldm__dis_image_name(e->d_name))) {
            if (!ldm__dstrs_push(out, sub)) r = ldm__derr(err, errn, LDM_ERR_NOMEM, "out of memory scanning '%s'", root);
            sub = NULL;
        }
        LDM_FREE(sub);
        LDM_FREE(full);
    }
    closedir(d);
    LDM_FREE(dir);
    return r;
}

static ldm_result ldm__dread_list(const char *list, ldm__dstrs *out, char *err, size_t errn) {
    unsigned char *buf;
    size_t n;
    ldm_result r = ldm__dread_file(list, &buf, &n, err, errn);
    if (r) return r;
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && buf[j] != '\n') j++;
        size_t a = i, b = j;
        while (a < b && (buf[a] == ' ' || buf[a] == '\t')) a++;
        while (b > a && (buf[b - 1] == ' ' || buf[b - 1] == '\t' || buf[b - 1] == '\r')) b--;
        if (b > a && buf[a] != '#') {
            char *p = (char *)ldm__dalloc(b - a + 1);
            if (p) { memcpy(p, buf + a, b - a); p[b - a] = 0; }
            if (!ldm__dstrs_push(out, p)) { LDM_FREE(buf); return ldm__derr(err, errn, LDM_ERR_NOMEM, "out of memory reading '%s'", list); }
        }
        i = j + 1;
    }
    LDM_FREE(buf);
    return LDM_OK;
}

static void ldm__dfolder_free(ldm__dfolder *f) {
    for (int64_t i = 0; i < f->n; i++) LDM_FREE(f->path[i]);
    LDM_FREE(f->path);
    LDM_FREE(f->label);
    memset(f, 0, sizeof *f);
}

/* Scans (or reads the list), splits, checks headers; `what` names the dataset in messages.
   vol_cap 0: image files; > 0: NIfTI volumes, checked against that voxel cap. */
static ldm_result ldm__dfolder_open(ldm_ctx *ctx, ldm__dfolder *f, const ldm_data_folder_opts *o, const char *what,
                                    int64_t *skipped, int64_t vol_cap) {
    char err[LDM_DATA_ERR_MAX];
    ldm__dstrs rel;
    ldm_result r;
    int want_val = 0;
    memset(f, 0, sizeof *f);
    memset(&rel, 0, sizeof rel);
    *skipped = 0;
    if (!o->root || !o->root[0]) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: no root directory given", what);
    const char *split = o->split && o->split[0] ? o->split : "all";
    if (!strcmp(split, "validation") || !strcmp(split, "val")) want_val = 1;
    else if (!strcmp(split, "train")) want_val = 0;
    else if (strcmp(split, "all"))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: split '%s' is not all, train or validation", what, split);
    if (!(o->val_fraction >= 0.0 && o->val_fraction <= 1.0))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "%s: val_fraction = %g must be in [0, 1]", what, o->val_fraction);
    if (o->file_list && o->file_list[0]) r = ldm__dread_list(o->file_list, &rel, err, sizeof err);
    else {
        struct stat st;
        if (stat(o->root, &st) != 0 || !S_ISDIR(st.st_mode))
            return ldm_ctx_seterr(ctx, LDM_ERR_IO, "%s: '%s' is not a directory (%s)", what, o->root, stat(o->root, &st) ? strerror(errno) : "a file");
        ldm__ddirid seen[LDM__DSCAN_DEPTH];
        r = ldm__dscan(o->root, "", 0, seen, &rel, vol_cap > 0, err, sizeof err);
        if (r == LDM_OK && rel.n > 1) qsort(rel.v, (size_t)rel.n, sizeof(char *), ldm__dcmp_str);
    }
    if (r) { ldm__dstrs_free(&rel); return ldm_ctx_seterr(ctx, r, "%s: %s", what, err); }
    int64_t total = rel.n, nval = 0;
    if (strcmp(split, "all") && o->val_fraction > 0 && total > 0) {
        nval = (int64_t)llround((double)total * o->val_fraction);
        if (nval < 1) nval = 1;
        if (nval > total) nval = total;
    }
    f->path = (char **)ldm__dcalloc(sizeof(char *) * (size_t)(total ? total : 1));
    char **dirs = (char **)ldm__dcalloc(sizeof(char *) * (size_t)(total ? total : 1));
    if (!f->path || !dirs) { r = LDM_ERR_NOMEM; snprintf(err, sizeof err, "out of memory"); goto done; }
    for (int64_t j = 0; j < total; j++) {
        if (strcmp(split, "all")) {
            int is_val = (uint64_t)(j + 1) * (uint64_t)nval / (uint64_t)total > (uint64_t)j * (uint64_t)nval / (uint64_t)total;
            if (is_val != want_val) continue;
        }
        if (o->max_items > 0 && f->n >= o->max_items) break;
        char *full = rel.v[j][0] == '/' ? ldm__dstrdup(rel.v[j]) : ldm__djoin(o->root, rel.v[j]);
        if (!full) { r = LDM_ERR_NOMEM; snprintf(err, sizeof err, "out of memory"); goto done; }
        int w = 0, h = 0, comp = 0, info = 0;
        if (vol_cap > 0) {
            char why[LDM_DATA_ERR_MAX];
            if (ldm__dnii_check(full, vol_cap, why, sizeof why)) {
                char msg[LDM_DATA_ERR_MAX + 64];
                snprintf(msg, sizeof msg, "%s: %s; skipped", what, why);
                ldm__dwarn(o->warn, o->warn_user, msg);
                (*skipped)++;
                LDM_FREE(full);
                continue;
            }
        } else if (!(info = stbi_info(full, &w, &h, &comp)) || (int64_t)w * h > ldm_data_max_pixels()) {
            char msg[LDM_DATA_ERR_MAX];
            int ok = info;
            FILE *fp = ok ? NULL : fopen(full, "rb");
            if (ok)
                snprintf(msg, sizeof msg, "%s: '%s' declares %d x %d pixels, over the cap of %lld (raise it with LDM_MAX_PIXELS); skipped", what, full, w, h,
                         (long long)ldm_data_max_pixels());
            else
                snprintf(msg, sizeof msg, "%s: '%s' is not a readable image (%s); skipped", what, full, fp ? stbi_failure_reason() : strerror(errno));
            if (fp) fclose(fp);
            ldm__dwarn(o->warn, o->warn_user, msg);
            (*skipped)++;
            LDM_FREE(full);
            continue;
        }
        const char *slash = strrchr(rel.v[j], '/');
        dirs[f->n] = rel.v[j];
        if (slash) rel.v[j][slash - rel.v[j]] = 0; else rel.v[j][0] = 0; /* keep only the directory part */
        f->path[f->n++] = full;
    }
    if (f->n == 0) {
        r = total == 0 ? LDM_ERR_NOT_FOUND : LDM_ERR_FORMAT;
        if (total == 0)
            snprintf(err, sizeof err, "no %s files (%s) %s '%s'", vol_cap > 0 ? "volume" : "image", vol_cap > 0 ? "nii, nii.gz" : "png, jpg, jpeg, bmp, tga",
                     o->file_list && o->file_list[0] ? "listed in" : "under", o->file_list && o->file_list[0] ? o->file_list : o->root);
        else if (*skipped)
            snprintf(err, sizeof err, "none of the %s files in '%s' is readable (%lld skipped; see the warnings)", vol_cap > 0 ? "volume" : "image", o->root,
                     (long long)*skipped);
        else
            snprintf(err, sizeof err, "split '%s' of '%s' is empty (%lld files, val_fraction %g)", split, o->root, (long long)total, o->val_fraction);
        goto done;
    }
    if (o->labels) {
        f->label = (int64_t *)ldm__dalloc(sizeof(int64_t) * (size_t)f->n);
        char **sorted = (char **)ldm__dalloc(sizeof(char *) * (size_t)f->n);
        if (!f->label || !sorted) { LDM_FREE(sorted); r = LDM_ERR_NOMEM; snprintf(err, sizeof err, "out of memory"); goto done; }
        memcpy(sorted, dirs, sizeof(char *) * (size_t)f->n);
        qsort(sorted, (size_t)f->n, sizeof(char *), ldm__dcmp_str);
        int64_t nu = 0;
        for (int64_t j = 0; j < f->n; j++)
            if (j == 0 || strcmp(sorted[j], sorted[nu - 1])) sorted[nu++] = sorted[j];
        for (int64_t j = 0; j < f->n; j++) {
            int64_t lo = 0, hi = nu - 1;
            while (lo < hi) {
                int64_t mid = (lo + hi) / 2;
                if (strcmp(sorted[mid], dirs[j]) < 0) lo = mid + 1; else hi = mid;
            }
            f->label[j] = lo;
        }
        LDM_FREE(sorted);
    }
done:
    LDM_FREE(dirs);
    ldm__dstrs_free(&rel);
    if (r) {
        ldm__dfolder_free(f);
        return ldm_ctx_seterr(ctx, r, "%s: %s", what, err);
    }
    return LDM_OK;
}

static ldm_result ldm__dmark_skippable(ldm_ctx *ctx, ldm_dataset *ds, const ldm_data_folder_opts *o, int64_t n, int64_t scan_skipped) {
    ds->skip_unreadable = 1;
    ds->scan_skipped = scan_skipped;
    ds->warn = o->warn;
    ds->warn_user = o->warn_user;
    ds->bad = (unsigned char *)ldm__dcalloc((size_t)n);
    if (!ds->bad) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory");
    return LDM_OK;
}

/* Python's round() for the albumentations SmallestMaxSize sizes: half to even. */
static int ldm__dround_even(double v) { return (int)nearbyint(v); }

/* Shorter side -> size (albumentations SmallestMaxSize; unchanged when the scale is 1). */
static void ldm__dsmallest_max(int h, int w, int size, int *nh, int *nw) {
    double scale = (double)size / (double)(h < w ? h : w);
    *nh = h;
    *nw = w;
    if (scale != 1.0) {
        *nh = ldm__dround_even(h * scale);
        *nw = ldm__dround_even(w * scale);
        if (*nh < 1) *nh = 1;
        if (*nw < 1) *nw = 1;
    }
}

static ldm_result ldm__dresize_image(ldm_data_image *im, int nh, int nw, ldm_data_interp m, char *err, size_t errn) {
    if (nh == im->h && nw == im->w) return LDM_OK;
    unsigned char *px = (unsigned char *)ldm__dalloc((size_t)im->c * nh * nw);
    if (!px) return ldm__derr(err, errn, LDM_ERR_NOMEM, "out of memory resizing to %dx%d", nw, nh);
    ldm_result r = ldm__dresize_u8(px, nh, nw, im->px, im->c, im->h, im->w, m, err, errn);
    if (r) { LDM_FREE(px); return r; }
    LDM_FREE(im->px);
    im->px = px;
    im->h = nh;
    im->w = nw;
    return LDM_OK;
}

/* ---- ImageFolder ------------------------------------------------------------------------ */
typedef struct ldm__dimgfolder {
    ldm__dfolder f;
    ldm_data_image_folder_opts o;
} ldm__dimgfolder;

static int64_t ldm__dimgfolder_len(void *self) { return ((ldm__dimgfolder *)self)->f.n; }
static void ldm__dimgfolder_destroy(void *self) {
    ldm__dimgfolder *d = (ldm__dimgfolder *)self;
    ldm__dfolder_free(&d->f);
    LDM_FREE(d);
}
static ldm_result ldm__dimgfolder_load(void *self, int64_t i, ldm_data_image *out, char *err, size_t errn) {
    ldm__dimgfolder *d = (ldm__dimgfolder *)self;
    ldm_result r = ldm_data_image_load(d->f.path[i], d->o.channels, out, err, errn);
    if (r) return r;
    out->label = d->f.label ? d->f.label[i] : -1;
    if (d->o.size > 0) {
        int nh, nw;
        ldm__dsmallest_max(out->h, out->w, d->o.size, &nh, &nw);
        r = ldm__dresize_image(out, nh, nw, d->o.interp, err, errn);
    }
    return r;
}
static ldm_result ldm__dimgfolder_augment(void *self, int64_t i, const ldm_data_image *b, ldm_rng *rng, ldm_data_item *out,
                                          char *err, size_t errn) {
    ldm__dimgfolder *d = (ldm__dimgfolder *)self;
    double uy = ldm_data_uniform(rng), ux = ldm_data_uniform(rng), uf = ldm_data_uniform(rng);
    int s = d->o.size, hh = s > 0 ? s : b->h, ww = s > 0 ? s : b->w, y0 = 0, x0 = 0;
    (void)i;
    if (hh > b->h || ww > b->w) return ldm__derr(err, errn, LDM_ERR_INVALID, "ImageFolder: %dx%d image smaller than the %dx%d crop", b->w, b->h, ww, hh);
    if (d->o.random_crop) {
        y0 = (int)floor((b->h - hh + 1) * uy);
        x0 = (int)floor((b->w - ww + 1) * ux);
    } else {
        y0 = (b->h - hh) / 2;
        x0 = (b->w - ww) / 2;
    }
    ldm_data_field *f = ldm_data_item_add(out, "image", b->c, hh, ww);
    if (!f) return ldm__derr(err, errn, LDM_ERR_NOMEM, "out of memory for a %dx%d item", ww, hh);
    ldm__dto_field(f, b->px, b->c, b->h, b->w, y0, x0, uf < d->o.flip_p, b->c);
    return LDM_OK;
}
static const ldm_dataset_vtable ldm__dimgfolder_vt = {
    "ImageFolder", ldm__dimgfolder_len, ldm__dimgfolder_load, ldm__dimgfolder_augment, ldm__dimgfolder_destroy};

LDM_API ldm_result ldm_dataset_image_folder(ldm_ctx *ctx, ldm_dataset **out, const ldm_data_image_folder_opts *o) {
    *out = NULL;
    ldm__dimgfolder *d = (ldm__dimgfolder *)ldm__dcalloc(sizeof *d);
    if (!d) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory");
    d->o = *o;
    if (!d->o.channels) d->o.channels = 3;
    if (d->o.channels != 1 && d->o.channels != 3) { LDM_FREE(d); return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ImageFolder: channels = %d must be 1 or 3", o->channels); }
    if (d->o.size < 0) { LDM_FREE(d); return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ImageFolder: size = %d must be >= 0", o->size); }
    if (!(d->o.flip_p >= 0.0f && d->o.flip_p <= 1.0f)) { LDM_FREE(d); return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ImageFolder: flip_p = %g must be in [0, 1]", (double)o->flip_p); }
    if (d->o.interp < LDM_INTERP_AUTO || d->o.interp > LDM_INTERP_PIL_LANCZOS) { LDM_FREE(d); return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ImageFolder: unknown interpolation %d", (int)o->interp); }
    int64_t skipped = 0;
    ldm_result r = ldm__dfolder_open(ctx, &d->f, &o->src, "ImageFolder", &skipped, 0);
    if (r) { LDM_FREE(d); return r; }
    d->o.src.root = NULL; /* not kept: the caller's strings need not outlive the dataset */
    d->o.src.split = d->o.src.file_list = NULL;
    int64_t n = d->f.n;
    if ((r = ldm_dataset_create(ctx, out, &ldm__dimgfolder_vt, d)) != LDM_OK) return r;
    if ((r = ldm__dmark_skippable(ctx, *out, &o->src, n, skipped)) != LDM_OK) { ldm_dataset_destroy(*out); *out = NULL; }
    return r;
}

/* ---- ImageNetSR ------------------------------------------------------------------------- */
typedef struct ldm__dsr {
    ldm__dfolder f;
    ldm_data_sr_opts o;
    int lr;
} ldm__dsr;

static int64_t ldm__dsr_len(void *self) { return ((ldm__dsr *)self)->f.n; }
static void ldm__dsr_destroy(void *self) {
    ldm__dsr *d = (ldm__dsr *)self;
    ldm__dfolder_free(&d->f);
    LDM_FREE(d);
}
static ldm_result ldm__dsr_load(void *self, int64_t i, ldm_data_image *out, char *err, size_t errn) {
    ldm__dsr *d = (ldm__dsr *)self;
    ldm_result r = ldm_data_image_load(d->f.path[i], 3, out, err, errn);
    if (r == LDM_OK) out->label = d->f.label ? d->f.label[i] : -1;
    return r;
}
/* As ImageNetSR.__getitem__: crop, INTER_AREA rescale, degradation; every step 8-bit. */
static ldm_result ldm__dsr_augment(void *self, int64_t i, const ldm_data_image *b, ldm_rng *rng, ldm_data_item *out,
                                   char *err, size_t errn) {
    ldm__dsr *d = (ldm__dsr *)self;
    double uc = ldm_data_uniform(rng), uy = ldm_data_uniform(rng), ux = ldm_data_uniform(rng);
    int min_side = b->h < b->w ? b->h : b->w, s = d->o.size;
    int crop = (int)(min_side * (d->o.min_crop_f + (d->o.max_crop_f - d->o.min_crop_f) * uc));
    (void)i;
    if (crop < 1) return ldm__derr(err, errn, LDM_ERR_INVALID, "ImageNetSR: item %lld (%dx%d) gives an empty crop", (long long)b->index, b->w, b->h);
    int y0 = d->o.random_crop ? (int)floor((b->h - crop + 1) * uy) : (b->h - crop) / 2;
    int x0 = d->o.random_crop ? (int)floor((b->w - crop + 1) * ux) : (b->w - crop) / 2;
    size_t cn = (size_t)crop * crop;
    unsigned char *c = (unsigned char *)ldm__dalloc(3 * cn), *hr = (unsigned char *)ldm__dalloc((size_t)3 * s * s),
                  *lr = (unsigned char *)ldm__dalloc((size_t)3 * d->lr * d->lr);
    ldm_result r = LDM_OK;
    if (!c || !hr || !lr) r = ldm__derr(err, errn, LDM_ERR_NOMEM, "out of memory for a %dx%d crop", crop, crop);
    if (r == LDM_OK) {
        for (int k = 0; k < 3; k++)
            for (int y = 0; y < crop; y++)
                memcpy(c + k * cn + (size_t)y * crop, b->px + ((size_t)k * b->h + y0 + y) * b->w + x0, (size_t)crop);
        r = ldm__dresize_u8(hr, s, s, c, 3, crop, crop, LDM_INTERP_AREA, err, errn);
    }
    if (r == LDM_OK) r = ldm__dresize_u8(lr, d->lr, d->lr, hr, 3, s, s, d->o.degradation, err, errn);
    if (r == LDM_OK) {
        ldm_data_field *fh = ldm_data_item_add(out, "image", 3, s, s);
        ldm_data_field *fl = fh ? ldm_data_item_add(out, "LR_image", 3, d->lr, d->lr) : NULL;
        if (!fl) r = ldm__derr(err, errn, LDM_ERR_NOMEM, "out of memory for an item");
        else {
            ldm__dto_field(fh, hr, 3, s, s, 0, 0, 0, 3);
            ldm__dto_field(fl, lr, 3, d->lr, d->lr, 0, 0, 0, 3);
        }
    }
    LDM_FREE(c);
    LDM_FREE(hr);
    LDM_FREE(lr);
    return r;
}
static const ldm_dataset_vtable ldm__dsr_vt = {"ImageNetSR", ldm__dsr_len, ldm__dsr_load, ldm__dsr_augment, ldm__dsr_destroy};

LDM_API ldm_result ldm_dataset_imagenet_sr(ldm_ctx *ctx, ldm_dataset **out, const ldm_data_sr_opts *o) {
    *out = NULL;
    ldm__dsr *d = (ldm__dsr *)ldm__dcalloc(sizeof *d);
    if (!d) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory");
    d->o = *o;
    if (!d->o.downscale_f) d->o.downscale_f = 4;
    if (d->o.min_crop_f == 0 && d->o.max_crop_f == 0) { d->o.min_crop_f = 0.5; d->o.max_crop_f = 1.0; }
    if (d->o.degradation == LDM_INTERP_AUTO) d->o.degradation = LDM_INTERP_BICUBIC;
    ldm_result r = LDM_OK;
    if (d->o.size <= 0) r = ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ImageNetSR: size = %d must be positive", o->size);
    else if (d->o.downscale_f <= 0 || d->o.size % d->o.downscale_f)
        r = ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ImageNetSR: size %d is not divisible by downscale_f %d", d->o.size, d->o.downscale_f);
    else if (!(d->o.max_crop_f <= 1.0) || !(d->o.min_crop_f > 0.0) || d->o.min_crop_f > d->o.max_crop_f)
        r = ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ImageNetSR: need 0 < min_crop_f (%g) <= max_crop_f (%g) <= 1", d->o.min_crop_f, d->o.max_crop_f);
    else if (d->o.degradation < LDM_INTERP_NEAREST || d->o.degradation > LDM_INTERP_PIL_LANCZOS)
        r = ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "ImageNetSR: unknown degradation %d", (int)o->degradation);
    if (r) { LDM_FREE(d); return r; }
    d->lr = d->o.size / d->o.downscale_f;
    int64_t skipped = 0;
    if ((r = ldm__dfolder_open(ctx, &d->f, &o->src, "ImageNetSR", &skipped, 0)) != LDM_OK) { LDM_FREE(d); return r; }
    d->o.src.root = d->o.src.split = d->o.src.file_list = NULL;
    int64_t n = d->f.n;
    if ((r = ldm_dataset_create(ctx, out, &ldm__dsr_vt, d)) != LDM_OK) return r;
    if ((r = ldm__dmark_skippable(ctx, *out, &o->src, n, skipped)) != LDM_OK) { ldm_dataset_destroy(*out); *out = NULL; }
    return r;
}

/* ---- IDX (MNIST, Fashion-MNIST) --------------------------------------------------------- */
typedef struct ldm__didx {
    ldm_idx img, lab;
    ldm_data_idx_opts o;
    int64_t n;
    int h, w;
} ldm__didx;

static int64_t ldm__didx_len(void *self) { return ((ldm__didx *)self)->n; }
static void ldm__didx_destroy(void *self) {
    ldm__didx *d = (ldm__didx *)self;
    ldm_idx_free(&d->img);
    ldm_idx_free(&d->lab);
    LDM_FREE(d);
}
static ldm_result ldm__didx_load(void *self, int64_t i, ldm_data_image *out, char *err, size_t errn) {
    ldm__didx *d = (ldm__didx *)self;
    int s = d->o.size;
    const unsigned char *src = d->img.data + (size_t)i * d->h * d->w;
    out->label = d->lab.data ? (int64_t)d->lab.data[i] : -1;
    out->c = 1;
    out->h = d->h;
    out->w = d->w;
    out->px = (unsigned char *)ldm__dalloc((size_t)(s > d->h ? s : d->h) * (size_t)(s > d->w ? s : d->w));
    if (!out->px) return ldm__derr(err, errn, LDM_ERR_NOMEM, "out of memory");
    memcpy(out->px, src, (size_t)d->h * d->w);
    if (s == 0 || (s == d->h && s == d->w)) return LDM_OK;
    if (d->o.pad) {
        int top = (s - d->h) / 2, left = (s - d->w) / 2;
        memset(out->px, 0, (size_t)s * s);
        for (int y = 0; y < d->h; y++) memcpy(out->px + (size_t)(top + y) * s + left, src + (size_t)y * d->w, (size_t)d->w);
        out->h = out->w = s;
        return LDM_OK;
    }
    return ldm__dresize_image(out, s, s, d->o.interp, err, errn);
}
static ldm_result ldm__didx_augment(void *self, int64_t i, const ldm_data_image *b, ldm_rng *rng, ldm_data_item *out,
                                    char *err, size_t errn) {
    ldm__didx *d = (ldm__didx *)self;
    double uf = ldm_data_uniform(rng);
    (void)i;
    ldm_data_field *f = ldm_data_item_add(out, "image", d->o.channels, b->h, b->w);
    if (!f) return ldm__derr(err, errn, LDM_ERR_NOMEM, "out of memory for an item");
    ldm__dto_field(f, b->px, b->c, b->h, b->w, 0, 0, uf < d->o.flip_p, d->o.channels);
    return LDM_OK;
}
static const ldm_dataset_vtable ldm__didx_vt = {"IDX", ldm__didx_len, ldm__didx_load, ldm__didx_augment, ldm__didx_destroy};

LDM_API ldm_result ldm_dataset_idx(ldm_ctx *ctx, ldm_dataset **out, const ldm_data_idx_opts *o) {
    char err[LDM_DATA_ERR_MAX];
    *out = NULL;
    if (!o->images || !o->images[0]) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "IDX dataset: no images file given");
    ldm__didx *d = (ldm__didx *)ldm__dcalloc(sizeof *d);
    if (!d) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory");
    d->o = *o;
    if (!d->o.channels) d->o.channels = 1;
    ldm_result r = LDM_OK;
    if (d->o.channels != 1 && d->o.channels != 3) r = ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "IDX dataset: channels = %d must be 1 or 3", o->channels);
    else if (d->o.size < 0) r = ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "IDX dataset: size = %d must be >= 0", o->size);
    else if (!(d->o.flip_p >= 0.0f && d->o.flip_p <= 1.0f)) r = ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "IDX dataset: flip_p = %g must be in [0, 1]", (double)o->flip_p);
    else if ((r = ldm__didx_read(o->images, &d->img, err, sizeof err)) != LDM_OK) ldm_ctx_seterr(ctx, r, "%s", err);
    else if (d->img.ndim != 3)
        r = ldm_ctx_seterr(ctx, LDM_ERR_FORMAT, "%s: an images file has 3 dimensions (count, rows, columns), this one has %d (a labels file?)", o->images, d->img.ndim);
    else if (o->labels && o->labels[0]) {
        if ((r = ldm__didx_read(o->labels, &d->lab, err, sizeof err)) != LDM_OK) ldm_ctx_seterr(ctx, r, "%s", err);
        else if (d->lab.ndim != 1)
            r = ldm_ctx_seterr(ctx, LDM_ERR_FORMAT, "%s: a labels file has 1 dimension, this one has %d (an images file?)", o->labels, d->lab.ndim);
        else if (d->lab.dims[0] != d->img.dims[0])
            r = ldm_ctx_seterr(ctx, LDM_ERR_FORMAT, "%s has %lld labels but %s has %lld images", o->labels, (long long)d->lab.dims[0], o->images,
                               (long long)d->img.dims[0]);
    }
    if (r == LDM_OK) {
        d->n = d->img.dims[0];
        d->h = (int)d->img.dims[1];
        d->w = (int)d->img.dims[2];
        if (d->o.max_items > 0 && d->o.max_items < d->n) d->n = d->o.max_items;
        if (d->o.size && d->o.pad && (d->o.size < d->h || d->o.size < d->w))
            r = ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "IDX dataset: cannot pad %dx%d images to size %d (smaller); resize instead", d->w, d->h, d->o.size);
    }
    if (r) { ldm__didx_destroy(d); return r; }
    d->o.images = d->o.labels = NULL;
    return ldm_dataset_create(ctx, out, &ldm__didx_vt, d);
}

/* ---- volumes: trilinear resize, NIfTI dataset ------------------------------------------- */
LDM_API ldm_result ldm_data_resize3(float *dst, int dt, int dh, int dw, const float *src, int C, int st, int sh, int sw) {
    if (dt <= 0 || dh <= 0 || dw <= 0 || st <= 0 || sh <= 0 || sw <= 0 || C <= 0) return LDM_ERR_INVALID;
    size_t plane = (size_t)dh * dw;
    float *tmp = (float *)ldm__dalloc(sizeof(float) * (size_t)C * st * plane);
    if (!tmp) return LDM_ERR_NOMEM;
    /* bilinear over (H, W) per slice (the same taps as torch), then linear along T */
    ldm_result r = LDM_OK;
    if (dh == sh && dw == sw) memcpy(tmp, src, sizeof(float) * (size_t)C * st * plane);
    else r = ldm__dresize(tmp, dh, dw, src, C * st, sh, sw, LDM_INTERP_BILINEAR);
    if (r == LDM_OK)
        for (int c = 0; c < C; c++)
            for (int z = 0; z < dt; z++) {
                float pos = ((float)z + 0.5f) * ((float)st / (float)dt) - 0.5f;
                if (pos < 0) pos = 0;
                int i0 = (int)pos, i1 = i0 + 1 < st ? i0 + 1 : st - 1;
                float l1 = pos - (float)i0, l0 = 1.0f - l1;
                const float *a = tmp + ((size_t)c * st + i0) * plane, *b = tmp + ((size_t)c * st + i1) * plane;
                float *o = dst + ((size_t)c * dt + z) * plane;
                for (size_t k = 0; k < plane; k++) o[k] = l0 * a[k] + l1 * b[k];
            }
    LDM_FREE(tmp);
    return r;
}

typedef struct ldm__dvol {
    ldm__dfolder f;
    ldm_data_volume_opts o;
    int64_t cap;
} ldm__dvol;

static int64_t ldm__dvol_len(void *self) { return ((ldm__dvol *)self)->f.n; }
static void ldm__dvol_destroy(void *self) {
    ldm__dvol *d = (ldm__dvol *)self;
    ldm__dfolder_free(&d->f);
    LDM_FREE(d);
}
/* Read, normalise, resize: the deterministic part (what the cache keeps), as float voxels. */
static ldm_result ldm__dvol_load(void *self, int64_t i, ldm_data_image *out, char *err, size_t errn) {
    ldm__dvol *d = (ldm__dvol *)self;
    const char *path = d->f.path[i];
    ldm_nifti v;
    ldm_result r = ldm__dnii_read(path, d->cap, &v, err, errn);
    if (r) return r;
    if ((int64_t)v.dim[5] * v.dim[6] * v.dim[7] != 1) {
        ldm_nifti_free(&v);
        return ldm__derr(err, errn, LDM_ERR_UNSUPPORTED, "%s: a %d-D volume (dim %d %d %d %d %d %d %d); the volume dataset reads x, y, z and the 4th axis as channels",
                         path, v.dim[0], v.dim[1], v.dim[2], v.dim[3], v.dim[4], v.dim[5], v.dim[6], v.dim[7]);
    }
    /* [C,T,H,W] = NIfTI (t, k, j, i): x (i) is the fastest axis, W */
    out->c = v.dim[4];
    out->t = v.dim[3];
    out->h = v.dim[2];
    out->w = v.dim[1];
    out->fx = v.data;
    out->label = d->f.label ? d->f.label[i] : -1;
    size_t n = v.nvox;
    float *x = out->fx;
    if (d->o.norm == LDM_VOL_WINDOW) {
        double a0 = d->o.a_min, a1 = d->o.a_max, b0 = d->o.b_min, b1 = d->o.b_max, lo = b0 < b1 ? b0 : b1, hi = b0 < b1 ? b1 : b0;
        for (size_t k = 0; k < n; k++) {
            double y = ((double)x[k] - a0) / (a1 - a0) * (b1 - b0) + b0;
            if (d->o.clip) y = y < lo ? lo : y > hi ? hi : y;
            x[k] = (float)y;
        }
    } else if (d->o.norm == LDM_VOL_ZSCORE) {
        double sum = 0, sq = 0;
        for (size_t k = 0; k < n; k++) sum += x[k];
        double mean = sum / (double)n;
        for (size_t k = 0; k < n; k++) sq += ((double)x[k] - mean) * ((double)x[k] - mean);
        double sd = sqrt(sq / (double)n);
        for (size_t k = 0; k < n; k++) x[k] = (float)(sd > 0 ? ((double)x[k] - mean) / sd : (double)x[k] - mean);
    } else if (d->o.norm == LDM_VOL_MINMAX) {
        double lo = x[0], hi = x[0], b0 = d->o.b_min, b1 = d->o.b_max;
        for (size_t k = 1; k < n; k++) {
            if (x[k] < lo) lo = x[k];
            if (x[k] > hi) hi = x[k];
        }
        for (size_t k = 0; k < n; k++) x[k] = (float)(hi > lo ? ((double)x[k] - lo) / (hi - lo) * (b1 - b0) + b0 : b0);
    }
    int rt = d->o.resize[0] > 0 ? d->o.resize[0] : out->t, rh = d->o.resize[1] > 0 ? d->o.resize[1] : out->h,
        rw = d->o.resize[2] > 0 ? d->o.resize[2] : out->w;
    if (rt != out->t || rh != out->h || rw != out->w) {
        float *y = (float *)ldm__dalloc(sizeof(float) * (size_t)out->c * rt * rh * rw);
        if (!y) return ldm__derr(err, errn, LDM_ERR_NOMEM, "%s: out of memory resizing to %dx%dx%d", path, rt, rh, rw);
        r = ldm_data_resize3(y, rt, rh, rw, out->fx, out->c, out->t, out->h, out->w);
        if (r) { LDM_FREE(y); return ldm__derr(err, errn, r, "%s: out of memory resizing to %dx%dx%d", path, rt, rh, rw); }
        LDM_FREE(out->fx);
        out->fx = y;
        out->t = rt;
        out->h = rh;
        out->w = rw;
    }
    return LDM_OK;
}
static ldm_result ldm__dvol_augment(void *self, int64_t i, const ldm_data_image *b, ldm_rng *rng, ldm_data_item *out, char *err, size_t errn) {
    ldm__dvol *d = (ldm__dvol *)self;
    int dims[3] = {b->t, b->h, b->w}, s[3], o0[3];
    (void)i;
    for (int k = 0; k < 3; k++) {
        double u = ldm_data_uniform(rng); /* always three draws: T, H, W */
        s[k] = d->o.spatial_size[k] > 0 ? d->o.spatial_size[k] : dims[k];
        if (s[k] > dims[k])
            return ldm__derr(err, errn, LDM_ERR_INVALID, "VolumeDataset: %s is %dx%dx%d (T x H x W), smaller than spatial_size %dx%dx%d (resize it first)",
                             d->f.path[b->index >= 0 ? b->index : i], b->t, b->h, b->w, d->o.spatial_size[0], d->o.spatial_size[1], d->o.spatial_size[2]);
        o0[k] = d->o.random_crop ? (int)floor((dims[k] - s[k] + 1) * u) : (dims[k] - s[k]) / 2;
    }
    ldm_data_field *f = ldm_data_item_add3(out, "image", b->c, s[0], s[1], s[2]);
    if (!f) return ldm__derr(err, errn, LDM_ERR_NOMEM, "out of memory for a %dx%dx%d item", s[0], s[1], s[2]);
    for (int c = 0; c < b->c; c++)
        for (int z = 0; z < s[0]; z++)
            for (int y = 0; y < s[1]; y++)
                memcpy(f->data + (((size_t)c * s[0] + z) * s[1] + y) * s[2],
                       b->fx + (((size_t)c * b->t + o0[0] + z) * b->h + o0[1] + y) * b->w + o0[2], sizeof(float) * (size_t)s[2]);
    return LDM_OK;
}
static const ldm_dataset_vtable ldm__dvol_vt = {"VolumeDataset", ldm__dvol_len, ldm__dvol_load, ldm__dvol_augment, ldm__dvol_destroy};

LDM_API ldm_result ldm_dataset_volume(ldm_ctx *ctx, ldm_dataset **out, const ldm_data_volume_opts *o) {
    *out = NULL;
    if (o->norm < LDM_VOL_NONE || o->norm > LDM_VOL_MINMAX) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "VolumeDataset: unknown normalisation %d", (int)o->norm);
    if (o->norm == LDM_VOL_MINMAX && !(isfinite(o->b_min) && isfinite(o->b_max)))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "VolumeDataset: minmax needs finite b_min, b_max (got %g, %g)", (double)o->b_min, (double)o->b_max);
    if (o->norm == LDM_VOL_WINDOW && !(o->a_max != o->a_min && isfinite(o->a_min) && isfinite(o->a_max) && isfinite(o->b_min) && isfinite(o->b_max)))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "VolumeDataset: the intensity window needs finite a_min != a_max (got a_min %g, a_max %g, b_min %g, b_max %g)",
                              (double)o->a_min, (double)o->a_max, (double)o->b_min, (double)o->b_max);
    for (int k = 0; k < 3; k++)
        if (o->resize[k] < 0 || o->resize[k] > 32767 || o->spatial_size[k] < 0 || o->spatial_size[k] > 32767)
            return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "VolumeDataset: resize %d %d %d and spatial_size %d %d %d must be in 0..32767 (0: keep that axis)",
                                  o->resize[0], o->resize[1], o->resize[2], o->spatial_size[0], o->spatial_size[1], o->spatial_size[2]);
    ldm__dvol *d = (ldm__dvol *)ldm__dcalloc(sizeof *d);
    if (!d) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory");
    d->o = *o;
    d->cap = o->max_voxels > 0 ? o->max_voxels : ldm_data_max_voxels();
    int64_t skipped = 0;
    ldm_result r = ldm__dfolder_open(ctx, &d->f, &o->src, "VolumeDataset", &skipped, d->cap);
    if (r) { LDM_FREE(d); return r; }
    d->o.src.root = d->o.src.split = d->o.src.file_list = NULL;
    int64_t n = d->f.n;
    if ((r = ldm_dataset_create(ctx, out, &ldm__dvol_vt, d)) != LDM_OK) return r;
    if ((r = ldm__dmark_skippable(ctx, *out, &o->src, n, skipped)) != LDM_OK) { ldm_dataset_destroy(*out); *out = NULL; }
    return r;
}

/* ---- CacheDataset ----------------------------------------------------------------------- */
typedef struct ldm__dcache {
    ldm_dataset *inner;
    ldm_data_image *slot;         /* [len]; px NULL = not cached */
    size_t bytes, max_bytes;
    int64_t count;
#ifndef LDM_NO_THREADS
    pthread_mutex_t mu;
#endif
} ldm__dcache;

static void ldm__dcache_lock(ldm__dcache *c) {
#ifndef LDM_NO_THREADS
    pthread_mutex_lock(&c->mu);
#else
    (void)c;
#endif
}
static void ldm__dcache_unlock(ldm__dcache *c) {
#ifndef LDM_NO_THREADS
    pthread_mutex_unlock(&c->mu);
#else
    (void)c;
#endif
}
static int64_t ldm__dcache_len(void *self) { return ldm_dataset_len(((ldm__dcache *)self)->inner); }
static void ldm__dcache_destroy(void *self) {
    ldm__dcache *c = (ldm__dcache *)self;
    int64_t n = ldm_dataset_len(c->inner);
    for (int64_t i = 0; i < n; i++) ldm_data_image_free(&c->slot[i]);
    LDM_FREE(c->slot);
#ifndef LDM_NO_THREADS
    pthread_mutex_destroy(&c->mu);
#endif
    LDM_FREE(c); /* inner belongs to the ldm_dataset wrapper (ds->inner) */
}
/* Bytes of an image's pixels: 8-bit px, or float voxels fx [c,t,h,w]. */
static size_t ldm__dimage_bytes(const ldm_data_image *im) {
    size_t n = (size_t)im->c * (im->t > 0 ? (size_t)im->t : 1) * im->h * im->w;
    return im->fx ? n * sizeof(float) : n;
}
static ldm_result ldm__dimage_copy(ldm_data_image *dst, const ldm_data_image *src) {
    size_t n = ldm__dimage_bytes(src);
    *dst = *src;
    dst->px = NULL;
    dst->fx = NULL;
    void *p = ldm__dalloc(n);
    if (!p) return LDM_ERR_NOMEM;
    memcpy(p, src->fx ? (const void *)src->fx : (const void *)src->px, n);
    if (src->fx) dst->fx = (float *)p; else dst->px = (unsigned char *)p;
    return LDM_OK;
}
static ldm_result ldm__dcache_load(void *self, int64_t i, ldm_data_image *out, char *err, size_t errn) {
    ldm__dcache *c = (ldm__dcache *)self;
    ldm_result r;
    ldm__dcache_lock(c);
    if (c->slot[i].px || c->slot[i].fx) {
        r = ldm__dimage_copy(out, &c->slot[i]);
        ldm__dcache_unlock(c);
        return r ? ldm__derr(err, errn, r, "out of memory") : LDM_OK;
    }
    ldm__dcache_unlock(c);
    if ((r = ldm__dataset_load(c->inner, i, out, err, errn)) != LDM_OK) return r;
    size_t n = ldm__dimage_bytes(out);
    ldm__dcache_lock(c);
    if (!c->slot[i].px && !c->slot[i].fx && c->bytes + n <= c->max_bytes && ldm__dimage_copy(&c->slot[i], out) == LDM_OK) {
        c->bytes += n;
        c->count++;
    }
    ldm__dcache_unlock(c);
    return LDM_OK;
}
static ldm_result ldm__dcache_augment(void *self, int64_t i, const ldm_data_image *b, ldm_rng *rng, ldm_data_item *out,
                                      char *err, size_t errn) {
    ldm__dcache *c = (ldm__dcache *)self;
    return c->inner->vt->augment(c->inner->self, i, b, rng, out, err, errn);
}
static const ldm_dataset_vtable ldm__dcache_vt = {"CacheDataset", ldm__dcache_len, ldm__dcache_load, ldm__dcache_augment, ldm__dcache_destroy};

LDM_API ldm_result ldm_dataset_cache(ldm_ctx *ctx, ldm_dataset **out, ldm_dataset *inner, size_t max_bytes) {
    *out = NULL;
    if (!inner) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "CacheDataset: no dataset to cache");
    ldm__dcache *c = (ldm__dcache *)ldm__dcalloc(sizeof *c);
    int64_t n = ldm_dataset_len(inner);
    if (c) c->slot = (ldm_data_image *)ldm__dcalloc(sizeof(ldm_data_image) * (size_t)(n ? n : 1));
    if (!c || !c->slot) {
        if (c) LDM_FREE(c->slot);
        LDM_FREE(c);
        ldm_dataset_destroy(inner);
        return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory");
    }
    c->inner = inner;
    c->max_bytes = max_bytes;
#ifndef LDM_NO_THREADS
    pthread_mutex_init(&c->mu, NULL);
#endif
    ldm_result r = ldm_dataset_create(ctx, out, &ldm__dcache_vt, c);
    if (r) { ldm_dataset_destroy(inner); return r; }
    (*out)->inner = inner;
    return LDM_OK;
}

LDM_API size_t ldm_dataset_cache_bytes(const ldm_dataset *ds) {
    if (ds->vt != &ldm__dcache_vt) return 0;
    ldm__dcache *c = (ldm__dcache *)ds->self;
    ldm__dcache_lock(c);
    size_t b = c->bytes;
    ldm__dcache_unlock(c);
    return b;
}
LDM_API int64_t ldm_dataset_cache_count(const ldm_dataset *ds) {
    if (ds->vt != &ldm__dcache_vt) return 0;
    ldm__dcache *c = (ldm__dcache *)ds->self;
    ldm__dcache_lock(c);
    int64_t n = c->count;
    ldm__dcache_unlock(c);
    return n;
}

/* ---- loader ----------------------------------------------------------------------------- */
enum { LDM__DSLOT_FREE = 0, LDM__DSLOT_FILLING, LDM__DSLOT_READY, LDM__DSLOT_HELD };
typedef struct ldm__dslot {
    int state;
    int64_t g;                    /* global batch number: epoch * batches + batch */
    uint64_t gen;                 /* seek generation it was claimed in */
    ldm_data_batch b;
    ldm_result r;
    char err[LDM_DATA_ERR_MAX];
} ldm__dslot;

struct ldm_data_loader {
    ldm_dataset *ds;
    ldm_data_loader_opts o;
    int64_t n, nb;                /* this rank's items, batches per epoch */
    int64_t N;                    /* the dataset's items */
    int W, rank;                  /* DistributedSampler replicas and this rank */
    ldm_data_state pos;           /* what next() returns next */
    int nslots, held;             /* held: slot handed to the caller, -1 none */
    ldm__dslot *slot;
    int64_t claim;                /* next global batch a worker takes */
    uint64_t gen;
    ldm_result failed;
    char failmsg[LDM_DATA_ERR_MAX];
    int64_t perm_epoch[2];        /* two cached epoch permutations */
    int64_t *perm[2];
    int perm_next;
    int nworkers, stop;
#ifndef LDM_NO_THREADS
    pthread_t *th;
    pthread_mutex_t mu, pmu;
    pthread_cond_t cv_work, cv_done;
#endif
};

/* Dataset indices of batch g's samples into idx (size B); returns B (0: out of memory). */
static int ldm__dbatch_indices(ldm_data_loader *ld, int64_t g, int64_t *idx) {
    int64_t e = g / ld->nb, b = g % ld->nb, start = b * ld->o.batch_size;
    int B = (int)((ld->n - start) < ld->o.batch_size ? ld->n - start : ld->o.batch_size);
    /* this rank's k-th item is position rank + W*k of the order padded by wrapping around */
    if (!ld->o.shuffle) {
        for (int k = 0; k < B; k++) idx[k] = (ld->rank + ld->W * (start + k)) % ld->N;
        return B;
    }
#ifndef LDM_NO_THREADS
    pthread_mutex_lock(&ld->pmu);
#endif
    int s = ld->perm[0] && ld->perm_epoch[0] == e ? 0 : ld->perm[1] && ld->perm_epoch[1] == e ? 1 : -1;
    if (s < 0) { /* Fisher-Yates from (seed, epoch) */
        s = ld->perm_next;
        ld->perm_next ^= 1;
        if (!ld->perm[s]) ld->perm[s] = (int64_t *)ldm__dalloc(sizeof(int64_t) * (size_t)ld->N);
        if (!ld->perm[s]) {
#ifndef LDM_NO_THREADS
            pthread_mutex_unlock(&ld->pmu);
#endif
            return 0;
        }
        int64_t *p = ld->perm[s];
        ldm_rng rng;
        rng.seed = ldm__dmix(ldm__dmix(ld->o.seed ^ 0x7065726D75746521ull) ^ (uint64_t)e);
        rng.offset = 0;
        for (int64_t i = 0; i < ld->N; i++) p[i] = i;
        for (int64_t i = ld->N - 1; i > 0; i--) {
            int64_t j = (int64_t)ldm__dbelow(&rng, (uint64_t)(i + 1)), t = p[i];
            p[i] = p[j];
            p[j] = t;
        }
        ld->perm_epoch[s] = e;
    }
    for (int k = 0; k < B; k++) idx[k] = ld->perm[s][(ld->rank + ld->W * (start + k)) % ld->N];
#ifndef LDM_NO_THREADS
    pthread_mutex_unlock(&ld->pmu);
#endif
    return B;
}

static ldm_result ldm__dbuild(ldm_data_loader *ld, int64_t g, ldm_data_batch *b, char *err, size_t errn) {
    int64_t *idx = (int64_t *)ldm__dalloc(sizeof(int64_t) * (size_t)ld->o.batch_size);
    ldm_result r = LDM_OK;
    ldm_data_batch_free(b);
    int B = idx ? ldm__dbatch_indices(ld, g, idx) : 0;
    if (!B) r = ldm__derr(err, errn, LDM_ERR_NOMEM, "out of memory building batch %lld", (long long)g);
    int64_t epoch = g / ld->nb;
    for (int k = 0; k < B && r == LDM_OK; k++) {
        ldm_data_item it;
        r = ldm_dataset_get(ld->ds, idx[k], ld->o.seed, epoch, &it, err, errn);
        if (r == LDM_OK) {
            r = ldm__dbatch_put(b, B, k, &it, err, errn);
            ldm_data_item_free(&it);
        }
    }
    LDM_FREE(idx);
    if (r) ldm_data_batch_free(b);
    else {
        b->epoch = epoch;
        b->batch = g % ld->nb;
    }
    return r;
}

#ifndef LDM_NO_THREADS
static int64_t ldm__dwant(const ldm_data_loader *ld) { /* global batch the caller needs next */
    return ld->pos.epoch * ld->nb + (ld->pos.batch < ld->nb ? ld->pos.batch : ld->nb);
}

static void *ldm__dworker(void *arg) {
    ldm_data_loader *ld = (ldm_data_loader *)arg;
    pthread_mutex_lock(&ld->mu);
    while (!ld->stop) {
        int s = -1;
        if (!ld->failed && ld->claim < ldm__dwant(ld) + ld->nslots - 1)
            for (int i = 0; i < ld->nslots; i++)
                if (ld->slot[i].state == LDM__DSLOT_FREE) { s = i; break; }
        if (s < 0) { pthread_cond_wait(&ld->cv_work, &ld->mu); continue; }
        ldm__dslot *sl = &ld->slot[s];
        sl->state = LDM__DSLOT_FILLING;
        sl->g = ld->claim++;
        sl->gen = ld->gen;
        pthread_mutex_unlock(&ld->mu);
        ldm_result r = ldm__dbuild(ld, sl->g, &sl->b, sl->err, sizeof sl->err);
        pthread_mutex_lock(&ld->mu);
        sl->r = r;
        if (sl->gen != ld->gen) { /* a seek made it stale */
            sl->state = LDM__DSLOT_FREE;
            pthread_cond_broadcast(&ld->cv_work);
        } else {
            sl->state = LDM__DSLOT_READY;
        }
        pthread_cond_broadcast(&ld->cv_done);
    }
    pthread_mutex_unlock(&ld->mu);
    return NULL;
}
#endif

LDM_API ldm_result ldm_data_loader_create(ldm_ctx *ctx, ldm_data_loader **out, ldm_dataset *ds, const ldm_data_loader_opts *o) {
    *out = NULL;
    if (!ds) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "data loader: no dataset");
    if (o->batch_size < 1) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "data loader: batch_size = %d must be at least 1", o->batch_size);
    if (o->num_workers < 0 || o->num_workers > LDM_DATA_MAX_WORKERS)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "data loader: num_workers = %d must be in [0, %d]", o->num_workers, LDM_DATA_MAX_WORKERS);
    if (o->prefetch < 0) return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "data loader: prefetch = %d must be >= 0", o->prefetch);
    if (o->num_replicas < 0 || o->rank < 0 || (o->num_replicas > 0 && o->rank >= o->num_replicas) || (o->num_replicas == 0 && o->rank))
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "data loader: rank %d of %d replicas", o->rank, o->num_replicas);
    int W = o->num_replicas > 1 ? o->num_replicas : 1;
    int64_t N = ldm_dataset_len(ds);
    int64_t n = (N + W - 1) / W; /* DistributedSampler: ceil(N / W) per rank */
    int64_t nb = o->drop_last ? n / o->batch_size : (n + o->batch_size - 1) / o->batch_size;
    if (nb == 0)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "data loader: %s has %lld items, %s", ldm_dataset_name(ds), (long long)n,
                              n ? "fewer than one batch with drop_last (lower batch_size or set drop_last = false)" : "nothing to load");
    ldm_data_loader *ld = (ldm_data_loader *)ldm__dcalloc(sizeof *ld);
    if (!ld) return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory");
    ld->ds = ds;
    ld->o = *o;
    ld->n = n;
    ld->N = N;
    ld->W = W;
    ld->rank = W > 1 ? o->rank : 0;
    ld->nb = nb;
    ld->held = -1;
    ld->perm_epoch[0] = ld->perm_epoch[1] = -1;
#ifdef LDM_NO_THREADS
    ld->nworkers = 0;
#else
    ld->nworkers = o->num_workers;
#endif
    ld->nslots = ld->nworkers ? (o->prefetch ? o->prefetch : 2 * ld->nworkers) + 1 : 1;
    ld->slot = (ldm__dslot *)ldm__dcalloc(sizeof(ldm__dslot) * (size_t)ld->nslots);
    if (!ld->slot) { LDM_FREE(ld); return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory"); }
#ifndef LDM_NO_THREADS
    pthread_mutex_init(&ld->mu, NULL);
    pthread_mutex_init(&ld->pmu, NULL);
    pthread_cond_init(&ld->cv_work, NULL);
    pthread_cond_init(&ld->cv_done, NULL);
    if (ld->nworkers) {
        ld->th = (pthread_t *)ldm__dcalloc(sizeof(pthread_t) * (size_t)ld->nworkers);
        if (!ld->th) { ldm_data_loader_destroy(ld); return ldm_ctx_seterr(ctx, LDM_ERR_NOMEM, "out of memory"); }
        for (int i = 0; i < ld->nworkers; i++)
            if (pthread_create(&ld->th[i], NULL, ldm__dworker, ld) != 0) {
                ld->nworkers = i; /* destroy joins the ones that started */
                ldm_data_loader_destroy(ld);
                return ldm_ctx_seterr(ctx, LDM_ERR_UNSUPPORTED, "data loader: cannot start worker thread %d (lower num_workers)", i);
            }
    }
#endif
    *out = ld;
    return LDM_OK;
}

LDM_API void ldm_data_loader_destroy(ldm_data_loader *ld) {
    if (!ld) return;
#ifndef LDM_NO_THREADS
    pthread_mutex_lock(&ld->mu);
    ld->stop = 1;
    pthread_cond_broadcast(&ld->cv_work);
    pthread_mutex_unlock(&ld->mu);
    for (int i = 0; i < ld->nworkers; i++) pthread_join(ld->th[i], NULL);
    LDM_FREE(ld->th);
    pthread_mutex_destroy(&ld->mu);
    pthread_mutex_destroy(&ld->pmu);
    pthread_cond_destroy(&ld->cv_work);
    pthread_cond_destroy(&ld->cv_done);
#endif
    for (int i = 0; i < ld->nslots; i++) ldm_data_batch_free(&ld->slot[i].b);
    LDM_FREE(ld->slot);
    LDM_FREE(ld->perm[0]);
    LDM_FREE(ld->perm[1]);
    LDM_FREE(ld);
}

LDM_API ldm_result ldm_data_loader_next(ldm_ctx *ctx, ldm_data_loader *ld, const ldm_data_batch **batch) {
    *batch = NULL;
    if (ld->failed) return ldm_ctx_seterr(ctx, ld->failed, "%s", ld->failmsg); /* only the caller's thread writes it */
    if (ld->pos.batch >= ld->nb) {
#ifndef LDM_NO_THREADS
        pthread_mutex_lock(&ld->mu);
#endif
        ld->pos.epoch++;
        ld->pos.batch = 0;
#ifndef LDM_NO_THREADS
        pthread_mutex_unlock(&ld->mu);
#endif
        return LDM_DATA_END;
    }
    int64_t g = ld->pos.epoch * ld->nb + ld->pos.batch;
    ldm__dslot *sl = NULL;
    if (ld->nworkers == 0) {
        sl = &ld->slot[0];
        sl->r = ldm__dbuild(ld, g, &sl->b, sl->err, sizeof sl->err);
    }
#ifndef LDM_NO_THREADS
    else {
        pthread_mutex_lock(&ld->mu);
        if (ld->held >= 0) {
            ld->slot[ld->held].state = LDM__DSLOT_FREE;
            ld->held = -1;
            pthread_cond_broadcast(&ld->cv_work);
        }
        for (;;) {
            for (int i = 0; i < ld->nslots && !sl; i++)
                if (ld->slot[i].state == LDM__DSLOT_READY && ld->slot[i].g == g) sl = &ld->slot[i];
            if (sl) break;
            pthread_cond_wait(&ld->cv_done, &ld->mu);
        }
        sl->state = LDM__DSLOT_HELD;
        ld->held = (int)(sl - ld->slot);
        pthread_mutex_unlock(&ld->mu);
    }
#endif
#ifndef LDM_NO_THREADS
    pthread_mutex_lock(&ld->mu);
#endif
    ldm_result r = sl->r;
    if (r) { /* workers stop claiming until a seek */
        ld->failed = r;
        snprintf(ld->failmsg, sizeof ld->failmsg, "%s", sl->err);
    } else {
        ld->pos.batch++;
    }
#ifndef LDM_NO_THREADS
    pthread_cond_broadcast(&ld->cv_work); /* the prefetch window moved */
    pthread_mutex_unlock(&ld->mu);
#endif
    if (r) return ldm_ctx_seterr(ctx, r, "%s", ld->failmsg);
    *batch = &sl->b;
    return LDM_OK;
}

LDM_API ldm_data_state ldm_data_loader_state(const ldm_data_loader *ld) { return ld->pos; }
LDM_API int64_t ldm_data_loader_batches(const ldm_data_loader *ld) { return ld->nb; }

LDM_API ldm_result ldm_data_loader_seek(ldm_ctx *ctx, ldm_data_loader *ld, ldm_data_state st) {
    if (st.epoch < 0 || st.batch < 0 || st.batch > ld->nb)
        return ldm_ctx_seterr(ctx, LDM_ERR_INVALID, "data loader: cannot seek to epoch %lld batch %lld (an epoch has %lld batches)",
                              (long long)st.epoch, (long long)st.batch, (long long)ld->nb);
#ifndef LDM_NO_THREADS
    pthread_mutex_lock(&ld->mu);
#endif
    ld->gen++;
    for (int i = 0; i < ld->nslots; i++)
        if (ld->slot[i].state != LDM__DSLOT_FILLING) ld->slot[i].state = LDM__DSLOT_FREE;
    ld->held = -1;
    ld->pos = st;
    ld->claim = st.epoch * ld->nb + (st.batch < ld->nb ? st.batch : ld->nb);
    ld->failed = LDM_OK;
    ld->failmsg[0] = 0;
#ifndef LDM_NO_THREADS
    pthread_cond_broadcast(&ld->cv_work);
    pthread_mutex_unlock(&ld->mu);
#endif
    return LDM_OK;
}

/* ---- data module ------------------------------------------------------------------------ */
LDM_API const char *ldm_data_split_name(ldm_data_split s) {
    switch (s) {
    case LDM_DATA_TRAIN: return "train";
    case LDM_DATA_VALIDATION: return "validation";
    case LDM_DATA_TEST: return "test";
    case LDM_DATA_PREDICT: return "predict";
    default: return "?";
    }
}

LDM_API ldm_result ldm_data_module_loader(ldm_ctx *ctx, ldm_data_module *dm, ldm_data_split s, uint64_t seed, ldm_data_loader **out) {
    *out = NULL;
    if (s < 0 || s >= LDM_DATA_NSPLITS || !dm->dataset[s])
        return ldm_ctx_seterr(ctx, LDM_ERR_NOT_FOUND, "data module: no %s dataset configured (data.params.%s)", ldm_data_split_name(s),
                              ldm_data_split_name(s));
    ldm_data_loader_opts o;
    memset(&o, 0, sizeof o);
    o.batch_size = dm->batch_size;
    o.num_workers = dm->num_workers;
    o.shuffle = dm->shuffle[s];
    o.seed = seed;
    o.num_replicas = dm->num_replicas;
    o.rank = dm->rank;
    return ldm_data_loader_create(ctx, out, dm->dataset[s], &o);
}

LDM_API void ldm_data_module_destroy(ldm_data_module *dm) {
    if (!dm) return;
    for (int i = 0; i < LDM_DATA_NSPLITS; i++) ldm_dataset_destroy(dm->dataset[i]);
    LDM_FREE(dm);
}

/* ---- config glue ------------------------------------------------------------------------ */
#ifdef LDM_CONFIG_H
LDM_CONFIG_DEFINE(ldm_data_image_folder_params, LDM_DATA_IMAGE_FOLDER_KEYS)
LDM_CONFIG_DEFINE(ldm_data_sr_params, LDM_DATA_SR_TRAIN_KEYS)
LDM_CONFIG_DEFINE(ldm_data_idx_params, LDM_DATA_FASHION_MNIST_KEYS)
LDM_CONFIG_DEFINE(ldm_data_cache_params, LDM_DATA_CACHE_KEYS)
LDM_CONFIG_DEFINE(ldm_data_volume_params, LDM_DATA_VOLUME_KEYS)
LDM_CONFIG_DEFINE(ldm_data_module_params, LDM_DATA_MODULE_KEYS)

/* A variant: same members as T, other defaults. */
#define LDM__DATA_VARIANT(NAME, T, KEYS)                                                             \
    LDM_API const ldm_config_field *NAME##_schema(void) {                                            \
        static const ldm_config_field fields[] = {KEYS(LDM__CONFIG_FIELD) LDM_CONFIG_FIELD_END}; \
        return fields;                                                                               \
    }                                                                                                \
    static ldm_result NAME##_load(ldm_config *cfg, const ldm_config_node *node, T *out) {            \
        ldm_result r = ldm_config_validate(cfg, node, NAME##_schema());                              \
        if (r != LDM_OK) return r;                                                                   \
        KEYS(LDM__CONFIG_LOAD)                                                                       \
        return LDM_OK;                                                                               \
    }
LDM__DATA_VARIANT(ldm_data_image_folder_train, ldm_data_image_folder_params, LDM_DATA_IMAGE_FOLDER_TRAIN_KEYS)
LDM__DATA_VARIANT(ldm_data_image_folder_validation, ldm_data_image_folder_params, LDM_DATA_IMAGE_FOLDER_VALIDATION_KEYS)
LDM__DATA_VARIANT(ldm_data_sr_validation, ldm_data_sr_params, LDM_DATA_SR_VALIDATION_KEYS)
LDM__DATA_VARIANT(ldm_data_mnist, ldm_data_idx_params, LDM_DATA_MNIST_KEYS)

/* "file:line: path" of a node for messages. */
static const char *ldm__dcfg_where(const ldm_config_node *n, char *buf, size_t size) {
    char path[256];
    if (!n) { snprintf(buf, size, "<config>"); return buf; }
    snprintf(buf, size, "%s:%d: %s", n->file ? n->file : "<config>", n->line, ldm_config_path(n, path, sizeof path));
    return buf;
}

/* Forwards the ctx's message to cfg with the node's place, and clears the ctx. */
static ldm_result ldm__dcfg_fwd(ldm_config *cfg, ldm_ctx *ctx, ldm_result r, const ldm_config_node *at) {
    char where[320];
    ldm_config_seterr(cfg, r, "%s: %s", ldm__dcfg_where(at, where, sizeof where), ldm_ctx_error(ctx));
    ldm_ctx_clear_error(ctx);
    return r;
}

static ldm_result ldm__dcfg_interp(ldm_config *cfg, const ldm_config_node *params, const char *key, const char *name,
                                   ldm_data_interp *out) {
    char msg[256], where[320];
    ldm_result r = ldm_data_interp_parse(name, out, msg, sizeof msg);
    if (r) {
        const ldm_config_node *at = params ? ldm_config_find(params, key) : NULL;
        return ldm_config_seterr(cfg, r, "%s: %s", ldm__dcfg_where(at ? at : params, where, sizeof where), msg);
    }
    return LDM_OK;
}

static ldm_result ldm__dcfg_root(ldm_config *cfg, const ldm_config_node *params, const char *k1, const char *v1,
                                 const char *k2, const char *v2, int required, const char **out) {
    char where[320];
    if (v1[0] && v2[0] && strcmp(v1, v2))
        return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s: give %s or %s, not both ('%s' vs '%s')",
                                 ldm__dcfg_where(params, where, sizeof where), k1, k2, v1, v2);
    *out = v1[0] ? v1 : v2;
    if (required && !(*out)[0])
        return ldm_config_seterr(cfg, LDM_ERR_NOT_FOUND, "%s: missing required key '%s' (or '%s'): the image directory",
                                 ldm__dcfg_where(params, where, sizeof where), k1, k2);
    return LDM_OK;
}

typedef struct ldm__dcfg_variant {
    ldm_result (*load_folder)(ldm_config *, const ldm_config_node *, ldm_data_image_folder_params *);
    ldm_result (*load_sr)(ldm_config *, const ldm_config_node *, ldm_data_sr_params *);
    ldm_result (*load_idx)(ldm_config *, const ldm_config_node *, ldm_data_idx_params *);
} ldm__dcfg_variant;
static const ldm__dcfg_variant ldm__dcfg_folder_all = {ldm_data_image_folder_params_load, NULL, NULL};
static const ldm__dcfg_variant ldm__dcfg_folder_train = {ldm_data_image_folder_train_load, NULL, NULL};
static const ldm__dcfg_variant ldm__dcfg_folder_val = {ldm_data_image_folder_validation_load, NULL, NULL};
static const ldm__dcfg_variant ldm__dcfg_sr_train = {NULL, ldm_data_sr_params_load, NULL};
static const ldm__dcfg_variant ldm__dcfg_sr_val = {NULL, ldm_data_sr_validation_load, NULL};
static const ldm__dcfg_variant ldm__dcfg_fmnist = {NULL, NULL, ldm_data_idx_params_load};
static const ldm__dcfg_variant ldm__dcfg_mnist = {NULL, NULL, ldm_data_mnist_load};

static ldm_result ldm__dcfg_need_ctx(ldm_config *cfg, void *arg, const ldm_config_node *params) {
    char where[320];
    if (arg) return LDM_OK;
    return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s: dataset constructors need an ldm_ctx * as the instantiate argument",
                             ldm__dcfg_where(params, where, sizeof where));
}

static ldm_result ldm__dcfg_src(ldm_config *cfg, const ldm_config_node *params, const char *root, const char *data_root,
                                const char *split, double val_fraction, const char *file_list, int64_t max_items,
                                ldm_data_folder_opts *o) {
    memset(o, 0, sizeof *o);
    ldm_result r = ldm__dcfg_root(cfg, params, "root", root, "data_root", data_root, 1, &o->root);
    o->split = split;
    o->val_fraction = val_fraction;
    o->file_list = file_list[0] ? file_list : NULL;
    o->max_items = max_items;
    return r;
}

static ldm_result ldm__dcfg_folder_ctor(ldm_config *cfg, const ldm_config_node *params, void *user, void *arg, void **out) {
    const ldm__dcfg_variant *v = (const ldm__dcfg_variant *)user;
    ldm_ctx *ctx = (ldm_ctx *)arg;
    ldm_data_image_folder_params p;
    ldm_data_image_folder_opts o;
    ldm_result r;
    *out = NULL;
    if ((r = ldm__dcfg_need_ctx(cfg, arg, params)) || (r = v->load_folder(cfg, params, &p))) return r;
    memset(&o, 0, sizeof o);
    if ((r = ldm__dcfg_src(cfg, params, p.root, p.data_root, p.split, p.val_fraction, p.file_list, p.max_items, &o.src))) return r;
    o.src.labels = p.labels;
    o.size = p.size;
    o.random_crop = p.random_crop;
    o.flip_p = (float)p.flip_p;
    o.channels = p.channels;
    if ((r = ldm__dcfg_interp(cfg, params, "interpolation", p.interpolation, &o.interp))) return r;
    if ((r = ldm_dataset_image_folder(ctx, (ldm_dataset **)out, &o))) return ldm__dcfg_fwd(cfg, ctx, r, params);
    return LDM_OK;
}

static ldm_result ldm__dcfg_sr_ctor(ldm_config *cfg, const ldm_config_node *params, void *user, void *arg, void **out) {
    const ldm__dcfg_variant *v = (const ldm__dcfg_variant *)user;
    ldm_ctx *ctx = (ldm_ctx *)arg;
    ldm_data_sr_params p;
    ldm_data_sr_opts o;
    ldm_result r;
    *out = NULL;
    if ((r = ldm__dcfg_need_ctx(cfg, arg, params)) || (r = v->load_sr(cfg, params, &p))) return r;
    memset(&o, 0, sizeof o);
    if ((r = ldm__dcfg_src(cfg, params, p.root, p.data_root, p.split, p.val_fraction, p.file_list, p.max_items, &o.src))) return r;
    o.size = p.size;
    o.downscale_f = p.downscale_f;
    o.min_crop_f = p.min_crop_f;
    o.max_crop_f = p.max_crop_f;
    o.random_crop = p.random_crop;
    if ((r = ldm__dcfg_interp(cfg, params, "degradation", p.degradation, &o.degradation))) return r;
    if (o.degradation == LDM_INTERP_AUTO) {
        char where[320];
        return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s: degradation 'auto' is not a degradation; name a filter (e.g. cv_bicubic)",
                                 ldm__dcfg_where(ldm_config_find(params, "degradation"), where, sizeof where));
    }
    if ((r = ldm_dataset_imagenet_sr(ctx, (ldm_dataset **)out, &o))) return ldm__dcfg_fwd(cfg, ctx, r, params);
    return LDM_OK;
}

/* root/<base>.gz, else root/<base>; NULL (and an error in cfg) when neither exists. */
static char *ldm__dcfg_find_idx(ldm_config *cfg, const ldm_config_node *params, const char *root, const char *base) {
    char where[320];
    struct stat st;
    char *raw = ldm__djoin(root, base);
    size_t n = raw ? strlen(raw) : 0;
    char *gz = raw ? (char *)ldm__dalloc(n + 4) : NULL;
    if (!gz) { LDM_FREE(raw); ldm_config_seterr(cfg, LDM_ERR_NOMEM, "out of memory"); return NULL; }
    memcpy(gz, raw, n);
    memcpy(gz + n, ".gz", 4);
    if (stat(gz, &st) == 0) { LDM_FREE(raw); return gz; }
    if (stat(raw, &st) == 0) { LDM_FREE(gz); return raw; }
    ldm_config_seterr(cfg, LDM_ERR_IO, "%s: neither '%s' nor '%s' exists (Fashion-MNIST: apt-get install dataset-fashion-mnist)",
                      ldm__dcfg_where(params, where, sizeof where), gz, raw);
    LDM_FREE(gz);
    LDM_FREE(raw);
    return NULL;
}

static ldm_result ldm__dcfg_idx_ctor(ldm_config *cfg, const ldm_config_node *params, void *user, void *arg, void **out) {
    const ldm__dcfg_variant *v = (const ldm__dcfg_variant *)user;
    ldm_ctx *ctx = (ldm_ctx *)arg;
    ldm_data_idx_params p;
    ldm_data_idx_opts o;
    char where[320];
    const char *root = "";
    char *img = NULL, *lab = NULL;
    ldm_result r;
    *out = NULL;
    if ((r = ldm__dcfg_need_ctx(cfg, arg, params)) || (r = v->load_idx(cfg, params, &p))) return r;
    memset(&o, 0, sizeof o);
    int test = !strcmp(p.split, "test");
    if (!test && strcmp(p.split, "train"))
        return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s: split '%s' is not train or test",
                                 ldm__dcfg_where(ldm_config_find(params, "split"), where, sizeof where), p.split);
    if (!p.images[0]) {
        if ((r = ldm__dcfg_root(cfg, params, "root", p.root, "path", p.path, 1, &root))) return r;
        img = ldm__dcfg_find_idx(cfg, params, root, test ? "t10k-images-idx3-ubyte" : "train-images-idx3-ubyte");
        if (!img) return LDM_ERR_IO;
    }
    if (!p.labels[0] && !p.images[0]) {
        lab = ldm__dcfg_find_idx(cfg, params, root, test ? "t10k-labels-idx1-ubyte" : "train-labels-idx1-ubyte");
        if (!lab) { LDM_FREE(img); return LDM_ERR_IO; }
    }
    o.images = p.images[0] ? p.images : img;
    o.labels = p.labels[0] ? p.labels : lab;
    o.size = p.size;
    o.channels = p.channels;
    o.flip_p = (float)p.flip_p;
    o.max_items = p.max_items;
    if (!strcmp(p.resize, "pad")) o.pad = 1;
    else if ((r = ldm__dcfg_interp(cfg, params, "resize", p.resize, &o.interp))) { LDM_FREE(img); LDM_FREE(lab); return r; }
    r = ldm_dataset_idx(ctx, (ldm_dataset **)out, &o);
    LDM_FREE(img);
    LDM_FREE(lab);
    return r ? ldm__dcfg_fwd(cfg, ctx, r, params) : LDM_OK;
}

static ldm_result ldm__dcfg_module_ctor(ldm_config *cfg, const ldm_config_node *params, void *user, void *arg, void **out);

/* An int list of 1 (all axes) or 3 (T, H, W) sizes; -1 and 0 keep the axis. */
static ldm_result ldm__dcfg_sizes3(ldm_config *cfg, const ldm_config_node *params, const char *key, const ldm_config_ints *l, int out[3]) {
    char where[320];
    out[0] = out[1] = out[2] = 0;
    if (l->n == 0) return LDM_OK;
    if (l->n != 1 && l->n != 3)
        return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s: %s has %d sizes; give 3 (T, H, W) or 1 for all axes", ldm__dcfg_where(ldm_config_find(params, key), where, sizeof where), key, l->n);
    for (int k = 0; k < 3; k++) {
        int v = l->v[l->n == 1 ? 0 : k];
        if (v < -1 || v > 32767)
            return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s: %s size %d must be in -1..32767 (-1 or 0: keep that axis)",
                                     ldm__dcfg_where(ldm_config_find(params, key), where, sizeof where), key, v);
        out[k] = v > 0 ? v : 0;
    }
    return LDM_OK;
}

static ldm_result ldm__dcfg_volume_ctor(ldm_config *cfg, const ldm_config_node *params, void *user, void *arg, void **out) {
    ldm_ctx *ctx = (ldm_ctx *)arg;
    ldm_data_volume_params p;
    ldm_data_volume_opts o;
    ldm_result r;
    char where[320];
    (void)user;
    *out = NULL;
    if ((r = ldm__dcfg_need_ctx(cfg, arg, params)) || (r = ldm_data_volume_params_load(cfg, params, &p))) return r;
    memset(&o, 0, sizeof o);
    if ((r = ldm__dcfg_src(cfg, params, p.root, p.data_root, p.split, p.val_fraction, p.file_list, p.max_items, &o.src))) return r;
    o.src.labels = p.labels;
    if (!strcmp(p.norm, "none")) o.norm = LDM_VOL_NONE;
    else if (!strcmp(p.norm, "window") || !strcmp(p.norm, "ScaleIntensityRanged")) o.norm = LDM_VOL_WINDOW;
    else if (!strcmp(p.norm, "zscore")) o.norm = LDM_VOL_ZSCORE;
    else if (!strcmp(p.norm, "minmax") || !strcmp(p.norm, "ScaleIntensity")) o.norm = LDM_VOL_MINMAX;
    else
        return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s: norm '%s' is not none, window, zscore or minmax", ldm__dcfg_where(ldm_config_find(params, "norm"), where, sizeof where),
                                 p.norm);
    o.a_min = (float)p.a_min;
    o.a_max = (float)p.a_max;
    o.b_min = (float)p.b_min;
    o.b_max = (float)p.b_max;
    o.clip = p.clip;
    o.random_crop = p.random_crop;
    o.max_voxels = p.max_voxels;
    if ((r = ldm__dcfg_sizes3(cfg, params, "resize", &p.resize, o.resize)) || (r = ldm__dcfg_sizes3(cfg, params, "spatial_size", &p.spatial_size, o.spatial_size)))
        return r;
    if ((r = ldm_dataset_volume(ctx, (ldm_dataset **)out, &o))) return ldm__dcfg_fwd(cfg, ctx, r, params);
    return LDM_OK;
}

/* Instantiates a dataset node, refusing targets that make something else. */
static ldm_result ldm__dcfg_dataset(ldm_config *cfg, const ldm_config_registry *reg, const ldm_config_node *node, ldm_ctx *ctx,
                                    ldm_dataset **out) {
    const ldm_config_target *t;
    char where[320];
    *out = NULL;
    ldm_result r = ldm_config_registry_lookup(cfg, reg, node ? ldm_config_find(node, "target") : NULL, &t);
    if (r) return r;
    if (t->fn == ldm__dcfg_module_ctor)
        return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s: %s makes a data module, not a dataset", ldm__dcfg_where(node, where, sizeof where), t->name);
    return ldm_config_instantiate(cfg, reg, node, ctx, (void **)out);
}

static ldm_result ldm__dcfg_cache_ctor(ldm_config *cfg, const ldm_config_node *params, void *user, void *arg, void **out) {
    ldm_data_cache_params p;
    ldm_dataset *inner;
    ldm_result r;
    char where[320];
    *out = NULL;
    if ((r = ldm__dcfg_need_ctx(cfg, arg, params)) || (r = ldm_data_cache_params_load(cfg, params, &p))) return r;
    if (p.max_mb < 0)
        return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s: max_mb = %d must be >= 0", ldm__dcfg_where(ldm_config_find(params, "max_mb"), where, sizeof where), p.max_mb);
    if ((r = ldm__dcfg_dataset(cfg, (const ldm_config_registry *)user, p.dataset, (ldm_ctx *)arg, &inner))) return r;
    if ((r = ldm_dataset_cache((ldm_ctx *)arg, (ldm_dataset **)out, inner, (size_t)p.max_mb << 20))) return ldm__dcfg_fwd(cfg, (ldm_ctx *)arg, r, params);
    return LDM_OK;
}

static ldm_result ldm__dcfg_module_ctor(ldm_config *cfg, const ldm_config_node *params, void *user, void *arg, void **out) {
    const ldm_config_registry *reg = (const ldm_config_registry *)user;
    ldm_ctx *ctx = (ldm_ctx *)arg;
    ldm_data_module_params p;
    ldm_result r;
    char where[320];
    *out = NULL;
    if ((r = ldm__dcfg_need_ctx(cfg, arg, params)) || (r = ldm_data_module_params_load(cfg, params, &p))) return r;
    if (p.batch_size < 1)
        return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s: batch_size = %d must be at least 1",
                                 ldm__dcfg_where(ldm_config_find(params, "batch_size"), where, sizeof where), p.batch_size);
    if (p.num_workers < -1 || p.num_workers > LDM_DATA_MAX_WORKERS)
        return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s: num_workers = %d must be in [0, %d] (or -1/null: 2 * batch_size)",
                                 ldm__dcfg_where(ldm_config_find(params, "num_workers"), where, sizeof where), p.num_workers, LDM_DATA_MAX_WORKERS);
    ldm_data_module *dm = (ldm_data_module *)ldm__dcalloc(sizeof *dm);
    if (!dm) return ldm_config_seterr(cfg, LDM_ERR_NOMEM, "out of memory");
    dm->batch_size = p.batch_size;
    dm->num_workers = p.num_workers >= 0 ? p.num_workers : (2 * p.batch_size < LDM_DATA_MAX_WORKERS ? 2 * p.batch_size : LDM_DATA_MAX_WORKERS);
    dm->wrap = p.wrap;
    dm->shuffle[LDM_DATA_TRAIN] = 1;
    dm->shuffle[LDM_DATA_VALIDATION] = p.shuffle_val_dataloader;
    dm->shuffle[LDM_DATA_TEST] = p.shuffle_test_loader;
    const ldm_config_node *nodes[LDM_DATA_NSPLITS];
    nodes[LDM_DATA_TRAIN] = p.train;
    nodes[LDM_DATA_VALIDATION] = p.validation;
    nodes[LDM_DATA_TEST] = p.test;
    nodes[LDM_DATA_PREDICT] = p.predict;
    for (int s = 0; s < LDM_DATA_NSPLITS; s++)
        if (nodes[s] && (r = ldm__dcfg_dataset(cfg, reg, nodes[s], ctx, &dm->dataset[s]))) {
            ldm_data_module_destroy(dm);
            return r;
        }
    *out = dm;
    return LDM_OK;
}

LDM_API ldm_result ldm_data_register(ldm_config_registry *reg) {
    static const struct { const char *name, *aliases; ldm_config_ctor fn; const ldm__dcfg_variant *v; } t[] = {
        {"ldm.data.folder.ImageFolder", "ImageFolder", ldm__dcfg_folder_ctor, &ldm__dcfg_folder_all},
        {"ldm.data.folder.ImageFolderTrain", "ImageFolderTrain", ldm__dcfg_folder_ctor, &ldm__dcfg_folder_train},
        {"ldm.data.folder.ImageFolderValidation", "ImageFolderValidation", ldm__dcfg_folder_ctor, &ldm__dcfg_folder_val},
        {"ldm.data.imagenet.ImageNetSRTrain", "ImageNetSRTrain", ldm__dcfg_sr_ctor, &ldm__dcfg_sr_train},
        {"ldm.data.imagenet.ImageNetSRValidation", "ImageNetSRValidation", ldm__dcfg_sr_ctor, &ldm__dcfg_sr_val},
        {"ldm.data.mnist.FashionMNIST", "FashionMNIST", ldm__dcfg_idx_ctor, &ldm__dcfg_fmnist},
        {"ldm.data.mnist.MNIST", "MNIST", ldm__dcfg_idx_ctor, &ldm__dcfg_mnist},
    };
    ldm_result r;
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if ((r = ldm_config_registry_add(reg, t[i].name, t[i].aliases, t[i].fn, (void *)t[i].v))) return r;
    if ((r = ldm_config_registry_add(reg, "ldm.data.cache.CacheDataset", "CacheDataset", ldm__dcfg_cache_ctor, reg))) return r;
    if ((r = ldm_config_registry_add(reg, "ldm.data.volume.VolumeDataset", "VolumeDataset,NiftiDataset", ldm__dcfg_volume_ctor, NULL))) return r;
    return ldm_config_registry_add(reg, "main.DataModuleFromConfig", "DataModuleFromConfig", ldm__dcfg_module_ctor, reg);
}

LDM_API ldm_result ldm_data_module_from_config(ldm_config *cfg, const ldm_config_registry *reg, const ldm_config_node *node,
                                               ldm_ctx *ctx, ldm_data_module **out) {
    const ldm_config_target *t;
    char where[320];
    *out = NULL;
    if (!node) node = ldm_config_root(cfg);
    if (!ldm_config_find(node, "target") && ldm_config_find(node, "data")) node = ldm_config_find(node, "data");
    ldm_result r = ldm_config_registry_lookup(cfg, reg, ldm_config_find(node, "target"), &t);
    if (r) return r;
    if (t->fn != ldm__dcfg_module_ctor)
        return ldm_config_seterr(cfg, LDM_ERR_INVALID, "%s: the data target is %s; expected main.DataModuleFromConfig",
                                 ldm__dcfg_where(ldm_config_find(node, "target"), where, sizeof where), t->name);
    return ldm_config_instantiate(cfg, reg, node, ctx, (void **)out);
}
#endif /* LDM_CONFIG_H */

#endif /* LDM_DATA_IMPLEMENTATION_DONE */
#endif /* LDM_IMPLEMENTATION || LDM_DATA_IMPLEMENTATION */
