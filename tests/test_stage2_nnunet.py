"""Stage II end to end through the unchanged nnU-Net commands, with only the nnU-Net path variables set:
plan_and_preprocess -> stage I (fixture) -> sadm_nnunet_plan -> nnUNetv2_train -tr SADMTrainer_* (interrupted,
--c) -> nnUNetv2_predict --save_probabilities -> nnUNetv2_evaluate_folder -> nnUNetv2_find_best_configuration
(SADM vs plain nnU-Net) -> export to zip -> install into empty folders -> predict with stage I deleted."""
from __future__ import annotations

import json
import sys

import nibabel as nib
import numpy as np
import torch
from safetensors.torch import load_file

from sadm_nnunet.segmentation.stage1 import compatibility_errors

from conftest import (HEALTHY_ID, LESION_ID, PLAIN_TRAINER, SADM_TRAINER, TRAINER as STAGE1_TRAINER, NNUNet,
                      printed_commands)

MIN_TEST_DICE = 0.5  # tumour lesions cover a few % of the brain: an empty or all-brain prediction scores < 0.15


def test_plan_writes_an_inheriting_configuration_and_is_safe_to_rerun(nnunet, sadm_planned, lesion_dataset):
    plans_path = nnunet.preprocessed / lesion_dataset / "nnUNetPlans.json"
    config = json.loads(plans_path.read_text())["configurations"]["2d_sadm"]
    assert config["inherits_from"] == "2d"
    block = config["sadm"]
    assert block["input_mode"] == "image+residual"
    assert block["stage1"] == {"dataset": f"Dataset{HEALTHY_ID}_Healthy", "trainer": STAGE1_TRAINER,
                               "plans": "nnUNetPlans", "configuration": "2d", "fold": "all", "epoch": None}
    assert block["denoiser"]["in_channels"] == 1 and block["diffusion"]["unet"]["base_channels"] == 8
    assert sadm_planned.returncode == 0
    # re-running with a setting keeps everything else and validates the value
    nnunet.run("sadm_nnunet_plan", LESION_ID, "--ddpm", HEALTHY_ID, "--set", "synthetic_anomalies.probability=0.5")
    again = json.loads(plans_path.read_text())["configurations"]["2d_sadm"]["sadm"]
    assert block["synthetic_anomalies"]["probability"] == 0.0  # the template default: labels only
    assert again == {**block, "synthetic_anomalies": {**block["synthetic_anomalies"], "probability": 0.5}}
    block = again
    bad = nnunet.run("sadm_nnunet_plan", LESION_ID, "--ddpm", HEALTHY_ID, "--set", "input_mode=image",
                     check=False)
    assert bad.returncode != 0 and "sadm.input_mode' is 'image'" in bad.stderr
    assert json.loads(plans_path.read_text())["configurations"]["2d_sadm"]["sadm"] == block  # untouched


def test_plan_records_a_stage1_export_after_chosen_epochs(nnunet, sadm_planned, lesion_dataset):
    folder = nnunet.preprocessed / lesion_dataset
    (folder / "EpochPlans.json").write_text((folder / "nnUNetPlans.json").read_text())  # the other tests' untouched
    proc = nnunet.run("sadm_nnunet_plan", LESION_ID, "--ddpm", HEALTHY_ID, "-p", "EpochPlans", "--ddpm-trainer",
                      STAGE1_TRAINER, "--ddpm-epoch", "1")
    export = nnunet.fold_folder(f"Dataset{HEALTHY_ID}_Healthy", STAGE1_TRAINER) / "diffusion_model_epoch_1"
    assert f"Stage-I model: {export}" in proc.stdout
    block = json.loads((folder / "EpochPlans.json").read_text())["configurations"]["2d_sadm"]["sadm"]
    assert block["stage1"]["epoch"] == 1 and block["stage1"]["trainer"] == STAGE1_TRAINER
    for extra, message in ((["--ddpm-trainer", STAGE1_TRAINER, "--ddpm-epoch", "9"],
                            f"{export.parent / 'diffusion_model_epoch_9'} does not exist; {export.parent} holds "
                            f"exports after epochs [1, 2]"),
                           (["--ddpm-epoch", "1"], "name the trainer with --ddpm-trainer")):
        bad = nnunet.run("sadm_nnunet_plan", LESION_ID, "--ddpm", HEALTHY_ID, "-p", "EpochPlans", *extra,
                         check=False)
        assert bad.returncode == 1 and message in bad.stderr and "Traceback" not in bad.stderr


