"""The benchmark scripts keep running (quick mode); their numbers are reported, not asserted against targets."""
import hashlib
import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import REPO


def run_quick(script: str, tmp_path, *extra: str, output: str = "results.json") -> dict:
    """Runs a benchmark script in --quick mode; returns its JSON results."""
    out = tmp_path / output
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--quick",
                           "--workdir", str(tmp_path / "work"), "--output", str(out), *extra],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    results = json.loads(text)
    check_machine_record(results)
    return results


def check_machine_record(results: dict) -> None:
    """Every report records the machine and the versions (benchmarks/common.py)."""
    machine = results["machine"]
    assert machine["cpu_count"] >= 1 and machine["cpu"] and machine["torch_threads"] >= 1
    assert machine["omp_wait_policy"] == "PASSIVE" and results["versions"]["sadm_nnunet"]


# stage1_benchmark.py --quick and stage2_benchmark.py --quick (2d) run inside gpu_check --dry-run
# (tests/test_gpu_check.py), which checks their reports with `check_stage1_report` / `check_stage2_report`.
def check_stage1_report(results: dict) -> None:
    check_machine_record(results)
    training = results["training"]
    assert training["timed_iterations"] >= 1 and training["target_ratio"] == 0.9
    assert training["ratio_nnunet_to_plain"] == pytest.approx(
        training["plain_diffusers"]["median_s_per_iteration"] / training["nnunet"]["median_s_per_iteration"])
    assert training["target_met"] == (training["ratio_nnunet_to_plain"] >= 0.9)
    variants = results["reconstruction"]["variants"]
    assert [v["passes_per_slice"] for v in variants][0] == 3 and all(v["s_per_volume"] > 0 for v in variants)


def check_stage2_report(results: dict, configuration: str) -> None:
    check_machine_record(results)
    assert results["configuration"] == {"base": configuration, "sadm": f"{configuration}_sadm"}
    tiles = results["tiles"]
    assert len(tiles["patch_size"]) == (3 if configuration == "3d_fullres" else 2)
    # a 3D tile of D slices: D denoiser passes per noise level, 8 mirrored copies
    assert tiles["slices_per_tile"] == (tiles["patch_size"][0] if configuration == "3d_fullres" else 1)
    assert tiles["mirrored_copies"] == 2 ** len(tiles["patch_size"])
    assert results["dataset"]["denoiser"] and tiles["median_ms"]["reconstruction"] > 0
    targets = (results["training"]["target_time_ratio"], results["training"]["target_memory_ratio"],
               results["prediction"]["target_ratio"])
    assert targets == (1.5, 1.3, 1.5)
    assert results["training"]["time_target_met"] == (results["training"]["time_ratio"] <= 1.5)
    training = results["training"]["trainers"]
    for trainer in ("SADMBenchTrainer", "SADMBenchBaselineTrainer"):
        assert training[trainer]["median_s_per_train_step"] > 0 and training[trainer]["peak_rss_mib"] > 0
    assert training["SADMBenchTrainer"]["median_reconstruction_s"] > 0
    variants = results["prediction"]["variants"]
    assert set(variants) == {"SADMBenchTrainer", "SADMBenchBaselineTrainer",
                             "SADMBenchTrainer prediction_ensemble=per_level"}
    assert all(v["median_s"] > 0 for v in variants.values())


@pytest.mark.slow
def test_stage2_benchmark_quick_mode_runs_3d(tmp_path):
    check_stage2_report(run_quick("stage2_benchmark.py", tmp_path, "--configuration", "3d_fullres"), "3d_fullres")


def load_script(name: str):
    """A benchmark script as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def retrained(variant, base) -> list[str]:
    """The training steps a variant's run did itself: a reused model's step record is the base run's, copied."""
    steps = sorted(p.name for p in (variant / "steps").glob("train_*.json"))
    return [name[:-len(".json")] for name in steps
            if digest(variant / "steps" / name) != digest(base / "steps" / name)]


