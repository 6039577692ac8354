-- Retention: bounded batches, so a large clean-up never holds long locks or bloats WAL.
-- Each batch starts where the previous one stopped (a keyset cursor), so a clean-up of the
-- whole table reads each row once: restarting from the beginning would re-walk every
-- row (and dead index entry) the earlier batches already dealt with.

-- name: prune_history
-- One batch: the next %(batch)s history rows after (%(after_id)s, %(after_version)s) in
-- primary-key order (of one instance when %(instance_id)s is given); those not among the
-- last %(keep_last)s (>= 1) versions of their instance, and older than %(older_than)s (server
-- clock) when given, are deleted. The current version is never touched. Returns how many
-- were deleted and the key of the last row read (no row: nothing left to read).
WITH scanned AS MATERIALIZED (
    SELECT h.instance_id, h.version, h.created_at
    FROM @schema@.history AS h
    WHERE (h.instance_id, h.version) > (%(after_id)s::text, %(after_version)s::bigint)
      AND (%(instance_id)s::text IS NULL OR h.instance_id = %(instance_id)s::text)
    ORDER BY h.instance_id, h.version
    LIMIT %(batch)s
), gone AS (
    DELETE FROM @schema@.history AS h
    USING scanned AS d, @schema@.snapshots AS s
    WHERE h.instance_id = d.instance_id AND h.version = d.version
      AND s.instance_id = d.instance_id
      AND d.version <= s.version - %(keep_last)s::bigint
      AND (%(older_than)s::interval IS NULL
           OR d.created_at < now() - %(older_than)s::interval)
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone), l.instance_id, l.version
FROM (SELECT instance_id, version FROM scanned
      ORDER BY instance_id DESC, version DESC LIMIT 1) AS l;

-- name: terminal_ids
-- Up to %(batch)s instances finished more than %(older_than)s ago, oldest first, from
-- %(after)s on (the completion time the previous batch reached; NULL: the start).
SELECT instance_id, completed_at
FROM @schema@.snapshots
WHERE status IN ('Completed', 'Failed', 'Cancelled')
  AND completed_at < now() - %(older_than)s::interval
  AND completed_at >= COALESCE(%(after)s::timestamptz, '-infinity')
ORDER BY completed_at
LIMIT %(batch)s
FOR UPDATE SKIP LOCKED;
