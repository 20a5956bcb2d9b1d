"""Stage II as nnU-Net trainers: `nnUNetv2_train TARGET 2d_sadm FOLD -tr SADMTrainer`.

Everything is nnU-Net's (planning, data, loss, SGD + poly schedule, augmentation, deep supervision, folds, final
validation, prediction) except the network, which is `SADMNetwork` (image -> frozen reconstruction -> stacked
channels -> nnU-Net's architecture), and one extra augmentation, synthetic anomalies:

- `SADMTrainer`: labels from the dataset; a training patch without annotated foreground receives a synthetic
  anomaly with the probability in the plans (`sadm.synthetic_anomalies.probability`, default 0: labels only).
- `SADMTrainer_DRAEM`: self-supervised; every training patch gets a synthetic anomaly, dataset labels are ignored.

The SADM settings come from the configuration's `sadm` block, which `sadm_nnunet_plan` writes.
"""
from __future__ import annotations

import torch
from torch import distributed as dist
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from sadm_nnunet.nnunet_plans import resolve_sadm_settings
from sadm_nnunet.segmentation.network import SADMNetwork, build_sadm_network
from sadm_nnunet.segmentation.settings import SADMSettings, SyntheticAnomalySettings
from sadm_nnunet.segmentation.stage1 import load_stage1_denoiser, model_folder
from sadm_nnunet.training.checkpoints import AtomicCheckpointMixin
from sadm_nnunet.training.ddp_dice import largest_rank_batch, with_rank_batch_dice
from sadm_nnunet.training.synthetic_anomalies import SyntheticAnomalyTransform
from sadm_nnunet.training.trainer_base import SADMTrainerMixin

__all__ = [
    "SADMTrainer",
    "SADMTrainer_1epoch",
    "SADMTrainer_5epochs",
    "SADMTrainer_2epochs_100its",
    "SADMTrainer_2epochs_10its",
    "SADMTrainer_DRAEM",
    "SADMTrainer_DRAEM_1epoch",
    "SADMTrainer_DRAEM_5epochs",
    "SADMTrainer_DRAEM_2epochs_100its",
    "SADMTrainer_DRAEM_2epochs_10its",
]


