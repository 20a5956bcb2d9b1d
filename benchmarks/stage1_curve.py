"""Stage-I learning curve: how stage I's length moves the reconstruction of held-out healthy brains and what the
unsupervised map finds of each lesion kind (CPU, real anatomy).

    python benchmarks/stage1_curve.py [--quick] [--seed 0] [--workdir DIR] [--trainer Stage1CurveTrainer]
                                      [--evaluate-only] [--spacing MM] [--output curve.json]

It runs inside a quality benchmark's base run (`python benchmarks/quality_benchmark.py [--quick] --seeds SEED
--workdir DIR` first) and uses its cohort, the stage-I settings in its healthy dataset's plans and its evaluation
sets. One long stage-I training, `nnUNetv2_train HEALTHY 2d all -tr Stage1CurveTrainer`
(benchmarks/trainers/stage1_curve_trainers.py: 32 epochs of 250 iterations, the EMA denoiser exported after 2, 4,
8, 16 and 32 epochs), runs in the same results folder beside the base run's stage I; every length of the curve is a
milestone of that one run. An interrupted training continues with nnU-Net's `--c` when the script runs again;
`--evaluate-only` skips the training and evaluates the milestones written so far, so a training split over several
sessions gives the curve piece by piece (each milestone is evaluated once; the results are kept in the work folder).

Per milestone (`sadm_nnunet_reconstruct --epoch N` on every evaluation case), and for the base run's own stage I as
a reference (same settings and length as the curve's first milestone, another training run: the noise between two
trainings of one length):
- held-out healthy brains (the test brains, never trained on): reconstruction L1 (the denoiser's units) and SSIM
  inside the brain, as `sadm_nnunet_reconstruct` records them;
- each lesion kind: the unsupervised map's ⌈Dice⌉, AUPRC and Dice at the threshold chosen on the tumour validation
  set, evaluated exactly as the quality benchmark's "Unsupervised reconstruction" row; healthy brains: the fraction
  of voxels above that threshold;
- cost: training seconds up to the milestone (nnU-Net's epoch timestamps, validation included) and s/iteration.
`--quick` (CI) runs on the quality benchmark's quick base run with Stage1CurveQuickTrainer (2 epochs of 10
iterations, exported after each): it proves the script runs, nothing more.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRAINERS_FOLDER, machine_info, now, versions, write_report  # noqa: E402

TRAINERS = {"full": "Stage1CurveTrainer", "quick": "Stage1CurveQuickTrainer"}
METRICS = ("best_dice", "auprc", "dice_at_threshold")
REFERENCE = "base"  # key of the base run's own stage I among the evaluated models


def training_seconds(fold: Path) -> list[float]:
    """Seconds of each finished epoch (training and its validation), from the latest checkpoint's logging."""
    import torch

    for name in ("checkpoint_final.pth", "checkpoint_latest.pth"):
        if (fold / name).is_file():
            logging = torch.load(fold / name, map_location="cpu", weights_only=False)["logging"]
            return [e - s for s, e in zip(logging["epoch_start_timestamps"], logging["epoch_end_timestamps"])]
    return []


def iterations_per_epoch(fold: Path) -> int:
    """The training's iterations per epoch, from the debug.json nnU-Net writes with every trainer attribute."""
    debug = fold / "debug.json"
    if not debug.is_file():
        raise SystemExit(f"{debug} is missing: the curve's training has not started (run without --evaluate-only)")
    return int(json.loads(debug.read_text())["num_iterations_per_epoch"])


def healthy_quality(reconstructions: Path, cases: list[str]) -> dict:
    """Mean L1 and SSIM over `cases`, from sadm_nnunet_reconstruct's record."""
    per_case = json.loads((reconstructions / "reconstruct_settings.json").read_text())[
        "reconstruction_quality"]["per_case"]
    return {k: sum(per_case[c][k] for c in cases) / len(cases) for k in ("l1", "ssim")}


