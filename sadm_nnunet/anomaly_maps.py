"""Anomaly maps from an image, its pseudo-healthy reconstruction and the segmentation probability (vectorised:
torch for SSIM, numpy/scipy for the rest): residual, 1 - SSIM, 3D median filter, brain mask, removal of small
connected components and the fused score AS = beta * (1 - SSIM) + (1 - beta) * p_seg (DESIGN.md §1.3).

`anomaly_maps` is the one entry point for a volume; the functions it calls are public for other uses."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

if TYPE_CHECKING:
    from sadm_nnunet.segmentation.settings import ScoringSettings

SSIM_SIGMA = 1.0  # paper: Gaussian window, sigma 1, kernel size 9
SSIM_KERNEL = 9


def _gaussian_window(sigma: float, size: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(a: torch.Tensor, b: torch.Tensor, data_range: float, sigma: float = SSIM_SIGMA,
             size: int = SSIM_KERNEL) -> torch.Tensor:
    """Per-pixel SSIM of two (N, C, H, W) image stacks, computed slice by slice with a Gaussian window."""
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"ssim_map expects two (N, C, H, W) tensors of equal shape; found {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    a, b = a.float(), b.float()
    c = a.shape[1]
    window = _gaussian_window(sigma, size, a.device, a.dtype).expand(c, 1, size, size)
    pad = size // 2

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="replicate"), window, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over the voxels where `mask` is true, per sample (first axis); NaN where empty."""
    mask = mask.expand_as(values).float()
    dims = tuple(range(1, values.ndim))
    return (values * mask).sum(dims) / mask.sum(dims)


# ---------------------------------------------------------------------------------------------------------------
# Volumes: residual, 1 - SSIM, median filter, brain mask, small components and the fused score (DESIGN.md §1.3)
# ---------------------------------------------------------------------------------------------------------------

def _channels_first(volume: np.ndarray, name: str) -> np.ndarray:
    """(Z, Y, X) or (C, Z, Y, X) -> float32 (C, Z, Y, X)."""
    volume = np.asarray(volume)
    if volume.ndim == 3:
        volume = volume[None]
    if volume.ndim != 4:
        raise ValueError(f"{name} must be a 3D volume or a (C, Z, Y, X) stack of them; found shape {volume.shape}")
    return volume.astype(np.float32, copy=False)


def brain_mask(image: np.ndarray, erosion: int = 0) -> np.ndarray:
    """The brain as nnU-Net defines it for skull-stripped images: nonzero in any channel, holes filled; then
    eroded by `erosion` voxels (`erode_mask`). Boolean, spatial shape."""
    image = _channels_first(image, "image")
    return erode_mask(ndimage.binary_fill_holes(np.any(image != 0, axis=0)), erosion)


def erode_mask(mask: np.ndarray, erosion: int) -> np.ndarray:
    """Binary erosion by `erosion` voxels (6-connected structuring element, iterated; outside the array counts
    as background). 0: the mask unchanged."""
    mask = np.asarray(mask, dtype=bool)
    return ndimage.binary_erosion(mask, iterations=erosion) if erosion > 0 else mask


