"""repro-lits: train a 3D U-Net on liver CT many times and measure how reproducible it is."""

__version__ = "0.1.0"
