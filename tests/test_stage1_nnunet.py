"""Stage I end to end through the real nnU-Net commands on a tiny generated healthy dataset."""
import json
import re
import shutil
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import torch
from diffusers import UNet2DModel

from conftest import HEALTHY_ID, HEALTHY_T1, TRAINER
from sadm_nnunet.anomaly_maps import masked_mean
from sadm_nnunet.diffusion.export import load_diffusion_model
from sadm_nnunet.diffusion.reconstruction import Reconstructor
from sadm_nnunet.datasets.healthy_cohort import build_healthy_dataset


def test_training_finishes_and_resumes_from_the_last_checkpoint(trained_stage1):
    fold = trained_stage1["fold"]
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "progress.png", "validation/summary.json",
                 "diffusion_model/model_index.json"):
        assert (fold / name).is_file(), name
    assert not (fold / "checkpoint_latest.pth").exists()  # nnU-Net removes it after a finished training
    resumed = trained_stage1["resumed_from_epoch"]
    assert resumed >= 1
    epochs_second_run = [int(e) for e in re.findall(r"Epoch (\d+)\n", trained_stage1["second_log"])]
    assert epochs_second_run[0] == resumed and epochs_second_run[-1] == 2
    final = torch.load(fold / "checkpoint_final.pth", weights_only=False)
    assert final["current_epoch"] == 3
    assert final["trainer_name"] == TRAINER
    assert len(final["logging"]["val_ssim"]) == 3 and len(final["logging"]["val_l1"]) == 3
    # checkpoint_best is picked by the validation SSIM: nnU-Net's "pseudo dice" curve is the SSIM, and the best
    # checkpoint holds the highest value of its moving average
    logging = final["logging"]
    assert logging["mean_fg_dice"] == logging["val_ssim"] and all(0 < v <= 1 for v in logging["val_ssim"])
    best = torch.load(fold / "checkpoint_best.pth", weights_only=False)
    assert best["_best_ema"] == max(logging["ema_fg_dice"])
    # the log names the SSIM as what it is, as plain numbers, one line per epoch of the second run
    log = trained_stage1["second_log"]
    printed = [float(v) for v in re.findall(r"Validation SSIM (-?[\d.]+), L1", log)]
    assert printed == pytest.approx(logging["val_ssim"][resumed:], abs=5e-5)
    assert "Pseudo dice" not in log and "np.float64" not in log
    # progress within an epoch: every 10 of the 100 iterations, with the running mean loss
    assert re.findall(r"iteration (\d+)/100: mean train loss [\d.]+", log) == [str(i) for i in range(10, 100, 10)] * (
        3 - resumed)
    assert best["current_epoch"] == 1 + int(np.argmax(logging["ema_fg_dice"]))
    # 300 Adam steps were taken in all, across the two runs (EMA counts one update per step)
    assert int(final["network_weights"]["ema_updates"]) == 300
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert len(summary["per_case"]) == 8 and summary["noise_levels"] == [250, 500, 750]
    # the results folder's plans record every stage-I setting
    plans = json.loads((fold.parent / "plans.json").read_text())
    assert plans["configurations"]["2d"]["sadm_diffusion"]["unet"]["base_channels"] == 8


