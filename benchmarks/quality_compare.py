"""Paired comparison of quality-benchmark variants with their base run (the investigations table of RESULTS.md).

    python benchmarks/quality_compare.py BASE.json NAME=VARIANT.json [NAME=VARIANT.json ...] [--methods sadm nnunet]
                                         [--output comparison.md]

Each JSON is what `quality_benchmark.py --output` wrote; a variant shares its base run's cohorts (same seeds, same
--workdir), so the difference of a metric between a variant and the base is taken per seed, on the same test
subjects, and then averaged over the seeds both have. One row per (run, method): ⌈Dice⌉ and Dice at the validation
threshold per lesion kind, healthy FPR, as mean ± std over the run's seeds, and the paired difference to the base
run's same method (mean and the per-seed values). A variant that retrained nothing of a method (e.g. plain nnU-Net
in a SADM-only variant) shows difference 0.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

KINDS_METRICS = (("tumour", "best_dice"), ("tumour", "dice_at_threshold"), ("ms", "best_dice"),
                 ("stroke", "best_dice"), ("stroke", "auprc"), ("healthy", "fpr_healthy"), ("tumour", "dice_at_fpr5"),
                 ("stroke", "dice_at_fpr5"))
SHORT = {"best_dice": "⌈Dice⌉", "dice_at_threshold": "Dice@thr", "auprc": "AUPRC", "fpr_healthy": "FPR",
         "dice_at_fpr5": "Dice@5%FPR"}


def per_seed_values(run: dict, method: str, kind: str, metric: str) -> dict[str, float]:
    """seed -> the run's per-seed mean of `metric` on `kind` for `method` (seeds where it is defined)."""
    out = {}
    for seed, reports in run["per_seed"].items():
        value = reports.get(method, {}).get(kind, {}).get("mean", {}).get(metric)
        if value is not None:
            out[str(seed)] = float(value)
    return out


def mean_std(values) -> str:
    values = list(values)
    if not values:
        return "n/a"
    spread = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {spread:.3f}"


def compare(base: dict, variants: dict[str, dict], methods: tuple[str, ...]) -> tuple[str, dict]:
    """Markdown table and the numbers behind it: {run name: {method: {"kind/metric": {"values", "diffs"}}}}."""
    runs = {"base": base, **variants}
    header = ["run", "method", "seeds"] + [f"{k} {SHORT[m]}" for k, m in KINDS_METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    numbers: dict = {}
    for name, run in runs.items():
        for method in methods:
            cells, record = [name, method], {}
            seeds = None
            for kind, metric in KINDS_METRICS:
                values = per_seed_values(run, method, kind, metric)
                if not values:
                    cells.append("n/a")
                    continue
                seeds = seeds or sorted(values)
                text = mean_std(values.values())
                entry = {"values": values}
                if name != "base":
                    reference = per_seed_values(base, method, kind, metric)
                    diffs = {s: values[s] - reference[s] for s in values if s in reference}
                    if diffs:
                        entry["diffs"] = diffs
                        text += (f" ({statistics.fmean(diffs.values()):+.3f}: "
                                 + ", ".join(f"{d:+.3f}" for d in diffs.values()) + ")")
                record[f"{kind}/{metric}"] = entry
                cells.append(text)
            if not record:
                continue
            cells.insert(2, ",".join(seeds or []))
            lines.append("| " + " | ".join(cells) + " |")
            numbers.setdefault(name, {})[method] = record
    note = ("Cells: mean ± std over the run's seeds; for a variant, in brackets, the paired difference to the base "
            "run's same method (mean: per seed).")
    return "\n".join(lines) + "\n\n" + note, numbers


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="JSON of the base run")
    parser.add_argument("variants", nargs="+", metavar="NAME=JSON", help="JSON of a variant, with a row label")
    parser.add_argument("--methods", nargs="+",
                        default=["sadm", "sadm_segmentation", "nnunet", "late_fusion", "unsupervised"])
    parser.add_argument("--output", type=Path, help="write the Markdown table here")
    args = parser.parse_args(argv)

    def load(path: Path) -> dict:
        try:
            run = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"{path}: not a readable quality-benchmark JSON ({e})") from e
        if "per_seed" not in run:
            raise SystemExit(f"{path}: has no 'per_seed' results; expected the JSON of quality_benchmark.py --output")
        return run

    base = load(args.base)
    variants = {}
    for item in args.variants:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"expected NAME=JSON; found '{item}'")
        run = load(Path(path))
        shared = set(map(str, run["seeds"])) & set(map(str, base["seeds"]))
        if not shared:
            raise SystemExit(f"{path}: seeds {run['seeds']} share none with the base run's {base['seeds']}")
        variants[name] = run
    table, numbers = compare(base, variants, tuple(args.methods))
    print(table)
    if args.output:
        from sadm_nnunet.io_utils import atomic_path

        with atomic_path(args.output) as tmp:
            tmp.write_text(table + "\n")
    return numbers


if __name__ == "__main__":
    main()
