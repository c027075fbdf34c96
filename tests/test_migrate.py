"""`lazarus migrate`: pre-copy rounds, a short final freeze, the image on a
real page server on loopback, and a lazy restore from there."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.conftest import LAZARUS, Procs, error_line, is_alive, lazarus, ok, wait_until
from tests.test_lazy_remote import restore_lazy, served  # noqa: F401  (fixture)
from tests.test_pageserver import ServerProc
from tests.test_predump import report_lines, uffd_fds


def test_migrate_process_rewriting_its_memory(procs: Procs, tmp_path: Path,
                                              served: ServerProc) -> None:  # noqa: F811
    out = tmp_path / "report"
    # 64 MiB rewritten continuously, 32 MiB more written once.
    w = procs.python("rewriter", str(out), "--total", "96", "--hot", "64")
    wait_until(lambda: report_lines(out) == ["ready"], 60, "the rewriter to fill its buffer")
    res = ok(lazarus("migrate", "-t", str(w.pid), "--to", f"{served.host}:{served.port}",
                     "--name", "mig", timeout=300))
    assert w.popen is not None
    w.reap()
    text = res.stdout
    assert "pre-dump round 1:" in text and "final dump:" in text and "frozen for" in text
    assert f"lazarus restore --lazy --page-server {served.host}:{served.port} --image mig" \
        in text
    assert (served.images / "mig" / "inventory.img").is_file()

    pid = restore_lazy(served, "mig", tmp_path / "pid")
    procs.adopt(pid)
    assert pid == w.pid
    assert uffd_fds(pid) == []
    # It was rewriting when frozen and goes on rewriting; now it stops and
    # checks every byte against what it knows it wrote.
    os.kill(pid, signal.SIGUSR1)
    wait_until(lambda: len(report_lines(out)) == 2, 120, "the migrated rewriter's report")
    line = report_lines(out)[1]
    assert line.startswith("ok "), line
    assert int(line.split()[-1]) >= 1, "it should have rewritten its hot memory several times"


def test_migrate_to_nowhere_leaves_process_running(procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "report"
    w = procs.python("rewriter", str(out), "--total", "8", "--hot", "4")
    wait_until(lambda: report_lines(out) == ["ready"], 30, "the rewriter to fill its buffer")
    # A port nothing listens on (bound, never listening).
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        line = error_line(lazarus("migrate", "-t", str(w.pid), "--to", f"127.0.0.1:{port}"))
    assert "127.0.0.1" in line
    assert is_alive(w.pid) and uffd_fds(w.pid) == []
    os.kill(w.pid, signal.SIGUSR1)
    wait_until(lambda: len(report_lines(out)) == 2, 30, "the rewriter's report")
    assert report_lines(out)[1].startswith("ok ")


def test_migrate_failing_at_final_dump_leaves_process_running(
        procs: Procs, tmp_path: Path, served: ServerProc) -> None:  # noqa: F811
    out = tmp_path / "report"
    w = procs.python("rewriter", str(out), "--total", "8", "--hot", "4")
    wait_until(lambda: report_lines(out) == ["ready"], 30, "the rewriter to fill its buffer")
    env = dict(os.environ, LAZARUS_TEST_FAIL_AFTER="collect")    # a stage of the final dump
    res = subprocess.run([LAZARUS, "migrate", "-t", str(w.pid), "--to",
                          f"{served.host}:{served.port}", "--name", "x"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                         env=env)
    assert "failing after stage collect" in error_line(res)
    # Pre-dump rounds ran; the failed final dump leaves no tracking fd behind.
    assert is_alive(w.pid) and uffd_fds(w.pid) == []
    assert not (served.images / "x").exists()
    os.kill(w.pid, signal.SIGUSR1)
    wait_until(lambda: len(report_lines(out)) == 2, 30, "the rewriter's report")
    assert report_lines(out)[1].startswith("ok ")
