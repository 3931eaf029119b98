"""Run directories, safetensors checkpoints, Parquet metrics and DuckDB queries."""
from .checkpoints import load_checkpoint, load_model_state, save_checkpoint
from .metrics import read_metrics, write_metrics
from .runs import RunDir, Store, default_root

__all__ = ["Store", "RunDir", "default_root", "save_checkpoint", "load_checkpoint", "load_model_state",
           "read_metrics", "write_metrics"]
