"""Bad input: each refused with one clear error line and exit status 1, harming nothing.

A failed dump leaves its target running exactly as before (counting on with
no gap, not stopped, not traced) and leaves no image directory, partial or
temporary. A failed restore leaves no process behind with the image's PID and
does not touch the image.
"""

from __future__ import annotations

import os
import platform
import random
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.images import ImageReader, pb
from tests.conftest import (
    LAZARUS,
    PYTHON,
    TESTS,
    Procs,
    Workload,
    assert_exact,
    dump,
    error_line,
    fd_targets,
    is_alive,
    lazarus,
    leftovers,
    proc_state,
    read_counter,
    restore_detached,
    tracer_pid,
    wait_lines,
    wait_until,
)

# ------------------------------------------------------------------ helpers


def running_counter(procs: Procs, tmp_path: Path, *flags: str) -> tuple[Workload, Path]:
    out = tmp_path / "counter.txt"
    w = procs.python("counter", str(out), *flags)
    wait_lines(out, 5)
    return w, out


def assert_unharmed(w: Workload, out: Path) -> None:
    """The target runs on as if nothing happened: not stopped, not traced, no gap."""
    assert is_alive(w.pid), f"target PID {w.pid} is {proc_state(w.pid)}"
    assert proc_state(w.pid) not in ("T", "t"), "target left stopped"
    assert tracer_pid(w.pid) == 0, "target left traced"
    n = len(read_counter(out))
    wait_lines(out, n + 5, timeout=5.0)
    assert_exact(read_counter(out))


def assert_no_image(images: Path) -> None:
    assert not images.exists(), f"a failed dump left {images}"
    assert leftovers(images) == [], f"a failed dump left {leftovers(images)}"


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def free_pid() -> int:
    """A PID no process has right now (from the top of the range, rarely reached)."""
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in range(pid_max - 1, 300, -1):
        if not os.path.exists(f"/proc/{pid}"):
            return pid
    raise AssertionError("no free PID")


# ------------------------------------------------------------------ dump


def test_dump_no_such_pid(tmp_path: Path) -> None:
    images = tmp_path / "img"
    pid = free_pid()
    line = error_line(lazarus("dump", "-t", str(pid), "-D", str(images)))
    assert f"no process with PID {pid}" in line
    assert_no_image(images)


def test_dump_kernel_thread(tmp_path: Path) -> None:
    stat = Path("/proc/2/stat").read_text()
    if "(kthreadd)" not in stat:
        pytest.skip("PID 2 is not kthreadd here")
    images = tmp_path / "img"
    line = error_line(lazarus("dump", "-t", "2", "-D", str(images)))
    assert "kernel thread" in line
    assert_no_image(images)
    assert proc_state(2) not in (None, "T", "t")


