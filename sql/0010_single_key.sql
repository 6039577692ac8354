-- Single-key saves, and a schema every table of which can be distributed by instance_id
-- (Citus colocation needs one collation, and primary keys that include the key).

ALTER TABLE @schema@.signals ALTER COLUMN instance_id TYPE text COLLATE "C";
ALTER TABLE @schema@.claims ALTER COLUMN instance_id TYPE text COLLATE "C";
ALTER TABLE @schema@.events ALTER COLUMN instance_id TYPE text COLLATE "C";
ALTER TABLE @schema@.events DROP CONSTRAINT events_pkey, ADD PRIMARY KEY (instance_id, id);

-- One save of one instance, as one call: its snapshot row (a CAS update, or a create if
-- absent), then its history row, its new and changed task rows and, once it finishes,
-- its lease removal. Every statement is filtered by instance_id = p_instance_id, none
-- spans tables, and the clock is read once into v_now, so no statement calls now():
-- Citus routes each to the instance's shard, and the whole call to the node holding it
-- once the function is distributed by p_instance_id (README "Scaling past one server").
-- One call is one round trip and one statement for the client, whose driver cost per
-- statement is what a pipeline of the same statements would multiply.
-- Returns the new version and the instance's created_at (NULLs where the CAS failed or
-- the id was taken), whether it was dispatchable before (InProgress, due, tagged the
-- same) and whether it is due now: the client decides the wakeup from those and sends
-- the NOTIFY itself, on its own connection.
CREATE FUNCTION @schema@.save_checkpoint(
    p_instance_id text, p_expected_version bigint, p_expected_created_at timestamptz,
    p_claim_token uuid, p_status text, p_definition_hash text, p_current_task_id text,
    p_position_kind text, p_completed_task_count integer, p_error text, p_priority smallint,
    p_tags text[], p_delay_wake_at timestamptz, p_available_at timestamptz, p_codec text,
    p_data bytea, p_data_hash bytea, p_base_version bigint,
    p_task_ids text[], p_task_status text[], p_task_attempts integer[], p_task_worker text[],
    p_task_started timestamptz[], p_task_completed timestamptz[], p_task_error text[],
    p_task_output bytea[],
    OUT version bigint, OUT created_at timestamptz, OUT was_dispatchable boolean,
    OUT due boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := now();
    v_final boolean := p_status NOT IN ('InProgress', 'Paused');
BEGIN
    IF p_expected_version IS NULL THEN  -- create if absent
        INSERT INTO @schema@.snapshots AS s (
            instance_id, status, definition_hash, current_task_id, position_kind,
            completed_task_count, error, priority, tags, delay_wake_at, available_at,
            version, codec, data_hash, created_at, updated_at, completed_at)
        VALUES (p_instance_id, p_status, p_definition_hash, p_current_task_id,
            p_position_kind, p_completed_task_count, p_error, p_priority, p_tags,
            p_delay_wake_at, COALESCE(p_available_at, v_now), 1, p_codec, p_data_hash,
            v_now, v_now, CASE WHEN v_final THEN v_now END)
        ON CONFLICT (instance_id) DO NOTHING
        RETURNING s.version, s.created_at, false, s.available_at <= v_now
        INTO version, created_at, was_dispatchable, due;
    ELSE
        IF p_claim_token IS NOT NULL THEN
            -- Fenced: the lease must be live while this save holds the row (a steal
            -- locks the row first), checked in a statement of its own (an EXISTS in the
            -- update's WHERE costs every save, measured: 100 us).
            PERFORM FROM @schema@.snapshots AS s WHERE s.instance_id = p_instance_id
                FOR NO KEY UPDATE;
            PERFORM FROM @schema@.claims AS c
            WHERE c.instance_id = p_instance_id AND c.token = p_claim_token
              AND c.expires_at > v_now;
            IF NOT FOUND THEN
                RETURN;
            END IF;
        END IF;
        -- The CAS: the version read, the same life of the id (task rows were skipped
        -- as stored at that version, see task_cache.py), not finished. p: the row as it
        -- was before.
        UPDATE @schema@.snapshots AS s SET
            status = p_status,
            definition_hash = p_definition_hash,
            current_task_id = p_current_task_id,
            position_kind = p_position_kind,
            completed_task_count = p_completed_task_count,
            error = p_error,
            priority = p_priority,
            tags = p_tags,
            delay_wake_at = p_delay_wake_at,
            -- Due since: kept while the instance stays InProgress and due (its queue
            -- position, and an unchanged indexed column keeps the update HOT);
            -- release_claim re-queues it. A timer or backoff given replaces it.
            available_at = COALESCE(p_available_at,
                LEAST(v_now, CASE WHEN p.status = 'InProgress' THEN p.available_at END)),
            version = s.version + 1,
            codec = p_codec,
            data_hash = p_data_hash,
            updated_at = v_now,
            completed_at = CASE WHEN v_final THEN v_now END
        FROM @schema@.snapshots AS p
        WHERE s.instance_id = p_instance_id AND p.instance_id = p_instance_id
          AND s.version = p_expected_version
          AND (p_expected_created_at IS NULL OR s.created_at = p_expected_created_at)
          AND s.status IN ('InProgress', 'Paused')
        RETURNING s.version, s.created_at,
            (p.status = 'InProgress' AND p.available_at <= v_now AND p.tags = s.tags) IS TRUE,
            s.available_at <= v_now
        INTO version, created_at, was_dispatchable, due;
    END IF;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    INSERT INTO @schema@.history (
        instance_id, version, status, current_task_id, codec, data, data_hash,
        base_version, created_at)
    VALUES (p_instance_id, version, p_status, p_current_task_id, p_codec, p_data,
        p_data_hash, p_base_version, v_now);
    IF cardinality(p_task_ids) > 0 THEN
        -- Unchanged rows are not rewritten. Whole rows: every column of tasks.
        INSERT INTO @schema@.tasks AS t (
            instance_id, task_id, status, attempts, worker_id, started_at, completed_at,
            error, output)
        SELECT p_instance_id, u.*
        FROM unnest(p_task_ids, p_task_status, p_task_attempts, p_task_worker,
            p_task_started, p_task_completed, p_task_error, p_task_output)
            AS u(task_id, status, attempts, worker_id, started_at, completed_at, error,
                 output)
        ON CONFLICT (instance_id, task_id) DO UPDATE SET
            status = EXCLUDED.status, attempts = EXCLUDED.attempts,
            worker_id = EXCLUDED.worker_id, started_at = EXCLUDED.started_at,
            completed_at = EXCLUDED.completed_at, error = EXCLUDED.error,
            output = EXCLUDED.output
        WHERE (t.*) IS DISTINCT FROM (EXCLUDED.*);
    END IF;
    IF v_final THEN  -- a finished instance needs no lease: claims do not pile up
        DELETE FROM @schema@.claims AS c WHERE c.instance_id = p_instance_id;
    END IF;
END
$$;
