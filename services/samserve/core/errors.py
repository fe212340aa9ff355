"""Domain errors, each carrying the gRPC status it maps to (by name, no grpc import here).

    SamServeError                  base; never raised itself
    ├── InvalidInput               INVALID_ARGUMENT: bad image, bad prompt, unknown model
    ├── NotFound                   NOT_FOUND: no embedding for that image id
    ├── ResourceExhausted          RESOURCE_EXHAUSTED: over a size or concurrency limit
    ├── Unavailable                UNAVAILABLE: Redis or the encoder unreachable
    ├── DeadlineExceeded           DEADLINE_EXCEEDED
    └── ConfigError                a bad setting, at start-up (never sent to a client)

The message of each is shown to clients (ConfigError's to the operator, as one line), so it
names the field or flag and never leaks internals.
"""

from __future__ import annotations


class SamServeError(Exception):
    """Base of every error the services report to a client."""

    status_name: str = "INTERNAL"


class InvalidInput(SamServeError):
    """The request is malformed: undecodable image, bad prompt shapes, NaN, unknown model."""

    status_name = "INVALID_ARGUMENT"


class NotFound(SamServeError):
    """No embedding is stored for the requested image id and model."""

    status_name = "NOT_FOUND"


class ResourceExhausted(SamServeError):
    """A size or concurrency limit was hit."""

    status_name = "RESOURCE_EXHAUSTED"


class Unavailable(SamServeError):
    """A dependency (Redis, the encoder) cannot be reached; safe to retry."""

    status_name = "UNAVAILABLE"


class DeadlineExceeded(SamServeError):
    """The work did not finish within the caller's deadline."""

    status_name = "DEADLINE_EXCEEDED"


class ConfigError(SamServeError):
    """A setting is invalid or cannot be honoured (file missing, port in use); raised at start-up,
    its message one line naming the flag."""

    status_name = "FAILED_PRECONDITION"
