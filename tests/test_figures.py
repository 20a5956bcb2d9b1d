"""Per-case PNGs and the contact sheet: slice choice, files and pixel sizes, and the --figures option."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sadm_nnunet.commands.evaluate import main as evaluate_main
from sadm_nnunet.evaluation import EvaluationError
from sadm_nnunet.figures import (CaseVolumes, case_figure, case_figure_size, contact_sheet, contact_sheet_size,
                                 reconstruction_figure_from_folders, reconstruction_figure_size,
                                 reconstruction_slice, select_slices, sheet_tile)
from test_evaluation import make_folders, save


def case_volumes(seed=0, shape=(16, 18, 14)) -> CaseVolumes:
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.float32)
    image[2:-2, 2:-2, 2:-2] = 1 + rng.random((shape[0] - 4, shape[1] - 4, shape[2] - 4))
    reference = np.zeros(shape, np.uint8)
    reference[5:9, 6:10, 8:11] = 1  # axial (last axis) slices 8, 9, 10
    score = np.where(image != 0, 0.2 * rng.random(shape) + 0.6 * reference, 0).astype(np.float32)
    return CaseVolumes(score=score, reference=reference, image=image, reconstruction=image * 0.9,
                       unsupervised=score * 0.5)


def test_slices_with_the_most_anomaly():
    v = case_volumes()
    v.reference[6, 7, 9] = 0  # slice 9 now has the fewest reference voxels of the three
    assert select_slices(v, count=3) == [8, 9, 10]  # too close for the gap, but only these show the anomaly
    assert select_slices(v, count=2, min_gap=2) == [8, 10]
    assert select_slices(v, count=2, min_gap=1) == [8, 10]
    healthy = CaseVolumes(score=np.zeros((4, 4, 6), np.float32))
    assert select_slices(healthy, count=3) == [3]  # nothing anywhere: the middle slice
    healthy.score[:, :, 4] = 1
    healthy.score[:, :, 1] = 0.5
    assert select_slices(healthy, count=1) == [4]  # no reference: by summed score
    assert select_slices(healthy, count=3) == [1, 4]


def test_case_figure_and_contact_sheet_sizes(tmp_path):
    v = case_volumes()
    path = case_figure(tmp_path / "a.png", v, threshold=0.5, title="case a")
    assert Image.open(path).size == case_figure_size(len(select_slices(v)))
    partial = CaseVolumes(score=v.score, reference=v.reference)  # input, reconstruction and map not given
    path = case_figure(tmp_path / "b.png", partial, threshold=None, slices=[9])
    assert Image.open(path).size == case_figure_size(1)
    tiles = [sheet_tile(case_volumes(s), f"case {s}", threshold=0.5) for s in range(13)]
    sheet = contact_sheet(tmp_path / "sheet.png", tiles, columns=5)
    assert Image.open(sheet).size == contact_sheet_size(13, columns=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png", "sheet.png"]


def test_reconstruction_figure_shows_the_lesion_or_the_most_brain(tmp_path):
    v = case_volumes()
    assert reconstruction_slice(v) == 8  # axial slices 8-10 hold 16 reference voxels each: the first of them
    v.reference[5, 6, 10] = 0
    v.reference[4, 6, 10] = 1
    v.reference[4, 7, 10] = 1
    assert reconstruction_slice(v) == 10
    healthy = CaseVolumes(score=v.score, image=v.image.copy())
    healthy.image[:, :, 6:] = 0  # brain in axial slices 2-5; slice 4 has the most
    healthy.image[0, 0:2, 4] = 1
    assert reconstruction_slice(healthy) == 4
    for case, volumes, label in (("h", case_volumes(1), None), ("t", v, tmp_path / "t.nii.gz")):
        save(tmp_path / "images" / f"{case}_0000.nii.gz", volumes.image)
        save(tmp_path / "maps" / f"{case}_reconstruction_0000.nii.gz", volumes.reconstruction)
        save(tmp_path / "maps" / f"{case}_unsupervised.nii.gz", volumes.unsupervised)
    save(tmp_path / "t.nii.gz", v.reference)
    cases = [("healthy: h", "h", None), ("tumour: t", "t", tmp_path / "t.nii.gz")]
    path = reconstruction_figure_from_folders(tmp_path / "r.png", tmp_path / "images", tmp_path / "maps", cases)
    assert Image.open(path).size == reconstruction_figure_size(2) == (464, 312)
    save(tmp_path / "maps" / "h_unsupervised.nii.gz", case_volumes(1, shape=(16, 18, 13)).unsupervised)
    with pytest.raises(EvaluationError, match="case 'h': unsupervised h_unsupervised.nii.gz has shape"):
        reconstruction_figure_from_folders(tmp_path / "x.png", tmp_path / "images", tmp_path / "maps", cases)


def test_figures_option_of_the_command(tmp_path, capsys):
    arrays = make_folders(tmp_path, "c", 4, 2)
    for case, (score, ref, brain) in arrays.items():
        save(tmp_path / "images" / f"{case}_0000.nii.gz", brain * np.float32(50.0))
        save(tmp_path / "maps" / f"{case}_reconstruction_0000.nii.gz", brain * np.float32(45.0))
        save(tmp_path / "maps" / f"{case}_ssim.nii.gz", score * 0.5)
    out = tmp_path / "figs"
    evaluate_main(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "-o", str(tmp_path / "m.json"),
                   "--threshold", "0.5", "--figures", str(out), "--images", str(tmp_path / "images"),
                   "--maps", str(tmp_path / "maps"), "--max-figures", "3"])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["c00.png", "c01.png", "c02.png", "contact_sheet.png"]
    assert Image.open(out / "contact_sheet.png").size == contact_sheet_size(4)
    for name in names[:3]:
        assert Image.open(out / name).size == case_figure_size(3)
    assert "Wrote 4 figure(s)" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["threshold"] == 0.5
