"""ResNet resolution and multi-lattice models, variational integrator and scaler, checkpoints.

This stage is being built; see DESIGN.md for its place in the pipeline.
"""

__all__: list[str] = []
