"""Pages files: the memory contents of one process.

A pages file is a plain concatenation of blocks; the block table (vaddr, size,
offset, checksum, ...) lives in the ProcessImage as pb.PageBlock messages, so
the pages file itself carries no framing. All-zero pages are never stored:
they are holes that restore leaves to the kernel's zero-fill.
"""

from __future__ import annotations

import bisect
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import lz4.block

from . import lazarus_pb2 as pb

FORMAT_VERSION = 1
PAGE_SIZE: int = os.sysconf("SC_PAGE_SIZE")

# One page of zeros, compared against with bytes.startswith(): a memcmp with
# no copy of the page being tested.
_ZERO_PAGE = bytes(PAGE_SIZE)

# PageBlock.length and nr_pages are uint32.
_MAX_BLOCK_BYTES = (1 << 32) - 1


class ImageError(Exception):
    """Any problem with an image: missing, corrupted, truncated, incompatible.

    The message is a single line naming the file and the problem, fit to show
    to the user as is.
    """


class PageStoreWriter:
    """Writes one pages file, building its block table in ``self.blocks``."""

    def __init__(self, path: Path, compress: bool, block_pages: int = 64) -> None:
        if block_pages < 1 or block_pages * PAGE_SIZE > _MAX_BLOCK_BYTES:
            raise ValueError(f"block_pages must be 1..{_MAX_BLOCK_BYTES // PAGE_SIZE}")
        self.path = Path(path)
        self.compress = compress
        self.block_pages = block_pages
        self.blocks: list[pb.PageBlock] = []
        self.pages_stored = 0
        self.bytes_raw = 0
        self.bytes_written = 0
        self.zero_pages = 0
        # Preallocated so that a whole all-zero scan chunk is one memcmp.
        self._zero_block = bytes(block_pages * PAGE_SIZE)
        try:
            # 0600: the file holds process memory, which holds secrets.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise ImageError(f"{self.path.name}: cannot create: {e.strerror}") from e
        # Buffered so that small blocks coalesce; blocks larger than the buffer
        # go straight to write(2) without an extra copy.
        self._file = open(fd, "wb")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            # The image is being abandoned: no point syncing it.
            self._file.close()

    def add(self, vaddr: int, data: bytes | bytearray | memoryview) -> None:
        """Store the pages of ``data``, which starts at ``vaddr``.

        ``data`` must be a whole number of pages. Zero pages become holes; the
        rest is cut into blocks of at most ``block_pages`` contiguous pages.
        """
        if self._file.closed:
            raise RuntimeError(f"{self.path.name}: add() after close()")
        mv = memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        if vaddr % PAGE_SIZE or len(mv) % PAGE_SIZE:
            raise ValueError(
                f"add({vaddr:#x}, {len(mv)} bytes): address and size must be page-aligned"
            )
        npages = len(mv) // PAGE_SIZE
        stored = 0
        try:
            for first, end in self._nonzero_runs(mv, npages):
                stored += end - first
                for b in range(first, end, self.block_pages):
                    be = min(b + self.block_pages, end)
                    self._write_block(
                        vaddr + b * PAGE_SIZE, be - b, mv[b * PAGE_SIZE : be * PAGE_SIZE]
                    )
        except OSError as e:
            raise ImageError(f"{self.path.name}: write failed: {e.strerror}") from e
        self.zero_pages += npages - stored

    def _nonzero_runs(self, mv: memoryview, npages: int) -> list[tuple[int, int]]:
        """Return the [first, end) page index ranges of non-zero pages."""
        ps = PAGE_SIZE
        step = self.block_pages
        zero_block = self._zero_block
        is_zero = _ZERO_PAGE.startswith
        runs: list[tuple[int, int]] = []
        run_start = -1
        for c in range(0, npages, step):
            ce = min(c + step, npages)
            if zero_block.startswith(mv[c * ps : ce * ps]):
                # Whole chunk is zero: the common case for sparse heaps.
                if run_start >= 0:
                    runs.append((run_start, c))
                    run_start = -1
                continue
            # Page by page; on non-zero data each test stops at the first
            # byte, so this costs one slice object per page and no copy.
            for off in range(c * ps, ce * ps, ps):
                if is_zero(mv[off : off + ps]):
                    if run_start >= 0:
                        runs.append((run_start, off // ps))
                        run_start = -1
                elif run_start < 0:
                    run_start = off // ps
        if run_start >= 0:
            runs.append((run_start, npages))
        return runs

    def _write_block(self, vaddr: int, nr_pages: int, chunk: memoryview) -> None:
        crc = zlib.crc32(chunk)
        payload: bytes | memoryview = chunk
        is_lz4 = False
        if self.compress:
            packed = lz4.block.compress(chunk, store_size=False)
            # Incompressible data (keys, already-compressed buffers) is stored
            # raw: smaller, and saves a decompression on restore.
            if len(packed) < len(chunk):
                payload = packed
                is_lz4 = True
        length = len(payload)
        self._file.write(payload)
        self.blocks.append(
            pb.PageBlock(
                vaddr=vaddr,
                nr_pages=nr_pages,
                offset=self.bytes_written,
                length=length,
                crc32=crc,
                lz4=is_lz4,
            )
        )
        self.bytes_written += length
        self.bytes_raw += len(chunk)
        self.pages_stored += nr_pages

    def close(self) -> None:
        """Flush and fsync the file. Safe to call twice."""
        if self._file.closed:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as e:
            raise ImageError(f"{self.path.name}: write failed: {e.strerror}") from e
        finally:
            self._file.close()


class PageStoreAppender(PageStoreWriter):
    """Adds blocks at the end of an existing pages file, whose blocks stay
    where they are; stored blocks of other files can be appended as they are."""

    def __init__(self, path: Path, compress: bool, block_pages: int = 64) -> None:
        self.path = Path(path)
        self.compress = compress
        self.block_pages = block_pages
        self.blocks = []
        self.pages_stored = self.bytes_raw = self.zero_pages = 0
        self._zero_block = bytes(block_pages * PAGE_SIZE)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise ImageError(f"{self.path.name}: cannot open: {e.strerror}") from e
        self.bytes_written = os.fstat(fd).st_size
        self._file = open(fd, "ab")

    def add_stored(self, block: pb.PageBlock, payload: bytes) -> None:
        """Append a block exactly as another pages file stores it."""
        try:
            self._file.write(payload)
        except OSError as e:
            raise ImageError(f"{self.path.name}: write failed: {e.strerror}") from e
        nb = pb.PageBlock()
        nb.CopyFrom(block)
        nb.offset = self.bytes_written
        self.blocks.append(nb)
        self.bytes_written += len(payload)
        self.bytes_raw += block.nr_pages * PAGE_SIZE
        self.pages_stored += block.nr_pages


class PageStoreReader:
    """Reads and verifies a pages file given its block table."""

    def __init__(self, path: Path, blocks: Sequence[pb.PageBlock]) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.blocks = list(blocks)
        try:
            self._file = open(self.path, "rb", buffering=0)
        except FileNotFoundError as e:
            raise ImageError(f"{self.name} is missing: the image is incomplete") from e
        except OSError as e:
            raise ImageError(f"{self.name}: cannot open: {e.strerror}") from e
        self._fd = self._file.fileno()
        self._size = os.fstat(self._fd).st_size
        self._by_vaddr: list[pb.PageBlock] | None = None
        self._starts: list[int] = []
        # Last decoded block: a lazy page server asks for neighbouring pages
        # one fault at a time, so this saves re-decompressing the same block.
        self._cached: tuple[int, bytes] | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def read_stored(self, b: pb.PageBlock) -> bytes:
        """A block's bytes as stored (compressed or not), unchecked: for
        copying it into another pages file, whose reader checks it."""
        raw = os.pread(self._fd, b.length, b.offset)
        if len(raw) != b.length:
            raise ImageError(f"{self.name} is truncated (block at {b.vaddr:#x})")
        return raw

    def iter_blocks(self) -> Iterator[tuple[int, bytes]]:
        """Yield (vaddr, nr_pages * PAGE_SIZE bytes) per block, in file order."""
        for b in sorted(self.blocks, key=lambda b: b.offset):
            yield b.vaddr, self._load(b)

    def verify(self) -> None:
        """Check the whole file: layout, sizes, decompression, checksums."""
        self._index()
        for b in sorted(self.blocks, key=lambda b: b.offset):
            self._load(b)

    def read_range(self, vaddr: int, nr_pages: int) -> bytes:
        """Return nr_pages pages from vaddr; pages not stored read as zeros."""
        if vaddr % PAGE_SIZE or nr_pages < 0:
            raise ValueError(f"read_range({vaddr:#x}, {nr_pages}): bad range")
        blocks = self._index()
        end = vaddr + nr_pages * PAGE_SIZE
        out = bytearray(nr_pages * PAGE_SIZE)
        # Blocks do not overlap (checked by _index), so only the last block
        # starting at or before vaddr can reach into the range from below.
        i = max(bisect.bisect_right(self._starts, vaddr) - 1, 0)
        while i < len(blocks) and blocks[i].vaddr < end:
            b = blocks[i]
            bend = b.vaddr + b.nr_pages * PAGE_SIZE
            if bend > vaddr:
                data = memoryview(self._get(b))
                lo = max(b.vaddr, vaddr)
                hi = min(bend, end)
                out[lo - vaddr : hi - vaddr] = data[lo - b.vaddr : hi - b.vaddr]
            i += 1
        return bytes(out)

    def read_range_into(self, vaddr: int, nr_pages: int,
                        sink: Callable[[int, bytes, int, int], None]) -> int:
        """The stored pages of [vaddr, vaddr + nr_pages pages), without a copy:
        sink(page vaddr, block bytes, offset, nbytes) per block met (holes
        skipped). Returns the bytes handed out."""
        if vaddr % PAGE_SIZE or nr_pages < 0:
            raise ValueError(f"read_range_into({vaddr:#x}, {nr_pages}): bad range")
        blocks = self._index()
        end = vaddr + nr_pages * PAGE_SIZE
        given = 0
        i = max(bisect.bisect_right(self._starts, vaddr) - 1, 0)
        while i < len(blocks) and blocks[i].vaddr < end:
            b = blocks[i]
            bend = b.vaddr + b.nr_pages * PAGE_SIZE
            if bend > vaddr:
                lo, hi = max(b.vaddr, vaddr), min(bend, end)
                sink(lo, self._get(b), lo - b.vaddr, hi - lo)
                given += hi - lo
            i += 1
        return given

    def _index(self) -> list[pb.PageBlock]:
        if self._by_vaddr is None:
            blocks = sorted(self.blocks, key=lambda b: b.vaddr)
            for prev, b in zip(blocks, blocks[1:], strict=False):
                if prev.vaddr + prev.nr_pages * PAGE_SIZE > b.vaddr:
                    raise ImageError(
                        f"{self.name}: blocks at {prev.vaddr:#x} and {b.vaddr:#x} overlap"
                        " (image corrupted)"
                    )
            self._starts = [b.vaddr for b in blocks]
            self._by_vaddr = blocks
        return self._by_vaddr

    def _get(self, b: pb.PageBlock) -> bytes:
        cached = self._cached
        if cached is not None and cached[0] == b.offset:
            return cached[1]
        data = self._load(b)
        self._cached = (b.offset, data)
        return data

    def _load(self, b: pb.PageBlock) -> bytes:
        """Read, decompress and check one block."""
        where = f"{self.name}: block at {b.vaddr:#x}"
        expected = b.nr_pages * PAGE_SIZE
        if b.nr_pages == 0 or b.vaddr % PAGE_SIZE:
            raise ImageError(f"{where} has a bad descriptor (image corrupted)")
        end = b.offset + b.length
        if end > self._size:
            raise ImageError(
                f"{self.name} is truncated (block at {b.vaddr:#x} needs bytes"
                f" {b.offset}..{end}, file has {self._size})"
            )
        try:
            raw = os.pread(self._fd, b.length, b.offset)
        except OSError as e:
            raise ImageError(f"{where}: read failed: {e.strerror}") from e
        if len(raw) != b.length:
            # The file shrank after we opened it.
            raise ImageError(f"{self.name} is truncated (block at {b.vaddr:#x})")
        if b.lz4:
            try:
                data: bytes = lz4.block.decompress(raw, uncompressed_size=expected)
            except lz4.block.LZ4BlockError as e:
                raise ImageError(f"{where} does not decompress (image corrupted)") from e
            if len(data) != expected:
                raise ImageError(
                    f"{where} decompresses to {len(data)} bytes, expected {expected}"
                    " (image corrupted)"
                )
        else:
            if b.length != expected:
                raise ImageError(
                    f"{where} is {b.length} bytes, expected {expected} (image corrupted)"
                )
            data = raw
        if zlib.crc32(data) != b.crc32:
            raise ImageError(f"{where} fails its checksum (image corrupted)")
        return data
