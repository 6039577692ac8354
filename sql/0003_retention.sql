-- Finished instances by completion time, for purging in bounded batches.
CREATE INDEX snapshots_completed_idx ON @schema@.snapshots (completed_at)
    WHERE completed_at IS NOT NULL;
