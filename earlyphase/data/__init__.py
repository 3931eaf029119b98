"""Datasets by name (README "Datasets"): a source loader, then the config's options applied in one fixed
order, so a DataConfig always gives the same tensors.

Order: source -> ``classes`` subset -> ``n_train``/``n_test`` cap -> ``rotation`` task -> ``blur`` ->
``normalize`` -> ``sphere`` -> ``color_dominance``/``energy_half`` labels (computed on the normalized inputs, what the
network sees, as the paper's code does) -> ``label_noise`` -> ``targets``.

The cap keeps the first n samples of each split (no reshuffle: the sources are already in random
order). For the generated sources (mnist1d, gaussian, prototypes) ``n_train``/``n_test`` are the
numbers generated, before any class subset; for the file sources (digits, cifar10, mnist,
fashion_mnist) asking for more samples than a split has is an error.
"""
from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch

from ..config import DataConfig
from ..errors import UserError
from ..registry import DATASET_REGISTRY
from . import cifar10, digits, gaussian, idx, mnist1d, prototypes
from .base import Dataset, DatasetInfo
from .transforms import (blur, color_dominance, crop_flip, draw_crop_flip, energy_half, label_noise,
                         normalize, rotation_task, subset_classes)

Loader = Callable[[DataConfig], Dataset]
InfoFn = Callable[[DataConfig], "DatasetInfo | None"]
FilesFn = Callable[[DataConfig], "list[Path]"]


def register_dataset(name: str, load: Loader, *, info: InfoFn, generated: bool = False,
                     example: dict | None = None, files: FilesFn | None = None) -> Loader:
    """Make ``data.name = name`` load ``load(cfg)``: the source's train and test tensors, before the
    options every dataset takes (classes, caps, tasks, normalize, ...), which earlyphase applies.

    ``info(cfg)`` gives the source's sizes, input shape and classes without loading tensors (None when
    it cannot tell; the data are then loaded to find out). ``generated``: a pure function of the config
    (cached in the process; ``n_train``/``n_test`` are the numbers generated); otherwise a fixed set of
    files, where asking for more samples than a split has is an error. ``example``: DataConfig fields of
    a small instance, for the contract tests (docs/plugins.md). ``files(cfg)``: the files the loader
    reads from ``data.root``; their content is then part of the run id (docs/store.md "Data identity")."""
    meta = {"files": files} if files is not None else {}
    return DATASET_REGISTRY.register(name, load, info=info, generated=generated, example=dict(example or {}), **meta)


for _name, _module, _generated, _example in (
        ("mnist1d", mnist1d, True, {"n_train": 200, "n_test": 100}),
        ("digits", digits, False, {}),
        ("gaussian", gaussian, True, {"n_train": 300, "n_test": 100, "dim": 20}),
        ("prototypes", prototypes, True, {"n_train": 300, "n_test": 100, "dim": 50, "num_classes": 5}),
        ("cifar10", cifar10, False, {}),
        ("mnist", idx, False, {}),
        ("fashion_mnist", idx, False, {})):
    register_dataset(_name, _module.load, info=_module.info, generated=_generated, example=_example,
                     files=getattr(_module, "files", None))

TASKS = ("classify", "rotation", "color_dominance", "energy_half")

__all__ = ["Dataset", "DatasetInfo", "load_dataset", "dataset_info", "register_dataset", "clear_cache",
           "crop_flip", "draw_crop_flip"]


def _capped(have: int, n: int | None, key: str, name: str, strict: bool) -> int:
    """How many samples the ``n_train``/``n_test`` cap keeps of ``have``."""
    if n is None:
        return have
    if n > have and strict:
        raise UserError(f"data.{key} = {n} but {name} has only {have} samples in that split "
                        f"(after any class subset); lower data.{key}")
    return min(n, have)


def _cap(x: torch.Tensor, y: torch.Tensor, n: int | None, key: str, name: str, strict: bool) -> tuple:
    keep = _capped(len(y), n, key, name, strict)
    return x[:keep], y[:keep]


