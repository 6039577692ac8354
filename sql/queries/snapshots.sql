-- Named statements. "@schema@" is replaced by the validated, quoted schema name;
-- values are always bound parameters (%(name)s). Sections start with "-- name: <key>".

-- name: part_task_upsert
-- How both save statements write a task row (aliased t): unchanged rows are not rewritten.
-- Whole rows: this upsert writes every column of tasks (keep it so).
ON CONFLICT (instance_id, task_id) DO UPDATE SET
    status = EXCLUDED.status, attempts = EXCLUDED.attempts,
    worker_id = EXCLUDED.worker_id, started_at = EXCLUDED.started_at,
    completed_at = EXCLUDED.completed_at, error = EXCLUDED.error,
    output = EXCLUDED.output
WHERE (t.*) IS DISTINCT FROM (EXCLUDED.*)

-- name: save_snapshots
-- Saves a batch (one item for a plain save) in one statement, so one commit: per item a
-- CAS update (fenced by a live claim when a token is given) or create-if-absent, its
-- history row, task upserts (unchanged task rows are not rewritten), lease removal once
-- finished, and a wakeup NOTIFY (delivered at commit) when it became dispatchable: it is
-- due now, no claimant is driving it (the save carries no claim and no live lease is held),
-- and before this save it was new, not due, not
-- InProgress or tagged differently (a worker that could not take it may take it now). An
-- instance that stays dispatchable was announced already; announcing every step of it
-- would cost every commit the server's global notify lock.
-- Instance ids within one batch are distinct. Returns (ordinal, new version, created_at),
-- NULLs where the CAS failed.
WITH items AS (
    -- terminal: the save finishes it. notify: a candidate for a wakeup (see wake), since
    -- only an unclaimed save leaves the instance to other workers.
    SELECT *, status NOT IN ('InProgress', 'Paused') AS terminal,
        status = 'InProgress' AND claim_token IS NULL AS notify
    FROM unnest(
        %(instance_id)b::text[], %(expected_version)b::bigint[],
        %(expected_created_at)b::timestamptz[], %(claim_token)b::uuid[], %(status)b::text[], %(definition_hash)b::text[],
        %(current_task_id)b::text[],
        %(position_kind)b::text[], %(completed_task_count)b::integer[], %(error)b::text[],
        %(priority)b::smallint[], %(tags)b::jsonb[], %(delay_wake_at)b::timestamptz[],
        %(available_at)b::timestamptz[], %(codec)b::text[], %(data)b::bytea[],
        %(data_hash)b::bytea[], %(base_version)b::bigint[]
    ) WITH ORDINALITY i(
        instance_id, expected_version, expected_created_at, claim_token, status, definition_hash,
        current_task_id, position_kind, completed_task_count, error, priority, tags, delay_wake_at,
        available_at, codec, data, data_hash, base_version, n)
), upd AS (
    UPDATE @schema@.snapshots s SET
        status = i.status,
        definition_hash = i.definition_hash,
        current_task_id = i.current_task_id,
        position_kind = i.position_kind,
        completed_task_count = i.completed_task_count,
        error = i.error,
        priority = i.priority,
        tags = ARRAY(SELECT jsonb_array_elements_text(i.tags)),
        delay_wake_at = i.delay_wake_at,
        -- Due since: kept while the instance stays due (its queue position, and an
        -- unchanged indexed column keeps the update HOT); release_claim re-queues it.
        available_at = COALESCE(i.available_at,
            CASE s.status WHEN 'InProgress' THEN LEAST(s.available_at, now()) ELSE now() END),
        version = s.version + 1,
        codec = i.codec,
        data_hash = i.data_hash,
        updated_at = now(),
        completed_at = CASE WHEN i.terminal THEN now() END
    FROM items i
    WHERE s.instance_id = i.instance_id
      AND s.version = i.expected_version
      -- Task rows were skipped as stored at that version: it must be the same life of the id
      -- (a deleted and recreated instance has a later created_at; see task_cache.py).
      AND (i.expected_created_at IS NULL OR s.created_at = i.expected_created_at)
      AND s.status IN ('InProgress', 'Paused')  -- not finished
      AND (i.claim_token IS NULL OR EXISTS (
          SELECT 1 FROM @schema@.claims c
          WHERE c.instance_id = s.instance_id AND c.token = i.claim_token
            AND c.expires_at > now()))
    RETURNING s.instance_id, s.version, s.created_at
), ins AS (
    INSERT INTO @schema@.snapshots AS s (
        instance_id, status, definition_hash, current_task_id, position_kind,
        completed_task_count, error, priority, tags, delay_wake_at, available_at,
        version, codec, data_hash, completed_at)
    SELECT instance_id, status, definition_hash, current_task_id, position_kind,
        completed_task_count, error, priority,
        ARRAY(SELECT jsonb_array_elements_text(tags)), delay_wake_at,
        COALESCE(available_at, now()), 1, codec, data_hash,
        CASE WHEN terminal THEN now() END
    FROM items
    WHERE expected_version IS NULL
    ORDER BY instance_id
    ON CONFLICT (instance_id) DO NOTHING
    RETURNING s.instance_id, s.version, s.created_at
), saved AS (
    SELECT * FROM items JOIN (TABLE upd UNION ALL TABLE ins) v USING (instance_id)
), hist AS (
    INSERT INTO @schema@.history (
        instance_id, version, status, current_task_id, codec, data, data_hash, base_version)
    SELECT instance_id, version, status, current_task_id, codec, data, data_hash, base_version
    FROM saved
), tsk AS (
    INSERT INTO @schema@.tasks AS t (
        instance_id, task_id, status, attempts, worker_id, started_at, completed_at,
        error, output)
    SELECT saved.instance_id, u.task_id, u.status, u.attempts, u.worker_id, u.started_at,
        u.completed_at, u.error, u.output
    FROM unnest(%(task_items)b::bigint[], %(task_ids)b::text[], %(task_status)b::text[],
        %(task_attempts)b::integer[], %(task_worker)b::text[],
        %(task_started)b::timestamptz[], %(task_completed)b::timestamptz[],
        %(task_error)b::text[], %(task_output)b::bytea[])
        u(n, task_id, status, attempts, worker_id, started_at, completed_at, error, output)
    JOIN saved USING (n)
    @part_task_upsert@
), done AS (
    -- A finished instance needs no lease: drop it so claims do not pile up.
    DELETE FROM @schema@.claims c
    USING saved
    WHERE saved.terminal AND c.instance_id = saved.instance_id
), wake AS (
    SELECT count(*) FROM (
        SELECT pg_notify(%(channel)s, instance_id)
        -- p: the row as it was before this save (all of one statement reads one snapshot).
        FROM saved LEFT JOIN @schema@.snapshots p USING (instance_id)
        WHERE saved.notify AND COALESCE(saved.available_at, now()) <= now()
          -- a worker's live lease (a send_event or unpause resuming what it holds):
          -- nobody else may take it, so nobody is woken. CASE: the lease is looked up
          -- only for a save that would announce, not for every step of a run.
          AND CASE WHEN (p.status = 'InProgress' AND p.available_at <= now()
                         AND to_jsonb(p.tags) = saved.tags) IS NOT TRUE
                   THEN NOT EXISTS (
                       SELECT 1 FROM @schema@.claims AS c
                       WHERE c.instance_id = saved.instance_id AND c.expires_at > now())
                   ELSE false END
    ) sent
)
SELECT n, version, created_at
FROM items LEFT JOIN saved USING (n) CROSS JOIN wake
ORDER BY n;

