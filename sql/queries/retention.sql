-- Retention: bounded batches, so a large clean-up never holds long locks or bloats WAL.

-- name: prune_history
-- Up to %(batch)s old checkpoints: not among the last %(keep_last)s (>= 1) versions of their
-- instance, and older than %(older_than)s (server clock) when given. The current version is never touched.
WITH doomed AS (
    SELECT h.instance_id, h.version
    FROM @schema@.history AS h
    JOIN @schema@.snapshots AS s ON s.instance_id = h.instance_id
    WHERE (%(instance_id)s::text IS NULL OR h.instance_id = %(instance_id)s::text)
      AND h.version <= s.version - %(keep_last)s::bigint
      AND (%(older_than)s::interval IS NULL
           OR h.created_at < now() - %(older_than)s::interval)
    LIMIT %(batch)s
)
DELETE FROM @schema@.history AS h
USING doomed AS d
WHERE h.instance_id = d.instance_id AND h.version = d.version;

-- name: terminal_ids
-- Up to %(batch)s instances finished more than %(older_than)s ago, oldest first.
SELECT instance_id
FROM @schema@.snapshots
WHERE status IN ('Completed', 'Failed', 'Cancelled')
  AND completed_at < now() - %(older_than)s::interval
ORDER BY completed_at
LIMIT %(batch)s
FOR UPDATE SKIP LOCKED;
