"""Running the command line in tests: in-process (click's runner around ``main``, so errors, exit codes
and output are exactly what a user sees, without a new interpreter per call) or, for the one end-to-end
test, as a real ``python -m cathrepo`` subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner


@dataclass(frozen=True)
class Run:
    """What one command did: its exit status and what it printed (as ``subprocess.CompletedProcess``)."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def cathrepo(*args: str, cwd: Path, ok: bool = True, stdin: str | None = None) -> Run:
    """``cathrepo -C cwd ARGS`` in this process, through ``main`` (the entry point's error handling), with
    ``stdin`` as its standard input."""
    from cathrepo.cli import main

    with CliRunner().isolation(input=stdin) as (out, err, _):
        try:
            returned = main(["-C", str(cwd), *args])
            code = returned if isinstance(returned, int) else 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        run = Run(args, code, out.getvalue().decode(), err.getvalue().decode())
    if ok:
        assert run.returncode == 0, run.stderr
    return run


def cathrepo_process(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """The real installed command line in a subprocess (the end-to-end test)."""
    proc = subprocess.run([sys.executable, "-m", "cathrepo", *args], cwd=cwd, text=True, capture_output=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc
