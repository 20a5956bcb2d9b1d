"""A seeded cohort of healthy "subjects" from a few healthy brain volumes, written in nnU-Net's raw format.

Each subject is one of the source brains with a random rotation and scaling, a smooth multiplicative bias field
and a gamma change, resampled to a (coarser) grid. The label is the brain mask (label 'brain'): nnU-Net's fingerprinting needs foreground voxels, and stage I ignores it. Used for tests and the demo.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from sadm_nnunet.io_utils import write_json_atomic
from sadm_nnunet.nifti_checks import load_checked, save_nifti


def load_brains(folder: str | Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, mask) for each `<name>_t1.nii.gz` with its `<name>_mask.nii.gz` in `folder`."""
    folder = Path(folder)
    brains = []
    for t1 in sorted(folder.glob("*_t1.nii.gz")):
        name = t1.name[: -len("_t1.nii.gz")]
        mask_file = folder / f"{name}_mask.nii.gz"
        if not mask_file.is_file():
            raise FileNotFoundError(f"{mask_file} is missing (expected beside {t1})")
        brains.append((name, np.asarray(load_checked(t1)[1], dtype=np.float32),
                       np.asarray(load_checked(mask_file)[1]) > 0))
    if not brains:
        raise FileNotFoundError(f"No '*_t1.nii.gz' brain volumes in {folder}")
    return brains


def smooth_displacement(shape: tuple[int, ...], rng: np.random.Generator, amplitude: float, cells: int = 4
                        ) -> np.ndarray:
    """(3, *shape) smooth random displacement field, voxels: cubic upsampling of a `cells`^3 grid of N(0, amplitude)
    vectors per axis (a few anatomical-scale bends, no folding for amplitudes well below shape / cells)."""
    return np.stack([ndimage.zoom(rng.normal(0, amplitude, size=(cells,) * 3), np.array(shape) / cells,
                                  order=3, mode="nearest")[tuple(slice(0, s) for s in shape)] for _ in range(3)])


def random_subject(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, zoom: float,
                   deformation: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A randomly deformed, bias-corrupted, gamma-changed and resampled copy of one brain (and its mask).

    Deformation: a random rotation (+-8 degrees), per-axis scaling (0.93-1.07) and shift, and, with `deformation`
    > 0, a smooth non-linear displacement of about that many voxels (`smooth_displacement`)."""
    angle = np.deg2rad(rng.uniform(-8, 8))
    scale = rng.uniform(0.93, 1.07, size=3)
    rot = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    matrix = rot @ np.diag(1 / scale)
    centre = (np.array(image.shape) - 1) / 2
    offset = centre - matrix @ centre + rng.uniform(-2, 2, size=3)
    if deformation > 0:
        grid = np.indices(image.shape, dtype=np.float32)
        coords = np.einsum("ij,j...->i...", matrix, grid) + offset.reshape(3, 1, 1, 1)
        coords += smooth_displacement(image.shape, rng, deformation)
        warped = ndimage.map_coordinates(image, coords, order=1)
        warped_mask = ndimage.map_coordinates(mask.astype(np.float32), coords, order=1) > 0.5
    else:
        warped = ndimage.affine_transform(image, matrix, offset=offset, order=1)
        warped_mask = ndimage.affine_transform(mask.astype(np.float32), matrix, offset=offset, order=1) > 0.5
    bias = np.exp(ndimage.zoom(rng.normal(0, 0.12, size=(3, 3, 3)), np.array(image.shape) / 3, order=3))
    warped = np.clip(warped, 0, None) ** rng.uniform(0.8, 1.25) * bias[tuple(slice(0, s) for s in image.shape)]
    warped[~warped_mask] = 0
    if zoom != 1:
        warped = ndimage.zoom(warped, zoom, order=1)
        warped_mask = ndimage.zoom(warped_mask.astype(np.float32), zoom, order=1) > 0.5
        warped[~warped_mask] = 0
    return warped.astype(np.float32), warped_mask


def write_case(folder: Path, case: str, image: np.ndarray, label: np.ndarray, spacing: float) -> None:
    """Writes imagesTr/<case>_0000.nii.gz and labelsTr/<case>.nii.gz atomically."""
    affine = np.diag([spacing, spacing, spacing, 1.0])
    for sub, name, arr in (("imagesTr", f"{case}_0000.nii.gz", image.astype(np.float32)),
                           ("labelsTr", f"{case}.nii.gz", label.astype(np.uint8))):
        save_nifti(arr, affine, folder / sub / name)


def write_dataset_json(folder: Path, num_training: int, labels: dict[str, int]) -> None:
    write_json_atomic({"channel_names": {"0": "T1"}, "labels": labels, "numTraining": num_training,
                       "file_ending": ".nii.gz", "name": folder.name}, folder / "dataset.json")


def build_healthy_dataset(source: str | Path, out_folder: str | Path, num_cases: int, seed: int,
                          zoom: float = 1.0, spacing: float = 2.0) -> Path:
    """Writes an nnU-Net raw dataset of `num_cases` healthy subjects (label: brain mask) to `out_folder`."""
    out = Path(out_folder)
    brains = load_brains(source)
    rng = np.random.default_rng(seed)
    for i in range(num_cases):
        _, image, mask = brains[i % len(brains)]
        subject, subject_mask = random_subject(image, mask, rng, zoom)
        write_case(out, f"healthy_{i:03d}", subject, subject_mask.astype(np.uint8), spacing)
    write_dataset_json(out, num_cases, {"background": 0, "brain": 1})
    return out
