from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Inventory(_message.Message):
    __slots__ = ("format_version", "tool_version", "kernel_release", "arch", "created_unix_ns", "root_pid", "pids", "compression", "page_size", "vdso_size", "leave_running", "pipes", "socket_pairs", "unix_listeners", "parent", "predump")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    KERNEL_RELEASE_FIELD_NUMBER: _ClassVar[int]
    ARCH_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    ROOT_PID_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    VDSO_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEAVE_RUNNING_FIELD_NUMBER: _ClassVar[int]
    PIPES_FIELD_NUMBER: _ClassVar[int]
    SOCKET_PAIRS_FIELD_NUMBER: _ClassVar[int]
    UNIX_LISTENERS_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PREDUMP_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    tool_version: str
    kernel_release: str
    arch: str
    created_unix_ns: int
    root_pid: int
    pids: _containers.RepeatedScalarFieldContainer[int]
    compression: str
    page_size: int
    vdso_size: int
    leave_running: bool
    pipes: _containers.RepeatedCompositeFieldContainer[PipeData]
    socket_pairs: _containers.RepeatedCompositeFieldContainer[SocketPair]
    unix_listeners: _containers.RepeatedCompositeFieldContainer[UnixListener]
    parent: str
    predump: bool
    def __init__(self, format_version: _Optional[int] = ..., tool_version: _Optional[str] = ..., kernel_release: _Optional[str] = ..., arch: _Optional[str] = ..., created_unix_ns: _Optional[int] = ..., root_pid: _Optional[int] = ..., pids: _Optional[_Iterable[int]] = ..., compression: _Optional[str] = ..., page_size: _Optional[int] = ..., vdso_size: _Optional[int] = ..., leave_running: _Optional[bool] = ..., pipes: _Optional[_Iterable[_Union[PipeData, _Mapping]]] = ..., socket_pairs: _Optional[_Iterable[_Union[SocketPair, _Mapping]]] = ..., unix_listeners: _Optional[_Iterable[_Union[UnixListener, _Mapping]]] = ..., parent: _Optional[str] = ..., predump: _Optional[bool] = ...) -> None: ...

class PipeData(_message.Message):
    __slots__ = ("ino", "data", "capacity", "fifo_path")
    INO_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    FIFO_PATH_FIELD_NUMBER: _ClassVar[int]
    ino: int
    data: bytes
    capacity: int
    fifo_path: str
    def __init__(self, ino: _Optional[int] = ..., data: _Optional[bytes] = ..., capacity: _Optional[int] = ..., fifo_path: _Optional[str] = ...) -> None: ...

class Vma(_message.Message):
    __slots__ = ("start", "end", "prot", "kind", "pgoff", "path", "name", "growsdown", "file_size", "file_mtime_ns", "shmem_ino")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ANON_PRIVATE: _ClassVar[Vma.Kind]
        ANON_SHARED: _ClassVar[Vma.Kind]
        FILE_PRIVATE: _ClassVar[Vma.Kind]
        FILE_SHARED: _ClassVar[Vma.Kind]
        VDSO: _ClassVar[Vma.Kind]
        VSYSCALL: _ClassVar[Vma.Kind]
    ANON_PRIVATE: Vma.Kind
    ANON_SHARED: Vma.Kind
    FILE_PRIVATE: Vma.Kind
    FILE_SHARED: Vma.Kind
    VDSO: Vma.Kind
    VSYSCALL: Vma.Kind
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    PROT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PGOFF_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    GROWSDOWN_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_FIELD_NUMBER: _ClassVar[int]
    FILE_MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    SHMEM_INO_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    prot: int
    kind: Vma.Kind
    pgoff: int
    path: str
    name: str
    growsdown: bool
    file_size: int
    file_mtime_ns: int
    shmem_ino: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ..., prot: _Optional[int] = ..., kind: _Optional[_Union[Vma.Kind, str]] = ..., pgoff: _Optional[int] = ..., path: _Optional[str] = ..., name: _Optional[str] = ..., growsdown: _Optional[bool] = ..., file_size: _Optional[int] = ..., file_mtime_ns: _Optional[int] = ..., shmem_ino: _Optional[int] = ...) -> None: ...

