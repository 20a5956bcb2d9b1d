"""Stage I: the denoising diffusion model (settings, noise, network, reconstruction)."""
