"""Benchmark-only trainers for `benchmarks/quality_benchmark.py --quick` (CI), found through `nnUNet_extTrainer`.

The quick mode only proves that the benchmark runs end to end; 20 iterations per model keep it to a few minutes.
nnU-Net imports this file as a top-level module from the folder in `nnUNet_extTrainer`: absolute imports only.
"""
from __future__ import annotations

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from sadm_nnunet.training.diffusion_trainer import SADMDiffusionTrainer
from sadm_nnunet.training.sadm_trainer import SADMTrainer, SADMTrainer_DRAEM

QUICK_RUN = {"num_epochs": 1, "num_iterations_per_epoch": 20, "num_val_iterations_per_epoch": 2}


class QualityQuickDiffusionTrainer(SADMDiffusionTrainer):
    run_length = QUICK_RUN


class QualityQuickSADMTrainer(SADMTrainer):
    run_length = QUICK_RUN


class QualityQuickDRAEMTrainer(SADMTrainer_DRAEM):
    run_length = QUICK_RUN


class QualityQuickPlainTrainer(nnUNetTrainer):
    """Plain nnU-Net with the quick run length."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for name, value in QUICK_RUN.items():
            setattr(self, name, value)
