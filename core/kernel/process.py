"""Process creation with a chosen PID (clone3 set_tid) and process-level queries."""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Callable
from ctypes import addressof, sizeof

from core.kernel import constants as K
from core.kernel.libc import syscall
from core.kernel.structs import CloneArgs

HELPER_EXE = "/bin/true"


# The child of clone3 must not run Python: lazarus is multi-threaded (event
# loop, tracer), and another thread may hold the malloc or GIL-adjacent locks
# at the instant of the clone. So the clone and everything the child does run
# in these few instructions, called as
#   long spawn(clone_args *args, size_t size, char *path, char **argv, char **envp)
# child: ptrace(PTRACE_TRACEME); execve(path, argv, envp); exit_group(127).
# parent: returns clone3's result (child pid or -errno).
_SPAWN_CODE = bytes.fromhex(
    "4989d1"        # mov r9, rdx        path
    "4989ca"        # mov r10, rcx       argv
    "b8b3010000"    # mov eax, 435       clone3(rdi=args, rsi=size)
    "0f05"          # syscall
    "4885c0"        # test rax, rax
    "7525"          # jnz parent (+37)
    "b865000000"    # mov eax, 101       ptrace(PTRACE_TRACEME)
    "31ff"          # xor edi, edi
    "0f05"          # syscall
    "b83b000000"    # mov eax, 59        execve(path, argv, envp)
    "4c89cf"        # mov rdi, r9
    "4c89d6"        # mov rsi, r10
    "4c89c2"        # mov rdx, r8
    "0f05"          # syscall
    "b8e7000000"    # mov eax, 231       exit_group(127)
    "bf7f000000"    # mov edi, 127
    "0f05"          # syscall
    "c3"            # parent: ret
)
_SpawnFn = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                            ctypes.c_void_p, ctypes.c_void_p)
_spawn_page: mmap.mmap | None = None
_spawn: Callable[..., int] | None = None


def _spawn_fn() -> Callable[..., int]:
    global _spawn_page, _spawn
    if _spawn is None:
        _spawn_page = mmap.mmap(-1, mmap.PAGESIZE,
                                prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        _spawn_page.write(_SPAWN_CODE)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(_spawn_page))
        _spawn = _SpawnFn(addr)
    return _spawn


def clone_traced(argv: list[str], pid: int = 0, flags: int = 0) -> int:
    """Create a child (with PID `pid` in its PID namespace when given) that does
    PTRACE_TRACEME and execs argv; it stops with SIGTRAP right after exec,
    before running any code of its own. Returns its PID as lazarus sees it.

    Must run on the tracer thread: the tracer of a TRACEME child is the thread
    that cloned it. Raises OSError (EEXIST while `pid` is still taken).
    """
    set_tid = (ctypes.c_int32 * 1)(pid)
    args = CloneArgs(flags=flags, exit_signal=K.SIGCHLD, set_tid=addressof(set_tid) if pid else 0,
                     set_tid_size=1 if pid else 0)
    strings = [ctypes.create_string_buffer(a.encode()) for a in argv]
    argp = (ctypes.c_void_p * (len(argv) + 1))(*[addressof(s) for s in strings], None)
    envp = (ctypes.c_void_p * 1)(None)
    ret = int(_spawn_fn()(addressof(args), sizeof(args), addressof(strings[0]), addressof(argp),
                          addressof(envp)))
    if ret < 0:
        raise OSError(-ret, os.strerror(-ret))
    return ret


def clone_traced_helper(pid: int, exe: str = HELPER_EXE) -> int:
    """The restore helper: `exe` with PID `pid`, stopped right after exec."""
    return clone_traced([exe], pid)


# The init of a PID namespace made by --pidns (argv: root PID, report fd):
# the restored root is its child; it reaps whatever ends in the namespace,
# reports the root's wait status on the report fd, and ends with its last child.
PIDNS_INIT = """
import os, sys
root, report = int(sys.argv[1]), int(sys.argv[2])
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
os.closerange(3, report)
os.closerange(report + 1, 65536)
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        break
    if pid == root:
        try:
            os.write(report, b"%d\\n" % status)
            os.close(report)
        except OSError:
            pass
"""


def pidfd_open(pid: int) -> int:
    return syscall(K.SYS_PIDFD_OPEN, pid, 0)


def get_robust_list(tid: int) -> tuple[int, int]:
    """The robust futex list head and its size, as the thread registered them."""
    head = ctypes.c_uint64()
    size = ctypes.c_size_t()
    syscall(K.SYS_GET_ROBUST_LIST, tid, addressof(head), addressof(size))
    return int(head.value), int(size.value)