def _source(cfg: DataConfig):
    if cfg.task not in TASKS:
        raise UserError(f"unknown data.task {cfg.task!r}; known tasks: {', '.join(TASKS)}")
    return DATASET_REGISTRY.get(cfg.name, key="data.name")


def _check_split_sizes(cfg: DataConfig, n_train: int, n_test: int) -> None:
    if n_train == 0 or n_test == 0:
        raise UserError(f"{cfg.name} with data.classes = {list(cfg.classes or [])} leaves an empty split; "
                        f"pick classes present in the data or raise data.n_train / data.n_test")


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """Sizes, input shape and classes of the dataset a DataConfig describes, from the source's
    metadata, without loading its tensors (a class subset of a source that does not know its
    per-class counts, or a source whose info cannot tell, is loaded to find out)."""
    entry = _source(cfg)
    src = entry.meta["info"](cfg)
    if src is None or (cfg.classes is not None and src.class_counts is None):
        return load_dataset(cfg).info()
    n_tr, n_te, n_cls = src.n_train, src.n_test, src.num_classes
    if cfg.classes is not None:
        bad = [c for c in cfg.classes if not 0 <= c < n_cls]
        if bad:
            raise UserError(f"data.classes {list(cfg.classes)} has labels {bad} outside 0..{n_cls - 1} of {cfg.name}; "
                            f"pick classes in that range")
        n_tr, n_te = (sum(part[c] for c in cfg.classes) for part in src.class_counts)
        n_cls = len(cfg.classes)
    strict = not entry.meta["generated"]
    n_tr = _capped(n_tr, cfg.n_train, "n_train", cfg.name, strict)
    n_te = _capped(n_te, cfg.n_test, "n_test", cfg.name, strict)
    _check_split_sizes(cfg, n_tr, n_te)
    n_cls = _check_transforms(cfg, tuple(src.input_shape), n_cls)
    if cfg.task == "rotation":
        n_tr, n_te = 4 * n_tr, 4 * n_te
    return DatasetInfo(n_tr, n_te, tuple(src.input_shape), n_cls, float_targets=cfg.targets == "pm1")


def _check_transforms(cfg: DataConfig, shape: tuple[int, ...], n_cls: int) -> int:
    """The options' checks on one zero sample of the source's shape (the same errors loading gives);
    returns the class count after the task."""
    x = torch.zeros(1, *shape)
    if cfg.task == "rotation":
        x, _, n_cls = rotation_task(x)
    x = blur(x, cfg.blur)
    if cfg.task in ("color_dominance", "energy_half"):
        n_cls = (color_dominance if cfg.task == "color_dominance" else energy_half)(x)[1]
    _check_targets(cfg, n_cls, x.dim())
    return n_cls


def _check_targets(cfg: DataConfig, n_cls: int, dim: int) -> None:
    if cfg.targets == "pm1" and n_cls != 2:
        raise UserError(f"data.targets = 'pm1' needs a two-class task, {cfg.name} with task {cfg.task!r} has "
                        f"{n_cls} classes; pick two with data.classes or use data.targets = 'index'")
    if cfg.augment and dim != 4:
        raise UserError(f"data.augment (random crop and flip) needs images, {cfg.name} has inputs of "
                        f"{dim - 1} dimensions; set data.augment = false")


def to_sphere(x: torch.Tensor) -> torch.Tensor:
    """Each sample rescaled to norm sqrt(d), d its number of entries (docs/experiments/linear_dynamics.md: the linear model's
    constant terms are constants only on that sphere)."""
    flat = x.flatten(1)
    norm = flat.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    return (flat * (flat.shape[1] ** 0.5 / norm)).reshape(x.shape)


_CACHE: "OrderedDict[tuple, Dataset]" = OrderedDict()
_CACHE_MAX_BYTES = 1 << 30  # all kept datasets together (CIFAR-10 as float32 is 0.74 GiB)
_CACHE_MAX_FILES = 256  # a data.root with more files than this is not kept (its signature would cost)


