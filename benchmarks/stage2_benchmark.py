"""Stage-II benchmark: SADMTrainer vs nnUNetTrainer through the real nnU-Net commands (CPU or GPU).

    python benchmarks/stage2_benchmark.py [--quick] [--output results.json] [--workdir DIR] [--threads 2]
                                          [--device cpu|cuda] [--configuration 2d|3d_fullres]

1. Set-up: a tumour dataset (`build_lesion_dataset`, training cases + held-out test cases) from the healthy brains
   in `../shared/data/healthy_t1`, `nnUNetv2_plan_and_preprocess -c 2d [3d_fullres]`, a stage-I model (always on
   the 2d configuration) and `sadm_nnunet_plan -c CONFIGURATION` (`--configuration`, default 2d; 3d_fullres
   compares 3D SADM, whose denoiser reconstructs every slice of a 3D patch, with 3D nnU-Net).
   The stage-I model is an UNTRAINED denoiser (random weights) of the template's default architecture (--quick: a
   tiny one), written with `save_diffusion_model` where `sadm_nnunet_plan` looks for a trained one: speed and memory
   do not depend on the weights, and training the default denoiser on 2 CPU cores would take hours.
2. Training: `nnUNetv2_train ID 2d_sadm 0` with two benchmark-only trainers from `benchmarks/trainers/` (passed
   through `nnUNet_extTrainer`): `SADMBenchTrainer` (SADMTrainer) and `SADMBenchBaselineTrainer` (nnUNetTrainer on
   the same plans; it ignores the `sadm` block). One epoch of warm-up + timed iterations; every `train_step` is timed
   and the peak RSS of the training process is recorded. The two trainers run alternately, `--repeats` times each,
   in a fresh fold folder every time. Reported: median s per `train_step`, the ratio SADM / nnU-Net (target
   <= 1.5), peak RSS and its ratio (target <= 1.3).
3. Prediction: `nnUNetv2_predict` wall time on the test cases (-npp 1 -nps 1 -device DEVICE) for both trained models,
   alternating, median over repeats, ratio SADM / nnU-Net (target <= 1.5); SADM with --disable_tta once, for
   information (full run only).
4. Where the time goes: the SADM trainer times the reconstruction (noise + frozen denoiser) inside each training
   step, and the benchmark times, in its own process, one sliding-window tile through the reconstruction, the SADM
   segmentation network and nnU-Net's network (networks built from the plans, random weights).

The commands run in subprocesses whose environment holds only PATH, HOME, the nnU-Net variables (paths,
nnUNet_extTrainer, nnUNet_n_proc_DA=0 for training and prediction, 1 for planning, nnUNet_def_n_proc=1) and the
thread settings. Medians over repeats; every ratio compares runs of the same benchmark run. The run is sized to a
time budget (`--time-budget`, 1080 s full, 80 s quick): after `--min-repeats` rounds a further round runs only if
it fits. `--quick` (zoom 1/3, 6 mm, tiny denoiser, a few iterations; CI) never fails because of a timing result.

`--device cuda` runs training, prediction and the tile timing on the GPU (timings synchronise it); the trainers then
also record the peak GPU memory torch allocated (`torch.cuda.max_memory_allocated`), reported with its ratio next to
the peak RSS. nnUNet_n_proc_DA is 0 unless set in the environment (on a GPU, data augmentation workers matter).

Threads: nnUNetv2_train and nnUNetv2_predict set torch's threads to the number of CPUs on CPU whatever
OMP_NUM_THREADS says; `--threads` (default 2) sets OMP_NUM_THREADS/MKL_NUM_THREADS of the commands and torch's
threads for the in-process tile timing. OMP_WAIT_POLICY=PASSIVE unless already set (see common.py: libgomp's
spin-waiting slows small ops ~50x on the 2-vCPU development VMs).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent))
# common sets OMP_WAIT_POLICY before torch (libgomp) is loaded; see the module docstring.
from common import (TRAINERS_FOLDER, console_script, format_load, load_average, machine_info,  # noqa: E402
                    nnunet_env, now, prepare_workdir, select_mode, synchronize, timing_arguments, versions,
                    write_report)

TRAINERS_MODULE = "stage2_bench_trainers"
DATASET_ID = 991
DATASET_NAME = f"Dataset{DATASET_ID}_BenchTumour"
STAGE1_CONFIGURATION = "2d"  # the denoiser is trained on 2D slices
CONFIGURATIONS = ("2d", "3d_fullres")  # what --configuration may name: SADM's configuration inherits from it
PLANS = "nnUNetPlans"
FOLD = "0"
STAGE1_TRAINER = "SADMDiffusionTrainer"
SADM_TRAINER = "SADMBenchTrainer"
BASELINE_TRAINER = "SADMBenchBaselineTrainer"
NO_TTA = f"{SADM_TRAINER} --disable_tta"
PER_LEVEL = f"{SADM_TRAINER} prediction_ensemble=per_level"  # the same model, segmenting each noise level's input
TARGET_TIME_RATIO = 1.5
TARGET_MEMORY_RATIO = 1.3
TARGET_PREDICT_RATIO = 1.5
TINY_UNET = {"base_channels": 8, "max_channels": 16, "norm_num_groups": 4, "layers_per_block": 1}

# Everything that differs between the full run and --quick. Training and prediction run between min_repeats and
# repeats rounds each (a round = one run of every variant, alternating); a further round starts only if the last
# one's duration still fits before the phase's deadline (train_share of the budget for training). SADM prediction
# without mirroring (information only) runs in the first prediction round only, and in the full run only.
MODES = {
    "full": dict(num_cases=8, num_test_cases=1, zoom=1.0, spacing=2.0, unet_overrides={}, warmup=3, iterations=6,
                 repeats=3, min_repeats=2, time_budget_s=1080.0, train_share=0.5, tile_repeats=5,
                 predict_without_tta=True),
    "quick": dict(num_cases=5, num_test_cases=1, zoom=1 / 3, spacing=6.0, unet_overrides=TINY_UNET, warmup=2,
                  iterations=3, repeats=2, min_repeats=1, time_budget_s=80.0, train_share=0.5, tile_repeats=3,
                  predict_without_tta=False),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = timing_arguments(__doc__, quick="tiny denoiser, tiny data, a few iterations (CI)",
                         threads="OMP/MKL threads of the commands and torch threads of the tile timing (default 2)",
                         device="where nnUNetv2_train, nnUNetv2_predict and the tile timing run")
    p.add_argument("--iterations", type=int, help="timed training iterations per run (default: by mode)")
    p.add_argument("--warmup", type=int, help="untimed training iterations before them")
    p.add_argument("--repeats", type=int, help="most runs per trainer / prediction variant (default: by mode)")
    p.add_argument("--min-repeats", type=int, help="fewest runs per trainer / prediction variant")
    p.add_argument("--time-budget", type=float, dest="time_budget_s",
                   help="seconds the whole run aims at (default: 1080 full, 80 quick); decides the repeats")
    p.add_argument("--configuration", choices=CONFIGURATIONS, default="2d",
                   help="nnU-Net configuration both trainers train on (SADM: CONFIGURATION_sadm; default 2d)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# commands


class Commands:
    """Runs console commands in a clean environment (only PATH, HOME, nnU-Net variables and thread settings) and
    keeps one log file per command in `logs/`."""

    def __init__(self, workdir: Path, threads: int, device: str = "cpu") -> None:
        self.workdir = workdir
        self.device = device
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.threads = threads
        self.count = 0

    def env(self, **extra: str) -> dict[str, str]:
        threads = str(self.threads)
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"),
               **nnunet_env(self.workdir), "nnUNet_extTrainer": str(TRAINERS_FOLDER),
               "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "0"),
               "nnUNet_def_n_proc": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
               "OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"],
               **{k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH") if k in os.environ}}
        env.update(extra)
        return env

    def run(self, name: str, *args: object, **extra_env: str) -> float:
        """Runs console script `name` with `args`; returns its wall time in seconds, raises if it fails."""
        self.count += 1
        log_file = self.logs / f"{self.count:02d}_{name}.log"
        cmd = [console_script(name), *map(str, args)]
        start = time.perf_counter()
        with open(log_file, "w") as f:
            proc = subprocess.run(cmd, env=self.env(**extra_env), stdout=f, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            tail = log_file.read_text()[-4000:]
            raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}; end of {log_file}:\n{tail}")
        return wall


def results_folder(workdir: Path, trainer: str, configuration: str) -> Path:
    return workdir / "nnUNet_results" / DATASET_NAME / f"{trainer}__{PLANS}__{configuration}"


# ---------------------------------------------------------------------------------------------------------------
# set-up


def prepare(commands: Commands, source: Path, mode: dict, base: str) -> dict:
    """Tumour dataset (training + test cases), nnU-Net planning and preprocessing (2d and `base`), an untrained
    stage-I model, sadm_nnunet_plan -c `base`. Returns the time of each step and the stage-I denoiser's
    description."""
    from sadm_nnunet.datasets.lesions import build_lesion_dataset

    if not source.is_dir():
        raise FileNotFoundError(f"Healthy source folder {source} does not exist (pass --source)")
    workdir = commands.workdir
    raw = workdir / "nnUNet_raw" / DATASET_NAME
    for folder in (raw, workdir / "nnUNet_preprocessed" / DATASET_NAME, workdir / "nnUNet_results" / DATASET_NAME):
        shutil.rmtree(folder, ignore_errors=True)
    timings = {}
    start = time.perf_counter()
    common = dict(seed=0, kind="tumour", zoom=mode["zoom"], spacing=mode["spacing"])
    build_lesion_dataset(source, raw, mode["num_cases"], split="train", **common)
    build_lesion_dataset(source, raw, mode["num_test_cases"], first_index=mode["num_cases"], split="test", **common)
    timings["build_raw_dataset_s"] = time.perf_counter() - start
    # Planning needs at least one worker process (nnUNet_n_proc_DA=0 crashes it); training uses 0.
    timings["plan_and_preprocess_s"] = commands.run(
        "nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", *dict.fromkeys((STAGE1_CONFIGURATION, base)),
        "-np", "1", "-npfp", "1",
        nnUNet_n_proc_DA="1")
    start = time.perf_counter()
    denoiser = write_untrained_stage1(workdir, mode["unet_overrides"])
    timings["write_stage1_model_s"] = time.perf_counter() - start
    timings["sadm_nnunet_plan_s"] = commands.run("sadm_nnunet_plan", DATASET_ID, "--ddpm", DATASET_ID, "-c", base)
    return {"timings": timings, "denoiser": denoiser}


def write_untrained_stage1(workdir: Path, unet_overrides: dict) -> dict:
    """Writes a randomly initialised denoiser (template architecture with `unet_overrides`) for the target's 2d
    patch size where sadm_nnunet_plan expects a stage-I model, with the plans.json and dataset.json nnU-Net would
    have copied into the training folder. Stage I is the target dataset itself here."""
    import torch
    from diffusers import UNet2DModel

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sadm_nnunet.diffusion.export import EXPORT_FOLDER_NAME, save_diffusion_model
    from sadm_nnunet.diffusion.settings import DiffusionSettings, unet_config

    preprocessed = workdir / "nnUNet_preprocessed" / DATASET_NAME
    plans = json.loads((preprocessed / f"{PLANS}.json").read_text())
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    patch = tuple(int(p) for p in PlansManager(plans).get_configuration(STAGE1_CONFIGURATION).patch_size)
    settings = DiffusionSettings.from_dict({"unet": unet_overrides})
    config = unet_config(settings, patch, len(dataset_json["channel_names"]))
    torch.manual_seed(0)
    unet = UNet2DModel(**config)
    folder = results_folder(workdir, STAGE1_TRAINER, STAGE1_CONFIGURATION)
    save_diffusion_model(unet, settings, folder / "fold_all" / EXPORT_FOLDER_NAME)
    shutil.copyfile(preprocessed / f"{PLANS}.json", folder / "plans.json")
    shutil.copyfile(preprocessed / "dataset.json", folder / "dataset.json")
    return {"weights": "random (untrained)", "unet_overrides": unet_overrides,
            "block_out_channels": list(config["block_out_channels"]),
            "down_block_types": list(config["down_block_types"]), "layers_per_block": config["layers_per_block"],
            "parameters": sum(p.numel() for p in unet.parameters())}


# ---------------------------------------------------------------------------------------------------------------
# training and prediction runs


def train_once(commands: Commands, trainer: str, mode: dict, bench: ModuleType, configuration: str) -> dict:
    """One `nnUNetv2_train ID CONFIGURATION 0 -tr trainer` in a fresh fold folder; the trainer's timings JSON (file
    names from the trainers module `bench`) plus the command's wall time."""
    fold = results_folder(commands.workdir, trainer, configuration) / f"fold_{FOLD}"
    shutil.rmtree(fold, ignore_errors=True)
    fold.mkdir(parents=True)
    (fold / bench.SETTINGS_FILE).write_text(json.dumps({"warmup": mode["warmup"], "iterations": mode["iterations"]}))
    wall = commands.run("nnUNetv2_train", DATASET_ID, configuration, FOLD, "-tr", trainer, "-device",
                        commands.device)
    record = json.loads((fold / bench.RESULTS_FILE).read_text())
    expected = mode["warmup"] + mode["iterations"]
    if len(record["train_step_s"]) != expected:
        raise RuntimeError(f"{trainer} ran {len(record['train_step_s'])} training steps, expected {expected}")
    warm = mode["warmup"]
    starts = record["train_step_start_s"]
    record["timed_train_step_s"] = record["train_step_s"][warm:]
    # start-to-start intervals of the timed steps: data loading + augmentation + train_step + logging
    record["timed_iteration_s"] = [b - a for a, b in zip(starts[warm:], starts[warm + 1:])]
    if "reconstruction_s" in record:
        record["timed_reconstruction_s"] = record["reconstruction_s"][warm:]
    record["command_wall_s"] = wall
    return record


