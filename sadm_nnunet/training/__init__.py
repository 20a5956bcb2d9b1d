"""nnU-Net trainers of the project (found by nnU-Net through `sadm_nnunet/nnunet_ext`)."""
