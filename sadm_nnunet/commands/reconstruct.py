"""`sadm_nnunet_reconstruct`: pseudo-healthy reconstructions and unsupervised anomaly maps for raw images, from a
stage-I model alone (no stage-II model needed).

    sadm_nnunet_reconstruct -i IMAGES -o OUT -d HEALTHY [-c 2d] [-f all] [-tr SADMDiffusionTrainer] [-p nnUNetPlans]
                            [--epoch N] [--method single_step|iterative] [--patch-grid N] [--device cpu|cuda]

IMAGES holds raw images in nnU-Net naming (CASE_0000.nii.gz, CASE_0001.nii.gz, ...). Each case goes the same way as
in sadm_nnunet_score (sadm_nnunet/scoring.py): preprocessed exactly as nnU-Net does for the stage-I model's plans,
reconstructed whole slice by whole slice with the exported diffusion model (FOLD/diffusion_model, safetensors; a
cDDPM model conditions on each slice; `--epoch N`: the one exported after N epochs, FOLD/diffusion_model_epoch_N,
which a trainer with `export_epochs` writes during training), and written in the input's geometry:
  CASE_reconstruction_XXXX<ending>  the reconstruction of channel XXXX, in the input's intensity units
  CASE_residual<ending>             |input - reconstruction| in the denoiser's units (z-scores / intensity_scale),
                                    mean over channels, 0 outside the brain
  CASE_unsupervised<ending>         the unsupervised anomaly map, defined as in sadm_nnunet_score: 1 - SSIM
                                    (Gaussian window sigma 1, size 9, 2D per slice), 3D median filter, restricted to
                                    the brain, with the scoring settings of the template plans/sadm.json
With the same denoiser, CASE_unsupervised equals sadm_nnunet_score --beta 1's (which reads its scoring settings
from the SADM model's plans: the same unless changed there). OUT/reconstruct_settings.json records the model, the
settings and, per case and on average, how close the reconstruction is to the input inside the brain: L1 (the
denoiser's units, as CASE_residual) and SSIM (1 - the unfiltered map; on healthy brains, the reconstruction error
that stage I's validation also reports).
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

import numpy as np

from sadm_nnunet.anomaly_maps import reconstruction_quality
from sadm_nnunet.diffusion.export import export_folder, load_diffusion_model
from sadm_nnunet.diffusion.reconstruction import Reconstructor
from sadm_nnunet.errors import one_line_errors
from sadm_nnunet.io_utils import read_json, write_json_atomic
from sadm_nnunet.nnunet_cases import find_cases, results_folder
from sadm_nnunet.output_checks import prepare_output_folder
from sadm_nnunet.scoring import CaseScorer
from sadm_nnunet.segmentation.settings import ScoringSettings

SETTINGS_FILE = "reconstruct_settings.json"
MAPS = ("residual", "unsupervised")


def model_folder(dataset: str, trainer: str, plans: str, configuration: str) -> Path:
    return results_folder(dataset, trainer, plans, configuration, "trained stage-I model",
                          f"nnUNetv2_train {dataset} {configuration} all -tr {trainer}")


@one_line_errors("sadm_nnunet_reconstruct")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sadm_nnunet_reconstruct", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", required=True, type=Path, help="folder of raw images (nnU-Net naming)")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    parser.add_argument("-d", "--dataset", required=True, help="stage-I (healthy) dataset name or id")
    parser.add_argument("-c", "--configuration", default="2d")
    parser.add_argument("-f", "--fold", default="all")
    parser.add_argument("-tr", "--trainer", default="SADMDiffusionTrainer")
    parser.add_argument("-p", "--plans", default="nnUNetPlans")
    parser.add_argument("--epoch", type=int, help="the model exported after N epochs (FOLD/diffusion_model_epoch_N; "
                                                  "default: the model at the end of training)")
    parser.add_argument("--method", choices=["single_step", "iterative"], help="override the plans' method")
    parser.add_argument("--patch-grid", type=int, help="pDDPM grid size (1 = whole slice)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    prepare_output_folder(args.output, {"-i": args.input})

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    base = model_folder(args.dataset, args.trainer, args.plans, args.configuration)
    fold_folder = base / f"fold_{args.fold}"
    model = export_folder(fold_folder, args.epoch)  # an unknown --epoch: the error lists the exports
    unet, settings = load_diffusion_model(model, args.device)
    options = settings.reconstruction
    if args.method:
        options = replace(options, method=args.method)
    if args.patch_grid:
        options = replace(options, patch_grid=args.patch_grid)
    settings = replace(settings, reconstruction=options)
    plans_manager = PlansManager(read_json(base / "plans.json", "plans file"))
    dataset_json = read_json(base / "dataset.json", "dataset file")
    reconstructor = Reconstructor(unet, settings, options)
    scorer = CaseScorer(reconstructor, settings, ScoringSettings.template().with_beta(1.0), plans_manager,
                        plans_manager.get_configuration(args.configuration), dataset_json, torch.device(args.device))
    cases = find_cases(args.input, dataset_json["file_ending"], len(dataset_json["channel_names"]))
    args.output.mkdir(parents=True, exist_ok=True)
    conditioned = ", conditioned on each slice (cDDPM)" if settings.conditioning.encoder else ""
    print(f"Reconstructing {len(cases)} case(s) with {base.name}/{fold_folder.name}/{model.name} "
          f"({options.method}{conditioned}, noise levels {list(options.noise_levels)}, "
          f"{reconstructor.passes_per_slice()} network passes per slice)")
    quality = {}
    for case, files in tqdm(cases.items(), desc="reconstruct", unit="case"):
        quality[case] = reconstruction_quality(scorer.write(case, files, args.output, MAPS))
    mean = {k: float(np.nanmean([q[k] for q in quality.values()])) for k in ("l1", "ssim")}
    write_json_atomic({"model": str(model), "epoch": args.epoch, **scorer.settings_record(), "cases": sorted(cases),
                       "reconstruction_quality": {"mean": mean, "per_case": quality}},
                      args.output / SETTINGS_FILE)
    print(f"Wrote CASE_reconstruction_XXXX, CASE_residual and CASE_unsupervised{dataset_json['file_ending']} for "
          f"{len(cases)} case(s) to {args.output}; reconstruction inside the brain, mean over cases: "
          f"L1 {mean['l1']:.4f}, SSIM {mean['ssim']:.4f}")
