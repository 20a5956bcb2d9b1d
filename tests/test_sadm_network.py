"""The SADM network as nnU-Net's predictor builds it: static builder, strict reload, frozen denoiser, input modes."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from sadm_nnunet.diffusion.settings import DiffusionSettings, unet_config
from sadm_nnunet.segmentation.network import SADMNetwork
from sadm_nnunet.segmentation.settings import SADMSettings, Stage1Model, sadm_block
from sadm_nnunet.nnunet_plans import resolve_sadm_settings
from sadm_nnunet.training.sadm_trainer import SADMTrainer

from conftest import TINY_UNET


def tiny_diffusion() -> DiffusionSettings:
    overrides = {}
    for item in TINY_UNET:
        key, value = item.split("=")
        section, name = key.split(".")
        overrides.setdefault(section, {})[name] = json.loads(value)
    return DiffusionSettings.from_dict(overrides)


@pytest.fixture(scope="module")
def sadm_plans(nnunet, healthy_dataset) -> dict:
    """The healthy dataset's plans with a '2d_sadm' configuration holding a tiny (untrained) denoiser."""
    plans = json.loads((nnunet.preprocessed / healthy_dataset / "nnUNetPlans.json").read_text())
    patch = tuple(plans["configurations"]["2d"]["patch_size"])
    diffusion = tiny_diffusion()
    block = sadm_block({}, Stage1Model(healthy_dataset, "SADMDiffusionTrainer", "nnUNetPlans", "2d", "all"),
                       diffusion, unet_config(diffusion, patch, 1))
    plans["configurations"]["2d_sadm"] = {"inherits_from": "2d", "sadm": block}
    return plans


def build(plans: dict, configuration: str = "2d_sadm", channels: int = 1, deep_supervision: bool = False):
    """Exactly the predictor's call (nnunetv2.inference.predict_from_raw_data)."""
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration)
    return SADMTrainer.build_network_architecture(plans_manager, configuration_manager, channels, 2,
                                                  enable_deep_supervision=deep_supervision)


def test_static_builder_and_strict_reload_reproduce_the_output(sadm_plans, tmp_path):
    torch.manual_seed(0)
    net = build(sadm_plans)
    assert isinstance(net, SADMNetwork)
    assert net.segmentation.encoder.stages[0][0].convs[0].conv.in_channels == 2  # image + residual
    torch.save(net.state_dict(), tmp_path / "weights.pth")
    torch.manual_seed(1)
    reloaded = build(sadm_plans)
    assert any(k.startswith("denoiser.") for k in net.state_dict())
    reloaded.load_state_dict(torch.load(tmp_path / "weights.pth"), strict=True)
    net.eval(), reloaded.eval()
    x = torch.randn(3, 1, *sadm_plans["configurations"]["2d"]["patch_size"])
    with torch.no_grad():
        a, b = net(x), reloaded(x)
    assert a.shape == (3, 2, *x.shape[2:])
    torch.testing.assert_close(a, b)


def test_denoiser_is_frozen_in_eval_mode_and_gets_no_gradient(sadm_plans):
    torch.manual_seed(0)
    net = build(sadm_plans, deep_supervision=True)
    net.train()
    assert not net.denoiser.training and net.segmentation.training
    assert all(not p.requires_grad for p in net.denoiser.parameters())
    x = torch.randn(2, 1, *sadm_plans["configurations"]["2d"]["patch_size"])
    out = net(x)
    assert isinstance(out, (list, tuple))  # deep supervision outputs
    sum(o.mean() for o in out).backward()
    assert all(p.grad is None for p in net.denoiser.parameters())
    assert all(p.grad is not None for p in net.segmentation.parameters())


def test_eval_reconstruction_is_deterministic_and_training_one_varies(sadm_plans):
    torch.manual_seed(0)
    net = build(sadm_plans)
    x = torch.randn(2, 1, *sadm_plans["configurations"]["2d"]["patch_size"])
    net.eval()
    torch.testing.assert_close(net.stack(x), net.stack(x))
    net.train()
    assert not torch.allclose(net.stack(x), net.stack(x))  # random noise level per sample while training


def test_input_modes_stack_residual_or_reconstruction(sadm_plans):
    x = torch.randn(2, 1, *sadm_plans["configurations"]["2d"]["patch_size"])
    nets = {}
    for mode in ("image+residual", "image+reconstruction"):
        plans = copy.deepcopy(sadm_plans)
        plans["configurations"]["2d_sadm"]["sadm"]["input_mode"] = mode
        torch.manual_seed(0)
        nets[mode] = build(plans).eval()
    reconstruction = nets["image+reconstruction"].reconstruct(x)
    torch.testing.assert_close(nets["image+reconstruction"].stack(x), torch.cat([x, reconstruction], 1))
    torch.testing.assert_close(nets["image+residual"].stack(x), torch.cat([x, x - reconstruction], 1))


