"""Seeded synthetic lesions of several kinds inserted into healthy subjects, and nnU-Net raw datasets of them.

These are the generated pathologies of the benchmark data (DESIGN.md §5: no real patient cohort is available
here). Every lesion is drawn from a `numpy.random.Generator` only, so a seed gives byte-identical arrays, and is
made with vectorised numpy/scipy.ndimage operations.

Common rules for all kinds
--------------------------
- **Scale.** Sizes are fractions of the brain's *extent* (the mean side of the brain mask's bounding box, in
  voxels; about 79 voxels = 158 mm for the 91x109x91 brains at 2 mm), so a lesion covers roughly the same
  anatomy on a brain downsampled to 6 mm (about 26 voxels). Every size has a floor in voxels so that each part
  of a lesion stays visible (at least about one voxel thick) at coarse resolutions; on small grids lesions are
  therefore somewhat larger in proportion. Voxels are assumed isotropic.
- **Intensities** are set relative to the subject's own brain intensity statistics: `lo`, `p50` and `hi` are the
  1st, 50th and 99th percentiles of the image inside the brain mask. Bright lesion parts are pulled towards
  values above `hi` (brighter than any normal tissue, at most about 1.4 `hi`), dark parts towards `lo`
  (CSF-like). Each lesion has a low-amplitude multiplicative texture (a few per cent).
- **Soft edges.** Each part is defined by an (approximate) signed distance in voxels, negative inside, to its
  boundary; the intensity change is blended in with a smooth step over +-0.7 voxels around the boundary. The
  label is the hard region (signed distance < 0) inside the brain mask. Intensities change only inside the
  brain mask and within 2 voxels of the label (mostly within one); nothing else in the image changes.
- **One lesion, one piece.** Where the brain mask cuts a tumour or stroke into several pieces, only the largest
  connected component is kept (label and intensity change).
- **Placement** is retried (with further draws from the same generator) until the lesion has a non-trivial
  number of voxels inside the brain mask (and, per kind, the required parts); `generate_lesion` raises
  `RuntimeError` if that fails 50 times.

The kinds (`LESION_KINDS`)
--------------------------
``"tumour"`` — a glioblastoma-like mass (appearance of a contrast-enhanced T1 with FLAIR-like oedema).
    One irregular blob: a randomly rotated ellipsoid (semi-axes 0.8-1.2 x the radius) whose radius is deformed
    by a smooth random field (cubic upsampling of a 4^3 normal grid). Three nested layers, each with its own
    smooth deformation: an enhancing solid tumour of radius 0.5-0.7 x the outer radius (at least 2.5 voxels)
    and a necrotic core of 0.35-0.6 x the tumour radius (at least 1.2 voxels) inside it, leaving a rim at least
    max(1, 0.3 x tumour radius) voxels thick; around them a more irregular oedema (amplitude 0.3) whose outer
    radius is 10-20 % of the brain extent (at least 4 voxels) and at least max(1, 0.25 x tumour radius) voxels
    beyond the tumour. The centre lies at least 0.8 x the tumour radius deep inside the brain, so the
    oedema may reach the brain surface and is cut by the mask. The whole lesion covers about 1.5-9 % of the
    brain. Look: a bright enhancing ring (blended to 1.15-1.35 `hi`), a dark necrotic centre (`lo` + 5-25 %
    of `p50` - `lo`), and a mildly brightened halo (the tissue blended by 35-55 % towards 1.05 `hi`).
    Label = core + rim + oedema (the whole abnormal region); `generate_lesion` also returns the parts "core",
    "rim" and "oedema".
``"ms"`` — multiple-sclerosis-like white-matter foci (FLAIR-like appearance).
    3-10 small, separate ellipsoids, randomly rotated, with semi-axes r x (1, 1-1.8, 0.8-1.2) where r is
    1.2-4 % of the brain extent (at least 1.1 voxels), i.e. about 4-15 mm long at 2 mm. Centres are drawn
    from white-matter-like voxels (intensity at or above the brain's 70th percentile) deep enough for the
    focus to stay inside the brain, with at least 1.5 voxels of normal tissue between neighbouring foci, so
    each focus is its own connected component. Look: well-delineated hyperintense spots (blended to 1.1-1.3
    `hi`, above the surrounding white matter). Label = the foci; part "foci".
``"stroke"`` — a territorial (e.g. middle cerebral artery) infarct in the chronic stage (T1 appearance).
    One large wedge: a cone whose apex lies deep in the brain, 15-45 % of the way from the brain's centroid
    to a point on the brain surface (drawn with a preference for lateral surface points, i.e. along the first
    array axis, which is left-right for the MNI-grid brains), opening towards that point with a half-angle of
    20-35 degrees deformed by a smooth random field (amplitude 0.25), cut by the brain mask, so it always
    reaches the cortical surface; the apex is blunt (at least 1.5 voxels wide). It covers about 1-6 % of the
    brain at 2 mm (up to about 8 % at 6 mm). Look: a large, smooth, dark, CSF-like territory (the tissue
    blended by 75-95 % towards `lo` + 0-15 % of `p50` - `lo`). Label = the territory; part "territory".

Datasets
--------
`build_lesion_dataset` writes nnU-Net raw datasets of healthy-cohort subjects (`healthy_cohort.random_subject`)
with one lesion each (labels ``{"background": 0, "lesion": 1}``), as training cases (imagesTr/labelsTr plus
dataset.json) or as held-out test cases (imagesTs/labelsTs), and records how each case was made in
``synthetic_lesions.json``. Case number k is a function of (seed, k) only (its own generator seeded with
``[seed, 1, k]``), so disjoint case ranges of one seed are different subjects and lesions, and (with
healthy_fraction=0) a dataset of N cases is the first N cases of a larger one. Note that the subjects are
deformed copies of only a few source brains (source brain k mod n_brains), so a test set differs from the
training set in deformation, intensity and lesion, not in the underlying anatomy.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from sadm_nnunet.datasets.healthy_cohort import load_brains, random_subject, write_case, write_dataset_json
from sadm_nnunet.io_utils import write_json_atomic
from sadm_nnunet.nifti_checks import save_nifti

LESION_KINDS = ("tumour", "ms", "stroke")
LESION_LABELS = {"background": 0, "lesion": 1}
SPLITS = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}
MANIFEST = "synthetic_lesions.json"

_EDGE = 0.7          # half-width of the soft edge, voxels
_REACH = 2.0         # intensities change only within this distance (voxels) of the label
_MAX_ATTEMPTS = 50


@dataclass
class SyntheticLesion:
    """A subject with one inserted lesion: the new image, its label (uint8, 0/1), and the label split into the
    parts of the kind (bool masks, disjoint, union = label)."""
    image: np.ndarray
    label: np.ndarray
    kind: str
    parts: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class _Brain:
    image: np.ndarray
    mask: np.ndarray
    depth: np.ndarray     # Euclidean distance to the nearest non-brain voxel
    extent: float         # mean side of the brain's bounding box, voxels
    lo: float
    p50: float
    hi: float
    p70: float
    voxels: int


def _brain(image: np.ndarray, mask: np.ndarray) -> _Brain:
    values = image[mask]
    lo, p50, p70, hi = np.percentile(values, [1, 50, 70, 99])
    idx = np.argwhere(mask)
    extent = float(np.mean(idx.max(0) - idx.min(0) + 1))
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
    return _Brain(image, mask, depth, extent, float(lo), float(p50), float(hi), float(p70), int(mask.sum()))


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, cells: int) -> np.ndarray:
    """A smooth random field of `shape` (about `cells` features per axis), standardised to mean 0, std 1."""
    grid = rng.normal(size=(cells,) * len(shape))
    fld = ndimage.zoom(grid, [s / cells for s in shape], order=3, mode="nearest")
    fld = np.pad(fld, [(0, max(0, s - f)) for s, f in zip(shape, fld.shape)], mode="edge")
    fld = fld[tuple(slice(0, s) for s in shape)]
    return (fld - fld.mean()) / max(fld.std(), 1e-6)


def _weight(signed_distance: np.ndarray) -> np.ndarray:
    """Smooth step: 1 deep inside (signed distance <= -_EDGE), 0.5 on the boundary, 0 beyond +_EDGE."""
    x = np.clip((_EDGE - signed_distance) / (2 * _EDGE), 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _box(centre: np.ndarray, half: int, shape: tuple[int, ...]) -> tuple[tuple[slice, ...], np.ndarray]:
    """Slices of the box of half-size `half` around `centre` (clipped to the volume) and the voxel offsets from
    `centre` inside it, shape (3, *box)."""
    c = np.floor(centre).astype(int)
    lower = np.maximum(c - half, 0)
    upper = np.minimum(c + half + 1, shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lower, upper))
    axes = [np.arange(a, b) - centre[i] for i, (a, b) in enumerate(zip(lower, upper))]
    return sl, np.stack(np.meshgrid(*axes, indexing="ij"))


def _ellipsoid_distance(offsets: np.ndarray, rotation: np.ndarray, semi_axes: np.ndarray) -> np.ndarray:
    """Distance in units of the mean semi-axis, scaled so that the ellipsoid surface sits at the mean semi-axis:
    subtracting the mean semi-axis gives an approximate signed distance in voxels."""
    local = np.einsum("ji,j...->i...", rotation, offsets)
    mean = semi_axes.mean()
    return np.sqrt(np.sum((local / (semi_axes / mean)[:, None, None, None]) ** 2, axis=0))


def _pick(candidates: np.ndarray, rng: np.random.Generator, p: np.ndarray | None = None) -> np.ndarray:
    """One of the voxel coordinates `candidates` (n, 3) at random, with a sub-voxel jitter."""
    return candidates[rng.choice(len(candidates), p=p)] + rng.uniform(-0.5, 0.5, size=3)


def _confine(image: np.ndarray, label: np.ndarray, original: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keeps the largest connected component of `label` (a single lesion can be cut into pieces by the brain
    mask) and restores `original` wherever the nearest label voxel belongs to another component or is more than
    _REACH voxels away (soft edges that reach into the brain across a gap outside the mask)."""
    components, n = ndimage.label(label)
    if n == 0:
        return original, label
    keep = int(np.argmax(np.bincount(components.ravel())[1:])) + 1
    distance, nearest = ndimage.distance_transform_edt(components == 0, return_indices=True)
    changed = (components[tuple(nearest)] == keep) & (distance <= _REACH)
    return np.where(changed, image, original), components == keep


