"""LPIPS (VGG16), NLayerDiscriminator and LPIPSWithDiscriminator in PyTorch, written to match
taming-transformers and latent-diffusion (taming/modules/losses/lpips.py, taming/modules/discriminator/model.py,
ldm/modules/losses/contperceptual.py); parameter names follow those modules. No torchvision:
the VGG16 feature stack is built by hand with torchvision's layer indices."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# torchvision vgg16 "D" configuration: features.N indices follow from it
VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
SLICES = [(0, 4), (4, 9), (9, 16), (16, 23), (23, 30)]
CHNS = [64, 128, 256, 512, 512]


def vgg16_features():
    layers, cin = [], 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
            cin = v
    return layers


class VGG16Slices(nn.Module):
    def __init__(self):
        super().__init__()
        feats = vgg16_features()
        for k, (a, b) in enumerate(SLICES):
            s = nn.Sequential()
            for i in range(a, b):
                s.add_module(str(i), feats[i])
            setattr(self, "slice%d" % (k + 1), s)

    def forward(self, x):
        outs = []
        for k in range(5):
            x = getattr(self, "slice%d" % (k + 1))(x)
            outs.append(x)
        return outs


class ScalingLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.Tensor([-.030, -.088, -.188])[None, :, None, None])
        self.register_buffer("scale", torch.Tensor([.458, .448, .450])[None, :, None, None])

    def forward(self, x):
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, stride=1, padding=0, bias=False))


def normalize_tensor(x, eps=1e-10):
    return x / (torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = VGG16Slices()
        for k, c in enumerate(CHNS):
            setattr(self, "lin%d" % k, NetLinLayer(c))
        for p in self.parameters():
            p.requires_grad = False

    def forward(self, a, b):
        o0, o1 = self.net(self.scaling_layer(a)), self.net(self.scaling_layer(b))
        val = 0
        for k in range(5):
            d = (normalize_tensor(o0[k]) - normalize_tensor(o1[k])) ** 2
            val = val + getattr(self, "lin%d" % k).model(d).mean([2, 3], keepdim=True)
        return val


class NLayerDiscriminator(nn.Module):
    """taming's; dims=3 swaps in Conv3d / BatchNorm3d (same names)"""
    def __init__(self, input_nc=3, ndf=64, n_layers=3, dims=2):
        super().__init__()
        Conv, BN = (nn.Conv3d, nn.BatchNorm3d) if dims == 3 else (nn.Conv2d, nn.BatchNorm2d)
        seq = [Conv(input_nc, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2 ** n, 8)
            seq += [Conv(ndf * prev, ndf * mult, 4, 2, 1, bias=False), BN(ndf * mult), nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2 ** n_layers, 8)
        seq += [Conv(ndf * prev, ndf * mult, 4, 1, 1, bias=False), BN(ndf * mult), nn.LeakyReLU(0.2, True)]
        seq += [Conv(ndf * mult, 1, 4, 1, 1)]
        self.main = nn.Sequential(*seq)

    def forward(self, x):
        return self.main(x)


def adopt_weight(weight, global_step, threshold=0, value=0.):
    return value if global_step < threshold else weight


def hinge_d_loss(real, fake):
    return 0.5 * (torch.mean(F.relu(1. - real)) + torch.mean(F.relu(1. + fake)))


def vanilla_d_loss(real, fake):
    return 0.5 * (torch.mean(F.softplus(-real)) + torch.mean(F.softplus(fake)))


class LPIPSWithDiscriminator(nn.Module):
    def __init__(self, disc_start, logvar_init=0.0, kl_weight=1.0, pixelloss_weight=1.0, disc_num_layers=3,
                 disc_in_channels=3, disc_factor=1.0, disc_weight=1.0, perceptual_weight=1.0, disc_loss="hinge"):
        super().__init__()
        self.kl_weight, self.pixel_weight = kl_weight, pixelloss_weight
        self.perceptual_loss = LPIPS().eval()
        self.perceptual_weight = perceptual_weight
        self.logvar = nn.Parameter(torch.ones(size=()) * logvar_init)
        self.discriminator = NLayerDiscriminator(disc_in_channels, 64, disc_num_layers)
        self.discriminator_iter_start = disc_start
        self.disc_loss = hinge_d_loss if disc_loss == "hinge" else vanilla_d_loss
        self.disc_factor, self.discriminator_weight = disc_factor, disc_weight

    def calculate_adaptive_weight(self, nll_loss, g_loss, last_layer):
        nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
        g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
        return torch.clamp(d_weight, 0.0, 1e4).detach() * self.discriminator_weight

    def forward(self, inputs, reconstructions, kl, optimizer_idx, global_step, last_layer=None, split="train"):
        rec_loss = torch.abs(inputs - reconstructions)
        if self.perceptual_weight > 0:
            rec_loss = rec_loss + self.perceptual_weight * self.perceptual_loss(inputs, reconstructions)
        nll_loss = rec_loss / torch.exp(self.logvar) + self.logvar
        nll_loss = torch.sum(nll_loss) / nll_loss.shape[0]
        kl_loss = torch.sum(kl) / kl.shape[0]
        if optimizer_idx == 0:
            g_loss = -torch.mean(self.discriminator(reconstructions))
            if self.disc_factor > 0.0:
                try:
                    d_weight = self.calculate_adaptive_weight(nll_loss, g_loss, last_layer)
                except RuntimeError:
                    assert not self.training
                    d_weight = torch.tensor(0.0)
            else:
                d_weight = torch.tensor(0.0)
            disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
            loss = nll_loss + self.kl_weight * kl_loss + d_weight * disc_factor * g_loss
            log = {"total_loss": loss, "logvar": self.logvar, "kl_loss": kl_loss, "nll_loss": nll_loss,
                   "rec_loss": rec_loss.mean(), "d_weight": d_weight, "disc_factor": torch.tensor(disc_factor), "g_loss": g_loss}
            return loss, {"%s/%s" % (split, k): v.detach().double().mean() for k, v in log.items()}
        logits_real = self.discriminator(inputs.detach())
        logits_fake = self.discriminator(reconstructions.detach())
        disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
        d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
        log = {"disc_loss": d_loss, "logits_real": logits_real.mean(), "logits_fake": logits_fake.mean()}
        return d_loss, {"%s/%s" % (split, k): v.detach().double().mean() for k, v in log.items()}


# ---- metrics: skimage.metrics conventions, re-implemented in numpy (float64) ---------------
def gaussian_kernel1d(sigma=1.5, truncate=3.5):
    r = int(truncate * sigma + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 / sigma ** 2 * x ** 2)
    return k / k.sum()


def _filter_valid(img, k):
    """Separable correlation keeping only outputs whose window lies inside the image."""
    r = len(k) // 2
    h, w = img.shape
    t = sum(k[i] * img[:, i:w - 2 * r + i] for i in range(2 * r + 1))
    return sum(k[i] * t[i:h - 2 * r + i, :] for i in range(2 * r + 1))


def ssim_channel(a, b, data_range=1.0, sigma=1.5):
    """skimage structural_similarity(gaussian_weights=True, sigma, use_sample_covariance=False,
    data_range) for one channel. skimage filters the whole image (reflect mode) and then averages
    after cropping (win_size-1)//2 pixels from every border; the kept outputs only ever see
    interior pixels, so the valid-region filter here gives the same numbers."""
    k = gaussian_kernel1d(sigma)
    a, b = a.astype(np.float64), b.astype(np.float64)
    ux, uy = _filter_valid(a, k), _filter_valid(b, k)
    uxx, uyy, uxy = _filter_valid(a * a, k), _filter_valid(b * b, k), _filter_valid(a * b, k)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return s.mean()


def ssim(a, b, data_range=1.0):
    """a, b: [C, H, W] float in [0, data_range]; mean over channels (skimage channel_axis)."""
    return float(np.mean([ssim_channel(a[c], b[c], data_range) for c in range(a.shape[0])]))


def psnr(a, b, data_range=1.0):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10.0 * np.log10(data_range ** 2 / mse))
