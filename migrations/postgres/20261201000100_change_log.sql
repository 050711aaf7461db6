-- The change log: what offline and multi-device clients sync from (`GET …/tasks/changes`).
--
-- Each owner has a version, kept in their `task_counts` row (the name is historical: the row is
-- the owner's per-user state). Every write to a task, whoever makes it (this service, an older
-- instance during a rolling deploy, an operator's SQL), advances that version by one inside the
-- writing transaction, through the trigger below, and stamps the task with it; a deletion
-- leaves a tombstone stamped the same way. The feed reads "this owner's rows with a version
-- above the client's cursor".
--
-- Why it cannot skip a change: the version lives on one row per owner, and the trigger updates
-- that row, so two transactions writing for the same owner take its row lock in turn; the
-- second reads the version the first committed. Versions are therefore handed out in commit
-- order, per owner, and a reader's snapshot that holds version N holds every version below it.
-- (A global sequence read as "greater than the last one seen" has no such order: a transaction
-- can take number 10, commit after the one that took 11, and a reader that saw 11 never looks
-- below it again.)
--
-- Idempotency keys live here too, so that a key and the change it made commit together.

-- Older instances keep writing during a rolling deploy: keep them out while existing tasks are
-- numbered (they wait, then their writes go through the new trigger).
LOCK TABLE tasks IN SHARE ROW EXCLUSIVE MODE;

ALTER TABLE task_counts
    ADD COLUMN version BIGINT NOT NULL DEFAULT 0,
    -- The highest version whose tombstone has been purged: a cursor below it may have missed a
    -- deletion, and must start over (410).
    ADD COLUMN purged_through BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN version BIGINT NOT NULL DEFAULT 0;

-- Existing tasks get versions 1..n per owner, in id order; each owner's counter starts after
-- them (the previous migration made `total` exact).
UPDATE tasks SET version = numbered.version
FROM (SELECT id, row_number() OVER (PARTITION BY user_id ORDER BY id) AS version FROM tasks) AS numbered
WHERE tasks.id = numbered.id;
UPDATE task_counts SET version = total;

-- The feed's index. Unique: one version is one write to one task.
CREATE UNIQUE INDEX tasks_user_version_idx ON tasks (user_id, version);

-- A deleted task leaves its id and the time, nothing else, until it is purged after
-- TOMBSTONE_RETENTION_SECS (in small batches, by deleted_at).
CREATE TABLE task_tombstones (
    user_id    TEXT        NOT NULL,
    version    BIGINT      NOT NULL,
    id         BIGINT      NOT NULL,
    deleted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, version)
);
CREATE INDEX task_tombstones_deleted_at_idx ON task_tombstones (deleted_at);

-- `Idempotency-Key`s: per owner, the request's fingerprint and the response it got, kept until
-- expires_at (IDEMPOTENCY_TTL_SECS), then purged in small batches. The response is opaque here.
CREATE TABLE idempotency_keys (
    user_id     TEXT        NOT NULL,
    key         TEXT        NOT NULL,
    fingerprint BYTEA       NOT NULL,
    response    BYTEA       NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_expires_at_idx ON idempotency_keys (expires_at);

-- One trigger keeps the counts, the version and the tombstones, in place of the two count
-- triggers: one plpgsql call per write and no WHEN clause to evaluate.
--
-- BEFORE, so that it can stamp NEW.version without a second write of the row. PostgreSQL locks
-- the task's row before it runs a BEFORE UPDATE or DELETE trigger, so every statement takes the
-- task's row first and the owner's row second: no two writers can wait on each other in a
-- cycle.
DROP TRIGGER tasks_counted_on_insert_or_delete ON tasks;
DROP TRIGGER tasks_counted_on_completion ON tasks;
DROP FUNCTION task_counts_follow();

CREATE FUNCTION tasks_log_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_counts AS counts (user_id, total, completed, version)
        VALUES (NEW.user_id, 1, NEW.completed::int, 1)
        ON CONFLICT (user_id) DO UPDATE
            SET total = counts.total + 1,
                completed = counts.completed + NEW.completed::int,
                version = counts.version + 1
        RETURNING version INTO NEW.version;
        RETURN NEW;
    ELSIF TG_OP = 'UPDATE' THEN
        UPDATE task_counts
            SET completed = completed + NEW.completed::int - OLD.completed::int,
                version = version + 1
            WHERE user_id = NEW.user_id
            RETURNING version INTO NEW.version;
        RETURN NEW;
    ELSE
        WITH counted AS (
            UPDATE task_counts
                SET total = total - 1,
                    completed = completed - OLD.completed::int,
                    version = version + 1
                WHERE user_id = OLD.user_id
                RETURNING version
        )
        INSERT INTO task_tombstones (user_id, version, id)
        SELECT OLD.user_id, version, OLD.id FROM counted;
        RETURN OLD;
    END IF;
END
$$;

CREATE TRIGGER tasks_log_change
    BEFORE INSERT OR UPDATE OR DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION tasks_log_change();
