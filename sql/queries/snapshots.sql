-- Named statements. "@schema@" is replaced by the validated, quoted schema name;
-- values are always bound parameters (%(name)s). Sections start with "-- name: <key>".

-- name: part_task_upsert
-- How a branch result writes its task row (aliased t), as save_checkpoint does:
-- unchanged rows are not rewritten. Whole rows: every column of tasks (keep it so).
ON CONFLICT (instance_id, task_id) DO UPDATE SET
    status = EXCLUDED.status, attempts = EXCLUDED.attempts,
    worker_id = EXCLUDED.worker_id, started_at = EXCLUDED.started_at,
    completed_at = EXCLUDED.completed_at, error = EXCLUDED.error,
    output = EXCLUDED.output
WHERE (t.*) IS DISTINCT FROM (EXCLUDED.*)

-- name: save_checkpoint
-- One save (migration 0010 says what the function writes); a batch is save_checkpoints.
-- Returns the new
-- version and created_at (NULLs where the CAS failed), whether the instance was
-- dispatchable before and whether it is due now.
SELECT version, created_at, was_dispatchable, due
FROM @schema@.save_checkpoint(%(instance_id)s::text, %(expected_version)s::bigint,
    %(expected_created_at)s::timestamptz, %(claim_token)s::uuid, %(status)s::text,
    %(definition_hash)s::text, %(current_task_id)s::text, %(position_kind)s::text,
    %(completed_task_count)s::integer, %(error)s::text, %(priority)s::smallint,
    %(tags)b::text[], %(delay_wake_at)s::timestamptz, %(available_at)s::timestamptz,
    %(codec)s::text, %(data)s::bytea, %(data_hash)s::bytea, %(base_version)s::bigint,
    %(task_ids)b::text[], %(task_status)b::text[], %(task_attempts)b::integer[],
    %(task_worker)b::text[], %(task_started)b::timestamptz[],
    %(task_completed)b::timestamptz[], %(task_error)b::text[], %(task_output)b::bytea[]);

