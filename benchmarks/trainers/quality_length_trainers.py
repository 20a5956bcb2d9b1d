"""Benchmark-only trainers for the training-length investigation of `benchmarks/quality_benchmark.py`
(`--sadm-trainer QualitySADMTrainer_3epochs --plain-trainer QualityPlainTrainer_3epochs`), found through
`nnUNet_extTrainer`: the base run's SADM and plain nnU-Net trainers (1 epoch of 250 iterations) at three times the
length, everything else equal. nnU-Net imports this file as a top-level module: absolute imports only.
"""
from __future__ import annotations

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from sadm_nnunet.training.sadm_trainer import SADMTrainer


class QualitySADMTrainer_3epochs(SADMTrainer):
    run_length = {"num_epochs": 3}


class QualityPlainTrainer_3epochs(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 3
