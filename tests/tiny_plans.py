"""Tiny real networks without a planned dataset: nnU-Net plans written by hand for a 3-stage PlainConvUNet on 32x32
slices, with a '2d_sadm' configuration holding a 2-level UNet2DModel denoiser (random weights), as nnU-Net's planner
and sadm_nnunet_plan would write them. For tests of network code paths (torch.compile, autocast) that need no data."""
from __future__ import annotations

import json

import torch

from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from sadm_nnunet.diffusion.model import EMADenoiser
from sadm_nnunet.diffusion.settings import DiffusionSettings, unet_config
from sadm_nnunet.segmentation.network import SADMNetwork
from sadm_nnunet.segmentation.settings import Stage1Model, sadm_block
from sadm_nnunet.training.sadm_trainer import SADMTrainer

from conftest import TINY_UNET

PATCH = (32, 32)


def tiny_diffusion(gaussian: bool = False) -> DiffusionSettings:
    """The tiny denoiser's settings (conftest.TINY_UNET: 8/16 channels, 2 levels on 32x32)."""
    overrides: dict = {"noise": {"kind": "gaussian"}} if gaussian else {}
    for item in TINY_UNET:
        key, value = item.split("=")
        section, name = key.split(".")
        overrides.setdefault(section, {})[name] = json.loads(value)
    return DiffusionSettings.from_dict(overrides)


def tiny_plans(diffusion: DiffusionSettings | None = None) -> dict:
    """Plans of a made-up 1-channel dataset: '2d' (PlainConvUNet 8/16/32 features, instance norm, patch 32x32) and
    '2d_sadm' inheriting it."""
    diffusion = diffusion or tiny_diffusion()
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv2d",
                        "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]],
                        "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    two_d = {"data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 4,
             "patch_size": list(PATCH), "median_image_size_in_voxels": list(PATCH), "spacing": [2.0, 2.0],
             "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [True],
             "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
             "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
             "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
             "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
             "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                    "force_separate_z": None},
             "architecture": arch, "batch_dice": True}
    block = sadm_block({}, Stage1Model("Dataset999_Tiny", "SADMDiffusionTrainer", "nnUNetPlans", "2d", "all"),
                       diffusion, unet_config(diffusion, PATCH, 1))
    return {"dataset_name": "Dataset999_Tiny", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": [2.0, 2.0, 2.0], "original_median_shape_after_transp": [8, 32, 32],
            "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {},
            "configurations": {"2d": two_d, "2d_sadm": {"inherits_from": "2d", "sadm": block}}}


def tiny_sadm_network(plans: dict | None = None, deep_supervision: bool = False, seed: int = 0) -> SADMNetwork:
    """The SADM network exactly as nnU-Net's predictor builds it (static builder), random weights from `seed`."""
    plans = plans or tiny_plans()
    manager = PlansManager(plans)
    torch.manual_seed(seed)
    return SADMTrainer.build_network_architecture(manager, manager.get_configuration("2d_sadm"), 1, 2,
                                                  enable_deep_supervision=deep_supervision)


def tiny_denoiser(settings: DiffusionSettings | None = None, seed: int = 0) -> EMADenoiser:
    """Stage I's network (UNet2DModel + EMA copy) for 1-channel 32x32 slices."""
    torch.manual_seed(seed)
    return EMADenoiser.from_settings(settings or tiny_diffusion(), PATCH, 1)


def brain_like(n: int = 4, seed: int = 0, lesion: float = 0.0) -> torch.Tensor:
    """(n, 1, 32, 32) z-scored 'slices': a smooth disc of tissue on a zero background, plus a bright square lesion
    of `lesion` z-score units (0: none). Enough structure for a trained-looking residual to be meaningful."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, PATCH[0]), torch.linspace(-1, 1, PATCH[1]), indexing="ij")
    disc = ((xx ** 2 + yy ** 2) < 0.8).float()
    texture = torch.nn.functional.avg_pool2d(torch.randn(n, 1, *PATCH, generator=g), 5, 1, 2) * 3
    x = disc * (texture + 0.5 * torch.cos(4 * xx) * torch.sin(3 * yy))
    if lesion:
        x[..., 12:18, 14:20] += lesion
    return x
