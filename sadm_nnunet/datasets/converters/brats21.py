"""BraTS 2021 (RSNA-ASNR-MICCAI, training data): BraTS2021_<id>/BraTS2021_<id>_{t1,t1ce,t2,flair,seg}.nii.gz.

The images are skull-stripped and co-registered (1 mm, 240x240x155). Label values: 1 necrotic tumour core,
2 peritumoral oedema, 4 enhancing tumour. By default any tumour label becomes 1 'lesion' (the anomaly);
--keep-labels keeps the classes, with 4 written as 3 because nnU-Net needs consecutive label values.
Cases are found anywhere below the source folder by their file names.
"""
from __future__ import annotations

import re
from pathlib import Path

from sadm_nnunet.datasets.converters.common import LabelScheme, Release, SourceCase, group_files, make_case, \
    nifti_files

MODALITIES = ("t1", "t1ce", "t2", "flair")
FILE = re.compile(r"^(BraTS2021_\d+)_(t1|t1ce|t2|flair|seg)\.nii(\.gz)?$")


def _match(path: Path) -> tuple[str, str] | None:
    m = FILE.match(path.name)
    return None if m is None else (m.group(1), "label" if m.group(2) == "seg" else m.group(2))


def find_cases(source: Path) -> list[SourceCase]:
    cases = []
    for identifier, found in sorted(group_files(nifti_files(source), _match).items()):
        folder = next(iter(found.values()))[0].parent
        expected = {m: folder / f"{identifier}_{m}.nii.gz" for m in MODALITIES}
        expected["label"] = folder / f"{identifier}_seg.nii.gz"
        cases.append(make_case(identifier, found, expected))
    return cases


RELEASE = Release(
    kind="brats21", title="BraTS 2021", default_name="BraTS2021", modalities=MODALITIES, default_modalities=("t1",),
    labels=LabelScheme({"background": 0, "lesion": 1}, {0: 0, 1: 1, 2: 1, 4: 1}),
    kept_labels=LabelScheme({"background": 0, "necrosis": 1, "edema": 2, "enhancing": 3}, {0: 0, 1: 1, 2: 2, 4: 3}),
    default_test_fraction=0.2, example="BraTS2021_00000/BraTS2021_00000_t1.nii.gz", find_cases=find_cases)
