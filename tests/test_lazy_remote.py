"""Lazy restore through a real `pageserver` on loopback (and across two
network namespaces): the restoring side needs no image files at all."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    LAZARUS,
    Procs,
    Workload,
    assert_exact,
    error_line,
    is_alive,
    lazarus,
    ok,
    proc_state,
    read_counter,
    wait_lines,
    wait_until,
)
from tests.test_lazy import daemon_stats, end_process, is_lazarus, parent_of
from tests.test_pageserver import ServerProc, make_cert

ALL_PAGES_TIMEOUT = 60.0
RESTORE_TIMEOUT = 60.0


def server_args(s: ServerProc) -> list[str]:
    return ["--page-server", f"{s.host}:{s.port}"]


def dump_to(s: ServerProc, w: Workload, name: str, *extra: str) -> None:
    ok(lazarus("dump", "-t", str(w.pid), *server_args(s), "--image", name, *extra))
    assert w.popen is not None
    w.reap()


def restore_lazy(s: ServerProc, name: str, pidfile: Path, *extra: str) -> int:
    ok(lazarus("restore", "--lazy", *server_args(s), "--image", name, "-d",
               "--pidfile", str(pidfile), *extra))
    return int(pidfile.read_text())


def bigmem_ready(d: Path) -> str:
    wait_until(lambda: (d / "before.sha").exists(), 30, "bigmem to fill its memory")
    return (d / "before.sha").read_text()


def bigmem_check(pid: int, d: Path, before: str) -> None:
    os.kill(pid, signal.SIGUSR1)
    wait_until(lambda: (d / "after.sha").exists(), 30, "bigmem to re-hash its memory")
    assert (d / "after.sha").read_text() == before


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServerProc]:
    images = tmp_path / "served"
    images.mkdir()
    s = ServerProc(images, tmp_path / "pageserver.log")
    yield s
    s.kill()


def test_counter_lazily_through_the_pageserver(procs: Procs, tmp_path: Path,
                                               served: ServerProc) -> None:
    out = tmp_path / "counter.txt"
    w = procs.python("counter", str(out))
    wait_lines(out, 5)
    dump_to(served, w, "counter")
    assert (served.images / "counter" / "inventory.img").exists()
    pid = restore_lazy(served, "counter", tmp_path / "pid")
    procs.adopt(pid)
    assert pid == w.pid
    assert_exact(wait_lines(out, len(read_counter(out)) + 8))


def test_bigmem_lazily_runs_early_then_gets_every_page(procs: Procs, tmp_path: Path,
                                                       served: ServerProc) -> None:
    w = procs.python("bigmem", str(tmp_path))
    before = bigmem_ready(tmp_path)
    dump_to(served, w, "big")
    pid = restore_lazy(served, "big", tmp_path / "pid")
    procs.adopt(pid)
    daemon = parent_of(pid)
    assert is_alive(pid) and is_lazarus(daemon), "restore -d should return before the last page"
    wait_until(lambda: proc_state(daemon) in (None, "Z", "X") or not is_lazarus(daemon),
               ALL_PAGES_TIMEOUT, "the lazy daemon to receive every page")
    bigmem_check(pid, tmp_path, before)


def test_three_clients_at_once(procs: Procs, tmp_path: Path, served: ServerProc) -> None:
    """Two lazy restores of two images and a pull of one of them, all at once."""
    big_dir = tmp_path / "big"
    big_dir.mkdir()
    big = procs.python("bigmem", str(big_dir))
    out = tmp_path / "counter.txt"
    counter = procs.python("counter", str(out))
    before = bigmem_ready(big_dir)
    wait_lines(out, 3)
    dump_to(served, big, "big")
    dump_to(served, counter, "counter")
    pulled = tmp_path / "pulled"
    common = ["--lazy", *server_args(served), "-d"]
    runs = [
        [LAZARUS, "restore", *common, "--image", "big", "--pidfile", str(tmp_path / "p1")],
        [LAZARUS, "restore", *common, "--image", "counter", "--pidfile", str(tmp_path / "p2")],
        [LAZARUS, "pull", *server_args(served), "--image", "big", "-D", str(pulled)],
    ]
    started = [subprocess.Popen(r, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE) for r in runs]
    for p in started:
        procs.track(p)
    for p, r in zip(started, runs, strict=True):
        _, err = p.communicate(timeout=RESTORE_TIMEOUT)
        assert p.returncode == 0, f"{r[1:3]} failed: {err.decode()}"
    big_pid, counter_pid = (int((tmp_path / n).read_text()) for n in ("p1", "p2"))
    procs.adopt(big_pid)
    procs.adopt(counter_pid)
    assert_exact(wait_lines(out, len(read_counter(out)) + 5))
    bigmem_check(big_pid, big_dir, before)
    # The pulled image is a normal local image: restore it too, once the lazy
    # copy is gone (it holds the PID).
    os.kill(big_pid, signal.SIGKILL)
    wait_until(lambda: not is_alive(big_pid), 10, "the lazily restored bigmem to die")
    (big_dir / "after.sha").unlink()
    ok(lazarus("restore", "-D", str(pulled), "-d", "--pidfile", str(tmp_path / "p3")))
    pid = int((tmp_path / "p3").read_text())
    assert pid == big_pid
    bigmem_check(pid, big_dir, before)


def test_server_killed_mid_restore(procs: Procs, tmp_path: Path, served: ServerProc) -> None:
    w = procs.python("bigmem", str(tmp_path))
    before = bigmem_ready(tmp_path)
    dump_to(served, w, "big")
    del before
    pidfile = tmp_path / "pid"
    # No -d: the command itself serves pages, so it can say why it gave up.
    restore = subprocess.Popen(
        [LAZARUS, "restore", "--lazy", *server_args(served), "--image", "big", "--pidfile",
         str(pidfile), "--lazy-timeout", "2", "--push-delay", "60"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    procs.track(restore)
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip().isdigit(), 30,
               "the restored process to run")
    pid = int(pidfile.read_text())
    procs.adopt(pid)
    served.kill()
    os.kill(pid, signal.SIGUSR1)     # touch every page: faults the server cannot answer
    _, err = restore.communicate(timeout=30)
    assert restore.returncode == 1
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("lazarus: error: lost page server"), err.decode()
    assert "killed restored process" in last
    wait_until(lambda: not is_alive(pid), 10, "the restored process to be killed")
    assert not (tmp_path / "after.sha").exists(), "a missing page must never read as zeros"


def test_wrong_token_and_bad_tls_restore_nothing(procs: Procs, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    images = tmp_path / "served"
    images.mkdir()
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    cert, key = make_cert(tmp_path, "server")
    other, _ = make_cert(tmp_path, "other")
    s = ServerProc(images, tmp_path / "ps.log", "--token-file", str(token), "--tls-cert",
                   str(cert), "--tls-key", str(key))
    try:
        out = tmp_path / "counter.txt"
        w = procs.python("counter", str(out))
        wait_lines(out, 3)
        dump_to(s, w, "counter", "--token-file", str(token), "--tls-ca", str(cert))
        wrong = tmp_path / "wrong"
        wrong.write_text("guess\n")
        cases: list[tuple[list[str], str]] = [
            (["--token-file", str(wrong), "--tls-ca", str(cert)], "token"),
            (["--token-file", str(token)], "TLS"),
            (["--token-file", str(token), "--tls-ca", str(other)], "TLS"),
        ]
        for extra, word in cases:
            res = lazarus("restore", "--lazy", *server_args(s), "--image", "counter", "-d",
                          *extra)
            assert word in error_line(res)
            assert not is_alive(w.pid), f"a refused restore left PID {w.pid} behind"
        pid = restore_lazy(s, "counter", tmp_path / "pid", "--token-file", str(token),
                           "--tls-ca", str(cert))
        procs.adopt(pid)
        assert_exact(wait_lines(out, len(read_counter(out)) + 3))
    finally:
        s.kill()


def netns(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair: 10.77.0.1 and 10.77.0.2."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed")
    tag = uuid.uuid4().hex[:6]
    a, b = f"lzA{tag}", f"lzB{tag}"
    made: list[str] = []
    try:
        for ns in (a, b):
            netns("netns", "add", ns)
            made.append(ns)
        netns("link", "add", f"va{tag}", "netns", a, "type", "veth", "peer", "name",
              f"vb{tag}", "netns", b)
        for ns, dev, ip in ((a, f"va{tag}", "10.77.0.1/24"), (b, f"vb{tag}", "10.77.0.2/24")):
            netns("-n", ns, "addr", "add", ip, "dev", dev)
            netns("-n", ns, "link", "set", dev, "up")
            netns("-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_two_hosts(procs: Procs, tmp_path: Path, two_hosts: tuple[str, str]) -> None:
    host_a, host_b = two_hosts
    images = tmp_path / "served"
    images.mkdir()
    out = tmp_path / "counter.txt"
    w = procs.python("counter", str(out))
    wait_lines(out, 3)
    ok(lazarus("dump", "-t", str(w.pid), "-D", str(images / "counter")))
    assert w.popen is not None
    w.reap()
    log = tmp_path / "ps.log"
    with open(log, "wb") as err:
        server = subprocess.Popen(
            ["ip", "netns", "exec", host_a, *ServerCommand.argv(images, "10.77.0.1:17071")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    procs.track(server)
    wait_until(lambda: "listening on" in log.read_text(), 15, "the page server in host A")
    pidfile = tmp_path / "pid"
    res = subprocess.run(
        ["ip", "netns", "exec", host_b, LAZARUS, "restore", "--lazy", "--page-server",
         "10.77.0.1:17071", "--image", "counter", "-d", "--pidfile", str(pidfile)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=RESTORE_TIMEOUT)
    assert res.returncode == 0, res.stderr
    pid = int(pidfile.read_text())
    procs.adopt(pid)
    assert pid == w.pid
    assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert_exact(wait_lines(out, len(read_counter(out)) + 5))
    wait_until(lambda: "session ended" in log.read_text(), 30, "host A to log the session")
    assert "10.77.0.2" in log.read_text()


class ServerCommand:
    @staticmethod
    def argv(images: Path, listen: str) -> list[str]:
        return [str(Path(LAZARUS).parent / "pageserver"), "-D", str(images), "--listen", listen]




def test_sequential_scan_reads_ahead_through_the_pageserver(procs: Procs, tmp_path: Path,
                                                            served: ServerProc) -> None:
    """As test_lazy_sequential_scan_reads_ahead, the pages from the server."""
    w = procs.python("bigmem", str(tmp_path))
    before = bigmem_ready(tmp_path)
    dump_to(served, w, "seq")
    log = tmp_path / "daemon.log"
    pid = restore_lazy(served, "seq", tmp_path / "pid", "--push-delay", "3600",
                       "--stats", "--log-file", str(log))
    procs.adopt(pid)
    bigmem_check(pid, tmp_path, before)
    end_process(pid)
    stats = daemon_stats(log)
    pages = (256 << 20) // 4096
    assert stats["read_ahead"] >= pages // 2, stats
    assert stats["faults"] < pages // 64 // 2, stats


def test_layout_changes_in_a_read_ahead_stream_through_the_pageserver(
        procs: Procs, tmp_path: Path, served: ServerProc) -> None:
    """DONTNEED, mremap and munmap meet read-ahead requests in flight on the wire."""
    w = procs.python("lazy_events", str(tmp_path), "--stream")
    wait_until(lambda: (tmp_path / "ready").exists(), 30, "the workload to map its regions")
    dump_to(served, w, "events")
    log = tmp_path / "daemon.log"
    pid = restore_lazy(served, "events", tmp_path / "pid", "--push-delay", "3600",
                       "--stats", "--log-file", str(log))
    procs.adopt(pid)
    os.kill(pid, signal.SIGUSR1)
    wait_until(lambda: (tmp_path / "result").exists(), 60, "the workload's verdict")
    assert (tmp_path / "result").read_text() == "ok\n"
    end_process(pid)
    stats = daemon_stats(log)
    assert stats["read_ahead"] > 0 and stats["events"] >= 3, stats
