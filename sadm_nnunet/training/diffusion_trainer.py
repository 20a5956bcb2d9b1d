"""Stage I as an nnU-Net trainer: `nnUNetv2_train HEALTHY 2d all -tr SADMDiffusionTrainer`.

Reuses nnU-Net's planning, preprocessed data, data loading, logging, checkpointing, `--c` and DDP; replaces the
network (a diffusers UNet2DModel predicting x0, with EMA), the objective (L1 between predicted and clean slice at a
random noise level, simplex or Gaussian noise) and validation (reconstruction L1/SSIM at the test noise levels; the
"pseudo dice" curve of progress.png and the choice of checkpoint_best use the validation SSIM, which the log calls
by its name).

`SADMDiffusionTrainer_cDDPM` trains the conditioned variant: an image encoder, trained jointly with the UNet,
embeds the clean slice and its embedding is added to the UNet's time embedding (see diffusion/encoder.py).
"""
from __future__ import annotations

import os
from typing import List

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_pickle
from torch import autocast
from torch import distributed as dist

from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from sadm_nnunet.anomaly_maps import masked_mean, ssim_map
from sadm_nnunet.diffusion.export import EXPORT_FOLDER_NAME, epoch_export_folder_name, save_diffusion_model
from sadm_nnunet.diffusion.model import EMADenoiser, make_scheduler
from sadm_nnunet.diffusion.noise import sample_noise
from sadm_nnunet.diffusion.reconstruction import Reconstructor
from sadm_nnunet.diffusion.settings import DiffusionSettings
from sadm_nnunet.io_utils import write_json_atomic
from sadm_nnunet.nnunet_plans import resolve_diffusion_settings
from sadm_nnunet.training.augmentation import healthy_image_transforms
from sadm_nnunet.training.checkpoints import AtomicCheckpointMixin
from sadm_nnunet.training.trainer_base import SADMTrainerMixin

# Label names a healthy stage-I dataset may carry. nnU-Net's fingerprint needs foreground voxels, so healthy
# datasets label the brain mask; the denoiser ignores labels.
HEALTHY_LABEL_NAMES = frozenset({"background", "brain"})

__all__ = [
    "SADMDiffusionTrainer",
    "SADMDiffusionTrainer_1epoch",
    "SADMDiffusionTrainer_2epochs",
    "SADMDiffusionTrainer_4epochs",
    "SADMDiffusionTrainer_5epochs",
    "SADMDiffusionTrainer_2epochs_10its",
    "SADMDiffusionTrainer_3epochs_100its",
    "SADMDiffusionTrainer_cDDPM",
    "SADMDiffusionTrainer_cDDPM_5epochs",
    "SADMDiffusionTrainer_cDDPM_2epochs_10its",
]

