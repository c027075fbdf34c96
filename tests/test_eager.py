"""Eager dump and restore of real programs, end to end through the `lazarus` CLI.

Each test starts a real program, checkpoints it with `lazarus dump`, brings it
back with `lazarus restore` and checks, from the outside, that it goes on from
exactly where it was: same PID, same memory, same open files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import (
    LAZARUS,
    PYTHON,
    TESTS,
    WORKLOADS,
    Procs,
    Workload,
    assert_exact,
    children,
    cmdline,
    dump,
    fd_pos,
    fd_targets,
    image_fds,
    is_alive,
    lazarus,
    leftovers,
    proc_state,
    read_counter,
    restore_detached,
    show_json,
    tracer_pid,
    wait_lines,
    wait_until,
)

RUN_AFTER_RESTORE = 0.5   # seconds a restored counter runs before we look

# Lines of /proc/PID/status that restore must put back as they were.
STATUS_KEYS = ("Umask", "SigBlk", "SigIgn", "SigCgt", "Uid", "Gid", "Groups", "CapEff",
               "CapBnd", "NoNewPrivs", "Seccomp")


def identity(pid: int) -> dict[str, object]:
    """What a process is, beyond its memory, as /proc shows it."""
    proc = Path(f"/proc/{pid}")
    status = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines())
    return {
        "comm": (proc / "comm").read_text(),
        "cmdline": cmdline(pid),
        "environ": (proc / "environ").read_bytes(),
        "exe": os.readlink(proc / "exe"),
        "cwd": os.readlink(proc / "cwd"),
        "limits": (proc / "limits").read_text(),
        "auxv": (proc / "auxv").read_bytes(),
        "fds": fd_targets(pid),
        **{key: status[key].strip() for key in STATUS_KEYS},
    }


def assert_restored(pid: int, expected_pid: int, out: Path | None) -> None:
    """The restored process has the dumped PID, runs, and is the one writing ``out``."""
    assert pid == expected_pid, f"restored as PID {pid}, the image had PID {expected_pid}"
    assert is_alive(pid), f"restored PID {pid} is {proc_state(pid)}"
    if out is not None:
        assert str(out) in fd_targets(pid).values(), (
            f"PID {pid} has no fd on {out}: {fd_targets(pid)}")


# ------------------------------------------------------------------ counters


@pytest.mark.parametrize("compress, append", [("lz4", True), ("none", True), ("lz4", False)],
                         ids=["lz4", "none", "lz4-no-append"])
def test_python_counter_goes_on(procs: Procs, tmp_path: Path, compress: str,
                                append: bool) -> None:
    """Dump (which kills), restore -d: same PID, the counter goes on with no gap, no repeat.

    Without O_APPEND the restored file offset alone decides where writes land.
    """
    out = tmp_path / "counter.txt"
    images = tmp_path / "img"
    w = procs.python("counter", str(out), *([] if append else ["--no-append"]))
    wait_lines(out, 5)

    dump(w, images, "--compress", compress)
    assert not is_alive(w.pid), "dump without --leave-running must kill the target"
    at_dump = read_counter(out)
    assert_exact(at_dump)
    desc = show_json(images)
    # The image recorded the file offset, and nothing was written after it.
    assert fd_pos(desc, out) == out.stat().st_size
    assert desc["compression"] == compress
    assert desc["root_pid"] == w.pid
    assert leftovers(images) == []
    if compress == "none":
        proc = desc["processes"]
        assert isinstance(proc, list)
        assert proc[0]["bytes_in_file"] == proc[0]["bytes_raw"]

    pid = restore_detached(images, tmp_path / "pid")
    assert_restored(pid, w.pid, out)
    time.sleep(RUN_AFTER_RESTORE)
    wait_lines(out, len(at_dump) + 5)   # ~10 by now; bounded in case the machine is slow
    assert_exact(read_counter(out))
    assert is_alive(pid)


def test_bash_builtin_loop_goes_on(procs: Procs, tmp_path: Path) -> None:
    """A bash `while` loop of builtins; its delay pipe comes back via --inherit-fd."""
    out = tmp_path / "counter.txt"
    images = tmp_path / "img"
    w = procs.python("bash_counter", str(out))
    wait_lines(out, 5)
    assert Path(f"/proc/{w.pid}/exe").resolve().name == "bash"
    # The process substitution child must be gone: process trees are not supported.
    wait_until(lambda: children(w.pid) == [], 5.0, "bash's <(:) child to exit")
    pipe_ino = os.stat(f"/proc/{w.pid}/fd/3").st_ino
    assert os.readlink(f"/proc/{w.pid}/fd/3") == f"pipe:[{pipe_ino}]"

    dump(w, images)
    at_dump = read_counter(out)
    assert_exact(at_dump)
    key = f"pipe:[{pipe_ino}]"
    fd3 = [f for f in image_fds(show_json(images)) if f["fd"] == 3]
    assert fd3 and fd3[0]["kind"] == "PIPE" and fd3[0]["path"] == key, fd3

    # A pipe whose write end we keep open: read -t on it times out as before.
    r, wr = os.pipe()
    try:
        res = lazarus("restore", "-D", str(images), "-d", "--pidfile", str(tmp_path / "pid"),
                      "--inherit-fd", f"fd[{r}]:{key}", pass_fds=(r,))
        assert res.returncode == 0, res.stderr
        assert key not in res.stderr, f"warned about an inherited fd: {res.stderr!r}"
        pid = int((tmp_path / "pid").read_text())
        # bash opens the counter file only for each echo: check its command line instead.
        assert_restored(pid, w.pid, None)
        assert str(out) in cmdline(pid), cmdline(pid)
        assert os.stat(f"/proc/{pid}/fd/3").st_ino == os.fstat(r).st_ino, (
            "fd 3 of the restored bash is not the pipe given with --inherit-fd")
        t0 = time.monotonic()
        time.sleep(RUN_AFTER_RESTORE)
        values = wait_lines(out, len(at_dump) + 5)
        rate = (len(values) - len(at_dump)) / (time.monotonic() - t0)
        assert_exact(values)
        # ~20/s with the 50 ms delay; on /dev/null `read -t` returns at once and spins.
        assert rate < 60, f"{rate:.0f} values/s after restore: the delay pipe is not working"
        assert is_alive(pid)
    finally:
        os.close(r)
        os.close(wr)


def test_dump_restore_twice_in_a_row(procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "counter.txt"
    w = procs.python("counter", str(out))
    wait_lines(out, 5)
    for cycle in (1, 2):
        images = tmp_path / f"img{cycle}"
        dump(w, images)
        before = read_counter(out)
        assert_exact(before)
        assert fd_pos(show_json(images), out) == out.stat().st_size
        pid = restore_detached(images, tmp_path / f"pid{cycle}")
        assert_restored(pid, w.pid, out)
        wait_lines(out, len(before) + 5)
    time.sleep(RUN_AFTER_RESTORE)
    assert_exact(read_counter(out))
    assert is_alive(w.pid)


def test_leave_running(procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "counter.txt"
    images = tmp_path / "img"
    w = procs.python("counter", str(out))
    wait_lines(out, 5)

    dump(w, images, "--leave-running")
    # The original runs on unharmed: not stopped, not traced, counting exactly.
    assert is_alive(w.pid) and proc_state(w.pid) != "T"
    assert tracer_pid(w.pid) == 0
    desc = show_json(images)
    assert desc["leave_running"] is True
    pos = fd_pos(desc, out)
    wait_lines(out, len(read_counter(out)) + 8)
    original = read_counter(out)
    assert_exact(original)

    assert w.popen is not None
    w.popen.kill()
    w.reap()
    original = read_counter(out)
    assert_exact(original)
    # What had been written at dump time: the image's file offset (O_APPEND,
    # so it is the file size at that instant) cuts the file there.
    dumped = [int(x) for x in out.read_bytes()[:pos].decode().split()]
    assert_exact(dumped)
    assert 5 <= len(dumped) < len(original)

    # The restored process has the dump-time memory: its next value is the one
    # after the last it had written then, appended (O_APPEND) after everything
    # the original wrote since. So the file reads 0..M (original), then
    # k, k+1, ... (restored) with k = len(dumped): a repeat of the values the
    # original wrote after the dump is expected, any other shape is a bug.
    pid = restore_detached(images, tmp_path / "pid")
    assert_restored(pid, w.pid, out)
    wait_lines(out, len(original) + 5)
    values = read_counter(out)
    assert values[: len(original)] == original
    assert_exact(values[len(original) :], start=len(dumped))


@pytest.mark.parametrize("how, expected", [("exit", 7), ("SIGKILL", 128 + 9)])
def test_restore_without_detach_exits_with_program_status(procs: Procs, tmp_path: Path,
                                                          how: str, expected: int) -> None:
    """Without -d, lazarus waits and exits as the program did (exit 7, or 128+signal)."""
    out = tmp_path / "counter.txt"
    flag = tmp_path / "exit-now"
    images = tmp_path / "img"
    w = procs.python("counter", str(out), "--exit-flag", str(flag), "--exit-code", "7")
    wait_lines(out, 5)
    dump(w, images)
    at_dump = len(read_counter(out))

    with open(tmp_path / "restore.out", "wb") as so, open(tmp_path / "restore.err", "wb") as se:
        restorer = subprocess.Popen([LAZARUS, "restore", "-D", str(images)],
                                    stdin=subprocess.DEVNULL, stdout=so, stderr=se)
    procs.track(restorer)
    wait_lines(out, at_dump + 5)
    assert restorer.poll() is None, "restore without -d returned while the program runs"
    assert is_alive(w.pid)
    if how == "exit":
        flag.touch()
    else:
        os.kill(w.pid, signal.SIGKILL)
    try:
        status = restorer.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail("`lazarus restore` (no -d) did not exit within 10 s of its program ending")
    err = (tmp_path / "restore.err").read_text()
    assert status == expected, f"lazarus restore exited {status}, expected {expected}: {err!r}"
    assert_exact(read_counter(out))
    wait_until(lambda: proc_state(w.pid) is None, 5.0, "the exited program to be reaped")


def test_process_attributes_survive(procs: Procs, tmp_path: Path) -> None:
    """comm, umask, rlimits, signal dispositions and mask, creds, cwd, fds come back."""
    out = tmp_path / "counter.txt"
    images = tmp_path / "img"
    w = procs.python("counter", str(out), "--quirks")
    wait_lines(out, 3)
    before = identity(w.pid)
    assert before["comm"] == "lz-quirky\n" and before["Umask"] == "0027"
    dump(w, images)
    pid = restore_detached(images, tmp_path / "pid")
    assert pid == w.pid
    after = identity(pid)
    diff = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert diff == {}, f"changed across dump and restore: {diff}"
    wait_lines(out, len(read_counter(out)) + 3)
    assert_exact(read_counter(out))


def test_session_and_process_group_survive(procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "counter.txt"
    images = tmp_path / "img"
    w = procs.python("counter", str(out))   # started with setsid: its own session and group
    wait_lines(out, 3)
    before = (os.getsid(w.pid), os.getpgid(w.pid))
    assert before == (w.pid, w.pid)
    dump(w, images)
    pid = restore_detached(images, tmp_path / "pid")
    assert (os.getsid(pid), os.getpgid(pid)) == before


def test_outside_pipe_reattached_to_dev_null(procs: Procs, tmp_path: Path) -> None:
    """A pipe from outside the image and no --inherit-fd: /dev/null, with a warning."""
    out = tmp_path / "counter.txt"
    images = tmp_path / "img"
    r, wr = os.pipe()
    try:
        w = procs.start([PYTHON, str(WORKLOADS / "counter.py"), str(out)], "counter",
                        stdout=wr)
    finally:
        os.close(wr)
    try:
        wait_lines(out, 3)
        key = os.readlink(f"/proc/{w.pid}/fd/1")
        assert key.startswith("pipe:[")
        dump(w, images)
        res = lazarus("restore", "-D", str(images), "-d")
        assert res.returncode == 0, res.stderr
        warnings = res.stderr.strip().splitlines()
        assert len(warnings) == 1 and "/dev/null" in warnings[0] and key in warnings[0], (
            res.stderr)
        assert os.readlink(f"/proc/{w.pid}/fd/1") == "/dev/null"
        wait_lines(out, len(read_counter(out)) + 3)
        assert_exact(read_counter(out))
    finally:
        os.close(r)


def stopped_counter(procs: Procs, tmp_path: Path) -> tuple[Workload, Path, list[int]]:
    out = tmp_path / "counter.txt"
    w = procs.python("counter", str(out))
    wait_lines(out, 5)
    os.kill(w.pid, signal.SIGSTOP)
    wait_until(lambda: proc_state(w.pid) == "T", 5.0, "the counter to stop")
    return w, out, read_counter(out)


def test_stopped_process_left_stopped_by_dump(procs: Procs, tmp_path: Path) -> None:
    """A job-control-stopped process is still stopped, and untraced, after --leave-running."""
    w, out, stopped_at = stopped_counter(procs, tmp_path)
    dump(w, tmp_path / "img", "--leave-running")
    assert proc_state(w.pid) == "T", "the original must still be stopped after the dump"
    assert tracer_pid(w.pid) == 0
    time.sleep(0.2)
    assert read_counter(out) == stopped_at
    os.kill(w.pid, signal.SIGCONT)
    wait_lines(out, len(stopped_at) + 5)
    assert_exact(read_counter(out))


def test_stopped_process_restored_stopped(procs: Procs, tmp_path: Path) -> None:
    """Restored, a stopped process is stopped before it runs a single instruction, and
    counts on exactly from where it was on SIGCONT.

    Its time.sleep(0.05) deadline has passed by the time of the restore, so any
    instruction it runs before the stop writes the next value at once.
    """
    w, out, stopped_at = stopped_counter(procs, tmp_path)
    images = tmp_path / "img"
    dump(w, images)
    pid = restore_detached(images, tmp_path / "pid")
    assert pid == w.pid
    wait_until(lambda: proc_state(pid) == "T", 5.0, "the restored process to be stopped")
    time.sleep(0.2)
    assert read_counter(out) == stopped_at, "the restored process ran while stopped"
    os.kill(pid, signal.SIGCONT)
    wait_lines(out, len(stopped_at) + 5)
    assert_exact(read_counter(out))


# ------------------------------------------------------------------ signals


def test_pending_signal_survives(procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "signals.txt"
    images = tmp_path / "img"
    w = procs.python("signals", str(out), "pending")
    wait_until(lambda: out.exists() and out.read_text() == "ready\n", 10.0, "signals ready")
    os.kill(w.pid, signal.SIGUSR1)   # blocked: stays pending
    wait_until(lambda: "ShdPnd:\t0000000000000200" in Path(f"/proc/{w.pid}/status").read_text(),
               5.0, "SIGUSR1 to be pending")
    dump(w, images)
    pid = restore_detached(images, tmp_path / "pid")
    assert pid == w.pid
    Path(f"{out}.go").touch()
    wait_until(lambda: "unblocked" in out.read_text(), 5.0, "the signal to be unblocked")
    time.sleep(0.1)
    assert out.read_text() == "ready\nusr1\nunblocked\n"


def test_interval_timer_survives(procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "signals.txt"
    images = tmp_path / "img"
    w = procs.python("signals", str(out), "itimer", "1.5")
    wait_until(lambda: out.exists() and out.read_text() == "ready\n", 10.0, "signals ready")
    armed = time.monotonic()
    dump(w, images)
    if out.read_text() != "ready\n":
        pytest.skip("this machine is too slow: the timer fired before the dump")
    pid = restore_detached(images, tmp_path / "pid")
    assert pid == w.pid
    # Due 1.5 s after "ready": wait for it until a second after that.
    deadline = armed + 2.5
    while "alarm" not in out.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert out.read_text() == "ready\nalarm\n", "SIGALRM never came after restore"


# ------------------------------------------------------------------ sleeping


def test_long_sleep_is_restarted(procs: Procs, tmp_path: Path) -> None:
    """Dumped in the middle of time.sleep(3): after restore it still ends 3 s after it began.

    The workload stamps CLOCK_MONOTONIC, which this test shares, before and
    after the sleep. Cut short, the sleep would end at the restore (~1.5 s in);
    restarted from scratch, 3 s after the restore (~4.5 s in).
    """
    out = tmp_path / "sleep.txt"
    images = tmp_path / "img"
    w = procs.python("sleeper", str(out), "3")
    wait_until(lambda: out.exists() and out.read_text().startswith("start "), 10.0,
               "the sleeper to start")
    # Really inside clock_nanosleep (230) before the dump.
    wait_until(lambda: Path(f"/proc/{w.pid}/syscall").read_text().split()[0] == "230", 5.0,
               "the sleeper to be in clock_nanosleep")
    time.sleep(0.8)
    dump(w, images)
    time.sleep(0.5)
    pid = restore_detached(images, tmp_path / "pid")
    restored_at = time.monotonic()
    assert pid == w.pid
    wait_until(lambda: "done" in out.read_text(), 8.0, "the sleeper to finish")
    assert out.read_text().endswith("tick 4\ndone\n")

    lines = out.read_text().split()
    fields = dict(zip(lines[0::2], lines[1::2], strict=False))
    start, end = float(fields["start"]), float(fields["end"])
    due = start + 3.0
    assert end >= due, f"time.sleep(3) was cut short: it took {end - start:.3f} s"
    # On time; or, if this machine was so slow that the restore came after the
    # sleep was due, right after the restore. Never a whole new 3 s.
    assert end <= max(due, restored_at) + 1.0, (
        f"time.sleep(3) took {end - start:.3f} s, restored {restored_at - start:.3f} s in: "
        "restarted from scratch?")


# ------------------------------------------------------------------ robustness


def test_restore_helper_survives_gil_contention(procs: Procs, tmp_path: Path) -> None:
    """The helper child that becomes the restored process must reach execve whatever
    the other threads of lazarus are doing (see tests/workloads/clone_race.py).

    Regression: the clone3 child used to run Python code before execve and could
    block forever on the GIL hand-off (restores failing under load after 5 s).
    """
    try:
        res = subprocess.run([PYTHON, str(WORKLOADS / "clone_race.py"), "30", str(tmp_path)],
                             cwd=TESTS.parent, stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("clone_race.py did not finish within 60 s")
    assert res.returncode == 0, f"{res.stdout.strip()} {res.stderr.strip()}"


# ------------------------------------------------------------------ memory


def test_big_memory_checksum_unchanged(procs: Procs, tmp_path: Path) -> None:
    """256 MiB of random heap plus a 32 MiB anonymous mmap come back byte for byte."""
    images = tmp_path / "img"
    before = tmp_path / "before.sha"
    after = tmp_path / "after.sha"
    w = procs.python("bigmem", str(tmp_path))
    wait_until(before.exists, 60.0, "bigmem to fill its memory")
    wait_until(lambda: proc_state(w.pid) == "S", 5.0, "bigmem to idle")

    dump(w, images)
    desc = show_json(images)
    proc = desc["processes"]
    assert isinstance(proc, list)
    stored = proc[0]["bytes_raw"]
    assert isinstance(stored, int)
    # The random heap and the non-zero 7/8 of the mmap at least.
    assert stored >= (256 << 20) + (28 << 20), f"only {stored} bytes of pages stored"

    pid = restore_detached(images, tmp_path / "pid")
    assert pid == w.pid and is_alive(pid)
    os.kill(pid, signal.SIGUSR1)
    wait_until(after.exists, 30.0, f"the restored bigmem to rehash (stderr: {w.stderr()!r})")
    assert after.read_text() == before.read_text(), "memory changed across dump and restore"
    assert is_alive(pid)
    assert str(tmp_path) in " ".join(cmdline(pid))
