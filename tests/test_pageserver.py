"""The page server over real TCP on loopback: the `pageserver` command and the client library.

The server runs as a real subprocess (`python -m pageserver.cli`) on an
ephemeral port read back from its log. Images are built with the core image
writers, so their expected contents are known exactly (the end-to-end tests
with images of real processes are in test_pageserver_e2e.py). Every wait is
bounded.
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from core.images import (
    FORMAT_VERSION,
    PAGE_SIZE,
    ImageReader,
    ImageWriter,
    PageStoreWriter,
    pb,
)
from pageserver import wire_pb2 as wire
from pageserver.client import (
    PageClient,
    PageServerError,
    RemoteError,
    parse_hostport,
    pull_image,
)
from pageserver.protocol import (
    HEADER,
    MAGIC,
    MAX_CONTROL,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    ClientConnection,
    FrameType,
    encode_control,
)
from pageserver.server import PageServer
from tests.conftest import wait_until

T = TypeVar("T")
PYTHON = sys.executable
TEST_TIMEOUT = 60.0        # any one asyncio part of a test
START_TIMEOUT = 15.0       # the server must be listening by then
STOP_TIMEOUT = 10.0        # and gone this long after SIGTERM

BASE = 0x7F1200000000       # first VMA of the synthetic processes
GAP_VMA = BASE + 0x10000000  # a second VMA, far away


def run(coro: Coroutine[Any, Any, T], timeout: float = TEST_TIMEOUT) -> T:
    """Run one asyncio part of a test, bounded."""
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro
    return asyncio.run(bounded())


# ------------------------------------------------------------------ images


def make_image(directory: Path, pid: int, regions: list[tuple[int, bytes]],
               vmas: list[tuple[int, int]], compress: bool, block_pages: int = 64) -> None:
    """A complete image of one synthetic process, through the real image writers."""
    with ImageWriter(directory) as w:
        with PageStoreWriter(w.pages_path(pid), compress=compress,
                             block_pages=block_pages) as ps:
            for vaddr, data in regions:
                ps.add(vaddr, data)
        w.write_process(pb.ProcessImage(
            pid=pid, comm="synthetic", vmas=[pb.Vma(start=s, end=e, prot=3) for s, e in vmas],
            pages=ps.blocks, pages_bytes=ps.bytes_raw))
        w.write_inventory(pb.Inventory(
            format_version=FORMAT_VERSION, tool_version="test",
            kernel_release=os.uname().release, arch=platform.machine(), page_size=PAGE_SIZE,
            root_pid=pid, pids=[pid], compression="lz4" if compress else "none"))
        w.commit()


def mixed_pages(seed: int, nr_pages: int) -> bytes:
    """Random, compressible and all-zero pages in runs of various lengths."""
    rnd = __import__("random").Random(seed)
    out = bytearray()
    while len(out) < nr_pages * PAGE_SIZE:
        n = rnd.choice([1, 3, 17, 64, 100])
        kind = rnd.choice(["random", "text", "zero"])
        if kind == "random":
            out += rnd.randbytes(n * PAGE_SIZE)
        elif kind == "text":
            out += (f"page {rnd.random()} of text ".encode() * (n * PAGE_SIZE))[: n * PAGE_SIZE]
        else:
            out += bytes(n * PAGE_SIZE)
    return bytes(out[: nr_pages * PAGE_SIZE])


# Process 1001 of "alpha" (lz4): 1500 pages of mixed data in a 2000-page VMA,
# and 40 pages in a second VMA. Process 2002 of "beta" (raw): 300 pages.
ALPHA_PID, BETA_PID = 1001, 2002
ALPHA_VMAS = [(BASE, BASE + 2000 * PAGE_SIZE), (GAP_VMA, GAP_VMA + 40 * PAGE_SIZE)]
BETA_VMAS = [(BASE, BASE + 300 * PAGE_SIZE)]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    make_image(root / "alpha", ALPHA_PID,
               [(BASE, mixed_pages(1, 1500)), (GAP_VMA, mixed_pages(2, 40))],
               ALPHA_VMAS, compress=True)
    make_image(root / "beta", BETA_PID, [(BASE, mixed_pages(3, 300))], BETA_VMAS,
               compress=False, block_pages=16)
    # Not served: a directory that is no image, a hidden one, a symlink to one.
    (root / "not-an-image").mkdir()
    shutil.copytree(root / "beta", root / ".hidden")
    (root / "linked").symlink_to(root / "alpha")
    return root


def expected_pages(image: Path, pid: int, vaddr: int, nr_pages: int) -> bytes:
    reader = ImageReader(image)
    with reader.page_reader(reader.process(pid)) as pages:
        return pages.read_range(vaddr, nr_pages)


def expected_blocks(image: Path, pid: int) -> dict[int, bytes]:
    reader = ImageReader(image)
    with reader.page_reader(reader.process(pid)) as pages:
        return dict(pages.iter_blocks())


# ------------------------------------------------------------------ the server process


class ServerProc:
    """A `pageserver` subprocess and its log."""

    def __init__(self, images: Path, log: Path, *args: str,
                 listen: str = "127.0.0.1:0") -> None:
        self.images = images
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "pageserver.cli", "-D", str(images), "--listen", listen, *args],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        wait_until(lambda: "listening on" in self.text() or self.proc.poll() is not None,
                   START_TIMEOUT, "the page server to listen")
        if self.proc.poll() is not None:
            pytest.fail(f"pageserver exited {self.proc.returncode}: {self.text()!r}")
        m = re.search(r"listening on (\S+)", self.text())
        assert m is not None
        self.host, self.port = parse_hostport(m.group(1))

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def lines(self) -> list[str]:
        return self.text().splitlines()

    def wait_log(self, pattern: str, timeout: float = 10.0) -> str:
        """Wait for a log line matching ``pattern`` (a regex) and return it."""
        found: list[str] = []

        def seen() -> bool:
            found[:] = [ln for ln in self.lines() if re.search(pattern, ln)]
            return bool(found)
        wait_until(seen, timeout, f"a pageserver log line matching {pattern!r}")
        return found[0]

    async def connect(self, **kw: Any) -> PageClient:
        return await PageClient.connect(self.host, self.port, **kw)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        """SIGTERM; the exit status (bounded wait)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
            pytest.fail(f"pageserver still running {STOP_TIMEOUT:.0f} s after SIGTERM")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Any]:
    """Factory of page servers; all are killed at teardown (by their Popen)."""
    started: list[ServerProc] = []

    def start(images: Path, *args: str, listen: str = "127.0.0.1:0") -> ServerProc:
        s = ServerProc(images, tmp_path / f"pageserver-{len(started)}.log", *args,
                       listen=listen)
        started.append(s)
        return s
    yield start
    for s in started:
        s.kill()


