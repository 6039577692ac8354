-- snapstore core schema. "@schema@" is replaced by the validated, quoted schema name.
-- The current blob of an instance lives only in history (joined on version), so every
-- checkpoint is written once and the snapshots row stays narrow enough for HOT updates.

CREATE TABLE @schema@.snapshots (
    instance_id          text        COLLATE "C" PRIMARY KEY,
    status               text        NOT NULL CHECK (status IN
                             ('InProgress', 'Completed', 'Failed', 'Cancelled', 'Paused')),
    definition_hash      text        NOT NULL,
    current_task_id      text,
    position_kind        text        NOT NULL,
    completed_task_count integer     NOT NULL DEFAULT 0,
    error                text,
    priority             smallint    NOT NULL DEFAULT 3 CHECK (priority BETWEEN 1 AND 5),
    tags                 text[]      NOT NULL DEFAULT '{}',
    delay_wake_at        timestamptz,
    available_at         timestamptz NOT NULL DEFAULT now(),
    version              bigint      NOT NULL CHECK (version > 0),
    codec                text        NOT NULL,
    data_hash            bytea       NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    completed_at         timestamptz
) WITH (fillfactor = 80);

CREATE INDEX snapshots_status_idx ON @schema@.snapshots (status, instance_id);

CREATE TABLE @schema@.history (
    instance_id     text        COLLATE "C" NOT NULL,
    version         bigint      NOT NULL,
    status          text        NOT NULL,
    current_task_id text,
    codec           text        NOT NULL,
    data            bytea       NOT NULL,
    data_hash       bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, version)
);

CREATE TABLE @schema@.tasks (
    instance_id  text        COLLATE "C" NOT NULL,
    task_id      text        COLLATE "C" NOT NULL,
    status       text        NOT NULL,
    attempts     integer     NOT NULL DEFAULT 0,
    worker_id    text,
    started_at   timestamptz,
    completed_at timestamptz,
    error        text,
    output       bytea,
    PRIMARY KEY (instance_id, task_id)
);

CREATE TABLE @schema@.signals (
    instance_id text        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('cancel', 'pause')),
    reason      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, kind)
);

CREATE TABLE @schema@.events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id text        NOT NULL,
    name        text        NOT NULL,
    payload     bytea,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX events_fifo_idx ON @schema@.events (instance_id, name, id);

CREATE TABLE @schema@.claims (
    instance_id text        PRIMARY KEY,
    task_id     text,
    worker_id   text        NOT NULL,
    token       uuid        NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