-- name: save_one
-- One save of an existing instance (the common case), with scalar parameters: the same
-- writes and rules as save_snapshots for one item, at about a third of its server time
-- (no arrays to unnest and join per column). The old CTE reads the row as it was before
-- this save (one statement reads one snapshot), for the wakeup rule. Returns the new
-- version and the instance's created_at, or no row where the CAS failed.
WITH old AS (
    SELECT s.status, s.available_at, s.tags FROM @schema@.snapshots AS s
    WHERE s.instance_id = %(instance_id)s
), upd AS (
    UPDATE @schema@.snapshots AS s SET
        status = %(status)s,
        definition_hash = %(definition_hash)s,
        current_task_id = %(current_task_id)s,
        position_kind = %(position_kind)s,
        completed_task_count = %(completed_task_count)s,
        error = %(error)s,
        priority = %(priority)s,
        tags = %(tags)b::text[],
        delay_wake_at = %(delay_wake_at)s,
        available_at = COALESCE(%(available_at)s::timestamptz,
            CASE s.status WHEN 'InProgress' THEN LEAST(s.available_at, now()) ELSE now() END),
        version = s.version + 1,
        codec = %(codec)s,
        data_hash = %(data_hash)s,
        updated_at = now(),
        completed_at = CASE WHEN %(terminal)s THEN now() END
    WHERE s.instance_id = %(instance_id)s
      AND s.version = %(expected_version)s
      AND (%(expected_created_at)s::timestamptz IS NULL
           OR s.created_at = %(expected_created_at)s::timestamptz)
      AND s.status IN ('InProgress', 'Paused')
      AND (%(claim_token)s::uuid IS NULL OR EXISTS (
          SELECT 1 FROM @schema@.claims AS c
          WHERE c.instance_id = s.instance_id AND c.token = %(claim_token)s::uuid
            AND c.expires_at > now()))
    RETURNING s.version, s.created_at
), hist AS (
    INSERT INTO @schema@.history (
        instance_id, version, status, current_task_id, codec, data, data_hash, base_version)
    SELECT %(instance_id)s, version, %(status)s, %(current_task_id)s, %(codec)s, %(data)s,
        %(data_hash)s, %(base_version)s
    FROM upd
), tsk AS (
    INSERT INTO @schema@.tasks AS t (
        instance_id, task_id, status, attempts, worker_id, started_at, completed_at,
        error, output)
    SELECT %(instance_id)s, u.*
    FROM upd, unnest(%(task_ids)b::text[], %(task_status)b::text[],
        %(task_attempts)b::integer[], %(task_worker)b::text[],
        %(task_started)b::timestamptz[], %(task_completed)b::timestamptz[],
        %(task_error)b::text[], %(task_output)b::bytea[])
        u(task_id, status, attempts, worker_id, started_at, completed_at, error, output)
    @part_task_upsert@
), done AS (
    DELETE FROM @schema@.claims AS c
    WHERE %(terminal)s AND c.instance_id = %(instance_id)s AND EXISTS (SELECT 1 FROM upd)
), wake AS (
    -- As in save_snapshots: only when it became dispatchable, unclaimed.
    SELECT pg_notify(%(channel)s, %(instance_id)s)
    FROM upd, old
    WHERE %(notify)s AND COALESCE(%(available_at)s::timestamptz, now()) <= now()
      AND CASE WHEN (old.status = 'InProgress' AND old.available_at <= now()
                     AND old.tags = %(tags)b::text[]) IS NOT TRUE
               THEN NOT EXISTS (
                   SELECT 1 FROM @schema@.claims AS c
                   WHERE c.instance_id = %(instance_id)s AND c.expires_at > now())
               ELSE false END
)
SELECT upd.version, upd.created_at FROM upd, (SELECT count(*) FROM wake) AS w;

