-- Leases as single-key calls, like save_checkpoint (0010): each statement is filtered by
-- instance_id = <parameter>, none spans tables, none calls now() (the clock is read once
-- into v_now), and no statement locks rows of more than one instance. Dispatch becomes a
-- candidate scan (a read, no lock) followed by lease_instances, which takes each
-- candidate by its key. The wakeup a release earns is the client's own NOTIFY, sent on
-- its connection from what release_claim returns.

-- An explicit lease on one non-terminal instance (InProgress or Paused; timers, tags and
-- priority do not matter here). A fresh token is issued when there is no lease, when the
-- lease expired (steal), or when the same worker claims again (the newest lease wins and
-- the old token stops fencing). The snapshot row is locked first, so a claim waits for an
-- in-flight save or dispatch of the instance instead of racing it. Returns the status
-- (NULL: no such instance) and the lease (NULLs: none taken).
CREATE FUNCTION @schema@.claim_instance(
    p_instance_id text, p_worker_id text, p_token uuid, p_ttl interval,
    OUT status text, OUT task_id text, OUT token uuid, OUT expires_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := now();
    v_task text;
BEGIN
    SELECT s.status, s.current_task_id INTO status, v_task
    FROM @schema@.snapshots AS s
    WHERE s.instance_id = p_instance_id
    FOR UPDATE;
    IF NOT FOUND OR status IN ('Completed', 'Failed', 'Cancelled') THEN
        RETURN;
    END IF;
    INSERT INTO @schema@.claims AS c (
        instance_id, task_id, worker_id, token, claimed_at, expires_at)
    VALUES (p_instance_id, v_task, p_worker_id, p_token, v_now, v_now + p_ttl)
    ON CONFLICT (instance_id) DO UPDATE SET
        task_id = EXCLUDED.task_id, worker_id = EXCLUDED.worker_id, token = EXCLUDED.token,
        claimed_at = EXCLUDED.claimed_at, expires_at = EXCLUDED.expires_at
    WHERE c.expires_at <= v_now OR c.worker_id = EXCLUDED.worker_id
    RETURNING c.task_id, c.token, c.expires_at INTO task_id, token, expires_at;
END
$$;

-- Dispatch's lease step: the candidates in the order given (the scan's queue order),
-- each taken by its key until p_limit are leased. A candidate is taken only if it is
-- still dispatchable once its snapshot row is locked (InProgress, due, the worker's
-- tags), SKIP LOCKED: a row another dispatcher or a save holds is passed over, never
-- waited for. The ON CONFLICT guard makes a double lease impossible: a live lease,
-- whenever it committed, is never overwritten. Lock order as everywhere: the snapshot
-- row, then the claim.
CREATE FUNCTION @schema@.lease_instances(
    p_instance_ids text[], p_limit integer, p_worker_id text, p_token uuid,
    p_ttl interval, p_worker_tags text[])
