"""Region-based nnU-Net datasets (dataset.json labels as overlapping regions with `regions_class_order`, as nnU-Net's
own BraTS conversion writes them) through SADM: nnU-Net then trains sigmoid outputs per region with its region
loss, and the anomaly maps take the largest region probability as p_fg. Supervised and self-supervised (DRAEM)
SADM train, with nnU-Net's final validation per region, and the model predicts and scores."""
from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from conftest import HEALTHY_ID, NNUNet

pytestmark = pytest.mark.slow
REGIONS_ID = 505  # 504: test_stage2_nnunet.py's two-channel dataset, in the same nnU-Net folders
STAGE2 = "SADMTrainer_2epochs_10its"
DRAEM = "SADMTrainer_DRAEM_2epochs_10its"


@pytest.fixture(scope="module")
def regions_dataset(nnunet: NNUNet, trained_stage1, lesion_dataset: str) -> str:
    """The tumour dataset relabelled as two nested regions: 'whole' (labels 1 and 2) and 'core' (2: the lesion
    without its outer voxel layer)."""
    name = f"Dataset{REGIONS_ID}_TumourRegions"
    shutil.copytree(nnunet.raw / lesion_dataset, nnunet.raw / name)
    for path in sorted((nnunet.raw / name).glob("labels*/*.nii.gz")):
        image = nib.load(path)
        labels = np.asarray(image.dataobj).astype(np.uint8)
        labels[ndimage.binary_erosion(labels > 0)] = 2
        nib.save(nib.Nifti1Image(labels, image.affine, image.header), path)
    dataset_json = json.loads((nnunet.raw / name / "dataset.json").read_text())
    dataset_json.update(labels={"background": 0, "whole": [1, 2], "core": [2]}, regions_class_order=[1, 2])
    (nnunet.raw / name / "dataset.json").write_text(json.dumps(dataset_json))
    nnunet.plan(REGIONS_ID)
    nnunet.run("sadm_nnunet_plan", REGIONS_ID, "--ddpm", HEALTHY_ID)
    for trainer in (STAGE2, DRAEM):
        nnunet.run("nnUNetv2_train", REGIONS_ID, "2d_sadm", "0", "-tr", trainer, "-device", "cpu")
    return name


@pytest.mark.parametrize("trainer", [STAGE2, DRAEM])
def test_region_based_sadm_validates_per_region(nnunet: NNUNet, regions_dataset, trainer):
    fold = nnunet.fold_folder(regions_dataset, trainer, "2d_sadm", "0")
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"(1, 2)", "(2,)"}  # nnU-Net evaluated the two regions, not the labels
    assert any(np.isfinite(v["Dice"]) for v in summary["mean"].values()), summary["mean"]


def test_region_based_sadm_predicts_and_scores(nnunet: NNUNet, regions_dataset, tmp_path):
    images, predictions, maps = nnunet.raw / regions_dataset / "imagesTs", tmp_path / "pred", tmp_path / "maps"
    nnunet.run("nnUNetv2_predict", "-i", images, "-o", predictions, "-d", REGIONS_ID, "-c", "2d_sadm", "-tr",
               STAGE2, "-f", "0", "--save_probabilities", "-device", "cpu", "-npp", "1", "-nps", "1")
    nnunet.run("sadm_nnunet_score", "-i", images, "-pred", predictions, "-o", maps, "-d", REGIONS_ID, "-c",
               "2d_sadm", "-tr", STAGE2, "-f", "0")
    beta = json.loads((maps / "score_settings.json").read_text())["beta"]
    cases = sorted(p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))
    assert cases
    for case in cases:
        probabilities = np.load(predictions / f"{case}.npz")["probabilities"]
        assert probabilities.shape[0] == 2  # one sigmoid per region, no background channel
        assert not np.allclose(probabilities.sum(0), 1)  # not a softmax over labels
        segmentation = np.asarray(nib.load(predictions / f"{case}.nii.gz").dataobj)
        assert set(np.unique(segmentation)) <= {0, 1, 2}  # regions written back as labels in regions_class_order
        score = nib.load(maps / f"{case}_score.nii.gz").get_fdata()
        unsupervised = nib.load(maps / f"{case}_unsupervised.nii.gz").get_fdata()
        assert np.isfinite(score).all() and 0 <= score.min() and score.max() <= 1
        # the fused score's p_fg is the largest region probability (the npz axes are reversed against NIfTI's)
        p_fg = probabilities.max(axis=0).transpose(2, 1, 0)
        brain = unsupervised > 0
        assert brain.sum() > 100
        np.testing.assert_allclose(score[brain], beta * unsupervised[brain] + (1 - beta) * p_fg[brain],
                                   atol=2e-3)