def per_level_model(workdir: Path, configuration: str) -> Path:
    """A copy of SADM's trained model folder whose plans.json has `prediction_ensemble` per_level (one segmentation
    pass per noise level, logits averaged), for nnUNetv2_predict_from_modelfolder."""
    from sadm_nnunet.io_utils import write_json_atomic
    from sadm_nnunet.segmentation.settings import PLANS_KEY

    target = workdir / "per_level_model"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(results_folder(workdir, SADM_TRAINER, configuration), target)
    plans = json.loads((target / "plans.json").read_text())
    plans["configurations"][configuration][PLANS_KEY]["prediction_ensemble"] = "per_level"
    write_json_atomic(plans, target / "plans.json")
    return target


def predict_once(commands: Commands, trainer: str, disable_tta: bool, num_cases: int, configuration: str,
                 model_folder: Path | None = None) -> float:
    """Wall time of one `nnUNetv2_predict` of the test cases with `trainer`'s fold-0 model (or, given
    `model_folder`, `nnUNetv2_predict_from_modelfolder` with that folder's)."""
    workdir = commands.workdir
    out = workdir / "predictions" / (model_folder.name if model_folder else
                                     f"{trainer}{'_notta' if disable_tta else ''}")
    shutil.rmtree(out, ignore_errors=True)
    model = (["-m", model_folder] if model_folder else ["-d", DATASET_ID, "-c", configuration, "-tr", trainer])
    args = ["-i", workdir / "nnUNet_raw" / DATASET_NAME / "imagesTs", "-o", out, *model, "-f", FOLD, "-device",
            commands.device, "-npp", "1", "-nps", "1"]
    command = "nnUNetv2_predict_from_modelfolder" if model_folder else "nnUNetv2_predict"
    wall = commands.run(command, *args, *(["--disable_tta"] if disable_tta else []))
    written = sorted(out.glob("*.nii.gz"))
    if len(written) != num_cases:
        raise RuntimeError(f"nnUNetv2_predict with {trainer} wrote {len(written)} segmentations, expected {num_cases}")
    return wall