def test_wrong_channel_count_and_missing_sadm_block_give_clear_errors(sadm_plans):
    with pytest.raises(ValueError, match=r"2 image channel\(s\).*trained on 1"):
        build(sadm_plans, channels=2)
    net = build(sadm_plans).eval()
    with pytest.raises(ValueError, match=r"trained on 1 image channel\(s\); the input has 3"):
        net(torch.randn(1, 3, *sadm_plans["configurations"]["2d"]["patch_size"]))
    with pytest.raises(ValueError, match="not an SADM configuration.*sadm_nnunet_plan"):
        build(sadm_plans, configuration="2d")
    with pytest.raises(ValueError, match="have no configuration '3d_sadm'"):
        resolve_sadm_settings(sadm_plans, "3d_sadm")


def test_settings_reject_unknown_keys_and_bad_values(sadm_plans):
    block = sadm_plans["configurations"]["2d_sadm"]["sadm"]
    with pytest.raises(KeyError, match="Unknown setting 'sadm.input_mdoe'"):
        SADMSettings.from_dict({**block, "input_mdoe": "x"})
    with pytest.raises(ValueError, match="'sadm.input_mode' is 'image'"):
        SADMSettings.from_dict({**block, "input_mode": "image"})
    with pytest.raises(KeyError, match="Unknown setting 'sadm.reconstruction.levels'"):
        SADMSettings.from_dict({**block, "reconstruction": {"levels": [1]}})
    s = SADMSettings.from_dict({**block, "reconstruction": {"noise_levels": [100, 200]}})
    assert s.diffusion.reconstruction.noise_levels == (100, 200)


def test_mirrored_copies_reuse_the_reconstruction_without_running_the_denoiser(sadm_plans):
    torch.manual_seed(0)
    net = build(sadm_plans).eval()
    calls = []
    net.denoiser.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(1, 1, *sadm_plans["configurations"]["2d"]["patch_size"])
    reconstruction = net.reconstruct(x)
    first = len(calls)
    assert first == 1  # every noise level of the tile in one batched denoiser call
    for axes in ((2,), (3,), (2, 3)):
        torch.testing.assert_close(net.reconstruct(torch.flip(x, axes)), torch.flip(reconstruction, axes))
    assert len(calls) == first  # no further denoiser passes
    other = torch.randn_like(x)
    fresh = net.reconstruct(other)
    assert len(calls) == 2 * first
    net.train().eval()  # switching modes forgets the cache
    torch.testing.assert_close(net.reconstruct(other), fresh)
    assert len(calls) == 3 * first


def test_per_level_ensemble_averages_the_logits_of_each_levels_segmentation(sadm_plans):
    """prediction_ensemble 'per_level' (the authors' test step): in eval mode the SADM network segments the image
    with each noise level's reconstruction and averages the logits; in training mode nothing changes."""
    plans = copy.deepcopy(sadm_plans)
    plans["configurations"]["2d_sadm"]["sadm"]["prediction_ensemble"] = "per_level"
    torch.manual_seed(0)
    net = build(plans, deep_supervision=True).eval()
    mean_net = build(sadm_plans, deep_supervision=True).eval()
    mean_net.load_state_dict(net.state_dict())
    x = torch.randn(2, 1, *sadm_plans["configurations"]["2d"]["patch_size"])
    with torch.no_grad():
        out = net(x)
        levels = net.reconstructor.per_level(x)  # checked against a hand computation in test_reconstruction
        assert levels.shape == (3, *x.shape)
        by_level = [net.segmentation(torch.cat([x, x - r], dim=1)) for r in levels]
        assert isinstance(out, list) and len(out) == len(by_level[0])  # deep supervision: every scale averaged
        for scale, output in enumerate(out):
            torch.testing.assert_close(output, sum(o[scale] for o in by_level) / 3, atol=1e-5, rtol=1e-4)
        mean_out = mean_net(x)
        torch.testing.assert_close(mean_out[0], net.segmentation(torch.cat([x, x - levels.mean(0)], dim=1))[0],
                                   atol=1e-5, rtol=1e-4)
        assert (out[0] - mean_out[0]).abs().max() > 1e-4  # the two ensembles differ
    with pytest.raises(ValueError, match=r"prediction_ensemble' is 'median'; expected one of"):
        SADMSettings.from_dict({**plans["configurations"]["2d_sadm"]["sadm"], "prediction_ensemble": "median"})
