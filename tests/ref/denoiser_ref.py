"""Writes tests/fixtures/denoiser_*.safetensors: tiny UNetModel / ClassEmbedder / DiT references
computed in float64 with hash-generated weights (tests/ldm_test.h lt_hash_init makes the same
weights in C, so no weights are committed), and prints the parameter counts of the published
configs (configs/cin256-v2.yaml, ldm_cin256.yaml, ldm_bsr_sr.yaml) that test_denoisers.c checks.
Each fixture: inputs (x, t, and context / y), out, loss = sum(out * R) with R = hash("loss.R"),
x_grad, and per parameter gproj.<name> = [gradient . hash("proj.<name>"), |gradient|^2], plus
shape.<name> (the state-dict shape, as floats) for every state-dict entry.
Also writes denoiser_unet_e.ckpt: a one-level UNet's hash weights rounded to float16, saved
by torch.save in a Lightning-style {"state_dict": ...} under model.diffusion_model. (with a
cond_stage_model key beside it), so the C test checks loading a PyTorch-written checkpoint.
Run: /usr/bin/python3 tests/ref/denoiser_ref.py  (from the repository root)"""
import os, sys
import torch
sys.path.insert(0, os.path.dirname(__file__))
from common import write_safetensors, hash_init, hashed
from denoiser_model import UNetModel, ClassEmbedder, DiT

FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures")


def dump(tag, models, run, inputs, meta):
    """models: {prefix: module}; run(inputs) -> out. Float64 forward + backward."""
    for m in models.values():
        m.double()
        m.zero_grad()
    x = inputs["x"].double().requires_grad_(True)
    out = run(dict(inputs, x=x))
    R = hashed("loss.R", out.shape)
    loss = (out * R).sum()
    loss.backward()
    t = {k: v.float() for k, v in inputs.items()}
    t.update(out=out.detach().float(), loss=loss.detach().reshape(1).float(), x_grad=x.grad.float())
    for pre, m in models.items():
        for name, p in m.named_parameters():
            if p.grad is None:
                continue
            g = p.grad.detach()
            proj = (g * hashed("proj." + pre + name, g.shape)).sum()
            t["gproj." + pre + name] = torch.stack([proj, (g * g).sum()]).float()
        for name, v in m.state_dict().items():
            t["shape." + pre + name] = torch.tensor(list(v.shape), dtype=torch.float32).reshape(-1)
    write_safetensors(os.path.join(FIX, "denoiser_%s.safetensors" % tag), t, {k: str(v) for k, v in meta.items()})
    n = sum(p.numel() for m in models.values() for p in m.parameters())
    print(tag, "params", n, "fixture entries", len(t))


def unet_case(tag, cfg, B=2, size=8, L=3, with_class_embedder=False, frames=0):
    torch.manual_seed(0)
    m = UNetModel(**cfg)
    hash_init(m)
    models = {"": m}
    shape = (B, cfg["in_channels"]) + ((frames,) if frames else ()) + (size, size)
    inputs = {"x": torch.randn(shape), "t": torch.tensor([3.0, 917.0][:B])}
    if cfg.get("num_classes"):
        inputs["y"] = torch.tensor([1.0, 7.0][:B])
    ce = None
    if with_class_embedder:
        ce = ClassEmbedder(cfg["context_dim"], n_classes=11)
        hash_init(ce)
        models["cond_stage_model."] = ce
        inputs["class"] = torch.tensor([4.0, 10.0][:B])
    elif cfg.get("context_dim"):
        inputs["context"] = torch.randn(B, L, cfg["context_dim"])

    def run(inp):
        ctx = None
        if ce is not None:
            ctx = ce({"class": inp["class"].long()})
        elif "context" in inp:
            ctx = inp["context"].double()
        y = inp["y"].long() if "y" in inp else None
        return m(inp["x"], inp["t"], context=ctx, y=y)
    dump(tag, models, run, inputs, {k: v for k, v in cfg.items()})


def dit_case(tag, cfg, B=2):
    torch.manual_seed(0)
    m = DiT(**cfg)
    hash_init(m)
    m.reset_pos_embed()  # a fixed buffer, not hashed
    inputs = {"x": torch.randn(B, cfg["in_channels"], cfg["input_size"], cfg["input_size"]),
              "t": torch.tensor([5.0, 640.0][:B]), "y": torch.tensor([2.0, float(cfg["num_classes"])][:B])}
    dump(tag, {"": m}, lambda inp: m(inp["x"], inp["t"], inp["y"].long()), inputs, cfg)


