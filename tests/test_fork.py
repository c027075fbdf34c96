"""Remote fork: `lazarus fork` freezes a tree only briefly, and the copy is
restored lazily from the page server it embeds while the original runs on.

On one host the copy needs its own PID namespace (the original still holds
its PIDs); its stdout, a pipe from outside, goes to a file of the test's
through --inherit-fd.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from core.fork import FORKS_DIR_ENV
from tests.conftest import (
    LAZARUS,
    LAZARUS_TIMEOUT,
    PYTHON,
    WORKLOADS,
    Procs,
    Workload,
    children,
    error_line,
    fd_targets,
    is_alive,
    lazarus,
    ok,
    proc_state,
    tracer_pid,
    usage_error_line,
    wait_until,
)
from tests.test_lazy_remote import two_hosts  # noqa: F401 - a fixture used below
from tests.test_trees import nspid, parent_of
from tests.workloads.forkmem import expected_digest

FORK_TIMEOUT = 60.0     # the fork command: serve every page, then end
READY_TIMEOUT = 30.0    # the fork command prints where it serves


@pytest.fixture(autouse=True)
def forks_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fork commands of a test keep their state files in its own directory
    (forks of other test runs on this machine may use the same names)."""
    d = tmp_path / "forks"
    monkeypatch.setenv(FORKS_DIR_ENV, str(d))
    return d


@dataclass
class Output:
    """The lines a process writes to a pipe, gathered by a thread."""

    fd: int
    lines: list[str] = field(default_factory=list)
    ino: int = 0        # of the pipe

    def __post_init__(self) -> None:
        self.ino = os.fstat(self.fd).st_ino
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with os.fdopen(self.fd, "r") as f:
            for line in f:
                self.lines.append(line.rstrip("\n"))

    def numbers(self) -> list[int]:
        return [int(x) for x in list(self.lines) if x.isdigit()]

    def wait_numbers(self, n: int, timeout: float = 15.0) -> list[int]:
        wait_until(lambda: len(self.numbers()) >= n, timeout, f"{n} ticks")
        return self.numbers()

    def digest(self, pid: int, timeout: float = 30.0) -> tuple[int, str]:
        """SIGUSR1, then the `sha N DIGEST` line it answers with."""
        seen = len(self.lines)
        os.kill(pid, signal.SIGUSR1)

        def answered() -> bool:
            return any(x.startswith("sha ") for x in self.lines[seen:])

        wait_until(answered, timeout, f"PID {pid} to hash its memory")
        _, n, d = next(x for x in self.lines[seen:] if x.startswith("sha ")).split()
        return int(n), d


def contiguous(values: list[int], start: int | None = None) -> None:
    first = values[0] if start is None else start
    assert values == list(range(first, first + len(values))), values[:50]


def start_forkmem(procs: Procs, tmp_path: Path, heap_mib: int = 64,
                  *extra: str) -> tuple[Workload, Output]:
    r, w = os.pipe()
    wl = procs.start([PYTHON, str(WORKLOADS / "forkmem.py"), str(tmp_path), str(heap_mib),
                      *extra], "forkmem", stdout=w)
    os.close(w)
    return wl, Output(r)


def start_fork(procs: Procs, pid: int, name: str, *extra: str, host: str = "127.0.0.1",
               prefix: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], int]:
    """`lazarus fork` on a free port of `host` (run through `prefix`, e.g. in a
    network namespace); returns it once it serves, and the port."""
    # Its work directory under the test's (one it cannot remove when killed stays there).
    p = subprocess.Popen([*prefix, LAZARUS, "fork", "-t", str(pid), "--name", name,
                          "--page-server", f"{host}:0", *extra],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=dict(os.environ, TMPDIR=str(procs.workdir)))
    procs.track(p)
    assert p.stdout is not None
    ready, _, _ = select.select([p.stdout], [], [], READY_TIMEOUT)
    if not ready:
        pytest.fail(f"lazarus fork did not say where it serves within {READY_TIMEOUT:.0f} s")
    line = p.stdout.readline().decode()
    m = re.search(rf"served on {re.escape(host)}:(\d+)", line)
    if m is None:
        p.kill()
        _, err = p.communicate(timeout=10)
        pytest.fail(f"lazarus fork said {line!r}; stderr: {err!r}")
    return p, int(m.group(1))


