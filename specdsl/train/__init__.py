"""Training: `specc train` and `specc sample`. config.py is torch-free; the rest imports torch."""
