"""`sadm_nnunet_plan_diffusion`: writes the stage-I settings into a healthy dataset's nnU-Net plans.

    sadm_nnunet_plan_diffusion HEALTHY [-c 2d] [-p nnUNetPlans] [--set unet.base_channels=32 noise.kind=gaussian]

Without this command SADMDiffusionTrainer uses the template defaults (plans/sadm_diffusion.json); with it the
settings become part of the dataset's plans (the experiment record nnU-Net copies into the results folder).
Re-running it keeps earlier overrides and applies the new ones.
"""
from __future__ import annotations

import argparse
import json

from sadm_nnunet.diffusion.settings import PLANS_KEY, load_template, merge_settings, unet_config
from sadm_nnunet.errors import InputError, one_line_errors
from sadm_nnunet.io_utils import write_json_atomic
from sadm_nnunet.nnunet_plans import configuration_manager, parse_override, plans_file, resolve_diffusion_settings


@one_line_errors("sadm_nnunet_plan_diffusion")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="healthy dataset name or id (as for nnUNetv2_train)")
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="settings to override")
    args = parser.parse_args(argv)

    path = plans_file(args.dataset, args.plans)
    plans = json.loads(path.read_text())
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
    write_json_atomic(plans, path)

    resolved = configuration_manager(plans, args.configuration, str(path))
    n_channels = len(json.loads((path.parent / "dataset.json").read_text())["channel_names"])
    cfg = unet_config(settings, tuple(resolved.patch_size), n_channels)
    print(f"Wrote '{PLANS_KEY}' into {path} (configuration '{args.configuration}').")
    print(f"Denoiser: patch {list(cfg['sample_size'])}, {n_channels} channel(s), widths "
          f"{list(cfg['block_out_channels'])}, blocks {list(cfg['down_block_types'])}, "
          f"noise {settings.noise.kind}, {settings.num_train_timesteps} timesteps ({settings.beta_schedule}).")
