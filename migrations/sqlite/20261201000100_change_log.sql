-- The change log: what offline and multi-device clients sync from. See the PostgreSQL twin for
-- the design. Each owner's version lives in their `task_counts` row; every write to a task
-- advances it inside the writing transaction (the triggers below) and stamps the task with it;
-- a deletion leaves a tombstone. SQLite has one writer at a time, so versions are handed out in
-- commit order by construction.
ALTER TABLE task_counts ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE task_counts ADD COLUMN purged_through INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN version INTEGER NOT NULL DEFAULT 0;

UPDATE tasks SET version = numbered.version
FROM (SELECT id, row_number() OVER (PARTITION BY user_id ORDER BY id) AS version FROM tasks) AS numbered
WHERE tasks.id = numbered.id;
UPDATE task_counts SET version = total;

CREATE UNIQUE INDEX tasks_user_version_idx ON tasks (user_id, version);

-- deleted_at is microseconds since the Unix epoch, like every time here.
CREATE TABLE task_tombstones (
    user_id    TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    id         INTEGER NOT NULL,
    deleted_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, version)
) STRICT, WITHOUT ROWID;
CREATE INDEX task_tombstones_deleted_at_idx ON task_tombstones (deleted_at);

CREATE TABLE idempotency_keys (
    user_id     TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    fingerprint BLOB    NOT NULL,
    response    BLOB    NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (user_id, key)
) STRICT, WITHOUT ROWID;
CREATE INDEX idempotency_keys_expires_at_idx ON idempotency_keys (expires_at);

DROP TRIGGER tasks_counted_on_insert;
DROP TRIGGER tasks_counted_on_delete;
DROP TRIGGER tasks_counted_on_completion;

-- SQLite's triggers cannot assign NEW, so they stamp the row after the fact; that inner UPDATE
-- changes `version`, which the update trigger's WHEN clause excludes (recursion is off anyway).
CREATE TRIGGER tasks_logged_on_insert AFTER INSERT ON tasks
BEGIN
    INSERT OR IGNORE INTO task_counts (user_id, total, completed, version)
        VALUES (NEW.user_id, 0, 0, 0);
    UPDATE task_counts
        SET total = total + 1, completed = completed + NEW.completed, version = version + 1
        WHERE user_id = NEW.user_id;
    UPDATE tasks SET version = (SELECT version FROM task_counts WHERE user_id = NEW.user_id)
        WHERE id = NEW.id;
END;

CREATE TRIGGER tasks_logged_on_update AFTER UPDATE ON tasks
WHEN NEW.version = OLD.version
BEGIN
    UPDATE task_counts
        SET completed = completed + NEW.completed - OLD.completed, version = version + 1
        WHERE user_id = NEW.user_id;
    UPDATE tasks SET version = (SELECT version FROM task_counts WHERE user_id = NEW.user_id)
        WHERE id = NEW.id;
END;

CREATE TRIGGER tasks_logged_on_delete AFTER DELETE ON tasks
BEGIN
    UPDATE task_counts
        SET total = total - 1, completed = completed - OLD.completed, version = version + 1
        WHERE user_id = OLD.user_id;
    INSERT INTO task_tombstones (user_id, version, id, deleted_at)
        SELECT OLD.user_id, version, OLD.id,
               CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)
        FROM task_counts WHERE user_id = OLD.user_id;
END;
