"""`sadm_nnunet_evaluate`: anomaly-detection metrics of score maps against reference labels.

    sadm_nnunet_evaluate -ref REF_DIR -pred SCORE_DIR [-val-ref DIR -val-pred DIR | --threshold T] -o OUT.json
                         [-mask DIR [-val-mask DIR]] [--pred-suffix _score] [--figures FIG_DIR [--images DIR]
                         [--maps DIR]]

REF_DIR: label maps CASE.nii.gz (any nonzero label is an anomaly; with --ignore-label L, voxels labelled L are not
evaluated, as nnU-Net's ignore label). SCORE_DIR: score maps CASE{suffix}.nii.gz,
higher = more anomalous, in the same geometry (shape, spacing, origin, direction). Other files are ignored, and
so are score maps of cases without a reference (a score folder may hold validation and test cases; the number
ignored is printed and written as "ignored_score_maps"). Files that are truncated or hold NaN/inf are refused.
OUT.json must lie outside every input folder.

Per case: best_dice (⌈Dice⌉, the best Dice over all thresholds), auprc (average precision), auroc, and, given a
threshold, dice_at_threshold and, for cases with an empty reference (which count for no Dice metric),
fpr_healthy = fraction of evaluated voxels with score >= threshold.

The threshold maximises Dice over the pooled validation cases (-val-ref/-val-pred, never the evaluated cases;
shared case names are refused), or is given with --threshold. Without either, dice_at_threshold and fpr_healthy
are not reported (null).

Evaluated voxels: with -mask DIR (CASE.nii.gz brain masks, or skull-stripped images CASE_0000.nii.gz; nonzero =
brain) only the brain; then validation needs -val-mask (may be the same folder). Without -mask, every voxel of
the volume (background voxels then count as true negatives, which raises AUROC and lowers fpr_healthy).

OUT.json: "per_case", "mean", "std", "count" (cases per metric), "threshold", "threshold_source",
"validation_cases", "ignored_score_maps" ({"pred": N, "val_pred": M}); written atomically. A Markdown table of mean and std goes to the terminal.

--figures FIG_DIR writes one PNG per case and contact_sheet.png (see sadm_nnunet.figures): input (from --images,
CASE_0000.nii.gz), reconstruction and unsupervised map (from --maps: CASE_reconstruction_0000.nii.gz and
CASE_unsupervised.nii.gz as sadm_nnunet_score and sadm_nnunet_reconstruct write them),
the evaluated score, prediction (score >= threshold) and reference outline. Panels whose files are not given are
left empty. A sadm_nnunet_score folder serves as both -pred (with --pred-suffix _score) and --maps; its
score_settings.json tells the figures which beta the score has.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sadm_nnunet.evaluation import EvaluationError, evaluate, load_folder, markdown_table
from sadm_nnunet.errors import InputError
from sadm_nnunet.io_utils import remove_stale_temporaries, write_json_atomic
from sadm_nnunet.output_checks import refuse_output_in_inputs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sadm_nnunet_evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-ref", required=True, type=Path, help="folder of reference label maps CASE.nii.gz")
    parser.add_argument("-pred", required=True, type=Path, help="folder of score maps CASE{suffix}.nii.gz")
    parser.add_argument("-o", "--output", required=True, type=Path, help="JSON file to write")
    parser.add_argument("-val-ref", type=Path, help="validation reference labels (threshold selection)")
    parser.add_argument("-val-pred", type=Path, help="validation score maps (threshold selection)")
    parser.add_argument("--threshold", type=float, help="a fixed threshold instead of validation cases")
    parser.add_argument("-mask", type=Path, help="brain masks of the evaluated cases (evaluate only the brain)")
    parser.add_argument("-val-mask", type=Path, help="brain masks of the validation cases")
    parser.add_argument("--pred-suffix", default="", help="score files are CASE{suffix}.nii.gz (e.g. _score)")
    parser.add_argument("--ignore-label", type=int, default=None,
                        help="reference value whose voxels are not evaluated (nnU-Net's ignore label, e.g. 2 for "
                             "WMH converted by sadm_nnunet_convert)")
    parser.add_argument("--figures", type=Path, help="folder for per-case PNGs and a contact sheet")
    parser.add_argument("--images", type=Path, help="raw images CASE_0000.nii.gz for the figures")
    parser.add_argument("--maps", type=Path, help="folder with CASE_reconstruction_0000.nii.gz and CASE_unsupervised"
                                                  ".nii.gz (or CASE_ssim.nii.gz) for the figures")
    parser.add_argument("--max-figures", type=int, default=50, help="per-case PNGs for at most this many cases "
                                                                    "(the contact sheet shows all); default 50")
    return parser


def run(args: argparse.Namespace) -> dict:
    if (args.val_ref is None) != (args.val_pred is None):
        raise EvaluationError("give both -val-ref and -val-pred (or neither)")
    has_validation = args.val_ref is not None
    if has_validation and args.threshold is not None:
        raise EvaluationError("give either -val-ref/-val-pred or --threshold, not both")
    if has_validation and (args.mask is None) != (args.val_mask is None):
        raise EvaluationError("-mask and -val-mask go together: the threshold must be chosen on the same kind of "
                              "region as the one it is applied to (the same folder may be given twice)")
    if not has_validation and args.val_mask is not None:
        raise EvaluationError("-val-mask given without -val-ref/-val-pred")
    check_output(args)
    start = time.perf_counter()
    cases, ignored = load_folder(args.ref, args.pred, args.mask, args.pred_suffix, args.ignore_label)
    validation, val_ignored = (load_folder(args.val_ref, args.val_pred, args.val_mask, args.pred_suffix,
                                           args.ignore_label) if has_validation else (None, []))
    report = evaluate(cases, validation, args.threshold)
    report["ignored_score_maps"] = {"pred": len(ignored), "val_pred": len(val_ignored)}
    report["region"] = "brain mask" if args.mask is not None else "whole volume"
    report["folders"] = {"ref": str(args.ref), "pred": str(args.pred), "pred_suffix": args.pred_suffix,
                         "mask": None if args.mask is None else str(args.mask),
                         "val_ref": None if args.val_ref is None else str(args.val_ref),
                         "val_pred": None if args.val_pred is None else str(args.val_pred)}
    write_json_atomic(report, args.output)
    elapsed = time.perf_counter() - start
    n_val = len(validation) if validation is not None else 0
    print(f"{len(cases)} case(s) evaluated ({report['region']})"
          + (f", threshold from {n_val} validation case(s)" if n_val else "") + f" in {elapsed:.1f} s")
    for option, names in (("-pred", ignored), ("-val-pred", val_ignored)):
        if names:
            print(f"Ignored {len(names)} score map(s) in {option} without a reference case, e.g. {names[:3]}")
    print(markdown_table(report))
    outside = {c: m["reference_voxels_outside_region"] for c, m in report["per_case"].items()
               if m["reference_voxels_outside_region"]}
    if outside:
        listed = ", ".join(f"{c} ({n})" for c, n in sorted(outside.items())[:10])
        print(f"Warning: {len(outside)} case(s) have reference voxels outside the brain mask, which are not "
              f"evaluated: {listed}{' ...' if len(outside) > 10 else ''}")
    print(f"Wrote {args.output}")
    if args.figures is not None:
        from sadm_nnunet.figures import figures_from_folders

        written = figures_from_folders(args.figures, args.ref, args.pred, report, pred_suffix=args.pred_suffix,
                                       images=args.images, maps=args.maps, max_cases=args.max_figures)
        print(f"Wrote {len(written)} figure(s) to {args.figures}")
    return report


def check_output(args: argparse.Namespace) -> None:
    """-o must be a file outside every input folder (it would overwrite an input or become one); the stale
    temporaries of an interrupted run beside it are removed."""
    inputs = {"-ref": args.ref, "-pred": args.pred, "-val-ref": args.val_ref, "-val-pred": args.val_pred,
              "-mask": args.mask, "-val-mask": args.val_mask, "--images": args.images, "--maps": args.maps}
    refuse_output_in_inputs(args.output, inputs)
    if args.output.is_dir():
        raise EvaluationError(f"-o {args.output} is a folder; expected the path of the JSON file to write, e.g. "
                              f"{args.output / 'metrics.json'}")
    for folder in (args.output.parent, args.figures):
        removed = remove_stale_temporaries(folder) if folder is not None else 0
        if removed:
            print(f"Removed {removed} temporary file(s) left in {folder} by an interrupted run.")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (EvaluationError, InputError) as e:
        print(f"sadm_nnunet_evaluate: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
