"""One assertion for bad experiment input: one line on stderr naming the problem, exit code 2, and the
store exactly as it was."""
from pathlib import Path

from earlyphase.cli import main
from earlyphase.store import Store


def assert_rejected(experiment: str, overrides: str | list[str], needles: str | list[str], store: Path, capsys,
                    snapshot) -> None:
    """``overrides`` (one ``--set`` each) must be refused with every needle on one ``error:`` line."""
    overrides = [overrides] if isinstance(overrides, str) else overrides
    needles = [needles] if isinstance(needles, str) else needles
    Store(store)  # an existing store, which bad input must leave as it is
    before = snapshot(store)
    argv = ["run", experiment, "--store", str(store), "--quiet"]
    for o in overrides:
        argv += ["--set", o]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error:") and len(err.splitlines()) == 1, err
    assert all(n in err for n in needles), err
    assert snapshot(store) == before
