"""File-format tests for core.images: pages files and image directories."""

import json
import os
import platform
import random
import stat
from pathlib import Path

import pytest

from core.images import (
    FORMAT_VERSION,
    PAGE_SIZE,
    ImageError,
    ImageReader,
    ImageWriter,
    PageStoreReader,
    PageStoreWriter,
    describe_image,
    format_description,
    pb,
)

BASE = 0x7F12_0000_0000


def make_pages(layout: str, seed: int = 1) -> bytes:
    """One page per letter: R random, C compressible, Z zero."""
    rng = random.Random(seed)
    pages = []
    for i, kind in enumerate(layout):
        if kind == "Z":
            pages.append(bytes(PAGE_SIZE))
        elif kind == "C":
            pages.append((f"page {i} ".encode() * PAGE_SIZE)[:PAGE_SIZE])
        else:
            # A leading non-zero byte so that a random page is never all zero.
            pages.append(b"\x01" + rng.randbytes(PAGE_SIZE - 1))
    return b"".join(pages)


def write_pages(path: Path, data: bytes, compress: bool, block_pages: int = 4) -> PageStoreWriter:
    with PageStoreWriter(path, compress=compress, block_pages=block_pages) as w:
        w.add(BASE, data)
    return w


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------ page store


@pytest.mark.parametrize("compress", [True, False])
def test_pagestore_round_trip(tmp_path: Path, compress: bool) -> None:
    layout = "RRCCCCCRZZRZCCZZZZZZR"
    data = make_pages(layout)
    path = tmp_path / "pages-1.img"
    w = write_pages(path, data, compress)

    # Runs of non-zero pages, cut at block_pages=4; holes never stored.
    assert [((b.vaddr - BASE) // PAGE_SIZE, b.nr_pages) for b in w.blocks] == [
        (0, 4),
        (4, 4),
        (10, 1),
        (12, 2),
        (20, 1),
    ]
    assert w.zero_pages == layout.count("Z")
    assert w.pages_stored == len(layout) - layout.count("Z")
    assert w.bytes_raw == w.pages_stored * PAGE_SIZE
    assert w.bytes_written == path.stat().st_size
    assert mode(path) == 0o600
    if compress:
        # The block of compressible pages shrinks; the lone random page does not.
        assert w.blocks[1].lz4 and w.bytes_written < w.bytes_raw
        assert not w.blocks[2].lz4
    else:
        assert not any(b.lz4 for b in w.blocks)
        assert w.bytes_written == w.bytes_raw

    with PageStoreReader(path, w.blocks) as r:
        r.verify()
        got = list(r.iter_blocks())
        assert [v for v, _ in got] == [b.vaddr for b in w.blocks]
        for vaddr, chunk in got:
            off = vaddr - BASE
            assert chunk == data[off : off + len(chunk)]
        # Holes read back as zeros.
        assert r.read_range(BASE, len(layout)) == data


def test_read_range_partial_and_holes(tmp_path: Path) -> None:
    layout = "ZRRRRRRZZCCZ"
    data = make_pages(layout)
    w = write_pages(tmp_path / "p.img", data, compress=True, block_pages=3)
    with PageStoreReader(tmp_path / "p.img", w.blocks) as r:
        for first, n in [(0, 1), (2, 3), (3, 7), (5, 5), (6, 6), (11, 1), (0, 12)]:
            expected = data[first * PAGE_SIZE : (first + n) * PAGE_SIZE]
            assert r.read_range(BASE + first * PAGE_SIZE, n) == expected, (first, n)
        # Entirely outside the stored range.
        assert r.read_range(BASE - 4 * PAGE_SIZE, 2) == bytes(2 * PAGE_SIZE)
        assert r.read_range(BASE + 100 * PAGE_SIZE, 1) == bytes(PAGE_SIZE)
        assert r.read_range(BASE, 0) == b""


def test_add_accepts_buffers_and_appends(tmp_path: Path) -> None:
    data = make_pages("RRZR")
    path = tmp_path / "p.img"
    with PageStoreWriter(path, compress=False) as w:
        w.add(BASE, data)
        w.add(BASE + 0x10000, bytearray(data))
        w.add(BASE + 0x20000, memoryview(bytearray(data)).cast("Q")[512:])
    assert [b.vaddr - BASE for b in w.blocks] == [
        0,
        3 * PAGE_SIZE,
        0x10000,
        0x10000 + 3 * PAGE_SIZE,
        0x20000,
        0x20000 + 2 * PAGE_SIZE,
    ]
    with PageStoreReader(path, w.blocks) as r:
        assert r.read_range(BASE + 0x20000, 3) == data[PAGE_SIZE:]


def test_add_all_zero(tmp_path: Path) -> None:
    with PageStoreWriter(tmp_path / "p.img", compress=True) as w:
        w.add(BASE, bytes(200 * PAGE_SIZE))
    assert w.blocks == [] and w.zero_pages == 200 and w.bytes_written == 0


def test_add_rejects_unaligned(tmp_path: Path) -> None:
    with PageStoreWriter(tmp_path / "p.img", compress=False) as w:
        with pytest.raises(ValueError):
            w.add(BASE + 1, bytes(PAGE_SIZE))
        with pytest.raises(ValueError):
            w.add(BASE, bytes(PAGE_SIZE + 1))


@pytest.mark.parametrize("compress", [True, False])
def test_truncated_pages_file(tmp_path: Path, compress: bool) -> None:
    path = tmp_path / "pages-1234.img"
    w = write_pages(path, make_pages("CCCCRRRR"), compress)
    os.truncate(path, w.bytes_written - 100)
    with PageStoreReader(path, w.blocks) as r:
        with pytest.raises(ImageError, match=r"pages-1234\.img is truncated"):
            r.verify()
        with pytest.raises(ImageError, match="truncated"):
            list(r.iter_blocks())
        with pytest.raises(ImageError, match="truncated"):
            r.read_range(BASE, 8)


@pytest.mark.parametrize("layout,lz4", [("RRRR", False), ("CCCC", True)])
def test_flipped_byte_detected(tmp_path: Path, layout: str, lz4: bool) -> None:
    path = tmp_path / "pages-1234.img"
    w = write_pages(path, make_pages(layout), compress=True)
    (block,) = w.blocks
    assert block.lz4 == lz4
    raw = bytearray(path.read_bytes())
    raw[block.offset + block.length // 2] ^= 0x40
    path.write_bytes(raw)
    with PageStoreReader(path, w.blocks) as r:
        with pytest.raises(ImageError, match=r"pages-1234\.img: block at 0x7f12.*corrupted"):
            r.verify()
        with pytest.raises(ImageError, match="corrupted"):
            r.read_range(BASE, 1)


def test_bad_block_table(tmp_path: Path) -> None:
    path = tmp_path / "p.img"
    w = write_pages(path, make_pages("RRRRRR"), compress=False)
    overlapping = [pb.PageBlock(), pb.PageBlock()]
    overlapping[0].CopyFrom(w.blocks[0])
    overlapping[1].CopyFrom(w.blocks[1])
    overlapping[1].vaddr -= PAGE_SIZE
    with PageStoreReader(path, overlapping) as r, pytest.raises(ImageError, match="overlap"):
        r.verify()
    wrong_len = pb.PageBlock()
    wrong_len.CopyFrom(w.blocks[0])
    wrong_len.nr_pages += 1
    with PageStoreReader(path, [wrong_len]) as r, pytest.raises(ImageError, match="corrupted"):
        r.verify()


def test_missing_pages_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"pages-9\.img is missing"):
        PageStoreReader(tmp_path / "pages-9.img", [])


# ------------------------------------------------------------ image directory


def inventory(**overrides: object) -> pb.Inventory:
    inv = pb.Inventory(
        format_version=FORMAT_VERSION,
        tool_version="0.1.0",
        kernel_release=os.uname().release,
        arch=platform.machine(),
        created_unix_ns=1_700_000_000 * 10**9,
        root_pid=1234,
        pids=[1234],
        compression="lz4",
        page_size=PAGE_SIZE,
    )
    for key, value in overrides.items():
        setattr(inv, key, value)
    return inv


def make_image(directory: Path, inv: pb.Inventory | None = None) -> bytes:
    """A one-process image; returns the process memory it stores."""
    data = make_pages("RCCZZR")
    with ImageWriter(directory) as iw:
        with PageStoreWriter(iw.pages_path(1234), compress=True) as pw:
            pw.add(BASE, data)
        proc = pb.ProcessImage(pid=1234, ppid=1, comm="sleepy", cwd="/tmp")
        proc.mm.exe = "/usr/bin/sleep"
        proc.vmas.add(
            start=BASE, end=BASE + len(data), prot=3, kind=pb.Vma.ANON_PRIVATE, name="[heap]"
        )
        proc.fds.add(fd=0, kind=pb.FileDesc.DEV_NULL, path="/dev/null", flags=0o100000)
        proc.threads.add(tid=1234)
        proc.pages.extend(pw.blocks)
        proc.pages_bytes = pw.bytes_raw
        iw.write_process(proc)
        iw.write_inventory(inv if inv is not None else inventory())
        iw.commit()
    return data


def test_image_round_trip(tmp_path: Path) -> None:
    d = tmp_path / "img"
    data = make_image(d)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img"]
    assert mode(d) == 0o700
    for f in d.iterdir():
        assert mode(f) == 0o600, f.name
    assert sorted(f.name for f in d.iterdir()) == [
        "inventory.img",
        "pages-1234.img",
        "process-1234.img",
    ]

    r = ImageReader(d)
    assert r.inventory().root_pid == 1234
    r.check_kernel()
    (proc,) = r.processes()
    assert proc.comm == "sleepy" and proc.pages_file == "pages-1234.img"
    with r.page_reader(proc) as pr:
        pr.verify()
        assert pr.read_range(BASE, 6) == data

    desc = describe_image(d)
    (p,) = json.loads(json.dumps(desc))["processes"]
    assert p["pages_stored"] == 4 and p["nr_vmas"] == 1 and p["threads"] == 1
    assert p["vmas"][0]["prot"] == "rw-" and p["fds"][0]["flags"] == "0100000"
    text = format_description(desc)
    assert "sleepy" in text and "[heap]" in text and "/dev/null" in text


def test_writer_refuses_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "x").touch()
    with pytest.raises(ImageError, match="exists and is not empty"):
        ImageWriter(tmp_path / "img")
    (tmp_path / "file").touch()
    with pytest.raises(ImageError, match="is not a directory"):
        ImageWriter(tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "img"]