@pytest.fixture(scope="module")
def server(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """One server shared by the read-only tests of this module."""
    s = ServerProc(images, tmp_path_factory.mktemp("log") / "pageserver.log")
    yield s
    status = s.stop()
    assert status == 0, f"pageserver exited {status} on SIGTERM: {s.text()[-2000:]}"


# ------------------------------------------------------------------ reading


def test_list_images_and_get_files(server: ServerProc, images: Path) -> None:
    async def main() -> None:
        c = await server.connect()
        try:
            assert await c.list_images() == ["alpha", "beta"]
            files = await c.list_files("alpha")
            assert files == [(p.name, p.stat().st_size)
                             for p in sorted((images / "alpha").iterdir())]
            for name in ("inventory.img", f"process-{ALPHA_PID}.img"):
                assert await c.get_file("alpha", name) == (images / "alpha" / name).read_bytes()
            # A file of more than one DATA frame.
            pages = f"pages-{ALPHA_PID}.img"
            assert await c.get_file("alpha", pages) == (images / "alpha" / pages).read_bytes()
        finally:
            await c.close()
    run(main())


# Ranges of alpha: block-aligned, inside one block, across blocks and holes,
# the largest single request and one the client must split.
ALPHA_RANGES = [(BASE, 1), (BASE, 64), (BASE + 5 * PAGE_SIZE, 3), (BASE + 60 * PAGE_SIZE, 10),
                (BASE + 100 * PAGE_SIZE, 400), (BASE, 1024), (BASE + 1400 * PAGE_SIZE, 600),
                (BASE + 1999 * PAGE_SIZE, 1), (BASE, 2000), (GAP_VMA, 40),
                (GAP_VMA + 39 * PAGE_SIZE, 1)]


@pytest.mark.parametrize("lz4, verify", [(True, False), (False, False), (True, True)],
                         ids=["lz4", "raw", "lz4-verify"])
def test_get_pages_match_the_image(server: ServerProc, images: Path, lz4: bool,
                                   verify: bool) -> None:
    async def main() -> None:
        c = await server.connect(lz4=lz4, verify=verify)
        try:
            assert c.lz4 is lz4
            for vaddr, n in ALPHA_RANGES:
                got = await c.get_pages("alpha", ALPHA_PID, vaddr, n)
                assert len(got) == n * PAGE_SIZE
                assert got == expected_pages(images / "alpha", ALPHA_PID, vaddr, n), (
                    f"alpha [{vaddr:#x} + {n} pages]")
            for vaddr, n in [(BASE, 300), (BASE + 7 * PAGE_SIZE, 20), (BASE + 16 * PAGE_SIZE, 16)]:
                got = await c.get_pages("beta", BETA_PID, vaddr, n)
                assert got == expected_pages(images / "beta", BETA_PID, vaddr, n)
        finally:
            await c.close()
    run(main())


@pytest.mark.parametrize("lz4, verify", [(True, False), (False, False), (True, True)],
                         ids=["lz4", "raw", "lz4-verify"])
def test_get_pages_into_hands_out_the_same_pages(server: ServerProc, images: Path, lz4: bool,
                                                 verify: bool) -> None:
    """get_pages_into (the lazy daemon's read-ahead): the parts handed to the
    sink, copied out during each call, make up exactly what get_pages returns."""
    async def main() -> None:
        c = await server.connect(lz4=lz4, verify=verify)
        try:
            for vaddr, n in ALPHA_RANGES:
                out = bytearray(n * PAGE_SIZE)
                seen: list[int] = []

                def sink(at: int, data: bytes | memoryview, offset: int, nbytes: int,
                         base: int = vaddr, out: bytearray = out,
                         seen: list[int] = seen) -> None:
                    # Valid only during the call: copy it now.
                    out[at - base : at - base + nbytes] = memoryview(data)[offset:offset + nbytes]
                    seen.append(at)

                await c.get_pages_into("alpha", ALPHA_PID, vaddr, n, sink)
                assert seen and min(seen) == vaddr
                assert bytes(out) == expected_pages(images / "alpha", ALPHA_PID, vaddr, n), (
                    f"alpha [{vaddr:#x} + {n} pages]")
        finally:
            await c.close()
    run(main())


def test_concurrent_get_pages_on_one_connection(server: ServerProc, images: Path) -> None:
    """Many outstanding requests on one connection; each gets its own reply."""
    whole = expected_pages(images / "alpha", ALPHA_PID, BASE, 2000)
    rnd = __import__("random").Random(5)
    ranges = []
    for _ in range(300):
        first = rnd.randrange(2000)
        ranges.append((first, rnd.randint(1, min(64, 2000 - first))))

    async def main() -> None:
        c = await server.connect()
        try:
            got = await asyncio.gather(*(
                c.get_pages("alpha", ALPHA_PID, BASE + f * PAGE_SIZE, n) for f, n in ranges))
            for (f, n), data in zip(ranges, got, strict=True):
                assert data == whole[f * PAGE_SIZE : (f + n) * PAGE_SIZE], (f, n)
        finally:
            await c.close()
    run(main())


@pytest.mark.parametrize("lz4", [True, False], ids=["lz4", "raw"])
def test_stream_pages_sends_every_block(server: ServerProc, images: Path, lz4: bool) -> None:
    async def main() -> None:
        c = await server.connect(lz4=lz4, verify=True)
        try:
            for image, pid in (("alpha", ALPHA_PID), ("beta", BETA_PID)):
                got: dict[int, bytes] = {}
                async for vaddr, data in c.stream_pages(image, pid):
                    assert vaddr not in got
                    got[vaddr] = data
                assert got == expected_blocks(images / image, pid)
        finally:
            await c.close()
    run(main())


def test_stream_stopped_early_leaves_the_connection_usable(server: ServerProc,
                                                          images: Path) -> None:
    async def main() -> None:
        c = await server.connect()
        try:
            n = 0
            async for _vaddr, _data in c.stream_pages("alpha", ALPHA_PID):
                n += 1
                if n == 2:
                    break
            assert await c.get_pages("beta", BETA_PID, BASE, 4) == expected_pages(
                images / "beta", BETA_PID, BASE, 4)
            assert await c.list_images() == ["alpha", "beta"]
        finally:
            await c.close()
    run(main())


def test_page_requests_go_on_while_a_stream_is_not_consumed(server: ServerProc,
                                                             images: Path) -> None:
    """A stream nobody reads (its queue full) must not hold up page requests on the
    same connection: the consumer may well be waiting for one of them."""
    whole = expected_pages(images / "alpha", ALPHA_PID, BASE, 2000)

    async def main() -> None:
        c = await server.connect()
        try:
            stream = c.stream_pages("alpha", ALPHA_PID)
            first = await stream.__anext__()
            await asyncio.sleep(0.2)           # the rest of the stream arrives, unread
            for f in range(0, 2000, 97):
                n = min(64, 2000 - f)
                got = await asyncio.wait_for(
                    c.get_pages("alpha", ALPHA_PID, BASE + f * PAGE_SIZE, n), 10)
                assert got == whole[f * PAGE_SIZE : (f + n) * PAGE_SIZE]
            rest = {v: d async for v, d in stream}
            assert {first[0]: first[1], **rest} == expected_blocks(images / "alpha", ALPHA_PID)
        finally:
            await c.close()
    run(main())


@pytest.mark.parametrize("vaddr, nr_pages, code", [
    (BASE - PAGE_SIZE, 1, "OUT_OF_RANGE"),               # below the first VMA
    (BASE + 1990 * PAGE_SIZE, 20, "OUT_OF_RANGE"),       # runs off the end of a VMA
    (BASE + 2000 * PAGE_SIZE, 1, "OUT_OF_RANGE"),        # in the gap between VMAs
    (GAP_VMA + 40 * PAGE_SIZE, 1, "OUT_OF_RANGE"),       # after the last VMA
    (0, 1, "OUT_OF_RANGE"),
    ((1 << 64) - PAGE_SIZE, 1, "OUT_OF_RANGE"),
    (BASE + 100, 1, "BAD_REQUEST"),                      # not page-aligned
])
def test_a_range_outside_the_image_is_an_error_reply(server: ServerProc, vaddr: int,
                                                     nr_pages: int, code: str) -> None:
    async def main() -> None:
        c = await server.connect()
        try:
            with pytest.raises(RemoteError) as exc:
                await c.get_pages("alpha", ALPHA_PID, vaddr, nr_pages)
            assert exc.value.code_name == code, str(exc.value)
            # Not a crash: the same connection goes on.
            assert len(await c.get_pages("alpha", ALPHA_PID, BASE, 1)) == PAGE_SIZE
        finally:
            await c.close()
    run(main())
    assert server.alive()


@pytest.mark.parametrize("image, pid, code", [
    ("gamma", ALPHA_PID, "NOT_FOUND"),
    ("alpha", 4242, "NOT_FOUND"),
    ("not-an-image", 1, "NOT_FOUND"),
    ("linked", ALPHA_PID, "NOT_FOUND"),                  # symlinks are never followed
    (".hidden", BETA_PID, "BAD_REQUEST"),
    ("../alpha", ALPHA_PID, "BAD_REQUEST"),
    ("alpha/../beta", BETA_PID, "BAD_REQUEST"),
    ("", ALPHA_PID, "BAD_REQUEST"),
])
def test_unknown_or_unsafe_images_are_refused(server: ServerProc, image: str, pid: int,
                                              code: str) -> None:
    async def main() -> None:
        c = await server.connect()
        try:
            with pytest.raises(RemoteError) as exc:
                await c.get_pages(image, pid, BASE, 1)
            assert exc.value.code_name == code, str(exc.value)
            if image != "alpha":
                with pytest.raises(RemoteError):
                    await c.get_file(image, "inventory.img")
        finally:
            await c.close()
    run(main())


@pytest.mark.parametrize("name", ["../beta/inventory.img", "/etc/passwd", "..", ".", "",
                                  "nope.img"])
def test_files_outside_an_image_are_refused(server: ServerProc, name: str) -> None:
    async def main() -> None:
        c = await server.connect()
        try:
            with pytest.raises(RemoteError):
                await c.get_file("alpha", name)
        finally:
            await c.close()
    run(main())


def test_corrupted_block_is_an_error_reply(start_server: Any, tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    make_image(root / "bad", 7, [(BASE, os.urandom(128 * PAGE_SIZE))],
               [(BASE, BASE + 128 * PAGE_SIZE)], compress=False)
    pages = root / "bad" / "pages-7.img"
    raw = bytearray(pages.read_bytes())
    raw[100] ^= 0xFF                                       # in the first block
    pages.write_bytes(bytes(raw))
    s = start_server(root)

    async def main() -> None:
        c = await s.connect()
        try:
            with pytest.raises(RemoteError, match="checksum") as exc:
                await c.get_pages("bad", 7, BASE, 1)
            assert exc.value.code_name == "CORRUPTED"
            with pytest.raises(PageServerError, match="checksum"):
                async for _ in c.stream_pages("bad", 7):
                    pass
            assert await c.list_images() == ["bad"]
        finally:
            await c.close()
    run(main())
    assert s.alive()


def test_many_clients_on_one_image(server: ServerProc, images: Path) -> None:
    """Several clients at once reading the same image, faults and streams mixed."""
    whole = expected_pages(images / "alpha", ALPHA_PID, BASE, 2000)
    blocks = expected_blocks(images / "alpha", ALPHA_PID)

    async def faults(k: int) -> None:
        c = await server.connect(lz4=k % 2 == 0)
        try:
            for f in range(k, 2000, 37):
                n = min(16, 2000 - f)
                got = await c.get_pages("alpha", ALPHA_PID, BASE + f * PAGE_SIZE, n)
                assert got == whole[f * PAGE_SIZE : (f + n) * PAGE_SIZE]
        finally:
            await c.close()

    async def stream(k: int) -> None:
        c = await server.connect(lz4=k % 2 == 0)
        try:
            got = {v: d async for v, d in c.stream_pages("alpha", ALPHA_PID)}
            assert got == blocks
        finally:
            await c.close()

    async def main() -> None:
        await asyncio.gather(*(faults(k) for k in range(4)), *(stream(k) for k in range(4)))
    run(main())


def test_client_works_on_uvloop_and_in_process_server(images: Path) -> None:
    """The library on uvloop, against a PageServer run in the same process."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        srv = PageServer(images)
        [(host, port)] = await srv.start([("127.0.0.1", 0)])
        try:
            c = await PageClient.connect(host, port)
            try:
                got = await c.get_pages("beta", BETA_PID, BASE, 300)
                assert got == expected_pages(images / "beta", BETA_PID, BASE, 300)
                n = 0
                async for _ in c.stream_pages("beta", BETA_PID):
                    n += 1
                assert n == len(expected_blocks(images / "beta", BETA_PID))
            finally:
                await c.close()
        finally:
            await srv.close()
    uvloop.run(asyncio.wait_for(main(), TEST_TIMEOUT))


@pytest.mark.parametrize("sendfile", [True, False], ids=["sendfile", "writev"])
def test_warm_stream_with_page_requests_interleaved(images: Path, sendfile: bool) -> None:
    """Once its blocks are checked, a stream goes out straight from the file
    (sendfile); page replies on the same connection must still come out whole."""
    whole = expected_pages(images / "alpha", ALPHA_PID, BASE, 2000)
    blocks = expected_blocks(images / "alpha", ALPHA_PID)

    async def main() -> None:
        srv = PageServer(images, sendfile=sendfile)
        [(host, port)] = await srv.start([("127.0.0.1", 0)])
        try:
            c = await PageClient.connect(host, port, verify=True)
            try:
                for rnd in range(3):             # cold, then warm twice
                    async def faults(first: int) -> None:
                        for f in range(first, 2000, 41):
                            n = min(32, 2000 - f)
                            got = await c.get_pages("alpha", ALPHA_PID, BASE + f * PAGE_SIZE, n)
                            assert got == whole[f * PAGE_SIZE : (f + n) * PAGE_SIZE]

                    async def stream() -> dict[int, bytes]:
                        return {v: d async for v, d in c.stream_pages("alpha", ALPHA_PID)}
                    got, _ = await asyncio.gather(stream(), faults(rnd))
                    assert got == blocks
            finally:
                await c.close()
        finally:
            await srv.close()
    run(main())


# ------------------------------------------------------------------ put and pull


def test_put_image_then_list(start_server: Any, images: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    s = start_server(root)

    async def main() -> None:
        c = await s.connect()
        try:
            assert await c.list_images() == []
            await c.put_image("copy-of-alpha", images / "alpha")
            assert await c.list_images() == ["copy-of-alpha"]
            with pytest.raises(RemoteError, match="already exists") as exc:
                await c.put_image("copy-of-alpha", images / "beta")
            assert exc.value.code_name == "EXISTS"
            for bad in ("../escape", "a/b", ".hidden", "", "x" * 300):
                with pytest.raises(RemoteError) as exc:
                    await c.put_image(bad, images / "beta")
                assert exc.value.code_name == "BAD_REQUEST"
            with pytest.raises(PageServerError, match="not a lazarus image"):
                await c.put_image("empty", tmp_path)
            # The stored copy serves like the original.
            got = await c.get_pages("copy-of-alpha", ALPHA_PID, BASE, 1024)
            assert got == expected_pages(images / "alpha", ALPHA_PID, BASE, 1024)
        finally:
            await c.close()
    run(main())
    stored = root / "copy-of-alpha"
    for f in (images / "alpha").iterdir():
        assert (stored / f.name).read_bytes() == f.read_bytes()
    assert stored.stat().st_mode & 0o777 == 0o700
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in stored.iterdir())
    assert sorted(p.name for p in root.iterdir()) == ["copy-of-alpha"]   # no temp dirs
    assert not (tmp_path / "escape").exists()
    s.wait_log(r"stored image copy-of-alpha \(3 files")


@pytest.mark.parametrize("how", ["disconnect", "cancel", "bad-commit"])
def test_put_cut_short_leaves_nothing(start_server: Any, tmp_path: Path, how: str) -> None:
    """An upload that does not finish (client gone, cancelled, incomplete) leaves
    no image and no temporary directory, and the name stays free."""
    root = tmp_path / "store"
    root.mkdir()
    s = start_server(root)
    sock = raw_socket(s, hello=True)
    try:
        put = wire.Request(put_image=wire.PutImage(name="half"))
        sock.sendall(encode_control(FrameType.REQUEST, 5, put))
        magic, _v, ftype, _f, rid, length = HEADER.unpack(recv_exactly(sock, HEADER.size))
        ready = wire.Response.FromString(recv_exactly(sock, length))
        assert (ftype, rid, ready.WhichOneof("kind")) == (FrameType.RESPONSE, 5, "put_ready")
        f = wire.Request(put_file=wire.PutFile(name="inventory.img", size=1000))
        sock.sendall(encode_control(FrameType.REQUEST, 5, f) + frame(FrameType.DATA, bytes(300),
                                                                     rid=5))
        wait_until(lambda: any(p.name.startswith(".half.tmp-") for p in root.iterdir()), 10.0,
                   "the upload's temporary directory")
        if how == "cancel":
            sock.sendall(encode_control(FrameType.REQUEST, 5, wire.Request(cancel=wire.Cancel())))
        elif how == "bad-commit":
            sock.sendall(encode_control(FrameType.REQUEST, 5,
                                        wire.Request(put_commit=wire.PutCommit())))
        if how != "disconnect":
            head = HEADER.unpack(recv_exactly(sock, HEADER.size))
            err = wire.Response.FromString(recv_exactly(sock, head[5])).error
            assert err.code == (wire.Error.CANCELLED if how == "cancel"
                                else wire.Error.BAD_REQUEST), err
    finally:
        sock.close()
    wait_until(lambda: not any(root.iterdir()), 10.0, "the partial upload to be removed")

    async def main() -> None:
        c = await s.connect()
        try:
            assert await c.list_images() == []
            # The name is free again.
            await c.put_image("half", s.images.parent / "src")
            assert await c.list_images() == ["half"]
        finally:
            await c.close()
    make_image(tmp_path / "src", 5, [(BASE, os.urandom(64 * PAGE_SIZE))],
               [(BASE, BASE + 64 * PAGE_SIZE)], compress=False)
    run(main())


def test_put_cancelled_by_the_client_library(start_server: Any, tmp_path: Path) -> None:
    """put_image() cancelled (task cancel) tells the server, which cleans up."""
    root = tmp_path / "store"
    root.mkdir()
    s = start_server(root)
    src = tmp_path / "src"
    make_image(src, 5, [(BASE, os.urandom(8192 * PAGE_SIZE))], [(BASE, BASE + 8192 * PAGE_SIZE)],
               compress=False)

    async def main() -> None:
        c = await s.connect()
        try:
            task = asyncio.create_task(c.put_image("half", src))
            while not any(root.iterdir()) and not task.done():
                await asyncio.sleep(0.001)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass                      # cut short, as intended
            else:
                return                    # the upload won the race: nothing to check
            await asyncio.to_thread(wait_until, lambda: not any(root.iterdir()), 10.0,
                                    "the cancelled upload to be removed")
            assert await c.list_images() == []
        finally:
            await c.close()
    run(main())


def test_pull_image(server: ServerProc, images: Path, tmp_path: Path) -> None:
    dest = tmp_path / "pulled"

    async def main() -> None:
        c = await server.connect()
        try:
            await pull_image(c, "alpha", dest)
            with pytest.raises(PageServerError, match="not empty"):
                await pull_image(c, "beta", dest)
            with pytest.raises(RemoteError):
                await pull_image(c, "no-such-image", tmp_path / "other")
        finally:
            await c.close()
    run(main())
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        p.name for p in (images / "alpha").iterdir())
    for f in (images / "alpha").iterdir():
        assert (dest / f.name).read_bytes() == f.read_bytes()
    assert dest.stat().st_mode & 0o777 == 0o700
    reader = ImageReader(dest)
    with reader.page_reader(reader.process(ALPHA_PID)) as pages:
        pages.verify()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pulled"]      # no temp dirs


# ------------------------------------------------------------------ token and TLS


def test_token(start_server: Any, images: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    s = start_server(images, "--token-file", str(token_file))

    async def main() -> None:
        c = await s.connect(token="s3cret-token")
        assert await c.list_images() == ["alpha", "beta"]
        await c.close()
        with pytest.raises(PageServerError, match="refused us: wrong token"):
            await s.connect(token="s3cret-tokem")
        with pytest.raises(PageServerError, match="refused us: this server requires a token"):
            await s.connect()
    run(main())
    s.wait_log(r"dropped \(refused: wrong token\)")
    s.wait_log(r"dropped \(refused: this server requires a token\)")


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost (openssl, bounded)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=30)
    return cert, key


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = make_cert(tmp_path, "server")
    other, _ = make_cert(tmp_path, "other")
    return cert, key, other


def test_tls(start_server: Any, images: Path, tls_files: tuple[Path, Path, Path]) -> None:
    cert, key, other_ca = tls_files
    s = start_server(images, "--tls-cert", str(cert), "--tls-key", str(key))
    assert "(TLS)" in s.wait_log("listening on")

    async def main() -> None:
        c = await s.connect(tls_ca=str(cert))
        try:
            got = await c.get_pages("alpha", ALPHA_PID, BASE, 1024)
            assert got == expected_pages(images / "alpha", ALPHA_PID, BASE, 1024)
            n = 0
            async for _ in c.stream_pages("beta", BETA_PID):
                n += 1
            assert n == len(expected_blocks(images / "beta", BETA_PID))
        finally:
            await c.close()
        with pytest.raises(PageServerError, match="TLS certificate not trusted"):
            await s.connect(tls_ca=str(other_ca), timeout=5)
        with pytest.raises(PageServerError, match="TLS") as exc:
            await s.connect(timeout=5)                 # no CA: plain TCP to a TLS server
        assert "--tls-ca" in str(exc.value)
        with pytest.raises(PageServerError, match="CA file"):
            await s.connect(tls_ca=str(cert) + ".missing")
    run(main())
    assert s.alive()


def test_tls_client_to_a_plain_server(server: ServerProc, tmp_path: Path,
                                      tls_files: tuple[Path, Path, Path]) -> None:
    async def main() -> None:
        with pytest.raises(PageServerError, match="TLS handshake failed"):
            await server.connect(tls_ca=str(tls_files[0]), timeout=5)
    run(main())
    server.wait_log(r"bad frame magic .*\(a TLS client\?")


# ------------------------------------------------------------------ bad clients


def raw_socket(s: ServerProc, hello: bool) -> socket.socket:
    sock = socket.create_connection((s.host, s.port), timeout=5)
    if hello:
        sock.sendall(ClientConnection().send_hello())
        head = recv_exactly(sock, HEADER.size)
        magic, _v, ftype, _f, _rid, length = HEADER.unpack(head)
        assert magic == MAGIC and ftype == FrameType.SERVER_HELLO
        recv_exactly(sock, length)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise AssertionError(f"connection closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def wait_dropped(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Read until the server closes (bounded); what it sent before closing."""
    deadline = time.monotonic() + timeout
    got = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"the server did not drop the connection within {timeout:.0f} s")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return got
        except TimeoutError:
            continue
        if not chunk:
            return got
        got += chunk


def frame(ftype: int, payload: bytes = b"", rid: int = 1, length: int | None = None) -> bytes:
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, ftype, 0, rid,
                       len(payload) if length is None else length) + payload


