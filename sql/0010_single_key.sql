-- Single-key saves and a schema every table of which can be distributed by instance_id
-- (Citus colocation needs one collation and primary keys that include the key).
-- save_token: each save's own token, which its later statements find their row by.
ALTER TABLE @schema@.snapshots ADD COLUMN save_token uuid;

ALTER TABLE @schema@.signals ALTER COLUMN instance_id TYPE text COLLATE "C";
ALTER TABLE @schema@.claims ALTER COLUMN instance_id TYPE text COLLATE "C";
ALTER TABLE @schema@.events ALTER COLUMN instance_id TYPE text COLLATE "C";
ALTER TABLE @schema@.events DROP CONSTRAINT events_pkey, ADD PRIMARY KEY (instance_id, id);