def alternate(variants: dict, mode: dict, deadline: float, log_prefix: str, once: tuple[str, ...] = ()
              ) -> dict[str, list]:
    """Runs every variant once per round (order reversed every other round, so drifting machine load hits all
    alike) for min_repeats..repeats rounds; a further round only starts if the last round's time still fits. The
    variants named in `once` run in the first round only."""
    runs: dict[str, list] = {name: [] for name in variants}
    for r in range(mode["repeats"]):
        start = time.perf_counter()
        names = [name for name in variants if r == 0 or name not in once]
        for name in (names if r % 2 == 0 else names[::-1]):
            runs[name].append(variants[name]())
        took = time.perf_counter() - start
        print(f"{log_prefix} round {r + 1} took {took:.1f} s", flush=True)
        if r + 1 >= mode["min_repeats"] and time.perf_counter() + took > deadline:
            break
    return runs


def summarise_training(runs: dict[str, list]) -> dict:
    """Medians over all timed iterations of all runs per trainer, peak RSS (median over runs), the ratios."""
    out = {}
    for name, records in runs.items():
        steps = [t for rec in records for t in rec["timed_train_step_s"]]
        iterations = [t for rec in records for t in rec["timed_iteration_s"]]
        rss = [rec["peak_rss_kib"] / 1024 for rec in records]
        out[name] = {"median_s_per_train_step": statistics.median(steps),
                     "median_s_per_iteration": statistics.median(iterations),
                     "peak_rss_mib": statistics.median(rss), "peak_rss_mib_runs": rss,
                     "peak_rss_at_train_start_mib": statistics.median(r["peak_rss_at_train_start_kib"] / 1024
                                                                      for r in records),
                     "runs": records}
        recon = [t for rec in records for t in rec.get("timed_reconstruction_s", [])]
        if recon:
            out[name]["median_reconstruction_s"] = statistics.median(recon)
        gpu = [rec["peak_gpu_allocated_mib"] for rec in records if rec.get("peak_gpu_allocated_mib") is not None]
        out[name]["peak_gpu_allocated_mib"] = statistics.median(gpu) if gpu else None
    sadm, base = out[SADM_TRAINER], out[BASELINE_TRAINER]
    first = runs[SADM_TRAINER][0]
    time_ratio = sadm["median_s_per_train_step"] / base["median_s_per_train_step"]
    memory_ratio = sadm["peak_rss_mib"] / base["peak_rss_mib"]
    gpu_ratio = (sadm["peak_gpu_allocated_mib"] / base["peak_gpu_allocated_mib"]
                 if sadm["peak_gpu_allocated_mib"] and base["peak_gpu_allocated_mib"] else None)
    return {"gpu_memory_ratio": gpu_ratio, "batch_size": first["batch_size"], "patch_size": first["patch_size"],
            "torch_threads": first["torch_threads"], "trainers": out, "time_ratio": time_ratio,
            "target_time_ratio": TARGET_TIME_RATIO, "time_target_met": time_ratio <= TARGET_TIME_RATIO,
            "memory_ratio": memory_ratio, "target_memory_ratio": TARGET_MEMORY_RATIO,
            "memory_target_met": memory_ratio <= TARGET_MEMORY_RATIO,
            "denoiser_parameters": first["denoiser_parameters"]}


