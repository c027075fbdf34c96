"""`lazarus check`: the kernel features dump and restore rely on, one line each."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass

from core.kernel import constants as K
from core.kernel.libc import syscall

PAGEMAP_SCAN = 0xC0606610  # _IOWR('f', 16, struct pm_scan_arg)


@dataclass(frozen=True)
class Feature:
    name: str
    needed: bool          # dump/restore cannot work without it
    probe: Callable[[], str]   # returns a detail, raises OSError/RuntimeError if missing


def _syscall_exists(nr: int, *args: int) -> str:
    try:
        syscall(nr, *args)
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            raise RuntimeError("syscall not implemented") from None
    return "present"


def _root() -> str:
    if os.geteuid() != 0:
        raise RuntimeError("lazarus needs root (CAP_SYS_ADMIN, CAP_SYS_PTRACE)")
    return "running as root"


def _kernel() -> str:
    release = os.uname().release
    major, minor = (int(x) for x in release.split(".")[:2])
    if (major, minor) < (5, 13):
        raise RuntimeError(f"kernel {release} is older than 5.13 (rseq ptrace, clone3 set_tid)")
    return release


def _pr_set_mm_map() -> str:
    size = ctypes.c_uint32()
    syscall(K.SYS_PRCTL, K.PR_SET_MM, K.PR_SET_MM_MAP_SIZE, ctypes.addressof(size), 0, 0)
    return f"prctl_mm_map is {size.value} bytes"


def _checkpoint_restore() -> str:
    if not os.path.isdir("/proc/self/map_files"):
        raise RuntimeError("CONFIG_CHECKPOINT_RESTORE is off (no /proc/PID/map_files)")
    return "CONFIG_CHECKPOINT_RESTORE on"


def _pagemap() -> str:
    with open("/proc/self/pagemap", "rb") as f:
        entry = int.from_bytes(f.read(8), "little")
    del entry
    return "readable"


def _pagemap_scan() -> str:
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        syscall(K.SYS_IOCTL, fd, PAGEMAP_SCAN, 0)
    except OSError as exc:
        # A NULL argument gives EFAULT/EINVAL when the ioctl exists, ENOTTY when not.
        if exc.errno == errno.ENOTTY:
            raise RuntimeError("PAGEMAP_SCAN not supported") from None
    finally:
        os.close(fd)
    return "available (dirty tracking for pre-dump)"


def _dirty_tracking() -> str:
    from core.kernel import dirty

    try:
        dirty.probe()
    except (OSError, RuntimeError) as exc:
        raise RuntimeError(f"none (pre-dump and migrate unavailable: {exc})") from None
    return "PAGEMAP_SCAN+uffd-wp-async (pre-dump, dump --prev, migrate)"


def _userfaultfd() -> str:
    fd = syscall(K.SYS_USERFAULTFD, os.O_CLOEXEC | os.O_NONBLOCK)
    os.close(fd)
    return "available (lazy restore)"


def _pid_max() -> str:
    with open("/proc/sys/kernel/pid_max") as f:
        return f"pid_max {f.read().strip()}"


FEATURES = [
    Feature("root", True, _root),
    Feature("kernel", True, _kernel),
    Feature("ptrace-seize", True, lambda: _syscall_exists(K.SYS_PTRACE, K.PTRACE_SEIZE, 0, 0, 0)),
    Feature("clone3-set-tid", True, lambda: _syscall_exists(K.SYS_CLONE3, 0, 0)),
    Feature("checkpoint-restore", True, _checkpoint_restore),
    Feature("prctl-mm-map", True, _pr_set_mm_map),
    Feature("pagemap", True, _pagemap),
    Feature("process-vm-rw", True,
            lambda: _syscall_exists(K.SYS_PROCESS_VM_READV, 0, 0, 0, 0, 0, 0)),
    Feature("pid-max", True, _pid_max),
    Feature("userfaultfd", False, _userfaultfd),
    Feature("pidfd-getfd", False, lambda: _syscall_exists(K.SYS_PIDFD_GETFD, -1, 0, 0)),
    Feature("pagemap-scan", False, _pagemap_scan),
    Feature("dirty-tracking", False, _dirty_tracking),
]


def run_checks() -> tuple[list[str], bool]:
    lines, ok = [], True
    for feat in FEATURES:
        try:
            detail = feat.probe()
            lines.append(f"ok       {feat.name:<20} {detail}")
        except (OSError, RuntimeError) as exc:
            status = "MISSING " if feat.needed else "absent  "
            ok = ok and not feat.needed
            lines.append(f"{status} {feat.name:<20} {exc}")
    return lines, ok
