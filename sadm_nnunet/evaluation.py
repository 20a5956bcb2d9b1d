"""Anomaly-detection metrics of score maps against reference labels (DESIGN.md §1.4), per volume and for folders.

All metrics are computed exactly, at every distinct score value, from one sort per volume: with the scores sorted,
the number of voxels at or above each distinct value (predicted positives) and the number of reference voxels
among them (true positives) follow from positions in sorted arrays, which gives precision, recall, Dice and the
ROC at all thresholds at once. A voxel is predicted anomalous when its score is >= the threshold.

Per case (reference voxels: any nonzero label; only the voxels of the evaluation region count, see
`RankedCase.from_volume`):
  best_dice          max over thresholds of 2 TP / (predicted + reference): the paper's ⌈Dice⌉
  auprc              average precision, sum over thresholds (descending) of (R_k - R_{k-1}) P_k, the definition of
                     scikit-learn's average_precision_score (no interpolation)
  auroc              area under the ROC curve, ties counted one half (scikit-learn's roc_auc_score), computed in
                     integer arithmetic and divided once
  dice_at_threshold  Dice of {score >= threshold}
  fpr_healthy        fraction of region voxels with score >= threshold, for cases whose reference is empty
The first four are undefined (None) for an empty reference; auroc also when every region voxel is reference.

Thresholds at fixed false-positive rates (`evaluate(..., healthy_validation=...)`): for each rate r in `FPR_RATES`
the lowest threshold that flags at most r of the pooled brain voxels of healthy validation cases (never of the
evaluated cases); per case then dice_at_fprR (R = 100 r) and, for healthy cases, fpr_healthy_at_fprR.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

METRICS = ("best_dice", "auprc", "auroc", "dice_at_threshold", "fpr_healthy")
FPR_RATES = (0.01, 0.05)  # false-positive rates on healthy validation brains that fix a threshold each
NIFTI_ENDINGS = (".nii.gz", ".nii")


class EvaluationError(ValueError):
    """Input that cannot be evaluated (mismatched cases, shapes, geometry, values); the message names the case."""


@dataclass(frozen=True)
class RankedCase:
    """The scores of one case's evaluation region sorted ascending, and the sorted scores of its reference voxels."""

    scores: np.ndarray
    positives: np.ndarray
    positives_outside_region: int = 0

    @classmethod
    def from_volume(cls, score: np.ndarray, reference: np.ndarray, region: np.ndarray | None = None,
                    name: str = "case") -> RankedCase:
        """score: continuous map (higher = more anomalous); reference: labels, any nonzero value is an anomaly;
        region: boolean mask of the voxels to evaluate (None: all voxels); reference voxels outside it are not
        evaluated, only counted (`positives_outside_region`)."""
        score, reference = np.asarray(score), np.asarray(reference)
        if score.shape != reference.shape:
            raise EvaluationError(f"{name}: score map has shape {score.shape}, reference has shape {reference.shape}")
        if region is not None:
            region = np.asarray(region, dtype=bool)
            if region.shape != score.shape:
                raise EvaluationError(f"{name}: mask has shape {region.shape}, reference has shape {score.shape}")
            outside = int(np.count_nonzero(reference[~region]))
            score, reference = score[region], reference[region]
        else:
            outside = 0
            score, reference = score.ravel(), reference.ravel()
        if score.size == 0:
            raise EvaluationError(f"{name}: the evaluation region is empty (no voxels to evaluate)")
        if not np.issubdtype(score.dtype, np.floating):
            score = score.astype(np.float64)
        if not np.isfinite(score).all():
            bad = score[~np.isfinite(score)][0]
            raise EvaluationError(f"{name}: score map contains non-finite values (e.g. {bad}); expected finite scores")
        positive = reference != 0
        return cls(np.sort(score), np.sort(score[positive]), outside)

    @property
    def n(self) -> int:
        return int(self.scores.size)

    @property
    def n_positive(self) -> int:
        return int(self.positives.size)

    def counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(thresholds, predicted positives, true positives) at every distinct score value, thresholds descending."""
        s = self.scores
        first = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
        thresholds = s[first]
        predicted = self.n - first
        true_pos = self.n_positive - np.searchsorted(self.positives, thresholds, side="left")
        return thresholds[::-1], predicted[::-1].astype(np.int64), true_pos[::-1].astype(np.int64)

    def counts_at(self, threshold: float) -> tuple[int, int]:
        """(predicted positives, true positives) of {score >= threshold}."""
        predicted = self.n - int(np.searchsorted(self.scores, threshold, side="left"))
        true_pos = self.n_positive - int(np.searchsorted(self.positives, threshold, side="left"))
        return predicted, true_pos

    @staticmethod
    def pool(cases: list[RankedCase]) -> RankedCase:
        """All voxels of several cases as one (the pooled validation set)."""
        if not cases:
            raise ValueError("pool() needs at least one case")
        # concatenations of sorted runs: the stable sort (timsort / radix) merges them quickly
        return RankedCase(np.sort(np.concatenate([c.scores for c in cases]), kind="stable"),
                          np.sort(np.concatenate([c.positives for c in cases]), kind="stable"))


def best_dice(case: RankedCase) -> tuple[float | None, float | None]:
    """(⌈Dice⌉, the highest threshold that reaches it); (None, None) for an empty reference."""
    if case.n_positive == 0:
        return None, None
    thresholds, predicted, true_pos = case.counts()
    dice = 2 * true_pos / (predicted + case.n_positive)
    k = int(np.argmax(dice))  # first maximum = highest threshold
    return float(dice[k]), float(thresholds[k])


def average_precision(case: RankedCase) -> float | None:
    """AUPRC as scikit-learn's average_precision_score; None for an empty reference."""
    if case.n_positive == 0:
        return None
    _, predicted, true_pos = case.counts()
    recall_gain = np.diff(true_pos, prepend=0) / case.n_positive
    return float(np.sum(recall_gain * (true_pos / predicted)))


