"""The data order: the batch at step t is a function of data_seed and t only (a seeded permutation
per epoch, augmentation parameters drawn with it), so every IMP level sees the same batches and a
resumed run sees what an uninterrupted one would."""
from __future__ import annotations

import hashlib

import torch


def _epoch_seed(data_seed: int, epoch: int) -> int:
    digest = hashlib.sha256(f"earlyphase-order:{data_seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class DataOrder:
    def __init__(self, n: int, batch_size: int, data_seed: int, *, augment: bool, shuffle: bool,
                 device: torch.device, pad: int = 4) -> None:
        self.n, self.batch, self.data_seed = n, min(batch_size, n), data_seed
        self.augment, self.shuffle, self.device, self.pad = augment, shuffle, device, pad
        self.steps_per_epoch = -(-n // self.batch)
        self._epoch = -1

    def _load_epoch(self, epoch: int) -> None:
        g = torch.Generator().manual_seed(_epoch_seed(self.data_seed, epoch))
        perm = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        self.perm = perm.to(self.device)
        if self.augment:
            shifts = torch.randint(0, 2 * self.pad + 1, (2, self.n), generator=g)
            flips = torch.rand(self.n, generator=g) < 0.5
            # parameters are indexed by position in the epoch, so a batch slices them like perm
            self.dx, self.dy, self.flip = shifts[0].to(self.device), shifts[1].to(self.device), flips.to(self.device)
        self._epoch = epoch

    def batch_slice(self, step: int) -> slice:
        epoch, j = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._load_epoch(epoch)
        return slice(j * self.batch, min((j + 1) * self.batch, self.n))

    def indices(self, step: int) -> torch.Tensor:
        return self.perm[self.batch_slice(step)]
