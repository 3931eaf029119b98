"""The in-memory dataset every loader returns: tensors, ready to be indexed by the training loop."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


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
                       self.y_test.to(device), self.num_classes, self.augment)

    def fingerprint(self) -> str:
        """Hash of the tensors' bytes: recorded in provenance, so a changed dataset is visible."""
        h = hashlib.sha256()
        for t in (self.x_train, self.y_train, self.x_test, self.y_test):
            t = t.detach().cpu().contiguous()
            h.update(str((tuple(t.shape), str(t.dtype))).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()[:16]
