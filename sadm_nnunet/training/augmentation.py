"""Data augmentation for stage I (batchgeneratorsv2 transforms, as nnU-Net builds them).

The denoiser learns to reproduce its input, so augmentation must produce plausible healthy images: spatial
transforms, mirroring and global intensity changes are kept; nnU-Net's Gaussian noise, blur and low-resolution
simulation are left out (the model would learn to reproduce those artefacts).
"""
from __future__ import annotations

from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform


def healthy_image_transforms(patch_size, rotation_for_DA, mirror_axes, use_mask_for_norm) -> ComposeTransforms:
    """Training transforms for the denoiser on 2D slices."""
    transforms = [
        SpatialTransform(
            patch_size, patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0,
            p_rotation=0.2, rotation=rotation_for_DA, p_scaling=0.2, scaling=(0.85, 1.2),
            p_synchronize_scaling_across_axes=1, bg_style_seg_sampling=False, border_mode_seg="constant",
            padding_value_seg=-1,
        ),
        RandomTransform(MultiplicativeBrightnessTransform(
            multiplier_range=BGContrast((0.9, 1.1)), synchronize_channels=False, p_per_channel=1),
            apply_probability=0.15),
        RandomTransform(ContrastTransform(
            contrast_range=BGContrast((0.85, 1.15)), preserve_range=True, synchronize_channels=False,
            p_per_channel=1), apply_probability=0.15),
        RandomTransform(GammaTransform(
            gamma=BGContrast((0.8, 1.25)), p_invert_image=0, synchronize_channels=False, p_per_channel=1,
            p_retain_stats=1), apply_probability=0.3),
    ]
    if mirror_axes:
        transforms.append(MirrorTransform(allowed_axes=mirror_axes))
    if use_mask_for_norm is not None and any(use_mask_for_norm):
        transforms.append(MaskImageTransform(
            apply_to_channels=[i for i, m in enumerate(use_mask_for_norm) if m], channel_idx_in_seg=0,
            set_outside_to=0))
    transforms.append(RemoveLabelTansform(-1, 0))
    return ComposeTransforms(transforms)
