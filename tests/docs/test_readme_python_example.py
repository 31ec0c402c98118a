"""The README's Python example runs as written and prints what the README says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> tuple[str, str]:
    text = README.read_text()
    section = text.split("## Python: handlers, a worker, progress", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    printed = re.search(r"It prints `([^`]*)`", section)
    assert code is not None
    assert printed is not None
    return code.group(1), printed.group(1)


def test_example_is_short() -> None:
    code, _ = _example()
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 15


def test_example_runs_as_written(database_url: str, tmp_path: Path) -> None:
    code, printed = _example()
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == printed
