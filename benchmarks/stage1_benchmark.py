"""Stage-I benchmark: training throughput of SADMDiffusionTrainer and reconstruction time per volume.

    python benchmarks/stage1_benchmark.py [--quick] [--output results.json] [--workdir DIR]

1. Training throughput (slices/s). (a) The real nnU-Net path: `SADMDiffusionTrainer` on a preprocessed nnU-Net
   dataset built from the healthy brains in `../shared/data/healthy_t1`, `on_train_start()` and then
   `train_step(next(trainer.dataloader_train))`; this includes nnU-Net's data loading and augmentation
   (single-threaded, nnUNet_n_proc_DA=0). (b) A plain diffusers loop with the same UNet2DModel config, batch size,
   noise, scheduler, Adam, L1 loss, gradient clipping and EMA update, fed from random tensors already in memory.
   The ratio (a)/(b) is what nnU-Net's machinery costs; the target is >= 0.9.
2. Reconstruction time per 96x96x50 volume (real healthy slices, z-scored inside the brain mask) with
   `Reconstructor`: the default single-step ensemble, iterative DDPM with 500 steps from t=500 (extrapolated from a
   short run with the same per-step work unless --iterative-probe-steps 500), and patch-wise (patch_grid=2).

Medians over repeats; every ratio is against a baseline measured in the same run. `--quick` uses a tiny UNet and
tiny data (for CI, < 60 s); it never fails because of a timing result.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEALTHY_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "healthy_t1"
DATASET_ID = 990
DATASET_NAME = f"Dataset{DATASET_ID}_BenchHealthy"
CONFIGURATION = "2d"
TARGET_RATIO = 0.9
TINY_UNET = ["unet.base_channels=8", "unet.max_channels=16", "unet.norm_num_groups=4", "unet.layers_per_block=1"]

# Everything that differs between the full run and --quick.
MODES = {
    "full": dict(num_cases=6, zoom=1.0, spacing=2.0, unet_overrides=[], warmup=2, iterations=10,
                 volume_shape=(1, 1, 50, 96, 96), recon_repeats=3, patch_repeats=1, iterative_probe_steps=5,
                 iterative_repeats=1),
    "quick": dict(num_cases=3, zoom=0.5, spacing=4.0, unet_overrides=TINY_UNET, warmup=1, iterations=3,
                  volume_shape=(1, 1, 8, 48, 48), recon_repeats=2, patch_repeats=1, iterative_probe_steps=2,
                  iterative_repeats=1),
}
ITERATIVE_STEPS = 500
ITERATIVE_LEVEL = 500


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny UNet, tiny data, a few iterations (CI, < 60 s)")
    p.add_argument("--output", type=Path, help="write the results to this JSON file")
    p.add_argument("--workdir", type=Path,
                   help="folder for nnUNet_raw/preprocessed/results (kept afterwards; default: a temporary folder)")
    p.add_argument("--source", type=Path, default=HEALTHY_SOURCE,
                   help=f"folder of healthy '*_t1.nii.gz' brains (default: {HEALTHY_SOURCE})")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--iterations", type=int, help="timed training iterations per path (overrides the mode)")
    p.add_argument("--warmup", type=int, help="untimed training iterations per path (overrides the mode)")
    p.add_argument("--iterative-probe-steps", type=int,
                   help=f"steps actually run for the {ITERATIVE_STEPS}-step iterative reconstruction; the time is "
                        f"extrapolated linearly unless this is {ITERATIVE_STEPS} (slow on CPU)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# dataset


def nnunet_env(workdir: Path) -> dict[str, str]:
    return {"nnUNet_raw": str(workdir / "nnUNet_raw"), "nnUNet_preprocessed": str(workdir / "nnUNet_preprocessed"),
            "nnUNet_results": str(workdir / "nnUNet_results")}


def console_script(name: str) -> str:
    """The console script of this interpreter's environment (falls back to PATH)."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"Console script '{name}' is neither beside {sys.executable} nor on PATH")
    return found


