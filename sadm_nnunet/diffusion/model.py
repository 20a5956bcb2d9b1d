"""The stage-I network: a diffusers `UNet2DModel` that predicts the clean slice x0 (for cDDPM a `ConditionedUNet`:
the UNet conditioned on an image encoder's embedding of the clean slice), the `EMADenoiser` that stage I trains
(the denoiser plus an EMA copy of its weights for inference), and the noise scheduler that goes with them."""
from __future__ import annotations

import torch
from torch import nn
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

from sadm_nnunet.diffusion.encoder import ImageEncoder
from sadm_nnunet.diffusion.settings import DiffusionSettings, encoder_config, time_embedding_dim, unet_config

SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}


def make_scheduler(settings: DiffusionSettings, kind: str = "ddpm") -> DDPMScheduler | DDIMScheduler:
    """The noise schedule of the settings; the denoiser predicts x0 ("sample"). No clipping: the denoiser's range
    is z-scores / intensity_scale, which bright voxels may leave."""
    return SCHEDULERS[kind](
        num_train_timesteps=settings.num_train_timesteps,
        beta_schedule=settings.beta_schedule,
        prediction_type="sample",
        clip_sample=False,
    )


class ConditionedUNet(nn.Module):
    """The cDDPM denoiser: `unet(noisy, t, class_labels=image_encoder(clean))`, one module for checkpoints."""

    def __init__(self, unet: UNet2DModel, image_encoder: ImageEncoder) -> None:
        super().__init__()
        if unet.config.class_embed_type != "identity":
            raise ValueError(f"A cDDPM UNet2DModel needs class_embed_type 'identity'; found "
                             f"{unet.config.class_embed_type!r}")
        expected = time_embedding_dim(dict(unet.config))
        if image_encoder.config.embedding_dim != expected:
            raise ValueError(f"The image encoder's embedding_dim is {image_encoder.config.embedding_dim}; the UNet's "
                             f"time embedding has {expected} channels")
        self.unet = unet
        self.image_encoder = image_encoder

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, clean: torch.Tensor | None) -> torch.Tensor:
        """The x0 prediction for `noisy`, conditioned on the embedding of `clean` (same slices, un-noised)."""
        if clean is None:
            raise ValueError("A cDDPM denoiser needs the clean (un-noised) slices to condition on; found None")
        return self.unet(noisy, timesteps, class_labels=self.image_encoder(clean)).sample


def build_model(unet_config: dict, image_encoder_config: dict | None) -> UNet2DModel | ConditionedUNet:
    """A freshly initialised denoiser: a plain `UNet2DModel`, or with an image encoder config a `ConditionedUNet`."""
    unet = UNet2DModel(**unet_config)
    if image_encoder_config is None:
        return unet
    return ConditionedUNet(unet, ImageEncoder(**image_encoder_config))


def parts(model: UNet2DModel | ConditionedUNet) -> tuple[UNet2DModel, ImageEncoder | None]:
    """The UNet of a denoiser and its image encoder (None for an unconditioned one)."""
    if isinstance(model, ConditionedUNet):
        return model.unet, model.image_encoder
    return model, None


class EMADenoiser(nn.Module):
    """A `UNet2DModel` trained to predict x0 (with an image encoder config: a `ConditionedUNet`, cDDPM), plus an
    exponential moving average of its weights (`ema`, encoder included).

    `ema` is what reconstruction uses; it takes no gradients and stays in eval mode. Both are ordinary submodules,
    so nnU-Net's checkpoints (and `--c`) carry them.
    """

    def __init__(self, config: dict, ema_decay: float, image_encoder: dict | None = None) -> None:
        super().__init__()
        self.unet = build_model(config, image_encoder)
        self.ema = build_model(config, image_encoder)
        self.ema.load_state_dict(self.unet.state_dict())
        self.ema.requires_grad_(False)
        self.ema_decay = float(ema_decay)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_settings(cls, settings: DiffusionSettings, patch_size: tuple[int, ...], num_channels: int
                      ) -> "EMADenoiser":
        config = unet_config(settings, patch_size, num_channels)
        return cls(config, settings.training.ema_decay, encoder_config(settings, config))

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, clean: torch.Tensor | None = None
                ) -> torch.Tensor:
        """The x0 prediction. `clean` (the un-noised slices) is what a cDDPM denoiser's image encoder embeds; an
        unconditioned denoiser does not use it."""
        if isinstance(self.unet, ConditionedUNet):
            return self.unet(noisy, timesteps, clean)
        return self.unet(noisy, timesteps).sample

    def train(self, mode: bool = True) -> "EMADenoiser":
        super().train(mode)
        self.ema.eval()
        return self

    def trainable_parameters(self):
        return self.unet.parameters()

    @torch.no_grad()
    def update_ema(self) -> None:
        """One EMA step, with the usual warm-up: decay = min(ema_decay, (1 + n) / (10 + n))."""
        n = float(self.ema_updates.item())
        decay = min(self.ema_decay, (1.0 + n) / (10.0 + n))
        ema_params = list(self.ema.parameters())
        torch._foreach_lerp_(ema_params, [p.detach() for p in self.unet.parameters()], 1.0 - decay)
        self.ema_updates += 1
