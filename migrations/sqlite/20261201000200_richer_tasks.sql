-- Richer tasks: a priority, a due date and tags on every task (existing tasks get `medium`, no
-- due date and no tags), and what searching and filtering one user's tasks needs. See the
-- PostgreSQL twin for why priority is a rank, why tags are kept twice (the task's JSON array,
-- and one row per tag in `task_tags`, kept by triggers) and why the due-date index leads with
-- `due_at IS NULL`. SQLite writes one transaction at a time, so the tag rows are exact.
--
-- Search: a substring match over one user's rows, read through `tasks_user_created_idx` (the
-- user's rows only, at most MAX_TASKS_PER_USER of them). FTS5's trigram index was the
-- alternative; it indexes everyone's text in one table, so a search would cost what everyone's
-- matches cost, and it needs a third copy of every title.
ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 1 CHECK (priority BETWEEN 0 AND 3);
-- Microseconds since the Unix epoch, like the other times.
ALTER TABLE tasks ADD COLUMN due_at INTEGER;
ALTER TABLE tasks ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';

CREATE INDEX tasks_user_priority_idx ON tasks (user_id, priority, id);
CREATE INDEX tasks_user_due_idx ON tasks (user_id, (due_at IS NULL), due_at, id);

CREATE TABLE task_tags (
    user_id TEXT    NOT NULL,
    tag     TEXT    NOT NULL,
    task_id INTEGER NOT NULL,
    PRIMARY KEY (user_id, tag, task_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX task_tags_task_idx ON task_tags (task_id);

CREATE TRIGGER tasks_tags_on_insert AFTER INSERT ON tasks WHEN NEW.tags <> '[]'
BEGIN
    INSERT OR IGNORE INTO task_tags (user_id, tag, task_id)
    SELECT NEW.user_id, value, NEW.id FROM json_each(NEW.tags);
END;

CREATE TRIGGER tasks_tags_on_update AFTER UPDATE OF tags, user_id ON tasks
    WHEN NEW.tags <> OLD.tags OR NEW.user_id <> OLD.user_id
BEGIN
    DELETE FROM task_tags WHERE task_id = OLD.id;
    INSERT OR IGNORE INTO task_tags (user_id, tag, task_id)
    SELECT NEW.user_id, value, NEW.id FROM json_each(NEW.tags);
END;

CREATE TRIGGER tasks_tags_on_delete AFTER DELETE ON tasks WHEN OLD.tags <> '[]'
BEGIN
    DELETE FROM task_tags WHERE task_id = OLD.id;
END;
