"""A data-dependent start for the output layers: each begins at its training labels' median and spread.

Used by :class:`~xrais.train.loop.Trainer` for a new run (``TrainConfig.init_output``); the
record it returns is saved with the run, and the optimiser gives each rescaled layer its own
learning rate (see ``Trainer._parameter_groups``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from xrais.train.data import DataTable, ShardDataset

__all__ = ["initialise_outputs", "INITIAL_SPREAD"]


#: Initial spread of a regression output as a fraction of its labels' spread (see :func:`initialise_outputs`).
INITIAL_SPREAD = 0.1


def _label_values(task: str, table: DataTable, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Training labels in the units of each output layer's raw output, by layer name."""
    from xrais.models import inv_resolution_to_radius

    t = table.target[rows].astype(np.float64)
    if task == "resolution":  # FC2 gives a radius in pooled pixels: D·tan(2·asin(λ/2d))/p
        main = inv_resolution_to_radius(torch.from_numpy(t), torch.from_numpy(table.geometry[rows]).double()).numpy()
    else:
        main = t
    values = {"fc2": main}
    values.update({f"heads.{name}": table.heads[rows, j].astype(np.float64) for j, name in enumerate(table.head_names)})
    return values


@torch.no_grad()
def initialise_outputs(model: torch.nn.Module, dataset: ShardDataset, rows: np.ndarray, task: str,
                       seed: int, n_images: int = 16) -> dict[str, dict[str, float]]:
    """Start each output layer at its training labels (in place): a data-dependent initialisation.

    Regression outputs (the resolution model's FC2, whose output is a radius in pooled pixels,
    and every extra head): the bias becomes the labels' median and the weights are scaled so
    that, over ``n_images`` training images, the output spreads by :data:`INITIAL_SPREAD` of
    the labels' standard deviation. Without this a fresh network's output varies by ~0.03 px
    where the labels vary by ~150 px, and SGD at Table 2's learning rates hardly moves it.
    The optimiser gives such a layer the learning rate × s² (see ``Trainer._parameter_groups``),
    as if its output were written in units of s. The multi-lattice logit starts at the log-odds
    of the multi-lattice fraction.
    The BatchNorm running statistics are left as they were.

    Returns
    -------
    dict
        ``{layer: {"bias": b, "weight_scale": s}}``.
    """
    labels = _label_values(task, dataset.table, rows)
    sample = np.sort(np.random.default_rng(seed).choice(rows, size=min(n_images, len(rows)), replace=False))
    images = torch.stack([torch.from_numpy(dataset.read_image(int(i))) for i in sample])[:, None].float()
    dataset.close()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    was_training = model.training
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        features = model.features(images)
    for name, value in buffers.items():
        model.get_buffer(name).copy_(value)
    model.train(was_training)
    record: dict[str, dict[str, float]] = {}
    for name, y in labels.items():
        layer = model.get_submodule(name)
        if name == "fc2" and task == "multilattice":
            p = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
            layer.bias.fill_(math.log(p / (1 - p)))
            record[name] = {"bias": float(layer.bias), "weight_scale": 1.0}
            continue
        spread = float((features @ layer.weight.T)[:, 0].std()) if len(sample) > 1 else 0.0
        scale = INITIAL_SPREAD * float(np.std(y)) / spread if spread > 0 and np.std(y) > 0 else 1.0
        layer.weight.mul_(scale)
        layer.bias.fill_(float(np.median(y)))
        record[name] = {"bias": float(layer.bias), "weight_scale": scale}
    return record