def test_writer_accepts_empty_existing_dir(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir(mode=0o755)
    make_image(tmp_path / "img")
    assert mode(tmp_path / "img") == 0o700
    assert ImageReader(tmp_path / "img").process(1234).comm == "sleepy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img"]


def test_writer_abort_leaves_nothing(tmp_path: Path) -> None:
    iw = ImageWriter(tmp_path / "img")
    assert iw.tmp_dir.parent == tmp_path and iw.tmp_dir.name.startswith("img.tmp-")
    assert mode(iw.tmp_dir) == 0o700
    with PageStoreWriter(iw.pages_path(1), compress=False) as pw:
        pw.add(0, make_pages("R"))
    iw.write_inventory(inventory())
    iw.abort()
    iw.abort()
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(RuntimeError), ImageWriter(tmp_path / "img") as iw:
        iw.write_inventory(inventory())
        raise RuntimeError("dump failed")
    assert list(tmp_path.iterdir()) == []

    with ImageWriter(tmp_path / "img") as iw:
        iw.write_inventory(inventory())  # no commit: nothing is published
    assert list(tmp_path.iterdir()) == []


def test_abort_after_commit_keeps_image(tmp_path: Path) -> None:
    iw = ImageWriter(tmp_path / "img")
    iw.write_inventory(inventory())
    iw.commit()
    iw.abort()
    assert (tmp_path / "img" / "inventory.img").exists()


