"""What executors do with runs (execute.Work): train one run (train/engine.py), find it complete in
the store, or train a planned group of runs as one batched model (train/batched.py)."""
from __future__ import annotations

from ..execute.base import Work
from .batched import batch_key, train_group
from .engine import stored_complete, train_one

WORK = Work(train=train_one, complete=stored_complete, batch_key=batch_key, train_group=train_group)

__all__ = ["WORK"]
