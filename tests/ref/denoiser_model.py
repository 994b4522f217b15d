"""PyTorch reference denoisers written for these tests, module for module and name for name as
CompVis latent-diffusion's UNetModel (ldm/modules/diffusionmodules/openaimodel.py with
ldm/modules/attention.py's SpatialTransformer, plus SD2's use_linear_in_transformer), its
ClassEmbedder, and facebookresearch/DiT's DiT (timm's Attention/Mlp/PatchEmbed inlined with
the same parameter names). Their state dicts load into the originals (same keys and shapes)."""
import math
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def conv_nd(dims, *a, **k):
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims](*a, **k)


class GroupNorm32(nn.GroupNorm):
    def forward(self, x):
        # float32 for half inputs as CompVis; the float64 references stay float64
        return super().forward(x if x.dtype == torch.float64 else x.float()).type(x.dtype)


def norm32(ch):
    return GroupNorm32(32, ch)


class Upsample(nn.Module):
    def __init__(self, ch, use_conv, dims):
        super().__init__()
        self.dims = dims
        if use_conv:
            self.conv = conv_nd(dims, ch, ch, 3, padding=1)
        self.use_conv = use_conv

    def forward(self, x):
        if self.dims == 3:
            x = F.interpolate(x, (x.shape[2], x.shape[3] * 2, x.shape[4] * 2), mode="nearest")
        else:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    def __init__(self, ch, use_conv, dims):
        super().__init__()
        s = 2 if dims != 3 else (1, 2, 2)
        self.op = conv_nd(dims, ch, ch, 3, stride=s, padding=1) if use_conv else nn.AvgPool2d(s, s)

    def forward(self, x):
        return self.op(x)


