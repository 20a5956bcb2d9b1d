"""Per-case PNGs and the contact sheet: slice choice, files and pixel sizes, what the sheet's pixels show, the score's
title, and the --figures option."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sadm_nnunet.commands.evaluate import main as evaluate_main
from sadm_nnunet.evaluation import EvaluationError
from sadm_nnunet.figures import (PREDICTION_RGBA, CaseVolumes, case_figure, case_figure_size, contact_sheet,
                                 contact_sheet_layout, contact_sheet_size, recorded_beta,
                                 reconstruction_figure_from_folders, reconstruction_figure_size, reconstruction_slice,
                                 score_label, select_slices, sheet_tile)
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
    assert Image.open(path).size == reconstruction_figure_size(2) == (580, 390)
    save(tmp_path / "maps" / "h_unsupervised.nii.gz", case_volumes(1, shape=(16, 18, 13)).unsupervised)
    with pytest.raises(EvaluationError, match="case 'h': unsupervised h_unsupervised.nii.gz has shape"):
        reconstruction_figure_from_folders(tmp_path / "x.png", tmp_path / "images", tmp_path / "maps", cases)


def test_figures_option_of_the_command(tmp_path):
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
    assert json.loads((tmp_path / "m.json").read_text())["threshold"] == 0.5


def predicted_pixels(rgb: np.ndarray) -> np.ndarray:
    """Pixels of the prediction's red over the grey input (the reference outline is green, the input grey)."""
    r, g, b = (rgb[..., k].astype(int) for k in range(3))
    return (r - g > 100) & (r - b > 100)


def test_contact_sheet_shows_the_score_scale_and_the_prediction_where_it_is(tmp_path):
    shape = (24, 24, 14)  # square axial slices fill their square panels: pixel -> voxel is a plain scaling
    t = 0.5
    tiles = [sheet_tile(case_volumes(s, shape), f"case {s}", threshold=t) for s in range(2)]
    empty = case_volumes(2, shape)
    tiles.append(sheet_tile(empty, "case 2", threshold=float(empty.score.max()) + 0.1))
    layout = contact_sheet_layout(3)
    sheet = contact_sheet(tmp_path / "sheet.png", tiles, score_title="fused score (β 0.5)", threshold=t)
    rgb = np.asarray(Image.open(sheet).convert("RGB"))
    assert (rgb.shape[1], rgb.shape[0]) == layout.size == contact_sheet_size(3)
    for tile, (left, top, right, bottom) in zip(tiles[:2], layout.prediction_boxes):
        assert right - left >= 200 and bottom - top >= 200  # a slice is large enough to read
        red = predicted_pixels(rgb[top:bottom, left:right])
        ys, xs = np.nonzero(red)
        # the voxel under each red pixel (origin lower: the first row of the slice is at the bottom)
        cols = (xs * 24 // (right - left)).clip(0, 23)
        rows = 23 - (ys * 24 // (bottom - top)).clip(0, 23)
        assert tile.prediction.any() and red.sum() > 0.5 * tile.prediction.sum() * ((right - left) / 24) ** 2
        assert tile.prediction[rows, cols].mean() > 0.97  # red only where the prediction is
        centres = [(round((bottom - top) * (23 - r + 0.5) / 24), round((right - left) * (c + 0.5) / 24))
                   for r, c in zip(*np.nonzero(tile.prediction))]
        assert np.mean([red[y, x] for y, x in centres]) > 0.9  # and the prediction is red
    left, top, right, bottom = layout.prediction_boxes[2]
    assert not tiles[2].prediction.any() and not predicted_pixels(rgb[top:bottom, left:right]).any()
    assert "no voxel ≥ t" in tiles[2].caption and "no voxel" not in tiles[0].caption
    # the colour bar: the magma scale from 0 (dark, bottom) to the highest score (bright, top), t marked in red
    left, top, right, bottom = layout.colorbar_box
    bar = rgb[top + 2:bottom - 2, (left + right) // 2].astype(float)
    luminance = bar @ np.array([0.299, 0.587, 0.114])
    assert len({tuple(c) for c in bar.astype(int)}) > 50 and luminance[:10].mean() > luminance[-10:].mean() + 150
    highest = max(tile.score_range[1] for tile in tiles)  # one scale for all tiles
    line = round((bottom - top) * (1 - t / highest)) + top
    pure_red = (bar[:, 0] > 200) & (bar[:, 1] < 60) & (bar[:, 2] < 60)  # the mark, not magma's red-orange
    assert pure_red.any() and np.all(np.abs(top + 2 + np.nonzero(pure_red)[0] - line) <= 2)
    assert PREDICTION_RGBA[:3] == (1.0, 0.1, 0.1)


def test_score_is_titled_by_the_beta_recorded_in_its_folder(tmp_path):
    assert recorded_beta(tmp_path) is None and score_label(None) == "score"
    for beta, words in ((0.0, "segmentation probability"), (0.5, "fused score (β 0.5)"), (1.0, "unsupervised")):
        (tmp_path / "score_settings.json").write_text(json.dumps({"beta": beta, "median_size": 5}))
        assert recorded_beta(tmp_path) == beta and words in score_label(recorded_beta(tmp_path))
    assert score_label(0.5, "_unsupervised") == "unsupervised (1 - SSIM)"  # the other map of the same folder
    (tmp_path / "score_settings.json").write_text("[1, 2")
    with pytest.raises(EvaluationError, match="score_settings.json"):
        recorded_beta(tmp_path)
