"""The comparison experiment through the real commands: stage I on healthy subjects, SADM and plain nnU-Net on a
small labelled set, prediction, scoring and evaluation on seen, unseen and healthy test sets.

    cohort -> nnUNetv2_plan_and_preprocess -> sadm_nnunet_plan_diffusion -> nnUNetv2_train HEALTHY 2d all
    -> sadm_nnunet_plan LABELLED --ddpm HEALTHY -> nnUNetv2_train LABELLED 2d_sadm FOLD -tr SADMTrainer...
    -> nnUNetv2_train LABELLED 2d FOLD -tr nnUNetTrainer...  [-> ... -tr SADMTrainer_DRAEM...]
    -> nnUNetv2_predict --save_probabilities (each model, every evaluation case) -> sadm_nnunet_score
    -> evaluation per method and set (threshold chosen on the seen kind's validation set) -> table and figures

Methods (rows): the unsupervised reconstruction baseline (1 - SSIM between image and the stage-I reconstruction,
median filtered: sadm_nnunet_score's CASE_unsupervised), nnU-Net on the image alone (its foreground probability),
SADM (the fused score of sadm_nnunet_score: beta * unsupervised + (1 - beta) * SADM's foreground probability),
SADM's segmentation alone (its foreground probability), the late-fusion control (plain nnU-Net's probability fused
with the same unsupervised map and the same beta: what a user could build without stage II), and optionally SADM
trained self-supervised on synthetic anomalies only (SADMTrainer_DRAEM, fused score). When the cohort has healthy
validation brains, every method also gets thresholds at fixed false-positive rates chosen on them
(`evaluation.FPR_RATES`). Every step is resumable (`steps.Steps`).

Score files follow sadm_nnunet_score's names: a folder under scores/ holds CASE_score for one beta, recorded in its
score_settings.json. A segmentation's foreground probability is the beta-0 score, so plain nnU-Net's maps are
scores/nnunet/CASE_score and SADM's segmentation alone scores/sadm_segmentation/CASE_score.
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from sadm_nnunet.experiment.cohort import (HEALTHY, HEALTHY_VALIDATION, VALIDATION, Cohort, CohortSpec, build_cohort,
                                           load_cohort)
from sadm_nnunet.experiment.steps import Steps, clean_env
from sadm_nnunet.io_utils import write_json_atomic
from sadm_nnunet.nnunet_plans import sadm_configuration_name

STAGE1_CONFIGURATION = "2d"  # stage I is trained on 2D slices whatever stage II's configuration
REPORTED = ("best_dice", "auprc", "dice_at_threshold")
RECONSTRUCTION_FIGURE = "reconstruction"  # key of the stage-I figure among the figures step's results


@dataclass(frozen=True)
class Method:
    """A row of the table: which model's score folder, which score files."""
    key: str
    label: str
    scores: str          # folder under scores/
    suffix: str          # score files CASE{suffix}.nii.gz


@dataclass(frozen=True)
class ExperimentSpec:
    cohort: CohortSpec
    stage1_trainer: str
    sadm_trainer: str
    plain_trainer: str
    draem_trainer: str | None = None
    denoiser_overrides: tuple[str, ...] = ()   # sadm_nnunet_plan_diffusion --set ...
    sadm_overrides: tuple[str, ...] = ()       # sadm_nnunet_plan --set ...
    fold: str = "all"
    device: str = "cpu"
    figures: bool = True
    extra: dict = field(default_factory=dict)  # recorded only (e.g. the source of the brains)
    configuration: str = "2d"  # nnU-Net configuration of the stage-II models (plain nnU-Net; SADM: its _sadm twin)
    stage1_epoch: int | None = None  # SADM on stage I's export after this many epochs (sadm_nnunet_plan --ddpm-epoch)

    @property
    def sadm_configuration(self) -> str:
        """What `sadm_nnunet_plan -c CONFIGURATION` writes by default."""
        return sadm_configuration_name(self.configuration)

    def methods(self) -> list[Method]:
        rows = [Method("unsupervised", "Unsupervised reconstruction (1 - SSIM)", "sadm", "_unsupervised"),
                Method("nnunet", "nnU-Net, image only", "nnunet", "_score"),
                Method("sadm", "SADM, image + residual (fused score)", "sadm", "_score"),
                Method("sadm_segmentation", "SADM, segmentation output only", "sadm_segmentation", "_score"),
                Method("late_fusion", "nnU-Net + unsupervised map (late fusion, same β)", "late_fusion", "_score")]
        if self.draem_trainer:
            rows.append(Method("sadm_draem", "SADM self-supervised (DRAEM anomalies, fused)", "sadm_draem",
                               "_score"))
        return rows


def _train_resume(fold_folder: Path) -> Callable[[], list]:
    """nnU-Net's --c when an interrupted training left a checkpoint."""
    return lambda: ["--c"] if (fold_folder / "checkpoint_latest.pth").is_file() else []


