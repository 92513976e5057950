"""Variational models of reflections: the shoebox integrator and the distribution pieces it shares.

Typical use::

    from xrais.models.variational import build_integrator, ShoeboxBatch
    model = build_integrator(encoder="fc", profile="mvn")       # Table 1 defaults
    out = model(ShoeboxBatch.from_arrays(counts, mask, corner_px, frame_first, xyz_px))
    out.q_intensity.mean, out.q_intensity.stddev                 # photons

Training and inference over shoebox files: :mod:`xrais.train.integrate` and ``xrais integrate``.
Baselines for comparison (summation with a local background plane, profile fitting with a
learned average profile): :mod:`xrais.models.variational.baselines`.
"""

from typing import TYPE_CHECKING

from xrais._lazy import lazy_package

__all__ = ["INTEGRATOR_FORMAT", "CNNEncoder", "FCEncoder", "IntegratorConfig", "IntegratorOutput", "ShoeboxBatch",
           "VariationalIntegrator", "build_integrator", "load_integrator", "save_integrator"]
__all__ += ["ReflectionBatch", "ScalerConfig", "ScalerTrainer", "SurrogatePosterior", "VariationalScaler",
            "build_scaler", "UniqueReflections", "WilsonPrior", "fit_wilson_shells"]

# Names are imported from their modules on first use (xrais._lazy): importing the package stays cheap.
lazy_package(__name__, {
    "xrais.models.variational.integrator": (
        "INTEGRATOR_FORMAT", "CNNEncoder", "FCEncoder", "IntegratorConfig", "IntegratorOutput", "ShoeboxBatch",
        "VariationalIntegrator", "build_integrator", "load_integrator", "save_integrator",
    ),
    "xrais.models.variational.scaler": (
        "ReflectionBatch", "ScalerConfig", "ScalerTrainer", "SurrogatePosterior", "VariationalScaler", "build_scaler",
    ),
    "xrais.models.variational.wilson": ("UniqueReflections", "WilsonPrior", "fit_wilson_shells"),
})

if TYPE_CHECKING:  # for type checkers and editors: the same names, imported at once
    from xrais.models.variational.integrator import (
        INTEGRATOR_FORMAT,
        CNNEncoder,
        FCEncoder,
        IntegratorConfig,
        IntegratorOutput,
        ShoeboxBatch,
        VariationalIntegrator,
        build_integrator,
        load_integrator,
        save_integrator,
    )
    from xrais.models.variational.scaler import (
        ReflectionBatch,
        ScalerConfig,
        ScalerTrainer,
        SurrogatePosterior,
        VariationalScaler,
        build_scaler,
    )
    from xrais.models.variational.wilson import UniqueReflections, WilsonPrior, fit_wilson_shells
