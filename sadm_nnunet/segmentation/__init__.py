"""Stage II: nnU-Net segmentation on the image stacked with its pseudo-healthy reconstruction."""
