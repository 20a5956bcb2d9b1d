"""What every release converter shares: the description of a release, its cases as found on disk, and the way
files are found below a source folder and grouped into cases."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

NIFTI = re.compile(r"\.nii(\.gz)?$")


class ConversionError(Exception):
    """Bad input for a whole conversion (source folder, options, output folder); nothing was written."""


@dataclass(frozen=True)
class SourceCase:
    """One case of a release: its modality images and label (None: the release has no label files). Paths of
    files the release should have but that were not found are the expected paths (they do not exist)."""
    identifier: str
    images: dict[str, Path]
    label: Path | None
    duplicates: dict[str, list[Path]] = field(default_factory=dict)  # key -> several files found for it


@dataclass(frozen=True)
class LabelScheme:
    """dataset.json 'labels' and how label values of the release become them. `mapping` None: no label files;
    the label is the brain mask of the (skull-stripped) images."""
    labels: dict[str, int]
    mapping: dict[int, int] | None


@dataclass(frozen=True)
class Release:
    """A public release layout and how it becomes an nnU-Net raw dataset."""
    kind: str
    title: str
    default_name: str
    modalities: tuple[str, ...]  # as the release spells them in its file names
    default_modalities: tuple[str, ...]
    labels: LabelScheme
    default_test_fraction: float
    example: str  # a file path as the release names it, for error messages
    find_cases: Callable[[Path], list[SourceCase]]
    kept_labels: LabelScheme | None = None  # --keep-labels: the release's own classes

    def resolve_modalities(self, requested: list[str] | None) -> tuple[str, ...]:
        """The requested modality names (any case) spelled as the release spells them, in the given order."""
        if not requested:
            return self.default_modalities
        by_lower = {m.lower(): m for m in self.modalities}
        resolved = []
        for name in requested:
            if name.lower() not in by_lower:
                raise ConversionError(f"Unknown modality '{name}' for {self.kind}; available: "
                                      f"{', '.join(self.modalities)} (case-insensitive)")
            resolved.append(by_lower[name.lower()])
        if len(set(resolved)) != len(resolved):
            raise ConversionError(f"--modality lists a modality twice: {requested}")
        return tuple(resolved)

    def label_scheme(self, keep_labels: bool) -> LabelScheme:
        if not keep_labels:
            return self.labels
        if self.kept_labels is None:
            raise ConversionError(f"--keep-labels: {self.kind} has no sub-labels to keep (its labels: "
                                  f"{self.labels.labels})")
        return self.kept_labels


def nifti_files(source: Path) -> Iterator[Path]:
    """Every NIfTI file below `source` (symbolic links followed, hidden files and folders left out)."""
    for root, dirs, files in os.walk(source, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and NIFTI.search(name):
                yield Path(root) / name


def group_files(files: Iterator[Path], match: Callable[[Path], tuple[str, str] | None]
                ) -> dict[str, dict[str, list[Path]]]:
    """identifier -> key (modality or 'label') -> files, for the files that `match` maps to (identifier, key)."""
    groups: dict[str, dict[str, list[Path]]] = {}
    for f in files:
        m = match(f)
        if m is not None:
            groups.setdefault(m[0], {}).setdefault(m[1], []).append(f)
    return groups


def make_case(identifier: str, found: dict[str, list[Path]], expected: dict[str, Path],
              label_key: str | None = "label") -> SourceCase:
    """A SourceCase from the files found per key; keys not found get their `expected` path."""
    paths = {k: (found[k][0] if k in found else v) for k, v in expected.items()}
    label = paths.pop(label_key) if label_key else None
    return SourceCase(identifier, paths, label, {k: v for k, v in found.items() if len(v) > 1})
