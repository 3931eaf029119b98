"""The README's first two commands are what a new user runs; CI must run the second one."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return [line.strip() for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("    python3 -m venv")]


def test_readme_starts_with_setup_and_test_commands():
    commands = readme_commands()
    assert len(commands) >= 2
    assert "earlyphase" in commands[0] and "pytest" in commands[1]
    assert "requirements.txt" in commands[0] and "requirements.txt" in commands[1]


def test_ci_runs_the_readme_test_command():
    assert readme_commands()[1] in (ROOT / ".ci" / "run").read_text()


def test_requirements_pin_torch_and_the_package_keeps_it_open():
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text().split()
    assert '"torch>=2.4"' in (ROOT / "pyproject.toml").read_text()
