"""cDDPM conditioning: the image encoder whose embedding of a slice is added to the denoiser's time embedding
(`model.ConditionedUNet` joins the two).

In cDDPM (Behrendt et al.) the encoder sees the clean slice while the denoiser learns to restore its noised copy,
and at inference the slice being reconstructed (which may hold an anomaly), so the reconstruction keeps
subject-specific healthy detail. The paper used an ImageNet-pretrained ResNet-50; nothing can be downloaded here,
so `ImageEncoder` is a small convolutional network trained jointly with the UNet from scratch. The UNet is a plain
diffusers `UNet2DModel` with `class_embed_type="identity"`, which adds `class_labels` of shape (B, time_embed_dim)
to the time embedding; the encoder is a diffusers model too (config + safetensors via `save_pretrained`).
"""
from __future__ import annotations

import torch
from torch import nn
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config

from sadm_nnunet.diffusion.settings import ENCODER_NORM_GROUPS


class ImageEncoder(ModelMixin, ConfigMixin):
    """Slices (B, C, H, W) -> embeddings (B, embedding_dim): a 3x3 convolution to `base_channels`, `levels` times
    GroupNorm + SiLU + a stride-2 3x3 convolution that doubles the width, global average pooling, a linear layer."""

    @register_to_config
    def __init__(self, in_channels: int, embedding_dim: int, base_channels: int, levels: int) -> None:
        super().__init__()
        widths = [base_channels * 2 ** i for i in range(levels + 1)]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.GroupNorm(ENCODER_NORM_GROUPS, w_in), nn.SiLU(), nn.Conv2d(w_in, w_out, 3, 2, padding=1)]
        layers += [nn.GroupNorm(ENCODER_NORM_GROUPS, widths[-1]), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                   nn.Linear(widths[-1], embedding_dim)]
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)
