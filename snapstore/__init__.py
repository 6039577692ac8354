"""snapstore: a durable, codec-pluggable workflow snapshot store on PostgreSQL."""

from snapstore.aio import AsyncPostgresBackend
from snapstore.backend import PostgresBackend
from snapstore.codecs import CborCodec, Codec, JsonCodec, MsgpackCodec, register_codec
from snapstore.errors import (
    CodecError,
    ConfigurationError,
    ConflictError,
    DecodeError,
    EncodeError,
    MigrationError,
    NotFoundError,
    SnapstoreError,
    TerminalStateError,
    UnknownCodecError,
    ValidationError,
)
from snapstore.memory import MemoryBackend
from snapstore.model import (
    AtDelay,
    AtFork,
    AtJoin,
    AtSignal,
    AtTask,
    HistoryEntry,
    InLoop,
    NotStarted,
    Page,
    Position,
    RetryState,
    SnapshotSummary,
    StoredSnapshot,
    TaskResult,
    TaskStatus,
    WorkflowSnapshot,
    WorkflowStatus,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncPostgresBackend",
    "AtDelay",
    "AtFork",
    "AtJoin",
    "AtSignal",
    "AtTask",
    "CborCodec",
    "Codec",
    "CodecError",
    "ConfigurationError",
    "ConflictError",
    "DecodeError",
    "EncodeError",
    "HistoryEntry",
    "InLoop",
    "JsonCodec",
    "MemoryBackend",
    "MigrationError",
    "MsgpackCodec",
    "NotFoundError",
    "NotStarted",
    "Page",
    "Position",
    "PostgresBackend",
    "RetryState",
    "SnapshotSummary",
    "SnapstoreError",
    "StoredSnapshot",
    "TaskResult",
    "TaskStatus",
    "TerminalStateError",
    "UnknownCodecError",
    "ValidationError",
    "WorkflowSnapshot",
    "WorkflowStatus",
    "register_codec",
]
