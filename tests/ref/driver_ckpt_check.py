"""Does a checkpoint written by ./build/ldm load into the CompVis AutoencoderKL module with
PyTorch's load_state_dict(strict=True)? The module is built from the run's saved config:
vae_model.AutoencoderKL (encoder, decoder, quant_conv, post_quant_conv) plus
lpips_model.LPIPSWithDiscriminator as `loss` (logvar, discriminator, perceptual_loss), the
attribute layout of ldm/models/autoencoder.py.

    /usr/bin/python3 tests/ref/driver_ckpt_check.py LOGDIR            # checks checkpoints/last
    /usr/bin/python3 tests/ref/driver_ckpt_check.py --lpips-weights OUT.safetensors
        (writes random LPIPS weights under taming's names, for a run with perceptual_weight > 0)

Prints the load result; exit 0 when strict loading succeeds, or when the only missing keys are
loss.perceptual_loss.* and the run had no LPIPS weights (perceptual_weight 0). Needs torch:
tests/test_driver.c runs it on its own checkpoints when a python with torch is found."""
import glob, json, os, struct, sys

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_safetensors  # noqa: E402
from lpips_model import LPIPS, LPIPSWithDiscriminator  # noqa: E402
from vae_model import AutoencoderKL  # noqa: E402


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", (name, info["dtype"])
        b, e = info["data_offsets"]
        out[name] = torch.from_numpy(np.frombuffer(data[b:e], dtype="<f4").copy()).reshape(info["shape"])
    return out


def ini_value(v):
    v = v.split(" ;")[0].split(" #")[0].strip()
    if v.startswith('"') and v.endswith('"'):
        return v[1:-1]
    if v in ("true", "True"):
        return True
    if v in ("false", "False"):
        return False
    if v.startswith("[") and v.endswith("]"):
        return [ini_value(x) for x in v[1:-1].split(",") if x.strip()]
    if "," in v:
        return [ini_value(x) for x in v.split(",")]
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def read_ini(path):
    tree = {}
    cur = tree
    for line in open(path):
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        if s.startswith("["):
            cur = tree
            for k in s[1:-1].split("."):
                cur = cur.setdefault(k, {})
            continue
        k, v = s.split("=", 1)
        cur[k.strip()] = ini_value(v)
    return tree


class CompVisAutoencoderKL(nn.Module):
    """The attribute tree of ldm.models.autoencoder.AutoencoderKL."""

    def __init__(self, ddconfig, embed_dim, lossparams):
        super().__init__()
        ae = AutoencoderKL(ddconfig, embed_dim)
        self.encoder, self.decoder = ae.encoder, ae.decoder
        self.quant_conv, self.post_quant_conv = ae.quant_conv, ae.post_quant_conv
        keep = ("disc_start", "logvar_init", "kl_weight", "pixelloss_weight", "disc_num_layers", "disc_in_channels",
                "disc_factor", "disc_weight", "perceptual_weight", "disc_loss")
        self.loss = LPIPSWithDiscriminator(**{k: v for k, v in lossparams.items() if k in keep})


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--lpips-weights":
        torch.manual_seed(0)
        write_safetensors(sys.argv[2], {k: v for k, v in LPIPS().state_dict().items()})
        print("wrote random LPIPS weights (taming names) to", sys.argv[2])
        return 0
    logdir = sys.argv[1]
    cfgs = sorted(glob.glob(os.path.join(logdir, "configs", "*.ini")))
    cfg = read_ini(cfgs[-1])
    params = cfg["model"]["params"]
    dd = dict(params["ddconfig"])
    for k in ("ch_mult", "attn_resolutions"):
        if not isinstance(dd.get(k, []), list):
            dd[k] = [dd[k]]
    lossparams = params["lossconfig"].get("params", {})
    lossparams.setdefault("disc_start", 0)
    model = CompVisAutoencoderKL(dd, params["embed_dim"], lossparams)
    sd = read_safetensors(os.path.join(logdir, "checkpoints", "last", "model.safetensors"))
    res = model.load_state_dict(sd, strict=False)
    print("tensors in the file: %d, in the module's state dict: %d" % (len(sd), len(model.state_dict())))
    print("missing:", len(res.missing_keys), res.missing_keys[:4], "unexpected:", len(res.unexpected_keys), res.unexpected_keys[:4])
    only_lpips = all(k.startswith("loss.perceptual_loss.") for k in res.missing_keys) and not res.unexpected_keys
    try:
        model.load_state_dict(sd, strict=True)
        print("load_state_dict(strict=True): OK")
        return 0
    except RuntimeError as e:
        print("load_state_dict(strict=True) fails:", str(e).splitlines()[0])
        if only_lpips and float(lossparams.get("perceptual_weight", 1.0)) == 0.0:
            print("(expected: perceptual_weight 0, no LPIPS weights in the run; everything else matches)")
            return 0
        return 1


if __name__ == "__main__":
    sys.exit(main())
