"""SADM on a 3D nnU-Net configuration through the unchanged nnU-Net commands: nnUNetv2_preprocess -c 3d_fullres,
sadm_nnunet_plan -c 3d_fullres, nnUNetv2_train 3d_fullres_sadm (with nnU-Net's final validation), nnUNetv2_predict,
sadm_nnunet_score, nnUNetv2_find_best_configuration across 2d_sadm and 3d_fullres_sadm, and the zip export. The
2D stage-I denoiser reconstructs every slice of a 3D patch along the axis the '2d' configuration slices."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import HEALTHY_ID, LESION_ID, NNUNet

pytestmark = pytest.mark.slow
TRAINER = "SADMTrainer_2epochs_10its"


@pytest.fixture(scope="module")
def planned_3d(nnunet: NNUNet, sadm_planned, lesion_dataset: str) -> dict:
    # nnUNetv2_plan_and_preprocess planned every configuration; the session's datasets preprocessed '2d' only
    nnunet.run("nnUNetv2_preprocess", "-d", LESION_ID, "-c", "3d_fullres", "-np", "1")
    proc = nnunet.run("sadm_nnunet_plan", LESION_ID, "--ddpm", HEALTHY_ID, "-c", "3d_fullres")
    plans = json.loads((nnunet.preprocessed / lesion_dataset / "nnUNetPlans.json").read_text())
    return {"plans": plans, "stdout": proc.stdout}


@pytest.fixture(scope="module")
def trained_3d(nnunet: NNUNet, planned_3d, lesion_dataset: str):
    for configuration in ("3d_fullres_sadm", "2d_sadm"):  # 2d too, for find_best_configuration
        nnunet.run("nnUNetv2_train", LESION_ID, configuration, "0", "-tr", TRAINER, "-device", "cpu")
    return nnunet.fold_folder(lesion_dataset, TRAINER, "3d_fullres_sadm", "0")


def test_plan_writes_a_3d_sadm_configuration(planned_3d):
    config = planned_3d["plans"]["configurations"]["3d_fullres_sadm"]
    assert config["inherits_from"] == "3d_fullres"
    assert config["sadm"]["stage1"]["configuration"] == "2d"
    assert len(planned_3d["plans"]["configurations"]["3d_fullres"]["patch_size"]) == 3
    assert "nnUNetv2_train Dataset503_Tumours 3d_fullres_sadm FOLD -tr SADMTrainer" in planned_3d["stdout"]


def test_3d_network_reconstructs_every_slice_like_the_2d_denoiser(planned_3d):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sadm_nnunet.diffusion.reconstruction import Reconstructor
    from sadm_nnunet.training.sadm_trainer import SADMTrainer

    manager = PlansManager(planned_3d["plans"]).get_configuration("3d_fullres_sadm")
    network = SADMTrainer.build_network_architecture(None, manager, 1, 2, False).eval()
    torch.manual_seed(0)
    patch = torch.randn(1, 1, *manager.patch_size)
    volume_recon = network.reconstruct(patch)
    # by hand: the slices along the first spatial axis, as (N, C, H, W), through the same denoiser
    slices = patch[0].permute(1, 0, 2, 3)
    by_slice = Reconstructor(network.denoiser, network.reconstructor.settings)(slices)
    torch.testing.assert_close(volume_recon[0], by_slice.permute(1, 0, 2, 3), atol=1e-5, rtol=1e-4)
    logits = network(patch)
    assert logits.shape == (1, 2, *manager.patch_size)


def test_3d_sadm_trains_predicts_scores_and_exports(nnunet: NNUNet, trained_3d, lesion_dataset, tmp_path):
    checkpoint = torch.load(trained_3d / "checkpoint_final.pth", weights_only=False, map_location="cpu")
    assert any(k.startswith("denoiser.") for k in checkpoint["network_weights"])
    assert checkpoint["init_args"]["configuration"] == "3d_fullres_sadm"
    summary = json.loads((trained_3d / "validation" / "summary.json").read_text())  # nnU-Net's final validation
    assert np.isfinite(summary["foreground_mean"]["Dice"])

    images = nnunet.raw / lesion_dataset / "imagesTs"
    predictions = tmp_path / "predictions"
    nnunet.run("nnUNetv2_predict", "-i", images, "-o", predictions, "-d", LESION_ID, "-c", "3d_fullres_sadm",
               "-tr", TRAINER, "-f", "0", "--save_probabilities", "-device", "cpu", "-npp", "1", "-nps", "1")
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))
    assert len(cases) == 3
    scores = tmp_path / "scores"
    nnunet.run("sadm_nnunet_score", "-i", images, "-pred", predictions, "-o", scores, "-d", LESION_ID,
               "-c", "3d_fullres_sadm", "-tr", TRAINER, "-f", "0", "--device", "cpu")
    for case in cases:
        image = nib.load(images / f"{case}_0000.nii.gz")
        assert nib.load(predictions / f"{case}.nii.gz").shape == image.shape
        score = np.asarray(nib.load(scores / f"{case}_score.nii.gz").dataobj)
        assert score.shape == image.shape and np.isfinite(score).all()
        brain = ndimage.binary_fill_holes(np.asarray(image.dataobj) != 0)  # nnU-Net's nonzero mask
        assert score[~brain].max() == 0 and score[brain].max() > 0

    proc = nnunet.run("nnUNetv2_find_best_configuration", LESION_ID, "-c", "2d_sadm", "3d_fullres_sadm", "-tr",
                      TRAINER, "-f", "0", "--disable_ensembling", "-np", "1")
    info = json.loads((nnunet.results / lesion_dataset / "inference_information.json").read_text())
    assert set(info["all_results"]) == {f"{TRAINER}__nnUNetPlans__2d_sadm",
                                        f"{TRAINER}__nnUNetPlans__3d_fullres_sadm"}, proc.stdout

    # the exported 3D model predicts the same in a fresh nnU-Net tree
    archive = tmp_path / "sadm_3d.zip"
    nnunet.run("nnUNetv2_export_model_to_zip", "-d", LESION_ID, "-o", archive, "-c", "3d_fullres_sadm", "-tr",
               TRAINER, "-f", "0")
    fresh = NNUNet(tmp_path / "fresh")
    fresh.run("nnUNetv2_install_pretrained_model_from_zip", archive)
    again = tmp_path / "from_zip"
    fresh.run("nnUNetv2_predict", "-i", images, "-o", again, "-d", LESION_ID, "-c", "3d_fullres_sadm", "-tr",
              TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1")
    for case in cases:
        assert np.array_equal(np.asarray(nib.load(predictions / f"{case}.nii.gz").dataobj),
                              np.asarray(nib.load(again / f"{case}.nii.gz").dataobj)), case


def test_3d_configuration_with_another_in_plane_spacing_is_refused(nnunet: NNUNet, planned_3d, lesion_dataset):
    plans_path = nnunet.preprocessed / lesion_dataset / "nnUNetPlans.json"
    plans = json.loads(plans_path.read_text())
    plans["plans_name"] = "Coarse3dPlans"
    plans["configurations"]["3d_fullres"]["spacing"] = [6.0, 12.0, 12.0]
    (plans_path.parent / "Coarse3dPlans.json").write_text(json.dumps(plans))
    proc = nnunet.run("sadm_nnunet_plan", LESION_ID, "--ddpm", HEALTHY_ID, "-p", "Coarse3dPlans", "-c",
                      "3d_fullres", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "in-plane target spacing: stage I [6.0, 6.0], the target [6.0, 12.0, 12.0]" in proc.stderr
    assert "-c 3d_fullres" in proc.stderr  # the printed fix preprocesses and plans the 3D configuration


def test_stage1_refuses_a_3d_configuration(nnunet: NNUNet, healthy_dataset):
    proc = nnunet.run("sadm_nnunet_plan_diffusion", HEALTHY_ID, "-c", "3d_fullres", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "is 3D (patch" in proc.stderr and "needs a 2D configuration" in proc.stderr
