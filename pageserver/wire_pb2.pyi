from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClientHello(_message.Message):
    __slots__ = ("protocol_version", "token", "features", "client", "restore")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    token: str
    features: _containers.RepeatedScalarFieldContainer[str]
    client: str
    restore: str
    def __init__(self, protocol_version: _Optional[int] = ..., token: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., client: _Optional[str] = ..., restore: _Optional[str] = ...) -> None: ...

class ServerHello(_message.Message):
    __slots__ = ("protocol_version", "features", "server", "max_frame_payload", "max_request_pages")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUEST_PAGES_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    features: _containers.RepeatedScalarFieldContainer[str]
    server: str
    max_frame_payload: int
    max_request_pages: int
    def __init__(self, protocol_version: _Optional[int] = ..., features: _Optional[_Iterable[str]] = ..., server: _Optional[str] = ..., max_frame_payload: _Optional[int] = ..., max_request_pages: _Optional[int] = ...) -> None: ...

class ListImages(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListFiles(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: str
    def __init__(self, image: _Optional[str] = ...) -> None: ...

class GetFile(_message.Message):
    __slots__ = ("image", "name")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    image: str
    name: str
    def __init__(self, image: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class GetPages(_message.Message):
    __slots__ = ("image", "pid", "vaddr", "nr_pages")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    VADDR_FIELD_NUMBER: _ClassVar[int]
    NR_PAGES_FIELD_NUMBER: _ClassVar[int]
    image: str
    pid: int
    vaddr: int
    nr_pages: int
    def __init__(self, image: _Optional[str] = ..., pid: _Optional[int] = ..., vaddr: _Optional[int] = ..., nr_pages: _Optional[int] = ...) -> None: ...

class StreamPages(_message.Message):
    __slots__ = ("image", "pid")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    image: str
    pid: int
    def __init__(self, image: _Optional[str] = ..., pid: _Optional[int] = ...) -> None: ...

class PutImage(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PutFile(_message.Message):
    __slots__ = ("name", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class PutCommit(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Cancel(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PutWorkingSet(_message.Message):
    __slots__ = ("image", "data")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    image: str
    data: bytes
    def __init__(self, image: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class RestoreImage(_message.Message):
    __slots__ = ("image", "pidns")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PIDNS_FIELD_NUMBER: _ClassVar[int]
    image: str
    pidns: bool
    def __init__(self, image: _Optional[str] = ..., pidns: _Optional[bool] = ...) -> None: ...

class FlattenChain(_message.Message):
    __slots__ = ("last", "name")
    LAST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    last: str
    name: str
    def __init__(self, last: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class RemoveImage(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("list_images", "list_files", "get_file", "get_pages", "stream_pages", "put_image", "put_file", "put_commit", "cancel", "put_working_set", "restore_image", "flatten_chain", "remove_image")
    LIST_IMAGES_FIELD_NUMBER: _ClassVar[int]
    LIST_FILES_FIELD_NUMBER: _ClassVar[int]
    GET_FILE_FIELD_NUMBER: _ClassVar[int]
    GET_PAGES_FIELD_NUMBER: _ClassVar[int]
    STREAM_PAGES_FIELD_NUMBER: _ClassVar[int]
    PUT_IMAGE_FIELD_NUMBER: _ClassVar[int]
    PUT_FILE_FIELD_NUMBER: _ClassVar[int]
    PUT_COMMIT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    PUT_WORKING_SET_FIELD_NUMBER: _ClassVar[int]
    RESTORE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    FLATTEN_CHAIN_FIELD_NUMBER: _ClassVar[int]
    REMOVE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    list_images: ListImages
    list_files: ListFiles
    get_file: GetFile
    get_pages: GetPages
    stream_pages: StreamPages
    put_image: PutImage
    put_file: PutFile
    put_commit: PutCommit
    cancel: Cancel
    put_working_set: PutWorkingSet
    restore_image: RestoreImage
    flatten_chain: FlattenChain
    remove_image: RemoveImage
    def __init__(self, list_images: _Optional[_Union[ListImages, _Mapping]] = ..., list_files: _Optional[_Union[ListFiles, _Mapping]] = ..., get_file: _Optional[_Union[GetFile, _Mapping]] = ..., get_pages: _Optional[_Union[GetPages, _Mapping]] = ..., stream_pages: _Optional[_Union[StreamPages, _Mapping]] = ..., put_image: _Optional[_Union[PutImage, _Mapping]] = ..., put_file: _Optional[_Union[PutFile, _Mapping]] = ..., put_commit: _Optional[_Union[PutCommit, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., put_working_set: _Optional[_Union[PutWorkingSet, _Mapping]] = ..., restore_image: _Optional[_Union[RestoreImage, _Mapping]] = ..., flatten_chain: _Optional[_Union[FlattenChain, _Mapping]] = ..., remove_image: _Optional[_Union[RemoveImage, _Mapping]] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        INTERNAL: _ClassVar[Error.Code]
        BAD_REQUEST: _ClassVar[Error.Code]
        NOT_FOUND: _ClassVar[Error.Code]
        OUT_OF_RANGE: _ClassVar[Error.Code]
        EXISTS: _ClassVar[Error.Code]
        UNAUTHENTICATED: _ClassVar[Error.Code]
        UNSUPPORTED: _ClassVar[Error.Code]
        CORRUPTED: _ClassVar[Error.Code]
        CANCELLED: _ClassVar[Error.Code]
    INTERNAL: Error.Code
    BAD_REQUEST: Error.Code
    NOT_FOUND: Error.Code
    OUT_OF_RANGE: Error.Code
    EXISTS: Error.Code
    UNAUTHENTICATED: Error.Code
    UNSUPPORTED: Error.Code
    CORRUPTED: Error.Code
    CANCELLED: Error.Code
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: Error.Code
    message: str
    def __init__(self, code: _Optional[_Union[Error.Code, str]] = ..., message: _Optional[str] = ...) -> None: ...

class ImageList(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class FileInfo(_message.Message):
    __slots__ = ("name", "size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class FileList(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[FileInfo]
    def __init__(self, files: _Optional[_Iterable[_Union[FileInfo, _Mapping]]] = ...) -> None: ...

class StreamEnd(_message.Message):
    __slots__ = ("blocks", "pages")
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    blocks: int
    pages: int
    def __init__(self, blocks: _Optional[int] = ..., pages: _Optional[int] = ...) -> None: ...

class PutReady(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PutDone(_message.Message):
    __slots__ = ("files", "bytes")
    FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    files: int
    bytes: int
    def __init__(self, files: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class Restored(_message.Message):
    __slots__ = ("pid", "seconds")
    PID_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    pid: int
    seconds: float
    def __init__(self, pid: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class Flattened(_message.Message):
    __slots__ = ("bytes",)
    BYTES_FIELD_NUMBER: _ClassVar[int]
    bytes: int
    def __init__(self, bytes: _Optional[int] = ...) -> None: ...

class Removed(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkingSetStored(_message.Message):
    __slots__ = ("bytes",)
    BYTES_FIELD_NUMBER: _ClassVar[int]
    bytes: int
    def __init__(self, bytes: _Optional[int] = ...) -> None: ...

class Response(_message.Message):
    __slots__ = ("error", "images", "files", "stream_end", "put_ready", "put_done", "working_set_stored", "restored", "flattened", "removed")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    STREAM_END_FIELD_NUMBER: _ClassVar[int]
    PUT_READY_FIELD_NUMBER: _ClassVar[int]
    PUT_DONE_FIELD_NUMBER: _ClassVar[int]
    WORKING_SET_STORED_FIELD_NUMBER: _ClassVar[int]
    RESTORED_FIELD_NUMBER: _ClassVar[int]
    FLATTENED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    error: Error
    images: ImageList
    files: FileList
    stream_end: StreamEnd
    put_ready: PutReady
    put_done: PutDone
    working_set_stored: WorkingSetStored
    restored: Restored
    flattened: Flattened
    removed: Removed
    def __init__(self, error: _Optional[_Union[Error, _Mapping]] = ..., images: _Optional[_Union[ImageList, _Mapping]] = ..., files: _Optional[_Union[FileList, _Mapping]] = ..., stream_end: _Optional[_Union[StreamEnd, _Mapping]] = ..., put_ready: _Optional[_Union[PutReady, _Mapping]] = ..., put_done: _Optional[_Union[PutDone, _Mapping]] = ..., working_set_stored: _Optional[_Union[WorkingSetStored, _Mapping]] = ..., restored: _Optional[_Union[Restored, _Mapping]] = ..., flattened: _Optional[_Union[Flattened, _Mapping]] = ..., removed: _Optional[_Union[Removed, _Mapping]] = ...) -> None: ...
