"""WMH segmentation challenge 2017: <site>/<id>/pre/{FLAIR,T1}.nii.gz with <site>/<id>/wmh.nii.gz (sites may
nest, e.g. Amsterdam/GE3T/100). The pre/ images are bias-corrected, T1 registered to FLAIR; orig/ is not used.

Label 1 is white-matter hyperintensity ('lesion'); label 2, other pathology, becomes nnU-Net's ignore label
('ignore', 2: the highest value, excluded from the loss). The case identifier is the case folder's path below
the source folder with '_' for '/', e.g. Utrecht_0 or Amsterdam_GE3T_100. The images are not skull-stripped.
"""
from __future__ import annotations

from pathlib import Path

from sadm_nnunet.datasets.converters.common import LabelScheme, Release, SourceCase, group_files, make_case, \
    nifti_files

MODALITIES = ("FLAIR", "T1")


def find_cases(source: Path) -> list[SourceCase]:
    def match(path: Path) -> tuple[str, str] | None:
        stem = path.name.split(".")[0]
        if path.parent.name == "pre" and stem in MODALITIES:
            return str(path.parent.parent), stem
        return (str(path.parent), "label") if stem == "wmh" else None

    cases = []
    for folder, found in sorted(group_files(nifti_files(source), match).items()):
        folder = Path(folder)
        parts = folder.relative_to(source).parts or (folder.name,)
        expected = {m: folder / "pre" / f"{m}.nii.gz" for m in MODALITIES}
        expected["label"] = folder / "wmh.nii.gz"
        cases.append(make_case("_".join(parts), found, expected))
    return cases


RELEASE = Release(
    kind="wmh", title="WMH 2017", default_name="WMH2017", modalities=MODALITIES, default_modalities=("T1",),
    labels=LabelScheme({"background": 0, "lesion": 1, "ignore": 2}, {0: 0, 1: 1, 2: 2}), default_test_fraction=0.2,
    example="Utrecht/0/pre/T1.nii.gz (with Utrecht/0/wmh.nii.gz)", find_cases=find_cases)