class ResBlock(nn.Module):
    def __init__(self, ch, emb_ch, dropout, out_ch, dims, ss, up=False, down=False):
        super().__init__()
        self.ss = ss
        self.in_layers = nn.Sequential(norm32(ch), nn.SiLU(), conv_nd(dims, ch, out_ch, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(ch, False, dims), Upsample(ch, False, dims)
        elif down:
            self.h_upd, self.x_upd = Downsample(ch, False, dims), Downsample(ch, False, dims)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch if ss else out_ch))
        self.out_layers = nn.Sequential(norm32(out_ch), nn.SiLU(), nn.Dropout(dropout),
                                        conv_nd(dims, out_ch, out_ch, 3, padding=1))
        self.skip_connection = nn.Identity() if out_ch == ch else conv_nd(dims, ch, out_ch, 1)

    def forward(self, x, emb):
        if self.updown:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb)
        while e.dim() < h.dim():
            e = e[..., None]
        if self.ss:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[1:](self.out_layers[0](h) * (1 + scale) + shift)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    def __init__(self, ch, num_heads, num_head_channels, new_order):
        super().__init__()
        self.heads = num_heads if num_head_channels == -1 else ch // num_head_channels
        self.new_order = new_order
        self.norm = norm32(ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj_out = nn.Conv1d(ch, ch, 1)

    def forward(self, x):
        b, c, *sp = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        bs, width, T = qkv.shape
        ch = width // (3 * self.heads)
        s = 1 / math.sqrt(math.sqrt(ch))
        if self.new_order:  # QKVAttention
            q, k, v = qkv.chunk(3, dim=1)
            q, k, v = (z.reshape(bs * self.heads, ch, T) for z in (q, k, v))
        else:               # QKVAttentionLegacy
            q, k, v = qkv.reshape(bs * self.heads, 3 * ch, T).split(ch, dim=1)
        w = torch.softmax(torch.einsum("bct,bcs->bts", q * s, k * s), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(bs, -1, T)
        return (x + self.proj_out(a)).reshape(b, c, *sp)


class CrossAttention(nn.Module):
    def __init__(self, qdim, cdim, heads, dh):
        super().__init__()
        inner = heads * dh
        self.heads, self.scale = heads, dh ** -0.5
        self.to_q = nn.Linear(qdim, inner, bias=False)
        self.to_k = nn.Linear(cdim or qdim, inner, bias=False)
        self.to_v = nn.Linear(cdim or qdim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, qdim), nn.Dropout(0.0))

    def forward(self, x, context=None):
        c = x if context is None else context
        h = self.heads
        q, k, v = self.to_q(x), self.to_k(c), self.to_v(c)
        sp = lambda t: t.reshape(t.shape[0], t.shape[1], h, -1).permute(0, 2, 1, 3).reshape(t.shape[0] * h, t.shape[1], -1)
        q, k, v = sp(q), sp(k), sp(v)
        a = torch.einsum("bid,bjd->bij", q, k) * self.scale
        o = torch.einsum("bij,bjd->bid", a.softmax(dim=-1), v)
        o = o.reshape(x.shape[0], h, o.shape[1], -1).permute(0, 2, 1, 3).reshape(x.shape[0], o.shape[1], -1)
        return self.to_out(o)


class GEGLU(nn.Module):
    def __init__(self, din, dout):
        super().__init__()
        self.proj = nn.Linear(din, dout * 2)

    def forward(self, x):
        x, g = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(g)


class FeedForward(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, heads, dh, cdim):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dh)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, cdim, heads, dh)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, context=None):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, ch, heads, dh, depth, cdim, linear):
        super().__init__()
        inner = heads * dh
        self.linear = linear
        self.norm = nn.GroupNorm(32, ch, eps=1e-6)
        self.proj_in = nn.Linear(ch, inner) if linear else nn.Conv2d(ch, inner, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner, heads, dh, cdim) for _ in range(depth)])
        self.proj_out = nn.Linear(ch, inner) if linear else nn.Conv2d(inner, ch, 1)  # SD2's (ch, inner) order

    def forward(self, x, context=None):
        b, c, h, w = x.shape
        y = self.norm(x)
        if not self.linear:
            y = self.proj_in(y)
        y = y.reshape(b, y.shape[1], h * w).transpose(1, 2)
        if self.linear:
            y = self.proj_in(y)
        for blk in self.transformer_blocks:
            y = blk(y, context)
        if self.linear:
            y = self.proj_out(y)
        y = y.transpose(1, 2).reshape(b, -1, h, w)
        if not self.linear:
            y = self.proj_out(y)
        return y + x


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x, emb, context=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    def __init__(self, image_size, in_channels, model_channels, out_channels, num_res_blocks, attention_resolutions,
                 dropout=0, channel_mult=(1, 2, 4, 8), conv_resample=True, dims=2, num_classes=None, use_checkpoint=False,
                 use_fp16=False, num_heads=-1, num_head_channels=-1, num_heads_upsample=-1, use_scale_shift_norm=False,
                 resblock_updown=False, use_new_attention_order=False, use_spatial_transformer=False, transformer_depth=1,
                 context_dim=None, legacy=True, use_linear_in_transformer=False):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.model_channels, self.num_classes = model_channels, num_classes
        ted = model_channels * 4
        ss = use_scale_shift_norm
        self.time_embed = nn.Sequential(nn.Linear(model_channels, ted), nn.SiLU(), nn.Linear(ted, ted))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, ted)

        def heads_at(ch):
            nh = num_heads
            if num_head_channels == -1:
                dh = ch // nh
            else:
                nh = ch // num_head_channels
                dh = num_head_channels
            if legacy:
                dh = ch // nh if use_spatial_transformer else num_head_channels
            return nh, dh

        def attn(ch, up):
            nh, dh = heads_at(ch)
            if use_spatial_transformer:
                return SpatialTransformer(ch, nh, dh, transformer_depth, context_dim, use_linear_in_transformer)
            return AttentionBlock(ch, num_heads_upsample if up else nh, dh, use_new_attention_order)

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(conv_nd(dims, in_channels, model_channels, 3, padding=1))])
        chans, ch, ds = [model_channels], model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, ted, dropout, mult * model_channels, dims, ss)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(attn(ch, False))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(
                    ResBlock(ch, ted, dropout, ch, dims, ss, down=True) if resblock_updown else Downsample(ch, conv_resample, dims)))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(ResBlock(ch, ted, dropout, ch, dims, ss), attn(ch, False),
                                                    ResBlock(ch, ted, dropout, ch, dims, ss))
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                ich = chans.pop()
                layers = [ResBlock(ch + ich, ted, dropout, model_channels * mult, dims, ss)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attn(ch, True))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, ted, dropout, ch, dims, ss, up=True) if resblock_updown
                                  else Upsample(ch, conv_resample, dims))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(norm32(ch), nn.SiLU(), conv_nd(dims, model_channels, out_channels, 3, padding=1))

    def forward(self, x, timesteps, context=None, y=None):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)
        hs, h = [], x
        for m in self.input_blocks:
            h = m(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for m in self.output_blocks:
            h = m(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)


class ClassEmbedder(nn.Module):
    def __init__(self, embed_dim, n_classes=1000, key="class"):
        super().__init__()
        self.key = key
        self.embedding = nn.Embedding(n_classes, embed_dim)

    def forward(self, batch):
        return self.embedding(batch[self.key][:, None])


# ---- DiT ----
def modulate(x, shift, scale):
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
    def __init__(self, img, p, cin, d):
        super().__init__()
        self.patch_size = (p, p)
        self.num_patches = (img // p) ** 2
        self.proj = nn.Conv2d(cin, d, p, p)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1)) * (C // self.heads) ** -0.5
        x = (a.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, d, hid):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, hid), nn.GELU(approximate="tanh"), nn.Linear(hid, d)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    def __init__(self, d, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, heads)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(d, int(d * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def forward(self, x, c):
        sm, cm, gm, sp, cp, gp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gm.unsqueeze(1) * self.attn(modulate(self.norm1(x), sm, cm))
        return x + gp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sp, cp))


