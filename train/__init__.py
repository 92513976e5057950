"""Training of the ResNet models: one loop for a single process and for DDP, data, metrics, evaluation.

Typical use::

    from xrais.train import TrainConfig, train, evaluate
    result = train(TrainConfig(data=("set/",), out="run/", task="resolution", arch="resnet50"))
    evaluate("run/best.safetensors", ["heldout/"], "eval/")

or ``xrais train`` / ``torchrun --nproc_per_node G -m xrais.cli train`` and ``xrais evaluate``
(docs/training.md).
"""

from xrais.train.config import TASK_DEFAULTS, TrainConfig, make_train_config
from xrais.train.evaluate import Evaluation, evaluate
from xrais.train.loop import TrainResult, Trainer, train
from xrais.train.state import load_training_state, state_path

__all__ = ["TrainConfig", "TASK_DEFAULTS", "make_train_config", "train", "Trainer", "TrainResult", "evaluate",
           "Evaluation", "load_training_state", "state_path"]