def auroc(case: RankedCase) -> float | None:
    """Area under the ROC curve (ties: one half); None when the reference is empty or covers the whole region."""
    negatives = case.n - case.n_positive
    if case.n_positive == 0 or negatives == 0:
        return None
    _, predicted, true_pos = case.counts()
    false_pos = predicted - true_pos
    # trapezoids in integers: 2 * area * P * N = sum dFP * (TP_k + TP_{k-1})
    twice = int(np.sum(np.diff(false_pos, prepend=0) * (true_pos + np.concatenate(([0], true_pos[:-1])))))
    return twice / (2 * case.n_positive * negatives)


def dice_at(case: RankedCase, threshold: float) -> float | None:
    """Dice of {score >= threshold}; None for an empty reference."""
    if case.n_positive == 0:
        return None
    predicted, true_pos = case.counts_at(threshold)
    return 2 * true_pos / (predicted + case.n_positive)


def fraction_above(case: RankedCase, threshold: float) -> float:
    """Fraction of the region's voxels with score >= threshold (the false-positive rate of a healthy case)."""
    return case.counts_at(threshold)[0] / case.n


def choose_threshold(validation: list[RankedCase]) -> tuple[float, float]:
    """The threshold that maximises Dice over the pooled validation voxels (the highest one among ties), and that
    pooled Dice. The validation cases must contain reference voxels."""
    pooled = RankedCase.pool(validation)
    if pooled.n_positive == 0:
        raise EvaluationError(f"the {len(validation)} validation case(s) have no reference voxels: no Dice to "
                              f"maximise, so no threshold can be chosen on them")
    dice, threshold = best_dice(pooled)
    return threshold, dice


def threshold_at_fpr(healthy: list[RankedCase], rate: float) -> float:
    """The lowest threshold that flags at most `rate` of the pooled voxels of `healthy` cases (a voxel is flagged
    when its score is >= the threshold). Ties are never split: when the k-th highest score is tied with lower
    ones, the threshold moves up to the next distinct score; above the maximum when nothing may be flagged."""
    if not 0 <= rate < 1:
        raise EvaluationError(f"false-positive rate must lie in [0, 1); found {rate}")
    if not healthy:
        raise EvaluationError("no healthy cases to choose a false-positive-rate threshold on")
    positive = [c for c in healthy if c.n_positive]
    if positive:
        raise EvaluationError(f"{len(positive)} case(s) given as healthy have reference voxels; a threshold at a "
                              f"false-positive rate is chosen on healthy cases only")
    scores = RankedCase.pool(healthy).scores
    allowed = int(math.floor(rate * scores.size))
    if allowed == 0:
        return float(np.nextafter(scores[-1], np.inf))
    candidate = scores[scores.size - allowed]
    if scores.size - np.searchsorted(scores, candidate, side="left") <= allowed:
        return float(candidate)
    above = np.searchsorted(scores, candidate, side="right")
    return float(scores[above]) if above < scores.size else float(np.nextafter(scores[-1], np.inf))