def test_plan_refuses_missing_or_mismatched_stage1_models(nnunet, sadm_planned, lesion_dataset):
    missing = nnunet.run("sadm_nnunet_plan", LESION_ID, "--ddpm", HEALTHY_ID, "--ddpm-trainer",
                         "SADMDiffusionTrainer_5epochs", check=False)
    assert missing.returncode != 0 and "No trained stage-I model" in missing.stderr
    assert "Traceback" not in missing.stderr and "nnUNetv2_train" in missing.stderr
    for target, healthy in ((999, HEALTHY_ID), (LESION_ID, 999)):
        unknown = nnunet.run("sadm_nnunet_plan", target, "--ddpm", healthy, check=False)
        assert unknown.returncode != 0 and "Dataset '999' not found" in unknown.stderr
        assert "Traceback" not in unknown.stderr
    # a target preprocessed at another spacing does not fit the denoiser
    plans_path = nnunet.preprocessed / lesion_dataset / "nnUNetPlans.json"
    plans = json.loads(plans_path.read_text())
    plans["plans_name"] = "CoarsePlans"
    plans["configurations"]["2d"]["spacing"] = [12.0, 12.0]
    (plans_path.parent / "CoarsePlans.json").write_text(json.dumps(plans))
    proc = nnunet.run("sadm_nnunet_plan", LESION_ID, "--ddpm", HEALTHY_ID, "-p", "CoarsePlans", check=False)
    assert proc.returncode != 0
    assert "in-plane target spacing" in proc.stderr and "stage I [6.0, 6.0]" in proc.stderr
    assert "the target [12.0, 12.0]" in proc.stderr and "nnUNetv2_move_plans_between_datasets" in proc.stderr
    # the printed fix works: run its commands as printed, then sadm_nnunet_plan succeeds
    commands = printed_commands(proc.stderr)
    assert [c[0] for c in commands] == ["nnUNetv2_move_plans_between_datasets", "nnUNetv2_preprocess",
                                        "sadm_nnunet_plan"]
    for command in commands:
        nnunet.run(*command)
    moved = json.loads((plans_path.parent / "nnUNetPlansFrom501.json").read_text())
    assert moved["configurations"]["2d"]["spacing"] == [6.0, 6.0]
    assert moved["configurations"]["2d_sadm"]["inherits_from"] == "2d"
    assert moved["configurations"]["2d_sadm"]["sadm"]["stage1"]["dataset"] == f"Dataset{HEALTHY_ID}_Healthy"
    assert (plans_path.parent / "nnUNetPlansFrom501_2d").is_dir()  # preprocessed with the moved plans


def test_a_channel_mismatch_offers_no_plans_transfer(nnunet, sadm_planned, lesion_dataset):
    """No plans or preprocessing change the channels a trained denoiser takes: the message says to train stage I
    on healthy data with the target's channels, and prints no command that could not fix it."""
    source = nnunet.preprocessed / lesion_dataset
    target = nnunet.preprocessed / "Dataset504_TwoChannels"
    target.mkdir()
    dataset_json = json.loads((source / "dataset.json").read_text())
    dataset_json["channel_names"] = {"0": "T1", "1": "FLAIR"}
    (target / "dataset.json").write_text(json.dumps(dataset_json))
    plans = json.loads((source / "nnUNetPlans.json").read_text())
    plans["dataset_name"] = target.name
    for configuration in plans["configurations"].values():
        for key in ("normalization_schemes", "use_mask_for_norm"):
            if key in configuration:
                configuration[key] = configuration[key] * 2
    (target / "nnUNetPlans.json").write_text(json.dumps(plans))
    before = (target / "nnUNetPlans.json").read_text()
    proc = nnunet.run("sadm_nnunet_plan", 504, "--ddpm", HEALTHY_ID, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "channels: stage I has 1" in proc.stderr and "the target has 2" in proc.stderr
    assert "Train stage I on a healthy dataset with the target's channels" in proc.stderr
    assert printed_commands(proc.stderr) == []
    assert (target / "nnUNetPlans.json").read_text() == before  # nothing written


def test_a_corrupt_plans_file_is_named_in_one_line(nnunet, sadm_planned, lesion_dataset):
    broken = nnunet.preprocessed / lesion_dataset / "BrokenPlans.json"
    broken.write_text('{"configurations": {"2d": ')
    proc = nnunet.run("sadm_nnunet_plan", LESION_ID, "--ddpm", HEALTHY_ID, "-p", "BrokenPlans", check=False)
    broken.unlink()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"sadm_nnunet_plan: error: plans file {broken} is not valid JSON (26 characters; Expecting value at line 1, "
        f"column 27); expected the JSON object nnU-Net or sadm_nnunet wrote there")


