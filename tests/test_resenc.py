"""nnU-Net's residual-encoder presets (`-pl nnUNetPlannerResEncM`, plans `nnUNetResEncUNetMPlans`) through both
stages and prediction/scoring, with the unchanged nnU-Net commands:

- everything on the ResEnc plans (stage I too);
- stage I on the default plans (the session's stage-I model) with stage II on the ResEnc plans, the likely real
  case: both plans preprocess the same way (spacing, normalisation, orientation), which sadm_nnunet_plan checks.
"""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import HEALTHY_ID, LESION_ID, TINY_UNET, TRAINER as DEFAULT_PLANS_STAGE1, NNUNet

pytestmark = pytest.mark.slow
PLANS = "nnUNetResEncUNetMPlans"
STAGE1 = "SADMDiffusionTrainer_2epochs_10its"
STAGE2 = "SADMTrainer_2epochs_10its"


@pytest.fixture(scope="module")
def resenc_planned(nnunet: NNUNet, trained_stage1, lesion_dataset, healthy_dataset):
    for dataset in (HEALTHY_ID, LESION_ID):
        nnunet.run("nnUNetv2_plan_and_preprocess", "-d", dataset, "-pl", "nnUNetPlannerResEncM", "-c", "2d",
                   "-np", "1", "-npfp", "1", nnUNet_n_proc_DA="1")
    nnunet.run("sadm_nnunet_plan_diffusion", HEALTHY_ID, "-p", PLANS, "--set", *TINY_UNET)
    nnunet.run("nnUNetv2_train", HEALTHY_ID, "2d", "all", "-tr", STAGE1, "-p", PLANS, "-device", "cpu")
    return json.loads((nnunet.preprocessed / lesion_dataset / f"{PLANS}.json").read_text())


@pytest.mark.parametrize("stage1_plans", [PLANS, "nnUNetPlans"])
def test_resenc_plans_through_both_stages(nnunet: NNUNet, resenc_planned, lesion_dataset, stage1_plans, tmp_path):
    assert resenc_planned["configurations"]["2d"]["architecture"]["network_class_name"].endswith(
        "ResidualEncoderUNet")
    name = f"2d_sadm_{'resenc' if stage1_plans == PLANS else 'default'}_stage1"
    stage1_trainer = STAGE1 if stage1_plans == PLANS else DEFAULT_PLANS_STAGE1  # the session fixture's
    nnunet.run("sadm_nnunet_plan", LESION_ID, "--ddpm", HEALTHY_ID, "-p", PLANS, "--ddpm-plans", stage1_plans,
               "--ddpm-trainer", stage1_trainer, "--name", name)
    plans = json.loads((nnunet.preprocessed / lesion_dataset / f"{PLANS}.json").read_text())
    assert plans["configurations"][name]["sadm"]["stage1"]["plans"] == stage1_plans

    nnunet.run("nnUNetv2_train", LESION_ID, name, "0", "-tr", STAGE2, "-p", PLANS, "-device", "cpu")
    fold = nnunet.results / lesion_dataset / f"{STAGE2}__{PLANS}__{name}" / "fold_0"
    weights = torch.load(fold / "checkpoint_final.pth", weights_only=False, map_location="cpu")["network_weights"]
    assert any(k.startswith("denoiser.") for k in weights)
    assert any(k.startswith("segmentation.encoder.stages.0.blocks") for k in weights)  # residual blocks

    images = nnunet.raw / lesion_dataset / "imagesTs"
    predictions, scores = tmp_path / "predictions", tmp_path / "scores"
    nnunet.run("nnUNetv2_predict", "-i", images, "-o", predictions, "-d", LESION_ID, "-c", name, "-p", PLANS,
               "-tr", STAGE2, "-f", "0", "--save_probabilities", "-device", "cpu", "-npp", "1", "-nps", "1")
    nnunet.run("sadm_nnunet_score", "-i", images, "-pred", predictions, "-o", scores, "-d", LESION_ID, "-c", name,
               "-p", PLANS, "-tr", STAGE2, "-f", "0", "--device", "cpu")
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))
    assert len(cases) == 3
    for case in cases:
        image = nib.load(images / f"{case}_0000.nii.gz")
        score = np.asarray(nib.load(scores / f"{case}_score.nii.gz").dataobj)
        assert score.shape == image.shape and np.isfinite(score).all() and score.max() > 0