def finish(p: subprocess.Popen[bytes]) -> str:
    """Wait for the fork command to end by itself; its stderr."""
    try:
        _, err = p.communicate(timeout=FORK_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"lazarus fork still serving after {FORK_TIMEOUT:.0f} s")
    assert p.returncode == 0, err.decode()
    return err.decode()


def restore_copy(procs: Procs, tmp_path: Path, port: int, name: str, out_fd: int,
                 pipe_ino: int, host: str = "127.0.0.1", prefix: tuple[str, ...] = (),
                 extra: tuple[str, ...] = (), tag: str = "") -> int:
    pidfile = tmp_path / f"{name}{tag}.pid"
    argv = [*prefix, LAZARUS, "restore", "--lazy", "--page-server", f"{host}:{port}",
            "--image", name, "--pidns", "-d", "--pidfile", str(pidfile),
            "--inherit-fd", f"fd[{out_fd}]:pipe:[{pipe_ino}]", *extra]
    res = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=LAZARUS_TIMEOUT, pass_fds=(out_fd,))
    ok(res)
    pid = int(pidfile.read_text())
    procs.adopt(pid)
    procs.adopt(parent_of(pid), Path(PYTHON))     # the namespace's init
    return pid


@pytest.fixture
def copy_out() -> Iterator[tuple[int, Output]]:
    """A pipe for the copy's stdout: the write end for lazarus, the lines read here."""
    r, w = os.pipe()
    out = Output(r)
    try:
        yield w, out
    finally:
        os.close(w)


def test_fork_runs_on_and_the_copy_goes_on_from_the_fork(
        procs: Procs, tmp_path: Path, copy_out: tuple[int, Output]) -> None:
    w, src = start_forkmem(procs, tmp_path)
    src.wait_numbers(20)
    fork, port = start_fork(procs, w.pid, "mem")
    at_fork = len(src.numbers())
    # The original was released before the fork said it serves: it runs, untraced.
    assert is_alive(w.pid) and tracer_pid(w.pid) == 0
    twins = children(w.pid)
    assert len(twins) == 1 and proc_state(twins[0]) == "t", "one stopped twin"
    assert os.listdir(f"/proc/{twins[0]}/fd") == [], "the twin holds none of the fds"
    src.wait_numbers(at_fork + 10)

    pid = restore_copy(procs, tmp_path, port, "mem", copy_out[0], src.ino)
    assert nspid(pid)[-1] == w.pid, "inside its namespace the copy has the original's PID"
    finish(fork)
    # Every page was sent, the twin is gone and reaped: the original has no child left.
    assert children(w.pid) == [] and proc_state(twins[0]) is None

    copy = copy_out[1].wait_numbers(10)
    contiguous(copy)
    assert 0 < copy[0] <= at_fork + 1, (copy[0], at_fork)
    # The original went on through the fork without a lost or repeated tick.
    contiguous(src.wait_numbers(copy[0] + 40), 0)
    # Both memories are exactly what their ticks made of them.
    n, d = copy_out[1].digest(pid)
    assert n >= copy[0] and d == expected_digest(n)
    n, d = src.digest(w.pid)
    assert n > copy[0] and d == expected_digest(n)