def test_compatibility_check_names_channels_normalisation_and_orientation(nnunet, sadm_planned, lesion_dataset,
                                                                          healthy_dataset):
    stage1_folder = nnunet.results / healthy_dataset / f"{STAGE1_TRAINER}__nnUNetPlans__2d"
    stage1_plans = json.loads((stage1_folder / "plans.json").read_text())
    stage1_json = json.loads((stage1_folder / "dataset.json").read_text())
    target_plans = json.loads((nnunet.preprocessed / lesion_dataset / "nnUNetPlans.json").read_text())
    target_json = json.loads((nnunet.preprocessed / lesion_dataset / "dataset.json").read_text())
    assert compatibility_errors(stage1_plans, stage1_json, target_plans, target_json, "2d", "2d") == []

    target_plans["configurations"]["2d"]["normalization_schemes"] = ["CTNormalization"]
    target_plans["transpose_forward"] = [2, 1, 0]
    target_json["channel_names"] = {"0": "T1", "1": "FLAIR"}
    errors = compatibility_errors(stage1_plans, stage1_json, target_plans, target_json, "2d", "2d")
    assert len(errors) == 3
    assert errors[0].startswith("channels: stage I has 1") and "the target has 2" in errors[0]
    assert "stage I uses ['ZScoreNormalization']" in errors[1] and "the target ['CTNormalization']" in errors[1]
    assert "transpose_forward" in errors[2] and "target [2, 1, 0]" in errors[2]


def test_training_resumes_and_keeps_the_stage1_denoiser_frozen(nnunet, trained_sadm, lesion_dataset):
    assert "Stage-I denoiser loaded from" in trained_sadm["first_log"]
    assert "Stage-I denoiser loaded from" not in trained_sadm["second_log"]  # it came from the checkpoint
    assert trained_sadm["resumed_from_epoch"] == 1
    assert "Epoch 1" in trained_sadm["second_log"] and "Epoch 0\n" not in trained_sadm["second_log"]
    checkpoint = torch.load(trained_sadm["fold"] / "checkpoint_final.pth", weights_only=False, map_location="cpu")
    weights = checkpoint["network_weights"]
    stage1 = load_file(nnunet.fold_folder(f"Dataset{HEALTHY_ID}_Healthy", STAGE1_TRAINER) /
                       "diffusion_model" / "unet" / "diffusion_pytorch_model.safetensors")
    for key, value in stage1.items():
        torch.testing.assert_close(weights[f"denoiser.{key}"], value, rtol=0, atol=0)
    # (the decoder holds a reference to the encoder, so the state dict lists shared tensors twice)
    n_segmentation = len({v.data_ptr() for k, v in weights.items() if k.startswith("segmentation.")})
    params = checkpoint["optimizer_state"]["param_groups"][0]["params"]
    assert len(params) == n_segmentation  # the denoiser's parameters are not in the optimizer
    assert (trained_sadm["fold"] / "validation" / "summary.json").is_file()


def test_prediction_finds_the_tumours(nnunet, predictions, lesion_dataset):
    files = sorted(p.name for p in predictions.glob("*.nii.gz"))
    assert len(files) == 3 and len(list(predictions.glob("*.npz"))) == 3
    proc = nnunet.run("nnUNetv2_evaluate_folder", nnunet.raw / lesion_dataset / "labelsTs", predictions,
                      "-djfile", predictions / "dataset.json", "-pfile", predictions / "plans.json", "-np", "1")
    summary = json.loads((predictions / "summary.json").read_text())
    dice = summary["foreground_mean"]["Dice"]
    print(f"SADM test Dice: {dice:.3f}")
    assert dice > MIN_TEST_DICE, proc.stdout


def test_find_best_configuration_compares_sadm_with_plain_nnunet(nnunet, trained_sadm, lesion_dataset):
    # the plain baseline trains on the same configuration (it ignores the 'sadm' block: same data, patch, batch)
    nnunet.run("nnUNetv2_train", LESION_ID, "2d_sadm", "0", "-tr", PLAIN_TRAINER, "-device", "cpu")
    proc = nnunet.run("nnUNetv2_find_best_configuration", LESION_ID, "-c", "2d_sadm", "-tr", SADM_TRAINER,
                      PLAIN_TRAINER, "-f", "0", "--disable_ensembling", "-np", "1")
    info = json.loads((nnunet.results / lesion_dataset / "inference_information.json").read_text())
    assert {m for m in info["all_results"]} == {f"{SADM_TRAINER}__nnUNetPlans__2d_sadm",
                                                f"{PLAIN_TRAINER}__nnUNetPlans__2d_sadm"}, proc.stdout


