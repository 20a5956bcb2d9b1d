"""Metrics against independent computations (scikit-learn, brute force over all thresholds), threshold selection
without leaks, folder checks and the sadm_nnunet_evaluate command end to end."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from sadm_nnunet.commands.evaluate import main as evaluate_main
from sadm_nnunet.evaluation import (METRICS, EvaluationError, RankedCase, auroc, average_precision, best_dice,
                                    case_metrics, choose_threshold, dice_at, evaluate, fraction_above, summarise,
                                    threshold_at_fpr)


# --- independent reference computations ------------------------------------------------------------------------

def brute_dice(score: np.ndarray, ref: np.ndarray, t: float) -> float:
    pred = score >= t
    return 2 * np.sum(pred & ref) / (pred.sum() + ref.sum())


def brute_best_dice(score: np.ndarray, ref: np.ndarray) -> float:
    return max(brute_dice(score, ref, t) for t in np.unique(score))


def random_cases(seed: int, count: int = 40):
    """Score/reference pairs of many kinds: continuous, heavy ties, all-zero scores, empty and full references."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        shape = tuple(rng.integers(2, 9, size=3))
        ref = rng.random(shape) < rng.choice([0.0, 0.05, 0.3, 1.0], p=[0.1, 0.4, 0.4, 0.1])
        kind = i % 4
        if kind == 0:
            score = rng.random(shape).astype(np.float32) + 0.3 * ref
        elif kind == 1:  # ties: few distinct values
            score = np.round(rng.random(shape) * 3 + ref).astype(np.float32) / 4
        elif kind == 2:
            score = np.zeros(shape, np.float32)
        else:  # float64 scores, multi-label reference
            score = rng.normal(size=shape) + ref
            ref = ref * rng.integers(1, 4, size=shape)
        yield score, ref


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_scikit_learn_and_brute_force(seed):
    checked = 0
    for score, ref in random_cases(seed):
        case = RankedCase.from_volume(score, ref)
        y = ref.ravel() != 0
        s = score.ravel()
        if not y.any():
            assert best_dice(case) == (None, None) and average_precision(case) is None and auroc(case) is None
            continue
        dice, t = best_dice(case)
        assert dice == pytest.approx(brute_best_dice(s, y), abs=1e-15)
        assert brute_dice(s, y, t) == pytest.approx(dice, abs=1e-15)
        assert average_precision(case) == pytest.approx(average_precision_score(y, s), abs=1e-12)
        if y.all():
            assert auroc(case) is None
        else:
            assert auroc(case) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        for t in [s.min(), np.median(s), s.max(), s.max() + 1, 0.5]:
            assert dice_at(case, t) == pytest.approx(brute_dice(s, y, t), abs=1e-15)
            assert fraction_above(case, t) == np.mean(s >= t)
        checked += 1
    assert checked > 20


def test_hand_made_case_with_ties():
    score = np.array([0.9, 0.8, 0.8, 0.1])
    ref = np.array([1, 0, 2, 0])
    case = RankedCase.from_volume(score, ref)
    # thresholds 0.9: TP 1 of 1 predicted -> 2/3; 0.8: TP 2 of 3 -> 4/5; 0.1: TP 2 of 4 -> 4/6
    assert best_dice(case) == (pytest.approx(0.8), 0.8)
    assert average_precision(case) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert auroc(case) == pytest.approx(3.5 / 4)  # pairs: 0.9>0.8, 0.9>0.1, 0.8=0.8 (1/2), 0.8>0.1
    assert dice_at(case, 0.85) == pytest.approx(2 / 3)


def test_all_zero_scores_and_empty_references():
    ref = np.zeros((4, 4, 4), np.uint8)
    ref[0, 0, :2] = 1
    zero = RankedCase.from_volume(np.zeros(ref.shape, np.float32), ref)
    assert best_dice(zero) == (pytest.approx(2 * 2 / (64 + 2)), 0.0)  # the only threshold predicts everything
    assert average_precision(zero) == pytest.approx(2 / 64)
    assert auroc(zero) == 0.5
    healthy = RankedCase.from_volume(np.linspace(0, 1, 64).reshape(4, 4, 4), np.zeros((4, 4, 4)))
    m = case_metrics(healthy, threshold=0.5)
    assert m["best_dice"] is None and m["auprc"] is None and m["auroc"] is None
    assert m["dice_at_threshold"] is None
    assert m["fpr_healthy"] == 32 / 64
    assert case_metrics(zero, threshold=0.5)["fpr_healthy"] is None  # only cases with an empty reference


