"""PyTorch side of bench_unet.c: one LDM UNet case with the model, sizes, device, thread count and
TF32 setting bench_unet passes, timed the same way (warm-up runs, then the best of --reps, the
device synchronised before each clock reading). Models: tests/ref/denoiser_model.py's UNetModel
and ClassEmbedder (CompVis's modules, name for name), PyTorch's default random init; cin256 is
built from configs/cin256-v2.yaml (--config: unet_config.params and cond_stage_config.params),
small is bench_unet.c's small_config.

usage: unet_torch.py --case train|sample [--model cin256|small] [--config YAML] [--device cpu|cuda]
                     [--size S] [--batch B] [--cfg] [--reps R] [--warmup W] [--threads T] [--tf32]
                     [--count-flops]
prints one line:  RESULT <case> <best seconds> <peak MiB> <FLOPs> <parameters>  (FLOPs 0 without
--count-flops; parameters of the UNet and the ClassEmbedder together)
peak MiB: torch.cuda.max_memory_allocated over the timed runs on cuda, the process's maximum RSS
on cpu (libraries included).

train:  LatentDiffusion.p_losses with x_t given: context = ClassEmbedder(labels), eps = UNet(x_t,
        t, context), loss = mse(target, eps), loss.item(), backward, AdamW step (lr 1e-4 * batch,
        weight decay 0.01: configure_optimizers over the UNet and the trainable ClassEmbedder).
sample: one denoiser call under no_grad on a precomputed context; --cfg: DDIMSampler's
        classifier-free guidance (x, t, [uc, c] concatenated to 2B, one call, e_u + 3 (e_c - e_u)).

FLOPs (--count-flops: one more run after the timed ones and the memory reading), as bench_vae's
vae_torch.py: convolution 2*MACs; convolution_backward 2*MACs for each of the input and weight
gradients it computes; mm/addmm/bmm/baddbmm 2*M*N*K."""
import argparse, os, resource, sys, time
import torch
import torch.nn.functional as F
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "ref"))
sys.path.insert(0, HERE)
from denoiser_model import UNetModel, ClassEmbedder  # noqa: E402
from vae_torch import flop_counter  # noqa: E402

CFG_SCALE, BASE_LR = 3.0, 1e-4

# bench_unet.c's small_config
SMALL = dict(image_size=64, in_channels=3, out_channels=3, model_channels=32, num_res_blocks=1, attention_resolutions=[2, 4],
             channel_mult=[1, 2, 2], num_heads=1, use_spatial_transformer=True, transformer_depth=1, context_dim=64)
SMALL_CLASSES, SMALL_EMBED = 1001, 64


def cin256(path):
    import yaml
    with open(path) as f:
        cfg = yaml.safe_load(f)["model"]["params"]
    cs = cfg["cond_stage_config"].get("params", {})
    return dict(cfg["unet_config"]["params"]), cs.get("n_classes", 1000), cs["embed_dim"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", required=True, choices=["train", "sample"])
    ap.add_argument("--model", default="cin256", choices=["cin256", "small"])
    ap.add_argument("--config", default=os.path.join(HERE, "..", "configs", "cin256-v2.yaml"))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--cfg", action="store_true")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--count-flops", action="store_true")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if a.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("unet_torch.py: --device cuda but torch.cuda.is_available() is False (a CPU-only PyTorch build?)")
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32
    torch.manual_seed(0)

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    ucfg, n_classes, embed_dim = (dict(SMALL), SMALL_CLASSES, SMALL_EMBED) if a.model == "small" else cin256(a.config)
    unet = UNetModel(**ucfg).to(dev)
    ce = ClassEmbedder(embed_dim, n_classes, key="class_label").to(dev)
    params = sum(p.numel() for p in unet.parameters()) + sum(p.numel() for p in ce.parameters())
    B, S = a.batch, a.size
    x = torch.randn(B, ucfg["in_channels"], S, S, device=dev)
    t = torch.randint(0, 1000, (B,), device=dev)
    if a.case == "train":
        unet.train()
        ce.train()
        target = torch.randn(B, ucfg["out_channels"], S, S, device=dev)
        y = torch.randint(0, 1000, (B,), device=dev)
        opt = torch.optim.AdamW(list(unet.parameters()) + list(ce.parameters()), lr=BASE_LR * B)

        def run():
            c = ce({"class_label": y})
            eps = unet(x, t, context=c)
            loss = F.mse_loss(target, eps)
            v = loss.item()
            loss.backward()
            opt.step()
            opt.zero_grad()
            return v
    else:
        unet.eval()
        c = torch.randn(B, 1, embed_dim, device=dev)
        uc = torch.randn(B, 1, embed_dim, device=dev)

        def run():
            with torch.no_grad():
                if not a.cfg:
                    return unet(x, t, context=c)
                e_u, e_c = unet(torch.cat([x] * 2), torch.cat([t] * 2), context=torch.cat([uc, c])).chunk(2)
                return e_u + CFG_SCALE * (e_c - e_u)

    for _ in range(a.warmup):
        run()
        sync()
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    out = None
    for _ in range(a.reps):
        sync()
        t0 = time.perf_counter()
        out = run()
        sync()
        best = min(best, time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 1048576.0 if a.device == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    flops = 0
    if a.count_flops:  # one more run, after the timed ones, so the dispatch mode cannot touch them
        counter = flop_counter()
        with counter():
            run()
        flops = counter.flops
    if a.case == "train":
        print("torch train b%d: loss %.6g" % (B, out), file=sys.stderr)
    print("RESULT %s %.6f %.1f %d %d" % (a.case, best, peak, flops, params), flush=True)


if __name__ == "__main__":
    main()
