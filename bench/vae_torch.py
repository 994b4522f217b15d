"""PyTorch side of bench_vae.c: one AutoencoderKL case with the sizes, device, thread count and
TF32 setting bench_vae passes, timed the same way (warm-up runs, then the best of --reps, the
device synchronised before each clock reading). Models: tests/ref/vae_model.py (kl-f4, the
seed's autoencoder_kl_64x64x3, or with --model klf8 Stable Diffusion's kl-f8) and tests/ref/lpips_model.py (LPIPSWithDiscriminator with
disc_start 50001, kl_weight 1e-6, disc_weight 0.5), PyTorch's default random init everywhere
(LPIPS's VGG16 included: speed does not depend on the weight values).

usage: vae_torch.py --case encdec|dec|enc|train [--model klf4|klf8] [--device cpu|cuda] [--size N] [--batch B]
                    [--reps R] [--warmup W] [--threads T] [--tf32] [--cudnn-benchmark] [--count-flops]
prints one line:  RESULT <case> <best seconds> <peak MiB> <FLOPs>  (FLOPs 0 without --count-flops)
peak MiB: torch.cuda.max_memory_allocated over the timed runs on cuda (parameters, gradients,
optimizer state and activations), the process's maximum RSS on cpu (libraries included).

FLOPs (--count-flops: counted in one more run after the timed ones and the memory reading): the same
convention as bench_vae.c, from the aten calls: convolution 2*MACs; convolution_backward 2*MACs
for each of the input and weight gradients it computes; mm/addmm/bmm/baddbmm 2*M*N*K."""
import argparse, os, resource, sys, time
import torch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref"))
from vae_model import AutoencoderKL, kl  # noqa: E402
from lpips_model import LPIPSWithDiscriminator, hinge_d_loss  # noqa: E402

# --model klf4: the seed's autoencoder_kl_64x64x3; klf8: Stable Diffusion's first stage
# (first_stage_kl-f8.yaml: ch_mult 1,2,4,4, z 4, attention only in the mid blocks)
MODELS = {
    "klf4": (dict(double_z=True, z_channels=3, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4],
                  num_res_blocks=2, attn_resolutions=[], dropout=0.0), 3, 4),
    "klf8": (dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
                  num_res_blocks=2, attn_resolutions=[], dropout=0.0), 4, 8),
}
DISC_START = 50001


def flop_counter():
    """A TorchDispatchMode that adds up the FLOPs of convolutions and matrix products."""
    from torch.utils._python_dispatch import TorchDispatchMode
    aten = torch.ops.aten

    def numel(s):
        n = 1
        for v in s:
            n *= int(v)
        return n

    class Count(TorchDispatchMode):
        flops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func == aten.convolution.default:
                w = args[1]  # [O, C/groups, kh, kw]; MACs = numel(out) * C/groups * kh * kw
                Count.flops += 2 * numel(out.shape) * numel(w.shape[1:])
            elif func == aten.convolution_backward.default:
                grad_out, w, mask = args[0], args[2], args[10]
                macs = numel(grad_out.shape) * numel(w.shape[1:])
                Count.flops += 2 * macs * (int(bool(mask[0])) + int(bool(mask[1])))
            elif func in (aten.mm.default, aten.addmm.default):
                a, b = args[-2], args[-1]
                Count.flops += 2 * a.shape[0] * a.shape[1] * b.shape[1]
            elif func in (aten.bmm.default, aten.baddbmm.default):
                a, b = args[-2], args[-1]
                Count.flops += 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
            return out
    return Count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", required=True, choices=["encdec", "dec", "enc", "train"])
    ap.add_argument("--model", default="klf4", choices=sorted(MODELS))
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--size", type=int, default=0, help="image size (default 512, train 256)")
    ap.add_argument("--batch", type=int, default=0, help="batch (default 1, train 8)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--cudnn-benchmark", action="store_true")
    ap.add_argument("--count-flops", action="store_true")
    a = ap.parse_args()
    size = a.size or (256 if a.case == "train" else 512)
    batch = a.batch or (8 if a.case == "train" else 1)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if a.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("vae_torch.py: --device cuda but torch.cuda.is_available() is False (a CPU-only PyTorch build?)")
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32
        torch.backends.cudnn.benchmark = a.cudnn_benchmark
    torch.manual_seed(0)

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    DD, EMBED_DIM, F = MODELS[a.model]
    m = AutoencoderKL(DD, EMBED_DIM).to(dev)
    if a.case != "train":
        m.eval()
        if a.case in ("encdec", "enc"):
            x = torch.rand(batch, 3, size, size, device=dev) * 2 - 1

            def run():
                with torch.no_grad():
                    return m.decode(m.encode(x)[0]) if a.case == "encdec" else m.encode(x)[0]
        else:
            z = torch.randn(batch, EMBED_DIM, size // F, size // F, device=dev)

            def run():
                with torch.no_grad():
                    return m.decode(z)
    else:
        # latent-diffusion's AutoencoderKL.training_step under Lightning 1.4, both optimizers
        m.train()
        loss = LPIPSWithDiscriminator(disc_start=DISC_START, kl_weight=1e-6, disc_weight=0.5).to(dev).train()
        loss.logvar.requires_grad_(False)  # in no optimizer: Lightning's toggle_optimizer freezes it
        disc = loss.discriminator
        lr = 4.5e-6 * batch  # base_learning_rate * batch_size, as main.py scales it (speed does not depend on it)
        ae_params = (list(m.encoder.parameters()) + list(m.decoder.parameters()) +
                     list(m.quant_conv.parameters()) + list(m.post_quant_conv.parameters()))
        opt_ae = torch.optim.Adam(ae_params, lr=lr, betas=(0.5, 0.9))
        opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.9))
        x = torch.rand(batch, 3, size, size, device=dev) * 2 - 1
        last_layer = m.decoder.conv_out.weight

        def forward():
            mean, logvar = m.encode(x)
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)  # posterior.sample()
            return m.decode(z), mean, logvar

        def run():
            # optimizer 0: the discriminator's parameters are toggled off (toggle_optimizer)
            for p in disc.parameters():
                p.requires_grad_(False)
            xrec, mean, logvar = forward()
            aeloss, _ = loss(x, xrec, kl(mean, logvar), 0, DISC_START, last_layer=last_layer, split="train")
            ae = aeloss.item()  # Lightning reads the loss for the progress bar; ldm.h's driver checks it
            aeloss.backward()
            opt_ae.step()
            opt_ae.zero_grad()
            for p in disc.parameters():
                p.requires_grad_(True)
            # optimizer 1: the autoencoder's parameters are toggled off, so its forward pass
            # builds no graph (no_grad is the same); the discriminator loss on detached images.
            # The reference loss also evaluates LPIPS and the KL here and discards them; ldm.h
            # skips that work, and so does this script, so that both do the same work.
            with torch.no_grad():
                xrec, _, _ = forward()
            logits_real, logits_fake = disc(x.detach()), disc(xrec.detach())
            d_loss = 1.0 * hinge_d_loss(logits_real, logits_fake)  # disc_factor 1 (global step >= disc_start)
            d = d_loss.item()
            d_loss.backward()
            opt_d.step()
            opt_d.zero_grad()
            return ae, d

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
        print("losses: aeloss %.6g discloss %.6g" % out, file=sys.stderr)
    print("RESULT %s %.6f %.1f %d" % (a.case, best, peak, flops), flush=True)


if __name__ == "__main__":
    main()
