-- Parallel branches: an instance AtFork started with start_branches() holds one row per
-- branch here, leased and finished by different workers at once. fork_version is the
-- checkpoint that started them: a branch belongs to that fork only, so a later
-- checkpoint (a cancel, a takeover) fences every write of its branches. done_at is set
-- by the branch's result (in tasks, under the branch id); the last one to land writes
-- the join checkpoint. Keyed by instance first, like every per-instance table.
CREATE TABLE @schema@.branches (
    instance_id  text        COLLATE "C" NOT NULL,
    branch_id    text        COLLATE "C" NOT NULL,
    fork_version bigint      NOT NULL,
    worker_id    text,
    token        uuid,
    expires_at   timestamptz,
    done_at      timestamptz,
    joined_version bigint,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, branch_id)
);

-- Branch dispatch reads open branches oldest first; finished ones leave the index.
CREATE INDEX branches_open_idx ON @schema@.branches (created_at, instance_id, branch_id)
    WHERE done_at IS NULL;
