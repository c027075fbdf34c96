"""Pre-dump rounds, `dump --prev` and restore of image chains (eager and lazy)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from core.images import PAGE_SIZE, ImageReader
from core.images.chain import ChainReader, flatten_own_chain
from tests.conftest import (
    LAZARUS,
    Procs,
    assert_exact,
    dump,
    error_line,
    fd_targets,
    image_fds,
    is_alive,
    lazarus,
    leftovers,
    ok,
    read_counter,
    restore_detached,
    show_json,
    wait_lines,
    wait_until,
)

UFFD = "anon_inode:[userfaultfd]"


def uffd_fds(pid: int) -> list[int]:
    return [fd for fd, link in fd_targets(pid).items() if link == UFFD]


def predump(pid: int, images: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return ok(lazarus("pre-dump", "-t", str(pid), "-D", str(images), *extra))


def report_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def toggle_twice(pid: int) -> None:
    os.kill(pid, signal.SIGUSR1)
    # Merely spacing the signals, not a timing assertion.
    time.sleep(0.5)
    os.kill(pid, signal.SIGUSR1)


def test_predump_chain_eager_restore_counter(procs: Procs, tmp_path: Path) -> None:
    log = tmp_path / "count.log"
    w = procs.python("counter", str(log), "--interval", "0.02")
    wait_lines(log, 5)
    p1, p2, final = tmp_path / "p1", tmp_path / "p2", tmp_path / "final"
    res = predump(w.pid, p1)
    assert "frozen for" in res.stderr
    # Tracking stays armed in the running process between rounds.
    assert len(uffd_fds(w.pid)) == 1
    n = len(read_counter(log))
    wait_lines(log, n + 5)
    predump(w.pid, p2, "--prev", str(p1))
    assert len(uffd_fds(w.pid)) == 1
    n = len(read_counter(log))
    wait_lines(log, n + 5)
    dump(w, final, "--prev", str(p2))

    desc = show_json(final)
    chain = desc["chain"]
    assert isinstance(chain, list) and len(chain) == 3
    assert [c["predump"] for c in chain] == [False, True, True]
    assert desc["parent"] == "../p2"
    assert not any(f["path"] == UFFD for f in image_fds(desc))
    procs_desc = desc["processes"]
    assert isinstance(procs_desc, list)
    # The final image stores only what changed since p2; the rest is inherited.
    assert procs_desc[0]["pages_inherited"] > procs_desc[0]["pages_stored"]

    # Flattened (as migrate does before an upload): the same pages, one image.
    flat = tmp_path / "flat"
    flatten_own_chain(final, flat)
    chain, single = ChainReader(final), ImageReader(flat)
    assert not single.inventory().parent
    for proc in chain.processes():
        with chain.page_reader(proc) as a, single.page_reader(single.process(proc.pid)) as b:
            b.verify()
            for vaddr, data in a.iter_blocks():
                assert b.read_range(vaddr, len(data) // PAGE_SIZE) == data, hex(vaddr)

    before = read_counter(log)
    pid = restore_detached(final, tmp_path / "pid")
    procs.adopt(pid)
    assert pid == w.pid
    after = wait_lines(log, len(before) + 10)
    assert_exact(after)
    assert uffd_fds(pid) == [], "restore must not recreate the tracking userfaultfd"


def test_chain_lazy_local_restore(procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "report"
    w = procs.python("rewriter", str(out), "--total", "24", "--hot", "8")
    wait_until(lambda: report_lines(out) == ["ready"], 30, "the rewriter to fill its buffer")
    p1, final = tmp_path / "p1", tmp_path / "final"
    predump(w.pid, p1)
    os.kill(w.pid, signal.SIGUSR1)    # stop rewriting, check and report
    wait_until(lambda: len(report_lines(out)) == 2, 30, "the rewriter's first report")
    reported = report_lines(out)[1]
    assert reported.startswith("ok "), reported
    dump(w, final, "--prev", str(p1))
    pid = restore_detached(final, tmp_path / "pid", "--lazy", "--log-file",
                           str(tmp_path / "lazy.log"))
    procs.adopt(pid)
    assert pid == w.pid
    # Two toggles: rewrite a while, then stop and check everything again
    # (spaced: a second SIGUSR1 still pending would merge with the first).
    toggle_twice(pid)
    wait_until(lambda: len(report_lines(out)) == 3, 60, "the restored rewriter's report")
    line = report_lines(out)[2]
    assert line.startswith("ok "), line


def test_prev_of_another_process_is_refused(procs: Procs, tmp_path: Path) -> None:
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = procs.python("counter", str(log_a), "--interval", "0.02", name="a")
    b = procs.python("counter", str(log_b), "--interval", "0.02", name="b")
    wait_lines(log_a, 3)
    wait_lines(log_b, 3)
    pa = tmp_path / "pa"
    predump(a.pid, pa)
    images = tmp_path / "img"
    for cmd in ("dump", "pre-dump"):
        line = error_line(lazarus(cmd, "-t", str(b.pid), "-D", str(images), "--prev", str(pa)))
        assert f"image of PID {a.pid}" in line
        assert not images.exists() and leftovers(images) == []
    # b was never touched; both run on.
    assert uffd_fds(b.pid) == []
    n = len(read_counter(log_b))
    assert_exact(wait_lines(log_b, n + 3))
    # Only a pre-dump can be a parent.
    full = tmp_path / "full"
    dump(b, full, "--leave-running")
    line = error_line(lazarus("dump", "-t", str(b.pid), "-D", str(images), "--prev", str(full)))
    assert "is not a pre-dump" in line
    # A pre-dump alone does not restore, and a chain with its parent gone neither.
    line = error_line(lazarus("restore", "-D", str(pa), "-d"))
    assert "pre-dump" in line
    final = tmp_path / "final"
    dump(a, final, "--prev", str(pa))
    pa.rename(tmp_path / "moved")
    line = error_line(lazarus("restore", "-D", str(final), "-d"))
    assert "chain broken" in line
    assert not is_alive(a.pid)


@pytest.mark.parametrize("stage", ["dirty", "release", "memory"])
def test_failed_predump_leaves_target_as_it_was(procs: Procs, tmp_path: Path,
                                                stage: str) -> None:
    log = tmp_path / "count.log"
    w = procs.python("counter", str(log), "--interval", "0.02")
    wait_lines(log, 3)
    images = tmp_path / "img"
    env = dict(os.environ, LAZARUS_TEST_FAIL_AFTER=stage)
    res = subprocess.run([LAZARUS, "pre-dump", "-t", str(w.pid), "-D", str(images)],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                         env=env)
    assert f"failing after stage {stage}" in error_line(res)
    assert not images.exists() and leftovers(images) == []
    assert uffd_fds(w.pid) == [], "a failed pre-dump left its userfaultfd in the process"
    n = len(read_counter(log))
    assert_exact(wait_lines(log, n + 5))


def fail_after(stage: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LAZARUS_TEST_FAIL_AFTER=stage)
    return subprocess.run([LAZARUS, *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60, env=env)


def test_failed_final_dump_keeps_tracking(procs: Procs, tmp_path: Path) -> None:
    """A failed `dump --prev` leaves the process running, its tracking intact:
    the retry still stores every page written since the pre-dump."""
    out = tmp_path / "report"
    w = procs.python("rewriter", str(out), "--total", "16", "--hot", "8")
    wait_until(lambda: report_lines(out) == ["ready"], 30, "the rewriter to fill its buffer")
    p1, final = tmp_path / "p1", tmp_path / "final"
    predump(w.pid, p1)
    os.kill(w.pid, signal.SIGUSR1)     # stop writing: what it wrote since p1 is final
    wait_until(lambda: len(report_lines(out)) == 2, 30, "the rewriter's report")
    error_line(fail_after("memory", "dump", "-t", str(w.pid), "-D", str(final),
                          "--prev", str(p1)))
    assert not final.exists() and leftovers(final) == []
    assert len(uffd_fds(w.pid)) == 1
    dump(w, final, "--prev", str(p1))
    pid = restore_detached(final, tmp_path / "pid")
    procs.adopt(pid)
    toggle_twice(pid)                  # rewrite a while, stop, check every byte
    wait_until(lambda: len(report_lines(out)) == 3, 60, "the restored rewriter's report")
    assert report_lines(out)[2].startswith("ok "), report_lines(out)[2]


def test_failed_predump_round_ends_tracking(procs: Procs, tmp_path: Path) -> None:
    """A failed second round has consumed the writes since the first: it ends
    tracking, so --prev of the first round is refused instead of missing them."""
    log = tmp_path / "count.log"
    w = procs.python("counter", str(log), "--interval", "0.02")
    wait_lines(log, 3)
    p1 = tmp_path / "p1"
    predump(w.pid, p1)
    error_line(fail_after("memory", "pre-dump", "-t", str(w.pid), "-D", str(tmp_path / "p2"),
                          "--prev", str(p1)))
    assert uffd_fds(w.pid) == []
    line = error_line(lazarus("dump", "-t", str(w.pid), "-D", str(tmp_path / "final"),
                              "--prev", str(p1)))
    assert "no longer holds the dirty-tracking userfaultfd" in line
    n = len(read_counter(log))
    assert_exact(wait_lines(log, n + 3))


def test_prev_of_restarted_process_is_refused(procs: Procs, tmp_path: Path) -> None:
    """Same PID, another process: the start time recorded in the pre-dump tells."""
    log = tmp_path / "count.log"
    w = procs.python("counter", str(log), "--interval", "0.02")
    wait_lines(log, 3)
    p1, full = tmp_path / "p1", tmp_path / "full"
    predump(w.pid, p1)
    dump(w, full)
    line = error_line(lazarus("dump", "-t", str(w.pid), "-D", str(tmp_path / "x"), "--prev",
                              str(p1)))
    assert f"no process with PID {w.pid}" in line
    # Brought back with the same PID: a new process as far as tracking goes.
    pid = restore_detached(full, tmp_path / "pid")
    procs.adopt(pid)
    assert pid == w.pid
    images = tmp_path / "img"
    line = error_line(lazarus("dump", "-t", str(pid), "-D", str(images), "--prev", str(p1)))
    assert "restarted" in line
    assert not images.exists() and leftovers(images) == []
    n = len(read_counter(log))
    assert_exact(wait_lines(log, n + 3))


def test_predump_of_a_tree(procs: Procs, tmp_path: Path) -> None:
    log = tmp_path / "count.log"
    w = procs.python("counter", str(log), "--interval", "0.02", "--child")
    wait_lines(log, 3)
    p1, final = tmp_path / "p1", tmp_path / "final"
    predump(w.pid, p1)
    kids = show_json(p1)["pids"]
    assert isinstance(kids, list) and len(kids) == 2
    for pid in kids:
        assert len(uffd_fds(pid)) == 1
    n = len(read_counter(log))
    wait_lines(log, n + 3)
    dump(w, final, "--prev", str(p1))
    pid = restore_detached(final, tmp_path / "pid")
    procs.adopt(pid)
    for kid in kids:
        procs.adopt(kid)
    assert_exact(wait_lines(log, len(read_counter(log)) + 5))


def test_check_names_the_dirty_tracking_mode() -> None:
    out = ok(lazarus("check")).stdout
    line = next(ln for ln in out.splitlines() if "dirty-tracking" in ln)
    assert line.startswith("ok") and "PAGEMAP_SCAN+uffd-wp-async" in line


def test_show_prints_the_chain(procs: Procs, tmp_path: Path) -> None:
    log = tmp_path / "count.log"
    w = procs.python("counter", str(log), "--interval", "0.02")
    wait_lines(log, 3)
    p1, final = tmp_path / "p1", tmp_path / "final"
    predump(w.pid, p1)
    assert "pre-dump (memory only" in ok(lazarus("show", str(p1))).stdout
    dump(w, final, "--prev", str(p1))
    text = ok(lazarus("show", str(final))).stdout
    assert "chain     2 images, newest first:" in text
    assert f"{p1}  pre-dump" in text and "pages from the parent" in text


def test_memory_emptied_between_rounds_reads_zero(procs: Procs, tmp_path: Path) -> None:
    """MADV_DONTNEED after the pre-dump, then only read: the final image must
    give zeros there, not the pre-dump's older pages."""
    out = tmp_path / "report"
    w = procs.python("dontneed", str(out))
    wait_until(lambda: report_lines(out) == ["ready"], 30, "the workload to fill its memory")
    p1, final = tmp_path / "p1", tmp_path / "final"
    predump(w.pid, p1)
    os.kill(w.pid, signal.SIGUSR1)
    wait_until(lambda: len(report_lines(out)) == 2, 30, "the workload to empty its memory")
    assert report_lines(out)[1] == "zapped 0"
    dump(w, final, "--prev", str(p1))
    pid = restore_detached(final, tmp_path / "pid")
    procs.adopt(pid)
    os.kill(pid, signal.SIGUSR2)
    wait_until(lambda: len(report_lines(out)) == 3, 30, "the restored workload's check")
    assert report_lines(out)[2] == "ok"


def test_predump_without_prev_starts_over(procs: Procs, tmp_path: Path) -> None:
    log = tmp_path / "count.log"
    w = procs.python("counter", str(log), "--interval", "0.02")
    wait_lines(log, 5)
    first, again, final = tmp_path / "first", tmp_path / "again", tmp_path / "final"
    predump(w.pid, first)
    res = predump(w.pid, again)          # no --prev: a new chain
    assert "ended the dirty tracking of an earlier pre-dump" in res.stderr
    assert len(uffd_fds(w.pid)) == 1, "the old tracking fd must be closed, not leaked"
    desc = show_json(again)
    procs_desc = desc["processes"]
    assert isinstance(procs_desc, list)
    assert not desc["parent"] and procs_desc[0]["pages_inherited"] == 0
    assert procs_desc[0]["pages_stored"] > 0
    dump(w, final, "--prev", str(again))
    before = read_counter(log)
    pid = restore_detached(final, tmp_path / "pid")
    procs.adopt(pid)
    assert_exact(wait_lines(log, len(before) + 10))
