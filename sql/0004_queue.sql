-- The dispatch queue: one index range per priority, in queue order.
--
-- find_available_tasks orders by effective priority (priority minus one level per aging
-- interval spent due), which depends on now() and so cannot be an index key. But within one
-- priority that order is simply "longest due first": available_at, then instance_id. So the
-- dispatch statement reads the first few entries of each priority's range of this index
-- (five short index scans, whatever the backlog) and merges them; time-dependent checks are
-- filters on rows already in index order, never sort keys.
CREATE INDEX snapshots_queue_idx ON @schema@.snapshots (priority, available_at, instance_id)
    WHERE status = 'InProgress';