-- name: current_states
-- Why saves failed: stored version and status, and whether each given claim is live.
SELECT s.version, s.status, EXISTS (
    SELECT 1 FROM @schema@.claims AS c
    WHERE c.instance_id = s.instance_id AND c.token = q.claim_token
      AND c.expires_at > now())
FROM unnest(%(instance_ids)s::text[], %(claim_tokens)s::uuid[])
    WITH ORDINALITY AS q(instance_id, claim_token, n)
LEFT JOIN @schema@.snapshots AS s ON s.instance_id = q.instance_id
ORDER BY q.n;

-- name: backend_running
-- Whether the server process that ran a lost save is still at it (a client can lose its
-- socket while the server keeps executing, e.g. waiting for a lock). Asked after a short
-- sleep, so a caller polling it does not spin.
SELECT pg_sleep(%(pause)s), EXISTS (
    SELECT 1 FROM pg_stat_activity WHERE pid = %(pid)s AND state <> 'idle');

-- name: committed_saves
-- After a connection was lost mid-save: which of the saves sent then did commit. A
-- committed save left its version with its exact data_hash in history (one row each).
SELECT q.n
FROM unnest(%(instance_ids)s::text[], %(versions)s::bigint[], %(hashes)s::bytea[])
    WITH ORDINALITY AS q(instance_id, version, data_hash, n)
JOIN @schema@.history AS h ON h.instance_id = q.instance_id AND h.version = q.version
WHERE h.data_hash = q.data_hash
ORDER BY q.n;

