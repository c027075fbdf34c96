"""Lazy restore from a local image: the process runs at once, its private
anonymous memory is faulted in through userfaultfd and pushed in the background."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.conftest import (
    Procs,
    assert_exact,
    dump,
    is_alive,
    proc_state,
    read_counter,
    restore_detached,
    wait_lines,
    wait_until,
)

ALL_PAGES_TIMEOUT = 60.0


def parent_of(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[1])


def is_lazarus(pid: int) -> bool:
    try:
        return any(b"lazarus" in a for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
    except FileNotFoundError:
        return False


def test_lazy_counter_goes_on(procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "counter.txt"
    w = procs.python("counter", str(out))
    before = wait_lines(out, 5)
    images = tmp_path / "img"
    dump(w, images)
    at_dump = read_counter(out)
    assert at_dump[: len(before)] == before
    pid = restore_detached(images, tmp_path / "pid", "--lazy")
    procs.adopt(pid)
    assert pid == w.pid
    values = wait_lines(out, len(at_dump) + 8)
    assert_exact(values)


def test_lazy_sleeper_restarts_its_sleep(procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "counter.txt"
    w = procs.python("counter", str(out), "--interval", "0.3")
    wait_lines(out, 2)
    images = tmp_path / "img"
    dump(w, images)
    pid = restore_detached(images, tmp_path / "pid", "--lazy", "--fault-around", "1")
    procs.adopt(pid)
    assert_exact(wait_lines(out, len(read_counter(out)) + 3))


def test_lazy_bigmem_runs_early_and_gets_every_page(procs: Procs, tmp_path: Path) -> None:
    w = procs.python("bigmem", str(tmp_path))
    wait_until(lambda: (tmp_path / "before.sha").exists(), 30, "bigmem to fill its memory")
    before = (tmp_path / "before.sha").read_text()
    images = tmp_path / "img"
    dump(w, images)
    pid = restore_detached(images, tmp_path / "pid", "--lazy")
    procs.adopt(pid)
    # Running early: the command is back, the process runs, and its parent, the
    # lazarus daemon still pushing pages, is alive (it ends once every page is in).
    assert is_alive(pid)
    daemon = parent_of(pid)
    assert is_lazarus(daemon), f"parent {daemon} of the restored process is not lazarus"
    wait_until(lambda: proc_state(daemon) in (None, "Z", "X") or not is_lazarus(daemon),
               ALL_PAGES_TIMEOUT, "the lazy daemon to finish pushing every page")
    assert is_alive(pid), "the restored process died once all pages were in"
    os.kill(pid, signal.SIGUSR1)
    wait_until(lambda: (tmp_path / "after.sha").exists(), 30, "bigmem to re-hash its memory")
    assert (tmp_path / "after.sha").read_text() == before


def test_lazy_layout_changes_right_after_restore(procs: Procs, tmp_path: Path) -> None:
    w = procs.python("lazy_events", str(tmp_path))
    wait_until(lambda: (tmp_path / "ready").exists(), 30, "the workload to map its regions")
    images = tmp_path / "img"
    dump(w, images)
    # Hold back the background push, so DONTNEED, mremap and munmap meet pages
    # that are still lazy; fault-around 4 keeps most of them lazy while it reads.
    pid = restore_detached(images, tmp_path / "pid", "--lazy", "--push-delay", "3",
                           "--fault-around", "4")
    procs.adopt(pid)
    os.kill(pid, signal.SIGUSR1)
    wait_until(lambda: (tmp_path / "result").exists(), 30, "the workload's verdict")
    assert (tmp_path / "result").read_text() == "ok\n"
    assert is_alive(pid)


def test_lazy_process_forking_children_meanwhile(procs: Procs, tmp_path: Path) -> None:
    """Children forked while pages are still lazy get every page too (uffd fork events)."""
    w = procs.python("forker", str(tmp_path))
    wait_until(lambda: (tmp_path / "ready").exists(), 30, "the forker to fill its memory")
    results = tmp_path / "children.txt"
    wait_until(lambda: results.exists() and results.read_text().count("\n") >= 2, 30,
               "the first children")
    images = tmp_path / "img"
    dump(w, images)
    # The wait (and with it the fork) can catch the forker between a child's
    # exit and its reaping: let it finish its current round first.
    before = results.read_text().count("\n")
    log = tmp_path / "daemon.log"
    pid = restore_detached(images, tmp_path / "pid", "--lazy", "--push-delay", "2",
                           "--fault-around", "8", "--stats", "--log-file", str(log))
    procs.adopt(pid)
    wait_until(lambda: results.read_text().count("\n") >= before + 10, 60,
               "ten children forked after the restore to report")
    lines = results.read_text().split()
    assert set(lines) == {"ok"}, f"children saw wrong memory: {lines.count('bad')} bad"
    assert is_alive(pid)
    wait_until(lambda: log.exists() and "layout events" in log.read_text(), ALL_PAGES_TIMEOUT,
               "the lazy daemons to finish")
    events = int(log.read_text().split("layout events")[1].split()[0])
    assert events >= 1, "no fork event reached the daemon: the children were not lazy"


def daemon_stats(log: Path, timeout: float = 30.0) -> dict[str, int]:
    """Faults, pages read ahead and layout events from a detached daemon's
    --stats, once it has ended and written them to its log file."""
    wait_until(lambda: log.exists() and "time to last page" in log.read_text(), timeout,
               "the lazy daemon to end and write its --stats")
    text = log.read_text()
    return {"faults": int(text.split("  faults")[1].split()[0]),
            "read_ahead": int(text.split("pages read ahead")[1].split()[0]),
            "events": int(text.split("layout events")[1].split()[0])}


def restore_push_held(procs: Procs, images: Path, tmp_path: Path) -> tuple[int, Path]:
    """Lazy restore with the background push held back (every page comes by
    a fault or read-ahead); the PID and the daemon's --stats log."""
    log = tmp_path / "daemon.log"
    pid = restore_detached(images, tmp_path / "pid", "--lazy", "--push-delay", "3600",
                           "--stats", "--log-file", str(log))
    procs.adopt(pid)
    return pid, log


