"""The one exception tree of kvactors.

Every error a user can see is a `KVActorsError`. Each class carries the wire error
code (`code`) that the network protocol uses for it, so an error raised inside a node
becomes the same error on the client side, in any language.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ERROR_CODES",
    "ActorCrashedError",
    "BadRequestError",
    "ChildStartError",
    "ConfigError",
    "DuplicateChildError",
    "ForbiddenError",
    "InternalError",
    "KVActorsError",
    "OverloadedError",
    "PeerUnreachableError",
    "RequestTimeoutError",
    "RestartIntensityError",
    "StorageError",
    "TooLargeError",
    "UnavailableError",
    "error_for_code",
]


class KVActorsError(Exception):
    """Root of every kvactors error."""

    code: ClassVar[str] = "internal"


class BadRequestError(KVActorsError, ValueError):
    """The request is malformed: wrong type, missing field, unknown operation."""

    code = "bad_request"


class ConfigError(BadRequestError):
    """A configuration value is invalid; raised before anything starts."""


class DuplicateChildError(BadRequestError):
    """A supervisor was asked to start a child with an id it has already."""


class TooLargeError(BadRequestError):
    """A key or value is over its size limit."""

    code = "too_large"


class UnavailableError(KVActorsError):
    """Not enough replicas (or no live actor) to serve the request."""

    code = "unavailable"


class PeerUnreachableError(UnavailableError):
    """A peer node did not answer an RPC: it is down, unreachable or too slow."""


class ForbiddenError(KVActorsError):
    """The authenticated key's role does not allow the operation (or the key is no
    longer trusted). The decision comes from the key the connection authenticated with,
    never from anything in the request."""

    code = "forbidden"


class RequestTimeoutError(KVActorsError, TimeoutError):
    """The request did not complete within its timeout."""

    code = "timeout"


class OverloadedError(KVActorsError):
    """The node's bounded queues are full; retry later."""

    code = "overloaded"


class InternalError(KVActorsError):
    """A fault inside the node; the node keeps serving."""

    code = "internal"


class StorageError(InternalError):
    """The node's storage failed: a disk that is full or unwritable, a data directory that
    cannot be opened. The message says what failed, where, and why."""


class ChildStartError(InternalError):
    """A supervised child failed to start (its start function or `on_start` raised)."""


class ActorCrashedError(InternalError):
    """An actor stopped on a `BaseException` that is not an `Exception` (e.g. SystemExit)."""


class RestartIntensityError(InternalError):
    """A supervisor saw more restarts than its intensity allows and gave up."""


# Codes as they appear on the wire, each mapped to the class a client raises for it.
ERROR_CODES: dict[str, type[KVActorsError]] = {
    cls.code: cls
    for cls in (
        BadRequestError,
        TooLargeError,
        UnavailableError,
        RequestTimeoutError,
        OverloadedError,
        ForbiddenError,
        InternalError,
    )
}


def error_for_code(code: str, message: str) -> KVActorsError:
    """Build the exception a client raises for an error reply; unknown codes are internal."""
    return ERROR_CODES.get(code, InternalError)(message)
