"""One assertion for bad experiment input: one line on stderr naming the problem, exit code 2, and the
store exactly as it was."""
from pathlib import Path

from earlyphase.cli import main
from earlyphase.store import Store


def assert_rejected(experiment: str, override: str, needle: str, store: Path, capsys, snapshot) -> None:
    Store(store)
    before = snapshot(store)
    code = main(["run", experiment, "--store", str(store), "--set", override])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1, err
    assert snapshot(store) == before