def test_trained_model_reconstructs_an_unseen_healthy_brain_better_than_at_initialisation(
        trained_stage1, nnunet, tmp_path):
    unet, settings = load_diffusion_model(trained_stage1["fold"] / "diffusion_model")
    # an unseen subject: same cohort recipe, another seed, preprocessed by nnU-Net's own preprocessor
    build_healthy_dataset(HEALTHY_T1, tmp_path / "raw", num_cases=1, seed=123, zoom=1 / 3, spacing=6.0)
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    base = trained_stage1["fold"].parent
    pm = PlansManager(json.loads((base / "plans.json").read_text()))
    data, _, _ = DefaultPreprocessor(verbose=False).run_case(
        [str(tmp_path / "raw" / "imagesTr" / "healthy_000_0000.nii.gz")], None, pm, pm.get_configuration("2d"),
        json.loads((base / "dataset.json").read_text()))
    image = torch.from_numpy(np.asarray(data, dtype=np.float32)).permute(1, 0, 2, 3)
    mask = image != 0

    def error(model: UNet2DModel, levels: tuple[int, ...]) -> float:
        recon = Reconstructor(model, settings, replace(settings.reconstruction, noise_levels=levels))(image)
        return float(masked_mean((recon - image).abs(), mask).nanmean())

    torch.manual_seed(0)
    initial = UNet2DModel.from_config(unet.config).eval()
    for levels, factor in (((250,), 0.85), ((250, 500, 750), 0.95)):
        trained_error, initial_error = error(unet, levels), error(initial, levels)
        print(f"noise levels {levels}: reconstruction L1 (z-score units) trained {trained_error:.3f} "
              f"vs initial {initial_error:.3f}")
        assert trained_error < factor * initial_error
    # and the trainer logged the validation error of every epoch (its trend over 3 short epochs on random
    # validation patches is too noisy to assert; the comparison above is the quality check)
    logged = torch.load(trained_stage1["fold"] / "checkpoint_final.pth", weights_only=False)["logging"]["val_l1"]
    assert len(logged) == 3 and all(np.isfinite(logged))