def prepare_dataset(workdir: Path, source: Path, mode: dict, log) -> dict:
    """Builds the healthy raw dataset, runs nnU-Net planning and preprocessing (2d), and (for --quick) writes a
    tiny `sadm_diffusion` block into the plans. Returns timings of the steps."""
    from sadm_nnunet.datasets.healthy_cohort import build_healthy_dataset

    if not source.is_dir():
        raise FileNotFoundError(f"Healthy source folder {source} does not exist (pass --source)")
    timings = {}
    raw = workdir / "nnUNet_raw" / DATASET_NAME
    for folder in (raw, workdir / "nnUNet_preprocessed" / DATASET_NAME, workdir / "nnUNet_results" / DATASET_NAME):
        shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    build_healthy_dataset(source, raw, mode["num_cases"], seed=0, zoom=mode["zoom"], spacing=mode["spacing"])
    timings["build_raw_dataset_s"] = time.perf_counter() - t0

    # Planning needs at least one worker process (nnUNet_n_proc_DA=0 crashes it); training below uses 0.
    env = dict(os.environ, **nnunet_env(workdir), nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1")
    cmd = [console_script("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", CONFIGURATION,
           "-np", "1", "-npfp", "1"]
    log_file = workdir / "plan_and_preprocess.log"
    t0 = time.perf_counter()
    with open(log_file, "w") as f:
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    timings["plan_and_preprocess_s"] = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log_file.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}; end of {log_file}:\n{tail}")

    if mode["unet_overrides"]:
        from sadm_nnunet.commands.plan_diffusion import main as plan_diffusion

        t0 = time.perf_counter()
        with contextlib.redirect_stdout(log):
            plan_diffusion([str(DATASET_ID), "-c", CONFIGURATION, "--set", *mode["unet_overrides"]])
        timings["plan_diffusion_s"] = time.perf_counter() - t0
    return timings


def make_trainer(device):
    """SADMDiffusionTrainer built as nnunetv2.run.run_training.get_trainer_from_args builds a trainer."""
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed

    from sadm_nnunet.training.diffusion_trainer import SADMDiffusionTrainer

    folder = join(nnUNet_preprocessed, DATASET_NAME)
    plans = load_json(join(folder, "nnUNetPlans.json"))
    plans["continue_training"] = False
    dataset_json = load_json(join(folder, "dataset.json"))
    return SADMDiffusionTrainer(plans=plans, configuration=CONFIGURATION, fold="all", dataset_json=dataset_json,
                                device=device)


# ---------------------------------------------------------------------------------------------------------------
# training throughput


class PlainDiffusersLoop:
    """The baseline: the same denoiser, noise, scheduler, optimiser and loss as the trainer's `train_step`,
    without nnU-Net, fed from tensors already in memory."""

    def __init__(self, settings, patch_size, channels: int, batch_size: int, device, pool: int = 4) -> None:
        import torch

        from sadm_nnunet.diffusion.model import Denoiser, make_scheduler

        self.torch = torch
        self.settings = settings
        self.device = device
        self.model = Denoiser.from_settings(settings, tuple(patch_size), channels).to(device)
        self.model.train()
        self.scheduler = make_scheduler(settings)
        self.optimizer = torch.optim.Adam(self.model.trainable_parameters(), lr=settings.training.learning_rate,
                                          weight_decay=settings.training.weight_decay)
        self.loss = torch.nn.L1Loss()
        self.batches = [torch.randn(batch_size, channels, *patch_size, device=device) for _ in range(pool)]
        self.i = 0

    def step(self) -> float:
        from sadm_nnunet.diffusion.noise import sample_noise

        torch = self.torch
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        x0 = self.settings.to_model_space(batch)
        t = torch.randint(0, self.settings.num_train_timesteps, (x0.shape[0],), device=self.device)
        noise = sample_noise(tuple(x0.shape), self.settings.noise, None, self.device)
        noisy = self.scheduler.add_noise(x0, noise, t)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.model(noisy, t).float(), x0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.trainable_parameters(), self.settings.training.grad_clip)
        self.optimizer.step()
        self.model.update_ema()
        return float(loss.detach())


