"""The one error tree of cim, and its mapping to and from gRPC status codes.

    CimError                        (base; never raised itself)
    ├── InvalidArgument             INVALID_ARGUMENT   bad or oversized input
    ├── NotFound                    NOT_FOUND          unknown user
    ├── AlreadyExists               ALREADY_EXISTS     name taken (or a look-alike), duplicate login
    ├── PermissionDenied            PERMISSION_DENIED  bad credentials, no cluster secret
    ├── Unauthenticated             UNAUTHENTICATED    missing, invalid or expired token
    ├── Unavailable                 UNAVAILABLE        no chat server, store or route down
    ├── ResourceExhausted           RESOURCE_EXHAUSTED limits
    ├── FailedPrecondition          FAILED_PRECONDITION a call out of order (send before login),
    │                                                  a client_msg_id reused for another message
    └── DeadlineExceeded            DEADLINE_EXCEEDED

Servers raise these; the gRPC edge (``cim.grpcutil``) turns them into a status
with their message. Clients turn a status back into the matching class with
:func:`from_rpc_error`, so callers catch ``cim.errors.NotFound``, never grpc's
types. Anything else escaping a servicer is a bug and becomes INTERNAL.
One item of a batch (a send result on a stream) carries its error as a
``common_pb2.ItemError``: :func:`to_item` and :func:`from_item` map it.
"""

from __future__ import annotations

from typing import ClassVar

import grpc

from cim.proto.v1 import common_pb2


class CimError(Exception):
    """Base of every error cim raises on purpose."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(CimError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(CimError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CimError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(CimError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(CimError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Unavailable(CimError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(CimError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(CimError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class DeadlineExceeded(CimError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Internal(CimError):
    """A bug or an unexpected failure on the other side."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[CimError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        Unauthenticated,
        Unavailable,
        ResourceExhausted,
        FailedPrecondition,
        DeadlineExceeded,
        Internal,
    )
}
_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def error_for_code(code: grpc.StatusCode, message: str) -> CimError:
    """The cim error for a gRPC status code (UNKNOWN-coded CimError when unmapped)."""
    cls = _BY_CODE.get(code)
    if cls is None:
        err = CimError(message or code.name)
        return err
    return cls(message)


def error_for_number(number: int, message: str) -> CimError:
    """Same as :func:`error_for_code` for the numeric code carried in protobuf messages."""
    return error_for_code(_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN), message)


def to_item(exc: CimError) -> common_pb2.ItemError:
    """The protobuf form of ``exc`` for one item of a batch (a send result on a stream)."""
    return common_pb2.ItemError(code=exc.code.value[0], message=exc.message)


def from_item(item: common_pb2.ItemError) -> CimError:
    """The cim error an ItemError stands for (the inverse of :func:`to_item`)."""
    return error_for_number(item.code, item.message)


def from_rpc_error(exc: grpc.RpcError) -> CimError:
    """Maps a failed call to the cim error of its status code."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return error_for_code(code, details or code.name)