def test_quality_variants_reuse_exactly_the_models_whose_settings_did_not_change():
    qb = load_script("quality_benchmark")
    base = qb.experiment("full", 0)
    reuse = qb.what_to_reuse(base, qb.experiment("full", 0, qb.Variant(sadm=("input_mode=image+reconstruction",))),
                             ())
    assert reuse == qb.Reuse(stage1=True, plain=True, sadm=False)
    reuse = qb.what_to_reuse(base, qb.experiment("full", 0, qb.Variant(denoiser=("noise.kind=gaussian",))), ())
    assert reuse == qb.Reuse(stage1=False, plain=True, sadm=False)
    assert "train_stage1" not in reuse.steps() and "predict_nnunet" in reuse.steps()
    longer = qb.Variant(sadm_trainer="QualitySADMTrainer_3epochs", plain_trainer="QualityPlainTrainer_3epochs")
    reuse = qb.what_to_reuse(base, qb.experiment("full", 0, longer), ())
    assert reuse == qb.Reuse(stage1=True, plain=False, sadm=False)
    assert reuse.steps() == ("cohort", "plan", "plan_diffusion", "train_stage1")
    prediction = ("reconstruction.noise_levels=[100]",)
    reuse = qb.what_to_reuse(base, qb.experiment("full", 0, qb.Variant(prediction=prediction)), prediction)
    assert reuse == qb.Reuse(stage1=True, plain=True, sadm=True) and "train_sadm" in reuse.steps()
    three_d = qb.experiment("full", 0, qb.Variant(configuration="3d_fullres"))
    assert (three_d.configuration, three_d.sadm_configuration) == ("3d_fullres", "3d_fullres_sadm")
    reuse = qb.what_to_reuse(base, three_d, ())  # the 3D pair: both stage-II models trained again, stage I kept
    assert reuse == qb.Reuse(stage1=True, plain=False, sadm=False)
    # a milestone of the stage-I learning curve (trained in the base folder once per cohort): stage I copied from
    # there, never trained again; SADM trained on it; plain nnU-Net kept
    milestone = qb.experiment("full", 0, qb.Variant(stage1_trainer="Stage1CurveTrainer", stage1_epoch=16))
    assert (milestone.stage1_trainer, milestone.stage1_epoch) == ("Stage1CurveTrainer", 16)
    reuse = qb.what_to_reuse(base, milestone, ())
    assert reuse == qb.Reuse(stage1=True, plain=True, sadm=False) and "train_stage1" in reuse.steps()
    other = qb.experiment("full", 0, qb.Variant(stage1_trainer="Stage1CurveTrainer"))  # no epoch: trained anew
    assert qb.what_to_reuse(base, other, ()) == qb.Reuse(stage1=False, plain=True, sadm=False)
    with pytest.raises(SystemExit, match="changes nothing"):
        qb.what_to_reuse(base, qb.experiment("full", 0, qb.Variant()), ())
    with pytest.raises(SystemExit, match="cannot be combined"):
        both = qb.Variant(denoiser=("noise.kind=gaussian",), prediction=prediction)
        qb.what_to_reuse(base, qb.experiment("full", 0, both), prediction)


def test_another_spacing_is_a_base_run_of_its_own():
    """--spacing 2: the same subjects resampled from the 2 mm source (zoom 1), in folders of their own that its
    variants start from; the mode's own spacing keeps the usual folders."""
    from pathlib import Path

    qb = load_script("quality_benchmark")
    base, fine = qb.experiment("full", 0), qb.experiment("full", 0, spacing=2.0)
    assert (base.cohort.spacing, base.cohort.zoom) == (4.0, 0.5)
    assert (fine.cohort.spacing, fine.cohort.zoom) == (2.0, 1.0)
    assert fine.cohort.num_test == base.cohort.num_test and fine.cohort.seed == base.cohort.seed
    assert qb.experiment("full", 0, spacing=4.0) == base
    work = Path("w")
    assert qb.run_folder(work, "full", 1) == qb.run_folder(work, "full", 1, 4.0) == work / "full_seed1"
    assert qb.run_folder(work, "full", 1, 2.0) == work / "full2mm_seed1"
    assert qb.run_folder(work, "full", 1, 2.5, "Curve") == work / "full2p5mmCurve_seed1"
    assert qb.run_folder(work, "quick", 0, 6.0) == work / "quick_seed0"
    with pytest.raises(SystemExit, match="--spacing is in mm, between 0.5 and 16; found 0.1"):
        qb.main(["--spacing", "0.1"])
    with pytest.raises(SystemExit, match="--spacing is in mm, between 0.5 and 16; found 0"):
        load_script("stage1_curve").main(["--spacing", "0", "--workdir", "w"])
    with pytest.raises(SystemExit, match="--spacing is in mm, between 0.5 and 16; found 20"):
        load_script("quality_ensemble").main(["--spacing", "20", "--workdir", "w"])


