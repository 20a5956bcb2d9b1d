"""Our settings inside a dataset's nnU-Net plans: the plans file, a configuration in it (it exists, it is of a
kind we support, it carries our block), the resolved stage-I and stage-II settings, and `--set KEY=VALUE`
overrides. Library code: bad input raises `InputError` naming the plans, the value found and the value expected.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from sadm_nnunet.diffusion.settings import PLANS_KEY as DIFFUSION_KEY
from sadm_nnunet.diffusion.settings import DiffusionSettings
from sadm_nnunet.errors import InputError
from sadm_nnunet.segmentation.settings import PLANS_KEY as SADM_KEY
from sadm_nnunet.segmentation.settings import SADMSettings

KEEP = "keep"  # resolve_diffusion_settings: keep the plans' conditioning.encoder as it is


STAGE2_DIMENSIONS = (2, 3)  # stage II: 2D configurations, and 3D ones whose patches the denoiser reconstructs slice-wise


def sadm_configuration_name(base: str) -> str:
    """The configuration `sadm_nnunet_plan -c BASE` writes unless --name says otherwise (it inherits BASE)."""
    return f"{base}_sadm"


def plans_file(dataset: str, plans_identifier: str) -> Path:
    """nnUNet_preprocessed/DATASET/PLANS.json of a dataset name or id, or an error saying how to create it."""
    from nnunetv2.paths import nnUNet_preprocessed

    from sadm_nnunet.nnunet_cases import dataset_id, dataset_name

    if not nnUNet_preprocessed.is_set():
        raise InputError("nnUNet_preprocessed is not set; set the nnU-Net path variables first")
    name = dataset_name(dataset)
    path = Path(nnUNet_preprocessed.get()) / name / f"{plans_identifier}.json"
    if not path.is_file():
        raise InputError(f"{path} does not exist; run nnUNetv2_plan_and_preprocess -d {dataset_id(name)} first "
                         f"(or name the plans with -p)")
    return path


def parse_override(text: str) -> dict:
    """'a.b=VALUE' -> {'a': {'b': VALUE}}; VALUE is parsed as JSON when possible, else taken as a string."""
    if "=" not in text:
        raise InputError(f"--set expects KEY=VALUE (e.g. unet.base_channels=32); found '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    out: dict = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def deep_update(base: dict, update: dict) -> dict:
    """`base` with `update` merged in, nested dicts key by key (unlike `merge_settings`, new keys are allowed: the
    result is checked against the template later)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_update(out.get(k, {}), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def configuration_manager(plans: dict, configuration: str, source: str | None = None, what: str = "SADM",
                          dimensions: tuple[int, ...] = (2,)):
    """nnU-Net's ConfigurationManager of `configuration` (inheritance resolved), checked to exist and to have a
    patch of one of `dimensions` (2: the stage-I denoiser's slices; stage II takes 2 or 3). `source` names the plans
    in errors (default: the plans of the dataset); `what` names who needs those dimensions."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    source = source or f"the plans of {plans.get('dataset_name')}"
    configurations = plans.get("configurations", {})
    if configuration not in configurations:
        raise InputError(f"{source} have no configuration '{configuration}'; available: {sorted(configurations)}")
    resolved = PlansManager(plans).get_configuration(configuration)
    if len(resolved.patch_size) not in dimensions:
        kinds = " or ".join(f"{d}D" for d in dimensions)
        raise InputError(f"Configuration '{configuration}' of {source} is {len(resolved.patch_size)}D (patch "
                         f"{list(resolved.patch_size)}); {what} needs a {kinds} configuration"
                         + (" (e.g. 2d): it is trained on 2D slices, and a 3D SADM configuration slices its "
                            "patches for it." if dimensions == (2,) else "."))
    return resolved


SLICES_OF_KEY = "sadm_slices_of"  # marks a 2D configuration that `sadm_nnunet_plan_diffusion --slices-of` derived


def slices_configuration_name(configuration: str) -> str:
    """The 2D configuration `sadm_nnunet_plan_diffusion --slices-of CONFIGURATION` writes unless -c says otherwise:
    '3d_lowres' -> '2d_lowres'."""
    return "2d_" + configuration.removeprefix("3d_")


def slices_configuration(plans: dict, configuration: str, name: str, source: str) -> dict:
    """A 2D configuration (inheriting '2d': same preprocessing, normalisation and batch size) whose slices are those
    of the 3D `configuration`'s patches: its in-plane spacing, in-plane patch and in-plane median image size. A
    stage-I denoiser trained on it reconstructs the slices of a 3D SADM configuration at a spacing of its own, such
    as nnU-Net's 3d_lowres. Written as `name` into the plans; preprocessed under its own data identifier. Re-running
    it keeps the stage-I settings written into `name` earlier."""
    resolved = configuration_manager(plans, configuration, source, "--slices-of", dimensions=(3,))
    refuse_cascade(resolved, configuration, source)
    configurations = plans["configurations"]
    if "2d" not in configurations:
        raise InputError(f"{source} have no '2d' configuration for '{name}' to inherit its preprocessing from; "
                         f"plan the dataset with nnUNetv2_plan_experiment (it plans '2d' by default)")
    existing = configurations.get(name)
    if name == "2d" or (existing is not None and SLICES_OF_KEY not in existing):
        raise InputError(f"{source} already have a configuration '{name}' that --slices-of did not write; name the "
                         f"new one with another -c")
    if existing is not None and existing[SLICES_OF_KEY] != configuration:
        raise InputError(f"Configuration '{name}' of {source} holds the slices of '{existing[SLICES_OF_KEY]}', not "
                         f"of '{configuration}'; name the new one with another -c")
    return {**({DIFFUSION_KEY: existing[DIFFUSION_KEY]} if existing and DIFFUSION_KEY in existing else {}),
            "inherits_from": "2d", SLICES_OF_KEY: configuration,
            "data_identifier": f"{plans.get('plans_name', 'nnUNetPlans')}_{name}",
            "spacing": [float(s) for s in resolved.spacing[1:]],
            "patch_size": [int(p) for p in resolved.patch_size[1:]],
            "median_image_size_in_voxels": [float(m) for m in resolved.median_image_size_in_voxels[1:]]}


def refuse_cascade(resolved, configuration: str, source: str) -> None:
    """SADM does not take nnU-Net's cascade: a cascaded configuration (`resolved`, its ConfigurationManager) feeds
    the previous stage's segmentation to the network as extra input channels, which the SADM network does not
    stack."""
    previous = resolved.previous_stage_name
    if previous is not None:
        raise InputError(f"Configuration '{configuration}' of {source} is cascaded (it takes the predictions of "
                         f"'{previous}' as input); SADM does not support nnU-Net's cascade. Use a configuration "
                         f"without a previous stage, e.g. -c 3d_fullres or -c {previous}.")


def resolve_sadm_settings(plans: dict, configuration: str, source: str | None = None) -> SADMSettings:
    """The validated stage-II settings of an SADM configuration (its `sadm` block, which sadm_nnunet_plan writes)."""
    source = source or f"the plans of {plans.get('dataset_name')}"
    manager = configuration_manager(plans, configuration, source, dimensions=STAGE2_DIMENSIONS)
    refuse_cascade(manager, configuration, source)
    resolved = manager.configuration
    if SADM_KEY not in resolved:
        raise InputError(
            f"Configuration '{configuration}' of {source} has no '{SADM_KEY}' block, so it is not an SADM "
            f"configuration, and a model trained with it is not an SADM model (a plain nnU-Net model has no "
            f"reconstruction). Create one with `sadm_nnunet_plan TARGET --ddpm HEALTHY` and train it as "
            f"`nnUNetv2_train TARGET 2d_sadm FOLD -tr SADMTrainer`.")
    try:
        return SADMSettings.from_configuration(resolved, configuration)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{source}: {e.args[0] if e.args else e}") from None


def resolve_diffusion_settings(plans: dict, configuration: str, image_encoder: str | None = KEEP,
                               trainer: str = "SADMDiffusionTrainer") -> DiffusionSettings:
    """Validated stage-I settings of a configuration (template defaults + the plans' block); writes the complete
    block back into `plans`, so the plans.json nnU-Net copies into the results folder records every setting.

    `image_encoder` is the conditioning the trainer trains (None: unconditioned DDPM, 'conv': cDDPM); it replaces
    the plans' `conditioning.encoder` when that is null, and a different non-null value there is an error."""
    resolved = configuration_manager(plans, configuration, what=trainer)
    try:
        settings = DiffusionSettings.from_configuration(resolved.configuration)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"the plans of {plans.get('dataset_name')}: {e.args[0] if e.args else e}") from None
    planned = settings.conditioning.encoder
    if image_encoder != KEEP and planned != image_encoder:
        if planned is not None:
            raise InputError(
                f"The plans of {plans.get('dataset_name')} set {DIFFUSION_KEY}.conditioning.encoder to {planned!r} "
                f"(configuration '{configuration}'), but {trainer} trains "
                f"{'an unconditioned DDPM' if image_encoder is None else f'with encoder {image_encoder!r}'}. Use "
                f"-tr SADMDiffusionTrainer_cDDPM for the conditioned model, or set conditioning.encoder=null.")
        settings = replace(settings, conditioning=replace(settings.conditioning, encoder=image_encoder))
    plans["configurations"][configuration][DIFFUSION_KEY] = settings.to_dict()
    return settings
