"""Union of a labelled and a self-supervised SADM: does one score find the seen kind as the labelled model does
and the unseen kinds as the self-supervised one does? (offline, from finished quality-benchmark runs)

    python benchmarks/quality_ensemble.py [--quick] [--seeds 0 1 2] [--workdir DIR] [--spacing MM]
                                          [--labelled-tag TAG] [--self-supervised-tag TAG] [--output union.json]

The labelled SADM (SADMTrainer, tumour labels) is the `sadm` model of the run `--labelled-tag` (default: the base
run); the self-supervised SADM (SADMTrainer_DRAEM, synthetic anomalies only) is the `sadm` model of the run
`--self-supervised-tag` (e.g. a `--sadm-trainer SADMTrainer_DRAEM_1epoch` variant), or by default the base run's
`sadm_draem` model. Both must use the same stage I, so that they share one unsupervised map u (checked per case).
Nothing is trained or predicted: the script reads their beta-0 segmentation scores (the foreground probabilities
p_labelled and p_self) and u, and writes two combined scores into `DIR/union_<labelled run>+<self-supervised run>`:
- union: beta * u + (1 - beta) * max(p_labelled, p_self), beta from the labelled run's scores (SADM's fused score
  with the union of the two networks' detections);
- union of the segmentation outputs: max(p_labelled, p_self) (no unsupervised map).
They are evaluated like the quality benchmark's rows (same cohort, thresholds from the same validation sets), beside
the labelled run's nnU-Net, late fusion and SADM rows and the self-supervised SADM's fused score.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, now, versions, write_report  # noqa: E402


@dataclass(frozen=True)
class Rows:
    """What quality_benchmark's tables need: the cohort and the rows (Methods)."""
    cohort: object
    rows: tuple

    def methods(self) -> list:
        return list(self.rows)


def segmentation_folder(scores: Path, key: str) -> Path:
    """The beta-0 scores (foreground probability) of the SADM model `key` of a run (`scores/KEY` holds its fused
    scores)."""
    folder = scores / f"{key}_segmentation"
    if not folder.is_dir():
        raise SystemExit(f"{folder} is missing: the run's segmentation scores of {key} were not written")
    return folder


