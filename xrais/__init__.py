"""xrais: X-ray AI from simulation — diffraction-image models for X-ray crystallography."""

from xrais._version import __version__

__all__ = ["__version__"]
