"""AutoencoderKL in PyTorch, written to match CompVis latent-diffusion (ldm/modules/
diffusionmodules/model.py + ldm/models/autoencoder.py). Parameter names follow CompVis.
dims=3 (ddconfig key `dims`) is the same model for volumes [B,C,T,H,W]: Conv3d everywhere,
Downsample pads (0,1,0,1,0,1) / avg-pools 2 in T,H,W, Upsample doubles T,H,W, AttnBlock over
the T*H*W positions."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv(dims, *a, **k):
    return {2: nn.Conv2d, 3: nn.Conv3d}[dims](*a, **k)


def norm(c):
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


def swish(x):
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout, dropout=0.0, dims=2):
        super().__init__()
        self.norm1, self.conv1 = norm(cin), conv(dims, cin, cout, 3, 1, 1)
        self.norm2, self.dropout, self.conv2 = norm(cout), nn.Dropout(dropout), conv(dims, cout, cout, 3, 1, 1)
        if cin != cout:
            self.nin_shortcut = conv(dims, cin, cout, 1, 1, 0)
        self.cin, self.cout = cin, cout

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return (self.nin_shortcut(x) if self.cin != self.cout else x) + h


class AttnBlock(nn.Module):
    def __init__(self, c, dims=2):
        super().__init__()
        self.norm = norm(c)
        self.q, self.k, self.v, self.proj_out = (conv(dims, c, c, 1) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c = q.shape[:2]
        n = q[0, 0].numel()  # H*W, or T*H*W for volumes
        q = q.reshape(b, c, n).permute(0, 2, 1)
        k = k.reshape(b, c, n)
        w = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)
        v = v.reshape(b, c, n)
        out = torch.bmm(v, w.permute(0, 2, 1)).reshape(x.shape)
        return x + self.proj_out(out)


class Down(nn.Module):
    def __init__(self, c, dims=2, with_conv=True):
        super().__init__()
        self.dims, self.with_conv = dims, with_conv
        if with_conv:
            self.conv = conv(dims, c, c, 3, 2, 0)

    def forward(self, x):
        if not self.with_conv:
            return (F.avg_pool3d if self.dims == 3 else F.avg_pool2d)(x, kernel_size=2, stride=2)
        return self.conv(F.pad(x, (0, 1) * self.dims))


class Up(nn.Module):
    def __init__(self, c, dims=2, with_conv=True):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = conv(dims, c, c, 3, 1, 1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Encoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, attn_resolutions, in_channels, resolution, z_channels, double_z=True, dropout=0.0,
                 dims=2, resamp_with_conv=True, **_):
        super().__init__()
        self.conv_in = conv(dims, in_channels, ch, 3, 1, 1)
        in_mult, res = (1,) + tuple(ch_mult), resolution
        self.down = nn.ModuleList()
        for i, m in enumerate(ch_mult):
            lvl = nn.Module(); lvl.block = nn.ModuleList(); lvl.attn = nn.ModuleList()
            cin = ch * in_mult[i]
            for _ in range(num_res_blocks):
                lvl.block.append(ResnetBlock(cin, ch * m, dropout, dims)); cin = ch * m
                if res in attn_resolutions:
                    lvl.attn.append(AttnBlock(cin, dims))
            if i != len(ch_mult) - 1:
                lvl.downsample = Down(cin, dims, resamp_with_conv); res //= 2
            self.down.append(lvl)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = (ResnetBlock(cin, cin, dropout, dims), AttnBlock(cin, dims),
                                                               ResnetBlock(cin, cin, dropout, dims))
        self.norm_out = norm(cin)
        self.conv_out = conv(dims, cin, 2 * z_channels if double_z else z_channels, 3, 1, 1)
        self.n = len(ch_mult)

    def forward(self, x):
        h = self.conv_in(x)
        for i, lvl in enumerate(self.down):
            for j, blk in enumerate(lvl.block):
                h = blk(h)
                if len(lvl.attn) > 0:
                    h = lvl.attn[j](h)
            if i != self.n - 1:
                h = lvl.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch, out_ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels, tanh_out=False, dropout=0.0,
                 dims=2, resamp_with_conv=True, **_):
        super().__init__()
        n = len(ch_mult)
        cin, res = ch * ch_mult[-1], resolution // 2 ** (n - 1)
        self.conv_in = conv(dims, z_channels, cin, 3, 1, 1)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = (ResnetBlock(cin, cin, dropout, dims), AttnBlock(cin, dims),
                                                               ResnetBlock(cin, cin, dropout, dims))
        ups = []
        for i in reversed(range(n)):
            lvl = nn.Module(); lvl.block = nn.ModuleList(); lvl.attn = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                lvl.block.append(ResnetBlock(cin, ch * ch_mult[i], dropout, dims)); cin = ch * ch_mult[i]
                if res in attn_resolutions:
                    lvl.attn.append(AttnBlock(cin, dims))
            if i != 0:
                lvl.upsample = Up(cin, dims, resamp_with_conv); res *= 2
            ups.insert(0, lvl)
        self.up = nn.ModuleList(ups)
        self.norm_out = norm(cin)
        self.conv_out = conv(dims, cin, out_ch, 3, 1, 1)
        self.n, self.tanh_out = n, tanh_out

    def forward(self, z):
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for i in reversed(range(self.n)):
            lvl = self.up[i]
            for j, blk in enumerate(lvl.block):
                h = blk(h)
                if len(lvl.attn) > 0:
                    h = lvl.attn[j](h)
            if i != 0:
                h = lvl.upsample(h)
        h = self.conv_out(swish(self.norm_out(h)))
        return torch.tanh(h) if self.tanh_out else h


class AutoencoderKL(nn.Module):
    def __init__(self, ddconfig, embed_dim):
        super().__init__()
        self.encoder, self.decoder = Encoder(**ddconfig), Decoder(**ddconfig)
        z, dims = ddconfig["z_channels"], ddconfig.get("dims", 2)
        self.quant_conv = conv(dims, 2 * z, 2 * embed_dim, 1)
        self.post_quant_conv = conv(dims, embed_dim, z, 1)

    def encode(self, x):
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return mean, torch.clamp(logvar, -30.0, 20.0)

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))


def kl(mean, logvar):
    return 0.5 * torch.sum(mean ** 2 + torch.exp(logvar) - 1.0 - logvar, dim=list(range(1, mean.dim())))


def nll(sample, mean, logvar):
    import math
    return 0.5 * torch.sum(math.log(2.0 * math.pi) + logvar + (sample - mean) ** 2 / torch.exp(logvar), dim=list(range(1, mean.dim())))


def to_diffusers(sd, n_levels):
    """CompVis -> diffusers VAE names (REFERENCE.md table); attention 1x1 convs become [C,C]."""
    import re
    out = {}
    for k, v in sd.items():
        n = k
        m = re.match(r"decoder\.up\.(\d+)\.(.*)", n)
        if m:
            n = "decoder.up.%d.%s" % (n_levels - 1 - int(m.group(1)), m.group(2))
            n = n.replace("decoder.up.", "decoder.up_blocks.", 1)
        n = re.sub(r"^encoder\.down\.", "encoder.down_blocks.", n)
        n = re.sub(r"(up|down)_blocks\.(\d+)\.block\.", r"\1_blocks.\2.resnets.", n)
        n = re.sub(r"(up|down)_blocks\.(\d+)\.attn\.", r"\1_blocks.\2.attentions.", n)
        n = re.sub(r"down_blocks\.(\d+)\.downsample\.conv", r"down_blocks.\1.downsamplers.0.conv", n)
        n = re.sub(r"up_blocks\.(\d+)\.upsample\.conv", r"up_blocks.\1.upsamplers.0.conv", n)
        n = n.replace("mid.block_1.", "mid_block.resnets.0.").replace("mid.block_2.", "mid_block.resnets.1.")
        n = n.replace("mid.attn_1.", "mid_block.attentions.0.")
        n = n.replace(".nin_shortcut.", ".conv_shortcut.").replace(".norm_out.", ".conv_norm_out.")
        attn = ".attentions." in n
        if attn:
            for a, b in (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
                if re.search(r"\.attentions\.\d+\.%s\.(weight|bias)$" % a, n):
                    n = re.sub(r"(\.attentions\.\d+\.)%s\." % a, r"\1%s." % b, n)
                    break
            if v.dim() == 4:
                v = v.reshape(v.shape[0], v.shape[1])
        out[n] = v
    return out
