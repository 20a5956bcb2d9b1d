"""`sadm_nnunet_demo`: the whole method on a cohort generated from the MNI152 template, with no data of yours.

    sadm_nnunet_demo [--output DIR] [--quick] [--device cpu|cuda]

1. A cohort from the MNI152 2009a template (the copy inside the nilearn package; nothing is downloaded): random
   smooth deformations, bias fields and gamma changes make healthy "subjects"; a small set of them gets tumour-like
   lesions with labels (the seen kind); held-out subjects get tumours, stroke-like lesions (a kind never labelled)
   or nothing (healthy test brains).
2. The real pipeline with short trainers: nnUNetv2_plan_and_preprocess; stage I (nnUNetv2_train HEALTHY 2d all -tr
   SADMDiffusionTrainer...); sadm_nnunet_plan; stage II with the tumour labels (-tr SADMTrainer...) and plain
   nnU-Net on the same labels (-tr nnUNetTrainer...); nnUNetv2_predict --save_probabilities; sadm_nnunet_score;
   evaluation with thresholds chosen on a tumour validation set.
3. A table comparing the unsupervised reconstruction baseline, nnU-Net (image only) and SADM on the seen and the
   unseen lesion kind (⌈Dice⌉, AUPRC, Dice at the validation threshold; false-positive rate on healthy brains),
   written to OUTPUT/results.md, contact sheets of SADM's score in OUTPUT/figures/<kind>/contact_sheet.png, and
   stage I's reconstructions of a healthy and a lesion test brain in OUTPUT/figures/reconstruction.png.

Each step prints the command it runs (the full output goes to OUTPUT/log.txt). Run the command again after an
interruption: finished steps are skipped and an interrupted training resumes from its checkpoint (nnU-Net's --c).
The default run takes about 20-25 minutes on 2 idle CPU cores (estimated; 4 mm voxels; stage I 4 epochs, each
segmentation model 1 epoch of 250 iterations); --quick about 5 minutes (6 mm voxels, tiny denoiser, one epoch per
model: a first look, and what CI runs). The numbers of a run this short
show the pipeline working, not the method's accuracy: see benchmarks/RESULTS.md for that.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

MNI152_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"

# Everything the two modes differ in. The template has 1 mm voxels; it is first resampled to `source_mm`
# (deformations are drawn there), then subjects are written with `spacing` mm voxels.
MODES = {
    "default": {
        "cohort": {"name": "Demo", "healthy_id": 981, "labelled_id": 982, "num_healthy": 16, "num_labelled": 8,
                   "num_validation": 3, "num_test": 5, "num_healthy_test": 2, "spacing": 4.0, "deformation": 1.0},
        "source_mm": 3.0,
        # stage I: 4 epochs of 250 iterations with a short EMA (decay at most 0.95, about the last 20 iterations)
        # and the background at the scheduler's floor (-1): with the background at the brain's mean (the template's
        # 'brain_mean') 2 epochs left a flat grey reconstruction (validation SSIM 0.14), the raw weights beat the
        # EMA at every epoch of such short runs, and 'floor' learnt in 250 iterations what 'brain_mean' had not in
        # 1,000 (benchmarks/RESULTS.md, "Demo stage I")
        "stage1_trainer": "SADMDiffusionTrainer_4epochs",
        "sadm_trainer": "SADMTrainer_1epoch",
        "plain_trainer": "nnUNetTrainer_1epoch",
        "denoiser_overrides": ("unet.base_channels=16", "unet.max_channels=64", "unet.norm_num_groups=8",
                               "unet.layers_per_block=1", "training.learning_rate=0.0005",
                               "training.ema_decay=0.95", "background=floor"),
    },
    "quick": {
        "cohort": {"name": "DemoQuick", "healthy_id": 983, "labelled_id": 984, "num_healthy": 8,
                   "num_labelled": 6, "num_validation": 2, "num_test": 3, "num_healthy_test": 1, "spacing": 6.0,
                   "deformation": 1.0},
        "source_mm": 3.0,
        "stage1_trainer": "SADMDiffusionTrainer_1epoch",
        "sadm_trainer": "SADMTrainer_1epoch",
        "plain_trainer": "nnUNetTrainer_1epoch",
        "denoiser_overrides": ("unet.base_channels=8", "unet.max_channels=16", "unet.norm_num_groups=4",
                               "unet.layers_per_block=1", "training.learning_rate=0.001", "background=floor"),
    },
}


def mni152_file() -> Path:
    """The MNI152 T1 template inside the installed nilearn package (found without importing nilearn)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("sadm_nnunet_demo needs the nilearn package (it ships the MNI152 template): "
                         "pip install nilearn")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / MNI152_FILE
    if not path.is_file():
        raise SystemExit(f"{path} is missing: this nilearn installation does not ship the MNI152 template")
    return path