GOOD_REQUEST = encode_control(FrameType.REQUEST, 1, wire.Request(list_images=wire.ListImages()))

BAD_CLIENTS = {
    # name: (hello first?, bytes, then half-close?, the reason in the log line)
    "garbage": (False, b"GET / HTTP/1.0\r\n\r\n", False, r"bad frame magic"),
    "malformed-protobuf": (True, frame(FrameType.REQUEST, b"\x0a\xff\xff\xff\xff\x0f"), False,
                           r"malformed REQUEST"),
    "empty-request": (True, frame(FrameType.REQUEST, b""), False, r"REQUEST of no known kind"),
    "request-before-hello": (False, GOOD_REQUEST, False, r"expected HELLO first"),
    "server-frame": (True, frame(FrameType.PAGES, bytes(16)), False, r"unexpected PAGES"),
    "truncated-header": (True, GOOD_REQUEST[:9], True, r"closed in the middle of a frame"),
    "truncated-payload": (True, GOOD_REQUEST[:-1], True, r"closed in the middle of a frame"),
    "truncated-big-data": (True, frame(FrameType.DATA, length=MAX_PAYLOAD) + bytes(100_000), True,
                           r"closed in the middle of a frame"),
    "oversized-data": (True, frame(FrameType.DATA, length=MAX_PAYLOAD + 1), False, r"exceeds"),
    "oversized-request": (True, frame(FrameType.REQUEST, length=MAX_CONTROL + 1), False,
                          r"exceeds"),
    "oversized-4GiB": (False, frame(FrameType.HELLO, length=0xFFFFFFFF), False, r"exceeds"),
    "data-for-nothing": (True, frame(FrameType.DATA, b"abc", rid=77), False, r"no upload"),
}


