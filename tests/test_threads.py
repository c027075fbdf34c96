"""Multi-threaded processes: every thread comes back with its TID, registers
and name, and goes on exactly where it was; eagerly and lazily."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import (
    Procs,
    assert_exact,
    dump,
    lazarus,
    ok,
    proc_state,
    read_counter,
    restore_detached,
    wait_lines,
    wait_until,
)

THREADS = 4


def tids(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def names(pid: int) -> list[str]:
    return [Path(f"/proc/{pid}/task/{t}/comm").read_text() for t in tids(pid)]


@pytest.mark.parametrize("mode", ["eager", "lazy"])
def test_four_counting_threads_go_on(procs: Procs, tmp_path: Path, mode: str) -> None:
    w = procs.python("threads", str(tmp_path))
    files = [tmp_path / f"t{n}.txt" for n in range(THREADS)]
    for f in files:
        wait_lines(f, 3)
    before_tids, before_names = tids(w.pid), names(w.pid)
    assert len(before_tids) == THREADS + 1
    images = tmp_path / "img"
    dump(w, images)
    at_dump = [len(read_counter(f)) for f in files]
    extra = ["--lazy", "--fault-around", "4"] if mode == "lazy" else []
    pid = restore_detached(images, tmp_path / "pid", *extra)
    procs.adopt(pid)
    assert pid == w.pid
    assert tids(pid) == before_tids
    assert names(pid) == before_names
    for f, n in zip(files, at_dump, strict=True):
        assert_exact(wait_lines(f, n + 5))


def test_dump_restore_threads_twice(procs: Procs, tmp_path: Path) -> None:
    w = procs.python("threads", str(tmp_path))
    files = [tmp_path / f"t{n}.txt" for n in range(THREADS)]
    for f in files:
        wait_lines(f, 3)
    dump(w, tmp_path / "img0")
    first = restore_detached(tmp_path / "img0", tmp_path / "pid0")
    procs.adopt(first)
    for f in files:
        assert_exact(wait_lines(f, len(read_counter(f)) + 3))
    ok(lazarus("dump", "-t", str(first), "-D", str(tmp_path / "img1")))
    wait_until(lambda: proc_state(first) is None, 10, "the first copy to be reaped")
    second = restore_detached(tmp_path / "img1", tmp_path / "pid1")
    procs.adopt(second)
    assert second == w.pid and len(tids(second)) == THREADS + 1
    for f in files:
        assert_exact(wait_lines(f, len(read_counter(f)) + 3))