def test_reconstruct_command_writes_maps_in_the_input_geometry(trained_stage1, nnunet, healthy_dataset,
                                                               tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    src = nnunet.raw / healthy_dataset / "imagesTr"
    for name in ("healthy_000_0000.nii.gz", "healthy_001_0000.nii.gz"):
        shutil.copy(src / name, images / name)
    out = tmp_path / "out"
    proc = nnunet.run("sadm_nnunet_reconstruct", "-i", images, "-o", out, "-d", HEALTHY_ID, "-tr", TRAINER)
    assert "3 network passes per slice" in proc.stdout
    reference = nib.load(images / "healthy_000_0000.nii.gz")
    for kind in ("reconstruction_0000", "residual", "unsupervised"):
        written = nib.load(out / f"healthy_000_{kind}.nii.gz")
        assert written.shape == reference.shape
        np.testing.assert_allclose(written.affine, reference.affine, atol=1e-4)
    original = np.asarray(reference.dataobj)
    recon = np.asarray(nib.load(out / "healthy_000_reconstruction_0000.nii.gz").dataobj)
    brain = original != 0
    # the reconstruction is in the input's intensity units and resembles the input
    assert abs(recon[brain].mean() - original[brain].mean()) < 0.2 * original[brain].std()
    # a short, unseeded training: 0.49-0.7 over runs; a misplaced or unrelated reconstruction gives ~0
    assert np.corrcoef(recon[brain], original[brain])[0, 1] > 0.35
    assert np.all(recon[~brain] == 0)
    unsupervised = np.asarray(nib.load(out / "healthy_000_unsupervised.nii.gz").dataobj)
    # the unsupervised map as sadm_nnunet_score defines it: 1 - SSIM clipped to [0, 1], 0 outside the brain
    assert np.isfinite(unsupervised).all() and unsupervised.min() >= 0 and unsupervised.max() <= 1.0
    assert np.all(unsupervised[~brain] == 0) and unsupervised[brain].max() > 0
    recorded = json.loads((out / "reconstruct_settings.json").read_text())
    assert recorded["cases"] == ["healthy_000", "healthy_001"] and recorded["median_size"] == 5
    assert recorded["model"] == str(trained_stage1["fold"] / "diffusion_model") and recorded["epoch"] is None
    assert not list(out.glob(".*"))  # no temporary files left behind
    # the reconstruction's closeness inside the brain: L1 is the mean written residual there, SSIM 1 - the mean
    # unfiltered map (the unsupervised map is its median-filtered version: close, not equal)
    quality = recorded["reconstruction_quality"]
    case = quality["per_case"]["healthy_000"]
    residual = np.asarray(nib.load(out / "healthy_000_residual.nii.gz").dataobj)
    assert case["voxels"] == brain.sum() and case["l1"] == pytest.approx(residual[brain].mean(), rel=1e-5)
    assert 0 < case["ssim"] < 1 and case["ssim"] == pytest.approx(1 - unsupervised[brain].mean(), abs=0.1)
    assert quality["mean"]["l1"] == pytest.approx(np.mean([q["l1"] for q in quality["per_case"].values()]))
    assert f"L1 {quality['mean']['l1']:.4f}, SSIM {quality['mean']['ssim']:.4f}" in proc.stdout


def test_exports_after_chosen_epochs_reconstruct_with_the_command(trained_stage1, nnunet, healthy_dataset,
                                                                  tmp_path):
    fold = trained_stage1["fold"]
    # the test trainer's export_epochs (1, 2): one export after epoch 1 (the interrupted run) and 2 (the resumed
    # one); the end of training writes diffusion_model itself
    assert sorted(p.name for p in fold.glob("diffusion_model*")) == [
        "diffusion_model", "diffusion_model_epoch_1", "diffusion_model_epoch_2"]
    assert f"exported to {fold / 'diffusion_model_epoch_2'}" in trained_stage1["second_log"]
    weights = [load_diffusion_model(fold / name)[0].state_dict()
               for name in ("diffusion_model_epoch_1", "diffusion_model_epoch_2", "diffusion_model")]
    key = next(k for k in weights[0] if k.endswith("conv_in.weight"))
    assert not torch.equal(weights[0][key], weights[1][key]) and not torch.equal(weights[1][key], weights[2][key])
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(nnunet.raw / healthy_dataset / "imagesTr" / "healthy_000_0000.nii.gz", images)
    outputs = {}
    for epoch in (None, 2):
        out = tmp_path / f"out_{epoch}"
        nnunet.run("sadm_nnunet_reconstruct", "-i", images, "-o", out, "-d", HEALTHY_ID, "-tr", TRAINER,
                   *(["--epoch", str(epoch)] if epoch else []))
        recorded = json.loads((out / "reconstruct_settings.json").read_text())
        assert recorded["epoch"] == epoch and recorded["model"].endswith(
            "diffusion_model" + (f"_epoch_{epoch}" if epoch else ""))
        outputs[epoch] = np.asarray(nib.load(out / "healthy_000_reconstruction_0000.nii.gz").dataobj)
    assert not np.array_equal(outputs[None], outputs[2])
    proc = nnunet.run("sadm_nnunet_reconstruct", "-i", images, "-o", tmp_path / "o7", "-d", HEALTHY_ID, "-tr",
                      TRAINER, "--epoch", "7", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{fold / 'diffusion_model_epoch_7'} does not exist; {fold} holds exports after epochs [1, 2]" in (
        proc.stderr) and not (tmp_path / "o7").exists()


def test_reconstruct_command_rejects_wrong_channels_and_file_endings(trained_stage1, nnunet, healthy_dataset,
                                                                     tmp_path):
    src = nnunet.raw / healthy_dataset / "imagesTr" / "healthy_000_0000.nii.gz"
    two_channels = tmp_path / "two"
    two_channels.mkdir()
    shutil.copy(src, two_channels / "case_0000.nii.gz")
    shutil.copy(src, two_channels / "case_0001.nii.gz")
    proc = nnunet.run("sadm_nnunet_reconstruct", "-i", two_channels, "-o", tmp_path / "o", "-d", HEALTHY_ID,
                      "-tr", TRAINER, check=False)
    assert proc.returncode != 0
    assert "Case 'case'" in proc.stderr and "channel(s) [0, 1]" in proc.stderr and "1 channel(s)" in proc.stderr
    wrong_ending = tmp_path / "mha"
    wrong_ending.mkdir()
    (wrong_ending / "case_0000.mha").write_bytes(b"x")
    proc = nnunet.run("sadm_nnunet_reconstruct", "-i", wrong_ending, "-o", tmp_path / "o", "-d", HEALTHY_ID,
                      "-tr", TRAINER, check=False)
    assert proc.returncode != 0 and "file ending '.nii.gz'" in proc.stderr and "case_0000.mha" in proc.stderr
    missing = nnunet.run("sadm_nnunet_reconstruct", "-i", wrong_ending, "-o", tmp_path / "o", "-d", HEALTHY_ID,
                         "-tr", "SADMDiffusionTrainer_5epochs", check=False)
    assert missing.returncode != 0 and "No trained stage-I model" in missing.stderr


def test_truncated_checkpoint_gives_a_clear_error(trained_stage1, nnunet, healthy_dataset):
    trainer = "SADMDiffusionTrainer_2epochs_10its"
    fold = nnunet.fold_folder(healthy_dataset, trainer)
    fold.mkdir(parents=True, exist_ok=True)
    data = (trained_stage1["fold"] / "checkpoint_final.pth").read_bytes()
    (fold / "checkpoint_final.pth").write_bytes(data[: len(data) // 3])
    proc = nnunet.run("nnUNetv2_train", HEALTHY_ID, "2d", "all", "-tr", trainer, "-device", "cpu", "--c",
                      check=False)
    assert proc.returncode != 0
    assert "Could not load checkpoint" in proc.stderr and "checkpoint_final.pth" in proc.stderr
    assert "truncated" in proc.stderr


@pytest.mark.slow  # starts nnUNetv2_train
def test_3d_configuration_is_refused(healthy_dataset, nnunet):
    proc = nnunet.run("nnUNetv2_train", HEALTHY_ID, "3d_fullres", "all", "-tr", "SADMDiffusionTrainer",
                      "-device", "cpu", check=False)
    assert proc.returncode != 0
    assert "needs a 2D configuration" in proc.stderr and "3d_fullres" in proc.stderr


@pytest.mark.slow  # starts nnUNetv2_train
def test_dataset_with_lesion_labels_is_refused(nnunet):
    from sadm_nnunet.datasets.healthy_cohort import load_brains, random_subject, write_case, write_dataset_json
    folder = nnunet.raw / "Dataset502_Lesions"
    rng = np.random.default_rng(0)
    name, image, mask = load_brains(HEALTHY_T1)[0]
    for i in range(3):
        subject, subject_mask = random_subject(image, mask, rng, zoom=1 / 3)
        label = subject_mask.astype(np.uint8)
        label[12:16, 14:18, 12:16] = 2 * subject_mask[12:16, 14:18, 12:16]
        write_case(folder, f"lesion_{i:03d}", subject, label, 6.0)
    write_dataset_json(folder, 3, {"background": 0, "brain": 1, "tumour": 2})
    nnunet.plan(502)
    proc = nnunet.run("nnUNetv2_train", "502", "2d", "all", "-tr", "SADMDiffusionTrainer_2epochs_10its",
                      "-device", "cpu", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "SADMDiffusionTrainer_2epochs_10its: error: SADMDiffusionTrainer trains on healthy scans only" in \
        proc.stderr.strip().splitlines()[-1]
    assert "healthy scans only" in proc.stderr and "3 case(s)" in proc.stderr and "lesion_000 (labels [2])" in proc.stderr


def test_reconstruct_refuses_an_output_folder_in_its_input_folder(tmp_path):
    """-o X with -i X: a second run would reconstruct the reconstructions (CASE_reconstruction_reconstruction_...);
    refused before any model is read, with one line."""
    from sadm_nnunet.commands.reconstruct import main

    images = tmp_path / "images"
    images.mkdir()
    (images / "case_0000.nii.gz").write_bytes(b"")
    for output in (images, images / "out"):
        with pytest.raises(SystemExit) as e:
            main(["-i", str(images), "-o", str(output), "-d", "999"])
        assert str(e.value).startswith(f"sadm_nnunet_reconstruct: error: -o {output} ")
        assert f"the input folder -i {images}" in str(e.value)
    assert sorted(p.name for p in images.iterdir()) == ["case_0000.nii.gz"]
