"""The comparison experiment's parts: the generated cohort, the resumable steps, the segmentation scores and the
table."""
from __future__ import annotations

import json
import pickle
import sys
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest

from conftest import HEALTHY_T1
from sadm_nnunet.datasets.healthy_cohort import load_brains
from sadm_nnunet.experiment.cohort import (HEALTHY, HEALTHY_VALIDATION, VALIDATION, CohortSpec, build_cohort,
                                           load_cohort, resample_brain)
from sadm_nnunet.experiment.pipeline import ExperimentSpec, results_table
from sadm_nnunet.experiment.steps import StepFailed, Steps

SPEC = CohortSpec(name="T", healthy_id=701, labelled_id=702, seen_kind="tumour", unseen_kinds=("stroke",),
                  num_healthy=2, num_labelled=2, num_validation=1, num_test=2, num_healthy_test=1, num_healthy_validation=1,
                  zoom=0.5, spacing=6.0, deformation=1.0, seed=4)


@pytest.fixture(scope="module")
def brains():
    loaded = [resample_brain(b, 2 / 3) for b in load_brains(HEALTHY_T1)]  # 3 mm sources, 6 mm subjects
    return loaded[:4], loaded[4:]


@pytest.fixture(scope="module")
def cohort(brains, tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    return build_cohort(SPEC, *brains, root / "raw", root / "evaluation")


def test_cohort_layout_labels_and_geometry(cohort, brains):
    healthy = cohort.raw / SPEC.healthy_dataset
    labelled = cohort.raw / SPEC.labelled_dataset
    assert sorted(p.name for p in (healthy / "imagesTr").iterdir()) == ["healthy_000_0000.nii.gz",
                                                                         "healthy_001_0000.nii.gz"]
    assert json.loads((labelled / "dataset.json").read_text())["labels"] == {"background": 0, "lesion": 1}
    assert json.loads((healthy / "dataset.json").read_text())["labels"] == {"background": 0, "brain": 1}
    assert cohort.sets == {VALIDATION: ["validation_000"], "tumour": ["tumour_000", "tumour_001"],
                           "stroke": ["stroke_000", "stroke_001"], HEALTHY: ["healthy_000"],
                           HEALTHY_VALIDATION: ["healthy_validation_000"]}
    for s, cases in cohort.sets.items():
        for case in cases:
            image = nib.load(cohort.images / f"{case}_0000.nii.gz")
            label = np.asarray(nib.load(cohort.labels(s) / f"{case}.nii.gz").dataobj)
            assert image.shape == label.shape and np.allclose(image.header.get_zooms(), 6.0)
            brain = np.asarray(image.dataobj) != 0
            # lesion sets carry a lesion inside the brain; healthy test brains have an empty label
            assert (label.sum() > 0) == (s not in (HEALTHY, HEALTHY_VALIDATION))
            assert (label.astype(bool) & ~brain).sum() <= 0.05 * label.sum()
    manifest = json.loads((cohort.evaluation / "manifest.json").read_text())
    assert set(manifest["test_brains"]) == {b[0] for b in brains[1]}
    # evaluation subjects come from the test brains only
    evaluation_sources = {r["source_brain"] for r in manifest["cases"].values()
                          if r["set"] in (VALIDATION, "tumour", "stroke", HEALTHY, HEALTHY_VALIDATION)}
    assert evaluation_sources <= {b[0] for b in brains[1]}


def test_cohort_is_reproducible_and_reloadable(cohort, brains, tmp_path, capsys):
    import subprocess

    from sadm_nnunet.io_utils import HOST_TAG

    dead = subprocess.Popen(["true"])
    dead.wait()  # the writer of the leftovers below was killed (its process id no longer runs)
    leftovers = [tmp_path / "raw" / SPEC.healthy_dataset / "imagesTr" / f".sadm-tmp-{dead.pid}-{HOST_TAG}-a.nii.gz.1",
                 tmp_path / "evaluation" / "images" / f".sadm-tmp-{dead.pid}-{HOST_TAG}-b.nii.gz.2"]
    for path in leftovers:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"half")
    # without the healthy validation set: every other set's subjects stay the same (it is drawn after them)
    without = replace(SPEC, num_healthy_validation=0)
    again = build_cohort(without, *brains, tmp_path / "raw", tmp_path / "evaluation")
    assert "Removed 2 temporary file(s)" in capsys.readouterr().out and not any(p.exists() for p in leftovers)
    assert HEALTHY_VALIDATION not in again.sets
    for case in ("tumour_001", "stroke_000", "validation_000", "healthy_000"):
        a = np.asarray(nib.load(cohort.images / f"{case}_0000.nii.gz").dataobj)
        b = np.asarray(nib.load(again.images / f"{case}_0000.nii.gz").dataobj)
        np.testing.assert_array_equal(a, b)
    assert load_cohort(without, tmp_path / "raw", tmp_path / "evaluation").sets == again.sets
    assert load_cohort(SPEC, tmp_path / "raw", tmp_path / "evaluation") is None  # another specification
    # a manifest from before num_healthy_validation existed still loads (the field's default, 0, is implied)
    manifest = tmp_path / "evaluation" / "manifest.json"
    recorded = json.loads(manifest.read_text())
    del recorded["spec"]["num_healthy_validation"]
    manifest.write_text(json.dumps(recorded))
    assert load_cohort(without, tmp_path / "raw", tmp_path / "evaluation").sets == again.sets
    other = CohortSpec(**{**SPEC.__dict__, "seed": 5})
    assert load_cohort(other, tmp_path / "raw", tmp_path / "evaluation") is None


