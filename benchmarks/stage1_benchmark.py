"""Stage-I benchmark: training throughput of SADMDiffusionTrainer and reconstruction time per volume (CPU or GPU).

    python benchmarks/stage1_benchmark.py [--quick] [--output results.json] [--workdir DIR] [--threads 2]
                                          [--device cpu|cuda]

1. Training throughput (slices/s). (a) The real nnU-Net path: `SADMDiffusionTrainer` on a preprocessed nnU-Net
   dataset built from the healthy brains in `../shared/data/healthy_t1`: `on_train_start()`, then
   `train_step(next(trainer.dataloader_train))`, which includes nnU-Net's data loading and augmentation
   (single-threaded, nnUNet_n_proc_DA=0). (b) A plain diffusers loop with the same UNet2DModel config, batch size,
   noise, scheduler, Adam, L1 loss, gradient clipping and EMA update, fed from random tensors already in memory.
   Iterations of (a) and (b) alternate, so machine load hits both alike. The ratio (a)/(b) is what nnU-Net's
   machinery costs; the target is >= 0.9.
2. Reconstruction time per 96x96x50 volume (real healthy slices, z-scored inside the brain mask) with
   `Reconstructor`: the default single-step ensemble, iterative DDPM with 500 steps from t=500, and patch-wise
   (patch_grid=2). A variant that would not fit in the time budget is run with fewer steps (iterative) or slices
   (patch-wise) and extrapolated linearly in network passes; the table says so.

Medians over repeats; every ratio is against a baseline measured in the same run. With `--device cuda` both
paths and the reconstruction run on the GPU (timings synchronise it) and the report adds the GPU's name and its
peak allocated memory. `--quick` uses a tiny UNet and
tiny data (for CI, well under 60 s); it never fails because of a timing result.

Threads: torch runs with `--threads` (default 2) intra-op threads and, unless OMP_WAIT_POLICY is already set,
OMP_WAIT_POLICY=PASSIVE. On the 2-vCPU development VMs libgomp's default spin-waiting makes every small op cost
~8 ms with 2 threads (a 50x slowdown of the tiny-UNet run, 1.7x of the default one); passive waiting avoids it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# common sets OMP_WAIT_POLICY before torch (libgomp) is loaded; see the module docstring.
from common import (console_script, format_load, machine_info, nnunet_env, now, prepare_workdir,  # noqa: E402
                    select_mode, synchronize, timing_arguments, versions, write_report)

DATASET_ID = 990
DATASET_NAME = f"Dataset{DATASET_ID}_BenchHealthy"
CONFIGURATION = "2d"
TARGET_RATIO = 0.9
TINY_UNET = ["unet.base_channels=8", "unet.max_channels=16", "unet.norm_num_groups=4", "unet.layers_per_block=1"]
ITERATIVE_STEPS = 500
ITERATIVE_LEVEL = 500

# Everything that differs between the full run and --quick. Training runs between min_iterations and iterations
# timed iterations per path, as many as fit before `train_share` of the time budget is spent; a reconstruction
# variant that would not fit in what is left is run shorter (fewer steps or slices) and extrapolated.
MODES = {
    "full": dict(num_cases=6, zoom=1.0, spacing=2.0, unet_overrides=[], warmup=1, min_iterations=3, iterations=10,
                 volume_shape=(1, 1, 50, 96, 96), recon_repeats=3, time_budget_s=480.0, train_share=0.45),
    "quick": dict(num_cases=3, zoom=0.5, spacing=4.0, unet_overrides=TINY_UNET, warmup=1, min_iterations=3,
                  iterations=8, volume_shape=(1, 1, 8, 48, 48), recon_repeats=3, time_budget_s=40.0,
                  train_share=0.8),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = timing_arguments(__doc__, quick="tiny UNet, tiny data, a few iterations (CI)",
                         threads="torch.set_num_threads (default 2)",
                         device="where training and reconstruction run")
    p.add_argument("--iterations", type=int, help="most timed training iterations per path (default: by mode)")
    p.add_argument("--min-iterations", type=int, help="fewest timed training iterations per path")
    p.add_argument("--warmup", type=int, help="untimed training iterations per path")
    p.add_argument("--time-budget", type=float, dest="time_budget_s",
                   help="seconds the whole run aims at (default: 480 full, 40 quick); sizes the measurements")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# dataset and trainer


def prepare_dataset(workdir: Path, source: Path, mode: dict, log) -> dict:
    """Builds the healthy raw dataset, runs nnU-Net planning and preprocessing (2d) and, for --quick, writes a tiny
    `sadm_diffusion` block into the plans with sadm_nnunet_plan_diffusion. Returns the time of each step."""
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
    """SADMDiffusionTrainer built the way nnunetv2.run.run_training.get_trainer_from_args builds a trainer."""
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
    """The baseline: the trainer's `train_step` arithmetic (same denoiser config, noise, scheduler, Adam, L1 loss,
    gradient clipping, EMA update) without nnU-Net, fed from tensors already in memory."""

    def __init__(self, settings, patch_size, channels: int, batch_size: int, device, pool: int = 4) -> None:
        import torch

        from sadm_nnunet.diffusion.model import EMADenoiser, make_scheduler

        self.settings = settings
        self.device = device
        self.model = EMADenoiser.from_settings(settings, tuple(patch_size), channels).to(device)
        self.model.train()
        self.scheduler = make_scheduler(settings)
        self.optimizer = torch.optim.Adam(self.model.trainable_parameters(), lr=settings.training.learning_rate,
                                          weight_decay=settings.training.weight_decay)
        self.loss = torch.nn.L1Loss()
        self.batches = [torch.randn(batch_size, channels, *patch_size, device=device) for _ in range(pool)]
        self.i = 0

    def step(self) -> float:
        import torch

        from sadm_nnunet.diffusion.noise import sample_noise

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


def benchmark_training(trainer, mode: dict, deadline: float, log) -> dict:
    """Alternates trainer and baseline iterations; per-iteration wall times, medians and the ratio."""
    from sadm_nnunet.diffusion.settings import unet_config

    batch_size = trainer.batch_size
    patch_size = tuple(int(p) for p in trainer.configuration_manager.patch_size)
    channels = trainer.num_input_channels
    baseline = PlainDiffusersLoop(trainer.settings, patch_size, channels, batch_size, trainer.device)

    def trainer_iteration() -> tuple[float, float]:
        t0 = time.perf_counter()
        batch = next(trainer.dataloader_train)
        t1 = time.perf_counter()
        out = trainer.train_step(batch)
        t2 = time.perf_counter()
        if batch["data"].shape[0] != batch_size or not math.isfinite(float(out["loss"])):
            raise RuntimeError(f"trainer step: batch {tuple(batch['data'].shape)}, loss {out['loss']}")
        return t2 - t0, t1 - t0

    def baseline_iteration() -> float:
        t0 = time.perf_counter()
        loss = baseline.step()
        if not math.isfinite(loss):
            raise RuntimeError(f"baseline step: loss {loss}")
        return time.perf_counter() - t0

    with contextlib.redirect_stdout(log):
        trainer.on_train_epoch_start()
    for _ in range(mode["warmup"]):
        trainer_iteration()
        baseline_iteration()
    trainer_times, loading_times, baseline_times = [], [], []
    while len(trainer_times) < mode["iterations"]:
        t0 = time.perf_counter()
        total, loading = trainer_iteration()
        trainer_times.append(total)
        loading_times.append(loading)
        baseline_times.append(baseline_iteration())
        pair = time.perf_counter() - t0
        if len(trainer_times) >= mode["min_iterations"] and time.perf_counter() + pair > deadline:
            break

    med_trainer, med_baseline = statistics.median(trainer_times), statistics.median(baseline_times)
    cfg = unet_config(trainer.settings, patch_size, channels)
    return {
        "batch_size": batch_size,
        "patch_size": list(patch_size),
        "channels": channels,
        "unet_block_out_channels": list(cfg["block_out_channels"]),
        "unet_down_block_types": list(cfg["down_block_types"]),
        "unet_layers_per_block": cfg["layers_per_block"],
        "unet_parameters": sum(p.numel() for p in trainer.denoiser().trainable_parameters()),
        "warmup_iterations": mode["warmup"],
        "timed_iterations": len(trainer_times),
        "nnunet": {"median_s_per_iteration": med_trainer, "slices_per_s": batch_size / med_trainer,
                   "iteration_times_s": trainer_times, "median_data_loading_s": statistics.median(loading_times),
                   "data_loading_times_s": loading_times},
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
    img = torch.from_numpy(np.ascontiguousarray(image[:, :, start:start + d].transpose(2, 0, 1)))
    msk = torch.from_numpy(np.ascontiguousarray(mask[:, :, start:start + d].transpose(2, 0, 1))).float()
    img = F.interpolate(img[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    msk = F.interpolate(msk[:, None], size=(h, w), mode="nearest")[:, 0] > 0.5
    inside = img[msk]
    z = torch.where(msk, (img - inside.mean()) / inside.std().clamp_min(1e-8), torch.zeros_like(img))
    return z[None, None].float().contiguous()


def timed_reconstruction(rec, volume) -> float:
    synchronize(volume.device)
    t0 = time.perf_counter()
    out = rec(volume)
    synchronize(volume.device)
    elapsed = time.perf_counter() - t0
    if out.shape != volume.shape or not bool(out.isfinite().all()):
        raise RuntimeError(f"reconstruction has shape {tuple(out.shape)} (expected {tuple(volume.shape)}) or "
                           f"non-finite values ({dataclasses.asdict(rec.options)})")
    return elapsed


def benchmark_reconstruction(unet, settings, volume, mode: dict, deadline: float) -> dict:
    """Seconds per volume and network passes per slice of the single-step, iterative and patch-wise variants.

    Single-step (the baseline) is measured on the whole volume, then patch-wise, then iterative. Patch-wise is
    measured whole when its estimated time (passes x slices x the single-step time per slice-pass) fits before the
    deadline, keeping room for a one-step iterative probe; otherwise on fewer slices. Iterative runs as many steps
    as fit in what is left. Shortened runs are scaled by the ratio of slices or network passes and flagged.
    """
    from sadm_nnunet.diffusion.reconstruction import Reconstructor

    depth = volume.shape[2]
    default = settings.reconstruction
    patchwise = dataclasses.replace(default, patch_grid=2)
    iterative = dataclasses.replace(default, method="iterative", noise_levels=(ITERATIVE_LEVEL,), sampler="ddpm",
                                    num_steps=ITERATIVE_STEPS, patch_grid=1, seed=0, batch_size=50)
    # untimed warm-up on one slice (first-call allocations, kernel selection)
    Reconstructor(unet, settings, default)(volume[:, :, :1])

    def row(name: str, options, times: list[float], s_per_volume: float, measured: str, **extra) -> dict:
        passes = Reconstructor(unet, settings, options).passes_per_slice()
        return {"name": name, "options": dataclasses.asdict(options), "passes_per_slice": passes, "times_s": times,
                "s_per_volume": s_per_volume, "measured": measured, "extrapolated": measured != "whole volume",
                **extra}

    # single-step: repeat while the other two (about 4x and >= 1/3 of it) still fit
    rec = Reconstructor(unet, settings, default)
    times = [timed_reconstruction(rec, volume)]
    while len(times) < mode["recon_repeats"] and time.perf_counter() + times[0] * 5.5 < deadline:
        times.append(timed_reconstruction(rec, volume))
    single = row("single-step ensemble (default)", default, times, statistics.median(times), "whole volume")
    per_slice_pass = single["s_per_volume"] / (single["passes_per_slice"] * depth)
    one_step = 1.2 * depth * per_slice_pass  # a one-step iterative probe

    # patch-wise
    name = "patch-wise single-step (patch_grid=2)"
    passes = Reconstructor(unet, settings, patchwise).passes_per_slice()
    allowed = deadline - time.perf_counter() - one_step
    if passes * depth * per_slice_pass <= allowed:
        t = timed_reconstruction(Reconstructor(unet, settings, patchwise), volume)
        patch = row(name, patchwise, [t], t, "whole volume")
    else:
        slices = max(1, min(depth - 1, int(allowed / (passes * per_slice_pass))))
        t = timed_reconstruction(Reconstructor(unet, settings, patchwise), volume[:, :, :slices])
        patch = row(name, patchwise, [t], t * depth / slices,
                    f"{slices} of {depth} slices, extrapolated x {depth / slices:.1f}", probe_slices=slices)

    # iterative: as many steps as fit (>= 1). The per-step work (one pass + one sampler step) does not depend on
    # the number of steps, only the stride between timesteps does. Only step counts that divide the noise level:
    # otherwise a timestep falls off DDPMScheduler's grid and its step() raises IndexError.
    name = f"iterative DDPM, {ITERATIVE_STEPS} steps from t={ITERATIVE_LEVEL}"
    passes = Reconstructor(unet, settings, iterative).passes_per_slice()
    affordable = int((deadline - time.perf_counter()) / (depth * per_slice_pass))
    if affordable >= passes:
        t = timed_reconstruction(Reconstructor(unet, settings, iterative), volume)
        it = row(name, iterative, [t], t, "whole volume")
    else:
        steps = max([k for k in range(1, passes) if ITERATIVE_LEVEL % k == 0 and k <= affordable] or [1])
        probe = Reconstructor(unet, settings, dataclasses.replace(iterative, num_steps=steps))
        probe_passes = probe.passes_per_slice()
        t = timed_reconstruction(probe, volume)
        it = row(name, iterative, [t], t * passes / probe_passes,
                 f"{probe_passes} of {passes} steps, whole volume, extrapolated x {passes / probe_passes:.0f}",
                 probe_passes_per_slice=probe_passes)

    rows = [single, it, patch]
    for r in rows:
        r["ratio_to_single_step"] = r["s_per_volume"] / single["s_per_volume"]
    return {"volume_shape": list(volume.shape), "variants": rows}


# ---------------------------------------------------------------------------------------------------------------
# report


def markdown(results: dict) -> str:
    m, tr, rc, ds = results["machine"], results["training"], results["reconstruction"], results["dataset"]
    load = format_load(m["load_average_at_start"])
    lines = [
        f"### Stage-I benchmark ({results['mode']}), {results['date']}",
        "",
        f"- Machine: {m['cpu_count']} CPUs ({m['cpu']}), device {m['device']}"
        f"{' (' + m['gpu'] + ')' if m.get('gpu') else ''}, torch {m['torch']} with "
        f"{m['torch_threads']} threads (OMP_WAIT_POLICY={m['omp_wait_policy']}), load average at start {load}; "
        f"nnunetv2 {results['versions']['nnunetv2']}, diffusers {results['versions']['diffusers']}.",
        f"- Data: {ds['num_cases']} healthy cases (zoom {ds['zoom']}, spacing {ds['spacing']} mm); nnU-Net 2d "
        f"patch {tr['patch_size']}, batch {tr['batch_size']}.",
        f"- Denoiser: widths {tr['unet_block_out_channels']}, {tr['unet_layers_per_block']} layer(s) per block, "
        f"{tr['unet_parameters'] / 1e6:.2f} M parameters"
        f"{' (tiny --quick UNet)' if ds['unet_overrides'] else ' (template default)'}.",
        "",
        f"Training throughput, median of {tr['timed_iterations']} timed iterations per path after "
        f"{tr['warmup_iterations']} warm-up (paths alternate):",
        "",
        "| path | s / iteration | slices / s | ratio to (b) |",
        "|---|---:|---:|---:|",
        f"| (a) nnU-Net `SADMDiffusionTrainer`: `next(dataloader_train)` + `train_step` | "
        f"{tr['nnunet']['median_s_per_iteration']:.3f} | {tr['nnunet']['slices_per_s']:.2f} | "
        f"**{tr['ratio_nnunet_to_plain']:.3f}** |",
        f"| (a) of which data loading + augmentation (nnUNet_n_proc_DA=0) | "
        f"{tr['nnunet']['median_data_loading_s']:.3f} | | |",
        f"| (b) plain diffusers loop, in-memory tensors | {tr['plain_diffusers']['median_s_per_iteration']:.3f} | "
        f"{tr['plain_diffusers']['slices_per_s']:.2f} | 1.000 |",
        "",
        f"Target (a)/(b) >= {tr['target_ratio']}: **{'met' if tr['target_met'] else 'NOT met'}**.",
        "",
        f"Reconstruction of one volume of shape {rc['volume_shape']} (real healthy slices, z-scored):",
        "",
        "| method | passes / slice | s / volume | ratio to single-step | measured how |",
        "|---|---:|---:|---:|---|",
    ]
    for row in rc["variants"]:
        how = row["measured"]
        if not row["extrapolated"]:
            how += f", median of {len(row['times_s'])}" if len(row["times_s"]) > 1 else ", once"
        else:
            how = f"**extrapolated**: {how} (measured {row['times_s'][0]:.2f} s)"
        lines.append(f"| {row['name']} | {row['passes_per_slice']} | {row['s_per_volume']:.2f} | "
                     f"{row['ratio_to_single_step']:.2f} | {how} |")
    if results.get("peak_gpu_memory_mib") is not None:
        lines += ["", f"Peak GPU memory allocated by torch: {results['peak_gpu_memory_mib']:.0f} MiB."]
    lines += ["", f"Total run time {results['runtime_s']:.1f} s (time budget {results['time_budget_s']:.0f} s; "
              f"dataset preparation {sum(ds['timings'].values()):.1f} s)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    date = now()
    mode_name, mode = select_mode(args, MODES, ("iterations", "min_iterations", "warmup", "time_budget_s"))
    mode["min_iterations"] = min(mode["min_iterations"], mode["iterations"])
    if args.unet:
        mode["unet_overrides"] = [f"unet.{k}={v}" for k, v in args.unet]
    if mode["iterations"] < 1 or mode["warmup"] < 0 or args.threads < 1:
        raise SystemExit("--iterations and --threads must be >= 1, --warmup >= 0")

    tmp, workdir = prepare_workdir(args.workdir, "sadm_stage1_bench_")
    # nnU-Net reads its paths and the number of augmentation workers from the environment when it uses them.
    os.environ.update(nnunet_env(workdir))
    os.environ["nnUNet_n_proc_DA"] = "0"
    os.environ.setdefault("nnUNet_def_n_proc", "1")

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch finds no CUDA device on this machine")
    machine = machine_info(device, args.threads)
    budget_end = started + mode["time_budget_s"]

    try:
        with open(workdir / "benchmark_stdout.log", "w") as log:
            print(f"[stage1_benchmark] {mode_name} mode, work folder {workdir}, {args.threads} torch thread(s), "
                  f"time budget {mode['time_budget_s']:.0f} s", flush=True)
            dataset_timings = prepare_dataset(workdir, args.source.resolve(), mode, log)
            print(f"[stage1_benchmark] dataset ready after {time.perf_counter() - started:.1f} s; training ...",
                  flush=True)
            with contextlib.redirect_stdout(log):
                trainer = make_trainer(device)
                trainer.on_train_start()
            train_deadline = started + mode["train_share"] * mode["time_budget_s"]
            training = benchmark_training(trainer, mode, train_deadline, log)
            print(f"[stage1_benchmark] training done after {time.perf_counter() - started:.1f} s; "
                  f"reconstruction ...", flush=True)
            volume = healthy_volume(args.source.resolve(), mode["volume_shape"]).to(device)
            reconstruction = benchmark_reconstruction(trainer.denoiser().ema, trainer.settings, volume, mode,
                                                      budget_end)
            settings = trainer.settings.to_dict()
    finally:
        if tmp is not None:
            tmp.cleanup()

    results = {
        "mode": mode_name,
        "date": date,
        "machine": machine,
        "versions": versions(),
        "dataset": {"name": DATASET_NAME, "num_cases": mode["num_cases"], "zoom": mode["zoom"],
                    "spacing": mode["spacing"], "unet_overrides": mode["unet_overrides"],
                    "timings": dataset_timings},
        "diffusion_settings": settings,
        "training": training,
        "reconstruction": reconstruction,
        "time_budget_s": mode["time_budget_s"],
        "peak_gpu_memory_mib": torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None,
        "runtime_s": time.perf_counter() - started,
    }
    write_report(results, markdown(results), args.output)
    return results


if __name__ == "__main__":
    main()
