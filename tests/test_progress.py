"""Progress bars: dump, pull and migrate draw one on a terminal (bytes and
rate), and nothing when stderr is not a terminal or with --quiet."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import (
    KILL_TIMEOUT,
    LAZARUS,
    LAZARUS_TIMEOUT,
    Procs,
    assert_exact,
    lazarus,
    ok,
    proc_state,
    read_counter,
    restore_detached,
    wait_lines,
    wait_until,
)
from tests.test_lazy_remote import served  # noqa: F401  (fixture)
from tests.test_pageserver import ServerProc
from tests.test_predump import report_lines


def on_terminal(*args: str, timeout: float = LAZARUS_TIMEOUT) -> tuple[int, str, str]:
    """Run `lazarus ARGS` with stderr on a pseudo-terminal; (status, stdout, what the
    terminal showed)."""
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([LAZARUS, *args], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=slave)
    finally:
        os.close(slave)
    shown = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                p.kill()
                pytest.fail(f"`lazarus {' '.join(args)}` did not finish within {timeout:.0f} s "
                            f"(terminal so far: {bytes(shown)!r})")
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:     # EIO: every writer closed the terminal
                    chunk = b""
                if not chunk:
                    break
                shown += chunk
            elif p.poll() is not None:
                break
        assert p.stdout is not None
        out = p.stdout.read().decode()
        status = p.wait(timeout=KILL_TIMEOUT)
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
            p.wait(timeout=KILL_TIMEOUT)
    return status, out, shown.decode(errors="replace")


def bar_lines(shown: str, label: str) -> list[str]:
    """The states the bar labelled ``label`` was drawn in."""
    return [part.removesuffix("\x1b[K").strip() for part in shown.replace("\n", "\r")
            .split("\r") if part.startswith(label + " ")]


def test_dump_draws_a_bar_on_a_terminal_only(procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "counter.txt"
    w = procs.python("counter", str(out))
    wait_lines(out, 3)
    status, _, shown = on_terminal("dump", "-t", str(w.pid), "-D", str(tmp_path / "a"),
                                   "--leave-running")
    assert status == 0, shown
    drawn = bar_lines(shown, "dump")
    assert drawn, f"no progress bar on the terminal: {shown!r}"
    assert "100%" in drawn[-1] and "MB/s" in drawn[-1], drawn[-1]
    assert shown.endswith("\n"), "the bar's line must be ended"

    # Not a terminal: nothing on stderr. --quiet on a terminal: nothing either.
    res = ok(lazarus("dump", "-t", str(w.pid), "-D", str(tmp_path / "b"), "--leave-running"))
    assert res.stderr == ""
    status, _, shown = on_terminal("dump", "-t", str(w.pid), "-D", str(tmp_path / "c"),
                                   "--quiet")
    assert status == 0 and shown == "", shown
    assert w.popen is not None
    w.reap()
    # The image dumped under a bar restores like any other.
    pid = restore_detached(tmp_path / "c", tmp_path / "pid")
    procs.adopt(pid)
    assert pid == w.pid
    assert_exact(wait_lines(out, len(read_counter(out)) + 5))


def test_upload_and_pull_draw_bars(procs: Procs, tmp_path: Path,
                                   served: ServerProc) -> None:  # noqa: F811
    out = tmp_path / "counter.txt"
    w = procs.python("counter", str(out))
    wait_lines(out, 3)
    server = f"{served.host}:{served.port}"
    status, _, shown = on_terminal("dump", "-t", str(w.pid), "--page-server", server,
                                   "--image", "ctr")
    assert status == 0, shown
    wait_until(lambda: proc_state(w.pid) in (None, "Z", "X"), KILL_TIMEOUT, "the dumped target")
    assert w.popen is not None
    w.reap()
    assert bar_lines(shown, "dump") and "100%" in bar_lines(shown, "upload")[-1], shown

    status, _, shown = on_terminal("pull", "--page-server", server, "--image", "ctr",
                                   "-D", str(tmp_path / "pulled"))
    assert status == 0, shown
    pulled = bar_lines(shown, "pull")
    assert pulled and "100%" in pulled[-1] and "MB/s" in pulled[-1], shown
    pid = restore_detached(tmp_path / "pulled", tmp_path / "pid")
    procs.adopt(pid)
    assert_exact(wait_lines(out, len(read_counter(out)) + 5))


def test_migrate_draws_a_bar_per_round(procs: Procs, tmp_path: Path,
                                       served: ServerProc) -> None:  # noqa: F811
    report = tmp_path / "report"
    w = procs.python("rewriter", str(report), "--total", "16", "--hot", "4")
    wait_until(lambda: report_lines(report) == ["ready"], 30, "the rewriter to fill its buffer")
    status, stdout, shown = on_terminal("migrate", "-t", str(w.pid), "--to",
                                        f"{served.host}:{served.port}", "--name", "mig",
                                        "--max-rounds", "2", timeout=120)
    assert status == 0, shown
    assert w.popen is not None
    w.reap()
    assert "frozen for" in stdout
    assert bar_lines(shown, "pre-dump"), shown
    assert bar_lines(shown, "dump"), shown
    assert "100%" in bar_lines(shown, "upload")[-1], shown
