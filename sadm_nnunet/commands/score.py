"""`sadm_nnunet_score`: the anomaly maps of a trained SADM (stage-II) model, after nnU-Net's own prediction.

    nnUNetv2_predict -i IMAGES -o PREDICTIONS -d DATASET -c 2d_sadm -tr SADMTrainer -f FOLD --save_probabilities
    sadm_nnunet_score -i IMAGES -pred PREDICTIONS -o OUT -d DATASET [-c 2d_sadm] [-tr SADMTrainer] [-f FOLD ...]
                      [-p nnUNetPlans] [-chk checkpoint_final.pth] [--beta B] [--device cpu|cuda]

IMAGES holds the raw images in nnU-Net naming (CASE_0000.nii.gz, ...), PREDICTIONS what nnUNetv2_predict wrote for
them with --save_probabilities (CASE.npz). The model (nnUNet_results/DATASET/TRAINER__PLANS__CONFIGURATION) is
loaded the way nnUNetv2_predict loads it; its checkpoint carries the frozen stage-I denoiser, so the stage-I
results are not needed. Each case goes the same way as in sadm_nnunet_reconstruct (sadm_nnunet/scoring.py):
preprocessed exactly as nnU-Net does, reconstructed with the network's own deterministic reconstruction (the
ensemble over the plans' noise levels) on whole slices -- nnUNetv2_predict reconstructs per sliding-window tile,
so the two reconstructions differ slightly near tile edges -- and scored in the input's voxel grid, where
nnU-Net's probabilities live:

  CASE_reconstruction_XXXX<ending>  the reconstruction of channel XXXX, in the input's intensity units
  CASE_unsupervised<ending>         1 - SSIM(input, reconstruction) (Gaussian window sigma 1, size 9, 2D per
                                    slice, clipped to [0, 1]), 3D median filter of size 5, 0 outside the brain:
                                    the unsupervised map
  CASE_score<ending>                AS = beta * unsupervised + (1 - beta) * p_fg inside the brain, 0 outside:
                                    the fused SADM score (paper: beta = 0.5)

p_fg is the foreground probability nnU-Net saved: 1 - p(background) (for region-based models the largest region
probability). The brain is nnU-Net's nonzero region of the input (nonzero in any channel, holes filled). beta,
the median filter size, the mask erosion and small-component removal come from the plans (configuration's
`sadm.scoring`, template plans/sadm.json); --beta overrides beta for this run. With --beta 1 the score is the
unsupervised baseline and -pred may be left out. A CASE.npz that predicts foreground outside its image's nonzero
bounding box belongs to another image and is refused; a prediction of another case with the same geometry and a
brain inside this one's box cannot be detected (registered data): keep predictions beside their images.

Then: sadm_nnunet_evaluate -ref LABELS -pred OUT --pred-suffix _score -o sadm.json   (fused score)
      sadm_nnunet_evaluate -ref LABELS -pred OUT --pred-suffix _unsupervised -o unsupervised.json   (baseline)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sadm_nnunet.errors import InputError, one_line_errors
from sadm_nnunet.io_utils import write_json_atomic
from sadm_nnunet.nnunet_cases import find_cases, load_foreground_probability, results_folder
from sadm_nnunet.nnunet_plans import resolve_sadm_settings
from sadm_nnunet.scoring import CaseScorer

SETTINGS_FILE = "score_settings.json"
MAPS = ("unsupervised", "score")


def _beta(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"beta must be a number in [0, 1]; found {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"beta must be a number in [0, 1]; found {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sadm_nnunet_score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-i", "--input", required=True, type=Path, help="folder of raw images (nnU-Net naming)")
    parser.add_argument("-pred", "--predictions", type=Path,
                        help="folder of nnUNetv2_predict --save_probabilities outputs (CASE.npz); optional with "
                             "--beta 1")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    parser.add_argument("-d", "--dataset", required=True, help="dataset name or id of the SADM model")
    parser.add_argument("-c", "--configuration", default="2d_sadm", help="default: 2d_sadm")
    parser.add_argument("-tr", "--trainer", default="SADMTrainer", help="default: SADMTrainer")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier, default: nnUNetPlans")
    parser.add_argument("-f", "--folds", nargs="+", default=None,
                        help="fold(s) the predictions came from; the reconstruction uses the first one's network "
                             "(the frozen denoiser is the same in every fold). Default: every trained fold")
    parser.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth",
                        help="checkpoint file name, default: checkpoint_final.pth")
    parser.add_argument("--beta", type=_beta, default=None,
                        help="weight of the unsupervised map in the fused score (default: the plans' "
                             "sadm.scoring.beta, 0.5 unless changed)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"{path} is missing; nnUNetv2_train writes it into the model folder")
    return json.loads(path.read_text())


def choose_folds(folder: Path, folds: list[str] | None, checkpoint: str) -> list[str]:
    if folds is None:
        found = sorted((p.name[len("fold_"):] for p in folder.glob("fold_*") if (p / checkpoint).is_file()),
                       key=lambda f: (f == "all", int(f) if f.isdigit() else 0))
        numbered = [f for f in found if f != "all"]
        folds = numbered or found
        if not folds:
            raise InputError(f"no fold_*/{checkpoint} in {folder}; train a fold first or name one with -f")
    for fold in folds:
        path = folder / f"fold_{fold}" / checkpoint
        if not path.is_file():
            raise InputError(f"checkpoint {path} does not exist (fold '{fold}'); trained folds here: "
                             f"{sorted(p.name for p in folder.glob('fold_*'))}")
    return list(folds)


def load_network(folder: Path, folds: list[str], checkpoint: str, device: torch.device):
    """nnU-Net's predictor initialised from the model folder (as nnUNetv2_predict does) and its SADMNetwork."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from sadm_nnunet.segmentation.network import SADMNetwork

    predictor = nnUNetPredictor(device=device, perform_everything_on_device=device.type == "cuda",
                                verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), folds, checkpoint)
    network = getattr(predictor.network, "_orig_mod", predictor.network)  # nnUNet_compile wraps it
    if not isinstance(network, SADMNetwork):
        raise InputError(f"the model in {folder} (trainer '{predictor.trainer_name}' in {checkpoint}) builds a "
                         f"{type(network).__name__}, not an SADMNetwork: it is not an SADM model. Train with "
                         f"-tr SADMTrainer (or a variant) to get reconstructions.")
    first = {k: v for k, v in predictor.list_of_parameters[0].items() if k.startswith("denoiser.")}
    for fold, params in zip(folds[1:], predictor.list_of_parameters[1:]):
        if any(not torch.equal(v, params[k]) for k, v in first.items()):
            print(f"Warning: the denoiser of fold {fold} differs from fold {folds[0]}'s; reconstructions use fold "
                  f"{folds[0]}'s", file=sys.stderr)
    return predictor, network.to(device).eval()


