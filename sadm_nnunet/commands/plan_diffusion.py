"""`sadm_nnunet_plan_diffusion`: writes the stage-I settings into a healthy dataset's nnU-Net plans.

    sadm_nnunet_plan_diffusion HEALTHY [-c 2d] [-p nnUNetPlans] [--set unet.base_channels=32 noise.kind=gaussian]

Without this command SADMDiffusionTrainer uses the template defaults (plans/sadm_diffusion.json); with it the
settings become part of the dataset's plans (the experiment record nnU-Net copies into the results folder).
Re-running it keeps earlier overrides and applies the new ones.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from sadm_nnunet.diffusion.settings import PLANS_KEY, unet_config
from sadm_nnunet.errors import one_line_errors
from sadm_nnunet.io_utils import read_json, write_json_atomic


def parse_override(text: str) -> dict:
    """'a.b=VALUE' -> {'a': {'b': VALUE}}; VALUE is parsed as JSON when possible, else taken as a string."""
    if "=" not in text:
        raise SystemExit(f"--set expects KEY=VALUE (e.g. unet.base_channels=32); found '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    out: dict = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def plans_file(dataset: str, plans_identifier: str) -> Path:
    from nnunetv2.paths import nnUNet_preprocessed

    from sadm_nnunet.nnunet_cases import dataset_name

    if not nnUNet_preprocessed.is_set():
        raise SystemExit("nnUNet_preprocessed is not set; set the nnU-Net path variables first")
    path = Path(nnUNet_preprocessed.get()) / dataset_name(dataset) / f"{plans_identifier}.json"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist; run nnUNetv2_plan_and_preprocess -d {dataset} first")
    return path


@one_line_errors("sadm_nnunet_plan_diffusion")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="healthy dataset name or id (as for nnUNetv2_train)")
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="settings to override")
    args = parser.parse_args(argv)

    from sadm_nnunet.diffusion.settings import load_template, merge_settings
    from sadm_nnunet.training.diffusion_trainer import resolve_diffusion_settings

    path = plans_file(args.dataset, args.plans)
    plans = read_json(path, "plans file")
    configuration = plans.get("configurations", {}).get(args.configuration)
    if configuration is None:
        raise SystemExit(f"{path} has no configuration '{args.configuration}'; "
                         f"available: {sorted(plans.get('configurations', {}))}")
    block = merge_settings(load_template(), configuration.get(PLANS_KEY, {}))
    for override in args.set:
        block = merge_settings(block, parse_override(override))
    configuration[PLANS_KEY] = block
    settings = resolve_diffusion_settings(plans, args.configuration)
    write_json_atomic(plans, path)

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    resolved = PlansManager(plans).get_configuration(args.configuration)
    n_channels = len(read_json(path.parent / "dataset.json", "dataset file")["channel_names"])
    cfg = unet_config(settings, tuple(resolved.patch_size), n_channels)
    print(f"Wrote '{PLANS_KEY}' into {path} (configuration '{args.configuration}').")
    print(f"Denoiser: patch {list(cfg['sample_size'])}, {n_channels} channel(s), widths "
          f"{list(cfg['block_out_channels'])}, blocks {list(cfg['down_block_types'])}, "
          f"noise {settings.noise.kind}, {settings.num_train_timesteps} timesteps ({settings.beta_schedule}).")
