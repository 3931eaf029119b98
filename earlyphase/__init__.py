"""earlyphase: the early phase of neural-network training, reproduced and extended.

Plug-ins (docs/plugins.md): ``register_model``, ``register_dataset``, ``register_recorder`` and
``register_experiment`` add to what configs can name, in this process; a package does it for every
process through the entry-point group ``earlyphase.plugins``.
"""
from ._version import __version__
from .api import register_experiment, run, train
from .config import DataConfig, ModelConfig, ObserveConfig, RunConfig, TrainConfig, load_run_config
from .data import register_dataset
from .data.base import Dataset, DatasetInfo
from .errors import UserError
from .models import register_model
from .registry import register_preset_dir
from .stored_run import Run
from .train.recorders import Recorder, register_recorder

__all__ = ["train", "run", "Run", "RunConfig", "DataConfig", "ModelConfig", "TrainConfig", "ObserveConfig",
           "load_run_config", "UserError", "Dataset", "DatasetInfo", "Recorder", "register_model",
           "register_dataset", "register_recorder", "register_experiment", "register_preset_dir", "__version__"]
