-- Each owner's number of tasks and of completed ones, kept by triggers in the same transaction
-- as every write, so that `X-Total-Count` of a paged listing is exact without counting the
-- owner's rows on every page. Pending = total - completed.
CREATE TABLE task_counts (
    user_id   TEXT    PRIMARY KEY,
    total     INTEGER NOT NULL CHECK (total >= 0),
    completed INTEGER NOT NULL CHECK (completed BETWEEN 0 AND total)
) STRICT, WITHOUT ROWID;

INSERT INTO task_counts (user_id, total, completed)
SELECT user_id, count(*), sum(completed) FROM tasks GROUP BY user_id;

CREATE TRIGGER tasks_counted_on_insert AFTER INSERT ON tasks
BEGIN
    INSERT OR IGNORE INTO task_counts (user_id, total, completed) VALUES (NEW.user_id, 0, 0);
    UPDATE task_counts
        SET total = total + 1, completed = completed + NEW.completed
        WHERE user_id = NEW.user_id;
END;

CREATE TRIGGER tasks_counted_on_delete AFTER DELETE ON tasks
BEGIN
    UPDATE task_counts
        SET total = total - 1, completed = completed - OLD.completed
        WHERE user_id = OLD.user_id;
END;

-- Only when `completed` really changes: a rename costs nothing here.
CREATE TRIGGER tasks_counted_on_completion AFTER UPDATE OF completed ON tasks
WHEN OLD.completed <> NEW.completed
BEGIN
    UPDATE task_counts
        SET completed = completed + NEW.completed - OLD.completed
        WHERE user_id = NEW.user_id;
END;

-- Owners never change (no statement sets `user_id`); if one ever did, the counts would drift.
CREATE TRIGGER tasks_owner_is_fixed BEFORE UPDATE OF user_id ON tasks
WHEN OLD.user_id <> NEW.user_id
BEGIN
    SELECT RAISE(ABORT, 'a task''s user_id cannot change');
END;
