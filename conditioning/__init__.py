"""Conditioning: read any detector image and turn it into the 512×512 quadrants models read.

Typical use::

    from xrais.conditioning import read_image, condition
    image = read_image("thau_3_2_0001.cbf")   # DiffractionImage with pixels, mask and geometry
    quadrants = condition(image)               # (4, 512, 512) uint8, beam centre at [0, 0]
"""

from typing import TYPE_CHECKING

from xrais._lazy import lazy_package

__all__ = [
    "DiffractionImage",
    "ConditioningConfig",
    "read_image",
    "open_image",
    "iter_frames",
    "list_readers",
    "pool_sqrt",
    "condition",
    "condition_batch",
    "reference_condition",
    "trusted_mask",
    "QUADRANT_SIZE",
]

# Names are imported from their modules on first use (xrais._lazy): importing the package stays cheap.
lazy_package(__name__, {
    "xrais.conditioning.condition": ("ConditioningConfig", "condition", "condition_batch"),
    "xrais.conditioning.image": ("DiffractionImage", "trusted_mask"),
    "xrais.conditioning.readers.registry": ("iter_frames", "list_readers", "open_image", "read_image"),
    "xrais.conditioning.transform": ("QUADRANT_SIZE", "pool_sqrt", "reference_condition"),
})

if TYPE_CHECKING:  # for type checkers and editors: the same names, imported at once
    from xrais.conditioning.condition import ConditioningConfig, condition, condition_batch
    from xrais.conditioning.image import DiffractionImage, trusted_mask
    from xrais.conditioning.readers.registry import iter_frames, list_readers, open_image, read_image
    from xrais.conditioning.transform import QUADRANT_SIZE, pool_sqrt, reference_condition
