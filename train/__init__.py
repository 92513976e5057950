"""Training loops (single process and DDP), datasets, metrics and plots.

This stage is being built; see DESIGN.md for its place in the pipeline.
"""

__all__: list[str] = []
