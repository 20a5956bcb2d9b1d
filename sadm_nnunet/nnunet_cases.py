"""Reading what nnU-Net reads and writes, for the commands that run a trained model on a folder of raw images
(`sadm_nnunet_reconstruct`, `sadm_nnunet_score`) and the experiment pipeline: finding the cases, the results
folder, nnU-Net's own preprocessing of a case, the way back to the input's geometry and intensities, the
foreground probability in nnUNetv2_predict's CASE.npz, and atomic NIfTI writing in the input's geometry.
Library code: bad input raises `InputError`.
"""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sadm_nnunet.errors import InputError
from sadm_nnunet.nifti_checks import atomic_image, check_image_files
from sadm_nnunet.nnunet_geometry import to_input_geometry, write_float_image


def find_cases(folder: Path, file_ending: str, num_channels: int) -> dict[str, list[Path]]:
    """Groups CASE_XXXX<file_ending> files by case and checks that every case has channels 0..num_channels-1."""
    if not folder.is_dir():
        raise InputError(f"Input folder {folder} does not exist")
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + "$")
    cases: dict[str, dict[int, Path]] = {}
    others = []
    for f in sorted(folder.iterdir()):
        m = pattern.match(f.name)
        if m:
            cases.setdefault(m.group(1), {})[int(m.group(2))] = f
        elif f.is_file():
            others.append(f.name)
    if not cases:
        hint = f" Found other files, e.g. {others[:3]}." if others else " The folder is empty."
        raise InputError(f"No images named CASE_XXXX{file_ending} in {folder}; the model expects the file ending "
                         f"'{file_ending}' and {num_channels} channel(s).{hint}")
    result = {}
    for case, channels in cases.items():
        if sorted(channels) != list(range(num_channels)):
            raise InputError(f"Case '{case}' in {folder} has channel(s) {sorted(channels)}; the model was trained "
                             f"on {num_channels} channel(s), expected files {case}_0000..{case}_{num_channels - 1:04d}"
                             f"{file_ending}")
        result[case] = [channels[i] for i in range(num_channels)]
    return result


def dataset_name(dataset: str) -> str:
    """nnU-Net's DatasetXXX_Name for a name or id, or an error (no traceback) when nnU-Net knows no such dataset."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:  # nnU-Net: not a number, or no dataset with this id
        raise InputError(f"Dataset '{dataset}' not found: {e}") from None


def dataset_id(name: str) -> int:
    """nnU-Net's integer id of DatasetXXX_NAME (nnUNetv2_preprocess and friends take ids only)."""
    return int(name[len("Dataset"):].split("_", 1)[0])


def results_folder(dataset: str, trainer: str, plans: str, configuration: str, what: str = "trained model",
                   train_hint: str | None = None) -> Path:
    """nnUNet_results/DATASET/TRAINER__PLANS__CONFIGURATION, or an error naming the folder and how to train it."""
    from nnunetv2.paths import nnUNet_results
    from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier

    if not nnUNet_results.is_set():
        raise InputError("nnUNet_results is not set; set the nnU-Net path variables first")
    name = dataset_name(dataset)
    folder = Path(nnUNet_results.get()) / name / convert_trainer_plans_config_to_identifier(trainer, plans,
                                                                                            configuration)
    if not folder.is_dir():
        available = sorted(p.name for p in folder.parent.iterdir() if p.is_dir()) if folder.parent.is_dir() else []
        listing = f" Trained models of {name}: {available}." if available else ""
        raise InputError(f"No {what} at {folder}.{listing}" + (f" Train it with {train_hint}" if train_hint else ""))
    return folder


@dataclass
class PreprocessedCase:
    """One case as nnU-Net's preprocessor returns it, plus the raw images it came from."""
    raw: np.ndarray  # (C, *raw array shape) as nnU-Net's reader returns it (SimpleITK: z, y, x)
    data: np.ndarray  # (C, *preprocessed shape): transposed, cropped to the nonzero region, normalised, resampled
    properties: dict  # nnU-Net's properties (geometry of the input, crop box, ...)


def preprocess_case(files: list[Path], plans_manager, configuration_manager, dataset_json: dict
                    ) -> PreprocessedCase:
    """Reads a case with the plans' reader and preprocesses it with the configuration's preprocessor class, as
    nnUNetv2_predict does (`run_case` = read + `run_case_npy`; the images are read once and kept)."""
    check_image_files(files)  # truncated or non-finite NIfTI files: SimpleITK would read zeros
    rw = plans_manager.image_reader_writer_class()
    raw, properties = rw.read_images([str(f) for f in files])
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    data, _, properties = preprocessor.run_case_npy(raw, None, properties, plans_manager, configuration_manager,
                                                    dataset_json)
    return PreprocessedCase(np.asarray(raw), np.asarray(data, dtype=np.float32), properties)


def nonzero_mask(raw: np.ndarray) -> np.ndarray:
    """nnU-Net's nonzero region of a (C, ...) image: nonzero in any channel, holes filled (its crop region and the
    region of z-scoring with use_mask_for_norm)."""
    from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask

    return create_nonzero_mask(np.asarray(raw))


