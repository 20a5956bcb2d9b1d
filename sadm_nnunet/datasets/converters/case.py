"""One case: read a release's files, check them, and write them in nnU-Net's raw format.

Checks (a failing case is skipped, with the file, what was found and what was expected): every file exists, holds
all the voxel data its header announces, is readable and is a 3D scalar image with finite values; all channels
and the label lie on the grid of the first channel (same size; spacing, origin and direction within the
tolerances below); label values are those the release defines. The files are written with the first channel's
geometry, the label as uint8.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from sadm_nnunet.datasets.converters.common import LabelScheme, SourceCase
from sadm_nnunet.datasets.converters.skull_strip import skull_strip_verdict
from sadm_nnunet.nifti_checks import BadImageFile, atomic_image, check_image_file

SPACING_TOLERANCE_MM = 1e-3
ORIGIN_TOLERANCE_MM = 1e-2
DIRECTION_TOLERANCE = 1e-3
MAX_VALUES_SHOWN = 20  # label values listed in a skip record
GRID = (("size", "GetSize", 0.0), ("spacing", "GetSpacing", SPACING_TOLERANCE_MM),
        ("origin", "GetOrigin", ORIGIN_TOLERANCE_MM), ("direction", "GetDirection", DIRECTION_TOLERANCE))


class CaseSkipped(Exception):
    """A case cannot be converted: which file, what is wrong, what was found, what was expected."""

    def __init__(self, file: Path | str, problem: str, found, expected) -> None:
        super().__init__(f"{file}: {problem}: found {found}, expected {expected}")
        self.record = {"file": str(file), "problem": problem, "found": found, "expected": expected}


@dataclass
class CaseResult:
    identifier: str
    subset: str  # "train" (imagesTr) or "test" (imagesTs)
    files: dict[str, str]
    skipped: dict | None = None  # CaseSkipped.record
    skull_strip: str | None = None
    skull_strip_measures: dict = field(default_factory=dict)


def read_image(path: Path) -> sitk.Image:
    if not path.is_file():
        raise CaseSkipped(path, "missing file", "no such file", "a NIfTI image")
    try:
        check_image_file(path)  # complete and finite, from the raw data (SimpleITK zero-fills both)
    except BadImageFile as e:
        raise CaseSkipped(path, e.problem, e.found, e.expected) from None
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise CaseSkipped(path, "unreadable", " ".join(str(e).split())[-300:], "a readable NIfTI image") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise CaseSkipped(path, "not a 3D scalar image", f"{image.GetDimension()}D, size {list(image.GetSize())}, "
                          f"{image.GetNumberOfComponentsPerPixel()} component(s)", "3D, 1 component")
    return image


def check_same_grid(image: sitk.Image, path: Path, reference: sitk.Image, reference_path: Path) -> None:
    for name, getter, tolerance in GRID:
        found, expected = np.array(getattr(image, getter)()), np.array(getattr(reference, getter)())
        if found.shape != expected.shape or not np.allclose(found, expected, rtol=0, atol=tolerance):
            raise CaseSkipped(path, f"{name} differs from {reference_path.name}",
                              [round(float(v), 6) for v in found], [round(float(v), 6) for v in expected])


def map_label(label: sitk.Image, path: Path, scheme: LabelScheme) -> np.ndarray:
    """The release's label values -> the dataset's, as uint8."""
    values = sitk.GetArrayViewFromImage(label)
    found = np.unique(values)
    if not np.array_equal(found, np.round(found)) or not set(found.astype(int).tolist()) <= set(scheme.mapping):
        shown = [float(v) if v % 1 else int(v) for v in found[:MAX_VALUES_SHOWN]]
        raise CaseSkipped(path, "unexpected label values",
                          shown + ([f"... ({len(found)} values)"] if len(found) > MAX_VALUES_SHOWN else []),
                          sorted(scheme.mapping))
    out = np.zeros(values.shape, dtype=np.uint8)
    for source, target in scheme.mapping.items():
        out[values == source] = target
    return out


def brain_mask(images: list[sitk.Image]) -> np.ndarray:
    """Nonzero in any channel, holes filled, as uint8 (label 1 'brain' of healthy datasets)."""
    nonzero = np.any([sitk.GetArrayViewFromImage(i) != 0 for i in images], axis=0)
    return ndimage.binary_fill_holes(nonzero).astype(np.uint8)


def _write(image: sitk.Image, reference: sitk.Image, path: Path) -> None:
    image.CopyInformation(reference)
    with atomic_image(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)


def convert_case(case: SourceCase, modalities: tuple[str, ...], scheme: LabelScheme, out: Path,
                 subset: str) -> CaseResult:
    """Checks one case and writes it to out/imagesTr+labelsTr (subset 'train') or imagesTs+labelsTs ('test')."""
    files = {m: case.images[m] for m in modalities}
    if scheme.mapping is not None:
        files["label"] = case.label
    result = CaseResult(case.identifier, subset, {k: str(v) for k, v in files.items()})
    try:
        for key in files:
            if key in case.duplicates:
                raise CaseSkipped(files[key], f"several files for {key}", [str(p) for p in case.duplicates[key]],
                                  "one file")
        images = [read_image(files[m]) for m in modalities]
        reference, reference_path = images[0], files[modalities[0]]
        for image, m in zip(images[1:], modalities[1:]):
            check_same_grid(image, files[m], reference, reference_path)
        if scheme.mapping is None:
            label = brain_mask(images)
        else:
            label_image = read_image(files["label"])
            check_same_grid(label_image, files["label"], reference, reference_path)
            label = map_label(label_image, files["label"], scheme)
    except CaseSkipped as e:
        result.skipped = e.record
        return result
    result.skull_strip, result.skull_strip_measures = skull_strip_verdict(sitk.GetArrayViewFromImage(reference))
    suffix = "Tr" if subset == "train" else "Ts"
    for i, image in enumerate(images):
        _write(image, reference, out / f"images{suffix}" / f"{case.identifier}_{i:04d}.nii.gz")
    _write(sitk.GetImageFromArray(label), reference, out / f"labels{suffix}" / f"{case.identifier}.nii.gz")
    return result