def fpr_keys(rate: float) -> tuple[str, str]:
    """The metric names of one false-positive rate: (Dice at its threshold, healthy cases' flagged fraction)."""
    name = f"fpr{100 * rate:g}".replace(".", "_")
    return f"dice_at_{name}", f"fpr_healthy_at_{name}"


def case_metrics(case: RankedCase, threshold: float | None) -> dict:
    """All metrics of one case (None where undefined or, for the threshold metrics, without a threshold)."""
    healthy = case.n_positive == 0
    best, best_threshold = best_dice(case)
    return {
        "best_dice": best,
        "auprc": average_precision(case),
        "auroc": auroc(case),
        "dice_at_threshold": None if threshold is None else dice_at(case, threshold),
        "fpr_healthy": fraction_above(case, threshold) if healthy and threshold is not None else None,
        "best_dice_threshold": best_threshold,
        "reference_voxels": case.n_positive,
        "region_voxels": case.n,
        "reference_voxels_outside_region": case.positives_outside_region,
    }


def summarise(per_case: dict[str, dict], keys: tuple[str, ...] = METRICS) -> tuple[dict, dict, dict]:
    """(mean, std, count) of each metric over the cases where it is defined; std with ddof=0 (numpy's default).
    Mean and std are None where no case defines the metric."""
    mean, std, count = {}, {}, {}
    for key in keys:
        values = np.array([m[key] for m in per_case.values() if m[key] is not None], dtype=np.float64)
        count[key] = int(values.size)
        mean[key] = float(values.mean()) if values.size else None
        std[key] = float(values.std()) if values.size else None
    return mean, std, count


# ---------------------------------------------------------------------------------------------------------------
# Folders of NIfTI files
# ---------------------------------------------------------------------------------------------------------------

def list_cases(folder: Path, suffix: str = "", what: str = "folder") -> dict[str, Path]:
    """CASE -> path for the files CASE{suffix}.nii.gz / .nii in `folder` (other files are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{what} {folder} does not exist or is not a folder")
    cases: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        ending = next((e for e in NIFTI_ENDINGS if f.name.endswith(suffix + e)), None)
        if ending is None or not f.is_file():
            continue
        case = f.name[: -len(suffix + ending)]
        if not case:
            continue
        if case in cases:
            raise EvaluationError(f"{what} {folder}: case '{case}' has two files, {cases[case].name} and {f.name}")
        cases[case] = f
    if not cases:
        raise EvaluationError(f"{what} {folder} holds no files named CASE{suffix}.nii.gz or CASE{suffix}.nii")
    return cases


def match_cases(reference: dict[str, Path], predicted: dict[str, Path], ref_folder: Path, pred_folder: Path
                ) -> tuple[list[str], list[str]]:
    """(the sorted cases that have a reference and a score map, the sorted score maps without a reference). A score
    folder may hold other cases (sadm_nnunet_score writes validation and test cases into one folder): they are
    not evaluated. A reference case without a score map is an error naming it."""
    missing, extra = sorted(set(reference) - set(predicted)), sorted(set(predicted) - set(reference))
    if missing:
        others = f"; {len(extra)} score map(s) have no reference in {ref_folder}: {_some(extra)}" if extra else ""
        raise EvaluationError(f"case lists differ: {len(missing)} reference case(s) have no score map in "
                              f"{pred_folder}: {_some(missing)}{others}")
    return sorted(reference), extra


def _some(names: list[str], k: int = 5) -> str:
    return ", ".join(names[:k]) + (f", ... ({len(names) - k} more)" if len(names) > k else "")


@dataclass(frozen=True)
class Volume:
    """A NIfTI volume's array and geometry."""

    array: np.ndarray
    affine: np.ndarray
    path: Path

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def origin(self) -> np.ndarray:
        return self.affine[:3, 3]

    @property
    def direction(self) -> np.ndarray:
        return self.affine[:3, :3] / self.spacing