class SADMTrainer(SADMTrainerMixin, AtomicCheckpointMixin, nnUNetTrainer):
    """nnU-Net on image + residual (or reconstruction), dataset labels plus synthetic anomalies on healthy patches."""

    replace_labels = False  # True: self-supervised, labels come from synthetic anomalies only

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        self.sadm = resolve_sadm_settings(plans, configuration)
        super().__init__(plans, configuration, fold, dataset_json, device)
        label = self.sadm.synthetic_anomalies.label
        if label not in self.label_manager.foreground_labels:
            raise ValueError(f"sadm.synthetic_anomalies.label is {label}, but the dataset's foreground labels are "
                             f"{list(self.label_manager.foreground_labels)}; set it with sadm_nnunet_plan --set "
                             f"synthetic_anomalies.label=N")
        self.stage1_loaded = False
        self.apply_run_length()

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> SADMNetwork:
        settings = SADMSettings.from_configuration(configuration_manager.configuration)
        return build_sadm_network(settings, configuration_manager, num_input_channels, num_output_channels,
                                  enable_deep_supervision)

    def sadm_network(self) -> SADMNetwork:
        return self.unwrapped_network()

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        self.sadm_network().segmentation.decoder.deep_supervision = enabled

    def configure_optimizers(self):
        # nnU-Net's optimiser and schedule, over the segmentation network only (the denoiser is frozen)
        optimizer = torch.optim.SGD(self.sadm_network().segmentation.parameters(), self.initial_lr,
                                    weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def _build_loss(self):
        # nnU-Net's loss; its DDP batch Dice needs equal per-rank batch sizes, which nnU-Net's split does not give
        world = dist.get_world_size() if self.is_ddp else 1
        return with_rank_batch_dice(super()._build_loss(),
                                    largest_rank_batch(self.configuration_manager.batch_size, world))

    def train_step(self, batch: dict) -> dict:
        result = super().train_step(batch)
        self.report_progress(result["loss"])
        return result

    # ---- the stage-I weights: from the stage-I model at the start, from the checkpoint afterwards ----
    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        self.stage1_loaded = True

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        if not self.stage1_loaded:
            denoiser = load_stage1_denoiser(self.sadm, self.device)
            self.sadm_network().denoiser.load_state_dict(denoiser.state_dict())
            self.stage1_loaded = True
            self.print_to_log_file(f"Stage-I denoiser loaded from {model_folder(self.sadm.stage1)}")
        super().on_train_start()

    # ---- synthetic anomalies, inserted before nnU-Net removes the -1 (outside-the-mask) label ----
    def anomaly_transform(self, validation: bool) -> SyntheticAnomalyTransform:
        return synthetic_anomaly_transform(self.sadm.synthetic_anomalies, replace_labels=self.replace_labels,
                                           validation=validation)

    def get_training_transforms(self, *args, **kwargs) -> ComposeTransforms:
        return with_transform(super().get_training_transforms(*args, **kwargs), self.anomaly_transform(False))

    def get_validation_transforms(self, *args, **kwargs) -> ComposeTransforms:
        return with_transform(super().get_validation_transforms(*args, **kwargs), self.anomaly_transform(True))


def synthetic_anomaly_transform(settings: SyntheticAnomalySettings, *, replace_labels: bool,
                                validation: bool) -> SyntheticAnomalyTransform:
    """The plans' `synthetic_anomalies` block as a transform. `replace_labels` (self-supervised): every patch gets
    an anomaly and dataset labels are ignored. Validation patches get a deterministic anomaly each (seed 0), so
    every epoch validates on the same anomalies."""
    return SyntheticAnomalyTransform(
        probability=1.0 if replace_labels else settings.probability, label=settings.label,
        replace_labels=replace_labels, seed=0 if validation else None, deterministic=validation,
        blend_range=(settings.blend_min, settings.blend_max), max_scale_exponent=settings.max_scale_exponent)


def with_transform(compose: ComposeTransforms, transform) -> ComposeTransforms:
    """`compose` with `transform` inserted before nnU-Net's RemoveLabelTansform (so -1 still marks the outside)."""
    position = next(i for i, t in enumerate(compose.transforms) if isinstance(t, RemoveLabelTansform))
    compose.transforms.insert(position, transform)
    return compose


class SADMTrainer_1epoch(SADMTrainer):
    """One epoch of 250 iterations, like nnU-Net's nnUNetTrainer_1epoch (same-length comparisons; the quick demo)."""

    run_length = {"num_epochs": 1}


class SADMTrainer_5epochs(SADMTrainer):
    run_length = {"num_epochs": 5}


class SADMTrainer_2epochs_100its(SADMTrainer):
    """For tests: 2 epochs of 100 iterations, a checkpoint every epoch."""

    run_length = {"num_epochs": 2, "num_iterations_per_epoch": 100, "num_val_iterations_per_epoch": 10,
                  "save_every": 1}


class SADMTrainer_2epochs_10its(SADMTrainer):
    """For tests: 2 epochs of 10 iterations (2 validation batches each), a checkpoint every epoch."""

    run_length = {"num_epochs": 2, "num_iterations_per_epoch": 10, "num_val_iterations_per_epoch": 2,
                  "save_every": 1}


class SADMTrainer_DRAEM(SADMTrainer):
    """Self-supervised stage II: every training patch gets a synthetic anomaly; the dataset's labels are ignored."""

    replace_labels = True


class SADMTrainer_DRAEM_1epoch(SADMTrainer_DRAEM):
    run_length = SADMTrainer_1epoch.run_length


class SADMTrainer_DRAEM_5epochs(SADMTrainer_DRAEM):
    run_length = SADMTrainer_5epochs.run_length


class SADMTrainer_DRAEM_2epochs_100its(SADMTrainer_DRAEM):
    """For tests: 2 epochs of 100 iterations, a checkpoint every epoch."""

    run_length = SADMTrainer_2epochs_100its.run_length


class SADMTrainer_DRAEM_2epochs_10its(SADMTrainer_DRAEM):
    """For tests: 2 epochs of 10 iterations (2 validation batches each), a checkpoint every epoch."""

    run_length = SADMTrainer_2epochs_10its.run_length
