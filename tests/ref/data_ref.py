"""Reference data for tests/test_data.c (ldm_data.h): resampling in every mode against
PyTorch 1.13 (F.interpolate), OpenCV 4.6 (cv2.resize) and Pillow (Image.resize), the dataset
pipelines the way CompVis runs them on uint8 arrays (albumentations SmallestMaxSize with
INTER_AREA, crops, ImageNetSR degradations), and tiny IDX files (raw and gzip).

Run with the system python that has torch, numpy, cv2 and PIL:
    /usr/bin/python3 tests/ref/data_ref.py
It writes tests/fixtures/data_ref.safetensors and tests/fixtures/data_idx_*.
"""
import gzip
import json
import os
import struct

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures")


def write_safetensors(path, tensors, meta):
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        dt = {np.dtype(np.float32): "F32", np.dtype(np.uint8): "U8"}[arr.dtype]
        b = arr.tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def photo_like(c, h, w, seed):
    """Smooth gradients, edges and noise: content where the filters differ."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((c, h, w))
    for k in range(c):
        base = 128 + 90 * np.sin(x / (3.0 + k) + y / 5.0) * np.cos(y / (4.0 + k))
        base += np.where((x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(h, w) / 3) ** 2, 60, -40)
        base += rng.normal(0, 18, (h, w))
        out[k] = base
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


T = {}
# ---- resampling: one grey plane 20x30, float values 0..255 -----------------------------------
src = photo_like(1, 20, 30, 1)[0]
T["rs_src"] = src
srcf = src.astype(np.float32)
SIZES = [(10, 15), (5, 10), (8, 12), (13, 19), (40, 60), (27, 41), (16, 45), (20, 30)]
t = torch.from_numpy(srcf)[None, None]
pil = Image.fromarray(src)
for (oh, ow) in SIZES:
    tag = f"{oh}x{ow}"
    T[f"torch_nearest_{tag}"] = F.interpolate(t, size=(oh, ow), mode="nearest")[0, 0].numpy()
    T[f"torch_bilinear_{tag}"] = F.interpolate(t, size=(oh, ow), mode="bilinear", align_corners=False)[0, 0].numpy()
    T[f"torch_bicubic_{tag}"] = F.interpolate(t, size=(oh, ow), mode="bicubic", align_corners=False)[0, 0].numpy()
    T[f"torch_area_{tag}"] = F.interpolate(t, size=(oh, ow), mode="area")[0, 0].numpy()
    T[f"torch_bilinear_aa_{tag}"] = F.interpolate(t, size=(oh, ow), mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()
    T[f"torch_bicubic_aa_{tag}"] = F.interpolate(t, size=(oh, ow), mode="bicubic", align_corners=False, antialias=True)[0, 0].numpy()
    for name, m in [("area", cv2.INTER_AREA), ("bilinear", cv2.INTER_LINEAR), ("bicubic", cv2.INTER_CUBIC), ("nearest", cv2.INTER_NEAREST)]:
        T[f"cv_{name}_{tag}"] = cv2.resize(srcf, (ow, oh), interpolation=m)
        T[f"cvu8_{name}_{tag}"] = cv2.resize(src, (ow, oh), interpolation=m)
    for name, m in [("nearest", Image.NEAREST), ("bilinear", Image.BILINEAR), ("bicubic", Image.BICUBIC),
                    ("box", Image.BOX), ("hamming", Image.HAMMING), ("lanczos", Image.LANCZOS)]:
        T[f"pil_{name}_{tag}"] = np.asarray(pil.resize((ow, oh), m))

# ---- pipelines: an RGB image 40x56 (H x W), written as PNG by the C test ----------------------
rgb = photo_like(3, 40, 56, 2)
T["rgb"] = rgb
hwc = np.ascontiguousarray(rgb.transpose(1, 2, 0))


def smallest_max_size(img, size, interp):
    # albumentations.SmallestMaxSize: scale the shorter side to size, Python round() per side
    h, w = img.shape[:2]
    scale = size / float(min(h, w))
    if scale == 1.0:
        return img
    nh, nw = round(h * scale), round(w * scale)
    return cv2.resize(img, (nw, nh), interpolation=interp)


# ImageFolder size 24: shrink with INTER_AREA (uint8, as CompVis) -> [3,24,34]
T["folder24_cv"] = smallest_max_size(hwc, 24, cv2.INTER_AREA).transpose(2, 0, 1).copy()
# the same in float with round-half-even: ldm_data.h's arithmetic
T["folder24_f"] = np.clip(np.rint(smallest_max_size(hwc.astype(np.float32), 24, cv2.INTER_AREA)), 0, 255).astype(np.uint8).transpose(2, 0, 1).copy()
# ImageFolder size 64: enlarge bilinear (torch, rounded) and cv2 INTER_LINEAR on uint8
tt = torch.from_numpy(rgb.astype(np.float32))[None]
up = F.interpolate(tt, size=(64, round(56 * 64 / 40)), mode="bilinear", align_corners=False)[0].numpy()
T["folder64_f"] = np.clip(np.rint(up), 0, 255).astype(np.uint8)
T["folder64_cv"] = smallest_max_size(hwc, 64, cv2.INTER_LINEAR).transpose(2, 0, 1).copy()

# ImageNetSR with min_crop_f = max_crop_f = 1, centre crop: 40x40 crop at x0 = 8, INTER_AREA to 32,
# LR 8x8 with each degradation (ldm/data/imagenet.py)
crop = hwc[0:40, 8:48]
hr = smallest_max_size(crop, 32, cv2.INTER_AREA)
T["sr_hr_cv"] = hr.transpose(2, 0, 1).copy()
T["sr_hr_f"] = np.clip(np.rint(smallest_max_size(crop.astype(np.float32), 32, cv2.INTER_AREA)), 0, 255).astype(np.uint8).transpose(2, 0, 1).copy()
hr_ours = T["sr_hr_f"].transpose(1, 2, 0).copy()  # LR from the same HR the C code has
for name, m in [("cv_bicubic", cv2.INTER_CUBIC), ("cv_bilinear", cv2.INTER_LINEAR), ("cv_area", cv2.INTER_AREA), ("cv_nearest", cv2.INTER_NEAREST)]:
    T[f"sr_lr_{name}"] = smallest_max_size(hr_ours, 8, m).transpose(2, 0, 1).copy()
for name, m in [("pil_bicubic", Image.BICUBIC), ("pil_bilinear", Image.BILINEAR), ("pil_nearest", Image.NEAREST), ("pil_box", Image.BOX),
                ("pil_lanczos", Image.LANCZOS)]:
    T[f"sr_lr_{name}"] = np.asarray(Image.fromarray(hr_ours).resize((8, 8), m)).transpose(2, 0, 1).copy()

write_safetensors(os.path.join(FIX, "data_ref.safetensors"), T,
                  {"source": "tests/ref/data_ref.py", "torch": torch.__version__, "cv2": cv2.__version__, "PIL": Image.__version__})

# ---- IDX: 5 images of 4x3 and their labels, raw and gzip (with a file name in the header) ----
imgs = (np.arange(5 * 4 * 3, dtype=np.uint32) * 37 % 256).astype(np.uint8).reshape(5, 4, 3)
labs = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
idx3 = struct.pack(">BBBBIII", 0, 0, 8, 3, 5, 4, 3) + imgs.tobytes()
idx1 = struct.pack(">BBBBI", 0, 0, 8, 1, 5) + labs.tobytes()
with open(os.path.join(FIX, "data_idx_images-idx3-ubyte"), "wb") as f:
    f.write(idx3)
with open(os.path.join(FIX, "data_idx_labels-idx1-ubyte"), "wb") as f:
    f.write(idx1)
with open(os.path.join(FIX, "data_idx_images-idx3-ubyte.gz"), "wb") as raw:
    with gzip.GzipFile(filename="data_idx_images-idx3-ubyte", mode="wb", fileobj=raw, mtime=0) as g:
        g.write(idx3)
with open(os.path.join(FIX, "data_idx_labels-idx1-ubyte.gz"), "wb") as raw:
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as g:
        g.write(idx1)
# a small JPEG for the ImageFolder test (stb_image_write's JPEG encoder trips UBSan)
Image.fromarray(photo_like(3, 30, 36, 3).transpose(1, 2, 0)).save(os.path.join(FIX, "data_small.jpg"), quality=95)
print("wrote", len(T), "tensors;", os.path.getsize(os.path.join(FIX, "data_ref.safetensors")), "bytes")
