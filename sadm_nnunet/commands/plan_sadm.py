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
"""
from __future__ import annotations

import argparse

from sadm_nnunet.diffusion.export import load_diffusion_model
from sadm_nnunet.errors import InputError, one_line_errors
from sadm_nnunet.io_utils import read_json, write_json_atomic
from sadm_nnunet.nnunet_cases import dataset_id, dataset_name
from sadm_nnunet.nnunet_plans import (STAGE2_DIMENSIONS, configuration_manager, deep_update, parse_override,
                                      plans_file, sadm_configuration_name)
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
    parser.add_argument("--ddpm-configuration", default="2d", help="configuration of the stage-I model")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="SADM settings to override")
    args = parser.parse_args(argv)
    name = args.name or sadm_configuration_name(args.configuration)

    path = plans_file(args.target, args.plans)
    plans = read_json(path, "plans file")
    configurations = plans.get("configurations", {})
    configuration_manager(plans, args.configuration, str(path), dimensions=STAGE2_DIMENSIONS)
    if name == args.configuration:
        raise InputError(f"--name must differ from the inherited configuration '{args.configuration}'")

    healthy = dataset_name(args.ddpm)
    stage1 = find_stage1_model(healthy, args.ddpm_trainer, args.ddpm_plans, args.ddpm_configuration, args.fold,
                               args.ddpm_epoch)
    stage1_plans, stage1_dataset_json = stage1_plans_and_dataset_json(stage1)
    target_dataset_json = read_json(path.parent / "dataset.json", "dataset file")
    errors = compatibility_errors(stage1_plans, stage1_dataset_json, plans, target_dataset_json,
                                  stage1.configuration, args.configuration)
    if errors:
        raise SystemExit(mismatch_message(errors, stage1, healthy, path.parent.name, args))

    unet, diffusion = load_diffusion_model(model_folder(stage1))
    previous = configurations.get(name, {}).get(PLANS_KEY, {})
    user = {k: v for k, v in previous.items() if k not in ("stage1", "diffusion", "denoiser")}
    for override in args.set:
        user = deep_update(user, parse_override(override))  # checked against the template by sadm_block
    try:
        block = sadm_block(user, stage1, diffusion, denoiser_config(unet))
        configurations[name] = {"inherits_from": args.configuration, PLANS_KEY: block}
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
    rerun = [f"sadm_nnunet_plan {dataset_id(target)} --ddpm {dataset_id(healthy)} -p {plans} -c "
             f"{args.configuration}"]
    for option, value, default in (("--name", args.name, None), ("--fold", args.fold, "all"),
                                   ("--ddpm-trainer", args.ddpm_trainer, None),
                                   ("--ddpm-epoch", args.ddpm_epoch, None),
                                   ("--ddpm-plans", args.ddpm_plans, "nnUNetPlans"),
                                   ("--ddpm-configuration", args.ddpm_configuration, "2d")):
        if value != default:
            rerun.append(f"{option} {value}")
    if args.set:
        rerun.append("--set " + " ".join(args.set))
    return (head + "\nThe denoiser must see data preprocessed exactly like the target's. Give the target the "
            "healthy dataset's plans and preprocess it with them:\n"
            f"  nnUNetv2_move_plans_between_datasets -s {dataset_id(healthy)} -t {dataset_id(target)} "
            f"-sp {stage1.plans} -tp {plans}\n"
            f"  nnUNetv2_preprocess -d {dataset_id(target)} -plans_name {plans} -c {args.configuration}\n"
            f"  {' '.join(rerun)}\n"
            f"and train with -p {plans}.")
