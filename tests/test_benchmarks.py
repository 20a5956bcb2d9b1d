"""The benchmark scripts keep running (quick mode); their numbers are reported, not asserted against targets."""
import json
import subprocess
import sys

from conftest import REPO


def run_quick(script: str, tmp_path) -> tuple[str, dict]:
    """Runs a benchmark script in --quick mode; returns its terminal output and its JSON results."""
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), "--quick",
                           "--workdir", str(tmp_path / "work"), "--output", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    return proc.stdout, json.loads(text)


def test_stage1_benchmark_quick_mode_runs_and_reports(tmp_path):
    stdout, _ = run_quick("stage1_benchmark.py", tmp_path)
    assert "Target (a)/(b) >= 0.9" in stdout and "passes / slice" in stdout


def test_stage2_benchmark_quick_mode_runs_and_reports(tmp_path):
    stdout, results = run_quick("stage2_benchmark.py", tmp_path)
    assert "random weights (untrained)" in stdout and "ms / tile" in stdout
    for target in ("SADM / nnU-Net <= 1.5", "peak RSS SADM / nnU-Net <= 1.3", "prediction time SADM / nnU-Net <= 1.5"):
        assert target in stdout
    training = results["training"]["trainers"]
    for trainer in ("SADMBenchTrainer", "SADMBenchBaselineTrainer"):
        assert training[trainer]["median_s_per_train_step"] > 0 and training[trainer]["peak_rss_mib"] > 0
    assert training["SADMBenchTrainer"]["median_reconstruction_s"] > 0
    assert set(results["prediction"]["variants"]) == {"SADMBenchTrainer", "SADMBenchBaselineTrainer"}


def test_quality_benchmark_quick_mode_runs_and_reports(tmp_path):
    stdout, results = run_quick("quality_benchmark.py", tmp_path)
    rows = {"unsupervised", "nnunet", "sadm", "sadm_segmentation", "sadm_draem"}
    assert set(results["summary"]) == rows and results["seeds"] == [0]
    for method in rows:
        assert set(results["summary"][method]) == {"tumour", "ms", "stroke", "healthy"}
        for kind in ("tumour", "ms", "stroke"):
            best = results["summary"][method][kind]["best_dice"]
            assert 0.0 <= best["mean"] <= 1.0 and best["seeds"] == 1 and best["std"] == 0.0
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows) and "ms (unseen): ⌈Dice⌉" in table[0]
