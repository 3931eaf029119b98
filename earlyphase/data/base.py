"""The in-memory dataset every loader returns: tensors, ready to be indexed by the training loop."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is, known without loading its tensors (so planning and the engine's check of a
    stored run stay cheap): split sizes, input shape, classes. A source's info may also give its
    per-class counts, which lets a class subset be sized without the labels."""

    n_train: int
    n_test: int
    input_shape: tuple[int, ...]
    num_classes: int
    class_counts: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # (train, test) per class
    float_targets: bool = False  # +-1 targets: one network output

    @property
    def out_dim(self) -> int:
        return 1 if self.float_targets else self.num_classes


def counts(labels, num_classes: int) -> tuple[int, ...]:
    """Samples per class of an integer label array (numpy or torch)."""
    import numpy as np

    return tuple(int(c) for c in np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)[:num_classes])


@dataclass
class Dataset:
    """Train and test tensors (images NCHW float32, sequences N x 1 x L; labels int64, or float
    +-1 for square-loss binary tasks) and what the loop needs to know about them."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    augment: bool = False  # the loop applies random crop + flip to each training batch
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def out_dim(self) -> int:
        """Network outputs: one for +-1 targets, else one per class."""
        return 1 if self.y_train.is_floating_point() else self.num_classes

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    def to(self, device: torch.device | str) -> "Dataset":
        return Dataset(self.name, self.x_train.to(device), self.y_train.to(device), self.x_test.to(device),
                       self.y_test.to(device), self.num_classes, self.augment, self._fingerprint)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.x_train, self.y_train, self.x_test, self.y_test))

    def clone(self) -> "Dataset":
        """A copy whose tensors share nothing with this one's."""
        return Dataset(self.name, self.x_train.clone(), self.y_train.clone(), self.x_test.clone(),
                       self.y_test.clone(), self.num_classes, self.augment, self._fingerprint)

    def info(self) -> DatasetInfo:
        return DatasetInfo(self.n_train, int(self.x_test.shape[0]), self.input_shape, self.num_classes,
                           float_targets=bool(self.y_train.is_floating_point()))

    def fingerprint(self) -> str:
        """Hash of the tensors' bytes: recorded in provenance, so a changed dataset is visible.
        Computed once per dataset (copies and moves keep it)."""
        if self._fingerprint is not None:
            return self._fingerprint
        h = hashlib.sha256()
        for t in (self.x_train, self.y_train, self.x_test, self.y_test):
            t = t.detach().cpu().contiguous()
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(memoryview(t.view(torch.uint8).numpy()) if t.numel() else b"")  # no copy of the bytes
        self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint
