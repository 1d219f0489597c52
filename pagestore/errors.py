"""pagestore's exceptions, sorted by whose fault the failure is.

    PagestoreError                       (internal: a bug or an unexpected state)
     +-- BadRequest                      the caller sent something we refuse
     |    +-- ProtocolError              malformed protocol message
     |    +-- LsnOutOfRange              an LSN outside what the timeline can serve
     |    +-- ConfigError                unknown config key or bad value (names the key)
     +-- UnsupportedWalRecord            a WAL record we cannot apply (names rmgr and info)
     +-- NotFound
     |    +-- TenantNotFound
     |    +-- TimelineNotFound
     +-- AlreadyExists
     +-- FailedPrecondition
     |    +-- CatalogRevisionMismatch    the catalog is at another Alembic revision
     +-- Unavailable                     a peer service or the catalog cannot be reached
     |    +-- LsnTimeout                 WaitForLsn ran out of time
     +-- CorruptionError                 stored data fails its checks (checksums, headers)
     |    +-- CorruptLayerError
     |    +-- CorruptWalError
     +-- RemoteStorageError              S3/Azure/local remote storage (permanent or not)
          +-- RemoteObjectNotFound       the object (or the bucket/container) is not there

Each class carries the gRPC status code and the SQLSTATE it maps to; the transports map
them only at their edges (pagestore.grpcutil for gRPC, the gateway for libpq
ErrorResponses).  The message holds the ids and values a reader needs.  Classes register
themselves by name so a gRPC client can re-raise the class the server raised.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

_REGISTRY: dict[str, type[PagestoreError]] = {}

#: gRPC trailing-metadata key carrying the server-side exception class name.
ERROR_CLASS_METADATA_KEY = "pagestore-error-class"


class PagestoreError(Exception):
    """Root of pagestore's exceptions: an unexpected internal failure."""

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    sqlstate: ClassVar[str] = "XX000"  # internal_error

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__


_REGISTRY["PagestoreError"] = PagestoreError


class BadRequest(PagestoreError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    sqlstate = "22023"  # invalid_parameter_value


class ProtocolError(BadRequest):
    sqlstate = "08P01"  # protocol_violation


class LsnOutOfRange(BadRequest):
    grpc_code = grpc.StatusCode.OUT_OF_RANGE


class ConfigError(BadRequest):
    sqlstate = "F0000"  # config_file_error


class UnsupportedWalRecord(PagestoreError):
    """A WAL record that pagestore cannot apply; the message names rmgr and info."""

    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    sqlstate = "0A000"  # feature_not_supported


class NotFound(PagestoreError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    sqlstate = "42704"  # undefined_object


class TenantNotFound(NotFound):
    pass


class TimelineNotFound(NotFound):
    pass


class LayerFileMissing(NotFound):
    """A layer in the map held has no file any more: compaction or GC swapped it out
    after the map was read.  The reader reloads the map and retries (TimelineView)."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    sqlstate = "58030"  # io_error


class AlreadyExists(PagestoreError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    sqlstate = "42710"  # duplicate_object


class AuthenticationError(PagestoreError):
    """No token, or one that is malformed, expired or signed by no known key."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    sqlstate = "28P01"  # invalid_password


class PermissionDenied(PagestoreError):
    """A valid token that does not cover the request (another tenant, a wrong scope)."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    sqlstate = "28000"  # invalid_authorization_specification


class FailedPrecondition(PagestoreError):
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    sqlstate = "55000"  # object_not_in_prerequisite_state


class CatalogRevisionMismatch(FailedPrecondition):
    pass


class Unavailable(PagestoreError):
    grpc_code = grpc.StatusCode.UNAVAILABLE
    sqlstate = "08006"  # connection_failure


class LsnTimeout(Unavailable):
    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    sqlstate = "57014"  # query_canceled


class CorruptionError(PagestoreError):
    grpc_code = grpc.StatusCode.DATA_LOSS
    sqlstate = "XX001"  # data_corrupted


class CorruptLayerError(CorruptionError):
    pass


class CorruptWalError(CorruptionError):
    pass


class RemoteStorageError(PagestoreError):
    grpc_code = grpc.StatusCode.UNAVAILABLE
    sqlstate = "58030"  # io_error

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class RemoteObjectNotFound(RemoteStorageError):
    def __init__(self, message: str, *, permanent: bool = True) -> None:
        super().__init__(message, permanent=permanent)


def error_class(name: str) -> type[PagestoreError] | None:
    """The registered exception class of that name, if any."""
    return _REGISTRY.get(name)


def from_rpc_error(err: grpc.RpcError) -> PagestoreError:
    """Rebuild the server's exception from a gRPC error (client side)."""
    details = err.details() if hasattr(err, "details") else None
    message = details or str(err)
    cls: type[PagestoreError] | None = None
    trailing = err.trailing_metadata() if hasattr(err, "trailing_metadata") else None
    for item in trailing or ():
        # The sync API yields _Metadatum(key, value), grpc.aio plain (key, value) tuples.
        key, value = getattr(item, "key", None), getattr(item, "value", None)
        if key is None and isinstance(item, tuple) and len(item) == 2:
            key, value = item
        if key == ERROR_CLASS_METADATA_KEY and isinstance(value, str):
            cls = error_class(value)
    if cls is None:
        code = err.code() if hasattr(err, "code") else None
        cls = _BY_CODE.get(code, PagestoreError) if code is not None else PagestoreError
    if cls is not None and issubclass(cls, RemoteStorageError):
        return cls(message)
    return cls(message)


_BY_CODE: dict[grpc.StatusCode, type[PagestoreError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: BadRequest,
    grpc.StatusCode.OUT_OF_RANGE: LsnOutOfRange,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: LsnTimeout,
    grpc.StatusCode.DATA_LOSS: CorruptionError,
}