def test_region_restricts_the_evaluated_voxels():
    rng = np.random.default_rng(5)
    score, ref = rng.random((6, 6, 6)), rng.random((6, 6, 6)) < 0.2
    region = rng.random((6, 6, 6)) < 0.5
    case = RankedCase.from_volume(score, ref, region)
    assert case.n == region.sum() and case.n_positive == (ref & region).sum()
    assert case.positives_outside_region == (ref & ~region).sum() > 0
    assert average_precision(case) == pytest.approx(average_precision_score(ref[region], score[region]), abs=1e-12)
    assert auroc(case) == pytest.approx(roc_auc_score(ref[region], score[region]), abs=1e-12)


def test_pooled_threshold_maximises_dice_over_all_validation_voxels():
    rng = np.random.default_rng(7)
    val = [(rng.random((5, 5, 5)) + 0.4 * (r := rng.random((5, 5, 5)) < 0.2), r) for _ in range(4)]
    val.append((rng.random((5, 5, 5)), np.zeros((5, 5, 5), bool)))  # a healthy validation case adds false positives
    t, pooled_dice = choose_threshold([RankedCase.from_volume(s, r) for s, r in val])
    s_all = np.concatenate([s.ravel() for s, _ in val])
    r_all = np.concatenate([r.ravel() for _, r in val])
    assert pooled_dice == pytest.approx(brute_best_dice(s_all, r_all), abs=1e-15)
    assert brute_dice(s_all, r_all, t) == pytest.approx(pooled_dice, abs=1e-15)
    with pytest.raises(EvaluationError, match="no reference voxels"):
        choose_threshold([RankedCase.from_volume(s, np.zeros_like(r)) for s, r in val])


def test_threshold_does_not_depend_on_the_evaluated_cases():
    rng = np.random.default_rng(11)

    def cases(prefix, n, signal):
        out = {}
        for i in range(n):
            ref = rng.random((6, 6, 6)) < 0.15
            out[f"{prefix}{i}"] = RankedCase.from_volume(rng.random((6, 6, 6)) + signal * ref, ref)
        return out

    validation = cases("val", 3, 0.5)
    test_a = cases("test", 4, 0.5)
    test_b = {k: RankedCase(c.scores * 3 - 1, c.positives * 3 - 1) for k, c in test_a.items()}  # other scores
    report_a, report_b = evaluate(test_a, validation), evaluate(test_b, validation)
    assert report_a["threshold"] == report_b["threshold"] == choose_threshold(list(validation.values()))[0]
    assert report_a["threshold_source"] == "validation" and report_a["validation_cases"] == sorted(validation)
    assert report_a["per_case"] != report_b["per_case"]
    # the evaluated cases would pick another threshold
    assert choose_threshold(list(test_b.values()))[0] != report_b["threshold"]
    with pytest.raises(EvaluationError, match=r"both evaluated and used to choose the threshold: test0"):
        evaluate(test_a, {"test0": validation["val0"]})


def test_threshold_at_false_positive_rate_by_hand():
    healthy = [RankedCase.from_volume(np.arange(100.0) / 100, np.zeros(100))]  # scores 0.00 .. 0.99
    assert threshold_at_fpr(healthy, 0.01) == 0.99  # flags 1 voxel of 100
    assert threshold_at_fpr(healthy, 0.05) == 0.95  # flags 5 (0.95 .. 0.99)
    assert threshold_at_fpr(healthy, 0.0) > 0.99 and fraction_above(healthy[0], threshold_at_fpr(healthy, 0.0)) == 0
    # the highest 10 of 200 pooled voxels tie with 10 lower ones: 5% would split the tie, so the threshold moves up
    tied = [RankedCase.from_volume(np.r_[np.zeros(80), np.full(20, 0.5)], np.zeros(100)),
            RankedCase.from_volume(np.r_[np.zeros(99), [0.9]], np.zeros(100))]
    assert threshold_at_fpr(tied, 0.05) == 0.9
    assert threshold_at_fpr(tied, 0.105) == 0.5  # 21 allowed: all 20 tied voxels and the 0.9 one
    with pytest.raises(EvaluationError, match="have reference voxels"):
        threshold_at_fpr([RankedCase.from_volume(np.array([0.1, 0.2]), np.array([0, 1]))], 0.01)
    with pytest.raises(EvaluationError, match=r"must lie in \[0, 1\); found 1.5"):
        threshold_at_fpr(healthy, 1.5)


