"""Stage-I settings: the one place that says what every diffusion setting means and what its default is.

The defaults live in the JSON template `plans/sadm_diffusion.json` (installed as `sadm_nnunet.plans`); a dataset's
nnU-Net plans may hold an override block under `configurations/<name>/sadm_diffusion`. Keys are checked strictly:
an unknown key or a wrong type is an error, never silently ignored.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any, Callable

import numpy as np

PLANS_KEY = "sadm_diffusion"
TEMPLATE_NAME = "sadm_diffusion.json"
NOISE_KINDS = ("simplex", "gaussian")
RECONSTRUCTION_METHODS = ("single_step", "iterative")
SAMPLERS = ("ddpm", "ddim")
BACKGROUNDS = ("brain_mean", "floor")  # where `to_model_space` puts the voxels outside the brain (see `background`)
IMAGE_ENCODERS = ("conv",)  # cDDPM's image encoders (conditioning.encoder); null: unconditioned DDPM
ENCODER_NORM_GROUPS = 8  # GroupNorm groups of the image encoder's layers
MODEL_SPACE_RANGE = 2.0  # the denoiser works in the scheduler's range [-1, 1] (see `to_model_space`)


def load_template(name: str = TEMPLATE_NAME) -> dict:
    """The paper-default settings of a JSON template in `plans/` (default: sadm_diffusion.json), comment keys
    removed."""
    text = resources.files("sadm_nnunet.plans").joinpath(name).read_text()
    return _strip_comments(json.loads(text))


def _strip_comments(d: dict) -> dict:
    return {k: _strip_comments(v) if isinstance(v, dict) else v for k, v in d.items() if not k.startswith("_")}


def merge_settings(base: dict, overrides: dict, where: str = PLANS_KEY) -> dict:
    """Deep-merges `overrides` into `base`; keys that `base` does not have are rejected."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if key.startswith("_"):
            continue
        if key not in base:
            raise KeyError(f"Unknown setting '{where}.{key}'. Known settings: {sorted(base)}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise TypeError(f"Setting '{where}.{key}' must be an object, found {value!r}")
            merged[key] = merge_settings(base[key], value, f"{where}.{key}")
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@dataclass(frozen=True)
class NoiseSettings:
    kind: str
    octaves: int
    persistence: float
    frequency: float


@dataclass(frozen=True)
class UNetSettings:
    base_channels: int
    max_channels: int
    min_resolution: int
    max_levels: int
    layers_per_block: int
    attention_levels: int
    norm_num_groups: int


@dataclass(frozen=True)
class ConditioningSettings:
    """cDDPM: an image encoder's embedding of the clean slice added to the denoiser's time embedding."""
    encoder: str | None
    base_channels: int
    levels: int


@dataclass(frozen=True)
class TrainingSettings:
    learning_rate: float
    weight_decay: float
    ema_decay: float
    grad_clip: float


@dataclass(frozen=True)
class ReconstructionSettings:
    method: str
    noise_levels: tuple[int, ...]
    sampler: str
    num_steps: int
    patch_grid: int
    seed: int
    batch_size: int


@dataclass(frozen=True)
class DiffusionSettings:
    num_train_timesteps: int
    beta_schedule: str
    intensity_scale: float
    background: str
    noise: NoiseSettings
    unet: UNetSettings
    conditioning: ConditioningSettings
    training: TrainingSettings
    reconstruction: ReconstructionSettings

    @classmethod
    def from_dict(cls, d: dict, where: str = PLANS_KEY) -> "DiffusionSettings":
        """Builds validated settings from a complete dict (template merged with overrides)."""
        full = merge_settings(load_template(), d, where)
        s = cls(
            num_train_timesteps=int(full["num_train_timesteps"]),
            beta_schedule=str(full["beta_schedule"]),
            intensity_scale=float(full["intensity_scale"]),
            background=str(full["background"]),
            noise=build_dataclass(NoiseSettings, full["noise"], f"{where}.noise"),
            unet=build_dataclass(UNetSettings, full["unet"], f"{where}.unet"),
            conditioning=build_dataclass(ConditioningSettings, full["conditioning"], f"{where}.conditioning"),
            training=build_dataclass(TrainingSettings, full["training"], f"{where}.training"),
            reconstruction=build_dataclass(ReconstructionSettings, full["reconstruction"], f"{where}.reconstruction"),
        )
        s.validate(where)
        return s

    @classmethod
    def from_configuration(cls, configuration: dict) -> "DiffusionSettings":
        """Settings of an nnU-Net configuration dict: its `sadm_diffusion` block over the template defaults."""
        return cls.from_dict(configuration.get(PLANS_KEY, {}))

    def to_dict(self) -> dict:
        def conv(obj: Any) -> Any:
            if hasattr(obj, "__dataclass_fields__"):
                return {f.name: conv(getattr(obj, f.name)) for f in fields(obj)}
            if isinstance(obj, tuple):
                return list(obj)
            return obj

        return conv(self)

    def validate(self, where: str = PLANS_KEY) -> None:
        check = setting_checker(where)
        check(self.num_train_timesteps > 1, "num_train_timesteps", self.num_train_timesteps, "an integer > 1")
        check(self.intensity_scale > 0, "intensity_scale", self.intensity_scale, "a positive number")
        check(self.background in BACKGROUNDS, "background", self.background, f"one of {BACKGROUNDS}")
        check(self.noise.kind in NOISE_KINDS, "noise.kind", self.noise.kind, f"one of {NOISE_KINDS}")
        check(self.noise.octaves >= 1, "noise.octaves", self.noise.octaves, "an integer >= 1")
        check(self.noise.frequency > 0, "noise.frequency", self.noise.frequency, "a positive number")
        u = self.unet
        check(u.base_channels % u.norm_num_groups == 0, "unet.norm_num_groups", u.norm_num_groups,
              f"a divisor of unet.base_channels ({u.base_channels})")
        check(u.max_channels >= u.base_channels, "unet.max_channels", u.max_channels,
              f">= unet.base_channels ({u.base_channels})")
        check(u.max_levels >= 2, "unet.max_levels", u.max_levels, "an integer >= 2")
        c = self.conditioning
        check(c.encoder is None or c.encoder in IMAGE_ENCODERS, "conditioning.encoder", c.encoder,
              f"null (unconditioned) or one of {IMAGE_ENCODERS}")
        check(c.base_channels >= 1 and c.base_channels % ENCODER_NORM_GROUPS == 0, "conditioning.base_channels",
              c.base_channels, f"a positive multiple of {ENCODER_NORM_GROUPS}")
        check(c.levels >= 1, "conditioning.levels", c.levels, "an integer >= 1")
        r = self.reconstruction
        check(r.method in RECONSTRUCTION_METHODS, "reconstruction.method", r.method,
              f"one of {RECONSTRUCTION_METHODS}")
        check(r.sampler in SAMPLERS, "reconstruction.sampler", r.sampler, f"one of {SAMPLERS}")
        check(len(r.noise_levels) > 0 and all(0 <= t < self.num_train_timesteps for t in r.noise_levels),
              "reconstruction.noise_levels", list(r.noise_levels),
              f"a non-empty list of timesteps in [0, {self.num_train_timesteps})")
        check(r.num_steps >= 1, "reconstruction.num_steps", r.num_steps, "an integer >= 1")
        check(r.patch_grid >= 1, "reconstruction.patch_grid", r.patch_grid, "an integer >= 1 (1 = whole slice)")
        check(r.batch_size >= 1, "reconstruction.batch_size", r.batch_size, "an integer >= 1")

    # ---- the intensity contract: nnU-Net z-scores <-> the denoiser's range ----
    @property
    def ssim_data_range(self) -> float:
        """The intensity range SSIM is taken over (its stabilising constants): the width of the scheduler's range
        [-1, 1] in which `to_model_space` puts +-intensity_scale standard deviations."""
        return MODEL_SPACE_RANGE

    def to_model_space(self, z_scored, reference=None):
        """nnU-Net-normalised intensities (z-scores; a torch tensor or numpy array) -> the range the denoiser and
        scheduler work in: z / intensity_scale inside the brain. nnU-Net sets the voxels outside the brain mask to 0,
        the brain's mean z-score; `background` 'brain_mean' leaves them there, 'floor' puts them at -1, the
        scheduler's lower bound (the paper's images have a black background), so that the brain's outline survives
        heavy noise. The background is where `reference` (default: `z_scored` itself) is exactly 0: give the input
        image as reference when mapping its reconstruction."""
        x = z_scored / self.intensity_scale
        if self.background == "floor":
            x = _filled(x, (z_scored if reference is None else reference) == 0, -1.0)
        return x

    def from_model_space(self, x, z_scored_reference):
        """Inverse of `to_model_space` for a model-space image `x` (e.g. a reconstruction) of the z-scored image
        `z_scored_reference`: with `background` 'floor', the reference's background voxels (exact zeros) get 0
        again, whatever the model predicted there."""
        z = x * self.intensity_scale
        if self.background == "floor":
            z = _filled(z, z_scored_reference == 0, 0.0)
        return z

    @property
    def model_space_padding(self) -> float:
        """The model-space value of the background, which padding must use."""
        return -1.0 if self.background == "floor" else 0.0


def _filled(x, where, value: float):
    """`x` with `value` where `where` is true (broadcast), for torch tensors and numpy arrays alike."""
    if isinstance(x, np.ndarray):
        return np.where(where, np.asarray(value, dtype=x.dtype), x)
    return x.masked_fill(where, value)


def setting_checker(where: str) -> Callable[[bool, str, Any, str], None]:
    """`check(ok, key, found, expected)`: raises a ValueError naming the setting `where.key`, the value found and
    the value expected unless `ok`."""

    def check(ok: bool, key: str, found: Any, expected: str) -> None:
        if not ok:
            raise ValueError(f"Setting '{where}.{key}' is {found!r}; expected {expected}")

    return check


def build_dataclass(cls, d: dict, where: str):
    """An instance of the (flat) settings dataclass `cls` from `d`, with strict type checks."""
    kwargs = {}
    for f in fields(cls):
        value = d[f.name]
        if f.type.startswith("tuple"):
            if not isinstance(value, (list, tuple)):
                raise TypeError(f"Setting '{where}.{f.name}' must be a list, found {value!r}")
            value = tuple(int(v) for v in value)
        elif f.type == "int":
            if isinstance(value, bool) or not float(value).is_integer():
                raise TypeError(f"Setting '{where}.{f.name}' must be an integer, found {value!r}")
            value = int(value)
        elif f.type == "float":
            value = float(value)
        elif f.type == "str" and not isinstance(value, str):
            raise TypeError(f"Setting '{where}.{f.name}' must be a string, found {value!r}")
        kwargs[f.name] = value
    return cls(**kwargs)


def unet_levels(patch_size: tuple[int, int], unet: UNetSettings) -> int:
    """Number of resolution levels of the denoiser for a 2D patch size (rule documented in the template)."""
    levels = int(math.floor(math.log2(min(patch_size) / unet.min_resolution))) + 1
    return max(2, min(unet.max_levels, levels))


def unet_config(settings: DiffusionSettings, patch_size: tuple[int, ...], num_channels: int) -> dict:
    """`UNet2DModel` constructor arguments for a 2D patch size and channel count, derived by the documented rule."""
    if len(patch_size) != 2:
        raise ValueError(f"The diffusion model works on 2D slices; found a {len(patch_size)}D patch size "
                         f"{list(patch_size)}. Use a 2D nnU-Net configuration (e.g. '2d').")
    u = settings.unet
    levels = unet_levels(tuple(patch_size), u)
    factor = 2 ** (levels - 1)
    if any(p % factor for p in patch_size):
        raise ValueError(f"Patch size {list(patch_size)} is not divisible by {factor}, which {levels} levels "
                         f"need; change unet.min_resolution or unet.max_levels.")
    widths = tuple(min(u.base_channels * 2 ** i, u.max_channels) for i in range(levels))
    n_attn = min(u.attention_levels, levels)
    down = tuple("AttnDownBlock2D" if i >= levels - n_attn else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if i < n_attn else "UpBlock2D" for i in range(levels))
    config = {
        "sample_size": tuple(int(p) for p in patch_size),
        "in_channels": int(num_channels),
        "out_channels": int(num_channels),
        "block_out_channels": widths,
        "down_block_types": down,
        "up_block_types": up,
        "layers_per_block": u.layers_per_block,
        "norm_num_groups": u.norm_num_groups,
        "attention_head_dim": 8,
    }
    if settings.conditioning.encoder is not None:
        config["class_embed_type"] = "identity"  # UNet2DModel adds class_labels (B, time_embed_dim) to temb
    return config


def time_embedding_dim(unet: dict) -> int:
    """The time-embedding width of a `UNet2DModel` config (diffusers' rule: time_embedding_dim, else
    4 * block_out_channels[0]), which the cDDPM image embedding must match."""
    return int(unet.get("time_embedding_dim") or 4 * unet["block_out_channels"][0])


def encoder_config(settings: DiffusionSettings, unet: dict) -> dict | None:
    """`ImageEncoder` constructor arguments for a denoiser's `UNet2DModel` config, or None when the settings
    describe an unconditioned DDPM."""
    c = settings.conditioning
    if c.encoder is None:
        return None
    return {"in_channels": int(unet["in_channels"]), "embedding_dim": time_embedding_dim(unet),
            "base_channels": c.base_channels, "levels": c.levels}
