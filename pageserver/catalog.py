"""What the page server serves: the image directories under its images dir.

Every name that comes from a client is checked against a strict pattern (no
'/', no leading '.', so no '..' either), and every file is opened relative to
a directory fd with O_NOFOLLOW: a symbolic link, in the images dir or in an
image, is never followed, so nothing outside the images dir is ever served or
written.

The page index of a process (its VMAs and stored blocks) is built once and
shared by every client reading that image; each block's checksum is checked
the first time the server reads it, and remembered.
"""

from __future__ import annotations

import bisect
import itertools
import os
import re
import shutil
import stat
import tempfile
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lz4.block
from google.protobuf.message import DecodeError

from core.images import ImageError, ImageReader, pb, workingset
from core.images.chain import flatten_own_chain, resolve_chain

from . import wire_pb2 as wire
from .protocol import MAX_FRAME_PAGES, PAGE_SIZE

INVENTORY = "inventory.img"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+@=-]{0,199}")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# Decoded blocks kept per process for the partial reads of neighbouring faults.
_BLOCK_CACHE_BYTES = 32 << 20
_MAX_ENTRIES = 128
REVALIDATE = 1.0


class CatalogError(Exception):
    """A request the catalog refuses; ``code`` is the wire error code."""

    def __init__(self, code: wire.Error.Code, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_name(name: str, what: str = "image name") -> str:
    """``name`` if it is a safe single path component, else a BAD_REQUEST error."""
    if not _NAME.fullmatch(name):
        raise CatalogError(wire.Error.BAD_REQUEST,
                           f"bad {what} {name!r}: use letters, digits and ._+@=- "
                           "(not first), at most 200 characters")
    return name


def _not_found(message: str) -> CatalogError:
    return CatalogError(wire.Error.NOT_FOUND, message)


def _corrupted(message: str) -> CatalogError:
    return CatalogError(wire.Error.CORRUPTED, message)


class Scratch:
    """A reusable read buffer handed out in consecutive slices.

    Reading into memory already touched is much cheaper than into fresh
    pages (each first touch is a page fault); the caller must not reset it
    while the slices it handed out are still queued for sending.
    """

    def __init__(self, size: int) -> None:
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)
        self.pos = 0

    def take(self, n: int) -> memoryview | None:
        if self.pos + n > len(self.buf):
            return None
        mv = self.view[self.pos : self.pos + n]
        self.pos += n
        return mv

    def reset(self) -> None:
        self.pos = 0


@dataclass(slots=True)
class Piece:
    """One PAGES frame of a reply: stored bytes, raw bytes, or a hole."""

    vaddr: int
    nr_pages: int
    data: bytes | memoryview | None     # None: zeros
    lz4: bool = False
    crc32: int | None = None


