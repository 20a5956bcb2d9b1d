import json

import pytest

from sadm_nnunet.diffusion.settings import DiffusionSettings, load_template, unet_config


def test_template_holds_the_paper_defaults():
    s = DiffusionSettings.from_dict({})
    assert s.num_train_timesteps == 1000
    assert s.beta_schedule == "squaredcos_cap_v2"
    assert (s.noise.kind, s.noise.octaves, s.noise.persistence, s.noise.frequency) == ("simplex", 6, 0.8, 64.0)
    assert s.reconstruction.noise_levels == (250, 500, 750)
    assert s.reconstruction.method == "single_step"
    assert s.training.learning_rate == 1e-4
    assert s.to_dict() == json.loads(json.dumps(s.to_dict()))  # JSON-serialisable


def test_unknown_or_mistyped_settings_are_errors():
    with pytest.raises(KeyError, match="sadm_diffusion.unet.widths"):
        DiffusionSettings.from_dict({"unet": {"widths": [1, 2]}})
    with pytest.raises(TypeError, match="sadm_diffusion.unet.base_channels.*integer"):
        DiffusionSettings.from_dict({"unet": {"base_channels": 8.5}})
    with pytest.raises(ValueError, match="noise.kind.*'perlin'"):
        DiffusionSettings.from_dict({"noise": {"kind": "perlin"}})
    with pytest.raises(ValueError, match=r"noise_levels.*\[0, 1000\)"):
        DiffusionSettings.from_dict({"reconstruction": {"noise_levels": [1000]}})
    with pytest.raises(ValueError, match=r"sadm_diffusion.background' is 'black'; expected one of \('brain_mean', 'floor'\)"):
        DiffusionSettings.from_dict({"background": "black"})


def test_unet_rule_for_default_and_tiny_patches():
    s = DiffusionSettings.from_dict({})
    cfg = unet_config(s, (96, 96), 1)
    assert cfg["block_out_channels"] == (16, 32, 64, 64)  # 96 -> 48 -> 24 -> 12 (>= min_resolution 8)
    assert cfg["layers_per_block"] == 1 and cfg["norm_num_groups"] == 8
    assert cfg["down_block_types"][-1] == "AttnDownBlock2D" and cfg["down_block_types"][0] == "DownBlock2D"
    assert cfg["sample_size"] == (96, 96) and cfg["in_channels"] == cfg["out_channels"] == 1
    assert len(unet_config(s, (256, 224), 2)["block_out_channels"]) == 5  # capped by max_levels
    assert unet_config(s, (32, 24), 1)["block_out_channels"] == (16, 32)  # at least 2 levels
    paper = DiffusionSettings.from_dict({"unet": {"base_channels": 64, "max_channels": 256, "layers_per_block": 2,
                                                  "norm_num_groups": 32}})
    assert unet_config(paper, (96, 96), 1)["block_out_channels"] == (64, 128, 256, 256)
    with pytest.raises(ValueError, match="2D slices.*3D patch size"):
        unet_config(s, (32, 32, 32), 1)
    with pytest.raises(ValueError, match=r"not divisible by 8"):
        unet_config(s, (96, 90), 1)


def test_template_file_comments_are_not_settings():
    assert not any(k.startswith("_") for k in load_template())


def test_floor_background_maps_numpy_and_torch_alike_with_a_reference():
    import numpy as np
    import torch

    floor = DiffusionSettings.from_dict({"background": "floor"})
    image = np.array([0.0, 1.5, -3.0, 0.0], dtype=np.float32)
    recon = np.array([0.2, 1.2, -2.4, 0.0], dtype=np.float32)  # not 0 where the image's background is
    np.testing.assert_allclose(floor.to_model_space(image), [-1.0, 0.5, -1.0, -1.0])
    np.testing.assert_allclose(floor.to_model_space(recon, image), [-1.0, 0.4, -0.8, -1.0], rtol=1e-6)
    assert floor.to_model_space(recon, image).dtype == np.float32
    torch.testing.assert_close(floor.to_model_space(torch.from_numpy(recon), torch.from_numpy(image)),
                               torch.tensor([-1.0, 0.4, -0.8, -1.0]))
    np.testing.assert_allclose(floor.from_model_space(np.array([0.3, 0.4], np.float32), np.array([0.0, 2.0])),
                               [0.0, 1.2], rtol=1e-6)
    brain_mean = DiffusionSettings.from_dict({})
    np.testing.assert_allclose(brain_mean.to_model_space(recon, image), recon / 3)


def test_stage1_record_reads_an_epoch_export_and_plans_written_without_one():
    from tiny_plans import tiny_plans

    from sadm_nnunet.segmentation.settings import SADMSettings

    block = tiny_plans()["configurations"]["2d_sadm"]["sadm"]
    assert block["stage1"]["epoch"] is None
    old = {**block, "stage1": {k: v for k, v in block["stage1"].items() if k != "epoch"}}  # before exports existed
    assert SADMSettings.from_dict(old).stage1.epoch is None
    assert SADMSettings.from_dict({**block, "stage1": {**block["stage1"], "epoch": 16}}).stage1.epoch == 16
    for bad in (0, "16", True, 2.5):
        with pytest.raises(TypeError, match=r"sadm.stage1.epoch' must be an integer >= 1 or null, found"):
            SADMSettings.from_dict({**block, "stage1": {**block["stage1"], "epoch": bad}})