def read_volume(path: Path) -> Volume:
    """The array as stored (scaling applied, float32 kept float32) and the affine of a NIfTI file; a truncated
    file or non-finite voxels raise `BadImageFile` naming the file."""
    from sadm_nnunet.nifti_checks import load_checked

    image, array = load_checked(path)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    return Volume(array, image.affine, Path(path))


def check_geometry(case: str, volume: Volume, expected: Volume, what: str) -> None:
    """Error naming the case, the value found and the one expected when shape, spacing, origin or direction differ."""
    def fmt(v: np.ndarray) -> str:
        return "(" + ", ".join(f"{x:.6g}" for x in np.ravel(v)) + ")"

    if volume.array.shape != expected.array.shape:
        raise EvaluationError(f"case '{case}': {what} {volume.path.name} has shape {volume.array.shape}, expected "
                              f"{expected.array.shape} as in {expected.path}")
    for name in ("spacing", "origin", "direction"):
        found, want = getattr(volume, name), getattr(expected, name)
        if not np.allclose(found, want, rtol=1e-5, atol=1e-4):
            raise EvaluationError(f"case '{case}': {what} {volume.path.name} has {name} {fmt(found)}, expected "
                                  f"{fmt(want)} as in {expected.path}")


def check_labels(case: str, reference: Volume) -> None:
    """References must hold integer labels (binary or multi-label)."""
    a = reference.array
    if np.issubdtype(a.dtype, np.floating):
        bad = a[a != np.round(a)]
        if bad.size:
            raise EvaluationError(f"case '{case}': reference {reference.path} holds non-integer value {bad[0]}; "
                                  f"expected a label map (0 = normal, any other integer = anomaly)")


def find_mask_file(folder: Path, case: str) -> Path:
    """The brain mask of a case: CASE.nii(.gz), else CASE_0000.nii(.gz) (a skull-stripped image; nonzero = brain)."""
    for stem in (case, f"{case}_0000"):
        for ending in NIFTI_ENDINGS:
            if (folder / f"{stem}{ending}").is_file():
                return folder / f"{stem}{ending}"
    raise EvaluationError(f"case '{case}': no brain mask {case}.nii.gz (or image {case}_0000.nii.gz) in {folder}")


def load_case(case: str, ref_path: Path, pred_path: Path, mask_folder: Path | None,
              ignore_label: int | None = None) -> RankedCase:
    """Reads, checks and ranks one case. Reference voxels labelled `ignore_label` (nnU-Net's ignore label, e.g.
    WMH's "other pathology") are left out of the evaluation, like voxels outside the mask."""
    reference, score = read_volume(ref_path), read_volume(pred_path)
    check_geometry(case, score, reference, "score map")
    check_labels(case, reference)
    region = None
    if mask_folder is not None:
        mask = read_volume(find_mask_file(mask_folder, case))
        check_geometry(case, mask, reference, "brain mask")
        region = mask.array != 0
    labels = reference.array
    if ignore_label is not None:
        ignored = labels == ignore_label
        region = ~ignored if region is None else region & ~ignored
        labels = np.where(ignored, 0, labels)
    return RankedCase.from_volume(score.array, labels, region, name=f"case '{case}'")


def load_folder(ref_folder: Path, pred_folder: Path, mask_folder: Path | None, pred_suffix: str = "",
                ignore_label: int | None = None) -> tuple[dict[str, RankedCase], list[str]]:
    """(case -> RankedCase for the cases of the reference folder, the score maps of other cases, which are not
    evaluated); errors name the case."""
    refs = list_cases(ref_folder, "", "reference folder")
    preds = list_cases(pred_folder, pred_suffix, "score folder")
    cases, ignored = match_cases(refs, preds, ref_folder, pred_folder)
    if mask_folder is not None and not Path(mask_folder).is_dir():
        raise EvaluationError(f"mask folder {mask_folder} does not exist or is not a folder")
    return {case: load_case(case, refs[case], preds[case], mask_folder, ignore_label) for case in cases}, ignored