def to_input_intensities(volume: np.ndarray, raw: np.ndarray, plans_manager, configuration_manager) -> np.ndarray:
    """Undoes nnU-Net's intensity normalisation of a (C, *raw shape) volume in the input's geometry (e.g. a
    reconstruction brought back with `to_input_geometry`), channel by channel with the statistics nnU-Net used:
    ZScoreNormalization: the image's own mean/std over the nonzero region (use_mask_for_norm) or over the crop box;
    CTNormalization: the dataset's foreground mean/std from the plans; NoNormalization: unchanged. Voxels where the
    input channel is 0 (the background of skull-stripped images) stay 0 for z-scored channels."""
    from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice, get_bbox_from_mask

    raw = np.asarray(raw, dtype=np.float32)
    mask = nonzero_mask(raw)
    box = bounding_box_to_slice(get_bbox_from_mask(mask)) if mask.any() else tuple(slice(None) for _ in mask.shape)
    out = np.empty(volume.shape, dtype=np.float32)
    schemes = configuration_manager.normalization_schemes
    for c in range(volume.shape[0]):
        scheme = schemes[c]
        if scheme == "ZScoreNormalization":
            values = raw[c][mask] if configuration_manager.use_mask_for_norm[c] else raw[c][box]
            mean, std = (float(values.mean()), float(max(values.std(), 1e-8))) if values.size else (0.0, 1.0)
            out[c] = np.where(raw[c] != 0, volume[c] * std + mean, 0)
        elif scheme == "CTNormalization":
            props = plans_manager.foreground_intensity_properties_per_channel[str(c)]
            out[c] = volume[c] * max(float(props["std"]), 1e-8) + float(props["mean"])
        elif scheme == "NoNormalization":
            out[c] = volume[c]
        else:
            raise InputError(f"Channel {c} is normalised with {scheme}; writing a reconstruction in the input's "
                             f"intensity units is implemented for ZScoreNormalization, CTNormalization and "
                             f"NoNormalization only")
    return out


def back_to_input(volume: np.ndarray, case: PreprocessedCase, plans_manager, configuration_manager) -> np.ndarray:
    """A (C, *preprocessed shape) volume -> (C, *raw shape): nnU-Net's export path for probabilities (resample to
    the input spacing, un-crop, transpose back); see `to_input_geometry`."""
    return to_input_geometry(np.asarray(volume, dtype=np.float32), case.properties, plans_manager,
                             configuration_manager)


def write_volumes(folder: Path, case: str, volumes: dict[str, np.ndarray], file_ending: str, properties: dict
                  ) -> list[Path]:
    """Writes each 3D float volume (raw array order) as folder/CASE_NAME<file_ending> with the input's spacing,
    origin and direction; every file atomically (a temporary file renamed into place)."""
    written = []
    for name, volume in volumes.items():
        target = Path(folder) / f"{case}_{name}{file_ending}"
        with atomic_image(target) as tmp:  # verified before the rename (a full disk gives a short file)
            write_float_image(np.asarray(volume, dtype=np.float32), str(tmp), properties)
        written.append(target)
    return written


def load_foreground_probability(npz: Path, label_manager, spatial_shape: tuple[int, ...],
                                image: np.ndarray | None = None) -> np.ndarray:
    """p_fg of nnUNetv2_predict's CASE.npz (`probabilities`, (K, *input array shape), already in the input's
    geometry: nnU-Net resamples, un-crops and transposes back before saving): 1 - p(background), or for
    region-based models the largest region probability. Checked against the image it should belong to: the
    shape, and with `image` (C, *input array shape, as read) that nothing was predicted outside the image's
    nonzero bounding box (nnU-Net's crop box, outside which nnU-Net writes exact background), which catches
    predictions of another case whose brain extends further. Predictions of a case with the same geometry and a
    brain inside this one's box cannot be told apart (registered data)."""
    from sadm_nnunet.anomaly_maps import foreground_probability

    try:
        loaded = np.load(npz, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"cannot read {npz}: {e}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile) or "probabilities" not in loaded.files:
        found = loaded.files if isinstance(loaded, np.lib.npyio.NpzFile) else f"a {type(loaded).__name__}"
        raise InputError(f"{npz} holds {found}, not an array 'probabilities'; it was not written by "
                         f"nnUNetv2_predict --save_probabilities")
    with loaded:
        try:
            probabilities = np.asarray(loaded["probabilities"], dtype=np.float32)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise InputError(f"cannot read the probabilities in {npz}: {e}") from None
    expected = (label_manager.num_segmentation_heads, *spatial_shape)
    if probabilities.shape != expected:
        raise InputError(f"{npz} holds probabilities of shape {probabilities.shape}; expected {expected} "
                         f"({label_manager.num_segmentation_heads} class channel(s) of this model, and the input "
                         f"image's array shape). Were the predictions made with this model and these images?")
    p_fg = probabilities.max(axis=0) if label_manager.has_regions else foreground_probability(probabilities)
    if image is None:
        return p_fg
    outside = ~_bounding_box_mask(nonzero_mask(image))
    if (p_fg[outside] != 0).any():
        raise InputError(f"{npz} predicts foreground in {int((p_fg[outside] != 0).sum())} voxel(s) outside the "
                         f"bounding box of its image's nonzero region, where nnUNetv2_predict writes exact "
                         f"background (0 expected): the prediction belongs to another image")
    return p_fg


def _bounding_box_mask(mask: np.ndarray) -> np.ndarray:
    """True inside the bounding box of `mask`'s true voxels (everywhere when it has none)."""
    box = np.zeros(mask.shape, dtype=bool)
    if not mask.any():
        box[...] = True
        return box
    from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice, get_bbox_from_mask

    box[bounding_box_to_slice(get_bbox_from_mask(mask))] = True
    return box