def test_false_positive_rate_thresholds_come_from_healthy_validation_brains_only():
    """The test brains cannot move a threshold chosen at a false-positive rate: only the healthy validation brains
    decide it; the metrics at it are the Dice of each evaluated case and, for healthy cases, the flagged fraction."""
    rng = np.random.default_rng(5)
    healthy_validation = {f"hv{i}": RankedCase.from_volume(rng.random(400), np.zeros(400)) for i in range(2)}
    ref = rng.random(300) < 0.1
    lesion_scores = rng.random(300) + 0.5 * ref
    lesion = RankedCase.from_volume(lesion_scores, ref)
    healthy_test = RankedCase.from_volume(rng.random(300), np.zeros(300))
    report = evaluate({"lesion": lesion, "healthy": healthy_test}, healthy_validation=healthy_validation)
    expected = {k: threshold_at_fpr(list(healthy_validation.values()), r)
                for r, k in ((0.01, "dice_at_fpr1"), (0.05, "dice_at_fpr5"))}
    assert {k: v["threshold"] for k, v in report["fpr_thresholds"].items()} == expected
    assert report["healthy_validation_cases"] == ["hv0", "hv1"]
    t5 = expected["dice_at_fpr5"]
    assert report["per_case"]["lesion"]["dice_at_fpr5"] == pytest.approx(brute_dice(lesion_scores, ref, t5))
    pooled = np.concatenate([c.scores for c in healthy_validation.values()])
    assert np.mean(pooled >= t5) <= 0.05 and np.mean(pooled >= np.max(pooled[pooled < t5])) > 0.05  # lowest such
    assert report["per_case"]["healthy"]["fpr_healthy_at_fpr5"] == fraction_above(healthy_test, t5)
    assert report["per_case"]["lesion"]["fpr_healthy_at_fpr5"] is None
    assert report["mean"]["dice_at_fpr1"] == report["per_case"]["lesion"]["dice_at_fpr1"]
    # other test brains (scores shifted and scaled, a brain flagged everywhere) leave the thresholds unchanged
    other = {"lesion": RankedCase(lesion.scores * 5 + 2, lesion.positives * 5 + 2),
             "hot": RankedCase.from_volume(np.full(300, 0.999), np.zeros(300))}
    assert evaluate(other, healthy_validation=healthy_validation)["fpr_thresholds"] == report["fpr_thresholds"]
    # ... while other healthy validation brains move them
    moved = {"hv0": RankedCase(healthy_validation["hv0"].scores * 0.5, healthy_validation["hv0"].positives)}
    assert evaluate(other, healthy_validation=moved)["fpr_thresholds"] != report["fpr_thresholds"]
    with pytest.raises(EvaluationError, match=r"false-positive-rate thresholds: healthy"):
        evaluate({"healthy": healthy_test}, healthy_validation={"healthy": healthy_test})
    assert "dice_at_fpr1" not in evaluate({"lesion": lesion})["mean"]


def test_without_validation_no_threshold_metrics():
    case = RankedCase.from_volume(np.array([0.2, 0.7]), np.array([0, 1]))
    report = evaluate({"a": case})
    assert report["threshold"] is None and report["per_case"]["a"]["dice_at_threshold"] is None
    assert evaluate({"a": case}, threshold=0.5)["per_case"]["a"]["dice_at_threshold"] == 1.0


def test_summary_ignores_undefined_values():
    per_case = {"a": {k: None for k in METRICS}, "b": dict.fromkeys(METRICS, 0.5), "c": dict.fromkeys(METRICS, 1.0)}
    per_case["a"]["fpr_healthy"] = 0.25
    mean, std, count = summarise(per_case)
    assert mean["best_dice"] == 0.75 and std["best_dice"] == 0.25 and count["best_dice"] == 2
    assert mean["fpr_healthy"] == pytest.approx(1.75 / 3) and count["fpr_healthy"] == 3
    assert summarise({"a": {k: None for k in METRICS}})[0]["auroc"] is None


