"""Run at interpreter start-up by `sadm_nnunet_trainers.pth`: registers our trainer folder with nnU-Net.

nnU-Net looks for trainers outside its own package in the folders listed in `nnUNet_extTrainer`. We append our
shim folder to that list (keeping whatever the user put there first), so that plain `nnUNetv2_train ... -tr
SADMTrainer` and `nnUNetv2_predict` find our classes. Only `os` is imported here: this runs in every Python process.
"""
import os

EXT_TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_ext")
_VARIABLE = "nnUNet_extTrainer"


def register() -> None:
    """Appends the shim folder to `nnUNet_extTrainer` unless it is already listed."""
    current = [p for p in os.environ.get(_VARIABLE, "").split(os.pathsep) if p]
    if EXT_TRAINER_FOLDER not in current:
        os.environ[_VARIABLE] = os.pathsep.join(current + [EXT_TRAINER_FOLDER])


register()
