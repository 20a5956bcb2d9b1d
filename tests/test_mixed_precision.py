"""Mixed precision on the CPU: nnU-Net runs the whole SADM network, the denoiser included, under autocast on CUDA
(float16). Here the reconstruction and the stage-I loss run under CPU autocast (bfloat16 and float16) and are
compared with float32. Decision (numbers in benchmarks/RESULTS.md, "GPU code paths exercised on CPU"): half
precision moves the residual by well under 5% of a lesion's residual, so the denoiser runs under autocast like the
rest of the network; no float32 island. The stage-I GradScaler path is in test_ddp.py (it needs a trainer)."""
from __future__ import annotations

import pytest
import torch

from tiny_plans import brain_like, tiny_denoiser, tiny_sadm_network

LESION = 2.0  # z-score units added inside the lesion square of brain_like
HALF = [torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def network():
    torch.set_num_threads(1)
    return tiny_sadm_network().eval()


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_moves_the_residual_far_less_than_a_lesion(network, dtype):
    x = brain_like(4, seed=2, lesion=LESION)
    reference = x - network.reconstruct(x)
    with torch.autocast("cpu", dtype=dtype):
        residual = x - network.reconstruct(x).float()
    drift = (residual - reference).abs()
    inside = torch.zeros_like(x, dtype=torch.bool)
    inside[..., 12:18, 14:20] = True
    signal = reference[inside].mean() - reference[~inside & (x != 0)].mean()  # the lesion's residual contrast
    assert signal > 0.5 * LESION
    assert drift.max() < 0.05 * signal, (drift.max().item(), signal.item())
    # the stacked channels are float32 again (the segmentation network sees the image at full precision)
    with torch.autocast("cpu", dtype=dtype):
        assert network.stack(x).dtype == torch.float32


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_stage1_loss_under_autocast_stays_within_a_percent_of_float32(dtype):
    model = tiny_denoiser()
    x0 = brain_like(4, seed=1) / 3
    noisy = x0 + 0.3 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 250, 500, 900])
    reference = torch.nn.functional.l1_loss(model(noisy, t, x0), x0)
    with torch.autocast("cpu", dtype=dtype):
        prediction = model(noisy, t, x0)
    assert prediction.dtype == dtype  # the UNet really ran in half precision
    loss = torch.nn.functional.l1_loss(prediction.float(), x0)  # as denoising_step computes it
    assert loss.item() == pytest.approx(reference.item(), rel=1e-2)
