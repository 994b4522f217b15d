"""Checks tests/ref/denoiser_model.py against the original code: CompVis latent-diffusion's
UNetModel / SpatialTransformer / ClassEmbedder and facebookresearch DiT's DiT load our reference
modules' state dicts with load_state_dict(strict=True) and give the same outputs (float32).
Needs checkouts of the two repositories (not vendored here); einops and timm are not installed
on the reference machines, so this script provides the few pieces the originals import
(einops.rearrange/repeat, timm's PatchEmbed/Attention/Mlp with timm's parameter names).
Optionally a .safetensors written by ldm.h (ldm_unet_save) is loaded strictly into the original.
SD2's linear proj_in/proj_out (Stability-AI/stablediffusion, whose package is also named ldm)
is checked in a separate run. Depth 1 there: SD2's SpatialTransformer indexes one context_dim
per block, so depth > 1 with an int context_dim fails in SD2; ldm.h (like SDXL) gives every
block the same context_dim and context.
Run: /usr/bin/python3 tests/ref/denoiser_crosscheck.py LATENT_DIFFUSION_DIR DIT_DIR [build/denoiser_unet_a_saved.safetensors]
     /usr/bin/python3 tests/ref/denoiser_crosscheck.py --sd2 STABLEDIFFUSION_DIR"""
import os, re, sys, types, json, struct
import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(__file__))
from common import hash_init
import denoiser_model as ref


def _axes(side):
    return [g.split() if g.startswith("(") is False else g[1:-1].split() for g in re.findall(r"\([^)]*\)|\S+", side)]


def rearrange(t, pattern, **sizes):
    left, right = (s.strip() for s in pattern.split("->"))
    lg, rg = _axes(left), _axes(right)
    known = dict(sizes)
    flat = []
    for g, n in zip(lg, t.shape):  # decompose grouped input axes
        unknown = [a for a in g if a not in known]
        prod = int(np.prod([known[a] for a in g if a in known])) if len(g) > len(unknown) else 1
        for a in unknown:
            known[a] = n // prod
        flat += g
    t = t.reshape([known[a] for a in flat])
    order = [a for g in rg for a in g]
    t = t.permute([flat.index(a) for a in order])
    return t.reshape([int(np.prod([known[a] for a in g])) for g in rg])


def repeat(t, pattern, **sizes):
    left, right = (s.strip() for s in pattern.split("->"))
    if left == "b" and right == "b d":
        return t[:, None].expand(-1, sizes["d"])
    raise NotImplementedError(pattern)


einops = types.ModuleType("einops")
einops.rearrange, einops.repeat = rearrange, repeat
einops.reduce = None  # imported by ldm/modules/x_transformer.py, never called here
sys.modules["einops"] = einops


