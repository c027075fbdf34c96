"""Process creation with a chosen PID (clone3 set_tid) and process-level queries."""

from __future__ import annotations

import ctypes
import os
from ctypes import addressof, sizeof

from core.kernel import constants as K
from core.kernel.libc import py_syscall, syscall, syscall_args
from core.kernel.structs import CloneArgs

HELPER_EXE = "/bin/true"


def clone_traced_helper(pid: int, exe: str = HELPER_EXE) -> int:
    """Create a child with PID `pid` that does PTRACE_TRACEME and execs `exe`;
    it stops with SIGTRAP right after exec, before running any code of its own.

    Must run on the tracer thread: the tracer of a TRACEME child is the thread
    that cloned it. Raises OSError (EEXIST while `pid` is still taken).
    """
    set_tid = (ctypes.c_int32 * 1)(pid)
    args = CloneArgs(exit_signal=K.SIGCHLD, set_tid=addressof(set_tid), set_tid_size=1)
    path = ctypes.create_string_buffer(exe.encode())
    argv = (ctypes.c_void_p * 2)(addressof(path), None)
    envp = (ctypes.c_void_p * 1)(None)
    # Everything the child touches is built before the clone: the child is a
    # copy of a multi-threaded process and must not allocate or take locks.
    a_clone = syscall_args((K.SYS_CLONE3, addressof(args), sizeof(args)))
    a_traceme = syscall_args((K.SYS_PTRACE, K.PTRACE_TRACEME, 0, 0, 0))
    a_exec = syscall_args((K.SYS_EXECVE, addressof(path), addressof(argv), addressof(envp)))
    a_exit = syscall_args((K.SYS_EXIT_GROUP, 127))
    ret = py_syscall(*a_clone)
    if ret == 0:
        py_syscall(*a_traceme)
        py_syscall(*a_exec)
        py_syscall(*a_exit)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def pidfd_open(pid: int) -> int:
    return syscall(K.SYS_PIDFD_OPEN, pid, 0)


def get_robust_list(tid: int) -> tuple[int, int]:
    """The robust futex list head and its size, as the thread registered them."""
    head = ctypes.c_uint64()
    size = ctypes.c_size_t()
    syscall(K.SYS_GET_ROBUST_LIST, tid, addressof(head), addressof(size))
    return int(head.value), int(size.value)
