"""MNIST and Fashion-MNIST from a local directory of IDX files (gzipped or not), the format both are
distributed in; headers are checked so a truncated or mixed-up file is an error, not garbage data."""
from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..errors import UserError
from ..memory import available_bytes, gib
from .base import Dataset, DatasetInfo, counts

FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
TORCHVISION_DIR = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
LAYOUT = ("the IDX files " + ", ".join(FILES.values()) + " (each optionally gzipped, with .gz), "
          "directly in it or in a raw/ subfolder")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array with ``ndim`` dimensions: magic 0x0000 08 ndim, then ndim big-endian
    int32 sizes, then exactly prod(sizes) bytes. The size the header claims is checked (against the
    file's own size, or for a gzipped file against the memory available) before it is read, so a
    hostile header allocates nothing."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4 + 4 * ndim)
            size, dims = _idx_header(path, head, ndim)
            _check_claimed_size(path, size, len(head))
            raw = f.read(size + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}: {e}); replace it with the official file") from None
    if len(raw) != size:
        raise UserError(f"{path} should hold {len(head) + size} bytes for dims {dims}, has {len(head) + len(raw)}"
                        f"{' or more' if len(raw) > size else ''}; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8).reshape(dims)


def _idx_header(path: Path, head: bytes, ndim: int) -> tuple[int, list[int]]:
    """(payload bytes, dims) from an IDX header, computed in Python integers (no overflow)."""
    if len(head) < 4 + 4 * ndim:
        raise UserError(f"{path} is too short for an IDX header ({len(head)} bytes); the file is truncated")
    if head[:2] != b"\0\0" or head[2] != 0x08 or head[3] != ndim:
        raise UserError(f"{path} has IDX magic {head[:4].hex()}, expected 000008{ndim:02x} (unsigned bytes, "
                        f"{ndim} dims); it is not the expected IDX file")
    dims = [int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big", signed=True) for i in range(ndim)]
    if any(d < 0 for d in dims):
        raise UserError(f"{path} has negative IDX dimensions {dims}; the file is corrupt")
    return math.prod(dims), dims


def _check_claimed_size(path: Path, size: int, head: int) -> None:
    if not path.name.endswith(".gz"):
        on_disk = path.stat().st_size
        if on_disk != head + size:
            raise UserError(f"{path} should hold {head + size} bytes for its header's dimensions, has {on_disk}; "
                            "the file is truncated or corrupt")
    elif size > available_bytes():
        raise UserError(f"{path} claims {gib(size)} of pixels, more than the {gib(available_bytes())} of memory "
                        "available; the file is corrupt or not an MNIST file")


def _find(base: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (base / name).is_file():
            return base / name
    return None


def find_files(root: str | None, name: str) -> dict[str, Path]:
    """The four files, from data.root, its raw/ subfolder, or torchvision's <root>/MNIST/raw layout."""
    if root is None:
        raise UserError(f"data.name = '{name}' needs data.root, a directory holding {LAYOUT}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise UserError(f"{name} directory {base} does not exist; data.root must hold {LAYOUT}")
    for sub in (base, base / "raw", base / TORCHVISION_DIR[name] / "raw"):
        found = {key: _find(sub, stem) for key, stem in FILES.items()}
        if all(found.values()):
            return found  # type: ignore[return-value]
    raise UserError(f"{base} does not hold the {name} files: expected {LAYOUT}")


def files(cfg: DataConfig) -> list[Path]:
    """The four IDX files a load reads, in order (their content is in the run id)."""
    found = find_files(cfg.root, cfg.name)
    return [found[key] for key in FILES]


def _split(files: dict[str, Path], part: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(files[f"{part}_images"], 3)
    labels = read_idx(files[f"{part}_labels"], 1)
    if labels.shape[0] != images.shape[0]:
        raise UserError(f"{files[f'{part}_labels']} has {labels.shape[0]} labels but "
                        f"{files[f'{part}_images']} has {images.shape[0]} images; the files do not belong together")
    if labels.size and labels.max() > 9:
        raise UserError(f"{files[f'{part}_labels']} has labels above 9; it is not an MNIST label file")
    x = torch.from_numpy(images.copy()).float().div_(255.0)[:, None]
    return x, torch.from_numpy(labels.astype(np.int64))


def _image_dims(path: Path) -> list[int] | None:
    """The dimensions in an IDX image file's header (16 bytes), or None if it is not well formed."""
    try:
        with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as f:
            head = f.read(16)
    except (OSError, EOFError, zlib.error):
        return None
    if len(head) < 16 or head[:4] != b"\0\0\x08\x03":
        return None
    return [int(d) for d in np.frombuffer(head, dtype=">i4", count=3, offset=4)]


def info(cfg: DataConfig) -> DatasetInfo | None:
    """Sizes from the image headers, per-class counts from the (small) label files; None when a file
    is not well formed (the loader then says what is wrong)."""
    files = find_files(cfg.root, cfg.name)
    dims = {part: _image_dims(files[f"{part}_images"]) for part in ("train", "test")}
    try:
        labels = {part: read_idx(files[f"{part}_labels"], 1) for part in ("train", "test")}
    except UserError:
        return None
    if any(d is None or d[0] != labels[p].shape[0] or (labels[p].size and labels[p].max() > 9)
           for p, d in dims.items()) or dims["train"][1:] != dims["test"][1:]:
        return None
    return DatasetInfo(dims["train"][0], dims["test"][0], (1, *dims["train"][1:]), 10,
                       (counts(labels["train"], 10), counts(labels["test"], 10)))


def load(cfg: DataConfig) -> Dataset:
    """N x 1 x 28 x 28 float32 in [0, 1], 10 classes (60000/10000 with the official files)."""
    files = find_files(cfg.root, cfg.name)
    x_train, y_train = _split(files, "train")
    x_test, y_test = _split(files, "test")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise UserError(f"{files['train_images']} holds {tuple(x_train.shape[2:])} images but "
                        f"{files['test_images']} holds {tuple(x_test.shape[2:])}; the files do not belong together")
    return Dataset(cfg.name, x_train, y_train, x_test, y_test, 10)
