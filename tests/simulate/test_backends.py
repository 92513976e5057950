"""Numba CPU and numba-cuda GPU kernels give the same image (GPU kernel under the CUDA simulator).

The simulator has to be chosen before numba-cuda is imported, so the GPU side runs in a child
process with ``NUMBA_ENABLE_CUDASIM=1`` on a small image with every feature switched on.
"""

from __future__ import annotations

import textwrap

import numpy as np

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from xrais.geometry import Beam, Detector
    from xrais.simulate import Crystal, StructureFactors, render
    from xrais.simulate.nanobragg import nanobragg_crystal, nanobragg_detector

    def scene(shape):
        sf = StructureFactors.random_wilson((61.2, 72.5, 84.3, 90, 90, 90), "P 21 21 21", d_min_A=3.0, seed=5)
        crystal = nanobragg_crystal((61.2, 72.5, 84.3, 90, 90, 90), (12.5, -27.3, 41.8), structure_factors=sf,
                                    n_cells=(4, 5, 6), shape=shape, mosaic_spread_deg=0.3, mosaic_domains=3)
        det = nanobragg_detector(pixel_mm=1.376, n_fast=20, n_slow=16, distance_mm=100, xbeam_mm=11.0, ybeam_mm=13.8)
        beam = Beam(wavelength_A=1.0, divergence_mrad=0.4, spectral_dispersion=0.005, polarization_fraction=0.95)
        return crystal, beam, det

    out = {}
    for shape in ("square", "round", "gauss", "tophat"):
        crystal, beam, det = scene(shape)
        kw = dict(oversample=2, divergence_steps=3, dispersion_steps=2, phi_start_deg=5, osc_deg=1, phi_steps=2,
                  water_um=20, d_min_A=2.5)
        out[shape + "_numba"] = render(crystal, beam, det, backend="numba", **kw)
        out[shape + "_cuda"] = render(crystal, beam, det, backend="cuda", **kw)
    np.savez(sys.argv[1], **out)
    """
)


def test_numba_and_cuda_kernels_agree(run_under_cudasim):
    images = run_under_cudasim(SCRIPT)
    for shape in ("square", "round", "gauss", "tophat"):
        cpu, gpu = images[shape + "_numba"], images[shape + "_cuda"]
        assert cpu.shape == (16, 20) and cpu.max() > 0
        np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-6 * float(cpu.max()))
