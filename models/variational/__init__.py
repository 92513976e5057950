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

__all__ = ["INTEGRATOR_FORMAT", "CNNEncoder", "FCEncoder", "IntegratorConfig", "IntegratorOutput", "ShoeboxBatch",
           "VariationalIntegrator", "build_integrator", "load_integrator", "save_integrator"]

# The variational scaler (online merging) and its Wilson priors.
from xrais.models.variational.scaler import (  # noqa: E402
    ReflectionBatch,
    ScalerConfig,
    ScalerTrainer,
    SurrogatePosterior,
    VariationalScaler,
    build_scaler,
)
from xrais.models.variational.wilson import UniqueReflections, WilsonPrior, fit_wilson_shells  # noqa: E402

__all__ += ["ReflectionBatch", "ScalerConfig", "ScalerTrainer", "SurrogatePosterior", "VariationalScaler",
            "build_scaler", "UniqueReflections", "WilsonPrior", "fit_wilson_shells"]
