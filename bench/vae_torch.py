"""PyTorch side of bench_vae: the same AutoencoderKL cases, the same thread count.
usage: vae_torch.py THREADS  -> prints "<case> <seconds> <peak_rss_MiB>" lines"""
import os, resource, sys, time
import torch
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "ref"))
from vae_model import AutoencoderKL

torch.set_num_threads(int(sys.argv[1]))
dd = dict(double_z=True, z_channels=3, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4],
          num_res_blocks=2, attn_resolutions=[], dropout=0.0)
m = AutoencoderKL(dd, 3).eval()


def best(fn, reps):
    t = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); t.append(time.perf_counter() - t0)
    return min(t)


with torch.no_grad():
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    m.decode(m.encode(x)[0])  # warm-up
    print("encdec256", best(lambda: m.decode(m.encode(x)[0]), 3), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, flush=True)
    z = torch.randn(1, 3, 128, 128)
    print("dec512", best(lambda: m.decode(z), 2), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, flush=True)
