"""Typed errors. Every failure a caller can act on has its own class."""

from __future__ import annotations


class SnapstoreError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigurationError(SnapstoreError, ValueError):
    """An option (schema name, pool size, codec...) is invalid."""


class ValidationError(SnapstoreError, ValueError):
    """A snapshot or argument is malformed; nothing was written."""


class CodecError(SnapstoreError):
    """Base class of encode/decode failures."""


class EncodeError(CodecError, ValueError):
    """A value cannot be represented by the chosen codec; nothing was written."""


class DecodeError(CodecError, ValueError):
    """A stored blob is corrupt, truncated, or written by an unknown codec.

    ``instance_id`` and ``version`` name the checkpoint when the blob came from the store.
    """

    def __init__(
        self, message: str, *, instance_id: str | None = None, version: int | None = None
    ) -> None:
        where = ""
        if instance_id is not None:
            where = f" (instance {instance_id!r}" + (
                f", version {version})" if version is not None else ")"
            )
        super().__init__(message + where)
        self.instance_id = instance_id
        self.version = version

    def located(
        self, *, instance_id: str | None, version: int | None = None, prefix: str = ""
    ) -> DecodeError:
        """The same error (same class) naming the checkpoint it came from."""
        return type(self)(prefix + str(self), instance_id=instance_id, version=version)


class UnknownCodecError(DecodeError):
    """The envelope names a codec id that is not registered in this process."""


class ConflictError(SnapstoreError):
    """A compare-and-set save lost: the stored version is not the expected one."""

    def __init__(self, instance_id: str, expected: int | None, actual: int | None) -> None:
        exp = "absent" if expected is None else f"version {expected}"
        act = "absent" if actual is None else f"version {actual}"
        super().__init__(f"instance {instance_id!r}: expected {exp}, found {act}")
        self.instance_id = instance_id
        self.expected_version = expected
        self.actual_version = actual


class TerminalStateError(SnapstoreError):
    """The instance already finished (Completed/Failed/Cancelled); it is never resurrected."""

    def __init__(self, instance_id: str, status: str) -> None:
        super().__init__(f"instance {instance_id!r} is terminal ({status}) and cannot change")
        self.instance_id = instance_id
        self.status = status


class ClaimLostError(SnapstoreError):
    """The lease on an instance expired or was taken over; the fenced write was refused."""

    def __init__(self, instance_id: str, detail: str = "lease expired or taken over") -> None:
        super().__init__(f"claim on instance {instance_id!r} lost: {detail}")
        self.instance_id = instance_id


class NotFoundError(SnapstoreError, LookupError):
    """The instance (or task result) does not exist."""


class MigrationError(SnapstoreError):
    """The schema cannot be brought to the version this library needs."""


class UnavailableError(SnapstoreError):
    """The server could not be reached in time, or the connection was lost before
    anything was written: nothing changed, and the call may be retried. The message
    carries the server's (or the pool's) own words; ``connection_lost`` tells a
    connection that died under the call (another may work at once) from none to be had."""

    def __init__(self, message: str, *, connection_lost: bool = False) -> None:
        super().__init__(message)
        self.connection_lost = connection_lost


class CommitUnknownError(SnapstoreError):
    """The connection was lost after a write was sent: it may or may not have
    committed. A CAS save can be retried safely (a committed one then raises
    `ConflictError`); read the instance to find out. ``backend_pid`` is the server
    process that ran it, when known."""

    def __init__(self, message: str, *, backend_pid: int | None = None) -> None:
        super().__init__(message)
        self.backend_pid = backend_pid


class ServerError(SnapstoreError):
    """PostgreSQL refused a statement on a healthy connection: ``statement_timeout``
    (sqlstate 57014), a deadlock still there after the retries (40P01), a full disk...
    ``sqlstate`` and the server's message say which; the psycopg error is the cause.
    Nothing of the refused statement was written."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
