"""The errors a user of virtkit can meet, each saying what was wrong and what to do.

Every failure a user can cause ends in a subclass of `VirtkitError`. Third-party exceptions
(OSError, sqlite3.Error, CalledProcessError, ...) are translated at the layer boundary that
meets them, so the CLI and the API only ever handle this tree::

    VirtkitError                    operational failure (exit 1)
    ├── SpecError                   the request itself is invalid (exit 2): name, size, option, file
    │   └── CommandNotExecutableError   the command to run is not executable (exit 126)
    ├── NotFoundError               the named thing does not exist
    │   └── CommandNotFoundError    the command to run is not in the instance (exit 127)
    ├── ConflictError               it already exists, or is in use by something else
    │   └── BusyError               another operation holds its lock; try again later
    ├── StateError                  it exists but is in the wrong state for this verb
    ├── HostCapabilityError         this host lacks what the request needs (KVM, a cgroup controller)
    ├── ToolError                   an external tool (qemu-img, runc, nft, ...) failed
    ├── RejectedError               an image or archive was refused as unsafe or malformed
    ├── StoreError                  the state root or database cannot be used
    └── RemoteError                 a virtkit server cannot be reached, or answered nonsense
        └── AuthError               the server refused the credentials (401) or the role (403)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class VirtkitError(Exception):
    """Root of every error virtkit reports to a user.

    `message` says what went wrong; `hint`, when given, says what to do about it.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, str | None]:
        """The error as a stable document (for --json output and the REST API)."""
        return {"error": type(self).__name__, "message": self.message, "hint": self.hint}


class SpecError(VirtkitError):
    """The request is invalid as written: a bad name, size, option or file."""

    exit_code = 2


class NotFoundError(VirtkitError):
    """The named object does not exist."""


class CommandNotFoundError(NotFoundError):
    """The command to run is not in the instance (exit status 127, as a shell says it)."""

    exit_code = 127


class CommandNotExecutableError(SpecError):
    """The command to run is there but cannot be executed: a directory, no x bit (exit status 126)."""

    exit_code = 126


class ConflictError(VirtkitError):
    """The object already exists, or something else uses it."""


class BusyError(ConflictError):
    """Another operation holds the object's lock."""


class StateError(VirtkitError):
    """The object is in the wrong state for the requested verb (e.g. start a running VM)."""


class HostCapabilityError(VirtkitError):
    """The host lacks a capability the request needs."""


class ToolError(VirtkitError):
    """An external tool failed; carries its command line, exit code and the tail of its stderr."""

    def __init__(
        self,
        message: str,
        *,
        argv: list[str] | None = None,
        returncode: int | None = None,
        stderr: str = "",
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.argv = argv or []
        self.returncode = returncode
        self.stderr = stderr


class RejectedError(VirtkitError):
    """An image or archive was refused: unsafe, malformed, truncated or of an unexpected format."""


class StoreError(VirtkitError):
    """The state root or its database cannot be used."""


class RemoteError(VirtkitError):
    """A virtkit server (a remote) cannot be reached, or did not answer as the API says."""


class AuthError(RemoteError):
    """The server refused the request's credentials (401) or its token's role (403)."""


@contextlib.contextmanager
def host_errors(doing: str) -> Iterator[None]:
    """The host's own failures (a full disk, an I/O error) while `doing`, said as virtkit errors."""
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise VirtkitError(f"{doing} failed: {exc.strerror or exc}{where}") from exc