def summarise_prediction(runs: dict[str, list[float]], num_cases: int) -> dict:
    """Median wall time per variant and its ratio to nnU-Net's."""
    medians = {name: statistics.median(times) for name, times in runs.items()}
    base = medians[BASELINE_TRAINER]
    ratio = medians[SADM_TRAINER] / base
    return {"num_cases": num_cases,
            "variants": {name: {"median_s": medians[name], "ratio_to_nnunet": medians[name] / base, "times_s": times}
                         for name, times in runs.items()},
            "ratio": ratio, "target_ratio": TARGET_PREDICT_RATIO, "target_met": ratio <= TARGET_PREDICT_RATIO}


# ---------------------------------------------------------------------------------------------------------------
# where the time goes: one tile through each part, in this process


def tile_breakdown(workdir: Path, repeats: int, device: str, configuration_name: str) -> dict:
    """Milliseconds per sliding-window tile (batch 1, eval mode, no gradients) of the reconstruction, the SADM
    segmentation network (image + residual) and nnU-Net's network, built from the plans with random weights;
    parts alternate, medians over `repeats`. Also the implied network time per tile of a prediction with mirroring
    (SADM reuses the reconstruction for the mirrored copies: 1 reconstruction + 4 segmentation passes in 2D, 8 in
    3D), and the floating-point operations per tile of each part (a denoiser pass: one slice; a 3D tile of D slices
    needs D of them per noise level) - load-independent; the ratios they imply are what the measured ratios come
    close to when both sides run equally efficiently."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from sadm_nnunet.training.sadm_trainer import SADMTrainer

    preprocessed = workdir / "nnUNet_preprocessed" / DATASET_NAME
    plans_manager = PlansManager(json.loads((preprocessed / f"{PLANS}.json").read_text()))
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())
    configuration = plans_manager.get_configuration(configuration_name)
    channels = len(dataset_json["channel_names"])
    heads = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    torch.manual_seed(0)
    sadm = SADMTrainer.build_network_architecture(plans_manager, configuration, channels, heads, False)
    base = nnUNetTrainer.build_network_architecture(plans_manager, configuration, channels, heads, False)
    sadm, base = sadm.to(device).eval(), base.to(device).eval()
    tile = torch.randn(1, channels, *configuration.patch_size, device=device)
    with torch.no_grad():
        stacked = sadm.stack(tile)
    level = torch.tensor([sadm.reconstructor.options.noise_levels[0]], device=device)
    one_slice = tile if tile.ndim == 4 else tile[:, :, 0]  # the denoiser's input: one 2D slice
    slices_per_tile = 1 if tile.ndim == 4 else tile.shape[2]

    def gflop(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 1e9

    with torch.no_grad():
        gflops = {"denoiser_pass": gflop(lambda: sadm.denoiser(one_slice, level)),
                  "sadm_segmentation_forward": gflop(lambda: sadm.segmentation(stacked)),
                  "nnunet_forward": gflop(lambda: base(tile))}
    gflops["sadm_segmentation_forward_backward"] = gflop(lambda: sadm.segmentation(stacked).sum().backward())
    gflops["nnunet_forward_backward"] = gflop(lambda: base(tile).sum().backward())

    parts = {"reconstruction": lambda: sadm.reconstructor(tile),
             "sadm_segmentation": lambda: sadm.segmentation(stacked), "nnunet_network": lambda: base(tile)}
    times: dict[str, list[float]] = {name: [] for name in parts}
    with torch.no_grad():
        for fn in parts.values():  # warm-up
            fn()
        for _ in range(repeats):
            for name, fn in parts.items():
                synchronize(device)
                start = time.perf_counter()
                fn()
                synchronize(device)
                times[name].append(1000 * (time.perf_counter() - start))
    ms = {name: statistics.median(t) for name, t in times.items()}
    passes = sadm.reconstructor.passes_per_slice()
    mirrored = 2 ** len(configuration.patch_size)
    sadm_tta = ms["reconstruction"] + mirrored * ms["sadm_segmentation"]
    base_tta = mirrored * ms["nnunet_network"]
    g = gflops
    return {"patch_size": [int(p) for p in configuration.patch_size], "torch_threads": torch.get_num_threads(),
            "reconstruction_passes": passes, "slices_per_tile": slices_per_tile, "mirrored_copies": mirrored,
            "median_ms": ms, "times_ms": times, "sadm_ms_per_tile_with_tta": sadm_tta,
            "nnunet_ms_per_tile_with_tta": base_tta, "ratio_with_tta": sadm_tta / base_tta,
            "ratio_without_tta": (ms["reconstruction"] + ms["sadm_segmentation"]) / ms["nnunet_network"],
            "gflop_per_slice": gflops,
            "gflop_ratio_training": (slices_per_tile * g["denoiser_pass"] + g["sadm_segmentation_forward_backward"])
            / g["nnunet_forward_backward"],
            "gflop_ratio_prediction_with_tta": (passes * slices_per_tile * g["denoiser_pass"]
                                                + mirrored * g["sadm_segmentation_forward"])
            / (mirrored * g["nnunet_forward"]),
            "segmentation_parameters": sum(p.numel() for p in sadm.segmentation.parameters()),
            "nnunet_parameters": sum(p.numel() for p in base.parameters())}


# ---------------------------------------------------------------------------------------------------------------
# report


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def markdown(results: dict) -> str:
    m, ds, tr, pr, tb = (results[k] for k in ("machine", "dataset", "training", "prediction", "tiles"))
    den = ds["denoiser"]
    cfg = results["configuration"]
    load, load_end = format_load(m["load_average_at_start"]), format_load(results["load_average_at_end"])
    sadm, base = tr["trainers"][SADM_TRAINER], tr["trainers"][BASELINE_TRAINER]
    n_runs = len(sadm["runs"])
    timed = len(sadm["runs"][0]["timed_train_step_s"])
    recon = sadm["median_reconstruction_s"]
    lines = [
        f"### Stage-II benchmark ({results['mode']}), {results['date']}",
        "",
        f"- Machine: {m['cpu_count']} CPUs ({m['cpu']}), device {m.get('device', 'cpu')}"
        f"{' (' + m['gpu'] + ')' if m.get('gpu') else ''}, torch {m['torch']}; the nnU-Net commands ran with "
        f"{tr['torch_threads']} torch threads (OMP_NUM_THREADS={m['threads']}, "
        f"OMP_WAIT_POLICY={m['omp_wait_policy']}); "
        f"load average at start {load}, at end {load_end}; nnunetv2 {results['versions']['nnunetv2']}, "
        f"diffusers {results['versions']['diffusers']}.",
        f"- Data: {ds['num_cases']} training + {ds['num_test_cases']} test tumour cases (zoom {ds['zoom']:.3g}, "
        f"spacing {ds['spacing']:g} mm); configuration {cfg['sadm']} (inherits {cfg['base']}): patch "
        f"{tr['patch_size']}, "
        f"batch {tr['batch_size']}.",
        f"- Stage-I denoiser: **random weights (untrained)**; speed and memory do not depend on the weights. Widths "
        f"{den['block_out_channels']}, {den['layers_per_block']} layer(s) per block, {den['parameters'] / 1e6:.2f} M "
        f"parameters ({'tiny --quick denoiser' if den['unet_overrides'] else 'template default'}); segmentation "
        f"network {tb['segmentation_parameters'] / 1e6:.2f} M parameters (nnU-Net's: "
        f"{tb['nnunet_parameters'] / 1e6:.2f} M).",
        "",
        f"Training (`nnUNetv2_train {DATASET_ID} {cfg['sadm']} {FOLD}`), {n_runs} run(s) per trainer, alternating; "
        f"per run {timed} timed iterations after {results['settings']['warmup']} warm-up; medians over all timed "
        f"iterations:",
        "",
        "| trainer | s / `train_step` | of which reconstruction | s / iteration incl. data loading | peak RSS (MiB) |",
        "|---|---:|---:|---:|---:|",
        f"| nnUNetTrainer (`{BASELINE_TRAINER}`) | {base['median_s_per_train_step']:.3f} | | "
        f"{base['median_s_per_iteration']:.3f} | {base['peak_rss_mib']:.0f} |",
        f"| SADMTrainer (`{SADM_TRAINER}`) | {sadm['median_s_per_train_step']:.3f} | {recon:.3f} | "
        f"{sadm['median_s_per_iteration']:.3f} | {sadm['peak_rss_mib']:.0f} |",
        f"| ratio SADM / nnU-Net | **{tr['time_ratio']:.2f}** | | "
        f"{sadm['median_s_per_iteration'] / base['median_s_per_iteration']:.2f} | **{tr['memory_ratio']:.2f}** |",
        *([f"| peak GPU memory allocated by torch (MiB): nnU-Net / SADM / ratio | "
           f"{base['peak_gpu_allocated_mib']:.0f} | {sadm['peak_gpu_allocated_mib']:.0f} | "
           f"**{tr['gpu_memory_ratio']:.2f}** | |"] if tr.get("gpu_memory_ratio") else []),
        "",
        f"Targets: time per training step SADM / nnU-Net <= {tr['target_time_ratio']}: "
        f"**{met(tr['time_target_met'])}**; peak RSS SADM / nnU-Net <= {tr['target_memory_ratio']}: "
        f"**{met(tr['memory_target_met'])}**.",
        "",
        f"Prediction (`nnUNetv2_predict -device {m.get('device', 'cpu')} -npp 1 -nps 1`, {pr['num_cases']} test case(s); wall time of the "
        f"command including start-up; SADM and nnU-Net alternate):",
        "",
        "| model | runs | s (median) | ratio to nnU-Net |",
        "|---|---:|---:|---:|",
    ]
    names = {BASELINE_TRAINER: "nnUNetTrainer", SADM_TRAINER: "SADMTrainer",
             PER_LEVEL: "SADMTrainer, `prediction_ensemble` per_level (one segmentation pass per noise level)",
             NO_TTA: "SADMTrainer `--disable_tta` (information)"}
    for key, v in pr["variants"].items():
        lines.append(f"| {names[key]} | {len(v['times_s'])} | {v['median_s']:.1f} | {v['ratio_to_nnunet']:.2f} |")
    ms, gf = tb["median_ms"], tb["gflop_per_slice"]
    lines += [
        "",
        f"Target prediction time SADM / nnU-Net <= {pr['target_ratio']}: **{met(pr['target_met'])}**.",
        "",
        f"Where the time goes, per sliding-window tile {tb['patch_size']} (batch 1, in this process, "
        f"{tb['torch_threads']} torch threads, median of {len(tb['times_ms']['reconstruction'])}):",
        "",
        "| part | ms / tile |",
        "|---|---:|",
        f"| SADM reconstruction ({tb['reconstruction_passes']} denoiser passes) | {ms['reconstruction']:.1f} |",
        f"| SADM segmentation network (image + residual) | {ms['sadm_segmentation']:.1f} |",
        f"| nnU-Net network (image) | {ms['nnunet_network']:.1f} |",
        f"| with mirroring ({tb['mirrored_copies']} copies, reconstruction reused): SADM / nnU-Net | "
        f"{tb['sadm_ms_per_tile_with_tta']:.1f} / {tb['nnunet_ms_per_tile_with_tta']:.1f} = "
        f"{tb['ratio_with_tta']:.2f} |",
        f"| without mirroring: SADM / nnU-Net | {tb['ratio_without_tta']:.2f} |",
        "",
        f"Work (GFLOP, load-independent): one denoiser pass on one slice {gf['denoiser_pass']:.2f} "
        f"({tb['slices_per_tile']} slice(s) per tile); per tile, segmentation forward + backward SADM {gf['sadm_segmentation_forward_backward']:.2f}, nnU-Net "
        f"{gf['nnunet_forward_backward']:.2f}; forward only SADM {gf['sadm_segmentation_forward']:.2f}, nnU-Net "
        f"{gf['nnunet_forward']:.2f}. At equal efficiency this implies SADM / nnU-Net = "
        f"{tb['gflop_ratio_training']:.2f} per training step (1 denoiser pass per slice of a sample) and "
        f"{tb['gflop_ratio_prediction_with_tta']:.2f} per predicted tile with mirroring ({tb['reconstruction_passes']} "
        f"denoiser passes).",
        "",
        f"In training, the reconstruction (one denoiser pass per sample at a random noise level) takes "
        f"{recon:.3f} s of SADM's {sadm['median_s_per_train_step']:.3f} s per step "
        f"({100 * recon / sadm['median_s_per_train_step']:.0f} %); the rest is the segmentation network "
        f"(forward, backward, SGD).",
        "",
        f"Total run time {results['runtime_s']:.1f} s (time budget {results['settings']['time_budget_s']:.0f} s; "
        f"set-up {sum(ds['timings'].values()):.1f} s).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    date = now()
    mode_name, mode = select_mode(args, MODES, ("iterations", "warmup", "repeats", "min_repeats", "time_budget_s"))
    mode["min_repeats"] = min(mode["min_repeats"], mode["repeats"])
    if args.unet:
        mode["unet_overrides"] = dict(args.unet)
    if mode["iterations"] < 2 or mode["warmup"] < 0 or mode["repeats"] < 1 or args.threads < 1:
        raise SystemExit("--iterations must be >= 2, --repeats and --threads >= 1, --warmup >= 0")

    tmp, workdir = prepare_workdir(args.workdir, "sadm_stage2_bench_")
    # This process reads the plans and builds networks; nnU-Net's path variables must be set before it is imported.
    os.environ.update(nnunet_env(workdir))

    import torch

    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch finds no CUDA device on this machine")
    machine = machine_info(args.device, args.threads)
    budget_end = started + mode["time_budget_s"]
    sys.path.insert(0, str(TRAINERS_FOLDER))
    bench = importlib.import_module(TRAINERS_MODULE)
    from sadm_nnunet.nnunet_plans import sadm_configuration_name

    try:
        commands = Commands(workdir, args.threads, args.device)
        print(f"[stage2_benchmark] {mode_name} mode, work folder {workdir}, time budget "
              f"{mode['time_budget_s']:.0f} s; the stage-I denoiser has RANDOM weights (speed and memory do not "
              f"depend on them)", flush=True)
        # both trainers train on the SADM configuration; plain nnU-Net ignores its `sadm` block, so the baseline is
        # nnU-Net on the base configuration's data, patch and batch
        configuration = sadm_configuration_name(args.configuration)
        setup = prepare(commands, args.source.resolve(), mode, args.configuration)
        print(f"[stage2_benchmark] set-up done after {time.perf_counter() - started:.1f} s; training ...", flush=True)

        train_deadline = started + mode["train_share"] * mode["time_budget_s"]
        train_runs = alternate({name: (lambda name=name: train_once(commands, name, mode, bench, configuration))
                                for name in (BASELINE_TRAINER, SADM_TRAINER)},
                               mode, train_deadline, "[stage2_benchmark] training")
        training = summarise_training(train_runs)
        print(f"[stage2_benchmark] training done after {time.perf_counter() - started:.1f} s; prediction ...",
              flush=True)

        n_test = mode["num_test_cases"]
        variants = {BASELINE_TRAINER: lambda: predict_once(commands, BASELINE_TRAINER, False, n_test, configuration),
                    SADM_TRAINER: lambda: predict_once(commands, SADM_TRAINER, False, n_test, configuration)}
        per_level = per_level_model(workdir, configuration)
        variants[PER_LEVEL] = lambda: predict_once(commands, SADM_TRAINER, False, n_test, configuration, per_level)
        if mode["predict_without_tta"]:
            variants[NO_TTA] = lambda: predict_once(commands, SADM_TRAINER, True, n_test, configuration)
        predict_runs = alternate(variants, mode, budget_end, "[stage2_benchmark] prediction", once=(NO_TTA,))
        prediction = summarise_prediction(predict_runs, n_test)
        tiles = tile_breakdown(workdir, mode["tile_repeats"], args.device, configuration)
    finally:
        if tmp is not None:
            tmp.cleanup()

    results = {
        "mode": mode_name,
        "date": date,
        "machine": machine,
        "versions": versions(),
        "settings": {k: mode[k] for k in ("warmup", "iterations", "repeats", "min_repeats", "time_budget_s")},
        "configuration": {"base": args.configuration, "sadm": configuration},
        "dataset": {"name": DATASET_NAME, "num_cases": mode["num_cases"], "num_test_cases": n_test,
                    "zoom": mode["zoom"], "spacing": mode["spacing"], **setup},
        "training": training,
        "prediction": prediction,
        "tiles": tiles,
        "load_average_at_end": load_average(),
        "runtime_s": time.perf_counter() - started,
    }
    write_report(results, markdown(results), args.output)
    return results


if __name__ == "__main__":
    main()