def test_dump_itself(tmp_path: Path) -> None:
    """lazarus asked to dump its own process (not expressible from a shell: run main())."""
    images = tmp_path / "img"
    code = ("import os, sys\nfrom core.cli import main\n"
            "sys.exit(main(['dump', '-t', str(os.getpid()), '-D', sys.argv[1]]))")
    try:
        res = subprocess.run([PYTHON, "-c", code, str(images)], cwd=TESTS.parent,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("lazarus dumping itself did not return within 30 s (deadlocked on itself?)")
    line = error_line(res)
    assert "itself" in line
    assert_no_image(images)


def test_dump_into_non_empty_dir(procs: Procs, tmp_path: Path) -> None:
    w, out = running_counter(procs, tmp_path)
    images = tmp_path / "img"
    images.mkdir()
    (images / "precious.txt").write_text("do not touch\n")
    line = error_line(lazarus("dump", "-t", str(w.pid), "-D", str(images)))
    assert "not empty" in line
    assert snapshot(images) == {"precious.txt": b"do not touch\n"}
    assert leftovers(images) == []
    assert_unharmed(w, out)


def test_dump_into_missing_parent(procs: Procs, tmp_path: Path) -> None:
    w, out = running_counter(procs, tmp_path)
    images = tmp_path / "no" / "such" / "img"
    line = error_line(lazarus("dump", "-t", str(w.pid), "-D", str(images)))
    assert "does not exist" in line
    assert not (tmp_path / "no").exists()
    assert_unharmed(w, out)


@pytest.mark.parametrize("what", ["socket", "deleted-file"])
def test_dump_refused_after_freeze(procs: Procs, tmp_path: Path, what: str) -> None:
    """Found only once the target is frozen: it must be thawed exactly as it was."""
    w, out = running_counter(procs, tmp_path, *(["--socket"] if what == "socket" else []))
    if what == "deleted-file":
        (fd,) = [n for n, t in fd_targets(w.pid).items() if t == str(out)]
        out.unlink()
        out = Path(f"/proc/{w.pid}/fd/{fd}")   # still readable through the open fd
    images = tmp_path / "img"
    line = error_line(lazarus("dump", "-t", str(w.pid), "-D", str(images)))
    assert ("socket" if what == "socket" else "deleted") in line and "not supported" in line
    assert_no_image(images)
    assert_unharmed(w, out)


def test_dump_traced_process(procs: Procs, tmp_path: Path) -> None:
    """A process someone else traces (here strace) is refused; both go on unharmed."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    w, out = running_counter(procs, tmp_path)
    tracer = procs.start([strace, "-qq", "-p", str(w.pid), "-o", str(tmp_path / "strace.out")],
                         "strace")
    wait_until(lambda: tracer_pid(w.pid) == tracer.pid, 10.0, "strace to attach")
    images = tmp_path / "img"
    line = error_line(lazarus("dump", "-t", str(w.pid), "-D", str(images)))
    assert "traced" in line and str(tracer.pid) in line
    assert_no_image(images)
    assert tracer_pid(w.pid) == tracer.pid and tracer.popen is not None
    assert tracer.popen.poll() is None, "strace died"
    tracer.popen.terminate()   # strace detaches on SIGTERM
    tracer.reap()
    assert_unharmed(w, out)


def test_dump_interrupted(procs: Procs, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) while lazarus holds the target: it lets go, memory intact, no image."""
    w = procs.python("bigmem", str(tmp_path), "128")
    before, after = tmp_path / "before.sha", tmp_path / "after.sha"
    wait_until(before.exists, 30.0, "bigmem to fill its memory")
    images = tmp_path / "img"
    with open(tmp_path / "dump.err", "wb") as err:
        dumper = subprocess.Popen([LAZARUS, "dump", "-t", str(w.pid), "-D", str(images)],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=err)
    procs.track(dumper)
    # Interrupt as soon as lazarus has seized the target: in the middle of the dump.
    # (TracerPid names lazarus's tracer thread, a task of the lazarus process.)
    wait_until(lambda: os.path.exists(f"/proc/{dumper.pid}/task/{tracer_pid(w.pid)}"), 10.0,
               "lazarus to seize the target", interval=0.001)
    dumper.send_signal(signal.SIGINT)
    try:
        status = dumper.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail("lazarus dump did not stop within 10 s of SIGINT")
    stderr = (tmp_path / "dump.err").read_text()
    assert status != 0, f"the dump finished before the SIGINT ({stderr!r})"
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("lazarus: "), stderr
    assert_no_image(images)
    assert is_alive(w.pid) and proc_state(w.pid) != "T" and tracer_pid(w.pid) == 0
    os.kill(w.pid, signal.SIGUSR1)
    wait_until(after.exists, 10.0, "the interrupted target to rehash its memory")
    assert after.read_text() == before.read_text(), "memory changed by an interrupted dump"


# ------------------------------------------------------------------ restore


@dataclass
class Dumped:
    """A pristine image of a counter (dead since the dump), to copy and spoil."""

    images: Path
    pid: int
    out: Path
    workdir: Path


@pytest.fixture(scope="module")
def dumped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Dumped]]:
    """One image per compression mode, made once for the module."""
    base = tmp_path_factory.mktemp("dumped")
    manager = Procs(base)
    made: dict[str, Dumped] = {}
    try:
        for compress in ("lz4", "none"):
            out = base / f"counter-{compress}.txt"
            w = manager.python("counter", str(out), name=f"counter-{compress}")
            wait_lines(out, 5)
            images = base / f"img-{compress}"
            dump(w, images, "--compress", compress)
            made[compress] = Dumped(images, w.pid, out, base)
        yield made
    finally:
        problems = manager.cleanup()
        assert not problems, problems


