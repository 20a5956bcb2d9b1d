"""The comparison cohort: healthy subjects for stage I, a small labelled set of one lesion kind for stage II, and the
evaluation sets (a labelled validation set of the seen kind, for thresholds; optionally a set of healthy validation
brains, for thresholds at fixed false-positive rates; test sets of the seen kind, of kinds never labelled, and of
healthy brains).

Every subject is a random variation of a source brain (`random_subject`: rotation, scaling, smooth deformation, bias
field, gamma) with at most one synthetic lesion (`generate_lesion`). Training subjects come from `training_brains`;
evaluation subjects from `test_brains`, which may be other brains (held out entirely) or the same ones (the demo
has a single template). Case k of a set is drawn from a generator seeded with (seed, set index, k), so a cohort is
reproducible from its spec.

Layout under the nnU-Net raw folder: DatasetHHH_<name>Healthy (imagesTr, label = brain mask, as stage I needs)
and DatasetTTT_<name><Kind> (imagesTr/labelsTr: the labelled set). Evaluation sets under `evaluation_folder`:
images/ (every evaluation case, CASE_0000.nii.gz) and labels/<set>/CASE.nii.gz; manifest.json records it all.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from sadm_nnunet.datasets.healthy_cohort import random_subject, write_case, write_dataset_json
from sadm_nnunet.datasets.lesions import LESION_KINDS, LESION_LABELS, insert_lesion
from sadm_nnunet.io_utils import remove_stale_temporaries, write_json_atomic
from sadm_nnunet.nifti_checks import save_nifti

Brain = tuple[str, np.ndarray, np.ndarray]  # (name, image, brain mask)
VALIDATION = "validation"
HEALTHY = "healthy"
HEALTHY_VALIDATION = "healthy_validation"  # healthy brains that only choose thresholds at fixed false-positive rates
HEALTHY_VALIDATION_SET_INDEX = 100  # after every other set, so that adding it leaves their subjects unchanged
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class CohortSpec:
    """What to generate. `zoom` resamples the source brains (after they were brought to `source_zoom`), and the
    result is written with isotropic `spacing` mm."""
    name: str = "Demo"
    healthy_id: int = 981
    labelled_id: int = 982
    seen_kind: str = "tumour"
    unseen_kinds: tuple[str, ...] = ("stroke",)
    num_healthy: int = 12
    num_labelled: int = 6
    num_validation: int = 3
    num_test: int = 4
    num_healthy_test: int = 2
    num_healthy_validation: int = 0
    zoom: float = 1.0
    spacing: float = 4.0
    deformation: float = 1.5
    seed: int = 0
    source_zoom: float = 1.0

    def __post_init__(self) -> None:
        for kind in (self.seen_kind, *self.unseen_kinds):
            if kind not in LESION_KINDS:
                raise ValueError(f"unknown lesion kind {kind!r}; expected one of {LESION_KINDS}")
        if self.seen_kind in self.unseen_kinds:
            raise ValueError(f"the seen kind {self.seen_kind!r} is also listed as unseen")
        if min(self.num_healthy, self.num_labelled, self.num_validation, self.num_test) < 1:
            raise ValueError("every set needs at least one case (num_healthy_test may be 0)")

    @property
    def healthy_dataset(self) -> str:
        return f"Dataset{self.healthy_id:03d}_{self.name}Healthy"

    @property
    def labelled_dataset(self) -> str:
        return f"Dataset{self.labelled_id:03d}_{self.name}{self.seen_kind.capitalize()}"

    @property
    def test_sets(self) -> tuple[str, ...]:
        """The evaluated sets: the seen kind, the unseen kinds, then healthy brains (if any)."""
        return (self.seen_kind, *self.unseen_kinds) + ((HEALTHY,) if self.num_healthy_test else ())


@dataclass
class Cohort:
    spec: CohortSpec
    raw: Path
    evaluation: Path
    sets: dict[str, list[str]] = field(default_factory=dict)  # evaluation set -> case names

    @property
    def images(self) -> Path:
        return self.evaluation / "images"

    def labels(self, evaluation_set: str) -> Path:
        return self.evaluation / "labels" / evaluation_set


def resample_brain(brain: Brain, zoom: float) -> Brain:
    """A source brain resampled by `zoom` (linear; the mask by thresholding its linear resampling)."""
    name, image, mask = brain
    if zoom == 1:
        return brain
    small_mask = ndimage.zoom(mask.astype(np.float32), zoom, order=1) > 0.5
    small = np.where(small_mask, ndimage.zoom(image, zoom, order=1), 0).astype(np.float32)
    return name, small, small_mask


def _write_evaluation_case(cohort: Cohort, evaluation_set: str, case: str, image: np.ndarray, label: np.ndarray
                           ) -> None:
    affine = np.diag([cohort.spec.spacing] * 3 + [1.0])
    for target, array in ((cohort.images / f"{case}_0000.nii.gz", image.astype(np.float32)),
                          (cohort.labels(evaluation_set) / f"{case}.nii.gz", label.astype(np.uint8))):
        save_nifti(array, affine, target)


def _subjects(spec: CohortSpec, brains: list[Brain], set_index: int, count: int, kind: str | None):
    """(case index, source brain name, image, label) for `count` subjects of one set; label all 0 when kind is None
    (the brain mask is returned instead when the set is stage I's healthy set, see `build_cohort`)."""
    for k in range(count):
        rng = np.random.default_rng([spec.seed, set_index, k])
        name, image, mask = brains[k % len(brains)]
        subject, subject_mask = random_subject(image, mask, rng, spec.zoom, spec.deformation)
        if kind is None:
            yield k, name, subject, subject_mask
        else:
            lesioned, label = insert_lesion(subject, subject_mask, kind, rng)
            yield k, name, lesioned, label


def build_cohort(spec: CohortSpec, training_brains: list[Brain], test_brains: list[Brain], raw_folder: Path,
                 evaluation_folder: Path) -> Cohort:
    """Writes the two nnU-Net raw datasets and the evaluation sets (every file atomically); returns the cohort."""
    cohort = Cohort(spec, Path(raw_folder), Path(evaluation_folder))
    records: dict[str, dict] = {}
    healthy_folder = cohort.raw / spec.healthy_dataset
    labelled_folder = cohort.raw / spec.labelled_dataset
    removed = sum(remove_stale_temporaries(f, recursive=True) for f in (healthy_folder, labelled_folder,
                                                                          cohort.evaluation))
    if removed:
        print(f"Removed {removed} temporary file(s) that an interrupted run left in the cohort's folders.")
    plan = [("stage-I healthy", 1, spec.num_healthy, None, training_brains),
            ("labelled " + spec.seen_kind, 2, spec.num_labelled, spec.seen_kind, training_brains),
            (VALIDATION, 3, spec.num_validation, spec.seen_kind, test_brains)]
    plan += [(kind, 4 + i, spec.num_test, kind, test_brains) for i, kind in enumerate((spec.seen_kind,
                                                                                       *spec.unseen_kinds))]
    if spec.num_healthy_test:
        plan.append((HEALTHY, 4 + len(spec.unseen_kinds) + 1, spec.num_healthy_test, None, test_brains))
    if spec.num_healthy_validation:
        plan.append((HEALTHY_VALIDATION, HEALTHY_VALIDATION_SET_INDEX, spec.num_healthy_validation, None,
                     test_brains))
    total = sum(p[2] for p in plan)
    with tqdm(total=total, desc="cohort", unit="case") as bar:
        for what, set_index, count, kind, brains in plan:
            for k, source, image, label in _subjects(spec, brains, set_index, count, kind):
                if what == "stage-I healthy":
                    case = f"healthy_{k:03d}"
                    write_case(healthy_folder, case, image, label.astype(np.uint8), spec.spacing)
                elif what.startswith("labelled"):
                    case = f"{spec.seen_kind}_{k:03d}"
                    write_case(labelled_folder, case, image, label, spec.spacing)
                else:
                    case = f"{what}_{k:03d}"
                    if what in (HEALTHY, HEALTHY_VALIDATION):
                        label = np.zeros(image.shape, np.uint8)
                    _write_evaluation_case(cohort, what, case, image, label)
                    cohort.sets.setdefault(what, []).append(case)
                records[case] = {"set": what, "kind": kind, "source_brain": source,
                                 "lesion_voxels": int(label.sum()) if kind else 0}
                bar.update()
    write_dataset_json(healthy_folder, spec.num_healthy, {"background": 0, "brain": 1})
    write_dataset_json(labelled_folder, spec.num_labelled, LESION_LABELS)
    write_json_atomic({"spec": asdict(spec), "sets": cohort.sets, "cases": records,
                       "training_brains": [b[0] for b in training_brains],
                       "test_brains": [b[0] for b in test_brains]}, cohort.evaluation / MANIFEST)
    return cohort


def recorded_spec(recorded: dict) -> dict:
    """A CohortSpec recorded as JSON, with the defaults of fields added since (a cohort written before a field
    existed was generated as with its default)."""
    return {**json.loads(json.dumps({f.name: f.default for f in fields(CohortSpec)})), **recorded}


def load_cohort(spec: CohortSpec, raw_folder: Path, evaluation_folder: Path) -> Cohort | None:
    """The cohort written earlier by `build_cohort` with the same spec, or None (missing or different spec)."""
    manifest = Path(evaluation_folder) / MANIFEST
    if not manifest.is_file():
        return None
    recorded = json.loads(manifest.read_text())
    if recorded_spec(recorded.get("spec", {})) != json.loads(json.dumps(asdict(spec))):
        return None
    return Cohort(spec, Path(raw_folder), Path(evaluation_folder), recorded["sets"])