base = dict(image_size=8, in_channels=4, model_channels=32, out_channels=4, num_res_blocks=1, channel_mult=(1, 2))
# A: cin256-v2's kind: SpatialTransformer (conv proj), context from a ClassEmbedder, legacy heads
unet_case("unet_a", dict(base, attention_resolutions=[2], num_heads=2, use_spatial_transformer=True, context_dim=24),
          with_class_embedder=True)
# B: AttentionBlock, legacy head order, heads from num_head_channels, scale-shift norm,
#    ResBlock up/down, label_emb, 8 output channels, attention on both levels
unet_case("unet_b", dict(base, out_channels=8, attention_resolutions=[1, 2], num_head_channels=32, use_scale_shift_norm=True,
                         resblock_updown=True, num_classes=10))
# C: AttentionBlock with the new head order, num_heads 2 (num_heads_upsample 1), legacy False,
#    average-pool / nearest resampling without convs, concat-style 6 input channels
unet_case("unet_c", dict(base, in_channels=6, out_channels=3, attention_resolutions=[2], num_heads=2, num_heads_upsample=1,
                         use_new_attention_order=True, legacy=False, conv_resample=False))
# D: SD2-style SpatialTransformer: linear proj_in/out, depth 2, num_head_channels 16, scale-shift
unet_case("unet_d", dict(base, attention_resolutions=[1, 2], num_head_channels=16, use_spatial_transformer=True,
                         context_dim=20, transformer_depth=2, use_linear_in_transformer=True, use_scale_shift_norm=True,
                         legacy=False), L=5)
# F: dims 3 (video): 3x3x3 convs, 1x2x2 resampling, AttentionBlock over T*H*W positions
unet_case("unet_f", dict(base, dims=3, attention_resolutions=[2], num_heads=2), frames=3)
dit_case("dit", dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, mlp_ratio=4.0,
                     class_dropout_prob=0.1, num_classes=10, learn_sigma=True))

# E: a PyTorch-written checkpoint
torch.manual_seed(0)
e = UNetModel(**dict(base, channel_mult=(1,), attention_resolutions=[1], num_heads=1, use_spatial_transformer=True,
                     context_dim=8, num_classes=5))
hash_init(e)
ck = {"model.diffusion_model." + k: v.half() for k, v in e.state_dict().items()}
ck["cond_stage_model.embedding.weight"] = torch.zeros(5, 8).half()
torch.save({"state_dict": ck, "global_step": 3}, os.path.join(FIX, "denoiser_unet_e.ckpt"))
print("unet_e params", sum(p.numel() for p in e.parameters()))

# Parameter counts of the published UNets (the C test counts shapes without allocating).
if "--counts" in sys.argv:
    pub = {
        "cin256-v2": dict(image_size=64, in_channels=3, out_channels=3, model_channels=192, attention_resolutions=[8, 4, 2],
                          num_res_blocks=2, channel_mult=[1, 2, 3, 5], num_heads=1, use_spatial_transformer=True,
                          transformer_depth=1, context_dim=512),
        "ldm_cin256": dict(image_size=32, in_channels=4, out_channels=4, model_channels=256, attention_resolutions=[4, 2, 1],
                           num_res_blocks=2, channel_mult=[1, 2, 4], num_head_channels=32, use_spatial_transformer=True,
                           transformer_depth=1, context_dim=512),
        "ldm_bsr_sr": dict(image_size=64, in_channels=6, out_channels=3, model_channels=160, attention_resolutions=[16, 8],
                           num_res_blocks=2, channel_mult=[1, 2, 2, 4], num_head_channels=32),
    }
    for k, c in pub.items():
        m = UNetModel(**c)
        print(k, "UNet params", sum(p.numel() for p in m.parameters()))
        del m
    for name, (d, h, p, nh) in {"DiT-XL/2": (28, 1152, 2, 16), "DiT-S/8": (12, 384, 8, 6)}.items():
        m = DiT(depth=d, hidden_size=h, patch_size=p, num_heads=nh)
        print(name, "params", sum(p.numel() for p in m.parameters()))
        del m
