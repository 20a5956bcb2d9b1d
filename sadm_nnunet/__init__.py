"""sadm_nnunet: diffusion-based pseudo-healthy reconstruction combined with nnU-Net segmentation (SADM).

Kept free of heavy imports: this package is imported at every interpreter start by the trainer-registration hook.
"""
__version__ = "0.1.0"
