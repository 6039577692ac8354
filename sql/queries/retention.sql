-- Retention: bounded batches, so a large clean-up never holds long locks or bloats WAL.
-- Each batch starts where the previous one stopped (a keyset cursor), so a clean-up of the
-- whole table reads each row once: restarting from the beginning would re-walk every
-- row (and dead index entry) the earlier batches already dealt with.

-- name: prune_candidates
-- One batch, read without writing: the next %(batch)s history rows after (%(after_id)s,
-- %(after_version)s) in primary-key order (of one instance when %(instance_id)s is
-- given). A row is old when it is not among the last %(keep_last)s (>= 1) versions of
-- its instance and, when %(older_than)s is given, older than that (server clock); the
-- current version never is. An old row goes when its whole delta chain is old: the
-- chain's last row (just before the next whole checkpoint, n) is old too, so no kept
-- version is read from it. Otherwise it is only marked pruned: hidden from history(),
-- kept for the deltas after it, deleted by a later prune once its chain is old.
-- Returns each old row (key, created_at, whether its chain is old, whether it was
-- pruned before), then the key of the last row read, marked last (no row: nothing left
-- to read); prune_delete and prune_hide then write by those keys.
WITH scanned AS MATERIALIZED (
    SELECT h.instance_id, h.version, h.created_at, h.pruned, h.base_version
    FROM @schema@.history AS h
    WHERE (h.instance_id, h.version) > (%(after_id)s::text, %(after_version)s::bigint)
      AND (%(instance_id)s::text IS NULL OR h.instance_id = %(instance_id)s::text)
    ORDER BY h.instance_id, h.version
    LIMIT %(batch)s
), cutoff AS (  -- NULL: no age limit
    SELECT now() - %(older_than)s::interval AS at
), current AS MATERIALIZED (
    -- The current version: a probe per row (a subquery, never a join the planner could
    -- turn into a scan of every snapshot per batch). A row's chain starts at
    -- COALESCE(base_version, version); when the next whole checkpoint is in the batch, so
    -- is the end of the chain, and the windows give it without another probe.
    SELECT d.*,
        (SELECT s.version FROM @schema@.snapshots AS s
         WHERE s.instance_id = d.instance_id) - %(keep_last)s::bigint AS last_old,
        min(d.version) FILTER (WHERE d.base_version IS NULL) OVER (
            PARTITION BY d.instance_id ORDER BY d.version
            ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING) AS next_whole,
        max(d.version) OVER chain AS chain_end,
        max(d.created_at) OVER chain AS chain_end_at
    FROM scanned AS d
    WINDOW chain AS (PARTITION BY d.instance_id, COALESCE(d.base_version, d.version))
), old AS (
    SELECT c.*, k.at AS cutoff
    FROM current AS c CROSS JOIN cutoff AS k
    WHERE c.version <= c.last_old AND (k.at IS NULL OR c.created_at < k.at)
), fate AS (
    SELECT o.instance_id, o.version, o.created_at, o.pruned,
        CASE WHEN o.next_whole IS NOT NULL
             THEN o.chain_end <= o.last_old
                  AND (o.cutoff IS NULL OR o.chain_end_at < o.cutoff)
             ELSE e.version IS NOT NULL END AS chain_old
    FROM old AS o
    -- The chain goes on past the batch: find its end in the table.
    LEFT JOIN LATERAL (
        SELECT f.version FROM @schema@.history AS f
        WHERE o.next_whole IS NULL
          AND f.instance_id = o.instance_id AND f.base_version IS NULL
          AND f.version > o.version
        ORDER BY f.version
        LIMIT 1
    ) AS n ON true
    LEFT JOIN @schema@.history AS e ON e.instance_id = o.instance_id
        AND e.version = n.version - 1 AND e.version <= o.last_old
        AND (o.cutoff IS NULL OR e.created_at < o.cutoff)
)
SELECT f.instance_id, f.version, f.created_at, f.chain_old, f.pruned, false AS last
FROM fate AS f
UNION ALL
SELECT l.instance_id, l.version, NULL, NULL, NULL, true
FROM (SELECT instance_id, version FROM scanned
      ORDER BY instance_id DESC, version DESC LIMIT 1) AS l;

-- name: prune_delete
-- The old rows of a batch whose chains are old, by key (created_at: the same life of the
-- instance id as the batch read, not a new one's row at the same version).
DELETE FROM @schema@.history AS h
WHERE h.instance_id = ANY (%(instance_ids)s::text[])
  AND (h.instance_id, h.version, h.created_at) IN (
      SELECT * FROM unnest(%(instance_ids)s::text[], %(versions)s::bigint[],
          %(created_at)s::timestamptz[]));

-- name: prune_hide
-- The other old rows of a batch, kept for the deltas after them: hidden from history().
UPDATE @schema@.history AS h SET pruned = true
WHERE h.instance_id = ANY (%(instance_ids)s::text[])
  AND (h.instance_id, h.version, h.created_at) IN (
      SELECT * FROM unnest(%(instance_ids)s::text[], %(versions)s::bigint[],
          %(created_at)s::timestamptz[]));

-- name: terminal_ids
-- Up to %(batch)s instances finished more than %(older_than)s ago, oldest first, from
-- %(after)s on (the completion time the previous batch reached; NULL: the start). Read
-- without locking: delete_instances checks each again by its key, against the cutoff.
SELECT instance_id, completed_at, now() - %(older_than)s::interval AS cutoff
FROM @schema@.snapshots
WHERE status IN ('Completed', 'Failed', 'Cancelled')
  AND completed_at < now() - %(older_than)s::interval
  AND completed_at >= COALESCE(%(after)s::timestamptz, '-infinity')
ORDER BY completed_at
LIMIT %(batch)s;