def test_commit_needs_inventory(tmp_path: Path) -> None:
    with ImageWriter(tmp_path / "img") as iw, pytest.raises(ImageError, match="inventory"):
        iw.commit()
    assert list(tmp_path.iterdir()) == []


def test_reader_missing_dir_and_inventory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        ImageReader(tmp_path / "nope")
    (tmp_path / "file").touch()
    with pytest.raises(ImageError, match="is not a directory"):
        ImageReader(tmp_path / "file")
    with pytest.raises(ImageError, match="inventory.img is missing: .* is not a lazarus image"):
        ImageReader(tmp_path)


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not a protobuf at all\n",
        bytes(range(256)),
        b"\xff" * 64,
        inventory().SerializeToString()[:12],  # cut inside a field
        inventory().SerializeToString()[:2],  # format_version only
        b"",
    ],
)
def test_reader_garbage_inventory(tmp_path: Path, garbage: bytes) -> None:
    (tmp_path / "inventory.img").write_bytes(garbage)
    with pytest.raises(ImageError, match=r"inventory\.img is not a valid image"):
        ImageReader(tmp_path).inventory()


def test_reader_incompatible_inventory(tmp_path: Path) -> None:
    inv_file = tmp_path / "inventory.img"
    inv_file.write_bytes(inventory(format_version=FORMAT_VERSION + 1).SerializeToString())
    with pytest.raises(
        ImageError,
        match=f"image format version {FORMAT_VERSION + 1}, this lazarus reads {FORMAT_VERSION}",
    ):
        ImageReader(tmp_path).inventory()
    inv_file.write_bytes(inventory(arch="pdp11").SerializeToString())
    with pytest.raises(ImageError, match="made on pdp11"):
        ImageReader(tmp_path).inventory()
    inv_file.write_bytes(inventory(page_size=PAGE_SIZE * 4).SerializeToString())
    with pytest.raises(ImageError, match="page size"):
        ImageReader(tmp_path).inventory()


def test_reader_other_kernel(tmp_path: Path) -> None:
    d = tmp_path / "img"
    make_image(d, inventory(kernel_release="2.6.32-ancient"))
    r = ImageReader(d)
    r.inventory()  # readable: only restore needs the same kernel
    with pytest.raises(
        ImageError,
        match=f"made on kernel 2.6.32-ancient, this is kernel {os.uname().release}: ",
    ):
        r.check_kernel()
    assert describe_image(d)["kernel"] == "2.6.32-ancient"


def test_reader_bad_process_files(tmp_path: Path) -> None:
    d = tmp_path / "img"
    make_image(d)
    r = ImageReader(d)
    with pytest.raises(ImageError, match=r"process-99\.img is missing"):
        r.process(99)
    (d / "process-1234.img").write_bytes(b"\xff" * 32)
    with pytest.raises(ImageError, match=r"process-1234\.img is not a valid image"):
        r.processes()
    with pytest.raises(ImageError, match="bad pages file name"):
        r.page_reader(pb.ProcessImage(pid=1, pages_file="../../etc/shadow"))
