"""minibn: hand-written NumPy/CuPy layers and instruments for studying how batch
normalization helps optimization (Santurkar et al., NeurIPS 2018)."""

__version__ = "0.1.0"
