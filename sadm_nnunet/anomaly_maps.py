"""Unsupervised anomaly maps from an image and its pseudo-healthy reconstruction (vectorised, torch)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_SIGMA = 1.0  # paper: Gaussian window, sigma 1, kernel size 9
SSIM_KERNEL = 9


def _gaussian_window(sigma: float, size: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float, sigma: float = SSIM_SIGMA,
             size: int = SSIM_KERNEL) -> torch.Tensor:
    """Per-pixel SSIM of two (N, C, H, W) image stacks, computed slice by slice with a Gaussian window."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim_map expects two (N, C, H, W) tensors of equal shape; found {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    a, b = a.float(), b.float()
    c = a.shape[1]
    window = _gaussian_window(sigma, size, a.device, a.dtype).expand(c, 1, size, size)
    pad = size // 2

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="replicate"), window, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the voxels where `mask` is true, per sample (first axis); NaN where empty."""
    mask = mask.expand_as(values).float()
    dims = tuple(range(1, values.ndim))
    return (values * mask).sum(dims) / mask.sum(dims)
