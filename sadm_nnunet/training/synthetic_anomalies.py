"""Synthetic anomalies in the style of DRAEM (Zavrtanik et al., ICCV 2021) as a batchgeneratorsv2 transform.

An anomaly is a thresholded, randomly rotated Perlin-noise mask (scale 2**k per axis) restricted to the brain,
filled with a noise texture that went through 3 random intensity operations and blended into the image with a
factor beta ~ U[0.2, 1]; its label is the mask. Everything works on 2D (C, X, Y) and 3D (C, X, Y, Z) samples,
vectorised with numpy on the CPU, as nnU-Net's data-augmentation workers run it.

`SyntheticAnomalyTransform` is the nnU-Net-facing part (see DESIGN.md §3.5): it goes before nnU-Net's
`RemoveLabelTansform(-1, 0)`, so the segmentation still marks voxels outside the nonzero region with -1.
"""
from __future__ import annotations

import itertools
import math
import os
import zlib
from typing import Callable, Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from scipy import ndimage

# Perlin noise with unit gradients lies in [-sqrt(N)/2, sqrt(N)/2]; 2/sqrt(N) maps it to [-1, 1]. For N = 2 this is
# DRAEM's factor sqrt(2), so a 2D mask thresholded at 0.5 covers what DRAEM's does.
# Per unit of that bound, 3D noise is narrower than 2D noise (std 0.221 vs 0.306, measured over many rotated
# fields): the mask scales 3D noise by the ratio, so that a threshold of 0.5 keeps about the same fraction of
# voxels (about 5.5%) in 3D as DRAEM's does in 2D.
_MASK_NOISE_GAIN = {2: 1.0, 3: 0.306 / 0.221}


