-- Claim statements (snapstore/claims.py). "@schema@" is replaced by the validated, quoted
-- schema name; values are always bound parameters (%(name)s). Every time comparison uses
-- the server clock (now()), so workers with skewed clocks still agree on who holds a lease.

-- name: claim_instance
-- An explicit lease on one instance (migration 0011 says which): the status (NULL: no
-- such instance) and the lease taken (NULLs: another worker holds a live one).
SELECT status, task_id, token, expires_at
FROM @schema@.claim_instance(%(instance_id)s::text, %(worker_id)s::text, %(token)s::uuid,
    %(ttl)s::interval);

-- name: extend_claim
-- Absolute renewal: the lease now ends %(ttl)s after the server's now(), whatever was left
-- of it. Only a live lease with this token can be renewed; an expired one must be claimed
-- again (and may have been stolen meanwhile).
UPDATE @schema@.claims
SET expires_at = now() + %(ttl)s::interval
WHERE instance_id = %(instance_id)s AND token = %(token)s::uuid AND expires_at > now()
RETURNING expires_at;

-- name: release_claim
-- Drop the lease if it is still this token's (migration 0011): whether it was, and
-- whether the instance went back to its queue, dispatchable (the client's NOTIFY follows).
SELECT released, requeued
FROM @schema@.release_claim(%(instance_id)s::text, %(token)s::uuid);

-- name: part_candidate
-- A dispatch candidate (snapshots aliased s) and its effective priority.
SELECT s.instance_id, s.current_task_id, s.available_at,
    s.priority - floor(extract(epoch FROM now() - s.available_at)::float8
        / %(aging_seconds)s::float8) AS effective_priority
FROM @schema@.snapshots AS s

-- name: part_dispatchable
-- THE dispatch predicate on snapshots aliased s (see dispatch).
s.status = 'InProgress' AND s.available_at <= now()
AND (%(worker_tags)s::text[] IS NULL OR s.tags <@ %(worker_tags)s::text[])
AND NOT EXISTS (
    SELECT 1 FROM @schema@.claims AS c
    WHERE c.instance_id = s.instance_id AND c.expires_at > now())

-- name: part_mark
-- A dispatch's mark on candidate o: a transaction-level advisory lock on the instance id
-- (per schema), taken without waiting and held to the dispatch's commit. Marks are no
-- lease and guard nothing (lease_instances and its ON CONFLICT do): they let concurrent
-- dispatchers, which read the queue head without row locks, pass over what another is
-- leasing inside the scan, as SKIP LOCKED did, instead of trying it by key in
-- lease_instances. %(mark)s false: no mark (a report; or a limit whose marks would
-- outgrow the lock table, see snapstore.claims.MARKED_LIMIT).
(NOT %(mark)s OR pg_try_advisory_xact_lock(hashtext('snapstore dispatch @schema@'),
    hashtext(o.instance_id)))

-- name: part_candidates
-- THE dispatch predicate, shared by find_available_tasks (%(instance_ids)s NULL),
-- claim_notified (the ids a wakeup named) and dispatchable_ids (a report, no lease): up to
-- %(scan)s instances in the order a worker should take them, read without row locks
-- (lease_instances then takes each by its key). Dispatchable = InProgress, due
-- (available_at covers AtDelay timers and retry backoff), no live lease, and the
-- instance's tags a subset of the worker's (%(worker_tags)s NULL: the worker takes
-- anything). Every condition is a filter on rows read in queue order, so rows a worker
-- cannot take never use up its LIMIT.
-- Order: effective priority = priority (1 = most urgent) minus one level per
-- %(aging_seconds)s spent due, so old low-priority work eventually overtakes fresh urgent
-- work; then longest due first. Within one priority that is index order
-- (snapshots_queue_idx), so the queue is read as five short index scans, one per priority,
-- each stopping after %(scan)s rows: the global first %(scan)s are among them, and the
-- cost does not depend on the backlog. Each scan marks the rows it hands over
-- (part_mark, applied above the dispatch predicate so that only dispatchable rows are
-- marked) and reads at most %(depth)s rows past those another dispatcher marked.
WITH candidates AS (
    SELECT q.* FROM unnest('{1,2,3,4,5}'::smallint[]) AS p(priority)
    CROSS JOIN LATERAL (
        SELECT o.* FROM (
            @part_candidate@
            WHERE s.priority = p.priority AND @part_dispatchable@
            ORDER BY s.available_at, s.instance_id
            LIMIT %(depth)s
        ) AS o
        WHERE @part_mark@
        ORDER BY o.available_at, o.instance_id
        LIMIT %(scan)s
    ) AS q
    WHERE %(instance_ids)s::text[] IS NULL
    UNION ALL
    SELECT o.* FROM (
        @part_candidate@
        WHERE s.instance_id = ANY (%(instance_ids)s::text[]) AND @part_dispatchable@
        OFFSET 0  -- kept apart (not flattened): the mark is taken above the predicate
    ) AS o
    WHERE @part_mark@
)
SELECT instance_id FROM candidates
ORDER BY effective_priority, available_at, instance_id
LIMIT %(scan)s

-- name: dispatch_candidates
-- What a dispatch would lease now, in its order, leasing nothing (%(scan)s: its limit,
-- %(mark)s false).
@part_candidates@;

-- name: dispatch
-- Lease up to %(limit)s dispatchable instances: the candidate scan, then each candidate
-- in its order taken by its key (lease_instances, migration 0011), in one round trip.
-- Concurrent dispatchers read the same queue head without row locks: marked, each passes
-- over what another marked; unmarked, the scan reads more candidates than wanted
-- (%(scan)s) and lease_instances passes over what another is leasing.
SELECT instance_id, task_id, token, expires_at
FROM @schema@.lease_instances(ARRAY(@part_candidates@), %(limit)s::integer,
    %(worker_id)s::text, %(token)s::uuid, %(ttl)s::interval, %(worker_tags)s::text[]);

-- name: quarantine
-- Dispatch leased instances whose checkpoint cannot be read: they wait at the end of
-- time (like a parked instance, but not AtSignal), so no worker is handed them again
-- and no poll or timer looks at them; the next save of a good checkpoint sets
-- available_at anew and so releases them.
UPDATE @schema@.snapshots
SET available_at = %(until)s
WHERE instance_id = ANY (%(instance_ids)s::text[]) AND status = 'InProgress';

-- name: next_dispatch_at
-- The next moment (strictly after now()) an instance may become dispatchable without any
-- NOTIFY: a timer or retry backoff coming due, or a lease running out. Waking up then and
-- finding nothing (the instance was claimed or changed meanwhile) is harmless. The second
-- column is the server's now(), so a caller can wait (next - now) without trusting its clock.
SELECT LEAST(
    (SELECT min(s.available_at) FROM @schema@.snapshots AS s
     WHERE s.status = 'InProgress' AND s.available_at > now()
       -- AtSignal rows wait for an event at the end of time (PARKED_UNTIL in rows.py),
       -- as do quarantined ones: the bound stops the index scan before them. A wait with
       -- a deadline is queued at its deadline, like a timer, and is found here.
       AND s.available_at < '9999-12-31 23:59:59.999999+00'::timestamptz),
    (SELECT c.expires_at FROM @schema@.claims AS c
     JOIN @schema@.snapshots AS s ON s.instance_id = c.instance_id
     WHERE c.expires_at > now() AND s.status = 'InProgress'
     ORDER BY c.expires_at LIMIT 1)) AS next_at, now() AS server_now;

-- name: claim_held
-- After a claim whose connection was lost: the lease it asked for, if it committed.
SELECT task_id, expires_at FROM @schema@.claims
WHERE instance_id = %(instance_id)s AND token = %(token)s::uuid;

-- name: undo_dispatch
-- After a dispatch whose connection was lost: drop the leases it took, if it committed
-- (one token per dispatch), so its instances are dispatchable again at once. No index
-- serves it (one on token would cost every lease): it reads the claims table, which
-- holds one row per leased instance, and runs only after a lost connection.
DELETE FROM @schema@.claims WHERE token = %(token)s::uuid;
