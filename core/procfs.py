"""Parsers for /proc/PID files. Stages ask here instead of parsing /proc text."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def proc(pid: int, *parts: str) -> Path:
    return Path("/proc", str(pid), *parts)


@dataclass(frozen=True)
class MapEntry:
    start: int
    end: int
    perms: str          # e.g. "r-xp"
    offset: int
    dev: str
    inode: int
    path: str           # file path, [name], or ""

    @property
    def shared(self) -> bool:
        return self.perms[3] == "s"

    @property
    def prot(self) -> int:
        return (1 if self.perms[0] == "r" else 0) | (2 if self.perms[1] == "w" else 0) | (
            4 if self.perms[2] == "x" else 0)

    @property
    def is_file(self) -> bool:
        return self.inode != 0 and not self.path.startswith("[")


def parse_maps(text: str) -> list[MapEntry]:
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        start, end = parts[0].split("-")
        out.append(MapEntry(int(start, 16), int(end, 16), parts[1], int(parts[2], 16), parts[3],
                            int(parts[4]), parts[5] if len(parts) > 5 else ""))
    return out


def read_maps(pid: int) -> list[MapEntry]:
    return parse_maps(proc(pid, "maps").read_text())


@dataclass(frozen=True)
class Stat:
    comm: str
    state: str
    ppid: int
    pgrp: int
    session: int
    flags: int
    num_threads: int
    start_code: int
    end_code: int
    start_stack: int
    start_data: int
    end_data: int
    start_brk: int
    arg_start: int
    arg_end: int
    env_start: int
    env_end: int
    exit_code: int
    start_time: int = 0     # clock ticks after boot: tells a restarted process from the old one


def read_stat(pid: int) -> Stat:
    text = proc(pid, "stat").read_text()
    comm = text[text.index("(") + 1 : text.rindex(")")]
    rest = text[text.rindex(")") + 2 :].split()

    def f(n: int) -> int:  # field number n as man proc(5) counts them
        return int(rest[n - 3])

    return Stat(comm, rest[0], f(4), f(5), f(6), f(9), f(20), f(26), f(27), f(28),
                f(45), f(46), f(47), f(48), f(49), f(50), f(51), f(52), f(22))


def read_status(pid: int) -> dict[str, str]:
    out = {}
    for line in proc(pid, "status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


@dataclass(frozen=True)
class FdInfo:
    pos: int
    flags: int
    extra: dict[str, str] = field(default_factory=dict)


def read_fdinfo(pid: int, fd: int) -> FdInfo:
    values: dict[str, str] = {}
    for line in proc(pid, "fdinfo", str(fd)).read_text().splitlines():
        key, _, value = line.partition(":")
        values[key] = value.strip()
    return FdInfo(int(values["pos"]), int(values["flags"], 8), values)


def list_fds(pid: int) -> list[int]:
    return sorted(int(n) for n in os.listdir(proc(pid, "fd")))


def list_tids(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(proc(pid, "task")))


def read_auxv(pid: int) -> bytes:
    """Saved auxv up to and including the AT_NULL pair."""
    data = proc(pid, "auxv").read_bytes()
    for i in range(0, len(data) - 15, 16):
        if int.from_bytes(data[i : i + 8], "little") == 0:
            return data[: i + 16]
    return data


def children(pid: int) -> list[int]:
    out: list[int] = []
    for tid in os.listdir(proc(pid, "task")):
        try:
            text = proc(pid, "task", tid, "children").read_text()
        except FileNotFoundError:
            continue
        out.extend(int(c) for c in text.split())
    return out


def read_vmflags(pid: int) -> dict[int, set[str]]:
    """The VmFlags of every mapping of /proc/PID/smaps (e.g. "dc" for
    MADV_DONTFORK, "wf" for MADV_WIPEONFORK), by start address."""
    out: dict[int, set[str]] = {}
    start = -1
    for line in proc(pid, "smaps").read_text().splitlines():
        head = line.split(None, 1)[0]
        if "-" in head and ":" not in head:
            start = int(head.split("-")[0], 16)
        elif head == "VmFlags:":
            out[start] = set(line.split()[1:])
    return out


def is_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        return read_stat(pid).state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


# /proc/PID/net tables that list sockets with an inode, and the column it is in
# (-1: the last one). TCP states by the hex code of their "st" column.
_SOCKET_TABLES = {"tcp": 9, "tcp6": 9, "udp": 9, "udp6": 9, "udplite": 9, "udplite6": 9,
                  "raw": 9, "raw6": 9, "netlink": -1, "packet": -1}
_TCP_STATES = {"01": "connected", "0A": "listening"}


def socket_kinds(pid: int) -> dict[int, str]:
    """A short name (e.g. "tcp listening", "udp6", "netlink") of every socket
    of PID's network namespace that /proc/PID/net lists, by inode."""
    out: dict[int, str] = {}
    for table, col in _SOCKET_TABLES.items():
        try:
            lines = proc(pid, "net", table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            try:
                ino = int(f[col])
            except (IndexError, ValueError):
                continue
            kind = table
            if table.startswith("tcp"):
                kind += f" {_TCP_STATES.get(f[3], 'state ' + f[3])}"
            out[ino] = kind
    return out
