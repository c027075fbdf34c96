"""Image chains: pre-dump rounds and a final `dump --prev`, each image
storing only the pages written since its parent.

An image with a parent names it (a path relative to the image) in its
inventory, and lists per process the page runs it inherits: present in the
process and not written since the parent was taken. A page's content is the
newest image's that stores it, looked up only through inherited runs; a page
no image of the chain provides is zero. The reader below gives restore (eager
and lazy) one flat view: each process's page runs, and a page reader that
fetches every run from the image holding it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

from . import lazarus_pb2 as pb
from . import ranges
from .pagestore import PAGE_SIZE, ImageError, PageStoreReader
from .store import ImageReader, ImageWriter, PageReader

MAX_CHAIN = 64     # a longer one is a loop or a mistake


def parent_dir(directory: Path, inv: pb.Inventory) -> Path:
    return (directory / inv.parent).resolve()


def resolve_chain(directory: Path) -> list[ImageReader]:
    """The image and its ancestors, newest first, checked to be one process's."""
    head = ImageReader(directory)
    chain = [head]
    inv = head.inventory()
    root = _root_process(head)
    seen = {directory.resolve()}
    while inv.parent:
        parent = parent_dir(chain[-1].directory, inv)
        if parent in seen or len(chain) >= MAX_CHAIN:
            raise ImageError(f"{directory}: the chain of parent images loops")
        seen.add(parent)
        if not (parent / "inventory.img").is_file():
            raise ImageError(f"{chain[-1].directory}: its parent image {inv.parent} is missing "
                             "(chain broken)")
        reader = ImageReader(parent)
        pinv = reader.inventory()
        proot = _root_process(reader)
        if pinv.root_pid != root.pid or proot.start_time != root.start_time:
            raise ImageError(f"{chain[-1].directory}: its parent image {parent} is of another "
                             "process (chain broken)")
        chain.append(reader)
        inv = pinv
    return chain


def _root_process(reader: ImageReader) -> pb.ProcessImage:
    inv = reader.inventory()
    return reader.process(inv.root_pid)


