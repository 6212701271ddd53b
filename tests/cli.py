"""Running the real ``billfold`` console script, as an operator would."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BILLFOLD = str(Path(sys.executable).with_name("billfold"))


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def run(
    *args: str, database_url: str, cwd: Path | None = None, stdin: str | None = None, settings: dict[str, str] | None = None
) -> Result:
    """``settings``: BILLFOLD_ variables to set besides the database URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLFOLD_")}
    env["BILLFOLD_DATABASE_URL"] = database_url
    env.update(settings or {})
    env["COLUMNS"] = "200"
    done = subprocess.run(
        [BILLFOLD, *args], capture_output=True, text=True, env=env, cwd=cwd, input=stdin, timeout=120
    )
    return Result(done.returncode, done.stdout, done.stderr)


def assert_one_line_error(result: Result, *phrases: str) -> None:
    """Failed with a non-zero exit and one line on stderr that says why; never a traceback."""
    assert result.code != 0, result
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("billfold: error: ")
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