-- name: save_checkpoints
-- Saves of several distinct instances in one statement: save_checkpoint per item, in
-- the order given (the client sorts by instance id: one lock order), each with its slice
-- of the flattened task rows. Returns (ordinal, what save_checkpoint returns). A
-- distributed store sends one save_checkpoint per instance instead (README "Scaling
-- past one server"): this statement spans shards.
SELECT i.n, r.version, r.created_at, r.was_dispatchable, r.due
FROM unnest(
    %(instance_id)b::text[], %(expected_version)b::bigint[],
    %(expected_created_at)b::timestamptz[], %(claim_token)b::uuid[], %(status)b::text[],
    %(definition_hash)b::text[], %(current_task_id)b::text[], %(position_kind)b::text[],
    %(completed_task_count)b::integer[], %(error)b::text[], %(priority)b::smallint[],
    %(tags)b::jsonb[], %(delay_wake_at)b::timestamptz[], %(available_at)b::timestamptz[],
    %(codec)b::text[], %(data)b::bytea[], %(data_hash)b::bytea[],
    %(base_version)b::bigint[], %(task_from)b::integer[], %(task_to)b::integer[]
) WITH ORDINALITY AS i(
    instance_id, expected_version, expected_created_at, claim_token, status,
    definition_hash, current_task_id, position_kind, completed_task_count, error, priority,
    tags, delay_wake_at, available_at, codec, data, data_hash, base_version, task_from,
    task_to, n)
CROSS JOIN LATERAL @schema@.save_checkpoint(i.instance_id, i.expected_version,
    i.expected_created_at, i.claim_token, i.status, i.definition_hash, i.current_task_id,
    i.position_kind, i.completed_task_count, i.error, i.priority,
    ARRAY(SELECT jsonb_array_elements_text(i.tags)), i.delay_wake_at, i.available_at,
    i.codec, i.data, i.data_hash, i.base_version,
    (%(task_ids)b::text[])[i.task_from:i.task_to],
    (%(task_status)b::text[])[i.task_from:i.task_to],
    (%(task_attempts)b::integer[])[i.task_from:i.task_to],
    (%(task_worker)b::text[])[i.task_from:i.task_to],
    (%(task_started)b::timestamptz[])[i.task_from:i.task_to],
    (%(task_completed)b::timestamptz[])[i.task_from:i.task_to],
    (%(task_error)b::text[])[i.task_from:i.task_to],
    (%(task_output)b::bytea[])[i.task_from:i.task_to]) AS r
ORDER BY i.n;

-- name: live_leases
-- Which of the instances a save made dispatchable are held by a live lease (a send_event
-- or unpause resuming what a worker holds): nobody else may take those, so nobody is
-- woken for them.
SELECT c.instance_id FROM @schema@.claims AS c
WHERE c.instance_id = ANY (%(instance_ids)s::text[]) AND c.expires_at > now();

-- name: notify
-- Wakeups, sent by the client on its own connection (delivered at commit when in a
-- transaction): no table is read, so it runs where the client is connected.
SELECT pg_notify(%(channel)s, i) FROM unnest(%(instance_ids)s::text[]) AS i;

-- name: current_states
-- Why saves failed: stored version and status, and whether each given claim is live.
SELECT s.version, s.status, c.instance_id IS NOT NULL
FROM unnest(%(instance_ids)s::text[], %(claim_tokens)s::uuid[])
    WITH ORDINALITY AS q(instance_id, claim_token, n)
LEFT JOIN @schema@.snapshots AS s ON s.instance_id = q.instance_id
LEFT JOIN @schema@.claims AS c ON c.instance_id = q.instance_id
    AND c.token = q.claim_token AND c.expires_at > now()
ORDER BY q.n;

-- name: instance_version
-- The version a replica holds, read before a task result (snapstore/replicas.py).
SELECT version FROM @schema@.snapshots WHERE instance_id = %(instance_id)s;

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

-- name: drop_snapshots
-- Deleting instances, in one transaction: their snapshot rows first (a create of the same
-- id waits for the commit, so no row of a new life lands meanwhile), then their rows in
-- every other table (drop_*_rows). %(finished_before)s (purge): only instances finished
-- before then, checked on the row, which the purge's scan read without locking.
DELETE FROM @schema@.snapshots
WHERE instance_id = ANY (%(instance_ids)s::text[])
  AND (%(finished_before)s::timestamptz IS NULL
       OR (status IN ('Completed', 'Failed', 'Cancelled')
           AND completed_at < %(finished_before)s::timestamptz))
RETURNING instance_id;

-- name: drop_history_rows
DELETE FROM @schema@.history WHERE instance_id = ANY (%(instance_ids)s::text[]);

-- name: drop_task_rows
DELETE FROM @schema@.tasks WHERE instance_id = ANY (%(instance_ids)s::text[]);

-- name: drop_signal_rows
DELETE FROM @schema@.signals WHERE instance_id = ANY (%(instance_ids)s::text[]);

-- name: drop_event_rows
DELETE FROM @schema@.events WHERE instance_id = ANY (%(instance_ids)s::text[]);

-- name: drop_claim_rows
DELETE FROM @schema@.claims WHERE instance_id = ANY (%(instance_ids)s::text[]);

-- name: drop_dead_event_rows
DELETE FROM @schema@.dead_events WHERE instance_id = ANY (%(instance_ids)s::text[]);

-- name: drop_applied_signal_rows
DELETE FROM @schema@.applied_signals WHERE instance_id = ANY (%(instance_ids)s::text[]);

-- name: drop_branch_rows
DELETE FROM @schema@.branches WHERE instance_id = ANY (%(instance_ids)s::text[]);

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
LEFT JOIN @schema@.applied_signals AS a
    ON a.instance_id = %(instance_id)s AND a.version = h.version
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
