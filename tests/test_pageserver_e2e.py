"""The page server with images of real processes, made by the real `lazarus dump`.

Three clients at once on one server: two read different images (page ranges
and bulk streams, checked against the local image), the third pulls one of
them whole; the pulled image is byte-identical and `lazarus restore` brings
its process back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from core.images import PAGE_SIZE, ImageReader
from pageserver.client import PageClient, pull_image
from tests.conftest import (
    Procs,
    assert_exact,
    dump,
    is_alive,
    read_counter,
    restore_detached,
    wait_lines,
)
from tests.test_pageserver import ServerProc, run


def local_image(image: Path) -> dict[int, tuple[list[tuple[int, int]], dict[int, bytes]]]:
    """pid -> (VMAs, stored blocks) of a local image."""
    reader = ImageReader(image)
    out: dict[int, tuple[list[tuple[int, int]], dict[int, bytes]]] = {}
    for proc in reader.processes():
        with reader.page_reader(proc) as pages:
            out[proc.pid] = ([(v.start, v.end) for v in proc.vmas], dict(pages.iter_blocks()))
    return out


def in_vma(vmas: list[tuple[int, int]], a: int, b: int) -> bool:
    return any(s <= a and b <= e for s, e in vmas)


async def check_image(client: PageClient, name: str, image: Path) -> int:
    """Every stored block by GET (with a hole page on each side when inside a VMA)
    and by the bulk stream, compared with the local image. Returns the pages checked."""
    checked = 0
    for pid, (vmas, blocks) in local_image(image).items():

        for vaddr, data in blocks.items():
            lo, hi = vaddr, vaddr + len(data)
            if in_vma(vmas, lo - PAGE_SIZE, hi):
                lo -= PAGE_SIZE
            if in_vma(vmas, lo, hi + PAGE_SIZE):
                hi += PAGE_SIZE
            got = await client.get_pages(name, pid, lo, (hi - lo) // PAGE_SIZE)
            assert got[vaddr - lo : vaddr - lo + len(data)] == data, f"{name} {vaddr:#x}"
            checked += (hi - lo) // PAGE_SIZE
        streamed = {v: d async for v, d in client.stream_pages(name, pid)}
        assert streamed == blocks, f"stream of {name}/{pid} differs from the image"
        # The metadata files are served as they are.
        for fname in ("inventory.img", f"process-{pid}.img"):
            assert await client.get_file(name, fname) == (image / fname).read_bytes()
    return checked


def test_three_clients_read_two_real_images_and_pull_one(
        procs: Procs, tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    outs = {name: tmp_path / f"{name}.txt" for name in ("one", "two")}
    workloads = {name: procs.python("counter", str(out), name=name)
                 for name, out in outs.items()}
    for name, w in workloads.items():
        wait_lines(outs[name], 5)
        dump(w, root / name, *(["--compress", "none"] if name == "two" else []))
    at_dump = len(read_counter(outs["one"]))
    server = ServerProc(root, tmp_path / "pageserver.log")
    pulled = tmp_path / "pulled"

    async def main() -> tuple[int, int, None]:
        clients = [await server.connect(lz4=k != 1) for k in range(3)]
        try:
            return await asyncio.gather(
                check_image(clients[0], "one", root / "one"),
                check_image(clients[1], "two", root / "two"),
                pull_image(clients[2], "one", pulled),
            )
        finally:
            for c in clients:
                await c.close()
    try:
        checked = run(main(), timeout=120)
    finally:
        assert server.stop() == 0
    assert checked[0] > 0 and checked[1] > 0

    assert sorted(p.name for p in pulled.iterdir()) == sorted(
        p.name for p in (root / "one").iterdir())
    for f in (root / "one").iterdir():
        assert (pulled / f.name).read_bytes() == f.read_bytes(), f"pulled {f.name} differs"
    sessions = [ln for ln in server.lines() if "session ended" in ln]
    assert len(sessions) == 3 and all("pages served" in ln for ln in sessions), sessions

    # The pulled image restores: same PID, the counter goes on with no gap, no repeat.
    w = workloads["one"]
    pid = restore_detached(pulled, tmp_path / "pid")
    assert pid == w.pid and is_alive(pid)
    values = wait_lines(outs["one"], at_dump + 5)
    assert_exact(values)
    assert is_alive(pid)