def spoil_and_restore(dumped: Dumped, tmp_path: Path,
                      spoil: Callable[[Path], object]) -> str:
    """Copy the image, spoil the copy, restore it: must fail cleanly. Returns the error line."""
    images = tmp_path / "img"
    shutil.copytree(dumped.images, images)
    spoil(images)
    before = snapshot(images)
    siblings = sorted(p.name for p in tmp_path.iterdir())
    assert not is_alive(dumped.pid)
    res = lazarus("restore", "-D", str(images), "-d", "--pidfile", str(tmp_path / "pid"))
    line = error_line(res)
    # No half-restored process: lazarus must have killed and reaped it.
    assert proc_state(dumped.pid) is None, (
        f"PID {dumped.pid} left behind by a failed restore: state {proc_state(dumped.pid)}")
    assert not (tmp_path / "pid").exists(), "pidfile written by a failed restore"
    assert snapshot(images) == before, "a failed restore changed the image"
    assert sorted(p.name for p in tmp_path.iterdir()) == siblings, "a failed restore left files"
    return line


def pages_file(images: Path) -> Path:
    (found,) = images.glob("pages-*.img")
    return found


def first_block(images: Path, lz4: bool) -> pb.PageBlock:
    reader = ImageReader(images)
    (proc,) = reader.processes()
    blocks = [b for b in proc.pages if b.lz4 == lz4 and b.length >= 64]
    if not blocks:
        pytest.skip(f"the image has no {'lz4' if lz4 else 'raw'} page block")
    return blocks[0]


def rewrite_inventory(images: Path, change: Callable[[pb.Inventory], None]) -> None:
    path = images / "inventory.img"
    inv = pb.Inventory()
    inv.ParseFromString(path.read_bytes())
    change(inv)
    path.write_bytes(inv.SerializeToString())


def test_restore_truncated_pages_file(dumped: dict[str, Dumped], tmp_path: Path) -> None:
    def truncate(images: Path) -> None:
        pages = pages_file(images)
        os.truncate(pages, pages.stat().st_size // 2)

    line = spoil_and_restore(dumped["lz4"], tmp_path, truncate)
    assert "truncated" in line


@pytest.mark.parametrize("compress", ["none", "lz4"])
def test_restore_flipped_byte_in_page_block(dumped: dict[str, Dumped], tmp_path: Path,
                                            compress: str) -> None:
    def flip(images: Path) -> None:
        block = first_block(images, lz4=compress == "lz4")
        at = block.offset + block.length // 2
        with open(pages_file(images), "r+b") as f:
            f.seek(at)
            byte = f.read(1)[0]
            f.seek(at)
            f.write(bytes([byte ^ 0x40]))

    line = spoil_and_restore(dumped[compress], tmp_path, flip)
    assert "corrupted" in line
    if compress == "none":
        assert "checksum" in line


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 64, b"hello, I am not an inventory\n",
                                     random.Random(7).randbytes(4096)],
                         ids=["empty", "zeros", "text", "random"])
def test_restore_garbage_inventory(dumped: dict[str, Dumped], tmp_path: Path,
                                   garbage: bytes) -> None:
    line = spoil_and_restore(dumped["lz4"], tmp_path,
                             lambda images: (images / "inventory.img").write_bytes(garbage))
    assert "inventory.img" in line


def test_restore_missing_inventory(dumped: dict[str, Dumped], tmp_path: Path) -> None:
    line = spoil_and_restore(dumped["lz4"], tmp_path,
                             lambda images: (images / "inventory.img").unlink())
    assert "inventory.img is missing" in line


def test_restore_other_kernel(dumped: dict[str, Dumped], tmp_path: Path) -> None:
    other = "2.6.32-not-" + os.uname().release

    def change(inv: pb.Inventory) -> None:
        inv.kernel_release = other

    line = spoil_and_restore(dumped["lz4"], tmp_path, lambda d: rewrite_inventory(d, change))
    assert other in line and os.uname().release in line


def test_restore_other_arch(dumped: dict[str, Dumped], tmp_path: Path) -> None:
    other = "s390x" if platform.machine() != "s390x" else "x86_64"

    def change(inv: pb.Inventory) -> None:
        inv.arch = other

    line = spoil_and_restore(dumped["lz4"], tmp_path, lambda d: rewrite_inventory(d, change))
    assert other in line