def test_image_only_draem_control_trains_on_synthetic_anomalies_only():
    """The image-only control of the self-supervised SADM (QualityPlainDRAEMTrainer_1epoch) gets SADMTrainer_DRAEM's
    anomalies: the template's settings, every patch, dataset labels replaced, inserted before nnU-Net removes the
    -1 label; on a patch with a tumour label the target becomes the anomaly's mask alone."""
    import numpy as np
    import torch
    from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform

    from sadm_nnunet.diffusion.settings import load_template
    from sadm_nnunet.training.synthetic_anomalies import SyntheticAnomalyTransform

    spec = importlib.util.spec_from_file_location("quality_draem_trainers",
                                                  REPO / "benchmarks" / "trainers" / "quality_draem_trainers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    template = load_template("sadm.json")["synthetic_anomalies"]
    trainer_class = module.QualityPlainDRAEMTrainer_1epoch
    pipeline = trainer_class.get_validation_transforms(object.__new__(trainer_class), None, False, [1, 2, 3])
    kinds = [type(t) for t in pipeline.transforms]
    assert kinds.index(SyntheticAnomalyTransform) == kinds.index(RemoveLabelTansform) - 1
    t = pipeline.transforms[kinds.index(SyntheticAnomalyTransform)]
    assert (t.probability, t.replace_labels, t.deterministic) == (1.0, True, True)
    assert (t.label, t.blend_range, t.max_scale_exponent) == (
        template["label"], (template["blend_min"], template["blend_max"]), template["max_scale_exponent"])
    yy, xx = np.mgrid[:48, :48]
    brain = (yy - 24) ** 2 + (xx - 24) ** 2 < 20 ** 2
    image = torch.from_numpy(np.where(brain, 0.5 + 0.1 * np.sin(xx / 3.0), 0.0)[None].astype(np.float32))
    seg = torch.from_numpy(np.where(brain, 0, -1)[None].astype(np.int16))
    seg[0, 20:28, 20:28] = 2  # a tumour label the control must not learn
    out = pipeline(image=image, segmentation=seg)
    labels = set(np.unique(out["segmentation"].numpy()).tolist())
    assert labels == {0, template["label"]}  # tumour label gone, anomaly written, -1 removed by nnU-Net's transform
    assert not torch.equal(out["image"], image)


def test_prediction_overrides_write_prediction_settings_only(tmp_path):
    """--predict-set: reconstruction.*, scoring.* and prediction_ensemble go into the 2d_sadm block, validated;
    anything that acts on training is refused, and a refused or invalid value leaves the plans file as it was."""
    from sadm_nnunet.diffusion.settings import DiffusionSettings, unet_config
    from sadm_nnunet.segmentation.settings import PLANS_KEY, Stage1Model, sadm_block

    qb = load_script("quality_benchmark")
    diffusion = DiffusionSettings.from_dict({})
    block = sadm_block({}, Stage1Model("Dataset1_H", "SADMDiffusionTrainer", "nnUNetPlans", "2d", "all"), diffusion,
                       unet_config(diffusion, (32, 32), 1))
    plans_path = tmp_path / "plans.json"
    plans_path.write_text(json.dumps({"configurations": {"2d_sadm": {PLANS_KEY: block}}}))
    qb.apply_prediction_overrides(plans_path, ("prediction_ensemble=per_level", "scoring.ssim_dimensions=3"))
    block = json.loads(plans_path.read_text())["configurations"]["2d_sadm"][PLANS_KEY]
    assert block["prediction_ensemble"] == "per_level" and block["scoring"]["ssim_dimensions"] == 3
    before = plans_path.read_bytes()
    with pytest.raises(SystemExit, match="found 'training_noise_level=ensemble'. Settings that change training"):
        qb.apply_prediction_overrides(plans_path, ("training_noise_level=ensemble",))
    with pytest.raises(SystemExit, match="ssim_dimensions"):
        qb.apply_prediction_overrides(plans_path, ("scoring.ssim_dimensions=4",))
    assert plans_path.read_bytes() == before


@pytest.mark.slow
def test_quality_benchmark_quick_mode_runs_and_reports(tmp_path):
    results = run_quick("quality_benchmark.py", tmp_path)
    rows = {"unsupervised", "nnunet", "sadm", "sadm_segmentation", "late_fusion", "sadm_draem"}
    assert set(results["summary"]) == rows and results["seeds"] == [0]
    for method in rows:
        assert set(results["summary"][method]) == {"tumour", "ms", "stroke", "healthy"}
        for kind in ("tumour", "ms", "stroke"):
            for metric in ("best_dice", "dice_at_fpr1", "dice_at_fpr5"):
                value = results["summary"][method][kind][metric]
                assert 0.0 <= value["mean"] <= 1.0 and value["seeds"] == 1 and value["std"] == 0.0
        flagged = results["summary"][method]["healthy"]["fpr_healthy_at_fpr5"]["mean"]
        assert 0.0 <= flagged <= 1.0
    main_table, _, fpr_table = results["table"].split("\n\n")
    assert len(main_table.splitlines()) == 2 + len(rows) and "ms (unseen): ⌈Dice⌉" in main_table.splitlines()[0]
    assert len(fpr_table.splitlines()) == 2 + len(rows) and "tumour: Dice@1% FPR" in fpr_table.splitlines()[0]

    # a prediction-only variant: the base run's trained SADM model (bit for bit), its plans with the new noise level
    low = run_quick("quality_benchmark.py", tmp_path, "--tag", "Low", "--predict-set",
                    "reconstruction.noise_levels=[100]", output="low.json")
    assert set(low["summary"]) == rows - {"sadm_draem"} and low["variant"]["prediction"] == [
        "reconstruction.noise_levels=[100]"]
    work = tmp_path / "work"
    base_model = next((work / "quick_seed0" / "nnUNet_results").glob("*/QualityQuickSADMTrainer__*/fold_all"))
    low_model = work / "quickLow_seed0" / base_model.relative_to(work / "quick_seed0")
    assert digest(low_model / "checkpoint_final.pth") == digest(base_model / "checkpoint_final.pth")
    plans = json.loads((low_model.parent / "plans.json").read_text())
    assert plans["configurations"]["2d_sadm"]["sadm"]["reconstruction"] == {"noise_levels": [100]}
    assert retrained(work / "quickLow_seed0", work / "quick_seed0") == []
    base_scores = sorted((work / "quick_seed0" / "scores" / "sadm").glob("*_unsupervised.nii.gz"))
    low_scores = [work / "quickLow_seed0" / p.relative_to(work / "quick_seed0") for p in base_scores]
    assert base_scores and any(digest(a) != digest(b) for a, b in zip(base_scores, low_scores))
    assert low["summary"]["nnunet"] == results["summary"]["nnunet"]  # the same predictions, copied

    # the 3D pair: SADM on 3d_fullres_sadm and plain nnU-Net on 3d_fullres, stage I (2D) reused
    three_d = run_quick("quality_benchmark.py", tmp_path, "--tag", "ThreeD", "--configuration", "3d_fullres",
                        output="threed.json")
    folder = work / "quickThreeD_seed0"
    assert retrained(folder, work / "quick_seed0") == ["train_nnunet", "train_sadm"]
    ran = {p.stem: json.loads(p.read_text()).get("argv", []) for p in (folder / "steps").glob("*.json")}
    assert ran["train_sadm"][2] == "3d_fullres_sadm" and ran["train_nnunet"][2] == "3d_fullres"
    assert ran["plan_sadm"][-2:] == ["-c", "3d_fullres"] and ran["preprocess_3d_fullres"][0] == "nnUNetv2_preprocess"
    for method in rows - {"sadm_draem"}:
        assert 0.0 <= three_d["summary"][method]["tumour"]["best_dice"]["mean"] <= 1.0

    # the paired comparison of both variants with the base run (a stage-I variant, e.g. --set-denoiser, reuses the
    # same machinery: which models it trains again is unit-tested above)
    numbers = load_script("quality_compare").main([str(tmp_path / "results.json"), f"Low={tmp_path / 'low.json'}",
                                                   f"ThreeD={tmp_path / 'threed.json'}", "--output",
                                                   str(tmp_path / "comparison.md")])
    assert numbers["Low"]["nnunet"]["stroke/best_dice"]["diffs"] == {"0": 0.0}
    for name, run in (("Low", low), ("ThreeD", three_d)):
        expected = (run["per_seed"]["0"]["sadm"]["stroke"]["mean"]["best_dice"]
                    - results["per_seed"]["0"]["sadm"]["stroke"]["mean"]["best_dice"])
        assert numbers[name]["sadm"]["stroke/best_dice"]["diffs"]["0"] == pytest.approx(expected)
    table = (tmp_path / "comparison.md").read_text().splitlines()
    assert table[0].startswith("| run | method | seeds | tumour ⌈Dice⌉") and len(table) == 2 + 3 * 5 + 2

    # the stage-I learning curve on the base run's cohort: one training with exports after epochs 1 and 2, each
    # evaluated like the base run's unsupervised row, and the base run's own stage I as the reference row
    curve = run_quick("stage1_curve.py", tmp_path, output="curve.json")
    rows = {r["key"]: r for r in curve["rows"]}
    assert list(rows) == ["base", "epoch_1", "epoch_2"] and curve["training_finished"]
    assert [r["iterations"] for r in rows.values()] == [20, 10, 20]
    assert 0 < rows["epoch_1"]["training_seconds"] < rows["epoch_2"]["training_seconds"]
    for kind in ("tumour", "ms", "stroke"):  # the reference row is the quality benchmark's unsupervised row
        for metric in ("best_dice", "auprc", "dice_at_threshold"):
            assert rows["base"]["kinds"][kind][metric] == pytest.approx(
                results["per_seed"]["0"]["unsupervised"][kind]["mean"][metric], abs=1e-6)
    assert rows["base"]["healthy"]["fpr_healthy"] == pytest.approx(
        results["per_seed"]["0"]["unsupervised"]["healthy"]["mean"]["fpr_healthy"], abs=1e-6)
    for row in rows.values():
        assert row["healthy"]["l1"] > 0 and 0 < row["healthy"]["ssim"] < 1
    assert rows["epoch_1"]["kinds"] != rows["epoch_2"]["kinds"]  # two different exports
    # evaluating again (e.g. after a later piece of a split training) reuses what was evaluated
    again = run_quick("stage1_curve.py", tmp_path, "--evaluate-only", output="curve_again.json")
    assert again["rows"] == curve["rows"]

    # SADM on a milestone of the curve: stage I not trained again, its export after epoch 1 recorded and used; the
    # variant's unsupervised row (sadm_nnunet_score with SADM's frozen copy of that denoiser) is the curve's row
    milestone = run_quick("quality_benchmark.py", tmp_path, "--tag", "Curve", "--stage1-trainer",
                          "Stage1CurveQuickTrainer", "--stage1-epoch", "1", output="milestone.json")
    folder = work / "quickCurve_seed0"
    assert retrained(folder, work / "quick_seed0") == ["train_sadm"]
    plan_sadm = json.loads((folder / "steps" / "plan_sadm.json").read_text())["argv"]
    assert plan_sadm[plan_sadm.index("--ddpm-trainer") + 1:][:3] == ["Stage1CurveQuickTrainer", "--ddpm-epoch", "1"]
    sadm_plans = next((folder / "nnUNet_results").glob("*/QualityQuickSADMTrainer__*/plans.json"))
    stage1 = json.loads(sadm_plans.read_text())["configurations"]["2d_sadm"]["sadm"]["stage1"]
    assert (stage1["trainer"], stage1["epoch"]) == ("Stage1CurveQuickTrainer", 1)
    for kind in ("tumour", "ms", "stroke"):
        assert milestone["per_seed"]["0"]["unsupervised"][kind]["mean"]["best_dice"] == pytest.approx(
            rows["epoch_1"]["kinds"][kind]["best_dice"], abs=1e-6)
    assert milestone["per_seed"]["0"]["nnunet"] == results["per_seed"]["0"]["nnunet"]

    # the union of the labelled and the self-supervised SADM (offline, the base run's two SADM models): its rows
    # are the base run's where they are the same scores, and its union score is beta * u + (1 - beta) * max(p, p)
    import nibabel as nib
    import numpy as np

    union = run_quick("quality_ensemble.py", tmp_path, output="union.json")
    for key, base_key in (("nnunet", "nnunet"), ("late_fusion", "late_fusion"), ("sadm", "sadm"),
                          ("sadm_self", "sadm_draem")):
        assert union["per_seed"]["0"][key] == results["per_seed"]["0"][base_key]
    scores = work / "quick_seed0" / "scores"
    case = sorted(p.name[:-len("_score.nii.gz")] for p in (scores / "sadm_draem").glob("*_score.nii.gz"))[0]
    u, p_labelled, p_self, fused = (nib.load(str(f)).get_fdata() for f in (
        scores / "sadm" / f"{case}_unsupervised.nii.gz", scores / "sadm_segmentation" / f"{case}_score.nii.gz",
        scores / "sadm_draem_segmentation" / f"{case}_score.nii.gz",
        work / "union_quick_seed0+quick_seed0" / "union" / f"{case}_score.nii.gz"))
    beta = json.loads((scores / "sadm" / "score_settings.json").read_text())["beta"]
    assert np.allclose(fused, beta * u + (1 - beta) * np.maximum(p_labelled, p_self), atol=1e-6)
    # a labelled SADM on another stage I (the curve's milestone) shares no unsupervised map with the base run's
    # self-supervised SADM: refused, naming both files
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "quality_ensemble.py"), "--quick", "--workdir",
                           str(work), "--labelled-tag", "Curve"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "use different stage-I models" in proc.stderr
    assert "quickCurve_seed0/scores/sadm/" in proc.stderr and "quick_seed0/scores/sadm_draem/" in proc.stderr