@pytest.mark.parametrize("case", list(BAD_CLIENTS))
def test_bad_frames_drop_only_that_connection(server: ServerProc, images: Path,
                                              case: str) -> None:
    hello, data, half_close, reason = BAD_CLIENTS[case]
    before = len(server.lines())

    async def main() -> None:
        good = await server.connect()           # connected before, must not notice
        try:
            sock = await asyncio.to_thread(raw_socket, server, hello)
            try:
                await asyncio.to_thread(sock.sendall, data)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
                await asyncio.to_thread(wait_dropped, sock)
            finally:
                sock.close()
            assert await good.get_pages("alpha", ALPHA_PID, BASE, 64) == expected_pages(
                images / "alpha", ALPHA_PID, BASE, 64)
        finally:
            await good.close()
        later = await server.connect()
        try:
            assert await later.list_images() == ["alpha", "beta"]
        finally:
            await later.close()
    run(main())
    line = server.wait_log(rf"dropped \(protocol error: .*{reason}")
    assert "pages served" in line and "bytes out" in line
    new = server.lines()[before:]
    assert len([ln for ln in new if "protocol error" in ln]) == 1, new
    assert not any("Traceback" in ln for ln in new)
    assert server.alive()


def test_silent_client_is_dropped_after_the_hello_timeout(start_server: Any,
                                                          images: Path) -> None:
    s = start_server(images, "--hello-timeout", "0.5")
    sock = raw_socket(s, hello=False)
    try:
        t0 = time.monotonic()
        assert wait_dropped(sock) == b""
        assert time.monotonic() - t0 < 5
    finally:
        sock.close()
    s.wait_log(r"dropped \(no hello within 0.5 s\)")


