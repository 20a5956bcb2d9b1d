"""benchmarks/gpu_check.py --dry-run: the prepared GPU check runs end to end on the CPU at tiny sizes (so it cannot
rot) and records every step."""
import json
import subprocess
import sys

import pytest

from conftest import REPO
from test_benchmarks import check_stage1_report, check_stage2_report


@pytest.mark.slow  # runs the stage-I and stage-II benchmarks' quick modes
def test_gpu_check_dry_run_records_every_step(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--budget", "900",
                           "--output", str(out)], capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = json.loads(out.read_text())["steps"]
    assert list(steps) == ["precision", "compile", "stage1_default", "stage2_default", "score", "stage1_paper",
                           "stage2_paper"]
    assert [steps[s]["status"] for s in ("stage1_paper", "stage2_paper")] == ["skipped"] * 2
    not_ok = {k: v for k, v in steps.items() if v["status"] != "ok" and not k.endswith("_paper")}
    assert not not_ok, not_ok  # a failed step has its error, a skipped one the budget left
    drift = steps["precision"]["result"]["default"]
    assert drift["float16"]["max_over_contrast"] < 0.05 and drift["bfloat16"]["max_over_contrast"] < 0.05
    compiled = steps["compile"]["result"]
    assert compiled["max_abs_compiled_minus_eager"] < 1e-5
    assert len(set(compiled["unique_graphs_after_each_tile"])) == 1  # no recompiles per tile
    # the benchmarks' quick modes, checked here rather than run a second time in tests/test_benchmarks.py
    check_stage1_report(steps["stage1_default"]["result"])
    check_stage2_report(steps["stage2_default"]["result"], "2d")
    scored = steps["score"]["result"]
    assert scored["cases"] >= 1 and scored["beta"] == 0.5 and scored["predict_s"] > 0 and scored["score_s"] > 0
    assert scored["p_fg_outside_unit_interval"] < 1e-3  # the fused score decomposes into the two maps
