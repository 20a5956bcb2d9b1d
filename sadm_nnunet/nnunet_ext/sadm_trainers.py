"""Shim that nnU-Net imports (as a top-level module) from the folder in `nnUNet_extTrainer`.

Only absolute imports here: nnU-Net imports this file outside of our package and drops it from sys.modules again.
"""
from sadm_nnunet.training.diffusion_trainer import *  # noqa: F401,F403
from sadm_nnunet.training.sadm_trainer import *  # noqa: F401,F403
