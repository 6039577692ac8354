-- Dispatch support for claims (snapstore/claims.py, sql/queries/claims.sql).
--
-- Only InProgress rows can ever be dispatched, and in a long-lived store they are a small
-- minority (finished instances accumulate), so the dispatch index is partial: it stays
-- small and its predicate is implied by every dispatch query's "status = 'InProgress'".
-- Keyed on available_at, it serves both the "due now" range (available_at <= now():
-- fresh work, due AtDelay timers, elapsed retry backoff) and "when is the next timer due"
-- (the first key after now()).
CREATE INDEX snapshots_dispatch_idx ON @schema@.snapshots (available_at)
    WHERE status = 'InProgress';

-- "When does the next lease run out": an instance whose claimant died becomes
-- dispatchable again at its claim's expiry, and nothing NOTIFYs about that.
CREATE INDEX claims_expires_idx ON @schema@.claims (expires_at);
