"""CIFAR-10 from a local directory, in either of its official layouts. The python batches are pickles,
and unpickling runs whatever a file names, so they are read by an unpickler that admits only the few
names a dict of numpy arrays, lists and bytes needs."""
from __future__ import annotations

import importlib
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import UserError
from .base import Dataset, DatasetInfo, counts

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
PIXELS = 3 * 32 * 32
LAYOUT = ("the python batches data_batch_1 .. data_batch_5 and test_batch (optionally inside "
          "cifar-10-batches-py/) or the binary batches data_batch_1.bin .. data_batch_5.bin and test_batch.bin "
          "(optionally inside cifar-10-batches-bin/)")

# (module, name) pairs a CIFAR batch needs: numpy's array and scalar reconstruction, and _codecs.encode,
# which is how Python 3 writes bytes into a protocol-2 pickle. Nothing here runs code.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module.startswith("numpy.core.") and importlib.util.find_spec("numpy._core") is not None:
            module = "numpy._core." + module[len("numpy.core."):]  # numpy 2 moved it; avoid the shim
        return getattr(importlib.import_module(module), name)


class _Inert:
    """What numpy's reconstruction names become when only the labels are read: no array is built."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


class _LabelsOnly(_RestrictedUnpickler):
    """The restricted unpickler, with numpy's names giving inert stubs: reads a batch's label list
    without building its pixel array (the metadata of a python batch)."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        found = super().find_class(module, name)  # refuses what the full reader refuses
        return found if module == "_codecs" else _Inert


def _labels(path: Path, fmt: str) -> np.ndarray | None:
    """A batch's labels without its pixels; None when the file is not well formed (the loader then
    reports what is wrong with it)."""
    try:
        if fmt == "bin":
            raw = np.memmap(path, dtype=np.uint8, mode="r")
            return None if raw.size == 0 or raw.size % (PIXELS + 1) else np.array(raw[::PIXELS + 1], dtype=np.int64)
        with open(path, "rb") as f:
            obj = _LabelsOnly(f, encoding="bytes").load()
        labels = obj.get(b"labels", obj.get("labels")) if isinstance(obj, dict) else None
        return np.asarray(labels, dtype=np.int64) if isinstance(labels, list) else None
    except Exception:  # noqa: BLE001 - anything unreadable is left to the loader's error
        return None


def info(cfg: DataConfig) -> DatasetInfo | None:
    """Split sizes and per-class counts from the batches' labels; None if a file is not well formed."""
    where, fmt = find_layout(cfg.root)
    suffix = "" if fmt == "py" else ".bin"
    labels = [_labels(where / f"{name}{suffix}", fmt) for name in (*TRAIN_BATCHES, TEST_BATCH)]
    if any(y is None or (y.size and (y.min() < 0 or y.max() > 9)) for y in labels):
        return None
    y_train, y_test = np.concatenate(labels[:-1]), labels[-1]
    return DatasetInfo(len(y_train), len(y_test), (3, 32, 32), 10, (counts(y_train, 10), counts(y_test, 10)))


def _load_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as e:
        if str(e).startswith("refusing"):
            raise UserError(f"{e} in {path}: a CIFAR-10 batch holds only a dict of numpy arrays and lists; "
                            f"replace the file with the official one") from None
        raise UserError(f"{path} is not a readable CIFAR-10 python batch ({e}); "
                        f"replace it with the official file") from None
    except Exception as e:  # noqa: BLE001 - any failure to parse the file is the file's fault
        raise UserError(f"{path} is not a readable CIFAR-10 python batch ({type(e).__name__}: {e}); "
                        f"replace it with the official file") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not hold a dict with 'data' and 'labels'; replace it with the official file")
    x = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    # types and sizes first: converting a list of references to one large object would allocate
    # the object once per reference
    if not (isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 2 and x.shape[1] == PIXELS
            and isinstance(labels, (list, np.ndarray)) and len(labels) == x.shape[0]
            and all(isinstance(v, (int, np.integer)) for v in labels)):
        raise UserError(f"{path} lacks uint8 'data' of shape N x {PIXELS} with N integer 'labels'; "
                        f"replace it with the official file")
    return x, np.asarray(labels, dtype=np.int64)


def _load_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if raw.size == 0 or raw.size % (PIXELS + 1):
        raise UserError(f"{path} has {raw.size} bytes, not a whole number of {PIXELS + 1}-byte records "
                        f"(1 label byte + {PIXELS} pixels); the file is truncated or not a CIFAR-10 binary batch")
    records = raw.reshape(-1, PIXELS + 1)
    return records[:, 1:], records[:, 0].astype(np.int64)


def find_layout(root: str | None) -> tuple[Path, str]:
    """The directory holding the batches and its format ('py' or 'bin'), or a UserError saying what is
    expected where."""
    if root is None:
        raise UserError(f"data.name = 'cifar10' needs data.root, a directory holding {LAYOUT}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise UserError(f"CIFAR-10 directory {base} does not exist; data.root must hold {LAYOUT}")
    for sub in (base, base / "cifar-10-batches-py"):
        if all((sub / n).is_file() for n in (*TRAIN_BATCHES, TEST_BATCH)):
            return sub, "py"
    for sub in (base, base / "cifar-10-batches-bin"):
        if all((sub / f"{n}.bin").is_file() for n in (*TRAIN_BATCHES, TEST_BATCH)):
            return sub, "bin"
    raise UserError(f"{base} does not hold the CIFAR-10 batches: expected {LAYOUT}")


def files(cfg: DataConfig) -> list[Path]:
    """The six batch files a load reads, in order (their content is in the run id)."""
    where, fmt = find_layout(cfg.root)
    suffix = "" if fmt == "py" else ".bin"
    return [where / f"{name}{suffix}" for name in (*TRAIN_BATCHES, TEST_BATCH)]


def _check_labels(y: np.ndarray, path: Path) -> None:
    if y.size and (y.min() < 0 or y.max() > 9):
        raise UserError(f"{path} has labels outside 0..9; replace it with the official file")


def load(cfg: DataConfig) -> Dataset:
    """N x 3 x 32 x 32 float32 in [0, 1], 10 classes, 50000/10000 with the official files."""
    where, fmt = find_layout(cfg.root)
    read, suffix = (_load_pickle, "") if fmt == "py" else (_load_bin, ".bin")
    parts = []
    for name in (*TRAIN_BATCHES, TEST_BATCH):
        path = where / f"{name}{suffix}"
        x, y = read(path)
        _check_labels(y, path)
        parts.append((x, y))
    x_train = np.concatenate([p[0] for p in parts[:-1]])
    y_train = np.concatenate([p[1] for p in parts[:-1]])

    def images(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).reshape(-1, 3, 32, 32).float().div_(255.0)

    return Dataset("cifar10", images(x_train), torch.from_numpy(y_train), images(parts[-1][0]),
                   torch.from_numpy(parts[-1][1].copy()), 10)
