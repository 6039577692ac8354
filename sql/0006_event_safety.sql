-- Buffered events whose payload cannot be read (corrupt, or written by a codec this
-- store does not know). Left in events, the oldest of its name would block park(),
-- send_event() and consume_event() for ever; whoever finds one moves it here, with the
-- reason, so the rest are served and an operator can still see it. Keyed like every
-- per-instance table, by instance first.
CREATE TABLE @schema@.dead_events (
    instance_id text        COLLATE "C" NOT NULL,
    id          bigint      NOT NULL,
    name        text        NOT NULL,
    payload     bytea,
    created_at  timestamptz NOT NULL,
    buried_at   timestamptz NOT NULL DEFAULT now(),
    reason      text        NOT NULL,
    PRIMARY KEY (instance_id, id)
);

-- The sender's token on a buffered event, so a send_event whose connection was lost can
-- find out whether it committed (NULL on events sent before this migration).
ALTER TABLE @schema@.events ADD COLUMN token uuid;
