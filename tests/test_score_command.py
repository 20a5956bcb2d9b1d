"""`sadm_nnunet_score` end to end through the console scripts, with only the nnU-Net path variables set:
nnUNetv2_predict --save_probabilities (fixture) -> sadm_nnunet_score -> sadm_nnunet_evaluate on the fused score and
the unsupervised map against labelsTs. The fused score is checked against nnU-Net's saved probabilities, read
here independently of the package."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from sadm_nnunet.errors import InputError

from conftest import HEALTHY_ID, LESION_ID, SADM_TRAINER, TRAINER as STAGE1_TRAINER, NNUNet

BETA = 0.5  # plans/sadm.json scoring.beta (the paper's SADM: equal weights)
MIN_BEST_DICE = 0.3  # the tumours cover a few % of the brain: an all-brain score reaches ~0.1
KINDS = ("reconstruction_0000", "unsupervised", "score")


def score_args(nnunet: NNUNet, lesion_dataset: str, out, *extra) -> list:
    return ["sadm_nnunet_score", "-i", nnunet.raw / lesion_dataset / "imagesTs", "-o", out, "-d", LESION_ID,
            "-tr", SADM_TRAINER, "-f", "0", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def scored(nnunet, predictions, lesion_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("scores")
    proc = nnunet.run(*score_args(nnunet, lesion_dataset, out, "-pred", predictions))
    return out, proc


def load(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float64)


def cases_of(nnunet: NNUNet, lesion_dataset: str) -> list[str]:
    images = nnunet.raw / lesion_dataset / "imagesTs"
    return sorted(p.name[: -len("_0000.nii.gz")] for p in images.glob("*_0000.nii.gz"))


def test_writes_the_maps_of_every_case_in_the_input_geometry(scored, nnunet, lesion_dataset):
    out, _ = scored
    cases = cases_of(nnunet, lesion_dataset)
    assert len(cases) == 3 and json.loads((out / "score_settings.json").read_text())["beta"] == 0.5
    for case in cases:
        image = nib.load(nnunet.raw / lesion_dataset / "imagesTs" / f"{case}_0000.nii.gz")
        for kind in KINDS:
            written = nib.load(out / f"{case}_{kind}.nii.gz")
            assert written.shape == image.shape, (case, kind)
            np.testing.assert_allclose(written.affine, image.affine, atol=1e-4)
        original = np.asarray(image.dataobj, dtype=np.float64)
        brain = original != 0
        recon = load(out / f"{case}_reconstruction_0000.nii.gz")
        # in the input's intensity units, background untouched (its resemblance to the input is the stage-I
        # model's business, tested there: the tiny test model reconstructs little more than the mean)
        assert abs(recon[brain].mean() - original[brain].mean()) < 0.25 * original[brain].std()
        assert np.all(recon[~brain] == 0) and np.isfinite(recon).all()
    settings = json.loads((out / "score_settings.json").read_text())
    assert settings["beta"] == BETA and settings["median_size"] == 5 and settings["folds"] == ["0"]
    assert not list(out.glob(".*"))  # no temporary files left behind


def test_score_fuses_the_unsupervised_map_with_nnunets_probabilities(scored, predictions, nnunet, lesion_dataset):
    out, _ = scored
    for case in cases_of(nnunet, lesion_dataset):
        original = load(nnunet.raw / lesion_dataset / "imagesTs" / f"{case}_0000.nii.gz")
        brain = ndimage.binary_fill_holes(original != 0)
        # nnU-Net stores probabilities as (classes, z, y, x) (SimpleITK's array order); nibabel reads (x, y, z)
        with np.load(predictions / f"{case}.npz") as f:
            probabilities = f["probabilities"].astype(np.float64)
        p_fg = (1.0 - probabilities[0]).transpose(2, 1, 0)
        assert p_fg.shape == original.shape
        unsupervised = load(out / f"{case}_unsupervised.nii.gz")
        score = load(out / f"{case}_score.nii.gz")
        np.testing.assert_allclose(score[brain], BETA * unsupervised[brain] + (1 - BETA) * p_fg[brain], atol=1e-5)
        assert np.all(score[~brain] == 0) and np.all(unsupervised[~brain] == 0)
        assert score.min() >= 0 and score.max() <= 1, (case, score.min(), score.max())
        assert unsupervised.min() >= 0 and unsupervised[brain].max() > 0
        # nnU-Net's own segmentation is p_fg > 0.5 for a two-class model
        segmentation = np.asarray(nib.load(predictions / f"{case}.nii.gz").dataobj)
        agree = (segmentation > 0) == (p_fg > 0.5)
        assert agree.mean() > 0.999


def test_unsupervised_baseline_needs_no_predictions(scored, nnunet, lesion_dataset, tmp_path):
    out, _ = scored
    baseline = tmp_path / "baseline"
    nnunet.run(*score_args(nnunet, lesion_dataset, baseline, "--beta", "1"))
    # the stage-I command, with the stage-I model itself: the denoiser in the SADM checkpoint is that model
    stage1 = tmp_path / "stage1"
    nnunet.run("sadm_nnunet_reconstruct", "-i", nnunet.raw / lesion_dataset / "imagesTs", "-o", stage1, "-d",
               HEALTHY_ID, "-tr", STAGE1_TRAINER, "--device", "cpu")
    cases = cases_of(nnunet, lesion_dataset)
    for case in cases:
        unsupervised = load(baseline / f"{case}_unsupervised.nii.gz")
        np.testing.assert_array_equal(load(baseline / f"{case}_score.nii.gz"), unsupervised)
        # the reconstruction is deterministic and does not depend on the probabilities
        np.testing.assert_array_equal(unsupervised, load(out / f"{case}_unsupervised.nii.gz"))
        recon = load(out / f"{case}_reconstruction_0000.nii.gz")
        np.testing.assert_allclose(recon, load(stage1 / f"{case}_reconstruction_0000.nii.gz"), rtol=1e-4,
                                   atol=1e-4 * np.abs(recon).max())
        # one definition of the unsupervised map: the stage-I command writes the same map as --beta 1
        np.testing.assert_allclose(load(stage1 / f"{case}_unsupervised.nii.gz"), unsupervised, rtol=0, atol=1e-4)
        assert unsupervised.max() > 0.05
    recorded = json.loads((stage1 / "reconstruct_settings.json").read_text())
    # the stage-I command also records which export it used and how well it reconstructs
    assert recorded["epoch"] is None and set(recorded["reconstruction_quality"]["per_case"]) == set(cases)
    own = ("model", "cases", "beta", "epoch", "reconstruction_quality")
    assert {k: v for k, v in recorded.items() if k not in own} == \
        {k: v for k, v in json.loads((baseline / "score_settings.json").read_text()).items()
         if k in recorded and k not in own}
    proc = nnunet.run(*score_args(nnunet, lesion_dataset, tmp_path / "o"), check=False)
    assert proc.returncode != 0 and "-pred PREDICTIONS is required" in proc.stderr and "beta is 0.5" in proc.stderr


def test_evaluate_on_the_score_folder_finds_the_tumours(scored, nnunet, lesion_dataset, tmp_path):
    out, _ = scored
    labels = nnunet.raw / lesion_dataset / "labelsTs"
    images = nnunet.raw / lesion_dataset / "imagesTs"
    results = {}
    for suffix in ("_score", "_unsupervised"):
        report_file = tmp_path / f"{suffix[1:]}.json"
        args = ["sadm_nnunet_evaluate", "-ref", labels, "-pred", out, "--pred-suffix", suffix, "-mask", images,
                "-o", report_file]
        if suffix == "_score":  # the figures find the reconstruction and the unsupervised map in the same folder
            args += ["--figures", tmp_path / "figures", "--images", images, "--maps", out]
        nnunet.run(*args)
        results[suffix] = json.loads(report_file.read_text())["mean"]
    for suffix, mean in results.items():
        print(f"{suffix[1:]:>12}: best Dice {mean['best_dice']:.3f}, AUPRC {mean['auprc']:.3f}, "
              f"AUROC {mean['auroc']:.3f}")
    assert results["_score"]["best_dice"] > MIN_BEST_DICE
    assert len(list((tmp_path / "figures").glob("*.png"))) == 4  # 3 cases and the contact sheet


def test_clear_errors(scored, predictions, nnunet, lesion_dataset, tmp_path):
    cases = cases_of(nnunet, lesion_dataset)
    # a case without probabilities
    partial = tmp_path / "partial"
    shutil.copytree(predictions, partial)
    (partial / f"{cases[1]}.npz").unlink()
    proc = nnunet.run(*score_args(nnunet, lesion_dataset, tmp_path / "o", "-pred", partial), check=False)
    assert proc.returncode != 0 and f"{cases[1]}.npz missing" in proc.stderr and "--save_probabilities" in proc.stderr
    # no such model
    proc = nnunet.run("sadm_nnunet_score", "-i", nnunet.raw / lesion_dataset / "imagesTs", "-pred", predictions,
                      "-o", tmp_path / "o", "-d", LESION_ID, "-tr", "SADMTrainer_5epochs", check=False)
    assert proc.returncode != 0 and "No trained SADM model" in proc.stderr
    assert "SADMTrainer_5epochs__nnUNetPlans__2d_sadm" in proc.stderr and SADM_TRAINER in proc.stderr
    # a model folder whose configuration has no 'sadm' block (e.g. a plain nnU-Net model)
    source = nnunet.results / lesion_dataset / f"{SADM_TRAINER}__nnUNetPlans__2d_sadm"
    fake = NNUNet(tmp_path / "fake")
    folder = fake.results / lesion_dataset / "nnUNetTrainer__nnUNetPlans__2d_sadm"
    folder.mkdir(parents=True)
    plans = json.loads((source / "plans.json").read_text())
    del plans["configurations"]["2d_sadm"]["sadm"]
    (folder / "plans.json").write_text(json.dumps(plans))
    shutil.copy(source / "dataset.json", folder / "dataset.json")
    proc = fake.run("sadm_nnunet_score", "-i", nnunet.raw / lesion_dataset / "imagesTs", "-pred", predictions,
                    "-o", tmp_path / "o", "-d", LESION_ID, "-tr", "nnUNetTrainer", check=False)
    assert proc.returncode != 0 and "not an SADM model" in proc.stderr and "plans.json" in proc.stderr
    # two channels for a one-channel model; a wrong file ending
    src = nnunet.raw / lesion_dataset / "imagesTs" / f"{cases[0]}_0000.nii.gz"
    two = tmp_path / "two"
    two.mkdir()
    shutil.copy(src, two / "case_0000.nii.gz")
    shutil.copy(src, two / "case_0001.nii.gz")
    proc = nnunet.run("sadm_nnunet_score", "-i", two, "-pred", predictions, "-o", tmp_path / "o", "-d", LESION_ID,
                      "-tr", SADM_TRAINER, check=False)
    assert proc.returncode != 0 and "Case 'case'" in proc.stderr and "channel(s) [0, 1]" in proc.stderr
    mha = tmp_path / "mha"
    mha.mkdir()
    (mha / "case_0000.mha").write_bytes(b"x")
    proc = nnunet.run("sadm_nnunet_score", "-i", mha, "-pred", predictions, "-o", tmp_path / "o", "-d", LESION_ID,
                      "-tr", SADM_TRAINER, check=False)
    assert proc.returncode != 0 and "file ending '.nii.gz'" in proc.stderr and "case_0000.mha" in proc.stderr
    assert not (tmp_path / "o").exists()  # nothing written when the inputs are refused


def test_truncated_inputs_checkpoints_and_stale_temporaries(scored, nnunet, lesion_dataset, tmp_path):
    """One-line errors that name the file: a truncated input image, NaN voxels (SimpleITK would read zeros), a
    truncated checkpoint; the temporaries a killed run left in the output folder are removed at the next run."""
    import os
    import subprocess

    from sadm_nnunet.io_utils import HOST_TAG

    case = cases_of(nnunet, lesion_dataset)[0]
    source = nnunet.raw / lesion_dataset / "imagesTs" / f"{case}_0000.nii.gz"
    out = tmp_path / "o"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = out / f".sadm-tmp-{dead.pid}-{HOST_TAG}-{case}_score.nii.gz.k3j4.nii.gz"
    stale.write_bytes(b"half a volume")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    data = source.read_bytes()
    (truncated / source.name).write_bytes(data[: len(data) // 2])
    args = ["sadm_nnunet_score", "-i", truncated, "-o", out, "-d", LESION_ID, "-tr", SADM_TRAINER, "-f", "0",
            "--device", "cpu", "--beta", "1"]
    proc = nnunet.run(*args, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith(
        f"sadm_nnunet_score: error: {truncated / source.name}: truncated: found ")
    assert "Traceback" not in proc.stderr and "Removed 1 temporary file(s)" in proc.stdout
    assert os.listdir(out) == []
    image = nib.load(source)
    values = np.asarray(image.dataobj, dtype=np.float32)
    values[values.shape[0] // 2, values.shape[1] // 2, values.shape[2] // 2] = np.nan
    nib.save(nib.Nifti1Image(values, image.affine, image.header), truncated / source.name)
    proc = nnunet.run(*args, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{truncated / source.name}: non-finite voxels: found 1 NaN/inf voxel(s)" in proc.stderr
    fold = nnunet.results / lesion_dataset / f"{SADM_TRAINER}__nnUNetPlans__2d_sadm" / "fold_0"
    checkpoint = fold / "checkpoint_truncated.pth"
    data = (fold / "checkpoint_final.pth").read_bytes()
    checkpoint.write_bytes(data[: len(data) // 3])
    try:
        proc = nnunet.run(*score_args(nnunet, lesion_dataset, out, "--beta", "1", "-chk", checkpoint.name),
                          check=False)
    finally:
        checkpoint.unlink()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"Could not load checkpoint {checkpoint} ({len(data) // 3} bytes)" in proc.stderr
    assert os.listdir(out) == []


def test_output_folder_in_an_input_folder_is_refused(tmp_path):
    """Outputs written into -i would be scored as new cases by the next run; refused before any model is read."""
    from sadm_nnunet.commands.score import main

    images = tmp_path / "images"
    images.mkdir()
    (images / "case_0000.nii.gz").write_bytes(b"")
    for output, option in ((images, "-i"), (images / "scores", "-i"), (tmp_path / "pred" / "o", "-pred")):
        with pytest.raises(SystemExit) as e:
            main(["-i", str(images), "-pred", str(tmp_path / "pred"), "-o", str(output), "-d", "999"])
        message = str(e.value)
        assert message.startswith(f"sadm_nnunet_score: error: -o {output} ") and f"input folder {option} " in message
    assert sorted(p.name for p in images.iterdir()) == ["case_0000.nii.gz"]


def test_check_checkpoint_names_the_file_and_its_size(tmp_path):
    import torch

    from sadm_nnunet.errors import InputError
    from sadm_nnunet.training.checkpoints import check_checkpoint

    path = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {"w": torch.arange(1000.0)}, "trainer_name": "SADMTrainer"}, path)
    assert check_checkpoint(path)["trainer_name"] == "SADMTrainer"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=rf"Could not load checkpoint {path} \({len(data) // 2} bytes\)"):
        check_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(InputError, match=r"holds list; expected an nnU-Net checkpoint with 'network_weights'"):
        check_checkpoint(path)
    with pytest.raises(InputError, match="does not exist"):
        check_checkpoint(tmp_path / "none.pth")


# ---- the plans' scoring block (no fixtures) ----
def test_scoring_settings_defaults_strictness_and_plans_written_before_the_block():
    from sadm_nnunet.segmentation.settings import ScoringSettings, merged_user_settings

    def scoring(user: dict) -> ScoringSettings:
        return ScoringSettings.from_dict(merged_user_settings(user)["scoring"])

    # a block without 'scoring' (plans written before it existed) gets the template's paper defaults
    assert scoring({}) == ScoringSettings(beta=0.5, median_size=5, ssim_dimensions=2, ssim_offset=0.0,
                                          clip_dissimilarity=True,
                                          mask_erosion=0,
                                          min_component_size=0, component_threshold=None)
    assert scoring({"scoring": {"beta": 0.7}}).beta == 0.7
    assert scoring({}) == ScoringSettings.template()
    assert scoring({}).with_beta(1.0) == ScoringSettings(beta=1.0, median_size=5, ssim_dimensions=2, ssim_offset=0.0,
                                                         clip_dissimilarity=True,
                                                         mask_erosion=0, min_component_size=0,
                                                         component_threshold=None)
    assert scoring({}).with_beta(None) == scoring({})
    with pytest.raises(ValueError, match=r"'sadm.scoring.beta' is 1.5; expected a number in \[0, 1\]"):
        scoring({}).with_beta(1.5)
    assert scoring({"scoring": {"min_component_size": 5, "component_threshold": 1}}).component_threshold == 1.0
    with pytest.raises(KeyError, match=r"Unknown setting 'sadm.scoring.alpha'"):
        scoring({"scoring": {"alpha": 0.5}})
    with pytest.raises(ValueError, match=r"'sadm.scoring.beta' is 1.5; expected a number in \[0, 1\]"):
        scoring({"scoring": {"beta": 1.5}})
    with pytest.raises(TypeError, match="'sadm.scoring.beta' must be a number, found True"):
        scoring({"scoring": {"beta": True}})
    with pytest.raises(TypeError, match="'sadm.scoring.median_size' must be an integer"):
        scoring({"scoring": {"median_size": 2.5}})
    assert scoring({"scoring": {"ssim_dimensions": 3}}).ssim_dimensions == 3
    with pytest.raises(ValueError, match=r"'sadm.scoring.ssim_dimensions' is 4; expected 2 \(per slice\) or 3"):
        scoring({"scoring": {"ssim_dimensions": 4}})
    assert scoring({"scoring": {"ssim_offset": 1}}).ssim_offset == 1.0
    with pytest.raises(ValueError, match=r"'sadm.scoring.ssim_offset' is -1.0; expected a finite number >= 0"):
        scoring({"scoring": {"ssim_offset": -1}})
    with pytest.raises(TypeError, match="'sadm.scoring.ssim_offset' must be a number, found None"):
        scoring({"scoring": {"ssim_offset": None}})
    with pytest.raises(TypeError, match="'sadm.scoring.clip_dissimilarity' must be true or false"):
        scoring({"scoring": {"clip_dissimilarity": "yes"}})
    with pytest.raises(ValueError, match="component_threshold.*since min_component_size is 3"):
        scoring({"scoring": {"min_component_size": 3}})


def test_clipped_dissimilarity_keeps_the_maps_in_the_unit_interval():
    from sadm_nnunet.anomaly_maps import anomaly_maps
    from sadm_nnunet.segmentation.settings import ScoringSettings

    rng = np.random.default_rng(0)
    image = rng.normal(0, 0.5, (6, 24, 24)).astype(np.float32)  # nonzero everywhere: all of it is "brain"
    inverted = -image  # inverted structure: SSIM < 0, 1 - SSIM > 1
    p = np.full(image.shape, 0.9, np.float32)
    unfiltered = replace(ScoringSettings.template(), beta=0.5, median_size=1)
    raw = anomaly_maps(image, inverted, p, data_range=2.0, slice_axis=0,
                       scoring=replace(unfiltered, clip_dissimilarity=False))
    clipped = anomaly_maps(image, inverted, p, data_range=2.0, slice_axis=0,
                           scoring=replace(unfiltered, clip_dissimilarity=True))
    assert raw["unsupervised"].max() > 1.2 and raw["score"].max() > 1.0
    assert 0 <= clipped["unsupervised"].min() and clipped["unsupervised"].max() <= 1.0
    np.testing.assert_allclose(clipped["unsupervised"], np.clip(raw["unsupervised"], 0, 1))
    assert clipped["score"].max() <= 1.0


def test_probability_files_that_do_not_fit_are_named(tmp_path):
    from types import SimpleNamespace

    from sadm_nnunet.nnunet_cases import load_foreground_probability

    labels = SimpleNamespace(num_segmentation_heads=2, has_regions=False)
    good = tmp_path / "good.npz"
    np.savez_compressed(good, probabilities=np.stack([np.full((2, 3, 4), 0.25), np.full((2, 3, 4), 0.75)]))
    np.testing.assert_allclose(load_foreground_probability(good, labels, (2, 3, 4)), 0.75)
    regions = SimpleNamespace(num_segmentation_heads=2, has_regions=True)  # sigmoid per region: the largest
    np.testing.assert_allclose(load_foreground_probability(good, regions, (2, 3, 4)), 0.75)
    with pytest.raises(InputError, match=r"good.npz holds probabilities of shape \(2, 2, 3, 4\); expected "
                                         r"\(2, 4, 3, 2\)"):
        load_foreground_probability(good, labels, (4, 3, 2))
    three = tmp_path / "three.npz"
    np.savez_compressed(three, probabilities=np.full((3, 2, 3, 4), 1 / 3))
    with pytest.raises(InputError, match=r"shape \(3, 2, 3, 4\); expected \(2, 2, 3, 4\) \(2 class channel"):
        load_foreground_probability(three, labels, (2, 3, 4))
    other = tmp_path / "other.npz"
    np.savez(other, softmax=np.zeros(3))
    with pytest.raises(InputError, match=r"other.npz holds \['softmax'\], not an array 'probabilities'"):
        load_foreground_probability(other, labels, (2, 3, 4))


def test_a_prediction_of_another_image_is_refused(tmp_path):
    """Outside its image's nonzero bounding box nnUNetv2_predict writes exact background; a prediction with
    foreground there was made for another image (e.g. swapped files of registered cases)."""
    from types import SimpleNamespace

    from sadm_nnunet.nnunet_cases import load_foreground_probability

    labels = SimpleNamespace(num_segmentation_heads=2, has_regions=False)
    image = np.zeros((1, 8, 10, 12), np.float32)
    image[0, 2:6, 3:8, 4:9] = 1.0  # this case's brain
    other = np.zeros_like(image)
    other[0, 1:7, 3:8, 4:9] = 1.0  # another case's brain, one slice larger on both sides

    def prediction(brain: np.ndarray, name: str):
        p_fg = np.where(brain[0] != 0, 0.3, 0.0).astype(np.float32)  # background outside the crop box
        np.savez_compressed(tmp_path / name, probabilities=np.stack([1 - p_fg, p_fg]))
        return tmp_path / name

    own = load_foreground_probability(prediction(image, "own.npz"), labels, (8, 10, 12), image)
    np.testing.assert_allclose(own, np.where(image[0] != 0, 0.3, 0), atol=1e-7)
    with pytest.raises(InputError, match=r"swapped.npz predicts foreground in 50 voxel\(s\) outside"):
        load_foreground_probability(prediction(other, "swapped.npz"), labels, (8, 10, 12), image)
    # the limit: another case whose brain lies inside this one's box is not detected
    inner = np.zeros_like(image)
    inner[0, 3:5, 3:8, 4:9] = 1.0
    load_foreground_probability(prediction(inner, "inner.npz"), labels, (8, 10, 12), image)
