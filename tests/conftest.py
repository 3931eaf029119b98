"""Shared test fixtures: a private $EARLYPHASE_HOME, an in-process CLI runner and store snapshots."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _earlyphase_home(tmp_path_factory, monkeypatch):
    """Keep the mnist1d cache (and any default store) out of the user's home; one dir per session so
    the generated data is cached across tests."""
    home = tmp_path_factory.getbasetemp() / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("EARLYPHASE_HOME", str(home))
    return home


def snapshot_tree(root: str | Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (relative, '/'-separated): file -> its bytes, directory -> None.
    Two snapshots are equal iff no file or directory was added, removed or changed in content."""
    root = Path(root)
    if not root.exists():
        return {}
    out: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = p.read_bytes() if p.is_file() else None
    return out


@pytest.fixture
def snapshot():
    """``snapshot(root)`` -> {relative path: bytes (files) or None (directories)}."""
    return snapshot_tree


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def ep(capsys):
    """Run ``earlyphase.cli.main(argv)`` in-process; returns its exit code, stdout and stderr."""
    from earlyphase.cli import main

    def run(*argv: str) -> CliResult:
        capsys.readouterr()  # drop anything captured before
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
