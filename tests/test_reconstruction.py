from dataclasses import replace

import pytest
import torch

from sadm_nnunet.diffusion.model import EMADenoiser
from sadm_nnunet.diffusion.reconstruction import Reconstructor
from sadm_nnunet.diffusion.settings import DiffusionSettings

TINY = {"unet": {"base_channels": 8, "max_channels": 16, "norm_num_groups": 4, "layers_per_block": 1}}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    settings = DiffusionSettings.from_dict(TINY)
    return EMADenoiser.from_settings(settings, (32, 32), 2).ema, settings


def slices(n=6, c=2, h=30, w=28, seed=0):
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_single_step_is_deterministic_and_uses_three_passes(model):
    unet, settings = model
    rec = Reconstructor(unet, settings)
    x = slices()
    a, b = rec(x), rec(x)
    assert a.shape == x.shape  # 30x28 is padded to the UNet's divisor and cropped back
    assert torch.equal(a, b)
    assert rec.passes_per_slice() == 3
    assert not a.requires_grad


def test_result_does_not_depend_on_batch_size(model):
    unet, settings = model
    x = slices()
    small = Reconstructor(unet, settings, replace(settings.reconstruction, batch_size=2))(x)
    large = Reconstructor(unet, settings, replace(settings.reconstruction, batch_size=64))(x)
    torch.testing.assert_close(small, large, atol=1e-5, rtol=1e-5)


def test_single_step_matches_a_hand_computed_ensemble(model):
    unet, settings = model
    levels = (250, 500, 750)
    options = replace(settings.reconstruction, noise_levels=levels, seed=7)
    noise_settings = replace(settings.noise, kind="gaussian")
    settings_g = replace(settings, noise=noise_settings)
    x = slices(n=2, h=32, w=32)
    out = Reconstructor(unet, settings_g, options)(x)
    from diffusers import DDPMScheduler
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="sample")
    generator = torch.Generator().manual_seed(7)
    x0 = x / settings.intensity_scale
    per_level = []
    for level in levels:  # one noise draw per level, in order, from the seeded generator
        t = torch.tensor([level, level])
        xt = sched.add_noise(x0, torch.randn(x.shape, generator=generator), t)
        per_level.append(unet(xt, t).sample * settings.intensity_scale)
    torch.testing.assert_close(out, sum(per_level) / 3, atol=1e-5, rtol=1e-4)
    assert (per_level[0] - per_level[2]).abs().mean() > 1e-3  # the levels differ: the mean is not one of them
    # each level's own reconstruction (prediction_ensemble 'per_level' segments these one by one)
    levels_out = Reconstructor(unet, settings_g, options).per_level(x)
    torch.testing.assert_close(levels_out, torch.stack(per_level), atol=1e-5, rtol=1e-4)
    volume = x.permute(1, 0, 2, 3)[None]  # (1, C, D, H, W) with the slices on D
    assert Reconstructor(unet, settings_g, options).per_level(volume).shape == (3, *volume.shape)


def test_floor_background_is_minus_one_for_the_denoiser_and_zero_in_the_reconstruction(model):
    unet, settings = model
    floor = replace(settings, background="floor", noise=replace(settings.noise, kind="gaussian"))
    options = replace(floor.reconstruction, noise_levels=(500,), seed=3)
    x = slices(n=2, h=30, w=28)
    x[:, :, :5] = 0  # background rows (nnU-Net's zeros outside the brain mask)
    out = Reconstructor(unet, floor, options)(x)
    # by hand: background -> -1, brain -> z / scale, padded with -1 to the UNet's divisor (4: 30x28 -> 32x28)
    x0 = torch.where(x == 0, torch.tensor(-1.0), x / floor.intensity_scale)
    x0 = torch.nn.functional.pad(x0, (0, 0, 0, 2), value=-1.0)
    from diffusers import DDPMScheduler
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="sample")
    t = torch.tensor([500, 500])
    xt = sched.add_noise(x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(3)), t)
    expected = unet(xt, t).sample[..., :30, :28] * floor.intensity_scale
    expected[x == 0] = 0.0
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    assert (out[:, :, :5] == 0).all() and (out[:, :, 5:] != 0).all()
    # the template's 'brain_mean' leaves the background at the brain's mean (0) and pads with it
    brain_mean = Reconstructor(unet, replace(floor, background="brain_mean"), options)(x)
    assert (brain_mean[:, :, :5] != 0).any() and not torch.allclose(brain_mean[:, :, 5:], out[:, :, 5:])


def test_volumes_are_reconstructed_slice_by_slice(model):
    unet, settings = model
    rec = Reconstructor(unet, settings)
    vol = torch.randn(1, 2, 5, 32, 32, generator=torch.Generator().manual_seed(1))
    out = rec(vol)
    assert out.shape == vol.shape
    torch.testing.assert_close(out[0].permute(1, 0, 2, 3), rec(vol[0].permute(1, 0, 2, 3)))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("levels,steps", [((250, 500, 750), 10), ((500,), 3), ((750,), 7)])
def test_iterative_sampling_works_for_levels_off_the_scheduler_grid(model, sampler, levels, steps):
    unet, settings = model
    options = replace(settings.reconstruction, method="iterative", sampler=sampler, num_steps=steps,
                      noise_levels=levels)
    out = Reconstructor(unet, settings, options)(slices(n=2))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_iterative_sampling_takes_num_steps_passes_per_level(model, sampler):
    unet, settings = model
    options = replace(settings.reconstruction, method="iterative", sampler=sampler, num_steps=4,
                      noise_levels=(500,))
    rec = Reconstructor(unet, settings, options)
    calls = []
    handle = unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        out = rec(slices(n=3))
        assert torch.equal(out, rec(slices(n=3)))
    finally:
        handle.remove()
    assert rec.passes_per_slice() == 4
    assert len(calls) == 2 * 4  # two calls above, one batch each, 4 steps
    assert torch.isfinite(out).all()


def test_patchwise_reconstruction_keeps_each_tile_prediction(model):
    unet, settings = model
    rec = Reconstructor(unet, settings, replace(settings.reconstruction, patch_grid=2))
    out = rec(slices(n=2, h=32, w=32))
    assert rec.passes_per_slice() == 3 * 4
    assert out.shape == (2, 2, 32, 32) and torch.isfinite(out).all()
    assert not torch.allclose(out, Reconstructor(unet, settings)(slices(n=2, h=32, w=32)))


def test_channel_mismatch_and_bad_shapes_are_clear_errors(model):
    unet, settings = model
    rec = Reconstructor(unet, settings)
    with pytest.raises(ValueError, match=r"trained on 2 image channel\(s\); the input has 1"):
        rec(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="expects"):
        rec(torch.zeros(32, 32))
