"""Pictures a reader can check the numbers with: per-case PNGs of the slices with the most anomaly, and a contact
sheet over cases (matplotlib, Agg backend, no display needed).

Per case, one row per slice: input | reconstruction | unsupervised map | score | input with the prediction
(score >= threshold, red) and the reference outline (green). Map panels have a colour bar. The contact sheet shows
per case its slice with the most anomaly twice: the score over the input (one colour bar for all cases, the
threshold marked on it) and, below, the prediction at the threshold (red) with the reference outline (green); a
tile whose prediction is empty says so. The score is titled by what it is (`score_label`): the beta that
sadm_nnunet_score recorded in the score folder's score_settings.json tells a fused score from a segmentation's
probability. Volumes are shown in RAS orientation (`nib.as_closest_canonical`), axial slices, left of the subject
on the left of the picture.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sadm_nnunet.evaluation import EvaluationError, Volume, check_geometry, list_cases
from sadm_nnunet.io_utils import atomic_path

AXIAL = 2  # the axial axis of an array in RAS orientation
PANEL_INCHES = 2.6
SHEET_PANEL_INCHES = 2.4   # one slice of a contact-sheet tile
CAPTION_INCHES = 0.55      # the caption above a tile: case, metrics, an empty prediction
COLORBAR_INCHES = 1.1      # the shared colour bar right of the tiles, with its tick labels
DPI = 100
PREDICTION_RGBA = (1.0, 0.1, 0.1, 0.6)  # the prediction at the threshold, filled, over the grey input
SCORE_SETTINGS_FILE = "score_settings.json"  # what sadm_nnunet_score writes into its output folder


def score_label(beta: float | None, suffix: str = "_score") -> str:
    """What a score map shows: sadm_nnunet_score's CASE_unsupervised is the reconstruction-only map; CASE_score is
    the fused score of its beta (0: the segmentation's foreground probability; 1: the unsupervised map)."""
    if suffix == "_unsupervised":
        return "unsupervised (1 - SSIM)"
    if beta is None:
        return "score"
    if beta == 0:
        return "score (β 0: segmentation probability)"
    if beta == 1:
        return "unsupervised (β 1)"
    return f"fused score (β {beta:g})"


def recorded_beta(score_folder: str | Path) -> float | None:
    """The beta that sadm_nnunet_score recorded in the folder's score_settings.json; None without that file."""
    settings = Path(score_folder) / SCORE_SETTINGS_FILE
    if not settings.is_file():
        return None
    try:
        beta = json.loads(settings.read_text()).get("beta")
    except (json.JSONDecodeError, AttributeError) as e:
        raise EvaluationError(f"{settings} is not a JSON object ({e}); expected sadm_nnunet_score's settings")
    return None if beta is None else float(beta)


@dataclass
class CaseVolumes:
    """The volumes of one case (same shape); everything but the score is optional."""

    score: np.ndarray
    reference: np.ndarray | None = None
    image: np.ndarray | None = None
    reconstruction: np.ndarray | None = None
    unsupervised: np.ndarray | None = None


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _take(volume: np.ndarray, index: int, axis: int) -> np.ndarray:
    """A 2D slice, transposed for imshow(origin='lower'): first remaining axis left-right, second bottom-top."""
    return np.take(volume, index, axis=axis).T


def select_slices(volumes: CaseVolumes, count: int = 3, axis: int = AXIAL, min_gap: int = 3) -> list[int]:
    """Up to `count` slices with the most anomaly: the largest reference area when the reference has foreground,
    else the largest summed score. Chosen greedily at least `min_gap` slices apart, then (if too few) among the
    remaining slices with some anomaly; a slice without any only when no slice has some (then the middle one).
    Returned in ascending order."""
    other = tuple(a for a in range(volumes.score.ndim) if a != axis)
    if volumes.reference is not None and np.any(volumes.reference != 0):
        amount = np.count_nonzero(volumes.reference, axis=other).astype(np.float64)
    else:
        amount = np.clip(volumes.score, 0, None).sum(axis=other, dtype=np.float64)
    candidates = [int(k) for k in np.argsort(-amount, kind="stable") if amount[k] > 0]
    if not candidates:
        return [volumes.score.shape[axis] // 2]
    chosen: list[int] = []
    for k in candidates:
        if len(chosen) < count and all(abs(k - c) >= min_gap for c in chosen):
            chosen.append(k)
    for k in candidates:
        if len(chosen) < count and k not in chosen:
            chosen.append(k)
    return sorted(chosen)


def _window(volume: np.ndarray | None) -> tuple[float, float]:
    """Grey-value window of an image: 1st-99th percentile of its nonzero voxels."""
    if volume is None:
        return 0.0, 1.0
    values = volume[volume != 0]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


def _map_range(volume: np.ndarray | None, threshold: float | None = None) -> tuple[float, float]:
    if volume is None:
        return 0.0, 1.0
    hi = float(np.max(volume))
    if threshold is not None:
        hi = max(hi, float(threshold))
    lo = min(0.0, float(np.min(volume)))
    return lo, hi if hi > lo else lo + 1.0


def _overlay(ax, background: np.ndarray | None, window, prediction: np.ndarray | None,
             reference: np.ndarray | None) -> None:
    if background is not None:
        ax.imshow(background, cmap="gray", vmin=window[0], vmax=window[1], origin="lower", interpolation="nearest")
    if prediction is not None and prediction.any():
        rgba = np.zeros((*prediction.shape, 4), dtype=np.float32)
        rgba[prediction] = PREDICTION_RGBA
        ax.imshow(rgba, origin="lower", interpolation="nearest")
    if reference is not None and reference.any() and reference.shape[0] > 1 and reference.shape[1] > 1:
        ax.contour(reference.astype(np.float32), levels=[0.5], colors="lime", linewidths=1.0)
    if background is None and reference is not None:
        ax.set_xlim(-0.5, reference.shape[1] - 0.5)
        ax.set_ylim(-0.5, reference.shape[0] - 0.5)


def case_figure_size(rows: int) -> tuple[int, int]:
    """(width, height) in pixels of a per-case PNG with `rows` slices."""
    return round(5 * PANEL_INCHES * DPI), round((rows * PANEL_INCHES + 0.5) * DPI)


def case_figure(path: str | Path, volumes: CaseVolumes, threshold: float | None = None,
                slices: list[int] | None = None, axis: int = AXIAL, title: str = "", score_title: str = "score"
                ) -> Path:
    """Writes the per-case PNG (atomically) and returns its path; size `case_figure_size(len(slices))`.
    `score_title` heads the score column (see `score_label`)."""
    plt = _plt()
    slices = select_slices(volumes, axis=axis) if slices is None else list(slices)
    rows = len(slices)
    width, height = case_figure_size(rows)
    fig, axes = plt.subplots(rows, 5, figsize=(width / DPI, height / DPI), dpi=DPI, squeeze=False)
    window = _window(volumes.image)
    ranges = {"unsupervised": _map_range(volumes.unsupervised), "score": _map_range(volumes.score, threshold)}
    columns = ["input", "reconstruction", "unsupervised map", score_title,
               "prediction (red), reference (green)" if threshold is not None else "reference (green), no threshold"]
    for r, index in enumerate(slices):
        def sl(v):
            return None if v is None else _take(v, index, axis)

        panels = axes[r]
        for c, (volume, cmap, rng) in enumerate(((volumes.image, "gray", window),
                                                 (volumes.reconstruction, "gray", window),
                                                 (volumes.unsupervised, "magma", ranges["unsupervised"]),
                                                 (volumes.score, "magma", ranges["score"]))):
            if volume is None:
                panels[c].text(0.5, 0.5, "not given", ha="center", va="center", transform=panels[c].transAxes)
                continue
            im = panels[c].imshow(sl(volume), cmap=cmap, vmin=rng[0], vmax=rng[1], origin="lower")
            if c >= 2:
                fig.colorbar(im, ax=panels[c], fraction=0.046, pad=0.02)
        prediction = None if threshold is None else sl(volumes.score) >= threshold
        reference = None if volumes.reference is None else sl(volumes.reference) != 0
        background = sl(volumes.image) if volumes.image is not None else sl(volumes.score)
        _overlay(panels[4], background, window if volumes.image is not None else ranges["score"], prediction,
                 reference)
        if prediction is not None and not prediction.any():
            panels[4].set_xlabel(f"no voxel ≥ t {threshold:.3g} in this slice", fontsize=8)
        panels[0].set_ylabel(f"slice {index}")
    for c, name in enumerate(columns):
        axes[0, c].set_title(name, fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, plt)


@dataclass
class SheetTile:
    """One case on the contact sheet: 2D slices (already transposed for display) and a caption."""

    caption: str
    background: np.ndarray
    window: tuple[float, float]
    score: np.ndarray
    score_range: tuple[float, float]
    reference: np.ndarray | None
    prediction: np.ndarray | None


def sheet_tile(volumes: CaseVolumes, caption: str, threshold: float | None = None, axis: int = AXIAL) -> SheetTile:
    """The tile of a case: its slice with the most anomaly. An empty prediction at the threshold is said in the
    caption: in the whole case (with the case's highest score) or in this slice."""
    index = select_slices(volumes, count=1, axis=axis)[0]
    score = _take(volumes.score, index, axis)
    background = _take(volumes.image, index, axis) if volumes.image is not None else None
    prediction = None if threshold is None else score >= threshold
    if prediction is not None and not prediction.any():
        highest = float(np.max(volumes.score))
        caption += (f"\nno voxel ≥ t {threshold:.3g} (max {highest:.3g})" if highest < threshold
                    else f"\nno voxel ≥ t {threshold:.3g} in this slice")
    return SheetTile(caption, background if background is not None else np.zeros_like(score),
                     _window(volumes.image), score, _map_range(volumes.score, threshold),
                     None if volumes.reference is None else _take(volumes.reference, index, axis) != 0, prediction)


@dataclass(frozen=True)
class SheetLayout:
    """Where the parts of a contact sheet lie, in pixels of the PNG: boxes (left, top, right, bottom)."""

    size: tuple[int, int]                       # (width, height)
    score_boxes: list[tuple[int, int, int, int]]       # per tile: the score over the input
    prediction_boxes: list[tuple[int, int, int, int]]  # per tile: the prediction and the reference
    colorbar_box: tuple[int, int, int, int]


def contact_sheet_layout(n: int, columns: int = 5) -> SheetLayout:
    """The layout of a contact sheet of `n` tiles, at most `columns` per row; each tile is a caption above two
    square slices (score, then prediction), and the colour bar of the score stands right of the tiles."""
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    tile_h = CAPTION_INCHES + 2 * SHEET_PANEL_INCHES

    def px(inches: float) -> int:
        return round(inches * DPI)

    inset = 0.03 * SHEET_PANEL_INCHES
    boxes: dict[str, list] = {"score": [], "prediction": []}
    for i in range(n):
        r, c = divmod(i, cols)
        left, top = c * SHEET_PANEL_INCHES + inset, r * tile_h + CAPTION_INCHES + inset
        for k, key in enumerate(("score", "prediction")):
            t = top + k * SHEET_PANEL_INCHES
            boxes[key].append((px(left), px(t), px(left + SHEET_PANEL_INCHES - 2 * inset),
                               px(t + SHEET_PANEL_INCHES - 2 * inset)))
    bar_left = cols * SHEET_PANEL_INCHES + 0.2
    colorbar = (px(bar_left), px(CAPTION_INCHES + inset), px(bar_left + 0.2),
                px(rows * tile_h - SHEET_PANEL_INCHES - inset))
    return SheetLayout((px(cols * SHEET_PANEL_INCHES + COLORBAR_INCHES), px(rows * tile_h)), boxes["score"],
                       boxes["prediction"], colorbar)


def contact_sheet_size(n: int, columns: int = 5) -> tuple[int, int]:
    """(width, height) in pixels of a contact sheet of `n` tiles."""
    return contact_sheet_layout(n, columns).size


def contact_sheet(path: str | Path, tiles: list[SheetTile], columns: int = 5, score_title: str = "score",
                  threshold: float | None = None) -> Path:
    """Writes a grid of tiles (`contact_sheet_layout`): per case the score above 0 over the input (one colour
    scale for all cases, its colour bar titled `score_title`, the threshold the tiles were made with marked on it
    in red), and below it the prediction at the threshold filled in red (PREDICTION_RGBA) with the reference
    outline in green."""
    if not tiles:
        raise ValueError("contact_sheet needs at least one tile")
    plt = _plt()
    layout = contact_sheet_layout(len(tiles), columns)
    width, height = layout.size
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)

    def axes(box: tuple[int, int, int, int]):
        left, top, right, bottom = box
        return fig.add_axes((left / width, 1 - bottom / height, (right - left) / width, (bottom - top) / height))

    lo = min(t.score_range[0] for t in tiles)
    hi = max(t.score_range[1] for t in tiles)
    image = None
    for tile, score_box, prediction_box in zip(tiles, layout.score_boxes, layout.prediction_boxes):
        top = axes(score_box)
        top.imshow(tile.background, cmap="gray", vmin=tile.window[0], vmax=tile.window[1], origin="lower",
                   aspect="equal", interpolation="nearest")
        image = top.imshow(np.ma.masked_less_equal(tile.score, 0), cmap="magma", vmin=lo, vmax=hi, alpha=0.75,
                           origin="lower", aspect="equal", interpolation="nearest")
        bottom = axes(prediction_box)
        _overlay(bottom, tile.background, tile.window, tile.prediction, tile.reference)
        for ax in (top, bottom):
            ax.axis("off")
        fig.text((score_box[0] + score_box[2]) / 2 / width, 1 - (score_box[1] - 0.04 * DPI) / height, tile.caption,
                 ha="center", va="bottom", fontsize=8)
    bar = fig.colorbar(image, cax=axes(layout.colorbar_box))
    bar.set_label(score_title, fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if threshold is not None:
        bar.ax.axhline(threshold, color=PREDICTION_RGBA[:3], linewidth=2)
        bar.ax.text(0.0, threshold, "t ", color=PREDICTION_RGBA[:3], fontsize=8, va="center", ha="right",
                    transform=bar.ax.get_yaxis_transform())
    return _save(fig, path, plt)


def _save(fig, path: str | Path, plt) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return path


def _read_canonical(path: Path) -> Volume:
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(str(path)))
    array = np.asanyarray(image.dataobj)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    return Volume(array, image.affine, Path(path))


def _caption(case: str, metrics: dict) -> str:
    if metrics.get("best_dice") is not None:
        text = f"⌈Dice⌉ {metrics['best_dice']:.2f}"
        if metrics.get("dice_at_threshold") is not None:
            text += f", Dice@t {metrics['dice_at_threshold']:.2f}"
    elif metrics.get("fpr_healthy") is not None:
        text = f"healthy, FPR {metrics['fpr_healthy']:.4f}"
    else:
        text = "healthy"
    return f"{case}\n{text}"


def figures_from_folders(out: str | Path, ref_folder: Path, pred_folder: Path, report: dict, pred_suffix: str = "",
                         images: Path | None = None, maps: Path | None = None, max_cases: int = 50) -> list[Path]:
    """Per-case PNGs (CASE.png, for the first `max_cases` cases) and contact_sheet.png (all cases) in `out`, for
    the cases of an evaluation report (its threshold and metrics). Optional folders: `images` with CASE_0000.nii.gz,
    `maps` with CASE_reconstruction_0000.nii.gz and the unsupervised map CASE_unsupervised.nii.gz (as
    sadm_nnunet_score and sadm_nnunet_reconstruct write them); missing files leave their panel empty. The score is
    titled by `score_label`, with the beta of the score folder's score_settings.json if it has one."""
    out = Path(out)
    score_title = score_label(recorded_beta(pred_folder), pred_suffix)
    out.mkdir(parents=True, exist_ok=True)
    refs = list_cases(Path(ref_folder), "", "reference folder")
    preds = list_cases(Path(pred_folder), pred_suffix, "score folder")
    threshold = report.get("threshold")
    written, tiles = [], []

    def optional(folder: Path | None, names: str | tuple[str, ...], case: str, reference: Volume, what: str
                 ) -> np.ndarray | None:
        if folder is None:
            return None
        for name in (names,) if isinstance(names, str) else names:
            for ending in (".nii.gz", ".nii"):
                f = Path(folder) / f"{name}{ending}"
                if f.is_file():
                    volume = _read_canonical(f)
                    check_geometry(case, volume, reference, what)
                    return volume.array.astype(np.float32)
        return None

    for i, case in enumerate(sorted(report["per_case"])):
        if case not in refs or case not in preds:
            raise EvaluationError(f"case '{case}' of the report has no reference or score file")
        reference = _read_canonical(refs[case])
        score = _read_canonical(preds[case])
        check_geometry(case, score, reference, "score map")
        volumes = CaseVolumes(score=score.array.astype(np.float32), reference=reference.array,
                              image=optional(images, f"{case}_0000", case, reference, "image"),
                              reconstruction=optional(maps, f"{case}_reconstruction_0000", case, reference,
                                                      "reconstruction"),
                              unsupervised=optional(maps, (f"{case}_unsupervised",), case, reference,
                                                    "unsupervised map"))
        caption = _caption(case, report["per_case"][case])
        if i < max_cases:
            written.append(case_figure(out / f"{case}.png", volumes, threshold,
                                       title=caption.replace("\n", ": "), score_title=score_title))
        tiles.append(sheet_tile(volumes, caption, threshold))
    written.append(contact_sheet(out / "contact_sheet.png", tiles, score_title=score_title, threshold=threshold))
    return written