def write_segmentation_scores(predictions: Path, images: Path, out: Path) -> int:
    """The beta-0 score of each case, as `sadm_nnunet_score --beta 0` defines it: out/CASE_score.nii.gz = the
    foreground probability (1 - p(background)) from nnUNetv2_predict's CASE.npz inside the brain (the nonzero
    region of the input images CASE_XXXX in `images`), 0 outside, in the input's geometry (CASE.pkl's properties;
    plans.json/dataset.json that nnUNetv2_predict writes beside them); and out/score_settings.json (beta 0)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sadm_nnunet.commands.score import SETTINGS_FILE
    from sadm_nnunet.nnunet_cases import load_foreground_probability, nonzero_mask, write_volumes

    plans = PlansManager(json.loads((predictions / "plans.json").read_text()))
    dataset_json = json.loads((predictions / "dataset.json").read_text())
    label_manager = plans.get_label_manager(dataset_json)
    ending = dataset_json["file_ending"]
    cases = sorted(p.name[:-len(".npz")] for p in predictions.glob("*.npz"))
    if not cases:
        raise FileNotFoundError(f"no CASE.npz in {predictions}; was nnUNetv2_predict run with --save_probabilities?")
    reader = plans.image_reader_writer_class()
    for case in cases:
        with open(predictions / f"{case}.pkl", "rb") as f:
            properties = pickle.load(f)
        shape = tuple(int(s) for s in properties["shape_before_cropping"])
        raw, _ = reader.read_images([str(images / f"{case}_{c:04d}{ending}")
                                     for c in range(len(dataset_json["channel_names"]))])
        p_fg = load_foreground_probability(predictions / f"{case}.npz", label_manager, shape, raw)
        write_volumes(out, case, {"score": np.where(nonzero_mask(raw), p_fg, 0)}, ending, properties)
    write_json_atomic({"predictions": str(predictions), "beta": 0.0, "cases": cases}, out / SETTINGS_FILE)
    return len(cases)


def write_late_fusion(unsupervised: Path, segmentation: Path, out: Path) -> int:
    """The late-fusion control: out/CASE_score = beta * unsupervised/CASE_unsupervised + (1 - beta) *
    segmentation/CASE_score, with the beta and the brain restriction of sadm_nnunet_score's output folder
    `unsupervised` (its score_settings.json) and a segmentation's beta-0 scores (`write_segmentation_scores`).
    Refused when that folder's scores also remove small components: the control would then differ from SADM's
    fused score in more than the segmentation network."""
    import nibabel as nib

    from sadm_nnunet.anomaly_maps import fused_score
    from sadm_nnunet.commands.score import SETTINGS_FILE
    from sadm_nnunet.nifti_checks import save_nifti

    settings = json.loads((unsupervised / SETTINGS_FILE).read_text())
    if settings.get("min_component_size", 0) > 1:
        raise ValueError(f"{unsupervised / SETTINGS_FILE}: min_component_size {settings['min_component_size']}; "
                         f"the late-fusion control supports 0 or 1 (no component filter) only")
    cases = json.loads((segmentation / SETTINGS_FILE).read_text())["cases"]
    for case in cases:
        u, p = (nib.load(str(f)) for f in (unsupervised / f"{case}_unsupervised.nii.gz",
                                           segmentation / f"{case}_score.nii.gz"))
        if u.shape != p.shape or not np.allclose(u.affine, p.affine):
            raise ValueError(f"{case}: the unsupervised map ({u.shape}) and the segmentation score ({p.shape}) have "
                             f"different geometry")
        save_nifti(fused_score(u.get_fdata(dtype=np.float32), p.get_fdata(dtype=np.float32), settings["beta"]),
                   u.affine, out / f"{case}_score.nii.gz")
    write_json_atomic({"unsupervised": str(unsupervised), "segmentation": str(segmentation),
                       "beta": settings["beta"], "cases": cases}, out / SETTINGS_FILE)
    return len(cases)


def reconstruction_figure(cohort: Cohort, maps: Path, out: Path) -> Path:
    """Input, stage I's reconstruction and its 1 - SSIM map for the first case of each test set (healthy first),
    from sadm_nnunet_score's output folder `maps`."""
    from sadm_nnunet.figures import reconstruction_figure_from_folders

    sets = sorted(cohort.spec.test_sets, key=lambda s: s != HEALTHY)
    cases = [(f"{s}: {cohort.sets[s][0]}", cohort.sets[s][0],
              None if s == HEALTHY else cohort.labels(s) / f"{cohort.sets[s][0]}.nii.gz") for s in sets]
    return reconstruction_figure_from_folders(out, cohort.images, maps, cases)


