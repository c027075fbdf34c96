"""Shared machinery for the end-to-end tests: real processes, real kernel.

Workloads are started with stdin/stdout to /dev/null and stderr to a file, in
their own session. Every process a test starts is recorded and killed at
teardown (and so is any process whose command line names the test's
directory), including the restored ones: those have the same PID but are no
longer our children (lazarus forked them and, with -d, went away), so they
are killed by PID and polled in /proc until gone or a zombie (PID 1 reaps
those). A PID is only ever killed if its command line still names the test's
private directory, so a PID recycled by someone else on this shared machine
is never touched.

Every wait is bounded and says what it was waiting for when it gives up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
WORKLOADS = TESTS / "workloads"
PYTHON = sys.executable
LAZARUS = str(Path(sys.executable).parent / "lazarus")

LAZARUS_TIMEOUT = 60.0   # any single lazarus command
KILL_TIMEOUT = 5.0       # a SIGKILLed process must be gone (or a zombie) by then


# ------------------------------------------------------------------ waiting


def wait_until(pred: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.01) -> None:
    """Poll ``pred`` until true; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


# ------------------------------------------------------------------ /proc


def proc_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` (R, S, Z, ...), or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2]


def is_alive(pid: int) -> bool:
    """Exists and is not a zombie."""
    return proc_state(pid) not in (None, "Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def tracer_pid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no TracerPid in /proc/{pid}/status")


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except FileNotFoundError:
            continue
    return out


def fd_targets(pid: int) -> dict[int, str]:
    out: dict[int, str] = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            continue
    return out


def kill_and_wait(pid: int, timeout: float = KILL_TIMEOUT) -> None:
    """SIGKILL ``pid`` and wait, bounded, until it is gone or a zombie."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    wait_until(lambda: proc_state(pid) in (None, "Z", "X"), timeout,
               f"PID {pid} to die after SIGKILL")


# ------------------------------------------------------------------ lazarus


def lazarus(*args: str, timeout: float = LAZARUS_TIMEOUT,
            pass_fds: Sequence[int] = ()) -> subprocess.CompletedProcess[str]:
    """Run the real `lazarus` command line, bounded; output captured as text."""
    try:
        return subprocess.run([LAZARUS, *args], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout, pass_fds=tuple(pass_fds))
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`lazarus {' '.join(args)}` did not finish within {timeout:.0f} s "
                    f"(stderr so far: {exc.stderr!r})")


def ok(res: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Assert a lazarus command succeeded, showing its stderr if not."""
    assert res.returncode == 0, (
        f"`{' '.join(map(str, res.args))}` exited {res.returncode}: {res.stderr.strip()}")
    return res


def error_line(res: subprocess.CompletedProcess[str]) -> str:
    """Assert the command failed the documented way and return its one error line."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1, (
        f"expected exit status 1, got {res.returncode}; stderr: {res.stderr!r}")
    assert len(lines) == 1, f"expected one line on stderr, got: {res.stderr!r}"
    assert lines[0].startswith("lazarus: error: "), lines[0]
    assert "Traceback" not in res.stderr
    return lines[0]


def usage_error_line(res: subprocess.CompletedProcess[str]) -> str:
    """Assert a bad option or value was refused in one line, exit status 2."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, (
        f"expected exit status 2, got {res.returncode}; stderr: {res.stderr!r}")
    assert len(lines) == 1 and lines[0].startswith("lazarus "), res.stderr
    assert ": error: " in lines[0]
    return lines[0]


def show_json(images: Path) -> dict[str, object]:
    data = json.loads(ok(lazarus("show", str(images), "--json")).stdout)
    assert isinstance(data, dict)
    return data


def image_fds(desc: dict[str, object]) -> list[dict[str, object]]:
    """The fds of the (single) process of an image, from its `lazarus show --json`."""
    procs = desc["processes"]
    assert isinstance(procs, list) and len(procs) == 1
    fds = procs[0]["fds"]
    assert isinstance(fds, list)
    return fds


def fd_pos(desc: dict[str, object], path: Path) -> int:
    """The file offset the image (its `lazarus show --json`) recorded for the fd on ``path``."""
    for f in image_fds(desc):
        if f["path"] == str(path):
            pos = f["pos"]
            assert isinstance(pos, int)
            return pos
    raise AssertionError(f"the image has no fd open on {path}")


def leftovers(images: Path) -> list[str]:
    """Temporary siblings (DIR.tmp-*) a dump into ``images`` could leave behind."""
    return sorted(p.name for p in images.parent.glob(f"{images.name}.tmp*"))


# ------------------------------------------------------------------ counters


def read_counter(path: Path) -> list[int]:
    """The values of a counter file; a last line still being written is ignored."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    return [int(x) for x in lines[:-1]]   # after the last "\n": incomplete or empty


def assert_exact(values: Sequence[int], start: int = 0) -> None:
    """values == start, start+1, ...: no gap, no repeat, with a readable message."""
    for i, v in enumerate(values):
        if v != start + i:
            window = list(values[max(0, i - 3) : i + 4])
            raise AssertionError(
                f"counter broken at line {i}: expected {start + i}, got {v} (around: {window})")


def wait_lines(path: Path, n: int, timeout: float = 10.0) -> list[int]:
    """Wait until the counter file holds at least ``n`` values."""
    wait_until(lambda: len(read_counter(path)) >= n, timeout, f"{n} lines in {path.name}")
    return read_counter(path)


# ------------------------------------------------------------------ processes


@dataclass
class Workload:
    pid: int
    argv: list[str]
    popen: subprocess.Popen[bytes] | None
    stderr_path: Path

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def reap(self, timeout: float = KILL_TIMEOUT) -> int:
        """Wait (bounded) for our child to die and reap it, so its PID is free again.

        A dump without --leave-running kills the target; its zombie holds the
        PID until the parent (this test process) waits for it.
        """
        assert self.popen is not None
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"workload PID {self.pid} still alive {timeout:.0f} s after the dump "
                        "should have killed it")


@dataclass
class Procs:
    """Starts workloads and makes sure every process a test made is gone at teardown."""

    workdir: Path
    workloads: list[Workload] = field(default_factory=list)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)
    extra_pids: set[int] = field(default_factory=set)
    marks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.marks.append(str(self.workdir))

    def start(self, argv: Sequence[str], name: str = "workload",
              stdout: int = subprocess.DEVNULL) -> Workload:
        """Start ``argv`` in ``workdir`` in its own session.

        stdin is /dev/null, stdout /dev/null (or the fd given), stderr NAME.stderr.
        """
        stderr_path = self.workdir / f"{name}.stderr"
        with open(stderr_path, "ab") as err:
            popen = subprocess.Popen(list(argv), cwd=self.workdir, stdin=subprocess.DEVNULL,
                                     stdout=stdout, stderr=err, start_new_session=True)
        w = Workload(popen.pid, list(argv), popen, stderr_path)
        self.workloads.append(w)
        return w

    def python(self, script: str, *args: str, name: str | None = None) -> Workload:
        """Run tests/workloads/SCRIPT.py with this interpreter."""
        return self.start([PYTHON, str(WORKLOADS / f"{script}.py"), *args], name or script)

    def track(self, popen: subprocess.Popen[bytes]) -> None:
        """Kill this process (e.g. a `lazarus restore` without -d) at teardown."""
        self.others.append(popen)

    def adopt(self, pid: int, mark: Path | None = None) -> None:
        """Kill this PID at teardown, if its command line names our directory (or ``mark``)."""
        self.extra_pids.add(pid)
        if mark is not None:
            self.marks.append(str(mark))

    def is_ours(self, pid: int) -> bool:
        return any(m in a for a in cmdline(pid) for m in self.marks)

    def cleanup(self) -> list[str]:
        problems: list[str] = []
        for p in self.others:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(KILL_TIMEOUT)
            except subprocess.TimeoutExpired:
                problems.append(f"PID {p.pid} ({p.args!r}) survived SIGKILL")
        pids = [w.pid for w in self.workloads] + sorted(self.extra_pids)
        for w in self.workloads:
            # Our own child (never dumped, or dumped with --leave-running).
            if w.popen is not None and w.popen.returncode is None:
                w.popen.kill()
                try:
                    w.popen.wait(KILL_TIMEOUT)
                except subprocess.TimeoutExpired:
                    problems.append(f"workload PID {w.pid} survived SIGKILL")
        # Anything else naming our directory: helpers, children, lazarus itself.
        pids += [int(d) for d in os.listdir("/proc") if d.isdigit() and int(d) != os.getpid()
                 and int(d) not in pids and self.is_ours(int(d))]
        for pid in pids:
            # Restored processes and their children: not ours to wait for.
            for kid in children(pid):
                if self.is_ours(kid) and kid not in pids:
                    pids.append(kid)
            if proc_state(pid) in (None, "Z", "X") or not self.is_ours(pid):
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + KILL_TIMEOUT
            while proc_state(pid) not in (None, "Z", "X"):
                if time.monotonic() > deadline:
                    problems.append(f"PID {pid} survived SIGKILL for {KILL_TIMEOUT:.0f} s")
                    break
                time.sleep(0.01)
        return problems


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    manager = Procs(tmp_path)
    try:
        yield manager
    finally:
        problems = manager.cleanup()
        if problems:
            pytest.fail("teardown: " + "; ".join(problems))


# ------------------------------------------------------------------ dump / restore


def dump(w: Workload, images: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`lazarus dump -t PID -D DIR`; unless --leave-running, reap the killed target."""
    res = ok(lazarus("dump", "-t", str(w.pid), "-D", str(images), *extra))
    if "--leave-running" not in extra:
        if w.popen is not None and w.popen.returncode is None:
            w.reap()
        else:
            wait_until(lambda: proc_state(w.pid) in (None, "Z", "X"), KILL_TIMEOUT,
                       f"dumped PID {w.pid} to be killed")
    return res


def restore_detached(images: Path, pidfile: Path, *extra: str,
                     pass_fds: Sequence[int] = ()) -> int:
    """`lazarus restore -d --pidfile`; returns the PID from the pidfile."""
    ok(lazarus("restore", "-D", str(images), "-d", "--pidfile", str(pidfile), *extra,
               pass_fds=pass_fds))
    text = pidfile.read_text()
    assert text.strip().isdigit(), f"pidfile holds {text!r}"
    return int(text)