def test_restore_missing_process_image(dumped: dict[str, Dumped], tmp_path: Path) -> None:
    def remove(images: Path) -> None:
        (proc,) = images.glob("process-*.img")
        proc.unlink()

    line = spoil_and_restore(dumped["lz4"], tmp_path, remove)
    assert "missing" in line


def test_restore_file_gone(dumped: dict[str, Dumped], tmp_path: Path) -> None:
    """The file an fd was open on is gone: refused, and the half-made process removed."""
    d = dumped["lz4"]
    saved = d.out.read_bytes()
    d.out.unlink()
    try:
        line = spoil_and_restore(d, tmp_path, lambda images: None)
        assert not d.out.exists(), "a failed restore created the file"
    finally:
        d.out.write_bytes(saved)
    assert str(d.out) in line


@pytest.mark.parametrize("arg, words", [("3:pipe:[1]", "expected fd[N]:KEY"),
                                        ("fd[987]:pipe:[1]", "not open")])
def test_restore_bad_inherit_fd(dumped: dict[str, Dumped], tmp_path: Path, arg: str,
                                words: str) -> None:
    res = lazarus("restore", "-D", str(dumped["lz4"].images), "-d", "--inherit-fd", arg)
    assert words in error_line(res)
    assert proc_state(dumped["lz4"].pid) is None


def test_show_garbage_inventory(dumped: dict[str, Dumped], tmp_path: Path) -> None:
    images = tmp_path / "img"
    shutil.copytree(dumped["lz4"].images, images)
    (images / "inventory.img").write_bytes(b"\xff" * 100)
    assert "inventory.img" in error_line(lazarus("show", str(images)))
    assert "inventory.img" in error_line(lazarus("show", str(images), "--json"))


def test_restore_no_such_dir(tmp_path: Path) -> None:
    line = error_line(lazarus("restore", "-D", str(tmp_path / "nothing"), "-d"))
    assert "does not exist" in line
    assert list(tmp_path.iterdir()) == []


def test_restore_pid_held_by_live_process(procs: Procs, tmp_path: Path) -> None:
    """Restoring while the original still runs: refused clearly, the original unharmed."""
    w, out = running_counter(procs, tmp_path)
    images = tmp_path / "img"
    dump(w, images, "--leave-running")
    line = error_line(lazarus("restore", "-D", str(images), "-d"))
    assert f"PID {w.pid}" in line and "in use" in line
    assert_unharmed(w, out)


# The control: the same images, unspoiled, do restore (so the failures above
# are due to the damage and not to something else).
@pytest.mark.parametrize("compress", ["lz4", "none"])
def test_restore_pristine_copy_works(procs: Procs, dumped: dict[str, Dumped], tmp_path: Path,
                                     compress: str) -> None:
    d = dumped[compress]
    images = tmp_path / "img"
    shutil.copytree(d.images, images)
    at_dump = read_counter(d.out)
    assert_exact(at_dump)
    # Killed at teardown: its command line names the module's directory, not ours.
    procs.adopt(d.pid, d.workdir)
    pid = restore_detached(images, tmp_path / "pid")
    assert pid == d.pid and is_alive(pid)
    wait_lines(d.out, len(at_dump) + 5)
    assert_exact(read_counter(d.out))



def test_dump_refuses_a_thread_an_ancestor_and_init(procs: Procs, tmp_path: Path) -> None:
    w = procs.python("counter", str(tmp_path / "count.log"), "--thread")
    wait_until(lambda: len(os.listdir(f"/proc/{w.pid}/task")) == 2, 10, "the second thread")
    tid = next(int(t) for t in os.listdir(f"/proc/{w.pid}/task") if int(t) != w.pid)
    line = error_line(lazarus("dump", "-t", str(tid), "-D", str(tmp_path / "a")))
    assert line == f"lazarus: error: PID {tid} is a thread of process {w.pid}: dump -t {w.pid}"
    # The test's own process is an ancestor of the lazarus it runs.
    line = error_line(lazarus("dump", "-t", str(os.getpid()), "-D", str(tmp_path / "b")))
    assert "is an ancestor of lazarus" in line
    line = error_line(lazarus("dump", "-t", "1", "-D", str(tmp_path / "c")))
    assert "is the init of a PID namespace" in line
    assert not any((tmp_path / n).exists() for n in "abc"), "no image directory left behind"
    assert is_alive(w.pid) and tracer_pid(w.pid) == 0
