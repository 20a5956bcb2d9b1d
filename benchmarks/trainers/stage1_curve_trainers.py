"""Benchmark-only stage-I trainers for `benchmarks/stage1_curve.py`, found through `nnUNet_extTrainer`: one long
training that exports its EMA denoiser at milestones (FOLD/diffusion_model_epoch_N), so that every length of the
curve comes from the same run. A checkpoint every epoch: an interrupted run loses at most one epoch (`--c`).

nnU-Net imports this file as a top-level module from the folder in `nnUNet_extTrainer`: absolute imports only.
"""
from __future__ import annotations

from sadm_nnunet.training.diffusion_trainer import SADMDiffusionTrainer


class Stage1CurveTrainer(SADMDiffusionTrainer):
    """8,000 iterations (32 epochs of 250), exported after 500, 1,000, 2,000, 4,000 and 8,000. The curve measures
    each export on held-out brains; the per-epoch validation is only a progress sign, so it is kept short."""

    run_length = {"num_epochs": 32, "num_val_iterations_per_epoch": 10, "save_every": 1}
    export_epochs = (2, 4, 8, 16, 32)


class Stage1CurveQuickTrainer(SADMDiffusionTrainer):
    """`stage1_curve.py --quick` (CI): 2 epochs of 10 iterations, exported after each."""

    run_length = {"num_epochs": 2, "num_iterations_per_epoch": 10, "num_val_iterations_per_epoch": 1,
                  "save_every": 1}
    export_epochs = (1, 2)
