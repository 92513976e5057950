"""MPI inference runner and the shoebox → integrate → merge pipeline.

This stage is being built; see DESIGN.md for its place in the pipeline.
"""

__all__: list[str] = []
