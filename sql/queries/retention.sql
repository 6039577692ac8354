-- Retention: bounded batches, so a large clean-up never holds long locks or bloats WAL.
-- Each batch starts where the previous one stopped (a keyset cursor), so a clean-up of the
-- whole table reads each row once: restarting from the beginning would re-walk every
-- row (and dead index entry) the earlier batches already dealt with.

-- name: prune_history
-- One batch: the next %(batch)s history rows after (%(after_id)s, %(after_version)s) in
-- primary-key order (of one instance when %(instance_id)s is given). A row is old when it
-- is not among the last %(keep_last)s (>= 1) versions of its instance and, when
-- %(older_than)s is given, older than that (server clock); the current version never is.
-- An old row goes when its whole delta chain is old: the chain's last row (just before
-- the next whole checkpoint, n) is old too, so no kept version is read from it. Otherwise
-- it is only marked pruned: hidden from history(), kept for the deltas after it, deleted
-- by a later prune once its chain is old. Returns how many checkpoints left history()
-- (deleted or hidden, each counted once) and the key of the last row read (no row:
-- nothing left to read).
WITH scanned AS MATERIALIZED (
    SELECT h.instance_id, h.version, h.created_at, h.pruned, h.base_version
    FROM @schema@.history AS h
    WHERE (h.instance_id, h.version) > (%(after_id)s::text, %(after_version)s::bigint)
      AND (%(instance_id)s::text IS NULL OR h.instance_id = %(instance_id)s::text)
    ORDER BY h.instance_id, h.version
    LIMIT %(batch)s
), cutoff AS (  -- NULL: no age limit
    SELECT now() - %(older_than)s::interval AS at
), tops AS MATERIALIZED (
    -- The current version, the instance's last in history (its row is never pruned): one
    -- probe of the history index per instance in the batch (a subquery, never a join the
    -- planner could turn into a scan per batch), so the statement reads and writes one
    -- table, which a distributed store runs where the rows are.
    SELECT i.instance_id,
        (SELECT max(v.version) FROM @schema@.history AS v
         WHERE v.instance_id = i.instance_id) AS version
    FROM (SELECT DISTINCT instance_id FROM scanned) AS i
), current AS MATERIALIZED (
    -- A row's chain starts at COALESCE(base_version, version); when the next whole
    -- checkpoint is in the batch, so is the end of the chain, and the windows give it
    -- without another probe.
    SELECT d.*, t.version - %(keep_last)s::bigint AS last_old,
        min(d.version) FILTER (WHERE d.base_version IS NULL) OVER (
            PARTITION BY d.instance_id ORDER BY d.version
            ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING) AS next_whole,
        max(d.version) OVER chain AS chain_end,
        max(d.created_at) OVER chain AS chain_end_at
    FROM scanned AS d JOIN tops AS t ON t.instance_id = d.instance_id
    WINDOW chain AS (PARTITION BY d.instance_id, COALESCE(d.base_version, d.version))
), old AS (
    SELECT c.*, k.at AS cutoff
    FROM current AS c CROSS JOIN cutoff AS k
    WHERE c.version <= c.last_old AND (k.at IS NULL OR c.created_at < k.at)
), fate AS (
    SELECT o.instance_id, o.version, o.pruned,
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
), gone AS (
    DELETE FROM @schema@.history AS h
    USING fate AS f
    WHERE h.instance_id = f.instance_id AND h.version = f.version AND f.chain_old
    RETURNING NOT f.pruned AS counted
), hidden AS (
    UPDATE @schema@.history AS h SET pruned = true
    FROM fate AS f
    WHERE h.instance_id = f.instance_id AND h.version = f.version
      AND NOT f.chain_old AND NOT f.pruned
    RETURNING 1
)
SELECT (SELECT count(*) FILTER (WHERE counted) FROM gone) + (SELECT count(*) FROM hidden),
    l.instance_id, l.version
FROM (SELECT instance_id, version FROM scanned
      ORDER BY instance_id DESC, version DESC LIMIT 1) AS l;

-- name: terminal_ids
-- Up to %(batch)s instances finished more than %(older_than)s ago, oldest first, from
-- %(after)s on (the completion time the previous batch reached; NULL: the start). Read
-- without locking: drop_snapshots checks each again, against the cutoff.
SELECT instance_id, completed_at, now() - %(older_than)s::interval AS cutoff
FROM @schema@.snapshots
WHERE status IN ('Completed', 'Failed', 'Cancelled')
  AND completed_at < now() - %(older_than)s::interval
  AND completed_at >= COALESCE(%(after)s::timestamptz, '-infinity')
ORDER BY completed_at
LIMIT %(batch)s;