def _files_signature(root: str | None) -> tuple | None:
    """(path, size, mtime, inode) of every file under ``root`` (three levels deep): a file source's
    cache key, so changed files are read again. None: too many files to watch cheaply."""
    if root is None:
        return ()
    out: list[tuple] = []
    stack = [(Path(root).expanduser(), 0)]
    while stack:
        where, depth = stack.pop()
        with contextlib.suppress(OSError), os.scandir(where) as it:
            for e in it:
                if e.is_dir() and depth < 3:
                    stack.append((Path(e.path), depth + 1))
                elif e.is_file():
                    st = e.stat()
                    out.append((e.path, st.st_size, st.st_mtime_ns, st.st_ino))
        if len(out) > _CACHE_MAX_FILES:
            return None
    return tuple(sorted(out))


def load_dataset(cfg: DataConfig, device: torch.device | str | None = None) -> Dataset:
    """The dataset a DataConfig describes, on the CPU (or on ``device``).

    The last datasets loaded are kept in the process (up to 1 GiB), so a worker's runs pay reading,
    generating and normalizing once: generated ones are a pure function of their config; file
    sources are keyed by their config and their files' size, time and inode as well, so changed
    files are read again. Callers get their own copy of the tensors (on ``device`` the copy is the
    move), so nothing one run does to them reaches the next."""
    files = () if _source(cfg).meta["generated"] else _files_signature(cfg.root)
    if files is None:
        return _build(cfg) if device is None else _build(cfg).to(device)
    key = (cfg, files)
    hit = _CACHE.get(key)
    if hit is None:
        hit = _build(cfg)
        hit.fingerprint()  # computed once, carried by the copies
        if hit.nbytes() > _CACHE_MAX_BYTES:
            return hit if device is None else hit.to(device)
        _CACHE[key] = hit
        while sum(d.nbytes() for d in _CACHE.values()) > _CACHE_MAX_BYTES:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    if device is None or torch.device(device).type == "cpu":
        return hit.clone()
    return hit.to(device)


def clear_cache() -> None:
    """Forget the datasets kept in this process."""
    _CACHE.clear()


def _build(cfg: DataConfig) -> Dataset:
    entry = _source(cfg)
    ds = entry.value(cfg)
    x_tr, y_tr, x_te, y_te, n_cls = ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.num_classes

    if cfg.classes is not None:
        x_tr, y_tr = subset_classes(x_tr, y_tr, cfg.classes, n_cls, what=cfg.name)
        x_te, y_te = subset_classes(x_te, y_te, cfg.classes, n_cls, what=cfg.name)
        n_cls = len(cfg.classes)
    strict = not entry.meta["generated"]
    x_tr, y_tr = _cap(x_tr, y_tr, cfg.n_train, "n_train", cfg.name, strict)
    x_te, y_te = _cap(x_te, y_te, cfg.n_test, "n_test", cfg.name, strict)
    _check_split_sizes(cfg, len(y_tr), len(y_te))

    if cfg.task == "rotation":
        x_tr, y_tr, n_cls = rotation_task(x_tr)
        x_te, y_te, _ = rotation_task(x_te)
    x_tr, x_te = blur(x_tr, cfg.blur), blur(x_te, cfg.blur)
    if cfg.normalize:
        x_tr, x_te = normalize(x_tr, x_te)
    if cfg.sphere:
        x_tr, x_te = to_sphere(x_tr), to_sphere(x_te)
    if cfg.task in ("color_dominance", "energy_half"):
        relabel = color_dominance if cfg.task == "color_dominance" else energy_half
        y_tr, n_cls = relabel(x_tr)
        y_te, _ = relabel(x_te)

    if cfg.label_noise > 0:
        y_tr = label_noise(y_tr, cfg.label_noise, n_cls, torch.Generator().manual_seed(cfg.seed))
    _check_targets(cfg, n_cls, x_tr.dim())
    if cfg.targets == "pm1":
        y_tr, y_te = y_tr.float() * 2 - 1, y_te.float() * 2 - 1
    return Dataset(cfg.name, x_tr.contiguous(), y_tr, x_te.contiguous(), y_te, n_cls, cfg.augment)
