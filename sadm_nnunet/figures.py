"""Pictures a reader can check the numbers with: per-case PNGs of the slices with the most anomaly, and a contact
sheet over cases (matplotlib, Agg backend, no display needed).

Per case, one row per slice: input | reconstruction | unsupervised map | fused score | input with the prediction
(score >= threshold, red) and the reference outline (green). Map panels have a colour bar. Volumes are shown in
RAS orientation (`nib.as_closest_canonical`), axial slices, left of the subject on the left of the picture.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sadm_nnunet.evaluation import EvaluationError, Volume, check_geometry, list_cases
from sadm_nnunet.io_utils import atomic_path

AXIAL = 2  # the axial axis of an array in RAS orientation
PANEL_INCHES = 2.6
TILE_INCHES = 1.8
CAPTION_INCHES = 0.35
DPI = 80


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
        ax.imshow(background, cmap="gray", vmin=window[0], vmax=window[1], origin="lower")
    if prediction is not None and prediction.any():
        rgba = np.zeros((*prediction.shape, 4), dtype=np.float32)
        rgba[prediction] = (1.0, 0.1, 0.1, 0.55)
        ax.imshow(rgba, origin="lower")
    if reference is not None and reference.any() and reference.shape[0] > 1 and reference.shape[1] > 1:
        ax.contour(reference.astype(np.float32), levels=[0.5], colors="lime", linewidths=1.0)
    if background is None and reference is not None:
        ax.set_xlim(-0.5, reference.shape[1] - 0.5)
        ax.set_ylim(-0.5, reference.shape[0] - 0.5)


def reconstruction_slice(volumes: CaseVolumes, axis: int = AXIAL) -> int:
    """The slice `reconstruction_figure` shows: the largest reference area, else the most brain (nonzero image)."""
    other = tuple(a for a in range(volumes.image.ndim) if a != axis)
    shown = volumes.reference if volumes.reference is not None and np.any(volumes.reference != 0) else volumes.image
    return int(np.argmax(np.count_nonzero(shown, axis=other)))


def reconstruction_figure_size(rows: int) -> tuple[int, int]:
    """(width, height) in pixels of `reconstruction_figure`'s PNG with `rows` cases."""
    return round((3 * TILE_INCHES + 0.4) * DPI), round((rows * TILE_INCHES + 0.3) * DPI)


