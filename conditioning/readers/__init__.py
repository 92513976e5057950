"""Detector image readers, one module per format, chosen by :func:`open_image`."""

from xrais.conditioning.readers.base import ImageReader
from xrais.conditioning.readers.registry import get_reader_class, iter_frames, list_readers, open_image, read_image

__all__ = ["ImageReader", "get_reader_class", "open_image", "read_image", "iter_frames", "list_readers"]
