-- Each owner's number of tasks and of completed ones, kept by triggers in the same transaction
-- as every write, so that `X-Total-Count` of a paged listing is exact without counting the
-- owner's rows on every page (a window count read all 10,000 rows of a large account to
-- return 50). Pending = total - completed.
CREATE TABLE task_counts (
    user_id   TEXT   PRIMARY KEY,
    total     BIGINT NOT NULL CHECK (total >= 0),
    completed BIGINT NOT NULL CHECK (completed BETWEEN 0 AND total)
);

INSERT INTO task_counts (user_id, total, completed)
SELECT user_id, count(*), count(*) FILTER (WHERE completed) FROM tasks GROUP BY user_id;

CREATE FUNCTION task_counts_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_counts AS counts (user_id, total, completed)
        VALUES (NEW.user_id, 1, NEW.completed::int)
        ON CONFLICT (user_id) DO UPDATE
            SET total = counts.total + 1, completed = counts.completed + NEW.completed::int;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE task_counts
            SET total = total - 1, completed = completed - OLD.completed::int
            WHERE user_id = OLD.user_id;
    ELSE
        UPDATE task_counts
            SET completed = completed + NEW.completed::int - OLD.completed::int
            WHERE user_id = NEW.user_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_counted_on_insert_or_delete
    AFTER INSERT OR DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION task_counts_follow();

-- Only when `completed` really changes: a rename costs nothing here.
CREATE TRIGGER tasks_counted_on_completion
    AFTER UPDATE OF completed ON tasks
    FOR EACH ROW WHEN (OLD.completed IS DISTINCT FROM NEW.completed)
    EXECUTE FUNCTION task_counts_follow();

-- Owners never change (no statement sets `user_id`); if one ever did, the counts would drift.
CREATE FUNCTION tasks_owner_is_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'a task''s user_id cannot change';
END
$$;

CREATE TRIGGER tasks_owner_is_fixed
    BEFORE UPDATE OF user_id ON tasks
    FOR EACH ROW WHEN (OLD.user_id IS DISTINCT FROM NEW.user_id)
    EXECUTE FUNCTION tasks_owner_is_fixed();