def test_cohort_spec_errors():
    with pytest.raises(ValueError, match="unknown lesion kind 'glioma'"):
        CohortSpec(unseen_kinds=("glioma",))
    with pytest.raises(ValueError, match="also listed as unseen"):
        CohortSpec(seen_kind="ms", unseen_kinds=("ms",))


def test_steps_skip_finished_and_rerun_failed(tmp_path):
    marker = tmp_path / "count.txt"
    script = f"import pathlib; p = pathlib.Path({str(marker)!r}); p.write_text(p.read_text() + 'x' if p.exists() else 'x')"
    env = {"PATH": "/usr/bin:/bin"}
    out = open(tmp_path / "terminal.txt", "w")
    steps = Steps(tmp_path, env, total=3, out=out)
    steps.command("one", "append once", [sys.executable, "-c", script])
    assert steps.python("two", "compute", lambda: {"value": 7}) == {"value": 7}
    with pytest.raises(StepFailed, match=r"(?s)exited with code 3 .*boom"):
        steps.command("three", "fails", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])
    # a second run skips the finished steps (the command does not run again, the stored result comes back)
    again = Steps(tmp_path, env, total=3, out=out)
    again.command("one", "append once", [sys.executable, "-c", script])
    assert again.python("two", "compute", lambda: {"value": 8}) == {"value": 7}
    assert marker.read_text() == "x"
    assert not again.done("three")
    calls = []
    again.command("three", "now passes", [sys.executable, "-c", "print('ok')"], resume=lambda: calls.append(1) or [])
    assert again.done("three") and calls == [1]
    out.close()
    terminal = (tmp_path / "terminal.txt").read_text()
    assert "[1/3] append once (done earlier, skipped)" in terminal
    assert "boom" in (tmp_path / "log.txt").read_text()


def test_results_table_rows_and_columns():
    spec = ExperimentSpec(cohort=SPEC, stage1_trainer="a", sadm_trainer="b", plain_trainer="c", draem_trainer="d")
    metrics = {"best_dice": 0.5, "auprc": 0.25, "dice_at_threshold": None, "fpr_healthy": 0.125}
    reports = {m.key: {s: {"mean": metrics} for s in SPEC.test_sets} for m in spec.methods()}
    text = results_table(spec, reports)
    lines = text.splitlines()
    assert len(lines) == 2 + 6
    assert lines[0].startswith("| method | tumour (seen): ⌈Dice⌉ | AUPRC | Dice@thr | stroke (unseen): ⌈Dice⌉")
    assert lines[0].endswith("| healthy: FPR |")
    assert "| nnU-Net, image only | 0.500 | 0.250 | n/a | 0.500 | 0.250 | n/a | 0.125 |" in lines


