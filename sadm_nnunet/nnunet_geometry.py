"""Moving volumes between nnU-Net's preprocessed space and the geometry of the raw input images."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def to_input_geometry(volume: np.ndarray, properties: dict, plans_manager, configuration_manager) -> np.ndarray:
    """A (C, *preprocessed shape) array -> (C, *raw array shape): resampled to the original spacing, un-cropped
    (zeros outside the crop) and transposed back, as nnU-Net does for probabilities."""
    shape_after_crop = properties["shape_after_cropping_and_before_resampling"]
    spacing_transposed = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    current_spacing = list(configuration_manager.spacing)
    if len(current_spacing) != len(shape_after_crop):
        current_spacing = [spacing_transposed[0], *current_spacing]
    resampled = np.asarray(configuration_manager.resampling_fn_probabilities(
        volume.astype(np.float32), shape_after_crop, current_spacing, spacing_transposed), dtype=np.float32)
    full = np.zeros((volume.shape[0], *properties["shape_before_cropping"]), dtype=np.float32)
    bbox = properties["bbox_used_for_cropping"]
    full[(slice(None), *[slice(lo, hi) for lo, hi in bbox])] = resampled
    return full.transpose([0] + [i + 1 for i in plans_manager.transpose_backward])


def write_float_image(array: np.ndarray, path: str, properties: dict) -> None:
    """Writes a 3D float array read by nnU-Net's SimpleITK reader back with the input's spacing, origin, direction."""
    if "sitk_stuff" not in properties:
        raise ValueError(f"Cannot write {path}: the images were read without SimpleITK geometry (reader properties "
                         f"have keys {sorted(properties)}); use a dataset read by SimpleITKIO (nnU-Net's default)")
    stuff = properties["sitk_stuff"]
    if len(stuff["spacing"]) == 2:
        array = array[0]
    image = sitk.GetImageFromArray(array.astype(np.float32, copy=False))
    image.SetSpacing(stuff["spacing"])
    image.SetOrigin(stuff["origin"])
    image.SetDirection(stuff["direction"])
    sitk.WriteImage(image, path, True)
