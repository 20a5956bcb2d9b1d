"""Benchmark-only nnU-Net trainers for `benchmarks/stage2_benchmark.py`, found through `nnUNet_extTrainer`.

nnU-Net imports this file as a top-level module from the folder listed in `nnUNet_extTrainer`, so only absolute
imports are used. Both trainers run one epoch of `warmup + iterations` training iterations and one validation
iteration, time every `train_step` with `time.perf_counter`, and at the end of training write
`benchmark_timings.json` (atomically) into the fold folder: the per-step times, the start time of each step (the
differences include nnU-Net's data loading and augmentation), the peak resident set size of the training process
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`) at the start and at the end of training and, for SADM, the time spent
in the reconstruction inside each step. The numbers of iterations come from `benchmark_settings.json` in the fold
folder when the benchmark wrote one (defaults otherwise).

nnU-Net's final validation (a sliding-window prediction of the fold's validation cases) is skipped: the benchmark
measures prediction separately with `nnUNetv2_predict`, and it would cost minutes per SADM run on CPU.
"""
from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from sadm_nnunet.io_utils import write_json_atomic
from sadm_nnunet.training.sadm_trainer import SADMTrainer

SETTINGS_FILE = "benchmark_settings.json"
RESULTS_FILE = "benchmark_timings.json"
DEFAULT_SETTINGS = {"warmup": 2, "iterations": 10}


def peak_rss_kib() -> int:
    """Peak resident set size of this process so far (KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class BenchmarkTimingMixin:
    """One short epoch with every `train_step` timed; writes RESULTS_FILE into the fold folder at the end."""

    def configure_benchmark(self) -> None:
        path = Path(self.output_folder) / SETTINGS_FILE
        settings = {**DEFAULT_SETTINGS, **(json.loads(path.read_text()) if path.is_file() else {})}
        self.benchmark_settings = settings
        self.num_epochs = 1
        self.num_iterations_per_epoch = settings["warmup"] + settings["iterations"]
        self.num_val_iterations_per_epoch = 1
        self.step_times: list[float] = []
        self.step_starts: list[float] = []
        self.peak_rss_at_train_start_kib = 0

    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def on_train_start(self):
        super().on_train_start()
        self.peak_rss_at_train_start_kib = peak_rss_kib()
        if self.on_gpu():
            torch.cuda.reset_peak_memory_stats(self.device)

    def train_step(self, batch: dict) -> dict:
        start = time.perf_counter()
        out = super().train_step(batch)  # its loss comes back to the CPU: the GPU's work is done
        self.step_times.append(time.perf_counter() - start)
        self.step_starts.append(start)
        return out

    def benchmark_results(self) -> dict:
        """What RESULTS_FILE holds besides the peak memory; subclasses add their own measurements."""
        return {"trainer": type(self).__name__, "settings": self.benchmark_settings,
                "batch_size": self.batch_size, "patch_size": [int(p) for p in self.configuration_manager.patch_size],
                "torch_threads": torch.get_num_threads(), "train_step_s": self.step_times,
                "train_step_start_s": self.step_starts}

    def on_train_end(self):
        peak = peak_rss_kib()
        gpu = torch.cuda.max_memory_allocated(self.device) / 2 ** 20 if self.on_gpu() else None
        super().on_train_end()
        write_json_atomic({**self.benchmark_results(), "peak_rss_kib": peak, "peak_gpu_allocated_mib": gpu,
                           "peak_rss_at_train_start_kib": self.peak_rss_at_train_start_kib},
                          Path(self.output_folder) / RESULTS_FILE)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("Benchmark trainer: nnU-Net's final validation is skipped.")


class SADMBenchBaselineTrainer(BenchmarkTimingMixin, nnUNetTrainer):
    """nnUNetTrainer (the baseline; it ignores the configuration's `sadm` block), timed."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.configure_benchmark()


class SADMBenchTrainer(BenchmarkTimingMixin, SADMTrainer):
    """SADMTrainer, timed; also records the time of the reconstruction (noise + frozen denoiser) in each step."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.configure_benchmark()
        self.reconstruction_times: list[float] = []
        self._reconstruction_s = 0.0

    def on_train_start(self):
        super().on_train_start()
        network = self.sadm_network()
        reconstruct = network.reconstruct

        def timed_reconstruct(images: torch.Tensor) -> torch.Tensor:
            if self.on_gpu():
                torch.cuda.synchronize(self.device)
            start = time.perf_counter()
            out = reconstruct(images)
            if self.on_gpu():
                torch.cuda.synchronize(self.device)
            self._reconstruction_s += time.perf_counter() - start
            return out

        network.reconstruct = timed_reconstruct  # instance attribute: SADMNetwork.stack calls self.reconstruct

    def train_step(self, batch: dict) -> dict:
        self._reconstruction_s = 0.0
        out = super().train_step(batch)
        self.reconstruction_times.append(self._reconstruction_s)
        return out

    def benchmark_results(self) -> dict:
        denoiser = self.sadm_network().denoiser
        return {**super().benchmark_results(), "reconstruction_s": self.reconstruction_times,
                "denoiser_parameters": sum(p.numel() for p in denoiser.parameters())}