class FinalLayer(nn.Module):
    def __init__(self, d, p, cout):
        super().__init__()
        self.norm_final = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(d, p * p * cout)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def sincos_2d(d, g):
    gh, gw = np.arange(g, dtype=np.float32), np.arange(g, dtype=np.float32)
    grid = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, g, g)

    def one(dd, pos):
        om = np.arange(dd // 2, dtype=np.float64) / (dd / 2.0)
        om = 1.0 / 10000 ** om
        o = np.einsum("m,d->md", pos.reshape(-1), om)
        return np.concatenate([np.sin(o), np.cos(o)], axis=1)
    return np.concatenate([one(d // 2, grid[0]), one(d // 2, grid[1])], axis=1)


class DiT(nn.Module):
    def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
                 mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True):
        super().__init__()
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.p = patch_size
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(num_classes + int(class_dropout_prob > 0), hidden_size)
        n = self.x_embedder.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, n, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.reset_pos_embed()

    def reset_pos_embed(self):
        g = int(self.x_embedder.num_patches ** 0.5)
        self.pos_embed.data.copy_(torch.from_numpy(sincos_2d(self.pos_embed.shape[-1], g)).float().unsqueeze(0))

    def forward(self, x, t, y):
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder.mlp(timestep_embedding(t, 256).to(x.dtype)) + self.y_embedder.embedding_table(y)
        for b in self.blocks:
            x = b(x, c)
        x = self.final_layer(x, c)
        c_, p = self.out_channels, self.p
        h = w = int(x.shape[1] ** 0.5)
        x = torch.einsum("nhwpqc->nchpwq", x.reshape(x.shape[0], h, w, p, p, c_))
        return x.reshape(x.shape[0], c_, h * p, w * p)
