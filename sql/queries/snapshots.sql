-- Named statements. "@schema@" is replaced by the validated, quoted schema name;
-- values are always bound parameters (%(name)s). Sections start with "-- name: <key>".

-- name: save_snapshot
-- One statement = one commit: CAS update (fenced by a live claim when one is given) or
-- create-if-absent, history row, task upserts, and a wakeup NOTIFY (delivered at commit)
-- when the instance is dispatchable now and no claimant is driving it.
WITH upd AS (
    UPDATE @schema@.snapshots AS s SET
        status = %(status)s,
        definition_hash = %(definition_hash)s,
        current_task_id = %(current_task_id)s,
        position_kind = %(position_kind)s,
        completed_task_count = %(completed_task_count)s,
        error = %(error)s,
        priority = %(priority)s,
        tags = %(tags)s,
        delay_wake_at = %(delay_wake_at)s,
        available_at = COALESCE(%(available_at)s, now()),
        version = s.version + 1,
        codec = %(codec)s,
        data_hash = %(data_hash)s,
        updated_at = now(),
        completed_at = CASE WHEN %(terminal)s THEN now() END
    WHERE s.instance_id = %(instance_id)s
      AND s.version = %(expected_version)s
      AND s.status NOT IN ('Completed', 'Failed', 'Cancelled')
      AND (%(claim_token)s::uuid IS NULL OR EXISTS (
          SELECT 1 FROM @schema@.claims AS c
          WHERE c.instance_id = s.instance_id AND c.token = %(claim_token)s::uuid
            AND c.expires_at > now()))
    RETURNING s.version
), ins AS (
    INSERT INTO @schema@.snapshots AS s (
        instance_id, status, definition_hash, current_task_id, position_kind,
        completed_task_count, error, priority, tags, delay_wake_at, available_at,
        version, codec, data_hash, completed_at)
    SELECT %(instance_id)s, %(status)s, %(definition_hash)s, %(current_task_id)s,
        %(position_kind)s, %(completed_task_count)s, %(error)s, %(priority)s, %(tags)s,
        %(delay_wake_at)s, COALESCE(%(available_at)s, now()), 1, %(codec)s, %(data_hash)s,
        CASE WHEN %(terminal)s THEN now() END
    WHERE %(expected_version)s::bigint IS NULL
    ON CONFLICT (instance_id) DO NOTHING
    RETURNING s.version
), saved AS (
    SELECT version FROM upd UNION ALL SELECT version FROM ins
), hist AS (
    INSERT INTO @schema@.history (
        instance_id, version, status, current_task_id, codec, data, data_hash)
    SELECT %(instance_id)s, saved.version, %(status)s, %(current_task_id)s, %(codec)s,
        %(data)s, %(data_hash)s
    FROM saved
), tsk AS (
    INSERT INTO @schema@.tasks AS t (
        instance_id, task_id, status, attempts, worker_id, started_at, completed_at,
        error, output)
    SELECT %(instance_id)s, u.task_id, u.status, u.attempts, u.worker_id, u.started_at,
        u.completed_at, u.error, u.output
    FROM saved, unnest(%(task_ids)s::text[], %(task_statuses)s::text[],
        %(task_attempts)s::integer[], %(task_workers)s::text[],
        %(task_started)s::timestamptz[], %(task_completed)s::timestamptz[],
        %(task_errors)s::text[], %(task_outputs)s::bytea[])
        AS u(task_id, status, attempts, worker_id, started_at, completed_at, error, output)
    ON CONFLICT (instance_id, task_id) DO UPDATE SET
        status = EXCLUDED.status, attempts = EXCLUDED.attempts,
        worker_id = EXCLUDED.worker_id, started_at = EXCLUDED.started_at,
        completed_at = EXCLUDED.completed_at, error = EXCLUDED.error,
        output = EXCLUDED.output
    WHERE (t.status, t.attempts, t.worker_id, t.started_at, t.completed_at, t.error, t.output)
        IS DISTINCT FROM (EXCLUDED.status, EXCLUDED.attempts, EXCLUDED.worker_id,
        EXCLUDED.started_at, EXCLUDED.completed_at, EXCLUDED.error, EXCLUDED.output)
)
SELECT saved.version FROM saved
LEFT JOIN LATERAL (
    SELECT pg_notify(%(channel)s, %(instance_id)s)
    WHERE %(notify)s AND COALESCE(%(available_at)s, now()) <= now()
) AS wake ON true;

-- name: current_state
-- Why a save failed: the stored version and status, and whether the given claim is live.
SELECT s.version, s.status, EXISTS (
    SELECT 1 FROM @schema@.claims AS c
    WHERE c.instance_id = s.instance_id AND c.token = %(claim_token)s::uuid
      AND c.expires_at > now())
FROM @schema@.snapshots AS s WHERE s.instance_id = %(instance_id)s;

-- name: load_snapshot
-- The blob and the task outputs are read in one statement, so they come from one commit.
SELECT s.version, s.codec, s.updated_at, h.data, o.task_ids, o.outputs
FROM @schema@.snapshots AS s
JOIN @schema@.history AS h ON h.instance_id = s.instance_id AND h.version = s.version
CROSS JOIN LATERAL (
    SELECT array_agg(t.task_id ORDER BY t.task_id) AS task_ids,
           array_agg(t.output ORDER BY t.task_id) AS outputs
    FROM @schema@.tasks AS t
    WHERE t.instance_id = s.instance_id AND t.output IS NOT NULL
) AS o
WHERE s.instance_id = %(instance_id)s;

-- name: load_task_result
SELECT status, attempts, worker_id, started_at, completed_at, error, output
FROM @schema@.tasks
WHERE instance_id = %(instance_id)s AND task_id = %(task_id)s;

-- name: delete_instance
WITH s AS (
    DELETE FROM @schema@.snapshots WHERE instance_id = %(instance_id)s RETURNING 1
), h AS (
    DELETE FROM @schema@.history WHERE instance_id = %(instance_id)s
), t AS (
    DELETE FROM @schema@.tasks WHERE instance_id = %(instance_id)s
), sg AS (
    DELETE FROM @schema@.signals WHERE instance_id = %(instance_id)s
), e AS (
    DELETE FROM @schema@.events WHERE instance_id = %(instance_id)s
), c AS (
    DELETE FROM @schema@.claims WHERE instance_id = %(instance_id)s
)
SELECT count(*) FROM s;

-- name: list_snapshots
-- Keyset pagination on instance_id; a NULL filter means "any".
SELECT instance_id, status, definition_hash, current_task_id, position_kind,
    completed_task_count, priority, tags, version, codec, error, updated_at
FROM @schema@.snapshots
WHERE (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s::text[]))
  AND (%(after)s::text IS NULL OR instance_id > %(after)s::text)
ORDER BY instance_id
LIMIT %(limit)s;

-- name: read_history
SELECT instance_id, version, status, current_task_id, codec, data, created_at
FROM @schema@.history
WHERE instance_id = %(instance_id)s
  AND version > %(after_version)s
ORDER BY version
LIMIT %(limit)s;

-- name: truncate_all
TRUNCATE @schema@.snapshots, @schema@.history, @schema@.tasks, @schema@.signals,
    @schema@.events, @schema@.claims;