def benchmark_training(trainer, mode: dict, log) -> dict:
    """Alternates blocks of trainer and baseline iterations (so drift hits both alike); per-iteration times."""
    batch_size = trainer.batch_size
    patch_size = tuple(int(p) for p in trainer.configuration_manager.patch_size)
    channels = trainer.num_input_channels
    baseline = PlainDiffusersLoop(trainer.settings, patch_size, channels, batch_size, trainer.device)

    def trainer_iteration() -> tuple[float, float]:
        t0 = time.perf_counter()
        batch = next(trainer.dataloader_train)
        t1 = time.perf_counter()
        trainer.train_step(batch)
        t2 = time.perf_counter()
        assert batch["data"].shape[0] == batch_size, batch["data"].shape
        return t2 - t0, t1 - t0

    def baseline_iteration() -> float:
        t0 = time.perf_counter()
        baseline.step()
        return time.perf_counter() - t0

    with contextlib.redirect_stdout(log):
        trainer.on_train_epoch_start()
    for _ in range(mode["warmup"]):
        trainer_iteration()
        baseline_iteration()
    trainer_times, loading_times, baseline_times = [], [], []
    n = mode["iterations"]
    block = max(1, min(5, n // 2))
    while len(trainer_times) < n:
        for _ in range(min(block, n - len(trainer_times))):
            total, loading = trainer_iteration()
            trainer_times.append(total)
            loading_times.append(loading)
        for _ in range(min(block, n - len(baseline_times))):
            baseline_times.append(baseline_iteration())

    med_trainer, med_baseline = statistics.median(trainer_times), statistics.median(baseline_times)
    med_loading = statistics.median(loading_times)
    from sadm_nnunet.diffusion.settings import unet_config

    cfg = unet_config(trainer.settings, patch_size, channels)
    n_params = sum(p.numel() for p in trainer.denoiser().trainable_parameters())
    return {
        "batch_size": batch_size,
        "patch_size": list(patch_size),
        "channels": channels,
        "unet_block_out_channels": list(cfg["block_out_channels"]),
        "unet_layers_per_block": cfg["layers_per_block"],
        "unet_parameters": n_params,
        "warmup_iterations": mode["warmup"],
        "timed_iterations": n,
        "nnunet": {"median_s_per_iteration": med_trainer, "slices_per_s": batch_size / med_trainer,
                   "iteration_times_s": trainer_times,
                   "median_data_loading_s": med_loading, "data_loading_times_s": loading_times},
        "plain_diffusers": {"median_s_per_iteration": med_baseline, "slices_per_s": batch_size / med_baseline,
                            "iteration_times_s": baseline_times},
        "ratio_nnunet_to_plain": med_baseline / med_trainer,
        "target_ratio": TARGET_RATIO,
        "target_met": med_baseline / med_trainer >= TARGET_RATIO,
    }


# ---------------------------------------------------------------------------------------------------------------
# reconstruction


def healthy_volume(source: Path, shape: tuple[int, ...]):
    """(1, 1, D, H, W) float32 tensor: D central axial slices of one healthy brain, resampled in-plane to H x W and
    z-scored inside the brain mask (0 outside), as nnU-Net's ZScoreNormalization with use_mask_for_norm does."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from sadm_nnunet.datasets.healthy_cohort import load_brains

    _, image, mask = load_brains(source)[0]
    _, _, d, h, w = shape
    start = max(0, image.shape[2] // 2 - d // 2)
    img = torch.from_numpy(np.ascontiguousarray(image[:, :, start:start + d].transpose(2, 0, 1)))  # (D, X, Y)
    msk = torch.from_numpy(np.ascontiguousarray(mask[:, :, start:start + d].transpose(2, 0, 1))).float()
    img = F.interpolate(img[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    msk = F.interpolate(msk[:, None], size=(h, w), mode="nearest")[:, 0] > 0.5
    inside = img[msk]
    z = torch.where(msk, (img - inside.mean()) / inside.std().clamp_min(1e-8), torch.zeros_like(img))
    return z[None, None].float().contiguous()


def time_calls(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def benchmark_reconstruction(unet, settings, volume, mode: dict, probe_steps: int) -> dict:
    """Seconds per volume and network passes per slice of the reconstruction variants."""
    from sadm_nnunet.diffusion.reconstruction import Reconstructor

    default = settings.reconstruction
    iterative = dataclasses.replace(default, method="iterative", noise_levels=(ITERATIVE_LEVEL,), sampler="ddpm",
                                    num_steps=ITERATIVE_STEPS, patch_grid=1, seed=0, batch_size=50)
    patchwise = dataclasses.replace(default, patch_grid=2)
    rows = []

    def measure(name: str, options, repeats: int) -> dict:
        rec = Reconstructor(unet, settings, options)
        out = rec(volume)  # warm-up, and a shape/finite check
        if out.shape != volume.shape or not bool(out.isfinite().all()):
            raise RuntimeError(f"{name}: reconstruction has shape {tuple(out.shape)} (expected "
                               f"{tuple(volume.shape)}) or non-finite values")
        times = time_calls(lambda: rec(volume), repeats)
        return {"name": name, "options": dataclasses.asdict(options), "passes_per_slice": rec.passes_per_slice(),
                "times_s": times, "s_per_volume": statistics.median(times), "measured": True}

    single = measure("single-step ensemble (default)", default, mode["recon_repeats"])
    rows.append(single)

    target = Reconstructor(unet, settings, iterative)
    if probe_steps >= ITERATIVE_STEPS:
        rows.append(measure(f"iterative DDPM, {ITERATIVE_STEPS} steps from t={ITERATIVE_LEVEL}", iterative,
                            mode["iterative_repeats"]))
    else:
        probe = dataclasses.replace(iterative, num_steps=probe_steps)
        row = measure(f"iterative DDPM, {ITERATIVE_STEPS} steps from t={ITERATIVE_LEVEL}", probe,
                      mode["iterative_repeats"])
        probe_passes = row["passes_per_slice"]
        row.update(probe_passes_per_slice=probe_passes, probe_s_per_volume=row["s_per_volume"],
                   passes_per_slice=target.passes_per_slice(), options=dataclasses.asdict(iterative),
                   s_per_volume=row["s_per_volume"] * target.passes_per_slice() / probe_passes, measured=False)
        rows.append(row)
    rows.append(measure("patch-wise single-step (patch_grid=2)", patchwise, mode["patch_repeats"]))
    for row in rows:
        row["ratio_to_single_step"] = row["s_per_volume"] / single["s_per_volume"]
    return {"volume_shape": list(volume.shape), "variants": rows}


# ---------------------------------------------------------------------------------------------------------------
# report


def machine_info() -> dict:
    import torch

    return {"cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "device": "cpu",
            "python": platform.python_version(), "platform": platform.platform()}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("nnunetv2", "diffusers", "torch", "batchgeneratorsv2", "sadm_nnunet"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def markdown(results: dict) -> str:
    tr, rc = results["training"], results["reconstruction"]
    lines = [
        f"### Stage-I benchmark ({results['mode']}), {results['date']}",
        "",
        f"Machine: {results['machine']['cpu_count']} CPUs ({results['machine']['cpu']}), torch "
        f"{results['machine']['torch']} with {results['machine']['torch_threads']} threads, device "
        f"{results['machine']['device']}; nnunetv2 {results['versions']['nnunetv2']}, diffusers "
        f"{results['versions']['diffusers']}.",
        f"Dataset: {results['dataset']['num_cases']} healthy cases, zoom {results['dataset']['zoom']}, nnU-Net 2d "
        f"patch {tr['patch_size']}, batch {tr['batch_size']}. UNet widths {tr['unet_block_out_channels']}, "
        f"{tr['unet_layers_per_block']} layers/block, {tr['unet_parameters'] / 1e6:.2f} M parameters.",
        "",
        f"Training throughput (median of {tr['timed_iterations']} iterations after {tr['warmup_iterations']} "
        f"warm-up, per path):",
        "",
        "| path | s / iteration | slices / s | ratio to plain loop |",
        "|---|---:|---:|---:|",
        f"| (a) nnU-Net `SADMDiffusionTrainer` (loading + augmentation + `train_step`) | "
        f"{tr['nnunet']['median_s_per_iteration']:.3f} | {tr['nnunet']['slices_per_s']:.2f} | "
        f"**{tr['ratio_nnunet_to_plain']:.3f}** |",
        f"|     of which `next(dataloader_train)` (nnUNet_n_proc_DA=0) | "
        f"{tr['nnunet']['median_data_loading_s']:.3f} | | |",
        f"| (b) plain diffusers loop (in-memory tensors) | {tr['plain_diffusers']['median_s_per_iteration']:.3f} | "
        f"{tr['plain_diffusers']['slices_per_s']:.2f} | 1.000 |",
        "",
        f"Target ratio (a)/(b) >= {tr['target_ratio']}: **{'met' if tr['target_met'] else 'NOT met'}**.",
        "",
        f"Reconstruction of one {'x'.join(str(s) for s in rc['volume_shape'][2:][::-1])} volume "
        f"(shape {rc['volume_shape']}, real healthy slices):",
        "",
        "| method | passes / slice | s / volume | ratio to single-step | how |",
        "|---|---:|---:|---:|---|",
    ]
    for row in rc["variants"]:
        if row["measured"]:
            how = f"median of {len(row['times_s'])} (after 1 warm-up)"
        else:
            how = (f"**extrapolated** from {row['probe_passes_per_slice']} measured steps "
                   f"({row['probe_s_per_volume']:.2f} s) x {row['passes_per_slice']}/{row['probe_passes_per_slice']}")
        lines.append(f"| {row['name']} | {row['passes_per_slice']} | {row['s_per_volume']:.2f} | "
                     f"{row['ratio_to_single_step']:.2f} | {how} |")
    lines += ["", f"Total run time: {results['runtime_s']:.1f} s (dataset preparation "
              f"{sum(results['dataset']['timings'].values()):.1f} s)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    mode_name = "quick" if args.quick else "full"
    mode = dict(MODES[mode_name])
    for key in ("iterations", "warmup", "iterative_probe_steps"):
        if getattr(args, key) is not None:
            mode[key] = getattr(args, key)
    if mode["iterations"] < 1 or mode["iterative_probe_steps"] < 1:
        raise SystemExit("--iterations and --iterative-probe-steps must be >= 1")

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="sadm_stage1_bench_")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    # nnU-Net reads its paths and the number of augmentation workers from the environment when it uses them.
    os.environ.update(nnunet_env(workdir))
    os.environ["nnUNet_n_proc_DA"] = "0"
    os.environ.setdefault("nnUNet_def_n_proc", "1")

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    device = torch.device("cpu")

    try:
        with open(workdir / "benchmark_stdout.log", "w") as log:
            print(f"[stage1_benchmark] mode {mode_name}; work folder {workdir}", flush=True)
            dataset_timings = prepare_dataset(workdir, args.source.resolve(), mode, log)
            print(f"[stage1_benchmark] dataset ready ({sum(dataset_timings.values()):.1f} s); training ...",
                  flush=True)
            with contextlib.redirect_stdout(log):
                trainer = make_trainer(device)
                trainer.on_train_start()
            training = benchmark_training(trainer, mode, log)
            print(f"[stage1_benchmark] training done ({time.perf_counter() - started:.1f} s); reconstruction ...",
                  flush=True)
            volume = healthy_volume(args.source.resolve(), mode["volume_shape"])
            reconstruction = benchmark_reconstruction(trainer.denoiser().ema, trainer.settings, volume, mode,
                                                      mode["iterative_probe_steps"])
    finally:
        if tmp is not None:
            tmp.cleanup()

    results = {
        "mode": mode_name,
        "date": date,
        "machine": machine_info(),
        "versions": versions(),
        "dataset": {"name": DATASET_NAME, "num_cases": mode["num_cases"], "zoom": mode["zoom"],
                    "spacing": mode["spacing"], "unet_overrides": mode["unet_overrides"],
                    "timings": dataset_timings},
        "diffusion_settings": trainer.settings.to_dict(),
        "training": training,
        "reconstruction": reconstruction,
        "runtime_s": time.perf_counter() - started,
    }
    print()
    print(markdown(results))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"\nResults written to {args.output}")
    return results


if __name__ == "__main__":
    main()
