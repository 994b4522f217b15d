#!/usr/bin/env python3
"""Converts the LPIPS-VGG16 weights into one safetensors file with taming's names, for
ldm_lpips_load (ldm_lpips.h), the autoencoder loss and the ldm-lpips tool.

    python3 tools/convert_lpips.py --vgg vgg16-397923af.pth --lin vgg.pth --out lpips_vgg.safetensors

--vgg  torchvision's ImageNet VGG16 state dict (features.N.weight/bias; classifier.* ignored)
--lin  LPIPS v0.1 heads: PerceptualSimilarity's lpips/weights/v0.1/vgg.pth (lin0..lin4.model.1.weight)
Writes net.sliceK.N.weight/bias, lin0..4.model.1.weight and scaling_layer.shift/scale as
float32. Needs python3 with torch (to read the .pth files); nothing else."""
import argparse, json, struct, sys
import torch

CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
         (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512)]
SLICE_END = [4, 9, 16, 23, 30]  # taming's slices [0:4], [4:9], [9:16], [16:23], [23:30]
CHNS = [64, 128, 256, 512, 512]


def state_dict(path):
    sd = torch.load(path, map_location="cpu")
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        sys.exit("convert_lpips: %s holds no state dict" % path)
    return sd


def take(sd, path, key, shape):
    if key not in sd:
        sys.exit("convert_lpips: %s has no tensor %s (is it the right file?)" % (path, key))
    t = sd[key].detach().to(torch.float32).contiguous()
    if tuple(t.shape) != tuple(shape):
        sys.exit("convert_lpips: %s: %s has shape %s, expected %s" % (path, key, list(t.shape), list(shape)))
    return t


def write_safetensors(path, tensors):
    header, off = {}, 0
    for name, t in tensors.items():
        n = t.numel() * 4
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt", "source": "tools/convert_lpips.py"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for t in tensors.values():
            f.write(t.numpy().astype("<f4").tobytes())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vgg", required=True, help="torchvision vgg16-397923af.pth")
    ap.add_argument("--lin", required=True, help="LPIPS v0.1 vgg.pth")
    ap.add_argument("--out", required=True, help="output .safetensors")
    a = ap.parse_args()
    vgg, lin = state_dict(a.vgg), state_dict(a.lin)
    out = {"scaling_layer.shift": torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1),
           "scaling_layer.scale": torch.tensor([.458, .448, .450]).view(1, 3, 1, 1)}
    for n, cin, cout in CONVS:
        k = 1 + sum(n >= e for e in SLICE_END)
        out["net.slice%d.%d.weight" % (k, n)] = take(vgg, a.vgg, "features.%d.weight" % n, (cout, cin, 3, 3))
        out["net.slice%d.%d.bias" % (k, n)] = take(vgg, a.vgg, "features.%d.bias" % n, (cout,))
    for k, c in enumerate(CHNS):
        key = "lin%d.model.1.weight" % k
        out[key] = take(lin, a.lin, key, (1, c, 1, 1))
    write_safetensors(a.out, out)
    print("wrote %s: %d tensors, %d parameters" % (a.out, len(out), sum(t.numel() for t in out.values())))


if __name__ == "__main__":
    main()
