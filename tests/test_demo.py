"""`make demo` as a user runs it: a counter dumped, restored, then sent to a
page server and restored lazily, going on each time with no gap and no repeat."""

from __future__ import annotations

import subprocess

from tests.conftest import PYTHON


def test_demo_runs_and_checks_itself() -> None:
    res = subprocess.run([PYTHON, "-m", "core.demo"], capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "after the lazy restore: no gap, no repeat, same PID" in res.stdout
    assert "[7/7]" in res.stdout