def test_protocol_version_mismatch_is_refused_clearly(server: ServerProc) -> None:
    """A hello from a newer client gets an error reply saying which versions, then a close."""
    hello = wire.ClientHello(protocol_version=PROTOCOL_VERSION + 1)
    sock = raw_socket(server, hello=False)
    try:
        sock.sendall(encode_control(FrameType.HELLO, 0, hello))
        reply = wait_dropped(sock)
    finally:
        sock.close()
    magic, _v, ftype, _f, rid, length = HEADER.unpack(reply[:16])
    assert (magic, ftype, rid) == (MAGIC, FrameType.RESPONSE, 0)
    err = wire.Response.FromString(reply[16 : 16 + length]).error
    assert err.code == wire.Error.UNSUPPORTED and "version 2" in err.message, err


def test_client_refuses_a_server_of_another_version() -> None:
    """Against a fake server whose frames carry version 2: a clear PageServerError."""
    async def main() -> None:
        async def fake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(100)
            writer.write(struct.pack("!4sBBHII", MAGIC, 2, FrameType.SERVER_HELLO, 0, 0, 0))
            await writer.drain()
            await asyncio.sleep(1)
            writer.close()
        srv = await asyncio.start_server(fake, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            with pytest.raises(PageServerError, match="speaks protocol version 2"):
                await PageClient.connect("127.0.0.1", port, timeout=5)
        finally:
            srv.close()
    run(main())


def test_connection_refused_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]           # bound, not listening: refused

        async def main() -> None:
            with pytest.raises(PageServerError, match="connection refused"):
                await PageClient.connect("127.0.0.1", port, timeout=5)
        run(main())