def residual_map(image: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
    """|image - reconstruction|, averaged over channels: a (Z, Y, X) float32 volume."""
    image, reconstruction = _channels_first(image, "image"), _channels_first(reconstruction, "reconstruction")
    if image.shape != reconstruction.shape:
        raise ValueError(f"image and reconstruction differ in shape: {image.shape} vs {reconstruction.shape}")
    return np.abs(image - reconstruction).mean(axis=0)


def dissimilarity_map(image: np.ndarray, reconstruction: np.ndarray, data_range: float, slice_axis: int, *,
                      dimensions: int) -> np.ndarray:
    """1 - SSIM(image, reconstruction) per voxel with a Gaussian window (sigma 1, size 9), averaged over channels:
    a (Z, Y, X) float32 volume. dimensions 2: slice by slice along `slice_axis` (`ssim_map`); 3: on the volume
    (scikit-image's `structural_similarity`, 9x9x9 window, population covariance). `data_range` is the intensity
    range of the inputs (it sets SSIM's stabilising constants), e.g. 2.0 for the denoiser's [-1, 1] space."""
    image, reconstruction = _channels_first(image, "image"), _channels_first(reconstruction, "reconstruction")
    if image.shape != reconstruction.shape:
        raise ValueError(f"image and reconstruction differ in shape: {image.shape} vs {reconstruction.shape}")
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0; found {data_range}")
    if dimensions == 3:
        return _dissimilarity_3d(image, reconstruction, data_range)
    if dimensions != 2:
        raise ValueError(f"dimensions must be 2 (per slice) or 3 (volume); found {dimensions}")
    # (C, Z, Y, X) -> slices first: (S, C, H, W)
    order = (slice_axis + 1, 0, *[a + 1 for a in range(3) if a != slice_axis])
    a = torch.from_numpy(np.ascontiguousarray(image.transpose(order)))
    b = torch.from_numpy(np.ascontiguousarray(reconstruction.transpose(order)))
    with torch.no_grad():
        d = (1 - ssim_map(a, b, data_range=data_range)).mean(1).numpy()  # (S, H, W)
    return np.moveaxis(d, 0, slice_axis).astype(np.float32, copy=False)


def _dissimilarity_3d(image: np.ndarray, reconstruction: np.ndarray, data_range: float) -> np.ndarray:
    """Volumetric 1 - SSIM of (C, Z, Y, X) stacks, channel mean (scikit-image; borders mirrored)."""
    from skimage.metrics import structural_similarity

    smallest = min(image.shape[1:])
    if smallest < SSIM_KERNEL:
        raise ValueError(f"3D SSIM needs every axis >= {SSIM_KERNEL} voxels (the window); found shape "
                         f"{image.shape[1:]}")
    maps = [structural_similarity(a, b, data_range=data_range, gaussian_weights=True, sigma=SSIM_SIGMA,
                                  truncate=(SSIM_KERNEL // 2) / SSIM_SIGMA, use_sample_covariance=False,
                                  full=True)[1]
            for a, b in zip(image.astype(np.float64), reconstruction.astype(np.float64))]
    return (1 - np.mean(maps, axis=0)).astype(np.float32)


def median_filter_3d(volume: np.ndarray, size: int) -> np.ndarray:
    """3D median filter (cubic window of edge `size`, borders mirrored: scipy's 'reflect'); size 0 or 1: a copy."""
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"median_filter_3d expects a 3D volume; found shape {volume.shape}")
    if size <= 1:
        return volume.copy()
    return ndimage.median_filter(volume, size=size, mode="reflect")


def remove_small_components(score: np.ndarray, min_size: int, threshold: float) -> np.ndarray:
    """Sets to 0 the voxels of every 26-connected component of {score >= threshold} with fewer than `min_size`
    voxels; all other voxels keep their value."""
    score = np.asarray(score)
    if min_size <= 0:
        return score.copy()
    labels, n = ndimage.label(score >= threshold, structure=np.ones((3,) * score.ndim, dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    small = sizes < min_size
    small[0] = False  # background of the binarised map
    return np.where(small[labels], 0, score).astype(score.dtype, copy=False)


def foreground_probability(class_probabilities: np.ndarray) -> np.ndarray:
    """p_seg: the probability that a voxel belongs to any foreground class, 1 - p(background), from nnU-Net's
    (K, Z, Y, X) softmax output (class 0 = background)."""
    class_probabilities = np.asarray(class_probabilities, dtype=np.float32)
    if class_probabilities.ndim != 4 or class_probabilities.shape[0] < 2:
        raise ValueError(f"expected (K >= 2, Z, Y, X) class probabilities; found shape {class_probabilities.shape}")
    return 1.0 - class_probabilities[0]


def fused_score(unsupervised: np.ndarray, p_seg: np.ndarray | None, beta: float) -> np.ndarray:
    """AS = beta * unsupervised + (1 - beta) * p_seg; p_seg may be None only for beta = 1 (unsupervised only)."""
    if p_seg is None:
        if beta != 1.0:
            raise ValueError(f"beta={beta} weights the segmentation probability, but none was given")
        return np.asarray(unsupervised, dtype=np.float32).copy()
    if np.shape(unsupervised) != np.shape(p_seg):
        raise ValueError(f"unsupervised map and p_seg differ in shape: {np.shape(unsupervised)} vs "
                         f"{np.shape(p_seg)}")
    return (beta * np.asarray(unsupervised, dtype=np.float32)
            + (1.0 - beta) * np.asarray(p_seg, dtype=np.float32)).astype(np.float32, copy=False)


def reconstruction_quality(maps: dict[str, np.ndarray]) -> dict[str, float]:
    """How close a reconstruction is to its image, from `anomaly_maps`' output, over the mask: "l1", the mean
    residual (the denoiser's units), and "ssim", the mean of 1 - "dissimilarity" (SSIM per voxel, clipped to [0, 1]
    when the scoring settings clip the dissimilarity), with "voxels", the mask's size."""
    mask = maps["brain_mask"]
    voxels = int(mask.sum())
    if voxels == 0:
        return {"l1": float("nan"), "ssim": float("nan"), "voxels": 0}
    return {"l1": float(maps["residual"][mask].mean()), "ssim": float(1.0 - maps["dissimilarity"][mask].mean()),
            "voxels": voxels}


def anomaly_maps(image: np.ndarray, reconstruction: np.ndarray, p_seg: np.ndarray | None, *, data_range: float,
                 scoring: ScoringSettings, slice_axis: int, brain: np.ndarray | None = None
                 ) -> dict[str, np.ndarray]:
    """All anomaly maps of one volume, as the paper scores it: the one definition of the unsupervised map and of
    the fused score.

    image, reconstruction: (Z, Y, X) or (C, Z, Y, X), same units; p_seg: (Z, Y, X) foreground probability in
    [0, 1] (see `foreground_probability`), or None with scoring.beta = 1; data_range, slice_axis: see
    `dissimilarity_map`; scoring: the plans' `sadm.scoring` settings (beta, median filter, clipping, mask
    erosion, small components; meanings in plans/sadm.json); brain: the brain mask (default: `brain_mask(image)`,
    the image's nonzero region).
    Order, as in the authors' code: 1 - SSIM is set to 0 outside the brain, median-filtered, then restricted to
    the brain eroded by scoring.mask_erosion ("the mask" below); p_seg is restricted to the mask as well.
    Returns float32 (Z, Y, X) maps, 0 outside the mask, and the mask:
      "residual"      |image - reconstruction| (channel mean)
      "dissimilarity" 1 - SSIM of image + scoring.ssim_offset and reconstruction + scoring.ssim_offset, not
                      filtered (clipped to [0, 1] with scoring.clip_dissimilarity)
      "unsupervised"  1 - SSIM after the 3D median filter: the unsupervised (reconstruction-only) anomaly map
      "score"         AS = beta * unsupervised + (1 - beta) * p_seg, then small components removed if asked
      "brain_mask"    bool, the mask
    """
    residual = residual_map(image, reconstruction)
    spatial = residual.shape
    if p_seg is not None:
        p = np.asarray(p_seg, dtype=np.float32)
        if p.shape != spatial:
            raise ValueError(f"p_seg has shape {p.shape}; the image's spatial shape is {spatial}")
        lo, hi = (float(p.min()), float(p.max())) if p.size else (0.0, 0.0)
        if not (0.0 <= lo and hi <= 1.0):  # also false for NaN
            raise ValueError(f"p_seg must be a probability in [0, 1]; found values in [{lo}, {hi}]")
        p_seg = p
    if brain is None:
        brain = brain_mask(image)
    elif np.shape(brain) != spatial:
        raise ValueError(f"brain mask has shape {np.shape(brain)}; the image's spatial shape is {spatial}")
    brain = np.asarray(brain, dtype=bool)
    mask = erode_mask(brain, scoring.mask_erosion)
    offset = scoring.ssim_offset  # SSIM's luminance term depends on where 0 lies (plans/sadm.json)
    dissimilarity = dissimilarity_map(image + offset, reconstruction + offset, data_range, slice_axis,
                                      dimensions=scoring.ssim_dimensions)
    if scoring.clip_dissimilarity:
        dissimilarity = np.clip(dissimilarity, 0.0, 1.0)
    unsupervised = median_filter_3d(np.where(brain, dissimilarity, 0), scoring.median_size)
    maps = {"residual": residual, "dissimilarity": dissimilarity, "unsupervised": unsupervised}
    maps = {k: np.where(mask, v, 0).astype(np.float32, copy=False) for k, v in maps.items()}
    score = fused_score(maps["unsupervised"], None if p_seg is None else np.where(mask, p_seg, 0), scoring.beta)
    if scoring.min_component_size > 0:
        score = remove_small_components(score, scoring.min_component_size, scoring.component_threshold)
    maps["score"] = score
    maps["brain_mask"] = mask
    return maps