def test_segmentation_scores_are_the_beta_0_score_in_the_brain(tmp_path):
    """write_segmentation_scores: nnUNetv2_predict's CASE.npz -> CASE_score (p_fg inside the image's nonzero
    region, 0 outside, in the image's geometry) and score_settings.json with beta 0, as sadm_nnunet_score --beta 0."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from sadm_nnunet.experiment.pipeline import write_segmentation_scores

    images, predictions, out = tmp_path / "images", tmp_path / "pred", tmp_path / "scores"
    images.mkdir()
    predictions.mkdir()
    image = np.zeros((6, 7, 8), np.float32)
    image[1:5, 1:6, 1:7] = 1 + np.random.default_rng(0).random((4, 5, 6))
    image[1:3, 1:3, :] = 0  # a notch at the edge of the brain: inside nnU-Net's crop box, outside the brain
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), images / "c0_0000.nii.gz")
    raw, properties = SimpleITKIO().read_images([str(images / "c0_0000.nii.gz")])
    p = np.zeros(image.shape, np.float32)  # p_fg as nibabel orders it; nnU-Net's arrays are (z, y, x)
    p[1:5, 1:6, 1:7] = np.random.default_rng(1).random((4, 5, 6))
    np.savez(predictions / "c0.npz", probabilities=np.stack([1 - p, p]).transpose(0, 3, 2, 1))
    properties["shape_before_cropping"] = raw.shape[1:]
    (predictions / "c0.pkl").write_bytes(pickle.dumps(properties))
    (predictions / "plans.json").write_text(json.dumps({
        "dataset_name": "Dataset1_X", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
        "label_manager": "LabelManager", "configurations": {}, "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2]}))
    (predictions / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}, "file_ending": ".nii.gz",
                                                           "labels": {"background": 0, "lesion": 1}}))
    assert write_segmentation_scores(predictions, images, out) == 1
    assert json.loads((out / "score_settings.json").read_text())["beta"] == 0.0
    written = nib.load(out / "c0_score.nii.gz")
    np.testing.assert_allclose(written.affine, affine)
    np.testing.assert_allclose(np.asarray(written.dataobj), np.where(image != 0, p, 0), atol=1e-6)
    assert p[1:3, 1:3, 1:7].any()  # the notch had probability, and the score is 0 there
    assert not list(out.glob("*_probability*"))


def test_late_fusion_is_the_same_beta_on_plain_nnunet_probability(tmp_path):
    """write_late_fusion: beta * CASE_unsupervised (from sadm_nnunet_score's folder, with its beta) + (1 - beta) *
    a segmentation's beta-0 CASE_score, in the maps' geometry; a component filter or other geometry is refused."""
    from sadm_nnunet.experiment.pipeline import write_late_fusion

    unsupervised, segmentation, out = tmp_path / "sadm", tmp_path / "nnunet", tmp_path / "late"
    rng = np.random.default_rng(2)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    u, p = rng.random((5, 6, 7)).astype(np.float32), rng.random((5, 6, 7)).astype(np.float32)
    for folder, name, volume in ((unsupervised, "c0_unsupervised", u), (segmentation, "c0_score", p)):
        folder.mkdir()
        nib.save(nib.Nifti1Image(volume, affine), folder / f"{name}.nii.gz")
    (unsupervised / "score_settings.json").write_text(json.dumps({"beta": 0.7, "min_component_size": 0}))
    (segmentation / "score_settings.json").write_text(json.dumps({"beta": 0.0, "cases": ["c0"]}))
    assert write_late_fusion(unsupervised, segmentation, out) == 1
    fused = nib.load(out / "c0_score.nii.gz")
    np.testing.assert_allclose(np.asarray(fused.dataobj), 0.7 * u + 0.3 * p, atol=1e-6)
    np.testing.assert_allclose(fused.affine, affine)
    assert json.loads((out / "score_settings.json").read_text())["beta"] == 0.7
    (unsupervised / "score_settings.json").write_text(json.dumps({"beta": 0.5, "min_component_size": 20}))
    with pytest.raises(ValueError, match="min_component_size 20"):
        write_late_fusion(unsupervised, segmentation, tmp_path / "late2")
    (unsupervised / "score_settings.json").write_text(json.dumps({"beta": 0.5, "min_component_size": 0}))
    nib.save(nib.Nifti1Image(p[:4], affine), segmentation / "c0_score.nii.gz")
    with pytest.raises(ValueError, match=r"c0: the unsupervised map \(\(5, 6, 7\)\) and the segmentation score"):
        write_late_fusion(unsupervised, segmentation, tmp_path / "late3")


def test_demo_folder_from_before_a_new_cohort_field_resumes_and_other_settings_are_named(tmp_path):
    """A demo output folder records its settings; one written before `num_healthy_validation` existed still
    resumes, and a folder of other settings is refused with the settings that differ named."""
    from sadm_nnunet.commands.demo import check_output_folder, experiment_spec

    spec = experiment_spec("quick", "cpu")
    check_output_folder(tmp_path, spec)  # records
    recorded_file = tmp_path / "demo_settings.json"
    recorded = json.loads(recorded_file.read_text())
    del recorded["cohort"]["num_healthy_validation"], recorded["configuration"]
    recorded_file.write_text(json.dumps(recorded))
    check_output_folder(tmp_path, spec)  # the fields' defaults are implied: accepted
    with pytest.raises(SystemExit, match=r"these differ: cohort, denoiser_overrides"):
        check_output_folder(tmp_path, experiment_spec("default", "cpu"))