def reconstruction_figure(path: str | Path, rows: list[tuple[str, CaseVolumes]], axis: int = AXIAL) -> Path:
    """Writes (atomically) a PNG of stage I's work: per row one axial slice of a case, as input | pseudo-healthy
    reconstruction (same grey window) | unsupervised map (1 - SSIM, 0 to 1), the reference outlined in green.
    `rows` are (caption, volumes with image, reconstruction and unsupervised; reference optional); the slice is
    `reconstruction_slice`'s. Size `reconstruction_figure_size(len(rows))`; returns the path."""
    plt = _plt()
    width, height = reconstruction_figure_size(len(rows))
    fig, axes = plt.subplots(len(rows), 3, figsize=(width / DPI, height / DPI), dpi=DPI, squeeze=False)
    for r, (caption, volumes) in enumerate(rows):
        index = reconstruction_slice(volumes, axis)
        window = _window(volumes.image)
        panels = axes[r]
        panels[0].imshow(_take(volumes.image, index, axis), cmap="gray", vmin=window[0], vmax=window[1],
                         origin="lower")
        panels[1].imshow(_take(volumes.reconstruction, index, axis), cmap="gray", vmin=window[0], vmax=window[1],
                         origin="lower")
        im = panels[2].imshow(_take(volumes.unsupervised, index, axis), cmap="magma", vmin=0, vmax=1, origin="lower")
        fig.colorbar(im, ax=panels[2], fraction=0.046, pad=0.02)
        if volumes.reference is not None and np.any(volumes.reference != 0):
            reference = _take(volumes.reference, index, axis) != 0
            for ax in panels:
                ax.contour(reference.astype(np.float32), levels=[0.5], colors="lime", linewidths=0.8)
        panels[0].set_ylabel(f"{caption}\nslice {index}", fontsize=7)
    for c, name in enumerate(("input", "reconstruction", "1 - SSIM")):
        axes[0, c].set_title(name, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout(pad=0.3)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return path


def reconstruction_figure_from_folders(out: str | Path, images: Path, maps: Path,
                                       cases: list[tuple[str, str, Path | None]], map_suffix: str = "_unsupervised"
                                       ) -> Path:
    """`reconstruction_figure` for cases given as (caption, case, label file or None), read from `images`
    (CASE_0000.nii.gz) and `maps`: CASE_reconstruction_0000 and the 1 - SSIM map CASE{map_suffix} (sadm_nnunet_score
    writes CASE_unsupervised, median filtered; sadm_nnunet_reconstruct CASE_ssim, unfiltered)."""
    rows = []
    for caption, case, label in cases:
        image = _read_canonical(Path(images) / f"{case}_0000.nii.gz")
        volumes = {}
        for key, name in (("reconstruction", f"{case}_reconstruction_0000"), ("unsupervised", f"{case}{map_suffix}")):
            volume = _read_canonical(Path(maps) / f"{name}.nii.gz")
            check_geometry(case, volume, image, key)
            volumes[key] = volume.array.astype(np.float32)
        reference = None
        if label is not None:
            reference_volume = _read_canonical(Path(label))
            check_geometry(case, reference_volume, image, "reference")
            reference = reference_volume.array
        rows.append((caption, CaseVolumes(score=volumes["unsupervised"], reference=reference,
                                          image=image.array.astype(np.float32), **volumes)))
    return reconstruction_figure(out, rows)


def case_figure_size(rows: int) -> tuple[int, int]:
    """(width, height) in pixels of a per-case PNG with `rows` slices."""
    return round(5 * PANEL_INCHES * DPI), round((rows * PANEL_INCHES + 0.5) * DPI)


def case_figure(path: str | Path, volumes: CaseVolumes, threshold: float | None = None,
                slices: list[int] | None = None, axis: int = AXIAL, title: str = "") -> Path:
    """Writes the per-case PNG (atomically) and returns its path; size `case_figure_size(len(slices))`."""
    plt = _plt()
    slices = select_slices(volumes, axis=axis) if slices is None else list(slices)
    rows = len(slices)
    width, height = case_figure_size(rows)
    fig, axes = plt.subplots(rows, 5, figsize=(width / DPI, height / DPI), dpi=DPI, squeeze=False)
    window = _window(volumes.image)
    ranges = {"unsupervised": _map_range(volumes.unsupervised), "score": _map_range(volumes.score, threshold)}
    columns = ["input", "reconstruction", "unsupervised map", "fused score",
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
        panels[0].set_ylabel(f"slice {index}")
    for c, name in enumerate(columns):
        axes[0, c].set_title(name, fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return path


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
    """The tile of a case: its slice with the most anomaly."""
    index = select_slices(volumes, count=1, axis=axis)[0]
    score = _take(volumes.score, index, axis)
    background = _take(volumes.image, index, axis) if volumes.image is not None else None
    return SheetTile(caption, background if background is not None else np.zeros_like(score),
                     _window(volumes.image), score, _map_range(volumes.score, threshold),
                     None if volumes.reference is None else _take(volumes.reference, index, axis) != 0,
                     None if threshold is None else score >= threshold)


def contact_sheet_size(n: int, columns: int = 10) -> tuple[int, int]:
    """(width, height) in pixels of a contact sheet of `n` tiles."""
    cols = min(columns, n)
    return round(cols * TILE_INCHES * DPI), round(math.ceil(n / cols) * (TILE_INCHES + CAPTION_INCHES) * DPI)


def contact_sheet(path: str | Path, tiles: list[SheetTile], columns: int = 10) -> Path:
    """Writes a grid of tiles: input (grey), fused score above 0 (colour, semi-transparent), prediction outline
    (red, with a threshold) and reference outline (green); caption above each tile."""
    if not tiles:
        raise ValueError("contact_sheet needs at least one tile")
    plt = _plt()
    width, height = contact_sheet_size(len(tiles), columns)
    cols = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    cell_w, cell_h = 1 / cols, 1 / rows
    tile_h = cell_h * TILE_INCHES / (TILE_INCHES + CAPTION_INCHES)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        ax = fig.add_axes((c * cell_w + 0.02 * cell_w, 1 - r * cell_h - cell_h, 0.96 * cell_w, tile_h))
        ax.axis("off")
        ax.imshow(tile.background, cmap="gray", vmin=tile.window[0], vmax=tile.window[1], origin="lower")
        ax.imshow(np.ma.masked_less_equal(tile.score, 0), cmap="magma", vmin=tile.score_range[0],
                  vmax=tile.score_range[1], alpha=0.6, origin="lower")
        for mask, colour in ((tile.prediction, "red"), (tile.reference, "lime")):
            if mask is not None and mask.any() and min(mask.shape) > 1:
                ax.contour(mask.astype(np.float32), levels=[0.5], colors=colour, linewidths=0.8)
        fig.text((c + 0.5) * cell_w, 1 - r * cell_h - 0.02 * cell_h, tile.caption, ha="center", va="top",
                 fontsize=6)
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
    sadm_nnunet_score writes them) or CASE_ssim.nii.gz (sadm_nnunet_reconstruct); missing files leave their panel
    empty."""
    out = Path(out)
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
                              unsupervised=optional(maps, (f"{case}_unsupervised", f"{case}_ssim"), case, reference,
                                                    "unsupervised map"))
        caption = _caption(case, report["per_case"][case])
        if i < max_cases:
            written.append(case_figure(out / f"{case}.png", volumes, threshold,
                                       title=caption.replace("\n", ": ")))
        tiles.append(sheet_tile(volumes, caption, threshold))
    written.append(contact_sheet(out / "contact_sheet.png", tiles))
    return written
