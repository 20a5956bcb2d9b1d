"""Noise for the forward diffusion process: Gaussian or multi-octave simplex noise, generated in torch.

Simplex noise (as in AnoDDPM and the SADM paper) is spatially correlated, so the denoiser learns to remove
low-frequency structure (such as a lesion) rather than only pixel noise. Everything here is vectorised over the
batch and generated on the device of the images, from an explicit `torch.Generator`, so it is reproducible.
"""
from __future__ import annotations

import math

import torch

from sadm_nnunet.diffusion.settings import NoiseSettings

_F2 = 0.5 * (math.sqrt(3.0) - 1.0)  # skew factor of the 2D simplex grid
_G2 = (3.0 - math.sqrt(3.0)) / 6.0  # unskew factor
_TABLE = 256


def _simplex_2d(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """2D simplex noise at coordinates x, y of shape (B, H, W), one permutation table (B, 512) and gradient set
    (B, 256, 2) per sample. Returns values of shape (B, H, W), roughly in [-1, 1]."""
    b = x.shape[0]
    s = (x + y) * _F2
    i = torch.floor(x + s)
    j = torch.floor(y + s)
    t = (i + j) * _G2
    x0 = x - (i - t)
    y0 = y - (j - t)
    i1 = (x0 > y0).to(x.dtype)
    j1 = 1.0 - i1
    corners = (
        (x0, y0, 0.0, 0.0),
        (x0 - i1 + _G2, y0 - j1 + _G2, i1, j1),
        (x0 - 1.0 + 2.0 * _G2, y0 - 1.0 + 2.0 * _G2, 1.0, 1.0),
    )
    ii = i.long() & (_TABLE - 1)
    jj = j.long() & (_TABLE - 1)
    flat_perm = perm.reshape(b, -1)
    out = torch.zeros_like(x)
    for cx, cy, di, dj in corners:
        di_l = di.long() if torch.is_tensor(di) else int(di)
        dj_l = dj.long() if torch.is_tensor(dj) else int(dj)
        inner = torch.gather(flat_perm, 1, (jj + dj_l).reshape(b, -1))
        gi = torch.gather(flat_perm, 1, (ii + di_l).reshape(b, -1) + inner) & (_TABLE - 1)
        g = torch.gather(grad, 1, gi[..., None].expand(-1, -1, 2)).reshape(*x.shape, 2)
        falloff = torch.clamp(0.5 - cx * cx - cy * cy, min=0.0)
        out = out + falloff ** 4 * (g[..., 0] * cx + g[..., 1] * cy)
    return 70.0 * out


def simplex_noise(shape: tuple[int, ...], settings: NoiseSettings, generator: torch.Generator,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Multi-octave simplex noise of shape (B, C, H, W), normalised to zero mean and unit variance per sample
    and channel. Octave k has feature size `frequency / 2**k` pixels and amplitude `persistence**k`."""
    if len(shape) != 4:
        raise ValueError(f"simplex_noise expects a (B, C, H, W) shape, found {tuple(shape)}")
    b, c, h, w = shape
    n = b * c
    device = torch.device(device)
    perm_half = torch.argsort(torch.rand(n, _TABLE, generator=generator, device=generator.device), dim=1)
    perm = torch.cat([perm_half, perm_half], dim=1).to(device)
    angles = torch.rand(n, _TABLE, generator=generator, device=generator.device).to(device) * (2 * math.pi)
    grad = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1).to(torch.float32)
    offsets = (torch.rand(settings.octaves, n, 2, generator=generator, device=generator.device) * _TABLE).to(device)
    yy, xx = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    total = torch.zeros(n, h, w, device=device, dtype=torch.float32)
    for k in range(settings.octaves):
        scale = (2.0 ** k) / settings.frequency
        x = xx[None] * scale + offsets[k, :, 0, None, None]
        y = yy[None] * scale + offsets[k, :, 1, None, None]
        total = total + settings.persistence ** k * _simplex_2d(x, y, perm, grad)
    total = total - total.mean(dim=(1, 2), keepdim=True)
    total = total / total.std(dim=(1, 2), keepdim=True).clamp_min(1e-6)
    return total.reshape(b, c, h, w).to(dtype)


@torch.compiler.disable  # seeded generators break torch.compile graphs at every draw; noise needs no compiling
def sample_noise(shape: tuple[int, ...], settings: NoiseSettings, generator: torch.Generator | None,
                 device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Noise of the kind the settings select (`simplex` or `gaussian`)."""
    if settings.kind == "gaussian":
        gen_device = generator.device if generator is not None else device
        return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    return simplex_noise(shape, settings, generator, device, dtype)
