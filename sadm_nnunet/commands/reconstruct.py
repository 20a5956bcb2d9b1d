"""`sadm_nnunet_reconstruct`: pseudo-healthy reconstructions and unsupervised anomaly maps for raw images.

    sadm_nnunet_reconstruct -i IMAGES -o OUT -d HEALTHY [-c 2d] [-f all] [-tr SADMDiffusionTrainer] [-p nnUNetPlans]

IMAGES holds raw images in nnU-Net naming (CASE_0000.nii.gz, CASE_0001.nii.gz, ...). They are preprocessed
exactly as nnU-Net does for the stage-I model's plans, reconstructed slice by slice with the exported diffusion
model (FOLD/diffusion_model, safetensors), and written per case in the input's geometry:
  CASE_reconstruction_XXXX.nii.gz  the reconstruction of channel XXXX, in the input's intensity units
  CASE_residual.nii.gz             |input - reconstruction| in nnU-Net z-score units (mean over channels)
  CASE_ssim.nii.gz                 1 - SSIM(input, reconstruction) (Gaussian window sigma 1, size 9)
This is the unsupervised (reconstruction-only) anomaly detection baseline.
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sadm_nnunet.anomaly_maps import ssim_map
from sadm_nnunet.diffusion.export import EXPORT_FOLDER_NAME, load_diffusion_model
from sadm_nnunet.diffusion.reconstruction import Reconstructor
from sadm_nnunet.io_utils import atomic_path
from sadm_nnunet.nnunet_geometry import to_input_geometry, write_float_image


def find_cases(folder: Path, file_ending: str, num_channels: int) -> dict[str, list[Path]]:
    """Groups CASE_XXXX<file_ending> files by case and checks that every case has channels 0..num_channels-1."""
    if not folder.is_dir():
        raise SystemExit(f"Input folder {folder} does not exist")
    pattern = re.compile(r"^(.+)_(\d{4})" + re.escape(file_ending) + "$")
    cases: dict[str, dict[int, Path]] = {}
    others = []
    for f in sorted(folder.iterdir()):
        m = pattern.match(f.name)
        if m:
            cases.setdefault(m.group(1), {})[int(m.group(2))] = f
        elif f.is_file():
            others.append(f.name)
    if not cases:
        hint = f" Found other files, e.g. {others[:3]}." if others else " The folder is empty."
        raise SystemExit(f"No images named CASE_XXXX{file_ending} in {folder}; the model expects the file ending "
                         f"'{file_ending}' and {num_channels} channel(s).{hint}")
    result = {}
    for case, channels in cases.items():
        if sorted(channels) != list(range(num_channels)):
            raise SystemExit(f"Case '{case}' in {folder} has channel(s) {sorted(channels)}; the model was trained "
                             f"on {num_channels} channel(s), expected files {case}_0000..{case}_{num_channels - 1:04d}"
                             f"{file_ending}")
        result[case] = [channels[i] for i in range(num_channels)]
    return result


def model_folder(dataset: str, trainer: str, plans: str, configuration: str) -> Path:
    from nnunetv2.paths import nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if not nnUNet_results.is_set():
        raise SystemExit("nnUNet_results is not set; set the nnU-Net path variables first")
    folder = Path(nnUNet_results.get()) / maybe_convert_to_dataset_name(dataset) / f"{trainer}__{plans}__{configuration}"
    if not folder.is_dir():
        raise SystemExit(f"No trained stage-I model at {folder}; train it with "
                         f"nnUNetv2_train {dataset} {configuration} all -tr {trainer}")
    return folder


def input_intensity_stats(image: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation over the nonzero voxels (the region nnU-Net's z-score uses after cropping)."""
    values = image[image != 0]
    if values.size == 0:
        return 0.0, 1.0
    return float(values.mean()), float(max(values.std(), 1e-8))


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

    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    base = model_folder(args.dataset, args.trainer, args.plans, args.configuration)
    fold_folder = base / (f"fold_{args.fold}")
    unet, settings = load_diffusion_model(fold_folder / EXPORT_FOLDER_NAME, args.device)
    plans_manager = PlansManager(json.loads((base / "plans.json").read_text()))
    configuration_manager = plans_manager.get_configuration(args.configuration)
    dataset_json = json.loads((base / "dataset.json").read_text())
    options = settings.reconstruction
    if args.method:
        options = replace(options, method=args.method)
    if args.patch_grid:
        options = replace(options, patch_grid=args.patch_grid)
    reconstructor = Reconstructor(unet, settings, options)
    num_channels = len(dataset_json["channel_names"])
    cases = find_cases(args.input, dataset_json["file_ending"], num_channels)
    args.output.mkdir(parents=True, exist_ok=True)
    preprocessor = DefaultPreprocessor(verbose=False)
    print(f"Reconstructing {len(cases)} case(s) with {base.name}/{fold_folder.name} ({options.method}, noise levels "
          f"{list(options.noise_levels)}, {reconstructor.passes_per_slice()} network passes per slice)")
    for case, files in tqdm(cases.items(), desc="reconstruct", unit="case"):
        data, _, properties = preprocessor.run_case([str(f) for f in files], None, plans_manager,
                                                    configuration_manager, dataset_json)
        image = torch.from_numpy(np.asarray(data, dtype=np.float32)).to(args.device)
        recon = reconstructor(image[None])[0]
        a = settings.to_model_space(image).permute(1, 0, 2, 3)
        b = settings.to_model_space(recon).permute(1, 0, 2, 3)
        dissimilarity = (1 - ssim_map(a, b, data_range=2.0)).permute(1, 0, 2, 3).mean(0, keepdim=True)
        residual = (image - recon).abs().mean(0, keepdim=True)
        maps = {
            "residual": to_input_geometry(residual.cpu().numpy(), properties, plans_manager, configuration_manager),
            "ssim": to_input_geometry(dissimilarity.cpu().numpy(), properties, plans_manager, configuration_manager),
        }
        recon_raw = to_input_geometry(recon.cpu().numpy(), properties, plans_manager, configuration_manager)
        rw = plans_manager.image_reader_writer_class()
        raw, _ = rw.read_images([str(f) for f in files])
        for c in range(num_channels):
            mean, std = input_intensity_stats(raw[c])
            maps[f"reconstruction_{c:04d}"] = np.where(raw[c] != 0, recon_raw[c] * std + mean, 0)[None]
        for name, volume in maps.items():
            target = args.output / f"{case}_{name}{dataset_json['file_ending']}"
            with atomic_path(target) as tmp:
                write_float_image(volume[0], str(tmp), properties)
    print(f"Wrote reconstructions and anomaly maps to {args.output}")
