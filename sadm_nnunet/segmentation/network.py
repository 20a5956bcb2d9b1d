"""The SADM network: image -> frozen pseudo-healthy reconstruction -> stacked channels -> nnU-Net's segmentation
network. It is what `SADMTrainer.build_network_architecture` returns, so training, nnU-Net's final validation and
`nnUNetv2_predict` all run the same module, and its state dict (hence every checkpoint) carries the denoiser's
weights: a trained model folder is self-contained.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn
from diffusers import UNet2DModel

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from sadm_nnunet.diffusion.model import ConditionedUNet, build_model
from sadm_nnunet.diffusion.reconstruction import Reconstructor
from sadm_nnunet.diffusion.settings import encoder_config
from sadm_nnunet.segmentation.settings import SADMSettings


class SADMNetwork(nn.Module):
    """`segmentation(cat([image, second]))` with second = image - reconstruction ('image+residual') or the
    reconstruction ('image+reconstruction').

    The denoiser (a `UNet2DModel`, or for a cDDPM stage-I model a `ConditionedUNet` with its image encoder) is
    frozen (no gradients, never in an optimizer) and stays in eval mode when nnU-Net calls
    `train()`. In training mode with `training_noise_level == 'uniform'` each sample is reconstructed from a random
    noise level (augmentation); in eval mode the reconstruction is seeded and deterministic, so sliding-window tiles
    and mirrored copies see consistent reconstructions. In eval mode `prediction_ensemble` decides what is
    segmented: 'mean_reconstruction' segments the image with the mean of the noise levels' reconstructions once;
    'per_level' (the authors' test step) segments it with each level's reconstruction and averages the logits.
    """

    def __init__(self, denoiser: UNet2DModel | ConditionedUNet, settings: SADMSettings,
                 segmentation: nn.Module) -> None:
        super().__init__()
        self.denoiser = denoiser.requires_grad_(False).eval()
        self.segmentation = segmentation
        self.input_mode = settings.input_mode
        self.training_noise_level = settings.training_noise_level
        self.prediction_ensemble = settings.prediction_ensemble
        self.reconstructor = Reconstructor(self.denoiser, settings.diffusion)
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (input, per-level reconstructions), eval mode

    def train(self, mode: bool = True) -> "SADMNetwork":
        super().train(mode)
        self.denoiser.eval()
        self._last = None
        return self

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        if self.training:
            if self.training_noise_level == "uniform":
                return self.reconstructor.at_random_levels(images)
            return self.reconstructor(images)
        return self.reconstructions_per_level(images).float().mean(dim=0).to(images.dtype)

    @torch.no_grad()
    def reconstructions_per_level(self, images: torch.Tensor) -> torch.Tensor:
        """Eval mode: (L, *images.shape), each noise level's reconstruction (their mean is `reconstruct`'s); the
        last one is kept, so a mirrored copy of the same tile costs no denoiser pass."""
        reused = self._reuse_last(images)
        if reused is not None:
            return reused
        levels = self.reconstructor.per_level(images)
        self._last = (images.detach().clone(), levels)
        return levels

    def _reuse_last(self, images: torch.Tensor) -> torch.Tensor | None:
        """The last reconstructions, flipped, if `images` is the last input flipped along some spatial axes."""
        if self._last is None:
            return None
        previous, levels = self._last
        if previous.shape != images.shape or previous.device != images.device or previous.dtype != images.dtype:
            return None
        if torch.equal(previous, images):
            return levels
        spatial = list(range(2, images.ndim))
        for n in range(1, len(spatial) + 1):
            for axes in itertools.combinations(spatial, n):
                if torch.equal(torch.flip(previous, axes), images):
                    return torch.flip(levels, [a + 1 for a in axes])  # levels has a leading axis
        return None

    def stack(self, images: torch.Tensor, reconstruction: torch.Tensor | None = None) -> torch.Tensor:
        """The segmentation network's input: the image and its residual (or reconstruction), channels stacked."""
        if reconstruction is None:
            reconstruction = self.reconstruct(images)
        reconstruction = reconstruction.to(images.dtype)
        second = images - reconstruction if self.input_mode == "image+residual" else reconstruction
        return torch.cat([images, second], dim=1)

    def forward(self, images: torch.Tensor):
        if self.training or self.prediction_ensemble == "mean_reconstruction":
            return self.segmentation(self.stack(images))
        outputs = [self.segmentation(self.stack(images, level)) for level in self.reconstructions_per_level(images)]
        return average_outputs(outputs)


def average_outputs(outputs: list):
    """The element-wise mean of segmentation outputs: tensors, or lists of tensors (deep supervision)."""
    if isinstance(outputs[0], (list, tuple)):
        return type(outputs[0])(average_outputs(list(scales)) for scales in zip(*outputs))
    return torch.stack(outputs).mean(dim=0)


def build_sadm_network(settings: SADMSettings, configuration_manager, num_input_channels: int,
                       num_output_channels: int, enable_deep_supervision: bool) -> SADMNetwork:
    """The SADM network for an nnU-Net configuration: nnU-Net's architecture from the plans with twice the image
    channels, and an (untrained) denoiser of the recorded architecture whose weights come from a checkpoint or
    from `load_stage1_weights`."""
    if num_input_channels != settings.num_image_channels:
        raise ValueError(
            f"The dataset has {num_input_channels} image channel(s), but the stage-I model "
            f"{settings.stage1.dataset} ({settings.stage1.trainer}) was trained on {settings.num_image_channels}. "
            f"Train stage I on the same channels, then run sadm_nnunet_plan again.")
    segmentation = get_network_from_plans(
        configuration_manager.network_arch_class_name,
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        2 * num_input_channels,
        num_output_channels,
        allow_init=True,
        deep_supervision=enable_deep_supervision,
    )
    denoiser = build_model(settings.denoiser, encoder_config(settings.diffusion, settings.denoiser))
    return SADMNetwork(denoiser, settings, segmentation)
