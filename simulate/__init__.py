"""Kinematic diffraction simulation: nanoBragg physics on Numba (CPU) and numba-cuda (GPU).

Typical use::

    from xrais.geometry import Beam, Detector
    from xrais.simulate import Crystal, StructureFactors, render, predict_spots
    crystal = Crystal(cell=(79.1, 79.1, 38.4, 90, 90, 90), space_group="P 43 21 2",
                      structure_factors=StructureFactors.random_wilson((79.1, 79.1, 38.4, 90, 90, 90),
                                                                       "P 43 21 2", d_min_A=2.0))
    detector = Detector.from_catalog("pilatus6m", distance_mm=250.0)
    image = render(crystal, Beam(wavelength_A=0.9795), detector)   # photons, (slow, fast) float32
"""

from typing import TYPE_CHECKING

from xrais._lazy import lazy_package

__all__ = ["Crystal", "StructureFactors", "render", "render_plan", "predict_spots", "SpotList", "reciprocal_matrix_B"]

# Names are imported from their modules on first use (xrais._lazy): importing the package stays cheap.
lazy_package(__name__, {
    "xrais.simulate.crystal": ("Crystal", "reciprocal_matrix_B"),
    "xrais.simulate.render": ("render", "render_plan"),
    "xrais.simulate.spots": ("SpotList", "predict_spots"),
    "xrais.simulate.structure_factors": ("StructureFactors",),
})

if TYPE_CHECKING:  # for type checkers and editors: the same names, imported at once
    from xrais.simulate.crystal import Crystal, reciprocal_matrix_B
    from xrais.simulate.render import render, render_plan
    from xrais.simulate.spots import SpotList, predict_spots
    from xrais.simulate.structure_factors import StructureFactors
