"""Stage-II settings: what an SADM configuration in a dataset's nnU-Net plans holds and what each setting means.

`sadm_nnunet_plan` writes the block `configurations/<name>/sadm` (template: plans/sadm.json). Besides the user's
settings it records the stage-I model (`stage1`), that model's settings (`diffusion`) and its UNet2DModel
architecture (`denoiser`), so that the static network builder nnU-Net calls at prediction time can rebuild the
whole network from the plans alone; the weights come from the checkpoint. For a cDDPM stage-I model the image
encoder's architecture follows from `diffusion.conditioning` and `denoiser` (`encoder_config`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from sadm_nnunet.diffusion.settings import (DiffusionSettings, build_dataclass, load_template, merge_settings,
                                            setting_checker)

PLANS_KEY = "sadm"
TEMPLATE_NAME = "sadm.json"
INPUT_MODES = ("image+residual", "image+reconstruction")
TRAINING_NOISE_LEVELS = ("uniform", "ensemble")
PREDICTION_ENSEMBLES = ("mean_reconstruction", "per_level")


@dataclass(frozen=True)
class SyntheticAnomalySettings:
    probability: float
    label: int
    blend_min: float
    blend_max: float
    max_scale_exponent: int


@dataclass(frozen=True)
class ScoringSettings:
    """How the anomaly maps are computed (`anomaly_maps`, used by sadm_nnunet_score and sadm_nnunet_reconstruct;
    block `scoring`; meanings and defaults in plans/sadm.json, their one home)."""
    beta: float
    median_size: int
    ssim_dimensions: int
    ssim_offset: float
    clip_dissimilarity: bool
    mask_erosion: int
    min_component_size: int
    component_threshold: float | None

    @classmethod
    def from_dict(cls, d: dict, where: str = f"{PLANS_KEY}.scoring") -> "ScoringSettings":
        """Strict: every key of the template, numbers of the right type (component_threshold may be null)."""
        for key in ("beta", "ssim_offset", "component_threshold"):
            value = d[key]
            nullable = key == "component_threshold"
            if (value is None and not nullable) or isinstance(value, (bool, str)) or \
                    not isinstance(value, (int, float, type(None))):
                raise TypeError(f"Setting '{where}.{key}' must be a number{' or null' if nullable else ''}, "
                                f"found {value!r}")
        if not isinstance(d["clip_dissimilarity"], bool):
            raise TypeError(f"Setting '{where}.clip_dissimilarity' must be true or false, found "
                            f"{d['clip_dissimilarity']!r}")
        s = build_dataclass(cls, d, where)  # (component_threshold, typed 'float | None', passes through as is)
        if s.component_threshold is not None:
            s = replace(s, component_threshold=float(s.component_threshold))
        s.validate(where)
        return s

    def validate(self, where: str = f"{PLANS_KEY}.scoring") -> None:
        check = setting_checker(where)
        check(0.0 <= self.beta <= 1.0, "beta", self.beta, "a number in [0, 1]")
        check(self.ssim_dimensions in (2, 3), "ssim_dimensions", self.ssim_dimensions, "2 (per slice) or 3 (volume)")
        check(math.isfinite(self.ssim_offset) and self.ssim_offset >= 0, "ssim_offset", self.ssim_offset,
              "a finite number >= 0")
        for key in ("median_size", "mask_erosion", "min_component_size"):
            check(getattr(self, key) >= 0, key, getattr(self, key), "an integer >= 0")
        t = self.component_threshold
        check(t is None or math.isfinite(t), "component_threshold", t, "a finite number or null")
        check(self.min_component_size == 0 or t is not None, "component_threshold", t,
              f"a number (the score level), since min_component_size is {self.min_component_size}")

    def with_beta(self, beta: float | None) -> "ScoringSettings":
        """These settings with another beta (None: unchanged), validated."""
        if beta is None:
            return self
        s = replace(self, beta=float(beta))
        s.validate()
        return s

    @classmethod
    def template(cls) -> "ScoringSettings":
        """The template's scoring settings (plans/sadm.json), for maps made without a trained SADM model."""
        return cls.from_dict(load_template(TEMPLATE_NAME)["scoring"])


@dataclass(frozen=True)
class Stage1Model:
    """Where the stage-I model came from (nnU-Net results folder coordinates)."""
    dataset: str
    trainer: str
    plans: str
    configuration: str
    fold: str
    epoch: int | None = None  # the export after N epochs (FOLD/diffusion_model_epoch_N); None: the final model