def evaluate_model(cohort, folder: Path) -> dict:
    """The unsupervised map in `folder` evaluated as the quality benchmark's unsupervised row, plus the healthy test
    brains' reconstruction L1/SSIM."""
    from sadm_nnunet.experiment.cohort import HEALTHY
    from sadm_nnunet.experiment.pipeline import Method, evaluate_method

    method = Method("unsupervised", "Unsupervised reconstruction (1 - SSIM)", folder.name, "_unsupervised")
    reports = evaluate_method(cohort, method, folder.parent)
    kinds = {s: {k: reports[s]["mean"][k] for k in METRICS} for s in cohort.spec.test_sets if s != HEALTHY}
    return {"healthy": {**healthy_quality(folder, cohort.sets[HEALTHY]),
                        "fpr_healthy": reports[HEALTHY]["mean"]["fpr_healthy"]},
            "kinds": kinds, "means": {s: r["mean"] for s, r in reports.items()}}


def markdown(rows: list[dict], kinds: list[str]) -> str:
    header = ["stage I", "iterations", "training min", "healthy L1", "healthy SSIM"]
    header += [f"{k}: {m}" for k in kinds for m in ("⌈Dice⌉", "AUPRC")] + ["healthy: FPR@thr"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        minutes = "n/a" if r["training_seconds"] is None else f"{r['training_seconds'] / 60:.1f}"
        cells = [r["label"], str(r["iterations"]), minutes, f"{r['healthy']['l1']:.4f}", f"{r['healthy']['ssim']:.3f}"]
        cells += [f"{r['kinds'][k][m]:.3f}" for k in kinds for m in ("best_dice", "auprc")]
        cells.append(f"{r['healthy']['fpr_healthy']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="the quality benchmark's seed whose cohort to use")
    parser.add_argument("--workdir", type=Path, default=Path("quality_benchmark_work"),
                        help="the quality benchmark's --workdir")
    parser.add_argument("--trainer", help="stage-I trainer with export_epochs (default: Stage1CurveTrainer; quick: "
                                          "Stage1CurveQuickTrainer)")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="no training: evaluate the milestones the training has written so far")
    parser.add_argument("--spacing", type=float, help="the quality benchmark's --spacing (its run at that voxel size)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--output", type=Path, help="JSON with every number")
    args = parser.parse_args(argv)

    import os

    from quality_benchmark import experiment, run_folder

    from sadm_nnunet.diffusion.export import exported_epochs
    from sadm_nnunet.experiment.cohort import load_cohort
    from sadm_nnunet.experiment.pipeline import STAGE1_CONFIGURATION
    from sadm_nnunet.experiment.steps import Steps, clean_env

    mode = "quick" if args.quick else "full"
    trainer = args.trainer or TRAINERS[mode]
    spec = experiment(mode, args.seed, spacing=args.spacing)
    base = run_folder(args.workdir, mode, args.seed, args.spacing).resolve()
    if not (base / "steps" / "evaluate.json").is_file():
        raise SystemExit(f"{base} holds no finished quality benchmark run; run `python benchmarks/quality_benchmark.py"
                         f"{' --quick' if args.quick else ''} --seeds {args.seed} --workdir {args.workdir}"
                         f"{f' --spacing {args.spacing:g}' if args.spacing else ''}` first")
    raw, preprocessed, results = base / "nnUNet_raw", base / "nnUNet_preprocessed", base / "nnUNet_results"
    cohort = load_cohort(spec.cohort, raw, base / "evaluation")
    c = spec.cohort
    os.environ["nnUNet_extTrainer"] = os.pathsep.join(
        p for p in (os.environ.get("nnUNet_extTrainer"), str(TRAINERS_FOLDER)) if p)
    workdir = base / "stage1_curve" / trainer
    reconstructions = workdir / "reconstructions"

    def fold_of(name: str) -> Path:
        return results / c.healthy_dataset / f"{name}__nnUNetPlans__{STAGE1_CONFIGURATION}" / "fold_all"

    fold = fold_of(trainer)
    start, date = time.perf_counter(), now()
    sys.path.insert(0, str(TRAINERS_FOLDER))
    import stage1_curve_trainers

    planned = getattr(stage1_curve_trainers, trainer, None)
    if planned is None or not getattr(planned, "export_epochs", ()):
        raise SystemExit(f"--trainer {trainer}: expected a trainer with export_epochs in "
                         f"{TRAINERS_FOLDER / 'stage1_curve_trainers.py'}")
    steps = Steps(workdir, clean_env(raw, preprocessed, results),
                  total=int(not args.evaluate_only) + 2 * (1 + len(planned.export_epochs)))
    if not args.evaluate_only:
        steps.command("train", f"Stage I, one long run with exports ({trainer})",
                      ["nnUNetv2_train", c.healthy_id, STAGE1_CONFIGURATION, "all", "-tr", trainer, "-device",
                       args.device],
                      resume=lambda: ["--c"] if (fold / "checkpoint_latest.pth").is_file() else [])
    epochs = exported_epochs(fold)
    if not epochs:
        raise SystemExit(f"{fold} holds no milestone export (diffusion_model_epoch_N) yet")
    per_epoch = iterations_per_epoch(fold)
    seconds = training_seconds(fold)
    models = [(REFERENCE, spec.stage1_trainer, None)] + [(f"epoch_{e}", trainer, e) for e in epochs]
    steps.total = steps.count + 2 * len(models)
    rows = []
    for key, model_trainer, epoch in models:
        out = reconstructions / key
        steps.command(f"reconstruct_{key}", f"sadm_nnunet_reconstruct: {model_trainer}"
                      + (f" after {epoch} epochs" if epoch else " (the base run's stage I)"),
                      ["sadm_nnunet_reconstruct", "-i", cohort.images, "-o", out, "-d", c.healthy_id, "-tr",
                       model_trainer, "--device", args.device] + (["--epoch", str(epoch)] if epoch else []))
        evaluated = steps.python(f"evaluate_{key}", f"Evaluation of {key}", lambda: evaluate_model(cohort, out))
        if epoch is None:
            base_fold = fold_of(model_trainer)
            label, iterations = f"base run's ({model_trainer})", iterations_per_epoch(base_fold) * len(
                training_seconds(base_fold))
            spent = sum(training_seconds(base_fold)) or None
        else:
            label, iterations = f"curve, epoch {epoch}", per_epoch * epoch
            spent = sum(seconds[:epoch]) if len(seconds) >= epoch else None
        rows.append({"key": key, "label": label, "trainer": model_trainer, "epoch": epoch, "iterations": iterations,
                     "training_seconds": spent, "s_per_iteration": None if spent is None else spent / iterations,
                     "healthy": evaluated["healthy"], "kinds": evaluated["kinds"], "means": evaluated["means"]})
    kinds = [s for s in c.test_sets if s != "healthy"]
    text = markdown(rows, kinds)
    finished = (fold / "checkpoint_final.pth").is_file()
    print(f"\nStage-I learning curve ({mode}, seed {args.seed}, {trainer}: milestones after epochs {epochs}"
          f"{'' if finished else ', training not finished'}; {(time.perf_counter() - start) / 60:.1f} min):")
    write_report({"date": date, "machine": machine_info(args.device), "versions": versions(), "mode": mode,
                  "seed": args.seed, "trainer": trainer, "base_stage1_trainer": spec.stage1_trainer,
                  "denoiser_overrides": list(spec.denoiser_overrides), "iterations_per_epoch": per_epoch,
                  "training_finished": finished, "epochs_trained": len(seconds), "table": text, "rows": rows},
                 text, args.output)


if __name__ == "__main__":
    main()