def test_parse_hostport() -> None:
    assert parse_hostport("127.0.0.1:7070") == ("127.0.0.1", 7070)
    assert parse_hostport("[::1]:7070") == ("::1", 7070)
    assert parse_hostport("host.example:1") == ("host.example", 1)
    for bad in ("7070", "::1:7070", "host:", "host:99999", "[::1]", "a b:1"):
        with pytest.raises(ValueError):
            parse_hostport(bad)


# ------------------------------------------------------------------ the command


def test_session_log_lines(server: ServerProc) -> None:
    async def main() -> int:
        c = await server.connect()
        await c.get_pages("alpha", ALPHA_PID, BASE, 10)
        port: int = c.transport.get_extra_info("sockname")[1] if c.transport else 0
        await c.close()
        return port
    port = run(main())
    line = server.wait_log(rf"client 127\.0\.0\.1:{port}: session ended")
    assert re.search(r"1 requests, \d+ bytes out, 10 pages served, \d+ bytes in", line), line


def test_sigterm_stops_cleanly_with_clients_connected(start_server: Any, images: Path) -> None:
    s = start_server(images)

    async def main() -> None:
        idle = await s.connect()
        busy = await s.connect()
        try:
            stream = busy.stream_pages("alpha", ALPHA_PID)
            await stream.__anext__()
            s.proc.send_signal(signal.SIGTERM)
            status = await asyncio.to_thread(s.proc.wait, STOP_TIMEOUT)
            assert status == 0, s.text()
            try:            # the rest of the stream may have arrived before the stop
                async for _ in stream:
                    pass
            except PageServerError:
                pass
            for c in (busy, idle):
                with pytest.raises(PageServerError, match="lost|closed"):
                    await c.list_images()
        finally:
            await idle.close()
            await busy.close()
    run(main())
    lines = s.lines()
    assert lines[-1] == "pageserver: stopped", lines[-5:]
    assert sum("session" in ln for ln in lines) == 2
    assert not any("Traceback" in ln for ln in lines)