-- name: load_snapshots
-- The checkpoint and the task outputs are read in one statement, so they come from one
-- commit. Several instances at once: dispatch loads everything it leased in one round
-- trip. Per instance one row per history version from the start of the current
-- version's delta chain to the current version (task_id NULL), and per stored output one
-- row per %(chunk)s bytes of it (part, and its whole size): fetched in binary and
-- streamed a few rows at a time, a 100 MB output never sits in the client twice over (as
-- the server's result and as its copy), and no array is built on the server or parsed
-- in the client. Columns: instance_id, task_id, version or part, updated_at, size, data,
-- and the instance's created_at (which life of the id this is, for the task cache).
SELECT s.instance_id, NULL::text AS task_id, h.version, s.updated_at, NULL::bigint, h.data,
    s.created_at
FROM @schema@.snapshots AS s
JOIN @schema@.history AS c ON c.instance_id = s.instance_id AND c.version = s.version
JOIN @schema@.history AS h ON h.instance_id = s.instance_id
    AND h.version BETWEEN COALESCE(c.base_version, c.version) AND c.version
WHERE s.instance_id = ANY (%(instance_ids)s::text[])
UNION ALL
SELECT t.instance_id, t.task_id, k, NULL, octet_length(t.output),
    CASE WHEN octet_length(t.output) <= %(chunk)s THEN t.output
         ELSE substr(t.output, k * %(chunk)s + 1, %(chunk)s) END,
    NULL
FROM @schema@.tasks AS t
CROSS JOIN LATERAL generate_series(0, (octet_length(t.output) - 1) / %(chunk)s) AS k
WHERE t.instance_id = ANY (%(instance_ids)s::text[]) AND t.output IS NOT NULL;

-- name: load_task_result
SELECT status, attempts, worker_id, started_at, completed_at, error, output
FROM @schema@.tasks
WHERE instance_id = %(instance_id)s AND task_id = %(task_id)s;

-- name: delete_instances
-- Removes instances and every row that belongs to them; returns how many existed.
WITH s AS (
    DELETE FROM @schema@.snapshots WHERE instance_id = ANY(%(instance_ids)s::text[])
    RETURNING 1
), h AS (
    DELETE FROM @schema@.history WHERE instance_id = ANY(%(instance_ids)s::text[])
), t AS (
    DELETE FROM @schema@.tasks WHERE instance_id = ANY(%(instance_ids)s::text[])
), sg AS (
    DELETE FROM @schema@.signals WHERE instance_id = ANY(%(instance_ids)s::text[])
), e AS (
    DELETE FROM @schema@.events WHERE instance_id = ANY(%(instance_ids)s::text[])
), c AS (
    DELETE FROM @schema@.claims WHERE instance_id = ANY(%(instance_ids)s::text[])
), d AS (
    DELETE FROM @schema@.dead_events WHERE instance_id = ANY(%(instance_ids)s::text[])
), a AS (
    DELETE FROM @schema@.applied_signals WHERE instance_id = ANY(%(instance_ids)s::text[])
), b AS (
    DELETE FROM @schema@.branches WHERE instance_id = ANY(%(instance_ids)s::text[])
)
SELECT count(*) FROM s;

-- name: list_snapshots
-- Keyset pagination on instance_id; a NULL filter means "any".
SELECT instance_id, status, definition_hash, current_task_id, position_kind,
    completed_task_count, priority, tags, version, codec, error, updated_at,
    forked_from, forked_from_version
FROM @schema@.snapshots
WHERE (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s::text[]))
  AND (%(after)s::text IS NULL OR instance_id > %(after)s::text)
ORDER BY instance_id
LIMIT %(limit)s;

-- name: read_history
-- Versions after %(after_version)s that prune left visible (at most %(limit)s of them;
-- NULL: all), preceded by the rows the first of them is decoded from when it is a delta
-- (from the start of its chain), which the last column marks for the caller to drop.
WITH first AS (
    SELECT f.version AS wanted, COALESCE(f.base_version, f.version) AS start
    FROM @schema@.history AS f
    WHERE f.instance_id = %(instance_id)s AND f.version > %(after_version)s AND NOT f.pruned
    ORDER BY f.version
    LIMIT 1
)
SELECT h.instance_id, h.version, h.status, h.current_task_id, h.codec, h.data, h.created_at,
    h.version < first.wanted AS context,
    a.kind, a.reason, a.requested_by, a.requested_at
FROM @schema@.history AS h CROSS JOIN first
LEFT JOIN @schema@.applied_signals AS a ON a.instance_id = h.instance_id AND a.version = h.version
WHERE h.instance_id = %(instance_id)s AND h.version >= first.start
ORDER BY h.version
LIMIT %(limit)s + (SELECT wanted - start FROM first);

-- name: truncate_all
TRUNCATE @schema@.snapshots, @schema@.history, @schema@.tasks, @schema@.signals,
    @schema@.events, @schema@.claims, @schema@.dead_events, @schema@.applied_signals,
    @schema@.branches;

-- name: server_pid
-- The server process behind a new pooled connection. A pooler answers the client's
-- startup with a process id of its own, so a mismatch shows one sits in between.
SELECT pg_backend_pid();

-- name: set_statement_timeout
-- A statement_timeout for the rest of this transaction (local) or session, where a
-- pooler refuses it as a startup option. ms is text, as set_config takes it.
SELECT set_config('statement_timeout', %(ms)s, %(local)s);

-- name: read_task_rows
-- The stored rows of an instance's tasks named (a fork takes the outputs still valid at
-- its version).
SELECT task_id, status, attempts, worker_id, started_at, completed_at, error, output
FROM @schema@.tasks
WHERE instance_id = %(instance_id)s AND task_id = ANY (%(task_ids)s::text[]);

-- name: mark_forked
-- Run after the fork's create, in its transaction.
UPDATE @schema@.snapshots SET forked_from = %(source)s, forked_from_version = %(version)s
WHERE instance_id = %(instance_id)s;