class PageBlock(_message.Message):
    __slots__ = ("vaddr", "nr_pages", "offset", "length", "crc32", "lz4")
    VADDR_FIELD_NUMBER: _ClassVar[int]
    NR_PAGES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    LZ4_FIELD_NUMBER: _ClassVar[int]
    vaddr: int
    nr_pages: int
    offset: int
    length: int
    crc32: int
    lz4: bool
    def __init__(self, vaddr: _Optional[int] = ..., nr_pages: _Optional[int] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., crc32: _Optional[int] = ..., lz4: _Optional[bool] = ...) -> None: ...

class MmFields(_message.Message):
    __slots__ = ("start_code", "end_code", "start_data", "end_data", "start_brk", "brk", "start_stack", "arg_start", "arg_end", "env_start", "env_end", "auxv", "exe")
    START_CODE_FIELD_NUMBER: _ClassVar[int]
    END_CODE_FIELD_NUMBER: _ClassVar[int]
    START_DATA_FIELD_NUMBER: _ClassVar[int]
    END_DATA_FIELD_NUMBER: _ClassVar[int]
    START_BRK_FIELD_NUMBER: _ClassVar[int]
    BRK_FIELD_NUMBER: _ClassVar[int]
    START_STACK_FIELD_NUMBER: _ClassVar[int]
    ARG_START_FIELD_NUMBER: _ClassVar[int]
    ARG_END_FIELD_NUMBER: _ClassVar[int]
    ENV_START_FIELD_NUMBER: _ClassVar[int]
    ENV_END_FIELD_NUMBER: _ClassVar[int]
    AUXV_FIELD_NUMBER: _ClassVar[int]
    EXE_FIELD_NUMBER: _ClassVar[int]
    start_code: int
    end_code: int
    start_data: int
    end_data: int
    start_brk: int
    brk: int
    start_stack: int
    arg_start: int
    arg_end: int
    env_start: int
    env_end: int
    auxv: bytes
    exe: str
    def __init__(self, start_code: _Optional[int] = ..., end_code: _Optional[int] = ..., start_data: _Optional[int] = ..., end_data: _Optional[int] = ..., start_brk: _Optional[int] = ..., brk: _Optional[int] = ..., start_stack: _Optional[int] = ..., arg_start: _Optional[int] = ..., arg_end: _Optional[int] = ..., env_start: _Optional[int] = ..., env_end: _Optional[int] = ..., auxv: _Optional[bytes] = ..., exe: _Optional[str] = ...) -> None: ...

class SigAction(_message.Message):
    __slots__ = ("signo", "handler", "flags", "restorer", "mask")
    SIGNO_FIELD_NUMBER: _ClassVar[int]
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    RESTORER_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    signo: int
    handler: int
    flags: int
    restorer: int
    mask: int
    def __init__(self, signo: _Optional[int] = ..., handler: _Optional[int] = ..., flags: _Optional[int] = ..., restorer: _Optional[int] = ..., mask: _Optional[int] = ...) -> None: ...

class Rseq(_message.Message):
    __slots__ = ("ptr", "size", "signature")
    PTR_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ptr: int
    size: int
    signature: int
    def __init__(self, ptr: _Optional[int] = ..., size: _Optional[int] = ..., signature: _Optional[int] = ...) -> None: ...

class Rlimit(_message.Message):
    __slots__ = ("resource", "soft", "hard")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    SOFT_FIELD_NUMBER: _ClassVar[int]
    HARD_FIELD_NUMBER: _ClassVar[int]
    resource: int
    soft: int
    hard: int
    def __init__(self, resource: _Optional[int] = ..., soft: _Optional[int] = ..., hard: _Optional[int] = ...) -> None: ...

class Creds(_message.Message):
    __slots__ = ("uid", "euid", "suid", "fsuid", "gid", "egid", "sgid", "fsgid", "groups")
    UID_FIELD_NUMBER: _ClassVar[int]
    EUID_FIELD_NUMBER: _ClassVar[int]
    SUID_FIELD_NUMBER: _ClassVar[int]
    FSUID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    EGID_FIELD_NUMBER: _ClassVar[int]
    SGID_FIELD_NUMBER: _ClassVar[int]
    FSGID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    uid: int
    euid: int
    suid: int
    fsuid: int
    gid: int
    egid: int
    sgid: int
    fsgid: int
    groups: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, uid: _Optional[int] = ..., euid: _Optional[int] = ..., suid: _Optional[int] = ..., fsuid: _Optional[int] = ..., gid: _Optional[int] = ..., egid: _Optional[int] = ..., sgid: _Optional[int] = ..., fsgid: _Optional[int] = ..., groups: _Optional[_Iterable[int]] = ...) -> None: ...

