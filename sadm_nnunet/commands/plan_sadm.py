"""`sadm_nnunet_plan`: writes an SADM configuration into a target dataset's nnU-Net plans.

    sadm_nnunet_plan TARGET --ddpm HEALTHY [-c 2d|3d_fullres|3d_lowres] [--fold all] [--name 2d_sadm] [-p nnUNetPlans]
                     [--ddpm-trainer SADMDiffusionTrainer [--ddpm-epoch N]] [--set input_mode=image+reconstruction ...]

The new configuration (default '<configuration>_sadm', e.g. '2d_sadm' or '3d_fullres_sadm') inherits from `-c` and
reuses its preprocessed data; in a 3D configuration the (2D) stage-I denoiser reconstructs every slice of a patch
along the axis the '2d' configuration slices, so its in-plane spacing must match the denoiser's; it records the
stage-I model (HEALTHY's trained SADMDiffusionTrainer*, fold --fold), that model's settings and architecture, and
the SADM settings (template plans/sadm.json); `--ddpm-epoch N` records that training's export after N epochs
(FOLD/diffusion_model_epoch_N, from a trainer with `export_epochs`) instead of its final model. Then train with
`nnUNetv2_train TARGET 2d_sadm FOLD -tr SADMTrainer`.
The stage-I model must have been trained on data preprocessed like the target's (channels, normalisation, target
spacing, slice orientation); otherwise the command refuses and prints how to transfer the plans (or, for other
channels, says that stage I must be trained on healthy data with the target's channels). Re-running it is safe:
earlier --set values are kept unless set again.
3d_lowres works at an in-plane spacing of its own: its stage I is trained on its slices (`sadm_nnunet_plan_diffusion
HEALTHY --slices-of 3d_lowres` writes '2d_lowres'), which is then the default --ddpm-configuration for
-c 3d_lowres. nnU-Net's cascade (3d_cascade_fullres) is refused.
"""
from __future__ import annotations

import argparse

import numpy as np

from sadm_nnunet.diffusion.export import load_diffusion_model
from sadm_nnunet.errors import InputError, one_line_errors
from sadm_nnunet.io_utils import read_json, write_json_atomic
from sadm_nnunet.nnunet_cases import dataset_id, dataset_name
from sadm_nnunet.nnunet_plans import (STAGE2_DIMENSIONS, configuration_manager, deep_update, parse_override,
                                      SLICES_OF_KEY, plans_file, refuse_cascade, sadm_configuration_name,
                                      slices_configuration_name)
from sadm_nnunet.segmentation.settings import PLANS_KEY, SADMSettings, sadm_block
from sadm_nnunet.segmentation.stage1 import (compatibility_errors, denoiser_config, find_stage1_model, model_folder,
                                             stage1_plans_and_dataset_json)


