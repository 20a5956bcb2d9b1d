"""The anomaly maps of one raw case, written as NIfTI: the one path that `sadm_nnunet_reconstruct` (the stage-I
model) and `sadm_nnunet_score` (a trained SADM model's frozen copy of it) share.

preprocess as nnUNetv2_predict does -> reconstruct whole slices -> both back to the input's voxel grid (nnU-Net's
export resampling) -> `anomaly_maps` (the one definition of the unsupervised map and the fused score) -> write
CASE_reconstruction_XXXX (input intensity units) and the chosen maps, atomically, in the input's geometry.

Prediction (`nnUNetv2_predict`) reconstructs per sliding-window tile; scoring reconstructs whole slices (the
single-step reconstruction of a pixel depends on the rest of its slice, so the two differ slightly at tile edges).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sadm_nnunet.anomaly_maps import anomaly_maps
from sadm_nnunet.diffusion.settings import DiffusionSettings
from sadm_nnunet.nnunet_cases import (PreprocessedCase, back_to_input, nonzero_mask, preprocess_case,
                                      to_input_intensities, write_volumes)
from sadm_nnunet.segmentation.settings import ScoringSettings

Reconstruct = Callable[[torch.Tensor], torch.Tensor]  # (1, C, *preprocessed shape) -> the same shape
ForegroundProbability = Callable[[str, PreprocessedCase], np.ndarray]  # (case, preprocessed case) -> p_fg


@dataclass
class CaseScorer:
    """Writes the reconstruction and anomaly maps of raw cases with one denoiser and one set of settings."""
    reconstruct: Reconstruct
    diffusion: DiffusionSettings  # the intensity contract and the SSIM data range
    scoring: ScoringSettings  # beta, median filter, clipping, mask erosion, small components
    plans_manager: object
    configuration_manager: object
    dataset_json: dict
    device: torch.device

    @property
    def slice_axis(self) -> int:
        """The input array's axis the denoiser slices along: the preprocessed array's first spatial axis."""
        return int(self.plans_manager.transpose_forward[0])

    def maps(self, files: list[Path], p_fg: ForegroundProbability | None = None, case: str = ""
             ) -> tuple[dict[str, np.ndarray], PreprocessedCase]:
        """The case's reconstruction (input intensity units, per channel) and `anomaly_maps`, in the input's grid."""
        pre = preprocess_case(files, self.plans_manager, self.configuration_manager, self.dataset_json)
        probability = None if p_fg is None else p_fg(case, pre)
        with torch.no_grad():
            recon = self.reconstruct(torch.from_numpy(pre.data)[None].to(self.device))[0].float().cpu().numpy()
        image_in = back_to_input(pre.data, pre, self.plans_manager, self.configuration_manager)
        recon_in = back_to_input(recon, pre, self.plans_manager, self.configuration_manager)
        to_model = self.diffusion.to_model_space  # the reconstruction's background is the image's
        maps = anomaly_maps(to_model(image_in), to_model(recon_in, image_in), probability,
                            data_range=self.diffusion.ssim_data_range, scoring=self.scoring,
                            slice_axis=self.slice_axis, brain=nonzero_mask(pre.raw))
        units = to_input_intensities(recon_in, pre.raw, self.plans_manager, self.configuration_manager)
        maps.update({f"reconstruction_{c:04d}": units[c] for c in range(units.shape[0])})
        return maps, pre

    def write(self, case: str, files: list[Path], output: Path, names: tuple[str, ...],
              p_fg: ForegroundProbability | None = None) -> dict[str, np.ndarray]:
        """Writes output/CASE_reconstruction_XXXX and output/CASE_NAME for each of `names` (keys of
        `anomaly_maps`); returns all of the case's maps, written or not."""
        maps, pre = self.maps(files, p_fg, case)
        volumes = {k: v for k, v in maps.items() if k.startswith("reconstruction_")}
        volumes.update({name: maps[name] for name in names})
        write_volumes(output, case, volumes, self.dataset_json["file_ending"], pre.properties)
        return maps

    def settings_record(self) -> dict:
        """What the written maps depend on, for the output folder's settings file."""
        r = self.diffusion.reconstruction
        return {"beta": self.scoring.beta, "median_size": self.scoring.median_size,
                "ssim_dimensions": self.scoring.ssim_dimensions, "ssim_offset": self.scoring.ssim_offset,
                "clip_dissimilarity": self.scoring.clip_dissimilarity, "mask_erosion": self.scoring.mask_erosion,
                "min_component_size": self.scoring.min_component_size,
                "component_threshold": self.scoring.component_threshold, "slice_axis": self.slice_axis,
                "ssim_data_range": self.diffusion.ssim_data_range,
                "reconstruction": {"method": r.method, "noise_levels": list(r.noise_levels),
                                   "patch_grid": r.patch_grid}}