@dataclass
class ProcessPages:
    """The page index of one process of one image, shared by all clients."""

    image: str
    pid: int
    ident: tuple[int, int]               # (st_dev, st_ino) of the image directory
    fd: int                              # the pages file
    by_vaddr: list[pb.PageBlock]
    starts: list[int]
    by_offset: list[int]                 # indexes into by_vaddr, in file order
    vmas: list[tuple[int, int]]          # merged [start, end) runs
    vma_starts: list[int]
    verified: bytearray                  # per block of by_vaddr: crc checked
    checked: float = 0.0                 # when ident was last compared with the directory
    _cache: OrderedDict[int, bytes] = field(default_factory=OrderedDict)
    _cache_bytes: int = 0

    @property
    def nr_pages(self) -> int:
        return sum(b.nr_pages for b in self.by_vaddr)

    def close(self) -> None:
        os.close(self.fd)

    def note_sent(self, who: str, pieces: list[Piece]) -> None:
        """These pieces went to the restore `who` (see live.py: only a live
        fork counts them)."""
        return None

    def check_range(self, vaddr: int, nr_pages: int) -> None:
        end = vaddr + nr_pages * PAGE_SIZE
        where = f"[{vaddr:#x}, {end:#x})"
        if vaddr % PAGE_SIZE or nr_pages < 1:
            raise CatalogError(wire.Error.BAD_REQUEST, f"bad page range {where}")
        if nr_pages > MAX_FRAME_PAGES:
            raise CatalogError(wire.Error.BAD_REQUEST,
                               f"{nr_pages} pages in one request, at most {MAX_FRAME_PAGES}")
        i = bisect.bisect_right(self.vma_starts, vaddr) - 1
        if i < 0 or self.vmas[i][1] < end:
            raise CatalogError(wire.Error.OUT_OF_RANGE,
                               f"pages {where} are outside the memory of process {self.pid}"
                               f" in image {self.image}")

    # -- reading

    def _pread(self, fd: int, n: int, offset: int,
               scratch: Scratch | None = None) -> bytes | memoryview:
        """``n`` bytes of the pages file: into ``scratch`` when it has room, else fresh."""
        mv = scratch.take(n) if scratch is not None else None
        try:
            if mv is None:
                data: bytes | memoryview = os.pread(fd, n, offset)
                got = len(data)
            else:
                got = os.preadv(fd, [mv], offset)
                data = mv
        except OSError as e:
            raise _corrupted(f"image {self.image}: pages of {self.pid}: {e.strerror}") from e
        if got != n:
            raise _corrupted(f"image {self.image}: pages file of {self.pid} is truncated")
        return data

    def _read(self, b: pb.PageBlock, scratch: Scratch | None = None) -> bytes | memoryview:
        return self._pread(self.fd, b.length, b.offset, scratch)

    def _decode(self, b: pb.PageBlock, raw: bytes | memoryview,
                check: bool = True) -> bytes | memoryview:
        """Uncompressed bytes of a block from its stored bytes; checks the crc if asked."""
        n = b.nr_pages * PAGE_SIZE
        where = f"image {self.image}: block at {b.vaddr:#x} of process {self.pid}"
        if b.lz4:
            try:
                data: bytes | memoryview = lz4.block.decompress(raw, uncompressed_size=n)
            except lz4.block.LZ4BlockError:
                raise _corrupted(f"{where} does not decompress (image corrupted)") from None
            if len(data) != n:
                raise _corrupted(f"{where} has a bad size (image corrupted)")
        else:
            data = raw
        if check and zlib.crc32(data) != b.crc32:
            raise _corrupted(f"{where} fails its checksum (image corrupted)")
        return data

    def _verify(self, i: int, raw: bytes | memoryview) -> bytes | memoryview | None:
        """Check block i once; returns its decoded bytes when that was needed."""
        if self.verified[i]:
            return None
        data = self._decode(self.by_vaddr[i], raw)
        self.verified[i] = 1
        return data

    def block_data(self, i: int) -> bytes | memoryview:
        """Uncompressed, verified bytes of block i (a small LRU cache)."""
        cached = self._cache.get(i)
        if cached is not None:
            self._cache.move_to_end(i)
            return cached
        b = self.by_vaddr[i]
        data = self._decode(b, self._read(b), check=not self.verified[i])
        self.verified[i] = 1
        out = bytes(data)
        self._cache[i] = out
        self._cache_bytes += len(out)
        while self._cache_bytes > _BLOCK_CACHE_BYTES and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= len(old)
        return out

    def get_range(self, vaddr: int, nr_pages: int, lz4_ok: bool,
                  scratch: Scratch | None = None) -> list[Piece]:
        """The frames that answer GetPages: in order, holes included, nothing outside.

        Stored bytes are read into ``scratch`` when given: the pieces point
        into it, so it must not be reused before they are sent.
        """
        self.check_range(vaddr, nr_pages)
        end = vaddr + nr_pages * PAGE_SIZE
        blocks = self.by_vaddr
        pieces: list[Piece] = []
        cur = vaddr
        i = max(bisect.bisect_right(self.starts, vaddr) - 1, 0)
        while i < len(blocks) and blocks[i].vaddr < end:
            b = blocks[i]
            bend = b.vaddr + b.nr_pages * PAGE_SIZE
            if bend <= vaddr:
                i += 1
                continue
            lo, hi = max(b.vaddr, vaddr), min(bend, end)
            if lo > cur:
                pieces.append(Piece(cur, (lo - cur) // PAGE_SIZE, None))
            if lo == b.vaddr and hi == bend and i not in self._cache:
                # A whole block: send it as stored when the client takes that.
                raw = self._read(b, scratch)
                decoded = self._verify(i, raw)
                if b.lz4 and lz4_ok and b.length < b.nr_pages * PAGE_SIZE:
                    pieces.append(Piece(b.vaddr, b.nr_pages, raw, True, b.crc32))
                elif b.lz4:
                    data = decoded if decoded is not None else self._decode(b, raw, check=False)
                    pieces.append(Piece(b.vaddr, b.nr_pages, data, False, b.crc32))
                else:
                    pieces.append(Piece(b.vaddr, b.nr_pages, raw, False, b.crc32))
            elif not b.lz4 and self.verified[i] and i not in self._cache:
                # Part of a raw block already checked: read just that part.
                part = self._pread(self.fd, hi - lo, b.offset + lo - b.vaddr, scratch)
                pieces.append(Piece(lo, (hi - lo) // PAGE_SIZE, part))
            else:
                data = memoryview(self.block_data(i))
                pieces.append(Piece(lo, (hi - lo) // PAGE_SIZE,
                                    data[lo - b.vaddr : hi - b.vaddr]))
            cur = hi
            i += 1
        if cur < end:
            pieces.append(Piece(cur, (end - cur) // PAGE_SIZE, None))
        return pieces

    def stream_chunks(self, chunk_bytes: int) -> Iterator[list[int]]:
        """Block indexes in file order, grouped into reads of about ``chunk_bytes``."""
        group: list[int] = []
        size = 0
        last_end = -1
        for i in self.by_offset:
            b = self.by_vaddr[i]
            if group and (size + b.length > chunk_bytes or b.offset != last_end):
                yield group
                group, size = [], 0
            group.append(i)
            size += b.length
            last_end = b.offset + b.length
        if group:
            yield group

    def sendable_as_stored(self, group: list[int], lz4_ok: bool) -> bool:
        """Every block of ``group`` is checked already and goes out exactly as
        stored (one frame each): the file bytes can be sent without reading them."""
        blocks, verified = self.by_vaddr, self.verified
        for i in group:
            b = blocks[i]
            if not verified[i] or b.nr_pages > MAX_FRAME_PAGES:
                return False
            if b.lz4 and not (lz4_ok and b.length < b.nr_pages * PAGE_SIZE):
                return False
        return True

    def stream_pieces(self, fd: int, group: list[int], lz4_ok: bool,
                      scratch: Scratch | None = None) -> list[Piece]:
        """Read one group of blocks (one read, into ``scratch`` if it has room) and
        return its frames. Runs in a thread."""
        blocks = self.by_vaddr
        first = blocks[group[0]]
        last = blocks[group[-1]]
        total = last.offset + last.length - first.offset
        if scratch is not None:
            scratch.reset()
        view = memoryview(self._pread(fd, total, first.offset, scratch))
        pieces: list[Piece] = []
        for i in group:
            b = blocks[i]
            raw = view[b.offset - first.offset : b.offset - first.offset + b.length]
            decoded = self._verify(i, raw)
            n = b.nr_pages * PAGE_SIZE
            if b.nr_pages <= MAX_FRAME_PAGES and (
                    not b.lz4 or (lz4_ok and b.length < n)):
                pieces.append(Piece(b.vaddr, b.nr_pages, raw, b.lz4, b.crc32))
                continue
            data = memoryview(decoded if decoded is not None
                              else self._decode(b, raw, check=False))
            for p in range(0, b.nr_pages, MAX_FRAME_PAGES):
                k = min(MAX_FRAME_PAGES, b.nr_pages - p)
                pieces.append(Piece(b.vaddr + p * PAGE_SIZE, k,
                                    data[p * PAGE_SIZE : (p + k) * PAGE_SIZE], False,
                                    b.crc32 if k == b.nr_pages else None))
        return pieces


def _merge_vmas(proc: pb.ProcessImage) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for v in sorted(proc.vmas, key=lambda v: v.start):
        if v.end <= v.start:
            continue
        if runs and v.start <= runs[-1][1]:
            runs[-1] = (runs[-1][0], max(runs[-1][1], v.end))
        else:
            runs.append((v.start, v.end))
    return runs


class Upload:
    """An image being received: files go into a hidden temporary directory."""

    def __init__(self, catalog: Catalog, name: str, tmp: Path) -> None:
        self.catalog = catalog
        self.name = name
        self.tmp = tmp
        self.files: dict[str, int] = {}
        self.bytes = 0
        self._fd = -1
        self._file = ""
        self._left = 0
        self.done = False

    def begin_file(self, name: str, size: int) -> None:
        check_name(name, "file name")
        if self._fd >= 0:
            raise CatalogError(wire.Error.BAD_REQUEST,
                               f"{name}: the previous file {self._file} is incomplete"
                               f" ({self._left} bytes missing)")
        if name in self.files:
            raise CatalogError(wire.Error.BAD_REQUEST, f"{name} sent twice")
        try:
            fd = os.open(self.tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise CatalogError(wire.Error.INTERNAL, f"{name}: cannot create: {e.strerror}") from e
        self.files[name] = size
        self._fd, self._file, self._left = fd, name, size
        if size == 0:
            self._close_file()

    def write(self, data: memoryview) -> None:
        if self._fd < 0:
            raise CatalogError(wire.Error.BAD_REQUEST, "file data before any PutFile")
        if len(data) > self._left:
            raise CatalogError(wire.Error.BAD_REQUEST,
                               f"{self._file}: more bytes than the {self.files[self._file]}"
                               " announced")
        try:
            while data:
                n = os.write(self._fd, data)
                data = data[n:]
                self._left -= n
                self.bytes += n
        except OSError as e:
            raise CatalogError(wire.Error.INTERNAL,
                               f"{self._file}: write failed: {e.strerror}") from e
        if self._left == 0:
            self._close_file()

    def _close_file(self) -> None:
        fd, self._fd = self._fd, -1
        try:
            os.fsync(fd)
        except OSError as e:
            raise CatalogError(wire.Error.INTERNAL,
                               f"{self._file}: fsync failed: {e.strerror}") from e
        finally:
            os.close(fd)

    def commit(self) -> None:
        """Check the image is whole and publish it, atomically, under its name."""
        if self._fd >= 0:
            raise CatalogError(wire.Error.BAD_REQUEST,
                               f"{self._file} is incomplete ({self._left} bytes missing)")
        if INVENTORY not in self.files:
            raise CatalogError(wire.Error.BAD_REQUEST, f"no {INVENTORY}: not an image")
        self._check_image()
        root = self.catalog.root
        try:
            dfd = os.open(self.tmp, _DIR_FLAGS)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            if os.path.lexists(root / self.name):
                raise CatalogError(wire.Error.EXISTS, f"image {self.name} already exists")
            os.rename(self.tmp, root / self.name)
        except OSError as e:
            raise CatalogError(wire.Error.INTERNAL,
                               f"image {self.name}: cannot store: {e.strerror}") from e
        self.done = True
        self.catalog.uploads.discard(self.name)
        self.catalog.forget(self.name)
        rfd = os.open(root, _DIR_FLAGS)
        try:
            os.fsync(rfd)
        finally:
            os.close(rfd)

    def _check_image(self) -> None:
        """The metadata parses and every process has its files, big enough."""
        try:
            inv = pb.Inventory.FromString((self.tmp / INVENTORY).read_bytes())
            if not inv.format_version or not inv.pids:
                raise DecodeError("empty inventory")
            for pid in inv.pids:
                pname = f"process-{pid}.img"
                if pname not in self.files:
                    raise CatalogError(wire.Error.BAD_REQUEST, f"no {pname} for process {pid}")
                proc = pb.ProcessImage.FromString((self.tmp / pname).read_bytes())
                pages = proc.pages_file or f"pages-{pid}.img"
                need = max((b.offset + b.length for b in proc.pages), default=0)
                if need and self.files.get(pages, -1) < need:
                    raise CatalogError(wire.Error.BAD_REQUEST,
                                       f"{pages} is missing or shorter than its {need} bytes")
        except DecodeError:
            raise CatalogError(wire.Error.BAD_REQUEST,
                               "the image metadata does not parse") from None
        except OSError as e:
            raise CatalogError(wire.Error.INTERNAL, f"cannot read back: {e.strerror}") from e

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if not self.done:
            self.done = True
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.catalog.uploads.discard(self.name)


class Catalog:
    """The images directory: listing, files, page indexes, uploads."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self._root = str(self.root)
        self.uploads: set[str] = set()
        self._entries: OrderedDict[tuple[str, int], ProcessPages] = OrderedDict()
        self._tmp_ids = itertools.count()
        # Images whose pages come from live processes (see live.py), by (image, pid).
        self.live: dict[tuple[str, int], ProcessPages] = {}

    def close(self) -> None:
        for entry in [*self._entries.values(), *self.live.values()]:
            entry.close()
        self._entries.clear()
        self.live.clear()

    def add_live(self, entry: ProcessPages) -> None:
        """Serve ``entry`` as process ``entry.pid`` of image ``entry.image``;
        the image's metadata files must be in the images dir as usual."""
        self.live[(entry.image, entry.pid)] = entry

    def _is_live(self, image: str) -> bool:
        return any(name == image for name, _ in self.live)

    def list_images(self) -> list[str]:
        names: list[str] = []
        try:
            with os.scandir(self.root) as it:
                for e in it:
                    if _NAME.fullmatch(e.name) and e.is_dir(follow_symlinks=False):
                        try:
                            st = os.stat(Path(e.path) / INVENTORY, follow_symlinks=False)
                        except OSError:
                            continue
                        if stat.S_ISREG(st.st_mode):
                            names.append(e.name)
        except OSError as e:
            raise CatalogError(wire.Error.INTERNAL, f"cannot list images: {e.strerror}") from e
        return sorted(names)

    def _open_dir(self, image: str) -> int:
        check_name(image)
        try:
            return os.open(self.root / image, _DIR_FLAGS)
        except FileNotFoundError:
            raise _not_found(f"no image {image}") from None
        except OSError as e:
            raise _not_found(f"image {image}: {e.strerror}") from e

    def image_dir(self, image: str) -> Path:
        """The directory of a stored image (not a live fork's, which has no pages on disk)."""
        if self._is_live(image):
            raise CatalogError(wire.Error.UNSUPPORTED,
                               f"image {image} is a live fork: it cannot be restored here")
        os.close(self._open_dir(image))
        return self.root / image

    def list_files(self, image: str) -> list[tuple[str, int]]:
        if self._is_live(image):
            # Its pages are in no file: only a lazy restore can take them.
            raise CatalogError(wire.Error.UNSUPPORTED,
                               f"image {image} is a live fork: restore it with "
                               "`lazarus restore --lazy`, it cannot be downloaded")
        dfd = self._open_dir(image)
        try:
            out: list[tuple[str, int]] = []
            for name in sorted(os.listdir(dfd)):
                if not _NAME.fullmatch(name):
                    continue
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    out.append((name, st.st_size))
        except OSError as e:
            raise CatalogError(wire.Error.INTERNAL,
                               f"image {image}: cannot list: {e.strerror}") from e
        finally:
            os.close(dfd)
        if INVENTORY not in dict(out):
            raise _not_found(f"{image} is not an image (no {INVENTORY})")
        return out

    def open_file(self, image: str, name: str) -> int:
        """A read-only fd on a regular file of an image."""
        check_name(name, "file name")
        dfd = self._open_dir(image)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except OSError as e:
            raise _not_found(f"image {image}: no file {name} ({e.strerror})") from e
        finally:
            os.close(dfd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _not_found(f"image {image}: {name} is not a regular file")
        return fd

    def put_working_set(self, image: str, data: bytes) -> None:
        """Store (or replace) an image's workingset.img, atomically, 0600.
        Images are otherwise never changed: this file only names addresses."""
        try:
            ws, _ = workingset.parse(data)
        except workingset.WorkingSetError as e:
            raise CatalogError(wire.Error.BAD_REQUEST, str(e)) from None
        dfd = self._open_dir(image)
        tmp = f".{workingset.WORKINGSET}.tmp-{os.getpid()}-{next(self._tmp_ids)}"
        try:
            inventory = self._read_small(dfd, image, INVENTORY)
            if ws.inventory_sha256 != workingset.inventory_digest(inventory):
                raise CatalogError(wire.Error.BAD_REQUEST, f"the working set was not "
                                   f"recorded for image {image}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dfd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, workingset.WORKINGSET, src_dir_fd=dfd, dst_dir_fd=dfd)
            os.fsync(dfd)
        except OSError as e:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise CatalogError(wire.Error.INTERNAL, f"image {image}: cannot store the "
                               f"working set: {e.strerror}") from e
        finally:
            os.close(dfd)

    def process(self, image: str, pid: int) -> ProcessPages:
        """The page index of process ``pid`` of ``image``, loaded once and shared.

        Images do not change once stored; one replaced by hand (removed, then
        stored again under the same name) is noticed within REVALIDATE seconds.
        """
        key = (image, pid)
        live = self.live.get(key)
        if live is not None:
            return live
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is not None and now - entry.checked < REVALIDATE:
            self._entries.move_to_end(key)
            return entry
        check_name(image)
        try:
            st = os.stat(os.path.join(self._root, image), follow_symlinks=False)
        except OSError:
            raise _not_found(f"no image {image}") from None
        ident = (st.st_dev, st.st_ino)
        if entry is not None and entry.ident == ident:
            entry.checked = now
            self._entries.move_to_end(key)
            return entry
        if entry is not None:
            # The image was replaced (removed, then uploaded again).
            del self._entries[key]
            entry.close()
        entry = self._load(image, pid, ident)
        entry.checked = now
        self._entries[key] = entry
        while len(self._entries) > _MAX_ENTRIES:
            _, old = self._entries.popitem(last=False)
            old.close()
        return entry

    def _load(self, image: str, pid: int, ident: tuple[int, int]) -> ProcessPages:
        dfd = self._open_dir(image)
        try:
            inv = pb.Inventory.FromString(self._read_small(dfd, image, INVENTORY))
            if inv.page_size and inv.page_size != PAGE_SIZE:
                raise _corrupted(f"image {image} has {inv.page_size}-byte pages")
            if pid not in inv.pids:
                raise _not_found(f"image {image} has no process {pid}")
            proc = pb.ProcessImage.FromString(
                self._read_small(dfd, image, f"process-{pid}.img"))
            pages_name = proc.pages_file or f"pages-{pid}.img"
            if not _NAME.fullmatch(pages_name):
                raise _corrupted(f"image {image}: bad pages file name {pages_name!r}")
            try:
                fd = os.open(pages_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            except OSError as e:
                raise _corrupted(f"image {image}: {pages_name}: {e.strerror}") from e
        except DecodeError:
            raise _corrupted(f"image {image}: metadata of process {pid} does not parse") from None
        finally:
            os.close(dfd)
        try:
            return self._index(image, pid, ident, fd, proc)
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _read_small(dfd: int, image: str, name: str) -> bytes:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        except FileNotFoundError:
            raise _not_found(f"image {image} has no {name}") from None
        except OSError as e:
            raise _corrupted(f"image {image}: {name}: {e.strerror}") from e
        with open(fd, "rb") as f:
            return f.read()

    @staticmethod
    def _index(image: str, pid: int, ident: tuple[int, int], fd: int,
               proc: pb.ProcessImage) -> ProcessPages:
        size = os.fstat(fd).st_size
        blocks = sorted(proc.pages, key=lambda b: b.vaddr)
        where = f"image {image}, process {pid}"
        prev_end = 0
        for b in blocks:
            if b.nr_pages == 0 or b.vaddr % PAGE_SIZE or b.length == 0:
                raise _corrupted(f"{where}: bad block descriptor at {b.vaddr:#x}")
            if b.vaddr < prev_end:
                raise _corrupted(f"{where}: blocks overlap at {b.vaddr:#x}")
            if b.offset + b.length > size:
                raise _corrupted(f"{where}: pages file is truncated")
            if not b.lz4 and b.length != b.nr_pages * PAGE_SIZE:
                raise _corrupted(f"{where}: block at {b.vaddr:#x} has a bad size")
            prev_end = b.vaddr + b.nr_pages * PAGE_SIZE
        vmas = _merge_vmas(proc)
        vma_starts = [v[0] for v in vmas]
        for b in blocks:
            end = b.vaddr + b.nr_pages * PAGE_SIZE
            i = bisect.bisect_right(vma_starts, b.vaddr) - 1
            if i < 0 or vmas[i][1] < end:
                raise _corrupted(f"{where}: block at {b.vaddr:#x} lies outside every VMA")
        order = sorted(range(len(blocks)), key=lambda i: blocks[i].offset)
        return ProcessPages(image=image, pid=pid, ident=ident, fd=fd, by_vaddr=blocks,
                            starts=[b.vaddr for b in blocks], by_offset=order, vmas=vmas,
                            vma_starts=vma_starts,
                            verified=bytearray(len(blocks)))

    def forget(self, image: str) -> None:
        """Drop the cached indexes of ``image`` (it was just stored anew)."""
        for key in [k for k in self._entries if k[0] == image]:
            self._entries.pop(key).close()

    def check_new(self, name: str) -> None:
        """``name`` is free for a new image."""
        check_name(name)
        if name in self.uploads or os.path.lexists(self.root / name):
            raise CatalogError(wire.Error.EXISTS, f"image {name} already exists")

    def chain_dirs(self, last: str) -> list[Path]:
        """The directories of the image chain ending at ``last``, newest
        first, every one an image of this directory."""
        self.image_dir(last)
        try:
            dirs = [r.directory for r in resolve_chain(self.root / last)]
        except ImageError as e:
            raise CatalogError(wire.Error.CORRUPTED, f"image {last}: {e}") from None
        root = self.root.resolve()
        for d in dirs:
            if d.resolve().parent != root or d.name in self.uploads:
                raise CatalogError(wire.Error.BAD_REQUEST,
                                   f"image {last}: its chain reaches beyond the stored images")
        return dirs

    def flatten_chain(self, last: str, name: str, dirs: list[Path]) -> int:
        """Write the chain ending at ``last`` as image ``name`` (blocking: run
        in a thread, with ``name`` reserved in ``uploads``). Its bytes."""
        compress = ImageReader(dirs[0]).inventory().compression == "lz4"
        try:
            flatten_own_chain(self.root / last, self.root / name, compress)
        except (ImageError, OSError) as e:
            raise CatalogError(wire.Error.INTERNAL, f"cannot flatten {last}: {e}") from None
        return sum(f.stat().st_size for f in (self.root / name).iterdir())

    def remove(self, name: str) -> None:
        """Delete a stored image (not a live fork's, not one being uploaded)."""
        path = self.image_dir(name)
        if name in self.uploads:
            raise CatalogError(wire.Error.EXISTS, f"image {name} is being written")
        self.forget(name)
        shutil.rmtree(path, ignore_errors=True)

    def begin_upload(self, name: str) -> Upload:
        self.check_new(name)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=self.root))
        except OSError as e:
            raise CatalogError(wire.Error.INTERNAL,
                               f"cannot create an image in {self.root}: {e.strerror}") from e
        self.uploads.add(name)
        return Upload(self, name, tmp)
