"""Training of the ResNet models: one loop for a single process and for DDP, data, metrics, evaluation.

Typical use::

    from xrais.train import TrainConfig, train, evaluate
    result = train(TrainConfig(data=("set/",), out="run/", task="resolution", arch="resnet50"))
    evaluate("run/best.safetensors", ["heldout/"], "eval/")

or ``xrais train`` / ``torchrun --nproc_per_node G -m xrais.cli train`` and ``xrais evaluate``
(docs/training.md).
"""

from typing import TYPE_CHECKING

from xrais._lazy import lazy_package

__all__ = ["TrainConfig", "TASK_DEFAULTS", "make_train_config", "train", "Trainer", "TrainResult", "evaluate",
           "Evaluation", "load_training_state", "state_path"]

# Names are imported from their modules on first use (xrais._lazy): importing the package stays cheap.
lazy_package(__name__, {
    "xrais.train.config": ("TASK_DEFAULTS", "TrainConfig", "make_train_config"),
    "xrais.train.evaluate": ("Evaluation", "evaluate"),
    "xrais.train.loop": ("TrainResult", "Trainer", "train"),
    "xrais.train.state": ("load_training_state", "state_path"),
})

if TYPE_CHECKING:  # for type checkers and editors: the same names, imported at once
    from xrais.train.config import TASK_DEFAULTS, TrainConfig, make_train_config
    from xrais.train.evaluate import Evaluation, evaluate
    from xrais.train.loop import TrainResult, Trainer, train
    from xrais.train.state import load_training_state, state_path
