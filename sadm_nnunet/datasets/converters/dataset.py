"""A whole conversion: the output folder, the cases (in parallel, with a progress bar), dataset.json, the split
and the conversion report. The dataset folder is built beside its final place and appears only when complete;
converting again into the same DatasetXXX_NAME replaces it as a whole, but only a folder this command wrote (its
conversion report is the mark) unless `overwrite` is given.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from tqdm import tqdm

from sadm_nnunet.datasets.converters.case import CaseResult, convert_case
from sadm_nnunet.datasets.converters.common import ConversionError, LabelScheme, Release, SourceCase, nifti_files
from sadm_nnunet.datasets.converters.skull_strip import CANNOT_TELL, NOT_STRIPPED, STRIPPED
from sadm_nnunet.datasets.converters.splits import SPLIT_FILE, default_split, read_split
from sadm_nnunet.io_utils import atomic_folder, remove_stale_temporaries, write_json_atomic

REPORT_FILE = "conversion_report.json"
NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def output_folder(dataset_id: int, name: str) -> Path:
    """$nnUNet_raw/DatasetXXX_NAME, refused when nnU-Net already knows another dataset with this id."""
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise ConversionError("nnUNet_raw is not set; set it to the folder of nnU-Net's raw datasets, e.g. "
                              "export nnUNet_raw=/data/nnUNet_raw")
    folder = Path(raw) / f"Dataset{dataset_id:03d}_{name}"
    prefix = f"Dataset{dataset_id:03d}"  # how nnU-Net looks datasets up by id
    for variable in NNUNET_FOLDERS:
        root = Path(os.environ.get(variable) or "/nonexistent")
        others = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix)
                        and p.name != folder.name) if root.is_dir() else []
        if others:
            raise ConversionError(f"Dataset id {dataset_id} is taken in {variable}={root}: found {others}, expected "
                                  f"none or {folder.name}. nnU-Net finds datasets by id; choose another DATASET_ID")
    return folder


def written_by_us(folder: Path) -> bool:
    """True when `folder` holds the conversion report this command writes for it (the mark of a converted dataset)."""
    try:
        report = json.loads((folder / REPORT_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and report.get("dataset") == folder.name and "kind" in report


def refuse_foreign_folder(out: Path, overwrite: bool) -> None:
    """A DatasetXXX_NAME folder that this command did not write is not replaced unless `overwrite`."""
    if out.exists() and not overwrite and not (out.is_dir() and written_by_us(out)):
        shown = sorted(p.name for p in out.iterdir())[:5] if out.is_dir() else "a file"
        raise ConversionError(f"{out} exists and was not written by sadm_nnunet_convert (found {shown}, no "
                              f"{REPORT_FILE} of a conversion); expected no folder there. Give --overwrite to "
                              f"replace it, or choose another DATASET_ID or --name")


def find_cases(release: Release, source: Path) -> list[SourceCase]:
    if not source.is_dir():
        raise ConversionError(f"SOURCE_DIR {source} is not a folder")
    cases = release.find_cases(source)
    if not cases:
        others = [str(p.relative_to(source)) for _, p in zip(range(3), nifti_files(source))]
        raise ConversionError(f"No {release.title} cases below {source}: expected files named like {release.example}"
                              f"; found " + (f"other NIfTI files, e.g. {others}" if others else "no NIfTI files"))
    return cases


def _convert(item: tuple[SourceCase, str], modalities: tuple[str, ...], scheme: LabelScheme, out: Path
             ) -> CaseResult:
    return convert_case(item[0], modalities, scheme, out, item[1])


def run_cases(items: list[tuple[SourceCase, str]], modalities: tuple[str, ...], scheme: LabelScheme, out: Path,
              num_processes: int) -> list[CaseResult]:
    work = partial(_convert, modalities=modalities, scheme=scheme, out=out)
    progress = {"total": len(items), "desc": "Converting", "unit": "case"}
    if num_processes <= 1:
        return [work(item) for item in tqdm(items, **progress)]
    with ProcessPoolExecutor(num_processes) as pool:
        return list(tqdm(pool.map(work, items), **progress))


def convert(release: Release, source: Path, dataset_id: int, name: str, modalities: tuple[str, ...],
            scheme: LabelScheme, split_file: Path | None = None, test_fraction: float | None = None, seed: int = 0,
            num_processes: int = 1, overwrite: bool = False) -> dict:
    """Converts the release below `source` into $nnUNet_raw/DatasetXXX_NAME; returns the conversion report. An
    existing folder of that name is replaced only when this command wrote it, or with `overwrite`."""
    source = Path(source).absolute()
    out = output_folder(dataset_id, name)
    if out.resolve() == source.resolve() or out.resolve() in source.resolve().parents:
        raise ConversionError(f"SOURCE_DIR {source} lies inside the output folder {out}, which a conversion replaces "
                              f"as a whole (the release would be deleted); expected a source outside {out}. Move "
                              f"the release elsewhere or choose another DATASET_ID or --name")
    refuse_foreign_folder(out, overwrite)
    cases = find_cases(release, source)
    ids = [c.identifier for c in cases]
    fraction = release.default_test_fraction if test_fraction is None else test_fraction
    split = read_split(split_file, ids) if split_file else default_split(ids, fraction, seed)
    subsets = {**{i: "train" for i in split["train"]}, **{i: "test" for i in split["test"]}}
    items = [(c, subsets[c.identifier]) for c in cases if c.identifier in subsets]
    replacing = out.is_dir()
    removed = remove_stale_temporaries(out.parent)
    if removed:
        print(f"Removed {removed} temporary file(s)/folder(s) left in {out.parent} by interrupted runs.")
    with atomic_folder(out) as tmp:
        results = run_cases(items, modalities, scheme, tmp, num_processes)
        report = make_report(release, source, out.name, modalities, scheme, results,
                             sorted(set(ids) - set(subsets)))
        if report["converted"]["train"] == 0:
            print_summary(report, out)
            raise ConversionError(f"No training case could be converted from {source}; nothing was written")
        write_json_atomic({"channel_names": {str(i): m for i, m in enumerate(modalities)}, "labels": scheme.labels,
                           "numTraining": report["converted"]["train"], "file_ending": ".nii.gz", "name": name,
                           "description": f"{release.title} converted by sadm_nnunet_convert from {source}"},
                          tmp / "dataset.json")
        write_json_atomic(split, tmp / SPLIT_FILE)
        write_json_atomic(report, tmp / REPORT_FILE)
    print_summary(report, out)
    print(f"Report: {out / REPORT_FILE}; split: {out / SPLIT_FILE}")
    if replacing:
        print(f"Replaced the earlier {out}.")
        preprocessed = Path(os.environ.get("nnUNet_preprocessed") or "/nonexistent") / out.name
        if preprocessed.is_dir():
            print(f"Note: {preprocessed} was made from the earlier conversion; run "
                  f"nnUNetv2_plan_and_preprocess -d {dataset_id} --clean again.")
    print(f"Check it with: nnUNetv2_plan_and_preprocess -d {dataset_id} --verify_dataset_integrity")
    return report


def make_report(release: Release, source: Path, dataset: str, modalities: tuple[str, ...], scheme: LabelScheme,
                results: list[CaseResult], not_in_split: list[str]) -> dict:
    done = [r for r in results if r.skipped is None]
    verdicts = Counter(r.skull_strip for r in done)
    return {
        "kind": release.kind, "source": str(source), "dataset": dataset, "modalities": list(modalities),
        "labels": scheme.labels,
        "converted": {s: sum(r.subset == s for r in done) for s in ("train", "test")},
        "skipped": [{"identifier": r.identifier, "set": r.subset, **r.skipped} for r in results if r.skipped],
        "not_in_split": not_in_split,
        "skull_strip": {v: verdicts.get(v, 0) for v in (STRIPPED, NOT_STRIPPED, CANNOT_TELL)},
        "label_is_brain_mask": scheme.mapping is None,
        "cases": [{"identifier": r.identifier, "set": r.subset, "skull_strip": r.skull_strip,
                   "skull_strip_measures": r.skull_strip_measures, "files": r.files} for r in done],
    }


def print_summary(report: dict, out: Path) -> None:
    n = report["converted"]
    print(f"{out.name}: converted {n['train'] + n['test']} case(s) ({n['train']} -> imagesTr, {n['test']} -> "
          f"imagesTs), skipped {len(report['skipped'])}.")
    for s in report["skipped"]:
        print(f"  skipped {s['identifier']}: {s['file']}: {s['problem']}: found {s['found']}, expected "
              f"{s['expected']}")
    if report["not_in_split"]:
        print(f"Not in the split file, not converted: {len(report['not_in_split'])} case(s).")
    print("Skull stripping (first channel): " + ", ".join(f"{k} {v}" for k, v in report["skull_strip"].items()))
    doubtful = [c["identifier"] for c in report["cases"] if c["skull_strip"] != STRIPPED]
    if doubtful:
        consequence = ("their label (the nonzero voxels) is then not a brain mask" if report["label_is_brain_mask"]
                       else "a model of skull-stripped healthy brains will flag the skull")
        print(f"WARNING: {len(doubtful)} case(s) do not look skull-stripped, e.g. {doubtful[:3]}; {consequence}. "
              f"Skull-strip them first (keeping the file names) if that is the case.")
