"""Tensor transforms behind the dataset options (README "Datasets"): each one is a pure function of its
inputs (and of an explicit generator where randomness is involved), so a dataset is a function of its
config, and the per-batch augmentation is a function of the data seed and the step."""
from __future__ import annotations

import torch

from ..errors import UserError


def subset_classes(x: torch.Tensor, y: torch.Tensor, classes: tuple[int, ...] | list[int],
                   num_classes: int, *, what: str = "data") -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the samples whose label is in ``classes`` and relabel them 0..n-1 in the order given, so
    ``classes=[7, 3]`` makes 7 the class 0."""
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise UserError(f"data.classes {list(classes)} has labels {bad} outside 0..{num_classes - 1} of {what}; "
                        f"pick classes in that range")
    lookup = torch.full((num_classes,), -1, dtype=torch.int64)
    lookup[torch.tensor(list(classes), dtype=torch.int64)] = torch.arange(len(classes))
    new = lookup[y]
    keep = new >= 0
    return x[keep], new[keep]


def blur(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool by ``factor`` along the spatial dims, then repeat each value ``factor`` times
    (nearest upsampling) back to the original size: the coarse image keeps its shape, so the same
    network runs on it. A trailing partial window is averaged over the entries it has."""
    if factor == 1:
        return x
    if x.dim() not in (3, 4):
        raise UserError(f"data.blur needs sequences (N x C x L) or images (N x C x H x W), got inputs of "
                        f"shape {tuple(x.shape)}; set data.blur = 1")
    pool = torch.nn.functional.avg_pool1d if x.dim() == 3 else torch.nn.functional.avg_pool2d
    small = pool(x, factor, stride=factor, ceil_mode=True)
    out = small
    for dim in range(2, x.dim()):
        out = out.repeat_interleave(factor, dim=dim).narrow(dim, 0, x.shape[dim])
    return out.contiguous()


def rotation_task(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Four copies of every sample, label = number of quarter turns (exact, by ``torch.rot90``).
    For sequences the 1-D analogue of the four rotations: identity, reversal, half-length circular
    shift, reversal then shift."""
    n = x.shape[0]
    if x.dim() == 4:
        if x.shape[2] != x.shape[3]:
            raise UserError(f"data.task = 'rotation' needs square images, got {x.shape[2]}x{x.shape[3]}; "
                            f"use another task")
        copies = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    elif x.dim() == 3:
        half = x.shape[2] // 2
        rev = torch.flip(x, dims=(2,))
        copies = [x, rev, torch.roll(x, half, dims=2), torch.roll(rev, half, dims=2)]
    else:
        raise UserError(f"data.task = 'rotation' needs sequences or images, got inputs of shape "
                        f"{tuple(x.shape)}; use data.task = 'classify'")
    labels = torch.arange(4, dtype=torch.int64).repeat_interleave(n)
    return torch.cat(copies), labels, 4


def color_dominance(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Label = the channel with the largest sum (the transfer target of the learning-phases code)."""
    if x.dim() < 3 or x.shape[1] < 2:
        raise UserError(f"data.task = 'color_dominance' needs at least two channels, got inputs of shape "
                        f"{tuple(x.shape)}; use 'energy_half' for one-channel data")
    sums = x.flatten(2).sum(dim=2)
    return sums.argmax(dim=1), int(x.shape[1])


def energy_half(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Label 1 when the first half of the sequence (top half of the image) has more energy (sum of
    squares) than the second (bottom) half; the middle row/entry of an odd length is left out. Flat
    N x d inputs count as one-channel sequences."""
    if x.dim() >= 3 and x.shape[1] != 1:
        raise UserError(f"data.task = 'energy_half' needs one-channel data, got {x.shape[1]} channels; "
                        f"use 'color_dominance' for multi-channel images")
    length = x.shape[-2] if x.dim() == 4 else x.shape[-1]
    half = length // 2
    dim = x.dim() - 2 if x.dim() == 4 else x.dim() - 1
    sq = x.double() ** 2
    first = sq.narrow(dim, 0, half).flatten(1).sum(1)
    second = sq.narrow(dim, length - half, half).flatten(1).sum(1)
    return (first > second).to(torch.int64), 2


def _channel_dims(x: torch.Tensor) -> list[int]:
    return [0] if x.dim() == 2 else [0, *range(2, x.dim())]


def normalize(x_train: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Subtract the training split's per-channel mean and divide by its per-channel std, on both
    splits. Flat N x d inputs are one channel (a global mean and std), which keeps the shape of a
    Gaussian covariance spectrum. Statistics and arithmetic are in float64, rounded once to the data's
    dtype: these values define the stored runs of every config with ``normalize = true``, so a faster
    float32 pass (which rounds differently) would change their numbers under unchanged run ids."""
    if x_train.dim() == 2:
        mean, std = x_train.mean().double(), x_train.double().std()
        std = torch.where(std > 0, std, torch.ones_like(std))
        return (((x_train - mean) / std).to(x_train.dtype), ((x_test - mean) / std).to(x_test.dtype))
    dims = _channel_dims(x_train)
    shape = [1, x_train.shape[1]] + [1] * (x_train.dim() - 2)
    wide = x_train.double()  # one float64 copy serves both statistics and the arithmetic, in place
    mean = wide.mean(dim=dims).reshape(shape)
    std = wide.std(dim=dims).reshape(shape)
    std = torch.where(std > 0, std, torch.ones_like(std))
    train = wide.sub_(mean).div_(std).to(x_train.dtype)
    del wide
    return train, x_test.double().sub_(mean).div_(std).to(x_test.dtype)


def label_noise(y: torch.Tensor, fraction: float, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Replace round(fraction * n) labels, at random positions, by uniform random classes (which may
    equal the true one, so the expected fraction changed is fraction * (1 - 1/C))."""
    n = y.shape[0]
    k = int(round(fraction * n))
    if k == 0:
        return y
    where = torch.randperm(n, generator=generator)[:k]
    out = y.clone()
    out[where] = torch.randint(num_classes, (k,), generator=generator, dtype=y.dtype)
    return out


def draw_crop_flip(n: int, generator: torch.Generator, pad: int = 4,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample crop offsets dx, dy in [0, 2*pad] and flip flags, drawn on the CPU from ``generator``
    (so the draw does not depend on the device) and then moved to ``device``."""
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    return dx.to(device), dy.to(device), flip.to(device)


def crop_flip(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, flip: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Batched random crop of the zero-padded images and horizontal flip, without a loop over samples:
    out[n, :, i, j] = padded[n, :, dy[n] + i, dx[n] + j'] with j' = W-1-j where flip[n], else j.
    dx = dy = pad and no flip is the identity; dx = pad + s moves the content s pixels to the left."""
    n, c, h, w = x.shape
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dev = x.device
    rows = dy.to(dev).long()[:, None] + torch.arange(h, device=dev)  # n x h
    cols_ = torch.arange(w, device=dev).expand(n, w)
    cols_ = torch.where(flip.to(dev).bool()[:, None], w - 1 - cols_, cols_)
    cols = dx.to(dev).long()[:, None] + cols_  # n x w
    out = xp.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * pad))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))