def write_union(cases: list[str], labelled: Path, self_supervised: Path, self_key: str, out: Path) -> float:
    """Writes out/union/CASE_score and out/union_segmentation/CASE_score (see the module text) from the scores
    folders of the two runs; returns beta. Refuses runs whose unsupervised maps differ (another stage I)."""
    import nibabel as nib
    import numpy as np

    from sadm_nnunet.anomaly_maps import fused_score
    from sadm_nnunet.commands.score import SETTINGS_FILE
    from sadm_nnunet.nifti_checks import save_nifti

    beta = json.loads((labelled / "sadm" / SETTINGS_FILE).read_text())["beta"]
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in ("union", "union_segmentation"):
        (tmp / name).mkdir(parents=True, exist_ok=True)
    for case in cases:
        u_file, u_self_file = labelled / "sadm" / f"{case}_unsupervised.nii.gz", \
            self_supervised / self_key / f"{case}_unsupervised.nii.gz"
        u_image = nib.load(str(u_file))
        u, u_self = u_image.get_fdata(dtype=np.float32), nib.load(str(u_self_file)).get_fdata(dtype=np.float32)
        if u.shape != u_self.shape or not np.allclose(u, u_self, atol=1e-4):
            raise SystemExit(f"{u_file} and {u_self_file} differ (largest difference "
                             f"{np.abs(u - u_self).max() if u.shape == u_self.shape else 'shape'}): the two runs "
                             f"use different stage-I models; the union needs one unsupervised map")
        p_labelled, p_self = (nib.load(str(segmentation_folder(folder, key) / f"{case}_score.nii.gz"))
                              .get_fdata(dtype=np.float32)
                              for folder, key in ((labelled, "sadm"), (self_supervised, self_key)))
        p = np.maximum(p_labelled, p_self)
        save_nifti(fused_score(u, p, beta), u_image.affine, tmp / "union" / f"{case}_score.nii.gz")
        save_nifti(p, u_image.affine, tmp / "union_segmentation" / f"{case}_score.nii.gz")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return beta


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the quality benchmark's --quick runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 (quick: 0)")
    parser.add_argument("--workdir", type=Path, default=Path("quality_benchmark_work"),
                        help="the quality benchmark's --workdir")
    parser.add_argument("--spacing", type=float, help="the quality benchmark's --spacing (its runs at that voxel size)")
    parser.add_argument("--labelled-tag", default="", help="the run whose `sadm` model is the labelled SADM "
                                                           "(default: the base run)")
    parser.add_argument("--self-supervised-tag", default="",
                        help="a run whose `sadm` model is a self-supervised SADM (default: the base run's "
                             "sadm_draem model)")
    parser.add_argument("--output", type=Path, help="JSON with every per-seed report and the summary")
    args = parser.parse_args(argv)

    from quality_benchmark import aggregate, experiment, run_folder, tables

    from sadm_nnunet.experiment.cohort import load_cohort
    from sadm_nnunet.experiment.pipeline import Method, evaluate_method

    mode = "quick" if args.quick else "full"
    seeds = args.seeds if args.seeds is not None else ([0] if args.quick else [0, 1, 2])
    self_key = "sadm" if args.self_supervised_tag else "sadm_draem"
    start, date, per_seed, shown = time.perf_counter(), now(), {}, None
    for seed in seeds:
        spec = experiment(mode, seed, spacing=args.spacing)
        labelled = run_folder(args.workdir, mode, seed, args.spacing, args.labelled_tag)
        self_supervised = run_folder(args.workdir, mode, seed, args.spacing, args.self_supervised_tag)
        for run, key in ((labelled, "sadm"), (self_supervised, self_key)):
            if not (run / "steps" / "evaluate.json").is_file() or not (run / "scores" / key).is_dir():
                raise SystemExit(f"{run} holds no finished quality benchmark run with scores/{key}; run "
                                 f"benchmarks/quality_benchmark.py for it first")
        cohort = load_cohort(spec.cohort, labelled / "nnUNet_raw", labelled / "evaluation")
        if cohort is None:
            raise SystemExit(f"{labelled / 'evaluation'} holds no cohort of seed {seed} ({mode})")
        out = args.workdir / f"union_{labelled.name}+{self_supervised.name}"
        print(f"=== seed {seed}: {labelled.name} + {self_supervised.name} -> {out}", flush=True)
        beta = write_union([c for s in cohort.sets.values() for c in s], labelled / "scores",
                           self_supervised / "scores", self_key, out)
        evaluated = (
            (Method("nnunet", "nnU-Net, image only", "nnunet", "_score"), labelled / "scores"),
            (Method("late_fusion", "nnU-Net + unsupervised map (late fusion)", "late_fusion", "_score"),
             labelled / "scores"),
            (Method("sadm", "SADM, labelled (fused)", "sadm", "_score"), labelled / "scores"),
            (Method("sadm_self", "SADM, self-supervised (fused)", self_key, "_score"), self_supervised / "scores"),
            (Method("union", f"union: β u + (1 - β) max(p_labelled, p_self), β {beta:g}", "union", "_score"), out),
            (Method("union_segmentation", "union of the segmentation outputs: max(p_labelled, p_self)",
                    "union_segmentation", "_score"), out))
        per_seed[seed] = {m.key: evaluate_method(cohort, m, root) for m, root in evaluated}
        shown = Rows(spec.cohort, tuple(m for m, _ in evaluated))
    summary = aggregate(per_seed)
    text = tables(shown, summary)
    minutes = (time.perf_counter() - start) / 60
    print(f"\nUnion of the labelled and the self-supervised SADM ({mode}, seeds {seeds}, {minutes:.1f} min):")
    report = {"date": date, "machine": machine_info("cpu"), "versions": versions(), "mode": mode, "seeds": seeds,
              "spacing": args.spacing, "labelled_tag": args.labelled_tag,
              "self_supervised_tag": args.self_supervised_tag, "minutes": minutes, "table": text,
              "summary": summary, "per_seed": per_seed}
    write_report(report, text, args.output)
    return report


if __name__ == "__main__":
    main()
