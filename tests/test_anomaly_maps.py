"""Anomaly maps of a volume: residual, 1 - SSIM, median filter, brain mask, small components, fused score."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from sadm_nnunet.anomaly_maps import (anomaly_maps, brain_mask, dissimilarity_map, erode_mask,
                                      foreground_probability, fused_score, median_filter_3d, remove_small_components,
                                      residual_map)
from sadm_nnunet.segmentation.settings import ScoringSettings


def scoring(**changes) -> ScoringSettings:
    """The template's scoring settings (plans/sadm.json) with `changes`."""
    return replace(ScoringSettings.template(), **changes)


def volumes(shape=(12, 20, 18), seed=0):
    rng = np.random.default_rng(seed)
    image = np.zeros(shape, np.float32)
    image[2:-2, 3:-3, 3:-3] = rng.normal(1.0, 0.3, (shape[0] - 4, shape[1] - 6, shape[2] - 6))
    reconstruction = image + rng.normal(0, 0.1, shape).astype(np.float32) * (image != 0)
    return image, reconstruction


def test_residual_is_the_channel_mean_of_absolute_differences():
    image = np.array([[[[1.0, 2.0]]], [[[3.0, -1.0]]]], np.float32)  # (C=2, 1, 1, 2)
    recon = np.array([[[[0.0, 4.0]]], [[[3.5, 1.0]]]], np.float32)
    np.testing.assert_allclose(residual_map(image, recon), [[[0.75, 2.0]]])


def test_dissimilarity_matches_scikit_image_ssim_slice_by_slice():
    image, recon = volumes()
    for axis in (0, 2):
        d = dissimilarity_map(image, recon, data_range=2.0, slice_axis=axis, dimensions=2)
        assert d.shape == image.shape and d.dtype == np.float32
        for k in range(3, 8):
            a, b = np.take(image, k, axis).astype(np.float64), np.take(recon, k, axis).astype(np.float64)
            _, full = structural_similarity(a, b, data_range=2.0, gaussian_weights=True, sigma=1.0, truncate=4.0,
                                            use_sample_covariance=False, full=True)
            # same Gaussian window (sigma 1, 9x9); borders differ (replicate vs reflect padding): compare inside
            np.testing.assert_allclose(np.take(d, k, axis)[4:-4, 4:-4], 1 - full[4:-4, 4:-4], atol=2e-5)


def test_dissimilarity_is_zero_for_a_perfect_reconstruction():
    image, _ = volumes()
    for dimensions in (2, 3):
        np.testing.assert_allclose(dissimilarity_map(image, image, 2.0, 0, dimensions=dimensions), 0, atol=1e-6)


def test_3d_dissimilarity_is_volumetric_ssim_computed_by_hand():
    """scoring.ssim_dimensions 3: SSIM over a 9x9x9 Gaussian window (sigma 1, population statistics), as the
    authors' code computes it; checked against a hand computation at interior voxels."""
    image, recon = volumes()
    d3 = dissimilarity_map(image, recon, 2.0, 0, dimensions=3)
    assert d3.shape == image.shape and d3.dtype == np.float32
    g = np.exp(-np.arange(-4, 5) ** 2 / 2.0)
    w = g[:, None, None] * g[None, :, None] * g[None, None, :]
    w /= w.sum()
    c1, c2 = (0.01 * 2.0) ** 2, (0.03 * 2.0) ** 2
    for z, y, x in [(5, 9, 9), (6, 10, 8), (7, 11, 10)]:
        a = image[z - 4:z + 5, y - 4:y + 5, x - 4:x + 5].astype(np.float64)
        b = recon[z - 4:z + 5, y - 4:y + 5, x - 4:x + 5].astype(np.float64)
        mu_a, mu_b = (w * a).sum(), (w * b).sum()
        var_a, var_b = (w * a * a).sum() - mu_a ** 2, (w * b * b).sum() - mu_b ** 2
        cov = (w * a * b).sum() - mu_a * mu_b
        ssim = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
        assert abs(d3[z, y, x] - (1 - ssim)) < 1e-5, (z, y, x)
    d2 = dissimilarity_map(image, recon, 2.0, 0, dimensions=2)
    assert np.abs(d3 - d2)[4:-4, 4:-4, 4:-4].max() > 1e-3  # a volumetric window, not the slice's
    maps = anomaly_maps(image, recon, None, data_range=2.0, slice_axis=0,
                        scoring=scoring(beta=1.0, ssim_dimensions=3))
    brain = brain_mask(image)
    expected = np.where(brain, median_filter_3d(np.where(brain, np.clip(d3, 0, 1), 0), 5), 0)
    np.testing.assert_allclose(maps["unsupervised"], expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"3D SSIM needs every axis >= 9 voxels"):
        dissimilarity_map(image[:8], recon[:8], 2.0, 0, dimensions=3)


