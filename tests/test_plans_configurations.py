"""The configurations SADM adds to or refuses in nnU-Net's plans, on hand-written plans (no dataset): the 2D
configuration with a 3D configuration's slices (`--slices-of`) and the refusal of nnU-Net's cascade."""
from __future__ import annotations

import copy

import pytest

from sadm_nnunet.diffusion.settings import PLANS_KEY as DIFFUSION_KEY
from sadm_nnunet.errors import InputError
from sadm_nnunet.nnunet_plans import (configuration_manager, resolve_sadm_settings, slices_configuration,
                                      slices_configuration_name)

from tiny_plans import tiny_plans


@pytest.fixture
def plans() -> dict:
    """The tiny plans with 3d_fullres (2 mm), 3d_lowres (3 mm, next stage: the cascade) and 3d_cascade_fullres, as
    nnU-Net's planner writes them (the 3D architecture is not read by these helpers)."""
    plans = tiny_plans()
    two_d = plans["configurations"]["2d"]
    plans["configurations"].update({
        "3d_fullres": {**copy.deepcopy(two_d), "data_identifier": "nnUNetPlans_3d_fullres", "batch_size": 2,
                       "patch_size": [16, 32, 32], "median_image_size_in_voxels": [24, 40, 36],
                       "spacing": [2.0, 2.0, 2.0]},
        "3d_lowres": {"inherits_from": "3d_fullres", "data_identifier": "nnUNetPlans_3d_lowres",
                      "patch_size": [16, 24, 16], "median_image_size_in_voxels": [16, 27, 24],
                      "spacing": [3.0, 3.0, 3.0], "next_stage": "3d_cascade_fullres"},
        "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
    })
    return plans


def test_the_slices_of_3d_lowres_are_its_in_plane_spacing_patch_and_size(plans):
    assert slices_configuration_name("3d_lowres") == "2d_lowres"
    derived = slices_configuration(plans, "3d_lowres", "2d_lowres", "PLANS")
    assert derived == {"inherits_from": "2d", "sadm_slices_of": "3d_lowres", "data_identifier": "nnUNetPlans_2d_lowres",
                       "spacing": [3.0, 3.0], "patch_size": [24, 16], "median_image_size_in_voxels": [27.0, 24.0]}
    plans["configurations"]["2d_lowres"] = derived
    resolved = configuration_manager(plans, "2d_lowres")  # a 2D configuration nnU-Net resolves, '2d' preprocessing
    assert list(resolved.patch_size) == [24, 16] and resolved.normalization_schemes == ["ZScoreNormalization"]
    assert resolved.batch_size == plans["configurations"]["2d"]["batch_size"]


def test_slices_again_keep_the_stage1_settings_and_refuse_another_source(plans):
    plans["configurations"]["2d_lowres"] = {**slices_configuration(plans, "3d_lowres", "2d_lowres", "PLANS"),
                                            DIFFUSION_KEY: {"unet": {"base_channels": 8}}}
    again = slices_configuration(plans, "3d_lowres", "2d_lowres", "PLANS")
    assert again[DIFFUSION_KEY] == {"unet": {"base_channels": 8}}
    with pytest.raises(InputError, match="'2d_lowres' of PLANS holds the slices of '3d_lowres', not of '3d_fullres'"):
        slices_configuration(plans, "3d_fullres", "2d_lowres", "PLANS")


@pytest.mark.parametrize("source, name, message", [
    ("2d", "2d_x", r"Configuration '2d' of PLANS is 2D .*--slices-of needs a 3D configuration"),
    ("3d_lowres", "2d", "already have a configuration '2d' that --slices-of did not write"),
    ("3d_lowres", "3d_fullres", "already have a configuration '3d_fullres' that --slices-of did not write"),
    ("3d_cascade_fullres", "2d_cascade", r"is cascaded \(it takes the predictions of '3d_lowres' as input\)"),
    ("3d_midres", "2d_midres", "have no configuration '3d_midres'"),
])
def test_slices_of_refuses_what_it_cannot_derive(plans, source, name, message):
    with pytest.raises(InputError, match=message):
        slices_configuration(plans, source, name, "PLANS")


def test_a_cascaded_sadm_configuration_is_refused_where_trainer_and_scoring_read_it(plans):
    block = plans["configurations"]["2d_sadm"]["sadm"]
    plans["configurations"]["3d_cascade_fullres_sadm"] = {"inherits_from": "3d_cascade_fullres", "sadm": block}
    plans["configurations"]["3d_lowres_sadm"] = {"inherits_from": "3d_lowres", "sadm": block, "next_stage": None}
    with pytest.raises(InputError, match="SADM does not support nnU-Net's cascade"):
        resolve_sadm_settings(plans, "3d_cascade_fullres_sadm")
    resolve_sadm_settings(plans, "3d_lowres_sadm")  # the first stage of a cascade alone is fine
    assert configuration_manager(plans, "3d_lowres_sadm", dimensions=(3,)).next_stage_names is None
