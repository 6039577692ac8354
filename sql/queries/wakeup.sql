-- Wakeup statements. "@schema@" is replaced by the validated, quoted schema name;
-- values are always bound parameters (%(name)s). Sections start with "-- name: <key>".

-- name: wakeup_poll
-- The fallback poll of a wakeup listener: instances a worker could dispatch right now
-- (InProgress, due, no live claim). It finds what NOTIFY cannot announce (a timer or a
-- retry backoff that simply became due) and what it lost (a dropped wakeup, a LISTEN
-- connection that was down). LIMIT is the listener's free queue capacity, so the poll
-- walks the due set in (available_at, instance_id) order from a cursor (NULLs: from the
-- start) and the listener wraps around at the end: instances that consumers leave alone
-- (other tags, slow claimants) cannot keep the rest out of a small window forever.
-- The row comparison lets the partial dispatch index on available_at seek to the cursor.
SELECT s.instance_id, s.available_at
FROM @schema@.snapshots AS s
WHERE s.status = 'InProgress'
  AND s.available_at <= now()
  AND (s.available_at, s.instance_id)
      > (COALESCE(%(after_at)s::timestamptz, '-infinity'), COALESCE(%(after_id)s::text, ''))
  AND NOT EXISTS (
      SELECT 1 FROM @schema@.claims AS c
      WHERE c.instance_id = s.instance_id AND c.expires_at > now())
ORDER BY s.available_at, s.instance_id
LIMIT %(limit)s;