def test_fork_of_a_tree_with_threads(procs: Procs, tmp_path: Path) -> None:
    """A parent with a thread and a child: each gets its twin; all go away."""
    out = tmp_path / "counter.txt"
    w = procs.python("counter", str(out), "--thread", "--child")
    wait_until(lambda: out.exists() and out.read_text().count("\n") >= 5, 15, "ticks")
    kid = children(w.pid)[0]
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    fork, port = start_fork(procs, w.pid, "tree", "--stats", "--token-file", str(token))
    twins = [c for c in children(w.pid) if c != kid] + children(kid)
    assert [proc_state(t) for t in twins] == ["t", "t"], "a stopped twin for each process"
    # The copy writes to the same file (same path): only check it runs.
    pidfile = tmp_path / "tree.pid"
    server = ["--lazy", "--page-server", f"127.0.0.1:{port}", "--image", "tree"]
    assert "token" in error_line(lazarus("restore", *server, "--pidns", "-d"))
    ok(lazarus("restore", *server, "--token-file", str(token), "--pidns", "-d",
               "--pidfile", str(pidfile)))
    pid = int(pidfile.read_text())
    procs.adopt(pid)
    procs.adopt(parent_of(pid), Path(PYTHON))
    err = finish(fork)
    assert "frozen" in err and "served" in err
    assert children(w.pid) == [kid] and children(kid) == []
    assert all(proc_state(t) is None for t in twins)
    assert len(children(pid)) == 1 and is_alive(pid)


def test_fork_refuses_bad_input_and_leaves_the_process_alone(procs: Procs,
                                                             tmp_path: Path) -> None:
    w, src = start_forkmem(procs, tmp_path, 8)
    src.wait_numbers(3)
    assert "no process" in error_line(lazarus("fork", "-t", "999999999", "--image", "x",
                                              "--listen", "127.0.0.1:0"))
    assert "bad image name" in error_line(lazarus("fork", "-t", str(w.pid), "--image",
                                                  "../x", "--listen", "127.0.0.1:0"))
    assert "needs -t PID" in error_line(lazarus("fork", "--name", "x", "--page-server",
                                                "127.0.0.1:0"))
    assert "--restores: 0 is not 1 or more" in usage_error_line(lazarus(
        "fork", "-t", str(w.pid), "--name", "x", "--page-server", "127.0.0.1:0",
        "--restores", "0"))
    assert "--release NAME takes no" in error_line(lazarus("fork", "-t", str(w.pid),
                                                           "--release", "x"))
    assert "bad image name" in error_line(lazarus("fork", "--release", "../x"))
    # A port in use: fails before the process is touched.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert "cannot listen" in error_line(lazarus(
            "fork", "-t", str(w.pid), "--image", "x", "--listen", f"127.0.0.1:{port}"))
    assert children(w.pid) == [] and tracer_pid(w.pid) == 0
    n = len(src.numbers())
    contiguous(src.wait_numbers(n + 5), 0)


def test_fork_nobody_takes_gives_up_and_kills_the_twin(procs: Procs, tmp_path: Path) -> None:
    w, src = start_forkmem(procs, tmp_path, 8)
    src.wait_numbers(3)
    fork, _ = start_fork(procs, w.pid, "orphan", "--serve-timeout", "1")
    assert len(children(w.pid)) == 1
    err = fork.communicate(timeout=FORK_TIMEOUT)[1].decode()
    assert fork.returncode == 1
    assert err.strip().splitlines()[-1].startswith("lazarus: error: no client took the fork")
    assert children(w.pid) == [], "the twin is killed and reaped"
    n = len(src.numbers())
    contiguous(src.wait_numbers(n + 5), 0)


def test_fork_interrupted_kills_the_twin(procs: Procs, tmp_path: Path) -> None:
    w, src = start_forkmem(procs, tmp_path, 8)
    src.wait_numbers(3)
    fork, port = start_fork(procs, w.pid, "stopped")
    twin = children(w.pid)[0]
    # Its pages are in no file: it cannot be downloaded, only restored lazily.
    res = lazarus("pull", "--page-server", f"127.0.0.1:{port}", "--image", "stopped",
                  "-D", str(tmp_path / "pulled"))
    assert "is a live fork" in error_line(res) and not (tmp_path / "pulled").exists()
    fork.send_signal(signal.SIGTERM)
    err = fork.communicate(timeout=FORK_TIMEOUT)[1].decode()
    assert fork.returncode == 1 and "interrupted" in err
    assert children(w.pid) == [] and proc_state(twin) is None
    time.sleep(0.1)
    contiguous(src.wait_numbers(len(src.numbers()) + 5), 0)


