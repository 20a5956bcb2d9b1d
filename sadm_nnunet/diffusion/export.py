"""The trained stage-I model as a diffusers folder (safetensors + JSON), loadable with diffusers alone:

    FOLDER/model_index.json, FOLDER/unet/, FOLDER/scheduler/   (DDPMPipeline.from_pretrained(FOLDER) works)
    FOLDER/sadm_diffusion.json                                   (our settings: intensity contract, noise, ...)
    FOLDER/image_encoder/                                        (cDDPM only: config.json + safetensors)

A cDDPM UNet loads with `UNet2DModel.from_pretrained(FOLDER / "unet")` alone, but needs `class_labels` (the image
encoder's embedding, `ImageEncoder.from_pretrained(FOLDER / "image_encoder")`) in every call, so diffusers'
unconditional `DDPMPipeline` sampling does not apply to it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDPMPipeline, UNet2DModel

from sadm_nnunet.diffusion.encoder import ImageEncoder
from sadm_nnunet.diffusion.model import ConditionedUNet, make_scheduler, parts
from sadm_nnunet.diffusion.settings import DiffusionSettings, encoder_config
from sadm_nnunet.errors import InputError
from sadm_nnunet.io_utils import atomic_folder, write_json_atomic

EXPORT_FOLDER_NAME = "diffusion_model"  # FOLD/diffusion_model: the model at the end of training
SETTINGS_FILE = "sadm_diffusion.json"
ENCODER_FOLDER = "image_encoder"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


def epoch_export_folder_name(epoch: int) -> str:
    """FOLD/diffusion_model_epoch_N: the EMA denoiser after N epochs, written during training when the trainer's
    `export_epochs` holds N (e.g. for a stage-I learning curve)."""
    return f"{EXPORT_FOLDER_NAME}_epoch_{int(epoch)}"


def exported_epochs(fold_folder: str | Path) -> list[int]:
    """The N of every FOLD/diffusion_model_epoch_N in a training's fold folder, ascending."""
    prefix = epoch_export_folder_name(0)[:-1]
    return sorted(int(p.name[len(prefix):]) for p in Path(fold_folder).glob(f"{prefix}*")
                  if p.is_dir() and p.name[len(prefix):].isdigit())


def export_folder(fold_folder: str | Path, epoch: int | None = None) -> Path:
    """FOLD/diffusion_model, or FOLD/diffusion_model_epoch_N for `epoch` N; for a missing epoch export an InputError
    lists the exports there are."""
    fold_folder = Path(fold_folder)
    if epoch is None:
        return fold_folder / EXPORT_FOLDER_NAME
    folder = fold_folder / epoch_export_folder_name(epoch)
    if not folder.is_dir():
        found = exported_epochs(fold_folder)
        raise InputError(f"{folder} does not exist; {fold_folder} holds exports after epochs "
                         f"{found if found else '(none)'}. An export after N epochs is written during training by a "
                         f"stage-I trainer whose export_epochs holds N")
    return folder


def save_diffusion_model(model: UNet2DModel | ConditionedUNet, settings: DiffusionSettings,
                         folder: str | Path) -> Path:
    """Writes the UNet, its scheduler, the cDDPM image encoder if any and our settings to `folder`, atomically (the
    old folder stays intact until the new one is complete)."""
    folder = Path(folder)
    unet, image_encoder = parts(model)
    with atomic_folder(folder) as tmp:
        DDPMPipeline(unet=unet, scheduler=make_scheduler(settings)).save_pretrained(tmp, safe_serialization=True)
        if image_encoder is not None:
            image_encoder.save_pretrained(tmp / ENCODER_FOLDER, safe_serialization=True)
        write_json_atomic(settings.to_dict(), tmp / SETTINGS_FILE)
    return folder


def load_diffusion_model(folder: str | Path, device: torch.device | str = "cpu"
                         ) -> tuple[UNet2DModel | ConditionedUNet, DiffusionSettings]:
    """Loads a folder written by `save_diffusion_model` (safetensors only, nothing is unpickled): a `UNet2DModel`,
    or for a cDDPM model (settings `conditioning.encoder` set) a `ConditionedUNet`, frozen and in eval mode."""
    folder = Path(folder)
    settings_file = folder / SETTINGS_FILE
    _require(folder, settings_file, folder / "unet" / "config.json", folder / "unet" / WEIGHTS_FILE)
    try:
        settings = DiffusionSettings.from_dict(json.loads(settings_file.read_text()), where=str(settings_file))
    except json.JSONDecodeError as e:
        raise ValueError(f"{settings_file} is not valid JSON: {e}") from e
    model = unet = _load_part(UNet2DModel, folder / "unet", "a diffusers UNet2DModel")
    if settings.conditioning.encoder is not None:
        encoder_folder = folder / ENCODER_FOLDER
        _require(folder, encoder_folder / "config.json", encoder_folder / WEIGHTS_FILE)
        expected = encoder_config(settings, dict(unet.config))
        config = json.loads((encoder_folder / "config.json").read_text())
        found = {k: config.get(k) for k in expected}
        if found != expected:
            raise ValueError(f"{encoder_folder / 'config.json'} describes the image encoder {found}; the settings in "
                             f"{settings_file} and the UNet's config give {expected}")
        image_encoder = _load_part(ImageEncoder, encoder_folder, "an sadm_nnunet ImageEncoder")
        try:
            model = ConditionedUNet(unet, image_encoder)
        except ValueError as e:
            raise ValueError(f"{folder} is not a consistent cDDPM model: {e}") from e
    return model.to(device).eval().requires_grad_(False), settings


def _require(folder: Path, *paths: Path) -> None:
    for required in paths:
        if not required.is_file():
            raise FileNotFoundError(f"{required} is missing: {folder} is not a complete stage-I model folder "
                                    f"(it is written at the end of `nnUNetv2_train ... -tr SADMDiffusionTrainer`)")


def _load_part(cls, path: Path, what: str):
    try:
        return cls.from_pretrained(path, use_safetensors=True, low_cpu_mem_usage=False)
    except Exception as e:  # diffusers/safetensors raise several types for truncated or foreign files
        raise RuntimeError(f"Could not load the diffusion model weights {path / WEIGHTS_FILE}: {e}. The file is "
                           f"truncated or not {what}; export it again from the training's checkpoint.") from e