class FileDesc(_message.Message):
    __slots__ = ("fd", "kind", "path", "flags", "pos", "size", "pipe_ino", "internal", "socket_ino", "share_pid", "share_fd")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        REGULAR: _ClassVar[FileDesc.Kind]
        DEV_NULL: _ClassVar[FileDesc.Kind]
        TTY: _ClassVar[FileDesc.Kind]
        PIPE: _ClassVar[FileDesc.Kind]
        DIRECTORY: _ClassVar[FileDesc.Kind]
        UNIX_SOCKET: _ClassVar[FileDesc.Kind]
    REGULAR: FileDesc.Kind
    DEV_NULL: FileDesc.Kind
    TTY: FileDesc.Kind
    PIPE: FileDesc.Kind
    DIRECTORY: FileDesc.Kind
    UNIX_SOCKET: FileDesc.Kind
    FD_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    POS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PIPE_INO_FIELD_NUMBER: _ClassVar[int]
    INTERNAL_FIELD_NUMBER: _ClassVar[int]
    SOCKET_INO_FIELD_NUMBER: _ClassVar[int]
    SHARE_PID_FIELD_NUMBER: _ClassVar[int]
    SHARE_FD_FIELD_NUMBER: _ClassVar[int]
    fd: int
    kind: FileDesc.Kind
    path: str
    flags: int
    pos: int
    size: int
    pipe_ino: int
    internal: bool
    socket_ino: int
    share_pid: int
    share_fd: int
    def __init__(self, fd: _Optional[int] = ..., kind: _Optional[_Union[FileDesc.Kind, str]] = ..., path: _Optional[str] = ..., flags: _Optional[int] = ..., pos: _Optional[int] = ..., size: _Optional[int] = ..., pipe_ino: _Optional[int] = ..., internal: _Optional[bool] = ..., socket_ino: _Optional[int] = ..., share_pid: _Optional[int] = ..., share_fd: _Optional[int] = ...) -> None: ...

class UnixListener(_message.Message):
    __slots__ = ("ino", "type", "name")
    INO_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ino: int
    type: int
    name: bytes
    def __init__(self, ino: _Optional[int] = ..., type: _Optional[int] = ..., name: _Optional[bytes] = ...) -> None: ...

class SocketPair(_message.Message):
    __slots__ = ("ino_a", "ino_b", "type", "queued_a", "queued_b")
    INO_A_FIELD_NUMBER: _ClassVar[int]
    INO_B_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    QUEUED_A_FIELD_NUMBER: _ClassVar[int]
    QUEUED_B_FIELD_NUMBER: _ClassVar[int]
    ino_a: int
    ino_b: int
    type: int
    queued_a: _containers.RepeatedScalarFieldContainer[bytes]
    queued_b: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, ino_a: _Optional[int] = ..., ino_b: _Optional[int] = ..., type: _Optional[int] = ..., queued_a: _Optional[_Iterable[bytes]] = ..., queued_b: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ThreadState(_message.Message):
    __slots__ = ("tid", "regs", "xstate", "sigmask", "rseq", "clear_tid_address", "pending_signals", "robust_list", "robust_list_len", "altstack_sp", "altstack_size", "altstack_flags", "comm")
    TID_FIELD_NUMBER: _ClassVar[int]
    REGS_FIELD_NUMBER: _ClassVar[int]
    XSTATE_FIELD_NUMBER: _ClassVar[int]
    SIGMASK_FIELD_NUMBER: _ClassVar[int]
    RSEQ_FIELD_NUMBER: _ClassVar[int]
    CLEAR_TID_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PENDING_SIGNALS_FIELD_NUMBER: _ClassVar[int]
    ROBUST_LIST_FIELD_NUMBER: _ClassVar[int]
    ROBUST_LIST_LEN_FIELD_NUMBER: _ClassVar[int]
    ALTSTACK_SP_FIELD_NUMBER: _ClassVar[int]
    ALTSTACK_SIZE_FIELD_NUMBER: _ClassVar[int]
    ALTSTACK_FLAGS_FIELD_NUMBER: _ClassVar[int]
    COMM_FIELD_NUMBER: _ClassVar[int]
    tid: int
    regs: bytes
    xstate: bytes
    sigmask: int
    rseq: Rseq
    clear_tid_address: int
    pending_signals: _containers.RepeatedScalarFieldContainer[bytes]
    robust_list: int
    robust_list_len: int
    altstack_sp: int
    altstack_size: int
    altstack_flags: int
    comm: str
    def __init__(self, tid: _Optional[int] = ..., regs: _Optional[bytes] = ..., xstate: _Optional[bytes] = ..., sigmask: _Optional[int] = ..., rseq: _Optional[_Union[Rseq, _Mapping]] = ..., clear_tid_address: _Optional[int] = ..., pending_signals: _Optional[_Iterable[bytes]] = ..., robust_list: _Optional[int] = ..., robust_list_len: _Optional[int] = ..., altstack_sp: _Optional[int] = ..., altstack_size: _Optional[int] = ..., altstack_flags: _Optional[int] = ..., comm: _Optional[str] = ...) -> None: ...

