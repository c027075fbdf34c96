"""Pages served from a live process rather than from a pages file: the
stopped copy-on-write twin a remote fork leaves behind (`lazarus fork`).

A block's ``offset`` is its virtual address: the twin's memory file
(/proc/TWIN/mem) is read like a pages file, raw, at that offset. Blocks copied
while the source was frozen (memory the twin cannot hold as it was) come
from those copies instead. The entry counts the pages it has sent at least
once, and per restore (the id its connections give in their hello) the
pages that restore received, so its owner knows when the twin is no longer
needed.
"""

from __future__ import annotations

import bisect
import os
import threading
import zlib

from core.images import pb

from . import wire_pb2 as wire
from .catalog import CatalogError, Piece, ProcessPages, Scratch, _merge_vmas
from .protocol import PAGE_SIZE


class LiveProcessPages(ProcessPages):
    """The page index of one forked process, its pages read from its twin."""

    def __init__(self, image: str, pid: int, mem_fd: int, proc: pb.ProcessImage,
                 frozen: dict[int, bytes]) -> None:
        blocks = sorted(proc.pages, key=lambda b: b.vaddr)
        vmas = _merge_vmas(proc)
        super().__init__(image=image, pid=pid, ident=(0, 0), fd=mem_fd, by_vaddr=blocks,
                         starts=[b.vaddr for b in blocks], by_offset=list(range(len(blocks))),
                         vmas=vmas, vma_starts=[v[0] for v in vmas],
                         # Nothing stored to check: pages get a crc as they are sent.
                         verified=bytearray(b"\x01" * len(blocks)))
        self.frozen = frozen
        self.frozen_starts = sorted(frozen)
        self.first_page: list[int] = []
        total = 0
        for b in blocks:
            self.first_page.append(total)
            total += b.nr_pages
        self.total_pages = total
        self.sent = bytearray(total)
        self.pages_sent = 0
        # Per restore id: the pages it received, and how many ([count]).
        self.by_restore: dict[str, tuple[bytearray, list[int]]] = {}
        self._lock = threading.Lock()     # streams mark pages from the read pool

    @property
    def all_sent(self) -> bool:
        return self.pages_sent >= self.total_pages

    def _fill(self, fd: int, buf: memoryview, offset: int) -> None:
        """buf = memory [offset, offset + len(buf)): frozen copies where there
        are some, the twin's memory elsewhere."""
        pos, end = offset, offset + len(buf)
        i = max(bisect.bisect_right(self.frozen_starts, pos) - 1, 0)
        while pos < end:
            # The next frozen copy that ends after pos, if it starts before end.
            while i < len(self.frozen_starts) and \
                    self.frozen_starts[i] + len(self.frozen[self.frozen_starts[i]]) <= pos:
                i += 1
            start = self.frozen_starts[i] if i < len(self.frozen_starts) else end
            if start > pos:
                upto = min(start, end)
                self._read_twin(fd, buf[pos - offset : upto - offset], pos)
                pos = upto
                continue
            data = self.frozen[start]
            upto = min(start + len(data), end)
            buf[pos - offset : upto - offset] = data[pos - start : upto - start]
            pos = upto

    def _read_twin(self, fd: int, buf: memoryview, addr: int) -> None:
        try:
            got = os.preadv(fd, [buf], addr)
        except OSError as e:
            got, why = -1, e.strerror
        else:
            why = "short read"
        if got != len(buf):
            raise CatalogError(wire.Error.INTERNAL,
                               f"live image {self.image}: cannot read the memory of process "
                               f"{self.pid} at {addr:#x} from its twin ({why})")

    def _pread(self, fd: int, n: int, offset: int,
               scratch: Scratch | None = None) -> bytes | memoryview:
        mv = scratch.take(n) if scratch is not None else None
        if mv is None:
            mv = memoryview(bytearray(n))
        self._fill(fd, mv, offset)
        return mv

    def complete_for(self, who: str) -> bool:
        """Whether the restore `who` received every page of this process."""
        if not self.total_pages:
            return True
        seen = self.by_restore.get(who)
        return seen is not None and seen[1][0] >= self.total_pages

    def _set(self, bitmap: bytearray, pieces: list[Piece]) -> int:
        """Mark the pages of `pieces` in `bitmap`; how many were not yet."""
        new = 0
        for p in pieces:
            if p.data is None:
                continue
            i = bisect.bisect_right(self.starts, p.vaddr) - 1
            first = self.first_page[i] + (p.vaddr - self.by_vaddr[i].vaddr) // PAGE_SIZE
            n = bitmap[first : first + p.nr_pages].count(0)
            if n:
                bitmap[first : first + p.nr_pages] = b"\x01" * p.nr_pages
                new += n
        return new

    def note_sent(self, who: str, pieces: list[Piece]) -> None:
        with self._lock:
            seen = self.by_restore.get(who)
            if seen is None:
                seen = self.by_restore[who] = (bytearray(self.total_pages), [0])
            seen[1][0] += self._set(seen[0], pieces)

    def _mark(self, pieces: list[Piece]) -> list[Piece]:
        """Give each piece a crc and count the pages sent for the first time."""
        with self._lock:
            for p in pieces:
                if p.data is not None:
                    p.crc32 = zlib.crc32(p.data)
            self.pages_sent += self._set(self.sent, pieces)
        return pieces

    def get_range(self, vaddr: int, nr_pages: int, lz4_ok: bool,
                  scratch: Scratch | None = None) -> list[Piece]:
        return self._mark(super().get_range(vaddr, nr_pages, False, scratch))

    def sendable_as_stored(self, group: list[int], lz4_ok: bool) -> bool:
        return False     # no sendfile from a process's memory

    def stream_pieces(self, fd: int, group: list[int], lz4_ok: bool,
                      scratch: Scratch | None = None) -> list[Piece]:
        return self._mark(super().stream_pieces(fd, group, False, scratch))