def evaluate(cases: dict[str, RankedCase], validation: dict[str, RankedCase] | None = None,
             threshold: float | None = None, healthy_validation: dict[str, RankedCase] | None = None,
             fpr_rates: tuple[float, ...] = FPR_RATES) -> dict:
    """The report: per-case metrics, mean/std/count over cases, and the threshold with where it came from.

    The threshold is chosen on the pooled `validation` cases (which must not share case names with `cases`), or
    is the given `threshold`, or is absent (then dice_at_threshold and fpr_healthy are None). With
    `healthy_validation` (healthy cases, separate from `cases`), one more threshold per rate of `fpr_rates`
    (`threshold_at_fpr`) and its metrics (`fpr_keys`)."""
    if validation is not None and threshold is not None:
        raise EvaluationError("give either validation cases or a threshold, not both")
    source, validation_dice = None, None
    if validation is not None:
        overlap = sorted(set(cases) & set(validation))
        if overlap:
            raise EvaluationError(f"{len(overlap)} case(s) are both evaluated and used to choose the threshold: "
                                  f"{_some(overlap)}; the validation cases must be separate")
        threshold, validation_dice = choose_threshold(list(validation.values()))
        source = "validation"
    elif threshold is not None:
        if not math.isfinite(threshold):
            raise EvaluationError(f"threshold must be finite; found {threshold}")
        source = "given"
    per_case = {name: case_metrics(c, threshold) for name, c in cases.items()}
    keys, fpr_thresholds = METRICS, {}
    if healthy_validation is not None:
        overlap = sorted(set(cases) & set(healthy_validation))
        if overlap:
            raise EvaluationError(f"{len(overlap)} case(s) are both evaluated and used to choose the false-positive-"
                                  f"rate thresholds: {_some(overlap)}; the healthy validation cases must be separate")
        for rate in fpr_rates:
            dice_key, fpr_key = fpr_keys(rate)
            fpr_thresholds[dice_key] = t = threshold_at_fpr(list(healthy_validation.values()), rate)
            for name, c in cases.items():
                per_case[name][dice_key] = dice_at(c, t)
                per_case[name][fpr_key] = fraction_above(c, t) if c.n_positive == 0 else None
            keys += (dice_key, fpr_key)
    mean, std, count = summarise(per_case, keys)
    return {
        "per_case": per_case,
        "mean": mean,
        "std": std,
        "count": count,
        "threshold": threshold,
        "threshold_source": source,
        "validation_cases": sorted(validation) if validation is not None else [],
        "validation_pooled_dice": validation_dice,
        "fpr_thresholds": {dice_key: {"rate": rate, "threshold": fpr_thresholds[dice_key]}
                           for rate in fpr_rates for dice_key in fpr_keys(rate)[:1] if dice_key in fpr_thresholds},
        "healthy_validation_cases": sorted(healthy_validation) if healthy_validation is not None else [],
    }


def markdown_table(report: dict) -> str:
    """Mean ± std (and number of cases) of every metric, as a Markdown table."""
    lines = ["| metric | mean | std | cases |", "|---|---|---|---|"]
    for key in METRICS:
        m, s, n = report["mean"][key], report["std"][key], report["count"][key]
        lines.append(f"| {key} | {'n/a' if m is None else f'{m:.4f}'} | {'n/a' if s is None else f'{s:.4f}'} | {n} |")
    t = report["threshold"]
    if t is None:
        lines.append("\nNo threshold (give -val-ref/-val-pred or --threshold): dice_at_threshold and fpr_healthy "
                     "are not reported.")
    else:
        if report["threshold_source"] == "validation":
            where = (f"chosen on {len(report['validation_cases'])} pooled validation case(s), pooled Dice "
                     f"{report['validation_pooled_dice']:.4f}")
        else:
            where = "given"
        lines.append(f"\nThreshold {t:.6g} ({where}); a voxel is anomalous when its score is >= the threshold.")
    return "\n".join(lines)