def end_process(pid: int) -> None:
    """Kill the restored process (ours, by PID): its daemon then writes --stats."""
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: proc_state(pid) in (None, "Z", "X"), 30, f"PID {pid} to die")


def test_lazy_sequential_scan_reads_ahead(procs: Procs, tmp_path: Path) -> None:
    """A process hashing 256 MiB in order, the push held back so every page
    comes through faults: the data is right, and read-ahead brings most pages
    (far fewer faults than one per 64-page fault-around window)."""
    w = procs.python("bigmem", str(tmp_path))
    wait_until(lambda: (tmp_path / "before.sha").exists(), 30, "bigmem to fill its memory")
    before = (tmp_path / "before.sha").read_text()
    images = tmp_path / "img"
    dump(w, images)
    pid, log = restore_push_held(procs, images, tmp_path)
    os.kill(pid, signal.SIGUSR1)
    wait_until(lambda: (tmp_path / "after.sha").exists(), 60, "bigmem to re-hash its memory")
    assert (tmp_path / "after.sha").read_text() == before
    end_process(pid)
    stats = daemon_stats(log)
    pages = (256 << 20) // 4096
    assert stats["read_ahead"] >= pages // 2, stats
    assert stats["faults"] < pages // 64 // 2, stats


def test_lazy_layout_changes_in_a_read_ahead_stream(procs: Procs, tmp_path: Path) -> None:
    """MADV_DONTNEED, mremap and munmap of pages that read-ahead has in flight
    (the process reads in order up to them, the push held back): removed pages
    read zeros, moved and kept ones their data."""
    w = procs.python("lazy_events", str(tmp_path), "--stream")
    wait_until(lambda: (tmp_path / "ready").exists(), 30, "the workload to map its regions")
    images = tmp_path / "img"
    dump(w, images)
    pid, log = restore_push_held(procs, images, tmp_path)
    os.kill(pid, signal.SIGUSR1)
    wait_until(lambda: (tmp_path / "result").exists(), 60, "the workload's verdict")
    assert (tmp_path / "result").read_text() == "ok\n"
    end_process(pid)
    stats = daemon_stats(log)
    assert stats["read_ahead"] > 0 and stats["events"] >= 3, stats
