"""Running the ``billfold`` command as an operator would: in this process through Click's test
runner (the same ``billfold.cli.main``, its arguments, environment, stdin and exit code), or, for
the smoke tests that need a process of its own (servers, signals, a whole walkthrough), the real
console script in a subprocess."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from billfold import cli
from billfold.config import get_settings
from billfold.kit import clock

BILLFOLD = str(Path(sys.executable).with_name("billfold"))


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def _environment(database_url: str, settings: dict[str, str] | None) -> dict[str, str | None]:
    """BILLFOLD_ variables: only the database URL and ``settings``; every other one unset."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("BILLFOLD_")}
    env.update({"BILLFOLD_DATABASE_URL": database_url, "COLUMNS": "200", **(settings or {})})
    return env


def run(
    *args: str,
    database_url: str,
    cwd: Path | None = None,
    stdin: str | None = None,
    settings: dict[str, str] | None = None,
    process: bool = False,
) -> Result:
    """``settings``: BILLFOLD_ variables to set besides the database URL. ``process``: run the
    console script in a process of its own instead of in this one."""
    env = _environment(database_url, settings)
    if process:
        full = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
        done = subprocess.run(
            [BILLFOLD, *args], capture_output=True, text=True, env=full, cwd=cwd, input=stdin, timeout=120
        )
        return Result(done.returncode, done.stdout, done.stderr)
    return _in_process(args, env, cwd, stdin)


def _in_process(args: tuple[str, ...], env: dict[str, str | None], cwd: Path | None, stdin: str | None) -> Result:
    """``billfold.cli.main`` with the command line, environment and standard streams of a run,
    putting back what a command changes for its process (clock, log handlers, signal handlers,
    settings, working directory)."""
    logger = logging.getLogger("billfold")
    saved = (clock.get_clock(), list(logger.handlers), logger.level, os.getcwd(), sys.argv,
             signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    code = 0
    try:
        with CliRunner().isolation(input=stdin, env=env) as (out, err, _):
            get_settings.cache_clear()
            if cwd is not None:
                os.chdir(cwd)
            sys.argv = ["billfold", *args]
            try:
                cli.main()
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            sys.stdout.flush()
            sys.stderr.flush()
            return Result(code, out.getvalue().decode(), err.getvalue().decode())
    finally:
        clock.set_clock(saved[0])
        logger.handlers[:] = saved[1]
        logger.setLevel(saved[2])
        os.chdir(saved[3])
        sys.argv = saved[4]
        signal.signal(signal.SIGTERM, saved[5])
        signal.signal(signal.SIGINT, saved[6])
        get_settings.cache_clear()


def assert_one_line_error(result: Result, *phrases: str) -> None:
    """Failed with a non-zero exit and one line on stderr that says why; never a traceback."""
    assert result.code != 0, result
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("billfold: error: ")
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
