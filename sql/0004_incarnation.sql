-- Which life of an instance id a snapshots row belongs to. Deleting an instance and
-- creating it again restarts its versions, so "version 2" alone cannot tell two lives
-- apart; a process that remembers what it wrote (snapstore/task_cache.py) checks this too.
ALTER TABLE @schema@.snapshots
    ADD COLUMN incarnation uuid NOT NULL DEFAULT gen_random_uuid();
