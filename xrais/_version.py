"""The xrais version string (single source for packaging and provenance records)."""

__version__ = "0.1.0"