RETURNS TABLE (instance_id text, task_id text, token uuid, expires_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := now();
    v_id text;
    v_task text;
    v_leased integer := 0;
BEGIN
    FOREACH v_id IN ARRAY p_instance_ids LOOP
        EXIT WHEN v_leased >= p_limit;
        -- One statement per candidate: one leased since the scan read it is passed over
        -- without locking its row (a lock would hold up the save of the worker that has
        -- it until this dispatch ends).
        SELECT s.current_task_id INTO v_task
        FROM @schema@.snapshots AS s
        WHERE s.instance_id = v_id AND s.status = 'InProgress' AND s.available_at <= v_now
          AND (p_worker_tags IS NULL OR s.tags <@ p_worker_tags)
          AND NOT EXISTS (
              SELECT 1 FROM @schema@.claims AS c
              WHERE c.instance_id = v_id AND c.expires_at > v_now)
        FOR UPDATE OF s SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        INSERT INTO @schema@.claims AS c (
            instance_id, task_id, worker_id, token, claimed_at, expires_at)
        VALUES (v_id, v_task, p_worker_id, p_token, v_now, v_now + p_ttl)
        ON CONFLICT (instance_id) DO UPDATE SET
            task_id = EXCLUDED.task_id, worker_id = EXCLUDED.worker_id,
            token = EXCLUDED.token, claimed_at = EXCLUDED.claimed_at,
            expires_at = EXCLUDED.expires_at
        WHERE c.expires_at <= v_now
        RETURNING c.instance_id, c.task_id, c.token, c.expires_at
        INTO instance_id, task_id, token, expires_at;
        CONTINUE WHEN NOT FOUND;
        v_leased := v_leased + 1;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Drop the lease if it is still this token's. An instance that is dispatchable now goes
-- to the back of its priority's queue (available_at: due from now; saves keep it while
-- the instance stays due); requeued tells the client to send the wakeup. The snapshot
-- row is locked first, as by dispatch, claim and a finishing save: no deadlock.
CREATE FUNCTION @schema@.release_claim(
    p_instance_id text, p_token uuid, OUT released boolean, OUT requeued boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := now();
BEGIN
    PERFORM FROM @schema@.snapshots AS s WHERE s.instance_id = p_instance_id
        FOR NO KEY UPDATE;
    DELETE FROM @schema@.claims AS c
    WHERE c.instance_id = p_instance_id AND c.token = p_token;
    released := FOUND;
    requeued := false;
    IF released THEN
        UPDATE @schema@.snapshots AS s SET available_at = v_now
        WHERE s.instance_id = p_instance_id
          AND s.status = 'InProgress' AND s.available_at <= v_now;
        requeued := FOUND;
    END IF;
END
$$;

-- Branch dispatch's lease step: the candidate branches in the order given, each taken
-- by its key until p_limit are leased, if still open (no result, lease absent or
-- expired) and its instance still at the fork that opened it, with the worker's tags.
-- SKIP LOCKED on the branch row: concurrent dispatchers never wait for each other. Only
-- branch rows are locked, never snapshots: no lock-order cycle with complete_branch.
CREATE FUNCTION @schema@.lease_branches(
    p_instance_ids text[], p_branch_ids text[], p_limit integer, p_worker_id text,
    p_token uuid, p_ttl interval, p_worker_tags text[])
RETURNS TABLE (instance_id text, branch_id text, fork_version bigint,
    expires_at timestamptz, created_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := now();
    v_leased integer := 0;
BEGIN
    FOR k IN 1 .. coalesce(cardinality(p_instance_ids), 0) LOOP
        EXIT WHEN v_leased >= p_limit;
        PERFORM FROM @schema@.branches AS b
        WHERE b.instance_id = p_instance_ids[k] AND b.branch_id = p_branch_ids[k]
          AND b.done_at IS NULL AND (b.expires_at IS NULL OR b.expires_at <= v_now)
        FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        UPDATE @schema@.branches AS b
        SET worker_id = p_worker_id, token = p_token, expires_at = v_now + p_ttl
        WHERE b.instance_id = p_instance_ids[k] AND b.branch_id = p_branch_ids[k]
          AND b.done_at IS NULL AND (b.expires_at IS NULL OR b.expires_at <= v_now)
          AND EXISTS (
              SELECT 1 FROM @schema@.snapshots AS s
              WHERE s.instance_id = p_instance_ids[k] AND s.version = b.fork_version
                AND s.status = 'InProgress'
                AND (p_worker_tags IS NULL OR s.tags <@ p_worker_tags))
        RETURNING b.instance_id, b.branch_id, b.fork_version, b.expires_at, b.created_at
        INTO instance_id, branch_id, fork_version, expires_at, created_at;
        CONTINUE WHEN NOT FOUND;
        v_leased := v_leased + 1;
        RETURN NEXT;
    END LOOP;
END
$$;