def test_fork_of_an_unsupported_process_fails_cleanly(procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "counter.txt"
    w = procs.python("counter", str(out), "--eventfd")
    wait_until(lambda: out.exists() and out.read_text().count("\n") >= 3, 15, "ticks")
    res = lazarus("fork", "-t", str(w.pid), "--image", "efd", "--listen", "127.0.0.1:0")
    assert "eventfd" in error_line(res) and "not supported" in error_line(res)
    assert res.stdout == "", "never said it serves"
    assert children(w.pid) == [] and tracer_pid(w.pid) == 0 and is_alive(w.pid)
    n = out.read_text().count("\n")
    wait_until(lambda: out.read_text().count("\n") >= n + 5, 15, "ticks after the refusal")


def test_fork_outlives_the_original(procs: Procs, tmp_path: Path,
                                    copy_out: tuple[int, Output]) -> None:
    """The original exits after the fork: its twin (adopted by a reaper) still
    serves the copy, and is killed in the end."""
    w, src = start_forkmem(procs, tmp_path, 16)
    src.wait_numbers(10)
    fork, port = start_fork(procs, w.pid, "gone")
    twin = children(w.pid)[0]
    at_fork = len(src.numbers())
    os.kill(w.pid, signal.SIGKILL)
    w.reap()
    pid = restore_copy(procs, tmp_path, port, "gone", copy_out[0], src.ino)
    finish(fork)
    wait_until(lambda: proc_state(twin) is None, 10, "the twin to be reaped by its new parent")
    copy = copy_out[1].wait_numbers(5)
    contiguous(copy)
    assert 0 < copy[0] <= at_fork + 1
    n, d = copy_out[1].digest(pid)
    assert d == expected_digest(n, 16)


def test_fork_of_a_stopped_process_leaves_it_stopped(procs: Procs, tmp_path: Path,
                                                     copy_out: tuple[int, Output]) -> None:
    w, src = start_forkmem(procs, tmp_path, 8)
    src.wait_numbers(5)
    os.kill(w.pid, signal.SIGSTOP)
    wait_until(lambda: proc_state(w.pid) == "T", 10, "the original to stop")
    fork, port = start_fork(procs, w.pid, "stopped")
    assert proc_state(w.pid) == "T"
    pid = restore_copy(procs, tmp_path, port, "stopped", copy_out[0], src.ino)
    finish(fork)
    # Stopped before the fork, stopped after it (the twin's reaping included).
    assert proc_state(w.pid) == "T" and children(w.pid) == []
    n = len(src.numbers())
    wait_until(lambda: proc_state(pid) == "T", 10, "the copy to be stopped too")
    os.kill(pid, signal.SIGCONT)
    copy = copy_out[1].wait_numbers(5)
    assert copy[0] == n, "the copy goes on from where the original stopped"
    os.kill(w.pid, signal.SIGCONT)
    contiguous(src.wait_numbers(n + 5), 0)


def test_fork_to_another_host(procs: Procs, tmp_path: Path, copy_out: tuple[int, Output],
                              two_hosts: tuple[str, str]) -> None:  # noqa: F811
    """The fork serves from one network namespace, the copy is restored in another."""
    host_a, host_b = two_hosts
    w, src = start_forkmem(procs, tmp_path, 32)
    src.wait_numbers(10)
    fork, port = start_fork(procs, w.pid, "far", host="10.77.0.1",
                            prefix=("ip", "netns", "exec", host_a))
    at_fork = len(src.numbers())
    pid = restore_copy(procs, tmp_path, port, "far", copy_out[0], src.ino, host="10.77.0.1",
                       prefix=("ip", "netns", "exec", host_b))
    finish(fork)
    assert children(w.pid) == []
    copy = copy_out[1].wait_numbers(5)
    contiguous(copy)
    assert 0 < copy[0] <= at_fork + 1
    n, d = copy_out[1].digest(pid)
    assert d == expected_digest(n, 32)


# ------------------------------------------------------------------ release, restores


def test_fork_release_ends_it_and_a_name_runs_once(procs: Procs, tmp_path: Path) -> None:
    w, src = start_forkmem(procs, tmp_path, 8)
    src.wait_numbers(3)
    fork, _ = start_fork(procs, w.pid, "rel")
    twin = children(w.pid)[0]
    # The name is taken while it runs: a second fork of it touches nothing.
    res = lazarus("fork", "-t", str(w.pid), "--name", "rel", "--page-server", "127.0.0.1:0")
    assert "already running" in error_line(res)
    assert children(w.pid) == [twin] and fork.poll() is None
    # A dump meanwhile meets the twin and says who holds it.
    res = lazarus("dump", "-t", str(w.pid), "-D", str(tmp_path / "img"), "--leave-running")
    assert "a `lazarus fork` holding its twin" in error_line(res)
    assert not (tmp_path / "img").exists() and children(w.pid) == [twin]
    assert "no running fork named nope" in error_line(lazarus("fork", "--release", "nope"))
    res = ok(lazarus("fork", "--release", "rel"))
    assert "released fork rel" in res.stdout
    err = finish(fork)       # exit 0
    assert "released" in err
    assert children(w.pid) == [] and proc_state(twin) is None
    # Its state file went with it: the name is free, and unknown again.
    assert "no running fork named rel" in error_line(lazarus("fork", "--release", "rel"))
    contiguous(src.wait_numbers(len(src.numbers()) + 5), 0)


def test_two_restores_of_one_fork(procs: Procs, tmp_path: Path) -> None:
    """--restores 2: the twin lives until two restores have each received
    every page; both copies go on from the fork point, memory intact."""
    w, src = start_forkmem(procs, tmp_path, 16)
    src.wait_numbers(10)
    fork, port = start_fork(procs, w.pid, "twice", "--restores", "2", "--stats")
    at_fork = len(src.numbers())
    pipes = [os.pipe() for _ in range(2)]
    outs = [Output(r) for r, _ in pipes]
    try:
        first = restore_copy(procs, tmp_path, port, "twice", pipes[0][1], src.ino, tag="1")
        n, d = outs[0].digest(first)       # touches every page of the heap
        assert d == expected_digest(n, 16)
        time.sleep(1.0)                    # the push ends: one restore has everything
        assert fork.poll() is None, "still serving: one restore of two"
        assert len(children(w.pid)) == 1
        second = restore_copy(procs, tmp_path, port, "twice", pipes[1][1], src.ino, tag="2")
        err = finish(fork)
        assert "to 2 complete restore(s)" in err
        assert children(w.pid) == []
        for pid, out in zip((first, second), outs, strict=True):
            copy = out.wait_numbers(5)
            contiguous(copy)
            assert 0 < copy[0] <= at_fork + 1
            n, d = out.digest(pid)
            assert d == expected_digest(n, 16)
    finally:
        for _, wr in pipes:
            os.close(wr)


def test_second_restore_started_meanwhile_is_served_to_the_end(
        procs: Procs, tmp_path: Path) -> None:
    """--restores 1 (the default) with two restores at once: the second one,
    connected before the first has all its pages, is served to its end too."""
    w, src = start_forkmem(procs, tmp_path, 16)
    src.wait_numbers(10)
    fork, port = start_fork(procs, w.pid, "both")
    pipes = [os.pipe() for _ in range(2)]
    outs = [Output(r) for r, _ in pipes]
    try:
        # The first one's background push waits 2 s: it is not done when the second starts.
        first = restore_copy(procs, tmp_path, port, "both", pipes[0][1], src.ino, tag="1",
                             extra=("--push-delay", "2"))
        second = restore_copy(procs, tmp_path, port, "both", pipes[1][1], src.ino, tag="2")
        finish(fork)
        assert children(w.pid) == []
        for pid, out in zip((first, second), outs, strict=True):
            contiguous(out.wait_numbers(5))
            n, d = out.digest(pid)
            assert d == expected_digest(n, 16)
    finally:
        for _, wr in pipes:
            os.close(wr)


# ------------------------------------------------------------------ sockets


def socket_fds(pid: int) -> list[int]:
    return sorted(fd for fd, link in fd_targets(pid).items() if link.startswith("socket:"))


def test_fork_leaves_tcp_sockets_out_of_the_copy(procs: Procs, tmp_path: Path,
                                                 copy_out: tuple[int, Output]) -> None:
    with socket.socket() as peer:
        peer.bind(("127.0.0.1", 0))
        peer.listen()
        peer.settimeout(10)
        r, wfd = os.pipe()
        w = procs.start([PYTHON, str(WORKLOADS / "netcounter.py"), str(tmp_path),
                         str(peer.getsockname()[1])], "netcounter", stdout=wfd)
        os.close(wfd)
        src = Output(r)
        conn, _ = peer.accept()
        with conn:
            conn.settimeout(10)
            src.wait_numbers(5)
            listen_port = int(next(x for x in src.lines if x.startswith("listening")).split()[1])
            fds = socket_fds(w.pid)
            assert len(fds) == 2
            # A plain dump refuses them, as before; the process is left running.
            assert "not supported" in error_line(lazarus(
                "dump", "-t", str(w.pid), "-D", str(tmp_path / "img"), "--leave-running"))
            fork, port = start_fork(procs, w.pid, "net")
            at_fork = len(src.numbers())
            pid = restore_copy(procs, tmp_path, port, "net", copy_out[0], src.ino)
            err = finish(fork)
            warning = next(x for x in err.splitlines() if "will not have these sockets" in x)
            assert f"PID {w.pid} fd {fds[0]} (tcp " in warning
            assert f"PID {w.pid} fd {fds[1]} (tcp " in warning
            assert "tcp listening" in warning and "tcp connected" in warning
            # The copy has no socket, notices, and counts on from the fork.
            assert socket_fds(pid) == []
            copy = copy_out[1]
            wait_until(lambda: "sockets gone" in copy.lines, 15, "the copy to see no sockets")
            numbers = copy.wait_numbers(10)
            contiguous(numbers)
            assert 0 < numbers[0] <= at_fork + 1
            # The original still has both, working.
            assert socket_fds(w.pid) == fds and "sockets gone" not in src.lines
            with socket.create_connection(("127.0.0.1", listen_port), timeout=10) as c:
                assert c.makefile().readline().startswith("hello ")
            conn.sendall(b"ping\n")
            assert conn.makefile().readline().startswith("pong ")
            contiguous(src.wait_numbers(len(src.numbers()) + 5), 0)


# ------------------------------------------------------------------ big, failures


def test_fork_of_256_mib_while_the_original_rewrites_it(
        procs: Procs, tmp_path: Path, copy_out: tuple[int, Output]) -> None:
    """The original overwrites its whole heap right after the fork: the copy
    still gets the memory as it was at the fork (held by the twin)."""
    w, src = start_forkmem(procs, tmp_path, 256)
    src.wait_numbers(5, timeout=60)
    fork, port = start_fork(procs, w.pid, "big")
    at_fork = len(src.numbers())
    os.kill(w.pid, signal.SIGUSR2)
    wait_until(lambda: "scribbled" in src.lines, 30, "the original to rewrite its heap")
    pid = restore_copy(procs, tmp_path, port, "big", copy_out[0], src.ino)
    finish(fork)
    assert children(w.pid) == []
    copy = copy_out[1].wait_numbers(5)
    contiguous(copy)
    assert 0 < copy[0] <= at_fork + 1
    n, d = copy_out[1].digest(pid, timeout=60)
    assert d == expected_digest(n, 256)
    assert is_alive(w.pid)


def test_fork_command_killed_mid_restore(procs: Procs, tmp_path: Path,
                                         copy_out: tuple[int, Output]) -> None:
    """The source host's page server (the fork command) dies while the copy
    still lacks pages: the copy is killed within --lazy-timeout, the restore
    says why, the original runs on and no twin is left."""
    w, src = start_forkmem(procs, tmp_path, 64)
    src.wait_numbers(10)
    fork, port = start_fork(procs, w.pid, "lost")
    twin = children(w.pid)[0]
    pidfile = tmp_path / "lost.pid"
    # No -d: the command serves pages itself, so it can say why it gave up.
    restore = subprocess.Popen(
        [LAZARUS, "restore", "--lazy", "--page-server", f"127.0.0.1:{port}", "--image", "lost",
         "--pidns", "--pidfile", str(pidfile), "--inherit-fd",
         f"fd[{copy_out[0]}]:pipe:[{src.ino}]", "--lazy-timeout", "2", "--push-delay", "60"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        pass_fds=(copy_out[0],))
    procs.track(restore)
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip().isdigit(), 30,
               "the copy to run")
    pid = int(pidfile.read_text())
    procs.adopt(pid)
    procs.adopt(parent_of(pid), Path(PYTHON))
    copy_out[1].wait_numbers(3)
    fork.kill()
    t0 = time.monotonic()
    fork.wait(timeout=10)
    os.kill(pid, signal.SIGUSR1)        # hash all memory: faults nobody can answer
    _, err = restore.communicate(timeout=30)
    wait_until(lambda: not is_alive(pid), 10, "the copy to be killed")
    elapsed = time.monotonic() - t0
    assert elapsed < 2 + 8, f"the copy was killed {elapsed:.1f} s after the server died"
    assert restore.returncode != 0
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("lazarus: error: lost page server"), err.decode()
    assert "killed restored process" in last
    assert not any(x.startswith("sha ") for x in copy_out[1].lines), \
        "a missing page must never read as zeros"
    # The twin died with the fork command (PTRACE_O_EXITKILL): at most a zombie
    # is left, waiting for its parent (nobody can reap it from outside).
    wait_until(lambda: proc_state(twin) in (None, "Z"), 10, "the twin to die")
    assert all(proc_state(c) in (None, "Z") for c in children(w.pid))
    assert is_alive(w.pid) and tracer_pid(w.pid) == 0
    contiguous(src.wait_numbers(len(src.numbers()) + 5), 0)


@pytest.mark.parametrize("advice", ["dontfork", "wipeonfork"])
def test_fork_of_memory_a_child_does_not_inherit(procs: Procs, tmp_path: Path,
                                                 copy_out: tuple[int, Output],
                                                 advice: str) -> None:
    """A heap advised MADV_DONTFORK (absent from the twin) or MADV_WIPEONFORK
    (empty in the twin) is copied while frozen: the copy still has it."""
    w, src = start_forkmem(procs, tmp_path, 16, advice)
    src.wait_numbers(10)
    fork, port = start_fork(procs, w.pid, advice)
    at_fork = len(src.numbers())
    pid = restore_copy(procs, tmp_path, port, advice, copy_out[0], src.ino)
    finish(fork)
    copy = copy_out[1].wait_numbers(5)
    contiguous(copy)
    assert 0 < copy[0] <= at_fork + 1
    n, d = copy_out[1].digest(pid)
    assert d == expected_digest(n, 16)
