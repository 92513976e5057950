"""The CUDA simulator kernels on a real GPU equal the Numba CPU kernels to float32 tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from xrais.geometry import Beam, Detector
from xrais.simulate import Crystal, StructureFactors, render

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("method", ["brute", "spots"])
@pytest.mark.parametrize("shape", ["square", "round", "gauss", "tophat"])
def test_cuda_equals_numba(shape, method):
    cell = (79.1, 79.1, 38.4, 90, 90, 90)
    crystal = Crystal(cell=cell, space_group="P 43 21 2", shape=shape, n_cells=(8, 8, 8), mosaic_spread_deg=0.2,
                      mosaic_domains=5, structure_factors=StructureFactors.random_wilson(cell, "P 43 21 2", d_min_A=2.0))
    det = Detector.from_catalog("pilatus6m", distance_mm=200.0)
    beam = Beam(wavelength_A=0.9795, divergence_mrad=0.02, spectral_dispersion=0.002)
    kw = dict(oversample=1, divergence_steps=2, dispersion_steps=2, roi=(1000, 1400, 1000, 1300), water_um=50,
              method=method)
    cpu = render(crystal, beam, det, backend="numba", **kw)
    gpu = render(crystal, beam, det, backend="cuda", **kw)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-6 * float(cpu.max()))


def test_cuda_spots_full_pilatus_image_equals_numba():
    # the benchmark's XRAIS image: one sub-pixel, one source, 10 mosaic domains, whole detector
    cell = (79.1, 79.1, 38.4, 90, 90, 90)
    crystal = Crystal.from_domain_size(cell, 0.1, space_group="P 43 21 2", shape="gauss_2022", mosaic_spread_deg=0.5,
                                       mosaic_domains=10,
                                       structure_factors=StructureFactors.random_wilson(cell, "P 43 21 2", d_min_A=1.2))
    det = Detector.from_catalog("pilatus6m", distance_mm=250.0)
    beam = Beam(wavelength_A=0.9795, fluence_photons=4e11, beam_size_um=30.0)
    cpu = render(crystal, beam, det, backend="numba", method="spots")
    gpu = render(crystal, beam, det, backend="cuda", method="spots")
    assert cpu.max() > 0
    np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-6 * float(cpu.max()))