class ProcessImage(_message.Message):
    __slots__ = ("pid", "ppid", "comm", "cwd", "umask", "creds", "mm", "vmas", "sigactions", "rlimits", "fds", "threads", "pages_file", "pages", "pages_bytes", "pgid", "sid", "itimers", "shared_pending_signals", "vdso_size", "stop_signal", "zombie", "exit_status", "start_time", "tracking_fd", "inherited")
    PID_FIELD_NUMBER: _ClassVar[int]
    PPID_FIELD_NUMBER: _ClassVar[int]
    COMM_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    UMASK_FIELD_NUMBER: _ClassVar[int]
    CREDS_FIELD_NUMBER: _ClassVar[int]
    MM_FIELD_NUMBER: _ClassVar[int]
    VMAS_FIELD_NUMBER: _ClassVar[int]
    SIGACTIONS_FIELD_NUMBER: _ClassVar[int]
    RLIMITS_FIELD_NUMBER: _ClassVar[int]
    FDS_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    PAGES_FILE_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    PAGES_BYTES_FIELD_NUMBER: _ClassVar[int]
    PGID_FIELD_NUMBER: _ClassVar[int]
    SID_FIELD_NUMBER: _ClassVar[int]
    ITIMERS_FIELD_NUMBER: _ClassVar[int]
    SHARED_PENDING_SIGNALS_FIELD_NUMBER: _ClassVar[int]
    VDSO_SIZE_FIELD_NUMBER: _ClassVar[int]
    STOP_SIGNAL_FIELD_NUMBER: _ClassVar[int]
    ZOMBIE_FIELD_NUMBER: _ClassVar[int]
    EXIT_STATUS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    TRACKING_FD_FIELD_NUMBER: _ClassVar[int]
    INHERITED_FIELD_NUMBER: _ClassVar[int]
    pid: int
    ppid: int
    comm: str
    cwd: str
    umask: int
    creds: Creds
    mm: MmFields
    vmas: _containers.RepeatedCompositeFieldContainer[Vma]
    sigactions: _containers.RepeatedCompositeFieldContainer[SigAction]
    rlimits: _containers.RepeatedCompositeFieldContainer[Rlimit]
    fds: _containers.RepeatedCompositeFieldContainer[FileDesc]
    threads: _containers.RepeatedCompositeFieldContainer[ThreadState]
    pages_file: str
    pages: _containers.RepeatedCompositeFieldContainer[PageBlock]
    pages_bytes: int
    pgid: int
    sid: int
    itimers: _containers.RepeatedCompositeFieldContainer[ITimer]
    shared_pending_signals: _containers.RepeatedScalarFieldContainer[bytes]
    vdso_size: int
    stop_signal: int
    zombie: bool
    exit_status: int
    start_time: int
    tracking_fd: int
    inherited: _containers.RepeatedCompositeFieldContainer[PageRange]
    def __init__(self, pid: _Optional[int] = ..., ppid: _Optional[int] = ..., comm: _Optional[str] = ..., cwd: _Optional[str] = ..., umask: _Optional[int] = ..., creds: _Optional[_Union[Creds, _Mapping]] = ..., mm: _Optional[_Union[MmFields, _Mapping]] = ..., vmas: _Optional[_Iterable[_Union[Vma, _Mapping]]] = ..., sigactions: _Optional[_Iterable[_Union[SigAction, _Mapping]]] = ..., rlimits: _Optional[_Iterable[_Union[Rlimit, _Mapping]]] = ..., fds: _Optional[_Iterable[_Union[FileDesc, _Mapping]]] = ..., threads: _Optional[_Iterable[_Union[ThreadState, _Mapping]]] = ..., pages_file: _Optional[str] = ..., pages: _Optional[_Iterable[_Union[PageBlock, _Mapping]]] = ..., pages_bytes: _Optional[int] = ..., pgid: _Optional[int] = ..., sid: _Optional[int] = ..., itimers: _Optional[_Iterable[_Union[ITimer, _Mapping]]] = ..., shared_pending_signals: _Optional[_Iterable[bytes]] = ..., vdso_size: _Optional[int] = ..., stop_signal: _Optional[int] = ..., zombie: _Optional[bool] = ..., exit_status: _Optional[int] = ..., start_time: _Optional[int] = ..., tracking_fd: _Optional[int] = ..., inherited: _Optional[_Iterable[_Union[PageRange, _Mapping]]] = ...) -> None: ...