def random_rotation(ndim: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed rotation matrix (ndim, ndim) with determinant +1 (QR of a Gaussian matrix)."""
    q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def perlin_noise(shape: Sequence[int], cells: float | Sequence[float], rng: np.random.Generator,
                 rotation: bool | np.ndarray | None = None, where: np.ndarray | None = None) -> np.ndarray:
    """Gradient (Perlin) noise of `shape` (2D or 3D) with `cells[i]` lattice cells along axis i, in [-1, 1].

    Random unit gradients sit on the lattice points; values are blended with the quintic fade 6t^5-15t^4+10t^3.
    `rotation` (True: a random one; or a matrix) rotates the sampling coordinates about the centre, which rotates
    the field without resampling it. `where` (bool, `shape`) evaluates only there and leaves 0 elsewhere.
    Returns float32.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    if ndim not in (2, 3):
        raise ValueError(f"perlin_noise supports 2D and 3D shapes, found {shape}")
    cells_arr = np.broadcast_to(np.asarray(cells, dtype=np.float64), (ndim,))
    if np.any(cells_arr <= 0):
        raise ValueError(f"cells must be positive, found {tuple(cells_arr)}")
    if where is None:
        coords = np.indices(shape, dtype=np.float32).reshape(ndim, -1)
    else:
        where = np.asarray(where, dtype=bool)
        if where.shape != shape:
            raise ValueError(f"`where` has shape {where.shape}, expected {shape}")
        coords = np.stack(np.nonzero(where)).astype(np.float32)
    centre = ((np.asarray(shape, dtype=np.float32) - 1) / 2)[:, None]
    rel = coords - centre
    if rotation is True:
        rotation = random_rotation(ndim, rng)
    if rotation is not None and rotation is not False:
        rel = np.asarray(rotation, dtype=np.float32) @ rel
    # lattice coordinates: the (unrotated) image spans [0, cells] along each axis
    lattice = rel * (cells_arr / np.asarray(shape)).astype(np.float32)[:, None] \
        + (cells_arr / 2).astype(np.float32)[:, None]
    base = np.floor(lattice)
    frac = lattice - base
    base = base.astype(np.int64)
    if base.shape[1] == 0:
        base_lo, size = np.zeros(ndim, np.int64), np.full(ndim, 2)
    else:
        base_lo = base.min(axis=1)
        size = base.max(axis=1) - base_lo + 2
    grads = rng.standard_normal((ndim, int(np.prod(size))), dtype=np.float32)
    grads /= np.maximum(np.linalg.norm(grads, axis=0, keepdims=True), 1e-12)
    strides = np.cumprod(np.concatenate([size[1:], [1]])[::-1])[::-1]  # C order
    flat = ((base - base_lo[:, None]) * strides[:, None]).sum(axis=0)
    fade = frac * frac * frac * (frac * (frac * 6 - 15) + 10)
    values = np.zeros(frac.shape[1], dtype=np.float32)
    for corner in itertools.product((0, 1), repeat=ndim):
        idx = flat + int(np.dot(corner, strides))
        weight = np.ones_like(values)
        dot = np.zeros_like(values)
        for axis, c in enumerate(corner):
            dot += np.take(grads[axis], idx) * (frac[axis] - c)
            weight *= fade[axis] if c else 1 - fade[axis]
        values += weight * dot
    values *= 2 / math.sqrt(ndim)
    if where is None:
        return values.reshape(shape)
    out = np.zeros(shape, dtype=np.float32)
    out[where] = values
    return out


def anomaly_mask(shape: Sequence[int], rng: np.random.Generator, *, max_scale_exponent: int,
                 threshold: float = 0.5, where: np.ndarray | None = None) -> np.ndarray:
    """DRAEM mask: rotated Perlin noise with 2**k cells per axis (k uniform in 0..max_scale_exponent, at most
    shape/2 cells so that a cell spans at least 2 voxels) above `threshold`. `where` restricts the mask (and the
    work) to a region. Returns a bool array of `shape`."""
    shape = tuple(int(s) for s in shape)
    k = rng.integers(0, max_scale_exponent + 1, size=len(shape))
    cells = np.minimum(2.0 ** k, np.maximum(np.asarray(shape) // 2, 1))
    noise = perlin_noise(shape, cells, rng, rotation=True, where=where)
    mask = noise * _MASK_NOISE_GAIN[len(shape)] > threshold
    if where is not None:
        mask &= where
    return mask


def _noise_texture(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Base texture in [0, 1]: two octaves of rotated Perlin noise, or smoothed uniform noise (even odds)."""
    if rng.random() < 0.5:
        cells = np.minimum(2.0 ** rng.integers(0, 4), np.maximum(np.asarray(shape) // 2, 1))
        rotation = random_rotation(len(shape), rng)
        x = perlin_noise(shape, cells, rng, rotation) + 0.5 * perlin_noise(
            shape, np.minimum(2 * cells, np.maximum(np.asarray(shape) // 2, 1)), rng, rotation)
    else:
        x = ndimage.gaussian_filter(rng.random(shape, dtype=np.float32), sigma=float(rng.uniform(0.5, 2.5)),
                                    mode="reflect")
    lo, hi = float(x.min()), float(x.max())
    return ((x - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def _gamma(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x ** float(np.exp(rng.uniform(math.log(0.5), math.log(2.0))))


def _brightness(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x * float(rng.uniform(0.8, 1.2)) + float(rng.uniform(-30, 30)) / 255


def _contrast(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mean = float(x.mean())
    return (x - mean) * float(rng.uniform(0.5, 1.5)) + mean


def _sharpness(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """PIL's EnhanceSharpness: extrapolate from a smoothed copy (3^N box with centre weight 5, as PIL's SMOOTH)."""
    n = 3 ** x.ndim
    smooth = (ndimage.uniform_filter(x, size=3, mode="nearest") * n + 4 * x) / (n + 4)
    return smooth + float(rng.uniform(0.0, 2.0)) * (x - smooth)


def _solarize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.where(x < float(rng.uniform(32, 128)) / 255, x, 1 - x)


def _posterize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    levels = 2 ** int(rng.integers(1, 8))  # keep 1..7 of 8 bits
    return np.minimum(np.floor(x * levels), levels - 1) / levels


def _invert(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 1 - x


def _autocontrast(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cut = float(rng.uniform(0.0, 0.1))
    lo, hi = np.quantile(x, [cut, 1 - cut])
    return x if hi - lo < 1e-6 else (x - lo) / (hi - lo)


def _equalize(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Histogram equalisation (256 bins): each value maps to the mid-rank of its bin."""
    bins = np.minimum((x * 256).astype(np.int64), 255)
    hist = np.bincount(bins.ravel(), minlength=256)
    mid_rank = (np.cumsum(hist) - 0.5 * hist) / max(x.size, 1)
    return mid_rank.astype(np.float32)[bins]


INTENSITY_OPERATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "gamma": _gamma, "brightness": _brightness, "contrast": _contrast, "sharpness": _sharpness,
    "solarize": _solarize, "posterize": _posterize, "invert": _invert, "autocontrast": _autocontrast,
    "equalize": _equalize,
}


def anomaly_source(shape: Sequence[int], rng: np.random.Generator, num_operations: int = 3) -> np.ndarray:
    """Anomaly appearance: a noise texture passed through `num_operations` distinct random intensity operations
    (as DRAEM's 3 of its imgaug augmenters). Returns float32 in [0, 1]."""
    shape = tuple(int(s) for s in shape)
    x = _noise_texture(shape, rng)
    ops = list(INTENSITY_OPERATIONS.values())
    for i in rng.choice(len(ops), size=num_operations, replace=False):
        x = np.clip(ops[i](x, rng), 0.0, 1.0).astype(np.float32, copy=False)
    return x


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def insert_anomaly(image: np.ndarray | torch.Tensor, brain: np.ndarray | torch.Tensor, rng: np.random.Generator, *,
                   blend_range: tuple[float, float], max_scale_exponent: int, min_voxels: int = 16,
                   max_tries: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Blends one synthetic anomaly into `image` (C, *spatial), float in nnU-Net's z-score units.

    The mask is drawn inside `brain` (bool, spatial) until it has at least `min_voxels` voxels (at most `max_tries`
    draws; otherwise the image comes back unchanged with an empty mask). Each channel gets its own source, mapped
    from [0, 1] to that channel's 1st..99th percentile inside the brain, and
    out = image * (1 - beta * m) + beta * m * source with beta ~ U[blend_range].
    Returns (float32 image copy, bool mask).
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(brain, torch.Tensor):
        brain = brain.detach().cpu().numpy()
    image = np.array(image, dtype=np.float32)  # always a copy
    brain = np.asarray(brain, dtype=bool)
    if brain.shape != image.shape[1:]:
        raise ValueError(f"brain mask shape {brain.shape} does not match image shape {image.shape}")
    empty = np.zeros(brain.shape, dtype=bool)
    if brain.sum() < max(min_voxels, 1):
        return image, empty
    for _ in range(max_tries):
        mask = anomaly_mask(brain.shape, rng, max_scale_exponent=max_scale_exponent, where=brain)
        if mask.sum() >= max(min_voxels, 1):
            break
    else:
        return image, empty
    lo, hi = np.percentile(image[:, brain], [1, 99], axis=1)
    beta = float(rng.uniform(*blend_range))
    box = _bounding_box(mask)
    inside = mask[box]
    for c in range(image.shape[0]):
        source = lo[c] + anomaly_source(inside.shape, rng) * (hi[c] - lo[c])
        region = image[c][box]  # a view: writes go into `image`
        region[inside] = (1 - beta) * region[inside] + beta * source[inside]
    return image, mask


class SyntheticAnomalyTransform(BasicTransform):
    """Inserts a DRAEM-style synthetic anomaly into a sample and writes its mask into the segmentation.

    probability: chance that an eligible sample gets an anomaly. label: value written where the anomaly is.
    blend_range, max_scale_exponent: see `insert_anomaly` and `anomaly_mask`. These four have no defaults here:
    they come from the plans (`sadm.synthetic_anomalies`, template plans/sadm.json).
    replace_labels: True = self-supervised (DRAEM) mode: dataset labels > 0 are cleared and every sample is
    eligible; False = only samples without foreground (no label > 0) are eligible.
    seed: None = fresh entropy in each process (drawn lazily, so data-loader workers differ); an int = one
    deterministic stream. deterministic: seed every sample from a hash of its image (and `seed`), so the same patch
    always gets the same anomaly (validation).
    The brain is where segmentation >= 0 and any image channel != 0; voxels labelled -1 keep -1. Only segmentation
    channel 0 (the label map) is read and written.
    """

    def __init__(self, *, probability: float, label: int, blend_range: tuple[float, float],
                 max_scale_exponent: int, replace_labels: bool = False, seed: int | None = None,
                 deterministic: bool = False, min_voxels: int = 16) -> None:
        super().__init__()
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], found {probability}")
        if int(label) != label or label < 1:
            raise ValueError(f"label must be a positive integer, found {label}")
        if seed is not None and (int(seed) != seed or seed < 0):
            raise ValueError(f"seed must be None or a non-negative integer, found {seed}")
        lo, hi = blend_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"blend_range must satisfy 0 <= low <= high <= 1, found {blend_range}")
        if max_scale_exponent < 0:
            raise ValueError(f"max_scale_exponent must be >= 0, found {max_scale_exponent}")
        self.probability = float(probability)
        self.label = int(label)
        self.replace_labels = bool(replace_labels)
        self.seed = None if seed is None else int(seed)
        self.deterministic = bool(deterministic)
        self.blend_range = (float(lo), float(hi))
        self.max_scale_exponent = int(max_scale_exponent)
        self.min_voxels = int(min_voxels)
        self._rng: np.random.Generator | None = None
        self._rng_pid: int | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self.seed is None:  # every unpickled copy (spawned worker) draws its own entropy
            state["_rng"], state["_rng_pid"] = None, None
        return state

    def _rng_for(self, image: np.ndarray) -> np.random.Generator:
        if self.deterministic:
            digest = zlib.crc32(np.asarray(image.shape, dtype=np.int64).tobytes())
            digest = zlib.crc32(np.ascontiguousarray(image).tobytes(), digest)
            return np.random.default_rng([digest, 0 if self.seed is None else self.seed])
        if self._rng is None or (self.seed is None and self._rng_pid != os.getpid()):
            self._rng = np.random.default_rng(self.seed)  # None: fresh OS entropy, also after a fork
            self._rng_pid = os.getpid()
        return self._rng

    def get_parameters(self, **data_dict) -> dict:
        image, seg = data_dict.get("image"), data_dict.get("segmentation")
        if image is None or seg is None:
            raise ValueError("SyntheticAnomalyTransform needs both 'image' and 'segmentation'")
        image_np = torch.as_tensor(image).detach().cpu().numpy()
        labels = torch.as_tensor(seg)[0].detach().cpu().numpy()
        rng = self._rng_for(image_np)
        eligible = self.replace_labels or not (labels > 0).any()
        if not eligible or rng.random() >= self.probability:
            return {"mask": None, "anomalous_image": None}
        brain = (labels >= 0) & (image_np != 0).any(axis=0)
        anomalous, mask = insert_anomaly(image_np, brain, rng, blend_range=self.blend_range,
                                         max_scale_exponent=self.max_scale_exponent, min_voxels=self.min_voxels)
        if not mask.any():
            return {"mask": None, "anomalous_image": None}
        return {"mask": mask, "anomalous_image": anomalous}

    def apply(self, data_dict: dict, **params) -> dict:
        image, seg = torch.as_tensor(data_dict["image"]), torch.as_tensor(data_dict["segmentation"])
        mask = params["mask"]
        if self.replace_labels or mask is not None:
            seg = seg.clone()
            if self.replace_labels:
                seg[0][seg[0] > 0] = 0
            if mask is not None:
                seg[0][torch.from_numpy(mask).to(seg.device)] = self.label
        if mask is not None:
            image = torch.from_numpy(params["anomalous_image"]).to(device=image.device, dtype=image.dtype)
        data_dict["image"], data_dict["segmentation"] = image, seg
        return data_dict

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(probability={self.probability}, label={self.label}, "
                f"replace_labels={self.replace_labels}, seed={self.seed}, deterministic={self.deterministic}, "
                f"blend_range={self.blend_range}, max_scale_exponent={self.max_scale_exponent}, "
                f"min_voxels={self.min_voxels})")
