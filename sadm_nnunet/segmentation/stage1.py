"""Finding, checking and loading the stage-I (diffusion) model that an SADM configuration uses."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DModel

from sadm_nnunet.diffusion.model import ConditionedUNet, parts
from sadm_nnunet.diffusion.export import EXPORT_FOLDER_NAME, export_folder, load_diffusion_model
from sadm_nnunet.diffusion.settings import encoder_config
from sadm_nnunet.errors import InputError
from sadm_nnunet.io_utils import read_json
from sadm_nnunet.segmentation.settings import SADMSettings, Stage1Model

STAGE1_TRAINER_PREFIX = "SADMDiffusionTrainer"


def results_root() -> Path:
    from nnunetv2.paths import nnUNet_results

    if not nnUNet_results.is_set():
        raise InputError("nnUNet_results is not set; set the nnU-Net path variables first")
    return Path(nnUNet_results.get())


def training_folder(model: Stage1Model) -> Path:
    from nnunetv2.utilities.file_path_utilities import convert_trainer_plans_config_to_identifier

    return results_root() / model.dataset / convert_trainer_plans_config_to_identifier(
        model.trainer, model.plans, model.configuration)


def model_folder(model: Stage1Model) -> Path:
    """The exported diffusers folder of a stage-I model: written at the end of its training, or with `epoch` N
    after N epochs (an InputError lists the exports there are when that one is missing)."""
    return export_folder(training_folder(model) / f"fold_{model.fold}", model.epoch)


def find_stage1_model(dataset: str, trainer: str | None, plans: str, configuration: str, fold: str,
                      epoch: int | None = None) -> Stage1Model:
    """The stage-I model of `dataset`; with `trainer=None` the only trained SADMDiffusionTrainer* there; `epoch`:
    its export after that many epochs instead of the final model."""
    if epoch is not None:
        if trainer is None:
            raise InputError("--ddpm-epoch picks an export of one stage-I training: name the trainer with "
                             "--ddpm-trainer as well")
        model = Stage1Model(dataset, trainer, plans, configuration, str(fold), int(epoch))
        model_folder(model)  # the export exists
        return model
    if trainer is not None:
        model = Stage1Model(dataset, trainer, plans, configuration, str(fold))
        if not model_folder(model).is_dir():
            raise InputError(
                f"No trained stage-I model at {model_folder(model)}. Train it with `nnUNetv2_train {dataset} "
                f"{configuration} {fold} -tr {trainer} -p {plans}` (the folder is written when training ends).")
        return model
    root = results_root() / dataset
    suffix = f"__{plans}__{configuration}"
    candidates = sorted(p.name[: -len(suffix)] for p in root.glob(f"{STAGE1_TRAINER_PREFIX}*{suffix}")
                        if (p / f"fold_{fold}" / EXPORT_FOLDER_NAME).is_dir()) if root.is_dir() else []
    if len(candidates) != 1:
        found = f"found {candidates}" if candidates else "found none"
        raise InputError(
            f"Expected one trained stage-I model ({STAGE1_TRAINER_PREFIX}*{suffix}/fold_{fold}/{EXPORT_FOLDER_NAME}) "
            f"in {root}; {found}. Train one with `nnUNetv2_train {dataset} {configuration} {fold} -tr "
            f"SADMDiffusionTrainer`, or name it with --ddpm-trainer.")
    return Stage1Model(dataset, candidates[0], plans, configuration, str(fold))


def load_stage1_denoiser(settings: SADMSettings, device: torch.device | str = "cpu"
                         ) -> UNet2DModel | ConditionedUNet:
    """The stage-I denoiser (EMA weights, with its image encoder for cDDPM) that `settings` records, checked
    against the recorded architecture."""
    folder = model_folder(settings.stage1)
    model, _ = load_diffusion_model(folder, device)
    _, image_encoder = parts(model)
    recorded_encoder = encoder_config(settings.diffusion, settings.denoiser)
    found = (denoiser_config(model), None if image_encoder is None else config_of(image_encoder))
    expected = (normalised(settings.denoiser), None if recorded_encoder is None else normalised(recorded_encoder))
    if found != expected:
        raise ValueError(
            f"The stage-I model at {folder} no longer matches the one recorded in the plans (architecture "
            f"{found} vs {expected}, as (UNet, image encoder)); it was retrained with other settings. Run "
            f"sadm_nnunet_plan again and retrain stage II.")
    return model


def denoiser_config(model: UNet2DModel | ConditionedUNet) -> dict:
    """The UNet2DModel constructor arguments of a denoiser's UNet (diffusers' private config keys left out)."""
    return config_of(parts(model)[0])


def config_of(model) -> dict:
    """The constructor arguments of a diffusers model (its private config keys left out)."""
    return normalised({k: v for k, v in model.config.items() if not k.startswith("_")})


def normalised(config: dict) -> dict:
    return json.loads(json.dumps(dict(config)))


# ---- compatibility of the stage-I model with the target configuration ----
def compatibility_errors(stage1_plans: dict, stage1_dataset_json: dict, target_plans: dict,
                         target_dataset_json: dict, stage1_configuration: str, target_configuration: str) -> list[str]:
    """What differs between the data the denoiser was trained on and the target configuration's data."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    src = PlansManager(stage1_plans).get_configuration(stage1_configuration)
    dst = PlansManager(target_plans).get_configuration(target_configuration)
    errors = []
    n_src, n_dst = len(stage1_dataset_json["channel_names"]), len(target_dataset_json["channel_names"])
    if n_src != n_dst:
        errors.append(f"channels: stage I has {n_src} {dict(stage1_dataset_json['channel_names'])}, the target "
                      f"has {n_dst} {dict(target_dataset_json['channel_names'])}")
    if list(src.normalization_schemes) != list(dst.normalization_schemes) or \
            list(src.use_mask_for_norm) != list(dst.use_mask_for_norm):
        errors.append(f"normalisation: stage I uses {list(src.normalization_schemes)} (mask {list(src.use_mask_for_norm)})"
                      f", the target {list(dst.normalization_schemes)} (mask {list(dst.use_mask_for_norm)})")
    if not np.allclose(src.spacing[-2:], dst.spacing[-2:], rtol=1e-3):
        errors.append(f"in-plane target spacing: stage I {list(src.spacing)}, the target {list(dst.spacing)}")
    if list(stage1_plans["transpose_forward"]) != list(target_plans["transpose_forward"]):
        errors.append(f"slice orientation (transpose_forward): stage I {stage1_plans['transpose_forward']}, the "
                      f"target {target_plans['transpose_forward']}")
    return errors


def stage1_plans_and_dataset_json(model: Stage1Model) -> tuple[dict, dict]:
    """The plans and dataset.json nnU-Net copied into the stage-I training folder."""
    folder = training_folder(model)
    out = []
    for name in ("plans.json", "dataset.json"):
        path = folder / name
        if not path.is_file():
            raise InputError(f"{path} is missing; it is written when nnUNetv2_train starts")
        out.append(read_json(path))
    return out[0], out[1]

