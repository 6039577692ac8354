-- Parallel branches (snapstore/branches.py): one lease per branch of an instance AtFork,
-- taken by different workers at once. Times by the server clock, as for claims.

-- name: close_branches
-- The branches of an earlier fork go: run by start_branches (before it opens the new
-- ones: a statement of its own, as an INSERT cannot see a DELETE of the same statement)
-- and when a cancel or pause ends a fork; the instance is locked.
DELETE FROM @schema@.branches WHERE instance_id = %(instance_id)s;

-- name: open_branches
-- Then the branches of the fork checkpoint just saved (version %(version)s).
INSERT INTO @schema@.branches (instance_id, branch_id, fork_version)
SELECT %(instance_id)s, b, %(version)s FROM unnest(%(branch_ids)s::text[]) AS b;

-- name: announce_branches
-- After the branches are open: a NOTIFY (at commit) with the instance id, so idle workers
-- waiting on wakeups look for branches now instead of at their next poll (a dispatch of
-- the id itself finds nothing: the instance is parked).
SELECT pg_notify(%(channel)s, %(instance_id)s);

-- name: hand_over
-- After the fenced fork save: the caller's instance lease goes (the branches are the
-- work now).
DELETE FROM @schema@.claims WHERE instance_id = %(instance_id)s AND token = %(token)s::uuid;

-- name: dispatch_branches
-- Lease up to %(limit)s open branches oldest first, in one round trip: a candidate scan
-- read without locking any (up to %(scan)s open branches in the order of
-- branches_open_idx: a call reads about that many entries whatever the backlog, of
-- instances still at the fork that opened them, whose tags the worker has; a branch is
-- open when no result landed and its lease, if any, expired, so a killed worker's branch
-- is taken over), then each candidate in that order taken by its key (lease_branches,
-- migration 0011).
SELECT l.instance_id, l.branch_id, l.fork_version, l.expires_at, l.created_at
FROM (
    SELECT array_agg(c.instance_id ORDER BY c.n) AS instance_ids,
        array_agg(c.branch_id ORDER BY c.n) AS branch_ids
    FROM (
        SELECT b.instance_id, b.branch_id,
            row_number() OVER (ORDER BY b.created_at, b.instance_id, b.branch_id) AS n
        FROM @schema@.branches AS b
        JOIN @schema@.snapshots AS s ON s.instance_id = b.instance_id
        WHERE b.done_at IS NULL AND (b.expires_at IS NULL OR b.expires_at <= now())
          AND s.version = b.fork_version AND s.status = 'InProgress'
          AND (%(worker_tags)s::text[] IS NULL OR s.tags <@ %(worker_tags)s::text[])
        ORDER BY b.created_at, b.instance_id, b.branch_id
        LIMIT %(scan)s
    ) AS c
) AS k
CROSS JOIN LATERAL @schema@.lease_branches(k.instance_ids, k.branch_ids, %(limit)s::integer,
    %(worker_id)s::text, %(token)s::uuid, %(ttl)s::interval, %(worker_tags)s::text[]) AS l;

-- name: undo_branch_dispatch
-- After a branch dispatch whose connection was lost: give back what it leased (one token
-- per dispatch). Reads the branches table; runs only after a lost connection.
UPDATE @schema@.branches SET worker_id = NULL, token = NULL, expires_at = NULL
WHERE token = %(token)s::uuid AND done_at IS NULL;

-- name: extend_branch
-- Only while the fork is the instance's current checkpoint: a heartbeat after it moved
-- on (cancelled, taken over) is refused, so the branch worker stops.
UPDATE @schema@.branches AS b SET expires_at = now() + %(ttl)s::interval
WHERE b.instance_id = %(instance_id)s AND b.branch_id = %(branch_id)s
  AND b.token = %(token)s::uuid AND b.done_at IS NULL AND b.expires_at > now()
  AND EXISTS (
      SELECT 1 FROM @schema@.snapshots AS s
      WHERE s.instance_id = %(instance_id)s AND s.version = b.fork_version
        AND s.status = 'InProgress')
RETURNING b.expires_at;

-- name: release_branch
-- Give a branch back unfinished, so another worker may take it at once.
UPDATE @schema@.branches SET worker_id = NULL, token = NULL, expires_at = NULL
WHERE instance_id = %(instance_id)s AND branch_id = %(branch_id)s
  AND token = %(token)s::uuid AND done_at IS NULL
RETURNING 1;

-- name: finish_branch
-- complete_branch, with the instance locked (lock_instance) at the branch's fork: the
-- result lands only under this token's live lease.
UPDATE @schema@.branches SET done_at = now()
WHERE instance_id = %(instance_id)s AND branch_id = %(branch_id)s
  AND token = %(token)s::uuid AND fork_version = %(version)s
  AND done_at IS NULL AND expires_at > now()
RETURNING 1;

-- name: put_branch_result
-- The branch's result, where every task result lives (load_task_result sees it at once).
INSERT INTO @schema@.tasks AS t (
    instance_id, task_id, status, attempts, worker_id, started_at, completed_at, error, output)
VALUES (%(instance_id)s, %(branch_id)s, %(status)s, %(attempts)s, %(worker_id)s,
    %(started_at)s, %(completed_at)s, %(error)s, %(output)s)
@part_task_upsert@;

-- name: branches_left
-- With the instance locked (a fresh statement after lock_instance: every sibling that
-- finished before this transaction took the lock is counted, so exactly one finisher
-- sees no other open branch): the fork's other open branches, and the bytes the join
-- checkpoint will hold besides this result (the fork's document and the instance's
-- stored outputs, this branch's own old row left out).
SELECT count(*) FILTER (WHERE b.done_at IS NULL AND b.branch_id <> %(branch_id)s),
    -- the fork's document as a load reads it: its delta chain, from the whole one on
    (SELECT COALESCE(sum(octet_length(h.data)), 0)
     FROM @schema@.history AS c
     JOIN @schema@.history AS h ON h.instance_id = %(instance_id)s
         AND h.version BETWEEN COALESCE(c.base_version, c.version) AND c.version
     WHERE c.instance_id = %(instance_id)s AND c.version = %(version)s)
    + (SELECT COALESCE(sum(octet_length(t.output)), 0) FROM @schema@.tasks AS t
       WHERE t.instance_id = %(instance_id)s AND t.task_id <> %(branch_id)s)
FROM @schema@.branches AS b
WHERE b.instance_id = %(instance_id)s AND b.fork_version = %(version)s;

-- name: mark_joined
UPDATE @schema@.branches SET joined_version = %(joined)s
WHERE instance_id = %(instance_id)s AND branch_id = %(branch_id)s;

-- name: branch_finished
-- After a complete_branch whose connection was lost: whether its result landed, and the
-- join version if it was the last.
SELECT done_at IS NOT NULL, joined_version FROM @schema@.branches
WHERE instance_id = %(instance_id)s AND branch_id = %(branch_id)s AND token = %(token)s::uuid;

-- name: branch_leases
-- The open and finished branches of an instance's current fork.
SELECT b.branch_id, b.worker_id, b.expires_at > now(), b.done_at
FROM @schema@.branches AS b
JOIN @schema@.snapshots AS s ON s.instance_id = %(instance_id)s AND s.version = b.fork_version
WHERE b.instance_id = %(instance_id)s
ORDER BY b.branch_id;