def test_ssim_offset_shifts_both_volumes_before_ssim():
    """scoring.ssim_offset: 1 - SSIM of (image + offset, reconstruction + offset). On a zero-mean texture (nnU-Net's
    z-scores inside the brain) a small uniform offset of the reconstruction is a large dissimilarity at offset 0
    (SSIM's luminance term divides by the local means' squares) and a small one at offset 1."""
    rng = np.random.default_rng(3)
    image = np.zeros((10, 24, 24), np.float32)
    image[1:-1, 2:-2, 2:-2] = rng.normal(0.0, 0.3, (8, 20, 20))
    brain = image != 0
    recon = image + np.float32(0.05) * brain  # 0.15 z-score units brighter, structure intact
    maps = {o: anomaly_maps(image, recon, None, data_range=2.0, slice_axis=0, scoring=scoring(beta=1.0, ssim_offset=o))
            for o in (0.0, 1.0)}
    for o, m in maps.items():
        expected = np.clip(dissimilarity_map(image + o, recon + o, 2.0, 0, dimensions=2), 0, 1)
        np.testing.assert_allclose(m["dissimilarity"], np.where(brain, expected, 0), atol=1e-6)
    inside = maps[0.0]["brain_mask"]
    assert maps[0.0]["dissimilarity"][inside].mean() > 0.1
    assert maps[1.0]["dissimilarity"][inside].mean() < 0.01
    # a structural change is still found with the offset
    changed = recon.copy()
    changed[4:7, 8:14, 8:14] = 0.5
    d = anomaly_maps(image, changed, None, data_range=2.0, slice_axis=0,
                     scoring=scoring(beta=1.0, ssim_offset=1.0))["dissimilarity"]
    assert d[4:7, 9:13, 9:13].mean() > 10 * maps[1.0]["dissimilarity"][inside].mean()


def test_median_filter_matches_brute_force_and_removes_a_spike():
    rng = np.random.default_rng(1)
    v = rng.random((9, 10, 11)).astype(np.float32)
    out = median_filter_3d(v, 5)
    for z, y, x in [(2, 2, 2), (4, 5, 6), (6, 7, 8)]:  # interior voxels: the full 5x5x5 window
        assert out[z, y, x] == np.median(v[z - 2:z + 3, y - 2:y + 3, x - 2:x + 3])
    spike = np.zeros((7, 7, 7), np.float32)
    spike[3, 3, 3] = 10
    assert not median_filter_3d(spike, 5).any()
    block = np.zeros((9, 9, 9), np.float32)
    block[:, :, :5] = 1  # a half space: the median at the boundary voxel x=4 sees 75 ones of 125
    assert median_filter_3d(block, 5)[4, 4, 4] == 1 and median_filter_3d(block, 5)[4, 4, 5] == 0
    np.testing.assert_array_equal(median_filter_3d(v, 1), v)


def test_brain_mask_fills_holes_and_erodes():
    image = np.zeros((9, 9, 9), np.float32)
    image[1:8, 1:8, 1:8] = 1
    image[4, 4, 4] = 0  # a hole inside the brain
    mask = brain_mask(image)
    assert mask.sum() == 7 ** 3
    assert brain_mask(image, erosion=1).sum() == 5 ** 3
    assert brain_mask(image, erosion=2).sum() == 3 ** 3
    assert brain_mask(np.stack([image * 0, image]), erosion=0).sum() == 7 ** 3  # any channel nonzero
    np.testing.assert_array_equal(erode_mask(mask, 0), mask)


