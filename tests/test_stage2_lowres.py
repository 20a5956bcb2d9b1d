"""SADM on nnU-Net's 3d_lowres through the unchanged nnU-Net commands. 3d_lowres has an in-plane spacing of its
own, so the '2d' stage-I denoiser does not fit it: `sadm_nnunet_plan -c 3d_lowres` refuses and prints the fix,
`sadm_nnunet_plan_diffusion --slices-of 3d_lowres` writes a 2D configuration with its slices, a stage I trained on
that is picked by default, and the 3d_lowres SADM model trains (with nnU-Net's final validation), predicts and
scores. The cascade (3d_cascade_fullres) is refused. nnU-Net plans 3d_lowres only when the 3d_fullres patch covers
under a quarter of the median image, so these datasets are planned with a small GPU memory target."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import HEALTHY_T1, TINY_UNET, NNUNet, printed_commands

pytestmark = pytest.mark.slow
HEALTHY, TARGET = 521, 522
STAGE1 = "SADMDiffusionTrainer_2epochs_10its"
STAGE2 = "SADMTrainer_2epochs_10its"
MEMORY_TARGET = "0.02"  # GB; 4 mm brains (~38x45x37): 3d_fullres patch 20x20x16, 3d_lowres at ~5.5 mm


def plans(nnunet: NNUNet, dataset: str) -> dict:
    return json.loads((nnunet.preprocessed / dataset / "nnUNetPlans.json").read_text())


@pytest.fixture(scope="module")
def lowres(tmp_path_factory) -> dict:
    from sadm_nnunet.datasets.healthy_cohort import build_healthy_dataset
    from sadm_nnunet.datasets.lesions import build_lesion_dataset

    nnunet = NNUNet(tmp_path_factory.mktemp("nnunet_lowres"))
    healthy, target = f"Dataset{HEALTHY}_LowresHealthy", f"Dataset{TARGET}_LowresTumours"
    build_healthy_dataset(HEALTHY_T1, nnunet.raw / healthy, num_cases=6, seed=0, zoom=1 / 2, spacing=4.0)
    for n, first, split in ((6, 0, "train"), (2, 6, "test")):
        build_lesion_dataset(HEALTHY_T1, nnunet.raw / target, num_cases=n, seed=3, kind="tumour", zoom=1 / 2,
                             spacing=4.0, first_index=first, split=split)
    for dataset in (HEALTHY, TARGET):
        nnunet.run("nnUNetv2_plan_and_preprocess", "-d", dataset, "-c", "2d", "-np", "1", "-npfp", "1",
                   "-gpu_memory_target", MEMORY_TARGET, nnUNet_n_proc_DA="1")
    # the target takes the healthy dataset's plans, as sadm_nnunet_plan's fix for differently planned datasets says
    nnunet.run("nnUNetv2_move_plans_between_datasets", "-s", HEALTHY, "-t", TARGET, "-sp", "nnUNetPlans", "-tp",
               "nnUNetPlans")
    nnunet.run("nnUNetv2_preprocess", "-d", TARGET, "-c", "3d_lowres", "-np", "1")
    # a stage I on '2d' first: it does not fit 3d_lowres
    nnunet.run("sadm_nnunet_plan_diffusion", HEALTHY, "--set", *TINY_UNET)
    nnunet.run("nnUNetv2_train", HEALTHY, "2d", "all", "-tr", STAGE1, "-device", "cpu")
    refused = nnunet.run("sadm_nnunet_plan", TARGET, "--ddpm", HEALTHY, "-c", "3d_lowres", "--ddpm-trainer", STAGE1,
                         check=False)
    after_refusal = plans(nnunet, target)
    # the fix it prints, run as printed (the tiny denoiser's settings added to the first command)
    fix = printed_commands(refused.stderr)
    assert [c[0] for c in fix] == ["sadm_nnunet_plan_diffusion", "nnUNetv2_preprocess", "nnUNetv2_train",
                                   "sadm_nnunet_plan"], refused.stderr
    slices = nnunet.run(*fix[0], "--set", *TINY_UNET)
    nnunet.run(*fix[1], "-np", "1")
    nnunet.run(*fix[2], "-device", "cpu")
    nnunet.run(*fix[3])
    # and without --ddpm-configuration: the slices' stage I is the default for 3d_lowres
    planned = nnunet.run("sadm_nnunet_plan", TARGET, "--ddpm", HEALTHY, "-c", "3d_lowres")
    nnunet.run("nnUNetv2_train", TARGET, "3d_lowres_sadm", "0", "-tr", STAGE2, "-device", "cpu")
    return {"nnunet": nnunet, "healthy": healthy, "target": target, "refused": refused,
            "after_refusal": after_refusal, "slices": slices,
            "planned": planned}


def test_3d_lowres_with_the_2d_stage1_is_refused_with_the_fix(lowres):
    proc = lowres["refused"]
    assert proc.returncode != 0
    lowres_spacing = plans(lowres["nnunet"], lowres["healthy"])["configurations"]["3d_lowres"]["spacing"]
    assert lowres_spacing[-1] > 4.0 * 1.2, "nnU-Net planned 3d_lowres at about the 2d spacing; the test needs another"
    assert "trained on '2d' slices at in-plane spacing [4.0, 4.0]" in proc.stderr, proc.stderr
    assert f"sadm_nnunet_plan_diffusion {HEALTHY} --slices-of 3d_lowres" in proc.stderr
    assert f"nnUNetv2_train {HEALTHY} 2d_lowres all -tr {STAGE1}" in proc.stderr  # the user's stage-I trainer
    assert (f"sadm_nnunet_plan {TARGET} --ddpm {HEALTHY} -c 3d_lowres --ddpm-trainer {STAGE1} "
            f"--ddpm-configuration 2d_lowres") in proc.stderr
    assert "3d_lowres_sadm" not in lowres["after_refusal"]["configurations"]


def test_slices_of_writes_a_2d_configuration_with_the_3d_slices(lowres):
    configurations = plans(lowres["nnunet"], lowres["healthy"])["configurations"]
    derived, source = configurations["2d_lowres"], configurations["3d_lowres"]
    assert derived["inherits_from"] == "2d" and derived["sadm_slices_of"] == "3d_lowres"
    assert derived["spacing"] == source["spacing"][1:]
    assert derived["patch_size"] == source["patch_size"][1:]
    assert derived["data_identifier"] == "nnUNetPlans_2d_lowres"  # its own preprocessed folder: '2d' stays intact
    assert (lowres["nnunet"].preprocessed / lowres["healthy"] / "nnUNetPlans_2d").is_dir()
    assert f"nnUNetv2_preprocess -d {HEALTHY} -c 2d_lowres" in lowres["slices"].stdout
    assert f"Denoiser: patch {source['patch_size'][1:]}" in lowres["slices"].stdout


def test_slices_of_refuses_2d_and_overwriting_a_configuration_of_nnunet(lowres):
    nnunet, before = lowres["nnunet"], plans(lowres["nnunet"], lowres["healthy"])
    proc = nnunet.run("sadm_nnunet_plan_diffusion", HEALTHY, "--slices-of", "2d", check=False)
    assert proc.returncode != 0 and "is 2D" in proc.stderr and "--slices-of needs a 3D configuration" in proc.stderr
    proc = nnunet.run("sadm_nnunet_plan_diffusion", HEALTHY, "--slices-of", "3d_lowres", "-c", "3d_fullres",
                      check=False)
    assert proc.returncode != 0 and "already have a configuration '3d_fullres'" in proc.stderr, proc.stderr
    proc = nnunet.run("sadm_nnunet_plan_diffusion", HEALTHY, "--slices-of", "3d_fullres", "-c", "2d_lowres",
                      check=False)
    assert proc.returncode != 0 and "holds the slices of '3d_lowres', not of '3d_fullres'" in proc.stderr
    assert plans(nnunet, lowres["healthy"]) == before
    # running it again without --set keeps the stage-I settings written with the first run
    nnunet.run("sadm_nnunet_plan_diffusion", HEALTHY, "--slices-of", "3d_lowres")
    assert plans(nnunet, lowres["healthy"]) == before


def test_plan_picks_the_slices_stage1_and_drops_the_cascade_stage(lowres):
    config = plans(lowres["nnunet"], lowres["target"])["configurations"]["3d_lowres_sadm"]
    assert config["inherits_from"] == "3d_lowres"
    assert config["sadm"]["stage1"]["configuration"] == "2d_lowres"
    assert config["next_stage"] is None  # no prediction of 3d_cascade_fullres's input in the final validation
    assert "diffusion_model" in lowres["planned"].stdout


def test_cascade_is_refused(lowres):
    proc = lowres["nnunet"].run("sadm_nnunet_plan", TARGET, "--ddpm", HEALTHY, "-c", "3d_cascade_fullres",
                                check=False)
    assert proc.returncode != 0
    assert "is cascaded (it takes the predictions of '3d_lowres' as input)" in proc.stderr, proc.stderr


def test_3d_fullres_with_the_slices_stage1_points_to_the_2d_one(lowres):
    proc = lowres["nnunet"].run("sadm_nnunet_plan", TARGET, "--ddpm", HEALTHY, "-c", "3d_fullres",
                                "--ddpm-configuration", "2d_lowres", check=False)
    assert proc.returncode != 0
    assert "the in-plane spacing of" in proc.stderr and "2D configuration '2d'" in proc.stderr, proc.stderr
    assert f"sadm_nnunet_plan {TARGET} --ddpm {HEALTHY} -c 3d_fullres\n" in proc.stderr  # '2d': the default


def test_3d_lowres_sadm_trains_predicts_and_scores(lowres, tmp_path):
    nnunet, target = lowres["nnunet"], lowres["target"]
    fold = nnunet.fold_folder(target, STAGE2, "3d_lowres_sadm", "0")
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()
    assert not (fold.parent / "predicted_next_stage").exists()
    images, predictions, maps = nnunet.raw / target / "imagesTs", tmp_path / "pred", tmp_path / "maps"
    nnunet.run("nnUNetv2_predict", "-i", images, "-o", predictions, "-d", TARGET, "-c", "3d_lowres_sadm", "-tr",
               STAGE2, "-f", "0", "--save_probabilities", "-device", "cpu", "-npp", "1", "-nps", "1")
    nnunet.run("sadm_nnunet_score", "-i", images, "-pred", predictions, "-o", maps, "-d", TARGET, "-c",
               "3d_lowres_sadm", "-tr", STAGE2, "-f", "0")
    for image in sorted(images.glob("*_0000.nii.gz")):
        case = image.name[: -len("_0000.nii.gz")]
        shape = nib.load(image).shape
        assert nib.load(predictions / f"{case}.nii.gz").shape == shape  # back at the image's own resolution
        probabilities = np.load(predictions / f"{case}.npz")["probabilities"]
        assert np.isfinite(probabilities).all() and np.allclose(probabilities.sum(0), 1, atol=1e-3)
        score = nib.load(maps / f"{case}_score.nii.gz").get_fdata()
        assert score.shape == shape and np.isfinite(score).all() and 0 <= score.min() and score.max() <= 1
    # the SADM network reconstructs the 3d_lowres patches' slices with the denoiser trained on their size
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["init_args"]["configuration"] == "3d_lowres_sadm"
    patch = plans(nnunet, target)["configurations"]["3d_lowres"]["patch_size"]
    denoiser = json.loads((nnunet.results / lowres["healthy"] / f"{STAGE1}__nnUNetPlans__2d_lowres" / "fold_all"
                           / "diffusion_model" / "unet" / "config.json").read_text())
    assert list(denoiser["sample_size"]) == patch[1:]
