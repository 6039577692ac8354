-- Operator statements (snapstore/operations.py): `snapstore stats`, `check` and the dry
-- runs of retention. Exact counts, so each reads what it counts: for an operator's
-- occasional look, not for every scrape of a busy store.

-- name: part_due
-- What a worker could take now: InProgress, due, no live lease (snapshots aliased s).
SELECT s.available_at FROM @schema@.snapshots AS s
WHERE s.status = 'InProgress' AND s.available_at <= now()
  AND NOT EXISTS (
      SELECT 1 FROM @schema@.claims AS c
      WHERE c.instance_id = s.instance_id AND c.expires_at > now())

-- name: part_status_counts
-- Instances by status, counted.
(SELECT COALESCE(jsonb_object_agg(q.status, q.n), '{}'::jsonb)
 FROM (SELECT status, count(*) AS n FROM @schema@.snapshots GROUP BY status) AS q)

-- name: part_small_counts
-- The counts of tables that stay small (leases, events, dead events, open branches of
-- current forks), the same for both statements below.
(SELECT count(*) FROM @schema@.claims WHERE expires_at > now()),
(SELECT count(*) FROM @schema@.claims WHERE expires_at <= now()),
(SELECT count(*) FROM @schema@.events),
(SELECT count(*) FROM @schema@.events AS e
 JOIN @schema@.snapshots AS s ON s.instance_id = e.instance_id
 WHERE NOT (s.status = 'InProgress' AND s.position_kind = 'AtSignal')),
(SELECT count(*) FROM @schema@.dead_events),
(SELECT count(*) FROM @schema@.branches AS b
 JOIN @schema@.snapshots AS s ON s.instance_id = b.instance_id AND s.version = b.fork_version
 WHERE b.done_at IS NULL)

-- name: store_stats
-- The store at a glance, in one statement (one snapshot of the data). Due: what a worker
-- could take now (InProgress, due, no live lease); its oldest has waited longest.
WITH due AS (
    @part_due@
)
SELECT
    @part_status_counts@,
    (SELECT count(*) FROM due),
    (SELECT extract(epoch FROM now() - min(available_at))::float8 FROM due),
    @part_small_counts@;

-- name: stuck_instances
-- Due for longer than %(older)s with no live lease: no worker is taking them.
SELECT s.instance_id, extract(epoch FROM now() - s.available_at)::float8, NULL::text
FROM @schema@.snapshots AS s
WHERE s.status = 'InProgress' AND s.available_at <= now() - %(older)s::interval
  AND NOT EXISTS (
      SELECT 1 FROM @schema@.claims AS c
      WHERE c.instance_id = s.instance_id AND c.expires_at > now())
ORDER BY s.available_at, s.instance_id
LIMIT %(limit)s;

-- name: expired_leases
-- Leases on unfinished instances that ran out more than %(older)s ago (a worker died and
-- nobody took the instance over).
SELECT c.instance_id, extract(epoch FROM now() - c.expires_at)::float8, NULL::text
FROM @schema@.claims AS c
JOIN @schema@.snapshots AS s ON s.instance_id = c.instance_id
WHERE c.expires_at <= now() - %(older)s::interval AND s.status IN ('InProgress', 'Paused')
ORDER BY c.expires_at, c.instance_id
LIMIT %(limit)s;

-- name: stray_events
-- Events buffered for longer than %(older)s on an instance that is not parked waiting for
-- one (finished, paused, or running without consuming them).
SELECT e.instance_id, extract(epoch FROM now() - e.created_at)::float8, e.name
FROM @schema@.events AS e
JOIN @schema@.snapshots AS s ON s.instance_id = e.instance_id
WHERE e.created_at <= now() - %(older)s::interval
  AND NOT (s.status = 'InProgress' AND s.position_kind = 'AtSignal')
ORDER BY e.created_at, e.id
LIMIT %(limit)s;

-- name: prune_count
-- What prune_history would take out of history() now (its dry run).
SELECT count(*)
FROM @schema@.history AS h
JOIN @schema@.snapshots AS s ON s.instance_id = h.instance_id
WHERE NOT h.pruned AND h.version <= s.version - %(keep_last)s::bigint
  AND (%(instance_id)s::text IS NULL OR h.instance_id = %(instance_id)s::text)
  AND (%(older_than)s::interval IS NULL OR h.created_at < now() - %(older_than)s::interval);

-- name: purge_count
-- What purge_terminal would delete now (its dry run).
SELECT count(*) FROM @schema@.snapshots
WHERE status IN ('Completed', 'Failed', 'Cancelled')
  AND completed_at < now() - %(older_than)s::interval;

-- name: applied_migrations
SELECT version, checksum FROM @schema@.migrations ORDER BY version;

-- name: migrations_exist
SELECT to_regclass('@schema@.migrations') IS NOT NULL;

-- name: store_gauges
-- store_stats for a scrape: the same figures at a bounded cost whatever the store's
-- size. Above %(exact_below)s rows the instances by status come from the planner's
-- statistics (pg_class.reltuples times pg_stats' frequencies of status, as fresh as the
-- last ANALYZE); the due backlog is counted up to %(cap)s. The rest is exact: the oldest
-- due instance is read in queue-index order, leases, events and branches are small.
WITH due AS NOT MATERIALIZED (  -- inlined: each use reads only what it needs
    @part_due@
), size AS (
    SELECT GREATEST(c.reltuples, 0) AS n FROM pg_class AS c
    WHERE c.oid = to_regclass('@schema@.snapshots')
)
SELECT
    CASE WHEN (SELECT n FROM size) < %(exact_below)s THEN
        @part_status_counts@
    ELSE
        (SELECT COALESCE(jsonb_object_agg(v.status, round(v.freq * (SELECT n FROM size))),
                         '{}'::jsonb)
         FROM pg_stats AS p,
             unnest(p.most_common_vals::text::text[], p.most_common_freqs) AS v(status, freq)
         WHERE p.schemaname = %(schema)s AND p.tablename = 'snapshots' AND p.attname = 'status')
    END,
    (SELECT count(*) FROM (SELECT 1 FROM due LIMIT %(cap)s) AS capped),
    (SELECT extract(epoch FROM now() - available_at)::float8 FROM due
     ORDER BY available_at LIMIT 1),
    @part_small_counts@;
