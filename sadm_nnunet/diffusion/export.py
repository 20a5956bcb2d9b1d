"""The trained stage-I model as a diffusers folder (safetensors + JSON), loadable with diffusers alone:

    FOLDER/model_index.json, FOLDER/unet/, FOLDER/scheduler/   (DDPMPipeline.from_pretrained(FOLDER) works)
    FOLDER/sadm_diffusion.json                                   (our settings: intensity contract, noise, ...)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDPMPipeline, UNet2DModel

from sadm_nnunet.diffusion.model import make_scheduler
from sadm_nnunet.diffusion.settings import DiffusionSettings
from sadm_nnunet.io_utils import atomic_folder, write_json_atomic

EXPORT_FOLDER_NAME = "diffusion_model"
SETTINGS_FILE = "sadm_diffusion.json"


def save_diffusion_model(unet: UNet2DModel, settings: DiffusionSettings, folder: str | Path) -> Path:
    """Writes the UNet, its scheduler and our settings to `folder`, atomically (the old folder stays intact until
    the new one is complete)."""
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        DDPMPipeline(unet=unet, scheduler=make_scheduler(settings)).save_pretrained(tmp, safe_serialization=True)
        write_json_atomic(settings.to_dict(), tmp / SETTINGS_FILE)
    return folder


def load_diffusion_model(folder: str | Path, device: torch.device | str = "cpu"
                         ) -> tuple[UNet2DModel, DiffusionSettings]:
    """Loads a folder written by `save_diffusion_model` (safetensors only, nothing is unpickled)."""
    folder = Path(folder)
    settings_file = folder / SETTINGS_FILE
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    for required in (settings_file, folder / "unet" / "config.json", weights):
        if not required.is_file():
            raise FileNotFoundError(f"{required} is missing: {folder} is not a complete stage-I model folder "
                                    f"(it is written at the end of `nnUNetv2_train ... -tr SADMDiffusionTrainer`)")
    try:
        settings = DiffusionSettings.from_dict(json.loads(settings_file.read_text()), where=str(settings_file))
    except json.JSONDecodeError as e:
        raise ValueError(f"{settings_file} is not valid JSON: {e}") from e
    try:
        unet = UNet2DModel.from_pretrained(folder / "unet", use_safetensors=True, low_cpu_mem_usage=False)
    except Exception as e:  # diffusers/safetensors raise several types for truncated or foreign files
        raise RuntimeError(f"Could not load the diffusion model weights {weights}: {e}. The file is truncated or "
                           f"not a diffusers UNet2DModel; export it again from the training's checkpoint.") from e
    return unet.to(device).eval().requires_grad_(False), settings
