"""One prepared GPU check: the CUDA paths that CI (CPU only) cannot run, in under 6 minutes on one NVIDIA GPU.

    python benchmarks/gpu_check.py --output gpu_check.json [--workdir DIR] [--budget 330]
    python benchmarks/gpu_check.py --dry-run --output gpu_check.json      # CPU, tiny sizes (CI)

Steps, each timed; a failing step is recorded with its error and the script goes on; the JSON file is rewritten
after every step, so a run cut short still leaves every number measured so far:

1. `precision`: the reconstruction residual under CUDA float16 and bfloat16 autocast (what nnU-Net's training,
   validation and prediction run) against float32, for the default and the paper-size denoiser (random weights),
   beside the residual contrast of a +2 z-score lesion (tests/test_mixed_precision.py does this on the CPU).
2. `compile`: the SADM network (default denoiser) compiled with nnU-Net's call, `torch.compile(network)` (inductor
   on CUDA; aot_eager in --dry-run): max |compiled - eager| and the number of compiled graphs after a tile and after
   four more tiles and their mirrored copies (tests/test_compile.py on the CPU).
3. `stage1_default`, `stage1_paper`: benchmarks/stage1_benchmark.py --device cuda (SADMDiffusionTrainer's real
   train_step after on_train_start, so torch.compile and AMP as nnU-Net sets them up on CUDA; reconstruction times).
4. `stage2_default`, `stage2_paper`: benchmarks/stage2_benchmark.py --device cuda (nnUNetv2_train with SADMTrainer and
   nnU-Net's trainer, compile and AMP at nnU-Net's defaults, then nnUNetv2_predict on a held-out case).
5. `score`: with the SADM model that `stage2_default` trained, `nnUNetv2_predict --save_probabilities` and
   `sadm_nnunet_score --device cuda` on the held-out cases: times, and the maps checked (finite, in [0, 1], the
   fused score = beta * unsupervised + (1 - beta) * p_fg within float16 rounding).

The time budget (--budget seconds, default 330) is shared: each benchmark gets a slice and steps that no longer fit
are recorded as skipped. --dry-run runs everything on the CPU with the benchmarks' --quick sizes and skips the
paper-size benchmarks (hours on a CPU); it exists so that this script cannot rot (tests/test_gpu_check.py).
Not covered here: multi-GPU DDP (one GPU; tests/test_ddp.py runs our DDP code in a gloo group).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (PAPER_UNET, TRAINERS_FOLDER, machine_info, nnunet_env, now, prepare_workdir,  # noqa: E402
                    unet_setting, versions)

from sadm_nnunet.io_utils import write_json_atomic  # noqa: E402

LESION = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, default=Path("gpu_check.json"), help="the JSON file of every number")
    p.add_argument("--workdir", type=Path, help="work folder (kept; default: a temporary folder)")
    p.add_argument("--budget", type=float, default=330.0, help="seconds for all steps together (default 330)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, no paper-size benchmarks (CI)")
    return p.parse_args(argv)


def denoiser_settings(unet: tuple[str, ...]):
    from sadm_nnunet.diffusion.settings import DiffusionSettings

    return DiffusionSettings.from_dict({"unet": dict(unet_setting(item) for item in unet)})


def lesion_slices(n: int, size: tuple[int, int], device):
    """(n, 1, H, W) smooth z-scored 'brain' slices with a +LESION square, and the lesion's mask."""
    import torch

    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size[0]), torch.linspace(-1, 1, size[1]), indexing="ij")
    x = ((xx ** 2 + yy ** 2) < 0.8) * torch.nn.functional.avg_pool2d(torch.randn(n, 1, *size, generator=g), 5, 1, 2) * 3
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[..., size[0] // 3:size[0] // 2, size[1] // 3:size[1] // 2] = True
    return (x + LESION * mask).to(device), mask.to(device)


def precision(device, sizes: dict[str, tuple[str, ...]], size: tuple[int, int]) -> dict:
    import torch

    from sadm_nnunet.diffusion.model import EMADenoiser
    from sadm_nnunet.diffusion.reconstruction import Reconstructor

    x, mask = lesion_slices(4, size, device)
    out = {}
    for name, unet in sizes.items():
        settings = denoiser_settings(unet)
        torch.manual_seed(0)
        model = EMADenoiser.from_settings(settings, size, 1).ema.to(device)
        rec = Reconstructor(model, settings)
        reference = x - rec(x)
        contrast = float(reference[mask].mean() - reference[~mask & (x != 0)].mean())
        row = {"lesion_residual_contrast": contrast}
        for dtype in (torch.float16, torch.bfloat16):
            with torch.autocast(device.type, dtype=dtype):
                drift = (x - rec(x).float() - reference).abs()
            row[str(dtype).split(".")[1]] = {"max_abs": float(drift.max()), "mean_abs": float(drift.mean()),
                                             "max_over_contrast": float(drift.max()) / contrast}
        out[name] = row
    return out


def compiled_network(device, backend: str, size: tuple[int, int]) -> dict:
    import torch
    import torch._dynamo as dynamo

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_plans import tiny_plans, tiny_sadm_network

    plans = tiny_plans(denoiser_settings(()))  # the default denoiser on the tiny plans' 32x32 patches
    eager = tiny_sadm_network(plans).eval().to(device)
    compiled = torch.compile(tiny_sadm_network(plans).eval().to(device), **({"backend": backend} if backend else {}))
    dynamo.utils.counters.clear()
    tiles, worst, graphs = [lesion_slices(1, size, device)[0] * (1 + s) for s in range(5)], 0.0, []
    started = time.perf_counter()
    with torch.no_grad():
        for tile in tiles:
            for t in (tile, torch.flip(tile, [3])):
                worst = max(worst, float((compiled(t) - eager(t)).abs().max()))
            graphs.append(dynamo.utils.counters["stats"]["unique_graphs"])
    return {"backend": backend or "inductor (default)", "max_abs_compiled_minus_eager": worst,
            "unique_graphs_after_each_tile": graphs, "graph_break_reasons": sorted(
                r.split("\n")[0] for r in dynamo.utils.counters["graph_break"]),
            "seconds": time.perf_counter() - started}


def benchmark(script: str, workdir: Path, device: str, quick: bool, unet: tuple[str, ...] | None,
              budget: float) -> dict:
    """Runs a benchmark script in its own process (nnU-Net reads its path variables once per process) with a time
    budget, killed when it overruns it by 2x + 120 s (set-up is outside the budget); returns its JSON results."""
    out = workdir / "results.json"
    cmd = [sys.executable, str(Path(__file__).resolve().parent / f"{script}.py"), "--device", device,
           "--workdir", str(workdir), "--time-budget", f"{max(budget, 20):.0f}", "--output", str(out)]
    cmd += ["--quick"] if quick else []
    cmd += ["--unet", *unet] if unet else []
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=2 * max(budget, 20) + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} exited with {proc.returncode}: {proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def score_predictions(workdir: Path, device: str) -> dict:
    """nnUNetv2_predict --save_probabilities, then sadm_nnunet_score, with the SADM model stage2_benchmark trained
    in `workdir` (its nnU-Net folders and trainers), on its held-out cases; the maps are read back and checked."""
    import os

    import nibabel as nib
    import numpy as np

    import stage2_benchmark as s2

    from sadm_nnunet.commands.score import SETTINGS_FILE
    from sadm_nnunet.nnunet_plans import sadm_configuration_name

    env = {**os.environ, **nnunet_env(workdir), "nnUNet_extTrainer": str(TRAINERS_FOLDER),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # this environment's commands
    configuration = sadm_configuration_name("2d")
    images = workdir / "nnUNet_raw" / s2.DATASET_NAME / "imagesTs"
    predictions, scores = workdir / "score_check" / "predictions", workdir / "score_check" / "scores"
    model = ["-d", str(s2.DATASET_ID), "-c", configuration, "-tr", s2.SADM_TRAINER, "-f", s2.FOLD]
    commands = {"predict_s": ["nnUNetv2_predict", "-i", str(images), "-o", str(predictions), *model,
                              "--save_probabilities", "-device", device, "-npp", "1", "-nps", "1"],
                "score_s": ["sadm_nnunet_score", "-i", str(images), "-pred", str(predictions), "-o", str(scores),
                            *model, "--device", device]}
    out = {}
    for key, cmd in commands.items():
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: {proc.stderr[-3000:]}")
        out[key] = time.perf_counter() - t0
    beta = json.loads((scores / SETTINGS_FILE).read_text())["beta"]
    cases = sorted(p.name[:-len("_score.nii.gz")] for p in scores.glob("*_score.nii.gz"))
    if not cases:
        raise RuntimeError(f"sadm_nnunet_score wrote no CASE_score.nii.gz into {scores}")
    worst = 0.0
    for case in cases:
        fused, unsupervised = (np.asarray(nib.load(str(scores / f"{case}_{m}.nii.gz")).dataobj, dtype=np.float64)
                               for m in ("score", "unsupervised"))
        if not (np.isfinite(fused).all() and fused.min() >= 0 and fused.max() <= 1):
            raise RuntimeError(f"{case}: fused score outside [0, 1] or not finite")
        p_fg = (fused - beta * unsupervised) / (1 - beta) if beta < 1 else None
        if p_fg is not None:
            worst = max(worst, float(np.maximum(-p_fg, p_fg - 1).max()))  # p_fg must lie in [0, 1]
    return {**out, "cases": len(cases), "beta": beta, "p_fg_outside_unit_interval": worst}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    import torch

    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: torch finds no CUDA device (use --dry-run on a CPU)")
    tmp, workdir = prepare_workdir(args.workdir, "sadm_gpu_check_")
    report = {"date": now(), "dry_run": args.dry_run, "machine": machine_info(device), "versions": versions(),
              "budget_s": args.budget, "steps": {}}
    sizes = {"default": (), "paper": PAPER_UNET}
    # (name, share of the budget, function); benchmark shares are of what is left when they start
    steps = [
        ("precision", None, lambda b: precision(device, sizes if not args.dry_run else {"default": ()},
                                                (96, 80) if not args.dry_run else (32, 32))),
        ("compile", None, lambda b: compiled_network(device, "aot_eager" if args.dry_run else "", (32, 32))),
        ("stage1_default", 0.25, lambda b: benchmark("stage1_benchmark", workdir / "s1d", device.type, args.dry_run,
                                                     None, b)),
        ("stage2_default", 0.4, lambda b: benchmark("stage2_benchmark", workdir / "s2d", device.type, args.dry_run,
                                                    None, b)),
        ("score", None, lambda b: score_predictions(workdir / "s2d", device.type)),
        ("stage1_paper", 0.4, lambda b: benchmark("stage1_benchmark", workdir / "s1p", device.type, False,
                                                  PAPER_UNET, b)),
        ("stage2_paper", 0.9, lambda b: benchmark("stage2_benchmark", workdir / "s2p", device.type, False,
                                                  PAPER_UNET, b)),
    ]
    try:
        for name, share, run in steps:
            left = args.budget - (time.perf_counter() - started)
            if args.dry_run and name.endswith("_paper"):
                report["steps"][name] = {"status": "skipped", "reason": "paper-size denoiser: GPU only"}
            elif left < 30:
                report["steps"][name] = {"status": "skipped", "reason": f"{left:.0f} s of the budget left"}
            else:
                t0 = time.perf_counter()
                try:
                    result = run(left * share if share else left)
                    report["steps"][name] = {"status": "ok", "seconds": time.perf_counter() - t0, "result": result}
                except BaseException as e:  # noqa: BLE001  (a failing step is recorded; the check goes on)
                    if isinstance(e, KeyboardInterrupt):
                        raise
                    report["steps"][name] = {"status": "failed", "seconds": time.perf_counter() - t0,
                                             "error": f"{type(e).__name__}: {e}",
                                             "traceback": traceback.format_exc()[-4000:]}
            print(f"[gpu_check] {name}: {report['steps'][name]['status']} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
            report["runtime_s"] = time.perf_counter() - started
            if device.type == "cuda":
                report["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
            write_json_atomic(json.loads(json.dumps(report, default=str)), args.output)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return report


if __name__ == "__main__":
    main()
