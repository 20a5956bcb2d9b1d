"""`sadm_nnunet_reconstruct`: pseudo-healthy reconstructions and unsupervised anomaly maps for raw images.

    sadm_nnunet_reconstruct -i IMAGES -o OUT -d HEALTHY [-c 2d] [-f all] [-tr SADMDiffusionTrainer] [-p nnUNetPlans]

IMAGES holds raw images in nnU-Net naming (CASE_0000.nii.gz, CASE_0001.nii.gz, ...). They are preprocessed
exactly as nnU-Net does for the stage-I model's plans, reconstructed slice by slice with the exported diffusion
model (FOLD/diffusion_model, safetensors; a cDDPM model conditions on each slice), and written per case in the
input's geometry:
  CASE_reconstruction_XXXX.nii.gz  the reconstruction of channel XXXX, in the input's intensity units
  CASE_residual.nii.gz             |input - reconstruction| in nnU-Net z-score units (mean over channels)
  CASE_ssim.nii.gz                 1 - SSIM(input, reconstruction) (Gaussian window sigma 1, size 9)
This is the unsupervised (reconstruction-only) anomaly detection baseline.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from sadm_nnunet.anomaly_maps import ssim_map
from sadm_nnunet.diffusion.export import EXPORT_FOLDER_NAME, load_diffusion_model
from sadm_nnunet.diffusion.reconstruction import Reconstructor
from sadm_nnunet.errors import one_line_errors
from sadm_nnunet.io_utils import read_json
from sadm_nnunet.nnunet_cases import (back_to_input, find_cases, preprocess_case, results_folder,
                                      to_input_intensities, write_volumes)
from sadm_nnunet.output_checks import prepare_output_folder


def model_folder(dataset: str, trainer: str, plans: str, configuration: str) -> Path:
    return results_folder(dataset, trainer, plans, configuration, "trained stage-I model",
                          f"nnUNetv2_train {dataset} {configuration} all -tr {trainer}")


@one_line_errors("sadm_nnunet_reconstruct")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", required=True, type=Path, help="folder of raw images (nnU-Net naming)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    parser.add_argument("-d", "--dataset", required=True, help="stage-I (healthy) dataset name or id")
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument("-f", "--fold", default="all")
    parser.add_argument("-tr", "--trainer", default="SADMDiffusionTrainer")
    parser.add_argument("-p", "--plans", default="nnUNetPlans")
    parser.add_argument("--method", choices=["single_step", "iterative"], help="override the plans' method")
    parser.add_argument("--patch-grid", type=int, help="pDDPM grid size (1 = whole slice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    prepare_output_folder(args.output, {"-i": args.input})

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    base = model_folder(args.dataset, args.trainer, args.plans, args.configuration)
    fold_folder = base / (f"fold_{args.fold}")
    unet, settings = load_diffusion_model(fold_folder / EXPORT_FOLDER_NAME, args.device)
    plans_manager = PlansManager(read_json(base / "plans.json", "plans file"))
    configuration_manager = plans_manager.get_configuration(args.configuration)
    dataset_json = read_json(base / "dataset.json", "dataset file")
    options = settings.reconstruction
    if args.method:
        options = replace(options, method=args.method)
    if args.patch_grid:
        options = replace(options, patch_grid=args.patch_grid)
    reconstructor = Reconstructor(unet, settings, options)
    num_channels = len(dataset_json["channel_names"])
    cases = find_cases(args.input, dataset_json["file_ending"], num_channels)
    args.output.mkdir(parents=True, exist_ok=True)
    conditioned = ", conditioned on each slice (cDDPM)" if settings.conditioning.encoder else ""
    print(f"Reconstructing {len(cases)} case(s) with {base.name}/{fold_folder.name} ({options.method}{conditioned}, "
          f"noise levels {list(options.noise_levels)}, {reconstructor.passes_per_slice()} network passes per slice)")
    for case, files in tqdm(cases.items(), desc="reconstruct", unit="case"):
        pre = preprocess_case(files, plans_manager, configuration_manager, dataset_json)
        image = torch.from_numpy(pre.data).to(args.device)
        recon = reconstructor(image[None])[0]
        a = settings.to_model_space(image).permute(1, 0, 2, 3)
        b = settings.to_model_space(recon).permute(1, 0, 2, 3)
        dissimilarity = (1 - ssim_map(a, b, data_range=2.0)).permute(1, 0, 2, 3).mean(0, keepdim=True)
        residual = (image - recon).abs().mean(0, keepdim=True)
        maps = {
            "residual": back_to_input(residual.cpu().numpy(), pre, plans_manager, configuration_manager)[0],
            "ssim": back_to_input(dissimilarity.cpu().numpy(), pre, plans_manager, configuration_manager)[0],
        }
        recon_raw = to_input_intensities(back_to_input(recon.cpu().numpy(), pre, plans_manager,
                                                       configuration_manager), pre.raw, plans_manager,
                                         configuration_manager)
        for c in range(num_channels):
            maps[f"reconstruction_{c:04d}"] = recon_raw[c]
        write_volumes(args.output, case, maps, dataset_json["file_ending"], pre.properties)
    print(f"Wrote reconstructions and anomaly maps to {args.output}")
