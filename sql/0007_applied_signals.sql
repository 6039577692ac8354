-- Who asked for a cancel or pause, and why, kept where operators read it without decoding
-- a blob. A pending request carries requested_by beside its reason; once applied, the
-- request is recorded against the checkpoint that applied it (history() returns it with
-- that version). Keyed by instance first, like every per-instance table.
ALTER TABLE @schema@.signals ADD COLUMN requested_by text;

CREATE TABLE @schema@.applied_signals (
    instance_id  text        COLLATE "C" NOT NULL,
    version      bigint      NOT NULL,
    kind         text        NOT NULL,
    reason       text,
    requested_by text,
    requested_at timestamptz NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, version)
);
