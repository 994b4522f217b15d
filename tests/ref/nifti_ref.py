"""Reference data for tests/test_nifti.c (ldm_data.h NIfTI-1 volumes and the volume dataset).

nibabel (Debian: apt-get install python3-nibabel) is the independent NIfTI implementation:
it writes the volumes the C test reads (every datatype, big-endian, gzip'ed with real
deflate compression, scl_slope/scl_inter chosen by nibabel, oblique orientations), and its
reading of them is the expected data. PyTorch 1.13 gives F.interpolate(mode="trilinear",
align_corners=False) and the dataset pipeline (MONAI ScaleIntensityRanged-style window, resize,
centre crop; z-score).

    /usr/bin/python3 tests/ref/nifti_ref.py            writes tests/fixtures/nifti_*
    /usr/bin/python3 tests/ref/nifti_ref.py --check D  reads with nibabel the volumes that
        test_nifti wrote into D (LDM_NIFTI_XCHECK=D build/test_nifti) and compares them with
        the values the test wrote (the same formula as below) and nifti_u8.nii's orientation.

Axis order: nibabel's array is (x, y, z[, t]) with x fastest on disk; ldm's is [C, T, H, W] =
(t, z, y, x), i.e. the transpose.
"""
import os
import struct
import sys

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_safetensors  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures")


def oblique_affine(zooms, angle, offset):
    """A rotation about z times the voxel sizes, plus an offset: a qform-representable affine."""
    c, s = np.cos(angle), np.sin(angle)
    r = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag(zooms)
    a = np.eye(4)
    a[:3, :3] = r
    a[:3, 3] = offset
    return a


def hdr_vector(img):
    """pixdim[8], qform_code, sform_code, quatern b c d, qoffset x y z, srow_x, srow_y, srow_z."""
    h = img.header
    v = list(h["pixdim"]) + [int(h["qform_code"]), int(h["sform_code"])]
    v += [float(h[k]) for k in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")]
    v += list(h["srow_x"]) + list(h["srow_y"]) + list(h["srow_z"])
    return np.array(v, dtype=np.float32)


def ldm_layout(img):
    """nibabel's float64 reading (scaling applied) in ldm's [C, T, H, W] order, as float32."""
    a = np.asanyarray(img.dataobj).astype(np.float64)
    if a.ndim == 3:
        a = a[..., None]
    return np.ascontiguousarray(a.transpose(3, 2, 1, 0)).astype(np.float32)


def formula(shape):
    """The values test_nifti writes: x fastest; v = ((i*7 + j*13 + k*29 + t*31) % 200) - 100."""
    nx, ny, nz, nt = shape
    i, j, k, t = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), np.arange(nt), indexing="ij")
    return ((i * 7 + j * 13 + k * 29 + t * 31) % 200 - 100).astype(np.float64)