class SADMDiffusionTrainer(SADMTrainerMixin, AtomicCheckpointMixin, nnUNetTrainer):
    """Trains the stage-I denoiser on a healthy nnU-Net dataset (labels must be all background)."""

    image_encoder: str | None = None  # cDDPM conditioning this trainer trains (conditioning.encoder)
    # epoch counts N (from 1) after which the EMA denoiser is also exported to FOLD/diffusion_model_epoch_N, to
    # compare lengths of one training (`sadm_nnunet_reconstruct --epoch N`, benchmarks/stage1_curve.py)
    export_epochs: tuple[int, ...] = ()

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        self.settings = resolve_diffusion_settings(plans, configuration, self.image_encoder, type(self).__name__)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.settings.training.learning_rate
        self.weight_decay = self.settings.training.weight_decay
        self.enable_deep_supervision = False
        self.oversample_foreground_percent = 0.0
        self.noise_scheduler = make_scheduler(self.settings)
        for key in ("val_l1", "val_ssim"):
            self.logger.local_logger.my_fantastic_logging.setdefault(key, [])
        self.apply_run_length()

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True) -> EMADenoiser:
        settings = DiffusionSettings.from_configuration(configuration_manager.configuration)
        return EMADenoiser.from_settings(settings, tuple(configuration_manager.patch_size), num_input_channels)

    # ---- network plumbing ----
    def denoiser(self) -> EMADenoiser:
        return self.unwrapped_network()

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        pass  # the denoiser has a single output

    def _build_loss(self):
        return torch.nn.L1Loss()

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.denoiser().trainable_parameters(), lr=self.initial_lr,
                                     weight_decay=self.weight_decay)
        # exponent 0: constant learning rate, as in the paper, through nnU-Net's scheduler interface
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs, exponent=0.0)

    @staticmethod
    def get_training_transforms(patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, use_mask_for_norm=None, is_cascaded=False,
                                foreground_labels=None, regions=None, ignore_label=None):
        return healthy_image_transforms(patch_size, rotation_for_DA, mirror_axes, use_mask_for_norm)

    def reconstructor(self) -> Reconstructor:
        return Reconstructor(self.denoiser().ema, self.settings)

    # ---- training ----
    def on_train_start(self):
        self._refuse_foreground_labels()
        super().on_train_start()

    def _refuse_foreground_labels(self) -> None:
        """Stage I must see healthy data only. nnU-Net's fingerprinting needs some foreground, so a healthy dataset
        may label the brain mask (label name 'brain'); any other label with voxels makes us refuse the dataset."""
        allowed = {v for k, v in self.dataset_json["labels"].items() if k in HEALTHY_LABEL_NAMES}
        folder = self.preprocessed_dataset_folder
        offending = []
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".pkl"):
                continue
            locations = load_pickle(join(folder, name)).get("class_locations", {})
            found = sorted(k for k, v in locations.items() if len(v) and k not in allowed)
            if found:
                offending.append(f"{name[:-4]} (labels {found})")
        if offending:
            # nnUNetv2_train's run_training lets exceptions through as tracebacks; the trainer is this command's
            # context, so a refused dataset ends it with one line on stderr and exit status 1
            raise SystemExit(
                f"{type(self).__name__}: error: SADMDiffusionTrainer trains on healthy scans only, but "
                f"{len(offending)} case(s) of {self.plans_manager.dataset_name} contain labels other than {sorted(HEALTHY_LABEL_NAMES)}: "
                f"{', '.join(offending[:5])}{' ...' if len(offending) > 5 else ''}. Expected healthy scans whose "
                f"labels are background (and optionally the brain mask as label 'brain'); a lesion in stage-I "
                f"training would be learnt as healthy anatomy.")

    def train_step(self, batch: dict) -> dict:
        result = self.denoising_step(batch)
        self.report_progress(result["loss"])
        return result

    def denoising_step(self, batch: dict) -> dict:
        """One optimisation step: L1 between the denoiser's x0 prediction and the clean slices."""
        x0 = self.settings.to_model_space(batch["data"].to(self.device, non_blocking=True))
        t = torch.randint(0, self.settings.num_train_timesteps, (x0.shape[0],), device=self.device)
        noise = sample_noise(tuple(x0.shape), self.settings.noise, None, self.device)
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            prediction = self.network(noisy, t, x0)  # x0: what a cDDPM denoiser's image encoder embeds
        loss = self.loss(prediction.float(), x0)
        clip = self.settings.training.grad_clip
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.denoiser().trainable_parameters(), clip)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.denoiser().trainable_parameters(), clip)
            self.optimizer.step()
        self.denoiser().update_ema()
        return {"loss": loss.detach().cpu().numpy()}

    # ---- validation: reconstruction quality at the test noise levels ----
    def _reconstruction_errors(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Per-slice L1 (in the denoiser's range) and SSIM inside the image's nonzero region."""
        reconstruction = self.reconstructor()(images)
        a = self.settings.to_model_space(images.float())
        b = self.settings.to_model_space(reconstruction.float(), images)
        mask = (images != 0).any(1, keepdim=True)
        l1 = masked_mean((a - b).abs(), mask)
        ssim = masked_mean(ssim_map(a, b, data_range=self.settings.ssim_data_range), mask)
        keep = mask.flatten(1).any(1)
        return l1[keep].cpu().numpy(), ssim[keep].cpu().numpy()

    def validation_step(self, batch: dict) -> dict:
        l1, ssim = self._reconstruction_errors(batch["data"].to(self.device, non_blocking=True))
        return {"l1": l1, "ssim": ssim}

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        l1 = np.concatenate([o["l1"] for o in val_outputs])
        ssim = np.concatenate([o["ssim"] for o in val_outputs])
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (l1, ssim))
            l1 = np.concatenate([g[0] for g in gathered])
            ssim = np.concatenate([g[1] for g in gathered])
        mean_l1 = float(np.mean(l1)) if l1.size else float("nan")
        mean_ssim = float(np.mean(ssim)) if ssim.size else float("nan")
        epoch = self.current_epoch
        self.logger.log("val_losses", mean_l1, epoch)
        self.logger.log("val_l1", mean_l1, epoch)
        self.logger.log("val_ssim", mean_ssim, epoch)
        self.logger.log("mean_fg_dice", mean_ssim, epoch)
        self.logger.log("dice_per_class_or_region", [mean_ssim], epoch)

    def print_to_log_file(self, *args, also_print_to_console: bool = True, add_timestamp: bool = True):
        """nnU-Net's log, with its segmentation wording of the epoch summary (on_epoch_end) replaced by what stage I
        measures: the 'Pseudo dice' is the validation SSIM and the 'val_loss' its L1; the logger keys that
        progress.png and the choice of checkpoint_best read stay nnU-Net's."""
        label = args[0] if args and isinstance(args[0], str) else ""
        if label == "val_loss":
            return  # printed with the SSIM, on the 'Pseudo dice' line
        if label == "Pseudo dice":
            args = (f"Validation SSIM {self.logger.get_value('val_ssim', step=-1):.4f}, "
                    f"L1 {self.logger.get_value('val_l1', step=-1):.4f} (reconstruction at noise levels "
                    f"{list(self.settings.reconstruction.noise_levels)})",)
        elif label.startswith("Yayy! New best EMA pseudo Dice"):
            args = (f"New best validation SSIM (moving average over epochs): {self._best_ema:.4f}, saved "
                    f"checkpoint_best.pth",)
        super().print_to_log_file(*args, also_print_to_console=also_print_to_console, add_timestamp=add_timestamp)

    def on_epoch_end(self):
        # before nnU-Net's on_epoch_end writes checkpoint_latest: a run stopped in between repeats the epoch after
        # `--c` and writes its export again, so no export is missing from a resumed run
        done = self.current_epoch + 1
        if done in self.export_epochs:
            self._export_denoiser(epoch_export_folder_name(done))
        super().on_epoch_end()

    def on_train_end(self):
        super().on_train_end()
        self._export_denoiser(EXPORT_FOLDER_NAME)

    def _export_denoiser(self, name: str) -> None:
        if self.local_rank == 0:
            folder = save_diffusion_model(self.denoiser().ema, self.settings, join(self.output_folder, name))
            self.print_to_log_file(f"Diffusion model (EMA weights) exported to {folder}")

    def perform_actual_validation(self, save_probabilities: bool = False):
        """Reconstructs every slice of the validation cases and writes validation/summary.json (L1, SSIM)."""
        if self.local_rank != 0:
            return
        self.network.eval()
        _, val_keys = self.do_split()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, val_keys)
        per_case = {}
        for key in dataset.identifiers:
            data = torch.from_numpy(np.asarray(dataset.load_case(key)[0][:], dtype=np.float32))
            l1, ssim = self._reconstruction_errors(data.permute(1, 0, 2, 3).to(self.device))
            per_case[key] = {"l1": float(np.mean(l1)), "ssim": float(np.mean(ssim)), "slices": int(l1.size)}
            self.print_to_log_file(f"validation {key}: L1 {per_case[key]['l1']:.4f}, SSIM {per_case[key]['ssim']:.4f}")
        mean = {m: float(np.mean([c[m] for c in per_case.values()])) for m in ("l1", "ssim")} if per_case else {}
        write_json_atomic({"noise_levels": list(self.settings.reconstruction.noise_levels),
                           "mean": mean, "per_case": per_case},
                          join(self.output_folder, "validation", "summary.json"))
        for m, v in mean.items():
            self.logger.log_summary(f"final_val/reconstruction_{m}", v)
        self.print_to_log_file(f"Validation complete: {mean}")


class SADMDiffusionTrainer_1epoch(SADMDiffusionTrainer):
    run_length = {"num_epochs": 1}


class SADMDiffusionTrainer_2epochs(SADMDiffusionTrainer):
    run_length = {"num_epochs": 2}


class SADMDiffusionTrainer_4epochs(SADMDiffusionTrainer):
    run_length = {"num_epochs": 4}


class SADMDiffusionTrainer_5epochs(SADMDiffusionTrainer):
    run_length = {"num_epochs": 5}


class SADMDiffusionTrainer_2epochs_10its(SADMDiffusionTrainer):
    """For tests: 2 epochs of 10 iterations, a checkpoint every epoch."""

    run_length = {"num_epochs": 2, "num_iterations_per_epoch": 10, "num_val_iterations_per_epoch": 2,
                  "save_every": 1}


class SADMDiffusionTrainer_3epochs_100its(SADMDiffusionTrainer):
    """For tests: 300 iterations in 3 epochs; 10 validation batches average out the random validation patches; the
    denoiser exported after epochs 1 and 2 as well."""

    run_length = {"num_epochs": 3, "num_iterations_per_epoch": 100, "num_val_iterations_per_epoch": 10,
                  "save_every": 1}
    export_epochs = (1, 2)


class SADMDiffusionTrainer_cDDPM(SADMDiffusionTrainer):
    """cDDPM: the denoiser is conditioned on a convolutional image encoder's embedding of the clean slice (added to
    the time embedding), trained jointly from scratch; reconstruction conditions on the slice it reconstructs."""

    image_encoder = "conv"


class SADMDiffusionTrainer_cDDPM_5epochs(SADMDiffusionTrainer_cDDPM):
    run_length = SADMDiffusionTrainer_5epochs.run_length


class SADMDiffusionTrainer_cDDPM_2epochs_10its(SADMDiffusionTrainer_cDDPM):
    """For tests: 2 epochs of 10 iterations, a checkpoint every epoch."""

    run_length = SADMDiffusionTrainer_2epochs_10its.run_length