def _tumour(b: _Brain, rng: np.random.Generator) -> SyntheticLesion | None:
    r_out = max(rng.uniform(0.10, 0.20) * b.extent, 4.0)
    r_tum = max(rng.uniform(0.5, 0.7) * r_out, 2.5)
    r_nec = max(rng.uniform(0.35, 0.6) * r_tum, 1.2)
    rim = max(1.0, 0.3 * r_tum)
    oedema = max(1.0, 0.25 * r_tum)
    r_out = max(r_out, r_tum + oedema)
    semi_axes = rng.uniform(0.8, 1.2, size=3)
    rotation = _rotation(rng)
    deep = np.argwhere(b.depth >= 0.8 * r_tum)
    if len(deep) == 0:
        deep = np.argwhere(b.depth >= 0.5 * b.depth.max())
    centre = _pick(deep, rng)
    half = int(np.ceil(1.45 * r_out * semi_axes.max() / semi_axes.mean() + _EDGE)) + 1
    sl, off = _box(centre, half, b.image.shape)
    shape = off.shape[1:]
    dist = _ellipsoid_distance(off, rotation, semi_axes)
    n_tum, n_nec, n_oed = (_smooth_noise(shape, rng, 4) for _ in range(3))
    sd_tum = dist - r_tum * np.clip(1 + 0.15 * n_tum, 0.6, 1.45)
    sd_nec = np.maximum(dist - r_nec * np.clip(1 + 0.2 * n_nec, 0.6, 1.45), sd_tum + rim)
    sd_out = np.minimum(dist - r_out * np.clip(1 + 0.3 * n_oed, 0.5, 1.45), sd_tum - oedema)
    texture = 1 + 0.04 * _smooth_noise(shape, rng, max(2, min(shape) // 2))
    oedema_blend = rng.uniform(0.35, 0.55)
    rim_value = rng.uniform(1.15, 1.35) * b.hi
    core_value = b.lo + rng.uniform(0.05, 0.25) * (b.p50 - b.lo)

    inside = b.mask[sl]
    v = b.image[sl].astype(np.float64)
    v = v + _weight(sd_out) * oedema_blend * (1.05 * b.hi * texture - v)
    v = v + _weight(sd_tum) * (rim_value * texture - v)
    v = v + _weight(sd_nec) * (core_value * texture - v)
    v, out_box = _confine(np.where(inside, v, b.image[sl]), (sd_out < 0) & inside, b.image[sl])
    core_box, tum_box = (sd_nec < 0) & out_box, (sd_tum < 0) & out_box
    parts_box = {"core": core_box, "rim": tum_box & ~core_box, "oedema": out_box & ~tum_box}
    if (not parts_box["core"].any() or not parts_box["rim"].any()
            or out_box.sum() < max(20, 0.002 * b.voxels)):
        return None
    image = b.image.copy()
    image[sl] = v
    parts = {}
    for name, part in parts_box.items():
        parts[name] = np.zeros(b.mask.shape, bool)
        parts[name][sl] = part
    label = np.zeros(b.mask.shape, np.uint8)
    label[sl] = out_box
    return SyntheticLesion(image.astype(np.float32), label, "tumour", parts)


def _ms(b: _Brain, rng: np.random.Generator) -> SyntheticLesion | None:
    white = b.mask & (b.image >= b.p70)
    wm_idx = np.argwhere(white)
    if len(wm_idx) == 0:
        wm_idx = np.argwhere(b.mask)
    wm_depth = b.depth[tuple(wm_idx.T)]
    placed: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (centre, rotation, semi-axes)
    for _ in range(int(rng.integers(3, 11))):
        r = max(rng.uniform(0.012, 0.04) * b.extent, 1.1)
        semi_axes = r * np.array([1.0, rng.uniform(1.0, 1.8), rng.uniform(0.8, 1.2)])
        rotation = _rotation(rng)
        reach = semi_axes.max()
        deep = wm_idx[wm_depth >= min(reach + 1, 0.8 * wm_depth.max())]
        for _try in range(30):
            centre = _pick(deep, rng)
            if all(np.linalg.norm(centre - c) >= reach + a.max() + 1.5 + 2 * _EDGE for c, _, a in placed):
                placed.append((centre, rotation, semi_axes))
                break
    if len(placed) < 3:
        return None
    image = b.image.astype(np.float64)
    label = np.zeros(b.mask.shape, bool)
    for centre, rotation, semi_axes in placed:
        sl, off = _box(centre, int(np.ceil(semi_axes.max() + _EDGE)) + 1, b.image.shape)
        sd = _ellipsoid_distance(off, rotation, semi_axes) - semi_axes.mean()
        value = rng.uniform(1.1, 1.3) * b.hi * (1 + 0.03 * rng.normal(size=sd.shape))
        v = image[sl]
        image[sl] = np.where(b.mask[sl], v + _weight(sd) * (value - v), v)
        label[sl] |= (sd < 0) & b.mask[sl]
    if ndimage.label(label)[1] < 3 or label.sum() < 9:
        return None
    image = np.where(ndimage.distance_transform_edt(~label) <= _REACH, image, b.image)
    return SyntheticLesion(image.astype(np.float32), label.astype(np.uint8), "ms", {"foci": label})


def _stroke(b: _Brain, rng: np.random.Generator) -> SyntheticLesion | None:
    surface = np.argwhere(b.mask & ~ndimage.binary_erosion(b.mask))
    centroid = np.argwhere(b.mask).mean(0)
    direction = surface - centroid
    lateral = np.abs(direction[:, 0]) / np.maximum(np.linalg.norm(direction, axis=1), 1e-6)
    p = lateral ** 4 + 0.02
    target = _pick(surface, rng, p / p.sum())
    apex = centroid + rng.uniform(0.15, 0.45) * (target - centroid)
    axis = (target - apex) / max(np.linalg.norm(target - apex), 1e-6)
    theta = np.deg2rad(rng.uniform(20, 35))
    # a blunt apex: the cone's vertex sits behind the apex, so that the territory is >= 1.5 voxels wide there
    vertex = apex - axis * 1.5 / np.tan(theta)
    # the bounding box of the brain is enough: the territory is cut by the mask
    idx = np.argwhere(b.mask)
    lower, upper = idx.min(0), idx.max(0) + 1
    sl = tuple(slice(int(a), int(c)) for a, c in zip(lower, upper))
    off = np.stack(np.meshgrid(*[np.arange(a, c) - vertex[i] for i, (a, c) in enumerate(zip(lower, upper))],
                               indexing="ij"))
    shape = off.shape[1:]
    proj = np.einsum("i,i...->...", axis, off)
    radius = np.sqrt(np.sum(off ** 2, axis=0))
    angle = np.arctan2(np.sqrt(np.maximum(radius ** 2 - proj ** 2, 0)), proj)
    theta_eff = theta * np.clip(1 + 0.25 * _smooth_noise(shape, rng, 5), 0.5, 1.6)
    # signed distance: arc length beyond the cone's surface, or distance behind the apex
    sd = np.maximum((angle - theta_eff) * radius, np.linalg.norm(apex - vertex) - proj)
    texture = 1 + 0.06 * _smooth_noise(shape, rng, max(2, min(shape) // 3))
    value = b.lo + rng.uniform(0.0, 0.15) * (b.p50 - b.lo)
    strength = rng.uniform(0.75, 0.95)
    inside = b.mask[sl]
    v = b.image[sl].astype(np.float64)
    darkened = np.where(inside, v + _weight(sd) * strength * (value * texture - v), v)
    v, region = _confine(darkened, (sd < 0) & inside, v)
    if region.sum() < max(20, 0.005 * b.voxels):
        return None
    image = b.image.copy()
    image[sl] = v
    label = np.zeros(b.mask.shape, bool)
    label[sl] = region
    return SyntheticLesion(image.astype(np.float32), label.astype(np.uint8), "stroke", {"territory": label})


_GENERATORS = {"tumour": _tumour, "ms": _ms, "stroke": _stroke}


def generate_lesion(image: np.ndarray, brain_mask: np.ndarray, kind: str, rng: np.random.Generator
                    ) -> SyntheticLesion:
    """Inserts one lesion of `kind` (one of LESION_KINDS; see the module docstring) into `image`, inside
    `brain_mask`. Returns the new float32 image, the uint8 label and the parts of the lesion."""
    if kind not in _GENERATORS:
        raise ValueError(f"Unknown lesion kind {kind!r}; expected one of {LESION_KINDS}")
    image = np.asarray(image, dtype=np.float32)
    mask = np.asarray(brain_mask).astype(bool)
    if image.ndim != 3 or image.shape != mask.shape:
        raise ValueError(f"Expected a 3D image and a brain mask of the same shape, got {image.shape} "
                         f"and {mask.shape}")
    if mask.sum() < 27:
        raise ValueError(f"The brain mask has only {int(mask.sum())} voxels; too few to place a lesion")
    brain = _brain(image, mask)
    for _ in range(_MAX_ATTEMPTS):
        lesion = _GENERATORS[kind](brain, rng)
        if lesion is not None:
            return lesion
    raise RuntimeError(f"Could not place a {kind} lesion with enough voxels inside the brain mask in "
                       f"{_MAX_ATTEMPTS} attempts (brain of {brain.voxels} voxels, shape {image.shape})")


def insert_lesion(image: np.ndarray, brain_mask: np.ndarray, kind: str, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(image with one lesion of `kind`, float32; label, uint8 0/1) — `generate_lesion` without the parts."""
    lesion = generate_lesion(image, brain_mask, kind, rng)
    return lesion.image, lesion.label


def _write_test_case(folder: Path, case: str, image: np.ndarray, label: np.ndarray, spacing: float) -> None:
    """Writes imagesTs/<case>_0000.nii.gz and labelsTs/<case>.nii.gz atomically (geometry as write_case)."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    images, labels = SPLITS["test"]
    for sub, name, arr in ((images, f"{case}_0000.nii.gz", image.astype(np.float32)),
                           (labels, f"{case}.nii.gz", label.astype(np.uint8))):
        save_nifti(arr, affine, folder / sub / name)


def build_lesion_dataset(source: str | Path, out_folder: str | Path, num_cases: int, seed: int, kind: str,
                         zoom: float = 1.0, spacing: float = 2.0, healthy_fraction: float = 0.0,
                         first_index: int = 0, case_prefix: str = "case", split: str = "train") -> Path:
    """Writes `num_cases` subjects with one `kind` lesion each to the nnU-Net raw dataset `out_folder`.

    Cases are named `<case_prefix>_<k:03d>` for k = first_index, ..., first_index + num_cases - 1; case k is
    subject `random_subject` of source brain k mod n_brains (from `load_brains(source)`, resampled by `zoom`,
    written with isotropic `spacing` mm) drawn from a generator seeded with [seed, 1, k], followed by its lesion
    from the same generator. round(healthy_fraction * num_cases) of the cases, chosen at random (generator
    [seed, 2, first_index, num_cases]), stay lesion-free, with an all-zero label. Labels: background 0, lesion 1.

    split="train" writes imagesTr/labelsTr and (re)writes dataset.json with numTraining = the number of images
    now in imagesTr. split="test" writes a held-out set to imagesTs/labelsTs and leaves dataset.json alone (use a
    first_index beyond the training cases, or another seed, so that the test cases differ from them).
    Each case is also recorded in `synthetic_lesions.json` (kind, source brain, lesion voxels, seed, split).
    Every file is written atomically. Returns `out_folder`.
    """
    if kind not in LESION_KINDS:
        raise ValueError(f"Unknown lesion kind {kind!r}; expected one of {LESION_KINDS}")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {tuple(SPLITS)}")
    if num_cases < 1 or first_index < 0 or seed < 0:
        raise ValueError("num_cases must be >= 1, first_index and seed >= 0")
    if not 0.0 <= healthy_fraction <= 1.0:
        raise ValueError(f"healthy_fraction must be in [0, 1], got {healthy_fraction}")
    out = Path(out_folder)
    brains = load_brains(source)
    num_healthy = int(round(healthy_fraction * num_cases))
    healthy = set(np.random.default_rng([seed, 2, first_index, num_cases])
                  .permutation(num_cases)[:num_healthy].tolist())
    records = {}
    for i in range(num_cases):
        index = first_index + i
        case = f"{case_prefix}_{index:03d}"
        rng = np.random.default_rng([seed, 1, index])
        name, image, mask = brains[index % len(brains)]
        subject, subject_mask = random_subject(image, mask, rng, zoom)
        if i in healthy:
            label = np.zeros(subject.shape, np.uint8)
        else:
            subject, label = insert_lesion(subject, subject_mask, kind, rng)
        if split == "train":
            write_case(out, case, subject, label, spacing)
        else:
            _write_test_case(out, case, subject, label, spacing)
        records[case] = {"split": split, "kind": None if i in healthy else kind, "source_brain": name,
                         "seed": seed, "index": index, "zoom": zoom, "spacing": spacing,
                         "lesion_voxels": int(label.sum())}
    manifest_file = out / MANIFEST
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    manifest.setdefault("generator", __name__)
    manifest.setdefault("labels", LESION_LABELS)
    manifest.setdefault("cases", {}).update(records)
    manifest["cases"] = dict(sorted(manifest["cases"].items()))
    write_json_atomic(manifest, manifest_file)
    if split == "train":
        images = [p for p in (out / "imagesTr").glob("*_0000.nii.gz") if not p.name.startswith(".")]
        write_dataset_json(out, len(images), LESION_LABELS)
    return out
