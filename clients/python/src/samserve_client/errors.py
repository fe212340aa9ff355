"""Typed errors raised by the SDK, one per gRPC status, all under :class:`SamServeError`.

    SamServeError                    .code: grpc.StatusCode, .details: str
    ├── InvalidArgumentError         INVALID_ARGUMENT: bad image, bad prompt, unknown model
    ├── NotFoundError                NOT_FOUND: no embedding stored for that image id
    ├── ResourceExhaustedError       RESOURCE_EXHAUSTED: over a size or concurrency limit
    ├── UnavailableError             UNAVAILABLE: a service, Redis or Triton unreachable
    ├── DeadlineExceededError        DEADLINE_EXCEEDED
    ├── CancelledError               CANCELLED
    ├── UnauthenticatedError         UNAUTHENTICATED: no bearer token, or one the server refused
    └── InternalError                INTERNAL, UNKNOWN and every other code

The original :class:`grpc.RpcError` is kept as ``__cause__``.
"""

from __future__ import annotations

import grpc


class SamServeError(Exception):
    """Base of every SDK error; ``code`` is the gRPC status the server answered with."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, details: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(details)
        self.details = details
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"


class InvalidArgumentError(SamServeError):
    """The request was rejected: undecodable image, bad prompt shapes, NaN, unknown model."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(SamServeError):
    """No embedding is stored for that image id (embed it first)."""

    code = grpc.StatusCode.NOT_FOUND


class ResourceExhaustedError(SamServeError):
    """A size or concurrency limit was hit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(SamServeError):
    """A service or one of its dependencies could not be reached; safe to retry."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(SamServeError):
    """The call did not finish within its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class CancelledError(SamServeError):
    """The call was cancelled."""

    code = grpc.StatusCode.CANCELLED


class UnauthenticatedError(SamServeError):
    """The server wants a bearer token (``token=``) and got none, or one it does not accept."""

    code = grpc.StatusCode.UNAUTHENTICATED


class InternalError(SamServeError):
    """The server failed in a way that is not the caller's fault."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[SamServeError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        ResourceExhaustedError,
        UnavailableError,
        DeadlineExceededError,
        CancelledError,
        UnauthenticatedError,
        InternalError,
    )
}


def from_rpc_error(error: grpc.RpcError) -> SamServeError:
    """Turn a gRPC error into the matching :class:`SamServeError` subclass (cause kept)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(error)
    cls = _BY_CODE.get(code, InternalError)
    exc = cls(details, code=code)
    exc.__cause__ = error
    return exc


def from_status(code: int, details: str) -> SamServeError:
    """The error for a numeric status code carried inside a message (e.g. a stream item)."""
    status = next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    return _BY_CODE.get(status, InternalError)(details, code=status)
