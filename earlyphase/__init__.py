"""earlyphase: the early phase of neural-network training, reproduced and extended."""

__version__ = "0.1.0"

from .api import run, train  # noqa: E402
from .config import DataConfig, ModelConfig, ObserveConfig, RunConfig, TrainConfig, load_run_config  # noqa: E402
from .errors import UserError  # noqa: E402
from .stored_run import Run  # noqa: E402

__all__ = ["train", "run", "Run", "RunConfig", "DataConfig", "ModelConfig", "TrainConfig", "ObserveConfig",
           "load_run_config", "UserError", "__version__"]
