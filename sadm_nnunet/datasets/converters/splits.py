"""Which cases go to imagesTr/labelsTr ("train") and which to imagesTs/labelsTs ("test").

A split is JSON {"train": [identifiers], "test": [identifiers]}. In a user's file a missing list means all other
cases; when both lists are given, cases in neither are not converted. The split used is written to the dataset
folder as sadm_split.json, in the same format, so `--split` with that file reproduces it. nnU-Net's own
cross-validation folds (splits_final.json) are made later by nnU-Net from imagesTr.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sadm_nnunet.datasets.converters.common import ConversionError

SPLIT_FILE = "sadm_split.json"


def default_split(identifiers: list[str], test_fraction: float, seed: int) -> dict:
    """A seeded random test set of round(test_fraction * n) cases; the same identifiers and seed give the same
    split whatever order the files were found in."""
    ids = sorted(identifiers)
    order = np.random.default_rng(seed).permutation(len(ids))
    test = {ids[i] for i in order[:int(round(test_fraction * len(ids)))]}
    return {"train": [i for i in ids if i not in test], "test": sorted(test), "seed": seed,
            "test_fraction": test_fraction}


def read_split(path: Path, identifiers: list[str]) -> dict:
    """A user's split file, checked against the identifiers found in the source."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConversionError(f"Cannot read the split file {path}: {e}") from None
    if isinstance(data, list):
        raise ConversionError(f"{path} is a list (like nnU-Net's splits_final.json of cross-validation folds); "
                              f'expected an object {{"train": [...], "test": [...]}} of case identifiers')
    lists = {k: data.get(k) for k in ("train", "test") if k in data} if isinstance(data, dict) else {}
    if not lists or not all(isinstance(v, list) and all(isinstance(i, str) for i in v) for v in lists.values()):
        raise ConversionError(f"{path}: expected an object with the lists \"train\" and/or \"test\" of case "
                              f"identifiers (strings); found {json.dumps(data)[:200]}")
    known = set(identifiers)
    unknown = sorted({i for v in lists.values() for i in v} - known)
    if unknown:
        raise ConversionError(f"{path}: {len(unknown)} case identifier(s) not found in the source: {unknown[:10]}; "
                              f"the source has e.g. {sorted(known)[:5]}")
    both = sorted(set(lists.get("train", [])) & set(lists.get("test", [])))
    if both:
        raise ConversionError(f"{path}: case(s) listed in both 'train' and 'test': {both[:10]}")
    for name, other in (("train", "test"), ("test", "train")):
        if name not in lists:
            lists[name] = sorted(known - set(lists[other]))
    return {"train": sorted(lists["train"]), "test": sorted(lists["test"]), "source": str(path)}
