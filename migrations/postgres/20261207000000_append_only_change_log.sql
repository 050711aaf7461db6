-- The change feed's index, append-only: a write adds an entry and moves none.
--
-- Since 20261202200000_hot_updates.sql every write moved its task's one row in `task_versions`
-- to the new version. `version` is in that table's unique index, so the move could never be
-- heap-only: a new row, an entry in each of its two indexes, a dead row left to vacuum, and
-- between autovacuums the table and its index bloated (448 heap pages and a 773-page index for
-- 2,000 live rows after ~370,000 writes), so writes slowed the longer a cluster ran. That move
-- was a third of a toggle's PostgreSQL CPU (docs/benchmarks.md, 2026-12-07).
--
-- Now a write inserts `(user_id, version, task_id)` into `task_changes`, and nothing there is
-- ever updated. The feed joins `tasks` on id and version, so an entry whose task has moved on
-- since (or is gone: its tombstone speaks for it) is skipped. The upkeep job deletes those
-- superseded entries an owner at a time, once the owner has written as many times since their
-- last compaction as they have tasks (at least 64 times): a compaction reads at most about
-- twice what it deletes, and an owner's entries stay within about twice their tasks plus their
-- writes since the last upkeep round.
--
-- Older instances, during a rolling deploy, read `task_versions`: it becomes a view of exactly
-- the rows it held (each live task's latest version), so their feed stays right.

-- Keep writers out while the entries are copied (they wait, then go through the new trigger).
LOCK TABLE tasks IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE task_changes (
    user_id TEXT   NOT NULL,
    version BIGINT NOT NULL,
    task_id BIGINT NOT NULL,
    -- The feed's index. One version is one write to one task.
    PRIMARY KEY (user_id, version)
);
INSERT INTO task_changes (user_id, version, task_id)
SELECT user_id, version, task_id FROM task_versions;
DROP TABLE task_versions;
CREATE VIEW task_versions AS
SELECT logged.task_id, logged.user_id, logged.version
FROM task_changes AS logged JOIN tasks ON tasks.id = logged.task_id AND tasks.version = logged.version;

-- The owner's version when their superseded entries were last deleted.
ALTER TABLE task_counts ADD COLUMN compacted_through BIGINT NOT NULL DEFAULT 0;

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
        INSERT INTO task_changes (user_id, version, task_id)
        VALUES (NEW.user_id, NEW.version, NEW.id);
        RETURN NEW;
    ELSIF TG_OP = 'UPDATE' THEN
        UPDATE task_counts
            SET completed = completed + NEW.completed::int - OLD.completed::int,
                version = version + 1
            WHERE user_id = NEW.user_id
            RETURNING version INTO NEW.version;
        INSERT INTO task_changes (user_id, version, task_id)
        VALUES (NEW.user_id, NEW.version, NEW.id);
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
