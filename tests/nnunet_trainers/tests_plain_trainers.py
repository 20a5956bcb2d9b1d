"""Test-only nnU-Net trainers, found through `nnUNet_extTrainer` (tests/conftest.py puts this folder there).

nnU-Net imports this file as a top-level module: absolute imports only.
"""
from __future__ import annotations

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class TestsPlainTrainer_2epochs_10its(nnUNetTrainer):
    """Plain nnU-Net for 2 epochs of 10 iterations (nnU-Net's shortest built-in variant trains 250)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 2, 10, 2
