"""Process trees: every process comes back with its PID, parent, session and
group; pipes, shared memory, zombies and stopped children as they were."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import (
    LAZARUS,
    Procs,
    assert_exact,
    children,
    dump,
    error_line,
    is_alive,
    lazarus,
    proc_state,
    read_counter,
    restore_detached,
    wait_lines,
    wait_until,
)

PIPELINE = 'i=0; while :; do echo $i; i=$((i+1)); sleep 0.05; done | cat >> "$0"'


def tree(pid: int) -> dict[int, tuple[int, int, int, str]]:
    """pid -> (ppid, pgid, sid, state) for pid and all its descendants."""
    out: dict[int, tuple[int, int, int, str]] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        text = Path(f"/proc/{p}/stat").read_text()
        f = text[text.rindex(")") + 2 :].split()
        out[p] = (int(f[1]), int(f[2]), int(f[3]), f[0])
        todo += children(p)
    return out


def test_bash_pipeline_goes_on(procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "counter.txt"
    w = procs.start(["bash", "-c", PIPELINE, str(out)], "pipeline")
    wait_lines(out, 5)
    images = tmp_path / "img"
    dump(w, images)
    pid = restore_detached(images, tmp_path / "pid")
    procs.adopt(pid)
    assert pid == w.pid
    assert_exact(wait_lines(out, len(read_counter(out)) + 10))
    assert len(tree(pid)) >= 3, "bash, its subshell and cat should all be back"


def family_readers(d: Path) -> dict[int, list[str]]:
    out = {}
    for n in range(3):
        f = d / f"child{n}.txt"
        out[n] = f.read_text().splitlines() if f.exists() else []
    return out


def poke_and_check(pid: int, d: Path, value: str) -> None:
    before = sum(len(v) for v in family_readers(d).values())
    os.kill(pid, signal.SIGUSR1)
    wait_until(lambda: sum(len(v) for v in family_readers(d).values()) >= before + 3, 10,
               "the three readers to get a byte each")
    lines = [line for v in family_readers(d).values() for line in v]
    assert sorted(line.split()[0] for line in lines[-3:]) == ["a", "b", "c"] or \
        sorted(line.split()[0] for line in lines if line.endswith(value)) == ["a", "b", "c"]
    assert sum(line.endswith(value) for line in lines) == 3, lines


@pytest.mark.parametrize("mode", ["eager", "lazy"])
def test_family_shares_memory_and_pipe_keeps_zombie_and_stopped_child(
        procs: Procs, tmp_path: Path, mode: str) -> None:
    w = procs.python("family", str(tmp_path))
    wait_until(lambda: (tmp_path / "ready").exists(), 15, "the family to be ready")
    kids = [int(x) for x in (tmp_path / "ready").read_text().split()]
    zombie, stopped = kids[3], kids[4]
    wait_until(lambda: proc_state(stopped) == "T", 5, "the child to stop on SIGTSTP")
    wait_until(lambda: proc_state(zombie) == "Z", 5, "the zombie")
    poke_and_check(w.pid, tmp_path, "v1")
    before = tree(w.pid)
    zombie_comm = Path(f"/proc/{zombie}/comm").read_text()
    images = tmp_path / "img"
    dump(w, images)
    extra = ["--lazy"] if mode == "lazy" else []
    pid = restore_detached(images, tmp_path / "pid", *extra)
    procs.adopt(pid)
    after = tree(pid)
    # Same PIDs, parents, groups and sessions (the root's parent is whoever
    # restored it); the zombie a zombie, the stopped child stopped.
    def shape(t: dict[int, tuple[int, int, int, str]]) -> dict[int, tuple[int, ...]]:
        return {p: v[:3] if p != pid else v[1:3] for p, v in t.items()}
    assert shape(after) == shape(before)
    assert after[zombie][3] == "Z" and after[stopped][3] == "T"
    assert Path(f"/proc/{zombie}/comm").read_text() == zombie_comm
    # A write by the parent reaches every child: through the pipe, and in the shared page.
    poke_and_check(pid, tmp_path, "v2")
    os.kill(stopped, signal.SIGCONT)
    wait_until(lambda: proc_state(stopped) in ("S", "R"), 5, "SIGCONT to wake the stopped child")
    assert is_alive(pid)


def test_a_traced_member_refuses_the_dump_and_the_tree_goes_on(procs: Procs,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "counter.txt"
    w = procs.start(["bash", "-c", PIPELINE, str(out)], "pipeline")
    wait_lines(out, 3)
    cat = next(c for c in children(w.pid) if Path(f"/proc/{c}/comm").read_text() == "cat\n")
    libc = ctypes.CDLL(None, use_errno=True)
    PTRACE_SEIZE = 0x4206
    assert libc.ptrace(PTRACE_SEIZE, cat, 0, 0) == 0, os.strerror(ctypes.get_errno())
    res = lazarus("dump", "-t", str(w.pid), "-D", str(tmp_path / "img"))
    assert "traced by" in error_line(res)
    assert not (tmp_path / "img").exists()
    assert_exact(wait_lines(out, len(read_counter(out)) + 5))
    assert all(s not in ("t", "T") for _, _, _, s in tree(w.pid).values())


def nspid(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    raise AssertionError(f"no NSpid for {pid}")


def test_same_image_three_times_at_once_with_pidns(procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "counter.txt"
    w = procs.python("counter", str(out))
    wait_lines(out, 5)
    images = tmp_path / "img"
    dump(w, images)
    at_dump = len(read_counter(out))
    runs = [subprocess.Popen([LAZARUS, "restore", "-D", str(images), "-d", "--pidns",
                              "--pidfile", str(tmp_path / f"pid{i}")],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE) for i in range(3)]
    for r in runs:
        procs.track(r)
    for r in runs:
        _, err = r.communicate(timeout=60)
        assert r.returncode == 0, err.decode()
    pids = [int((tmp_path / f"pid{i}").read_text()) for i in range(3)]
    inits = [parent_of(p) for p in pids]
    for p, init in zip(pids, inits, strict=True):
        procs.adopt(p)
        procs.adopt(init, Path(sys.executable))
        assert nspid(p)[-1] == w.pid, "inside its namespace the copy has the dumped PID"
        assert nspid(init)[-1] == 1 and is_alive(p)
    assert len(set(pids)) == 3
    # Three writers from the same point: every value after the dump three times.
    wait_lines(out, at_dump + 3 * 8)
    after = read_counter(out)[at_dump:]
    assert all(after.count(v) == 3 for v in range(at_dump, at_dump + 5)), after[:30]
    assert read_counter(out)[:at_dump] == list(range(at_dump))


def parent_of(pid: int) -> int:
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2 :].split()[1])


def test_socket_pairs_with_queued_messages(procs: Procs, tmp_path: Path) -> None:
    w = procs.python("sockpair", str(tmp_path))
    wait_until(lambda: (tmp_path / "ready").exists(), 15, "the pair to be ready")
    child = children(w.pid)[0]
    images = tmp_path / "img"
    dump(w, images)
    pid = restore_detached(images, tmp_path / "pid")
    procs.adopt(pid)
    assert children(pid) == [child]
    os.kill(child, signal.SIGUSR1)           # reads what was queued at dump time
    wait_until(lambda: (tmp_path / "child.txt").exists(), 10, "the child to read")
    assert (tmp_path / "child.txt").read_text() == "s1 d1 d2\n"
    os.kill(pid, signal.SIGUSR1)             # the answer went through the restored pair
    wait_until(lambda: (tmp_path / "parent.txt").exists(), 10, "the parent to read")
    assert (tmp_path / "parent.txt").read_text() == "ack\n"


def test_one_open_file_shared_by_parent_and_child(procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "shared.txt"
    w = procs.python("shared_offset", str(out))
    wait_until(lambda: out.exists() and out.read_text().count("\n") >= 10, 10, "lines")
    dump(w, tmp_path / "img")
    pid = restore_detached(tmp_path / "img", tmp_path / "pid")
    procs.adopt(pid)
    before = out.read_text().count("\n")
    wait_until(lambda: out.read_text().count("\n") >= before + 20, 10, "lines after restore")
    os.kill(pid, signal.SIGSTOP)
    for c in children(pid):
        os.kill(c, signal.SIGSTOP)
    lines = out.read_text().splitlines()
    # Each writer's numbers go 0, 1, 2... with none lost to an overwrite.
    for who in ("p", "c"):
        mine = [int(line.split()[1]) for line in lines if line.startswith(who + " ")]
        assert mine == list(range(len(mine))), f"{who}: {mine[:40]}"
    assert all(line[:2] in ("p ", "c ") for line in lines), "a line was overwritten"


def test_unix_server_and_its_connected_client(procs: Procs, tmp_path: Path) -> None:
    out = tmp_path / "got.txt"
    w = procs.python("unix_server", str(tmp_path))
    wait_lines(out, 5)
    dump(w, tmp_path / "img")
    pid = restore_detached(tmp_path / "img", tmp_path / "pid")
    procs.adopt(pid)
    assert_exact(wait_lines(out, len(read_counter(out)) + 10))
    # The listener is bound again: a new client can connect.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(tmp_path / "sock"))
