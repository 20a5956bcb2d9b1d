"""Pseudo-healthy reconstruction: the one entry point that stage II, the unsupervised baseline and the benchmarks use.

Input and output are nnU-Net-normalised (z-scored) images. A 4D tensor (N, C, H, W) is a stack of slices; a 5D
tensor (B, C, D, H, W) is reconstructed slice by slice along D. Noise is drawn from a generator seeded with the
settings' seed for every call, so the same input always gives the same reconstruction (sliding-window inference
and mirroring call this once per tile and flip). A cDDPM denoiser (`ConditionedUNet`) is conditioned on its image
encoder's embedding of the whole input slice, for every method; with `patch_grid > 1` too, where the UNet sees the
whole slice with one tile noised, the encoder sees the whole un-noised slice (one embedding per slice, reused for
every tile, noise level and step).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from sadm_nnunet.diffusion.model import SCHEDULERS, ConditionedUNet, make_scheduler, parts
from sadm_nnunet.diffusion.noise import sample_noise
from sadm_nnunet.diffusion.settings import DiffusionSettings, ReconstructionSettings


class Reconstructor:
    """Reconstructs images with a trained x0-predicting `UNet2DModel` (or cDDPM `ConditionedUNet`) according to
    `ReconstructionSettings`.

    Methods: `single_step` (default; one network pass per noise level, averaged over the levels), `iterative`
    (denoise from each level down to 0 with a DDPM or DDIM sampler in `num_steps` steps) and, for either,
    `patch_grid > 1` (pDDPM: noise one tile of the grid at a time, keep the prediction inside the tile).
    """

    def __init__(self, model: UNet2DModel | ConditionedUNet, settings: DiffusionSettings,
                 reconstruction: ReconstructionSettings | None = None) -> None:
        self.model = model
        self.unet, self.image_encoder = parts(model)
        self.settings = settings
        self.options = reconstruction if reconstruction is not None else settings.reconstruction
        self.scheduler = make_scheduler(settings, "ddpm")
        self.divisor = 2 ** (len(self.unet.config.block_out_channels) - 1)

    def passes_per_slice(self) -> int:
        """Number of network evaluations per slice for the configured method."""
        o = self.options
        per_level = [1 if o.method == "single_step" else len(self._timesteps(t)[0]) for t in o.noise_levels]
        return sum(per_level) * o.patch_grid ** 2

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The configured reconstruction (seeded: the same input always gives the same output): the mean of
        `per_level`."""
        return self.per_level(images).float().mean(dim=0).to(images.dtype)

    @torch.no_grad()
    def per_level(self, images: torch.Tensor) -> torch.Tensor:
        """(L, *images.shape): the reconstruction from each of the L noise levels, seeded, with the same noise as
        `__call__`, whose result is their mean."""
        return self._slice_wise(images, self._reconstruct_levels)

    @torch.no_grad()
    def at_random_levels(self, images: torch.Tensor) -> torch.Tensor:
        """One denoiser pass per slice from a noise level drawn uniformly from [0, T), with fresh noise: the
        stage-II training augmentation (the reconstruction's quality varies from sample to sample)."""
        return self._slice_wise(images, self._reconstruct_random_levels)

    def _slice_wise(self, images: torch.Tensor, reconstruct) -> torch.Tensor:
        if images.ndim == 5:
            b, c, d, h, w = images.shape
            slices = images.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)
            out = self._slice_wise(slices, reconstruct)  # (..., b * d, c, h, w)
            return out.reshape(*out.shape[:-4], b, d, c, h, w).transpose(-4, -3)
        if images.ndim != 4:
            raise ValueError(f"Reconstruction expects (N, C, H, W) slices or (B, C, D, H, W) volumes; "
                             f"found shape {tuple(images.shape)}")
        expected = self.unet.config.in_channels
        if images.shape[1] != expected:
            raise ValueError(f"The diffusion model was trained on {expected} image channel(s); the input has "
                             f"{images.shape[1]} (shape {tuple(images.shape)})")
        was_training = self.model.training
        self.model.eval()
        try:
            return reconstruct(images)
        finally:
            self.model.train(was_training)

    def _padded_model_space(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        return F.pad(self.settings.to_model_space(images.float()), (0, (-w) % self.divisor, 0, (-h) % self.divisor),
                     value=self.settings.model_space_padding)

    def _reconstruct_random_levels(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        x0 = self._padded_model_space(images)
        levels = torch.randint(0, self.settings.num_train_timesteps, (n,))
        noise = sample_noise(tuple(x0.shape), self.settings.noise, None, x0.device)
        noisy = self.scheduler.add_noise(x0, noise, levels)
        out = self._predict_in_chunks(noisy, levels.to(x0.device), self._embed(x0))
        return self.settings.from_model_space(out[:, :, :h, :w], images).to(images.dtype)

    def _reconstruct_levels(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        x0 = self._padded_model_space(images)
        embedding = self._embed(x0)
        if self.options.method == "single_step" and self.options.patch_grid == 1:
            out = self._single_step_levels(x0, embedding)
        else:
            generator = seeded_generator(self.options.seed)
            out = torch.zeros((len(self.options.noise_levels), *x0.shape), dtype=x0.dtype, device=x0.device)
            for i, level in enumerate(self.options.noise_levels):
                noise = sample_noise(tuple(x0.shape), self.settings.noise, generator, x0.device)
                for sl in self._chunks(n):
                    out[i, sl] = self._reconstruct_level(x0[sl], noise[sl], level, generator,
                                                         None if embedding is None else embedding[sl])
        return self.settings.from_model_space(out[..., :h, :w], images).to(images.dtype)

    def _single_step_levels(self, x0: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor:
        """(L, *x0.shape): the default method with every noise level of a slice in the same network batch (one call
        for a sliding-window tile instead of one per level); the same noise, hence the same result, as level by
        level."""
        n = x0.shape[0]
        levels = self.options.noise_levels
        noises = self._seeded_noises(tuple(x0.shape), x0.device)
        noisy = torch.cat([noised_to(self.scheduler, x0, noise, level) for noise, level in zip(noises, levels)])
        timesteps = torch.tensor(levels, device=x0.device, dtype=torch.long).repeat_interleave(n)
        embeddings = None if embedding is None else embedding.repeat(len(levels), 1)
        return self._predict_in_chunks(noisy, timesteps, embeddings).reshape(len(levels), *x0.shape)

    @torch.compiler.disable
    def _seeded_noises(self, shape: tuple[int, ...], device: torch.device) -> list[torch.Tensor]:
        """One noise tensor per noise level, drawn in order from a generator seeded with the settings' seed. Kept out
        of torch.compile graphs (nnU-Net compiles the whole SADM network on CUDA): a generator made and drawn from
        inside a graph breaks it at every draw; here it breaks once per call, and the noise is the same."""
        generator = seeded_generator(self.options.seed)
        return [sample_noise(shape, self.settings.noise, generator, device) for _ in self.options.noise_levels]

    def _chunks(self, n: int) -> list[slice]:
        """Row slices of at most `batch_size`: every network call is chunked, which bounds peak memory."""
        return [slice(start, start + self.options.batch_size) for start in range(0, n, self.options.batch_size)]

    def _embed(self, x0: torch.Tensor) -> torch.Tensor | None:
        """The cDDPM image encoder's embedding of the (padded, model-space) input slices, computed in chunks; None
        if unconditioned."""
        if self.image_encoder is None:
            return None
        return torch.cat([self.image_encoder(x0[sl]) for sl in self._chunks(x0.shape[0])])

    def _predict_in_chunks(self, noisy: torch.Tensor, timesteps: torch.Tensor,
                           embeddings: torch.Tensor | None) -> torch.Tensor:
        out = torch.empty_like(noisy)
        for sl in self._chunks(noisy.shape[0]):
            out[sl] = self._predict(noisy[sl], timesteps[sl], None if embeddings is None else embeddings[sl])
        return out

    def _predict(self, x: torch.Tensor, timesteps: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor:
        return self.unet(x, timesteps, class_labels=embedding).sample

    def _reconstruct_level(self, x0: torch.Tensor, noise: torch.Tensor, level: int, generator: torch.Generator,
                           embedding: torch.Tensor | None) -> torch.Tensor:
        grid = self.options.patch_grid
        if grid == 1:
            return self._denoise(x0, noise, level, None, generator, embedding)
        h, w = x0.shape[-2:]
        out = torch.zeros_like(x0)
        for i in range(grid):
            for j in range(grid):
                mask = torch.zeros((1, 1, h, w), device=x0.device, dtype=x0.dtype)
                mask[..., i * h // grid:(i + 1) * h // grid, j * w // grid:(j + 1) * w // grid] = 1
                out += mask * self._denoise(x0, noise, level, mask, generator, embedding)
        return out

    def _timesteps(self, level: int) -> tuple[list[int], int]:
        """Descending timesteps from `level` with about `num_steps` steps, and the stride between them. The stride
        is T // N for an integer N, which is the step a diffusers scheduler set to N inference steps takes."""
        total = self.settings.num_train_timesteps
        num_inference_steps = max(1, total // max(1, level // self.options.num_steps))
        stride = total // num_inference_steps
        start = (level // stride) * stride  # on the scheduler's grid (multiples of the stride), which DDPM requires
        return (list(range(start, 0, -stride)) or [0]), num_inference_steps

    def _denoise(self, x0: torch.Tensor, noise: torch.Tensor, level: int, mask: torch.Tensor | None,
                 generator: torch.Generator, embedding: torch.Tensor | None) -> torch.Tensor:
        """Noises x0 to `level` (only inside `mask` when given) and predicts the clean image (conditioned on
        `embedding` for cDDPM)."""
        def noised(t: int) -> torch.Tensor:
            xt = noised_to(self.scheduler, x0, noise, t)
            return xt if mask is None else mask * xt + (1 - mask) * x0

        def predict(x: torch.Tensor, t: int) -> torch.Tensor:
            return self._predict(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long), embedding)

        if self.options.method == "single_step":
            return predict(noised(level), level)
        timesteps, num_inference_steps = self._timesteps(level)
        stride = self.settings.num_train_timesteps // num_inference_steps
        sampler = SCHEDULERS[self.options.sampler].from_config(self.scheduler.config)
        sampler.set_timesteps(num_inference_steps)
        x = noised(timesteps[0])
        for t in timesteps:
            x0_hat = predict(x, t)
            kwargs = {"generator": generator} if self.options.sampler == "ddpm" else {"eta": 0.0}
            x = sampler.step(x0_hat, t, x, **kwargs).prev_sample
            if mask is not None and t > 0:
                x = mask * x + (1 - mask) * noised_to(self.scheduler, x0, noise, t - stride)
        return x


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with `seed` (noise is drawn on the CPU, so it does not depend on the device)."""
    return torch.Generator(device="cpu").manual_seed(seed)


def noised_to(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
    """x0 noised to timestep t (identity for t < 0, e.g. the known context outside a pDDPM tile at the end)."""
    if t < 0:
        return x0
    return scheduler.add_noise(x0, noise, torch.full((x0.shape[0],), t, dtype=torch.long))
