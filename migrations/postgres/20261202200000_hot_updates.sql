-- Writes that touch none of `tasks`' indexes: the change feed's index moves to its own table.
--
-- Every write stamps the task with the owner's next version (20261201000100_change_log.sql).
-- While `(user_id, version)` was an index of `tasks`, that stamp changed an indexed column on
-- every write, so no UPDATE could be HOT (heap-only): each toggle or rename inserted a new entry
-- into every index of `tasks`, the trigram GIN index included (dozens of trigrams per task).
-- Now `task_versions` holds each live task's latest version under the same unique index, the
-- trigger keeps it in step in the same transaction, and an UPDATE of a column no index reads
-- (completed, updated_at, description's unchanged text…) stays on its heap page with no index
-- entry at all. pgbench, toggles only, this cluster, c = 10: 337–370 µs of PostgreSQL CPU per
-- toggle before, 250–260 with a side table, 207–221 with no feed index at all (a feed that
-- reads every one of the owner's tasks: kept out, it scales with the owner's tasks instead of
-- their changes). docs/benchmarks.md has the service's figures.
--
-- `tasks.version` stays (the feed returns it and older instances read it during a rolling
-- deploy; without its index their feed is slower, never wrong). SQLite's UPDATE only rewrites
-- the indexes whose columns change, so its schema keeps the index where it is.

-- Keep writers out while the versions are copied (they wait, then go through the new trigger).
LOCK TABLE tasks IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE task_versions (
    task_id BIGINT PRIMARY KEY,
    user_id TEXT   NOT NULL,
    version BIGINT NOT NULL
);
INSERT INTO task_versions (task_id, user_id, version) SELECT id, user_id, version FROM tasks;
-- The feed's index. Unique: one version is one write to one task.
CREATE UNIQUE INDEX task_versions_user_version_idx ON task_versions (user_id, version);
DROP INDEX tasks_user_version_idx;

-- Room on each page for the next versions of its rows, which a HOT update needs (pages written
-- from now on; existing ones gain room as their dead versions are pruned).
ALTER TABLE tasks SET (fillfactor = 85);

CREATE OR REPLACE FUNCTION tasks_log_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_counts AS counts (user_id, total, completed, version)
        VALUES (NEW.user_id, 1, NEW.completed::int, 1)
        ON CONFLICT (user_id) DO UPDATE
            SET total = counts.total + 1,
                completed = counts.completed + NEW.completed::int,
                version = counts.version + 1
        RETURNING version INTO NEW.version;
        -- A BEFORE trigger: the identity default has given NEW.id its value already.
        INSERT INTO task_versions (task_id, user_id, version)
        VALUES (NEW.id, NEW.user_id, NEW.version);
        RETURN NEW;
    ELSIF TG_OP = 'UPDATE' THEN
        UPDATE task_counts
            SET completed = completed + NEW.completed::int - OLD.completed::int,
                version = version + 1
            WHERE user_id = NEW.user_id
            RETURNING version INTO NEW.version;
        UPDATE task_versions SET version = NEW.version WHERE task_id = NEW.id;
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
        DELETE FROM task_versions WHERE task_id = OLD.id;
        RETURN OLD;
    END IF;
END
$$;
