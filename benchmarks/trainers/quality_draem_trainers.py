"""Benchmark-only trainer for the image-only control of the self-supervised SADM in
`benchmarks/quality_benchmark.py` (`--sadm-trainer SADMTrainer_DRAEM_1epoch --plain-trainer
QualityPlainDRAEMTrainer_1epoch`), found through `nnUNet_extTrainer`: plain nnU-Net on the image alone, trained
like `SADMTrainer_DRAEM_1epoch` on synthetic anomalies only (the dataset's labels ignored, every patch gets one, the
template's anomaly settings, 1 epoch of 250 iterations). It plays the paper's DRAEM-Net row: what the same
self-supervised labels teach a network that never sees a reconstruction. nnU-Net imports this file as a top-level
module: absolute imports only.
"""
from __future__ import annotations

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from sadm_nnunet.diffusion.settings import build_dataclass, load_template
from sadm_nnunet.segmentation.settings import TEMPLATE_NAME, SyntheticAnomalySettings
from sadm_nnunet.training.sadm_trainer import synthetic_anomaly_transform, with_transform
from sadm_nnunet.training.synthetic_anomalies import SyntheticAnomalyTransform


def draem_transform(validation: bool) -> SyntheticAnomalyTransform:
    """SADMTrainer_DRAEM's transform with the template's settings (plans/sadm.json)."""
    settings = build_dataclass(SyntheticAnomalySettings, load_template(TEMPLATE_NAME)["synthetic_anomalies"],
                               "sadm.synthetic_anomalies")
    return synthetic_anomaly_transform(settings, replace_labels=True, validation=validation)


class QualityPlainDRAEMTrainer_1epoch(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1

    def get_training_transforms(self, *args, **kwargs):
        return with_transform(super().get_training_transforms(*args, **kwargs), draem_transform(False))

    def get_validation_transforms(self, *args, **kwargs):
        return with_transform(super().get_validation_transforms(*args, **kwargs), draem_transform(True))
