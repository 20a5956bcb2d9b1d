"""IXI (healthy subjects): IXI<nnn>-<site>-<nnnn>-{T1,T2,PD}.nii.gz, one folder per modality in the release
(IXI-T1/, IXI-T2/, IXI-PD/); files are found anywhere below the source folder by their names.

IXI has no label files, and nnU-Net's fingerprinting fails on a dataset whose labels are all background. So, as
for every healthy dataset of this project, the label is the brain mask, label 1 'brain': the nonzero voxels of
the images, holes filled. Stage I ignores it. This is only a brain mask if the images are skull-stripped: the
release's images are not (nor are T1 and T2/PD on the same grid), so skull-strip and co-register them first,
keeping the file names; the conversion report says for each case whether it looks skull-stripped.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from sadm_nnunet.datasets.converters.common import LabelScheme, Release, SourceCase, group_files, make_case, \
    nifti_files

MODALITIES = ("T1", "T2", "PD")
FILE = re.compile(r"^(IXI\d+-[A-Za-z]+-\d+)-(T1|T2|PD)\.nii(\.gz)?$")


def _match(path: Path) -> tuple[str, str] | None:
    m = FILE.match(path.name)
    return None if m is None else (m.group(1), m.group(2))


def find_cases(source: Path) -> list[SourceCase]:
    groups = group_files(nifti_files(source), _match)
    # where a missing file would be: the folder holding most files of that modality
    folders = {m: Counter(f[0].parent for g in groups.values() for k, f in g.items() if k == m) for m in MODALITIES}
    cases = []
    for identifier, found in sorted(groups.items()):
        own = next(iter(found.values()))[0].parent
        expected = {m: (folders[m].most_common(1)[0][0] if folders[m] else own) / f"{identifier}-{m}.nii.gz"
                    for m in MODALITIES}
        cases.append(make_case(identifier, found, expected, label_key=None))
    return cases


RELEASE = Release(
    kind="ixi", title="IXI", default_name="IXI", modalities=MODALITIES, default_modalities=("T1",),
    labels=LabelScheme({"background": 0, "brain": 1}, None), default_test_fraction=0.0,
    example="IXI-T1/IXI002-Guys-0828-T1.nii.gz", find_cases=find_cases)
