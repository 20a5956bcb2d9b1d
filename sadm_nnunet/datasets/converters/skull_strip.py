"""Does an image look skull-stripped? A heuristic on the background, for the conversion report.

A skull-stripped volume has a constant background (usually 0) that covers the volume's border, and its
foreground is essentially one connected piece (the brain). A head with its skull has noisy air around it, so
the border is not constant. The verdict:

- "not skull-stripped": less than half of the border voxels share one value (noise reaches the border);
- "skull-stripped": at least 95 % of the border voxels share one value and at least 95 % of the other voxels
  lie in the largest connected component;
- "cannot tell": anything in between (e.g. many disconnected pieces). A whole head whose background was set
  to exactly zero also passes as "skull-stripped": the heuristic cannot see the skull itself.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

STRIPPED, NOT_STRIPPED, CANNOT_TELL = "skull-stripped", "not skull-stripped", "cannot tell"


def border_values(volume: np.ndarray) -> np.ndarray:
    """The voxels on the faces of a 3D volume."""
    faces = [np.take(volume, i, axis=a).ravel() for a in range(volume.ndim) for i in (0, -1)]
    return np.concatenate(faces)


def skull_strip_verdict(volume: np.ndarray) -> tuple[str, dict[str, float]]:
    """The verdict for one 3D image and the measurements it rests on."""
    border = border_values(volume)
    values, counts = np.unique(border, return_counts=True)
    background = values[np.argmax(counts)]
    constant_border = float(counts.max() / border.size)
    foreground = volume != background
    labels, n = ndimage.label(foreground)
    largest = float(np.bincount(labels.ravel())[1:].max() / foreground.sum()) if n else 0.0
    measures = {"constant_border_fraction": round(constant_border, 4), "largest_component_fraction": round(largest, 4),
                "background_value": float(background)}
    if constant_border < 0.5:
        return NOT_STRIPPED, measures
    if constant_border >= 0.95 and largest >= 0.95:
        return STRIPPED, measures
    return CANNOT_TELL, measures