class PatchEmbed(nn.Module):  # timm's names: proj, patch_size, num_patches; flatten + transpose
    def __init__(self, img_size, patch_size, in_chans, embed_dim, bias=True):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size, bias=bias)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):  # timm's: qkv (bias), proj; head_dim**-0.5
    def __init__(self, dim, num_heads=8, qkv_bias=False, **kw):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        a = (qkv[0] @ qkv[1].transpose(-2, -1)) * (C // self.num_heads) ** -0.5
        return self.proj((a.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):  # timm's: fc1, act, fc2
    def __init__(self, in_features, hidden_features, act_layer, drop=0):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(in_features, hidden_features), act_layer(), nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


timm = types.ModuleType("timm")
timm.models = types.ModuleType("timm.models")
vt = types.ModuleType("timm.models.vision_transformer")
vt.PatchEmbed, vt.Attention, vt.Mlp = PatchEmbed, Attention, Mlp
sys.modules.update({"timm": timm, "timm.models": timm.models, "timm.models.vision_transformer": vt})
# ldm/modules/encoders/modules.py imports these for its other encoders; ClassEmbedder needs none
for _name in ("clip", "kornia"):
    sys.modules[_name] = types.ModuleType(_name)
# UNetModel imports omegaconf's ListConfig to convert a list-valued context_dim
_oc, _ocl = types.ModuleType("omegaconf"), types.ModuleType("omegaconf.listconfig")
_ocl.ListConfig = type("ListConfig", (list,), {})
sys.modules.update({"omegaconf": _oc, "omegaconf.listconfig": _ocl})


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in h.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        dt = {"F32": np.float32, "F16": np.float16}[v["dtype"]]
        out[k] = torch.from_numpy(np.frombuffer(data[a:b], dtype=dt).reshape(v["shape"]).copy()).float()
    return out


def compare(tag, cfg, mine, orig):
    orig.load_state_dict(mine.state_dict(), strict=True)
    x = torch.randn((2, cfg["in_channels"]) + ((3,) if cfg.get("dims") == 3 else ()) + (8, 8))
    t = torch.tensor([3.0, 917.0])
    ctx = torch.randn(2, 3, cfg["context_dim"]) if cfg.get("context_dim") else None
    y = torch.tensor([1, 7]) if cfg.get("num_classes") else None
    with torch.no_grad():
        a, b = mine(x, t, context=ctx, y=y), orig(x, t, context=ctx, y=y)
    d = (a - b).abs().max().item()
    print("%-22s strict load ok, %d tensors, max |ours - original| = %.2e" % (tag, len(mine.state_dict()), d))
    return d < 1e-5


def main_sd2(sd):
    sys.path.insert(0, sd)
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    base = dict(image_size=8, in_channels=4, model_channels=32, out_channels=4, num_res_blocks=1, channel_mult=(1, 2))
    cfg = dict(base, attention_resolutions=[1, 2], num_head_channels=16, use_spatial_transformer=True, context_dim=20,
               transformer_depth=1, use_linear_in_transformer=True, use_scale_shift_norm=True, legacy=False)
    torch.manual_seed(0)
    mine = ref.UNetModel(**cfg)
    hash_init(mine)
    ok = compare("unet_d, depth 1 (SD2)", cfg, mine, UNetModel(**cfg))
    print("crosscheck:", "ok" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


def main():
    if sys.argv[1] == "--sd2":
        return main_sd2(sys.argv[2])
    ld, dit_dir = sys.argv[1], sys.argv[2]
    sys.path.insert(0, ld)
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from ldm.modules.encoders.modules import ClassEmbedder
    sys.path.insert(0, dit_dir)
    from models import DiT
    base = dict(image_size=8, in_channels=4, model_channels=32, out_channels=4, num_res_blocks=1, channel_mult=(1, 2))
    cases = {
        "unet_a": dict(base, attention_resolutions=[2], num_heads=2, use_spatial_transformer=True, context_dim=24),
        "unet_b": dict(base, out_channels=8, attention_resolutions=[1, 2], num_head_channels=32, use_scale_shift_norm=True,
                       resblock_updown=True, num_classes=10),
        "unet_c": dict(base, in_channels=6, out_channels=3, attention_resolutions=[2], num_heads=2, num_heads_upsample=1,
                       use_new_attention_order=True, legacy=False, conv_resample=False),
        "unet_f (dims 3)": dict(base, dims=3, attention_resolutions=[2], num_heads=2),
        "cin256-v2 (2 levels)": dict(image_size=8, in_channels=3, out_channels=3, model_channels=64, attention_resolutions=[2, 1],
                                     num_res_blocks=2, channel_mult=[1, 2], num_heads=1, use_spatial_transformer=True,
                                     transformer_depth=1, context_dim=16),
    }
    ok = True
    for tag, cfg in cases.items():
        torch.manual_seed(0)
        mine = ref.UNetModel(**cfg)
        hash_init(mine)
        ok &= compare(tag, cfg, mine, UNetModel(**cfg))
    ce_m, ce_o = ref.ClassEmbedder(24, n_classes=11), ClassEmbedder(24, n_classes=11)
    ce_o.load_state_dict(ce_m.state_dict(), strict=True)
    yy = {"class": torch.tensor([4, 10])}
    d = (ce_m(yy) - ce_o(yy)).abs().max().item()
    print("ClassEmbedder          strict load ok, output", tuple(ce_o(yy).shape), "max diff %.2e" % d)
    ok &= d == 0
    cfg = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, mlp_ratio=4.0,
               class_dropout_prob=0.1, num_classes=10, learn_sigma=True)
    mine, orig = ref.DiT(**cfg), DiT(**cfg)
    d0 = (mine.pos_embed - orig.pos_embed).abs().max().item()  # before hashing: both fixed sin-cos
    hash_init(mine)
    mine.reset_pos_embed()
    orig.load_state_dict(mine.state_dict(), strict=True)
    orig.eval()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([5.0, 640.0]), torch.tensor([2, 10])
    with torch.no_grad():
        d = (mine(x, t, y) - orig(x, t, y)).abs().max().item()
    print("DiT                    strict load ok, pos_embed diff %.2e, max |ours - DiT| = %.2e" % (d0, d))
    ok &= d < 1e-5 and d0 == 0
    if len(sys.argv) > 3:  # a file ldm.h wrote (ldm_unet_save of case unet_a)
        sd = read_safetensors(sys.argv[3])
        orig, mine = UNetModel(**cases["unet_a"]), ref.UNetModel(**cases["unet_a"])
        orig.load_state_dict(sd, strict=True)
        hash_init(mine)  # the C test saved the hash weights
        d = max((v - sd[k]).abs().max().item() for k, v in mine.state_dict().items())
        print("ldm.h-written %s loads strictly into CompVis's UNetModel (%d tensors), max |w - hash| = %.1e"
              % (os.path.basename(sys.argv[3]), len(sd), d))
        ok &= d < 1e-6
    print("crosscheck:", "ok" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


main()