def mni152_brain(source_mm: float):
    """(name, image, brain mask) of the skull-stripped template resampled to `source_mm` mm voxels."""
    from sadm_nnunet.experiment.cohort import resample_brain
    from sadm_nnunet.nifti_checks import load_checked

    image = np.asarray(load_checked(mni152_file())[1], dtype=np.float32)
    return resample_brain(("mni152_2009a", image, image > 0), 1.0 / source_mm)


def experiment_spec(mode: str, device: str):
    from sadm_nnunet.experiment.cohort import CohortSpec
    from sadm_nnunet.experiment.pipeline import ExperimentSpec

    m = MODES[mode]
    cohort = CohortSpec(seen_kind="tumour", unseen_kinds=("stroke",), zoom=m["source_mm"] / m["cohort"]["spacing"],
                        source_zoom=1.0 / m["source_mm"], **m["cohort"])
    return ExperimentSpec(cohort=cohort, stage1_trainer=m["stage1_trainer"], sadm_trainer=m["sadm_trainer"],
                          plain_trainer=m["plain_trainer"], denoiser_overrides=m["denoiser_overrides"],
                          fold="all", device=device, extra={"source": f"nilearn:{MNI152_FILE}", "mode": mode})


def check_output_folder(output: Path, spec) -> None:
    """A work folder holds one demo: refuse to mix runs of different settings in it."""
    from dataclasses import MISSING, fields

    from sadm_nnunet.experiment.cohort import recorded_spec
    from sadm_nnunet.experiment.pipeline import ExperimentSpec
    from sadm_nnunet.io_utils import write_json_atomic

    recorded_file = output / "demo_settings.json"
    settings = json.loads(json.dumps(spec.__dict__, default=lambda v: v.__dict__))
    if recorded_file.is_file():
        recorded = json.loads(recorded_file.read_text())
        recorded["cohort"] = recorded_spec(recorded.get("cohort", {}))
        # fields added to the experiment since the folder was written held their defaults
        recorded = {**{f.name: f.default for f in fields(ExperimentSpec) if f.default is not MISSING}, **recorded}
        if recorded != settings:
            differ = sorted(k for k in set(recorded) | set(settings) if recorded.get(k) != settings.get(k))
            raise SystemExit(f"{output} holds a demo run with other settings ({recorded_file}: mode "
                             f"{recorded.get('extra', {}).get('mode')!r}, device {recorded.get('device')!r}); "
                             f"found {settings['extra']['mode']!r} on {settings['device']!r}, and these differ: "
                             f"{', '.join(differ)}. Use another --output or delete the folder.")
    else:
        write_json_atomic(settings, recorded_file)


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(prog="sadm_nnunet_demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=None,
                        help="work folder (default: ./sadm_nnunet_demo, or ./sadm_nnunet_demo_quick with --quick)")
    parser.add_argument("--quick", action="store_true", help="a 5-minute run at 6 mm with a tiny denoiser")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("sadm_nnunet_demo: --device cuda, but this PyTorch sees no CUDA device; use --device cpu")
    mode = "quick" if args.quick else "default"
    output = (args.output or Path(f"sadm_nnunet_demo{'_quick' if args.quick else ''}")).resolve()
    if output.exists() and not output.is_dir():
        raise SystemExit(f"sadm_nnunet_demo: error: --output {output} is a file; expected a folder (new or from an "
                         f"earlier demo run)")
    output.mkdir(parents=True, exist_ok=True)
    spec = experiment_spec(mode, args.device)
    check_output_folder(output, spec)

    from sadm_nnunet.experiment.pipeline import RECONSTRUCTION_FIGURE, run_experiment
    from sadm_nnunet.experiment.steps import StepFailed

    print(f"sadm_nnunet_demo ({mode}) in {output}")
    start = time.perf_counter()

    def brains():
        brain = mni152_brain(MODES[mode]["source_mm"])
        return [brain], [brain]

    try:
        result = run_experiment(spec, output, brains)
    except StepFailed as e:
        print(f"sadm_nnunet_demo: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    minutes = (time.perf_counter() - start) / 60
    print(f"\nResults ({spec.cohort.num_test} test subjects per lesion kind; means over subjects; the threshold "
          f"of Dice@thr and FPR maximises Dice on {spec.cohort.num_validation} tumour validation subjects):\n")
    print(result["table"])
    print(f"\nTable: {output / 'results.md'}; all numbers: {output / 'results.json'}")
    for kind, sheet in (result["figures"] or {}).items():
        print(f"Stage I's reconstructions: {sheet}" if kind == RECONSTRUCTION_FIGURE else
              f"Contact sheet ({kind}): {sheet}")
    print(f"Done in {minutes:.1f} min (this invocation).")
