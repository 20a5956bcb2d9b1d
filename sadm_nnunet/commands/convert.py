"""`sadm_nnunet_convert`: converts a public brain-MRI release, as published, into an nnU-Net raw dataset.

    sadm_nnunet_convert KIND SOURCE_DIR DATASET_ID [--name NAME] [--modality M [M ...]] [--keep-labels]
                        [--split FILE | --test-fraction F] [--seed N] [--overwrite] [-np N]

KIND (files are found anywhere below SOURCE_DIR by their names; default modality first):
  ixi      IXI-T1/IXI002-Guys-0828-T1.nii.gz ...       T1 | T2, PD      label: brain mask ('brain', 1)
  brats21  BraTS2021_00000/BraTS2021_00000_t1.nii.gz   t1 | t1ce, t2, flair   labels 1, 2, 4 -> 'lesion' (1)
  atlas2   sub-r001s001/ses-1/anat/sub-r001s001_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz with
           ..._label-L_desc-T1lesion_mask.nii.gz   T1w               label 1 'lesion'
  wmh      Utrecht/0/pre/T1.nii.gz, Utrecht/0/wmh.nii.gz   T1 | FLAIR   1 'lesion', 2 other pathology 'ignore'

Writes $nnUNet_raw/DatasetXXX_NAME (NAME default: IXI, BraTS2021, ATLAS2, WMH2017) with imagesTr/labelsTr, the
test cases in imagesTs/labelsTs, dataset.json, sadm_split.json (the split used) and conversion_report.json
(converted and skipped cases with the reason, skull-strip verdicts). --modality: the channels _0000, _0001, ...
in this order (case-insensitive). --keep-labels (brats21): necrosis 1, edema 2, enhancing 3 (BraTS's 4).
--split FILE: JSON {"train": [...], "test": [...]} of case identifiers (a missing list = all other cases);
without it a seeded random test set of --test-fraction of the cases (default 0.2; ixi 0: healthy data trains
stage I). Cases that fail a check are reported and skipped. Re-running replaces the dataset folder as a whole;
a DatasetXXX_NAME folder this command did not write (no conversion_report.json of its own) is refused unless
--overwrite is given. Temporary folders that a killed run left in $nnUNet_raw are removed (and counted).
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from sadm_nnunet.datasets.converters import RELEASES
from sadm_nnunet.datasets.converters.common import ConversionError
from sadm_nnunet.datasets.converters.dataset import convert


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sadm_nnunet_convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=sorted(RELEASES), help="release layout")
    parser.add_argument("source", type=Path, help="folder holding the release (searched recursively)")
    parser.add_argument("dataset_id", type=int, help="nnU-Net dataset id (1-999)")
    parser.add_argument("--name", help="dataset name (folder DatasetXXX_NAME); default per kind")
    parser.add_argument("--modality", nargs="+", help="modalities that become channels _0000, _0001, ... in order")
    parser.add_argument("--keep-labels", action="store_true", help="brats21: keep the tumour classes")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--split", type=Path, help='JSON {"train": [...], "test": [...]} of case identifiers')
    group.add_argument("--test-fraction", type=float, help="fraction of cases for the seeded default test set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the default split (default 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing DatasetXXX_NAME folder that this command did not write")
    parser.add_argument("-np", "--num-processes", type=int, default=int(os.environ.get("nnUNet_def_n_proc", 4)),
                        help="cases converted in parallel (default: $nnUNet_def_n_proc or 4)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    release = RELEASES[args.kind]
    name = args.name or release.default_name
    try:
        if not 1 <= args.dataset_id <= 999:
            raise ConversionError(f"DATASET_ID must be 1-999 (nnU-Net's DatasetXXX); found {args.dataset_id}")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ConversionError(f"--name must use letters, digits, '_' and '-' only; found '{name}'")
        if args.test_fraction is not None and not 0 <= args.test_fraction < 1:
            raise ConversionError(f"--test-fraction must be in [0, 1); found {args.test_fraction}")
        convert(release, args.source, args.dataset_id, name, release.resolve_modalities(args.modality),
                release.label_scheme(args.keep_labels), args.split, args.test_fraction, args.seed,
                args.num_processes, args.overwrite)
    except ConversionError as e:
        raise SystemExit(f"sadm_nnunet_convert: {e}") from None


if __name__ == "__main__":
    main()
