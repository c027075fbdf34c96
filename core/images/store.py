"""Image directories: inventory.img, process-PID.img and pages-PID.img files.

An image is written into a private temporary sibling directory and renamed
into place on commit, so a crashed or failed dump never leaves something that
looks like a usable image.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, TypeVar

from google.protobuf.message import DecodeError, Message

from . import lazarus_pb2 as pb
from . import workingset
from .pagestore import FORMAT_VERSION, PAGE_SIZE, ImageError, PageStoreReader

INVENTORY = "inventory.img"

_T = TypeVar("_T")
_M = TypeVar("_M", bound=Message)


def _process_name(pid: int) -> str:
    return f"process-{pid}.img"


def _pages_name(pid: int) -> str:
    return f"pages-{pid}.img"


def _write_file(path: Path, data: bytes) -> None:
    """Write a whole small file, 0600, and fsync it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise ImageError(f"{path.name}: write failed: {e.strerror}") from e


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PageReader(Protocol):
    """What restore needs of a process's pages: one pages file, or a chain."""

    name: str

    def read_range(self, vaddr: int, nr_pages: int) -> bytes: ...

    def iter_blocks(self) -> Iterator[tuple[int, bytes]]: ...

    def verify(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


class ImageWriter:
    """Builds an image in ``DIR.tmp-XXXX`` and renames it to ``DIR`` on commit.

    As a context manager it aborts (removes the temporary directory) on
    exception, and also when the block ends without commit(): an image that
    was never committed is incomplete by definition.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        d = self.directory
        if d.is_symlink():
            # rename(2) would replace the link, not fill its target.
            raise ImageError(f"{d} is a symbolic link: give the real directory")
        if d.exists():
            if not d.is_dir():
                raise ImageError(f"{d} exists and is not a directory")
            if any(d.iterdir()):
                raise ImageError(f"{d} exists and is not empty")
        parent = d.absolute().parent
        if not parent.is_dir():
            raise ImageError(f"{parent} does not exist: cannot create {d.name} in it")
        try:
            # mkdtemp creates the directory 0700: the image holds process
            # memory, and with it whatever secrets the process had.
            self.tmp_dir = Path(tempfile.mkdtemp(prefix=f"{d.name}.tmp-", dir=parent))
        except OSError as e:
            raise ImageError(f"cannot create an image directory in {parent}: {e.strerror}") from e
        self._done = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()

    def _check_open(self) -> None:
        if self._done:
            raise RuntimeError(f"image writer for {self.directory} is already committed/aborted")

    def pages_path(self, pid: int) -> Path:
        """Where to create the PageStoreWriter of process ``pid``."""
        self._check_open()
        return self.tmp_dir / _pages_name(pid)

    def write_inventory(self, inv: pb.Inventory) -> None:
        self._check_open()
        _write_file(self.tmp_dir / INVENTORY, inv.SerializeToString())

    def write_process(self, proc: pb.ProcessImage) -> None:
        self._check_open()
        if not proc.pages_file:
            proc.pages_file = _pages_name(proc.pid)
        _write_file(self.tmp_dir / _process_name(proc.pid), proc.SerializeToString())

    def commit(self) -> None:
        """Make the image durable, then atomically publish it as DIR."""
        self._check_open()
        tmp = self.tmp_dir
        if not (tmp / INVENTORY).exists():
            raise ImageError(f"{self.directory}: no {INVENTORY} was written, refusing to commit")
        try:
            # Cheap for files already synced at close; covers any that were not.
            for f in tmp.iterdir():
                _fsync_path(f)
            _fsync_path(tmp)
            # rename(2) atomically replaces an empty directory, and fails
            # (ENOTEMPTY/EEXIST) if someone filled DIR in the meantime.
            os.rename(tmp, self.directory)
        except OSError as e:
            if self.directory.is_dir() and any(self.directory.iterdir()):
                raise ImageError(f"{self.directory} exists and is not empty") from e
            raise ImageError(f"{self.directory}: cannot commit image: {e.strerror}") from e
        self._done = True
        try:
            # The rename is only durable once the parent directory is synced.
            _fsync_path(self.directory.absolute().parent)
        except OSError as e:
            raise ImageError(f"{self.directory}: cannot sync parent: {e.strerror}") from e

    def abort(self) -> None:
        """Remove the temporary directory. No-op after commit() or abort()."""
        if self._done:
            return
        self._done = True
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


class ImageReader:
    """Reads and validates an image directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        d = self.directory
        if not d.exists():
            raise ImageError(f"{d} does not exist")
        if not d.is_dir():
            raise ImageError(f"{d} is not a directory")
        if not (d / INVENTORY).is_file():
            raise ImageError(f"{INVENTORY} is missing: {d} is not a lazarus image")
        self._inventory: pb.Inventory | None = None

    def _read(self, name: str) -> bytes:
        try:
            return (self.directory / name).read_bytes()
        except FileNotFoundError as e:
            raise ImageError(
                f"{name} is missing: the image in {self.directory} is incomplete"
            ) from e
        except OSError as e:
            raise ImageError(f"{name}: cannot read: {e.strerror}") from e

    def _parse(self, name: str, msg: _M) -> _M:
        try:
            msg.ParseFromString(self._read(name))
        except DecodeError as e:
            raise ImageError(f"{name} is not a valid image (garbage or truncated)") from e
        return msg

    def _parse_inventory(self) -> pb.Inventory:
        """Parse inventory.img and check it is ours, without host checks."""
        inv = self._parse(INVENTORY, pb.Inventory())
        # proto3 cannot tell "unset" from zero, and garbage often parses
        # "successfully" into unknown fields; a real inventory always has these.
        if inv.format_version == 0 or not inv.arch or not inv.kernel_release:
            raise ImageError(f"{INVENTORY} is not a valid image (garbage or truncated)")
        if inv.format_version != FORMAT_VERSION:
            raise ImageError(
                f"{INVENTORY}: image format version {inv.format_version},"
                f" this lazarus reads {FORMAT_VERSION}"
            )
        if inv.page_size == 0:
            raise ImageError(f"{INVENTORY} is not a valid image (garbage or truncated)")
        return inv

    def inventory(self) -> pb.Inventory:
        """The validated inventory: our format, this machine's arch and page size."""
        if self._inventory is None:
            inv = self._parse_inventory()
            machine = platform.machine()
            if inv.arch != machine:
                raise ImageError(
                    f"{INVENTORY}: image was made on {inv.arch}, this machine is {machine}"
                )
            if inv.page_size != PAGE_SIZE:
                raise ImageError(
                    f"{INVENTORY}: image page size is {inv.page_size},"
                    f" this machine uses {PAGE_SIZE}"
                )
            self._inventory = inv
        return self._inventory

    def check_kernel(self) -> None:
        """Restore relies on an identical vdso layout, hence the same kernel."""
        image_kernel = self.inventory().kernel_release
        this_kernel = os.uname().release
        if image_kernel != this_kernel:
            raise ImageError(
                f"image was made on kernel {image_kernel}, this is kernel {this_kernel}:"
                " restore needs the same kernel (vdso layout)"
            )

    def process(self, pid: int) -> pb.ProcessImage:
        name = _process_name(pid)
        proc = self._parse(name, pb.ProcessImage())
        if proc.pid != pid:
            raise ImageError(f"{name} is not a valid image (garbage or truncated)")
        return proc

    def processes(self) -> list[pb.ProcessImage]:
        """All processes, in inventory order (root first, as dumped)."""
        return [self.process(pid) for pid in self.inventory().pids]

    def process_raw(self, pid: int) -> pb.ProcessImage:
        """The process as this one image stores it (never chain-resolved)."""
        return ImageReader.process(self, pid)

    def page_reader(self, proc: pb.ProcessImage) -> PageReader:
        return self.raw_page_reader(proc)

    def raw_page_reader(self, proc: pb.ProcessImage) -> PageStoreReader:
        name = proc.pages_file or _pages_name(proc.pid)
        # Never let a crafted image point outside its directory.
        if "/" in name or name in (".", ".."):
            raise ImageError(f"{_process_name(proc.pid)}: bad pages file name {name!r}")
        return PageStoreReader(self.directory / name, proc.pages)


# ---------------------------------------------------------------- describe


def _prot_str(prot: int) -> str:
    # PROT_READ=1, PROT_WRITE=2, PROT_EXEC=4
    return "".join(c if prot & bit else "-" for c, bit in (("r", 1), ("w", 2), ("x", 4)))


def _describe_process(proc: pb.ProcessImage, page_size: int) -> dict[str, object]:
    stored = sum(b.nr_pages for b in proc.pages)
    raw = stored * page_size
    in_file = sum(b.length for b in proc.pages)
    return {
        "pid": proc.pid,
        "ppid": proc.ppid,
        "comm": proc.comm,
        "exe": proc.mm.exe,
        "cwd": proc.cwd,
        "threads": len(proc.threads),
        "nr_vmas": len(proc.vmas),
        "vmas": [
            {
                "start": f"{v.start:#x}",
                "end": f"{v.end:#x}",
                "prot": _prot_str(v.prot),
                "kind": pb.Vma.Kind.Name(v.kind),
                "path": v.path or v.name,
            }
            for v in proc.vmas
        ],
        "pages_stored": stored,
        "pages_inherited": sum(r.nr_pages for r in proc.inherited),
        "bytes_raw": raw,
        "bytes_in_file": in_file,
        "compression_ratio": round(raw / in_file, 2) if in_file else None,
        "fds": [
            {
                "fd": f.fd,
                "kind": pb.FileDesc.Kind.Name(f.kind),
                "path": f.path,
                "pos": f.pos,
                "flags": f"0{f.flags:o}",
            }
            for f in proc.fds
        ],
    }


def _describe_chain(directory: Path) -> list[dict[str, object]]:
    """The image and its ancestors, newest first; a broken link is shown, not raised."""
    from .chain import parent_dir

    out: list[dict[str, object]] = []
    d = Path(directory)
    for _ in range(64):
        try:
            reader = ImageReader(d)
            inv = reader._parse_inventory()
            pages = sum(b.nr_pages for pid in inv.pids for b in reader.process(pid).pages)
        except ImageError as exc:
            out.append({"directory": str(d), "error": str(exc)})
            break
        out.append({"directory": str(d), "predump": inv.predump, "pages_stored": pages,
                    "created": datetime.fromtimestamp(inv.created_unix_ns / 1e9)
                    .astimezone().isoformat(timespec="seconds")})
        if not inv.parent:
            break
        d = parent_dir(d, inv)
    return out


def describe_image(directory: Path) -> dict[str, object]:
    """A JSON-able summary of an image, for ``lazarus show``.

    Does not require the image to match this machine: showing an image made
    elsewhere is how one finds out why it will not restore here.
    """
    reader = ImageReader(directory)
    inv = reader._parse_inventory()
    created = datetime.fromtimestamp(inv.created_unix_ns / 1e9).astimezone()
    return {
        "directory": str(directory),
        "format_version": inv.format_version,
        "tool_version": inv.tool_version,
        "kernel": inv.kernel_release,
        "arch": inv.arch,
        "page_size": inv.page_size,
        "created": created.isoformat(timespec="seconds"),
        "compression": inv.compression,
        "root_pid": inv.root_pid,
        "pids": list(inv.pids),
        "leave_running": inv.leave_running,
        "predump": inv.predump,
        "parent": inv.parent,
        "chain": _describe_chain(directory) if inv.parent else [],
        "working_set": workingset.describe(directory),
        "processes": [_describe_process(reader.process(pid), inv.page_size) for pid in inv.pids],
    }


def _get(d: Mapping[str, object], key: str, typ: type[_T]) -> _T:
    value = d.get(key)
    if not isinstance(value, typ):
        raise TypeError(f"image description: {key!r} is not a {typ.__name__}")
    return value


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_description(desc: Mapping[str, object]) -> str:
    """Human-readable text for a describe_image() result."""
    lines = [
        f"image     {desc.get('directory', '')}",
        f"format    {_get(desc, 'format_version', int)}"
        f" (lazarus {_get(desc, 'tool_version', str) or '?'})",
        f"created   {_get(desc, 'created', str)}",
        f"kernel    {_get(desc, 'kernel', str)} {_get(desc, 'arch', str)},"
        f" page size {_get(desc, 'page_size', int)}",
        f"pages     {_get(desc, 'compression', str) or 'none'} compression",
        f"root pid  {_get(desc, 'root_pid', int)}",
    ]
    if desc.get("predump"):
        lines.append("kind      pre-dump (memory only, not restorable alone)")
    chain = desc.get("chain")
    if isinstance(chain, list) and chain:
        lines.append(f"chain     {len(chain)} images, newest first:")
        for c in chain:
            if not isinstance(c, Mapping):
                continue
            if "error" in c:
                lines.append(f"  {c.get('directory')}: BROKEN: {c.get('error')}")
            else:
                kind = "pre-dump" if c.get("predump") else "dump"
                lines.append(f"  {c.get('directory')}  {kind:<8} {c.get('created')}"
                             f"  {c.get('pages_stored')} pages stored")
    ws = desc.get("working_set")
    if isinstance(ws, Mapping):
        if "error" in ws:
            lines.append(f"working set  unusable: {ws['error']}")
        else:
            lines.append(
                f"working set  {_get(ws, 'pages', int)} pages of {_get(ws, 'processes', int)}"
                f" process(es) recorded"
                + ("" if ws.get("matches_image") else " (for another image: ignored)"))
    for p in _get(desc, "processes", list):
        if not isinstance(p, Mapping):
            raise TypeError("image description: a process is not a mapping")
        ratio = p.get("compression_ratio")
        if desc.get("predump"):
            # A pre-dump holds memory only: no threads, exe, cwd nor fds to show.
            head = [f"process {_get(p, 'pid', int)} ({_get(p, 'comm', str)}), memory only"]
        else:
            head = [f"process {_get(p, 'pid', int)} ({_get(p, 'comm', str)}),"
                    f" ppid {_get(p, 'ppid', int)}, {_get(p, 'threads', int)} thread(s)",
                    f"  exe     {_get(p, 'exe', str)}",
                    f"  cwd     {_get(p, 'cwd', str)}"]
        lines += [
            "",
            *head,
            f"  memory  {_get(p, 'pages_stored', int)} pages stored,"
            f" {_size(_get(p, 'bytes_raw', int))} raw,"
            f" {_size(_get(p, 'bytes_in_file', int))} in file"
            + (f" (ratio {ratio})" if ratio is not None else "")
            + (f", {p.get('pages_inherited')} pages from the parent"
               if p.get("pages_inherited") else ""),
            f"  {_get(p, 'nr_vmas', int)} VMAs:",
        ]
        for v in _get(p, "vmas", list):
            if isinstance(v, Mapping):
                lines.append(
                    f"    {_get(v, 'start', str)}-{_get(v, 'end', str):<18}"
                    f" {_get(v, 'prot', str)} {_get(v, 'kind', str):<12} {_get(v, 'path', str)}"
                )
        fds = _get(p, "fds", list)
        if desc.get("predump"):
            continue
        lines.append(f"  {len(fds)} fds:")
        for f in fds:
            if isinstance(f, Mapping):
                lines.append(
                    f"    {_get(f, 'fd', int):>4} {_get(f, 'kind', str):<9}"
                    f" pos {_get(f, 'pos', int):<8} flags {_get(f, 'flags', str):<8}"
                    f" {_get(f, 'path', str)}"
                )
    return "\n".join(lines) + "\n"