@one_line_errors("sadm_nnunet_score")
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    folder = results_folder(args.dataset, args.trainer, args.plans, args.configuration, "trained SADM model",
                            f"nnUNetv2_train {args.dataset} {args.configuration} FOLD -tr {args.trainer}")
    plans = read_json(folder / "plans.json")
    dataset_json = read_json(folder / "dataset.json")
    settings = resolve_sadm_settings(plans, args.configuration, str(folder / "plans.json"))
    plans_manager = PlansManager(plans)
    scoring = settings.scoring.with_beta(args.beta)
    beta = scoring.beta

    ending = dataset_json["file_ending"]
    num_channels = len(dataset_json["channel_names"])
    cases = find_cases(args.input, ending, num_channels)
    if args.predictions is None:
        if beta != 1.0:
            raise InputError(f"-pred PREDICTIONS is required: beta is {beta}, so the score weights the "
                             f"segmentation's probabilities (run nnUNetv2_predict ... --save_probabilities first), or use --beta 1 for "
                             f"the unsupervised map alone")
    else:
        if not args.predictions.is_dir():
            raise InputError(f"predictions folder {args.predictions} does not exist")
        missing = [c for c in cases if not (args.predictions / f"{c}.npz").is_file()]
        if missing:
            shown = ", ".join(f"{c}.npz" for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise InputError(f"{len(missing)} case(s) of {args.input} have no probabilities in {args.predictions}: "
                             f"{shown} missing (case '{missing[0]}'). Run nnUNetv2_predict -i {args.input} -o "
                             f"{args.predictions} -d {args.dataset} -c {args.configuration} -tr {args.trainer} "
                             f"--save_probabilities")

    folds = choose_folds(folder, args.folds, args.checkpoint)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda, but this PyTorch sees no CUDA device; use --device cpu")
    device = torch.device(args.device)
    predictor, network = load_network(folder, folds, args.checkpoint, device)
    scorer = CaseScorer(network.reconstruct, settings.diffusion, scoring, plans_manager,
                        plans_manager.get_configuration(args.configuration), dataset_json, device)
    args.output.mkdir(parents=True, exist_ok=True)
    reconstruction = settings.diffusion.reconstruction
    print(f"Scoring {len(cases)} case(s) with {folder.name}/fold_{folds[0]} ({args.checkpoint}): beta {beta}, "
          f"median filter {scoring.median_size}, reconstruction {reconstruction.method} at noise levels "
          f"{list(reconstruction.noise_levels)}")

    def p_fg(case: str, pre) -> np.ndarray:
        return load_foreground_probability(args.predictions / f"{case}.npz", predictor.label_manager,
                                           pre.raw.shape[1:], pre.raw)

    for case, files in tqdm(cases.items(), desc="score", unit="case"):
        scorer.write(case, files, args.output, MAPS, None if args.predictions is None else p_fg)
    write_json_atomic({
        "model": str(folder), "folds": folds, "checkpoint": args.checkpoint,
        "predictions": None if args.predictions is None else str(args.predictions),
        **scorer.settings_record(), "cases": sorted(cases),
    }, args.output / SETTINGS_FILE)
    print(f"Wrote CASE_reconstruction_XXXX, CASE_unsupervised and CASE_score{ending} for {len(cases)} case(s) to "
          f"{args.output}")
    print(f"Evaluate with: sadm_nnunet_evaluate -ref LABELS -pred {args.output} --pred-suffix _score -o OUT.json "
          f"(--pred-suffix _unsupervised for the unsupervised baseline)")


if __name__ == "__main__":
    main()
