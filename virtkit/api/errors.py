"""virtkit errors as HTTP answers, and back: one table both the server and the client read.

The body is the error's own document (`VirtkitError.to_dict()`): {"error": class name, "message",
"hint"}, so a remote command prints exactly what the local one would, and exits the same way.
"""

from __future__ import annotations

from virtkit import errors
from virtkit.errors import VirtkitError

# Most specific first: the first class an error is an instance of gives its status.
STATUS: list[tuple[type[VirtkitError], int]] = [
    (errors.CommandNotFoundError, 404),
    (errors.CommandNotExecutableError, 400),
    (errors.SpecError, 400),
    (errors.NotFoundError, 404),
    (errors.BusyError, 409),
    (errors.ConflictError, 409),
    (errors.StateError, 409),
    (errors.RejectedError, 422),
    (errors.HostCapabilityError, 503),
    (errors.ToolError, 500),
    (errors.StoreError, 500),
    (errors.AuthError, 401),
    (errors.RemoteError, 502),
]

KNOWN: dict[str, type[VirtkitError]] = {
    cls.__name__: cls for cls, _ in STATUS
} | {"VirtkitError": VirtkitError}


def status_of(error: VirtkitError) -> int:
    for cls, status in STATUS:
        if isinstance(error, cls):
            return status
    return 500


def from_document(document: object, status: int) -> VirtkitError:
    """The error a server answered, rebuilt as the same class (unknown names: by status)."""
    if isinstance(document, dict) and isinstance(document.get("message"), str):
        cls = KNOWN.get(str(document.get("error")), _by_status(status))
        hint = document.get("hint")
        if cls is errors.ToolError:
            return errors.ToolError(document["message"], hint=hint if isinstance(hint, str) else None)
        return cls(document["message"], hint=hint if isinstance(hint, str) else None)
    return _by_status(status)(f"the server answered {status} without an error document")


def _by_status(status: int) -> type[VirtkitError]:
    return {
        400: errors.SpecError, 404: errors.NotFoundError, 409: errors.ConflictError,
        413: errors.SpecError, 422: errors.SpecError, 401: errors.AuthError, 403: errors.AuthError,
        429: errors.AuthError, 503: errors.HostCapabilityError,
    }.get(status, VirtkitError)