def evaluate_method(cohort: Cohort, method: Method, scores_root: Path) -> dict:
    """The evaluation report of one method on every test set, the threshold chosen on the validation set (Dice
    pooled over its cases); only the brain (the nonzero region of the image) is evaluated."""
    from sadm_nnunet.evaluation import evaluate, load_case

    folder = scores_root / method.scores

    def ranked(evaluation_set: str) -> dict:
        labels = cohort.labels(evaluation_set)
        return {case: load_case(case, labels / f"{case}.nii.gz", folder / f"{case}{method.suffix}.nii.gz",
                                cohort.images) for case in cohort.sets[evaluation_set]}

    validation = ranked(VALIDATION)
    healthy_validation = ranked(HEALTHY_VALIDATION) if cohort.sets.get(HEALTHY_VALIDATION) else None
    return {evaluation_set: evaluate(ranked(evaluation_set), validation, healthy_validation=healthy_validation)
            for evaluation_set in cohort.spec.test_sets}


def results_table(spec: ExperimentSpec, reports: dict[str, dict]) -> str:
    """Markdown: one row per method; per lesion set ⌈Dice⌉, AUPRC and Dice at the validation threshold (mean over
    cases), and the fraction of healthy brain voxels flagged at that threshold."""
    cohort = spec.cohort
    header = ["method"]
    for s in cohort.test_sets:
        if s == "healthy":
            header.append("healthy: FPR")
            continue
        role = "seen" if s == cohort.seen_kind else "unseen"
        header += [f"{s} ({role}): ⌈Dice⌉", "AUPRC", "Dice@thr"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in spec.methods():
        cells = [method.label]
        for s in cohort.test_sets:
            mean = reports[method.key][s]["mean"]
            keys = ("fpr_healthy",) if s == "healthy" else REPORTED
            cells += ["n/a" if mean[k] is None else f"{mean[k]:.3f}" for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_experiment(spec: ExperimentSpec, workdir: Path, brains: Callable[[], tuple[list, list]], out=None) -> dict:
    """Runs (or resumes) the experiment in `workdir`; returns {"reports", "table", "figures"}. `brains()` returns
    (training brains, test brains), called only when the cohort has to be built."""
    import sys

    out = out or sys.stdout
    workdir = Path(workdir).resolve()
    raw, preprocessed, results = workdir / "nnUNet_raw", workdir / "nnUNet_preprocessed", workdir / "nnUNet_results"
    evaluation, predictions, scores = workdir / "evaluation", workdir / "predictions", workdir / "scores"
    env = clean_env(raw, preprocessed, results)
    c = spec.cohort
    models = [("sadm", spec.sadm_configuration, spec.sadm_trainer),
              ("nnunet", spec.configuration, spec.plain_trainer)]
    if spec.draem_trainer:
        models.append(("sadm_draem", spec.sadm_configuration, spec.draem_trainer))
    sadm_models = [m for m in models if m[1] == spec.sadm_configuration]
    preprocess_extra = spec.configuration != STAGE1_CONFIGURATION
    total = 5 + int(preprocess_extra) + 2 * len(models) + len(sadm_models) + 3 + int(spec.figures)
    steps = Steps(workdir, env, total, out)

    def fold_folder(dataset: str, trainer: str, configuration: str, fold: str) -> Path:
        return results / dataset / f"{trainer}__nnUNetPlans__{configuration}" / f"fold_{fold}"

    def make_cohort() -> dict:
        training, test = brains()
        built = build_cohort(c, training, test, raw, evaluation)
        return {"sets": built.sets}

    steps.python("cohort", f"Generating the cohort ({c.healthy_dataset}, {c.labelled_dataset}, evaluation sets)",
                 make_cohort)
    cohort = load_cohort(c, raw, evaluation)
    if cohort is None:
        raise RuntimeError(f"{evaluation} holds a cohort of a different specification; use another work folder")
    steps.command("plan", f"nnU-Net planning and preprocessing ({STAGE1_CONFIGURATION})",
                  ["nnUNetv2_plan_and_preprocess", "-d", c.healthy_id, c.labelled_id, "-c", STAGE1_CONFIGURATION,
                   "-np", "1",
                   "-npfp", "1", "--verify_dataset_integrity"],  # one process: the cases are few and small
                  nnUNet_n_proc_DA=str(max(1, int(env.get("nnUNet_n_proc_DA", "1")))))  # its planner needs >= 1
    if preprocess_extra:  # the planner planned every configuration; preprocess stage II's for the labelled set
        steps.command(f"preprocess_{spec.configuration}", f"nnU-Net preprocessing ({spec.configuration})",
                      ["nnUNetv2_preprocess", "-d", c.labelled_id, "-c", spec.configuration, "-np", "1"])
    steps.command("plan_diffusion", "Stage-I settings into the healthy dataset's plans",
                  ["sadm_nnunet_plan_diffusion", c.healthy_id]
                  + (["--set", *spec.denoiser_overrides] if spec.denoiser_overrides else []))
    stage1_fold = fold_folder(c.healthy_dataset, spec.stage1_trainer, STAGE1_CONFIGURATION, "all")
    steps.command("train_stage1", f"Stage I: the diffusion model on {c.num_healthy} healthy subjects",
                  ["nnUNetv2_train", c.healthy_id, STAGE1_CONFIGURATION, "all", "-tr", spec.stage1_trainer, "-device", spec.device],
                  resume=_train_resume(stage1_fold))
    steps.command("plan_sadm", f"SADM configuration ({spec.sadm_configuration}) into the labelled dataset's plans",
                  ["sadm_nnunet_plan", c.labelled_id, "--ddpm", c.healthy_id, "--ddpm-trainer",
                   spec.stage1_trainer]
                  + (["--ddpm-epoch", str(spec.stage1_epoch)] if spec.stage1_epoch is not None else [])
                  + (["-c", spec.configuration] if spec.configuration != STAGE1_CONFIGURATION else [])
                  + (["--set", *spec.sadm_overrides] if spec.sadm_overrides else []))
    for key, configuration, trainer in models:
        steps.command(f"train_{key}", f"Training {trainer} ({configuration}) on {c.num_labelled} labelled "
                                      f"{c.seen_kind} cases",
                      ["nnUNetv2_train", c.labelled_id, configuration, spec.fold, "-tr", trainer, "-device",
                       spec.device],
                      resume=_train_resume(fold_folder(c.labelled_dataset, trainer, configuration, spec.fold)))
    n_eval = sum(len(v) for v in cohort.sets.values())
    for key, configuration, trainer in models:
        steps.command(f"predict_{key}", f"nnUNetv2_predict with {trainer} on {n_eval} evaluation cases",
                      ["nnUNetv2_predict", "-i", cohort.images, "-o", predictions / key, "-d", c.labelled_id, "-c",
                       configuration, "-tr", trainer, "-f", spec.fold, "--save_probabilities", "-device",
                       spec.device, "-npp", "1", "-nps", "1"])
    for key, configuration, trainer in sadm_models:
        steps.command(f"score_{key}", f"sadm_nnunet_score: reconstructions and fused scores of {trainer}",
                      ["sadm_nnunet_score", "-i", cohort.images, "-pred", predictions / key, "-o", scores / key,
                       "-d", c.labelled_id, "-c", configuration, "-tr", trainer, "-f", spec.fold, "--device",
                       spec.device])
    segmentation_scores = {key: scores / (key if configuration == spec.configuration else f"{key}_segmentation")
                           for key, configuration, _ in models}
    steps.python("segmentation_scores", "Segmentation scores (beta 0: the foreground probability in the brain)",
                 lambda: {key: write_segmentation_scores(predictions / key, cohort.images, folder)
                          for key, folder in segmentation_scores.items()})
    steps.python("late_fusion", "Late fusion: nnU-Net's probability with the same unsupervised map and beta",
                 lambda: {"cases": write_late_fusion(scores / "sadm", segmentation_scores["nnunet"],
                                                     scores / "late_fusion")})

    def evaluate_all() -> dict:
        reports = {m.key: evaluate_method(cohort, m, scores) for m in spec.methods()}
        write_json_atomic({"spec": json.loads(json.dumps(spec, default=_as_dict)), "reports": reports},
                          workdir / "results.json")
        return {"table": results_table(spec, reports)}

    table = steps.python("evaluate", "Evaluation (threshold from the seen kind's validation set)",
                         evaluate_all)["table"]
    (workdir / "results.md").write_text(table + "\n")
    reports = json.loads((workdir / "results.json").read_text())["reports"]
    figures = []
    if spec.figures:
        def make_figures() -> dict:
            from sadm_nnunet.figures import figures_from_folders

            written = {}
            for s in c.test_sets:
                if s == "healthy":
                    continue
                target = workdir / "figures" / s
                figures_from_folders(target, cohort.labels(s), scores / "sadm", reports["sadm"][s],
                                     pred_suffix="_score", images=cohort.images, maps=scores / "sadm", max_cases=0)
                written[s] = str(target / "contact_sheet.png")
            written[RECONSTRUCTION_FIGURE] = str(reconstruction_figure(cohort, scores / "sadm",
                                                                       workdir / "figures" / "reconstruction.png"))
            return written

        figures = steps.python("figures", "Contact sheets of SADM's fused score, stage I's reconstructions",
                               make_figures)
    return {"reports": reports, "table": table, "figures": figures}


def _as_dict(value):
    from dataclasses import asdict, is_dataclass

    if is_dataclass(value):
        return asdict(value)
    raise TypeError(f"cannot record {type(value).__name__}")
