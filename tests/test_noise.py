import numpy as np
import pytest
import torch

from sadm_nnunet.diffusion.noise import sample_noise, simplex_noise
from sadm_nnunet.diffusion.settings import NoiseSettings

PAPER = NoiseSettings(kind="simplex", octaves=6, persistence=0.8, frequency=64.0)


def low_frequency_power_fraction(noise: torch.Tensor, cutoff: float = 0.1) -> float:
    """Fraction of the spectral power below `cutoff` cycles/pixel, averaged over samples."""
    power = np.abs(np.fft.fft2(noise[:, 0].numpy())) ** 2
    f = np.fft.fftfreq(noise.shape[-1])
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    return float(power[:, radius < cutoff].sum() / power.sum())


def test_simplex_noise_is_zero_mean_unit_variance_per_sample():
    noise = simplex_noise((16, 2, 64, 64), PAPER, torch.Generator().manual_seed(0))
    assert noise.shape == (16, 2, 64, 64)
    per_sample_mean = noise.mean(dim=(2, 3))
    per_sample_std = noise.std(dim=(2, 3))
    assert per_sample_mean.abs().max() < 1e-5
    assert (per_sample_std - 1).abs().max() < 1e-4


def test_simplex_noise_is_low_frequency_unlike_gaussian():
    simplex = simplex_noise((8, 1, 96, 96), PAPER, torch.Generator().manual_seed(1))
    gaussian = torch.randn(8, 1, 96, 96, generator=torch.Generator().manual_seed(1))
    # radius < 0.1 is about 3% of the spectrum: white noise puts ~3% of its power there, simplex noise most of it
    assert low_frequency_power_fraction(gaussian) < 0.06
    assert low_frequency_power_fraction(simplex) > 0.5
    # neighbouring pixels are strongly correlated
    corr = np.corrcoef(simplex[:, 0, :, :-1].flatten(), simplex[:, 0, :, 1:].flatten())[0, 1]
    assert corr > 0.8


def test_more_persistence_means_more_high_frequency_power():
    smooth = simplex_noise((8, 1, 64, 64), NoiseSettings("simplex", 6, 0.3, 64.0), torch.Generator().manual_seed(2))
    rough = simplex_noise((8, 1, 64, 64), NoiseSettings("simplex", 6, 0.9, 64.0), torch.Generator().manual_seed(2))
    assert low_frequency_power_fraction(smooth) > low_frequency_power_fraction(rough) + 0.05


def test_simplex_noise_is_seeded_and_varies_between_samples():
    a = simplex_noise((4, 1, 32, 32), PAPER, torch.Generator().manual_seed(3))
    b = simplex_noise((4, 1, 32, 32), PAPER, torch.Generator().manual_seed(3))
    c = simplex_noise((4, 1, 32, 32), PAPER, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert (a[0] - a[1]).abs().mean() > 0.3


def test_gaussian_kind_and_shape_check():
    g = sample_noise((2, 1, 8, 8), NoiseSettings("gaussian", 6, 0.8, 64.0), torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(g, torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        simplex_noise((8, 8), PAPER, torch.Generator())
