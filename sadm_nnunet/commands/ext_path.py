"""`sadm_nnunet_ext_path`: prints the folder to put into nnU-Net's `nnUNet_extTrainer` variable."""
from __future__ import annotations

from sadm_nnunet._startup import EXT_TRAINER_FOLDER


def main() -> None:
    print(EXT_TRAINER_FOLDER)
