"""ATLAS v2.0 (stroke lesions, T1w only), BIDS-like and nested in the release (Training/R001/sub-*/ses-*/anat/):
sub-<s>_ses-<n>_space-MNI152NLin2009aSym_T1w.nii.gz with
sub-<s>_ses-<n>_space-MNI152NLin2009aSym_label-L_desc-T1lesion_mask.nii.gz (lesion 1).

Files are found anywhere below the source folder; the case identifier is sub-<s>_ses-<n>. The release's test
cases have no masks and are skipped (point the source at Training/). The images are defaced, not skull-stripped:
skull-strip them first (keeping file names) for a model trained on skull-stripped healthy brains.
"""
from __future__ import annotations

import re
from pathlib import Path

from sadm_nnunet.datasets.converters.common import LabelScheme, Release, SourceCase, group_files, make_case, \
    nifti_files

LABEL_SUFFIX = "_label-L_desc-T1lesion_mask"
FILE = re.compile(r"^(sub-[A-Za-z0-9]+(?:_ses-[A-Za-z0-9]+)?)(_[^/]*?)?(_T1w|" + LABEL_SUFFIX + r")\.nii(\.gz)?$")


def _match(path: Path) -> tuple[str, str] | None:
    m = FILE.match(path.name)
    return None if m is None else (m.group(1), "T1w" if m.group(3) == "_T1w" else "label")


def find_cases(source: Path) -> list[SourceCase]:
    cases = []
    for identifier, found in sorted(group_files(nifti_files(source), _match).items()):
        some = next(iter(found.values()))[0]
        prefix = FILE.match(some.name).group(1) + (FILE.match(some.name).group(2) or "")
        expected = {"T1w": some.parent / f"{prefix}_T1w.nii.gz",
                    "label": some.parent / f"{prefix}{LABEL_SUFFIX}.nii.gz"}
        cases.append(make_case(identifier, found, expected))
    return cases


RELEASE = Release(
    kind="atlas2", title="ATLAS v2.0", default_name="ATLAS2", modalities=("T1w",), default_modalities=("T1w",),
    labels=LabelScheme({"background": 0, "lesion": 1}, {0: 0, 1: 1}), default_test_fraction=0.2,
    example="Training/R001/sub-r001s001/ses-1/anat/sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz",
    find_cases=find_cases)
