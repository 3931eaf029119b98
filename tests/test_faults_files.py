"""Hostile data files: a size claimed by a file is checked against the file (or the memory
available) before anything that large is allocated, and the user gets one line, exit 2."""
from __future__ import annotations

import gzip
import pickle
import resource
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from earlyphase.data.idx import read_idx
from earlyphase.errors import UserError

CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _train_in_subprocess(args: list[str], limit_gib: float = 3.0) -> subprocess.CompletedProcess:
    """`earlyphase train` with an address-space limit, so a loader that over-allocates fails here
    instead of taking the machine's memory."""
    limit = int(limit_gib * 2**30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run([sys.executable, "-m", "earlyphase.cli", "train", "--quiet", *args],
                          capture_output=True, text=True, preexec_fn=cap, timeout=300)


def test_cifar_pickle_with_2000_references_to_one_10mb_object_is_refused_without_allocating(tmp_path):
    big = b"\0" * (10 * 2**20)
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": [big] * 2000, b"labels": [0] * 2000}, protocol=2))
    assert (tmp_path / "data_batch_1").stat().st_size < 11 * 2**20  # one object, 2000 references
    for name in CIFAR_FILES[1:]:
        (tmp_path / name).write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]},
                                                   protocol=2))
    proc = _train_in_subprocess(["--set", 'data.name="cifar10"', "--set", f'data.root="{tmp_path}"',
                                 "--set", 'model.name="conv2"', "--store", str(tmp_path / "store")])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "data_batch_1" in proc.stderr and "integer 'labels'" in proc.stderr
    assert not (tmp_path / "store" / "runs").exists() or not any((tmp_path / "store" / "runs").iterdir())


def _idx_header(dims: list[int]) -> bytes:
    return b"\0\0\x08" + bytes([len(dims)]) + b"".join(struct.pack(">i", d) for d in dims)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_header_whose_dimensions_overflow_int64_is_one_error(tmp_path, gz):
    dims = [2**31 - 1] * 3  # product 2^93: wraps in int64 arithmetic
    path = tmp_path / ("x.gz" if gz else "x")
    raw = _idx_header(dims) + b"\0" * 16
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(UserError, match=("more than the" if gz else "should hold")):
        read_idx(path, 3)


def test_gzip_idx_claiming_more_than_memory_is_refused_before_reading(tmp_path):
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(_idx_header([2**20, 2**20, 2**20]) + b"\0" * 1024))
    with pytest.raises(UserError, match="claims .* GiB of pixels"):
        read_idx(path, 3)


def test_negative_idx_dimensions_are_one_error(tmp_path):
    path = tmp_path / "neg"
    path.write_bytes(_idx_header([-5, 28, 28]))
    with pytest.raises(UserError, match="negative IDX dimensions"):
        read_idx(path, 3)
