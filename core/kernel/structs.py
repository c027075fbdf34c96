"""ctypes structures shared with the kernel."""

from __future__ import annotations

import ctypes
from ctypes import c_int32, c_size_t, c_uint32, c_uint64, c_void_p


class IoVec(ctypes.Structure):
    _fields_ = [("base", c_void_p), ("len", c_size_t)]


class CloneArgs(ctypes.Structure):
    """struct clone_args (88 bytes, set_tid at 64)."""

    _fields_ = [
        ("flags", c_uint64),
        ("pidfd", c_uint64),
        ("child_tid", c_uint64),
        ("parent_tid", c_uint64),
        ("exit_signal", c_uint64),
        ("stack", c_uint64),
        ("stack_size", c_uint64),
        ("tls", c_uint64),
        ("set_tid", c_uint64),
        ("set_tid_size", c_uint64),
        ("cgroup", c_uint64),
    ]


class PrctlMmMap(ctypes.Structure):
    """struct prctl_mm_map (104 bytes)."""

    _fields_ = [
        ("start_code", c_uint64),
        ("end_code", c_uint64),
        ("start_data", c_uint64),
        ("end_data", c_uint64),
        ("start_brk", c_uint64),
        ("brk", c_uint64),
        ("start_stack", c_uint64),
        ("arg_start", c_uint64),
        ("arg_end", c_uint64),
        ("env_start", c_uint64),
        ("env_end", c_uint64),
        ("auxv", c_uint64),
        ("auxv_size", c_uint32),
        ("exe_fd", c_int32),
    ]


class KernelSigaction(ctypes.Structure):
    """The kernel's struct sigaction for rt_sigaction (32 bytes)."""

    _fields_ = [
        ("handler", c_uint64),
        ("flags", c_uint64),
        ("restorer", c_uint64),
        ("mask", c_uint64),
    ]


class RseqConfiguration(ctypes.Structure):
    """struct ptrace_rseq_configuration (24 bytes)."""

    _fields_ = [
        ("rseq_abi_pointer", c_uint64),
        ("rseq_abi_size", c_uint32),
        ("signature", c_uint32),
        ("flags", c_uint32),
        ("pad", c_uint32),
    ]


class PeekSiginfoArgs(ctypes.Structure):
    """struct ptrace_peeksiginfo_args (16 bytes)."""

    _fields_ = [("off", c_uint64), ("flags", c_uint32), ("nr", c_int32)]


assert ctypes.sizeof(CloneArgs) == 88
assert ctypes.sizeof(PrctlMmMap) == 104
assert ctypes.sizeof(KernelSigaction) == 32
assert ctypes.sizeof(RseqConfiguration) == 24
