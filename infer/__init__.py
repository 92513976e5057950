"""Inference: score detector images with resolution and multi-lattice models, one row per image.

Typical use::

    from xrais.infer import InferConfig, run_inference, read_results, plot_results
    config = InferConfig(models=("resolution.safetensors", "multilattice.safetensors"), quadrants=4)
    report = run_inference(config, ["/data/thau/*.cbf"], "results/")   # resumable, MPI-aware
    rows = read_results("results/")                                     # pandas DataFrame
    plot_results(rows, "results/strip.png")                              # the strip chart

Without a model, the spots (DIALS's dispersion threshold), the resolution from them and a hit
call::

    from xrais.infer import find_spots, estimate_resolution, analyze_image
    spots = find_spots(image.pixels, image.mask)             # arrays in, arrays out
    answer = analyze_image(image)                             # spots with d, resolution, hit

From the shell: ``xrais infer IMAGES… --model M --out RESULTS`` (under ``mpirun -n R`` too),
``xrais infer --watch DIR …``, ``xrais spots IMAGES… --out spots.csv --png DIR`` and
``xrais plot RESULTS --out PNG``.
"""

from typing import TYPE_CHECKING

from xrais._lazy import lazy_package

__all__ = [
    "InferConfig",
    "WatchConfig",
    "run_inference",
    "InferReport",
    "Scorer",
    "ModelInfo",
    "describe_models",
    "result_columns",
    "ResultsWriter",
    "read_results",
    "read_provenance",
    "plot_results",
    "dataset_key",
    "add_image_numbers",
    "FolderWatcher",
    "StdinFollower",
    "StaticSource",
    "RunStats",
    "FrameRef",
    "WorkItem",
    "DoneIndex",
    "expand_inputs",
    "plan_refs",
    "make_items",
    "find_spots",
    "estimate_resolution",
    "analyze_image",
    "SpotFinderParams",
    "HitParams",
]

# Names are imported from their modules on first use (xrais._lazy): importing the package stays cheap.
lazy_package(__name__, {
    "xrais.infer.config": ("InferConfig", "WatchConfig"),
    "xrais.infer.plot": ("add_image_numbers", "dataset_key", "plot_results"),
    "xrais.infer.results": ("ResultsWriter", "read_provenance", "read_results"),
    "xrais.infer.runner": ("InferReport", "run_inference"),
    "xrais.infer.scoring": ("ModelInfo", "Scorer", "describe_models", "result_columns"),
    "xrais.infer.watch": ("FolderWatcher", "RunStats", "StaticSource", "StdinFollower"),
    "xrais.infer.work": ("DoneIndex", "FrameRef", "WorkItem", "expand_inputs", "make_items", "plan_refs"),
    "xrais.infer.spots": ("HitParams", "SpotFinderParams", "analyze_image", "estimate_resolution", "find_spots"),
})

if TYPE_CHECKING:  # for type checkers and editors: the same names, imported at once
    from xrais.infer.config import InferConfig, WatchConfig
    from xrais.infer.plot import add_image_numbers, dataset_key, plot_results
    from xrais.infer.results import ResultsWriter, read_provenance, read_results
    from xrais.infer.runner import InferReport, run_inference
    from xrais.infer.scoring import ModelInfo, Scorer, describe_models, result_columns
    from xrais.infer.watch import FolderWatcher, RunStats, StaticSource, StdinFollower
    from xrais.infer.work import DoneIndex, FrameRef, WorkItem, expand_inputs, make_items, plan_refs
    from xrais.infer.spots import HitParams, SpotFinderParams, analyze_image, estimate_resolution, find_spots
