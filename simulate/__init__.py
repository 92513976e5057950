"""Kinematic diffraction simulation (nanoBragg physics on Numba and CUDA), sampler and dataset writer.

This stage is being built; see DESIGN.md for its place in the pipeline.
"""

__all__: list[str] = []