@dataclass(frozen=True)
class SADMSettings:
    input_mode: str
    training_noise_level: str
    prediction_ensemble: str
    synthetic_anomalies: SyntheticAnomalySettings
    stage1: Stage1Model
    diffusion: DiffusionSettings  # the stage-I settings, with the stage-II reconstruction overrides applied
    denoiser: dict  # UNet2DModel constructor arguments of the stage-I model
    scoring: ScoringSettings  # how sadm_nnunet_score computes the anomaly maps

    @classmethod
    def from_configuration(cls, configuration: dict, name: str = "") -> "SADMSettings":
        """The settings of an nnU-Net configuration dict; a clear error when it is not an SADM configuration."""
        block = configuration.get(PLANS_KEY)
        if block is None:
            raise ValueError(
                f"Configuration '{name}' has no '{PLANS_KEY}' block: it is not an SADM configuration. Create one with "
                f"`sadm_nnunet_plan TARGET --ddpm HEALTHY` and train it as "
                f"`nnUNetv2_train TARGET 2d_sadm FOLD -tr SADMTrainer`.")
        return cls.from_dict(block, f"configurations/{name}/{PLANS_KEY}")

    @classmethod
    def from_dict(cls, block: dict, where: str = PLANS_KEY) -> "SADMSettings":
        missing = [k for k in ("stage1", "diffusion", "denoiser") if k not in block]
        if missing:
            raise KeyError(f"'{where}' lacks {missing}, which sadm_nnunet_plan writes; run it again.")
        full = merged_user_settings(block, where)
        diffusion = DiffusionSettings.from_dict(
            merge_settings(block["diffusion"], {"reconstruction": full["reconstruction"]}, f"{where}.diffusion"),
            f"{where}.diffusion")
        s = cls(
            input_mode=str(full["input_mode"]),
            training_noise_level=str(full["training_noise_level"]),
            prediction_ensemble=str(full["prediction_ensemble"]),
            synthetic_anomalies=build_dataclass(SyntheticAnomalySettings, full["synthetic_anomalies"],
                                                f"{where}.synthetic_anomalies"),
            stage1=stage1_model(block["stage1"], f"{where}.stage1"),
            diffusion=diffusion,
            denoiser=dict(block["denoiser"]),
            scoring=ScoringSettings.from_dict(full["scoring"], f"{where}.scoring"),
        )
        s.validate(where)
        return s

    def validate(self, where: str = PLANS_KEY) -> None:
        check = setting_checker(where)
        check(self.input_mode in INPUT_MODES, "input_mode", self.input_mode, f"one of {INPUT_MODES}")
        check(self.training_noise_level in TRAINING_NOISE_LEVELS, "training_noise_level",
              self.training_noise_level, f"one of {TRAINING_NOISE_LEVELS}")
        check(self.prediction_ensemble in PREDICTION_ENSEMBLES, "prediction_ensemble", self.prediction_ensemble,
              f"one of {PREDICTION_ENSEMBLES}")
        a = self.synthetic_anomalies
        check(0.0 <= a.probability <= 1.0, "synthetic_anomalies.probability", a.probability, "a number in [0, 1]")
        check(a.label >= 1, "synthetic_anomalies.label", a.label, "a foreground label (>= 1)")
        check(0.0 < a.blend_min <= a.blend_max <= 1.0, "synthetic_anomalies.blend_min/blend_max",
              (a.blend_min, a.blend_max), "0 < blend_min <= blend_max <= 1")
        check(a.max_scale_exponent >= 0, "synthetic_anomalies.max_scale_exponent", a.max_scale_exponent,
              "an integer >= 0")
        for key in ("in_channels", "out_channels", "block_out_channels"):
            check(key in self.denoiser, f"denoiser.{key}", None, "the stage-I UNet2DModel config")

    @property
    def num_image_channels(self) -> int:
        return int(self.denoiser["in_channels"])


def merged_user_settings(block: dict, where: str = PLANS_KEY) -> dict:
    """The template merged with the user's settings of `block` (the stage-I record left out). The reconstruction
    overrides are checked against the stage-I reconstruction settings' keys."""
    user = {k: v for k, v in block.items() if k not in ("stage1", "diffusion", "denoiser", "reconstruction")}
    full = merge_settings(load_template(TEMPLATE_NAME), user, where)
    overrides = block.get("reconstruction", {})
    full["reconstruction"] = merge_settings(load_template()["reconstruction"], overrides, f"{where}.reconstruction")
    full["reconstruction"] = {k: v for k, v in full["reconstruction"].items() if k in overrides}
    return full


def stage1_model(record: dict, where: str) -> Stage1Model:
    """The recorded stage-I model; `epoch` may be absent (plans written before it existed: the final model)."""
    epoch = record.get("epoch")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1):
        raise TypeError(f"Setting '{where}.epoch' must be an integer >= 1 or null, found {epoch!r}")
    return build_dataclass(Stage1Model, {**record, "epoch": epoch}, where)


def sadm_block(user: dict, stage1: Stage1Model, diffusion: DiffusionSettings, denoiser: dict) -> dict:
    """The complete plans block: the template merged with the user's settings, plus the stage-I record."""
    block = merged_user_settings(user)
    block["stage1"] = {k: getattr(stage1, k)
                       for k in ("dataset", "trainer", "plans", "configuration", "fold", "epoch")}
    block["diffusion"] = diffusion.to_dict()
    block["denoiser"] = {k: list(v) if isinstance(v, tuple) else v for k, v in denoiser.items()}
    return block