def test_small_components_are_removed_with_26_connectivity():
    score = np.zeros((8, 8, 8), np.float32)
    score[1, 1, 1:3] = 0.9  # 2 voxels
    score[5:7, 5:7, 5:7] = 0.7  # 8 voxels
    score[2, 2, 3] = 0.8  # touches the first blob diagonally -> a component of 3
    score[0, 7, 7] = 0.3  # below the threshold: kept, whatever its size
    out = remove_small_components(score, min_size=4, threshold=0.5)
    expected = score.copy()
    expected[1, 1, 1:3] = 0
    expected[2, 2, 3] = 0
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(remove_small_components(score, min_size=3, threshold=0.5), score)


def test_fused_score_by_hand():
    u = np.array([0.2, 0.0, 1.0], np.float32)
    p = np.array([0.8, 0.5, 0.0], np.float32)
    np.testing.assert_allclose(fused_score(u, p, 0.5), [0.5, 0.25, 0.5])
    np.testing.assert_allclose(fused_score(u, p, 0.25), [0.65, 0.375, 0.25])
    np.testing.assert_allclose(fused_score(u, None, 1.0), u)
    with pytest.raises(ValueError, match="beta=0.5 weights the segmentation probability"):
        fused_score(u, None, 0.5)


def test_foreground_probability_is_one_minus_background():
    probs = np.stack([np.full((2, 2, 2), 0.7), np.full((2, 2, 2), 0.2), np.full((2, 2, 2), 0.1)])
    np.testing.assert_allclose(foreground_probability(probs), 0.3)


def test_anomaly_maps_compose_the_steps_in_the_paper_order():
    image, recon = volumes()
    rng = np.random.default_rng(3)
    p = rng.random(image.shape).astype(np.float32)
    maps = anomaly_maps(image, recon, p, data_range=2.0, slice_axis=0, scoring=scoring(beta=0.3, mask_erosion=1))
    brain = brain_mask(image)
    mask = brain_mask(image, erosion=1)
    d = dissimilarity_map(image, recon, 2.0, 0, dimensions=2)
    unsupervised = np.where(mask, median_filter_3d(np.where(brain, d, 0), 5), 0)
    np.testing.assert_array_equal(maps["brain_mask"], mask)
    np.testing.assert_allclose(maps["unsupervised"], unsupervised)
    np.testing.assert_allclose(maps["dissimilarity"], np.where(mask, d, 0))
    np.testing.assert_allclose(maps["residual"], np.where(mask, np.abs(image - recon), 0))
    np.testing.assert_allclose(maps["score"], np.where(mask, 0.3 * unsupervised + 0.7 * p, 0), atol=1e-7)
    assert all(m.shape == image.shape for m in maps.values())
    # a perfect reconstruction leaves (1 - beta) * p_seg inside the mask
    perfect = anomaly_maps(image, image, p, data_range=2.0, slice_axis=0, scoring=scoring(beta=0.5))
    np.testing.assert_allclose(perfect["score"], np.where(brain, 0.5 * p, 0), atol=1e-6)


def test_anomaly_maps_remove_small_components_of_the_score():
    image, _ = volumes()
    p = np.zeros(image.shape, np.float32)
    p[5, 8, 8] = 1.0  # one isolated voxel
    p[4:7, 10:13, 10:13] = 1.0  # 27 voxels
    score = anomaly_maps(image, image, p, data_range=2.0, slice_axis=0,
                         scoring=scoring(beta=0.0, min_component_size=5, component_threshold=0.5))["score"]
    assert score[5, 8, 8] == 0 and score[5, 11, 11] == 1.0 and score.sum() == 27


def test_bad_inputs_are_named():
    image, recon = volumes()
    with pytest.raises(ValueError, match=r"p_seg has shape \(3, 3, 3\)"):
        anomaly_maps(image, recon, np.zeros((3, 3, 3)), data_range=2.0, slice_axis=0, scoring=scoring())
    with pytest.raises(ValueError, match=r"probability in \[0, 1\]; found values in \[2.0, 2.0\]"):
        anomaly_maps(image, recon, np.full(image.shape, 2.0), data_range=2.0, slice_axis=0, scoring=scoring())
    with pytest.raises(ValueError, match="differ in shape"):
        anomaly_maps(image, recon[:-1], None, data_range=2.0, slice_axis=0, scoring=scoring(beta=1.0))
    with pytest.raises(ValueError, match="beta=0.5 weights the segmentation probability"):
        anomaly_maps(image, recon, None, data_range=2.0, slice_axis=0, scoring=scoring(beta=0.5))