class ChainPageReader:
    """Pages of one process through a chain: `segments` are (start, end,
    layer) runs, each inside one stored block of image `layer`."""

    def __init__(self, name: str, readers: list[PageStoreReader],
                 segments: list[tuple[int, int, int]]) -> None:
        self.name = name
        self._readers = readers
        self.segments = segments
        self._starts = [s for s, _, _ in segments]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for r in self._readers:
            r.close()

    def verify(self) -> None:
        for r in self._readers:
            r.verify()

    def layer_reader(self, layer: int) -> PageStoreReader:
        return self._readers[layer]

    def iter_blocks(self) -> Iterator[tuple[int, bytes]]:
        for s, e, layer in self.segments:
            yield s, self._readers[layer].read_range(s, (e - s) // PAGE_SIZE)

    def read_range(self, vaddr: int, nr_pages: int) -> bytes:
        if vaddr % PAGE_SIZE or nr_pages < 0:
            raise ValueError(f"read_range({vaddr:#x}, {nr_pages}): bad range")
        end = vaddr + nr_pages * PAGE_SIZE
        out = bytearray(nr_pages * PAGE_SIZE)
        i = max(bisect.bisect_right(self._starts, vaddr) - 1, 0)
        while i < len(self.segments) and self.segments[i][0] < end:
            s, e, layer = self.segments[i]
            lo, hi = max(s, vaddr), min(e, end)
            if lo < hi:
                out[lo - vaddr:hi - vaddr] = \
                    self._readers[layer].read_range(lo, (hi - lo) // PAGE_SIZE)
            i += 1
        return bytes(out)


class ChainReader(ImageReader):
    """The newest image of a chain, read as if it held every page itself."""

    def __init__(self, directory: Path) -> None:
        self.chain = resolve_chain(Path(directory))
        super().__init__(directory)
        self._segments: dict[int, list[tuple[int, int, int]]] = {}

    def segments(self, pid: int) -> list[tuple[int, int, int]]:
        if pid not in self._segments:
            out: list[tuple[int, int, int]] = []
            want: list[tuple[int, int]] | None = None    # None: every address
            for layer, reader in enumerate(self.chain):
                try:
                    proc = reader.process_raw(pid)
                except ImageError:
                    break      # the process is not in the older images
                blocks = sorted((b.vaddr, b.vaddr + b.nr_pages * PAGE_SIZE)
                                for b in proc.pages)
                take = blocks if want is None else ranges.intersect(blocks, want)
                out.extend((s, e, layer) for s, e in take)
                inherited = ranges.normalize(
                    (r.vaddr, r.vaddr + r.nr_pages * PAGE_SIZE) for r in proc.inherited)
                want = inherited if want is None else ranges.intersect(inherited, want)
                if not want:
                    break
            out.sort()
            self._segments[pid] = out
        return self._segments[pid]

    def process(self, pid: int) -> pb.ProcessImage:
        """The newest image's process, its block table replaced by the runs
        the chain provides (offsets are meaningless: read through page_reader)."""
        proc = super().process(pid)
        segs = self.segments(pid)
        del proc.pages[:]
        proc.pages.extend(pb.PageBlock(vaddr=s, nr_pages=(e - s) // PAGE_SIZE)
                          for s, e, _ in segs)
        proc.pages_bytes = sum(e - s for s, e, _ in segs)
        del proc.inherited[:]
        return proc

    def page_reader(self, proc: pb.ProcessImage) -> PageReader:
        readers: list[PageStoreReader] = []
        try:
            for reader in self.chain:
                try:
                    raw = reader.process_raw(proc.pid)
                except ImageError:
                    break
                readers.append(reader.raw_page_reader(raw))
        except BaseException:
            for r in readers:
                r.close()
            raise
        return ChainPageReader(f"pages-{proc.pid}.img (chain of {len(self.chain)})",
                               readers, self.segments(proc.pid))


def open_image(directory: Path) -> ImageReader:
    """A reader for an image, or for the chain it ends."""
    reader = ImageReader(directory)
    if reader.inventory().parent:
        return ChainReader(directory)
    return reader


def flatten_own_chain(src: Path, dst: Path, compress: bool = True) -> None:
    """Write the chain ending at `src` as one stand-alone image at `dst`,
    cheaply: each process's pages file is the oldest image's, hard-linked,
    with what the newer images add appended to it (their whole blocks copied
    as stored, split ones re-encoded). The old blocks stay where they are,
    so no gigabyte is copied. This appends to the oldest image's pages
    files: only for a chain that is one's own to change (`migrate`'s)."""
    import os

    from .pagestore import PageStoreAppender

    chain = ChainReader(src)
    inv = pb.Inventory()
    inv.CopyFrom(chain.inventory())
    inv.parent = ""
    with ImageWriter(dst) as writer:
        for pid in inv.pids:
            proc = chain.process(pid)
            layers: list[pb.ProcessImage] = []
            for reader in chain.chain:
                try:
                    layers.append(reader.process_raw(pid))
                except ImageError:
                    break
            target = writer.pages_path(pid)
            base = len(layers) - 1
            if layers and layers[base].pages:
                os.link(chain.chain[base].directory / layers[base].pages_file, target)
            by_start = [{b.vaddr: b for b in layer.pages} for layer in layers]
            blocks: list[pb.PageBlock] = []
            with chain.page_reader(proc) as pages, \
                    PageStoreAppender(target, compress) as out:
                assert isinstance(pages, ChainPageReader)
                for s, e, layer in pages.segments:
                    b = by_start[layer].get(s)
                    whole = b is not None and b.vaddr + b.nr_pages * PAGE_SIZE == e
                    if whole and layer == base:
                        assert b is not None
                        blocks.append(b)          # already in the file, where it is
                    elif whole:
                        assert b is not None
                        out.add_stored(b, pages.layer_reader(layer).read_stored(b))
                    else:
                        out.add(s, pages.read_range(s, (e - s) // PAGE_SIZE))
            blocks.extend(out.blocks)
            del proc.pages[:]
            proc.pages.extend(sorted(blocks, key=lambda b: b.vaddr))
            proc.pages_file = target.name
            writer.write_process(proc)
        writer.write_inventory(inv)
        writer.commit()