# --- folders and the command ----------------------------------------------------------------------------------

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def make_folders(root: Path, prefix: str, n: int, seed: int, shape=(10, 12, 9)) -> dict:
    """ref/, pred/, mask/ with n cases; every third case healthy. Returns the arrays for direct computation."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for i in range(n):
        brain = np.zeros(shape, bool)
        brain[1:-1, 1:-1, 1:-1] = True
        ref = np.zeros(shape, np.uint8)
        if i % 3:
            ref[3:6, 4:7, 2:5] = rng.integers(1, 3)
        score = np.where(brain, rng.random(shape) * 0.6 + 0.4 * (ref > 0), 0).astype(np.float32)
        case = f"{prefix}{i:02d}"
        save(root / "ref" / f"{case}.nii.gz", ref)
        save(root / "pred" / f"{case}.nii.gz", score)
        save(root / "mask" / f"{case}.nii.gz", brain.astype(np.uint8))
        arrays[case] = (score, ref, brain)
    return arrays


@pytest.fixture
def folders(tmp_path):
    test = make_folders(tmp_path / "test", "case", 6, 0)
    val = make_folders(tmp_path / "val", "val", 5, 1)
    return tmp_path, test, val


def test_command_end_to_end(folders):
    root, test, val = folders
    out = root / "out" / "metrics.json"
    evaluate_main(["-ref", str(root / "test/ref"), "-pred", str(root / "test/pred"), "-val-ref", str(root / "val/ref"),
                   "-val-pred", str(root / "val/pred"), "-mask", str(root / "test/mask"),
                   "-val-mask", str(root / "val/mask"), "-o", str(out)])
    report = json.loads(out.read_text())
    assert set(report) >= {"per_case", "mean", "std", "threshold"}
    assert set(report["mean"]) == set(report["std"]) == set(METRICS)
    # threshold: brute force over the pooled validation voxels inside the masks
    s_val = np.concatenate([s[b] for s, r, b in val.values()])
    r_val = np.concatenate([r[b] != 0 for s, r, b in val.values()])
    t = report["threshold"]
    assert brute_dice(s_val, r_val, t) == pytest.approx(brute_best_dice(s_val, r_val), abs=1e-15)
    for case, (score, ref, brain) in test.items():
        m = report["per_case"][case]
        s, y = score[brain], ref[brain] != 0
        if y.any():
            assert m["best_dice"] == pytest.approx(brute_best_dice(s, y), abs=1e-12)
            assert m["auprc"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
            assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
            assert m["dice_at_threshold"] == pytest.approx(brute_dice(s, y, t), abs=1e-12)
            assert m["fpr_healthy"] is None
        else:
            assert m["best_dice"] is None and m["fpr_healthy"] == pytest.approx(np.mean(s >= t))
    values = [m["best_dice"] for m in report["per_case"].values() if m["best_dice"] is not None]
    assert report["mean"]["best_dice"] == pytest.approx(np.mean(values))
    assert report["std"]["best_dice"] == pytest.approx(np.std(values))
    assert not [p for p in out.parent.iterdir() if p.name != "metrics.json"]  # no temporary files left


def test_console_script_runs(folders):
    root, _, _ = folders
    out = root / "m.json"
    proc = subprocess.run([str(Path(sys.executable).parent / "sadm_nnunet_evaluate"), "-ref", str(root / "test/ref"),
                           "-pred", str(root / "test/pred"), "-o", str(out), "--threshold", "0.5"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["threshold"] == 0.5


def run_error(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        evaluate_main(args)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_mismatched_cases_shapes_and_geometry_name_the_case(folders, capsys):
    root, _, _ = folders
    base = ["-ref", str(root / "test/ref"), "-pred", str(root / "test/pred"), "-o", str(root / "e.json")]
    (root / "test/pred/case03.nii.gz").rename(root / "test/pred/other.nii.gz")
    err = run_error(base, capsys)
    assert "have no score map" in err and "case03" in err and "have no reference" in err and "other" in err
    (root / "test/pred/other.nii.gz").unlink()
    save(root / "test/pred/case03.nii.gz", np.zeros((10, 12, 8), np.float32))
    err = run_error(base, capsys)
    assert "case 'case03'" in err and "shape (10, 12, 8), expected (10, 12, 9)" in err
    save(root / "test/pred/case03.nii.gz", np.zeros((10, 12, 9), np.float32), np.diag([2.0, 2.0, 3.0, 1.0]))
    err = run_error(base, capsys)
    assert "case 'case03'" in err and "spacing (2, 2, 3), expected (2, 2, 2)" in err
    shifted = AFFINE.copy()
    shifted[:3, 3] = [5, 0, 0]
    save(root / "test/pred/case03.nii.gz", np.zeros((10, 12, 9), np.float32), shifted)
    err = run_error(base, capsys)
    assert "case 'case03'" in err and "origin (5, 0, 0), expected (0, 0, 0)" in err
    save(root / "test/pred/case03.nii.gz", np.full((10, 12, 9), np.nan, np.float32))
    assert "case03.nii.gz: non-finite voxels: found 1080 NaN/inf voxel(s)" in run_error(base, capsys)
    save(root / "test/pred/case03.nii.gz", np.zeros((10, 12, 9), np.float32))
    save(root / "test/ref/case04.nii.gz", np.full((10, 12, 9), 0.5, np.float32))
    err = run_error(base, capsys)
    assert "case 'case04'" in err and "non-integer value 0.5" in err
    assert not (root / "e.json").exists()


def test_leaks_and_inconsistent_options_are_refused(folders, capsys):
    root, _, _ = folders
    base = ["-ref", str(root / "test/ref"), "-pred", str(root / "test/pred"), "-o", str(root / "e.json")]
    same = ["-val-ref", str(root / "test/ref"), "-val-pred", str(root / "test/pred")]
    assert "6 case(s) are both evaluated and used to choose the threshold" in run_error(base + same, capsys)
    val = ["-val-ref", str(root / "val/ref"), "-val-pred", str(root / "val/pred")]
    assert "not both" in run_error(base + val + ["--threshold", "0.3"], capsys)
    assert "-mask and -val-mask go together" in run_error(base + val + ["-mask", str(root / "test/mask")], capsys)
    assert "both -val-ref and -val-pred" in run_error(base + val[:2], capsys)
    # the same case names in the validation set (copied folder) are refused too
    import shutil
    shutil.copytree(root / "test", root / "copy")
    err = run_error(base + ["-val-ref", str(root / "copy/ref"), "-val-pred", str(root / "copy/pred")], capsys)
    assert "both evaluated and used to choose the threshold" in err and "case00" in err
    assert not (root / "e.json").exists()


def test_pred_suffix_and_image_masks(tmp_path):
    """Score files named CASE_ssim.nii.gz; masks given as skull-stripped images CASE_0000.nii.gz; reference voxels
    outside the mask are counted in the report."""
    arrays = make_folders(tmp_path, "c", 3, 4)
    for case, (score, ref, brain) in arrays.items():
        (tmp_path / "pred" / f"{case}.nii.gz").rename(tmp_path / "pred" / f"{case}_ssim.nii.gz")
        save(tmp_path / "images" / f"{case}_0000.nii.gz", brain * np.float32(100.0))
    ref = arrays["c02"][1].copy()
    ref[0, 0, :2] = 1  # outside the brain
    save(tmp_path / "ref" / "c02.nii.gz", ref)
    out = tmp_path / "o.json"
    evaluate_main(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "--pred-suffix", "_ssim",
                   "-mask", str(tmp_path / "images"), "-o", str(out)])
    report = json.loads(out.read_text())
    assert sorted(report["per_case"]) == sorted(arrays) and report["region"] == "brain mask"
    score, ref, brain = arrays["c01"]
    assert report["per_case"]["c01"]["region_voxels"] == brain.sum()
    assert [m["reference_voxels_outside_region"] for _, m in sorted(report["per_case"].items())] == [0, 0, 2]


def test_ignore_label_voxels_are_not_evaluated(tmp_path):
    """WMH-style references (1 = lesion, 2 = nnU-Net's ignore label): with --ignore-label 2 those voxels count
    neither as anomalies nor as normal voxels; without it they are anomalies."""
    case = "w01"  # case 0 of make_folders is healthy
    score, ref, brain = make_folders(tmp_path, "w", 2, 5)[case]
    ref = (ref != 0).astype(np.uint8)
    ignored = (ref == 0) & (score > np.percentile(score, 90))  # high-scoring normal voxels, to be ignored
    labelled = np.where(ignored, 2, ref).astype(np.uint8)
    save(tmp_path / "ref" / f"{case}.nii.gz", labelled)
    with_ignore, without = tmp_path / "a.json", tmp_path / "b.json"
    base = ["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred")]
    evaluate_main(base + ["--ignore-label", "2", "-o", str(with_ignore)])
    evaluate_main(base + ["-o", str(without)])
    kept = json.loads(with_ignore.read_text())["per_case"][case]
    assert kept["region_voxels"] == ref.size - ignored.sum()
    assert kept["reference_voxels"] == (ref != 0).sum()
    keep = ~ignored.ravel()
    expected = average_precision_score((ref.ravel() != 0)[keep], score.ravel()[keep])
    assert kept["auprc"] == pytest.approx(expected, abs=1e-12)
    assert json.loads(without.read_text())["per_case"][case]["reference_voxels"] == (labelled != 0).sum()


def test_a_score_folder_with_other_cases_serves_as_pred_and_val_pred(folders, capsys):
    """sadm_nnunet_score writes validation and test cases into one folder: each reference folder picks its cases,
    the other score maps are ignored and counted."""
    root, test, val = folders
    import shutil
    mixed = root / "mixed"
    for folder in (root / "test/pred", root / "val/pred"):
        shutil.copytree(folder, mixed, dirs_exist_ok=True)
    out = root / "out" / "mixed.json"
    evaluate_main(["-ref", str(root / "test/ref"), "-pred", str(mixed), "-val-ref", str(root / "val/ref"),
                   "-val-pred", str(mixed), "-o", str(out)])
    report = json.loads(out.read_text())
    assert sorted(report["per_case"]) == sorted(test) and report["validation_cases"] == sorted(val)
    assert report["ignored_score_maps"] == {"pred": 5, "val_pred": 6}
    separate = root / "out" / "separate.json"
    evaluate_main(["-ref", str(root / "test/ref"), "-pred", str(root / "test/pred"), "-val-ref", str(root / "val/ref"),
                   "-val-pred", str(root / "val/pred"), "-o", str(separate)])
    expected = json.loads(separate.read_text())
    assert report["threshold"] == expected["threshold"] and report["per_case"] == expected["per_case"]
    assert expected["ignored_score_maps"] == {"pred": 0, "val_pred": 0}
    assert "Ignored 5 score map(s) in -pred" in capsys.readouterr().out
    (root / "test/ref/case00.nii.gz").rename(root / "test/ref/nocase.nii.gz")  # a reference without score map
    err = run_error(["-ref", str(root / "test/ref"), "-pred", str(mixed), "--threshold", "0.5", "-o", str(out)],
                    capsys)
    assert "1 reference case(s) have no score map" in err and "nocase" in err


def test_output_inside_an_input_folder_or_a_folder_is_refused(folders, capsys):
    root, _, _ = folders
    reference = root / "test/ref/case01.nii.gz"
    before = reference.read_bytes()
    inputs = ["-ref", str(root / "test/ref"), "-pred", str(root / "test/pred"), "--threshold", "0.5",
              "-mask", str(root / "test/mask"), "--images", str(root / "images")]
    for output, option in ((reference, "-ref"), (root / "test/pred/new.json", "-pred"),
                           (root / "test/mask/sub/m.json", "-mask"), (root / "images", "--images")):
        err = run_error(inputs + ["-o", str(output)], capsys)
        assert f"-o {output} " in err and f"input folder {option} " in err and len(err.strip().splitlines()) == 1
    assert reference.read_bytes() == before and not (root / "test/pred/new.json").exists()
    (root / "a_folder").mkdir()
    err = run_error(inputs + ["-o", str(root / "a_folder")], capsys)
    assert "is a folder" in err and len(err.strip().splitlines()) == 1


def test_truncated_and_non_finite_files_are_refused_with_the_file_named(folders, capsys):
    root, _, _ = folders
    base = ["-ref", str(root / "test/ref"), "-pred", str(root / "test/pred"), "--threshold", "0.5",
            "-o", str(root / "e.json")]
    score = root / "test/pred/case02.nii.gz"
    data = score.read_bytes()
    score.write_bytes(data[:len(data) // 2])
    err = run_error(base, capsys)
    assert f"{score}: truncated: found " in err and "bytes (header: shape [10, 12, 9], float32)" in err
    assert len(err.strip().splitlines()) == 1
    score.write_bytes(data)
    reference = np.zeros((10, 12, 9), np.float32)
    reference[0, 0, :2] = [np.nan, np.inf]
    save(root / "test/ref/case04.nii.gz", reference)
    err = run_error(base, capsys)
    assert "case04.nii.gz: non-finite voxels: found 2 NaN/inf voxel(s), expected finite values" in err
    assert not (root / "e.json").exists()
