-- Checkpoint deltas (snapstore/codecs/snapshot.py): a history row may hold only what
-- changed since the version before it, so a save costs what changed, not the whole
-- workflow so far. base_version names the first version of its chain, a whole
-- checkpoint; NULL means the row is whole itself (every row written before this migration).
ALTER TABLE @schema@.history ADD COLUMN base_version bigint;

-- A pruned checkpoint that a kept delta is still read from stays, hidden from history(),
-- until its whole chain may go (retention.sql).
ALTER TABLE @schema@.history ADD COLUMN pruned boolean NOT NULL DEFAULT false;

-- Whole checkpoints, where a chain starts: pruning keeps every row a kept version is read
-- from, and finds the next chain's start here with one probe per row.
CREATE INDEX history_whole_idx ON @schema@.history (instance_id, version)
    WHERE base_version IS NULL;
