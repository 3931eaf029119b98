"""The content fingerprint of a dataset's files, part of the run id of a run that reads them (docs/store.md
"Data identity"): the same config over changed files is another run, never the old one served again.
Hashing is memoized per file by (path, size, mtime), so planning a sweep hashes each file once per
process, and again only when the file changed."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

_MEMO: dict[tuple[str, int, int], str] = {}
_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """sha256 of one file's bytes, memoized by its resolved path, size and mtime (ns)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    hit = _MEMO.get(key)
    if hit is None:
        h = hashlib.sha256()
        with open(real, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        hit = _MEMO[key] = h.hexdigest()
    return hit


def files_fingerprint(paths: list[Path]) -> str:
    """One fingerprint of several files' contents, in the given order (names do not count: the same
    bytes under another directory are the same data)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(file_digest(p).encode())
    return h.hexdigest()[:16]