def make():
    rng = np.random.RandomState(5)
    T = {}

    def save(name, img, check_be=None):
        path = os.path.join(FIX, name)
        nib.save(img, path)
        back = nib.load(path)
        if check_be is not None:
            raw = open(path, "rb").read(4)
            assert struct.unpack(">i" if check_be else "<i", raw)[0] == 348, name
        key = name.split(".")[0]
        T[key + "_data"] = ldm_layout(back)
        T[key + "_hdr"] = hdr_vector(back)
        T[key + "_dim"] = np.array(back.header["dim"], dtype=np.float32)
        return back

    # uint8, 6x5x4, oblique, sform 2 (aligned) and qform 1 (scanner)
    aff = oblique_affine([2.0, 1.5, 3.0], 0.3, [-10.0, 20.5, 7.25])
    img = nib.Nifti1Image(rng.randint(0, 256, (6, 5, 4)).astype(np.uint8), aff)
    img.header.set_qform(aff, code=1)
    img.header.set_sform(aff, code=2)
    save("nifti_u8.nii", img, check_be=False)

    # float data stored as int16 with nibabel's own scl_slope / scl_inter, gzip'ed (deflate)
    f = rng.uniform(-1500, 2500, (7, 6, 5)).astype(np.float32)
    img = nib.Nifti1Image(f, oblique_affine([0.8, 0.8, 2.5], -0.7, [100.0, -50.0, 3.0]))
    img.set_data_dtype(np.int16)
    back = save("nifti_i16s.nii.gz", img)
    slope, inter = float(back.dataobj.slope), float(back.dataobj.inter)
    assert slope != 1.0 and inter != 0.0, (slope, inter)
    print("nifti_i16s: nibabel chose scl_slope %r, scl_inter %r" % (slope, inter))
    with open(os.path.join(FIX, "nifti_i16s.nii.gz"), "rb") as fh:
        assert fh.read(2) == b"\x1f\x8b"

    # big-endian float32, 4-D (nt = 2: ldm's channels)
    hdr = nib.Nifti1Header(endianness=">")
    img = nib.Nifti1Image(rng.standard_normal((5, 4, 3, 2)).astype(np.float32) * 100, np.diag([1.2, 1.1, 1.0, 1.0]), header=hdr)
    save("nifti_f32be.nii", img, check_be=True)

    # the other datatypes
    img = nib.Nifti1Image(rng.uniform(-1e6, 1e6, (4, 3, 2)), np.eye(4))
    img.set_data_dtype(np.float64)
    save("nifti_f64.nii", img)
    img = nib.Nifti1Image(rng.randint(-128, 128, (5, 3, 2)).astype(np.int8), np.eye(4))
    save("nifti_i8.nii", img)
    img = nib.Nifti1Image(rng.randint(0, 65536, (3, 4, 5)).astype(np.uint16), np.eye(4))
    save("nifti_u16.nii.gz", img)
    img = nib.Nifti1Image(rng.randint(-2**31, 2**31 - 1, (3, 3, 3)).astype(np.int32), np.eye(4))
    save("nifti_i32.nii", img)

    # a small "CT": int16 Hounsfield units, unscaled, for the dataset pipeline
    ct = rng.randint(-1200, 1600, (9, 8, 7)).astype(np.int16)
    img = nib.Nifti1Image(ct, np.diag([0.7, 0.7, 2.0, 1.0]))
    back = save("nifti_ct.nii.gz", img)
    x = torch.from_numpy(ldm_layout(back)).double()  # [1, 7, 8, 9]
    w = ((x - (-1000.0)) / (1000.0 - (-1000.0)) * (1.0 - (-1.0)) + (-1.0)).clamp(-1.0, 1.0).float()
    T["ct_window"] = w.numpy()
    r = F.interpolate(w[None], size=(5, 12, 6), mode="trilinear", align_corners=False)[0]
    T["ct_window_resized"] = r.numpy()  # [1, 5, 12, 6]
    T["ct_centre_crop"] = r[:, (5 - 4) // 2:(5 - 4) // 2 + 4, (12 - 8) // 2:(12 - 8) // 2 + 8, 0:6].contiguous().numpy()
    z = (x - x.mean()) / x.std(unbiased=False)
    T["ct_zscore"] = z.float().numpy()
    mm = (x - x.min()) / (x.max() - x.min()) * (1.0 - (-1.0)) + (-1.0)  # MONAI ScaleIntensity(minv=-1, maxv=1)
    T["ct_minmax"] = mm.float().numpy()

    # trilinear resize, [C=2, T=5, H=6, W=7] to smaller, larger and mixed sizes
    src = torch.from_numpy(rng.standard_normal((2, 5, 6, 7)).astype(np.float32))
    T["tri_src"] = src.numpy()
    for size in [(3, 4, 5), (8, 9, 11), (5, 3, 13), (1, 1, 1), (5, 6, 7)]:
        out = F.interpolate(src[None], size=size, mode="trilinear", align_corners=False)[0]
        T["tri_%dx%dx%d" % size] = out.contiguous().numpy()

    # a header extension (a comment): vox_offset beyond 352, the data after the extension
    img = nib.Nifti1Image(rng.randint(-500, 500, (4, 3, 2)).astype(np.int16), np.eye(4))
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"ldm test: data starts after this extension"))
    save("nifti_ext.nii", img)
    with open(os.path.join(FIX, "nifti_ext.nii"), "rb") as fh:
        vox_offset = struct.unpack("<f", fh.read(112)[108:112])[0]
    assert vox_offset > 352, vox_offset

    write_safetensors(os.path.join(FIX, "nifti_ref.safetensors"), T,
                      {"generator": "tests/ref/nifti_ref.py", "nibabel": nib.__version__, "torch": torch.__version__})
    for k in sorted(T):
        print(k, T[k].shape)


def check(d):
    """Volumes test_nifti wrote: values and orientation as nibabel reads them."""
    ref = nib.load(os.path.join(FIX, "nifti_u8.nii"))
    bad = 0
    names = sorted(n for n in os.listdir(d) if n.endswith((".nii", ".nii.gz")))
    for n in names:
        img = nib.load(os.path.join(d, n))
        a = np.asanyarray(img.dataobj).astype(np.float64)
        if n.startswith("mixed_"):  # the compressor's test volumes, next to raw float32 dumps
            want = np.fromfile(os.path.join(d, n.split(".")[0] + ".f32"), dtype="<f4").reshape(a.shape[::-1]).T
            err = np.abs(a - want).max()
            bad += err != 0
            print("%s %-28s dtype %-8s shape %-14s max err %g" % ("ok  " if err == 0 else "FAIL", n, img.get_data_dtype(), a.shape, err))
            continue
        shape = a.shape + (1,) * (4 - a.ndim)
        want = formula(shape).reshape(a.shape) if a.ndim < 4 else formula(shape)
        if "_scaled" in n:  # written with scl_slope 0.5, scl_inter -3: stored round((v + 3) / 0.5)
            want = np.round((want + 3) / 0.5) * 0.5 - 3
        if "_frac" in n:  # float32 with a fractional part
            want = want + 0.25
        err = np.abs(a - want).max()
        same_aff = np.allclose(img.affine, ref.affine, atol=1e-5)
        codes = (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 2)
        ok = err == 0 and same_aff and codes
        bad += not ok
        print("%s %-28s dtype %-8s shape %-14s max err %g, affine %s, codes %s" % ("ok  " if ok else "FAIL", n, img.get_data_dtype(), a.shape, err,
              "same" if same_aff else "DIFFERENT", "1/2" if codes else "DIFFERENT"))
    print("%d files, %d bad" % (len(names), bad))
    return 1 if bad or not names else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        sys.exit(check(sys.argv[2]))
    make()