def test_exported_model_predicts_without_the_stage1_results(nnunet, predictions, lesion_dataset, tmp_path):
    archive = tmp_path / "sadm_model.zip"
    nnunet.run("nnUNetv2_export_model_to_zip", "-d", LESION_ID, "-o", archive, "-c", "2d_sadm", "-tr",
               SADM_TRAINER, "-f", "0")
    fresh = NNUNet(tmp_path / "fresh")
    fresh.run("nnUNetv2_install_pretrained_model_from_zip", archive)
    stage1_results = nnunet.results / f"Dataset{HEALTHY_ID}_Healthy"
    hidden = nnunet.results.parent / "hidden_stage1"
    stage1_results.rename(hidden)
    try:
        out = tmp_path / "from_zip"
        fresh.run("nnUNetv2_predict", "-i", nnunet.raw / lesion_dataset / "imagesTs", "-o", out, "-d", LESION_ID,
                  "-c", "2d_sadm", "-tr", SADM_TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1")
    finally:
        hidden.rename(stage1_results)
    for case in sorted(predictions.glob("*.nii.gz")):
        a = np.asarray(nib.load(case).dataobj)
        b = np.asarray(nib.load(out / case.name).dataobj)
        assert np.array_equal(a, b), case.name


def test_training_without_sadm_configuration_fails_clearly(nnunet, lesion_dataset, sadm_planned):
    proc = nnunet.run("nnUNetv2_train", LESION_ID, "2d", "0", "-tr", SADM_TRAINER, "-device", "cpu", check=False)
    assert proc.returncode != 0
    assert "not an SADM configuration" in proc.stderr and "sadm_nnunet_plan" in proc.stderr


BATCH_PROBE = """
import sys, torch
from nnunetv2.run.run_training import get_trainer_from_args
trainer = get_trainer_from_args(sys.argv[1], "2d_sadm", 1, sys.argv[2], device=torch.device("cpu"))
trainer.initialize()
for name, loader in zip(("train", "val"), trainer.get_dataloaders()):
    for _ in range(3):
        target = next(loader)["target"][0]
        anomalies = (target == 1).flatten(1).any(1).int().tolist()
        print(name, ";".join(map(str, anomalies)), ";".join(map(str, torch.unique(target).int().tolist())), sep=",")
"""


def test_draem_batches_carry_synthetic_anomalies(nnunet, sadm_planned, lesion_dataset):
    proc = nnunet.run(sys.executable, "-c", BATCH_PROBE, str(LESION_ID), "SADMTrainer_DRAEM_2epochs_100its")
    rows = [line.split(",") for line in proc.stdout.splitlines() if line.startswith(("train,", "val,"))]
    assert len(rows) == 6
    for name in ("train", "val"):
        has_anomaly = [int(v) for row in rows if row[0] == name for v in row[1].split(";")]
        assert {v for row in rows if row[0] == name for v in row[2].split(";")} <= {"0", "1"}
        # nearly every patch gets a mask (a few fall outside the brain); validation ones are deterministic
        assert np.mean(has_anomaly) > 0.6, (name, has_anomaly)


def test_self_supervised_draem_trainer_trains_on_synthetic_anomalies(nnunet, sadm_planned, lesion_dataset):
    trainer = "SADMTrainer_DRAEM_2epochs_10its"
    proc = nnunet.run("nnUNetv2_train", LESION_ID, "2d_sadm", "1", "-tr", trainer, "-device", "cpu")
    fold = nnunet.fold_folder(lesion_dataset, trainer, "2d_sadm", "1")
    checkpoint = torch.load(fold / "checkpoint_final.pth", weights_only=False, map_location="cpu")
    # validation patches carry deterministic synthetic anomalies, so the pseudo Dice is defined (NaN without them)
    pseudo_dice = checkpoint["logging"]["mean_fg_dice"]
    assert len(pseudo_dice) == 2 and all(np.isfinite(pseudo_dice)), proc.stdout[-2000:]
    # the final validation scores the real (never seen) tumours
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    print(f"DRAEM pseudo Dice {pseudo_dice}, Dice on real tumours {summary['foreground_mean']['Dice']:.3f}")
