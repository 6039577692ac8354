-- Replay: an instance created from a past checkpoint of another (fork) names where it
-- came from, for listings (and operators) to see without decoding anything.
ALTER TABLE @schema@.snapshots ADD COLUMN forked_from text COLLATE "C";
ALTER TABLE @schema@.snapshots ADD COLUMN forked_from_version bigint;
