"""`sadm_nnunet_plan_diffusion`: writes the stage-I settings into a healthy dataset's nnU-Net plans.

    sadm_nnunet_plan_diffusion HEALTHY [-c 2d] [-p nnUNetPlans] [--set unet.base_channels=32 noise.kind=gaussian]
    sadm_nnunet_plan_diffusion HEALTHY --slices-of 3d_lowres [-c 2d_lowres]

Without this command SADMDiffusionTrainer uses the template defaults (plans/sadm_diffusion.json); with it the
settings become part of the dataset's plans (the experiment record nnU-Net copies into the results folder).
Re-running it keeps earlier overrides and applies the new ones.

`--slices-of CONFIG` first writes a 2D configuration (default name: 2d_lowres for 3d_lowres) whose slices are
those of the 3D configuration CONFIG: its in-plane spacing and patch, the '2d' configuration's preprocessing. A
3D SADM configuration at a spacing of its own (nnU-Net's 3d_lowres) needs a stage I trained on that: preprocess
and train the new configuration, then `sadm_nnunet_plan TARGET --ddpm HEALTHY -c CONFIG --ddpm-configuration NAME`.
"""
from __future__ import annotations

import argparse

from sadm_nnunet.diffusion.settings import PLANS_KEY, load_template, merge_settings, unet_config
from sadm_nnunet.errors import InputError, one_line_errors
from sadm_nnunet.io_utils import read_json, write_json_atomic
from sadm_nnunet.nnunet_cases import dataset_id
from sadm_nnunet.nnunet_plans import (configuration_manager, parse_override, plans_file, resolve_diffusion_settings,
                                      slices_configuration, slices_configuration_name)


@one_line_errors("sadm_nnunet_plan_diffusion")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="healthy dataset name or id (as for nnUNetv2_train)")
    parser.add_argument("-c", "--configuration", default=None,
                        help="2D configuration of the stage-I denoiser (default: 2d; with --slices-of: 2d_lowres "
                             "for 3d_lowres)")
    parser.add_argument("--slices-of", default=None, metavar="CONFIG",
                        help="first write a 2D configuration with the slices of this 3D configuration (its in-plane "
                             "spacing and patch), for a 3D SADM configuration at a spacing of its own")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="settings to override")
    args = parser.parse_args(argv)

    path = plans_file(args.dataset, args.plans)
    plans = read_json(path, "plans file")
    if args.slices_of is not None:
        args.configuration = args.configuration or slices_configuration_name(args.slices_of)
        plans["configurations"][args.configuration] = slices_configuration(plans, args.slices_of, args.configuration,
                                                                           str(path))
    args.configuration = args.configuration or "2d"
    configuration_manager(plans, args.configuration, str(path), "the stage-I denoiser")
    configuration = plans["configurations"][args.configuration]
    try:
        block = merge_settings(load_template(), configuration.get(PLANS_KEY, {}))
        for override in args.set:
            block = merge_settings(block, parse_override(override))
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{e.args[0] if e.args else e}; {path} was not changed") from None
    configuration[PLANS_KEY] = block
    settings = resolve_diffusion_settings(plans, args.configuration)
    resolved = configuration_manager(plans, args.configuration, str(path))
    n_channels = len(read_json(path.parent / "dataset.json", "dataset file")["channel_names"])
    try:
        cfg = unet_config(settings, tuple(resolved.patch_size), n_channels)
    except ValueError as e:
        raise InputError(f"{str(e).rstrip('.')}; {path} was not changed") from None
    write_json_atomic(plans, path)

    print(f"Wrote '{PLANS_KEY}' into {path} (configuration '{args.configuration}').")
    print(f"Denoiser: patch {list(cfg['sample_size'])}, {n_channels} channel(s), widths "
          f"{list(cfg['block_out_channels'])}, blocks {list(cfg['down_block_types'])}, "
          f"noise {settings.noise.kind}, {settings.num_train_timesteps} timesteps ({settings.beta_schedule}).")
    if args.slices_of is not None:
        ident, plans_option = dataset_id(path.parent.name), ("" if args.plans == "nnUNetPlans" else f" -p {args.plans}")
        print(f"Configuration '{args.configuration}': the slices of '{args.slices_of}' (in-plane spacing "
              f"{list(resolved.spacing)}, patch {list(resolved.patch_size)}). Next:\n"
              f"  nnUNetv2_preprocess -d {ident} -c {args.configuration} -plans_name {args.plans} -np 4\n"
              f"  nnUNetv2_train {ident} {args.configuration} all -tr SADMDiffusionTrainer{plans_option}\n"
              f"  sadm_nnunet_plan TARGET --ddpm {ident} -c {args.slices_of} --ddpm-configuration "
              f"{args.configuration}" + ("" if args.plans == "nnUNetPlans" else
                                         f" -p {args.plans} --ddpm-plans {args.plans}"))