@one_line_errors("sadm_nnunet_plan")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="target dataset name or id (the one stage II trains on)")
    parser.add_argument("--ddpm", required=True, help="healthy dataset name or id whose stage-I model to use")
    parser.add_argument("-c", "--configuration", default="2d", help="target configuration to inherit from")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="target plans identifier")
    parser.add_argument("--name", default=None, help="name of the new configuration (default: <configuration>_sadm)")
    parser.add_argument("--fold", default="all", help="fold of the stage-I model (default: all)")
    parser.add_argument("--ddpm-trainer", default=None,
                        help="stage-I trainer (default: the only trained SADMDiffusionTrainer* of HEALTHY)")
    parser.add_argument("--ddpm-epoch", type=int, default=None,
                        help="the stage-I training's export after N epochs (diffusion_model_epoch_N) instead of its "
                             "final model")
    parser.add_argument("--ddpm-plans", default="nnUNetPlans", help="plans identifier of the stage-I model")
    parser.add_argument("--ddpm-configuration", default=None,
                        help="configuration of the stage-I model (default: 2d; for a 3D -c whose slices "
                             "`sadm_nnunet_plan_diffusion --slices-of` planned in the healthy dataset, that one)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="SADM settings to override")
    args = parser.parse_args(argv)
    name = args.name or sadm_configuration_name(args.configuration)

    path = plans_file(args.target, args.plans)
    plans = read_json(path, "plans file")
    configurations = plans.get("configurations", {})
    base = configuration_manager(plans, args.configuration, str(path), dimensions=STAGE2_DIMENSIONS)
    refuse_cascade(base, args.configuration, str(path))
    if name == args.configuration:
        raise InputError(f"--name must differ from the inherited configuration '{args.configuration}'")

    healthy = dataset_name(args.ddpm)
    args.ddpm_configuration = args.ddpm_configuration or stage1_configuration(healthy, args.ddpm_plans,
                                                                              args.configuration)
    stage1 = find_stage1_model(healthy, args.ddpm_trainer, args.ddpm_plans, args.ddpm_configuration, args.fold,
                               args.ddpm_epoch)
    stage1_plans, stage1_dataset_json = stage1_plans_and_dataset_json(stage1)
    target_dataset_json = read_json(path.parent / "dataset.json", "dataset file")
    errors = compatibility_errors(stage1_plans, stage1_dataset_json, plans, target_dataset_json,
                                  stage1.configuration, args.configuration)
    if errors:
        raise SystemExit(slices_message(errors, stage1, stage1_plans, healthy, plans, args)
                         or mismatch_message(errors, stage1, healthy, path.parent.name, args))

    unet, diffusion = load_diffusion_model(model_folder(stage1))
    previous = configurations.get(name, {}).get(PLANS_KEY, {})
    user = {k: v for k, v in previous.items() if k not in ("stage1", "diffusion", "denoiser")}
    for override in args.set:
        user = deep_update(user, parse_override(override))  # checked against the template by sadm_block
    try:
        block = sadm_block(user, stage1, diffusion, denoiser_config(unet))
        configurations[name] = {"inherits_from": args.configuration, PLANS_KEY: block}
        if base.next_stage_names:
            # a 3d_lowres SADM model feeds no cascade (refuse_cascade); without this nnU-Net's final validation
            # would predict the next stage's input, which needs that stage preprocessed
            configurations[name]["next_stage"] = None
        settings = SADMSettings.from_configuration(configurations[name], name)  # validates before writing
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{e.args[0] if e.args else e}; {path} was not changed") from None
    write_json_atomic(plans, path)
    print(f"Wrote configuration '{name}' (inherits '{args.configuration}') into {path}.")
    print(f"Stage-I model: {model_folder(stage1)}")
    r = settings.diffusion.reconstruction
    print(f"Input: {settings.input_mode}; reconstruction {r.method} at noise levels {list(r.noise_levels)} "
          f"({'random level per sample' if settings.training_noise_level == 'uniform' else 'same'} in training); "
          f"synthetic anomalies p={settings.synthetic_anomalies.probability}.")
    print(f"Train with: nnUNetv2_train {path.parent.name} {name} FOLD -tr SADMTrainer" +
          ("" if args.plans == "nnUNetPlans" else f" -p {args.plans}"))


def stage1_configuration(healthy: str, plans: str, configuration: str) -> str:
    """The default stage-I configuration for target configuration `configuration`: the 2D configuration that
    `sadm_nnunet_plan_diffusion --slices-of CONFIGURATION` wrote into the healthy dataset's plans, else '2d'."""
    try:
        healthy_plans = read_json(plans_file(healthy, plans), "plans file")
    except InputError:
        return "2d"
    derived = [n for n, c in healthy_plans.get("configurations", {}).items() if c.get(SLICES_OF_KEY) == configuration]
    return derived[0] if len(derived) == 1 else "2d"


def rounded(spacing) -> list[float]:
    return [round(float(s), 4) for s in spacing]


def slices_message(errors: list[str], stage1, stage1_plans: dict, healthy: str, target_plans: dict,
                   args: argparse.Namespace) -> str | None:
    """How to fix a configuration whose in-plane spacing differs from the stage-I model's although both datasets
    share their plans (nnU-Net's 3d_lowres has a spacing of its own; or the stage I was trained on another 2D
    configuration), or None (then `mismatch_message`: move the plans first). The fix is a stage I on slices at that
    spacing: an existing 2D configuration of the healthy dataset at that spacing ('2d' for 3d_fullres), else, for a
    3D configuration, one that `sadm_nnunet_plan_diffusion --slices-of` writes."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    if any(not e.startswith("in-plane target spacing") for e in errors):
        return None
    target = configuration_manager(target_plans, args.configuration, dimensions=STAGE2_DIMENSIONS)
    try:
        healthy_plans = read_json(plans_file(healthy, stage1.plans), "plans file")
        mine = configuration_manager(healthy_plans, args.configuration, dimensions=STAGE2_DIMENSIONS)
    except InputError:
        return None
    if not np.allclose(mine.spacing, target.spacing, rtol=1e-3):
        return None
    manager = PlansManager(healthy_plans)
    matching = [n for n in healthy_plans["configurations"] if n != stage1.configuration
                and len(manager.get_configuration(n).patch_size or ()) == 2
                and np.allclose(manager.get_configuration(n).spacing, target.spacing[-2:], rtol=1e-3)]
    ident = dataset_id(healthy)
    plans_option = "" if stage1.plans == "nnUNetPlans" else f" -p {stage1.plans}"
    stage1_spacing = rounded(configuration_manager(stage1_plans, stage1.configuration).spacing)[-2:]
    head = (f"The stage-I model {stage1.trainer} of {healthy} was trained on '{stage1.configuration}' slices at "
            f"in-plane spacing {stage1_spacing}; '{args.configuration}' works at {rounded(target.spacing)}")
    if matching:
        config = matching[0]
        steps = f"{head}, the in-plane spacing of {healthy}'s 2D configuration '{config}'. Use a stage I trained on it:\n"
    elif len(target.patch_size) == 3:
        config = slices_configuration_name(args.configuration)
        steps = (f"{head}, a spacing of its own. Train a stage I on the slices of '{args.configuration}':\n"
                 f"  sadm_nnunet_plan_diffusion {ident} --slices-of {args.configuration}{plans_option}\n")
    else:
        return None
    trainer = args.ddpm_trainer or "SADMDiffusionTrainer"
    return (steps + f"  nnUNetv2_preprocess -d {ident} -c {config} -plans_name {stage1.plans}\n"
            f"  nnUNetv2_train {ident} {config} {args.fold} -tr {trainer}{plans_option}\n"
            f"  {plan_command(target_plans['dataset_name'], healthy, args, args.plans, config, epoch=False)}")


def plan_command(target: str, healthy: str, args: argparse.Namespace, plans: str, ddpm_configuration: str,
                 epoch: bool = True) -> str:
    """`sadm_nnunet_plan` again, with the user's options, on `plans` and the stage I of `ddpm_configuration`
    (epoch=False: a new stage-I training, so no --ddpm-epoch)."""
    command = [f"sadm_nnunet_plan {dataset_id(target)} --ddpm {dataset_id(healthy)} -c {args.configuration}"]
    for option, value, default in (("-p", plans, "nnUNetPlans"), ("--name", args.name, None),
                                   ("--fold", args.fold, "all"), ("--ddpm-trainer", args.ddpm_trainer, None),
                                   ("--ddpm-epoch", args.ddpm_epoch if epoch else None, None),
                                   ("--ddpm-plans", args.ddpm_plans, "nnUNetPlans"),
                                   ("--ddpm-configuration", ddpm_configuration, "2d")):
        if value != default:
            command.append(f"{option} {value}")
    if args.set:
        command.append("--set " + " ".join(args.set))
    return " ".join(command)


def mismatch_message(errors: list[str], stage1, healthy: str, target: str, args: argparse.Namespace) -> str:
    """What differs and how to fix it. Planning differences (normalisation, spacing, orientation) are fixed by
    giving the target the healthy dataset's plans and preprocessing it with them; the channels are a property of
    the trained denoiser, which only a stage-I model trained on healthy data with the target's channels fixes."""
    head = (f"The stage-I model {stage1.trainer} of {healthy} does not fit {target} ({args.configuration}):\n  - "
            + "\n  - ".join(errors))
    if any(e.startswith("channels:") for e in errors):
        return (head + f"\nA trained denoiser takes the channels it was trained on; no plans or preprocessing can "
                f"change that. Train stage I on a healthy dataset with the target's channels, in the same order "
                f"(convert or build it, nnUNetv2_plan_and_preprocess, nnUNetv2_train ... -tr SADMDiffusionTrainer), "
                f"then run sadm_nnunet_plan {dataset_id(target)} --ddpm with that dataset.")
    plans = f"{stage1.plans}From{dataset_id(healthy)}"
    rerun = [plan_command(target, healthy, args, plans, args.ddpm_configuration)]
    return (head + "\nThe denoiser must see data preprocessed exactly like the target's. Give the target the "
            "healthy dataset's plans and preprocess it with them:\n"
            f"  nnUNetv2_move_plans_between_datasets -s {dataset_id(healthy)} -t {dataset_id(target)} "
            f"-sp {stage1.plans} -tp {plans}\n"
            f"  nnUNetv2_preprocess -d {dataset_id(target)} -plans_name {plans} -c {args.configuration}\n"
            f"  {' '.join(rerun)}\n"
            f"and train with -p {plans}.")
