-- Cancel/pause signals and buffered external events. "@schema@" is replaced by the
-- validated, quoted schema name; values are always bound parameters (%(name)s).
-- Every program that changes signals or resumes an instance first takes `lock_instance`,
-- so those programs (and concurrent saves of the same instance) run one at a time.

-- name: lock_instance
-- Serialises signal and event programs on one instance. Only the locked row is read here:
-- under READ COMMITTED the follow-up statements take a fresh snapshot once the lock is
-- held, so they see everything committed by whoever held the lock before us.
SELECT s.version, s.status, s.position_kind,
    -- the clock now, not the transaction's start: a call that waited for this lock
    -- (behind a dispatch that found the wait timed out) must see it as that did
    s.available_at <= clock_timestamp() AS due, now() AS server_now
FROM @schema@.snapshots AS s
WHERE s.instance_id = %(instance_id)s
FOR UPDATE;

-- name: live_claim
-- Whether a live lease (a worker driving the instance) exists, by the server clock.
-- Branch leases do not count: a fork's branches have no point at which to apply a
-- request (and no worker left to do it once they stop), so a cancel or pause ends the
-- fork at once and the branch workers find out from their next write.
SELECT EXISTS (
    SELECT 1 FROM @schema@.claims AS c
    WHERE c.instance_id = %(instance_id)s AND c.expires_at > now());

-- name: put_signal
-- A repeated request keeps the first one's time, reason and requester: the signal is
-- still the same one.
-- (both from one request: a later one fills them only if the first gave neither).
INSERT INTO @schema@.signals AS g (instance_id, kind, reason, requested_by)
VALUES (%(instance_id)s, %(kind)s, %(reason)s, %(requested_by)s)
ON CONFLICT (instance_id, kind) DO UPDATE SET
    reason = CASE WHEN g.reason IS NULL AND g.requested_by IS NULL
                  THEN EXCLUDED.reason ELSE g.reason END,
    requested_by = CASE WHEN g.reason IS NULL AND g.requested_by IS NULL
                        THEN EXCLUDED.requested_by ELSE g.requested_by END
RETURNING g.instance_id, g.kind, g.reason, g.created_at, g.requested_by;

-- name: read_signals
-- One row even when nothing is pending, so an unknown instance can be told apart.
SELECT s.instance_id IS NOT NULL, g.kind, g.reason, g.created_at, g.requested_by
FROM (SELECT %(instance_id)s::text AS instance_id) AS k
LEFT JOIN @schema@.snapshots AS s ON s.instance_id = %(instance_id)s
LEFT JOIN @schema@.signals AS g ON g.instance_id = %(instance_id)s
    AND (%(kind)s::text IS NULL OR g.kind = %(kind)s::text)
ORDER BY g.kind;

-- name: delete_signals
-- Removes one kind (or all, for a NULL kind); a row per signal removed. Pipelined with
-- instance_exists, which tells an unknown instance apart.
DELETE FROM @schema@.signals
WHERE instance_id = %(instance_id)s AND (%(kind)s::text IS NULL OR kind = %(kind)s::text)
RETURNING kind;

-- name: instance_exists
SELECT EXISTS (SELECT 1 FROM @schema@.snapshots WHERE instance_id = %(instance_id)s);

-- name: push_event
-- token: the sender's, so a send whose connection was lost can be looked up (event_sent).
-- created_at by the clock now (not the transaction's start), as `due` in lock_instance is:
-- an event judged late against a wait's deadline is stamped late too.
INSERT INTO @schema@.events (instance_id, name, payload, token, created_at)
VALUES (%(instance_id)s, %(name)s, %(payload)s, %(token)s, clock_timestamp());

-- name: event_sent
SELECT EXISTS (
    SELECT 1 FROM @schema@.events
    WHERE instance_id = %(instance_id)s AND name = %(name)s AND token = %(token)s);

-- name: read_events
-- Buffered events, oldest first; one row even when none are buffered (see read_signals).
SELECT s.instance_id IS NOT NULL, e.id, e.name, e.payload, e.created_at
FROM (SELECT %(instance_id)s::text AS instance_id) AS k
LEFT JOIN @schema@.snapshots AS s ON s.instance_id = %(instance_id)s
LEFT JOIN LATERAL (
    SELECT v.id, v.name, v.payload, v.created_at
    FROM @schema@.events AS v
    WHERE v.instance_id = %(instance_id)s AND (%(name)s::text IS NULL OR v.name = %(name)s::text)
    ORDER BY v.id
    LIMIT %(limit)s
) AS e ON true
ORDER BY e.id;

-- name: take_event
-- Consumes one event by id, but only the oldest of its name: FIFO per (instance, name).
-- A concurrent consumer of the same event blocks on its row lock and then finds it gone.
DELETE FROM @schema@.events AS e
WHERE e.id = %(event_id)s AND e.instance_id = %(instance_id)s
  AND NOT EXISTS (
      SELECT 1 FROM @schema@.events AS o
      WHERE o.instance_id = %(instance_id)s AND o.name = e.name AND o.id < e.id)
RETURNING e.id, e.name, e.payload, e.created_at;

-- name: event_state
-- Why take_event found nothing: the event is gone, or an older one of its name is waiting.
SELECT e.name
FROM @schema@.events AS e
WHERE e.id = %(event_id)s AND e.instance_id = %(instance_id)s;

-- name: take_oldest_event
DELETE FROM @schema@.events
WHERE instance_id = %(instance_id)s AND id = (
    SELECT v.id FROM @schema@.events AS v
    WHERE v.instance_id = %(instance_id)s AND v.name = %(name)s
      AND (%(before)s::timestamptz IS NULL OR v.created_at < %(before)s::timestamptz)
    ORDER BY v.id
    LIMIT 1
    FOR UPDATE)
RETURNING id, name, payload, created_at;

-- name: drop_event
-- A buffered event whose payload cannot be read leaves events (bury_taken_event follows).
DELETE FROM @schema@.events WHERE instance_id = %(instance_id)s AND id = %(id)s;

-- name: bury_taken_event
-- Moves an event whose payload cannot be read, already deleted from events in this
-- transaction (by take_oldest_event or drop_event), to dead_events (0006).
INSERT INTO @schema@.dead_events (instance_id, id, name, payload, created_at, reason)
VALUES (%(instance_id)s, %(id)s, %(name)s, %(payload)s, %(created_at)s, %(reason)s);

-- name: record_applied_signal
-- The request a checkpoint about to be saved (at %(version)s) applies; the save follows in
-- the same transaction, so both commit or neither does. A request applied at once, never
-- stored, was made when lock_instance read the clock (%(requested_at)s is that time then).
INSERT INTO @schema@.applied_signals
    (instance_id, version, kind, reason, requested_by, requested_at)
VALUES (%(instance_id)s, %(version)s, %(kind)s, %(reason)s, %(requested_by)s,
    %(requested_at)s)
-- A row already at this version is left from an earlier life of the id: replaced.
ON CONFLICT (instance_id, version) DO UPDATE SET
    kind = EXCLUDED.kind, reason = EXCLUDED.reason, requested_by = EXCLUDED.requested_by,
    requested_at = EXCLUDED.requested_at, applied_at = EXCLUDED.applied_at;