class PageRange(_message.Message):
    __slots__ = ("vaddr", "nr_pages")
    VADDR_FIELD_NUMBER: _ClassVar[int]
    NR_PAGES_FIELD_NUMBER: _ClassVar[int]
    vaddr: int
    nr_pages: int
    def __init__(self, vaddr: _Optional[int] = ..., nr_pages: _Optional[int] = ...) -> None: ...

class ITimer(_message.Message):
    __slots__ = ("which", "interval_us", "value_us")
    WHICH_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_US_FIELD_NUMBER: _ClassVar[int]
    VALUE_US_FIELD_NUMBER: _ClassVar[int]
    which: int
    interval_us: int
    value_us: int
    def __init__(self, which: _Optional[int] = ..., interval_us: _Optional[int] = ..., value_us: _Optional[int] = ...) -> None: ...

class WorkingSetRange(_message.Message):
    __slots__ = ("vaddr", "nr_pages")
    VADDR_FIELD_NUMBER: _ClassVar[int]
    NR_PAGES_FIELD_NUMBER: _ClassVar[int]
    vaddr: int
    nr_pages: int
    def __init__(self, vaddr: _Optional[int] = ..., nr_pages: _Optional[int] = ...) -> None: ...

class ProcessWorkingSet(_message.Message):
    __slots__ = ("pid", "ranges", "runs", "pages_offset", "pages_crc32")
    PID_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    PAGES_OFFSET_FIELD_NUMBER: _ClassVar[int]
    PAGES_CRC32_FIELD_NUMBER: _ClassVar[int]
    pid: int
    ranges: _containers.RepeatedCompositeFieldContainer[WorkingSetRange]
    runs: _containers.RepeatedCompositeFieldContainer[WorkingSetRange]
    pages_offset: int
    pages_crc32: int
    def __init__(self, pid: _Optional[int] = ..., ranges: _Optional[_Iterable[_Union[WorkingSetRange, _Mapping]]] = ..., runs: _Optional[_Iterable[_Union[WorkingSetRange, _Mapping]]] = ..., pages_offset: _Optional[int] = ..., pages_crc32: _Optional[int] = ...) -> None: ...

class WorkingSet(_message.Message):
    __slots__ = ("format_version", "inventory_sha256", "recorded_unix_ns", "window_seconds", "processes")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    INVENTORY_SHA256_FIELD_NUMBER: _ClassVar[int]
    RECORDED_UNIX_NS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    inventory_sha256: bytes
    recorded_unix_ns: int
    window_seconds: float
    processes: _containers.RepeatedCompositeFieldContainer[ProcessWorkingSet]
    def __init__(self, format_version: _Optional[int] = ..., inventory_sha256: _Optional[bytes] = ..., recorded_unix_ns: _Optional[int] = ..., window_seconds: _Optional[float] = ..., processes: _Optional[_Iterable[_Union[ProcessWorkingSet, _Mapping]]] = ...) -> None: ...
