"""The README's two set-up commands are the ones that are run: CI calls the test command word for word."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    setup = (ROOT / "README.md").read_text().split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", setup)


def test_readme_starts_with_a_run_command_and_a_test_command():
    run, test = _readme_commands()[:2]
    assert run.endswith(".venv/bin/raiox demo") and "pip install -e ." in run
    assert test.endswith(".venv/bin/python -m pytest") and "'.[test]'" in test


def test_ci_runs_the_readme_test_command_verbatim():
    test = _readme_commands()[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test in ci_lines