def test_sigint_stops_cleanly(start_server: Any, images: Path) -> None:
    s = start_server(images)
    s.proc.send_signal(signal.SIGINT)
    try:
        assert s.proc.wait(STOP_TIMEOUT) == 0
    except subprocess.TimeoutExpired:
        pytest.fail("pageserver ignored SIGINT")
    assert s.lines()[-1] == "pageserver: stopped"


def test_ipv6_listen(start_server: Any, images: Path) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    s = start_server(images, listen="[::1]:0")
    assert s.host == "::1"

    async def main() -> None:
        c = await PageClient.connect("::1", s.port)
        try:
            assert await c.list_images() == ["alpha", "beta"]
        finally:
            await c.close()
    run(main())


def pageserver_cmd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "pageserver.cli", *args], capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)


def one_error(res: subprocess.CompletedProcess[str]) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert len(lines) == 1 and lines[0].startswith("pageserver: error: "), res.stderr
    return lines[0]


def test_bad_options_are_one_line_errors(images: Path, tmp_path: Path) -> None:
    assert "does not exist" in one_error(pageserver_cmd("-D", str(tmp_path / "none")))
    (tmp_path / "file").write_text("x")
    assert "not a directory" in one_error(pageserver_cmd("-D", str(tmp_path / "file")))
    assert "expected HOST:PORT" in one_error(
        pageserver_cmd("-D", str(images), "--listen", "7070"))
    assert "--tls-cert and --tls-key" in one_error(
        pageserver_cmd("-D", str(images), "--tls-cert", str(tmp_path / "file")))
    assert "no such file" in one_error(pageserver_cmd(
        "-D", str(images), "--tls-cert", str(tmp_path / "c"), "--tls-key", str(tmp_path / "k")))
    assert "cannot load" in one_error(pageserver_cmd(
        "-D", str(images), "--tls-cert", str(tmp_path / "file"), "--tls-key",
        str(tmp_path / "file")))
    assert "--token-file" in one_error(
        pageserver_cmd("-D", str(images), "--token-file", str(tmp_path / "none")))
    (tmp_path / "empty").write_text("\n")
    assert "is empty" in one_error(
        pageserver_cmd("-D", str(images), "--token-file", str(tmp_path / "empty")))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_error(pageserver_cmd("-D", str(images), "--listen", f"127.0.0.1:{port}",
                                        "--listen", "127.0.0.1:0"))
        assert f"cannot listen on 127.0.0.1:{port}: address already in use" in line, line
